//! The metadata side: an immutable snapshot of the image tree, loaded from the four
//! MAAS tables over its own small pool and swapped whole on every refresh.
//!
//! Inode numbers are stable while the process runs: a directory keeps its number for
//! its path, a file for its path and content (sha256), so a replaced image gets a new
//! number and the kernel never serves the old bytes under the new one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};
use parking_lot::{Mutex, RwLock};
use r2d2::Pool;

use serde_json::{Map, Value};

use crate::db::{DbConfig, DbError};
use crate::image_storage::{ImageStorage, OnDisk, Place, StorageError};
use crate::maas::{self, FileRow, Schema};

/// An inode number.
pub type Ino = u64;

/// The root directory's inode number (FUSE requires 1).
pub const ROOT: Ino = 1;

/// An error while loading the catalog.
#[derive(Debug)]
pub enum CatalogError {
    /// Connecting or querying failed, or the database holds no image tables.
    Db(DbError),
    /// A MAAS 3.5+ database, and no usable image storage here.
    Storage(StorageError),
}

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CatalogError::Db(e) => e.fmt(f),
            CatalogError::Storage(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for CatalogError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CatalogError::Db(e) => Some(e),
            CatalogError::Storage(e) => Some(e),
        }
    }
}

impl From<DbError> for CatalogError {
    fn from(e: DbError) -> Self {
        CatalogError::Db(e)
    }
}

/// One image file as the catalog knows it.
#[derive(Debug, Clone)]
pub struct FileInfo {
    /// The large object holding the bytes.
    pub oid: u32,
    /// Size in bytes (largefile.total_size).
    pub size: u64,
    /// Hex sha256 of the content (largefile.sha256).
    pub sha256: String,
    /// MAAS file type (bootresourcefile.filetype).
    pub filetype: String,
    /// MAAS 3.5+: the file in the image storage holding all the bytes; None when
    /// they are read from the large object.
    pub stored: Option<Arc<Path>>,
}

/// What a node is.
#[derive(Debug, Clone)]
pub enum NodeKind {
    /// A directory and its entries by name.
    Dir(BTreeMap<String, Ino>),
    /// A regular file.
    File(FileInfo),
}

/// One entry of the tree.
#[derive(Debug, Clone)]
pub struct Node {
    /// This node's inode number.
    pub ino: Ino,
    /// The parent directory (the root is its own parent).
    pub parent: Ino,
    /// Full path from the root, starting with `/` (`/` for the root).
    pub path: String,
    /// Modification time, from the rows' `updated`.
    pub mtime: SystemTime,
    /// Directory or file.
    pub kind: NodeKind,
}

impl Node {
    /// The file's details, if this is a file.
    pub fn file(&self) -> Option<&FileInfo> {
        match &self.kind {
            NodeKind::File(f) => Some(f),
            NodeKind::Dir(_) => None,
        }
    }

    /// Size in bytes (0 for directories).
    pub fn size(&self) -> u64 {
        self.file().map_or(0, |f| f.size)
    }

    /// The last path component (empty for the root).
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or("")
    }
}

/// One complete set, as listed in a simplestreams product.
#[derive(Debug, Clone)]
pub struct SetInfo {
    /// os, arch, subarch, series, version.
    pub os: String,
    /// Architecture, e.g. `amd64`.
    pub arch: String,
    /// Sub-architecture, e.g. `generic` or `ga-20.04`.
    pub subarch: String,
    /// Release, e.g. `focal`, or the custom image's name.
    pub series: String,
    /// Version, e.g. `20240101`.
    pub version: String,
    /// The set's label (`stable`, `uploaded`, ...).
    pub label: String,
    /// Files of the set by name, as inode numbers.
    pub files: BTreeMap<String, Ino>,
    /// bootresourceset.id: the newest complete set of a resource gives its label.
    pub set_id: i64,
    /// The resource the set belongs to.
    pub resource: Arc<ResourceInfo>,
    /// Each file's `extra` by file name (kpackage, src_*, kparams).
    pub file_extra: BTreeMap<String, Map<String, Value>>,
}

/// What a simplestreams product carries from its bootresource row.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceInfo {
    /// bootresource.id.
    pub id: i64,
    /// bootresource.rtype.
    pub rtype: i32,
    /// bootresource.kflavor.
    pub kflavor: Option<String>,
    /// bootresource.bootloader_type.
    pub bootloader_type: Option<String>,
    /// bootresource.rolling.
    pub rolling: bool,
    /// bootresource.extra (subarches, title, platform...).
    pub extra: Map<String, Value>,
}

/// What a refresh changed, for caches outside the catalog (the kernel's).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Directories whose entries or attributes differ, or that are gone.
    pub dirs: Vec<Ino>,
    /// Files whose attributes differ (content never changes under an inode number).
    pub files: Vec<Ino>,
    /// Names, as (parent, name), that no longer lead to the same inode.
    pub names: Vec<(Ino, String)>,
}

impl Changes {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty() && self.files.is_empty() && self.names.is_empty()
    }
}

/// An immutable snapshot of the whole tree.
#[derive(Debug, Default)]
pub struct Tree {
    nodes: HashMap<Ino, Node>,
    sets: Vec<SetInfo>,
    by_sha256: HashMap<String, Ino>,
    /// MAAS 3.5+: files by their name in the image storage (`filename_on_disk`:
    /// a short sha256 prefix from migration 0330 on), as 3.5+ racks ask for them.
    by_disk_name: HashMap<String, Ino>,
    total_bytes: u64,
    file_count: u64,
}

impl Tree {
    /// What differs in this tree from `old`, as seen from `old`: new entries show
    /// as a change of their directory, and a name whose inode changed or vanished
    /// is listed so a cached lookup of it can be dropped.
    pub fn changes_since(&self, old: &Tree) -> Changes {
        let mut c = Changes::default();
        for (ino, was) in &old.nodes {
            let now = self.nodes.get(ino);
            match (&was.kind, now) {
                (
                    NodeKind::Dir(before),
                    Some(
                        n @ Node {
                            kind: NodeKind::Dir(after),
                            ..
                        },
                    ),
                ) => {
                    if before != after || was.mtime != n.mtime {
                        c.dirs.push(*ino);
                    }
                    for (name, child) in before {
                        if after.get(name) != Some(child) {
                            c.names.push((*ino, name.clone()));
                        }
                    }
                }
                (NodeKind::Dir(before), _) => {
                    c.dirs.push(*ino);
                    c.names
                        .extend(before.keys().map(|name| (*ino, name.clone())));
                }
                (NodeKind::File(_), Some(n)) if n.mtime != was.mtime => c.files.push(*ino),
                (NodeKind::File(_), _) => {}
            }
        }
        c.dirs.sort_unstable();
        c.files.sort_unstable();
        c.names.sort_unstable();
        c
    }

    /// Gives every directory whose entries differ from `old` an mtime later than
    /// before (`now`, or just past the old one), and keeps the later of the two
    /// for the others. A directory's mtime then changes whenever its listing does,
    /// as on a local filesystem: the kernel checks a cached listing against it.
    fn carry_dir_mtimes(&mut self, old: &Tree, now: SystemTime) {
        for (ino, node) in self.nodes.iter_mut() {
            let NodeKind::Dir(children) = &node.kind else {
                continue;
            };
            let Some(was) = old.nodes.get(ino) else {
                continue;
            };
            node.mtime = match &was.kind {
                NodeKind::Dir(before) if before == children => node.mtime.max(was.mtime),
                _ => node.mtime.max(now).max(was.mtime + Duration::from_nanos(1)),
            };
        }
    }

    /// The node with this inode number.
    pub fn get(&self, ino: Ino) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    /// The entry `name` of directory `parent`.
    pub fn lookup(&self, parent: Ino, name: &str) -> Option<&Node> {
        match &self.get(parent)?.kind {
            NodeKind::Dir(children) => children.get(name).and_then(|ino| self.get(*ino)),
            NodeKind::File(_) => None,
        }
    }

    /// Follows already-decoded path components from the root.
    pub fn resolve<'a>(&self, components: impl IntoIterator<Item = &'a str>) -> Option<&Node> {
        let mut node = self.get(ROOT)?;
        for c in components {
            node = self.lookup(node.ino, c)?;
        }
        Some(node)
    }

    /// A complete file with this content (the first by path), for fetching by hash.
    pub fn by_sha256(&self, sha256: &str) -> Option<&Node> {
        self.by_sha256.get(sha256).and_then(|ino| self.get(*ino))
    }

    /// A complete file by its name in MAAS 3.5+'s image storage
    /// (`boot-resources/<filename_on_disk>/`), or by its sha256.
    pub fn by_resource_name(&self, name: &str) -> Option<&Node> {
        self.by_sha256(name)
            .or_else(|| self.by_disk_name.get(name).and_then(|ino| self.get(*ino)))
    }

    /// Every complete set, sorted by path.
    pub fn sets(&self) -> &[SetInfo] {
        &self.sets
    }

    /// Number of inodes (directories and files).
    pub fn node_count(&self) -> u64 {
        self.nodes.len() as u64
    }

    /// Number of files.
    pub fn file_count(&self) -> u64 {
        self.file_count
    }

    /// Sum of file sizes.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }
}

/// Assigns inode numbers that stay the same across refreshes.
#[derive(Default)]
struct InodeTable {
    by_key: HashMap<String, Ino>,
    next: Ino,
}

impl InodeTable {
    fn ino(&mut self, key: &str) -> Ino {
        if let Some(ino) = self.by_key.get(key) {
            return *ino;
        }
        self.next = self.next.max(ROOT) + 1;
        self.by_key.insert(key.to_string(), self.next);
        self.next
    }
}

/// The live catalog: the current tree and the means to reload it.
pub struct Catalog {
    pool: Pool<crate::db::Manager>,
    schema: Schema,
    target: String,
    current: RwLock<Arc<Tree>>,
    inodes: Mutex<InodeTable>,
    warned: Mutex<HashSet<String>>,
    /// MAAS 3.5+: where the files are.
    storage: Option<ImageStorage>,
}

impl Catalog {
    /// Connects, checks that the MAAS tables exist, and loads the first snapshot.
    pub fn open(db: &DbConfig) -> Result<Catalog, CatalogError> {
        Catalog::open_with_storage(db, None)
    }

    /// [`Catalog::open`], with MAAS 3.5+'s image storage at `image_storage` (else
    /// at MAAS's own paths); ignored on a database that keeps its images.
    pub fn open_with_storage(
        db: &DbConfig,
        image_storage: Option<&Path>,
    ) -> Result<Catalog, CatalogError> {
        let pool = db.metadata_pool()?;
        let target = db.describe();
        let mut client = pool.get().map_err(|e| DbError::pool(target.clone(), &e))?;
        let schema = Schema::detect(&mut *client, &target)?;
        let storage = if schema.on_disk {
            let s = ImageStorage::locate(image_storage, &target).map_err(CatalogError::Storage)?;
            info!("image storage: {}", s.dir().display());
            Some(s)
        } else {
            if let Some(dir) = image_storage {
                warn!(
                    "--image-storage {} ignored: this database keeps its images in PostgreSQL",
                    dir.display()
                );
            }
            None
        };
        if !schema.largefile_size {
            info!(
                "maasserver_largefile has no size column (MAAS 1.7-1.9): all files count as complete"
            );
        }
        info!("image tables of {}", schema.era);
        drop(client);
        let catalog = Catalog {
            pool,
            schema,
            target,
            current: RwLock::new(Arc::new(Tree::default())),
            inodes: Mutex::new(InodeTable::default()),
            warned: Mutex::new(HashSet::new()),
            storage,
        };
        catalog.refresh()?;
        Ok(catalog)
    }

    /// MAAS 3.5+: the image storage the files are read from.
    pub fn image_storage(&self) -> Option<&ImageStorage> {
        self.storage.as_ref()
    }

    /// The current snapshot. Cheap: clones an `Arc`.
    pub fn snapshot(&self) -> Arc<Tree> {
        self.current.read().clone()
    }

    /// Reloads the tree from the database, swaps it in and says what changed.
    pub fn refresh(&self) -> Result<Changes, CatalogError> {
        let started = Instant::now();
        let res = self.reload();
        crate::metrics::catalog_refreshed(started.elapsed(), res.is_ok());
        res
    }

    fn reload(&self) -> Result<Changes, CatalogError> {
        let rows = self.load_rows()?;
        let mut tree = self.build(rows);
        // Only the refresher swaps trees, so the snapshot taken here is the one replaced.
        tree.carry_dir_mtimes(&self.snapshot(), SystemTime::now());
        let old = std::mem::replace(&mut *self.current.write(), Arc::new(tree));
        let new = self.snapshot();
        let changes = new.changes_since(&old);
        if old.file_count != new.file_count || old.total_bytes != new.total_bytes {
            info!(
                "catalog: {} files in {} sets, {} bytes",
                new.file_count,
                new.sets.len(),
                new.total_bytes
            );
        }
        Ok(changes)
    }

    /// Refreshes every `every` in a background thread while the catalog lives, and
    /// passes what changed to `on_change` (not called when nothing did).
    pub fn spawn_refresher(
        self: &Arc<Self>,
        every: Duration,
        on_change: impl Fn(&Changes) + Send + 'static,
    ) -> std::io::Result<JoinHandle<()>> {
        let weak: Weak<Catalog> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("catalog-refresh".into())
            .spawn(move || {
                // While refreshes fail (a database outage), one warning a minute.
                let mut failing: Option<(Instant, Instant)> = None;
                loop {
                    std::thread::sleep(every);
                    let Some(catalog) = weak.upgrade() else {
                        return;
                    };
                    match catalog.refresh() {
                        Ok(changes) => {
                            if let Some((since, _)) = failing.take() {
                                info!(
                                    "catalog refresh works again after {}s",
                                    since.elapsed().as_secs()
                                );
                            }
                            if !changes.is_empty() {
                                on_change(&changes);
                            }
                        }
                        Err(e) => {
                            let now = Instant::now();
                            match &mut failing {
                                Some((_, warned)) if warned.elapsed() < Duration::from_secs(60) => {
                                    debug!("catalog refresh failed again: {e}")
                                }
                                _ => {
                                    warn!("catalog refresh failed, keeping the previous tree: {e}");
                                    let since = failing.map_or(now, |(s, _)| s);
                                    failing = Some((since, now));
                                }
                            }
                        }
                    }
                }
            })
    }

    fn load_rows(&self) -> Result<Vec<FileRow>, CatalogError> {
        let mut client = self
            .pool
            .get()
            .map_err(|e| DbError::pool(self.target.clone(), &e))?;
        Ok(self.schema.load_files(&mut *client)?)
    }

    /// Where a row's bytes can be read from: Some(Some(file)) from the image
    /// storage, Some(None) from its large object, None from nowhere yet. A file
    /// complete in the storage is read there even while its large object remains.
    fn place(&self, r: &FileRow) -> Option<Option<Arc<Path>>> {
        match Place::of(r, self.storage.as_ref()) {
            Place::Disk(path) => Some(Some(path.into())),
            Place::Database => Some(None),
            Place::Missing(on_disk) => {
                if on_disk == Some(OnDisk::BadName) {
                    self.warn_once(
                        &format!("{} {} {} {}", r.name, r.architecture, r.version, r.filename),
                        "its filename_on_disk cannot be a file name; its set is hidden",
                    );
                }
                None
            }
        }
    }

    fn build(&self, rows: Vec<FileRow>) -> Tree {
        // A set is listed only when every one of its files can be read in full,
        // as MAAS lists only complete sets.
        let places: Vec<Option<Option<Arc<Path>>>> = rows.iter().map(|r| self.place(r)).collect();
        let mut incomplete: HashSet<i64> = HashSet::new();
        for (r, place) in rows.iter().zip(&places) {
            if place.is_none() {
                incomplete.insert(r.set_id);
            }
        }
        let mut inodes = self.inodes.lock();
        let mut tree = Tree::default();
        tree.nodes.insert(ROOT, dir_node(ROOT, ROOT, "/".into()));
        let mut sets: BTreeMap<String, SetInfo> = BTreeMap::new();
        let mut skipped_sets: HashSet<i64> = HashSet::new();
        let mut resources: HashMap<i64, Arc<ResourceInfo>> = HashMap::new();
        for (r, place) in rows.iter().zip(places) {
            if incomplete.contains(&r.set_id) || skipped_sets.contains(&r.set_id) {
                continue;
            }
            let Some(parts) = self.components(r) else {
                skipped_sets.insert(r.set_id);
                continue;
            };
            let mtime = UNIX_EPOCH + Duration::from_micros(r.updated_us.max(0) as u64);
            let mut parent = ROOT;
            let mut path = String::new();
            for dir in &parts[..5] {
                path.push('/');
                path.push_str(dir);
                parent = tree.ensure_dir(&mut inodes, parent, &path, dir, mtime);
            }
            let file_path = format!("{path}/{}", r.filename);
            let ino = inodes.ino(&format!("{file_path}\0{}", r.sha256));
            if !tree.add_child(parent, &r.filename, ino) {
                self.warn_once(&file_path, "two rows map to this path; keeping the first");
                continue;
            }
            let size = r.total_size.max(0) as u64;
            tree.by_sha256.entry(r.sha256.clone()).or_insert(ino);
            if let Some(name) = &r.disk_name {
                tree.by_disk_name.entry(name.clone()).or_insert(ino);
            }
            tree.file_count += 1;
            tree.total_bytes += size;
            tree.nodes.insert(
                ino,
                Node {
                    ino,
                    parent,
                    path: file_path,
                    mtime,
                    kind: NodeKind::File(FileInfo {
                        oid: r.oid,
                        size,
                        sha256: r.sha256.clone(),
                        filetype: r.filetype.clone(),
                        stored: place.flatten(),
                    }),
                },
            );
            let resource = resources
                .entry(r.resource_id)
                .or_insert_with(|| {
                    Arc::new(ResourceInfo {
                        id: r.resource_id,
                        rtype: r.rtype,
                        kflavor: r.kflavor.clone(),
                        bootloader_type: r.bootloader_type.clone(),
                        rolling: r.rolling,
                        extra: maas::parse_extra(&r.resource_extra),
                    })
                })
                .clone();
            let set = sets.entry(path).or_insert_with(|| SetInfo {
                os: parts[0].to_string(),
                arch: parts[1].to_string(),
                subarch: parts[2].to_string(),
                series: parts[3].to_string(),
                version: parts[4].to_string(),
                label: r.label.clone(),
                files: BTreeMap::new(),
                set_id: r.set_id,
                resource,
                file_extra: BTreeMap::new(),
            });
            set.files.insert(r.filename.clone(), ino);
            set.file_extra
                .insert(r.filename.clone(), maas::parse_extra(&r.file_extra));
        }
        tree.sets = sets.into_values().collect();
        debug!("catalog built: {} nodes", tree.nodes.len());
        tree
    }

    /// Splits a row into os, arch, subarch, series, version, filename, or warns.
    fn components<'a>(&self, r: &'a FileRow) -> Option<[&'a str; 6]> {
        let Some(parts) = r.parts() else {
            self.warn_once(
                &format!("{}:{}", r.name, r.architecture),
                "architecture is not arch/subarch; skipping its sets",
            );
            return None;
        };
        if let Some(bad) = parts.iter().find(|p| !valid_component(p)) {
            self.warn_once(
                &format!("{} {} {} {}", r.name, r.architecture, r.version, r.filename),
                &format!("{bad:?} cannot be a path component; skipping the set"),
            );
            return None;
        }
        Some(parts)
    }

    fn warn_once(&self, what: &str, why: &str) {
        if self.warned.lock().insert(format!("{what}\0{why}")) {
            warn!("catalog: {what}: {why}");
        }
    }
}

impl Tree {
    /// A tree of the given files (`/os/arch/.../name` paths), with no database: for
    /// tests and tools. Inode numbers follow the order of `files`.
    pub fn from_files(files: &[(&str, FileInfo)]) -> Tree {
        let mut inodes = InodeTable::default();
        let mut t = Tree::default();
        t.nodes.insert(ROOT, dir_node(ROOT, ROOT, "/".into()));
        for (path, info) in files {
            let Some((dirs, name)) = path.rsplit_once('/') else {
                continue;
            };
            let mut parent = ROOT;
            let mut at = String::new();
            for d in dirs.split('/').filter(|d| !d.is_empty()) {
                at = format!("{at}/{d}");
                parent = t.ensure_dir(&mut inodes, parent, &at, d, UNIX_EPOCH);
            }
            let ino = inodes.ino(&format!("{path}\0{}", info.sha256));
            if !t.add_child(parent, name, ino) {
                continue;
            }
            t.by_sha256.entry(info.sha256.clone()).or_insert(ino);
            t.file_count += 1;
            t.total_bytes += info.size;
            t.nodes.insert(
                ino,
                Node {
                    ino,
                    parent,
                    path: path.to_string(),
                    mtime: UNIX_EPOCH,
                    kind: NodeKind::File(info.clone()),
                },
            );
        }
        t
    }

    /// The sha256 of every file of this tree.
    pub fn sha256s(&self) -> std::collections::HashSet<&str> {
        self.nodes
            .values()
            .filter_map(|n| n.file().map(|f| f.sha256.as_str()))
            .collect()
    }

    /// A directory's entries in name order; None if `ino` is not a directory of
    /// this tree.
    pub fn children(&self, ino: Ino) -> Option<Vec<(&str, &Node)>> {
        let NodeKind::Dir(entries) = &self.get(ino)?.kind else {
            return None;
        };
        Some(
            entries
                .iter()
                .filter_map(|(name, ino)| Some((name.as_str(), self.get(*ino)?)))
                .collect(),
        )
    }

    fn ensure_dir(
        &mut self,
        inodes: &mut InodeTable,
        parent: Ino,
        path: &str,
        name: &str,
        mtime: SystemTime,
    ) -> Ino {
        let ino = inodes.ino(path);
        let node = self
            .nodes
            .entry(ino)
            .or_insert_with(|| dir_node(ino, parent, path.to_string()));
        node.mtime = node.mtime.max(mtime);
        self.add_child(parent, name, ino);
        if let Some(root) = self.nodes.get_mut(&ROOT) {
            root.mtime = root.mtime.max(mtime);
        }
        ino
    }

    /// Adds `name -> ino` to `parent`; false if the name was taken by another inode.
    fn add_child(&mut self, parent: Ino, name: &str, ino: Ino) -> bool {
        match self.nodes.get_mut(&parent).map(|n| &mut n.kind) {
            Some(NodeKind::Dir(children)) => {
                *children.entry(name.to_string()).or_insert(ino) == ino
            }
            _ => false,
        }
    }
}

fn dir_node(ino: Ino, parent: Ino, path: String) -> Node {
    Node {
        ino,
        parent,
        path,
        mtime: UNIX_EPOCH,
        kind: NodeKind::Dir(BTreeMap::new()),
    }
}

pub use crate::digest::{hex, valid_sha256};

pub use crate::maas::valid_component;

#[cfg(test)]
mod tests;
