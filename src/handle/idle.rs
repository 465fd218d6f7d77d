//! Gives back the connections of handles whose readers paused: a file kept open
//! (nginx's open_file_cache, `less`, a backup tool) must not pin a connection and a
//! snapshot that holds back VACUUM for as long as it stays open.

use std::sync::{Arc, Weak};
use std::time::Duration;

use log::{debug, warn};
use parking_lot::Mutex;

/// Something that holds a connection and can give it back when unused.
pub(crate) trait Idle: Send + Sync {
    /// Ends the transaction and returns the connection if unused for `idle`.
    fn release_if_idle(&self, idle: Duration);
    /// Holds a connection now (for the metrics; never waits for a read).
    fn holds_connection(&self) -> bool;
}

/// The open handles of one pool, swept by one thread while any exist.
#[derive(Default)]
pub(crate) struct Registry {
    handles: Mutex<Vec<Weak<dyn Idle>>>,
    sweeping: Mutex<bool>,
}

impl Registry {
    /// Watches `h` until it is dropped; starts the sweeper if none runs.
    pub(crate) fn watch(self: &Arc<Self>, h: Weak<dyn Idle>, idle: Duration) {
        self.handles.lock().push(h);
        let mut sweeping = self.sweeping.lock();
        if *sweeping {
            return;
        }
        let me = self.clone();
        // Sweeping at a quarter of the limit keeps the overshoot small.
        let every = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let spawned = std::thread::Builder::new()
            .name("handle-idle".into())
            .spawn(move || me.sweep(idle, every));
        match spawned {
            Ok(_) => *sweeping = true,
            Err(e) => warn!("cannot start the idle-handle sweeper: {e}"),
        }
    }

    /// Handles alive, and how many of them hold a connection.
    pub(crate) fn count(&self) -> (usize, usize) {
        let live: Vec<Arc<dyn Idle>> = self
            .handles
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let connected = live.iter().filter(|h| h.holds_connection()).count();
        (live.len(), connected)
    }

    fn sweep(&self, idle: Duration, every: Duration) {
        loop {
            std::thread::sleep(every);
            let live: Vec<Arc<dyn Idle>> = {
                let mut handles = self.handles.lock();
                handles.retain(|w| w.strong_count() > 0);
                if handles.is_empty() {
                    // The next watch() starts a new sweeper.
                    *self.sweeping.lock() = false;
                    debug!("idle sweeper: no open handles, stopping");
                    return;
                }
                handles.iter().filter_map(Weak::upgrade).collect()
            };
            for h in live {
                h.release_if_idle(idle);
            }
        }
    }
}
