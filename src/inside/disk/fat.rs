//! FAT12, FAT16 and FAT32 (vfat long names), read here rather than through the
//! fatfs crate (see doc/DEVELOPMENT.md, "Inside images"): fatfs 0.3 wants a
//! writable device, gives entries no identity a listing could hand out, and
//! follows cluster chains without a bound, so a FAT with a loop would hang a
//! reader. Here every chain is followed at most as far as the entry's size (or,
//! for a directory, FAT's 65,536 entries) allows.
//!
//! Layout facts (Microsoft's FAT specification, "FAT: General Overview of
//! On-Disk Format"): the boot sector's BPB gives sector and cluster sizes, the
//! reserved sectors, the FATs and (FAT12/16) the fixed root directory; the
//! type follows from the cluster count alone (< 4085 FAT12, < 65525 FAT16);
//! directory entries are 32 bytes, a long name is a run of entries of
//! attribute 0x0f before its short entry, each with 13 UTF-16 units and the
//! short name's checksum.
//!
//! FAT has no inodes: an entry's id is the position of its 32-byte short entry
//! in the partition, divided by 32 (never 0, the boot sector's place), and the
//! root directory is 0. FAT stores no owner or mode: files show as 0644, and
//! directories as 0755, owned by 0:0; times are the stored local time taken as
//! UTC (doc/SEMANTICS.md).

use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

use super::super::bytes::Bytes;
use super::super::error::InsideError;
use super::super::{Archive, Dirent, Entry, EntryKind};
use super::BlockCache;

const ATTR_VOLUME: u8 = 0x08;
const ATTR_DIR: u8 = 0x10;
const ATTR_LFN: u8 = 0x0f;
/// FAT's limit on a directory's entries.
const MAX_DIR_ENTRIES: u64 = 65536;
/// Chains and listings kept.
const LIST_CACHE: usize = 128;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fat12,
    Fat16,
    Fat32,
}

/// The boot sector's fields, checked.
#[derive(Debug, Clone)]
struct Bpb {
    sector: u64,
    cluster: u64,
    fat_start: u64,
    /// FAT12/16: the fixed root directory's first byte and size.
    root_start: u64,
    root_len: u64,
    /// FAT32: the root directory's first cluster.
    root_cluster: u32,
    data_start: u64,
    clusters: u32,
    kind: Kind,
}

/// Parses and checks the boot sector `s`; None if it is not a FAT boot sector.
fn bpb(s: &[u8]) -> Option<Bpb> {
    if !(s[0] == 0xeb && s[2] == 0x90 || s[0] == 0xe9) || s[510..512] != [0x55, 0xaa] {
        return None;
    }
    let sector = u64::from(le16(s, 11));
    let per_cluster = u64::from(s[13]);
    let reserved = u64::from(le16(s, 14));
    let fats = u64::from(s[16]);
    let root_entries = u64::from(le16(s, 17));
    let media = s[21];
    if !matches!(sector, 512 | 1024 | 2048 | 4096)
        || !per_cluster.is_power_of_two()
        || reserved == 0
        || fats == 0
        || !(media == 0xf0 || media >= 0xf8)
    {
        return None;
    }
    let fat_size = match le16(s, 22) {
        0 => u64::from(le32(s, 36)),
        n => u64::from(n),
    };
    let total = match le16(s, 19) {
        0 => u64::from(le32(s, 32)),
        n => u64::from(n),
    };
    let root_len = root_entries * 32;
    let root_sectors = root_len.div_ceil(sector);
    let data = reserved + fats * fat_size + root_sectors;
    if fat_size == 0 || total <= data {
        return None;
    }
    let clusters = (total - data) / per_cluster;
    let kind = match clusters {
        0..4085 => Kind::Fat12,
        4085..65525 => Kind::Fat16,
        _ => Kind::Fat32,
    };
    if kind == Kind::Fat32 && root_entries != 0 || kind != Kind::Fat32 && root_entries == 0 {
        return None;
    }
    // The FAT must have an entry for every cluster.
    let entry_bits = match kind {
        Kind::Fat12 => 12,
        Kind::Fat16 => 16,
        Kind::Fat32 => 32,
    };
    if (clusters + 2) * entry_bits > fat_size * sector * 8 {
        return None;
    }
    Some(Bpb {
        sector,
        cluster: sector * per_cluster,
        fat_start: reserved * sector,
        root_start: (reserved + fats * fat_size) * sector,
        root_len,
        root_cluster: if kind == Kind::Fat32 { le32(s, 44) } else { 0 },
        data_start: data * sector,
        clusters: u32::try_from(clusters).ok()?,
        kind,
    })
}

/// Is there a FAT boot sector at byte 0 of `bytes`?
pub fn probe(bytes: &dyn Bytes) -> Result<bool, InsideError> {
    if bytes.size() < 512 {
        return Ok(false);
    }
    let s = bytes.read_vec(0, 512)?;
    Ok(bpb(&s).is_some())
}

/// A short entry and the long name before it.
struct Raw {
    name: String,
    pos: u64,
    attr: u8,
}

/// A FAT file system.
pub struct Fat {
    /// Where metadata is read: boot sector, FAT, directories.
    bytes: Arc<dyn Bytes>,
    /// Where files' contents are read (the same bytes, maybe streaming ahead).
    data: Arc<dyn Bytes>,
    bpb: Bpb,
    /// FAT sectors.
    fat: BlockCache,
    chains: Mutex<LruCache<u64, Arc<Vec<u32>>>>,
    dirs: Mutex<LruCache<u64, Arc<Vec<Dirent>>>>,
}

impl Fat {
    /// Opens the FAT file system on `bytes`: reads and checks its boot sector.
    pub fn open(bytes: Arc<dyn Bytes>) -> Result<Fat, InsideError> {
        Fat::open_split(bytes.clone(), bytes)
    }

    /// Opens the file system with its metadata read through `bytes` and its
    /// files' contents through `data` (the same bytes).
    pub fn open_split(bytes: Arc<dyn Bytes>, data: Arc<dyn Bytes>) -> Result<Fat, InsideError> {
        if bytes.size() < 512 {
            return Err(InsideError::corrupt(bytes.name(), "FAT: no boot sector"));
        }
        let s = bytes.read_vec(0, 512)?;
        let bpb = bpb(&s)
            .ok_or_else(|| InsideError::corrupt(bytes.name(), "FAT boot sector is not valid"))?;
        Ok(Fat {
            fat: BlockCache::new(bytes.clone(), bpb.sector as usize),
            bytes,
            data,
            bpb,
            chains: cache(LIST_CACHE),
            dirs: cache(LIST_CACHE),
        })
    }

    fn corrupt(&self, why: impl Into<String>) -> InsideError {
        InsideError::corrupt(self.bytes.name(), format!("FAT: {}", why.into()))
    }

    /// Byte `at` of the first FAT.
    fn fat_byte(&self, at: u64) -> Result<u8, InsideError> {
        let at = self.bpb.fat_start + at;
        let b = self.fat.get(at / self.bpb.sector)?;
        Ok(b[(at % self.bpb.sector) as usize])
    }

    /// The FAT's entry for cluster `c`: the next cluster, or None at the end.
    fn next(&self, c: u32) -> Result<Option<u32>, InsideError> {
        let c64 = u64::from(c);
        let (v, end) = match self.bpb.kind {
            Kind::Fat12 => {
                let at = c64 + c64 / 2;
                let v = u32::from(self.fat_byte(at)?) | u32::from(self.fat_byte(at + 1)?) << 8;
                (if c % 2 == 1 { v >> 4 } else { v & 0xfff }, 0xff8)
            }
            Kind::Fat16 => {
                let at = c64 * 2;
                let v = u32::from(self.fat_byte(at)?) | u32::from(self.fat_byte(at + 1)?) << 8;
                (v, 0xfff8)
            }
            Kind::Fat32 => {
                let at = c64 * 4;
                let mut v = 0u32;
                for k in 0..4 {
                    v |= u32::from(self.fat_byte(at + k)?) << (8 * k);
                }
                (v & 0x0fff_ffff, 0x0fff_fff8)
            }
        };
        if v >= end {
            return Ok(None);
        }
        self.check_cluster(v, c).map(Some)
    }

    /// `c` (named by cluster `from`'s entry) as a data cluster.
    fn check_cluster(&self, c: u32, from: u32) -> Result<u32, InsideError> {
        if c < 2 || c - 2 >= self.bpb.clusters {
            return Err(self.corrupt(format!(
                "cluster {from} leads to cluster {c:#x} (the volume has {})",
                self.bpb.clusters
            )));
        }
        Ok(c)
    }

    /// The chain from cluster `first`, at most `max` clusters long.
    fn chain(&self, id: u64, first: u32, max: u64) -> Result<Arc<Vec<u32>>, InsideError> {
        if let Some(c) = self.chains.lock().get(&id) {
            return Ok(c.clone());
        }
        let mut out = vec![self.check_cluster(first, 0)?];
        // A chain that comes back to a cluster would repeat data (or, for a
        // directory, entries) up to the length bound: an error instead.
        let mut seen = std::collections::HashSet::from([first]);
        while (out.len() as u64) < max {
            let last = out[out.len() - 1];
            match self.next(last)? {
                Some(c) if !seen.insert(c) => {
                    return Err(self.corrupt(format!(
                        "the cluster chain from {first} loops back to cluster {c}"
                    )));
                }
                Some(c) => out.push(c),
                None => break,
            }
        }
        let out = Arc::new(out);
        self.chains.lock().put(id, out.clone());
        Ok(out)
    }

    /// The 32-byte short entry with id `id`.
    fn dirent(&self, id: u64) -> Result<[u8; 32], InsideError> {
        let mut e = [0; 32];
        let at = id
            .checked_mul(32)
            .ok_or_else(|| self.corrupt(format!("no entry {id}")))?;
        self.bytes.read_exact_at(at, &mut e)?;
        Ok(e)
    }

    fn first_cluster(&self, e: &[u8]) -> u32 {
        let hi = if self.bpb.kind == Kind::Fat32 {
            u32::from(le16(e, 20)) << 16
        } else {
            0
        };
        hi | u32::from(le16(e, 26))
    }

    /// Where directory `id`'s entries are: (byte, length) pieces.
    fn dir_pieces(&self, id: u64) -> Result<Vec<(u64, u64)>, InsideError> {
        let max = (MAX_DIR_ENTRIES * 32).div_ceil(self.bpb.cluster);
        let first = if id == 0 {
            if self.bpb.kind != Kind::Fat32 {
                return Ok(vec![(self.bpb.root_start, self.bpb.root_len)]);
            }
            self.bpb.root_cluster
        } else {
            let e = self.dirent(id)?;
            if e[11] & ATTR_DIR == 0 {
                return Err(self.corrupt(format!("entry {id} is not a directory")));
            }
            self.first_cluster(&e)
        };
        let chain = self.chain(id, first, max + 1)?;
        if chain.len() as u64 > max {
            return Err(self.corrupt(format!(
                "directory {id}: its cluster chain is longer than 65536 entries (a loop?)"
            )));
        }
        Ok(chain
            .iter()
            .map(|c| (self.cluster_at(*c), self.bpb.cluster))
            .collect())
    }

    fn cluster_at(&self, c: u32) -> u64 {
        self.bpb.data_start + u64::from(c - 2) * self.bpb.cluster
    }

    /// Directory `id`'s entries, long names joined to their short entries.
    fn raw_list(&self, id: u64) -> Result<Vec<Raw>, InsideError> {
        let mut out = Vec::new();
        // Long-name pieces seen so far: (sequence number, checksum, units).
        let mut long: Vec<(u8, u8, Vec<u16>)> = Vec::new();
        'pieces: for (start, len) in self.dir_pieces(id)? {
            let data = self.bytes.read_vec(start, len as usize)?;
            for (k, e) in data.chunks_exact(32).enumerate() {
                match e[0] {
                    0 => break 'pieces,
                    0xe5 => {
                        long.clear();
                        continue;
                    }
                    _ => {}
                }
                let attr = e[11];
                if attr & 0x3f == ATTR_LFN {
                    let units = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30]
                        .iter()
                        .map(|o| le16(e, *o))
                        .collect();
                    long.push((e[0] & 0x1f, e[13], units));
                    continue;
                }
                let pieces = std::mem::take(&mut long);
                if attr & ATTR_VOLUME != 0
                    || &e[..11] == b".          "
                    || &e[..11] == b"..         "
                {
                    continue;
                }
                let name = long_name(&pieces, &e[..11]).unwrap_or_else(|| short_name(e));
                out.push(Raw {
                    name,
                    pos: (start + k as u64 * 32) / 32,
                    attr,
                });
            }
        }
        Ok(out)
    }
}

fn cache<V>(n: usize) -> Mutex<LruCache<u64, V>> {
    Mutex::new(LruCache::new(
        NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN),
    ))
}

/// The checksum of a short name that its long-name entries carry.
fn checksum(short: &[u8]) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, b| sum.rotate_right(1).wrapping_add(*b))
}

/// The long name in `pieces` (stored last piece first), if they are a whole
/// name for the short entry `short`.
fn long_name(pieces: &[(u8, u8, Vec<u16>)], short: &[u8]) -> Option<String> {
    if pieces.is_empty() {
        return None;
    }
    let sum = checksum(short);
    let n = pieces.len();
    let mut units = Vec::new();
    // Stored from the last piece (n) down to piece 1.
    for (i, (seq, s, u)) in pieces.iter().rev().enumerate() {
        if usize::from(*seq) != i + 1 || *s != sum {
            return None;
        }
        units.extend_from_slice(u);
    }
    if pieces[0].0 as usize != n {
        return None;
    }
    let end = units
        .iter()
        .position(|u| *u == 0 || *u == 0xffff)
        .unwrap_or(units.len());
    Some(
        char::decode_utf16(units[..end].iter().copied())
            .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect(),
    )
}

/// An 8.3 name as shown: spaces trimmed, lower case where the entry's case
/// flags (byte 12, as Windows NT writes them) ask.
fn short_name(e: &[u8]) -> String {
    let mut base = e[..8].to_vec();
    if base[0] == 0x05 {
        base[0] = 0xe5;
    }
    let lower = |v: &[u8], yes: bool| -> String {
        let s: String = v
            .iter()
            .map(|b| {
                if b.is_ascii() {
                    char::from(*b)
                } else {
                    char::REPLACEMENT_CHARACTER
                }
            })
            .collect::<String>()
            .trim_end_matches(' ')
            .to_string();
        if yes { s.to_ascii_lowercase() } else { s }
    };
    let base = lower(&base, e[12] & 0x08 != 0);
    let ext = lower(&e[8..11], e[12] & 0x10 != 0);
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

/// A FAT date and time (local time, taken as UTC) in seconds since the epoch.
fn fat_time(date: u16, time: u16) -> i64 {
    let (y, m, d) = (
        1980 + i64::from(date >> 9),
        i64::from((date >> 5) & 0xf),
        i64::from(date & 0x1f),
    );
    if !(1..=12).contains(&m) || d == 0 {
        return 0;
    }
    // Days from 1970-01-01 to y-m-d (the civil-from-days inverse).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = i64::from(time >> 11) * 3600
        + i64::from((time >> 5) & 0x3f) * 60
        + i64::from(time & 0x1f) * 2;
    days * 86400 + secs
}

impl Archive for Fat {
    fn format(&self) -> &'static str {
        "FAT"
    }

    fn root(&self) -> u64 {
        0
    }

    fn entry(&self, id: u64) -> Result<Entry, InsideError> {
        if id == 0 {
            return Ok(Entry::made_dir(id));
        }
        let e = self.dirent(id)?;
        let dir = e[11] & ATTR_DIR != 0;
        Ok(Entry {
            id,
            kind: if dir { EntryKind::Dir } else { EntryKind::File },
            mode: if dir { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            mtime: fat_time(le16(&e, 24), le16(&e, 22)),
            size: if dir { 0 } else { u64::from(le32(&e, 28)) },
            nlink: if dir { 2 } else { 1 },
            xattrs: Vec::new(),
        })
    }

    fn list(&self, dir: u64) -> Result<Arc<Vec<Dirent>>, InsideError> {
        if let Some(l) = self.dirs.lock().get(&dir) {
            return Ok(l.clone());
        }
        let list: Vec<Dirent> = self
            .raw_list(dir)?
            .into_iter()
            .map(|r| Dirent {
                name: r.name,
                id: r.pos,
                dir: r.attr & ATTR_DIR != 0,
            })
            .collect();
        let list = Arc::new(list);
        self.dirs.lock().put(dir, list.clone());
        Ok(list)
    }

    fn lookup(&self, dir: u64, name: &str) -> Result<Option<u64>, InsideError> {
        // FAT names are case-insensitive, but a listing shows one spelling:
        // lookups take that spelling, as the other formats' do.
        Ok(self
            .list(dir)?
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.id))
    }

    fn read(&self, file: u64, offset: u64, buf: &mut [u8]) -> Result<usize, InsideError> {
        let e = self.dirent(file)?;
        if e[11] & ATTR_DIR != 0 {
            return Err(self.corrupt(format!("entry {file} is a directory")));
        }
        let size = u64::from(le32(&e, 28));
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(size - offset) as usize;
        let cs = self.bpb.cluster;
        let need = size.div_ceil(cs);
        let chain = self.chain(file, self.first_cluster(&e), need)?;
        if (chain.len() as u64) < need {
            return Err(self.corrupt(format!(
                "entry {file}: {} clusters for {size} bytes",
                chain.len()
            )));
        }
        let mut done = 0usize;
        while done < n {
            let pos = offset + done as u64;
            let k = (pos / cs) as usize;
            // Consecutive clusters are read in one go.
            let mut run = 1;
            while k + run < chain.len() && chain[k + run] == chain[k] + run as u32 {
                run += 1;
            }
            let avail = (k as u64 + run as u64) * cs - pos;
            let take = avail.min((n - done) as u64) as usize;
            let at = self.cluster_at(chain[k]) + pos % cs;
            self.data.read_exact_at(at, &mut buf[done..done + take])?;
            done += take;
        }
        Ok(n)
    }
}
