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
                None if e.is_closed() => ErrorClass::Unavailable,
                _ => ErrorClass::Broken,
            },
            HandleErrorKind::Stream(_) => ErrorClass::Unavailable,
            HandleErrorKind::Truncated { .. } | HandleErrorKind::Changed => ErrorClass::Gone,
            HandleErrorKind::Failed | HandleErrorKind::Thread(_) => ErrorClass::Broken,
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
            HandleErrorKind::Stream(e) => format!("database error while streaming: {e}"),
            HandleErrorKind::Truncated { expected, actual } => {
                format!("large object holds {actual} bytes but the catalog says {expected}")
            }
            HandleErrorKind::Changed => {
                "no row names the large object with this sha256 any more: it was replaced".into()
            }
            HandleErrorKind::Failed => "the file was closed".to_string(),
            HandleErrorKind::Thread(e) => format!("read-ahead thread: {e}"),
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
            _ => None,
        }
    }
}
