//! `/v1/calendar/suppliers/{supplier}/bookings/{id}`: bookings made in the platform, pushed
//! to one of the supplier's calendars by a `calendar.push` job.
//!
//! `PUT` creates or changes a booking (its `version` rises when the content changes, and
//! becomes the remote event's SEQUENCE), `DELETE` removes it from the calendar, `GET` shows
//! what the calendar holds: `push_state` is `pending`, `pushed`, `deleted`, `kept_theirs` (the
//! calendar held a newer version changed outside the platform, which was kept) or `failed`
//! with `push_error`. Every change enqueues a push; a push of a version already written does
//! nothing, so retries and duplicates are harmless.

use super::ApiState;
use super::auth::Caller;
use super::error::ApiError;
use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use fleet_jobs::EnqueueOptions;
use fleet_jobs::catalogue::CalendarPush;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::ToSchema;

/// A booking to write to the supplier's calendar.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BookingRequest {
    /// The calendar source to write to (one of the supplier's CalDAV sources).
    source: String,
    /// Title.
    #[serde(default)]
    summary: String,
    /// Start (RFC 3339).
    start: DateTime<Utc>,
    /// End (RFC 3339), after the start.
    end: DateTime<Utc>,
    /// Description.
    #[serde(default)]
    description: Option<String>,
    /// Location.
    #[serde(default)]
    location: Option<String>,
}

/// A booking and what its calendar holds.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BookingView {
    id: String,
    supplier: String,
    source: String,
    summary: String,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    deleted: bool,
    version: i64,
    /// `pending`, `pushed`, `deleted`, `kept_theirs` or `failed`.
    push_state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    push_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remote_href: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pushed_at: Option<DateTime<Utc>>,
}

fn db_error(e: sqlx::Error) -> ApiError {
    ApiError::internal("bookings", e)
}

const TEXT_LIMIT: usize = 8 * 1024;

/// Create or change a booking and push it to the calendar.
#[utoipa::path(put, path = "/v1/calendar/suppliers/{supplier}/bookings/{id}", request_body = BookingRequest,
    params(("supplier" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = BookingView), (status = 422, description = "end not after start, bad id", body = super::error::ErrorBody),
        (status = 401, body = super::error::ErrorBody), (status = 404, description = "no such source", body = super::error::ErrorBody),
        (status = 409, description = "the booking is already in another of the supplier's calendars", body = super::error::ErrorBody)))]
pub(crate) async fn put_booking(
    State(state): State<ApiState>,
    caller: Caller,
    Path((supplier, id)): Path<(String, String)>,
    Json(req): Json<BookingRequest>,
) -> Result<Json<BookingView>, ApiError> {
    caller.require("enqueue")?;
    if id.is_empty() || id.len() > 200 || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(ApiError::invalid("a booking id is 1-200 characters of letters, digits, '-', '_' and '.'"));
    }
    if req.end <= req.start {
        return Err(ApiError::invalid("end must be after start"));
    }
    let too_long = [Some(&req.summary), req.description.as_ref(), req.location.as_ref()]
        .into_iter()
        .flatten()
        .any(|t| t.len() > TEXT_LIMIT);
    if too_long {
        return Err(ApiError::invalid(format!("summary, description and location are at most {TEXT_LIMIT} bytes")));
    }
    let owner: Option<(String, String)> =
        sqlx::query_as("SELECT supplier, kind FROM calendar_sources WHERE id = $1 AND tenant = $2")
            .bind(&req.source)
            .bind(&caller.tenant)
            .fetch_optional(&state.db)
            .await
            .map_err(db_error)?;
    match owner {
        None => return Err(ApiError::not_found(format!("calendar source {} not found", req.source))),
        Some((s, _)) if s != supplier => {
            return Err(ApiError::invalid(format!("calendar source {} belongs to another supplier", req.source)));
        }
        Some((_, kind)) if kind == "ics" => {
            return Err(ApiError::invalid(format!(
                "calendar source {} is an .ics feed, which is read-only: book into a CalDAV, Google or Graph source",
                req.source
            )));
        }
        Some(_) => {}
    }
    // A booking lives in one calendar: moving it would leave the old copy behind.
    let placed: Option<(String, Option<String>, bool)> = sqlx::query_as(
        "SELECT target_source, remote_href, deleted FROM calendar_bookings WHERE tenant = $1 AND id = $2",
    )
    .bind(&caller.tenant)
    .bind(&id)
    .fetch_optional(&state.db)
    .await
    .map_err(db_error)?;
    if let Some((current, Some(_), false)) = placed
        && current != req.source
    {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "booking_in_another_calendar",
            format!("booking {id} is in calendar source {current}: delete it and book again to move it"),
        ));
    }
    // The version rises only when something the calendar shows changed.
    sqlx::query(
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
               EXCLUDED.location, EXCLUDED.start_at, EXCLUDED.end_at))",
    )
    .bind(&caller.tenant)
    .bind(&id)
    .bind(&supplier)
    .bind(&req.source)
    .bind(&req.summary)
    .bind(&req.description)
    .bind(&req.location)
    .bind(req.start)
    .bind(req.end)
    .execute(&state.db)
    .await
    .map_err(db_error)?;
    let view = load(&state, &caller.tenant, &id).await?;
    if view.supplier != supplier {
        return Err(ApiError::invalid(format!("booking {id} belongs to another supplier")));
    }
    enqueue_push(&state, &caller.tenant, &id).await?;
    Ok(Json(view))
}

/// Remove a booking from the calendar.
#[utoipa::path(delete, path = "/v1/calendar/suppliers/{supplier}/bookings/{id}",
    params(("supplier" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = BookingView), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn delete_booking(
    State(state): State<ApiState>,
    caller: Caller,
    Path((supplier, id)): Path<(String, String)>,
) -> Result<Json<BookingView>, ApiError> {
    caller.require("enqueue")?;
    let updated = sqlx::query(
        "UPDATE calendar_bookings SET deleted = true, version = version + 1, updated_at = now(), push_state = 'pending', push_error = NULL
         WHERE tenant = $1 AND id = $2 AND supplier = $3 AND NOT deleted",
    )
    .bind(&caller.tenant)
    .bind(&id)
    .bind(&supplier)
    .execute(&state.db)
    .await
    .map_err(db_error)?;
    let view = load(&state, &caller.tenant, &id).await?;
    if view.supplier != supplier {
        return Err(ApiError::not_found(format!("booking {id} not found")));
    }
    if updated.rows_affected() > 0 {
        enqueue_push(&state, &caller.tenant, &id).await?;
    }
    Ok(Json(view))
}

/// A booking and its push state.
#[utoipa::path(get, path = "/v1/calendar/suppliers/{supplier}/bookings/{id}",
    params(("supplier" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = BookingView), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn get_booking(
    State(state): State<ApiState>,
    caller: Caller,
    Path((supplier, id)): Path<(String, String)>,
) -> Result<Json<BookingView>, ApiError> {
    let view = load(&state, &caller.tenant, &id).await?;
    if view.supplier != supplier {
        return Err(ApiError::not_found(format!("booking {id} not found")));
    }
    Ok(Json(view))
}

async fn enqueue_push(state: &ApiState, tenant: &str, id: &str) -> Result<(), ApiError> {
    let args = CalendarPush { tenant: tenant.to_owned(), booking_id: id.to_owned() };
    let opts = EnqueueOptions { tenant: Some(tenant.to_owned()), ..EnqueueOptions::default() };
    state.client.enqueue_with(&args, opts).await?;
    Ok(())
}

async fn load(state: &ApiState, tenant: &str, id: &str) -> Result<BookingView, ApiError> {
    let row = sqlx::query(
        "SELECT id, supplier, target_source, summary, start_at, end_at, deleted, version, push_state, push_error,
           remote_href, pushed_at FROM calendar_bookings WHERE tenant = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(id)
    .fetch_optional(&state.db)
    .await
    .map_err(db_error)?
    .ok_or_else(|| ApiError::not_found(format!("booking {id} not found")))?;
    Ok(BookingView {
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
    })
}
