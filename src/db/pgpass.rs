//! The password file (`.pgpass`), read as libpq reads it: `passfile` or
//! `PGPASSFILE`, else `~/.pgpass`; looked up per host, port, database and user;
//! ignored, with a warning, unless only its owner can read it.

use postgres::config::Host;

use super::config::{DbConfig, Endpoint};

/// The password for `ep` from `db`'s password file, if the file is private and a
/// line matches.
pub(super) fn password_for(db: &DbConfig, ep: &Endpoint) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let path = db.passfile.as_ref()?;
    let meta = std::fs::metadata(path).ok()?;
    if meta.permissions().mode() & 0o077 != 0 {
        log::warn!(
            "{} can be read by group or others, so it is ignored (as libpq does); \
             run chmod 0600 on it",
            path.display()
        );
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let host = match &ep.host {
        // libpq calls its default socket directory "localhost" in this file.
        Host::Unix(dir) if dir == std::path::Path::new("/var/run/postgresql") => {
            "localhost".to_string()
        }
        Host::Unix(dir) => dir.display().to_string(),
        Host::Tcp(name) => name.clone(),
    };
    lookup(
        &text,
        &host,
        ep.port,
        db.base.get_dbname().unwrap_or(""),
        db.base.get_user().unwrap_or(""),
    )
}

/// The password of the first line of a `.pgpass` text that matches; `*` matches
/// anything, and `\:` and `\\` stand for `:` and `\`.
fn lookup(text: &str, host: &str, port: u16, db: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    let want = [host, port.as_str(), db, user];
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .find_map(|line| {
            let fields = split_pgpass(line);
            if fields.len() < 5 {
                return None;
            }
            let hit = want.iter().zip(&fields).all(|(w, f)| f == "*" || f == w);
            hit.then(|| fields[4..].join(":"))
        })
}

/// Splits one `.pgpass` line on unescaped colons, undoing the escapes.
fn split_pgpass(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ':' => fields.push(String::new()),
            c => {
                // A backslash stands for the character after it.
                let c = if c == '\\' {
                    chars.next().unwrap_or(c)
                } else {
                    c
                };
                if let Some(f) = fields.last_mut() {
                    f.push(c);
                }
            }
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpass_lines_match_like_libpq() {
        let text = "# comment\n\
                    other:5432:maasdb:maas:wrong\n\
                    localhost:5433:*:maas:port5433\n\
                    localhost:*:maasdb:maas:pa\\:ss:with:colons\n\
                    *:*:*:*:fallback\n";
        let hit = |h, p, d, u| lookup(text, h, p, d, u);
        assert_eq!(
            hit("localhost", 5433, "x", "maas").as_deref(),
            Some("port5433")
        );
        assert_eq!(
            hit("localhost", 5432, "maasdb", "maas").as_deref(),
            Some("pa:ss:with:colons")
        );
        assert_eq!(
            hit("db.example", 5432, "maasdb", "maas").as_deref(),
            Some("fallback")
        );
        assert_eq!(lookup("a:b\n\n", "a", 1, "", ""), None);
    }

    #[test]
    fn pgpass_file_is_read_only_when_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("pgbootfs-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pass");
        std::fs::write(&file, "/tmp/sock:6000:maasdb:maas:s3cret\n").unwrap();
        let path = file.display().to_string();
        let resolve = |mode: u32| {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            let env = |name: &str| (name == "PGPASSFILE").then(|| path.clone());
            let db = DbConfig::resolve_with(
                Some("host=/tmp/sock port=6000 user=maas dbname=maasdb"),
                env,
            )
            .unwrap();
            password_for(&db, &db.endpoints[0]).map(String::into_bytes)
        };
        assert_eq!(resolve(0o600), Some(b"s3cret".to_vec()));
        assert_eq!(
            resolve(0o644),
            None,
            "group- or world-readable file ignored"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
