//! What operators hit (issue 23): directory URLs as web servers answer them, quiet
//! commands, restarts over a stale mount, the HTTP connection cap.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::http::Server;
use crate::common::*;

/// A store with two sets under two architectures, and the bytes of each file by
/// its tree path (without the leading `/`).
fn tree_store() -> (Cluster, Vec<(String, Vec<u8>)>) {
    let (pg, mut c) = store();
    let mut m = Maas { client: &mut c };
    let mut files = Vec::new();
    let s = m.set("ubuntu/focal", "amd64/ga-20.04", "20240101");
    for (i, (name, len)) in [
        ("boot-kernel", 100_000),
        ("boot-initrd", 0),
        ("squashfs", 3 << 20),
    ]
    .into_iter()
    .enumerate()
    {
        let data = bytes(10 + i as u64, len);
        m.file(s, name, &data);
        files.push((format!("ubuntu/amd64/ga-20.04/focal/20240101/{name}"), data));
    }
    let s = m.set("ubuntu/jammy", "arm64/generic", "20240202.1");
    let data = bytes(20, 5000);
    m.file(s, "boot-kernel", &data);
    files.push((
        "ubuntu/arm64/generic/jammy/20240202.1/boot-kernel".to_string(),
        data,
    ));
    drop(c);
    files.sort();
    (pg, files)
}

/// rclone: $PGBOOTFS_RCLONE, else from PATH.
fn rclone() -> String {
    std::env::var("PGBOOTFS_RCLONE").unwrap_or_else(|_| "rclone".into())
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every regular file under `root`, as (relative path, bytes), sorted.
fn files_under(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                dirs.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.push((rel, fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_slashless_directory_is_redirected_with_its_query() {
    let (pg, _) = tree_store();
    let srv = Server::start(&pg.conninfo("postgres"), &[]);
    for (asked, to) in [
        ("/ubuntu", "/ubuntu/"),
        ("/ubuntu/amd64?x=1&y", "/ubuntu/amd64/?x=1&y"),
        ("/MAAS/images-stream", "/MAAS/images-stream/"),
        ("/MAAS/images-stream/ubuntu", "/MAAS/images-stream/ubuntu/"),
    ] {
        for method in ["GET", "HEAD"] {
            let r = srv.req(method, asked, &[]);
            assert_eq!(r.status, 301, "{method} {asked}");
            assert_eq!(r.header("location"), Some(to), "{method} {asked}");
        }
        let r = srv.get(to, &[]);
        assert_eq!(r.status, 200, "{to}");
    }
    // A file is not a directory: no redirect, and a slash after it is a 404.
    let file = "/ubuntu/amd64/ga-20.04/focal/20240101/boot-kernel";
    assert_eq!(srv.get(file, &[]).status, 200);
    assert_eq!(srv.get(&format!("{file}/"), &[]).status, 404);
    assert_eq!(srv.get("/ubuntu/nope", &[]).status, 404);
}

#[test]
fn rclone_copies_and_checks_the_whole_tree_byte_exact() {
    let (pg, files) = tree_store();
    let srv = Server::start(&pg.conninfo("postgres"), &[]);
    let url = srv.url("/");
    let tmp = temp_dir("pgbt-rclone-");
    let rclone_cmd = |args: &[&str]| {
        let mut c = Command::new(rclone());
        // No config file of the machine's: the remote is given on the command line.
        c.env("RCLONE_CONFIG", tmp.path().join("rclone.conf"))
            .args(["--http-url", &url])
            .args(args);
        c
    };
    let listed = run(
        &mut rclone_cmd(&["lsf", "-R", "--files-only", ":http:"]),
        "rclone lsf",
    );
    let mut listed: Vec<&str> = listed.lines().collect();
    listed.sort();
    let want: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(listed, want, "rclone lsf -R");

    // The whole tree, and a subdirectory named without its slash (the case that
    // copied an HTML page as a file before the redirect).
    let all = tmp.path().join("all");
    run(
        &mut rclone_cmd(&["copy", ":http:", all.to_str().unwrap()]),
        "rclone copy",
    );
    assert_eq!(files_under(&all), files, "rclone copy of /");
    let sub = tmp.path().join("sub");
    run(
        &mut rclone_cmd(&["copy", ":http:ubuntu/amd64", sub.to_str().unwrap()]),
        "rclone copy ubuntu/amd64",
    );
    let want_sub: Vec<(String, Vec<u8>)> = files
        .iter()
        .filter_map(|(p, d)| Some((p.strip_prefix("ubuntu/amd64/")?.to_string(), d.clone())))
        .collect();
    assert_eq!(files_under(&sub), want_sub, "rclone copy of ubuntu/amd64");

    // rclone check reads both sides in full (--download): the bytes, not only sizes.
    run(
        &mut rclone_cmd(&["check", "--download", ":http:", all.to_str().unwrap()]),
        "rclone check",
    );
    // And it does see a difference: one flipped byte fails the check.
    let (name, _) = files.iter().find(|(_, d)| !d.is_empty()).unwrap();
    let victim = all.join(name);
    let mut b = fs::read(&victim).unwrap();
    b[0] ^= 1;
    fs::write(&victim, b).unwrap();
    let out = rclone_cmd(&["check", "--download", ":http:", all.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "rclone check missed a flipped byte");
}

/// Runs `pgbootfs --db DB ARGS` with no RUST_LOG of the caller's, so the
/// command's own default log level shows.
fn quiet_run(db: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(["--db", db])
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn ls_into_head_exits_0_with_nothing_on_stderr() {
    let (pg, mut c) = store();
    let mut m = Maas { client: &mut c };
    // More than a pipe holds (64 KiB), so ls is still writing when head leaves.
    let s = m.set("ubuntu/focal", "amd64/ga-20.04", "20240101");
    for i in 0..700 {
        m.file(
            s,
            &format!("file-with-a-long-enough-name-{i:04}"),
            &bytes(i, 10),
        );
    }
    drop(c);
    let db = pg.conninfo("postgres");
    let all = quiet_run(&db, &["ls"]);
    assert!(all.status.success(), "{}", text(&all.stderr));
    assert!(all.stdout.len() > 64 << 10, "{} bytes", all.stdout.len());
    assert_eq!(text(&all.stderr), "", "ls wrote on stderr");

    let out = Command::new("bash")
        .args([
            "-c",
            r#"set -o pipefail; RUST_LOG= "$0" --db "$1" ls | head -1"#,
            bin(),
            &db,
        ])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        text(&out.stderr)
    );
    assert_eq!(
        text(&out.stdout).lines().count(),
        1,
        "{}",
        text(&out.stdout)
    );
    assert_eq!(text(&out.stderr), "", "ls | head -1 wrote on stderr");

    // -v shows the log again.
    let v = quiet_run(&db, &["-v", "ls"]);
    assert!(text(&v.stderr).contains("INFO"), "{}", text(&v.stderr));
}

#[test]
fn import_verify_remove_print_results_and_no_log_without_v() {
    let pg = Cluster::start();
    let db = pg.conninfo("postgres");
    let src = temp_dir("pgbt-src-");
    let version = src.path().join("ubuntu/amd64/ga-22.04/jammy/20240101");
    fs::create_dir_all(&version).unwrap();
    fs::write(version.join("boot-kernel"), bytes(1, 300_000)).unwrap();
    fs::write(version.join("squashfs"), bytes(2, 2 << 20)).unwrap();
    let src_arg = src.path().to_str().unwrap();

    let out = quiet_run(&db, &["import", src_arg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "import wrote on stderr");
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "one summary line: {stdout}");
    assert!(stdout.starts_with("imported: 1 version(s) new"), "{stdout}");

    for args in [&["verify"][..], &["ls", "ubuntu"]] {
        let out = quiet_run(&db, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stderr), "", "{args:?} wrote on stderr");
        assert!(!out.stdout.is_empty(), "{args:?} printed no result");
    }
    let out = quiet_run(&db, &["remove", "ubuntu/amd64/ga-22.04/jammy/20240101"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "remove wrote on stderr");
    assert!(text(&out.stdout).contains("removed 1 version(s)"));

    // With -v, import tells what it does.
    let out = quiet_run(&db, &["-v", "import", src_arg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("INFO") && err.contains("squashfs"), "{err}");

    // On a terminal (script(1) gives it one), import draws a progress bar there and
    // still logs nothing.
    let out = Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{} --db '{db}' import --replace '{src_arg}'",
            bin()
        ))
        .arg("/dev/null")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let tty = text(&out.stdout);
    assert!(out.status.success(), "{tty}");
    assert!(tty.contains("import ["), "no progress bar: {tty:?}");
    assert!(!tty.contains("INFO"), "{tty}");
}

/// A store with one small file, for the mount tests.
fn one_file_store() -> Cluster {
    let (pg, mut c) = store();
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/generic", "1");
    m.file(s, "a", &bytes(91, 1000));
    drop(c);
    pg
}

const ONE_FILE: &str = "ubuntu/amd64/generic/focal/1/a";

/// `kill -9` of a mount, then a new mount at once (no wait for the kernel's
/// attribute cache to lapse): the stale mount is found in the mount table,
/// detached, and the new one serves.
fn restart_at_once_after_kill_9(name: &str) {
    let pg = one_file_store();
    let db = pg.conninfo("postgres");
    let tmp = temp_dir("pgbt-mnt-");
    let dir = tmp.path().join(name);
    fs::create_dir(&dir).unwrap();
    // Every Mount is kept to the end: dropping a killed one would unmount
    // whatever is mounted at the path by then, the new one included.
    let mut mounts = vec![Mount::start_at(
        temp_dir("pgbt-log-"),
        dir.clone(),
        &db,
        &[],
    )];
    assert_eq!(fs::read(mounts[0].path(ONE_FILE)).unwrap(), bytes(91, 1000));
    for round in 0..3 {
        let st = mounts.last_mut().unwrap().stop_with(libc::SIGKILL);
        assert!(!st.success());
        assert!(
            is_mounted(&dir),
            "round {round}: the killed mount is listed"
        );
        // Mount::start_at's own wait is fooled by the stale mount (listed, and its
        // root's attributes still cached): wait for the new one's readiness too.
        let next = Mount::start_at(temp_dir("pgbt-log-"), dir.clone(), &db, &[]);
        assert!(
            wait_until(Duration::from_secs(20), || next
                .log()
                .contains("ready: mounted")),
            "round {round}: not ready:\n{}",
            next.log()
        );
        assert_eq!(
            fs::read(next.path(ONE_FILE)).unwrap(),
            bytes(91, 1000),
            "round {round}"
        );
        assert!(
            next.log().contains("stale pgbootfs mount"),
            "{}",
            next.log()
        );
        // One mount at the point: the stale one was detached, not covered.
        let at_dir = pgbootfs::mountinfo::mounts()
            .into_iter()
            .filter(|m| m.point == dir)
            .count();
        assert_eq!(at_dir, 1, "round {round}: mounts at {}", dir.display());
        mounts.push(next);
    }
}

#[test]
fn a_restart_at_once_after_kill_9_mounts_at_a_plain_path() {
    if !fuse_or_skip("a_restart_at_once_after_kill_9_mounts_at_a_plain_path") {
        return;
    }
    restart_at_once_after_kill_9("mnt");
}

#[test]
fn a_restart_at_once_after_kill_9_mounts_at_an_odd_path() {
    if !fuse_or_skip("a_restart_at_once_after_kill_9_mounts_at_an_odd_path") {
        return;
    }
    // The mount table escapes these as \040, \011 and \134.
    restart_at_once_after_kill_9("mnt a\tb\\c");
}

#[test]
fn a_second_mount_over_a_live_one_is_refused_in_one_line() {
    if !fuse_or_skip("a_second_mount_over_a_live_one_is_refused_in_one_line") {
        return;
    }
    let pg = one_file_store();
    let db = pg.conninfo("postgres");
    let live = Mount::start(&db, &[]);
    let out = Command::new(bin())
        .args(["--db", &db, "mount"])
        .arg(&live.dir)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("already mounted by a running pgbootfs"),
        "{err}"
    );
    // The first mount is untouched.
    assert_eq!(fs::read(live.path(ONE_FILE)).unwrap(), bytes(91, 1000));
}

/// A connection to `to` from the loopback address `from` (any of 127.0.0.0/8).
fn connect_from(from: &str, to: std::net::SocketAddr) -> std::net::TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: std::net::SocketAddr = format!("{from}:0").parse().unwrap();
    sock.bind(&local.into()).unwrap();
    sock.connect_timeout(&to.into(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect from {from}: {e}"));
    sock.into()
}

/// The value of the series `key` (name and labels as written) in metrics text.
fn metric(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn past_http_max_connections_new_connections_get_503_and_downloads_go_on() {
    use std::io::{ErrorKind, Read, Write};
    use std::sync::{Arc, Barrier, mpsc};

    raise_fd_limit();
    let (pg, mut c) = store();
    let big = bytes(3, 64 << 20);
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/ga-20.04", "20240101");
    m.file(s, "squashfs", &big);
    drop(c);
    let path = "/ubuntu/amd64/ga-20.04/focal/20240101/squashfs";
    // A header timeout longer than the test: admitted idle connections are held.
    let srv = Server::start(
        &pg.conninfo("postgres"),
        &[
            "--http-max-connections",
            "500",
            "--http-header-timeout",
            "300",
        ],
    );
    const CAP: usize = 500;
    const DOWNLOADS: usize = 4;
    const FLOOD: usize = 2000;
    const ADDRESSES: usize = 100;

    // Downloads that are under way when the flood comes: 1 MiB in, then they wait
    // for the flood to be counted, then read the rest (64 MiB is more than the
    // socket buffers hold, so each keeps its connection meanwhile).
    let release = Arc::new(Barrier::new(DOWNLOADS + 1));
    let (started_tx, started_rx) = mpsc::channel();
    let downloads: Vec<_> = (0..DOWNLOADS)
        .map(|_| {
            let release = release.clone();
            let started = started_tx.clone();
            let addr = srv.addr;
            std::thread::spawn(move || {
                let mut s = connect_from("127.0.0.1", addr);
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                write!(
                    s,
                    "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                )
                .unwrap();
                let mut first = vec![0u8; 1 << 20];
                s.read_exact(&mut first).unwrap();
                started.send(()).unwrap();
                release.wait();
                let mut rest = Vec::new();
                s.read_to_end(&mut rest).unwrap();
                first.extend_from_slice(&rest);
                first
            })
        })
        .collect();
    for _ in 0..DOWNLOADS {
        started_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a download did not start");
    }
    let threads_before = srv.threads();

    // The flood: idle connections from 100 addresses, 20 each.
    let mut flood: Vec<std::net::TcpStream> = (0..FLOOD)
        .map(|i| connect_from(&format!("127.0.2.{}", 1 + i % ADDRESSES), srv.addr))
        .collect();
    for s in &flood {
        s.set_nonblocking(true).unwrap();
    }
    // Each is either answered 503 and closed, or held without a word.
    let admitted = CAP - DOWNLOADS;
    let mut refused = vec![false; FLOOD];
    let mut got: Vec<Vec<u8>> = vec![Vec::new(); FLOOD];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 4096];
    while refused.iter().filter(|r| **r).count() < FLOOD - admitted {
        assert!(
            std::time::Instant::now() < deadline,
            "{} refused of {FLOOD} in 60 s, {} wanted",
            refused.iter().filter(|r| **r).count(),
            FLOOD - admitted
        );
        for (i, s) in flood.iter_mut().enumerate() {
            if refused[i] {
                continue;
            }
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        let answer = text(&got[i]);
                        assert!(
                            answer.starts_with("HTTP/1.1 503 "),
                            "connection {i} closed with {answer:?}"
                        );
                        assert!(answer.contains("Retry-After: "), "{answer}");
                        refused[i] = true;
                        break;
                    }
                    Ok(n) => got[i].extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("connection {i}: {e}"),
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The rest are held, and got no thread beyond their own.
    std::thread::sleep(Duration::from_millis(500));
    for (i, s) in flood.iter_mut().enumerate() {
        if !refused[i] {
            let r = s.read(&mut buf);
            assert!(
                matches!(&r, Err(e) if e.kind() == ErrorKind::WouldBlock),
                "held connection {i}: {r:?}"
            );
        }
    }
    let held = refused.iter().filter(|r| !**r).count();
    assert_eq!(held, admitted);
    let threads = srv.threads();
    assert!(
        threads <= threads_before + admitted as u64 + 16,
        "{threads} server threads, {threads_before} before the flood"
    );

    // The downloads go on to the end, byte-exact.
    release.wait();
    for d in downloads {
        let body = d.join().unwrap();
        let head_end = body.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(body.starts_with(b"HTTP/1.1 200 "));
        assert_eq!(sha256_hex(&body[head_end..]), sha256_hex(&big));
    }

    // With their slots free, /metrics answers: the flood's figures, per address too.
    let mut last = String::new();
    let counted = wait_until(Duration::from_secs(10), || {
        let r = srv.get("/metrics", &[]);
        last = text(&r.body);
        r.status == 200 && metric(&last, "pgbootfs_http_connections") == Some((admitted + 1) as f64)
    });
    assert!(counted, "{last}");
    let refused_n = (FLOOD - admitted) as f64;
    for (key, want) in [
        ("pgbootfs_http_connections_limit", CAP as f64),
        (
            "pgbootfs_http_connections_refused_total{reason=\"server_full\"}",
            refused_n,
        ),
        // 100 flood addresses and the scraper's.
        ("pgbootfs_http_clients", (ADDRESSES + 1) as f64),
        // 496 admitted in connect order over 100 addresses: 5 or 4 each.
        ("pgbootfs_http_client_connections_max", 5.0),
    ] {
        assert_eq!(metric(&last, key), Some(want), "{key}:\n{last}");
    }
    assert!(
        srv.log().contains("--http-max-connections"),
        "one warning names the flag"
    );

    // Once the flood goes, the server takes connections again.
    drop(flood);
    let back = wait_until(Duration::from_secs(10), || {
        let r = srv.get("/metrics", &[]);
        r.status == 200 && metric(&text(&r.body), "pgbootfs_http_connections") == Some(1.0)
    });
    assert!(back, "the flood's connections were not released");
    let r = srv.get(path, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(sha256_hex(&r.body), sha256_hex(&big));
}

/// A directory nobody may write, undone on drop: as root permissions do not stop
/// writes, so root gets a read-only tmpfs mounted over it; others a mode of 0555.
struct ReadOnlyDir {
    dir: std::path::PathBuf,
    mounted: bool,
}

impl ReadOnlyDir {
    fn make(dir: &Path) -> ReadOnlyDir {
        use std::os::unix::fs::PermissionsExt;
        let mounted = is_root();
        if mounted {
            let st = Command::new("mount")
                .args(["-t", "tmpfs", "-o", "ro,size=1m", "pgbootfs-test-ro"])
                .arg(dir)
                .status()
                .unwrap();
            assert!(st.success(), "mount a read-only tmpfs at {}", dir.display());
        } else {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).unwrap();
        }
        ReadOnlyDir {
            dir: dir.to_path_buf(),
            mounted,
        }
    }
}

impl Drop for ReadOnlyDir {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        } else {
            let _ = fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o755));
        }
    }
}

#[test]
fn a_read_only_cache_directory_is_one_warning_and_reads_come_from_the_database() {
    if !fuse_or_skip("a_read_only_cache_directory_is_one_warning_and_reads_come_from_the_database")
    {
        return;
    }
    let pg = one_file_store();
    let tmp = temp_dir("pgbt-cache-");
    let cache = tmp.path().join("ro");
    fs::create_dir(&cache).unwrap();
    let ro = ReadOnlyDir::make(&cache);
    let cache_arg = cache.to_str().unwrap();
    let mnt = Mount::start(&pg.conninfo("postgres"), &["--cache-dir", cache_arg]);
    for _ in 0..2 {
        assert_eq!(fs::read(mnt.path(ONE_FILE)).unwrap(), bytes(91, 1000));
    }
    let log = mnt.log();
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(cache_arg) && !l.contains(" DEBUG "))
        .collect();
    assert_eq!(said.len(), 1, "one line about the cache directory:\n{log}");
    assert!(
        said[0].contains("WARN") && said[0].contains("without the disk cache"),
        "{}",
        said[0]
    );
    assert_eq!(fs::read_dir(&cache).unwrap().count(), 0, "nothing written");
    drop(mnt);
    drop(ro);
}

#[test]
fn a_full_cache_disk_is_one_warning_reads_stay_right_and_caching_comes_back() {
    if !is_root() {
        // Mounting the small tmpfs needs root; CI runs as root.
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
        assert!(!ci, "CI=true: this test needs root");
        eprintln!("\n*** SKIPPING: a small tmpfs needs root ***\n");
        return;
    }
    let (pg, mut c) = store();
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/generic", "1");
    let a = bytes(801, 3 << 20);
    let b = bytes(802, 3 << 20);
    m.file(s, "a", &a);
    m.file(s, "b", &b);
    drop(c);
    let tmp = temp_dir("pgbt-cache-");
    let cache = tmp.path().join("small");
    fs::create_dir(&cache).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "pgbootfs-test-small"])
        .arg(&cache)
        .status()
        .unwrap();
    assert!(st.success(), "mount a small tmpfs");
    /// Unmounts the tmpfs on drop, also when the test fails.
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _tmpfs = Unmount(cache.clone());
    // Over HTTP, whose downloads read each image in order from byte 0, as a fill
    // needs (a mount's reader may be served out of order by kernel read-ahead). A
    // memory cache smaller than an image: each download of b goes to the database
    // again, which is when a fill is tried.
    let srv = Server::start(
        &pg.conninfo("postgres"),
        &[
            "--cache-dir",
            cache.to_str().unwrap(),
            "--cache-memory",
            "1",
        ],
    );
    let dir = "/ubuntu/amd64/generic/focal/1";
    let get = |name: &str| {
        let r = srv.get(&format!("{dir}/{name}"), &[]);
        assert_eq!(r.status, 200, "{name}");
        r.body
    };
    let cached = |data: &[u8]| cache.join(sha256_hex(data)).exists();
    // a is cached while there is room.
    assert_eq!(get("a"), a);
    assert!(
        wait_until(Duration::from_secs(20), || cached(&a)),
        "{}",
        srv.log()
    );
    // Someone else fills the disk: 4 MiB of 8, a's 3 taken, b's 3 do not fit.
    let blocker = cache.join("someone-else");
    fs::write(&blocker, vec![7u8; 4 << 20]).unwrap();
    for _ in 0..3 {
        assert_eq!(get("b"), b);
    }
    let warned = |log: &str| log.lines().filter(|l| l.contains("writing failed")).count();
    assert!(
        wait_until(Duration::from_secs(20), || warned(&srv.log()) >= 1),
        "{}",
        srv.log()
    );
    assert!(!cached(&b));
    assert_eq!(get("a"), a);
    // Space comes back: within the retry pause and a fill, b is cached, and the
    // outage was one warning.
    fs::remove_file(&blocker).unwrap();
    let back = wait_until(Duration::from_secs(60), || {
        assert_eq!(get("b"), b);
        cached(&b)
    });
    assert!(back, "b never cached after space came back:\n{}", srv.log());
    assert_eq!(warned(&srv.log()), 1, "{}", srv.log());
    assert!(srv.log().contains("writing works again"), "{}", srv.log());
    // Nothing partial is left on the disk.
    for e in fs::read_dir(&cache).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with(".part-"), "{name} left");
    }
    drop(srv);
}

/// Runs a command, panicking with its output if it fails.
fn must(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// A PostgreSQL server in a network namespace of its own, reached through a veth
/// pair: `cut` drops every packet on the link (as a dead switch or a pulled cable
/// does: no reset, no error, silence). Stopped and removed on drop.
struct NetnsCluster {
    ns: String,
    host_if: String,
    data: tempfile::TempDir,
    addr: String,
}

impl NetnsCluster {
    fn start() -> NetnsCluster {
        let id = std::process::id() % 200 + 20;
        let ns = format!("pgbt-cut-{id}");
        let host_if = format!("pgbth{id}");
        let ns_if = format!("pgbtn{id}");
        let (host_ip, ns_ip) = (format!("10.213.{id}.1"), format!("10.213.{id}.2"));
        let data = temp_dir("pgbt-netns-");
        let mut me = NetnsCluster {
            ns: ns.clone(),
            host_if: host_if.clone(),
            data,
            addr: ns_ip.clone(),
        };
        let ip = |args: &[&str]| must(Command::new("ip").args(args), &format!("ip {args:?}"));
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &ns]);
        ip(&["addr", "add", &format!("{host_ip}/24"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ns_ip}/24"),
            "dev",
            &ns_if,
        ]);
        ip(&["-n", &ns, "link", "set", &ns_if, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        let pgdata = me.data.path().join("d");
        must(
            Command::new("chown")
                .arg("postgres:postgres")
                .arg(me.data.path()),
            "chown",
        );
        must(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(pg_bin().join("initdb"))
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(&pgdata),
            "initdb",
        );
        let mut hba = fs::OpenOptions::new()
            .append(true)
            .open(pgdata.join("pg_hba.conf"))
            .unwrap();
        std::io::Write::write_all(&mut hba, b"host all all 10.213.0.0/16 trust\n").unwrap();
        let opts = format!(
            "-c listen_addresses={ns_ip} -p 5432 -k {}",
            me.data.path().display()
        );
        must(
            Command::new("ip")
                .args(["netns", "exec", &ns, "runuser", "-u", "postgres", "--"])
                .arg(pg_bin().join("pg_ctl"))
                .arg("-D")
                .arg(&pgdata)
                .arg("-l")
                .arg(me.data.path().join("log"))
                .args(["-w", "-o", &opts, "start"]),
            "pg_ctl start in the namespace",
        );
        me.addr = ns_ip;
        me
    }

    fn conninfo(&self) -> String {
        format!("host={} port=5432 user=postgres dbname=postgres", self.addr)
    }

    /// Every packet on the link is dropped from now on: the namespace's end goes
    /// down, and the host's end, still up, drops what it is given without a word
    /// (no reset, no error), as a dead switch does.
    fn cut(&self) {
        let ns_if = self.host_if.replace("pgbth", "pgbtn");
        must(
            Command::new("ip").args(["-n", &self.ns, "link", "set", &ns_if, "down"]),
            "ip link set down in the namespace",
        );
    }
}

impl Drop for NetnsCluster {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin().join("pg_ctl"))
            .arg("-D")
            .arg(self.data.path().join("d"))
            .args(["-m", "immediate", "stop"])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// Runs `f` on a thread; its result, or None if it took longer than `limit`
/// (the thread is then left to end on its own).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

#[test]
fn a_cut_network_fails_readers_within_the_bound_and_metadata_stays_fast() {
    if !fuse_or_skip("a_cut_network_fails_readers_within_the_bound_and_metadata_stays_fast") {
        return;
    }
    if !is_root() {
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
        assert!(!ci, "CI=true: this test needs root (a network namespace)");
        eprintln!("\n*** SKIPPING: a network namespace needs root ***\n");
        return;
    }
    let pg = NetnsCluster::start();
    let db = pg.conninfo();
    let mut c = postgres::Client::connect(&db, postgres::NoTls).unwrap();
    Maas::create_schema(&mut c);
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/generic", "1");
    let big = bytes(830, 128 << 20);
    m.file(s, "big", &big);
    drop(c);
    // A small memory cache: the reader cannot have the whole image in memory
    // before the cut. A short reconnect wait: the bound is detection plus it.
    let mnt = Mount::start(
        &db,
        &[
            "--cache-memory",
            "2",
            "--reconnect-timeout",
            "5",
            "--refresh",
            "1",
        ],
    );
    let path = mnt.path("ubuntu/amd64/generic/focal/1/big");
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let reader_path = path.clone();
    std::thread::spawn(move || {
        use std::io::Read;
        let res = (|| -> std::io::Result<Vec<u8>> {
            let mut f = fs::File::open(&reader_path)?;
            let mut got = vec![0u8; 1 << 20];
            f.read_exact(&mut got)?;
            let _ = started_tx.send(());
            // Slowly at first, so most of the image is still to come at the cut.
            std::thread::sleep(Duration::from_secs(2));
            f.read_to_end(&mut got)?;
            Ok(got)
        })();
        let _ = done_tx.send(res);
    });
    started_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the reader did not start");
    pg.cut();
    let cut_at = std::time::Instant::now();
    // Metadata comes from the catalog in memory: it answers while the reader waits.
    let dir = mnt.path("ubuntu/amd64/generic/focal/1");
    for _ in 0..3 {
        let d = dir.clone();
        let listed = within(Duration::from_secs(5), move || {
            fs::read_dir(&d).map(|r| r.count())
        });
        assert!(
            matches!(listed, Some(Ok(1))),
            "ls on the mount during the cut: {listed:?}"
        );
        let p = path.clone();
        let st = within(Duration::from_secs(5), move || {
            fs::metadata(&p).map(|m| m.len())
        });
        assert!(
            matches!(st, Some(Ok(n)) if n == 128 << 20),
            "stat on the mount during the cut: {st:?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    // Detection (tcp_user_timeout 15 s), then --reconnect-timeout 5 s; 60 s is
    // twice that, and a hang would never end.
    let res = done_rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("the reader hung past 60 s:\n{}", mnt.log()));
    match res {
        Err(e) => eprintln!("reader failed after {:?}: {e}", cut_at.elapsed()),
        Ok(got) => panic!(
            "the read ended without error across a cut link ({} bytes)",
            got.len()
        ),
    }
}
