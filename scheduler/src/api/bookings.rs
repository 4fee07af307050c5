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
use fleet_calendar::store::bookings::{self, BookingTarget, Placement};
pub(crate) use fleet_calendar::store::bookings::{BookingRequest, BookingView};
use fleet_jobs::EnqueueOptions;
use fleet_jobs::catalogue::CalendarPush;

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
    // The version rises only when something the calendar shows changed.
    bookings::upsert(&state.db, &caller.tenant, &supplier, &id, &req).await.map_err(db_error)?;
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
    let updated = bookings::mark_deleted(&state.db, &caller.tenant, &supplier, &id).await.map_err(db_error)?;
    let view = load(&state, &caller.tenant, &id).await?;
    if view.supplier != supplier {
        return Err(ApiError::not_found(format!("booking {id} not found")));
    }
    if updated {
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
    bookings::view(&state.db, tenant, id)
        .await
        .map_err(db_error)?
        .ok_or_else(|| ApiError::not_found(format!("booking {id} not found")))
}
