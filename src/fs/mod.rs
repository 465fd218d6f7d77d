//! The read-only file system: [`core`] decides every answer over the catalog and
//! handles and can be tested without FUSE; [`fuse`] is the thin `fuser` adapter that
//! maps its results and errors to replies, and keeps data work off the threads
//! that metadata requests need.

pub mod core;
pub mod error;
pub mod fuse;
mod walk;

pub use self::core::{FsCore, OpenTable, TreeSource};
pub use error::FsError;
pub use fuse::{BootFs, forget};
