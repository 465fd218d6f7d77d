//! The integration tests, one binary so the harness compiles once: each module
//! drives the real `pgbootfs` against a PostgreSQL cluster it starts itself.

mod cache;
mod common;
mod db;
mod handle;
mod hostile;
mod http;
mod maas;
mod mount;
mod resume;
mod service;
mod snapshot;
mod store;
mod storm;
