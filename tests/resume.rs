//! Readers live through a database restart: through the mount and over HTTP, a
//! reader whose connection is lost pauses, sets up again on the same content and
//! reads on; it fails (EIO, a cut connection) only when the server stays away past
//! `--reconnect-timeout` or the content changed meanwhile, never with other bytes.

use std::fs;
use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::common::http::{Reply, Server};
use crate::common::*;

const DIR: &str = "ubuntu/amd64/generic/focal/1";

/// Small enough that a read-ahead stream runs only about 1 MiB ahead of a slow
/// reader: readers need the database while the server is down.
const CACHE_MIB: &str = "4";

/// A store with files `f0`.. of `len` bytes each; the cluster and the files' bytes.
fn files(n: usize, len: usize, seed: u64) -> (Cluster, Vec<Vec<u8>>, Vec<u32>) {
    let (pg, mut c) = store();
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/generic", "1");
    let data: Vec<Vec<u8>> = (0..n).map(|i| bytes(seed + i as u64, len)).collect();
    let oids = data
        .iter()
        .enumerate()
        .map(|(i, d)| m.file(s, &format!("f{i}"), d))
        .collect();
    (pg, data, oids)
}

/// Reads `path` at about `rate` bytes a second; the sha256 of what it read and
/// how many bytes, or the error with the bytes read before it.
fn slow_read(path: PathBuf, rate: u64) -> JoinHandle<Result<(String, u64), (std::io::Error, u64)>> {
    std::thread::spawn(move || {
        let mut f = fs::File::open(&path).map_err(|e| (e, 0))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 256 << 10];
        let mut n = 0u64;
        let start = Instant::now();
        loop {
            let got = f.read(&mut buf).map_err(|e| (e, n))?;
            if got == 0 {
                break;
            }
            h.update(&buf[..got]);
            n += got as u64;
            let due = Duration::from_secs_f64(n as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let sha = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok((sha, n))
    })
}

/// `curl` downloading `url` into `out` at `rate` bytes a second.
/// Two slow readers through the mount (f0, f1) and two slow downloads (f2, f3, into
/// `tmp`), all at `rate` bytes a second.
#[allow(clippy::type_complexity)]
fn four_slow_readers(
    mnt: &Mount,
    srv: &Server,
    tmp: &Path,
    rate: u64,
) -> (
    Vec<JoinHandle<Result<(String, u64), (std::io::Error, u64)>>>,
    Vec<Child>,
) {
    let readers = (0..2)
        .map(|i| slow_read(mnt.path(&format!("{DIR}/f{i}")), rate))
        .collect();
    let curls = (2..4)
        .map(|i| {
            slow_curl(
                &srv.url(&format!("/{DIR}/f{i}")),
                &tmp.join(format!("f{i}")),
                rate,
            )
        })
        .collect();
    (readers, curls)
}

fn slow_curl(url: &str, out: &Path, rate: u64) -> Child {
    Command::new("curl")
        .args(["-sS", "--fail", "--limit-rate", &rate.to_string(), "-o"])
        .arg(out)
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl (scripts/test installs it)")
}

/// A reader 1 MiB into `f0` through the mount and a download 1 MiB into `f1` over
/// HTTP: the open file and what it read, the connection and what it received
/// (the response head and the body's start).
fn readers_one_mib_in(mnt: &Mount, srv: &Server) -> (fs::File, Vec<u8>, TcpStream, Vec<u8>) {
    let mut f = fs::File::open(mnt.path(&format!("{DIR}/f0"))).unwrap();
    let mut head = vec![0u8; 1 << 20];
    f.read_exact(&mut head).unwrap();
    let mut http = TcpStream::connect(srv.addr).unwrap();
    http.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    std::io::Write::write_all(
        &mut http,
        format!("GET /{DIR}/f1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut first = vec![0u8; 1 << 20];
    http.read_exact(&mut first).unwrap();
    (f, head, http, first)
}

fn curl_result(child: Child) -> (Option<i32>, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn four_slow_readers_finish_byte_exact_across_a_fast_restart() {
    if !fuse_or_skip("four_slow_readers_finish_byte_exact_across_a_fast_restart") {
        return;
    }
    let len = 32 << 20;
    let (pg, data, _) = files(4, len, 700);
    let conninfo = pg.conninfo("postgres");
    let mnt = Mount::start(&conninfo, &["--refresh", "1", "--cache-memory", CACHE_MIB]);
    let srv = Server::start(&conninfo, &["--cache-memory", CACHE_MIB]);
    let tmp = temp_dir("pgbt-resume-");
    // About 5 s per file: the restart falls in the middle.
    let rate = 6 << 20;
    let (readers, curls) = four_slow_readers(&mnt, &srv, tmp.path(), rate);
    std::thread::sleep(Duration::from_millis(1500));
    // `pg_ctl restart -m fast`, with the server kept down for 2 s: longer than
    // the bytes readers have ahead of them in memory and in the kernel's
    // read-ahead, so every reader waits for the database.
    let t = Instant::now();
    pg.stop_server();
    std::thread::sleep(Duration::from_secs(2));
    pg.start_server();
    let restarted = t.elapsed();
    for (i, r) in readers.into_iter().enumerate() {
        let res = r.join().unwrap();
        let (sha, n) = res.unwrap_or_else(|(e, n)| {
            panic!(
                "mount reader {i} failed after {n} bytes: {e}\n{}",
                mnt.log()
            )
        });
        assert_eq!(n, len as u64, "mount reader {i}");
        assert_eq!(sha, sha256_hex(&data[i]), "mount reader {i}");
    }
    for (i, c) in curls.into_iter().enumerate() {
        let i = i + 2;
        let (code, err) = curl_result(c);
        assert_eq!(code, Some(0), "curl {i}: {err}\n{}", srv.log());
        let got = fs::read(tmp.path().join(format!("f{i}"))).unwrap();
        assert!(
            got == data[i],
            "curl {i}: {} bytes, or other bytes",
            got.len()
        );
    }
    // The readers were still reading when the server went: each process
    // reconnected, and no reader was done before the restart ended.
    assert!(
        t.elapsed() > restarted,
        "readers finished during the restart"
    );
    assert!(mnt.log().contains("reconnected"), "{}", mnt.log());
    assert!(srv.log().contains("reconnected"), "{}", srv.log());
    assert!(
        wait_until(Duration::from_secs(10), || handles_in_txn(&pg) == 0),
        "a handle stayed in a transaction"
    );
}

#[test]
fn a_server_gone_past_the_reconnect_timeout_gives_eio_and_the_mount_stays() {
    if !fuse_or_skip("a_server_gone_past_the_reconnect_timeout_gives_eio_and_the_mount_stays") {
        return;
    }
    let len = 32 << 20;
    let (pg, data, _) = files(2, len, 710);
    let conninfo = pg.conninfo("postgres");
    let timeout = 3;
    let opts = [
        "--refresh",
        "1",
        "--cache-memory",
        CACHE_MIB,
        "--reconnect-timeout",
        "3",
    ];
    let mnt = Mount::start(&conninfo, &opts);
    let srv = Server::start(&conninfo, &opts[2..]);
    let p = mnt.path(&format!("{DIR}/f0"));
    let (mut f, head, mut http, mut first) = readers_one_mib_in(&mnt, &srv);

    pg.stop_server();
    let t = Instant::now();
    // The reader reads on from memory, then waits for the database, then fails.
    let mut rest = Vec::new();
    let err = f.read_to_end(&mut rest).expect_err("the server stays away");
    let waited = t.elapsed();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        waited < Duration::from_secs(timeout + 5),
        "EIO after {waited:?}\n{}",
        mnt.log()
    );
    assert!(
        waited >= Duration::from_secs(timeout - 1),
        "EIO after {waited:?}: the reader did not wait to reconnect\n{}",
        mnt.log()
    );
    assert!(
        rest.len() < len - head.len(),
        "the whole file came from memory"
    );
    assert!(
        mnt.log().contains("raise --reconnect-timeout"),
        "{}",
        mnt.log()
    );
    // HTTP: the body stops short and the connection ends, within the same time.
    let mut body = Vec::new();
    let _ = http.read_to_end(&mut body);
    first.extend_from_slice(&body);
    assert!(
        t.elapsed() < Duration::from_secs(timeout + 5),
        "HTTP cut after {:?}",
        t.elapsed()
    );
    let reply = Reply::parse(&first);
    assert!(reply.body.len() < len, "{}", reply.body.len());
    assert!(
        data[1].starts_with(&reply.body),
        "HTTP sent bytes that are not the file's"
    );
    // The mount stays up and browsable; once the server is back, new opens work.
    assert!(is_mounted(&mnt.dir));
    assert!(mnt.path(DIR).join("f1").exists());
    drop(f);
    pg.start_server();
    assert!(
        wait_until(Duration::from_secs(15), || read_all(&p)
            .is_ok_and(|d| d == data[0])),
        "a new open after the server came back\n{}",
        mnt.log()
    );
    assert_eq!(srv.get(&format!("/{DIR}/f1"), &[]).body, data[1]);
    assert!(wait_until(Duration::from_secs(10), || handles_in_txn(&pg) == 0));
}

#[test]
fn content_replaced_while_the_server_was_down_gives_eio_not_other_bytes() {
    if !fuse_or_skip("content_replaced_while_the_server_was_down_gives_eio_not_other_bytes") {
        return;
    }
    let len = 32 << 20;
    let (pg, data, oids) = files(2, len, 720);
    let conninfo = pg.conninfo("postgres");
    let opts = ["--refresh", "1", "--cache-memory", CACHE_MIB];
    let mnt = Mount::start(&conninfo, &opts);
    let srv = Server::start(&conninfo, &opts[2..]);
    let (mut f, mut got, mut http, mut first) = readers_one_mib_in(&mnt, &srv);

    // While pgbootfs cannot reach the server (it listens on another port), both
    // images are replaced and their old objects unlinked, as a re-import does.
    pg.stop_server();
    pg.start_server_with("-p 5433");
    let mut c = pg.client_on_port("postgres", 5433);
    let mut m = Maas { client: &mut c };
    for (i, oid) in oids.iter().enumerate() {
        m.replace_content(*oid, &bytes(730 + i as u64, len));
    }
    drop(c);
    pg.stop_server();
    pg.start_server();

    let mut buf = vec![0u8; 256 << 10];
    let err = loop {
        match f.read(&mut buf) {
            Ok(0) => panic!("read to the end: {} bytes\n{}", got.len(), mnt.log()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        data[0].starts_with(&got),
        "the mount reader got bytes that are not the file it opened"
    );
    let mut body = Vec::new();
    match http.read_to_end(&mut body) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("HTTP: {e}"),
    }
    first.extend_from_slice(&body);
    let reply = Reply::parse(&first);
    assert!(reply.body.len() < len, "HTTP sent the whole body");
    assert!(
        data[1].starts_with(&reply.body),
        "HTTP sent bytes that are not the file it opened"
    );
    for log in [mnt.log(), srv.log()] {
        assert!(log.contains("not what was opened"), "{log}");
    }
    assert!(wait_until(Duration::from_secs(10), || handles_in_txn(&pg) == 0));
}

#[test]
fn readers_move_to_the_promoted_standby_when_the_primary_stops() {
    if !fuse_or_skip("readers_move_to_the_promoted_standby_when_the_primary_stops") {
        return;
    }
    let len = 32 << 20;
    let (primary, data, _) = files(4, len, 740);
    let standby = Cluster::standby_of(&primary, "");
    standby.wait_caught_up_with(&primary);
    // Both hosts, primary first, as libpq's multi-host conninfo.
    let conninfo = format!(
        "host={},{} port=5432 user=postgres dbname=postgres",
        primary.host().display(),
        standby.host().display()
    );
    let mnt = Mount::start(&conninfo, &["--refresh", "1", "--cache-memory", CACHE_MIB]);
    let srv = Server::start(&conninfo, &["--cache-memory", CACHE_MIB]);
    let tmp = temp_dir("pgbt-failover-");
    let rate = 6 << 20;
    let (readers, curls) = four_slow_readers(&mnt, &srv, tmp.path(), rate);
    assert!(
        wait_until(Duration::from_secs(10), || handles_in_txn(&primary) >= 4),
        "the readers are not reading from the primary"
    );
    std::thread::sleep(Duration::from_millis(500));
    primary.stop_server();
    standby.promote();
    for (i, r) in readers.into_iter().enumerate() {
        let (sha, n) = r.join().unwrap().unwrap_or_else(|(e, n)| {
            panic!(
                "mount reader {i} failed after {n} bytes: {e}\n{}",
                mnt.log()
            )
        });
        assert_eq!(
            (n, sha),
            (len as u64, sha256_hex(&data[i])),
            "mount reader {i}"
        );
    }
    for (i, c) in curls.into_iter().enumerate() {
        let i = i + 2;
        let (code, err) = curl_result(c);
        assert_eq!(code, Some(0), "curl {i}: {err}\n{}", srv.log());
        let got = fs::read(tmp.path().join(format!("f{i}"))).unwrap();
        assert!(
            got == data[i],
            "curl {i}: {} bytes, or other bytes",
            got.len()
        );
    }
    assert!(mnt.log().contains("reconnected"), "{}", mnt.log());
    assert!(srv.log().contains("reconnected"), "{}", srv.log());
    assert!(
        wait_until(Duration::from_secs(10), || handles_in_txn(&standby) == 0),
        "a handle stayed in a transaction on the new primary"
    );
}

#[test]
fn a_reader_cut_by_a_standby_conflict_reads_on_and_one_whose_object_went_gets_eio() {
    if !fuse_or_skip(
        "a_reader_cut_by_a_standby_conflict_reads_on_and_one_whose_object_went_gets_eio",
    ) {
        return;
    }
    let len = 32 << 20;
    let (primary, data, oids) = files(2, len, 750);
    let junk: u32 = primary
        .client("postgres")
        .query_one("SELECT lo_from_bytea(0, $1)", &[&bytes(759, 4 << 20)])
        .unwrap()
        .get(0);
    // Replay waits for no reader: a conflicting session is cut at once.
    let standby = Cluster::standby_of(&primary, "-c max_standby_streaming_delay=0");
    standby.wait_caught_up_with(&primary);
    let mnt = Mount::start(
        &standby.conninfo("postgres"),
        &["--refresh", "1", "--cache-memory", CACHE_MIB],
    );
    // Two readers pause mid-file, their snapshots open on the standby.
    let mut files: Vec<fs::File> = (0..2)
        .map(|i| fs::File::open(mnt.path(&format!("{DIR}/f{i}"))).unwrap())
        .collect();
    let mut got: Vec<Vec<u8>> = vec![vec![0u8; 1 << 20]; 2];
    for (f, g) in files.iter_mut().zip(&mut got) {
        f.read_exact(g).unwrap();
    }
    assert_eq!(handles_in_txn(&standby), 2);
    // On the primary: f1 is replaced (its object unlinked), another object goes,
    // and VACUUM removes their rows, which the readers' snapshots still see.
    let mut c = primary.client("postgres");
    Maas { client: &mut c }.replace_content(oids[1], &bytes(760, len));
    c.execute("SELECT lo_unlink($1)", &[&junk]).unwrap();
    c.batch_execute("VACUUM pg_largeobject").unwrap();
    standby.wait_caught_up_with(&primary);
    let conflicts = || -> i64 {
        standby
            .client("postgres")
            .query_one(
                "SELECT confl_snapshot FROM pg_stat_database_conflicts \
                 WHERE datname = 'postgres'",
                &[],
            )
            .unwrap()
            .get(0)
    };
    assert!(
        wait_until(Duration::from_secs(10), || conflicts() > 0),
        "replay cut no reader:\n{}",
        standby.server_log()
    );
    // f0 is still the content it was opened on: its reader reads on.
    let mut rest = Vec::new();
    files[0]
        .read_to_end(&mut rest)
        .unwrap_or_else(|e| panic!("f0: {e}\n{}", mnt.log()));
    got[0].extend_from_slice(&rest);
    assert!(got[0] == data[0], "f0: other bytes");
    // f1's object is gone: EIO, and only the original's bytes before it.
    let mut buf = vec![0u8; 256 << 10];
    let err = loop {
        match files[1].read(&mut buf) {
            Ok(0) => panic!("f1 read to the end\n{}", mnt.log()),
            Ok(n) => got[1].extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(data[1].starts_with(&got[1]), "f1: bytes of other content");
    assert!(mnt.log().contains("reconnected"), "{}", mnt.log());
    drop(files);
    assert!(wait_until(Duration::from_secs(10), || handles_in_txn(
        &standby
    ) == 0));
}
