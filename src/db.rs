//! Where the database is and how pgbootfs connects to it.
//!
//! The `postgres` crate reads no libpq environment, so this module does what libpq
//! would: `--db`, then `DATABASE_URL`, then `PGHOST`, `PGPORT`, `PGUSER`,
//! `PGPASSWORD` and `PGDATABASE`, with libpq's defaults for what is still missing.
//! Every description this module prints leaves the password out.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use postgres::config::Host;
use postgres::{Client, Config, NoTls};
use r2d2::{ManageConnection, Pool};
use r2d2_postgres::PostgresConnectionManager;

/// A resolved database location: a `postgres::Config` plus where it came from.
#[derive(Clone)]
pub struct DbConfig {
    config: Config,
    source: &'static str,
}

/// An error in finding or reaching the database. Never carries a password.
#[derive(Debug)]
pub enum DbError {
    /// The connection string could not be parsed.
    BadConninfo {
        /// Which setting held it (`--db`, `DATABASE_URL`, ...).
        source: &'static str,
        /// The parser's complaint.
        reason: String,
    },
    /// The server could not be reached or refused us.
    Connect {
        /// host, port, database and user, without the password.
        target: String,
        /// The driver's complaint, in plain words.
        reason: String,
        /// The driver's error, when the driver (not the pool) failed.
        source: Option<postgres::Error>,
    },
    /// A query failed on a connection that was otherwise fine.
    Query {
        /// What was being done.
        what: String,
        /// The driver's error (`code()` gives the SQLSTATE).
        source: postgres::Error,
    },
    /// The database lacks the MAAS image tables.
    NotAStore {
        /// host, port and database.
        target: String,
        /// The tables missing.
        missing: Vec<String>,
    },
    /// The database is MAAS 3.5 or later: images live on the region's disk.
    ImagesOnDisk {
        /// host, port and database.
        target: String,
    },
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbError::BadConninfo { source, reason } => {
                write!(f, "invalid connection string in {source}: {reason}")
            }
            DbError::Connect { target, reason, .. } => {
                write!(f, "cannot connect to PostgreSQL at {target}: {reason}")
            }
            DbError::Query { what, source } => write!(f, "{what}: {}", describe_pg_error(source)),
            DbError::NotAStore { target, missing } => write!(
                f,
                "database {target} is not a MAAS image store: missing table(s) {} \
                 (create them with `pgbootfs import`, or point --db at the MAAS region database)",
                missing.join(", ")
            ),
            DbError::ImagesOnDisk { target } => write!(
                f,
                "database {target} is a MAAS 3.5 or later region database: MAAS 3.5 keeps boot \
                 images on the region's disk (/var/lib/maas/image-storage), not in the database, \
                 so there is nothing to mount, serve or import here (pgbootfs supports MAAS 1.7-3.4)"
            ),
        }
    }
}

impl std::error::Error for DbError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DbError::Connect {
                source: Some(e), ..
            }
            | DbError::Query { source: e, .. } => Some(e),
            _ => None,
        }
    }
}

impl DbError {
    /// Wraps a driver error met while doing `what`.
    pub fn query(what: impl Into<String>, err: postgres::Error) -> DbError {
        DbError::Query {
            what: what.into(),
            source: err,
        }
    }

    /// A connection from a pool could not be had (r2d2 keeps only a message).
    pub fn pool(target: impl Into<String>, err: &r2d2::Error) -> DbError {
        DbError::Connect {
            target: target.into(),
            reason: err.to_string(),
            source: None,
        }
    }
}

/// Why a connection attempt failed, in the plainest words available.
pub fn connect_reason(err: &postgres::Error) -> String {
    // The driver's "error connecting to server: <io error>" is clearer unwrapped.
    match (err.as_db_error(), std::error::Error::source(err)) {
        (None, Some(src)) => src.to_string(),
        _ => describe_pg_error(err),
    }
}

/// The server's message for a database error, or the driver's for anything else.
pub fn describe_pg_error(err: &postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => db.message().to_string(),
        None => err.to_string(),
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
        let mut config = if text.trim().is_empty() {
            Config::new()
        } else {
            Config::from_str(&text).map_err(|e| DbError::BadConninfo {
                source,
                reason: e.to_string(),
            })?
        };
        // Fill what the string left out as libpq would.
        if config.get_hosts().is_empty() {
            let host = env("PGHOST")
                .filter(|h| !h.is_empty())
                .unwrap_or_else(default_host);
            for h in host.split(',') {
                config.host(h);
            }
        }
        if config.get_ports().is_empty()
            && let Some(port) = env("PGPORT").filter(|p| !p.is_empty())
        {
            let port: u16 = port.parse().map_err(|_| DbError::BadConninfo {
                source: "PGPORT",
                reason: format!("{port:?} is not a port number"),
            })?;
            config.port(port);
        }
        if config.get_user().is_none() {
            let user = env("PGUSER")
                .filter(|u| !u.is_empty())
                .or_else(os_user)
                .unwrap_or_else(|| "postgres".to_string());
            config.user(&user);
        }
        if config.get_password().is_none()
            && let Some(pw) = env("PGPASSWORD").filter(|p| !p.is_empty())
        {
            config.password(pw);
        }
        if config.get_dbname().is_none() {
            let db = env("PGDATABASE")
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| config.get_user().unwrap_or("postgres").to_string());
            config.dbname(&db);
        }
        if config.get_password().is_none()
            && let Some(pw) = password_from_file(&config, &env)
        {
            config.password(pw);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        Ok(DbConfig { config, source })
    }

    /// `host=… port=… dbname=… user=…`, never the password.
    pub fn describe(&self) -> String {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let ports: Vec<String> = self.config.get_ports().iter().map(u16::to_string).collect();
        format!(
            "host={} port={} dbname={} user={}",
            hosts.join(","),
            if ports.is_empty() {
                "5432".to_string()
            } else {
                ports.join(",")
            },
            self.config.get_dbname().unwrap_or("?"),
            self.config.get_user().unwrap_or("?"),
        )
    }

    /// Which setting the connection string came from.
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// The driver configuration, with `application_name` set to `app`.
    pub fn postgres_config(&self, app: &str) -> Config {
        let mut config = self.config.clone();
        config.application_name(app);
        config
    }

    /// Opens one plain connection, for commands that need a single session.
    pub fn connect(&self, app: &str) -> Result<Client, DbError> {
        self.postgres_config(app)
            .connect(NoTls)
            .map_err(|e| self.connect_error(e))
    }

    /// The error for a failed connection attempt, naming where we tried to go.
    pub fn connect_error(&self, err: postgres::Error) -> DbError {
        DbError::Connect {
            target: self.describe(),
            reason: connect_reason(&err),
            source: Some(err),
        }
    }

    /// A small pool for metadata queries (the catalog), separate from handles.
    pub fn metadata_pool(&self) -> Result<Pool<PostgresConnectionManager<NoTls>>, DbError> {
        let manager =
            PostgresConnectionManager::new(self.postgres_config("pgbootfs-catalog"), NoTls);
        // Connect once now so an unreachable server is reported at start, by name.
        let mut probe = manager.connect().map_err(|e| self.connect_error(e))?;
        manager
            .is_valid(&mut probe)
            .map_err(|e| self.connect_error(e))?;
        drop(probe);
        // The refresher logs failures itself, once a minute while they last: r2d2's
        // own handler would log every reconnection attempt.
        Ok(Pool::builder()
            .max_size(2)
            .min_idle(Some(0))
            .connection_timeout(Duration::from_secs(5))
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(manager))
    }
}

/// The password for `config`'s first host from the password file, as libpq reads
/// it: `PGPASSFILE`, else `~/.pgpass`; ignored unless only its owner can read it.
fn password_from_file(config: &Config, env: &impl Fn(&str) -> Option<String>) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let path = env("PGPASSFILE")
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| env("HOME").map(|h| std::path::Path::new(&h).join(".pgpass")))?;
    let meta = std::fs::metadata(&path).ok()?;
    if meta.permissions().mode() & 0o077 != 0 {
        log::warn!(
            "{} can be read by group or others, so it is ignored (as libpq does); \
             run chmod 0600 on it",
            path.display()
        );
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let host = match config.get_hosts().first()? {
        // libpq calls its default socket directory "localhost" in this file.
        Host::Unix(dir) if dir == std::path::Path::new("/var/run/postgresql") => {
            "localhost".to_string()
        }
        Host::Unix(dir) => dir.display().to_string(),
        Host::Tcp(name) => name.clone(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    pgpass_lookup(
        &text,
        &host,
        port,
        config.get_dbname().unwrap_or(""),
        config.get_user().unwrap_or(""),
    )
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

fn os_user() -> Option<String> {
    // SAFETY: getpwuid returns a pointer into static storage or null; we copy the
    // name out at once and do not keep the pointer.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() {
            return None;
        }
        let name = std::ffi::CStr::from_ptr((*pw).pw_name);
        Some(name.to_string_lossy().into_owned())
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
        assert_eq!(c.config.get_password(), Some(&b"pw"[..]));
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
            db.config.get_password().map(|p| p.to_vec())
        };
        assert_eq!(resolve(0o600), Some(b"s3cret".to_vec()));
        assert_eq!(
            resolve(0o644),
            None,
            "group- or world-readable file ignored"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
