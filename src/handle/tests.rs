//! The handle's failure paths against the fake byte source: lost connections at a
//! chosen byte, content that changed meanwhile, servers that stay away, short
//! content, stalls, idle release. The same paths are covered end to end on real
//! clusters in tests/resume.rs; these run in milliseconds and hit exact offsets.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use postgres::error::SqlState;

use super::error::{ErrorClass, HandleErrorKind, verdict};
use super::fake::{FakeSource, Fault};
use super::idle::Idle;
use super::{CHUNK, Handle, HandlePool, PoolOptions};
use crate::catalog::FileInfo;
use crate::db::DbConfig;

const MIB: u64 = 1 << 20;

/// Bytes that differ at every offset a chunk boundary could hide.
fn content(len: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// A pool that never connects anywhere: every byte comes from fake sources.
fn pool(reconnect: Duration) -> HandlePool {
    pool_with(reconnect, 64 * MIB)
}

/// [`pool`] with a chunk cache of `cache_memory` bytes.
fn pool_with(reconnect: Duration, cache_memory: u64) -> HandlePool {
    let db = DbConfig::resolve_with(Some("host=/nonexistent dbname=none user=none"), |_| None)
        .expect("a conninfo that parses");
    HandlePool::new(
        &db,
        &PoolOptions {
            reconnect_timeout: reconnect,
            cache_memory,
            ..PoolOptions::default()
        },
    )
}

/// A handle on `src` claiming `size` bytes, under a cache key of its own.
fn open(pool: &HandlePool, src: &Arc<FakeSource>, size: u64, key: &str) -> Handle {
    let info = FileInfo {
        oid: 0,
        size,
        sha256: key.into(),
        filetype: "squashfs".into(),
        stored: None,
    };
    pool.open_source(Arc::new(src.clone()), key.into(), &info, key, false)
}

/// Reads `h` from `from` to its end in steps of `step` bytes, as `cat` does.
fn read_all(h: &Handle, from: u64, step: usize) -> Result<Vec<u8>, super::HandleError> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; step];
    let mut off = from;
    loop {
        let n = h.read_into(off, &mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
        off += n as u64;
    }
}

/// The error of a read that must fail (without printing megabytes if it did not).
fn fails(r: Result<Vec<u8>, super::HandleError>, what: &str) -> super::HandleError {
    match r {
        Ok(v) => panic!("{what}: read {} bytes and no error", v.len()),
        Err(e) => e,
    }
}

#[test]
fn a_lost_connection_mid_stream_is_a_pause_with_the_same_bytes() {
    let data = content(9 * MIB + 123);
    let src = FakeSource::new(data.clone());
    src.fail_at(3 * MIB + 5, Fault::Io);
    let p = pool(Duration::from_secs(5));
    let h = open(&p, &src, data.len() as u64, "lost-mid-stream");
    let got = read_all(&h, 0, 128 << 10).expect("resumed");
    assert!(got == data, "bytes differ after the resume");
    assert_eq!(
        src.calls.opens.load(Ordering::Relaxed),
        2,
        "one set-up again"
    );
}

#[test]
fn shutdown_and_standby_conflict_on_a_chunk_read_are_resumed() {
    for code in [
        SqlState::ADMIN_SHUTDOWN,
        SqlState::T_R_SERIALIZATION_FAILURE,
    ] {
        let data = content(40 * MIB);
        let src = FakeSource::new(data.clone());
        // Far from the last read: a fetch of one chunk, not a stream.
        let at = 30 * MIB;
        src.fail_at(at, Fault::Sql(code.clone()));
        let p = pool(Duration::from_secs(5));
        let h = open(&p, &src, data.len() as u64, code.code());
        let mut buf = vec![0u8; 4096];
        assert_eq!(h.read_into(at, &mut buf).expect("resumed"), 4096);
        assert!(buf[..] == data[at as usize..at as usize + 4096]);
        assert_eq!(src.calls.opens.load(Ordering::Relaxed), 2, "{code:?}");
    }
}

#[test]
fn content_changed_while_away_fails_and_never_gives_other_bytes() {
    let data = content(6 * MIB);
    let src = FakeSource::new(data.clone());
    src.open_ok();
    src.fail_open(Fault::Changed);
    src.fail_at(2 * MIB, Fault::Io);
    let p = pool(Duration::from_secs(5));
    let h = open(&p, &src, data.len() as u64, "changed");
    let mut off = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    let err = loop {
        match h.read_into(off, &mut buf) {
            Ok(0) => panic!("read to the end although the content changed"),
            Ok(n) => {
                assert!(buf[..n] == data[off as usize..off as usize + n]);
                off += n as u64;
            }
            Err(e) => break e,
        }
    };
    assert!(matches!(err.kind, HandleErrorKind::Changed), "{err}");
    assert_eq!(err.class(), ErrorClass::Gone);
    assert!(
        off <= 2 * MIB,
        "served bytes past the lost connection: {off}"
    );
}

#[test]
fn a_server_away_past_the_reconnect_timeout_fails_with_lost() {
    let data = content(4 * MIB);
    let src = FakeSource::new(data.clone());
    // The first set-up works; every one after the lost connection fails.
    src.open_ok();
    for _ in 0..1000 {
        src.fail_open(Fault::Sql(SqlState::CANNOT_CONNECT_NOW));
    }
    src.fail_at(2 * MIB, Fault::Io);
    let p = pool(Duration::from_millis(300));
    let h = open(&p, &src, data.len() as u64, "away");
    let err = fails(read_all(&h, 0, 64 << 10), "the server stays away");
    match &err.kind {
        HandleErrorKind::Lost { cause, .. } => assert!(
            matches!(&cause.kind, HandleErrorKind::Server { code, .. } if *code == SqlState::CANNOT_CONNECT_NOW),
            "{err}"
        ),
        other => panic!("expected Lost, got {other:?}"),
    }
    assert_eq!(err.class(), ErrorClass::Unavailable);
    assert!(
        src.calls.opens.load(Ordering::Relaxed) >= 3,
        "it kept trying"
    );
}

#[test]
fn a_server_back_within_the_timeout_is_a_pause() {
    let data = content(5 * MIB);
    let src = FakeSource::new(data.clone());
    src.open_ok();
    src.fail_open(Fault::Sql(SqlState::CANNOT_CONNECT_NOW));
    src.fail_open(Fault::Unreachable);
    src.fail_at(MIB + 77, Fault::Sql(SqlState::ADMIN_SHUTDOWN));
    let p = pool(Duration::from_secs(10));
    let h = open(&p, &src, data.len() as u64, "back");
    assert!(read_all(&h, 0, 128 << 10).expect("resumed") == data);
    assert_eq!(src.calls.opens.load(Ordering::Relaxed), 4);
}

#[test]
fn a_first_read_while_the_server_is_unreachable_fails_at_once() {
    let data = content(MIB);
    let src = FakeSource::new(data);
    src.fail_always(Fault::Unreachable);
    let p = pool(Duration::from_secs(30));
    let h = open(&p, &src, MIB, "unreachable");
    let err = h.read_into(0, &mut [0u8; 10]).expect_err("no server");
    assert!(matches!(err.kind, HandleErrorKind::Connect(_)), "{err}");
    assert_eq!(src.calls.opens.load(Ordering::Relaxed), 1, "no retries");
}

#[test]
fn content_shorter_than_the_catalog_says_is_gone() {
    let data = content(3 * MIB);
    let src = FakeSource::new(data.clone());
    let p = pool(Duration::from_secs(5));
    let h = open(&p, &src, data.len() as u64 + 1000, "short");
    let err = fails(read_all(&h, 0, 128 << 10), "short");
    assert!(
        matches!(err.kind, HandleErrorKind::Truncated { .. }),
        "{err}"
    );
    assert_eq!(err.class(), ErrorClass::Gone);

    // Short data in the middle of a chunk read, too.
    let src = FakeSource::new(data.clone());
    src.fail_at(2 * MIB + 10, Fault::Short);
    let h = open(&p, &src, data.len() as u64, "short-mid");
    let err = fails(read_all(&h, 0, 128 << 10), "short mid-way");
    assert_eq!(err.class(), ErrorClass::Gone, "{err}");
}

#[test]
fn a_stall_delays_but_does_not_change_the_bytes() {
    let data = content(3 * MIB);
    let src = FakeSource::new(data.clone());
    src.fail_at(MIB + 1, Fault::Stall(Duration::from_millis(50)));
    let p = pool(Duration::from_secs(5));
    let h = open(&p, &src, data.len() as u64, "stall");
    assert!(read_all(&h, 0, 128 << 10).expect("read") == data);
    assert_eq!(src.calls.opens.load(Ordering::Relaxed), 1);
}

#[test]
fn an_idle_handle_gives_back_its_session_and_sets_up_again() {
    let data = content(40 * MIB);
    let src = FakeSource::new(data.clone());
    let p = pool(Duration::from_secs(5));
    let h = open(&p, &src, data.len() as u64, "idle");
    let at = 30 * MIB;
    let mut buf = vec![0u8; 4096];
    h.read_into(at, &mut buf).expect("first read");
    assert!(h.holds_connection());
    h.shared.release_if_idle(Duration::ZERO);
    assert!(!h.holds_connection(), "idle release kept the session");
    assert_eq!(src.calls.ends.load(Ordering::Relaxed), 1);
    let next = at + 5 * CHUNK;
    h.read_into(next, &mut buf).expect("read after release");
    assert!(buf[..] == data[next as usize..next as usize + 4096]);
    assert_eq!(src.calls.opens.load(Ordering::Relaxed), 2);
    h.close();
    assert_eq!(src.calls.ends.load(Ordering::Relaxed), 2, "close ends it");
}

#[test]
fn the_verdict_table() {
    let v = |c: &SqlState| verdict(Some(c), false);
    for c in [
        SqlState::CONNECTION_FAILURE,
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::IDLE_SESSION_TIMEOUT,
        SqlState::T_R_SERIALIZATION_FAILURE,
    ] {
        assert_eq!(v(&c).class, ErrorClass::Unavailable, "{c:?}");
        assert!(v(&c).resumable, "{c:?}");
    }
    for c in [SqlState::QUERY_CANCELED, SqlState::DATABASE_DROPPED] {
        assert_eq!(v(&c).class, ErrorClass::Unavailable, "{c:?}");
        assert!(!v(&c).resumable, "{c:?}");
    }
    assert_eq!(v(&SqlState::UNDEFINED_OBJECT).class, ErrorClass::Gone);
    assert_eq!(
        v(&SqlState::INSUFFICIENT_PRIVILEGE).class,
        ErrorClass::Broken
    );
    assert!(!v(&SqlState::INSUFFICIENT_PRIVILEGE).resumable);
    assert!(verdict(None, true).resumable);
    assert_eq!(verdict(None, false).class, ErrorClass::Broken);
}

/// Reads `h` at `from..to` in steps of `step`, as a reader between two seeks does.
fn read_range(h: &Handle, from: u64, to: u64, step: usize) -> Result<Vec<u8>, super::HandleError> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; step];
    let mut off = from;
    while off < to {
        let want = step.min((to - off) as usize);
        let n = h.read_into(off, &mut buf[..want])?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        off += n as u64;
    }
    Ok(out)
}

/// Reads, windows and set-ups the source has seen.
fn source_calls(src: &FakeSource) -> u32 {
    let c = &src.calls;
    c.reads.load(Ordering::Relaxed) + c.windows.load(Ordering::Relaxed)
}

#[test]
fn a_reader_served_from_memory_keeps_its_snapshot_when_the_image_is_replaced() {
    let data = content(16 * MIB);
    let len = data.len() as u64;
    let src = FakeSource::new(data.clone());
    // A small cache: the stream runs only a few MiB ahead, so the rest of the
    // file must come from the source after the replacement.
    let p = pool_with(Duration::from_secs(5), 4 * MIB);
    let a = open(&p, &src, len, "replaced");
    let b = open(&p, &src, len, "replaced");
    assert!(read_range(&a, 0, MIB, 128 << 10).expect("a") == data[..MIB as usize]);
    assert!(read_range(&b, 0, MIB, 128 << 10).expect("b from memory") == data[..MIB as usize]);
    assert_eq!(
        src.calls.opens.load(Ordering::Relaxed),
        1,
        "b set nothing up"
    );
    assert_eq!(p.pins.held(), 1, "one snapshot for both readers");

    src.replace();
    a.close();
    let before = source_calls(&src);
    let rest = read_range(&b, MIB, len, 128 << 10).expect("the rest, old bytes");
    assert!(
        rest == data[MIB as usize..],
        "other bytes after the replacement"
    );
    assert!(
        source_calls(&src) > before,
        "the rest came from memory only"
    );
    assert_eq!(
        src.calls.opens.load(Ordering::Relaxed),
        1,
        "the pin's session served b"
    );
    b.close();
    assert_eq!(
        src.calls.ends.load(Ordering::Relaxed),
        1,
        "the last reader ended the pin's session"
    );
    assert_eq!(p.pins.held(), 0);
}

#[test]
fn a_second_reader_imports_the_snapshot_while_the_first_streams() {
    let data = content(40 * MIB);
    let len = data.len() as u64;
    let src = FakeSource::new(data.clone());
    let p = pool_with(Duration::from_secs(5), 4 * MIB);
    let a = open(&p, &src, len, "joined");
    let b = open(&p, &src, len, "joined");
    read_range(&a, 0, MIB, 128 << 10).expect("a");
    read_range(&b, 0, 128 << 10, 128 << 10).expect("b from memory");
    src.replace();
    // Far from its last read (no stream to follow): one chunk fetched, while
    // a's stream holds the pin's session.
    let at = 30 * MIB;
    let got = read_range(&b, at, at + 4096, 4096).expect("b far ahead");
    assert!(got == data[at as usize..at as usize + 4096]);
    assert_eq!(src.calls.joins.load(Ordering::Relaxed), 1, "b imported");
    assert_eq!(src.calls.opens.load(Ordering::Relaxed), 1);
    assert!(read_all(&a, MIB, 128 << 10).expect("a to the end") == data[MIB as usize..]);
}

#[test]
fn a_reader_that_starts_after_the_replacement_fails_at_its_first_byte() {
    let data = content(4 * MIB);
    let len = data.len() as u64;
    let src = FakeSource::new(data.clone());
    let p = pool(Duration::from_secs(5));
    // Two readers of the whole file leave it in memory.
    let a = open(&p, &src, len, "late");
    let b = open(&p, &src, len, "late");
    read_all(&a, 0, 128 << 10).expect("a");
    read_all(&b, 0, 128 << 10).expect("b");
    drop((a, b));
    src.replace();
    let c = open(&p, &src, len, "late");
    let err = c
        .read_into(0, &mut [0u8; 4096])
        .expect_err("content replaced");
    assert!(matches!(err.kind, HandleErrorKind::Changed), "{err}");
}

#[test]
fn a_pin_whose_session_was_lost_sets_up_again_with_the_content_check() {
    let data = content(16 * MIB);
    let len = data.len() as u64;
    let src = FakeSource::new(data.clone());
    src.fail_at(3 * MIB, Fault::Io);
    let p = pool_with(Duration::from_secs(5), 4 * MIB);
    let a = open(&p, &src, len, "lost-pin");
    // The stream loses the pin's session at 3 MiB and goes on in a new one.
    assert!(read_all(&a, 0, 128 << 10).expect("a resumed") == data);
    let b = open(&p, &src, len, "lost-pin");
    src.replace();
    // b's first byte needs a snapshot: the pin's died, and the content changed.
    let err = b
        .read_into(0, &mut [0u8; 4096])
        .expect_err("no snapshot left");
    assert!(matches!(err.kind, HandleErrorKind::Changed), "{err}");
}

#[test]
fn bytes_in_memory_are_served_to_a_new_reader_while_the_server_is_unreachable() {
    let data = content(4 * MIB);
    let len = data.len() as u64;
    let src = FakeSource::new(data.clone());
    let p = pool(Duration::from_secs(5));
    // Two readers side by side: every chunk is had by both, so it stays.
    let a = open(&p, &src, len, "down");
    let b = open(&p, &src, len, "down");
    let mut buf = vec![0u8; 128 << 10];
    let mut off = 0;
    while off < len {
        let n = a.read_into(off, &mut buf).expect("a");
        b.read_into(off, &mut buf).expect("b");
        off += n as u64;
    }
    drop((a, b));
    src.fail_always(Fault::Unreachable);
    let c = open(&p, &src, len, "down");
    assert!(read_all(&c, 0, 128 << 10).expect("from memory") == data);
    assert!(!c.holds_connection());
}

/// Issue 21, on real handles and their read-ahead threads: a reader that read
/// its first MiB and paused (a slow consumer: a socket not drained, a process
/// writing to disk) while another read the whole image finds the rest in
/// memory, and the source is asked for every chunk once.
#[test]
fn a_slow_reader_behind_a_fast_one_costs_the_source_nothing_more() {
    let size = 24 * MIB + 5;
    let data = content(size);
    let src = FakeSource::new(data.clone());
    let p = pool_with(Duration::from_secs(5), 64 * MIB);
    let slow = open(&p, &src, size, "slow-and-fast");
    let fast = open(&p, &src, size, "slow-and-fast");
    let first = read_range(&slow, 0, MIB, 128 << 10).expect("the slow reader's first MiB");
    assert!(first[..] == data[..MIB as usize]);
    assert!(read_all(&fast, 0, 128 << 10).expect("the fast reader") == data);
    let rest = read_all(&slow, MIB, 128 << 10).expect("the slow reader's rest");
    assert!(rest[..] == data[MIB as usize..]);
    for idx in 0..size.div_ceil(CHUNK) {
        assert_eq!(src.calls.chunk_reads(idx), 1, "chunk {idx}");
    }
}
