//! `webhook.publish`: records an event (`webhook_messages`) and enqueues one
//! `webhook.deliver` per enabled endpoint of the tenant whose filter matches. Idempotent:
//! the message id is derived from the job id and each delivery has a unique key, so a
//! retried or duplicated job sends nothing twice (a replay to a re-enabled endpoint takes
//! the same key for a message it never got: see [`crate::replay`]). Everything is for the job's tenant (its
//! envelope's, set from the API key): its endpoints only, and the deliveries carry it.

use crate::replay::{DELIVERY_KEY_WINDOW, delivery_key};
use crate::store;
use fleet_jobs::catalogue::webhook::message_id;
use fleet_jobs::catalogue::{WebhookDelivery, WebhookPublish};
use fleet_jobs::{Client, EnqueueOptions, Unique};
use fleet_kit::{Handler, JobContext, JobError};
use sqlx::PgPool;

/// The `webhook.publish` handler.
pub struct Publish {
    db: PgPool,
    client: Client,
}

impl Publish {
    /// A handler recording in `db` and enqueueing with `client`.
    pub fn new(db: PgPool, client: Client) -> Self {
        Publish { db, client }
    }
}

impl Handler for Publish {
    type Args = WebhookPublish;

    async fn handle(&self, a: WebhookPublish, ctx: JobContext) -> Result<(), JobError> {
        let tenant = ctx.tenant.clone().ok_or_else(|| {
            JobError::give_up("webhook.publish needs a tenant (enqueue it through the API or a batch)")
        })?;
        let id = message_id(&ctx.id);
        // A retry finds its own row. A row of another tenant under the same id (job ids can
        // be chosen by callers) is not this event: fan nothing out under it.
        let owner = store::record_message(&self.db, &id, &tenant, &a.event_type, a.payload.get())
            .await
            .map_err(|e| JobError::retry(format!("database: {e}")))?;
        if owner != tenant {
            return Err(JobError::give_up(format!(
                "message id {id} is already taken: publish again with another job id"
            )));
        }
        let endpoints = store::subscribed_endpoints(&self.db, &tenant, &a.event_type)
            .await
            .map_err(|e| JobError::retry(format!("database: {e}")))?;
        for endpoint_id in endpoints {
            let unique = Unique { key: delivery_key(&id, &endpoint_id), window: DELIVERY_KEY_WINDOW };
            let args = WebhookDelivery { message_id: id.clone(), endpoint_id };
            let opts = EnqueueOptions { unique: Some(unique), tenant: Some(tenant.clone()), ..Default::default() };
            self.client.enqueue_with(&args, opts).await.map_err(|e| JobError::retry(format!("enqueue: {e}")))?;
        }
        Ok(())
    }
}
