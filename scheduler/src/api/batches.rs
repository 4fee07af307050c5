//! `/v1/batches`: a group of jobs with progress counters and callbacks.

use super::ApiState;
use super::auth::{Caller, Role};
use super::error::ApiError;
use super::jobs::{EnqueueRequest, prepare};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use fleet_jobs::batches::MAX_BATCH;
use fleet_jobs::batches::{Callback, Callbacks};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A batch to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchRequest {
    /// Queue of every job of the batch (default `default`).
    #[serde(default)]
    queue: Option<String>,
    /// The jobs (1 to 10,000), written all or nothing.
    jobs: Vec<EnqueueRequest>,
    /// Enqueued once when every job succeeded.
    #[serde(default)]
    on_success: Option<EnqueueRequest>,
    /// Enqueued once when every job finished, whatever the outcome.
    #[serde(default)]
    on_complete: Option<EnqueueRequest>,
}

/// A batch and its progress.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BatchView {
    id: String,
    queue: String,
    total: i64,
    succeeded: i64,
    failed: i64,
    pending: i64,
    /// Whether the callbacks have been enqueued (the batch is over).
    callbacks_enqueued: bool,
}

fn callback(r: EnqueueRequest, tenant: &str, tenancy: &crate::tenancy::TenancyConfig) -> Result<Callback, ApiError> {
    let (kind, args, _defaults, opts) = prepare(r, tenant, tenancy)?;
    Ok(Callback { kind, args, queue: opts.queue, priority: opts.priority, max_attempts: opts.max_attempts })
}

/// Records a created batch in PostgreSQL (its tenant, for reads, and its callbacks).
pub(crate) async fn record_batch(
    db: &sqlx::PgPool,
    id: &str,
    tenant: &str,
    queue: &str,
    total: i64,
    callbacks: &Callbacks,
) -> Result<(), ApiError> {
    let json = |c: &Option<Callback>| c.as_ref().and_then(|c| serde_json::to_value(c).ok());
    sqlx::query(
        "INSERT INTO batches (id, tenant, queue, total, on_success, on_complete) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(tenant)
    .bind(queue)
    .bind(total as i32)
    .bind(json(&callbacks.on_success))
    .bind(json(&callbacks.on_complete))
    .execute(db)
    .await
    .map_err(|e| ApiError::unavailable("recording the batch", e))?;
    Ok(())
}

/// Create a batch.
#[utoipa::path(post, path = "/v1/batches", request_body = BatchRequest,
    responses((status = 201, body = BatchView), (status = 401, body = super::error::ErrorBody),
        (status = 413, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn create_batch(
    State(state): State<ApiState>,
    caller: Caller,
    raw: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Enqueue)?;
    let req: BatchRequest = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("invalid JSON body: {e}")))?;
    if req.jobs.is_empty() || req.jobs.len() > MAX_BATCH {
        return Err(ApiError::invalid(format!("a batch holds 1 to {MAX_BATCH} jobs, got {}", req.jobs.len())));
    }
    let queue = req.queue.unwrap_or_else(|| "default".to_owned());
    fleet_jobs::keys::validate_queue_name(&queue).map_err(ApiError::invalid)?;
    state.tenancy.check_queue(&queue).map_err(|e| ApiError::invalid(e.to_string()))?;
    let total = req.jobs.len() as i64;
    let mut jobs = Vec::with_capacity(req.jobs.len());
    for (i, j) in req.jobs.into_iter().enumerate() {
        jobs.push(
            prepare(j, &caller.tenant, &state.tenancy)
                .map_err(|e| ApiError { message: format!("jobs[{i}]: {}", e.message), ..e })?,
        );
    }
    let callbacks = Callbacks {
        on_success: req.on_success.map(|r| callback(r, &caller.tenant, &state.tenancy)).transpose()?,
        on_complete: req.on_complete.map(|r| callback(r, &caller.tenant, &state.tenancy)).transpose()?,
        tenant: Some(caller.tenant.clone()),
    };
    let id = state.client.create_batch(&queue, jobs, &callbacks).await?;
    record_batch(&state.db, &id, &caller.tenant, &queue, total, &callbacks).await?;
    let view = BatchView { id, queue, total, succeeded: 0, failed: 0, pending: total, callbacks_enqueued: false };
    Ok((StatusCode::CREATED, Json(view)))
}

/// How a batch event stream goes on after an event.
#[derive(Clone, Copy, PartialEq)]
enum Next {
    Continue,
    End,
}

/// Live progress of a batch as server-sent events: a `progress` event whenever its
/// counters change (checked every 250 ms), then `done` when its callbacks are enqueued.
/// When the batch's counters are gone (deleted, or forgotten a week after it ended), one
/// `gone` event and the stream ends. The stream takes one of the tenant's stream slots.
#[utoipa::path(get, path = "/v1/batches/{id}/events",
    responses((status = 200, description = "text/event-stream of progress events, then `done` or `gone`"), (status = 401, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
        (status = 429, description = "the tenant has the most streams open", body = super::error::ErrorBody)))]
pub(crate) async fn batch_events(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<
    axum::response::sse::Sse<impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>>,
    ApiError,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let row: Option<(String,)> = sqlx::query_as("SELECT queue FROM batches WHERE id = $1 AND tenant = $2")
        .bind(&id)
        .bind(&caller.tenant)
        .fetch_optional(&state.db)
        .await
        .map_err(|e| ApiError::unavailable("reading the batch", e))?;
    let (queue,) = row.ok_or_else(|| ApiError::not_found(format!("no batch {id}")))?;
    let slot = state.limits.open_stream(&caller.tenant)?;
    let client = state.client.clone();
    let stream = futures::stream::unfold(
        (None::<fleet_jobs::batches::BatchStatus>, Next::Continue),
        move |(last, next)| {
            let _held = &slot;
            let (client, queue, id) = (client.clone(), queue.clone(), id.clone());
            async move {
                if next == Next::End {
                    return None;
                }
                loop {
                    match client.batch(&queue, &id).await {
                        Ok(Some(s)) if last.as_ref() != Some(&s) => {
                            let done = s.callbacks_enqueued;
                            let data = serde_json::json!({"id": id, "total": s.total, "succeeded": s.succeeded, "failed": s.failed, "pending": s.pending});
                            let event =
                                Event::default().event(if done { "done" } else { "progress" }).data(data.to_string());
                            return Some((Ok(event), (Some(s), if done { Next::End } else { Next::Continue })));
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            let data = serde_json::json!({"id": id, "reason": "the batch no longer exists"});
                            return Some((
                                Ok(Event::default().event("gone").data(data.to_string())),
                                (last, Next::End),
                            ));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, batch = %id, "batch stream: reading counters failed; retrying")
                        }
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Read a batch's progress.
#[utoipa::path(get, path = "/v1/batches/{id}",
    responses((status = 200, body = BatchView), (status = 401, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn get_batch(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<BatchView>, ApiError> {
    let row: Option<(String, i32)> = sqlx::query_as("SELECT queue, total FROM batches WHERE id = $1 AND tenant = $2")
        .bind(&id)
        .bind(&caller.tenant)
        .fetch_optional(&state.db)
        .await
        .map_err(|e| ApiError::unavailable("reading the batch", e))?;
    let (queue, total) = row.ok_or_else(|| ApiError::not_found(format!("no batch {id}")))?;
    let status = state.client.batch(&queue, &id).await?;
    let view = match status {
        Some(s) => BatchView {
            id,
            queue,
            total: s.total,
            succeeded: s.succeeded,
            failed: s.failed,
            pending: s.pending,
            callbacks_enqueued: s.callbacks_enqueued,
        },
        // Counters are forgotten a week after the batch ended.
        None => {
            BatchView { id, queue, total: total as i64, succeeded: 0, failed: 0, pending: 0, callbacks_enqueued: true }
        }
    };
    Ok(Json(view))
}
