//! Random access to an image's bytes, the one way format readers get them: over a
//! [`Handle`] (so through the memory cache, the disk cache or the large object,
//! like every other reader), or over memory in unit tests.

use crate::handle::Handle;

use super::error::InsideError;

/// An image's bytes, read at any offset.
pub trait Bytes: Send + Sync {
    /// Total size.
    fn size(&self) -> u64;
    /// The image's path, for errors.
    fn name(&self) -> &str;
    /// Fills `buf` from `offset`; an error if the image ends first.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), InsideError>;

    /// `len` bytes at `offset`.
    fn read_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>, InsideError> {
        let mut v = vec![0; len];
        self.read_exact_at(offset, &mut v)?;
        Ok(v)
    }
}

fn past_end(name: &str, offset: u64, len: usize, size: u64) -> InsideError {
    InsideError::corrupt(
        name,
        format!(
            "needs bytes {offset}..{} but the image has {size}",
            offset + len as u64
        ),
    )
}

impl Bytes for Handle {
    fn size(&self) -> u64 {
        Handle::size(self)
    }

    fn name(&self) -> &str {
        self.path()
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), InsideError> {
        let size = Handle::size(self);
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > size)
        {
            return Err(past_end(self.path(), offset, buf.len(), size));
        }
        let mut done = 0;
        while done < buf.len() {
            let n = self.read_into(offset + done as u64, &mut buf[done..])?;
            if n == 0 {
                return Err(past_end(self.path(), offset, buf.len(), size));
            }
            done += n;
        }
        Ok(())
    }
}

/// An image held in memory (unit tests, tools).
pub struct MemBytes {
    /// Its name in errors.
    pub name: String,
    /// Its bytes.
    pub data: Vec<u8>,
}

impl Bytes for MemBytes {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), InsideError> {
        let start = usize::try_from(offset)
            .ok()
            .filter(|s| *s <= self.data.len());
        match start.and_then(|s| self.data.get(s..s.checked_add(buf.len())?)) {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(past_end(&self.name, offset, buf.len(), self.size())),
        }
    }
}

/// `Read + Seek` over [`Bytes`], for crates that parse through those traits (the
/// tar crate finding the disk image inside a `root-dd.tar`).
pub struct Reader {
    bytes: std::sync::Arc<dyn Bytes>,
    at: u64,
}

impl Reader {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: std::sync::Arc<dyn Bytes>) -> Reader {
        Reader { bytes, at: 0 }
    }
}

impl std::io::Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.bytes.size().saturating_sub(self.at);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.bytes
            .read_exact_at(self.at, &mut buf[..n])
            .map_err(std::io::Error::other)?;
        self.at += n as u64;
        Ok(n)
    }
}

impl std::io::Seek for Reader {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        let to = match pos {
            std::io::SeekFrom::Start(n) => Some(n),
            std::io::SeekFrom::End(d) => self.bytes.size().checked_add_signed(d),
            std::io::SeekFrom::Current(d) => self.at.checked_add_signed(d),
        };
        self.at = to.ok_or_else(|| std::io::Error::other("seek before the start"))?;
        Ok(self.at)
    }
}
