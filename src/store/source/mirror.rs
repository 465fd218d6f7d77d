//! Reading a simplestreams mirror: `streams/v1/index.json` and the products files
//! it names, as `sstream-mirror` writes them.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

use super::*;

/// The attributes of one level of a products file, without its children.
fn attrs(obj: &Map<String, Value>, child: &str) -> Map<String, Value> {
    obj.iter()
        .filter(|(k, _)| k.as_str() != child)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

pub(super) fn scan_mirror(root: &Path, problems: &mut Vec<String>) -> Vec<SourceSet> {
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
    // The resource as MAAS's sync names it (bootloader and ubuntu-core products
    // included); the item needs ftype, sha256 and size besides.
    let named = crate::maas::synced_name(s);
    let mut missing: Vec<&str> = named.as_ref().err().cloned().unwrap_or_default();
    missing.extend(["ftype", "sha256"].into_iter().filter(|k| s(k).is_none()));
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
    let Ok(named) = named else {
        return;
    };
    let ftype = s("ftype").unwrap_or_default();
    if !FILETYPES.contains(&ftype.as_str()) {
        // MAAS's sync skips what it does not know (e.g. `manifest`): so does import.
        log::warn!("{at}: skipped: file type {ftype:?} is not one MAAS knows");
        return;
    }
    let crate::maas::SyncedName {
        os,
        arch,
        subarch,
        series,
        kflavor,
    } = named;
    let sha = s("sha256").unwrap_or_default().to_ascii_lowercase();
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
    if !crate::catalog::valid_sha256(&sha) {
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
    let pick = |keys: &[&str]| -> Map<String, Value> {
        keys.iter()
            .filter_map(|k| a.get(*k).map(|v| (k.to_string(), v.clone())))
            .collect()
    };
    let mut extra = pick(&crate::maas::RESOURCE_EXTRA_KEYS);
    if let Some(title) = crate::maas::synced_title(s) {
        extra.insert("title".into(), Value::String(title));
    }
    let file_extra = pick(&crate::maas::FILE_EXTRA_KEYS);
    // Streams write `"rolling": true`; a string "true" is read the same way.
    let rolling = match a.get("rolling") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(t)) => t.eq_ignore_ascii_case("true"),
        _ => false,
    };
    let key = format!("{os}/{arch}/{subarch}/{series}/{version}");
    let set = sets.entry(key).or_insert_with(|| SourceSet {
        os: os.clone(),
        arch: arch.clone(),
        subarch: subarch.clone(),
        series: series.clone(),
        version: version.to_string(),
        label: s("label").unwrap_or_else(|| "stable".into()),
        rtype: RTYPE_SYNCED,
        resource_extra: extra,
        kflavor,
        bootloader_type: s("bootloader-type"),
        rolling,
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
        extra: file_extra,
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
    fn safe_join_stays_inside() {
        let r = Path::new("/m");
        assert_eq!(safe_join(r, "a/b"), Some(PathBuf::from("/m/a/b")));
        assert_eq!(safe_join(r, "../x"), None);
        assert_eq!(safe_join(r, "/etc/passwd"), None);
    }
}
