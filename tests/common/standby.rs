//! Replication for tests, beside [`Cluster::standby_of`] and
//! [`Cluster::promote`]: waiting for a standby's replay.

use std::time::Duration;

use super::{Cluster, wait_until};

impl Cluster {
    /// Waits until this standby has replayed everything `primary` has written so far.
    pub fn wait_caught_up_with(&self, primary: &Cluster) {
        let lsn: String = primary
            .client("postgres")
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .unwrap()
            .get(0);
        let mut c = self.client("postgres");
        let ok = wait_until(Duration::from_secs(30), || {
            c.query_one(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&lsn],
            )
            .unwrap()
            .get::<_, Option<bool>>(0)
                == Some(true)
        });
        assert!(ok, "the standby did not catch up:\n{}", self.server_log());
    }
}
