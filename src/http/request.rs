//! Strict reading of a request head. pgbootfs serves only GET and HEAD of files that
//! need no request body, so anything whose framing two parsers could read two ways
//! (a body of any kind, doubtful lengths, folded or malformed fields, bare line
//! feeds, targets that are not for this server) is refused with a 400 and the
//! connection is closed: nothing after such a head is ever read as a request, so a
//! proxy in front cannot be made to smuggle one past it.
//!
//! `httparse` (the parser under hyper) checks the request line and field syntax;
//! the rules it leaves to the caller (line endings, folding, framing headers, the
//! request-target's form, Host) are checked here, on the raw bytes.

use std::net::{IpAddr, SocketAddr};

/// Longest request line accepted: more is refused (400) without waiting for the
/// rest. Targets of this tree are a few hundred bytes at most.
pub const MAX_REQUEST_LINE: usize = 8 << 10;

/// Most header fields in one request.
const MAX_FIELDS: usize = 100;

/// The method of a request, as far as pgbootfs cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// HEAD.
    Head,
    /// Any other (valid token) method: answered 405.
    Other(String),
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::Get => f.write_str("GET"),
            Method::Head => f.write_str("HEAD"),
            Method::Other(m) => f.write_str(m),
        }
    }
}

/// A request head that passed every check.
#[derive(Debug, Clone)]
pub struct Head {
    /// The request method.
    pub method: Method,
    /// The target in origin-form (`/path?query`); an accepted absolute-form target
    /// is reduced to this.
    pub target: String,
    /// HTTP/1.0 (the connection then closes after the response).
    pub http10: bool,
    /// Field names lower-cased, values with surrounding white space removed.
    pub fields: Vec<(String, String)>,
}

impl Head {
    /// Values of every field `name` (lower-case).
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of field `name` (lower-case).
    pub fn value(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the client wants the connection closed after this response:
    /// HTTP/1.0, or a `close` token in Connection.
    pub fn wants_close(&self) -> bool {
        self.http10
            || self
                .values("connection")
                .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }
}

/// Why a head was refused (answered 400 and the connection closed). The text goes
/// to the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn refuse<T>(why: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal(why.into()))
}

/// Finds where a head ends in a buffer that grows, looking at each byte once. A
/// line ends at LF (a bare one is refused by [`parse`], not waited past); empty
/// lines before the request line (RFC 9112 2.2) are skipped, not taken for the end.
#[derive(Debug, Default)]
pub struct HeadScan {
    /// Bytes of leading empty lines.
    lead: usize,
    lead_done: bool,
    next: usize,
    line_start: usize,
    first_line_end: Option<usize>,
}

impl HeadScan {
    /// The index just past the head's empty line, once `buf` holds it. `buf` must
    /// only have grown since the last call.
    pub fn feed(&mut self, buf: &[u8]) -> Option<usize> {
        if !self.lead_done {
            loop {
                let rest = &buf[self.lead..];
                if rest.starts_with(b"\r\n") {
                    self.lead += 2;
                } else if rest.is_empty() || rest == b"\r" {
                    return None;
                } else {
                    break;
                }
            }
            self.lead_done = true;
            self.next = self.lead;
            self.line_start = self.lead;
        }
        while self.next < buf.len() {
            let i = self.next;
            self.next += 1;
            if buf[i] != b'\n' {
                continue;
            }
            let line = &buf[self.line_start..i];
            match self.first_line_end {
                Some(_) if line.is_empty() || line == b"\r" => return Some(i + 1),
                Some(_) => {}
                None => self.first_line_end = Some(i),
            }
            self.line_start = i + 1;
        }
        None
    }

    /// Whether the request line seen so far is longer than [`MAX_REQUEST_LINE`].
    pub fn request_line_too_long(&self, buf: &[u8]) -> bool {
        let end = self.first_line_end.unwrap_or(buf.len());
        end.saturating_sub(self.lead) > MAX_REQUEST_LINE
    }
}

/// What the connection knows of itself, to tell an absolute-form target that names
/// this server from one meant for another.
#[derive(Debug, Clone)]
pub struct Local {
    /// The address the client connected to.
    pub addr: SocketAddr,
    /// This host's name (lower case), if known.
    pub hostname: Option<String>,
}

/// Checks and parses a complete head (`buf` ends with its empty line).
pub fn parse(buf: &[u8], local: &Local) -> Result<Head, Refusal> {
    // Line endings: CRLF only. A bare LF or CR is read differently by different
    // parsers (some end the line, some keep the byte), which is how requests hide.
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b'\n' if i == 0 || buf[i - 1] != b'\r' => return refuse("bare LF line ending"),
            b'\r' if buf.get(i + 1) != Some(&b'\n') => return refuse("bare CR in the head"),
            0 => return refuse("NUL in the head"),
            _ => {}
        }
    }
    // Obsolete line folding: a field line that starts with white space.
    if buf
        .windows(3)
        .any(|w| w[0] == b'\r' && w[1] == b'\n' && (w[2] == b' ' || w[2] == b'\t'))
    {
        return refuse("obsolete line folding or white space before a field name");
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n == buf.len() => {}
        Ok(_) => return refuse("incomplete head"),
        Err(httparse::Error::TooManyHeaders) => {
            return refuse(format!("more than {MAX_FIELDS} header fields"));
        }
        Err(e) => return refuse(format!("malformed head: {e}")),
    }
    let method = match req.method.unwrap_or("") {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        other => Method::Other(other.to_string()),
    };
    let http10 = req.version == Some(0);
    let raw_target = req.path.unwrap_or("");
    let mut fields = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let value = match std::str::from_utf8(h.value) {
            Ok(v) => v.trim_matches([' ', '\t']).to_string(),
            // obs-text is valid field syntax; nothing of ours reads such a value.
            Err(_) => String::from_utf8_lossy(h.value)
                .trim_matches([' ', '\t'])
                .to_string(),
        };
        fields.push((h.name.to_ascii_lowercase(), value));
    }
    let head = Head {
        method,
        target: String::new(),
        http10,
        fields,
    };
    check_framing(&head)?;
    let hosts = head.values("host").count();
    if hosts > 1 {
        return refuse("more than one Host field");
    }
    if hosts == 0 && !http10 {
        return refuse("HTTP/1.1 request without Host");
    }
    let target = origin_form(raw_target, local)?;
    Ok(Head { target, ..head })
}

/// No body, ever: a request that announces one is refused rather than read, so
/// the bytes after its head can never be taken for a request.
fn check_framing(head: &Head) -> Result<(), Refusal> {
    if head.values("transfer-encoding").next().is_some() {
        return refuse("Transfer-Encoding in a request (no request body is accepted)");
    }
    let lengths: Vec<&str> = head.values("content-length").collect();
    match lengths.as_slice() {
        [] => Ok(()),
        [one] => {
            if one.is_empty() || !one.bytes().all(|b| b.is_ascii_digit()) {
                refuse(format!("malformed Content-Length {one:?}"))
            } else if one.bytes().any(|b| b != b'0') {
                refuse("a request body (Content-Length is not 0)")
            } else {
                Ok(())
            }
        }
        _ => refuse("more than one Content-Length"),
    }
}

/// The target as origin-form. Absolute-form is accepted only for this server (RFC
/// 9112 3.2.2: a server must accept it, but pgbootfs is no proxy); authority-form
/// and asterisk-form are for CONNECT and OPTIONS, which it does not serve.
fn origin_form(target: &str, local: &Local) -> Result<String, Refusal> {
    if target.starts_with('/') {
        return Ok(target.to_string());
    }
    if target == "*" {
        return refuse("asterisk-form target");
    }
    let Some((scheme, rest)) = target.split_once("://") else {
        return refuse("authority-form or relative target");
    };
    if !scheme.eq_ignore_ascii_case("http") {
        return refuse(format!("absolute-form target with scheme {scheme:?}"));
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if !names_this_server(authority, local) {
        return refuse(format!(
            "absolute-form target for another host {authority:?}"
        ));
    }
    Ok(match path.strip_prefix('?') {
        Some(q) => format!("/?{q}"),
        None if path.is_empty() => "/".to_string(),
        None => path.to_string(),
    })
}

/// Whether `authority` (`host[:port]`) is the address the client connected to, or
/// this host's name or `localhost` on that port.
fn names_this_server(authority: &str, local: &Local) -> bool {
    if authority.contains('@') {
        return false;
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => {
            match p.parse::<u16>() {
                Ok(p) => (h, p),
                Err(_) => return false,
            }
        }
        _ => (authority, 80),
    };
    if port != local.addr.port() {
        return false;
    }
    let host = host.to_ascii_lowercase();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return ip == local.addr.ip();
    }
    host == "localhost" || local.hostname.as_deref() == Some(host.as_str())
}

/// This host's name, lower-cased.
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = std::str::from_utf8(&buf[..end]).ok()?.to_ascii_lowercase();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> Local {
        Local {
            addr: "127.0.0.1:8080".parse().unwrap(),
            hostname: Some("imagehost".into()),
        }
    }

    fn check(head: &str) -> Result<Head, Refusal> {
        let b = head.as_bytes();
        assert_eq!(head_end(b), Some(b.len()), "{head:?}");
        // Byte by byte, the same end.
        let mut scan = HeadScan::default();
        let ends: Vec<usize> = (1..=b.len()).filter_map(|n| scan.feed(&b[..n])).collect();
        assert_eq!(ends, [b.len()], "{head:?}");
        parse(b, &local())
    }

    fn head_end(b: &[u8]) -> Option<usize> {
        HeadScan::default().feed(b)
    }

    #[test]
    fn head_end_finds_the_empty_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nGET"), Some(18));
        assert_eq!(head_end(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"), Some(22));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\nX"), Some(24));
        let long = vec![b'a'; MAX_REQUEST_LINE + 1];
        let mut scan = HeadScan::default();
        assert_eq!(scan.feed(&long), None);
        assert!(scan.request_line_too_long(&long));
        let mut scan = HeadScan::default();
        assert_eq!(scan.feed(b"GET / HTTP/1.1\r\n"), None);
        assert!(!scan.request_line_too_long(b"GET / HTTP/1.1\r\n"));
    }

    #[test]
    fn plain_requests_pass() {
        let h = check("GET /a/b?x=1 HTTP/1.1\r\nHost: t\r\nRange: bytes=0-1 \r\n\r\n").unwrap();
        assert_eq!(h.method, Method::Get);
        assert_eq!(h.target, "/a/b?x=1");
        assert_eq!(h.value("range"), Some("bytes=0-1"));
        assert!(!h.wants_close());
        let h = check("HEAD / HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!((h.method, h.http10), (Method::Head, true));
        let h = check("GET / HTTP/1.1\r\nHost: t\r\nConnection: keep-alive, Close\r\n\r\n");
        assert!(h.unwrap().wants_close());
        let h = check("\r\nGET / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!(h.target, "/");
        let h = check("POST /x HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(h.method, Method::Other("POST".into()));
    }

    #[test]
    fn absolute_form_only_for_this_server() {
        for (t, want) in [
            ("http://127.0.0.1:8080/ubuntu", "/ubuntu"),
            ("HTTP://localhost:8080", "/"),
            ("http://ImageHost:8080?q", "/?q"),
        ] {
            let h = check(&format!("GET {t} HTTP/1.1\r\nHost: x\r\n\r\n")).unwrap();
            assert_eq!(h.target, want, "{t}");
        }
        for t in [
            "http://example.com/ubuntu",
            "http://127.0.0.1/ubuntu",
            "http://127.0.0.1:8081/",
            "http://127.0.0.2:8080/",
            "http://u@127.0.0.1:8080/",
            "https://127.0.0.1:8080/",
            "127.0.0.1:8080",
            "*",
            "ubuntu/amd64",
        ] {
            assert!(
                check(&format!("GET {t} HTTP/1.1\r\nHost: x\r\n\r\n")).is_err(),
                "{t}"
            );
        }
    }

    #[test]
    fn hostile_heads_are_refused() {
        for bad in [
            "GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 0, 0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: +0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: t\r\n\tX-A: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: t\r\nX\0A: ab\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: t\r\nX\rA: ab\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: t\r\nX A: ab\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: t\r\n: ab\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: t\r\nX-A\r\n\r\n",
            "GET / HTTP/1.1\nHost: t\n\n",
            "GET / HTTP/1.1\r\nHost: t\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET  / HTTP/1.1\r\nHost: t\r\n\r\n",
            "GET / HTTP/2.0\r\nHost: t\r\n\r\n",
            "GET / XTTP/1.1\r\nHost: t\r\n\r\n",
            "GET /a b HTTP/1.1\r\nHost: t\r\n\r\n",
            "G(T / HTTP/1.1\r\nHost: t\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
            "CONNECT 127.0.0.1:8080 HTTP/1.1\r\nHost: t\r\n\r\n",
        ] {
            assert!(check(bad).is_err(), "accepted {bad:?}");
        }
    }
}
