//! `/v1/calendar`: a supplier's calendar sources (CalDAV collections, `.ics` feeds), its
//! settings, its occurrences in a window and its double bookings.
//!
//! A source's password is sealed with AES-256-GCM (`FLEET_SECRETS_KEY`) before it is stored
//! and never shown again; a sync is a `calendar.sync` job on the `calendar` queue.

use super::ApiState;
use super::auth::Caller;
use super::error::ApiError;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, NaiveDateTime, Utc};
use fleet_comms::secrets::SecretBox;
use fleet_jobs::catalogue::CalendarSync;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::{IntoParams, ToSchema};

/// A calendar source to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CalendarSourceRequest {
    /// The supplier whose bookings these are.
    supplier: String,
    /// `caldav` (a calendar collection URL) or `ics` (a feed URL).
    kind: String,
    /// The collection or feed URL (http or https).
    url: String,
    /// Login name, if the server wants one.
    #[serde(default)]
    username: Option<String>,
    /// Password or app password (stored sealed, never returned).
    #[serde(default)]
    password: Option<String>,
    /// A fetch deleting more than this share of the events is quarantined (default 0.5).
    #[serde(default)]
    max_delete_share: Option<f64>,
}

/// A source and where its sync stands (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CalendarSourceView {
    id: String,
    supplier: String,
    kind: String,
    url: String,
    username: Option<String>,
    last_sync_at: Option<DateTime<Utc>>,
    last_ok_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
    /// Why the last fetch was not applied.
    quarantined: Option<String>,
    /// What the last sync did.
    #[schema(value_type = Object)]
    last_report: Option<serde_json::Value>,
}

fn secrets() -> Result<SecretBox, ApiError> {
    SecretBox::from_env().map_err(|e| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_configured", format!("passwords cannot be stored: {e}"))
    })
}

/// Register a calendar source.
#[utoipa::path(post, path = "/v1/calendar/sources", request_body = CalendarSourceRequest,
    responses((status = 201, body = CalendarSourceView), (status = 401, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn create_source(
    State(state): State<ApiState>,
    caller: Caller,
    Json(req): Json<CalendarSourceRequest>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require("enqueue")?;
    if !matches!(req.kind.as_str(), "caldav" | "ics") {
        return Err(ApiError::invalid(
            "kind must be \"caldav\" or \"ics\" (Google and Microsoft accounts are not accepted yet)",
        ));
    }
    if req.supplier.trim().is_empty() {
        return Err(ApiError::invalid("supplier is required"));
    }
    let authority = req.url.split_once("://").map(|(_, rest)| rest.split('/').next().unwrap_or_default());
    let http = req.url.starts_with("http://") || req.url.starts_with("https://");
    if !http || authority.is_none_or(|a| a.is_empty() || a.contains('@')) {
        return Err(ApiError::invalid("url must be an http(s) URL without credentials in it"));
    }
    let share = req.max_delete_share.unwrap_or(0.5);
    if !(0.0..=1.0).contains(&share) {
        return Err(ApiError::invalid("max_delete_share must be between 0 and 1"));
    }
    let id = format!("cal_{}", uuid::Uuid::now_v7().simple());
    let sealed = match &req.password {
        Some(password) => Some(secrets()?.seal(&id, password).map_err(|e| ApiError::internal("sealing a secret", e))?),
        None => None,
    };
    sqlx::query(
        "INSERT INTO calendar_sources (id, tenant, supplier, kind, url, username, secret, max_delete_share)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&id)
    .bind(&caller.tenant)
    .bind(&req.supplier)
    .bind(&req.kind)
    .bind(&req.url)
    .bind(&req.username)
    .bind(sealed)
    .bind(share)
    .execute(&state.db)
    .await
    .map_err(|e| ApiError::unavailable("creating a source", e))?;
    let view = CalendarSourceView {
        id,
        supplier: req.supplier,
        kind: req.kind,
        url: req.url,
        username: req.username,
        last_sync_at: None,
        last_ok_at: None,
        last_error: None,
        quarantined: None,
        last_report: None,
    };
    Ok((StatusCode::CREATED, Json(view)))
}

/// Which supplier to list.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct SupplierFilter {
    /// Only this supplier's sources.
    supplier: Option<String>,
}

/// List the tenant's calendar sources with their sync state.
#[utoipa::path(get, path = "/v1/calendar/sources", params(SupplierFilter),
    responses((status = 200, body = Vec<CalendarSourceView>), (status = 401, body = super::error::ErrorBody)))]
pub(crate) async fn list_sources(
    State(state): State<ApiState>,
    caller: Caller,
    Query(filter): Query<SupplierFilter>,
) -> Result<Json<Vec<CalendarSourceView>>, ApiError> {
    let rows = sqlx::query(
        "SELECT id, supplier, kind, url, username, last_sync_at, last_ok_at, last_error, quarantined, last_report
           FROM calendar_sources WHERE tenant = $1 AND ($2::text IS NULL OR supplier = $2) ORDER BY created_at",
    )
    .bind(&caller.tenant)
    .bind(&filter.supplier)
    .fetch_all(&state.db)
    .await
    .map_err(|e| ApiError::unavailable("listing sources", e))?;
    Ok(Json(
        rows.into_iter()
            .map(|r| CalendarSourceView {
                id: r.get("id"),
                supplier: r.get("supplier"),
                kind: r.get("kind"),
                url: r.get("url"),
                username: r.get("username"),
                last_sync_at: r.get("last_sync_at"),
                last_ok_at: r.get("last_ok_at"),
                last_error: r.get("last_error"),
                quarantined: r.get("quarantined"),
                last_report: r.get("last_report"),
            })
            .collect(),
    ))
}

/// Remove a source with its events, occurrences and conflicts.
#[utoipa::path(delete, path = "/v1/calendar/sources/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn delete_source(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require("enqueue")?;
    let mut tx = state.db.begin().await.map_err(|e| ApiError::unavailable("removing a source", e))?;
    let gone = sqlx::query("DELETE FROM calendar_sources WHERE id = $1 AND tenant = $2")
        .bind(&id)
        .bind(&caller.tenant)
        .execute(&mut *tx)
        .await
        .map_err(|e| ApiError::unavailable("removing a source", e))?;
    if gone.rows_affected() == 0 {
        return Err(ApiError::not_found(format!("no source {id}")));
    }
    sqlx::query(
        "UPDATE calendar_conflicts SET resolved_at = now() WHERE tenant = $2 AND resolved_at IS NULL AND (a_source = $1 OR b_source = $1)",
    )
    .bind(&id)
    .bind(&caller.tenant)
    .execute(&mut *tx)
    .await
    .map_err(|e| ApiError::unavailable("removing a source", e))?;
    tx.commit().await.map_err(|e| ApiError::unavailable("removing a source", e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// A queued sync.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CalendarSyncView {
    /// The `calendar.sync` job.
    job: String,
}

/// Sync a source now (a `calendar.sync` job; the same job id while one is pending).
#[utoipa::path(post, path = "/v1/calendar/sources/{id}/sync", params(("id" = String, Path)),
    responses((status = 202, body = CalendarSyncView), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn sync_source(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let job =
        super::enqueue_source_sync(&state, &caller, "calendar_sources", &id, CalendarSync { source_id: id.clone() })
            .await?;
    Ok((StatusCode::ACCEPTED, Json(CalendarSyncView { job: job.to_string() })))
}

/// A supplier's calendar settings.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SupplierSettings {
    /// All-day events block time (default false).
    #[serde(default)]
    all_day_busy: bool,
    /// IANA zone of floating times and all-day dates (default `UTC`).
    #[serde(default = "utc")]
    time_zone: String,
}

fn utc() -> String {
    "UTC".to_owned()
}

/// Set a supplier's calendar settings (applied from the next sync).
#[utoipa::path(put, path = "/v1/calendar/suppliers/{supplier}", params(("supplier" = String, Path)), request_body = SupplierSettings,
    responses((status = 200, body = SupplierSettings), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn put_supplier(
    State(state): State<ApiState>,
    caller: Caller,
    Path(supplier): Path<String>,
    Json(settings): Json<SupplierSettings>,
) -> Result<Json<SupplierSettings>, ApiError> {
    caller.require("enqueue")?;
    if settings.time_zone.parse::<chrono_tz::Tz>().is_err() {
        return Err(ApiError::invalid("time_zone must be an IANA zone name such as Europe/London"));
    }
    sqlx::query(
        "INSERT INTO calendar_suppliers (tenant, supplier, all_day_busy, time_zone) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant, supplier) DO UPDATE SET all_day_busy = EXCLUDED.all_day_busy, time_zone = EXCLUDED.time_zone",
    )
    .bind(&caller.tenant)
    .bind(&supplier)
    .bind(settings.all_day_busy)
    .bind(&settings.time_zone)
    .execute(&state.db)
    .await
    .map_err(|e| ApiError::unavailable("storing settings", e))?;
    Ok(Json(settings))
}

/// A time window (RFC 3339); default: now to 24 months ahead.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct Window {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

/// One occurrence.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OccurrenceView {
    source: String,
    uid: String,
    /// The instance's original start (RECURRENCE-ID), for instances of a series.
    recurrence_id: Option<DateTime<Utc>>,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    #[schema(value_type = String)]
    start_local: NaiveDateTime,
    #[schema(value_type = String)]
    end_local: NaiveDateTime,
    /// The zone of the local times (none: floating or all-day).
    zone: Option<String>,
    all_day: bool,
    status: String,
    transparent: bool,
    summary: Option<String>,
}

/// A supplier's occurrences in a window, by start.
#[utoipa::path(get, path = "/v1/calendar/suppliers/{supplier}/occurrences", params(("supplier" = String, Path), Window),
    responses((status = 200, body = Vec<OccurrenceView>), (status = 401, body = super::error::ErrorBody)))]
pub(crate) async fn occurrences(
    State(state): State<ApiState>,
    caller: Caller,
    Path(supplier): Path<String>,
    Query(window): Query<Window>,
) -> Result<Json<Vec<OccurrenceView>>, ApiError> {
    let from = window.from.unwrap_or_else(Utc::now);
    let to = window.to.unwrap_or_else(|| from + chrono::Months::new(24));
    let rows = sqlx::query(
        "SELECT source_id, uid, recurrence_id, start_at, end_at, start_local, end_local, zone, all_day, status, transparent, summary
           FROM calendar_occurrences WHERE tenant = $1 AND supplier = $2 AND start_at < $4 AND end_at > $3
          ORDER BY start_at, uid LIMIT 10000",
    )
    .bind(&caller.tenant)
    .bind(&supplier)
    .bind(from)
    .bind(to)
    .fetch_all(&state.db)
    .await
    .map_err(|e| ApiError::unavailable("reading occurrences", e))?;
    Ok(Json(
        rows.into_iter()
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
            .collect(),
    ))
}

/// One open double booking.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ConflictView {
    id: String,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    detected_at: DateTime<Utc>,
    /// The two occurrences (`source`, `occurrence` key = `uid|recurrence-id`).
    #[schema(value_type = Object)]
    a: serde_json::Value,
    #[schema(value_type = Object)]
    b: serde_json::Value,
}

/// A supplier's open double bookings, by start.
#[utoipa::path(get, path = "/v1/calendar/suppliers/{supplier}/conflicts", params(("supplier" = String, Path)),
    responses((status = 200, body = Vec<ConflictView>), (status = 401, body = super::error::ErrorBody)))]
pub(crate) async fn conflicts(
    State(state): State<ApiState>,
    caller: Caller,
    Path(supplier): Path<String>,
) -> Result<Json<Vec<ConflictView>>, ApiError> {
    let rows = sqlx::query(
        "SELECT id, a_source, a_key, b_source, b_key, start_at, end_at, detected_at FROM calendar_conflicts
          WHERE tenant = $1 AND supplier = $2 AND resolved_at IS NULL ORDER BY start_at LIMIT 10000",
    )
    .bind(&caller.tenant)
    .bind(&supplier)
    .fetch_all(&state.db)
    .await
    .map_err(|e| ApiError::unavailable("reading conflicts", e))?;
    Ok(Json(
        rows.into_iter()
            .map(|r| ConflictView {
                id: r.get("id"),
                start: r.get("start_at"),
                end: r.get("end_at"),
                detected_at: r.get("detected_at"),
                a: serde_json::json!({"source": r.get::<String, _>("a_source"), "occurrence": r.get::<String, _>("a_key")}),
                b: serde_json::json!({"source": r.get::<String, _>("b_source"), "occurrence": r.get::<String, _>("b_key")}),
            })
            .collect(),
    ))
}
