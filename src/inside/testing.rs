//! What the format readers' tests share: walking a path and reading a whole file
//! through any [`Archive`].

use super::{Archive, Bytes, InsideError, MemBytes};

/// Pseudo-random bytes (xorshift), not compressible.
pub(crate) fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

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

/// Bytes that count what is read through them.
pub(crate) struct Counting {
    pub inner: MemBytes,
    pub read: std::sync::atomic::AtomicU64,
}

impl Counting {
    pub fn new(name: &str, data: Vec<u8>) -> std::sync::Arc<Counting> {
        std::sync::Arc::new(Counting {
            inner: MemBytes {
                name: name.into(),
                data,
            },
            read: Default::default(),
        })
    }

    /// Bytes read so far.
    pub fn read(&self) -> u64 {
        self.read.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Bytes for Counting {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), InsideError> {
        self.read
            .fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.inner.read_exact_at(offset, buf)
    }
}
