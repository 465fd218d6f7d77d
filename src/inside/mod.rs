//! Looking inside images: the contents of a squashfs, a tarball or an initrd
//! (and, next, disk images) as a tree of entries, read on demand from the image's
//! bytes through a [`Handle`](crate::handle::Handle), so through the memory
//! cache, the disk cache or the large object like every other reader.
//!
//! A leaf below the front ends: it imports `handle` and `catalog` only. The
//! mount (`fs::core`) and, next, HTTP decide how entries are shown; this module
//! decides what an image holds.
//!
//! - [`Archive`]: one format reader's view of one image: a root, entries by id,
//!   directories listed when asked (never the whole tree up front), file bytes at
//!   any offset.
//! - [`bytes`]: random access to the image's bytes ([`Bytes`]).
//! - [`squashfs`]: the lazy squashfs reader, [`decompress`] its codecs.
//! - [`tar`] and [`cpio`] (initrds): one pass over a compressed stream
//!   ([`stream`]) builds an entry table and seek points ([`index`]), kept in
//!   `--cache-dir` when there is one.
//! - [`Images`]: the images a front end has looked into, each opened once and
//!   kept while used (at most [`MAX_OPEN`]), with a stable slot per image.

pub mod bytes;
pub mod cpio;
pub mod decompress;
pub mod disk;
pub mod error;
pub mod index;
pub mod squashfs;
pub mod stream;
pub mod tar;
#[cfg(test)]
mod testing;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

use crate::catalog::FileInfo;
use crate::handle::HandlePool;
pub use bytes::{Bytes, MemBytes};
pub use error::{InsideError, Reason};

/// Images kept open (squashfs: their decompressed-block caches, at most about
/// 16 MiB each: 4 MiB of metadata, 8 blocks of at most 1 MiB, 4 MiB decompressed
/// ahead and parsed listings; tarballs and initrds: their entry tables and at
/// most 32 MiB of seek points each, see [`stream`]).
pub const MAX_OPEN: usize = 8;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link and its target, as stored.
    Symlink(Vec<u8>),
    /// A device node, fifo or socket: shown as an empty file.
    Special,
}

/// One entry of an image, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The format's id of this entry (squashfs: the inode reference); hard links
    /// share it.
    pub id: u64,
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits as stored (setuid and setgid included: front ends drop them).
    pub mode: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Bytes (files: content; symlinks: target length; directories: as stored).
    pub size: u64,
    /// Links to it, as stored.
    pub nlink: u32,
    /// Extended attributes, full names (`security.capability`) and values.
    pub xattrs: Vec<Xattr>,
}

impl Entry {
    /// A directory the image stores nothing for (a tarball's root or a parent
    /// named only in its members' paths, a FAT root, a disk's root and its
    /// partitions): 0755, root's, no time.
    pub fn made_dir(id: u64) -> Entry {
        Entry {
            id,
            kind: EntryKind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: 0,
            nlink: 2,
            xattrs: Vec::new(),
        }
    }
}

/// An extended attribute: full name and value.
pub type Xattr = (Vec<u8>, Vec<u8>);

/// One name in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirent {
    /// The name (bytes that are not UTF-8 shown as U+FFFD).
    pub name: String,
    /// The entry's id.
    pub id: u64,
    /// Whether it is a directory (known from the listing alone).
    pub dir: bool,
}

/// One format reader's view of one image. Every method may fail with the
/// image's error; none panics on corrupt input.
pub trait Archive: Send + Sync {
    /// The format's name, for messages.
    fn format(&self) -> &'static str;
    /// The root directory's id.
    fn root(&self) -> u64;
    /// The entry with this id.
    fn entry(&self, id: u64) -> Result<Entry, InsideError>;
    /// Directory `dir`'s names, in stored order (sorted, for squashfs).
    fn list(&self, dir: u64) -> Result<Arc<Vec<Dirent>>, InsideError>;
    /// The entry `name` of directory `dir`, if there is one.
    fn lookup(&self, dir: u64, name: &str) -> Result<Option<u64>, InsideError> {
        Ok(self
            .list(dir)?
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.id))
    }
    /// Copies file `file`'s bytes at `offset` into `buf`; how many (0 at the end).
    fn read(&self, file: u64, offset: u64, buf: &mut [u8]) -> Result<usize, InsideError>;
}

/// How an image of a MAAS file type is read, if it can be browsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A squashfs file system (`squashfs`).
    Squashfs,
    /// A compressed tarball.
    Tar(tar::Compression),
    /// A disk image, raw or compressed whole (`root-dd.xz`): its partitions'
    /// ext2/3/4 and FAT file systems.
    Disk(stream::Codec),
    /// A disk image inside a tarball, the tarball raw or compressed whole
    /// (`root-dd.tar`, `root-dd.tar.xz`, `root-dd.tar.bz2`).
    DiskTar(stream::Codec),
    /// An initrd: concatenated cpio archives, some compressed (`boot-initrd`).
    Initrd,
}

impl Format {
    /// The format of MAAS file type `filetype`; None for what cannot be browsed
    /// (kernels).
    pub fn of(filetype: &str) -> Option<Format> {
        match filetype {
            "squashfs" => Some(Format::Squashfs),
            "root-tgz" => Some(Format::Tar(tar::Compression::Gzip)),
            "root-tbz" => Some(Format::Tar(tar::Compression::Bzip2)),
            "root-txz" | "archive.tar.xz" => Some(Format::Tar(tar::Compression::Xz)),
            "root-dd" | "root-dd.raw" => Some(Format::Disk(stream::Codec::Raw)),
            "root-dd.gz" => Some(Format::Disk(stream::Codec::Gzip)),
            "root-dd.bz2" => Some(Format::Disk(stream::Codec::Bzip2)),
            "root-dd.xz" => Some(Format::Disk(stream::Codec::Xz)),
            "root-dd.tar" => Some(Format::DiskTar(stream::Codec::Raw)),
            "root-dd.tar.xz" => Some(Format::DiskTar(stream::Codec::Xz)),
            "root-dd.tar.bz2" => Some(Format::DiskTar(stream::Codec::Bzip2)),
            "boot-initrd" => Some(Format::Initrd),
            _ => None,
        }
    }
}

/// Opens `bytes` as `format`.
pub fn open(format: Format, bytes: Arc<dyn Bytes>) -> Result<Arc<dyn Archive>, InsideError> {
    match format {
        Format::Squashfs => Ok(Arc::new(squashfs::Squashfs::open(bytes)?)),
        Format::Tar(c) => Ok(Arc::new(tar::Tar::open(bytes, c)?)),
        Format::Disk(codec) => Ok(Arc::new(disk::Disk::open(stream::random_access(
            bytes, codec, None,
        )?)?)),
        Format::DiskTar(codec) => {
            let tar = stream::random_access(bytes, codec, None)?;
            Ok(Arc::new(disk::Disk::open(Arc::new(disk::in_tar(tar)?))?))
        }
        Format::Initrd => Ok(Arc::new(cpio::Initrd::open(bytes)?)),
    }
}

/// An image a front end looks into: which file, at which path.
#[derive(Debug, Clone)]
pub struct Image {
    /// The catalog's file.
    pub file: FileInfo,
    /// Its path in the tree.
    pub path: String,
    /// How it is read.
    pub format: Format,
}

/// The images looked into: a stable slot per (path, content), and the open
/// archives by content, the most recently used [`MAX_OPEN`] kept.
pub struct Images {
    pool: HandlePool,
    /// Where tarballs' and initrds' indexes are kept (`--cache-dir`/inside),
    /// when the pool has a disk cache.
    index_dir: Option<index::IndexDir>,
    state: Mutex<State>,
}

struct State {
    slots: HashMap<String, u32>,
    images: Vec<Arc<Image>>,
    open: LruCache<String, Arc<dyn Archive>>,
    /// Contents found corrupt or unsupported, by sha256: never read again (a
    /// failed read of the bytes is not kept: the database may come back).
    broken: HashMap<String, InsideError>,
    /// One lock per content being opened: a tarball's first look decompresses
    /// it whole, and the kernel's concurrent lookups must not each do it again.
    opening: HashMap<String, Arc<Mutex<()>>>,
}

impl Images {
    /// Images whose bytes are read through `pool`.
    pub fn new(pool: HandlePool) -> Images {
        let index_dir = pool.disk().map(|d| index::IndexDir::new(d.dir()));
        Images {
            pool,
            index_dir,
            state: Mutex::new(State {
                slots: HashMap::new(),
                images: Vec::new(),
                open: LruCache::new(NonZeroUsize::new(MAX_OPEN).unwrap_or(NonZeroUsize::MIN)),
                broken: HashMap::new(),
                opening: HashMap::new(),
            }),
        }
    }

    /// The slot of the browsable file at `path`, the same for the process's life;
    /// None if its file type cannot be browsed.
    pub fn slot(&self, path: &str, file: &FileInfo) -> Option<u32> {
        let format = Format::of(&file.filetype)?;
        let key = format!("{path}\0{}", file.sha256);
        let mut st = self.state.lock();
        if let Some(s) = st.slots.get(&key) {
            return Some(*s);
        }
        let slot = st.images.len() as u32;
        st.images.push(Arc::new(Image {
            file: file.clone(),
            path: path.to_string(),
            format,
        }));
        st.slots.insert(key, slot);
        Some(slot)
    }

    /// The image in `slot`.
    pub fn image(&self, slot: u32) -> Option<Arc<Image>> {
        self.state.lock().images.get(slot as usize).cloned()
    }

    /// The open archive of the image in `slot`, opening it (its superblock or
    /// header only) if it is not open.
    pub fn archive(&self, slot: u32) -> Option<Result<Arc<dyn Archive>, InsideError>> {
        let image = self.image(slot)?;
        let sha = image.file.sha256.clone();
        let gate = self
            .state
            .lock()
            .opening
            .entry(sha.clone())
            .or_default()
            .clone();
        let opened = {
            let _one = gate.lock();
            self.open_once(&image)
        };
        let mut st = self.state.lock();
        if st
            .opening
            .get(&sha)
            .is_some_and(|g| Arc::strong_count(g) <= 2)
        {
            st.opening.remove(&sha);
        }
        Some(opened)
    }

    /// The open archive of `image`, opening it if no one has; called with the
    /// image's opening lock held.
    fn open_once(&self, image: &Image) -> Result<Arc<dyn Archive>, InsideError> {
        {
            let mut st = self.state.lock();
            if let Some(a) = st.open.get(&image.file.sha256) {
                return Ok(a.clone());
            }
            if let Some(e) = st.broken.get(&image.file.sha256) {
                return Err(match &e.reason {
                    Reason::Unsupported(why) => InsideError::unsupported(&image.path, why.clone()),
                    Reason::Corrupt(why) => InsideError::corrupt(&image.path, why.clone()),
                    Reason::Read(_) => InsideError::corrupt(&image.path, e.why()),
                });
            }
        }
        let handle = self.pool.open(&image.file, &image.path);
        // Where a stream format's index file is kept (`--cache-dir`), if anywhere.
        let persist = self.index_dir.as_ref().map(|dir| index::Persist {
            dir,
            sha256: &image.file.sha256,
        });
        let opened = match image.format {
            // Metadata on a handle of its own that never streams ahead: a first
            // `ls` then reads the chunks it needs, not megabytes past each.
            Format::Squashfs => {
                let meta = self.pool.open(&image.file, &image.path);
                meta.set_random();
                squashfs::Squashfs::open_split(Arc::new(meta), Arc::new(handle))
                    .map(|a| Arc::new(a) as Arc<dyn Archive>)
            }
            // The same for a disk: tables, inodes, directories and FATs on a
            // handle that never streams, files' contents on one that may.
            // A compressed disk: one random-access view of the decompressed image
            // (xz by its blocks, gzip and bzip2 by seek points kept in the cache
            // dir, anything else decompressed once into it), under both sides.
            Format::Disk(codec) if codec != stream::Codec::Raw => {
                let handle = Arc::new(handle);
                let view = stream::random_access(handle.clone(), codec, persist);
                handle.set_random();
                view.and_then(|v| disk::Disk::open_split(v.clone(), v))
                    .map(|a| Arc::new(a) as Arc<dyn Archive>)
            }
            // A disk in a tarball: its one file, found by the tarball's headers,
            // under the disk reader; a compressed tarball through one view of
            // its decompressed bytes, as above.
            Format::DiskTar(stream::Codec::Raw) => {
                let meta = self.pool.open(&image.file, &image.path);
                meta.set_random();
                disk::in_tar(Arc::new(meta))
                    .and_then(|m| Ok((m, disk::in_tar(Arc::new(handle))?)))
                    .and_then(|(m, d)| disk::Disk::open_split(Arc::new(m), Arc::new(d)))
                    .map(|a| Arc::new(a) as Arc<dyn Archive>)
            }
            Format::DiskTar(codec) => {
                let handle = Arc::new(handle);
                let view = stream::random_access(handle.clone(), codec, persist);
                handle.set_random();
                view.and_then(disk::in_tar)
                    .and_then(|s| {
                        let s: Arc<dyn Bytes> = Arc::new(s);
                        disk::Disk::open_split(s.clone(), s)
                    })
                    .map(|a| Arc::new(a) as Arc<dyn Archive>)
            }
            Format::Disk(_) => {
                let meta = self.pool.open(&image.file, &image.path);
                meta.set_random();
                disk::Disk::open_split(Arc::new(meta), Arc::new(handle))
                    .map(|a| Arc::new(a) as Arc<dyn Archive>)
            }
            Format::Tar(c) => {
                let handle = Arc::new(handle);
                let opened = tar::Tar::open_with(handle.clone(), c, persist);
                // The pass streams through the image; what follows are runs of
                // at most a seek point's spacing, which a read-ahead stream
                // (up to 32 MiB ahead) would mostly read for nothing.
                handle.set_random();
                opened.map(|a| Arc::new(a) as Arc<dyn Archive>)
            }
            Format::Initrd => {
                let handle = Arc::new(handle);
                let opened = cpio::Initrd::open_with(handle.clone(), persist);
                handle.set_random();
                opened.map(|a| Arc::new(a) as Arc<dyn Archive>)
            }
        };
        let mut st = self.state.lock();
        match &opened {
            Ok(a) => {
                st.open.put(image.file.sha256.clone(), a.clone());
            }
            Err(InsideError {
                reason: Reason::Corrupt(why),
                ..
            }) => {
                let e = InsideError::corrupt(&image.path, why.clone());
                st.broken.insert(image.file.sha256.clone(), e);
            }
            Err(InsideError {
                reason: Reason::Unsupported(why),
                ..
            }) => {
                let e = InsideError::unsupported(&image.path, why.clone());
                st.broken.insert(image.file.sha256.clone(), e);
            }
            Err(_) => {}
        }
        opened
    }
}
