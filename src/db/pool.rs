//! The r2d2 connection manager behind the catalog's and the handles' pools. Its
//! every connection is made by [`DbConfig::connect`], so pooled connections honour
//! the same settings as any other (r2d2_postgres's manager connects with the
//! `postgres` crate's own `Config`, which knows only part of libpq's settings).

use std::fmt;
use std::time::Duration;

use postgres::Client;
use r2d2::{ManageConnection, Pool};

use super::config::DbConfig;
use super::error::DbError;

impl DbConfig {
    /// A connection manager for r2d2 pools that connects through [`DbConfig::connect`].
    pub fn manager(&self, app: &'static str) -> Manager {
        Manager {
            db: self.clone(),
            app,
        }
    }

    /// A small pool for metadata queries (the catalog), separate from handles.
    pub fn metadata_pool(&self) -> Result<Pool<Manager>, DbError> {
        let manager = self.manager("pgbootfs-catalog");
        // Connect once now so an unreachable server is reported at start, by name.
        drop(manager.connect()?);
        // The refresher logs failures itself, once a minute while they last: r2d2's
        // own handler would log every reconnection attempt.
        Ok(Pool::builder()
            .max_size(2)
            .min_idle(Some(0))
            .connection_timeout(Duration::from_secs(5))
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(manager))
    }
}

/// r2d2 connection manager whose every connection is made by [`DbConfig::connect`].
#[derive(Clone)]
pub struct Manager {
    db: DbConfig,
    app: &'static str,
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Manager({}, {})", self.db.describe(), self.app)
    }
}

impl ManageConnection for Manager {
    type Connection = Client;
    type Error = DbError;

    fn connect(&self) -> Result<Client, DbError> {
        self.db.connect(self.app)
    }

    fn is_valid(&self, conn: &mut Client) -> Result<(), DbError> {
        conn.simple_query("")
            .map(|_| ())
            .map_err(|e| DbError::query("checking a pooled connection", e))
    }

    fn has_broken(&self, conn: &mut Client) -> bool {
        conn.is_closed()
    }
}
