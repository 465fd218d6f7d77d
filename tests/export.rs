//! `pgbootfs export --image-storage DIR` against the tables of MAAS 1.7, 2.1 and
//! 3.4 (schema/), rows written by `pgbootfs import`, a hot standby, and a small
//! tmpfs for the free-space check.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::store::*;
use crate::common::*;

const JAMMY: &str = "ubuntu/amd64/ga-22.04/jammy/20240101";

/// The tables of one range of MAAS versions, as shipped under schema/.
struct Era {
    name: &'static str,
    ddl: &'static str,
    /// largefile.size exists (2.0+): unfinished files are possible.
    size_column: bool,
}

const ERAS: [Era; 3] = [
    Era {
        name: "maas_17",
        ddl: include_str!("../schema/maas-1.7.sql"),
        size_column: false,
    },
    Era {
        name: "maas_21",
        ddl: include_str!("../schema/maas-2.1.sql"),
        size_column: true,
    },
    Era {
        name: "maas_34",
        ddl: include_str!("../schema/maas-3.4.sql"),
        size_column: true,
    },
];

/// Files of a small store: one Ubuntu version (kernel, initrd, squashfs, and an
/// empty file), one custom image, and a second version sharing the kernel.
fn sample() -> (SrcTree, BTreeMap<String, Vec<u8>>) {
    let src = SrcTree::new();
    let mut files = BTreeMap::new();
    for (rel, data) in [
        (format!("{JAMMY}/boot-kernel"), bytes(11, 300_000)),
        (format!("{JAMMY}/boot-initrd"), bytes(12, 1_500_001)),
        (format!("{JAMMY}/squashfs"), bytes(13, 3 << 20)),
        (format!("{JAMMY}/boot-dtb"), Vec::new()),
        (
            "ubuntu/amd64/ga-22.04/jammy/20240202/boot-kernel".to_string(),
            bytes(11, 300_000),
        ),
        (
            "custom/amd64/generic/myimage/20240301/root-tgz".to_string(),
            bytes(14, 700_000),
        ),
    ] {
        src.add(&rel, &data);
        files.insert(rel, data);
    }
    (src, files)
}

/// A database of `era`'s tables holding [`sample`]; its conninfo.
fn era_store(pg: &Cluster, era: &Era, src: &SrcTree) -> String {
    let db = pg.create_db(era.name);
    pg.client(era.name).batch_execute(era.ddl).unwrap();
    pgbootfs_ok(&db, &["import", src.path().to_str().unwrap()]);
    db
}

/// A cluster with [`sample`] imported into the shipped (3.3) tables.
fn sample_store() -> (Cluster, String, BTreeMap<String, Vec<u8>>) {
    let pg = Cluster::start();
    let db = pg.conninfo("postgres");
    let (src, files) = sample();
    pgbootfs_ok(&db, &["import", src.path().to_str().unwrap()]);
    (pg, db, files)
}

/// The distinct contents of `files`, by sha256.
fn by_sha(files: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    files.values().map(|d| (sha256_hex(d), d.clone())).collect()
}

/// Names and bytes of every entry in `dir`.
fn dir_contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().to_string(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Name -> (inode, mtime in ns) of every entry in `dir`.
fn stamps(dir: &Path) -> BTreeMap<String, (u64, i128)> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().to_string(),
                (
                    m.ino(),
                    m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
                ),
            )
        })
        .collect()
}

/// Everything in the four tables and the large objects, as one digest: proof
/// that a run wrote no row.
fn db_digest(c: &mut postgres::Client) -> String {
    c.query_one(
        "SELECT md5(concat_ws('|', \
           (SELECT string_agg(t::text, ',' ORDER BY t::text) FROM maasserver_bootresource t), \
           (SELECT string_agg(t::text, ',' ORDER BY t::text) FROM maasserver_bootresourceset t), \
           (SELECT string_agg(t::text, ',' ORDER BY t::text) FROM maasserver_bootresourcefile t), \
           (SELECT string_agg(t::text, ',' ORDER BY t::text) FROM maasserver_largefile t), \
           (SELECT string_agg(oid::text, ',' ORDER BY oid) FROM pg_largeobject_metadata)))",
        &[],
    )
    .unwrap()
    .get(0)
}

fn export(db: &str, dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["export", "--image-storage", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    pgbootfs(db, &args)
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn export_ok(db: &str, dir: &Path, extra: &[&str]) -> String {
    let out = export(db, dir, extra);
    assert!(
        out.status.success(),
        "export failed ({}):\n{}",
        out.status,
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn export_fails(db: &str, dir: &Path, extra: &[&str]) -> String {
    let out = export(db, dir, extra);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    text(&out)
}

#[test]
fn every_era_exports_byte_exact_under_maas_names() {
    let pg = Cluster::start();
    let (src, files) = sample();
    let want = by_sha(&files);
    for era in &ERAS {
        let db = era_store(&pg, era, &src);
        let mut c = pg.client(era.name);
        // An unfinished download (2.0+): MAAS would fetch it again, export skips it.
        let unfinished = bytes(15, 200_000);
        if era.size_column {
            let oid: u32 = c
                .query_one("SELECT lo_from_bytea(0, $1)", &[&unfinished])
                .unwrap()
                .get(0);
            c.execute(
                "UPDATE maasserver_largefile SET content = $1, sha256 = $2, size = 1000, \
                 total_size = $3 WHERE sha256 = $4",
                &[
                    &oid,
                    &sha256_hex(&unfinished),
                    &(unfinished.len() as i64),
                    &sha256_hex(&files["custom/amd64/generic/myimage/20240301/root-tgz"]),
                ],
            )
            .unwrap();
        }
        let before = db_digest(&mut c);
        let dir = temp_dir("pgbt-export-");
        let storage = dir.path().join("image-storage");
        let mut args = vec!["--jobs", "3"];
        if is_root() {
            args.extend(["--owner", "nobody:nogroup"]);
        }
        let out = export_ok(&db, &storage, &args);
        let mut expect = want.clone();
        if era.size_column {
            expect.remove(&sha256_hex(
                &files["custom/amd64/generic/myimage/20240301/root-tgz"],
            ));
            assert!(
                out.contains("skipped custom/amd64/generic/myimage/20240301/root-tgz: unfinished"),
                "{}: {out}",
                era.name
            );
            assert!(out.contains("1 unfinished skipped"), "{}: {out}", era.name);
        }
        // Every distinct file under its sha256, byte for byte, nothing else (no
        // .incomplete, no state file: MAAS deletes what it does not expect).
        assert_eq!(dir_contents(&storage), expect, "{}", era.name);
        assert!(
            out.contains(&format!(
                "export: {} file(s) written ({} bytes)",
                expect.len(),
                expect.values().map(Vec::len).sum::<usize>()
            )),
            "{}: {out}",
            era.name
        );
        assert!(out.contains("0 failed"), "{}: {out}", era.name);
        // The empty file too: MAAS 3.5's own export fails on a 0-byte object.
        let empty = storage.join(sha256_hex(b""));
        assert_eq!(fs::metadata(&empty).unwrap().len(), 0, "{}", era.name);
        for name in expect.keys() {
            let m = fs::metadata(storage.join(name)).unwrap();
            assert_eq!(m.permissions().mode() & 0o7777, 0o644, "{}", era.name);
            if is_root() {
                let nobody = sh("id -u nobody").trim().parse::<u32>().unwrap();
                assert_eq!(m.uid(), nobody, "{}", era.name);
            }
        }
        assert_eq!(
            db_digest(&mut c),
            before,
            "{}: export wrote to the database",
            era.name
        );
    }
}

#[test]
fn a_second_run_writes_nothing_and_hashes_nothing() {
    let (_pg, db, files) = sample_store();
    let dir = temp_dir("pgbt-export-");
    let out = export_ok(&db, dir.path(), &[]);
    let n = by_sha(&files).len();
    assert!(
        out.contains(&format!("export: {n} file(s) written")),
        "{out}"
    );
    let first = stamps(dir.path());
    let out = export_ok(&db, dir.path(), &[]);
    assert!(
        out.contains(&format!(
            "export: 0 file(s) written (0 bytes) to {}; {n} already valid (0 hashed)",
            dir.path().display()
        )),
        "{out}"
    );
    // Not rewritten: same inodes, same modification times.
    assert_eq!(stamps(dir.path()), first);
    // A file copied in by other means has no mark: it is hashed once, found valid
    // and kept, and marked for the next run.
    let name = sha256_hex(&files[&format!("{JAMMY}/squashfs")]);
    let path = dir.path().join(&name);
    let copy = dir.path().join("copy");
    fs::copy(&path, &copy).unwrap();
    fs::rename(&copy, &path).unwrap();
    let copied = stamps(dir.path());
    let out = export_ok(&db, dir.path(), &[]);
    assert!(
        out.contains(&format!(
            "0 file(s) written (0 bytes) to {}; {n} already valid (1 hashed)",
            dir.path().display()
        )),
        "{out}"
    );
    let out = export_ok(&db, dir.path(), &[]);
    assert!(
        out.contains(&format!("{n} already valid (0 hashed)")),
        "{out}"
    );
    assert_eq!(stamps(dir.path()), copied);
}

#[test]
fn corrupt_files_and_leftovers_are_replaced() {
    let (_pg, db, files) = sample_store();
    let want = by_sha(&files);
    let dir = temp_dir("pgbt-export-");
    export_ok(&db, dir.path(), &[]);
    let squashfs = dir
        .path()
        .join(sha256_hex(&files[&format!("{JAMMY}/squashfs")]));
    let initrd = dir
        .path()
        .join(sha256_hex(&files[&format!("{JAMMY}/boot-initrd")]));
    let kernel = sha256_hex(&files[&format!("{JAMMY}/boot-kernel")]);
    // A flipped byte (same size, so only the hash can tell), a truncated file,
    // and an interrupted run's leftover in place of a missing file.
    let mut data = fs::read(&squashfs).unwrap();
    data[1000] ^= 0xff;
    fs::write(&squashfs, &data).unwrap();
    fs::write(&initrd, b"short").unwrap();
    fs::remove_file(dir.path().join(&kernel)).unwrap();
    fs::write(
        dir.path().join(format!("{kernel}.incomplete")),
        bytes(99, 123_456),
    )
    .unwrap();
    let out = export_ok(&db, dir.path(), &[]);
    assert!(
        out.contains(&format!("replacing {}: sha256 ", squashfs.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "replacing {}: 5 bytes, expected 1500001",
            initrd.display()
        )),
        "{out}"
    );
    assert!(out.contains("export: 3 file(s) written"), "{out}");
    assert_eq!(dir_contents(dir.path()), want);
}

/// Rows whose large object does not hold what the row says: a wrong sha256, an
/// object shorter than the row's size, a missing object.
#[test]
fn bytes_that_do_not_match_their_row_fail_and_leave_nothing() {
    let (pg, db, files) = sample_store();
    let mut c = pg.client("postgres");
    let kernel = sha256_hex(&files[&format!("{JAMMY}/boot-kernel")]);
    let wrong = "0".repeat(64);
    c.execute(
        "UPDATE maasserver_largefile SET sha256 = $1 WHERE sha256 = $2",
        &[&wrong, &kernel],
    )
    .unwrap();
    let initrd = sha256_hex(&files[&format!("{JAMMY}/boot-initrd")]);
    c.execute(
        "SELECT lo_truncate(lo_open(content, 131072), 1000) FROM maasserver_largefile \
         WHERE sha256 = $1",
        &[&initrd],
    )
    .unwrap();
    let custom = sha256_hex(&files["custom/amd64/generic/myimage/20240301/root-tgz"]);
    c.execute(
        "SELECT lo_unlink(content) FROM maasserver_largefile WHERE sha256 = $1",
        &[&custom],
    )
    .unwrap();
    let dir = temp_dir("pgbt-export-");
    let out = export_fails(&db, dir.path(), &["--jobs", "2"]);
    // The mismatch names the partial file and both sums.
    assert!(
        out.contains(&format!(
            "sha256 mismatch for {}: the bytes of large object",
            dir.path().join(format!("{wrong}.incomplete")).display()
        )) && out.contains(&format!("hash to {kernel}, the row says {wrong}")),
        "{out}"
    );
    assert!(
        out.contains("ends after 1000 bytes, the row says 1500001"),
        "{out}"
    );
    assert!(out.contains("does not exist"), "{out}");
    assert!(out.contains("export failed for 3 of"), "{out}");
    // What failed left nothing; the rest was written.
    let mut want = by_sha(&files);
    for sha in [&kernel, &initrd, &custom] {
        want.remove(sha);
    }
    assert_eq!(dir_contents(dir.path()), want);
}

#[test]
fn a_hot_standby_exports_the_same_bytes() {
    let (primary, _db, files) = sample_store();
    let standby = Cluster::standby_of(&primary, "");
    standby.wait_caught_up_with(&primary);
    let dir = temp_dir("pgbt-export-");
    let out = export_ok(&standby.conninfo("postgres"), dir.path(), &["--jobs", "2"]);
    assert!(out.contains("0 failed"), "{out}");
    assert_eq!(dir_contents(dir.path()), by_sha(&files));
}

#[test]
fn a_dry_run_lists_and_writes_nothing() {
    let (_pg, db, files) = sample_store();
    let want = by_sha(&files);
    let dir = temp_dir("pgbt-export-");
    let storage = dir.path().join("image-storage");
    let out = export_ok(&db, &storage, &["--dry-run"]);
    assert!(!storage.exists(), "a dry run created {}", storage.display());
    for (sha, data) in &want {
        assert!(
            out.contains(&format!(
                "would write {} ({} bytes)",
                storage.join(sha).display(),
                data.len()
            )),
            "{out}"
        );
    }
    assert!(
        out.contains(&format!("would write {} file(s)", want.len())),
        "{out}"
    );
    // Over a partly written storage: only what is missing is listed, nothing moves.
    export_ok(&db, &storage, &[]);
    let gone = sha256_hex(&files[&format!("{JAMMY}/squashfs")]);
    fs::remove_file(storage.join(&gone)).unwrap();
    let before = stamps(&storage);
    let out = export_ok(&db, &storage, &["--dry-run"]);
    assert!(
        out.contains(&format!("would write 1 file(s) ({} bytes)", 3 << 20)),
        "{out}"
    );
    assert!(out.contains(&gone), "{out}");
    assert_eq!(stamps(&storage), before);
}

/// A tmpfs of a few MiB, unmounted (and its mount point removed) on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(mib: u64) -> SmallFs {
        let dir = temp_dir("pgbt-tmpfs-");
        sh(&format!(
            "mount -t tmpfs -o size={mib}m pgbt-test '{}'",
            dir.path().display()
        ));
        SmallFs { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn too_little_room_fails_before_writing_anything() {
    if !is_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI runs as root: mounting a tmpfs needs it"
        );
        eprintln!("too_little_room_fails_before_writing_anything: needs root for a tmpfs, skipped");
        return;
    }
    let (_pg, db, files) = sample_store();
    let small = SmallFs::mount(2);
    let need: usize = by_sha(&files).values().map(Vec::len).sum();
    let out = export_fails(&db, &small.path(), &[]);
    assert!(
        out.contains(&format!(
            "not enough free space in {}: {need} bytes still to export",
            small.path().display()
        )),
        "{out}"
    );
    assert!(dir_contents(&small.path()).is_empty(), "{out}");
    // A dry run says the same.
    let out = export_fails(&db, &small.path(), &["--dry-run"]);
    assert!(out.contains("not enough free space"), "{out}");
}

#[test]
fn bad_arguments_and_databases_fail_with_one_line() {
    let (pg, db, _files) = sample_store();
    let dir = temp_dir("pgbt-export-");
    let out = export_fails(&db, dir.path(), &["--owner", "no-such-user-pgbootfs"]);
    assert!(
        out.contains("invalid --owner \"no-such-user-pgbootfs\": no user"),
        "{out}"
    );
    let file = dir.path().join("a-file");
    fs::write(&file, b"x").unwrap();
    let out = export_fails(&db, &file, &[]);
    assert!(out.contains("not a directory"), "{out}");
    // No MAAS tables at all.
    let empty = pg.create_db("empty");
    let out = export_fails(&empty, dir.path(), &[]);
    assert!(out.contains("pgbootfs: error:"), "{out}");
    assert_eq!(dir_contents(dir.path()).len(), 1, "{out}");
}

/// What a MAAS 3.5 region does to a 3.4 database at its first start, as far as
/// image files go: migration 0308 copies each largefile's sha256 and size into
/// its file rows and lets `largefile_id` be NULL; 0330 names each file on disk by
/// its sha256; the start-up export, finding every file already valid in the image
/// storage, drops the largefiles and unlinks their objects. (The real migrations
/// touch more tables; these are the columns pgbootfs reads.)
const UPGRADE_TO_35: &str = "\
    ALTER TABLE maasserver_bootresourcefile ADD COLUMN sha256 varchar(64), \
        ADD COLUMN size bigint; \
    UPDATE maasserver_bootresourcefile f SET sha256 = lf.sha256, size = lf.total_size \
        FROM maasserver_largefile lf WHERE lf.id = f.largefile_id; \
    ALTER TABLE maasserver_bootresourcefile ALTER COLUMN sha256 SET NOT NULL, \
        ALTER COLUMN size SET NOT NULL, ALTER COLUMN largefile_id DROP NOT NULL; \
    ALTER TABLE maasserver_bootresourcefile ADD COLUMN filename_on_disk varchar(64) \
        NOT NULL DEFAULT ''; \
    UPDATE maasserver_bootresourcefile SET filename_on_disk = sha256; \
    UPDATE maasserver_bootresourcefile SET largefile_id = NULL; \
    SELECT lo_unlink(content) FROM maasserver_largefile; \
    DELETE FROM maasserver_largefile;";

/// The upgrade round trip: export on a 3.4 database, the database upgraded as MAAS
/// 3.5 does it (its large objects gone), then the same tree read from the image
/// storage through the read side, byte for byte.
#[test]
fn an_export_reads_back_byte_exact_after_the_upgrade_to_35() {
    let pg = Cluster::start();
    let (src, files) = sample();
    let db = era_store(&pg, &ERAS[2], &src);
    let dir = temp_dir("pgbt-export-");
    let storage = dir.path().join("image-storage");
    export_ok(&db, &storage, &[]);
    pg.client(ERAS[2].name)
        .batch_execute(UPGRADE_TO_35)
        .unwrap();
    let left: i64 = pg
        .client(ERAS[2].name)
        .query_one("SELECT count(*) FROM pg_largeobject_metadata", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the upgrade left large objects");
    let flag = ["--image-storage", storage.to_str().unwrap()];
    let listing = pgbootfs_ok(&db, &["ls", flag[0], flag[1]]);
    assert!(!listing.contains("INCOMPLETE"), "{listing}");
    let srv = crate::common::http::Server::start(&db, &flag);
    for (path, data) in &files {
        let reply = srv.get(&format!("/{path}"), &[]);
        assert_eq!(reply.status, 200, "{path}");
        assert!(reply.body == *data, "{path}: other bytes after the upgrade");
    }
    drop(srv);
    let out = pgbootfs_ok(&db, &["verify", flag[0], flag[1]]);
    assert!(
        out.contains(&format!("{} file(s) ok, 0 wrong", files.len())),
        "{out}"
    );
}
