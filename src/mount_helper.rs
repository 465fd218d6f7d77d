//! The mount(8) helper: `mount -t fuse.pgbootfs SOURCE DIR -o OPTIONS`, an
//! `/etc/fstab` line or a systemd `.mount` unit. mount(8) runs
//! `/sbin/mount.fuse.pgbootfs SOURCE DIR [-sfnv] [-o OPTIONS]` (a symlink to
//! pgbootfs), or, without that symlink, fuse3's `mount.fuse3`, which runs
//! `pgbootfs SOURCE DIR -o OPTIONS`. Both land here.
//!
//! SOURCE names the database: a bare word is a libpq service name
//! (`service=SOURCE`), anything with `=` or a `postgres://` URL is a conninfo as
//! `--db` takes it. Options map to `pgbootfs mount` flags (`refresh=10` is
//! `--refresh 10`); what belongs to mount(8), systemd or the kernel (`_netdev`,
//! `x-systemd.*`, `nofail`, `noatime`, ...) is ignored. Unless `-o foreground`, the
//! helper starts the mount as a daemon of its own session and returns once it is
//! mounted and answering (readiness comes over the same protocol systemd uses), or
//! fails with the daemon's one-line error and no mount left behind.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::daemon::LOG_FD_ENV;

/// Environment variable carrying the conninfo from the helper to its daemon, which
/// takes it as `--db` (a command line would show it to every user through ps).
pub const SOURCE_ENV: &str = "PGBOOTFS_MOUNT_SOURCE";

/// How long the helper waits for the daemon to be ready: loading the catalog of a
/// large store over a slow link takes a while, but mount(8) must not hang forever.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Options with a value, as `pgbootfs mount` flags (`max_handles` is `--max-handles`).
const VALUE_OPTIONS: &[&str] = &[
    "refresh",
    "pool_timeout",
    "max_handles",
    "handle_idle",
    "cache_memory",
    "cache_dir",
    "cache_size",
    "image_storage",
    "threads",
    "read_threads",
    "read_ahead_kb",
    "http",
    "metrics",
    "http_workers",
    "http_send_timeout",
    "http_pool_wait",
    "http_header_timeout",
];

/// Options without a value that are flags.
const FLAG_OPTIONS: &[&str] = &["allow_other", "inside", "inside_private"];

/// Options for mount(8), systemd or the kernel that pgbootfs has nothing to do
/// with, or that it always applies (it is always read-only, nodev, nosuid,
/// noatime and checks permissions in the kernel).
const IGNORED: &[&str] = &[
    "ro",
    "rw",
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "nofail",
    "_netdev",
    "noatime",
    "atime",
    "relatime",
    "norelatime",
    "strictatime",
    "nodiratime",
    "diratime",
    "lazytime",
    "nodev",
    "dev",
    "nosuid",
    "suid",
    "noexec",
    "exec",
    "sync",
    "async",
    "default_permissions",
    "silent",
    "loud",
];

/// The helper failed; the message is the whole story, for one line.
#[derive(Debug)]
pub enum HelperError {
    /// The command line or an option is wrong.
    Usage(String),
    /// The daemon could not be started or waited for.
    Io(&'static str, io::Error),
    /// The daemon failed before it was ready; its own error line.
    Daemon(String),
}

impl fmt::Display for HelperError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HelperError::Usage(m) | HelperError::Daemon(m) => f.write_str(m),
            HelperError::Io(what, e) => write!(f, "cannot {what}: {e}"),
        }
    }
}

impl std::error::Error for HelperError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HelperError::Io(_, e) => Some(e),
            _ => None,
        }
    }
}

/// A mount as the helper was asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The database: a conninfo or URL as `--db` takes it.
    pub conninfo: String,
    /// SOURCE as given, for messages.
    pub source: String,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// Arguments of `pgbootfs mount` (from `mount` on, without `--db`).
    pub mount_args: Vec<OsString>,
    /// Stay in the foreground (`-o foreground`) instead of daemonizing.
    pub foreground: bool,
    /// Check everything but do not mount (mount(8)'s `-f`).
    pub fake: bool,
    /// Say what is done (mount(8)'s `-v`).
    pub verbose: bool,
    /// Where the daemon logs once ready (`-o log=FILE`).
    pub log: Option<PathBuf>,
    /// The daemon's log filter (`-o log_level=debug`), as RUST_LOG takes it.
    pub log_level: Option<String>,
    /// Environment for the daemon: mount(8) runs helpers in an emptied environment,
    /// so HOME (for `~/.pgpass` and `~/.pg_service.conf`) comes back from the
    /// password database, and `pgservicefile=` / `pgpassfile=` set libpq's variables.
    pub env: Vec<(&'static str, OsString)>,
}

/// Mount options that set one of libpq's file variables for the daemon.
const ENV_OPTIONS: &[(&str, &str)] = &[
    ("pgservicefile", "PGSERVICEFILE"),
    ("pgpassfile", "PGPASSFILE"),
    ("pgsysconfdir", "PGSYSCONFDIR"),
];

/// Is this a mount helper invocation? Called as `mount.fuse.pgbootfs` or
/// `mount.pgbootfs`, or as `pgbootfs SOURCE DIR ...` where SOURCE is not one of
/// `subcommands` nor an option.
pub fn invoked_as_helper(args: &[OsString], subcommands: &[&str]) -> bool {
    let name = args
        .first()
        .map(Path::new)
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.starts_with("mount.") {
        return true;
    }
    let Some(first) = args.get(1).map(|a| a.to_string_lossy()) else {
        return false;
    };
    args.len() >= 3 && !first.starts_with('-') && !subcommands.contains(&first.as_ref())
}

/// The conninfo a mount SOURCE stands for: a bare word is a service name.
pub fn conninfo_for(source: &str) -> String {
    let s = source.trim();
    if s.contains('=') || s.starts_with("postgres://") || s.starts_with("postgresql://") {
        s.to_string()
    } else {
        format!("service={s}")
    }
}

/// Parses `NAME SOURCE DIR [-sfnv] [-N NS] [-o OPTIONS]... [-t TYPE]`.
pub fn parse(args: &[OsString]) -> Result<Request, HelperError> {
    let usage = |m: String| {
        HelperError::Usage(format!(
            "{m} (usage: mount -t fuse.pgbootfs SOURCE DIR [-o OPTIONS], or pgbootfs SOURCE DIR -o OPTIONS)"
        ))
    };
    let mut positional: Vec<OsString> = Vec::new();
    let mut options: Vec<String> = Vec::new();
    let (mut sloppy, mut fake, mut verbose) = (false, false, false);
    let mut it = args.iter().skip(1);
    while let Some(arg) = it.next() {
        let text = arg.to_string_lossy();
        match text.as_ref() {
            "-o" => {
                let v = it.next().ok_or_else(|| usage("-o needs a value".into()))?;
                options.push(v.to_string_lossy().into_owned());
            }
            "-t" | "-N" => {
                // The type (fuse.pgbootfs) and mount namespace: nothing to do.
                it.next();
            }
            s if s.starts_with("-o") => options.push(s[2..].to_string()),
            s if s.starts_with('-') && s.len() > 1 && !s.starts_with("--") => {
                for c in s[1..].chars() {
                    match c {
                        's' => sloppy = true,
                        'f' => fake = true,
                        'v' => verbose = true,
                        // No mtab to write: the kernel's mount table is the record.
                        'n' => {}
                        _ => return Err(usage(format!("unknown option -{c}"))),
                    }
                }
            }
            _ => positional.push(arg.clone()),
        }
    }
    let [source, mountpoint] = <[OsString; 2]>::try_from(positional).map_err(|p| {
        usage(format!(
            "expected SOURCE and DIR, got {} argument(s)",
            p.len()
        ))
    })?;
    let source = source.to_string_lossy().into_owned();
    if source.trim().is_empty() {
        return Err(usage(
            "the SOURCE (a service name or conninfo) is empty".into(),
        ));
    }
    let mut req = Request {
        conninfo: conninfo_for(&source),
        source: source.clone(),
        mountpoint: PathBuf::from(&mountpoint),
        mount_args: vec!["mount".into(), mountpoint],
        foreground: false,
        fake,
        verbose,
        log: None,
        log_level: None,
        env: Vec::new(),
    };
    if std::env::var_os("HOME").is_none()
        && let Some(home) = home_dir()
    {
        req.env.push(("HOME", home));
    }
    for opt in options.iter().flat_map(|o| o.split(',')) {
        let opt = opt.trim();
        if opt.is_empty() {
            continue;
        }
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        match (key, value) {
            ("foreground", None) => req.foreground = true,
            ("log", Some(v)) if !v.is_empty() => req.log = Some(PathBuf::from(v)),
            ("log_level", Some(v)) if !v.is_empty() => req.log_level = Some(v.to_string()),
            (k, Some(v)) if !v.is_empty() && ENV_OPTIONS.iter().any(|(o, _)| *o == k) => {
                if let Some((_, var)) = ENV_OPTIONS.iter().find(|(o, _)| *o == k) {
                    req.env.push((var, v.into()));
                }
            }
            (k, Some(v)) if VALUE_OPTIONS.contains(&k) => {
                if v.is_empty() {
                    return Err(usage(format!("mount option {k}= needs a value")));
                }
                req.mount_args
                    .push(format!("--{}", k.replace('_', "-")).into());
                req.mount_args.push(v.into());
            }
            (k, None) if FLAG_OPTIONS.contains(&k) => {
                req.mount_args
                    .push(format!("--{}", k.replace('_', "-")).into());
            }
            // x-systemd.*, x-gvfs-show, ...: userspace-only by mount(8)'s convention.
            (k, _) if k.starts_with("x-") || k == "comment" => {}
            (k, None) if IGNORED.contains(&k) => {}
            _ if sloppy => log::warn!("ignoring unknown mount option {opt:?} (-s)"),
            _ => {
                return Err(usage(format!(
                    "unknown mount option {opt:?}; pgbootfs takes {}, allow_other, inside, inside_private, foreground, log=, log_level=, pgservicefile=, pgpassfile=, pgsysconfdir=",
                    VALUE_OPTIONS
                        .iter()
                        .map(|k| format!("{k}="))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
    }
    Ok(req)
}

/// Starts `pgbootfs mount` as a daemon and returns once it is mounted and
/// answering; on failure, the daemon's own error, with nothing left mounted.
pub fn daemonize(req: &Request) -> Result<(), HelperError> {
    let name = format!(
        "pgbootfs-mount-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    // An abstract socket: nothing to clean up on any path out of here.
    let addr = SocketAddr::from_abstract_name(name.as_bytes())
        .map_err(|e| HelperError::Io("make the readiness socket", e))?;
    let sock = UnixDatagram::bind_addr(&addr)
        .map_err(|e| HelperError::Io("make the readiness socket", e))?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| HelperError::Io("make the readiness socket", e))?;
    let log = log_target(req.log.as_deref())?;
    // A copy without close-on-exec, so the daemon inherits it under this number.
    // SAFETY: dup on a descriptor we own; the result is checked.
    let inherited = unsafe { libc::dup(log.as_raw_fd()) };
    if inherited < 0 {
        return Err(HelperError::Io(
            "pass the log to the daemon",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: `inherited` is a fresh descriptor that nothing else owns.
    let inherited = unsafe { OwnedFd::from_raw_fd(inherited) };
    let exe =
        std::env::current_exe().map_err(|e| HelperError::Io("find the pgbootfs binary", e))?;
    let mut cmd = Command::new(exe);
    cmd.args(&req.mount_args)
        // In the environment, not on a command line that ps shows.
        .env(SOURCE_ENV, &req.conninfo)
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .env(LOG_FD_ENV, inherited.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(level) = &req.log_level {
        cmd.env("RUST_LOG", level);
    }
    for (var, value) in &req.env {
        cmd.env(var, value);
    }
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent's.
    unsafe {
        cmd.pre_exec(|| {
            // A session of its own: no controlling terminal whose hangup (SIGHUP)
            // would stop the mount when the shell that ran mount(8) exits.
            libc::setsid();
            Ok(())
        });
    }
    if req.verbose {
        eprintln!(
            "pgbootfs: starting {:?} {:?}",
            cmd.get_program(),
            req.mount_args
        );
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| HelperError::Io("start the mount daemon", e))?;
    drop(inherited);
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    if let Some(stderr) = child.stderr.take() {
        let lines = lines.clone();
        // Until the daemon is ready its standard error is ours to read: it holds
        // the error line if start-up fails. Once ready it moves to the log.
        let _ = std::thread::Builder::new()
            .name("helper-stderr".into())
            .spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(mut l) = lines.lock() {
                        l.push(line);
                    }
                }
            });
    }
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        if let Ok(n) = sock.recv(&mut buf)
            && String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
        {
            if req.verbose {
                eprintln!(
                    "pgbootfs: mounted at {} (pid {})",
                    req.mountpoint.display(),
                    child.id()
                );
            }
            return Ok(());
        }
        if let Some(status) = child
            .try_wait()
            .map_err(|e| HelperError::Io("wait for the mount daemon", e))?
        {
            // Let the reader take the last lines.
            std::thread::sleep(Duration::from_millis(50));
            let lines = lines.lock().map(|l| l.clone()).unwrap_or_default();
            return Err(HelperError::Daemon(format!(
                "mounting {} at {}: {}",
                req.source,
                req.mountpoint.display(),
                failure_line(&lines, status)
            )));
        }
        if started.elapsed() > READY_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            if crate::mountinfo::find(&req.mountpoint).is_some() {
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(&req.mountpoint)
                    .status();
            }
            return Err(HelperError::Daemon(format!(
                "the mount at {} was not ready after {}s; stopped it (see -o log=FILE)",
                req.mountpoint.display(),
                READY_TIMEOUT.as_secs()
            )));
        }
    }
}

/// The effective user's home directory from the password database.
fn home_dir() -> Option<OsString> {
    crate::passwd::current()?.home
}

/// The daemon's error line, without its `pgbootfs: error: ` prefix (main adds it).
fn failure_line(lines: &[String], status: std::process::ExitStatus) -> String {
    let prefix = "pgbootfs: error: ";
    lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix(prefix))
        .map(str::to_string)
        .or_else(|| {
            lines
                .iter()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| format!("the mount daemon failed ({status}): {l}"))
        })
        .unwrap_or_else(|| format!("the mount daemon failed ({status})"))
}

/// Where the daemon's log goes once it is ready: `-o log=FILE`; else the standard
/// error mount(8) was given when that is a file or a socket (systemd's journal);
/// else nowhere, since a terminal or pipe would keep a shell or `$(...)` waiting.
fn log_target(log: Option<&Path>) -> Result<OwnedFd, HelperError> {
    use std::os::unix::fs::FileTypeExt;
    if let Some(path) = log {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| {
                HelperError::Usage(format!("log={}: cannot open it: {e}", path.display()))
            })?;
        return Ok(f.into());
    }
    let keep = std::fs::metadata("/proc/self/fd/2")
        .map(|m| m.file_type().is_file() || m.file_type().is_socket())
        .unwrap_or(false);
    if keep {
        return io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| HelperError::Io("pass the log to the daemon", e));
    }
    std::fs::File::options()
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| HelperError::Io("open /dev/null", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn recognises_the_helper_conventions() {
        let subs = ["mount", "serve", "ls", "help"];
        assert!(invoked_as_helper(
            &args(&["/sbin/mount.fuse.pgbootfs", "maas", "/srv"]),
            &subs
        ));
        assert!(invoked_as_helper(
            &args(&["pgbootfs", "maas", "/srv", "-o", "ro"]),
            &subs
        ));
        assert!(!invoked_as_helper(
            &args(&["pgbootfs", "mount", "/srv"]),
            &subs
        ));
        assert!(!invoked_as_helper(
            &args(&["pgbootfs", "--db", "x", "ls"]),
            &subs
        ));
        assert!(!invoked_as_helper(&args(&["pgbootfs", "ls"]), &subs));
    }

    #[test]
    fn sources_are_service_names_or_conninfo() {
        assert_eq!(conninfo_for("maas"), "service=maas");
        assert_eq!(conninfo_for("service=maas"), "service=maas");
        assert_eq!(
            conninfo_for("host=/run/postgresql dbname=maasdb"),
            "host=/run/postgresql dbname=maasdb"
        );
        assert_eq!(
            conninfo_for("postgres://maas@db/maasdb"),
            "postgres://maas@db/maasdb"
        );
    }

    #[test]
    fn options_map_to_flags_and_system_ones_are_ignored() {
        let r = parse(&args(&[
            "mount.fuse.pgbootfs",
            "maas",
            "/srv/images",
            "-n",
            "-o",
            "ro,allow_other,refresh=2,max_handles=8,_netdev,x-systemd.automount,noatime",
            "-o",
            "http=127.0.0.1:8080,cache_dir=/var/cache/pgbootfs,foreground,log=/tmp/l",
        ]))
        .unwrap();
        assert_eq!(r.conninfo, "service=maas");
        assert_eq!(r.mountpoint, PathBuf::from("/srv/images"));
        assert_eq!(
            r.mount_args,
            args(&[
                "mount",
                "/srv/images",
                "--allow-other",
                "--refresh",
                "2",
                "--max-handles",
                "8",
                "--http",
                "127.0.0.1:8080",
                "--cache-dir",
                "/var/cache/pgbootfs",
            ])
        );
        assert!(r.foreground);
        assert_eq!(r.log, Some(PathBuf::from("/tmp/l")));
        // The inside view (issue 20) is a flag like allow_other.
        let r = parse(&args(&[
            "mount.fuse.pgbootfs",
            "maas",
            "/srv",
            "-o",
            "inside,inside_private",
        ]))
        .unwrap();
        assert_eq!(
            r.mount_args,
            args(&["mount", "/srv", "--inside", "--inside-private"])
        );
        let r = parse(&args(&[
            "pgbootfs",
            "maas",
            "/srv",
            "-o",
            "pgservicefile=/etc/pgbootfs/services,pgpassfile=/etc/pgbootfs/pass",
        ]))
        .unwrap();
        assert!(
            r.env
                .contains(&("PGSERVICEFILE", "/etc/pgbootfs/services".into()))
        );
        assert!(r.env.contains(&("PGPASSFILE", "/etc/pgbootfs/pass".into())));
        assert!(!r.fake);
    }

    #[test]
    fn unknown_options_fail_unless_sloppy() {
        let e = parse(&args(&["pgbootfs", "maas", "/srv", "-o", "ro,colour=blue"])).unwrap_err();
        assert!(
            e.to_string()
                .contains("unknown mount option \"colour=blue\""),
            "{e}"
        );
        assert!(
            parse(&args(&[
                "pgbootfs",
                "maas",
                "/srv",
                "-s",
                "-o",
                "colour=blue"
            ]))
            .is_ok()
        );
        let e = parse(&args(&["pgbootfs", "maas", "-o", "ro"])).unwrap_err();
        assert!(e.to_string().contains("expected SOURCE and DIR"), "{e}");
        let e = parse(&args(&["pgbootfs", "maas", "/srv", "-o", "refresh="])).unwrap_err();
        assert!(e.to_string().contains("refresh= needs a value"), "{e}");
        let r = parse(&args(&[
            "pgbootfs",
            "a",
            "/srv",
            "-fv",
            "-t",
            "fuse.pgbootfs",
        ]))
        .unwrap();
        assert!(r.fake && r.verbose);
    }
}
