//! `pgbootfs ls [PATH] [--json]`: what the store holds, unfinished files included
//! (the mount hides them). Also the row loader that `verify` and `remove` share.

use std::collections::BTreeMap;
use std::io::Write;

use log::warn;
use postgres::GenericClient;
use serde_json::{Value, json};

use super::{StoreError, StorePath, db_err, split_name};
use crate::catalog::{TABLES, valid_component};
use crate::db::DbConfig;

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
    /// maasserver_largefile.id.
    pub largefile_id: i64,
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

    /// Whether every byte has been written.
    pub fn complete(&self) -> bool {
        self.written >= self.total_size
    }

    fn parts_ref(&self) -> Vec<&str> {
        self.parts.iter().map(String::as_str).collect()
    }
}

/// Fails with a clear message when the MAAS tables are absent.
pub fn require_tables(client: &mut impl GenericClient, target: &str) -> Result<(), StoreError> {
    let missing: Vec<String> = client
        .query(
            "SELECT t FROM unnest($1::text[]) AS t WHERE to_regclass(t) IS NULL ORDER BY t",
            &[&TABLES.to_vec()],
        )
        .map_err(|e| db_err("checking for the MAAS tables", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(StoreError::Db(crate::db::DbError::NotAStore {
        target: target.to_string(),
        missing,
    }))
}

/// Every file row under `under`, sorted by path. Rows whose names cannot be a path
/// are skipped with a warning.
pub fn load(
    client: &mut impl GenericClient,
    under: &StorePath,
) -> Result<Vec<StoredFile>, StoreError> {
    // to_jsonb(lf) ->> 'size' reads the column where it exists (not on MAAS 2.0).
    let rows = client
        .query(
            "SELECT r.name::text, r.architecture::text, s.version::text, f.filename::text, \
                    s.label::text, f.filetype::text, lf.sha256::text, lf.total_size::int8, \
                    coalesce((to_jsonb(lf) ->> 'size')::int8, lf.total_size::int8), \
                    lf.content, lf.id::int8 \
             FROM maasserver_bootresourcefile f \
             JOIN maasserver_largefile lf ON lf.id = f.largefile_id \
             JOIN maasserver_bootresourceset s ON s.id = f.resource_set_id \
             JOIN maasserver_bootresource r ON r.id = s.resource_id",
            &[],
        )
        .map_err(|e| db_err("reading the image rows", e))?;
    let mut out = Vec::new();
    for r in &rows {
        let name: String = r.get(0);
        let architecture: String = r.get(1);
        let (os, series) = split_name(&name);
        let (arch, subarch) = architecture.split_once('/').unwrap_or((&architecture, ""));
        let version: String = r.get(2);
        let filename: String = r.get(3);
        let parts = [os, arch, subarch, series, &version, &filename].map(str::to_string);
        if let Some(bad) = parts.iter().find(|p| !valid_component(p)) {
            warn!(
                "skipping {name} {architecture} {version} {filename}: {bad:?} cannot be a path component"
            );
            continue;
        }
        let file = StoredFile {
            parts,
            label: r.get(4),
            filetype: r.get(5),
            sha256: r.get(6),
            total_size: r.get(7),
            written: r.get(8),
            oid: r.get(9),
            largefile_id: r.get(10),
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
    out: &mut impl Write,
) -> Result<(), StoreError> {
    let under = StorePath::parse(path)?;
    let mut client = db.connect("pgbootfs-ls")?;
    require_tables(&mut client, &db.describe())?;
    let files = load(&mut client, &under)?;
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
            let state = if f.complete() {
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
        })).collect::<Vec<_>>(),
    })
}
