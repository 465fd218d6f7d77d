//! `pgbootfs ls [PATH] [--json]`: what the store holds, unfinished files included
//! (the mount hides them), and on MAAS 3.5+ where each file's bytes are (database,
//! disk, missing). Also the row loader that `verify` shares.

use std::collections::BTreeMap;
use std::io::Write;

use log::warn;
use postgres::GenericClient;
use serde_json::{Value, json};

use super::{StoreError, StorePath, open_schema, open_storage};
use crate::catalog::valid_component;
use crate::db::DbConfig;
use crate::image_storage::{ImageStorage, OnDisk, Place};
use crate::maas::Schema;

/// One file row with its set, resource and largefile.
#[derive(Debug, Clone)]
pub struct StoredFile {
    /// os, arch, subarch, series, version, filename.
    pub parts: [String; 6],
    /// The set's label.
    pub label: String,
    /// MAAS file type.
    pub filetype: String,
    /// Hex sha256 the row promises.
    pub sha256: String,
    /// Final size (largefile.total_size).
    pub total_size: i64,
    /// Bytes written so far (largefile.size; total_size on MAAS 2.0).
    pub written: i64,
    /// The large object.
    pub oid: u32,
    /// maasserver_largefile.id (0 on 3.5+ when the file has none).
    pub largefile_id: i64,
    /// MAAS 3.5+: the file's name in the image storage (filename_on_disk).
    pub disk_name: Option<String>,
    /// Where its bytes can be read in full, if anywhere.
    pub place: Place,
}

impl StoredFile {
    /// `os/arch/subarch/series/version/filename`.
    pub fn path(&self) -> String {
        self.parts.join("/")
    }

    /// `os/arch/subarch/series/version`.
    pub fn set_path(&self) -> String {
        self.parts[..5].join("/")
    }

    /// Whether every byte can be read (from the database or the image storage).
    pub fn complete(&self) -> bool {
        !matches!(self.place, Place::Missing(_))
    }

    /// On MAAS 3.5+, where the bytes are, for `ls`: `disk NAME`, `database (large
    /// object N)`, or `missing` and what the image storage holds.
    fn location(&self) -> String {
        let name = self.disk_name.as_deref().unwrap_or("");
        match &self.place {
            Place::Disk(_) => format!("disk {name}"),
            Place::Database => format!("database (large object {})", self.oid),
            Place::Missing(on_disk) => match on_disk {
                Some(OnDisk::WrongSize(n)) => {
                    format!("missing ({name} holds {n} of {} bytes)", self.total_size)
                }
                Some(OnDisk::Writing) => format!("missing ({name} being written by MAAS)"),
                Some(OnDisk::BadName) => format!("missing (invalid filename_on_disk {name:?})"),
                _ => format!("missing ({name} not in the image storage)"),
            },
        }
    }

    fn parts_ref(&self) -> Vec<&str> {
        self.parts.iter().map(String::as_str).collect()
    }
}

/// Every file row under `under`, sorted by path. Rows whose names cannot be a path
/// are skipped with a warning.
pub fn load(
    client: &mut impl GenericClient,
    schema: &Schema,
    under: &StorePath,
    storage: Option<&ImageStorage>,
) -> Result<Vec<StoredFile>, StoreError> {
    let rows = schema.load_files(client)?;
    let mut out = Vec::new();
    for r in &rows {
        let Some(parts) = r.parts() else {
            warn!(
                "skipping {} {}: the architecture is not arch/subarch",
                r.name, r.architecture
            );
            continue;
        };
        if let Some(bad) = parts.iter().find(|p| !valid_component(p)) {
            warn!(
                "skipping {} {} {} {}: {bad:?} cannot be a path component",
                r.name, r.architecture, r.version, r.filename
            );
            continue;
        }
        let file = StoredFile {
            parts: parts.map(str::to_string),
            label: r.label.clone(),
            filetype: r.filetype.clone(),
            sha256: r.sha256.clone(),
            total_size: r.total_size,
            written: r.size,
            oid: r.oid,
            largefile_id: r.largefile_id,
            disk_name: r.disk_name.clone(),
            place: Place::of(r, storage),
        };
        if under.contains(&file.parts_ref()) {
            out.push(file);
        }
    }
    out.sort_by(|a, b| a.parts.cmp(&b.parts));
    Ok(out)
}

/// Runs `pgbootfs ls`, writing to `out`.
pub fn run(
    db: &DbConfig,
    path: &str,
    as_json: bool,
    image_storage: Option<&std::path::Path>,
    out: &mut impl Write,
) -> Result<(), StoreError> {
    let under = StorePath::parse(path)?;
    let mut client = db.connect("pgbootfs-ls")?;
    let schema = open_schema(&mut client, &db.describe())?;
    let storage = open_storage(&schema, image_storage, &db.describe())?;
    let files = load(&mut client, &schema, &under, storage.as_ref())?;
    if files.is_empty() && !under.parts().is_empty() {
        return Err(StoreError::NotFound(under.display()));
    }
    let mut sets: BTreeMap<String, Vec<&StoredFile>> = BTreeMap::new();
    for f in &files {
        sets.entry(f.set_path()).or_default().push(f);
    }
    let write_err = StoreError::Output;
    if as_json {
        let doc = json!({
            "path": under.display(),
            "sets": sets.iter().map(|(p, fs)| set_json(p, fs)).collect::<Vec<_>>(),
        });
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&doc).unwrap_or_default()
        )
        .map_err(write_err)?;
        return Ok(());
    }
    for (p, fs) in &sets {
        let complete = fs.iter().all(|f| f.complete());
        let bytes: i64 = fs.iter().map(|f| f.total_size).sum();
        writeln!(
            out,
            "{p}  label={}  {} file(s)  {bytes} bytes  {}",
            fs[0].label,
            fs.len(),
            if complete {
                "complete"
            } else {
                "INCOMPLETE (hidden by the mount)"
            }
        )
        .map_err(write_err)?;
        for f in fs {
            let state = if schema.on_disk {
                f.location()
            } else if f.complete() {
                "complete".to_string()
            } else {
                format!("unfinished ({} of {} bytes)", f.written, f.total_size)
            };
            writeln!(
                out,
                "  {:<16} {:>14}  {}  {:<12} {state}",
                f.parts[5], f.total_size, f.sha256, f.filetype
            )
            .map_err(write_err)?;
        }
    }
    Ok(())
}

fn set_json(path: &str, files: &[&StoredFile]) -> Value {
    let f0 = files[0];
    json!({
        "path": path,
        "os": f0.parts[0], "arch": f0.parts[1], "subarch": f0.parts[2],
        "series": f0.parts[3], "version": f0.parts[4],
        "label": f0.label,
        "complete": files.iter().all(|f| f.complete()),
        "size": files.iter().map(|f| f.total_size).sum::<i64>(),
        "files": files.iter().map(|f| json!({
            "name": f.parts[5],
            "path": f.path(),
            "filetype": f.filetype,
            "size": f.total_size,
            "written": f.written,
            "complete": f.complete(),
            "sha256": f.sha256,
            "oid": f.oid,
            "location": f.place.word(),
            "disk_name": f.disk_name,
        })).collect::<Vec<_>>(),
    })
}
