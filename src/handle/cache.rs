//! The chunk cache every handle of a pool reads through, keyed by content (sha256
//! and chunk number), so the database sees one read of an image however many
//! readers it has.
//!
//! - A chunk is fetched once: one being fetched, or about to arrive from a running
//!   read-ahead stream, is waited for (single flight).
//! - A stream belongs to the handle that started it (its connection, its
//!   snapshot) but feeds everyone: readers near its front wait for it, and push its
//!   front, so it runs at the pace of its fastest reader, never more than its
//!   window ahead (backpressure). A reader that falls behind the cache's memory
//!   fetches for itself.
//! - Memory is bounded: least recently used chunks go first.
//!
//! One mutex guards it all. Every operation under it is a map update, and a chunk
//! is 512 KiB, so even a few GB/s is a few thousand short lock holds a second;
//! waiters sleep on their content's own condition variable.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use lru::LruCache;
use parking_lot::{Condvar, Mutex, MutexGuard};

/// Size and alignment of cached chunks. Aligned kernel requests (capped at this
/// size by the mount) fall inside one chunk.
pub(crate) const CHUNK: u64 = 512 << 10;

/// A read this far ahead of a stream's front still waits for the stream rather
/// than fetching on its own.
const COVER: u64 = 16 << 20;

/// Most a lone stream runs ahead of its fastest reader: bridges the gaps between
/// the kernel's read-ahead batches.
const MAX_AHEAD: u64 = 32 << 20;

/// Least any stream may run ahead, however many run.
const MIN_AHEAD: u64 = 2 * CHUNK;

/// What a running stream holds outside the cache, counted against the budget so
/// that `--cache-memory` bounds the streams' memory as well as the chunks': its
/// connection's receive buffers (the client library keeps a buffer that doubles
/// past a 256 KiB COPY row, and a batch or two of rows in flight) and its reader's
/// reply. Measured at 0.7 to 1.5 MiB a stream with 32 and 64 streams (massif; and
/// the allocator's live bytes against the cache's own count).
const STREAM_OUTSIDE: u64 = 1 << 20;

type Key = (Arc<str>, u64);

/// Chunks in memory, and who is fetching what.
pub struct ChunkCache {
    budget: u64,
    state: Mutex<State>,
    buffers: Arc<Buffers>,
}

/// Ready chunk buffers. A fresh 512 KiB buffer costs 128 page faults when first
/// written, and on a cold read those faults, taken by the read-ahead thread, were
/// a third of its time (perf, BENCHMARKS.md): a helper thread keeps a few buffers
/// faulted in ahead of need, on an otherwise idle core, and evicted chunks'
/// buffers are reused.
struct Buffers {
    free: Mutex<Vec<Vec<u8>>>,
    wanted: Condvar,
    started: std::sync::Once,
}

/// Buffers kept ready: 8 MiB.
const READY: usize = 16;

/// Evicted buffers kept for reuse: 32 MiB.
const KEEP: usize = 64;

impl Buffers {
    fn take(self: &Arc<Self>) -> Vec<u8> {
        self.started.call_once(|| {
            let me = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name("chunk-buffers".into())
                .spawn(move || Buffers::keep_ready(&me));
            if let Err(e) = spawned {
                log::debug!("no buffer helper thread ({e}): buffers are made on demand");
            }
        });
        let mut free = self.free.lock();
        let buf = free.pop();
        if free.len() < READY / 2 {
            self.wanted.notify_one();
        }
        drop(free);
        buf.unwrap_or_else(|| Vec::with_capacity(CHUNK as usize))
    }

    fn give(&self, mut buf: Vec<u8>) {
        let mut free = self.free.lock();
        if free.len() < KEEP && buf.capacity() >= CHUNK as usize {
            buf.clear();
            free.push(buf);
        }
    }

    /// Keeps READY faulted-in buffers while the cache lives.
    fn keep_ready(me: &std::sync::Weak<Buffers>) {
        loop {
            let Some(b) = me.upgrade() else { return };
            let missing = READY.saturating_sub(b.free.lock().len());
            for _ in 0..missing {
                // Writing every page faults it in here, not in the read-ahead thread
                // (vec![0; n] would not: calloc hands out untouched zero pages).
                let mut v = Vec::with_capacity(CHUNK as usize);
                v.resize(CHUNK as usize, 1u8);
                v.clear();
                b.give(v);
            }
            let mut free = b.free.lock();
            if free.len() >= READY {
                b.wanted.wait_for(&mut free, Duration::from_secs(1));
            }
        }
    }
}

struct State {
    chunks: LruCache<Key, Arc<Vec<u8>>>,
    bytes: u64,
    contents: HashMap<Arc<str>, Entry>,
    next_stream: u64,
    streams: usize,
}

/// What is going on for one content while handles on it exist.
struct Entry {
    handles: usize,
    /// Where streams wait for room (see [`Content::room`]).
    cv: Arc<Condvar>,
    fetching: HashSet<u64>,
    streams: Vec<Front>,
    /// Readers waiting for a chunk, one condition per chunk: a delivery wakes only
    /// its own readers. (One condition for all had every waiting reader wake and
    /// take the lock at every chunk, which slowed the stream delivering them.)
    waiting: HashMap<u64, Arc<Condvar>>,
}

impl Entry {
    /// Wakes the readers of chunk `idx`.
    fn wake(&mut self, idx: u64) {
        if let Some(cv) = self.waiting.remove(&idx) {
            cv.notify_all();
        }
    }

    /// Wakes every waiting reader, to look again (a fetch or stream ended).
    fn wake_all(&mut self) {
        for (_, cv) in self.waiting.drain() {
            cv.notify_all();
        }
    }
}

/// A running stream's position: the next offset it delivers, and the furthest
/// offset a reader following it has asked for.
struct Front {
    id: u64,
    next: u64,
    wanted: u64,
}

impl Front {
    fn covers(&self, off: u64) -> bool {
        off >= self.next && off < self.next + COVER
    }
}

/// What a reader of a missing chunk should do.
pub(crate) enum Step {
    /// Here it is.
    Hit(Arc<Vec<u8>>),
    /// Someone is fetching it: look again (the call already waited a little).
    Retry,
    /// Nobody is: fetch this one chunk, then [`Content::insert`] or [`Content::abandon`].
    Fetch,
    /// Nobody is: start a stream here under this id, then feed it with
    /// [`Content::deliver`] and end it with [`Content::end_stream`].
    Stream(u64),
}

impl ChunkCache {
    /// A cache holding at most `budget` bytes of chunks (at least a few chunks).
    pub fn new(budget: u64) -> ChunkCache {
        ChunkCache {
            budget: budget.max(4 * CHUNK),
            state: Mutex::new(State {
                chunks: LruCache::unbounded(),
                bytes: 0,
                contents: HashMap::new(),
                next_stream: 1,
                streams: 0,
            }),
            buffers: Arc::new(Buffers {
                free: Mutex::new(Vec::new()),
                wanted: Condvar::new(),
                started: std::sync::Once::new(),
            }),
        }
    }

    /// Bytes of chunks held now.
    pub fn bytes(&self) -> u64 {
        self.state.lock().bytes
    }

    /// Joins the readers of content `sha256` of `size` bytes.
    pub(crate) fn content(self: &Arc<Self>, sha256: &str, size: u64) -> Content {
        let mut st = self.state.lock();
        let key: Arc<str> = st
            .contents
            .get_key_value(sha256)
            .map_or_else(|| Arc::from(sha256), |(k, _)| k.clone());
        let entry = st.contents.entry(key.clone()).or_insert_with(|| Entry {
            handles: 0,
            cv: Arc::new(Condvar::new()),
            fetching: HashSet::new(),
            streams: Vec::new(),
            waiting: HashMap::new(),
        });
        entry.handles += 1;
        Content {
            cv: entry.cv.clone(),
            cache: self.clone(),
            key,
            size,
        }
    }
}

/// One handle's view of the cache: the chunks of one content.
pub(crate) struct Content {
    cache: Arc<ChunkCache>,
    key: Arc<str>,
    size: u64,
    cv: Arc<Condvar>,
}

impl Content {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.cache.state.lock()
    }

    fn entry<'a>(&self, st: &'a mut State) -> &'a mut Entry {
        // Present while this Content lives: it holds a count on it.
        st.contents
            .get_mut(&self.key)
            .expect("a content's entry lives as long as the content")
    }

    /// The chunk at `idx` if cached; a hit also pushes the fronts of the streams
    /// it follows.
    pub(crate) fn get(&self, idx: u64) -> Option<Arc<Vec<u8>>> {
        let mut st = self.lock();
        let hit = st.chunks.get(&(self.key.clone(), idx)).cloned();
        if hit.is_some() {
            self.want(&mut st, idx * CHUNK);
        }
        hit
    }

    /// Records that a reader wants `off`: each stream it follows may run ahead of it.
    fn want(&self, st: &mut State, off: u64) {
        let mut moved = false;
        for f in &mut self.entry(st).streams {
            if off < f.next + COVER && off > f.wanted {
                f.wanted = off;
                moved = true;
            }
        }
        if moved {
            self.cv.notify_all();
        }
    }

    /// Decides who gets chunk `idx`: a hit, a wait for another's fetch, or a fetch
    /// of ours (a stream when the reader is `sequential`).
    pub(crate) fn step(&self, idx: u64, sequential: bool, wait: Duration) -> Step {
        let off = idx * CHUNK;
        let mut st = self.lock();
        if let Some(d) = st.chunks.get(&(self.key.clone(), idx)).cloned() {
            self.want(&mut st, off);
            return Step::Hit(d);
        }
        self.want(&mut st, off);
        let entry = self.entry(&mut st);
        if entry.fetching.contains(&idx) || entry.streams.iter().any(|f| f.covers(off)) {
            let cv = entry
                .waiting
                .entry(idx)
                .or_insert_with(|| Arc::new(Condvar::new()))
                .clone();
            cv.wait_for(&mut st, wait);
            return Step::Retry;
        }
        if sequential && off + CHUNK < self.size {
            let id = st.next_stream;
            st.next_stream += 1;
            st.streams += 1;
            self.entry(&mut st).streams.push(Front {
                id,
                next: off,
                wanted: off,
            });
            return Step::Stream(id);
        }
        self.entry(&mut st).fetching.insert(idx);
        Step::Fetch
    }

    /// Stores a chunk fetched after [`Step::Fetch`] and wakes its waiters.
    pub(crate) fn insert(&self, idx: u64, data: Arc<Vec<u8>>) {
        let mut st = self.lock();
        self.store(&mut st, idx, data);
        let entry = self.entry(&mut st);
        entry.fetching.remove(&idx);
        entry.wake(idx);
    }

    /// Gives up a fetch after [`Step::Fetch`]; a waiter will try for itself.
    pub(crate) fn abandon(&self, idx: u64) {
        let mut st = self.lock();
        let entry = self.entry(&mut st);
        entry.fetching.remove(&idx);
        entry.wake(idx);
    }

    fn store(&self, st: &mut State, idx: u64, data: Arc<Vec<u8>>) {
        let len = data.len() as u64;
        if let Some(old) = st.chunks.put((self.key.clone(), idx), data) {
            st.bytes -= old.len() as u64;
            self.recycle(old);
        }
        st.bytes += len;
        // Buffers kept for reuse, chunks being filled by streams and the streams'
        // own buffers count against the budget too: the budget bounds what reading
        // costs in memory, not just the cache.
        // Never below what the running streams need ahead of their readers: a chunk
        // evicted before its reader got it is fetched again, and a small budget
        // with many streams would then thrash.
        let reserved = (self.cache.buffers.free.lock().len() + st.streams) as u64 * CHUNK
            + st.streams as u64 * STREAM_OUTSIDE;
        let floor = (st.streams as u64 * 2 * MIN_AHEAD).max(4 * CHUNK);
        let cap = self.cache.budget.saturating_sub(reserved).max(floor);
        while st.bytes > cap {
            match st.chunks.pop_lru() {
                Some((_, old)) => {
                    st.bytes -= old.len() as u64;
                    self.recycle(old);
                }
                None => break,
            }
        }
    }

    /// Reuses an evicted chunk's buffer if no reader still holds it.
    fn recycle(&self, old: Arc<Vec<u8>>) {
        if let Ok(buf) = Arc::try_unwrap(old) {
            self.cache.buffers.give(buf);
        }
    }

    /// An empty buffer with room for a chunk, ready to be written.
    pub(crate) fn buffer(&self) -> Vec<u8> {
        self.cache.buffers.take()
    }

    /// Waits until stream `id` may deliver its next chunk: while it is more than
    /// its share of the memory budget ahead of its fastest reader. False once the
    /// stream was ended or `stop` says so.
    pub(crate) fn room(&self, id: u64, stop: &dyn Fn() -> bool) -> bool {
        let mut st = self.lock();
        loop {
            if stop() {
                return false;
            }
            match self.room_now(&mut st, id) {
                Some(true) => return true,
                Some(false) => {}
                None => return false,
            }
            let cv = self.cv.clone();
            cv.wait_for(&mut st, Duration::from_millis(50));
        }
    }

    /// May stream `id` deliver now? None once it was ended.
    fn room_now(&self, st: &mut State, id: u64) -> Option<bool> {
        let ahead = (self.cache.budget / 2 / st.streams.max(1) as u64).clamp(MIN_AHEAD, MAX_AHEAD);
        let f = self.entry(st).streams.iter().find(|f| f.id == id)?;
        Some(f.next < f.wanted + ahead)
    }

    /// Stores the next chunk of stream `id` and moves its front.
    pub(crate) fn deliver(&self, id: u64, start: u64, data: Arc<Vec<u8>>) {
        let end = start + data.len() as u64;
        let mut st = self.lock();
        self.store(&mut st, start / CHUNK, data);
        let entry = self.entry(&mut st);
        if let Some(f) = entry.streams.iter_mut().find(|f| f.id == id) {
            f.next = end;
        }
        entry.wake(start / CHUNK);
    }

    /// Ends stream `id`: what it did not deliver, readers fetch for themselves.
    pub(crate) fn end_stream(&self, id: u64) {
        let mut st = self.lock();
        let entry = self.entry(&mut st);
        let before = entry.streams.len();
        entry.streams.retain(|f| f.id != id);
        let ended = entry.streams.len() < before;
        entry.wake_all();
        self.cv.notify_all();
        if ended {
            st.streams -= 1;
        }
    }

    /// Wakes the streams of this content (to see a stop request, say).
    pub(crate) fn wake(&self) {
        self.cv.notify_all();
    }
}

impl Drop for Content {
    fn drop(&mut self) {
        let mut st = self.lock();
        let gone = match st.contents.get_mut(&self.key) {
            Some(e) => {
                e.handles -= 1;
                e.handles == 0 && e.streams.is_empty() && e.fetching.is_empty()
            }
            None => false,
        };
        if gone {
            st.contents.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(v: u8) -> Arc<Vec<u8>> {
        Arc::new(vec![v; CHUNK as usize])
    }

    #[test]
    fn one_reader_fetches_while_the_others_wait() {
        let cache = Arc::new(ChunkCache::new(64 * CHUNK));
        let a = cache.content("aa", 10 * CHUNK);
        let b = cache.content("aa", 10 * CHUNK);
        assert!(matches!(a.step(3, false, Duration::ZERO), Step::Fetch));
        // b finds the fetch under way and waits instead of fetching too.
        assert!(matches!(b.step(3, false, Duration::ZERO), Step::Retry));
        a.insert(3, chunk(7));
        match b.step(3, false, Duration::ZERO) {
            Step::Hit(d) => assert_eq!(d[0], 7),
            _ => panic!("b should find a's chunk"),
        }
        // Another content with the same chunk number is another key.
        let c = cache.content("bb", 10 * CHUNK);
        assert!(c.get(3).is_none());
    }

    #[test]
    fn an_abandoned_fetch_passes_to_the_next_reader() {
        let cache = Arc::new(ChunkCache::new(64 * CHUNK));
        let a = cache.content("aa", 10 * CHUNK);
        let b = cache.content("aa", 10 * CHUNK);
        assert!(matches!(a.step(0, false, Duration::ZERO), Step::Fetch));
        a.abandon(0);
        assert!(matches!(b.step(0, false, Duration::ZERO), Step::Fetch));
    }

    #[test]
    fn a_stream_is_followed_and_held_back_by_its_fastest_reader() {
        let cache = Arc::new(ChunkCache::new(8 * CHUNK));
        let size = 100 * CHUNK;
        let a = cache.content("aa", size);
        let b = cache.content("aa", size);
        let Step::Stream(id) = a.step(0, true, Duration::ZERO) else {
            panic!("a sequential reader at 0 starts a stream");
        };
        // Within the stream's cover, b waits rather than fetching.
        assert!(matches!(b.step(2, true, Duration::ZERO), Step::Retry));
        let room = |c: &Content| {
            let mut st = c.lock();
            c.room_now(&mut st, id)
        };
        let mut delivered = 0;
        // Budget 8 chunks, one stream: it may run budget/2 = 4 chunks past the
        // furthest reader (b, at chunk 2), and no further.
        while room(&a) == Some(true) && delivered < 50 {
            a.deliver(id, delivered * CHUNK, chunk(delivered as u8));
            delivered += 1;
        }
        assert_eq!(delivered, 6, "stopped 4 chunks past a reader at chunk 2");
        assert!(matches!(b.step(2, true, Duration::ZERO), Step::Hit(_)));
        // A reader further on pushes the front.
        assert!(matches!(b.step(6, true, Duration::ZERO), Step::Retry));
        assert_eq!(room(&a), Some(true));
        a.end_stream(id);
        assert_eq!(room(&a), None, "an ended stream has no room");
        let stop = || true;
        assert!(!a.room(id, &stop));
    }

    #[test]
    fn memory_stays_within_the_budget() {
        let cache = Arc::new(ChunkCache::new(4 * CHUNK));
        let a = cache.content("aa", 100 * CHUNK);
        for i in 0..10 {
            assert!(matches!(a.step(i, false, Duration::ZERO), Step::Fetch));
            a.insert(i, chunk(i as u8));
        }
        assert_eq!(cache.bytes(), 4 * CHUNK);
        assert!(a.get(0).is_none(), "the oldest chunk went");
        assert!(a.get(9).is_some(), "the newest stayed");
    }

    #[test]
    fn many_streams_on_a_small_budget_keep_their_windows() {
        let cache = Arc::new(ChunkCache::new(4 * CHUNK));
        let a = cache.content("aa", 1000 * CHUNK);
        // Three streams running: each needs its window, whatever the budget.
        for at in [0, 100, 200] {
            assert!(matches!(a.step(at, true, Duration::ZERO), Step::Stream(_)));
        }
        let floor = 3 * 2 * MIN_AHEAD;
        for i in 0..floor / CHUNK {
            a.insert(500 + i, chunk(1));
        }
        assert_eq!(cache.bytes(), floor, "nothing evicted below the floor");
        a.insert(900, chunk(1));
        assert_eq!(cache.bytes(), floor, "above it, the oldest goes");
    }

    #[test]
    fn entries_go_when_their_last_reader_does() {
        let cache = Arc::new(ChunkCache::new(4 * CHUNK));
        let a = cache.content("aa", CHUNK);
        a.insert(0, chunk(1));
        drop(a);
        assert!(cache.state.lock().contents.is_empty());
        // The chunk itself stays for the next reader.
        assert!(cache.content("aa", CHUNK).get(0).is_some());
    }
}
