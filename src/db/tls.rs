//! TLS with libpq's meaning of `sslmode`, `sslrootcert`, `sslcert`, `sslkey`,
//! `sslcrl` and friends, on OpenSSL (the library libpq itself uses, so the same
//! certificate, key and CRL files work unchanged).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use openssl::pkey::PKey;
use openssl::ssl::{
    SslConnector, SslConnectorBuilder, SslFiletype, SslMethod, SslVerifyMode, SslVersion,
};
use openssl::x509::store::X509Lookup;
use openssl::x509::verify::X509VerifyFlags;
use parking_lot::Mutex;
use postgres_openssl::MakeTlsConnector;

use super::conninfo::Params;
use super::error::ConfError;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Plain first; TLS only if the server refuses a plain connection.
    Allow,
    /// TLS if the server offers it (libpq's default).
    Prefer,
    /// TLS or nothing; the certificate is checked only if a root file exists.
    Require,
    /// TLS and a certificate signed by a trusted CA.
    VerifyCa,
    /// As verify-ca, and the certificate names the host.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, ConfError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                let why = format!("invalid sslmode value: \"{other}\"");
                return Err(ConfError::at("sslmode", why));
            }
        })
    }

    /// The keyword's value, for messages.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// The TLS side of a connection setting, built once at start so that a missing or
/// unreadable certificate file is reported before anything connects.
pub struct Tls {
    /// The mode asked for.
    pub mode: SslMode,
    connector: Option<SslConnector>,
    verify_peer: bool,
    verify_host: bool,
    sni: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("mode", &self.mode)
            .field("verify_peer", &self.verify_peer)
            .field("verify_host", &self.verify_host)
            .finish()
    }
}

/// What the server's certificate was refused for, filled by the verify callback
/// of one connection attempt.
pub type Refusal = Arc<Mutex<Option<String>>>;

fn home_file(home: Option<&str>, name: &str) -> Option<PathBuf> {
    home.map(|h| Path::new(h).join(".postgresql").join(name))
}

/// An OpenSSL failure while applying the setting `key`, said as `what: why`.
fn ssl_err(key: &str, what: &str, e: openssl::error::ErrorStack) -> ConfError {
    ConfError::at(key, format!("{what}: {e}"))
}

fn version(key: &str, v: &str) -> Result<SslVersion, ConfError> {
    Ok(match v {
        "TLSv1" => SslVersion::TLS1,
        "TLSv1.1" => SslVersion::TLS1_1,
        "TLSv1.2" => SslVersion::TLS1_2,
        "TLSv1.3" => SslVersion::TLS1_3,
        _ => return Err(ConfError::at(key, format!("invalid {key} value: \"{v}\""))),
    })
}

/// The resolved keywords, with an empty value counting as unset (as libpq).
struct Settings<'a> {
    params: &'a Params,
    home: Option<&'a str>,
}

impl Settings<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.params
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The file `key` names, else `~/.postgresql/<default>`.
    fn file(&self, key: &str, default: &str) -> Option<PathBuf> {
        self.get(key)
            .map(PathBuf::from)
            .or_else(|| home_file(self.home, default))
    }
}

impl Tls {
    /// Builds the TLS settings from the resolved keywords; `home` is the user's
    /// home directory (for the `~/.postgresql/` default files).
    pub fn new(params: &Params, home: Option<&str>) -> Result<Tls, ConfError> {
        let set = Settings { params, home };
        let mode = SslMode::parse(set.get("sslmode").unwrap_or("prefer"))?;
        let sni = set.get("sslsni") != Some("0");
        if mode == SslMode::Disable {
            return Ok(Tls {
                mode,
                connector: None,
                verify_peer: false,
                verify_host: false,
                sni,
            });
        }
        let mut b = SslConnector::builder(SslMethod::tls_client())
            .map_err(|e| ConfError::general(format!("cannot set up OpenSSL: {e}")))?;
        protocol_versions(&mut b, &set)?;
        let verify_peer = trusted_roots(&mut b, &set, mode)?;
        if verify_peer {
            revocation_lists(&mut b, &set)?;
        }
        b.set_verify(if verify_peer {
            SslVerifyMode::PEER
        } else {
            SslVerifyMode::NONE
        });
        client_certificate(&mut b, &set)?;
        read_in_bulk(&mut b);
        Ok(Tls {
            mode,
            connector: Some(b.build()),
            verify_peer,
            verify_host: mode == SslMode::VerifyFull,
            sni,
        })
    }

    /// A connector for one connection attempt, and where its verify callback puts
    /// the reason a certificate was refused. None when TLS is off.
    pub fn connector(&self) -> Option<(MakeTlsConnector, Refusal)> {
        let connector = self.connector.clone()?;
        let refusal = Refusal::default();
        let slot = refusal.clone();
        let (verify_peer, verify_host, sni) = (self.verify_peer, self.verify_host, self.sni);
        let mut make = MakeTlsConnector::new(connector);
        make.set_callback(move |cfg, _domain| {
            cfg.set_verify_hostname(verify_host);
            cfg.set_use_server_name_indication(sni);
            let slot = slot.clone();
            let mode = if verify_peer {
                SslVerifyMode::PEER
            } else {
                SslVerifyMode::NONE
            };
            cfg.set_verify_callback(mode, move |ok, ctx| {
                if !ok {
                    let mut s = slot.lock();
                    if s.is_none() {
                        *s = Some(ctx.error().error_string().to_string());
                    }
                }
                ok
            });
            Ok(())
        });
        Some((make, refusal))
    }
}

/// `ssl_min_protocol_version` (TLSv1.2 unless set, as libpq) and
/// `ssl_max_protocol_version`.
fn protocol_versions(b: &mut SslConnectorBuilder, set: &Settings) -> Result<(), ConfError> {
    const MIN: &str = "ssl_min_protocol_version";
    const MAX: &str = "ssl_max_protocol_version";
    let min = version(MIN, set.get(MIN).unwrap_or("TLSv1.2"))?;
    b.set_min_proto_version(Some(min))
        .map_err(|e| ssl_err(MIN, MIN, e))?;
    if let Some(max) = set.get(MAX) {
        b.set_max_proto_version(Some(version(MAX, max)?))
            .map_err(|e| ssl_err(MAX, MAX, e))?;
    }
    Ok(())
}

/// Loads the trusted roots and says whether the server's chain is checked. As
/// libpq: a root file that exists turns on certificate checks in every mode (so
/// `require` with ~/.postgresql/root.crt acts as verify-ca); the verify modes
/// need one.
fn trusted_roots(
    b: &mut SslConnectorBuilder,
    set: &Settings,
    mode: SslMode,
) -> Result<bool, ConfError> {
    let verifying = matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull);
    match set.file("sslrootcert", "root.crt") {
        Some(p) if p.as_os_str() == "system" => {
            if mode != SslMode::VerifyFull {
                return Err(ConfError::at(
                    "sslmode",
                    format!(
                        "weak sslmode \"{}\" may not be used with sslrootcert=system \
                         (use \"verify-full\")",
                        mode.name()
                    ),
                ));
            }
            b.set_default_verify_paths().map_err(|e| {
                ssl_err(
                    "sslrootcert",
                    "cannot load the system's trusted certificates",
                    e,
                )
            })?;
            Ok(true)
        }
        Some(p) if p.exists() => {
            b.set_ca_file(&p).map_err(|e| {
                ssl_err(
                    "sslrootcert",
                    &format!("cannot load sslrootcert {}", p.display()),
                    e,
                )
            })?;
            Ok(true)
        }
        p if verifying => Err(ConfError::at(
            "sslmode",
            format!(
                "sslmode={} needs the CA's certificate, and root certificate file {} \
                 does not exist: set sslrootcert to the CA file, or sslrootcert=system \
                 for the system's trusted roots",
                mode.name(),
                p.map(|p| p.display().to_string())
                    .unwrap_or_else(|| "~/.postgresql/root.crt".into())
            ),
        )),
        _ => Ok(false),
    }
}

/// `sslcrl` (else ~/.postgresql/root.crl if it exists) and `sslcrldir`, checked
/// with the whole chain.
fn revocation_lists(b: &mut SslConnectorBuilder, set: &Settings) -> Result<(), ConfError> {
    let crl = set
        .get("sslcrl")
        .map(PathBuf::from)
        .or_else(|| home_file(set.home, "root.crl").filter(|p| p.exists()));
    let crldir = set.get("sslcrldir");
    if crl.is_none() && crldir.is_none() {
        return Ok(());
    }
    let store = b.cert_store_mut();
    if let Some(crl) = &crl {
        store
            .add_lookup(X509Lookup::file())
            .and_then(|l| l.load_crl_file(crl, SslFiletype::PEM).map(|_| ()))
            .map_err(|e| {
                ssl_err(
                    "sslcrl",
                    &format!("cannot load sslcrl {}", crl.display()),
                    e,
                )
            })?;
    }
    if let Some(dir) = crldir {
        store
            .add_lookup(X509Lookup::hash_dir())
            .and_then(|l| l.add_dir(dir, SslFiletype::PEM))
            .map_err(|e| ssl_err("sslcrldir", &format!("cannot use sslcrldir {dir}"), e))?;
    }
    store
        .set_flags(X509VerifyFlags::CRL_CHECK | X509VerifyFlags::CRL_CHECK_ALL)
        .map_err(|e| ConfError::general(format!("cannot turn on CRL checks: {e}")))
}

/// The client certificate and its key, if there is one. As libpq: a missing
/// file means none is sent, and the server decides whether that is enough.
fn client_certificate(b: &mut SslConnectorBuilder, set: &Settings) -> Result<(), ConfError> {
    let explicit = set.get("sslcert");
    match set.file("sslcert", "postgresql.crt") {
        _ if set.get("sslcertmode") == Some("disable") => Ok(()),
        Some(cert) if cert.exists() => {
            b.set_certificate_chain_file(&cert).map_err(|e| {
                ssl_err(
                    "sslcert",
                    &format!("cannot load sslcert {}", cert.display()),
                    e,
                )
            })?;
            let key = set.file("sslkey", "postgresql.key").ok_or_else(|| {
                ConfError::at(
                    "sslcert",
                    "sslcert is set but sslkey is not, and there is no home directory",
                )
            })?;
            private_key(b, &key, set.get("sslpassword"))
        }
        Some(cert) if explicit.is_some() => {
            log::warn!(
                "sslcert {} does not exist: connecting without a client certificate",
                cert.display()
            );
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Loads the client's private key (decrypted with `sslpassword` if given), after
/// checking that others cannot read it, and checks that it fits the certificate.
fn private_key(
    b: &mut SslConnectorBuilder,
    key: &Path,
    password: Option<&str>,
) -> Result<(), ConfError> {
    check_key_mode(key)?;
    let pem = std::fs::read(key).map_err(|e| {
        ConfError::at(
            "sslkey",
            format!("cannot read sslkey {}: {e}", key.display()),
        )
    })?;
    let pkey = match password {
        Some(pw) => PKey::private_key_from_pem_passphrase(&pem, pw.as_bytes()),
        None => PKey::private_key_from_pem(&pem),
    }
    .map_err(|e| {
        ssl_err(
            "sslkey",
            &format!("cannot load sslkey {}", key.display()),
            e,
        )
    })?;
    // A key that does not fit is reported against the certificate, as before the
    // errors were typed: the pair is at fault, and sslcert names it first.
    b.set_private_key(&pkey)
        .and_then(|()| b.check_private_key())
        .map_err(|e| {
            ssl_err(
                "sslcert",
                &format!("sslkey {} does not fit sslcert", key.display()),
                e,
            )
        })
}

/// Lets OpenSSL read everything the socket has, not one record per read.
///
/// Image bytes arrive as a stream of TLS records (the server writes 8 KiB at a
/// time); without read-ahead OpenSSL makes two reads per record (header, body),
/// so a cold read over TLS made some 16 times the system calls of a plain one.
/// With read-ahead and a 256 KiB buffer one read takes many records at once.
fn read_in_bulk(b: &mut SslConnectorBuilder) {
    unsafe extern "C" {
        // libssl 1.1.0+; the openssl crates do not wrap it.
        fn SSL_CTX_set_default_read_buffer_len(ctx: *mut std::ffi::c_void, len: usize);
    }
    b.set_read_ahead(true);
    // SAFETY: a valid SSL_CTX for the builder's lifetime; the call only sets a size
    // used for SSL objects made from it later.
    unsafe { SSL_CTX_set_default_read_buffer_len(b.as_ptr().cast(), 256 << 10) };
}

/// libpq refuses a private key others may read: 0600 or less for the owner, or
/// 0640 or less when root owns it (a key shared with a service group).
fn check_key_mode(key: &Path) -> Result<(), ConfError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(key).map_err(|e| {
        ConfError::at(
            "sslkey",
            format!("cannot read sslkey {}: {e}", key.display()),
        )
    })?;
    let mode = meta.mode() & 0o777;
    let ok = if meta.uid() == 0 {
        mode & 0o037 == 0
    } else {
        mode & 0o077 == 0
    };
    if ok {
        Ok(())
    } else {
        Err(ConfError::at(
            "sslkey",
            format!(
                "private key file {} has group or world access ({mode:04o}); it must be \
                 0600 or less if owned by the current user, 0640 or less if owned by root",
                key.display()
            ),
        ))
    }
}
