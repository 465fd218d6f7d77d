//! The tree built from rows: inodes, completeness, changes.

use super::*;

#[test]
fn component_rules() {
    for good in ["ubuntu", "boot-kernel", "20240101.1", "a b", "ga-20.04"] {
        assert!(valid_component(good), "{good}");
    }
    for bad in ["", ".", "..", "a/b", "a\0b"] {
        assert!(!valid_component(bad), "{bad:?}");
    }
}

#[test]
fn inode_numbers_are_stable_and_never_reused() {
    let mut t = InodeTable::default();
    let a = t.ino("/ubuntu");
    let b = t.ino("/ubuntu/amd64");
    assert_ne!(a, ROOT);
    assert_ne!(a, b);
    assert_eq!(t.ino("/ubuntu"), a);
    assert!(t.ino("/x") > b);
}

/// A tree of `(path, sha256)` files, numbered by `inodes`.
fn tree(inodes: &mut InodeTable, files: &[(&str, &str)]) -> Tree {
    let mut t = Tree::default();
    t.nodes.insert(ROOT, dir_node(ROOT, ROOT, "/".into()));
    for (path, sha) in files {
        let (dirs, name) = path.rsplit_once('/').unwrap();
        let mut parent = ROOT;
        let mut at = String::new();
        for d in dirs.split('/').skip(1) {
            at = format!("{at}/{d}");
            parent = t.ensure_dir(inodes, parent, &at, d, UNIX_EPOCH);
        }
        let ino = inodes.ino(&format!("{path}\0{sha}"));
        assert!(t.add_child(parent, name, ino));
        let kind = NodeKind::File(FileInfo {
            oid: 1,
            size: 1,
            sha256: sha.to_string(),
            filetype: String::new(),
            stored: None,
        });
        let path = path.to_string();
        let mtime = UNIX_EPOCH;
        t.nodes.insert(
            ino,
            Node {
                ino,
                parent,
                path,
                mtime,
                kind,
            },
        );
    }
    t
}

#[test]
fn changes_name_what_the_kernel_must_forget() {
    let mut inodes = InodeTable::default();
    let old = tree(
        &mut inodes,
        &[("/u/a/1/k", "x"), ("/u/a/1/i", "y"), ("/u/b/2/k", "z")],
    );
    assert!(old.changes_since(&old).is_empty());
    // /u/a/1/k gets new content, /u/a/1/i and all of /u/b go, /u/a/3 comes.
    let new = tree(&mut inodes, &[("/u/a/1/k", "X"), ("/u/a/3/k", "x")]);
    let c = new.changes_since(&old);
    let mut ino = |p: &str| inodes.ino(p);
    let mut names = vec![
        (ino("/u/a/1"), "i".to_string()),
        (ino("/u/a/1"), "k".to_string()),
        (ino("/u"), "b".to_string()),
        (ino("/u/b"), "2".to_string()),
        (ino("/u/b/2"), "k".to_string()),
    ];
    names.sort_unstable();
    assert_eq!(c.names, names);
    let mut dirs = vec![
        ino("/u"),
        ino("/u/a"),
        ino("/u/a/1"),
        ino("/u/b"),
        ino("/u/b/2"),
    ];
    dirs.sort_unstable();
    assert_eq!(c.dirs, dirs);
    assert!(c.files.is_empty());
}

#[test]
fn a_directory_mtime_moves_whenever_its_listing_changes() {
    let mut inodes = InodeTable::default();
    let files = [("/u/a/1/k", "x"), ("/u/a/2/k", "y")];
    let old = tree(&mut inodes, &files);
    let later = UNIX_EPOCH + Duration::from_secs(100);
    // Unchanged listings keep their time.
    let mut same = tree(&mut inodes, &files);
    same.carry_dir_mtimes(&old, later);
    assert_eq!(same.lookup(ROOT, "u").unwrap().mtime, UNIX_EPOCH);
    // /u/a loses a version: its mtime moves on, even though no row is newer.
    let mut fewer = tree(&mut inodes, &files[..1]);
    fewer.carry_dir_mtimes(&old, later);
    let a = inodes.ino("/u/a");
    assert_eq!(fewer.get(a).unwrap().mtime, later);
    assert_eq!(fewer.lookup(ROOT, "u").unwrap().mtime, UNIX_EPOCH);
    // Even with a clock that went back, it never moves backwards.
    let mut again = tree(&mut inodes, &files);
    again.carry_dir_mtimes(&fewer, UNIX_EPOCH);
    assert!(again.get(a).unwrap().mtime > later);
}
