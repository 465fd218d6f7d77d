//! Process start-up and shutdown shared by `pgbootfs mount` and `pgbootfs serve`:
//! the catalog, its refresher, the handle pool, and the stop signals. Front ends
//! (the FUSE adapter, the HTTP server) build on what [`Services::start`] returns and
//! never on each other.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use log::info;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::catalog::{Catalog, CatalogError, Changes};
use crate::db::DbConfig;
use crate::handle::disk::DiskCache;
use crate::handle::{HandlePool, PoolOptions};

/// Where the disk cache lives and how large it may grow (`--cache-dir`, `--cache-size`).
#[derive(Debug, Clone)]
pub struct CacheDir {
    /// The directory.
    pub dir: PathBuf,
    /// Most bytes of cached files.
    pub max_bytes: u64,
}

/// Why start-up failed.
#[derive(Debug)]
pub enum StartError {
    /// The catalog could not be loaded.
    Catalog(CatalogError),
    /// The disk cache directory cannot be used.
    CacheDir(io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Catalog(e) => e.fmt(f),
            StartError::CacheDir(e) => write!(f, "--cache-dir: {e}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Catalog(e) => Some(e),
            StartError::CacheDir(e) => Some(e),
        }
    }
}

/// What every long-running command shares: the metadata snapshot and the pool
/// that image reads draw their connections from.
pub struct Services {
    /// The tree, reloaded by the refresher.
    pub catalog: Arc<Catalog>,
    /// Handle connections, separate from the catalog's.
    pub pool: HandlePool,
}

impl Services {
    /// Loads the catalog (failing with a clear line when the database or its
    /// tables are missing) and sets up the handle pool, which connects lazily,
    /// and the disk cache if asked for (failing if its directory is unusable: an
    /// operator who asked for one should not silently run without).
    pub fn start(
        db: &DbConfig,
        pool: &PoolOptions,
        cache_dir: Option<&CacheDir>,
    ) -> Result<Services, StartError> {
        // What each host is (primary, standby, unreachable), in the log at start.
        db.survey();
        let handle_db = db.for_handles();
        if handle_db.describe() != db.describe() {
            handle_db.survey();
        }
        let catalog = Arc::new(Catalog::open(db).map_err(StartError::Catalog)?);
        let mut pool = HandlePool::new(handle_db, pool);
        if let Some(c) = cache_dir {
            let disk = DiskCache::open(&c.dir, c.max_bytes).map_err(StartError::CacheDir)?;
            drop_uncatalogued(&disk, &catalog);
            pool = pool.with_disk(disk);
        }
        Ok(Services { catalog, pool })
    }

    /// Reloads the catalog every `every`, passing each change set to `on_change`;
    /// the disk cache then drops what the catalog no longer names.
    pub fn refresh_every(
        &self,
        every: Duration,
        on_change: impl Fn(&Changes) + Send + 'static,
    ) -> io::Result<()> {
        let disk = self.pool.disk().cloned();
        let catalog: Weak<Catalog> = Arc::downgrade(&self.catalog);
        self.catalog
            .spawn_refresher(every, move |changes| {
                on_change(changes);
                if let (Some(disk), Some(catalog)) = (&disk, catalog.upgrade()) {
                    drop_uncatalogued(disk, &catalog);
                }
            })
            .map(|_| ())
    }
}

/// Deletes the cached images whose sha256 the catalog no longer names.
fn drop_uncatalogued(disk: &DiskCache, catalog: &Catalog) {
    let tree = catalog.snapshot();
    let shas = tree.sha256s();
    disk.retain(|sha| shas.contains(sha));
}

/// SIGINT, SIGTERM and SIGHUP, caught from the moment this is made: until then
/// they keep their default action (the process ends, having set up nothing).
pub struct StopSignals(Signals);

impl StopSignals {
    /// Catches the stop signals from now on.
    pub fn catch() -> io::Result<StopSignals> {
        Signals::new([SIGINT, SIGTERM, SIGHUP]).map(StopSignals)
    }

    /// Waits for the next stop signal and returns its number.
    pub fn wait(&mut self) -> Option<i32> {
        let sig = self.0.forever().next();
        if let Some(s) = sig {
            info!("signal {s}: stopping");
        }
        sig
    }
}
