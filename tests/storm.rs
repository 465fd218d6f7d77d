//! Readers of one image share its reads whatever their history and speed: a
//! storm of `cp` through the mount, then a storm of downloads that write to
//! files (slow consumers, as racks are) from the same daemon, each read the
//! image from PostgreSQL about once, with no more connections than documented
//! (doc/SEMANTICS.md, Resources: at most `--max-handles` reading image bytes,
//! the image's pinned snapshot among them, plus 2 for the catalog).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::*;

const DIR: &str = "ubuntu/amd64/generic/focal/1";

/// Clients per storm, as in issue 21.
const CLIENTS: usize = 150;

/// The most connections seen at once: those reading image bytes, and all of
/// pgbootfs's (the catalog's too).
#[derive(Clone, Copy, Default, Debug)]
struct Most {
    handles: i64,
    all: i64,
}

/// Samples pgbootfs's connections every 20 ms while `busy` holds.
fn sample_max(pg: &Cluster, busy: Arc<AtomicBool>) -> std::thread::JoinHandle<Most> {
    let mut c = pg.client("postgres");
    std::thread::spawn(move || {
        let mut most = Most::default();
        while busy.load(Ordering::Relaxed) {
            let row = c
                .query_one(
                    "SELECT count(*) FILTER (WHERE application_name = 'pgbootfs-handle'), \
                            count(*) FILTER (WHERE application_name LIKE 'pgbootfs-%') \
                     FROM pg_stat_activity",
                    &[],
                )
                .unwrap();
            most.handles = most.handles.max(row.get(0));
            most.all = most.all.max(row.get(1));
            std::thread::sleep(Duration::from_millis(20));
        }
        most
    })
}

/// Checks a storm's connections against the documented bound.
fn within_bound(most: Most, max_handles: i64, what: &str, log: &str) {
    assert!(
        most.handles <= max_handles,
        "{} handle connections during {what}, over --max-handles {max_handles}\n{log}",
        most.handles
    );
    assert!(
        most.all <= max_handles + 2,
        "{} pgbootfs connections during {what}, over --max-handles {max_handles} + 2\n{log}",
        most.all
    );
}

/// Runs `cmd(i)` for every client at once, each writing `out/i`; then checks
/// every file's sha256. The most handle connections seen meanwhile, and the
/// blocks of pg_largeobject read.
fn storm(pg: &Cluster, out: &Path, want: &str, cmd: impl Fn(usize) -> String) -> (Most, i64) {
    let mut c = pg.client("postgres");
    let before = lo_blocks(&mut c);
    let busy = Arc::new(AtomicBool::new(true));
    let sampler = sample_max(pg, busy.clone());
    let children: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let dest = out.join(i.to_string());
            Command::new("sh")
                .args(["-c", &cmd(i).replace("{out}", &dest.display().to_string())])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "client {i} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    busy.store(false, Ordering::Relaxed);
    let most = sampler.join().unwrap();
    for i in 0..CLIENTS {
        let got = sh(&format!(
            "sha256sum '{}'",
            out.join(i.to_string()).display()
        ));
        assert!(got.starts_with(want), "client {i} wrote other bytes: {got}");
        std::fs::remove_file(out.join(i.to_string())).unwrap();
    }
    (most, lo_blocks(&mut c) - before)
}

#[test]
fn a_cp_storm_then_a_storm_of_downloads_to_files_each_read_the_image_about_once() {
    if !fuse_or_skip("a_cp_storm_then_a_storm_of_downloads_to_files_each_read_the_image_about_once")
    {
        return;
    }
    let (pg, mut c) = store();
    c.execute("ALTER SYSTEM SET max_connections = 300", &[])
        .unwrap();
    // Autovacuum of the freshly written object touches about 4 times its blocks
    // (vacuum and analyze, measured: 21,855 blocks for a 5,463-block object with
    // no reader at all), a minute or so after the write: landing inside a storm,
    // it looked like the storm reading the image four times.
    c.execute("ALTER SYSTEM SET autovacuum = off", &[]).unwrap();
    drop(c);
    pg.restart();
    let mut c = pg.client("postgres");
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/generic", "1");
    let data = bytes(1201, 32 << 20);
    let oid = m.file(s, "squashfs", &data);
    let want = sha256_hex(&data);
    let before = lo_blocks(&mut c);
    c.query_one("SELECT length(lo_get($1))", &[&oid]).unwrap();
    let one_read = lo_blocks(&mut c) - before;
    assert!(one_read > 0);

    let max_handles = 10;
    let addr = format!("127.0.0.1:{}", free_port());
    let mnt = Mount::start(
        &pg.conninfo("postgres"),
        &["--http", &addr, "--max-handles", &max_handles.to_string()],
    );
    let out = temp_dir("pgbt-storm-");
    let src = mnt.path(&format!("{DIR}/squashfs"));

    let (most, blocks) = storm(&pg, out.path(), &want, |_| {
        format!("cp '{}' '{{out}}'", src.display())
    });
    eprintln!("cp storm: {most:?} connections, {blocks} blocks, one read {one_read}");
    within_bound(most, max_handles, "the cp storm", &mnt.log());
    assert!(
        blocks as f64 <= 1.3 * one_read as f64,
        "the cp storm read {blocks} blocks; one read is {one_read}\n{}",
        mnt.log()
    );

    // Then downloads that write to files, each from an address of its own.
    let (most, blocks) = storm(&pg, out.path(), &want, |i| {
        format!(
            "curl -sSf --interface 127.0.0.{} -o '{{out}}' 'http://{addr}/{DIR}/squashfs'",
            2 + i
        )
    });
    eprintln!("download storm: {most:?} connections, {blocks} blocks, one read {one_read}");
    within_bound(most, max_handles, "the downloads", &mnt.log());
    assert!(
        blocks as f64 <= 1.3 * one_read as f64,
        "the download storm read {blocks} blocks; one read is {one_read}\n{}",
        mnt.log()
    );
}
