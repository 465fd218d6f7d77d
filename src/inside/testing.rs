//! What the format readers' tests share: walking a path and reading a whole file
//! through any [`Archive`].

use super::Archive;

/// The entry at `path` (`a/b/c`) from the archive's root.
pub(crate) fn walk(a: &dyn Archive, path: &str) -> u64 {
    let mut at = a.root();
    for part in path.split('/') {
        at = a.lookup(at, part).unwrap().expect(part);
    }
    at
}

/// Every byte of entry `id`, read in pieces of `piece` bytes (not a multiple of
/// any block size, so reads straddle blocks).
pub(crate) fn read_all(a: &dyn Archive, id: u64, piece: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0; piece];
    loop {
        let n = a.read(id, out.len() as u64, &mut buf).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}
