//! Running pgbootfs as a service: the Prometheus metrics (parsed by the reference
//! Python parser), systemd's readiness protocol and the mount(8) helper.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::http::Server;
use crate::common::*;

const KERNEL: &str = "/ubuntu/amd64/ga-20.04/focal/20240101/boot-kernel";
const GONE: &str = "/ubuntu/amd64/ga-20.04/focal/20240101/squashfs";

/// A store with a 100,000-byte kernel and a squashfs whose large object is
/// removed behind the catalog's back (its reads fail as "gone").
fn service_store() -> (Cluster, Vec<u8>) {
    let (pg, mut c) = store();
    let kernel = bytes(11, 100_000);
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/ga-20.04", "20240101");
    m.file(s, "boot-kernel", &kernel);
    let oid = m.file(s, "squashfs", &bytes(12, 3000));
    c.execute("SELECT lo_unlink($1::oid)", &[&oid]).unwrap();
    drop(c);
    (pg, kernel)
}

/// One scrape, parsed by prometheus_client: sample name with its labels
/// (`name{a="x",b="y"}`, labels sorted) to value. Panics if it does not parse.
pub fn scrape(url: &str) -> BTreeMap<String, f64> {
    let out = Command::new("curl")
        .args(["-sS", "--fail", url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scraping {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_metrics(&out.stdout)
}

/// Parses exposition text with the reference parser (tests/tools/promparse.py).
pub fn parse_metrics(text: &[u8]) -> BTreeMap<String, f64> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/promparse.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("No module named 'prometheus_client'"),
        "the Python prometheus_client parser is missing: run scripts/test, or \
         `python3 -m pip install prometheus_client`"
    );
    assert!(
        out.status.success(),
        "the scrape does not parse: {err}\n{}",
        String::from_utf8_lossy(text)
    );
    let mut map = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let labels = v["labels"].as_object().unwrap();
        let mut key = v["name"].as_str().unwrap().to_string();
        if !labels.is_empty() {
            let parts: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap()))
                .collect();
            key = format!("{key}{{{}}}", parts.join(","));
        }
        map.insert(key, v["value"].as_f64().unwrap());
    }
    map
}

fn val(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

/// How much `key` grew between two scrapes.
fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, key: &str) -> f64 {
    val(after, key) - val(before, key)
}

#[test]
fn http_metrics_parse_and_count_requests_bytes_errors_and_refreshes() {
    let (pg, kernel) = service_store();
    let srv = Server::start(&pg.conninfo("postgres"), &["--refresh", "1"]);
    let url = srv.url("/metrics");
    let before = scrape(&url);
    // The state gauges are there from the first scrape.
    assert_eq!(val(&before, "pgbootfs_catalog_files"), 2.0, "{before:?}");
    assert_eq!(val(&before, "pgbootfs_catalog_bytes"), 103_000.0);
    assert_eq!(val(&before, "pgbootfs_pool_max_connections"), 64.0);
    assert!(
        before
            .keys()
            .any(|k| k.starts_with("pgbootfs_build_info{version=\"0.")),
        "{before:?}"
    );

    // Two downloads of the kernel: the first from the database, the second from memory.
    for _ in 0..2 {
        let r = srv.get(KERNEL, &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.body, kernel);
    }
    assert_eq!(srv.get("/nothing/here", &[]).status, 404);
    assert_eq!(srv.req("HEAD", KERNEL, &[]).status, 200);
    // A large object removed behind the catalog: a 500 and a "gone" error.
    assert_eq!(srv.get(GONE, &[]).status, 500);

    let after = scrape(&url);
    let get200 = "pgbootfs_http_requests_total{method=\"GET\",status=\"200\"}";
    // The first scrape is counted too: it was answered before the second.
    assert_eq!(delta(&before, &after, get200), 3.0, "{after:?}");
    assert_eq!(
        delta(
            &before,
            &after,
            "pgbootfs_http_requests_total{method=\"GET\",status=\"404\"}"
        ),
        1.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "pgbootfs_http_requests_total{method=\"HEAD\",status=\"200\"}"
        ),
        1.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "pgbootfs_http_requests_total{method=\"GET\",status=\"500\"}"
        ),
        1.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "pgbootfs_served_bytes_total{source=\"database\"}"
        ),
        100_000.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "pgbootfs_served_bytes_total{source=\"memory\"}"
        ),
        100_000.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "pgbootfs_database_errors_total{class=\"gone\"}"
        ),
        1.0
    );
    // Bodies: two kernels, the first scrape, two short error texts.
    let sent = delta(&before, &after, "pgbootfs_http_sent_bytes_total");
    assert!(sent > 200_000.0 && sent < 260_000.0, "{sent}");
    // Every request observed once in each histogram (the 6 since, and the scrape).
    assert_eq!(
        delta(
            &before,
            &after,
            "pgbootfs_http_request_duration_seconds_count"
        ),
        6.0
    );
    assert_eq!(
        delta(&before, &after, "pgbootfs_http_first_byte_seconds_count"),
        6.0
    );
    assert!(delta(&before, &after, "pgbootfs_pool_checkouts_total") >= 1.0);
    assert_eq!(val(&after, "pgbootfs_handles_open"), 0.0);
    assert_eq!(val(&after, "pgbootfs_handles_connected"), 0.0);
    // The access log has the scrape like any request.
    assert!(srv.log().contains("GET /metrics 200"), "{}", srv.log());

    // Refreshes move; with the server down they fail, and the age grows.
    let refreshed = val(&after, "pgbootfs_catalog_refreshes_total");
    assert!(wait_until(Duration::from_secs(10), || {
        val(&scrape(&url), "pgbootfs_catalog_refreshes_total") >= refreshed + 2.0
    }));
    pg.stop_server();
    assert!(
        wait_until(Duration::from_secs(15), || {
            let m = scrape(&url);
            val(&m, "pgbootfs_catalog_refresh_failures_total") >= 2.0
                && val(&m, "pgbootfs_catalog_age_seconds") >= 1.5
        }),
        "{:?}",
        scrape(&url)
    );
    pg.start_server();
    let failures = val(&scrape(&url), "pgbootfs_catalog_refresh_failures_total");
    assert!(wait_until(Duration::from_secs(15), || {
        let m = scrape(&url);
        val(&m, "pgbootfs_catalog_age_seconds") < 1.5
            && val(&m, "pgbootfs_catalog_refresh_failures_total") == failures
    }));
    let m = scrape(&url);
    assert!(val(&m, "pgbootfs_catalog_refresh_duration_seconds_count") >= 5.0);
}

#[test]
fn openmetrics_on_request_and_mount_metrics_listener_counts_fuse_work() {
    if !fuse_or_skip("openmetrics_on_request_and_mount_metrics_listener_counts_fuse_work") {
        return;
    }
    let (pg, kernel) = service_store();
    let m = Mount::start(&pg.conninfo("postgres"), &["--metrics", "127.0.0.1:0"]);
    let addr = wait_for_line(&m, "metrics on http://");
    let url = format!("http://{addr}");
    let before = scrape(&url);
    assert_eq!(read_all(&m.path(KERNEL)).unwrap(), kernel);
    assert!(read_all(&m.path(GONE)).is_err());
    let after = scrape(&url);
    assert!(
        delta(
            &before,
            &after,
            "pgbootfs_fuse_operations_total{op=\"open\"}"
        ) >= 2.0
    );
    assert!(
        delta(
            &before,
            &after,
            "pgbootfs_fuse_operations_total{op=\"read\"}"
        ) >= 1.0
    );
    assert!(
        delta(
            &before,
            &after,
            "pgbootfs_fuse_operations_total{op=\"lookup\"}"
        ) >= 1.0
    );
    assert!(
        delta(
            &before,
            &after,
            "pgbootfs_database_errors_total{class=\"gone\"}"
        ) >= 1.0
    );
    let db = delta(
        &before,
        &after,
        "pgbootfs_served_bytes_total{source=\"database\"}",
    );
    let mem = delta(
        &before,
        &after,
        "pgbootfs_served_bytes_total{source=\"memory\"}",
    );
    // The kernel may ask for a page twice, never for less than the file.
    assert!(db + mem >= 100_000.0, "{after:?}");
    assert!(db > 0.0);
    // The listener serves metrics only; OpenMetrics when asked for.
    let tree = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!(
            "http://{}{KERNEL}",
            addr.trim_end_matches("/metrics")
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&tree.stdout), "404");
    let om = Command::new("curl")
        .args([
            "-s",
            "-H",
            "Accept: application/openmetrics-text; version=1.0.0",
        ])
        .arg(&url)
        .output()
        .unwrap();
    let om = String::from_utf8_lossy(&om.stdout);
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(
        om.contains("# TYPE pgbootfs_fuse_operations counter"),
        "{om}"
    );
}

/// Waits for a log line `...{prefix}ADDR` and returns ADDR.
fn wait_for_line(m: &Mount, prefix: &str) -> String {
    let mut found = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            if let Some((line, _)) = m
                .log()
                .split(prefix)
                .nth(1)
                .and_then(|rest| rest.split_once('\n'))
            {
                found = line.trim().to_string();
                true
            } else {
                false
            }
        }),
        "no {prefix:?} in the log:\n{}",
        m.log()
    );
    found
}

/// A daemon started by a test, stopped and unmounted on drop.
struct Daemon {
    child: Option<std::process::Child>,
    dir: Option<std::path::PathBuf>,
    log: std::path::PathBuf,
}

impl Daemon {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
        if let Some(dir) = &self.dir
            && is_mounted(dir)
        {
            let _ = Command::new("umount").arg("-l").arg(dir).status();
        }
        if std::thread::panicking() {
            eprintln!("--- pgbootfs log ---\n{}", self.log());
        }
    }
}

/// The next datagram on `sock`, as text.
fn next_notification(sock: &std::os::unix::net::UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .expect("no notification from pgbootfs in time");
    String::from_utf8_lossy(&buf[..n]).to_string()
}

#[test]
fn systemd_notify_ready_once_usable_and_stopping_on_sigterm() {
    if !fuse_or_skip("systemd_notify_ready_once_usable_and_stopping_on_sigterm") {
        return;
    }
    let (pg, kernel) = service_store();
    let tmp = temp_dir("pgbt-notify-");
    let sock_path = tmp.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let dir = tmp.path().join("mnt");
    std::fs::create_dir(&dir).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["--db", &pg.conninfo("postgres"), "mount"])
        .arg(&dir)
        .args(["--http", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &sock_path);
    let log = tmp.path().join("pgbootfs.log");
    let mut d = Daemon {
        child: Some(spawn_logged(cmd, &log)),
        dir: Some(dir.clone()),
        log,
    };
    let ready = next_notification(&sock);
    // Usable the moment systemd hears of it: mounted, answering, bytes right.
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(is_mounted(&dir), "READY=1 before the mount: {}", d.log());
    assert_eq!(read_all(&dir.join(&KERNEL[1..])).unwrap(), *kernel);
    let status = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .expect("a STATUS= line");
    assert!(
        status.contains("mounted at") && status.contains("2 files"),
        "{status}"
    );
    // The HTTP side was listening before READY=1 too.
    assert!(status.contains("http://127.0.0.1:"), "{status}");

    let child = d.child.as_mut().unwrap();
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let stopping = next_notification(&sock);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    assert!(wait_until(Duration::from_secs(15), || child
        .try_wait()
        .unwrap()
        .is_some()));
    assert!(!is_mounted(&dir));
}

#[test]
fn systemd_notify_ready_for_serve() {
    let (pg, kernel) = service_store();
    let tmp = temp_dir("pgbt-notify-");
    let sock_path = tmp.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut cmd = Command::new(bin());
    cmd.args([
        "--db",
        &pg.conninfo("postgres"),
        "serve",
        "--listen",
        "127.0.0.1:0",
    ])
    .env("NOTIFY_SOCKET", &sock_path);
    let log = tmp.path().join("pgbootfs.log");
    let mut d = Daemon {
        child: Some(spawn_logged(cmd, &log)),
        dir: None,
        log,
    };
    let ready = next_notification(&sock);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    let addr = ready
        .split("serving http://")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .expect("the address in STATUS=")
        .to_string();
    let out = Command::new("curl")
        .args(["-sS", "--fail"])
        .arg(format!("http://{addr}{KERNEL}"))
        .output()
        .unwrap();
    assert_eq!(out.stdout, kernel);
    let child = d.child.as_mut().unwrap();
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(next_notification(&sock).contains("STOPPING=1"));
}

#[test]
fn contrib_units_pass_systemd_analyze_verify() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("*** SKIPPING: systemd-analyze is not installed ***");
        return;
    };
    assert!(out.status.success());
    let tmp = temp_dir("pgbt-units-");
    let contrib = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/systemd");
    let mut units = Vec::new();
    for entry in std::fs::read_dir(contrib).unwrap() {
        let path = entry.unwrap().path();
        // The units name the installed binary: point them at the one under test.
        // Their man pages exist only once installed (scripts/package-test
        // verifies the installed units with them).
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/usr/local/bin/pgbootfs", bin())
            .replace("/usr/bin/pgbootfs", bin())
            .lines()
            .filter(|l| !l.starts_with("Documentation=man:"))
            .map(|l| format!("{l}\n"))
            .collect::<String>();
        let copy = tmp.path().join(path.file_name().unwrap());
        std::fs::write(&copy, text).unwrap();
        units.push(copy);
    }
    assert!(!units.is_empty());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// /sbin/mount.fuse.pgbootfs pointing at the binary under test while it lives;
/// whatever was there before is put back.
/// Tests that use the link take turns, so one never removes another's.
struct HelperLink {
    before: Option<std::path::PathBuf>,
    _turn: std::sync::MutexGuard<'static, ()>,
}

static HELPER_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

const HELPER: &str = "/sbin/mount.fuse.pgbootfs";

impl HelperLink {
    fn install() -> HelperLink {
        let turn = HELPER_TURN.lock().unwrap_or_else(|e| e.into_inner());
        let before = std::fs::read_link(HELPER).ok();
        let _ = std::fs::remove_file(HELPER);
        std::os::unix::fs::symlink(bin(), HELPER).unwrap();
        HelperLink {
            before,
            _turn: turn,
        }
    }
}

impl Drop for HelperLink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(HELPER);
        if let Some(old) = &self.before {
            let _ = std::os::unix::fs::symlink(old, HELPER);
        }
    }
}

/// Pids of pgbootfs processes whose command line names `dir`.
fn daemons_on(dir: &std::path::Path) -> Vec<i32> {
    let want = dir.to_string_lossy().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let parts: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|p| String::from_utf8_lossy(p).to_string())
            .collect();
        if parts.first().is_some_and(|p| p.ends_with("pgbootfs")) && parts.contains(&want) {
            pids.push(pid);
        }
    }
    pids
}

/// Kills what a failed test left: daemons on `dir` and the mount.
struct MountedDir(std::path::PathBuf);

impl Drop for MountedDir {
    fn drop(&mut self) {
        for pid in daemons_on(&self.0) {
            // SAFETY: kill on a pid this test started (its command line names our dir).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if is_mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

fn handle_backends(pg: &Cluster) -> i64 {
    pg.client("postgres")
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgbootfs%'",
            &[],
        )
        .unwrap()
        .get(0)
}

/// What each mount(8) test starts from: a store, the helper installed, an empty
/// mount point unmounted on drop. None (after saying why) where the test cannot run.
struct HelperScene {
    // Dropped in this order: unmount first, the cluster last.
    _guard: MountedDir,
    dir: std::path::PathBuf,
    tmp: tempfile::TempDir,
    _link: HelperLink,
    pg: Cluster,
    kernel: Vec<u8>,
}

impl HelperScene {
    fn set_up(test: &str) -> Option<HelperScene> {
        if !fuse_or_skip(test) {
            return None;
        }
        if !is_root() {
            eprintln!("*** SKIPPING: mount(8) with a helper in /sbin needs root ***");
            return None;
        }
        let (pg, kernel) = service_store();
        let link = HelperLink::install();
        let tmp = temp_dir("pgbt-helper-");
        let dir = tmp.path().join("mnt");
        std::fs::create_dir(&dir).unwrap();
        Some(HelperScene {
            _guard: MountedDir(dir.clone()),
            dir,
            tmp,
            _link: link,
            pg,
            kernel,
        })
    }
}

#[test]
fn mount_t_fuse_pgbootfs_daemonizes_and_umount_ends_it() {
    let Some(scene) = HelperScene::set_up("mount_t_fuse_pgbootfs_daemonizes_and_umount_ends_it")
    else {
        return;
    };
    let (pg, kernel, tmp, dir) = (&scene.pg, &scene.kernel, &scene.tmp, scene.dir.clone());
    let log = tmp.path().join("daemon.log");
    // mount(8) clears the environment: the source carries everything.
    let out = Command::new("mount")
        .args(["-t", "fuse.pgbootfs", &pg.conninfo("postgres")])
        .arg(&dir)
        .arg("-o")
        .arg(format!(
            "ro,allow_other,refresh=2,max_handles=4,_netdev,nofail,x-systemd.automount,log={},\
             pgservicefile={}",
            log.display(),
            tmp.path().join("pg_service.conf").display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // Returned once mounted: no waiting here.
    assert!(is_mounted(&dir));
    assert_eq!(read_all(&dir.join(&KERNEL[1..])).unwrap(), *kernel);
    let pids = daemons_on(&dir);
    assert_eq!(pids.len(), 1, "{pids:?}");
    // Options became flags; the source is not on the command line.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pids[0])).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains("--refresh 2") && cmdline.contains("--max-handles 4"),
        "{cmdline}"
    );
    assert!(cmdline.contains("--allow-other"), "{cmdline}");
    assert!(!cmdline.contains("host="), "{cmdline}");
    // mount(8) empties the environment: HOME (for ~/.pgpass) is put back, libpq's
    // file variables come from options, the source travels here.
    let environ = std::fs::read(format!("/proc/{}/environ", pids[0])).unwrap();
    let environ = String::from_utf8_lossy(&environ).replace('\0', "\n");
    assert!(
        environ.lines().any(|l| l.starts_with("HOME=/")),
        "{environ}"
    );
    assert!(
        environ
            .lines()
            .any(|l| l.starts_with("PGSERVICEFILE=") && l.ends_with("/pg_service.conf")),
        "{environ}"
    );
    assert!(
        environ
            .lines()
            .any(|l| l.starts_with("PGBOOTFS_MOUNT_SOURCE=host=")),
        "{environ}"
    );
    // A session of its own, and its log in the file once ready.
    // SAFETY: getsid only reads.
    assert_eq!(unsafe { libc::getsid(pids[0]) }, pids[0]);
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("ready: mounted at"))
    }));
    assert!(handle_backends(pg) >= 1);

    let st = Command::new("umount").arg(&dir).status().unwrap();
    assert!(st.success());
    assert!(
        wait_until(Duration::from_secs(15), || daemons_on(&dir).is_empty()),
        "the daemon outlived umount:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(wait_until(Duration::from_secs(15), || handle_backends(pg) == 0));
    assert!(!is_mounted(&dir));
}

#[test]
fn mount_t_with_a_service_name_from_a_service_file() {
    let Some(scene) = HelperScene::set_up("mount_t_with_a_service_name_from_a_service_file") else {
        return;
    };
    let (pg, kernel, tmp, dir) = (&scene.pg, &scene.kernel, &scene.tmp, scene.dir.clone());
    // The fstab line names a service; where the database is lives in a file that
    // only root reads, never on a command line.
    let services = tmp.path().join("pg_service.conf");
    let keys = pg.conninfo("postgres").replace(' ', "\n");
    std::fs::write(&services, format!("[images]\n{keys}\n")).unwrap();
    let out = Command::new("mount")
        .args(["-t", "fuse.pgbootfs", "images"])
        .arg(&dir)
        .arg("-o")
        .arg(format!("ro,refresh=2,pgservicefile={}", services.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&dir));
    assert_eq!(read_all(&dir.join(&KERNEL[1..])).unwrap(), *kernel);
    let pids = daemons_on(&dir);
    assert_eq!(pids.len(), 1, "{pids:?}");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pids[0])).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("host="));
    assert!(Command::new("umount").arg(&dir).status().unwrap().success());
    assert!(wait_until(Duration::from_secs(15), || daemons_on(&dir).is_empty()));
    assert!(wait_until(Duration::from_secs(15), || handle_backends(pg) == 0));
}

#[test]
fn mount_helper_bad_source_fails_with_one_line_and_no_mount() {
    let Some(scene) =
        HelperScene::set_up("mount_helper_bad_source_fails_with_one_line_and_no_mount")
    else {
        return;
    };
    let (pg, dir) = (&scene.pg, scene.dir.clone());
    let bad_db = format!("host={} dbname=nosuchdb", pg.host().display());
    for source in ["no-such-service", bad_db.as_str()] {
        let out = Command::new("mount")
            .args(["-t", "fuse.pgbootfs", source])
            .arg(&dir)
            .args(["-o", "ro,refresh=2"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{source}: mount succeeded");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{source}: {err}");
        assert!(lines[0].starts_with("pgbootfs: error: "), "{err}");
        assert!(!is_mounted(&dir), "{source}: left mounted");
        assert!(daemons_on(&dir).is_empty(), "{source}: daemon left");
    }
    let err = String::from_utf8_lossy(
        &Command::new("mount")
            .args(["-t", "fuse.pgbootfs", &bad_db])
            .arg(&dir)
            .args(["-o", "ro"])
            .output()
            .unwrap()
            .stderr,
    )
    .to_string();
    assert!(err.contains("nosuchdb"), "{err}");
    // An option pgbootfs does not know is refused before anything starts.
    let out = Command::new("mount")
        .args(["-t", "fuse.pgbootfs", &pg.conninfo("postgres")])
        .arg(&dir)
        .args(["-o", "ro,colour=blue"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown mount option \"colour=blue\""));
    assert!(!is_mounted(&dir));
}

#[test]
fn helper_convention_in_the_foreground() {
    if !fuse_or_skip("helper_convention_in_the_foreground") {
        return;
    }
    let (pg, kernel) = service_store();
    let tmp = temp_dir("pgbt-helper-");
    let dir = tmp.path().join("mnt");
    std::fs::create_dir(&dir).unwrap();
    // What fuse3's mount.fuse3 runs: `pgbootfs SOURCE DIR -o OPTIONS`.
    let mut cmd = Command::new(bin());
    cmd.arg(pg.conninfo("postgres"))
        .arg(&dir)
        .args(["-o", "ro,foreground,refresh=3,_netdev"]);
    let log = tmp.path().join("pgbootfs.log");
    let mut d = Daemon {
        child: Some(spawn_logged(cmd, &log)),
        dir: Some(dir.clone()),
        log,
    };
    assert!(
        wait_until(Duration::from_secs(20), || is_mounted(&dir)),
        "{}",
        d.log()
    );
    assert_eq!(read_all(&dir.join(&KERNEL[1..])).unwrap(), *kernel);
    assert!(d.log().contains("refresh every 3s"), "{}", d.log());
    let child = d.child.as_mut().unwrap();
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(wait_until(Duration::from_secs(15), || child
        .try_wait()
        .unwrap()
        .is_some()));
    assert!(!is_mounted(&dir));
}

#[test]
fn find_reads_names_only_and_ls_l_gets_attributes() {
    if !fuse_or_skip("find_reads_names_only_and_ls_l_gets_attributes") {
        return;
    }
    let (pg, mut c) = store();
    let mut m = Maas { client: &mut c };
    // 4 versions: the first of 20 files (a listing too big to come whole to a
    // names-only walker), the others of 5 (small listings, which do): 35 files
    // under 1 + 1 + 1 + 1 + 4 directories.
    for v in 0..4 {
        let s = m.set("ubuntu/focal", "amd64/generic", &format!("2024010{v}"));
        for f in 0..(if v == 0 { 20 } else { 5 }) {
            m.file(
                s,
                &format!("file-{f}"),
                &bytes(100 + v * 10 + f, 10 + f as usize),
            );
        }
    }
    drop(c);
    let mount = Mount::start(&pg.conninfo("postgres"), &["--metrics", "127.0.0.1:0"]);
    let url = format!("http://{}", wait_for_line(&mount, "metrics on http://"));
    let lookups =
        |m: &BTreeMap<String, f64>| val(m, "pgbootfs_fuse_operations_total{op=\"lookup\"}");
    let before = scrape(&url);
    let found = sh(&format!("find {} -type f | sort", mount.dir.display()));
    assert_eq!(found.lines().count(), 35, "{found}");
    let after_find = scrape(&url);
    // find looked up no file, and no directory either: subdirectories come with
    // attributes in a names-only walker's first batch. The big listing came
    // without its files' attributes (no inode for them), the small ones whole.
    let dirs = 8.0;
    assert!(
        lookups(&after_find) - lookups(&before) <= dirs,
        "find made {} lookups",
        lookups(&after_find) - lookups(&before)
    );
    assert!(
        delta(
            &before,
            &after_find,
            "pgbootfs_fuse_operations_total{op=\"readdir\"}"
        ) >= 1.0
    );
    // No inode for a file of the big listing: a stat of one after find asks the
    // file system; a file of a small listing came with its attributes.
    let big = found.lines().find(|l| l.contains("/20240100/")).unwrap();
    assert_eq!(sh(&format!("stat -c %s {big}")).trim(), "10");
    let after_stat = scrape(&url);
    assert_eq!(lookups(&after_stat) - lookups(&after_find), 1.0);
    let small = found.lines().find(|l| l.contains("/20240101/")).unwrap();
    assert_eq!(sh(&format!("stat -c %s {small}")).trim(), "10");
    let after_small = scrape(&url);
    assert_eq!(lookups(&after_small) - lookups(&after_stat), 0.0);
    let after_find = after_small;

    // ls -l stats: after its first directory of files it gets attributes with
    // each listing, so at most one directory's files cost a LOOKUP each.
    let listing = sh(&format!("ls -lR {}", mount.dir.display()));
    let after_ls = scrape(&url);
    let ls_lookups = lookups(&after_ls) - lookups(&after_find);
    assert!(
        ls_lookups <= 20.0 + dirs,
        "ls -lR made {ls_lookups} lookups"
    );
    // The sizes are right whichever way they came.
    for f in 0..5u64 {
        let size = 10 + f;
        let n = listing
            .lines()
            .filter(|l| l.ends_with(&format!(" file-{f}")) && l.contains(&format!(" {size} ")))
            .count();
        assert_eq!(n, 4, "file-{f} of {size} bytes:\n{listing}");
    }
}

#[test]
fn version_completions_man_pages_and_help_examples() {
    let run = |args: &[&str]| {
        let out = Command::new(bin()).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    // The git commit it was built from (or "unknown" outside a checkout).
    let version = run(&["--version"]);
    assert!(
        version.starts_with("pgbootfs 0.") && version.contains("(git "),
        "{version}"
    );
    // A completion script bash itself accepts, that completes the subcommands.
    let tmp = temp_dir("pgbt-cli-");
    let script = tmp.path().join("pgbootfs.bash");
    std::fs::write(&script, run(&["completions", "bash"])).unwrap();
    let check = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(pgbootfs mo); COMP_CWORD=1; \
             _pgbootfs pgbootfs mo pgbootfs; echo ${{COMPREPLY[@]}}",
            script.display()
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&check.stdout).trim(), "mount");
    for shell in ["zsh", "fish"] {
        assert!(run(&["completions", shell]).contains("mount"));
    }
    // Man pages: pgbootfs(1) and one per command, all valid roff for man(1).
    run(&["man", "--out", tmp.path().to_str().unwrap()]);
    for page in [
        "pgbootfs",
        "pgbootfs-mount",
        "pgbootfs-serve",
        "pgbootfs-import",
    ] {
        let path = tmp.path().join(format!("{page}.1"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(".TH") && text.contains(".SH NAME"), "{page}");
        // man(1) renders it, where installed.
        if let Ok(out) = Command::new("man")
            .arg("-l")
            .arg(&path)
            .env("MANWIDTH", "80")
            .output()
            && out.status.success()
        {
            assert!(String::from_utf8_lossy(&out.stdout).contains(page));
        }
    }
    assert!(run(&["man"]).contains(".SH SUBCOMMANDS"));
    // Every subcommand's help ends with examples.
    for sub in [
        "mount",
        "import",
        "ls",
        "verify",
        "remove",
        "serve",
        "completions",
        "man",
    ] {
        let help = run(&[sub, "--help"]);
        assert!(help.contains("Examples:\n  "), "{sub}: {help}");
    }
}
