//! Socket-level work tiny_http 0.12 leaves to us. It owns the accepted sockets and
//! exposes none of them, so: the send timeout is set on the listener (accepted
//! sockets inherit it), and a connection is cut by finding its descriptor in
//! `/proc/self/fd` by its addresses and shutting it down. The same scan lets a
//! watchdog cut clients that are slow to send a request or send endless headers.
//!
//! The listener is ours, so its options go through `socket2`. The accepted sockets
//! are tiny_http's: we only know their numbers, which tiny_http may close at any
//! moment. socket2 (through `BorrowedFd`) requires a descriptor that stays open
//! while borrowed, which we cannot promise, so those few calls stay plain libc
//! calls, where a descriptor closed meanwhile just fails with EBADF (and a reused
//! number is caught by checking its peer again).

use std::collections::HashMap;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info};
use parking_lot::Mutex;

/// Binds `addr` with `send_timeout` as SO_SNDTIMEO, which accepted sockets inherit:
/// a write to a client that stopped reading fails after that long.
pub fn bind(addr: SocketAddr, send_timeout: Duration) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    socket2::SockRef::from(&listener).set_write_timeout(Some(send_timeout))?;
    Ok(listener)
}

/// Watches the copy of the listening socket that a tiny_http server owns.
///
/// tiny_http's accept thread owns its listener and drops it when the thread ends.
/// It ends on an accept error, which `recv` reports, but also by panicking when it
/// cannot duplicate an accepted socket (EMFILE), which nothing reports: `recv`
/// just waits for ever. A descriptor that no longer names the listening socket
/// means the thread is gone.
pub struct ListenerCopy {
    fd: i32,
    id: (u64, u64),
}

impl ListenerCopy {
    /// Records the descriptor of `copy`, which must be a duplicate of the listener.
    pub fn new(copy: &TcpListener) -> io::Result<ListenerCopy> {
        let fd = copy.as_raw_fd();
        let id = socket_id(fd).ok_or_else(io::Error::last_os_error)?;
        Ok(ListenerCopy { fd, id })
    }

    /// Whether the descriptor is still open on the same socket. A reused number
    /// names another inode, so reuse cannot pass for the listener.
    pub fn alive(&self) -> bool {
        socket_id(self.fd) == Some(self.id)
    }
}

/// Device and inode of what `fd` names, if it is open.
fn socket_id(fd: i32) -> Option<(u64, u64)> {
    // SAFETY: zeroed memory is a valid stat buffer, and fstat only writes into it.
    let mut st: libc::stat = unsafe { mem::zeroed() };
    // SAFETY: fstat on any integer is safe; a closed descriptor gives EBADF.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    Some((st.st_dev as u64, st.st_ino as u64))
}

/// The address in a sockaddr_storage, for IPv4 and IPv6.
fn to_socket_addr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let sin: &libc::sockaddr_in = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::from((ip, u16::from_be(sin6.sin6_port))))
        }
        _ => None,
    }
}

fn sock_addr(
    fd: i32,
    f: unsafe extern "C" fn(i32, *mut libc::sockaddr, *mut libc::socklen_t) -> i32,
) -> Option<SocketAddr> {
    // SAFETY: zeroed storage is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage and length describe a writable buffer of that size.
    let rc = unsafe {
        f(
            fd,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    to_socket_addr(&ss)
}

/// Every socket of ours accepted on local port `port`: descriptor and peer. tiny_http
/// gives no access to its sockets, so they are found in /proc/self/fd.
fn accepted_sockets(port: u16) -> Vec<(i32, SocketAddr)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|fd| {
            let peer = sock_addr(fd, libc::getpeername)?;
            let local = sock_addr(fd, libc::getsockname)?;
            (local.port() == port).then_some((fd, peer))
        })
        .collect()
}

/// Shuts down our accepted connection from `peer` on local port `port`, so a client
/// waiting for the rest of a body sees the connection end instead of waiting forever.
/// Returns whether it was found.
pub fn close_peer(port: u16, peer: SocketAddr) -> bool {
    match accepted_sockets(port).into_iter().find(|(_, p)| *p == peer) {
        Some((fd, _)) => {
            // SAFETY: shutdown on a descriptor we own (tiny_http's socket, still open).
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            true
        }
        None => false,
    }
}

/// Our accepted connections now: descriptor and peer, one per peer.
fn connections(port: u16) -> Vec<(i32, SocketAddr)> {
    let mut out: Vec<(i32, SocketAddr)> = Vec::new();
    for (fd, peer) in accepted_sockets(port) {
        if !out.iter().any(|(_, p)| *p == peer) {
            out.push((fd, peer));
        }
    }
    out
}

/// Points every descriptor of the connection from `peer` at /dev/null, so the
/// socket closes (with a reset) and its reader sees end of file. Each descriptor's
/// peer is checked just before, so a descriptor reused meanwhile is left alone.
fn detach(port: u16, peer: SocketAddr) {
    let Ok(null) = std::fs::File::open("/dev/null") else {
        return;
    };
    for (fd, _) in accepted_sockets(port)
        .into_iter()
        .filter(|(_, p)| *p == peer)
    {
        if sock_addr(fd, libc::getpeername) == Some(peer) {
            // SAFETY: both descriptors are open; dup2 replaces fd atomically.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// Bytes the socket has received so far (TCP_INFO).
fn bytes_received(fd: i32) -> Option<u64> {
    // SAFETY: zeroed tcp_info is valid; the length passed is its size.
    let mut info: libc::tcp_info = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a writable tcp_info of the size passed.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(info.tcpi_bytes_received)
}

/// What the watchdog knows of one client connection.
struct Peer {
    /// Requests handed to workers and not yet answered.
    inflight: usize,
    /// Requests seen on this connection.
    requests: u64,
    /// Since when it owes us a request.
    idle_since: Instant,
    /// Bytes received when it went idle (set at the first sweep after).
    baseline: Option<u64>,
}

/// Cuts connections that take too long to send a request, or send too much header:
/// tiny_http reads headers with no time or size limit. Sweeps once a second.
pub struct Watchdog {
    port: u16,
    timeout: Duration,
    max_header: u64,
    peers: Mutex<HashMap<SocketAddr, Peer>>,
}

impl Watchdog {
    /// A watchdog for connections accepted on local `port`.
    pub fn new(port: u16, timeout: Duration, max_header: u64) -> Watchdog {
        Watchdog {
            port,
            timeout,
            max_header,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// A complete request came from `peer`.
    pub fn request_arrived(&self, peer: Option<SocketAddr>) {
        let Some(peer) = peer else { return };
        let mut peers = self.peers.lock();
        let p = peers.entry(peer).or_insert_with(|| Peer {
            inflight: 0,
            requests: 0,
            idle_since: Instant::now(),
            baseline: None,
        });
        p.inflight += 1;
        p.requests += 1;
    }

    /// The response to a request from `peer` is done.
    pub fn request_done(&self, peer: Option<SocketAddr>) {
        let Some(peer) = peer else { return };
        if let Some(p) = self.peers.lock().get_mut(&peer) {
            p.inflight = p.inflight.saturating_sub(1);
            if p.inflight == 0 {
                p.idle_since = Instant::now();
                p.baseline = None;
            }
        }
    }

    /// Runs the sweeps in a thread for the life of the process.
    pub fn spawn(self: &Arc<Self>) -> io::Result<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("http-watchdog".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                    me.sweep();
                }
            })
            .map(|_| ())
    }

    fn sweep(&self) {
        let live = connections(self.port);
        let now = Instant::now();
        let mut peers = self.peers.lock();
        peers.retain(|peer, _| live.iter().any(|(_, p)| p == peer));
        for (fd, peer) in live {
            let p = peers.entry(peer).or_insert_with(|| Peer {
                inflight: 0,
                requests: 0,
                idle_since: now,
                baseline: Some(0),
            });
            if p.inflight > 0 {
                continue;
            }
            let received = bytes_received(fd).unwrap_or(0);
            let base = *p.baseline.get_or_insert(received);
            let pending = received.saturating_sub(base);
            let status = if pending > self.max_header {
                Some("431 Request Header Fields Too Large")
            } else if now.duration_since(p.idle_since) > self.timeout {
                // An idle keep-alive connection is closed quietly; a started or
                // never-sent request is told why.
                if p.requests == 0 || pending > 0 {
                    Some("408 Request Timeout")
                } else {
                    None
                }
            } else {
                continue;
            };
            if let Some(status) = status {
                info!("http: cutting {peer}: {status} ({pending} header bytes pending)");
                let msg =
                    format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
                // SAFETY: a socket of ours; a non-blocking send of a valid buffer.
                unsafe {
                    libc::send(
                        fd,
                        msg.as_ptr().cast(),
                        msg.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    );
                }
            } else {
                debug!("http: closing idle connection from {peer}");
            }
            // SAFETY: shutdown on a socket of ours; tiny_http's reader then sees EOF.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            if pending > self.max_header {
                // Linux still delivers data that arrives after SHUT_RD, and tiny_http
                // keeps every header line: take the socket away from it.
                detach(self.port, peer);
            }
            // Forget it: a new connection from the same address starts afresh.
            p.idle_since = now;
            p.baseline = None;
        }
    }
}
