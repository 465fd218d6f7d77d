//! `pgbootfs serve` and `pgbootfs mount --http`: the same tree over HTTP, as a
//! MAAS-compatible simplestreams mirror, through the same [`Handle`]s as the mount.
//!
//! tiny_http parses requests; everything a response needs is done here and in
//! `response`, which writes raw on the request's writer so that every body has a
//! Content-Length (never chunked), a 304 carries no `Content-Length: 0`, and image
//! bytes go out in chunk-sized writes straight from the handle's buffer. A file's
//! database side is set up only when its response's turn to be written comes
//! (pipelined requests hold no connection while they wait), and ends with the body,
//! on disconnect or on error.

pub mod conditional;
mod conn;
mod listing;
pub mod path;
mod response;
mod simplestreams;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use log::{error, info, warn};
use tiny_http::{Method, Request, Server};

use crate::catalog::{Catalog, FileInfo, Node, NodeKind};
use crate::daemon::{CacheDir, Services, StartError, StopSignals};
use crate::db::DbConfig;
use crate::handle::{HandlePool, PoolOptions};

use conditional::RangeAsk;
use path::{PathError, Target};
use response::{Body, Reply};

/// Options of the HTTP server.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Address to listen on, e.g. `127.0.0.1:8080` (port 0 picks a free one).
    pub listen: String,
    /// Requests handled at once; more wait in a queue.
    pub workers: usize,
    /// A client that accepts no bytes for this long is dropped.
    pub send_timeout: Duration,
    /// How long a download waits for a free handle connection before a 503.
    pub pool_wait: Duration,
    /// A connection that sends no complete request for this long is cut (408 if it
    /// had started one); this is also the keep-alive idle limit.
    pub header_timeout: Duration,
    /// Serve `/metrics` only (`mount --metrics ADDR`), 404 for everything else.
    pub metrics_only: bool,
}

/// A running HTTP server; its threads live as long as the process.
pub struct HttpServer {
    addr: SocketAddr,
}

impl HttpServer {
    /// The address actually bound (with the real port when 0 was asked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Options of `pgbootfs serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The HTTP side.
    pub http: HttpOptions,
    /// How often the catalog is reloaded.
    pub refresh: Duration,
    /// Handle connections and the memory cache.
    pub pool: PoolOptions,
    /// The disk cache, if any.
    pub cache_dir: Option<CacheDir>,
}

/// Why `pgbootfs serve` could not start.
#[derive(Debug)]
pub enum ServeError {
    /// The catalog or the disk cache could not be set up.
    Start(StartError),
    /// Listening or starting threads failed.
    Io(io::Error),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Start(e) => e.fmt(f),
            ServeError::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ServeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServeError::Start(e) => Some(e),
            ServeError::Io(e) => Some(e),
        }
    }
}

/// `pgbootfs serve`: HTTP only, until SIGINT, SIGTERM or SIGHUP.
pub fn serve(db: &DbConfig, opts: &ServeOptions) -> Result<(), ServeError> {
    let mut signals = StopSignals::catch().map_err(ServeError::Io)?;
    let services =
        Services::start(db, &opts.pool, opts.cache_dir.as_ref()).map_err(ServeError::Start)?;
    services
        .refresh_every(opts.refresh, |_| {})
        .map_err(ServeError::Io)?;
    let server =
        start(services.catalog.clone(), &services.pool, &opts.http).map_err(ServeError::Io)?;
    info!(
        "serving {} (refresh every {}s)",
        db.describe(),
        opts.refresh.as_secs()
    );
    crate::daemon::notify_ready(
        &format!("serving http://{}", server.addr()),
        &services.catalog,
    );
    if let Some(sig) = signals.wait() {
        crate::daemon::notify_stopping(&format!("signal {sig}"));
    }
    // Exiting closes every handle connection; the server ends their transactions.
    Ok(())
}

/// Header bytes a client may send before its request is complete: more gets a 431.
const MAX_HEADER: u64 = 64 << 10;

struct Ctx {
    catalog: Arc<Catalog>,
    pool: HandlePool,
    port: u16,
    watchdog: Arc<conn::Watchdog>,
    metrics_only: bool,
}

/// Binds, then starts the accept thread and `workers` request threads.
pub fn start(
    catalog: Arc<Catalog>,
    pool: &HandlePool,
    opts: &HttpOptions,
) -> io::Result<HttpServer> {
    let addr = resolve(&opts.listen)?;
    let listener = conn::bind(addr, opts.send_timeout)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    let addr = listener.local_addr()?;
    let workers = opts.workers.max(1);
    let watchdog = Arc::new(conn::Watchdog::new(
        addr.port(),
        opts.header_timeout,
        MAX_HEADER,
    ));
    watchdog.spawn()?;
    let ctx = Arc::new(Ctx {
        catalog,
        pool: pool.with_timeout(opts.pool_wait),
        port: addr.port(),
        watchdog: watchdog.clone(),
        metrics_only: opts.metrics_only,
    });
    // Unbounded like tiny_http's own queue: the feeder must never block, so every
    // complete request is known to the watchdog at once, however busy the workers.
    let (tx, rx) = channel::<Request>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..workers {
        let ctx = ctx.clone();
        let rx = rx.clone();
        std::thread::Builder::new()
            .name(format!("http-{i}"))
            .spawn(move || worker(&ctx, &rx))?;
    }
    std::thread::Builder::new()
        .name("http-accept".into())
        .spawn(move || accept_loop(listener, tx, watchdog))?;
    // Printed whatever the log level: scripts and tests read the bound port here.
    if opts.metrics_only {
        eprintln!("pgbootfs: metrics on http://{addr}/metrics");
    } else {
        eprintln!("pgbootfs: listening on http://{addr}");
    }
    info!(
        "http: {workers} workers, send timeout {}s, header timeout {}s",
        opts.send_timeout.as_secs(),
        opts.header_timeout.as_secs()
    );
    Ok(HttpServer { addr })
}

fn resolve(listen: &str) -> io::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    listen
        .to_socket_addrs()
        .map_err(|e| io::Error::new(e.kind(), format!("bad listen address {listen:?}: {e}")))?
        .next()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("listen address {listen:?} resolves to nothing"),
            )
        })
}

/// Feeds requests to the workers. tiny_http's accept thread ends at the first
/// accept error (EMFILE, ECONNABORTED, ...) and panics when it cannot duplicate an
/// accepted socket: either way a new server is built on the same listening socket,
/// and the old one is drained for the connections it had accepted.
fn accept_loop(listener: TcpListener, tx: Sender<Request>, watchdog: Arc<conn::Watchdog>) {
    let mut failures: u32 = 0;
    loop {
        let (copy, server) = match serve_on(&listener) {
            Ok(s) => s,
            Err(e) => {
                warn!("http: cannot restart the listener: {e}");
                backoff(&mut failures);
                continue;
            }
        };
        loop {
            match server.recv_timeout(Duration::from_secs(1)) {
                Ok(Some(rq)) => {
                    failures = 0;
                    watchdog.request_arrived(rq.remote_addr().copied());
                    if tx.send(rq).is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    warn!("http: accepting connections failed ({e}); listening again");
                    break;
                }
            }
            if !copy.alive() {
                warn!("http: accepting connections failed (accept thread died); listening again");
                break;
            }
        }
        let drain_tx = tx.clone();
        let drain_dog = watchdog.clone();
        let _ = std::thread::Builder::new()
            .name("http-drain".into())
            .spawn(move || drain(server, drain_tx, &drain_dog));
        backoff(&mut failures);
    }
}

/// A tiny_http server on a copy of `listener`, and the watch on that copy.
fn serve_on(listener: &TcpListener) -> Result<(conn::ListenerCopy, Server), String> {
    let l = listener.try_clone().map_err(|e| e.to_string())?;
    let copy = conn::ListenerCopy::new(&l).map_err(|e| e.to_string())?;
    let server = Server::from_listener(l, None).map_err(|e| e.to_string())?;
    Ok((copy, server))
}

fn backoff(failures: &mut u32) {
    let ms = 50u64 << (*failures).min(5);
    *failures += 1;
    std::thread::sleep(Duration::from_millis(ms.min(1000)));
}

/// Passes on requests from connections a dead accept thread had accepted, until
/// none has come for a while.
fn drain(server: Server, tx: Sender<Request>, watchdog: &conn::Watchdog) {
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_secs(300) {
        if let Ok(Some(rq)) = server.recv_timeout(Duration::from_secs(1)) {
            last = Instant::now();
            watchdog.request_arrived(rq.remote_addr().copied());
            if tx.send(rq).is_err() {
                return;
            }
        }
    }
}

fn worker(ctx: &Ctx, rx: &Mutex<Receiver<Request>>) {
    loop {
        let next = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(rq) = next else { return };
        // A bug in one request must not cost a worker.
        if catch_unwind(AssertUnwindSafe(|| serve_one(ctx, rq))).is_err() {
            error!("http: a request handler panicked");
        }
    }
}

/// Values of every header `name` of the request.
fn headers<'a>(rq: &'a Request, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    rq.headers()
        .iter()
        .filter(move |h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

fn header<'a>(rq: &'a Request, name: &'a str) -> Option<&'a str> {
    headers(rq, name).next()
}

/// Control characters of a request target, escaped for the log.
fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

fn serve_one(ctx: &Ctx, rq: Request) {
    let started = Instant::now();
    let method = rq.method().clone();
    let url = printable(rq.url());
    let peer = rq.remote_addr().copied();
    let inm: Vec<&str> = headers(&rq, "If-None-Match").collect();
    let reply = route(ctx, &rq).validated(&inm, header(&rq, "If-Modified-Since"));
    let (status, sent, note) =
        response::send(ctx.port, rq, reply, method == Method::Head, peer, started);
    ctx.watchdog.request_done(peer);
    crate::metrics::http_request(method.as_str(), status, sent, started.elapsed());
    let peer = peer.map_or_else(|| "-".to_string(), |p| p.to_string());
    info!(
        target: "pgbootfs::access",
        "{peer} {method} {url} {status} {sent} {}ms{note}",
        started.elapsed().as_millis()
    );
}

fn route(ctx: &Ctx, rq: &Request) -> Reply {
    if !matches!(rq.method(), Method::Get | Method::Head) {
        return Reply::text(405).header("Allow", "GET, HEAD");
    }
    if rq.url().split('?').next() == Some("/metrics") {
        return metrics_reply(rq);
    }
    if ctx.metrics_only {
        return Reply::text(404);
    }
    let target = match path::parse(rq.url()) {
        Ok(t) => t,
        Err(PathError::Bad) => return Reply::text(400),
        Err(PathError::NotFound) => return Reply::text(404),
    };
    let tree = ctx.catalog.snapshot();
    let updated = tree
        .get(crate::catalog::ROOT)
        .map_or(SystemTime::UNIX_EPOCH, |n| n.mtime);
    let parts = match target {
        Target::StreamIndex => {
            return Reply::json(&simplestreams::index(
                &tree,
                &conditional::fmt_date(updated),
            ))
            .header("Last-Modified", conditional::fmt_date(updated));
        }
        Target::StreamProducts => {
            return Reply::json(&simplestreams::products(
                &tree,
                &conditional::fmt_date(updated),
            ))
            .header("Last-Modified", conditional::fmt_date(updated));
        }
        Target::Tree(parts, trailing) => (parts, trailing),
    };
    let (parts, trailing) = parts;
    let Some(node) = tree.resolve(parts.iter().map(String::as_str)) else {
        return Reply::text(404);
    };
    match &node.kind {
        NodeKind::Dir(_) => {
            let wants_json =
                headers(rq, "Accept").any(|v| v.to_ascii_lowercase().contains("application/json"));
            let reply = if wants_json {
                Reply::json(&listing::json(&tree, node))
            } else {
                let base = if parts.len() < path_depth(rq.url()) {
                    "/MAAS/images-stream"
                } else {
                    ""
                };
                Reply::new(
                    200,
                    Body::Bytes(listing::html(&tree, node, base).into_bytes()),
                )
                .header("Content-Type", "text/html; charset=utf-8")
            };
            reply.header("Vary", "Accept")
        }
        NodeKind::File(_) if trailing => Reply::text(404),
        NodeKind::File(f) => file_reply(ctx, rq, node, f),
    }
}

/// The metrics, as OpenMetrics text if the scraper asks for it, else in the
/// Prometheus text format.
fn metrics_reply(rq: &Request) -> Reply {
    let openmetrics = headers(rq, "Accept").any(|v| v.contains("application/openmetrics-text"));
    let (body, content_type) = if openmetrics {
        (true, crate::metrics::OPENMETRICS_CONTENT_TYPE)
    } else {
        (false, crate::metrics::PROMETHEUS_CONTENT_TYPE)
    };
    Reply::new(200, Body::Bytes(crate::metrics::encode(body).into_bytes()))
        .header("Content-Type", content_type)
        .header("Vary", "Accept")
}

/// Number of non-empty segments of the raw target (to tell whether the MAAS prefix
/// was used).
fn path_depth(url: &str) -> usize {
    url.split(['?', '#'])
        .next()
        .unwrap_or("")
        .split('/')
        .filter(|s| !s.is_empty())
        .count()
}

fn file_reply(ctx: &Ctx, rq: &Request, node: &Node, f: &FileInfo) -> Reply {
    let tag = conditional::etag(&f.sha256);
    let modified = conditional::fmt_date(node.mtime);
    // no-cache: a cache may keep the image but must revalidate it, which costs a
    // 304 and no bytes; heuristic freshness could serve an image replaced since.
    let validators = |r: Reply| {
        r.header("ETag", tag.clone())
            .header("Last-Modified", modified.clone())
            .header("Cache-Control", "no-cache")
    };
    // If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2).
    let inm: Vec<&str> = headers(rq, "If-None-Match").collect();
    let not_modified = if !inm.is_empty() {
        conditional::none_match_hits(&inm, &tag)
    } else {
        header(rq, "If-Modified-Since")
            .and_then(conditional::parse_date)
            .is_some_and(|since| conditional::not_modified_since(node.mtime, since))
    };
    if not_modified {
        return validators(Reply::new(304, Body::None));
    }
    // Range is defined for GET only; a stale If-Range gets the whole file.
    let mut ask = match header(rq, "Range") {
        Some(v) if *rq.method() == Method::Get => conditional::parse_range(v, f.size),
        _ => RangeAsk::Full,
    };
    if ask != RangeAsk::Full
        && header(rq, "If-Range").is_some_and(|v| !conditional::if_range_holds(v, &tag, node.mtime))
    {
        ask = RangeAsk::Full;
    }
    let handle = || Box::new(ctx.pool.open(f, &node.path));
    let reply = match ask {
        RangeAsk::Unsatisfiable => {
            Reply::text(416).header("Content-Range", format!("bytes */{}", f.size))
        }
        RangeAsk::Part(first, last) => Reply::new(
            206,
            Body::File {
                handle: handle(),
                start: first,
                len: last - first + 1,
            },
        )
        .header("Content-Range", format!("bytes {first}-{last}/{}", f.size))
        .header("Content-Type", "application/octet-stream"),
        RangeAsk::Full => Reply::new(
            200,
            Body::File {
                handle: handle(),
                start: 0,
                len: f.size,
            },
        )
        .header("Content-Type", "application/octet-stream"),
    };
    validators(reply.header("Accept-Ranges", "bytes"))
}
