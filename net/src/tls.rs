//! The one TLS configuration of Fleet's outbound connections: HTTP clients
//! ([`crate::ClientOptions::client`]) and IMAP (tokio-rustls) alike.
//!
//! rustls with the ring provider (passed to the config, never installed process-wide, so
//! nothing depends on which crate happened to install a default first), Mozilla's roots
//! (webpki-roots: the same trust on every host, whatever its system store holds) plus any
//! extra CA certificates an operator configures, and rustls' safe default protocol versions.

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use std::sync::Arc;

pub use rustls::pki_types::CertificateDer;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// An extra CA file that cannot be read, holds no certificate or a bad one: fix the
    /// file (or the setting naming it); retrying will not help.
    #[error("ca_file {path}: {reason}")]
    CaFile {
        /// The file as configured.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the configuration (a build without the protocols it needs).
    #[error("TLS: {0}")]
    Config(String),
}

/// The CA certificates of the PEM file at `path`, checked to be usable as roots; a file
/// with none is an error (an empty file trusts nothing more, which is never what was meant).
pub fn read_ca_file(path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::CaFile { path: path.to_owned(), reason };
    let mut scratch = RootCertStore::empty();
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        scratch.add(cert.clone()).map_err(|e| bad(e.to_string()))?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    Ok(certs)
}

/// The client configuration: ring, Mozilla's roots plus `extra_roots`, no client
/// certificate. No ALPN: the caller sets the protocols it speaks.
pub fn client_config(extra_roots: &[CertificateDer<'static>]) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    for cert in extra_roots {
        roots.add(cert.clone()).map_err(|e| TlsError::Config(format!("extra CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_is_refused_with_its_path() {
        let e = read_ca_file("/nonexistent/ca.pem").unwrap_err();
        assert!(e.to_string().starts_with("ca_file /nonexistent/ca.pem: "), "{e}");
        let empty = std::env::temp_dir().join(format!("fleet-net-empty-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = read_ca_file(empty.to_str().unwrap()).unwrap_err();
        std::fs::remove_file(&empty).ok();
        assert!(e.to_string().ends_with("no certificate in it"), "{e}");
    }

    #[test]
    fn the_config_builds_without_a_process_wide_provider() {
        let config = client_config(&[]).unwrap();
        assert!(config.alpn_protocols.is_empty());
        assert!(rustls::crypto::CryptoProvider::get_default().is_none(), "nothing installed as a side effect");
    }
}
