//! The disk reader against disks made by sgdisk, sfdisk, mkfs.ext2/ext4 and
//! mkfs.vfat + mcopy, and against damage.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

use super::*;
use crate::inside::testing::{self, noise, walk};
use crate::inside::{EntryKind, MemBytes};

fn have_tools() -> bool {
    let ok = ["mkfs.ext4", "mkfs.vfat", "mcopy", "sgdisk", "sfdisk"]
        .iter()
        .all(|t| {
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {t}"))
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

fn run(cmd: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tree for ext: small, large and sparse files, a nested directory, a
/// symlink, a hard link and a setuid file.
fn ext_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("etc/deep/er")).unwrap();
    std::fs::write(dir.join("hello"), b"hello\n").unwrap();
    std::fs::write(dir.join("etc/big"), noise(1, 1_500_000)).unwrap();
    std::fs::write(dir.join("etc/deep/er/tiny"), b"x").unwrap();
    let f = std::fs::File::create(dir.join("sparse")).unwrap();
    f.set_len(5 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &noise(2, 10_000), 3 << 20).unwrap();
    std::fs::write(dir.join("suid"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(dir.join("suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    symlink("../hello", dir.join("etc/link")).unwrap();
    symlink("x".repeat(100), dir.join("long-link")).unwrap();
    std::fs::hard_link(dir.join("hello"), dir.join("etc/hard")).unwrap();
}

/// A tree for FAT: long and short names, upper and lower case, nesting.
fn fat_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("EFI/ubuntu")).unwrap();
    std::fs::write(dir.join("EFI/ubuntu/grub.cfg"), b"search\n").unwrap();
    std::fs::write(dir.join("EFI/ubuntu/shimx64.efi"), noise(3, 300_000)).unwrap();
    std::fs::write(dir.join("A long file name.txt"), b"long\n").unwrap();
    std::fs::write(dir.join("UPPER.TXT"), b"upper\n").unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
}

fn mkfs_ext(tree: &Path, out: &Path, args: &str, mib: u32) {
    run(&format!(
        "mkfs.ext4 -q -F {args} -d '{}' '{}' {mib}M",
        tree.display(),
        out.display()
    ));
}

fn mkfs_fat(tree: &Path, out: &Path, args: &str, kib: u32) {
    run(&format!(
        "rm -f '{o}' && mkfs.vfat -C {args} '{o}' {kib} >/dev/null && mcopy -s -m -i '{o}' '{t}'/* ::/",
        o = out.display(),
        t = tree.display()
    ));
}

/// The partitions' first sectors and sizes, as sfdisk reads the table.
fn sfdisk_parts(disk: &Path) -> Vec<(u32, u64, u64)> {
    let out = Command::new("sfdisk").arg("-J").arg(disk).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let node = p["node"].as_str().unwrap();
            let n: u32 = node
                .rsplit(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap();
            (n, p["start"].as_u64().unwrap(), p["size"].as_u64().unwrap())
        })
        .collect()
}

fn put(disk: &Path, image: &Path, sector: u64) {
    run(&format!(
        "dd if='{}' of='{}' bs=512 seek={sector} conv=notrunc status=none",
        image.display(),
        disk.display()
    ));
}

struct Made {
    _dir: tempfile::TempDir,
    gpt: Vec<u8>,
    mbr: Vec<u8>,
    ext4: Vec<u8>,
    fat: Vec<u8>,
}

/// A GPT disk (p1 ext4, p2 FAT16 ESP, p3 unformatted) and an MBR disk (p1
/// FAT12, p2 ext4, p5 a logical ext2 with 1 KiB blocks).
fn make() -> Made {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (et, ft) = (d.join("ext"), d.join("fat"));
    ext_tree(&et);
    fat_tree(&ft);
    let ext4 = d.join("ext4.img");
    mkfs_ext(&et, &ext4, "-b 4096", 24);
    let ext2 = d.join("ext2.img");
    mkfs_ext(&et, &ext2, "-t ext2 -b 1024", 12);
    let fat = d.join("fat.img");
    mkfs_fat(&ft, &fat, "-F 16", 20 << 10);
    let fat12 = d.join("fat12.img");
    mkfs_fat(&ft, &fat12, "-F 12", 2 << 10);

    let gpt = d.join("gpt.img");
    run(&format!(
        "truncate -s 64M '{g}' && sgdisk -n 1:2048:+24M -t 1:8300 -n 2:0:+20M -t 2:ef00 -n 3:0:+1M '{g}' >/dev/null",
        g = gpt.display()
    ));
    let parts = sfdisk_parts(&gpt);
    put(&gpt, &ext4, parts[0].1);
    put(&gpt, &fat, parts[1].1);

    let mbr = d.join("mbr.img");
    run(&format!(
        "truncate -s 64M '{m}' && printf 'label: dos\\nsize=2M, type=1\\nsize=24M, type=83\\ntype=5\\nsize=12M, type=83\\n' | sfdisk -q '{m}'",
        m = mbr.display()
    ));
    let parts = sfdisk_parts(&mbr);
    assert_eq!(parts.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2, 3, 5]);
    put(&mbr, &fat12, parts[0].1);
    put(&mbr, &ext4, parts[1].1);
    put(&mbr, &ext2, parts[3].1);
    Made {
        gpt: std::fs::read(&gpt).unwrap(),
        mbr: std::fs::read(&mbr).unwrap(),
        ext4: std::fs::read(&ext4).unwrap(),
        fat: std::fs::read(&fat).unwrap(),
        _dir: dir,
    }
}

fn open(data: &[u8]) -> Disk {
    Disk::open(Arc::new(MemBytes {
        name: "/t/root-dd".into(),
        data: data.to_vec(),
    }))
    .unwrap()
}

fn names(a: &dyn Archive, id: u64) -> Vec<String> {
    let mut v: Vec<String> = a.list(id).unwrap().iter().map(|d| d.name.clone()).collect();
    v.sort();
    v
}

fn read_all(a: &dyn Archive, id: u64) -> Vec<u8> {
    testing::read_all(a, id, 70_001)
}

/// Asserts equal contents without printing megabytes.
fn same(got: Vec<u8>, want: &[u8], what: &str) {
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: {} bytes, want {}; first difference at {first:?}",
            got.len(),
            want.len()
        );
    }
}

/// The ext tree at `root` (a path from the archive's root, "" for the root).
fn check_ext(a: &dyn Archive, root: &str) {
    check_ext_but(a, root, true)
}

/// [`check_ext`], the sparse file left out if not `sparse`.
fn check_ext_but(a: &dyn Archive, root: &str, sparse: bool) {
    let at = |p: &str| walk(a, &format!("{root}{p}"));
    let top = if root.is_empty() {
        a.root()
    } else {
        walk(a, root.trim_end_matches('/'))
    };
    let mut want = vec!["etc", "hello", "long-link", "lost+found", "sparse", "suid"];
    want.retain(|n| sparse || *n != "sparse");
    assert_eq!(names(a, top), want);
    same(read_all(a, at("hello")), b"hello\n", "hello");
    same(read_all(a, at("etc/big")), &noise(1, 1_500_000), "etc/big");
    same(
        read_all(a, at("etc/deep/er/tiny")),
        b"x",
        "etc/deep/er/tiny",
    );
    if sparse {
        let mut want = vec![0; 5 << 20];
        want[3 << 20..(3 << 20) + 10_000].copy_from_slice(&noise(2, 10_000));
        same(read_all(a, at("sparse")), &want, "sparse");
    }
    let suid = a.entry(at("suid")).unwrap();
    assert_eq!((suid.mode, suid.kind.clone()), (0o4755, EntryKind::File));
    let link = a.entry(at("etc/link")).unwrap();
    assert_eq!(link.kind, EntryKind::Symlink(b"../hello".to_vec()));
    assert_eq!(link.size, 8);
    let long = a.entry(at("long-link")).unwrap();
    assert_eq!(long.kind, EntryKind::Symlink(vec![b'x'; 100]));
    let (h, hard) = (at("hello"), at("etc/hard"));
    assert_eq!(h, hard, "a hard link is the same id");
    assert_eq!(a.entry(h).unwrap().nlink, 2);
    let etc = a.entry(at("etc")).unwrap();
    assert_eq!(etc.kind, EntryKind::Dir);
    assert!(
        a.list(top)
            .unwrap()
            .iter()
            .any(|d| d.name == "etc" && d.dir)
    );
}

fn check_fat(a: &dyn Archive, root: &str) {
    let at = |p: &str| walk(a, &format!("{root}{p}"));
    let top = if root.is_empty() {
        a.root()
    } else {
        walk(a, root.trim_end_matches('/'))
    };
    assert_eq!(
        names(a, top),
        ["A long file name.txt", "EFI", "UPPER.TXT", "empty"]
    );
    same(
        read_all(a, at("EFI/ubuntu/shimx64.efi")),
        &noise(3, 300_000),
        "EFI/ubuntu/shimx64.efi",
    );
    same(
        read_all(a, at("EFI/ubuntu/grub.cfg")),
        b"search\n",
        "EFI/ubuntu/grub.cfg",
    );
    same(
        read_all(a, at("A long file name.txt")),
        b"long\n",
        "A long file name.txt",
    );
    same(read_all(a, at("empty")), b"", "empty");
    let f = a.entry(at("UPPER.TXT")).unwrap();
    assert_eq!((f.mode, f.uid, f.gid, f.size), (0o644, 0, 0, 6));
    let d = a.entry(at("EFI")).unwrap();
    assert_eq!((d.kind, d.mode), (EntryKind::Dir, 0o755));
}

#[test]
fn gpt_and_mbr_disks_show_their_partitions_numbered_as_the_kernel_does() {
    if !have_tools() {
        return;
    }
    let m = make();
    let gpt = open(&m.gpt);
    assert_eq!(names(&gpt, gpt.root()), ["p1", "p2", "p3"]);
    let p = gpt.partitions();
    assert_eq!((p[0].start, p[0].len), (2048 * 512, 24 << 20));
    assert!(
        p[1].kind.contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
        "{}",
        p[1].kind
    );
    check_ext(&gpt, "p1/");
    check_fat(&gpt, "p2/");
    // An unformatted partition is listed; listing it names it and the reason.
    let p3 = walk(&gpt, "p3");
    assert_eq!(gpt.entry(p3).unwrap().kind, EntryKind::Dir);
    let e = gpt.list(p3).unwrap_err();
    assert!(matches!(e.reason, Reason::Unsupported(_)), "{e}");
    assert!(
        e.to_string()
            .contains("/t/root-dd: unsupported: p3: no ext2/3/4 or FAT"),
        "{e}"
    );

    let mbr = open(&m.mbr);
    assert_eq!(names(&mbr, mbr.root()), ["p1", "p2", "p5"]);
    check_fat(&mbr, "p1/");
    check_ext(&mbr, "p2/");
    check_ext(&mbr, "p5/");
}

#[test]
fn a_disk_without_a_table_is_its_file_system() {
    if !have_tools() {
        return;
    }
    let m = make();
    let ext = open(&m.ext4);
    check_ext(&ext, "");
    let fat = open(&m.fat);
    check_fat(&fat, "");
    let e = Disk::open(Arc::new(MemBytes {
        name: "/t/root-dd".into(),
        data: noise(9, 100_000),
    }))
    .err()
    .unwrap();
    assert!(e.to_string().contains("no partition table"), "{e}");
}

#[test]
fn inline_data_and_xattrs_read_as_stored() {
    if !have_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("t");
    ext_tree(&tree);
    // mke2fs 1.47 with inline_data stores a trailing hole's file short.
    std::fs::remove_file(tree.join("sparse")).unwrap();
    for i in 0..40 {
        std::fs::write(tree.join(format!("etc/deep/n{i}")), format!("{i}\n")).unwrap();
    }
    // A POSIX ACL (user 1234 may read), in the xattr form, where the build
    // directory keeps ACLs: mkfs.ext4 stores it in ext4's compact form.
    let acl: Vec<u8> = [
        (1u16, 6u16, u32::MAX),
        (2, 4, 1234),
        (4, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 4, u32::MAX),
    ]
    .iter()
    .fold(2u32.to_le_bytes().to_vec(), |mut v, (tag, perm, id)| {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
        v
    });
    let acl_set = {
        let p = std::ffi::CString::new(tree.join("etc/big").to_str().unwrap()).unwrap();
        let n = c"system.posix_acl_access";
        // SAFETY: valid NUL-terminated strings and a buffer of the given length.
        unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), acl.as_ptr().cast(), acl.len(), 0) == 0 }
    };
    let img = dir.path().join("inline.img");
    mkfs_ext(&tree, &img, "-O inline_data -I 256", 16);
    // An xattr set with debugfs, so it does not depend on the build directory.
    run(&format!(
        "debugfs -w -R 'ea_set /hello user.maas region' '{}' 2>/dev/null",
        img.display()
    ));
    let a = open(&std::fs::read(&img).unwrap());
    check_ext_but(&a, "", false);
    for i in 0..40 {
        let f = walk(&a, &format!("etc/deep/n{i}"));
        assert_eq!(read_all(&a, f), format!("{i}\n").as_bytes());
    }
    if acl_set {
        let x = a.entry(walk(&a, "etc/big")).unwrap().xattrs;
        assert!(
            x.contains(&(b"system.posix_acl_access".to_vec(), acl.clone())),
            "{x:?}"
        );
    } else {
        eprintln!("no POSIX ACLs where the test builds: the ACL is not checked");
    }
    let x = a.entry(walk(&a, "hello")).unwrap().xattrs;
    assert!(
        x.contains(&(b"user.maas".to_vec(), b"region".to_vec())),
        "{x:?}"
    );
}

/// Walks everything below `id`, reading every file; depth bounded, since a
/// damaged directory may name its own ancestor. How many calls failed.
fn walk_all(a: &dyn Archive, id: u64, depth: u32) -> usize {
    if depth > 6 {
        return 0;
    }
    let Ok(list) = a.list(id) else { return 1 };
    let mut failed = 0;
    for d in list.iter().take(200) {
        match a.entry(d.id) {
            Ok(e) if e.kind == EntryKind::Dir => failed += walk_all(a, d.id, depth + 1),
            Ok(e) if e.kind == EntryKind::File => {
                let mut buf = vec![0; 1 << 20];
                failed += usize::from(a.read(d.id, 0, &mut buf).is_err());
                let end = e.size.saturating_sub(100);
                failed += usize::from(a.read(d.id, end, &mut buf).is_err());
            }
            Ok(_) => {}
            Err(_) => failed += 1,
        }
    }
    failed
}

/// A disk that is mostly metadata: an MBR with a 4 MiB ext4 (1 KiB blocks, no
/// journal) and twice (a primary and a logical partition) a 1 MiB FAT12 of hundreds of small files in nested directories
/// (the FAT without symlinks: mcopy does not copy dangling ones).
fn metadata_disk() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tree = d.join("t");
    for i in 0..200 {
        let sub = tree.join(format!("d{}/e{}", i % 7, i % 3));
        std::fs::create_dir_all(&sub).unwrap();
        // Zeros: the bytes that are not zero are then the metadata.
        std::fs::write(
            sub.join(format!("a file named {i}")),
            vec![0; i as usize * 13],
        )
        .unwrap();
        if i % 20 == 0 && i % 7 != 1 {
            symlink(format!("../{i}"), sub.join(format!("l{i}"))).unwrap();
        }
    }
    std::fs::write(tree.join("d0/medium"), vec![0; 40_000]).unwrap();
    let (ext, fat, disk) = (d.join("e.img"), d.join("f.img"), d.join("disk.img"));
    mkfs_ext(&tree, &ext, "-O ^has_journal", 4);
    mkfs_fat(&tree.join("d1"), &fat, "-F 12", 1 << 10);
    run(&format!(
        "truncate -s 8M '{m}' && printf 'label: dos\nsize=4M, type=83\nsize=1M, type=1\ntype=5\nsize=1M, type=1\n' | sfdisk -q '{m}'",
        m = disk.display()
    ));
    let starts = sfdisk_parts(&disk);
    put(&disk, &ext, starts[0].1);
    put(&disk, &fat, starts[1].1);
    put(&disk, &fat, starts[3].1);
    std::fs::read(&disk).unwrap()
}

#[test]
fn damage_anywhere_in_the_metadata_is_an_error_never_a_panic_or_a_hang() {
    if !have_tools() {
        return;
    }
    let disk = metadata_disk();
    let whole = open(&disk);
    assert_eq!(names(&whole, whole.root()), ["p1", "p2", "p5"]);
    assert_eq!(walk_all(&whole, whole.root(), 0), 0);
    // Where the bytes are not zero: the tables, superblocks, descriptors,
    // inodes, extents, directories and FATs, not the files or empty space.
    let live: Vec<usize> = (0..disk.len()).filter(|i| disk[*i] != 0).collect();
    let mut x: u64 = 42;
    let mut rnd = |n: usize| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) as usize % n
    };
    let mut failures = 0;
    for _ in 0..300 {
        let mut data = disk.clone();
        for _ in 0..4 {
            data[live[rnd(live.len())]] ^= 1 << rnd(8);
        }
        match Disk::open(Arc::new(MemBytes {
            name: "/t/root-dd".into(),
            data,
        })) {
            Ok(d) => failures += walk_all(&d, d.root(), 0),
            Err(_) => failures += 1,
        }
    }
    // The damage was seen (the walk is not vacuous), and nothing panicked.
    eprintln!("damage: {failures} failed calls");
    assert!(failures > 30, "{failures} failures");
}

#[test]
fn a_disk_cut_short_reads_up_to_its_end() {
    if !have_tools() {
        return;
    }
    let m = make();
    // Cut short 16 KiB into p2: the table reads, p1 is whole, p2's root
    // directory (after its FATs) is past the end.
    let p2 = open(&m.gpt).partitions()[1].start as usize;
    let cut = open(&m.gpt[..p2 + (16 << 10)]);
    let p2 = walk(&cut, "p2");
    let e = cut.list(p2).unwrap_err();
    assert!(e.to_string().contains("corrupt or truncated"), "{e}");
    assert!(e.to_string().contains("p2: "), "{e}");
    check_ext(&cut, "p1/");
}

#[test]
fn a_looping_cluster_chain_is_an_error_not_a_repeat() {
    if !have_tools() {
        return;
    }
    let m = make();
    let le16 = |d: &[u8], at: usize| usize::from(u16::from_le_bytes([d[at], d[at + 1]]));
    let fat_start = le16(&m.fat, 14) * le16(&m.fat, 11);
    // Points cluster `c`'s FAT16 entry at itself.
    let looped = |id: u64| {
        let mut data = m.fat.clone();
        let e = id as usize * 32;
        let c = le16(&data, e + 26);
        data[fat_start + 2 * c..fat_start + 2 * c + 2].copy_from_slice(&(c as u16).to_le_bytes());
        Disk::open(Arc::new(MemBytes {
            name: "/t/root-dd".into(),
            data,
        }))
        .unwrap()
    };
    let good = open(&m.fat);
    let efi = walk(&good, "EFI/ubuntu");
    let e = looped(efi).list(efi).unwrap_err();
    assert!(e.to_string().contains("loops back"), "{e}");
    let shim = walk(&good, "EFI/ubuntu/shimx64.efi");
    let bad = looped(shim);
    let e = bad.read(shim, 0, &mut [0; 4096]).unwrap_err();
    assert!(e.to_string().contains("loops back"), "{e}");
    assert!(matches!(e.reason, Reason::Corrupt(_)));
}

/// A GPT written here (sfdisk and sgdisk make 512-byte sectors on a file):
/// `parts` as (first, last) LBAs of Linux partitions, with `sector`-byte
/// sectors, a primary and a backup header.
fn gpt_by_hand(disk: &mut [u8], sector: usize, parts: &[(u64, u64)]) {
    let lbas = (disk.len() / sector) as u64;
    let mut entries = vec![0u8; 128 * 128];
    // Linux filesystem data, 0FC63DAF-8483-4772-8E79-3D69D8477DE4, as stored.
    let linux = [
        0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d,
        0xe4,
    ];
    for (i, (first, last)) in parts.iter().enumerate() {
        let e = &mut entries[i * 128..];
        e[..16].copy_from_slice(&linux);
        e[16] = i as u8 + 1;
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&last.to_le_bytes());
    }
    let array_lbas = (entries.len() / sector).max(1) as u64;
    let header = |me: u64, other: u64, array: u64| {
        let mut h = vec![0u8; 92];
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&me.to_le_bytes());
        h[32..40].copy_from_slice(&other.to_le_bytes());
        h[40..48].copy_from_slice(&(2 + array_lbas).to_le_bytes());
        h[48..56].copy_from_slice(&(lbas - 2 - array_lbas).to_le_bytes());
        h[72..80].copy_from_slice(&array.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&crc32fast::hash(&entries).to_le_bytes());
        let crc = crc32fast::hash(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    let last = lbas - 1;
    let backup_array = last - array_lbas;
    for (me, other, array) in [(1, last, 2), (last, 1, backup_array)] {
        let at = me as usize * sector;
        disk[at..at + 92].copy_from_slice(&header(me, other, array));
        let at = array as usize * sector;
        disk[at..at + entries.len()].copy_from_slice(&entries);
    }
    // The protective MBR.
    disk[446 + 4] = 0xee;
    disk[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    disk[446 + 12..446 + 16].copy_from_slice(&u32::MAX.to_le_bytes());
    disk[510..512].copy_from_slice(&[0x55, 0xaa]);
}

#[test]
fn a_gpt_with_4096_byte_sectors_and_a_damaged_primary_header_reads() {
    if !have_tools() {
        return;
    }
    let m = make();
    let mut disk = vec![0u8; 32 << 20];
    // p1 at LBA 256 (1 MiB), the FAT16 image; p2 empty.
    let lbas = m.fat.len() as u64 / 4096;
    gpt_by_hand(&mut disk, 4096, &[(256, 256 + lbas - 1), (6000, 6100)]);
    disk[1 << 20..(1 << 20) + m.fat.len()].copy_from_slice(&m.fat);
    // p2 starts as an XFS root does: named in the error, not read.
    disk[6000 * 4096..6000 * 4096 + 4].copy_from_slice(b"XFSB");
    let d = open(&disk);
    assert_eq!(names(&d, d.root()), ["p1", "p2"]);
    assert_eq!(d.partitions()[0].start, 1 << 20);
    check_fat(&d, "p1/");
    let e = d.list(walk(&d, "p2")).unwrap_err();
    assert!(
        e.to_string().contains(
            "p2: an XFS file system, which is not read (ext2/3/4 and FAT are; GPT type 0FC63DAF"
        ),
        "{e}"
    );
    // The primary header damaged: the backup one is used.
    disk[4096 + 40] ^= 1;
    let d = open(&disk);
    check_fat(&d, "p1/");
    // Both damaged: an error naming the GPT.
    let last = disk.len() - 4096;
    disk[last + 40] ^= 1;
    let e = Disk::open(Arc::new(MemBytes {
        name: "/t/root-dd".into(),
        data: disk,
    }))
    .err()
    .unwrap();
    assert!(e.to_string().contains("GPT header"), "{e}");
}

/// `root-dd.gz`, `.bz2` and `.xz` (several blocks, as `xz -T` writes): the same
/// partitions and files through the random-access view of the decompressed
/// image as from the raw disk.
#[test]
fn compressed_disks_read_as_the_raw_one() {
    if !have_tools() {
        return;
    }
    let m = make();
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("gpt.img");
    std::fs::write(&raw, &m.gpt).unwrap();
    for (codec, cmd) in [
        (crate::inside::stream::Codec::Gzip, "gzip -c"),
        (crate::inside::stream::Codec::Bzip2, "bzip2 -c"),
        (
            crate::inside::stream::Codec::Xz,
            "xz -T1 --block-size=4MiB -c",
        ),
    ] {
        let out = dir.path().join("packed");
        run(&format!("{cmd} '{}' > '{}'", raw.display(), out.display()));
        let bytes = Arc::new(MemBytes {
            name: "/t/root-dd.packed".into(),
            data: std::fs::read(&out).unwrap(),
        });
        let view = crate::inside::stream::random_access(bytes, codec, None).unwrap();
        assert_eq!(view.size(), m.gpt.len() as u64, "{codec:?}");
        let disk = Disk::open(view).unwrap();
        assert_eq!(names(&disk, disk.root()), ["p1", "p2", "p3"], "{codec:?}");
        check_ext(&disk, "p1/");
        check_fat(&disk, "p2/");
    }
}

/// `root-dd.tar`, `.tar.xz` and `.tar.bz2`: the tarball's one file is the disk.
#[test]
fn disks_in_tarballs_read_as_the_raw_one() {
    if !have_tools() {
        return;
    }
    let m = make();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("root.img"), &m.gpt).unwrap();
    let tarball = dir.path().join("root-dd.tar");
    run(&format!(
        "tar cf '{}' -C '{}' root.img",
        tarball.display(),
        dir.path().display()
    ));
    for (filetype, cmd) in [
        ("root-dd.tar", "cat"),
        ("root-dd.tar.xz", "xz -T1 --block-size=4MiB -c"),
        ("root-dd.tar.bz2", "bzip2 -c"),
    ] {
        let out = dir.path().join("packed");
        run(&format!(
            "{cmd} '{}' > '{}'",
            tarball.display(),
            out.display()
        ));
        let bytes = Arc::new(MemBytes {
            name: format!("/t/{filetype}"),
            data: std::fs::read(&out).unwrap(),
        });
        let format = crate::inside::Format::of(filetype).unwrap();
        let disk = crate::inside::open(format, bytes).unwrap();
        assert_eq!(names(&*disk, disk.root()), ["p1", "p2", "p3"], "{filetype}");
        check_fat(&*disk, "p2/");
    }
    // A tarball with no file in it says so.
    run(&format!(
        "tar cf '{}' -C '{}' --no-recursion .",
        tarball.display(),
        dir.path().display()
    ));
    let bytes = Arc::new(MemBytes {
        name: "/t/root-dd.tar".into(),
        data: std::fs::read(&tarball).unwrap(),
    });
    let e = crate::inside::open(
        crate::inside::Format::DiskTar(crate::inside::stream::Codec::Raw),
        bytes,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("no file in it"), "{e}");
}
