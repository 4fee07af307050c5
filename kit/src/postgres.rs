//! How Fleet's binaries (worker, scheduler, `fleetctl`) reach PostgreSQL: the database URL
//! plus `[database_tls]` (`sslmode`, `sslrootcert`), the same in every binary.
//!
//! sqlx speaks TLS with rustls and ring, passed to each connection (no process-wide
//! provider), trusting Mozilla's roots plus `sslrootcert`. The modes are libpq's:
//!
//! | `sslmode` | TLS | certificate checked | host name checked |
//! |---|---|---|---|
//! | `disable` (and `allow`) | never | | |
//! | `prefer` | if the server offers it, **else plaintext** | no | no |
//! | `require` | always | no | no |
//! | `verify-ca` | always | yes | no |
//! | `verify-full` | always | yes | yes |
//!
//! Only `verify-full` stops a man in the middle who holds any certificate of the CA.
//! The mode comes from `[database_tls] sslmode` (or `FLEET_DATABASE_SSLMODE`), else the
//! URL's `?sslmode=`, else `PGSSLMODE`; when none names one, a loopback host (127.0.0.0/8,
//! `::1`, `localhost`, a Unix socket) gets `disable`, so the local run stays plain even
//! where the server offers TLS, and any other host gets libpq's default, `prefer`.

use serde::Deserialize;
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use std::path::PathBuf;

/// `[database_tls]`: TLS of the PostgreSQL connections. Each setting overrides the same
/// parameter of the URL (`?sslmode=...&sslrootcert=...`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PgTls {
    /// `disable`, `prefer`, `require`, `verify-ca` or `verify-full` (`FLEET_DATABASE_SSLMODE`).
    pub sslmode: Option<String>,
    /// PEM file of the CA certificate(s) the server's certificate may chain to, besides
    /// Mozilla's roots (`FLEET_DATABASE_SSLROOTCERT`).
    pub sslrootcert: Option<PathBuf>,
}

impl PgTls {
    /// Applies `FLEET_DATABASE_SSLMODE` and `FLEET_DATABASE_SSLROOTCERT` read through `get`
    /// (an empty value unsets).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        if let Some(v) = get("FLEET_DATABASE_SSLMODE") {
            self.sslmode = Some(v.trim().to_owned()).filter(|v| !v.is_empty());
        }
        if let Some(v) = get("FLEET_DATABASE_SSLROOTCERT") {
            self.sslrootcert = Some(PathBuf::from(v.trim())).filter(|p| !p.as_os_str().is_empty());
        }
    }

    /// Checks the mode's name and that the CA file can be read; the error names the
    /// setting and the file.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(mode) = &self.sslmode {
            parse_mode(mode)?;
        }
        if let Some(path) = &self.sslrootcert
            && let Err(e) = std::fs::read(path)
        {
            return Err(format!("database_tls.sslrootcert (FLEET_DATABASE_SSLROOTCERT) {}: {e}", path.display()));
        }
        Ok(())
    }

    /// The connect options of `url` with these settings applied (see the module's rules
    /// for the mode when none is named).
    pub fn connect_options(&self, url: &str) -> Result<PgConnectOptions, sqlx::Error> {
        let mut options: PgConnectOptions = url.parse()?;
        if let Some(mode) = &self.sslmode {
            options = options.ssl_mode(parse_mode(mode).map_err(|m| sqlx::Error::Configuration(m.into()))?);
        } else if !url_names_mode(url) && std::env::var_os("PGSSLMODE").is_none() && is_loopback(&options) {
            options = options.ssl_mode(PgSslMode::Disable);
        }
        if let Some(path) = &self.sslrootcert {
            options = options.ssl_root_cert(path);
        }
        Ok(options)
    }
}

fn parse_mode(mode: &str) -> Result<PgSslMode, String> {
    match mode {
        "disable" | "allow" | "prefer" | "require" | "verify-ca" | "verify-full" => {
            mode.parse().map_err(|e: sqlx::Error| e.to_string())
        }
        _ => Err(format!(
            "database_tls.sslmode (FLEET_DATABASE_SSLMODE) {mode:?}: expected disable, prefer, require, verify-ca or \
             verify-full"
        )),
    }
}

/// libpq's name of `mode`.
pub fn mode_name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

fn url_names_mode(url: &str) -> bool {
    let Some((_, query)) = url.split_once('?') else { return false };
    query.split('&').any(|pair| matches!(pair.split('=').next(), Some("sslmode" | "ssl-mode")))
}

fn is_loopback(options: &PgConnectOptions) -> bool {
    if options.get_socket().is_some() {
        return true;
    }
    let host = options.get_host();
    host == "localhost" || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether `e` is a failed TLS negotiation: the server offers no TLS where the mode
/// demands it (`Error::Tls`), or the handshake failed (a refused certificate: rustls'
/// error inside an I/O error). Neither gets better by retrying.
pub fn is_tls_failure(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Tls(_) => true,
        sqlx::Error::Io(io) => io.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()),
        _ => false,
    }
}

/// A message for a failed connection to PostgreSQL at `url` (shown without its password
/// or query) in `mode` (`PgConnectOptions::get_ssl_mode`): TLS failures say so and name
/// the mode.
pub fn describe_connect_error(url: &str, mode: PgSslMode, e: &sqlx::Error) -> String {
    let at = fleet_net::redact_url(url);
    if is_tls_failure(e) {
        format!("TLS with PostgreSQL at {at} failed (sslmode {}): {e}", mode_name(mode))
    } else {
        format!("PostgreSQL is not reachable at {at}: {e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_stays_plain_unless_a_mode_is_named() {
        let none = PgTls::default();
        let mode = |tls: &PgTls, url: &str| mode_name(tls.connect_options(url).unwrap().get_ssl_mode());
        if std::env::var_os("PGSSLMODE").is_none() {
            assert_eq!(mode(&none, "postgres://postgres@127.0.0.1:5432/fleet"), "disable");
            assert_eq!(mode(&none, "postgres://postgres@localhost/fleet"), "disable");
            assert_eq!(mode(&none, "postgres://postgres@db.example.com/fleet"), "prefer");
        }
        assert_eq!(mode(&none, "postgres://postgres@127.0.0.1/fleet?sslmode=require"), "require");
        let full = PgTls { sslmode: Some("verify-full".into()), sslrootcert: Some("/etc/ca.pem".into()) };
        assert_eq!(mode(&full, "postgres://postgres@127.0.0.1/fleet?sslmode=disable"), "verify-full");
    }

    #[test]
    fn bad_settings_name_themselves() {
        let e = PgTls { sslmode: Some("verify_full".into()), ..PgTls::default() }.validate().unwrap_err();
        assert!(e.contains("database_tls.sslmode") && e.contains("verify_full"), "{e}");
        let e = PgTls { sslrootcert: Some("/nonexistent/ca.pem".into()), ..PgTls::default() }.validate().unwrap_err();
        assert!(e.contains("database_tls.sslrootcert") && e.contains("/nonexistent/ca.pem"), "{e}");
        let mut tls = PgTls::default();
        tls.apply_env(|k| (k == "FLEET_DATABASE_SSLMODE").then(|| "require".into()));
        assert_eq!(tls.sslmode.as_deref(), Some("require"));
    }
}
