//! `calendar_bookings`: bookings made in the platform, written by
//! `/v1/calendar/suppliers/{supplier}/bookings/{id}` and pushed to the supplier's calendar by
//! `calendar.push` jobs, which record here what the calendar holds.
//!
//! Every statement is scoped by the booking's tenant: the API's from the caller's key, the
//! push job's from its envelope. `version` rises only when something the calendar shows
//! changes, and a push records the version it wrote (`pushed_version`), so a retried or
//! duplicated push of a version already written does nothing.
//!
//! A booking is checked against the supplier's busy occurrences ([`busy_overlapping`]) before
//! it is written, and each change (`calendar.booking.created`, `.changed`, `.deleted`) is
//! written to `calendar_outbox` in the transaction that makes it, once per version, for the
//! relay to publish like conflict events.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgPool, Row};
use utoipa::ToSchema;

/// The outbox table booking events go to (the relay publishes it).
pub const OUTBOX: &str = "calendar_outbox";

/// The UID of booking `booking_id` of `tenant` in the calendar: stable, so retries write one
/// resource, and known to the API, which must not count the booking's own copy as a conflict.
pub fn booking_uid(tenant: &str, booking_id: &str) -> String {
    format!("{booking_id}@{tenant}.fleet")
}

/// A busy occurrence of the supplier that a booking would overlap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct BusyOccurrence {
    /// The calendar source it is in.
    pub source: String,
    /// The event's UID.
    pub uid: String,
    /// Its start.
    pub start: DateTime<Utc>,
    /// Its end (exclusive).
    pub end: DateTime<Utc>,
    /// All-day (counted only when the supplier says all-day events block time).
    pub all_day: bool,
    /// Its title.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

/// At most this many overlapping occurrences are returned.
const MAX_OVERLAPPING: i64 = 100;

/// The supplier's busy occurrences overlapping `[start, end)`, by start (at most 100): what a
/// double booking is counted against in a sync — not cancelled, not transparent, not empty,
/// all-day ones only when the supplier's `all_day_busy` says so — without the booking's own
/// copy in the calendar (UID `own_uid`).
pub async fn busy_overlapping(
    db: &PgPool,
    tenant: &str,
    supplier: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    own_uid: &str,
) -> Result<Vec<BusyOccurrence>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT o.source_id, o.uid, o.start_at, o.end_at, o.all_day, o.summary FROM calendar_occurrences o
         LEFT JOIN calendar_suppliers s ON s.tenant = o.tenant AND s.supplier = o.supplier
         WHERE o.tenant = $1 AND o.supplier = $2 AND o.start_at < $4 AND o.end_at > $3 AND o.uid <> $5
           AND o.status <> 'cancelled' AND NOT o.transparent AND o.end_at > o.start_at
           AND (NOT o.all_day OR COALESCE(s.all_day_busy, false))
         ORDER BY o.start_at, o.uid LIMIT $6",
    )
    .bind(tenant)
    .bind(supplier)
    .bind(start)
    .bind(end)
    .bind(own_uid)
    .bind(MAX_OVERLAPPING)
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .map(|r| BusyOccurrence {
            source: r.get("source_id"),
            uid: r.get("uid"),
            start: r.get("start_at"),
            end: r.get("end_at"),
            all_day: r.get("all_day"),
            summary: r.get("summary"),
        })
        .collect())
}

/// Writes a booking event to the outbox in `tx`, once per (booking, version).
async fn booking_event(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    tenant: &str,
    event_type: &str,
    id: &str,
    version: i64,
    payload: serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO calendar_outbox (tenant, event_type, dedup, payload) VALUES ($1, $2, $3, $4) ON CONFLICT (dedup) DO NOTHING",
    )
    .bind(tenant)
    .bind(event_type)
    .bind(format!("booking:{tenant}:{id}:{version}"))
    .bind(payload)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A booking to write to the supplier's calendar.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BookingRequest {
    /// The calendar source to write to (one of the supplier's CalDAV sources).
    pub source: String,
    /// Title.
    #[serde(default)]
    pub summary: String,
    /// Start (RFC 3339).
    pub start: DateTime<Utc>,
    /// End (RFC 3339), after the start.
    pub end: DateTime<Utc>,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Location.
    #[serde(default)]
    pub location: Option<String>,
}

/// A booking and what its calendar holds.
#[derive(Debug, Serialize, ToSchema)]
pub struct BookingView {
    /// The booking's id (the caller's).
    pub id: String,
    /// The supplier it is for.
    pub supplier: String,
    /// The calendar source it is written to.
    pub source: String,
    /// Title.
    pub summary: String,
    /// Start.
    pub start: DateTime<Utc>,
    /// End (exclusive).
    pub end: DateTime<Utc>,
    /// Removed from the calendar (or to be).
    pub deleted: bool,
    /// Rises with every change the calendar shows; the remote event's SEQUENCE.
    pub version: i64,
    /// `pending`, `pushed`, `deleted`, `kept_theirs` or `failed`.
    pub push_state: String,
    /// Why the last push failed or kept the calendar's version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_error: Option<String>,
    /// The event's href (CalDAV) or id (Google, Graph) in the calendar.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_href: Option<String>,
    /// When the last push finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pushed_at: Option<DateTime<Utc>>,
}

/// The source a booking is to be written to, as far as the booking cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookingTarget {
    /// The source's supplier (a booking must name one of its own supplier's sources).
    pub supplier: String,
    /// The source's kind (`ics` feeds are read-only).
    pub kind: String,
}

/// Source `source_id` of `tenant` (none when missing or another tenant's).
pub async fn target(db: &PgPool, tenant: &str, source_id: &str) -> Result<Option<BookingTarget>, sqlx::Error> {
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT supplier, kind FROM calendar_sources WHERE id = $1 AND tenant = $2")
            .bind(source_id)
            .bind(tenant)
            .fetch_optional(db)
            .await?;
    Ok(row.map(|(supplier, kind)| BookingTarget { supplier, kind }))
}

/// Where a booking is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The source it is written to.
    pub source: String,
    /// Its href or id in that calendar, once written.
    pub remote_href: Option<String>,
    /// Removed (or to be).
    pub deleted: bool,
}

/// Where booking `id` of `tenant` is now; none when there is no such booking.
pub async fn placement(db: &PgPool, tenant: &str, id: &str) -> Result<Option<Placement>, sqlx::Error> {
    let row: Option<(String, Option<String>, bool)> = sqlx::query_as(
        "SELECT target_source, remote_href, deleted FROM calendar_bookings WHERE tenant = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(id)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(source, remote_href, deleted)| Placement { source, remote_href, deleted }))
}

/// Creates booking `id` of `tenant` for `supplier`, or changes it: its version rises (and a
/// push is due) only when something the calendar shows changed, or it was deleted. A booking
/// of another supplier is left as it is (the caller sees that in [`view`]). A change writes
/// `calendar.booking.created` or `.changed` to the outbox in the same transaction, with the
/// busy occurrences it was booked over (`overlapping`, when the caller booked anyway).
/// Returns whether anything changed.
pub async fn upsert(
    db: &PgPool,
    tenant: &str,
    supplier: &str,
    id: &str,
    req: &BookingRequest,
    overlapping: &[BusyOccurrence],
) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    let changed: Option<(i64, bool)> = sqlx::query_as(
        "INSERT INTO calendar_bookings (tenant, id, supplier, target_source, summary, description, location, start_at, end_at, version)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1)
         ON CONFLICT (tenant, id) DO UPDATE SET
           target_source = EXCLUDED.target_source, summary = EXCLUDED.summary, description = EXCLUDED.description,
           location = EXCLUDED.location, start_at = EXCLUDED.start_at, end_at = EXCLUDED.end_at, deleted = false,
           version = calendar_bookings.version + 1, updated_at = now(), push_state = 'pending', push_error = NULL
         WHERE calendar_bookings.supplier = EXCLUDED.supplier AND (calendar_bookings.deleted
           OR (calendar_bookings.target_source, calendar_bookings.summary, calendar_bookings.description,
               calendar_bookings.location, calendar_bookings.start_at, calendar_bookings.end_at)
              IS DISTINCT FROM (EXCLUDED.target_source, EXCLUDED.summary, EXCLUDED.description,
               EXCLUDED.location, EXCLUDED.start_at, EXCLUDED.end_at))
         RETURNING version, (xmax = 0) AS created",
    )
    .bind(tenant)
    .bind(id)
    .bind(supplier)
    .bind(&req.source)
    .bind(&req.summary)
    .bind(&req.description)
    .bind(&req.location)
    .bind(req.start)
    .bind(req.end)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((version, created)) = changed else {
        tx.rollback().await?;
        return Ok(false);
    };
    let event_type = if created { "calendar.booking.created" } else { "calendar.booking.changed" };
    let payload = json!({
        "booking": id, "supplier": supplier, "source": req.source, "summary": req.summary,
        "start": req.start, "end": req.end, "version": version, "overlapping": overlapping,
    });
    booking_event(&mut tx, tenant, event_type, id, version, payload).await?;
    tx.commit().await?;
    Ok(true)
}

/// Marks booking `id` of `tenant` and `supplier` deleted (a new version, to be pushed) and
/// writes `calendar.booking.deleted` to the outbox with it; false when there is no such
/// booking or it is deleted already.
pub async fn mark_deleted(db: &PgPool, tenant: &str, supplier: &str, id: &str) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    let deleted: Option<(i64, String)> = sqlx::query_as(
        "UPDATE calendar_bookings SET deleted = true, version = version + 1, updated_at = now(), push_state = 'pending', push_error = NULL
         WHERE tenant = $1 AND id = $2 AND supplier = $3 AND NOT deleted RETURNING version, target_source",
    )
    .bind(tenant)
    .bind(id)
    .bind(supplier)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((version, source)) = deleted else {
        tx.rollback().await?;
        return Ok(false);
    };
    let payload = json!({ "booking": id, "supplier": supplier, "source": source, "version": version });
    booking_event(&mut tx, tenant, "calendar.booking.deleted", id, version, payload).await?;
    tx.commit().await?;
    Ok(true)
}

/// Booking `id` of `tenant` as the API shows it; none when there is no such booking.
pub async fn view(db: &PgPool, tenant: &str, id: &str) -> Result<Option<BookingView>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT id, supplier, target_source, summary, start_at, end_at, deleted, version, push_state, push_error,
           remote_href, pushed_at FROM calendar_bookings WHERE tenant = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(id)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|row| BookingView {
        id: row.get("id"),
        supplier: row.get("supplier"),
        source: row.get("target_source"),
        summary: row.get("summary"),
        start: row.get("start_at"),
        end: row.get("end_at"),
        deleted: row.get("deleted"),
        version: row.get("version"),
        push_state: row.get("push_state"),
        push_error: row.get("push_error"),
        remote_href: row.get("remote_href"),
        pushed_at: row.get("pushed_at"),
    }))
}

/// One booking as the platform last changed it: what a push writes.
#[derive(Debug, Clone)]
pub struct Booking {
    /// The supplier it is for.
    pub supplier: String,
    /// The source to write it to.
    pub target_source: String,
    /// Title.
    pub summary: String,
    /// Description.
    pub description: Option<String>,
    /// Location.
    pub location: Option<String>,
    /// Start.
    pub start: DateTime<Utc>,
    /// End (exclusive).
    pub end: DateTime<Utc>,
    /// To be removed from the calendar.
    pub deleted: bool,
    /// The version to write (the remote event's SEQUENCE).
    pub version: i64,
    /// When the platform last changed it (the remote event's DTSTAMP).
    pub updated_at: DateTime<Utc>,
    /// Where the calendar holds it, once written.
    pub remote_href: Option<String>,
    /// The ETag Fleet last saw there (an update or delete carries `If-Match` with it).
    pub remote_etag: Option<String>,
    /// The last version the calendar holds.
    pub pushed_version: Option<i64>,
    /// `pending`, `pushed`, `deleted`, `kept_theirs` or `failed`.
    pub push_state: String,
}

/// Booking `id` of `tenant` for a push; none when missing (or another tenant's).
pub async fn for_push(db: &PgPool, tenant: &str, id: &str) -> Result<Option<Booking>, sqlx::Error> {
    let Some(row) = sqlx::query(
        "SELECT supplier, target_source, summary, description, location, start_at, end_at, deleted, version,
           updated_at, remote_href, remote_etag, pushed_version, push_state
         FROM calendar_bookings WHERE tenant = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(id)
    .fetch_optional(db)
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(Booking {
        supplier: row.get("supplier"),
        target_source: row.get("target_source"),
        summary: row.get("summary"),
        description: row.get("description"),
        location: row.get("location"),
        start: row.get("start_at"),
        end: row.get("end_at"),
        deleted: row.get("deleted"),
        version: row.get("version"),
        updated_at: row.get("updated_at"),
        remote_href: row.get("remote_href"),
        remote_etag: row.get("remote_etag"),
        pushed_version: row.get("pushed_version"),
        push_state: row.get("push_state"),
    }))
}

/// What a push left in the calendar, recorded on the booking.
#[derive(Debug, Clone, Copy)]
pub struct PushRecord<'a> {
    /// The version pushed.
    pub version: i64,
    /// Where the calendar holds the event (none: keep the href recorded before).
    pub href: Option<&'a str>,
    /// Its ETag there (none: unknown or removed).
    pub etag: Option<&'a str>,
    /// `pushed`, `deleted` or `kept_theirs`.
    pub state: &'a str,
    /// Why the calendar's version was kept, for the API's `push_error`.
    pub note: Option<&'a str>,
}

/// Records a finished push of booking `id` of `tenant`.
pub async fn record_push(db: &PgPool, tenant: &str, id: &str, record: PushRecord<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE calendar_bookings SET remote_href = COALESCE($3, remote_href), remote_etag = $4,
           pushed_version = $5, push_state = $6, push_error = $7, pushed_at = now()
         WHERE tenant = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(id)
    .bind(record.href)
    .bind(record.etag)
    .bind(record.version)
    .bind(record.state)
    .bind(record.note)
    .execute(db)
    .await?;
    Ok(())
}

/// Records that the push of booking `id` of `tenant` gave up, and why.
pub async fn record_push_failure(db: &PgPool, tenant: &str, id: &str, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE calendar_bookings SET push_state = 'failed', push_error = $3 WHERE tenant = $1 AND id = $2")
        .bind(tenant)
        .bind(id)
        .bind(error)
        .execute(db)
        .await?;
    Ok(())
}
