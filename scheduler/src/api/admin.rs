//! `/admin/v1/...`: the operators' HTTP API (the same views as `fleetctl`, on the same
//! data API) and the live dashboard at `/dashboard`. Reads need the `operator` role,
//! changes (replay, purge, pause, resume) the `admin` role.

use super::ApiState;
use super::auth::{Caller, Role};
use super::error::ApiError;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse};
use fleet_jobs::JobState;
use fleet_jobs::admin::{DeadFilter, QueueOverview};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One sample of every queue, for the charts.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// When (ms since the epoch).
    pub at: u64,
    /// Per queue: (name, succeeded total, lag ms, ready).
    pub queues: Vec<(String, i64, u64, i64)>,
}

/// The last hour of samples (one every 10 s), kept by the scheduler.
#[derive(Clone, Default)]
pub struct History(Arc<Mutex<VecDeque<Sample>>>);

impl History {
    /// Samples every queue every 10 s until `stop`, keeping one hour.
    pub async fn run(self, client: fleet_jobs::Client, stop: tokio_util::sync::CancellationToken) {
        loop {
            if let Ok(all) = client.overviews().await {
                let s = Sample {
                    at: fleet_jobs::envelope::now_ms(),
                    queues: all.into_iter().map(|o| (o.queue, o.stats.succeeded, o.lag_ms, o.stats.ready)).collect(),
                };
                let mut h = self.0.lock().unwrap_or_else(|p| p.into_inner());
                h.push_back(s);
                while h.len() > 360 {
                    h.pop_front();
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            }
        }
    }

    fn snapshot(&self) -> Vec<Sample> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }
}

fn read(caller: &Caller) -> Result<(), ApiError> {
    caller.require(Role::Operator)
}

/// GET /admin/v1/queues
pub(crate) async fn queues(State(s): State<ApiState>, caller: Caller) -> Result<Json<Vec<QueueOverview>>, ApiError> {
    read(&caller)?;
    Ok(Json(s.client.overviews().await?))
}

/// GET /admin/v1/history
pub(crate) async fn history(State(s): State<ApiState>, caller: Caller) -> Result<Json<Vec<Sample>>, ApiError> {
    read(&caller)?;
    Ok(Json(s.history.snapshot()))
}

#[derive(Deserialize)]
pub(crate) struct JobsQuery {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    offset: usize,
    #[serde(default)]
    limit: Option<usize>,
}

fn queue_name(q: &str) -> Result<(), ApiError> {
    fleet_jobs::keys::validate_queue_name(q).map_err(ApiError::invalid)
}

/// GET /admin/v1/queues/{queue}/jobs?state=ready
pub(crate) async fn jobs(
    State(s): State<ApiState>,
    caller: Caller,
    Path(queue): Path<String>,
    Query(q): Query<JobsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    read(&caller)?;
    queue_name(&queue)?;
    let state: JobState = serde_json::from_value(serde_json::Value::String(q.state.unwrap_or_else(|| "ready".into())))
        .map_err(|_| ApiError::invalid("unknown state"))?;
    Ok(Json(s.client.jobs_in_state(&queue, state, q.offset, q.limit.unwrap_or(50).min(500)).await?))
}

/// GET /admin/v1/queues/{queue}/jobs/{id}
pub(crate) async fn job(
    State(s): State<ApiState>,
    caller: Caller,
    Path((queue, id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    read(&caller)?;
    queue_name(&queue)?;
    Ok(Json(s.client.job(&queue, &id).await?.ok_or_else(|| ApiError::not_found(format!("no job {id}")))?))
}

#[derive(Deserialize, Default)]
pub(crate) struct DeadQuery {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

/// GET /admin/v1/queues/{queue}/dead
pub(crate) async fn dead(
    State(s): State<ApiState>,
    caller: Caller,
    Path(queue): Path<String>,
    Query(q): Query<DeadQuery>,
) -> Result<impl IntoResponse, ApiError> {
    read(&caller)?;
    queue_name(&queue)?;
    let filter = DeadFilter {
        kind: q.kind,
        reason_contains: q.reason,
        limit: Some(q.limit.unwrap_or(50).min(500)),
        ..Default::default()
    };
    Ok(Json(s.client.dead_matching(&queue, &filter).await?))
}

/// Most reason groups answered by `dead/groups`.
const MAX_DEAD_GROUPS: usize = 500;

/// GET /admin/v1/queues/{queue}/dead/groups (the 500 largest groups at most)
pub(crate) async fn dead_groups(
    State(s): State<ApiState>,
    caller: Caller,
    Path(queue): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    read(&caller)?;
    queue_name(&queue)?;
    let groups: Vec<serde_json::Value> = s
        .client
        .dead_by_reason(&queue)
        .await?
        .into_iter()
        .take(MAX_DEAD_GROUPS)
        .map(|(reason, count)| serde_json::json!({"reason": reason, "count": count}))
        .collect();
    Ok(Json(groups))
}

/// Which dead letters a replay or purge applies to.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeadSelect {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    all: bool,
    /// Replays per second.
    #[serde(default)]
    rate: Option<u32>,
}

impl DeadSelect {
    fn filter(&self) -> Result<DeadFilter, ApiError> {
        if self.ids.is_empty() && self.kind.is_none() && self.reason.is_none() && !self.all {
            return Err(ApiError::invalid("say which dead letters: ids, kind, reason or all"));
        }
        // An empty reason would match every dead letter (e.g. a group whose reason is
        // empty or starts with a digit): `all` says that.
        if self.reason.as_deref() == Some("") {
            return Err(ApiError::invalid("an empty reason matches every dead letter: say all"));
        }
        Ok(DeadFilter {
            ids: self.ids.clone(),
            kind: self.kind.clone(),
            reason_contains: self.reason.clone(),
            ..Default::default()
        })
    }
}

/// Replays or purges the selected dead letters (admin only), and logs who did it.
async fn dead_op(
    s: &ApiState,
    caller: &Caller,
    queue: &str,
    sel: &DeadSelect,
    replay: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Role::Admin)?;
    queue_name(queue)?;
    let filter = sel.filter()?;
    let (n, what) = if replay {
        (s.client.replay(queue, &filter, sel.rate).await?, "replayed")
    } else {
        (s.client.purge(queue, &filter).await?, "purged")
    };
    tracing::info!(operator = %caller.key_id, %queue, count = n, "dead letters {what}");
    Ok(Json(serde_json::json!({ what: n })))
}

/// POST /admin/v1/queues/{queue}/replay
pub(crate) async fn replay(
    State(s): State<ApiState>,
    caller: Caller,
    Path(queue): Path<String>,
    Json(sel): Json<DeadSelect>,
) -> Result<impl IntoResponse, ApiError> {
    dead_op(&s, &caller, &queue, &sel, true).await
}

/// POST /admin/v1/queues/{queue}/purge
pub(crate) async fn purge(
    State(s): State<ApiState>,
    caller: Caller,
    Path(queue): Path<String>,
    Json(sel): Json<DeadSelect>,
) -> Result<impl IntoResponse, ApiError> {
    dead_op(&s, &caller, &queue, &sel, false).await
}

/// Pauses or resumes a queue fleet-wide (admin only).
async fn set_queue_paused(
    s: &ApiState,
    caller: &Caller,
    queue: &str,
    paused: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Role::Admin)?;
    queue_name(queue)?;
    if paused {
        s.client.pause(queue).await?;
    } else {
        s.client.resume(queue).await?;
    }
    tracing::info!(operator = %caller.key_id, %queue, paused, "queue paused state changed");
    Ok(Json(serde_json::json!({"paused": paused})))
}

/// POST /admin/v1/queues/{queue}/pause
pub(crate) async fn pause(
    State(s): State<ApiState>,
    caller: Caller,
    Path(queue): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    set_queue_paused(&s, &caller, &queue, true).await
}

/// POST /admin/v1/queues/{queue}/resume
pub(crate) async fn resume(
    State(s): State<ApiState>,
    caller: Caller,
    Path(queue): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    set_queue_paused(&s, &caller, &queue, false).await
}

/// PUT /admin/v1/queues/{queue}/dead-caps: `{"max_count": n|null, "max_age_secs": s|null}`
/// sets the queue's own dead-letter caps (null: the workers' setting); admin only.
/// Answers the caps now in force on the queue.
pub(crate) async fn set_dead_caps(
    State(s): State<ApiState>,
    caller: Caller,
    Path(queue): Path<String>,
    Json(caps): Json<fleet_jobs::deadcaps::DeadCaps>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    queue_name(&queue)?;
    s.client.set_dead_caps(&queue, caps).await?;
    tracing::info!(operator = %caller.key_id, %queue, ?caps, "queue dead-letter caps changed");
    Ok(Json(s.client.dead_caps(&queue).await?))
}

/// GET /admin/v1/queues/{queue}/dead-caps
pub(crate) async fn dead_caps(
    State(s): State<ApiState>,
    caller: Caller,
    Path(queue): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    read(&caller)?;
    queue_name(&queue)?;
    Ok(Json(s.client.dead_caps(&queue).await?))
}

/// GET /admin/v1/queues/{queue}/workers
pub(crate) async fn workers(
    State(s): State<ApiState>,
    caller: Caller,
    Path(queue): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    read(&caller)?;
    queue_name(&queue)?;
    Ok(Json(s.client.workers(&queue).await?))
}

/// GET /admin/v1/stream: a `queues` event with every queue's overview each second (one
/// of the key's tenant's stream slots).
pub(crate) async fn stream(
    State(s): State<ApiState>,
    caller: Caller,
) -> Result<Sse<impl futures::Stream<Item = Result<Event, std::convert::Infallible>>>, ApiError> {
    read(&caller)?;
    let slot = s.limits.open_stream(&caller.tenant)?;
    let stream = futures::stream::unfold((s, true), move |(s, first)| {
        let _held = &slot;
        async move {
            if !first {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let now = fleet_jobs::envelope::now_ms();
            let data = match s.client.overviews().await {
                Ok(all) => serde_json::json!({"at": now, "queues": all, "batches": recent_batches(&s).await}),
                Err(_) => serde_json::json!({"at": now, "error": "the job store is unavailable"}),
            };
            Some((Ok(Event::default().event("queues").data(data.to_string())), (s, false)))
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The ten most recent batches with their live counters (for the dashboard).
async fn recent_batches(s: &ApiState) -> Vec<serde_json::Value> {
    let rows: Vec<(String, String, String, i32)> =
        sqlx::query_as("SELECT id, tenant, queue, total FROM batches ORDER BY created_at DESC LIMIT 10")
            .fetch_all(&s.db)
            .await
            .unwrap_or_default();
    let mut out = Vec::with_capacity(rows.len());
    for (id, tenant, queue, total) in rows {
        let status = s.client.batch(&queue, &id).await.ok().flatten();
        let (ok, failed, done) = status.map(|b| (b.succeeded, b.failed, b.callbacks_enqueued)).unwrap_or((0, 0, true));
        out.push(serde_json::json!({"id": id, "tenant": tenant, "queue": queue, "total": total, "succeeded": ok, "failed": failed, "done": done}));
    }
    out
}

const DASHBOARD: &str = include_str!("dashboard.html");

/// `'sha256-…'` of every inline `<tag>…</tag>` block of the page, for its CSP.
fn inline_hashes(html: &str, tag: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let Some(end) = body.find(&close) else { break };
        let digest = sha2::Sha256::digest(&body.as_bytes()[..end]);
        out.push(format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest)));
        rest = &body[end + close.len()..];
    }
    out.join(" ")
}

/// The dashboard's Content-Security-Policy: nothing but its own inline script and style
/// (by hash) and calls to this origin; no framing, no forms, no plugins.
fn dashboard_csp() -> &'static str {
    static CSP: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self' data:; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            inline_hashes(DASHBOARD, "script"),
            inline_hashes(DASHBOARD, "style")
        )
    });
    &CSP
}

/// GET /dashboard: the page (it asks for an operator key and calls the admin API with it),
/// with a strict CSP, no framing, no sniffing and no referrer (a key could be in the URL).
pub(crate) async fn dashboard() -> impl IntoResponse {
    use axum::http::header;
    (
        [
            (header::CONTENT_SECURITY_POLICY, dashboard_csp()),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Html(DASHBOARD),
    )
}

/// A schedule's state for operators.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub(crate) struct ScheduleView {
    name: String,
    last_fired_at: Option<chrono::DateTime<chrono::Utc>>,
    next_fire_at: Option<chrono::DateTime<chrono::Utc>>,
    missed_ticks: i64,
    paused: bool,
    last_error: Option<String>,
}

/// GET /admin/v1/schedules?limit=&offset= (by name; 100 per page by default, 500 at most)
pub(crate) async fn schedules(
    State(s): State<ApiState>,
    caller: Caller,
    Query(page): Query<fleet_accounts::sources::ListPage>,
) -> Result<impl IntoResponse, ApiError> {
    read(&caller)?;
    let (limit, offset) = page.bounds()?;
    let rows: Vec<ScheduleView> = sqlx::query_as(
        "SELECT name, last_fired_at, next_fire_at, missed_ticks, paused, last_error FROM schedule_state
          ORDER BY name LIMIT $1 OFFSET $2",
    )
    .bind(limit)
    .bind(offset)
    .fetch_all(&s.db)
    .await
    .map_err(|e| ApiError::unavailable("reading schedules", e))?;
    Ok(Json(rows))
}

async fn set_schedule(
    s: &ApiState,
    caller: &Caller,
    name: &str,
    paused: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Role::Admin)?;
    crate::ticker::set_paused(&s.db, name, paused)
        .await
        .map_err(|e| ApiError::unavailable("pausing the schedule", e))?;
    tracing::info!(operator = %caller.key_id, schedule = %name, paused, "schedule paused state changed");
    Ok(Json(serde_json::json!({"schedule": name, "paused": paused})))
}

/// POST /admin/v1/schedules/{name}/pause
pub(crate) async fn pause_schedule(
    State(s): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    set_schedule(&s, &caller, &name, true).await
}

/// POST /admin/v1/schedules/{name}/resume
pub(crate) async fn resume_schedule(
    State(s): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    set_schedule(&s, &caller, &name, false).await
}
