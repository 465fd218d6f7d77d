//! `pgbootfs mount`: wiring and lifecycle. Mounts, waits for SIGINT/SIGTERM/SIGHUP or
//! an external unmount, then unmounts (lazily if busy), ends every handle's
//! transaction and returns.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use log::{debug, info, warn};

use crate::daemon::{CacheDir, Services, StartError, StopSignals};
use crate::db::DbConfig;
use crate::fs::{BootFs, FsCore, OpenTable};
use crate::handle::PoolOptions;
use crate::http::HttpOptions;

/// Options of `pgbootfs mount`.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// How often the catalog is reloaded.
    pub refresh: Duration,
    /// Handle connections and the memory cache.
    pub pool: PoolOptions,
    /// The disk cache, if any.
    pub cache_dir: Option<CacheDir>,
    /// MAAS 3.5+: the image storage directory (`--image-storage`; else MAAS's own).
    pub image_storage: Option<PathBuf>,
    /// FUSE worker threads (metadata and reads from memory).
    pub threads: usize,
    /// Threads for reads that wait on the database.
    pub read_threads: usize,
    /// Let other users read the mount (needs `user_allow_other` for non-root).
    pub allow_other: bool,
    /// Kernel read-ahead for the mount, in KiB (settable as root only).
    pub read_ahead_kb: u32,
    /// Also serve the tree over HTTP, sharing the catalog and the handle pool.
    pub http: Option<HttpOptions>,
    /// Serve only `/metrics` on a listener of its own.
    pub metrics: Option<HttpOptions>,
    /// Show each browsable image's contents under `/.inside` (`--inside`).
    pub inside: bool,
}

/// Why a mount could not start.
#[derive(Debug)]
pub enum MountError {
    /// The catalog or the disk cache could not be set up.
    Start(StartError),
    /// The mountpoint is unusable; the message says how to fix it.
    Mountpoint(String),
    /// The kernel refused the mount.
    Mount {
        /// Where we tried.
        path: PathBuf,
        /// The system's complaint.
        err: io::Error,
    },
    /// A thread or the signal handler could not be set up.
    Spawn(&'static str, io::Error),
    /// The HTTP server could not start (`--http`).
    Http(io::Error),
    /// The metrics listener could not start (`--metrics`).
    Metrics(io::Error),
}

impl fmt::Display for MountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MountError::Start(e) => e.fmt(f),
            MountError::Mountpoint(m) => f.write_str(m),
            MountError::Mount { path, err } => write!(
                f,
                "cannot mount at {}: {err} (is /dev/fuse present and usable, and fuse3 installed?)",
                path.display()
            ),
            MountError::Spawn(what, e) => write!(f, "cannot start {what}: {e}"),
            MountError::Http(e) => write!(f, "--http: {e}"),
            MountError::Metrics(e) => write!(f, "--metrics: {e}"),
        }
    }
}

impl std::error::Error for MountError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MountError::Start(e) => Some(e),
            MountError::Mount { err, .. }
            | MountError::Spawn(_, err)
            | MountError::Http(err)
            | MountError::Metrics(err) => Some(err),
            MountError::Mountpoint(_) => None,
        }
    }
}

impl From<StartError> for MountError {
    fn from(e: StartError) -> Self {
        MountError::Start(e)
    }
}

enum Event {
    Signal,
    SessionEnded(io::Result<()>),
}

/// Mounts and serves until a signal or an external unmount.
pub fn run(db: &DbConfig, opts: &MountOptions) -> Result<(), MountError> {
    let mut signals = StopSignals::catch().map_err(|e| MountError::Spawn("signals", e))?;
    prepare_mountpoint(&opts.mountpoint)?;
    // Resolved now: once mounted, a stat of the mountpoint waits for our own session.
    let canonical = std::fs::canonicalize(&opts.mountpoint).unwrap_or(opts.mountpoint.clone());
    let services = Services::start(
        db,
        &opts.pool,
        opts.cache_dir.as_ref(),
        opts.image_storage.as_deref(),
    )?;
    let mut serving = format!("mounted at {}", canonical.display());
    if let Some(http_opts) = &opts.http {
        let server = crate::http::start(services.catalog.clone(), &services.pool, http_opts)
            .map_err(MountError::Http)?;
        serving.push_str(&format!(", http://{}", server.addr()));
    }
    if let Some(metrics_opts) = &opts.metrics {
        crate::http::start(services.catalog.clone(), &services.pool, metrics_opts)
            .map_err(MountError::Metrics)?;
    }
    let open = Arc::new(OpenTable::default());
    let mut core = FsCore::new(
        services.catalog.clone(),
        services.pool.clone(),
        open.clone(),
    );
    if opts.inside {
        core = core.with_inside();
    }
    // Files of the disk cache and of MAAS 3.5+'s image storage are read by the kernel.
    let passthrough = services.pool.disk().is_some() || services.catalog.image_storage().is_some();
    let fs = BootFs::new(Arc::new(core), opts.read_threads, passthrough)
        .map_err(|e| MountError::Spawn("the read threads", e))?;

    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName(FSNAME.into()),
        fuser::MountOption::Subtype("pgbootfs".into()),
        fuser::MountOption::NoAtime,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        fuser::MountOption::DefaultPermissions,
    ];
    if opts.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    let mut session =
        fuser::Session::new(fs, &opts.mountpoint, &config).map_err(|err| MountError::Mount {
            path: opts.mountpoint.clone(),
            err,
        })?;
    let mut unmounter = session.unmount_callable();
    let notifier = session.notifier();
    services
        .refresh_every(opts.refresh, move |changes| {
            crate::fs::forget(&notifier, changes)
        })
        .map_err(|e| MountError::Spawn("the refresh thread", e))?;
    raise_read_ahead(&canonical, opts.read_ahead_kb);
    info!(
        "serving {} at {} (refresh every {}s)",
        db.describe(),
        opts.mountpoint.display(),
        opts.refresh.as_secs()
    );

    let (tx, rx) = mpsc::channel();
    let tx_session = tx.clone();
    std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let _ = tx_session.send(Event::SessionEnded(session.run()));
        })
        .map_err(|e| MountError::Spawn("the FUSE session", e))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while signals.wait().is_some() {
                if tx.send(Event::Signal).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| MountError::Spawn("the signal thread", e))?;

    // Ready means usable: the kernel's INIT has been answered once a stat of the
    // mount root returns (it waits for the session thread started above).
    match std::fs::metadata(&canonical) {
        Ok(_) => crate::daemon::notify_ready(&serving, &services.catalog),
        Err(e) => warn!("{} does not answer: {e}", canonical.display()),
    }

    match rx.recv() {
        Ok(Event::Signal) => {
            crate::daemon::notify_stopping("signal");
            info!("unmounting {}", opts.mountpoint.display());
            if let Err(e) = unmounter.unmount() {
                info!("plain unmount failed ({e}): detaching lazily");
                detach(&opts.mountpoint);
            }
            let closed = open.close_all();
            info!("ended {closed} open handle(s)");
            // A clean unmount ends the session at once; a lazy one when readers
            // close. Give it a moment, then exit anyway: the kernel aborts the rest.
            if let Ok(Event::SessionEnded(Err(e))) = rx.recv_timeout(Duration::from_secs(2)) {
                warn!("FUSE session ended with an error: {e}");
            }
        }
        Ok(Event::SessionEnded(res)) => {
            crate::daemon::notify_stopping("unmounted");
            if let Err(e) = res {
                warn!("FUSE session ended with an error: {e}");
            }
            info!("{} was unmounted", opts.mountpoint.display());
            open.close_all();
        }
        Err(_) => {}
    }
    Ok(())
}

/// The file system type of our mounts in the mount table (`fuse.` and the subtype).
const FSTYPE: &str = "fuse.pgbootfs";

/// The mount source of our mounts (fuser's fsname).
const FSNAME: &str = "pgbootfs";

/// How long a pgbootfs already mounted at the mountpoint has to answer a statfs
/// before it is taken as hung (a stopped process, say) and the mount refused.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks the mountpoint, cleaning up a stale mount left by a killed earlier run.
fn prepare_mountpoint(path: &Path) -> Result<(), MountError> {
    detach_stale_pgbootfs(path)?;
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(MountError::Mountpoint(format!(
            "mountpoint {} is not a directory",
            path.display()
        ))),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            warn!(
                "{} is a stale FUSE mount left by an earlier run; detaching it",
                path.display()
            );
            detach(path);
            match std::fs::metadata(path) {
                Ok(m) if m.is_dir() => Ok(()),
                _ => Err(MountError::Mountpoint(format!(
                    "{0} is a stale FUSE mount (\"Transport endpoint is not connected\") \
                     that could not be removed; run `fusermount3 -u -z {0}` \
                     (or `umount -l {0}` as root) and try again",
                    path.display()
                ))),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(MountError::Mountpoint(format!(
            "mountpoint {} does not exist (create it with mkdir)",
            path.display()
        ))),
        Err(e) => Err(MountError::Mountpoint(format!(
            "cannot use mountpoint {}: {e}",
            path.display()
        ))),
    }
}

/// The absolute path of `path` as the mount table names it: its parent resolved,
/// its last component not followed, since a stale mount there fails every look-up.
fn mount_table_path(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .map(|p| p.join(name))
            .unwrap_or(abs),
        _ => abs,
    }
}

/// What a statfs of an existing pgbootfs mount came to.
enum Probe {
    /// The daemon answered: the mount is in use.
    Live,
    /// The daemon is gone (ENOTCONN, or ECONNABORTED for a request that was
    /// queued when it died).
    Dead,
    /// No answer within [`PROBE_TIMEOUT`].
    Hung,
}

/// Asks the file system at `path` for its statfs, which FUSE never answers from a
/// cache (a stat may be answered from the kernel's attribute cache for a second
/// after the daemon died, which is how a restart at once used to fail).
fn probe(path: &Path) -> Probe {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return Probe::Dead;
    };
    let (tx, rx) = mpsc::channel();
    // A thread of its own: a stopped daemon would hold the call forever, and then
    // the thread is left behind as this process exits with an error.
    let spawned = std::thread::Builder::new()
        .name("mount-probe".into())
        .spawn(move || {
            // SAFETY: statfs is plain data, for which all zeroes is a valid value.
            let mut st: libc::statfs = unsafe { std::mem::zeroed() };
            // SAFETY: statfs writes only into the struct passed; the path is a
            // valid NUL-terminated string.
            let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut st) };
            let _ = tx.send(if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            });
        });
    if spawned.is_err() {
        return Probe::Hung;
    }
    match rx.recv_timeout(PROBE_TIMEOUT) {
        Ok(Ok(())) => Probe::Live,
        Ok(Err(e)) if matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED)) => {
            Probe::Dead
        }
        Ok(Err(e)) => {
            debug!("statfs of {}: {e}", path.display());
            Probe::Dead
        }
        Err(_) => Probe::Hung,
    }
}

/// Finds pgbootfs mounts at `path` in the mount table: a dead one (its daemon
/// killed) is detached, a live one refuses the mount. Stacked dead mounts (several
/// crashes in a row) are detached one by one.
fn detach_stale_pgbootfs(path: &Path) -> Result<(), MountError> {
    let point = mount_table_path(path);
    for _ in 0..16 {
        let Some(entry) = crate::mountinfo::find(&point) else {
            return Ok(());
        };
        // Ours: `fuse.pgbootfs`, or `fuse` from source `pgbootfs` (fuser's mount(2)
        // as root records no subtype).
        let ours = entry.fstype == FSTYPE || (entry.fstype == "fuse" && entry.source == FSNAME);
        if !ours {
            // Someone else's mount: mounting over it is the caller's choice.
            return Ok(());
        }
        match probe(&point) {
            Probe::Live => {
                return Err(MountError::Mountpoint(format!(
                    "{} is already mounted by a running pgbootfs; stop it first                      (or unmount: umount {0})",
                    point.display()
                )));
            }
            Probe::Hung => {
                return Err(MountError::Mountpoint(format!(
                    "{0} is mounted by a pgbootfs that does not answer within {1}s;                      stop that process, or detach it with `umount -l {0}`                      (`fusermount3 -u -z {0}` as a user), and try again",
                    point.display(),
                    PROBE_TIMEOUT.as_secs()
                )));
            }
            Probe::Dead => {
                warn!(
                    "{} is a stale pgbootfs mount left by an earlier run; detaching it",
                    point.display()
                );
                detach(&point);
                if crate::mountinfo::find(&point).as_ref() == Some(&entry) {
                    return Err(MountError::Mountpoint(format!(
                        "{0} is a stale pgbootfs mount that could not be detached;                          run `umount -l {0}` (`fusermount3 -u -z {0}` as a user) and                          try again",
                        point.display()
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Detaches the mount at `path` lazily: umount2(MNT_DETACH) as root, else through
/// the setuid fusermount helper.
fn detach(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: c_path is a valid NUL-terminated string for the duration of the call.
    if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } == 0 {
        return;
    }
    let err = io::Error::last_os_error();
    let helped = err.raw_os_error() == Some(libc::EPERM)
        && ["fusermount3", "fusermount"].iter().any(|bin| {
            std::process::Command::new(bin)
                .args(["-u", "-z"])
                .arg(path)
                .status()
                .is_ok_and(|s| s.success())
        });
    if !helped {
        warn!(
            "could not detach {0}: {err}; run `fusermount3 -u -z {0}`",
            path.display()
        );
    }
}

/// Sets the mount's kernel read-ahead. FUSE starts it at 128 KiB, which also caps
/// each read request at 128 KiB; a larger window lets the kernel send 1 MiB requests.
fn raise_read_ahead(mountpoint: &Path, kb: u32) {
    let Some(m) = crate::mountinfo::find(mountpoint) else {
        debug!("no mountinfo entry for {}", mountpoint.display());
        return;
    };
    let knob = format!("/sys/class/bdi/{}/read_ahead_kb", m.device);
    match std::fs::write(&knob, kb.to_string()) {
        Ok(()) => debug!("{knob} = {kb}"),
        Err(e) => info!("cannot set {knob} ({e}): kernel read-ahead stays at its default"),
    }
}
