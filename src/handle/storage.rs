//! MAAS 3.5+: reading an image from its file in the region's image storage.
//!
//! The file is opened once, when the handle is, and read by offset from that
//! descriptor: MAAS replaces a file by writing a new one and renaming it over the
//! old, and deletes files it no longer needs, and an open descriptor keeps the
//! bytes it was opened on in both cases (the snapshot rule the database side
//! keeps with its transaction). No database connection is ever taken.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::HandleErrorKind;

/// An open image storage file, or why it could not be opened.
pub(super) struct StorageFile {
    path: PathBuf,
    file: Result<Arc<File>, io::ErrorKind>,
    why: String,
}

impl StorageFile {
    /// Opens `path` and checks that it holds `size` bytes, as the catalog saw it.
    pub(super) fn open(path: &Path, size: u64) -> StorageFile {
        let opened = File::open(path).and_then(|f| {
            let len = f.metadata()?.len();
            if len == size {
                Ok(f)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("holds {len} bytes, its row says {size}"),
                ))
            }
        });
        let (file, why) = match opened {
            Ok(f) => (Ok(Arc::new(f)), String::new()),
            Err(e) => (Err(e.kind()), e.to_string()),
        };
        StorageFile {
            path: path.to_path_buf(),
            file,
            why,
        }
    }

    /// The open descriptor, or why there is none.
    pub(super) fn file(&self) -> Result<&Arc<File>, HandleErrorKind> {
        self.file.as_ref().map_err(|kind| HandleErrorKind::Storage {
            file: self.path.clone(),
            err: io::Error::new(*kind, self.why.clone()),
        })
    }

    /// Calls `f` with the bytes at `offset..end` (`end` within the file).
    pub(super) fn read<R>(
        &self,
        offset: u64,
        end: u64,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, HandleErrorKind> {
        let file = self.file()?;
        let mut buf = vec![0u8; (end - offset) as usize];
        file.read_exact_at(&mut buf, offset)
            .map_err(|err| HandleErrorKind::Storage {
                file: self.path.clone(),
                err,
            })?;
        Ok(f(&buf))
    }
}
