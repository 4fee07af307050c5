//! `/v1/jobs`: enqueue one or many, read one, cancel one.

use super::ApiState;
use super::MAX_JOBS_PER_REQUEST;
use super::auth::{Caller, Role};
use super::error::ApiError;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Json, response::IntoResponse};
use chrono::{DateTime, Utc};
use fleet_jobs::{CancelOutcome, Dedup, DedupMode, EnqueueOptions, JobId, JobState, Priority, Unique};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::time::{Duration, UNIX_EPOCH};
use utoipa::ToSchema;

/// One job to enqueue.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnqueueRequest {
    /// Job kind (see the catalogue), e.g. `probe`.
    kind: String,
    /// Arguments of the kind, as JSON.
    #[schema(value_type = Object)]
    args: Box<RawValue>,
    /// Queue (default: the kind's).
    #[serde(default)]
    queue: Option<String>,
    /// `high`, `default` or `low`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    priority: Option<Priority>,
    /// Run no earlier than this many milliseconds from now.
    #[serde(default)]
    delay_ms: Option<u64>,
    /// Run no earlier than this instant (RFC 3339).
    #[serde(default)]
    run_at: Option<DateTime<Utc>>,
    /// Attempts before the dead letters.
    #[serde(default)]
    max_attempts: Option<u32>,
    /// Timeout of one attempt, in milliseconds.
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// A duplicate with the same key inside the window returns the first job.
    #[serde(default)]
    unique_key: Option<String>,
    /// The unique window in seconds (default 3600).
    #[serde(default)]
    unique_window_secs: Option<u64>,
    /// Not started by this instant: the job expires instead of running.
    #[serde(default)]
    deadline: Option<DateTime<Utc>>,
    /// Collapse jobs that share a key: debounce, replace or keep-last (see the README's
    /// "Dedup modes"). With `unique_key` too, the throttle is checked first.
    #[serde(default)]
    dedup: Option<DedupRequest>,
}

/// A dedup key and mode.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DedupRequest {
    /// The key (1 to 200 characters), in the caller's own namespace.
    key: String,
    /// `debounce`: each new job moves the pending one's start to `delay_ms` from now and
    /// gives it its args, never past `max_wait_ms` after the burst's first job;
    /// `replace`: a pending (ready or scheduled) job with the key is cancelled for the
    /// new one; `keep_last`: at most one running and one waiting job per key, the
    /// waiting one with the latest args, started when the running one ends.
    mode: DedupModeName,
    /// Debounce only (required): quiet time after the last job, 1 ms to 7 days.
    #[serde(default)]
    delay_ms: Option<u64>,
    /// Debounce only: longest wait from the burst's first job, from `delay_ms` to 7 days
    /// (default: 10 times `delay_ms`, at most 7 days).
    #[serde(default)]
    max_wait_ms: Option<u64>,
}

/// A dedup mode's name.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DedupModeName {
    Debounce,
    Replace,
    KeepLast,
}

/// An enqueued job.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Enqueued {
    /// Job id.
    id: String,
    /// Its queue.
    queue: String,
    /// When a key collapsed the enqueue: `throttled` (the unique key's job, nothing
    /// created), `debounced` (merged into the key's pending job `id`), `replaced` (a new
    /// job; the pending one, `replaced`, was cancelled) or `waiting` (a new job held
    /// until the key's running job, `waiting_for`, ends).
    #[serde(skip_serializing_if = "Option::is_none")]
    deduplicated: Option<String>,
    /// The job this one replaced (cancelled), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    replaced: Option<String>,
    /// The running job of the key this one waits for (keep-last).
    #[serde(skip_serializing_if = "Option::is_none")]
    waiting_for: Option<String>,
}

impl Enqueued {
    fn of(e: fleet_jobs::Enqueued, queue: String) -> Self {
        use fleet_jobs::Deduplicated as D;
        let (replaced, waiting_for) = match &e.deduplicated {
            Some(D::Replaced { previous }) => (Some(previous.0.clone()), None),
            Some(D::Waiting { running, previous }) => (previous.as_ref().map(|p| p.0.clone()), Some(running.0.clone())),
            _ => (None, None),
        };
        Enqueued {
            id: e.id.0,
            queue,
            deduplicated: e.deduplicated.as_ref().map(|d| d.name().to_owned()),
            replaced,
            waiting_for,
        }
    }
}

/// Many jobs at once (at most 1000).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BulkRequest {
    jobs: Vec<EnqueueRequest>,
}

/// The enqueued jobs, in request order.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BulkEnqueued {
    jobs: Vec<Enqueued>,
}

/// A job as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JobView {
    id: String,
    queue: String,
    kind: String,
    /// ready, scheduled, running, retrying, succeeded, dead, cancelled or expired.
    #[schema(value_type = String)]
    state: JobState,
    attempts: u32,
    max_attempts: u32,
    enqueued_at: DateTime<Utc>,
    run_at: DateTime<Utc>,
    /// Errors of the last failed attempts, oldest first.
    errors: Vec<String>,
    /// The progress its handler last reported, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<ProgressView>,
    /// The result its handler recorded (any JSON, at most 64 KiB), if any; kept as long
    /// as the finished job.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    result: Option<Box<RawValue>>,
    /// Its unique or dedup key and mode, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    dedup: Option<DedupView>,
}

/// A job's unique or dedup key, as its tenant named it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DedupView {
    /// `throttle` (the unique key), `debounce`, `replace` or `keep_last`.
    mode: String,
    /// The key.
    key: String,
}

/// A job's progress, as its handler last reported it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ProgressView {
    /// 0 to 100.
    percent: f64,
    /// Units done, when reported as done of total.
    #[serde(skip_serializing_if = "Option::is_none")]
    done: Option<u64>,
    /// Units in all, when reported as done of total.
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<u64>,
    /// A short message (at most 200 characters).
    message: String,
    /// When it was reported.
    at: DateTime<Utc>,
}

/// The result of a cancel.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CancelView {
    /// `cancelled` or `already_finished`.
    outcome: String,
    /// The state the job was in.
    #[schema(value_type = String)]
    state: JobState,
}

/// Longest delay, and furthest `run_at`, a tenant may ask for: 30 days.
pub const MAX_DELAY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most attempts a tenant may ask for.
pub const MAX_ATTEMPTS: u32 = 50;
/// Longest per-attempt timeout a tenant may ask for: 1 hour.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest unique window: 7 days.
pub const MAX_UNIQUE_WINDOW_SECS: u64 = 7 * 24 * 3600;

/// Checks one request and turns it into (kind, args, options) ready to enqueue: a kind
/// tenants may enqueue, a declared queue, options within their maxima, and the job's
/// tenant from the caller's key (never from the request).
pub(crate) fn prepare(
    r: EnqueueRequest,
    tenant: &str,
    tenancy: &crate::tenancy::TenancyConfig,
) -> Result<(String, Box<RawValue>, fleet_jobs::KindOptions, EnqueueOptions), ApiError> {
    let kind = tenancy.public_kind(&r.kind).map_err(|e| ApiError::invalid(e.to_string()))?;
    (kind.validate)(&r.args).map_err(|e| ApiError::invalid(format!("args do not fit kind {:?}: {e}", r.kind)))?;
    let defaults = (kind.options)();
    let queue = r.queue.as_deref().unwrap_or(&defaults.queue);
    fleet_jobs::keys::validate_queue_name(queue).map_err(ApiError::invalid)?;
    tenancy.check_queue(queue).map_err(|e| ApiError::invalid(e.to_string()))?;
    let over = |what: &str, max: String| ApiError::invalid(format!("{what} is over its maximum of {max}"));
    if r.delay_ms.is_some_and(|d| d > MAX_DELAY.as_millis() as u64) {
        return Err(over("delay_ms", format!("{} (30 days)", MAX_DELAY.as_millis())));
    }
    if r.run_at.is_some_and(|t| t > Utc::now() + MAX_DELAY) {
        return Err(over("run_at", "30 days from now".into()));
    }
    if r.max_attempts.is_some_and(|n| n == 0 || n > MAX_ATTEMPTS) {
        return Err(ApiError::invalid(format!("max_attempts must be 1 to {MAX_ATTEMPTS}")));
    }
    if r.timeout_ms.is_some_and(|t| t == 0 || t > MAX_TIMEOUT.as_millis() as u64) {
        return Err(ApiError::invalid(format!("timeout_ms must be 1 to {} (1 hour)", MAX_TIMEOUT.as_millis())));
    }
    if r.unique_window_secs.is_some_and(|w| w > MAX_UNIQUE_WINDOW_SECS) {
        return Err(over("unique_window_secs", format!("{MAX_UNIQUE_WINDOW_SECS} (7 days)")));
    }
    if r.unique_key.as_ref().is_some_and(|k| k.is_empty() || k.len() > 200) {
        return Err(ApiError::invalid("unique_key must be 1 to 200 characters"));
    }
    let dedup = r.dedup.map(|d| dedup_of(d, tenant, r.delay_ms.is_some() || r.run_at.is_some())).transpose()?;
    let to_system = |t: DateTime<Utc>| UNIX_EPOCH + Duration::from_millis(t.timestamp_millis().max(0) as u64);
    let opts = EnqueueOptions {
        queue: r.queue,
        priority: r.priority,
        delay: r.delay_ms.map(Duration::from_millis),
        run_at: r.run_at.map(to_system),
        max_attempts: r.max_attempts,
        timeout: r.timeout_ms.map(Duration::from_millis),
        unique: r.unique_key.map(|key| Unique {
            // In the tenant's namespace: no tenant can take another's key, or Fleet's own.
            key: fleet_jobs::tenant::unique_key(tenant, &key),
            window: Duration::from_secs(r.unique_window_secs.unwrap_or(3600).max(1)),
        }),
        deadline: r.deadline.map(to_system),
        tenant: Some(tenant.to_owned()),
        dedup,
        ..Default::default()
    };
    Ok((r.kind, r.args, defaults, opts))
}

/// Checks a dedup request (a bad combination is a 400 `bad_dedup`) and puts its key in
/// the tenant's namespace, like a unique key.
fn dedup_of(d: DedupRequest, tenant: &str, has_start: bool) -> Result<Dedup, ApiError> {
    let bad = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, "bad_dedup", m);
    if d.key.is_empty() || d.key.len() > 200 || d.key.chars().any(char::is_control) {
        return Err(bad("dedup.key must be 1 to 200 characters without control characters"));
    }
    let max = fleet_jobs::dedup::MAX_DEBOUNCE.as_millis() as u64;
    let mode = match d.mode {
        DedupModeName::Debounce => {
            let delay = d.delay_ms.ok_or_else(|| bad("dedup mode debounce needs delay_ms"))?;
            if delay == 0 || delay > max {
                return Err(bad(&format!("dedup.delay_ms must be 1 to {max} (7 days)")));
            }
            let max_wait = d.max_wait_ms.unwrap_or(delay.saturating_mul(10).min(max));
            if max_wait < delay || max_wait > max {
                return Err(bad(&format!("dedup.max_wait_ms must be from delay_ms to {max} (7 days)")));
            }
            if has_start {
                return Err(bad("a debounced job starts after dedup.delay_ms: leave out delay_ms and run_at"));
            }
            DedupMode::Debounce { delay: Duration::from_millis(delay), max_wait: Duration::from_millis(max_wait) }
        }
        DedupModeName::Replace | DedupModeName::KeepLast if d.delay_ms.is_some() || d.max_wait_ms.is_some() => {
            return Err(bad("dedup.delay_ms and dedup.max_wait_ms are for mode debounce only"));
        }
        DedupModeName::Replace => DedupMode::Replace,
        DedupModeName::KeepLast => DedupMode::KeepLast,
    };
    // In the tenant's namespace: no tenant can take another's key, or Fleet's own.
    Ok(Dedup { key: fleet_jobs::tenant::unique_key(tenant, &d.key), mode })
}

/// The request's W3C `traceparent`, kept when well-formed (the job's logs join its trace).
pub(crate) fn traceparent(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("traceparent")?.to_str().ok()?;
    fleet_jobs::envelope::parse_traceparent(v).map(|_| v.trim().to_owned())
}

/// The `Idempotency-Key` header, checked.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => {
            let k = v.to_str().map_err(|_| ApiError::invalid("Idempotency-Key must be ASCII"))?;
            if k.is_empty() || k.len() > 200 {
                return Err(ApiError::invalid("Idempotency-Key must be 1 to 200 characters"));
            }
            Ok(Some(k.to_owned()))
        }
    }
}

/// Job ids derived from (tenant, idempotency key, position): a retried request
/// writes the same ids, and the enqueue script creates each job once. The request
/// body's hash is kept 24 h so a key reused for a different request is refused.
async fn idempotent_ids(
    state: &ApiState,
    tenant: &str,
    key: &str,
    body: &[u8],
    n: usize,
) -> Result<Vec<JobId>, ApiError> {
    let fingerprint = hex::encode(Sha256::digest(body));
    let digest = hex::encode(Sha256::digest(format!("{tenant}\0{key}").as_bytes()));
    let redis_key = format!("{}:{{idem:{tenant}}}:{digest}", state.client.prefix());
    let mut conn = state.client.connection();
    let (set, existing): (Option<String>, String) = redis::pipe()
        .cmd("SET")
        .arg(&redis_key)
        .arg(&fingerprint)
        .arg("NX")
        .arg("EX")
        .arg(24 * 3600)
        .cmd("GET")
        .arg(&redis_key)
        .query_async(&mut conn)
        .await
        .map_err(|e| ApiError::unavailable("idempotency key", e))?;
    if set.is_none() && existing != fingerprint {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request in the last 24 h",
        ));
    }
    Ok((0..n).map(|i| JobId(format!("idem-{}-{i}", &digest[..32]))).collect())
}

/// Enqueue one job.
#[utoipa::path(post, path = "/v1/jobs", request_body = EnqueueRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "retrying with the same key returns the same job")),
    responses((status = 201, body = Enqueued), (status = 400, body = super::error::ErrorBody), (status = 401, body = super::error::ErrorBody),
        (status = 413, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn enqueue(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    raw: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Enqueue)?;
    let req: EnqueueRequest = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("invalid JSON body: {e}")))?;
    let (kind, args, defaults, mut opts) = prepare(req, &caller.tenant, &state.tenancy)?;
    opts.trace = traceparent(&headers);
    if let Some(key) = idempotency_key(&headers)? {
        opts.id = idempotent_ids(&state, &caller.tenant, &key, &raw, 1).await?.pop();
    }
    let queue = opts.queue.clone().unwrap_or_else(|| defaults.queue.clone());
    let done = state.client.enqueue_raw_reported(&kind, args, &defaults, opts).await?;
    metrics::counter!("fleet_api_enqueued_total", "kind" => kind).increment(1);
    Ok((StatusCode::CREATED, Json(Enqueued::of(done, queue))))
}

/// Enqueue up to 1000 jobs in one request.
#[utoipa::path(post, path = "/v1/jobs/bulk", request_body = BulkRequest,
    responses((status = 201, body = BulkEnqueued), (status = 401, body = super::error::ErrorBody),
        (status = 413, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn enqueue_bulk(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    raw: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Enqueue)?;
    let req: BulkRequest = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("invalid JSON body: {e}")))?;
    if req.jobs.is_empty() || req.jobs.len() > MAX_JOBS_PER_REQUEST {
        return Err(ApiError::invalid(format!("send 1 to {MAX_JOBS_PER_REQUEST} jobs, got {}", req.jobs.len())));
    }
    let n = req.jobs.len();
    let mut prepared = Vec::with_capacity(n);
    for (i, j) in req.jobs.into_iter().enumerate() {
        prepared.push(
            prepare(j, &caller.tenant, &state.tenancy)
                .map_err(|e| ApiError { message: format!("jobs[{i}]: {}", e.message), ..e })?,
        );
    }
    let ids = match idempotency_key(&headers)? {
        Some(key) => Some(idempotent_ids(&state, &caller.tenant, &key, &raw, n).await?),
        None => None,
    };
    let trace = traceparent(&headers);
    let mut queues = Vec::with_capacity(n);
    for (i, (_, _, defaults, opts)) in prepared.iter_mut().enumerate() {
        if let Some(ids) = &ids {
            opts.id = Some(ids[i].clone());
        }
        opts.trace = trace.clone();
        queues.push(opts.queue.clone().unwrap_or_else(|| defaults.queue.clone()));
    }
    // One round trip per queue in the request, not one per job.
    let written = state.client.enqueue_many_reported(prepared).await?;
    let out: Vec<Enqueued> = written.into_iter().zip(queues).map(|(e, queue)| Enqueued::of(e, queue)).collect();
    metrics::counter!("fleet_api_enqueued_total", "kind" => "bulk").increment(n as u64);
    Ok((StatusCode::CREATED, Json(BulkEnqueued { jobs: out })))
}

/// Read a job.
#[utoipa::path(get, path = "/v1/jobs/{queue}/{id}",
    responses((status = 200, body = JobView), (status = 401, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn get_job(
    State(state): State<ApiState>,
    caller: Caller,
    Path((queue, id)): Path<(String, String)>,
) -> Result<Json<JobView>, ApiError> {
    fleet_jobs::keys::validate_queue_name(&queue).map_err(ApiError::invalid)?;
    let not_found = || ApiError::not_found(format!("no job {id} on queue {queue}"));
    let job = state.client.job(&queue, &id).await?.ok_or_else(not_found)?;
    let env = job.envelope.ok_or_else(not_found)?;
    // Another tenant's job does not exist for this caller.
    if env.tenant.as_deref() != Some(caller.tenant.as_str()) {
        return Err(not_found());
    }
    let ms = |v: u64| DateTime::from_timestamp_millis(v as i64).unwrap_or_default();
    Ok(Json(JobView {
        id: env.id.0,
        queue,
        kind: env.kind,
        state: job.state,
        attempts: job.attempts,
        max_attempts: env.max_attempts,
        enqueued_at: ms(env.enqueued_at),
        run_at: ms(env.run_at),
        errors: job.history.into_iter().map(|a| a.error).collect(),
        progress: job.progress.map(|p| ProgressView {
            percent: p.percent,
            done: p.done,
            total: p.total,
            message: p.message,
            at: ms(p.at),
        }),
        result: job.result,
        dedup: env.dedup.map(|d| {
            // Shown as the tenant named it, without its namespace.
            let own = fleet_jobs::tenant::unique_key(&caller.tenant, "");
            let key = d.key.strip_prefix(own.as_str()).unwrap_or(&d.key).to_owned();
            DedupView { mode: d.mode, key }
        }),
    }))
}

/// Cancel a job that has not finished.
#[utoipa::path(delete, path = "/v1/jobs/{queue}/{id}",
    responses((status = 200, body = CancelView), (status = 401, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn cancel_job(
    State(state): State<ApiState>,
    caller: Caller,
    Path((queue, id)): Path<(String, String)>,
) -> Result<Json<CancelView>, ApiError> {
    caller.require(Role::Enqueue)?;
    // Checks existence and tenant first.
    let _ = get_job(State(state.clone()), caller, Path((queue.clone(), id.clone()))).await?;
    match state.client.cancel(&queue, &id).await? {
        CancelOutcome::Cancelled(s) => Ok(Json(CancelView { outcome: "cancelled".into(), state: s })),
        CancelOutcome::AlreadyFinished(s) => Ok(Json(CancelView { outcome: "already_finished".into(), state: s })),
        CancelOutcome::NotFound => Err(ApiError::not_found(format!("no job {id} on queue {queue}"))),
    }
}
