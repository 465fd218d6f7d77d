//! Who may connect (`--allow-from`), who a request is from (`--trusted-proxy` and
//! X-Forwarded-For), and how much of the server one client may hold
//! (`--http-per-client`, `--http-workers`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use parking_lot::{Condvar, Mutex};

/// Connections one address may hold open per request it may have in service: an
/// address past `per_client` × this is refused at once (503), so one host cannot
/// take every descriptor and thread with idle connections. Trusted proxies carry
/// many clients and are not capped.
pub const CONNECTIONS_PER_SLOT: usize = 64;

/// The access rules.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Networks allowed to use the server; empty means everyone.
    pub allow_from: Vec<IpNet>,
    /// Proxies whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Requests one client may have in service at once (at least 1).
    pub per_client: usize,
    /// Requests in service at once over all clients (at least 1).
    pub workers: usize,
    /// Connections open at once over all clients, trusted proxies included (at
    /// least 1): each costs a thread and a descriptor.
    pub max_connections: usize,
    /// Whether the connection gauges in /metrics are this server's (not for the
    /// metrics-only listener of `mount --metrics`, which would overwrite them).
    pub report: bool,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The server holds `--http-max-connections` already.
    Server,
    /// The address holds its share already.
    Client,
}

#[derive(Default)]
struct State {
    /// Open connections per direct peer address (not counted for trusted proxies).
    connections: HashMap<IpAddr, usize>,
    /// Open connections in all, trusted proxies' included.
    open: usize,
    /// Requests in service per client.
    active: HashMap<IpAddr, usize>,
    /// Requests in service in all.
    busy: usize,
}

/// The rules and the counts they are checked against.
pub struct Clients {
    policy: Policy,
    state: Mutex<State>,
    freed: Condvar,
}

/// A peer's address in one form: IPv4 clients of an IPv6 socket come as
/// `::ffff:a.b.c.d`, and must match IPv4 networks.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

fn within(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&ip))
}

impl Clients {
    pub fn new(mut policy: Policy) -> Arc<Clients> {
        policy.per_client = policy.per_client.max(1);
        policy.workers = policy.workers.max(1);
        policy.max_connections = policy.max_connections.max(1);
        if policy.report {
            crate::metrics::http_connection_limits(
                policy.max_connections,
                policy.per_client.saturating_mul(CONNECTIONS_PER_SLOT),
            );
        }
        Arc::new(Clients {
            policy,
            state: Mutex::new(State::default()),
            freed: Condvar::new(),
        })
    }

    /// Whether `ip` may use the server.
    pub fn allowed(&self, ip: IpAddr) -> bool {
        self.policy.allow_from.is_empty() || within(&self.policy.allow_from, canonical(ip))
    }

    /// Whether `ip` is a trusted proxy.
    pub fn is_proxy(&self, ip: IpAddr) -> bool {
        within(&self.policy.trusted_proxies, canonical(ip))
    }

    /// The client a trusted proxy's request is for: the right-most X-Forwarded-For
    /// entry that is not itself a trusted proxy (entries further left were written
    /// by the client or by proxies we do not know, and can be forged). Without a
    /// usable entry, the proxy itself.
    pub fn client_of<'a>(&self, proxy: IpAddr, forwarded: impl Iterator<Item = &'a str>) -> IpAddr {
        let entries: Vec<&str> = forwarded.flat_map(|v| v.split(',')).collect();
        for entry in entries.iter().rev() {
            let Some(ip) = parse_forwarded(entry.trim()) else {
                break;
            };
            let ip = canonical(ip);
            if !self.is_proxy(ip) {
                return ip;
            }
        }
        canonical(proxy)
    }

    /// Counts a new connection from `ip`, or says which cap it is over.
    pub fn connect(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, Full> {
        let ip = canonical(ip);
        let proxy = self.is_proxy(ip);
        let cap = self.connection_cap();
        let mut st = self.state.lock();
        if st.open >= self.policy.max_connections {
            return Err(Full::Server);
        }
        if !proxy {
            let n = st.connections.entry(ip).or_insert(0);
            if *n >= cap {
                return Err(Full::Client);
            }
            *n += 1;
        }
        st.open += 1;
        if self.policy.report {
            st.report();
        }
        Ok(ConnectionSlot {
            clients: self.clone(),
            ip: (!proxy).then_some(ip),
        })
    }

    /// Connections the whole server may hold open.
    pub fn max_connections(&self) -> usize {
        self.policy.max_connections
    }

    /// Connections one address may hold open.
    pub fn connection_cap(&self) -> usize {
        self.policy.per_client.saturating_mul(CONNECTIONS_PER_SLOT)
    }

    /// Waits until `client` has fewer than `per_client` requests in service and a
    /// worker is free, then counts one more. Waiting holds nothing another client
    /// needs, so one busy host only delays itself.
    pub fn begin(self: &Arc<Self>, client: IpAddr) -> RequestSlot {
        let client = canonical(client);
        let mut st = self.state.lock();
        loop {
            let mine = st.active.get(&client).copied().unwrap_or(0);
            if mine < self.policy.per_client && st.busy < self.policy.workers {
                break;
            }
            self.freed.wait(&mut st);
        }
        *st.active.entry(client).or_insert(0) += 1;
        st.busy += 1;
        RequestSlot {
            clients: self.clone(),
            client,
        }
    }
}

/// An X-Forwarded-For entry: an address, maybe with a port (`1.2.3.4:5`,
/// `[::1]:5`).
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    if let Ok(sa) = entry.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .and_then(|e| e.parse().ok())
}

/// One open connection, counted until dropped.
pub struct ConnectionSlot {
    clients: Arc<Clients>,
    ip: Option<IpAddr>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut st = self.clients.state.lock();
        st.open -= 1;
        if let Some(ip) = self.ip
            && let Some(n) = st.connections.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                st.connections.remove(&ip);
            }
        }
        if self.clients.policy.report {
            st.report();
        }
    }
}

impl State {
    /// The connection gauges: open in all, addresses holding any, and the most one
    /// address holds (a walk over the addresses, each at most its cap).
    fn report(&self) {
        let busiest = self.connections.values().copied().max().unwrap_or(0);
        crate::metrics::http_connections(self.open, self.connections.len(), busiest);
    }
}

/// One request in service, counted until dropped.
pub struct RequestSlot {
    clients: Arc<Clients>,
    client: IpAddr,
}

impl Drop for RequestSlot {
    fn drop(&mut self) {
        let mut st = self.clients.state.lock();
        st.busy -= 1;
        if let Some(n) = st.active.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                st.active.remove(&self.client);
            }
        }
        drop(st);
        self.clients.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn allow_and_forwarded_for() {
        let c = Clients::new(Policy {
            allow_from: nets(&["10.0.0.0/8", "127.0.0.1/32"]),
            trusted_proxies: nets(&["192.168.1.1/32", "192.168.1.2/32"]),
            per_client: 2,
            workers: 4,
            max_connections: 100,
            report: false,
        });
        assert!(c.allowed(ip("10.1.2.3")));
        assert!(c.allowed(ip("::ffff:127.0.0.1")));
        assert!(!c.allowed(ip("127.0.0.2")));
        let proxy = ip("192.168.1.1");
        let xff = |v: &[&str]| c.client_of(proxy, v.iter().copied());
        assert_eq!(xff(&["10.9.9.9"]), ip("10.9.9.9"));
        // The left entry is the client's word; the right one, our proxy's.
        assert_eq!(xff(&["6.6.6.6, 10.9.9.9"]), ip("10.9.9.9"));
        assert_eq!(xff(&["6.6.6.6", "10.9.9.9, 192.168.1.2"]), ip("10.9.9.9"));
        assert_eq!(xff(&["[2001:db8::1]:443"]), ip("2001:db8::1"));
        assert_eq!(xff(&["10.9.9.9:1234"]), ip("10.9.9.9"));
        assert_eq!(xff(&["10.9.9.9, junk"]), proxy);
        assert_eq!(xff(&[]), proxy);
        assert!(Clients::new(Policy::default()).allowed(ip("1.2.3.4")));
    }

    #[test]
    fn connection_and_request_counts() {
        let c = Clients::new(Policy {
            per_client: 1,
            workers: 8,
            trusted_proxies: nets(&["10.0.0.1/32"]),
            max_connections: 10_000,
            ..Policy::default()
        });
        let a = ip("127.0.0.1");
        let held: Vec<_> = (0..CONNECTIONS_PER_SLOT)
            .map(|_| c.connect(a).unwrap())
            .collect();
        assert_eq!(c.connect(a).err(), Some(Full::Client));
        assert!(c.connect(ip("127.0.0.2")).is_ok());
        assert!((0..100).all(|_| c.connect(ip("10.0.0.1")).is_ok()));
        drop(held);
        assert!(c.connect(a).is_ok());
        // A second request of the same client waits for the first.
        let first = c.begin(a);
        let c2 = c.clone();
        let waiter = std::thread::spawn(move || drop(c2.begin(a)));
        let other = c.begin(ip("127.0.0.2"));
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!waiter.is_finished());
        drop(first);
        waiter.join().unwrap();
        drop(other);
        assert_eq!(c.state.lock().busy, 0);
    }

    #[test]
    fn the_server_cap_counts_every_address_and_proxies() {
        let c = Clients::new(Policy {
            per_client: 8,
            workers: 8,
            trusted_proxies: nets(&["10.0.0.1/32"]),
            max_connections: 10,
            ..Policy::default()
        });
        let mut held: Vec<_> = (0..9)
            .map(|i| c.connect(ip(&format!("127.0.0.{}", 1 + i))).unwrap())
            .collect();
        held.push(c.connect(ip("10.0.0.1")).unwrap());
        assert_eq!(c.connect(ip("127.0.0.99")).err(), Some(Full::Server));
        assert_eq!(c.connect(ip("10.0.0.1")).err(), Some(Full::Server));
        held.pop();
        assert!(c.connect(ip("127.0.0.99")).is_ok());
        drop(held);
        assert_eq!(c.state.lock().open, 0);
        assert!(c.state.lock().connections.is_empty());
    }
}
