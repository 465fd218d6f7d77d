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
