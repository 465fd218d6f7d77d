//! Socket-level work tiny_http 0.12 leaves to us. It owns the accepted sockets and
//! exposes none of them, so: the send timeout is set on the listener (accepted
//! sockets inherit it), and a connection is cut by finding its descriptor in
//! `/proc/self/fd` by its addresses and shutting it down.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Binds `addr` with `send_timeout` as SO_SNDTIMEO, which accepted sockets inherit:
/// a write to a client that stopped reading fails after that long.
pub fn bind(addr: SocketAddr, send_timeout: Duration) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    let tv = libc::timeval {
        tv_sec: send_timeout.as_secs() as libc::time_t,
        tv_usec: send_timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid socket descriptor and a timeval of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(listener)
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

/// Shuts down our accepted connection from `peer` on local port `port`, so a client
/// waiting for the rest of a body sees the connection end instead of waiting forever.
/// Returns whether it was found.
pub fn close_peer(port: u16, peer: SocketAddr) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return false;
    };
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if sock_addr(fd, libc::getpeername) != Some(peer) {
            continue;
        }
        if sock_addr(fd, libc::getsockname).map(|a| a.port()) != Some(port) {
            continue;
        }
        // SAFETY: shutdown on a descriptor we own (tiny_http's socket, still open).
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        return true;
    }
    false
}
