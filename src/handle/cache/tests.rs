//! The cache's rules, one test each, and a property test of its accounting.

use std::collections::HashSet;

use super::*;

/// The fetch claim `c.step(idx)` must hand out.
fn fetch(c: &Content, idx: u64) -> FetchClaim<'_> {
    match c.step(idx, false, Duration::ZERO) {
        Step::Fetch(f) => f,
        _ => panic!("chunk {idx}: expected a fetch"),
    }
}

/// The stream claim `c.step(idx)` of a sequential reader must hand out.
fn stream(c: &Content, idx: u64) -> StreamClaim {
    match c.step(idx, true, Duration::ZERO) {
        Step::Stream(s) => s,
        _ => panic!("a sequential reader at chunk {idx} starts a stream"),
    }
}

fn chunk(v: u8) -> Arc<Vec<u8>> {
    Arc::new(vec![v; CHUNK as usize])
}

#[test]
fn one_reader_fetches_while_the_others_wait() {
    let cache = Arc::new(ChunkCache::new(64 * CHUNK));
    let a = cache.content("aa", 10 * CHUNK, false);
    let b = cache.content("aa", 10 * CHUNK, false);
    let claim = fetch(&a, 3);
    // b finds the fetch under way and waits instead of fetching too.
    assert!(matches!(b.step(3, false, Duration::ZERO), Step::Retry));
    claim.insert(chunk(7));
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
    let claim = fetch(&a, 0);
    assert!(matches!(b.step(0, false, Duration::ZERO), Step::Retry));
    // A claim dropped unsettled (its fetch failed, or its reader panicked)
    // gives the chunk up to the next reader.
    drop(claim);
    fetch(&b, 0);
}

#[test]
fn a_stream_is_followed_and_held_back_by_its_fastest_reader() {
    let cache = Arc::new(ChunkCache::new(11 * CHUNK));
    let size = 100 * CHUNK;
    let a = cache.content("aa", size, false);
    let b = cache.content("aa", size, false);
    let claim = stream(&a, 0);
    let id = claim.id();
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
    drop(claim);
    assert_eq!(room(&a), None, "an ended stream has no room");
    let stop = || true;
    assert!(a.room_for(id, CHUNK, &stop).is_none());
}

#[test]
fn a_window_is_no_larger_than_the_room_when_it_starts() {
    let cache = Arc::new(ChunkCache::new(11 * CHUNK));
    let a = cache.content("aa", 100 * CHUNK, false);
    let claim = stream(&a, 0);
    let id = claim.id();
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
        fetch(&a, i).insert(chunk(i as u8));
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
    let claims: Vec<StreamClaim> = [0, 100, 200].iter().map(|&at| stream(&a, at)).collect();
    let ids: Vec<u64> = claims.iter().map(StreamClaim::id).collect();
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
        fetch(&a, i).insert(chunk(1));
        a.served(i * CHUNK, (i + 1) * CHUNK);
    }
    assert_eq!(
        cache.bytes(),
        budget / ONCE_SHARE,
        "one reader's finished chunks: its share only"
    );
    assert!(a.get(99).is_some() && a.get(60).is_none());
    let reused = cache.buffers.kept();
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
    assert!(st.lists.reading.is_empty());
    assert!(st.lists.done.contains(&(Arc::from("aa"), 0)));
}

#[test]
fn a_second_reader_keeps_chunks_in_memory() {
    let budget = 256 * CHUNK;
    let cache = Arc::new(ChunkCache::new(budget));
    let a = cache.content("aa", 1000 * CHUNK, false);
    let mut b = Some(cache.content("aa", 1000 * CHUNK, false));
    let filler = cache.content("aa", 1000 * CHUNK, true);
    for i in 0..50 {
        fetch(&a, i).insert(chunk(1));
        a.served(i * CHUNK, (i + 1) * CHUNK);
        assert!(filler.get(i).is_some());
        if i < 10 {
            let r = b.as_ref().expect("b reads the first 10 chunks");
            assert!(r.get(i).is_some());
            r.served(i * CHUNK, (i + 1) * CHUNK);
        }
        if i == 9 {
            // b stops there (while open, it had not passed the chunks after).
            b = None;
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
    fetch(&a, 10).insert(chunk(1));
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
    let claim = stream(&b, 0);
    let id = claim.id();
    b.deliver(id, 0, chunk(2));
    drop(claim);
    drop(b);
    let st = cache.state.lock();
    assert!(st.lists.unread.is_empty());
    assert!(st.lists.done.contains(&(Arc::from("bb"), 0)));
}

/// The byte counts agree with the lists, and no key is in two lists.
pub(super) fn check(cache: &ChunkCache) {
    let st = cache.state.lock();
    let sum = |it: &mut dyn Iterator<Item = u64>| it.sum::<u64>();
    let unread = sum(&mut st.lists.unread.iter().map(|(_, u)| u.data.len() as u64));
    let reading = sum(&mut st.lists.reading.iter().map(|(_, e)| e.data.len() as u64));
    let done = sum(&mut st.lists.done.iter().map(|(_, (d, _))| d.len() as u64));
    let shared = sum(&mut st.lists.shared.iter().map(|(_, d)| d.len() as u64));
    assert_eq!(st.lists.done_bytes, done);
    assert_eq!(st.lists.bytes, unread + reading + done + shared);
    let mut keys = HashSet::new();
    for k in st.lists.unread.iter().map(|(k, _)| k) {
        assert!(keys.insert(k.clone()));
    }
    for k in st.lists.reading.iter().map(|(k, _)| k) {
        assert!(keys.insert(k.clone()));
    }
    for k in st.lists.done.iter().map(|(k, _)| k) {
        assert!(keys.insert(k.clone()));
    }
    for k in st.lists.shared.iter().map(|(k, _)| k) {
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
        let mut streams: Vec<(usize, StreamClaim, u64)> = vec![];
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
                    Step::Fetch(f) => f.insert(Arc::new(vec![0; len as usize])),
                    Step::Stream(c) => streams.push((who, c, idx)),
                    _ => {}
                },
                3 | 4 => {
                    // A piece of the chunk: a third of it, or all of it.
                    let (a, b) = if part == 2 { (0, len) } else { (part * len / 3, (part + 1) * len / 3) };
                    v.served(idx * CHUNK + a, idx * CHUNK + b);
                }
                5 => {
                    if let Some(pos) = streams.iter().position(|s| s.0 == who) {
                        let (w, c, at) = streams.remove(pos);
                        let next = (at + 1).min(39);
                        let l = if at == 39 { CHUNK - 1000 } else { CHUNK };
                        views[w].as_ref().unwrap().deliver(c.id(), at * CHUNK, Arc::new(vec![0; l as usize]));
                        streams.push((w, c, next));
                    }
                }
                6 => {
                    if let Some(pos) = streams.iter().position(|s| s.0 == who) {
                        // Dropping the claim ends the stream.
                        streams.remove(pos);
                    }
                }
                _ => {
                    streams.retain(|s| s.0 != who);
                    views[who] = None;
                }
            }
            check(&cache);
            let st = cache.state.lock();
            let floor = (st.streams as u64 * 2 * MIN_AHEAD).max(4 * CHUNK);
            proptest::prop_assert!(st.lists.bytes <= budget.max(floor) + CHUNK);
        }
        drop(views);
        check(&cache);
        proptest::prop_assert_eq!(cache.state.lock().readers, 0);
    }
}

/// A chunk built in one of the cache's buffers, as fetches and streams build
/// them (so that evicted buffers are reused, not piled up).
fn filled(c: &Content, v: u8) -> Arc<Vec<u8>> {
    let mut b = c.buffer();
    b.resize(CHUNK as usize, v);
    Arc::new(b)
}

/// Issue 21: a reader behind another (a slow consumer, or one that has not
/// started yet) finds in memory every chunk it has not passed while they fit
/// the budget. They used to go with the fast reader's finished chunks, a 32nd
/// of the budget, and the slow one read them from the database again. Found
/// by `history::long_histories_of_mixed_readers`.
#[test]
fn a_reader_behind_finds_what_it_has_not_passed() {
    let cache = Arc::new(ChunkCache::new(64 * CHUNK));
    cache.buffers.on_demand();
    let a = cache.content("aa", 40 * CHUNK, false);
    let b = cache.content("aa", 40 * CHUNK, false);
    for i in 0..40 {
        fetch(&a, i).insert(filled(&a, i as u8));
        a.served(i * CHUNK, (i + 1) * CHUNK);
    }
    for i in 0..40 {
        let d = b
            .get(i)
            .unwrap_or_else(|| panic!("chunk {i} left before b had it"));
        assert_eq!(d[0], i as u8);
        b.served(i * CHUNK, (i + 1) * CHUNK);
    }
}

/// Under the budget's pressure, chunks every open reader has passed go before
/// those one has not, however recently they were used: the slow reader's own
/// last chunks are the most recently used, and least needed. Found by
/// `history::long_histories_of_mixed_readers`.
#[test]
fn passed_chunks_go_before_those_a_reader_still_needs() {
    let cache = Arc::new(ChunkCache::new(24 * CHUNK));
    cache.buffers.on_demand();
    let a = cache.content("aa", 40 * CHUNK, false);
    let b = cache.content("aa", 40 * CHUNK, false);
    for i in 0..10 {
        fetch(&a, i).insert(filled(&a, i as u8));
        a.served(i * CHUNK, (i + 1) * CHUNK);
    }
    for i in 0..8 {
        assert!(b.get(i).is_some());
        b.served(i * CHUNK, (i + 1) * CHUNK);
    }
    // 26 chunks read, 24 of room: what goes is among those b has passed.
    for i in 10..26 {
        fetch(&a, i).insert(filled(&a, i as u8));
        a.served(i * CHUNK, (i + 1) * CHUNK);
    }
    for i in 8..26 {
        assert!(b.get(i).is_some(), "chunk {i}, not passed by b, left");
        b.served(i * CHUNK, (i + 1) * CHUNK);
    }
}

/// Buffers kept for reuse are memory too: with chunks, within the budget.
/// Evicting a chunk used to keep its buffer whatever the budget (up to 32 MiB
/// of them), so memory did not go down. Found by
/// `history::long_histories_of_mixed_readers`.
#[test]
fn kept_buffers_count_against_the_budget() {
    let budget = 8 * CHUNK;
    let cache = Arc::new(ChunkCache::new(budget));
    cache.buffers.on_demand();
    let a = cache.content("aa", 100 * CHUNK, false);
    for i in 0..40 {
        // Fresh chunks, as from a stream whose buffers were all in use.
        fetch(&a, i).insert(chunk(1));
        a.served(i * CHUNK, (i + 1) * CHUNK);
        let held = cache.bytes() + cache.buffers.kept() as u64 * CHUNK;
        assert!(held <= budget, "chunk {i}: {held} bytes held");
    }
}
