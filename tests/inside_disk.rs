//! `--inside` on raw disk images (`root-dd`): disks made here without root
//! (mkfs.ext4 -d, mkfs.vfat + mcopy, partitioned by sgdisk and sfdisk, the file
//! systems put in place with dd), imported, browsed through a real FUSE mount
//! and over HTTP, and checked against what debugfs and mtools read from the
//! same images.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::store::*;
use crate::common::xattr::{get_xattr, set_xattr};
use crate::common::*;

const NOBLE: &str = "ubuntu/amd64/ga-24.04/noble";

fn have_disk_tools() -> bool {
    let ok = [
        "mkfs.ext4",
        "debugfs",
        "mkfs.vfat",
        "mcopy",
        "sgdisk",
        "sfdisk",
    ]
    .iter()
    .all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    assert!(
        ok || std::env::var("CI").as_deref() != Ok("true"),
        "disk tools missing but CI=true (scripts/test installs e2fsprogs, dosfstools, mtools, gdisk, fdisk)"
    );
    if !ok {
        eprintln!("\n*** SKIPPING: e2fsprogs, dosfstools, mtools, gdisk or fdisk missing ***\n");
    }
    ok
}

/// Runs `cmd` with times in UTC (FAT stores local time) and mtools' size
/// checks off (file images have no geometry).
fn run(cmd: &str) -> String {
    sh(&format!("export TZ=UTC MTOOLS_SKIP_CHECK=1; {cmd}"))
}

/// The ext tree: files of one byte to several MiB, a sparse one, an empty one,
/// nested and private directories, relative and absolute symlinks, a hard
/// link, setuid and setgid files, a fifo.
fn ext_tree(dir: &Path) {
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
    w("usr/lib/big.so", &bytes(3, 3_000_000), 0o644);
    w("usr/share/zeros", &vec![0; 1_200_000], 0o644);
    w("var/lib/deep/a/b/c/leaf", b"leaf\n", 0o640);
    for i in 0..120 {
        w(
            &format!("usr/share/many/f{i:03}"),
            &bytes(100 + i, i as usize * 97),
            0o644,
        );
    }
    let sparse = fs::File::create(dir.join("var/sparse")).unwrap();
    sparse.set_len(8 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, &bytes(4, 50_000), 5 << 20).unwrap();
    fs::create_dir_all(dir.join("root")).unwrap();
    fs::set_permissions(dir.join("root"), fs::Permissions::from_mode(0o700)).unwrap();
    symlink("usr/bin", dir.join("bin")).unwrap();
    symlink("/etc/hostname", dir.join("etc/absolute")).unwrap();
    symlink("y".repeat(200), dir.join("etc/long-target")).unwrap();
    fs::hard_link(dir.join("etc/hostname"), dir.join("etc/hostname.bak")).unwrap();
    let fifo = std::ffi::CString::new(dir.join("etc/initctl").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo touches nothing else.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    // Owners other than root, where the test may give them (mkfs.ext4 -d keeps
    // the source's).
    if is_root() {
        for (rel, uid, gid) in [("etc/hostname", 1000, 1001), ("var/lib", 33, 33)] {
            std::os::unix::fs::lchown(dir.join(rel), Some(uid), Some(gid)).unwrap();
        }
    }
}

/// The FAT tree: an ESP's kind of content, long and short names.
fn fat_tree(dir: &Path) {
    let w = |rel: &str, data: &[u8]| {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
    };
    w("EFI/BOOT/BOOTX64.EFI", &bytes(5, 900_000));
    w("EFI/ubuntu/grub.cfg", b"search.fs_uuid 1234 root\n");
    w("EFI/ubuntu/shimx64.efi", &bytes(6, 1_300_000));
    w("A rather long file name.txt", b"long names\n");
    w("lower.txt", b"lower\n");
    w("empty", b"");
}

/// The images: an ext4 and a FAT32 file system, a GPT disk (p1 ext4, p2 FAT32
/// ESP, p3 never formatted) and an MBR disk (p1 FAT32, p2 ext4).
struct Images {
    work: tempfile::TempDir,
    ext4: PathBuf,
    fat: PathBuf,
    gpt: PathBuf,
    mbr: PathBuf,
    /// Whether the ext tree's etc/hostname has `user.maas=region`.
    xattr: bool,
}

/// The first sector of each partition, as sfdisk reads the table.
fn starts(disk: &Path) -> Vec<u64> {
    let out = run(&format!("sfdisk -J '{}'", disk.display()));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["start"].as_u64().unwrap())
        .collect()
}

fn make_images() -> Images {
    let work = temp_dir("pgbt-disk-");
    let w = work.path();
    let (et, ft) = (w.join("ext-tree"), w.join("fat-tree"));
    ext_tree(&et);
    fat_tree(&ft);
    // Where the build directory keeps user xattrs (tmpfs since Linux 6.6).
    let xattr = set_xattr(&et.join("etc/hostname"), "maas", b"region");
    let (ext4, fat, gpt, mbr) = (
        w.join("ext4.img"),
        w.join("fat.img"),
        w.join("gpt.img"),
        w.join("mbr.img"),
    );
    run(&format!(
        "mkfs.ext4 -q -F -b 4096 -d '{}' '{}' 24M",
        et.display(),
        ext4.display()
    ));
    run(&format!(
        "mkfs.vfat -C -F 32 '{f}' $((34 << 10)) >/dev/null && mcopy -s -m -i '{f}' '{t}'/* ::/",
        f = fat.display(),
        t = ft.display()
    ));
    run(&format!(
        "truncate -s 80M '{g}' && sgdisk -n 1:2048:+24M -t 1:8300 -n 2:0:+34M -t 2:ef00 -c 2:ESP -n 3:0:+1M '{g}' >/dev/null",
        g = gpt.display()
    ));
    run(&format!(
        "truncate -s 80M '{m}' && printf 'label: dos\\nsize=34M, type=c, bootable\\nsize=24M, type=83\\n' | sfdisk -q '{m}'",
        m = mbr.display()
    ));
    for (disk, order) in [(&gpt, [&ext4, &fat]), (&mbr, [&fat, &ext4])] {
        for (image, start) in order.iter().zip(starts(disk)) {
            run(&format!(
                "dd if='{}' of='{}' bs=512 seek={start} conv=notrunc status=none",
                image.display(),
                disk.display()
            ));
        }
    }
    Images {
        work,
        ext4,
        fat,
        gpt,
        mbr,
        xattr,
    }
}

/// One entry as compared: type, permissions, owner, size, mtime (UTC, to the
/// minute) and symlink target; `-` where a side has no such field.
type Listing = BTreeMap<String, String>;

/// The mount's view of `dir`, by find(1).
fn find_listing(dir: &Path, owners: bool) -> Listing {
    let out = Command::new("find")
        .arg(".")
        .args([
            "-mindepth",
            "1",
            "-printf",
            "%P|%y|%m|%U:%G|%s|%TY-%Tm-%Td %TH:%TM|%l\\n",
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
            let size = if f[1] == "d" { "-" } else { f[4] };
            let owner = if owners { f[3] } else { "-" };
            let time = if f[1] == "l" { "-" } else { f[5] };
            (
                f[0].to_string(),
                format!("{} {} {owner} {size} {time} {}", f[1], f[2], f[6]),
            )
        })
        .collect()
}

/// What debugfs says of the ext file system in `image`: every entry's type,
/// mode and owner from `ls -p` (setuid and setgid dropped, a fifo an empty
/// file, as the mount shows them), sizes and times from `rdump`'s copy, which
/// is also returned.
fn debugfs_listing(image: &Path, into: &Path) -> Listing {
    fs::create_dir_all(into).unwrap();
    run(&format!(
        "debugfs -R 'rdump / {}' '{}' 2>/dev/null",
        into.display(),
        image.display()
    ));
    let copied = find_listing(into, false);
    let mut out = Listing::new();
    let mut dirs = vec![String::new()];
    while let Some(dir) = dirs.pop() {
        let ls = run(&format!(
            "debugfs -R 'ls -p \"/{dir}\"' '{}' 2>/dev/null",
            image.display()
        ));
        for line in ls.lines() {
            // /inode/mode/uid/gid/name/size/
            let f: Vec<&str> = line.split('/').collect();
            if f.len() < 7 || f[1] == "0" || f[5].is_empty() || f[5] == "." || f[5] == ".." {
                continue;
            }
            let mode = u32::from_str_radix(f[2], 8).unwrap();
            let path = if dir.is_empty() {
                f[5].to_string()
            } else {
                format!("{dir}/{}", f[5])
            };
            let (kind, size) = match mode & 0o170000 {
                0o040000 => {
                    dirs.push(path.clone());
                    ("d", "-".to_string())
                }
                0o120000 => ("l", f[6].to_string()),
                0o100000 => ("f", f[6].to_string()),
                _ => ("f", "0".to_string()),
            };
            let perms = format!("{:o}", mode & 0o1777);
            let copy = copied.get(&path).map(String::as_str).unwrap_or("");
            let c: Vec<&str> = copy.split(' ').collect();
            let (time, target) = match kind {
                "l" => ("-".to_string(), c.get(5).copied().unwrap_or("")),
                "f" if size == "0" && (mode & 0o170000) != 0o100000 => {
                    // rdump does not copy a fifo; its time is debugfs's.
                    (String::from("?"), "")
                }
                _ => (format!("{} {}", c[4], c[5]), ""),
            };
            out.insert(
                path,
                format!("{kind} {perms} {}:{} {size} {time} {target}", f[3], f[4]),
            );
        }
    }
    out
}

/// What mtools says of the FAT file system in `image`: mcopy's copy of it
/// (times kept), listed with the mount's synthesized modes and owner.
fn mtools_listing(image: &Path, into: &Path) -> Listing {
    fs::create_dir_all(into).unwrap();
    run(&format!(
        "mcopy -s -m -n -i '{}' ::/ '{}/'",
        image.display(),
        into.display()
    ));
    find_listing(into, false)
        .into_iter()
        .map(|(p, v)| {
            let f: Vec<&str> = v.split(' ').collect();
            let perms = if f[0] == "d" { "755" } else { "644" };
            (
                p,
                format!("{} {perms} 0:0 {} {} {} ", f[0], f[3], f[4], f[5]),
            )
        })
        .collect()
}

/// Every regular file below `tree`, relative, with its sha256.
fn sums(tree: &Path) -> BTreeMap<String, String> {
    run(&format!(
        "cd '{}' && find . -type f -print0 | xargs -0 -r sha256sum",
        tree.display()
    ))
    .lines()
    .map(|l| {
        let (sum, path) = l.split_once("  ").unwrap();
        (path.trim_start_matches("./").to_string(), sum.to_string())
    })
    .collect()
}

/// The mount's `root` shows what the tool's listing `want` and copy `copy`
/// hold: every entry's fields, every file's sha256.
fn assert_same(root: &Path, want: &Listing, copy: &Path, owners: bool, what: &str) {
    let mut got = find_listing(root, owners);
    for (path, w) in want {
        // A fifo's time: what the mount shows, checked by type and size only.
        if w.contains(" ? ") {
            let g = got.remove(path).unwrap_or_default();
            assert_eq!(
                g.split(' ').take(4).collect::<Vec<_>>(),
                w.split(' ').take(4).collect::<Vec<_>>(),
                "{what}: {path}"
            );
            continue;
        }
        assert_eq!(got.remove(path).as_ref(), Some(w), "{what}: {path}");
    }
    assert!(got.is_empty(), "{what}: not in the image: {got:?}");
    let mut want_sums = sums(copy);
    let got_sums = sums(root);
    // Files the tool does not copy (a fifo) are empty on the mount.
    for (p, _) in got_sums.iter().filter(|(p, _)| !want_sums.contains_key(*p)) {
        assert!(
            want.get(p).is_some_and(|w| w.contains(" ? ")),
            "{what}: {p}"
        );
    }
    want_sums.extend(
        got_sums
            .iter()
            .filter(|(p, _)| want.get(*p).is_some_and(|w| w.contains(" ? ")))
            .map(|(p, s)| (p.clone(), s.clone())),
    );
    let differ: Vec<_> = want_sums
        .iter()
        .filter(|(p, s)| got_sums.get(*p) != Some(s))
        .collect();
    assert!(differ.is_empty(), "{what}: sha256 differs: {differ:?}");
}

/// The ext file system at `root` of the mount: as debugfs reads `image`, its
/// hard link one inode, its xattr as stored.
fn assert_ext(root: &Path, image: &Path, copy: &Path, xattr: bool, what: &str) {
    let want = debugfs_listing(image, copy);
    assert!(want.len() > 130, "{what}: {} entries", want.len());
    assert_same(root, &want, copy, true, what);
    let a = fs::metadata(root.join("etc/hostname")).unwrap();
    let b = fs::metadata(root.join("etc/hostname.bak")).unwrap();
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "{what}: hard link");
    if xattr {
        let stored = run(&format!(
            "debugfs -R 'ea_get /etc/hostname user.maas' '{}' 2>/dev/null",
            image.display()
        ));
        assert!(
            stored.contains("region"),
            "{what}: debugfs ea_get: {stored}"
        );
        assert_eq!(
            get_xattr(&root.join("etc/hostname"), "user.maas"),
            Ok(b"region".to_vec()),
            "{what}"
        );
    }
    // A random read in the middle of a large file.
    let f = fs::File::open(root.join("usr/lib/big.so")).unwrap();
    let mut buf = vec![0; 100_000];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 1_234_567).unwrap();
    assert_eq!(buf, bytes(3, 3_000_000)[1_234_567..1_334_567], "{what}");
}

#[test]
fn disk_images_through_the_mount_match_debugfs_and_mtools() {
    if !fuse_or_skip("disk_images_through_the_mount_match_debugfs_and_mtools") || !have_disk_tools()
    {
        return;
    }
    let im = make_images();
    let src = SrcTree::new();
    for (version, image) in [
        ("1", &im.gpt),
        ("2", &im.mbr),
        ("3", &im.ext4),
        ("4", &im.fat),
    ] {
        let to = src.path().join(format!("{NOBLE}/{version}/root-dd"));
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(image, &to).unwrap();
    }
    // Cut short 64 KiB into p2: p1 whole, p2's file system past the end.
    let gpt = fs::read(&im.gpt).unwrap();
    let p2 = starts(&im.gpt)[1] as usize * 512;
    src.add(&format!("{NOBLE}/5/root-dd"), &gpt[..p2 + (64 << 10)]);
    // Neither a table nor a file system.
    src.add(&format!("{NOBLE}/6/root-dd"), &bytes(7, 300_000));
    let pg = Cluster::start();
    let db = pg.conninfo("postgres");
    pgbootfs_ok(&db, &["import", src.path().to_str().unwrap()]);
    let mnt = Mount::start(&db, &["--inside"]);
    let w = im.work.path();

    let disk = |v: &str| mnt.path(&format!(".inside/{NOBLE}/{v}/root-dd"));
    assert_eq!(
        run(&format!("ls '{}'", disk("1").display()))
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["p1", "p2", "p3"]
    );
    assert_eq!(
        run(&format!("ls '{}'", disk("2").display()))
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["p1", "p2"]
    );
    let ext_want = w.join("debugfs");
    assert_ext(
        &disk("1").join("p1"),
        &im.ext4,
        &ext_want,
        im.xattr,
        "GPT p1",
    );
    assert_ext(
        &disk("2").join("p2"),
        &im.ext4,
        &w.join("debugfs2"),
        im.xattr,
        "MBR p2",
    );
    assert_ext(
        &disk("3"),
        &im.ext4,
        &w.join("debugfs3"),
        im.xattr,
        "whole-disk ext4",
    );
    let fat_want = mtools_listing(&im.fat, &w.join("mcopy"));
    assert!(
        fat_want.contains_key("A rather long file name.txt"),
        "{fat_want:?}"
    );
    for (root, what) in [
        (disk("1").join("p2"), "GPT p2"),
        (disk("2").join("p1"), "MBR p1"),
        (disk("4"), "whole-disk FAT"),
    ] {
        assert_same(&root, &fat_want, &w.join("mcopy"), true, what);
    }
    // The same listing as mdir gives, names and sizes.
    let mdir = run(&format!("mdir -/ -a -b -i '{}' ::/", im.fat.display()));
    let mut from_mdir: Vec<String> = mdir
        .lines()
        .map(|l| {
            l.trim_start_matches("::/")
                .trim_end_matches('/')
                .to_string()
        })
        .filter(|l| !l.is_empty() && !l.ends_with("/.") && !l.ends_with("/.."))
        .collect();
    from_mdir.sort();
    let mut from_mount: Vec<String> = find_listing(&disk("4"), false).into_keys().collect();
    from_mount.sort();
    assert_eq!(from_mount, from_mdir);

    // A partition with no file system is listed; listing it fails, once logged.
    let p3 = disk("1").join("p3");
    assert!(fs::metadata(&p3).unwrap().is_dir());
    let e = listing_error(&p3);
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    // The cut disk: p1 reads, p2 fails with EIO and one line naming it.
    let cut = disk("5");
    assert_eq!(
        fs::read(cut.join("p1/etc/hostname")).unwrap(),
        b"maas-node\n"
    );
    for _ in 0..2 {
        let e = listing_error(&cut.join("p2"));
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    }
    let image = format!("/{NOBLE}/5/root-dd");
    let lines = log_lines(&mnt.log(), &[&image, "p2: ", "corrupt or truncated"]);
    assert_eq!(lines.len(), 1, "{lines:?}\n{}", mnt.log());
    let e = listing_error(&disk("6"));
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(
        mnt.log().contains(&format!(
            "/{NOBLE}/6/root-dd: unsupported: no partition table"
        )),
        "{}",
        mnt.log()
    );
    assert!(!mnt.log().contains("panicked"), "{}", mnt.log());
    // The outer tree is as it was.
    assert_eq!(
        read_all(&mnt.path(&format!("{NOBLE}/6/root-dd"))).unwrap(),
        bytes(7, 300_000)
    );
}

#[test]
fn serve_inside_serves_disk_partitions_and_their_errors() {
    use crate::common::http::Server;
    if !have_disk_tools() {
        return;
    }
    let im = make_images();
    let src = SrcTree::new();
    let gpt = fs::read(&im.gpt).unwrap();
    src.add(&format!("{NOBLE}/1/root-dd"), &gpt);
    let p2 = starts(&im.gpt)[1] as usize * 512;
    src.add(&format!("{NOBLE}/2/root-dd.raw"), &gpt[..p2 + (64 << 10)]);
    let pg = Cluster::start();
    let db = pg.conninfo("postgres");
    pgbootfs_ok(&db, &["import", src.path().to_str().unwrap()]);
    let s = Server::start(&db, &["--inside"]);

    let names = |path: &str| -> Vec<(String, String)> {
        let r = s.get(path, &["Accept: application/json"]);
        assert_eq!(r.status, 200, "{path}");
        let list: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let mut v: Vec<_> = list
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
        v.sort();
        v
    };
    let at = format!("/.inside/{NOBLE}/1/root-dd");
    assert_eq!(
        names(&format!("{at}/")),
        [("p1", "dir"), ("p2", "dir"), ("p3", "dir")].map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let etc = names(&format!("{at}/p1/etc/"));
    assert!(
        etc.contains(&("absolute".into(), "symlink".into())),
        "{etc:?}"
    );
    assert!(etc.contains(&("hostname".into(), "file".into())), "{etc:?}");
    // Files by a real client, whole and by range.
    let sum = run(&format!(
        "curl -sf '{}' | sha256sum",
        s.url(&format!("{at}/p1/usr/lib/big.so"))
    ));
    assert_eq!(
        sum.split_whitespace().next(),
        Some(sha256_hex(&bytes(3, 3_000_000)).as_str())
    );
    let part = run(&format!(
        "curl -sf -r 1000000-1999999 '{}' | sha256sum",
        s.url(&format!("{at}/p2/EFI/ubuntu/shimx64.efi"))
    ));
    assert_eq!(
        part.split_whitespace().next(),
        Some(sha256_hex(&bytes(6, 1_300_000)[1_000_000..]).as_str())
    );
    let r = s.get(&format!("{at}/p2/A%20rather%20long%20file%20name.txt"), &[]);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"long names\n"[..]));
    // Private files stay private; symlinks are not followed.
    assert_eq!(s.get(&format!("{at}/p1/etc/shadow"), &[]).status, 403);
    assert_eq!(s.get(&format!("{at}/p1/bin/su"), &[]).status, 404);
    // An unformatted partition and a cut one: 422, the rest still answers.
    assert_eq!(s.get(&format!("{at}/p3/"), &[]).status, 422);
    let cut = format!("/.inside/{NOBLE}/2/root-dd.raw");
    assert_eq!(s.get(&format!("{cut}/p2/"), &[]).status, 422);
    let r = s.get(&format!("{cut}/p1/etc/hostname"), &[]);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"maas-node\n"[..]));
    let log = s.log();
    assert!(
        log.contains(&format!("/{NOBLE}/2/root-dd.raw")) && log.contains("p2: "),
        "{log}"
    );
    assert!(log.contains("p3: no ext2/3/4 or FAT file system"), "{log}");
}
