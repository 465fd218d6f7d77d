//! A local file as a [`ByteSource`]: the disk cache's verified copy of a content.
//! The descriptor is opened once, so a session keeps reading the bytes it started
//! with even if the file is replaced (renamed over) or deleted meanwhile.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use super::error::HandleErrorKind;
use super::source::{ByteSource, Session};

/// Bytes per positioned read of a window: as large as a cache chunk.
const WINDOW_READ: usize = 1 << 20;

/// An open file that holds `size` bytes of the content.
pub(crate) struct FileSource {
    file: Arc<File>,
    size: u64,
    /// For messages.
    name: String,
}

impl FileSource {
    pub(crate) fn new(file: File, size: u64, name: String) -> FileSource {
        FileSource {
            file: Arc::new(file),
            size,
            name,
        }
    }
}

impl ByteSource for FileSource {
    fn open(&self, _wait: Duration) -> Result<Box<dyn Session>, HandleErrorKind> {
        // The descriptor was checked when it was opened; a file that shrank since
        // (it should never: cached files are renamed into place whole) is caught
        // by the first short read.
        Ok(Box::new(FileSession {
            file: self.file.clone(),
            size: self.size,
        }))
    }

    fn describe(&self) -> String {
        format!("file {}", self.name)
    }
}

struct FileSession {
    file: Arc<File>,
    size: u64,
}

impl Session for FileSession {
    fn read(&mut self, start: u64, len: u64, out: &mut Vec<u8>) -> Result<(), HandleErrorKind> {
        let at = out.len();
        out.resize(at + len as usize, 0);
        let mut got = 0usize;
        while got < len as usize {
            match self.file.read_at(&mut out[at + got..], start + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    out.truncate(at);
                    return Err(HandleErrorKind::Stream(e));
                }
            }
        }
        out.truncate(at + got);
        if got as u64 != len {
            return Err(HandleErrorKind::Truncated {
                expected: start + len,
                actual: start + got as u64,
            });
        }
        Ok(())
    }

    fn window(&mut self, start: u64, end: u64) -> Result<Box<dyn BufRead + '_>, HandleErrorKind> {
        let end = end.min(self.size);
        let range = Positioned {
            file: &self.file,
            at: start,
            end,
        };
        Ok(Box::new(BufReader::with_capacity(WINDOW_READ, range)))
    }

    fn end(self: Box<Self>) {}
}

/// `pread` from `at` up to `end`, leaving the descriptor's offset alone (several
/// sessions share it).
struct Positioned<'a> {
    file: &'a File,
    at: u64,
    end: u64,
}

impl Read for Positioned<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.end.saturating_sub(self.at) as usize).min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ranges_and_windows_and_reports_short_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        let src = FileSource::new(File::open(&path).expect("open"), 3_000_000, "f".into());
        let mut s = src.open(Duration::ZERO).expect("open session");
        // The file goes away: the open descriptor keeps its bytes.
        std::fs::remove_file(&path).expect("remove");
        let mut out = vec![7u8];
        s.read(1000, 5000, &mut out).expect("in range");
        assert_eq!(&out[1..], &data[1000..6000]);
        let mut all = Vec::new();
        s.window(10, 2_500_000)
            .expect("window")
            .read_to_end(&mut all)
            .expect("read");
        assert_eq!(all, &data[10..2_500_000]);
        let err = s
            .read(2_999_000, 2000, &mut Vec::new())
            .expect_err("past the end");
        assert!(matches!(
            err,
            HandleErrorKind::Truncated {
                expected: 3_001_000,
                actual: 3_000_000
            }
        ));
        s.end();
    }
}
