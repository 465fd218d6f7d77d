//! One snapshot per image being read, shared by all its readers.
//!
//! A reader may get its first bytes from memory, brought in by another reader's
//! stream, without a transaction of its own. If MAAS then replaces the image and
//! unlinks its large object, a later read that misses the cache would find the
//! object gone. So every reader joins the image's pin before its first byte: a
//! pooled session inside a `REPEATABLE READ READ ONLY` transaction that was
//! checked to hold the content (the same check as a handle's set-up), kept while
//! any reader of the image holds the pin. Its own session is lent to whichever
//! reader needs the database (a fetch, a stream) and parked in the pin again
//! when that reader lets it go; a reader that needs a session while the pin's is
//! lent out opens one that imports the pin's exported snapshot
//! (`SET TRANSACTION SNAPSHOT`), so it sees the same objects even after they
//! were unlinked.
//!
//! A pin costs one connection per image, and none for readers served by the
//! disk cache (a descriptor keeps the file's bytes). It ends when its last
//! reader closes or is released as idle. When the pool has no connection left,
//! the pin whose session has been parked the longest is given up
//! ([`Pins::preempt`]): its readers set up again, with the content check, when
//! they next need the database, as after an idle release. A pin whose session
//! was lost (a server restart) is set up again the same way: a new snapshot and
//! the content check. Where the server cannot export a snapshot, other readers'
//! sessions each take a snapshot of their own, with the content check.
//!
//! Locks: a pin's `state` is taken after a handle's state and never held across
//! I/O; the registry's map is taken alone; [`Pins::preempt`] only `try_lock`s
//! pins, since it runs inside a wait for the pool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use log::{debug, info};
use parking_lot::Mutex;

use super::error::HandleErrorKind;
use super::source::{ByteSource, Session};

/// The pins of one pool, by cache key.
#[derive(Default)]
pub(crate) struct Pins {
    map: Mutex<HashMap<String, Weak<Pin>>>,
    /// The server refused to export a snapshot (seen once, then not asked again).
    refused: AtomicBool,
}

impl Pins {
    /// The pin of `key`: the live one, or a new one not yet set up.
    pub(crate) fn get(self: &Arc<Self>, key: &str) -> Arc<Pin> {
        let mut map = self.map.lock();
        if let Some(p) = map.get(key).and_then(Weak::upgrade) {
            return p;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let p = Arc::new(Pin {
            key: key.to_string(),
            pins: Arc::downgrade(self),
            state: Mutex::default(),
        });
        map.insert(key.to_string(), Arc::downgrade(&p));
        p
    }

    /// The live pin of `key`, if one holds a snapshot (or is taking one): joining
    /// it needs no connection.
    pub(crate) fn existing(&self, key: &str) -> Option<Arc<Pin>> {
        let p = self.map.lock().get(key).and_then(Weak::upgrade)?;
        let live = {
            let st = p.state.lock();
            st.alive || st.starting
        };
        live.then_some(p)
    }

    /// Ends the session of the pin parked longest, if any, so a reader waiting
    /// for a connection gets one; true if one was given up.
    pub(crate) fn preempt(&self) -> bool {
        let live: Vec<Arc<Pin>> = self.map.lock().values().filter_map(Weak::upgrade).collect();
        let oldest = live
            .iter()
            .filter_map(|p| {
                let st = p.state.try_lock()?;
                st.parked.as_ref()?;
                Some((st.parked_at, p))
            })
            .min_by_key(|(at, _)| *at)
            .map(|(_, p)| p.clone());
        let Some(pin) = oldest else {
            return false;
        };
        let Some(session) = pin.state.try_lock().and_then(|mut st| st.kill()) else {
            return false;
        };
        debug!(
            "{}: no connection free; giving up the snapshot of readers who do not use it now",
            pin.key
        );
        session.end();
        true
    }

    /// Pins whose snapshot is held now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.map
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .filter(|p| p.state.lock().alive)
            .count()
    }

    fn may_export(&self) -> bool {
        !self.refused.load(Ordering::Relaxed)
    }

    /// Records that the server cannot export snapshots, once.
    pub(crate) fn refuse(&self, why: &str) {
        if !self.refused.swap(true, Ordering::Relaxed) {
            info!(
                "the server cannot share snapshots between sessions ({why}); readers of one \
                 image that need a connection while another holds it take their own snapshot"
            );
        }
    }
}

/// The snapshot of one image for every reader that still needs it.
pub(crate) struct Pin {
    key: String,
    pins: Weak<Pins>,
    state: Mutex<PinState>,
}

#[derive(Default)]
struct PinState {
    /// The pin's own session while no reader uses it.
    parked: Option<Box<dyn Session>>,
    /// Since when it is parked: the longest parked goes first under pressure.
    parked_at: Option<Instant>,
    /// The own session exists (parked or lent out), so its snapshot does.
    alive: bool,
    /// Another reader is setting up the own session now.
    starting: bool,
    /// The own session's exported snapshot; None where the server cannot export.
    snapshot: Option<String>,
    /// Bumped with every new own session: an old one's return is not this one's.
    generation: u64,
}

impl PinState {
    /// Forgets the own session and its snapshot; the parked session, if any,
    /// for the caller to end outside the lock.
    fn kill(&mut self) -> Option<Box<dyn Session>> {
        self.alive = false;
        self.snapshot = None;
        self.generation += 1;
        self.parked_at = None;
        self.parked.take()
    }
}

impl Pin {
    /// Makes sure the pin holds a snapshot of the content: joins the live one, or
    /// sets one up (the content check included) and parks its session. A reader
    /// calls this before its first byte, so what it reads is fixed from then on.
    pub(crate) fn establish(
        self: &Arc<Self>,
        source: &dyn ByteSource,
        wait: Duration,
    ) -> Result<(), HandleErrorKind> {
        {
            let mut st = self.state.lock();
            if st.alive || st.starting {
                return Ok(());
            }
            st.starting = true;
        }
        let res = self.open_own(source, wait);
        let mut st = self.state.lock();
        st.starting = false;
        let (session, snapshot) = res?;
        st.alive = true;
        st.snapshot = snapshot;
        st.generation += 1;
        st.parked = Some(session);
        st.parked_at = Some(Instant::now());
        Ok(())
    }

    fn open_own(
        &self,
        source: &dyn ByteSource,
        wait: Duration,
    ) -> Result<(Box<dyn Session>, Option<String>), HandleErrorKind> {
        let export = self.pins.upgrade().is_some_and(|p| p.may_export());
        source.open_shared(wait, export)
    }

    /// A session in the pin's snapshot for a reader that needs the database:
    /// the pin's own when it is parked, else one importing its snapshot. A pin
    /// that lost its session (or never had one) sets up again, with the content
    /// check.
    pub(crate) fn session(
        self: &Arc<Self>,
        source: &dyn ByteSource,
        wait: Duration,
    ) -> Result<Box<dyn Session>, HandleErrorKind> {
        let snapshot = {
            let mut st = self.state.lock();
            if let Some(s) = st.parked.take() {
                st.parked_at = None;
                return Ok(self.lend(s, Some(st.generation)));
            }
            if !st.alive && !st.starting {
                drop(st);
                self.establish(source, wait)?;
                return self.session(source, wait);
            }
            st.snapshot.clone()
        };
        let Some(id) = snapshot else {
            // No snapshot to share (the server cannot export, or the pin is
            // being set up by another reader): one of its own, checked.
            return Ok(self.lend(source.open(wait)?, None));
        };
        match source.join(&id, wait) {
            Ok(s) => Ok(self.lend(s, None)),
            // The exporting session ended meanwhile (its connection was lost or
            // the pin given up): a snapshot of its own, with the content check.
            Err(e @ (HandleErrorKind::Db(_) | HandleErrorKind::Server { .. })) => {
                debug!(
                    "{}: cannot import snapshot {id} ({e:?}); taking a new one",
                    self.key
                );
                Ok(self.lend(source.open(wait)?, None))
            }
            Err(e) => Err(e),
        }
    }

    fn lend(self: &Arc<Self>, inner: Box<dyn Session>, own: Option<u64>) -> Box<dyn Session> {
        Box::new(Lent {
            inner: Some(inner),
            pin: self.clone(),
            own,
        })
    }

    /// Takes back the own session of `generation`; ends it if the pin moved on.
    fn park(&self, session: Box<dyn Session>, generation: u64) {
        let mut st = self.state.lock();
        if st.alive && st.generation == generation && st.parked.is_none() {
            st.parked = Some(session);
            st.parked_at = Some(Instant::now());
            return;
        }
        drop(st);
        session.end();
    }

    /// The own session of `generation` was dropped without ending (lost, or in a
    /// state that cannot be trusted): the snapshot went with it.
    fn lost(&self, generation: u64) {
        let mut st = self.state.lock();
        if st.generation == generation {
            let parked = st.kill();
            drop(st);
            if let Some(s) = parked {
                s.end();
            }
        }
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        if let Some(s) = self.state.get_mut().kill() {
            s.end();
        }
    }
}

/// A session lent out of a pin: the pin's own (`own` is its generation), given
/// back to it when ended, or one that imported its snapshot.
struct Lent {
    inner: Option<Box<dyn Session>>,
    /// Keeps the snapshot alive while the session is out.
    pin: Arc<Pin>,
    own: Option<u64>,
}

impl Session for Lent {
    fn read(&mut self, start: u64, len: u64, out: &mut Vec<u8>) -> Result<(), HandleErrorKind> {
        match self.inner.as_mut() {
            Some(s) => s.read(start, len, out),
            None => Err(HandleErrorKind::Failed),
        }
    }

    fn window(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Box<dyn std::io::BufRead + '_>, HandleErrorKind> {
        match self.inner.as_mut() {
            Some(s) => s.window(start, end),
            None => Err(HandleErrorKind::Failed),
        }
    }

    fn end(mut self: Box<Self>) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        match self.own {
            Some(generation) => self.pin.park(inner, generation),
            None => inner.end(),
        }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        // Dropped without end(): the connection is discarded, never reused.
        if self.inner.take().is_some()
            && let Some(generation) = self.own
        {
            self.pin.lost(generation);
        }
    }
}
