//! Redis over TLS: `rediss://` URLs, an optional CA file instead of Mozilla's roots, and
//! an optional client certificate for mutual TLS.
//!
//! The `redis` crate speaks TLS with rustls (`tokio-rustls-comp`) and builds its rustls
//! configuration with `ClientConfig::builder()`, which takes the process-wide crypto
//! provider: [`install_crypto_provider`] installs ring (the provider `fleet_net` gives
//! reqwest and IMAP) when none is installed yet, so a process that links both ring and
//! aws-lc-rs does not panic on its first TLS connection (rustls/rustls#2070). The binaries
//! call it at start; [`redis_client`] calls it too, for programs that embed the client.
//!
//! Without a CA file the server's certificate must chain to Mozilla's roots (webpki-roots,
//! the same trust on every host, as for Fleet's HTTP clients); with one, to that file's
//! certificates only. The host name in the URL is always checked against the certificate
//! (rustls reads its subjectAltName, never the CN).

use crate::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// TLS settings of a `rediss://` connection (`[redis_tls]` in the worker's and the
/// scheduler's config; `FLEET_REDIS_CA_FILE`, `FLEET_REDIS_CLIENT_CERT_FILE`,
/// `FLEET_REDIS_CLIENT_KEY_FILE`). All unset: Mozilla's roots, no client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisTls {
    /// PEM file of the CA certificate(s) the server's certificate must chain to, instead
    /// of Mozilla's roots (a private CA, a managed Redis's own CA).
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate, for servers that demand one (mutual TLS).
    pub client_cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub client_key_file: Option<PathBuf>,
}

impl RedisTls {
    /// Applies `FLEET_REDIS_CA_FILE`, `FLEET_REDIS_CLIENT_CERT_FILE` and
    /// `FLEET_REDIS_CLIENT_KEY_FILE` read through `get` (an empty value unsets).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        let path = |v: String| if v.trim().is_empty() { None } else { Some(PathBuf::from(v)) };
        if let Some(v) = get("FLEET_REDIS_CA_FILE") {
            self.ca_file = path(v);
        }
        if let Some(v) = get("FLEET_REDIS_CLIENT_CERT_FILE") {
            self.client_cert_file = path(v);
        }
        if let Some(v) = get("FLEET_REDIS_CLIENT_KEY_FILE") {
            self.client_key_file = path(v);
        }
    }

    /// Whether any file is configured.
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.client_cert_file.is_some() || self.client_key_file.is_some()
    }
}

/// Installs ring as the process-wide rustls crypto provider unless one is installed
/// already. Idempotent; safe to call from several threads.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another installer is fine: one provider is installed either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The `redis::Client` for `url` with the TLS settings `tls`. A `redis://` URL with TLS
/// settings is refused (they would be silently ignored); a file that cannot be read or
/// holds no PEM certificate or key is an error naming the setting and the file. Neither
/// the URL nor its password appears in an error.
pub fn redis_client(url: &str, tls: &RedisTls) -> Result<redis::Client> {
    let info = redis::IntoConnectionInfo::into_connection_info(url)?;
    let is_tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
    if !is_tls {
        if tls.is_set() {
            return Err(Error::Invalid(
                "redis_tls (FLEET_REDIS_CA_FILE, FLEET_REDIS_CLIENT_*_FILE) is set, but the Redis URL is not \
                 rediss://: use rediss:// to connect over TLS"
                    .into(),
            ));
        }
        return Ok(redis::Client::open(info)?);
    }
    install_crypto_provider();
    match certificates(tls)? {
        None => Ok(redis::Client::open(info)?),
        Some(certs) => Ok(redis::Client::build_with_tls(info, certs)?),
    }
}

/// The CA and client certificate files of `tls`, read and checked (`None` when no file
/// is configured: Mozilla's roots, no client certificate).
pub(crate) fn certificates(tls: &RedisTls) -> Result<Option<redis::TlsCertificates>> {
    if !tls.is_set() {
        return Ok(None);
    }
    let root_cert = match &tls.ca_file {
        Some(path) => Some(read_pem(path, "redis_tls.ca_file (FLEET_REDIS_CA_FILE)", PemKind::Certificate)?),
        None => None,
    };
    let client_tls = match (&tls.client_cert_file, &tls.client_key_file) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read_pem(
                cert,
                "redis_tls.client_cert_file (FLEET_REDIS_CLIENT_CERT_FILE)",
                PemKind::Certificate,
            )?,
            client_key: read_pem(key, "redis_tls.client_key_file (FLEET_REDIS_CLIENT_KEY_FILE)", PemKind::Key)?,
        }),
        _ => {
            return Err(Error::Invalid(
                "redis_tls.client_cert_file and redis_tls.client_key_file (FLEET_REDIS_CLIENT_CERT_FILE, \
                 FLEET_REDIS_CLIENT_KEY_FILE) go together: set both or neither"
                    .into(),
            ));
        }
    };
    Ok(Some(redis::TlsCertificates { client_tls, root_cert }))
}

#[derive(Clone, Copy)]
enum PemKind {
    Certificate,
    Key,
}

/// The bytes of a PEM file, checked to hold at least one certificate (or a private key).
fn read_pem(path: &Path, setting: &'static str, kind: PemKind) -> Result<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |reason: String| Error::TlsFile { setting, path: path.to_owned(), reason };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    match kind {
        PemKind::Certificate => {
            let certs = CertificateDer::pem_slice_iter(&bytes)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("not a PEM certificate file ({e})")))?;
            if certs.is_empty() {
                return Err(bad("no PEM certificate in it".into()));
            }
        }
        PemKind::Key => {
            PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| bad(format!("no PEM private key in it ({e})")))?;
        }
    }
    Ok(bytes)
}

/// What went wrong in TLS when `e` failed a connection to a TLS Redis: the handshake
/// failed (the server's certificate was refused, the server does not speak TLS, the
/// client certificate was refused). `None` for every other error.
pub fn tls_failure(e: &redis::RedisError) -> Option<String> {
    // redis keeps an I/O error as `Arc<dyn Error>` and hands out the Arc as the source;
    // tokio-rustls puts rustls' error inside that I/O error.
    let source = std::error::Error::source(e)?;
    let io = match source.downcast_ref::<std::sync::Arc<dyn std::error::Error + Send + Sync>>() {
        Some(arc) => arc.downcast_ref::<std::io::Error>()?,
        None => source.downcast_ref::<std::io::Error>()?,
    };
    io.get_ref()?.downcast_ref::<rustls::Error>().map(|r| r.to_string())
}

/// `host:port` of a Redis client's address, for messages (no password, no database).
pub fn redis_addr(client: &redis::Client) -> String {
    match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, port) | redis::ConnectionAddr::TcpTls { host, port, .. } => {
            format!("{host}:{port}")
        }
        redis::ConnectionAddr::Unix(path) => path.display().to_string(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_need_a_rediss_url_and_readable_files() {
        let none = RedisTls::default();
        assert!(redis_client("redis://127.0.0.1:6379", &none).is_ok());
        assert!(redis_client("rediss://127.0.0.1:6380", &none).is_ok());
        let ca = RedisTls { ca_file: Some("/nonexistent/ca.pem".into()), ..RedisTls::default() };
        let e = redis_client("redis://:pw@127.0.0.1:6379", &ca).unwrap_err().to_string();
        assert!(e.contains("not rediss://"), "{e}");
        let e = redis_client("rediss://:secret-pw@127.0.0.1:6380", &ca).unwrap_err().to_string();
        assert!(e.contains("redis_tls.ca_file") && e.contains("FLEET_REDIS_CA_FILE"), "{e}");
        assert!(e.contains("/nonexistent/ca.pem") && !e.contains("secret-pw"), "{e}");
        let junk = std::env::temp_dir().join(format!("fleet-jobs-junk-{}.pem", std::process::id()));
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let e =
            redis_client("rediss://127.0.0.1:6380", &RedisTls { ca_file: Some(junk.clone()), ..RedisTls::default() })
                .unwrap_err()
                .to_string();
        std::fs::remove_file(&junk).ok();
        assert!(e.contains("no PEM certificate"), "{e}");
        let half = RedisTls { client_cert_file: Some("/x.pem".into()), ..RedisTls::default() };
        let e = redis_client("rediss://127.0.0.1:6380", &half).unwrap_err().to_string();
        assert!(e.contains("set both or neither"), "{e}");
    }

    #[test]
    fn the_environment_sets_and_unsets_the_files() {
        let mut tls = RedisTls { client_key_file: Some("/k.pem".into()), ..RedisTls::default() };
        tls.apply_env(|k| match k {
            "FLEET_REDIS_CA_FILE" => Some("/etc/ca.pem".into()),
            "FLEET_REDIS_CLIENT_KEY_FILE" => Some(String::new()),
            _ => None,
        });
        assert_eq!(tls, RedisTls { ca_file: Some("/etc/ca.pem".into()), ..RedisTls::default() });
    }
}
