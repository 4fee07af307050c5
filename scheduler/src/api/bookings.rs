//! `/v1/calendar/suppliers/{supplier}/bookings/{id}`: bookings made in the platform, pushed
//! to one of the supplier's calendars by a `calendar.push` job.
//!
//! `PUT` creates or changes a booking (its `version` rises when the content changes, and
//! becomes the remote event's SEQUENCE), `DELETE` removes it from the calendar, `GET` shows
//! what the calendar holds: `push_state` is `pending`, `pushed`, `deleted`, `kept_theirs` (the
//! calendar held a newer version changed outside the platform, which was kept) or `failed`
//! with `push_error`. Every change enqueues a push; a push of a version already written does
//! nothing, so retries and duplicates are harmless.
//!
//! A `PUT` that places the booking at a new time is checked against the supplier's busy
//! occurrences (every source, as double bookings are): when it overlaps any, the answer is 409
//! `booking_conflict` with the occurrences in `conflicts`, and nothing is written, unless the
//! caller books anyway with `?force=true`. Each change is published as an event
//! (`calendar.booking.created`, `.changed`, `.deleted`) through the outbox, like conflicts.

use super::ApiState;
use super::auth::{Caller, Role};
use super::error::{ApiError, ErrorDetail};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fleet_calendar::store::bookings::{self, BookingTarget, BusyOccurrence, Placement};
pub(crate) use fleet_calendar::store::bookings::{BookingRequest, BookingView};
use fleet_jobs::EnqueueOptions;
use fleet_jobs::catalogue::CalendarPush;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Options of a booking `PUT`.
#[derive(Debug, Default, Deserialize, IntoParams)]
pub(crate) struct BookingOptions {
    /// Book even when the time overlaps the supplier's busy occurrences (default false: 409).
    #[serde(default)]
    force: bool,
}

/// The 409 answer of a booking that would overlap the supplier's busy time.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BookingConflict {
    error: ErrorDetail,
    /// The busy occurrences it overlaps, by start (at most 100).
    conflicts: Vec<BusyOccurrence>,
}

fn db_error(e: sqlx::Error) -> ApiError {
    ApiError::internal("bookings", e)
}

const TEXT_LIMIT: usize = 8 * 1024;

/// Create or change a booking and push it to the calendar. A new time that overlaps the
/// supplier's busy occurrences is refused with 409 `booking_conflict` listing them, unless
/// `force=true`.
#[utoipa::path(put, path = "/v1/calendar/suppliers/{supplier}/bookings/{id}", request_body = BookingRequest,
    params(("supplier" = String, Path), ("id" = String, Path), BookingOptions),
    responses((status = 200, body = BookingView), (status = 422, description = "end not after start, bad id", body = super::error::ErrorBody),
        (status = 401, body = super::error::ErrorBody), (status = 404, description = "no such source", body = super::error::ErrorBody),
        (status = 409, description = "`booking_conflict`: the time overlaps the supplier's busy occurrences (listed; `force=true` books anyway), \
            or `booking_in_another_calendar`", body = BookingConflict)))]
pub(crate) async fn put_booking(
    State(state): State<ApiState>,
    caller: Caller,
    Path((supplier, id)): Path<(String, String)>,
    Query(options): Query<BookingOptions>,
    Json(req): Json<BookingRequest>,
) -> Result<Response, ApiError> {
    caller.require(Role::Enqueue)?;
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
    let owner = bookings::target(&state.db, &caller.tenant, &req.source).await.map_err(db_error)?;
    match owner {
        None => return Err(ApiError::not_found(format!("calendar source {} not found", req.source))),
        Some(BookingTarget { supplier: s, .. }) if s != supplier => {
            return Err(ApiError::invalid(format!("calendar source {} belongs to another supplier", req.source)));
        }
        Some(BookingTarget { kind, .. }) if kind == "ics" => {
            return Err(ApiError::invalid(format!(
                "calendar source {} is an .ics feed, which is read-only: book into a CalDAV, Google or Graph source",
                req.source
            )));
        }
        Some(_) => {}
    }
    // A booking lives in one calendar: moving it would leave the old copy behind.
    let placed = bookings::placement(&state.db, &caller.tenant, &id).await.map_err(db_error)?;
    if let Some(Placement { source: current, remote_href: Some(_), deleted: false }) = placed
        && current != req.source
    {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "booking_in_another_calendar",
            format!("booking {id} is in calendar source {current}: delete it and book again to move it"),
        ));
    }
    // Checked only when the booking takes a new time: a retried PUT of the same time must
    // not turn into a 409 because something else was booked over it since.
    let current = bookings::view(&state.db, &caller.tenant, &id).await.map_err(db_error)?;
    let same_time = current.as_ref().is_some_and(|b| !b.deleted && b.start == req.start && b.end == req.end);
    let overlapping = if same_time {
        Vec::new()
    } else {
        let own = bookings::booking_uid(&caller.tenant, &id);
        bookings::busy_overlapping(&state.db, &caller.tenant, &supplier, req.start, req.end, &own)
            .await
            .map_err(db_error)?
    };
    if !overlapping.is_empty() && !options.force {
        let message = format!(
            "the supplier is busy at that time ({} overlapping occurrences): nothing was booked; \
             choose another time or book anyway with ?force=true",
            overlapping.len()
        );
        let body = BookingConflict { error: ErrorDetail::new("booking_conflict", message), conflicts: overlapping };
        return Ok((StatusCode::CONFLICT, Json(body)).into_response());
    }
    // The version rises only when something the calendar shows changed; the change's event
    // is written to the outbox with it.
    let changed =
        bookings::upsert(&state.db, &caller.tenant, &supplier, &id, &req, &overlapping).await.map_err(db_error)?;
    let view = load(&state, &caller.tenant, &id).await?;
    if view.supplier != supplier {
        return Err(ApiError::invalid(format!("booking {id} belongs to another supplier")));
    }
    if changed {
        publish(&state, &caller.tenant).await;
    }
    enqueue_push(&state, &caller.tenant, &id).await?;
    Ok(Json(view).into_response())
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
    caller.require(Role::Enqueue)?;
    let updated = bookings::mark_deleted(&state.db, &caller.tenant, &supplier, &id).await.map_err(db_error)?;
    let view = load(&state, &caller.tenant, &id).await?;
    if view.supplier != supplier {
        return Err(ApiError::not_found(format!("booking {id} not found")));
    }
    if updated {
        publish(&state, &caller.tenant).await;
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

/// Publishes the tenant's pending calendar events (this booking change among them) now. On
/// failure they stay in the outbox, and the tenant's next calendar sync publishes them, so
/// the booking is answered anyway.
async fn publish(state: &ApiState, tenant: &str) {
    let relay = fleet_accounts::outbox::Relay::new(state.db.clone(), state.client.clone());
    if let Err(e) = relay.publish_pending(bookings::OUTBOX, tenant).await {
        tracing::warn!(tenant, error = %e, "booking events not published yet; the next calendar sync publishes them");
    }
}

async fn enqueue_push(state: &ApiState, tenant: &str, id: &str) -> Result<(), ApiError> {
    let args = CalendarPush { tenant: tenant.to_owned(), booking_id: id.to_owned() };
    let opts = EnqueueOptions { tenant: Some(tenant.to_owned()), ..EnqueueOptions::default() };
    state.client.enqueue_with(&args, opts).await?;
    Ok(())
}

async fn load(state: &ApiState, tenant: &str, id: &str) -> Result<BookingView, ApiError> {
    bookings::view(&state.db, tenant, id)
        .await
        .map_err(db_error)?
        .ok_or_else(|| ApiError::not_found(format!("booking {id} not found")))
}
