//! `mount --inside`: images made here without root (mksquashfs), imported with
//! `pgbootfs import`, browsed through a real FUSE mount, and checked against what
//! `unsquashfs -lln` and `sha256sum` of the source say.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

use crate::common::store::*;
use crate::common::xattr::{get_xattr, set_xattr};
use crate::common::*;

const NOBLE: &str = "ubuntu/amd64/ga-24.04/noble";

fn have_mksquashfs() -> bool {
    let ok = Command::new("mksquashfs").arg("-version").output().is_ok()
        && Command::new("unsquashfs").arg("-version").output().is_ok();
    assert!(
        ok || std::env::var("CI").as_deref() != Ok("true"),
        "squashfs-tools missing but CI=true (scripts/test installs it)"
    );
    if !ok {
        eprintln!("\n*** SKIPPING: squashfs-tools (mksquashfs, unsquashfs) missing ***\n");
    }
    ok
}

/// A tree with every kind of entry a user can make without root: files of one
/// byte to several blocks (random, so incompressible, and zeros), empty files,
/// nested and restricted directories, relative, absolute and dangling symlinks, a
/// hard link, setuid and setgid files, a private file and a fifo.
fn make_tree(dir: &Path) {
    let w = |rel: &str, data: &[u8], mode: u32| {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    };
    w("etc/hostname", b"maas-node\n", 0o644);
    w("etc/shadow", b"root:*:19000:0:99999:7:::\n", 0o600);
    w("etc/empty", b"", 0o644);
    w("usr/bin/su", &bytes(1, 40_000), 0o4755);
    w("usr/bin/wall", &bytes(2, 20_000), 0o2755);
    w("usr/lib/big.so", &bytes(3, 700_000), 0o644);
    w("usr/share/zeros", &vec![0; 300_000], 0o644);
    w("var/lib/deep/a/b/c/d/leaf", b"leaf\n", 0o640);
    for i in 0..300 {
        w(
            &format!("usr/share/many/f{i:03}"),
            &bytes(100 + i, i as usize * 37),
            0o644,
        );
    }
    fs::create_dir_all(dir.join("root")).unwrap();
    fs::set_permissions(dir.join("root"), fs::Permissions::from_mode(0o700)).unwrap();
    symlink("usr/bin", dir.join("bin")).unwrap();
    symlink("/etc/hostname", dir.join("etc/absolute")).unwrap();
    symlink("../nowhere", dir.join("etc/dangling")).unwrap();
    fs::hard_link(dir.join("etc/hostname"), dir.join("etc/hostname.bak")).unwrap();
    let fifo = std::ffi::CString::new(dir.join("etc/initctl").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo touches nothing else.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
}

fn mksquashfs(tree: &Path, out: &Path, comp: &str) {
    let st = Command::new("mksquashfs")
        .arg(tree)
        .arg(out)
        .args(["-comp", comp, "-noappend", "-quiet", "-no-progress"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "mksquashfs -comp {comp}");
}

/// One entry as `unsquashfs -lln` lists it: mode string, uid/gid, size, date
/// and time (UTC), symlink target; keyed by path relative to the image's root.
type Listing = BTreeMap<String, (String, String, String, String, String)>;

/// What `unsquashfs -lln` says of `image`, less the root itself, turned into what
/// the mount promises: setuid and setgid dropped, fifos as empty files.
fn unsquashfs_listing(image: &Path) -> Listing {
    let out = Command::new("unsquashfs")
        .arg("-lln")
        .arg(image)
        .env("TZ", "UTC")
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut map = Listing::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(rel) = f[5].strip_prefix("squashfs-root/") else {
            continue;
        };
        let mut mode: Vec<char> = f[0].chars().collect();
        let mut size = f[2].to_string();
        if mode[0] == 'p' {
            mode[0] = '-';
            size = "0".into();
        }
        for i in [3, 6] {
            mode[i] = match mode[i] {
                's' => 'x',
                'S' => '-',
                c => c,
            };
        }
        let target = if f.len() > 7 { f[7] } else { "" };
        map.insert(
            rel.to_string(),
            (
                mode.into_iter().collect(),
                f[1].to_string(),
                size,
                format!("{} {}", f[3], f[4]),
                target.to_string(),
            ),
        );
    }
    map
}

/// The same for a directory of the mount, by `find -printf` (a real walker).
fn find_listing(dir: &Path) -> Listing {
    let out = Command::new("find")
        .arg(".")
        .args([
            "-mindepth",
            "1",
            "-printf",
            "%M|%U/%G|%s|%TY-%Tm-%Td %TH:%TM|%P|%l\\n",
        ])
        .current_dir(dir)
        .env("TZ", "UTC")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "find in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            (
                f[4].to_string(),
                (
                    f[0].to_string(),
                    f[1].to_string(),
                    f[2].to_string(),
                    f[3].to_string(),
                    f[5].to_string(),
                ),
            )
        })
        .collect()
}

/// The tree browsed at `root` has exactly the entries of `want` (as the format's
/// own tool lists them) and the file contents of `want_sums`, and its hard link
/// (etc/hostname and etc/hostname.bak) is one inode with two links.
fn assert_browsed(root: &Path, want: &Listing, want_sums: &BTreeMap<String, String>, what: &str) {
    let got = find_listing(root);
    assert_eq!(got.len(), want.len(), "{what}: entry count");
    for (path, w) in want {
        assert_eq!(got.get(path), Some(w), "{what}: {path}");
    }
    // Every file's content, by a real reader.
    let got_sums = source_sums(root);
    let differ: Vec<_> = want_sums
        .iter()
        .filter(|(p, sum)| got_sums.get(*p) != Some(sum))
        .chain(got_sums.iter().filter(|(p, _)| !want_sums.contains_key(*p)))
        .collect();
    assert!(differ.is_empty(), "{what}: sha256 differs: {differ:?}");
    let a = fs::metadata(root.join("etc/hostname")).unwrap();
    let b = fs::metadata(root.join("etc/hostname.bak")).unwrap();
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "{what}");
}

/// Every regular file below `tree`, relative, with its sha256.
fn source_sums(tree: &Path) -> BTreeMap<String, String> {
    let out = sh(&format!(
        "cd '{}' && find . -type f -print0 | xargs -0 sha256sum",
        tree.display()
    ));
    out.lines()
        .map(|l| {
            let (sum, path) = l.split_once("  ").unwrap();
            (path.trim_start_matches("./").to_string(), sum.to_string())
        })
        .collect()
}

#[test]
fn squashfs_contents_match_unsquashfs_and_nothing_shows_without_inside() {
    if !fuse_or_skip("squashfs_contents_match_unsquashfs") || !have_mksquashfs() {
        return;
    }
    let work = temp_dir("pgbt-inside-");
    let tree = work.path().join("tree");
    make_tree(&tree);
    // Extended attributes, where /tmp keeps them (tmpfs since Linux 6.6).
    let xattrs = set_xattr(&tree.join("etc/hostname"), "maas", b"region");
    let src = SrcTree::new();
    let mut images = Vec::new();
    for (version, comp) in [("20240101", "xz"), ("20240102", "gzip")] {
        let image = src.path().join(format!("{NOBLE}/{version}/squashfs"));
        fs::create_dir_all(image.parent().unwrap()).unwrap();
        mksquashfs(&tree, &image, comp);
        src.add(&format!("{NOBLE}/{version}/boot-kernel"), &bytes(9, 1000));
        images.push((version, comp, image));
    }
    let pg = Cluster::start();
    let db = pg.conninfo("postgres");
    pgbootfs_ok(&db, &["import", src.path().to_str().unwrap()]);

    // Without --inside there is no inside view, not even its name.
    {
        let mnt = Mount::start(&db, &[]);
        let names: Vec<_> = fs::read_dir(&mnt.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["ubuntu"]);
        let e = fs::metadata(mnt.path(".inside")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }

    let mnt = Mount::start(&db, &["--inside"]);
    let names = sh(&format!("ls -a '{}'", mnt.dir.display()));
    assert_eq!(
        names.split_whitespace().collect::<Vec<_>>(),
        [".", "..", ".inside", "ubuntu"]
    );
    // Only browsable images are mirrored, as directories.
    let version = mnt.path(&format!(".inside/{NOBLE}/20240101"));
    let listed = sh(&format!("ls -a '{}'", version.display()));
    assert_eq!(
        listed.split_whitespace().collect::<Vec<_>>(),
        [".", "..", "squashfs"]
    );
    assert!(fs::metadata(version.join("squashfs")).unwrap().is_dir());

    let mut want_sums = source_sums(&tree);
    assert!(want_sums.len() > 300);
    // The fifo shows as an empty regular file.
    want_sums.insert("etc/initctl".into(), sha256_hex(b""));
    for (version, comp, image) in &images {
        let root = mnt.path(&format!(".inside/{NOBLE}/{version}/squashfs"));
        assert_browsed(&root, &unsquashfs_listing(image), &want_sums, comp);
        if xattrs {
            assert_eq!(
                get_xattr(&root.join("etc/hostname"), "user.maas"),
                Ok(b"region".to_vec())
            );
        }
        assert_eq!(
            get_xattr(&root.join("etc/empty"), "user.maas"),
            Err(libc::ENODATA)
        );
        assert_eq!(
            fs::read_link(root.join("etc/dangling")).unwrap(),
            Path::new("../nowhere")
        );
        // Symlinks are the image's, never followed out of it.
        assert_eq!(
            fs::read_link(root.join("bin")).unwrap(),
            Path::new("usr/bin")
        );
        // A random read in the middle of a multi-block file.
        let mut buf = vec![0; 100_000];
        let f = fs::File::open(root.join("usr/lib/big.so")).unwrap();
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 250_001).unwrap();
        assert_eq!(buf, bytes(3, 700_000)[250_001..350_001]);
    }
    // The outer tree is as it was.
    let kernel = mnt.path(&format!("{NOBLE}/20240101/boot-kernel"));
    assert_eq!(read_all(&kernel).unwrap(), bytes(9, 1000));
}

#[test]
fn a_corrupt_image_fails_with_eio_and_one_log_line_and_the_rest_works() {
    if !fuse_or_skip("a_corrupt_image_fails_with_eio") || !have_mksquashfs() {
        return;
    }
    let work = temp_dir("pgbt-inside-");
    let tree = work.path().join("tree");
    make_tree(&tree);
    let good = work.path().join("good.sqfs");
    mksquashfs(&tree, &good, "xz");
    let data = fs::read(&good).unwrap();
    let src = SrcTree::new();
    src.add(&format!("{NOBLE}/1/squashfs"), &data);
    // Cut short: the superblock promises more bytes than there are.
    src.add(&format!("{NOBLE}/2/squashfs"), &data[..data.len() / 2]);
    // Not a squashfs at all.
    src.add(&format!("{NOBLE}/3/squashfs"), &bytes(7, 100_000));
    // The directory table damaged: the superblock is fine, a listing is not.
    let mut bad = data.clone();
    let dir_table = u64::from_le_bytes(bad[72..80].try_into().unwrap()) as usize;
    for b in &mut bad[dir_table..dir_table + 64] {
        *b ^= 0xa5;
    }
    src.add(&format!("{NOBLE}/4/squashfs"), &bad);
    let pg = Cluster::start();
    let db = pg.conninfo("postgres");
    pgbootfs_ok(&db, &["import", src.path().to_str().unwrap()]);
    let mnt = Mount::start(&db, &["--inside"]);

    for v in ["2", "3", "4"] {
        let root = mnt.path(&format!(".inside/{NOBLE}/{v}/squashfs"));
        let e = listing_error(&root);
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "version {v}: {e}");
        // Asked again: the same answer, and no second log line.
        let e = listing_error(&root);
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        let image = format!("/{NOBLE}/{v}/squashfs");
        let lines = log_lines(&mnt.log(), &[&image, "corrupt or truncated"]);
        assert_eq!(lines.len(), 1, "version {v}: {lines:?}\n{}", mnt.log());
    }
    assert!(!mnt.log().contains("panicked"), "{}", mnt.log());
    // The good image and the outer tree still answer.
    let root = mnt.path(&format!(".inside/{NOBLE}/1/squashfs"));
    assert_eq!(fs::read(root.join("etc/hostname")).unwrap(), b"maas-node\n");
    assert_eq!(
        read_all(&mnt.path(&format!("{NOBLE}/3/squashfs"))).unwrap(),
        bytes(7, 100_000)
    );
}

/// What `tar -tv --numeric-owner` says of `tarball`, turned into what the mount
/// promises: setuid and setgid dropped, fifos as empty files, a symlink's size its
/// target's length, a hard link the entry it links to.
fn tar_listing(tarball: &Path) -> Listing {
    let out = Command::new("tar")
        .args(["-tv", "--numeric-owner", "--full-time", "-f"])
        .arg(tarball)
        .env("TZ", "UTC")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut map = Listing::new();
    let mut links = Vec::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let rel = f[5]
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        if rel.is_empty() {
            continue;
        }
        let mut mode: Vec<char> = f[0].chars().collect();
        let mut size = f[2].to_string();
        let mut target = String::new();
        match mode[0] {
            'p' => {
                mode[0] = '-';
                size = "0".into();
            }
            'l' => {
                target = f[7].to_string();
                size = target.len().to_string();
            }
            'h' => {
                links.push((rel, f[8].trim_start_matches("./").to_string()));
                continue;
            }
            _ => {}
        }
        for i in [3, 6] {
            mode[i] = match mode[i] {
                's' => 'x',
                'S' => '-',
                c => c,
            };
        }
        // --full-time gives seconds; find's %TM does not.
        let time = &f[4][..5];
        map.insert(
            rel,
            (
                mode.into_iter().collect(),
                f[1].to_string(),
                size,
                format!("{} {time}", f[3]),
                target,
            ),
        );
    }
    for (rel, to) in links {
        let t = map[&to].clone();
        map.insert(rel, t);
    }
    map
}

#[test]
fn tarballs_of_each_compression_match_tar_tv() {
    if !fuse_or_skip("tarballs_of_each_compression_match_tar_tv") {
        return;
    }
    let work = temp_dir("pgbt-inside-");
    let tree = work.path().join("tree");
    make_tree(&tree);
    let src = SrcTree::new();
    let mut images = Vec::new();
    for (version, filetype, compress) in [
        ("1", "root-tgz", "gzip"),
        ("2", "root-tbz", "bzip2"),
        ("3", "root-txz", "xz"),
    ] {
        let tarball = src.path().join(format!("{NOBLE}/{version}/{filetype}"));
        fs::create_dir_all(tarball.parent().unwrap()).unwrap();
        let st = Command::new("tar")
            .arg("-C")
            .arg(&tree)
            .args(["-I", compress, "-cf"])
            .arg(&tarball)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success());
        images.push((version, filetype, tarball));
    }
    // A cut tarball: EIO and one log line, the others unaffected.
    let whole = fs::read(&images[0].2).unwrap();
    src.add(&format!("{NOBLE}/4/root-tgz"), &whole[..whole.len() / 2]);
    let pg = Cluster::start();
    let db = pg.conninfo("postgres");
    pgbootfs_ok(&db, &["import", src.path().to_str().unwrap()]);
    let mnt = Mount::start(&db, &["--inside"]);

    let mut want_sums = source_sums(&tree);
    want_sums.insert("etc/initctl".into(), sha256_hex(b""));
    for (version, filetype, tarball) in &images {
        let root = mnt.path(&format!(".inside/{NOBLE}/{version}/{filetype}"));
        assert_browsed(&root, &tar_listing(tarball), &want_sums, filetype);
    }
    let cut = mnt.path(&format!(".inside/{NOBLE}/4/root-tgz"));
    let e = listing_error(&cut);
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    let image = format!("/{NOBLE}/4/root-tgz");
    let lines = log_lines(&mnt.log(), &[&image, "corrupt or truncated"]).len();
    assert_eq!(lines, 1, "{}", mnt.log());
    let root = mnt.path(&format!(".inside/{NOBLE}/1/root-tgz"));
    assert_eq!(fs::read(root.join("etc/hostname")).unwrap(), b"maas-node\n");
}

#[test]
fn serve_inside_serves_files_and_listings_and_refuses_private_files_and_symlinks() {
    use crate::common::http::Server;
    if !have_mksquashfs() {
        return;
    }
    let work = temp_dir("pgbt-inside-");
    let tree = work.path().join("tree");
    make_tree(&tree);
    let src = SrcTree::new();
    let image = src.path().join(format!("{NOBLE}/1/squashfs"));
    fs::create_dir_all(image.parent().unwrap()).unwrap();
    mksquashfs(&tree, &image, "xz");
    let tgz = src.path().join(format!("{NOBLE}/1/root-tgz"));
    sh(&format!(
        "tar -C '{}' -czf '{}' .",
        tree.display(),
        tgz.display()
    ));
    src.add(&format!("{NOBLE}/2/squashfs"), &bytes(7, 100_000));
    let pg = Cluster::start();
    let db = pg.conninfo("postgres");
    pgbootfs_ok(&db, &["import", src.path().to_str().unwrap()]);

    let plain = Server::start(&db, &[]);
    assert_eq!(
        plain
            .get(&format!("/.inside/{NOBLE}/1/squashfs/"), &[])
            .status,
        404
    );
    drop(plain);

    let s = Server::start(&db, &["--inside"]);
    // Only browsable images are listed, as directories.
    let r = s.get(
        &format!("/.inside/{NOBLE}/1/"),
        &["Accept: application/json"],
    );
    assert_eq!(r.status, 200);
    let list: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let names: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["root-tgz", "squashfs"]);
    for filetype in ["squashfs", "root-tgz"] {
        let at = format!("/.inside/{NOBLE}/1/{filetype}");
        // A whole file by a real client.
        let sum = sh(&format!(
            "curl -sf '{}' | sha256sum",
            s.url(&format!("{at}/usr/lib/big.so"))
        ));
        assert_eq!(
            sum.split_whitespace().next(),
            Some(sha256_hex(&bytes(3, 700_000)).as_str())
        );
        let part = sh(&format!(
            "curl -sf -r 250001-350000 '{}' | sha256sum",
            s.url(&format!("{at}/usr/lib/big.so"))
        ));
        assert_eq!(
            part.split_whitespace().next(),
            Some(sha256_hex(&bytes(3, 700_000)[250_001..350_001]).as_str()),
            "{filetype}"
        );
        let r = s.get(&format!("{at}/etc/hostname"), &[]);
        assert_eq!((r.status, r.body.as_slice()), (200, &b"maas-node\n"[..]));
        let tag = r.header("etag").unwrap().to_string();
        let again = s.get(
            &format!("{at}/etc/hostname"),
            &[&format!("If-None-Match: {tag}")],
        );
        assert_eq!(again.status, 304);
        // The listing equals the source directory's names and kinds.
        let r = s.get(&format!("{at}/etc/"), &["Accept: application/json"]);
        let list: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let mut got: Vec<(String, String)> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_string(),
                    e["type"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        got.sort();
        let mut want: Vec<(String, String)> = fs::read_dir(tree.join("etc"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let t = e.file_type().unwrap();
                let kind = if t.is_dir() {
                    "dir"
                } else if t.is_symlink() {
                    "symlink"
                } else {
                    "file"
                };
                (e.file_name().into_string().unwrap(), kind.to_string())
            })
            .collect();
        want.sort();
        assert_eq!(got, want, "{filetype}");
        let dangling = list
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "dangling")
            .unwrap();
        assert_eq!(dangling["target"], "../nowhere");
        // Symlinks are never followed; private files are refused.
        assert_eq!(s.get(&format!("{at}/bin/su"), &[]).status, 404);
        assert_eq!(s.get(&format!("{at}/etc/absolute"), &[]).status, 404);
        assert_eq!(s.get(&format!("{at}/etc/shadow"), &[]).status, 403);
        let html = s.get(&format!("{at}/usr/"), &[]);
        assert_eq!(html.status, 200);
        assert!(
            String::from_utf8_lossy(&html.body).contains("href=\""),
            "html listing"
        );
    }
    // A corrupt image: 422 and one log line; the rest still answers.
    assert_eq!(
        s.get(&format!("/.inside/{NOBLE}/2/squashfs/"), &[]).status,
        422
    );
    assert!(
        s.log().contains(&format!("/{NOBLE}/2/squashfs")),
        "{}",
        s.log()
    );
    drop(s);

    let private = Server::start(&db, &["--inside", "--inside-private"]);
    let r = private.get(&format!("/.inside/{NOBLE}/1/squashfs/etc/shadow"), &[]);
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"root:*:19000:0:99999:7:::\n"[..])
    );
}

#[test]
fn a_tarball_index_in_the_cache_dir_is_reused_after_a_restart() {
    if !fuse_or_skip("a_tarball_index_in_the_cache_dir_is_reused") {
        return;
    }
    let work = temp_dir("pgbt-inside-");
    let tree = work.path().join("tree");
    fs::create_dir_all(tree.join("etc")).unwrap();
    // Incompressible, so the image is as large as its contents: 40 MiB, ten
    // seek points apart.
    let big = bytes(41, 40 << 20);
    fs::write(tree.join("big"), &big).unwrap();
    fs::write(tree.join("etc/hostname"), b"maas-node\n").unwrap();
    fs::write(tree.join("zz-late"), b"last in the tarball\n").unwrap();
    let src = SrcTree::new();
    let tgz = src.path().join(format!("{NOBLE}/1/root-tgz"));
    fs::create_dir_all(tgz.parent().unwrap()).unwrap();
    sh(&format!(
        "tar -C '{}' -czf '{}' big etc zz-late",
        tree.display(),
        tgz.display()
    ));
    let image = fs::read(&tgz).unwrap();
    let sha = sha256_hex(&image);
    let pg = Cluster::start();
    let db = pg.conninfo("postgres");
    pgbootfs_ok(&db, &["import", src.path().to_str().unwrap()]);
    let mut c = pg.client("postgres");
    let cache = work.path().join("cache");
    // --cache-size 1 (MiB): the image itself is never cached on disk, so every
    // byte the daemons need comes from the database and is counted.
    let args = [
        "--inside",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--cache-size",
        "1",
    ];
    let root = format!(".inside/{NOBLE}/1/root-tgz");
    // What a daemon reads from pg_largeobject to list the root, read the last
    // entry and 64 KiB from the middle of the big one.
    let look = |mnt: &Mount| {
        let names: Vec<_> = fs::read_dir(mnt.path(&root))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(names, ["big", "etc", "zz-late"]);
        assert_eq!(
            fs::read(mnt.path(&format!("{root}/zz-late"))).unwrap(),
            b"last in the tarball\n"
        );
        let f = fs::File::open(mnt.path(&format!("{root}/big"))).unwrap();
        let mut buf = vec![0; 65536];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 21 << 20).unwrap();
        assert!(buf == big[21 << 20..(21 << 20) + 65536], "big at 21 MiB");
    };

    let before = lo_blocks(&mut c);
    let mnt = Mount::start(&db, &args);
    look(&mnt);
    let first = lo_blocks(&mut c) - before;
    let index = cache.join("inside").join(format!("{sha}.tar.idx"));
    assert!(index.is_file(), "no index file at {}", index.display());
    assert!(mnt.log().contains("index written"), "{}", mnt.log());
    drop(mnt);
    // The first daemon read the whole image: 2 KiB per large-object page, at
    // most four pages per 8 KiB heap block.
    let image_blocks = (image.len() / 8192) as i64;
    assert!(first >= image_blocks, "first daemon: {first} blocks");

    let before = lo_blocks(&mut c);
    let mnt = Mount::start(&db, &args);
    look(&mnt);
    let second = lo_blocks(&mut c) - before;
    assert!(!mnt.log().contains("index written"), "{}", mnt.log());
    drop(mnt);
    // From two seek points: at most about two spacings (4 MiB each) of the
    // image's 40 MiB, where the first daemon read all of it.
    eprintln!("pg_largeobject blocks: first daemon {first}, after the restart {second}");
    assert!(
        second * 4 < first,
        "second daemon read {second} blocks, the first {first}"
    );

    // A damaged index file: one line, ignored, rebuilt; the contents unchanged.
    let mut bad = fs::read(&index).unwrap();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    fs::write(&index, &bad).unwrap();
    let mnt = Mount::start(&db, &args);
    look(&mnt);
    let log = mnt.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("ignored and rebuilt") && l.contains(&sha))
        .count();
    assert_eq!(lines, 1, "{log}");
    assert!(log.contains("index written"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// cpio and the compressors an initrd test needs; false (a skip) only outside CI.
fn have_initrd_tools() -> bool {
    let ok = ["cpio", "zstd", "xz", "lz4", "gzip"].iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok()
    });
    assert!(
        ok || std::env::var("CI").as_deref() != Ok("true"),
        "cpio, zstd, xz-utils or lz4 missing but CI=true (scripts/test installs them)"
    );
    if !ok {
        eprintln!("\n*** SKIPPING: cpio, zstd, xz or lz4 missing ***\n");
    }
    ok
}

/// A listing as the mount promises it from what `cpio -idm` made: setuid and
/// setgid dropped, fifos as empty files, directories' sizes left out (a file
/// system's own, not the archive's).
fn as_shown(mut l: Listing) -> Listing {
    for (mode, _, size, _, _) in l.values_mut() {
        let mut m: Vec<char> = mode.chars().collect();
        if m[0] == 'p' {
            m[0] = '-';
            *size = "0".into();
        }
        if m[0] == 'd' {
            *size = "-".into();
        }
        for i in [3, 6] {
            m[i] = match m[i] {
                's' => 'x',
                'S' => '-',
                c => c,
            };
        }
        *mode = m.into_iter().collect();
    }
    l
}

#[test]
fn initrds_of_each_compression_match_what_cpio_extracts() {
    use crate::common::http::Server;
    if !fuse_or_skip("initrds_of_each_compression_match_what_cpio_extracts") || !have_initrd_tools()
    {
        return;
    }
    let work = temp_dir("pgbt-inside-");
    let w = work.path();
    // The early archive, as Ubuntu's initramfs-tools makes it: microcode,
    // uncompressed; here also an etc/hostname the main archive replaces.
    let early = w.join("early");
    fs::create_dir_all(early.join("kernel/x86/microcode")).unwrap();
    fs::create_dir_all(early.join("etc")).unwrap();
    fs::write(
        early.join("kernel/x86/microcode/AuthenticAMD.bin"),
        bytes(51, 30_000),
    )
    .unwrap();
    fs::write(
        early.join("kernel/x86/microcode/GenuineIntel.bin"),
        bytes(52, 90_001),
    )
    .unwrap();
    fs::write(early.join("etc/hostname"), b"early\n").unwrap();
    let tree = w.join("tree");
    make_tree(&tree);
    // 9 MiB: past a gzip seek point and an lz4 block.
    fs::create_dir_all(tree.join("usr/lib/firmware")).unwrap();
    let blob = bytes(53, 9 << 20);
    fs::write(tree.join("usr/lib/firmware/blob"), &blob).unwrap();
    let early_cpio = w.join("early.cpio");
    let main_cpio = w.join("main.cpio");
    for (dir, out) in [(&early, &early_cpio), (&tree, &main_cpio)] {
        sh(&format!(
            "cd '{}' && find . | cpio -o -H newc --quiet > '{}'",
            dir.display(),
            out.display()
        ));
    }
    // What the kernel would unpack: both archives extracted in order.
    let want_dir = w.join("extracted");
    fs::create_dir_all(&want_dir).unwrap();
    for a in [&early_cpio, &main_cpio] {
        sh(&format!(
            "cd '{}' && cpio -idmu --quiet --no-absolute-filenames < '{}'",
            want_dir.display(),
            a.display()
        ));
    }
    let want = as_shown(find_listing(&want_dir));
    let mut want_sums = source_sums(&want_dir);
    want_sums.insert("etc/initctl".into(), sha256_hex(b""));
    assert_eq!(want_sums["etc/hostname"], sha256_hex(b"maas-node\n"));

    let src = SrcTree::new();
    let early_bytes = fs::read(&early_cpio).unwrap();
    let compressors = ["gzip -9", "zstd -q -19", "xz --check=crc32", "lz4 -q -l -9"];
    let mut whole = Vec::new();
    for (i, comp) in compressors.iter().enumerate() {
        let z = w.join("main.cpio.z");
        sh(&format!(
            "{comp} < '{}' > '{}'",
            main_cpio.display(),
            z.display()
        ));
        let mut image = early_bytes.clone();
        image.extend_from_slice(&fs::read(&z).unwrap());
        src.add(&format!("{NOBLE}/{}/boot-initrd", i + 1), &image);
        if i == 0 {
            whole = image;
        }
    }
    // Cut inside its compressed segment.
    src.add(
        &format!("{NOBLE}/9/boot-initrd"),
        &whole[..whole.len() - 300_000],
    );
    let pg = Cluster::start();
    let db = pg.conninfo("postgres");
    pgbootfs_ok(&db, &["import", src.path().to_str().unwrap()]);

    let mnt = Mount::start(&db, &["--inside"]);
    for (i, comp) in compressors.iter().enumerate() {
        let root = mnt.path(&format!(".inside/{NOBLE}/{}/boot-initrd", i + 1));
        let got = as_shown(find_listing(&root));
        assert_eq!(got.len(), want.len(), "{comp}: entry count");
        for (path, w) in &want {
            assert_eq!(got.get(path), Some(w), "{comp}: {path}");
        }
        let got_sums = source_sums(&root);
        assert_eq!(got_sums, want_sums, "{comp}: sha256 of every file");
        let a = fs::metadata(root.join("etc/hostname")).unwrap();
        let b = fs::metadata(root.join("etc/hostname.bak")).unwrap();
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "{comp}: hard link");
        assert_eq!(
            fs::read_link(root.join("etc/dangling")).unwrap(),
            Path::new("../nowhere")
        );
        // Random reads, backwards, across seek points.
        let f = fs::File::open(root.join("usr/lib/firmware/blob")).unwrap();
        for at in [8_500_000usize, 4_200_000, 77] {
            let mut buf = vec![0; 100_000];
            std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, at as u64).unwrap();
            assert!(buf == blob[at..at + 100_000], "{comp} at {at}");
        }
    }
    let cut = mnt.path(&format!(".inside/{NOBLE}/9/boot-initrd"));
    let e = listing_error(&cut);
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    let image = format!("/{NOBLE}/9/boot-initrd");
    let lines = log_lines(&mnt.log(), &[&image, "corrupt or truncated"]);
    assert_eq!(lines.len(), 1, "{}", mnt.log());
    assert!(!mnt.log().contains("panicked"), "{}", mnt.log());
    // The others still answer.
    let root = mnt.path(&format!(".inside/{NOBLE}/1/boot-initrd"));
    assert_eq!(fs::read(root.join("etc/hostname")).unwrap(), b"maas-node\n");
    drop(mnt);

    // Over HTTP, every file and every directory's listing (private files too).
    let s = Server::start(&db, &["--inside", "--inside-private"]);
    let mut dirs: Vec<String> = want
        .iter()
        .filter(|(_, w)| w.0.starts_with('d'))
        .map(|(p, _)| format!("{p}/"))
        .collect();
    dirs.push(String::new());
    for i in 1..=compressors.len() {
        let at = format!("/.inside/{NOBLE}/{i}/boot-initrd");
        for (path, sum) in &want_sums {
            if path == "etc/initctl" {
                continue;
            }
            let r = s.get(&format!("{at}/{path}"), &[]);
            assert_eq!(r.status, 200, "{at}/{path}");
            assert_eq!(&sha256_hex(&r.body), sum, "{at}/{path}");
        }
        for dir in &dirs {
            let r = s.get(&format!("{at}/{dir}"), &["Accept: application/json"]);
            assert_eq!(r.status, 200, "{at}/{dir}");
            let list: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            let mut got: Vec<String> = list
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["name"].as_str().unwrap().to_string())
                .collect();
            got.sort();
            let mut names: Vec<String> = fs::read_dir(want_dir.join(dir))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            assert_eq!(got, names, "{at}/{dir}");
        }
        let sum = sh(&format!(
            "curl -sf '{}' | sha256sum",
            s.url(&format!("{at}/usr/lib/firmware/blob"))
        ));
        assert_eq!(
            sum.split_whitespace().next(),
            Some(sha256_hex(&blob).as_str())
        );
        let part = sh(&format!(
            "curl -sf -r 8500000-8599999 '{}' | sha256sum",
            s.url(&format!("{at}/usr/lib/firmware/blob"))
        ));
        assert_eq!(
            part.split_whitespace().next(),
            Some(sha256_hex(&blob[8_500_000..8_600_000]).as_str())
        );
        let r = s.get(
            &format!("{at}/kernel/x86/microcode/"),
            &["Accept: application/json"],
        );
        assert_eq!(r.status, 200);
        let list: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let names: Vec<_> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["AuthenticAMD.bin", "GenuineIntel.bin"]);
        let r = s.get(&format!("{at}/kernel/x86/microcode/GenuineIntel.bin"), &[]);
        assert_eq!((r.status, r.body.len()), (200, 90_001));
    }
    assert_eq!(
        s.get(&format!("/.inside/{NOBLE}/9/boot-initrd/"), &[])
            .status,
        422
    );
    assert!(s.log().contains(&image), "{}", s.log());
}
