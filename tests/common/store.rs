//! Helpers for the store tests: source trees, running `pgbootfs` subcommands,
//! row and large-object counts, a killable import, and simplestreams mirrors made
//! with the real `sstream-mirror`. Every process started here is killed in Drop.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use postgres::Client;
use serde_json::json;

use super::{bin, sha256_hex, temp_dir};

/// A temporary source directory.
pub struct SrcTree {
    pub dir: tempfile::TempDir,
}

impl SrcTree {
    pub fn new() -> SrcTree {
        SrcTree {
            dir: temp_dir("pgbt-src-"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `data` at `rel`, creating directories.
    pub fn add(&self, rel: &str, data: &[u8]) -> PathBuf {
        let p = self.dir.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        p
    }

    /// Writes a file whose last component is raw bytes (e.g. not UTF-8).
    pub fn add_raw_name(&self, dir: &str, name: &[u8], data: &[u8]) {
        let d = self.dir.path().join(dir);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(std::ffi::OsStr::from_bytes(name)), data).unwrap();
    }
}

/// Runs `pgbootfs --db CONNINFO ARGS...` to completion.
pub fn pgbootfs(conninfo: &str, args: &[&str]) -> Output {
    Command::new(bin())
        .args(["--db", conninfo])
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Like [`pgbootfs`], asserting success; returns stdout.
pub fn pgbootfs_ok(conninfo: &str, args: &[&str]) -> String {
    let out = pgbootfs(conninfo, args);
    assert!(
        out.status.success(),
        "pgbootfs {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Like [`pgbootfs`], asserting failure; returns stdout + stderr.
pub fn pgbootfs_fails(conninfo: &str, args: &[&str]) -> String {
    let out = pgbootfs(conninfo, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "pgbootfs {args:?} should fail:\n{text}"
    );
    text
}

/// Whether the four MAAS tables exist.
pub fn tables_exist(c: &mut Client) -> bool {
    c.query_one(
        "SELECT to_regclass('maasserver_bootresource') IS NOT NULL \
         AND to_regclass('maasserver_bootresourceset') IS NOT NULL \
         AND to_regclass('maasserver_bootresourcefile') IS NOT NULL \
         AND to_regclass('maasserver_largefile') IS NOT NULL",
        &[],
    )
    .unwrap()
    .get(0)
}

/// Row counts of the four tables and the number of large objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub resources: i64,
    pub sets: i64,
    pub files: i64,
    pub largefiles: i64,
    pub large_objects: i64,
}

pub fn counts(c: &mut Client) -> Counts {
    let los: i64 = c
        .query_one("SELECT count(*) FROM pg_largeobject_metadata", &[])
        .unwrap()
        .get(0);
    if !tables_exist(c) {
        return Counts {
            resources: 0,
            sets: 0,
            files: 0,
            largefiles: 0,
            large_objects: los,
        };
    }
    let r = c
        .query_one(
            "SELECT (SELECT count(*) FROM maasserver_bootresource), \
                    (SELECT count(*) FROM maasserver_bootresourceset), \
                    (SELECT count(*) FROM maasserver_bootresourcefile), \
                    (SELECT count(*) FROM maasserver_largefile)",
            &[],
        )
        .unwrap();
    Counts {
        resources: r.get(0),
        sets: r.get(1),
        files: r.get(2),
        largefiles: r.get(3),
        large_objects: los,
    }
}

/// Fails the test, listing what is wrong, if any row dangles or large object is orphaned.
pub fn assert_consistent(c: &mut Client) {
    let found = inconsistencies(c);
    assert!(found.is_empty(), "store inconsistent: {found:?}");
}

/// Every dangling row or orphaned large object, described; empty when consistent.
pub fn inconsistencies(c: &mut Client) -> Vec<String> {
    let checks = [
        (
            "large object without a largefile row",
            "SELECT m.oid::text FROM pg_largeobject_metadata m \
             WHERE NOT EXISTS (SELECT 1 FROM maasserver_largefile lf WHERE lf.content = m.oid)",
        ),
        (
            "largefile row without a large object",
            "SELECT lf.id::text FROM maasserver_largefile lf \
             WHERE NOT EXISTS (SELECT 1 FROM pg_largeobject_metadata m WHERE m.oid = lf.content)",
        ),
        (
            "largefile row no file uses",
            "SELECT lf.id::text FROM maasserver_largefile lf WHERE NOT EXISTS \
             (SELECT 1 FROM maasserver_bootresourcefile f WHERE f.largefile_id = lf.id)",
        ),
        (
            "file row without its set or largefile",
            "SELECT f.id::text FROM maasserver_bootresourcefile f \
             WHERE NOT EXISTS (SELECT 1 FROM maasserver_bootresourceset s WHERE s.id = f.resource_set_id) \
             OR NOT EXISTS (SELECT 1 FROM maasserver_largefile lf WHERE lf.id = f.largefile_id)",
        ),
        (
            "set row without files or resource",
            "SELECT s.id::text FROM maasserver_bootresourceset s \
             WHERE NOT EXISTS (SELECT 1 FROM maasserver_bootresourcefile f WHERE f.resource_set_id = s.id) \
             OR NOT EXISTS (SELECT 1 FROM maasserver_bootresource r WHERE r.id = s.resource_id)",
        ),
        (
            "resource row without sets",
            "SELECT r.id::text FROM maasserver_bootresource r WHERE NOT EXISTS \
             (SELECT 1 FROM maasserver_bootresourceset s WHERE s.resource_id = r.id)",
        ),
    ];
    let mut out = Vec::new();
    for (what, sql) in checks {
        for row in c.query(sql, &[]).unwrap() {
            out.push(format!("{what}: {}", row.get::<_, String>(0)));
        }
    }
    out
}

/// A `pgbootfs` process left running (to be killed); SIGKILLed and reaped on drop.
pub struct Running {
    child: Option<Child>,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Running {
    pub fn start(conninfo: &str, args: &[&str]) -> Running {
        let tmp = temp_dir("pgbt-run-");
        let log = tmp.path().join("stderr.log");
        let child = Command::new(bin())
            .args(["--db", conninfo])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Running {
            child: Some(child),
            log,
            _tmp: tmp,
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; panics if the process ends first.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(needle) {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "pgbootfs ended ({st}) before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in time:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the process to end by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("already reaped");
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return st;
            }
            assert!(Instant::now() < deadline, "still running:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- pgbootfs stderr ---\n{}", self.log());
        }
    }
}

/// Waits until the server has ended every backend of `app` (e.g. after a kill -9).
pub fn wait_backends_gone(c: &mut Client, app: &str) {
    let gone = super::wait_until(Duration::from_secs(20), || {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .unwrap()
            .get(0);
        n == 0
    });
    assert!(gone, "backends of {app} still there");
}

/// The `sstream-mirror` program: $PGBOOTFS_SSTREAM_MIRROR, else PATH.
pub fn sstream_mirror() -> PathBuf {
    if let Ok(p) = std::env::var("PGBOOTFS_SSTREAM_MIRROR")
        && !p.is_empty()
    {
        return PathBuf::from(p);
    }
    let out = Command::new("sh")
        .args(["-c", "command -v sstream-mirror"])
        .output()
        .unwrap();
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !p.is_empty(),
        "sstream-mirror not found: run scripts/test (it installs python-simplestreams) \
         or set PGBOOTFS_SSTREAM_MIRROR"
    );
    PathBuf::from(p)
}

/// One item of a hand-written simplestreams source.
pub struct Item {
    pub product: &'static str,
    pub os: &'static str,
    pub release: &'static str,
    pub arch: &'static str,
    pub subarch: &'static str,
    pub version: &'static str,
    pub ftype: &'static str,
    pub path: &'static str,
    pub data: Vec<u8>,
}

/// Writes a products:1.0 source of `items` under `dir` (streams/v1/index.json and
/// the files), as MAAS's image server publishes them.
pub fn write_simplestreams(dir: &Path, items: &[Item]) {
    let mut products = serde_json::Map::new();
    for it in items {
        fs::create_dir_all(dir.join(it.path).parent().unwrap()).unwrap();
        fs::write(dir.join(it.path), &it.data).unwrap();
        let p = products.entry(it.product).or_insert_with(|| {
            json!({
                "os": it.os, "release": it.release, "arch": it.arch, "subarch": it.subarch,
                "label": "stable", "subarches": "generic", "kflavor": "generic",
                "versions": {},
            })
        });
        let versions = p["versions"].as_object_mut().unwrap();
        let v = versions
            .entry(it.version)
            .or_insert_with(|| json!({"items": {}}));
        v["items"].as_object_mut().unwrap().insert(
            it.ftype.to_string(),
            json!({
                "ftype": it.ftype, "path": it.path,
                "sha256": sha256_hex(&it.data), "size": it.data.len(),
            }),
        );
    }
    let updated = "Fri, 27 Nov 2026 00:00:00 +0000";
    let names: Vec<String> = products.keys().cloned().collect();
    let doc = json!({
        "content_id": "maas:v2:download", "format": "products:1.0",
        "datatype": "image-downloads", "updated": updated, "products": products,
    });
    fs::create_dir_all(dir.join("streams/v1")).unwrap();
    fs::write(
        dir.join("streams/v1/maas:v2:download.json"),
        doc.to_string(),
    )
    .unwrap();
    let index = json!({
        "format": "index:1.0", "updated": updated,
        "index": {"maas:v2:download": {
            "datatype": "image-downloads", "path": "streams/v1/maas:v2:download.json",
            "format": "products:1.0", "updated": updated, "products": names,
        }},
    });
    fs::write(dir.join("streams/v1/index.json"), index.to_string()).unwrap();
}

/// Mirrors the simplestreams source at `src` into `out` with `sstream-mirror`.
pub fn run_sstream_mirror(src: &Path, out: &Path) {
    let res = Command::new(sstream_mirror())
        .arg(src.join("streams/v1/index.json"))
        .arg(out)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "sstream-mirror failed: {}\n{}",
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(
        out.join("streams/v1/index.json").is_file(),
        "mirror written"
    );
}
