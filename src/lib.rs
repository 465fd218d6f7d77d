//! pgbootfs: MAAS boot images kept as PostgreSQL large objects, served as a
//! read-only file system and over HTTP, through the same handles.
//!
//! Layers, dependencies pointing down (doc/DEVELOPMENT.md has the diagram):
//! - front ends: [`mount`] (with [`fs`]), [`http`], [`store`] (import, ls, verify,
//!   remove); [`daemon`] is the start-up and shutdown that `mount` and `serve` share;
//! - [`inside`]: the contents of images (squashfs, tarballs) read on demand
//!   through handles, for `--inside`;
//! - [`handle`]: every read of image bytes, over a shared chunk cache;
//! - [`catalog`]: the metadata snapshot of the tree;
//! - [`maas`]: all knowledge of MAAS's tables (per-version columns, the join, names,
//!   sync rules, `extra` JSON);
//! - [`image_storage`]: MAAS 3.5+'s image directory (finding it, what it holds);
//! - [`db`]: where the database is and how to connect; [`mountinfo`]: the mount table.

#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod catalog;
pub mod daemon;
pub mod db;
pub mod digest;
pub mod fs;
pub mod handle;
pub mod http;
pub mod image_storage;
pub mod inside;
pub mod maas;
pub mod metrics;
pub mod mount;
pub mod mount_helper;
pub mod mountinfo;
pub mod passwd;
pub mod store;
mod sync;

/// The version and the git commit this binary was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("PGBOOTFS_GIT_COMMIT"),
    ")"
);
