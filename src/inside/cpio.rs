//! Initrds (`boot-initrd`): what the kernel unpacks into its rootfs at boot, read
//! as the kernel reads it (init/initramfs.c, `unpack_to_rootfs`): cpio archives in
//! the newc format (`070701`, or `070702` with checksums), one after another, with
//! zero bytes between them, some uncompressed (the early microcode archive Ubuntu
//! puts first) and some compressed (gzip, zstd, xz, lzma, bzip2, lz4's legacy
//! format; each found by its magic, as `decompress_method` does). Each compressed
//! stream may itself hold several archives. Every archive is merged into one tree:
//! a later entry of a path replaces an earlier one (see [`Table::add`]); hard links
//! are entries of one archive sharing (device, inode, mode) with `nlink` >= 2, the
//! data being in the one that has it (GNU cpio writes it with the last name).
//!
//! The newc parser is written here (about 150 lines): the `cpio` and
//! `cpio-archive` crates hand out an entry's data through their own reader and do
//! not say where it starts in the stream, which reading by seeking needs, and
//! `cpio_reader` wants the whole archive in one slice (an initrd is 50-150 MiB
//! decompressed); none knows the kernel's rules for what sits between archives.
//!
//! One pass over the image, on the first look, builds the entry table and each
//! compressed stream's seek points ([`super::stream`]); reads then seek. With
//! `--cache-dir` both are kept in an index file ([`super::index`]).

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::Arc;

use super::bytes::Bytes;
use super::error::InsideError;
use super::index::{self, Index, Node, Persist, StreamIndex, Table, split_path};
use super::stream::{Codec, Stream};
use super::{Archive, Dirent, Entry, EntryKind};

/// Longest name an entry may have (the kernel's PATH_MAX).
const MAX_NAME: u64 = 4096;
/// Longest symlink target read.
const MAX_TARGET: u64 = 4096;
/// The index file's name for this format.
const FORMAT: &str = "initrd";

/// A reader with a position and one byte of look-ahead, over a stream's
/// uncompressed bytes.
struct Input<'r> {
    r: &'r mut dyn Read,
    buf: Vec<u8>,
    at: usize,
    /// Offset in the stream of `buf[at]`.
    off: u64,
}

impl Input<'_> {
    fn peek(&mut self) -> io::Result<Option<u8>> {
        if self.at == self.buf.len() {
            self.buf.resize(64 << 10, 0);
            let n = loop {
                match self.r.read(&mut self.buf) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r?,
                }
            };
            self.buf.truncate(n);
            self.at = 0;
            if n == 0 {
                return Ok(None);
            }
        }
        Ok(Some(self.buf[self.at]))
    }

    fn exact(&mut self, out: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < out.len() {
            if self.peek()?.is_none() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the archive ends inside an entry (byte {})", self.off),
                ));
            }
            let n = (self.buf.len() - self.at).min(out.len() - done);
            out[done..done + n].copy_from_slice(&self.buf[self.at..self.at + n]);
            self.at += n;
            self.off += n as u64;
            done += n;
        }
        Ok(())
    }

    fn skip(&mut self, mut n: u64) -> io::Result<()> {
        while n > 0 {
            if self.peek()?.is_none() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the archive ends inside an entry (byte {})", self.off),
                ));
            }
            let k = ((self.buf.len() - self.at) as u64).min(n) as usize;
            self.at += k;
            self.off += k as u64;
            n -= k as u64;
        }
        Ok(())
    }

    /// Skips zero bytes; the next byte, if any.
    fn zeros(&mut self) -> io::Result<Option<u8>> {
        loop {
            match self.peek()? {
                Some(0) => {
                    let run = self.buf[self.at..].iter().take_while(|b| **b == 0).count();
                    self.at += run;
                    self.off += run as u64;
                }
                other => return Ok(other),
            }
        }
    }
}

fn bad(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

/// One newc header's fields.
struct Header {
    ino: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    size: u64,
    dev: (u32, u32),
}

fn header(raw: &[u8; 110], at: u64) -> io::Result<(Header, u64)> {
    match &raw[..6] {
        b"070701" | b"070702" => {}
        b"070707" => {
            return Err(bad(format!(
                "an odc cpio archive at byte {at}: initrds are newc"
            )));
        }
        _ => return Err(bad(format!("no cpio magic at byte {at}"))),
    }
    let mut f = [0u32; 13];
    for (i, v) in f.iter_mut().enumerate() {
        let hex = &raw[6 + 8 * i..14 + 8 * i];
        *v = std::str::from_utf8(hex)
            .ok()
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| {
                bad(format!(
                    "a cpio header at byte {at} has a field that is not hex"
                ))
            })?;
    }
    Ok((
        Header {
            ino: f[0] as u64,
            mode: f[1],
            uid: f[2],
            gid: f[3],
            nlink: f[4],
            mtime: f[5],
            size: f[6] as u64,
            dev: (f[7], f[8]),
        },
        f[11] as u64,
    ))
}

fn pad4(n: u64) -> u64 {
    (4 - n % 4) % 4
}

/// Builds the table from the archives of one stream.
struct Builder<'t> {
    table: &'t mut Table,
    stream: u32,
}

impl Builder<'_> {
    /// Reads archives until the stream ends (`compressed`: only zeros may
    /// follow a trailer, then the end or another archive) or, uncompressed,
    /// until something that is not an archive follows a trailer (the next,
    /// compressed, segment). Returns the stream offset where it stopped.
    fn archives(&mut self, input: &mut Input, compressed: bool) -> io::Result<u64> {
        loop {
            self.archive(input)?;
            let next = input.zeros()?;
            match next {
                None => return Ok(input.off),
                Some(b'0') if compressed || input.off.is_multiple_of(4) => {}
                Some(_) if !compressed => return Ok(input.off),
                Some(b) => {
                    return Err(bad(format!(
                        "junk within compressed archive (byte {b:#04x} at {})",
                        input.off
                    )));
                }
            }
        }
    }

    /// Reads one archive, to its trailer.
    fn archive(&mut self, input: &mut Input) -> io::Result<()> {
        // Hard links are within one archive: (device, inode, mode) -> entry.
        let mut links: HashMap<(u32, u32, u64, u32), u64> = HashMap::new();
        loop {
            let at = input.off;
            let mut raw = [0u8; 110];
            input.exact(&mut raw)?;
            let (h, namesize) = header(&raw, at)?;
            if namesize == 0 || namesize > MAX_NAME + 1 {
                return Err(bad(format!("a cpio name of {namesize} bytes at byte {at}")));
            }
            let mut name = vec![0; namesize as usize];
            input.exact(&mut name)?;
            input.skip(pad4(110 + namesize))?;
            // The name ends with its NUL.
            let name = name.split(|b| *b == 0).next().unwrap_or_default().to_vec();
            if name == b"TRAILER!!!" {
                input.skip(h.size + pad4(h.size))?;
                return Ok(());
            }
            let data = input.off;
            let fmt = h.mode & 0o170000;
            let kind = match fmt {
                0o040000 => Some(EntryKind::Dir),
                0o100000 => Some(EntryKind::File),
                0o120000 => {
                    if h.size > MAX_TARGET {
                        return Err(bad(format!(
                            "a symlink target of {} bytes at byte {at}",
                            h.size
                        )));
                    }
                    let mut target = vec![0; h.size as usize];
                    input.exact(&mut target)?;
                    input.skip(pad4(h.size))?;
                    Some(EntryKind::Symlink(target))
                }
                0o020000 | 0o060000 | 0o010000 | 0o140000 => Some(EntryKind::Special),
                _ => None,
            };
            if !matches!(kind, Some(EntryKind::Symlink(_))) {
                input.skip(h.size + pad4(h.size))?;
            }
            let (Some(kind), Some(parts)) = (kind, split_path(&name)) else {
                continue;
            };
            let file = kind == EntryKind::File;
            let linkable = h.nlink >= 2 && (file || kind == EntryKind::Special);
            let e = Entry {
                id: 0,
                size: match &kind {
                    EntryKind::File => h.size,
                    EntryKind::Symlink(t) => t.len() as u64,
                    _ => 0,
                },
                kind,
                mode: (h.mode & 0o7777) as u16,
                uid: h.uid,
                gid: h.gid,
                mtime: h.mtime as i64,
                nlink: 1,
                xattrs: Vec::new(),
            };
            let key = (h.dev.0, h.dev.1, h.ino, h.mode);
            if linkable && let Some(&id) = links.get(&key) {
                // Another name of an entry of this archive; its data, if this
                // one carries it, is the entry's (the kernel writes it into the
                // linked file).
                self.table.hard_link(&parts, id);
                if h.size > 0
                    && let Some(n) = self.table.nodes.get_mut(id as usize)
                {
                    n.entry.size = h.size;
                    n.stream = self.stream;
                    n.data = data;
                }
                continue;
            }
            self.table.add(&parts, e, self.stream, data, false);
            if linkable && let Some(id) = self.table.get(&parts) {
                links.insert(key, id);
            }
        }
    }
}

/// An initrd: its entries and the streams their data is in.
pub struct Initrd {
    bytes: Arc<dyn Bytes>,
    nodes: Vec<Node>,
    streams: Vec<Stream>,
}

impl Initrd {
    /// Reads the whole image once: the entry table and every stream's points.
    pub fn open(bytes: Arc<dyn Bytes>) -> Result<Initrd, InsideError> {
        Initrd::open_with(bytes, None)
    }

    /// The same, reading the index from `persist` if a good one is there, and
    /// writing it there after the pass otherwise.
    pub fn open_with(
        bytes: Arc<dyn Bytes>,
        persist: Option<Persist>,
    ) -> Result<Initrd, InsideError> {
        if let Some(p) = &persist
            && let Some(ix) = p.dir.load(p.sha256, FORMAT, bytes.name())
            && let Some(t) = Initrd::from_index(bytes.clone(), ix)
        {
            return Ok(t);
        }
        let (nodes, streams) = Initrd::build(&bytes)?;
        let t = Initrd {
            bytes,
            nodes,
            streams,
        };
        if let Some(p) = persist {
            let ix = Index {
                nodes: t.nodes.clone(),
                streams: t
                    .streams
                    .iter()
                    .map(|s| StreamIndex {
                        codec: s.codec(),
                        start: s.start(),
                        end: s.end(),
                        out: None,
                        points: s.points().to_vec(),
                    })
                    .collect(),
            };
            p.dir.store(p.sha256, FORMAT, &ix, t.bytes.name());
        }
        Ok(t)
    }

    fn from_index(bytes: Arc<dyn Bytes>, ix: Index) -> Option<Initrd> {
        let mut streams = Vec::with_capacity(ix.streams.len());
        for s in ix.streams {
            if s.start >= bytes.size() || s.end.is_none() {
                return None;
            }
            streams.push(
                Stream::new(bytes.clone(), s.start, s.codec, false)
                    .with_points(s.points, s.end)
                    .ok()?,
            );
        }
        Some(Initrd {
            bytes,
            nodes: ix.nodes,
            streams,
        })
    }

    /// The one pass: segment after segment, as the kernel's unpack_to_rootfs
    /// walks them.
    fn build(bytes: &Arc<dyn Bytes>) -> Result<(Vec<Node>, Vec<Stream>), InsideError> {
        let name = bytes.name().to_string();
        let size = bytes.size();
        let mut table = Table::new();
        let mut streams: Vec<Stream> = Vec::new();
        let mut pos = 0u64;
        let mut chunk = vec![0u8; 64 << 10];
        // Every turn either skips zeros or ends past a stream that ends past
        // `pos`: bounded by the image's size.
        while pos < size {
            let n = (size - pos).min(chunk.len() as u64) as usize;
            bytes.read_exact_at(pos, &mut chunk[..n])?;
            if let Some(z) = chunk[..n].iter().position(|b| *b != 0) {
                pos += z as u64;
            } else {
                pos += n as u64;
                continue;
            }
            let n = (size - pos).min(8) as usize;
            let head = bytes.read_vec(pos, n)?;
            let id = streams.len() as u32;
            let mut builder = Builder {
                table: &mut table,
                stream: id,
            };
            if head[0] == b'0' && pos.is_multiple_of(4) {
                let mut s = Stream::new(bytes.clone(), pos, Codec::Raw, false);
                let mut indexer = s.indexer()?;
                let mut input = Input {
                    r: &mut indexer,
                    buf: Vec::new(),
                    at: 0,
                    off: 0,
                };
                let end = builder
                    .archives(&mut input, false)
                    .map_err(|e| s.io_error(e))?;
                drop(input);
                drop(indexer);
                s.set_end(pos + end);
                streams.push(s);
                pos += end;
            } else if let Some(codec) = Codec::sniff(&head) {
                let mut s = Stream::new(bytes.clone(), pos, codec, false);
                let mut indexer = s.indexer()?;
                let mut input = Input {
                    r: &mut indexer,
                    buf: Vec::new(),
                    at: 0,
                    off: 0,
                };
                builder
                    .archives(&mut input, true)
                    .map_err(|e| s.io_error(e))?;
                drop(input);
                s.finish_index(indexer);
                let end = s.end().filter(|e| *e > pos).ok_or_else(|| {
                    InsideError::corrupt(
                        &name,
                        format!("the {} stream at byte {pos} does not end", codec.name()),
                    )
                })?;
                streams.push(s);
                pos = end;
            } else if head.starts_with(&[0x89, 0x4c, 0x5a]) {
                return Err(InsideError::unsupported(
                    &name,
                    format!("an lzo-compressed archive at byte {pos}"),
                ));
            } else {
                return Err(InsideError::corrupt(
                    &name,
                    format!("invalid magic at start of compressed archive (byte {pos})"),
                ));
            }
        }
        Ok((table.finish(), streams))
    }

    fn name(&self) -> &str {
        self.bytes.name()
    }

    fn node(&self, id: u64) -> Result<&Node, InsideError> {
        index::node(&self.nodes, self.name(), id)
    }

    /// Its streams' codecs (tests).
    #[cfg(test)]
    fn codecs(&self) -> Vec<Codec> {
        self.streams.iter().map(|s| s.codec()).collect()
    }
}

impl Archive for Initrd {
    fn format(&self) -> &'static str {
        "initrd"
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
        if n.entry.kind != EntryKind::File || offset >= n.entry.size {
            return Ok(0);
        }
        let s = self.streams.get(n.stream as usize).ok_or_else(|| {
            InsideError::corrupt(self.name(), format!("entry {file} is in no stream"))
        })?;
        let len = (buf.len() as u64).min(n.entry.size - offset) as usize;
        let got = s.read_at(n.data + offset, &mut buf[..len])?;
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
