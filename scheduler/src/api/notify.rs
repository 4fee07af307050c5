//! `/v1/notify` and `/v1/notifications`: a tenant's recipients (channels, preferences
//! per category and channel, time zone and quiet hours, Web Push subscriptions), its
//! templates (per-locale variants, refused with 400 and the compiler's message when
//! they do not compile), and its notifications with each channel's send record. The
//! queries live in [`fleet_notify::store`] (shared with `fleetctl` and the handler).
//!
//! `POST /v1/notifications` records the notification and enqueues its `notify.send`
//! job, whose id is the notification's: it is idempotent with an `Idempotency-Key`
//! (the API's layer), and a `dedup_key` makes a retried event one notification (the
//! first is returned with `deduplicated: true`, and nothing is sent again).

use super::ApiState;
use super::auth::{Caller, Role};
use super::error::ApiError;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use fleet_jobs::catalogue::NotifySend;
use fleet_jobs::{EnqueueOptions, JobId};
use fleet_notify::store::{
    self as store, NotificationCreated, NotificationRequest, NotificationView, RecipientRequest, RecipientView,
    TemplateRequest, TemplateView,
};
use serde::Deserialize;
use utoipa::ToSchema;

/// Create or replace a recipient's channels, preferences, time zone and quiet hours.
#[utoipa::path(put, path = "/v1/notify/recipients/{id}", params(("id" = String, Path)), request_body = RecipientRequest,
    responses((status = 200, body = RecipientView), (status = 401, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn put_recipient(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(req): Json<RecipientRequest>,
) -> Result<Json<RecipientView>, ApiError> {
    caller.require(Role::Enqueue)?;
    Ok(Json(store::put_recipient(&state.db, &caller.tenant, &id, req).await?))
}

/// A recipient.
#[utoipa::path(get, path = "/v1/notify/recipients/{id}", params(("id" = String, Path)),
    responses((status = 200, body = RecipientView), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn get_recipient(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RecipientView>, ApiError> {
    Ok(Json(store::get_recipient(&state.db, &caller.tenant, &id).await?))
}

/// Remove a recipient and its push subscriptions (its notifications stay).
#[utoipa::path(delete, path = "/v1/notify/recipients/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn delete_recipient(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Enqueue)?;
    store::delete_recipient(&state.db, &caller.tenant, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A browser's push subscription (`PushSubscription.toJSON()`).
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct PushSubscriptionRequest {
    /// The push service URL.
    endpoint: String,
    /// The subscription's keys.
    keys: PushKeys,
}

/// `p256dh` and `auth`, base64url.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct PushKeys {
    /// The browser's P-256 public key.
    p256dh: String,
    /// The authentication secret.
    auth: String,
}

/// Add a Web Push subscription to a recipient.
#[utoipa::path(post, path = "/v1/notify/recipients/{id}/push-subscriptions", params(("id" = String, Path)),
    request_body = PushSubscriptionRequest,
    responses((status = 201, body = RecipientView), (status = 404, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn add_push_subscription(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(req): Json<PushSubscriptionRequest>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Enqueue)?;
    store::add_push_subscription(&state.db, &caller.tenant, &id, &req.endpoint, &req.keys.p256dh, &req.keys.auth)
        .await?;
    Ok((StatusCode::CREATED, Json(store::get_recipient(&state.db, &caller.tenant, &id).await?)))
}

/// Create or replace a template. Every part of every locale is compiled first: one
/// that does not compile is refused (400 `template_invalid`, the compiler's message).
#[utoipa::path(put, path = "/v1/notify/templates/{name}", params(("name" = String, Path)), request_body = TemplateRequest,
    responses((status = 200, body = TemplateView), (status = 400, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn put_template(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    Json(req): Json<TemplateRequest>,
) -> Result<Json<TemplateView>, ApiError> {
    caller.require(Role::Enqueue)?;
    if let Err(m) = fleet_notify::template::check(&req.default_locale, &req.variants) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "template_invalid", m));
    }
    Ok(Json(store::put_template(&state.db, &caller.tenant, &name, req).await?))
}

/// A template.
#[utoipa::path(get, path = "/v1/notify/templates/{name}", params(("name" = String, Path)),
    responses((status = 200, body = TemplateView), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn get_template(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<TemplateView>, ApiError> {
    Ok(Json(store::get_template(&state.db, &caller.tenant, &name).await?))
}

/// Send a notification: recorded, then a `notify.send` job (id = the notification's).
/// With a `dedup_key` already used, the first notification comes back
/// (`deduplicated: true`) and nothing new is sent.
#[utoipa::path(post, path = "/v1/notifications", request_body = NotificationRequest,
    responses((status = 202, body = NotificationCreated), (status = 401, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn create_notification(
    State(state): State<ApiState>,
    caller: Caller,
    Json(req): Json<NotificationRequest>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Enqueue)?;
    let created = store::create_notification(&state.db, &caller.tenant, &req).await?;
    // A notification whose enqueue failed (or was lost with its answer) gets its job when
    // the event is retried: the same job id, so never two jobs.
    if store::needs_job(&state.db, &caller.tenant, &created.id).await? {
        let opts = EnqueueOptions {
            tenant: Some(caller.tenant.clone()),
            id: Some(JobId(created.id.clone())),
            ..Default::default()
        };
        let job = state.client.enqueue_with(&NotifySend { notification: created.id.clone() }, opts).await?;
        store::set_job(&state.db, &caller.tenant, &created.id, job.as_str()).await?;
    }
    Ok((StatusCode::ACCEPTED, Json(created)))
}

/// A notification with each channel's send record (channel, provider, status, provider
/// message id, error).
#[utoipa::path(get, path = "/v1/notifications/{id}", params(("id" = String, Path)),
    responses((status = 200, body = NotificationView), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn get_notification(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<NotificationView>, ApiError> {
    Ok(Json(store::get_notification(&state.db, Some(&caller.tenant), &id).await?))
}

/// One-click unsubscribe (RFC 8058): the `List-Unsubscribe` URL of an email, POSTed by
/// the mail client with `List-Unsubscribe=One-Click`, no credentials. Turns email off for
/// the email's category for its recipient; idempotent. GET is not served: link scanners
/// would unsubscribe people.
#[utoipa::path(post, path = "/v1/notify/unsubscribe/{token}", params(("token" = String, Path)), security(()),
    responses((status = 200), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn unsubscribe(
    State(state): State<ApiState>,
    Path(token): Path<String>,
) -> Result<StatusCode, ApiError> {
    if store::unsubscribe(&state.db, &token).await.map_err(|e| ApiError::unavailable("PostgreSQL", e))? {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::not_found("no such unsubscribe link"))
    }
}
