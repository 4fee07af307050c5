//! Email over SMTP: the operator's relays, tried in order (a relay that refuses the
//! connection, the greeting, the login or the message hands the email to the next),
//! each a pooled `lettre` transport made once per worker.
//!
//! Every email carries a Message-ID Fleet made and recorded before the first attempt,
//! so a retry after a lost answer sends the same Message-ID (receivers fold the copy),
//! and `List-Unsubscribe` + `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC
//! 8058) when an unsubscribe URL is configured: a POST to it turns the category's email
//! off for the recipient (no GET: link scanners would unsubscribe people).

use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;
use std::time::Duration;

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
            .finish()
    }
}

/// A relay ready to send.
#[derive(Clone)]
pub(crate) struct Relay {
    pub(crate) name: String,
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
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(cfg.host.clone())
            .port(cfg.port.unwrap_or(port))
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
        Ok(Relay { name: cfg.name.clone(), transport: b.build() })
    }

    /// Sends `msg`; the relay's answer text on success.
    pub(crate) async fn send(&self, msg: &Message) -> Result<String, lettre::transport::smtp::Error> {
        let response = self.transport.send(msg.clone()).await?;
        Ok(response.message().collect::<Vec<_>>().join(" "))
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
