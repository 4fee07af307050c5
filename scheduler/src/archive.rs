//! The archive of finished jobs in PostgreSQL (`job_archive`): what the admin API,
//! `fleetctl archive` and the dashboard search once Redis's retention has removed a job.
//!
//! ## Layout
//!
//! * Types: [`ArchivedJob`] (a whole row), [`ArchivedSummary`] (a row as listed),
//!   [`Search`] (the filters), [`ArchivePage`] (a page and the cursor of the next).
//! * [`insert`]: one multi-row `INSERT ... SELECT FROM UNNEST(...)` per batch, idempotent on
//!   (queue, id, attempt, finished_at): every field of the key comes from the ending itself.
//! * [`search`] and [`get`]: the reads. Pages go newest first by (finished_at, seq) with a
//!   keyset cursor, so page 1,000 costs what page 1 does; each filter has an index ending in
//!   that order, and `q` (text in args or error) uses the trigram index.
//! * The drain from Redis is [`crate::archiver`]; pruning is [`crate::retention`].

use chrono::{DateTime, TimeZone as _, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};

/// Most rows in one page of [`search`].
pub const MAX_PAGE: i64 = 500;
/// Rows in a page when the caller does not say.
pub const DEFAULT_PAGE: i64 = 50;
/// Shortest text a search by `q` accepts (trigrams need three characters to use the index).
pub const MIN_TEXT: usize = 3;
/// Longest text a search by `q` accepts.
pub const MAX_TEXT: usize = 200;
/// Characters of the error kept in a listed row.
const LISTED_ERROR_CHARS: i32 = 300;
/// Characters of the arguments (as JSON text) kept in a listed row.
const LISTED_ARGS_CHARS: i32 = 200;

/// How a finished job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FinalState {
    /// Finished successfully.
    Succeeded,
    /// Ran out of attempts or gave up (a dead letter).
    Dead,
    /// Cancelled before it finished.
    Cancelled,
    /// Not started before its deadline.
    Expired,
}

impl FinalState {
    /// Every final state.
    pub const ALL: [FinalState; 4] =
        [FinalState::Succeeded, FinalState::Dead, FinalState::Cancelled, FinalState::Expired];

    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            FinalState::Succeeded => "succeeded",
            FinalState::Dead => "dead",
            FinalState::Cancelled => "cancelled",
            FinalState::Expired => "expired",
        }
    }

    /// The state named `s`; `None` for any other text.
    pub fn parse(s: &str) -> Option<FinalState> {
        FinalState::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

/// A finished job as archived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct ArchivedJob {
    /// The tenant that enqueued it (none: Fleet's own jobs).
    pub tenant: Option<String>,
    /// Queue (a partitioned queue's name, not its partition's).
    pub queue: String,
    /// Job id.
    pub id: String,
    /// Attempts started when it finished (0: cancelled before it ran).
    pub attempt: i32,
    /// Kind.
    pub kind: String,
    /// How it ended: `succeeded`, `dead`, `cancelled` or `expired`.
    pub state: String,
    /// Its arguments.
    pub args: serde_json::Value,
    /// The result it recorded, if any.
    pub result: Option<serde_json::Value>,
    /// The last attempt's error, if any.
    pub error: Option<String>,
    /// The progress it last reported, if any.
    pub progress: Option<serde_json::Value>,
    /// Its failed attempts (when, which worker, how long, error), oldest first.
    pub history: serde_json::Value,
    /// The batch it belonged to, if any.
    pub batch: Option<String>,
    /// When it was enqueued.
    pub enqueued_at: Option<DateTime<Utc>>,
    /// When its first recorded attempt started (known for jobs that failed at least once).
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
    /// When it was copied into the archive.
    pub archived_at: DateTime<Utc>,
}

/// A finished job as listed: the big fields cut short.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct ArchivedSummary {
    /// The tenant that enqueued it.
    pub tenant: Option<String>,
    /// Queue.
    pub queue: String,
    /// Job id.
    pub id: String,
    /// Attempts started when it finished.
    pub attempt: i32,
    /// Kind.
    pub kind: String,
    /// `succeeded`, `dead`, `cancelled` or `expired`.
    pub state: String,
    /// The first 200 characters of its arguments as JSON text.
    pub args_preview: String,
    /// The first 300 characters of the last error, if any.
    pub error: Option<String>,
    /// When it was enqueued.
    pub enqueued_at: Option<DateTime<Utc>>,
    /// When its first recorded attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
}

/// Which archived jobs [`search`] answers (every filter optional, all combined).
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Search {
    /// Only this queue.
    #[serde(default)]
    pub queue: Option<String>,
    /// Only this final state: `succeeded`, `dead`, `cancelled` or `expired`.
    #[serde(default)]
    pub state: Option<String>,
    /// Only this kind.
    #[serde(default)]
    pub kind: Option<String>,
    /// Only this tenant (for a tenant's own key, always its own).
    #[serde(default)]
    pub tenant: Option<String>,
    /// Text contained in the arguments (as JSON text) or the error, case-insensitive; 3 to
    /// 200 characters.
    #[serde(default)]
    pub q: Option<String>,
    /// Only jobs finished at or after this time (RFC 3339).
    #[serde(default)]
    pub from: Option<DateTime<Utc>>,
    /// Only jobs finished before this time (RFC 3339).
    #[serde(default)]
    pub to: Option<DateTime<Utc>>,
    /// The `next` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Rows per page: 50 by default, 500 at most.
    #[serde(default)]
    pub limit: Option<i64>,
}

/// A page of archived jobs, newest first, and the cursor of the next (none: the last).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ArchivePage {
    /// The jobs.
    pub jobs: Vec<ArchivedSummary>,
    /// Pass as `cursor` for the next page.
    pub next: Option<String>,
}

/// Why a search is refused.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// A filter is malformed; the message says which and why.
    #[error("{0}")]
    Invalid(String),
    /// PostgreSQL failed.
    #[error("PostgreSQL: {0}")]
    Db(#[from] sqlx::Error),
}

/// A page position: the last row's finish time (µs since the epoch) and sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    finished_us: i64,
    seq: i64,
}

impl Cursor {
    fn encode(self) -> String {
        format!("{}.{}", self.finished_us, self.seq)
    }

    fn decode(s: &str) -> Option<Cursor> {
        let (a, b) = s.split_once('.')?;
        Some(Cursor { finished_us: a.parse().ok()?, seq: b.parse().ok()? })
    }
}

impl Search {
    /// Checks every filter; answers the page size.
    pub fn check(&self) -> Result<i64, SearchError> {
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(SearchError::Invalid(format!("limit must be 1 to {MAX_PAGE}, got {limit}")));
        }
        if let Some(s) = &self.state
            && FinalState::parse(s).is_none()
        {
            return Err(SearchError::Invalid(format!(
                "state must be one of succeeded, dead, cancelled, expired; got {s:?}"
            )));
        }
        if let Some(q) = &self.q {
            let n = q.chars().count();
            if !(MIN_TEXT..=MAX_TEXT).contains(&n) {
                return Err(SearchError::Invalid(format!("q must be {MIN_TEXT} to {MAX_TEXT} characters, got {n}")));
            }
        }
        if let (Some(from), Some(to)) = (self.from, self.to)
            && from >= to
        {
            return Err(SearchError::Invalid("from must be before to".into()));
        }
        if let Some(c) = &self.cursor
            && Cursor::decode(c).is_none()
        {
            return Err(SearchError::Invalid(format!("cursor {c:?} is not one this API gave")));
        }
        Ok(limit)
    }
}

/// `text` for a LIKE pattern: `%`, `_` and `\` match themselves.
fn like_escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The archived jobs matching `s`, newest first, one page.
pub async fn search(db: &PgPool, s: &Search) -> Result<ArchivePage, SearchError> {
    let limit = s.check()?;
    let mut b = sqlx::QueryBuilder::<sqlx::Postgres>::new(
        "SELECT seq, tenant, queue, id, attempt, kind, state, left(args::text, ",
    );
    b.push_bind(LISTED_ARGS_CHARS)
        .push(") AS args_preview, left(error, ")
        .push_bind(LISTED_ERROR_CHARS)
        .push(") AS error, enqueued_at, started_at, finished_at FROM job_archive WHERE true");
    if let Some(v) = &s.queue {
        b.push(" AND queue = ").push_bind(v.clone());
    }
    if let Some(v) = &s.state {
        b.push(" AND state = ").push_bind(v.clone());
    }
    if let Some(v) = &s.kind {
        b.push(" AND kind = ").push_bind(v.clone());
    }
    if let Some(v) = &s.tenant {
        b.push(" AND tenant = ").push_bind(v.clone());
    }
    if let Some(v) = &s.q {
        // The expression of the trigram index, verbatim, so the planner can use it.
        b.push(" AND (coalesce(error, '') || ' ' || args::text) ILIKE ").push_bind(format!("%{}%", like_escaped(v)));
    }
    if let Some(v) = s.from {
        b.push(" AND finished_at >= ").push_bind(v);
    }
    if let Some(v) = s.to {
        b.push(" AND finished_at < ").push_bind(v);
    }
    if let Some(c) = s.cursor.as_deref().and_then(Cursor::decode) {
        let at = Utc.timestamp_micros(c.finished_us).single().unwrap_or_default();
        b.push(" AND (finished_at, seq) < (").push_bind(at).push(", ").push_bind(c.seq).push(")");
    }
    b.push(" ORDER BY finished_at DESC, seq DESC LIMIT ").push_bind(limit);
    #[derive(sqlx::FromRow)]
    struct Row {
        seq: i64,
        #[sqlx(flatten)]
        job: ArchivedSummary,
    }
    let rows: Vec<Row> = b.build_query_as().fetch_all(db).await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| Cursor { finished_us: r.job.finished_at.timestamp_micros(), seq: r.seq }.encode()))
        .flatten();
    Ok(ArchivePage { jobs: rows.into_iter().map(|r| r.job).collect(), next })
}

/// Job `id` of `queue` as archived: the ending with the highest attempt (or that
/// `attempt`), only when it belongs to `tenant` if one is given.
pub async fn get(
    db: &PgPool,
    queue: &str,
    id: &str,
    attempt: Option<i32>,
    tenant: Option<&str>,
) -> Result<Option<ArchivedJob>, sqlx::Error> {
    sqlx::query_as(
        "SELECT tenant, queue, id, attempt, kind, state, args, result, error, progress, history, batch,
                enqueued_at, started_at, finished_at, archived_at
           FROM job_archive
          WHERE queue = $1 AND id = $2 AND ($3::int IS NULL OR attempt = $3) AND ($4::text IS NULL OR tenant = $4)
          ORDER BY finished_at DESC LIMIT 1",
    )
    .bind(queue)
    .bind(id)
    .bind(attempt)
    .bind(tenant)
    .fetch_optional(db)
    .await
}

/// One finished job to archive.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRow {
    /// The tenant that enqueued it.
    pub tenant: Option<String>,
    /// Logical queue.
    pub queue: String,
    /// Job id.
    pub id: String,
    /// Attempts started when it finished.
    pub attempt: i32,
    /// Kind.
    pub kind: String,
    /// How it ended.
    pub state: FinalState,
    /// Arguments.
    pub args: serde_json::Value,
    /// Recorded result.
    pub result: Option<serde_json::Value>,
    /// Last error.
    pub error: Option<String>,
    /// Last progress.
    pub progress: Option<serde_json::Value>,
    /// Failed attempts.
    pub history: serde_json::Value,
    /// Its batch.
    pub batch: Option<String>,
    /// Enqueue time.
    pub enqueued_at: Option<DateTime<Utc>>,
    /// First recorded start.
    pub started_at: Option<DateTime<Utc>>,
    /// End time.
    pub finished_at: DateTime<Utc>,
}

/// Writes `rows` in one statement; a row already archived under its (queue, id, attempt,
/// finished_at) is left as it is (a copy sent again). Answers how many rows were written.
pub async fn insert(db: &PgPool, rows: &[NewRow]) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    macro_rules! col {
        ($f:expr) => {
            rows.iter().map($f).collect::<Vec<_>>()
        };
    }
    let r = sqlx::query(
        "INSERT INTO job_archive (tenant, queue, id, attempt, kind, state, args, result, error, progress, history,
                                  batch, enqueued_at, started_at, finished_at)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[], $7::jsonb[],
                              $8::jsonb[], $9::text[], $10::jsonb[], $11::jsonb[], $12::text[], $13::timestamptz[],
                              $14::timestamptz[], $15::timestamptz[])
         ON CONFLICT (queue, id, attempt, finished_at) DO NOTHING",
    )
    .bind(col!(|r| r.tenant.clone()))
    .bind(col!(|r| r.queue.clone()))
    .bind(col!(|r| r.id.clone()))
    .bind(col!(|r| r.attempt))
    .bind(col!(|r| r.kind.clone()))
    .bind(col!(|r| r.state.as_str().to_owned()))
    .bind(col!(|r| r.args.clone()))
    .bind(col!(|r| r.result.clone()))
    .bind(col!(|r| r.error.clone()))
    .bind(col!(|r| r.progress.clone()))
    .bind(col!(|r| r.history.clone()))
    .bind(col!(|r| r.batch.clone()))
    .bind(col!(|r| r.enqueued_at))
    .bind(col!(|r| r.started_at))
    .bind(col!(|r| r.finished_at))
    .execute(db)
    .await?;
    Ok(r.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = Cursor { finished_us: 1_764_900_000_123_456, seq: 42 };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        for bad in ["", "1", "a.b", "1.2.3", "1."] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn filters_are_checked() {
        assert_eq!(Search::default().check().unwrap(), DEFAULT_PAGE);
        let bad = [
            Search { limit: Some(0), ..Default::default() },
            Search { limit: Some(MAX_PAGE + 1), ..Default::default() },
            Search { state: Some("running".into()), ..Default::default() },
            Search { q: Some("ab".into()), ..Default::default() },
            Search { cursor: Some("x".into()), ..Default::default() },
        ];
        for s in bad {
            assert!(matches!(s.check(), Err(SearchError::Invalid(_))), "{s:?}");
        }
    }

    #[test]
    fn like_wildcards_match_themselves() {
        assert_eq!(like_escaped(r"50%_a\b"), r"50\%\_a\\b");
    }
}
