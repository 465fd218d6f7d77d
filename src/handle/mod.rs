//! One open image, and everything that reads image bytes; FUSE, HTTP and `verify`
//! all read through [`Handle`].
//!
//! The rule (from MAAS's 2014 fix): a handle that reads from the database does so
//! on a pooled connection inside a `REPEATABLE READ READ ONLY` transaction, never
//! the catalog's; the transaction ends before the connection goes back to the
//! pool. Before its first byte a handle takes its image's [`pin`]: one snapshot
//! per image, shared by its handles, so a handle first served from memory still
//! reads the content it started with after the image is replaced. Between those, bytes come from the [`cache`] shared by every
//! handle of the pool, keyed by sha256: content is identified by its sha256, so
//! bytes of that sha256 from any source are the snapshot's bytes.
//!
//! A handle holds its connection only while it needs it: it gives it back when it
//! has everything (its stream delivered the last byte), when it is closed, and
//! when its reader paused for the pool's `handle_idle` (see [`idle`]). The next
//! miss sets up again, with the same content check as the first time.
//!
//! Layout: [`source`] is the seam for where bytes come from, with [`lo`] (a
//! large object through the pool) and [`file`] (a verified local file) behind it
//! and a fault-injecting fake for tests; [`pool`] makes and lends connections;
//! [`cache`] holds chunks and decides who fetches what; [`disk`] keeps verified
//! whole images on disk (`--cache-dir`), and [`cached`] is a handle's side of it; [`readahead`] streams a sequential
//! reader's content into the cache; [`resume`] sets up again after a lost
//! connection; [`idle`] gives back paused handles' connections; [`error`]
//! classifies what goes wrong. Nothing here knows about FUSE or HTTP.
//!
//! Locks, always taken in this order: a handle's `state` (held across its own
//! database round trips: one handle is one reader, and its reads are serial
//! anyway), then the cache's state lock (never held across I/O), then the
//! cache's buffer list; a pin's state also comes after a handle's (never held
//! across I/O, nor together with the cache's locks), and the pins' map is taken
//! alone. `prepared` and the idle registry's lock are taken alone.
//! The idle sweeper only ever `try_lock`s a handle's state, so it never waits
//! behind a read.

pub mod cache;
mod cached;
pub mod disk;
pub mod error;
#[cfg(test)]
mod fake;
mod file;
mod idle;
mod lo;
mod pin;
pub mod pool;
mod readahead;
mod resume;
mod source;
mod storage;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use log::{debug, error};
use parking_lot::Mutex;

use crate::catalog::FileInfo;
use crate::metrics::Source;
use cache::{CHUNK, Content, Step};
pub use error::{ErrorClass, HandleError, HandleErrorKind};
use idle::Idle;
pub use lo::CopyFields;
use lo::LoSource;
use pin::Pin;
pub use pool::{HandlePool, PoolOptions, PoolStats};
use readahead::{Outcome, Readahead};
use resume::Target;
use source::{ByteSource, Session};

/// Size and alignment of the chunks readers are served from; the mount caps
/// kernel read requests at this size.
pub const READ_CHUNK: u64 = CHUNK;

/// A read at most this far past the handle's last one continues it: the kernel's
/// parallel read-ahead requests arrive slightly out of order.
const STREAM_SKIP: u64 = 16 << 20;

/// After a set-up found the pool busy, further set-ups of the handle fail at once
/// for this long.
const BUSY_GRACE: Duration = Duration::from_secs(1);

/// How long a reader waits on another's fetch before looking again.
const WAIT_STEP: Duration = Duration::from_millis(100);

/// One open image. Touches no database until a read needs bytes no reader of the
/// same content has brought into memory.
pub struct Handle {
    shared: Arc<Shared>,
}

struct Shared {
    /// The object, its content and the pool: shared with the read-ahead thread,
    /// which sets up again on its own when its connection is lost.
    target: Arc<Target>,
    content: Content,
    /// The cache key: the sha256, or sha256@oid where sharing is by object.
    key: String,
    size: u64,
    path: String,
    /// Set by close, checked by every read (also those from memory, which take no lock).
    closed: AtomicBool,
    /// The reader holds its image's snapshot (a [`pin`]) or reads the disk
    /// cache's file: from now on every byte is of the content it started with.
    /// Checked by every read, so reads from memory take no lock once it is set.
    pinned: AtomicBool,
    /// Set once the reader has had bytes (or HTTP has promised them): from then on
    /// a lost connection is a pause (see [`resume`]). A first read while the
    /// database is unreachable fails at once instead, as a new download should.
    started: AtomicBool,
    /// Milliseconds since `epoch` of the last read, for the idle sweeper.
    used: AtomicU64,
    /// Set by [`Handle::set_random`]: misses never start a read-ahead stream.
    random: AtomicBool,
    /// End of the last read: a miss just past it continues a sequential read.
    /// Outside the state lock, so a read from memory never waits for one that
    /// waits for the database.
    last_end: AtomicU64,
    epoch: Instant,
    state: Mutex<State>,
    /// The chunk `prepare` made ready and where it came from, for the metrics.
    prepared: Mutex<Option<(u64, Source)>>,
    /// MAAS 3.5+: the image storage file every read comes from, opened with the
    /// handle (see [`storage`]); no database is used then.
    storage: Option<storage::StorageFile>,
}

#[derive(Default)]
struct State {
    /// The session (for a large object: the connection, inside the handle's
    /// transaction) while no stream holds it.
    conn: Option<Box<dyn Session>>,
    /// Read-ahead on the handle's connection, feeding the shared cache.
    stream: Option<Readahead>,
    /// How many times the handle set up a transaction (the first, then after
    /// each release).
    setups: u32,
    /// A session on the disk cache's file of this content, once found there.
    disk: Option<Box<dyn Session>>,
    /// Whether this handle already tried to start filling the disk cache.
    fill_tried: bool,
    /// The image's snapshot, shared with its other readers (see [`pin`]).
    pin: Option<Arc<Pin>>,
    /// When a set-up last found every connection busy: the kernel follows a failed
    /// read-ahead with a read of its own, which must not wait out the pool
    /// timeout a second time.
    busy_at: Option<Instant>,
}

impl HandlePool {
    /// A handle on `file`, shown as `path` in messages.
    pub fn open(&self, file: &FileInfo, path: &str) -> Handle {
        self.open_as(file, path, false)
    }

    /// A handle whose reads do not count as another reader's in the chunk cache
    /// when `background` (the disk cache's filler reads along with the reader
    /// that started it; its reads alone should not keep chunks in memory).
    fn open_as(&self, file: &FileInfo, path: &str, background: bool) -> Handle {
        let key = if self.share_by_sha256 {
            file.sha256.clone()
        } else {
            format!("{}@{}", file.sha256, file.oid)
        };
        let source = Arc::new(LoSource {
            pool: self.clone(),
            oid: file.oid,
            size: file.size,
            sha256: file.sha256.clone(),
            path: path.to_string(),
        });
        self.open_source(source, key, file, path, background)
    }

    /// A handle on the content `file` names, whose bytes come from `source`,
    /// shared in the chunk cache under `key`.
    fn open_source(
        &self,
        source: Arc<dyn ByteSource>,
        key: String,
        file: &FileInfo,
        path: &str,
        background: bool,
    ) -> Handle {
        let shared = Arc::new(Shared {
            target: Arc::new(Target {
                pool: self.clone(),
                source,
                size: file.size,
                sha256: file.sha256.clone(),
                path: path.to_string(),
            }),
            content: self.cache.content(&key, file.size, background),
            key,
            size: file.size,
            path: path.to_string(),
            closed: AtomicBool::new(false),
            pinned: AtomicBool::new(false),
            started: AtomicBool::new(false),
            random: AtomicBool::new(false),
            used: AtomicU64::new(0),
            last_end: AtomicU64::new(0),
            epoch: Instant::now(),
            state: Mutex::new(State::default()),
            prepared: Mutex::new(None),
            storage: file
                .stored
                .as_deref()
                .map(|p| storage::StorageFile::open(p, file.size)),
        });
        // On the mount a reader's first bytes may come from the kernel's page
        // cache and never reach us: a file opened while its image's snapshot is
        // held joins it now, which needs no connection.
        if let Some(pin) = self.pins.existing(&shared.key) {
            shared.state.lock().pin = Some(pin);
            shared.pinned.store(true, Ordering::Release);
        }
        let weak: std::sync::Weak<dyn Idle> = Arc::downgrade(&shared) as _;
        self.watch(weak);
        Handle { shared }
    }
}

impl Handle {
    /// The image path this handle reads.
    pub fn path(&self) -> &str {
        &self.shared.path
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.shared.size
    }

    /// Makes sure the bytes at `offset` can be had, from memory or the database
    /// (setting up the handle if they must come from there): lets a caller fail
    /// before it has promised anything, as HTTP does before its headers.
    pub fn prepare(&self, offset: u64) -> Result<(), HandleError> {
        if let Some(s) = &self.shared.storage {
            return s.file().map(|_| ()).map_err(|k| self.shared.error(k));
        }
        if offset >= self.shared.size {
            return Ok(());
        }
        let idx = offset / CHUNK;
        let (_, source) = self.shared.chunk(idx)?;
        // The read that follows finds this chunk in memory: it came from `source`.
        *self.shared.prepared.lock() = Some((idx, source));
        self.shared.started.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Marks this handle's reads as scattered (an index walked, such as a
    /// squashfs's metadata): a miss fetches its own chunk and never starts a
    /// read-ahead stream, which would read megabytes past each small read.
    pub fn set_random(&self) {
        self.shared.random.store(true, Ordering::Relaxed);
    }

    /// Is this handle holding a database connection now?
    pub fn holds_connection(&self) -> bool {
        let st = self.shared.state.lock();
        st.conn.is_some() || st.stream.as_ref().is_some_and(|s| !s.ended())
    }

    /// Calls `f` with the bytes at `offset..offset+len` (fewer at the end of the file).
    pub fn read_with<R>(
        &self,
        offset: u64,
        len: usize,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, HandleError> {
        self.read_span(offset, len, true, f)
    }

    /// [`Handle::read_with`], counting the bytes as served (to a reader) or not
    /// (the disk cache's own fill).
    fn read_span<R>(
        &self,
        offset: u64,
        len: usize,
        served: bool,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, HandleError> {
        let sh = &self.shared;
        let Some((first, last, end)) = sh.span(offset, len) else {
            return Ok(f(&[]));
        };
        if let Some(s) = &sh.storage {
            if sh.closed.load(Ordering::Relaxed) {
                return Err(sh.error(HandleErrorKind::Failed));
            }
            let r = s.read(offset, end, f).map_err(|k| sh.error(k))?;
            if served {
                crate::metrics::served(Source::Disk, end - offset);
            }
            sh.touch();
            return Ok(r);
        }
        let (chunks, sources): (Vec<_>, Vec<_>) = (first..=last)
            .map(|i| sh.chunk(i))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .unzip();
        if served {
            let prepared = sh.prepared.lock().take();
            for (i, mut source) in (first..=last).zip(sources) {
                if let Some((idx, s)) = prepared
                    && idx == i
                    && source == Source::Memory
                {
                    source = s;
                }
                let part = end.min((i + 1) * CHUNK) - offset.max(i * CHUNK);
                crate::metrics::served(source, part);
            }
        }
        Ok(sh.serve(&chunks, offset, end, f))
    }

    /// Calls `f` with the bytes at `offset..offset+len` only if every one of them is
    /// in memory now; None (and `f` not called) if any would need the database.
    pub fn read_cached<R>(&self, offset: u64, len: usize, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let sh = &self.shared;
        let Some((first, last, end)) = sh.span(offset, len) else {
            return Some(f(&[]));
        };
        // A storage file is read on the caller's read threads, never here; a
        // reader without its snapshot yet takes it on a read thread first.
        if sh.closed.load(Ordering::Relaxed)
            || sh.storage.is_some()
            || !sh.pinned.load(Ordering::Acquire)
        {
            return None;
        }
        let chunks = (first..=last)
            .map(|i| sh.content.get(i))
            .collect::<Option<Vec<_>>>()?;
        crate::metrics::served(Source::Memory, end - offset);
        Some(sh.serve(&chunks, offset, end, f))
    }

    /// Copies the bytes at `offset` into `buf`; returns how many (0 at the end).
    pub fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<usize, HandleError> {
        self.read_with(offset, buf.len(), |bytes| {
            buf[..bytes.len()].copy_from_slice(bytes);
            bytes.len()
        })
    }

    /// Ends the transaction and gives the connection back, and lets go of the
    /// image's snapshot. Idempotent; later reads fail.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        let mut st = self.shared.state.lock();
        self.shared.release(&mut st);
        self.shared.unpin(&mut st);
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.close();
    }
}

impl Shared {
    /// The chunks `offset..offset+len` falls in, and where it ends (at the file's
    /// end at the latest); None for an empty range.
    fn span(&self, offset: u64, len: usize) -> Option<(u64, u64, u64)> {
        let end = offset.saturating_add(len as u64).min(self.size);
        (offset < end).then(|| (offset / CHUNK, (end - 1) / CHUNK, end))
    }

    /// Calls `f` with `offset..end` out of `chunks` (consecutive, the first holding
    /// `offset`): straight from the shared buffer when one chunk holds it all.
    fn serve<R>(
        &self,
        chunks: &[Arc<Vec<u8>>],
        offset: u64,
        end: u64,
        f: impl FnOnce(&[u8]) -> R,
    ) -> R {
        self.touch();
        self.started.store(true, Ordering::Relaxed);
        let at = (offset % CHUNK) as usize;
        let len = (end - offset) as usize;
        let r = if let [one] = chunks {
            f(&one[at..at + len])
        } else {
            // A request across a chunk boundary: only its own bytes are copied.
            let mut out = Vec::with_capacity(len);
            let mut skip = at;
            for c in chunks {
                let take = (c.len() - skip).min(len - out.len());
                out.extend_from_slice(&c[skip..skip + take]);
                skip = 0;
            }
            f(&out)
        };
        self.note_end(end);
        self.content.served(offset, end);
        r
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.used.store(ms, Ordering::Relaxed);
    }

    /// Remembers where the reader got to, for telling sequential reads from seeks.
    fn note_end(&self, end: u64) {
        let _ = self
            .last_end
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                (end > last || end + STREAM_SKIP < last).then_some(end)
            });
    }

    fn idle_for(&self) -> Duration {
        let used = Duration::from_millis(self.used.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(used)
    }

    fn error(&self, kind: HandleErrorKind) -> HandleError {
        self.target.error(kind)
    }

    fn pool(&self) -> &HandlePool {
        &self.target.pool
    }

    /// Chunk `idx`: from memory, from another reader's fetch, or fetched here.
    fn chunk(&self, idx: u64) -> Result<(Arc<Vec<u8>>, Source), HandleError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(self.error(HandleErrorKind::Failed));
        }
        if !self.pinned.load(Ordering::Acquire) {
            let mem = self.content.get(idx);
            let mut st = self.state.lock();
            // Bytes in memory are not held up by a full pool: no wait for a
            // connection then (a parked snapshot may still give way, see `pin`).
            let wait = match mem {
                Some(_) if self.pool().exhausted() => Duration::ZERO,
                _ => self.pool().timeout(),
            };
            match (self.pin(&mut st, wait), mem) {
                (Ok(()), Some(d)) => return Ok((d, Source::Memory)),
                (Ok(()), None) => {}
                // No snapshot can be had now (every connection busy, or the
                // database down): bytes in memory are still served (SEMANTICS,
                // Errors), and the next read tries again.
                (Err(e), Some(d))
                    if matches!(e.class(), ErrorClass::Busy | ErrorClass::Unavailable) =>
                {
                    debug!(
                        "{}: served from memory without a snapshot ({})",
                        self.path,
                        e.class().label()
                    );
                    return Ok((d, Source::Memory));
                }
                (Err(e), _) => {
                    if e.class() == ErrorClass::Busy {
                        st.busy_at = Some(Instant::now());
                    }
                    return Err(self.fail(&mut st, e));
                }
            }
        }
        if let Some(d) = self.content.get(idx) {
            return Ok((d, Source::Memory));
        }
        let mut st = self.state.lock();
        if let Some(d) = self.disk_chunk(&mut st, idx) {
            return Ok((d, Source::Disk));
        }
        loop {
            if self.closed.load(Ordering::Relaxed) {
                return Err(self.error(HandleErrorKind::Failed));
            }
            let off = idx * CHUNK;
            let last_end = self.last_end.load(Ordering::Relaxed);
            let sequential = !self.random.load(Ordering::Relaxed)
                && off >= last_end.saturating_sub(CHUNK)
                && off <= last_end.saturating_add(STREAM_SKIP);
            match self.content.step(idx, sequential, WAIT_STEP) {
                // Brought by a fetch or stream this reader waited for.
                Step::Hit(d) => return Ok((d, Source::Database)),
                Step::Retry => {
                    if let Err(e) = self.check_stream(&mut st) {
                        return Err(self.fail(&mut st, e));
                    }
                }
                Step::Stream(claim) => {
                    self.start_fill(&mut st);
                    // Dropped unused (the stream could not start), it ends the stream.
                    let mut claim = Some(claim);
                    let started =
                        self.resuming(&mut st, off, |sh, st| sh.start_stream(st, &mut claim, off));
                    if let Err(e) = started {
                        return Err(self.fail(&mut st, e));
                    }
                }
                Step::Fetch(claim) => {
                    self.start_fill(&mut st);
                    return match self.resuming(&mut st, off, |sh, st| sh.fetch(st, idx)) {
                        Ok(d) => {
                            claim.insert(d.clone());
                            Ok((d, Source::Database))
                        }
                        // The claim, dropped, gives the fetch up to a waiter.
                        Err(e) => Err(self.fail(&mut st, e)),
                    };
                }
            }
        }
    }

    /// Fixes what this reader reads before its first byte: the disk cache's
    /// file if the content is there (its descriptor keeps the bytes, and no
    /// connection is needed), else the image's snapshot, joined or set up with
    /// the content check (see [`pin`]), waiting at most `wait` for a connection.
    fn pin(&self, st: &mut State, wait: Duration) -> Result<(), HandleError> {
        if self.pinned.load(Ordering::Acquire) {
            return Ok(());
        }
        if self.open_disk(st) || st.pin.is_some() {
            self.pinned.store(true, Ordering::Release);
            return Ok(());
        }
        if st.busy_at.is_some_and(|t| t.elapsed() < BUSY_GRACE) {
            return Err(self.error(HandleErrorKind::PoolExhausted(self.pool().timeout())));
        }
        let pin = self.pool().pins.get(&self.key);
        pin.establish(self.target.source.as_ref(), wait)
            .map_err(|k| self.error(k))?;
        self.pool().outage_over();
        st.pin = Some(pin);
        self.pinned.store(true, Ordering::Release);
        Ok(())
    }

    /// Lets go of the image's snapshot: the next read takes it again.
    fn unpin(&self, st: &mut State) {
        self.pinned.store(false, Ordering::Release);
        st.pin = None;
    }

    /// Reaps the handle's own stream once it ended: its connection comes back, or
    /// its failure becomes this handle's.
    fn check_stream(&self, st: &mut State) -> Result<(), HandleError> {
        if st.stream.as_ref().is_some_and(Readahead::ended) {
            self.take_stream(st)?;
        }
        Ok(())
    }

    /// Stops the handle's stream and takes back its connection.
    fn take_stream(&self, st: &mut State) -> Result<(), HandleError> {
        let Some(s) = st.stream.take() else {
            return Ok(());
        };
        match s.stop(&self.content) {
            Outcome::Stopped(session) => st.conn = Some(session),
            // Stopped while reconnecting: the next set-up starts afresh.
            Outcome::Finished | Outcome::Lost => {}
            // The caller logs it and ends the transaction (see `fail`).
            Outcome::Failed(kind) => return Err(self.error(kind)),
        }
        Ok(())
    }

    /// Starts read-ahead at `off` on the handle's session, with the stream's
    /// place in the cache taken out of `claim` once the session is there.
    fn start_stream(
        &self,
        st: &mut State,
        claim: &mut Option<cache::StreamClaim>,
        off: u64,
    ) -> Result<(), HandleError> {
        self.take_stream(st)?;
        self.connection(st)?;
        let (Some(conn), Some(claim)) = (st.conn.take(), claim.take()) else {
            return Err(self.error(HandleErrorKind::Failed));
        };
        // The stream's own view only delivers: it reads nothing.
        let content = self.pool().cache.content(&self.key, self.size, true);
        let s = Readahead::start(conn, content, claim, self.target.clone(), off)
            .map_err(|e| self.error(HandleErrorKind::Thread(e.to_string())))?;
        st.stream = Some(s);
        Ok(())
    }

    /// One request for one chunk. Gives the session back after the last chunk of
    /// the content when nothing else uses it.
    fn fetch(&self, st: &mut State, idx: u64) -> Result<Arc<Vec<u8>>, HandleError> {
        self.take_stream(st)?;
        let start = idx * CHUNK;
        let len = CHUNK.min(self.size - start);
        let session = self.connection(st)?;
        let mut buf = self.content.buffer();
        session
            .read(start, len, &mut buf)
            .map_err(|k| self.error(k))?;
        let data = Arc::new(buf);
        if start + len >= self.size {
            self.release(st);
        }
        Ok(data)
    }

    /// The handle's connection, set up (pool, transaction, content check) if it
    /// has none. Idempotent.
    fn connection<'a>(&self, st: &'a mut State) -> Result<&'a mut dyn Session, HandleError> {
        if st.conn.is_none() {
            if st.busy_at.is_some_and(|t| t.elapsed() < BUSY_GRACE) {
                return Err(self.error(HandleErrorKind::PoolExhausted(self.pool().timeout())));
            }
            let conn = self.begin(st).inspect_err(|e| {
                if e.class() == ErrorClass::Busy {
                    st.busy_at = Some(Instant::now());
                }
            })?;
            st.setups += 1;
            st.conn = Some(conn);
        }
        match st.conn.as_deref_mut() {
            Some(s) => Ok(s),
            None => Err(self.error(HandleErrorKind::Failed)),
        }
    }

    /// A session in the reader's snapshot: from its pin, else (the disk cache's
    /// file failed, or no connection was free for a pin) a new one, checked.
    fn begin(&self, st: &mut State) -> Result<Box<dyn Session>, HandleError> {
        let setups = st.setups;
        if st.pin.is_none() && !self.pinned.load(Ordering::Acquire) {
            self.pin(st, self.pool().timeout())?;
        }
        let session = match &st.pin {
            Some(pin) => {
                let s = pin
                    .session(self.target.source.as_ref(), self.pool().timeout())
                    .map_err(|k| self.error(k))?;
                self.pool().outage_over();
                s
            }
            None => self.target.begin(self.pool().timeout())?,
        };
        debug!(
            "{}: {} set up (time {})",
            self.path,
            self.target.source.describe(),
            setups + 1
        );
        Ok(session)
    }

    /// Runs `op` (which reads at byte `at`); when it fails because the connection
    /// was lost, sets up again (see [`resume`]) and runs it again, so the reader
    /// sees a pause. A first read that cannot connect at all fails at once.
    fn resuming<T>(
        &self,
        st: &mut State,
        at: u64,
        mut op: impl FnMut(&Self, &mut State) -> Result<T, HandleError>,
    ) -> Result<T, HandleError> {
        let mut lost = None;
        loop {
            let err = match op(self, st) {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let unreachable = matches!(err.kind, HandleErrorKind::Connect(_));
            if !err.resumable() || (unreachable && !self.started.load(Ordering::Relaxed)) {
                return Err(err);
            }
            // The dead connection goes (it cannot end its transaction, so the pool
            // discards it), and with it any stream and the snapshot it held.
            self.discard(st);
            let lost = *lost.get_or_insert_with(Instant::now);
            let conn = self
                .target
                .resume(err, at, lost, &|| self.closed.load(Ordering::Relaxed))?;
            st.setups += 1;
            st.conn = Some(conn);
        }
    }

    /// Logs `err` and ends the transaction. The handle stays usable: its next
    /// read that needs the database sets up again, with the content check, so a
    /// reader lives through a busy pool or a server restart without other bytes.
    fn fail(&self, st: &mut State, err: HandleError) -> HandleError {
        error!("read failed: {err}");
        crate::metrics::database_error(err.class().label());
        match err.kind {
            // Nothing went wrong on the session: it goes back whole.
            HandleErrorKind::PoolExhausted(_)
            | HandleErrorKind::Connect(_)
            | HandleErrorKind::Changed
            | HandleErrorKind::Failed => self.release(st),
            _ => self.discard(st),
        }
        err
    }

    /// Stops read-ahead and drops the session without ending it: after a
    /// failure it cannot be trusted to go back to the pin or the pool (the
    /// connection is discarded; a pin's own session takes its snapshot with it).
    fn discard(&self, st: &mut State) {
        let _ = self.take_stream(st);
        drop(st.conn.take());
    }

    /// Stops read-ahead, ends the transaction and gives the connection back.
    fn release(&self, st: &mut State) {
        // A stream that failed has nothing to give back; its error was reported.
        let _ = self.take_stream(st);
        if let Some(session) = st.conn.take() {
            session.end();
        }
    }
}

impl Idle for Shared {
    fn holds_connection(&self) -> bool {
        // A handle whose state is locked is in a read that needed the database.
        self.state
            .try_lock()
            .is_none_or(|st| st.conn.is_some() || st.stream.as_ref().is_some_and(|s| !s.ended()))
    }

    fn release_if_idle(&self, idle: Duration) {
        if self.idle_for() < idle {
            return;
        }
        // A read in progress is not idle; never wait for one here.
        let Some(mut st) = self.state.try_lock() else {
            return;
        };
        if st.conn.is_some() || st.stream.is_some() || st.pin.is_some() {
            debug!(
                "{}: unused for {}s, giving back its connection and snapshot",
                self.path,
                self.idle_for().as_secs()
            );
            self.release(&mut st);
            self.unpin(&mut st);
        }
    }
}
