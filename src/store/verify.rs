//! `pgbootfs verify [PATH]`: re-reads every large object under PATH through the
//! mount's own [`Handle`] and compares size and sha256 with the rows.

use std::collections::BTreeMap;
use std::io::Write;

use log::info;
use sha2::{Digest, Sha256};

use super::list::{StoredFile, load};
use super::open_schema;
use super::progress::Progress;
use super::{StoreError, StorePath, db_err, hex};
use crate::catalog::FileInfo;
use crate::db::DbConfig;
use crate::handle::{HandlePool, PoolOptions};

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
pub fn run(db: &DbConfig, path: &str, out: &mut impl Write) -> Result<VerifyReport, StoreError> {
    let under = StorePath::parse(path)?;
    let mut client = db.connect("pgbootfs-verify")?;
    let schema = open_schema(&mut client, &db.describe())?;
    let files = load(&mut client, &schema, &under)?;
    if files.is_empty() {
        return Err(StoreError::NotFound(under.display()));
    }
    let mut report = VerifyReport::default();
    // One read per large object; a problem is reported for every path sharing it.
    let mut by_oid: BTreeMap<(u32, i64), Vec<&StoredFile>> = BTreeMap::new();
    for f in &files {
        if f.complete() {
            by_oid.entry((f.oid, f.largefile_id)).or_default().push(f);
        } else {
            report.skipped.push(format!(
                "{}: unfinished ({} of {} bytes), not checked",
                f.path(),
                f.written,
                f.total_size
            ));
        }
    }
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
    let files_ok = files.len() - report.problems.len() - report.skipped.len();
    writeln!(
        out,
        "verify: {files_ok} file(s) ok, {} wrong, {} unfinished; {} large object(s) read",
        report.problems.len(),
        report.skipped.len(),
        report.checked
    )
    .map_err(write_err)?;
    info!("verify: {} problem(s)", report.problems.len());
    if !report.problems.is_empty() {
        return Err(StoreError::VerifyFailed {
            bad: report.problems.len(),
            checked: files.len(),
        });
    }
    Ok(report)
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
