//! Unit tests of [`super`]: precedence, service files, defaults, `--handle-db`.

use std::path::PathBuf;
use std::time::Duration;

use super::super::conninfo;
use super::*;

fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |name| {
        pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

#[test]
fn db_flag_wins_over_environment() {
    let c = DbConfig::resolve_with(
        Some("host=/tmp/sock port=6000 user=maas dbname=maasdb password=s3cret"),
        env_of(&[("DATABASE_URL", "postgres://x@y/z"), ("PGUSER", "other")]),
    )
    .unwrap();
    assert_eq!(c.source(), "--db");
    assert_eq!(
        c.describe(),
        "host=/tmp/sock port=6000 dbname=maasdb user=maas"
    );
}

#[test]
fn url_with_socket_host_and_password_is_not_described_with_password() {
    let c = DbConfig::resolve_with(
        None,
        env_of(&[(
            "DATABASE_URL",
            "postgresql://maas:hunter2@%2Fvar%2Frun%2Fpostgresql:5433/maasdb",
        )]),
    )
    .unwrap();
    assert_eq!(c.source(), "DATABASE_URL");
    let d = c.describe();
    assert!(!d.contains("hunter2"), "{d}");
    assert_eq!(
        d,
        "host=/var/run/postgresql port=5433 dbname=maasdb user=maas"
    );
}

#[test]
fn pg_variables_fill_the_gaps() {
    let c = DbConfig::resolve_with(
        None,
        env_of(&[
            ("PGHOST", "db.example"),
            ("PGPORT", "5999"),
            ("PGUSER", "maas"),
            ("PGPASSWORD", "pw"),
            ("PGDATABASE", "maasdb"),
        ]),
    )
    .unwrap();
    assert_eq!(
        c.describe(),
        "host=db.example port=5999 dbname=maasdb user=maas"
    );
    assert_eq!(c.password(), Some(&b"pw"[..]));
}

#[test]
fn bad_port_and_bad_string_name_their_source() {
    let e = DbConfig::resolve_with(None, env_of(&[("PGPORT", "abc")]))
        .err()
        .unwrap();
    assert!(e.to_string().contains("PGPORT"), "{e}");
    let e = DbConfig::resolve_with(Some("host=a port=notanumber"), env_of(&[]))
        .err()
        .unwrap();
    assert!(e.to_string().contains("--db"), "{e}");
}

/// Service files and an environment, in a temp dir removed on drop.
struct Svc {
    dir: PathBuf,
}

impl Svc {
    fn new(tag: &str) -> Svc {
        let dir = std::env::temp_dir().join(format!("pgbootfs-svc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("home")).unwrap();
        std::fs::create_dir_all(dir.join("sys")).unwrap();
        Svc { dir }
    }

    fn write(&self, rel: &str, text: &str) -> String {
        let p = self.dir.join(rel);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    /// An environment of `pairs` plus HOME and PGSYSCONFDIR inside the temp dir.
    fn env(&self, pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let mut all: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        all.push(("HOME".into(), self.dir.join("home").display().to_string()));
        all.push((
            "PGSYSCONFDIR".into(),
            self.dir.join("sys").display().to_string(),
        ));
        move |name| all.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }
}

impl Drop for Svc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn service_settings_come_after_the_string_and_before_the_environment() {
    let svc = Svc::new("prec");
    let file = svc.write(
        "user.conf",
        "[maas]\nhost=/svc\nport=6000\ndbname=svcdb\nuser=svcuser\npassword=svcpw\n",
    );
    let env = svc.env(&[
        ("PGSERVICEFILE", &file),
        ("PGHOST", "/envhost"),
        ("PGPORT", "7000"),
        ("PGUSER", "envuser"),
        ("PGDATABASE", "envdb"),
        ("PGPASSWORD", "envpw"),
        ("PGCONNECT_TIMEOUT", "3"),
    ]);
    let c = DbConfig::resolve_with(Some("service=maas dbname=given"), &env).unwrap();
    assert_eq!(
        c.describe(),
        "host=/svc port=6000 dbname=given user=svcuser"
    );
    assert_eq!(c.password(), Some(&b"svcpw"[..]));
    assert_eq!(c.base.get_connect_timeout(), Some(&Duration::from_secs(3)));
    // PGSERVICE names it when the string does not.
    let env2 = svc.env(&[
        ("PGSERVICEFILE", &file),
        ("PGSERVICE", "maas"),
        ("PGPORT", "7000"),
    ]);
    let c = DbConfig::resolve_with(None, &env2).unwrap();
    assert_eq!(
        c.describe(),
        "host=/svc port=6000 dbname=svcdb user=svcuser"
    );
    // service= in the string wins over PGSERVICE.
    let file2 = svc.write("user2.conf", "[a]\nport=1111\n[b]\nport=2222\n");
    let env3 = svc.env(&[("PGSERVICEFILE", &file2), ("PGSERVICE", "a")]);
    let c = DbConfig::resolve_with(Some("host=/h service=b"), &env3).unwrap();
    assert_eq!(c.endpoints[0].port, 2222);
    let c = DbConfig::resolve_with(Some("host=/h"), &env3).unwrap();
    assert_eq!(c.endpoints[0].port, 1111);
    // Without a service, the environment.
    let c = DbConfig::resolve_with(None, &env).unwrap();
    assert_eq!(
        c.describe(),
        "host=/envhost port=7000 dbname=envdb user=envuser"
    );
    assert_eq!(c.password(), Some(&b"envpw"[..]));
}

#[test]
fn service_files_are_looked_up_as_libpq_does() {
    let svc = Svc::new("files");
    let port_of = |db: Option<&str>, env: &dyn Fn(&str) -> Option<String>| {
        DbConfig::resolve_with(db, env).map(|c| c.endpoints[0].port)
    };
    svc.write(
        "sys/pg_service.conf",
        "[sysonly]\nhost=/s\nport=3000\n[both]\nhost=/s\nport=3001\n",
    );
    svc.write(
        "home/.pg_service.conf",
        "[both]\nhost=/u\nport=4001\n[homeonly]\nhost=/u\nport=4002\n",
    );
    let env = svc.env(&[]);
    // ~/.pg_service.conf first, then PGSYSCONFDIR/pg_service.conf.
    assert_eq!(port_of(Some("service=both"), &env).unwrap(), 4001);
    assert_eq!(port_of(Some("service=homeonly"), &env).unwrap(), 4002);
    assert_eq!(port_of(Some("service=sysonly"), &env).unwrap(), 3000);
    // PGSERVICEFILE replaces ~/.pg_service.conf.
    let f = svc.write("other.conf", "[both]\nhost=/o\nport=5001\n");
    let env = svc.env(&[("PGSERVICEFILE", &f)]);
    assert_eq!(port_of(Some("service=both"), &env).unwrap(), 5001);
    assert_eq!(port_of(Some("service=homeonly"), &env).ok(), None);
    assert_eq!(port_of(Some("service=sysonly"), &env).unwrap(), 3000);
    // A service found nowhere, or a bad line in it, is one clear error.
    let e = port_of(Some("service=nosuch"), &env)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("definition of service \"nosuch\" not found"),
        "{e}"
    );
    assert!(
        e.contains("other.conf") && e.contains("sys/pg_service.conf"),
        "{e}"
    );
    svc.write("bad.conf", "[x]\nhost=/h\nhots=typo\n");
    let env = svc.env(&[(
        "PGSERVICEFILE",
        &svc.dir.join("bad.conf").display().to_string(),
    )]);
    let e = port_of(Some("service=x"), &env).unwrap_err().to_string();
    assert!(e.contains("bad.conf, line 3") && e.contains("hots"), "{e}");
}

#[test]
fn a_service_file_takes_every_keyword_a_conninfo_takes() {
    let svc = Svc::new("keys");
    let values = [
        ("application_name", "maas images"),
        ("channel_binding", "prefer"),
        ("client_encoding", "UTF8"),
        ("connect_timeout", "7"),
        ("dbname", "maasdb"),
        ("fallback_application_name", "fb"),
        ("gssdelegation", "0"),
        ("gssencmode", "disable"),
        ("gsslib", "gssapi"),
        ("host", "localhost,db2"),
        ("hostaddr", "127.0.0.1,127.0.0.2"),
        ("keepalives", "1"),
        ("keepalives_count", "3"),
        ("keepalives_idle", "4"),
        ("keepalives_interval", "1"),
        ("krbsrvname", "postgres"),
        ("load_balance_hosts", "random"),
        ("options", "-c statement_timeout=0"),
        ("passfile", "/nonexistent/pgpass"),
        ("password", "s3cret"),
        ("port", "5433,5434"),
        ("replication", "false"),
        ("require_auth", "scram-sha-256"),
        ("requirepeer", "postgres"),
        ("ssl_max_protocol_version", "TLSv1.3"),
        ("ssl_min_protocol_version", "TLSv1.2"),
        ("sslcert", "/nonexistent/client.crt"),
        ("sslcertmode", "allow"),
        ("sslcompression", "0"),
        ("sslcrl", "/nonexistent/root.crl"),
        ("sslcrldir", "/nonexistent/crls"),
        ("sslkey", "/nonexistent/client.key"),
        ("sslmode", "prefer"),
        ("sslnegotiation", "postgres"),
        ("sslpassword", "keypw"),
        ("sslrootcert", "/nonexistent/root.crt"),
        ("sslsni", "1"),
        ("target_session_attrs", "prefer-standby"),
        ("tcp_user_timeout", "9000"),
        ("user", "maas"),
    ];
    let mut listed: Vec<&str> = values.iter().map(|(k, _)| *k).collect();
    listed.push("service");
    listed.sort();
    assert_eq!(listed, conninfo::KEYWORDS, "every keyword is covered");
    let text: String = values.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    let file = svc.write("all.conf", &format!("[all]\n{text}"));
    let env = svc.env(&[("PGSERVICEFILE", &file)]);
    let c = DbConfig::resolve_with(Some("service=all"), &env).unwrap();
    assert_eq!(
        c.describe(),
        "host=localhost,db2 port=5433,5434 dbname=maasdb user=maas"
    );
    assert_eq!(c.password(), Some(&b"s3cret"[..]));
    assert_eq!(c.endpoints[1].hostaddr, Some("127.0.0.2".parse().unwrap()));
    assert_eq!(c.attrs, SessionAttrs::PreferStandby);
    assert!(c.random);
    assert_eq!(c.app.as_deref(), Some("maas images"));
    assert_eq!(c.base.get_options(), Some("-c statement_timeout=0"));
    assert_eq!(c.base.get_keepalives_idle(), Duration::from_secs(4));
    assert_eq!(c.base.get_keepalives_retries(), Some(3));
    assert_eq!(
        c.base.get_tcp_user_timeout(),
        Some(&Duration::from_millis(9000))
    );
    assert_eq!(c.base.get_connect_timeout(), Some(&Duration::from_secs(7)));
    assert_eq!(c.passfile, Some(PathBuf::from("/nonexistent/pgpass")));
    // The same text as a conninfo resolves the same way.
    let line: String = values.iter().map(|(k, v)| format!("{k}='{v}' ")).collect();
    let d = DbConfig::resolve_with(Some(&line), svc.env(&[])).unwrap();
    assert_eq!(d.describe(), c.describe());
}

#[test]
fn keepalive_defaults_notice_a_dead_server_within_15_seconds() {
    let c = DbConfig::resolve_with(Some("host=db"), env_of(&[])).unwrap();
    let b = &c.base;
    assert!(b.get_keepalives());
    let probes = b.get_keepalives_idle()
        + b.get_keepalives_interval().unwrap() * b.get_keepalives_retries().unwrap();
    assert!(probes <= Duration::from_secs(15), "{probes:?}");
    assert_eq!(b.get_tcp_user_timeout(), Some(&Duration::from_secs(15)));
    assert_eq!(b.get_connect_timeout(), Some(&Duration::from_secs(10)));
    assert_eq!(c.ssl_mode(), SslMode::Prefer);
    // Overridable, with libpq's units (tcp_user_timeout in ms; 0 = system's).
    let c = DbConfig::resolve_with(
        Some("host=db keepalives=0 tcp_user_timeout=0 connect_timeout=0"),
        env_of(&[]),
    )
    .unwrap();
    assert!(!c.base.get_keepalives());
    assert_eq!(c.base.get_tcp_user_timeout(), None);
    assert_eq!(c.base.get_connect_timeout(), None);
}

#[test]
fn handle_db_lays_its_keys_over_db() {
    let c = DbConfig::resolve_with(
        Some("host=/a,/b dbname=maasdb user=maas target_session_attrs=primary"),
        env_of(&[]),
    )
    .unwrap()
    .with_handle_overlay_env("target_session_attrs=prefer-standby", env_of(&[]))
    .unwrap();
    assert_eq!(c.attrs, SessionAttrs::Primary);
    let h = c.for_handles();
    assert_eq!(h.attrs, SessionAttrs::PreferStandby);
    assert_eq!(h.describe(), c.describe());
    let e = c
        .clone()
        .with_handle_overlay_env("sslmode=bogus", env_of(&[]))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--handle-db"), "{e}");
}

#[test]
fn a_wrong_tls_setting_names_the_place_it_came_from() {
    let e = DbConfig::resolve_with(
        Some("host=db sslmode=require"),
        env_of(&[("PGSSLMINPROTOCOLVERSION", "TLSv9")]),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("PGSSLMINPROTOCOLVERSION"), "{e}");
    assert!(e.contains("invalid ssl_min_protocol_version value"), "{e}");
    let e = DbConfig::resolve_with(Some("host=db"), env_of(&[("PGSSLMODE", "sometimes")]))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("in PGSSLMODE: invalid sslmode value"), "{e}");
}
