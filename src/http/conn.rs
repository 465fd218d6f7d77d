//! The socket side: the listener, the accept loop, reading one request head under a
//! time and size limit, and closing a connection so the client still reads what
//! it was last told.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use log::{debug, warn};

use super::request::HeadScan;

/// Binds `addr` with `send_timeout` as SO_SNDTIMEO, which accepted sockets inherit:
/// a write to a client that stopped reading fails after that long.
pub fn bind(addr: SocketAddr, send_timeout: Duration) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    socket2::SockRef::from(&listener).set_write_timeout(Some(send_timeout))?;
    Ok(listener)
}

/// Accepts for ever, handing each connection to `on_connection`. An accept error
/// (EMFILE when descriptors run out, ECONNABORTED, ...) costs a short pause, never
/// the loop: the server keeps accepting once descriptors are free again.
pub fn accept_loop(listener: TcpListener, mut on_connection: impl FnMut(TcpStream, SocketAddr)) {
    let mut failures: u32 = 0;
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                if failures > 0 {
                    debug!("http: accepting again after {failures} failures");
                }
                failures = 0;
                on_connection(stream, peer);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // One line per streak, not one per retry.
                if failures == 0 {
                    warn!("http: accepting connections failed ({e}); retrying");
                }
                let ms = 10u64 << failures.min(6);
                failures = failures.saturating_add(1);
                std::thread::sleep(Duration::from_millis(ms.min(500)));
            }
        }
    }
}

/// How reading a request head ended.
#[derive(Debug)]
pub enum HeadRead {
    /// `buf[..n]` is a complete head.
    Complete(usize),
    /// The client closed the connection with nothing pending.
    Closed,
    /// The deadline passed first.
    TimedOut,
    /// More than the allowed header bytes came without the end of the head.
    TooLarge,
    /// The request line alone is longer than allowed.
    LineTooLong,
    /// The connection failed or ended in the middle of a head.
    Failed(io::Error),
}

/// Reads until `buf` holds a complete head (bytes already in `buf`, left over from
/// a pipelined request, count), at most `max` bytes of it, by `deadline`.
pub fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant, max: usize) -> HeadRead {
    let mut scan = HeadScan::default();
    loop {
        let end = scan.feed(buf);
        if scan.request_line_too_long(buf) {
            return HeadRead::LineTooLong;
        }
        if let Some(end) = end {
            return HeadRead::Complete(end);
        }
        if buf.len() > max {
            return HeadRead::TooLarge;
        }
        let now = Instant::now();
        if now >= deadline {
            return HeadRead::TimedOut;
        }
        if let Err(e) = s.set_read_timeout(Some(deadline - now)) {
            return HeadRead::Failed(e);
        }
        let old = buf.len();
        // Never more than the limit allows, plus one byte to tell it was passed.
        let room = (max + 1 - old).min(16 << 10);
        buf.resize(old + room, 0);
        let got = s.read(&mut buf[old..]);
        buf.truncate(old + *got.as_ref().unwrap_or(&0));
        match got {
            Ok(0) if buf.is_empty() => return HeadRead::Closed,
            Ok(0) => return HeadRead::Failed(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return HeadRead::TimedOut;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return HeadRead::Failed(e),
        }
    }
}

/// Writes `bytes` (a final response) and closes the connection in a way the client
/// can read them: closing a socket with unread input makes the kernel send a reset,
/// which can destroy the response before the client reads it. So the sending side
/// is shut first, and what the client still sends is read and dropped, for a
/// bounded time and amount.
pub fn answer_and_close(mut s: TcpStream, bytes: &[u8]) {
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(bytes);
    linger_close(s);
}

/// Answers a connection that gets no thread (over `--http-max-connections`) and
/// closes it at once, never blocking the accept thread: the answer is written
/// without waiting (a fresh socket's send buffer has room for it), and what the
/// client already sent is read off first, since closing over unread input would
/// reset the connection under the answer.
pub fn refuse_now(s: TcpStream, bytes: &[u8]) {
    if s.set_nonblocking(true).is_err() {
        return;
    }
    let mut s = s;
    let _ = s.write(bytes);
    let mut sink = [0u8; 16 << 10];
    for _ in 0..4 {
        match s.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

/// Connections `serve` and `mount --http` hold at most unless told: half the
/// process's descriptor limit (raised to its hard limit at start), the other half
/// left for database connections, cached files and the mount; at least 64, at most
/// 16,384 (each connection is also a thread).
pub fn default_max_connections() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct passed.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    let files = if ok && lim.rlim_cur != libc::RLIM_INFINITY {
        usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
    } else {
        usize::MAX
    };
    (files / 2).clamp(64, 16_384)
}

/// Shuts the sending side and drains input until the client closes too (at most
/// 2 s and 1 MiB), then closes.
pub fn linger_close(mut s: TcpStream) {
    let _ = s.shutdown(Shutdown::Write);
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut sink = [0u8; 16 << 10];
    let mut drained = 0usize;
    while drained < 1 << 20 {
        let now = Instant::now();
        if now >= deadline || s.set_read_timeout(Some(deadline - now)).is_err() {
            break;
        }
        match s.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}
