//! Email over SMTP: the operator's relays, tried in order (a relay that refuses the
//! connection, the greeting, the login or the message hands the email to the next),
//! each a pooled `lettre` transport made once per worker.
//!
//! Every email carries a Message-ID Fleet made and recorded before the first attempt,
//! so a retry after a lost answer sends the same Message-ID (receivers fold the copy),
//! and `List-Unsubscribe` + `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC
//! 8058) when an unsubscribe URL is configured: a POST to it turns the category's email
//! off for the recipient (no GET: link scanners would unsubscribe people).
//!
//! With a DKIM key for the From address's domain (`[[notify.dkim]]`), every email is
//! signed (relaxed/relaxed) over From, To, Subject, Date, Message-ID, MIME-Version and
//! both unsubscribe headers; those two are signed even when absent, so nobody on the
//! way can add them to a signed email.

use lettre::message::dkim::{
    DkimCanonicalization, DkimCanonicalizationType, DkimConfig, DkimSigningAlgorithm, DkimSigningKey,
};
use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Connections to one relay per worker when the config does not say.
const DEFAULT_CONNECTIONS: u32 = 20;

/// How a relay's connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// `STARTTLS` on the plain port (587), required: a relay that does not offer it is
    /// refused, never used in the clear.
    #[default]
    Starttls,
    /// TLS from the first byte (465).
    Implicit,
    /// No TLS (a relay on loopback or a private network only).
    None,
}

/// One SMTP relay (`[[notify.smtp]]`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpRelay {
    /// Its name in send records and logs (`primary`, `backup`).
    pub name: String,
    /// Host name (also the name its TLS certificate must carry).
    pub host: String,
    /// Port (default: 587 for STARTTLS, 465 for implicit TLS, 25 without TLS).
    #[serde(default)]
    pub port: Option<u16>,
    /// TLS mode.
    #[serde(default)]
    pub tls: SmtpTls,
    /// Login (PLAIN/LOGIN), with `password` or `password_env`.
    #[serde(default)]
    pub user: Option<String>,
    /// Password (prefer `password_env`: secrets kept out of files).
    #[serde(default)]
    pub password: Option<String>,
    /// The environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// A PEM CA to trust besides Mozilla's roots (a private relay's CA).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Timeout of each SMTP command, ms (default 10 s).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Connections a worker keeps open to the relay at most (1 to 200, default 20). A
    /// relay that writes each message to disk before its `250` (as Postfix does) needs
    /// about rate x its answer time of them; sends past them wait for one.
    #[serde(default)]
    pub connections: Option<u32>,
}

impl std::fmt::Debug for SmtpRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password never reaches a log line.
        f.debug_struct("SmtpRelay")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_env", &self.password_env)
            .field("connections", &self.connections)
            .finish()
    }
}

/// A relay ready to send.
#[derive(Clone)]
pub(crate) struct Relay {
    pub(crate) name: String,
    host: String,
    user: Option<String>,
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl Relay {
    /// Builds the pooled transport (nothing connects until the first send).
    pub(crate) fn new(cfg: &SmtpRelay) -> Result<Self, String> {
        let what = |m: String| format!("notify.smtp {:?}: {m}", cfg.name);
        if cfg.name.is_empty() || cfg.host.is_empty() {
            return Err(what("name and host are required".into()));
        }
        let tls_params = || -> Result<TlsParameters, String> {
            let mut b = TlsParameters::builder(cfg.host.clone());
            if let Some(path) = &cfg.ca_file {
                let pem = std::fs::read(path).map_err(|e| what(format!("ca_file {path}: {e}")))?;
                let cert = Certificate::from_pem(&pem).map_err(|e| what(format!("ca_file {path}: {e}")))?;
                b = b.add_root_certificate(cert);
            }
            b.build_rustls().map_err(|e| what(format!("TLS: {e}")))
        };
        let (tls, port) = match cfg.tls {
            SmtpTls::Starttls => (Tls::Required(tls_params()?), 587),
            SmtpTls::Implicit => (Tls::Wrapper(tls_params()?), 465),
            SmtpTls::None => (Tls::None, 25),
        };
        let connections = cfg.connections.unwrap_or(DEFAULT_CONNECTIONS);
        if !(1..=200).contains(&connections) {
            return Err(what(format!("connections must be 1 to 200, not {connections}")));
        }
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(cfg.host.clone())
            .port(cfg.port.unwrap_or(port))
            .pool_config(PoolConfig::new().max_size(connections))
            .tls(tls)
            .timeout(Some(Duration::from_millis(cfg.timeout_ms.unwrap_or(10_000))));
        let password = match (&cfg.password, &cfg.password_env) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(var)) => Some(std::env::var(var).map_err(|_| what(format!("password_env: {var} is not set")))?),
            (None, None) => None,
        };
        match (&cfg.user, password) {
            (Some(user), Some(password)) => b = b.credentials(Credentials::new(user.clone(), password)),
            (Some(_), None) => return Err(what("user is set without password or password_env".into())),
            (None, Some(_)) => return Err(what("a password is set without user".into())),
            (None, None) => {}
        }
        Ok(Relay { name: cfg.name.clone(), host: cfg.host.clone(), user: cfg.user.clone(), transport: b.build() })
    }

    /// Sends `msg`; the relay's answer text on success.
    pub(crate) async fn send(&self, msg: &Message) -> Result<String, lettre::transport::smtp::Error> {
        let response = self.transport.send(msg.clone()).await?;
        Ok(response.message().collect::<Vec<_>>().join(" "))
    }

    /// What went wrong, said for the send record and the log: a refused login and a
    /// certificate Fleet does not trust are named as such. Never holds the password
    /// (lettre's errors carry the server's answer, not what was sent).
    pub(crate) fn describe(&self, e: &lettre::transport::smtp::Error) -> String {
        let text = e.to_string();
        let code = e.status().map(|c| c.to_string());
        match (code.as_deref(), &self.user) {
            (Some("534" | "535" | "538"), Some(user)) => {
                return format!("{}: the relay refused the login of user {user:?} ({text})", self.name);
            }
            (Some("530"), None) => {
                return format!("{}: the relay requires a login; set user and password ({text})", self.name);
            }
            _ => {}
        }
        // A certificate rustls refused surfaces as a connection error naming it (a
        // server's answer that happens to say "certificate" is not one).
        if e.is_tls() || (!e.is_response() && text.contains("certificate")) {
            return format!(
                "{}: TLS with {} failed, the relay's certificate is not trusted or not valid for that name ({text}); \
                 trust its CA with ca_file",
                self.name, self.host
            );
        }
        format!("{}: {text}", self.name)
    }
}

/// A DKIM key's algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DkimAlgorithm {
    /// RSA-SHA256 (RFC 6376), what every receiver checks; 2048-bit keys advised, under
    /// 1024 bits refused (RFC 8301).
    #[default]
    Rsa,
    /// Ed25519-SHA256 (RFC 8463); fewer receivers check it, so publish an RSA key too.
    Ed25519,
}

/// The DKIM key of one sender domain (`[[notify.dkim]]`): emails whose From address is
/// in `domain` are signed with it as `d=<domain>; s=<selector>`, and receivers find the
/// public key in DNS at `<selector>._domainkey.<domain>`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKey {
    /// The sender domain (the From address's, `studio.example`).
    pub domain: String,
    /// The selector the public key is published under.
    pub selector: String,
    /// `rsa` (default) or `ed25519`.
    #[serde(default)]
    pub algorithm: DkimAlgorithm,
    /// The private key itself (prefer `private_key_file` or `private_key_env`). RSA: PEM,
    /// PKCS#1 or PKCS#8. Ed25519: PKCS#8 PEM, or the base64 of its 32-byte seed.
    #[serde(default)]
    pub private_key: Option<String>,
    /// A file holding the private key.
    #[serde(default)]
    pub private_key_file: Option<String>,
    /// The environment variable holding the private key.
    #[serde(default)]
    pub private_key_env: Option<String>,
}

impl std::fmt::Debug for DkimKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key never reaches a log line.
        f.debug_struct("DkimKey")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm)
            .field("private_key", &self.private_key.as_ref().map(|_| "<redacted>"))
            .field("private_key_file", &self.private_key_file)
            .field("private_key_env", &self.private_key_env)
            .finish()
    }
}

/// The headers a signature covers; `List-Unsubscribe*` even when absent (RFC 6376
/// §5.4.2: listing a header once more than it appears stops anyone adding it).
/// Content-Type is left out: lettre writes it with the MIME body, after the headers it
/// signs.
const DKIM_HEADERS: [&str; 8] =
    ["From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "List-Unsubscribe", "List-Unsubscribe-Post"];

/// The signers by sender domain (lowercase), keys read and checked now. Errors name the
/// setting, never the key.
pub(crate) fn dkim_signers(keys: &[DkimKey]) -> Result<BTreeMap<String, Arc<DkimConfig>>, String> {
    let mut out = BTreeMap::new();
    for k in keys {
        let what = |m: &str| format!("notify.dkim {:?}: {m}", k.domain);
        let domain = k.domain.trim().trim_end_matches('.').to_ascii_lowercase();
        let label_ok = |s: &str| {
            !s.is_empty()
                && s.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
        };
        if !label_ok(&domain) {
            return Err(what("domain is not a domain name"));
        }
        if !label_ok(&k.selector) {
            return Err(what("selector must be letters, digits, '-', '_' and dots"));
        }
        if out.contains_key(&domain) {
            return Err(what("a second key for the same domain"));
        }
        let text = match (&k.private_key, &k.private_key_file, &k.private_key_env) {
            (Some(p), None, None) => p.clone(),
            (None, Some(path), None) => {
                std::fs::read_to_string(path).map_err(|e| what(&format!("private_key_file {path}: {e}")))?
            }
            (None, None, Some(var)) => {
                std::env::var(var).map_err(|_| what(&format!("private_key_env: {var} is not set")))?
            }
            _ => return Err(what("give exactly one of private_key, private_key_file, private_key_env")),
        };
        let key = match k.algorithm {
            DkimAlgorithm::Rsa => {
                let pkcs1 = rsa_pkcs1(&text).map_err(|e| what(&e))?;
                DkimSigningKey::new(&pkcs1, DkimSigningAlgorithm::Rsa)
            }
            DkimAlgorithm::Ed25519 => {
                let seed = ed25519_seed(&text).map_err(|e| what(&e))?;
                DkimSigningKey::new(&seed, DkimSigningAlgorithm::Ed25519)
            }
        }
        .map_err(|e| what(&format!("private key: {e}")))?;
        let config = DkimConfig::new(
            k.selector.clone(),
            domain.clone(),
            key,
            DKIM_HEADERS.iter().map(|h| HeaderName::new_from_ascii_str(h)).collect(),
            DkimCanonicalization { header: DkimCanonicalizationType::Relaxed, body: DkimCanonicalizationType::Relaxed },
        );
        out.insert(domain, Arc::new(config));
    }
    Ok(out)
}

/// An RSA private key (PKCS#1 or PKCS#8 PEM) as the PKCS#1 PEM lettre reads, at least
/// 1024 bits.
fn rsa_pkcs1(pem: &str) -> Result<String, String> {
    use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::traits::PublicKeyParts;
    let pem = pem.trim();
    let key = if pem.contains("BEGIN RSA PRIVATE KEY") {
        rsa::RsaPrivateKey::from_pkcs1_pem(pem).map_err(|_| "not a valid PKCS#1 RSA private key".to_owned())?
    } else if pem.contains("BEGIN PRIVATE KEY") {
        rsa::RsaPrivateKey::from_pkcs8_pem(pem).map_err(|_| "not a valid PKCS#8 RSA private key".to_owned())?
    } else {
        return Err("the RSA private key must be PEM (BEGIN RSA PRIVATE KEY or BEGIN PRIVATE KEY)".into());
    };
    let bits = key.size() * 8;
    if bits < 1024 {
        return Err(format!("the RSA key has {bits} bits; at least 1024 are needed (2048 advised)"));
    }
    key.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
        .map(|p| p.to_string())
        .map_err(|_| "could not re-encode the RSA key".to_owned())
}

/// An Ed25519 private key (PKCS#8 PEM or the base64 of its seed) as the base64 seed
/// lettre reads.
fn ed25519_seed(text: &str) -> Result<String, String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let text = text.trim();
    if !text.contains("BEGIN PRIVATE KEY") {
        return Ok(text.to_owned());
    }
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = b64.decode(body.trim()).map_err(|_| "the Ed25519 PEM is not base64".to_owned())?;
    // PKCS#8 v1 of an Ed25519 key (RFC 8410): this 16-byte prefix, then the seed.
    const PREFIX: [u8; 16] =
        [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    match der.strip_prefix(&PREFIX[..]) {
        Some(seed) if seed.len() == 32 => Ok(b64.encode(seed)),
        _ => Err("not a PKCS#8 Ed25519 private key".into()),
    }
}

/// `List-Unsubscribe: <https://…>`.
#[derive(Clone)]
struct ListUnsubscribe(String);

impl Header for ListUnsubscribe {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe")
    }
    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribe(s.to_owned()))
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), format!("<{}>", self.0))
    }
}

/// `List-Unsubscribe-Post: List-Unsubscribe=One-Click`.
#[derive(Clone)]
struct ListUnsubscribePost;

impl Header for ListUnsubscribePost {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }
    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribePost)
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "List-Unsubscribe=One-Click".to_owned())
    }
}

/// The parts of one email.
pub(crate) struct Email<'a> {
    pub(crate) from: &'a Mailbox,
    pub(crate) to: &'a str,
    pub(crate) subject: &'a str,
    pub(crate) text: Option<&'a str>,
    pub(crate) html: Option<&'a str>,
    pub(crate) message_id: &'a str,
    pub(crate) unsubscribe: Option<&'a str>,
}

/// Builds the MIME message: text and HTML as `multipart/alternative` (one part when the
/// template has one).
pub(crate) fn build(e: &Email<'_>) -> Result<Message, String> {
    let to: Mailbox = e.to.parse().map_err(|err| format!("recipient address {:?}: {err}", e.to))?;
    let mut b = Message::builder()
        .from(e.from.clone())
        .to(to)
        .subject(e.subject)
        .message_id(Some(e.message_id.to_owned()))
        .date_now();
    if let Some(url) = e.unsubscribe {
        b = b.header(ListUnsubscribe(url.to_owned())).header(ListUnsubscribePost);
    }
    let built = match (e.text, e.html) {
        (Some(t), Some(h)) => b.multipart(MultiPart::alternative_plain_html(t.to_owned(), h.to_owned())),
        (Some(t), None) => b.singlepart(SinglePart::builder().header(ContentType::TEXT_PLAIN).body(t.to_owned())),
        (None, Some(h)) => b.singlepart(SinglePart::builder().header(ContentType::TEXT_HTML).body(h.to_owned())),
        (None, None) => return Err("the template has no email body (text or html)".into()),
    };
    built.map_err(|err| format!("building the message: {err}"))
}

/// A new Message-ID in `domain` (the From address's).
pub(crate) fn message_id(domain: &str) -> String {
    format!("<{}@{domain}>", uuid::Uuid::now_v7().simple())
}
