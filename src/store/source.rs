//! What `pgbootfs import` reads: a directory laid out
//! `os/arch/subarch/series/version/filename`, or a simplestreams mirror (a directory
//! holding `streams/v1/index.json`, as `sstream-mirror` writes it).
//!
//! [`scan`] checks the whole source before anything is written and lists every
//! problem at once. Symbolic links are refused, not followed: the import copies
//! bytes, and a link may point outside SRC or change between check and copy.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

use super::{StoreError, resource_name};
use crate::catalog::valid_component;

/// `bootresource.rtype` for images fetched from a simplestreams source.
pub const RTYPE_SYNCED: i32 = 0;
/// `bootresource.rtype` for images an operator uploaded.
pub const RTYPE_UPLOADED: i32 = 2;
/// The label directory imports give their sets (MAAS labels uploads the same way).
pub const UPLOADED_LABEL: &str = "uploaded";

/// MAAS's file types (`BOOT_RESOURCE_FILE_TYPE`); a file named like one gets it.
pub const FILETYPES: [&str; 18] = [
    "root-tgz",
    "root-tbz",
    "root-txz",
    "root-dd",
    "root-dd.tar",
    "root-dd.raw",
    "root-dd.bz2",
    "root-dd.gz",
    "root-dd.xz",
    "root-dd.tar.bz2",
    "root-dd.tar.xz",
    "root-image.gz",
    "squashfs",
    "boot-kernel",
    "boot-initrd",
    "boot-dtb",
    "bootloader",
    "archive.tar.xz",
];

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
    /// `bootresourcefile.extra` as JSON text.
    pub extra: String,
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
    /// `bootresource.extra` as JSON text.
    pub resource_extra: String,
    /// `bootresource.kflavor`.
    pub kflavor: Option<String>,
    /// `bootresource.bootloader_type`.
    pub bootloader_type: Option<String>,
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

fn scan_dir(root: &Path, problems: &mut Vec<String>) -> Vec<SourceSet> {
    let mut sets: BTreeMap<Vec<String>, SourceSet> = BTreeMap::new();
    walk(root, root, &mut Vec::new(), problems, &mut sets);
    sets.into_values().collect()
}

/// Visits `dir` at depth `names.len()` (0 = SRC itself).
fn walk(
    root: &Path,
    dir: &Path,
    names: &mut Vec<String>,
    problems: &mut Vec<String>,
    sets: &mut BTreeMap<Vec<String>, SourceSet>,
) {
    let rel = |p: &Path| p.strip_prefix(root).unwrap_or(p).display().to_string();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            problems.push(format!("{}: cannot read directory: {e}", rel(dir)));
            return;
        }
    };
    let mut entries: Vec<_> = entries
        .filter_map(|e| match e {
            Ok(e) => Some(e),
            Err(err) => {
                problems.push(format!("{}: cannot list: {err}", rel(dir)));
                None
            }
        })
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let shown = rel(&path);
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            problems.push(format!("{shown}: name is not UTF-8"));
            continue;
        };
        if !valid_component(&name) {
            problems.push(format!("{shown}: {name:?} cannot be a path component"));
            continue;
        }
        let md = match fs::symlink_metadata(&path) {
            Ok(md) => md,
            Err(e) => {
                problems.push(format!("{shown}: cannot stat: {e}"));
                continue;
            }
        };
        let depth = names.len();
        let ft = md.file_type();
        if ft.is_symlink() {
            problems.push(format!(
                "{shown}: symbolic link (refused: copy the file itself in, e.g. with cp -L)"
            ));
        } else if ft.is_dir() {
            if depth >= 5 {
                problems.push(format!(
                    "{shown}: directory inside a version (layout is os/arch/subarch/series/version/filename)"
                ));
                continue;
            }
            names.push(name);
            walk(root, &path, names, problems, sets);
            names.pop();
        } else if !ft.is_file() {
            problems.push(format!(
                "{shown}: not a regular file (device, fifo or socket)"
            ));
        } else if depth != 5 {
            problems.push(format!(
                "{shown}: file outside the layout os/arch/subarch/series/version/filename"
            ));
        } else {
            if let Err(e) = fs::File::open(&path) {
                problems.push(format!("{shown}: cannot read: {e}"));
                continue;
            }
            let Some(filetype) = filetype_for(&name) else {
                problems.push(format!(
                    "{shown}: cannot tell its MAAS file type; name it after one of {}",
                    FILETYPES.join(", ")
                ));
                continue;
            };
            let set = sets.entry(names.clone()).or_insert_with(|| SourceSet {
                os: names[0].clone(),
                arch: names[1].clone(),
                subarch: names[2].clone(),
                series: names[3].clone(),
                version: names[4].clone(),
                label: UPLOADED_LABEL.into(),
                rtype: RTYPE_UPLOADED,
                resource_extra: "{}".into(),
                kflavor: None,
                bootloader_type: None,
                files: Vec::new(),
            });
            set.files.push(SourceFile {
                filename: name,
                filetype: filetype.into(),
                path,
                size: md.len(),
                sha256: None,
                extra: "{}".into(),
            });
        }
    }
    if names.len() == 4 {
        let [os, arch, subarch, series] = [&names[0], &names[1], &names[2], &names[3]];
        check_lengths(os, arch, subarch, series, &rel(dir), problems);
    }
}

fn check_lengths(
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

/// The attributes of one level of a products file, without its children.
fn attrs(obj: &Map<String, Value>, child: &str) -> Map<String, Value> {
    obj.iter()
        .filter(|(k, _)| k.as_str() != child)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn scan_mirror(root: &Path, problems: &mut Vec<String>) -> Vec<SourceSet> {
    let index_path = root.join("streams/v1/index.json");
    let index = match read_json(&index_path) {
        Ok(v) => v,
        Err(e) => {
            problems.push(e);
            return Vec::new();
        }
    };
    let mut sets: BTreeMap<String, SourceSet> = BTreeMap::new();
    let entries = index.get("index").and_then(Value::as_object);
    let Some(entries) = entries else {
        problems
            .push("streams/v1/index.json: no \"index\" object (not a simplestreams index)".into());
        return Vec::new();
    };
    for (content_id, entry) in entries {
        if entry.get("format").and_then(Value::as_str) != Some("products:1.0") {
            continue;
        }
        let Some(rel) = entry.get("path").and_then(Value::as_str) else {
            problems.push(format!("index entry {content_id}: no path"));
            continue;
        };
        let Some(file) = safe_join(root, rel) else {
            problems.push(format!(
                "index entry {content_id}: path {rel:?} leaves the mirror"
            ));
            continue;
        };
        match read_json(&file) {
            Ok(products) => mirror_products(root, rel, &products, problems, &mut sets),
            Err(e) => problems.push(e),
        }
    }
    sets.into_values().collect()
}

fn mirror_products(
    root: &Path,
    file: &str,
    doc: &Value,
    problems: &mut Vec<String>,
    sets: &mut BTreeMap<String, SourceSet>,
) {
    let Some(top) = doc.as_object() else {
        problems.push(format!("{file}: not a JSON object"));
        return;
    };
    let top_attrs = attrs(top, "products");
    let products = top.get("products").and_then(Value::as_object);
    for (pname, product) in products.into_iter().flatten() {
        let Some(product) = product.as_object() else {
            continue;
        };
        let mut p_attrs = top_attrs.clone();
        p_attrs.extend(attrs(product, "versions"));
        let versions = product.get("versions").and_then(Value::as_object);
        for (vname, version) in versions.into_iter().flatten() {
            let Some(version) = version.as_object() else {
                continue;
            };
            let mut v_attrs = p_attrs.clone();
            v_attrs.extend(attrs(version, "items"));
            let items = version.get("items").and_then(Value::as_object);
            for (iname, item) in items.into_iter().flatten() {
                let Some(item) = item.as_object() else {
                    continue;
                };
                let mut a = v_attrs.clone();
                a.extend(item.iter().map(|(k, v)| (k.clone(), v.clone())));
                let at = format!("{file}: {pname} {vname} {iname}");
                mirror_item(root, &at, vname, &a, problems, sets);
            }
        }
    }
}

fn mirror_item(
    root: &Path,
    at: &str,
    version: &str,
    a: &Map<String, Value>,
    problems: &mut Vec<String>,
    sets: &mut BTreeMap<String, SourceSet>,
) {
    let s = |k: &str| a.get(k).and_then(Value::as_str).map(str::to_string);
    // Items without a path (e.g. signed manifests listed elsewhere) carry no bytes.
    let Some(rel) = s("path") else {
        return;
    };
    let mut missing: Vec<&str> = ["os", "arch", "subarch", "release", "ftype", "sha256"]
        .into_iter()
        .filter(|k| s(k).is_none())
        .collect();
    let size = a.get("size").and_then(|v| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|t| t.parse().ok()))
    });
    if size.is_none() {
        missing.push("size");
    }
    if !missing.is_empty() {
        problems.push(format!("{at}: missing {}", missing.join(", ")));
        return;
    }
    let (os, arch, subarch, series, ftype, sha) = (
        s("os").unwrap_or_default(),
        s("arch").unwrap_or_default(),
        s("subarch").unwrap_or_default(),
        s("release").unwrap_or_default(),
        s("ftype").unwrap_or_default(),
        s("sha256").unwrap_or_default().to_ascii_lowercase(),
    );
    let size = size.unwrap_or_default();
    let filename = rel.rsplit('/').next().unwrap_or_default().to_string();
    for part in [&os, &arch, &subarch, &series, &filename] {
        if !valid_component(part) {
            problems.push(format!("{at}: {part:?} cannot be a path component"));
            return;
        }
    }
    if !valid_component(version) {
        problems.push(format!(
            "{at}: version {version:?} cannot be a path component"
        ));
        return;
    }
    if ftype.len() > 20 {
        problems.push(format!(
            "{at}: ftype {ftype:?} is longer than MAAS's 20 bytes"
        ));
        return;
    }
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        problems.push(format!("{at}: sha256 {sha:?} is not 64 hex digits"));
        return;
    }
    check_lengths(&os, &arch, &subarch, &series, at, problems);
    let Some(path) = safe_join(root, &rel) else {
        problems.push(format!("{at}: path {rel:?} leaves the mirror"));
        return;
    };
    match fs::symlink_metadata(&path) {
        Ok(md) if md.file_type().is_symlink() => {
            problems.push(format!("{rel}: symbolic link (refused)"));
            return;
        }
        Ok(md) if !md.is_file() => {
            problems.push(format!("{rel}: not a regular file"));
            return;
        }
        Ok(md) if md.len() != size => {
            problems.push(format!(
                "{rel}: {} bytes, the index says {size} (incomplete mirror? run sstream-mirror again)",
                md.len()
            ));
            return;
        }
        Ok(_) => {}
        Err(e) => {
            problems.push(format!("{rel}: {e} (listed by {at})"));
            return;
        }
    }
    if let Err(e) = fs::File::open(&path) {
        problems.push(format!("{rel}: cannot read: {e}"));
        return;
    }
    let mut extra = Map::new();
    for k in ["kflavor", "subarches", "title"] {
        if let Some(v) = s(k) {
            extra.insert(k.into(), Value::String(v));
        }
    }
    let mut file_extra = Map::new();
    if let Some(v) = s("kpackage") {
        file_extra.insert("kpackage".into(), Value::String(v));
    }
    let key = format!("{os}/{arch}/{subarch}/{series}/{version}");
    let set = sets.entry(key).or_insert_with(|| SourceSet {
        os: os.clone(),
        arch: arch.clone(),
        subarch: subarch.clone(),
        series: series.clone(),
        version: version.to_string(),
        label: s("label").unwrap_or_else(|| "stable".into()),
        rtype: RTYPE_SYNCED,
        resource_extra: Value::Object(extra).to_string(),
        kflavor: s("kflavor"),
        bootloader_type: s("bootloader-type"),
        files: Vec::new(),
    });
    if set.files.iter().any(|f| f.filename == filename) {
        problems.push(format!(
            "{at}: two items of {} are named {filename}",
            set.path()
        ));
        return;
    }
    set.files.push(SourceFile {
        filename,
        filetype: ftype,
        path,
        size,
        sha256: Some(sha),
        extra: Value::Object(file_extra).to_string(),
    });
}

/// `root/rel` if `rel` is relative and stays inside `root`.
fn safe_join(root: &Path, rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    p.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        .then(|| root.join(p))
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text =
        fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: invalid JSON: {e}", path.display()))
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
    }

    #[test]
    fn safe_join_stays_inside() {
        let r = Path::new("/m");
        assert_eq!(safe_join(r, "a/b"), Some(PathBuf::from("/m/a/b")));
        assert_eq!(safe_join(r, "../x"), None);
        assert_eq!(safe_join(r, "/etc/passwd"), None);
    }
}
