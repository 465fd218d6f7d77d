//! `pgbootfs verify [PATH]`: re-reads every large object under PATH through the
//! mount's own [`Handle`] and compares size and sha256 with the rows.
//!
//! On MAAS 3.5+ it also hashes every file of the image storage that a row under
//! PATH names, and reports the files rows name that are missing or partial, and
//! (for the whole store) the files no row names: MAAS deletes those at its next
//! start. A `NAME.incomplete` beside a row's NAME is a download MAAS has under
//! way: reported as such and not checked, since MAAS itself finishes or removes
//! it; one of no row's name is unknown like any other file.

use std::collections::BTreeMap;
use std::io::Write;

use log::info;
use sha2::{Digest, Sha256};

use super::list::{StoredFile, load};
use super::progress::Progress;
use super::{StoreError, StorePath, db_err, hex};
use super::{open_schema, open_storage};
use crate::catalog::FileInfo;
use crate::db::DbConfig;
use crate::handle::{HandlePool, PoolOptions};
use crate::image_storage::{ImageStorage, OnDisk, Place};
use crate::maas::{IMAGE_STORAGE_OWN, INCOMPLETE_SUFFIX};

/// Bytes asked of the handle per read: big enough that per-call costs vanish.
const STEP: usize = 1 << 20;

/// What `verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Large objects read (each once, however many files share it).
    pub checked: usize,
    /// One line per wrong file: `path: what is wrong`.
    pub problems: Vec<String>,
    /// Unfinished files, not checked.
    pub skipped: Vec<String>,
}

/// Runs `pgbootfs verify`; reports to `out`, errs when anything is wrong.
pub fn run(
    db: &DbConfig,
    path: &str,
    image_storage: Option<&std::path::Path>,
    out: &mut impl Write,
) -> Result<VerifyReport, StoreError> {
    let under = StorePath::parse(path)?;
    let mut client = db.connect("pgbootfs-verify")?;
    let schema = open_schema(&mut client, &db.describe())?;
    let storage = open_storage(&schema, image_storage, &db.describe())?;
    // Every row: the image storage's unknown files are those no row names.
    let all = load(
        &mut client,
        &schema,
        &StorePath::parse("")?,
        storage.as_ref(),
    )?;
    let files: Vec<StoredFile> = all
        .iter()
        .filter(|f| {
            let parts: Vec<&str> = f.parts.iter().map(String::as_str).collect();
            under.contains(&parts)
        })
        .cloned()
        .collect();
    if files.is_empty() {
        return Err(StoreError::NotFound(under.display()));
    }
    let mut report = VerifyReport::default();
    // One read per large object; a problem is reported for every path sharing it.
    let mut by_oid: BTreeMap<(u32, i64), Vec<&StoredFile>> = BTreeMap::new();
    // One hash per storage file, likewise.
    let mut by_disk: BTreeMap<&std::path::Path, Vec<&StoredFile>> = BTreeMap::new();
    // Problems found without reading: missing and partial storage files.
    let mut found: Vec<String> = Vec::new();
    for f in &files {
        let name = f.disk_name.as_deref().unwrap_or("");
        match &f.place {
            Place::Database => by_oid.entry((f.oid, f.largefile_id)).or_default().push(f),
            Place::Disk(p) => by_disk.entry(p.as_path()).or_default().push(f),
            Place::Missing(Some(OnDisk::Writing)) => report.skipped.push(format!(
                "{}: being written by MAAS ({name}{INCOMPLETE_SUFFIX}), not checked",
                f.path()
            )),
            Place::Missing(Some(OnDisk::WrongSize(n))) if *n < f.total_size.max(0) as u64 => found
                .push(format!(
                    "{}: partial: {name} holds {n} of {} bytes",
                    f.path(),
                    f.total_size
                )),
            Place::Missing(Some(OnDisk::WrongSize(n))) => found.push(format!(
                "{}: corrupt: {name} holds {n} bytes, the row says {}",
                f.path(),
                f.total_size
            )),
            Place::Missing(Some(OnDisk::BadName)) => found.push(format!(
                "{}: its filename_on_disk {name:?} cannot be a file name",
                f.path()
            )),
            Place::Missing(Some(OnDisk::Missing)) => found.push(format!(
                "{}: missing: {name} is not in the image storage",
                f.path()
            )),
            Place::Missing(_) => report.skipped.push(format!(
                "{}: unfinished ({} of {} bytes), not checked",
                f.path(),
                f.written,
                f.total_size
            )),
        }
    }
    let unknown = match &storage {
        Some(s) if under.parts().is_empty() => unknown_files(s, &all)?,
        _ => Vec::new(),
    };
    let oids: Vec<u32> = by_oid.keys().map(|(oid, _)| *oid).collect();
    let existing: std::collections::HashSet<u32> = client
        .query(
            "SELECT oid FROM pg_largeobject_metadata WHERE oid = ANY($1::oid[])",
            &[&oids],
        )
        .map_err(|e| db_err("listing large objects", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let total: u64 = by_oid
        .values()
        .chain(by_disk.values())
        .map(|fs| fs[0].total_size.max(0) as u64)
        .sum();
    // Chunks are shared only within one object, and few are kept: verify checks
    // each object's own bytes, read once.
    let pool = HandlePool::new(
        db,
        &PoolOptions {
            max: 1,
            cache_memory: 8 << 20,
            share_by_sha256: false,
            ..PoolOptions::default()
        },
    );
    let mut progress = Progress::new("verify", total);
    for (path, fs) in &by_disk {
        let f = fs[0];
        report.checked += 1;
        progress.start_file(&f.path(), f.total_size.max(0) as u64);
        if let Some(p) = check_disk_file(path, f, &mut progress) {
            for f in fs {
                let line = format!("{}: {p}", f.path());
                progress.println(&format!("FAILED {line}"));
                report.problems.push(line);
            }
        }
    }
    for line in found.iter().chain(&unknown) {
        progress.println(&format!("FAILED {line}"));
        report.problems.push(line.clone());
    }
    for ((oid, _), fs) in &by_oid {
        let f = fs[0];
        let size = f.total_size.max(0) as u64;
        report.checked += 1;
        let problem = if !existing.contains(oid) {
            progress.skip(size);
            Some(format!("large object {oid} is missing"))
        } else {
            progress.start_file(&f.path(), size);
            check_object(&pool, &mut client, f, &mut progress)?
        };
        if let Some(p) = problem {
            for f in fs {
                let line = format!("{}: {p}", f.path());
                progress.println(&format!("FAILED {line}"));
                report.problems.push(line);
            }
        }
    }
    progress.finish();
    let write_err = StoreError::Output;
    for s in &report.skipped {
        writeln!(out, "skipped {s}").map_err(write_err)?;
    }
    for p in &report.problems {
        writeln!(out, "FAILED {p}").map_err(write_err)?;
    }
    let wrong = report.problems.len() - unknown.len();
    let files_ok = files.len().saturating_sub(wrong + report.skipped.len());
    if let Some(s) = &storage {
        writeln!(
            out,
            "verify: {files_ok} file(s) ok, {wrong} wrong, {} unfinished, {} unknown file(s) \
             in {}; {} file(s) read",
            report.skipped.len(),
            unknown.len(),
            s.dir().display(),
            report.checked
        )
        .map_err(write_err)?;
    } else {
        writeln!(
            out,
            "verify: {files_ok} file(s) ok, {wrong} wrong, {} unfinished; {} large object(s) read",
            report.skipped.len(),
            report.checked
        )
        .map_err(write_err)?;
    }
    info!("verify: {} problem(s)", report.problems.len());
    if !report.problems.is_empty() {
        return Err(StoreError::VerifyFailed {
            bad: report.problems.len(),
            checked: files.len(),
        });
    }
    Ok(report)
}

/// Hashes one image storage file; `Some(problem)` if it does not match its row.
fn check_disk_file(
    path: &std::path::Path,
    f: &StoredFile,
    progress: &mut Progress,
) -> Option<String> {
    let name = f.disk_name.as_deref().unwrap_or("");
    let size = f.total_size.max(0) as u64;
    let mut seen = 0u64;
    match crate::digest::sha256_file(path, |n| {
        seen += n;
        progress.add(n);
    }) {
        Err(e) => {
            progress.skip(size.saturating_sub(seen));
            Some(format!("cannot read {}: {e}", path.display()))
        }
        Ok((_, len)) if len != size => Some(format!(
            "corrupt: {name} holds {len} bytes, the row says {size}"
        )),
        Ok((sha, _)) if sha != f.sha256 => Some(format!(
            "corrupt: sha256 of {name} is {sha}, the row says {}",
            f.sha256
        )),
        Ok(_) => None,
    }
}

/// The image storage's files that no row names, as problem lines. MAAS's own
/// directories are not files of rows and are left out, as are downloads under way
/// (`NAME.incomplete` of a row's NAME).
fn unknown_files(storage: &ImageStorage, all: &[StoredFile]) -> Result<Vec<String>, StoreError> {
    let names: std::collections::HashSet<&str> =
        all.iter().filter_map(|f| f.disk_name.as_deref()).collect();
    let entries = storage.entries().map_err(|err| {
        StoreError::Storage(crate::image_storage::StorageError::Unusable {
            dir: storage.dir().to_path_buf(),
            err,
        })
    })?;
    Ok(entries
        .into_iter()
        .filter(|(e, dir)| !(*dir && IMAGE_STORAGE_OWN.contains(&e.as_str())))
        .filter(|(e, _)| !names.contains(e.as_str()))
        .filter(|(e, _)| {
            !e.strip_suffix(INCOMPLETE_SUFFIX)
                .is_some_and(|n| names.contains(n))
        })
        .map(|(e, _)| {
            format!(
                "{}: unknown: no row names it (MAAS deletes it at its next start)",
                storage.dir().join(e).display()
            )
        })
        .collect())
}

/// Reads one object through a handle; `Some(problem)` if it does not match its row.
fn check_object(
    pool: &HandlePool,
    client: &mut postgres::Client,
    f: &StoredFile,
    progress: &mut Progress,
) -> Result<Option<String>, StoreError> {
    let size = f.total_size.max(0) as u64;
    // The handle serves at most the catalog's size; a longer object is still wrong.
    let actual: Option<i64> = client
        .query_one(
            "SELECT lo_lseek64(lo_open($1::oid, 262144), 0, 2)",
            &[&f.oid],
        )
        .ok()
        .and_then(|r| r.get(0));
    let info = FileInfo {
        oid: f.oid,
        size,
        sha256: f.sha256.clone(),
        filetype: String::new(),
        stored: None,
    };
    let handle = pool.open(&info, &f.path());
    if let Err(e) = handle.prepare(0) {
        progress.skip(size);
        return Ok(Some(format!(
            "cannot read large object {}: {}",
            f.oid,
            e.reason()
        )));
    }
    let mut hasher = Sha256::new();
    let mut offset = 0u64;
    while offset < size {
        let res = handle.read_with(offset, STEP, |bytes| {
            hasher.update(bytes);
            bytes.len()
        });
        match res {
            Ok(0) => break,
            Ok(n) => {
                offset += n as u64;
                progress.add(n as u64);
            }
            Err(e) => {
                handle.close();
                progress.skip(size - offset);
                return Ok(Some(format!(
                    "reading large object {} at byte {offset}: {}",
                    f.oid,
                    e.reason()
                )));
            }
        }
    }
    handle.close();
    if let Some(actual) = actual
        && actual as u64 > size
    {
        return Ok(Some(format!(
            "large object {} holds {actual} bytes, the row says {size}",
            f.oid
        )));
    }
    let sha = hex(hasher.finalize().as_slice());
    if sha != f.sha256 {
        return Ok(Some(format!(
            "sha256 of large object {} is {sha}, the row says {}",
            f.oid, f.sha256
        )));
    }
    Ok(None)
}
