//! Opening a session: the hosts in turn (or shuffled), TLS as `sslmode` says, a
//! password from the settings or the password file, and the server's role checked
//! against `target_session_attrs`. [`DbConfig::connect`] is the one way pgbootfs
//! connects: both pools and every reconnection call it.

use std::collections::HashMap;
use std::sync::OnceLock;

use parking_lot::Mutex;
use postgres::config::Host;
use postgres::{Client, Config, NoTls};

use super::config::{DbConfig, Endpoint, Role, SessionAttrs};
use super::error::{DbError, connect_reason, describe_pg_error};
use super::pgpass;
use super::tls::SslMode;

/// Which host roles have been logged, so each is logged once (and again when it
/// changes, as after a failover).
fn roles_seen() -> &'static Mutex<HashMap<String, Role>> {
    static SEEN: OnceLock<Mutex<HashMap<String, Role>>> = OnceLock::new();
    SEEN.get_or_init(Mutex::default)
}

fn note_role(label: &str, role: Role) {
    let mut seen = roles_seen().lock();
    let before = seen.insert(label.to_string(), role);
    if before == Some(role) {
        return;
    }
    match before {
        None => log::info!("database {label} is {}", role.describe()),
        Some(old) => log::warn!(
            "database {label} is now {} (was {})",
            role.describe(),
            old.describe()
        ),
    }
    if role.standby && !role.feedback && before.is_none_or(|b| !b.standby || b.feedback) {
        log::warn!(
            "database {label} is a hot standby with hot_standby_feedback off: when its \
             replay conflicts with a read (VACUUM on the primary), the server ends that \
             read's session after max_standby_streaming_delay; turn hot_standby_feedback \
             on to avoid most such conflicts"
        );
    }
}

impl DbConfig {
    /// Opens one session honouring every setting: each host in turn (shuffled with
    /// `load_balance_hosts=random`), TLS as `sslmode` says, and the server checked
    /// against `target_session_attrs`. `app` is the `application_name` unless the
    /// settings name one. The one way pgbootfs connects: pools and reconnections
    /// call it too.
    pub fn connect(&self, app: &str) -> Result<Client, DbError> {
        let mut order: Vec<usize> = (0..self.endpoints.len()).collect();
        if self.random {
            use rand::seq::SliceRandom;
            order.shuffle(&mut rand::rng());
        }
        // prefer-standby is two passes: standbys only, then anything.
        let passes = match self.attrs {
            SessionAttrs::PreferStandby => vec![SessionAttrs::Standby, SessionAttrs::Any],
            a => vec![a],
        };
        let mut failures: Vec<String> = Vec::new();
        let mut unreachable = vec![false; self.endpoints.len()];
        let mut last = None;
        for (pass, want) in passes.iter().enumerate() {
            for &i in &order {
                if pass > 0 && unreachable[i] {
                    continue;
                }
                let ep = &self.endpoints[i];
                match self.attempt(ep, app, *want) {
                    Ok(client) => return Ok(client),
                    Err(Attempt::Refused(role)) => {
                        if pass + 1 == passes.len() {
                            failures.push(format!(
                                "{}: server is {}, not acceptable for target_session_attrs={}",
                                ep.label(),
                                role.describe(),
                                self.attrs.name()
                            ));
                        }
                    }
                    Err(Attempt::Failed(why, err)) => {
                        unreachable[i] = true;
                        failures.push(format!("{}: {why}", ep.label()));
                        last = err;
                    }
                }
            }
        }
        Err(DbError::Connect {
            target: self.describe(),
            reason: failures.join("; "),
            source: last,
        })
    }

    /// One attempt at one host within `connect_timeout`, as libpq bounds the whole
    /// start-up (TLS, authentication, the role check), not only the TCP connect
    /// the driver bounds: a frozen server (a paused VM, a stopped postmaster)
    /// completes TCP handshakes in its kernel and then never answers. The driver
    /// cannot be interrupted, so the attempt runs on a thread of its own that is
    /// left to finish (or to wait on that server) if the time runs out.
    fn attempt(&self, ep: &Endpoint, app: &str, want: SessionAttrs) -> Result<Client, Attempt> {
        let Some(limit) = self.base.get_connect_timeout().copied() else {
            return self.connect_endpoint(ep, app, want);
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (db, ep2, app2) = (self.clone(), ep.clone(), app.to_string());
        std::thread::Builder::new()
            .name("pg-connect".into())
            .spawn(move || {
                let _ = tx.send(db.connect_endpoint(&ep2, &app2, want));
            })
            .map_err(|e| Attempt::Failed(format!("cannot start a thread: {e}"), None))?;
        rx.recv_timeout(limit).unwrap_or_else(|_| {
            Err(Attempt::Failed(
                format!("no answer within {} s (connect_timeout)", limit.as_secs()),
                None,
            ))
        })
    }

    /// One attempt at one host; the session is returned only if `want` accepts it.
    fn connect_endpoint(
        &self,
        ep: &Endpoint,
        app: &str,
        want: SessionAttrs,
    ) -> Result<Client, Attempt> {
        let mut cfg = self.session_config(ep, app);
        let mode = if ep.is_unix() {
            // libpq never uses TLS over a unix socket, whatever sslmode says.
            SslMode::Disable
        } else {
            self.tls.mode
        };
        let client = match mode {
            SslMode::Disable => self.plain(&mut cfg),
            SslMode::Allow => match self.plain(&mut cfg) {
                // Only a server that refused us is asked again, with TLS.
                Err(Attempt::Failed(_, Some(e))) if e.as_db_error().is_some() => {
                    self.with_tls(&mut cfg, postgres::config::SslMode::Require)
                }
                other => other,
            },
            SslMode::Prefer => self.with_tls(&mut cfg, postgres::config::SslMode::Prefer),
            _ => self.with_tls(&mut cfg, postgres::config::SslMode::Require),
        }?;
        self.check(client, ep, want)
    }

    /// The shared settings aimed at `ep`, with `app` as the application name
    /// unless the settings name one, and the password file's password for that
    /// host if the settings give none.
    fn session_config(&self, ep: &Endpoint, app: &str) -> Config {
        let mut cfg = self.base.clone();
        cfg.application_name(self.app.as_deref().unwrap_or(app));
        match &ep.host {
            Host::Tcp(name) => cfg.host(name),
            Host::Unix(dir) => cfg.host_path(dir),
        };
        if let Some(addr) = ep.hostaddr {
            cfg.hostaddr(addr);
        }
        cfg.port(ep.port);
        if cfg.get_password().is_none()
            && let Some(pw) = pgpass::password_for(self, ep)
        {
            cfg.password(pw);
        }
        cfg
    }

    fn plain(&self, cfg: &mut Config) -> Result<Client, Attempt> {
        cfg.ssl_mode(postgres::config::SslMode::Disable);
        cfg.connect(NoTls)
            .map_err(|e| Attempt::Failed(connect_reason(&e), Some(e)))
    }

    fn with_tls(
        &self,
        cfg: &mut Config,
        mode: postgres::config::SslMode,
    ) -> Result<Client, Attempt> {
        let Some((connector, refusal)) = self.tls.connector() else {
            return self.plain(cfg);
        };
        cfg.ssl_mode(mode);
        cfg.connect(connector).map_err(|e| {
            let why = match refusal.lock().take() {
                Some(r) => format!(
                    "server certificate refused: {r} (sslmode={})",
                    self.tls.mode.name()
                ),
                None if e.to_string().contains("TLS") => {
                    format!("{} (sslmode={})", connect_reason(&e), self.tls.mode.name())
                }
                None => connect_reason(&e),
            };
            Attempt::Failed(why, Some(e))
        })
    }

    /// Asks the server what it is, logs it, and keeps the session if `want` accepts it.
    fn check(
        &self,
        mut client: Client,
        ep: &Endpoint,
        want: SessionAttrs,
    ) -> Result<Client, Attempt> {
        let row = client
            .query_one(
                "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on', \
                 current_setting('hot_standby_feedback') = 'on'",
                &[],
            )
            .map_err(|e| Attempt::Failed(describe_pg_error(&e), Some(e)))?;
        let role = Role {
            standby: row.get(0),
            read_only: row.get(1),
            feedback: row.get(2),
        };
        note_role(&ep.label(), role);
        if want.accepts(&role) {
            Ok(client)
        } else {
            Err(Attempt::Refused(role))
        }
    }

    /// Connects to every host once, in parallel, and logs what each is (primary
    /// or standby) or why it cannot be reached: what an operator wants to see at
    /// start. Nothing fails here; the real connections report their own errors.
    pub fn survey(&self) {
        std::thread::scope(|s| {
            for ep in &self.endpoints {
                s.spawn(
                    move || match self.attempt(ep, "pgbootfs-survey", SessionAttrs::Any) {
                        Ok(_) => {}
                        Err(Attempt::Failed(why, _)) => {
                            log::warn!("database {}: cannot connect: {why}", ep.label())
                        }
                        Err(Attempt::Refused(_)) => {}
                    },
                );
            }
        });
    }
}

/// How one attempt at one host ended without a session.
enum Attempt {
    /// Connected, but the server is not what `target_session_attrs` asks for.
    Refused(Role),
    /// Could not connect: why, and the driver's error.
    Failed(String, Option<postgres::Error>),
}
