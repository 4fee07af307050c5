//! `GET /admin/v1/audit`: the audit log (operators), and how handlers write to it.

use super::ApiState;
use super::auth::{Caller, Role};
use super::error::ApiError;
use axum::Json;
use axum::extract::{Query, State};

/// Records a change made by `caller` (its key id and tenant; never the secret). A failed
/// write is logged: the change is done by then.
pub(crate) async fn record(
    s: &ApiState,
    caller: &Caller,
    action: &str,
    target: String,
    params: serde_json::Value,
    affected: i64,
) {
    crate::audit::record_or_log(
        &s.db,
        crate::audit::Change { actor: &caller.key_id, tenant: Some(&caller.tenant), action, target, params, affected },
    )
    .await
}

/// GET /admin/v1/audit?action=&since=&before=&limit= (newest first; `next` is the
/// `before` of the following page)
pub(crate) async fn list(
    State(s): State<ApiState>,
    caller: Caller,
    Query(q): Query<crate::audit::Query>,
) -> Result<Json<crate::audit::Page>, ApiError> {
    caller.require(Role::Operator)?;
    if q.limit.is_some_and(|l| !(1..=crate::audit::MAX_PAGE).contains(&l)) {
        return Err(ApiError::invalid(format!("limit must be 1 to {}", crate::audit::MAX_PAGE)));
    }
    Ok(Json(crate::audit::list(&s.db, &q).await.map_err(|e| ApiError::unavailable("reading the audit log", e))?))
}
