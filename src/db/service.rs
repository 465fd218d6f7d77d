//! libpq connection service files (`pg_service.conf`): a named section of
//! conninfo keywords, so a command line can say `service=maas` and keep host,
//! user and password out of `ps` and shell history.
//!
//! As libpq: the service comes from `service=` or `PGSERVICE`; it is looked up
//! first in `PGSERVICEFILE` (else `~/.pg_service.conf`), and only if that file has
//! no such section in `PGSYSCONFDIR/pg_service.conf` (else the system file of
//! Debian's libpq, `/etc/postgresql-common/pg_service.conf`). Its settings fill
//! only what the connection string left unset, and come before the environment.

use std::path::{Path, PathBuf};

use super::conninfo::{Params, keyword};
use super::error::ConfError;

/// Where Debian's and Ubuntu's libpq look for the system service file.
pub const SYSTEM_DIR: &str = "/etc/postgresql-common";

/// Fills `params` from the section `name`, reading the files libpq reads.
pub fn apply(
    params: &mut Params,
    name: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfError> {
    let user_file = env("PGSERVICEFILE")
        .filter(|f| !f.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            env("HOME")
                .filter(|h| !h.is_empty())
                .or_else(crate::passwd::home)
                .map(|h| Path::new(&h).join(".pg_service.conf"))
        });
    let system_file = Path::new(
        &env("PGSYSCONFDIR")
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| SYSTEM_DIR.to_string()),
    )
    .join("pg_service.conf");
    for file in user_file.iter().chain([&system_file]) {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                let why = format!("cannot read service file {}: {e}", file.display());
                return Err(ConfError::at("service", why));
            }
        };
        if let Some(section) = section(&text, name, file)? {
            for (k, v) in section {
                params.entry(k).or_insert(v);
            }
            log::debug!("service {name:?} read from {}", file.display());
            return Ok(());
        }
    }
    Err(ConfError::at(
        "service",
        format!(
            "definition of service \"{name}\" not found (looked in {}{})",
            user_file
                .map(|f| format!("{} and ", f.display()))
                .unwrap_or_default(),
            system_file.display()
        ),
    ))
}

/// The settings of section `name` in a service file's text, if it has one.
/// Every line is checked up to the section's end, as libpq does.
fn section(text: &str, name: &str, file: &Path) -> Result<Option<Params>, ConfError> {
    let mut found: Option<Params> = None;
    let mut inside = false;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |key: Option<&str>, why: &str| ConfError {
            key: key.map(str::to_string),
            reason: format!(
                "syntax error in service file {}, line {}: {why}",
                file.display(),
                n + 1
            ),
        };
        if let Some(head) = line.strip_prefix('[') {
            if found.is_some() {
                break;
            }
            let head = head
                .strip_suffix(']')
                .ok_or_else(|| bad(None, "a section name needs a closing \"]\""))?;
            inside = head.trim() == name;
            if inside {
                found = Some(Params::new());
            }
            continue;
        }
        if !inside {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| bad(None, "expected key=value"))?;
        let k = k.trim();
        if k == "service" {
            return Err(bad(
                Some("service"),
                "nested service specifications are not supported",
            ));
        }
        let k = keyword(k).map_err(|e| bad(e.key.as_deref(), &e.reason))?;
        if let Some(section) = found.as_mut() {
            // The first setting of a key in the section counts.
            section
                .entry(k.to_string())
                .or_insert_with(|| v.trim().to_string());
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_keys_and_errors() {
        let f = Path::new("svc.conf");
        let text = "# comment\n[other]\nhost=x\n\n[maas]\n  host = db1,db2\nport=5433\n\
                    sslmode=verify-full\npassword=a=b\nhost=ignored\n[after]\nbogus=1\n";
        let s = section(text, "maas", f).unwrap().unwrap();
        assert_eq!(s["host"], "db1,db2");
        assert_eq!(s["port"], "5433");
        assert_eq!(s["password"], "a=b");
        assert_eq!(s.len(), 4);
        assert_eq!(section(text, "none", f).unwrap(), None);
        let e = section("[maas]\nbogus=1\n", "maas", f).unwrap_err();
        assert!(
            e.reason.contains("svc.conf, line 2") && e.reason.contains("bogus"),
            "{e}"
        );
        assert_eq!(e.key.as_deref(), Some("bogus"));
        let e = section("[maas]\nservice=x\n", "maas", f).unwrap_err();
        assert!(e.reason.contains("nested"), "{e}");
        assert!(section("[maas]\nhost\n", "maas", f).is_err());
    }
}
