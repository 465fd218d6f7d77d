//! `pgbootfs serve` and `pgbootfs mount --http`: the same tree over HTTP, as a
//! MAAS-compatible simplestreams mirror, through the same [`Handle`]s as the mount.
//!
//! Each connection has a thread that reads one request head at a time, strictly
//! (`request`: no request body, no doubtful framing; a refusal closes the
//! connection), under a time and size limit (`conn`), within the per-client and
//! worker limits (`clients`). `response` writes every body with a Content-Length
//! (never chunked), a 304 with no `Content-Length: 0`, and image bytes in
//! chunk-sized writes straight from the handle's buffer. Pipelined requests are
//! read only after the previous response is written, so a file's database side is
//! set up only when its turn comes, and ends with the body, on disconnect or on
//! error.

mod clients;
pub mod conditional;
mod conn;
mod inside;
mod listing;
pub mod path;
#[cfg(test)]
mod properties;
pub mod request;
mod response;
mod simplestreams;

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;
use log::{debug, info, warn};

use crate::catalog::{Catalog, FileInfo, Node, NodeKind};
use crate::daemon::{CacheDir, Services, StartError, StopSignals};
use crate::db::DbConfig;
use crate::handle::{HandlePool, PoolOptions};

use clients::{Clients, ConnectionSlot, Full, Policy};
use conditional::RangeAsk;
use conn::HeadRead;
pub use conn::default_max_connections;
use path::{PathError, Target};
use request::{Head, Local, Method};
use response::{Body, Reply, Sent};

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
    /// Requests one client may have in service at once; its further requests wait.
    pub per_client: usize,
    /// Connections open at once over all clients; more are answered 503 and closed
    /// by the accept thread. 0: [`default_max_connections`].
    pub max_connections: usize,
    /// Networks that may connect (empty: everyone).
    pub allow_from: Vec<IpNet>,
    /// Proxies whose X-Forwarded-For names the client.
    pub trusted_proxies: Vec<IpNet>,
    /// Serve `/metrics` only (`mount --metrics ADDR`), 404 for everything else.
    pub metrics_only: bool,
    /// Serve the contents of browsable images under `/.inside` (`--inside`).
    pub inside: bool,
    /// With `inside`, also files that are not world-readable in their image.
    pub inside_private: bool,
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
    /// MAAS 3.5+: the image storage directory (`--image-storage`; else MAAS's own).
    pub image_storage: Option<std::path::PathBuf>,
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
    let services = Services::start(
        db,
        &opts.pool,
        opts.cache_dir.as_ref(),
        opts.image_storage.as_deref(),
    )
    .map_err(ServeError::Start)?;
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
const MAX_HEADER: usize = 64 << 10;

/// Stack of a connection thread: it runs the request handler and the handle's
/// reads (buffers on the heap) and may open a database connection. Reserved, not
/// used: a flood of idle connections costs a few pages each.
const CONNECTION_STACK: usize = 1 << 20;

struct Ctx {
    catalog: Arc<Catalog>,
    pool: HandlePool,
    clients: Arc<Clients>,
    header_timeout: Duration,
    send_timeout: Duration,
    hostname: Option<String>,
    metrics_only: bool,
    inside: Option<inside::Inside>,
}

/// Binds, then starts the accept thread; each connection gets a thread of its own,
/// and at most `workers` requests are in service at once.
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
    let clients = Clients::new(Policy {
        allow_from: opts.allow_from.clone(),
        trusted_proxies: opts.trusted_proxies.clone(),
        per_client: opts.per_client,
        workers,
        max_connections: match opts.max_connections {
            0 => default_max_connections(),
            n => n,
        },
        report: !opts.metrics_only,
    });
    let ctx = Arc::new(Ctx {
        catalog,
        pool: pool.with_timeout(opts.pool_wait),
        clients,
        header_timeout: opts.header_timeout,
        send_timeout: opts.send_timeout,
        hostname: request::hostname(),
        metrics_only: opts.metrics_only,
        inside: opts.inside.then(|| inside::Inside {
            images: crate::inside::Images::new(pool.with_timeout(opts.pool_wait)),
            private: opts.inside_private,
        }),
    });
    let accept_ctx = ctx.clone();
    std::thread::Builder::new()
        .name("http-accept".into())
        .spawn(move || {
            // Spawn failures (out of threads or memory) come in floods: one line
            // a second, with the count.
            let mut unspawned = 0u64;
            let mut last_warned: Option<Instant> = None;
            // The same for connections over --http-max-connections.
            let mut turned_away = 0u64;
            let mut last_full: Option<Instant> = None;
            conn::accept_loop(listener, move |stream, peer| {
                let ctx = accept_ctx.clone();
                // Admission is decided here, in accept order, so a connection cap
                // counts connections in the order they came.
                let admitted = admit(&ctx, peer);
                if admitted
                    .as_ref()
                    .is_err_and(|r| r.full == Some(Full::Server))
                {
                    // No thread for it: a flood past the cap costs one write and
                    // one close each, here.
                    crate::metrics::http_refused("server_full");
                    conn::refuse_now(stream, &full_reply().to_bytes());
                    turned_away += 1;
                    if last_full.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        warn!(
                            "http: {} connections open (--http-max-connections): \
                             refused {peer} with 503 ({turned_away} refused so)",
                            ctx.clients.max_connections()
                        );
                        last_full = Some(Instant::now());
                    }
                    return;
                }
                let spawned = std::thread::Builder::new()
                    .name("http-conn".into())
                    .stack_size(CONNECTION_STACK)
                    .spawn(move || connection(&ctx, stream, peer, admitted));
                if let Err(e) = spawned {
                    // The stream went with the closure: the client sees a close.
                    unspawned += 1;
                    if last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        warn!(
                            "http: no thread for {peer}: {e} ({unspawned} connections closed so)"
                        );
                        last_warned = Some(Instant::now());
                    }
                }
            })
        })?;
    // Printed whatever the log level: scripts and tests read the bound port here.
    if opts.metrics_only {
        eprintln!("pgbootfs: metrics on http://{addr}/metrics");
    } else {
        eprintln!("pgbootfs: listening on http://{addr}");
    }
    info!(
        "http: {workers} workers, {} per client, at most {} connections, send timeout {}s, \
         header timeout {}s{}{}",
        opts.per_client.max(1),
        ctx.clients.max_connections(),
        opts.send_timeout.as_secs(),
        opts.header_timeout.as_secs(),
        describe_nets(" allow from ", &opts.allow_from),
        describe_nets(" trusted proxies ", &opts.trusted_proxies),
    );
    Ok(HttpServer { addr })
}

fn describe_nets(label: &str, nets: &[IpNet]) -> String {
    if nets.is_empty() {
        return String::new();
    }
    let list: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
    format!(",{label}{}", list.join(","))
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

/// One access-log line.
fn access(who: &str, method: &str, target: &str, sent: &Sent, started: Instant) {
    crate::metrics::http_request(method, sent.status, sent.bytes, started.elapsed());
    info!(
        target: "pgbootfs::access",
        "{who} {method} {} {} {} {}ms{}",
        printable(target),
        sent.status,
        sent.bytes,
        started.elapsed().as_millis(),
        sent.note
    );
}

/// A final answer that closes the connection (refusals, timeouts), logged as one
/// access line with why.
fn refuse(s: TcpStream, peer: SocketAddr, started: Instant, status: u16, why: &str) {
    let reply = Reply::text(status).header("Connection", "close");
    let reply = if status == 503 {
        reply.header("Retry-After", response::RETRY_AFTER)
    } else {
        reply
    };
    let sent = Sent {
        status,
        bytes: 0,
        note: format!(" ({why})"),
        complete: true,
    };
    access(&peer.to_string(), "-", "-", &sent, started);
    conn::answer_and_close(s, &reply.to_bytes());
}

/// Why a new connection is refused.
struct Refusal {
    status: u16,
    why: String,
    /// The cap it is over, if that is why.
    full: Option<Full>,
}

/// Whether a new connection may be served: its slot, or its refusal.
type Admission = Result<ConnectionSlot, Refusal>;

fn admit(ctx: &Ctx, peer: SocketAddr) -> Admission {
    let ip = clients::canonical(peer.ip());
    if !ctx.clients.is_proxy(ip) && !ctx.clients.allowed(ip) {
        crate::metrics::http_refused("not_allowed");
        return Err(Refusal {
            status: 403,
            why: "not in --allow-from".to_string(),
            full: None,
        });
    }
    ctx.clients.connect(ip).map_err(|full| {
        let why = match full {
            Full::Server => format!(
                "the server holds {} connections (--http-max-connections)",
                ctx.clients.max_connections()
            ),
            Full::Client => {
                crate::metrics::http_refused("client_full");
                format!(
                    "{ip} already holds {} connections (--http-per-client)",
                    ctx.clients.connection_cap()
                )
            }
        };
        Refusal {
            status: 503,
            why,
            full: Some(full),
        }
    })
}

/// The answer to a connection over `--http-max-connections`.
fn full_reply() -> Reply {
    Reply::text(503)
        .header("Connection", "close")
        .header("Retry-After", response::RETRY_AFTER)
}

/// Serves one connection until it closes, fails or breaks a rule.
fn connection(ctx: &Ctx, mut s: TcpStream, peer: SocketAddr, admitted: Admission) {
    let started = Instant::now();
    let _slot = match admitted {
        Ok(slot) => slot,
        Err(r) => return refuse(s, peer, started, r.status, &r.why),
    };
    let proxy = ctx.clients.is_proxy(peer.ip());
    let _ = s.set_nodelay(true);
    let _ = s.set_write_timeout(Some(ctx.send_timeout));
    let local = Local {
        addr: match s.local_addr() {
            Ok(a) => a,
            Err(_) => return,
        },
        hostname: ctx.hostname.clone(),
    };
    let mut buf = Vec::new();
    let mut served = 0u64;
    loop {
        let started = Instant::now();
        let end = match conn::read_head(&mut s, &mut buf, started + ctx.header_timeout, MAX_HEADER)
        {
            HeadRead::Complete(end) => end,
            HeadRead::Closed => return,
            HeadRead::TimedOut => {
                // An idle keep-alive connection is closed quietly; a started or
                // never-sent request is told why.
                if served == 0 || !buf.is_empty() {
                    let why = format!(
                        "cut: no complete request in {}s, {} header bytes pending",
                        ctx.header_timeout.as_secs(),
                        buf.len()
                    );
                    return refuse(s, peer, started, 408, &why);
                }
                debug!("http: closing idle connection from {peer}");
                return;
            }
            HeadRead::TooLarge => {
                let why = format!("cut: more than {MAX_HEADER} header bytes");
                return refuse(s, peer, started, 431, &why);
            }
            HeadRead::LineTooLong => {
                let why = format!(
                    "refused: request line longer than {} bytes",
                    request::MAX_REQUEST_LINE
                );
                return refuse(s, peer, started, 400, &why);
            }
            HeadRead::Failed(e) => {
                debug!("http: connection from {peer} failed: {e}");
                return;
            }
        };
        let head = match request::parse(&buf[..end], &local) {
            Ok(h) => h,
            Err(why) => return refuse(s, peer, started, 400, &format!("refused: {why}")),
        };
        buf.drain(..end);
        served += 1;
        if !serve_one(ctx, &mut s, &head, peer, proxy, started) {
            // Cut short: the client must see the end at once, not wait for the rest.
            return;
        }
        if head.wants_close() {
            // Anything the client pipelined after this request is still unread:
            // closing now would reset the connection under the response.
            return conn::linger_close(s);
        }
    }
}

/// Serves one request; returns whether the connection may carry another.
fn serve_one(
    ctx: &Ctx,
    s: &mut TcpStream,
    head: &Head,
    peer: SocketAddr,
    proxy: bool,
    started: Instant,
) -> bool {
    let (client, who) = if proxy {
        let c = ctx
            .clients
            .client_of(peer.ip(), head.values("x-forwarded-for"));
        (c, format!("{c} via {peer}"))
    } else {
        (clients::canonical(peer.ip()), peer.to_string())
    };
    let reply = if proxy && !ctx.clients.allowed(client) {
        Reply::text(403)
    } else {
        let _slot = ctx.clients.begin(client);
        let inm: Vec<&str> = head.values("if-none-match").collect();
        let reply = route(ctx, head).validated(&inm, head.value("if-modified-since"));
        let reply = close_if(reply, head.wants_close());
        let sent = response::send(s, reply, head.method == Method::Head, started);
        access(&who, &head.method.to_string(), &head.target, &sent, started);
        return sent.complete;
    };
    let mut sent = response::send(
        s,
        close_if(reply, head.wants_close()),
        head.method == Method::Head,
        started,
    );
    sent.note.push_str(" (not in --allow-from)");
    access(&who, &head.method.to_string(), &head.target, &sent, started);
    sent.complete
}

/// The metrics, as OpenMetrics text if the scraper asks for it, else in the
/// Prometheus text format.
fn metrics_reply(rq: &Head) -> Reply {
    let openmetrics = rq
        .values("accept")
        .any(|v| v.contains("application/openmetrics-text"));
    let content_type = if openmetrics {
        crate::metrics::OPENMETRICS_CONTENT_TYPE
    } else {
        crate::metrics::PROMETHEUS_CONTENT_TYPE
    };
    Reply::new(
        200,
        Body::Bytes(crate::metrics::encode(openmetrics).into_bytes()),
    )
    .header("Content-Type", content_type)
    .header("Vary", "Accept")
}

fn close_if(reply: Reply, close: bool) -> Reply {
    if close {
        reply.header("Connection", "close")
    } else {
        reply
    }
}

fn route(ctx: &Ctx, rq: &Head) -> Reply {
    if !matches!(rq.method, Method::Get | Method::Head) {
        return Reply::text(405).header("Allow", "GET, HEAD");
    }
    if rq.target.split('?').next() == Some("/metrics") {
        return metrics_reply(rq);
    }
    if ctx.metrics_only {
        return Reply::text(404);
    }
    let target = match path::parse(&rq.target) {
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
            let stamp = simplestreams::updated(&conditional::fmt_date(updated));
            return Reply::json_text(simplestreams::index(&tree, &stamp))
                .header("Last-Modified", conditional::fmt_date(updated));
        }
        Target::StreamProducts => {
            let stamp = simplestreams::updated(&conditional::fmt_date(updated));
            return Reply::json_text(simplestreams::products(&tree, &stamp))
                .header("Last-Modified", conditional::fmt_date(updated));
        }
        Target::ByHash(sha) => {
            // Only complete files are in the tree: an unfinished hash is a 404.
            // MAAS 3.5+ racks ask by `filename_on_disk` (a sha256 or its prefix).
            let name = sha.to_ascii_lowercase();
            return match tree.by_resource_name(&name) {
                Some(
                    node @ Node {
                        kind: NodeKind::File(f),
                        ..
                    },
                ) => file_reply(ctx, rq, node, f),
                _ => Reply::text(404),
            };
        }
        Target::Tree(parts, trailing) => (parts, trailing),
    };
    let (parts, trailing) = parts;
    if let (Some(inside), Some(inside::PREFIX)) = (&ctx.inside, parts.first().map(String::as_str)) {
        return inside::reply(inside, rq, &tree, &parts);
    }
    let Some(node) = tree.resolve(parts.iter().map(String::as_str)) else {
        return Reply::text(404);
    };
    match &node.kind {
        // As nginx and Apache answer: a page's relative links resolve against its
        // URL, and crawlers (rclone's http remote, wget -r) tell directories from
        // files by the slash, so a slashless directory would be fetched as a file.
        NodeKind::Dir(_) if !trailing => {
            Reply::text(301).header("Location", with_slash(&rq.target))
        }
        NodeKind::Dir(_) => {
            let wants_json = rq
                .values("accept")
                .any(|v| v.to_ascii_lowercase().contains("application/json"));
            let reply = if wants_json {
                Reply::json(&listing::json(&tree, node))
            } else {
                let base = if parts.len() < path_depth(&rq.target) {
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

/// The request target with a `/` after its path, its query kept as sent.
fn with_slash(target: &str) -> String {
    let end = target.find(['?', '#']).unwrap_or(target.len());
    let (path, rest) = target.split_at(end);
    let query = match rest.split('#').next() {
        Some(q) if q.starts_with('?') => q,
        _ => "",
    };
    format!("{path}/{query}")
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

fn file_reply(ctx: &Ctx, rq: &Head, node: &Node, f: &FileInfo) -> Reply {
    let tag = conditional::etag(&f.sha256);
    let handle = || Box::new(ctx.pool.open(f, &node.path));
    ranged(rq, tag, node.mtime, f.size, &|start, len| Body::File {
        handle: handle(),
        start,
        len,
    })
}

/// A file's reply, whole or in part, with its validators: `body` makes the
/// bytes from `start`, `len` long, once the conditions and the range are decided.
fn ranged(
    rq: &Head,
    tag: String,
    mtime: SystemTime,
    size: u64,
    body: &dyn Fn(u64, u64) -> Body,
) -> Reply {
    let modified = conditional::fmt_date(mtime);
    // no-cache: a cache may keep the image but must revalidate it, which costs a
    // 304 and no bytes; heuristic freshness could serve an image replaced since.
    let validators = |r: Reply| {
        r.header("ETag", tag.clone())
            .header("Last-Modified", modified.clone())
            .header("Cache-Control", "no-cache")
    };
    // The order of RFC 9110 13.2.2: If-Match, else If-Unmodified-Since; then
    // If-None-Match, else If-Modified-Since; then If-Range.
    let im: Vec<&str> = rq.values("if-match").collect();
    let precondition = if !im.is_empty() {
        conditional::match_holds(&im, &tag)
    } else {
        rq.value("if-unmodified-since")
            .and_then(conditional::parse_date)
            .is_none_or(|since| conditional::not_modified_since(mtime, since))
    };
    if !precondition {
        return validators(Reply::text(412));
    }
    let inm: Vec<&str> = rq.values("if-none-match").collect();
    let not_modified = if !inm.is_empty() {
        conditional::none_match_hits(&inm, &tag)
    } else {
        rq.value("if-modified-since")
            .and_then(conditional::parse_date)
            .is_some_and(|since| conditional::not_modified_since(mtime, since))
    };
    if not_modified {
        return validators(Reply::new(304, Body::None));
    }
    // Range is defined for GET only; a stale If-Range gets the whole file.
    let mut ask = match rq.value("range") {
        Some(v) if rq.method == Method::Get => conditional::parse_range(v, size),
        _ => RangeAsk::Full,
    };
    if ask != RangeAsk::Full
        && rq
            .value("if-range")
            .is_some_and(|v| !conditional::if_range_holds(v, &tag, mtime))
    {
        ask = RangeAsk::Full;
    }
    let reply = match ask {
        RangeAsk::Unsatisfiable => {
            Reply::text(416).header("Content-Range", format!("bytes */{size}"))
        }
        RangeAsk::Part(first, last) => Reply::new(206, body(first, last - first + 1))
            .header("Content-Range", format!("bytes {first}-{last}/{size}"))
            .header("Content-Type", "application/octet-stream"),
        RangeAsk::Full => {
            Reply::new(200, body(0, size)).header("Content-Type", "application/octet-stream")
        }
    };
    validators(reply.header("Accept-Ranges", "bytes"))
}

#[cfg(test)]
mod tests {
    use super::with_slash;

    #[test]
    fn a_directory_redirect_keeps_the_query_and_drops_a_fragment() {
        assert_eq!(with_slash("/ubuntu"), "/ubuntu/");
        assert_eq!(with_slash("/ubuntu?a=1&b"), "/ubuntu/?a=1&b");
        assert_eq!(with_slash("/ubuntu#x"), "/ubuntu/");
        assert_eq!(with_slash("/a%20b?q#f"), "/a%20b/?q");
    }
}
