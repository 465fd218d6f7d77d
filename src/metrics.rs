//! Prometheus metrics: one process-wide registry, counted where things happen
//! (one call per event at each site) and encoded for `GET /metrics`.
//!
//! A leaf like `mountinfo`: it knows nothing of the layers that feed it. Values
//! that are states rather than events (handles open, pool connections, the
//! catalog's size and age) are read at scrape time by the sampler that
//! `daemon` installs, so no gauge can drift from what it describes.

use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{prometheus_text, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// Content-Type of the Prometheus text format (0.0.4), the default answer.
pub const PROMETHEUS_CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;
/// Content-Type of OpenMetrics text, for scrapers that ask for it.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Label = [(&'static str, &'static str); 1];
type HttpLabel = [(&'static str, String); 2];

/// Where the bytes handed to a reader came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The shared chunk cache, already there when asked.
    Memory,
    /// The disk cache (`--cache-dir`), read by pgbootfs.
    Disk,
    /// The database: fetched for this read or awaited from another reader's fetch.
    Database,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Memory => "memory",
            Source::Disk => "disk",
            Source::Database => "database",
        }
    }
}

/// What the sampler reports at each scrape.
#[derive(Debug, Default, Clone)]
pub struct Sample {
    /// Open handles (files open on the mount, downloads in progress, disk fills).
    pub handles_open: u64,
    /// Handles holding a database connection now.
    pub handles_connected: u64,
    /// Handle-pool connections lent out.
    pub pool_in_use: u64,
    /// Handle-pool connections open and idle.
    pub pool_idle: u64,
    /// Most handle-pool connections.
    pub pool_max: u64,
    /// Files in the catalog.
    pub catalog_files: u64,
    /// Bytes of those files.
    pub catalog_bytes: u64,
}

struct Metrics {
    registry: Registry,
    handles_open: Gauge,
    handles_connected: Gauge,
    pool_connections: Family<Label, Gauge>,
    pool_max: Gauge,
    pool_checkouts: Counter,
    pool_waits: Counter,
    pool_wait: Histogram,
    pool_timeouts: Counter,
    pool_opened: Counter,
    reconnects: Counter,
    served: Family<Label, Counter>,
    passthrough_opens: Counter,
    db_errors: Family<Label, Counter>,
    refresh: Histogram,
    refreshes: Counter,
    refresh_failures: Counter,
    catalog_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    catalog_files: Gauge,
    catalog_bytes: Gauge,
    http_requests: Family<HttpLabel, Counter>,
    http_sent: Counter,
    http_duration: Histogram,
    http_first_byte: Histogram,
    fuse_ops: Family<Label, Counter>,
    http_connections: Gauge,
    http_connections_limit: Gauge,
    http_client_connections_limit: Gauge,
    http_clients: Gauge,
    http_client_connections_max: Gauge,
    http_refused: Family<Label, Counter>,
    /// When the catalog was last loaded.
    loaded_at: Mutex<Option<Instant>>,
    sampler: Mutex<Option<Box<dyn Fn() -> Sample + Send + Sync>>>,
}

/// Latency buckets from 1 ms to about 2 minutes: a read from memory takes well
/// under a millisecond, a download of a large image minutes.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut r = Registry::with_prefix("pgbootfs");
    let m = Metrics {
        registry: Registry::default(),
        handles_open: Gauge::default(),
        handles_connected: Gauge::default(),
        pool_connections: Family::default(),
        pool_max: Gauge::default(),
        pool_checkouts: Counter::default(),
        pool_waits: Counter::default(),
        pool_wait: latency(),
        pool_timeouts: Counter::default(),
        pool_opened: Counter::default(),
        reconnects: Counter::default(),
        served: Family::default(),
        passthrough_opens: Counter::default(),
        db_errors: Family::default(),
        refresh: latency(),
        refreshes: Counter::default(),
        refresh_failures: Counter::default(),
        catalog_age: Gauge::default(),
        catalog_files: Gauge::default(),
        catalog_bytes: Gauge::default(),
        http_requests: Family::default(),
        http_sent: Counter::default(),
        http_duration: latency(),
        http_first_byte: latency(),
        fuse_ops: Family::default(),
        http_connections: Gauge::default(),
        http_connections_limit: Gauge::default(),
        http_client_connections_limit: Gauge::default(),
        http_clients: Gauge::default(),
        http_client_connections_max: Gauge::default(),
        http_refused: Family::default(),
        loaded_at: Mutex::new(None),
        sampler: Mutex::new(None),
    };
    r.register(
        "build",
        "Version of this pgbootfs",
        Info::new([("version", crate::VERSION)]),
    );
    r.register(
        "handles_open",
        "Open handles: files open on the mount, downloads in progress, disk cache fills",
        m.handles_open.clone(),
    );
    r.register(
        "handles_connected",
        "Open handles holding a database connection (and its snapshot) now",
        m.handles_connected.clone(),
    );
    r.register(
        "pool_connections",
        "Handle-pool database connections by state (in_use, idle)",
        m.pool_connections.clone(),
    );
    r.register(
        "pool_max_connections",
        "Most handle-pool database connections (--max-handles)",
        m.pool_max.clone(),
    );
    r.register(
        "pool_checkouts",
        "Handle-pool connections handed to a handle",
        m.pool_checkouts.clone(),
    );
    r.register(
        "pool_waits",
        "Checkouts that found every connection in use and waited for one to come back",
        m.pool_waits.clone(),
    );
    r.register_with_unit(
        "pool_wait",
        "Time a handle took to get a connection (waiting and connecting), successful or not",
        Unit::Seconds,
        m.pool_wait.clone(),
    );
    r.register(
        "pool_timeouts",
        "Checkouts that gave up with every connection busy (EAGAIN on the mount, 503 over HTTP)",
        m.pool_timeouts.clone(),
    );
    r.register(
        "pool_connections_opened",
        "New handle-pool database connections made",
        m.pool_opened.clone(),
    );
    r.register(
        "reconnects",
        "Pooled connections found dead (a server restart or failover) and replaced",
        m.reconnects.clone(),
    );
    r.register_with_unit(
        "served",
        "Image bytes handed to readers by where they came from (memory, disk, database); \
         passthrough reads bypass pgbootfs and are not counted",
        Unit::Bytes,
        m.served.clone(),
    );
    r.register(
        "passthrough_opens",
        "Opens the kernel serves itself from the disk cache (FUSE passthrough)",
        m.passthrough_opens.clone(),
    );
    r.register(
        "database_errors",
        "Failed image reads by class: busy, unavailable, gone, broken",
        m.db_errors.clone(),
    );
    r.register_with_unit(
        "catalog_refresh_duration",
        "Time to load the catalog from the database",
        Unit::Seconds,
        m.refresh.clone(),
    );
    r.register(
        "catalog_refreshes",
        "Catalog loads that succeeded",
        m.refreshes.clone(),
    );
    r.register(
        "catalog_refresh_failures",
        "Catalog loads that failed (the previous tree stays)",
        m.refresh_failures.clone(),
    );
    r.register_with_unit(
        "catalog_age",
        "Time since the catalog was last loaded successfully",
        Unit::Seconds,
        m.catalog_age.clone(),
    );
    r.register(
        "catalog_files",
        "Files in the catalog",
        m.catalog_files.clone(),
    );
    r.register_with_unit(
        "catalog",
        "Bytes of the files in the catalog",
        Unit::Bytes,
        m.catalog_bytes.clone(),
    );
    r.register(
        "http_requests",
        "HTTP requests answered, by method and status",
        m.http_requests.clone(),
    );
    r.register_with_unit(
        "http_sent",
        "HTTP body bytes sent",
        Unit::Bytes,
        m.http_sent.clone(),
    );
    r.register_with_unit(
        "http_request_duration",
        "Time from a complete request to its last byte sent",
        Unit::Seconds,
        m.http_duration.clone(),
    );
    r.register_with_unit(
        "http_first_byte",
        "Time from a complete request to its status line and headers sent",
        Unit::Seconds,
        m.http_first_byte.clone(),
    );
    r.register(
        "fuse_operations",
        "FUSE requests by kind",
        m.fuse_ops.clone(),
    );
    r.register(
        "http_connections",
        "HTTP connections open now",
        m.http_connections.clone(),
    );
    r.register(
        "http_connections_limit",
        "HTTP connections the server holds at most (--http-max-connections)",
        m.http_connections_limit.clone(),
    );
    r.register(
        "http_client_connections_limit",
        "HTTP connections one client address may hold (64 x --http-per-client)",
        m.http_client_connections_limit.clone(),
    );
    r.register(
        "http_clients",
        "Client addresses holding HTTP connections now (trusted proxies not counted)",
        m.http_clients.clone(),
    );
    r.register(
        "http_client_connections_max",
        "HTTP connections held now by the client address that holds the most",
        m.http_client_connections_max.clone(),
    );
    r.register(
        "http_connections_refused",
        "HTTP connections refused at once, by reason: server_full (503), client_full \
         (503), not_allowed (403)",
        m.http_refused.clone(),
    );
    Metrics { registry: r, ..m }
});

fn m() -> &'static Metrics {
    &METRICS
}

/// Installs the function read at each scrape for the state gauges.
pub fn set_sampler(f: impl Fn() -> Sample + Send + Sync + 'static) {
    if let Ok(mut s) = m().sampler.lock() {
        *s = Some(Box::new(f));
    }
}

/// The registry in the Prometheus text format, or OpenMetrics text when
/// `openmetrics` (the scraper's Accept asked for it).
pub fn encode(openmetrics: bool) -> String {
    let m = m();
    let sample = m
        .sampler
        .lock()
        .ok()
        .and_then(|s| s.as_ref().map(|f| f()))
        .unwrap_or_default();
    let gauge = |g: &Gauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
    gauge(&m.handles_open, sample.handles_open);
    gauge(&m.handles_connected, sample.handles_connected);
    gauge(
        &m.pool_connections.get_or_create(&[("state", "in_use")]),
        sample.pool_in_use,
    );
    gauge(
        &m.pool_connections.get_or_create(&[("state", "idle")]),
        sample.pool_idle,
    );
    gauge(&m.pool_max, sample.pool_max);
    gauge(&m.catalog_files, sample.catalog_files);
    gauge(&m.catalog_bytes, sample.catalog_bytes);
    if let Some(at) = m.loaded_at.lock().ok().and_then(|t| *t) {
        m.catalog_age.set(at.elapsed().as_secs_f64());
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = if openmetrics {
        text::encode(&mut out, &m.registry)
    } else {
        prometheus_text::encode(&mut out, &m.registry)
    };
    out
}

/// The HTTP connection caps in force.
pub fn http_connection_limits(server: usize, per_client: usize) {
    let m = m();
    m.http_connections_limit
        .set(i64::try_from(server).unwrap_or(i64::MAX));
    m.http_client_connections_limit
        .set(i64::try_from(per_client).unwrap_or(i64::MAX));
}

/// HTTP connections now: open in all, client addresses holding any, and the most
/// one address holds.
pub fn http_connections(open: usize, clients: usize, busiest: usize) {
    let m = m();
    let set = |g: &Gauge, v: usize| g.set(i64::try_from(v).unwrap_or(i64::MAX));
    set(&m.http_connections, open);
    set(&m.http_clients, clients);
    set(&m.http_client_connections_max, busiest);
}

/// An HTTP connection refused at once (`server_full`, `client_full`, `not_allowed`).
pub fn http_refused(reason: &'static str) {
    m().http_refused.get_or_create(&[("reason", reason)]).inc();
}

/// A handle got a connection after `took`; `waited` if none was free at first.
pub fn pool_checkout(took: Duration, waited: bool) {
    let m = m();
    m.pool_checkouts.inc();
    if waited {
        m.pool_waits.inc();
    }
    m.pool_wait.observe(took.as_secs_f64());
}

/// A handle gave up waiting for a connection after `took`.
pub fn pool_timeout(took: Duration) {
    m().pool_timeouts.inc();
    m().pool_wait.observe(took.as_secs_f64());
}

/// The handle pool made a new connection.
pub fn pool_connection_opened() {
    m().pool_opened.inc();
}

/// A dead pooled connection was discarded for a new one.
pub fn reconnect() {
    m().reconnects.inc();
}

/// `bytes` went to a reader from `source`.
pub fn served(source: Source, bytes: u64) {
    if bytes > 0 {
        m().served
            .get_or_create(&[("source", source.label())])
            .inc_by(bytes);
    }
}

/// An open the kernel will serve from the disk cache by itself.
pub fn passthrough_open() {
    m().passthrough_opens.inc();
}

/// An image read failed; `class` is busy, unavailable, gone or broken.
pub fn database_error(class: &'static str) {
    m().db_errors.get_or_create(&[("class", class)]).inc();
}

/// A catalog load took `took` and succeeded or not.
pub fn catalog_refreshed(took: Duration, ok: bool) {
    let m = m();
    m.refresh.observe(took.as_secs_f64());
    if ok {
        m.refreshes.inc();
        if let Ok(mut at) = m.loaded_at.lock() {
            *at = Some(Instant::now());
        }
    } else {
        m.refresh_failures.inc();
    }
}

/// An HTTP request was answered with `status`, `sent` body bytes, after `took`.
pub fn http_request(method: &str, status: u16, sent: u64, took: Duration) {
    let m = m();
    // Only the methods HTTP defines: a client cannot grow the label set.
    let method = match method {
        "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "OPTIONS" | "PATCH" | "TRACE" | "CONNECT" => {
            method
        }
        _ => "other",
    };
    m.http_requests
        .get_or_create(&[
            ("method", method.to_string()),
            ("status", status.to_string()),
        ])
        .inc();
    m.http_sent.inc_by(sent);
    m.http_duration.observe(took.as_secs_f64());
}

/// An HTTP response's head went out `took` after the request was complete.
pub fn http_first_byte(took: Duration) {
    m().http_first_byte.observe(took.as_secs_f64());
}

/// A FUSE request of kind `op` arrived.
pub fn fuse_op(op: &'static str) {
    m().fuse_ops.get_or_create(&[("op", op)]).inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        served(Source::Memory, 10);
        http_request("BREW", 405, 5, Duration::from_millis(3));
        let text = encode(false);
        for name in [
            "pgbootfs_served_bytes_total{source=\"memory\"}",
            "pgbootfs_http_requests_total{method=\"other\",status=\"405\"}",
            "pgbootfs_http_sent_bytes_total",
            "pgbootfs_http_request_duration_seconds_bucket{le=\"0.001\"}",
            "pgbootfs_catalog_refresh_duration_seconds_count",
            "pgbootfs_pool_wait_seconds_sum",
            "pgbootfs_catalog_bytes ",
            "pgbootfs_build_info{version=",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        let om = encode(true);
        assert!(om.ends_with("# EOF\n"), "{om}");
    }
}
