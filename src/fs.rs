//! The FUSE adapter: maps kernel calls to catalog lookups and handle reads, and
//! errors to errno. It holds no logic of its own beyond the table of open handles.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, Notifier, OpenAccMode, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, WriteFlags,
};
use log::{debug, info, warn};
use parking_lot::Mutex;

use crate::catalog::{Catalog, Changes, Node, NodeKind, ROOT, Tree};
use crate::handle::{Handle, HandlePool, READ_CHUNK};

/// How long the kernel may cache names, attributes and listings. Content never
/// changes under an inode number, and each refresh tells the kernel what changed
/// (`forget`), so this only bounds staleness should a notification be lost.
const TTL: Duration = Duration::from_secs(3600);

/// The root's attributes are kept only this long: a stat of the mountpoint then
/// reaches the daemon, so a mount whose daemon was killed answers ENOTCONN soon
/// (which is how the next run finds and detaches it) and not after an hour.
const ROOT_TTL: Duration = Duration::from_secs(1);

fn ttl(ino: u64) -> &'static Duration {
    if ino == ROOT { &ROOT_TTL } else { &TTL }
}

/// A file open through the mount: its handle and the node it was opened as.
struct OpenFile {
    handle: Arc<Handle>,
    node: Node,
}

/// Every open file and directory of one mount.
#[derive(Default)]
pub struct OpenTable {
    next: AtomicU64,
    files: Mutex<HashMap<u64, OpenFile>>,
    dirs: Mutex<HashMap<u64, Arc<Tree>>>,
}

impl OpenTable {
    fn next_fh(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Ends every open handle's transaction (at shutdown). Later reads get EIO.
    pub fn close_all(&self) -> usize {
        let files: Vec<OpenFile> = self.files.lock().drain().map(|(_, f)| f).collect();
        for f in &files {
            f.handle.close();
        }
        files.len()
    }
}

/// The read-only file system over a catalog.
pub struct BootFs {
    catalog: Arc<Catalog>,
    pool: HandlePool,
    open: Arc<OpenTable>,
    uid: u32,
    gid: u32,
}

impl BootFs {
    /// A file system serving `catalog`, opening handles from `pool`.
    pub fn new(catalog: Arc<Catalog>, pool: HandlePool, open: Arc<OpenTable>) -> BootFs {
        // SAFETY: geteuid and getegid cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        BootFs {
            catalog,
            pool,
            open,
            uid,
            gid,
        }
    }

    /// The snapshot an open directory handle lists from.
    /// The tree a listing is read from. A pass starts (offset 0) from the current
    /// tree and keeps it for the rest of the pass, so one listing is consistent.
    /// Never an older tree at offset 0: the kernel caches the listing under the
    /// mtime it saw just before asking, which may already be the new tree's.
    fn dir_snapshot(&self, fh: FileHandle, offset: u64) -> Arc<Tree> {
        let mut dirs = self.open.dirs.lock();
        match dirs.get_mut(&fh.0) {
            Some(t) if offset > 0 => t.clone(),
            Some(t) => {
                *t = self.catalog.snapshot();
                t.clone()
            }
            None => self.catalog.snapshot(),
        }
    }

    fn attr(&self, node: &Node) -> FileAttr {
        let (kind, perm, nlink) = match &node.kind {
            NodeKind::Dir(children) => (FileType::Directory, 0o555, 2 + children.len() as u32),
            NodeKind::File(_) => (FileType::RegularFile, 0o444, 1),
        };
        let size = node.size();
        FileAttr {
            ino: INodeNo(node.ino),
            size,
            blocks: size.div_ceil(512),
            atime: node.mtime,
            mtime: node.mtime,
            ctime: node.mtime,
            crtime: node.mtime,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 1 << 20,
            flags: 0,
        }
    }
}

/// A directory's entries, `.` and `..` first.
fn entries(tree: &Tree, ino: u64) -> Result<Vec<(&str, &Node)>, Errno> {
    let node = tree.get(ino).ok_or(Errno::ENOENT)?;
    let NodeKind::Dir(children) = &node.kind else {
        return Err(Errno::ENOTDIR);
    };
    let parent = tree.get(node.parent).unwrap_or(node);
    let mut list = vec![(".", node), ("..", parent)];
    list.extend(
        children
            .iter()
            .filter_map(|(name, ino)| Some((name.as_str(), tree.get(*ino)?))),
    );
    Ok(list)
}

/// Tells the kernel to drop what it cached of a refresh's changes: names that now
/// lead elsewhere or nowhere, listings and attributes of changed directories, and
/// attributes of changed files. Call it outside request handlers: an invalidation
/// may wait for a request in flight on the same directory.
pub fn forget(notifier: &Notifier, changes: &Changes) {
    let mut refused = 0;
    let mut first: Option<std::io::Error> = None;
    let mut check = |r: std::io::Result<()>| match r {
        // The kernel had nothing cached for it, or the mount is already gone.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV)) => {}
        Err(e) => {
            refused += 1;
            first.get_or_insert(e);
        }
        Ok(()) => {}
    };
    for (parent, name) in &changes.names {
        check(notifier.inval_entry(INodeNo(*parent), OsStr::new(name)));
    }
    for dir in &changes.dirs {
        check(notifier.inval_inode(INodeNo(*dir), 0, 0));
    }
    for file in &changes.files {
        // A negative offset drops attributes only: the cached content stays valid.
        check(notifier.inval_inode(INodeNo(*file), -1, 0));
    }
    if let Some(e) = first {
        warn!(
            "the kernel refused {refused} cache invalidations (first: {e}); \
             changed paths may show their old state for up to {}s",
            TTL.as_secs()
        );
    }
    debug!(
        "kernel told of {} names, {} directories, {} files",
        changes.names.len(),
        changes.dirs.len(),
        changes.files.len()
    );
}

fn kind_of(node: &Node) -> FileType {
    match node.kind {
        NodeKind::Dir(_) => FileType::Directory,
        NodeKind::File(_) => FileType::RegularFile,
    }
}

fn errno(e: i32) -> Errno {
    Errno::from_i32(e)
}

impl Filesystem for BootFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Listings carry attributes (no lookup per entry for `ls -l` or `find`).
        let plus = InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO;
        if config.add_capabilities(plus).is_err() {
            debug!("kernel lacks readdirplus");
        }
        // A cached listing is used only while the directory's mtime is the one it
        // was cached at. The catalog moves a directory's mtime whenever its entries
        // change, so a listing read from an older tree just before a refresh cannot
        // outlive the refresh's invalidation.
        if config
            .add_capabilities(InitFlags::FUSE_AUTO_INVAL_DATA)
            .is_err()
        {
            warn!("kernel lacks auto_inval_data: listings may stay stale until the next change");
        }
        // fuser derives the largest read request from max_write: match the handle's
        // chunk, so aligned requests never straddle two chunks.
        let _ = config.set_max_write(READ_CHUNK as u32);
        info!("mounted: {} files", self.catalog.snapshot().file_count());
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let tree = self.catalog.snapshot();
        match name.to_str().and_then(|n| tree.lookup(parent.0, n)) {
            Some(node) => reply.entry(ttl(node.ino), &self.attr(node), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Some(fh) = fh {
            // An open file keeps its attributes even after it left the catalog.
            if let Some(f) = self.open.files.lock().get(&fh.0) {
                return reply.attr(ttl(f.node.ino), &self.attr(&f.node));
            }
        }
        match self.catalog.snapshot().get(ino.0) {
            Some(node) => reply.attr(ttl(node.ino), &self.attr(node)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let tree = self.catalog.snapshot();
        let Some(node) = tree.get(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let Some(file) = node.file() else {
            return reply.error(Errno::EISDIR);
        };
        let handle = Handle::new(&self.pool, file.oid, file.size, &node.path);
        // Set-up happens here so that failures surface at open, not at first read.
        if let Err(e) = handle.ensure_open() {
            warn!("open failed: {e}");
            return reply.error(errno(e.errno()));
        }
        let fh = self.open.next_fh();
        self.open.files.lock().insert(
            fh,
            OpenFile {
                handle: Arc::new(handle),
                node: node.clone(),
            },
        );
        debug!("open {} as fh {fh}", node.path);
        // Content under an inode never changes, so the page cache stays valid.
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let handle = match self.open.files.lock().get(&fh.0) {
            Some(f) => f.handle.clone(),
            None => return reply.error(Errno::EBADF),
        };
        let mut reply = Some(reply);
        let res = handle.read_with(offset, size as usize, |bytes| {
            if let Some(r) = reply.take() {
                r.data(bytes);
            }
        });
        if let (Err(e), Some(r)) = (res, reply.take()) {
            r.error(errno(e.errno()));
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let removed = self.open.files.lock().remove(&fh.0);
        if let Some(f) = removed {
            f.handle.close();
            debug!("release fh {fh:?} ({})", f.node.path);
        }
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    // No extended attributes. ENOSYS (not ENODATA) makes the kernel stop asking for
    // the rest of the mount's life: `ls -l` otherwise costs two round trips per file.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let tree = self.catalog.snapshot();
        match tree.get(ino.0).map(|n| &n.kind) {
            Some(NodeKind::Dir(_)) => {
                let fh = self.open.next_fh();
                // Each pass of readdir calls reads one snapshot (see dir_snapshot).
                self.open.dirs.lock().insert(fh, tree);
                // The kernel may keep listings: `forget` drops them when they change.
                let cache = FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE;
                reply.opened(FileHandle(fh), cache);
            }
            Some(NodeKind::File(_)) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let tree = self.dir_snapshot(fh, offset);
        match entries(&tree, ino.0) {
            Ok(list) => {
                for (i, (name, node)) in list.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(node.ino), i as u64 + 1, kind_of(node), name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let tree = self.dir_snapshot(fh, offset);
        match entries(&tree, ino.0) {
            Ok(list) => {
                for (i, (name, node)) in list.iter().enumerate().skip(offset as usize) {
                    let attr = self.attr(node);
                    if reply.add(
                        INodeNo(node.ino),
                        i as u64 + 1,
                        name,
                        ttl(node.ino),
                        &attr,
                        Generation(0),
                    ) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.open.dirs.lock().remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let tree = self.catalog.snapshot();
        let blocks = tree.total_bytes().div_ceil(4096);
        reply.statfs(blocks, 0, 0, tree.node_count(), 0, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if self.catalog.snapshot().get(ino.0).is_none() {
            reply.error(Errno::ENOENT)
        } else if mask.contains(AccessFlags::W_OK) {
            reply.error(Errno::EROFS)
        } else {
            reply.ok()
        }
    }

    // Every call that would change the tree: the file system is read-only.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }
}
