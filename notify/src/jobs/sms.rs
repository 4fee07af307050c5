//! SMS through a Twilio-style HTTP API (the protocol `comms.sync` reads): a form `POST`
//! to `{api_base}/2010-04-01/Accounts/{sid}/Messages.json` with Basic auth, `To`, `From`,
//! `Body` and a per-message `StatusCallback`; the answer's `sid` is the send record's
//! provider message id. The provider's later statuses arrive through the intake
//! (`POST /v1/intake/{provider}`, Twilio signatures) and move the record forward
//! ([`crate::store::apply_sms_status`]).
//!
//! Accounts (`[[notify.sms]]`) are tried in order: one that is down (no connection, a
//! 5xx, a 429) or held back by its limit key `sms:<name>` hands the message to the
//! next. A 4xx other than 429 is the message's fault (a number the provider refuses):
//! recorded as failed, not retried. The API base is the operator's config, still behind
//! the SSRF guard (`[notify] allow` opens ranges such as loopback for tests).

use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// One SMS provider account (`[[notify.sms]]`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsAccount {
    /// Its name in send records and its limit key (`sms:<name>`).
    pub name: String,
    /// The API's origin, e.g. `https://api.twilio.com`.
    pub api_base: String,
    /// The account SID.
    pub account_sid: String,
    /// The auth token (prefer `auth_token_env`).
    #[serde(default)]
    pub auth_token: Option<String>,
    /// The environment variable holding the auth token.
    #[serde(default)]
    pub auth_token_env: Option<String>,
    /// The sender: a number in E.164 or an alphanumeric sender id.
    pub from: String,
    /// Where the provider posts status changes: Fleet's intake URL for this provider,
    /// e.g. `https://fleet.example.com/v1/intake/twilio`.
    #[serde(default)]
    pub status_callback: Option<String>,
}

impl std::fmt::Debug for SmsAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmsAccount")
            .field("name", &self.name)
            .field("api_base", &self.api_base)
            .field("account_sid", &self.account_sid)
            .field("auth_token", &self.auth_token.as_ref().map(|_| "<redacted>"))
            .field("auth_token_env", &self.auth_token_env)
            .field("from", &self.from)
            .finish()
    }
}

/// An account ready to send.
#[derive(Clone)]
pub(crate) struct Account {
    pub(crate) name: String,
    url: reqwest::Url,
    sid: String,
    token: String,
    from: String,
    callback: Option<String>,
}

/// What one account said.
pub(crate) enum SmsError {
    /// Down or overloaded: the next account, or a retry.
    Unavailable(String),
    /// The message was refused (a 4xx): not retried.
    Refused(String),
}

impl Account {
    pub(crate) fn new(cfg: &SmsAccount, guard: &fleet_net::Guard) -> Result<Self, String> {
        let what = |m: String| format!("notify.sms {:?}: {m}", cfg.name);
        let token = match (&cfg.auth_token, &cfg.auth_token_env) {
            (Some(t), _) => t.clone(),
            (None, Some(var)) => std::env::var(var).map_err(|_| what(format!("auth_token_env: {var} is not set")))?,
            (None, None) => return Err(what("auth_token or auth_token_env is required".into())),
        };
        let ok_sid = !cfg.account_sid.is_empty() && cfg.account_sid.bytes().all(|b| b.is_ascii_alphanumeric());
        if !ok_sid {
            return Err(what("account_sid must be letters and digits".into()));
        }
        let base = cfg.api_base.trim_end_matches('/');
        let url: reqwest::Url = format!("{base}/2010-04-01/Accounts/{}/Messages.json", cfg.account_sid)
            .parse()
            .map_err(|e| what(format!("api_base: {e}")))?;
        guard
            .check_url(&url)
            .map_err(|ip| what(format!("api_base: {} is a private address (see notify.allow)", ip.0)))?;
        Ok(Account {
            name: cfg.name.clone(),
            url,
            sid: cfg.account_sid.clone(),
            token,
            from: cfg.from.clone(),
            callback: cfg.status_callback.clone(),
        })
    }

    /// Sends `body` to `to`; the message's sid and status.
    pub(crate) async fn send(
        &self,
        http: &reqwest::Client,
        to: &str,
        body: &str,
    ) -> Result<(String, String), SmsError> {
        let mut form = vec![("To", to), ("From", self.from.as_str()), ("Body", body)];
        if let Some(cb) = &self.callback {
            form.push(("StatusCallback", cb));
        }
        let encoded: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        let res = http
            .post(self.url.clone())
            .basic_auth(&self.sid, Some(&self.token))
            .header("content-type", "application/x-www-form-urlencoded")
            .timeout(Duration::from_secs(15))
            .body(encoded)
            .send()
            .await
            .map_err(|e| {
                SmsError::Unavailable(format!("{}: {}", self.name, fleet_net::redact_urls_in(&e.to_string())))
            })?;
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        let detail = |t: &str| t.chars().take(300).collect::<String>();
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(SmsError::Unavailable(format!("{}: HTTP {status}: {}", self.name, detail(&text))));
        }
        if !status.is_success() {
            return Err(SmsError::Refused(format!("{}: HTTP {status}: {}", self.name, detail(&text))));
        }
        #[derive(Deserialize)]
        struct Created {
            sid: String,
            #[serde(default)]
            status: Option<String>,
        }
        let created: Created = serde_json::from_str(&text)
            .map_err(|e| SmsError::Unavailable(format!("{}: unreadable answer: {e}", self.name)))?;
        Ok((created.sid, created.status.unwrap_or_else(|| "queued".into())))
    }
}

/// The provider HTTP client behind `guard` (no redirects: they would carry credentials).
pub(crate) fn client(guard: Arc<fleet_net::Guard>) -> Result<reqwest::Client, String> {
    let options = fleet_net::ClientOptions { guard: Some(guard), ..fleet_net::ClientOptions::default() };
    options.client(0).map_err(|e| e.to_string())
}
