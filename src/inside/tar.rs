//! Tarballs (`root-tgz`, `root-tbz`, `root-txz`, `archive.tar.xz`): the tar crate
//! parses the entries, once, in one pass over the decompressed stream when the
//! image is first looked into; that pass also records the stream's seek points
//! ([`super::stream`]), so a later read starts decompressing near its offset
//! instead of at the start. With `--cache-dir` the entry table and the points are
//! written to an index file ([`super::index`]) and read back by the next process,
//! which then decompresses only what it reads.

use std::io;
use std::sync::Arc;

use super::bytes::Bytes;
use super::error::{InsideError, Reason};
use super::index::{self, Index, Node, Persist, StreamIndex, Table, split_path};
use super::stream::{Codec, Stream};
use super::{Archive, Dirent, Entry, EntryKind, Xattr};

/// How the tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip (`root-tgz`).
    Gzip,
    /// bzip2 (`root-tbz`).
    Bzip2,
    /// xz (`root-txz`, `archive.tar.xz`).
    Xz,
}

impl Compression {
    fn codec(self) -> Codec {
        match self {
            Compression::Gzip => Codec::Gzip,
            Compression::Bzip2 => Codec::Bzip2,
            Compression::Xz => Codec::Xz,
        }
    }
}

/// A compressed tarball with its entry table and seek points.
pub struct Tar {
    bytes: Arc<dyn Bytes>,
    nodes: Vec<Node>,
    stream: Stream,
}

impl Tar {
    /// Reads the whole stream once: the entry table and the seek points.
    pub fn open(bytes: Arc<dyn Bytes>, compression: Compression) -> Result<Tar, InsideError> {
        Tar::open_with(bytes, compression, None)
    }

    /// The same, reading the index from `persist` if a good one is there, and
    /// writing it there after the pass otherwise.
    pub fn open_with(
        bytes: Arc<dyn Bytes>,
        compression: Compression,
        persist: Option<Persist>,
    ) -> Result<Tar, InsideError> {
        let codec = compression.codec();
        let stream = Stream::new(bytes.clone(), 0, codec, true);
        if let Some(p) = &persist
            && let Some(ix) = p.dir.load(p.sha256, "tar", bytes.name())
            && let Some(t) = Tar::from_index(bytes.clone(), codec, ix)
        {
            return Ok(t);
        }
        let mut t = Tar {
            bytes,
            nodes: Vec::new(),
            stream,
        };
        let mut indexer = t.stream.indexer()?;
        let table = Tar::index(&mut indexer).map_err(|e| t.stream.io_error(e))?;
        t.stream.finish_index(indexer);
        t.nodes = table.finish();
        if let Some(p) = persist {
            let ix = Index {
                nodes: t.nodes.clone(),
                streams: vec![StreamIndex {
                    codec,
                    start: 0,
                    end: t.stream.end(),
                    out: None,
                    points: t.stream.points().to_vec(),
                }],
            };
            p.dir.store(p.sha256, "tar", &ix, t.bytes.name());
        }
        Ok(t)
    }

    /// A tarball from an index file; None (rebuilt) if it does not fit.
    fn from_index(bytes: Arc<dyn Bytes>, codec: Codec, ix: Index) -> Option<Tar> {
        let [s] = <[StreamIndex; 1]>::try_from(ix.streams).ok()?;
        if s.codec != codec || s.start != 0 {
            return None;
        }
        let stream = Stream::new(bytes.clone(), 0, codec, true)
            .with_points(s.points, s.end)
            .ok()?;
        Some(Tar {
            bytes,
            nodes: ix.nodes,
            stream,
        })
    }

    fn name(&self) -> &str {
        self.bytes.name()
    }

    /// Its seek points (tests).
    #[cfg(test)]
    fn points(&self) -> usize {
        self.stream.points().len()
    }

    /// The one pass: entries, through the tar crate.
    fn index(source: &mut dyn io::Read) -> io::Result<Table> {
        let mut table = Table::new();
        let mut archive = tar::Archive::new(source);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let Some(parts) = split_path(&entry.path_bytes()) else {
                continue;
            };
            let h = entry.header();
            let kind = match h.entry_type() {
                tar::EntryType::Directory => EntryKind::Dir,
                tar::EntryType::Symlink => {
                    EntryKind::Symlink(entry.link_name_bytes().unwrap_or_default().into_owned())
                }
                tar::EntryType::Link => {
                    // A hard link: one more name for an entry already listed.
                    let target = entry
                        .link_name_bytes()
                        .and_then(|l| split_path(&l))
                        .and_then(|t| table.get(&t));
                    if let Some(id) = target {
                        table.hard_link(&parts, id);
                    }
                    continue;
                }
                tar::EntryType::Regular
                | tar::EntryType::Continuous
                | tar::EntryType::GNUSparse => EntryKind::File,
                tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                    EntryKind::Special
                }
                _ => continue,
            };
            let mut xattrs: Vec<Xattr> = Vec::new();
            if let Ok(Some(pax)) = entry.pax_extensions() {
                for ext in pax.flatten() {
                    if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                        xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                    }
                }
            }
            let h = entry.header();
            let file = kind == EntryKind::File;
            let e = Entry {
                id: 0,
                size: match &kind {
                    EntryKind::File => entry.size(),
                    EntryKind::Symlink(t) => t.len() as u64,
                    _ => 0,
                },
                kind,
                mode: (h.mode().unwrap_or(0o644) & 0o7777) as u16,
                uid: h.uid().unwrap_or(0) as u32,
                gid: h.gid().unwrap_or(0) as u32,
                mtime: h.mtime().unwrap_or(0) as i64,
                nlink: 1,
                xattrs,
            };
            let sparse = h.entry_type() == tar::EntryType::GNUSparse;
            let data = if file { entry.raw_file_position() } else { 0 };
            table.add(&parts, e, 0, data, sparse);
        }
        Ok(table)
    }

    fn node(&self, id: u64) -> Result<&Node, InsideError> {
        index::node(&self.nodes, self.name(), id)
    }
}

impl Archive for Tar {
    fn format(&self) -> &'static str {
        "tar"
    }

    fn root(&self) -> u64 {
        0
    }

    fn entry(&self, id: u64) -> Result<Entry, InsideError> {
        self.node(id).map(|n| n.entry.clone())
    }

    fn list(&self, dir: u64) -> Result<Arc<Vec<Dirent>>, InsideError> {
        index::list(&self.nodes, self.name(), dir)
    }

    fn lookup(&self, dir: u64, name: &str) -> Result<Option<u64>, InsideError> {
        index::lookup(&self.nodes, self.name(), dir, name)
    }

    fn read(&self, file: u64, offset: u64, buf: &mut [u8]) -> Result<usize, InsideError> {
        let n = self.node(file)?;
        if n.sparse {
            return Err(InsideError {
                image: self.name().to_string(),
                reason: Reason::Unsupported("GNU sparse files in tarballs".into()),
            });
        }
        if offset >= n.entry.size {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(n.entry.size - offset) as usize;
        let got = self.stream.read_at(n.data + offset, &mut buf[..len])?;
        if got < len {
            return Err(InsideError::corrupt(
                self.name(),
                format!("the stream ends inside entry {file}"),
            ));
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests;
