//! ext2, ext3 and ext4, read here rather than through ext4-view (see
//! doc/DEVELOPMENT.md, "Inside images"): opening reads the superblock; an entry
//! is its inode (one read of the inode table's block); a listing reads the
//! directory's blocks; a read maps the file's blocks (extent tree or the
//! ext2/3 block map, kept per file) and reads only what it covers.
//!
//! Layout facts from the kernel's Documentation/filesystems/ext4/ (all
//! little-endian): the superblock at byte 1024; group descriptors after the
//! superblock's block (or, with `meta_bg`, at the start of each meta group);
//! inode `n` in group `(n-1) / inodes_per_group`; extent nodes behind a 12-byte
//! header with magic 0xf30a; directory entries `inode, rec_len, name_len,
//! file_type, name` that never cross a block, which also reads htree
//! directories (their index blocks look like empty entries); xattrs in the
//! inode after `i_extra_isize` and in one block named by `i_file_acl`.
//!
//! Not done: the journal is not replayed (an image whose file system was not
//! cleanly unmounted shows what was last checkpointed), checksums are not
//! verified (every length and offset is checked instead), and encrypted
//! directories and files fail with an "unsupported" error.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

use super::super::bytes::Bytes;
use super::super::error::InsideError;
use super::super::{Archive, Dirent, Entry, EntryKind, Xattr};
use super::BlockCache;

const MAGIC: u16 = 0xef53;
const ROOT_INODE: u32 = 2;

// Incompatible features.
const INCOMPAT_COMPRESSION: u32 = 0x1;
const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_MMP: u32 = 0x100;
const INCOMPAT_FLEX_BG: u32 = 0x200;
const INCOMPAT_EA_INODE: u32 = 0x400;
const INCOMPAT_DIRDATA: u32 = 0x1000;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const INCOMPAT_LARGEDIR: u32 = 0x4000;
const INCOMPAT_INLINE_DATA: u32 = 0x8000;
const INCOMPAT_ENCRYPT: u32 = 0x1_0000;
const INCOMPAT_CASEFOLD: u32 = 0x2_0000;
/// What this reader handles (encryption only as far as refusing encrypted
/// inodes, an unreplayed journal by ignoring it).
const INCOMPAT_KNOWN: u32 = INCOMPAT_FILETYPE
    | INCOMPAT_RECOVER
    | INCOMPAT_META_BG
    | INCOMPAT_EXTENTS
    | INCOMPAT_64BIT
    | INCOMPAT_MMP
    | INCOMPAT_FLEX_BG
    | INCOMPAT_EA_INODE
    | INCOMPAT_CSUM_SEED
    | INCOMPAT_LARGEDIR
    | INCOMPAT_INLINE_DATA
    | INCOMPAT_ENCRYPT
    | INCOMPAT_CASEFOLD;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_HUGE_FILE: u32 = 0x8;

// Inode flags.
const FL_ENCRYPT: u32 = 0x800;
const FL_HUGE_FILE: u32 = 0x4_0000;
const FL_EXTENTS: u32 = 0x8_0000;
const FL_INLINE_DATA: u32 = 0x1000_0000;

const EXTENT_MAGIC: u16 = 0xf30a;
/// The kernel's limit on an extent tree's depth.
const MAX_DEPTH: u16 = 5;
const XATTR_MAGIC: u32 = 0xea02_0000;
/// Largest xattr value Linux allows.
const MAX_XATTR: u32 = 65536;
/// Largest directory read (a million entries is about 40 MiB).
const MAX_DIR: u64 = 256 << 20;
/// Longest symlink target (PATH_MAX).
const MAX_LINK: u64 = 4096;
/// Parsed listings and block maps kept per file system.
const LIST_CACHE: usize = 128;

mod map;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Is there an ext2/3/4 superblock at byte 1024 of `bytes`?
pub fn probe(bytes: &dyn Bytes) -> Result<bool, InsideError> {
    if bytes.size() < 2048 {
        return Ok(false);
    }
    let m = bytes.read_vec(1024 + 0x38, 2)?;
    Ok(le16(&m, 0) == MAGIC)
}

/// The superblock's fields this reader uses.
#[derive(Debug, Clone)]
struct Super {
    block_size: u64,
    blocks_count: u64,
    inodes_count: u32,
    first_data_block: u32,
    blocks_per_group: u32,
    inodes_per_group: u32,
    inode_size: u32,
    desc_size: u32,
    groups: u64,
    first_meta_bg: u32,
    incompat: u32,
    ro_compat: u32,
}

/// A run of a file's blocks: `len` blocks from logical `logical` at physical
/// `physical`, or zeros (an unwritten extent).
#[derive(Debug, Clone, Copy)]
struct Run {
    logical: u64,
    physical: u64,
    len: u64,
    zero: bool,
}

/// A stored xattr: its name index (the prefix), name and value.
type RawXattr = (u8, Vec<u8>, Vec<u8>);

/// One inode, parsed.
#[derive(Clone)]
struct Inode {
    number: u32,
    mode: u16,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: i64,
    links: u16,
    blocks: u64,
    flags: u32,
    block: [u8; 60],
    file_acl: u64,
    /// The bytes after the 128-byte base: extra fields and in-inode xattrs.
    extra: Vec<u8>,
}

impl Inode {
    fn kind(&self) -> u16 {
        self.mode & 0xf000
    }
}

/// A directory's names, in stored order and by name (a lookup in a directory
/// of thousands of entries is one hash, not a scan: `ls -l` looks up each).
struct Listed {
    list: Arc<Vec<Dirent>>,
    by_name: HashMap<String, u64>,
}

/// An ext2/3/4 file system.
pub struct Ext {
    /// Where metadata is read: superblock, descriptors, inodes, directories,
    /// extent and indirect blocks, symlinks, xattrs.
    bytes: Arc<dyn Bytes>,
    /// Where regular files' contents are read: the same file system, through
    /// a reader that may stream ahead.
    data: Arc<dyn Bytes>,
    sb: Super,
    meta: BlockCache,
    maps: Mutex<LruCache<u32, Arc<Vec<Run>>>>,
    dirs: Mutex<LruCache<u32, Arc<Listed>>>,
}

fn cache<V>(n: usize) -> Mutex<LruCache<u32, V>> {
    Mutex::new(LruCache::new(
        NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN),
    ))
}

impl Ext {
    /// Opens the file system on `bytes`: reads and checks its superblock.
    pub fn open(bytes: Arc<dyn Bytes>) -> Result<Ext, InsideError> {
        Ext::open_split(bytes.clone(), bytes)
    }

    /// Opens the file system with its metadata read through `bytes` and its
    /// files' contents through `data` (the same bytes).
    pub fn open_split(bytes: Arc<dyn Bytes>, data: Arc<dyn Bytes>) -> Result<Ext, InsideError> {
        let bad =
            |why: String| InsideError::corrupt(bytes.name(), format!("ext superblock: {why}"));
        if bytes.size() < 2048 {
            return Err(bad(format!("a file system of {} bytes", bytes.size())));
        }
        let s = bytes.read_vec(1024, 1024)?;
        if le16(&s, 0x38) != MAGIC {
            return Err(bad("no ef53 magic".into()));
        }
        let log = le32(&s, 0x18);
        if log > 6 {
            return Err(bad(format!("block size 1024 << {log}")));
        }
        let block_size = 1024u64 << log;
        let incompat = le32(&s, 0x60);
        let ro_compat = le32(&s, 0x64);
        let sixty_four = incompat & INCOMPAT_64BIT != 0;
        let blocks_count = u64::from(le32(&s, 0x04))
            | if sixty_four {
                u64::from(le32(&s, 0x150)) << 32
            } else {
                0
            };
        let inode_size = if le32(&s, 0x4c) == 0 {
            128
        } else {
            u32::from(le16(&s, 0x58))
        };
        if !inode_size.is_power_of_two() || !(128..=block_size as u32).contains(&inode_size) {
            return Err(bad(format!("inode size {inode_size}")));
        }
        let desc_size = if sixty_four {
            u32::from(le16(&s, 0xfe))
        } else {
            32
        };
        if !desc_size.is_power_of_two() || !(32..=block_size as u32).contains(&desc_size) {
            return Err(bad(format!("group descriptor size {desc_size}")));
        }
        let first_data_block = le32(&s, 0x14);
        let blocks_per_group = le32(&s, 0x20);
        let inodes_per_group = le32(&s, 0x28);
        let inodes_count = le32(&s, 0x00);
        if blocks_per_group == 0 || inodes_per_group == 0 || inodes_count < ROOT_INODE {
            return Err(bad(format!(
                "{blocks_per_group} blocks and {inodes_per_group} inodes per group, {inodes_count} inodes"
            )));
        }
        if u64::from(first_data_block) >= blocks_count {
            return Err(bad(format!(
                "first data block {first_data_block} of {blocks_count}"
            )));
        }
        let groups =
            (blocks_count - u64::from(first_data_block)).div_ceil(u64::from(blocks_per_group));
        if u64::from(inodes_count) > groups * u64::from(inodes_per_group) {
            return Err(bad(format!(
                "{inodes_count} inodes in {groups} groups of {inodes_per_group}"
            )));
        }
        let sb = Super {
            block_size,
            blocks_count,
            inodes_count,
            first_data_block,
            blocks_per_group,
            inodes_per_group,
            inode_size,
            desc_size,
            groups,
            first_meta_bg: le32(&s, 0x104),
            incompat,
            ro_compat,
        };
        let unknown = incompat & !INCOMPAT_KNOWN;
        let refused = [
            (INCOMPAT_COMPRESSION, "compression"),
            (INCOMPAT_JOURNAL_DEV, "an external journal device"),
            (INCOMPAT_DIRDATA, "dirdata"),
        ];
        for (bit, what) in refused {
            if incompat & bit != 0 {
                return Err(InsideError::unsupported(
                    bytes.name(),
                    format!("ext file system with {what} (incompatible feature {bit:#x})"),
                ));
            }
        }
        if unknown != 0 {
            return Err(InsideError::unsupported(
                bytes.name(),
                format!("ext file system with unknown incompatible features {unknown:#x}"),
            ));
        }
        if incompat & INCOMPAT_RECOVER != 0 {
            log::info!(
                "inside {}: ext journal needs recovery; shown as last checkpointed",
                bytes.name()
            );
        }
        Ok(Ext {
            meta: BlockCache::new(bytes.clone(), block_size as usize),
            bytes,
            data,
            sb,
            maps: cache(LIST_CACHE),
            dirs: cache(LIST_CACHE),
        })
    }

    fn corrupt(&self, why: impl Into<String>) -> InsideError {
        InsideError::corrupt(self.bytes.name(), why)
    }

    /// Does group `g` hold a superblock backup (and so its descriptors)?
    fn has_super(&self, g: u64) -> bool {
        if self.sb.ro_compat & RO_COMPAT_SPARSE_SUPER == 0 || g <= 1 {
            return true;
        }
        [3u64, 5, 7].iter().any(|base| {
            let mut p = *base;
            while p < g {
                p *= base;
            }
            p == g
        })
    }

    /// Group `g`'s descriptor.
    fn group_desc(&self, g: u64) -> Result<Vec<u8>, InsideError> {
        let per_block = self.sb.block_size / u64::from(self.sb.desc_size);
        let (block, index) = if self.sb.incompat & INCOMPAT_META_BG != 0
            && g / per_block >= u64::from(self.sb.first_meta_bg)
        {
            let first = g / per_block * per_block;
            let start =
                u64::from(self.sb.first_data_block) + first * u64::from(self.sb.blocks_per_group);
            (start + u64::from(self.has_super(first)), g % per_block)
        } else {
            (
                u64::from(self.sb.first_data_block) + 1 + g / per_block,
                g % per_block,
            )
        };
        let b = self.block(block)?;
        let at = (index * u64::from(self.sb.desc_size)) as usize;
        Ok(b[at..at + self.sb.desc_size as usize].to_vec())
    }

    /// Metadata block `n`, checked against the file system's size.
    fn block(&self, n: u64) -> Result<Arc<Vec<u8>>, InsideError> {
        if n >= self.sb.blocks_count {
            return Err(self.corrupt(format!(
                "block {n} is past the file system's {} blocks",
                self.sb.blocks_count
            )));
        }
        self.meta.get(n)
    }

    /// Inode `n`.
    fn inode(&self, n: u32) -> Result<Inode, InsideError> {
        if n == 0 || n > self.sb.inodes_count {
            return Err(self.corrupt(format!(
                "inode {n} (the file system has {})",
                self.sb.inodes_count
            )));
        }
        let g = u64::from((n - 1) / self.sb.inodes_per_group);
        if g >= self.sb.groups {
            return Err(self.corrupt(format!("inode {n} in group {g}")));
        }
        let d = self.group_desc(g)?;
        let mut table = u64::from(le32(&d, 0x8));
        if self.sb.desc_size >= 64 {
            table |= u64::from(le32(&d, 0x28)) << 32;
        }
        let byte = u64::from((n - 1) % self.sb.inodes_per_group) * u64::from(self.sb.inode_size);
        let b = self.block(table + byte / self.sb.block_size)?;
        let at = (byte % self.sb.block_size) as usize;
        let raw = &b[at..at + self.sb.inode_size as usize];
        let mut block = [0u8; 60];
        block.copy_from_slice(&raw[0x28..0x64]);
        let extra = raw[128..].to_vec();
        let extra_isize = if extra.len() >= 2 {
            usize::from(le16(&extra, 0))
        } else {
            0
        };
        let mut mtime = i64::from(le32(raw, 0x10) as i32);
        if extra_isize >= 12 && extra.len() >= 12 {
            mtime += i64::from(le32(&extra, 8) & 3) << 32;
        }
        let mut blocks = u64::from(le32(raw, 0x1c)) | u64::from(le16(raw, 0x74)) << 32;
        let flags = le32(raw, 0x20);
        if self.sb.ro_compat & RO_COMPAT_HUGE_FILE != 0 && flags & FL_HUGE_FILE != 0 {
            blocks *= self.sb.block_size / 512;
        }
        Ok(Inode {
            number: n,
            mode: le16(raw, 0),
            uid: u32::from(le16(raw, 2)) | u32::from(le16(raw, 0x78)) << 16,
            gid: u32::from(le16(raw, 0x18)) | u32::from(le16(raw, 0x7a)) << 16,
            size: u64::from(le32(raw, 4)) | u64::from(le32(raw, 0x6c)) << 32,
            mtime,
            links: le16(raw, 0x1a),
            blocks,
            flags,
            block,
            file_acl: u64::from(le32(raw, 0x68)) | u64::from(le16(raw, 0x76)) << 32,
            extra,
        })
    }

    /// Refuses an encrypted inode.
    fn readable(&self, i: &Inode) -> Result<(), InsideError> {
        if i.flags & FL_ENCRYPT != 0 {
            return Err(InsideError::unsupported(
                self.bytes.name(),
                format!("inode {} is encrypted (fscrypt)", i.number),
            ));
        }
        Ok(())
    }

    /// The in-inode and block xattrs of `i`, as (index, name, value).
    fn raw_xattrs(&self, i: &Inode) -> Result<Vec<RawXattr>, InsideError> {
        let mut out = Vec::new();
        if i.extra.len() >= 2 {
            let start = usize::from(le16(&i.extra, 0));
            if start % 4 == 0 && start + 4 <= i.extra.len() && le32(&i.extra, start) == XATTR_MAGIC
            {
                let region = &i.extra[start + 4..];
                self.parse_xattrs(i, region, 0, region, &mut out)?;
            }
        }
        if i.file_acl != 0 {
            let b = self.block(i.file_acl)?;
            if le32(&b, 0) != XATTR_MAGIC || le32(&b, 8) != 1 {
                return Err(self.corrupt(format!(
                    "inode {}: xattr block {} has no valid header",
                    i.number, i.file_acl
                )));
            }
            self.parse_xattrs(i, &b, 32, &b, &mut out)?;
        }
        Ok(out)
    }

    /// Entries from `at` in `table`, their values at offsets into `values`.
    fn parse_xattrs(
        &self,
        i: &Inode,
        table: &[u8],
        mut at: usize,
        values: &[u8],
        out: &mut Vec<RawXattr>,
    ) -> Result<(), InsideError> {
        let bad = |why: &str| self.corrupt(format!("inode {}: xattr: {why}", i.number));
        while at + 4 <= table.len() && le32(table, at) != 0 {
            if at + 16 > table.len() {
                return Err(bad("entry cut short"));
            }
            let e = &table[at..];
            let name_len = usize::from(e[0]);
            let (index, offs, inum, size) = (e[1], usize::from(le16(e, 2)), le32(e, 4), le32(e, 8));
            if 16 + name_len > e.len() || size > MAX_XATTR {
                return Err(bad("entry cut short"));
            }
            let name = e[16..16 + name_len].to_vec();
            let value = if inum != 0 {
                let v = self.inode(inum)?;
                // A value's inode has its bytes in blocks: one with inline data
                // would send this reader back into xattrs, maybe its own.
                if v.flags & FL_INLINE_DATA != 0 || inum == i.number {
                    return Err(bad("value inode with inline data"));
                }
                let mut buf = vec![0; size as usize];
                let n = self.read_inode(&v, 0, &mut buf, false)?;
                if n != buf.len() {
                    return Err(bad("value inode shorter than the value"));
                }
                buf
            } else {
                values
                    .get(offs..offs + size as usize)
                    .ok_or_else(|| bad("value out of its block"))?
                    .to_vec()
            };
            out.push((index, name, value));
            at += (16 + name_len).div_ceil(4) * 4;
        }
        Ok(())
    }

    /// The xattrs of `i` as the kernel lists them (`system.data`, inline
    /// data's own, left out; POSIX ACLs turned into their xattr form).
    fn xattrs(&self, i: &Inode) -> Result<Vec<Xattr>, InsideError> {
        let mut out = Vec::new();
        for (index, name, value) in self.raw_xattrs(i)? {
            let (prefix, value) = match index {
                1 => ("user.", value),
                2 => ("system.posix_acl_access", acl_to_xattr(&value)),
                3 => ("system.posix_acl_default", acl_to_xattr(&value)),
                4 => ("trusted.", value),
                6 => ("security.", value),
                7 if name == b"data" => continue,
                7 => ("system.", value),
                8 => ("system.richacl", value),
                _ => continue,
            };
            let mut full = prefix.as_bytes().to_vec();
            full.extend_from_slice(&name);
            out.push((full, value));
        }
        Ok(out)
    }

    /// An inline-data inode's bytes: `i_block`, then the `system.data` value.
    fn inline(&self, i: &Inode) -> Result<Vec<u8>, InsideError> {
        let mut data = i.block.to_vec();
        if let Some((_, _, v)) = self
            .raw_xattrs(i)?
            .into_iter()
            .find(|(index, name, _)| *index == 7 && name == b"data")
        {
            data.extend_from_slice(&v);
        }
        Ok(data)
    }

    /// Copies inode `i`'s bytes at `offset` into `buf` (through the contents'
    /// reader if `content`, else the metadata's); how many.
    fn read_inode(
        &self,
        i: &Inode,
        offset: u64,
        buf: &mut [u8],
        content: bool,
    ) -> Result<usize, InsideError> {
        let via = if content { &self.data } else { &self.bytes };
        if offset >= i.size || buf.is_empty() {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(i.size - offset) as usize;
        if i.flags & FL_INLINE_DATA != 0 {
            let data = self.inline(i)?;
            let src = usize::try_from(offset)
                .ok()
                .and_then(|o| data.get(o..)?.get(..n))
                .ok_or_else(|| {
                    self.corrupt(format!(
                        "inode {}: {} bytes of inline data for a size of {}",
                        i.number,
                        data.len(),
                        i.size
                    ))
                })?;
            buf[..n].copy_from_slice(src);
            return Ok(n);
        }
        let map = self.map(i)?;
        let bs = self.sb.block_size;
        let mut done = 0usize;
        while done < n {
            let pos = offset + done as u64;
            let lblock = pos / bs;
            // The run holding `lblock`, or the next one after a hole.
            let k = map.partition_point(|r| r.logical + r.len <= lblock);
            let (fill, upto) = match map.get(k) {
                Some(r) if r.logical <= lblock => {
                    let end = (r.logical + r.len).saturating_mul(bs);
                    (
                        (!r.zero).then(|| (r.physical + (lblock - r.logical)) * bs + pos % bs),
                        end,
                    )
                }
                Some(r) => (None, r.logical.saturating_mul(bs)),
                None => (None, u64::MAX),
            };
            let take = ((upto - pos).min((n - done) as u64)) as usize;
            match fill {
                Some(at) => via.read_exact_at(at, &mut buf[done..done + take])?,
                None => buf[done..done + take].fill(0),
            }
            done += take;
        }
        Ok(n)
    }

    /// The names in directory data `data` (whole blocks, or inline data).
    fn parse_dir(
        &self,
        dir: u32,
        data: &[u8],
        out: &mut Vec<(String, u32, u8)>,
    ) -> Result<(), InsideError> {
        let bs = self.sb.block_size as usize;
        let mut at = 0;
        while at + 8 <= data.len() {
            let raw = usize::from(le16(data, at + 4));
            let rec = if bs >= 65536 && (raw == 65535 || raw == 0) {
                bs
            } else {
                (raw & 0xfffc) | (raw & 3) << 16
            };
            let name_len = usize::from(data[at + 6]);
            if rec < 8 || at + rec > data.len() || 8 + name_len > rec {
                return Err(self.corrupt(format!(
                    "directory inode {dir}: entry of {rec} bytes at {at}"
                )));
            }
            let inode = le32(data, at);
            let name = &data[at + 8..at + 8 + name_len];
            if inode != 0 && name != b"." && name != b".." {
                out.push((
                    String::from_utf8_lossy(name).into_owned(),
                    inode,
                    data[at + 7],
                ));
            }
            at += rec;
        }
        Ok(())
    }

    fn listing(&self, dir: u32) -> Result<Arc<Listed>, InsideError> {
        if let Some(l) = self.dirs.lock().get(&dir) {
            return Ok(l.clone());
        }
        let i = self.inode(dir)?;
        if i.kind() != 0x4000 {
            return Err(self.corrupt(format!("inode {dir} is not a directory")));
        }
        self.readable(&i)?;
        let mut names = Vec::new();
        if i.flags & FL_INLINE_DATA != 0 {
            // Four bytes of parent inode, then entries to the end of i_block;
            // `system.data` holds more.
            self.parse_dir(dir, &i.block[4..], &mut names)?;
            let data = self.inline(&i)?;
            self.parse_dir(dir, &data[60..], &mut names)?;
        } else {
            if i.size > MAX_DIR || i.size % self.sb.block_size != 0 {
                return Err(self.corrupt(format!("directory inode {dir} of {} bytes", i.size)));
            }
            let mut block = vec![0; self.sb.block_size as usize];
            for b in 0..i.size / self.sb.block_size {
                self.read_inode(&i, b * self.sb.block_size, &mut block, false)?;
                self.parse_dir(dir, &block, &mut names)?;
            }
        }
        let filetype = self.sb.incompat & INCOMPAT_FILETYPE != 0;
        let mut list = Vec::with_capacity(names.len());
        for (name, inode, ftype) in names {
            let is_dir = if filetype {
                ftype == 2
            } else {
                self.inode(inode)?.kind() == 0x4000
            };
            list.push(Dirent {
                name,
                id: u64::from(inode),
                dir: is_dir,
            });
        }
        // The first of a repeated name wins, as a scan would find it.
        let mut by_name = HashMap::with_capacity(list.len());
        for d in &list {
            by_name.entry(d.name.clone()).or_insert(d.id);
        }
        let listed = Arc::new(Listed {
            list: Arc::new(list),
            by_name,
        });
        self.dirs.lock().put(dir, listed.clone());
        Ok(listed)
    }

    fn id(&self, id: u64) -> Result<u32, InsideError> {
        u32::try_from(id).map_err(|_| self.corrupt(format!("no inode {id}")))
    }
}

/// ext4's compact POSIX ACL (version 1; 4-byte entries for the owner, group,
/// mask and other, 8-byte for named users and groups) in the xattr form
/// `getfacl` reads (version 2, every entry 8 bytes, -1 where no id).
fn acl_to_xattr(v: &[u8]) -> Vec<u8> {
    let mut out = 2u32.to_le_bytes().to_vec();
    let mut at = 4;
    while at + 4 <= v.len() {
        let tag = le16(v, at);
        out.extend_from_slice(&v[at..at + 4]);
        // ACL_USER (2) and ACL_GROUP (8) carry an id.
        if (tag == 2 || tag == 8) && at + 8 <= v.len() {
            out.extend_from_slice(&v[at + 4..at + 8]);
            at += 8;
        } else {
            out.extend_from_slice(&u32::MAX.to_le_bytes());
            at += 4;
        }
    }
    out
}

impl Archive for Ext {
    fn format(&self) -> &'static str {
        "ext"
    }

    fn root(&self) -> u64 {
        u64::from(ROOT_INODE)
    }

    fn entry(&self, id: u64) -> Result<Entry, InsideError> {
        let i = self.inode(self.id(id)?)?;
        let kind = match i.kind() {
            0x4000 => EntryKind::Dir,
            0x8000 => EntryKind::File,
            0xa000 => {
                self.readable(&i)?;
                if i.size > MAX_LINK {
                    return Err(
                        self.corrupt(format!("symlink inode {} of {} bytes", i.number, i.size))
                    );
                }
                let ea = if i.file_acl != 0 {
                    self.sb.block_size / 512
                } else {
                    0
                };
                let target = if i.flags & FL_INLINE_DATA == 0 && i.blocks.saturating_sub(ea) == 0 {
                    // A fast symlink: the target is in i_block.
                    i.block
                        .get(..i.size as usize)
                        .ok_or_else(|| {
                            self.corrupt(format!(
                                "fast symlink inode {} of {} bytes",
                                i.number, i.size
                            ))
                        })?
                        .to_vec()
                } else {
                    let mut t = vec![0; i.size as usize];
                    let n = self.read_inode(&i, 0, &mut t, false)?;
                    t.truncate(n);
                    t
                };
                EntryKind::Symlink(target)
            }
            0x1000 | 0x2000 | 0x6000 | 0xc000 => EntryKind::Special,
            other => {
                return Err(self.corrupt(format!("inode {} has file type {other:#x}", i.number)));
            }
        };
        let size = match kind {
            EntryKind::Special => 0,
            _ => i.size,
        };
        Ok(Entry {
            id,
            kind,
            mode: i.mode & 0o7777,
            uid: i.uid,
            gid: i.gid,
            mtime: i.mtime,
            size,
            nlink: u32::from(i.links),
            xattrs: self.xattrs(&i)?,
        })
    }

    fn list(&self, dir: u64) -> Result<Arc<Vec<Dirent>>, InsideError> {
        Ok(self.listing(self.id(dir)?)?.list.clone())
    }

    fn lookup(&self, dir: u64, name: &str) -> Result<Option<u64>, InsideError> {
        Ok(self.listing(self.id(dir)?)?.by_name.get(name).copied())
    }

    fn read(&self, file: u64, offset: u64, buf: &mut [u8]) -> Result<usize, InsideError> {
        let i = self.inode(self.id(file)?)?;
        if i.kind() != 0x8000 {
            return Err(self.corrupt(format!("inode {file} is not a regular file")));
        }
        self.readable(&i)?;
        self.read_inode(&i, offset, buf, true)
    }
}
