//! What the file system core answers instead of a value; mapped to errno in one
//! place, [`FsError::errno`].

use std::fmt;

use crate::handle::{ErrorClass, HandleError};
use crate::inside::InsideError;

/// Why a file system call failed.
#[derive(Debug)]
pub enum FsError {
    /// No such inode or name.
    NotFound,
    /// A directory operation on a file.
    NotDir,
    /// A file operation on a directory.
    IsDir,
    /// A write of any kind: the tree is read-only.
    ReadOnly,
    /// A file handle number the kernel never got from us.
    BadHandle,
    /// Reading the image failed.
    Read(HandleError),
    /// An image's contents could not be read (`--inside`): corrupt, truncated,
    /// unsupported, or its bytes could not be had.
    Inside(InsideError),
    /// Not a symbolic link (readlink).
    Invalid,
}

impl FsError {
    /// The errno the kernel is told.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::ReadOnly => libc::EROFS,
            FsError::BadHandle => libc::EBADF,
            FsError::Read(e) => class_errno(e.class()),
            FsError::Inside(e) => class_errno(e.class()),
            FsError::Invalid => libc::EINVAL,
        }
    }
}

fn class_errno(class: ErrorClass) -> i32 {
    match class {
        ErrorClass::Busy => libc::EAGAIN,
        ErrorClass::Unavailable | ErrorClass::Gone | ErrorClass::Broken => libc::EIO,
    }
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsError::NotFound => f.write_str("no such file or directory"),
            FsError::NotDir => f.write_str("not a directory"),
            FsError::IsDir => f.write_str("is a directory"),
            FsError::ReadOnly => f.write_str("read-only file system"),
            FsError::BadHandle => f.write_str("unknown file handle"),
            FsError::Read(e) => e.fmt(f),
            FsError::Inside(e) => e.fmt(f),
            FsError::Invalid => f.write_str("invalid argument"),
        }
    }
}

impl std::error::Error for FsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FsError::Read(e) => Some(e),
            FsError::Inside(e) => Some(e),
            _ => None,
        }
    }
}

impl From<HandleError> for FsError {
    fn from(e: HandleError) -> Self {
        FsError::Read(e)
    }
}
