//! What `pgbootfs import` reads: a directory laid out
//! `os/arch/subarch/series/version/filename`, or a simplestreams mirror (a directory
//! holding `streams/v1/index.json`, as `sstream-mirror` writes it).
//!
//! [`scan`] checks the whole source before anything is written and lists every
//! problem at once; [`dir`] reads a directory tree, [`mirror`] a simplestreams
//! mirror. Symbolic links are refused, not followed: the import copies
//! bytes, and a link may point outside SRC or change between check and copy.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{StoreError, resource_name};
use crate::catalog::valid_component;

mod dir;
mod mirror;

use dir::scan_dir;
use mirror::scan_mirror;

pub use crate::maas::{FILETYPES, RTYPE_SYNCED, RTYPE_UPLOADED, UPLOADED_LABEL};

/// MAAS columns are `varchar(255)`; filetype is `varchar(20)`.
const MAX_NAME: usize = 255;

/// One file to import.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// `bootresourcefile.filename`.
    pub filename: String,
    /// `bootresourcefile.filetype`.
    pub filetype: String,
    /// Where the bytes are.
    pub path: PathBuf,
    /// Size in bytes at scan time.
    pub size: u64,
    /// The sha256 the source promises (mirrors), checked while copying.
    pub sha256: Option<String>,
    /// `bootresourcefile.extra`: only the keys MAAS keeps.
    pub extra: Map<String, Value>,
}

/// One version of one resource: the unit that is written in one transaction.
#[derive(Debug, Clone)]
pub struct SourceSet {
    /// os (`custom` for a custom image).
    pub os: String,
    /// Architecture, e.g. `amd64`.
    pub arch: String,
    /// Sub-architecture, e.g. `generic`.
    pub subarch: String,
    /// Series, or the custom image's name.
    pub series: String,
    /// Version.
    pub version: String,
    /// `bootresourceset.label`.
    pub label: String,
    /// `bootresource.rtype`.
    pub rtype: i32,
    /// `bootresource.extra`: only the keys MAAS keeps.
    pub resource_extra: Map<String, Value>,
    /// `bootresource.kflavor`.
    pub kflavor: Option<String>,
    /// `bootresource.bootloader_type`.
    pub bootloader_type: Option<String>,
    /// `bootresource.rolling`.
    pub rolling: bool,
    /// The files, sorted by filename.
    pub files: Vec<SourceFile>,
}

impl SourceSet {
    /// `os/arch/subarch/series/version`.
    pub fn path(&self) -> String {
        format!(
            "{}/{}/{}/{}/{}",
            self.os, self.arch, self.subarch, self.series, self.version
        )
    }

    /// `bootresource.name`.
    pub fn name(&self) -> String {
        resource_name(&self.os, &self.series)
    }

    /// `bootresource.architecture`.
    pub fn architecture(&self) -> String {
        format!("{}/{}", self.arch, self.subarch)
    }

    /// Sum of the file sizes.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// What kind of source SRC is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A directory tree of uploaded images.
    Directory,
    /// A simplestreams mirror.
    Mirror,
}

/// A checked source: every set, sorted by path.
#[derive(Debug)]
pub struct Source {
    /// SRC.
    pub root: PathBuf,
    /// Directory or mirror.
    pub kind: SourceKind,
    /// The sets to import.
    pub sets: Vec<SourceSet>,
}

impl Source {
    /// Sum of all file sizes.
    pub fn bytes(&self) -> u64 {
        self.sets.iter().map(SourceSet::bytes).sum()
    }
}

/// Reads and checks SRC; every problem found is listed in one error.
pub fn scan(root: &Path) -> Result<Source, StoreError> {
    let mut problems = Vec::new();
    let source = match fs::metadata(root) {
        Ok(md) if md.is_dir() => {
            if root.join("streams/v1/index.json").is_file() {
                scan_mirror(root, &mut problems)
            } else {
                scan_dir(root, &mut problems)
            }
        }
        Ok(_) => {
            problems.push("not a directory".into());
            Vec::new()
        }
        Err(e) => {
            problems.push(format!("cannot read: {e}"));
            Vec::new()
        }
    };
    let kind = if root.join("streams/v1/index.json").is_file() {
        SourceKind::Mirror
    } else {
        SourceKind::Directory
    };
    if problems.is_empty() && source.is_empty() {
        problems.push(match kind {
            SourceKind::Directory => {
                "no image files found (expected os/arch/subarch/series/version/filename)".into()
            }
            SourceKind::Mirror => "the mirror lists no items with a path".into(),
        });
    }
    if !problems.is_empty() {
        return Err(StoreError::Source {
            root: root.to_path_buf(),
            problems,
        });
    }
    let mut sets: Vec<SourceSet> = source;
    sets.sort_by_key(|s| s.path());
    for s in &mut sets {
        s.files.sort_by(|a, b| a.filename.cmp(&b.filename));
    }
    Ok(Source {
        root: root.to_path_buf(),
        kind,
        sets,
    })
}

/// The MAAS file type for a file called `name` in a directory import.
pub fn filetype_for(name: &str) -> Option<&'static str> {
    if let Some(t) = FILETYPES.iter().find(|t| **t == name) {
        return Some(t);
    }
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("vmlinuz") || lower.starts_with("kernel") || lower.starts_with("linux") {
        return Some("boot-kernel");
    }
    if lower.starts_with("initrd") || lower.starts_with("initramfs") {
        return Some("boot-initrd");
    }
    let by_suffix: [(&str, &str); 12] = [
        (".tar.gz", "root-tgz"),
        (".tgz", "root-tgz"),
        (".tar.bz2", "root-tbz"),
        (".tbz", "root-tbz"),
        (".tar.xz", "root-txz"),
        (".txz", "root-txz"),
        (".squashfs", "squashfs"),
        (".dtb", "boot-dtb"),
        (".img", "root-dd.raw"),
        (".raw", "root-dd.raw"),
        (".dd.gz", "root-dd.gz"),
        (".dd.xz", "root-dd.xz"),
    ];
    by_suffix
        .iter()
        .find(|(s, _)| lower.ends_with(s))
        .map(|(_, t)| *t)
}

pub(super) fn check_lengths(
    os: &str,
    arch: &str,
    subarch: &str,
    series: &str,
    shown: &str,
    problems: &mut Vec<String>,
) {
    if resource_name(os, series).len() > MAX_NAME || arch.len() + subarch.len() + 1 > MAX_NAME {
        problems.push(format!(
            "{shown}: names longer than MAAS's {MAX_NAME} bytes"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filetypes_from_names() {
        assert_eq!(filetype_for("boot-kernel"), Some("boot-kernel"));
        assert_eq!(filetype_for("root-dd.tar.xz"), Some("root-dd.tar.xz"));
        assert_eq!(filetype_for("image.tar.gz"), Some("root-tgz"));
        assert_eq!(filetype_for("vmlinuz-6.8"), Some("boot-kernel"));
        assert_eq!(filetype_for("initrd.img"), Some("boot-initrd"));
        assert_eq!(filetype_for("README"), None);
        assert_eq!(filetype_for("manifest"), None);
    }
}
