//! What can go wrong in finding or reaching the database, and the words for it.
//! Nothing here ever carries a password.

use std::fmt;

/// A wrong connection setting, found while reading a conninfo, a service file or
/// the TLS settings: which keyword holds it (when one does) and what is wrong.
/// The caller knows where the keyword came from (`--db`, `PGSSLMODE`, a service)
/// and names that place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfError {
    /// The libpq keyword at fault; None when the text as a whole is (a URL that is
    /// not UTF-8, OpenSSL that cannot start).
    pub key: Option<String>,
    /// What is wrong, in the words libpq uses where it has some.
    pub reason: String,
}

impl ConfError {
    /// An error in the setting `key`.
    pub fn at(key: impl Into<String>, reason: impl Into<String>) -> ConfError {
        ConfError {
            key: Some(key.into()),
            reason: reason.into(),
        }
    }

    /// An error that belongs to no one keyword.
    pub fn general(reason: impl Into<String>) -> ConfError {
        ConfError {
            key: None,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for ConfError {}

/// An error in finding or reaching the database. Never carries a password.
#[derive(Debug)]
pub enum DbError {
    /// A connection setting is wrong.
    BadConninfo {
        /// Which setting held it (`--db`, `PGPORT`, `service maas`, ...).
        source: String,
        /// What is wrong.
        reason: String,
    },
    /// The server could not be reached or refused us.
    Connect {
        /// host, port, database and user, without the password.
        target: String,
        /// Why, per host tried, in plain words.
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
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbError::BadConninfo { source, reason } => {
                write!(f, "invalid connection setting in {source}: {reason}")
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

    /// Why, without the "cannot connect to ..." preamble: for logs that name the
    /// target themselves.
    pub fn reason(&self) -> String {
        match self {
            DbError::Connect { reason, .. } => reason.clone(),
            e => e.to_string(),
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
