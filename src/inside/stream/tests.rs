//! Streams of each codec, alone or followed by other bytes, read back at any
//! offset from their seek points; points through an index file; damage.

use super::*;
use crate::inside::MemBytes;
use crate::inside::index::Persist;
use std::io::Write;
use std::process::{Command, Stdio};

/// Compressible but not trivial: words from a small alphabet.
fn text(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b"abcdefgh \n"[(x % 10) as usize]
        })
        .collect()
}

/// `data` through `cmd` (a compressor reading stdin).
pub(crate) fn compress(cmd: &str, data: &[u8]) -> Vec<u8> {
    let mut parts = cmd.split_whitespace();
    let mut child = Command::new(parts.next().unwrap())
        .args(parts)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "{cmd}");
    out.stdout
}

fn mem(data: Vec<u8>) -> Arc<dyn Bytes> {
    Arc::new(MemBytes {
        name: "/img".into(),
        data,
    })
}

/// Indexes the stream at `start` and checks reads at several offsets.
fn check(image: &[u8], start: u64, codec: Codec, multi: bool, want: &[u8]) -> Stream {
    let mut s = Stream::new(mem(image.to_vec()), start, codec, multi);
    let mut ix = s.indexer().unwrap();
    let mut all = Vec::new();
    ix.read_to_end(&mut all).unwrap();
    assert_eq!(all.len(), want.len(), "{codec:?}");
    assert!(all == want, "{codec:?}: index pass output differs");
    s.finish_index(ix);
    for at in [want.len() - 70_000, 5 << 20, 123_457, 9 << 20, 0] {
        let mut buf = vec![0; 70_000];
        assert_eq!(s.read_at(at as u64, &mut buf).unwrap(), 70_000);
        assert!(buf == want[at..at + 70_000], "{codec:?} at {at}");
    }
    s
}

#[test]
fn each_codec_reads_back_at_any_offset_and_finds_its_end() {
    let want = text(1, 12 << 20);
    for (cmd, codec, min_points) in [
        ("gzip -1", Codec::Gzip, 3),
        ("xz -0 -T2 --block-size=2MiB", Codec::Xz, 6),
        ("xz -0", Codec::Xz, 1),
        ("zstd -q -1", Codec::Zstd, 1),
        ("lz4 -q -l", Codec::Lz4Legacy, 2),
        ("bzip2 -1", Codec::Bzip2, 3),
    ] {
        let z = compress(cmd, &want);
        // Alone, to the image's end.
        let s = check(&z, 0, codec, codec != Codec::Lz4Legacy, &want);
        assert!(
            s.points().len() >= min_points,
            "{cmd}: {}",
            s.points().len()
        );
        // One stream after 512 bytes and followed by zero padding and other
        // bytes (an initrd segment): same reads, and its end found.
        let mut image = vec![7u8; 512];
        image.extend_from_slice(&z);
        image.extend_from_slice(&[0; 100]);
        image.extend_from_slice(b"070701 and more");
        let s = check(&image, 512, codec, false, &want);
        assert_eq!(s.end(), Some(512 + z.len() as u64), "{cmd}");
    }
}

#[test]
fn gzip_points_survive_an_index_file_and_damage_is_an_error() {
    let want = text(2, 10 << 20);
    let z = compress("gzip -6", &want);
    let s = check(&z, 0, Codec::Gzip, true, &want);
    let ix = crate::inside::index::Index {
        nodes: vec![crate::inside::index::Node::implicit_dir(0)],
        streams: vec![crate::inside::index::StreamIndex {
            codec: Codec::Gzip,
            start: 0,
            end: s.end(),
            out: None,
            points: s.points().to_vec(),
        }],
    };
    let file = ix.encode("tar");
    let back = crate::inside::index::Index::decode(&file, "tar").unwrap();
    assert_eq!(back, ix);
    // Another format, or any flipped byte: refused, never a panic.
    assert!(crate::inside::index::Index::decode(&file, "cpio").is_err());
    for i in (0..file.len()).step_by(997) {
        let mut bad = file.clone();
        bad[i] ^= 0x10;
        assert!(crate::inside::index::Index::decode(&bad, "tar").is_err());
        assert!(crate::inside::index::Index::decode(&file[..i], "tar").is_err());
    }
    // A stream from the file's points reads without an index pass.
    let sp = back.streams.into_iter().next().unwrap();
    let s2 = Stream::new(mem(z.clone()), 0, Codec::Gzip, true)
        .with_points(sp.points, sp.end)
        .unwrap();
    let mut buf = vec![0; 100_000];
    assert_eq!(s2.read_at(9 << 20, &mut buf).unwrap(), 100_000);
    assert!(buf == want[9 << 20..(9 << 20) + 100_000]);

    // Truncated or damaged streams: an error naming the image, no panic, no hang.
    for cmd in ["gzip", "xz -0", "zstd -q", "lz4 -q -l", "bzip2"] {
        let z = compress(cmd, &want[..3 << 20]);
        let codec = Codec::sniff(&z).unwrap();
        for damage in 0..3 {
            let mut bad = z.clone();
            match damage {
                0 => bad.truncate(z.len() / 2),
                1 => {
                    let mid = bad.len() / 2;
                    for b in &mut bad[mid..mid + 64] {
                        *b ^= 0x5a;
                    }
                }
                _ => bad.truncate(3),
            }
            let s = Stream::new(mem(bad), 0, codec, false);
            let r = s.indexer().and_then(|mut ix| {
                let mut sink = Vec::new();
                ix.read_to_end(&mut sink).map_err(|e| s.io_error(e))?;
                Ok(sink.len())
            });
            match r {
                // Legacy lz4 has no checksum: flipped bytes inside a block may
                // decode to other bytes of the same length.
                Ok(_) if codec == Codec::Lz4Legacy && damage == 1 => {}
                // A cut lz4 stream ends at its last whole block.
                Ok(n) if codec == Codec::Lz4Legacy => assert!(n < 3 << 20, "{cmd}"),
                Ok(n) => panic!("{cmd} damage {damage}: read {n} bytes without an error"),
                Err(e) => assert!(e.to_string().contains("/img"), "{e}"),
            }
        }
    }
}

#[test]
fn whole_compressed_images_read_at_random_with_and_without_a_cache_dir() {
    use crate::inside::index::IndexDir;
    use crate::inside::testing::Counting;
    let want = text(5, 20 << 20);
    let tmp = tempfile::tempdir().unwrap();
    let dir = IndexDir::new(tmp.path());
    let check = |b: &dyn Bytes, what: &str| {
        assert_eq!(b.size(), want.len() as u64, "{what}");
        for at in [(19 << 20) + 5, 3, 10 << 20, want.len() - 100] {
            let got = b.read_vec(at as u64, 100).unwrap();
            assert!(got == want[at..at + 100], "{what} at {at}");
        }
        assert!(
            b.read_vec(want.len() as u64 - 10, 11).is_err(),
            "{what}: past the end"
        );
    };
    // Multi-block xz: by its blocks, nothing decompressed up front.
    let z = compress("xz -0 -T2 --block-size=1MiB", &want);
    let img = Counting::new("/dd.xz", z.clone());
    let b = random_access(img.clone(), Codec::Xz, None).unwrap();
    assert!(img.read() < 4096, "opening read {}", img.read());
    check(&*b, "xz blocks");
    // gzip, bzip2: one pass, then the index file; the second open reads nothing.
    for (cmd, codec) in [("gzip -1", Codec::Gzip), ("bzip2 -1", Codec::Bzip2)] {
        let z = compress(cmd, &want);
        let sha = format!("{:064x}", 16 + codec.id());
        for round in 0..2 {
            let img = Counting::new("/dd.gz", z.clone());
            let persist = Persist {
                dir: &dir,
                sha256: &sha,
            };
            let b = random_access(img.clone(), codec, Some(persist)).unwrap();
            if round == 1 {
                assert_eq!(img.read(), 0, "{cmd}: the index file was not used");
            }
            check(&*b, cmd);
        }
    }
    // Single-block xz and zstd: into memory up to the bound, else refused
    // without --cache-dir; with it, decompressed once into a file.
    for (cmd, codec) in [("xz -0", Codec::Xz), ("zstd -q", Codec::Zstd)] {
        let z = compress(cmd, &want);
        let b = random_access(
            Arc::new(MemBytes {
                name: "/dd".into(),
                data: z.clone(),
            }),
            codec,
            None,
        )
        .unwrap();
        check(&*b, cmd);
        let sha = format!("{:064x}", codec.id());
        for round in 0..2 {
            let img = Counting::new("/dd", z.clone());
            let persist = Persist {
                dir: &dir,
                sha256: &sha,
            };
            let b = random_access(img.clone(), codec, Some(persist)).unwrap();
            if round == 1 {
                // xz: only its index is looked at, to see it has one block.
                assert!(img.read() < 4096, "{cmd}: the copy was not used");
            }
            check(&*b, cmd);
        }
        assert!(tmp.path().join(format!("inside/{sha}.raw")).is_file());
    }
    let zeros = compress("xz -0", &vec![0; (MAX_IN_MEMORY + 1) as usize]);
    let e = random_access(mem(zeros), Codec::Xz, None).err().unwrap();
    assert!(e.to_string().contains("--cache-dir"), "{e}");
    assert!(
        matches!(e.reason, crate::inside::Reason::Unsupported(_)),
        "{e}"
    );
    // Damaged: an error, and no copy left behind.
    let mut bad = compress("bzip2 -1", &want);
    bad.truncate(bad.len() / 2);
    let sha = "ef".repeat(32);
    let persist = Persist {
        dir: &dir,
        sha256: &sha,
    };
    let e = random_access(mem(bad), Codec::Bzip2, Some(persist))
        .err()
        .unwrap();
    assert!(matches!(e.reason, crate::inside::Reason::Corrupt(_)), "{e}");
    assert!(!tmp.path().join(format!("inside/{sha}.raw")).exists());
}

#[test]
fn bzip2_points_start_at_blocks_and_cross_into_the_next_stream() {
    // Two streams (as pbzip2 or `cat a.bz2 b.bz2` make), 100k blocks.
    let a = text(7, 9 << 20);
    let b = text(8, 7 << 20);
    let mut z = compress("bzip2 -1", &a);
    z.extend_from_slice(&compress("bzip2 -1", &b));
    let want = [a, b].concat();
    let s = check(&z, 0, Codec::Bzip2, true, &want);
    assert!(s.points().len() >= 4, "{}", s.points().len());
    assert!(
        s.points()
            .iter()
            .all(|(_, p)| matches!(p, Point::Start | Point::Bzip2Block { .. }))
    );
    // Across the streams' boundary, from a point in the first.
    let mut buf = vec![0; 300_000];
    let at = (9 << 20) - 150_000;
    assert_eq!(s.read_at(at as u64, &mut buf).unwrap(), 300_000);
    assert!(buf == want[at..at + 300_000]);
    // Through an index file.
    let ix = crate::inside::index::Index {
        nodes: vec![crate::inside::index::Node::implicit_dir(0)],
        streams: vec![crate::inside::index::StreamIndex {
            codec: Codec::Bzip2,
            start: 0,
            end: s.end(),
            out: None,
            points: s.points().to_vec(),
        }],
    };
    let back = crate::inside::index::Index::decode(&ix.encode("tar"), "tar").unwrap();
    assert_eq!(back, ix);
    // A damaged block behind a point: an error, not other bytes.
    let (at, Point::Bzip2Block { bit, .. }) = s.points()[2].clone() else {
        panic!("not a block point");
    };
    let mut bad = z.clone();
    bad[(bit / 8) as usize + 5000] ^= 0x20;
    let s2 = Stream::new(mem(bad), 0, Codec::Bzip2, true)
        .with_points(s.points().to_vec(), s.end())
        .unwrap();
    let mut buf = vec![0; 200_000];
    let r = (0..20).try_for_each(|i| s2.read_at(at + i * 200_000, &mut buf).map(|_| ()));
    assert!(r.is_err(), "a damaged block read without an error");
}
