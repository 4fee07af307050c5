//! Batches: a group of jobs on one queue with progress counters and callbacks that are
//! themselves jobs: `on_success` when every job succeeded, `on_complete` when every job
//! finished (succeeded, dead, expired or cancelled).
//!
//! Exactly one callback per batch, even when its last two jobs finish at once on
//! different workers: the counters live in the queue's `batches` hash and are updated by
//! the same script that records each job's end, and only the call that finishes the
//! batch queues it (on the durable `batchdone` list). Workers then enqueue the
//! callbacks with ids and unique keys derived from the batch, so doing it twice (a crash
//! in between) still makes one job.

use crate::client::{Client, EnqueueOptions, Unique};
use crate::envelope::{JobId, Priority};
use crate::error::{Error, Result};
use crate::keys::QueueKeys;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::time::Duration;

/// Most jobs in one batch (written in chunks of [`crate::client::BULK_CHUNK`]).
pub const MAX_BATCH: usize = 10_000;

/// A callback job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Callback {
    /// Job kind.
    pub kind: String,
    /// Arguments.
    pub args: Box<RawValue>,
    /// Queue (default: the kind's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Priority (default: the kind's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// Attempts (default: the kind's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
}

/// A batch's callbacks.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Callbacks {
    /// Enqueued when every job succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<Callback>,
    /// Enqueued when every job finished, whatever the outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_complete: Option<Callback>,
    /// Tenant the callbacks belong to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// Progress of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchStatus {
    /// Jobs in the batch.
    pub total: i64,
    /// Jobs that succeeded.
    pub succeeded: i64,
    /// Jobs that failed for good (dead, expired, cancelled).
    pub failed: i64,
    /// Jobs not finished yet.
    pub pending: i64,
    /// Whether its callbacks have been enqueued.
    pub callbacks_enqueued: bool,
}

/// Ids of the callback jobs of `batch`.
pub fn callback_id(batch: &str, which: &str) -> JobId {
    JobId(format!("{batch}-{which}"))
}

impl Client {
    /// Creates a batch on `queue`: records its size and callbacks, then enqueues its
    /// jobs (at most [`MAX_BATCH`], one round trip per [`crate::client::BULK_CHUNK`]),
    /// all or nothing: a batch refused part way (its tenant's quota) cancels the jobs it
    /// had written (those that started meanwhile run to their end) and leaves no
    /// counters. Returns the batch id.
    pub async fn create_batch(
        &self,
        queue: &str,
        jobs: Vec<(String, Box<RawValue>, crate::KindOptions, EnqueueOptions)>,
        callbacks: &Callbacks,
    ) -> Result<String> {
        if jobs.is_empty() || jobs.len() > MAX_BATCH {
            return Err(Error::Invalid(format!("a batch holds 1 to {MAX_BATCH} jobs")));
        }
        crate::keys::validate_queue_name(queue).map_err(Error::Invalid)?;
        // On a partitioned queue a batch lives in one partition, picked by its id: its
        // counters and all its jobs share one hash tag, as the completion script needs.
        // A tenant's batch gets an id that falls in the tenant's own partition, so its
        // batches cannot spread it over several partitions (each with its own cap and
        // quota for the tenant).
        let tenant = jobs.first().and_then(|(_, _, _, o)| o.tenant.clone());
        let home = tenant.as_deref().map(|t| self.partition_of(queue, t));
        let mut id = format!("b-{}", uuid::Uuid::now_v7().simple());
        // Each try lands in the tenant's partition with chance 1/N (N ≤ 64 partitions).
        for _ in 0..4096 {
            if home.as_ref().is_none_or(|h| *h == self.partition_of(queue, &id)) {
                break;
            }
            id = format!("b-{}", uuid::Uuid::now_v7().simple());
        }
        let k = self.keys(&self.partition_of(queue, &id));
        let cb = serde_json::to_string(callbacks).map_err(|e| Error::Invalid(format!("callbacks: {e}")))?;
        let mut prepared = Vec::with_capacity(jobs.len());
        for (kind, args, defaults, mut opts) in jobs {
            if opts.queue.as_deref().is_some_and(|q| q != queue) {
                return Err(Error::Invalid(format!("every job of a batch goes to its queue {queue:?}")));
            }
            opts.queue = Some(queue.to_owned());
            opts.batch = Some(id.clone());
            opts.partition_key = Some(id.clone());
            prepared.push((kind, args, defaults, opts));
        }
        // More than one chunk cannot be written in one call: the tenant's quota is checked
        // for the whole batch first, and each job gets its id here, so a chunk refused
        // after others were written (a race with the tenant's other enqueues) can take
        // those back.
        let several = prepared.len() > crate::client::BULK_CHUNK;
        let mut ours = Vec::new();
        if several {
            if let Some(t) = &tenant {
                let home = self.partition_of(queue, &id);
                let usage = self.tenant_usage(&home, t).await?;
                if usage.quota > 0 && usage.open + prepared.len() as u64 > usage.quota {
                    return Err(Error::QuotaExceeded {
                        tenant: t.clone(),
                        queue: queue.to_owned(),
                        open: usage.open,
                        quota: usage.quota,
                    });
                }
            }
            for (_, _, _, opts) in &mut prepared {
                if opts.id.is_none() {
                    let jid = JobId(uuid::Uuid::now_v7().simple().to_string());
                    ours.push(jid.0.clone());
                    opts.id = Some(jid);
                }
            }
        }
        let _: () = redis::pipe()
            .hset(&k.batches, format!("{id}:total"), prepared.len())
            .ignore()
            .hset(&k.batches, format!("{id}:cb"), cb)
            .ignore()
            .query_async(&mut self.connection())
            .await?;
        // One chunk, written whole or not at all: a refused batch (its tenant's quota) must
        // not leave counters behind that no job will ever finish.
        if let Err(e) = self.enqueue_many(prepared).await {
            let forget: redis::RedisResult<()> = redis::cmd("HDEL")
                .arg(&k.batches)
                .arg(format!("{id}:total"))
                .arg(format!("{id}:cb"))
                .query_async(&mut self.connection())
                .await;
            if let Err(d) = forget {
                tracing::warn!(batch = %id, error = %d, "could not forget the counters of a refused batch");
            }
            if !ours.is_empty() {
                // Chunks written before the refused one: cancelled, then their counts
                // forgotten (the counters are gone, so no callback fires).
                for jid in &ours {
                    if let Err(c) = self.cancel_quietly(queue, jid).await {
                        tracing::warn!(batch = %id, job = %jid, error = %c, "a job of a refused batch was not cancelled");
                    }
                }
                let _: redis::RedisResult<()> = redis::cmd("HDEL")
                    .arg(&k.batches)
                    .arg(format!("{id}:ok"))
                    .arg(format!("{id}:fail"))
                    .query_async(&mut self.connection())
                    .await;
            }
            return Err(e);
        }
        Ok(id)
    }

    /// Progress of a batch on `queue`, or `None` if unknown (or expired).
    pub async fn batch(&self, queue: &str, id: &str) -> Result<Option<BatchStatus>> {
        let k = self.keys(&self.partition_of(queue, id));
        let (total, ok, fail, done): (Option<i64>, Option<i64>, Option<i64>, Option<String>) = redis::cmd("HMGET")
            .arg(&k.batches)
            .arg(format!("{id}:total"))
            .arg(format!("{id}:ok"))
            .arg(format!("{id}:fail"))
            .arg(format!("{id}:done"))
            .query_async(&mut self.connection())
            .await?;
        let Some(total) = total else { return Ok(None) };
        let (ok, fail) = (ok.unwrap_or(0), fail.unwrap_or(0));
        Ok(Some(BatchStatus {
            total,
            succeeded: ok,
            failed: fail,
            pending: (total - ok - fail).max(0),
            callbacks_enqueued: done.is_some(),
        }))
    }

    /// Enqueues the callbacks of every finished batch of `queue` still waiting for them
    /// (at most 20 per call). Safe to run anywhere, any number of times. (The counters of
    /// batches finished over a week ago are forgotten by the workers' janitor.)
    pub async fn fire_finished_batches(&self, queue: &str) -> Result<usize> {
        let mut fired = 0;
        for p in self.partitions(queue) {
            let k = self.keys(&p);
            let ids: Vec<String> =
                redis::cmd("LRANGE").arg(&k.batchdone).arg(0).arg(19).query_async(&mut self.connection()).await?;
            for id in &ids {
                self.fire(&k, id).await?;
            }
            fired += ids.len();
        }
        Ok(fired)
    }

    async fn fire(&self, k: &QueueKeys, id: &str) -> Result<()> {
        let fields: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&k.batches)
            .arg(format!("{id}:cb"))
            .arg(format!("{id}:fail"))
            .arg(format!("{id}:done"))
            .query_async(&mut self.connection())
            .await?;
        let (cb, failed, done) = (fields[0].clone(), fields[1].clone(), fields[2].clone());
        if done.is_none() {
            let callbacks: Callbacks = match cb {
                Some(text) => {
                    serde_json::from_str(&text).map_err(|e| Error::Corrupt(format!("callbacks of batch {id}: {e}")))?
                }
                None => Callbacks::default(),
            };
            let all_ok = failed.and_then(|f| f.parse::<i64>().ok()).unwrap_or(0) == 0;
            let mut due = Vec::new();
            if all_ok && let Some(c) = &callbacks.on_success {
                due.push(("success", c));
            }
            if let Some(c) = &callbacks.on_complete {
                due.push(("complete", c));
            }
            for (which, c) in due {
                let defaults = crate::catalogue::lookup(&c.kind).map(|k| (k.options)()).unwrap_or_default();
                let opts = EnqueueOptions {
                    queue: c.queue.clone(),
                    priority: c.priority,
                    max_attempts: c.max_attempts,
                    id: Some(callback_id(id, which)),
                    unique: Some(Unique {
                        key: format!("batch:{id}:{which}"),
                        window: Duration::from_secs(7 * 24 * 3600),
                    }),
                    tenant: callbacks.tenant.clone(),
                    ..Default::default()
                };
                self.enqueue_raw(&c.kind, c.args.clone(), &defaults, opts).await?;
            }
        }
        let now = crate::envelope::now_ms();
        let _: () = redis::pipe()
            .hset(&k.batches, format!("{id}:done"), now)
            .ignore()
            .zadd(&k.batchfin, id, now)
            .ignore()
            .lrem(&k.batchdone, 0, id)
            .ignore()
            .query_async(&mut self.connection())
            .await?;
        tracing::info!(batch = %id, "batch finished; callbacks enqueued");
        Ok(())
    }
}
