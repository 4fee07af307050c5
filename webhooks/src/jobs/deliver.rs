//! `webhook.deliver`: signed delivery of one event message to one endpoint.
//!
//! * Standard Webhooks headers: `webhook-id` (the message id, the same on every retry),
//!   `webhook-timestamp` and `webhook-signature` fresh on each attempt, one signature
//!   per endpoint secret (rotation), over the payload's exact bytes.
//! * One deadline for connect, headers and body; the response body is read up to a cap
//!   and the rest dropped; redirects are never followed; the SSRF guard checks every
//!   address connected to.
//! * 2xx succeeds. 410 Gone disables the endpoint (nothing more is sent to it). 429
//!   holds the endpoint back fleet-wide for its `Retry-After` (clamped to 1 s..10 h).
//!   5xx, 3xx, timeouts and connection errors are retried with backoff (or after
//!   `Retry-After`). Other 4xx and refused addresses give up (dead letter, replayable).
//! * Every attempt is written to `webhook_attempts`.
//! * The endpoint's limit key `webhook:endpoint:<id>` carries its rate, cap and breaker.
//!   It is admitted through [`JobContext::limits`] immediately before the request is
//!   sent: after the endpoint, the message and the secrets are read and the request is
//!   signed. The rate is what the endpoint sees, so the admission is as close to the
//!   arrival as the handler can put it: admitting before the database reads (as a
//!   declared key would) let their varying delays bunch the sends, and a 5/s endpoint
//!   got 6 requests within 0.88 s. With the admission here, arrivals in any 1 s window
//!   stay within the rate as long as the time from admission to arrival varies by less
//!   than the limiter's 25 ms guard band (a pooled connection; a new connection's
//!   handshake adds its own time). A key that must wait snoozes the job to its reserved
//!   slot (no attempt counted). The key is also admitted only once the endpoint is known
//!   to be the job's tenant's, so a job naming another tenant's endpoint gives up without
//!   touching that endpoint's rate, slots or breaker.
//! * The job's tenant (from its envelope, never its arguments) is the authority: the
//!   endpoint and the message are loaded for that tenant only, and one of another tenant
//!   is "not found", exactly like a missing one.
//! * Endpoint secrets are sealed at rest ([`fleet_accounts::secrets`], bound to tenant,
//!   table and endpoint id); plaintext ones (from before sealing) still sign until the
//!   scheduler or `fleet-scheduler reseal-secrets` seals them.
//! * URLs are redacted ([`fleet_net::redact_url`]) in every error and attempt row.

/// The SSRF guard (the `fleet-net` crate, shared with the calendar and vision clients).
use fleet_net as ssrf;
pub use fleet_net::parse_retry_after;

use crate::signing::{Secret, signature_header};
use crate::store;
use fleet_accounts::secrets::{SecretBox, SecretError, is_sealed};
use fleet_jobs::catalogue::WebhookDelivery;
use fleet_kit::{Handler, JobContext, JobError};
use serde::Deserialize;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Delivery settings (`[webhooks]` in the worker config).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// Address ranges allowed besides public ones, e.g. `["127.0.0.0/8"]` for local tests.
    pub allow: Vec<String>,
    /// Connect timeout, ms.
    pub connect_timeout_ms: u64,
    /// Deadline of one attempt (connect, headers and body), ms.
    pub timeout_ms: u64,
    /// Most response bytes read (and the first 4 KiB of them kept in the attempt log).
    pub max_response_bytes: usize,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            allow: Vec::new(),
            connect_timeout_ms: 5_000,
            timeout_ms: 15_000,
            max_response_bytes: 64 * 1024,
        }
    }
}

/// Refusal by the SSRF guard (surfaces as a connect error).
/// The `webhook.deliver` handler.
pub struct Deliver {
    db: PgPool,
    http: reqwest::Client,
    guard: Arc<ssrf::Guard>,
    settings: WebhookSettings,
    secrets: Option<SecretBox>,
}

/// What one HTTP attempt came to.
struct Sent {
    status: Option<u16>,
    response: Option<String>,
    retry_after: Option<Duration>,
    error: Option<String>,
    refused: bool,
}

impl Deliver {
    /// A handler on `db` with `settings` (checked: the allow-list must parse).
    pub fn new(db: PgPool, settings: WebhookSettings) -> Result<Self, String> {
        let allow = settings.allow.iter().map(|c| c.parse()).collect::<Result<Vec<ssrf::Cidr>, String>>()?;
        let guard = Arc::new(ssrf::Guard::new(allow));
        // No redirects: a signed delivery goes to the endpoint's URL or nowhere.
        let http = ssrf::ClientOptions {
            timeout: Duration::from_millis(settings.timeout_ms),
            connect_timeout: Duration::from_millis(settings.connect_timeout_ms),
            max_response_bytes: settings.max_response_bytes,
            guard: Some(guard.clone()),
            user_agent: Some(concat!("Fleet-Webhooks/", env!("CARGO_PKG_VERSION"))),
            ..ssrf::ClientOptions::default()
        }
        .client(0)
        .map_err(|e| e.to_string())?;
        Ok(Deliver { db, http, guard, settings, secrets: None })
    }

    /// The same handler opening sealed endpoint secrets with `secrets` (`FLEET_SECRETS_KEY`).
    /// Without it, only endpoints whose secrets are still plaintext can be delivered to.
    pub fn with_secrets(mut self, secrets: Option<SecretBox>) -> Self {
        self.secrets = secrets;
        self
    }

    /// The endpoint's secrets in the clear: sealed ones opened (bound to tenant and
    /// endpoint id), plaintext ones (stored before sealing) as they are.
    fn open_secrets(&self, tenant: &str, endpoint_id: &str, stored: Vec<String>) -> Result<Vec<String>, JobError> {
        let aad = store::endpoint_aad(tenant, endpoint_id);
        stored
            .into_iter()
            .map(|s| {
                if !is_sealed(&s) {
                    return Ok(s);
                }
                let Some(secrets) = &self.secrets else {
                    return Err(JobError::retry(format!(
                        "endpoint {endpoint_id} has sealed secrets but this worker has no FLEET_SECRETS_KEY"
                    )));
                };
                secrets.open(&aad, &s).map_err(|e| match e {
                    // Another worker (or this one after a restart) may have the key.
                    SecretError::UnknownKey(_) => JobError::retry(format!("endpoint {endpoint_id}: {e}")),
                    _ => JobError::give_up(format!("endpoint {endpoint_id}: {e}")),
                })
            })
            .collect()
    }

    /// The signed request to `url`, or the refusal to log when it cannot be sent (a URL
    /// that is not http(s), an address the SSRF guard refuses, no valid secret).
    fn request(
        &self,
        url: &str,
        secrets: &[String],
        message_id: &str,
        payload: &str,
    ) -> Result<reqwest::RequestBuilder, Sent> {
        let parsed = match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => u,
            _ => {
                return Err(fail(
                    format!("invalid endpoint URL {}: http or https expected", ssrf::redact_url(url)),
                    true,
                ));
            }
        };
        if let Err(ssrf::Refused(ip)) = self.guard.check_url(&parsed) {
            return Err(fail(format!("refused by the SSRF guard: {ip} is a private or reserved address"), true));
        }
        let keys: Vec<Secret> = secrets.iter().filter_map(|s| Secret::parse(s).ok()).collect();
        if keys.is_empty() {
            return Err(fail("the endpoint has no valid signing secret".into(), true));
        }
        let ts = chrono::Utc::now().timestamp();
        let signature =
            signature_header(&keys, message_id, ts, payload.as_bytes()).map_err(|e| fail(e.to_string(), true))?;
        Ok(self
            .http
            .post(parsed)
            .header("webhook-id", message_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .header("content-type", "application/json")
            .body(payload.to_owned()))
    }

    /// Sends `request` and reads what came back.
    async fn send(&self, request: reqwest::RequestBuilder) -> Sent {
        let mut resp = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                let refused = chain_has_refusal(&e);
                let timeout = e.is_timeout();
                let connect = e.is_connect();
                // reqwest's message names the URL, query string and all.
                let e = e.without_url();
                let what = if refused {
                    ssrf::error_chain(&e)
                } else if timeout {
                    format!("timed out after {} ms", self.settings.timeout_ms)
                } else if connect {
                    format!("connection failed: {}", ssrf::error_chain(&e))
                } else {
                    ssrf::error_chain(&e)
                };
                return fail(what, refused);
            }
        };
        let status = resp.status().as_u16();
        let retry_after = ssrf::retry_after(resp.headers());
        let mut body = Vec::new();
        let mut error = None;
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    let room = self.settings.max_response_bytes.saturating_sub(body.len());
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if body.len() >= self.settings.max_response_bytes {
                        break; // the rest is dropped unread
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    error = Some(if e.is_timeout() {
                        "timed out reading the response".to_owned()
                    } else {
                        ssrf::error_chain(&e.without_url())
                    });
                    break;
                }
            }
        }
        let kept = &body[..body.len().min(4096)];
        Sent {
            status: Some(status),
            response: Some(String::from_utf8_lossy(kept).into_owned()),
            retry_after,
            error,
            refused: false,
        }
    }

    async fn log(&self, a: &WebhookDelivery, attempt: u32, outcome: &str, sent: &Sent, took: Duration) {
        let row = store::Attempt {
            message_id: &a.message_id,
            endpoint_id: &a.endpoint_id,
            attempt,
            outcome,
            status: sent.status,
            duration_ms: took.as_millis() as u32,
            response: sent.response.as_deref(),
            error: sent.error.as_deref(),
        };
        if let Err(e) = store::log_attempt(&self.db, &row).await {
            tracing::warn!(error = %e, "could not log the delivery attempt");
        }
    }
}

/// An attempt that got no response: `error`, and whether the delivery was `refused`
/// (nothing to retry).
fn fail(error: String, refused: bool) -> Sent {
    Sent { status: None, response: None, retry_after: None, error: Some(error), refused }
}

fn chain_has_refusal(e: &(dyn std::error::Error + 'static)) -> bool {
    ssrf::refusal_in(e).is_some()
}

impl Handler for Deliver {
    type Args = WebhookDelivery;

    async fn handle(&self, a: WebhookDelivery, ctx: JobContext) -> Result<(), JobError> {
        // Deliveries are enqueued by `webhook.publish` for its tenant; one without a
        // tenant was not, and may name anybody's endpoint.
        let Some(tenant) = ctx.tenant.as_deref() else {
            return Err(JobError::give_up(
                "webhook.deliver needs a tenant (deliveries are enqueued by webhook.publish)",
            ));
        };
        // A row of another tenant is "not found", with the same message as a missing one.
        let endpoint = store::delivery_endpoint(&self.db, tenant, &a.endpoint_id)
            .await
            .map_err(|e| JobError::retry(format!("database: {e}")))?;
        let Some(store::DeliveryEndpoint { url, secrets, enabled, disabled_reason: reason }) = endpoint else {
            return Err(JobError::give_up(format!("endpoint {} not found", a.endpoint_id)));
        };
        let payload = store::message_payload(&self.db, tenant, &a.message_id)
            .await
            .map_err(|e| JobError::retry(format!("database: {e}")))?;
        let Some(payload) = payload else {
            return Err(JobError::give_up(format!("message {} not found", a.message_id)));
        };
        if !enabled {
            // Held: `POST /v1/endpoints/{id}/enable` replays it (see `crate::replay`).
            let why = format!(
                "endpoint disabled ({}): held until it is re-enabled (POST /v1/endpoints/{}/enable replays it)",
                reason.unwrap_or_default(),
                a.endpoint_id
            );
            self.log(&a, ctx.attempt, "skipped", &fail(why.clone(), false), Duration::ZERO).await;
            return Err(JobError::give_up(why));
        }
        let secrets = self.open_secrets(tenant, &a.endpoint_id, secrets)?;
        let (sent, took) = match self.request(&url, &secrets, &a.message_id, &payload) {
            Ok(request) => {
                // The endpoint's rate counts arrivals: admit right before the send (see
                // the module docs). A wait snoozes the job to its reserved slot.
                ctx.limits().admit(&a.limit_key()).await?;
                let t0 = Instant::now();
                let sent = self.send(request).await;
                (sent, t0.elapsed())
            }
            Err(refused) => (refused, Duration::ZERO),
        };
        let (outcome, result) = match (sent.status, &sent.error) {
            (Some(s), None) if (200..300).contains(&s) => ("delivered", Ok(())),
            (Some(410), _) => {
                let _ = store::disable_gone(&self.db, tenant, &a.endpoint_id).await;
                tracing::warn!(endpoint = %a.endpoint_id, "endpoint answered 410 Gone: disabled");
                (
                    "gone",
                    Err(JobError::give_up(format!(
                        "HTTP 410 Gone: the endpoint is disabled; POST /v1/endpoints/{}/enable re-enables it and replays what it missed",
                        a.endpoint_id
                    ))),
                )
            }
            (Some(429), _) => {
                let wait = sent.retry_after.unwrap_or(Duration::from_secs(5));
                ("throttled", Err(JobError::slow_down("HTTP 429 Too Many Requests", wait)))
            }
            (Some(s), _) if s >= 500 || (300..400).contains(&s) => {
                let e = format!("HTTP {s}");
                match sent.retry_after {
                    Some(d) => ("failed", Err(JobError::retry_after(e, d))),
                    None => ("failed", Err(JobError::retry(e))),
                }
            }
            (Some(s), None) => {
                ("refused", Err(JobError::give_up(format!("HTTP {s}: the endpoint refused the delivery"))))
            }
            (Some(s), Some(e)) => ("failed", Err(JobError::retry(format!("HTTP {s}, then {e}")))),
            (None, Some(e)) if sent.refused => ("refused", Err(JobError::give_up(e.clone()))),
            (None, Some(e)) => ("failed", Err(JobError::retry(e.clone()))),
            (None, None) => ("failed", Err(JobError::retry("no response"))),
        };
        self.log(&a, ctx.attempt, outcome, &sent, took).await;
        result
    }
}
