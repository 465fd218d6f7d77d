//! A property test of the cache's accounting over long histories of mixed
//! readers on one cache: readers open and close over hundreds of steps, read
//! sequentially at different speeds (their steps interleaved) or at random, start
//! read-ahead streams that run one chunk per step, stop half-way, fall behind a
//! stream's window, sit idle (steps that are not theirs), and fail a fetch; new
//! images force evictions. Bytes come from the fake byte source, which counts
//! every request per chunk as a database would read it. Readers and streams act
//! as `handle/mod.rs` and `handle/readahead.rs` do with the cache (a stream takes
//! its reader's session, is stopped when its reader fetches alone or closes, and
//! sizes each window to the room the cache grants), without their threads, so a
//! failing history replays exactly and shrinks.
//!
//! After every step:
//! - the lists' counts agree with their contents ([`super::tests::check`]);
//! - memory within the budget: chunks and buffers kept for reuse within what the
//!   budget leaves after the own buffers of the streams that have begun a
//!   window, or the floor the streams need, whichever is more (doc/SEMANTICS.md,
//!   Resources);
//! - every byte served is the image's;
//! - the rule of doc/SEMANTICS.md ("exactly when a second database read of a chunk
//!   can happen"): a chunk that leaves memory while a live reader of its image
//!   has not passed it (its last read ended before the chunk's end) fails the
//!   test unless those chunks, with the others live readers have not passed, were
//!   more than the budget leaves for chunks (checked at every eviction, also one
//!   within a step); and each chunk is read from the source at most once more
//!   than the excused events allow: an eviction allowed by the rule, the rest of
//!   a stopped stream's window, a failed fetch, a window over a chunk already in
//!   memory or in another stream's window;
//! - once every reader has closed, no claim, stream front or waiter is left.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::{CHUNK, ChunkCache, Content, MIN_AHEAD, STREAM_OUTSIDE, Step, StreamClaim};
use crate::handle::fake::FakeSource;
use crate::handle::source::{ByteSource, Session};

/// The images a history reads: a few chunks to a few dozen, the last chunk
/// partial (one by a single byte).
const SIZES: [u64; 4] = [
    3 * CHUNK - 4096,
    9 * CHUNK - 1,
    20 * CHUNK - 100_000,
    36 * CHUNK - 7,
];

/// Readers open at once, at most.
const SLOTS: usize = 6;

/// A stream's windows, as in readahead.rs.
const FIRST_WINDOW: u64 = 4 << 20;
const MAX_WINDOW: u64 = 32 << 20;

/// Bytes per read of a reader: a kernel request, a chunk, more than a chunk.
const PIECES: [u64; 4] = [64 << 10, 128 << 10, CHUNK, CHUNK + (256 << 10)];

fn images() -> &'static [Arc<Vec<u8>>] {
    static IMAGES: OnceLock<Vec<Arc<Vec<u8>>>> = OnceLock::new();
    IMAGES.get_or_init(|| {
        SIZES
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                // Each 8 bytes say which image and which offset: bytes of another
                // chunk or image never pass for these.
                let mut v = Vec::with_capacity(size as usize + 8);
                let mut off = 0u64;
                while (v.len() as u64) < size {
                    v.extend_from_slice(&(((i as u64) << 56) | off).to_le_bytes());
                    off += 8;
                }
                v.truncate(size as usize);
                Arc::new(v)
            })
            .collect()
    })
}

fn name(image: usize) -> String {
    format!("image{image}")
}

fn chunk_len(image: usize, idx: u64) -> u64 {
    CHUNK.min(SIZES[image] - idx * CHUNK)
}

/// What happens in one step of a history.
#[derive(Debug, Clone)]
enum Act {
    /// A reader opens an image (if its slot is free): sequential (a `cp`, a
    /// download) or random (a format reader looking inside), reading `piece`
    /// bytes a time.
    Open {
        slot: usize,
        image: usize,
        sequential: bool,
        piece: usize,
    },
    /// The reader of `slot` reads once: its next piece, or for a random reader
    /// the piece at `at` (a fraction of the image, in 1/1000ths).
    Read { slot: usize, at: u64 },
    /// The stream of the reader of `slot` delivers a chunk (first asking for a
    /// window when its last one is used up).
    Pump { slot: usize },
    /// The reader of `slot` closes, wherever it got to.
    Close { slot: usize },
    /// The next fetch of the reader of `slot` fails (a lost connection).
    Fail { slot: usize },
}

fn act() -> impl Strategy<Value = Act> {
    let slot = 0..SLOTS;
    prop_oneof![
        2 => (slot.clone(), 0..SIZES.len(), proptest::bool::weighted(0.75), 0..PIECES.len())
            .prop_map(|(slot, image, sequential, piece)| Act::Open { slot, image, sequential, piece }),
        8 => (slot.clone(), 0..1000u64).prop_map(|(slot, at)| Act::Read { slot, at }),
        6 => slot.clone().prop_map(|slot| Act::Pump { slot }),
        1 => slot.clone().prop_map(|slot| Act::Close { slot }),
        1 => slot.prop_map(|slot| Act::Fail { slot }),
    ]
}

/// A read-ahead stream, as readahead.rs runs it: one window at a time, read by
/// the source when asked for, delivered a chunk per step.
struct Stream {
    claim: StreamClaim,
    /// The stream's own view: it delivers, it reads nothing.
    view: Content,
    session: Box<dyn Session>,
    /// Next offset to deliver.
    next: u64,
    /// The current window's bytes, from `start`, up to `end`.
    window: Vec<u8>,
    start: u64,
    end: u64,
    grow: u64,
}

struct Reader {
    image: usize,
    view: Content,
    session: Option<Box<dyn Session>>,
    sequential: bool,
    piece: u64,
    /// A sequential reader's next offset.
    next: u64,
    /// Where its last read ended (0 before any): the chunks from the one holding
    /// this offset on are those it has not passed.
    at: u64,
    stream: Option<Stream>,
    fail_next: bool,
}

type Chunk = (usize, u64);

struct World {
    cache: Arc<ChunkCache>,
    budget: u64,
    sources: Vec<Arc<FakeSource>>,
    readers: Vec<Option<Reader>>,
    /// Reads of each chunk beyond its first that the rule excuses so far.
    excused: HashMap<Chunk, u32>,
    /// Chunks stored during this step (one may leave again within it).
    stored: HashSet<Chunk>,
}

/// What a step's checks need from before it.
struct Before {
    at: Vec<Option<(usize, u64)>>,
    streams: usize,
}

impl World {
    fn new(budget: u64) -> World {
        let cache = Arc::new(ChunkCache::new(budget));
        cache.buffers.on_demand();
        World {
            cache,
            budget,
            sources: images()
                .iter()
                .map(|d| FakeSource::sharing(d.clone()))
                .collect(),
            readers: (0..SLOTS).map(|_| None).collect(),
            excused: HashMap::new(),
            stored: HashSet::new(),
        }
    }

    fn excuse(&mut self, c: Chunk) {
        trace(|| format!("  excused: image {} chunk {}", c.0, c.1));
        *self.excused.entry(c).or_default() += 1;
    }

    fn run(&mut self, act: &Act) -> Result<(), TestCaseError> {
        match *act {
            Act::Open {
                slot,
                image,
                sequential,
                piece,
            } => {
                if self.readers[slot].is_none() {
                    self.readers[slot] = Some(Reader {
                        image,
                        view: self.cache.content(&name(image), SIZES[image], false),
                        session: None,
                        sequential,
                        piece: PIECES[piece],
                        next: 0,
                        at: 0,
                        stream: None,
                        fail_next: false,
                    });
                }
            }
            Act::Read { slot, at } => self.read(slot, at)?,
            Act::Pump { slot } => self.pump(slot),
            Act::Close { slot } => self.close(slot),
            Act::Fail { slot } => {
                if let Some(r) = &mut self.readers[slot] {
                    r.fail_next = true;
                }
            }
        }
        Ok(())
    }

    /// One read of the reader of `slot`, as `Handle::read_with` makes it: every
    /// chunk of the span, then the bytes served. A chunk that is on its way from
    /// a stream stalls the read this step (the handle would wait for it).
    fn read(&mut self, slot: usize, at: u64) -> Result<(), TestCaseError> {
        let Some(r) = &self.readers[slot] else {
            return Ok(());
        };
        let size = SIZES[r.image];
        let offset = if r.sequential {
            r.next
        } else {
            size * at / 1000
        };
        if offset >= size {
            return Ok(());
        }
        let end = (offset + r.piece).min(size);
        let mut chunks = Vec::new();
        for idx in offset / CHUNK..end.div_ceil(CHUNK) {
            match self.chunk(slot, idx) {
                Some(d) => chunks.push(d),
                None => return Ok(()),
            }
        }
        let Some(r) = &mut self.readers[slot] else {
            return Ok(());
        };
        let data = &images()[r.image];
        for (i, d) in chunks.iter().enumerate() {
            let idx = offset / CHUNK + i as u64;
            let want =
                &data[(idx * CHUNK) as usize..((idx * CHUNK) + chunk_len(r.image, idx)) as usize];
            prop_assert!(
                d[..] == *want,
                "image {} chunk {idx}: other bytes served",
                r.image
            );
        }
        r.view.served(offset, end);
        r.at = end;
        if r.sequential {
            r.next = end;
        }
        Ok(())
    }

    /// Chunk `idx` for the reader of `slot`, as `Shared::chunk` gets it; None when
    /// it must wait (a stream is bringing it) or its fetch failed.
    fn chunk(&mut self, slot: usize, idx: u64) -> Option<Arc<Vec<u8>>> {
        loop {
            let Some(r) = &mut self.readers[slot] else {
                return None;
            };
            let image = r.image;
            let src = self.sources[image].clone();
            let Reader {
                view,
                session,
                stream,
                sequential,
                fail_next,
                ..
            } = r;
            // Chunks the source read that are excused from the rule, and what the
            // reader gets: Some(Some) a chunk, Some(None) nothing this step, None
            // a look again (it started a stream).
            let mut excused = Vec::new();
            let got = match view.step(idx, *sequential, Duration::ZERO) {
                Step::Hit(d) => Some(Some(d)),
                Step::Retry => Some(None),
                Step::Fetch(claim) => {
                    // A handle stops its own stream before it fetches alone.
                    excused = stop(stream, session);
                    let s = session.get_or_insert_with(|| open(&src));
                    let start = idx * CHUNK;
                    trace(|| format!("  slot {slot} fetches image {image} chunk {idx}"));
                    let mut buf = view.buffer();
                    s.read(start, chunk_len(image, idx), &mut buf)
                        .expect("the fake source reads");
                    if std::mem::take(fail_next) {
                        // The connection was lost under the read: the claim,
                        // dropped, passes the chunk on, and the session goes.
                        drop(claim);
                        *session = None;
                        excused.push(idx);
                        Some(None)
                    } else {
                        let d = Arc::new(buf);
                        claim.insert(d.clone());
                        self.stored.insert((image, idx));
                        Some(Some(d))
                    }
                }
                Step::Stream(claim) => {
                    excused = stop(stream, session);
                    let s = session.take().unwrap_or_else(|| open(&src));
                    *stream = Some(Stream {
                        claim,
                        view: self.cache.content(&name(image), SIZES[image], true),
                        session: s,
                        next: idx * CHUNK,
                        window: Vec::new(),
                        start: idx * CHUNK,
                        end: idx * CHUNK,
                        grow: FIRST_WINDOW,
                    });
                    None
                }
            };
            for c in excused {
                self.excuse((image, c));
            }
            if let Some(got) = got {
                return got;
            }
        }
    }

    /// The stream of the reader of `slot` runs one chunk, as readahead.rs's
    /// worker does.
    fn pump(&mut self, slot: usize) {
        let Some(r) = &self.readers[slot] else {
            return;
        };
        let image = r.image;
        let size = SIZES[image];
        let Some(s) = &r.stream else {
            return;
        };
        if s.next >= s.end {
            let want = s.grow.min(size - s.next);
            let granted = {
                let mut st = s.view.lock();
                s.view.grant(&mut st, s.claim.id(), want)
            };
            let Some(Some(granted)) = granted else {
                // No room yet: it waits for its readers.
                return;
            };
            let next = s.next;
            let end = if next + granted >= size {
                size
            } else {
                ((next + granted) / CHUNK * CHUNK)
                    .max(next + CHUNK)
                    .min(size)
            };
            // A window is one statement: it reads what is in memory already, and
            // what another stream's window has read and not delivered yet, too.
            let others: Vec<(u64, u64)> = self
                .readers
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != slot)
                .filter_map(|(_, r)| r.as_ref().filter(|r| r.image == image))
                .filter_map(|r| r.stream.as_ref().map(|s| (s.next, s.end)))
                .collect();
            let again: Vec<u64> = (next / CHUNK..end.div_ceil(CHUNK))
                .filter(|&idx| {
                    let off = idx * CHUNK;
                    self.held_now((image, idx))
                        || others.iter().any(|&(from, to)| off >= from && off < to)
                })
                .collect();
            for idx in again {
                self.excuse((image, idx));
            }
            let Some(Some(Reader {
                stream: Some(s), ..
            })) = self.readers.get_mut(slot)
            else {
                return;
            };
            trace(|| {
                format!(
                    "  slot {slot}'s stream reads image {image} {}..{}",
                    next / CHUNK,
                    end.div_ceil(CHUNK)
                )
            });
            s.window.clear();
            s.session
                .window(next, end)
                .and_then(|mut w| {
                    w.read_to_end(&mut s.window)
                        .map_err(crate::handle::error::HandleErrorKind::Stream)
                })
                .expect("the fake source streams");
            s.start = next;
            s.end = end;
            s.grow = (s.grow * 2).min(MAX_WINDOW);
        }
        let Some(Some(r)) = self.readers.get_mut(slot) else {
            return;
        };
        let Some(s) = &mut r.stream else {
            return;
        };
        let from = s.next;
        let to = ((from / CHUNK + 1) * CHUNK).min(s.end);
        let mut buf = s.view.buffer();
        buf.extend_from_slice(&s.window[(from - s.start) as usize..(to - s.start) as usize]);
        s.view.deliver(s.claim.id(), from, Arc::new(buf));
        s.next = to;
        self.stored.insert((image, from / CHUNK));
        if to >= size {
            // Every byte delivered: the stream ends, and its session with it.
            if let Some(s) = r.stream.take() {
                s.session.end();
            }
        }
    }

    fn close(&mut self, slot: usize) {
        let Some(mut r) = self.readers[slot].take() else {
            return;
        };
        let drained = stop(&mut r.stream, &mut r.session);
        for c in drained {
            self.excuse((r.image, c));
        }
        if let Some(s) = r.session.take() {
            s.end();
        }
    }

    fn held_now(&self, c: Chunk) -> bool {
        let key = (Arc::<str>::from(name(c.0)), c.1);
        let st = self.cache.state.lock();
        st.lists.unread.contains(&key)
            || st.lists.reading.contains(&key)
            || st.lists.done.contains(&key)
            || st.lists.shared.contains(&key)
    }

    fn before(&self) -> Before {
        Before {
            at: self
                .readers
                .iter()
                .map(|r| r.as_ref().map(|r| (r.image, r.at)))
                .collect(),
            streams: self.cache.state.lock().streams,
        }
    }

    /// Everything the header promises, after step `n` (`what`).
    fn check(&mut self, n: usize, what: &Act, before: &Before) -> Result<(), TestCaseError> {
        super::tests::check(&self.cache);
        let kept = self.cache.buffers.kept() as u64;
        let mut st = self.cache.state.lock();
        let streams = st.streams as u64;
        let floor = |streams: u64| (streams * 2 * MIN_AHEAD).max(4 * CHUNK);
        let reserved = |streams: u64| streams * (CHUNK + STREAM_OUTSIDE);
        let held_bytes = st.lists.bytes + kept * CHUNK;
        // A stream's own buffers are spent from its first window on (its first
        // delivery trims the cache for them).
        let running = self
            .readers
            .iter()
            .flatten()
            .filter_map(|r| r.stream.as_ref())
            .filter(|s| s.end > s.start)
            .count() as u64;
        let bound = self
            .budget
            .saturating_sub(reserved(running))
            .max(floor(streams));
        prop_assert!(
            held_bytes <= bound,
            "step {n} ({what:?}): {} chunks and {kept} kept buffers, over {} chunks",
            st.lists.bytes / CHUNK,
            bound / CHUNK
        );
        let image_of = |content: &Arc<str>| {
            let image = (0..SIZES.len()).find(|&i| *name(i) == **content);
            image.expect("a key of one of the images")
        };
        let mut now = HashSet::new();
        let keys = st
            .lists
            .unread
            .iter()
            .map(|(k, _)| k)
            .chain(st.lists.reading.iter().map(|(k, _)| k))
            .chain(st.lists.done.iter().map(|(k, _)| k))
            .chain(st.lists.shared.iter().map(|(k, _)| k));
        for (content, idx) in keys {
            now.insert((image_of(content), *idx));
        }
        // Every eviction of the step, in order (a chunk may leave and come back
        // within one step).
        let gone: Vec<Chunk> = std::mem::take(&mut st.lists.evicted)
            .iter()
            .map(|(content, idx)| (image_of(content), *idx))
            .collect();
        if self.readers.iter().all(Option::is_none) {
            prop_assert!(
                st.contents.is_empty() && st.streams == 0 && st.readers == 0,
                "step {n}: every reader closed, yet {} contents, {} streams, {} readers left",
                st.contents.len(),
                st.streams,
                st.readers
            );
        }
        drop(st);

        // Which chunks live readers have not passed, before the step and after
        // it: the cache evicted at some moment in between.
        let after: Vec<Option<(usize, u64)>> = self
            .readers
            .iter()
            .map(|r| r.as_ref().map(|r| (r.image, r.at)))
            .collect();
        let ahead = |at: &[Option<(usize, u64)>], c: Chunk| {
            at.iter()
                .flatten()
                .any(|&(image, pos)| image == c.0 && c.1 >= pos / CHUNK)
        };
        // The most the not-passed chunks in memory can have been, against the
        // least the budget can have left for chunks, during the step.
        let during: HashSet<Chunk> = now
            .iter()
            .chain(&gone)
            .chain(&self.stored)
            .copied()
            .collect();
        self.stored.clear();
        let wanted: u64 = during
            .iter()
            .filter(|&&c| ahead(&before.at, c) || ahead(&after, c))
            .map(|&(i, idx)| chunk_len(i, idx))
            .sum();
        let most_streams = (before.streams as u64).max(streams);
        let least_streams = (before.streams as u64).min(streams);
        let room = self
            .budget
            .saturating_sub(reserved(most_streams) + self.cache.spare() * CHUNK)
            .max(floor(least_streams));
        trace(|| format!("  gone: {gone:?}"));
        trace(|| {
            let mut v: Vec<_> = now.iter().copied().collect();
            v.sort_unstable();
            format!("  held: {v:?}")
        });
        for &c in &gone {
            let passed = !(ahead(&before.at, c) && ahead(&after, c));
            prop_assert!(
                passed || wanted > room,
                "step {n} ({what:?}): image {} chunk {} left memory before a live reader \
                 passed it, while the chunks not passed ({} KiB) fit the room ({} KiB)",
                c.0,
                c.1,
                wanted >> 10,
                room >> 10
            );
            self.excuse(c);
        }
        for (image, src) in self.sources.iter().enumerate() {
            for idx in 0..SIZES[image].div_ceil(CHUNK) {
                let reads = src.calls.chunk_reads(idx);
                let excused = self.excused.get(&(image, idx)).copied().unwrap_or(0);
                prop_assert!(
                    reads <= 1 + excused,
                    "step {n} ({what:?}): image {image} chunk {idx} read {reads} times, \
                     {excused} of them excused"
                );
            }
        }
        Ok(())
    }
}

/// With PGBOOTFS_HISTORY_TRACE set, prints what each step did (to follow a
/// failing history).
fn trace(line: impl FnOnce() -> String) {
    static ON: OnceLock<bool> = OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("PGBOOTFS_HISTORY_TRACE").is_some()) {
        eprintln!("{}", line());
    }
}

fn open(src: &Arc<FakeSource>) -> Box<dyn Session> {
    src.open(Duration::ZERO).expect("the fake source opens")
}

/// Stops a reader's stream, as `take_stream` does: its session goes back to the
/// reader. Returns the chunks the source read for the stream that it never
/// delivered (the rest of its window).
fn stop(stream: &mut Option<Stream>, session: &mut Option<Box<dyn Session>>) -> Vec<u64> {
    let Some(s) = stream.take() else {
        return Vec::new();
    };
    let drained = (s.next / CHUNK..s.end.div_ceil(CHUNK)).collect();
    *session = Some(s.session);
    drained
}

/// Runs a history on one cache of `budget` chunks, checking after every step,
/// then closes every reader and checks again.
fn history(budget: u64, acts: &[Act]) -> Result<(), TestCaseError> {
    let mut w = World::new(budget * CHUNK);
    for (n, a) in acts.iter().enumerate() {
        trace(|| format!("{n}: {a:?}"));
        let before = w.before();
        w.run(a)?;
        w.check(n, a, &before)?;
    }
    for slot in 0..SLOTS {
        let before = w.before();
        let a = Act::Close { slot };
        w.run(&a)?;
        w.check(acts.len() + slot, &a, &before)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Long histories of mixed readers keep memory within the budget, serve the
    /// right bytes, leave nothing behind, and read a chunk from the source twice
    /// only as doc/SEMANTICS.md says. Budgets from tight (a few chunks: less
    /// than one image) to ample (every image at once).
    #[test]
    fn long_histories_of_mixed_readers(
        budget in prop_oneof![4u64..16, 16u64..48, 64u64..160],
        acts in proptest::collection::vec(act(), 1..600),
    ) {
        history(budget, &acts)?;
    }
}
