//! Fleet's notifications: one notification to one recipient over the channels it has
//! (email over SMTP, SMS, Web Push, in-app on the tenant's live stream), rendered from a
//! tenant's template in the recipient's locale, within the recipient's preferences and
//! quiet hours.
//!
//! # Layout
//!
//! - [`template`]: per-locale variants compiled at registration (minijinja, strict
//!   undefined values, HTML auto-escape, fuel), rendered at send time.
//! - [`quiet`]: quiet hours in the recipient's time zone, windows that wrap midnight,
//!   DST; where a deferred send waits until.
//! - [`store`]: every query on the `notify_*` and `notifications` tables, for the API,
//!   `fleetctl` and the handler; the dedup key is a unique index there.
//! - [`jobs`] (feature `jobs`): the `notify.send` handler, a state machine per
//!   (notification, channel) whose records make a retry send only what is not sent yet,
//!   and the SMTP relays with failover (`jobs/email.rs`).
//!
//! The hard part is in `jobs/mod.rs`: what a retry, a deferral and a refusal each leave
//! behind, so that a retried event notifies once and a quiet-hours send is late, not lost.

pub mod quiet;
pub mod store;
pub mod template;

#[cfg(feature = "jobs")]
pub mod jobs;
