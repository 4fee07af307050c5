//! `webhook.intake`: records a verified incoming call in PostgreSQL (`intake_events`),
//! once per (provider, id) however often the job runs.
//!
//! Only the scheduler's intake route creates these jobs, after verifying the provider's
//! signature, and it gives them no tenant. One that carries a tenant came from somewhere
//! else (a tenant's API call or batch callback): it is refused without recording
//! anything, so it cannot plant an unsigned event or spend a genuine event's id.

use crate::store;
use fleet_jobs::catalogue::WebhookIntake;
use fleet_kit::{Handler, JobContext, JobError};
use sqlx::PgPool;

/// The `webhook.intake` handler.
pub struct Record {
    db: PgPool,
}

impl Record {
    /// A handler writing to `db`.
    pub fn new(db: PgPool) -> Self {
        Record { db }
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
        Ok(())
    }
}
