//! The API's one error type: a status, a stable code and a message for the caller.
//! Internal details are logged, never sent.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable message, safe to show.
    pub message: String,
    /// Seconds to wait before retrying, sent as `Retry-After` (429, 503).
    pub retry_after: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorDetail {
    code: String,
    message: String,
}

impl ErrorDetail {
    /// The `error` member of an answer that carries more than the error (a 409 with the
    /// conflicting occurrences).
    pub(crate) fn new(code: &str, message: impl Into<String>) -> Self {
        ErrorDetail { code: code.to_owned(), message: message.into() }
    }
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), retry_after: None }
    }
    /// The same error with `Retry-After: secs`.
    pub(crate) fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }
    /// A failure inside Fleet: logged in full, answered in general terms.
    pub(crate) fn internal(context: &str, error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "{context}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; it has been logged")
    }
    /// The queue store or database is unreachable: worth retrying.
    pub(crate) fn unavailable(context: &str, error: impl std::fmt::Display) -> Self {
        tracing::warn!(%error, "{context}");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the job store is unavailable; retry later")
    }
}

impl From<fleet_jobs::Error> for ApiError {
    fn from(e: fleet_jobs::Error) -> Self {
        match e {
            fleet_jobs::Error::Invalid(m) => ApiError::invalid(m),
            fleet_jobs::Error::Encode { kind, .. } => {
                ApiError::invalid(format!("arguments for kind {kind:?} cannot be encoded"))
            }
            fleet_jobs::Error::Redis(e) => ApiError::unavailable("redis", e),
            e @ (fleet_jobs::Error::QuotaExceeded { .. } | fleet_jobs::Error::WorkflowQuotaExceeded { .. }) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", e.to_string()).retry_after(5)
            }
            e @ fleet_jobs::Error::NotReplicated { .. } => {
                // Written on the primary, not yet on its replicas: a retry with the same
                // ids (or Idempotency-Key) is safe and does not enqueue twice.
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_replicated", e.to_string()).retry_after(1)
            }
            other => ApiError::internal("job store", other),
        }
    }
}

impl From<fleet_accounts::sources::StoreError> for ApiError {
    fn from(e: fleet_accounts::sources::StoreError) -> Self {
        use fleet_accounts::sources::StoreError;
        match e {
            StoreError::Invalid(m) => ApiError::invalid(m),
            StoreError::BadSchedule(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_schedule", m),
            StoreError::NotFound(m) => ApiError::not_found(m),
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            e @ StoreError::NoKey(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_configured", e.to_string()),
            StoreError::Seal(e) => ApiError::internal("sealing a secret", e),
            StoreError::Db(e) => ApiError::unavailable("PostgreSQL", e),
            StoreError::Jobs(e) => e.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_owned(), message: self.message } };
        let res = (self.status, Json(body)).into_response();
        match self.retry_after {
            Some(secs) => super::limits::with_retry_after(res, secs),
            None => res,
        }
    }
}
