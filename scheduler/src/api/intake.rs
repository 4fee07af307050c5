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
use fleet_jobs::catalogue::{IntakeRoute, WebhookIntake};
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
    /// Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]`, HMAC-SHA256 of
    /// `{t}.{body}` with the endpoint's `whsec_...` secret, refused when `t` is more than
    /// 300 s off. The replay id is the event's `id`.
    Stripe,
    /// Twilio: `X-Twilio-Signature`, base64 HMAC-SHA1 (or HMAC-SHA256 when
    /// `X-Twilio-Webhooks-Signature-Settings` says so) of the URL Twilio called followed by
    /// the form parameters sorted by name, each name then its value; a JSON body is covered
    /// by the URL's `bodySHA256` instead. Needs `public_url`. Twilio sends no timestamp, so
    /// there is no staleness check; the replay id is `I-Twilio-Idempotency-Token`.
    Twilio,
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
    /// Twilio scheme: the origin (and any path prefix a proxy strips) that Twilio calls,
    /// e.g. `https://fleet.example.com`; the signed URL is this followed by the request's
    /// path and query. Fleet cannot see it behind a proxy, so it is configured.
    #[serde(default)]
    pub public_url: Option<String>,
    /// The tenant this provider's events belong to (needed by `routes`). It comes from this
    /// config, never from a call.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Where the event type is in a call: a JSON pointer such as `/type` for JSON bodies, or
    /// a form field name such as `MessageStatus` for form bodies.
    #[serde(default)]
    pub event_type: Option<String>,
    /// What to do with verified calls besides recording them, first match per route.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// One route of a provider (`[[intake.<name>.routes]]`): the event types it takes and
/// the job it leads to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Event types this route takes: exact names, a prefix ending in `.*` (`client.*`), or `*`.
    pub events: Vec<String>,
    /// Publish the event to the tenant's webhook endpoints and live stream under this
    /// type (`""` = `<provider>.<event type>`).
    #[serde(default)]
    pub publish: Option<String>,
    /// Or enqueue a job of this public kind with the event as its arguments.
    #[serde(default)]
    pub enqueue: Option<String>,
    /// The queue of that job, if not the kind's default.
    #[serde(default)]
    pub queue: Option<String>,
}

impl RouteConfig {
    fn takes(&self, event_type: &str) -> bool {
        self.events.iter().any(|e| {
            e == "*"
                || e == event_type
                || e.strip_suffix('*').is_some_and(|prefix| prefix.ends_with('.') && event_type.starts_with(prefix))
        })
    }
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
            Scheme::Stripe | Scheme::Twilio => {
                if self.secrets.iter().any(|s| s.is_empty()) {
                    return Err(format!("intake provider {name:?}: empty secret"));
                }
            }
        }
        if !self.routes.is_empty() {
            let tenant =
                self.tenant.as_deref().ok_or_else(|| format!("intake provider {name:?}: routes need a tenant"))?;
            fleet_jobs::tenant::validate_tenant(tenant)
                .map_err(|e| format!("intake provider {name:?}: tenant: {e}"))?;
            let public = fleet_jobs::catalogue::public_kinds(false);
            for (i, r) in self.routes.iter().enumerate() {
                let at = format!("intake provider {name:?}, route {i}");
                if r.events.is_empty() || r.events.iter().any(|e| e.is_empty()) {
                    return Err(format!("{at}: events must name at least one event type (or \"*\")"));
                }
                match (&r.publish, &r.enqueue) {
                    (Some(_), None) => {}
                    (None, Some(kind)) if public.contains(&kind.as_str()) => {}
                    (None, Some(kind)) => {
                        return Err(format!("{at}: {kind:?} is not a public kind (one of {})", public.join(", ")));
                    }
                    _ => return Err(format!("{at}: give exactly one of publish or enqueue")),
                }
            }
        }
        if self.scheme == Scheme::Twilio {
            let url = self.public_url.as_deref().unwrap_or_default();
            let parsed = url::Url::parse(url).map_err(|_| {
                format!("intake provider {name:?}: twilio needs public_url, the https:// origin Twilio calls")
            })?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() || parsed.query().is_some() {
                return Err(format!("intake provider {name:?}: public_url must be an http(s) origin without a query"));
            }
        }
        Ok(())
    }

    /// Verifies a call to `uri` (path and query as received); returns the sender's
    /// delivery id or why it is refused.
    fn check(&self, headers: &HeaderMap, uri: &str, body: &[u8], now: i64) -> Result<String, &'static str> {
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
            Scheme::Stripe => {
                stripe_check(&self.secrets, h("stripe-signature").ok_or("headers")?, body, now)?;
                Ok(json_id(body).unwrap_or_else(|| hex::encode(Sha256::digest(body))))
            }
            Scheme::Twilio => {
                let base = self.public_url.as_deref().unwrap_or_default();
                let form = h("content-type")
                    .is_some_and(|c| c.trim().to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"));
                let call = TwilioCall {
                    base,
                    path: uri,
                    body,
                    form,
                    signature: h("x-twilio-signature").ok_or("headers")?,
                    settings: h("x-twilio-webhooks-signature-settings"),
                };
                twilio_check(&self.secrets, &call)?;
                Ok(match h("i-twilio-idempotency-token").filter(|t| !t.is_empty()) {
                    Some(token) => token.to_owned(),
                    None => {
                        let mut d = Sha256::new();
                        d.update(uri.as_bytes());
                        d.update(b"\n");
                        d.update(body);
                        hex::encode(d.finalize())
                    }
                })
            }
        }
    }
}

/// The call as JSON: the body itself when it is JSON, a form body as an object of its
/// fields (the last value of a repeated field), else a JSON string of the text.
fn event_json(body: &[u8]) -> serde_json::Value {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        return v;
    }
    let text = String::from_utf8_lossy(body);
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic()) && text.contains('=') {
        let fields: serde_json::Map<String, serde_json::Value> = url::form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), serde_json::Value::String(v.into_owned())))
            .collect();
        return serde_json::Value::Object(fields);
    }
    serde_json::Value::String(text.into_owned())
}

impl IntakeProvider {
    /// The jobs a verified call leads to under this provider's routes.
    fn routes_for(&self, provider: &str, body: &[u8]) -> Vec<IntakeRoute> {
        let (Some(tenant), false) = (&self.tenant, self.routes.is_empty()) else {
            return Vec::new();
        };
        let event = event_json(body);
        let event_type = match self.event_type.as_deref() {
            Some(pointer) if pointer.starts_with('/') => event.pointer(pointer),
            Some(field) => event.get(field),
            None => None,
        }
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
        // A JSON body is passed on byte for byte; anything else as its JSON form.
        let payload = match std::str::from_utf8(body) {
            Ok(text) if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => text.to_owned(),
            _ => event.to_string(),
        };
        let mut out = Vec::new();
        for r in self.routes.iter().filter(|r| r.takes(&event_type)) {
            let (kind, args) = match (&r.publish, &r.enqueue) {
                (Some(as_type), _) => {
                    let as_type = if as_type.is_empty() { format!("{provider}.{event_type}") } else { as_type.clone() };
                    let as_type = serde_json::Value::String(as_type);
                    ("webhook.publish".to_owned(), format!(r#"{{"event_type":{as_type},"payload":{payload}}}"#))
                }
                (None, Some(kind)) => (kind.clone(), payload.clone()),
                (None, None) => continue,
            };
            out.push(IntakeRoute { tenant: tenant.clone(), kind, queue: r.queue.clone(), args });
        }
        out
    }
}

/// The `id` field of a JSON object body (Stripe's event id), if there is one.
fn json_id(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct WithId {
        id: String,
    }
    serde_json::from_slice::<WithId>(body).ok().map(|w| w.id).filter(|id| !id.is_empty() && id.len() <= 255)
}

/// Checks a `Stripe-Signature` header: one `t`, any number of `v1` (several while a secret
/// rolls; other schemes such as `v0` are ignored, as Stripe's libraries do).
fn stripe_check(secrets: &[String], header: &str, body: &[u8], now: i64) -> Result<(), &'static str> {
    let mut t: Option<&str> = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) if t.is_none() => t = Some(v),
            Some(("v1", v)) => {
                if let Ok(bytes) = hex::decode(v) {
                    sigs.push(bytes);
                }
            }
            _ => {}
        }
    }
    let t = t.filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())).ok_or("headers")?;
    let ts: i64 = t.parse().map_err(|_| "headers")?;
    if sigs.is_empty() {
        return Err("headers");
    }
    if (now - ts).abs() > TOLERANCE_SECS {
        return Err("stale");
    }
    let matched = secrets.iter().any(|secret| {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(t.as_bytes());
        mac.update(b".");
        mac.update(body);
        let expected = mac.finalize().into_bytes();
        // Every candidate is compared in constant time; `any` over the list only says
        // how many v1 values there were, which the sender chose.
        sigs.iter().any(|given| bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], given.as_slice())))
    });
    if matched { Ok(()) } else { Err("signature") }
}

/// What a Twilio signature covers.
struct TwilioCall<'a> {
    /// The configured public origin (`public_url`).
    base: &'a str,
    /// Path and query as received, signed byte for byte after the origin.
    path: &'a str,
    body: &'a [u8],
    /// The body is `application/x-www-form-urlencoded` parameters.
    form: bool,
    /// `X-Twilio-Signature`.
    signature: &'a str,
    /// `X-Twilio-Webhooks-Signature-Settings`, naming the algorithm for shared-key signing.
    settings: Option<&'a str>,
}

/// Checks an `X-Twilio-Signature`. Twilio has signed URLs both with and without the
/// default port depending on the product, so both forms are tried, as its own libraries do.
fn twilio_check(secrets: &[String], call: &TwilioCall<'_>) -> Result<(), &'static str> {
    let given = base64::engine::general_purpose::STANDARD.decode(call.signature.trim()).map_err(|_| "signature")?;
    let sha256 = match call.settings.and_then(|s| {
        s.split(',').filter_map(|p| p.split_once('=')).find(|(k, _)| k.trim() == "algorithm").map(|(_, v)| v.trim())
    }) {
        None | Some("") => false,
        Some(a) if a.eq_ignore_ascii_case("HMAC_SHA1") => false,
        Some(a) if a.eq_ignore_ascii_case("HMAC_SHA256") => true,
        Some(_) => return Err("headers"),
    };
    let query = call.path.split_once('?').map_or("", |(_, q)| q);
    // A JSON (or other non-form) body is signed through the URL's bodySHA256 alone.
    let body_hash =
        url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "bodySHA256").map(|(_, v)| v.into_owned());
    let mut params: Vec<(String, String)> = Vec::new();
    match body_hash {
        Some(expected) => {
            let actual = hex::encode(Sha256::digest(call.body));
            if !bool::from(subtle::ConstantTimeEq::ct_eq(actual.as_bytes(), expected.to_ascii_lowercase().as_bytes())) {
                return Err("signature");
            }
        }
        None if call.form => {
            params = url::form_urlencoded::parse(call.body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
            // Sorted by name, then by value; a repeated identical pair counts once.
            params.sort();
            params.dedup();
        }
        None if call.body.is_empty() => {}
        None => return Err("headers"),
    }
    let mut text = String::new();
    for (k, v) in &params {
        text.push_str(k);
        text.push_str(v);
    }
    let origin = url::Url::parse(call.base).map_err(|_| "headers")?;
    let prefix = call.base.trim_end_matches('/');
    let prefix = &prefix[prefix.find("://").map_or(0, |i| i + 3)..];
    let prefix_path = prefix.find('/').map_or("", |i| &prefix[i..]);
    let (with_port, without_port) = origin_forms(&origin);
    let matched = secrets.iter().any(|secret| {
        [&with_port, &without_port].iter().any(|o| {
            let signed = [o.as_str(), prefix_path, call.path, text.as_str()];
            if sha256 {
                let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
                signed.iter().for_each(|part| mac.update(part.as_bytes()));
                mac.verify_slice(&given).is_ok()
            } else {
                let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("any key length");
                signed.iter().for_each(|part| mac.update(part.as_bytes()));
                mac.verify_slice(&given).is_ok()
            }
        })
    });
    if matched { Ok(()) } else { Err("signature") }
}

/// `scheme://host:port` and `scheme://host` for an origin (the default port spelled out
/// in the first when the URL has none).
fn origin_forms(url: &url::Url) -> (String, String) {
    let host = match url.host() {
        Some(url::Host::Ipv6(a)) => format!("[{a}]"),
        Some(h) => h.to_string(),
        None => String::new(),
    };
    let without = format!("{}://{host}", url.scheme());
    let with = match url.port_or_known_default() {
        Some(p) => format!("{without}:{p}"),
        None => without.clone(),
    };
    (with, without)
}

/// Receive a call from a configured provider.
#[utoipa::path(post, path = "/v1/intake/{provider}",
    request_body(content = String, content_type = "application/json", description = "the provider's payload, verified byte for byte"),
    responses((status = 202, description = "verified and queued"), (status = 401, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn receive(
    State(state): State<ApiState>,
    Path(provider): Path<String>,
    uri: axum::http::Uri,
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
    let path = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    let id = p.check(&headers, path, &body, now).map_err(refuse)?;
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
    // Built in: an SMS provider's delivery status moves the notification's send record
    // (of the tenant this provider's config names) forward. The event is recorded as
    // every other call; a failure here is logged, the record catches up on a later status.
    if p.scheme == Scheme::Twilio
        && let Some(tenant) = &p.tenant
    {
        let form: std::collections::HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
        if let (Some(sid), Some(status)) = (form.get("MessageSid"), form.get("MessageStatus"))
            && let Err(e) = fleet_notify::store::apply_sms_status(
                &state.db,
                tenant,
                sid,
                status,
                form.get("ErrorCode").map(String::as_str),
            )
            .await
        {
            tracing::warn!(%provider, error = %e, "could not apply an SMS status to its notification");
        }
    }
    let args = WebhookIntake {
        provider: provider.clone(),
        id: id.clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
        received_at: fleet_jobs::envelope::now_ms(),
        routes: p.routes_for(&provider, &body),
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

#[cfg(test)]
mod tests {
    //! Vectors from Twilio's published example and from the providers' own libraries
    //! (twilio 9.13.0 `RequestValidator`, stripe 16.1.0 `WebhookSignature`), computed
    //! outside Fleet.
    use super::*;

    fn provider(toml_text: &str) -> IntakeProvider {
        let p: IntakeProvider = toml::from_str(toml_text).unwrap();
        p.validate("test").unwrap();
        p
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    const FORM: &str = "application/x-www-form-urlencoded";

    #[test]
    fn twilios_published_example_verifies() {
        let p = provider("scheme = \"twilio\"\nsecrets = [\"12345\"]\npublic_url = \"https://mycompany.com\"");
        let body = "CallSid=CA1234567890ABCDE&Caller=%2B12349013030&Digits=1234&From=%2B12349013030&To=%2B18005551212";
        let h = headers(&[("content-type", FORM), ("x-twilio-signature", "0/KCTR6DLpKmkAf8muzZqo1nDgQ=")]);
        assert!(p.check(&h, "/myapp.php?foo=1&bar=2", body.as_bytes(), 0).is_ok());
        // Parameters in another order are the same call; a changed value is not.
        let shuffled =
            "To=%2B18005551212&Digits=1234&CallSid=CA1234567890ABCDE&From=%2B12349013030&Caller=%2B12349013030";
        assert!(p.check(&h, "/myapp.php?foo=1&bar=2", shuffled.as_bytes(), 0).is_ok());
        assert_eq!(
            p.check(&h, "/myapp.php?foo=1&bar=2", body.replace("1234&", "9999&").as_bytes(), 0),
            Err("signature")
        );
        assert_eq!(p.check(&h, "/myapp.php?foo=1&bar=3", body.as_bytes(), 0), Err("signature"));
    }

    #[test]
    fn a_twilio_status_callback_verifies_with_and_without_the_port_and_by_body_hash() {
        let p = provider("scheme = \"twilio\"\nsecrets = [\"12345\"]\npublic_url = \"https://fleet.example.com/\"");
        let body = "MessageSid=SM0123456789abcdef0123456789abcdef&MessageStatus=delivered&To=%2B447700900123&From=%2B447700900999&Body=Caf%C3%A9+at+3+%E2%80%94+see+you+%E2%9C%93";
        for sig in ["UMYNvNo6L/qohtBWOU26dFeDXWQ=", "Zz0qD2BOFNzaxNX2WMv03ka7yq8="] {
            let h = headers(&[("content-type", FORM), ("x-twilio-signature", sig)]);
            assert!(p.check(&h, "/v1/intake/twilio", body.as_bytes(), 0).is_ok(), "{sig}");
        }
        let h = headers(&[
            ("content-type", FORM),
            ("x-twilio-signature", "CxQx3NpxU8V7bx9Gd3KPsWZCysHB8irkCvsiegvXJcg="),
            ("x-twilio-webhooks-signature-settings", "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"),
        ]);
        assert!(p.check(&h, "/v1/intake/twilio", body.as_bytes(), 0).is_ok(), "HMAC-SHA256 shared-key signing");

        let json = r#"{"MessageSid":"SM1","MessageStatus":"sent"}"#;
        let path = "/v1/intake/twilio?bodySHA256=fc1a85c3da8e0304d7195ae2bea3fa391521a8060142a85dbfaf6a9db8025570";
        let h =
            headers(&[("content-type", "application/json"), ("x-twilio-signature", "54E2g0kKflMN1TiJ4jxsnaqNUj4=")]);
        assert!(p.check(&h, path, json.as_bytes(), 0).is_ok());
        assert_eq!(p.check(&h, path, json.replace("sent", "failed").as_bytes(), 0), Err("signature"));
        assert_eq!(p.check(&h, "/v1/intake/twilio", json.as_bytes(), 0), Err("headers"), "JSON without bodySHA256");
        let h = headers(&[("content-type", FORM), ("x-twilio-signature", "UMYNvNo6L/qohtBWOU26dFeDXWQ=")]);
        let wrong = provider("scheme = \"twilio\"\nsecrets = [\"54321\"]\npublic_url = \"https://fleet.example.com\"");
        assert_eq!(wrong.check(&h, "/v1/intake/twilio", body.as_bytes(), 0), Err("signature"));
        let elsewhere =
            provider("scheme = \"twilio\"\nsecrets = [\"12345\"]\npublic_url = \"https://evil.example.com\"");
        assert_eq!(elsewhere.check(&h, "/v1/intake/twilio", body.as_bytes(), 0), Err("signature"));
    }

    #[test]
    fn stripes_signature_verifies_within_the_tolerance_only() {
        let p = provider("scheme = \"stripe\"\nsecrets = [\"whsec_old\", \"whsec_test_5b8f0c1d2e3f\"]");
        let body = r#"{"id":"evt_1PqZ","object":"event","type":"invoice.paid","data":{"object":{"id":"in_1","amount_paid":125000}}}"#;
        let t = 1_764_892_800;
        let sig = "9f5b33bcf386c3d1881dd4f06db7e82f493320f4cd9c154d16f9cfcbd56c23f9";
        let header = format!("t={t},v1=00ff,v1={sig},v0=deadbeef");
        let h = headers(&[("stripe-signature", &header)]);
        assert_eq!(p.check(&h, "/v1/intake/stripe", body.as_bytes(), t + 299), Ok("evt_1PqZ".to_owned()));
        assert_eq!(p.check(&h, "/v1/intake/stripe", body.as_bytes(), t + 301), Err("stale"));
        assert_eq!(p.check(&h, "/v1/intake/stripe", body.as_bytes(), t - 301), Err("stale"));
        assert_eq!(p.check(&h, "/v1/intake/stripe", body.replace("125000", "1").as_bytes(), t), Err("signature"));
        let later = format!("t={},v1={sig}", t + 1);
        assert_eq!(p.check(&headers(&[("stripe-signature", &later)]), "/", body.as_bytes(), t), Err("signature"));
        for bad in ["v1=abc", "t=,v1=00", "t=12x,v1=00", &format!("t={t}")] {
            assert_eq!(
                p.check(&headers(&[("stripe-signature", bad)]), "/", body.as_bytes(), t),
                Err("headers"),
                "{bad}"
            );
        }
        assert_eq!(p.check(&HeaderMap::new(), "/", body.as_bytes(), t), Err("headers"));
    }

    #[test]
    fn routes_take_their_event_types_for_the_configured_tenant_only() {
        let p = provider(
            r#"
            scheme = "twilio"
            secrets = ["12345"]
            public_url = "https://fleet.example.com"
            tenant = "studio-7"
            event_type = "MessageStatus"
            [[routes]]
            events = ["delivered", "failed"]
            publish = ""
            [[routes]]
            events = ["*"]
            publish = "sms.status"
            "#,
        );
        let form = b"MessageSid=SM1&MessageStatus=delivered&tenant=globex";
        let routes = p.routes_for("twilio", form);
        assert_eq!(routes.len(), 2);
        assert!(routes.iter().all(|r| r.tenant == "studio-7" && r.kind == "webhook.publish"));
        let args: serde_json::Value = serde_json::from_str(&routes[0].args).unwrap();
        assert_eq!(args["event_type"], "twilio.delivered");
        assert_eq!(args["payload"]["MessageSid"], "SM1");
        let sent = p.routes_for("twilio", b"MessageSid=SM1&MessageStatus=sent");
        assert_eq!(sent.len(), 1, "only the catch-all");

        let json = provider(
            r#"
            scheme = "stripe"
            secrets = ["whsec_x"]
            tenant = "studio-7"
            event_type = "/type"
            [[routes]]
            events = ["invoice.*"]
            enqueue = "image.analyze"
            queue = "images"
            "#,
        );
        let body = br#"{"type": "invoice.paid",  "id": "evt_1"}"#;
        let routes = json.routes_for("stripe", body);
        assert_eq!(routes.len(), 1);
        assert_eq!((routes[0].args.as_bytes(), routes[0].queue.as_deref()), (&body[..], Some("images")));
        assert!(
            json.routes_for("stripe", br#"{"type": "invoiced"}"#).is_empty(),
            "a prefix takes only its dotted children"
        );
    }

    #[test]
    fn routes_without_a_tenant_or_with_a_private_kind_are_refused_at_start() {
        let refused = |text: &str| toml::from_str::<IntakeProvider>(text).unwrap().validate("crm").unwrap_err();
        let base = "scheme = \"stripe\"\nsecrets = [\"whsec_x\"]\n";
        assert!(refused(&format!("{base}[[routes]]\nevents = [\"*\"]\npublish = \"\"")).contains("tenant"));
        let e = refused(&format!("{base}tenant = \"t\"\n[[routes]]\nevents = [\"*\"]\nenqueue = \"calendar.sync\""));
        assert!(e.contains("not a public kind"), "{e}");
        let e = refused(&format!("{base}tenant = \"t\"\n[[routes]]\nevents = [\"*\"]"));
        assert!(e.contains("exactly one"), "{e}");
        let e = refused(&format!("{base}tenant = \"bad name\"\n[[routes]]\nevents = [\"*\"]\npublish = \"\""));
        assert!(e.contains("tenant"), "{e}");
    }

    #[test]
    fn twilio_without_a_public_url_is_refused_at_start() {
        let p: IntakeProvider = toml::from_str("scheme = \"twilio\"\nsecrets = [\"12345\"]").unwrap();
        assert!(p.validate("sms").unwrap_err().contains("public_url"));
        let p: IntakeProvider =
            toml::from_str("scheme = \"twilio\"\nsecrets = [\"12345\"]\npublic_url = \"fleet.example.com\"").unwrap();
        assert!(p.validate("sms").is_err());
    }
}
