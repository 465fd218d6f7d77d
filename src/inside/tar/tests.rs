//! Tarballs of every compression, their seek points, and damage.

use super::*;
use crate::inside::MemBytes;
use crate::inside::testing::{self, noise, walk};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

/// Every byte of entry `id` (see [`testing::read_all`]).
fn read_all(a: &dyn Archive, id: u64) -> Vec<u8> {
    testing::read_all(a, id, 100_000)
}

fn tar(dir: &Path, out: &Path, compress: &str) {
    let st = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .args(["--format=pax", "-I", compress, "-cf"])
        .arg(out)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success(), "tar -I {compress}");
}

#[test]
fn every_compression_reads_back_with_seek_points() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tree");
    std::fs::create_dir_all(dir.join("usr/lib")).unwrap();
    // 10 MiB between two small files: several gzip seek points between them.
    let files = [
        ("a", noise(1, 100)),
        ("usr/lib/big", noise(2, 10 << 20)),
        ("usr/lib/z", noise(3, 70_000)),
    ];
    for (name, data) in &files {
        std::fs::write(dir.join(name), data).unwrap();
    }
    symlink("usr/lib", dir.join("lib")).unwrap();
    std::fs::hard_link(dir.join("a"), dir.join("usr/a2")).unwrap();
    for (compress, c) in [
        ("gzip", Compression::Gzip),
        ("bzip2", Compression::Bzip2),
        ("xz -1", Compression::Xz),
        // Several blocks: a seek point per block.
        ("xz -1 --block-size=1MiB -T2", Compression::Xz),
    ] {
        let out = tmp.path().join("t.tar");
        tar(&dir, &out, compress);
        let a = Tar::open(
            Arc::new(MemBytes {
                name: "/t".into(),
                data: std::fs::read(&out).unwrap(),
            }),
            c,
        )
        .unwrap();
        match compress {
            "gzip" => assert!(a.points() >= 3, "{}", a.points()),
            // 900k blocks: a point at the first block past each 4 MiB.
            "bzip2" => assert!(a.points() >= 3, "{}", a.points()),
            "xz -1 --block-size=1MiB -T2" => assert!(a.points() >= 10),
            _ => {}
        }
        let names: Vec<_> = a.list(0).unwrap().iter().map(|d| d.name.clone()).collect();
        assert_eq!(names, ["a", "lib", "usr"], "{compress}");
        for (name, data) in &files {
            assert_eq!(&read_all(&a, walk(&a, name)), data, "{compress} {name}");
        }
        // Backwards and random reads, each from the nearest seek point.
        let big = walk(&a, "usr/lib/big");
        for at in [9 << 20, 5 << 20, 123_457, 8 << 20] {
            let mut buf = vec![0; 70_000];
            assert_eq!(a.read(big, at, &mut buf).unwrap(), 70_000);
            assert_eq!(
                buf,
                files[1].1[at as usize..at as usize + 70_000],
                "{compress} {at}"
            );
        }
        assert_eq!(
            a.entry(walk(&a, "lib")).unwrap().kind,
            EntryKind::Symlink(b"usr/lib".to_vec())
        );
        assert_eq!(walk(&a, "usr/a2"), walk(&a, "a"));
        assert_eq!(a.entry(walk(&a, "a")).unwrap().nlink, 2);
        // Truncated: an error naming the image, not a panic.
        let data = std::fs::read(&out).unwrap();
        let cut = Tar::open(
            Arc::new(MemBytes {
                name: "/cut".into(),
                data: data[..data.len() / 3].to_vec(),
            }),
            c,
        );
        let e = cut.err().expect("a cut tarball fails");
        assert!(e.to_string().contains("/cut"), "{e}");
    }
}
