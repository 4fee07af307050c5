//! Copies finished jobs from Redis into the archive (`job_archive`), in batches, off the
//! workers' hot path.
//!
//! Each pass: every queue (re-discovered every [`ArchiveConfig::rescan_secs`]) is marked
//! as archived (so its scripts queue finished jobs, see `fleet_jobs::archive`), then its
//! list is drained batch by batch: read up to [`ArchiveConfig::batch`] entries with their
//! records, write them in one `INSERT ... SELECT FROM UNNEST`, and only after PostgreSQL
//! committed, drop them from the list. A scheduler or PostgreSQL stopping in between
//! leaves the entries to be copied again; the insert is idempotent on (queue, id,
//! attempt, finish time), so nothing is lost or doubled. Several schedulers may drain at once: an
//! entry is dropped only while it is still at the head of its list.

use crate::archive::{FinalState, NewRow};
use chrono::{DateTime, TimeZone as _, Utc};
use fleet_jobs::archive::Finished;
use fleet_jobs::{Client, JobState};
use serde::Deserialize;
use std::time::{Duration, Instant};

/// `[archive]`: the copy of finished jobs into PostgreSQL and how long they are kept.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Copy finished jobs into the archive (default true). False also stops the queues
    /// from queueing their finished jobs for it.
    pub enabled: bool,
    /// Most jobs per insert (default 500).
    pub batch: usize,
    /// Pause between passes when the lists are drained, in ms (default 1000).
    pub interval_ms: u64,
    /// How often the queues are listed again to find new ones, in seconds (default 10).
    pub rescan_secs: u64,
    /// Days an archived job is kept when no rule says otherwise (default 30; 0: forever).
    pub retention_days: u32,
    /// `[[archive.retention]]`: days per queue and/or state; the most specific rule
    /// wins (queue and state, then queue, then state, then `retention_days`).
    pub retention: Vec<RetentionRule>,
}

/// One archive retention rule.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    /// Only this queue (default: every queue).
    #[serde(default)]
    pub queue: Option<String>,
    /// Only this final state: `succeeded`, `dead`, `cancelled` or `expired` (default: all).
    #[serde(default)]
    pub state: Option<String>,
    /// Days kept (0: forever).
    pub days: u32,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            enabled: true,
            batch: 500,
            interval_ms: 1000,
            rescan_secs: 10,
            retention_days: 30,
            retention: Vec::new(),
        }
    }
}

impl ArchiveConfig {
    /// Checks the settings; the message names the one at fault.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=5000).contains(&self.batch) {
            return Err(format!("archive.batch must be 1 to 5000, got {}", self.batch));
        }
        for (i, r) in self.retention.iter().enumerate() {
            if let Some(s) = &r.state
                && FinalState::parse(s).is_none()
            {
                return Err(format!(
                    "archive.retention[{i}].state must be succeeded, dead, cancelled or expired, got {s:?}"
                ));
            }
            if let Some(q) = &r.queue {
                fleet_jobs::keys::validate_queue_name(q).map_err(|e| format!("archive.retention[{i}].queue: {e}"))?;
            }
        }
        Ok(())
    }

    /// Days jobs of `queue` (none: a queue no rule names) that ended in `state` are kept
    /// (0: forever).
    pub fn days_for(&self, queue: Option<&str>, state: FinalState) -> u32 {
        let rank = |r: &RetentionRule| -> Option<u8> {
            let q = match (&r.queue, queue) {
                (None, _) => 0,
                (Some(a), Some(b)) if a == b => 2,
                _ => return None,
            };
            let s = match &r.state {
                None => 0,
                Some(s) if s == state.as_str() => 1,
                _ => return None,
            };
            Some(q + s)
        };
        self.retention
            .iter()
            .filter_map(|r| Some((rank(r)?, r.days)))
            .max_by_key(|(rank, _)| *rank)
            .map(|(_, d)| d)
            .unwrap_or(self.retention_days)
    }
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Entries read from the list.
    pub read: usize,
    /// Rows written (a copy already archived is not counted).
    pub written: u64,
    /// Entries whose record was gone (retention 0, purged) or not Fleet's: dropped.
    pub missed: usize,
}

/// Drains the queues' archive lists into PostgreSQL.
#[derive(Clone)]
pub struct Archiver {
    client: Client,
    db: sqlx::PgPool,
    config: ArchiveConfig,
}

fn at(ms: u64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms as i64).single()
}

/// The archive row of `f` (read from physical queue `queue`); `None` when there is
/// nothing to archive (its record is gone, or the entry is not one Fleet writes).
pub fn to_row(queue: &str, f: &Finished) -> Option<NewRow> {
    let state = match f.state? {
        JobState::Succeeded => FinalState::Succeeded,
        JobState::Dead => FinalState::Dead,
        JobState::Cancelled => FinalState::Cancelled,
        JobState::Expired => FinalState::Expired,
        _ => return None,
    };
    let record = f.record.as_ref()?;
    let attempts = record.history.as_array();
    let last_error =
        attempts.and_then(|a| a.last()).and_then(|e| e.get("error")).and_then(|e| e.as_str()).map(str::to_owned);
    let started_at =
        attempts.and_then(|a| a.first()).and_then(|e| e.get("started_at")).and_then(|v| v.as_u64()).and_then(at);
    let (tenant, kind, args, batch, enqueued_at) = match &record.envelope {
        Ok(env) => (
            env.tenant.clone(),
            env.kind.clone(),
            serde_json::from_str(env.args.get()).unwrap_or(serde_json::Value::Null),
            env.batch.clone(),
            at(env.enqueued_at),
        ),
        Err(raw) => (None, "(undecodable)".to_owned(), serde_json::Value::String(raw.clone()), None, None),
    };
    Some(NewRow {
        tenant,
        queue: fleet_jobs::partitions::logical_queue(queue).to_owned(),
        id: f.id.clone(),
        attempt: f.attempt.min(i32::MAX as u32) as i32,
        kind,
        state,
        args,
        result: record.result.clone(),
        // The error of the attempt that ended it: only a dead job's last attempt failed.
        error: if state == FinalState::Dead { last_error } else { None },
        progress: record.progress.clone(),
        history: record.history.clone(),
        batch,
        enqueued_at,
        started_at,
        finished_at: at(f.finished_at).unwrap_or_else(Utc::now),
    })
}

impl Archiver {
    /// An archiver of `client`'s queues into `db`.
    pub fn new(client: Client, db: sqlx::PgPool, config: ArchiveConfig) -> Self {
        Archiver { client, db, config }
    }

    /// Reads one batch of `queue` (a physical queue: a partition on its own) and writes it
    /// into PostgreSQL, without dropping it from the list; answers the entries read, to
    /// pass to `fleet_jobs::Client::archive_done`, and what was done.
    pub async fn copy(&self, queue: &str) -> anyhow::Result<(Vec<String>, Drained)> {
        let finished = self.client.archive_read(queue, self.config.batch).await?;
        let rows: Vec<NewRow> = finished.iter().filter_map(|f| to_row(queue, f)).collect();
        let missed = finished.len() - rows.len();
        let written = crate::archive::insert(&self.db, &rows).await?;
        let entries: Vec<String> = finished.into_iter().map(|f| f.entry).collect();
        let read = entries.len();
        Ok((entries, Drained { read, written, missed }))
    }

    /// One batch of `queue`: [`Archiver::copy`], then the entries dropped from the list.
    pub async fn drain_batch(&self, queue: &str) -> anyhow::Result<Drained> {
        let (entries, done) = self.copy(queue).await?;
        self.client.archive_done(queue, &entries).await?;
        let logical = fleet_jobs::partitions::logical_queue(queue).to_owned();
        metrics::counter!("fleet_archive_copied_total", "queue" => logical.clone()).increment(done.written);
        if done.missed > 0 {
            metrics::counter!("fleet_archive_missed_total", "queue" => logical).increment(done.missed as u64);
            tracing::warn!(queue, missed = done.missed, "finished jobs whose records were gone before archiving");
        }
        Ok(done)
    }

    /// Drains `queue` until its list is empty (or `stop`); answers the totals.
    pub async fn drain_queue(
        &self,
        queue: &str,
        stop: &tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Drained> {
        let mut total = Drained::default();
        loop {
            let d = self.drain_batch(queue).await?;
            total.read += d.read;
            total.written += d.written;
            total.missed += d.missed;
            if d.read < self.config.batch || stop.is_cancelled() {
                return Ok(total);
            }
        }
    }

    /// Marks `queues` as archived (or, when disabled, not) and drains each; answers the
    /// totals. A queue that fails is logged and the others go on.
    pub async fn pass(&self, queues: &[String], stop: &tokio_util::sync::CancellationToken) -> Drained {
        let mut total = Drained::default();
        for q in queues {
            if let Err(e) = self.client.set_archiving(q, self.config.enabled).await {
                tracing::warn!(queue = %q, error = %e, "could not mark the queue for the archive");
                continue;
            }
            if !self.config.enabled {
                continue;
            }
            match self.drain_queue(q, stop).await {
                Ok(d) => {
                    total.read += d.read;
                    total.written += d.written;
                    total.missed += d.missed;
                }
                Err(e) => tracing::warn!(queue = %q, error = %e, "archiving paused for this pass; entries kept"),
            }
        }
        total
    }

    /// Runs passes until `stop`.
    pub async fn run(self, stop: tokio_util::sync::CancellationToken) {
        let mut queues: Vec<String> = Vec::new();
        let mut listed: Option<Instant> = None;
        loop {
            if listed.is_none_or(|t| t.elapsed() >= Duration::from_secs(self.config.rescan_secs)) {
                match self.client.physical_queues().await {
                    Ok(q) => {
                        queues = q;
                        listed = Some(Instant::now());
                    }
                    Err(e) => tracing::warn!(error = %e, "could not list the queues to archive"),
                }
            }
            self.pass(&queues, &stop).await;
            if !self.config.enabled && listed.is_some() {
                // Every known queue unmarked; nothing more to do until restarted.
                stop.cancelled().await;
                return;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(self.config.interval_ms)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_specific_rule_wins() {
        let rule = |queue: Option<&str>, state: Option<&str>, days| RetentionRule {
            queue: queue.map(Into::into),
            state: state.map(Into::into),
            days,
        };
        let c = ArchiveConfig {
            retention_days: 30,
            retention: vec![
                rule(None, Some("succeeded"), 7),
                rule(Some("mail"), None, 90),
                rule(Some("mail"), Some("succeeded"), 14),
            ],
            ..Default::default()
        };
        assert_eq!(c.days_for(None, FinalState::Dead), 30);
        assert_eq!(c.days_for(None, FinalState::Succeeded), 7);
        assert_eq!(c.days_for(Some("mail"), FinalState::Dead), 90);
        assert_eq!(c.days_for(Some("mail"), FinalState::Succeeded), 14);
        assert_eq!(c.days_for(Some("other"), FinalState::Succeeded), 7);
        c.check().unwrap();
        let bad = ArchiveConfig { retention: vec![rule(None, Some("running"), 1)], ..Default::default() };
        assert!(bad.check().unwrap_err().contains("archive.retention[0].state"));
    }
}
