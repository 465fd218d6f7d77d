//! Connection settings with libpq's meaning, against real clusters: TLS (a CA
//! and certificates made here with the openssl CLI, `hostssl`-only pg_hba.conf,
//! client-certificate auth), several hosts with a streaming standby made by
//! `pg_basebackup -R`, `target_session_attrs`, and service files.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::common::*;

/// Runs `pgbootfs ARGS...` with a clean libpq environment: HOME is `home` (so no
/// ~/.postgresql or ~/.pg_service.conf of the machine counts), no PG* variables
/// but those in `env`.
fn run(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin());
    c.args(args)
        .env("HOME", home)
        .env("RUST_LOG", "info")
        .env("PGSYSCONFDIR", home.join("no-sysconf"))
        .stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") && k != "PGBOOTFS_PG_BIN" || k == "DATABASE_URL" {
            c.env_remove(k);
        }
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[track_caller]
fn ok(out: Output) -> String {
    assert!(out.status.success(), "should work:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The one error line of a failed command (pgbootfs prints exactly one).
#[track_caller]
fn fails(out: Output) -> String {
    assert!(!out.status.success(), "should fail:\n{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(lines.len(), 1, "one error line:\n{err}");
    lines[0].to_string()
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the openssl CLI (scripts/test installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for `localhost` only, a client certificate for the
/// role `maas` and an unrelated second CA, in one directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = temp_dir("pgbt-pki-");
        let d = dir.path();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        for ca in ["ca", "other-ca"] {
            let mut a = vec!["req", "-x509", "-nodes", "-days", "3"];
            a.extend(ec);
            let (key, crt, subj) = (
                format!("{ca}.key"),
                format!("{ca}.crt"),
                format!("/CN=pgbootfs test {ca}"),
            );
            a.extend(["-keyout", &key, "-out", &crt, "-subj", &subj]);
            openssl(d, &a);
        }
        fs::write(d.join("server.ext"), "subjectAltName=DNS:localhost\n").unwrap();
        fs::write(d.join("client.ext"), "keyUsage=digitalSignature\n").unwrap();
        for (name, cn) in [("server", "localhost"), ("client", "maas")] {
            let mut a = vec!["req", "-new", "-nodes"];
            a.extend(ec);
            let (key, csr, crt, ext, subj) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
                format!("{name}.ext"),
                format!("/CN={cn}"),
            );
            a.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(d, &a);
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "3",
                    "-out",
                    &crt,
                    "-extfile",
                    &ext,
                ],
            );
            fs::set_permissions(d.join(&key), fs::Permissions::from_mode(0o600)).unwrap();
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// A cluster with `ssl=on` on 127.0.0.1 whose pg_hba.conf allows TCP only over
/// TLS: trust for postgres, a client certificate for maas. The unix socket stays
/// open for the test's own set-up.
fn tls_cluster(pki: &Pki) -> Cluster {
    let port = free_port();
    let pg = Cluster::start_with(
        |data| {
            for f in ["server.crt", "server.key", "ca.crt"] {
                fs::copy(pki.dir.path().join(f), data.join(f)).unwrap();
            }
            fs::set_permissions(data.join("server.key"), fs::Permissions::from_mode(0o600))
                .unwrap();
            fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\n\
                 local replication all trust\n\
                 hostssl all maas 127.0.0.1/32 cert\n\
                 hostssl all all 127.0.0.1/32 trust\n",
            )
            .unwrap();
        },
        port,
        "-c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file=server.crt \
         -c ssl_key_file=server.key -c ssl_ca_file=ca.crt",
    );
    let mut c = pg.client("postgres");
    Maas::create_schema(&mut c);
    c.batch_execute("CREATE ROLE maas LOGIN SUPERUSER").unwrap();
    pg
}

#[test]
fn tls_modes_certificates_and_host_names_as_libpq() {
    let pki = Pki::new();
    let pg = tls_cluster(&pki);
    let home = temp_dir("pgbt-home-");
    let h = home.path();
    let port = pg.port();
    let at = |host: &str, rest: &str| {
        format!("host={host} port={port} user=postgres dbname=postgres {rest}")
    };
    let ca = pki.path("ca.crt");
    let other = pki.path("other-ca.crt");

    // verify-full with the right CA and the certificate's host name.
    ok(run(
        h,
        &[
            "--db",
            &at(
                "localhost",
                &format!("sslmode=verify-full sslrootcert={ca}"),
            ),
            "ls",
        ],
        &[],
    ));
    // The same as a URL.
    let url = format!(
        "postgresql://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={ca}"
    );
    ok(run(h, &["--db", &url, "ls"], &[]));
    // A wrong CA: refused, naming host and reason.
    let e = fails(run(
        h,
        &[
            "--db",
            &at(
                "localhost",
                &format!("sslmode=verify-full sslrootcert={other}"),
            ),
            "ls",
        ],
        &[],
    ));
    assert!(e.contains(&format!("localhost:{port}")), "{e}");
    assert!(e.contains("server certificate refused"), "{e}");
    // A host name the certificate does not name.
    let e = fails(run(
        h,
        &[
            "--db",
            &at(
                "127.0.0.1",
                &format!("sslmode=verify-full sslrootcert={ca}"),
            ),
            "ls",
        ],
        &[],
    ));
    assert!(
        e.contains(&format!("127.0.0.1:{port}")) && e.contains("address mismatch"),
        "{e}"
    );
    // The name checked is `host`, even where `hostaddr` says where to connect.
    let e = fails(run(
        h,
        &[
            "--db",
            &at(
                "wrong.example",
                &format!("hostaddr=127.0.0.1 sslmode=verify-full sslrootcert={ca}"),
            ),
            "ls",
        ],
        &[],
    ));
    assert!(
        e.contains("wrong.example") && e.contains("hostname mismatch"),
        "{e}"
    );
    // verify-ca does not check the name.
    ok(run(
        h,
        &[
            "--db",
            &at("127.0.0.1", &format!("sslmode=verify-ca sslrootcert={ca}")),
            "ls",
        ],
        &[],
    ));
    // A verify mode without any CA file says what is missing.
    let e = fails(run(
        h,
        &["--db", &at("localhost", "sslmode=verify-full"), "ls"],
        &[],
    ));
    assert!(e.contains("root.crt") && e.contains("sslrootcert"), "{e}");
    // require works without a CA ...
    ok(run(
        h,
        &["--db", &at("127.0.0.1", "sslmode=require"), "ls"],
        &[],
    ));
    // allow tries in clear first, is refused by the hostssl-only rules, then uses TLS.
    ok(run(
        h,
        &["--db", &at("127.0.0.1", "sslmode=allow"), "ls"],
        &[],
    ));
    // ... and so does the default, prefer.
    ok(run(h, &["--db", &at("127.0.0.1", ""), "ls"], &[]));
    // ... but with ~/.postgresql/root.crt present, require checks it, as libpq.
    fs::create_dir(h.join(".postgresql")).unwrap();
    fs::copy(&other, h.join(".postgresql/root.crt")).unwrap();
    let e = fails(run(
        h,
        &["--db", &at("127.0.0.1", "sslmode=require"), "ls"],
        &[],
    ));
    assert!(e.contains("server certificate refused"), "{e}");
    fs::copy(&ca, h.join(".postgresql/root.crt")).unwrap();
    ok(run(
        h,
        &["--db", &at("localhost", "sslmode=verify-full"), "ls"],
        &[],
    ));
    fs::remove_dir_all(h.join(".postgresql")).unwrap();
    // disable meets the hostssl-only pg_hba.conf.
    let e = fails(run(
        h,
        &["--db", &at("127.0.0.1", "sslmode=disable"), "ls"],
        &[],
    ));
    assert!(
        e.contains("pg_hba.conf") && e.contains(&format!("127.0.0.1:{port}")),
        "{e}"
    );
    // The PGSSL* variables, under a connection string that says nothing of TLS.
    let plain = at("localhost", "");
    ok(run(
        h,
        &["--db", &plain, "ls"],
        &[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", &ca)],
    ));
    let e = fails(run(
        h,
        &["--db", &plain, "ls"],
        &[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", &other)],
    ));
    assert!(e.contains("server certificate refused"), "{e}");
    fails(run(h, &["--db", &plain, "ls"], &[("PGSSLMODE", "disable")]));
    // The connection string wins over the environment.
    ok(run(
        h,
        &["--db", &at("localhost", "sslmode=require"), "ls"],
        &[("PGSSLMODE", "disable")],
    ));
    // sslrootcert=system is only for verify-full, as libpq 16.
    let e = fails(run(
        h,
        &[
            "--db",
            &at("localhost", "sslmode=require sslrootcert=system"),
            "ls",
        ],
        &[],
    ));
    assert!(e.contains("verify-full"), "{e}");
    // The test CA is in no system store.
    let e = fails(run(
        h,
        &[
            "--db",
            &at("localhost", "sslmode=verify-full sslrootcert=system"),
            "ls",
        ],
        &[],
    ));
    assert!(e.contains("server certificate refused"), "{e}");
    // A unix socket never uses TLS, whatever sslmode says (as libpq).
    ok(run(
        h,
        &["--db", &pg.conninfo("postgres"), "ls"],
        &[("PGSSLMODE", "require")],
    ));
}

#[test]
fn a_revoked_server_certificate_is_refused_with_sslcrl() {
    let pki = Pki::new();
    let pg = tls_cluster(&pki);
    let d = pki.dir.path();
    fs::write(
        d.join("ca.cnf"),
        "[ca]\ndefault_ca = test\n[test]\ndatabase = index.txt\ncrlnumber = crlnumber\n\
         default_md = sha256\ndefault_crl_days = 2\n",
    )
    .unwrap();
    fs::write(d.join("index.txt"), "").unwrap();
    fs::write(d.join("crlnumber"), "1000\n").unwrap();
    let ca = ["-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.crt"];
    let gencrl = |out: &str| {
        let mut a = vec!["ca"];
        a.extend(ca);
        a.extend(["-gencrl", "-out", out]);
        openssl(d, &a);
    };
    gencrl("empty.crl");
    let mut a = vec!["ca"];
    a.extend(ca);
    a.extend(["-revoke", "server.crt"]);
    openssl(d, &a);
    gencrl("revoked.crl");
    let home = temp_dir("pgbt-home-");
    let db = |crl: &str| {
        format!(
            "host=localhost port={} user=postgres dbname=postgres sslmode=verify-full \
             sslrootcert={} sslcrl={}",
            pg.port(),
            pki.path("ca.crt"),
            pki.path(crl)
        )
    };
    ok(run(home.path(), &["--db", &db("empty.crl"), "ls"], &[]));
    let e = fails(run(home.path(), &["--db", &db("revoked.crl"), "ls"], &[]));
    assert!(e.contains("certificate revoked"), "{e}");
    // The same list from PGSSLCRL.
    let plain = format!(
        "host=localhost port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert={}",
        pg.port(),
        pki.path("ca.crt")
    );
    let crl = pki.path("revoked.crl");
    fails(run(
        home.path(),
        &["--db", &plain, "ls"],
        &[("PGSSLCRL", &crl)],
    ));
}

#[test]
fn client_certificates_authenticate_and_keys_must_be_private() {
    let pki = Pki::new();
    let pg = tls_cluster(&pki);
    let home = temp_dir("pgbt-home-");
    let h = home.path();
    let db = format!(
        "host=localhost port={} user=maas dbname=postgres sslmode=verify-full sslrootcert={}",
        pg.port(),
        pki.path("ca.crt")
    );
    let with_cert = format!(
        "{db} sslcert={} sslkey={}",
        pki.path("client.crt"),
        pki.path("client.key")
    );
    ok(run(h, &["--db", &with_cert, "ls"], &[]));
    // The same files from PGSSLCERT / PGSSLKEY.
    ok(run(
        h,
        &["--db", &db, "ls"],
        &[
            ("PGSSLCERT", &pki.path("client.crt")),
            ("PGSSLKEY", &pki.path("client.key")),
        ],
    ));
    // ... and from the default place, ~/.postgresql/postgresql.crt and .key.
    fs::create_dir(h.join(".postgresql")).unwrap();
    fs::copy(pki.path("client.crt"), h.join(".postgresql/postgresql.crt")).unwrap();
    fs::copy(pki.path("client.key"), h.join(".postgresql/postgresql.key")).unwrap();
    fs::set_permissions(
        h.join(".postgresql/postgresql.key"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    ok(run(h, &["--db", &db, "ls"], &[]));
    fs::remove_dir_all(h.join(".postgresql")).unwrap();
    // No certificate: the server refuses maas.
    let e = fails(run(h, &["--db", &db, "ls"], &[]));
    assert!(e.contains("certificate"), "{e}");
    // A key others can read is refused before connecting, as libpq does.
    fs::set_permissions(pki.path("client.key"), fs::Permissions::from_mode(0o644)).unwrap();
    let e = fails(run(h, &["--db", &with_cert, "ls"], &[]));
    assert!(e.contains("client.key") && e.contains("0600"), "{e}");
}

#[test]
fn a_server_without_tls_fails_require_clearly() {
    let port = free_port();
    let pg = Cluster::start_with(|_| {}, port, "-c listen_addresses=127.0.0.1");
    let home = temp_dir("pgbt-home-");
    let db = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    let mut c = pg.client("postgres");
    Maas::create_schema(&mut c);
    let e = fails(run(
        home.path(),
        &["--db", &format!("{db} sslmode=require"), "ls"],
        &[],
    ));
    assert!(
        e.contains(&format!("127.0.0.1:{port}")) && e.contains("does not support TLS"),
        "{e}"
    );
    // prefer and allow fall back to a plain connection.
    ok(run(home.path(), &["--db", &db, "ls"], &[]));
    ok(run(
        home.path(),
        &["--db", &format!("{db} sslmode=allow"), "ls"],
        &[],
    ));
}

#[test]
fn mount_reads_through_tls_for_catalog_and_handles() {
    if !fuse_or_skip("mount_reads_through_tls_for_catalog_and_handles") {
        return;
    }
    let pki = Pki::new();
    let pg = tls_cluster(&pki);
    let data = bytes(71, 3 << 20);
    {
        let mut c = pg.client("postgres");
        let mut m = Maas { client: &mut c };
        let s = m.set("ubuntu/jammy", "amd64/ga-22.04", "20240101");
        m.file(s, "squashfs", &data);
    }
    let db = format!(
        "host=localhost port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert={}",
        pg.port(),
        pki.path("ca.crt")
    );
    let mnt = Mount::start(&db, &[]);
    let got = read_all(&mnt.path("ubuntu/amd64/ga-22.04/jammy/20240101/squashfs")).unwrap();
    assert_eq!(sha256_hex(&got), sha256_hex(&data));
    // Every session of pgbootfs is encrypted.
    let mut c = pg.client("postgres");
    let rows = c
        .query(
            "SELECT a.application_name, s.ssl FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.application_name LIKE 'pgbootfs%'",
            &[],
        )
        .unwrap();
    assert!(
        rows.iter()
            .any(|r| r.get::<_, String>(0) == "pgbootfs-handle"),
        "a handle connection is open"
    );
    for r in &rows {
        assert!(r.get::<_, bool>(1), "{} without TLS", r.get::<_, String>(0));
    }
    drop(mnt);
}

/// A primary with the MAAS tables and one image, and a streaming standby that has
/// replayed it.
fn primary_and_standby(data: &[u8]) -> (Cluster, Cluster) {
    let (primary, mut c) = store();
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/jammy", "amd64/ga-22.04", "20240101");
    m.file(s, "squashfs", data);
    let standby = Cluster::standby_of(&primary, "");
    let mut sc = standby.client("postgres");
    assert!(
        wait_until(Duration::from_secs(30), || sc
            .query_one("SELECT count(*) FROM maasserver_largefile", &[])
            .map(|r| r.get::<_, i64>(0) == 1)
            .unwrap_or(false)),
        "the standby replays the image"
    );
    (primary, standby)
}

fn in_recovery(c: &mut postgres::Client) -> bool {
    c.query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0)
}

#[test]
fn hosts_in_turn_and_target_session_attrs_pick_the_right_server() {
    let (primary, standby) = primary_and_standby(&bytes(5, 1000));
    let (p, s) = (primary.host().display(), standby.host().display());
    let connect = |hosts: String, attrs: &str| {
        let db = pgbootfs::db::DbConfig::resolve(Some(&format!(
            "host={hosts} user=postgres dbname=postgres target_session_attrs={attrs}"
        )))
        .unwrap();
        db.connect("pgbootfs-test")
    };
    let both = format!("{p},{s}");
    let reversed = format!("{s},{p}");
    for (hosts, attrs, standby_wanted) in [
        (&both, "any", false),
        (&reversed, "any", true),
        (&reversed, "read-write", false),
        (&reversed, "primary", false),
        (&both, "read-only", true),
        (&both, "standby", true),
        (&both, "prefer-standby", true),
    ] {
        let mut c = connect(hosts.clone(), attrs).unwrap();
        assert_eq!(in_recovery(&mut c), standby_wanted, "{hosts} {attrs}");
    }
    // prefer-standby takes the primary when no standby answers.
    let mut c = connect(p.to_string(), "prefer-standby").unwrap();
    assert!(!in_recovery(&mut c));
    // A host that is down is skipped.
    let mut c = connect(format!("/nonexistent,{s}"), "any").unwrap();
    assert!(in_recovery(&mut c));
    // No acceptable host: one message with every host's reason.
    let e = connect(format!("/nonexistent,{p}"), "standby")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("/nonexistent:5432")
            && e.contains("not acceptable for target_session_attrs=standby"),
        "{e}"
    );
    // load_balance_hosts=random spreads sessions over both.
    let db = pgbootfs::db::DbConfig::resolve(Some(&format!(
        "host={both} user=postgres dbname=postgres load_balance_hosts=random"
    )))
    .unwrap();
    let standbys = (0..30)
        .filter(|_| in_recovery(&mut db.connect("pgbootfs-test").unwrap()))
        .count();
    assert!(
        (1..30).contains(&standbys),
        "{standbys} of 30 on the standby"
    );

    // Failover: the primary stops, the standby is promoted; read-write finds it.
    primary.stop_server();
    standby.promote();
    let home = temp_dir("pgbt-home-");
    let db = format!("host={both} user=postgres dbname=postgres target_session_attrs=read-write");
    let out = ok(run(home.path(), &["--db", &db, "ls"], &[]));
    assert!(out.contains("squashfs"), "{out}");
}

#[test]
fn handle_db_sends_image_reads_to_the_standby() {
    if !fuse_or_skip("handle_db_sends_image_reads_to_the_standby") {
        return;
    }
    let data = bytes(6, 2 << 20);
    let (primary, standby) = primary_and_standby(&data);
    let hosts = format!(
        "host={},{} user=postgres dbname=postgres",
        primary.host().display(),
        standby.host().display()
    );
    let apps = |pg: &Cluster| -> Vec<String> {
        pg.client("postgres")
            .query(
                "SELECT application_name FROM pg_stat_activity \
                 WHERE application_name LIKE 'pgbootfs-%' ORDER BY 1",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    // Mounts, reads the image through it, and says who is connected where.
    let mount_and_read = |attrs: &str, extra: &[&str]| {
        let mnt = Mount::start(&format!("{hosts} target_session_attrs={attrs}"), extra);
        let got = read_all(&mnt.path("ubuntu/amd64/ga-22.04/jammy/20240101/squashfs")).unwrap();
        assert_eq!(sha256_hex(&got), sha256_hex(&data));
        let (on_primary, on_standby) = (apps(&primary), apps(&standby));
        assert!(
            on_standby.iter().any(|a| a == "pgbootfs-handle"),
            "{on_standby:?}"
        );
        (mnt, on_primary, on_standby)
    };
    let (mnt, on_primary, on_standby) = mount_and_read(
        "primary",
        &["--handle-db", "target_session_attrs=prefer-standby"],
    );
    assert!(
        !on_standby.iter().any(|a| a == "pgbootfs-catalog"),
        "{on_standby:?}"
    );
    assert!(
        !on_primary.iter().any(|a| a == "pgbootfs-handle"),
        "{on_primary:?}"
    );
    // Each host's role is in the log once, and the standby's missing feedback.
    let log = mnt.log();
    let s = standby.host().display().to_string();
    assert_eq!(
        log.matches(&format!("database {s}:5432 is a hot standby\n"))
            .count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("hot_standby_feedback off").count(), 1, "{log}");
    assert_eq!(
        log.matches(&format!(
            "database {}:5432 is a primary",
            primary.host().display()
        ))
        .count(),
        1,
        "{log}"
    );
    drop(mnt);
    // The same setting in the one conninfo, without --handle-db: image bytes (and
    // here the catalog too, which only reads) come from the standby.
    let (mnt, on_primary, _) = mount_and_read("prefer-standby", &[]);
    assert!(
        !on_primary.iter().any(|a| a.starts_with("pgbootfs-")),
        "{on_primary:?}"
    );
    // Nothing is left inside a transaction on either host once the mount is gone.
    drop(mnt);
    for pg in [&primary, &standby] {
        let left: i64 = pg
            .client("postgres")
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgbootfs-%' \
                 AND state LIKE 'idle in transaction%'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(left, 0);
    }
}

#[test]
fn a_service_name_connects_without_a_password_on_the_command_line() {
    let (pg, mut c) = store();
    c.batch_execute("CREATE ROLE maas LOGIN SUPERUSER PASSWORD 'svc-s3cret'")
        .unwrap();
    let hba = pg.data().join("pg_hba.conf");
    let rules = fs::read_to_string(&hba).unwrap();
    fs::write(&hba, format!("local all maas scram-sha-256\n{rules}")).unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    let home = temp_dir("pgbt-home-");
    let h = home.path();
    let file = h.join("services.conf");
    fs::write(
        &file,
        format!(
            "# MAAS region database\n[maas]\nhost={}\nport={}\nuser=maas\ndbname=postgres\n\
             password=svc-s3cret\n",
            pg.host().display(),
            pg.port()
        ),
    )
    .unwrap();
    let f = file.display().to_string();
    let env = [("PGSERVICEFILE", f.as_str()), ("RUST_LOG", "debug")];
    let out = run(h, &["--db", "service=maas", "ls"], &env);
    let all = text(&out);
    ok(out);
    assert!(
        !all.contains("svc-s3cret"),
        "no password in the log:\n{all}"
    );
    assert!(
        all.contains("service \"maas\""),
        "the debug log says where settings came from:\n{all}"
    );
    // PGSERVICE alone, and a URL naming the service.
    ok(run(
        h,
        &["ls"],
        &[("PGSERVICEFILE", &f), ("PGSERVICE", "maas")],
    ));
    ok(run(
        h,
        &["--db", "postgresql:///?service=maas", "ls"],
        &[("PGSERVICEFILE", &f)],
    ));
    // The system file, when the user's has no such service.
    fs::create_dir(h.join("no-sysconf")).unwrap();
    fs::copy(&file, h.join("no-sysconf/pg_service.conf")).unwrap();
    ok(run(h, &["--db", "service=maas", "ls"], &[]));
    // A wrong name: one line naming it and the files looked in.
    let e = fails(run(
        h,
        &["--db", "service=nosuch", "ls"],
        &[("PGSERVICEFILE", &f)],
    ));
    assert!(
        e.contains("\"nosuch\" not found") && e.contains("services.conf"),
        "{e}"
    );
    // A wrong password in the string beats the file's right one, as libpq.
    let e = fails(run(
        h,
        &["--db", "service=maas password=wrong", "ls"],
        &[("PGSERVICEFILE", &f)],
    ));
    assert!(
        e.contains("password authentication failed") && !e.contains("wrong"),
        "{e}"
    );
}

/// Stops a process with SIGSTOP until dropped.
struct Frozen(i32);

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: kill on a pid we froze.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

#[test]
fn a_frozen_server_is_given_up_after_connect_timeout() {
    let (frozen, _c) = store();
    let (good, _c2) = store();
    let pid: i32 = fs::read_to_string(frozen.data().join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill on the test cluster's postmaster; Frozen sends SIGCONT on drop.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let _frozen = Frozen(pid);
    let home = temp_dir("pgbt-home-");
    let db =
        |hosts: String| format!("host={hosts} user=postgres dbname=postgres connect_timeout=2");
    // The frozen postmaster's kernel accepts the socket, then nothing answers: the
    // next host is tried after connect_timeout rather than never.
    let t = std::time::Instant::now();
    ok(run(
        home.path(),
        &[
            "--db",
            &db(format!(
                "{},{}",
                frozen.host().display(),
                good.host().display()
            )),
            "ls",
        ],
        &[],
    ));
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    let e = fails(run(
        home.path(),
        &["--db", &db(frozen.host().display().to_string()), "ls"],
        &[],
    ));
    assert!(e.contains("no answer within 2 s (connect_timeout)"), "{e}");
}
