//! Chunk buffers kept ready and reused.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::sync::{Condvar, Mutex};

use super::CHUNK;

/// Ready chunk buffers. A fresh 512 KiB buffer costs 128 page faults when first
/// written, and on a cold read those faults, taken by the read-ahead thread, were
/// a third of its time (perf, doc/benchmark-history.md): a helper thread keeps a few buffers
/// faulted in ahead of need, on an otherwise idle core, and evicted chunks'
/// buffers are reused.
pub(super) struct Buffers {
    pub(super) free: Mutex<Vec<Vec<u8>>>,
    /// How many may be kept now, set by the cache after every change (see
    /// [`Buffers::set_room`]): kept buffers are memory like chunks, within the
    /// budget.
    room: AtomicUsize,
    wanted: Condvar,
    #[cfg_attr(feature = "shuttle", allow(dead_code))]
    started: std::sync::Once,
}

/// Most buffers kept ready, made ahead or left by evicted chunks: 8 MiB.
pub(super) const READY: usize = 16;

impl Buffers {
    pub(super) fn take(self: &Arc<Self>) -> Vec<u8> {
        // Under shuttle's schedulers a thread outside the model would hang them:
        // buffers are made on demand there.
        #[cfg(not(feature = "shuttle"))]
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
        if free.len() < self.room() / 2 {
            self.wanted.notify_one();
        }
        drop(free);
        buf.unwrap_or_else(|| Vec::with_capacity(CHUNK as usize))
    }

    pub(super) fn give(&self, mut buf: Vec<u8>) {
        let mut free = self.free.lock();
        if free.len() < self.room() && buf.capacity() >= CHUNK as usize {
            buf.clear();
            free.push(buf);
        }
    }

    /// Keeps READY faulted-in buffers while the cache lives.
    #[cfg_attr(feature = "shuttle", allow(dead_code))]
    fn keep_ready(me: &std::sync::Weak<Buffers>) {
        loop {
            let Some(b) = me.upgrade() else { return };
            let missing = b.room().saturating_sub(b.free.lock().len());
            for _ in 0..missing {
                // Writing every page faults it in here, not in the read-ahead thread
                // (vec![0; n] would not: calloc hands out untouched zero pages).
                let mut v = Vec::with_capacity(CHUNK as usize);
                v.resize(CHUNK as usize, 1u8);
                v.clear();
                b.give(v);
            }
            let mut free = b.free.lock();
            if free.len() >= b.room() {
                b.wanted.wait_for(&mut free, Duration::from_secs(1));
            }
        }
    }
}

impl Buffers {
    pub(super) fn new() -> Buffers {
        Buffers {
            free: Mutex::new(Vec::new()),
            room: AtomicUsize::new(READY),
            wanted: Condvar::new(),
            started: std::sync::Once::new(),
        }
    }

    /// No helper thread: buffers are made on demand, so that what is kept
    /// changes only with what the cache takes and gives (the property tests
    /// replay a history exactly).
    #[cfg(test)]
    pub(super) fn on_demand(&self) {
        self.started.call_once(|| {});
    }

    fn room(&self) -> usize {
        self.room.load(Ordering::Relaxed).min(READY)
    }

    /// At most `n` buffers may be kept from now on: those beyond go back to the
    /// allocator.
    pub(super) fn set_room(&self, n: usize) {
        self.room.store(n, Ordering::Relaxed);
        let mut free = self.free.lock();
        let keep = free.len().min(self.room());
        free.truncate(keep);
    }

    /// Buffers kept for reuse now.
    #[cfg(test)]
    pub(super) fn kept(&self) -> usize {
        self.free.lock().len()
    }
}
