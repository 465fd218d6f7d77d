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
//! - Whatever its list, a chunk that an open reader of its content has not passed
//!   yet (at or after the offset where that reader's last read ended) goes only
//!   when nothing else is left: readers of one image share its reads whatever
//!   their speed, while the chunks between the slowest and the fastest fit.
//!   Fresh memory is the cost being avoided: writing a chunk into memory the
//!   process never touched costs 5 to 20 times a copy into a reused buffer here
//!   (page faults, and the hypervisor backing the pages), and on a cold read it
//!   was the difference between this cache and a plain read (doc/benchmark-history.md).
//!
//! One mutex guards it all. Every operation under it is a map update, and a chunk
//! is 512 KiB, so even a few GB/s is a few thousand short lock holds a second;
//! waiters sleep on their content's own condition variable.
//!
//! Rooms: [`lists`] is the replacement policy (which chunks stay), [`flight`]
//! who fetches what (single flight, stream fronts), [`buffers`] the chunk buffers
//! kept ready; this file ties them together under the mutex and hands out the
//! claims of [`Step`].
//!
//! Lock order: a handle's own state lock (handle/mod.rs), then this cache's
//! state lock, then the buffers' lock; never the other way round. The cache's
//! lock is never held across I/O: it is only waited on by condition variables.
//! Claims ([`FetchClaim`], [`StreamClaim`]) settle themselves when dropped, so
//! a reader that fails or panics between [`Content::step`] and its delivery
//! never leaves a chunk or a stream front marked as coming.

mod buffers;
mod flight;
mod lists;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::sync::{Condvar, Mutex, MutexGuard};

use buffers::Buffers;
use flight::Entry;
use lists::{Limits, Lists};

/// Size and alignment of cached chunks. Aligned kernel requests (capped at this
/// size by the mount) fall inside one chunk.
pub(crate) const CHUNK: u64 = 512 << 10;

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

struct State {
    /// Which chunks are held, and in which list.
    lists: Lists,
    contents: HashMap<Arc<str>, Entry>,
    next_stream: u64,
    next_reader: u64,
    /// Readers (not background ones) with a view open.
    readers: usize,
    streams: usize,
}

/// What a reader of a missing chunk should do.
pub(crate) enum Step<'a> {
    /// Here it is.
    Hit(Arc<Vec<u8>>),
    /// Someone is fetching it: look again (the call already waited a little).
    Retry,
    /// Nobody is: fetch this one chunk, then [`FetchClaim::insert`] it (dropping
    /// the claim gives the fetch up, and a waiter tries for itself).
    Fetch(FetchClaim<'a>),
    /// Nobody is: start a stream here, feed it with [`Content::deliver`] under
    /// [`StreamClaim::id`]; dropping the claim ends the stream.
    Stream(StreamClaim),
}

/// The duty to fetch one chunk, from [`Content::step`].
pub(crate) struct FetchClaim<'a> {
    content: &'a Content,
    idx: u64,
    settled: bool,
}

impl FetchClaim<'_> {
    /// Stores the fetched chunk, as had by this reader, and wakes its waiters.
    pub(crate) fn insert(mut self, data: Arc<Vec<u8>>) {
        self.settled = true;
        self.content.insert(self.idx, data);
    }
}

impl Drop for FetchClaim<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.content.abandon(self.idx);
        }
    }
}

/// A running stream's place in the cache, from [`Content::step`]; the stream's
/// thread owns it, and its front goes when it is dropped.
pub(crate) struct StreamClaim {
    cache: Arc<ChunkCache>,
    key: Arc<str>,
    id: u64,
}

impl StreamClaim {
    /// The stream's id, for [`Content::room_for`] and [`Content::deliver`].
    pub(crate) fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for StreamClaim {
    fn drop(&mut self) {
        let mut st = self.cache.state.lock();
        let Some(entry) = st.contents.get_mut(&self.key) else {
            return;
        };
        let ended = entry.end_stream(self.id);
        entry.cv.notify_all();
        if ended {
            st.streams -= 1;
        }
    }
}

impl ChunkCache {
    /// A cache holding at most `budget` bytes of chunks (at least a few chunks).
    pub fn new(budget: u64) -> ChunkCache {
        let buffers = Arc::new(Buffers::new());
        ChunkCache {
            budget: budget.max(4 * CHUNK),
            state: Mutex::new(State {
                lists: Lists::new(budget, buffers.clone()),
                contents: HashMap::new(),
                next_stream: 1,
                next_reader: BACKGROUND + 1,
                readers: 0,
                streams: 0,
            }),
            buffers,
        }
    }

    /// How many buffers are kept ready beside the chunks: a 16th of the budget,
    /// at most [`buffers::READY`]. A fixed share, counted against the budget
    /// whether or not they are there: counting the buffers kept at each moment
    /// instead let every eviction's buffer shrink the chunks' room, and below
    /// the streams' floor they were over the budget.
    fn spare(&self) -> u64 {
        (buffers::READY as u64).min(self.budget / CHUNK / 16)
    }

    /// Bytes of chunks held now.
    pub fn bytes(&self) -> u64 {
        self.state.lock().lists.bytes
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
        let entry = st.contents.entry(key.clone()).or_insert_with(Entry::new);
        entry.handles += 1;
        if !background {
            entry.reader_at(reader, 0);
        }
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
        let hit = st.lists.lookup((self.key.clone(), idx), self.reader);
        if hit.is_some() {
            self.want(&mut st, idx * CHUNK);
        }
        hit
    }

    /// Tells the cache this reader has had the bytes `offset..end`: a chunk only it
    /// had, once it has had all of its bytes, moves to the finished ones, which go
    /// first.
    pub(crate) fn served(&self, offset: u64, end: u64) {
        let mut st = self.lock();
        if self.reader != BACKGROUND {
            self.entry(&mut st).reader_at(self.reader, end);
        }
        if st.lists.served(&self.key, self.reader, offset, end) {
            self.trim(&mut st);
        }
    }

    /// Records that a reader wants `off`: each stream it follows may run ahead of it.
    fn want(&self, st: &mut State, off: u64) {
        if self.entry(st).want(off) {
            self.cv.notify_all();
        }
    }

    /// Decides who gets chunk `idx`: a hit, a wait for another's fetch, or a fetch
    /// of ours (a stream when the reader is `sequential`).
    pub(crate) fn step(&self, idx: u64, sequential: bool, wait: Duration) -> Step<'_> {
        let off = idx * CHUNK;
        let mut st = self.lock();
        if let Some(d) = st.lists.lookup((self.key.clone(), idx), self.reader) {
            self.want(&mut st, off);
            return Step::Hit(d);
        }
        self.want(&mut st, off);
        let entry = self.entry(&mut st);
        if entry.coming(idx, off) {
            let cv = entry.waiter(idx);
            cv.wait_for(&mut st, wait);
            return Step::Retry;
        }
        if sequential && off + CHUNK < self.size {
            let id = st.next_stream;
            st.next_stream += 1;
            st.streams += 1;
            self.entry(&mut st).streams.push(flight::Front {
                id,
                next: off,
                wanted: off,
            });
            return Step::Stream(StreamClaim {
                cache: self.cache.clone(),
                key: self.key.clone(),
                id,
            });
        }
        self.entry(&mut st).fetching.insert(idx);
        Step::Fetch(FetchClaim {
            content: self,
            idx,
            settled: false,
        })
    }

    /// Stores a chunk fetched after [`Step::Fetch`], as had by this reader, and
    /// wakes its waiters.
    fn insert(&self, idx: u64, data: Arc<Vec<u8>>) {
        let mut st = self.lock();
        self.store(&mut st, idx, data, true);
        let entry = self.entry(&mut st);
        entry.fetching.remove(&idx);
        entry.wake(idx);
    }

    /// Gives up a fetch after [`Step::Fetch`]; a waiter will try for itself.
    fn abandon(&self, idx: u64) {
        let mut st = self.lock();
        let entry = self.entry(&mut st);
        entry.fetching.remove(&idx);
        entry.wake(idx);
    }

    /// Stores chunk `idx`: as had by this reader when `read`, else as unread.
    fn store(&self, st: &mut State, idx: u64, data: Arc<Vec<u8>>, read: bool) {
        st.lists
            .store((self.key.clone(), idx), data, read, self.reader);
        self.trim(st);
    }

    /// Evicts until the lists fit: the finished chunks of lone readers their
    /// share, all of them the budget.
    fn trim(&self, st: &mut State) {
        let limits = Limits {
            all: self.chunk_room(st),
            // Two chunks per reader at least, so that with many readers (a storm) a
            // chunk stays long enough for the second to find it.
            done: (self.cache.budget / ONCE_SHARE)
                .max(st.readers as u64 * 2 * CHUNK)
                .max(4 * CHUNK),
        };
        // A chunk an open reader of its content has not passed yet is evicted
        // only when the others are gone: doc/SEMANTICS.md, "exactly when a
        // second database read of a chunk can happen". The first such chunk of
        // each content being read, looked up by pointer first (a list's key
        // shares its content's string while the content is open).
        let firsts: Vec<(Arc<str>, u64)> = st
            .contents
            .iter()
            .filter_map(|(k, e)| e.first_not_passed().map(|f| (k.clone(), f)))
            .collect();
        st.lists.trim(limits, &|(content, idx): &Key| {
            firsts
                .iter()
                .any(|(k, first)| idx >= first && (Arc::ptr_eq(k, content) || k == content))
        });
        // Buffers kept for reuse get what the budget leaves beside the chunks,
        // and none when the running streams' floor is all there is.
        let total = self
            .cache
            .budget
            .saturating_sub(st.streams as u64 * (CHUNK + STREAM_OUTSIDE))
            .max(Self::floor(st));
        let room = (total.saturating_sub(st.lists.bytes) / CHUNK).min(self.cache.spare());
        self.cache
            .buffers
            .set_room(usize::try_from(room).unwrap_or(0));
    }

    /// The least the chunks may always have, whatever the budget: what the
    /// running streams need ahead of their readers (a chunk evicted before its
    /// reader got it is fetched again, and a small budget with many streams would
    /// then thrash).
    fn floor(st: &State) -> u64 {
        (st.streams as u64 * 2 * MIN_AHEAD).max(4 * CHUNK)
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
            if let Some(granted) = self.grant(&mut st, id, want)? {
                return Some(granted);
            }
            let cv = self.cv.clone();
            cv.wait_for(&mut st, Duration::from_millis(50));
        }
    }

    /// What [`Content::room_for`] grants stream `id` now: None once it was ended,
    /// Some(None) while it must wait for room.
    fn grant(&self, st: &mut State, id: u64, want: u64) -> Option<Option<u64>> {
        let (room, ahead) = self.room_now(st, id)?;
        Some((room >= want.min(ahead / 2).max(CHUNK)).then(|| room.min(want)))
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
    /// [`Content::floor`].
    fn chunk_room(&self, st: &State) -> u64 {
        let reserved =
            (self.cache.spare() + st.streams as u64) * CHUNK + st.streams as u64 * STREAM_OUTSIDE;
        self.cache
            .budget
            .saturating_sub(reserved)
            .max(Self::floor(st))
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
        entry.advance(id, end);
        entry.wake(start / CHUNK);
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
        let reader = self.reader;
        let gone = st.contents.get_mut(&self.key).is_some_and(|e| {
            e.handles -= 1;
            e.reader_left(reader);
            e.unused()
        });
        if gone {
            st.contents.remove(&self.key);
            st.lists.orphan(&self.key);
        }
        if self.reader != BACKGROUND {
            st.lists.leave(&self.key, self.reader);
        }
        self.trim(&mut st);
    }
}

#[cfg(test)]
mod history;
#[cfg(all(test, feature = "shuttle"))]
mod interleavings;
#[cfg(test)]
mod tests;
