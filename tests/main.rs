//! The integration tests, one binary so the harness compiles once: each module
//! drives the real `pgbootfs` against a PostgreSQL cluster it starts itself.

mod cache;
mod common;
mod db;
mod export;
mod handle;
mod hostile;
mod http;
mod inside;
mod inside_disk;
mod maas;
mod maas35;
mod mount;
mod ops;
mod resume;
mod service;
mod snapshot;
mod store;
mod storm;
mod walks;
