//! The FUSE mount against a real PostgreSQL cluster and a real kernel mount.

use std::collections::BTreeSet;
use std::fs;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

/// Every path below `root`, relative, with "/" suffix for directories.
fn walk(root: &Path) -> BTreeSet<String> {
    fn go(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            if e.file_type().unwrap().is_dir() {
                out.insert(format!("{rel}/"));
                go(root, &e.path(), out);
            } else {
                out.insert(rel);
            }
        }
    }
    let mut out = BTreeSet::new();
    go(root, root, &mut out);
    out
}

/// Backends of ours, by application_name, that sit inside a transaction.
fn backends_in_txn(client: &mut postgres::Client, app: &str) -> Vec<i32> {
    client
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 \
             AND state IN ('idle in transaction', 'active') AND xact_start IS NOT NULL \
             AND pid <> pg_backend_pid() ORDER BY pid",
            &[&app],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn tree_names_and_sizes_match_the_rows() {
    if !fuse_or_skip("tree_names_and_sizes_match_the_rows") {
        return;
    }
    let (pg, mut c) = store();
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/ga-20.04", "20240101");
    m.file(s, "boot-kernel", &bytes(1, 1000));
    m.file(s, "boot-initrd", &bytes(2, 2000));
    m.file(s, "squashfs", &bytes(3, 3000));
    let s = m.set("ubuntu/jammy", "arm64/generic", "20240202.1");
    m.file(s, "boot-kernel", &bytes(4, 4000));
    // A custom image has a bare name.
    let s = m.set("myimage", "amd64/generic", "20240303");
    m.file(s, "root-tgz", &bytes(5, 5000));
    // A set with one unfinished file is hidden whole.
    let s = m.set("ubuntu/noble", "amd64/generic", "20240404");
    m.file(s, "boot-kernel", &bytes(6, 600));
    m.file_partial(s, "squashfs", &bytes(7, 700), Some(100));
    // An unfinished file hides its version even next to a complete one.
    let s = m.set("ubuntu/focal", "amd64/ga-20.04", "20240505");
    m.file_partial(s, "boot-kernel", &bytes(8, 800), Some(799));
    // Names that cannot be path components are skipped.
    let s = m.set("ubuntu/..", "amd64/generic", "1");
    m.file(s, "boot-kernel", &bytes(9, 9));
    let s = m.set("ubuntu/bad", "amd64/generic", "2");
    m.file(s, "a/b", &bytes(10, 10));

    let mnt = Mount::start(&pg.conninfo("postgres"), &[]);
    let got = walk(&mnt.dir);
    let want: BTreeSet<String> = [
        "custom/",
        "custom/amd64/",
        "custom/amd64/generic/",
        "custom/amd64/generic/myimage/",
        "custom/amd64/generic/myimage/20240303/",
        "custom/amd64/generic/myimage/20240303/root-tgz",
        "ubuntu/",
        "ubuntu/amd64/",
        "ubuntu/amd64/ga-20.04/",
        "ubuntu/amd64/ga-20.04/focal/",
        "ubuntu/amd64/ga-20.04/focal/20240101/",
        "ubuntu/amd64/ga-20.04/focal/20240101/boot-initrd",
        "ubuntu/amd64/ga-20.04/focal/20240101/boot-kernel",
        "ubuntu/amd64/ga-20.04/focal/20240101/squashfs",
        "ubuntu/arm64/",
        "ubuntu/arm64/generic/",
        "ubuntu/arm64/generic/jammy/",
        "ubuntu/arm64/generic/jammy/20240202.1/",
        "ubuntu/arm64/generic/jammy/20240202.1/boot-kernel",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(got, want);

    let sizes = [
        ("ubuntu/amd64/ga-20.04/focal/20240101/boot-kernel", 1000),
        ("ubuntu/amd64/ga-20.04/focal/20240101/boot-initrd", 2000),
        ("ubuntu/amd64/ga-20.04/focal/20240101/squashfs", 3000),
        ("ubuntu/arm64/generic/jammy/20240202.1/boot-kernel", 4000),
        ("custom/amd64/generic/myimage/20240303/root-tgz", 5000),
    ];
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    for (p, size) in sizes {
        let md = fs::metadata(mnt.path(p)).unwrap();
        assert_eq!(md.len(), size, "{p}");
        assert_eq!(md.permissions().mode() & 0o7777, 0o444, "{p}");
        assert_eq!(md.uid(), uid);
        assert!(md.mtime() > 1_600_000_000, "mtime from the rows: {p}");
    }
    let md = fs::metadata(mnt.path("ubuntu/amd64")).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o555);
    assert!(mnt.log().contains("cannot be a path component"), "warned");
    // Inode numbers stay the same across lookups and refreshes.
    let ino = fs::metadata(mnt.path(sizes[0].0)).unwrap().ino();
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(fs::metadata(mnt.path(sizes[0].0)).unwrap().ino(), ino);
}

#[test]
fn maas_34_bigint_and_jsonb_schema_works() {
    if !fuse_or_skip("maas_34_bigint_and_jsonb_schema_works") {
        return;
    }
    let pg = Cluster::start();
    let mut c = pg.client("postgres");
    Maas::create_schema_34(&mut c);
    let mut m = Maas { client: &mut c };
    let s = m.set("centos/centos70", "amd64/generic", "20200101");
    let data = bytes(11, 123_457);
    m.file(s, "root-tgz", &data);
    let mnt = Mount::start(&pg.conninfo("postgres"), &[]);
    let got = read_all(&mnt.path("centos/amd64/generic/centos70/20200101/root-tgz")).unwrap();
    assert_eq!(sha256_hex(&got), sha256_hex(&data));
}

#[test]
fn content_matches_for_edge_sizes_with_sha256sum_and_cmp() {
    if !fuse_or_skip("content_matches_for_edge_sizes_with_sha256sum_and_cmp") {
        return;
    }
    let (pg, mut c) = store();
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/generic", "1");
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("one", bytes(21, 1)),
        ("odd", bytes(22, (1 << 20) * 3 + 12_345)),
        ("big", bytes(23, 64 << 20)),
    ];
    for (name, data) in &files {
        m.file(s, name, data);
    }
    let mnt = Mount::start(&pg.conninfo("postgres"), &[]);
    let src = tempfile::tempdir().unwrap();
    for (name, data) in &files {
        let p = mnt.path(&format!("ubuntu/amd64/generic/focal/1/{name}"));
        let out = sh(&format!("sha256sum '{}'", p.display()));
        assert_eq!(out.split(' ').next().unwrap(), sha256_hex(data), "{name}");
        let local = src.path().join(name);
        fs::write(&local, data).unwrap();
        let st = Command::new("cmp").arg(&local).arg(&p).status().unwrap();
        assert!(st.success(), "cmp {name}");
        // cp out of the mount, too.
        let copy = src.path().join(format!("{name}.copy"));
        fs::copy(&p, &copy).unwrap();
        assert_eq!(fs::read(&copy).unwrap().len(), data.len());
    }
}

#[test]
fn reads_at_random_offsets_match() {
    if !fuse_or_skip("reads_at_random_offsets_match") {
        return;
    }
    let (pg, mut c) = store();
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/generic", "1");
    let data = bytes(31, 9 * (1 << 20) + 777);
    m.file(s, "squashfs", &data);
    let mnt = Mount::start(&pg.conninfo("postgres"), &[]);
    let p = mnt.path("ubuntu/amd64/generic/focal/1/squashfs");
    let f = fs::File::open(&p).unwrap();
    let mut x: u64 = 12345;
    for _ in 0..300 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = x % (data.len() as u64 + 100);
        let len = ((x >> 20) % (3 << 20)) as usize + 1;
        let mut buf = vec![0u8; len];
        let n = f.read_at(&mut buf, off).unwrap();
        let start = (off as usize).min(data.len());
        let end = (start + len).min(data.len());
        assert_eq!(n, end - start, "length at {off}+{len}");
        assert!(buf[..n] == data[start..end], "bytes at {off}+{len}");
    }
    // dd with skip, and tail -c, as an operator would.
    let out = Command::new("dd")
        .arg(format!("if={}", p.display()))
        .args(["bs=4096", "skip=1000", "count=3", "status=none"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout == data[4096 * 1000..4096 * 1003]);
    let out = Command::new("tail")
        .arg("-c")
        .arg("5000")
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.stdout == data[data.len() - 5000..]);
    // Seek past the end reads nothing.
    let mut f = fs::File::open(&p).unwrap();
    f.seek(SeekFrom::Start(data.len() as u64 + 10)).unwrap();
    let mut buf = [0u8; 10];
    assert_eq!(f.read(&mut buf).unwrap(), 0);
}

#[test]
fn writes_get_erofs_and_missing_paths_get_enoent() {
    if !fuse_or_skip("writes_get_erofs_and_missing_paths_get_enoent") {
        return;
    }
    let (pg, mut c) = store();
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/generic", "1");
    m.file(s, "boot-kernel", &bytes(41, 100));
    let mnt = Mount::start(&pg.conninfo("postgres"), &[]);
    let dir = mnt.path("ubuntu/amd64/generic/focal/1");
    let file = dir.join("boot-kernel");
    let rofs = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    rofs(fs::write(&file, b"x"), "overwrite");
    rofs(
        fs::OpenOptions::new().append(true).open(&file).map(|_| ()),
        "append",
    );
    rofs(fs::write(dir.join("new"), b"x"), "create");
    rofs(fs::create_dir(dir.join("d")), "mkdir");
    rofs(fs::remove_file(&file), "unlink");
    rofs(fs::remove_dir(&dir), "rmdir");
    rofs(fs::rename(&file, dir.join("k2")), "rename");
    rofs(
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)),
        "chmod",
    );
    rofs(std::os::unix::fs::symlink("x", dir.join("l")), "symlink");
    rofs(fs::hard_link(&file, dir.join("h")), "link");
    assert_eq!(fs::read(&file).unwrap(), bytes(41, 100), "unchanged");

    for missing in ["nope", "ubuntu/nope", "ubuntu/amd64/generic/focal/1/nope"] {
        let e = fs::metadata(mnt.path(missing)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{missing}");
    }
    let e = fs::File::open(mnt.path("ubuntu/amd64/generic/focal/2/x")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
}

#[test]
fn each_open_file_has_its_own_backend_and_transaction() {
    if !fuse_or_skip("each_open_file_has_its_own_backend_and_transaction") {
        return;
    }
    let (pg, mut c) = store();
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/generic", "1");
    // Large enough that ten bytes read leave each handle mid-way, its read-ahead
    // held back on its connection (a handle that has every byte gives it back).
    m.file(s, "a", &bytes(51, 64 << 20));
    m.file(s, "b", &bytes(52, 64 << 20));
    let mnt = Mount::start(&pg.conninfo("postgres"), &["--refresh", "1"]);
    let mut fa = fs::File::open(mnt.path("ubuntu/amd64/generic/focal/1/a")).unwrap();
    let mut fb = fs::File::open(mnt.path("ubuntu/amd64/generic/focal/1/b")).unwrap();
    let mut buf = [0u8; 10];
    fa.read_exact(&mut buf).unwrap();
    fb.read_exact(&mut buf).unwrap();
    let handles = backends_in_txn(&mut c, "pgbootfs-handle");
    assert_eq!(
        handles.len(),
        2,
        "two backends in a transaction: {handles:?}"
    );
    let catalog: Vec<i32> = c
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgbootfs-catalog'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!catalog.is_empty(), "the catalog has its own connection");
    for pid in &handles {
        assert!(
            !catalog.contains(pid),
            "handle {pid} is not a catalog connection"
        );
    }
    drop(fa);
    drop(fb);
    let ok = wait_until(Duration::from_secs(5), || {
        backends_in_txn(&mut c, "pgbootfs-handle").is_empty()
    });
    assert!(ok, "no handle backend left in a transaction after close");
    let idle: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgbootfs%' \
             AND state LIKE 'idle in transaction%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(idle, 0);
}

#[test]
fn open_reader_keeps_its_snapshot_after_replace_and_unlink() {
    if !fuse_or_skip("open_reader_keeps_its_snapshot_after_replace_and_unlink") {
        return;
    }
    let (pg, mut c) = store();
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/generic", "1");
    let original = bytes(61, 8 << 20);
    let old_oid = m.file(s, "squashfs", &original);
    let mnt = Mount::start(&pg.conninfo("postgres"), &["--refresh", "1"]);
    let p = mnt.path("ubuntu/amd64/generic/focal/1/squashfs");
    let mut f = fs::File::open(&p).unwrap();
    let mut head = vec![0u8; 1 << 20];
    f.read_exact(&mut head).unwrap();

    // Another session replaces the content and unlinks the old object.
    let replacement = bytes(62, 8 << 20);
    Maas { client: &mut c }.replace_content(old_oid, &replacement);

    let mut rest = Vec::new();
    f.read_to_end(&mut rest).unwrap();
    head.extend_from_slice(&rest);
    assert_eq!(sha256_hex(&head), sha256_hex(&original), "original bytes");
    drop(f);
    // A new open, once the catalog has caught up, sees the replacement.
    let ok = wait_until(Duration::from_secs(5), || {
        read_all(&p).is_ok_and(|d| sha256_hex(&d) == sha256_hex(&replacement))
    });
    assert!(ok, "replacement visible to a new open:\n{}", mnt.log());
}

#[test]
fn images_added_and_removed_show_within_the_refresh_interval() {
    if !fuse_or_skip("images_added_and_removed_show_within_the_refresh_interval") {
        return;
    }
    let (pg, mut c) = store();
    let mnt = Mount::start(&pg.conninfo("postgres"), &["--refresh", "1"]);
    assert!(walk(&mnt.dir).is_empty());
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/generic", "7");
    let data = bytes(71, 5000);
    m.file(s, "boot-kernel", &data);
    let p = mnt.path("ubuntu/amd64/generic/focal/7/boot-kernel");
    let series = mnt.path("ubuntu/amd64/generic/focal");
    let listing = |dir: &Path| -> Vec<String> {
        fs::read_dir(dir)
            .map(|d| {
                let mut v: Vec<String> = d
                    .map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect();
                v.sort();
                v
            })
            .unwrap_or_default()
    };
    // One refresh period, with slack for a busy machine. Names, attributes and
    // listings are cached by the kernel for an hour: each change below shows only
    // because the refresh tells the kernel to forget it.
    assert!(
        wait_until(Duration::from_secs(4), || p.exists()),
        "appeared"
    );
    assert_eq!(fs::read(&p).unwrap(), data);
    assert_eq!(listing(&series), ["7"]);
    assert_eq!(listing(&series), ["7"], "listed from the kernel's cache");

    // A new version shows in a listing the kernel has cached.
    let s8 = m.set("ubuntu/focal", "amd64/generic", "8");
    m.file(s8, "boot-kernel", &bytes(72, 100));
    assert!(
        wait_until(Duration::from_secs(4), || listing(&series) == ["7", "8"]),
        "new version listed: {:?}",
        listing(&series)
    );

    // New content under a cached name: the name leads to the new file.
    let replaced = bytes(73, 6000);
    let (lf, _) = m.largefile(&replaced, None);
    m.client
        .execute(
            "UPDATE maasserver_bootresourcefile SET largefile_id = $1::int8, updated = now() \
             WHERE resource_set_id = $2::int8",
            &[&lf, &s],
        )
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(4), || fs::read(&p).ok()
            == Some(replaced.clone())),
        "replaced content read"
    );

    m.client
        .batch_execute(
            "DELETE FROM maasserver_bootresourcefile; DELETE FROM maasserver_bootresourceset;",
        )
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(4), || !p.exists()),
        "vanished"
    );
    assert!(listing(&mnt.dir).is_empty(), "{:?}", listing(&mnt.dir));
}

#[test]
fn cached_listings_follow_changes_while_being_read() {
    if !fuse_or_skip("cached_listings_follow_changes_while_being_read") {
        return;
    }
    let (pg, mut c) = store();
    let mnt = Mount::start(&pg.conninfo("postgres"), &["--refresh", "1"]);
    let series = mnt.path("ubuntu/amd64/generic/focal");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Readers list the directory without pause, so listings are in flight when a
    // refresh swaps the tree: none of them may stay cached past the refresh.
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (dir, stop) = (series.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = fs::read_dir(&dir).map(|d| d.count());
                }
            })
        })
        .collect();
    let listing = || -> BTreeSet<String> {
        fs::read_dir(&series)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut m = Maas { client: &mut c };
    let mut want = BTreeSet::new();
    for round in 0..12 {
        let version = format!("v{round}");
        let s = m.set("ubuntu/focal", "amd64/generic", &version);
        m.file(s, "k", &bytes(round, 10));
        want.insert(version);
        if round % 3 == 2 {
            // Every third round also removes the oldest version.
            let gone = want.pop_first().unwrap();
            m.client
                .execute(
                    "DELETE FROM maasserver_bootresourcefile WHERE resource_set_id IN \
                     (SELECT id FROM maasserver_bootresourceset WHERE version = $1)",
                    &[&gone],
                )
                .unwrap();
        }
        assert!(
            wait_until(Duration::from_secs(5), || listing() == want),
            "round {round}: listed {:?}, want {want:?}",
            listing()
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
}

/// A store with one file, `ubuntu/amd64/generic/focal/1/a` of `len` bytes, mounted
/// with `--refresh 1`: the cluster, the mount, the file's path and its bytes.
#[test]
fn reads_go_on_after_the_database_restarts() {
    if !fuse_or_skip("reads_go_on_after_the_database_restarts") {
        return;
    }
    let (pg, mut c) = store();
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/generic", "1");
    let len = 48 << 20;
    let data: Vec<Vec<u8>> = (0..4).map(|i| bytes(930 + i, len)).collect();
    for (i, d) in data.iter().enumerate() {
        m.file(s, &format!("f{i}"), d);
    }
    let mnt = Mount::start(&pg.conninfo("postgres"), &["--refresh", "1"]);
    let path = |i: usize| mnt.path(&format!("ubuntu/amd64/generic/focal/1/f{i}"));
    // Four files read at once leave four connections in the handle pool once
    // closed: each handle's read-ahead held its own.
    let open: Vec<fs::File> = (0..4).map(|i| fs::File::open(path(i)).unwrap()).collect();
    for f in &open {
        let mut buf = [0u8; 10];
        f.read_exact_at(&mut buf, 0).unwrap();
    }
    drop(open);
    pg.restart();
    // Every pooled connection is dead now; reads of bytes not yet in memory (the
    // tails, which no read-ahead reached) must still succeed.
    for i in 0..6 {
        let f =
            fs::File::open(path(i % 4)).unwrap_or_else(|e| panic!("open {i}: {e}\n{}", mnt.log()));
        let at = len - (1 << 20) * (1 + i / 4);
        let mut got = vec![0u8; 1 << 20];
        f.read_exact_at(&mut got, at as u64)
            .unwrap_or_else(|e| panic!("read {i}: {e}\n{}", mnt.log()));
        assert!(got == data[i % 4][at..at + (1 << 20)], "read {i}");
    }
    assert_eq!(
        sha256_hex(&fs::read(path(2)).unwrap()),
        sha256_hex(&data[2]),
        "a whole file after the restart"
    );
    // The catalog reconnects too: a new image still shows up.
    let mut c = pg.client("postgres");
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/generic", "2");
    m.file(s, "b", &bytes(94, 10));
    let b = mnt.path("ubuntu/amd64/generic/focal/2/b");
    assert!(
        wait_until(Duration::from_secs(10), || b.exists()),
        "catalog did not recover:\n{}",
        mnt.log()
    );
}

#[test]
fn reads_fail_at_once_while_the_database_is_down() {
    if !fuse_or_skip("reads_fail_at_once_while_the_database_is_down") {
        return;
    }
    // The default pool timeout is 30 s: a read must not wait for it.
    let (pg, mut c) = store();
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/generic", "1");
    let data = bytes(95, 1000);
    m.file(s, "a", &data);
    m.file(s, "b", &bytes(96, 1000));
    let mnt = Mount::start(&pg.conninfo("postgres"), &["--refresh", "1"]);
    let p = mnt.path("ubuntu/amd64/generic/focal/1/a");
    let never_read = mnt.path("ubuntu/amd64/generic/focal/1/b");
    assert_eq!(fs::read(&p).unwrap(), data);
    pg.stop_server();
    for _ in 0..3 {
        let t = std::time::Instant::now();
        // Opening needs no database; the first read that needs it fails at once.
        let mut f = fs::File::open(&never_read).expect("open needs no database");
        let err = f
            .read(&mut [0u8; 10])
            .expect_err("read with the database down");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "read took {:?}",
            t.elapsed()
        );
    }
    // Bytes already in memory are still served.
    assert_eq!(fs::read(&p).unwrap(), data);
    // The tree stays browsable from the catalog's snapshot, refreshes failing.
    assert!(
        wait_until(Duration::from_secs(15), || mnt
            .log()
            .contains("catalog refresh failed")),
        "{}",
        mnt.log()
    );
    assert!(walk(&mnt.dir).contains("ubuntu/amd64/generic/focal/1/a"));
    let log = mnt.log();
    for line in ["cannot connect to the database", "catalog refresh failed"] {
        assert_eq!(
            log.matches(line).count(),
            1,
            "one {line:?} per outage:\n{log}"
        );
    }
    assert!(
        !log.contains("ERROR r2d2"),
        "no line per reconnection:\n{log}"
    );
    pg.start_server();
    assert_eq!(fs::read(&p).unwrap(), data, "reads resume:\n{}", mnt.log());
    assert!(
        wait_until(Duration::from_secs(5), || mnt
            .log()
            .contains("catalog refresh works again")),
        "{}",
        mnt.log()
    );
}

#[test]
fn files_past_4_gib_read_exactly_to_their_end() {
    if !fuse_or_skip("files_past_4_gib_read_exactly_to_their_end") {
        return;
    }
    let tail = bytes(96, (1 << 20) + 7);
    let pg = sparse_store(&tail);
    let base = SPARSE_HOLE as i64;
    let total = base + tail.len() as i64;
    let mnt = Mount::start(&pg.conninfo("postgres"), &[]);
    let p = mnt.path(SPARSE);
    assert_eq!(fs::metadata(&p).unwrap().len(), total as u64);
    let f = fs::File::open(&p).unwrap();
    // Random reads across the 2 and 4 GiB marks, and over the start of the data.
    for at in [(2u64 << 30) - 10, (4u64 << 30) - 10] {
        let mut buf = [1u8; 20];
        f.read_exact_at(&mut buf, at).unwrap();
        assert_eq!(buf, [0u8; 20], "at {at}");
    }
    let mut buf = vec![1u8; 100 + tail.len()];
    f.read_exact_at(&mut buf, base as u64 - 100).unwrap();
    assert_eq!(&buf[..100], &[0u8; 100][..]);
    assert_eq!(&buf[100..], &tail[..]);
    // A sequential read of the last 3 MiB (the read-ahead path) up to EOF.
    let mut f = fs::File::open(&p).unwrap();
    f.seek(SeekFrom::Start(base as u64 - (2 << 20))).unwrap();
    let mut end = Vec::new();
    f.read_to_end(&mut end).unwrap();
    assert_eq!(end.len(), (2 << 20) + tail.len());
    assert!(end[..2 << 20].iter().all(|&b| b == 0));
    assert_eq!(&end[2 << 20..], &tail[..]);
}

#[test]
fn sigterm_unmounts_ends_transactions_and_exits_zero() {
    if !fuse_or_skip("sigterm_unmounts_ends_transactions_and_exits_zero") {
        return;
    }
    let (pg, mut c) = store();
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/generic", "1");
    m.file(s, "a", &bytes(81, 64 << 20));
    let mut mnt = Mount::start(&pg.conninfo("postgres"), &[]);
    // Hold a file open, so the mount is busy.
    let mut f = fs::File::open(mnt.path("ubuntu/amd64/generic/focal/1/a")).unwrap();
    let mut buf = [0u8; 100];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(backends_in_txn(&mut c, "pgbootfs-handle").len(), 1);
    let st = mnt.stop_with(libc::SIGTERM);
    assert!(st.success(), "exit status {st}:\n{}", mnt.log());
    assert!(!is_mounted(&mnt.dir), "unmounted");
    assert!(
        wait_until(Duration::from_secs(5), || backends_in_txn(
            &mut c,
            "pgbootfs-handle"
        )
        .is_empty()),
        "no transaction left"
    );
    drop(f);

    // SIGINT too, on an idle mount.
    let mut mnt = Mount::start(&pg.conninfo("postgres"), &[]);
    let st = mnt.stop_with(libc::SIGINT);
    assert!(st.success(), "exit status {st}");
    assert!(!is_mounted(&mnt.dir));
}

#[test]
fn stale_mount_from_a_killed_run_is_cleaned_up() {
    if !fuse_or_skip("stale_mount_from_a_killed_run_is_cleaned_up") {
        return;
    }
    let (pg, mut c) = store();
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/generic", "1");
    m.file(s, "a", &bytes(91, 1000));
    let tmp = temp_dir("pgbt-mnt-");
    // The mount table escapes these: each must be read back as written.
    let dir = tmp.path().join("mnt a\tb\\c");
    fs::create_dir(&dir).unwrap();
    let mut first = Mount::start_at(
        temp_dir("pgbt-log-"),
        dir.clone(),
        &pg.conninfo("postgres"),
        &[],
    );
    let st = first.stop_with(libc::SIGKILL);
    assert!(!st.success());
    // Once the kernel's 1 s cache of the root's attributes lapses, the stale mount
    // answers ENOTCONN.
    let stale = wait_until(Duration::from_secs(5), || {
        fs::metadata(&dir).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN))
    });
    assert!(stale, "stale mount left behind");
    let second = Mount::start_at(tmp, dir.clone(), &pg.conninfo("postgres"), &[]);
    assert_eq!(
        fs::read(second.path("ubuntu/amd64/generic/focal/1/a")).unwrap(),
        bytes(91, 1000)
    );
    assert!(second.log().contains("stale"), "{}", second.log());
}

#[test]
fn unreachable_database_and_missing_tables_give_one_clear_line() {
    let pg = Cluster::start();
    let tmp = tempfile::tempdir().unwrap();
    // No server on this socket directory.
    let out = Command::new(bin())
        .args([
            "--db",
            "host=/nonexistent/socketdir port=5499 user=maas dbname=maasdb password=hunter2",
            "mount",
        ])
        .arg(tmp.path())
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    for part in ["/nonexistent/socketdir", "5499", "maasdb"] {
        assert!(err.contains(part), "names {part}: {err}");
    }
    assert!(!err.contains("hunter2"), "no password: {err}");
    assert!(!err.contains("panicked"), "{err}");

    // A database without the MAAS tables.
    let out = Command::new(bin())
        .args(["--db", &pg.conninfo("postgres"), "mount"])
        .arg(tmp.path())
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("maasserver_largefile"), "{err}");
    assert!(err.contains("maasserver_bootresource,"), "{err}");

    // The same database found through the PG* variables.
    let out = Command::new(bin())
        .arg("mount")
        .arg(tmp.path())
        .env_remove("DATABASE_URL")
        .env("PGHOST", pg.host())
        .env("PGUSER", "postgres")
        .env("PGDATABASE", "postgres")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing table"), "reached via PG*: {err}");
}

#[test]
fn exhausted_pool_gives_eagain_and_missing_object_gives_eio() {
    if !fuse_or_skip("exhausted_pool_gives_eagain_and_missing_object_gives_eio") {
        return;
    }
    let (pg, mut c) = store();
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/generic", "1");
    m.file(s, "a", &bytes(101, 64 << 20));
    m.file(s, "b", &bytes(102, 1000));
    let gone = m.file(s, "gone", &bytes(103, 1000));
    let mnt = Mount::start(
        &pg.conninfo("postgres"),
        &["--max-handles", "1", "--pool-timeout", "1"],
    );
    let dir = mnt.path("ubuntu/amd64/generic/focal/1");
    // A reader mid-way through a large file holds the only connection.
    let mut held = fs::File::open(dir.join("a")).unwrap();
    held.read_exact(&mut [0u8; 10]).unwrap();
    let mut b = fs::File::open(dir.join("b")).expect("open needs no connection");
    let e = b.read(&mut [0u8; 10]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EAGAIN), "{e}");
    assert!(mnt.log().contains("busy"), "{}", mnt.log());
    drop(held);
    assert_eq!(fs::read(dir.join("b")).unwrap(), bytes(102, 1000));

    c.execute("SELECT lo_unlink($1)", &[&gone]).unwrap();
    let e = fs::read(dir.join("gone")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(
        mnt.log().contains("ubuntu/amd64/generic/focal/1/gone"),
        "log names the path:\n{}",
        mnt.log()
    );
    assert!(
        wait_until(Duration::from_secs(5), || backends_in_txn(
            &mut c,
            "pgbootfs-handle"
        )
        .is_empty()),
        "a failed read leaves no transaction"
    );
}
