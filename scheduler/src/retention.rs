//! Retention of every PostgreSQL table that grows: a periodic task deletes what is older
//! than each table's retention, in bounded batches (`DELETE ... WHERE ctid IN (SELECT
//! ctid ... LIMIT n)`), so no statement holds locks or builds WAL for long, whatever the
//! backlog. Each table's time column is indexed for it (migration `job_archive`).
//!
//! | table | kept | setting |
//! |---|---|---|
//! | `job_archive` | per queue and state, 30 days by default | `[archive] retention_days`, `[[archive.retention]]` |
//! | `webhook_messages` | 30 days | `[retention] webhook_messages_days` |
//! | `webhook_attempts` | 30 days | `[retention] webhook_attempts_days` |
//! | `intake_events` | 30 days | `[retention] intake_events_days` |
//! | `calendar_outbox`, `comms_outbox` | 7 days after publication (unpublished rows stay) | `[retention] outbox_days` |
//! | `comms_raw` | 90 days | `[retention] comms_raw_days` |
//! | `comms_quarantine` | 90 days | `[retention] comms_quarantine_days` |
//! | `admin_audit` | 90 days | `[retention] audit_days` |
//! | `batches` | 90 days | `[retention] batches_days` |
//!
//! A setting of 0 keeps that table's rows forever.

use crate::archive::FinalState;
use crate::archiver::ArchiveConfig;
use serde::Deserialize;
use sqlx::PgPool;
use std::time::Duration;

/// `[retention]`: how long the growing tables keep their rows, and how they are pruned.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Seconds between prune passes (default 300).
    pub interval_secs: u64,
    /// Most rows one statement deletes (default 5000).
    pub batch: i64,
    /// Most statements per table per pass (default 100): a larger backlog waits for the
    /// next pass.
    pub max_batches: u32,
    /// `webhook_messages` (default 30 days).
    pub webhook_messages_days: u32,
    /// `webhook_attempts` (default 30 days).
    pub webhook_attempts_days: u32,
    /// `intake_events` (default 30 days; a provider's redelivery after that is recorded again).
    pub intake_events_days: u32,
    /// Published rows of `calendar_outbox` and `comms_outbox` (default 7 days).
    pub outbox_days: u32,
    /// `comms_raw`, raw messages (default 90 days).
    pub comms_raw_days: u32,
    /// `comms_quarantine` (default 90 days).
    pub comms_quarantine_days: u32,
    /// `admin_audit` (default 90 days).
    pub audit_days: u32,
    /// `batches`, the batch records (default 90 days).
    pub batches_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            interval_secs: 300,
            batch: 5000,
            max_batches: 100,
            webhook_messages_days: 30,
            webhook_attempts_days: 30,
            intake_events_days: 30,
            outbox_days: 7,
            comms_raw_days: 90,
            comms_quarantine_days: 90,
            audit_days: 90,
            batches_days: 90,
        }
    }
}

impl RetentionConfig {
    /// Checks the settings; the message names the one at fault.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=100_000).contains(&self.batch) {
            return Err(format!("retention.batch must be 1 to 100000, got {}", self.batch));
        }
        if self.interval_secs == 0 || self.max_batches == 0 {
            return Err("retention.interval_secs and retention.max_batches must be at least 1".into());
        }
        Ok(())
    }

    /// Each plain table: (name, time column, extra condition, days).
    fn tables(&self) -> [(&'static str, &'static str, &'static str, u32); 9] {
        [
            ("webhook_messages", "created_at", "", self.webhook_messages_days),
            ("webhook_attempts", "at", "", self.webhook_attempts_days),
            ("intake_events", "recorded_at", "", self.intake_events_days),
            ("calendar_outbox", "published_at", "", self.outbox_days),
            ("comms_outbox", "published_at", "", self.outbox_days),
            ("comms_raw", "stored_at", "", self.comms_raw_days),
            ("comms_quarantine", "quarantined_at", "", self.comms_quarantine_days),
            ("admin_audit", "at", "", self.audit_days),
            ("batches", "created_at", "", self.batches_days),
        ]
    }
}

/// What one statement deletes: rows of `table` whose `column` is older than `days`.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Name shown in logs and metrics (`job_archive:<queue>:<state>` for the archive).
    pub name: String,
    sql: String,
    days: i32,
    queue: Option<String>,
    state: Option<String>,
    except: Vec<String>,
}

/// Every prune statement for these settings, the archive's first. The archive gets one
/// per (named queue, state), using the (queue, state, finished_at) index, then one per
/// state for every other queue, using (state, finished_at).
pub fn targets(archive: &ArchiveConfig, tables: &RetentionConfig) -> Vec<Target> {
    let mut out = Vec::new();
    let mut named: Vec<String> = archive.retention.iter().filter_map(|r| r.queue.clone()).collect();
    named.sort();
    named.dedup();
    for q in &named {
        for s in FinalState::ALL {
            let days = archive.days_for(Some(q), s);
            if days > 0 {
                out.push(Target {
                    name: format!("job_archive:{q}:{}", s.as_str()),
                    sql: "DELETE FROM job_archive WHERE ctid IN (SELECT ctid FROM job_archive
                            WHERE queue = $3 AND state = $4 AND finished_at < now() - make_interval(days => $1)
                            LIMIT $2)"
                        .into(),
                    days: days as i32,
                    queue: Some(q.clone()),
                    state: Some(s.as_str().into()),
                    except: Vec::new(),
                });
            }
        }
    }
    for s in FinalState::ALL {
        let days = archive.days_for(None, s);
        if days > 0 {
            out.push(Target {
                name: format!("job_archive:*:{}", s.as_str()),
                sql: "DELETE FROM job_archive WHERE ctid IN (SELECT ctid FROM job_archive
                        WHERE state = $3 AND finished_at < now() - make_interval(days => $1)
                          AND queue <> ALL($4) LIMIT $2)"
                    .into(),
                days: days as i32,
                queue: None,
                state: Some(s.as_str().into()),
                except: named.clone(),
            });
        }
    }
    for (table, column, extra, days) in tables.tables() {
        if days > 0 {
            out.push(Target {
                name: table.into(),
                sql: format!(
                    "DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table}
                       WHERE {column} < now() - make_interval(days => $1){extra} LIMIT $2)"
                ),
                days: days as i32,
                queue: None,
                state: None,
                except: Vec::new(),
            });
        }
    }
    out
}

/// Runs one bounded statement of `target`: deletes at most `batch` rows; answers how many.
pub async fn prune_batch(db: &PgPool, target: &Target, batch: i64) -> Result<u64, sqlx::Error> {
    // The SQL is built from this module's constants only (table and column names).
    let mut q = sqlx::query(sqlx::AssertSqlSafe(target.sql.clone())).bind(target.days).bind(batch);
    if let Some(state) = &target.state {
        if let Some(queue) = &target.queue {
            q = q.bind(queue).bind(state);
        } else {
            q = q.bind(state).bind(&target.except);
        }
    }
    Ok(q.execute(db).await?.rows_affected())
}

/// One pass: every target, batch after batch until one deletes fewer than `batch` rows or
/// `max_batches` ran; answers the rows deleted per target (those with any). A failing
/// target is logged and the others go on.
pub async fn pass(db: &PgPool, archive: &ArchiveConfig, tables: &RetentionConfig) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for t in targets(archive, tables) {
        let mut total = 0u64;
        for _ in 0..tables.max_batches {
            match prune_batch(db, &t, tables.batch).await {
                Ok(n) => {
                    total += n;
                    if (n as i64) < tables.batch {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(target = %t.name, error = %e, "pruning failed; retried next pass");
                    break;
                }
            }
        }
        if total > 0 {
            metrics::counter!("fleet_retention_deleted_total", "table" => t.name.clone()).increment(total);
            tracing::info!(target = %t.name, deleted = total, "pruned rows past their retention");
            out.push((t.name, total));
        }
    }
    out
}

/// Runs a pass every `interval_secs` until `stop`.
pub async fn run(
    db: PgPool,
    archive: ArchiveConfig,
    tables: RetentionConfig,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        pass(&db, &archive, &tables).await;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(tables.interval_secs)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archiver::RetentionRule;

    #[test]
    fn every_growing_table_has_a_target_and_zero_keeps_forever() {
        let t = targets(&ArchiveConfig::default(), &RetentionConfig::default());
        let names: Vec<&str> = t.iter().map(|t| t.name.as_str()).collect();
        for table in ["webhook_messages", "webhook_attempts", "intake_events", "comms_raw", "admin_audit"] {
            assert!(names.contains(&table), "{table}");
        }
        assert_eq!(names.iter().filter(|n| n.starts_with("job_archive:*:")).count(), 4);
        let keep = ArchiveConfig {
            retention: vec![RetentionRule { queue: Some("mail".into()), state: None, days: 0 }],
            ..Default::default()
        };
        let t = targets(&keep, &RetentionConfig { comms_raw_days: 0, ..Default::default() });
        assert!(!t.iter().any(|t| t.name.starts_with("job_archive:mail:") || t.name == "comms_raw"));
        let other = t.iter().find(|t| t.name == "job_archive:*:dead").unwrap();
        assert_eq!(other.except, vec!["mail".to_owned()]);
    }
}
