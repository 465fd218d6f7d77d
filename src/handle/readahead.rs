//! Read-ahead: a thread that owns its handle's session while the reader is
//! sequential and streams the content into the shared chunk cache in windows
//! that grow from 4 to 32 MiB, each one request to the source
//! ([`Session::window`]: one `COPY` statement for a large object, which avoids a
//! round trip per chunk), and a bounded window bounds what a seek wastes. How far it runs ahead of
//! its readers is the cache's decision: each window is no larger than the room
//! the cache gives it when it starts ([`Content::room_for`]), so a paused reader
//! leaves the backend idle between statements, not blocked in one.
//!
//! When its connection is lost the stream sets up again by itself (see
//! [`super::resume`]) and goes on from the last chunk it delivered; its front
//! stays in the cache meanwhile, so its readers wait for it rather than each
//! reconnecting on its own.

use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use log::debug;

use super::cache::{CHUNK, Content, StreamClaim};
use super::error::HandleErrorKind;
use super::resume::Target;
use super::source::Session;

const FIRST_WINDOW: u64 = 4 << 20;
const MAX_WINDOW: u64 = 32 << 20;

/// How a stream ended: with the session still open (stopped early), with the
/// session ended (it delivered the last byte), stopped while it was reconnecting
/// (no session), or failed.
pub(crate) enum Outcome {
    Stopped(Box<dyn Session>),
    Finished,
    Lost,
    Failed(HandleErrorKind),
}

/// A running read-ahead thread.
pub(crate) struct Readahead {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Outcome>>,
}

impl Readahead {
    /// Streams the content of `target` from chunk-aligned `from` into `content`
    /// as the stream of `claim`, on the handle's session.
    pub(crate) fn start(
        conn: Box<dyn Session>,
        content: Content,
        claim: StreamClaim,
        target: Arc<Target>,
        from: u64,
    ) -> std::io::Result<Readahead> {
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            size: target.size,
            target,
            claim,
            stop: stop.clone(),
            content,
        };
        let thread = std::thread::Builder::new()
            .name("read-ahead".into())
            .spawn(move || worker.run(conn, from))?;
        Ok(Readahead {
            stop,
            thread: Some(thread),
        })
    }

    /// True once the thread has ended (delivered everything, failed or stopped).
    pub(crate) fn ended(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops the thread and says how it ended; a stopped stream gives back the
    /// connection still in its transaction (the rest of the current window is
    /// drained by the next statement).
    pub(crate) fn stop(mut self, content: &Content) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        content.wake();
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(outcome)) => outcome,
            Some(Err(_)) => Outcome::Failed(HandleErrorKind::Thread("panicked".into())),
            None => Outcome::Failed(HandleErrorKind::Failed),
        }
    }
}

impl Drop for Readahead {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Worker {
    size: u64,
    target: Arc<Target>,
    /// The stream's place in the cache: its front goes when the worker does,
    /// however it ends (a panic too).
    claim: StreamClaim,
    stop: Arc<AtomicBool>,
    content: Content,
}

impl Worker {
    fn run(self, mut conn: Box<dyn Session>, from: u64) -> Outcome {
        let from = from - from % CHUNK;
        let mut pos = from;
        let mut window = FIRST_WINDOW;
        let mut failed = None;
        // When the connection was lost, while it is being restored.
        let mut lost = None;
        while pos < self.size {
            let Some(granted) =
                self.content
                    .room_for(self.claim.id(), window.min(self.size - pos), &|| {
                        self.stopped()
                    })
            else {
                break;
            };
            // Windows end on chunk boundaries (or at the end), so chunks stay aligned.
            let end = if pos + granted >= self.size {
                self.size
            } else {
                ((pos + granted) / CHUNK * CHUNK)
                    .max(pos + CHUNK)
                    .min(self.size)
            };
            let mut done = pos;
            match self.copy_window(conn.as_mut(), pos, end, &mut done) {
                Ok(true) => lost = None,
                Ok(false) => break,
                Err(kind) => {
                    let err = self.target.error(kind);
                    if !err.resumable() {
                        failed = Some(err.kind);
                        break;
                    }
                    // Goes on after the last chunk delivered, in a new snapshot of
                    // the same content; the dead connection is discarded by the pool.
                    let at = *lost.get_or_insert_with(Instant::now);
                    match self.target.resume(err, done, at, &|| self.stopped()) {
                        Ok(c) => conn = c,
                        Err(_) if self.stopped() => return Outcome::Lost,
                        Err(e) => {
                            failed = Some(e.kind);
                            pos = done;
                            break;
                        }
                    }
                    pos = done;
                    continue;
                }
            }
            pos = end;
            window = (window * 2).min(MAX_WINDOW);
        }
        debug!(
            "{}: read-ahead of {} ended at {pos}",
            self.target.path,
            self.target.source.describe()
        );
        if let Some(kind) = failed {
            return Outcome::Failed(kind);
        }
        if pos >= self.size {
            // Every byte is delivered: the snapshot is no longer needed.
            conn.end();
            return Outcome::Finished;
        }
        Outcome::Stopped(conn)
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Streams `pos..end` into the cache; false when told to stop. `done` follows
    /// the end of what was delivered, for a resume after a failure.
    fn copy_window(
        &self,
        session: &mut dyn Session,
        pos: u64,
        end: u64,
        done: &mut u64,
    ) -> Result<bool, HandleErrorKind> {
        let mut r = session.window(pos, end)?;
        let io = HandleErrorKind::Stream;
        let mut at = pos;
        let mut cur: Option<(u64, Vec<u8>)> = None;
        while at < end {
            // Bytes go straight from the source's buffer into chunk buffers.
            let buf = r.fill_buf().map_err(io)?;
            if buf.is_empty() {
                break;
            }
            let (start, data) = cur.get_or_insert_with(|| (at, self.content.buffer()));
            let boundary = ((*start / CHUNK + 1) * CHUNK).min(end);
            let n = (buf.len() as u64).min(boundary - at) as usize;
            data.extend_from_slice(&buf[..n]);
            r.consume(n);
            at += n as u64;
            if at == boundary {
                if !self.send(cur.take()) {
                    return Ok(false);
                }
                *done = boundary;
                if self.stopped() {
                    return Ok(false);
                }
            }
        }
        if at != end {
            return Err(HandleErrorKind::Truncated {
                expected: end,
                actual: at,
            });
        }
        // A window the source cut short of `end` was caught above; one that ends
        // exactly there has delivered every chunk.
        Ok(true)
    }

    /// Delivers a chunk; false when told to stop. It never waits for room: the
    /// window was sized to the room there was when it started, and waiting in the
    /// middle of a statement would leave the backend blocked writing to us (a
    /// second stream starting meanwhile shrinks every stream's share, so this may
    /// overshoot by up to one window).
    fn send(&self, chunk: Option<(u64, Vec<u8>)>) -> bool {
        let Some((start, data)) = chunk else {
            return true;
        };
        if self.stopped() {
            return false;
        }
        self.content.deliver(self.claim.id(), start, Arc::new(data));
        true
    }
}
