//! The archive of finished jobs: `GET /admin/v1/archive/jobs` (search every tenant's,
//! operators) and `GET /admin/v1/archive/jobs/{queue}/{id}`; `GET /v1/archive/jobs` and
//! `GET /v1/archive/jobs/{queue}/{id}` for a tenant's key, always scoped to its own tenant
//! whatever the query names.

use super::ApiState;
use super::auth::{Caller, Role};
use super::error::ApiError;
use crate::archive::{self, ArchivePage, ArchivedJob, Search, SearchError};
use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use utoipa::IntoParams;

impl From<SearchError> for ApiError {
    fn from(e: SearchError) -> Self {
        match e {
            SearchError::Invalid(m) => ApiError::invalid(m),
            SearchError::Db(e) => ApiError::unavailable("searching the archive", e),
        }
    }
}

/// Which ending of an archived job to show.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ShowQuery {
    /// That attempt's ending (default: the latest).
    #[serde(default)]
    attempt: Option<i32>,
}

fn check_queue(queue: &str) -> Result<(), ApiError> {
    fleet_jobs::keys::validate_queue_name(queue).map_err(ApiError::invalid)
}

/// GET /admin/v1/archive/jobs: finished jobs of every tenant, newest first.
#[utoipa::path(get, path = "/admin/v1/archive/jobs", params(Search),
    responses((status = 200, body = ArchivePage), (status = 401, body = super::error::ErrorBody),
        (status = 403, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn admin_search(
    State(s): State<ApiState>,
    caller: Caller,
    Query(q): Query<Search>,
) -> Result<Json<ArchivePage>, ApiError> {
    caller.require(Role::Operator)?;
    Ok(Json(archive::search(&s.db, &q).await?))
}

/// GET /admin/v1/archive/jobs/{queue}/{id}: one archived job, whole.
#[utoipa::path(get, path = "/admin/v1/archive/jobs/{queue}/{id}",
    params(("queue" = String, Path, description = "queue"), ("id" = String, Path, description = "job id"), ShowQuery),
    responses((status = 200, body = ArchivedJob), (status = 401, body = super::error::ErrorBody),
        (status = 403, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn admin_show(
    State(s): State<ApiState>,
    caller: Caller,
    Path((queue, id)): Path<(String, String)>,
    Query(q): Query<ShowQuery>,
) -> Result<Json<ArchivedJob>, ApiError> {
    caller.require(Role::Operator)?;
    check_queue(&queue)?;
    archive::get(&s.db, &queue, &id, q.attempt, None)
        .await
        .map_err(|e| ApiError::unavailable("reading the archive", e))?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no archived job {id} in queue {queue}")))
}

/// GET /v1/archive/jobs: the caller's tenant's finished jobs (a `tenant` filter is
/// replaced by the key's tenant).
#[utoipa::path(get, path = "/v1/archive/jobs", params(Search),
    responses((status = 200, body = ArchivePage), (status = 401, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn tenant_search(
    State(s): State<ApiState>,
    caller: Caller,
    Query(mut q): Query<Search>,
) -> Result<Json<ArchivePage>, ApiError> {
    caller.require(Role::Enqueue)?;
    q.tenant = Some(caller.tenant.clone());
    Ok(Json(archive::search(&s.db, &q).await?))
}

/// GET /v1/archive/jobs/{queue}/{id}: one of the caller's tenant's archived jobs (404
/// for another tenant's).
#[utoipa::path(get, path = "/v1/archive/jobs/{queue}/{id}",
    params(("queue" = String, Path, description = "queue"), ("id" = String, Path, description = "job id"), ShowQuery),
    responses((status = 200, body = ArchivedJob), (status = 401, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn tenant_show(
    State(s): State<ApiState>,
    caller: Caller,
    Path((queue, id)): Path<(String, String)>,
    Query(q): Query<ShowQuery>,
) -> Result<Json<ArchivedJob>, ApiError> {
    caller.require(Role::Enqueue)?;
    check_queue(&queue)?;
    archive::get(&s.db, &queue, &id, q.attempt, Some(&caller.tenant))
        .await
        .map_err(|e| ApiError::unavailable("reading the archive", e))?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no archived job {id} in queue {queue}")))
}
