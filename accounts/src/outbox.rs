//! The outbox relay: domain events written to PostgreSQL in the same transaction as the
//! change they describe (a double booking found, a new timeline entry) are published to the
//! tenant's webhooks (one `webhook.publish` job each) and its live stream (`/v1/stream`).
//!
//! Exactly once per change: the outbox row is unique per change (`dedup`), the publish job's
//! id is derived from the table and `dedup` (enqueueing the same id twice creates one job, and
//! subscribers see the same webhook message id `msg_<job id>`), and the row is marked
//! published in the transaction that holds it locked (`FOR UPDATE SKIP LOCKED`, so two
//! workers never publish one row). A crash between the enqueue and the commit re-publishes
//! under the same job id; the live stream is a notification channel and may then repeat an
//! event, with the same `id`, which a consumer dedups by.
//!
//! Handlers call [`Relay::publish_pending`] after their transaction commits; rows left by a
//! crash are picked up by the next run for the same tenant.

use fleet_jobs::catalogue::WebhookPublish;
use fleet_jobs::events::{self, TenantEvent};
use fleet_jobs::{Client, EnqueueOptions, JobId};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};

/// The outbox tables the relay reads.
pub const TABLES: &[&str] = &["calendar_outbox", "comms_outbox"];

/// The (select pending, mark published) statements of one outbox table.
fn statements(table: &str) -> Option<(&'static str, &'static str)> {
    macro_rules! of {
        ($t:literal) => {
            (
                concat!(
                    "SELECT id, event_type, dedup, payload::text AS payload, ",
                    "(extract(epoch FROM created_at) * 1000)::bigint AS at FROM ",
                    $t,
                    " WHERE tenant = $1 AND published_at IS NULL ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED"
                ),
                concat!("UPDATE ", $t, " SET published_at = now() WHERE id = ANY($1)"),
            )
        };
    }
    match table {
        "calendar_outbox" => Some(of!("calendar_outbox")),
        "comms_outbox" => Some(of!("comms_outbox")),
        _ => None,
    }
}

/// Rows published per transaction.
const CHUNK: i64 = 500;

/// Publishes outbox rows to webhooks and the live stream.
#[derive(Clone)]
pub struct Relay {
    db: PgPool,
    client: Client,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("prefix", &self.client.prefix()).finish_non_exhaustive()
    }
}

/// The stable id of the event of `dedup` in `table`: the `webhook.publish` job id and the
/// live stream event's `id`.
pub fn event_id(table: &str, dedup: &str) -> String {
    let digest = Sha256::digest(format!("{table}\n{dedup}").as_bytes());
    format!("evt_{}", hex::encode(&digest[..16]))
}

impl Relay {
    /// A relay reading `db` and enqueueing with `client`.
    pub fn new(db: PgPool, client: Client) -> Self {
        Relay { db, client }
    }

    /// The job client it enqueues with.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Publishes every pending row of `table` for `tenant`; returns how many.
    pub async fn publish_pending(&self, table: &'static str, tenant: &str) -> Result<usize, String> {
        let Some(sql) = statements(table) else {
            return Err(format!("{table} is not an outbox table"));
        };
        let mut total = 0;
        loop {
            let n = self.publish_chunk(table, sql, tenant).await?;
            total += n;
            if n < CHUNK as usize {
                return Ok(total);
            }
        }
    }

    async fn publish_chunk(
        &self,
        table: &'static str,
        (select, mark): (&'static str, &'static str),
        tenant: &str,
    ) -> Result<usize, String> {
        let db_err = |e: sqlx::Error| format!("outbox {table}: {e}");
        let mut tx = self.db.begin().await.map_err(db_err)?;
        let rows = sqlx::query(select).bind(tenant).bind(CHUNK).fetch_all(&mut *tx).await.map_err(db_err)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut jobs = Vec::with_capacity(rows.len());
        let mut stream = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = row.get("id");
            let event_type: String = row.get("event_type");
            let dedup: String = row.get("dedup");
            let payload: String = row.get("payload");
            let at: i64 = row.get("at");
            let event = event_id(table, &dedup);
            let raw = serde_json::value::RawValue::from_string(payload.clone())
                .map_err(|e| format!("outbox {table} row {id}: payload: {e}"))?;
            let data: serde_json::Value =
                serde_json::from_str(&payload).map_err(|e| format!("outbox {table} row {id}: payload: {e}"))?;
            let opts = EnqueueOptions {
                id: Some(JobId(event.clone())),
                tenant: Some(tenant.to_owned()),
                ..EnqueueOptions::default()
            };
            jobs.push((WebhookPublish { event_type: event_type.clone(), payload: raw }, opts));
            stream.push((tenant.to_owned(), TenantEvent::domain(event_type, event, at.max(0) as u64, data)));
            ids.push(id);
        }
        self.client.enqueue_bulk_with(jobs).await.map_err(|e| format!("outbox {table}: enqueue: {e}"))?;
        let mut conn = self.client.connection();
        if let Err(e) = events::append(&mut conn, self.client.prefix(), &stream).await {
            // The stream is a notification channel: webhooks carry the record.
            tracing::warn!(error = %e, table, "outbox: appending to the live stream failed");
        }
        sqlx::query(mark).bind(&ids).execute(&mut *tx).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(rows.len())
    }
}
