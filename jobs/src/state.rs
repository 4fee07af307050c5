//! What operators and callers can read about jobs and queues.

use crate::envelope::{Envelope, Priority};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The state of a job; see `docs/state_machine.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting in a ready list.
    Ready,
    /// Waiting for its run-at time (delayed or snoozed).
    Scheduled,
    /// Leased by a worker.
    Running,
    /// Failed and waiting for its next attempt.
    Retrying,
    /// Finished successfully.
    Succeeded,
    /// In the dead-letter queue.
    Dead,
    /// Cancelled before it finished.
    Cancelled,
    /// Not started before its deadline.
    Expired,
}

impl JobState {
    /// Parses the state field stored in Redis: `<code><priority>[:<token>]`.
    pub(crate) fn parse(raw: &str) -> Option<(JobState, Priority)> {
        let mut chars = raw.chars();
        let state = match chars.next()? {
            'q' => JobState::Ready,
            's' => JobState::Scheduled,
            'r' => JobState::Running,
            'y' => JobState::Retrying,
            'k' => JobState::Succeeded,
            'd' => JobState::Dead,
            'c' => JobState::Cancelled,
            'x' => JobState::Expired,
            _ => return None,
        };
        let pri = chars.next()?.to_digit(10)? as u8;
        Some((state, Priority::from_digit(pri)))
    }

    /// Whether the job will not run again.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Dead | JobState::Cancelled | JobState::Expired)
    }
}

/// One attempt in a job's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// Attempt number, from 1.
    pub attempt: u32,
    /// When the attempt ended (or its lease expired), ms since the epoch.
    pub at: u64,
    /// Worker instance that ran it, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// When the attempt started, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    /// How long it ran, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// What went wrong.
    pub error: String,
}

/// Everything Fleet holds about one job.
#[derive(Debug, Clone, Serialize)]
pub struct JobInfo {
    /// Current state.
    pub state: JobState,
    /// Attempts started so far.
    pub attempts: u32,
    /// The envelope; `None` when the stored envelope is not valid JSON.
    pub envelope: Option<Envelope>,
    /// The stored envelope text.
    pub raw_envelope: String,
    /// The newest attempts, oldest first (failures only).
    pub history: Vec<AttemptRecord>,
}

/// A job in the dead-letter queue.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// The job id.
    pub id: String,
    /// When it died, ms since the epoch.
    pub died_at: u64,
    /// Why: the error of its last attempt.
    pub reason: String,
    /// The full record.
    pub job: JobInfo,
}

/// Counters of one queue, read in constant time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// Jobs in the ready lists.
    pub ready: i64,
    /// Delayed and snoozed jobs.
    pub scheduled: i64,
    /// Leased jobs.
    pub running: i64,
    /// Failed jobs waiting for their next attempt.
    pub retrying: i64,
    /// Jobs in the dead-letter queue.
    pub dead: i64,
    /// Jobs ever enqueued.
    pub enqueued: i64,
    /// Jobs that succeeded.
    pub succeeded: i64,
    /// Attempts that failed (including expired leases).
    pub failed: i64,
    /// Jobs ever moved to the dead letters.
    pub died: i64,
    /// Completions refused because their lease token was stale.
    pub stale: i64,
    /// Completions received again after they were applied (a resend after a lost reply).
    pub duplicate_acks: i64,
    /// Completions for jobs whose record was gone (finished and deleted).
    pub gone_acks: i64,
    /// Completions applied after their lease had been taken back, before another attempt.
    pub late_acks: i64,
    /// Leases that expired (worker lost) and were taken back.
    pub lease_expired: i64,
    /// Dead letters evicted by the count or age bound.
    pub evicted: i64,
    /// Times a job snoozed.
    pub snoozed: i64,
    /// Jobs that expired before they started.
    pub expired: i64,
    /// Jobs cancelled before they finished.
    pub cancelled: i64,
    /// Times a job was held back by a rate limit, a concurrency cap or a breaker.
    pub deferred: i64,
    /// Dead letters replayed by operators.
    pub replayed: i64,
    /// Dead letters purged by operators.
    pub purged: i64,
}

impl QueueStats {
    pub(crate) fn from_map(map: &HashMap<String, i64>) -> Self {
        let g = |k: &str| map.get(k).copied().unwrap_or(0);
        QueueStats {
            ready: g("ready"),
            scheduled: g("scheduled"),
            running: g("running"),
            retrying: g("retrying"),
            dead: g("dead"),
            enqueued: g("enqueued"),
            succeeded: g("succeeded"),
            failed: g("failed"),
            died: g("died"),
            stale: g("stale"),
            duplicate_acks: g("duplicate_acks"),
            gone_acks: g("gone_acks"),
            late_acks: g("late_acks"),
            lease_expired: g("lease_expired"),
            evicted: g("evicted"),
            snoozed: g("snoozed"),
            expired: g("expired"),
            cancelled: g("cancelled"),
            deferred: g("deferred"),
            replayed: g("replayed"),
            purged: g("purged"),
        }
    }

    /// Jobs not yet finished: ready, scheduled, running and retrying.
    pub fn pending(&self) -> i64 {
        self.ready + self.scheduled + self.running + self.retrying
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stored_states() {
        assert_eq!(JobState::parse("q1"), Some((JobState::Ready, Priority::Default)));
        assert_eq!(JobState::parse("r0:12.3"), Some((JobState::Running, Priority::High)));
        assert_eq!(JobState::parse("d2"), Some((JobState::Dead, Priority::Low)));
        assert_eq!(JobState::parse("z1"), None);
        assert_eq!(JobState::parse(""), None);
    }
}
