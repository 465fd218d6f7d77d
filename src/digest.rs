//! sha256 as MAAS writes it: lower-case hex of the digest, of bytes or of a whole
//! file. One place, because import, verify, the disk cache and the image-storage
//! readers all hash whole files and must agree on the form.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Bytes read per call when hashing a file: large enough that the syscall cost
/// disappears next to the hash itself.
const HASH_READ: usize = 1 << 20;

/// Lower-case hex, as MAAS writes sha256 values.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Whether `s` has the form of a sha256 as MAAS stores it: 64 hex digits.
pub fn valid_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The sha256 and length of everything `r` yields, calling `seen(n)` after each
/// `n` bytes (for progress bars).
pub fn sha256_reader(mut r: impl Read, mut seen: impl FnMut(u64)) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_READ];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
        seen(n as u64);
    }
    Ok((hex(hasher.finalize().as_slice()), total))
}

/// The sha256 and length of the file at `path`.
pub fn sha256_file(path: &Path, seen: impl FnMut(u64)) -> io::Result<(String, u64)> {
    sha256_reader(File::open(path)?, seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case_and_padded() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }

    #[test]
    fn sha256_of_known_input_and_counted_progress() {
        let data = vec![b'a'; HASH_READ + 3];
        let mut seen = 0;
        let (sha, n) = sha256_reader(&data[..], |k| seen += k).expect("in memory");
        assert_eq!(n, data.len() as u64);
        assert_eq!(seen, n);
        // sha256 of the empty input, a fixed point anyone can check with sha256sum.
        let (empty, _) = sha256_reader(&[][..], |_| {}).expect("in memory");
        assert_eq!(
            empty,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_ne!(sha, empty);
        assert!(valid_sha256(&sha));
    }
}
