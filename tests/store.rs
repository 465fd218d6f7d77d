//! `pgbootfs import`, `ls`, `verify` and `remove` against real PostgreSQL clusters,
//! a real FUSE mount and a mirror written by the real `sstream-mirror`.

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use crate::common::store::*;
use crate::common::*;

const JAMMY: &str = "ubuntu/amd64/ga-22.04/jammy";

/// A small tree: one Ubuntu version of three files and one custom image.
fn sample_tree() -> (SrcTree, BTreeMap<String, Vec<u8>>) {
    let src = SrcTree::new();
    let mut files = BTreeMap::new();
    for (rel, data) in [
        (format!("{JAMMY}/20240101/boot-kernel"), bytes(1, 300_000)),
        (format!("{JAMMY}/20240101/boot-initrd"), bytes(2, 1_500_000)),
        (format!("{JAMMY}/20240101/squashfs"), bytes(3, 3 << 20)),
        (
            "custom/amd64/generic/myimage/20240301/root-tgz".to_string(),
            bytes(4, 2_000_001),
        ),
    ] {
        src.add(&rel, &data);
        files.insert(rel, data);
    }
    (src, files)
}

fn import(conninfo: &str, src: &SrcTree) -> String {
    pgbootfs_ok(conninfo, &["import", src.path().to_str().unwrap()])
}

#[test]
fn imported_tree_mounts_and_every_sha256sum_matches() {
    if !fuse_or_skip("imported_tree_mounts_and_every_sha256sum_matches") {
        return;
    }
    let pg = Cluster::start();
    let db = pg.conninfo("postgres");
    let (src, files) = sample_tree();
    let out = import(&db, &src);
    assert!(out.contains("2 version(s) new"), "{out}");
    let mnt = Mount::start(&db, &[]);
    for (rel, data) in &files {
        let sum = sh(&format!("sha256sum '{}'", mnt.path(rel).display()));
        assert_eq!(
            sum.split_whitespace().next(),
            Some(sha256_hex(data).as_str()),
            "{rel}"
        );
    }
    let mut c = pg.client("postgres");
    assert_consistent(&mut c);
}

/// Kills an import with SIGKILL, waits for its backend to go, and returns the rows
/// and large objects left: (sets, files, largefiles, large objects).
fn kill_and_count(mut run: Running, c: &mut postgres::Client) -> (i64, i64, i64, i64) {
    run.kill9();
    wait_backends_gone(c, "pgbootfs-import");
    let n = counts(c);
    (n.sets, n.files, n.largefiles, n.large_objects)
}

#[test]
fn rows_are_what_maas_writes() {
    let pg = Cluster::start();
    let db = pg.conninfo("postgres");
    let (src, files) = sample_tree();
    import(&db, &src);
    let mut c = pg.client("postgres");
    // Resources: name os/series (custom: bare), arch/subarch, rtype 2 (uploaded).
    let rows = c
        .query(
            "SELECT name, architecture, rtype, extra, kflavor, bootloader_type, rolling, \
                    base_image, created <= now() AND created > now() - interval '1 hour', \
                    updated >= created \
             FROM maasserver_bootresource ORDER BY name",
            &[],
        )
        .unwrap();
    let got: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{} {} rtype={} extra={} kflavor={:?} bootloader={:?} rolling={} base={:?} \
                 created_now={} updated={}",
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, i32>(2),
                r.get::<_, String>(3),
                r.get::<_, Option<String>>(4),
                r.get::<_, Option<String>>(5),
                r.get::<_, bool>(6),
                r.get::<_, String>(7),
                r.get::<_, bool>(8),
                r.get::<_, bool>(9),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            // As an upload: extra {"subarches": subarch, "title": ""} in Python's formatting; a
            // custom image is based on the commissioning release (MAAS 3.4's default).
            "myimage amd64/generic rtype=2 extra={\"subarches\": \"generic\", \"title\": \"\"} kflavor=None \
             bootloader=None rolling=false base=\"ubuntu/jammy\" created_now=true updated=true",
            "ubuntu/jammy amd64/ga-22.04 rtype=2 extra={\"subarches\": \"ga-22.04\", \"title\": \"\"} \
             kflavor=None bootloader=None rolling=false base=\"\" created_now=true updated=true",
        ]
    );
    let sets: Vec<(String, String, String)> = c
        .query(
            "SELECT r.name, s.version, s.label FROM maasserver_bootresourceset s \
             JOIN maasserver_bootresource r ON r.id = s.resource_id ORDER BY r.name",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        sets,
        vec![
            ("myimage".into(), "20240301".into(), "uploaded".into()),
            ("ubuntu/jammy".into(), "20240101".into(), "uploaded".into()),
        ]
    );
    // Files: filename, filetype from the name, extra '{}', largefile complete,
    // sha256 and size of the source, content a large object of that size.
    let rows = c
        .query(
            "SELECT r.name, f.filename, f.filetype, f.extra, lf.sha256, lf.total_size, lf.size, \
                    lf.created IS NOT NULL AND f.updated IS NOT NULL, \
                    (SELECT sum(octet_length(data)) FROM pg_largeobject WHERE loid = lf.content)::int8 \
             FROM maasserver_bootresourcefile f \
             JOIN maasserver_largefile lf ON lf.id = f.largefile_id \
             JOIN maasserver_bootresourceset s ON s.id = f.resource_set_id \
             JOIN maasserver_bootresource r ON r.id = s.resource_id ORDER BY 1, 2",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 4);
    for r in &rows {
        let (name, filename, filetype, extra): (String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let rel = if name == "myimage" {
            format!("custom/amd64/generic/myimage/20240301/{filename}")
        } else {
            format!("{JAMMY}/20240101/{filename}")
        };
        let data = &files[&rel];
        assert_eq!(filetype, filename, "file type from the name");
        assert_eq!(extra, "{}");
        assert_eq!(r.get::<_, String>(4), sha256_hex(data), "{rel}");
        assert_eq!(r.get::<_, i64>(5), data.len() as i64);
        assert_eq!(r.get::<_, i64>(6), data.len() as i64, "size = total_size");
        assert!(r.get::<_, bool>(7));
        assert_eq!(r.get::<_, i64>(8), data.len() as i64, "large object bytes");
    }
    // Column types are still those of the shipped schema.
    let types: Vec<String> = c
        .query(
            "SELECT table_name || '.' || column_name || ':' || data_type \
             FROM information_schema.columns WHERE table_name LIKE 'maasserver_%' \
             AND column_name IN ('id', 'extra', 'content') ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        types.contains(&"maasserver_bootresource.extra:text".to_string()),
        "{types:?}"
    );
    assert!(
        types.contains(&"maasserver_largefile.content:oid".to_string()),
        "{types:?}"
    );
}

#[test]
fn a_maas_34_schema_is_used_as_it_is() {
    let pg = Cluster::start();
    let db = pg.conninfo("postgres");
    let mut c = pg.client("postgres");
    Maas::create_schema_34(&mut c);
    let (src, _) = sample_tree();
    import(&db, &src);
    let t: String = c
        .query_one(
            "SELECT data_type FROM information_schema.columns \
             WHERE table_name = 'maasserver_bootresource' AND column_name = 'extra'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(t, "jsonb", "the existing table is not altered");
    assert_eq!(counts(&mut c).files, 4);
    pgbootfs_ok(&db, &["verify"]);
}

#[test]
fn shared_content_is_stored_once_and_reimport_is_a_no_op() {
    let pg = Cluster::start();
    let db = pg.conninfo("postgres");
    let src = SrcTree::new();
    let kernel = bytes(10, 2 << 20);
    src.add(&format!("{JAMMY}/20240101/boot-kernel"), &kernel);
    src.add(&format!("{JAMMY}/20240101/squashfs"), &bytes(11, 1 << 20));
    src.add(&format!("{JAMMY}/20240202/boot-kernel"), &kernel);
    src.add(&format!("{JAMMY}/20240202/squashfs"), &bytes(12, 1 << 20));
    // The same bytes twice inside one version too.
    src.add("ubuntu/arm64/generic/noble/1/boot-kernel", &kernel);
    src.add("ubuntu/arm64/generic/noble/1/boot-initrd", &kernel);
    let out = import(&db, &src);
    assert!(out.contains("3 version(s) new"), "{out}");
    // Duplicates are found before writing: only the distinct bytes are written.
    assert!(
        out.contains("3 file(s) written (4194304 bytes), 3 already stored"),
        "{out}"
    );
    let mut c = pg.client("postgres");
    let first = counts(&mut c);
    assert_eq!(first.files, 6);
    assert_eq!(first.largefiles, 3, "one largefile per distinct content");
    assert_eq!(
        first.large_objects, 3,
        "one large object per distinct content"
    );
    let oids = |c: &mut postgres::Client| -> Vec<u32> {
        c.query("SELECT oid FROM pg_largeobject_metadata ORDER BY oid", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let before = oids(&mut c);
    let out = import(&db, &src);
    assert!(out.contains("0 version(s) new"), "{out}");
    assert!(out.contains("3 unchanged"), "{out}");
    assert_eq!(counts(&mut c), first);
    assert_eq!(oids(&mut c), before, "no new large object");
    assert_consistent(&mut c);
}

#[test]
fn changed_content_is_refused_unless_replace() {
    let pg = Cluster::start();
    let db = pg.conninfo("postgres");
    let src = SrcTree::new();
    src.add(
        &format!("{JAMMY}/20240101/boot-kernel"),
        &bytes(20, 100_000),
    );
    src.add(&format!("{JAMMY}/20240101/squashfs"), &bytes(21, 200_000));
    import(&db, &src);
    let mut c = pg.client("postgres");
    let before = counts(&mut c);
    let new_squash = bytes(22, 200_000);
    src.add(&format!("{JAMMY}/20240101/squashfs"), &new_squash);
    let err = pgbootfs_fails(&db, &["import", src.path().to_str().unwrap()]);
    assert!(err.contains(&format!("{JAMMY}/20240101")), "{err}");
    assert!(err.contains("squashfs"), "{err}");
    assert!(err.contains("--replace"), "{err}");
    assert_eq!(counts(&mut c), before, "nothing written");
    let out = pgbootfs_ok(&db, &["import", "--replace", src.path().to_str().unwrap()]);
    assert!(out.contains("1 replaced"), "{out}");
    let sha: String = c
        .query_one(
            "SELECT lf.sha256 FROM maasserver_bootresourcefile f \
             JOIN maasserver_largefile lf ON lf.id = f.largefile_id WHERE f.filename = 'squashfs'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(sha, sha256_hex(&new_squash));
    assert_eq!(
        counts(&mut c).large_objects,
        2,
        "the old squashfs is unlinked"
    );
    assert_consistent(&mut c);
    pgbootfs_ok(&db, &["verify"]);
}

#[test]
fn kill_9_mid_import_leaves_nothing_and_a_rerun_completes() {
    let pg = Cluster::start();
    let db = pg.conninfo("postgres");
    let src = SrcTree::new();
    let mut all = Vec::new();
    for (v, seed) in [("20240101", 30), ("20240202", 40)] {
        for (i, name) in ["boot-initrd", "boot-kernel", "squashfs"]
            .iter()
            .enumerate()
        {
            let rel = format!("{JAMMY}/{v}/{name}");
            let data = bytes(seed + i as u64, 40 << 20);
            src.add(&rel, &data);
            all.push((rel, data));
        }
    }
    let arg = src.path().to_str().unwrap().to_string();
    let mut c = pg.client("postgres");

    // Killed while writing the 2nd file of the first version: nothing at all.
    let mut run = Running::start(&db, &["import", &arg]);
    run.wait_for_log(
        &format!("{JAMMY}/20240101/boot-kernel"),
        Duration::from_secs(120),
    );
    assert_eq!(kill_and_count(run, &mut c), (0, 0, 0, 0));

    // Killed in the 2nd version after the 1st committed: exactly the 1st is there.
    let mut run = Running::start(&db, &["import", &arg]);
    run.wait_for_log(
        &format!("{JAMMY}/20240101: committed"),
        Duration::from_secs(120),
    );
    run.wait_for_log(
        &format!("{JAMMY}/20240202/boot-kernel"),
        Duration::from_secs(120),
    );
    assert_eq!(kill_and_count(run, &mut c), (1, 3, 3, 3));
    assert_consistent(&mut c);
    let ls = pgbootfs_ok(&db, &["ls"]);
    assert!(ls.contains("20240101") && !ls.contains("20240202"), "{ls}");

    // The re-run finishes the job, without duplicates.
    let out = import(&db, &src);
    assert!(
        out.contains("1 version(s) new") && out.contains("1 unchanged"),
        "{out}"
    );
    let n = counts(&mut c);
    assert_eq!(
        (n.sets, n.files, n.largefiles, n.large_objects),
        (2, 6, 6, 6),
        "{n:?}"
    );
    assert_consistent(&mut c);
    for (rel, data) in &all {
        let sha: String = c
            .query_one(
                "SELECT lf.sha256 FROM maasserver_bootresourcefile f \
                 JOIN maasserver_largefile lf ON lf.id = f.largefile_id \
                 JOIN maasserver_bootresourceset s ON s.id = f.resource_set_id \
                 WHERE s.version = $1 AND f.filename = $2",
                &[
                    &rel.split('/').nth(4).unwrap(),
                    &rel.rsplit('/').next().unwrap(),
                ],
            )
            .unwrap()
            .get(0);
        assert_eq!(sha, sha256_hex(data), "{rel}");
    }
    pgbootfs_ok(&db, &["verify"]);
}

#[test]
fn a_bad_source_is_refused_whole_with_every_problem_listed() {
    let pg = Cluster::start();
    let db = pg.conninfo("postgres");
    let src = SrcTree::new();
    src.add(&format!("{JAMMY}/20240101/boot-kernel"), &bytes(50, 1000));
    src.add("ubuntu/amd64/README", b"outside the layout");
    src.add(&format!("{JAMMY}/20240101/extra/boot-initrd"), b"too deep");
    src.add(&format!("{JAMMY}/20240101/notes.txt"), b"no MAAS file type");
    std::os::unix::fs::symlink(
        "/etc/hostname",
        src.path().join(format!("{JAMMY}/20240101/squashfs")),
    )
    .unwrap();
    sh(&format!(
        "mkfifo '{}'",
        src.path()
            .join(format!("{JAMMY}/20240101/root-tgz"))
            .display()
    ));
    src.add_raw_name(&format!("{JAMMY}/20240101"), b"boot-\xff", b"x");
    let err = pgbootfs_fails(&db, &["import", src.path().to_str().unwrap()]);
    for needle in [
        "nothing was written",
        "ubuntu/amd64/README: file outside the layout",
        "20240101/extra: directory inside a version",
        "notes.txt: cannot tell its MAAS file type",
        "squashfs: symbolic link",
        "root-tgz: not a regular file",
        "name is not UTF-8",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    let mut c = pg.client("postgres");
    assert!(!tables_exist(&mut c), "not even the tables were created");
    assert_eq!(counts(&mut c).large_objects, 0);
    // An empty source and a missing one are refused too.
    let empty = SrcTree::new();
    let err = pgbootfs_fails(&db, &["import", empty.path().to_str().unwrap()]);
    assert!(err.contains("no image files found"), "{err}");
    let err = pgbootfs_fails(&db, &["import", "/nonexistent/src"]);
    assert!(
        err.contains("/nonexistent/src") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn verify_passes_then_names_the_changed_and_the_missing_file() {
    let pg = Cluster::start();
    let db = pg.conninfo("postgres");
    let (src, _) = sample_tree();
    import(&db, &src);
    let out = pgbootfs_ok(&db, &["verify"]);
    assert!(out.contains("4 file(s) ok, 0 wrong"), "{out}");
    let mut c = pg.client("postgres");
    let oid_of = |c: &mut postgres::Client, name: &str| -> u32 {
        c.query_one(
            "SELECT lf.content FROM maasserver_bootresourcefile f \
             JOIN maasserver_largefile lf ON lf.id = f.largefile_id WHERE f.filename = $1",
            &[&name],
        )
        .unwrap()
        .get(0)
    };
    // One byte in the middle of squashfs changes; the size stays.
    let oid = oid_of(&mut c, "squashfs");
    c.execute("SELECT lo_put($1, 1500000, '\\x00'::bytea)", &[&oid])
        .unwrap();
    c.execute("SELECT lo_put($1, 1500001, '\\x01'::bytea)", &[&oid])
        .unwrap();
    let err = pgbootfs_fails(&db, &["verify"]);
    assert!(
        err.contains(&format!("FAILED {JAMMY}/20240101/squashfs: sha256")),
        "{err}"
    );
    assert!(!err.contains("FAILED custom"), "{err}");
    assert!(err.contains("3 file(s) ok, 1 wrong"), "{err}");
    // A subtree without the bad file passes.
    pgbootfs_ok(&db, &["verify", "custom"]);
    // A missing large object is named too.
    let oid = oid_of(&mut c, "root-tgz");
    c.execute("SELECT lo_unlink($1)", &[&oid]).unwrap();
    let err = pgbootfs_fails(&db, &["verify", "custom/amd64"]);
    assert!(
        err.contains("FAILED custom/amd64/generic/myimage/20240301/root-tgz")
            && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn remove_leaves_no_orphans_and_no_dangling_rows() {
    let pg = Cluster::start();
    let db = pg.conninfo("postgres");
    let src = SrcTree::new();
    let kernel = bytes(60, 500_000);
    src.add(&format!("{JAMMY}/20240101/boot-kernel"), &kernel);
    src.add(&format!("{JAMMY}/20240101/squashfs"), &bytes(61, 700_000));
    src.add(&format!("{JAMMY}/20240202/boot-kernel"), &kernel);
    src.add(&format!("{JAMMY}/20240202/squashfs"), &bytes(62, 700_000));
    src.add("custom/amd64/generic/myimage/1/root-tgz", &bytes(63, 1000));
    import(&db, &src);
    let mut c = pg.client("postgres");
    assert_eq!(counts(&mut c).large_objects, 4);

    // Refused: too broad, a single file, and nothing there.
    let err = pgbootfs_fails(&db, &["remove", "ubuntu"]);
    assert!(err.contains("at least os/arch/subarch"), "{err}");
    let err = pgbootfs_fails(&db, &["remove", &format!("{JAMMY}/20240101/squashfs")]);
    assert!(err.contains("removed whole"), "{err}");
    let err = pgbootfs_fails(&db, &["remove", &format!("{JAMMY}/19990101")]);
    assert!(err.contains("nothing in the store"), "{err}");
    assert_eq!(counts(&mut c).large_objects, 4);

    // One version: its own squashfs goes, the kernel it shares stays.
    let out = pgbootfs_ok(&db, &["remove", &format!("{JAMMY}/20240101")]);
    assert!(
        out.contains("removed 1 version(s), 2 file row(s), 1 large object(s)"),
        "{out}"
    );
    let n = counts(&mut c);
    assert_eq!(
        (n.resources, n.sets, n.files, n.largefiles, n.large_objects),
        (2, 2, 3, 3, 3)
    );
    assert_consistent(&mut c);
    pgbootfs_ok(&db, &["verify"]);

    // A whole series: the resource goes with its last version.
    let out = pgbootfs_ok(&db, &["remove", JAMMY]);
    assert!(out.contains("1 resource(s) left empty"), "{out}");
    let n = counts(&mut c);
    assert_eq!(
        (n.resources, n.sets, n.files, n.largefiles, n.large_objects),
        (1, 1, 1, 1, 1)
    );
    assert_consistent(&mut c);
    let out = pgbootfs_ok(&db, &["remove", "custom/amd64/generic"]);
    assert!(out.contains("removed 1 version(s)"), "{out}");
    assert_eq!(counts(&mut c).large_objects, 0);
    assert_consistent(&mut c);
}

#[test]
fn ls_into_a_closed_pipe_ends_quietly() {
    let pg = Cluster::start();
    let db = pg.conninfo("postgres");
    let (src, _) = sample_tree();
    import(&db, &src);
    // As `pgbootfs ls --json | head -1` once head has gone: every write fails with
    // EPIPE, which is the reader's choice, not an error of ours.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(bin())
        .args(["--db", &db, "ls", "--json"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {}: {err}", out.status);
    assert!(!err.contains("error"), "{err}");
}

#[test]
fn ls_shows_sizes_sha256_and_unfinished_files() {
    let pg = Cluster::start();
    let db = pg.conninfo("postgres");
    let (src, files) = sample_tree();
    import(&db, &src);
    // An unfinished download written as MAAS does.
    let mut c = pg.client("postgres");
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/noble", "amd64/generic", "20240404");
    m.file_partial(s, "squashfs", &bytes(70, 700), Some(100));
    let text = pgbootfs_ok(&db, &["ls"]);
    let kernel = &files[&format!("{JAMMY}/20240101/boot-kernel")];
    assert!(text.contains(&sha256_hex(kernel)), "{text}");
    assert!(text.contains("unfinished (100 of 700 bytes)"), "{text}");
    assert!(
        text.contains("ubuntu/amd64/generic/noble/20240404"),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&pgbootfs_ok(&db, &["ls", "ubuntu", "--json"])).unwrap();
    let sets = json["sets"].as_array().unwrap();
    assert_eq!(sets.len(), 2, "{json}");
    let noble = sets.iter().find(|s| s["series"] == "noble").unwrap();
    assert_eq!(noble["complete"], false);
    assert_eq!(noble["files"][0]["written"], 100);
    let jammy = sets.iter().find(|s| s["series"] == "jammy").unwrap();
    assert_eq!(jammy["complete"], true);
    assert_eq!(jammy["files"].as_array().unwrap().len(), 3);
    assert_eq!(jammy["size"], 300_000 + 1_500_000 + (3 << 20));
    let err = pgbootfs_fails(&db, &["ls", "debian"]);
    assert!(
        err.contains("nothing in the store under \"debian\""),
        "{err}"
    );
}

fn mirror_items() -> Vec<Item> {
    let base = |ftype, path, seed, len| Item {
        product: "com.ubuntu.maas.stable:v3:boot:22.04:amd64:ga-22.04",
        os: "ubuntu",
        release: "jammy",
        arch: "amd64",
        subarch: "ga-22.04",
        version: "20240101",
        ftype,
        path,
        data: bytes(seed, len),
    };
    vec![
        base(
            "boot-kernel",
            "jammy/amd64/20240101/ga-22.04/generic/boot-kernel",
            80,
            200_000,
        ),
        base(
            "boot-initrd",
            "jammy/amd64/20240101/ga-22.04/generic/boot-initrd",
            81,
            900_000,
        ),
        base("squashfs", "jammy/amd64/20240101/squashfs", 82, 2 << 20),
    ]
}

#[test]
fn an_sstream_mirror_imports_with_checksums_verified() {
    let pg = Cluster::start();
    let db = pg.conninfo("postgres");
    let src = SrcTree::new();
    let items = mirror_items();
    write_simplestreams(src.path(), &items);
    let out_dir = SrcTree::new();
    let mirror = out_dir.path().join("mirror");
    run_sstream_mirror(src.path(), &mirror);
    let out = pgbootfs_ok(&db, &["import", mirror.to_str().unwrap()]);
    assert!(out.contains("1 version(s) new"), "{out}");
    let mut c = pg.client("postgres");
    let r = c
        .query_one(
            "SELECT name, architecture, rtype, extra, kflavor FROM maasserver_bootresource",
            &[],
        )
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "ubuntu/jammy");
    assert_eq!(r.get::<_, String>(1), "amd64/ga-22.04");
    assert_eq!(r.get::<_, i32>(2), 0, "rtype synced");
    let extra: serde_json::Value = serde_json::from_str(&r.get::<_, String>(3)).unwrap();
    assert_eq!(extra["subarches"], "generic");
    assert_eq!(r.get::<_, Option<String>>(4).as_deref(), Some("generic"));
    let label: String = c
        .query_one("SELECT label FROM maasserver_bootresourceset", &[])
        .unwrap()
        .get(0);
    assert_eq!(label, "stable", "the product's label");
    for it in &items {
        let name = it.path.rsplit('/').next().unwrap();
        let row = c
            .query_one(
                "SELECT f.filetype, lf.sha256 FROM maasserver_bootresourcefile f \
                 JOIN maasserver_largefile lf ON lf.id = f.largefile_id WHERE f.filename = $1",
                &[&name],
            )
            .unwrap();
        assert_eq!(row.get::<_, String>(0), it.ftype);
        assert_eq!(row.get::<_, String>(1), sha256_hex(&it.data));
    }
    // Same mirror again: nothing to do.
    let out = pgbootfs_ok(&db, &["import", mirror.to_str().unwrap()]);
    assert!(out.contains("1 unchanged"), "{out}");
    pgbootfs_ok(&db, &["verify"]);
    assert_consistent(&mut c);
}

#[test]
fn a_mirror_file_with_a_wrong_checksum_or_size_is_refused() {
    let pg = Cluster::start();
    let src = SrcTree::new();
    let items = mirror_items();
    write_simplestreams(src.path(), &items);
    let out_dir = SrcTree::new();
    let mirror = out_dir.path().join("mirror");
    run_sstream_mirror(src.path(), &mirror);
    let squash = mirror.join(items[2].path);
    let mut data = fs::read(&squash).unwrap();
    data[1000] ^= 0xff;
    fs::write(&squash, &data).unwrap();
    let db = pg.create_db("flipped");
    let err = pgbootfs_fails(&db, &["import", mirror.to_str().unwrap()]);
    assert!(err.contains("squashfs") && err.contains("sha256"), "{err}");
    let mut c = pg.client("flipped");
    let n = counts(&mut c);
    assert_eq!(
        (n.sets, n.files, n.largefiles, n.large_objects),
        (0, 0, 0, 0),
        "{n:?}"
    );
    // A truncated file is caught before anything is written.
    fs::write(&squash, &data[..1000]).unwrap();
    let db = pg.create_db("truncated");
    let err = pgbootfs_fails(&db, &["import", mirror.to_str().unwrap()]);
    assert!(err.contains("1000 bytes, the index says"), "{err}");
    let mut c = pg.client("truncated");
    assert!(!tables_exist(&mut c));
}

#[test]
fn remove_leaves_open_readers_their_snapshot() {
    let pg = Cluster::start();
    let db = pg.conninfo("postgres");
    let src = SrcTree::new();
    let data = bytes(90, 3 << 20);
    src.add(&format!("{JAMMY}/20240101/squashfs"), &data);
    import(&db, &src);
    let mut c = pg.client("postgres");
    let oid: u32 = c
        .query_one("SELECT content FROM maasserver_largefile", &[])
        .unwrap()
        .get(0);
    // The mount's own handle type, opened before the removal.
    let cfg = pgbootfs::db::DbConfig::resolve(Some(&db)).unwrap();
    let pool = pgbootfs::handle::HandlePool::new(&cfg, &Default::default());
    let file = pgbootfs::catalog::FileInfo {
        oid,
        size: data.len() as u64,
        sha256: sha256_hex(&data),
        filetype: "squashfs".into(),
        stored: None,
    };
    let h = pool.open(&file, "squashfs");
    // The first read sets the handle up, and with it the snapshot.
    h.prepare(0).unwrap();
    pgbootfs_ok(&db, &["remove", &format!("{JAMMY}/20240101")]);
    assert_eq!(
        counts(&mut c).large_objects,
        0,
        "unlinked for everyone else"
    );
    let mut got = vec![0u8; data.len()];
    let mut off = 0;
    while off < data.len() {
        let n = h.read_into(off as u64, &mut got[off..]).unwrap();
        assert!(n > 0, "short read at {off}");
        off += n;
    }
    h.close();
    assert_eq!(
        sha256_hex(&got),
        sha256_hex(&data),
        "the reader kept its snapshot"
    );
}

#[test]
fn a_lost_connection_mid_import_leaves_nothing_and_says_so() {
    let pg = Cluster::start();
    let db = pg.conninfo("postgres");
    let src = SrcTree::new();
    for (i, name) in ["boot-initrd", "boot-kernel", "squashfs"]
        .iter()
        .enumerate()
    {
        src.add(
            &format!("{JAMMY}/20240101/{name}"),
            &bytes(100 + i as u64, 40 << 20),
        );
    }
    let mut c = pg.client("postgres");
    let mut run = Running::start(&db, &["import", src.path().to_str().unwrap()]);
    run.wait_for_log(
        &format!("{JAMMY}/20240101/boot-kernel"),
        Duration::from_secs(120),
    );
    c.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'pgbootfs-import'",
        &[],
    )
    .unwrap();
    let st = run.wait_exit(Duration::from_secs(60));
    assert!(!st.success(), "import must fail:\n{}", run.log());
    let log = run.log();
    assert!(log.contains("pgbootfs: error:"), "{log}");
    assert!(
        log.contains(&format!("{JAMMY}/20240101")),
        "names the file: {log}"
    );
    wait_backends_gone(&mut c, "pgbootfs-import");
    let n = counts(&mut c);
    assert_eq!(
        (n.sets, n.files, n.largefiles, n.large_objects),
        (0, 0, 0, 0),
        "{n:?}"
    );
    // The next run does the whole job.
    let out = import(&db, &src);
    assert!(out.contains("1 version(s) new"), "{out}");
    assert_consistent(&mut c);
}

#[test]
fn a_password_comes_from_the_password_file_as_libpq_reads_it() {
    let (pg, mut c) = store();
    c.batch_execute("CREATE ROLE maas LOGIN SUPERUSER PASSWORD 'pa:ss'")
        .unwrap();
    // Require a password of maas over the socket, ahead of the cluster's trust line.
    let hba = pg.host().join("data").join("pg_hba.conf");
    let rules = fs::read_to_string(&hba).unwrap();
    fs::write(&hba, format!("local all maas scram-sha-256\n{rules}")).unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    let tmp = temp_dir("pgbt-pass-");
    let file = tmp.path().join("pgpass");
    let host = pg.host().display().to_string();
    fs::write(&file, format!("{host}:5432:postgres:maas:pa\\:ss\n")).unwrap();
    let conninfo = format!("host={host} port=5432 user=maas dbname=postgres");
    let run = |mode: u32, passfile: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
        std::process::Command::new(bin())
            .args(["--db", &conninfo, "ls"])
            .env("PGPASSFILE", passfile)
            .env_remove("PGPASSWORD")
            .output()
            .unwrap()
    };
    let ok = run(0o600, &file);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let open = run(0o644, &file);
    assert!(!open.status.success(), "a world-readable file is ignored");
    let err = String::from_utf8_lossy(&open.stderr);
    assert!(err.contains("chmod 0600"), "{err}");
    assert!(!err.contains("pa:ss"), "no password in messages: {err}");
    let none = run(0o600, &tmp.path().join("absent"));
    assert!(!none.status.success());
}
