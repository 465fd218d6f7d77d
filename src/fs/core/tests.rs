//! The file system answers without FUSE.

use super::*;
use crate::catalog::FileInfo;
use crate::db::DbConfig;
use crate::handle::PoolOptions;

/// A tree that tests swap, as a refresh would.
struct Fixed(Mutex<Arc<Tree>>);

impl TreeSource for Fixed {
    fn snapshot(&self) -> Arc<Tree> {
        self.0.lock().clone()
    }
}

fn file(sha: &str, size: u64) -> FileInfo {
    FileInfo {
        oid: 1,
        size,
        sha256: sha.into(),
        filetype: "root-tgz".into(),
        stored: None,
    }
}

fn core(files: &[(&str, FileInfo)]) -> (FsCore, Arc<Fixed>) {
    let source = Arc::new(Fixed(Mutex::new(Arc::new(Tree::from_files(files)))));
    // No server listens there: any database work would fail the test.
    let db = DbConfig::resolve(Some("host=/nonexistent/socket dbname=none user=none"))
        .expect("conninfo parses");
    let pool = HandlePool::new(&db, &PoolOptions::default());
    let core = FsCore::new(source.clone(), pool, Arc::default());
    (core, source)
}

fn ino(core: &FsCore, path: &str) -> Ino {
    let mut at = ROOT;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        at = core.lookup(at, part).expect(part).ino;
    }
    at
}

#[test]
fn lookups_and_attributes_follow_the_tree() {
    let (core, _) = core(&[
        ("/u/a/g/f/1/k", file("x", 10)),
        ("/u/a/g/f/1/i", file("y", 5)),
    ]);
    let root = core.getattr(ROOT, None).unwrap();
    assert_eq!((root.kind, root.ttl), (Kind::Dir, ROOT_TTL));
    let k = core.getattr(ino(&core, "u/a/g/f/1/k"), None).unwrap();
    assert_eq!(
        (k.kind, k.size, k.perm, k.ttl),
        (Kind::File, 10, 0o444, TTL)
    );
    let v = core.lookup(ino(&core, "u/a/g/f"), "1").unwrap();
    assert_eq!((v.kind, v.nlink, v.perm), (Kind::Dir, 4, 0o555));
    assert!(matches!(core.lookup(ROOT, "nope"), Err(FsError::NotFound)));
    assert_eq!(core.lookup(ROOT, "nope").unwrap_err().errno(), libc::ENOENT);
    assert_eq!(
        core.totals(),
        Totals {
            bytes: 15,
            inodes: 8
        }
    );
}

#[test]
fn opens_touch_no_database_and_keep_their_attributes() {
    let (core, source) = core(&[("/u/a/g/f/1/k", file("x", 10))]);
    let k = ino(&core, "u/a/g/f/1/k");
    assert_eq!(core.open(k, true).unwrap_err().errno(), libc::EROFS);
    assert_eq!(core.open(ROOT, false).unwrap_err().errno(), libc::EISDIR);
    assert_eq!(core.open(9999, false).unwrap_err().errno(), libc::ENOENT);
    // The database is unreachable, yet open succeeds: set-up is lazy.
    let fh = core.open(k, false).unwrap();
    assert!(!core.handle(fh).unwrap().holds_connection());
    // The catalog drops the file: the open file keeps its attributes.
    *source.0.lock() = Arc::new(Tree::from_files(&[]));
    assert!(matches!(core.getattr(k, None), Err(FsError::NotFound)));
    assert_eq!(core.getattr(k, Some(fh)).unwrap().size, 10);
    core.release(fh);
    assert!(matches!(core.handle(fh), Err(FsError::BadHandle)));
    assert_eq!(core.access(ROOT, true).unwrap_err().errno(), libc::EROFS);
}

#[test]
fn a_listing_pass_reads_one_tree_and_a_new_pass_the_current_one() {
    let (core, source) = core(&[
        ("/u/a/g/f/1/k", file("x", 1)),
        ("/u/a/g/f/2/k", file("y", 1)),
    ]);
    let dir = ino(&core, "u/a/g/f");
    let fh = core.opendir(dir).unwrap();
    let names = |offset: u64| {
        let mut out = Vec::new();
        core.readdir(fh, dir, offset, |_, name, _| {
            out.push(name.to_string());
            false
        })
        .unwrap();
        out
    };
    assert_eq!(names(0), [".", "..", "1", "2"]);
    // A refresh drops version 2 and adds 3 mid-pass: the pass goes on in its tree.
    *source.0.lock() = Arc::new(Tree::from_files(&[
        ("/u/a/g/f/1/k", file("x", 1)),
        ("/u/a/g/f/3/k", file("z", 1)),
    ]));
    assert_eq!(names(3), ["2"]);
    // The next pass starts from the current tree.
    assert_eq!(names(0), [".", "..", "1", "3"]);
    // A full reply stops the listing; its offsets continue it.
    let mut first = Vec::new();
    core.readdir(fh, dir, 0, |next, name, _| {
        first.push((next, name.to_string()));
        first.len() == 2
    })
    .unwrap();
    assert_eq!(first.last().unwrap().0, 2);
    assert_eq!(
        core.opendir(ino(&core, "u/a/g/f/1/k")).unwrap_err().errno(),
        libc::ENOTDIR
    );
    core.releasedir(fh);
}

/// A squashfs image of a small tree made here, and its FileInfo.
fn squashfs_image(dir: &std::path::Path, cache: &std::path::Path) -> FileInfo {
    use sha2::Digest;
    use std::os::unix::fs::{PermissionsExt, symlink};
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("usr/bin")).unwrap();
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/hostname"), b"maas\n").unwrap();
    std::fs::write(tree.join("usr/bin/su"), b"#!/bin/true\n").unwrap();
    std::fs::set_permissions(
        tree.join("usr/bin/su"),
        std::fs::Permissions::from_mode(0o6755),
    )
    .unwrap();
    symlink("usr/bin", tree.join("bin")).unwrap();
    let fifo = std::ffi::CString::new(tree.join("etc/fifo").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo touches nothing else.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let image = dir.join("image");
    let st = std::process::Command::new("mksquashfs")
        .arg(&tree)
        .arg(&image)
        .args(["-comp", "gzip", "-noappend", "-quiet", "-no-progress"])
        .status()
        .expect("mksquashfs (squashfs-tools) runs");
    assert!(st.success());
    let data = std::fs::read(&image).unwrap();
    let sha256 = crate::digest::hex(&sha2::Sha256::digest(&data));
    std::fs::write(cache.join(&sha256), &data).unwrap();
    FileInfo {
        oid: 1,
        size: data.len() as u64,
        sha256,
        filetype: "squashfs".into(),
        stored: None,
    }
}

#[test]
fn the_inside_view_shows_image_contents_only_when_asked() {
    if std::process::Command::new("mksquashfs")
        .arg("-version")
        .output()
        .is_err()
    {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "mksquashfs missing"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let good = squashfs_image(tmp.path(), &cache);
    // A corrupt image: the good one cut short, cached under its own sha256.
    let cut = {
        use sha2::Digest;
        let data = std::fs::read(cache.join(&good.sha256)).unwrap()[..200].to_vec();
        let sha256 = crate::digest::hex(&sha2::Sha256::digest(&data));
        std::fs::write(cache.join(&sha256), &data).unwrap();
        FileInfo {
            oid: 2,
            size: 200,
            sha256,
            filetype: "squashfs".into(),
            stored: None,
        }
    };
    let disk = crate::handle::disk::DiskCache::open(&cache, 1 << 30).unwrap();
    for f in [&good, &cut] {
        // The cache verifies what it finds at start in the background.
        let mut tries = 0;
        while disk.lookup(&f.sha256, f.size).is_none() {
            tries += 1;
            assert!(tries < 500, "the disk cache never verified {}", f.sha256);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let files = [
        ("/u/a/g/s/1/squashfs", good.clone()),
        (
            "/u/a/g/s/1/boot-kernel",
            FileInfo {
                filetype: "boot-kernel".into(),
                ..file("k", 3)
            },
        ),
        ("/u/a/g/s/2/squashfs", cut),
    ];
    let source = Arc::new(Fixed(Mutex::new(Arc::new(Tree::from_files(&files)))));
    // No server listens there: every byte comes from the disk cache.
    let db = DbConfig::resolve(Some("host=/nonexistent/socket dbname=none user=none"))
        .expect("conninfo parses");
    let pool = HandlePool::new(&db, &PoolOptions::default()).with_disk(disk);
    let plain = FsCore::new(source.clone(), pool.clone(), Arc::default());
    assert!(matches!(
        plain.lookup(ROOT, INSIDE_NAME),
        Err(FsError::NotFound)
    ));
    let core = FsCore::new(source, pool, Arc::default()).with_inside();
    let names = |core: &FsCore, ino: Ino| {
        let fh = core.opendir(ino).unwrap();
        let mut out = Vec::new();
        core.readdir(fh, ino, 0, |_, name, a| {
            out.push((name.to_string(), a.clone()));
            false
        })
        .unwrap();
        core.releasedir(fh);
        out
    };
    let listed = |core: &FsCore, ino: Ino| -> Vec<String> {
        names(core, ino)
            .into_iter()
            .map(|(n, _)| n)
            .skip(2)
            .collect()
    };
    assert_eq!(listed(&plain, ROOT), ["u"]);
    assert_eq!(listed(&core, ROOT), ["u", INSIDE_NAME]);
    let version = ino(&core, ".inside/u/a/g/s/1");
    // Only browsable images are shown, as directories.
    assert_eq!(listed(&core, version), ["squashfs"]);
    let root = core.lookup(version, "squashfs").unwrap();
    assert_eq!((root.kind, root.perm), (Kind::Dir, 0o555));
    // Directories first, then the rest, each in stored order.
    assert_eq!(listed(&core, root.ino), ["etc", "usr", "bin"]);
    let su = core
        .getattr(ino(&core, ".inside/u/a/g/s/1/squashfs/usr/bin/su"), None)
        .unwrap();
    assert_eq!((su.kind, su.perm, su.size), (Kind::File, 0o755, 12));
    let bin = core.lookup(root.ino, "bin").unwrap();
    assert_eq!(bin.kind, Kind::Symlink);
    assert_eq!(core.readlink(bin.ino).unwrap(), b"usr/bin");
    assert_eq!(core.readlink(root.ino).unwrap_err().errno(), libc::EINVAL);
    let fifo = core
        .getattr(ino(&core, ".inside/u/a/g/s/1/squashfs/etc/fifo"), None)
        .unwrap();
    assert_eq!((fifo.kind, fifo.size, fifo.perm), (Kind::File, 0, 0o644));
    let host = ino(&core, ".inside/u/a/g/s/1/squashfs/etc/hostname");
    let fh = core.open(host, false).unwrap();
    let f = core.inside_file(fh).unwrap();
    assert_eq!(core.read_inside(&f, 0, 100).unwrap(), b"maas\n");
    assert_eq!(core.read_inside(&f, 2, 100).unwrap(), b"as\n");
    core.release(fh);
    // Numbers are stable: a second lookup gives the same inode.
    assert_eq!(ino(&core, ".inside/u/a/g/s/1/squashfs/etc/hostname"), host);
    // The cut image fails with EIO; the rest of the tree still answers.
    let broken = ino(&core, ".inside/u/a/g/s/2/squashfs");
    let e = core.lookup(broken, "etc").unwrap_err();
    assert_eq!(e.errno(), libc::EIO);
    assert!(e.to_string().contains("/u/a/g/s/2/squashfs"), "{e}");
    assert_eq!(core.opendir(broken).map(|_| ()).ok(), Some(()));
    assert_eq!(listed(&core, root.ino).len(), 3);
}
