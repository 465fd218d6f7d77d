//! Test harness: a real PostgreSQL cluster per test (started from a cached initdb
//! template, on a unix socket in a temp dir), helpers that write image rows the way
//! MAAS does, and a real `pgbootfs mount` process. Everything started here is
//! stopped in `Drop`, so a failing test cleans up too.

pub mod http;
pub mod standby;
pub mod store;
pub mod xattr;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};
use sha2::{Digest, Sha256};

/// The schema as shipped with the project.
pub const SCHEMA: &str = include_str!("../../schema/maas-schema.sql");

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Directory holding initdb and pg_ctl: $PGBOOTFS_PG_BIN, the newest
/// /usr/lib/postgresql/*/bin, or whatever PATH finds.
pub fn pg_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("PGBOOTFS_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return bin;
    }
    let out = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .expect("sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !path.is_empty(),
        "PostgreSQL server binaries (initdb, pg_ctl) not found: run scripts/test, which installs them"
    );
    Path::new(&path).parent().unwrap().to_path_buf()
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root.
fn pg_command(tool: &str) -> Command {
    let bin = pg_bin().join(tool);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn chown_postgres(path: &Path) {
    if is_root() {
        let st = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()
            .unwrap();
        assert!(st.success(), "chown {}", path.display());
    }
}

fn run_ok(mut cmd: Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A data directory made by initdb once and copied for every cluster.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let base = std::env::temp_dir().join("pgbootfs-test-template");
        fs::create_dir_all(&base).unwrap();
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).unwrap();
        let ver = pg_bin().display().to_string().replace('/', "_");
        let ready = base.join(format!("data{ver}"));
        if ready.join("PG_VERSION").exists() {
            return ready;
        }
        let work = base.join(format!("work-{}", std::process::id()));
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work).unwrap();
        chown_postgres(&work);
        let mut c = pg_command("initdb");
        c.args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
            "-D",
        ])
        .arg(work.join("d"));
        run_ok(c, "initdb");
        // Another test process may have won the race; either copy is fine.
        if fs::rename(work.join("d"), &ready).is_err() {
            let _ = fs::remove_dir_all(work.join("d"));
        }
        let _ = fs::remove_dir_all(&work);
        ready
    })
}

/// A running PostgreSQL cluster, stopped and deleted on drop.
pub struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
    /// Extra server options (`-c name=value ...`), given at every start.
    extra: String,
}

/// A TCP port nothing listens on now (the kernel's pick, released at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    pub fn start() -> Cluster {
        Self::start_with(|_| {}, 5432, "")
    }

    /// A cluster whose data directory `setup` may change first (certificates,
    /// pg_hba.conf), listening on `port` with `extra` server options (e.g.
    /// `-c listen_addresses=127.0.0.1 -c ssl=on`).
    pub fn start_with(setup: impl FnOnce(&Path), port: u16, extra: &str) -> Cluster {
        let cluster = Self::prepare(port, extra);
        setup(&cluster.data());
        chown_postgres(cluster.dir.path());
        cluster.start_server();
        cluster
    }

    /// A hot standby of `primary`, made with `pg_basebackup -R` (streaming
    /// replication from the primary's socket), started and ready.
    pub fn standby_of(primary: &Cluster, extra: &str) -> Cluster {
        let cluster = Self::prepare(5432, extra);
        let data = cluster.data();
        fs::remove_dir_all(&data).unwrap();
        chown_postgres(cluster.dir.path());
        let mut c = pg_command("pg_basebackup");
        c.arg("-h")
            .arg(primary.host())
            .args([
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-D",
            ])
            .arg(&data);
        run_ok(c, "pg_basebackup");
        cluster.start_server();
        cluster
    }

    /// Promotes this standby to a primary and waits until it accepts writes.
    pub fn promote(&self) {
        let mut c = pg_command("pg_ctl");
        c.arg("-D")
            .arg(self.data())
            .args(["-w", "-t", "60", "promote"]);
        run_ok(c, "pg_ctl promote");
    }

    fn prepare(port: u16, extra: &str) -> Cluster {
        let dir = temp_dir("pgbt-");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("data");
        run_ok(
            {
                let mut c = Command::new("cp");
                c.arg("-a").arg(template()).arg(&data);
                c
            },
            "copy template",
        );
        Cluster {
            dir,
            port,
            extra: extra.to_string(),
        }
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The port (TCP if listening on an address, and the socket's name).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts the server of this cluster's data directory.
    pub fn start_server(&self) {
        self.start_server_with("");
    }

    /// Starts the server with `extra` server options (`-p 5433` serves on another
    /// socket, where clients of [`Cluster::conninfo`] do not find it).
    pub fn start_server_with(&self, extra: &str) {
        let dir = self.dir.path();
        let mut c = pg_command("pg_ctl");
        c.arg("-D")
            .arg(dir.join("data"))
            .arg("-l")
            .arg(dir.join("server.log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(format!(
                "-k {} -p {} -c listen_addresses='' -c fsync=off -c synchronous_commit=off \
                 -c full_page_writes=off -c max_connections=300 {} {extra}",
                dir.display(),
                self.port,
                self.extra
            ))
            .arg("start");
        let out = c.output().unwrap();
        if !out.status.success() {
            panic!(
                "pg_ctl start failed: {}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.server_log()
            );
        }
    }

    /// Stops the server (fast shutdown); [`Cluster::start_server`] brings it back.
    pub fn stop_server(&self) {
        let mut c = pg_command("pg_ctl");
        c.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "fast", "-w", "-t", "60", "stop"])
            .stdout(Stdio::null());
        run_ok(c, "pg_ctl stop");
    }

    /// The socket directory.
    pub fn host(&self) -> &Path {
        self.dir.path()
    }

    /// A conninfo for `dbname` as the superuser.
    pub fn conninfo(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={dbname}",
            self.host().display(),
            self.port
        )
    }

    pub fn client(&self, dbname: &str) -> Client {
        Client::connect(&self.conninfo(dbname), NoTls).unwrap()
    }

    /// A client on a server started with `-p port` (see [`Cluster::start_server_with`]).
    pub fn client_on_port(&self, dbname: &str, port: u16) -> Client {
        let conninfo = self
            .conninfo(dbname)
            .replace("port=5432", &format!("port={port}"));
        Client::connect(&conninfo, NoTls).unwrap()
    }

    /// Creates a database and returns its conninfo.
    pub fn create_db(&self, name: &str) -> String {
        self.client("postgres")
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        self.conninfo(name)
    }

    /// Restarts the server (fast shutdown): every client connection is cut.
    pub fn restart(&self) {
        self.stop_server();
        self.start_server();
    }

    pub fn server_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut c = pg_command("pg_ctl");
        c.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = c.status();
    }
}

/// A temp dir under /tmp (short paths: unix socket names are limited), removed on drop.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap()
}

/// A fresh cluster whose `postgres` database has the MAAS tables, and a client on it.
pub fn store() -> (Cluster, Client) {
    let pg = Cluster::start();
    let mut c = pg.client("postgres");
    Maas::create_schema(&mut c);
    (pg, c)
}

/// Deterministic pseudo-random bytes (xorshift), different per seed.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes rows into the MAAS tables the way MAAS does, for tests.
pub struct Maas<'a> {
    pub client: &'a mut Client,
}

impl<'a> Maas<'a> {
    /// Replaces the content of the largefile on `old_oid` with `data`, in one
    /// transaction that also unlinks the old object, as a re-import does; returns
    /// the new object.
    pub fn replace_content(&mut self, old_oid: u32, data: &[u8]) -> u32 {
        let mut tx = self.client.transaction().unwrap();
        let new_oid: u32 = tx
            .query_one("SELECT lo_from_bytea(0, $1)", &[&data])
            .unwrap()
            .get(0);
        tx.execute(
            "UPDATE maasserver_largefile SET content = $1, sha256 = $2, \
             size = $3, total_size = $3 WHERE content = $4",
            &[&new_oid, &sha256_hex(data), &(data.len() as i64), &old_oid],
        )
        .unwrap();
        tx.execute("SELECT lo_unlink($1)", &[&old_oid]).unwrap();
        tx.commit().unwrap();
        new_oid
    }

    /// Creates the four tables from the shipped schema.
    pub fn create_schema(client: &mut Client) {
        client.batch_execute(SCHEMA).unwrap();
    }

    /// The MAAS 3.4 variant: bigint ids and jsonb `extra`.
    pub fn create_schema_34(client: &mut Client) {
        let s = SCHEMA
            .replace("serial PRIMARY KEY", "bigserial PRIMARY KEY")
            .replace(
                "integer NOT NULL\n        REFERENCES",
                "bigint NOT NULL\n        REFERENCES",
            )
            .replace(
                "extra           text NOT NULL",
                "extra           jsonb NOT NULL",
            )
            .replace("extra text NOT NULL", "extra jsonb NOT NULL");
        assert!(
            s.contains("bigint NOT NULL\n        REFERENCES"),
            "schema variant"
        );
        assert!(s.contains("jsonb"), "schema variant");
        client.batch_execute(&s).unwrap();
    }

    /// Returns the bootresource id for (name, arch), creating it.
    pub fn resource(&mut self, name: &str, arch: &str) -> i64 {
        let row = self
            .client
            .query_one(
                "INSERT INTO maasserver_bootresource \
                 (created, updated, rtype, name, architecture, extra, rolling, base_image) \
                 VALUES (now(), now(), 2, $1, $2, '{}', false, '') \
                 ON CONFLICT (name, architecture) DO UPDATE SET updated = now() \
                 RETURNING id::int8",
                &[&name, &arch],
            )
            .unwrap();
        row.get(0)
    }

    pub fn set(&mut self, name: &str, arch: &str, version: &str) -> i64 {
        let rid = self.resource(name, arch);
        self.client
            .query_one(
                "INSERT INTO maasserver_bootresourceset \
                 (created, updated, version, label, resource_id) \
                 VALUES (now(), now(), $1, 'stable', $2::int8) RETURNING id::int8",
                &[&version, &rid],
            )
            .unwrap()
            .get(0)
    }

    /// Stores `data` as a large object and a largefile row (shared by sha256);
    /// `written` < data.len() makes it an unfinished download.
    pub fn largefile(&mut self, data: &[u8], written: Option<i64>) -> (i64, u32) {
        let sha = sha256_hex(data);
        if let Some(row) = self
            .client
            .query_opt(
                "SELECT id::int8, content FROM maasserver_largefile WHERE sha256 = $1",
                &[&sha],
            )
            .unwrap()
        {
            return (row.get(0), row.get(1));
        }
        let oid: u32 = self
            .client
            .query_one("SELECT lo_create(0)", &[])
            .unwrap()
            .get(0);
        for (i, part) in data.chunks(8 << 20).enumerate() {
            self.client
                .execute(
                    "SELECT lo_put($1, $2, $3)",
                    &[&oid, &((i as i64) * (8 << 20)), &part],
                )
                .unwrap();
        }
        let size = written.unwrap_or(data.len() as i64);
        let id: i64 = self
            .client
            .query_one(
                "INSERT INTO maasserver_largefile \
                 (created, updated, sha256, total_size, content, size) \
                 VALUES (now(), now(), $1, $2, $3, $4) RETURNING id::int8",
                &[&sha, &(data.len() as i64), &oid, &size],
            )
            .unwrap()
            .get(0);
        (id, oid)
    }

    /// A file of `at` bytes of holes (zeros) then `tail`, in a sparse large object:
    /// sizes past 4 GiB without writing them.
    pub fn sparse_file(&mut self, set_id: i64, filename: &str, at: i64, tail: &[u8]) {
        let oid: u32 = self
            .client
            .query_one("SELECT lo_create(0)", &[])
            .unwrap()
            .get(0);
        self.client
            .execute("SELECT lo_put($1, $2, $3)", &[&oid, &at, &tail])
            .unwrap();
        let total = at + tail.len() as i64;
        let lf: i64 = self
            .client
            .query_one(
                "INSERT INTO maasserver_largefile \
                 (created, updated, sha256, total_size, content, size) \
                 VALUES (now(), now(), md5($2::oid::text), $1, $2::oid, $1) RETURNING id::int8",
                &[&total, &oid],
            )
            .unwrap()
            .get(0);
        self.link(set_id, filename, lf);
    }

    pub fn file(&mut self, set_id: i64, filename: &str, data: &[u8]) -> u32 {
        self.file_partial(set_id, filename, data, None)
    }

    pub fn file_partial(
        &mut self,
        set_id: i64,
        filename: &str,
        data: &[u8],
        written: Option<i64>,
    ) -> u32 {
        let (lf, oid) = self.largefile(data, written);
        self.link(set_id, filename, lf);
        oid
    }

    /// The bootresourcefile row naming largefile `lf` as `filename` in the set.
    fn link(&mut self, set_id: i64, filename: &str, lf: i64) {
        // Works for integer and bigint columns alike.
        self.client
            .execute(
                "INSERT INTO maasserver_bootresourcefile \
                 (created, updated, filename, filetype, extra, largefile_id, resource_set_id) \
                 VALUES (now(), now(), $1, 'root-image', '{}', $2::int8, $3::int8)",
                &[&filename, &lf, &set_id],
            )
            .unwrap();
    }
}

/// Where [`sparse_store`] puts its file.
pub const SPARSE: &str = "windows/amd64/generic/win2022/1/root-dd";

/// Bytes of holes (read as zeros) before the data of [`sparse_store`]'s file.
pub const SPARSE_HOLE: u64 = 5 << 30;

/// A store with one file past 4 GiB, [`SPARSE`]: [`SPARSE_HOLE`] bytes of zeros, then
/// `tail`, in a sparse large object, so nothing like 5 GiB is written.
pub fn sparse_store(tail: &[u8]) -> Cluster {
    let (pg, mut c) = store();
    let mut m = Maas { client: &mut c };
    let s = m.set("windows/win2022", "amd64/generic", "1");
    m.sparse_file(s, "root-dd", SPARSE_HOLE as i64, tail);
    pg
}

/// Starts a pgbootfs command with debug logging into `log`.
pub fn spawn_logged(mut cmd: Command, log: &Path) -> std::process::Child {
    cmd.env("RUST_LOG", "pgbootfs=debug,info")
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Whether FUSE tests can run. Under CI=true a missing FUSE fails the test.
pub fn fuse_or_skip(test: &str) -> bool {
    let ok = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok();
    if !ok {
        assert!(
            !in_ci(),
            "{test}: /dev/fuse is not usable but CI=true: FUSE tests must run in CI"
        );
        eprintln!("\n*** SKIPPING {test}: /dev/fuse is not usable on this machine ***\n");
    }
    ok
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_pgbootfs")
}

pub fn is_mounted(dir: &Path) -> bool {
    // The crate's own parser: it undoes every octal escape of the mount table.
    pgbootfs::mountinfo::mounts().iter().any(|m| m.point == dir)
}

/// A running `pgbootfs mount`, stopped (and its mount removed) on drop.
pub struct Mount {
    pub child: Option<Child>,
    pub dir: PathBuf,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Mount {
    /// Starts `pgbootfs mount` on `conninfo` with extra args and waits until mounted.
    pub fn start(conninfo: &str, extra: &[&str]) -> Mount {
        let tmp = temp_dir("pgbt-mnt-");
        let dir = tmp.path().join("mnt");
        fs::create_dir(&dir).unwrap();
        Self::start_at(tmp, dir, conninfo, extra)
    }

    pub fn start_at(tmp: tempfile::TempDir, dir: PathBuf, conninfo: &str, extra: &[&str]) -> Mount {
        let log = tmp.path().join("pgbootfs.log");
        let mut cmd = Command::new(bin());
        cmd.args(["--db", conninfo, "mount"]).arg(&dir).args(extra);
        let child = spawn_logged(cmd, &log);
        let mut m = Mount {
            child: Some(child),
            dir,
            log,
            _tmp: tmp,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        // Mounted and answering (a stale mount is listed but fails with ENOTCONN).
        while !(is_mounted(&m.dir) && fs::metadata(&m.dir).is_ok()) {
            if let Some(st) = m.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("pgbootfs exited early ({st}):\n{}", m.log());
            }
            assert!(
                Instant::now() < deadline,
                "not mounted in time:\n{}",
                m.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel.trim_start_matches('/'))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `sig` and waits for the exit.
    pub fn stop_with(&mut self, sig: i32) -> ExitStatus {
        let mut child = self.child.take().expect("already stopped");
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(child.id() as i32, sig) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("pgbootfs did not exit after signal {sig}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Stops a child process: SIGTERM, up to 10 s to exit, then SIGKILL.
pub fn terminate(mut child: Child) {
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
        if is_mounted(&self.dir) {
            let c = std::ffi::CString::new(self.dir.to_string_lossy().as_bytes()).unwrap();
            // SAFETY: valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.dir)
                .status();
        }
        if std::thread::panicking() {
            eprintln!("--- pgbootfs log ---\n{}", self.log());
        }
    }
}

/// Reads a whole file.
pub fn read_all(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut f = fs::File::open(path)?;
    let mut v = Vec::new();
    f.read_to_end(&mut v)?;
    Ok(v)
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a shell command, returning stdout; panics with stderr on failure.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Raises this process's descriptor limit to its hard limit (the connection
/// floods hold thousands of sockets).
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Blocks of pg_largeobject the server has touched so far (read or hit).
pub fn lo_blocks(c: &mut postgres::Client) -> i64 {
    // A backend flushes its counters when idle at most once a second, and one
    // that flushed less than a second before waits up to 10 s more; at exit it
    // flushes at once. So the handle backends, idle now, are ended (pgbootfs
    // discards dead pooled connections) and waited for.
    c.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'pgbootfs-handle'",
        &[],
    )
    .unwrap();
    let gone = wait_until(Duration::from_secs(10), || {
        c.query_one(
            "SELECT count(*) = 0 FROM pg_stat_activity \
             WHERE application_name = 'pgbootfs-handle'",
            &[],
        )
        .unwrap()
        .get(0)
    });
    assert!(gone, "handle backends still there");
    // This session's own counters (the plain read): flushed when it next goes idle
    // (PostgreSQL 15 and later; before, within the sleep most of the time).
    let _ = c.batch_execute("SELECT pg_stat_force_next_flush()");
    std::thread::sleep(Duration::from_millis(1500));
    c.query_one(
        "SELECT coalesce(heap_blks_read, 0) + coalesce(heap_blks_hit, 0) \
         FROM pg_statio_all_tables WHERE relid = 'pg_largeobject'::regclass",
        &[],
    )
    .unwrap()
    .get(0)
}

/// Handle backends inside a transaction.
pub fn handles_in_txn(pg: &Cluster) -> i64 {
    pg.client("postgres")
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbootfs-handle' \
             AND xact_start IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0)
}

/// The error of listing `dir` whole (the read_dir and every entry), which the
/// caller expects to fail.
pub fn listing_error(dir: &Path) -> std::io::Error {
    fs::read_dir(dir)
        .and_then(|d| d.collect::<Result<Vec<_>, _>>())
        .expect_err("the listing was expected to fail")
}

/// The lines of `log` that contain every one of `words`.
pub fn log_lines(log: &str, words: &[&str]) -> Vec<String> {
    log.lines()
        .filter(|l| words.iter().all(|w| l.contains(w)))
        .map(str::to_string)
        .collect()
}
