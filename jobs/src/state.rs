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
    /// The stored state field is not one Fleet writes (see [`JobInfo::raw_state`]).
    Unknown,
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

/// Everything Fleet holds about one job. Read from bytes: a record written by something
/// other than Fleet (an envelope that is not UTF-8 or not JSON, a garbage history or
/// state) is still shown, with what could not be decoded said in the fields below.
#[derive(Debug, Clone, Serialize)]
pub struct JobInfo {
    /// Current state ([`JobState::Unknown`] when the stored field is not one Fleet writes).
    pub state: JobState,
    /// The stored state field, lossily as text, when it does not parse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_state: Option<String>,
    /// Attempts started so far.
    pub attempts: u32,
    /// The envelope; `None` when the stored envelope does not decode.
    pub envelope: Option<Envelope>,
    /// Why the envelope does not decode, when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope_error: Option<String>,
    /// The stored envelope text; when the bytes are not UTF-8, shown lossily (invalid
    /// sequences replaced by U+FFFD) and `raw_envelope_lossy` is set.
    pub raw_envelope: String,
    /// Whether `raw_envelope` was converted lossily (the stored bytes are not UTF-8).
    pub raw_envelope_lossy: bool,
    /// The stored envelope bytes in hex, exactly, when `raw_envelope` is lossy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_envelope_hex: Option<String>,
    /// The newest attempts, oldest first (failures only).
    pub history: Vec<AttemptRecord>,
    /// Why the stored history does not decode (then `history` is empty), with its text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_error: Option<String>,
    /// The progress its handler last reported (see [`crate::progress`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<crate::progress::Progress>,
    /// The result its handler recorded (JSON, at most 64 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<serde_json::value::RawValue>>,
}

/// What [`JobInfo::kind`] says when the envelope does not decode.
pub const UNDECODABLE: &str = "(undecodable)";

impl JobInfo {
    /// The job's kind, or [`UNDECODABLE`].
    pub fn kind(&self) -> &str {
        self.envelope.as_ref().map_or(UNDECODABLE, |e| e.kind.as_str())
    }

    /// Why it failed last: the error of its last attempt, or a note that the history
    /// does not decode.
    pub fn last_error(&self) -> String {
        match (self.history.last(), &self.history_error) {
            (Some(a), _) => a.error.clone(),
            (None, Some(_)) => "(undecodable history)".into(),
            (None, None) => String::new(),
        }
    }

    /// A record from the stored bytes of its fields; never fails (see the type's doc).
    pub(crate) fn from_bytes(env: Vec<u8>, state: Vec<u8>, att: Option<Vec<u8>>, hist: Option<Vec<u8>>) -> Self {
        let state_text = String::from_utf8_lossy(&state);
        let (state, raw_state) = match JobState::parse(&state_text) {
            Some((s, _)) => (s, None),
            None => (JobState::Unknown, Some(state_text.into_owned())),
        };
        let attempts = att.and_then(|a| std::str::from_utf8(&a).ok()?.trim().parse().ok()).unwrap_or(0);
        let (raw_envelope, raw_envelope_lossy, raw_envelope_hex) = match String::from_utf8(env) {
            Ok(s) => (s, false, None),
            Err(e) => {
                let bytes = e.into_bytes();
                (String::from_utf8_lossy(&bytes).into_owned(), true, Some(hex(&bytes)))
            }
        };
        let (envelope, envelope_error) = if raw_envelope_lossy {
            (None, Some("the envelope is not UTF-8".to_owned()))
        } else {
            match serde_json::from_str::<Envelope>(&raw_envelope) {
                Ok(e) => (Some(e), None),
                Err(e) => (None, Some(format!("the envelope is not a Fleet envelope: {e}"))),
            }
        };
        let (history, history_error) = match hist {
            None => (Vec::new(), None),
            Some(h) => match serde_json::from_slice::<Vec<AttemptRecord>>(&h) {
                Ok(v) => (v, None),
                Err(e) => {
                    let text: String = String::from_utf8_lossy(&h).chars().take(1000).collect();
                    (Vec::new(), Some(format!("the history does not decode ({e}): {text}")))
                }
            },
        };
        JobInfo {
            state,
            raw_state,
            attempts,
            envelope,
            envelope_error,
            raw_envelope,
            raw_envelope_lossy,
            raw_envelope_hex,
            history,
            history_error,
            progress: None,
            result: None,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
    /// Jobs cancelled because a newer one of their dedup key took their place (replace,
    /// keep-last); also counted in `cancelled`.
    pub superseded: i64,
    /// Enqueues merged into their debounce key's pending job.
    pub debounced: i64,
    /// Finished jobs not queued for the archive because its list was full (the scheduler
    /// had not drained it for a long time); see `crate::archive`.
    pub archive_dropped: i64,
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
            superseded: g("superseded"),
            debounced: g("debounced"),
            archive_dropped: g("archive_dropped"),
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

    #[test]
    fn records_of_any_bytes_decode_and_say_what_did_not() {
        let bin = b"\xff\xfe{\"kind\":\0\"x\"}".to_vec();
        let j = JobInfo::from_bytes(bin.clone(), b"d1".to_vec(), Some(b"3".to_vec()), Some(b"\xffnot json".to_vec()));
        assert_eq!(j.state, JobState::Dead);
        assert_eq!(j.attempts, 3);
        assert!(j.envelope.is_none());
        assert!(j.raw_envelope_lossy);
        assert!(j.raw_envelope.starts_with("\u{fffd}\u{fffd}{"), "{}", j.raw_envelope);
        assert_eq!(j.raw_envelope_hex.as_deref(), Some(hex(&bin).as_str()));
        assert!(j.history.is_empty());
        assert!(j.history_error.as_deref().unwrap().contains("not json"));
        assert_eq!(j.last_error(), "(undecodable history)");
        assert_eq!(j.kind(), UNDECODABLE);

        let j = JobInfo::from_bytes(b"not json".to_vec(), b"\xff?".to_vec(), Some(b"x".to_vec()), None);
        assert_eq!(j.state, JobState::Unknown);
        assert!(j.raw_state.is_some());
        assert_eq!(j.attempts, 0);
        assert!(!j.raw_envelope_lossy);
        assert_eq!(j.raw_envelope, "not json");
        assert!(j.envelope_error.as_deref().unwrap().contains("not a Fleet envelope"));
        assert!(j.raw_envelope_hex.is_none());
        assert_eq!(j.last_error(), "");
    }
}
