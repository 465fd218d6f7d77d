//! The cache's waits under shuttle's schedulers (`cargo test --features shuttle
//! --lib interleavings`): readers, fetches and streams on threads whose
//! interleavings shuttle chooses, random and PCT, a few thousand schedules each.
//! Waits have no timeout here (see `crate::sync`), so a wake-up that is lost
//! hangs a reader, and shuttle reports the deadlock with the schedule that made
//! it.

use std::sync::Arc;
use std::time::Duration;

use shuttle::thread;

use super::{CHUNK, ChunkCache, Content, Step};

/// Schedules per scheduler and scenario: enough to find the orderings of a few
/// threads, small enough for CI (each schedule is a handful of lock operations).
const ITERATIONS: usize = 2000;

/// Ignored under shuttle (waits have no timeout there), kept for the signature.
const WAIT: Duration = Duration::from_millis(100);

fn chunk(v: u8) -> Arc<Vec<u8>> {
    Arc::new(vec![v; CHUNK as usize])
}

/// Reads chunk `idx` as a handle does: a hit, a wait, or a fetch of its own. A
/// reader that `fails` gives its fetch up and leaves (None), as a read whose
/// database call failed does. A stream claim is served by delivering the one
/// chunk and ending the stream.
fn try_read(c: &Content, idx: u64, sequential: bool, fails: bool) -> Option<u8> {
    loop {
        match c.step(idx, sequential, WAIT) {
            Step::Hit(d) => return Some(d[0]),
            Step::Retry => {}
            Step::Fetch(claim) if fails => {
                drop(claim);
                return None;
            }
            Step::Fetch(claim) => claim.insert(chunk(idx as u8)),
            Step::Stream(s) => c.deliver(s.id(), idx * CHUNK, chunk(idx as u8)),
        }
    }
}

fn read(c: &Content, idx: u64, sequential: bool) -> u8 {
    try_read(c, idx, sequential, false).expect("a reader that does not fail")
}

/// Three readers want one chunk; one of them fails if it has to fetch it. The
/// others end with the chunk: a failed fetch wakes its waiters, one fetches again.
fn a_fetch_that_fails_while_others_wait() {
    let cache = Arc::new(ChunkCache::new(64 * CHUNK));
    let readers: Vec<_> = (0..3)
        .map(|i| {
            let cache = cache.clone();
            thread::spawn(move || {
                let c = cache.content("aa", 4 * CHUNK, false);
                try_read(&c, 1, false, i == 0)
            })
        })
        .collect();
    for (i, r) in readers.into_iter().enumerate() {
        let got = r.join().expect("reader");
        assert!(
            got == Some(1) || (i == 0 && got.is_none()),
            "reader {i}: {got:?}"
        );
    }
}

/// A stream delivers the first chunks of a content and ends early while two
/// readers wait inside its window; they get every chunk, from the stream or by
/// fetching for themselves once it ended.
fn a_stream_ended_while_readers_wait_in_its_window() {
    let cache = Arc::new(ChunkCache::new(16 * CHUNK));
    let size = 6 * CHUNK;
    let owner = cache.content("bb", size, false);
    let Step::Stream(claim) = owner.step(0, true, WAIT) else {
        panic!("the first sequential reader starts a stream");
    };
    let streamer = {
        let cache = cache.clone();
        thread::spawn(move || {
            let view = cache.content("bb", size, true);
            for i in 0..3 {
                if view.room_for(claim.id(), CHUNK, &|| false).is_none() {
                    break;
                }
                view.deliver(claim.id(), i * CHUNK, chunk(i as u8));
            }
            // Ends here, short of the end: the claim goes with the thread.
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let cache = cache.clone();
            thread::spawn(move || {
                let c = cache.content("bb", size, false);
                (0..6).map(|i| read(&c, i, true)).collect::<Vec<u8>>()
            })
        })
        .collect();
    for r in readers {
        assert_eq!(r.join().expect("reader"), vec![0, 1, 2, 3, 4, 5]);
    }
    streamer.join().expect("streamer");
    drop(owner);
}

/// One reader runs through a content far larger than the budget while another
/// comes late for its first chunk: the late one finds it or fetches it, never
/// waits for a chunk that was evicted, and the budget holds.
fn eviction_racing_a_late_reader() {
    let cache = Arc::new(ChunkCache::new(4 * CHUNK));
    let size = 12 * CHUNK;
    let early = {
        let cache = cache.clone();
        thread::spawn(move || {
            let c = cache.content("cc", size, false);
            for i in 0..12 {
                assert_eq!(read(&c, i, false), i as u8);
                c.served(i * CHUNK, (i + 1) * CHUNK);
            }
        })
    };
    let late = {
        let cache = cache.clone();
        thread::spawn(move || {
            let c = cache.content("cc", size, false);
            read(&c, 0, false)
        })
    };
    assert_eq!(late.join().expect("late reader"), 0);
    early.join().expect("early reader");
    assert!(cache.bytes() <= 4 * CHUNK, "over budget: {}", cache.bytes());
}

#[test]
fn failed_fetch_random() {
    shuttle::check_random(a_fetch_that_fails_while_others_wait, ITERATIONS);
}

#[test]
fn failed_fetch_pct() {
    shuttle::check_pct(a_fetch_that_fails_while_others_wait, ITERATIONS, 3);
}

#[test]
fn ended_stream_random() {
    shuttle::check_random(a_stream_ended_while_readers_wait_in_its_window, ITERATIONS);
}

#[test]
fn ended_stream_pct() {
    shuttle::check_pct(
        a_stream_ended_while_readers_wait_in_its_window,
        ITERATIONS,
        3,
    );
}

#[test]
fn late_reader_random() {
    shuttle::check_random(eviction_racing_a_late_reader, ITERATIONS);
}

#[test]
fn late_reader_pct() {
    shuttle::check_pct(eviction_racing_a_late_reader, ITERATIONS, 3);
}
