//! # fleet-webhooks
//!
//! Fleet's webhooks: tenants' endpoints, the messages and attempts sent to them, and the
//! events providers send in.
//!
//! ## Layout
//!
//! * [`signing`]: Standard Webhooks 1.0 signatures over the raw body, verified in
//!   constant time; rotation with several signatures.
//! * [`store`]: every query on the webhook tables (`webhook_endpoints`,
//!   `webhook_messages`, `webhook_attempts`, `intake_events`), each scoped by the tenant it
//!   serves; the endpoint limits and the sealing of endpoint secrets. The scheduler's
//!   `/v1/endpoints` routes, the jobs, `reseal-secrets` and the benchmark all go through
//!   it. Always built.
//! * [`replay`]: re-enabling an endpoint disabled by a 410, and enqueueing what it was
//!   held from (idempotent: unique keys per message, endpoint and ending; capped per call).
//!   The scheduler's `POST /v1/endpoints/{id}/enable`.
//! * `jobs` (feature `jobs`, what the worker links): `webhook.deliver` (SSRF-guarded
//!   delivery, retries that honour Retry-After, 410 disables the endpoint), `webhook.publish`
//!   (one event → one delivery per subscribed endpoint, idempotent) and `webhook.intake`.
//!   They hold no SQL: what they read and write is in [`store`].

pub mod replay;
pub mod signing;
pub mod store;

#[cfg(feature = "jobs")]
pub mod jobs;
