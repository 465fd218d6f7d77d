//! libpq connection strings: `key=value` conninfo and `postgres://` URLs, parsed
//! into libpq keywords so that service files, the environment and defaults can be
//! layered under them key by key, exactly as libpq does.

use std::collections::BTreeMap;

use super::error::ConfError;

/// Settings by libpq keyword (`host`, `sslmode`, ...), each given at most once.
pub type Params = BTreeMap<String, String>;

/// Every keyword libpq 17 accepts. pgbootfs honours most of them; the ones it
/// cannot (Kerberos, GSS, replication) are accepted and reported once, so a
/// conninfo written for psql works here too.
pub const KEYWORDS: &[&str] = &[
    "application_name",
    "channel_binding",
    "client_encoding",
    "connect_timeout",
    "dbname",
    "fallback_application_name",
    "gssdelegation",
    "gssencmode",
    "gsslib",
    "host",
    "hostaddr",
    "keepalives",
    "keepalives_count",
    "keepalives_idle",
    "keepalives_interval",
    "krbsrvname",
    "load_balance_hosts",
    "options",
    "passfile",
    "password",
    "port",
    "replication",
    "require_auth",
    "requirepeer",
    "service",
    "ssl_max_protocol_version",
    "ssl_min_protocol_version",
    "sslcert",
    "sslcertmode",
    "sslcompression",
    "sslcrl",
    "sslcrldir",
    "sslkey",
    "sslmode",
    "sslnegotiation",
    "sslpassword",
    "sslrootcert",
    "sslsni",
    "target_session_attrs",
    "tcp_user_timeout",
    "user",
];

/// Checks a keyword, mapping the postgres crate's spellings to libpq's.
pub fn keyword(key: &str) -> Result<&'static str, ConfError> {
    let key = match key {
        // The Rust driver's name for libpq's keepalives_count.
        "keepalives_retries" => "keepalives_count",
        k => k,
    };
    KEYWORDS
        .iter()
        .find(|k| **k == key)
        .copied()
        .ok_or_else(|| ConfError::at(key, format!("invalid connection option \"{key}\"")))
}

/// Parses a conninfo or a URL (`postgres://` or `postgresql://`).
pub fn parse(text: &str) -> Result<Params, ConfError> {
    let t = text.trim_start();
    if let Some(rest) = t
        .strip_prefix("postgresql://")
        .or_else(|| t.strip_prefix("postgres://"))
    {
        parse_url(rest)
    } else {
        parse_keyvalue(text)
    }
}

fn set(params: &mut Params, key: &str, value: String) -> Result<(), ConfError> {
    let key = keyword(key)?;
    // As libpq: a later setting of the same key wins.
    params.insert(key.to_string(), value);
    Ok(())
}

/// `key = value ...`; values may be single-quoted, `\` escapes the next character.
fn parse_keyvalue(text: &str) -> Result<Params, ConfError> {
    let mut params = Params::new();
    let mut chars = text.chars().peekable();
    loop {
        skip_space(&mut chars);
        if chars.peek().is_none() {
            return Ok(params);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        skip_space(&mut chars);
        if chars.next() != Some('=') {
            return Err(ConfError::at(
                &key,
                format!("missing \"=\" after \"{key}\""),
            ));
        }
        skip_space(&mut chars);
        let value = if chars.next_if_eq(&'\'').is_some() {
            quoted(&mut chars).ok_or_else(|| {
                ConfError::at(&key, format!("unterminated quoted value for \"{key}\""))
            })?
        } else {
            bare(&mut chars)
        };
        set(&mut params, &key, value)?;
    }
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

fn skip_space(chars: &mut Chars) {
    while chars.next_if(|c| c.is_whitespace()).is_some() {}
}

/// The rest of a single-quoted value, after its opening quote; None if it is
/// never closed.
fn quoted(chars: &mut Chars) -> Option<String> {
    let mut value = String::new();
    loop {
        match chars.next()? {
            '\'' => return Some(value),
            '\\' => value.push(chars.next()?),
            c => value.push(c),
        }
    }
}

/// A value up to the next white space.
fn bare(chars: &mut Chars) -> String {
    let mut value = String::new();
    while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
        if c == '\\' {
            // A backslash at the very end stands for nothing.
            value.extend(chars.next());
        } else {
            value.push(c);
        }
    }
    value
}

/// `[user[:password]@][host[:port][,host[:port]...]][/dbname][?key=value&...]`,
/// percent-encoded, IPv6 addresses in brackets.
fn parse_url(rest: &str) -> Result<Params, ConfError> {
    let mut params = Params::new();
    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    let (authority, dbname) = match main.split_once('/') {
        Some((a, d)) => (a, Some(d)),
        None => (main, None),
    };
    let hostspec = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                set(&mut params, "user", decode("user", user)?)?;
            }
            if let Some(p) = password {
                set(&mut params, "password", decode("password", p)?)?;
            }
            hosts
        }
        None => authority,
    };
    if !hostspec.is_empty() {
        url_hosts(&mut params, hostspec)?;
    }
    if let Some(db) = dbname.filter(|d| !d.is_empty()) {
        set(&mut params, "dbname", decode("dbname", db)?)?;
    }
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            ConfError::general(format!("missing \"=\" in URL parameter \"{pair}\""))
        })?;
        let k = decode(k, k)?;
        let v = decode(&k, v)?;
        // libpq maps the JDBC spelling ssl=true to sslmode=require.
        if k == "ssl" && v == "true" {
            set(&mut params, "sslmode", "require".into())?;
        } else {
            set(&mut params, &k, v)?;
        }
    }
    Ok(params)
}

/// `host[:port][,host[:port]...]` of a URL, IPv6 addresses in brackets, into
/// `host` and `port` lists as libpq keeps them (an empty entry for a host or port
/// not given).
fn url_hosts(params: &mut Params, hostspec: &str) -> Result<(), ConfError> {
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for item in hostspec.split(',') {
        let (host, port) = if let Some(v6) = item.strip_prefix('[') {
            let (addr, after) = v6.split_once(']').ok_or_else(|| {
                ConfError::at("host", format!("unterminated IPv6 address in \"{item}\""))
            })?;
            let port = match after {
                "" => "",
                p => p.strip_prefix(':').ok_or_else(|| {
                    ConfError::at("port", format!("unexpected \"{p}\" after an IPv6 address"))
                })?,
            };
            (addr.to_string(), port)
        } else {
            match item.split_once(':') {
                Some((h, p)) => (decode("host", h)?, p),
                None => (decode("host", item)?, ""),
            }
        };
        hosts.push(host);
        ports.push(decode("port", port)?);
    }
    if hosts.iter().any(|h| !h.is_empty()) {
        set(params, "host", hosts.join(","))?;
    }
    if ports.iter().any(|p| !p.is_empty()) {
        set(params, "port", ports.join(","))?;
    }

    Ok(())
}

/// Percent-decodes the part of a URL that gives `key`.
fn decode(key: &str, s: &str) -> Result<String, ConfError> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        // The part may be a password: do not echo it.
        .map_err(|_| ConfError::at(key, "a part of the URL is not UTF-8 once percent-decoded"))
}

/// The conninfo form of `params`, with the password (and sslpassword) left out:
/// what logs and errors may show.
pub fn redacted(params: &Params) -> String {
    params
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "password" | "sslpassword"))
        .map(|(k, v)| {
            if v.is_empty() || v.contains([' ', '\'', '\\']) {
                format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Vec<(String, String)> {
        parse(text).unwrap().into_iter().collect()
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<_> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn keyvalue_quoting_and_escapes() {
        assert_eq!(
            p(r"host=a,b port = 1,2 user=x\ y dbname=''"),
            kv(&[
                ("host", "a,b"),
                ("port", "1,2"),
                ("user", "x y"),
                ("dbname", "")
            ])
        );
        assert!(
            parse("password='it''s'").is_err(),
            "two quoted values glued"
        );
        assert_eq!(
            p(r"password='a \'b\' c' sslmode=verify-full"),
            kv(&[("password", "a 'b' c"), ("sslmode", "verify-full")])
        );
        let e = parse("host=a bogus=1").unwrap_err();
        assert!(e.reason.contains("bogus"), "{e}");
        assert_eq!(e.key.as_deref(), Some("bogus"));
        assert!(parse("host").is_err());
        assert!(parse("password='open").is_err());
        assert_eq!(p("keepalives_retries=3"), kv(&[("keepalives_count", "3")]));
    }

    #[test]
    fn urls_as_libpq() {
        assert_eq!(
            p(
                "postgresql://maas:p%40ss@db1:5433,db2,[::1]:5434/maas%2Ddb?sslmode=verify-full&target_session_attrs=primary"
            ),
            kv(&[
                ("user", "maas"),
                ("password", "p@ss"),
                ("host", "db1,db2,::1"),
                ("port", "5433,,5434"),
                ("dbname", "maas-db"),
                ("sslmode", "verify-full"),
                ("target_session_attrs", "primary"),
            ])
        );
        assert_eq!(
            p("postgres://%2Fvar%2Frun%2Fpostgresql/maasdb"),
            kv(&[("host", "/var/run/postgresql"), ("dbname", "maasdb")])
        );
        assert_eq!(
            p("postgres:///maasdb?host=/tmp&ssl=true"),
            kv(&[
                ("host", "/tmp"),
                ("dbname", "maasdb"),
                ("sslmode", "require")
            ])
        );
        assert_eq!(p("postgresql://"), kv(&[]));
        assert!(parse("postgres://h/d?nosuch=1").is_err());
    }

    #[test]
    fn redaction_drops_passwords_and_quotes() {
        let params = parse("host=h password=secret sslpassword=k application_name='a b'").unwrap();
        let r = redacted(&params);
        assert!(!r.contains("secret") && !r.contains("=k"), "{r}");
        assert_eq!(r, "application_name='a b' host=h");
    }
}
