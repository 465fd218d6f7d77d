//! Who fetches what, per content: single flight (a chunk being fetched is waited
//! for, not fetched again) and the fronts of running read-ahead streams (readers
//! near a front wait for it and push it on). Plain data, no locking and no
//! knowledge of which chunks are held: the cache calls it under its one mutex.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::sync::Condvar;

/// A read this far ahead of a stream's front still waits for the stream rather
/// than fetching on its own.
pub(super) const COVER: u64 = 16 << 20;

/// What is going on for one content while handles on it exist.
pub(super) struct Entry {
    /// Views open on the content (handles and their streams).
    pub(super) handles: usize,
    /// Where streams wait for room (see [`super::Content::room_for`]).
    pub(super) cv: Arc<Condvar>,
    /// Chunks being fetched by one reader, each with a claim out.
    pub(super) fetching: HashSet<u64>,
    pub(super) streams: Vec<Front>,
    /// Readers waiting for a chunk, one condition per chunk: a delivery wakes only
    /// its own readers. (One condition for all had every waiting reader wake and
    /// take the lock at every chunk, which slowed the stream delivering them.)
    pub(super) waiting: HashMap<u64, Arc<Condvar>>,
    /// Where each open reader's last read ended (0 before its first), by reader
    /// id; background views have none.
    at: HashMap<u64, u64>,
    /// The same offsets, counted, for the least of them.
    places: BTreeMap<u64, usize>,
}

/// A running stream's position: the next offset it delivers, and the furthest
/// offset a reader following it has asked for.
pub(super) struct Front {
    pub(super) id: u64,
    pub(super) next: u64,
    pub(super) wanted: u64,
}

impl Front {
    fn covers(&self, off: u64) -> bool {
        off >= self.next && off < self.next + COVER
    }
}

impl Entry {
    pub(super) fn new() -> Entry {
        Entry {
            handles: 0,
            cv: Arc::new(Condvar::new()),
            fetching: HashSet::new(),
            streams: Vec::new(),
            waiting: HashMap::new(),
            at: HashMap::new(),
            places: BTreeMap::new(),
        }
    }

    /// Reader `reader`'s last read ended at `end` (a new reader is at 0).
    pub(super) fn reader_at(&mut self, reader: u64, end: u64) {
        self.reader_left(reader);
        self.at.insert(reader, end);
        *self.places.entry(end).or_default() += 1;
    }

    /// Reader `reader` closed.
    pub(super) fn reader_left(&mut self, reader: u64) {
        if let Some(old) = self.at.remove(&reader)
            && let Some(n) = self.places.get_mut(&old)
        {
            *n -= 1;
            if *n == 0 {
                self.places.remove(&old);
            }
        }
    }

    /// The first chunk some open reader has not passed (the one holding the
    /// least offset where a reader's last read ended); None without readers.
    pub(super) fn first_not_passed(&self) -> Option<u64> {
        self.places.keys().next().map(|at| at / super::CHUNK)
    }

    /// Is chunk `idx` (at `off`) on its way: being fetched, or within a stream's
    /// cover?
    pub(super) fn coming(&self, idx: u64, off: u64) -> bool {
        self.fetching.contains(&idx) || self.streams.iter().any(|f| f.covers(off))
    }

    /// The condition to wait on for chunk `idx`.
    pub(super) fn waiter(&mut self, idx: u64) -> Arc<Condvar> {
        self.waiting
            .entry(idx)
            .or_insert_with(|| Arc::new(Condvar::new()))
            .clone()
    }

    /// Records that a reader wants `off`: each stream it follows may run ahead of
    /// it. True if a front moved (its stream may have room now).
    pub(super) fn want(&mut self, off: u64) -> bool {
        let mut moved = false;
        for f in &mut self.streams {
            if off < f.next + COVER && off > f.wanted {
                f.wanted = off;
                moved = true;
            }
        }
        moved
    }

    /// Stream `id` delivered up to `end`.
    pub(super) fn advance(&mut self, id: u64, end: u64) {
        if let Some(f) = self.streams.iter_mut().find(|f| f.id == id) {
            f.next = end;
        }
    }

    /// Ends stream `id`; true if it was running.
    pub(super) fn end_stream(&mut self, id: u64) -> bool {
        let before = self.streams.len();
        self.streams.retain(|f| f.id != id);
        self.wake_all();
        self.streams.len() < before
    }

    /// Wakes the readers of chunk `idx`.
    pub(super) fn wake(&mut self, idx: u64) {
        if let Some(cv) = self.waiting.remove(&idx) {
            cv.notify_all();
        }
    }

    /// Wakes every waiting reader, to look again (a fetch or stream ended).
    pub(super) fn wake_all(&mut self) {
        for (_, cv) in self.waiting.drain() {
            cv.notify_all();
        }
    }

    /// Nothing uses the entry any more.
    pub(super) fn unused(&self) -> bool {
        self.handles == 0 && self.streams.is_empty() && self.fetching.is_empty()
    }
}
