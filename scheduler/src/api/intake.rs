//! `POST /v1/intake/{provider}`: incoming webhooks from outside services (vision, SMS,
//! calendar providers). The sender's signature is verified in constant time over the raw
//! body (its size capped before any work), stale timestamps and replayed ids are refused,
//! and each verified call becomes a `webhook.intake` job. Every refusal is the same bare
//! 401 (no detail for the sender) and is counted by reason for operators.

use super::ApiState;
use super::error::ApiError;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use base64::Engine;
use fleet_jobs::EnqueueOptions;
use fleet_jobs::catalogue::WebhookIntake;
use fleet_webhooks::signing::{Secret, TOLERANCE_SECS, verify};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// How a provider signs its calls.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`, `whsec_` secrets.
    StandardWebhooks,
    /// HMAC-SHA256 of the body (or of `{timestamp}.{body}` when `timestamp_header` is set)
    /// in one header, hex or base64, with an optional prefix such as `sha256=`.
    HmacSha256,
}

/// Encoding of an HMAC signature header.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Lower- or upper-case hex.
    #[default]
    Hex,
    /// Standard base64.
    Base64,
}

/// One provider allowed to call the intake (`[intake.<name>]` in the scheduler config).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntakeProvider {
    /// Signature scheme.
    pub scheme: Scheme,
    /// Secrets (several during a rotation); `whsec_...` for Standard Webhooks.
    pub secrets: Vec<String>,
    /// HMAC scheme: the header carrying the signature.
    #[serde(default)]
    pub signature_header: Option<String>,
    /// HMAC scheme: text before the signature, e.g. `sha256=`.
    #[serde(default)]
    pub prefix: String,
    /// HMAC scheme: signature encoding.
    #[serde(default)]
    pub encoding: Encoding,
    /// HMAC scheme: header with the sender's delivery id (replay protection); without it
    /// the id is the body's SHA-256.
    #[serde(default)]
    pub id_header: Option<String>,
    /// HMAC scheme: header with a Unix timestamp, signed as `{timestamp}.{body}` and
    /// refused when more than 300 s off.
    #[serde(default)]
    pub timestamp_header: Option<String>,
}

impl IntakeProvider {
    /// Checks the settings (secrets parse, the HMAC scheme names its header).
    pub fn validate(&self, name: &str) -> Result<(), String> {
        if self.secrets.is_empty() {
            return Err(format!("intake provider {name:?} needs at least one secret"));
        }
        match self.scheme {
            Scheme::StandardWebhooks => {
                for s in &self.secrets {
                    Secret::parse(s).map_err(|e| format!("intake provider {name:?}: {e}"))?;
                }
            }
            Scheme::HmacSha256 => {
                if self.signature_header.is_none() {
                    return Err(format!("intake provider {name:?}: hmac_sha256 needs signature_header"));
                }
                if self.secrets.iter().any(|s| s.is_empty()) {
                    return Err(format!("intake provider {name:?}: empty secret"));
                }
            }
        }
        Ok(())
    }

    /// Verifies a call; returns the sender's delivery id or why it is refused.
    fn check(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<String, &'static str> {
        let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        match self.scheme {
            Scheme::StandardWebhooks => {
                let secrets: Vec<Secret> = self.secrets.iter().filter_map(|s| Secret::parse(s).ok()).collect();
                verify(&secrets, h("webhook-id"), h("webhook-timestamp"), h("webhook-signature"), body, now).map_err(
                    |e| match e {
                        fleet_webhooks::signing::WebhookError::Stale => "stale",
                        fleet_webhooks::signing::WebhookError::NoMatch => "signature",
                        _ => "headers",
                    },
                )?;
                Ok(h("webhook-id").unwrap_or_default().to_owned())
            }
            Scheme::HmacSha256 => {
                let header = self.signature_header.as_deref().unwrap_or_default();
                let given = h(header).and_then(|v| v.strip_prefix(self.prefix.as_str())).ok_or("headers")?;
                let given = match self.encoding {
                    Encoding::Hex => hex::decode(given.trim()).map_err(|_| "signature")?,
                    Encoding::Base64 => {
                        base64::engine::general_purpose::STANDARD.decode(given.trim()).map_err(|_| "signature")?
                    }
                };
                let ts = match &self.timestamp_header {
                    Some(th) => {
                        let t = h(th)
                            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                            .ok_or("headers")?;
                        let v: i64 = t.parse().map_err(|_| "headers")?;
                        if (now - v).abs() > TOLERANCE_SECS {
                            return Err("stale");
                        }
                        Some(t.to_owned())
                    }
                    None => None,
                };
                let matched = self.secrets.iter().any(|s| {
                    let mut mac = Hmac::<Sha256>::new_from_slice(s.as_bytes()).expect("any key length");
                    if let Some(t) = &ts {
                        mac.update(t.as_bytes());
                        mac.update(b".");
                    }
                    mac.update(body);
                    mac.verify_slice(&given).is_ok()
                });
                if !matched {
                    return Err("signature");
                }
                let id = match &self.id_header {
                    Some(ih) => h(ih).filter(|v| !v.is_empty()).ok_or("headers")?.to_owned(),
                    None => hex::encode(Sha256::digest(body)),
                };
                Ok(id)
            }
        }
    }
}

/// Receive a call from a configured provider.
#[utoipa::path(post, path = "/v1/intake/{provider}",
    request_body(content = String, content_type = "application/json", description = "the provider's payload, verified byte for byte"),
    responses((status = 202, description = "verified and queued"), (status = 401, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn receive(
    State(state): State<ApiState>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let p =
        state.intake.get(&provider).ok_or_else(|| ApiError::not_found(format!("no intake provider {provider:?}")))?;
    let refuse = |reason: &'static str| {
        metrics::counter!("fleet_intake_rejected_total", "provider" => provider.clone(), "reason" => reason)
            .increment(1);
        tracing::info!(%provider, reason, "incoming webhook refused");
        ApiError::unauthorized("invalid signature")
    };
    let now = chrono::Utc::now().timestamp();
    let id = p.check(&headers, &body, now).map_err(refuse)?;
    state.limits.check_provider(&provider)?;
    // The same id twice within the tolerance window is a replay.
    let digest = hex::encode(Sha256::digest(id.as_bytes()));
    let key = format!("{}:{{intake:{provider}}}:{digest}", state.client.prefix());
    let first: Option<String> = redis::cmd("SET")
        .arg(&key)
        .arg(1)
        .arg("NX")
        .arg("EX")
        .arg(2 * TOLERANCE_SECS)
        .query_async(&mut state.client.connection())
        .await
        .map_err(|e| ApiError::unavailable("intake replay check", e))?;
    if first.is_none() {
        return Err(refuse("replay"));
    }
    let args = WebhookIntake {
        provider: provider.clone(),
        id: id.clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
        received_at: fleet_jobs::envelope::now_ms(),
    };
    // No unique key and no chosen id: those live in namespaces a tenant can also name
    // (a tenant's job holding `intake:<provider>:<digest>` would have swallowed the genuine
    // event). Duplicates are already stopped by the replay key above (a Redis key no
    // tenant-named key can produce: queue names have no ':', limit keys live under
    // `{lim:...}`) and, for good, by `intake_events`' primary key. No tenant either: the
    // handler refuses an intake job that has one.
    let opts = EnqueueOptions { tenant: None, ..Default::default() };
    let job = state.client.enqueue_with(&args, opts).await?;
    metrics::counter!("fleet_intake_accepted_total", "provider" => provider).increment(1);
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"job": job.0}))))
}
