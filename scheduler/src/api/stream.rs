//! `GET /v1/stream`: the caller's tenant's live job events as server-sent events.
//!
//! Each event of a job (`job.succeeded`, `job.retrying`, `job.dead`, `job.expired`, and
//! `job.progress` while it runs, its `data` the progress reported: `percent`, `done`,
//! `total`, `message`, `at`; a few a second per job at most, the last one always sent)
//! carries its stream id as the SSE `id`, so a client that reconnects with
//! `Last-Event-ID` (browsers do it by themselves) resumes exactly after the last event
//! it saw, as long as the tenant's stream still holds it (the newest 10,000 are kept).
//! After the job events of one read, every batch they touched gets one
//! `batch.progress` event with its counters (`finished` once none is pending), so an
//! app can show "analysing 120 / 300" from one connection.
//!
//! A tenant holds at most `api.streams_per_tenant` streams (this one and batch event
//! streams) open at once per scheduler process; one more gets 429 with `Retry-After`.
//!
//! **Browsers.** `EventSource` cannot send an `Authorization` header, and an API key must
//! never reach a browser. The app's server exchanges its key for a stream token
//! (`POST /v1/stream/tokens`): short-lived (15 min by default, 24 h at most), bound to
//! the key's tenant and optionally narrowed to batches and event types, sealed with
//! `FLEET_SECRETS_KEY` (AES-256-GCM, so it cannot be read or altered). The browser opens
//! `/v1/stream?token=...`. A token is accepted by this route only: it enqueues nothing
//! and reads nothing else. Token streams answer `Access-Control-Allow-Origin: *` (no
//! cookies are involved; the token is the credential), so a page on the app's own origin
//! can open them.

use super::ApiState;
use super::auth::Caller;
use super::error::ApiError;
use axum::Json;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use fleet_jobs::events::{self, TenantEvent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::convert::Infallible;
use std::time::Duration;

/// How often an idle stream looks for new events.
const POLL: Duration = Duration::from_millis(200);
/// Most events read per look.
const READ_COUNT: usize = 200;

/// Where to start.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct StreamQuery {
    /// Resume after this event id (like `Last-Event-ID`); `0` replays every kept event.
    /// Without either, the stream starts with the next event.
    after: Option<String>,
    /// A stream token (`POST /v1/stream/tokens`) instead of an `Authorization` header.
    #[allow(dead_code)]
    token: Option<String>,
}

/// Longest and default life of a stream token.
const MAX_TOKEN_SECS: u64 = 24 * 3600;
const DEFAULT_TOKEN_SECS: u64 = 15 * 60;
/// Most batches and event types one token may name.
const MAX_TOPICS: usize = 100;
/// Associated data of sealed stream tokens (a token opens as nothing else).
const TOKEN_AAD: &str = "fleet stream token v1";

/// What a stream token may see.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamTokenRequest {
    /// Seconds the token stays valid (default 900, at most 86,400). A stream open when it
    /// expires goes on; reconnecting needs a new token.
    #[serde(default)]
    ttl_secs: Option<u64>,
    /// Only events of these batches (job events of their jobs and their `batch.progress`).
    #[serde(default)]
    batches: Vec<String>,
    /// Only these event types: exact (`job.succeeded`) or a prefix ending in `.*`
    /// (`calendar.*`).
    #[serde(default)]
    types: Vec<String>,
}

/// A stream token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct StreamToken {
    /// Opaque; pass it as `/v1/stream?token=`.
    token: String,
    /// When it stops opening streams (ms since the epoch).
    expires_at: u64,
}

/// The sealed content of a token.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// Tenant.
    t: String,
    /// Expiry, ms since the epoch.
    e: u64,
    /// Batches (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    b: Vec<String>,
    /// Event types (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    y: Vec<String>,
}

impl Claims {
    fn admits(&self, e: &TenantEvent) -> bool {
        let batch_ok = self.b.is_empty() || e.batch.as_ref().is_some_and(|b| self.b.contains(b));
        batch_ok && self.type_ok(&e.event_type)
    }

    fn type_ok(&self, event_type: &str) -> bool {
        self.y.is_empty()
            || self.y.iter().any(|y| {
                y == event_type || y.strip_suffix('*').is_some_and(|p| p.ends_with('.') && event_type.starts_with(p))
            })
    }
}

/// Exchange the caller's API key for a short-lived token a browser's `EventSource` can
/// open `/v1/stream` with.
#[utoipa::path(post, path = "/v1/stream/tokens", request_body = StreamTokenRequest,
    responses((status = 201, body = StreamToken), (status = 401, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody),
        (status = 501, description = "no FLEET_SECRETS_KEY to seal tokens with", body = super::error::ErrorBody)))]
pub(crate) async fn create_token(
    State(state): State<ApiState>,
    caller: Caller,
    Json(req): Json<StreamTokenRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let Some(seal) = &state.secrets else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_configured",
            "stream tokens are sealed with FLEET_SECRETS_KEY, which this scheduler does not have",
        ));
    };
    let ttl = req.ttl_secs.unwrap_or(DEFAULT_TOKEN_SECS);
    if !(1..=MAX_TOKEN_SECS).contains(&ttl) {
        return Err(ApiError::invalid(format!("ttl_secs must be 1 to {MAX_TOKEN_SECS}")));
    }
    if req.batches.len() > MAX_TOPICS || req.types.len() > MAX_TOPICS {
        return Err(ApiError::invalid(format!("at most {MAX_TOPICS} batches and {MAX_TOPICS} types")));
    }
    if req.batches.iter().chain(&req.types).any(|t| t.is_empty() || t.len() > 200) {
        return Err(ApiError::invalid("batch ids and event types must be 1 to 200 characters"));
    }
    let expires_at = fleet_jobs::envelope::now_ms() + ttl * 1000;
    let claims = Claims { t: caller.tenant, e: expires_at, b: req.batches, y: req.types };
    let sealed = seal
        .seal(TOKEN_AAD, &serde_json::to_string(&claims).unwrap_or_default())
        .map_err(|e| ApiError::internal("sealing a stream token", e))?;
    let token = format!("fst_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed));
    Ok((StatusCode::CREATED, Json(StreamToken { token, expires_at })))
}

/// Who opens a stream: an API key's tenant (everything), or a token's (what it names).
pub(crate) struct StreamCaller {
    tenant: String,
    claims: Option<Claims>,
}

impl FromRequestParts<ApiState> for StreamCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Self::Rejection> {
        let token = parts.uri.query().and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned())
        });
        let Some(token) = token else {
            let caller = Caller::from_request_parts(parts, state).await?;
            return Ok(StreamCaller { tenant: caller.tenant, claims: None });
        };
        let refused = || ApiError::unauthorized("invalid or expired stream token");
        let seal = state.secrets.as_ref().ok_or_else(refused)?;
        let sealed = token
            .strip_prefix("fst_")
            .and_then(|b| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(refused)?;
        let claims: Claims =
            seal.open(TOKEN_AAD, &sealed).ok().and_then(|text| serde_json::from_str(&text).ok()).ok_or_else(refused)?;
        if claims.e <= fleet_jobs::envelope::now_ms() {
            return Err(refused());
        }
        Ok(StreamCaller { tenant: claims.t.clone(), claims: Some(claims) })
    }
}

/// The tenant's live job and batch events, as server-sent events.
#[utoipa::path(get, path = "/v1/stream", params(StreamQuery),
    responses((status = 200, description = "text/event-stream: `job.*` events (JSON: type, queue, id, kind, attempt, batch, at; `job.progress` also data: percent, done, total, message, at) and `batch.progress` (JSON: id, queue, total, succeeded, failed, pending, finished)"),
        (status = 401, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody),
        (status = 429, description = "the tenant has the most streams open", body = super::error::ErrorBody)))]
pub(crate) async fn tenant_stream(
    State(state): State<ApiState>,
    caller: StreamCaller,
    headers: HeaderMap,
    Query(query): Query<StreamQuery>,
) -> Result<Response, ApiError> {
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_owned).or(query.after);
    let prefix = state.client.prefix().to_owned();
    let mut conn = state.client.connection();
    let start = match resume {
        Some(id) if events::is_stream_id(&id) => id,
        Some(_) => return Err(ApiError::invalid("Last-Event-ID / after must be an event id such as 1700000000000-0")),
        None => events::latest_id(&mut conn, &prefix, &caller.tenant).await?,
    };
    // One of the tenant's stream slots, held by the stream and freed when the client goes.
    let slot = state.limits.open_stream(&caller.tenant)?;
    let client = state.client.clone();
    let tenant = caller.tenant;
    let by_token = caller.claims.is_some();
    let claims = std::sync::Arc::new(caller.claims);
    let stream = futures::stream::unfold((start, Vec::<Event>::new()), move |(mut after, mut pending)| {
        let _held = &slot;
        let (client, tenant, prefix, claims) = (client.clone(), tenant.clone(), prefix.clone(), claims.clone());
        async move {
            loop {
                if let Some(event) = pending.pop() {
                    return Some((Ok::<Event, Infallible>(event), (after, pending)));
                }
                let mut conn = client.connection();
                match events::read_after(&mut conn, &prefix, &tenant, &after, READ_COUNT).await {
                    Ok(read) if !read.is_empty() => {
                        after = read.last().map(|(id, _)| id.clone()).unwrap_or(after);
                        let read: Vec<(String, TenantEvent)> = match claims.as_ref() {
                            Some(c) => read.into_iter().filter(|(_, e)| c.admits(e)).collect(),
                            None => read,
                        };
                        let mut out: Vec<Event> = read.iter().map(|(id, e)| job_event(id, e)).collect();
                        if claims.as_ref().as_ref().is_none_or(|c| c.type_ok("batch.progress")) {
                            out.extend(batch_events(&client, &read).await);
                        }
                        // Popped from the back: keep them in order.
                        out.reverse();
                        pending = out;
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "tenant stream: reading events failed; retrying"),
                }
                tokio::time::sleep(POLL).await;
            }
        }
    });
    let mut res = Sse::new(stream).keep_alive(KeepAlive::default()).into_response();
    if by_token {
        res.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    }
    Ok(res)
}

fn job_event(id: &str, e: &TenantEvent) -> Event {
    let data = serde_json::to_string(e).unwrap_or_default();
    Event::default().id(id).event(e.event_type.clone()).data(data)
}

/// One progress event per batch the read touched.
async fn batch_events(client: &fleet_jobs::Client, read: &[(String, TenantEvent)]) -> Vec<Event> {
    let touched: BTreeSet<(&str, &str)> =
        // A job's progress changes no batch counter.
        read.iter()
            .filter(|(_, e)| e.event_type != "job.progress")
            .filter_map(|(_, e)| Some((e.queue.as_str(), e.batch.as_deref()?)))
            .collect();
    let mut out = Vec::new();
    for (queue, batch) in touched {
        let Ok(Some(s)) = client.batch(queue, batch).await else { continue };
        let data = serde_json::json!({"id": batch, "queue": queue, "total": s.total, "succeeded": s.succeeded,
            "failed": s.failed, "pending": s.pending, "finished": s.pending == 0});
        out.push(Event::default().event("batch.progress").data(data.to_string()));
    }
    out
}
