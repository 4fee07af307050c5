//! Re-enabling an endpoint and replaying what it was held from
//! (`POST /v1/endpoints/{id}/enable`).
//!
//! An endpoint is disabled by a 410 Gone from it ([`store::disable_gone`]). While it is
//! disabled, publishing skips it and deliveries already queued for it are `skipped`.
//! Re-enabling it sends it what it missed: one `webhook.deliver` per held message
//! ([`store::held_messages`]: those published since the time given, by default since it
//! was disabled, plus those whose delivery ended with its 410 or was skipped), at most
//! [`MAX_REPLAYED`] per call, oldest first.
//!
//! **Idempotent.** Each replayed delivery carries a unique key derived from the message,
//! the endpoint and how its delivery ended, so calling enable twice (or concurrently)
//! enqueues each delivery once:
//!
//! * a message never attempted to the endpoint takes the key publishing uses
//!   ([`delivery_key`]): if publishing did enqueue it after all (the endpoint was
//!   re-enabled between recording the message and choosing its endpoints), one of the
//!   two enqueues creates nothing;
//! * a message whose delivery ended with attempt `n` (410 or skipped) takes
//!   `<delivery key>:after:<n>`: replayed once per ending, and again only if that
//!   replay ends the same way in a later disabled period.
//!
//! Delivered messages are never held, so a replay that has been delivered is not
//! replayed again by a later call. The enable is done first, then the held messages are
//! read: a message published in between is either held or published to the endpoint,
//! never neither.

use crate::store;
use chrono::{DateTime, Utc};
use fleet_accounts::sources::StoreError;
use fleet_jobs::catalogue::WebhookDelivery;
use fleet_jobs::{Client, EnqueueOptions, JobId, Unique};
use sqlx::PgPool;
use std::time::Duration;

/// Most deliveries one enable call enqueues. A tenant has at most
/// [`store::MAX_ENDPOINTS_PER_TENANT`] endpoints and every held message is one job: the
/// cap keeps one call's work (and its share of the tenant's queued-job quota) bounded.
/// When more are held the answer gives `next_since`, to call again with.
pub const MAX_REPLAYED: i64 = 1000;

/// How long a delivery's unique key holds: a duplicate enqueued within it creates nothing.
pub const DELIVERY_KEY_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// The unique key of the delivery of `message_id` to `endpoint_id` made by publishing.
pub fn delivery_key(message_id: &str, endpoint_id: &str) -> String {
    format!("wh:{message_id}:{endpoint_id}")
}

/// The unique key of a replay of a delivery whose last attempt, `attempt_id` (a 410 Gone
/// or skipped), ended it.
fn resumed_key(message_id: &str, endpoint_id: &str, attempt_id: i64) -> String {
    format!("{}:after:{attempt_id}", delivery_key(message_id, endpoint_id))
}

/// What an enable call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Where the held messages were looked for from; `None` when the endpoint was never
    /// disabled and no time was given (nothing is held).
    pub since: Option<DateTime<Utc>>,
    /// Held messages found (at most [`MAX_REPLAYED`]).
    pub held: usize,
    /// Deliveries enqueued now; the rest of `held` were queued already (an earlier call,
    /// or publishing) and are not enqueued twice.
    pub enqueued: usize,
    /// When [`MAX_REPLAYED`] were found: call again with this as the time, for the rest.
    pub next_since: Option<DateTime<Utc>>,
}

/// Why an enable call failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The endpoint is not the tenant's, or the database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The deliveries could not be enqueued (the endpoint is enabled; calling again
    /// enqueues what is missing and nothing twice).
    #[error(transparent)]
    Enqueue(#[from] fleet_jobs::Error),
}

impl From<sqlx::Error> for ReplayError {
    fn from(e: sqlx::Error) -> Self {
        ReplayError::Store(StoreError::from(e))
    }
}

/// Re-enables endpoint `endpoint_id` of `tenant` and enqueues, for `tenant`, one delivery
/// per message held from it since `since` (by default since it was last disabled).
pub async fn enable(
    db: &PgPool,
    client: &Client,
    tenant: &str,
    endpoint_id: &str,
    since: Option<DateTime<Utc>>,
) -> Result<Replayed, ReplayError> {
    let enabled = store::enable_endpoint(db, tenant, endpoint_id).await?;
    let Some(since) = since.or(enabled.disabled_at) else {
        return Ok(Replayed { since: None, held: 0, enqueued: 0, next_since: None });
    };
    let held = store::held_messages(db, tenant, endpoint_id, since, MAX_REPLAYED).await?;
    let next_since = (held.len() as i64 >= MAX_REPLAYED).then(|| held.last().map(|m| m.created_at)).flatten();
    // Each job gets a fresh id: the id that comes back is another one exactly when the
    // unique key was taken, i.e. the delivery is queued already.
    let jobs: Vec<(WebhookDelivery, EnqueueOptions)> = held
        .iter()
        .map(|m| {
            let key = match m.ended_by {
                None => delivery_key(&m.message_id, endpoint_id),
                Some(attempt) => resumed_key(&m.message_id, endpoint_id, attempt),
            };
            let opts = EnqueueOptions {
                id: Some(JobId::new()),
                unique: Some(Unique { key, window: DELIVERY_KEY_WINDOW }),
                tenant: Some(tenant.to_owned()),
                ..Default::default()
            };
            (WebhookDelivery { message_id: m.message_id.clone(), endpoint_id: endpoint_id.to_owned() }, opts)
        })
        .collect();
    let asked: Vec<JobId> = jobs.iter().filter_map(|(_, o)| o.id.clone()).collect();
    let got = client.enqueue_bulk_with(jobs).await?;
    let enqueued = asked.iter().zip(&got).filter(|(a, g)| a == g).count();
    Ok(Replayed { since: Some(since), held: held.len(), enqueued, next_since })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_after_an_ending_never_shares_publishings_key() {
        assert_eq!(delivery_key("msg_1", "ep_2"), "wh:msg_1:ep_2");
        assert_eq!(resumed_key("msg_1", "ep_2", 42), "wh:msg_1:ep_2:after:42");
        assert_ne!(resumed_key("msg_1", "ep_2", 42), resumed_key("msg_1", "ep_2", 43));
    }
}
