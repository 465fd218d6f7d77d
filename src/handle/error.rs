//! The handle layer's error: what went wrong on which image, with the driver's
//! error kept as the source so its SQLSTATE stays reachable, and one
//! classification that each front end maps once (errno, HTTP status).

use std::fmt;
use std::time::Duration;

use postgres::error::SqlState;

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
    /// The server refused with `code`, as a source reported it without a driver
    /// error to keep (the fake source in tests; a source that is not libpq's).
    Server {
        /// The SQLSTATE.
        code: SqlState,
        /// The server's message.
        message: String,
    },
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

/// What an error means for a reader: how front ends treat it, and whether a new
/// connection and snapshot may cure it. [`verdict`] is the one table from a
/// SQLSTATE to this; every other kind is decided in [`HandleError::verdict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// How a front end should treat the error.
    pub class: ErrorClass,
    /// Whether setting up again (a new connection, a new snapshot of the same
    /// content) may cure it.
    pub resumable: bool,
}

impl Verdict {
    const fn new(class: ErrorClass, resumable: bool) -> Verdict {
        Verdict { class, resumable }
    }
}

/// The one table from what the server said to what a reader can do. `code` is the
/// SQLSTATE if the server answered with one; `link_failed` says the connection
/// itself failed (closed, reset) when it did not.
///
/// | SQLSTATE | meaning here | class | set up again? |
/// |---|---|---|---|
/// | class 08 | the connection failed | unavailable | yes |
/// | 57P01, 57P02, 57P03 | shut down, crashed, starting up | unavailable | yes |
/// | 57P05 | the server ended an idle session | unavailable | yes |
/// | 40001 | on a standby, a conflict with recovery | unavailable | yes |
/// | other class 57 (57014 cancelled, 57P04 database dropped) | an operator stopped it | unavailable | no |
/// | 42704 | the large object does not exist | gone | no |
/// | anything else (42501 no permission, ...) | a fault a retry cannot cure | broken | no |
/// | none, connection failed | lost on the socket | unavailable | yes |
pub fn verdict(code: Option<&SqlState>, link_failed: bool) -> Verdict {
    use ErrorClass::*;
    let Some(c) = code else {
        return Verdict::new(if link_failed { Unavailable } else { Broken }, link_failed);
    };
    let resumable = [
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::IDLE_SESSION_TIMEOUT,
        SqlState::T_R_SERIALIZATION_FAILURE,
    ];
    match c.code() {
        s if s.starts_with("08") => Verdict::new(Unavailable, true),
        _ if resumable.contains(c) => Verdict::new(Unavailable, true),
        s if s.starts_with("57") => Verdict::new(Unavailable, false),
        _ if *c == SqlState::UNDEFINED_OBJECT => Verdict::new(Gone, false),
        _ => Verdict::new(Broken, false),
    }
}

impl HandleError {
    /// What this error means for a reader (see [`verdict`] for database errors).
    pub fn verdict(&self) -> Verdict {
        use ErrorClass::*;
        match &self.kind {
            HandleErrorKind::PoolExhausted(_) => Verdict::new(Busy, false),
            HandleErrorKind::Connect(_) | HandleErrorKind::Stream(_) => {
                Verdict::new(Unavailable, true)
            }
            HandleErrorKind::Db(e) => verdict(e.code(), e.is_closed() || io_failure(e)),
            HandleErrorKind::Server { code, .. } => verdict(Some(code), false),
            // Already the end of a resume: not to be resumed again.
            HandleErrorKind::Lost { .. } => Verdict::new(Unavailable, false),
            HandleErrorKind::Truncated { .. } | HandleErrorKind::Changed => {
                Verdict::new(Gone, false)
            }
            HandleErrorKind::Failed | HandleErrorKind::Thread(_) => Verdict::new(Broken, false),
            // Replaced or deleted by MAAS before it was opened: the catalog's next
            // refresh shows what is there now.
            HandleErrorKind::Storage { err, .. } if err.kind() == std::io::ErrorKind::NotFound => {
                Verdict::new(Gone, false)
            }
            HandleErrorKind::Storage { .. } => Verdict::new(Broken, false),
        }
    }

    /// How a front end should treat this error.
    pub fn class(&self) -> ErrorClass {
        self.verdict().class
    }

    /// Did the handle lose its connection (or fail to get one) in a way that a new
    /// connection and snapshot may cure? See [`verdict`].
    pub fn resumable(&self) -> bool {
        self.verdict().resumable
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
            HandleErrorKind::Server { code, message } => {
                format!("database error: {message} (SQLSTATE {})", code.code())
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
