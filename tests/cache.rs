//! Many readers, few connections: the shared chunk cache, lazy and idle-released
//! handles, and a mount whose metadata never waits behind its data.

use std::fs;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::http::Server;
use crate::common::*;

const DIR: &str = "ubuntu/amd64/generic/focal/1";

/// Handle connections of ours now, and how many sit in a transaction.
fn handle_backends(c: &mut postgres::Client) -> (i64, i64) {
    let row = c
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE xact_start IS NOT NULL) \
             FROM pg_stat_activity WHERE application_name = 'pgbootfs-handle'",
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

/// pgbootfs sessions idle inside a transaction.
fn idle_in_txn(c: &mut postgres::Client) -> i64 {
    c.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgbootfs%' \
         AND state LIKE 'idle in transaction%'",
        &[],
    )
    .unwrap()
    .get(0)
}

/// Samples the number of handle connections every 20 ms while `busy` holds;
/// returns the largest seen.
fn sample_max(pg: &Cluster, busy: Arc<AtomicBool>) -> std::thread::JoinHandle<i64> {
    let mut c = pg.client("postgres");
    std::thread::spawn(move || {
        let mut max = 0;
        while busy.load(Ordering::Relaxed) {
            max = max.max(handle_backends(&mut c).0);
            std::thread::sleep(Duration::from_millis(20));
        }
        max
    })
}

/// Runs `n` copies of a shell command at once; returns each one's stdout.
fn storm(n: usize, cmd: &str) -> Vec<String> {
    let children: Vec<_> = (0..n)
        .map(|_| {
            Command::new("sh")
                .args(["-c", cmd])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "`{cmd}` failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).to_string()
        })
        .collect()
}

/// 150 copies of `cmd` at once, each of which must print `want` first; returns
/// the most handle connections seen meanwhile and the blocks of pg_largeobject
/// the server read.
fn checked_storm(pg: &Cluster, cmd: &str, want: &str) -> (i64, i64) {
    let mut c = pg.client("postgres");
    let before = lo_blocks(&mut c);
    let busy = Arc::new(AtomicBool::new(true));
    let sampler = sample_max(pg, busy.clone());
    let outs = storm(150, cmd);
    busy.store(false, Ordering::Relaxed);
    let most = sampler.join().unwrap();
    for out in &outs {
        assert!(out.starts_with(want), "`{cmd}` printed {out}");
    }
    (most, lo_blocks(&mut c) - before)
}

#[test]
fn a_storm_of_readers_costs_one_database_read_and_few_connections() {
    if !fuse_or_skip("a_storm_of_readers_costs_one_database_read_and_few_connections") {
        return;
    }
    let (pg, mut c) = store();
    c.execute("ALTER SYSTEM SET max_connections = 300", &[])
        .unwrap();
    drop(c);
    pg.restart();
    let mut c = pg.client("postgres");
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/generic", "1");
    let data = bytes(201, 16 << 20);
    let oid = m.file(s, "squashfs", &data);
    let want = sha256_hex(&data);

    // What one plain read of the object costs the server, in blocks.
    let before = lo_blocks(&mut c);
    c.query_one("SELECT length(lo_get($1))", &[&oid]).unwrap();
    let one_read = lo_blocks(&mut c) - before;
    assert!(one_read > 0);

    let mnt = Mount::start(&pg.conninfo("postgres"), &[]);
    let path = mnt.path(&format!("{DIR}/squashfs"));
    let (most, blocks) = checked_storm(&pg, &format!("sha256sum '{}'", path.display()), &want);
    assert!(most <= 4, "{most} handle connections during the storm");
    assert!(
        blocks as f64 <= 1.3 * one_read as f64,
        "the mount's storm read {blocks} blocks; one read is {one_read}\n{}",
        mnt.log()
    );
    drop(mnt);

    // The same over HTTP, from a fresh server (an empty cache).
    let srv = Server::start(&pg.conninfo("postgres"), &[]);
    let url = srv.url(&format!("/{DIR}/squashfs"));
    let (most, blocks) = checked_storm(&pg, &format!("curl -sf '{url}' | sha256sum"), &want);
    assert!(most <= 4, "{most} handle connections during the HTTP storm");
    assert!(
        blocks as f64 <= 1.3 * one_read as f64,
        "the HTTP storm read {blocks} blocks; one read is {one_read}\n{}",
        srv.log()
    );
    assert!(!srv.log().contains(" 503 "), "{}", srv.log());
}

#[test]
fn hundreds_of_open_files_do_not_starve_readers_of_connections() {
    if !fuse_or_skip("hundreds_of_open_files_do_not_starve_readers_of_connections") {
        return;
    }
    let (pg, mut c) = store();
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/generic", "1");
    let files: Vec<Vec<u8>> = (0..8).map(|i| bytes(300 + i, 4 << 20)).collect();
    for (i, d) in files.iter().enumerate() {
        m.file(s, &format!("f{i}"), d);
    }
    let mnt = Mount::start(&pg.conninfo("postgres"), &["--max-handles", "4"]);
    let path = |i: usize| mnt.path(&format!("{DIR}/f{}", i % 8));
    // 500 descriptors held open, some of them read a little, as a web server's
    // open-file cache or a backup tool would hold them.
    let held: Vec<fs::File> = (0..500)
        .map(|i| {
            let f = fs::File::open(path(i)).unwrap();
            if i % 50 == 0 {
                f.read_exact_at(&mut [0u8; 16], 0).unwrap();
            }
            f
        })
        .collect();
    std::thread::scope(|s| {
        for r in 0..20 {
            let (path, files) = (&path, &files);
            s.spawn(move || {
                let got = fs::read(path(r)).unwrap_or_else(|e| panic!("reader {r}: {e}"));
                assert!(got == files[r % 8], "reader {r} got other bytes");
            });
        }
    });
    drop(held);
    assert!(!mnt.log().contains("busy for"), "{}", mnt.log());
}

#[test]
fn metadata_answers_at_once_while_reads_wait_for_connections() {
    if !fuse_or_skip("metadata_answers_at_once_while_reads_wait_for_connections") {
        return;
    }
    let (pg, mut c) = store();
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/generic", "1");
    for i in 0..6 {
        m.file(s, &format!("f{i}"), &bytes(400 + i, 48 << 20));
    }
    let pool_timeout = 4;
    let mnt = Mount::start(
        &pg.conninfo("postgres"),
        &[
            "--max-handles",
            "2",
            "--pool-timeout",
            &pool_timeout.to_string(),
        ],
    );
    let path = |i: usize| mnt.path(&format!("{DIR}/f{i}"));
    // Two readers mid-way through their files hold both connections.
    let holders: Vec<fs::File> = (0..2)
        .map(|i| {
            let mut f = fs::File::open(path(i)).unwrap();
            f.read_exact(&mut [0u8; 10]).unwrap();
            f
        })
        .collect();
    assert_eq!(handle_backends(&mut c).1, 2, "both connections held");
    // Four more readers wait for a connection, on the read threads.
    let waits = Arc::new(Mutex::new(Vec::new()));
    let started = Arc::new(AtomicU64::new(0));
    std::thread::scope(|s| {
        for i in 2..6 {
            let (waits, started, path) = (waits.clone(), started.clone(), &path);
            s.spawn(move || {
                let mut f = fs::File::open(path(i)).unwrap();
                started.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let r = f.read(&mut [0u8; 10]);
                waits
                    .lock()
                    .unwrap()
                    .push((t.elapsed(), r.map_err(|e| e.raw_os_error())));
            });
        }
        assert!(wait_until(Duration::from_secs(5), || started
            .load(Ordering::Relaxed)
            == 4));
        std::thread::sleep(Duration::from_millis(300));
        // Meanwhile stat, ls -l and find answer at once.
        for (what, cmd) in [
            ("stat", format!("stat '{}'", path(5).display())),
            ("ls -l", format!("ls -l '{}'", mnt.path(DIR).display())),
            ("find", format!("find '{}'", mnt.dir.display())),
        ] {
            let t = Instant::now();
            sh(&cmd);
            eprintln!("{what} under a saturated pool: {:?}", t.elapsed());
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "{what} took {:?} while reads waited",
                t.elapsed()
            );
        }
    });
    let waits = waits.lock().unwrap();
    assert_eq!(waits.len(), 4);
    for (took, res) in waits.iter() {
        assert_eq!(*res, Err(Some(libc::EAGAIN)), "a waiting read");
        assert!(
            *took <= Duration::from_secs(pool_timeout + 1),
            "a waiting read took {took:?}, past --pool-timeout"
        );
    }
    drop(holders);
}

#[test]
fn an_idle_open_file_gives_back_its_snapshot_and_sets_up_again() {
    if !fuse_or_skip("an_idle_open_file_gives_back_its_snapshot_and_sets_up_again") {
        return;
    }
    let (pg, mut c) = store();
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/generic", "1");
    let data = bytes(500, 64 << 20);
    let oid = m.file(s, "squashfs", &data);
    // The smallest memory cache, so later reads need the database again.
    let mnt = Mount::start(
        &pg.conninfo("postgres"),
        &["--handle-idle", "2", "--cache-memory", "0"],
    );
    let f = fs::File::open(mnt.path(&format!("{DIR}/squashfs"))).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    f.read_exact_at(&mut buf[..10], 0).unwrap();
    assert_eq!(handle_backends(&mut c).1, 1, "the first read set up");
    let released = wait_until(Duration::from_secs(8), || {
        handle_backends(&mut c).1 == 0 && idle_in_txn(&mut c) == 0
    });
    assert!(
        released,
        "still in a transaction after --handle-idle:\n{}",
        mnt.log()
    );
    // The next read sets up again and gets the right bytes.
    let at = 40 << 20;
    f.read_exact_at(&mut buf, at as u64).unwrap();
    assert!(
        buf == data[at..at + (1 << 20)],
        "bytes after the set-up again"
    );

    // The image is replaced and its object unlinked while the file is open.
    Maas { client: &mut c }.replace_content(oid, &bytes(501, 64 << 20));
    assert!(wait_until(Duration::from_secs(8), || handle_backends(
        &mut c
    )
    .1 == 0));
    // Its next set-up finds the content gone: EIO, never other bytes.
    let e = f.read_exact_at(&mut buf, 20 << 20).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
}

#[test]
fn probes_of_unsupported_calls_are_answered_quietly() {
    if !fuse_or_skip("probes_of_unsupported_calls_are_answered_quietly") {
        return;
    }
    let (pg, mut c) = store();
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/generic", "1");
    m.file(s, "boot-kernel", &bytes(600, 5000));
    let mnt = Mount::start(&pg.conninfo("postgres"), &[]);
    let p = mnt.path(&format!("{DIR}/boot-kernel"));
    // isatty() is a TCGETS ioctl; the answer must be "not a terminal".
    let out = sh(&format!(
        "python3 -c 'import sys; print(open(sys.argv[1], \"rb\").isatty())' '{}'",
        p.display()
    ));
    assert_eq!(out.trim(), "False");
    let _ = Command::new("file").arg(&p).output();
    assert!(!mnt.log().contains("Not Implemented"), "{}", mnt.log());
}

/// nginx, as a web server serving the mount would run it; stopped on drop.
struct Nginx {
    child: Option<std::process::Child>,
    port: u16,
    _tmp: tempfile::TempDir,
}

impl Nginx {
    fn start(root: &std::path::Path) -> Option<Nginx> {
        let exe = std::env::var("PGBOOTFS_NGINX").ok().or_else(|| {
            ["/usr/sbin/nginx", "/usr/bin/nginx"]
                .iter()
                .find(|p| std::path::Path::new(p).exists())
                .map(|p| p.to_string())
        });
        let Some(exe) = exe else {
            assert!(
                std::env::var("CI").is_err(),
                "nginx not found but CI is set: scripts/test installs it"
            );
            eprintln!("*** SKIPPING: nginx not found (scripts/test installs it) ***");
            return None;
        };
        let tmp = temp_dir("pgbt-nginx-");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tmp.path().display().to_string();
        // open_file_cache keeps descriptors open long after the last request: the
        // case where a file held open must not hold a snapshot.
        let conf = format!(
            "daemon off; master_process on; user root; worker_processes 2;\n\
             pid {dir}/nginx.pid; error_log {dir}/error.log;\n\
             events {{ worker_connections 512; }}\n\
             http {{ access_log off; sendfile on;\n\
               open_file_cache max=100 inactive=600s; open_file_cache_valid 600s;\n\
               client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir};\n\
               uwsgi_temp_path {dir}; scgi_temp_path {dir};\n\
               server {{ listen 127.0.0.1:{port}; root {}; }} }}\n",
            root.display()
        );
        fs::write(tmp.path().join("nginx.conf"), conf).unwrap();
        let child = Command::new(exe)
            .arg("-c")
            .arg(tmp.path().join("nginx.conf"))
            .arg("-p")
            .arg(tmp.path())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let n = Nginx {
            child: Some(child),
            port,
            _tmp: tmp,
        };
        let up = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "nginx did not start");
        Some(n)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            // SIGQUIT: nginx's graceful stop; terminate() follows with SIGTERM/KILL.
            // SAFETY: kill on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGQUIT) };
            terminate(child);
        }
    }
}

#[test]
fn nginx_with_open_file_cache_serves_the_mount_and_holds_no_snapshot() {
    if !fuse_or_skip("nginx_with_open_file_cache_serves_the_mount_and_holds_no_snapshot") {
        return;
    }
    let (pg, mut c) = store();
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/generic", "1");
    let files: Vec<Vec<u8>> = (0..4).map(|i| bytes(700 + i, 8 << 20)).collect();
    for (i, d) in files.iter().enumerate() {
        m.file(s, &format!("f{i}"), d);
    }
    let idle = 3;
    let mnt = Mount::start(
        &pg.conninfo("postgres"),
        &["--handle-idle", &idle.to_string()],
    );
    let Some(nginx) = Nginx::start(&mnt.dir) else {
        return;
    };
    let children: Vec<_> = (0..100)
        .map(|i| {
            Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "curl -sf http://127.0.0.1:{}/{DIR}/f{} | sha256sum",
                    nginx.port,
                    i % 4
                ))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let sum = String::from_utf8_lossy(&out.stdout);
        assert!(
            sum.starts_with(&sha256_hex(&files[i % 4])),
            "download {i} got {sum}\n{}",
            mnt.log()
        );
    }
    // nginx keeps the files open; their handles must still give back their
    // connections and snapshots.
    let released = wait_until(Duration::from_secs(idle + 10), || {
        handle_backends(&mut c).1 == 0 && idle_in_txn(&mut c) == 0
    });
    assert!(released, "a handle kept its transaction:\n{}", mnt.log());
    let out = sh(&format!(
        "curl -sf http://127.0.0.1:{}/{DIR}/f2 | sha256sum",
        nginx.port
    ));
    assert!(out.starts_with(&sha256_hex(&files[2])));
}

/// Names in a cache directory: sha256-named files and `.part` files.
fn cache_entries(dir: &std::path::Path) -> (Vec<String>, Vec<String>) {
    let mut done = Vec::new();
    let mut parts = Vec::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with(".part-") {
            parts.push(name);
        } else if !name.starts_with('.') {
            done.push(name);
        }
    }
    done.sort();
    (done, parts)
}

#[test]
fn the_disk_cache_keeps_verified_images_and_serves_them_without_the_database() {
    if !fuse_or_skip("the_disk_cache_keeps_verified_images_and_serves_them_without_the_database") {
        return;
    }
    let (pg, mut c) = store();
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/generic", "1");
    let a = bytes(800, 8 << 20);
    let b = bytes(801, 3 << 20);
    m.file(s, "a", &a);
    let b_oid = m.file(s, "b", &b);
    let (sha_a, sha_b) = (sha256_hex(&a), sha256_hex(&b));
    let cache = temp_dir("pgbt-cache-");
    let dir = cache.path().join("c");
    let args = [
        "--refresh",
        "1",
        "--cache-dir",
        dir.to_str().unwrap(),
        "--cache-size",
        "10",
    ];
    let mut mnt = Mount::start(&pg.conninfo("postgres"), &args);
    let pa = mnt.path(&format!("{DIR}/a"));
    let pb = mnt.path(&format!("{DIR}/b"));

    // A whole read fills the cache, under its sha256, once the hash matched.
    let held = fs::File::open(&pa).unwrap();
    held.read_exact_at(&mut [0u8; 16], 0).unwrap();
    assert!(fs::read(&pa).unwrap() == a);
    assert!(
        wait_until(Duration::from_secs(10), || cache_entries(&dir).0
            == [sha_a.clone()]),
        "{:?}\n{}",
        cache_entries(&dir),
        mnt.log()
    );
    assert!(cache_entries(&dir).1.is_empty(), "no .part file left");
    assert_eq!(sha256_hex(&fs::read(dir.join(&sha_a)).unwrap()), sha_a);

    // The file held open from before it was cached keeps later opens of the same
    // inode off passthrough (the kernel refuses to mix the two modes on one inode).
    let again = fs::read(&pa).expect("an open while an earlier one is held");
    assert!(again == a);
    drop(held);

    // Passthrough: once open, the file is read by the kernel from the cache file,
    // with the daemon stopped cold.
    if mnt.log().contains("passthrough: on") {
        let _ = fs::write("/proc/sys/vm/drop_caches", "3");
        let f = fs::File::open(&pa).unwrap();
        let pid = mnt.child.as_ref().unwrap().id() as i32;
        // SAFETY: signals to our own child.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        // Plain reads (no stat, which may ask the daemon for attributes).
        let len = a.len();
        // The file goes back open: closing it sends FLUSH, which needs the daemon.
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; len];
            let r = f.read_exact_at(&mut buf, 0).map(|_| buf);
            (f, r)
        });
        let done = wait_until(Duration::from_secs(10), || reader.is_finished());

        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        assert!(done, "a passthrough read needed the stopped daemon");
        assert!(reader.join().unwrap().1.unwrap() == a, "passthrough bytes");
    } else {
        eprintln!("*** passthrough not available here: its part of this test is skipped ***");
    }

    // --cache-size 10 MiB: b (3 MiB) pushes out a (8 MiB), the least recently used.
    assert!(fs::read(&pb).unwrap() == b);
    assert!(
        wait_until(Duration::from_secs(10), || cache_entries(&dir).0
            == [sha_b.clone()]),
        "{:?}",
        cache_entries(&dir)
    );

    // After a restart, with the database down, b comes from the cache.
    mnt.stop_with(libc::SIGTERM);
    drop(mnt);
    let mnt = Mount::start(&pg.conninfo("postgres"), &args);
    assert!(wait_until(Duration::from_secs(10), || mnt
        .log()
        .contains("1 file(s) verified")));
    pg.stop_server();
    let got = fs::read(mnt.path(&format!("{DIR}/b")));
    pg.start_server();
    assert!(
        got.unwrap() == b,
        "served from the cache with the database down"
    );
    drop(mnt);

    // A byte flipped on disk is found at the next start; the file is fetched again.
    let victim = dir.join(&sha_b);
    let mut raw = fs::read(&victim).unwrap();
    raw[12345] ^= 0xff;
    fs::write(&victim, &raw).unwrap();
    let mnt = Mount::start(&pg.conninfo("postgres"), &args);
    assert!(
        wait_until(Duration::from_secs(10), || mnt
            .log()
            .contains("does not hash")),
        "{}",
        mnt.log()
    );
    assert!(fs::read(mnt.path(&format!("{DIR}/b"))).unwrap() == b);
    assert!(wait_until(Duration::from_secs(10), || {
        fs::read(&victim).is_ok_and(|d| sha256_hex(&d) == sha_b)
    }));

    // A replaced image's old file leaves the cache. (The server restarted: a new
    // client.)
    let mut c = pg.client("postgres");
    Maas { client: &mut c }.replace_content(b_oid, &bytes(802, 1 << 20));
    assert!(
        wait_until(Duration::from_secs(10), || !victim.exists()),
        "{}",
        mnt.log()
    );
}

#[test]
fn content_that_does_not_match_its_sha256_is_never_cached() {
    if !fuse_or_skip("content_that_does_not_match_its_sha256_is_never_cached") {
        return;
    }
    let (pg, mut c) = store();
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/generic", "1");
    let good = bytes(810, 2 << 20);
    m.file(s, "k", &good);
    // The stored bytes differ from what the row's sha256 says (a corrupted object).
    c.execute(
        "SELECT lo_put(content, 1000, '\\xdeadbeef'::bytea) FROM maasserver_largefile",
        &[],
    )
    .unwrap();
    let cache = temp_dir("pgbt-cache-");
    let dir = cache.path().join("c");
    let mnt = Mount::start(
        &pg.conninfo("postgres"),
        &["--cache-dir", dir.to_str().unwrap()],
    );
    let _ = fs::read(mnt.path(&format!("{DIR}/k"))).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || mnt.log().contains("not cached")),
        "{}",
        mnt.log()
    );
    assert_eq!(cache_entries(&dir), (vec![], vec![]), "nothing kept");
}

#[test]
fn a_kill_during_a_cache_write_leaves_nothing_servable() {
    if !fuse_or_skip("a_kill_during_a_cache_write_leaves_nothing_servable") {
        return;
    }
    let (pg, mut c) = store();
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/generic", "1");
    let data = bytes(820, 96 << 20);
    m.file(s, "big", &data);
    let cache = temp_dir("pgbt-cache-");
    let dir = cache.path().join("c");
    let args = ["--cache-dir", dir.to_str().unwrap()];
    let mut mnt = Mount::start(&pg.conninfo("postgres"), &args);
    let f = fs::File::open(mnt.path(&format!("{DIR}/big"))).unwrap();
    f.read_exact_at(&mut [0u8; 10], 0).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !cache_entries(&dir)
            .1
            .is_empty()
            || !cache_entries(&dir).0.is_empty()),
        "the fill never started"
    );
    mnt.stop_with(libc::SIGKILL);
    drop(f);
    drop(mnt);
    // Whatever was left: nothing under a sha256 name that does not hash to it.
    for name in cache_entries(&dir).0 {
        assert_eq!(sha256_hex(&fs::read(dir.join(&name)).unwrap()), name);
    }
    // The next start removes the dead process's partial file, and serves right.
    let mnt = Mount::start(&pg.conninfo("postgres"), &args);
    assert!(
        cache_entries(&dir).1.is_empty(),
        "{:?}",
        cache_entries(&dir)
    );
    assert_eq!(
        sha256_hex(&fs::read(mnt.path(&format!("{DIR}/big"))).unwrap()),
        sha256_hex(&data)
    );
}

#[test]
fn an_unusable_cache_directory_is_one_clear_line() {
    let (pg, _c) = store();
    let tmp = temp_dir("pgbt-cache-");
    let not_a_dir = tmp.path().join("file");
    fs::write(&not_a_dir, b"x").unwrap();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let out = Command::new(bin())
        .args(["--db", &pg.conninfo("postgres"), "mount"])
        .arg(&mnt)
        .arg("--cache-dir")
        .arg(&not_a_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--cache-dir") && err.contains(&*not_a_dir.to_string_lossy()),
        "{err}"
    );
    assert!(!is_mounted(&mnt));
}
