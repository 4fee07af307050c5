//! `/v1/calendar`: a supplier's calendar sources (CalDAV collections, `.ics` feeds), its
//! settings, its occurrences in a window and its double bookings. The queries live in
//! [`fleet_calendar::store`] (shared with `fleetctl`).
//!
//! A source's password is sealed with AES-256-GCM (`FLEET_SECRETS_KEY`) before it is stored
//! and never shown again; a sync is a `calendar.sync` job on the `calendar` queue.

use super::ApiState;
use super::auth::{Caller, Role};
use super::error::ApiError;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use fleet_accounts::sources::SourceTable;
use fleet_calendar::store::{
    self as store, CalendarSourceRequest, CalendarSourceView, ConflictView, OccurrenceView, SourceFilter,
    SupplierSettings, Window,
};
use serde::Serialize;
use utoipa::ToSchema;

/// Register a calendar source.
#[utoipa::path(post, path = "/v1/calendar/sources", operation_id = "calendar_create_source", request_body = CalendarSourceRequest,
    responses((status = 201, body = CalendarSourceView),
        (status = 401, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn create_source(
    State(state): State<ApiState>,
    caller: Caller,
    Json(req): Json<CalendarSourceRequest>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Enqueue)?;
    let view = store::create(&state.db, state.secrets.as_ref(), &caller.tenant, req).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// List the tenant's calendar sources with their sync state, by registration, a page at a
/// time (`limit` 1 to 500, default 100; `offset`).
#[utoipa::path(get, path = "/v1/calendar/sources", operation_id = "calendar_list_sources", params(SourceFilter),
    responses((status = 200, body = Vec<CalendarSourceView>), (status = 401, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn list_sources(
    State(state): State<ApiState>,
    caller: Caller,
    Query(filter): Query<SourceFilter>,
) -> Result<Json<Vec<CalendarSourceView>>, ApiError> {
    Ok(Json(store::list_page(&state.db, &caller.tenant, &filter).await?))
}

/// One source: its sync state, last error, quarantine reason and last report.
#[utoipa::path(get, path = "/v1/calendar/sources/{id}", operation_id = "calendar_get_source", params(("id" = String, Path)),
    responses((status = 200, body = CalendarSourceView), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn get_source(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CalendarSourceView>, ApiError> {
    Ok(Json(store::get(&state.db, Some(&caller.tenant), &id).await?))
}

/// Remove a source with its events, occurrences and conflicts.
#[utoipa::path(delete, path = "/v1/calendar/sources/{id}", operation_id = "calendar_delete_source", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn delete_source(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Enqueue)?;
    store::delete(&state.db, Some(&caller.tenant), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A queued sync.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CalendarSyncView {
    /// The `calendar.sync` job.
    job: String,
}

/// Sync a source now (a `calendar.sync` job; the same job id while one is pending).
#[utoipa::path(post, path = "/v1/calendar/sources/{id}/sync", operation_id = "calendar_sync_source", params(("id" = String, Path)),
    responses((status = 202, body = CalendarSyncView), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn sync_source(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let job = super::enqueue_source_sync(&state, &caller, SourceTable::Calendar, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(CalendarSyncView { job: job.to_string() })))
}

/// Release a quarantined source: its next sync (enqueued now) applies the fetch even past
/// the mass-deletion guard, once. 409 when the source is not quarantined.
#[utoipa::path(post, path = "/v1/calendar/sources/{id}/release", params(("id" = String, Path)),
    responses((status = 202, body = CalendarSyncView), (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
pub(crate) async fn release_source(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Enqueue)?;
    let job = store::release(&state.db, &state.client, Some(&caller.tenant), &id).await?;
    Ok((StatusCode::ACCEPTED, Json(CalendarSyncView { job: job.to_string() })))
}

/// A supplier's calendar settings (the defaults when never set: all-day events free, UTC).
#[utoipa::path(get, path = "/v1/calendar/suppliers/{supplier}", params(("supplier" = String, Path)),
    responses((status = 200, body = SupplierSettings), (status = 401, body = super::error::ErrorBody)))]
pub(crate) async fn get_supplier(
    State(state): State<ApiState>,
    caller: Caller,
    Path(supplier): Path<String>,
) -> Result<Json<SupplierSettings>, ApiError> {
    Ok(Json(store::supplier(&state.db, &caller.tenant, &supplier).await?))
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
    caller.require(Role::Enqueue)?;
    store::put_supplier(&state.db, &caller.tenant, &supplier, &settings).await?;
    Ok(Json(settings))
}

/// A supplier's occurrences in a window (at most 36 months; default the next 24), by start,
/// at most 10,000.
#[utoipa::path(get, path = "/v1/calendar/suppliers/{supplier}/occurrences", params(("supplier" = String, Path), Window),
    responses((status = 200, body = Vec<OccurrenceView>), (status = 401, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn occurrences(
    State(state): State<ApiState>,
    caller: Caller,
    Path(supplier): Path<String>,
    Query(window): Query<Window>,
) -> Result<Json<Vec<OccurrenceView>>, ApiError> {
    Ok(Json(store::occurrences(&state.db, &caller.tenant, &supplier, &window).await?))
}

/// A supplier's open double bookings, by start, at most 10,000.
#[utoipa::path(get, path = "/v1/calendar/suppliers/{supplier}/conflicts", params(("supplier" = String, Path)),
    responses((status = 200, body = Vec<ConflictView>), (status = 401, body = super::error::ErrorBody)))]
pub(crate) async fn conflicts(
    State(state): State<ApiState>,
    caller: Caller,
    Path(supplier): Path<String>,
) -> Result<Json<Vec<ConflictView>>, ApiError> {
    Ok(Json(store::conflicts(&state.db, &caller.tenant, &supplier).await?))
}
