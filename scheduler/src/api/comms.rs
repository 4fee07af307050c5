//! `/v1/comms`: a supplier's communication sources (IMAP mailboxes, SMS/calls accounts,
//! in-app messages), its clients' addresses, and a client's timeline. The queries live in
//! [`fleet_comms::store`] (shared with `fleetctl`).
//!
//! A source's password is sealed with AES-256-GCM (`FLEET_SECRETS_KEY`) before it is
//! stored and never shown again; a sync is a `comms.sync` job on the `comms` queue.
//! Timelines are paged newest first with an opaque cursor (`next`).

use super::ApiState;
use super::auth::{Caller, Role};
use super::error::ApiError;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use fleet_accounts::sources::SourceTable;
use fleet_comms::store::{
    self as store, ContactRequest, ContactView, PageQuery, QuarantinedView, SourceRequest, SourceView, TimelinePage,
};
use serde::Serialize;
use utoipa::ToSchema;

/// Register a source.
#[utoipa::path(post, path = "/v1/comms/sources", operation_id = "comms_create_source", request_body = SourceRequest,
    responses((status = 201, body = SourceView),
        (status = 401, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn create_source(
    State(state): State<ApiState>,
    caller: Caller,
    Json(req): Json<SourceRequest>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Enqueue)?;
    let view = store::create(&state.db, state.secrets.as_ref(), &caller.tenant, req).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// List the tenant's sources with their sync state, by registration, a page at a time
/// (`limit` 1 to 500, default 100; `offset`).
#[utoipa::path(get, path = "/v1/comms/sources", operation_id = "comms_list_sources", params(fleet_accounts::sources::ListPage),
    responses((status = 200, body = Vec<SourceView>), (status = 401, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn list_sources(
    State(state): State<ApiState>,
    caller: Caller,
    Query(page): Query<fleet_accounts::sources::ListPage>,
) -> Result<Json<Vec<SourceView>>, ApiError> {
    Ok(Json(store::list_page(&state.db, &caller.tenant, &page).await?))
}

/// One source's sync state: per-folder cursors, last error and report, quarantined count.
#[utoipa::path(get, path = "/v1/comms/sources/{id}", operation_id = "comms_get_source", params(("id" = String, Path)),
    responses((status = 200, body = SourceView), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn get_source(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SourceView>, ApiError> {
    Ok(Json(store::get(&state.db, Some(&caller.tenant), &id).await?))
}

/// Remove a source: its cursors, its copies, and the entries no other source holds.
#[utoipa::path(delete, path = "/v1/comms/sources/{id}", operation_id = "comms_delete_source", params(("id" = String, Path)),
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
pub(crate) struct SyncView {
    /// The `comms.sync` job.
    job: String,
}

/// Sync a source now (a `comms.sync` job; the same job id while one is pending).
#[utoipa::path(post, path = "/v1/comms/sources/{id}/sync", operation_id = "comms_sync_source", params(("id" = String, Path)),
    responses((status = 202, body = SyncView), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn sync_source(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let job = super::enqueue_source_sync(&state, &caller, SourceTable::Comms, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(SyncView { job: job.to_string() })))
}

/// The messages of a source that could not be parsed (newest first, at most 500).
#[utoipa::path(get, path = "/v1/comms/sources/{id}/quarantine", params(("id" = String, Path)),
    responses((status = 200, body = Vec<QuarantinedView>), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn source_quarantine(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Vec<QuarantinedView>>, ApiError> {
    Ok(Json(store::quarantine(&state.db, Some(&caller.tenant), &id).await?))
}

/// The entries a source brought in, newest first.
#[utoipa::path(get, path = "/v1/comms/sources/{id}/entries", params(("id" = String, Path), PageQuery),
    responses((status = 200, body = TimelinePage), (status = 404, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn source_entries(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Json<TimelinePage>, ApiError> {
    Ok(Json(store::source_entries(&state.db, Some(&caller.tenant), &id, &q).await?))
}

/// Set which addresses and numbers are a client's (matching applies to later syncs).
#[utoipa::path(post, path = "/v1/comms/contacts", request_body = ContactRequest,
    responses((status = 200, body = ContactView), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn put_contact(
    State(state): State<ApiState>,
    caller: Caller,
    Json(req): Json<ContactRequest>,
) -> Result<Json<ContactView>, ApiError> {
    caller.require(Role::Enqueue)?;
    Ok(Json(store::put_contact(&state.db, &caller.tenant, req).await?))
}

/// A client's timeline across sources and channels, newest first.
#[utoipa::path(get, path = "/v1/comms/clients/{client}/timeline", params(("client" = String, Path), PageQuery),
    responses((status = 200, body = TimelinePage), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn client_timeline(
    State(state): State<ApiState>,
    caller: Caller,
    Path(client): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Json<TimelinePage>, ApiError> {
    Ok(Json(store::client_timeline(&state.db, &caller.tenant, &client, &q).await?))
}
