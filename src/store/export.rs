//! `pgbootfs export --image-storage DIR`: writes every complete large file of a
//! MAAS 1.7-3.4 database into DIR under the name MAAS 3.5+ looks for
//! ([`crate::maas::storage_name`]), so that MAAS's own start-up export finds each
//! file present and valid and only has to unlink the large objects.
//!
//! Read-only on the database: the rows are read in one `REPEATABLE READ READ ONLY`
//! transaction and each object in one of its own, so it runs against a hot
//! standby as well. Each file goes through `<name>.incomplete`, is hashed while it
//! is written, fsynced, and renamed into place, as MAAS does.
//!
//! Resuming: a file is known valid without reading it again when it carries the
//! extended attribute [`CHECKED_XATTR`], written by export after a hash check,
//! whose sha256, size and modification time still match. The mark lives on the
//! file itself because MAAS deletes every entry of the image storage it does not
//! expect at each start: a state file there would not survive, and one elsewhere
//! could go stale without anyone noticing. Without the mark (a file system without
//! user xattrs, a copy made by other means) the file is hashed once per run.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use postgres::{Client, IsolationLevel};
use sha2::{Digest, Sha256};

use super::progress::Progress;
use super::{StoreError, db_err, open_schema};
use crate::db::{DbConfig, describe_pg_error};
use crate::digest::{hex, sha256_file, valid_sha256};
use crate::handle::CopyFields;

mod marks;
use crate::maas::sql::{OBJECT_BYTE_AT, copy_object};
use crate::maas::{FileRow, INCOMPLETE_SUFFIX, STORAGE_FILE_MODE, storage_name};
use marks::{
    checked_stamp, free_space, read_xattr, resolve_owner, write_xattr_fd, write_xattr_path,
};

/// The extended attribute that records a hash check: `sha256 size mtime_ns`.
pub const CHECKED_XATTR: &str = "user.pgbootfs.checked";

/// One `lo_get` row of the COPY: the field notes' fastest row size.
const ROW: u64 = 256 << 10;

/// Bytes written between two starts of writeback (and progress updates).
const WRITEBACK: u64 = 8 << 20;

/// What `pgbootfs export` is asked to do.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The image storage directory (created when absent).
    pub dir: PathBuf,
    /// Files written at once, each on its own connection.
    pub jobs: usize,
    /// `USER[:GROUP]` to own the files (and a directory export creates).
    pub owner: Option<String>,
    /// List what would be written; write nothing.
    pub dry_run: bool,
}

/// What one run did.
#[derive(Debug, Default, Clone)]
pub struct ExportSummary {
    /// Files written (or, on a dry run, that would be).
    pub written: usize,
    /// Their bytes.
    pub bytes_written: u64,
    /// Files already present and valid.
    pub valid: usize,
    /// Of those, how many had to be hashed (no current mark).
    pub hashed: usize,
    /// Unfinished large files, not exported.
    pub unfinished: usize,
    /// Files that failed (reported one by one).
    pub failed: usize,
}

/// One large file to export: its sha256 names it; `paths` are the tree paths
/// that share it.
#[derive(Debug, Clone)]
struct Item {
    sha256: String,
    size: u64,
    oid: u32,
    paths: Vec<String>,
}

impl Item {
    fn name(&self) -> &str {
        storage_name(&self.sha256)
    }

    fn label(&self) -> String {
        match self.paths.as_slice() {
            [one] => one.clone(),
            [first, rest @ ..] => format!("{first} (and {} more)", rest.len()),
            [] => String::new(),
        }
    }
}

/// What was found at an item's final name before writing.
enum Found {
    /// Valid; `hashed` when it had to be read to know.
    Valid { hashed: bool },
    /// Absent (or unusable: `why`); to be written.
    Write { why: Option<String> },
}

/// Runs `pgbootfs export`; one line per problem and the summary go to `out`.
pub fn run(
    db: &DbConfig,
    opts: &ExportOptions,
    out: &mut impl Write,
) -> Result<ExportSummary, StoreError> {
    let owner = opts.owner.as_deref().map(resolve_owner).transpose()?;
    let target = db.describe();
    let mut client = db.connect("pgbootfs-export")?;
    let rows = {
        let mut txn = snapshot(&mut client)?;
        let schema = open_schema(&mut txn, &target)?;
        let rows = schema.load_files(&mut txn)?;
        txn.commit().map_err(|e| db_err("ending the snapshot", e))?;
        rows
    };
    drop(client);
    let mut summary = ExportSummary::default();
    let mut lines = Vec::new();
    let (items, unfinished) = items(&rows);
    for (path, written, total) in &unfinished {
        lines.push(format!(
            "skipped {path}: unfinished ({written} of {total} bytes); MAAS downloads it again"
        ));
    }
    summary.unfinished = unfinished.len();
    let mut good = Vec::new();
    for item in items {
        if valid_sha256(&item.sha256) && item.sha256 == item.sha256.to_ascii_lowercase() {
            good.push(item);
        } else {
            summary.failed += 1;
            lines.push(format!(
                "FAILED {}: the row's sha256 {:?} is not 64 lower-case hex digits, so MAAS \
                 could not check the file either; fix or remove the row",
                item.label(),
                item.sha256
            ));
        }
    }
    prepare_dir(&opts.dir, opts.dry_run, owner)?;

    // Phase 1: what is already there (no database needed).
    let found = check_all(&opts.dir, &good, opts.jobs, !opts.dry_run);
    let mut todo = Vec::new();
    for (item, found) in good.into_iter().zip(found) {
        match found {
            Found::Valid { hashed } => {
                summary.valid += 1;
                summary.hashed += usize::from(hashed);
            }
            Found::Write { why } => {
                if let Some(why) = why {
                    lines.push(format!(
                        "replacing {}: {why} ({})",
                        opts.dir.join(item.name()).display(),
                        item.label()
                    ));
                }
                todo.push(item);
            }
        }
    }

    // Phase 2: room for what is left.
    let need: u64 = todo.iter().map(|i| i.size).sum();
    let reclaimed: u64 = todo
        .iter()
        .filter_map(|i| fs::symlink_metadata(incomplete_path(&opts.dir, i)).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    let avail = free_space(&opts.dir)?.saturating_add(reclaimed);
    if need > avail {
        for l in &lines {
            writeln!(out, "{l}").map_err(StoreError::Output)?;
        }
        return Err(StoreError::NoSpace {
            dir: opts.dir.clone(),
            need,
            avail,
        });
    }

    if opts.dry_run {
        for item in &todo {
            lines.push(format!(
                "would write {} ({} bytes): {}",
                opts.dir.join(item.name()).display(),
                item.size,
                item.paths.join(", ")
            ));
        }
        summary.written = todo.len();
        summary.bytes_written = need;
        for l in &lines {
            writeln!(out, "{l}").map_err(StoreError::Output)?;
        }
        writeln!(
            out,
            "{}",
            summary_line(
                &summary,
                &opts.dir,
                "export (dry run, nothing written): would write",
                ""
            )
        )
        .map_err(StoreError::Output)?;
        return finish(summary);
    }

    // Phase 3: write, `jobs` files at once.
    let progress = Mutex::new(Progress::new("export", need));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Result<(), String>)>> = Mutex::new(Vec::new());
    let jobs = opts.jobs.clamp(1, todo.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                let mut client: Option<Client> = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = todo.get(i) else { break };
                    let res = match client.take().filter(|c| !c.is_closed()) {
                        Some(c) => Ok(c),
                        None => db.connect("pgbootfs-export").map_err(|e| e.to_string()),
                    }
                    .and_then(|mut c| {
                        let r = export_one(&mut c, &opts.dir, item, owner, &progress);
                        client = Some(c);
                        r
                    });
                    if let Err(e) = &res {
                        lock(&progress).println(&format!("FAILED {e}"));
                    }
                    lock(&results).push((i, res));
                }
            });
        }
    });
    lock(&progress).finish();
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|(i, _)| *i);
    for (i, res) in results {
        match res {
            Ok(()) => {
                summary.written += 1;
                summary.bytes_written += todo[i].size;
            }
            Err(e) => {
                summary.failed += 1;
                lines.push(format!("FAILED {e}"));
            }
        }
    }
    for l in &lines {
        writeln!(out, "{l}").map_err(StoreError::Output)?;
    }
    writeln!(
        out,
        "{}",
        summary_line(&summary, &opts.dir, "export:", " written")
    )
    .map_err(StoreError::Output)?;
    log::info!(
        "export: {} written, {} valid, {} failed",
        summary.written,
        summary.valid,
        summary.failed
    );
    finish(summary)
}

/// The one-line summary: `lead` ("export:", or the dry run's words), the count,
/// then `done` (" written", or nothing for a dry run).
fn summary_line(summary: &ExportSummary, dir: &Path, lead: &str, done: &str) -> String {
    format!(
        "{lead} {} file(s){done} ({} bytes) to {}; {} already valid ({} hashed); \
         {} unfinished skipped; {} failed",
        summary.written,
        summary.bytes_written,
        dir.display(),
        summary.valid,
        summary.hashed,
        summary.unfinished,
        summary.failed
    )
}

fn finish(summary: ExportSummary) -> Result<ExportSummary, StoreError> {
    if summary.failed > 0 {
        return Err(StoreError::ExportFailed {
            failed: summary.failed,
            of: summary.failed + summary.written + summary.valid,
        });
    }
    Ok(summary)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A transaction that reads one stable snapshot and can write nothing (so a hot
/// standby serves it).
fn snapshot(client: &mut Client) -> Result<postgres::Transaction<'_>, StoreError> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(|e| db_err("starting a read-only snapshot", e))
}

/// The distinct large files of complete rows, by sha256, and the unfinished rows
/// as (path, written, total).
fn items(rows: &[FileRow]) -> (Vec<Item>, Vec<(String, i64, i64)>) {
    let mut by_sha: BTreeMap<&str, Item> = BTreeMap::new();
    let mut unfinished = Vec::new();
    for r in rows {
        let path = match r.parts() {
            Some(p) => p.join("/"),
            None => format!("{}/{}/{}/{}", r.name, r.architecture, r.version, r.filename),
        };
        if !r.complete() {
            unfinished.push((path, r.size, r.total_size));
            continue;
        }
        by_sha
            .entry(r.sha256.as_str())
            .or_insert_with(|| Item {
                sha256: r.sha256.clone(),
                size: r.total_size.max(0) as u64,
                oid: r.oid,
                paths: Vec::new(),
            })
            .paths
            .push(path);
    }
    (by_sha.into_values().collect(), unfinished)
}

fn final_path(dir: &Path, item: &Item) -> PathBuf {
    dir.join(item.name())
}

fn incomplete_path(dir: &Path, item: &Item) -> PathBuf {
    dir.join(format!("{}{INCOMPLETE_SUFFIX}", item.name()))
}

fn io_err(path: &Path, what: &str, err: std::io::Error) -> StoreError {
    StoreError::Export {
        path: path.to_path_buf(),
        what: what.to_string(),
        err,
    }
}

/// Makes DIR when absent (not on a dry run).
fn prepare_dir(dir: &Path, dry_run: bool, owner: Option<(u32, u32)>) -> Result<(), StoreError> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(io_err(
            dir,
            "using as the image storage",
            std::io::Error::other("not a directory"),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if dry_run {
                return Ok(());
            }
            fs::create_dir_all(dir).map_err(|e| io_err(dir, "creating", e))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                    .map_err(|e| io_err(dir, "changing the owner of", e))?;
            }
            log::info!("created {}", dir.display());
            Ok(())
        }
        Err(e) => Err(io_err(dir, "reading", e)),
    }
}

/// Checks every item's final name, `jobs` at once; `mark` records hash checks.
fn check_all(dir: &Path, items: &[Item], jobs: usize, mark: bool) -> Vec<Found> {
    let next = AtomicUsize::new(0);
    let found: Mutex<Vec<Option<Found>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let f = check_existing(dir, item, mark);
                    lock(&found)[i] = Some(f);
                }
            });
        }
    });
    found
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|f| f.unwrap_or(Found::Write { why: None }))
        .collect()
}

/// Whether the final name already holds the item's bytes: by the mark when it is
/// current, else by hashing (and then marking, when `mark`).
fn check_existing(dir: &Path, item: &Item, mark: bool) -> Found {
    let path = final_path(dir, item);
    let meta = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Found::Write { why: None },
        Err(e) => {
            return Found::Write {
                why: Some(format!("cannot read it: {e}")),
            };
        }
    };
    if !meta.is_file() {
        return Found::Write {
            why: Some("not a regular file".into()),
        };
    }
    if meta.len() != item.size {
        return Found::Write {
            why: Some(format!("{} bytes, expected {}", meta.len(), item.size)),
        };
    }
    let stamp = checked_stamp(&item.sha256, &meta);
    if read_xattr(&path).as_deref() == Some(stamp.as_str()) {
        return Found::Valid { hashed: false };
    }
    match sha256_file(&path, |_| {}) {
        Ok((sha, _)) if sha == item.sha256 => {
            if mark && let Err(e) = write_xattr_path(&path, &stamp) {
                log::debug!("{}: cannot record the check: {e}", path.display());
            }
            Found::Valid { hashed: true }
        }
        Ok((sha, _)) => Found::Write {
            why: Some(format!("sha256 {sha}, expected {}", item.sha256)),
        },
        Err(e) => Found::Write {
            why: Some(format!("cannot read it: {e}")),
        },
    }
}

/// Writes one item through `<name>.incomplete`; the error is one line naming
/// the file.
fn export_one(
    client: &mut Client,
    dir: &Path,
    item: &Item,
    owner: Option<(u32, u32)>,
    progress: &Mutex<Progress>,
) -> Result<(), String> {
    let partial = incomplete_path(dir, item);
    let target = final_path(dir, item);
    lock(progress).start_file(&item.label(), item.size);
    let res = write_partial(client, &partial, item, owner, progress);
    match res {
        Ok(file) => {
            fs::rename(&partial, &target).map_err(|e| {
                let _ = fs::remove_file(&partial);
                format!(
                    "{}: renaming {} into place: {e}",
                    item.label(),
                    partial.display()
                )
            })?;
            drop(file);
            // The rename itself is durable only once the directory is synced.
            if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
                log::warn!("syncing {}: {e}", dir.display());
            }
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// Streams the object into `partial`, checks it, marks and syncs it; returns the
/// open file.
fn write_partial(
    client: &mut Client,
    partial: &Path,
    item: &Item,
    owner: Option<(u32, u32)>,
    progress: &Mutex<Progress>,
) -> Result<File, String> {
    let at = |what: &str, e: std::io::Error| format!("{}: {what}: {e}", partial.display());
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(STORAGE_FILE_MODE)
        .open(partial)
        .map_err(|e| at("creating", e))?;
    // The mode MAAS's files have, whatever our umask.
    file.set_permissions(fs::Permissions::from_mode(STORAGE_FILE_MODE))
        .map_err(|e| at("setting the mode of", e))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
            .map_err(|e| at("changing the owner of", e))?;
    }
    let db = |what: &str, e: postgres::Error| {
        format!(
            "{}: {what} large object {}: {}",
            item.label(),
            item.oid,
            describe_pg_error(&e)
        )
    };
    let mut txn = snapshot(client).map_err(|e| format!("{}: {e}", item.label()))?;
    let past: i32 = txn
        .query_one(OBJECT_BYTE_AT, &[&item.oid, &(item.size as i64)])
        .map_err(|e| db("reading", e))?
        .get(0);
    if past > 0 {
        return Err(format!(
            "{}: large object {} holds more than the row's {} bytes",
            item.label(),
            item.oid,
            item.size
        ));
    }
    let mut sink = Sink {
        out: &file,
        hasher: Sha256::new(),
        written: 0,
        flushed: 0,
        counted: 0,
        progress,
        failed: None,
    };
    let read = stream_object(&mut txn, item, &mut |bytes| sink.take(bytes));
    sink.count();
    if let Some(e) = sink.failed.take() {
        return Err(at("writing", e));
    }
    let n = read.map_err(|e| match e {
        StreamError::Db(e) => db("reading", e),
        StreamError::Io(e) => format!("{}: reading large object {}: {e}", item.label(), item.oid),
    })?;
    let sha = hex(sink.hasher.finalize().as_slice());
    txn.commit().map_err(|e| db("ending the snapshot of", e))?;
    if n != item.size {
        return Err(format!(
            "{}: large object {} ends after {n} bytes, the row says {}",
            item.label(),
            item.oid,
            item.size
        ));
    }
    if sha != item.sha256 {
        return Err(format!(
            "{}: sha256 mismatch for {}: the bytes of large object {} hash to {sha}, the row \
             says {}; the partial file was removed",
            item.label(),
            partial.display(),
            item.oid,
            item.sha256
        ));
    }
    file.sync_all().map_err(|e| at("syncing", e))?;
    let meta = file.metadata().map_err(|e| at("reading", e))?;
    if let Err(e) = write_xattr_fd(&file, &checked_stamp(&sha, &meta)) {
        // Only the next run's speed depends on it: it hashes the file instead.
        log::debug!("{}: cannot record the check: {e}", partial.display());
    } else {
        file.sync_all().map_err(|e| at("syncing", e))?;
    }
    Ok(file)
}

enum StreamError {
    Db(postgres::Error),
    Io(std::io::Error),
}

/// Hands the object's bytes to `sink` as they arrive, straight from the
/// connection's buffer, until it returns false; returns how many there were.
fn stream_object(
    txn: &mut postgres::Transaction<'_>,
    item: &Item,
    sink: &mut impl FnMut(&[u8]) -> bool,
) -> Result<u64, StreamError> {
    let sql = copy_object(item.oid, item.size, ROW);
    let r = txn.copy_out(sql.as_str()).map_err(StreamError::Db)?;
    let mut r = CopyFields::new(r);
    let mut total = 0u64;
    loop {
        let buf = r.fill_buf().map_err(StreamError::Io)?;
        if buf.is_empty() {
            return Ok(total);
        }
        let n = buf.len();
        if !sink(buf) {
            return Ok(total);
        }
        r.consume(n);
        total += n as u64;
    }
}

/// Where the bytes go: hashed and written as they come, straight from the
/// connection's buffer, on the reading thread. Measured here against psql
/// writing the same COPY into a file (1 GiB in 8 files, 2 shared cores): a second
/// thread hashing and writing 4 MiB blocks ran at about 0.5x psql, most of its
/// time in the kernel copying cold 4 MiB buffers into the page cache; 256 KiB
/// blocks on a second thread about 0.85x; one thread hashing and writing each
/// slice (up to one 256 KiB row) while it is still in the CPU's cache ran at or
/// above psql's speed with the least CPU of the three.
struct Sink<'a> {
    out: &'a File,
    hasher: Sha256,
    written: u64,
    /// Up to where writeback has been started.
    flushed: u64,
    /// Up to where progress has been told.
    counted: u64,
    progress: &'a Mutex<Progress>,
    failed: Option<std::io::Error>,
}

impl Sink<'_> {
    fn take(&mut self, bytes: &[u8]) -> bool {
        self.hasher.update(bytes);
        let mut out = self.out;
        if let Err(e) = out.write_all(bytes) {
            self.failed = Some(e);
            return false;
        }
        self.written += bytes.len() as u64;
        if self.written - self.flushed >= WRITEBACK {
            self.start_writeback();
            self.count();
        }
        true
    }

    /// Starts writing back what was written since the last call: the fsync
    /// before the rename then waits for the last few MiB only, not the whole
    /// file (here an fsync of 1 GiB at the end took 2-6 s against about 1 s of
    /// writeback that overlaps the download).
    fn start_writeback(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is open; the range is what was just written.
        unsafe {
            libc::sync_file_range(
                self.out.as_raw_fd(),
                self.flushed as libc::off64_t,
                (self.written - self.flushed) as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.flushed = self.written;
    }

    /// Tells the progress bar what was written since the last call.
    fn count(&mut self) {
        lock(self.progress).add(self.written - self.counted);
        self.counted = self.written;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_by_number_and_name() {
        assert_eq!(resolve_owner("0:0").unwrap(), (0, 0));
        assert_eq!(resolve_owner("root").unwrap(), (0, 0));
        assert_eq!(resolve_owner("12345:54321").unwrap(), (12345, 54321));
        assert!(resolve_owner("no-such-user-pgbootfs").is_err());
        assert!(resolve_owner("root:no-such-group-pgbootfs").is_err());
    }

    #[test]
    fn the_copy_reads_whole_rows_in_order() {
        let sql = copy_object(42, 600 << 10, ROW);
        assert!(sql.contains("generate_series(0, 614399, 262144)"), "{sql}");
        assert!(sql.contains("ORDER BY o"), "{sql}");
        // An empty object: the series is empty, the COPY has no rows.
        assert!(copy_object(42, 0, ROW).contains("generate_series(0, -1, 262144)"));
    }
}
