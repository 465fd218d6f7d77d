//! The HTTP side against hostile clients: request smuggling, response splitting,
//! who may connect, and floods. Raw sockets on loopback, a real server and cluster.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use crate::common::http::{Reply, Server};
use crate::common::*;

const SMALL: &str = "/ubuntu/amd64/ga-20.04/focal/20240101/boot-kernel";
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
