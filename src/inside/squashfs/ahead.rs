//! Decompressing data blocks on a few threads, ahead of sequential readers.
//!
//! One thread decompresses xz at roughly the speed a reader consumes it, so a
//! reader that decompresses every block itself runs at one core's pace. A read
//! that covers several blocks hands all but the first to this pool and does the
//! first itself; a read that continues where the previous read of the same file
//! ended (a sequential reader), or a fragment fetched right after the one before
//! it (a walk reading small files in the image's order), also queues the next
//! blocks. A random reader never gets anything decompressed it did not ask for.
//!
//! Bounds: at most `slots` blocks queued, being decompressed or waiting to be
//! taken (about 4 MiB decompressed whatever the block size), the oldest finished
//! one dropped when a new one needs room; threads are started when work is queued
//! and no thread is idle, at most one per core (up to [`MAX_THREADS`]); dropping
//! the pool (the image closed, the mount gone) stops and joins them all.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use log::{debug, warn};
use parking_lot::{Condvar, Mutex};

use super::super::bytes::Bytes;
use super::super::decompress::Codec;
use super::super::error::InsideError;

/// Bit 24 of a data block's size word: the block is stored uncompressed.
const BLOCK_UNCOMPRESSED: u32 = 1 << 24;

/// Decompressed bytes the pool may hold per image.
const AHEAD_BYTES: usize = 4 << 20;
/// Threads per image at most (and never more than the machine's cores).
pub(super) const MAX_THREADS: usize = 4;

/// Reads and decompresses the data or fragment block stored at `pos` with size
/// word `word` (at most `block_size` bytes either way).
pub(super) fn load(
    data: &dyn Bytes,
    codec: Codec,
    block_size: usize,
    pos: u64,
    word: u32,
) -> Result<Vec<u8>, InsideError> {
    let len = (word & 0x00ff_ffff) as usize;
    if len > block_size {
        return Err(InsideError::corrupt(
            data.name(),
            format!("data block at {pos} claims {len} bytes"),
        ));
    }
    let raw = data.read_vec(pos, len)?;
    if word & BLOCK_UNCOMPRESSED != 0 {
        return Ok(raw);
    }
    codec
        .inflate(&raw, block_size)
        .map_err(|e| InsideError::corrupt(data.name(), format!("data block at {pos}: {e}")))
}

/// The pool of one image.
pub(super) struct Ahead {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

struct Shared {
    data: Arc<dyn Bytes>,
    codec: Codec,
    block_size: usize,
    /// Blocks held at most (queued, being decompressed, or done).
    slots: usize,
    /// Threads at most.
    max_threads: usize,
    st: Mutex<State>,
    /// Work was queued, or the pool is stopping.
    work: Condvar,
    /// A block was finished.
    done: Condvar,
    /// Threads running now (they count themselves out as they end).
    live: Arc<AtomicUsize>,
}

#[derive(Default)]
struct State {
    /// Blocks to decompress, oldest first: (position, size word).
    queue: VecDeque<(u64, u32)>,
    slots: HashMap<u64, Slot>,
    /// Positions in `slots`, oldest first (for dropping the oldest done block).
    order: VecDeque<u64>,
    /// Threads started and not yet ended; idle ones among them.
    started: usize,
    idle: usize,
    stop: bool,
    /// Blocks decompressed by the pool, and those a reader then took.
    decompressed: u64,
    taken: u64,
}

enum Slot {
    Queued,
    Busy,
    Done(Result<Vec<u8>, InsideError>),
}

/// What the pool did, for tests and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stats {
    /// Blocks the pool decompressed.
    pub decompressed: u64,
    /// Of those, blocks a reader took.
    pub taken: u64,
    /// Threads running now.
    pub threads: usize,
}

impl Ahead {
    /// A pool decompressing blocks of `data` (nothing started yet).
    pub(super) fn new(data: Arc<dyn Bytes>, codec: Codec, block_size: usize) -> Ahead {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ahead {
            shared: Arc::new(Shared {
                data,
                codec,
                block_size,
                slots: (AHEAD_BYTES / block_size.max(1)).clamp(4, 32),
                max_threads: cores.clamp(1, MAX_THREADS),
                st: Mutex::new(State::default()),
                work: Condvar::new(),
                done: Condvar::new(),
                live: Arc::new(AtomicUsize::new(0)),
            }),
            threads: Mutex::new(Vec::new()),
        }
    }

    /// How many blocks a sequential reader may have queued ahead of it: two per
    /// thread keep every thread busy while the reader takes one; more would
    /// only be wasted when the reader stops or turns (at most half the slots,
    /// so two readers each get a window).
    pub(super) fn window(&self) -> usize {
        (2 * self.shared.max_threads).min(self.shared.slots / 2)
    }

    /// Queues the block at `pos` unless it is already held or there is no room
    /// (room is made by dropping the oldest block not being decompressed).
    pub(super) fn want(&self, pos: u64, word: u32) {
        let spawn = {
            let mut st = self.shared.st.lock();
            if st.stop || st.slots.contains_key(&pos) {
                return;
            }
            if st.slots.len() >= self.shared.slots && !st.drop_oldest() {
                return;
            }
            st.slots.insert(pos, Slot::Queued);
            st.order.push_back(pos);
            st.queue.push_back((pos, word));
            let spawn = st.idle == 0 && st.started < self.shared.max_threads;
            if spawn {
                st.started += 1;
            } else {
                self.shared.work.notify_one();
            }
            spawn
        };
        if spawn {
            self.spawn();
        }
    }

    fn spawn(&self) {
        let shared = self.shared.clone();
        let mut threads = self.threads.lock();
        let n = threads.len();
        shared.live.fetch_add(1, Ordering::SeqCst);
        let live = shared.live.clone();
        match std::thread::Builder::new()
            .name(format!("sqfs-ahead-{n}"))
            .spawn(move || {
                shared.run();
                live.fetch_sub(1, Ordering::SeqCst);
            }) {
            Ok(t) => threads.push(t),
            Err(e) => {
                // Readers take queued blocks back and decompress them themselves.
                self.shared.live.fetch_sub(1, Ordering::SeqCst);
                self.shared.st.lock().started -= 1;
                warn!("no thread to decompress ahead ({e}): readers decompress on their own");
            }
        }
    }

    /// The block at `pos` if the pool has it or is decompressing it (waiting for
    /// it then); None if it was never queued, or only queued (the caller then
    /// decompresses it itself, and no thread will). A failure in the pool is not
    /// passed on: the caller reads the block again and gets its own answer.
    pub(super) fn take(&self, pos: u64) -> Option<Vec<u8>> {
        let mut st = self.shared.st.lock();
        loop {
            match st.slots.get(&pos)? {
                Slot::Busy => self.shared.done.wait(&mut st),
                Slot::Queued => {
                    st.forget(pos);
                    return None;
                }
                Slot::Done(_) => {
                    let Some(Slot::Done(r)) = st.forget(pos) else {
                        return None;
                    };
                    let block = r.ok()?;
                    st.taken += 1;
                    return Some(block);
                }
            }
        }
    }

    /// What the pool has done so far.
    pub(super) fn stats(&self) -> Stats {
        let st = self.shared.st.lock();
        Stats {
            decompressed: st.decompressed,
            taken: st.taken,
            threads: self.shared.live.load(Ordering::SeqCst),
        }
    }

    /// The running-thread counter, which outlives the pool (for tests).
    #[cfg(test)]
    pub(super) fn live(&self) -> Arc<AtomicUsize> {
        self.shared.live.clone()
    }
}

impl State {
    /// Removes `pos` wherever it is.
    fn forget(&mut self, pos: u64) -> Option<Slot> {
        let slot = self.slots.remove(&pos)?;
        self.order.retain(|p| *p != pos);
        if matches!(slot, Slot::Queued) {
            self.queue.retain(|(p, _)| *p != pos);
        }
        Some(slot)
    }

    /// Drops the oldest block that no thread is decompressing; false if all are.
    fn drop_oldest(&mut self) -> bool {
        let victim = self
            .order
            .iter()
            .copied()
            .find(|p| !matches!(self.slots.get(p), Some(Slot::Busy)));
        victim.is_some_and(|p| self.forget(p).is_some())
    }
}

impl Shared {
    /// A pool thread: decompresses queued blocks until the pool stops.
    fn run(&self) {
        let mut st = self.st.lock();
        loop {
            if st.stop {
                break;
            }
            let Some((pos, word)) = st.queue.pop_front() else {
                st.idle += 1;
                self.work.wait(&mut st);
                st.idle -= 1;
                continue;
            };
            match st.slots.get_mut(&pos) {
                Some(s @ Slot::Queued) => *s = Slot::Busy,
                _ => continue,
            }
            let r = parking_lot::MutexGuard::unlocked(&mut st, || {
                load(&*self.data, self.codec, self.block_size, pos, word)
            });
            st.decompressed += 1;
            if let Some(s) = st.slots.get_mut(&pos) {
                *s = Slot::Done(r);
            }
            self.done.notify_all();
        }
        st.started -= 1;
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        let stats = self.stats();
        self.shared.st.lock().stop = true;
        self.shared.work.notify_all();
        for t in self.threads.get_mut().drain(..) {
            let _ = t.join();
        }
        if stats.decompressed > 0 {
            debug!(
                "{}: {} blocks decompressed ahead, {} of them used",
                self.shared.data.name(),
                stats.decompressed,
                stats.taken
            );
        }
    }
}
