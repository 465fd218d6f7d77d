//! TLS with libpq's meaning of `sslmode`, `sslrootcert`, `sslcert`, `sslkey`,
//! `sslcrl` and friends, on OpenSSL (the library libpq itself uses, so the same
//! certificate, key and CRL files work unchanged).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use openssl::pkey::PKey;
use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::store::X509Lookup;
use openssl::x509::verify::X509VerifyFlags;
use parking_lot::Mutex;
use postgres_openssl::MakeTlsConnector;

use super::conninfo::Params;

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
    fn parse(s: &str) -> Result<SslMode, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(format!("invalid sslmode value: \"{other}\"")),
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

fn version(key: &str, v: &str) -> Result<SslVersion, String> {
    Ok(match v {
        "TLSv1" => SslVersion::TLS1,
        "TLSv1.1" => SslVersion::TLS1_1,
        "TLSv1.2" => SslVersion::TLS1_2,
        "TLSv1.3" => SslVersion::TLS1_3,
        _ => return Err(format!("invalid {key} value: \"{v}\"")),
    })
}

impl Tls {
    /// Builds the TLS settings from the resolved keywords; `home` is the user's
    /// home directory (for the `~/.postgresql/` default files).
    pub fn new(params: &Params, home: Option<&str>) -> Result<Tls, String> {
        let get = |k: &str| params.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let mode = SslMode::parse(get("sslmode").unwrap_or("prefer"))?;
        let sni = get("sslsni") != Some("0");
        if mode == SslMode::Disable {
            return Ok(Tls {
                mode,
                connector: None,
                verify_peer: false,
                verify_host: false,
                sni,
            });
        }
        let err = |what: &str, e: openssl::error::ErrorStack| format!("{what}: {e}");
        let mut b = SslConnector::builder(SslMethod::tls_client())
            .map_err(|e| err("cannot set up OpenSSL", e))?;
        let min = version(
            "ssl_min_protocol_version",
            get("ssl_min_protocol_version").unwrap_or("TLSv1.2"),
        )?;
        b.set_min_proto_version(Some(min))
            .map_err(|e| err("ssl_min_protocol_version", e))?;
        if let Some(max) = get("ssl_max_protocol_version") {
            b.set_max_proto_version(Some(version("ssl_max_protocol_version", max)?))
                .map_err(|e| err("ssl_max_protocol_version", e))?;
        }

        // The trusted roots. As libpq: a root file that exists turns on certificate
        // checks in every mode (so `require` with ~/.postgresql/root.crt acts as
        // verify-ca); the verify modes need one.
        let verifying = matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull);
        let rootcert = get("sslrootcert")
            .map(PathBuf::from)
            .or_else(|| home_file(home, "root.crt"));
        let verify_peer = match rootcert {
            Some(p) if p.as_os_str() == "system" => {
                if mode != SslMode::VerifyFull {
                    return Err(format!(
                        "weak sslmode \"{}\" may not be used with sslrootcert=system \
                         (use \"verify-full\")",
                        mode.name()
                    ));
                }
                b.set_default_verify_paths()
                    .map_err(|e| err("cannot load the system's trusted certificates", e))?;
                true
            }
            Some(p) if p.exists() => {
                b.set_ca_file(&p)
                    .map_err(|e| err(&format!("cannot load sslrootcert {}", p.display()), e))?;
                true
            }
            p if verifying => {
                return Err(format!(
                    "sslmode={} needs the CA's certificate, and root certificate file {} \
                     does not exist: set sslrootcert to the CA file, or sslrootcert=system \
                     for the system's trusted roots",
                    mode.name(),
                    p.map(|p| p.display().to_string())
                        .unwrap_or_else(|| "~/.postgresql/root.crt".into())
                ));
            }
            _ => false,
        };
        if verify_peer {
            let crl = get("sslcrl")
                .map(PathBuf::from)
                .or_else(|| home_file(home, "root.crl").filter(|p| p.exists()));
            let crldir = get("sslcrldir");
            if crl.is_some() || crldir.is_some() {
                let store = b.cert_store_mut();
                if let Some(crl) = &crl {
                    store
                        .add_lookup(X509Lookup::file())
                        .and_then(|l| l.load_crl_file(crl, SslFiletype::PEM).map(|_| ()))
                        .map_err(|e| err(&format!("cannot load sslcrl {}", crl.display()), e))?;
                }
                if let Some(dir) = crldir {
                    store
                        .add_lookup(X509Lookup::hash_dir())
                        .and_then(|l| l.add_dir(dir, SslFiletype::PEM))
                        .map_err(|e| err(&format!("cannot use sslcrldir {dir}"), e))?;
                }
                store
                    .set_flags(X509VerifyFlags::CRL_CHECK | X509VerifyFlags::CRL_CHECK_ALL)
                    .map_err(|e| err("cannot turn on CRL checks", e))?;
            }
        }
        b.set_verify(if verify_peer {
            SslVerifyMode::PEER
        } else {
            SslVerifyMode::NONE
        });

        // The client certificate, if there is one (as libpq: a missing file means
        // none is sent, and the server decides whether that is enough).
        let explicit_cert = get("sslcert");
        let cert = explicit_cert
            .map(PathBuf::from)
            .or_else(|| home_file(home, "postgresql.crt"));
        match cert {
            _ if get("sslcertmode") == Some("disable") => {}
            Some(cert) if cert.exists() => {
                b.set_certificate_chain_file(&cert)
                    .map_err(|e| err(&format!("cannot load sslcert {}", cert.display()), e))?;
                let key = get("sslkey")
                    .map(PathBuf::from)
                    .or_else(|| home_file(home, "postgresql.key"))
                    .ok_or("sslcert is set but sslkey is not, and there is no home directory")?;
                check_key_mode(&key)?;
                let pem = std::fs::read(&key)
                    .map_err(|e| format!("cannot read sslkey {}: {e}", key.display()))?;
                let pkey = match get("sslpassword") {
                    Some(pw) => PKey::private_key_from_pem_passphrase(&pem, pw.as_bytes()),
                    None => PKey::private_key_from_pem(&pem),
                }
                .map_err(|e| err(&format!("cannot load sslkey {}", key.display()), e))?;
                b.set_private_key(&pkey)
                    .and_then(|()| b.check_private_key())
                    .map_err(|e| {
                        err(&format!("sslkey {} does not fit sslcert", key.display()), e)
                    })?;
            }
            Some(cert) if explicit_cert.is_some() => log::warn!(
                "sslcert {} does not exist: connecting without a client certificate",
                cert.display()
            ),
            _ => {}
        }
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

/// Lets OpenSSL read everything the socket has, not one record per read.
///
/// Image bytes arrive as a stream of TLS records (the server writes 8 KiB at a
/// time); without read-ahead OpenSSL makes two reads per record (header, body),
/// so a cold read over TLS made some 16 times the system calls of a plain one.
/// With read-ahead and a 256 KiB buffer one read takes many records at once.
fn read_in_bulk(b: &mut openssl::ssl::SslConnectorBuilder) {
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
fn check_key_mode(key: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(key).map_err(|e| format!("cannot read sslkey {}: {e}", key.display()))?;
    let mode = meta.mode() & 0o777;
    let ok = if meta.uid() == 0 {
        mode & 0o037 == 0
    } else {
        mode & 0o077 == 0
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "private key file {} has group or world access ({mode:04o}); it must be 0600 \
             or less if owned by the current user, 0640 or less if owned by root",
            key.display()
        ))
    }
}
