//! The `fuser` adapter: turns kernel requests into [`FsCore`] calls and results
//! into replies, mapping errors in one place ([`FsError::errno`]).
//!
//! Reads never wait on the threads that serve metadata: a read whose bytes are in
//! memory is answered at once; any other goes, with its reply, to a bounded pool of
//! read threads, where it may wait for the database. `lookup`, `getattr`,
//! `readdir` and `statfs` therefore answer within milliseconds whatever the data
//! side is doing.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, Weak};

use fuser::{
    AccessFlags, BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, Notifier, OpenAccMode,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use log::{debug, info, warn};

use super::core::{Attr, FsCore, Kind, TTL};
use super::error::FsError;
use super::walk::StatReaders;
use crate::catalog::Changes;
use crate::handle::{Handle, READ_CHUNK};

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
    }
}

/// Entries (besides `.` and `..`) of a listing small enough to come whole, with
/// attributes, to a process that reads names only (see `readdirplus`).
const SMALL_LISTING: usize = 16;

/// A read waiting for bytes that are not in memory.
type ReadJob = Box<dyn FnOnce() + Send>;

/// The read threads: a fixed number, fed through one queue.
struct ReadWorkers {
    tx: Mutex<Sender<ReadJob>>,
}

impl ReadWorkers {
    fn start(n: usize) -> std::io::Result<ReadWorkers> {
        let (tx, rx) = channel::<ReadJob>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..n.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("fuse-read-{i}"))
                .spawn(move || read_worker(&rx))?;
        }
        Ok(ReadWorkers { tx: Mutex::new(tx) })
    }

    fn submit(&self, job: ReadJob) -> Result<(), ReadJob> {
        match self.tx.lock() {
            Ok(tx) => tx.send(job).map_err(|e| e.0),
            Err(_) => Err(job),
        }
    }
}

fn read_worker(rx: &Mutex<Receiver<ReadJob>>) {
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

/// The read-only file system as `fuser` sees it.
pub struct BootFs {
    core: Arc<FsCore>,
    readers: ReadWorkers,
    uid: u32,
    gid: u32,
    /// Hand files in the disk cache to the kernel (asked for, then granted at init).
    passthrough: AtomicBool,
    /// Which open files are passed through and which are not, per inode.
    modes: Mutex<Modes>,
    /// Processes that stat what they list: only they get READDIRPLUS batches.
    stat_readers: StatReaders,
}

/// The kernel keeps one I/O mode per inode: while any handle of an inode is open
/// through the page cache, a passthrough open of it fails (ETXTBSY), and the other
/// way round. So an inode's opens follow its open handles' mode; only an inode with
/// none open may change.
#[derive(Default)]
struct Modes {
    /// The kernel's reference to each passed-through inode's cache file, one per
    /// inode for all its open handles, shared while any is open.
    backing: HashMap<u64, Weak<BackingId>>,
    /// The backing each passed-through file handle holds.
    backed: HashMap<u64, Arc<BackingId>>,
    /// Handles open through the page cache: inode by handle, and count by inode.
    plain_fh: HashMap<u64, u64>,
    plain: HashMap<u64, usize>,
}

impl BootFs {
    /// The adapter over `core`, with `read_threads` threads for reads that wait on
    /// the database.
    /// the database; `passthrough` asks the kernel to read files in the disk
    /// cache itself.
    pub fn new(
        core: Arc<FsCore>,
        read_threads: usize,
        passthrough: bool,
    ) -> std::io::Result<BootFs> {
        // SAFETY: geteuid and getegid cannot fail and touch no memory of ours.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        Ok(BootFs {
            core,
            readers: ReadWorkers::start(read_threads)?,
            uid,
            gid,
            passthrough: AtomicBool::new(passthrough),
            modes: Mutex::default(),
            stat_readers: StatReaders::default(),
        })
    }

    fn attr(&self, a: &Attr) -> FileAttr {
        let (uid, gid) = a.owner.unwrap_or((self.uid, self.gid));
        FileAttr {
            ino: INodeNo(a.ino),
            size: a.size,
            blocks: a.size.div_ceil(512),
            atime: a.mtime,
            mtime: a.mtime,
            ctime: a.mtime,
            crtime: a.mtime,
            kind: file_type(a.kind),
            perm: a.perm,
            nlink: a.nlink,
            uid,
            gid,
            rdev: 0,
            blksize: 1 << 20,
            flags: 0,
        }
    }

    /// Decides how `fh` of inode `ino` is opened: through the kernel's passthrough
    /// of its disk-cache file (Some), or served by us through the page cache (None).
    fn open_mode(&self, ino: u64, fh: u64, reply: &ReplyOpen) -> Option<Arc<BackingId>> {
        let mut modes = self.modes.lock().ok()?;
        let id = self.backing_for(&mut modes, ino, fh, reply);
        match &id {
            Some(id) => {
                modes.backed.insert(fh, id.clone());
            }
            None => {
                modes.plain_fh.insert(fh, ino);
                *modes.plain.entry(ino).or_default() += 1;
            }
        }
        id
    }

    fn backing_for(
        &self,
        modes: &mut Modes,
        ino: u64,
        fh: u64,
        reply: &ReplyOpen,
    ) -> Option<Arc<BackingId>> {
        if !self.passthrough.load(Ordering::Relaxed)
            || modes.plain.get(&ino).is_some_and(|n| *n > 0)
        {
            return None;
        }
        // Open handles of this inode are passed through: this one must be too, on
        // the same backing (which holds its file open even if the cache evicted it).
        if let Some(id) = modes.backing.get(&ino).and_then(Weak::upgrade) {
            return Some(id);
        }
        let file = self.core.handle(fh).ok()?.cached_file()?;
        match reply.open_backing(&file) {
            Ok(id) => {
                let id = Arc::new(id);
                modes.backing.retain(|_, w| w.strong_count() > 0);
                modes.backing.insert(ino, Arc::downgrade(&id));
                Some(id)
            }
            Err(e) => {
                warn!("passthrough refused by the kernel ({e}): cached files are read by pgbootfs");
                self.passthrough.store(false, Ordering::Relaxed);
                None
            }
        }
    }

    /// Forgets how `fh` was opened.
    fn closed(&self, fh: u64) {
        let Ok(mut modes) = self.modes.lock() else {
            return;
        };
        modes.backed.remove(&fh);
        if let Some(ino) = modes.plain_fh.remove(&fh)
            && let Some(n) = modes.plain.get_mut(&ino)
        {
            *n -= 1;
            if *n == 0 {
                modes.plain.remove(&ino);
            }
        }
    }
}

/// Reads `size` bytes at `offset` of `handle` into `reply`.
fn read_into_reply(handle: &Handle, offset: u64, size: u32, reply: ReplyData) {
    let mut reply = Some(reply);
    let res = handle.read_with(offset, size as usize, |bytes| {
        if let Some(r) = reply.take() {
            r.data(bytes);
        }
    });
    if let (Err(e), Some(r)) = (res, reply.take()) {
        r.error(errno(&FsError::Read(e)));
    }
}

/// An xattr value or name list: its size when asked for 0 bytes, ERANGE when it
/// does not fit.
fn xattr_reply(bytes: &[u8], size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(bytes.len() as u32)
    } else if bytes.len() > size as usize {
        reply.error(Errno::ERANGE)
    } else {
        reply.data(bytes)
    }
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

/// Answers a probe we do not support, quietly: tools such as `file`, `e2fsck` or
/// Python's isatty check send them routinely, and fuser's default logs a warning.
macro_rules! unsupported {
    ($reply:expr, $errno:expr, $what:literal) => {{
        debug!(concat!("unsupported ", $what));
        $reply.error($errno)
    }};
}

impl Filesystem for BootFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Listings can carry attributes (no LOOKUP per entry for `ls -l`); who gets
        // them is decided per process (see `walk`), with the kernel's adaptive mode
        // for the rest of a listing.
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
        if self.passthrough.load(Ordering::Relaxed) {
            let granted = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            self.passthrough.store(granted, Ordering::Relaxed);
            if granted {
                info!("passthrough: on (the kernel reads files in the disk cache itself)");
            } else {
                info!(
                    "passthrough: off (the kernel lacks FUSE passthrough, Linux 6.9+): \
                     pgbootfs reads files in the disk cache"
                );
            }
        }
        info!("mounted: {} files", self.core.tree().file_count());
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        crate::metrics::fuse_op("lookup");
        let res = name
            .to_str()
            .ok_or(FsError::NotFound)
            .and_then(|n| self.core.lookup(parent.0, n));
        match res {
            Ok(a) => {
                // Walkers look up directories to enter them; only a process
                // that stats files wants attributes with its listings.
                if a.kind == Kind::File {
                    self.stat_readers.note(req.pid());
                }
                reply.entry(&a.ttl, &self.attr(&a), Generation(0))
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        crate::metrics::fuse_op("getattr");
        match self.core.getattr(ino.0, fh.map(|f| f.0)) {
            Ok(a) => reply.attr(&a.ttl, &self.attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        crate::metrics::fuse_op("open");
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        match self.core.open(ino.0, write) {
            Ok(fh) => match self.open_mode(ino.0, fh, &reply) {
                // Reads of this file never reach us: the kernel reads the cache file.
                Some(id) => {
                    crate::metrics::passthrough_open();
                    reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id)
                }
                // Content under an inode never changes, so the page cache stays valid.
                None => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            },
            Err(e) => reply.error(errno(&e)),
        }
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
        crate::metrics::fuse_op("read");
        // Inside an image (--inside): decompression, always on a read thread.
        if let Some(file) = self.core.inside_file(fh.0) {
            let core = self.core.clone();
            let job: ReadJob = Box::new(move || match core.read_inside(&file, offset, size) {
                Ok(bytes) => reply.data(&bytes),
                Err(e) => reply.error(errno(&e)),
            });
            if let Err(job) = self.readers.submit(job) {
                job();
            }
            return;
        }
        let handle = match self.core.handle(fh.0) {
            Ok(h) => h,
            Err(e) => return reply.error(errno(&e)),
        };
        let mut reply = Some(reply);
        let answered = handle.read_cached(offset, size as usize, |bytes| {
            if let Some(r) = reply.take() {
                r.data(bytes);
            }
        });
        let (None, Some(reply)) = (answered, reply) else {
            return;
        };
        let job: ReadJob = Box::new(move || read_into_reply(&handle, offset, size, reply));
        if let Err(job) = self.readers.submit(job) {
            // The read threads are gone (shutting down): read here rather than drop it.
            job();
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        crate::metrics::fuse_op("readlink");
        match self.core.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(&e)),
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
        crate::metrics::fuse_op("release");
        self.core.release(fh.0);
        self.closed(fh.0);
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
        crate::metrics::fuse_op("flush");
        // Nothing is ever dirty. ENOSYS makes the kernel stop sending FLUSH for
        // the mount's life (close() still returns 0): one round trip less per
        // close, which a `tar` of 50,000 files inside an image notices.
        reply.error(Errno::ENOSYS);
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        crate::metrics::fuse_op("fsync");
        // Nothing is ever dirty.
        reply.ok();
    }

    // No extended attributes in the tree itself. ENOSYS (not ENODATA) makes the
    // kernel stop asking for the rest of the mount's life: `ls -l` otherwise costs
    // two round trips per file. With --inside, entries inside images have theirs,
    // so the tree answers ENODATA instead.
    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        crate::metrics::fuse_op("getxattr");
        let list = match self.core.xattrs(ino.0) {
            Ok(Some(list)) => list,
            Ok(None) => return reply.error(Errno::ENOSYS),
            Err(e) => return reply.error(errno(&e)),
        };
        let name = name.as_encoded_bytes();
        match list.iter().find(|(n, _)| n.as_slice() == name) {
            None => reply.error(Errno::ENODATA),
            Some((_, v)) => xattr_reply(v, size, reply),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        crate::metrics::fuse_op("listxattr");
        match self.core.xattrs(ino.0) {
            Ok(Some(list)) => {
                let names: Vec<u8> = list
                    .iter()
                    .flat_map(|(n, _)| n.iter().copied().chain([0]))
                    .collect();
                xattr_reply(&names, size, reply)
            }
            Ok(None) => reply.error(Errno::ENOSYS),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        crate::metrics::fuse_op("ioctl");
        unsupported!(reply, Errno::ENOTTY, "ioctl")
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: ReplyLseek,
    ) {
        crate::metrics::fuse_op("lseek");
        // ENOSYS: the kernel then answers SEEK_DATA/SEEK_HOLE itself, for good.
        unsupported!(reply, Errno::ENOSYS, "lseek")
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        crate::metrics::fuse_op("opendir");
        // The kernel may keep listings (`forget` drops them when they change), but
        // only listings with attributes: a names-only one kept would serve a later
        // `ls -l` without them, at one LOOKUP per entry.
        let flags = if self.stat_readers.wants_attrs(req.pid()) {
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::FOPEN_KEEP_CACHE
        };
        match self.core.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), flags),
            Err(e) => reply.error(errno(&e)),
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
        crate::metrics::fuse_op("readdir");
        let res = self.core.readdir(fh.0, ino.0, offset, |next, name, a| {
            reply.add(INodeNo(a.ino), next, file_type(a.kind), name)
        });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        crate::metrics::fuse_op("readdirplus");
        // For a process that reads names only, the first batch is `.`, `..` and
        // the directories listed first (inside images all of them, listed first
        // there), which such a walker enters anyway: their inodes save it a
        // LOOKUP each. Files make no inode: the kernel asks for the rest of the
        // listing with READDIR. A small listing comes whole: its few inodes cost
        // less than that READDIR's round trip.
        let mut names_only = offset == 0 && !self.stat_readers.wants_attrs(req.pid());
        if names_only {
            let mut n = 0;
            let counted = self.core.readdir(fh.0, ino.0, 0, |_, _, _| {
                n += 1;
                n > SMALL_LISTING + 2
            });
            names_only = counted.is_err() || n > SMALL_LISTING + 2;
        }
        let res = self.core.readdir(fh.0, ino.0, offset, |next, name, a| {
            if names_only && next > 2 && a.kind != Kind::Dir {
                return true;
            }
            reply.add(
                INodeNo(a.ino),
                next,
                name,
                &a.ttl,
                &self.attr(a),
                Generation(0),
            )
        });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
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
        crate::metrics::fuse_op("releasedir");
        self.core.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        crate::metrics::fuse_op("fsyncdir");
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        crate::metrics::fuse_op("statfs");
        let t = self.core.totals();
        reply.statfs(t.bytes.div_ceil(4096), 0, 0, t.inodes, 0, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        crate::metrics::fuse_op("access");
        match self.core.access(ino.0, mask.contains(AccessFlags::W_OK)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    // Calls that would change the tree never arrive: the mount is MS_RDONLY, so
    // the kernel answers EROFS itself (tests/mount.rs checks ten kinds of write).
}
