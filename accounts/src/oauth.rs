//! OAuth 2.0 access-token refresh (RFC 6749 §6): Google and Microsoft Graph calendar
//! sources, and mailboxes that log in with `XOAUTH2`. One home, so neither domain borrows
//! the other's.
//!
//! A source's sealed secret is either a bare access token (it works until it expires,
//! about an hour for both providers) or [`OAuthCredentials`] as JSON:
//!
//! ```json
//! {"refresh_token": "1//0g...", "token_url": "https://oauth2.googleapis.com/token",
//!  "client_id": "123.apps.googleusercontent.com", "client_secret": "GOCSPX-...",
//!  "access_token": "ya29....", "expires_at": 1764640000}
//! ```
//!
//! With credentials, the sync refreshes the access token shortly before `expires_at` (or at
//! once when it is absent) and whenever the provider refuses the token, and stores the new
//! token (and a rotated refresh token, as Microsoft issues) sealed again. A refresh the
//! token endpoint refuses (`invalid_grant`: revoked, expired) is the account's to fix
//! ([`OAuthError::Rejected`]); each domain maps [`OAuthError`] to its own errors.
//!
//! Usage: `let mut c = OAuthCredentials::from_secret(&opened)?; c.refresh(&options, now).await?;`
//! then seal `c.to_secret()`.

use fleet_net::ClientOptions;
use reqwest::{StatusCode, header};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Refresh this long before the token's expiry.
pub const REFRESH_MARGIN_SECS: i64 = 120;

/// The largest token response read: a token response is a few KiB at most.
const MAX_TOKEN_RESPONSE: usize = 1 << 20;

/// How long a rate-limited token endpoint is left alone when it does not say.
const RATE_LIMITED_DEFAULT: Duration = Duration::from_secs(30);

/// Why a refresh failed. Nothing here holds a token or a client secret.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// `token_url` is not a URL: the stored credentials are wrong; re-authorise the account.
    #[error("token_url: {0}")]
    Url(String),
    /// The token endpoint's address is private or reserved and not allowed (the SSRF
    /// guard): permanent unless the allow-list changes.
    #[error("{0}")]
    Refused(String),
    /// Connection, TLS or timeout (or no client could be built): worth a retry.
    #[error("token endpoint unreachable: {0}")]
    Transport(String),
    /// The token response was larger than the cap: the endpoint is not a token endpoint.
    #[error("token response larger than {0} bytes")]
    TooLarge(usize),
    /// 429/503: retry after `retry_after` (the endpoint's `Retry-After`, or 30 s).
    #[error("token endpoint rate limited ({status}), retry after {} s", retry_after.as_secs())]
    RateLimited {
        /// The status.
        status: StatusCode,
        /// How long to wait.
        retry_after: Duration,
    },
    /// Another 5xx: worth a retry.
    #[error("token endpoint failed ({0})")]
    Unavailable(StatusCode),
    /// A 2xx whose body is not a token response: `token_url` names something that is not
    /// a token endpoint; not retried.
    #[error("{0}")]
    BadResponse(String),
    /// The endpoint refused the grant (`invalid_grant`, `invalid_client`, …): only
    /// re-authorising the account helps; not retried.
    #[error("{0}")]
    Rejected(String),
}

impl OAuthError {
    /// True when a later attempt may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, OAuthError::Transport(_) | OAuthError::RateLimited { .. } | OAuthError::Unavailable(_))
    }
}

/// What a source keeps to renew its access token.
#[derive(Clone, Serialize, Deserialize)]
pub struct OAuthCredentials {
    /// The current access token (empty: none yet).
    #[serde(default)]
    pub access_token: String,
    /// When it expires (seconds since the epoch); absent: unknown, refresh before use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// The refresh token.
    pub refresh_token: String,
    /// The provider's token endpoint.
    pub token_url: String,
    /// The OAuth client id.
    pub client_id: String,
    /// The client secret, for confidential clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
}

impl std::fmt::Debug for OAuthCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthCredentials")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<i64>,
    #[serde(default)]
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct TokenError {
    #[serde(default)]
    error: String,
}

fn transport(err: reqwest::Error) -> OAuthError {
    match fleet_net::request_failure(err) {
        fleet_net::RequestFailure::Refused(why) => OAuthError::Refused(why),
        other => OAuthError::Transport(other.to_string()),
    }
}

impl OAuthCredentials {
    /// The credentials in a source's opened secret, when it holds credentials rather than a
    /// bare access token.
    pub fn from_secret(secret: &str) -> Option<OAuthCredentials> {
        if !secret.trim_start().starts_with('{') {
            return None;
        }
        serde_json::from_str(secret).ok()
    }

    /// The secret to seal and store.
    pub fn to_secret(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Whether the access token is missing or expires within the margin of `now` (seconds).
    pub fn needs_refresh(&self, now: i64) -> bool {
        self.access_token.is_empty() || self.expires_at.is_none_or(|at| at - REFRESH_MARGIN_SECS <= now)
    }

    /// Gets a new access token from the token endpoint (`grant_type=refresh_token`), through
    /// the client options' SSRF guard and timeouts, no redirects (they would carry the
    /// refresh token), the body capped at 1 MiB. A refused grant is
    /// [`OAuthError::Rejected`] (permanent); 429 and 5xx are transient.
    pub async fn refresh(&mut self, options: &ClientOptions, now: i64) -> Result<(), OAuthError> {
        let url = reqwest::Url::parse(&self.token_url).map_err(|e| OAuthError::Url(e.to_string()))?;
        if let Some(guard) = &options.guard {
            guard.check_url(&url).map_err(|e| OAuthError::Refused(e.to_string()))?;
        }
        let client = options.client(0).map_err(|e| OAuthError::Transport(e.to_string()))?;
        let form = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "refresh_token")
                .append_pair("refresh_token", &self.refresh_token)
                .append_pair("client_id", &self.client_id);
            if let Some(secret) = &self.client_secret {
                form.append_pair("client_secret", secret);
            }
            form.finish()
        };
        let mut response = client
            .post(url)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(form)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let cap = options.max_response_bytes.min(MAX_TOKEN_RESPONSE);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > cap {
                return Err(OAuthError::TooLarge(cap));
            }
            body.extend_from_slice(&chunk);
        }
        match status {
            s if s.is_success() => {
                let token: TokenResponse = serde_json::from_slice(&body)
                    .map_err(|e| OAuthError::BadResponse(format!("token response: {e}")))?;
                if token.access_token.is_empty() {
                    return Err(OAuthError::BadResponse("token response without an access_token".into()));
                }
                self.access_token = token.access_token;
                self.expires_at = token.expires_in.map(|secs| now + secs);
                if let Some(rotated) = token.refresh_token.filter(|t| !t.is_empty()) {
                    self.refresh_token = rotated;
                }
                Ok(())
            }
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => Err(OAuthError::RateLimited {
                status,
                retry_after: fleet_net::retry_after(response.headers()).unwrap_or(RATE_LIMITED_DEFAULT),
            }),
            s if s.is_server_error() => Err(OAuthError::Unavailable(s)),
            s => {
                // invalid_grant, invalid_client, unauthorized_client: only re-authorising helps.
                let code = serde_json::from_slice::<TokenError>(&body).map(|e| e.error).unwrap_or_default();
                Err(OAuthError::Rejected(format!(
                    "the token endpoint refused the refresh ({s}{}): re-authorise the account",
                    if code.is_empty() { String::new() } else { format!(", {code}") }
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_round_trip_and_a_bare_token_is_not_credentials() {
        assert!(OAuthCredentials::from_secret("ya29.bare-token").is_none());
        let json = r#"{"refresh_token":"rt","token_url":"https://t.example/token","client_id":"c","expires_at":100}"#;
        let c = OAuthCredentials::from_secret(json).unwrap();
        assert!(c.needs_refresh(0), "no access token yet");
        assert!(!format!("{c:?}").contains("rt\""), "no refresh token in Debug: {c:?}");
        let again = OAuthCredentials::from_secret(&c.to_secret()).unwrap();
        assert_eq!((again.refresh_token.as_str(), again.expires_at), ("rt", Some(100)));
    }

    #[test]
    fn only_the_accounts_own_failures_are_permanent() {
        assert!(!OAuthError::Rejected("invalid_grant".into()).is_transient());
        assert!(!OAuthError::Url("x".into()).is_transient());
        assert!(OAuthError::Unavailable(StatusCode::BAD_GATEWAY).is_transient());
        assert!(
            OAuthError::RateLimited { status: StatusCode::TOO_MANY_REQUESTS, retry_after: RATE_LIMITED_DEFAULT }
                .is_transient()
        );
    }
}
