//! `GET /v1/stream`: the caller's tenant's live job events as server-sent events.
//!
//! Each event of a job (`job.succeeded`, `job.retrying`, `job.dead`, `job.expired`)
//! carries its stream id as the SSE `id`, so a client that reconnects with
//! `Last-Event-ID` (browsers do it by themselves) resumes exactly after the last event
//! it saw, as long as the tenant's stream still holds it (the newest 10,000 are kept).
//! After the job events of one read, every batch they touched gets one
//! `batch.progress` event with its counters (`finished` once none is pending), so an
//! app can show "analysing 120 / 300" from one connection.
//!
//! A tenant holds at most `api.streams_per_tenant` streams (this one and batch event
//! streams) open at once per scheduler process; one more gets 429 with `Retry-After`.

use super::ApiState;
use super::auth::Caller;
use super::error::ApiError;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use fleet_jobs::events::{self, TenantEvent};
use serde::Deserialize;
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
}

/// The tenant's live job and batch events, as server-sent events.
#[utoipa::path(get, path = "/v1/stream", params(StreamQuery),
    responses((status = 200, description = "text/event-stream: `job.*` events (JSON: type, queue, id, kind, attempt, batch, at) and `batch.progress` (JSON: id, queue, total, succeeded, failed, pending, finished)"),
        (status = 401, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody),
        (status = 429, description = "the tenant has the most streams open", body = super::error::ErrorBody)))]
pub(crate) async fn tenant_stream(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    Query(query): Query<StreamQuery>,
) -> Result<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>, ApiError> {
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
    let stream = futures::stream::unfold((start, Vec::<Event>::new()), move |(mut after, mut pending)| {
        let _held = &slot;
        let (client, tenant, prefix) = (client.clone(), tenant.clone(), prefix.clone());
        async move {
            loop {
                if let Some(event) = pending.pop() {
                    return Some((Ok(event), (after, pending)));
                }
                let mut conn = client.connection();
                match events::read_after(&mut conn, &prefix, &tenant, &after, READ_COUNT).await {
                    Ok(read) if !read.is_empty() => {
                        after = read.last().map(|(id, _)| id.clone()).unwrap_or(after);
                        let mut out: Vec<Event> = read.iter().map(|(id, e)| job_event(id, e)).collect();
                        out.extend(batch_events(&client, &read).await);
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
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn job_event(id: &str, e: &TenantEvent) -> Event {
    let data = serde_json::to_string(e).unwrap_or_default();
    Event::default().id(id).event(e.event_type.clone()).data(data)
}

/// One progress event per batch the read touched.
async fn batch_events(client: &fleet_jobs::Client, read: &[(String, TenantEvent)]) -> Vec<Event> {
    let touched: BTreeSet<(&str, &str)> =
        read.iter().filter_map(|(_, e)| Some((e.queue.as_str(), e.batch.as_deref()?))).collect();
    let mut out = Vec::new();
    for (queue, batch) in touched {
        let Ok(Some(s)) = client.batch(queue, batch).await else { continue };
        let data = serde_json::json!({"id": batch, "queue": queue, "total": s.total, "succeeded": s.succeeded,
            "failed": s.failed, "pending": s.pending, "finished": s.pending == 0});
        out.push(Event::default().event("batch.progress").data(data.to_string()));
    }
    out
}
