//! `/admin/v1/...`: the operators' HTTP API (the same views as `fleetctl`, on the same
//! data API) and the live dashboard at `/dashboard`. Reads need the `operator` role,
//! changes (replay, purge, pause, resume) the `admin` role.

use super::ApiState;
use super::audit::record as audit;
use super::auth::{Caller, Role};
use super::error::ApiError;
use crate::schedule::ScheduleSpec;
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
#[derive(Deserialize, Serialize)]
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
    let action = if replay { "queue.replay" } else { "queue.purge" };
    let params = serde_json::to_value(sel).unwrap_or_default();
    audit(s, caller, action, format!("queue:{queue}"), params, n as i64).await;
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
    let action = if paused { "queue.pause" } else { "queue.resume" };
    audit(s, caller, action, format!("queue:{queue}"), serde_json::json!({}), 1).await;
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
    let params = serde_json::to_value(caps).unwrap_or_default();
    audit(&s, &caller, "queue.dead_caps", format!("queue:{queue}"), params, 1).await;
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

/// The dashboard: one page assembled once from its three sources (markup, style, script),
/// kept apart so each reads as what it is; no build step. Its script and style stay
/// inline, so the CSP allows them by hash and nothing else.
fn dashboard_page() -> &'static str {
    static PAGE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        include_str!("dashboard/index.html").replacen("/*STYLE*/", include_str!("dashboard/app.css"), 1).replacen(
            "/*SCRIPT*/",
            include_str!("dashboard/app.js"),
            1,
        )
    });
    &PAGE
}

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
            inline_hashes(dashboard_page(), "script"),
            inline_hashes(dashboard_page(), "style")
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
        Html(dashboard_page()),
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
        // Schedules the API created show before their first tick (no state row yet).
        "SELECT n.name, st.last_fired_at, st.next_fire_at, COALESCE(st.missed_ticks, 0) AS missed_ticks,
                COALESCE(st.paused, sc.paused, FALSE) AS paused, st.last_error
           FROM (SELECT name FROM schedule_state UNION SELECT name FROM schedules) n
           LEFT JOIN schedule_state st ON st.name = n.name
           LEFT JOIN schedules sc ON sc.name = n.name
          ORDER BY n.name LIMIT $1 OFFSET $2",
    )
    .bind(limit)
    .bind(offset)
    .fetch_all(&s.db)
    .await
    .map_err(|e| ApiError::unavailable("reading schedules", e))?;
    // A schedule no ticker has run yet: its next fire time from its definition.
    let mut rows = rows;
    for row in rows.iter_mut().filter(|r| r.next_fire_at.is_none() && !r.paused) {
        let spec = match crate::ticker::load_spec(&s.db, &row.name).await.map_err(db_error("reading the schedule"))? {
            Some(spec) => Some(spec),
            None => config_schedule(&s, &row.name).cloned(),
        };
        row.next_fire_at =
            spec.and_then(|spec| crate::schedule::Schedule::parse(spec).ok()?.next_after(chrono::Utc::now()));
    }
    Ok(Json(rows))
}

async fn set_schedule(
    s: &ApiState,
    caller: &Caller,
    name: &str,
    paused: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Role::Admin)?;
    schedule_name(name)?;
    crate::ticker::set_paused(&s.db, name, paused)
        .await
        .map_err(|e| ApiError::unavailable("pausing the schedule", e))?;
    tracing::info!(operator = %caller.key_id, schedule = %name, paused, "schedule paused state changed");
    let action = if paused { "schedule.pause" } else { "schedule.resume" };
    audit(s, caller, action, format!("schedule:{name}"), serde_json::json!({}), 1).await;
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

/// A malformed schedule name (as the config's rules say) is refused before anything is read.
fn schedule_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > 200 || name.chars().any(|c| c.is_whitespace() || c == '{' || c == '}') {
        return Err(ApiError::invalid(format!(
            "schedule name {name:?} must be 1 to 200 characters without spaces or braces"
        )));
    }
    Ok(())
}

/// The config file's schedule `name`, if it is one.
fn config_schedule<'a>(s: &'a ApiState, name: &str) -> Option<&'a ScheduleSpec> {
    s.config_schedules.iter().find(|c| c.name == name)
}

/// Config-file schedules are owned by the file: the API does not edit or delete them.
fn not_config_owned(s: &ApiState, name: &str) -> Result<(), ApiError> {
    if config_schedule(s, name).is_some() {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "config_owned",
            format!(
                "schedule {name:?} comes from the config file: edit it there (the API can pause, resume and run it)"
            ),
        ));
    }
    Ok(())
}

/// The body of `POST`/`PUT /admin/v1/schedules/{name}`: a schedule as in the config file,
/// without the name (the path's) or with the same one; checked as config schedules are
/// (an invalid expression, zone, kind or arguments: 422 `invalid_schedule`).
fn parsed_spec(name: &str, body: serde_json::Value) -> Result<ScheduleSpec, ApiError> {
    let serde_json::Value::Object(mut fields) = body else {
        return Err(ApiError::invalid("expected a JSON object"));
    };
    match fields.get("name") {
        None => {
            fields.insert("name".into(), serde_json::Value::String(name.to_owned()));
        }
        Some(serde_json::Value::String(n)) if n == name => {}
        Some(_) => return Err(ApiError::invalid("the body's name differs from the path's")),
    }
    let spec: ScheduleSpec = serde_json::from_value(serde_json::Value::Object(fields))
        .map_err(|e| ApiError::new(axum::http::StatusCode::UNPROCESSABLE_ENTITY, "invalid_schedule", e.to_string()))?;
    crate::schedule::Schedule::parse(spec.clone())
        .map_err(|e| ApiError::new(axum::http::StatusCode::UNPROCESSABLE_ENTITY, "invalid_schedule", e))?;
    Ok(spec)
}

fn db_error(context: &'static str) -> impl Fn(sqlx::Error) -> ApiError {
    move |e| ApiError::unavailable(context, e)
}

/// A schedule's definition and who owns it (`config` or `api`).
#[derive(Debug, Serialize)]
pub(crate) struct ScheduleDefinition {
    owner: &'static str,
    #[serde(flatten)]
    spec: ScheduleSpec,
}

/// GET /admin/v1/schedules/{name}: the definition (operators).
pub(crate) async fn get_schedule(
    State(s): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<ScheduleDefinition>, ApiError> {
    read(&caller)?;
    schedule_name(&name)?;
    if let Some(spec) = crate::ticker::load_spec(&s.db, &name).await.map_err(db_error("reading the schedule"))? {
        return Ok(Json(ScheduleDefinition { owner: "api", spec }));
    }
    match config_schedule(&s, &name) {
        Some(spec) => Ok(Json(ScheduleDefinition { owner: "config", spec: spec.clone() })),
        None => Err(ApiError::not_found(format!("no schedule {name:?}"))),
    }
}

/// POST /admin/v1/schedules/{name}: creates a schedule (admin; 409 when the name is taken,
/// by the config file or the API). Every scheduler replica runs it within 5 s.
pub(crate) async fn create_schedule(
    State(s): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<serde_json::Value>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    schedule_name(&name)?;
    not_config_owned(&s, &name)?;
    let spec = parsed_spec(&name, body)?;
    if !crate::ticker::store_spec(&s.db, &spec, false).await.map_err(db_error("storing the schedule"))? {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "schedule_exists",
            format!("schedule {name:?} exists: PUT edits it"),
        ));
    }
    let params = serde_json::to_value(&spec).unwrap_or_default();
    audit(&s, &caller, "schedule.create", format!("schedule:{name}"), params, 1).await;
    Ok((axum::http::StatusCode::CREATED, Json(ScheduleDefinition { owner: "api", spec })))
}

/// PUT /admin/v1/schedules/{name}: replaces a schedule's definition (admin; 404 when the
/// API has no such schedule, 409 `config_owned` for a config-file one).
pub(crate) async fn edit_schedule(
    State(s): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<serde_json::Value>,
) -> Result<Json<ScheduleDefinition>, ApiError> {
    caller.require(Role::Admin)?;
    schedule_name(&name)?;
    not_config_owned(&s, &name)?;
    let spec = parsed_spec(&name, body)?;
    if !crate::ticker::store_spec(&s.db, &spec, true).await.map_err(db_error("storing the schedule"))? {
        return Err(ApiError::not_found(format!("no schedule {name:?}: POST creates it")));
    }
    let params = serde_json::to_value(&spec).unwrap_or_default();
    audit(&s, &caller, "schedule.edit", format!("schedule:{name}"), params, 1).await;
    Ok(Json(ScheduleDefinition { owner: "api", spec }))
}

/// DELETE /admin/v1/schedules/{name}: deletes a schedule and its state (admin).
pub(crate) async fn delete_schedule(
    State(s): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Role::Admin)?;
    schedule_name(&name)?;
    not_config_owned(&s, &name)?;
    if !crate::ticker::delete_spec(&s.db, &name).await.map_err(db_error("deleting the schedule"))? {
        return Err(ApiError::not_found(format!("no schedule {name:?}")));
    }
    audit(&s, &caller, "schedule.delete", format!("schedule:{name}"), serde_json::json!({}), 1).await;
    Ok(Json(serde_json::json!({"deleted": name})))
}

/// POST /admin/v1/schedules/{name}/run: enqueues one run of the schedule's job now
/// (admin; config-file schedules too, paused ones too). Its ticks are not changed.
pub(crate) async fn run_schedule(
    State(s): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    schedule_name(&name)?;
    let spec = match crate::ticker::load_spec(&s.db, &name).await.map_err(db_error("reading the schedule"))? {
        Some(spec) => spec,
        None => {
            config_schedule(&s, &name).cloned().ok_or_else(|| ApiError::not_found(format!("no schedule {name:?}")))?
        }
    };
    let schedule = crate::schedule::Schedule::parse(spec)
        .map_err(|e| ApiError::new(axum::http::StatusCode::UNPROCESSABLE_ENTITY, "invalid_schedule", e))?;
    let id = crate::ticker::run_now(&s.client, &schedule).await?;
    let params = serde_json::json!({"job": &id.0});
    audit(&s, &caller, "schedule.run", format!("schedule:{name}"), params, 1).await;
    Ok((axum::http::StatusCode::ACCEPTED, Json(serde_json::json!({"schedule": name, "job": id.0}))))
}

/// PUT /admin/v1/limits/{key}: run-time overrides of a limit key's rate, burst,
/// concurrency and breaker, fleet-wide (admin; they win over the workers' config until
/// set again; a field left out is cleared). Answers the overrides now in force.
pub(crate) async fn set_limit(
    State(s): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
    Json(spec): Json<fleet_jobs::limits::LimitSpec>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Admin)?;
    fleet_jobs::limits::validate_limit_key(&key).map_err(ApiError::invalid)?;
    spec.validate().map_err(ApiError::invalid)?;
    let limiter = fleet_jobs::limits::Limiter::new(s.client.connection(), s.client.prefix(), Duration::from_secs(30));
    limiter.set_spec(&key, &spec).await?;
    tracing::info!(operator = %caller.key_id, limit = %key, ?spec, "limit overridden");
    let params = serde_json::to_value(&spec).unwrap_or_default();
    audit(&s, &caller, "limit.override", format!("limit:{key}"), params, 1).await;
    Ok(Json(serde_json::json!({"key": key, "override": spec})))
}
