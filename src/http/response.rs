//! Writing responses on the connection: status line and headers (Content-Length
//! always, except on a 304), and image bodies copied straight from the handle's
//! buffers in chunk-sized writes, or on MAAS 3.5+ sent from the image storage
//! file by the kernel (sendfile(2)).

use std::io::{self, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use log::warn;
use sha2::{Digest, Sha256};

use crate::handle::{ErrorClass, Handle, READ_CHUNK};
use crate::inside::Archive;

use super::conditional;

/// Seconds a client is told to wait after a 503.
pub(super) const RETRY_AFTER: &str = "5";

/// A response before it is written.
pub(super) struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Body,
}

pub(super) enum Body {
    /// No body and no Content-Length (304).
    None,
    /// A small generated body.
    Bytes(Vec<u8>),
    /// `len` bytes of an image from `start`.
    File {
        handle: Box<Handle>,
        start: u64,
        len: u64,
    },
    /// `len` bytes of a file inside an image (`--inside`) from `start`.
    Inside {
        file: InsideBody,
        start: u64,
        len: u64,
    },
}

/// A file inside an image, for a body.
pub(super) struct InsideBody {
    pub archive: Arc<dyn Archive>,
    pub id: u64,
}

impl Reply {
    pub(super) fn new(status: u16, body: Body) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body,
        }
    }

    pub(super) fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        // Values can come from database rows (the sha256 in an ETag): never let one
        // end the header early.
        let value: String = value.into().chars().filter(|c| !c.is_control()).collect();
        self.headers.push((name, value));
        self
    }

    pub(super) fn text(status: u16) -> Reply {
        Reply::new(
            status,
            Body::Bytes(format!("{status} {}\n", reason(status)).into_bytes()),
        )
        .header("Content-Type", "text/plain; charset=utf-8")
    }

    pub(super) fn json(value: &serde_json::Value) -> Reply {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
        body.push(b'\n');
        Reply::new(200, Body::Bytes(body)).header("Content-Type", "application/json")
    }

    /// A 200 with JSON text already formatted (the stream files, as MAAS writes them).
    pub(super) fn json_text(text: String) -> Reply {
        Reply::new(200, Body::Bytes(text.into_bytes())).header("Content-Type", "application/json")
    }

    /// For a generated 200 body (listing, stream JSON): adds a strong ETag from the
    /// bytes, and answers a matching If-None-Match (or, without one, an
    /// If-Modified-Since not older than its Last-Modified) with a bodyless 304, so
    /// clients that poll the index can revalidate instead of fetching it again.
    pub(super) fn validated(
        self,
        if_none_match: &[&str],
        if_modified_since: Option<&str>,
    ) -> Reply {
        let Body::Bytes(bytes) = &self.body else {
            return self;
        };
        if self.status != 200 {
            return self;
        }
        let digest = Sha256::digest(bytes);
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        let tag = format!("\"g{hex}\"");
        // Revalidated on every use, so a cache never serves an index gone stale.
        let mut reply = self
            .header("ETag", tag.clone())
            .header("Cache-Control", "no-cache");
        let unchanged = if !if_none_match.is_empty() {
            conditional::none_match_hits(if_none_match, &tag)
        } else {
            let modified = reply
                .headers
                .iter()
                .find(|(name, _)| *name == "Last-Modified")
                .and_then(|(_, v)| conditional::parse_date(v));
            match (
                modified,
                if_modified_since.and_then(conditional::parse_date),
            ) {
                (Some(m), Some(since)) => conditional::not_modified_since(m, since),
                _ => false,
            }
        };
        if unchanged {
            reply.status = 304;
            reply.body = Body::None;
            reply.headers.retain(|(name, _)| *name != "Content-Type");
        }
        reply
    }

    fn len(&self) -> Option<u64> {
        match &self.body {
            Body::None => None,
            Body::Bytes(b) => Some(b.len() as u64),
            Body::File { len, .. } | Body::Inside { len, .. } => Some(*len),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        301 => "Moved Permanently",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        422 => "Unprocessable Content",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        412 => "Precondition Failed",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// What writing a response came to.
pub(super) struct Sent {
    pub status: u16,
    /// Body bytes written.
    pub bytes: u64,
    /// For the access log: why it ended early, if it did.
    pub note: String,
    /// Whether all of it went out (else the connection must be closed: the client
    /// would wait for the rest).
    pub complete: bool,
}

impl Reply {
    /// The status line, headers and (for a generated body) the body, as bytes: a
    /// small response goes out in one write.
    fn head_bytes(&self, head: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nServer: pgbootfs\r\nDate: {}\r\n",
            self.status,
            reason(self.status),
            conditional::fmt_date(SystemTime::now())
        );
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(len) = self.len() {
            out.push_str(&format!("Content-Length: {len}\r\n"));
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        if let Body::Bytes(b) = &self.body
            && !head
        {
            out.extend_from_slice(b);
        }
        out
    }

    /// The whole response as bytes, for replies with no file body (refusals).
    pub(super) fn to_bytes(&self) -> Vec<u8> {
        self.head_bytes(false)
    }
}

/// Writes the reply (headers only for HEAD).
pub(super) fn send(w: &mut TcpStream, mut reply: Reply, head: bool, started: Instant) -> Sent {
    if let Body::File { handle, start, len } = &reply.body
        && !head
        && *len > 0
    {
        // The first bytes, from memory or the database: a failure here can still
        // be told to the client as a status.
        if let Err(e) = handle.prepare(*start) {
            warn!("http: {e}");
            let close = reply.headers.iter().any(|(n, _)| *n == "Connection");
            reply = match e.class() {
                // Worth retrying.
                ErrorClass::Busy | ErrorClass::Unavailable => {
                    Reply::text(503).header("Retry-After", RETRY_AFTER)
                }
                ErrorClass::Gone | ErrorClass::Broken => Reply::text(500),
            };
            if close {
                reply = reply.header("Connection", "close");
            }
        }
    }
    let status = reply.status;
    let gone = |why: String| Sent {
        status,
        bytes: 0,
        note: format!(" (client gone: {why})"),
        complete: false,
    };
    let first = reply.head_bytes(head);
    if let Err(e) = w.write_all(&first) {
        return gone(e.to_string());
    }
    crate::metrics::http_first_byte(started.elapsed());
    let result = match reply.body {
        _ if head => Ok(0),
        Body::None => Ok(0),
        Body::Bytes(b) => Ok(b.len() as u64),
        Body::File { handle, start, len } => {
            // The head went out unbuffered (write_all above), so the kernel's copy
            // of the body follows it on the socket.
            let r = match handle.storage_file() {
                Some(file) => send_file(w, &file, start, len),
                None => copy_file(&handle, start, len, w),
            };
            // End the transaction before anything else can block.
            handle.close();
            r
        }
        Body::Inside { file, start, len } => copy_inside(&file, start, len, w),
    };
    let result = result.and_then(|n| w.flush().map(|_| n).map_err(|e| (n, e.to_string())));
    match result {
        Ok(n) => Sent {
            status,
            bytes: n,
            note: String::new(),
            complete: true,
        },
        Err((n, why)) => Sent {
            status,
            bytes: n,
            note: format!(" (aborted: {why})"),
            complete: false,
        },
    }
}

/// Streams `len` bytes from `start`, in writes of up to [`READ_CHUNK`] aligned to the
/// handle's chunks. Err carries the bytes sent and why it stopped.
fn copy_file(
    handle: &Handle,
    start: u64,
    len: u64,
    w: &mut dyn Write,
) -> Result<u64, (u64, String)> {
    let end = start + len;
    let mut pos = start;
    while pos < end {
        let want = (READ_CHUNK - pos % READ_CHUNK).min(end - pos) as usize;
        let res = handle.read_with(pos, want, |bytes| write_counted(w, bytes));
        match res {
            Ok((n, Ok(()))) if n > 0 => pos += n as u64,
            Ok((_, Ok(()))) => {
                return Err((pos - start, format!("{}: ended early", handle.path())));
            }
            Ok((n, Err(e))) => return Err((pos - start + n as u64, format!("client: {e}"))),
            Err(e) => return Err((pos - start, e.to_string())),
        }
    }
    Ok(len)
}

/// Sends `len` bytes of `file` from `start` with sendfile(2): the page cache goes
/// to the socket without a copy through this process. Err carries the bytes sent
/// and why it stopped.
fn send_file(
    sock: &TcpStream,
    file: &std::fs::File,
    start: u64,
    len: u64,
) -> Result<u64, (u64, String)> {
    let end = start + len;
    let mut off = start as libc::off_t;
    // A download reads on to the end of its range: ask the kernel for its larger
    // read-ahead on this descriptor, so a cold file is read in big requests ahead
    // of the socket rather than as sendfile asks for pages. Advice only: a failure
    // changes nothing but speed.
    // SAFETY: the descriptor is borrowed and open; the call reads no memory of ours.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            start as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_SEQUENTIAL,
        )
    };
    while (off as u64) < end {
        // Linux sends at most about 2 GiB per call.
        let want = (end - off as u64).min(1 << 30) as usize;
        // SAFETY: both descriptors stay open for the call (borrowed), and `off`
        // is a live off_t the kernel advances by what it sent.
        let n = unsafe { libc::sendfile(sock.as_raw_fd(), file.as_raw_fd(), &mut off, want) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err((off as u64 - start, format!("client: {e}")));
        }
        if n == 0 {
            return Err((
                off as u64 - start,
                "the image storage file ended early".to_string(),
            ));
        }
        crate::metrics::served(crate::metrics::Source::Disk, n as u64);
    }
    Ok(len)
}

/// Streams `len` bytes from `start` of a file inside an image, decompressing as
/// it goes. Err carries the bytes sent and why it stopped.
fn copy_inside(
    file: &InsideBody,
    start: u64,
    len: u64,
    w: &mut dyn Write,
) -> Result<u64, (u64, String)> {
    let mut buf = vec![0; READ_CHUNK as usize];
    let mut sent = 0;
    while sent < len {
        let want = (len - sent).min(buf.len() as u64) as usize;
        let n = match file.archive.read(file.id, start + sent, &mut buf[..want]) {
            Ok(0) => return Err((sent, "inside: ended early".into())),
            Ok(n) => n,
            Err(e) => {
                warn!("http: {e}");
                return Err((sent, e.to_string()));
            }
        };
        match write_counted(w, &buf[..n]) {
            (_, Ok(())) => sent += n as u64,
            (k, Err(e)) => return Err((sent + k as u64, format!("client: {e}"))),
        }
    }
    Ok(len)
}

/// Writes all of `buf`; returns how much got out and whether all did.
fn write_counted(w: &mut dyn Write, buf: &[u8]) -> (usize, io::Result<()>) {
    let mut off = 0;
    while off < buf.len() {
        match w.write(&buf[off..]) {
            Ok(0) => return (off, Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (off, Err(e)),
        }
    }
    (off, Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_cannot_split_the_header() {
        let r = Reply::new(304, Body::None).header("ETag", "\"ab\r\nSet-Cookie: x\"");
        assert_eq!(r.headers, [("ETag", "\"abSet-Cookie: x\"".to_string())]);
        let r = Reply::new(304, Body::None).header("X", "a\0b\nc\rd\x7f");
        assert_eq!(r.headers, [("X", "abcd".to_string())]);
        assert_eq!(r.len(), None);
        assert_eq!(Reply::text(404).len(), Some("404 Not Found\n".len() as u64));
    }
}
