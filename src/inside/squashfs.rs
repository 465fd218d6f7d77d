//! A lazy squashfs 4.0 reader, written here rather than taken from a crate (see
//! doc/DEVELOPMENT.md, "Inside images"): opening reads the 96-byte superblock
//! only; a listing reads the directory's inode and its part of the directory
//! table; a read decompresses only the data blocks it covers. Everything goes
//! through [`Bytes`], so through the same chunk cache as every other reader.
//!
//! Layout facts (the kernel's Documentation/filesystems/squashfs.rst and
//! squashfs-tools' squashfs_fs.h): all little-endian; metadata (inodes,
//! directories, fragment, id and xattr tables) lives in blocks of at most 8 KiB
//! uncompressed, each behind a 16-bit header (bit 15: stored uncompressed; the
//! rest: bytes on disk); an inode reference is `block << 16 | offset`, the block
//! relative to the inode table; the fragment, id and xattr-id tables are arrays
//! of metadata blocks whose positions are listed, as u64s, at the table's start.

use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

use self::ahead::Ahead;
use super::bytes::Bytes;
use super::decompress::Codec;
use super::error::InsideError;
use super::{Archive, Dirent, Entry, EntryKind, Xattr};

const MAGIC: u32 = 0x7371_7368;
const META_MAX: usize = 8192;
const NO_FRAGMENT: u32 = 0xFFFF_FFFF;
const NO_XATTR: u32 = 0xFFFF_FFFF;
const NO_TABLE: u64 = u64::MAX;

/// Metadata blocks kept decompressed per image: 4 MiB, the whole inode and
/// directory tables of an image of about 60,000 entries (a second `find`
/// decompresses nothing again), or those around the current walk.
const META_CACHE: usize = 512;
/// Data and fragment blocks kept decompressed per image (at most 1 MiB each):
/// a sequential reader needs the one it is in; a few serve concurrent readers.
const BLOCK_CACHE: usize = 8;
/// Parsed directory listings and file block lists kept per image.
const LIST_CACHE: usize = 128;
/// Files whose last read's end is remembered, to tell sequential readers.
const READERS: usize = 64;

/// The superblock's fields this reader uses.
#[derive(Debug, Clone)]
struct Super {
    block_size: u32,
    frag_count: u32,
    id_count: u16,
    root: u64,
    id_table: u64,
    xattr_table: u64,
    inode_table: u64,
    dir_table: u64,
    frag_table: u64,
}

/// One decompressed metadata block and where the next one starts.
struct Meta {
    data: Vec<u8>,
    next: u64,
}

/// Where a file's bytes are: its full blocks, then maybe a fragment's tail.
struct Layout {
    size: u64,
    /// Size word of each block (bit 24: uncompressed; 0: a sparse block of zeros).
    words: Vec<u32>,
    /// Where each block starts.
    starts: Vec<u64>,
    /// The fragment and the offset of this file's tail in it.
    fragment: Option<(u32, u32)>,
}

/// A squashfs image, read on demand.
pub struct Squashfs {
    /// Where metadata is read (superblock, tables).
    bytes: Arc<dyn Bytes>,
    /// Where data and fragment blocks are read: the same image, through a
    /// reader that may stream ahead.
    data: Arc<dyn Bytes>,
    sb: Super,
    codec: Codec,
    meta: Mutex<LruCache<u64, Arc<Meta>>>,
    blocks: Mutex<LruCache<u64, Arc<Vec<u8>>>>,
    dirs: Mutex<LruCache<u64, Arc<Vec<Dirent>>>>,
    layouts: Mutex<LruCache<u64, Arc<Layout>>>,
    ids: Mutex<Option<Arc<Vec<u32>>>>,
    /// Where the last read of each recently read file ended.
    ends: Mutex<LruCache<u64, u64>>,
    /// The last fragment fetched (not found in `blocks`).
    last_fragment: Mutex<Option<u32>>,
    /// Decompression ahead of sequential readers.
    ahead: Ahead,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn cache<K: std::hash::Hash + Eq, V>(n: usize) -> Mutex<LruCache<K, V>> {
    Mutex::new(LruCache::new(
        NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN),
    ))
}

/// A position in the metadata: a block and an offset in its decompressed bytes.
#[derive(Clone, Copy)]
struct Cursor {
    block: u64,
    offset: usize,
}

impl Squashfs {
    /// Opens the image: reads and checks the superblock, nothing else.
    pub fn open(bytes: Arc<dyn Bytes>) -> Result<Squashfs, InsideError> {
        Squashfs::open_split(bytes.clone(), bytes)
    }

    /// [`Squashfs::open`] with metadata read through `meta` (scattered small
    /// reads) and file data through `data` (sequential runs), two readers of the
    /// same image.
    pub fn open_split(meta: Arc<dyn Bytes>, data: Arc<dyn Bytes>) -> Result<Squashfs, InsideError> {
        let bytes = meta;
        let name = bytes.name().to_string();
        let bad = |why: String| InsideError::corrupt(&name, why);
        if bytes.size() < 96 {
            return Err(bad(format!(
                "{} bytes: too short for a squashfs superblock",
                bytes.size()
            )));
        }
        let b = bytes.read_vec(0, 96)?;
        if u32_at(&b, 0) != MAGIC {
            return Err(bad("no squashfs magic (hsqs) at the start".into()));
        }
        let (major, minor) = (u16_at(&b, 28), u16_at(&b, 30));
        if (major, minor) != (4, 0) {
            return Err(InsideError::unsupported(
                &name,
                format!("squashfs version {major}.{minor} (only 4.0 is read)"),
            ));
        }
        let block_size = u32_at(&b, 12);
        let block_log = u16_at(&b, 22);
        if !(4096..=1 << 20).contains(&block_size)
            || !block_size.is_power_of_two()
            || 1u32 << block_log.min(31) != block_size
        {
            return Err(bad(format!("block size {block_size} (log {block_log})")));
        }
        let codec_id = u16_at(&b, 20);
        let codec = Codec::from_id(codec_id)
            .ok_or_else(|| InsideError::unsupported(&name, format!("compressor id {codec_id}")))?;
        if codec == Codec::Lzo {
            return Err(InsideError::unsupported(
                &name,
                "lzo-compressed squashfs (no maintained LZO crate; mksquashfs -comp xz, gzip, zstd or lz4 are read)",
            ));
        }
        let bytes_used = u64_at(&b, 40);
        if bytes_used > bytes.size() {
            return Err(bad(format!(
                "the superblock says {bytes_used} bytes but the image has {}",
                bytes.size()
            )));
        }
        let sb = Super {
            block_size,
            frag_count: u32_at(&b, 16),
            id_count: u16_at(&b, 26),
            root: u64_at(&b, 32),
            id_table: u64_at(&b, 48),
            xattr_table: u64_at(&b, 56),
            inode_table: u64_at(&b, 64),
            dir_table: u64_at(&b, 72),
            frag_table: u64_at(&b, 80),
        };
        for (what, at) in [
            ("inode table", sb.inode_table),
            ("directory table", sb.dir_table),
            ("id table", sb.id_table),
        ] {
            if at >= bytes_used {
                return Err(bad(format!(
                    "{what} at {at}, past the image's {bytes_used} bytes"
                )));
            }
        }
        Ok(Squashfs {
            ahead: Ahead::new(data.clone(), codec, block_size as usize),
            bytes,
            data,
            sb,
            codec,
            meta: cache(META_CACHE),
            blocks: cache(BLOCK_CACHE),
            dirs: cache(LIST_CACHE),
            layouts: cache(LIST_CACHE),
            ids: Mutex::new(None),
            ends: cache(READERS),
            last_fragment: Mutex::new(None),
        })
    }

    /// The compressor, for messages.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    fn name(&self) -> &str {
        self.bytes.name()
    }

    fn corrupt(&self, why: impl Into<String>) -> InsideError {
        InsideError::corrupt(self.name(), why)
    }

    /// The metadata block at `pos`, decompressed.
    fn meta_block(&self, pos: u64) -> Result<Arc<Meta>, InsideError> {
        if let Some(m) = self.meta.lock().get(&pos) {
            return Ok(m.clone());
        }
        let h = self.bytes.read_vec(pos, 2)?;
        let header = u16_at(&h, 0);
        let len = (header & 0x7fff) as usize;
        if len == 0 || len > META_MAX {
            return Err(self.corrupt(format!("metadata block at {pos} claims {len} bytes")));
        }
        let raw = self.bytes.read_vec(pos + 2, len)?;
        let data = if header & 0x8000 != 0 {
            raw
        } else {
            self.codec
                .inflate(&raw, META_MAX)
                .map_err(|e| self.corrupt(format!("metadata block at {pos}: {e}")))?
        };
        let m = Arc::new(Meta {
            data,
            next: pos + 2 + len as u64,
        });
        self.meta.lock().put(pos, m.clone());
        Ok(m)
    }

    /// `len` bytes of metadata from `at`, across blocks; moves `at` past them.
    fn meta_read(&self, at: &mut Cursor, len: usize) -> Result<Vec<u8>, InsideError> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let m = self.meta_block(at.block)?;
            if at.offset >= m.data.len() {
                if at.offset > m.data.len() {
                    return Err(self.corrupt(format!(
                        "offset {} past the metadata block at {}",
                        at.offset, at.block
                    )));
                }
                *at = Cursor {
                    block: m.next,
                    offset: 0,
                };
                continue;
            }
            let take = (len - out.len()).min(m.data.len() - at.offset);
            out.extend_from_slice(&m.data[at.offset..at.offset + take]);
            at.offset += take;
        }
        Ok(out)
    }

    /// Entry `index` of a table of fixed-size records kept in metadata blocks
    /// whose positions are listed at `table`.
    fn table_entry(&self, table: u64, index: u64, size: usize) -> Result<Vec<u8>, InsideError> {
        let per_block = (META_MAX / size) as u64;
        let loc = self.bytes.read_vec(table + 8 * (index / per_block), 8)?;
        let mut at = Cursor {
            block: u64_at(&loc, 0),
            offset: (index % per_block) as usize * size,
        };
        self.meta_read(&mut at, size)
    }

    /// The uid/gid table (at most 65535 ids), read once on first need.
    fn ids(&self) -> Result<Arc<Vec<u32>>, InsideError> {
        if let Some(ids) = self.ids.lock().as_ref() {
            return Ok(ids.clone());
        }
        let n = self.sb.id_count as usize;
        let blocks = (n * 4).div_ceil(META_MAX);
        let locs = self.bytes.read_vec(self.sb.id_table, 8 * blocks)?;
        let mut raw = Vec::with_capacity(n * 4);
        for i in 0..blocks {
            let mut at = Cursor {
                block: u64_at(&locs, 8 * i),
                offset: 0,
            };
            let want = (n * 4 - raw.len()).min(META_MAX);
            raw.extend(self.meta_read(&mut at, want)?);
        }
        let ids = Arc::new(
            raw.chunks_exact(4)
                .map(|c| u32_at(c, 0))
                .collect::<Vec<_>>(),
        );
        *self.ids.lock() = Some(ids.clone());
        Ok(ids)
    }

    fn id(&self, index: u16) -> Result<u32, InsideError> {
        self.ids()?
            .get(index as usize)
            .copied()
            .ok_or_else(|| self.corrupt(format!("id index {index} past the id table")))
    }

    fn inode_cursor(&self, r: u64) -> Cursor {
        Cursor {
            block: self.sb.inode_table + (r >> 16),
            offset: (r & 0xffff) as usize,
        }
    }

    /// Parses the inode at reference `r`: its entry, and for files where the
    /// block list starts, for directories where the listing is.
    fn inode(&self, r: u64) -> Result<(Entry, Extra), InsideError> {
        let mut at = self.inode_cursor(r);
        let h = self.meta_read(&mut at, 16)?;
        let kind = u16_at(&h, 0);
        let mut e = Entry {
            id: r,
            kind: EntryKind::File,
            mode: u16_at(&h, 2) & 0o7777,
            uid: self.id(u16_at(&h, 4))?,
            gid: self.id(u16_at(&h, 6))?,
            mtime: u32_at(&h, 8) as i64,
            size: 0,
            nlink: 1,
            xattrs: Vec::new(),
        };
        let mut xattr = NO_XATTR;
        let extra = match kind {
            1 => {
                let b = self.meta_read(&mut at, 16)?;
                e.kind = EntryKind::Dir;
                e.nlink = u32_at(&b, 4);
                e.size = u16_at(&b, 8) as u64;
                Extra::Dir {
                    block: u32_at(&b, 0) as u64,
                    offset: u16_at(&b, 10) as usize,
                    size: u16_at(&b, 8) as u64,
                }
            }
            8 => {
                let b = self.meta_read(&mut at, 24)?;
                e.kind = EntryKind::Dir;
                e.nlink = u32_at(&b, 0);
                e.size = u32_at(&b, 4) as u64;
                xattr = u32_at(&b, 20);
                Extra::Dir {
                    block: u32_at(&b, 8) as u64,
                    offset: u16_at(&b, 18) as usize,
                    size: u32_at(&b, 4) as u64,
                }
            }
            2 => {
                let b = self.meta_read(&mut at, 16)?;
                e.size = u32_at(&b, 12) as u64;
                Extra::File {
                    start: u32_at(&b, 0) as u64,
                    fragment: u32_at(&b, 4),
                    frag_offset: u32_at(&b, 8),
                    list: at,
                }
            }
            9 => {
                let b = self.meta_read(&mut at, 40)?;
                e.size = u64_at(&b, 8);
                e.nlink = u32_at(&b, 24);
                xattr = u32_at(&b, 36);
                Extra::File {
                    start: u64_at(&b, 0),
                    fragment: u32_at(&b, 28),
                    frag_offset: u32_at(&b, 32),
                    list: at,
                }
            }
            3 | 10 => {
                let b = self.meta_read(&mut at, 8)?;
                e.nlink = u32_at(&b, 0);
                let len = u32_at(&b, 4) as usize;
                if len > 4096 {
                    return Err(
                        self.corrupt(format!("symlink target of {len} bytes at inode {r:#x}"))
                    );
                }
                let target = self.meta_read(&mut at, len)?;
                if kind == 10 {
                    xattr = u32_at(&self.meta_read(&mut at, 4)?, 0);
                }
                e.size = len as u64;
                e.kind = EntryKind::Symlink(target);
                Extra::None
            }
            4..=7 | 11..=14 => {
                // Devices, fifos and sockets: shown as empty files.
                let body = match kind {
                    4 | 5 => 8,
                    6 | 7 => 4,
                    11 | 12 => 12,
                    _ => 8,
                };
                let b = self.meta_read(&mut at, body)?;
                e.nlink = u32_at(&b, 0);
                if kind >= 11 {
                    xattr = u32_at(&b, body - 4);
                }
                e.kind = EntryKind::Special;
                Extra::None
            }
            _ => {
                return Err(self.corrupt(format!("inode {r:#x} has unknown type {kind}")));
            }
        };
        if xattr != NO_XATTR {
            e.xattrs = self.xattrs(xattr)?;
        }
        Ok((e, extra))
    }

    /// The extended attributes at index `index` of the xattr id table.
    fn xattrs(&self, index: u32) -> Result<Vec<Xattr>, InsideError> {
        if self.sb.xattr_table == NO_TABLE {
            return Err(self.corrupt("an inode has xattrs but the image has no xattr table"));
        }
        let head = self.bytes.read_vec(self.sb.xattr_table, 16)?;
        let (kv_start, count) = (u64_at(&head, 0), u32_at(&head, 8));
        if index >= count {
            return Err(self.corrupt(format!("xattr index {index} of {count}")));
        }
        let id = self.table_entry(self.sb.xattr_table + 16, index as u64, 16)?;
        let (r, n) = (u64_at(&id, 0), u32_at(&id, 8));
        let mut at = Cursor {
            block: kv_start + (r >> 16),
            offset: (r & 0xffff) as usize,
        };
        let mut out = Vec::new();
        for _ in 0..n {
            let k = self.meta_read(&mut at, 4)?;
            let (kind, len) = (u16_at(&k, 0), u16_at(&k, 2) as usize);
            let prefix: &[u8] = match kind & 0xff {
                0 => b"user.",
                1 => b"trusted.",
                2 => b"security.",
                p => return Err(self.corrupt(format!("xattr prefix {p}"))),
            };
            let mut name = prefix.to_vec();
            name.extend(self.meta_read(&mut at, len)?);
            let vlen = u32_at(&self.meta_read(&mut at, 4)?, 0) as usize;
            let value = if kind & 0x100 != 0 {
                // Stored once elsewhere: this is a reference to it.
                let r = u64_at(&self.meta_read(&mut at, 8)?, 0);
                let mut v = Cursor {
                    block: kv_start + (r >> 16),
                    offset: (r & 0xffff) as usize,
                };
                let len = u32_at(&self.meta_read(&mut v, 4)?, 0) as usize;
                self.check_len(len, 1 << 16, "xattr value")?;
                self.meta_read(&mut v, len)?
            } else {
                self.check_len(vlen, 1 << 16, "xattr value")?;
                self.meta_read(&mut at, vlen)?
            };
            out.push((name, value));
        }
        Ok(out)
    }

    fn check_len(&self, len: usize, max: usize, what: &str) -> Result<(), InsideError> {
        if len > max {
            return Err(self.corrupt(format!("{what} of {len} bytes")));
        }
        Ok(())
    }

    /// Where file `r`'s bytes are.
    fn layout(&self, r: u64) -> Result<Arc<Layout>, InsideError> {
        if let Some(l) = self.layouts.lock().get(&r) {
            return Ok(l.clone());
        }
        let (e, extra) = self.inode(r)?;
        let Extra::File {
            start,
            fragment,
            frag_offset,
            mut list,
        } = extra
        else {
            return Err(self.corrupt(format!("inode {r:#x} is not a file")));
        };
        let bs = self.sb.block_size as u64;
        let n = if fragment == NO_FRAGMENT {
            e.size.div_ceil(bs)
        } else {
            e.size / bs
        };
        if n > (self.bytes.size() / 4).max(1 << 20) {
            return Err(self.corrupt(format!("file inode {r:#x} claims {} bytes", e.size)));
        }
        let raw = self.meta_read(&mut list, n as usize * 4)?;
        let words: Vec<u32> = raw.chunks_exact(4).map(|c| u32_at(c, 0)).collect();
        let mut starts = Vec::with_capacity(words.len());
        let mut pos = start;
        for w in &words {
            starts.push(pos);
            pos += (w & 0x00ff_ffff) as u64;
        }
        let l = Arc::new(Layout {
            size: e.size,
            words,
            starts,
            fragment: (fragment != NO_FRAGMENT).then_some((fragment, frag_offset)),
        });
        self.layouts.lock().put(r, l.clone());
        Ok(l)
    }

    /// The data (or fragment) block stored at `pos` with size word `word`,
    /// decompressed; it must come to `expect` bytes (at least, for fragments).
    fn data_block(&self, pos: u64, word: u32, expect: usize) -> Result<Arc<Vec<u8>>, InsideError> {
        let cached = self.blocks.lock().get(&pos).cloned();
        let b = match cached {
            Some(b) => b,
            None => {
                let data = match self.ahead.take(pos) {
                    Some(data) => data,
                    None => ahead::load(
                        &*self.data,
                        self.codec,
                        self.sb.block_size as usize,
                        pos,
                        word,
                    )?,
                };
                let b = Arc::new(data);
                self.blocks.lock().put(pos, b.clone());
                b
            }
        };
        if b.len() < expect {
            return Err(self.corrupt(format!(
                "data block at {pos} holds {} bytes, {expect} expected",
                b.len()
            )));
        }
        Ok(b)
    }

    /// Where fragment `index` is stored, and its size word.
    fn fragment_at(&self, index: u32) -> Result<(u64, u32), InsideError> {
        if index >= self.sb.frag_count {
            return Err(self.corrupt(format!("fragment {index} of {}", self.sb.frag_count)));
        }
        let e = self.table_entry(self.sb.frag_table, index as u64, 16)?;
        Ok((u64_at(&e, 0), u32_at(&e, 8)))
    }

    fn fragment(&self, index: u32, need: usize) -> Result<Arc<Vec<u8>>, InsideError> {
        let (pos, word) = self.fragment_at(index)?;
        if !self.blocks.lock().contains(&pos) {
            // mksquashfs packs small files into fragments in the order it walks
            // the tree, so a walk reading them fetches fragment after fragment:
            // queue the next ones.
            let last = self.last_fragment.lock().replace(index);
            if last.is_some_and(|l| l < index && index - l <= 2) {
                let next = index.saturating_add(1);
                let end = next
                    .saturating_add(self.ahead.window() as u32)
                    .min(self.sb.frag_count);
                for i in next..end {
                    if let Ok((p, w)) = self.fragment_at(i) {
                        self.ahead.want(p, w);
                    }
                }
            }
        }
        self.data_block(pos, word, need)
    }

    /// Queues blocks of file `l` for the pool: those after the first that this
    /// read covers (`first..=last`), and when `sequential`, a window more.
    fn queue_blocks(&self, l: &Layout, first: usize, last: usize, sequential: bool) {
        let end = if sequential {
            last + self.ahead.window()
        } else {
            last
        };
        let end = end.min(l.words.len().saturating_sub(1));
        for bi in first + 1..=end {
            let word = l.words[bi];
            if word & 0x00ff_ffff != 0 && !self.blocks.lock().contains(&l.starts[bi]) {
                self.ahead.want(l.starts[bi], word);
            }
        }
    }

    /// What the pool decompressed ahead (tests).
    #[cfg(test)]
    fn ahead_stats(&self) -> ahead::Stats {
        self.ahead.stats()
    }
}

/// What an inode says beyond its entry.
enum Extra {
    None,
    Dir {
        block: u64,
        offset: usize,
        size: u64,
    },
    File {
        start: u64,
        fragment: u32,
        frag_offset: u32,
        list: Cursor,
    },
}

impl Archive for Squashfs {
    fn format(&self) -> &'static str {
        "squashfs"
    }

    fn root(&self) -> u64 {
        self.sb.root
    }

    fn entry(&self, id: u64) -> Result<Entry, InsideError> {
        self.inode(id).map(|(e, _)| e)
    }

    fn list(&self, dir: u64) -> Result<Arc<Vec<Dirent>>, InsideError> {
        if let Some(l) = self.dirs.lock().get(&dir) {
            return Ok(l.clone());
        }
        let (_, extra) = self.inode(dir)?;
        let Extra::Dir {
            block,
            offset,
            size,
        } = extra
        else {
            return Err(self.corrupt(format!("inode {dir:#x} is not a directory")));
        };
        // The stored size counts 3 bytes for `.` and `..`, which are not stored.
        let len = size.saturating_sub(3) as usize;
        let mut at = Cursor {
            block: self.sb.dir_table + block,
            offset,
        };
        let raw = self.meta_read(&mut at, len)?;
        let mut out = Vec::new();
        let mut p = 0;
        while p < raw.len() {
            if p + 12 > raw.len() {
                return Err(self.corrupt(format!("directory {dir:#x}: a cut header")));
            }
            let count = u32_at(&raw, p) as usize + 1;
            let start = u32_at(&raw, p + 4) as u64;
            p += 12;
            if count > 256 {
                return Err(self.corrupt(format!("directory {dir:#x}: a run of {count} entries")));
            }
            for _ in 0..count {
                if p + 8 > raw.len() {
                    return Err(self.corrupt(format!("directory {dir:#x}: a cut entry")));
                }
                let off = u16_at(&raw, p) as u64;
                let kind = u16_at(&raw, p + 4);
                let n = u16_at(&raw, p + 6) as usize + 1;
                p += 8;
                let Some(name) = raw.get(p..p + n) else {
                    return Err(self.corrupt(format!("directory {dir:#x}: a cut name")));
                };
                p += n;
                let name = String::from_utf8_lossy(name).into_owned();
                if name.contains('/') || name == "." || name == ".." {
                    return Err(self.corrupt(format!("directory {dir:#x}: entry named {name:?}")));
                }
                out.push(Dirent {
                    name,
                    id: start << 16 | off,
                    dir: kind == 1,
                });
            }
        }
        let l = Arc::new(out);
        self.dirs.lock().put(dir, l.clone());
        Ok(l)
    }

    fn read(&self, file: u64, offset: u64, buf: &mut [u8]) -> Result<usize, InsideError> {
        let l = self.layout(file)?;
        let bs = self.sb.block_size as u64;
        let end = offset.saturating_add(buf.len() as u64).min(l.size);
        if offset < end {
            // A read that starts where the last read of this file ended.
            let sequential = self.ends.lock().put(file, end) == Some(offset);
            let (first, last) = ((offset / bs) as usize, ((end - 1) / bs) as usize);
            if last > first || sequential {
                self.queue_blocks(&l, first, last, sequential);
            }
        }
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            if at >= l.size {
                break;
            }
            let (bi, within) = ((at / bs) as usize, (at % bs) as usize);
            let here = (bs.min(l.size - bi as u64 * bs)) as usize;
            let take = (here - within).min(buf.len() - done);
            let dst = &mut buf[done..done + take];
            if let Some(&word) = l.words.get(bi) {
                if word & 0x00ff_ffff == 0 {
                    dst.fill(0);
                } else {
                    let b = self.data_block(l.starts[bi], word, here)?;
                    dst.copy_from_slice(&b[within..within + take]);
                }
            } else {
                let Some((frag, foff)) = l.fragment else {
                    return Err(self.corrupt(format!("file inode {file:#x}: block {bi} missing")));
                };
                let start = foff as usize + within;
                let b = self.fragment(frag, start + take)?;
                dst.copy_from_slice(&b[start..start + take]);
            }
            done += take;
        }
        Ok(done)
    }
}

mod ahead;
#[cfg(test)]
mod tests;
