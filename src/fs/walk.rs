//! Which processes want attributes with their listings.
//!
//! READDIRPLUS makes the kernel build an inode for every entry it returns, which is
//! what `ls -l`, `rsync` and `du` want (no LOOKUP per file afterwards) and most of
//! what a fresh `find` costs (it reads names and file types only). The kernel's
//! adaptive mode (FUSE_READDIRPLUS_AUTO) sends READDIRPLUS for the first batch of
//! every listing, and our directories fit in one batch, so it never helps here.
//! pgbootfs decides per process instead: a process that has looked up a regular
//! file lately (it stats what it lists) gets full READDIRPLUS batches and cached
//! listings; any other gets `.`, `..` and the directories listed first as the
//! first batch (inside images directories are listed first), which makes no inode
//! the walker would not make anyway by entering them, and the kernel then asks
//! for the rest with plain READDIR, names only. A listing of at most 16 entries
//! comes whole: a few inodes cost less than that READDIR's round trip.
//! A walker that starts stat-ing mid-walk pays one LOOKUP per entry of the
//! directories it read before, then gets attributes from the next directory on.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long a process counts as one that stats what it lists.
const WINDOW: Duration = Duration::from_secs(60);

/// Past this many processes remembered, the ones outside the window are forgotten.
const PRUNE_AT: usize = 4096;

/// Processes that looked up a regular file within [`WINDOW`].
#[derive(Default)]
pub(crate) struct StatReaders {
    seen: Mutex<HashMap<u32, Instant>>,
}

impl StatReaders {
    /// Process `pid` looked up a regular file.
    pub(crate) fn note(&self, pid: u32) {
        let now = Instant::now();
        let mut seen = self.seen.lock();
        if seen.len() >= PRUNE_AT {
            seen.retain(|_, at| now.duration_since(*at) < WINDOW);
        }
        seen.insert(pid, now);
    }

    /// Does `pid` want attributes with its listings?
    pub(crate) fn wants_attrs(&self, pid: u32) -> bool {
        self.seen
            .lock()
            .get(&pid)
            .is_some_and(|at| at.elapsed() < WINDOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_looks_up_files_gets_attributes() {
        let s = StatReaders::default();
        assert!(!s.wants_attrs(42));
        s.note(42);
        assert!(s.wants_attrs(42));
        assert!(!s.wants_attrs(43));
    }

    #[test]
    fn the_table_stays_bounded() {
        let s = StatReaders::default();
        for pid in 0..(PRUNE_AT as u32 * 2) {
            s.note(pid);
        }
        // All within the window: kept (a burst of processes is rare and short).
        assert!(s.wants_attrs(0));
        {
            let mut seen = s.seen.lock();
            for at in seen.values_mut() {
                *at = at.checked_sub(WINDOW * 2).unwrap_or(*at);
            }
        }
        s.note(1);
        assert_eq!(s.seen.lock().len(), 1);
    }
}
