//! pgbootfs on MAAS 3.5+ databases: MAAS's own DDL for 3.5, 3.6 and 3.7 (under
//! schema/, with provenance), rows as MAAS writes them (a 3.5 database right after
//! migration 0308 with files still in large objects, then migration 0330; a 3.7
//! one with short-sha names), and a temporary image storage directory. Reads go
//! through the real mount and over HTTP with curl.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use postgres::Client;

use crate::common::http::Server;
use crate::common::store::*;
use crate::common::*;

const MAAS_35: &str = include_str!("../schema/maas-3.5.sql");
const MAAS_36: &str = include_str!("../schema/maas-3.6.sql");
const MAAS_37: &str = include_str!("../schema/maas-3.7.sql");

/// Migration 0330 (canonical/maas 3.5 and 3.6,
/// src/maasserver/migrations/maasserver/0330_bootresourcefile_filename_on_disk.py):
/// the column, then every existing file named by its sha256.
const MIGRATION_0330: &str = "\
    ALTER TABLE maasserver_bootresourcefile \
        ADD COLUMN filename_on_disk character varying(64) NOT NULL DEFAULT ''; \
    ALTER TABLE maasserver_bootresourcefile ALTER COLUMN filename_on_disk DROP DEFAULT; \
    UPDATE maasserver_bootresourcefile SET filename_on_disk = sha256;";

/// How a file's name in the image storage comes about.
#[derive(Clone, Copy, PartialEq)]
enum Naming {
    /// 3.5 before migration 0330: no column, the name is the sha256.
    Sha256,
    /// 3.6+: `filename_on_disk`, a short prefix of the sha256 for new files
    /// (`calculate_filename_on_disk`, 3.7 models/bootresourcefile.py).
    Short,
}

/// A MAAS 3.5+ database and its image storage, written as MAAS writes them.
struct Region {
    db: String,
    client: Client,
    storage: tempfile::TempDir,
    naming: Naming,
}

impl Region {
    fn new(pg: &Cluster, name: &str, ddl: &str, naming: Naming) -> Region {
        let db = pg.create_db(name);
        let mut client = pg.client(name);
        client.batch_execute(ddl).unwrap();
        Region {
            db,
            client,
            storage: temp_dir("pgbt-image-storage-"),
            naming,
        }
    }

    fn dir(&self) -> &Path {
        self.storage.path()
    }

    /// `--image-storage DIR` for the command line.
    fn flag(&self) -> [String; 2] {
        ["--image-storage".into(), self.dir().display().to_string()]
    }

    /// A synced resource and one set of it (MAAS 3.5+ rows: jsonb extra, base_image '').
    fn set(&mut self, name: &str, arch: &str, version: &str) -> i64 {
        let rid: i64 = match self
            .client
            .query_opt(
                "SELECT id::int8 FROM maasserver_bootresource WHERE name = $1 AND architecture = $2",
                &[&name, &arch],
            )
            .unwrap()
        {
            Some(r) => r.get(0),
            None => self
                .client
                .query_one(
                    "INSERT INTO maasserver_bootresource (created, updated, rtype, name, \
                     architecture, extra, kflavor, bootloader_type, rolling, base_image) \
                     VALUES (now(), now(), 0, $1, $2, '{\"subarches\": \"generic\"}', \
                     'generic', NULL, false, '') RETURNING id::int8",
                    &[&name, &arch],
                )
                .unwrap()
                .get(0),
        };
        self.client
            .query_one(
                "INSERT INTO maasserver_bootresourceset (created, updated, version, label, \
                 resource_id) VALUES (now(), now(), $1, 'stable', $2) RETURNING id::int8",
                &[&version, &rid],
            )
            .unwrap()
            .get(0)
    }

    /// The name MAAS gives a new file's bytes on disk.
    fn disk_name(&mut self, sha: &str) -> String {
        match self.naming {
            Naming::Sha256 => sha.to_string(),
            Naming::Short => {
                // calculate_filename_on_disk: the name of a file of the same sha256,
                // else the shortest prefix of 7+ digits no other name starts with.
                if let Some(r) = self
                    .client
                    .query_opt(
                        "SELECT filename_on_disk::text FROM maasserver_bootresourcefile \
                         WHERE sha256 = $1 LIMIT 1",
                        &[&sha],
                    )
                    .unwrap()
                {
                    return r.get(0);
                }
                let names: Vec<String> = self
                    .client
                    .query(
                        "SELECT filename_on_disk::text FROM maasserver_bootresourcefile",
                        &[],
                    )
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                (7..64)
                    .map(|i| sha[..i].to_string())
                    .find(|p| names.iter().all(|n| !n.starts_with(p.as_str())))
                    .unwrap()
            }
        }
    }

    /// A file row whose bytes are in the image storage (largefile_id NULL).
    /// Returns its name on disk.
    fn file_on_disk(&mut self, set: i64, filename: &str, data: &[u8]) -> String {
        let sha = sha256_hex(data);
        let name = self.disk_name(&sha);
        self.insert_file(set, filename, data, None, &name);
        fs::write(self.dir().join(&name), data).unwrap();
        name
    }

    /// A file row that still holds a large object: migration 0308 copied its sha256
    /// and size, and MAAS's start-up export has not moved it yet.
    fn file_in_db(&mut self, set: i64, filename: &str, data: &[u8]) -> String {
        let sha = sha256_hex(data);
        let oid: u32 = self
            .client
            .query_one("SELECT lo_from_bytea(0, $1)", &[&data])
            .unwrap()
            .get(0);
        let lf: i64 = self
            .client
            .query_one(
                "INSERT INTO maasserver_largefile (created, updated, sha256, total_size, \
                 content, size) VALUES (now(), now(), $1, $2, $3, $2) RETURNING id::int8",
                &[&sha, &(data.len() as i64), &oid],
            )
            .unwrap()
            .get(0);
        let name = self.disk_name(&sha);
        self.insert_file(set, filename, data, Some(lf), &name);
        name
    }

    fn insert_file(&mut self, set: i64, filename: &str, data: &[u8], lf: Option<i64>, name: &str) {
        let sha = sha256_hex(data);
        let size = data.len() as i64;
        if self.naming == Naming::Sha256 {
            self.client
                .execute(
                    "INSERT INTO maasserver_bootresourcefile (created, updated, filename, \
                     filetype, extra, largefile_id, resource_set_id, sha256, size) \
                     VALUES (now(), now(), $1, $1, '{}', $2, $3, $4, $5)",
                    &[&filename, &lf, &set, &sha, &size],
                )
                .unwrap();
        } else {
            self.client
                .execute(
                    "INSERT INTO maasserver_bootresourcefile (created, updated, filename, \
                     filetype, extra, largefile_id, resource_set_id, sha256, size, \
                     filename_on_disk) VALUES (now(), now(), $1, $1, '{}', $2, $3, $4, $5, $6)",
                    &[&filename, &lf, &set, &sha, &size, &name],
                )
                .unwrap();
        }
    }
}

fn curl(url: &str, extra: &[&str]) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "-o", "-"])
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Backends the handle pool opened (the catalog's are named otherwise).
fn handle_backends(c: &mut Client) -> i64 {
    c.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbootfs-handle'",
        &[],
    )
    .unwrap()
    .get(0)
}

const NOBLE: &str = "ubuntu/amd64/ga-24.04/noble";

/// A 3.5 database right after migration 0308: version 20250101 has its kernel and
/// initrd exported and its squashfs still in a large object; version 20250102's
/// squashfs is being downloaded (`.incomplete` pre-allocated at full size), so it
/// is hidden. Then migration 0330 names every file by its sha256, as before.
#[test]
fn maas35_after_0308_reads_disk_and_database() {
    if !fuse_or_skip("maas35_after_0308_reads_disk_and_database") {
        return;
    }
    let pg = Cluster::start();
    let mut r = Region::new(&pg, "maas35", MAAS_35, Naming::Sha256);
    let kernel = bytes(1, 300_000);
    let initrd = bytes(2, (3 << 20) + 4321);
    let squashfs = bytes(3, (5 << 20) + 17);
    let next_kernel = bytes(4, 300_001);
    let next_squashfs = bytes(5, 1 << 20);
    let s1 = r.set("ubuntu/noble", "amd64/ga-24.04", "20250101");
    let kname = r.file_on_disk(s1, "boot-kernel", &kernel);
    assert_eq!(
        kname,
        sha256_hex(&kernel),
        "before 0330 the name is the sha256"
    );
    r.file_on_disk(s1, "boot-initrd", &initrd);
    let sq_name = r.file_in_db(s1, "squashfs", &squashfs);
    let s2 = r.set("ubuntu/noble", "amd64/ga-24.04", "20250102");
    r.file_on_disk(s2, "boot-kernel", &next_kernel);
    // MAAS 3.7 pre-allocates the download at full size: still not complete.
    let next_sha = sha256_hex(&next_squashfs);
    r.insert_file(s2, "squashfs", &next_squashfs, None, &next_sha);
    fs::write(
        r.dir().join(format!("{next_sha}.incomplete")),
        vec![0u8; next_squashfs.len()],
    )
    .unwrap();

    let flag = r.flag();
    let with = |args: &[&str]| -> Vec<String> {
        args.iter()
            .map(|s| s.to_string())
            .chain(flag.iter().cloned())
            .collect()
    };
    let ls = |args: &[&str]| {
        let a = with(args);
        pgbootfs_ok(&r.db, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // ls: where each file is.
    let text = ls(&["ls"]);
    let line = |name: &str, version: &str| -> String {
        let mut in_set = false;
        for l in text.lines() {
            if !l.starts_with(' ') {
                in_set = l.starts_with(&format!("{NOBLE}/{version} "));
            } else if in_set && l.trim_start().starts_with(&format!("{name} ")) {
                return l.to_string();
            }
        }
        panic!("no {version}/{name} in:\n{text}");
    };
    assert!(
        line("boot-kernel", "20250101").ends_with(&format!("disk {kname}")),
        "{text}"
    );
    assert!(
        line("squashfs", "20250101").contains("database (large object"),
        "{text}"
    );
    assert!(
        line("squashfs", "20250102").contains("missing") && text.contains("being written by MAAS"),
        "{text}"
    );
    assert!(
        text.contains(&format!("{NOBLE}/20250102  label=stable  2 file(s)"))
            && text.contains("INCOMPLETE"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&ls(&["ls", "--json"])).unwrap();
    let locations: Vec<&str> = json["sets"][0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["location"].as_str().unwrap())
        .collect();
    assert_eq!(locations, ["disk", "disk", "database"]);

    // The mount: on-disk files from the storage, byte-exact, with no handle
    // connection; the exported-not-yet file from its large object.
    let mut ro = pg.client("maas35");
    let extra = with(&[]);
    let m = Mount::start(&r.db, &extra.iter().map(String::as_str).collect::<Vec<_>>());
    let v1 = format!("{NOBLE}/20250101");
    assert_eq!(
        read_all(&m.path(&format!("{v1}/boot-kernel"))).unwrap(),
        kernel
    );
    assert_eq!(
        read_all(&m.path(&format!("{v1}/boot-initrd"))).unwrap(),
        initrd
    );
    assert_eq!(
        handle_backends(&mut ro),
        0,
        "storage files need no database"
    );
    assert_eq!(
        read_all(&m.path(&format!("{v1}/squashfs"))).unwrap(),
        squashfs
    );
    // The version whose squashfs is being written is hidden, as MAAS hides it.
    let versions: Vec<String> = fs::read_dir(m.path(NOBLE))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(versions, ["20250101"]);

    // Over HTTP with curl: whole files, a range of a storage file (sendfile from an
    // offset), and the large object.
    let srv = Server::start(&r.db, &extra.iter().map(String::as_str).collect::<Vec<_>>());
    let url = |f: &str| srv.url(&format!("/{v1}/{f}"));
    assert_eq!(curl(&url("boot-initrd"), &[]), initrd);
    assert_eq!(
        curl(&url("boot-initrd"), &["-r", "1000000-2999999"]),
        initrd[1_000_000..3_000_000]
    );
    assert_eq!(curl(&url("boot-kernel"), &[]), kernel);
    assert_eq!(curl(&url("squashfs"), &[]), squashfs);
    assert_eq!(
        srv.get(&format!("/{NOBLE}/20250102/boot-kernel"), &[])
            .status,
        404,
        "hidden version"
    );
    drop(srv);
    drop(m);

    // MAAS's start-up export moves the squashfs; then migration 0330.
    fs::write(r.dir().join(&sq_name), &squashfs).unwrap();
    r.client
        .batch_execute(
            "UPDATE maasserver_bootresourcefile SET largefile_id = NULL; \
             DELETE FROM maasserver_largefile",
        )
        .unwrap();
    r.client.batch_execute(MIGRATION_0330).unwrap();
    let text = ls(&["ls", &v1]);
    assert!(
        text.lines()
            .filter(|l| l.starts_with(' '))
            .all(|l| l.contains(" disk ")),
        "{text}"
    );
    let out = ls(&["verify", &v1]);
    assert!(out.contains("3 file(s) ok, 0 wrong"), "{out}");

    // Writers refuse with one line, and write nothing.
    let src = SrcTree::new();
    src.add("custom/amd64/generic/x/1/root-tgz", b"x");
    for args in [
        vec!["import", src.path().to_str().unwrap()],
        vec!["remove", "ubuntu/amd64/ga-24.04"],
    ] {
        let err = pgbootfs_fails(
            &r.db,
            &with(&args).iter().map(String::as_str).collect::<Vec<_>>(),
        );
        assert!(
            err.lines()
                .filter(|l| l.starts_with("pgbootfs: error:"))
                .map(|l| l.contains("MAAS 3.5+") && l.contains("writes nothing"))
                .eq([true]),
            "{args:?}: {err}"
        );
    }
    let n: i64 = r
        .client
        .query_one("SELECT count(*) FROM maasserver_bootresourceset", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 2);

    // Without --image-storage, MAAS's own paths are tried and named.
    let defaults = [
        "/var/lib/maas/image-storage",
        "/var/snap/maas/common/maas/image-storage",
    ];
    if defaults.iter().all(|d| !Path::new(d).exists()) {
        for args in [vec!["ls"], vec!["serve", "--listen", "127.0.0.1:0"]] {
            let err = pgbootfs_fails(&r.db, &args);
            assert!(
                defaults.iter().all(|d| err.contains(d)) && err.contains("--image-storage"),
                "{args:?}: {err}"
            );
        }
    }
}

/// A 3.7 database with short-sha names: verify finds a flipped byte, a truncated
/// file, a missing one and an unknown one, and passes over a download under way.
#[test]
fn maas37_verify_finds_what_is_wrong_on_disk() {
    let pg = Cluster::start();
    let mut r = Region::new(&pg, "maas37", MAAS_37, Naming::Short);
    let s = r.set("ubuntu/jammy", "amd64/ga-22.04", "20250301");
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("boot-kernel", bytes(11, 200_000)),
        ("boot-initrd", bytes(12, 1 << 20)),
        ("squashfs", bytes(13, (2 << 20) + 5)),
        ("root-tgz", bytes(14, 70_000)),
    ];
    let names: Vec<String> = files.iter().map(|(f, d)| r.file_on_disk(s, f, d)).collect();
    for (n, (_, d)) in names.iter().zip(&files) {
        assert_eq!(n.as_str(), &sha256_hex(d)[..7], "short names");
    }
    // A file whose content another set shares keeps the same name.
    let s2 = r.set("ubuntu/jammy", "amd64/ga-22.04", "20250302");
    assert_eq!(r.file_on_disk(s2, "boot-kernel", &files[0].1), names[0]);
    let flag = r.flag();
    let args = |a: &[&str]| -> Vec<String> {
        a.iter()
            .map(|s| s.to_string())
            .chain(flag.iter().cloned())
            .collect()
    };
    let run_ok = |a: &[&str]| {
        let v = args(a);
        pgbootfs_ok(&r.db, &v.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let out = run_ok(&["verify"]);
    assert!(out.contains("5 file(s) ok, 0 wrong"), "{out}");

    // A download under way (only NAME.incomplete) is not unknown; a stray file is.
    fs::write(r.dir().join(format!("{}.incomplete", names[3])), b"partial").unwrap();
    fs::write(r.dir().join("stray-file"), b"who wrote me").unwrap();
    fs::create_dir(r.dir().join("bootloaders")).unwrap();
    // A flipped byte, a truncated file, a missing one.
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(r.dir().join(&names[1]))
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(123_456)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(123_456)).unwrap();
    f.write_all(&[b[0] ^ 0x01]).unwrap();
    drop(f);
    fs::OpenOptions::new()
        .write(true)
        .open(r.dir().join(&names[2]))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    fs::remove_file(r.dir().join(&names[3])).unwrap();
    let v = args(&["verify"]);
    let out = pgbootfs_fails(&r.db, &v.iter().map(String::as_str).collect::<Vec<_>>());
    let set = "ubuntu/amd64/ga-22.04/jammy/20250301";
    for want in [
        format!("FAILED {set}/boot-initrd: corrupt: sha256 of {}", names[1]),
        format!(
            "FAILED {set}/squashfs: partial: {} holds 1048576 of {} bytes",
            names[2],
            files[2].1.len()
        ),
        format!("skipped {set}/root-tgz: being written by MAAS"),
        format!("FAILED {}: unknown", r.dir().join("stray-file").display()),
        "verify failed: 3 of 5 file(s) are wrong".to_string(),
    ] {
        assert!(out.contains(&want), "no {want:?} in:\n{out}");
    }
    assert!(!out.contains("bootloaders"), "{out}");
    assert!(!out.contains(".incomplete: unknown"), "{out}");
    // Without the download under way, the missing file is reported as such.
    fs::remove_file(r.dir().join(format!("{}.incomplete", names[3]))).unwrap();
    let out = pgbootfs_fails(&r.db, &v.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.contains(&format!(
            "FAILED {set}/root-tgz: missing: {} is not in the image storage",
            names[3]
        )),
        "{out}"
    );
    // The mount's view: the damaged version is hidden (a partial and a missing
    // file), the other shows.
    let text = run_ok(&["ls"]);
    assert!(
        text.contains(&format!("{set}  label=stable  4 file(s)")),
        "{text}"
    );
    assert!(text.contains("INCOMPLETE"), "{text}");
}

/// MAAS 3.6 (alias, filename_on_disk): the tree, and the same bytes over HTTP.
#[test]
fn maas36_serves_the_tree() {
    let pg = Cluster::start();
    let mut r = Region::new(&pg, "maas36", MAAS_36, Naming::Short);
    let s = r.set("ubuntu/noble", "amd64/ga-24.04", "20250401");
    let kernel = bytes(21, 123_457);
    r.file_on_disk(s, "boot-kernel", &kernel);
    let flag = r.flag();
    let srv = Server::start(&r.db, &[flag[0].as_str(), flag[1].as_str()]);
    assert_eq!(
        curl(&srv.url(&format!("/{NOBLE}/20250401/boot-kernel")), &[]),
        kernel
    );
    let index =
        String::from_utf8(curl(&srv.url("/streams/v1/maas:v2:download.json"), &[])).unwrap();
    assert!(index.contains(&sha256_hex(&kernel)), "{index}");
    // A 3.5+ rack fetches `boot-resources/<filename_on_disk>/`: the short name
    // answers with the same bytes as the full sha256.
    let short = &sha256_hex(&kernel)[..7];
    for name in [short.to_string(), sha256_hex(&kernel)] {
        assert_eq!(
            curl(&srv.url(&format!("/MAAS/boot-resources/{name}/")), &[]),
            kernel,
            "{name}"
        );
    }
}

/// The snapshot rule on disk: a file opened through the mount keeps giving the
/// bytes it was opened on after MAAS replaces its storage file by rename and then
/// deletes it.
#[test]
fn maas35_open_file_keeps_its_bytes() {
    if !fuse_or_skip("maas35_open_file_keeps_its_bytes") {
        return;
    }
    let pg = Cluster::start();
    let mut r = Region::new(&pg, "maas37snap", MAAS_37, Naming::Short);
    let s = r.set("ubuntu/noble", "amd64/ga-24.04", "20250501");
    let old = bytes(31, (4 << 20) + 99);
    let name = r.file_on_disk(s, "squashfs", &old);
    let flag = r.flag();
    let m = Mount::start(
        &r.db,
        &[flag[0].as_str(), flag[1].as_str(), "--refresh", "1"],
    );
    let path = m.path(&format!("{NOBLE}/20250501/squashfs"));
    let mut f = fs::File::open(&path).unwrap();
    let mut head = vec![0u8; 4096];
    f.read_exact(&mut head).unwrap();
    assert_eq!(head, old[..4096]);
    // MAAS writes a new file and renames it over the old name, then deletes it.
    let stored: PathBuf = r.dir().join(&name);
    let tmp = r.dir().join(format!("{name}.incomplete"));
    fs::write(&tmp, bytes(32, old.len())).unwrap();
    fs::rename(&tmp, &stored).unwrap();
    fs::remove_file(&stored).unwrap();
    let mut rest = Vec::new();
    f.read_to_end(&mut rest).unwrap();
    assert_eq!(rest.len() + 4096, old.len());
    assert!(
        rest == old[4096..],
        "the open file changed under its reader"
    );
    drop(f);
    // A new open finds nothing on disk: after a refresh the version is hidden.
    let dir = m.path(NOBLE);
    assert!(
        wait_until(Duration::from_secs(20), || fs::read_dir(&dir)
            .map(|d| d.count() == 0)
            .unwrap_or(true)),
        "the version should be hidden once its file is gone"
    );
}
