//! Where the database is and how pgbootfs connects to it, with libpq's meaning.
//!
//! The `postgres` crate reads no libpq environment, knows no service files, no TLS
//! certificate checks and only some `target_session_attrs`, so this module does
//! what libpq does. One job per room, each depending only on those before it:
//!
//! - [`error`]: [`DbError`] for callers, [`ConfError`] (the keyword at fault and
//!   why) for the parsers below.
//! - [`conninfo`]: a `key=value` string or a `postgres://` URL into libpq keywords.
//! - [`service`]: `pg_service.conf` sections.
//! - [`tls`]: `sslmode` and the certificate files, on OpenSSL.
//! - [`config`]: the settings layered key by key (connection string, service,
//!   `PG*` variables, defaults), each remembering where it came from; the hosts
//!   as `Endpoint`s, `target_session_attrs` as [`SessionAttrs`].
//! - `pgpass`: the password file.
//! - `connect`: [`DbConfig::connect`], one session: hosts in turn or shuffled,
//!   TLS, the password, the server's [`Role`] checked.
//! - `pool`: the r2d2 [`Manager`] every pool uses, and the catalog's pool.
//!
//! Nothing this module prints or returns carries a password.

pub mod config;
mod connect;
pub mod conninfo;
pub mod error;
mod pgpass;
mod pool;
pub mod service;
pub mod tls;

pub use config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEEPALIVES_COUNT, DEFAULT_KEEPALIVES_IDLE,
    DEFAULT_KEEPALIVES_INTERVAL, DEFAULT_TCP_USER_TIMEOUT_MS, DbConfig, Role, SessionAttrs,
};
pub use conninfo::Params;
pub use error::{ConfError, DbError, connect_reason, describe_pg_error};
pub use pool::Manager;
pub use tls::SslMode;
