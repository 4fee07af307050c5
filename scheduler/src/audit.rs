//! The audit log: every change an operator or admin makes, through the admin API,
//! `fleetctl` or `fleet-scheduler create-api-key`/`revoke-api-key`, recorded in
//! PostgreSQL (`admin_audit`) with who (a key id, or `fleetctl:<user>`/`cli:<user>`;
//! never a secret), the key's tenant, the action, its target, the filter or parameters,
//! how many items it affected and when. Entries are kept 90 days by default
//! (`[retention] audit_days`), deleted in bounded batches by the retention task
//! ([`crate::retention`]), like every other growing table.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// Most entries in one page of [`list`].
pub const MAX_PAGE: i64 = 500;

/// One change to record.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    /// A key id, or `fleetctl:<user>` / `cli:<user>`.
    pub actor: &'a str,
    /// The tenant of the key (none for the command lines).
    pub tenant: Option<&'a str>,
    /// What, e.g. `queue.replay`, `schedule.create`, `api_key.revoke`.
    pub action: &'a str,
    /// On what, e.g. `queue:default`, `schedule:nightly`, `key:3f9a…`.
    pub target: String,
    /// The filter or parameters.
    pub params: serde_json::Value,
    /// How many items it affected.
    pub affected: i64,
}

/// One recorded entry.
#[derive(Debug, Clone, Serialize, serde::Deserialize, sqlx::FromRow, PartialEq)]
pub struct Entry {
    /// Increasing id (pages go by it, newest first).
    pub id: i64,
    /// Who.
    pub actor: String,
    /// The tenant of the key.
    pub tenant: Option<String>,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// The filter or parameters.
    pub params: serde_json::Value,
    /// How many items it affected.
    pub affected: i64,
    /// When.
    pub at: DateTime<Utc>,
}

/// Records `change`.
pub async fn record(db: &PgPool, change: Change<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO admin_audit (actor, tenant, action, target, params, affected) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(change.actor)
    .bind(change.tenant)
    .bind(change.action)
    .bind(&change.target)
    .bind(&change.params)
    .bind(change.affected)
    .execute(db)
    .await?;
    Ok(())
}

/// Records `change`; a failure is logged (the change itself is done and stays done).
pub async fn record_or_log(db: &PgPool, change: Change<'_>) {
    let (action, target) = (change.action.to_owned(), change.target.clone());
    if let Err(e) = record(db, change).await {
        tracing::error!(%action, %target, error = %e, "could not write the audit entry");
    }
}

/// Which entries [`list`] answers.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Query {
    /// Only this action.
    #[serde(default)]
    pub action: Option<String>,
    /// Only entries at or after this time.
    #[serde(default)]
    pub since: Option<DateTime<Utc>>,
    /// Only entries with an id below this (the previous page's `next`).
    #[serde(default)]
    pub before: Option<i64>,
    /// Entries per page (100 by default, [`MAX_PAGE`] at most).
    #[serde(default)]
    pub limit: Option<i64>,
}

/// A page of entries, newest first, and the `before` of the next page (none: the last).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Page {
    /// The entries.
    pub entries: Vec<Entry>,
    /// Pass as `before` for the next page.
    pub next: Option<i64>,
}

/// The entries matching `q`, newest first.
pub async fn list(db: &PgPool, q: &Query) -> Result<Page, sqlx::Error> {
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let entries: Vec<Entry> = sqlx::query_as(
        "SELECT id, actor, tenant, action, target, params, affected, at FROM admin_audit
          WHERE ($1::text IS NULL OR action = $1) AND ($2::timestamptz IS NULL OR at >= $2)
            AND ($3::bigint IS NULL OR id < $3)
          ORDER BY id DESC LIMIT $4",
    )
    .bind(&q.action)
    .bind(q.since)
    .bind(q.before)
    .bind(limit)
    .fetch_all(db)
    .await?;
    let next = (entries.len() as i64 == limit).then(|| entries.last().map(|e| e.id)).flatten();
    Ok(Page { entries, next })
}

/// Who runs a command line: `<tool>:<$USER>` (`<tool>:unknown` when unset).
pub fn local_actor(tool: &str) -> String {
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    format!("{tool}:{user}")
}
