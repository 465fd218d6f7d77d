//! The handle layer's error: what went wrong on which image, with the driver's
//! error kept as the source so its SQLSTATE stays reachable, and one
//! classification that each front end maps once (errno, HTTP status).

use std::fmt;
use std::time::Duration;

use crate::db::describe_pg_error;

/// What a caller can do about an error: the one thing front ends decide on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Every connection is in use: retrying later will likely work (EAGAIN, 503).
    Busy,
    /// The database cannot be reached now (EIO, 503).
    Unavailable,
    /// The content is no longer in the database, or differs from the catalog (EIO, 500).
    Gone,
    /// Anything else: a bug, a broken connection, a failed handle (EIO, 500).
    Broken,
}

/// An error on a handle. Display names the image path.
#[derive(Debug)]
pub struct HandleError {
    /// The image path, for the message.
    pub path: String,
    /// What went wrong.
    pub kind: HandleErrorKind,
}

/// What went wrong on a handle.
#[derive(Debug)]
pub enum HandleErrorKind {
    /// Every handle connection is in use and none came free in time.
    PoolExhausted(Duration),
    /// The database could not be reached; the reason as r2d2 or the driver gave it.
    Connect(String),
    /// A statement failed; the driver's error is kept (`code()` gives the SQLSTATE).
    Db(postgres::Error),
    /// Reading the COPY stream failed mid-way.
    Stream(std::io::Error),
    /// The large object is shorter than the catalog says.
    Truncated {
        /// Bytes the catalog promises.
        expected: u64,
        /// Bytes the large object holds.
        actual: u64,
    },
    /// No row names the large object with the sha256 this handle was opened on
    /// any more: its content was replaced.
    Changed,
    /// The handle was closed.
    Failed,
    /// A thread could not be started or died.
    Thread(String),
    /// The connection was lost and no new one could be set up within
    /// `--reconnect-timeout`; `cause` is the last attempt's error.
    Lost {
        /// How long the handle tried.
        waited: Duration,
        /// Why the last attempt failed.
        cause: Box<HandleError>,
    },
    /// MAAS 3.5+: the image storage file could not be opened or read, or is not
    /// the size its row says (`file` names it).
    Storage {
        /// The file in the image storage.
        file: std::path::PathBuf,
        /// What the system said.
        err: std::io::Error,
    },
}

impl ErrorClass {
    /// The class as a word, for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            ErrorClass::Busy => "busy",
            ErrorClass::Unavailable => "unavailable",
            ErrorClass::Gone => "gone",
            ErrorClass::Broken => "broken",
        }
    }
}

impl HandleError {
    /// How a front end should treat this error.
    pub fn class(&self) -> ErrorClass {
        use postgres::error::SqlState;
        match &self.kind {
            HandleErrorKind::PoolExhausted(_) => ErrorClass::Busy,
            HandleErrorKind::Connect(_) => ErrorClass::Unavailable,
            HandleErrorKind::Db(e) => match e.code() {
                // 42704: the large object does not exist; 42501: no permission.
                Some(c) if *c == SqlState::UNDEFINED_OBJECT => ErrorClass::Gone,
                Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => ErrorClass::Broken,
                // Class 57 (operator intervention: shutdown, recovery conflict) and
                // 08 (connection exceptions): the server went away under us.
                Some(c) if c.code().starts_with("57") || c.code().starts_with("08") => {
                    ErrorClass::Unavailable
                }
                // A read-only snapshot cannot fail to serialize: on a standby this
                // is a conflict with recovery, and a new snapshot will do.
                Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE => ErrorClass::Unavailable,
                None if e.is_closed() || io_failure(e) => ErrorClass::Unavailable,
                _ => ErrorClass::Broken,
            },
            HandleErrorKind::Stream(_) | HandleErrorKind::Lost { .. } => ErrorClass::Unavailable,
            HandleErrorKind::Truncated { .. } | HandleErrorKind::Changed => ErrorClass::Gone,
            HandleErrorKind::Failed | HandleErrorKind::Thread(_) => ErrorClass::Broken,
            // Replaced or deleted by MAAS before it was opened: the catalog's next
            // refresh shows what is there now.
            HandleErrorKind::Storage { err, .. } if err.kind() == std::io::ErrorKind::NotFound => {
                ErrorClass::Gone
            }
            HandleErrorKind::Storage { .. } => ErrorClass::Broken,
        }
    }

    /// Did the handle lose its connection (or fail to get one) in a way that a new
    /// connection and snapshot may cure? True for a closed or broken connection, an
    /// unreachable server, SQLSTATE class 08, 57P01-57P03 (shutdown, crash, starting
    /// up) and 40001 (on a standby: a conflict with recovery); false for a busy
    /// pool, content that changed or is gone, and a handle that already gave up.
    pub fn resumable(&self) -> bool {
        use postgres::error::SqlState;
        match &self.kind {
            HandleErrorKind::Connect(_) | HandleErrorKind::Stream(_) => true,
            HandleErrorKind::Db(e) => match e.code() {
                Some(c) => {
                    c.code().starts_with("08")
                        || [
                            SqlState::ADMIN_SHUTDOWN,
                            SqlState::CRASH_SHUTDOWN,
                            SqlState::CANNOT_CONNECT_NOW,
                            SqlState::T_R_SERIALIZATION_FAILURE,
                        ]
                        .contains(c)
                }
                None => e.is_closed() || io_failure(e),
            },
            _ => false,
        }
    }

    /// The message without the path (for reports that already name it).
    pub fn reason(&self) -> String {
        match &self.kind {
            HandleErrorKind::PoolExhausted(t) => format!(
                "all handle connections busy for {}s (raise --max-handles or --pool-timeout)",
                t.as_secs()
            ),
            HandleErrorKind::Connect(e) => format!("cannot connect: {e}"),
            HandleErrorKind::Db(e) => format!("database error: {}", describe_pg_error(e)),
            HandleErrorKind::Stream(e) => {
                // The COPY reader wraps the driver's error in an io::Error.
                let why = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<postgres::Error>())
                    .map_or_else(|| e.to_string(), describe_pg_error);
                format!("database error while streaming: {why}")
            }
            HandleErrorKind::Truncated { expected, actual } => {
                format!("large object holds {actual} bytes but the catalog says {expected}")
            }
            HandleErrorKind::Changed => {
                "no row names the large object with this sha256 any more: it was replaced".into()
            }
            HandleErrorKind::Failed => "the file was closed".to_string(),
            HandleErrorKind::Thread(e) => format!("read-ahead thread: {e}"),
            HandleErrorKind::Lost { waited, cause } => format!(
                "connection lost and not restored within {}s (raise --reconnect-timeout): {}",
                waited.as_secs(),
                cause.reason()
            ),
            HandleErrorKind::Storage { file, err } => {
                format!("image storage file {}: {err}", file.display())
            }
        }
    }
}

impl fmt::Display for HandleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason())
    }
}

impl std::error::Error for HandleError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            HandleErrorKind::Db(e) => Some(e),
            HandleErrorKind::Stream(e) => Some(e),
            HandleErrorKind::Lost { cause, .. } => Some(cause.as_ref()),
            HandleErrorKind::Storage { err, .. } => Some(err),
            _ => None,
        }
    }
}

/// Did the driver fail on the socket (reset, broken pipe) rather than get an answer?
fn io_failure(e: &postgres::Error) -> bool {
    std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}
