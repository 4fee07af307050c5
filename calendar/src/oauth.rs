//! OAuth 2.0 access-token refresh (RFC 6749 §6) for Google and Microsoft Graph sources.
//!
//! A provider source's sealed secret is either a bare access token (it works until it
//! expires, about an hour for both providers) or [`OAuthCredentials`] as JSON:
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
//! token endpoint refuses (`invalid_grant`: revoked, expired) is the account's to fix.
//!
//! Usage: `let mut c = OAuthCredentials::from_secret(&opened)?; c.refresh(&options, now).await?;`
//! then seal `c.to_secret()`.

use crate::caldav::ClientOptions;
use crate::provider::{ProviderError, transport};
use reqwest::{StatusCode, header};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Refresh this long before the token's expiry.
pub const REFRESH_MARGIN_SECS: i64 = 120;

/// What a provider source keeps to renew its access token.
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
    /// the client options' SSRF guard, timeout and body cap. A refused grant is
    /// [`ProviderError::Forbidden`] (permanent); 429 and 5xx are transient.
    pub async fn refresh(&mut self, options: &ClientOptions, now: i64) -> Result<(), ProviderError> {
        let url = reqwest::Url::parse(&self.token_url).map_err(|e| ProviderError::Url(format!("token_url: {e}")))?;
        if let Some(guard) = &options.guard {
            guard.check_url(&url).map_err(|e| ProviderError::Refused(e.to_string()))?;
        }
        let client = options.client(0).map_err(|e| ProviderError::Transport(e.to_string()))?;
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
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > options.max_response_bytes.min(1 << 20) {
                return Err(ProviderError::TooLarge(options.max_response_bytes.min(1 << 20)));
            }
            body.extend_from_slice(&chunk);
        }
        match status {
            s if s.is_success() => {
                let token: TokenResponse =
                    serde_json::from_slice(&body).map_err(|e| ProviderError::Json(format!("token response: {e}")))?;
                if token.access_token.is_empty() {
                    return Err(ProviderError::Json("token response without an access_token".into()));
                }
                self.access_token = token.access_token;
                self.expires_at = token.expires_in.map(|secs| now + secs);
                if let Some(rotated) = token.refresh_token.filter(|t| !t.is_empty()) {
                    self.refresh_token = rotated;
                }
                Ok(())
            }
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                Err(ProviderError::RateLimited { status, retry_after: Some(Duration::from_secs(30)) })
            }
            s if s.is_server_error() => Err(ProviderError::Status(s, "token endpoint".into())),
            s => {
                // invalid_grant, invalid_client, unauthorized_client: only re-authorising helps.
                let code = serde_json::from_slice::<TokenError>(&body).map(|e| e.error).unwrap_or_default();
                Err(ProviderError::Forbidden(format!(
                    "the token endpoint refused the refresh ({s}{}): re-authorise the account",
                    if code.is_empty() { String::new() } else { format!(", {code}") }
                )))
            }
        }
    }
}
