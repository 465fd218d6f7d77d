//! The handle type on its own, against a real PostgreSQL: every access pattern the
//! kernel or an HTTP client produces must return the stored bytes.

use std::time::Duration;

use crate::common::*;
use pgbootfs::catalog::FileInfo;
use pgbootfs::db::DbConfig;
use pgbootfs::handle::{Handle, HandlePool, PoolOptions};

fn setup(data: &[u8]) -> (Cluster, HandlePool, FileInfo) {
    let (pg, mut c) = store();
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/generic", "1");
    let oid = m.file(s, "squashfs", data);
    let db = DbConfig::resolve(Some(&pg.conninfo("postgres"))).unwrap();
    let pool = HandlePool::new(
        &db,
        &PoolOptions {
            max: 4,
            timeout: Duration::from_secs(5),
            ..PoolOptions::default()
        },
    );
    let info = FileInfo {
        oid,
        size: data.len() as u64,
        sha256: sha256_hex(data),
        filetype: "squashfs".into(),
        stored: None,
    };
    (pg, pool, info)
}

fn read(h: &Handle, off: u64, len: usize) -> Vec<u8> {
    h.read_with(off, len, |b| b.to_vec()).unwrap()
}

fn expect(data: &[u8], off: u64, len: usize) -> &[u8] {
    let s = (off as usize).min(data.len());
    &data[s..(s + len).min(data.len())]
}

#[test]
fn sequential_out_of_order_and_seeking_reads_return_the_stored_bytes() {
    let data = bytes(1, 40 * (1 << 20) + 4321);
    let (_pg, pool, file) = setup(&data);
    let h = pool.open(&file, "/t/squashfs");
    assert!(!h.holds_connection(), "set-up waits for the first read");
    h.prepare(0).unwrap();
    h.prepare(0).unwrap(); // idempotent
    assert!(h.holds_connection());

    // A sequential reader in kernel-sized requests, with neighbours swapped as the
    // kernel's parallel read-ahead does.
    let step = 128 << 10;
    let mut off = 0u64;
    let mut got = Vec::new();
    while off < data.len() as u64 {
        let next = off + step as u64;
        if next < data.len() as u64 && (off / step as u64) % 3 == 1 {
            let b = read(&h, next, step);
            assert_eq!(b, expect(&data, next, step), "ahead at {next}");
        }
        got.extend(read(&h, off, step));
        off = next;
    }
    assert_eq!(sha256_hex(&got), sha256_hex(&data), "whole file");

    // Seeks back and forth, reads spanning chunk boundaries, reads past the end.
    for (off, len) in [
        (0u64, 10usize),
        (30 << 20, 3 << 20),
        (1 << 20, 1 << 20),
        ((1 << 20) - 7, 14),
        (5 << 20, 1),
        (data.len() as u64 - 3, 100),
        (data.len() as u64, 10),
        (data.len() as u64 + 5, 10),
        (12 << 20, 5 << 20),
        ((13 << 20) + 999, 128 << 10),
    ] {
        assert_eq!(
            read(&h, off, len),
            expect(&data, off, len),
            "at {off}+{len}"
        );
    }
    let mut buf = vec![0u8; 1000];
    assert_eq!(h.read_into(data.len() as u64 - 10, &mut buf).unwrap(), 10);
    assert_eq!(&buf[..10], &data[data.len() - 10..]);
    h.close();
    assert!(
        h.read_with(0, 10, |b| b.len()).is_err(),
        "closed handle refuses reads"
    );
}

#[test]
fn many_handles_read_in_parallel_and_give_their_connections_back() {
    let data = bytes(2, 9 * (1 << 20) + 5);
    let (pg, pool, file) = setup(&data);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (pool, data, file) = (&pool, &data, &file);
            s.spawn(move || {
                for round in 0..3u64 {
                    let h = pool.open(file, "/t/squashfs");
                    // Each thread starts at a different place and streams on.
                    let mut off = (t * 2 + round) << 20;
                    while off < data.len() as u64 {
                        assert_eq!(read(&h, off, 1 << 20), expect(data, off, 1 << 20));
                        off += 1 << 20;
                    }
                }
            });
        }
    });
    let mut c = pg.client("postgres");
    let in_txn: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbootfs-handle' \
             AND xact_start IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(in_txn, 0, "every handle ended its transaction");
    assert!(pool.connections() <= 4);
}

#[test]
fn errors_keep_the_servers_sqlstate_and_are_classified_once() {
    let data = bytes(3, 1000);
    let (pg, pool, file) = setup(&data);
    let mut c = pg.client("postgres");
    c.execute("SELECT lo_unlink($1)", &[&file.oid]).unwrap();
    let h = pool.open(&file, "/t/gone");
    let e = h.prepare(0).expect_err("the object is gone");
    assert_eq!(e.class(), pgbootfs::handle::ErrorClass::Gone, "{e}");
    let pg_err = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<postgres::Error>())
        .expect("the driver's error is kept as the source");
    assert_eq!(
        pg_err.code(),
        Some(&postgres::error::SqlState::UNDEFINED_OBJECT)
    );
    assert!(e.to_string().starts_with("/t/gone: "), "{e}");
}

#[test]
fn a_seeking_reader_reads_on_after_a_restart_and_a_new_one_fails_at_once_while_down() {
    let data = bytes(4, 40 << 20);
    let (pg, pool, file) = setup(&data);
    let h = pool.open(&file, "/t/squashfs");
    // Far apart: one-chunk fetches on the handle's own connection, no stream.
    assert_eq!(read(&h, 30 << 20, 1000), expect(&data, 30 << 20, 1000));
    assert!(h.holds_connection());
    pg.restart();
    // Its connection died with the server: it sets up again and reads on.
    assert_eq!(read(&h, 5 << 20, 1000), expect(&data, 5 << 20, 1000));
    assert_eq!(read(&h, 20 << 20, 70_000), expect(&data, 20 << 20, 70_000));
    // While the server is down, a handle that has read nothing yet fails at once
    // (a new download gets 503 or EIO rather than hang) ...
    pg.stop_server();
    let fresh = pool.open(&file, "/t/fresh");
    let t = std::time::Instant::now();
    let e = fresh.prepare(0).expect_err("server down");
    assert_eq!(e.class(), pgbootfs::handle::ErrorClass::Unavailable, "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // ... while one in the middle of its file waits for the server to come back.
    let waiting = std::thread::scope(|s| {
        let r = s.spawn(|| h.read_with(35 << 20, 1000, |b| b.to_vec()));
        std::thread::sleep(Duration::from_millis(1500));
        pg.start_server();
        r.join().unwrap()
    });
    assert_eq!(
        waiting.expect("a paused reader"),
        expect(&data, 35 << 20, 1000)
    );
}
