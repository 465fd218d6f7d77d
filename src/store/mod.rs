//! The writing side: `pgbootfs import`, `ls`, `verify` and `remove`.
//!
//! Every command works on the four MAAS tables and writes rows exactly as MAAS
//! does, so a store made here is a valid MAAS image store and the other way round.
//! [`source`] reads and checks what is to be imported, [`import`] writes it one
//! version per transaction, [`list`] reads the rows back (unfinished files
//! included), [`verify`] re-reads the bytes through [`crate::handle::Handle`], and
//! [`remove`] deletes versions with their now unused large objects.

use std::fmt;
use std::path::PathBuf;

use postgres::Client;

use crate::catalog::valid_component;
use crate::db::DbError;
use crate::maas::Schema;

pub mod export;
pub mod import;
pub mod list;
pub mod progress;
pub mod remove;
pub mod source;
pub mod verify;

/// The shipped schema: `CREATE TABLE IF NOT EXISTS` only, so it never alters a table.
pub const SCHEMA: &str = include_str!("../../schema/maas-schema.sql");

/// Key of the advisory lock every writer takes for its transaction, so two imports
/// (or an import and a remove) never race on the same sha256 or version.
const WRITE_LOCK: i64 = 0x7067_6274_6673; // "pgbtfs"

/// An error of a store command. Display names the thing at fault.
#[derive(Debug)]
pub enum StoreError {
    /// Connecting or a query failed.
    Db(DbError),
    /// The source cannot be imported; every problem found, one per entry.
    Source {
        /// The SRC argument.
        root: PathBuf,
        /// One line per problem.
        problems: Vec<String>,
    },
    /// Reading a source file failed while importing it.
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        err: std::io::Error,
    },
    /// A stored version differs from the source and `--replace` was not given.
    Conflict {
        /// The version's path.
        path: String,
        /// What differs, one entry per file.
        differences: Vec<String>,
    },
    /// A version cannot be written where it would go; nothing of it was.
    Refused {
        /// The version's path.
        path: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// A file's content does not match the checksum or size its source promised.
    Checksum {
        /// The file.
        path: PathBuf,
        /// What was expected and found.
        detail: String,
    },
    /// A PATH argument cannot name anything in the store.
    BadPath {
        /// The argument.
        path: String,
        /// Why.
        reason: String,
    },
    /// Nothing in the store matches PATH.
    NotFound(String),
    /// Writing the report to standard output failed (a closed pipe, say).
    Output(std::io::Error),
    /// A writing command on a MAAS 3.5+ database, whose images MAAS's own
    /// workflows keep in the region's image storage.
    OnDisk {
        /// host, port and database.
        target: String,
        /// `import` or `remove`.
        command: &'static str,
    },
    /// MAAS 3.5+: the image storage cannot be found or read.
    Storage(crate::image_storage::StorageError),
    /// `export` could not use a file or directory of the image storage.
    Export {
        /// The file or directory.
        path: PathBuf,
        /// What was being done ("creating", ...).
        what: String,
        /// The OS error.
        err: std::io::Error,
    },
    /// The image storage's file system has too little room for what `export`
    /// still has to write; nothing was written.
    NoSpace {
        /// The image storage directory.
        dir: PathBuf,
        /// Bytes still to write.
        need: u64,
        /// Bytes free.
        avail: u64,
    },
    /// `--owner` names no user or group of this host.
    BadOwner {
        /// The argument.
        owner: String,
        /// Why.
        reason: String,
    },
    /// `export` failed for some files (already reported one by one).
    ExportFailed {
        /// How many files failed.
        failed: usize,
        /// How many were to be exported.
        of: usize,
    },
    /// `verify` found problems (already reported one by one).
    VerifyFailed {
        /// How many files are wrong.
        bad: usize,
        /// How many were checked.
        checked: usize,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Db(e) => e.fmt(f),
            StoreError::Source { root, problems } => {
                write!(
                    f,
                    "{} cannot be imported ({} problem(s); nothing was written):",
                    root.display(),
                    problems.len()
                )?;
                for p in problems {
                    write!(f, "\n  {p}")?;
                }
                Ok(())
            }
            StoreError::Io { path, err } => write!(f, "reading {}: {err}", path.display()),
            StoreError::Conflict { path, differences } => {
                write!(
                    f,
                    "{path} is already in the store with different content; nothing of it \
                     was written (use --replace to replace the stored version):"
                )?;
                for d in differences {
                    write!(f, "\n  {d}")?;
                }
                Ok(())
            }
            StoreError::Refused { path, reason } => {
                write!(
                    f,
                    "{path} was not imported (nothing of it was written): {reason}"
                )
            }
            StoreError::Checksum { path, detail } => write!(
                f,
                "{}: {detail}; its version was not imported",
                path.display()
            ),
            StoreError::Output(e) => write!(f, "writing standard output: {e}"),
            StoreError::BadPath { path, reason } => write!(f, "invalid path {path:?}: {reason}"),
            StoreError::NotFound(path) => write!(
                f,
                "nothing in the store under {path:?} (see `pgbootfs ls` for what is there)"
            ),
            StoreError::OnDisk { target, command } => write!(
                f,
                "database {target} is a MAAS 3.5+ region database: its images are in the \
                 region's image storage, which MAAS's own image sync and upload own, so \
                 `pgbootfs {command}` writes nothing there (use MAAS's UI or CLI; pgbootfs \
                 mount, serve, ls and verify read it)"
            ),
            StoreError::Storage(e) => e.fmt(f),
            StoreError::Export { path, what, err } => {
                write!(f, "{what} {}: {err}", path.display())
            }
            StoreError::NoSpace { dir, need, avail } => write!(
                f,
                "not enough free space in {}: {need} bytes still to export, {avail} free \
                 ({} MiB short); nothing was written (free some space or export elsewhere)",
                dir.display(),
                (need - avail).div_ceil(1 << 20)
            ),
            StoreError::BadOwner { owner, reason } => {
                write!(f, "invalid --owner {owner:?}: {reason}")
            }
            StoreError::ExportFailed { failed, of } => write!(
                f,
                "export failed for {failed} of {of} file(s) (see above); run it again to \
                 retry them"
            ),
            StoreError::VerifyFailed { bad, checked } => {
                write!(f, "verify failed: {bad} of {checked} file(s) are wrong")
            }
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Db(e) => Some(e),
            StoreError::Storage(e) => Some(e),
            StoreError::Io { err, .. }
            | StoreError::Output(err)
            | StoreError::Export { err, .. } => Some(err),
            _ => None,
        }
    }
}

impl From<DbError> for StoreError {
    fn from(e: DbError) -> Self {
        StoreError::Db(e)
    }
}

/// Wraps a driver error met while doing `what`.
pub(crate) fn db_err(what: impl Into<String>, err: postgres::Error) -> StoreError {
    StoreError::Db(DbError::query(what, err))
}

/// A PATH argument: up to six components os/arch/subarch/series/version/filename.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorePath(Vec<String>);

impl StorePath {
    /// Parses `a/b/c`; leading, trailing and doubled slashes are ignored. An empty
    /// string is the whole store.
    pub fn parse(text: &str) -> Result<StorePath, StoreError> {
        let parts: Vec<String> = text
            .split('/')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        let bad = |reason: String| StoreError::BadPath {
            path: text.to_string(),
            reason,
        };
        if parts.len() > 6 {
            return Err(bad(
                "a store path has at most 6 parts: os/arch/subarch/series/version/filename".into(),
            ));
        }
        if let Some(p) = parts.iter().find(|p| !valid_component(p)) {
            return Err(bad(format!("{p:?} cannot be a path component")));
        }
        Ok(StorePath(parts))
    }

    /// The components, from os on.
    pub fn parts(&self) -> &[String] {
        &self.0
    }

    /// Whether the file at `file` (six components) is under this path.
    pub fn contains(&self, file: &[&str]) -> bool {
        self.0.len() <= file.len() && self.0.iter().zip(file).all(|(a, b)| a == b)
    }

    /// `a/b/c`, or `/` for the whole store.
    pub fn display(&self) -> String {
        if self.0.is_empty() {
            "/".into()
        } else {
            self.0.join("/")
        }
    }
}

pub use crate::maas::{resource_name, split_name};

/// Lower-case hex of a digest (kept here for the store's callers).
pub use crate::catalog::hex;

/// Detects the tables' MAAS version; a clear error when they are absent or MAAS
/// 3.5+ (images on disk).
pub(crate) fn open_schema(
    client: &mut impl postgres::GenericClient,
    target: &str,
) -> Result<Schema, StoreError> {
    Ok(Schema::detect(client, target)?)
}

/// Refuses `command` (a writer) on a MAAS 3.5+ database.
pub(crate) fn refuse_on_disk(
    schema: &Schema,
    target: &str,
    command: &'static str,
) -> Result<(), StoreError> {
    if schema.on_disk {
        return Err(StoreError::OnDisk {
            target: target.to_string(),
            command,
        });
    }
    Ok(())
}

/// MAAS 3.5+: the image storage (`--image-storage`, else MAAS's own paths);
/// None on a database that keeps its images.
pub(crate) fn open_storage(
    schema: &Schema,
    given: Option<&std::path::Path>,
    target: &str,
) -> Result<Option<crate::image_storage::ImageStorage>, StoreError> {
    if !schema.on_disk {
        return Ok(None);
    }
    crate::image_storage::ImageStorage::locate(given, target)
        .map(Some)
        .map_err(StoreError::Storage)
}

/// Creates the four tables where absent (never alters one) and detects their
/// MAAS version. A MAAS 3.5+ database is refused before anything is written.
pub(crate) fn ensure_schema(client: &mut Client, target: &str) -> Result<Schema, StoreError> {
    let mut txn = client
        .transaction()
        .map_err(|e| db_err("starting a transaction", e))?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
        .map_err(|e| db_err("taking the store's write lock", e))?;
    match Schema::detect(&mut txn, target) {
        Ok(s) => refuse_on_disk(&s, target, "import")?,
        Err(DbError::NotAStore { missing, .. }) => {
            // The server's "already exists, skipping" notices would only be noise.
            txn.batch_execute("SET LOCAL client_min_messages = warning")
                .and_then(|_| txn.batch_execute(SCHEMA))
                .map_err(|e| db_err("creating the MAAS tables where absent", e))?;
            log::info!(
                "created the MAAS tables that were absent ({} of 4)",
                missing.len()
            );
        }
        Err(e) => return Err(e.into()),
    }
    let schema = Schema::detect(&mut txn, target)?;
    txn.commit()
        .map_err(|e| db_err("creating the MAAS tables where absent", e))?;
    Ok(schema)
}

/// Takes the store's write lock for the rest of the transaction.
pub(crate) fn lock_store(txn: &mut postgres::Transaction<'_>) -> Result<(), StoreError> {
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
        .map(|_| ())
        .map_err(|e| db_err("taking the store's write lock", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_paths() {
        let p = StorePath::parse("/ubuntu//amd64/").unwrap();
        assert_eq!(p.parts(), ["ubuntu", "amd64"]);
        assert!(p.contains(&["ubuntu", "amd64", "generic", "focal", "1", "k"]));
        assert!(!p.contains(&["ubuntu", "arm64", "generic", "focal", "1", "k"]));
        assert_eq!(StorePath::parse("").unwrap().display(), "/");
        assert!(StorePath::parse("a/../b").is_err());
        assert!(StorePath::parse("a/b/c/d/e/f/g").is_err());
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }
}
