//! A byte source for tests that fails where a test tells it to: a lost connection
//! at byte N with a chosen SQLSTATE, an I/O error, short data, a stall, content
//! that changed or a server that cannot be reached at set-up. The handle's
//! failure paths (resume, reconnect timeout, idle release, the first read that
//! cannot connect) run against it in milliseconds, with no cluster to SIGSTOP.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, BufRead, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use postgres::error::SqlState;

use super::cache::CHUNK;
use super::error::HandleErrorKind;
use super::source::{ByteSource, Session};

/// What goes wrong, once.
#[derive(Debug, Clone)]
pub(crate) enum Fault {
    /// The server reports `SqlState` (at set-up, or mid-read: a lost connection).
    Sql(SqlState),
    /// The socket fails (reset).
    Io,
    /// The bytes end early: the content is shorter than promised.
    Short,
    /// Nothing comes for this long, then the read goes on.
    Stall(Duration),
    /// At set-up: the content is no longer the one opened.
    Changed,
    /// At set-up: no connection can be made.
    Unreachable,
}

/// Counts of what the handle asked of the source.
#[derive(Default)]
pub(crate) struct Calls {
    pub(crate) opens: AtomicU32,
    pub(crate) ends: AtomicU32,
    pub(crate) reads: AtomicU32,
    pub(crate) windows: AtomicU32,
    /// Sessions that imported an exported snapshot.
    pub(crate) joins: AtomicU32,
    /// Requests that asked the server for each chunk (by chunk number), as a
    /// database would read it: a window counts every chunk it spans when it is
    /// asked for, read to its end or not (the server produces a `COPY` window's
    /// rows whether or not the stream takes them), a read every chunk it spans
    /// even if it fails.
    pub(crate) chunks: Mutex<HashMap<u64, u32>>,
}

impl Calls {
    fn count(&self, start: u64, end: u64) {
        let mut chunks = self.chunks.lock();
        for idx in start / CHUNK..end.div_ceil(CHUNK) {
            *chunks.entry(idx).or_default() += 1;
        }
    }

    /// How many requests asked for chunk `idx`.
    pub(crate) fn chunk_reads(&self, idx: u64) -> u32 {
        self.chunks.lock().get(&idx).copied().unwrap_or(0)
    }
}

#[derive(Default)]
struct Script {
    /// Faults of the next set-ups, in order; `None` is a set-up that works.
    on_open: VecDeque<Option<Fault>>,
    /// Faults at a byte offset, fired by the first read or window that reaches it.
    at: Vec<(u64, Fault)>,
    /// Every set-up from now on fails with this (a server that stays away).
    always: Option<Fault>,
}

/// Content held in memory, served as a source would serve it, with faults.
pub(crate) struct FakeSource {
    data: Arc<Vec<u8>>,
    script: Mutex<Script>,
    pub(crate) calls: Arc<Calls>,
    /// The content was replaced and its object unlinked: new sessions fail the
    /// content check; sessions already open, and those importing a snapshot
    /// exported before, still read the old bytes, as in PostgreSQL.
    replaced: AtomicBool,
    /// Snapshots exported by sessions still open.
    exported: Mutex<HashSet<u64>>,
    next_snapshot: AtomicU64,
}

impl FakeSource {
    pub(crate) fn new(data: Vec<u8>) -> Arc<FakeSource> {
        FakeSource::sharing(Arc::new(data))
    }

    /// [`FakeSource::new`] on bytes shared with other sources (each with its own
    /// counts and script).
    pub(crate) fn sharing(data: Arc<Vec<u8>>) -> Arc<FakeSource> {
        Arc::new(FakeSource {
            data,
            script: Mutex::default(),
            calls: Arc::default(),
            replaced: AtomicBool::new(false),
            exported: Mutex::default(),
            next_snapshot: AtomicU64::new(1),
        })
    }

    /// The next set-up fails with `fault`.
    pub(crate) fn fail_open(&self, fault: Fault) {
        self.script.lock().on_open.push_back(Some(fault));
    }

    /// The next set-up works (to order it before later failures).
    pub(crate) fn open_ok(&self) {
        self.script.lock().on_open.push_back(None);
    }

    /// Every set-up from now on fails with `fault`.
    pub(crate) fn fail_always(&self, fault: Fault) {
        self.script.lock().always = Some(fault);
    }

    /// The first read that reaches byte `at` meets `fault` there.
    pub(crate) fn fail_at(&self, at: u64, fault: Fault) {
        self.script.lock().at.push((at, fault));
    }

    /// Replaces the content, as MAAS does after a sync: a new object, the old
    /// one unlinked. Sessions set up from now on fail the content check.
    pub(crate) fn replace(&self) {
        self.replaced.store(true, Ordering::Relaxed);
    }

    /// The first pending fault in `start..end`, taken out of the script.
    fn take_fault(&self, start: u64, end: u64) -> Option<(u64, Fault)> {
        let mut s = self.script.lock();
        let i = s.at.iter().position(|(o, _)| (start..end).contains(o))?;
        Some(s.at.remove(i))
    }
}

fn sql(code: &SqlState) -> HandleErrorKind {
    HandleErrorKind::Server {
        code: code.clone(),
        message: "injected by the fake source".into(),
    }
}

fn reset() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        "injected by the fake source",
    )
}

impl ByteSource for Arc<FakeSource> {
    fn open(&self, _wait: Duration) -> Result<Box<dyn Session>, HandleErrorKind> {
        Ok(Box::new(self.session()?))
    }

    fn open_shared(
        &self,
        _wait: Duration,
        export: bool,
    ) -> Result<(Box<dyn Session>, Option<String>), HandleErrorKind> {
        let mut s = self.session()?;
        let mut name = None;
        if export {
            let id = self.next_snapshot.fetch_add(1, Ordering::Relaxed);
            self.exported.lock().insert(id);
            s.exported = Some(id);
            name = Some(format!("{id:08X}-1"));
        }
        Ok((Box::new(s), name))
    }

    fn join(&self, id: &str, _wait: Duration) -> Result<Box<dyn Session>, HandleErrorKind> {
        self.calls.joins.fetch_add(1, Ordering::Relaxed);
        let live = id
            .strip_suffix("-1")
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .is_some_and(|n| self.exported.lock().contains(&n));
        if !live {
            return Err(HandleErrorKind::Server {
                code: SqlState::INVALID_PARAMETER_VALUE,
                message: format!("invalid snapshot identifier: \"{id}\""),
            });
        }
        Ok(Box::new(FakeSession {
            src: self.clone(),
            exported: None,
        }))
    }

    fn describe(&self) -> String {
        "fake source".into()
    }
}

impl FakeSource {
    /// A new session, after the scripted set-up faults and the content check.
    fn session(self: &Arc<Self>) -> Result<FakeSession, HandleErrorKind> {
        self.calls.opens.fetch_add(1, Ordering::Relaxed);
        let fault = {
            let mut s = self.script.lock();
            s.always.clone().or_else(|| s.on_open.pop_front().flatten())
        };
        match fault {
            None | Some(Fault::Stall(_) | Fault::Short)
                if self.replaced.load(Ordering::Relaxed) =>
            {
                Err(HandleErrorKind::Changed)
            }
            None | Some(Fault::Stall(_) | Fault::Short) => Ok(FakeSession {
                src: self.clone(),
                exported: None,
            }),
            Some(Fault::Sql(code)) => Err(sql(&code)),
            Some(Fault::Io) => Err(HandleErrorKind::Stream(reset())),
            Some(Fault::Changed) => Err(HandleErrorKind::Changed),
            Some(Fault::Unreachable) => Err(HandleErrorKind::Connect(
                "connection refused (fake source)".into(),
            )),
        }
    }
}

struct FakeSession {
    src: Arc<FakeSource>,
    /// The snapshot this session exported: importable until it ends.
    exported: Option<u64>,
}

impl Drop for FakeSession {
    fn drop(&mut self) {
        if let Some(id) = self.exported.take() {
            self.src.exported.lock().remove(&id);
        }
    }
}

impl Session for FakeSession {
    fn read(&mut self, start: u64, len: u64, out: &mut Vec<u8>) -> Result<(), HandleErrorKind> {
        self.src.calls.reads.fetch_add(1, Ordering::Relaxed);
        let end = start + len;
        self.src.calls.count(start, end);
        let data = &self.src.data;
        match self.src.take_fault(start, end) {
            None => {}
            Some((_, Fault::Stall(d))) => std::thread::sleep(d),
            Some((_, Fault::Sql(code))) => return Err(sql(&code)),
            Some((_, Fault::Short)) => {
                return Err(HandleErrorKind::Truncated {
                    expected: end,
                    actual: start,
                });
            }
            Some(_) => return Err(HandleErrorKind::Stream(reset())),
        }
        let have = (data.len() as u64).min(end);
        if have < end {
            return Err(HandleErrorKind::Truncated {
                expected: end,
                actual: have,
            });
        }
        out.extend_from_slice(&data[start as usize..end as usize]);
        Ok(())
    }

    fn window(&mut self, start: u64, end: u64) -> Result<Box<dyn BufRead + '_>, HandleErrorKind> {
        self.src.calls.windows.fetch_add(1, Ordering::Relaxed);
        self.src.calls.count(start, end);
        let fault = self.src.take_fault(start, end);
        if let Some((at, Fault::Sql(code))) = &fault
            && *at == start
        {
            // At the start of a window: the statement itself fails.
            return Err(sql(code));
        }
        Ok(Box::new(io::BufReader::with_capacity(
            64 << 10,
            FakeWindow {
                data: self.src.data.clone(),
                at: start,
                end: end.min(self.src.data.len() as u64),
                fault,
            },
        )))
    }

    fn end(self: Box<Self>) {
        self.src.calls.ends.fetch_add(1, Ordering::Relaxed);
    }
}

/// A window's bytes, meeting its fault (if any) at its offset.
struct FakeWindow {
    data: Arc<Vec<u8>>,
    at: u64,
    end: u64,
    fault: Option<(u64, Fault)>,
}

impl Read for FakeWindow {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut stop = self.end;
        if let Some((o, f)) = &self.fault {
            if self.at == *o {
                let f = f.clone();
                self.fault = None;
                match f {
                    Fault::Stall(d) => std::thread::sleep(d),
                    Fault::Short => {
                        self.end = self.at;
                        return Ok(0);
                    }
                    _ => return Err(reset()),
                }
            } else {
                stop = stop.min(*o);
            }
        }
        let n = ((stop - self.at) as usize).min(buf.len());
        let from = self.at as usize;
        buf[..n].copy_from_slice(&self.data[from..from + n]);
        self.at += n as u64;
        Ok(n)
    }
}
