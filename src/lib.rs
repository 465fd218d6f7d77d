//! pgbootfs: MAAS boot images kept as PostgreSQL large objects, served as a
//! read-only file system (and, through the same handles, over HTTP).
//!
//! Layout: [`db`] finds the database; [`catalog`] holds the metadata snapshot of the
//! tree; [`handle`] is one open large object with its own connection and
//! transaction, the only reader of image bytes; [`fs`] adapts the kernel's FUSE
//! calls to those; [`mount`] wires it up and runs its lifecycle. [`store`] is the
//! writing side: import, ls, verify and remove.

#![warn(missing_docs)]

pub mod catalog;
pub mod db;
pub mod fs;
pub mod handle;
pub mod http;
pub mod mount;
pub mod store;
mod stream;
