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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use log::debug;
use parking_lot::Mutex;

use super::error::FsError;
use crate::catalog::{Catalog, Ino, Node, NodeKind, ROOT, Tree};
use crate::handle::{Handle, HandlePool};

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
        }
    }
}

/// Totals for statfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Sum of file sizes.
    pub bytes: u64,
    /// Inodes (directories and files).
    pub inodes: u64,
}

/// A file open through the mount: its handle and its attributes at open.
struct OpenFile {
    handle: Arc<Handle>,
    attr: Attr,
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

/// The file system's decisions.
pub struct FsCore {
    source: Arc<dyn TreeSource>,
    pool: HandlePool,
    open: Arc<OpenTable>,
}

impl FsCore {
    /// A file system over `source`, reading through `pool`, tracking opens in `open`.
    pub fn new(source: Arc<dyn TreeSource>, pool: HandlePool, open: Arc<OpenTable>) -> FsCore {
        FsCore { source, pool, open }
    }

    /// The current tree.
    pub fn tree(&self) -> Arc<Tree> {
        self.source.snapshot()
    }

    /// The entry `name` of directory `parent`.
    pub fn lookup(&self, parent: Ino, name: &str) -> Result<Attr, FsError> {
        let tree = self.tree();
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
        self.tree().get(ino).map(Attr::of).ok_or(FsError::NotFound)
    }

    /// Opens a file for reading, with no database work.
    pub fn open(&self, ino: Ino, write: bool) -> Result<u64, FsError> {
        if write {
            return Err(FsError::ReadOnly);
        }
        let tree = self.tree();
        let node = tree.get(ino).ok_or(FsError::NotFound)?;
        let file = node.file().ok_or(FsError::IsDir)?;
        let handle = self.pool.open(file, &node.path);
        let fh = self.open.next_fh();
        self.open.files.lock().insert(
            fh,
            OpenFile {
                handle: Arc::new(handle),
                attr: Attr::of(node),
            },
        );
        debug!("open {} as fh {fh}", node.path);
        Ok(fh)
    }

    /// The handle behind an open file, for a read done elsewhere.
    pub fn handle(&self, fh: u64) -> Result<Arc<Handle>, FsError> {
        self.open
            .files
            .lock()
            .get(&fh)
            .map(|f| f.handle.clone())
            .ok_or(FsError::BadHandle)
    }

    /// Closes an open file: its handle gives back any connection at once.
    pub fn release(&self, fh: u64) {
        let removed = self.open.files.lock().remove(&fh);
        if let Some(f) = removed {
            f.handle.close();
            debug!("release fh {fh} ({})", f.handle.path());
        }
    }

    /// Opens a directory for listing.
    pub fn opendir(&self, ino: Ino) -> Result<u64, FsError> {
        let tree = self.tree();
        match tree.get(ino).map(|n| &n.kind) {
            Some(NodeKind::Dir(_)) => {
                let fh = self.open.next_fh();
                self.open.dirs.lock().insert(fh, tree);
                Ok(fh)
            }
            Some(NodeKind::File(_)) => Err(FsError::NotDir),
            None => Err(FsError::NotFound),
        }
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
        let node = tree.get(ino).ok_or(FsError::NotFound)?;
        let children = tree.children(ino).ok_or(FsError::NotDir)?;
        let parent = tree.get(node.parent).unwrap_or(node);
        let list = [(".", node), ("..", parent)].into_iter().chain(children);
        for (i, (name, node)) in list.enumerate().skip(offset as usize) {
            if add(i as u64 + 1, name, &Attr::of(node)) {
                break;
            }
        }
        Ok(())
    }

    /// The tree a listing pass reads. A pass starts (offset 0) from the current
    /// tree and keeps it for the rest of the pass, so one listing is consistent.
    /// Never an older tree at offset 0: the kernel caches the listing under the
    /// mtime it saw just before asking, which may already be the new tree's.
    fn pass_tree(&self, fh: u64, offset: u64) -> Arc<Tree> {
        let mut dirs = self.open.dirs.lock();
        match dirs.get_mut(&fh) {
            Some(t) if offset > 0 => t.clone(),
            Some(t) => {
                *t = self.source.snapshot();
                t.clone()
            }
            None => self.source.snapshot(),
        }
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
        if self.tree().get(ino).is_none() {
            Err(FsError::NotFound)
        } else if write {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::FileInfo;
    use crate::db::DbConfig;
    use crate::handle::PoolOptions;

    /// A tree that tests swap, as a refresh would.
    struct Fixed(Mutex<Arc<Tree>>);

    impl TreeSource for Fixed {
        fn snapshot(&self) -> Arc<Tree> {
            self.0.lock().clone()
        }
    }

    fn file(sha: &str, size: u64) -> FileInfo {
        FileInfo {
            oid: 1,
            size,
            sha256: sha.into(),
            filetype: "root-tgz".into(),
            stored: None,
        }
    }

    fn core(files: &[(&str, FileInfo)]) -> (FsCore, Arc<Fixed>) {
        let source = Arc::new(Fixed(Mutex::new(Arc::new(Tree::from_files(files)))));
        // No server listens there: any database work would fail the test.
        let db = DbConfig::resolve(Some("host=/nonexistent/socket dbname=none user=none"))
            .expect("conninfo parses");
        let pool = HandlePool::new(&db, &PoolOptions::default());
        let core = FsCore::new(source.clone(), pool, Arc::default());
        (core, source)
    }

    fn ino(core: &FsCore, path: &str) -> Ino {
        let mut at = ROOT;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            at = core.lookup(at, part).expect(part).ino;
        }
        at
    }

    #[test]
    fn lookups_and_attributes_follow_the_tree() {
        let (core, _) = core(&[
            ("/u/a/g/f/1/k", file("x", 10)),
            ("/u/a/g/f/1/i", file("y", 5)),
        ]);
        let root = core.getattr(ROOT, None).unwrap();
        assert_eq!((root.kind, root.ttl), (Kind::Dir, ROOT_TTL));
        let k = core.getattr(ino(&core, "u/a/g/f/1/k"), None).unwrap();
        assert_eq!(
            (k.kind, k.size, k.perm, k.ttl),
            (Kind::File, 10, 0o444, TTL)
        );
        let v = core.lookup(ino(&core, "u/a/g/f"), "1").unwrap();
        assert_eq!((v.kind, v.nlink, v.perm), (Kind::Dir, 4, 0o555));
        assert!(matches!(core.lookup(ROOT, "nope"), Err(FsError::NotFound)));
        assert_eq!(core.lookup(ROOT, "nope").unwrap_err().errno(), libc::ENOENT);
        assert_eq!(
            core.totals(),
            Totals {
                bytes: 15,
                inodes: 8
            }
        );
    }

    #[test]
    fn opens_touch_no_database_and_keep_their_attributes() {
        let (core, source) = core(&[("/u/a/g/f/1/k", file("x", 10))]);
        let k = ino(&core, "u/a/g/f/1/k");
        assert_eq!(core.open(k, true).unwrap_err().errno(), libc::EROFS);
        assert_eq!(core.open(ROOT, false).unwrap_err().errno(), libc::EISDIR);
        assert_eq!(core.open(9999, false).unwrap_err().errno(), libc::ENOENT);
        // The database is unreachable, yet open succeeds: set-up is lazy.
        let fh = core.open(k, false).unwrap();
        assert!(!core.handle(fh).unwrap().holds_connection());
        // The catalog drops the file: the open file keeps its attributes.
        *source.0.lock() = Arc::new(Tree::from_files(&[]));
        assert!(matches!(core.getattr(k, None), Err(FsError::NotFound)));
        assert_eq!(core.getattr(k, Some(fh)).unwrap().size, 10);
        core.release(fh);
        assert!(matches!(core.handle(fh), Err(FsError::BadHandle)));
        assert_eq!(core.access(ROOT, true).unwrap_err().errno(), libc::EROFS);
    }

    #[test]
    fn a_listing_pass_reads_one_tree_and_a_new_pass_the_current_one() {
        let (core, source) = core(&[
            ("/u/a/g/f/1/k", file("x", 1)),
            ("/u/a/g/f/2/k", file("y", 1)),
        ]);
        let dir = ino(&core, "u/a/g/f");
        let fh = core.opendir(dir).unwrap();
        let names = |offset: u64| {
            let mut out = Vec::new();
            core.readdir(fh, dir, offset, |_, name, _| {
                out.push(name.to_string());
                false
            })
            .unwrap();
            out
        };
        assert_eq!(names(0), [".", "..", "1", "2"]);
        // A refresh drops version 2 and adds 3 mid-pass: the pass goes on in its tree.
        *source.0.lock() = Arc::new(Tree::from_files(&[
            ("/u/a/g/f/1/k", file("x", 1)),
            ("/u/a/g/f/3/k", file("z", 1)),
        ]));
        assert_eq!(names(3), ["2"]);
        // The next pass starts from the current tree.
        assert_eq!(names(0), [".", "..", "1", "3"]);
        // A full reply stops the listing; its offsets continue it.
        let mut first = Vec::new();
        core.readdir(fh, dir, 0, |next, name, _| {
            first.push((next, name.to_string()));
            first.len() == 2
        })
        .unwrap();
        assert_eq!(first.last().unwrap().0, 2);
        assert_eq!(
            core.opendir(ino(&core, "u/a/g/f/1/k")).unwrap_err().errno(),
            libc::ENOTDIR
        );
        core.releasedir(fh);
    }
}
