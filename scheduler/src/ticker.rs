//! The ticker: enqueues every due tick of every schedule.
//!
//! Exactly once per tick, with any number of replicas: each tick is enqueued with a
//! unique key derived from (schedule, tick time), and the enqueue script refuses a
//! second job with that key inside its window. Every replica enqueues every due tick;
//! all but the first are no-ops, so a replica dying at any moment neither skips nor
//! doubles a tick. The job's `run_at` is the tick time.
//!
//! Each schedule's last fired tick, next fire time and missed ticks are recorded in
//! PostgreSQL (`schedule_state`), so a scheduler that starts after downtime knows which
//! ticks were missed and skips or catches them up as the schedule says.
//!
//! Each pass also enqueues a sync of every calendar and comms source whose own cron
//! schedule is due ([`fleet_accounts::sources::enqueue_due`]: rows claimed with `SKIP LOCKED`, so
//! replicas share the work and each due sync is enqueued once).
//!
//! And it asks for a sync of every Google or Graph source whose push channel has a third of
//! its lifetime left ([`fleet_calendar::store::channels::claim_due`]): that sync renews or
//! replaces the channel before the provider drops it (asked again every ten minutes until
//! it has).

use crate::schedule::{MAX_TICKS_PER_PASS, Missed, Schedule, ScheduleSpec};
use chrono::{DateTime, Utc};
use fleet_jobs::{Client, EnqueueOptions, Unique};
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;

/// What one pass did.
#[derive(Debug, Default)]
pub struct TickReport {
    /// Ticks enqueued (or found already enqueued by another replica).
    pub enqueued: Vec<(String, DateTime<Utc>)>,
    /// Ticks counted as missed.
    pub missed: u64,
    /// Syncs of calendar and comms sources whose schedules were due.
    pub sources: Vec<fleet_accounts::sources::DueSync>,
    /// Syncs asked for because a source's push channel is due for renewal.
    pub channels: Vec<fleet_calendar::store::channels::DueChannel>,
    /// Problems (bad schedules, failed enqueues); the ticker goes on.
    pub errors: Vec<String>,
}

/// Enqueues due ticks. One per scheduler replica.
pub struct Ticker {
    client: Client,
    db: Option<PgPool>,
    config_specs: Vec<ScheduleSpec>,
    schedules: Vec<Schedule>,
    /// Per schedule: the last tick handled by this replica.
    cursors: HashMap<String, DateTime<Utc>>,
    /// Where each pass is reported (`/readyz` fails when passes stop).
    progress: Option<(fleet_jobs::health::Tasks, String)>,
}

impl std::fmt::Debug for Ticker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticker").field("schedules", &self.schedules.len()).finish()
    }
}

/// The unique key of one tick.
pub fn tick_key(schedule: &str, tick: DateTime<Utc>) -> String {
    format!("schedule:{schedule}:{}", tick.timestamp_millis())
}

impl Ticker {
    /// A ticker over the config file's schedules and, with a database, the `schedules` table.
    pub fn new(client: Client, db: Option<PgPool>, config_specs: Vec<ScheduleSpec>) -> Self {
        Ticker { client, db, config_specs, schedules: Vec::new(), cursors: HashMap::new(), progress: None }
    }

    /// The same ticker, reporting each pass of [`run`] to `tasks` as `name`'s progress.
    pub fn with_progress(mut self, tasks: fleet_jobs::health::Tasks, name: &str) -> Self {
        self.progress = Some((tasks, name.to_owned()));
        self
    }

    /// The schedules in force.
    pub fn schedules(&self) -> &[Schedule] {
        &self.schedules
    }

    /// Reads the schedules again (config, then PostgreSQL, which wins on a name clash).
    /// A schedule that does not parse is skipped and its error recorded.
    pub async fn reload(&mut self) -> Vec<String> {
        let mut specs: HashMap<String, ScheduleSpec> =
            self.config_specs.iter().map(|s| (s.name.clone(), s.clone())).collect();
        let mut errors = Vec::new();
        if let Some(db) = &self.db {
            match load_specs(db).await {
                Ok(rows) => {
                    for s in rows {
                        specs.insert(s.name.clone(), s);
                    }
                }
                Err(e) => errors.push(format!("reading schedules from PostgreSQL: {e}")),
            }
        }
        // Paused by an operator (fleetctl pause-schedule, the admin API).
        if let Some(db) = &self.db {
            match sqlx::query_scalar::<_, String>("SELECT name FROM schedule_state WHERE paused").fetch_all(db).await {
                Ok(paused) => {
                    for name in paused {
                        if let Some(s) = specs.get_mut(&name) {
                            s.paused = true;
                        }
                    }
                }
                Err(e) => errors.push(format!("reading paused schedules: {e}")),
            }
        }
        let mut parsed = Vec::new();
        for (name, spec) in specs {
            match Schedule::parse(spec) {
                Ok(s) => parsed.push(s),
                Err(e) => {
                    self.record_error(&name, &e).await;
                    errors.push(e);
                }
            }
        }
        parsed.sort_by(|a, b| a.name().cmp(b.name()));
        self.cursors.retain(|name, _| parsed.iter().any(|s| s.name() == name));
        self.schedules = parsed;
        for e in &errors {
            tracing::warn!(error = %e, "schedule skipped");
        }
        errors
    }

    /// Enqueues every tick due at `now` that this replica has not handled yet, and a sync
    /// of every source due at `now`.
    pub async fn tick(&mut self, now: DateTime<Utc>) -> TickReport {
        let mut report = TickReport::default();
        for i in 0..self.schedules.len() {
            let s = self.schedules[i].clone();
            let name = s.name().to_owned();
            let (mut cursor, mut missed) = match self.cursors.get(&name) {
                Some(c) => (*c, 0),
                None => self.initial_cursor(&s, now).await,
            };
            if s.spec.paused {
                missed += s.ticks(cursor, now, MAX_TICKS_PER_PASS).len() as u64;
                cursor = now;
            } else {
                for tick in s.ticks(cursor, now, MAX_TICKS_PER_PASS) {
                    match self.enqueue(&s, tick).await {
                        Ok(()) => {
                            cursor = tick;
                            report.enqueued.push((name.clone(), tick));
                        }
                        Err(e) => {
                            // Try this tick again on the next pass; other schedules go on.
                            let msg = format!("schedule {name:?}: enqueue of the {tick} tick failed: {e}");
                            tracing::warn!(error = %msg, "tick not enqueued yet");
                            report.errors.push(msg);
                            break;
                        }
                    }
                }
            }
            let fired = report.enqueued.iter().filter(|(n, _)| *n == name).map(|(_, t)| *t).max();
            self.cursors.insert(name.clone(), cursor);
            report.missed += missed;
            if fired.is_some() || missed > 0 {
                metrics::counter!("fleet_schedule_ticks_total", "schedule" => name.clone())
                    .increment(report.enqueued.iter().filter(|(n, _)| *n == name).count() as u64);
                if missed > 0 {
                    metrics::counter!("fleet_schedule_missed_ticks_total", "schedule" => name.clone())
                        .increment(missed);
                }
                self.record_state(&s, fired, missed, now).await;
            }
        }
        if let Some(db) = &self.db {
            let before = report.errors.len();
            for table in fleet_accounts::sources::SourceTable::ALL {
                match fleet_accounts::sources::enqueue_due(db, &self.client, table, now, &mut report.errors).await {
                    Ok(done) => report.sources.extend(done),
                    Err(e) => report.errors.push(format!("enqueueing due syncs of {}: {e}", table.table())),
                }
            }
            match renew_channels(db, &self.client, now).await {
                Ok(due) => report.channels = due,
                Err(e) => report.errors.push(format!("asking for push channel renewals: {e}")),
            }
            for e in &report.errors[before..] {
                tracing::warn!(error = %e, "source sync not enqueued yet");
            }
        }
        report
    }

    /// When the next tick of any schedule is due (at most one second away, so edits
    /// in PostgreSQL are seen promptly).
    pub fn next_wake(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let cap = now + chrono::Duration::seconds(1);
        self.schedules
            .iter()
            .filter(|s| !s.spec.paused)
            .filter_map(|s| s.next_after(*self.cursors.get(s.name()).unwrap_or(&now)))
            .min()
            .map_or(cap, |t| t.min(cap))
    }

    async fn enqueue(&self, s: &Schedule, tick: DateTime<Utc>) -> fleet_jobs::Result<()> {
        let opts = EnqueueOptions {
            run_at: Some(std::time::UNIX_EPOCH + Duration::from_millis(tick.timestamp_millis().max(0) as u64)),
            unique: Some(Unique { key: tick_key(s.name(), tick), window: s.catch_up() + Duration::from_secs(3600) }),
            ..Default::default()
        };
        enqueue_job(&self.client, s, opts).await.map(|_| ())
    }

    /// Where a replica that has not handled `s` yet starts: now (skip), or the start of
    /// the catch-up window; ticks between the last fired one and that point are missed.
    async fn initial_cursor(&self, s: &Schedule, now: DateTime<Utc>) -> (DateTime<Utc>, u64) {
        let last = match &self.db {
            Some(db) => sqlx::query_scalar::<_, Option<DateTime<Utc>>>(
                "SELECT last_fired_at FROM schedule_state WHERE name = $1",
            )
            .bind(s.name())
            .fetch_optional(db)
            .await
            .ok()
            .flatten()
            .flatten(),
            None => None,
        };
        let Some(last) = last else { return (now, 0) };
        let start = match s.spec.missed {
            Missed::Skip => now,
            Missed::CatchUp => {
                let window = chrono::Duration::from_std(s.catch_up()).unwrap_or_default();
                last.max(now - window)
            }
        };
        let missed = if start > last { s.ticks(last, start, 100_000).len() as u64 } else { 0 };
        (start.max(last), missed)
    }

    async fn record_state(&self, s: &Schedule, fired: Option<DateTime<Utc>>, missed: u64, now: DateTime<Utc>) {
        let Some(db) = &self.db else { return };
        let next = s.next_after(now);
        let r = sqlx::query(
            "INSERT INTO schedule_state (name, last_fired_at, next_fire_at, missed_ticks, last_error, updated_at)
             VALUES ($1, $2, $3, $4, NULL, now())
             ON CONFLICT (name) DO UPDATE SET
               last_fired_at = GREATEST(schedule_state.last_fired_at, EXCLUDED.last_fired_at),
               next_fire_at = EXCLUDED.next_fire_at,
               missed_ticks = schedule_state.missed_ticks + EXCLUDED.missed_ticks,
               last_error = CASE WHEN EXCLUDED.last_fired_at IS NULL THEN schedule_state.last_error ELSE NULL END,
               updated_at = now()",
        )
        .bind(s.name())
        .bind(fired)
        .bind(next)
        .bind(missed as i64)
        .execute(db)
        .await;
        if let Err(e) = r {
            tracing::warn!(schedule = %s.name(), error = %e, "could not record the schedule's state");
        }
    }

    async fn record_error(&self, name: &str, error: &str) {
        let Some(db) = &self.db else { return };
        let _ = sqlx::query(
            "INSERT INTO schedule_state (name, last_error) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET last_error = EXCLUDED.last_error, updated_at = now()",
        )
        .bind(name)
        .bind(error)
        .execute(db)
        .await;
    }
}

/// Most channel renewals asked for in one pass.
const RENEWALS_PER_PASS: i64 = 200;

/// Enqueues a sync of each source whose push channel is due for renewal (one pending sync
/// per source, shared with "sync now"), for the tenant stored with the channel.
async fn renew_channels(
    db: &PgPool,
    client: &Client,
    now: DateTime<Utc>,
) -> Result<Vec<fleet_calendar::store::channels::DueChannel>, String> {
    let due =
        fleet_calendar::store::channels::claim_due(db, now, RENEWALS_PER_PASS).await.map_err(|e| e.to_string())?;
    for d in &due {
        fleet_accounts::sources::enqueue_sync(
            client,
            fleet_accounts::sources::SourceTable::Calendar,
            &d.tenant,
            &d.source_id,
            true,
        )
        .await
        .map_err(|e| format!("sync of {} for its push channel: {e}", d.source_id))?;
        tracing::info!(source = %d.source_id, channel = %d.channel, "push channel due for renewal: sync enqueued");
    }
    Ok(due)
}

/// Enqueues `s`'s job with `opts` (its queue, priority and attempts filled in).
async fn enqueue_job(client: &Client, s: &Schedule, opts: EnqueueOptions) -> fleet_jobs::Result<fleet_jobs::JobId> {
    let kind = fleet_jobs::catalogue::lookup(&s.spec.kind)
        .ok_or_else(|| fleet_jobs::Error::Invalid(format!("unknown kind {:?}", s.spec.kind)))?;
    let args =
        serde_json::value::to_raw_value(&s.spec.args).map_err(|e| fleet_jobs::Error::Invalid(format!("args: {e}")))?;
    let dedup = s.spec.dedup.as_ref().map(|d| d.to_dedup()).transpose().map_err(fleet_jobs::Error::Invalid)?;
    // A debounced tick starts after the debounce delay, not at its tick time.
    let debounced = matches!(dedup, Some(fleet_jobs::Dedup { mode: fleet_jobs::DedupMode::Debounce { .. }, .. }));
    let opts = EnqueueOptions {
        queue: s.spec.queue.clone(),
        priority: s.spec.priority,
        max_attempts: s.spec.max_attempts,
        run_at: if debounced { None } else { opts.run_at },
        dedup,
        ..opts
    };
    client.enqueue_raw(&s.spec.kind, args, &(kind.options)(), opts).await
}

/// Enqueues one run of `s` now, outside its ticks (run-now: no unique key, so each call
/// is one job; the API's `Idempotency-Key` makes a retried request one run).
pub async fn run_now(client: &Client, s: &Schedule) -> fleet_jobs::Result<fleet_jobs::JobId> {
    enqueue_job(client, s, EnqueueOptions::default()).await
}

/// The schedule named `name` in the `schedules` table.
pub async fn load_spec(db: &PgPool, name: &str) -> Result<Option<ScheduleSpec>, sqlx::Error> {
    Ok(load_specs_where(db, Some(name)).await?.into_iter().next())
}

/// Writes `spec` into the `schedules` table: a new row (`replace = false`; answers false
/// when the name is taken) or over an existing one (`replace = true`; false when none).
pub async fn store_spec(db: &PgPool, spec: &ScheduleSpec, replace: bool) -> Result<bool, sqlx::Error> {
    let priority = spec.priority.and_then(|p| serde_json::to_value(p).ok()).and_then(|v| v.as_str().map(str::to_owned));
    let missed = match spec.missed {
        Missed::Skip => "skip",
        Missed::CatchUp => "catch_up",
    };
    let sql = if replace {
        "UPDATE schedules SET cron = $2, timezone = $3, kind = $4, args = $5, queue = $6, priority = $7,
                max_attempts = $8, missed = $9, catch_up_secs = $10, paused = $11, dedup = $12, updated_at = now()
          WHERE name = $1"
    } else {
        "INSERT INTO schedules (name, cron, timezone, kind, args, queue, priority, max_attempts, missed, catch_up_secs, paused, dedup)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (name) DO NOTHING"
    };
    let r = sqlx::query(sql)
        .bind(&spec.name)
        .bind(&spec.cron)
        .bind(&spec.timezone)
        .bind(&spec.kind)
        .bind(&spec.args)
        .bind(&spec.queue)
        .bind(priority)
        .bind(spec.max_attempts.map(|m| m.min(i32::MAX as u32) as i32))
        .bind(missed)
        .bind(spec.catch_up_secs.min(i64::MAX as u64) as i64)
        .bind(spec.paused)
        .bind(spec.dedup.as_ref().and_then(|d| serde_json::to_value(d).ok()))
        .execute(db)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Deletes the schedule `name` from the `schedules` table with its state; false when none.
pub async fn delete_spec(db: &PgPool, name: &str) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    let r = sqlx::query("DELETE FROM schedules WHERE name = $1").bind(name).execute(&mut *tx).await?;
    if r.rows_affected() == 1 {
        sqlx::query("DELETE FROM schedule_state WHERE name = $1").bind(name).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(r.rows_affected() == 1)
}

async fn load_specs(db: &PgPool) -> Result<Vec<ScheduleSpec>, sqlx::Error> {
    load_specs_where(db, None).await
}

async fn load_specs_where(db: &PgPool, name: Option<&str>) -> Result<Vec<ScheduleSpec>, sqlx::Error> {
    type Row = (
        String,
        String,
        String,
        String,
        serde_json::Value,
        Option<String>,
        Option<String>,
        Option<i32>,
        String,
        i64,
        bool,
        Option<serde_json::Value>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT name, cron, timezone, kind, args, queue, priority, max_attempts, missed, catch_up_secs, paused, dedup FROM schedules
          WHERE $1::text IS NULL OR name = $1",
    )
    .bind(name)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, cron, timezone, kind, args, queue, priority, max_attempts, missed, catch_up, paused, dedup)| {
            ScheduleSpec {
                name,
                cron,
                timezone,
                kind,
                args,
                queue,
                priority: priority.and_then(|p| serde_json::from_value(serde_json::Value::String(p)).ok()),
                max_attempts: max_attempts.map(|m| m.max(1) as u32),
                missed: if missed == "catch_up" { Missed::CatchUp } else { Missed::Skip },
                catch_up_secs: catch_up.max(0) as u64,
                paused,
                dedup: dedup.and_then(|d| serde_json::from_value(d).ok()),
            }
        })
        .collect())
}

/// Runs `ticker` until `shutdown`: reloads schedules every 5 s, enqueues due ticks,
/// sleeps until the next one.
pub async fn run(mut ticker: Ticker, shutdown: tokio_util::sync::CancellationToken) {
    let mut last_reload = None::<std::time::Instant>;
    loop {
        if last_reload.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
            ticker.reload().await;
            last_reload = Some(std::time::Instant::now());
        }
        let report = ticker.tick(Utc::now()).await;
        for (name, tick) in &report.enqueued {
            tracing::debug!(schedule = %name, %tick, "tick enqueued");
        }
        if let Some((tasks, name)) = &ticker.progress {
            tasks.beat(name);
        }
        let wake = ticker.next_wake(Utc::now());
        let wait = (wake - Utc::now()).to_std().unwrap_or(Duration::ZERO).max(Duration::from_millis(5));
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Pauses (or resumes) a schedule by name, whether it comes from the config file or the
/// `schedules` table; every replica sees it at its next reload (within 5 s).
pub async fn set_paused(db: &PgPool, name: &str, paused: bool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO schedule_state (name, paused) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET paused = EXCLUDED.paused, updated_at = now()",
    )
    .bind(name)
    .bind(paused)
    .execute(db)
    .await
    .map(|_| ())
}
