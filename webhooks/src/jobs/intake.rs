//! `webhook.intake`: records a verified incoming call in PostgreSQL (`intake_events`),
//! once per (provider, id) however often the job runs.
//!
//! Only the scheduler's intake route creates these jobs, after verifying the provider's
//! signature, and it gives them no tenant. One that carries a tenant came from somewhere
//! else (a tenant's API call or batch callback): it is refused without recording
//! anything, so it cannot plant an unsigned event or spend a genuine event's id.
//!
//! After recording, it enqueues the jobs its routes name (publishing the event to the
//! provider's tenant, or a public kind with the event as arguments). Each route's job holds
//! a unique key in Fleet's own namespace (`intake:...`, which no tenant's key can be: the
//! API puts those under `tenant:<name>:`) for a day, so a retried attempt enqueues nothing
//! twice.

use crate::store;
use fleet_jobs::catalogue::{IntakeRoute, WebhookIntake};
use fleet_jobs::{Client, EnqueueOptions, Unique};
use fleet_kit::{Handler, JobContext, JobError};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::time::Duration;

/// How long a route's unique key stops a retried attempt from enqueueing its job again.
const ROUTE_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The `webhook.intake` handler.
pub struct Record {
    db: PgPool,
    client: Client,
}

impl Record {
    /// A handler writing to `db` and enqueueing routed jobs with `client`.
    pub fn new(db: PgPool, client: Client) -> Self {
        Record { db, client }
    }

    async fn route(&self, a: &WebhookIntake, n: usize, r: &IntakeRoute) -> Result<(), JobError> {
        let kind = fleet_jobs::catalogue::lookup(&r.kind)
            .ok_or_else(|| JobError::give_up(format!("route {n} names an unknown kind {:?}", r.kind)))?;
        let args = serde_json::value::RawValue::from_string(r.args.clone())
            .map_err(|e| JobError::give_up(format!("route {n}: arguments are not JSON: {e}")))?;
        let digest = Sha256::digest(format!("{}\n{}", a.provider, a.id).as_bytes());
        let key = format!("intake:{}:{digest:x}:{n}", a.provider);
        let opts = EnqueueOptions {
            tenant: Some(r.tenant.clone()),
            queue: r.queue.clone(),
            unique: Some(Unique { key, window: ROUTE_WINDOW }),
            ..Default::default()
        };
        self.client
            .enqueue_raw(&r.kind, args, &(kind.options)(), opts)
            .await
            .map_err(|e| JobError::retry(format!("route {n}: enqueue {}: {e}", r.kind)))?;
        Ok(())
    }
}

impl Handler for Record {
    type Args = WebhookIntake;

    async fn handle(&self, a: WebhookIntake, ctx: JobContext) -> Result<(), JobError> {
        if ctx.tenant.is_some() {
            return Err(JobError::give_up(
                "webhook.intake jobs come only from the intake route, which sets no tenant: refused",
            ));
        }
        let at = chrono::DateTime::from_timestamp_millis(a.received_at as i64).unwrap_or_default();
        store::record_intake(&self.db, &a.provider, &a.id, &a.body, at)
            .await
            .map_err(|e| JobError::retry(format!("database: {e}")))?;
        for (n, r) in a.routes.iter().enumerate() {
            self.route(&a, n, r).await?;
        }
        Ok(())
    }
}
