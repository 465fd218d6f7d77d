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
//! - Memory is bounded, and spent where it helps: a chunk had by one reader only
//!   is kept while it reads it and then briefly (the "done" list, a 32nd of the
//!   budget), so a lone reader recycles a few buffers instead of filling the
//!   whole budget with fresh memory; one had by a second reader, or fetched again
//!   soon after it was evicted, is kept in the "shared" list, least recently used
//!   first out (the 2Q policy: a scan does not flush what several readers use).
//!   Fresh memory is the cost being avoided: writing a chunk into memory the
//!   process never touched costs 5 to 20 times a copy into a reused buffer here
//!   (page faults, and the hypervisor backing the pages), and on a cold read it
//!   was the difference between this cache and a plain read (BENCHMARKS.md).
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

/// Share of the budget for chunks read by one reader only.
const ONCE_SHARE: u64 = 32;

/// A reader id that does not count as a second reader: the disk cache's filler,
/// which reads along with the real readers.
pub(crate) const BACKGROUND: u64 = 0;

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
    /// Chunks delivered or fetched that no reader has had yet: the streams'
    /// windows. Evicted only when nothing else is left to evict.
    unread: LruCache<Key, Unread>,
    /// Chunks had by one reader (its id) that it is still reading, with how many
    /// of their bytes it has had: kept while it is open, as the kernel has many
    /// requests of one reader in flight, out of order, across several chunks (a
    /// chunk's last bytes may be served before its first).
    reading: LruCache<Key, Reading>,
    /// Chunks had by one reader that it has finished: kept for [`ONCE_SHARE`] of
    /// the budget, for a reader close behind it.
    done: LruCache<Key, (Arc<Vec<u8>>, u64)>,
    done_bytes: u64,
    /// Chunks had by two readers or more, or wanted again after eviction.
    shared: LruCache<Key, Arc<Vec<u8>>>,
    /// Keys evicted lately (2Q's "A1out"): a chunk fetched again while its key is
    /// here goes straight to `shared`.
    ghosts: Ghosts,
    bytes: u64,
    contents: HashMap<Arc<str>, Entry>,
    next_stream: u64,
    next_reader: u64,
    /// Readers (not background ones) with a view open.
    readers: usize,
    streams: usize,
}

struct Reading {
    data: Arc<Vec<u8>>,
    reader: u64,
    served: u64,
}

impl Reading {
    fn new(data: Arc<Vec<u8>>, reader: u64) -> Reading {
        Reading {
            data,
            reader,
            served: 0,
        }
    }
}

struct Unread {
    data: Arc<Vec<u8>>,
    /// Its key was evicted lately: whoever reads it first, it goes to `shared`.
    again: bool,
}

/// A bounded first-in first-out set of keys.
struct Ghosts {
    keys: HashSet<Key>,
    order: std::collections::VecDeque<Key>,
    max: usize,
}

impl Ghosts {
    fn add(&mut self, key: Key) {
        if self.keys.insert(key.clone()) {
            self.order.push_back(key);
        }
        while self.order.len() > self.max {
            if let Some(k) = self.order.pop_front() {
                self.keys.remove(&k);
            }
        }
    }

    /// True (and forgets it) if `key` was evicted lately.
    fn take(&mut self, key: &Key) -> bool {
        // Left in `order`: it leaves there in its turn, and a key added again
        // meanwhile is only dropped a little early.
        self.keys.remove(key)
    }
}

/// What is going on for one content while handles on it exist.
struct Entry {
    handles: usize,
    /// Where streams wait for room (see [`Content::room_for`]).
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
                unread: LruCache::unbounded(),
                reading: LruCache::unbounded(),
                done: LruCache::unbounded(),
                done_bytes: 0,
                shared: LruCache::unbounded(),
                ghosts: Ghosts {
                    keys: HashSet::new(),
                    order: std::collections::VecDeque::new(),
                    max: (budget / CHUNK).max(16) as usize,
                },
                bytes: 0,
                contents: HashMap::new(),
                next_stream: 1,
                next_reader: BACKGROUND + 1,
                readers: 0,
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

    /// Joins the readers of content `sha256` of `size` bytes as a reader of its
    /// own, or as [`BACKGROUND`] when `background`.
    pub(crate) fn content(self: &Arc<Self>, sha256: &str, size: u64, background: bool) -> Content {
        let mut st = self.state.lock();
        let reader = if background {
            BACKGROUND
        } else {
            st.next_reader += 1;
            st.readers += 1;
            st.next_reader
        };
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
            reader,
        }
    }
}

/// One handle's view of the cache: the chunks of one content.
pub(crate) struct Content {
    cache: Arc<ChunkCache>,
    key: Arc<str>,
    size: u64,
    cv: Arc<Condvar>,
    /// Who reads through this view, to tell a second reader of a chunk.
    reader: u64,
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
        let hit = self.lookup(&mut st, idx);
        if hit.is_some() {
            self.want(&mut st, idx * CHUNK);
        }
        hit
    }

    /// The chunk at `idx` if cached, moved to the list its readers now call for.
    fn lookup(&self, st: &mut State, idx: u64) -> Option<Arc<Vec<u8>>> {
        let key = (self.key.clone(), idx);
        if let Some(d) = st.shared.get(&key) {
            return Some(d.clone());
        }
        if let Some(e) = st.reading.get_mut(&key) {
            if e.reader == self.reader || self.reader == BACKGROUND {
                return Some(e.data.clone());
            }
            if e.reader == BACKGROUND {
                e.reader = self.reader;
                return Some(e.data.clone());
            }
            // A second reader: worth keeping.
            let e = st.reading.pop(&key)?;
            st.shared.put(key, e.data.clone());
            return Some(e.data);
        }
        if let Some((d, r)) = st.done.get_mut(&key) {
            if *r == self.reader || self.reader == BACKGROUND {
                return Some(d.clone());
            }
            if *r == BACKGROUND {
                *r = self.reader;
                return Some(d.clone());
            }
            let (d, _) = st.done.pop(&key)?;
            st.done_bytes -= d.len() as u64;
            st.shared.put(key, d.clone());
            return Some(d);
        }
        let u = st.unread.pop(&key)?;
        let d = u.data.clone();
        if u.again {
            st.shared.put(key, u.data);
        } else {
            st.reading.put(key, Reading::new(u.data, self.reader));
        }
        Some(d)
    }

    /// Tells the cache this reader has had the bytes `offset..end`: a chunk only it
    /// had, once it has had all of its bytes, moves to the finished ones, which go
    /// first.
    pub(crate) fn served(&self, offset: u64, end: u64) {
        let mut st = self.lock();
        let mut finished = false;
        for idx in offset / CHUNK..end.div_ceil(CHUNK) {
            let key = (self.key.clone(), idx);
            let Some(e) = st.reading.peek_mut(&key) else {
                continue;
            };
            if e.reader != self.reader {
                continue;
            }
            e.served += end.min((idx + 1) * CHUNK) - offset.max(idx * CHUNK);
            if e.served >= e.data.len() as u64
                && let Some(e) = st.reading.pop(&key)
            {
                st.done_bytes += e.data.len() as u64;
                st.done.put(key, (e.data, e.reader));
                finished = true;
            }
        }
        if finished {
            self.trim(&mut st);
        }
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
        if let Some(d) = self.lookup(&mut st, idx) {
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

    /// Stores a chunk fetched after [`Step::Fetch`], as had by this reader, and
    /// wakes its waiters.
    pub(crate) fn insert(&self, idx: u64, data: Arc<Vec<u8>>) {
        let mut st = self.lock();
        self.store(&mut st, idx, data, true);
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

    /// Stores chunk `idx`: as had by this reader when `read`, else as unread.
    fn store(&self, st: &mut State, idx: u64, data: Arc<Vec<u8>>, read: bool) {
        let key = (self.key.clone(), idx);
        self.remove(st, &key);
        let len = data.len() as u64;
        st.bytes += len;
        if st.ghosts.take(&key) {
            // Evicted lately and wanted again: the once list was too short for
            // this chunk's readers.
            if read {
                st.shared.put(key, data);
            } else {
                st.unread.put(key, Unread { data, again: true });
            }
        } else if read {
            st.reading.put(key, Reading::new(data, self.reader));
        } else {
            st.unread.put(key, Unread { data, again: false });
        }
        self.trim(st);
    }

    /// Drops chunk `key` wherever it is (a chunk fetched again replaces it).
    fn remove(&self, st: &mut State, key: &Key) {
        let old = if let Some(d) = st.shared.pop(key) {
            Some(d)
        } else if let Some(e) = st.reading.pop(key) {
            Some(e.data)
        } else if let Some((d, _)) = st.done.pop(key) {
            st.done_bytes -= d.len() as u64;
            Some(d)
        } else {
            st.unread.pop(key).map(|u| u.data)
        };
        if let Some(old) = old {
            st.bytes -= old.len() as u64;
            self.recycle(old);
        }
    }

    /// Evicts until the lists fit: the finished chunks of lone readers their
    /// share, all of them the budget. Finished chunks go first, then shared ones,
    /// then ones still being read, unread ones last.
    fn trim(&self, st: &mut State) {
        let cap = self.chunk_room(st);
        // Two chunks per reader at least, so that with many readers (a storm) a
        // chunk stays long enough for the second to find it.
        let done_cap = (self.cache.budget / ONCE_SHARE)
            .max(st.readers as u64 * 2 * CHUNK)
            .max(4 * CHUNK);
        loop {
            let over_all = st.bytes > cap;
            if !over_all && st.done_bytes <= done_cap {
                break;
            }
            let old = if let Some((k, (d, _))) = st.done.pop_lru() {
                st.done_bytes -= d.len() as u64;
                Some((k, d))
            } else if !over_all {
                None
            } else if let Some(e) = st.shared.pop_lru() {
                Some(e)
            } else if let Some((k, e)) = st.reading.pop_lru() {
                Some((k, e.data))
            } else {
                st.unread.pop_lru().map(|(k, u)| (k, u.data))
            };
            let Some((k, old)) = old else { break };
            st.bytes -= old.len() as u64;
            st.ghosts.add(k);
            self.recycle(old);
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

    /// Waits until stream `id` may deliver `want` bytes more, or half of what it may
    /// run ahead when that is less, and returns how many it may deliver now, at
    /// most `want`: the size of its next window. None once the stream was ended or
    /// `stop` says so.
    ///
    /// A window sized so means the stream does not wait for room in the middle of
    /// a statement: while its reader pauses, its backend sits idle in its
    /// transaction rather than blocked writing to us, so on a hot standby a
    /// conflict with replay can cut it at once (and the stream resumes), instead
    /// of replay waiting for the reader.
    pub(crate) fn room_for(&self, id: u64, want: u64, stop: &dyn Fn() -> bool) -> Option<u64> {
        let mut st = self.lock();
        loop {
            if stop() {
                return None;
            }
            let (room, ahead) = self.room_now(&mut st, id)?;
            if room >= want.min(ahead / 2).max(CHUNK) {
                return Some(room.min(want));
            }
            let cv = self.cv.clone();
            cv.wait_for(&mut st, Duration::from_millis(50));
        }
    }

    /// How far each stream may run ahead of its fastest reader: half of what the
    /// budget leaves for chunks, shared by the streams, so that their windows fit
    /// beside the chunks being read (windows that did not fit were evicted before
    /// their readers came, and every such miss restarted a stream).
    fn ahead(&self, st: &State) -> u64 {
        (self.chunk_room(st) / 2 / st.streams.max(1) as u64).clamp(MIN_AHEAD, MAX_AHEAD)
    }

    /// What the budget leaves for chunks: buffers kept for reuse, chunks being
    /// filled by streams and the streams' own buffers count against it too (the
    /// budget bounds what reading costs in memory, not just the cache). Never below
    /// what the running streams need ahead of their readers: a chunk evicted
    /// before its reader got it is fetched again, and a small budget with many
    /// streams would then thrash.
    fn chunk_room(&self, st: &State) -> u64 {
        let reserved = (self.cache.buffers.free.lock().len() + st.streams) as u64 * CHUNK
            + st.streams as u64 * STREAM_OUTSIDE;
        let floor = (st.streams as u64 * 2 * MIN_AHEAD).max(4 * CHUNK);
        self.cache.budget.saturating_sub(reserved).max(floor)
    }

    /// How many bytes stream `id` may deliver now, and how far it may run ahead of
    /// its fastest reader; None once it was ended.
    fn room_now(&self, st: &mut State, id: u64) -> Option<(u64, u64)> {
        let ahead = self.ahead(st);
        let f = self.entry(st).streams.iter().find(|f| f.id == id)?;
        Some(((f.wanted + ahead).saturating_sub(f.next), ahead))
    }

    /// Stores the next chunk of stream `id` and moves its front.
    pub(crate) fn deliver(&self, id: u64, start: u64, data: Arc<Vec<u8>>) {
        let end = start + data.len() as u64;
        let mut st = self.lock();
        self.store(&mut st, start / CHUNK, data, false);
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
        if self.reader != BACKGROUND {
            st.readers -= 1;
        }
        let gone = match st.contents.get_mut(&self.key) {
            Some(e) => {
                e.handles -= 1;
                e.handles == 0 && e.streams.is_empty() && e.fetching.is_empty()
            }
            None => false,
        };
        if gone {
            st.contents.remove(&self.key);
            // Chunks delivered ahead of readers who left are nobody's window now:
            // they age out with the finished ones.
            let orphans: Vec<Key> = st
                .unread
                .iter()
                .filter(|(k, _)| k.0 == self.key)
                .map(|(k, _)| k.clone())
                .collect();
            for k in orphans {
                if let Some(u) = st.unread.pop(&k) {
                    st.done_bytes += u.data.len() as u64;
                    st.done.put(k, (u.data, BACKGROUND));
                }
            }
        }
        if self.reader != BACKGROUND {
            // What this reader left half-read is finished as far as it goes.
            let mine: Vec<Key> = st
                .reading
                .iter()
                .filter(|(k, e)| k.0 == self.key && e.reader == self.reader)
                .map(|(k, _)| k.clone())
                .collect();
            for k in mine {
                if let Some(e) = st.reading.pop(&k) {
                    st.done_bytes += e.data.len() as u64;
                    st.done.put(k, (e.data, e.reader));
                }
            }
        }
        self.trim(&mut st);
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
        let a = cache.content("aa", 10 * CHUNK, false);
        let b = cache.content("aa", 10 * CHUNK, false);
        assert!(matches!(a.step(3, false, Duration::ZERO), Step::Fetch));
        // b finds the fetch under way and waits instead of fetching too.
        assert!(matches!(b.step(3, false, Duration::ZERO), Step::Retry));
        a.insert(3, chunk(7));
        match b.step(3, false, Duration::ZERO) {
            Step::Hit(d) => assert_eq!(d[0], 7),
            _ => panic!("b should find a's chunk"),
        }
        // Another content with the same chunk number is another key.
        let c = cache.content("bb", 10 * CHUNK, false);
        assert!(c.get(3).is_none());
    }

    #[test]
    fn an_abandoned_fetch_passes_to_the_next_reader() {
        let cache = Arc::new(ChunkCache::new(64 * CHUNK));
        let a = cache.content("aa", 10 * CHUNK, false);
        let b = cache.content("aa", 10 * CHUNK, false);
        assert!(matches!(a.step(0, false, Duration::ZERO), Step::Fetch));
        a.abandon(0);
        assert!(matches!(b.step(0, false, Duration::ZERO), Step::Fetch));
    }

    #[test]
    fn a_stream_is_followed_and_held_back_by_its_fastest_reader() {
        let cache = Arc::new(ChunkCache::new(11 * CHUNK));
        let size = 100 * CHUNK;
        let a = cache.content("aa", size, false);
        let b = cache.content("aa", size, false);
        let Step::Stream(id) = a.step(0, true, Duration::ZERO) else {
            panic!("a sequential reader at 0 starts a stream");
        };
        // Within the stream's cover, b waits rather than fetching.
        assert!(matches!(b.step(2, true, Duration::ZERO), Step::Retry));
        let room = |c: &Content| {
            let mut st = c.lock();
            c.room_now(&mut st, id).map(|(room, _)| room > 0)
        };
        let mut delivered = 0;
        // Budget 11 chunks, one stream: 3 go to what the stream holds outside the
        // cache (the chunk it fills, its connection's buffers), and it may run
        // half the other 8 = 4 chunks past the furthest reader (b, at chunk 2).
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
        assert!(a.room_for(id, CHUNK, &stop).is_none());
    }

    #[test]
    fn a_window_is_no_larger_than_the_room_when_it_starts() {
        let cache = Arc::new(ChunkCache::new(11 * CHUNK));
        let a = cache.content("aa", 100 * CHUNK, false);
        let Step::Stream(id) = a.step(0, true, Duration::ZERO) else {
            panic!("a sequential reader at 0 starts a stream");
        };
        let never = || false;
        // One stream may run 4 chunks past its reader (at 0), as above.
        assert_eq!(a.room_for(id, 32 * CHUNK, &never), Some(4 * CHUNK));
        assert_eq!(a.room_for(id, CHUNK, &never), Some(CHUNK));
        for i in 0..3 {
            a.deliver(id, i * CHUNK, chunk(1));
        }
        // One chunk of room is less than half the stream's lead: it waits for more
        // (until told to stop) rather than start a window of one chunk.
        let calls = std::cell::Cell::new(0);
        let second_look = || {
            calls.set(calls.get() + 1);
            calls.get() > 1
        };
        assert_eq!(a.room_for(id, 32 * CHUNK, &second_look), None);
        // The reader moves on to chunk 2: room for 2 + 4 - 3 chunks.
        assert!(a.get(2).is_some());
        assert_eq!(a.room_for(id, 32 * CHUNK, &never), Some(3 * CHUNK));
    }

    #[test]
    fn memory_stays_within_the_budget() {
        let cache = Arc::new(ChunkCache::new(4 * CHUNK));
        let a = cache.content("aa", 100 * CHUNK, false);
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
        let a = cache.content("aa", 1000 * CHUNK, false);
        // Three streams running: each needs its window, whatever the budget.
        let mut ids = vec![];
        for at in [0, 100, 200] {
            let Step::Stream(id) = a.step(at, true, Duration::ZERO) else {
                panic!("a sequential reader starts a stream");
            };
            ids.push(id);
        }
        let floor = 3 * 2 * MIN_AHEAD;
        for i in 0..floor / CHUNK {
            a.deliver(ids[0], i * CHUNK, chunk(1));
        }
        assert_eq!(cache.bytes(), floor, "nothing evicted below the floor");
        a.deliver(ids[0], (floor / CHUNK) * CHUNK, chunk(1));
        assert_eq!(cache.bytes(), floor, "above it, the oldest goes");
    }

    #[test]
    fn a_lone_reader_recycles_a_few_buffers() {
        let budget = 256 * CHUNK;
        let cache = Arc::new(ChunkCache::new(budget));
        let a = cache.content("aa", 1000 * CHUNK, false);
        for i in 0..100 {
            assert!(matches!(a.step(i, false, Duration::ZERO), Step::Fetch));
            a.insert(i, chunk(1));
            a.served(i * CHUNK, (i + 1) * CHUNK);
        }
        assert_eq!(
            cache.bytes(),
            budget / ONCE_SHARE,
            "one reader's finished chunks: its share only"
        );
        assert!(a.get(99).is_some() && a.get(60).is_none());
        let reused = cache.buffers.free.lock().len();
        assert!(reused > 0, "evicted buffers are kept for reuse");
    }

    #[test]
    fn chunks_a_reader_finished_go_before_ones_it_is_reading() {
        let cache = Arc::new(ChunkCache::new(256 * CHUNK));
        let a = cache.content("aa", 1000 * CHUNK, false);
        // Chunk 0 read but for its first half (its requests came out of order).
        a.insert(0, chunk(1));
        a.served(CHUNK / 2, CHUNK);
        for i in 1..=40 {
            a.insert(i, chunk(1));
            a.served(i * CHUNK, (i + 1) * CHUNK);
        }
        assert!(a.get(0).is_some(), "the chunk still being read stayed");
        assert!(a.get(1).is_none(), "finished ones went first");
        assert!(a.get(40).is_some());
        // A reader that leaves mid-chunk leaves it to age out with the rest.
        drop(a);
        let st = cache.state.lock();
        assert!(st.reading.is_empty());
        assert!(st.done.contains(&(Arc::from("aa"), 0)));
    }

    #[test]
    fn a_second_reader_keeps_chunks_in_memory() {
        let budget = 256 * CHUNK;
        let cache = Arc::new(ChunkCache::new(budget));
        let a = cache.content("aa", 1000 * CHUNK, false);
        let b = cache.content("aa", 1000 * CHUNK, false);
        let filler = cache.content("aa", 1000 * CHUNK, true);
        for i in 0..50 {
            assert!(matches!(a.step(i, false, Duration::ZERO), Step::Fetch));
            a.insert(i, chunk(1));
            a.served(i * CHUNK, (i + 1) * CHUNK);
            assert!(filler.get(i).is_some());
            if i < 10 {
                assert!(b.get(i).is_some());
            }
        }
        // Chunks 0..10 were had by two readers (the filler does not count): kept.
        for i in 0..10 {
            assert!(a.get(i).is_some(), "chunk {i} kept");
        }
        assert!(
            a.get(10).is_none(),
            "chunks of one reader went past its share"
        );
        // One fetched again right after its eviction is kept from then on.
        assert!(matches!(a.step(10, false, Duration::ZERO), Step::Fetch));
        a.insert(10, chunk(1));
        for i in 50..100 {
            a.insert(i, chunk(1));
            a.served(i * CHUNK, (i + 1) * CHUNK);
        }
        assert!(a.get(10).is_some(), "a chunk wanted again stays");
    }

    #[test]
    fn entries_go_when_their_last_reader_does() {
        let cache = Arc::new(ChunkCache::new(4 * CHUNK));
        let a = cache.content("aa", CHUNK, false);
        a.insert(0, chunk(1));
        drop(a);
        assert!(cache.state.lock().contents.is_empty());
        // The chunk itself stays for the next reader.
        assert!(cache.content("aa", CHUNK, false).get(0).is_some());
        // What a stream delivered ahead of a reader who left ages out like the rest.
        let b = cache.content("bb", 100 * CHUNK, false);
        let Step::Stream(id) = b.step(0, true, Duration::ZERO) else {
            panic!("a sequential reader at 0 starts a stream");
        };
        b.deliver(id, 0, chunk(2));
        b.end_stream(id);
        drop(b);
        let st = cache.state.lock();
        assert!(st.unread.is_empty());
        assert!(st.done.contains(&(Arc::from("bb"), 0)));
    }

    /// The byte counts agree with the lists, and no key is in two lists.
    fn check(cache: &ChunkCache) {
        let st = cache.state.lock();
        let sum = |it: &mut dyn Iterator<Item = u64>| it.sum::<u64>();
        let unread = sum(&mut st.unread.iter().map(|(_, u)| u.data.len() as u64));
        let reading = sum(&mut st.reading.iter().map(|(_, e)| e.data.len() as u64));
        let done = sum(&mut st.done.iter().map(|(_, (d, _))| d.len() as u64));
        let shared = sum(&mut st.shared.iter().map(|(_, d)| d.len() as u64));
        assert_eq!(st.done_bytes, done);
        assert_eq!(st.bytes, unread + reading + done + shared);
        let mut keys = HashSet::new();
        for k in st.unread.iter().map(|(k, _)| k) {
            assert!(keys.insert(k.clone()));
        }
        for k in st.reading.iter().map(|(k, _)| k) {
            assert!(keys.insert(k.clone()));
        }
        for k in st.done.iter().map(|(k, _)| k) {
            assert!(keys.insert(k.clone()));
        }
        for k in st.shared.iter().map(|(k, _)| k) {
            assert!(keys.insert(k.clone()));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// Any mix of readers, streams, fetches, partial reads and departures keeps
        /// the accounting right and the cache within its budget (or its floor).
        #[test]
        fn accounting_holds_whatever_readers_do(
            ops in proptest::collection::vec((0u8..8, 0usize..4, 0u64..40, 0u64..3), 1..300)
        ) {
            let budget = 24 * CHUNK;
            let cache = Arc::new(ChunkCache::new(budget));
            let size = 40 * CHUNK - 1000;
            let names = ["aa", "bb"];
            let mut views: Vec<Option<Content>> = (0..4)
                .map(|i| Some(cache.content(names[i % 2], size, i == 3)))
                .collect();
            let mut streams: Vec<(usize, u64, u64)> = vec![];
            for (op, who, idx, part) in ops {
                let Some(v) = views[who].as_ref() else {
                    views[who] = Some(cache.content(names[who % 2], size, who == 3));
                    continue;
                };
                let len = if idx == 39 { CHUNK - 1000 } else { CHUNK };
                match op {
                    0 | 1 => {
                        let _ = v.get(idx);
                    }
                    2 => match v.step(idx, part == 0, Duration::ZERO) {
                        Step::Fetch => v.insert(idx, Arc::new(vec![0; len as usize])),
                        Step::Stream(id) => streams.push((who, id, idx)),
                        _ => {}
                    },
                    3 | 4 => {
                        // A piece of the chunk: a third of it, or all of it.
                        let (a, b) = if part == 2 { (0, len) } else { (part * len / 3, (part + 1) * len / 3) };
                        v.served(idx * CHUNK + a, idx * CHUNK + b);
                    }
                    5 => {
                        if let Some(&(w, id, at)) = streams.iter().find(|s| s.0 == who) {
                            let next = (at + 1).min(39);
                            let l = if at == 39 { CHUNK - 1000 } else { CHUNK };
                            views[w].as_ref().unwrap().deliver(id, at * CHUNK, Arc::new(vec![0; l as usize]));
                            streams.retain(|s| s.1 != id);
                            streams.push((w, id, next));
                        }
                    }
                    6 => {
                        if let Some(pos) = streams.iter().position(|s| s.0 == who) {
                            let (w, id, _) = streams.remove(pos);
                            views[w].as_ref().unwrap().end_stream(id);
                        }
                    }
                    _ => {
                        for (w, id, _) in streams.iter().filter(|s| s.0 == who) {
                            views[*w].as_ref().unwrap().end_stream(*id);
                        }
                        streams.retain(|s| s.0 != who);
                        views[who] = None;
                    }
                }
                check(&cache);
                let st = cache.state.lock();
                let floor = (st.streams as u64 * 2 * MIN_AHEAD).max(4 * CHUNK);
                proptest::prop_assert!(st.bytes <= budget.max(floor) + CHUNK);
            }
            drop(views);
            check(&cache);
            proptest::prop_assert_eq!(cache.state.lock().readers, 0);
        }
    }
}
