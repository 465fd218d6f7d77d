//! One open image: its own pooled connection, its own read-only transaction, and
//! read-ahead. This is the only code that reads image bytes; FUSE and HTTP share it.
//!
//! The rule (from MAAS's 2014 fix): a handle never shares its connection, sets up its
//! transaction lazily and idempotently, and ends the transaction before the connection
//! goes back to the pool. r2d2 would otherwise hand the next borrower a connection
//! still inside our transaction, so [`HandleManager::has_broken`] discards any
//! connection returned while a transaction is open.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, warn};
use parking_lot::Mutex;
use postgres::{Client, NoTls, Statement};
use r2d2::{ManageConnection, Pool, PooledConnection};
use r2d2_postgres::PostgresConnectionManager;

use crate::db::{DbConfig, describe_pg_error};
use crate::stream::Streamer;

/// Size and alignment of the chunks a sequential reader is served from; the mount
/// caps kernel read requests at this size.
pub const READ_CHUNK: u64 = crate::stream::CHUNK;

/// Bytes fetched per round trip for a random read: small enough to answer fast.
const RANDOM_CHUNK: u64 = 256 << 10;

/// Most chunks a handle keeps waiting for out-of-order kernel requests. The kernel
/// keeps up to 16 reads in flight per mount (FUSE max_background) and our threads
/// take them in any order, so a chunk pulled early must wait for as many requests.
/// Chunks leave once served, so only unserved ones count against this.
const RECENT: usize = 16;

/// A read this far ahead of the stream still counts as sequential.
const STREAM_SKIP: u64 = 16 << 20;

/// An error on an open handle. Display names the image path.
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
    /// The database could not be reached.
    Connect(String),
    /// A query failed (includes a missing large object).
    Db(String),
    /// The large object is shorter than the catalog says.
    Truncated {
        /// Bytes the catalog promises.
        expected: u64,
        /// Bytes the large object holds.
        actual: u64,
    },
    /// An earlier error ended this handle's transaction; its snapshot is gone.
    Failed,
}

impl HandleError {
    /// The errno a file system should report for this error.
    pub fn errno(&self) -> i32 {
        match self.kind {
            HandleErrorKind::PoolExhausted(_) => libc::EAGAIN,
            _ => libc::EIO,
        }
    }
}

impl fmt::Display for HandleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = &self.path;
        match &self.kind {
            HandleErrorKind::PoolExhausted(t) => write!(
                f,
                "{path}: all handle connections busy for {}s (raise --max-handles or --pool-timeout)",
                t.as_secs()
            ),
            HandleErrorKind::Connect(e) => write!(f, "{path}: cannot connect: {e}"),
            HandleErrorKind::Db(e) => write!(f, "{path}: database error: {e}"),
            HandleErrorKind::Truncated { expected, actual } => write!(
                f,
                "{path}: large object holds {actual} bytes but the catalog says {expected}"
            ),
            HandleErrorKind::Failed => write!(f, "{path}: handle failed earlier; reopen the file"),
        }
    }
}

impl std::error::Error for HandleError {}

/// A pooled connection reserved for handles, with its statements prepared once.
pub struct HandleConn {
    pub(crate) client: Client,
    read: Statement,
    open: Statement,
    in_txn: bool,
}

/// Makes handle connections: no idle-in-transaction timeout, statements prepared.
#[derive(Debug)]
pub struct HandleManager {
    inner: PostgresConnectionManager<NoTls>,
}

impl ManageConnection for HandleManager {
    type Connection = HandleConn;
    type Error = postgres::Error;

    fn connect(&self) -> Result<HandleConn, postgres::Error> {
        let mut client = self.inner.connect()?;
        // A reader may pause for a long time; the server must not end its transaction.
        client.batch_execute("SET idle_in_transaction_session_timeout = 0")?;
        let read = client.prepare("SELECT lo_get($1::oid, $2::int8, $3::int4)")?;
        // lo_open pins the snapshot and checks existence and permission; the seek
        // to the end gives the real size.
        let open = client.prepare("SELECT lo_lseek64(lo_open($1::oid, 262144), 0, 2)")?;
        Ok(HandleConn {
            client,
            read,
            open,
            in_txn: false,
        })
    }

    fn is_valid(&self, conn: &mut HandleConn) -> Result<(), postgres::Error> {
        conn.client.simple_query("").map(|_| ())
    }

    fn has_broken(&self, conn: &mut HandleConn) -> bool {
        // Never let a connection go back inside a transaction.
        conn.in_txn || conn.client.is_closed()
    }
}

/// The pool of connections that handles draw from; cheap to clone.
#[derive(Clone)]
pub struct HandlePool {
    pool: Pool<HandleManager>,
    timeout: Duration,
    unreachable: Arc<Unreachable>,
}

/// The last failure to open a new connection, as r2d2 reports it. While the
/// server is down an open fails at once with this, instead of holding a FUSE
/// thread for the whole pool timeout.
#[derive(Debug, Default)]
struct Unreachable(Mutex<Option<Failure>>);

#[derive(Debug)]
struct Failure {
    at: Instant,
    why: String,
    logged: Instant,
}

/// How often an open waiting for a connection checks whether the server is down.
const POOL_POLL: Duration = Duration::from_millis(200);

/// How long a failed connection attempt counts as news.
const UNREACHABLE_FOR: Duration = Duration::from_secs(2);

/// While connections keep failing, at most one warning per this.
const WARN_EVERY: Duration = Duration::from_secs(60);

impl Unreachable {
    fn recent(&self) -> Option<String> {
        let last = self.0.lock();
        let f = last.as_ref()?;
        (f.at.elapsed() < UNREACHABLE_FOR).then(|| f.why.clone())
    }

    fn clear(&self) {
        *self.0.lock() = None;
    }
}

/// Feeds r2d2's connection errors into an [`Unreachable`].
#[derive(Debug)]
struct RecordUnreachable(Arc<Unreachable>);

impl r2d2::HandleError<postgres::Error> for RecordUnreachable {
    fn handle_error(&self, err: postgres::Error) {
        let why = crate::db::connect_reason(&err);
        let now = Instant::now();
        let mut last = self.0.0.lock();
        let logged = match last.as_ref() {
            Some(f) if f.logged.elapsed() < WARN_EVERY => {
                debug!("handle connection failed: {why}");
                f.logged
            }
            _ => {
                warn!("handle connections: cannot connect to the database: {why}");
                now
            }
        };
        *last = Some(Failure {
            at: now,
            why,
            logged,
        });
    }
}

impl HandlePool {
    /// A pool of at most `max` connections; an open waits `timeout` for one.
    pub fn new(db: &DbConfig, max: u32, timeout: Duration) -> HandlePool {
        let manager = HandleManager {
            inner: PostgresConnectionManager::new(db.postgres_config("pgbootfs-handle"), NoTls),
        };
        let unreachable = Arc::new(Unreachable::default());
        let pool = Pool::builder()
            .max_size(max.max(1))
            .min_idle(Some(0))
            .test_on_check_out(false)
            .connection_timeout(timeout.max(Duration::from_millis(1)))
            .error_handler(Box::new(RecordUnreachable(unreachable.clone())))
            .build_unchecked(manager);
        HandlePool {
            pool,
            timeout,
            unreachable,
        }
    }

    /// Connections open now (in use and idle).
    pub fn connections(&self) -> u32 {
        self.pool.state().connections
    }

    /// A connection within the pool timeout; at once an error while new connections
    /// fail, since waiting for a server that is down only ties up the caller.
    fn get(&self, path: &str) -> Result<PooledConnection<HandleManager>, HandleError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let err = match self.pool.get_timeout(left.min(POOL_POLL)) {
                Ok(conn) => {
                    self.unreachable.clear();
                    return Ok(conn);
                }
                Err(e) => e,
            };
            let state = self.pool.state();
            let exhausted =
                state.connections >= self.pool.max_size() && state.idle_connections == 0;
            let kind = match self.unreachable.recent() {
                Some(why) if !exhausted => HandleErrorKind::Connect(why),
                _ if Instant::now() < deadline => continue,
                _ if exhausted => HandleErrorKind::PoolExhausted(self.timeout),
                _ => HandleErrorKind::Connect(err.to_string()),
            };
            return Err(HandleError {
                path: path.to_string(),
                kind,
            });
        }
    }
}

/// One open image.
pub struct Handle {
    pool: HandlePool,
    oid: u32,
    size: u64,
    path: String,
    state: Mutex<State>,
}

/// Bytes of the image starting at `start`.
pub(crate) struct Chunk {
    pub(crate) start: u64,
    pub(crate) data: Vec<u8>,
}

impl Chunk {
    pub(crate) fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }
}

#[derive(Default)]
struct State {
    /// The handle's connection, while no streamer holds it.
    conn: Option<PooledConnection<HandleManager>>,
    /// Read-ahead for a sequential reader; owns the connection while it runs.
    streamer: Option<Streamer>,
    /// Chunks fetched but not yet wholly served, oldest first: the kernel sends its
    /// read-ahead requests in parallel, so they arrive slightly out of order.
    recent: VecDeque<Served>,
    /// End of the last chunk fetched: a miss here continues a sequential read.
    last_end: u64,
    failed: bool,
    closed: bool,
}

/// A fetched chunk and how many of its bytes were served. Shared, so a reply can be
/// sent without holding the handle's lock.
struct Served {
    start: u64,
    data: Arc<Vec<u8>>,
    served: u64,
}

impl Served {
    fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }
}

impl State {
    fn remember(&mut self, chunk: Chunk) -> usize {
        if self.recent.len() >= RECENT {
            let old = self.recent.pop_front();
            self.recycle(old);
        }
        self.last_end = chunk.end();
        self.recent.push_back(Served {
            start: chunk.start,
            data: Arc::new(chunk.data),
            served: 0,
        });
        self.recent.len() - 1
    }

    /// Counts `n` bytes served from the chunk at `start`, dropping it once all were.
    fn served(&mut self, start: u64, n: u64) {
        let Some(idx) = self.recent.iter().position(|s| s.start == start) else {
            return;
        };
        let s = &mut self.recent[idx];
        s.served += n;
        if s.served >= s.data.len() as u64 {
            let done = self.recent.remove(idx);
            self.recycle(done);
        }
    }

    /// Hands a finished buffer back to the read-ahead thread for reuse.
    fn recycle(&self, old: Option<Served>) {
        if let (Some(old), Some(s)) = (old, self.streamer.as_ref())
            && let Ok(data) = Arc::try_unwrap(old.data)
        {
            let _ = s.recycle.send(data);
        }
    }
}

impl Handle {
    /// A handle on large object `oid` of `size` bytes, shown as `path` in messages.
    /// Touches no database until [`Handle::ensure_open`] or the first read.
    pub fn new(pool: &HandlePool, oid: u32, size: u64, path: &str) -> Handle {
        Handle {
            pool: pool.clone(),
            oid,
            size,
            path: path.to_string(),
            state: Mutex::new(State::default()),
        }
    }

    /// The image path this handle reads.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Takes a connection and begins the snapshot transaction, once. Safe to call
    /// before every read.
    pub fn ensure_open(&self) -> Result<(), HandleError> {
        let mut st = self.state.lock();
        self.open_locked(&mut st).map(|_| ())
    }

    /// Calls `f` with the bytes at `offset..offset+len` (fewer at the end of the file).
    pub fn read_with<R>(
        &self,
        offset: u64,
        len: usize,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, HandleError> {
        let end = offset.saturating_add(len as u64).min(self.size);
        if offset >= end {
            return Ok(f(&[]));
        }
        let mut st = self.state.lock();
        let idx = self.locate(&mut st, offset)?;
        let c = &st.recent[idx];
        if end <= c.end() {
            // Reply without the lock, so requests for other chunks proceed meanwhile.
            let (start, data) = (c.start, c.data.clone());
            drop(st);
            let at = (offset - start) as usize;
            let r = f(&data[at..at + (end - offset) as usize]);
            drop(data);
            self.state.lock().served(start, end - offset);
            return Ok(r);
        }
        // The request spans chunks: gather it.
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut pos = offset;
        while pos < end {
            let idx = self.locate(&mut st, pos)?;
            let c = &st.recent[idx];
            let at = (pos - c.start) as usize;
            let take = ((end - pos) as usize).min(c.data.len() - at);
            out.extend_from_slice(&c.data[at..at + take]);
            let start = c.start;
            st.served(start, take as u64);
            pos += take as u64;
        }
        Ok(f(&out))
    }

    /// Copies the bytes at `offset` into `buf`; returns how many (0 at the end).
    pub fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<usize, HandleError> {
        self.read_with(offset, buf.len(), |bytes| {
            buf[..bytes.len()].copy_from_slice(bytes);
            bytes.len()
        })
    }

    /// Ends the transaction and gives the connection back. Idempotent; later reads fail.
    pub fn close(&self) {
        let mut st = self.state.lock();
        st.closed = true;
        finish(&mut st);
    }

    /// Makes sure a recent chunk holds `offset` and returns its index.
    fn locate(&self, st: &mut State, offset: u64) -> Result<usize, HandleError> {
        if let Some(i) = st
            .recent
            .iter()
            .position(|s| s.start <= offset && offset < s.end())
        {
            return Ok(i);
        }
        // Sequential: the stream is about to deliver `offset`, or it continues the
        // last chunk fetched. Anything else is a random read and stops the stream.
        let streaming = st
            .streamer
            .as_ref()
            .is_some_and(|s| offset >= s.next && offset < s.next + STREAM_SKIP);
        if streaming || (offset == st.last_end && offset > 0) {
            if st.streamer.is_none() {
                self.open_locked(st)?;
                if let Some(conn) = st.conn.take() {
                    match Streamer::start(conn, self.oid, offset, self.size) {
                        Ok(s) => st.streamer = Some(s),
                        Err(msg) => {
                            let err = self.error(HandleErrorKind::Db(msg));
                            self.fail(st, &err);
                            return Err(err);
                        }
                    }
                }
            }
            return self.pull(st, offset);
        }
        if let Some(s) = &st.streamer {
            debug!(
                "{}: read at {offset} left the stream (next {})",
                self.path, s.next
            );
        }
        self.stop_stream(st)?;
        let chunk = self.fetch(st, offset - offset % RANDOM_CHUNK, RANDOM_CHUNK)?;
        Ok(st.remember(chunk))
    }

    /// Takes chunks from the stream until one holds `offset`; the ones before it stay
    /// for requests still on their way.
    fn pull(&self, st: &mut State, offset: u64) -> Result<usize, HandleError> {
        loop {
            let Some(s) = st.streamer.as_mut() else {
                return Err(self.error(HandleErrorKind::Failed));
            };
            match s.recv() {
                Some(Ok(chunk)) => {
                    s.next = chunk.end();
                    let hit = chunk.start <= offset && offset < chunk.end();
                    let idx = st.remember(chunk);
                    if hit {
                        return Ok(idx);
                    }
                }
                Some(Err(msg)) => {
                    let err = self.error(HandleErrorKind::Db(msg));
                    self.fail(st, &err);
                    return Err(err);
                }
                None => {
                    let err = self.error(HandleErrorKind::Db("read-ahead stopped".into()));
                    self.fail(st, &err);
                    return Err(err);
                }
            }
        }
    }

    /// Stops read-ahead and takes the connection back.
    fn stop_stream(&self, st: &mut State) -> Result<(), HandleError> {
        if let Some(s) = st.streamer.take() {
            match s.stop() {
                Some(conn) => st.conn = Some(conn),
                None => {
                    let err = self.error(HandleErrorKind::Db("read-ahead thread failed".into()));
                    self.fail(st, &err);
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    fn open_locked<'a>(&self, st: &'a mut State) -> Result<&'a mut HandleConn, HandleError> {
        if st.failed || st.closed {
            return Err(self.error(HandleErrorKind::Failed));
        }
        if st.conn.is_none() && st.streamer.is_none() {
            let conn = self.begin()?;
            st.conn = Some(conn);
        }
        match st.conn.as_deref_mut() {
            Some(conn) => Ok(conn),
            None => Err(self.error(HandleErrorKind::Failed)),
        }
    }

    fn begin(&self) -> Result<PooledConnection<HandleManager>, HandleError> {
        // Idle pooled connections die together when the server restarts: each dead
        // one is discarded and the next tried, until a live or new one answers.
        let mut attempt = 0;
        loop {
            let mut conn = self.pool.get(&self.path)?;
            conn.in_txn = true;
            let res = conn
                .client
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .and_then(|_| {
                    let open = conn.open.clone();
                    conn.client.query_one(&open, &[&self.oid])
                });
            match res {
                Ok(row) => {
                    let actual: i64 = row.get(0);
                    let actual = actual.max(0) as u64;
                    if actual < self.size {
                        end_txn(&mut conn);
                        return Err(self.error(HandleErrorKind::Truncated {
                            expected: self.size,
                            actual,
                        }));
                    }
                    if actual > self.size {
                        warn!(
                            "{}: large object {} holds {actual} bytes, catalog says {}; serving {}",
                            self.path, self.oid, self.size, self.size
                        );
                    }
                    debug!("{}: opened large object {}", self.path, self.oid);
                    return Ok(conn);
                }
                Err(e) if conn.client.is_closed() && attempt <= self.pool.pool.max_size() => {
                    debug!("{}: pooled connection was dead ({e}); retrying", self.path);
                    attempt += 1;
                }
                Err(e) => {
                    end_txn(&mut conn);
                    return Err(self.error(HandleErrorKind::Db(describe_pg_error(&e))));
                }
            }
        }
    }

    /// One round trip: `len` bytes at `start` (fewer at the end).
    fn fetch(&self, st: &mut State, start: u64, len: u64) -> Result<Chunk, HandleError> {
        let len = len.min(self.size - start);
        let conn = self.open_locked(st)?;
        let read = conn.read.clone();
        let res = conn
            .client
            .query_one(&read, &[&self.oid, &(start as i64), &(len as i32)]);
        let err = match res {
            Ok(row) => {
                let bytes: &[u8] = row.get(0);
                if bytes.len() as u64 == len {
                    return Ok(Chunk {
                        start,
                        data: bytes.to_vec(),
                    });
                }
                self.error(HandleErrorKind::Truncated {
                    expected: start + len,
                    actual: start + bytes.len() as u64,
                })
            }
            Err(e) => self.error(HandleErrorKind::Db(describe_pg_error(&e))),
        };
        self.fail(st, &err);
        Err(err)
    }

    /// Logs `err`, ends the transaction and marks the handle failed.
    fn fail(&self, st: &mut State, err: &HandleError) {
        error!("read failed: {err}");
        st.failed = true;
        finish(st);
    }

    fn error(&self, kind: HandleErrorKind) -> HandleError {
        HandleError {
            path: self.path.clone(),
            kind,
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        finish(self.state.get_mut());
    }
}

/// Stops read-ahead, ends the handle's transaction and drops its connection and buffers.
fn finish(st: &mut State) {
    if let Some(s) = st.streamer.take()
        && let Some(conn) = s.stop()
    {
        st.conn = Some(conn);
    }
    if let Some(mut conn) = st.conn.take() {
        end_txn(&mut conn);
    }
    st.recent.clear();
}

/// Ends the transaction; a connection where that fails stays marked and is discarded.
fn end_txn(conn: &mut HandleConn) {
    if !conn.in_txn {
        return;
    }
    match conn.client.batch_execute("ROLLBACK") {
        Ok(()) => conn.in_txn = false,
        Err(e) => debug!("ending a handle transaction failed, discarding the connection: {e}"),
    }
}

impl HandlePool {
    /// The same pool (same connections, same limit) whose opens wait at most
    /// `timeout` for a free connection: HTTP answers 503 rather than queue for long.
    pub fn with_timeout(&self, timeout: Duration) -> HandlePool {
        HandlePool {
            pool: self.pool.clone(),
            timeout,
            unreachable: self.unreachable.clone(),
        }
    }
}
