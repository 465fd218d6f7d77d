//! Reading a directory laid out `os/arch/subarch/series/version/filename`.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::*;

pub(super) fn scan_dir(root: &Path, problems: &mut Vec<String>) -> Vec<SourceSet> {
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
                // As an upload: the architecture's subarch (a title is added from --title).
                resource_extra: [("subarches".to_string(), Value::String(names[2].clone()))]
                    .into_iter()
                    .collect(),
                kflavor: None,
                bootloader_type: None,
                rolling: false,
                files: Vec::new(),
            });
            set.files.push(SourceFile {
                filename: name,
                filetype: filetype.into(),
                path,
                size: md.len(),
                sha256: None,
                extra: Map::new(),
            });
        }
    }
    if names.len() == 4 {
        let [os, arch, subarch, series] = [&names[0], &names[1], &names[2], &names[3]];
        check_lengths(os, arch, subarch, series, &rel(dir), problems);
    }
}
