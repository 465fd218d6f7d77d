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

use crate::catalog::{Catalog, CatalogError};
use crate::db::DbConfig;
use crate::fs::{BootFs, OpenTable};
use crate::handle::HandlePool;
use crate::http::HttpOptions;

/// Options of `pgbootfs mount`.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// How often the catalog is reloaded.
    pub refresh: Duration,
    /// How long an open waits for a free handle connection.
    pub pool_timeout: Duration,
    /// Most handle connections open at once.
    pub max_handles: u32,
    /// FUSE worker threads.
    pub threads: usize,
    /// Let other users read the mount (needs `user_allow_other` for non-root).
    pub allow_other: bool,
    /// Kernel read-ahead for the mount, in KiB (settable as root only).
    pub read_ahead_kb: u32,
    /// Also serve the tree over HTTP, sharing the catalog and the handle pool.
    pub http: Option<HttpOptions>,
}

/// Why a mount could not start.
#[derive(Debug)]
pub enum MountError {
    /// The catalog could not be loaded.
    Catalog(CatalogError),
    /// The mountpoint is unusable; the message says how to fix it.
    Mountpoint(String),
    /// The kernel refused the mount.
    Mount {
        /// Where we tried.
        path: PathBuf,
        /// The system's complaint.
        err: io::Error,
    },
    /// The HTTP server could not start (`--http`).
    Http(io::Error),
}

impl fmt::Display for MountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MountError::Catalog(e) => e.fmt(f),
            MountError::Mountpoint(m) => f.write_str(m),
            MountError::Mount { path, err } => write!(
                f,
                "cannot mount at {}: {err} (is /dev/fuse present and usable, and fuse3 installed?)",
                path.display()
            ),
            MountError::Http(e) => write!(f, "--http: {e}"),
        }
    }
}

impl std::error::Error for MountError {}

impl From<CatalogError> for MountError {
    fn from(e: CatalogError) -> Self {
        MountError::Catalog(e)
    }
}

enum Event {
    Signal(i32),
    SessionEnded(io::Result<()>),
}

/// Mounts and serves until a signal or an external unmount.
pub fn run(db: &DbConfig, opts: &MountOptions) -> Result<(), MountError> {
    // Block the stop signals before any thread starts, so only sigwait sees them.
    let signals = block_stop_signals();
    prepare_mountpoint(&opts.mountpoint)?;
    // Resolved now: once mounted, a stat of the mountpoint waits for our own session.
    let canonical = std::fs::canonicalize(&opts.mountpoint).unwrap_or(opts.mountpoint.clone());
    let catalog = Arc::new(Catalog::open(db)?);
    let pool = HandlePool::new(db, opts.max_handles, opts.pool_timeout);
    if let Some(http_opts) = &opts.http {
        crate::http::start(catalog.clone(), &pool, http_opts).map_err(MountError::Http)?;
    }
    let open = Arc::new(OpenTable::default());
    let fs = BootFs::new(catalog.clone(), pool, open.clone());

    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName("pgbootfs".into()),
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
    catalog
        .spawn_refresher(opts.refresh, move |changes| {
            crate::fs::forget(&notifier, changes)
        })
        .map_err(|e| MountError::Mountpoint(format!("cannot start the refresh thread: {e}")))?;
    raise_read_ahead(&canonical, opts.read_ahead_kb);
    info!(
        "serving {} at {} (refresh every {}s)",
        db.describe(),
        opts.mountpoint.display(),
        opts.refresh.as_secs()
    );

    let (tx, rx) = mpsc::channel();
    let tx_session = tx.clone();
    let spawned = std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let _ = tx_session.send(Event::SessionEnded(session.run()));
        });
    if let Err(e) = spawned {
        return Err(MountError::Mountpoint(format!(
            "cannot start the FUSE session: {e}"
        )));
    }
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while let Some(sig) = wait_signal(&signals) {
                if tx.send(Event::Signal(sig)).is_err() {
                    return;
                }
            }
        });

    match rx.recv() {
        Ok(Event::Signal(sig)) => {
            info!("signal {sig}: unmounting {}", opts.mountpoint.display());
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

/// Checks the mountpoint, cleaning up a stale mount left by a killed earlier run.
fn prepare_mountpoint(path: &Path) -> Result<(), MountError> {
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
    let Some(dev) = mount_device(mountpoint) else {
        debug!("no mountinfo entry for {}", mountpoint.display());
        return;
    };
    let knob = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    match std::fs::write(&knob, kb.to_string()) {
        Ok(()) => debug!("{knob} = {kb}"),
        Err(e) => info!("cannot set {knob} ({e}): kernel read-ahead stays at its default"),
    }
}

/// The `major:minor` of the mount at canonical `path`, from /proc/self/mountinfo.
fn mount_device(want: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // Fields: id parent major:minor root mountpoint ...; the last match is the top mount.
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let point = f.get(4)?.replace("\\040", " ");
        (Path::new(&point) == want).then(|| f[2].to_string())
    })
}

pub(crate) fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-set manipulation on a zeroed local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

pub(crate) fn wait_signal(set: &libc::sigset_t) -> Option<i32> {
    let mut sig: libc::c_int = 0;
    // SAFETY: set is a valid signal set; sig is a valid out pointer.
    let rc = unsafe { libc::sigwait(set, &mut sig) };
    (rc == 0).then_some(sig)
}
