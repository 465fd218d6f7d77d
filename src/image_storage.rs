//! MAAS 3.5+'s image storage: the directory on a region controller where every
//! image file lies under its `filename_on_disk` (the layout facts are in
//! [`crate::maas`]). Finding the directory, and what it holds of one file.
//!
//! A file counts as there only under its final name and at the row's size:
//! MAAS writes through `<name>.incomplete` (which MAAS 3.7 pre-allocates at full
//! size) and renames when done, so the final name at full size is the one sign of
//! a finished file that needs no hashing.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::maas::{FileRow, IMAGE_STORAGE_DIRS, INCOMPLETE_SUFFIX, valid_component};

/// The image storage could not be used.
#[derive(Debug)]
pub enum StorageError {
    /// No directory was given and none of MAAS's own paths exists here.
    NotFound {
        /// host, port and database of the MAAS 3.5+ database.
        target: String,
        /// The directories looked for.
        tried: Vec<PathBuf>,
    },
    /// The directory given cannot be read.
    Unusable {
        /// The directory.
        dir: PathBuf,
        /// Why.
        err: io::Error,
    },
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::NotFound { target, tried } => write!(
                f,
                "database {target} is a MAAS 3.5+ region database, whose images are in the \
                 region's image storage, but none was found here (tried {}): run pgbootfs on a \
                 region controller or give --image-storage DIR",
                tried
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            StorageError::Unusable { dir, err } => {
                write!(f, "--image-storage {}: {err}", dir.display())
            }
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Unusable { err, .. } => Some(err),
            StorageError::NotFound { .. } => None,
        }
    }
}

/// What the image storage holds of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnDisk {
    /// The final name at the row's size: the bytes are all there.
    Complete(PathBuf),
    /// The final name, at another size (bytes it holds).
    WrongSize(u64),
    /// Only `<name>.incomplete`: MAAS is writing it.
    Writing,
    /// Neither.
    Missing,
    /// The row's name cannot be a file name in the directory (empty, `..`, a `/`).
    BadName,
}

/// Where a file's bytes can be read from in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// Its large object (every MAAS before 3.5; on 3.5+ until MAAS's start-up
    /// export moved it).
    Database,
    /// MAAS 3.5+: this file of the image storage.
    Disk(PathBuf),
    /// Nowhere yet: an unfinished large object (None), or on 3.5+ what the image
    /// storage holds of it.
    Missing(Option<OnDisk>),
}

impl Place {
    /// Of `row`, with the image storage of a 3.5+ database. A file complete in the
    /// storage is read there even while its large object remains (the same bytes,
    /// without the database).
    pub fn of(row: &FileRow, storage: Option<&ImageStorage>) -> Place {
        let on_disk = match (storage, &row.disk_name) {
            (Some(s), Some(name)) => match s.state(name, row.total_size.max(0) as u64) {
                OnDisk::Complete(path) => return Place::Disk(path),
                other => Some(other),
            },
            _ => None,
        };
        if row.complete() {
            Place::Database
        } else {
            Place::Missing(on_disk)
        }
    }

    /// A word for listings: `database`, `disk` or `missing`.
    pub fn word(&self) -> &'static str {
        match self {
            Place::Database => "database",
            Place::Disk(_) => "disk",
            Place::Missing(_) => "missing",
        }
    }
}

/// The image storage directory of this host.
#[derive(Debug, Clone)]
pub struct ImageStorage {
    dir: PathBuf,
}

impl ImageStorage {
    /// `given` (which must be a readable directory), else the first of MAAS's own
    /// paths that is a directory. `target` names the database in the error.
    pub fn locate(given: Option<&Path>, target: &str) -> Result<ImageStorage, StorageError> {
        if let Some(dir) = given {
            return match std::fs::read_dir(dir) {
                Ok(_) => Ok(ImageStorage {
                    dir: dir.to_path_buf(),
                }),
                Err(err) => Err(StorageError::Unusable {
                    dir: dir.to_path_buf(),
                    err,
                }),
            };
        }
        let tried: Vec<PathBuf> = IMAGE_STORAGE_DIRS.iter().map(PathBuf::from).collect();
        match tried.iter().find(|d| d.is_dir()) {
            Some(dir) => Ok(ImageStorage { dir: dir.clone() }),
            None => Err(StorageError::NotFound {
                target: target.to_string(),
                tried,
            }),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of the file stored as `name`; None when `name` cannot be one.
    pub fn path(&self, name: &str) -> Option<PathBuf> {
        valid_component(name).then(|| self.dir.join(name))
    }

    /// What the directory holds of the file stored as `name`, `size` bytes long.
    pub fn state(&self, name: &str, size: u64) -> OnDisk {
        let Some(path) = self.path(name) else {
            return OnDisk::BadName;
        };
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.len() == size => OnDisk::Complete(path),
            Ok(m) if m.is_file() => OnDisk::WrongSize(m.len()),
            _ if self
                .dir
                .join(format!("{name}{INCOMPLETE_SUFFIX}"))
                .is_file() =>
            {
                OnDisk::Writing
            }
            _ => OnDisk::Missing,
        }
    }

    /// The names of the directory's entries, with whether each is a directory.
    pub fn entries(&self) -> io::Result<Vec<(String, bool)>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            let dir = e.file_type()?.is_dir();
            out.push((e.file_name().to_string_lossy().into_owned(), dir));
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_final_name_at_full_size_is_complete() {
        let dir = tempfile::tempdir().expect("temp dir");
        let s = ImageStorage::locate(Some(dir.path()), "test").expect("a directory");
        std::fs::write(dir.path().join("abc1234"), b"12345").expect("write");
        std::fs::write(dir.path().join("def5678.incomplete"), b"12345").expect("write");
        assert_eq!(
            s.state("abc1234", 5),
            OnDisk::Complete(dir.path().join("abc1234"))
        );
        assert_eq!(s.state("abc1234", 6), OnDisk::WrongSize(5));
        // Pre-allocated at full size, but not renamed: not there yet.
        assert_eq!(s.state("def5678", 5), OnDisk::Writing);
        assert_eq!(s.state("0000000", 5), OnDisk::Missing);
        assert_eq!(s.state("..", 5), OnDisk::BadName);
        assert_eq!(s.state("", 5), OnDisk::BadName);
        let missing = dir.path().join("nope");
        assert!(matches!(
            ImageStorage::locate(Some(&missing), "test"),
            Err(StorageError::Unusable { .. })
        ));
    }
}
