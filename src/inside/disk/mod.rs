//! Raw disk images (`root-dd`, `root-dd.raw`): the partition table ([`table`]:
//! GPT, or MBR with its primary partitions) shown as `p1/`, `p2/`, ... numbered
//! as the kernel numbers them, each the contents of its file system ([`ext`]:
//! ext2/3/4, [`fat`]: FAT12/16/32). A disk with no table but a file system at
//! its start is shown as that file system.
//!
//! Everything is read lazily through [`Bytes`]: opening reads the first sectors
//! and the partition entries; a partition's file system is opened on its first
//! use (its superblock or boot sector), and a listing or a read touches only the
//! blocks it needs. The disk reader takes any `Arc<dyn Bytes>`, so a
//! decompressed view of a `root-dd.xz` can be stacked under it unchanged.
//!
//! Ids: an entry of partition `k` (1..=255) is `k << 40 | inner`, `inner` the
//! file system's own id (ext: the inode number; FAT: see [`fat`]), where inner 0
//! stands for the file system's root, so the partition's directory id is known
//! before its file system is opened. The disk's root is id 1 (partition 0).
//! A whole-disk file system is partition 0: its ids are its inner ids, root 0.
//!
//! A partition whose file system is not recognised, is corrupt or uses what the
//! readers do not support is still listed; listing or reading it fails with one
//! error naming the image, the partition and the reason (doc/SEMANTICS.md).

pub mod ext;
pub mod fat;
pub mod table;
#[cfg(test)]
mod tests;

use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

use super::bytes::Bytes;
use super::error::{InsideError, Reason};
use super::{Archive, Dirent, Entry};
use table::Partition;

/// Bits of an id that belong to the partition's file system.
const INNER_BITS: u32 = 40;
const INNER_MASK: u64 = (1 << INNER_BITS) - 1;
/// The disk root's id (partition 0, inner 1: never a partition's entry).
const DISK_ROOT: u64 = 1;

/// A window of another image's bytes: one partition.
pub struct Slice {
    inner: Arc<dyn Bytes>,
    start: u64,
    len: u64,
}

impl Slice {
    /// Bytes `start..start + len` of `inner`; reads past the image's end fail
    /// there (a truncated disk image), not here.
    pub fn new(inner: Arc<dyn Bytes>, start: u64, len: u64) -> Slice {
        Slice { inner, start, len }
    }
}

/// The disk image inside a tarball (`root-dd.tar`, `.tar.xz`, `.tar.bz2`): the
/// tarball's first regular file, as a window of `tar` (the tarball's bytes,
/// decompressed). MAAS writes such a tarball with the one image in it.
pub fn in_tar(tar: Arc<dyn Bytes>) -> Result<Slice, InsideError> {
    let name = tar.name().to_string();
    let bad = |why: String| InsideError::corrupt(&name, format!("as a tarball: {why}"));
    let mut archive = ::tar::Archive::new(super::bytes::Reader::new(tar.clone()));
    let entries = archive
        .entries_with_seek()
        .map_err(|e| bad(e.to_string()))?;
    for entry in entries {
        let entry = entry.map_err(|e| bad(e.to_string()))?;
        if entry.header().entry_type().is_file() {
            let (start, len) = (entry.raw_file_position(), entry.size());
            return Ok(Slice::new(tar, start, len));
        }
    }
    Err(InsideError::unsupported(
        &name,
        "a root-dd tarball with no file in it".to_string(),
    ))
}

impl Bytes for Slice {
    fn size(&self) -> u64 {
        self.len
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), InsideError> {
        let end = offset.checked_add(buf.len() as u64);
        match end.filter(|e| *e <= self.len) {
            Some(_) => self.inner.read_exact_at(self.start + offset, buf),
            None => Err(InsideError::corrupt(
                self.inner.name(),
                format!(
                    "needs bytes {offset}..+{} of a partition of {} bytes",
                    buf.len(),
                    self.len
                ),
            )),
        }
    }
}

/// Bytes of metadata read and kept at a time: inode tables, directories and
/// FATs are dense, so a walk finds most of what it needs next in the same
/// page (a 4 KiB block at a time cost a find(1) over 30,000 entries about 1.6
/// times the image in chunk fetches, the handle's cache evicting what one
/// scattered reader used; see doc/DEVELOPMENT.md).
const PAGE: u64 = 64 << 10;
/// Metadata kept per file system: 8 MiB (128 pages).
const PAGES_KEPT: usize = 128;

/// Metadata blocks of one file system, kept read in pages of [`PAGE`] bytes:
/// directory, inode table, extent and FAT blocks are read many times by a walk.
pub(crate) struct BlockCache {
    bytes: Arc<dyn Bytes>,
    block: usize,
    pages: Mutex<LruCache<u64, Arc<Vec<u8>>>>,
}

impl BlockCache {
    /// Blocks of `block` bytes (at most [`PAGE`]) of `bytes`.
    pub(crate) fn new(bytes: Arc<dyn Bytes>, block: usize) -> BlockCache {
        BlockCache {
            bytes,
            block,
            pages: Mutex::new(LruCache::new(
                NonZeroUsize::new(PAGES_KEPT).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    /// Block `n`.
    pub(crate) fn get(&self, n: u64) -> Result<Arc<Vec<u8>>, InsideError> {
        let at = n
            .checked_mul(self.block as u64)
            .filter(|at| at.checked_add(self.block as u64).is_some())
            .ok_or_else(|| {
                InsideError::corrupt(self.bytes.name(), format!("block {n} is past any disk"))
            })?;
        let page = at / PAGE;
        let cached = self.pages.lock().get(&page).cloned();
        let data = match cached {
            Some(p) => p,
            None => {
                let start = page * PAGE;
                let len = PAGE.min(self.bytes.size().saturating_sub(start));
                match self.bytes.read_vec(start, len as usize) {
                    Ok(p) => {
                        let p = Arc::new(p);
                        self.pages.lock().put(page, p.clone());
                        p
                    }
                    // A page past a cut image's end: the block alone, or its error.
                    Err(_) => return Ok(Arc::new(self.bytes.read_vec(at, self.block)?)),
                }
            }
        };
        let off = (at - page * PAGE) as usize;
        match data.get(off..off + self.block) {
            Some(b) => Ok(Arc::new(b.to_vec())),
            None => Ok(Arc::new(self.bytes.read_vec(at, self.block)?)),
        }
    }
}

/// The file systems read inside a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    /// ext2, ext3 or ext4 (the superblock's magic at byte 1080).
    Ext,
    /// FAT12, FAT16 or FAT32 (a valid boot sector).
    Fat,
}

/// Which file system starts at byte 0 of `bytes`, if one this module reads.
pub fn detect(bytes: &dyn Bytes) -> Result<Option<FsKind>, InsideError> {
    if ext::probe(bytes)? {
        return Ok(Some(FsKind::Ext));
    }
    if fat::probe(bytes)? {
        return Ok(Some(FsKind::Fat));
    }
    Ok(None)
}

/// What else a partition may hold, by its signature (libblkid's offsets), for
/// a message that says what it is: XFS roots (RHEL, CentOS), swap, LVM, LUKS.
fn identify(bytes: &dyn Bytes) -> Option<&'static str> {
    let magics: [(u64, &[u8], &'static str); 9] = [
        (0, b"XFSB", "an XFS file system"),
        (0x10040, b"_BHRfS_M", "a btrfs file system"),
        (3, b"NTFS    ", "an NTFS file system"),
        (0, b"hsqs", "a squashfs"),
        (0, b"LUKS\xba\xbe", "a LUKS encrypted volume"),
        (512, b"LABELONE", "an LVM physical volume"),
        (4086, b"SWAPSPACE2", "swap"),
        (4086, b"SWAP-SPACE", "swap"),
        (0x8001, b"CD001", "an ISO 9660 file system"),
    ];
    magics.iter().find_map(|(at, magic, what)| {
        let end = at + magic.len() as u64;
        (end <= bytes.size())
            .then(|| bytes.read_vec(*at, magic.len()).ok())
            .flatten()
            .filter(|b| b == magic)
            .map(|_| *what)
    })
}

/// Opens the file system `kind`: metadata through `meta`, contents through
/// `data` (two views of the same bytes).
fn open_fs(
    kind: FsKind,
    meta: Arc<dyn Bytes>,
    data: Arc<dyn Bytes>,
) -> Result<Arc<dyn Archive>, InsideError> {
    Ok(match kind {
        FsKind::Ext => Arc::new(ext::Ext::open_split(meta, data)?),
        FsKind::Fat => Arc::new(fat::Fat::open_split(meta, data)?),
    })
}

/// A partition's file system once opened, or why it could not be (whether
/// unsupported, and the reason).
type Opened = Result<Arc<dyn Archive>, (bool, String)>;

/// Where an id leads: its partition (None for a whole-disk file system), the
/// file system, and the file system's own id.
type Route<'a> = (Option<&'a Part>, Arc<dyn Archive>, u64);

/// One partition and its file system, opened on first use (the outcome kept,
/// an error too: a corrupt partition is not parsed again on every lookup; a
/// failed read of the image's bytes is retried, the database may come back).
struct Part {
    /// Its number as the kernel gives it (`p1`).
    number: u32,
    entry: Partition,
    fs: Mutex<Option<Opened>>,
}

/// A raw disk image.
pub struct Disk {
    /// Where tables and file system metadata are read.
    bytes: Arc<dyn Bytes>,
    /// Where files' contents are read: the same image, through a reader that
    /// may stream ahead.
    data: Arc<dyn Bytes>,
    /// The partitions, or a whole-disk file system.
    layout: Layout,
}

enum Layout {
    Table(Vec<Part>),
    Whole(Arc<dyn Archive>),
}

impl Disk {
    /// Reads the partition table of `bytes` (or finds a file system at its
    /// start); a disk with neither is an error.
    pub fn open(bytes: Arc<dyn Bytes>) -> Result<Disk, InsideError> {
        Disk::open_split(bytes.clone(), bytes)
    }

    /// Opens the disk with its tables and metadata read through `bytes` and
    /// files' contents through `data`: two readers of the same image, so a
    /// walk's scattered small reads never start a read-ahead stream.
    pub fn open_split(bytes: Arc<dyn Bytes>, data: Arc<dyn Bytes>) -> Result<Disk, InsideError> {
        // GPT first (its signature is unambiguous), then a file system at
        // byte 0 (a FAT boot sector also ends in 55aa, and its boot code may
        // sit where MBR slots would be), then an MBR.
        let parts = match table::gpt(bytes.as_ref())? {
            Some(parts) => Some(parts),
            None => match detect(bytes.as_ref())? {
                Some(kind) => {
                    let fs = open_fs(kind, bytes.clone(), data.clone())?;
                    return Ok(Disk {
                        bytes,
                        data,
                        layout: Layout::Whole(fs),
                    });
                }
                None => table::mbr(bytes.as_ref())?,
            },
        };
        let Some(parts) = parts else {
            let found = identify(bytes.as_ref()).map_or(String::new(), |what| format!(" ({what})"));
            return Err(InsideError::unsupported(
                bytes.name(),
                format!(
                    "no partition table (GPT or MBR) and no ext2/3/4 or FAT file system at its start{found}"
                ),
            ));
        };
        let layout = Layout::Table(
            parts
                .into_iter()
                .map(|entry| Part {
                    number: entry.number,
                    entry,
                    fs: Mutex::new(None),
                })
                .collect(),
        );
        Ok(Disk {
            bytes,
            data,
            layout,
        })
    }

    /// The partitions found (empty for a whole-disk file system).
    pub fn partitions(&self) -> Vec<Partition> {
        match &self.layout {
            Layout::Table(parts) => parts.iter().map(|p| p.entry.clone()).collect(),
            Layout::Whole(_) => Vec::new(),
        }
    }

    fn part(&self, number: u64) -> Option<&Part> {
        match &self.layout {
            Layout::Table(parts) => parts.iter().find(|p| u64::from(p.number) == number),
            Layout::Whole(_) => None,
        }
    }

    /// Partition `p`'s file system, opening it on first use.
    fn fs(&self, p: &Part) -> Result<Arc<dyn Archive>, InsideError> {
        let mut slot = p.fs.lock();
        if let Some(done) = &*slot {
            return done.clone().map_err(|(unsupported, why)| {
                if unsupported {
                    InsideError::unsupported(self.bytes.name(), why)
                } else {
                    InsideError::corrupt(self.bytes.name(), why)
                }
            });
        }
        let slice = |b: &Arc<dyn Bytes>| -> Arc<dyn Bytes> {
            Arc::new(Slice::new(b.clone(), p.entry.start, p.entry.len))
        };
        let meta = slice(&self.bytes);
        let opened = match detect(meta.as_ref()) {
            Ok(Some(kind)) => open_fs(kind, meta, slice(&self.data)),
            Ok(None) => Err(InsideError::unsupported(
                self.bytes.name(),
                match identify(meta.as_ref()) {
                    Some(what) => format!(
                        "{what}, which is not read (ext2/3/4 and FAT are; {})",
                        p.entry.kind
                    ),
                    None => format!("no ext2/3/4 or FAT file system found ({})", p.entry.kind),
                },
            )),
            Err(e) => Err(e),
        }
        .map_err(|e| self.in_part(p.number, e));
        match &opened {
            Ok(a) => *slot = Some(Ok(a.clone())),
            Err(InsideError {
                reason: Reason::Unsupported(w),
                ..
            }) => *slot = Some(Err((true, w.clone()))),
            Err(InsideError {
                reason: Reason::Corrupt(w),
                ..
            }) => *slot = Some(Err((false, w.clone()))),
            Err(_) => {}
        }
        opened
    }

    /// `e`, from partition `number`'s reader, naming the partition.
    fn in_part(&self, number: u32, e: InsideError) -> InsideError {
        let prefix = format!("p{number}: ");
        match e.reason {
            Reason::Corrupt(w) if !w.starts_with(&prefix) => {
                InsideError::corrupt(self.bytes.name(), format!("{prefix}{w}"))
            }
            Reason::Unsupported(w) if !w.starts_with(&prefix) => {
                InsideError::unsupported(self.bytes.name(), format!("{prefix}{w}"))
            }
            _ => e,
        }
    }

    /// Splits `id` into its partition and file system, and the inner id.
    fn route(&self, id: u64) -> Result<Route<'_>, InsideError> {
        let (number, inner) = (id >> INNER_BITS, id & INNER_MASK);
        let (part, fs) = match &self.layout {
            Layout::Whole(fs) => (None, fs.clone()),
            Layout::Table(_) => {
                let p = self.part(number).ok_or_else(|| self.no_entry(id))?;
                (Some(p), self.fs(p)?)
            }
        };
        let inner = if inner == 0 { fs.root() } else { inner };
        Ok((part, fs, inner))
    }

    /// The disk-side id of file system id `inner` of partition `part`.
    fn outer(part: Option<&Part>, fs: &dyn Archive, inner: u64) -> u64 {
        let inner = if inner == fs.root() { 0 } else { inner };
        part.map_or(inner, |p| u64::from(p.number) << INNER_BITS | inner)
    }

    fn no_entry(&self, id: u64) -> InsideError {
        InsideError::corrupt(self.bytes.name(), format!("no entry with id {id:#x}"))
    }

    /// Runs `f` on the partition's reader, naming the partition in its errors.
    fn in_fs<T>(
        &self,
        part: Option<&Part>,
        f: impl FnOnce() -> Result<T, InsideError>,
    ) -> Result<T, InsideError> {
        f().map_err(|e| match part {
            Some(p) => self.in_part(p.number, e),
            None => e,
        })
    }
}

impl Archive for Disk {
    fn format(&self) -> &'static str {
        "disk image"
    }

    fn root(&self) -> u64 {
        match &self.layout {
            Layout::Table(_) => DISK_ROOT,
            Layout::Whole(_) => 0,
        }
    }

    fn entry(&self, id: u64) -> Result<Entry, InsideError> {
        if let Layout::Table(_) = self.layout {
            if id == DISK_ROOT {
                return Ok(Entry::made_dir(id));
            }
            // A partition's directory is listed whatever its file system: one
            // that cannot be read fails when listed, not when its parent is.
            if id & INNER_MASK == 0 {
                let p = self
                    .part(id >> INNER_BITS)
                    .ok_or_else(|| self.no_entry(id))?;
                if let Ok(fs) = self.fs(p) {
                    let root = fs.root();
                    let mut e = self.in_fs(Some(p), || fs.entry(root))?;
                    e.id = id;
                    return Ok(e);
                }
                return Ok(Entry::made_dir(id));
            }
        }
        let (part, fs, inner) = self.route(id)?;
        let mut e = self.in_fs(part, || fs.entry(inner))?;
        e.id = id;
        Ok(e)
    }

    fn list(&self, dir: u64) -> Result<Arc<Vec<Dirent>>, InsideError> {
        if let Layout::Table(parts) = &self.layout
            && dir == DISK_ROOT
        {
            return Ok(Arc::new(
                parts
                    .iter()
                    .map(|p| Dirent {
                        name: format!("p{}", p.number),
                        id: u64::from(p.number) << INNER_BITS,
                        dir: true,
                    })
                    .collect(),
            ));
        }
        let (part, fs, inner) = self.route(dir)?;
        let list = self.in_fs(part, || fs.list(inner))?;
        Ok(Arc::new(
            list.iter()
                .map(|d| Dirent {
                    name: d.name.clone(),
                    id: Self::outer(part, fs.as_ref(), d.id),
                    dir: d.dir,
                })
                .collect(),
        ))
    }

    fn lookup(&self, dir: u64, name: &str) -> Result<Option<u64>, InsideError> {
        if matches!(self.layout, Layout::Table(_)) && dir == DISK_ROOT {
            return Ok(self
                .list(dir)?
                .iter()
                .find(|d| d.name == name)
                .map(|d| d.id));
        }
        let (part, fs, inner) = self.route(dir)?;
        let found = self.in_fs(part, || fs.lookup(inner, name))?;
        Ok(found.map(|id| Self::outer(part, fs.as_ref(), id)))
    }

    fn read(&self, file: u64, offset: u64, buf: &mut [u8]) -> Result<usize, InsideError> {
        let (part, fs, inner) = self.route(file)?;
        self.in_fs(part, || fs.read(inner, offset, buf))
    }
}
