//! The HTTP side against hostile clients: request smuggling, response splitting,
//! who may connect, and floods. Raw sockets on loopback, a real server and cluster.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::http::{Reply, Server};
use crate::common::*;

const SMALL: &str = "/ubuntu/amd64/ga-20.04/focal/20240101/boot-kernel";
const BIG: &str = "/ubuntu/amd64/ga-20.04/focal/20240101/squashfs";
/// Never asked for except by requests hidden behind a refused one.
const HIDDEN: &str = "/ubuntu/arm64/generic/jammy/20240202.1/boot-kernel";

struct Data {
    small: Vec<u8>,
    big: Vec<u8>,
}

fn images(big: usize) -> (Cluster, Data) {
    let (pg, mut c) = store();
    let data = Data {
        small: bytes(11, 100_000),
        big: bytes(12, big),
    };
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/ga-20.04", "20240101");
    m.file(s, "boot-kernel", &data.small);
    m.file(s, "squashfs", &data.big);
    let s = m.set("ubuntu/jammy", "arm64/generic", "20240202.1");
    m.file(s, "boot-kernel", &bytes(13, 5000));
    drop(c);
    (pg, data)
}

/// A TCP connection to `to` from the loopback address `from` (any 127/8 address
/// is ours on Linux).
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    sock.bind(&local.into()).unwrap();
    sock.connect(&to.into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Sends `bytes`, then reads until the server closes. Err if it did not close in
/// time (the read timed out).
fn exchange(s: &mut TcpStream, bytes: &[u8]) -> Result<Vec<u8>, String> {
    // The server may close before reading all of it: that is allowed.
    let _ = s.write_all(bytes);
    let mut buf = Vec::new();
    match s.read_to_end(&mut buf) {
        Ok(_) => Ok(buf),
        Err(e) => Err(format!(
            "{e} after {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(300)])
        )),
    }
}

fn status_lines(buf: &[u8]) -> usize {
    String::from_utf8_lossy(buf).matches("HTTP/1.1 ").count()
}

#[test]
fn smuggling_corpus_gets_one_400_and_a_close() {
    let (pg, data) = images(1000);
    let srv = Server::start(&pg.conninfo("postgres"), &[]);
    let port = srv.addr.port();
    let hidden = format!("GET {HIDDEN}?hidden HTTP/1.1\r\nHost: t\r\n\r\n");
    let n = hidden.len();
    let chunked = format!("{n:x}\r\n{hidden}\r\n0\r\n\r\n");
    let get = format!("GET {SMALL} HTTP/1.1\r\nHost: t\r\n");
    // Each: the head (and body) of the hostile request; the hidden request follows.
    let corpus: Vec<(&str, String)> = vec![
        (
            "TE chunked",
            format!("{get}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "TE chunked, body",
            format!("{get}Transfer-Encoding: chunked\r\n\r\n{chunked}"),
        ),
        (
            "TE chunked, identity",
            format!("{get}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
        ),
        (
            "TE gzip, chunked",
            format!("{get}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "TE xchunked with CL",
            format!("{get}Transfer-Encoding: xchunked\r\nContent-Length: {n}\r\n\r\n"),
        ),
        (
            "TE with a space before the colon",
            format!("{get}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "CL and TE",
            format!("{get}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ),
        ("CL body", format!("{get}Content-Length: {n}\r\n\r\n")),
        (
            "duplicate CL",
            format!("{get}Content-Length: 0\r\nContent-Length: {n}\r\n\r\n"),
        ),
        (
            "duplicate equal CL",
            format!("{get}Content-Length: 0\r\nContent-Length: 0\r\n\r\n"),
        ),
        ("negative CL", format!("{get}Content-Length: -1\r\n\r\n")),
        (
            "huge CL",
            format!("{get}Content-Length: 18446744073709551617\r\n\r\n"),
        ),
        ("CL list", format!("{get}Content-Length: 0, {n}\r\n\r\n")),
        (
            "obs-fold",
            format!("{get}X-Junk: a\r\n Transfer-Encoding: chunked\r\n\r\n"),
        ),
        ("tab fold", format!("{get}X-Junk: a\r\n\tb\r\n\r\n")),
        ("NUL in a name", format!("{get}X-Ju\0nk: a\r\n\r\n")),
        ("NUL in a value", format!("{get}X-Junk: a\0b\r\n\r\n")),
        ("CR in a name", format!("{get}X-Ju\rnk: a\r\n\r\n")),
        ("CR in a value", format!("{get}X-Junk: a\rb\r\n\r\n")),
        (
            "bare LF line endings",
            format!("GET {SMALL} HTTP/1.1\nHost: t\n\n"),
        ),
        ("one bare LF", format!("{get}X-Junk: a\n\r\n")),
        (
            "absolute-form, foreign host",
            format!("GET http://example.com{SMALL} HTTP/1.1\r\nHost: t\r\n\r\n"),
        ),
        (
            "absolute-form, other port",
            format!(
                "GET http://127.0.0.1:{}{SMALL} HTTP/1.1\r\nHost: t\r\n\r\n",
                port + 1
            ),
        ),
        (
            "authority-form",
            format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: t\r\n\r\n"),
        ),
        (
            "authority-form GET",
            format!("GET 127.0.0.1:{port} HTTP/1.1\r\nHost: t\r\n\r\n"),
        ),
        (
            "asterisk-form",
            "OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n".to_string(),
        ),
        (
            "over-long request line",
            format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(9000)),
        ),
        ("two Host fields", format!("{get}Host: u\r\n\r\n")),
        (
            "no Host in HTTP/1.1",
            format!("GET {SMALL} HTTP/1.1\r\n\r\n"),
        ),
        (
            "space in the target",
            format!("GET {SMALL} x HTTP/1.1\r\nHost: t\r\n\r\n"),
        ),
    ];
    let opened = || srv.log().matches("opened large object").count();
    let before = opened();
    for (name, attack) in &corpus {
        let mut s = TcpStream::connect(srv.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let got = exchange(&mut s, format!("{attack}{hidden}").as_bytes())
            .unwrap_or_else(|e| panic!("{name}: the connection stayed open: {e}"));
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 400 "), "{name}: {text}");
        assert_eq!(status_lines(&got), 1, "{name}: {text}");
        assert_eq!(Reply::parse(&got).header("connection"), Some("close"));
    }
    // Nothing hidden was executed: not in the access log, no handle opened.
    let log = srv.log();
    assert!(!log.contains("?hidden"), "{log}");
    assert_eq!(opened(), before, "{log}");
    let refused = log.lines().filter(|l| l.contains(" 400 0 ")).count();
    assert_eq!(refused, corpus.len(), "{log}");
    eprintln!("{} hostile requests refused", corpus.len());

    // What is allowed still works: pipelining, absolute-form for this server,
    // Content-Length: 0, HTTP/1.0 without Host, curl --http1.0 and wget.
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let ok = format!(
        "GET http://127.0.0.1:{port}{SMALL} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n\
         HEAD {SMALL} HTTP/1.0\r\n\r\n"
    );
    let got = exchange(&mut s, ok.as_bytes()).unwrap();
    let first = Reply::parse(&got);
    assert_eq!(first.status, 200);
    assert!(first.body.len() > 100_000);
    assert_eq!(&first.body[..100_000], &data.small[..]);
    let second = Reply::parse(&first.body[100_000..]);
    assert_eq!(second.status, 200);
    assert_eq!(second.header("connection"), Some("close"));
    // Connection: close ends the connection after the response, whatever follows.
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let closing = format!(
        "GET {SMALL} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n\
         GET {HIDDEN}?after-close HTTP/1.1\r\nHost: t\r\n\r\n"
    );
    let r = Reply::parse(&exchange(&mut s, closing.as_bytes()).unwrap());
    assert_eq!((r.status, &r.body[..]), (200, &data.small[..]));
    assert!(!srv.log().contains("after-close"));
    let out = srv.tmp.path().join("curl10");
    let st = Command::new("curl")
        .args(["-sSf", "--http1.0", "-o"])
        .arg(&out)
        .arg(srv.url(SMALL))
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(std::fs::read(&out).unwrap().len(), 100_000);
    let st = Command::new("wget")
        .args(["-q", "-O"])
        .arg(&out)
        .arg(srv.url(SMALL))
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(std::fs::read(&out).unwrap().len(), 100_000);
}

#[test]
fn file_names_that_would_split_a_header_cannot() {
    let (pg, mut c) = store();
    // PostgreSQL text cannot hold NUL; CR and LF it can.
    let evil = "k\r\nSet-Cookie: a=b\r\n\r\nX: y";
    let data = bytes(21, 3000);
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/ga-20.04", "20240101");
    m.file(s, evil, &data);
    m.file(s, "boot-kernel", &bytes(22, 10));
    drop(c);
    let srv = Server::start(&pg.conninfo("postgres"), &[]);
    let dir = "/ubuntu/amd64/ga-20.04/focal/20240101/";
    let listing = srv.get(dir, &["Accept: application/json"]);
    let names: Vec<String> = serde_json::from_slice::<serde_json::Value>(&listing.body)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    let encoded: String = evil
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let url = format!("{dir}{encoded}");
    let mut replies = vec![
        srv.get(dir, &[]),
        listing,
        srv.get("/streams/v1/maas:v2:download.json", &[]),
        srv.get(&url, &[]),
        srv.req("HEAD", &url, &[]),
        srv.get(&url, &["Range: bytes=0-9"]),
    ];
    // The catalog keeps any name without `/` or NUL, so this one is served.
    assert!(names.iter().any(|n| n == evil), "{names:?}");
    assert_eq!(replies[3].status, 200);
    assert_eq!(replies[3].body, data);
    assert_eq!(replies[5].status, 206);
    // The HTML listing links to it percent-encoded.
    let html = String::from_utf8_lossy(&replies[0].body).to_string();
    assert!(html.contains("/k%0D%0ASet-Cookie:%20a=b%0D%0A"), "{html}");
    for r in replies.drain(..) {
        let names: Vec<&str> = r.headers.iter().map(|(k, _)| k.as_str()).collect();
        for (k, v) in &r.headers {
            assert!(
                k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
                "{names:?}"
            );
            assert!(!v.bytes().any(|b| b.is_ascii_control()), "{k}: {v:?}");
        }
        assert!(!names.contains(&"set-cookie"), "{names:?}");
        assert!(!names.contains(&"x"), "{names:?}");
    }
}

/// `GET path` from loopback address `from` with extra header lines, on a
/// connection of its own.
fn get_from(srv: &Server, from: &str, path: &str, extra: &[&str]) -> Reply {
    let mut s = connect_from(from, srv.addr);
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
    for h in extra {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let got = exchange(&mut s, req.as_bytes()).unwrap();
    Reply::parse(&got)
}

/// Access-log lines (target pgbootfs::access) that contain `what`.
fn access_lines(srv: &Server, what: &str) -> Vec<String> {
    srv.log()
        .lines()
        .filter(|l| l.contains("pgbootfs::access") && l.contains(what))
        .map(str::to_string)
        .collect()
}

#[test]
fn allow_from_and_trusted_proxy() {
    let (pg, data) = images(1000);
    let srv = Server::start(
        &pg.conninfo("postgres"),
        &[
            "--allow-from",
            "127.0.0.1/32,10.0.0.0/8",
            "--trusted-proxy",
            "127.0.0.3",
        ],
    );
    let ok = get_from(&srv, "127.0.0.1", SMALL, &[]);
    assert_eq!((ok.status, ok.body.len()), (200, data.small.len()));
    // Refused: 403, closed, one log line naming the address and why.
    let no = get_from(&srv, "127.0.0.2", SMALL, &[]);
    assert_eq!(no.status, 403);
    assert_eq!(no.header("connection"), Some("close"));
    let lines = access_lines(&srv, "127.0.0.2:");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(" 403 ") && lines[0].contains("not in --allow-from"));
    // X-Forwarded-For from anyone but the proxy is ignored.
    let no = get_from(&srv, "127.0.0.2", SMALL, &["X-Forwarded-For: 10.1.2.3"]);
    assert_eq!(no.status, 403);
    let r = get_from(
        &srv,
        "127.0.0.1",
        "/?direct",
        &["X-Forwarded-For: 10.1.2.3"],
    );
    assert_eq!(r.status, 200);
    let lines = access_lines(&srv, "/?direct");
    assert!(lines[0].contains(" 127.0.0.1:"), "{lines:?}");
    // Through the proxy: the forwarded client is checked and logged.
    let r = get_from(&srv, "127.0.0.3", SMALL, &["X-Forwarded-For: 10.1.2.3"]);
    assert_eq!((r.status, r.body.len()), (200, data.small.len()));
    assert_eq!(access_lines(&srv, " 10.1.2.3 via 127.0.0.3:").len(), 1);
    // A client cannot forge its way in: the right-most entry not a trusted proxy
    // counts, and without one the proxy itself, which is not allowed.
    for xff in [
        &["X-Forwarded-For: 10.1.2.3, 192.0.2.7"][..],
        &["X-Forwarded-For: 10.1.2.3", "X-Forwarded-For: 192.0.2.7"],
        &[],
    ] {
        let r = get_from(&srv, "127.0.0.3", SMALL, xff);
        assert_eq!(r.status, 403, "{xff:?}");
    }
    assert_eq!(access_lines(&srv, " 192.0.2.7 via 127.0.0.3:").len(), 2);
    let r = get_from(
        &srv,
        "127.0.0.3",
        SMALL,
        &["X-Forwarded-For: 192.0.2.7, 10.1.2.3, 127.0.0.3"],
    );
    assert_eq!(r.status, 200);
}

/// Sends a GET for `path` on `s`; the status of the response, if one starts
/// before the read timeout.
fn answered(s: &mut TcpStream, path: &str) -> Option<u16> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(n) if n >= 12 => String::from_utf8_lossy(&buf[9..12]).parse().ok(),
        _ => None,
    }
}

#[test]
fn one_host_cannot_take_every_worker_or_connection() {
    let (pg, data) = images(64 << 20);
    let srv = Server::start(&pg.conninfo("postgres"), &["--http-per-client", "2"]);
    // Two downloads from 127.0.0.2 that stop reading: its two requests in service.
    let stalled: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = connect_from("127.0.0.2", srv.addr);
            assert_eq!(answered(&mut s, BIG), Some(200));
            s
        })
        .collect();
    // Its third request waits its turn...
    let mut third = connect_from("127.0.0.2", srv.addr);
    third
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    assert_eq!(answered(&mut third, SMALL), None, "served past the limit");
    // ... while another host is served at once.
    let r = get_from(&srv, "127.0.0.1", SMALL, &[]);
    assert_eq!((r.status, r.body.len()), (200, data.small.len()));
    // One of the two ends: the third is served.
    drop(stalled.into_iter().next());
    third
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut rest = Vec::new();
    third.read_to_end(&mut rest).unwrap();
    let r = Reply::parse(&rest);
    assert_eq!((r.status, r.body.len()), (200, data.small.len()));

    // 64 connections per request slot: the 129th idle one from an address is
    // refused at once, other addresses are not.
    let idle: Vec<TcpStream> = (0..128)
        .map(|_| connect_from("127.0.0.4", srv.addr))
        .collect();
    let mut probe = connect_from("127.0.0.4", srv.addr);
    let got = exchange(&mut probe, b"").unwrap();
    assert!(got.starts_with(b"HTTP/1.1 503 "), "{got:?}");
    assert_eq!(get_from(&srv, "127.0.0.5", SMALL, &[]).status, 200);
    assert!(
        srv.log()
            .contains("127.0.0.4 already holds 128 connections")
    );
    drop(idle);
    assert!(wait_until(Duration::from_secs(10), || {
        get_from(&srv, "127.0.0.4", SMALL, &[]).status == 200
    }));
}

/// Downloads `path` `rounds` times on each of two clients at once (from 127.0.0.1
/// and 127.0.0.5); the bytes each got per round, and the rate in MB/s.
fn download_rate(srv: &Server, path: &str, rounds: usize) -> (Vec<u64>, f64) {
    let t = Instant::now();
    let clients: Vec<_> = ["127.0.0.1", "127.0.0.5"]
        .into_iter()
        .map(|from| {
            let addr = srv.addr;
            let path = path.to_string();
            std::thread::spawn(move || {
                (0..rounds)
                    .map(|_| {
                        let mut s = connect_from(from, addr);
                        s.write_all(
                            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                                .as_bytes(),
                        )
                        .unwrap();
                        let mut buf = vec![0u8; 256 << 10];
                        let mut got = 0u64;
                        while let Ok(n) = s.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            got += n as u64;
                        }
                        got
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let got: Vec<u64> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let secs = t.elapsed().as_secs_f64();
    let rate = got.iter().sum::<u64>() as f64 / secs / 1e6;
    (got, rate)
}

/// 1,000 connections from 50 addresses, half sending nothing, half a header one
/// byte a second, until dropped.
struct Flood {
    idle: Vec<TcpStream>,
    stop: Arc<AtomicBool>,
    loris: std::thread::JoinHandle<u64>,
}

impl Flood {
    fn start(to: SocketAddr) -> Flood {
        let mut idle = Vec::new();
        let mut slow = Vec::new();
        for i in 0..1000 {
            let mut s = connect_from(&format!("127.0.1.{}", 1 + i % 50), to);
            if i % 2 == 0 {
                idle.push(s);
            } else {
                s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
                slow.push(s);
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let loris = std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stopped.load(Ordering::Relaxed) {
                for s in slow.iter_mut() {
                    if s.write_all(b"X").is_ok() {
                        sent += 1;
                    }
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            sent
        });
        Flood { idle, stop, loris }
    }

    /// Ends the flood; the slowloris bytes sent.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.loris.join().unwrap();
        drop(self.idle);
        sent
    }
}

#[test]
fn floods_of_idle_and_slowloris_connections_leave_others_half_their_speed() {
    raise_fd_limit();
    let (pg, data) = images(64 << 20);
    // A header timeout longer than the test: the flood is held throughout.
    let srv = Server::start(&pg.conninfo("postgres"), &["--http-header-timeout", "300"]);
    // About 1 GiB per measurement: long enough to average out a busy machine.
    let rounds = 8;
    let whole = data.big.len() as u64;
    // Warm: every measurement reads the same cached chunks.
    let r = get_from(&srv, "127.0.0.1", BIG, &[]);
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data.big));
    let complete = |got: &[u64]| {
        assert_eq!(got.len(), 2 * rounds);
        assert!(got.iter().all(|&g| g > whole), "{got:?}");
    };
    // Other tests may share the machine: a measurement that a burst of theirs
    // spoiled is taken again, at most three times.
    let mut figures = Vec::new();
    for attempt in 1..=3 {
        let (got, before) = download_rate(&srv, BIG, rounds);
        complete(&got);
        let threads_before = srv.threads();
        let flood = Flood::start(srv.addr);
        // The server really holds them: a thread each.
        assert!(
            wait_until(Duration::from_secs(30), || srv.threads()
                >= threads_before + 990),
            "server threads {} (before the flood {threads_before})",
            srv.threads()
        );
        // Every slow connection trickles a few bytes before the measurement.
        std::thread::sleep(Duration::from_secs(3));
        let (got, during) = download_rate(&srv, BIG, rounds);
        complete(&got);
        let held = srv.threads().saturating_sub(threads_before);
        let trickled = flood.stop();
        assert!(held >= 990, "the flood was dropped during the test: {held}");
        let (got, after) = download_rate(&srv, BIG, rounds);
        complete(&got);
        eprintln!(
            "attempt {attempt}, two clients x {rounds} x 64 MiB: {before:.0} MB/s unloaded, \
             {during:.0} MB/s beside 1,000 flood connections ({held} server threads, \
             {trickled} slowloris bytes), {after:.0} MB/s after"
        );
        figures.push((before, during, after));
        // Half of unloaded, against the slower of the unloaded runs on either
        // side (a shared machine's speed drifts).
        if during >= before.min(after) / 2.0 {
            break;
        }
        // Let the flood's connections close before the next attempt.
        assert!(wait_until(Duration::from_secs(30), || srv.threads()
            < threads_before + 10));
    }
    let (before, during, after) = *figures.last().unwrap();
    assert!(
        during >= before.min(after) / 2.0,
        "under flood slower than half of unloaded in every attempt: {figures:?}"
    );
    assert_eq!(get_from(&srv, "127.0.0.1", SMALL, &[]).body, data.small);
}
