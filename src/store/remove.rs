//! `pgbootfs remove PATH`: deletes versions in one transaction, with the largefile
//! rows and large objects no other file uses, and resources left without a set
//! (as MAAS's own clean-up does). Readers that already opened a file keep reading
//! their snapshot; new opens see the removal once the mount refreshes.

use std::collections::BTreeSet;
use std::io::Write;

use log::info;
use postgres::Transaction;

use super::{StoreError, StorePath, db_err, lock_store, open_schema, refuse_on_disk, split_name};
use crate::db::DbConfig;
use crate::maas::sql;

/// What a removal deleted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RemoveSummary {
    /// Version rows deleted.
    pub sets: usize,
    /// File rows deleted.
    pub files: usize,
    /// Largefile rows deleted (and their large objects unlinked).
    pub largefiles: usize,
    /// Resource rows deleted because no version was left.
    pub resources: usize,
}

/// Runs `pgbootfs remove PATH`. PATH names a version (`os/arch/subarch/series/version`),
/// a series (`os/arch/subarch/series`) or a subarch (`os/arch/subarch`); whole
/// architectures or operating systems and single files are refused.
pub fn run(db: &DbConfig, path: &str, out: &mut impl Write) -> Result<RemoveSummary, StoreError> {
    let target = StorePath::parse(path)?;
    match target.parts().len() {
        3..=5 => {}
        6 => {
            return Err(StoreError::BadPath {
                path: path.into(),
                reason: "a version is removed whole: a file alone would leave an incomplete \
                         set (name os/arch/subarch/series/version)"
                    .into(),
            });
        }
        _ => {
            return Err(StoreError::BadPath {
                path: path.into(),
                reason: "name at least os/arch/subarch (or a series or one version) so a typo \
                         cannot remove a whole operating system"
                    .into(),
            });
        }
    }
    let mut client = db.connect("pgbootfs-remove")?;
    let schema = open_schema(&mut client, &db.describe())?;
    refuse_on_disk(&schema, &db.describe(), "remove")?;
    let mut txn = client
        .transaction()
        .map_err(|e| db_err("starting a transaction", e))?;
    lock_store(&mut txn)?;
    let rows = txn
        .query(sql::ALL_SETS, &[])
        .map_err(|e| db_err("reading the versions", e))?;
    let mut set_ids = Vec::new();
    let mut resource_ids = BTreeSet::new();
    let mut names = Vec::new();
    for r in &rows {
        let name: String = r.get(2);
        let architecture: String = r.get(3);
        let version: String = r.get(4);
        let (os, series) = split_name(&name);
        let (arch, subarch) = architecture.split_once('/').unwrap_or((&architecture, ""));
        let parts = [os, arch, subarch, series, version.as_str()];
        if target.contains(&parts) {
            set_ids.push(r.get::<_, i64>(0));
            resource_ids.insert(r.get::<_, i64>(1));
            names.push(parts.join("/"));
        }
    }
    if set_ids.is_empty() {
        return Err(StoreError::NotFound(target.display()));
    }
    let mut summary = RemoveSummary {
        sets: set_ids.len(),
        ..Default::default()
    };
    let largefiles = delete_set_rows(&mut txn, &set_ids)?;
    summary.files = largefiles.len();
    summary.largefiles = drop_unused_largefiles(&mut txn, &largefiles)?;
    let resource_ids: Vec<i64> = resource_ids.into_iter().collect();
    summary.resources =
        txn.execute(sql::DELETE_EMPTY_RESOURCES, &[&resource_ids])
            .map_err(|e| db_err("deleting resources left without versions", e))? as usize;
    txn.commit()
        .map_err(|e| db_err("committing the removal", e))?;
    names.sort();
    for n in &names {
        info!("remove: {n}");
    }
    writeln!(
        out,
        "removed {} version(s), {} file row(s), {} large object(s), {} resource(s) left empty",
        summary.sets, summary.files, summary.largefiles, summary.resources
    )
    .map_err(StoreError::Output)?;
    Ok(summary)
}

/// Deletes the file rows and set rows of `set_ids`; returns the largefile ids the
/// deleted file rows pointed at (one per row).
pub(crate) fn delete_set_rows(
    txn: &mut Transaction<'_>,
    set_ids: &[i64],
) -> Result<Vec<i64>, StoreError> {
    let largefiles: Vec<i64> = txn
        .query(sql::DELETE_FILES_OF_SETS, &[&set_ids])
        .map_err(|e| db_err("deleting file rows", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    txn.execute(sql::DELETE_SETS, &[&set_ids])
        .map_err(|e| db_err("deleting set rows", e))?;
    Ok(largefiles)
}

/// Deletes those of `ids` that no file row uses any more and unlinks their large
/// objects (unless another largefile row still names the same object). Returns how
/// many largefile rows went.
pub(crate) fn drop_unused_largefiles(
    txn: &mut Transaction<'_>,
    ids: &[i64],
) -> Result<usize, StoreError> {
    let oids: Vec<u32> = txn
        .query(sql::DELETE_UNUSED_LARGEFILES, &[&ids])
        .map_err(|e| db_err("deleting unused largefile rows", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for oid in &oids {
        txn.execute(sql::UNLINK_UNNAMED_OBJECT, &[oid])
            .map_err(|e| db_err(format!("unlinking large object {oid}"), e))?;
    }
    Ok(oids.len())
}
