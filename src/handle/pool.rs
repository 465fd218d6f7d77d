//! The connections handles read through: a pool of their own (never the catalog's),
//! each connection set up for long reads with its statements prepared once, and
//! the rule that no connection goes back to the pool inside a transaction.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use log::{debug, warn};
use parking_lot::Mutex;
use postgres::{Client, Statement};
use r2d2::{ManageConnection, Pool, PooledConnection};

use super::cache::ChunkCache;
use super::disk::DiskCache;
use super::error::{HandleError, HandleErrorKind};
use super::idle::{Idle, Registry};
use super::pin::Pins;
use crate::db::{DbConfig, DbError, Manager};
use crate::maas::sql;

/// How handles get and keep their connections.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Most handle connections open at once.
    pub max: u32,
    /// How long a read waits for a free connection.
    pub timeout: Duration,
    /// A handle unused this long gives back its connection and snapshot.
    pub handle_idle: Duration,
    /// A pooled connection unused this long is closed (r2d2 checks every 30 s).
    pub conn_idle: Duration,
    /// Bytes of image chunks kept in memory, shared by every handle of the pool.
    pub cache_memory: u64,
    /// Share chunks between objects of the same sha256 (true), or only between
    /// handles on the same object (false: for `verify`, which checks that sha256).
    pub share_by_sha256: bool,
    /// How long a reader whose connection was lost waits for a new one (and the
    /// same content in a new snapshot) before its read fails.
    pub reconnect_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            max: 64,
            timeout: Duration::from_secs(30),
            handle_idle: Duration::from_secs(30),
            conn_idle: Duration::from_secs(30),
            cache_memory: 256 << 20,
            share_by_sha256: true,
            reconnect_timeout: Duration::from_secs(30),
        }
    }
}

/// What [`HandlePool::stats`] reports.
#[derive(Debug, Clone, Copy)]
pub struct PoolStats {
    /// Connections lent to handles.
    pub in_use: u32,
    /// Connections open and waiting in the pool.
    pub idle: u32,
    /// Most connections the pool opens.
    pub max: u32,
    /// Handles open (not yet dropped).
    pub handles_open: usize,
    /// Handles holding a connection now.
    pub handles_connected: usize,
}

/// A pooled connection reserved for handles, with its statements prepared once.
pub struct HandleConn {
    pub(crate) client: Client,
    pub(crate) read: Statement,
    /// Opens the object (pinning the snapshot, checking existence and permission)
    /// and gives its size, and, where the MAAS tables exist, whether a row still
    /// names the object with the handle's sha256 and total size: one round trip
    /// for the check.
    pub(crate) open: Statement,
    pub(crate) in_txn: bool,
}

/// Makes handle connections: no idle-in-transaction timeout, statements prepared.
#[derive(Debug)]
pub struct HandleManager {
    inner: Manager,
    /// Connection attempts under way, for [`HandlePool::get_within`].
    connecting: Arc<AtomicUsize>,
}

/// Counts one connection attempt while it lasts.
struct Attempt<'a>(&'a AtomicUsize);

impl<'a> Attempt<'a> {
    fn start(n: &'a AtomicUsize) -> Attempt<'a> {
        n.fetch_add(1, Ordering::AcqRel);
        Attempt(n)
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ManageConnection for HandleManager {
    type Connection = HandleConn;
    type Error = DbError;

    fn connect(&self) -> Result<HandleConn, DbError> {
        let _attempt = Attempt::start(&self.connecting);
        let client = self.inner.connect()?;
        crate::metrics::pool_connection_opened();
        prepare(client).map_err(|e| DbError::query("setting up a handle connection", e))
    }

    fn is_valid(&self, conn: &mut HandleConn) -> Result<(), DbError> {
        self.inner.is_valid(&mut conn.client)
    }

    fn has_broken(&self, conn: &mut HandleConn) -> bool {
        // Never let a connection go back inside a transaction.
        conn.in_txn || conn.client.is_closed()
    }
}

/// Sets a new session up for handles: statements prepared once.
fn prepare(mut client: Client) -> Result<HandleConn, postgres::Error> {
    // A reader may pause; the idle sweeper, not the server, ends such a transaction.
    client.batch_execute("SET idle_in_transaction_session_timeout = 0")?;
    let read = client.prepare("SELECT lo_get($1::oid, $2::int8, $3::int4)")?;
    let has_rows: bool = client.query_one(sql::HAS_LARGEFILES, &[])?.get(0);
    let open = if has_rows {
        // NULL when no row names the object (a store being written, or none
        // at all), false when rows name it but none with this sha256 and size.
        client.prepare(sql::OPEN_AND_CHECK_OBJECT)?
    } else {
        client.prepare(
            "SELECT lo_lseek64(lo_open($1::oid, 262144), 0, 2), \
             (SELECT NULL::bool WHERE $2::text IS NULL AND $3::int8 IS NULL)",
        )?
    };
    Ok(HandleConn {
        client,
        read,
        open,
        in_txn: false,
    })
}

/// A connection borrowed from the pool.
pub(crate) type Conn = PooledConnection<HandleManager>;

/// The pool of connections that handles draw from, with the chunk cache they
/// share; cheap to clone.
#[derive(Clone)]
pub struct HandlePool {
    pool: Pool<HandleManager>,
    /// Connection attempts under way (the manager counts them).
    connecting: Arc<AtomicUsize>,
    timeout: Duration,
    handle_idle: Duration,
    pub(crate) share_by_sha256: bool,
    reconnect_timeout: Duration,
    outage: Arc<Mutex<Option<Outage>>>,
    unreachable: Arc<Unreachable>,
    pub(crate) cache: Arc<ChunkCache>,
    pub(crate) disk: Option<Arc<DiskCache>>,
    registry: Arc<Registry>,
    /// The snapshot of each image being read, shared by its readers.
    pub(crate) pins: Arc<Pins>,
}

/// The last failure to open a new connection, as r2d2 reports it. While the
/// server is down a read fails at once with this, instead of holding its thread
/// for the whole pool timeout.
#[derive(Debug, Default)]
struct Unreachable(Mutex<Option<Failure>>);

#[derive(Debug)]
struct Failure {
    at: Instant,
    why: String,
    logged: Instant,
}

/// A run of lost connections and failed reconnections with no set-up working in
/// between: the reconnect timeout counts from its start, so readers that take
/// over from one that gave up (the followers of its read-ahead stream) give up
/// with it rather than wait a whole timeout more.
#[derive(Debug, Clone, Copy)]
struct Outage {
    since: Instant,
    last: Instant,
}

/// Failures further apart than this belong to different outages.
const OUTAGE_GAP: Duration = Duration::from_secs(5);

/// r2d2 retries a failed connection attempt on its own, with a delay that doubles
/// up to half its connection timeout: this keeps that delay at 0.5 s, so readers
/// waiting to reconnect notice a server that came back within half a second.
/// (Every `get` here passes its own timeout; r2d2 uses this one for nothing else.)
const R2D2_RETRY_CAP: Duration = Duration::from_secs(1);

/// How often a read waiting for a connection checks whether the server is down.
const POOL_POLL: Duration = Duration::from_millis(200);

/// How often a read whose connection is being made looks for it (or for one given
/// back) in the pool.
const CONNECTING_POLL: Duration = Duration::from_millis(5);

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

impl r2d2::HandleError<DbError> for RecordUnreachable {
    fn handle_error(&self, err: DbError) {
        let why = err.reason();
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
    /// A pool as `opts` says; connects lazily, on the first read that needs it.
    pub fn new(db: &DbConfig, opts: &PoolOptions) -> HandlePool {
        let connecting = Arc::new(AtomicUsize::new(0));
        let manager = HandleManager {
            inner: db.manager("pgbootfs-handle"),
            connecting: connecting.clone(),
        };
        let unreachable = Arc::new(Unreachable::default());
        let pool = Pool::builder()
            .max_size(opts.max.max(1))
            .min_idle(Some(0))
            .idle_timeout(Some(opts.conn_idle.max(Duration::from_secs(1))))
            .test_on_check_out(false)
            .connection_timeout(R2D2_RETRY_CAP)
            .error_handler(Box::new(RecordUnreachable(unreachable.clone())))
            .build_unchecked(manager);
        HandlePool {
            pool,
            connecting,
            timeout: opts.timeout,
            handle_idle: opts.handle_idle,
            share_by_sha256: opts.share_by_sha256,
            reconnect_timeout: opts.reconnect_timeout,
            outage: Arc::default(),
            unreachable,
            cache: Arc::new(ChunkCache::new(opts.cache_memory)),
            disk: None,
            registry: Arc::default(),
            pins: Arc::default(),
        }
    }

    /// The same pool, also reading from and filling the disk cache `disk`.
    pub fn with_disk(self, disk: Arc<DiskCache>) -> HandlePool {
        HandlePool {
            disk: Some(disk),
            ..self
        }
    }

    /// The disk cache, if the pool has one.
    pub fn disk(&self) -> Option<&Arc<DiskCache>> {
        self.disk.as_ref()
    }

    /// The same pool (same connections, cache and limit) whose reads wait at most
    /// `timeout` for a free connection: HTTP answers 503 rather than queue for long.
    pub fn with_timeout(&self, timeout: Duration) -> HandlePool {
        HandlePool {
            timeout,
            ..self.clone()
        }
    }

    /// Connections open now (in use and idle).
    pub fn connections(&self) -> u32 {
        self.pool.state().connections
    }

    /// The pool's state for the metrics: connections in use, idle and at most,
    /// and handles open and holding a connection.
    pub fn stats(&self) -> PoolStats {
        let state = self.pool.state();
        let (open, connected) = self.registry.count();
        PoolStats {
            in_use: state.connections.saturating_sub(state.idle_connections),
            idle: state.idle_connections,
            max: self.pool.max_size(),
            handles_open: open,
            handles_connected: connected,
        }
    }

    /// How long a read waits for a free connection.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How long a reader that lost its connection tries to get a new one.
    pub(crate) fn reconnect_timeout(&self) -> Duration {
        self.reconnect_timeout
    }

    /// Records a lost connection or failed reconnection; returns when the outage
    /// it belongs to began.
    pub(crate) fn outage_seen(&self) -> Instant {
        let now = Instant::now();
        let mut o = self.outage.lock();
        let since = match *o {
            Some(prev) if now.duration_since(prev.last) < OUTAGE_GAP => prev.since,
            _ => now,
        };
        *o = Some(Outage { since, last: now });
        since
    }

    /// A set-up worked: the outage, if any, is over.
    pub(crate) fn outage_over(&self) {
        let mut o = self.outage.lock();
        if o.is_some() {
            *o = None;
        }
    }

    /// Every connection is open and in use.
    pub(crate) fn exhausted(&self) -> bool {
        let state = self.pool.state();
        state.idle_connections == 0 && state.connections >= self.pool.max_size()
    }

    /// Most connections the pool opens.
    pub(crate) fn max_size(&self) -> u32 {
        self.pool.max_size()
    }

    /// Has the idle sweeper watch a new handle.
    pub(crate) fn watch(&self, h: Weak<dyn Idle>) {
        self.registry.watch(h, self.handle_idle);
    }

    /// A connection within `wait` (the pool timeout, or less while reconnecting); at
    /// once an error while new connections fail, since waiting for a server that is
    /// down only ties up the caller.
    pub(crate) fn get_within(&self, path: &str, wait: Duration) -> Result<Conn, HandleError> {
        let asked = Instant::now();
        let deadline = asked + wait;
        let waits = self.pool.state().idle_connections == 0
            && self.pool.state().connections >= self.pool.max_size();
        // Whether this read has asked r2d2 for a connection already. r2d2 starts a
        // new connection at every `get` that finds none idle (up to the pool's
        // size), so polling `get` while a slow connection is being made (a loaded
        // server: seconds) opened one more every poll: 12 for one reader, seen in
        // tests/cache.rs's storm. While an attempt is under way this read looks
        // for it with `try_get`, which starts none.
        let mut has_asked = false;
        loop {
            let state = self.pool.state();
            if state.idle_connections == 0 && state.connections >= self.pool.max_size() {
                // Every connection is taken: the snapshot of an image nobody is
                // reading from the database now gives way (see `pin`).
                self.pins.preempt();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let got = if has_asked && self.connecting.load(Ordering::Acquire) > 0 {
                let got = self.pool.try_get();
                if got.is_none() {
                    std::thread::sleep(left.min(CONNECTING_POLL));
                }
                got.ok_or(None)
            } else {
                has_asked = true;
                self.pool.get_timeout(left.min(POOL_POLL)).map_err(Some)
            };
            let err = match got {
                Ok(conn) => {
                    self.unreachable.clear();
                    crate::metrics::pool_checkout(asked.elapsed(), waits);
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
                _ if exhausted => {
                    crate::metrics::pool_timeout(asked.elapsed());
                    HandleErrorKind::PoolExhausted(wait)
                }
                _ => HandleErrorKind::Connect(err.map_or_else(
                    || "no connection was made within the wait".to_string(),
                    |e| e.to_string(),
                )),
            };
            return Err(HandleError {
                path: path.to_string(),
                kind,
            });
        }
    }
}

/// Ends the transaction; a connection where that fails stays marked and is discarded.
pub(crate) fn end_txn(conn: &mut HandleConn) {
    if !conn.in_txn {
        return;
    }
    match conn.client.batch_execute("ROLLBACK") {
        Ok(()) => conn.in_txn = false,
        Err(e) => debug!("ending a handle transaction failed, discarding the connection: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::sync::atomic::AtomicBool;

    use super::*;

    /// A read waiting on a connection that is slow to come asks r2d2 for one, not
    /// one more every poll: against a server that accepts and never answers, one
    /// read waiting 1.5 s made 8 connection attempts before (one per 200 ms poll),
    /// and makes 1 now.
    #[test]
    fn a_read_waiting_on_a_slow_connection_asks_for_one() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let counter = {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut held = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    match listener.accept() {
                        // Held open, never answered: the client waits for the
                        // server's first bytes until its connect_timeout.
                        Ok((s, _)) => held.push(s),
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                held.len()
            })
        };
        let db = DbConfig::resolve_with(
            Some(&format!(
                "host=127.0.0.1 port={port} user=nobody dbname=none connect_timeout=10"
            )),
            |_| None,
        )
        .unwrap();
        let pool = HandlePool::new(&db, &PoolOptions::default());
        let got = pool.get_within("/t/slow", Duration::from_millis(1500));
        assert!(
            got.is_err(),
            "a server that never answers gave a connection"
        );
        done.store(true, Ordering::Relaxed);
        let attempts = counter.join().unwrap();
        assert_eq!(attempts, 1, "connection attempts by one waiting read");
    }
}
