//! Where the database is: every connection setting, layered key by key as libpq
//! layers them. The connection string (`--db`, else `DATABASE_URL`, with
//! `--handle-db`'s keys laid over it for image reads) comes first; the service it
//! names (or `PGSERVICE`) fills what it left unset; then the `PG*` variables; then
//! the defaults. Each setting remembers where it came from, so an error names that
//! place. Nothing here connects (`db::connect` does).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use postgres::Config;
use postgres::config::{ChannelBinding, Host, SslNegotiation};

use super::conninfo::{self, Params};
use super::error::{ConfError, DbError};
use super::service;
use super::tls::{SslMode, Tls};

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

    pub(super) fn name(self) -> &'static str {
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
    pub(super) fn accepts(self, role: &Role) -> bool {
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
    /// What the server is, for logs and errors.
    pub(super) fn describe(&self) -> &'static str {
        match (self.standby, self.read_only) {
            (true, _) => "a hot standby",
            (false, true) => "a primary with read-only sessions",
            (false, false) => "a primary",
        }
    }
}

/// One place to connect to: a host name, IP address or socket directory, and a port.
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    pub(super) host: Host,
    pub(super) hostaddr: Option<IpAddr>,
    pub(super) port: u16,
}

impl Endpoint {
    /// `host:port` for logs and errors.
    pub(super) fn label(&self) -> String {
        let host = match (&self.host, self.hostaddr) {
            (Host::Tcp(name), _) if !name.is_empty() => name.clone(),
            (_, Some(addr)) => addr.to_string(),
            (Host::Tcp(name), None) => name.clone(),
            (Host::Unix(dir), _) => dir.display().to_string(),
        };
        format!("{host}:{}", self.port)
    }

    /// A unix socket, where libpq never uses TLS.
    pub(super) fn is_unix(&self) -> bool {
        matches!(self.host, Host::Unix(_)) && self.hostaddr.is_none()
    }
}

/// A resolved database location: every setting, with where it came from.
#[derive(Clone)]
pub struct DbConfig {
    /// User, database, password, options, timeouts and keepalives; the host, port
    /// and TLS are set per attempt.
    pub(super) base: Config,
    pub(super) endpoints: Vec<Endpoint>,
    pub(super) tls: Arc<Tls>,
    pub(super) attrs: SessionAttrs,
    /// `load_balance_hosts=random`.
    pub(super) random: bool,
    pub(super) passfile: Option<PathBuf>,
    /// `application_name` when the settings name one.
    pub(super) app: Option<String>,
    source: &'static str,
    /// The connection string's own keys, under which `--handle-db`'s are laid.
    explicit: Params,
    handles: Option<Box<DbConfig>>,
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
        let explicit = conninfo::parse(&text).map_err(|e| bad_string(source, e))?;
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
        let extra = conninfo::parse(overlay).map_err(|e| bad_string("--handle-db", e))?;
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

    /// Every setting in force, from `explicit` (found in `source`) down to the
    /// defaults, checked and turned into what a connection attempt needs.
    fn build(
        explicit: Params,
        source: &'static str,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<DbConfig, DbError> {
        let r = Resolved::layer(&explicit, source, env)?;
        r.warn_ignored();
        r.log();
        if r.get("gssencmode") == Some("require") {
            return Err(r.bad("gssencmode", "gssencmode=require: pgbootfs has no GSSAPI"));
        }
        let home = env("HOME")
            .filter(|h| !h.is_empty())
            .or_else(crate::passwd::home);
        // TLS last: it reads certificate files, pointless when another setting is
        // wrong, and so the same setting is named when several are.
        let endpoints = r.endpoints()?;
        let base = r.base_config()?;
        let attrs = r.session_attrs()?;
        let random = r.load_balance()?;
        let tls = Tls::new(&r.params, home.as_deref()).map_err(|e| r.bad_conf(e, "sslmode"))?;
        Ok(DbConfig {
            base,
            endpoints,
            tls: Arc::new(tls),
            attrs,
            random,
            passfile: r
                .get("passfile")
                .map(PathBuf::from)
                .or_else(|| home.map(|h| PathBuf::from(h).join(".pgpass"))),
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
            .map(|e| match &e.host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
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
    pub(super) fn password(&self) -> Option<&[u8]> {
        self.base.get_password()
    }
}

/// A connection string that did not parse, named by where it was given.
fn bad_string(source: &str, e: ConfError) -> DbError {
    DbError::BadConninfo {
        source: source.into(),
        reason: e.reason,
    }
}

/// Settings after precedence, with the name of the place each came from.
struct Resolved {
    params: Params,
    origin: BTreeMap<String, String>,
}

impl Resolved {
    /// `explicit` from `source`, then the service, then the environment.
    fn layer(
        explicit: &Params,
        source: &str,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Resolved, DbError> {
        let mut r = Resolved {
            origin: explicit
                .keys()
                .map(|k| (k.clone(), source.to_string()))
                .collect(),
            params: explicit.clone(),
        };
        let service = match r.get("service") {
            Some(s) => Some(s.to_string()),
            None => env("PGSERVICE").filter(|s| !s.is_empty()),
        };
        if let Some(name) = service {
            r.add_service(&name, env)?;
        }
        r.add_environment(env);
        Ok(r)
    }

    /// Fills what is unset from the service `name`.
    fn add_service(
        &mut self,
        name: &str,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<(), DbError> {
        let place = format!("service {name:?}");
        let before: Vec<String> = self.params.keys().cloned().collect();
        service::apply(&mut self.params, name, env).map_err(|e| bad_string(&place, e))?;
        for k in self.params.keys() {
            if !before.contains(k) {
                self.origin.insert(k.clone(), place.clone());
            }
        }
        Ok(())
    }

    /// Fills what is still unset from the `PG*` variables.
    fn add_environment(&mut self, env: &impl Fn(&str) -> Option<String>) {
        for (key, var) in ENV {
            if !self.params.contains_key(*key)
                && let Some(v) = env(var).filter(|v| !v.is_empty())
            {
                self.params.insert(key.to_string(), v);
                self.origin.insert(key.to_string(), var.to_string());
            }
        }
    }

    /// One warning per keyword pgbootfs accepts but cannot honour.
    fn warn_ignored(&self) {
        for (key, _) in IGNORED {
            if let Some(v) = self.get(key) {
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
    }

    /// Where each setting came from helps an operator; the password never shows.
    fn log(&self) {
        let places: BTreeSet<&String> = self.origin.values().collect();
        log::debug!(
            "connection settings from {}: {}",
            places
                .into_iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", "),
            conninfo::redacted(&self.params)
        );
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.params
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The error for a wrong `key`, naming where that key was set.
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

    /// [`Resolved::bad`] for a typed error; one that names no key is blamed on
    /// `fallback`.
    fn bad_conf(&self, e: ConfError, fallback: &str) -> DbError {
        self.bad(e.key.as_deref().unwrap_or(fallback), e.reason)
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

    /// A comma-separated keyword's values.
    fn list(&self, key: &str) -> Vec<String> {
        self.params
            .get(key)
            .filter(|v| !v.is_empty())
            .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
            .unwrap_or_default()
    }

    /// Hosts, addresses and ports, matched up as libpq does.
    fn endpoints(&self) -> Result<Vec<Endpoint>, DbError> {
        let mut hosts = self.list("host");
        let addrs = self.list("hostaddr");
        if hosts.is_empty() && addrs.is_empty() {
            hosts.push(default_host());
        }
        if !hosts.is_empty() && !addrs.is_empty() && hosts.len() != addrs.len() {
            return Err(self.bad(
                "hostaddr",
                format!(
                    "could not match {} host names to {} hostaddr values",
                    hosts.len(),
                    addrs.len()
                ),
            ));
        }
        let n = hosts.len().max(addrs.len());
        let ports = self.list("port");
        if ports.len() > 1 && ports.len() != n {
            return Err(self.bad(
                "port",
                format!("could not match {} port numbers to {n} hosts", ports.len()),
            ));
        }
        let pick = |v: &[String], i: usize| v.get(i).cloned().unwrap_or_default();
        (0..n)
            .map(|i| {
                let port = ports.get(i).or(ports.first()).cloned().unwrap_or_default();
                self.endpoint(&pick(&hosts, i), &pick(&addrs, i), &port)
            })
            .collect()
    }

    /// One host (empty: none given), its address (empty: resolve the name) and
    /// port (empty: 5432).
    fn endpoint(&self, host: &str, addr: &str, port: &str) -> Result<Endpoint, DbError> {
        let port = match port {
            "" => 5432,
            p => p
                .parse::<u16>()
                .map_err(|_| self.bad("port", format!("invalid port number: \"{p}\"")))?,
        };
        let hostaddr = match addr {
            "" => None,
            a => Some(a.parse::<IpAddr>().map_err(|_| {
                self.bad(
                    "hostaddr",
                    format!("could not parse network address \"{a}\""),
                )
            })?),
        };
        let host = match (host, hostaddr) {
            (h, _) if !h.is_empty() => host_of(h.to_string()),
            (_, Some(a)) => Host::Tcp(a.to_string()),
            (_, None) => host_of(default_host()),
        };
        Ok(Endpoint {
            host,
            hostaddr,
            port,
        })
    }

    /// The settings every attempt shares: who, which database, timeouts and
    /// keepalives, channel binding and TLS negotiation.
    fn base_config(&self) -> Result<Config, DbError> {
        let mut base = Config::new();
        let user = self
            .get("user")
            .map(str::to_string)
            .or_else(crate::passwd::name)
            .unwrap_or_else(|| "postgres".to_string());
        base.user(&user);
        base.dbname(self.get("dbname").unwrap_or(&user));
        if let Some(pw) = self.params.get("password") {
            base.password(pw.as_bytes());
        }
        if let Some(o) = self.get("options") {
            base.options(o);
        }
        self.timeouts(&mut base)?;
        self.negotiation(&mut base)?;
        Ok(base)
    }

    /// `connect_timeout`, keepalives and `tcp_user_timeout`, with pgbootfs's
    /// defaults where libpq has none that suit a daemon.
    fn timeouts(&self, base: &mut Config) -> Result<(), DbError> {
        // libpq: 0 (or unset) waits forever, and less than 2 s counts as 2 s.
        let timeout = self
            .seconds("connect_timeout")?
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        if timeout > 0 {
            base.connect_timeout(Duration::from_secs(timeout.max(2)));
        }
        base.keepalives(self.get("keepalives") != Some("0"));
        let idle = self.seconds("keepalives_idle")?;
        base.keepalives_idle(Duration::from_secs(
            idle.unwrap_or(DEFAULT_KEEPALIVES_IDLE).max(1),
        ));
        let interval = self.seconds("keepalives_interval")?;
        base.keepalives_interval(Duration::from_secs(
            interval.unwrap_or(DEFAULT_KEEPALIVES_INTERVAL).max(1),
        ));
        let count = self.seconds("keepalives_count")?.map(|c| c as u32);
        base.keepalives_retries(count.unwrap_or(DEFAULT_KEEPALIVES_COUNT).max(1));
        // 0 means the system default, as in libpq.
        let user_timeout = self
            .seconds("tcp_user_timeout")?
            .unwrap_or(DEFAULT_TCP_USER_TIMEOUT_MS);
        if user_timeout > 0 {
            base.tcp_user_timeout(Duration::from_millis(user_timeout));
        }
        Ok(())
    }

    /// `channel_binding` and `sslnegotiation`.
    fn negotiation(&self, base: &mut Config) -> Result<(), DbError> {
        if let Some(cb) = self.get("channel_binding") {
            base.channel_binding(match cb {
                "disable" => ChannelBinding::Disable,
                "prefer" => ChannelBinding::Prefer,
                "require" => ChannelBinding::Require,
                v => return Err(self.bad("channel_binding", format!("invalid value \"{v}\""))),
            });
        }
        if let Some(n) = self.get("sslnegotiation") {
            base.ssl_negotiation(match n {
                "postgres" => SslNegotiation::Postgres,
                "direct" => SslNegotiation::Direct,
                v => return Err(self.bad("sslnegotiation", format!("invalid value \"{v}\""))),
            });
        }
        Ok(())
    }

    fn session_attrs(&self) -> Result<SessionAttrs, DbError> {
        match self.get("target_session_attrs") {
            None => Ok(SessionAttrs::Any),
            Some(v) => SessionAttrs::parse(v).ok_or_else(|| {
                self.bad(
                    "target_session_attrs",
                    format!("invalid target_session_attrs value: \"{v}\""),
                )
            }),
        }
    }

    /// Whether `load_balance_hosts=random`.
    fn load_balance(&self) -> Result<bool, DbError> {
        match self.get("load_balance_hosts") {
            None | Some("disable") => Ok(false),
            Some("random") => Ok(true),
            Some(v) => Err(self.bad(
                "load_balance_hosts",
                format!("invalid load_balance_hosts value: \"{v}\""),
            )),
        }
    }
}

/// A socket directory (a leading `/`) or a host name.
fn host_of(h: String) -> Host {
    if h.starts_with('/') {
        Host::Unix(PathBuf::from(h))
    } else {
        Host::Tcp(h)
    }
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
#[path = "config_tests.rs"]
mod tests;
