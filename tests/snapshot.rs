//! A snapshot for every reader: a reader whose first bytes came from memory
//! (brought in by another reader) still reads the content it started with after
//! MAAS replaced the image and unlinked its large object, through the mount and
//! over HTTP; the snapshot is shared per image (one transaction however many
//! readers), and its export and import work on a hot standby too.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use crate::common::http::{Reply, Server};
use crate::common::*;

const DIR: &str = "ubuntu/amd64/generic/focal/1";

/// Small enough that the read-ahead stream runs only a few MiB ahead: the rest
/// of the file must come from the database after the replacement.
const CACHE_MIB: &str = "4";

/// A GET of `path` on `srv` whose first `n` bytes (head and body) were read.
fn download_started(srv: &Server, path: &str, n: usize) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(format!("GET /{path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut first = vec![0u8; n];
    s.read_exact(&mut first).unwrap();
    (s, first)
}

#[test]
fn a_reader_served_from_memory_reads_the_old_bytes_after_replace_and_unlink() {
    if !fuse_or_skip("a_reader_served_from_memory_reads_the_old_bytes_after_replace_and_unlink") {
        return;
    }
    let len = 32 << 20;
    let (pg, mut c) = store();
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/generic", "1");
    let old: Vec<Vec<u8>> = (0..2).map(|i| bytes(900 + i, len)).collect();
    let oids: Vec<u32> = old
        .iter()
        .enumerate()
        .map(|(i, d)| m.file(s, &format!("f{i}"), d))
        .collect();
    let conninfo = pg.conninfo("postgres");
    let mnt = Mount::start(&conninfo, &["--cache-memory", CACHE_MIB]);
    let srv = Server::start(&conninfo, &["--cache-memory", CACHE_MIB]);

    // Through the mount: a reads 1 MiB (its stream brings it into memory), then
    // b reads the same MiB, all of it from memory.
    let f0 = mnt.path(&format!("{DIR}/f0"));
    let a = fs::File::open(&f0).unwrap();
    let mut head = vec![0u8; 1 << 20];
    a.read_exact_at(&mut head, 0).unwrap();
    let mut b = fs::File::open(&f0).unwrap();
    let mut got = vec![0u8; 1 << 20];
    b.read_exact(&mut got).unwrap();
    // Over HTTP, the same with two downloads of f1.
    let (ha, _) = download_started(&srv, &format!("{DIR}/f1"), 1 << 20);
    let (mut hb, mut hb_got) = download_started(&srv, &format!("{DIR}/f1"), 1 << 20);
    // Checked after the reads, so that a build without shared snapshots fails
    // on the bytes, the point of this test.
    let txns = handles_in_txn(&pg);

    // What MAAS does when a sync drops an old version: new content, the old
    // object unlinked.
    for (i, oid) in oids.iter().enumerate() {
        m.replace_content(*oid, &bytes(910 + i as u64, len));
    }
    drop((a, ha));

    b.read_to_end(&mut got)
        .unwrap_or_else(|e| panic!("the mount reader failed: {e}\n{}", mnt.log()));
    assert!(
        got == old[0],
        "the mount reader got {} bytes, or other bytes",
        got.len()
    );
    hb.read_to_end(&mut hb_got).unwrap();
    let reply = Reply::parse(&hb_got);
    assert!(
        reply.body == old[1],
        "the download got {} bytes, or other bytes\n{}",
        reply.body.len(),
        srv.log()
    );
    drop((b, hb));
    // Each image's snapshot is held (one pinned session per image, the mount's
    // and serve's), and a reader that needed the database while the pinned
    // session was lent to the other's stream may hold one more that imports the
    // same snapshot: so 2, or 3 or 4 under load, never more.
    assert!(
        (2..=4).contains(&txns),
        "{txns} handle sessions in a transaction for 2 images read by 2 readers each"
    );
    assert!(
        wait_until(Duration::from_secs(10), || handles_in_txn(&pg) == 0),
        "the snapshots outlived their readers"
    );
    // A reader that starts now gets the new content (the catalog refreshes).
    assert!(wait_until(Duration::from_secs(30), || fs::read(&f0)
        .is_ok_and(|d| d == bytes(910, len))));
}

#[test]
fn a_snapshot_is_exported_and_imported_on_a_hot_standby() {
    if !fuse_or_skip("a_snapshot_is_exported_and_imported_on_a_hot_standby") {
        return;
    }
    let len = 40 << 20;
    let (primary, mut c) = store();
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/generic", "1");
    let data = bytes(950, len);
    m.file(s, "f0", &data);
    let standby = Cluster::standby_of(&primary, "");
    standby.wait_caught_up_with(&primary);

    // The server side, as pgbootfs uses it.
    let mut exporter = standby.client("postgres");
    exporter
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .unwrap();
    let id: String = exporter
        .query_one("SELECT pg_export_snapshot()", &[])
        .expect("pg_export_snapshot on a hot standby")
        .get(0);
    let mut importer = standby.client("postgres");
    importer
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{id}'"
        ))
        .expect("SET TRANSACTION SNAPSHOT on a hot standby");
    importer.batch_execute("ROLLBACK").unwrap();
    exporter.batch_execute("ROLLBACK").unwrap();

    // Through a mount on the standby: a streams from the start, b reads far
    // ahead meanwhile, in a session that imports a's snapshot.
    let mnt = Mount::start(
        &standby.conninfo("postgres"),
        &["--cache-memory", CACHE_MIB],
    );
    let f0 = mnt.path(&format!("{DIR}/f0"));
    let a = fs::File::open(&f0).unwrap();
    let mut head = vec![0u8; 1 << 20];
    a.read_exact_at(&mut head, 0).unwrap();
    let b = fs::File::open(&f0).unwrap();
    let at = 30 << 20;
    let mut far = vec![0u8; 1 << 20];
    b.read_exact_at(&mut far, at as u64).unwrap();
    assert!(far[..] == data[at..at + (1 << 20)], "b read other bytes");
    assert!(
        !mnt.log().contains("cannot share snapshots"),
        "{}",
        mnt.log()
    );
    drop((a, b));
}
