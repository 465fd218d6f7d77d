//! Setting a handle up, and setting it up again after its connection was lost: a
//! server restart (`pg_ctl restart -m fast`), a failover, a dropped network path,
//! or on a hot standby a conflict with recovery, which terminates a session that
//! sits in a transaction while replay needs what its snapshot pins.
//!
//! A lost connection is a pause for the reader, not an error: the handle gets a
//! fresh connection from the pool (which chooses the host), begins a new
//! `REPEATABLE READ READ ONLY` snapshot, checks that the object is still the
//! content it was opened on, and goes on at the same offset. The check is the
//! same as at the first set-up: the object is there and at least as large as the
//! catalog says, and where MAAS rows name it, one has the same sha256 and total
//! size. That is enough because MAAS writes a large object once and never
//! changes it in place: same oid, same row, same bytes. Content that changed or
//! went fails at once (EIO, never other bytes); a server that stays away fails
//! once `--reconnect-timeout` has passed since the outage began.

use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use super::error::{ErrorClass, HandleError, HandleErrorKind};
use super::pool::HandlePool;
use super::source::{ByteSource, Session};

/// First pause between reconnection attempts; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(50);

/// Longest pause between attempts: a server back after a restart (about 1 s here)
/// is found within this.
const MAX_PAUSE: Duration = Duration::from_millis(500);

/// Longest one attempt waits for a pooled connection, so a stop request (the file
/// closed, the stream no longer wanted) is seen soon.
const ATTEMPT_WAIT: Duration = Duration::from_secs(1);

/// What a handle reads: the content, where its bytes come from, and the pool
/// whose limits and outage record apply.
pub(crate) struct Target {
    pub(crate) pool: HandlePool,
    pub(crate) source: Arc<dyn ByteSource>,
    pub(crate) size: u64,
    pub(crate) sha256: String,
    /// The image path, for messages.
    pub(crate) path: String,
}

impl Target {
    pub(crate) fn error(&self, kind: HandleErrorKind) -> HandleError {
        HandleError {
            path: self.path.clone(),
            kind,
        }
    }

    /// One set-up: a session on the content (waiting at most `wait` for a pooled
    /// connection where the source needs one), with the content check.
    pub(crate) fn begin(&self, wait: Duration) -> Result<Box<dyn Session>, HandleError> {
        let session = self.source.open(wait).map_err(|k| self.error(k))?;
        self.pool.outage_over();
        Ok(session)
    }

    /// After `err` lost the connection of a reader at byte `at`: sets up again, with
    /// back-off, until a set-up works (the new connection comes back, inside a new
    /// snapshot of the same content), the content is found changed or gone (that
    /// error, at once), `stop()` says so, or `--reconnect-timeout` has passed since
    /// `lost` or since the outage began if earlier ([`HandleErrorKind::Lost`]).
    pub(crate) fn resume(
        &self,
        err: HandleError,
        at: u64,
        lost: Instant,
        stop: &dyn Fn() -> bool,
    ) -> Result<Box<dyn Session>, HandleError> {
        let timeout = self.pool.reconnect_timeout();
        let since = self.pool.outage_seen().min(lost);
        let deadline = since + timeout;
        if Instant::now() < deadline {
            warn!(
                "{}: connection lost at byte {at} ({}); reconnecting for up to {:.0}s",
                self.path,
                err.reason(),
                deadline
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64()
            );
        }
        let mut last = err;
        let mut pause = FIRST_PAUSE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || stop() {
                return Err(self.error(HandleErrorKind::Lost {
                    waited: since.elapsed(),
                    cause: Box::new(last),
                }));
            }
            match self.begin(left.min(ATTEMPT_WAIT)) {
                Ok(conn) => {
                    info!(
                        "{}: reconnected, reading on at byte {at} after {:.1}s",
                        self.path,
                        lost.elapsed().as_secs_f64()
                    );
                    return Ok(conn);
                }
                // A busy pool is expected while every reader reconnects at once.
                Err(e) if e.resumable() || e.class() == ErrorClass::Busy => {
                    debug!("{}: reconnecting: {}", self.path, e.reason());
                    self.pool.outage_seen();
                    last = e;
                }
                Err(e) => {
                    warn!(
                        "{}: after reconnecting, the content is not what was opened: {}",
                        self.path,
                        e.reason()
                    );
                    return Err(e);
                }
            }
            pause_unless(stop, pause.min(left));
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }
}

/// Sleeps for `d`, waking early when `stop()` says so.
fn pause_unless(stop: &dyn Fn() -> bool, d: Duration) {
    let end = Instant::now() + d;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() || stop() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}
