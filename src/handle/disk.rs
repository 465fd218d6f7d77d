//! The verified disk cache (`--cache-dir`): whole images kept as files named by
//! their sha256, so later opens, after a restart too and while the database is
//! down, need no connection, and the mount can hand them to the kernel for
//! passthrough.
//!
//! Nothing unverified is ever served:
//! - A file is written under a temporary name (`.part-PID-N`), hashed while it is
//!   written, fsync'd, and renamed to its sha256 only when the hash and size match
//!   the catalog's. A kill -9 leaves a `.part` file, removed at the next start.
//! - Files found at start are re-hashed by a background thread before first use; a
//!   file whose size or hash does not match its name is deleted. Every use checks
//!   the size again.
//! - Renames are atomic, so two processes may share the directory: each removes
//!   only the `.part` files of processes that are gone.
//!
//! Whole files leave least recently used first when the total passes
//! `--cache-size`, and when the catalog no longer names their sha256. A failed
//! write (a full disk) pauses caching for [`RETRY_AFTER`], with one warning until a
//! write works again; reads go on from the database meanwhile.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::digest::{hex, valid_sha256};

/// The cache directory and its index.
pub struct DiskCache {
    dir: PathBuf,
    max: u64,
    index: Mutex<Index>,
    /// After a failed write, no fill starts before this time.
    paused_until: Mutex<Option<Instant>>,
    /// A write failed and none has worked since (so the warning is given once).
    failing: AtomicBool,
    next_part: AtomicU64,
}

/// How long caching pauses after a failed write (a full or failing disk) before a
/// fill is tried again: space may come back (another user's files deleted, the
/// volume grown) without a restart.
pub const RETRY_AFTER: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Index {
    files: HashMap<String, Entry>,
    bytes: u64,
    clock: u64,
    filling: HashSet<String>,
}

struct Entry {
    size: u64,
    used: u64,
    verified: bool,
}

/// Fills running at once: each may hold a connection while it leads a stream.
const MAX_FILLS: usize = 4;

/// Is process `pid` alive (so its `.part` file may still be written)?
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

impl DiskCache {
    /// Opens (creating) the cache at `dir`, holding at most `max` bytes. Fails with
    /// a line naming the directory when it cannot be written.
    pub fn open(dir: &Path, max: u64) -> io::Result<Arc<DiskCache>> {
        let named = |e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("cache directory {} is not usable: {e}", dir.display()),
            )
        };
        fs::create_dir_all(dir).map_err(named)?;
        let probe = dir.join(format!(".probe-{}", std::process::id()));
        File::create(&probe)
            .and_then(|_| fs::remove_file(&probe))
            .map_err(named)?;
        let mut index = Index::default();
        for entry in fs::read_dir(dir).map_err(named)?.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let path = entry.path();
            if let Some(rest) = name.strip_prefix(".part-") {
                let pid = rest.split('-').next().and_then(|p| p.parse().ok());
                if pid.is_some_and(|p| !alive(p)) {
                    debug!("disk cache: removing {name}, left by a process that is gone");
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if valid_sha256(&name) && meta.is_file() {
                index.bytes += meta.len();
                index.files.insert(
                    name.to_ascii_lowercase(),
                    Entry {
                        size: meta.len(),
                        used: 0,
                        verified: false,
                    },
                );
            }
        }
        let cache = Arc::new(DiskCache {
            dir: dir.to_path_buf(),
            max,
            index: Mutex::new(index),
            paused_until: Mutex::new(None),
            failing: AtomicBool::new(false),
            next_part: AtomicU64::new(0),
        });
        {
            let idx = cache.index.lock();
            info!(
                "disk cache {}: {} file(s), {} of {} bytes; re-hashing them before use",
                dir.display(),
                idx.files.len(),
                idx.bytes,
                max
            );
        }
        let me = cache.clone();
        std::thread::Builder::new()
            .name("cache-verify".into())
            .spawn(move || me.verify_all())?;
        Ok(cache)
    }

    /// The cache's directory (the inside view keeps its index files below it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-hashes every file found at start; deletes those that do not match.
    fn verify_all(&self) {
        let names: Vec<String> = self
            .index
            .lock()
            .files
            .iter()
            .filter(|(_, e)| !e.verified)
            .map(|(n, _)| n.clone())
            .collect();
        let mut bad = 0;
        for name in &names {
            let path = self.dir.join(name);
            let ok = match crate::digest::sha256_file(&path, |_| {}) {
                Ok((sha, _)) => sha == *name,
                Err(e) => {
                    debug!("disk cache: cannot read {}: {e}", path.display());
                    false
                }
            };
            if ok {
                if let Some(e) = self.index.lock().files.get_mut(name) {
                    e.verified = true;
                }
            } else if !self.index.lock().files.contains_key(name) {
                // Deleted meanwhile (no longer in the catalog): nothing to report.
                continue;
            } else {
                bad += 1;
                warn!(
                    "disk cache: {} does not hash to its name; deleted (it will be fetched again)",
                    path.display()
                );
                self.forget(name);
            }
        }
        info!(
            "disk cache: {} file(s) verified, {bad} deleted",
            names.len().saturating_sub(bad)
        );
    }

    fn forget(&self, sha: &str) {
        let mut idx = self.index.lock();
        if let Some(e) = idx.files.remove(sha) {
            idx.bytes -= e.size;
        }
        drop(idx);
        let _ = fs::remove_file(self.dir.join(sha));
    }

    /// The cached file of `sha256` if it is verified and of `size` bytes.
    pub fn lookup(&self, sha256: &str, size: u64) -> Option<File> {
        let mut idx = self.index.lock();
        idx.clock += 1;
        let clock = idx.clock;
        let e = idx.files.get_mut(sha256)?;
        if !e.verified {
            return None;
        }
        e.used = clock;
        drop(idx);
        let path = self.dir.join(sha256);
        match File::open(&path) {
            Ok(f) if f.metadata().is_ok_and(|m| m.len() == size) => Some(f),
            Ok(_) => {
                warn!(
                    "disk cache: {} is not {size} bytes long; deleted",
                    path.display()
                );
                self.forget(sha256);
                None
            }
            Err(e) => {
                // Another process sharing the directory evicted it.
                debug!("disk cache: {}: {e}", path.display());
                self.forget(sha256);
                None
            }
        }
    }

    /// Starts writing `sha256` of `size` bytes into the cache, unless it is there,
    /// being written, too large, or caching stopped.
    pub fn begin(self: &Arc<Self>, sha256: &str, size: u64) -> Option<Fill> {
        if self.paused() || size > self.max || !valid_sha256(sha256) {
            return None;
        }
        {
            let mut idx = self.index.lock();
            if idx.files.contains_key(sha256)
                || idx.filling.len() >= MAX_FILLS
                || !idx.filling.insert(sha256.to_string())
            {
                return None;
            }
        }
        let n = self.next_part.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(".part-{}-{n}", std::process::id()));
        let file = match File::options().write(true).create_new(true).open(&tmp) {
            Ok(f) => f,
            Err(e) => {
                self.index.lock().filling.remove(sha256);
                self.stop_caching(&e);
                return None;
            }
        };
        Some(Fill {
            cache: self.clone(),
            sha256: sha256.to_string(),
            size,
            tmp,
            file: Some(file),
            hasher: Sha256::new(),
            written: 0,
        })
    }

    /// Whether a failed write paused caching and the pause has not run out.
    fn paused(&self) -> bool {
        let mut until = self.paused_until.lock();
        match *until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }

    fn stop_caching(&self, e: &io::Error) {
        *self.paused_until.lock() = Some(Instant::now() + RETRY_AFTER);
        if !self.failing.swap(true, Ordering::Relaxed) {
            warn!(
                "disk cache {}: writing failed ({e}); caching pauses, tried again every {}s; \
                 reads go on from the database",
                self.dir.display(),
                RETRY_AFTER.as_secs()
            );
        }
    }

    /// Deletes every cached file whose sha256 `keep` refuses (no longer in the catalog).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self
            .index
            .lock()
            .files
            .keys()
            .filter(|sha| !keep(sha))
            .cloned()
            .collect();
        for sha in gone {
            info!("disk cache: {sha} is no longer in the catalog; deleted");
            self.forget(&sha);
        }
    }

    /// Makes room: least recently used files go until the total fits.
    fn evict(&self, idx: &mut Index) {
        while idx.bytes > self.max {
            let Some(victim) = idx
                .files
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(n, _)| n.clone())
            else {
                return;
            };
            if let Some(e) = idx.files.remove(&victim) {
                idx.bytes -= e.size;
            }
            debug!("disk cache: evicting {victim}");
            let _ = fs::remove_file(self.dir.join(&victim));
        }
    }
}

/// A cache file being written, in order from byte 0. Dropped unfinished, it
/// leaves nothing behind.
pub struct Fill {
    cache: Arc<DiskCache>,
    sha256: String,
    size: u64,
    tmp: PathBuf,
    file: Option<File>,
    hasher: Sha256,
    written: u64,
}

impl Fill {
    /// Appends the bytes at `offset`; false (and the fill is over) on a gap or a
    /// write error.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> bool {
        let Some(file) = self.file.as_mut() else {
            return false;
        };
        if offset != self.written {
            self.file = None;
            return false;
        }
        if let Err(e) = file.write_all(data) {
            self.cache.stop_caching(&e);
            self.file = None;
            return false;
        }
        self.hasher.update(data);
        self.written += data.len() as u64;
        true
    }

    /// Promotes the file if every byte was written and the hash matches.
    pub fn finish(mut self) -> bool {
        let Some(file) = self.file.take() else {
            return false;
        };
        let sha = hex(std::mem::take(&mut self.hasher).finalize().as_slice());
        if self.written != self.size || sha != self.sha256 {
            warn!(
                "disk cache: content read for {} hashes to {sha} ({} bytes): not cached",
                self.sha256, self.written
            );
            return false;
        }
        if let Err(e) = file.sync_all() {
            self.cache.stop_caching(&e);
            return false;
        }
        let dest = self.cache.dir.join(&self.sha256);
        if let Err(e) = fs::rename(&self.tmp, &dest) {
            self.cache.stop_caching(&e);
            return false;
        }
        // The rename itself must survive a crash too.
        if let Ok(d) = File::open(&self.cache.dir) {
            let _ = d.sync_all();
        }
        let mut idx = self.cache.index.lock();
        idx.clock += 1;
        let clock = idx.clock;
        idx.bytes += self.size;
        idx.files.insert(
            self.sha256.clone(),
            Entry {
                size: self.size,
                used: clock,
                verified: true,
            },
        );
        self.cache.evict(&mut idx);
        drop(idx);
        if self.cache.failing.swap(false, Ordering::Relaxed) {
            info!(
                "disk cache {}: writing works again",
                self.cache.dir.display()
            );
        }
        debug!("disk cache: {} stored", self.sha256);
        true
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        self.cache.index.lock().filling.remove(&self.sha256);
        // Present unless promoted.
        let _ = fs::remove_file(&self.tmp);
    }
}
