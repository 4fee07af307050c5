//! `webhook.intake`: records a verified incoming call in PostgreSQL (`intake_events`),
//! once per (provider, id) however often the job runs.

use crate::handler::{Handler, JobContext, JobError};
use fleet_jobs::catalogue::WebhookIntake;
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

    async fn handle(&self, a: WebhookIntake, _ctx: JobContext) -> Result<(), JobError> {
        let at = chrono::DateTime::from_timestamp_millis(a.received_at as i64).unwrap_or_default();
        sqlx::query(
            "INSERT INTO intake_events (provider, id, body, received_at) VALUES ($1, $2, $3, $4) ON CONFLICT (provider, id) DO NOTHING",
        )
        .bind(&a.provider)
        .bind(&a.id)
        .bind(&a.body)
        .bind(at)
        .execute(&self.db)
        .await
        .map_err(|e| JobError::retry(format!("database: {e}")))?;
        Ok(())
    }
}
