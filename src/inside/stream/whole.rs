//! A whole compressed image (`root-dd.xz`, `.gz`, `.bz2`) as uncompressed
//! [`Bytes`] read at any offset, for a reader stacked on it (a disk image's
//! partition table and file systems).

use std::io::{self, Read, Write};
use std::sync::Arc;

use super::{Codec, Stream};
use crate::inside::bytes::Bytes;
use crate::inside::error::InsideError;
use crate::inside::index::Persist;

/// The most of a stream without seek points decompressed into memory when there
/// is no `--cache-dir` to decompress it into.
pub const MAX_IN_MEMORY: u64 = 64 << 20;

/// A stream read at random through its seek points, as [`Bytes`].
struct StreamBytes {
    stream: Stream,
    size: u64,
}

impl Bytes for StreamBytes {
    fn size(&self) -> u64 {
        self.size
    }

    fn name(&self) -> &str {
        self.stream.name()
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), InsideError> {
        let mut done = 0;
        while done < buf.len() {
            let n = self
                .stream
                .read_at(offset + done as u64, &mut buf[done..])?;
            if n == 0 {
                return Err(InsideError::corrupt(
                    self.name(),
                    format!(
                        "needs bytes {offset}..{} of the decompressed image, which has {}",
                        offset + buf.len() as u64,
                        offset + done as u64
                    ),
                ));
            }
            done += n;
        }
        Ok(())
    }
}

/// A decompressed copy in a file of `--cache-dir`.
struct FileBytes {
    file: std::fs::File,
    size: u64,
    name: String,
}

impl Bytes for FileBytes {
    fn size(&self) -> u64 {
        self.size
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), InsideError> {
        use std::os::unix::fs::FileExt;
        self.file.read_exact_at(buf, offset).map_err(|e| {
            InsideError::corrupt(
                &self.name,
                format!(
                    "its decompressed copy in --cache-dir: {e} (delete it to have it made again)"
                ),
            )
        })
    }
}

/// The image `bytes`, compressed with `codec` as a whole (`root-dd.xz`,
/// `.gz`, `.bz2`), as uncompressed bytes read at any offset, for a reader of
/// what is inside (a disk image's partition table and file systems):
///
/// - a multi-block xz stream by its blocks, from its own index: nothing is
///   decompressed up front;
/// - gzip and bzip2 through seek points, found by one pass over the stream
///   (kept in `--cache-dir` like a tarball's);
/// - anything else (single-block xz, MAAS's usual root-dd.xz; zstd, lzma, lz4)
///   decompressed once into `--cache-dir/inside/SHA256.raw`, or into memory
///   up to [`MAX_IN_MEMORY`] without `--cache-dir`; larger is refused as
///   unsupported, with a message saying so.
pub fn random_access(
    bytes: Arc<dyn Bytes>,
    codec: Codec,
    persist: Option<Persist>,
) -> Result<Arc<dyn Bytes>, InsideError> {
    let name = bytes.name().to_string();
    if codec == Codec::Raw {
        return Ok(bytes);
    }
    let mut stream = Stream::new(bytes.clone(), 0, codec, true);
    if codec == Codec::Xz
        && let Some((points, size)) = stream.xz_index(bytes.size())
        && !points.is_empty()
    {
        stream.points.extend(points);
        return Ok(Arc::new(StreamBytes { stream, size }));
    }
    if matches!(codec, Codec::Gzip | Codec::Bzip2) {
        const FORMAT: &str = "stream";
        if let Some(p) = &persist
            && let Some(ix) = p.dir.load(p.sha256, FORMAT, &name)
            && let [s] = &ix.streams[..]
            && let Some(size) = s.out
            && let Ok(st) =
                Stream::new(bytes.clone(), 0, codec, true).with_points(s.points.clone(), s.end)
        {
            return Ok(Arc::new(StreamBytes { stream: st, size }));
        }
        let mut ix = stream.indexer()?;
        let size = io::copy(&mut ix, &mut io::sink()).map_err(|e| stream.io_error(e))?;
        stream.finish_index(ix);
        if let Some(p) = persist {
            let index = crate::inside::index::Index {
                nodes: vec![crate::inside::index::Node::implicit_dir(0)],
                streams: vec![crate::inside::index::StreamIndex {
                    codec,
                    start: 0,
                    end: stream.end(),
                    out: Some(size),
                    points: stream.points().to_vec(),
                }],
            };
            p.dir.store(p.sha256, FORMAT, &index, &name);
        }
        return Ok(Arc::new(StreamBytes { stream, size }));
    }
    // No seek points: decompressed once, whole.
    let Some(p) = persist else {
        let mut ix = stream.indexer()?;
        let mut data = Vec::new();
        (&mut ix)
            .take(MAX_IN_MEMORY + 1)
            .read_to_end(&mut data)
            .map_err(|e| stream.io_error(e))?;
        if data.len() as u64 > MAX_IN_MEMORY {
            return Err(InsideError::unsupported(
                &name,
                format!(
                    "a {} image of more than {} MiB is read at random only through a \
                     decompressed copy in --cache-dir, and there is none",
                    codec.name(),
                    MAX_IN_MEMORY >> 20
                ),
            ));
        }
        return Ok(Arc::new(crate::inside::bytes::MemBytes { name, data }));
    };
    if let Some((file, size)) = p.dir.open_unpacked(p.sha256) {
        return Ok(Arc::new(FileBytes { file, size, name }));
    }
    let mut ix = stream.indexer()?;
    let made = p.dir.store_unpacked(p.sha256, |f| {
        let mut w = io::BufWriter::with_capacity(1 << 20, f);
        io::copy(&mut ix, &mut w)?;
        w.flush()
    });
    match made {
        Ok((file, size)) => {
            log::info!(
                "inside {name}: decompressed once ({} bytes) into --cache-dir",
                size
            );
            Ok(Arc::new(FileBytes { file, size, name }))
        }
        Err(e) => Err(match stream.failed.lock().take() {
            Some(read) => read,
            None if e.kind() == io::ErrorKind::InvalidData
                || e.kind() == io::ErrorKind::UnexpectedEof =>
            {
                InsideError::corrupt(&name, format!("{}: {e}", codec.name()))
            }
            None => InsideError::unsupported(
                &name,
                format!("cannot write its decompressed copy into --cache-dir: {e}"),
            ),
        }),
    }
}
