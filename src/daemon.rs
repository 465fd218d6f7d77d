//! Process start-up and shutdown shared by `pgbootfs mount` and `pgbootfs serve`:
//! the catalog, its refresher, the handle pool, and the stop signals. Front ends
//! (the FUSE adapter, the HTTP server) build on what [`Services::start`] returns and
//! never on each other.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use log::{info, warn};
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
        image_storage: Option<&std::path::Path>,
    ) -> Result<Services, StartError> {
        // What each host is (primary, standby, unreachable), in the log at start.
        db.survey();
        let handle_db = db.for_handles();
        if handle_db.describe() != db.describe() {
            handle_db.survey();
        }
        let catalog =
            Arc::new(Catalog::open_with_storage(db, image_storage).map_err(StartError::Catalog)?);
        let mut pool = HandlePool::new(handle_db, pool);
        if let Some(c) = cache_dir {
            match DiskCache::open(&c.dir, c.max_bytes) {
                Ok(disk) => {
                    drop_uncatalogued(&disk, &catalog);
                    pool = pool.with_disk(disk);
                }
                // A cache that cannot be written (a read-only file system, a
                // directory we may not write) costs only speed: every image is in
                // the database. Anything else (not a directory, say) is a wrong
                // flag, and stops the start.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
                    ) =>
                {
                    warn!("{e}; running without the disk cache, reads go to the database");
                }
                Err(e) => return Err(StartError::CacheDir(e)),
            }
        }
        sample_metrics(&catalog, &pool);
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
                let Some(catalog) = catalog.upgrade() else {
                    return;
                };
                if let Some(disk) = &disk {
                    drop_uncatalogued(disk, &catalog);
                }
                notify_status(&catalog);
            })
            .map(|_| ())
    }
}

/// Has each scrape read the pool's and the catalog's state as it is then.
fn sample_metrics(catalog: &Arc<Catalog>, pool: &HandlePool) {
    let catalog: Weak<Catalog> = Arc::downgrade(catalog);
    let pool = pool.clone();
    crate::metrics::set_sampler(move || {
        let p = pool.stats();
        let tree = catalog.upgrade().map(|c| c.snapshot());
        crate::metrics::Sample {
            handles_open: p.handles_open as u64,
            handles_connected: p.handles_connected as u64,
            pool_in_use: p.in_use.into(),
            pool_idle: p.idle.into(),
            pool_max: p.max.into(),
            catalog_files: tree.as_ref().map_or(0, |t| t.file_count()),
            catalog_bytes: tree.as_ref().map_or(0, |t| t.total_bytes()),
        }
    });
}

/// Deletes the cached images whose sha256 the catalog no longer names.
fn drop_uncatalogued(disk: &DiskCache, catalog: &Catalog) {
    let tree = catalog.snapshot();
    let shas = tree.sha256s();
    disk.retain(|sha| shas.contains(sha));
}

/// What the service is, for systemd's STATUS= line ("mounted at /srv/images").
static SERVING: parking_lot::Mutex<String> = parking_lot::Mutex::new(String::new());

/// Environment variable naming the descriptor a daemonized mount moves its
/// standard error to once ready: until then the mount helper reads it for the
/// error line of a failed start (see `mount_helper`).
pub const LOG_FD_ENV: &str = "PGBOOTFS_LOG_FD";

/// Moves standard error to the descriptor in [`LOG_FD_ENV`], once, if set.
fn move_stderr_to_log() {
    static MOVED: std::sync::Once = std::sync::Once::new();
    MOVED.call_once(|| {
        let Some(fd) = std::env::var(LOG_FD_ENV)
            .ok()
            .and_then(|v| v.parse::<i32>().ok())
            .filter(|fd| *fd > 2)
        else {
            return;
        };
        // SAFETY: dup2 and close on the descriptor the helper passed for this
        // purpose; nothing else in the process uses it.
        unsafe {
            if libc::dup2(fd, 2) < 0 {
                warn!(
                    "cannot move the log to descriptor {fd}: {}",
                    io::Error::last_os_error()
                );
            }
            libc::close(fd);
        }
    });
}

/// Tells systemd (`Type=notify`) that the service is ready, with a one-line
/// summary: `serving` (what and where) and the catalog's size. Nothing happens
/// without `NOTIFY_SOCKET`.
pub fn notify_ready(serving: &str, catalog: &Catalog) {
    move_stderr_to_log();
    *SERVING.lock() = serving.to_string();
    let status = status_line(catalog);
    notify(&["READY=1", &format!("STATUS={status}")]);
    info!("ready: {status}");
}

/// Updates systemd's STATUS= line after a catalog change.
pub fn notify_status(catalog: &Catalog) {
    notify(&[&format!("STATUS={}", status_line(catalog))]);
}

/// Tells systemd that the service is stopping (SIGTERM or an external unmount).
pub fn notify_stopping(why: &str) {
    notify(&["STOPPING=1", &format!("STATUS=stopping: {why}")]);
}

fn status_line(catalog: &Catalog) -> String {
    let tree = catalog.snapshot();
    format!(
        "{}; {} files, {} bytes",
        SERVING.lock(),
        tree.file_count(),
        tree.total_bytes()
    )
}

/// Sends `lines` (`KEY=value`) to the service manager in one datagram, as
/// sd_notify(3) does: to the socket in NOTIFY_SOCKET, a path or, starting with
/// `@`, an abstract name (which systemd may hand out, and the mount helper uses).
/// A manager that is not listening is not worth failing over: the log says so.
fn notify(lines: &[&str]) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    // One line per field: a newline inside a value would start a field of its own.
    let msg: String = lines
        .iter()
        .map(|l| format!("{}\n", l.replace(['\n', '\r'], " ")))
        .collect();
    let sent = UnixDatagram::unbound().and_then(|sock| {
        let addr = match target.as_bytes().strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(&target)?,
        };
        sock.send_to_addr(msg.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        warn!(
            "cannot notify the service manager at NOTIFY_SOCKET={}: {e}",
            target.to_string_lossy()
        );
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
