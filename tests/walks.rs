//! Walks and reads inside a squashfs through `mount --inside`, counted by the
//! mount's own metrics and threads: a `find` enters directories without a LOOKUP
//! each, closes send no FLUSH after the first, a random reader gets nothing
//! decompressed ahead (no pool thread at all), and a sequential reader does, on
//! at most a few threads.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::store::*;
use crate::common::*;
use crate::service::scrape;

const IMAGE: &str = "ubuntu/amd64/ga-24.04/noble/20240101/squashfs";

/// Text xz compresses to about a third, so blocks are really decompressed.
fn text(seed: u64, n: usize) -> Vec<u8> {
    bytes(seed, n / 3 + 1)
        .iter()
        .flat_map(|b| [b'a' + b % 16, b'a' + b / 16, b' '])
        .take(n)
        .collect()
}

/// Paths under `root` as `find` prints them, relative.
fn find(root: &Path) -> BTreeSet<String> {
    let out = sh(&format!("cd '{}' && find .", root.display()));
    out.lines().map(str::to_string).collect()
}

/// The threads of process `pid` whose name starts with `prefix`.
fn threads(pid: u32, prefix: &str) -> usize {
    fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

fn metric(url: &str, op: &str) -> f64 {
    scrape(url)
        .get(&format!("pgbootfs_fuse_operations_total{{op=\"{op}\"}}"))
        .copied()
        .unwrap_or(0.0)
}

#[test]
fn walks_inside_enter_directories_without_lookups_and_only_sequential_reads_decompress_ahead() {
    if !fuse_or_skip("walks_inside_enter_directories_without_lookups")
        || Command::new("mksquashfs").arg("-version").output().is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "mksquashfs missing under CI"
        );
        return;
    }
    let work = temp_dir("pgbt-walks-");
    let tree = work.path().join("tree");
    // 60 directories three deep, each with a few small files, 30 side by side,
    // and one file of 48 blocks of 128 KiB.
    let mut dirs = 0;
    for a in 0..4 {
        for b in 0..5 {
            for c in 0..3 {
                let d = tree.join(format!("a{a}/b{b}/c{c}"));
                fs::create_dir_all(&d).unwrap();
                dirs += 1;
                for f in 0..4 {
                    let seed = (a * 100 + b * 10 + c) * 10 + f;
                    fs::write(d.join(format!("f{f}")), text(seed, 3000 + 97 * f as usize)).unwrap();
                }
            }
        }
    }
    // A directory wider than a first batch of names: its subdirectories must
    // come with attributes too.
    for w in 0..30 {
        fs::create_dir_all(tree.join(format!("wide/d{w:02}"))).unwrap();
        dirs += 1;
    }
    fs::write(tree.join("wide/zz"), b"file after the directories\n").unwrap();
    let big = text(7, 48 << 17);
    fs::write(tree.join("big"), &big).unwrap();
    let src = SrcTree::new();
    let image = src.path().join(IMAGE);
    fs::create_dir_all(image.parent().unwrap()).unwrap();
    let st = Command::new("mksquashfs")
        .arg(&tree)
        .arg(&image)
        .args(["-comp", "xz", "-noappend", "-quiet", "-no-progress"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let pg = Cluster::start();
    let db = pg.conninfo("postgres");
    pgbootfs_ok(&db, &["import", src.path().to_str().unwrap()]);

    let mnt = Mount::start(&db, &["--inside", "--metrics", "127.0.0.1:0"]);
    let mut addr = String::new();
    assert!(wait_until(Duration::from_secs(10), || {
        let log = mnt.log();
        let Some(rest) = log.split("metrics on http://").nth(1) else {
            return false;
        };
        addr = rest.lines().next().unwrap_or("").trim().to_string();
        !addr.is_empty()
    }));
    let url = format!("http://{addr}");
    let pid = mnt.child.as_ref().unwrap().id();
    let root = mnt.path(&format!(".inside/{IMAGE}"));

    // A find sees what find of the source sees, and enters the directories
    // without looking each up: only the 7 names of the image's path are.
    let lookups = metric(&url, "lookup");
    assert_eq!(find(&root), find(&tree));
    let looked = metric(&url, "lookup") - lookups;
    assert!(
        looked <= 10.0,
        "{looked} LOOKUPs for a find over {dirs} directories"
    );

    // Random reads of single blocks: nothing ahead, so no pool thread exists.
    let f = fs::File::open(root.join("big")).unwrap();
    let mut buf = vec![0; 4096];
    for block in [40, 3, 17, 29, 8] {
        let at = block * (1 << 17) + 5000;
        f.read_exact_at(&mut buf, at as u64).unwrap();
        assert_eq!(buf, big[at..at + 4096]);
    }
    drop(f);
    assert_eq!(threads(pid, "sqfs-ahead"), 0);

    // Reading every file: the right bytes; a sequential reader of the big file
    // has blocks decompressed ahead on a bounded number of threads; closes
    // cost one FLUSH in all (the kernel stops sending them).
    let flushes = metric(&url, "flush");
    for path in find(&tree) {
        let p = tree.join(&path);
        if p.is_file() {
            assert_eq!(
                read_all(&root.join(&path)).unwrap(),
                fs::read(&p).unwrap(),
                "{path}"
            );
        }
    }
    let n = threads(pid, "sqfs-ahead");
    assert!((1..=4).contains(&n), "{n} decompression threads");
    assert!(metric(&url, "flush") - flushes <= 1.0);
}
