//! `/v1/workflows`: a DAG of jobs across queues, submitted in one call, read step by
//! step, cancelled as a whole (see `fleet_jobs::workflows`). A workflow belongs to the
//! caller's tenant: every step runs as that tenant, and no other tenant can see or
//! cancel it (they get 404, as for an unknown id).

use super::ApiState;
use super::auth::{Caller, Role};
use super::error::ApiError;
use super::jobs::{MAX_ATTEMPTS, MAX_TIMEOUT};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use fleet_jobs::workflows::{SubmitOptions, WorkflowSpec, WorkflowState, WorkflowStatus};
use serde::Serialize;
use utoipa::ToSchema;

/// A workflow to run (the body of `POST /v1/workflows`).
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documentation of the body, read as `WorkflowSpec`
pub(crate) struct WorkflowRequest {
    /// The steps, in any order (1 to 50,000).
    steps: Vec<StepRequest>,
}

/// One step: a job (`kind` + `args`) or a nested workflow (`workflow`).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct StepRequest {
    /// Unique in the workflow: 1 to 100 of `A-Z a-z 0-9 _ - .`.
    name: String,
    /// Job kind (one the tenant may enqueue).
    kind: Option<String>,
    /// Arguments of the kind.
    #[schema(value_type = Option<Object>)]
    args: Option<serde_json::Value>,
    /// Queue (default: the kind's).
    queue: Option<String>,
    /// `high`, `default` or `low`.
    priority: Option<String>,
    /// Attempts before the dead letters.
    max_attempts: Option<u32>,
    /// Timeout of one attempt, ms.
    timeout_ms: Option<u64>,
    /// A nested workflow (`{"steps": [...]}`): the step ends when it ends.
    #[schema(value_type = Option<Object>)]
    workflow: Option<serde_json::Value>,
    /// Steps it waits for: names, or `{"step": name, "on_failure": "fail" | "skip" | "run"}`.
    #[schema(value_type = Vec<Object>)]
    depends_on: Vec<serde_json::Value>,
}

/// A submitted workflow.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WorkflowCreated {
    /// The workflow's id.
    id: String,
    /// `running`.
    state: String,
    /// Steps submitted (nested ones not counted).
    steps: usize,
}

/// A workflow's state and its steps' (`state` of each: waiting, enqueued, succeeded,
/// failed, cancelled, skipped; overall: running, succeeded, failed, cancelled).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct WorkflowView {
    id: String,
    state: String,
    total: u64,
    open: u64,
    failed: u64,
    created_at: u64,
    finished_at: Option<u64>,
    #[schema(value_type = Vec<Object>)]
    steps: Vec<serde_json::Value>,
}

/// After a cancel.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WorkflowCancelled {
    id: String,
    /// The workflow's state now (`cancelled`, or how it had ended before).
    state: String,
}

/// Every job step (nested ones too) as the tenant may enqueue it.
fn check(spec: &WorkflowSpec, tenancy: &crate::tenancy::TenancyConfig) -> Result<(), ApiError> {
    for s in &spec.steps {
        let at = |m: String| ApiError::invalid(format!("step {:?}: {m}", s.name));
        if let Some(kind) = &s.kind {
            let info = tenancy.public_kind(kind).map_err(|e| at(e.to_string()))?;
            let null = serde_json::value::RawValue::from_string("null".into()).expect("null is JSON");
            (info.validate)(s.args.as_deref().unwrap_or(&null))
                .map_err(|e| at(format!("args do not fit kind {kind:?}: {e}")))?;
            let queue = s.queue.clone().unwrap_or_else(|| (info.options)().queue);
            tenancy.check_queue(&queue).map_err(|e| at(e.to_string()))?;
        }
        if s.max_attempts.is_some_and(|n| n == 0 || n > MAX_ATTEMPTS) {
            return Err(at(format!("max_attempts must be 1 to {MAX_ATTEMPTS}")));
        }
        if s.timeout_ms.is_some_and(|t| t == 0 || t > MAX_TIMEOUT.as_millis() as u64) {
            return Err(at(format!("timeout_ms must be 1 to {}", MAX_TIMEOUT.as_millis())));
        }
        if let Some(w) = &s.workflow {
            check(w, tenancy)?;
        }
    }
    Ok(())
}

/// Submit a workflow. Honours `Idempotency-Key`: a retry gets the first answer and
/// creates nothing.
#[utoipa::path(post, path = "/v1/workflows", request_body = WorkflowRequest,
    responses((status = 201, body = WorkflowCreated), (status = 401, body = super::error::ErrorBody),
        (status = 413, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn create_workflow(
    State(state): State<ApiState>,
    caller: Caller,
    raw: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Enqueue)?;
    let spec: WorkflowSpec = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("invalid JSON body: {e}")))?;
    spec.validate()?;
    check(&spec, &state.tenancy)?;
    let quota = state.tenancy.workflow_steps;
    let opts = SubmitOptions { id: None, tenant: Some(caller.tenant.clone()), step_quota: Some(quota) };
    let id = state.client.submit_workflow(&spec, opts).await?;
    let created = WorkflowCreated { id, state: "running".into(), steps: spec.steps.len() };
    Ok((StatusCode::CREATED, Json(created)))
}

/// The caller's workflow `id`, or 404 (unknown, expired, or another tenant's).
async fn owned(state: &ApiState, caller: &Caller, id: &str) -> Result<(), ApiError> {
    match state.client.workflow_tenant(id).await? {
        Some(t) if t == caller.tenant => Ok(()),
        _ => Err(ApiError::not_found(format!("no workflow {id}"))),
    }
}

/// A workflow's state and its steps' (with their results).
#[utoipa::path(get, path = "/v1/workflows/{id}",
    responses((status = 200, body = WorkflowView), (status = 401, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn get_workflow(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<WorkflowStatus>, ApiError> {
    owned(&state, &caller, &id).await?;
    let status = state.client.workflow(&id).await?.ok_or_else(|| ApiError::not_found(format!("no workflow {id}")))?;
    Ok(Json(status))
}

/// Cancel a workflow as a whole: its queued, running and waiting steps are cancelled.
#[utoipa::path(delete, path = "/v1/workflows/{id}",
    responses((status = 200, body = WorkflowCancelled), (status = 401, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn cancel_workflow(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<WorkflowCancelled>, ApiError> {
    caller.require(Role::Enqueue)?;
    owned(&state, &caller, &id).await?;
    let now =
        state.client.cancel_workflow(&id).await?.ok_or_else(|| ApiError::not_found(format!("no workflow {id}")))?;
    Ok(Json(WorkflowCancelled { id, state: state_word(now).to_owned() }))
}

/// Any tenant's workflow, with its steps (admin).
#[utoipa::path(get, path = "/admin/v1/workflows/{id}", tag = "admin",
    responses((status = 200, body = WorkflowView), (status = 403, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn admin_get_workflow(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<WorkflowStatus>, ApiError> {
    caller.require(Role::Admin)?;
    let status = state.client.workflow(&id).await?.ok_or_else(|| ApiError::not_found(format!("no workflow {id}")))?;
    Ok(Json(status))
}

/// Cancel any tenant's workflow as a whole (admin; recorded in the audit log).
#[utoipa::path(delete, path = "/admin/v1/workflows/{id}", tag = "admin",
    responses((status = 200, body = WorkflowCancelled), (status = 403, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn admin_cancel_workflow(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<WorkflowCancelled>, ApiError> {
    caller.require(Role::Admin)?;
    let tenant =
        state.client.workflow_tenant(&id).await?.ok_or_else(|| ApiError::not_found(format!("no workflow {id}")))?;
    let now =
        state.client.cancel_workflow(&id).await?.ok_or_else(|| ApiError::not_found(format!("no workflow {id}")))?;
    let word = state_word(now);
    tracing::info!(operator = %caller.key_id, workflow = %id, "workflow cancelled");
    super::audit::record(
        &state,
        &caller,
        "workflow.cancel",
        format!("workflow:{id}"),
        serde_json::json!({"tenant": tenant, "state": word}),
        1,
    )
    .await;
    Ok(Json(WorkflowCancelled { id, state: word.to_owned() }))
}

fn state_word(s: WorkflowState) -> &'static str {
    match s {
        WorkflowState::Running => "running",
        WorkflowState::Succeeded => "succeeded",
        WorkflowState::Failed => "failed",
        WorkflowState::Cancelled => "cancelled",
    }
}
