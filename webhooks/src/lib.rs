//! # fleet-webhooks
//!
//! Fleet's webhooks: tenants' endpoints, the messages and attempts sent to them, and the
//! events providers send in.
//!
//! ## Layout
//!
//! * [`signing`]: Standard Webhooks 1.0 signatures over the raw body, verified in
//!   constant time; rotation with several signatures.
//! * `jobs` (feature `jobs`, what the worker links): `webhook.deliver` (SSRF-guarded
//!   delivery, retries that honour Retry-After, 410 disables the endpoint), `webhook.publish`
//!   (one event → one delivery per subscribed endpoint, idempotent) and `webhook.intake`.

pub mod signing;

#[cfg(feature = "jobs")]
pub mod jobs;
