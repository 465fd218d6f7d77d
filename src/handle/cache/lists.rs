//! The replacement policy: which chunks stay in memory, as four lists and a
//! record of recent evictions (2Q). Plain data, no locking and no knowledge of
//! streams: the cache calls it under its one mutex.
//!
//! - `unread`: delivered or fetched, no reader has had them yet (the streams'
//!   windows); evicted last.
//! - `reading`: had by one reader that is still reading them, with how many of
//!   their bytes it has had (the kernel has many requests of one reader in
//!   flight, out of order, across several chunks, so a chunk's last bytes may be
//!   served before its first).
//! - `done`: had by one reader that has finished them; kept for a share of the
//!   budget, for a reader close behind, and evicted first.
//! - `shared`: had by a second reader, or wanted again soon after eviction (its
//!   key still among the ghosts, 2Q's "A1out"), or finished by one reader while
//!   another open reader of its content has not passed it; least recently used
//!   first out.
//!
//! Whatever its list, a chunk an open reader has not passed yet (the cache
//! says which, [`Lists::trim`]) is evicted only when nothing else is left.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use lru::LruCache;

use super::buffers::Buffers;
use super::{BACKGROUND, CHUNK, Key};

pub(super) struct Lists {
    pub(super) unread: LruCache<Key, Unread>,
    pub(super) reading: LruCache<Key, Reading>,
    pub(super) done: LruCache<Key, (Arc<Vec<u8>>, u64)>,
    pub(super) done_bytes: u64,
    pub(super) shared: LruCache<Key, Arc<Vec<u8>>>,
    ghosts: Ghosts,
    /// Bytes in all four lists.
    pub(super) bytes: u64,
    /// Where evicted chunks' buffers go for reuse.
    buffers: Arc<Buffers>,
    /// Every eviction, in order, for the property tests to check each one.
    #[cfg(test)]
    pub(super) evicted: Vec<Key>,
}

/// How much the lists may hold: all of them, and the finished chunks of lone
/// readers.
#[derive(Clone, Copy)]
pub(super) struct Limits {
    pub(super) all: u64,
    pub(super) done: u64,
}

pub(super) struct Reading {
    pub(super) data: Arc<Vec<u8>>,
    pub(super) reader: u64,
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

pub(super) struct Unread {
    pub(super) data: Arc<Vec<u8>>,
    /// Its key was evicted lately: whoever reads it first, it goes to `shared`.
    again: bool,
}

/// A bounded first-in first-out set of keys.
struct Ghosts {
    keys: HashSet<Key>,
    order: VecDeque<Key>,
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

impl Lists {
    /// Lists for a cache of `budget` bytes, recycling into `buffers`.
    pub(super) fn new(budget: u64, buffers: Arc<Buffers>) -> Lists {
        Lists {
            unread: LruCache::unbounded(),
            reading: LruCache::unbounded(),
            done: LruCache::unbounded(),
            done_bytes: 0,
            shared: LruCache::unbounded(),
            ghosts: Ghosts {
                keys: HashSet::new(),
                order: VecDeque::new(),
                max: (budget / CHUNK).max(16) as usize,
            },
            bytes: 0,
            buffers,
            #[cfg(test)]
            evicted: Vec::new(),
        }
    }

    /// The chunk `key` if held, moved to the list its readers now call for:
    /// `reader` had it.
    pub(super) fn lookup(&mut self, key: Key, reader: u64) -> Option<Arc<Vec<u8>>> {
        if let Some(d) = self.shared.get(&key) {
            return Some(d.clone());
        }
        if let Some(e) = self.reading.get_mut(&key) {
            if e.reader == reader || reader == BACKGROUND {
                return Some(e.data.clone());
            }
            if e.reader == BACKGROUND {
                e.reader = reader;
                return Some(e.data.clone());
            }
            // A second reader: worth keeping.
            let e = self.reading.pop(&key)?;
            self.shared.put(key, e.data.clone());
            return Some(e.data);
        }
        if let Some((d, r)) = self.done.get_mut(&key) {
            if *r == reader || reader == BACKGROUND {
                return Some(d.clone());
            }
            if *r == BACKGROUND {
                *r = reader;
                return Some(d.clone());
            }
            let (d, _) = self.done.pop(&key)?;
            self.done_bytes -= d.len() as u64;
            self.shared.put(key, d.clone());
            return Some(d);
        }
        let u = self.unread.pop(&key)?;
        let d = u.data.clone();
        if u.again {
            self.shared.put(key, u.data);
        } else {
            self.reading.put(key, Reading::new(u.data, reader));
        }
        Some(d)
    }

    /// `reader` has had the bytes `offset..end` of `content`: a chunk only it had,
    /// once it has had all of its bytes, moves to the finished ones. True if any
    /// did (the caller trims).
    pub(super) fn served(
        &mut self,
        content: &Arc<str>,
        reader: u64,
        offset: u64,
        end: u64,
    ) -> bool {
        let mut finished = false;
        for idx in offset / CHUNK..end.div_ceil(CHUNK) {
            let key = (content.clone(), idx);
            let Some(e) = self.reading.peek_mut(&key) else {
                continue;
            };
            if e.reader != reader {
                continue;
            }
            e.served += end.min((idx + 1) * CHUNK) - offset.max(idx * CHUNK);
            if e.served >= e.data.len() as u64
                && let Some(e) = self.reading.pop(&key)
            {
                self.finish(key, e.data, e.reader);
                finished = true;
            }
        }
        finished
    }

    fn finish(&mut self, key: Key, data: Arc<Vec<u8>>, reader: u64) {
        self.done_bytes += data.len() as u64;
        self.done.put(key, (data, reader));
    }

    /// Stores chunk `key`: as had by `reader` when `read`, else as unread.
    pub(super) fn store(&mut self, key: Key, data: Arc<Vec<u8>>, read: bool, reader: u64) {
        self.remove(&key);
        self.bytes += data.len() as u64;
        if self.ghosts.take(&key) {
            // Evicted lately and wanted again: the once list was too short for
            // this chunk's readers.
            if read {
                self.shared.put(key, data);
            } else {
                self.unread.put(key, Unread { data, again: true });
            }
        } else if read {
            self.reading.put(key, Reading::new(data, reader));
        } else {
            self.unread.put(key, Unread { data, again: false });
        }
    }

    /// Drops chunk `key` wherever it is (a chunk fetched again replaces it).
    fn remove(&mut self, key: &Key) {
        let old = if let Some(d) = self.shared.pop(key) {
            Some(d)
        } else if let Some(e) = self.reading.pop(key) {
            Some(e.data)
        } else if let Some((d, _)) = self.done.pop(key) {
            self.done_bytes -= d.len() as u64;
            Some(d)
        } else {
            self.unread.pop(key).map(|u| u.data)
        };
        if let Some(old) = old {
            self.bytes -= old.len() as u64;
            self.recycle(old);
        }
    }

    /// Evicts until the lists fit `limits`. Chunks `ahead` says an open reader
    /// has not passed yet go last, whatever their list: the finished ones among
    /// them move to `shared` (that reader will have them), and the others are
    /// evicted only when nothing else is left. Among the rest, finished chunks go
    /// first, then shared ones, then ones still being read, unread ones last.
    pub(super) fn trim(&mut self, limits: Limits, ahead: &dyn Fn(&Key) -> bool) {
        loop {
            let over_all = self.bytes > limits.all;
            if !over_all && self.done_bytes <= limits.done {
                break;
            }
            if let Some((k, (d, _))) = self.done.pop_lru() {
                self.done_bytes -= d.len() as u64;
                if ahead(&k) {
                    self.shared.put(k, d);
                } else {
                    self.evict(k, d);
                }
                continue;
            }
            if !over_all {
                break;
            }
            let passed = |k: &Key| !ahead(k);
            let old = pop_lru_if(&mut self.shared, passed)
                .or_else(|| pop_lru_if(&mut self.reading, passed).map(|(k, e)| (k, e.data)))
                .or_else(|| pop_lru_if(&mut self.unread, passed).map(|(k, u)| (k, u.data)))
                .or_else(|| self.shared.pop_lru())
                .or_else(|| self.reading.pop_lru().map(|(k, e)| (k, e.data)))
                .or_else(|| self.unread.pop_lru().map(|(k, u)| (k, u.data)));
            let Some((k, old)) = old else { break };
            self.evict(k, old);
        }
    }

    fn evict(&mut self, k: Key, old: Arc<Vec<u8>>) {
        #[cfg(test)]
        self.evicted.push(k.clone());
        self.bytes -= old.len() as u64;
        self.ghosts.add(k);
        self.recycle(old);
    }

    /// The last handle on `content` went: what streams delivered ahead of its
    /// readers is nobody's window now, and ages out with the finished chunks.
    pub(super) fn orphan(&mut self, content: &Arc<str>) {
        let orphans: Vec<Key> = self
            .unread
            .iter()
            .filter(|(k, _)| k.0 == *content)
            .map(|(k, _)| k.clone())
            .collect();
        for k in orphans {
            if let Some(u) = self.unread.pop(&k) {
                self.finish(k, u.data, BACKGROUND);
            }
        }
    }

    /// `reader` of `content` left: what it left half-read is finished as far as
    /// it goes.
    pub(super) fn leave(&mut self, content: &Arc<str>, reader: u64) {
        let mine: Vec<Key> = self
            .reading
            .iter()
            .filter(|(k, e)| k.0 == *content && e.reader == reader)
            .map(|(k, _)| k.clone())
            .collect();
        for k in mine {
            if let Some(e) = self.reading.pop(&k) {
                self.finish(k, e.data, e.reader);
            }
        }
    }

    /// Reuses an evicted chunk's buffer if no reader still holds it.
    fn recycle(&self, old: Arc<Vec<u8>>) {
        if let Ok(buf) = Arc::try_unwrap(old) {
            self.buffers.give(buf);
        }
    }
}

/// Pops the least recently used entry of `list` whose key `evictable` says may
/// go: a walk from the old end, past the chunks readers still need (a slow
/// reader's are old: the fast one used them long ago), so at most a budget's
/// worth of keys, and only when the budget is full.
fn pop_lru_if<V>(
    list: &mut LruCache<Key, V>,
    evictable: impl Fn(&Key) -> bool,
) -> Option<(Key, V)> {
    let key = list
        .iter()
        .rev()
        .map(|(k, _)| k)
        .find(|k| evictable(k))?
        .clone();
    list.pop_entry(&key)
}
