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
    let db = DbConfig::resolve_with(Some("host=/nonexistent dbname=none user=none"), |_| None)
        .expect("a conninfo that parses");
    HandlePool::new(
        &db,
        &PoolOptions {
            reconnect_timeout: reconnect,
            cache_memory: 64 * MIB,
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
