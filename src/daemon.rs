//! Process start-up and shutdown shared by `pgbootfs mount` and `pgbootfs serve`:
//! the catalog, its refresher, the handle pool, and the stop signals. Front ends
//! (the FUSE adapter, the HTTP server) build on what [`Services::start`] returns and
//! never on each other.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use log::info;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::catalog::{Catalog, CatalogError, Changes};
use crate::db::DbConfig;
use crate::handle::{HandlePool, PoolOptions};

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
    /// tables are missing) and sets up the handle pool, which connects lazily.
    pub fn start(db: &DbConfig, pool: &PoolOptions) -> Result<Services, CatalogError> {
        let catalog = Arc::new(Catalog::open(db)?);
        let pool = HandlePool::new(db, pool);
        Ok(Services { catalog, pool })
    }

    /// Reloads the catalog every `every`, passing each change set to `on_change`.
    pub fn refresh_every(
        &self,
        every: Duration,
        on_change: impl Fn(&Changes) + Send + 'static,
    ) -> io::Result<()> {
        self.catalog.spawn_refresher(every, on_change).map(|_| ())
    }
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
