//! Where the database is and how pgbootfs connects to it, with libpq's meaning.
//!
//! The `postgres` crate reads no libpq environment, knows no service files, no TLS
//! certificate checks and only some `target_session_attrs`, so this module does
//! what libpq does: the connection string (`--db`, else `DATABASE_URL`) is parsed
//! into libpq keywords ([`conninfo`]); a service (`service=` or `PGSERVICE`) fills
//! what it left unset ([`service`]); then the `PG*` variables; then the defaults.
//! [`DbConfig::connect`] opens one session honouring all of it (hosts in turn or
//! shuffled, TLS per [`tls`], the session attributes checked on the server), and is
//! what every pool and every reconnection uses. Nothing this module prints or
//! returns carries a password.

pub mod conninfo;
pub mod error;
pub mod service;
pub mod tls;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use postgres::config::{ChannelBinding, Host, SslNegotiation};
use postgres::{Client, Config, NoTls};
use r2d2::{ManageConnection, Pool};

pub use conninfo::Params;
pub use error::{ConfError, DbError, connect_reason, describe_pg_error};
pub use tls::SslMode;
use tls::Tls;

/// Seconds a connection attempt to one host may take when `connect_timeout` is
/// not set (libpq waits forever; a daemon should try the next host instead).
pub const DEFAULT_CONNECT_TIMEOUT: u64 = 10;
/// TCP keepalive defaults: idle 5 s, then a probe every 2 s, 5 unanswered probes
/// end the connection; with `tcp_user_timeout` 15 s for data the server does not
/// acknowledge, a server that vanished (power, network) is noticed within about
/// 15 s instead of the kernel's two hours.
pub const DEFAULT_KEEPALIVES_IDLE: u64 = 5;
/// See [`DEFAULT_KEEPALIVES_IDLE`].
pub const DEFAULT_KEEPALIVES_INTERVAL: u64 = 2;
/// See [`DEFAULT_KEEPALIVES_IDLE`].
pub const DEFAULT_KEEPALIVES_COUNT: u32 = 5;
/// See [`DEFAULT_KEEPALIVES_IDLE`]; milliseconds, as libpq's keyword.
pub const DEFAULT_TCP_USER_TIMEOUT_MS: u64 = 15_000;

/// The environment variable of each keyword, as libpq reads them.
const ENV: &[(&str, &str)] = &[
    ("host", "PGHOST"),
    ("hostaddr", "PGHOSTADDR"),
    ("port", "PGPORT"),
    ("dbname", "PGDATABASE"),
    ("user", "PGUSER"),
    ("password", "PGPASSWORD"),
    ("passfile", "PGPASSFILE"),
    ("channel_binding", "PGCHANNELBINDING"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
    ("options", "PGOPTIONS"),
    ("application_name", "PGAPPNAME"),
    ("sslmode", "PGSSLMODE"),
    ("sslnegotiation", "PGSSLNEGOTIATION"),
    ("sslcompression", "PGSSLCOMPRESSION"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
    ("sslcertmode", "PGSSLCERTMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslcrl", "PGSSLCRL"),
    ("sslcrldir", "PGSSLCRLDIR"),
    ("sslsni", "PGSSLSNI"),
    ("requirepeer", "PGREQUIREPEER"),
    ("ssl_min_protocol_version", "PGSSLMINPROTOCOLVERSION"),
    ("ssl_max_protocol_version", "PGSSLMAXPROTOCOLVERSION"),
    ("gssencmode", "PGGSSENCMODE"),
    ("krbsrvname", "PGKRBSRVNAME"),
    ("gsslib", "PGGSSLIB"),
    ("gssdelegation", "PGGSSDELEGATION"),
    ("target_session_attrs", "PGTARGETSESSIONATTRS"),
    ("load_balance_hosts", "PGLOADBALANCEHOSTS"),
    ("client_encoding", "PGCLIENTENCODING"),
    ("require_auth", "PGREQUIREAUTH"),
];

/// Keywords libpq knows that pgbootfs cannot honour; setting one (other than to
/// its harmless default) logs a warning instead of failing.
const IGNORED: &[(&str, &str)] = &[
    ("client_encoding", "UTF8"),
    ("gssencmode", "prefer"),
    ("gssencmode", "disable"),
    ("gsslib", ""),
    ("gssdelegation", "0"),
    ("krbsrvname", ""),
    ("replication", ""),
    ("require_auth", ""),
    ("requirepeer", ""),
    ("sslcompression", "0"),
    ("sslcertmode", "allow"),
    ("sslcertmode", "disable"),
];

/// libpq's `target_session_attrs` (PostgreSQL 14 semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAttrs {
    /// Any server.
    Any,
    /// A session that can write (`transaction_read_only` off).
    ReadWrite,
    /// A session that cannot write.
    ReadOnly,
    /// A server not in recovery.
    Primary,
    /// A hot standby.
    Standby,
    /// A hot standby if any host is one, else any server.
    PreferStandby,
}

impl SessionAttrs {
    fn parse(s: &str) -> Option<SessionAttrs> {
        Some(match s {
            "any" => SessionAttrs::Any,
            "read-write" => SessionAttrs::ReadWrite,
            "read-only" => SessionAttrs::ReadOnly,
            "primary" => SessionAttrs::Primary,
            "standby" => SessionAttrs::Standby,
            "prefer-standby" => SessionAttrs::PreferStandby,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            SessionAttrs::Any => "any",
            SessionAttrs::ReadWrite => "read-write",
            SessionAttrs::ReadOnly => "read-only",
            SessionAttrs::Primary => "primary",
            SessionAttrs::Standby => "standby",
            SessionAttrs::PreferStandby => "prefer-standby",
        }
    }

    /// Whether a server in `role` is acceptable (prefer-standby: in its first pass).
    fn accepts(self, role: &Role) -> bool {
        match self {
            SessionAttrs::Any => true,
            SessionAttrs::ReadWrite => !role.read_only,
            SessionAttrs::ReadOnly => role.read_only,
            SessionAttrs::Primary => !role.standby,
            SessionAttrs::Standby | SessionAttrs::PreferStandby => role.standby,
        }
    }
}

/// What a server said about itself on a new session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Role {
    /// In recovery (a hot standby).
    pub standby: bool,
    /// `transaction_read_only` is on for this session.
    pub read_only: bool,
    /// `hot_standby_feedback` is on (meaningful on a standby).
    pub feedback: bool,
}

impl Role {
    fn describe(&self) -> &'static str {
        match (self.standby, self.read_only) {
            (true, _) => "a hot standby",
            (false, true) => "a primary with read-only sessions",
            (false, false) => "a primary",
        }
    }
}

/// One place to connect to: a host name, IP address or socket directory, and a port.
#[derive(Debug, Clone)]
struct Endpoint {
    host: Host,
    hostaddr: Option<IpAddr>,
    port: u16,
}

impl Endpoint {
    fn label(&self) -> String {
        let host = match (&self.host, self.hostaddr) {
            (Host::Tcp(name), _) if !name.is_empty() => name.clone(),
            (_, Some(addr)) => addr.to_string(),
            (Host::Tcp(name), None) => name.clone(),
            (Host::Unix(dir), _) => dir.display().to_string(),
        };
        format!("{host}:{}", self.port)
    }

    fn is_unix(&self) -> bool {
        matches!(self.host, Host::Unix(_)) && self.hostaddr.is_none()
    }
}

/// A resolved database location: every setting, with where it came from.
#[derive(Clone)]
pub struct DbConfig {
    base: Config,
    endpoints: Vec<Endpoint>,
    tls: Arc<Tls>,
    attrs: SessionAttrs,
    random: bool,
    passfile: Option<PathBuf>,
    app: Option<String>,
    source: &'static str,
    explicit: Params,
    handles: Option<Box<DbConfig>>,
}

/// Which host roles have been logged, so each is logged once (and again when it
/// changes, as after a failover).
fn roles_seen() -> &'static Mutex<HashMap<String, Role>> {
    static SEEN: OnceLock<Mutex<HashMap<String, Role>>> = OnceLock::new();
    SEEN.get_or_init(Mutex::default)
}

fn note_role(label: &str, role: Role) {
    let mut seen = roles_seen().lock();
    let before = seen.insert(label.to_string(), role);
    if before == Some(role) {
        return;
    }
    match before {
        None => log::info!("database {label} is {}", role.describe()),
        Some(old) => log::warn!(
            "database {label} is now {} (was {})",
            role.describe(),
            old.describe()
        ),
    }
    if role.standby && !role.feedback && before.is_none_or(|b| !b.standby || b.feedback) {
        log::warn!(
            "database {label} is a hot standby with hot_standby_feedback off: when its \
             replay conflicts with a read (VACUUM on the primary), the server ends that \
             read's session after max_standby_streaming_delay; turn hot_standby_feedback \
             on to avoid most such conflicts"
        );
    }
}

/// Settings after precedence, with the name of the place each came from.
struct Resolved {
    params: Params,
    origin: BTreeMap<String, String>,
}

impl Resolved {
    fn get(&self, key: &str) -> Option<&str> {
        self.params
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn bad(&self, key: &str, reason: impl Into<String>) -> DbError {
        DbError::BadConninfo {
            source: self
                .origin
                .get(key)
                .cloned()
                .unwrap_or_else(|| "the defaults".into()),
            reason: reason.into(),
        }
    }

    fn seconds(&self, key: &str) -> Result<Option<u64>, DbError> {
        self.get(key)
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| self.bad(key, format!("invalid integer value \"{v}\" for {key}")))
            })
            .transpose()
    }
}

impl DbConfig {
    /// Resolves the database from `--db`, else `DATABASE_URL`, else the `PG*` variables.
    pub fn resolve(db_arg: Option<&str>) -> Result<DbConfig, DbError> {
        Self::resolve_with(db_arg, |name| std::env::var(name).ok())
    }

    /// Like [`DbConfig::resolve`], reading the environment through `env` (for tests).
    pub fn resolve_with(
        db_arg: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<DbConfig, DbError> {
        let (text, source) = match (db_arg, env("DATABASE_URL")) {
            (Some(arg), _) => (arg.to_string(), "--db"),
            (None, Some(url)) if !url.is_empty() => (url, "DATABASE_URL"),
            _ => (String::new(), "PG* environment"),
        };
        let explicit = conninfo::parse(&text).map_err(|e| DbError::BadConninfo {
            source: source.into(),
            reason: e.reason,
        })?;
        Self::build(explicit, source, &env)
    }

    /// The settings for handle connections: `overlay`'s keys (`--handle-db`) laid
    /// over this configuration's connection string, then service, environment and
    /// defaults as usual. Connections made for image bytes use it.
    pub fn with_handle_overlay(self, overlay: &str) -> Result<DbConfig, DbError> {
        self.with_handle_overlay_env(overlay, |name| std::env::var(name).ok())
    }

    /// Like [`DbConfig::with_handle_overlay`], reading the environment through `env`.
    pub fn with_handle_overlay_env(
        mut self,
        overlay: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<DbConfig, DbError> {
        let extra = conninfo::parse(overlay).map_err(|e| DbError::BadConninfo {
            source: "--handle-db".into(),
            reason: e.reason,
        })?;
        let mut explicit = self.explicit.clone();
        explicit.extend(extra);
        let handles = Self::build(explicit, "--handle-db", &env)?;
        self.handles = Some(Box::new(handles));
        Ok(self)
    }

    /// The settings for connections that read image bytes (`--handle-db` if given).
    pub fn for_handles(&self) -> &DbConfig {
        self.handles.as_deref().unwrap_or(self)
    }

    fn build(
        explicit: Params,
        source: &'static str,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<DbConfig, DbError> {
        let mut r = Resolved {
            origin: explicit
                .keys()
                .map(|k| (k.clone(), source.to_string()))
                .collect(),
            params: explicit.clone(),
        };
        // The service fills what the string left unset, then the environment.
        let service = match r.get("service") {
            Some(s) => Some(s.to_string()),
            None => env("PGSERVICE").filter(|s| !s.is_empty()),
        };
        if let Some(name) = service {
            let before: Vec<String> = r.params.keys().cloned().collect();
            service::apply(&mut r.params, &name, env).map_err(|e| DbError::BadConninfo {
                source: format!("service {name:?}"),
                reason: e.reason,
            })?;
            for k in r.params.keys() {
                if !before.contains(k) {
                    r.origin.insert(k.clone(), format!("service {name:?}"));
                }
            }
        }
        for (key, var) in ENV {
            if !r.params.contains_key(*key)
                && let Some(v) = env(var).filter(|v| !v.is_empty())
            {
                r.params.insert(key.to_string(), v);
                r.origin.insert(key.to_string(), var.to_string());
            }
        }
        for (key, _) in IGNORED {
            if let Some(v) = r.get(key) {
                let harmless = IGNORED
                    .iter()
                    .any(|(k, h)| k == key && !h.is_empty() && h.eq_ignore_ascii_case(v));
                if !harmless {
                    log::warn!(
                        "connection setting {key}={v} is not supported by pgbootfs and is ignored"
                    );
                }
            }
        }
        // Where each setting came from helps an operator; the password never shows.
        log::debug!(
            "connection settings from {}: {}",
            r.origin
                .values()
                .cloned()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
                .join(", "),
            conninfo::redacted(&r.params)
        );
        if r.get("gssencmode") == Some("require") {
            return Err(r.bad("gssencmode", "gssencmode=require: pgbootfs has no GSSAPI"));
        }

        // Hosts, addresses and ports, matched up as libpq does.
        let split = |key: &str| -> Vec<String> {
            r.params
                .get(key)
                .filter(|v| !v.is_empty())
                .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
                .unwrap_or_default()
        };
        let mut hosts = split("host");
        let addrs = split("hostaddr");
        if hosts.is_empty() && addrs.is_empty() {
            hosts.push(default_host());
        }
        if !hosts.is_empty() && !addrs.is_empty() && hosts.len() != addrs.len() {
            return Err(r.bad(
                "hostaddr",
                format!(
                    "could not match {} host names to {} hostaddr values",
                    hosts.len(),
                    addrs.len()
                ),
            ));
        }
        let n = hosts.len().max(addrs.len());
        let ports = split("port");
        if ports.len() > 1 && ports.len() != n {
            return Err(r.bad(
                "port",
                format!("could not match {} port numbers to {n} hosts", ports.len()),
            ));
        }
        let mut endpoints = Vec::with_capacity(n);
        for i in 0..n {
            let port = match ports.get(i).or(ports.first()).map(String::as_str) {
                None | Some("") => 5432,
                Some(p) => p
                    .parse::<u16>()
                    .map_err(|_| r.bad("port", format!("invalid port number: \"{p}\"")))?,
            };
            let hostaddr = match addrs.get(i).map(String::as_str) {
                None | Some("") => None,
                Some(a) => Some(a.parse::<IpAddr>().map_err(|_| {
                    r.bad(
                        "hostaddr",
                        format!("could not parse network address \"{a}\""),
                    )
                })?),
            };
            let host = match hosts.get(i).map(String::as_str) {
                Some(h) if h.starts_with('/') => Host::Unix(PathBuf::from(h)),
                Some(h) if !h.is_empty() => Host::Tcp(h.to_string()),
                _ => match hostaddr {
                    Some(a) => Host::Tcp(a.to_string()),
                    None => match default_host() {
                        d if d.starts_with('/') => Host::Unix(PathBuf::from(d)),
                        d => Host::Tcp(d),
                    },
                },
            };
            endpoints.push(Endpoint {
                host,
                hostaddr,
                port,
            });
        }

        let mut base = Config::new();
        let user = r
            .get("user")
            .map(str::to_string)
            .or_else(crate::passwd::name)
            .unwrap_or_else(|| "postgres".to_string());
        base.user(&user);
        base.dbname(r.get("dbname").unwrap_or(&user));
        if let Some(pw) = r.params.get("password") {
            base.password(pw.as_bytes());
        }
        if let Some(o) = r.get("options") {
            base.options(o);
        }
        // libpq: 0 (or unset) waits forever, and less than 2 s counts as 2 s.
        let timeout = r
            .seconds("connect_timeout")?
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        if timeout > 0 {
            base.connect_timeout(Duration::from_secs(timeout.max(2)));
        }
        base.keepalives(r.get("keepalives") != Some("0"));
        base.keepalives_idle(Duration::from_secs(
            r.seconds("keepalives_idle")?
                .unwrap_or(DEFAULT_KEEPALIVES_IDLE)
                .max(1),
        ));
        base.keepalives_interval(Duration::from_secs(
            r.seconds("keepalives_interval")?
                .unwrap_or(DEFAULT_KEEPALIVES_INTERVAL)
                .max(1),
        ));
        base.keepalives_retries(
            r.seconds("keepalives_count")?
                .map(|c| c as u32)
                .unwrap_or(DEFAULT_KEEPALIVES_COUNT)
                .max(1),
        );
        // 0 means the system default, as in libpq.
        let user_timeout = r
            .seconds("tcp_user_timeout")?
            .unwrap_or(DEFAULT_TCP_USER_TIMEOUT_MS);
        if user_timeout > 0 {
            base.tcp_user_timeout(Duration::from_millis(user_timeout));
        }
        if let Some(cb) = r.get("channel_binding") {
            base.channel_binding(match cb {
                "disable" => ChannelBinding::Disable,
                "prefer" => ChannelBinding::Prefer,
                "require" => ChannelBinding::Require,
                v => return Err(r.bad("channel_binding", format!("invalid value \"{v}\""))),
            });
        }
        if let Some(n) = r.get("sslnegotiation") {
            base.ssl_negotiation(match n {
                "postgres" => SslNegotiation::Postgres,
                "direct" => SslNegotiation::Direct,
                v => return Err(r.bad("sslnegotiation", format!("invalid value \"{v}\""))),
            });
        }
        let attrs = match r.get("target_session_attrs") {
            None => SessionAttrs::Any,
            Some(v) => SessionAttrs::parse(v).ok_or_else(|| {
                r.bad(
                    "target_session_attrs",
                    format!("invalid target_session_attrs value: \"{v}\""),
                )
            })?,
        };
        let random = match r.get("load_balance_hosts") {
            None | Some("disable") => false,
            Some("random") => true,
            Some(v) => {
                return Err(r.bad(
                    "load_balance_hosts",
                    format!("invalid load_balance_hosts value: \"{v}\""),
                ));
            }
        };
        let home = env("HOME")
            .filter(|h| !h.is_empty())
            .or_else(crate::passwd::home);
        // An error that names no keyword (OpenSSL failing to start) is blamed on sslmode.
        let tls = Tls::new(&r.params, home.as_deref())
            .map_err(|e| r.bad(e.key.as_deref().unwrap_or("sslmode"), e.reason))?;
        let passfile = r
            .get("passfile")
            .map(PathBuf::from)
            .or_else(|| home.map(|h| PathBuf::from(h).join(".pgpass")));
        Ok(DbConfig {
            base,
            endpoints,
            tls: Arc::new(tls),
            attrs,
            random,
            passfile,
            app: r.get("application_name").map(str::to_string),
            source,
            explicit,
            handles: None,
        })
    }

    /// `host=… port=… dbname=… user=…`, never the password.
    pub fn describe(&self) -> String {
        let hosts: Vec<String> = self
            .endpoints
            .iter()
            .map(|e| match (&e.host, e.hostaddr) {
                (Host::Tcp(name), _) => name.clone(),
                (Host::Unix(path), _) => path.display().to_string(),
            })
            .collect();
        let mut ports: Vec<String> = self.endpoints.iter().map(|e| e.port.to_string()).collect();
        ports.dedup();
        format!(
            "host={} port={} dbname={} user={}",
            hosts.join(","),
            ports.join(","),
            self.base.get_dbname().unwrap_or("?"),
            self.base.get_user().unwrap_or("?"),
        )
    }

    /// Which setting the connection string came from.
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// The TLS mode in force.
    pub fn ssl_mode(&self) -> SslMode {
        self.tls.mode
    }

    /// The password in force, if any (for tests of precedence).
    #[cfg(test)]
    fn password(&self) -> Option<&[u8]> {
        self.base.get_password()
    }

    /// Opens one session honouring every setting: each host in turn (shuffled with
    /// `load_balance_hosts=random`), TLS as `sslmode` says, and the server checked
    /// against `target_session_attrs`. `app` is the `application_name` unless the
    /// settings name one. The one way pgbootfs connects: pools and reconnections
    /// call it too.
    pub fn connect(&self, app: &str) -> Result<Client, DbError> {
        let mut order: Vec<usize> = (0..self.endpoints.len()).collect();
        if self.random {
            use rand::seq::SliceRandom;
            order.shuffle(&mut rand::rng());
        }
        // prefer-standby is two passes: standbys only, then anything.
        let passes = match self.attrs {
            SessionAttrs::PreferStandby => vec![SessionAttrs::Standby, SessionAttrs::Any],
            a => vec![a],
        };
        let mut failures: Vec<String> = Vec::new();
        let mut unreachable = vec![false; self.endpoints.len()];
        let mut last = None;
        for (pass, want) in passes.iter().enumerate() {
            for &i in &order {
                if pass > 0 && unreachable[i] {
                    continue;
                }
                let ep = &self.endpoints[i];
                match self.attempt(ep, app, *want) {
                    Ok(client) => return Ok(client),
                    Err(Attempt::Refused(role)) => {
                        if pass + 1 == passes.len() {
                            failures.push(format!(
                                "{}: server is {}, not acceptable for target_session_attrs={}",
                                ep.label(),
                                role.describe(),
                                self.attrs.name()
                            ));
                        }
                    }
                    Err(Attempt::Failed(why, err)) => {
                        unreachable[i] = true;
                        failures.push(format!("{}: {why}", ep.label()));
                        last = err;
                    }
                }
            }
        }
        Err(DbError::Connect {
            target: self.describe(),
            reason: failures.join("; "),
            source: last,
        })
    }

    /// One attempt at one host within `connect_timeout`, as libpq bounds the whole
    /// start-up (TLS, authentication, the role check), not only the TCP connect
    /// the driver bounds: a frozen server (a paused VM, a stopped postmaster)
    /// completes TCP handshakes in its kernel and then never answers. The driver
    /// cannot be interrupted, so the attempt runs on a thread of its own that is
    /// left to finish (or to wait on that server) if the time runs out.
    fn attempt(&self, ep: &Endpoint, app: &str, want: SessionAttrs) -> Result<Client, Attempt> {
        let Some(limit) = self.base.get_connect_timeout().copied() else {
            return self.connect_endpoint(ep, app, want);
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (db, ep2, app2) = (self.clone(), ep.clone(), app.to_string());
        std::thread::Builder::new()
            .name("pg-connect".into())
            .spawn(move || {
                let _ = tx.send(db.connect_endpoint(&ep2, &app2, want));
            })
            .map_err(|e| Attempt::Failed(format!("cannot start a thread: {e}"), None))?;
        rx.recv_timeout(limit).unwrap_or_else(|_| {
            Err(Attempt::Failed(
                format!("no answer within {} s (connect_timeout)", limit.as_secs()),
                None,
            ))
        })
    }

    /// One attempt at one host; the session is returned only if `want` accepts it.
    fn connect_endpoint(
        &self,
        ep: &Endpoint,
        app: &str,
        want: SessionAttrs,
    ) -> Result<Client, Attempt> {
        let mut cfg = self.base.clone();
        cfg.application_name(self.app.as_deref().unwrap_or(app));
        match &ep.host {
            Host::Tcp(name) => cfg.host(name),
            Host::Unix(dir) => cfg.host_path(dir),
        };
        if let Some(addr) = ep.hostaddr {
            cfg.hostaddr(addr);
        }
        cfg.port(ep.port);
        if cfg.get_password().is_none()
            && let Some(pw) = self.password_from_file(ep)
        {
            cfg.password(pw);
        }
        let mode = if ep.is_unix() {
            // libpq never uses TLS over a unix socket, whatever sslmode says.
            SslMode::Disable
        } else {
            self.tls.mode
        };
        let client = match mode {
            SslMode::Disable => self.plain(&mut cfg),
            SslMode::Allow => match self.plain(&mut cfg) {
                // Only a server that refused us is asked again, with TLS.
                Err(Attempt::Failed(_, Some(e))) if e.as_db_error().is_some() => {
                    self.with_tls(&mut cfg, postgres::config::SslMode::Require)
                }
                other => other,
            },
            SslMode::Prefer => self.with_tls(&mut cfg, postgres::config::SslMode::Prefer),
            _ => self.with_tls(&mut cfg, postgres::config::SslMode::Require),
        }?;
        self.check(client, ep, want)
    }

    fn plain(&self, cfg: &mut Config) -> Result<Client, Attempt> {
        cfg.ssl_mode(postgres::config::SslMode::Disable);
        cfg.connect(NoTls)
            .map_err(|e| Attempt::Failed(connect_reason(&e), Some(e)))
    }

    fn with_tls(
        &self,
        cfg: &mut Config,
        mode: postgres::config::SslMode,
    ) -> Result<Client, Attempt> {
        let Some((connector, refusal)) = self.tls.connector() else {
            return self.plain(cfg);
        };
        cfg.ssl_mode(mode);
        cfg.connect(connector).map_err(|e| {
            let why = match refusal.lock().take() {
                Some(r) => format!(
                    "server certificate refused: {r} (sslmode={})",
                    self.tls.mode.name()
                ),
                None if e.to_string().contains("TLS") => {
                    format!("{} (sslmode={})", connect_reason(&e), self.tls.mode.name())
                }
                None => connect_reason(&e),
            };
            Attempt::Failed(why, Some(e))
        })
    }

    /// Asks the server what it is, logs it, and keeps the session if `want` accepts it.
    fn check(
        &self,
        mut client: Client,
        ep: &Endpoint,
        want: SessionAttrs,
    ) -> Result<Client, Attempt> {
        let row = client
            .query_one(
                "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on', \
                 current_setting('hot_standby_feedback') = 'on'",
                &[],
            )
            .map_err(|e| Attempt::Failed(describe_pg_error(&e), Some(e)))?;
        let role = Role {
            standby: row.get(0),
            read_only: row.get(1),
            feedback: row.get(2),
        };
        note_role(&ep.label(), role);
        if want.accepts(&role) {
            Ok(client)
        } else {
            Err(Attempt::Refused(role))
        }
    }

    /// Connects to every host once, in parallel, and logs what each is (primary
    /// or standby) or why it cannot be reached: what an operator wants to see at
    /// start. Nothing fails here; the real connections report their own errors.
    pub fn survey(&self) {
        std::thread::scope(|s| {
            for ep in &self.endpoints {
                s.spawn(
                    move || match self.attempt(ep, "pgbootfs-survey", SessionAttrs::Any) {
                        Ok(_) => {}
                        Err(Attempt::Failed(why, _)) => {
                            log::warn!("database {}: cannot connect: {why}", ep.label())
                        }
                        Err(Attempt::Refused(_)) => {}
                    },
                );
            }
        });
    }

    /// A connection manager for r2d2 pools that connects through [`DbConfig::connect`].
    pub fn manager(&self, app: &'static str) -> Manager {
        Manager {
            db: self.clone(),
            app,
        }
    }

    /// A small pool for metadata queries (the catalog), separate from handles.
    pub fn metadata_pool(&self) -> Result<Pool<Manager>, DbError> {
        let manager = self.manager("pgbootfs-catalog");
        // Connect once now so an unreachable server is reported at start, by name.
        drop(manager.connect()?);
        // The refresher logs failures itself, once a minute while they last: r2d2's
        // own handler would log every reconnection attempt.
        Ok(Pool::builder()
            .max_size(2)
            .min_idle(Some(0))
            .connection_timeout(Duration::from_secs(5))
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(manager))
    }

    /// The password for `ep` from the password file, as libpq reads it:
    /// `passfile`/`PGPASSFILE`, else `~/.pgpass`; ignored unless only its owner
    /// can read it.
    fn password_from_file(&self, ep: &Endpoint) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.passfile.as_ref()?;
        let meta = std::fs::metadata(path).ok()?;
        if meta.permissions().mode() & 0o077 != 0 {
            log::warn!(
                "{} can be read by group or others, so it is ignored (as libpq does); \
                 run chmod 0600 on it",
                path.display()
            );
            return None;
        }
        let text = std::fs::read_to_string(path).ok()?;
        let host = match &ep.host {
            // libpq calls its default socket directory "localhost" in this file.
            Host::Unix(dir) if dir == std::path::Path::new("/var/run/postgresql") => {
                "localhost".to_string()
            }
            Host::Unix(dir) => dir.display().to_string(),
            Host::Tcp(name) => name.clone(),
        };
        pgpass_lookup(
            &text,
            &host,
            ep.port,
            self.base.get_dbname().unwrap_or(""),
            self.base.get_user().unwrap_or(""),
        )
    }
}

/// How one attempt at one host ended without a session.
enum Attempt {
    /// Connected, but the server is not what `target_session_attrs` asks for.
    Refused(Role),
    /// Could not connect: why, and the driver's error.
    Failed(String, Option<postgres::Error>),
}

/// r2d2 connection manager whose every connection is made by [`DbConfig::connect`].
#[derive(Clone)]
pub struct Manager {
    db: DbConfig,
    app: &'static str,
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Manager({}, {})", self.db.describe(), self.app)
    }
}

impl ManageConnection for Manager {
    type Connection = Client;
    type Error = DbError;

    fn connect(&self) -> Result<Client, DbError> {
        self.db.connect(self.app)
    }

    fn is_valid(&self, conn: &mut Client) -> Result<(), DbError> {
        conn.simple_query("")
            .map(|_| ())
            .map_err(|e| DbError::query("checking a pooled connection", e))
    }

    fn has_broken(&self, conn: &mut Client) -> bool {
        conn.is_closed()
    }
}

/// The password of the first line of a `.pgpass` text that matches; `*` matches
/// anything, and `\:` and `\\` stand for `:` and `\`.
fn pgpass_lookup(text: &str, host: &str, port: u16, db: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    let want = [host, port.as_str(), db, user];
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .find_map(|line| {
            let fields = split_pgpass(line);
            if fields.len() < 5 {
                return None;
            }
            let hit = want.iter().zip(&fields).all(|(w, f)| f == "*" || f == w);
            hit.then(|| fields[4..].join(":"))
        })
}

/// Splits one `.pgpass` line on unescaped colons, undoing the escapes.
fn split_pgpass(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ':' => fields.push(String::new()),
            c => {
                // A backslash stands for the character after it.
                let c = if c == '\\' {
                    chars.next().unwrap_or(c)
                } else {
                    c
                };
                if let Some(f) = fields.last_mut() {
                    f.push(c);
                }
            }
        }
    }
    fields
}

fn default_host() -> String {
    // libpq's compiled-in default on Debian is the socket directory below.
    if std::path::Path::new("/var/run/postgresql").is_dir() {
        "/var/run/postgresql".to_string()
    } else {
        "localhost".to_string()
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn pgpass_lines_match_like_libpq() {
        let text = "# comment\n\
                    other:5432:maasdb:maas:wrong\n\
                    localhost:5433:*:maas:port5433\n\
                    localhost:*:maasdb:maas:pa\\:ss:with:colons\n\
                    *:*:*:*:fallback\n";
        let hit = |h, p, d, u| pgpass_lookup(text, h, p, d, u);
        assert_eq!(
            hit("localhost", 5433, "x", "maas").as_deref(),
            Some("port5433")
        );
        assert_eq!(
            hit("localhost", 5432, "maasdb", "maas").as_deref(),
            Some("pa:ss:with:colons")
        );
        assert_eq!(
            hit("db.example", 5432, "maasdb", "maas").as_deref(),
            Some("fallback")
        );
        assert_eq!(pgpass_lookup("a:b\n\n", "a", 1, "", ""), None);
    }

    #[test]
    fn pgpass_file_is_read_only_when_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("pgbootfs-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pass");
        std::fs::write(&file, "/tmp/sock:6000:maasdb:maas:s3cret\n").unwrap();
        let path = file.display().to_string();
        let resolve = |mode: u32| {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            let env = |name: &str| (name == "PGPASSFILE").then(|| path.clone());
            let db = DbConfig::resolve_with(
                Some("host=/tmp/sock port=6000 user=maas dbname=maasdb"),
                env,
            )
            .unwrap();
            db.password_from_file(&db.endpoints[0])
                .map(String::into_bytes)
        };
        assert_eq!(resolve(0o600), Some(b"s3cret".to_vec()));
        assert_eq!(
            resolve(0o644),
            None,
            "group- or world-readable file ignored"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Service files and an environment, in a temp dir removed on drop.
    struct Svc {
        dir: PathBuf,
    }

    impl Svc {
        fn new(tag: &str) -> Svc {
            let dir =
                std::env::temp_dir().join(format!("pgbootfs-svc-{tag}-{}", std::process::id()));
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
}
