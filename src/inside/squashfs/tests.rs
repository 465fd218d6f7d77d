//! The squashfs reader against images made by mksquashfs, and against damage.

use super::*;
use crate::inside::MemBytes;
use crate::inside::testing::{self, walk};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

/// A small tree with every kind of entry a user can make without root.
fn make_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    std::fs::create_dir_all(dir.join("etc/deep/er")).unwrap();
    let mut add = |name: &str, data: Vec<u8>| {
        std::fs::write(dir.join(name), &data).unwrap();
        files.push((name.to_string(), data));
    };
    add("hello", b"hello\n".to_vec());
    add("empty", Vec::new());
    // Several full blocks (128 KiB) and a tail in a fragment, not compressible.
    let mut x: u64 = 7;
    let big: Vec<u8> = (0..300_000)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect();
    add("etc/big", big);
    add("etc/deep/er/zeros", vec![0; 200_000]);
    add("etc/suid", b"#!/bin/sh\n".to_vec());
    std::fs::set_permissions(
        dir.join("etc/suid"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    symlink("../hello", dir.join("etc/link")).unwrap();
    std::fs::hard_link(dir.join("hello"), dir.join("etc/hard")).unwrap();
    files
}

fn squash(dir: &Path, comp: &str) -> Vec<u8> {
    let out = dir.with_extension(format!("{comp}.sqfs"));
    let st = Command::new("mksquashfs")
        .arg(dir)
        .arg(&out)
        .args(["-comp", comp, "-noappend", "-quiet", "-no-progress"])
        .status()
        .expect("mksquashfs (squashfs-tools) runs");
    assert!(st.success());
    std::fs::read(out).unwrap()
}

/// Every byte of entry `id` (see [`testing::read_all`]).
fn read_all(a: &dyn Archive, id: u64) -> Vec<u8> {
    testing::read_all(a, id, 50_000)
}

fn have_mksquashfs() -> bool {
    let ok = Command::new("mksquashfs").arg("-version").output().is_ok();
    assert!(
        ok || std::env::var("CI").as_deref() != Ok("true"),
        "mksquashfs missing under CI"
    );
    ok
}

#[test]
fn every_codec_reads_back_what_was_squashed() {
    if !have_mksquashfs() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tree");
    let files = make_tree(&dir);
    for comp in ["xz", "gzip", "zstd", "lz4"] {
        let image = squash(&dir, comp);
        let a = Squashfs::open(Arc::new(MemBytes {
            name: format!("/t/{comp}"),
            data: image,
        }))
        .unwrap();
        assert_eq!(a.codec().name(), comp);
        let names: Vec<_> = a
            .list(a.root())
            .unwrap()
            .iter()
            .map(|d| d.name.clone())
            .collect();
        assert_eq!(names, ["empty", "etc", "hello"], "{comp}");
        for (name, data) in &files {
            let id = walk(&a, name);
            let e = a.entry(id).unwrap();
            assert_eq!(
                (e.kind.clone(), e.size),
                (EntryKind::File, data.len() as u64)
            );
            assert_eq!(&read_all(&a, id), data, "{comp} {name}");
            // A read in the middle, across a block boundary.
            if data.len() > 140_000 {
                let mut buf = vec![0; 20_000];
                assert_eq!(a.read(id, 125_000, &mut buf).unwrap(), 20_000);
                assert_eq!(buf, data[125_000..145_000]);
            }
        }
        let link = a.entry(walk(&a, "etc/link")).unwrap();
        assert_eq!(link.kind, EntryKind::Symlink(b"../hello".to_vec()));
        assert_eq!(a.entry(walk(&a, "etc/suid")).unwrap().mode, 0o4755);
        // Hard links are one inode.
        assert_eq!(walk(&a, "etc/hard"), walk(&a, "hello"));
        assert_eq!(a.entry(walk(&a, "hello")).unwrap().nlink, 2);
        // SAFETY: geteuid cannot fail and touches no memory of ours.
        let me = unsafe { libc::geteuid() };
        assert_eq!(a.entry(walk(&a, "hello")).unwrap().uid, me);
    }
}

#[test]
fn corrupt_and_truncated_images_fail_without_panicking() {
    if !have_mksquashfs() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tree");
    make_tree(&dir);
    let image = squash(&dir, "xz");
    let open = |data: Vec<u8>| {
        Squashfs::open(Arc::new(MemBytes {
            name: "/u/a/g/s/1/squashfs".into(),
            data,
        }))
    };
    let e = open(image[..image.len() / 2].to_vec())
        .err()
        .expect("truncated");
    assert!(e.to_string().contains("/u/a/g/s/1/squashfs"), "{e}");
    assert!(e.to_string().contains("corrupt or truncated"), "{e}");
    assert!(open(vec![0; 4096]).is_err());
    // Flip bytes everywhere after the superblock: every walk ends in data or
    // an error, never a panic.
    for at in (96..image.len()).step_by(37) {
        let mut bad = image.clone();
        bad[at] ^= 0x5a;
        let Ok(a) = open(bad) else { continue };
        let mut stack = vec![a.root()];
        let mut seen = 0;
        while let Some(d) = stack.pop() {
            let Ok(list) = a.list(d) else { continue };
            for ent in list.iter() {
                seen += 1;
                if seen > 1000 {
                    break;
                }
                if ent.dir {
                    stack.push(ent.id);
                } else if a.entry(ent.id).is_ok() {
                    let mut buf = vec![0; 4096];
                    let _ = a.read(ent.id, 0, &mut buf);
                }
            }
        }
    }
}

/// `n` bytes that xz compresses somewhat but not to nothing.
fn text(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|i| {
            if i % 7 == 0 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
            }
            b'a' + (x >> 59) as u8
        })
        .collect()
}

#[test]
fn sequential_readers_get_blocks_decompressed_ahead_and_random_ones_none() {
    if !have_mksquashfs() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tree");
    std::fs::create_dir_all(dir.join("small")).unwrap();
    // 64 blocks of 128 KiB, and 200 small files packed into about 30 fragments.
    let big = text(1, 64 << 17);
    std::fs::write(dir.join("big"), &big).unwrap();
    let small: Vec<_> = (0..200).map(|i| text(100 + i, 20_000)).collect();
    for (i, data) in small.iter().enumerate() {
        std::fs::write(dir.join(format!("small/{i:03}")), data).unwrap();
    }
    let image = squash(&dir, "xz");
    let open = || {
        Squashfs::open(Arc::new(MemBytes {
            name: "/u/a/g/s/1/squashfs".into(),
            data: image.clone(),
        }))
        .unwrap()
    };

    // A random reader: single-block reads here and there, nothing ahead, no thread.
    let a = open();
    let id = walk(&a, "big");
    let mut buf = vec![0; 4096];
    for at in [50, 3, 17, 40, 41, 42, 9, 60] {
        let off = at * (1 << 17) + 1000;
        assert_eq!(a.read(id, off, &mut buf).unwrap(), 4096);
        assert_eq!(buf, big[off as usize..off as usize + 4096]);
    }
    let s = a.ahead_stats();
    assert_eq!((s.decompressed, s.threads), (0, 0), "{s:?}");

    // A sequential reader: the pool decompresses ahead of it, on a bounded
    // number of threads, and what it took is what was stored.
    let a = open();
    let id = walk(&a, "big");
    assert_eq!(testing::read_all(&a, id, 1 << 16), big);
    let s = a.ahead_stats();
    assert!(s.taken > 0 && s.decompressed >= s.taken, "{s:?}");
    assert!((1..=ahead::MAX_THREADS).contains(&s.threads), "{s:?}");
    // Dropping the image stops and joins every thread.
    let live = a.ahead.live();
    drop(a);
    assert_eq!(live.load(std::sync::atomic::Ordering::SeqCst), 0);

    // A walk reading small files in order gets the next fragments ahead.
    let a = open();
    let list = a.list(walk(&a, "small")).unwrap();
    for (d, data) in list.iter().zip(&small) {
        assert_eq!(&read_all(&a, d.id), data, "{}", d.name);
    }
    let s = a.ahead_stats();
    assert!(s.taken > 0, "{s:?}");
}
