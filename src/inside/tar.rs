//! Tarballs (`root-tgz`, `root-tbz`, `root-txz`, `archive.tar.xz`): the tar crate
//! parses the entries, once, in one pass over the decompressed stream when the
//! image is first looked into; that pass also records seek points, so a later
//! read starts decompressing near its offset instead of at the start:
//!
//! - gzip: a copy of the inflate state (miniz_oxide's `InflateState`, its 32 KiB
//!   window included, about 43 KiB) every [`SPACING`] of output, as zran,
//!   indexed_gzip and ratarmount do; at most [`MAX_POINTS`] (spacing doubles past
//!   that), so at most about 44 MiB per image;
//! - xz: the start of each block, from the stream's own index, when it has several
//!   (`xz -T0`, pixz); a single-block stream is read from its start;
//! - bzip2: from its start (its blocks start at bit offsets; next step).
//!
//! One decoder per image continues where the last read ended, so a sequential
//! reader never decompresses a byte twice. The index lives in memory with the
//! open image (persisting it in `--cache-dir` by sha256 is the next step).

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::Arc;

use miniz_oxide::inflate::stream::{InflateState, inflate};
use miniz_oxide::{DataFormat, MZFlush, MZStatus};
use parking_lot::Mutex;

use super::bytes::Bytes;
use super::error::{InsideError, Reason};
use super::{Archive, Dirent, Entry, EntryKind, Xattr};

/// Output between two gzip seek points.
pub const SPACING: u64 = 4 << 20;
/// Most gzip seek points kept per image.
pub const MAX_POINTS: usize = 1024;
/// Compressed bytes read from the image at a time.
const READ_PIECE: usize = 256 << 10;

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

/// Where decompression can start again.
#[derive(Clone)]
enum Point {
    /// The stream's start.
    Start,
    /// A gzip member, mid-stream: the compressed offset to feed from, and the
    /// inflate state (window included) there.
    Gzip {
        input: u64,
        state: Box<InflateState>,
    },
    /// An xz block: its offset, and the stream header to put before it.
    XzBlock { input: u64, header: [u8; 12] },
}

/// Reads the image's bytes from an offset, as `Read` for the decoders.
struct ImageReader {
    bytes: Arc<dyn Bytes>,
    at: u64,
    /// Set if reading the image failed: the decoders see only an io::Error.
    failed: Arc<Mutex<Option<InsideError>>>,
}

impl Read for ImageReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.bytes.size().saturating_sub(self.at);
        let n = (buf.len() as u64).min(left).min(READ_PIECE as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        match self.bytes.read_exact_at(self.at, &mut buf[..n]) {
            Ok(()) => {
                self.at += n as u64;
                Ok(n)
            }
            Err(e) => {
                let msg = e.to_string();
                *self.failed.lock() = Some(e);
                Err(io::Error::other(msg))
            }
        }
    }
}

/// A gzip decoder whose state can be copied (seek points): members in turn,
/// each a header and a raw deflate stream, through miniz_oxide.
struct GzReader {
    src: ImageReader,
    state: Box<InflateState>,
    buf: Vec<u8>,
    pos: usize,
    /// Compressed offset of `buf[pos]`.
    input: u64,
    /// Between members: the next one's header is still to be read.
    need_header: bool,
    done: bool,
}

impl GzReader {
    fn new(src: ImageReader, point: Option<(u64, Box<InflateState>)>) -> GzReader {
        let (input, state, need_header) = match point {
            Some((input, state)) => (input, state, false),
            None => (src.at, InflateState::new_boxed(DataFormat::Raw), true),
        };
        let mut src = src;
        src.at = input;
        GzReader {
            src,
            state,
            buf: Vec::new(),
            pos: 0,
            input,
            need_header,
            done: false,
        }
    }

    fn fill(&mut self) -> io::Result<bool> {
        if self.pos < self.buf.len() {
            return Ok(true);
        }
        self.buf.resize(READ_PIECE, 0);
        let n = self.src.read(&mut self.buf)?;
        self.buf.truncate(n);
        self.pos = 0;
        Ok(n > 0)
    }

    fn byte(&mut self) -> io::Result<u8> {
        if !self.fill()? {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "gzip header cut short",
            ));
        }
        let b = self.buf[self.pos];
        self.pos += 1;
        self.input += 1;
        Ok(b)
    }

    /// Reads a member header; false at the end of the file.
    fn header(&mut self) -> io::Result<bool> {
        if !self.fill()? {
            return Ok(false);
        }
        let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
        if self.byte()? != 0x1f || self.byte()? != 0x8b {
            return Err(bad("not gzip (no 1f 8b magic)"));
        }
        if self.byte()? != 8 {
            return Err(bad("gzip compression method is not deflate"));
        }
        let flags = self.byte()?;
        for _ in 0..6 {
            self.byte()?;
        }
        if flags & 4 != 0 {
            let len = self.byte()? as usize | (self.byte()? as usize) << 8;
            for _ in 0..len {
                self.byte()?;
            }
        }
        for flag in [8, 16] {
            if flags & flag != 0 {
                while self.byte()? != 0 {}
            }
        }
        if flags & 2 != 0 {
            self.byte()?;
            self.byte()?;
        }
        self.state.reset(DataFormat::Raw);
        Ok(true)
    }

    /// Where decompression could start again now.
    fn point(&self) -> Point {
        Point::Gzip {
            input: self.input,
            state: self.state.clone(),
        }
    }
}

impl Read for GzReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.done || out.is_empty() {
                return Ok(0);
            }
            if self.need_header {
                if !self.header()? {
                    self.done = true;
                    return Ok(0);
                }
                self.need_header = false;
            }
            let more = self.fill()?;
            let r = inflate(&mut self.state, &self.buf[self.pos..], out, MZFlush::None);
            self.pos += r.bytes_consumed;
            self.input += r.bytes_consumed as u64;
            match r.status {
                Ok(MZStatus::StreamEnd) => {
                    // The 8-byte trailer (CRC32, size), then maybe another member.
                    for _ in 0..8 {
                        self.byte()?;
                    }
                    self.need_header = true;
                }
                Ok(_) => {}
                Err(e) => {
                    if r.bytes_written == 0 {
                        return Err(if more {
                            io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("invalid deflate data near byte {} ({e:?})", self.input),
                            )
                        } else {
                            io::Error::new(io::ErrorKind::UnexpectedEof, "gzip stream cut short")
                        });
                    }
                }
            }
            if r.bytes_written > 0 {
                return Ok(r.bytes_written);
            }
            if !more && r.bytes_consumed == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "gzip stream cut short",
                ));
            }
        }
    }
}

/// A decoder at a known position of the uncompressed stream.
struct Decoder {
    pos: u64,
    read: Box<dyn Read + Send>,
}

/// One entry of the tarball.
struct Node {
    entry: Entry,
    /// Offset of its data in the uncompressed stream.
    data: u64,
    /// A GNU sparse file: its stored bytes are not its content.
    sparse: bool,
    /// A directory's names, sorted.
    children: Vec<Dirent>,
}

impl Node {
    /// A directory the tarball has no entry of its own for (the root, or a
    /// parent named only in its members' paths): 0755, root's, no time.
    fn implicit_dir(id: u64) -> Node {
        Node {
            entry: Entry {
                id,
                kind: EntryKind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: 0,
                size: 0,
                nlink: 2,
                xattrs: Vec::new(),
            },
            data: 0,
            sparse: false,
            children: Vec::new(),
        }
    }
}

/// A compressed tarball with its entry table and seek points.
pub struct Tar {
    bytes: Arc<dyn Bytes>,
    compression: Compression,
    nodes: Vec<Node>,
    /// Seek points by uncompressed offset, ascending; the first is the start.
    points: Vec<(u64, Point)>,
    decoder: Mutex<Option<Decoder>>,
    failed: Arc<Mutex<Option<InsideError>>>,
}

fn split_path(raw: &[u8]) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    for p in raw.split(|b| *b == b'/') {
        match p {
            b"" | b"." => {}
            b".." => return None,
            p => parts.push(String::from_utf8_lossy(p).into_owned()),
        }
    }
    Some(parts)
}

impl Tar {
    /// Reads the whole stream once: the entry table and the seek points.
    pub fn open(bytes: Arc<dyn Bytes>, compression: Compression) -> Result<Tar, InsideError> {
        let failed = Arc::new(Mutex::new(None));
        let mut t = Tar {
            bytes,
            compression,
            nodes: vec![Node::implicit_dir(0)],
            points: vec![(0, Point::Start)],
            decoder: Mutex::new(None),
            failed,
        };
        if compression == Compression::Xz {
            t.points.extend(t.xz_blocks());
        }
        t.index().map_err(|e| t.io_error(e))?;
        Ok(t)
    }

    fn name(&self) -> &str {
        self.bytes.name()
    }

    /// An I/O error from a decoder: the image's read error if that was the
    /// cause, or corrupt data.
    fn io_error(&self, e: io::Error) -> InsideError {
        match self.failed.lock().take() {
            Some(e) => e,
            None => InsideError::corrupt(self.name(), e.to_string()),
        }
    }

    fn reader(&self, at: u64) -> ImageReader {
        ImageReader {
            bytes: self.bytes.clone(),
            at,
            failed: self.failed.clone(),
        }
    }

    /// A decoder starting at `point`.
    fn start(&self, point: &Point) -> Box<dyn Read + Send> {
        match (self.compression, point) {
            (_, Point::Gzip { input, state }) => Box::new(GzReader::new(
                self.reader(*input),
                Some((*input, state.clone())),
            )),
            (_, Point::XzBlock { input, header }) => Box::new(liblzma::read::XzDecoder::new(
                io::Cursor::new(*header).chain(self.reader(*input)),
            )),
            (Compression::Gzip, Point::Start) => Box::new(GzReader::new(self.reader(0), None)),
            (Compression::Bzip2, Point::Start) => {
                Box::new(bzip2::read::MultiBzDecoder::new(self.reader(0)))
            }
            (Compression::Xz, Point::Start) => {
                Box::new(liblzma::read::XzDecoder::new_multi_decoder(self.reader(0)))
            }
        }
    }

    /// The blocks of a single-stream xz file, from its index (none if it has one
    /// block or the index cannot be read: the stream is then read from its start).
    fn xz_blocks(&self) -> Vec<(u64, Point)> {
        let size = self.bytes.size();
        let (Ok(head), Ok(foot)) = (
            self.bytes.read_vec(0, 12),
            self.bytes.read_vec(size.saturating_sub(12), 12),
        ) else {
            return Vec::new();
        };
        if &head[..6] != b"\xfd7zXZ\0" || &foot[10..] != b"YZ" {
            return Vec::new();
        }
        let backward = (u32::from_le_bytes([foot[4], foot[5], foot[6], foot[7]]) as u64 + 1) * 4;
        let Some(index_at) = size.checked_sub(12 + backward) else {
            return Vec::new();
        };
        let Ok(index) = self.bytes.read_vec(index_at, backward as usize) else {
            return Vec::new();
        };
        let mut p = 1;
        let varint = |p: &mut usize| -> Option<u64> {
            let mut v = 0u64;
            for i in 0..9 {
                let b = *index.get(*p)?;
                *p += 1;
                v |= ((b & 0x7f) as u64) << (7 * i);
                if b & 0x80 == 0 {
                    return Some(v);
                }
            }
            None
        };
        let mut header = [0; 12];
        header.copy_from_slice(&head);
        let (mut input, mut output) = (12u64, 0u64);
        let mut out = Vec::new();
        let Some(n) = varint(&mut p) else {
            return Vec::new();
        };
        for i in 0..n {
            let (Some(unpadded), Some(usize_)) = (varint(&mut p), varint(&mut p)) else {
                return Vec::new();
            };
            if i > 0 {
                out.push((output, Point::XzBlock { input, header }));
            }
            input += unpadded.div_ceil(4) * 4;
            output += usize_;
        }
        // The blocks must end where the index starts: one stream, no padding.
        if input != index_at {
            return Vec::new();
        }
        out
    }

    /// The one pass: entries (through the tar crate) and gzip seek points.
    fn index(&mut self) -> io::Result<()> {
        let points = Arc::new(Mutex::new(Vec::new()));
        let source: Box<dyn Read> = match self.compression {
            Compression::Gzip => Box::new(Checkpoints {
                gz: GzReader::new(self.reader(0), None),
                out: 0,
                last: 0,
                spacing: SPACING,
                points: points.clone(),
            }),
            _ => self.start(&Point::Start),
        };
        let mut archive = tar::Archive::new(source);
        let mut paths: HashMap<Vec<String>, u64> = HashMap::new();
        paths.insert(Vec::new(), 0);
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
                        .and_then(|t| paths.get(&t).copied());
                    if let (Some(id), Some((name, parent))) =
                        (target, self.parent(&mut paths, &parts))
                    {
                        self.nodes[id as usize].entry.nlink += 1;
                        self.link(parent, name, id, &mut paths, &parts);
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
            if parts.is_empty() {
                // `./` itself: the root's attributes.
                if e.kind == EntryKind::Dir {
                    let root = &mut self.nodes[0].entry;
                    (root.mode, root.uid, root.gid, root.mtime) = (e.mode, e.uid, e.gid, e.mtime);
                }
                continue;
            }
            let Some((name, parent)) = self.parent(&mut paths, &parts) else {
                continue;
            };
            if let Some(&id) = paths.get(&parts) {
                // Listed again: the later entry wins, as when unpacking; a
                // directory keeps its children.
                let n = &mut self.nodes[id as usize];
                if n.entry.kind == EntryKind::Dir && e.kind == EntryKind::Dir {
                    (n.entry.mode, n.entry.uid, n.entry.gid, n.entry.mtime) =
                        (e.mode, e.uid, e.gid, e.mtime);
                } else if n.entry.kind != EntryKind::Dir && e.kind != EntryKind::Dir {
                    n.entry = Entry {
                        id,
                        nlink: n.entry.nlink,
                        ..e
                    };
                    n.data = data;
                    n.sparse = sparse;
                }
                continue;
            }
            let id = self.nodes.len() as u64;
            let dir = e.kind == EntryKind::Dir;
            self.nodes.push(Node {
                entry: Entry {
                    id,
                    nlink: if dir { 2 } else { 1 },
                    ..e
                },
                data,
                sparse,
                children: Vec::new(),
            });
            self.link(parent, name, id, &mut paths, &parts);
        }
        drop(archive);
        for n in &mut self.nodes {
            n.children.sort_by(|a, b| a.name.cmp(&b.name));
        }
        let mut gz = std::mem::take(&mut *points.lock());
        self.points.append(&mut gz);
        self.points.sort_by_key(|(at, _)| *at);
        Ok(())
    }

    /// The parent directory of `parts` (made, as tar does, if the archive did
    /// not list it) and the last name; None if a parent is not a directory.
    fn parent<'p>(
        &mut self,
        paths: &mut HashMap<Vec<String>, u64>,
        parts: &'p [String],
    ) -> Option<(&'p str, u64)> {
        let (name, dirs) = parts.split_last()?;
        let mut at = 0u64;
        for i in 0..dirs.len() {
            let key = dirs[..=i].to_vec();
            at = match paths.get(&key) {
                Some(&id) if self.nodes[id as usize].entry.kind == EntryKind::Dir => id,
                Some(_) => return None,
                None => {
                    let id = self.nodes.len() as u64;
                    self.nodes.push(Node::implicit_dir(id));
                    self.link(at, &dirs[i], id, paths, &key);
                    id
                }
            };
        }
        Some((name.as_str(), at))
    }

    fn link(
        &mut self,
        parent: u64,
        name: &str,
        id: u64,
        paths: &mut HashMap<Vec<String>, u64>,
        key: &[String],
    ) {
        if paths.contains_key(key) {
            return;
        }
        paths.insert(key.to_vec(), id);
        let dir = self.nodes[id as usize].entry.kind == EntryKind::Dir;
        if dir {
            self.nodes[parent as usize].entry.nlink += 1;
        }
        self.nodes[parent as usize].children.push(Dirent {
            name: name.to_string(),
            id,
            dir,
        });
    }

    fn node(&self, id: u64) -> Result<&Node, InsideError> {
        self.nodes
            .get(id as usize)
            .ok_or_else(|| InsideError::corrupt(self.name(), format!("no entry {id}")))
    }

    /// Uncompressed bytes at `offset`, through the one decoder, restarted at the
    /// nearest seek point when it is past `offset` or far behind it.
    fn read_stream(&self, offset: u64, buf: &mut [u8]) -> Result<usize, InsideError> {
        let mut slot = self.decoder.lock();
        let best = self
            .points
            .iter()
            .rev()
            .find(|(at, _)| *at <= offset)
            .unwrap_or(&self.points[0]);
        let restart = match slot.as_ref() {
            Some(d) => d.pos > offset || d.pos < best.0,
            None => true,
        };
        if restart {
            *slot = Some(Decoder {
                pos: best.0,
                read: self.start(&best.1),
            });
        }
        let Some(d) = slot.as_mut() else {
            return Ok(0);
        };
        let mut skip = vec![0; 64 << 10];
        while d.pos < offset {
            let want = ((offset - d.pos) as usize).min(skip.len());
            match d.read.read(&mut skip[..want]) {
                Ok(0) => return Ok(0),
                Ok(n) => d.pos += n as u64,
                Err(e) => {
                    *slot = None;
                    return Err(self.io_error(e));
                }
            }
        }
        let mut done = 0;
        while done < buf.len() {
            match d.read.read(&mut buf[done..]) {
                Ok(0) => break,
                Ok(n) => {
                    done += n;
                    d.pos += n as u64;
                }
                Err(e) => {
                    *slot = None;
                    return Err(self.io_error(e));
                }
            }
        }
        Ok(done)
    }
}

/// The gzip decoder during the first pass, copying its state every `spacing`
/// bytes of output.
struct Checkpoints {
    gz: GzReader,
    out: u64,
    last: u64,
    spacing: u64,
    points: Arc<Mutex<Vec<(u64, Point)>>>,
}

impl Read for Checkpoints {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.out - self.last >= self.spacing && !self.gz.need_header {
            let mut points = self.points.lock();
            points.push((self.out, self.gz.point()));
            self.last = self.out;
            if points.len() >= MAX_POINTS {
                // Keep every other one: the bound holds, the spacing doubles.
                let kept: Vec<_> = std::mem::take(&mut *points)
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| i % 2 == 1)
                    .map(|(_, p)| p)
                    .collect();
                *points = kept;
                self.spacing *= 2;
            }
        }
        let n = self.gz.read(buf)?;
        self.out += n as u64;
        Ok(n)
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
        let n = self.node(dir)?;
        if n.entry.kind != EntryKind::Dir {
            return Err(InsideError::corrupt(
                self.name(),
                format!("entry {dir} is not a directory"),
            ));
        }
        Ok(Arc::new(n.children.clone()))
    }

    fn lookup(&self, dir: u64, name: &str) -> Result<Option<u64>, InsideError> {
        let n = self.node(dir)?;
        Ok(n.children
            .binary_search_by(|d| d.name.as_str().cmp(name))
            .ok()
            .map(|i| n.children[i].id))
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
        let got = self.read_stream(n.data + offset, &mut buf[..len])?;
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
