//! What the stream formats (tarballs, initrds) learn in their one pass over an
//! image: the entry table ([`Table`]: every entry, where its data starts in which
//! stream, each directory's names) and each stream's seek points; and the index
//! file that keeps both in `--cache-dir` so the pass happens once per image, not
//! once per process.
//!
//! Index files are `DIR/inside/SHA256.FORMAT.idx` (`tar`, `initrd`, `stream`):
//! the image is named by its sha256, so
//! an index is valid forever. Each holds a magic, [`VERSION`], the format it
//! indexes, the body, and the sha256 of all that; one that is damaged, of another
//! version or of another format is ignored (one log line) and rebuilt. Written
//! under a temporary name and renamed, so a reader never sees half a file. Every
//! length read from one is checked against what is left of the file, and every id
//! against the table, so a bad file is an error, never a panic or an allocation
//! beyond the file's size.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use log::{debug, info, warn};
use sha2::{Digest, Sha256};

use super::stream::{Codec, Point};
use super::{Dirent, Entry, EntryKind, InsideError};

/// The index file layout's version: a file of any other is rebuilt.
pub const VERSION: u32 = 1;
const MAGIC: &[u8; 16] = b"pgbootfs-inside\0";

/// One entry of a stream format's image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The entry as shown.
    pub entry: Entry,
    /// Which stream its data is in (initrd segments; 0 for tarballs).
    pub stream: u32,
    /// Offset of its data in that stream, uncompressed.
    pub data: u64,
    /// A GNU sparse file: its stored bytes are not its content.
    pub sparse: bool,
    /// A directory's names, sorted once the table is finished.
    pub children: Vec<Dirent>,
}

/// Entry `id` of a finished table (`Table::finish`) of image `image`.
pub fn node<'a>(nodes: &'a [Node], image: &str, id: u64) -> Result<&'a Node, InsideError> {
    nodes
        .get(id as usize)
        .ok_or_else(|| InsideError::corrupt(image, format!("no entry {id}")))
}

/// Directory `dir`'s names, for [`Archive::list`](super::Archive::list).
pub fn list(nodes: &[Node], image: &str, dir: u64) -> Result<Arc<Vec<Dirent>>, InsideError> {
    let n = node(nodes, image, dir)?;
    if n.entry.kind != EntryKind::Dir {
        return Err(InsideError::corrupt(
            image,
            format!("entry {dir} is not a directory"),
        ));
    }
    Ok(Arc::new(n.children.clone()))
}

/// The entry `name` of directory `dir` (names are sorted once finished).
pub fn lookup(
    nodes: &[Node],
    image: &str,
    dir: u64,
    name: &str,
) -> Result<Option<u64>, InsideError> {
    let n = node(nodes, image, dir)?;
    Ok(n.children
        .binary_search_by(|d| d.name.as_str().cmp(name))
        .ok()
        .map(|i| n.children[i].id))
}

impl Node {
    /// A directory the image has no entry of its own for (the root, or a parent
    /// named only in its members' paths): 0755, root's, no time.
    pub fn implicit_dir(id: u64) -> Node {
        Node {
            entry: Entry::made_dir(id),
            stream: 0,
            data: 0,
            sparse: false,
            children: Vec::new(),
        }
    }
}

/// Splits a stored path into names: empty and `.` parts dropped; None if it
/// climbs out (`..`).
pub fn split_path(raw: &[u8]) -> Option<Vec<String>> {
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

/// The entry table, built in stored order: node 0 is the root.
pub struct Table {
    /// Every entry by id.
    pub nodes: Vec<Node>,
    paths: HashMap<Vec<String>, u64>,
}

impl Default for Table {
    fn default() -> Self {
        Table::new()
    }
}

impl Table {
    /// A table with only the root.
    pub fn new() -> Table {
        let mut paths = HashMap::new();
        paths.insert(Vec::new(), 0);
        Table {
            nodes: vec![Node::implicit_dir(0)],
            paths,
        }
    }

    /// The id of the entry at `parts`, if there is one.
    pub fn get(&self, parts: &[String]) -> Option<u64> {
        self.paths.get(parts).copied()
    }

    /// Adds entry `e` at `parts`, its data at `data` of `stream`. A path listed
    /// again replaces the earlier entry, as unpacking does (the kernel's initrd
    /// unpacking and tar alike): a directory keeps its children and takes the new
    /// attributes; a non-directory replaces a non-directory; a directory and a
    /// non-directory do not replace each other (unpacking cannot remove a
    /// directory that has entries, nor make one over a file it could not remove).
    pub fn add(&mut self, parts: &[String], e: Entry, stream: u32, data: u64, sparse: bool) {
        if parts.is_empty() {
            // `./` itself: the root's attributes.
            if e.kind == EntryKind::Dir {
                let root = &mut self.nodes[0].entry;
                (root.mode, root.uid, root.gid, root.mtime) = (e.mode, e.uid, e.gid, e.mtime);
            }
            return;
        }
        let Some((name, parent)) = self.parent(parts) else {
            return;
        };
        if let Some(&id) = self.paths.get(parts) {
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
                n.stream = stream;
                n.data = data;
                n.sparse = sparse;
            }
            return;
        }
        let id = self.nodes.len() as u64;
        let dir = e.kind == EntryKind::Dir;
        self.nodes.push(Node {
            entry: Entry {
                id,
                nlink: if dir { 2 } else { 1 },
                ..e
            },
            stream,
            data,
            sparse,
            children: Vec::new(),
        });
        self.link(parent, name, id, parts);
    }

    /// Adds `parts` as one more name of entry `id` (a hard link). A
    /// non-directory already at that path is replaced, as unpacking removes it
    /// before linking; nothing happens if a directory is there or a parent is not
    /// a directory.
    pub fn hard_link(&mut self, parts: &[String], id: u64) {
        if id as usize >= self.nodes.len() {
            return;
        }
        let Some((name, parent)) = self.parent(parts) else {
            return;
        };
        match self.paths.get(parts).copied() {
            None => {
                self.nodes[id as usize].entry.nlink += 1;
                self.link(parent, name, id, parts);
            }
            Some(old) if old != id && self.nodes[old as usize].entry.kind != EntryKind::Dir => {
                let old_node = &mut self.nodes[old as usize].entry;
                old_node.nlink = old_node.nlink.saturating_sub(1);
                self.nodes[id as usize].entry.nlink += 1;
                if let Some(d) = self.nodes[parent as usize]
                    .children
                    .iter_mut()
                    .find(|d| d.name == name)
                {
                    d.id = id;
                }
                self.paths.insert(parts.to_vec(), id);
            }
            Some(_) => {}
        }
    }

    /// The parent directory of `parts` (made, as unpacking does, if the image did
    /// not list it) and the last name; None if a parent is not a directory.
    fn parent<'p>(&mut self, parts: &'p [String]) -> Option<(&'p str, u64)> {
        let (name, dirs) = parts.split_last()?;
        let mut at = 0u64;
        for i in 0..dirs.len() {
            let key = &dirs[..=i];
            at = match self.paths.get(key) {
                Some(&id) if self.nodes[id as usize].entry.kind == EntryKind::Dir => id,
                Some(_) => return None,
                None => {
                    let id = self.nodes.len() as u64;
                    self.nodes.push(Node::implicit_dir(id));
                    self.link(at, &dirs[i], id, key);
                    id
                }
            };
        }
        Some((name.as_str(), at))
    }

    fn link(&mut self, parent: u64, name: &str, id: u64, key: &[String]) {
        if self.paths.contains_key(key) {
            return;
        }
        self.paths.insert(key.to_vec(), id);
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

    /// The finished table: children sorted by name, the path map dropped.
    pub fn finish(mut self) -> Vec<Node> {
        for n in &mut self.nodes {
            n.children.sort_by(|a, b| a.name.cmp(&b.name));
        }
        self.nodes
    }
}

/// One stream's part of an index: how it is compressed, where it is in the
/// image, where it ends, its seek points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamIndex {
    /// Its codec.
    pub codec: Codec,
    /// Image offset of its first byte.
    pub start: u64,
    /// Image offset past its last byte, if known.
    pub end: Option<u64>,
    /// Its uncompressed length, if known.
    pub out: Option<u64>,
    /// Seek points by uncompressed offset.
    pub points: Vec<(u64, Point)>,
}

/// Everything an index file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    /// The entries, by id.
    pub nodes: Vec<Node>,
    /// The streams entries point into.
    pub streams: Vec<StreamIndex>,
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u64(v.len() as u64);
        self.0.extend_from_slice(v);
    }
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

type Bad = String;

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Bad> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.data.len())
            .ok_or_else(|| format!("cut short at byte {}", self.at))?;
        let s = &self.data[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, Bad> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Bad> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().unwrap_or_default(),
        ))
    }
    fn u32(&mut self) -> Result<u32, Bad> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self) -> Result<u64, Bad> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    /// A count of items each at least `min` bytes long: no more than the rest of
    /// the file could hold.
    fn count(&mut self, min: usize) -> Result<usize, Bad> {
        let n = self.u64()?;
        let left = (self.data.len() - self.at) / min.max(1);
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= left)
            .ok_or_else(|| format!("a count of {n} at byte {} is past the file", self.at))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, Bad> {
        let n = self.count(1)?;
        Ok(self.take(n)?.to_vec())
    }
}

impl Index {
    /// The file's bytes for the format named `format`.
    pub fn encode(&self, format: &str) -> Vec<u8> {
        let mut w = Writer(Vec::new());
        w.0.extend_from_slice(MAGIC);
        w.u32(VERSION);
        w.bytes(format.as_bytes());
        w.u64(self.nodes.len() as u64);
        for n in &self.nodes {
            let e = &n.entry;
            match &e.kind {
                EntryKind::Dir => w.u8(0),
                EntryKind::File => w.u8(1),
                EntryKind::Symlink(t) => {
                    w.u8(2);
                    w.bytes(t);
                }
                EntryKind::Special => w.u8(3),
            }
            w.u16(e.mode);
            w.u32(e.uid);
            w.u32(e.gid);
            w.u64(e.mtime as u64);
            w.u64(e.size);
            w.u32(e.nlink);
            w.u64(e.xattrs.len() as u64);
            for (k, v) in &e.xattrs {
                w.bytes(k);
                w.bytes(v);
            }
            w.u32(n.stream);
            w.u64(n.data);
            w.u8(n.sparse as u8);
            w.u64(n.children.len() as u64);
            for c in &n.children {
                w.bytes(c.name.as_bytes());
                w.u64(c.id);
                w.u8(c.dir as u8);
            }
        }
        w.u64(self.streams.len() as u64);
        for s in &self.streams {
            w.u8(s.codec.id());
            w.u64(s.start);
            w.u8(s.end.is_some() as u8);
            w.u64(s.end.unwrap_or(0));
            w.u8(s.out.is_some() as u8);
            w.u64(s.out.unwrap_or(0));
            w.u64(s.points.len() as u64);
            for (at, p) in &s.points {
                w.u64(*at);
                match p {
                    Point::Start => w.u8(0),
                    Point::Gzip {
                        input,
                        bits,
                        bit_buf,
                        window,
                    } => {
                        w.u8(1);
                        w.u64(*input);
                        w.u8(*bits);
                        w.u8(*bit_buf);
                        w.bytes(window);
                    }
                    Point::XzBlock { input, header } => {
                        w.u8(2);
                        w.u64(*input);
                        w.0.extend_from_slice(header);
                    }
                    Point::Lz4Block { input } => {
                        w.u8(3);
                        w.u64(*input);
                    }
                    Point::Bzip2Block { bit, eos, crc } => {
                        w.u8(4);
                        w.u64(*bit);
                        w.u64(*eos);
                        w.u32(*crc);
                    }
                }
            }
        }
        let sum = Sha256::digest(&w.0);
        w.0.extend_from_slice(&sum);
        w.0
    }

    /// Reads an index file's bytes, which must be of `format`.
    pub fn decode(data: &[u8], format: &str) -> Result<Index, Bad> {
        let body_len = data
            .len()
            .checked_sub(32)
            .ok_or("shorter than its checksum")?;
        let (body, sum) = data.split_at(body_len);
        if Sha256::digest(body).as_slice() != sum {
            return Err("its checksum does not match (damaged)".into());
        }
        let mut r = Reader { data: body, at: 0 };
        if r.take(16)? != MAGIC {
            return Err("not a pgbootfs index file".into());
        }
        let version = r.u32()?;
        if version != VERSION {
            return Err(format!("version {version}, this pgbootfs writes {VERSION}"));
        }
        let f = r.bytes()?;
        if f != format.as_bytes() {
            return Err(format!(
                "it indexes {}, not {format}",
                String::from_utf8_lossy(&f)
            ));
        }
        let count = r.count(40)?;
        let mut nodes = Vec::with_capacity(count);
        for id in 0..count as u64 {
            let kind = match r.u8()? {
                0 => EntryKind::Dir,
                1 => EntryKind::File,
                2 => EntryKind::Symlink(r.bytes()?),
                3 => EntryKind::Special,
                k => return Err(format!("entry {id} has kind {k}")),
            };
            let mode = r.u16()?;
            let (uid, gid) = (r.u32()?, r.u32()?);
            let (mtime, size, nlink) = (r.u64()? as i64, r.u64()?, r.u32()?);
            let nx = r.count(16)?;
            let mut xattrs = Vec::with_capacity(nx);
            for _ in 0..nx {
                xattrs.push((r.bytes()?, r.bytes()?));
            }
            let (stream, data, sparse) = (r.u32()?, r.u64()?, r.u8()? != 0);
            let nc = r.count(17)?;
            let mut children = Vec::with_capacity(nc);
            for _ in 0..nc {
                let name = String::from_utf8(r.bytes()?).map_err(|_| "a name is not UTF-8")?;
                children.push(Dirent {
                    name,
                    id: r.u64()?,
                    dir: r.u8()? != 0,
                });
            }
            nodes.push(Node {
                entry: Entry {
                    id,
                    kind,
                    mode,
                    uid,
                    gid,
                    mtime,
                    size,
                    nlink,
                    xattrs,
                },
                stream,
                data,
                sparse,
                children,
            });
        }
        let ns = r.count(35)?;
        let mut streams = Vec::with_capacity(ns);
        for i in 0..ns {
            let codec = Codec::from_id(r.u8()?).ok_or(format!("stream {i}: unknown codec"))?;
            let start = r.u64()?;
            let has_end = r.u8()? != 0;
            let end = r.u64()?;
            let has_out = r.u8()? != 0;
            let out = r.u64()?;
            let np = r.count(9)?;
            let mut points = Vec::with_capacity(np);
            for _ in 0..np {
                let at = r.u64()?;
                let p = match r.u8()? {
                    0 => Point::Start,
                    1 => Point::Gzip {
                        input: r.u64()?,
                        bits: r.u8()?,
                        bit_buf: r.u8()?,
                        window: Arc::new(r.bytes()?),
                    },
                    2 => {
                        let input = r.u64()?;
                        let mut header = [0; 12];
                        header.copy_from_slice(r.take(12)?);
                        Point::XzBlock { input, header }
                    }
                    3 => Point::Lz4Block { input: r.u64()? },
                    4 => Point::Bzip2Block {
                        bit: r.u64()?,
                        eos: r.u64()?,
                        crc: r.u32()?,
                    },
                    t => return Err(format!("stream {i}: seek point of kind {t}")),
                };
                points.push((at, p));
            }
            streams.push(StreamIndex {
                codec,
                start,
                end: has_end.then_some(end),
                out: has_out.then_some(out),
                points,
            });
        }
        if r.at != body.len() {
            return Err("bytes after its end".into());
        }
        // Every id the table names must exist, and only directories have names.
        for n in &nodes {
            if n.stream as usize >= streams.len().max(1) {
                return Err(format!("entry {} is in stream {}", n.entry.id, n.stream));
            }
            if !n.children.is_empty() && n.entry.kind != EntryKind::Dir {
                return Err(format!(
                    "entry {} has names but is no directory",
                    n.entry.id
                ));
            }
            for c in &n.children {
                if c.id as usize >= nodes.len() || c.id == 0 {
                    return Err(format!("entry {} names entry {}", n.entry.id, c.id));
                }
            }
        }
        if nodes.first().is_none_or(|n| n.entry.kind != EntryKind::Dir) {
            return Err("no root directory".into());
        }
        Ok(Index { nodes, streams })
    }
}

/// Where an image's index file (or decompressed copy) is kept: the directory
/// and the image's sha256.
pub struct Persist<'a> {
    /// `--cache-dir`/inside.
    pub dir: &'a IndexDir,
    /// The image's content.
    pub sha256: &'a str,
}

/// Where index files live: `--cache-dir`/inside.
#[derive(Debug, Clone)]
pub struct IndexDir {
    dir: PathBuf,
}

static NEXT_TMP: AtomicU64 = AtomicU64::new(0);

impl IndexDir {
    /// Index files under `cache_dir/inside` (made when first written). Removes
    /// partial files left by processes that are gone.
    pub fn new(cache_dir: &Path) -> IndexDir {
        let dir = cache_dir.join("inside");
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let pid = name
                    .strip_prefix(".part-")
                    .and_then(|r| r.split('-').next())
                    .and_then(|p| p.parse::<u32>().ok());
                if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        IndexDir { dir }
    }

    /// By format too: the same bytes may be imported under two file types.
    fn path(&self, sha256: &str, format: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.{format}.idx"))
    }

    fn part(&self) -> PathBuf {
        self.dir.join(format!(
            ".part-{}-{}",
            std::process::id(),
            NEXT_TMP.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// The decompressed copy of image `sha256`, if one was made, and its size.
    pub fn open_unpacked(&self, sha256: &str) -> Option<(fs::File, u64)> {
        let f = fs::File::open(self.dir.join(format!("{sha256}.raw"))).ok()?;
        let size = f.metadata().ok()?.len();
        Some((f, size))
    }

    /// Makes the decompressed copy of image `sha256`: `fill` writes it into a
    /// temporary file, which is renamed once it is whole.
    pub fn store_unpacked(
        &self,
        sha256: &str,
        fill: impl FnOnce(&mut fs::File) -> std::io::Result<()>,
    ) -> std::io::Result<(fs::File, u64)> {
        let tmp = self.part();
        let path = self.dir.join(format!("{sha256}.raw"));
        let r = fs::create_dir_all(&self.dir)
            .and_then(|_| fs::File::create_new(&tmp))
            .and_then(|mut f| {
                fill(&mut f)?;
                f.sync_all()?;
                fs::rename(&tmp, &path)?;
                let size = f.metadata()?.len();
                Ok((fs::File::open(&path)?, size))
            });
        if r.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        r
    }

    /// The index of `sha256` for `format`, if a good one is there. A bad one is
    /// logged once and removed, so it is rebuilt.
    pub fn load(&self, sha256: &str, format: &str, image: &str) -> Option<Index> {
        let path = self.path(sha256, format);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!("inside {image}: cannot read index {}: {e}", path.display());
                }
                return None;
            }
        };
        match Index::decode(&data, format) {
            Ok(ix) => {
                debug!("inside {image}: index {} read", path.display());
                Some(ix)
            }
            Err(why) => {
                warn!(
                    "inside {image}: index {} ignored and rebuilt: {why}",
                    path.display()
                );
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Writes the index of `sha256` (temporary file, fsync, rename). A failure
    /// costs only the next start's pass: logged, not returned.
    pub fn store(&self, sha256: &str, format: &str, index: &Index, image: &str) {
        let data = index.encode(format);
        let tmp = self.part();
        let path = self.path(sha256, format);
        let r = fs::create_dir_all(&self.dir)
            .and_then(|_| {
                let mut f = fs::File::create(&tmp)?;
                f.write_all(&data)?;
                f.sync_all()
            })
            .and_then(|_| fs::rename(&tmp, &path));
        match r {
            Ok(()) => info!(
                "inside {image}: index written to {} ({} bytes)",
                path.display(),
                data.len()
            ),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                warn!(
                    "inside {image}: cannot write index {}: {e}; it will be built again next start",
                    path.display()
                );
            }
        }
    }
}
