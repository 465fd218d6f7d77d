//! Initrds as the kernel reads them: an uncompressed first archive, zero
//! padding, compressed archives of each codec; merging, hard links, damage.

use super::*;
use crate::inside::MemBytes;
use crate::inside::index::IndexDir;
use crate::inside::stream::tests::compress;
use crate::inside::testing::{self, Counting, noise, walk};

/// One newc entry: name, mode (with type), inode, nlink, data.
struct E<'a>(&'a str, u32, u32, u32, &'a [u8]);

/// A newc archive of `entries` and its trailer, padded to 512 bytes as cpio
/// pads its output.
fn newc(entries: &[E]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut put = |name: &str, mode: u32, ino: u32, nlink: u32, data: &[u8]| {
        let namesize = name.len() + 1;
        out.extend_from_slice(
            format!(
                "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
                1000, 1000, 1_700_000_000u32, data.len(), 8, 1, 0, 0, 0
            )
            .as_bytes(),
        );
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    };
    for E(name, mode, ino, nlink, data) in entries {
        put(name, *mode, *ino, *nlink, data);
    }
    put("TRAILER!!!", 0, 0, 1, b"");
    while out.len() % 512 != 0 {
        out.push(0);
    }
    out
}

fn mem(name: &str, data: Vec<u8>) -> Arc<dyn Bytes> {
    Arc::new(MemBytes {
        name: name.into(),
        data,
    })
}

const DIR: u32 = 0o040755;
const REG: u32 = 0o100644;
const LNK: u32 = 0o120777;

#[test]
fn every_codec_after_an_early_archive_merges_into_one_tree() {
    let amd = noise(1, 30_000);
    let early = newc(&[
        E("kernel", DIR, 1, 2, b""),
        E("kernel/x86", DIR, 2, 2, b""),
        E("kernel/x86/microcode", DIR, 3, 2, b""),
        E("kernel/x86/microcode/AuthenticAMD.bin", REG, 4, 1, &amd),
        E("etc", DIR, 5, 2, b""),
        E("etc/hostname", REG, 6, 1, b"early\n"),
        // Replaced by a hard link of the main archive.
        E("etc/b", REG, 7, 1, b"old\n"),
    ]);
    let big = noise(2, 10 << 20);
    let main = newc(&[
        E(".", DIR, 10, 3, b""),
        E("./etc", DIR, 11, 2, b""),
        // Replaces the early archive's file.
        E("./etc/hostname", REG, 12, 1, b"maas-node\n"),
        // A hard link as GNU cpio writes it: data with the last name.
        E("./etc/a", REG, 13, 2, b""),
        E("./etc/b", REG, 13, 2, b"linked\n"),
        E("./bin", LNK, 14, 1, b"usr/bin"),
        E("./usr/lib/big", REG, 15, 1, &big),
        E("./dev/console", 0o020600, 16, 1, b""),
    ]);
    // A third, small archive in the same compressed stream after padding.
    let late = newc(&[E("./etc/late", REG, 20, 1, b"late\n")]);
    let mut stream = main.clone();
    stream.extend_from_slice(&late);
    for cmd in [
        "gzip -6",
        "zstd -q -3",
        "xz -0 -T2 --block-size=1MiB",
        "lz4 -q -l",
        "bzip2 -1",
        "lzma -0",
    ] {
        let mut image = early.clone();
        image.extend_from_slice(&compress(cmd, &stream));
        let a = Initrd::open(mem("/initrd", image.clone())).unwrap();
        assert_eq!(a.codecs()[0], Codec::Raw, "{cmd}");
        let names: Vec<_> = a.list(0).unwrap().iter().map(|d| d.name.clone()).collect();
        assert_eq!(names, ["bin", "dev", "etc", "kernel", "usr"], "{cmd}");
        let read = |path: &str| testing::read_all(&a, walk(&a, path), 100_000);
        assert_eq!(read("etc/hostname"), b"maas-node\n", "{cmd}");
        assert_eq!(read("etc/late"), b"late\n", "{cmd}");
        assert_eq!(read("kernel/x86/microcode/AuthenticAMD.bin"), amd, "{cmd}");
        assert_eq!(read("etc/a"), b"linked\n", "{cmd}");
        assert_eq!(walk(&a, "etc/a"), walk(&a, "etc/b"), "{cmd}");
        assert_eq!(a.entry(walk(&a, "etc/a")).unwrap().nlink, 2);
        assert!(read("usr/lib/big") == big, "{cmd}");
        let bin = a.entry(walk(&a, "bin")).unwrap();
        assert_eq!(bin.kind, EntryKind::Symlink(b"usr/bin".to_vec()));
        assert_eq!(bin.size, 7);
        assert_eq!(
            a.entry(walk(&a, "dev/console")).unwrap().kind,
            EntryKind::Special
        );
        let e = a.entry(walk(&a, "etc/hostname")).unwrap();
        assert_eq!((e.mode, e.uid, e.mtime), (0o644, 1000, 1_700_000_000));
        // Random reads, backwards, each from the nearest seek point.
        let id = walk(&a, "usr/lib/big");
        for at in [9 << 20, 5 << 20, 123_457, 8 << 20] {
            let mut buf = vec![0; 70_000];
            assert_eq!(a.read(id, at, &mut buf).unwrap(), 70_000);
            assert!(
                buf == big[at as usize..at as usize + 70_000],
                "{cmd} at {at}"
            );
        }
        // Cut anywhere, or with bytes flipped: an error naming the image or a
        // smaller tree (lz4 has no checksum), never a panic or a hang.
        for cut in [image.len() / 2, early.len() + 40, early.len() / 2, 50] {
            match Initrd::open(mem("/cut", image[..cut].to_vec())) {
                Err(e) => assert!(e.to_string().contains("/cut"), "{cmd} {cut}: {e}"),
                Ok(_) => panic!("{cmd}: cut at {cut} opened"),
            }
        }
        for at in (0..image.len()).step_by(image.len() / 23) {
            let mut bad = image.clone();
            bad[at] ^= 0x41;
            if let Ok(a) = Initrd::open(mem("/bad", bad)) {
                let mut buf = vec![0; 65536];
                for n in &a.nodes {
                    let _ = a.read(n.entry.id, 0, &mut buf);
                }
            }
        }
    }
}

#[test]
fn what_is_not_an_initrd_is_a_clear_error() {
    let early = newc(&[E("a", REG, 1, 1, b"x")]);
    for (what, image, want) in [
        (
            "junk",
            b"hello world, no cpio here".to_vec(),
            "invalid magic",
        ),
        ("odc", b"070707000000000000".repeat(10), "odc"),
        ("lzo", [&early[..], b"\x89LZO\0\r\n\x1a\n"].concat(), "lzo"),
        ("no hex", b"070701zzzzzzzz".repeat(10), "not hex"),
    ] {
        let e = Initrd::open(mem("/x", image)).err().expect(what);
        assert!(e.to_string().contains(want), "{what}: {e}");
    }
    // Only zeros after the early archive: fine.
    let mut padded = early.clone();
    padded.extend_from_slice(&[0; 4096]);
    let a = Initrd::open(mem("/x", padded)).unwrap();
    assert_eq!(testing::read_all(&a, walk(&a, "a"), 10), b"x");
}

#[test]
fn an_index_file_spares_the_second_open_its_pass() {
    let big = noise(3, 6 << 20);
    let mut image = newc(&[E("early", REG, 1, 1, b"x")]);
    image.extend_from_slice(&compress(
        "gzip -1",
        &newc(&[E("a", DIR, 2, 2, b""), E("a/big", REG, 3, 1, &big)]),
    ));
    let tmp = tempfile::tempdir().unwrap();
    let dir = IndexDir::new(tmp.path());
    let sha = "ab".repeat(32);
    let open = || {
        let bytes = Arc::new(Counting {
            inner: MemBytes {
                name: "/initrd".into(),
                data: image.clone(),
            },
            read: Default::default(),
        });
        let a = Initrd::open_with(
            bytes.clone(),
            Some(Persist {
                dir: &dir,
                sha256: &sha,
            }),
        )
        .unwrap();
        (a, bytes)
    };
    let (a, first) = open();
    assert!(first.read.load(std::sync::atomic::Ordering::Relaxed) >= image.len() as u64);
    assert!(
        tmp.path()
            .join(format!("inside/{sha}.initrd.idx"))
            .is_file()
    );
    let (b, second) = open();
    assert_eq!(second.read.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(a.nodes, b.nodes);
    let mut buf = vec![0; 1000];
    let id = walk(&b, "a/big");
    assert_eq!(b.read(id, 5 << 20, &mut buf).unwrap(), 1000);
    assert!(buf == big[5 << 20..(5 << 20) + 1000]);
    // Reading near the end decompressed from a seek point, not the start.
    let n = second.read.load(std::sync::atomic::Ordering::Relaxed);
    assert!(n < (3 << 20), "{n} bytes read for 1000 at 5 MiB");
}
