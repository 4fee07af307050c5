//! What the dispatcher tells operators about an attempt: one typed event per outcome
//! (in the manner of vector's `internal_events`), whose [`AttemptOutcome::emit`] writes
//! the log line and the metrics together. `fleet_jobs_total` and
//! `fleet_job_duration_seconds` are written here and nowhere else, so a new outcome
//! cannot be logged and not counted, or counted under another name.
//!
//! The metrics are those of the README's table (and `deploy/tools/checks.py`):
//!
//! | metric | labels | written by |
//! |---|---|---|
//! | `fleet_jobs_total` | queue, kind, outcome | all but an undecodable envelope, a job not started, a deferral |
//! | `fleet_job_duration_seconds` | queue, kind | the outcomes of a handler that returned, timed out or panicked |
//! | `fleet_job_start_latency_seconds` | queue | [`JobStarted`], at a job's first attempt |
//! | `fleet_limiter_waits_total` | key, reason | [`AttemptOutcome::Deferred`] |

use fleet_jobs::limits::WaitReason;
use std::time::Duration;

/// How one attempt ended, as operators see it; the dispatcher turns it into the
/// engine's operation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AttemptOutcome {
    /// The stored envelope is not a job: dead letter.
    Undecodable {
        /// Why, for the dead letter.
        reason: String,
    },
    /// No handler for the kind on this worker: dead letter.
    UnknownKind {
        /// Why, naming the kinds this worker handles.
        reason: String,
    },
    /// Its deadline passed before it started.
    Expired {
        /// How late it was, ms.
        late_ms: u64,
    },
    /// Its lease was no longer this attempt's before it started.
    NotStarted,
    /// Its arguments do not decode as its kind's: dead letter.
    BadArgs {
        /// Why, for the dead letter.
        reason: String,
    },
    /// A limit key held it back; it runs again after `delay`, without counting an attempt.
    Deferred {
        /// The key that said to wait.
        key: String,
        /// Why it said so.
        reason: WaitReason,
        /// The wait.
        delay: Duration,
    },
    /// Its lease was lost while it ran (cancelled, taken back or fenced): stopped.
    Abandoned,
    /// The handler succeeded.
    Succeeded {
        /// The handler's run time.
        elapsed: Duration,
    },
    /// The handler asked to run again later, without counting an attempt.
    Snoozed {
        /// The handler's run time.
        elapsed: Duration,
        /// The wait it asked for.
        after: Duration,
    },
    /// The handler gave up: dead letter.
    GaveUp {
        /// The handler's run time.
        elapsed: Duration,
        /// Why.
        error: String,
    },
    /// The handler failed its last attempt: dead letter.
    Exhausted {
        /// The handler's run time.
        elapsed: Duration,
        /// The failure, with the attempts used.
        error: String,
    },
    /// The handler failed and the job runs again after `delay`.
    Retried {
        /// The handler's run time.
        elapsed: Duration,
        /// The failure.
        error: String,
        /// The wait before the next attempt.
        delay: Duration,
    },
}

impl AttemptOutcome {
    /// Writes the outcome's log line and metrics. Called inside the job's span (the
    /// undecodable envelope, which has none, names the job in its own fields).
    pub(crate) fn emit(&self, job_id: &str, queue: &str, attempt: u32, kind: &str) {
        match self {
            AttemptOutcome::Undecodable { reason } => {
                tracing::error!(%job_id, %queue, attempt, %reason, "job sent to dead letters");
            }
            AttemptOutcome::UnknownKind { reason } | AttemptOutcome::BadArgs { reason } => {
                tracing::error!(%reason, "job sent to dead letters");
            }
            AttemptOutcome::Expired { late_ms } => tracing::info!(late_ms, "job expired before it started"),
            // Cancelled, taken back or fenced (its lease could not be renewed) before it started.
            AttemptOutcome::NotStarted => tracing::warn!("job not started: its lease is no longer this attempt's"),
            AttemptOutcome::Deferred { key, reason, delay } => {
                tracing::debug!(%key, reason = reason.as_str(), wait_ms = delay.as_millis() as u64,
                    "job deferred by a limit");
                metrics::counter!("fleet_limiter_waits_total", "key" => key.clone(), "reason" => reason.as_str())
                    .increment(1);
            }
            AttemptOutcome::Abandoned => {
                tracing::warn!("job stopped: its lease is no longer this attempt's (cancelled or taken back)");
            }
            AttemptOutcome::Succeeded { .. } | AttemptOutcome::Snoozed { .. } => {}
            AttemptOutcome::GaveUp { error, .. } => tracing::warn!(%error, "job gave up; sent to dead letters"),
            AttemptOutcome::Exhausted { error, .. } => {
                tracing::warn!(%error, "job failed its last attempt; sent to dead letters");
            }
            AttemptOutcome::Retried { error, delay, .. } => {
                tracing::info!(%error, retry_in_ms = delay.as_millis() as u64, "job failed; will retry");
            }
        }
        if let Some(elapsed) = self.elapsed() {
            metrics::histogram!("fleet_job_duration_seconds", "queue" => queue.to_owned(), "kind" => kind.to_owned())
                .record(elapsed.as_secs_f64());
        }
        if let Some(outcome) = self.counted_as() {
            // A kind this worker does not know is counted under one label, not the
            // envelope's text: a stray enqueue cannot add series.
            let kind = if matches!(self, AttemptOutcome::UnknownKind { .. }) { "unknown" } else { kind };
            metrics::counter!("fleet_jobs_total", "queue" => queue.to_owned(), "kind" => kind.to_owned(),
                "outcome" => outcome)
            .increment(1);
        }
    }

    /// The run time of a handler that ran to an end.
    pub(crate) fn elapsed(&self) -> Option<Duration> {
        match self {
            AttemptOutcome::Succeeded { elapsed }
            | AttemptOutcome::Snoozed { elapsed, .. }
            | AttemptOutcome::GaveUp { elapsed, .. }
            | AttemptOutcome::Exhausted { elapsed, .. }
            | AttemptOutcome::Retried { elapsed, .. } => Some(*elapsed),
            _ => None,
        }
    }

    /// The `outcome` label of `fleet_jobs_total`, for the outcomes it counts.
    pub(crate) fn counted_as(&self) -> Option<&'static str> {
        match self {
            AttemptOutcome::Undecodable { .. } | AttemptOutcome::NotStarted | AttemptOutcome::Deferred { .. } => None,
            AttemptOutcome::UnknownKind { .. }
            | AttemptOutcome::BadArgs { .. }
            | AttemptOutcome::GaveUp { .. }
            | AttemptOutcome::Exhausted { .. } => Some("dead"),
            AttemptOutcome::Expired { .. } => Some("expired"),
            AttemptOutcome::Abandoned => Some("abandoned"),
            AttemptOutcome::Succeeded { .. } => Some("succeeded"),
            AttemptOutcome::Snoozed { .. } => Some("snoozed"),
            AttemptOutcome::Retried { .. } => Some("retried"),
        }
    }
}

/// A job's first attempt started: how long after it was due.
pub(crate) struct JobStarted<'a> {
    /// Its queue.
    pub(crate) queue: &'a str,
    /// From due (its run time, or enqueue time if later) to start.
    pub(crate) lag: Duration,
}

impl JobStarted<'_> {
    /// Writes `fleet_job_start_latency_seconds`.
    pub(crate) fn emit(&self) {
        metrics::histogram!("fleet_job_start_latency_seconds", "queue" => self.queue.to_owned())
            .record(self.lag.as_secs_f64());
    }
}
