//! `/v1/endpoints` (subscriptions; `POST /v1/endpoints/{id}/enable` re-enables one
//! disabled by a 410 and replays what it was held from, see [`fleet_webhooks::replay`])
//! and `/v1/events` (accepted as a `webhook.publish` job,
//! which records the event and fans it out to every enabled endpoint of the tenant whose
//! event-type filter matches, one `webhook.deliver` job each).
//!
//! Each route is a thin call into [`fleet_webhooks::store`], which keeps the endpoint
//! limits, scopes every query by the caller's tenant and seals endpoint secrets before they
//! are stored ([`fleet_accounts::secrets`], bound to tenant, table and endpoint id):
//! without `FLEET_SECRETS_KEY` endpoints cannot be created or rotated (503
//! `not_configured`). URLs are shown whole only in the answer to
//! the creation; listings show them redacted ([`fleet_net::redact_url`]).

use super::ApiState;
use super::auth::{Caller, Role};
use super::error::ApiError;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use fleet_jobs::EnqueueOptions;
use fleet_jobs::catalogue::WebhookPublish;
use fleet_jobs::catalogue::webhook::message_id;
use fleet_webhooks::signing::Secret;
use fleet_webhooks::store;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

/// An endpoint to subscribe.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EndpointRequest {
    /// Where deliveries are POSTed (http or https).
    url: String,
    /// Event types to receive; empty or absent means all.
    #[serde(default)]
    event_types: Vec<String>,
    /// A `whsec_` secret; generated when absent.
    #[serde(default)]
    secret: Option<String>,
}

/// An endpoint (its secret is only shown when it is created).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EndpointView {
    id: String,
    url: String,
    event_types: Vec<String>,
    enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    disabled_reason: Option<String>,
    /// When it was last disabled (RFC 3339; kept after it is re-enabled).
    #[serde(skip_serializing_if = "Option::is_none")]
    disabled_at: Option<String>,
    /// Only in the answer to the creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

/// An event to publish.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventRequest {
    /// Event type, e.g. `portfolio.processed`.
    #[serde(rename = "type")]
    event_type: String,
    /// The payload: sent to subscribers byte for byte as received.
    #[schema(value_type = Object)]
    payload: Box<RawValue>,
}

/// An accepted event.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EventView {
    /// The message id (the `webhook-id` of its deliveries).
    id: String,
    /// The job that records and fans it out.
    job: String,
}

/// Subscribe an endpoint.
#[utoipa::path(post, path = "/v1/endpoints", request_body = EndpointRequest,
    responses((status = 201, body = EndpointView), (status = 401, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn create_endpoint(
    State(state): State<ApiState>,
    caller: Caller,
    Json(req): Json<EndpointRequest>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Enqueue)?;
    let url = reqwest_free_url_check(&req.url)?;
    let secret = match req.secret {
        Some(s) => {
            Secret::parse(&s).map_err(|e| ApiError::invalid(e.to_string()))?;
            s
        }
        None => Secret::generate(),
    };
    let id = store::create_endpoint(&state.db, state.secrets.as_ref(), &caller.tenant, &url, &req.event_types, &secret)
        .await?;
    let view = EndpointView {
        id,
        url,
        event_types: req.event_types,
        enabled: true,
        disabled_reason: None,
        disabled_at: None,
        secret: Some(secret),
    };
    Ok((StatusCode::CREATED, Json(view)))
}

/// The URL, checked: absolute http or https with a host. Addresses are checked by the
/// worker's SSRF guard at delivery time (DNS answers change).
fn reqwest_free_url_check(url: &str) -> Result<String, ApiError> {
    let ok = (url.starts_with("http://") || url.starts_with("https://")) && url.len() <= 2000;
    let host = url.split("://").nth(1).and_then(|r| r.split(['/', '?', '#']).next()).unwrap_or("");
    if !ok || host.is_empty() || host.contains('@') {
        return Err(ApiError::invalid("url must be an absolute http(s) URL with a host and no credentials"));
    }
    Ok(url.to_owned())
}

/// List the tenant's endpoints.
#[utoipa::path(get, path = "/v1/endpoints", responses((status = 200, body = Vec<EndpointView>), (status = 401, body = super::error::ErrorBody)))]
pub(crate) async fn list_endpoints(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<EndpointView>>, ApiError> {
    let endpoints = store::list_endpoints(&state.db, &caller.tenant).await?;
    Ok(Json(
        endpoints
            .into_iter()
            .map(|e| EndpointView {
                id: e.id,
                url: fleet_net::redact_url(&e.url),
                event_types: e.event_types,
                enabled: e.enabled,
                disabled_reason: e.disabled_reason,
                disabled_at: e.disabled_at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
                secret: None,
            })
            .collect(),
    ))
}

/// Remove an endpoint (its pending deliveries give up).
#[utoipa::path(delete, path = "/v1/endpoints/{id}", responses((status = 204), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn delete_endpoint(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Enqueue)?;
    store::delete_endpoint(&state.db, &caller.tenant, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new signing secret for an endpoint.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateRequest {
    /// The new `whsec_` secret; generated when absent.
    #[serde(default)]
    secret: Option<String>,
    /// How long the replaced secret keeps signing beside the new one, in seconds
    /// (0 to 604800; default 86400), so receivers can switch without missing a delivery.
    #[serde(default)]
    previous_valid_secs: Option<u32>,
}

/// The result of a rotation.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RotatedView {
    /// Endpoint id.
    id: String,
    /// The new secret (shown only here).
    secret: String,
    /// Until when the replaced secret also signs (RFC 3339).
    previous_valid_until: String,
}

/// Longest grace period of a replaced secret.
const MAX_PREVIOUS_VALID_SECS: u32 = 7 * 24 * 3600;

/// Rotate an endpoint's signing secret: the new one signs from now on, and during the
/// grace period every delivery also carries a signature with the replaced one (Standard
/// Webhooks lists several `v1,` signatures). An earlier replaced secret stops signing.
#[utoipa::path(post, path = "/v1/endpoints/{id}/secrets", request_body = RotateRequest,
    responses((status = 200, body = RotatedView), (status = 401, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn rotate_secret(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Option<Json<RotateRequest>>,
) -> Result<Json<RotatedView>, ApiError> {
    caller.require(Role::Enqueue)?;
    let req = body.map(|Json(r)| r).unwrap_or_default();
    let grace = req.previous_valid_secs.unwrap_or(86_400);
    if grace > MAX_PREVIOUS_VALID_SECS {
        return Err(ApiError::invalid("previous_valid_secs must be at most 604800 (7 days)"));
    }
    let secret = match req.secret {
        Some(s) => {
            Secret::parse(&s).map_err(|e| ApiError::invalid(e.to_string()))?;
            s
        }
        None => Secret::generate(),
    };
    let until = store::rotate_secret(&state.db, state.secrets.as_ref(), &caller.tenant, &id, &secret, grace).await?;
    Ok(Json(RotatedView { id, secret, previous_valid_until: until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true) }))
}

/// What to replay when an endpoint is re-enabled.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnableRequest {
    /// Replay what the endpoint did not get since this time (RFC 3339); by default since
    /// it was last disabled. The `next_since` of an answer that reached the cap goes here.
    #[serde(default)]
    replay_since: Option<String>,
}

/// A re-enabled endpoint and what was replayed to it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EnabledView {
    /// Endpoint id.
    id: String,
    /// Always true: deliveries go to it again.
    enabled: bool,
    /// Where the held messages were looked for from (RFC 3339); absent when the endpoint
    /// was never disabled and no time was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    replay_since: Option<String>,
    /// Held messages found (at most 1000 per call).
    held: usize,
    /// Deliveries enqueued by this call; the rest of `held` were already queued (an
    /// earlier call) and are not sent twice.
    enqueued: usize,
    /// Present when the cap of 1000 was reached: call again with it as `replay_since`.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_since: Option<String>,
}

/// Re-enable an endpoint (disabled by a 410 Gone from it) and replay what it was held
/// from: one delivery per message published since `replay_since` (default: since it was
/// disabled) that it did not get, and per delivery that ended with its 410 or was skipped
/// while it was disabled; oldest first, at most 1000 per call. Idempotent: calling it
/// again enqueues nothing already queued or delivered.
#[utoipa::path(post, path = "/v1/endpoints/{id}/enable", request_body = EnableRequest,
    responses((status = 200, body = EnabledView), (status = 401, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody), (status = 429, body = super::error::ErrorBody)))]
pub(crate) async fn enable_endpoint(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Option<Json<EnableRequest>>,
) -> Result<Json<EnabledView>, ApiError> {
    caller.require(Role::Enqueue)?;
    let req = body.map(|Json(r)| r).unwrap_or_default();
    let since = match req.replay_since.as_deref() {
        Some(t) => Some(
            chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|_| ApiError::invalid("replay_since must be an RFC 3339 time, e.g. 2026-12-05T10:00:00Z"))?
                .with_timezone(&chrono::Utc),
        ),
        None => None,
    };
    let replayed = fleet_webhooks::replay::enable(&state.db, &state.client, &caller.tenant, &id, since).await.map_err(
        |e| match e {
            fleet_webhooks::replay::ReplayError::Store(e) => ApiError::from(e),
            fleet_webhooks::replay::ReplayError::Enqueue(e) => ApiError::from(e),
        },
    )?;
    let rfc3339 = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    Ok(Json(EnabledView {
        id,
        enabled: true,
        replay_since: replayed.since.map(rfc3339),
        held: replayed.held,
        enqueued: replayed.enqueued,
        next_since: replayed.next_since.map(rfc3339),
    }))
}

/// Publish an event to the tenant's subscribed endpoints. The event is accepted into
/// the queue at once (202); a worker records it and enqueues one delivery per matching
/// endpoint.
#[utoipa::path(post, path = "/v1/events", request_body = EventRequest,
    responses((status = 202, body = EventView), (status = 401, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn publish_event(
    State(state): State<ApiState>,
    caller: Caller,
    Json(req): Json<EventRequest>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Enqueue)?;
    if req.event_type.is_empty() || req.event_type.len() > 200 {
        return Err(ApiError::invalid("type must be 1 to 200 characters"));
    }
    let job = fleet_jobs::JobId::new();
    let args = WebhookPublish { event_type: req.event_type, payload: req.payload };
    let opts = EnqueueOptions { id: Some(job.clone()), tenant: Some(caller.tenant.clone()), ..Default::default() };
    state.client.enqueue_with(&args, opts).await?;
    metrics::counter!("fleet_webhook_events_total").increment(1);
    Ok((StatusCode::ACCEPTED, Json(EventView { id: message_id(job.as_str()), job: job.0 })))
}
