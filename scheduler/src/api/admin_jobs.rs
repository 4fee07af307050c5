//! `/admin/v1/jobs` and `/admin/v1/queues/{queue}/jobs/{id}/...`: the operators' job
//! browser (jobs by queue and state with filters, paged) and the actions on one job
//! (retry now, cancel, delete, replay with edited arguments); also the listings of
//! batches and limit keys the dashboard shows. Reads need the `operator` role, actions
//! `admin`, and every action writes an audit entry. No tenant key reaches any of them.

use super::ApiState;
use super::audit::record as audit;
use super::auth::{Caller, Role};
use super::error::ApiError;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use fleet_jobs::JobState;
use fleet_jobs::browse::{JobFilter, JobPage};
use fleet_jobs::client::{CancelOutcome, EnqueueOptions};
use serde::Deserialize;
use std::time::Duration;

/// The filters of `GET /admin/v1/jobs` (the same as the archive's search).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct BrowseQuery {
    /// The queue (required).
    queue: String,
    /// The state (default `ready`).
    #[serde(default)]
    state: Option<String>,
    /// Only this kind.
    #[serde(default)]
    kind: Option<String>,
    /// Only this tenant's jobs.
    #[serde(default)]
    tenant: Option<String>,
    /// Text in the arguments or the last error (case-insensitive).
    #[serde(default)]
    q: Option<String>,
    /// Enqueued at or after (RFC 3339, or ms since the epoch).
    #[serde(default)]
    from: Option<String>,
    /// Enqueued before (RFC 3339, or ms since the epoch).
    #[serde(default)]
    to: Option<String>,
    /// A previous page's `next`.
    #[serde(default)]
    cursor: Option<String>,
    /// Jobs per page (1 to 200, default 50).
    #[serde(default)]
    limit: Option<usize>,
}

fn instant(name: &str, v: Option<&str>) -> Result<Option<u64>, ApiError> {
    let Some(v) = v.map(str::trim).filter(|v| !v.is_empty()) else { return Ok(None) };
    if let Ok(ms) = v.parse::<u64>() {
        return Ok(Some(ms));
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .ok()
        .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
        .map(Some)
        .ok_or_else(|| ApiError::invalid(format!("{name} must be an RFC 3339 time or ms since the epoch, got {v:?}")))
}

fn parse_state(s: Option<&str>) -> Result<JobState, ApiError> {
    let s = s.unwrap_or("ready");
    match serde_json::from_value::<JobState>(serde_json::Value::String(s.to_owned())) {
        Ok(JobState::Unknown) | Err(_) => Err(ApiError::invalid(format!("unknown state {s:?}"))),
        Ok(state) => Ok(state),
    }
}

fn queue_name(q: &str) -> Result<(), ApiError> {
    fleet_jobs::keys::validate_queue_name(q).map_err(ApiError::invalid)
}

/// Jobs of a queue in a state, filtered and paged: reads at most 5,000 entries per call,
/// so a page may come back short with a `next` to go on from.
#[utoipa::path(get, path = "/admin/v1/jobs", params(BrowseQuery), tag = "admin",
    responses((status = 200, description = "`{jobs: [{id, kind, state, attempts, tenant, enqueued_at, at, error}], next, scanned}`"),
        (status = 403, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn browse(
    State(s): State<ApiState>,
    caller: Caller,
    Query(q): Query<BrowseQuery>,
) -> Result<Json<JobPage>, ApiError> {
    caller.require(Role::Operator)?;
    queue_name(&q.queue)?;
    let state = parse_state(q.state.as_deref())?;
    let nonempty = |v: Option<String>| v.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let tenant = nonempty(q.tenant);
    if let Some(t) = &tenant {
        fleet_jobs::tenant::validate_tenant(t).map_err(ApiError::invalid)?;
    }
    let text = nonempty(q.q);
    if text.as_ref().is_some_and(|t| t.len() > 200) {
        return Err(ApiError::invalid("q must be at most 200 characters"));
    }
    let filter = JobFilter {
        kind: nonempty(q.kind),
        tenant,
        text,
        from_ms: instant("from", q.from.as_deref())?,
        to_ms: instant("to", q.to.as_deref())?,
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=fleet_jobs::browse::MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!("limit must be 1 to {}", fleet_jobs::browse::MAX_PAGE)));
    }
    Ok(Json(s.client.browse(&q.queue, state, &filter, q.cursor.as_deref(), limit).await?))
}

fn target(queue: &str, id: &str) -> String {
    format!("queue:{queue}/job:{id}")
}

fn conflict(message: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "wrong_state", message)
}

/// The job's state, or 404.
async fn state_of(s: &ApiState, queue: &str, id: &str) -> Result<JobState, ApiError> {
    queue_name(queue)?;
    s.client.job_state(queue, id).await?.ok_or_else(|| ApiError::not_found(format!("no job {id} on queue {queue}")))
}

/// Retry a job now: a scheduled or retrying job becomes due at once, a dead letter is
/// replayed with fresh attempts (admin; 409 for a job in another state).
#[utoipa::path(post, path = "/admin/v1/queues/{queue}/jobs/{id}/retry", tag = "admin",
    responses((status = 200, description = "`{retried: id, from: state}`"), (status = 403, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
pub(crate) async fn retry(
    State(s): State<ApiState>,
    caller: Caller,
    Path((queue, id)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Role::Admin)?;
    let state = state_of(&s, &queue, &id).await?;
    let done = match state {
        JobState::Scheduled | JobState::Retrying => s.client.retry_now(&queue, &id).await?,
        JobState::Dead => {
            let one = fleet_jobs::admin::DeadFilter { ids: vec![id.clone()], ..Default::default() };
            s.client.replay(&queue, &one, None).await? == 1
        }
        _ => false,
    };
    if !done {
        return Err(conflict(format!("job {id} is {state:?}: only scheduled, retrying and dead jobs can be retried")));
    }
    tracing::info!(operator = %caller.key_id, %queue, job = %id, "job retried now");
    audit(&s, &caller, "job.retry", target(&queue, &id), serde_json::json!({"from": state}), 1).await;
    Ok(Json(serde_json::json!({"retried": id, "from": state})))
}

/// Cancel a job that has not finished (admin; 409 when it has).
#[utoipa::path(post, path = "/admin/v1/queues/{queue}/jobs/{id}/cancel", tag = "admin",
    responses((status = 200, description = "`{cancelled: id, from: state}`"), (status = 403, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
pub(crate) async fn cancel(
    State(s): State<ApiState>,
    caller: Caller,
    Path((queue, id)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Role::Admin)?;
    queue_name(&queue)?;
    let from = match s.client.cancel(&queue, &id).await? {
        CancelOutcome::Cancelled(from) => from,
        CancelOutcome::AlreadyFinished(st) => return Err(conflict(format!("job {id} has finished ({st:?})"))),
        CancelOutcome::NotFound => return Err(ApiError::not_found(format!("no job {id} on queue {queue}"))),
    };
    tracing::info!(operator = %caller.key_id, %queue, job = %id, "job cancelled");
    audit(&s, &caller, "job.cancel", target(&queue, &id), serde_json::json!({"from": from}), 1).await;
    Ok(Json(serde_json::json!({"cancelled": id, "from": from})))
}

/// Delete a finished job's record or a dead letter (admin; 409 for a job that has not
/// finished: cancel it first).
#[utoipa::path(delete, path = "/admin/v1/queues/{queue}/jobs/{id}", tag = "admin",
    responses((status = 200, description = "`{deleted: id, state}`"), (status = 403, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
pub(crate) async fn delete(
    State(s): State<ApiState>,
    caller: Caller,
    Path((queue, id)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Role::Admin)?;
    let state = state_of(&s, &queue, &id).await?;
    let done = match state {
        JobState::Dead => {
            let one = fleet_jobs::admin::DeadFilter { ids: vec![id.clone()], ..Default::default() };
            s.client.purge(&queue, &one).await? == 1
        }
        JobState::Succeeded | JobState::Cancelled | JobState::Expired => s.client.forget(&queue, &id).await?,
        _ => false,
    };
    if !done {
        return Err(conflict(format!("job {id} is {state:?}: cancel it before deleting it")));
    }
    tracing::info!(operator = %caller.key_id, %queue, job = %id, "job deleted");
    audit(&s, &caller, "job.delete", target(&queue, &id), serde_json::json!({"state": state}), 1).await;
    Ok(Json(serde_json::json!({"deleted": id, "state": state})))
}

/// The body of a replay: the arguments to run the copy with (default: the job's own).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayRequest {
    /// New arguments (checked against the job's kind).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    args: Option<Box<serde_json::value::RawValue>>,
}

/// Enqueue a copy of a job (any state) with the same kind, tenant, priority, attempts
/// and timeout, and the given arguments (admin). Answers the new job's id.
#[utoipa::path(post, path = "/admin/v1/queues/{queue}/jobs/{id}/replay", tag = "admin", request_body = ReplayRequest,
    responses((status = 201, description = "`{job: new id, from: id}`"), (status = 403, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn replay(
    State(s): State<ApiState>,
    caller: Caller,
    Path((queue, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    caller.require(Role::Admin)?;
    queue_name(&queue)?;
    // No body: the job's own arguments.
    let body: ReplayRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ReplayRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::invalid(format!("invalid replay body: {e}")))?
    };
    let job =
        s.client.job(&queue, &id).await?.ok_or_else(|| ApiError::not_found(format!("no job {id} on queue {queue}")))?;
    let env = job
        .envelope
        .ok_or_else(|| ApiError::invalid(format!("job {id}'s envelope does not decode: it cannot be copied")))?;
    let kind = fleet_jobs::catalogue::lookup(&env.kind)
        .ok_or_else(|| ApiError::invalid(format!("kind {:?} is not in the catalogue", env.kind)))?;
    let edited = body.args;
    let was_edited = edited.is_some();
    let args = edited.unwrap_or(env.args);
    (kind.validate)(&args).map_err(|e| ApiError::invalid(format!("args do not fit kind {:?}: {e}", env.kind)))?;
    let opts = EnqueueOptions {
        queue: Some(queue.clone()),
        priority: Some(env.priority),
        max_attempts: Some(env.max_attempts),
        timeout: env.timeout_ms.map(Duration::from_millis),
        // The copy belongs to the job's tenant (from the stored envelope, never the request).
        tenant: env.tenant.clone(),
        ..Default::default()
    };
    let new = s.client.enqueue_raw(&env.kind, args, &(kind.options)(), opts).await?;
    tracing::info!(operator = %caller.key_id, %queue, job = %id, copy = %new.0, edited = was_edited, "job replayed");
    let params = serde_json::json!({"job": &new.0, "edited_args": was_edited});
    audit(&s, &caller, "job.replay", target(&queue, &id), params, 1).await;
    Ok((StatusCode::CREATED, Json(serde_json::json!({"job": new.0, "from": id}))))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Rows (1 to 200, default 50).
    #[serde(default)]
    limit: Option<i64>,
}

/// The latest batches with their live counters, newest first (operators).
#[utoipa::path(get, path = "/admin/v1/batches", params(ListQuery), tag = "admin",
    responses((status = 200, description = "`[{id, tenant, queue, total, succeeded, failed, done, created_at}]`"),
        (status = 403, body = super::error::ErrorBody)))]
pub(crate) async fn batches(
    State(s): State<ApiState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    caller.require(Role::Operator)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::invalid("limit must be 1 to 200"));
    }
    let rows: Vec<(String, String, String, i32, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT id, tenant, queue, total, created_at FROM batches ORDER BY created_at DESC LIMIT $1")
            .bind(limit)
            .fetch_all(&s.db)
            .await
            .map_err(|e| ApiError::unavailable("reading batches", e))?;
    let mut out = Vec::with_capacity(rows.len());
    for (id, tenant, queue, total, created_at) in rows {
        let status = s.client.batch(&queue, &id).await?;
        let (ok, failed, done) = status.map(|b| (b.succeeded, b.failed, b.callbacks_enqueued)).unwrap_or((0, 0, true));
        out.push(serde_json::json!({"id": id, "tenant": tenant, "queue": queue, "total": total,
            "succeeded": ok, "failed": failed, "done": done, "created_at": created_at}));
    }
    Ok(Json(out))
}

/// Most limit keys listed.
const MAX_LIMIT_KEYS: usize = 500;

fn limiter(s: &ApiState) -> fleet_jobs::limits::Limiter {
    fleet_jobs::limits::Limiter::new(s.client.connection(), s.client.prefix(), Duration::from_secs(30))
}

/// Limit keys with state in Redis (at most 500, by name): overrides, breaker, tokens,
/// slots held (operators).
#[utoipa::path(get, path = "/admin/v1/limits", tag = "admin",
    responses((status = 200, description = "`[{key, overrides, breaker, failures, tokens, in_flight, slowed_until}]`"),
        (status = 403, body = super::error::ErrorBody)))]
pub(crate) async fn limits(
    State(s): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<fleet_jobs::limits::LimitView>>, ApiError> {
    caller.require(Role::Operator)?;
    let l = limiter(&s);
    let mut out = Vec::new();
    for key in l.keys(MAX_LIMIT_KEYS).await? {
        out.push(l.inspect(&key).await?);
    }
    Ok(Json(out))
}

/// One limit key's overrides and live state (operators).
#[utoipa::path(get, path = "/admin/v1/limits/{key}", tag = "admin",
    responses((status = 200, description = "`{key, overrides, breaker, failures, tokens, in_flight, slowed_until}`"),
        (status = 403, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn limit(
    State(s): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Json<fleet_jobs::limits::LimitView>, ApiError> {
    caller.require(Role::Operator)?;
    fleet_jobs::limits::validate_limit_key(&key).map_err(ApiError::invalid)?;
    Ok(Json(limiter(&s).inspect(&key).await?))
}
