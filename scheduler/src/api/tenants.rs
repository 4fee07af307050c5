//! `/admin/v1/queues/{queue}/tenants`: each tenant's usage of a queue against its cap
//! and quota, and per-tenant overrides at run time (operators; `admin` to change).

use super::ApiState;
use super::auth::{Caller, Role};
use super::error::ApiError;
use axum::Json;
use axum::extract::{Path, Query, State};
use fleet_jobs::tenant::{TenantLimits, TenantUsage, validate_tenant};
use serde::{Deserialize, Serialize};

/// One tenant's usage of a queue.
#[derive(Debug, Serialize)]
pub(crate) struct TenantView {
    tenant: String,
    #[serde(flatten)]
    usage: TenantUsage,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    limit: Option<usize>,
}

fn checked(queue: &str, tenant: Option<&str>) -> Result<(), ApiError> {
    fleet_jobs::keys::validate_queue_name(queue).map_err(ApiError::invalid)?;
    if let Some(t) = tenant {
        validate_tenant(t).map_err(ApiError::invalid)?;
    }
    Ok(())
}

/// GET /admin/v1/queues/{queue}/tenants: tenants with unfinished jobs (at most `limit`,
/// default 100, up to 1,000), with their usage and limits.
pub(crate) async fn list(
    State(s): State<ApiState>,
    caller: Caller,
    Path(queue): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<TenantView>>, ApiError> {
    caller.require(Role::Operator)?;
    checked(&queue, None)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let all = s.client.tenants(&queue, limit).await?;
    Ok(Json(all.into_iter().map(|(tenant, usage)| TenantView { tenant, usage }).collect()))
}

/// GET /admin/v1/queues/{queue}/tenants/{tenant}
pub(crate) async fn get(
    State(s): State<ApiState>,
    caller: Caller,
    Path((queue, tenant)): Path<(String, String)>,
) -> Result<Json<TenantView>, ApiError> {
    caller.require(Role::Operator)?;
    checked(&queue, Some(&tenant))?;
    let usage = s.client.tenant_usage(&queue, &tenant).await?;
    Ok(Json(TenantView { tenant, usage }))
}

/// PUT /admin/v1/queues/{queue}/tenants/{tenant}: `{"concurrency": n, "quota": n}` (each
/// optional; 0 removes the tenant's own value, so the queue's default applies again).
pub(crate) async fn set(
    State(s): State<ApiState>,
    caller: Caller,
    Path((queue, tenant)): Path<(String, String)>,
    Json(limits): Json<TenantLimits>,
) -> Result<Json<TenantView>, ApiError> {
    caller.require(Role::Admin)?;
    checked(&queue, Some(&tenant))?;
    s.client.set_tenant_limits(&queue, Some(&tenant), limits).await?;
    tracing::info!(operator = %caller.key_id, %queue, %tenant, concurrency = ?limits.concurrency,
        quota = ?limits.quota, "tenant limits changed");
    let params = serde_json::to_value(limits).unwrap_or_default();
    super::audit::record(&s, &caller, "tenant.limits", format!("queue:{queue}/tenant:{tenant}"), params, 1).await;
    let usage = s.client.tenant_usage(&queue, &tenant).await?;
    Ok(Json(TenantView { tenant, usage }))
}
