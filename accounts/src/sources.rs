//! What calendar and comms sources share, for the HTTP API, `fleetctl` and the ticker:
//! the errors of the source stores, schedules, sealing a source's secret, and enqueueing
//! a source's sync (one pending sync per source).
//!
//! Every store function takes the tenant as `Option<&str>`: the API passes its caller's
//! tenant (a source of another tenant is "not found"), `fleetctl` may pass none (the
//! operator sees every tenant).

use crate::cron::SourceCron;
use crate::secrets::SecretBox;
use chrono::{DateTime, Utc};
use fleet_jobs::catalogue::{CalendarSync, CommsSync};
use fleet_jobs::{Client, EnqueueOptions, JobArgs, JobId, JobState, Unique};
use serde::Serialize;
use sqlx::PgPool;
use std::time::Duration;
use utoipa::ToSchema;

/// Why a source operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request is not valid (a message for the caller).
    #[error("{0}")]
    Invalid(String),
    /// The schedule is not a five-field cron expression.
    #[error("{0}")]
    BadSchedule(String),
    /// No such source (for this tenant).
    #[error("{0}")]
    NotFound(String),
    /// The source is not in a state that allows this.
    #[error("{0}")]
    Conflict(String),
    /// A secret was given but `FLEET_SECRETS_KEY` is not set.
    #[error("secrets cannot be stored: {0}")]
    NoKey(crate::secrets::SecretError),
    /// Sealing failed.
    #[error("sealing a secret failed: {0}")]
    Seal(crate::secrets::SecretError),
    /// PostgreSQL failed.
    #[error("PostgreSQL: {0}")]
    Db(#[from] sqlx::Error),
    /// The job store failed.
    #[error("{0}")]
    Jobs(#[from] fleet_jobs::Error),
}

/// The two kinds of source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceTable {
    /// `calendar_sources`, synced by `calendar.sync` jobs.
    Calendar,
    /// `comms_sources`, synced by `comms.sync` jobs.
    Comms,
}

impl SourceTable {
    /// Both, in the order the ticker handles them.
    pub const ALL: [SourceTable; 2] = [SourceTable::Calendar, SourceTable::Comms];

    /// The table.
    pub fn table(self) -> &'static str {
        match self {
            SourceTable::Calendar => "calendar_sources",
            SourceTable::Comms => "comms_sources",
        }
    }

    /// The schedule of a source registered without one.
    pub fn default_schedule(self) -> &'static str {
        match self {
            SourceTable::Calendar => "*/15 * * * *",
            SourceTable::Comms => "*/5 * * * *",
        }
    }

    /// The kind of its sync jobs.
    pub fn job_kind(self) -> &'static str {
        match self {
            SourceTable::Calendar => CalendarSync::KIND,
            SourceTable::Comms => CommsSync::KIND,
        }
    }
}

/// Where a source's syncs stand: what calendar and comms sources both record.
#[derive(Debug, Serialize, ToSchema)]
pub struct SyncStatus {
    /// Five-field cron expression (UTC) of its syncs.
    pub schedule: String,
    /// When the scheduler enqueues its next sync.
    pub next_sync_at: DateTime<Utc>,
    /// When the source was registered.
    pub created_at: DateTime<Utc>,
    /// The last sync, applied or not.
    pub last_sync_at: Option<DateTime<Utc>>,
    /// The last sync that succeeded.
    pub last_ok_at: Option<DateTime<Utc>>,
    /// What went wrong last.
    pub last_error: Option<String>,
    /// What the last sync did.
    #[schema(value_type = Object)]
    pub last_report: Option<serde_json::Value>,
}

impl SyncStatus {
    /// The columns it is read from, for a source table's SELECT.
    pub const COLUMNS: &str = "schedule, next_sync_at, created_at, last_sync_at, last_ok_at, last_error, last_report";

    /// Reads it from a row selected with [`SyncStatus::COLUMNS`].
    pub fn from_row(r: &sqlx::postgres::PgRow) -> SyncStatus {
        use sqlx::Row;
        SyncStatus {
            schedule: r.get("schedule"),
            next_sync_at: r.get("next_sync_at"),
            created_at: r.get("created_at"),
            last_sync_at: r.get("last_sync_at"),
            last_ok_at: r.get("last_ok_at"),
            last_error: r.get("last_error"),
            last_report: r.get("last_report"),
        }
    }
}

/// A page of a list: `limit` rows (1 to [`ListPage::MAX`], default [`ListPage::DEFAULT`])
/// after skipping `offset`.
#[derive(Debug, Default, Clone, serde::Deserialize, utoipa::IntoParams)]
pub struct ListPage {
    /// Rows per page (1 to 500, default 100).
    pub limit: Option<i64>,
    /// Rows to skip (default 0).
    pub offset: Option<i64>,
}

impl ListPage {
    /// Default rows per page.
    pub const DEFAULT: i64 = 100;
    /// Most rows per page.
    pub const MAX: i64 = 500;

    /// `(limit, offset)`, checked.
    pub fn bounds(&self) -> Result<(i64, i64), StoreError> {
        let limit = self.limit.unwrap_or(Self::DEFAULT);
        if !(1..=Self::MAX).contains(&limit) {
            return Err(StoreError::Invalid(format!("limit must be 1 to {}", Self::MAX)));
        }
        let offset = self.offset.unwrap_or(0);
        if offset < 0 {
            return Err(StoreError::Invalid("offset must be 0 or more".into()));
        }
        Ok((limit, offset))
    }
}

/// The schedule to store: `schedule`, checked, or the table's default.
pub fn check_schedule(table: SourceTable, schedule: Option<&str>) -> Result<String, StoreError> {
    let expr = schedule.map(str::trim).unwrap_or(table.default_schedule());
    SourceCron::parse(expr).map_err(StoreError::BadSchedule)?;
    Ok(expr.to_owned())
}

/// Seals `password` for source `id`; an error when no key is configured.
pub fn seal(secrets: Option<&SecretBox>, id: &str, password: &str) -> Result<String, StoreError> {
    let secrets = secrets.ok_or(StoreError::NoKey(crate::secrets::SecretError::NoKey))?;
    secrets.seal(id, password).map_err(StoreError::Seal)
}

/// The tenant of source `id` (restricted to `tenant` when given), or not found.
pub async fn source_tenant(
    db: &PgPool,
    table: SourceTable,
    tenant: Option<&str>,
    id: &str,
) -> Result<String, StoreError> {
    let sql = format!("SELECT tenant FROM {} WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)", table.table());
    let found: Option<String> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(id).bind(tenant).fetch_optional(db).await?;
    found.ok_or_else(|| StoreError::NotFound(format!("no source {id}")))
}

/// Deletes source `id` (restricted to `tenant` when given) in `tx` and returns its tenant,
/// or not found; its dependent rows are the caller's to remove in the same transaction.
pub async fn delete_row(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    table: SourceTable,
    tenant: Option<&str>,
    id: &str,
) -> Result<String, StoreError> {
    let sql =
        format!("DELETE FROM {} WHERE id = $1 AND ($2::text IS NULL OR tenant = $2) RETURNING tenant", table.table());
    let owner: Option<String> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(id).bind(tenant).fetch_optional(&mut **tx).await?;
    owner.ok_or_else(|| StoreError::NotFound(format!("no source {id}")))
}

/// How long a source's sync job holds its unique key: a second sync asked for within
/// this window gets the first one's id instead of a second job, while that one is pending.
pub const SYNC_UNIQUE_WINDOW: Duration = Duration::from_secs(60);

/// How many finished (or running) syncs of one source inside [`SYNC_UNIQUE_WINDOW`] a
/// unique enqueue steps past before it enqueues without a key (see [`enqueue_sync`]).
const SYNC_CHAIN_MAX: usize = 8;

/// Enqueues a sync of `tenant`'s source `id`. With `unique`, one pending sync per source:
/// while a sync of it is waiting to run (ready, scheduled or waiting to retry), that job's
/// id comes back instead of a second job (key `<kind>:<id>`: the API, `fleetctl` and the
/// ticker share it). A sync that is running or finished does not count: it may have read
/// the calendar before the change the caller wants synced, so a new one is enqueued. The
/// engine's unique key outlives its job (it holds [`SYNC_UNIQUE_WINDOW`] from the enqueue),
/// so the next job's key is chained after the finished one's id (`<kind>:<id>:after:<job>`),
/// which every caller derives the same way and so still finds the one pending job.
pub async fn enqueue_sync(
    client: &Client,
    table: SourceTable,
    tenant: &str,
    id: &str,
    unique: bool,
) -> Result<JobId, fleet_jobs::Error> {
    async fn one<A: JobArgs>(
        client: &Client,
        tenant: &str,
        id: &str,
        args: A,
        unique: bool,
    ) -> fleet_jobs::Result<JobId> {
        let opts = |unique: Option<Unique>, job: JobId| EnqueueOptions {
            tenant: Some(tenant.to_owned()),
            unique,
            id: Some(job),
            ..Default::default()
        };
        if !unique {
            return client.enqueue_with(&args, opts(None, JobId::new())).await;
        }
        let queue = A::options().queue;
        let mut key = format!("{}:{id}", A::KIND);
        for _ in 0..SYNC_CHAIN_MAX {
            let ours = JobId::new();
            let holder = client
                .enqueue_with(&args, opts(Some(Unique { key, window: SYNC_UNIQUE_WINDOW }), ours.clone()))
                .await?;
            if holder == ours {
                return Ok(holder);
            }
            match client.job_state(&queue, holder.as_str()).await? {
                Some(JobState::Ready | JobState::Scheduled | JobState::Retrying) => return Ok(holder),
                _ => key = format!("{}:{id}:after:{holder}", A::KIND),
            }
        }
        client.enqueue_with(&args, opts(None, JobId::new())).await
    }
    let source_id = id.to_owned();
    match table {
        SourceTable::Calendar => one(client, tenant, id, CalendarSync { source_id }, unique).await,
        SourceTable::Comms => one(client, tenant, id, CommsSync { source_id }, unique).await,
    }
}

/// Syncs source `id` now (404 when `tenant` has no such source): see [`enqueue_sync`].
pub async fn sync_now(
    db: &PgPool,
    client: &Client,
    table: SourceTable,
    tenant: Option<&str>,
    id: &str,
) -> Result<JobId, StoreError> {
    let owner = source_tenant(db, table, tenant, id).await?;
    Ok(enqueue_sync(client, table, &owner, id, true).await?)
}

/// A sync the ticker enqueued because the source's schedule was due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueSync {
    /// Which kind of source.
    pub table: SourceTable,
    /// The source.
    pub source: String,
    /// Its sync job (an earlier one's while that one is still pending).
    pub job: String,
    /// When the next one is due.
    pub next_sync_at: DateTime<Utc>,
}

/// Most sources claimed per table in one pass.
pub const MAX_DUE_PER_PASS: i64 = 200;

/// Enqueues a sync of every source of `table` due at `now` and moves each one's
/// `next_sync_at` to its schedule's next time after `now` (missed times are not caught
/// up). Rows are claimed `FOR UPDATE SKIP LOCKED` in one transaction and only moved on
/// once enqueued, so replicas running this at once enqueue each due sync once, and a
/// failed enqueue is tried again on the next pass.
pub async fn enqueue_due(
    db: &PgPool,
    client: &Client,
    table: SourceTable,
    now: DateTime<Utc>,
    errors: &mut Vec<String>,
) -> Result<Vec<DueSync>, sqlx::Error> {
    let mut tx = db.begin().await?;
    let claim = format!(
        "SELECT id, tenant, schedule FROM {} WHERE next_sync_at <= $1 ORDER BY next_sync_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        table.table()
    );
    let due: Vec<(String, String, String)> =
        sqlx::query_as(sqlx::AssertSqlSafe(claim)).bind(now).bind(MAX_DUE_PER_PASS).fetch_all(&mut *tx).await?;
    let mut done = Vec::new();
    for (id, tenant, schedule) in due {
        // A schedule stored by hand that does not parse falls back to the default.
        let cron = SourceCron::parse(&schedule).unwrap_or_else(|e| {
            errors.push(format!("{} {id}: {e}; using {:?}", table.table(), table.default_schedule()));
            SourceCron::parse(table.default_schedule()).expect("the default schedules parse")
        });
        let next = cron.next_after(now).unwrap_or(now + chrono::Duration::minutes(15));
        match enqueue_sync(client, table, &tenant, &id, true).await {
            Ok(job) => done.push(DueSync { table, source: id, job: job.to_string(), next_sync_at: next }),
            Err(e) => errors.push(format!("{} {id}: enqueueing its sync failed: {e}", table.table())),
        }
    }
    if !done.is_empty() {
        let ids: Vec<&str> = done.iter().map(|d| d.source.as_str()).collect();
        let nexts: Vec<DateTime<Utc>> = done.iter().map(|d| d.next_sync_at).collect();
        let advance = format!(
            "UPDATE {} AS s SET next_sync_at = u.next FROM UNNEST($1::text[], $2::timestamptz[]) AS u(id, next) WHERE s.id = u.id",
            table.table()
        );
        sqlx::query(sqlx::AssertSqlSafe(advance)).bind(&ids).bind(&nexts).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    if !done.is_empty() {
        metrics::counter!("fleet_source_syncs_scheduled_total", "kind" => table.job_kind())
            .increment(done.len() as u64);
    }
    Ok(done)
}

/// A page of `table`'s sources that have a secret, by id after `after`: `(id, stored
/// secret)`. Every tenant's: for `fleet-scheduler reseal-secrets`, an operator's tool.
pub async fn sealed_secrets_after(
    db: &PgPool,
    table: SourceTable,
    after: &str,
    limit: i64,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let sql =
        format!("SELECT id, secret FROM {} WHERE id > $1 AND secret IS NOT NULL ORDER BY id LIMIT $2", table.table());
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(after).bind(limit).fetch_all(db).await
}

/// Replaces source `id`'s secret with `new` if it is still `old` (a sync that refreshed it
/// meanwhile wins); whether it was replaced.
pub async fn swap_secret(db: &PgPool, table: SourceTable, id: &str, old: &str, new: &str) -> Result<bool, sqlx::Error> {
    let sql = format!("UPDATE {} SET secret = $3 WHERE id = $1 AND secret = $2", table.table());
    let done = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(old).bind(new).execute(db).await?;
    Ok(done.rows_affected() == 1)
}
