//! Every answer of the file system, decided over the catalog's tree and the
//! handles, with no FUSE types: tested on its own (below) and wrapped by
//! [`super::fuse`].
//!
//! Rules kept here:
//! - Names, attributes and listings may be cached by the kernel for an hour
//!   (`TTL`); each refresh tells it what changed. The root's attributes live one
//!   second, so a mount whose daemon died answers ENOTCONN soon.
//! - A listing pass reads one tree: the current one at offset 0, the same one for
//!   the rest of the pass.
//! - An open file keeps its attributes (and its handle its content) after the
//!   catalog dropped it.
//! - Opening touches no database: the handle sets up on the first read that needs it.
//! - With `--inside` (see [`FsCore::with_inside`]), `/.inside` mirrors the tree's
//!   directories and shows each browsable image as a directory of its contents;
//!   without it nothing of this exists, not even the name.
//!
//! Inode numbers: the catalog's (small, from 2) for the tree; `MIRROR | n` for
//! `/.inside` and its copy of catalog node `n` (a browsable file's copy is its
//! image's root directory); `INNER | slot << 48 | id` for entry `id` of the image
//! in `slot` (squashfs ids are inode references, under 2^48). Slots are handed out
//! once per (path, content) for the process's life, so every number is stable and
//! a hard link inside an image is one inode.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use std::collections::HashSet;
use std::time::UNIX_EPOCH;

use log::{debug, warn};
use parking_lot::Mutex;

use super::error::FsError;
use crate::catalog::{Catalog, Ino, Node, NodeKind, ROOT, Tree};
use crate::handle::{Handle, HandlePool};
use crate::inside::{Archive, Entry, EntryKind, Format, Images, InsideError, Xattr};

/// The name of the inside view in the root directory.
pub const INSIDE_NAME: &str = ".inside";
/// Inode numbers of `/.inside` and its mirror of the catalog's directories.
const MIRROR: Ino = 1 << 62;
/// Inode numbers of entries inside images.
const INNER: Ino = 1 << 63;
const SLOT_SHIFT: u32 = 48;
const ID_MASK: u64 = (1 << SLOT_SHIFT) - 1;

/// How long the kernel may cache names, attributes and listings. Content never
/// changes under an inode number, and each refresh tells the kernel what changed,
/// so this only bounds staleness should a notification be lost.
pub const TTL: Duration = Duration::from_secs(3600);

/// The root's attributes are kept only this long (see the module notes).
pub const ROOT_TTL: Duration = Duration::from_secs(1);

/// Where the core gets the current tree: the catalog, or a fixed tree in tests.
pub trait TreeSource: Send + Sync {
    /// The current snapshot.
    fn snapshot(&self) -> Arc<Tree>;
}

impl TreeSource for Catalog {
    fn snapshot(&self) -> Arc<Tree> {
        Catalog::snapshot(self)
    }
}

/// What kind of entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link (inside images only).
    Symlink,
}

/// The attributes of one entry, and how long the kernel may keep them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: Ino,
    /// Directory or file.
    pub kind: Kind,
    /// Bytes.
    pub size: u64,
    /// Permission bits.
    pub perm: u16,
    /// Link count.
    pub nlink: u32,
    /// Modification (and change, access, birth) time.
    pub mtime: SystemTime,
    /// How long the kernel may cache this.
    pub ttl: Duration,
    /// Owner and group as stored inside an image; None: the mounting user's.
    pub owner: Option<(u32, u32)>,
}

impl Attr {
    fn of(node: &Node) -> Attr {
        let (kind, perm, nlink) = match &node.kind {
            NodeKind::Dir(children) => (Kind::Dir, 0o555, 2 + children.len() as u32),
            NodeKind::File(_) => (Kind::File, 0o444, 1),
        };
        Attr {
            ino: node.ino,
            kind,
            size: node.size(),
            perm,
            nlink,
            mtime: node.mtime,
            ttl: if node.ino == ROOT { ROOT_TTL } else { TTL },
            owner: None,
        }
    }

    /// The mirror of catalog node `node` under `/.inside`: a directory.
    fn mirror(node: &Node, ino: Ino) -> Attr {
        Attr {
            ino,
            kind: Kind::Dir,
            size: 0,
            perm: 0o555,
            nlink: 2,
            mtime: node.mtime,
            ttl: TTL,
            owner: None,
        }
    }

    /// An entry inside an image, as shown: setuid and setgid dropped, devices,
    /// fifos and sockets as empty files.
    fn inner(e: &Entry, ino: Ino) -> Attr {
        let (kind, size) = match e.kind {
            EntryKind::Dir => (Kind::Dir, e.size),
            EntryKind::File => (Kind::File, e.size),
            EntryKind::Symlink(_) => (Kind::Symlink, e.size),
            EntryKind::Special => (Kind::File, 0),
        };
        Attr {
            ino,
            kind,
            size,
            perm: e.mode & 0o1777,
            nlink: e.nlink.max(1),
            mtime: UNIX_EPOCH + Duration::from_secs(e.mtime.max(0) as u64),
            ttl: TTL,
            owner: Some((e.uid, e.gid)),
        }
    }
}

/// Where an inode number of the inside view leads.
enum Place<'t> {
    /// `/.inside` itself or its copy of a catalog directory.
    Mirror(&'t Node),
    /// A browsable image's root directory (the copy of its catalog file).
    ImageRoot(&'t Node, u32),
    /// Entry `id` of the image in slot `slot`.
    Inner(u32, u64),
}

/// A file inside an image, open.
pub struct InsideFile {
    archive: Arc<dyn Archive>,
    id: u64,
}

/// Totals for statfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Sum of file sizes.
    pub bytes: u64,
    /// Inodes (directories and files).
    pub inodes: u64,
}

/// A file open through the mount: its handle (or, inside an image, its archive)
/// and its attributes at open.
struct OpenFile {
    body: Body,
    attr: Attr,
}

enum Body {
    Image(Arc<Handle>),
    Inside(Arc<InsideFile>),
}

/// Every open file and directory of one mount.
#[derive(Default)]
pub struct OpenTable {
    next: AtomicU64,
    files: Mutex<HashMap<u64, OpenFile>>,
    dirs: Mutex<HashMap<u64, Pass>>,
}

/// What one listing pass of an open directory reads: the tree it started from,
/// and in the inside view, the listing it built (the kernel asks again at each
/// offset, and building it parses every entry's inode). A listing inside an
/// image never changes, so it is kept for later passes of the same open too.
struct Pass {
    tree: Arc<Tree>,
    inside: Option<Arc<Vec<(String, Attr)>>>,
}

impl OpenTable {
    fn next_fh(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Ends every open handle's transaction (at shutdown). Later reads get EIO.
    pub fn close_all(&self) -> usize {
        let files: Vec<OpenFile> = self.files.lock().drain().map(|(_, f)| f).collect();
        for f in &files {
            if let Body::Image(h) = &f.body {
                h.close();
            }
        }
        files.len()
    }
}

/// The file system's decisions.
pub struct FsCore {
    source: Arc<dyn TreeSource>,
    pool: HandlePool,
    open: Arc<OpenTable>,
    /// The inside view (`--inside`), when on.
    inside: Option<Images>,
    /// (image, reason) pairs already logged: a broken image is told once, not on
    /// every lookup the kernel retries.
    warned: Mutex<HashSet<String>>,
}

impl FsCore {
    /// A file system over `source`, reading through `pool`, tracking opens in `open`.
    pub fn new(source: Arc<dyn TreeSource>, pool: HandlePool, open: Arc<OpenTable>) -> FsCore {
        FsCore {
            source,
            pool,
            open,
            inside: None,
            warned: Mutex::default(),
        }
    }

    /// Turns on the inside view: `/.inside/PATH/` shows the contents of each
    /// browsable image at `/PATH`, read through the same pool.
    pub fn with_inside(mut self) -> FsCore {
        self.inside = Some(Images::new(self.pool.clone()));
        self
    }

    /// The current tree.
    pub fn tree(&self) -> Arc<Tree> {
        self.source.snapshot()
    }

    /// The entry `name` of directory `parent`.
    pub fn lookup(&self, parent: Ino, name: &str) -> Result<Attr, FsError> {
        let tree = self.tree();
        if parent == ROOT && name == INSIDE_NAME && self.inside.is_some() {
            return self.getattr(MIRROR | ROOT, None);
        }
        if parent & (MIRROR | INNER) != 0 {
            return self.inside_lookup(&tree, parent, name);
        }
        tree.lookup(parent, name)
            .map(Attr::of)
            .ok_or(FsError::NotFound)
    }

    /// Attributes of `ino`; through an open file's handle number, those it was
    /// opened with, even once the catalog dropped it.
    pub fn getattr(&self, ino: Ino, fh: Option<u64>) -> Result<Attr, FsError> {
        if let Some(f) = fh.and_then(|fh| self.open.files.lock().get(&fh).map(|f| f.attr.clone())) {
            return Ok(f);
        }
        let tree = self.tree();
        if ino & (MIRROR | INNER) != 0 {
            return match self.place(&tree, ino)? {
                Place::Mirror(n) | Place::ImageRoot(n, _) => Ok(Attr::mirror(n, ino)),
                Place::Inner(slot, id) => {
                    let archive = self.archive(slot)?;
                    let e = archive.entry(id).map_err(|e| self.inside_error(e))?;
                    Ok(Attr::inner(&e, ino))
                }
            };
        }
        tree.get(ino).map(Attr::of).ok_or(FsError::NotFound)
    }

    /// Opens a file for reading, with no database work.
    pub fn open(&self, ino: Ino, write: bool) -> Result<u64, FsError> {
        if write {
            return Err(FsError::ReadOnly);
        }
        let tree = self.tree();
        let (body, attr) = if ino & (MIRROR | INNER) != 0 {
            let Place::Inner(slot, id) = self.place(&tree, ino)? else {
                return Err(FsError::IsDir);
            };
            let archive = self.archive(slot)?;
            let e = archive.entry(id).map_err(|e| self.inside_error(e))?;
            let attr = Attr::inner(&e, ino);
            match attr.kind {
                Kind::Dir => return Err(FsError::IsDir),
                // O_NOFOLLOW opens of links: there is nothing to read.
                Kind::Symlink => return Err(FsError::NotFound),
                Kind::File => {}
            }
            (Body::Inside(Arc::new(InsideFile { archive, id })), attr)
        } else {
            let node = tree.get(ino).ok_or(FsError::NotFound)?;
            let file = node.file().ok_or(FsError::IsDir)?;
            let handle = self.pool.open(file, &node.path);
            (Body::Image(Arc::new(handle)), Attr::of(node))
        };
        let fh = self.open.next_fh();
        self.open.files.lock().insert(fh, OpenFile { body, attr });
        debug!("open inode {ino} as fh {fh}");
        Ok(fh)
    }

    /// The handle behind an open file, for a read done elsewhere.
    pub fn handle(&self, fh: u64) -> Result<Arc<Handle>, FsError> {
        match self.open.files.lock().get(&fh).map(|f| &f.body) {
            Some(Body::Image(h)) => Ok(h.clone()),
            _ => Err(FsError::BadHandle),
        }
    }

    /// The file inside an image behind an open file, if it is one.
    pub fn inside_file(&self, fh: u64) -> Option<Arc<InsideFile>> {
        match self.open.files.lock().get(&fh).map(|f| &f.body) {
            Some(Body::Inside(f)) => Some(f.clone()),
            _ => None,
        }
    }

    /// Reads up to `size` bytes at `offset` of a file inside an image
    /// (decompressing: call it off the metadata threads).
    pub fn read_inside(&self, f: &InsideFile, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let mut buf = vec![0; size as usize];
        let n = f
            .archive
            .read(f.id, offset, &mut buf)
            .map_err(|e| self.inside_error(e))?;
        buf.truncate(n);
        Ok(buf)
    }

    /// The target of a symbolic link inside an image.
    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>, FsError> {
        let tree = self.tree();
        let Place::Inner(slot, id) = self.place(&tree, ino)? else {
            return Err(FsError::Invalid);
        };
        let e = self
            .archive(slot)?
            .entry(id)
            .map_err(|e| self.inside_error(e))?;
        match e.kind {
            EntryKind::Symlink(target) => Ok(target),
            _ => Err(FsError::Invalid),
        }
    }

    /// The extended attributes of `ino`: None when the inside view is off (the
    /// mount then answers ENOSYS, so the kernel stops asking for good); with it
    /// on, the tree's own entries have none and entries inside images theirs.
    pub fn xattrs(&self, ino: Ino) -> Result<Option<Vec<Xattr>>, FsError> {
        if self.inside.is_none() {
            return Ok(None);
        }
        if ino & INNER == 0 {
            self.getattr(ino, None)?;
            return Ok(Some(Vec::new()));
        }
        let tree = self.tree();
        let Place::Inner(slot, id) = self.place(&tree, ino)? else {
            return Ok(Some(Vec::new()));
        };
        let e = self
            .archive(slot)?
            .entry(id)
            .map_err(|e| self.inside_error(e))?;
        Ok(Some(e.xattrs))
    }

    /// Closes an open file: its handle gives back any connection at once.
    pub fn release(&self, fh: u64) {
        let removed = self.open.files.lock().remove(&fh);
        if let Some(OpenFile {
            body: Body::Image(h),
            ..
        }) = removed
        {
            h.close();
            debug!("release fh {fh} ({})", h.path());
        }
    }

    /// Opens a directory for listing.
    pub fn opendir(&self, ino: Ino) -> Result<u64, FsError> {
        let tree = self.tree();
        if ino & (MIRROR | INNER) != 0 {
            if self.getattr(ino, None)?.kind != Kind::Dir {
                return Err(FsError::NotDir);
            }
        } else {
            match tree.get(ino).map(|n| &n.kind) {
                Some(NodeKind::Dir(_)) => {}
                Some(NodeKind::File(_)) => return Err(FsError::NotDir),
                None => return Err(FsError::NotFound),
            }
        }
        let fh = self.open.next_fh();
        self.open
            .dirs
            .lock()
            .insert(fh, Pass { tree, inside: None });
        Ok(fh)
    }

    /// Lists directory `ino` from entry `offset` on, passing each entry's next
    /// offset, name and attributes to `add` until it says the reply is full.
    pub fn readdir(
        &self,
        fh: u64,
        ino: Ino,
        offset: u64,
        mut add: impl FnMut(u64, &str, &Attr) -> bool,
    ) -> Result<(), FsError> {
        let tree = self.pass_tree(fh, offset);
        if ino & (MIRROR | INNER) != 0 {
            let list = self.pass_listing(fh, &tree, ino, offset)?;
            for (i, (name, attr)) in list.iter().enumerate().skip(offset as usize) {
                if add(i as u64 + 1, name, attr) {
                    break;
                }
            }
            return Ok(());
        }
        let node = tree.get(ino).ok_or(FsError::NotFound)?;
        let children = tree.children(ino).ok_or(FsError::NotDir)?;
        let parent = tree.get(node.parent).unwrap_or(node);
        let list = [(".", Attr::of(node)), ("..", Attr::of(parent))]
            .into_iter()
            .chain(children.into_iter().map(|(name, n)| (name, Attr::of(n))));
        // The inside view is listed last in the root, so offsets of the tree's
        // own entries are the same with and without it.
        let inside = (ino == ROOT && self.inside.is_some())
            .then(|| (INSIDE_NAME, Attr::mirror(node, MIRROR | ROOT)));
        for (i, (name, attr)) in list.chain(inside).enumerate().skip(offset as usize) {
            if add(i as u64 + 1, name, &attr) {
                break;
            }
        }
        Ok(())
    }

    /// The images' registry; NotFound when the inside view is off.
    fn images(&self) -> Result<&Images, FsError> {
        self.inside.as_ref().ok_or(FsError::NotFound)
    }

    /// The open archive of `slot`.
    fn archive(&self, slot: u32) -> Result<Arc<dyn Archive>, FsError> {
        match self.images()?.archive(slot) {
            Some(Ok(a)) => Ok(a),
            Some(Err(e)) => Err(self.inside_error(e)),
            None => Err(FsError::NotFound),
        }
    }

    /// Logs an image's error once per image and reason, and wraps it.
    fn inside_error(&self, e: InsideError) -> FsError {
        if self
            .warned
            .lock()
            .insert(format!("{}\0{}", e.image, e.why()))
        {
            warn!("{e}");
        }
        FsError::Inside(e)
    }

    /// Where inode `ino` of the inside view leads, in `tree`.
    fn place<'t>(&self, tree: &'t Tree, ino: Ino) -> Result<Place<'t>, FsError> {
        let images = self.images()?;
        if ino & INNER != 0 {
            let slot = ((ino & !INNER) >> SLOT_SHIFT) as u32;
            return Ok(Place::Inner(slot, ino & ID_MASK));
        }
        let node = tree.get(ino & !MIRROR).ok_or(FsError::NotFound)?;
        match &node.kind {
            NodeKind::Dir(_) => Ok(Place::Mirror(node)),
            NodeKind::File(f) => images
                .slot(&node.path, f)
                .map(|slot| Place::ImageRoot(node, slot))
                .ok_or(FsError::NotFound),
        }
    }

    /// The inode number of entry `id` of the image in `slot`.
    fn inner_ino(slot: u32, id: u64) -> Ino {
        INNER | (slot as u64) << SLOT_SHIFT | (id & ID_MASK)
    }

    /// Is catalog node `n` shown under `/.inside` (a directory, or an image that
    /// can be browsed)?
    fn mirrored(n: &Node) -> bool {
        match &n.kind {
            NodeKind::Dir(_) => true,
            NodeKind::File(f) => Format::of(&f.filetype).is_some(),
        }
    }

    /// The entry `name` of inside-view directory `parent`.
    fn inside_lookup(&self, tree: &Tree, parent: Ino, name: &str) -> Result<Attr, FsError> {
        let (slot, dir) = match self.place(tree, parent)? {
            Place::Mirror(n) => {
                let child = tree.lookup(n.ino, name).ok_or(FsError::NotFound)?;
                if !Self::mirrored(child) {
                    return Err(FsError::NotFound);
                }
                return Ok(Attr::mirror(child, MIRROR | child.ino));
            }
            Place::ImageRoot(_, slot) => (slot, self.archive(slot)?.root()),
            Place::Inner(slot, id) => (slot, id),
        };
        let archive = self.archive(slot)?;
        let id = archive
            .lookup(dir, name)
            .map_err(|e| self.inside_error(e))?
            .ok_or(FsError::NotFound)?;
        let e = archive.entry(id).map_err(|e| self.inside_error(e))?;
        Ok(Attr::inner(&e, Self::inner_ino(slot, id)))
    }

    /// The full listing of inside-view directory `ino`, `.` and `..` first.
    fn inside_list(&self, tree: &Tree, ino: Ino) -> Result<Vec<(String, Attr)>, FsError> {
        let here = self.getattr(ino, None)?;
        if here.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let mut out = vec![(".".to_string(), here.clone())];
        let (slot, dir) = match self.place(tree, ino)? {
            Place::Mirror(n) => {
                let parent = if n.ino == ROOT {
                    tree.get(ROOT).map(Attr::of)
                } else {
                    tree.get(n.parent).map(|p| Attr::mirror(p, MIRROR | p.ino))
                };
                out.push(("..".into(), parent.unwrap_or(here)));
                for (name, child) in tree.children(n.ino).unwrap_or_default() {
                    if Self::mirrored(child) {
                        out.push((name.to_string(), Attr::mirror(child, MIRROR | child.ino)));
                    }
                }
                return Ok(out);
            }
            Place::ImageRoot(n, slot) => {
                let parent = tree.get(n.parent).map(|p| Attr::mirror(p, MIRROR | p.ino));
                out.push(("..".into(), parent.unwrap_or(here)));
                (slot, self.archive(slot)?.root())
            }
            // Entries inside do not know their parent's number: `..` shows
            // this directory's (the kernel resolves `..` itself).
            Place::Inner(slot, id) => {
                out.push(("..".into(), here));
                (slot, id)
            }
        };
        let archive = self.archive(slot)?;
        let list = archive.list(dir).map_err(|e| self.inside_error(e))?;
        let first = out.len();
        for d in list.iter() {
            let e = archive.entry(d.id).map_err(|e| self.inside_error(e))?;
            out.push((d.name.clone(), Attr::inner(&e, Self::inner_ino(slot, d.id))));
        }
        // Directories first (readdir promises no order; `ls` sorts): a walker's
        // names-only first batch then carries them with their attributes, so it
        // enters each without a LOOKUP (see `fuse::readdirplus`).
        out[first..].sort_by_key(|(_, a)| a.kind != Kind::Dir);
        Ok(out)
    }
    /// The tree a listing pass reads. A pass starts (offset 0) from the current
    /// tree and keeps it for the rest of the pass, so one listing is consistent.
    /// Never an older tree at offset 0: the kernel caches the listing under the
    /// mtime it saw just before asking, which may already be the new tree's.
    fn pass_tree(&self, fh: u64, offset: u64) -> Arc<Tree> {
        let mut dirs = self.open.dirs.lock();
        match dirs.get_mut(&fh) {
            Some(p) if offset > 0 => p.tree.clone(),
            Some(p) => {
                p.tree = self.source.snapshot();
                p.tree.clone()
            }
            None => self.source.snapshot(),
        }
    }

    /// The inside-view listing a pass reads: built at its offset 0 (or the first
    /// time it is asked for), then kept for the rest of the pass, so a directory
    /// of n entries costs n inode parses, not n per batch; inside an image, kept
    /// for every pass of the open directory.
    fn pass_listing(
        &self,
        fh: u64,
        tree: &Tree,
        ino: Ino,
        offset: u64,
    ) -> Result<Arc<Vec<(String, Attr)>>, FsError> {
        if (offset > 0 || ino & INNER != 0)
            && let Some(list) = self
                .open
                .dirs
                .lock()
                .get(&fh)
                .and_then(|p| p.inside.clone())
        {
            return Ok(list);
        }
        let list = Arc::new(self.inside_list(tree, ino)?);
        if let Some(p) = self.open.dirs.lock().get_mut(&fh) {
            p.inside = Some(list.clone());
        }
        Ok(list)
    }

    /// Closes a directory.
    pub fn releasedir(&self, fh: u64) {
        self.open.dirs.lock().remove(&fh);
    }

    /// Totals for statfs.
    pub fn totals(&self) -> Totals {
        let tree = self.tree();
        Totals {
            bytes: tree.total_bytes(),
            inodes: tree.node_count(),
        }
    }

    /// May `ino` be accessed so? Never for writing.
    pub fn access(&self, ino: Ino, write: bool) -> Result<(), FsError> {
        if ino & (MIRROR | INNER) != 0 {
            self.getattr(ino, None)?;
        } else if self.tree().get(ino).is_none() {
            return Err(FsError::NotFound);
        }
        if write {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }
}
#[cfg(test)]
mod tests;
