//! The HTTP API: enqueue one job or many, read a job's state, cancel it; batches.
//! Authenticated with API keys, scoped per tenant, described in OpenAPI at
//! `/openapi.json`. [`app`] returns the router, so tests call it without a socket.

pub mod admin;
mod admin_jobs;
mod archive;
mod audit;
pub mod auth;
mod batches;
mod bookings;
mod calendar;
mod comms;
pub mod error;
mod idempotency;
mod images;
pub mod intake;
mod jobs;
pub mod limits;
mod notify;
pub mod push;
mod shape;
mod stream;
mod tenants;
mod webhooks;
mod workflows;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use fleet_jobs::Client;
use utoipa::OpenApi;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The job client.
    pub client: Client,
    /// PostgreSQL.
    pub db: sqlx::PgPool,
    /// Providers allowed to call `/v1/intake/{provider}`.
    pub intake: std::sync::Arc<std::collections::BTreeMap<String, intake::IntakeProvider>>,
    /// The last hour of queue samples for the dashboard's charts.
    pub history: admin::History,
    /// Seals communication-source secrets (`FLEET_SECRETS_KEY`; `None`: sources cannot be stored).
    pub secrets: Option<fleet_accounts::secrets::SecretBox>,
    /// What tenants may enqueue, and where.
    pub tenancy: std::sync::Arc<crate::tenancy::TenancyConfig>,
    /// Per-process request rates, timeout and stream caps.
    pub limits: limits::Limiter,
    /// Signs `POST /v1/uploads` URLs (`None`: the store is not S3, uploads answer 501).
    pub uploads: Option<std::sync::Arc<fleet_images::uploads::UploadSigner>>,
    /// The config file's schedules: config-owned, so the admin API refuses to edit or
    /// delete them (pause, resume and run-now work on them).
    pub config_schedules: std::sync::Arc<Vec<crate::schedule::ScheduleSpec>>,
}

impl ApiState {
    /// State with no intake providers and generous limits ([`limits::ApiLimits::generous`]).
    pub fn new(client: Client, db: sqlx::PgPool) -> Self {
        ApiState {
            client,
            db,
            intake: Default::default(),
            history: Default::default(),
            secrets: fleet_accounts::secrets::SecretBox::from_env().ok(),
            tenancy: Default::default(),
            limits: limits::Limiter::new(limits::ApiLimits::generous()),
            uploads: None,
            config_schedules: Default::default(),
        }
    }

    /// The same state knowing the config file's schedules (see [`ApiState::config_schedules`]).
    pub fn with_config_schedules(mut self, specs: Vec<crate::schedule::ScheduleSpec>) -> Self {
        self.config_schedules = std::sync::Arc::new(specs);
        self
    }

    /// The same state with these rules for tenants (default: no test kinds, the public
    /// kinds' queues).
    pub fn with_tenancy(mut self, tenancy: crate::tenancy::TenancyConfig) -> Self {
        self.tenancy = std::sync::Arc::new(tenancy);
        self
    }

    /// The same state with these limits (rates, timeout, stream caps).
    pub fn with_limits(mut self, settings: limits::ApiLimits) -> Self {
        self.limits = limits::Limiter::new(settings);
        self
    }

    /// The same state with `per_second` requests per API key and `burst` at once (the
    /// other limits unchanged).
    pub fn with_rate_limit(self, per_second: u32, burst: u32) -> Self {
        let settings =
            limits::ApiLimits { rate_per_key: per_second, burst_per_key: burst, ..self.limits.settings().clone() };
        self.with_limits(settings)
    }

    /// The same state with this key for communication-source secrets.
    pub fn with_secrets(mut self, secrets: fleet_accounts::secrets::SecretBox) -> Self {
        self.secrets = Some(secrets);
        self
    }

    /// The same state with presigned uploads into `storage` when it is S3 (else none: `POST
    /// /v1/uploads` answers 501). Fails on an S3 endpoint or bucket that cannot be addressed.
    pub fn with_upload_store(
        mut self,
        storage: &fleet_images::storage::StoreConfig,
    ) -> Result<Self, fleet_images::storage::StorageError> {
        self.uploads = match storage {
            fleet_images::storage::StoreConfig::S3(c) => {
                Some(std::sync::Arc::new(fleet_images::uploads::UploadSigner::new(c)?))
            }
            fleet_images::storage::StoreConfig::Local(_) => None,
        };
        Ok(self)
    }

    /// The same state with intake providers.
    pub fn with_intake(mut self, providers: std::collections::BTreeMap<String, intake::IntakeProvider>) -> Self {
        self.intake = std::sync::Arc::new(providers);
        self
    }
}

/// Enqueues a sync of the caller's source `id` (see [`fleet_accounts::sources::sync_now`]): 404
/// when the tenant has no such source; while a sync of it is pending (one minute), the
/// same job's id comes back instead of a second job.
pub(crate) async fn enqueue_source_sync(
    state: &ApiState,
    caller: &auth::Caller,
    table: fleet_accounts::sources::SourceTable,
    id: &str,
) -> Result<fleet_jobs::JobId, error::ApiError> {
    caller.require(auth::Role::Enqueue)?;
    Ok(fleet_accounts::sources::sync_now(&state.db, &state.client, table, Some(&caller.tenant), id).await?)
}

/// Most jobs in one bulk request or batch.
pub const MAX_JOBS_PER_REQUEST: usize = 1000;

#[derive(OpenApi)]
#[openapi(
    info(title = "Fleet API", description = "Enqueue jobs and batches into the Fleet worker fleet; read and cancel them."),
    paths(jobs::enqueue, jobs::enqueue_bulk, jobs::get_job, jobs::cancel_job, batches::create_batch, batches::get_batch, batches::batch_events,
        webhooks::create_endpoint, webhooks::list_endpoints, webhooks::delete_endpoint, webhooks::publish_event, webhooks::rotate_secret, webhooks::enable_endpoint, intake::receive, push::google_notification, push::graph_notification, stream::tenant_stream, stream::create_token, images::create_portfolio, images::get_portfolio, images::create_upload,
        calendar::create_source, calendar::list_sources, calendar::get_source, calendar::delete_source, calendar::sync_source, calendar::release_source, calendar::get_supplier, calendar::put_supplier, calendar::occurrences, calendar::conflicts,
        bookings::put_booking, bookings::get_booking, bookings::delete_booking,
        comms::create_source, comms::list_sources, comms::get_source, comms::delete_source, comms::sync_source, comms::put_contact, comms::client_timeline, comms::source_quarantine, comms::source_entries,
        archive::admin_search, archive::admin_show, archive::tenant_search, archive::tenant_show,
        admin_jobs::browse, admin_jobs::retry, admin_jobs::cancel, admin_jobs::delete, admin_jobs::replay, admin_jobs::batches, admin_jobs::limits, admin_jobs::limit,
        workflows::create_workflow, workflows::get_workflow, workflows::cancel_workflow,
        workflows::admin_get_workflow, workflows::admin_cancel_workflow,
        notify::put_recipient, notify::get_recipient, notify::delete_recipient, notify::add_push_subscription, notify::put_template, notify::get_template, notify::create_notification, notify::get_notification, notify::unsubscribe),
    components(schemas(error::ErrorBody, jobs::EnqueueRequest, jobs::DedupRequest, jobs::DedupModeName, jobs::DedupView, jobs::Enqueued, jobs::BulkRequest, jobs::BulkEnqueued, jobs::JobView, jobs::ProgressView, jobs::CancelView, batches::BatchRequest, batches::BatchView,
        webhooks::EndpointRequest, webhooks::EndpointView, webhooks::EventRequest, webhooks::EventView, webhooks::RotateRequest, webhooks::RotatedView, webhooks::EnableRequest, webhooks::EnabledView, stream::StreamTokenRequest, stream::StreamToken,
        images::PortfolioRequest, images::UploadedImage, images::VariantRequest, images::PortfolioAccepted, images::PortfolioView, images::ImageView, images::UploadRequest, images::UploadGranted,
        fleet_accounts::sources::SyncStatus, fleet_calendar::store::CalendarSourceRequest, fleet_calendar::store::CalendarSourceView, calendar::CalendarSyncView, fleet_calendar::store::SupplierSettings, fleet_calendar::store::OccurrenceView, fleet_calendar::store::ConflictView,
        bookings::BookingRequest, bookings::BookingView, bookings::BookingConflict, fleet_calendar::store::bookings::BusyOccurrence,
        fleet_comms::store::SourceRequest, fleet_comms::store::SourceView, comms::SyncView, fleet_comms::store::ContactRequest, fleet_comms::store::ContactView, fleet_comms::store::TimelinePage, fleet_comms::store::QuarantinedView, admin_jobs::ReplayRequest,
        crate::archive::ArchivedJob, crate::archive::ArchivedSummary, crate::archive::ArchivePage,
        workflows::WorkflowRequest, workflows::StepRequest, workflows::WorkflowCreated, workflows::WorkflowView, workflows::WorkflowCancelled,
        fleet_notify::store::RecipientRequest, fleet_notify::store::RecipientView, fleet_notify::store::QuietHoursView, fleet_notify::store::TemplateRequest, fleet_notify::store::TemplateView, fleet_notify::template::Variant, fleet_notify::store::NotificationRequest, fleet_notify::store::NotificationCreated, fleet_notify::store::NotificationView, fleet_notify::store::SendView, notify::PushSubscriptionRequest, notify::PushKeys)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![SecurityRequirement::new("api_key", Vec::<String>::new())]);
    }
}

/// The OpenAPI description.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The API's routes; request bodies over `max_body` bytes get 413. Every answer passes
/// through [`shape::guard`]: the request timeout, errors in one shape, `nosniff`.
pub fn app(state: ApiState, max_body: usize) -> Router {
    Router::new()
        .route("/v1/jobs", post(jobs::enqueue))
        .route("/v1/jobs/bulk", post(jobs::enqueue_bulk))
        .route("/v1/jobs/{queue}/{id}", get(jobs::get_job).delete(jobs::cancel_job))
        .route("/v1/batches", post(batches::create_batch))
        .route("/v1/batches/{id}", get(batches::get_batch))
        .route("/v1/batches/{id}/events", get(batches::batch_events))
        .route("/v1/workflows", post(workflows::create_workflow))
        .route("/v1/workflows/{id}", get(workflows::get_workflow).delete(workflows::cancel_workflow))
        .route("/v1/portfolios", post(images::create_portfolio))
        .route("/v1/uploads", post(images::create_upload))
        .route("/v1/portfolios/{portfolio}", get(images::get_portfolio))
        .route("/v1/endpoints", post(webhooks::create_endpoint).get(webhooks::list_endpoints))
        .route("/v1/endpoints/{id}", axum::routing::delete(webhooks::delete_endpoint))
        .route("/v1/endpoints/{id}/secrets", post(webhooks::rotate_secret))
        .route("/v1/endpoints/{id}/enable", post(webhooks::enable_endpoint))
        .route("/v1/events", post(webhooks::publish_event))
        .route("/v1/comms/sources", post(comms::create_source).get(comms::list_sources))
        .route("/v1/comms/sources/{id}", get(comms::get_source).delete(comms::delete_source))
        .route("/v1/comms/sources/{id}/sync", post(comms::sync_source))
        .route("/v1/comms/sources/{id}/quarantine", get(comms::source_quarantine))
        .route("/v1/comms/sources/{id}/entries", get(comms::source_entries))
        .route("/v1/comms/contacts", post(comms::put_contact))
        .route("/v1/comms/clients/{client}/timeline", get(comms::client_timeline))
        .route("/v1/calendar/sources", post(calendar::create_source).get(calendar::list_sources))
        .route("/v1/calendar/sources/{id}", get(calendar::get_source).delete(calendar::delete_source))
        .route("/v1/calendar/sources/{id}/sync", post(calendar::sync_source))
        .route("/v1/calendar/sources/{id}/release", post(calendar::release_source))
        .route("/v1/calendar/suppliers/{supplier}", get(calendar::get_supplier).put(calendar::put_supplier))
        .route("/v1/calendar/suppliers/{supplier}/occurrences", get(calendar::occurrences))
        .route("/v1/calendar/suppliers/{supplier}/conflicts", get(calendar::conflicts))
        .route(
            "/v1/calendar/suppliers/{supplier}/bookings/{id}",
            get(bookings::get_booking).put(bookings::put_booking).delete(bookings::delete_booking),
        )
        .route(
            "/v1/notify/recipients/{id}",
            axum::routing::put(notify::put_recipient).get(notify::get_recipient).delete(notify::delete_recipient),
        )
        .route("/v1/notify/recipients/{id}/push-subscriptions", post(notify::add_push_subscription))
        .route("/v1/notify/templates/{name}", axum::routing::put(notify::put_template).get(notify::get_template))
        .route("/v1/notify/unsubscribe/{token}", post(notify::unsubscribe))
        .route("/v1/notifications", post(notify::create_notification))
        .route("/v1/notifications/{id}", get(notify::get_notification))
        .route("/v1/stream", get(stream::tenant_stream))
        .route("/v1/stream/tokens", post(stream::create_token))
        .route("/v1/intake/{provider}", post(intake::receive))
        .route("/v1/push/google", post(push::google_notification))
        .route("/v1/push/graph", post(push::graph_notification))
        .route("/openapi.json", get(|| async { axum::Json(openapi()) }))
        .route("/dashboard", get(admin::dashboard))
        .route("/admin/v1/queues", get(admin::queues))
        .route("/admin/v1/history", get(admin::history))
        .route("/admin/v1/stream", get(admin::stream))
        .route("/admin/v1/queues/{queue}/jobs", get(admin::jobs))
        .route("/admin/v1/jobs", get(admin_jobs::browse))
        .route("/admin/v1/queues/{queue}/jobs/{id}", get(admin::job).delete(admin_jobs::delete))
        .route("/admin/v1/queues/{queue}/jobs/{id}/retry", post(admin_jobs::retry))
        .route("/admin/v1/queues/{queue}/jobs/{id}/cancel", post(admin_jobs::cancel))
        .route("/admin/v1/queues/{queue}/jobs/{id}/replay", post(admin_jobs::replay))
        .route("/admin/v1/batches", get(admin_jobs::batches))
        .route("/admin/v1/workflows/{id}", get(workflows::admin_get_workflow).delete(workflows::admin_cancel_workflow))
        .route("/admin/v1/limits", get(admin_jobs::limits))
        .route("/admin/v1/queues/{queue}/dead", get(admin::dead))
        .route("/admin/v1/queues/{queue}/dead/groups", get(admin::dead_groups))
        .route("/admin/v1/queues/{queue}/replay", post(admin::replay))
        .route("/admin/v1/queues/{queue}/purge", post(admin::purge))
        .route("/admin/v1/queues/{queue}/pause", post(admin::pause))
        .route("/admin/v1/queues/{queue}/resume", post(admin::resume))
        .route("/admin/v1/queues/{queue}/workers", get(admin::workers))
        .route("/admin/v1/queues/{queue}/dead-caps", get(admin::dead_caps).put(admin::set_dead_caps))
        .route("/admin/v1/queues/{queue}/tenants", get(tenants::list))
        .route("/admin/v1/queues/{queue}/tenants/{tenant}", get(tenants::get).put(tenants::set))
        .route("/admin/v1/schedules", get(admin::schedules))
        .route("/admin/v1/audit", get(audit::list))
        .route("/admin/v1/archive/jobs", get(archive::admin_search))
        .route("/admin/v1/archive/jobs/{queue}/{id}", get(archive::admin_show))
        .route("/v1/archive/jobs", get(archive::tenant_search))
        .route("/v1/archive/jobs/{queue}/{id}", get(archive::tenant_show))
        .route("/admin/v1/limits/{key}", get(admin_jobs::limit).put(admin::set_limit))
        .route(
            "/admin/v1/schedules/{name}",
            get(admin::get_schedule)
                .post(admin::create_schedule)
                .put(admin::edit_schedule)
                .delete(admin::delete_schedule),
        )
        .route("/admin/v1/schedules/{name}/run", post(admin::run_schedule))
        .route("/admin/v1/schedules/{name}/pause", post(admin::pause_schedule))
        .route("/admin/v1/schedules/{name}/resume", post(admin::resume_schedule))
        .layer(axum::middleware::from_fn_with_state((state.clone(), max_body), idempotency::layer))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(state.clone(), shape::guard))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    /// Generated clients (`clients/typescript`) name one function per operation id: two
    /// routes with one id would collide there.
    #[test]
    fn every_operation_has_its_own_id() {
        let doc = super::openapi();
        let mut seen = std::collections::BTreeMap::new();
        for (path, item) in &doc.paths.paths {
            let ops = [&item.get, &item.put, &item.post, &item.delete, &item.patch, &item.head, &item.options];
            for op in ops.into_iter().flatten() {
                let id = op.operation_id.clone().unwrap_or_else(|| panic!("{path}: an operation without an id"));
                if let Some(other) = seen.insert(id.clone(), path.clone()) {
                    panic!("operation id {id:?} is used by {other} and {path}");
                }
            }
        }
    }
}
