//! A real `pgbootfs serve` on a free loopback port, and a raw HTTP/1.1 client that
//! shows exactly what went over the wire.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::{bin, spawn_logged, temp_dir};

/// A running `pgbootfs serve`, stopped on drop.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    log: PathBuf,
    pub tmp: tempfile::TempDir,
}

impl Server {
    /// Starts `pgbootfs serve --listen 127.0.0.1:0` with extra args and waits for
    /// the address it logs.
    pub fn start(conninfo: &str, extra: &[&str]) -> Server {
        let tmp = temp_dir("pgbt-http-");
        let log = tmp.path().join("pgbootfs.log");
        let mut cmd = Command::new(bin());
        cmd.args(["--db", conninfo, "serve", "--listen", "127.0.0.1:0"])
            .args(extra);
        let child = spawn_logged(cmd, &log);
        Self::wait(child, log, tmp)
    }

    /// Waits for the `listening on http://ADDR` line of a started process.
    pub fn wait(child: Child, log: PathBuf, tmp: tempfile::TempDir) -> Server {
        let mut s = Server {
            child: Some(child),
            addr: "127.0.0.1:1".parse().unwrap(),
            log,
            tmp,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = s.log();
            // Only a complete line: the log may be read while it is being written.
            if let Some((line, _)) = text
                .split("listening on http://")
                .nth(1)
                .and_then(|rest| rest.split_once('\n'))
            {
                let addr = line.split_whitespace().next().unwrap_or_default();
                s.addr = addr
                    .parse()
                    .unwrap_or_else(|e| panic!("bad address {addr:?}: {e}"));
                return s;
            }
            if let Some(st) = s.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("pgbootfs exited early ({st}):\n{text}");
            }
            assert!(Instant::now() < deadline, "not listening in time:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Peak resident memory of the server so far, in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().map_or(0, |c| c.id());
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Threads of the server now (from /proc).
    pub fn threads(&self) -> u64 {
        let pid = self.child.as_ref().map_or(0, |c| c.id());
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends one raw request (add `Connection: close` to read to the end).
    pub fn raw(&self, request: &str) -> Reply {
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        Reply::parse(&buf)
    }

    /// `METHOD path` with extra header lines, on a fresh connection.
    pub fn req(&self, method: &str, path: &str, headers: &[&str]) -> Reply {
        let mut r = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
        for h in headers {
            r.push_str(h);
            r.push_str("\r\n");
        }
        r.push_str("\r\n");
        self.raw(&r)
    }

    pub fn get(&self, path: &str, headers: &[&str]) -> Reply {
        self.req("GET", path, headers)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            super::terminate(child);
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(200).collect();
            eprintln!(
                "--- pgbootfs log (last 200 lines) ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// A parsed response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn parse(buf: &[u8]) -> Reply {
        let split = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(buf)));
        let head = String::from_utf8_lossy(&buf[..split]).to_string();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        Reply {
            status,
            headers,
            body: buf[split + 4..].to_vec(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Headers except Date, for comparing two responses.
    pub fn stable_headers(&self) -> Vec<(String, String)> {
        let mut h: Vec<_> = self
            .headers
            .iter()
            .filter(|(k, _)| k != "date")
            .cloned()
            .collect();
        h.sort();
        h
    }
}

/// sstream-mirror: $PGBOOTFS_SSTREAM_MIRROR, else from PATH.
pub fn sstream_mirror() -> String {
    std::env::var("PGBOOTFS_SSTREAM_MIRROR").unwrap_or_else(|_| "sstream-mirror".into())
}

/// redbot, the HTTP linter: $PGBOOTFS_REDBOT, else from PATH.
pub fn redbot() -> String {
    std::env::var("PGBOOTFS_REDBOT").unwrap_or_else(|_| "redbot".into())
}
