//! `POST /v1/push/google` and `POST /v1/push/graph`: change notifications from the push
//! channels Fleet keeps for Google Calendar and Microsoft Graph sources (made and renewed by
//! `calendar.sync`; see `fleet_calendar::store::channels`).
//!
//! A notification carries no data, only "this calendar changed". One whose channel id and
//! token (Google: `X-Goog-Channel-ID` + `X-Goog-Channel-Token`, and `X-Goog-Resource-ID`;
//! Graph: `subscriptionId` + `clientState`) match a live stored channel — the token's hash
//! compared in constant time — leads to a debounced `calendar.sync` of the channel's source,
//! for the tenant stored with the channel: a burst of notifications becomes one sync, started
//! [`DEBOUNCE`] after the last of them and never later than [`MAX_WAIT`] after the first.
//!
//! Refusals enqueue nothing and say nothing about the channel: an unknown (or expired)
//! channel is a 404, a wrong token a 401, both counted in
//! `fleet_calendar_push_rejected_total{provider, reason}`. Google's first message on a new
//! channel (`X-Goog-Resource-State: sync`) is acknowledged and triggers nothing; Graph's
//! validation request (`?validationToken=`) is answered with the token as `text/plain`.

use super::ApiState;
use super::error::ApiError;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fleet_calendar::store::channels::{self, Refused, Verified};
use fleet_jobs::EnqueueOptions;
use fleet_jobs::catalogue::CalendarSync;
use fleet_jobs::dedup::{Dedup, DedupMode};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::time::Duration;

/// Quiet time after the last notification of a burst before its sync starts.
pub const DEBOUNCE: Duration = Duration::from_secs(1);
/// Longest a steady stream of notifications holds a sync back.
pub const MAX_WAIT: Duration = Duration::from_secs(5);
/// Longest Graph validation token echoed back (Graph's are far shorter).
const MAX_VALIDATION_TOKEN: usize = 2048;
/// Most notifications read from one Graph delivery.
const MAX_GRAPH_ITEMS: usize = 1000;

/// The dedup key of the push-triggered syncs of a source (Fleet's own namespace: tenants'
/// keys are stored under `tenant:<name>:`).
pub fn sync_key(source_id: &str) -> String {
    format!("calendar:push:{source_id}")
}

/// Enqueues the debounced sync of a verified channel's source.
async fn enqueue_sync(state: &ApiState, verified: &Verified) -> Result<(), ApiError> {
    let opts = EnqueueOptions {
        tenant: Some(verified.tenant.clone()),
        dedup: Some(Dedup {
            key: sync_key(&verified.source_id),
            mode: DedupMode::Debounce { delay: DEBOUNCE, max_wait: MAX_WAIT },
        }),
        ..Default::default()
    };
    state.client.enqueue_with(&CalendarSync { source_id: verified.source_id.clone() }, opts).await?;
    Ok(())
}

fn refused(provider: &'static str, why: Refused) -> ApiError {
    metrics::counter!("fleet_calendar_push_rejected_total", "provider" => provider, "reason" => why.reason())
        .increment(1);
    tracing::info!(provider, reason = why.reason(), "calendar push notification refused");
    match why {
        Refused::Unknown => ApiError::not_found("no such channel"),
        Refused::Mismatch => ApiError::unauthorized("invalid channel token"),
    }
}

fn accepted(provider: &'static str, n: usize) {
    metrics::counter!("fleet_calendar_push_notifications_total", "provider" => provider).increment(n as u64);
}

async fn verify(
    state: &ApiState,
    provider: &'static str,
    id: &str,
    token: &str,
    resource: Option<&str>,
) -> Result<Result<Verified, Refused>, ApiError> {
    // Ids and tokens Fleet makes are short; anything long is not one of them.
    if id.is_empty() || id.len() > 512 || token.len() > 512 {
        return Ok(Err(if id.is_empty() { Refused::Unknown } else { Refused::Mismatch }));
    }
    channels::verify(&state.db, provider, id, token, resource)
        .await
        .map_err(|e| ApiError::unavailable("checking a push channel", e))
}

/// A Google Calendar watch notification.
#[utoipa::path(post, path = "/v1/push/google", security(()),
    params(("X-Goog-Channel-ID" = String, Header, description = "the channel id"),
           ("X-Goog-Channel-Token" = String, Header, description = "the channel's token"),
           ("X-Goog-Resource-ID" = String, Header, description = "the watched resource"),
           ("X-Goog-Resource-State" = String, Header, description = "sync, exists or not_exists")),
    responses((status = 200, description = "verified; a sync of the source follows (none for `sync`)"),
        (status = 401, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn google_notification(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    state.limits.check_provider("push:google")?;
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let verified = match verify(
        &state,
        "google",
        h("x-goog-channel-id"),
        h("x-goog-channel-token"),
        Some(h("x-goog-resource-id")),
    )
    .await?
    {
        Ok(v) => v,
        Err(why) => return Err(refused("google", why)),
    };
    match h("x-goog-resource-state") {
        // The channel's first message: nothing changed yet.
        "sync" => {}
        _ => {
            enqueue_sync(&state, &verified).await?;
            accepted("google", 1);
        }
    }
    Ok(StatusCode::OK)
}

/// Graph's validation request.
#[derive(Debug, Deserialize)]
pub(crate) struct GraphQuery {
    #[serde(rename = "validationToken")]
    validation_token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct GraphDelivery {
    #[serde(default)]
    value: Vec<GraphNotification>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GraphNotification {
    #[serde(default)]
    subscription_id: String,
    #[serde(default)]
    client_state: Option<String>,
}

/// Microsoft Graph change notifications, and Graph's validation of the URL.
#[utoipa::path(post, path = "/v1/push/graph", security(()),
    params(("validationToken" = Option<String>, Query, description = "Graph's validation request: echoed as text/plain")),
    request_body(content = String, content_type = "application/json", description = "`{\"value\": [{\"subscriptionId\", \"clientState\", ...}]}`"),
    responses((status = 200, description = "the validation token, as text/plain"),
        (status = 202, description = "verified; a sync of each notified source follows"),
        (status = 400, body = super::error::ErrorBody), (status = 401, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn graph_notification(
    State(state): State<ApiState>,
    Query(query): Query<GraphQuery>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    state.limits.check_provider("push:graph")?;
    if let Some(token) = query.validation_token {
        // Graph checks the URL before a subscription is made: the token back, as plain text.
        if token.is_empty() || token.len() > MAX_VALIDATION_TOKEN {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "bad validation token"));
        }
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], token).into_response());
    }
    let delivery: GraphDelivery = serde_json::from_slice(&body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "not a Graph notification"))?;
    let mut sources: BTreeSet<(String, String)> = BTreeSet::new();
    let mut worst: Option<Refused> = None;
    for n in delivery.value.iter().take(MAX_GRAPH_ITEMS) {
        let token = n.client_state.as_deref().unwrap_or_default();
        match verify(&state, "graph", &n.subscription_id, token, None).await? {
            Ok(v) => {
                sources.insert((v.tenant, v.source_id));
            }
            Err(why) => {
                metrics::counter!("fleet_calendar_push_rejected_total", "provider" => "graph", "reason" => why.reason())
                    .increment(1);
                worst = Some(match (worst, why) {
                    (Some(Refused::Mismatch), _) | (_, Refused::Mismatch) => Refused::Mismatch,
                    _ => Refused::Unknown,
                });
            }
        }
    }
    if sources.is_empty() {
        // Nothing in the delivery was ours: refused as a whole (an empty one as unknown).
        let why = worst.unwrap_or(Refused::Unknown);
        tracing::info!(provider = "graph", reason = why.reason(), "calendar push notification refused");
        return Err(match why {
            Refused::Unknown => ApiError::not_found("no such subscription"),
            Refused::Mismatch => ApiError::unauthorized("invalid client state"),
        });
    }
    // Several notifications of one source in a delivery are one sync; items that were not
    // ours were counted above and are dropped (refusing the delivery would have Graph
    // deliver the genuine ones again).
    for (tenant, source_id) in &sources {
        enqueue_sync(&state, &Verified { source_id: source_id.clone(), tenant: tenant.clone() }).await?;
    }
    accepted("graph", sources.len());
    Ok(StatusCode::ACCEPTED.into_response())
}
