//! The calendar tables (`calendar_*`) in PostgreSQL: every query on them lives in this module.
//!
//! - This file: sources, supplier settings, occurrences and double bookings as the API sees
//!   them, the one implementation behind `/v1/calendar` and `fleetctl calendar`. Functions
//!   take `tenant: Option<&str>` where an operator may act on any tenant's rows (`None`,
//!   `fleetctl` only); the API always passes its caller's tenant.
//! - [`bookings`]: bookings made in the platform, as the API writes them and the
//!   `calendar.push` job records what it pushed.
//! - `sync` (with the `jobs` feature): what `calendar.sync` and `calendar.push` read and
//!   write — a source with its sync state, applying a fetch in one transaction (events,
//!   occurrences, conflicts, outbox), errors, quarantine and tokens.
//!
//! What calendar and comms sources share (the sync status columns, deletion, scheduled
//! syncs) is [`fleet_accounts::sources`], which names `calendar_sources` through
//! [`SourceTable::Calendar`].
//!
//! A source's password is sealed with AES-256-GCM (`FLEET_SECRETS_KEY`) before it is
//! stored and never read back here; views say only whether one is set.

pub mod bookings;
pub mod channels;
#[cfg(feature = "jobs")]
pub(crate) mod sync;

use chrono::{DateTime, NaiveDateTime, Utc};
use fleet_accounts::secrets::SecretBox;
use fleet_accounts::sources::{SourceTable, StoreError, SyncStatus, check_schedule, delete_row, enqueue_sync, seal};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row};
use utoipa::{IntoParams, ToSchema};

/// The flag in `calendar_sources.state` that a release sets: the next sync applies its
/// fetch even when it deletes more than `max_delete_share` of the events (once: a
/// successful sync replaces `state`).
pub const FORCE_APPLY: &str = "force_apply";

/// Kinds a source may be registered with (the worker syncs these).
pub const KINDS: [&str; 4] = ["caldav", "ics", "google", "graph"];

/// A calendar source to register.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CalendarSourceRequest {
    /// The supplier whose bookings these are.
    pub supplier: String,
    /// `caldav` (a calendar collection URL), `ics` (a feed URL), `google` (a Google Calendar
    /// API URL, `https://www.googleapis.com/calendar/v3/calendars/{id}`) or `graph` (a
    /// Microsoft Graph calendar URL, `https://graph.microsoft.com/v1.0/me/calendars/{id}`).
    pub kind: String,
    /// The collection, feed or calendar API URL (http or https).
    pub url: String,
    /// Login name, if the server wants one.
    #[serde(default)]
    pub username: Option<String>,
    /// Password or app password; for `google` and `graph` the OAuth access token (stored
    /// sealed, never returned).
    #[serde(default)]
    pub password: Option<String>,
    /// A fetch deleting more than this share of the events is quarantined (default 0.5).
    #[serde(default)]
    pub max_delete_share: Option<f64>,
    /// When to sync: a five-field cron expression in UTC (default every 15 minutes, `*/15 * * * *`).
    #[serde(default)]
    pub schedule: Option<String>,
    /// `google` and `graph`: ask the provider to notify Fleet of changes (a Google watch
    /// channel, a Graph subscription), so a change is synced in seconds; the schedule still
    /// runs as a check. Default true; it takes effect only when the workers are configured
    /// with the public URL notifications reach Fleet at (`[calendar.push] public_url`).
    #[serde(default)]
    pub push: Option<bool>,
}

/// A source and where its sync stands (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct CalendarSourceView {
    /// `cal_…`.
    pub id: String,
    /// The tenant it belongs to.
    pub tenant: String,
    /// The supplier whose bookings these are.
    pub supplier: String,
    /// `caldav`, `ics`, `google` or `graph`.
    pub kind: String,
    /// The collection or feed URL, redacted (user information and query string hidden).
    pub url: String,
    /// Login name.
    pub username: Option<String>,
    /// Whether a (sealed) password is stored.
    pub has_password: bool,
    /// Share of events a fetch may delete before it is quarantined.
    pub max_delete_share: f64,
    /// Schedule and the last sync's outcome.
    #[serde(flatten)]
    pub sync: SyncStatus,
    /// Why the last fetch was not applied (release it with `POST …/release`).
    pub quarantined: Option<String>,
    /// Whether the source asks its provider for push notifications (`google`, `graph`).
    pub push: bool,
    /// When the source's live push channel expires (it is renewed well before), if it has one.
    pub push_expires_at: Option<DateTime<Utc>>,
    /// Sync state: the CalDAV sync token or the feed's validators (and `force_apply`
    /// while a release waits for its sync).
    #[schema(value_type = Object)]
    pub state: serde_json::Value,
}

/// Registers a source for `tenant`: checks it, seals its password with `secrets`.
pub async fn create(
    db: &PgPool,
    secrets: Option<&SecretBox>,
    tenant: &str,
    req: CalendarSourceRequest,
) -> Result<CalendarSourceView, StoreError> {
    if !KINDS.contains(&req.kind.as_str()) {
        return Err(StoreError::Invalid("kind must be \"caldav\", \"ics\", \"google\" or \"graph\"".into()));
    }
    if matches!(req.kind.as_str(), "google" | "graph") && req.password.as_deref().is_none_or(str::is_empty) {
        return Err(StoreError::Invalid(format!("a {} source needs its OAuth access token as password", req.kind)));
    }
    if req.supplier.trim().is_empty() {
        return Err(StoreError::Invalid("supplier is required".into()));
    }
    let authority = req.url.split_once("://").map(|(_, rest)| rest.split('/').next().unwrap_or_default());
    let http = req.url.starts_with("http://") || req.url.starts_with("https://");
    if !http || authority.is_none_or(|a| a.is_empty() || a.contains('@')) {
        return Err(StoreError::Invalid("url must be an http(s) URL without credentials in it".into()));
    }
    let share = req.max_delete_share.unwrap_or(0.5);
    if !(0.0..=1.0).contains(&share) {
        return Err(StoreError::Invalid("max_delete_share must be between 0 and 1".into()));
    }
    let schedule = check_schedule(SourceTable::Calendar, req.schedule.as_deref())?;
    if req.push == Some(true) && !matches!(req.kind.as_str(), "google" | "graph") {
        return Err(StoreError::Invalid("push is for google and graph sources only".into()));
    }
    let push = req.push.unwrap_or(true) && matches!(req.kind.as_str(), "google" | "graph");
    let id = format!("cal_{}", uuid::Uuid::now_v7().simple());
    let sealed = req.password.as_deref().map(|p| seal(secrets, &id, p)).transpose()?;
    sqlx::query(
        "INSERT INTO calendar_sources (id, tenant, supplier, kind, url, username, secret, max_delete_share, schedule, push)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&id)
    .bind(tenant)
    .bind(&req.supplier)
    .bind(&req.kind)
    .bind(&req.url)
    .bind(&req.username)
    .bind(sealed)
    .bind(share)
    .bind(&schedule)
    .bind(push)
    .execute(db)
    .await?;
    get(db, Some(tenant), &id).await
}

/// Which sources to list, and which page of them.
#[derive(Debug, Default, Deserialize, IntoParams)]
pub struct SourceFilter {
    /// Only this supplier's sources.
    pub supplier: Option<String>,
    /// Rows per page (1 to 500, default 100).
    pub limit: Option<i64>,
    /// Rows to skip (default 0).
    pub offset: Option<i64>,
}

async fn select(
    db: &PgPool,
    tenant: Option<&str>,
    supplier: Option<&str>,
    id: Option<&str>,
) -> Result<Vec<CalendarSourceView>, StoreError> {
    select_page(db, tenant, supplier, id, None, 0).await
}

async fn select_page(
    db: &PgPool,
    tenant: Option<&str>,
    supplier: Option<&str>,
    id: Option<&str>,
    limit: Option<i64>,
    offset: i64,
) -> Result<Vec<CalendarSourceView>, StoreError> {
    let sql = format!(
        "SELECT id, tenant, supplier, kind, url, username, secret IS NOT NULL AS has_password, max_delete_share,
                quarantined, state, push AND kind IN ('google', 'graph') AS push,
                (SELECT max(c.expires_at) FROM calendar_channels c WHERE c.source_id = calendar_sources.id) AS push_expires_at, {}
           FROM calendar_sources
          WHERE ($1::text IS NULL OR tenant = $1) AND ($2::text IS NULL OR supplier = $2) AND ($3::text IS NULL OR id = $3)
          ORDER BY created_at, id LIMIT $4 OFFSET $5",
        SyncStatus::COLUMNS
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(supplier)
        .bind(id)
        .bind(limit)
        .bind(offset)
        .fetch_all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| CalendarSourceView {
            id: r.get("id"),
            tenant: r.get("tenant"),
            supplier: r.get("supplier"),
            kind: r.get("kind"),
            // Feed URLs often carry their token in the query (`?s=...`): shown redacted.
            url: fleet_net::redact_url(r.get("url")),
            username: r.get("username"),
            has_password: r.get("has_password"),
            max_delete_share: r.get("max_delete_share"),
            sync: SyncStatus::from_row(&r),
            quarantined: r.get("quarantined"),
            push: r.get("push"),
            push_expires_at: r.get("push_expires_at"),
            state: r.get("state"),
        })
        .collect())
}

/// The sources (of `tenant`, of `supplier`, when given) by registration.
pub async fn list(
    db: &PgPool,
    tenant: Option<&str>,
    supplier: Option<&str>,
) -> Result<Vec<CalendarSourceView>, StoreError> {
    select(db, tenant, supplier, None).await
}

/// A page of the tenant's sources (of `filter.supplier`, when given) by registration.
pub async fn list_page(
    db: &PgPool,
    tenant: &str,
    filter: &SourceFilter,
) -> Result<Vec<CalendarSourceView>, StoreError> {
    let page = fleet_accounts::sources::ListPage { limit: filter.limit, offset: filter.offset };
    let (limit, offset) = page.bounds()?;
    select_page(db, Some(tenant), filter.supplier.as_deref(), None, Some(limit), offset).await
}

/// One source.
pub async fn get(db: &PgPool, tenant: Option<&str>, id: &str) -> Result<CalendarSourceView, StoreError> {
    select(db, tenant, None, Some(id)).await?.pop().ok_or_else(|| StoreError::NotFound(format!("no source {id}")))
}

/// Removes a source with its objects, events and occurrences; its open conflicts are resolved.
pub async fn delete(db: &PgPool, tenant: Option<&str>, id: &str) -> Result<(), StoreError> {
    let mut tx = db.begin().await?;
    let owner = delete_row(&mut tx, SourceTable::Calendar, tenant, id).await?;
    sqlx::query(
        "UPDATE calendar_conflicts SET resolved_at = now() WHERE tenant = $2 AND resolved_at IS NULL AND (a_source = $1 OR b_source = $1)",
    )
    .bind(id)
    .bind(&owner)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Releases a quarantined source: clears `quarantined`, sets [`FORCE_APPLY`] in its state
/// (so that its next sync applies the fetch past the mass-deletion guard) and enqueues
/// that sync. A source that is not quarantined is a conflict.
pub async fn release(
    db: &PgPool,
    client: &fleet_jobs::Client,
    tenant: Option<&str>,
    id: &str,
) -> Result<fleet_jobs::JobId, StoreError> {
    let owner = mark_released(db, tenant, id).await?;
    // Not deduplicated with earlier syncs: one enqueued before the release may have run.
    Ok(enqueue_sync(client, SourceTable::Calendar, &owner, id, false).await?)
}

async fn mark_released(db: &PgPool, tenant: Option<&str>, id: &str) -> Result<String, StoreError> {
    let owner: Option<String> = sqlx::query_scalar(
        "UPDATE calendar_sources SET quarantined = NULL, state = state || jsonb_build_object($3::text, true)
          WHERE id = $1 AND ($2::text IS NULL OR tenant = $2) AND quarantined IS NOT NULL RETURNING tenant",
    )
    .bind(id)
    .bind(tenant)
    .bind(FORCE_APPLY)
    .fetch_optional(db)
    .await?;
    match owner {
        Some(owner) => Ok(owner),
        None => {
            get(db, tenant, id).await?;
            Err(StoreError::Conflict(format!("source {id} is not quarantined")))
        }
    }
}

/// A supplier's calendar settings.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SupplierSettings {
    /// All-day events block time (default false).
    #[serde(default)]
    pub all_day_busy: bool,
    /// IANA zone of floating times and all-day dates (default `UTC`).
    #[serde(default = "utc")]
    pub time_zone: String,
}

fn utc() -> String {
    "UTC".to_owned()
}

/// `tenant`'s settings of `supplier`; the defaults (all-day events free, UTC) for a supplier
/// whose settings were never set, which is what its syncs use.
pub async fn supplier(db: &PgPool, tenant: &str, supplier: &str) -> Result<SupplierSettings, StoreError> {
    let row: Option<(bool, String)> =
        sqlx::query_as("SELECT all_day_busy, time_zone FROM calendar_suppliers WHERE tenant = $1 AND supplier = $2")
            .bind(tenant)
            .bind(supplier)
            .fetch_optional(db)
            .await?;
    Ok(match row {
        Some((all_day_busy, time_zone)) => SupplierSettings { all_day_busy, time_zone },
        None => SupplierSettings { all_day_busy: false, time_zone: utc() },
    })
}

/// Stores a supplier's settings (applied from its sources' next syncs).
pub async fn put_supplier(
    db: &PgPool,
    tenant: &str,
    supplier: &str,
    settings: &SupplierSettings,
) -> Result<(), StoreError> {
    if settings.time_zone.parse::<chrono_tz::Tz>().is_err() {
        return Err(StoreError::Invalid("time_zone must be an IANA zone name such as Europe/London".into()));
    }
    sqlx::query(
        "INSERT INTO calendar_suppliers (tenant, supplier, all_day_busy, time_zone) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant, supplier) DO UPDATE SET all_day_busy = EXCLUDED.all_day_busy, time_zone = EXCLUDED.time_zone",
    )
    .bind(tenant)
    .bind(supplier)
    .bind(settings.all_day_busy)
    .bind(&settings.time_zone)
    .execute(db)
    .await?;
    Ok(())
}

/// Longest window of an occurrences query.
pub const MAX_WINDOW_MONTHS: u32 = 36;

/// A time window (RFC 3339); default: now to 24 months ahead; at most 36 months.
#[derive(Debug, Default, Deserialize, IntoParams)]
pub struct Window {
    /// Start (inclusive).
    pub from: Option<DateTime<Utc>>,
    /// End (exclusive).
    pub to: Option<DateTime<Utc>>,
}

/// One occurrence.
#[derive(Debug, Serialize, ToSchema)]
pub struct OccurrenceView {
    /// The source it comes from.
    pub source: String,
    /// The event's UID.
    pub uid: String,
    /// The instance's original start (RECURRENCE-ID), for instances of a series.
    pub recurrence_id: Option<DateTime<Utc>>,
    /// Start.
    pub start: DateTime<Utc>,
    /// End (exclusive).
    pub end: DateTime<Utc>,
    /// Start in the event's zone.
    #[schema(value_type = String)]
    pub start_local: NaiveDateTime,
    /// End in the event's zone.
    #[schema(value_type = String)]
    pub end_local: NaiveDateTime,
    /// The zone of the local times (none: floating or all-day).
    pub zone: Option<String>,
    /// An all-day event.
    pub all_day: bool,
    /// `CONFIRMED`, `TENTATIVE` or `CANCELLED`.
    pub status: String,
    /// TRANSP:TRANSPARENT (does not block time).
    pub transparent: bool,
    /// SUMMARY.
    pub summary: Option<String>,
}

/// A supplier's occurrences overlapping `window` (at most [`MAX_WINDOW_MONTHS`] long), by
/// start (at most 10,000).
pub async fn occurrences(
    db: &PgPool,
    tenant: &str,
    supplier: &str,
    window: &Window,
) -> Result<Vec<OccurrenceView>, StoreError> {
    let from = window.from.unwrap_or_else(Utc::now);
    let to = window.to.unwrap_or_else(|| from + chrono::Months::new(24));
    if to <= from {
        return Err(StoreError::Invalid("the window's `to` must be after its `from`".into()));
    }
    if to > from + chrono::Months::new(MAX_WINDOW_MONTHS) {
        return Err(StoreError::Invalid(format!(
            "a window spans at most {MAX_WINDOW_MONTHS} months; ask for several windows"
        )));
    }
    let rows = sqlx::query(
        "SELECT source_id, uid, recurrence_id, start_at, end_at, start_local, end_local, zone, all_day, status, transparent, summary
           FROM calendar_occurrences WHERE tenant = $1 AND supplier = $2 AND start_at < $4 AND end_at > $3
          ORDER BY start_at, uid LIMIT 10000",
    )
    .bind(tenant)
    .bind(supplier)
    .bind(from)
    .bind(to)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| OccurrenceView {
            source: r.get("source_id"),
            uid: r.get("uid"),
            recurrence_id: r.get("recurrence_id"),
            start: r.get("start_at"),
            end: r.get("end_at"),
            start_local: r.get("start_local"),
            end_local: r.get("end_local"),
            zone: r.get("zone"),
            all_day: r.get("all_day"),
            status: r.get("status"),
            transparent: r.get("transparent"),
            summary: r.get("summary"),
        })
        .collect())
}

/// One open double booking.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConflictView {
    /// `cf_…`: a hash of the sorted pair.
    pub id: String,
    /// Where the overlap starts.
    pub start: DateTime<Utc>,
    /// Where it ends.
    pub end: DateTime<Utc>,
    /// When it was found.
    pub detected_at: DateTime<Utc>,
    /// One occurrence (`source`, `occurrence` key = `uid|recurrence-id`).
    #[schema(value_type = Object)]
    pub a: serde_json::Value,
    /// The other.
    #[schema(value_type = Object)]
    pub b: serde_json::Value,
}

/// A supplier's open double bookings, by start (at most 10,000).
pub async fn conflicts(db: &PgPool, tenant: &str, supplier: &str) -> Result<Vec<ConflictView>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, a_source, a_key, b_source, b_key, start_at, end_at, detected_at FROM calendar_conflicts
          WHERE tenant = $1 AND supplier = $2 AND resolved_at IS NULL ORDER BY start_at LIMIT 10000",
    )
    .bind(tenant)
    .bind(supplier)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ConflictView {
            id: r.get("id"),
            start: r.get("start_at"),
            end: r.get("end_at"),
            detected_at: r.get("detected_at"),
            a: serde_json::json!({"source": r.get::<String, _>("a_source"), "occurrence": r.get::<String, _>("a_key")}),
            b: serde_json::json!({"source": r.get::<String, _>("b_source"), "occurrence": r.get::<String, _>("b_key")}),
        })
        .collect())
}
