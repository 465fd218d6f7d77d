//! Replication for tests: a hot standby of a running cluster, promotion, and
//! waiting for replay. Kept apart from the cluster itself, generic, so any test
//! module can build a primary and a standby.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use super::{Cluster, chown_postgres, pg_command, run_ok, temp_dir, wait_until};

impl Cluster {
    /// A hot standby of `primary`, streaming from it (`pg_basebackup -R`), started
    /// and in recovery; stopped and deleted on drop like any cluster. The primary
    /// must be running; the initdb defaults (wal_level replica, local replication
    /// trusted) are enough.
    pub fn start_standby_of(primary: &Cluster) -> Cluster {
        let dir = temp_dir("pgbt-sb-");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        chown_postgres(dir.path());
        let mut c = pg_command("pg_basebackup");
        c.arg("-D")
            .arg(dir.path().join("data"))
            .arg("-h")
            .arg(primary.host())
            .args([
                "-p", "5432", "-U", "postgres", "-R", "-X", "stream", "-c", "fast",
            ]);
        run_ok(c, "pg_basebackup");
        let standby = Cluster { dir };
        standby.start_server();
        let mut client = standby.client("postgres");
        let in_recovery: bool = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .unwrap()
            .get(0);
        assert!(in_recovery, "the standby is not in recovery");
        standby
    }

    /// Adds `setting` (`name = value`) to the server's configuration and reloads it.
    pub fn configure(&self, setting: &str) {
        let conf = self.dir.path().join("data").join("postgresql.conf");
        let mut text = fs::read_to_string(&conf).unwrap();
        text.push_str(&format!("\n{setting}\n"));
        fs::write(&conf, text).unwrap();
        self.client("postgres")
            .batch_execute("SELECT pg_reload_conf()")
            .unwrap();
    }

    /// Promotes this standby to a primary and waits until it accepts writes.
    pub fn promote(&self) {
        let mut c = pg_command("pg_ctl");
        c.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-w", "-t", "60", "promote"])
            .stdout(Stdio::null());
        run_ok(c, "pg_ctl promote");
    }

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
