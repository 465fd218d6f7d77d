//! `pgbootfs import SRC`: one transaction per version, large objects streamed in.
//!
//! Large objects are transactional: until the version's transaction commits, neither
//! its rows nor its new large objects exist for anyone else, and an interrupted
//! import (Ctrl-C, kill -9, lost connection) aborts the transaction and leaves
//! nothing behind. The next run skips what was committed and writes the rest.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::mpsc::sync_channel;

use log::{debug, info};
use postgres::{Client, Statement, Transaction};
use sha2::{Digest, Sha256};

use super::progress::Progress;
use super::remove::{delete_set_rows, drop_unused_largefiles};
use super::source::{self, SourceFile, SourceKind, SourceSet};
use super::{StoreError, db_err, ensure_schema, hex, lock_store};
use crate::db::DbConfig;
use crate::maas::{self, RTYPE_GENERATED, RTYPE_SYNCED, RTYPE_UPLOADED, Schema, sql};

/// Bytes per `lowrite` call: libpq's 8 KiB writes are what makes `\lo_import` slow.
pub const WRITE_CHUNK: usize = 1 << 20;

/// `INV_WRITE` for `lo_open`.
const INV_WRITE: i32 = 0x20000;

/// Options of `pgbootfs import`.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Replace a stored version whose content differs instead of refusing.
    pub replace: bool,
    /// `os/series` a custom image (os `custom`) from a directory is based on
    /// (`bootresource.base_image`, MAAS 3.1+). As MAAS's upload: a base the
    /// stored resource has wins; without either, the region's commissioning
    /// os/series, else `ubuntu/jammy`.
    pub base_image: Option<String>,
    /// Title of images imported from a directory (`extra.title`, as an upload's;
    /// MAAS stores "" when none is given).
    pub title: Option<String>,
}

/// MAAS 3.4's default commissioning os/series, the base of a custom image when
/// nothing else says.
pub const DEFAULT_BASE_IMAGE: &str = "ubuntu/jammy";

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    /// Versions written new.
    pub sets_written: usize,
    /// Versions already stored with the same content.
    pub sets_unchanged: usize,
    /// Versions replaced (`--replace`).
    pub sets_replaced: usize,
    /// Files whose bytes were written into a new large object.
    pub files_written: usize,
    /// Files whose content was already stored (deduplicated by sha256).
    pub files_shared: usize,
    /// Bytes written into new large objects.
    pub bytes_written: u64,
}

/// Checks SRC, creates the tables where absent, and imports every version.
pub fn run(db: &DbConfig, src: &Path, opts: &ImportOptions) -> Result<ImportSummary, StoreError> {
    if let Some(b) = &opts.base_image {
        let valid = b.split_once('/').is_some_and(|(os, series)| {
            !os.is_empty() && !series.is_empty() && !series.contains('/')
        });
        if !valid {
            return Err(StoreError::BadPath {
                path: b.clone(),
                reason: "--base-image must be os/series, e.g. ubuntu/jammy".into(),
            });
        }
    }
    let source = source::scan(src)?;
    info!(
        "import: {} version(s), {} file(s), {} bytes from {} ({:?})",
        source.sets.len(),
        source.sets.iter().map(|s| s.files.len()).sum::<usize>(),
        source.bytes(),
        src.display(),
        source.kind
    );
    let mut client = db.connect("pgbootfs-import")?;
    prefer_lz4(&mut client)?;
    let schema = ensure_schema(&mut client, &db.describe())?;
    info!("import: image tables of {}", schema.era);
    let stmts = Statements::prepare(&mut client, &schema)?;
    let default_base = if schema.base_image {
        commissioning_base(&mut client)?
    } else {
        String::new()
    };
    let mut run = Run {
        schema: &schema,
        default_base,
        stmts: &stmts,
        kind: source.kind,
        opts,
        progress: Progress::new("import", source.bytes()),
        summary: ImportSummary::default(),
    };
    for set in &source.sets {
        run.import_set(&mut client, set)?;
    }
    run.progress.finish();
    Ok(run.summary)
}

/// One import: what every version's transaction needs, and what it reports.
struct Run<'a> {
    schema: &'a Schema,
    default_base: String,
    stmts: &'a Statements,
    kind: SourceKind,
    opts: &'a ImportOptions,
    progress: Progress,
    summary: ImportSummary,
}

/// pg_largeobject rows (2 KiB pages) sit just over the server's compression
/// threshold, so it tries to compress every page; pglz on incompressible image
/// bytes costs about half the write time, lz4 gives up at once. A session setting:
/// no table is altered and readers decompress transparently.
fn prefer_lz4(client: &mut Client) -> Result<(), StoreError> {
    let has_lz4: bool = client
        .query_one(
            "SELECT coalesce(bool_or('lz4' = ANY(enumvals)), false) FROM pg_settings \
             WHERE name = 'default_toast_compression'",
            &[],
        )
        .map_err(|e| db_err("reading the server's compression methods", e))?
        .get(0);
    if has_lz4 {
        client
            .batch_execute("SET default_toast_compression = lz4")
            .map_err(|e| db_err("choosing lz4 compression for this session", e))?;
    } else {
        debug!("server without lz4: large object pages are pglz-compressed (slower import)");
    }
    Ok(())
}

struct Statements {
    lo_create: Statement,
    lo_open: Statement,
    lowrite: Statement,
    lo_unlink: Statement,
    find_largefile: Statement,
    insert_largefile: Statement,
    insert_file: Statement,
}

impl Statements {
    fn prepare(client: &mut Client, schema: &Schema) -> Result<Statements, StoreError> {
        let mut p = |sql: &str| {
            client
                .prepare(sql)
                .map_err(|e| db_err(format!("preparing `{sql}`"), e))
        };
        Ok(Statements {
            lo_create: p("SELECT lo_create(0)")?,
            lo_open: p("SELECT lo_open($1::oid, $2::int4)")?,
            lowrite: p("SELECT lowrite($1::int4, $2::bytea)")?,
            lo_unlink: p("SELECT lo_unlink($1::oid)")?,
            find_largefile: p(&sql::find_largefile(schema))?,
            insert_largefile: p(&sql::insert_largefile(schema))?,
            insert_file: p(&sql::insert_file(schema))?,
        })
    }
}

/// A stored file of an existing version: sha256, size, and whether it is complete.
type StoredFiles = BTreeMap<String, (String, i64, bool)>;

impl Run<'_> {
    /// Writes one version in one transaction: nothing of it is visible until commit.
    fn import_set(&mut self, client: &mut Client, set: &SourceSet) -> Result<(), StoreError> {
        let (schema, stmts, kind, opts) = (self.schema, self.stmts, self.kind, self.opts);
        let (progress, summary) = (&mut self.progress, &mut self.summary);
        let path = set.path();
        let mut txn = client
            .transaction()
            .map_err(|e| db_err("starting a transaction", e))?;
        lock_store(&mut txn)?;
        let found = find_set(&mut txn, schema, set)?;
        check_rtype(set, found.as_ref())?;
        let resource = ResourceRow::new(set, found.as_ref(), opts, &self.default_base);
        let existing = found.as_ref().and_then(|f| f.set.clone());
        let mut replaced = false;
        let mut old_largefiles = Vec::new();
        if let Some((set_id, label)) = existing {
            let stored = stored_files(&mut txn, schema, set_id)?;
            let differences = compare(set, kind, &stored, progress)?;
            if differences.is_empty() {
                // A sync of a stored version gives the set the source's label and
                // the resource its columns, as MAAS's does; an unchanged upload is
                // not uploaded again, so its rows stay as they are.
                if set.rtype == RTYPE_SYNCED
                    && let Some(f) = &found
                {
                    resource.update(&mut txn, schema, f.id, &path)?;
                }
                if set.rtype == RTYPE_SYNCED && label != set.label {
                    txn.execute(sql::UPDATE_SET_LABEL, &[&set.label, &set_id])
                        .map_err(|e| db_err(format!("updating the label of {path}"), e))?;
                }
                txn.commit()
                    .map_err(|e| db_err(format!("committing {path}"), e))?;
                progress.info(&format!("import: {path}: already stored, unchanged"));
                summary.sets_unchanged += 1;
                return Ok(());
            }
            if !opts.replace {
                return Err(StoreError::Conflict { path, differences });
            }
            progress.info(&format!(
                "import: {path}: replacing the stored version (--replace)"
            ));
            replaced = true;
            old_largefiles = delete_set_rows(&mut txn, &[set_id])?;
        }
        let mut files = Vec::with_capacity(set.files.len());
        for f in &set.files {
            let lf = store_content(&mut txn, stmts, set, f, progress, summary)?;
            files.push((f, lf));
        }
        let resource_id = match &found {
            Some(f) => {
                resource.update(&mut txn, schema, f.id, &path)?;
                f.id
            }
            None => resource.insert(&mut txn, schema, set)?,
        };
        let set_id: i64 = txn
            .query_one(sql::INSERT_SET, &[&set.version, &set.label, &resource_id])
            .map_err(|e| db_err(format!("inserting the set row of {path}"), e))?
            .get(0);
        for (f, lf) in &files {
            let extra = maas::python_json(&serde_json::Value::Object(f.extra.clone()));
            txn.execute(
                &stmts.insert_file,
                &[&f.filename, &f.filetype, &extra, lf, &set_id],
            )
            .map_err(|e| {
                db_err(
                    format!("inserting the file row of {path}/{}", f.filename),
                    e,
                )
            })?;
        }
        if replaced {
            // Old content no file of the new version shares is dropped with its object.
            drop_unused_largefiles(&mut txn, &old_largefiles)?;
        }
        txn.commit()
            .map_err(|e| db_err(format!("committing {path}"), e))?;
        progress.info(&format!(
            "import: {path}: committed ({} file(s))",
            set.files.len()
        ));
        if replaced {
            summary.sets_replaced += 1;
        } else {
            summary.sets_written += 1;
        }
        Ok(())
    }
}

/// The stored resource a set goes to.
struct FoundResource {
    id: i64,
    rtype: i32,
    /// bootresource.base_image (None before MAAS 3.1).
    base_image: Option<String>,
    /// The stored set of the same version: its id and label.
    set: Option<(i64, String)>,
}

/// Refuses to mix what MAAS keeps apart: an upload added to a synced resource
/// would be deleted by MAAS's next sync (its clean-up keeps only the newest
/// complete set of a synced resource), and MAAS never syncs over an upload.
fn check_rtype(set: &SourceSet, found: Option<&FoundResource>) -> Result<(), StoreError> {
    let Some(found) = found else {
        return Ok(());
    };
    let reason = match (set.rtype, found.rtype) {
        (RTYPE_UPLOADED, RTYPE_SYNCED | RTYPE_GENERATED) => {
            "the stored resource is synced from a simplestreams source: MAAS's next sync keeps \
             only its newest complete set and would delete this version; import it as a \
             mirror, or under another name (e.g. custom/<name>)"
        }
        (RTYPE_SYNCED, RTYPE_UPLOADED) => {
            "the stored resource was uploaded: MAAS does not sync over an uploaded image; \
             remove it first (pgbootfs remove) if the mirror's should replace it"
        }
        _ => return Ok(()),
    };
    Err(StoreError::Refused {
        path: set.path(),
        reason: reason.to_string(),
    })
}

/// The bootresource columns MAAS writes for a set's resource.
struct ResourceRow {
    rtype: i32,
    extra: String,
    kflavor: Option<String>,
    bootloader_type: Option<String>,
    rolling: bool,
    base_image: String,
}

impl ResourceRow {
    fn new(
        set: &SourceSet,
        found: Option<&FoundResource>,
        opts: &ImportOptions,
        default_base: &str,
    ) -> ResourceRow {
        let mut extra = set.resource_extra.clone();
        let mut base_image = String::new();
        if set.rtype == RTYPE_UPLOADED {
            // MAAS's upload form always has a title field: "" when none was given.
            let title = opts.title.clone().unwrap_or_default();
            extra.insert("title".into(), serde_json::Value::String(title));
            // Only a custom image has a base; MAAS keeps '' for the others. As in
            // MAAS's form, a base the stored resource already has is kept.
            if set.os == "custom" {
                let stored = found
                    .and_then(|f| f.base_image.clone())
                    .filter(|b| !b.is_empty());
                if let (Some(stored), Some(given)) = (&stored, &opts.base_image)
                    && stored != given
                {
                    log::warn!(
                        "{}: keeps its base image {stored} (as MAAS does), not --base-image {given}",
                        set.path()
                    );
                }
                base_image = stored
                    .or_else(|| opts.base_image.clone())
                    .unwrap_or_else(|| default_base.to_string());
            }
        }
        ResourceRow {
            rtype: set.rtype,
            extra: maas::python_json(&serde_json::Value::Object(extra)),
            kflavor: set.kflavor.clone(),
            bootloader_type: set.bootloader_type.clone(),
            rolling: set.rolling,
            base_image,
        }
    }

    /// The optional columns this schema has, with their values.
    fn optional<'a>(
        &'a self,
        schema: &Schema,
    ) -> Vec<(&'static str, &'a (dyn postgres::types::ToSql + Sync))> {
        let mut cols: Vec<(&'static str, &'a (dyn postgres::types::ToSql + Sync))> = Vec::new();
        if schema.kflavor {
            cols.push(("kflavor", &self.kflavor));
        }
        if schema.bootloader_type {
            cols.push(("bootloader_type", &self.bootloader_type));
        }
        if schema.rolling {
            cols.push(("rolling", &self.rolling));
        }
        if schema.base_image {
            cols.push(("base_image", &self.base_image));
        }
        cols
    }

    fn insert(
        &self,
        txn: &mut Transaction<'_>,
        schema: &Schema,
        set: &SourceSet,
    ) -> Result<i64, StoreError> {
        let (name, architecture) = (set.name(), set.architecture());
        let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> =
            vec![&self.rtype, &name, &architecture, &self.extra];
        let (cols, vals): (Vec<_>, Vec<_>) = self.optional(schema).into_iter().unzip();
        params.extend(vals);
        txn.query_one(&sql::insert_resource(schema, &cols), &params)
            .map(|r| r.get(0))
            .map_err(|e| db_err(format!("inserting the resource row of {}", set.path()), e))
    }

    fn update(
        &self,
        txn: &mut Transaction<'_>,
        schema: &Schema,
        id: i64,
        path: &str,
    ) -> Result<(), StoreError> {
        let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> =
            vec![&id, &self.rtype, &self.extra];
        let (cols, vals): (Vec<_>, Vec<_>) = self.optional(schema).into_iter().unzip();
        params.extend(vals);
        txn.execute(&sql::update_resource(schema, &cols), &params)
            .map(|_| ())
            .map_err(|e| db_err(format!("updating the resource row of {path}"), e))
    }
}

/// The region's commissioning os/series (`maasserver_config`), which MAAS makes
/// the base of a custom image uploaded without one; [`DEFAULT_BASE_IMAGE`] when
/// the database has no such setting (a stand-alone store).
fn commissioning_base(client: &mut Client) -> Result<String, StoreError> {
    let has_config: bool = client
        .query_one(sql::HAS_CONFIG, &[])
        .map_err(|e| db_err("looking for maasserver_config", e))?
        .get(0);
    let (mut os, mut series) = DEFAULT_BASE_IMAGE
        .split_once('/')
        .map(|(o, s)| (o.to_string(), s.to_string()))
        .unwrap_or_default();
    if has_config {
        let rows = client
            .query(sql::COMMISSIONING_RELEASE, &[])
            .map_err(|e| db_err("reading the commissioning release", e))?;
        for r in &rows {
            let (name, value): (String, Option<String>) = (r.get(0), r.get(1));
            // The value is JSON text (`"jammy"`).
            let Some(v) = value
                .and_then(|v| serde_json::from_str::<serde_json::Value>(&v).ok())
                .and_then(|v| v.as_str().map(str::to_string))
                .filter(|v| !v.is_empty())
            else {
                continue;
            };
            if name == "commissioning_osystem" {
                os = v;
            } else {
                series = v;
            }
        }
    }
    Ok(format!("{os}/{series}"))
}

/// The stored resource of the set, with the stored set of its version.
fn find_set(
    txn: &mut Transaction<'_>,
    schema: &Schema,
    set: &SourceSet,
) -> Result<Option<FoundResource>, StoreError> {
    let row = txn
        .query_opt(
            &sql::find_resource_and_set(schema),
            &[&set.name(), &set.architecture(), &set.version],
        )
        .map_err(|e| db_err(format!("looking up {}", set.path()), e))?;
    Ok(row.map(|r| FoundResource {
        id: r.get(0),
        rtype: r.get(1),
        base_image: r.get(2),
        set: r
            .get::<_, Option<i64>>(3)
            .map(|id| (id, r.get::<_, Option<String>>(4).unwrap_or_default())),
    }))
}

fn stored_files(
    txn: &mut Transaction<'_>,
    schema: &Schema,
    set_id: i64,
) -> Result<StoredFiles, StoreError> {
    let rows = txn
        .query(&sql::files_of_set(schema), &[&set_id])
        .map_err(|e| db_err("reading the stored files of a version", e))?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect())
}

/// What differs between the source version and the stored one (empty: identical).
fn compare(
    set: &SourceSet,
    kind: SourceKind,
    stored: &StoredFiles,
    progress: &mut Progress,
) -> Result<Vec<String>, StoreError> {
    let mut diff = Vec::new();
    for f in &set.files {
        let Some((sha, size, complete)) = stored.get(&f.filename) else {
            diff.push(format!("{}: not in the stored version", f.filename));
            progress.skip(f.size);
            continue;
        };
        let src_sha = match (&f.sha256, kind) {
            (Some(s), _) => {
                progress.skip(f.size);
                s.clone()
            }
            (None, _) if *size as u64 != f.size => {
                progress.skip(f.size);
                diff.push(format!(
                    "{}: {} bytes here, {size} stored",
                    f.filename, f.size
                ));
                continue;
            }
            (None, _) => {
                progress.start_file(&format!("{}/{} (checking)", set.path(), f.filename), f.size);
                hash_file(&f.path, Some(progress))?
            }
        };
        if &src_sha != sha {
            diff.push(format!(
                "{}: sha256 {src_sha} here, {sha} stored",
                f.filename
            ));
        } else if !complete {
            diff.push(format!("{}: the stored copy is unfinished", f.filename));
        }
    }
    for name in stored.keys() {
        if !set.files.iter().any(|f| &f.filename == name) {
            diff.push(format!("{name}: stored, but not in the source"));
        }
    }
    Ok(diff)
}

/// Makes sure the file's content is stored; returns its largefile id.
fn store_content(
    txn: &mut Transaction<'_>,
    stmts: &Statements,
    set: &SourceSet,
    f: &SourceFile,
    progress: &mut Progress,
    summary: &mut ImportSummary,
) -> Result<i64, StoreError> {
    let shown = format!("{}/{}", set.path(), f.filename);
    let mut expected = f.sha256.clone();
    if expected.is_none() && same_size_stored(txn, f.size, &shown)? {
        // Maybe the same bytes: a read costs far less than a write and a drop.
        progress.start_file(&format!("{shown} (checking)"), f.size);
        expected = Some(hash_file(&f.path, None)?);
    }
    if let Some(sha) = &expected
        && let Some(id) = reuse(txn, stmts, sha, &shown)?
    {
        progress.skip(f.size);
        summary.files_shared += 1;
        return Ok(id);
    }
    progress.start_file(&shown, f.size);
    let oid: u32 = txn
        .query_one(&stmts.lo_create, &[])
        .map_err(|e| db_err(format!("creating a large object for {shown}"), e))?
        .get(0);
    let fd: i32 = txn
        .query_one(&stmts.lo_open, &[&oid, &INV_WRITE])
        .map_err(|e| db_err(format!("opening large object {oid} for {shown}"), e))?
        .get(0);
    let (sha, size) = stream_file(txn, stmts, &f.path, fd, &shown, progress)?;
    if size != f.size {
        return Err(StoreError::Checksum {
            path: f.path.clone(),
            detail: format!(
                "changed while importing ({} bytes when checked, {size} read): import again \
                 once nothing writes to it",
                f.size
            ),
        });
    }
    if let Some(want) = &expected
        && want != &sha
    {
        let detail = if f.sha256.is_some() {
            format!("sha256 is {sha}, the mirror's index says {want} (re-fetch the mirror)")
        } else {
            "changed while importing: import again once nothing writes to it".to_string()
        };
        return Err(StoreError::Checksum {
            path: f.path.clone(),
            detail,
        });
    }
    if let Some(id) = reuse(txn, stmts, &sha, &shown)? {
        // Same bytes already stored: drop the copy just written.
        txn.execute(&stmts.lo_unlink, &[&oid])
            .map_err(|e| db_err(format!("unlinking the duplicate of {shown}"), e))?;
        summary.files_shared += 1;
        return Ok(id);
    }
    let total = size as i64;
    let id: i64 = txn
        .query_one(&stmts.insert_largefile, &[&sha, &total, &oid])
        .map_err(|e| db_err(format!("inserting the largefile row of {shown}"), e))?
        .get(0);
    summary.files_written += 1;
    summary.bytes_written += size;
    Ok(id)
}

/// The id of a complete largefile holding `sha`, if there is one.
fn reuse(
    txn: &mut Transaction<'_>,
    stmts: &Statements,
    sha: &str,
    shown: &str,
) -> Result<Option<i64>, StoreError> {
    let Some(row) = txn
        .query_opt(&stmts.find_largefile, &[&sha])
        .map_err(|e| db_err(format!("looking up the content of {shown}"), e))?
    else {
        return Ok(None);
    };
    let (id, total, written): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    if written < total {
        return Err(StoreError::Conflict {
            path: shown.to_string(),
            differences: vec![format!(
                "largefile {id} with sha256 {sha} is an unfinished download \
                 ({written} of {total} bytes; MAAS may still be writing it): retry when it is complete"
            )],
        });
    }
    Ok(Some(id))
}

/// Copies `path` into open large object `fd`, hashing on the way; a reader thread
/// keeps the next chunk ready while the server stores this one.
fn stream_file(
    txn: &mut Transaction<'_>,
    stmts: &Statements,
    path: &Path,
    fd: i32,
    shown: &str,
    progress: &mut Progress,
) -> Result<(String, u64), StoreError> {
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel::<Vec<u8>>(2);
        let reader = scope.spawn(move || -> io::Result<(String, u64)> {
            let mut file = File::open(path)?;
            let mut hasher = Sha256::new();
            let mut total = 0u64;
            loop {
                let mut buf = vec![0u8; WRITE_CHUNK];
                let n = read_full(&mut file, &mut buf)?;
                buf.truncate(n);
                hasher.update(&buf);
                total += n as u64;
                if n == 0 || tx.send(buf).is_err() || n < WRITE_CHUNK {
                    break;
                }
            }
            Ok((hex(hasher.finalize().as_slice()), total))
        });
        let mut failed = None;
        for buf in rx.iter() {
            if let Err(e) = txn.query_one(&stmts.lowrite, &[&fd, &buf.as_slice()]) {
                failed = Some(db_err(format!("writing {shown}"), e));
                break;
            }
            progress.add(buf.len() as u64);
        }
        drop(rx);
        let read = reader.join();
        if let Some(e) = failed {
            return Err(e);
        }
        match read {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(err)) => Err(StoreError::Io {
                path: path.to_path_buf(),
                err,
            }),
            Err(_) => Err(StoreError::Io {
                path: path.to_path_buf(),
                err: io::Error::other("reader thread panicked"),
            }),
        }
    })
}

/// Whether a largefile of exactly `size` bytes is stored (a duplicate is possible).
fn same_size_stored(txn: &mut Transaction<'_>, size: u64, shown: &str) -> Result<bool, StoreError> {
    txn.query_one(sql::LARGEFILE_OF_SIZE_EXISTS, &[&(size as i64)])
        .map(|r| r.get(0))
        .map_err(|e| db_err(format!("looking up the content of {shown}"), e))
}

/// sha256 of a file; counted in `progress` if given.
fn hash_file(path: &Path, mut progress: Option<&mut Progress>) -> Result<String, StoreError> {
    let (sha, _) = crate::digest::sha256_file(path, |n| {
        if let Some(p) = progress.as_deref_mut() {
            p.add(n);
        }
    })
    .map_err(|err| StoreError::Io {
        path: path.to_path_buf(),
        err,
    })?;
    Ok(sha)
}

/// Fills `buf` unless the file ends first; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
