//! What a job kind implements: a handler that takes typed arguments and says
//! what happens next.

use crate::limits::AttemptLimits;
use crate::report::JobReport;
use fleet_jobs::JobArgs;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Handles the jobs of one kind.
///
/// Return `Ok(())` when done. An `Err` says what happens next: see [`JobError`].
/// Any error type converts with `?` into a retryable failure.
pub trait Handler: Send + Sync + 'static {
    /// The kind's arguments; `Args::KIND` selects this handler.
    type Args: JobArgs;

    /// Runs one attempt.
    fn handle(&self, args: Self::Args, ctx: JobContext) -> impl Future<Output = Result<(), JobError>> + Send;

    /// The limit keys this job uses (e.g. `webhook:endpoint:<id>` from its args): each
    /// must admit the job before it runs (see the `limits` config). None by default.
    fn limit_keys(&self, _args: &Self::Args) -> Vec<String> {
        Vec::new()
    }

    /// Limit keys named by the job's arguments, which a tenant chooses: the engine puts
    /// each in the job's tenant's namespace (`tenant:<tenant>:<key>`, see
    /// `fleet_jobs::tenant::limit_key`), so one tenant can never use up, slow down or open
    /// the breaker of another's key, or of Fleet's own. Jobs without a tenant (Fleet's
    /// own, trusted Rust apps) use them as named. None by default.
    fn tenant_limit_keys(&self, _args: &Self::Args) -> Vec<String> {
        Vec::new()
    }
}

/// Why an attempt did not succeed, and what the engine does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    /// Try again: after `after` if given (e.g. an HTTP `Retry-After`), otherwise after
    /// the kind's backoff. Counts an attempt; after the last one the job goes to the
    /// dead letters.
    Retry {
        /// What went wrong.
        error: String,
        /// Wait asked for by the handler.
        after: Option<Duration>,
    },
    /// Do not try again: straight to the dead letters (a permanent error).
    GiveUp {
        /// Why.
        error: String,
    },
    /// Run again after `after` without counting an attempt.
    Snooze {
        /// Wait before running again.
        after: Duration,
    },
    /// The service said to slow down (e.g. HTTP 429 with Retry-After): every job of
    /// this job's limit keys is held back for `after`, fleet-wide, and this job is
    /// retried after it (counting an attempt).
    SlowDown {
        /// What the service said.
        error: String,
        /// How long to hold back.
        after: Duration,
    },
}

/// An error message as it is kept: any `http(s)://` URL in it redacted (user
/// information and query string hidden), since job errors reach logs, the attempt
/// history, dead letters and the dashboard, and an HTTP client's error text names the
/// URL it called, tokens included.
fn kept(error: impl fmt::Display) -> String {
    fleet_net::redact_urls_in(&error.to_string())
}

impl JobError {
    /// A retryable failure with the kind's backoff.
    pub fn retry(error: impl fmt::Display) -> Self {
        JobError::Retry { error: kept(error), after: None }
    }
    /// A retryable failure to be retried after `after`.
    pub fn retry_after(error: impl fmt::Display, after: Duration) -> Self {
        JobError::Retry { error: kept(error), after: Some(after) }
    }
    /// A permanent failure.
    pub fn give_up(error: impl fmt::Display) -> Self {
        JobError::GiveUp { error: kept(error) }
    }
    /// Run again later without counting an attempt.
    pub fn snooze(after: Duration) -> Self {
        JobError::Snooze { after }
    }
    /// The service asked to slow down: hold its limit keys back fleet-wide for `after`.
    pub fn slow_down(error: impl fmt::Display, after: Duration) -> Self {
        JobError::SlowDown { error: kept(error), after }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Retry { error, after: None } => write!(f, "{error}"),
            JobError::Retry { error, after: Some(d) } => write!(f, "{error} (retry after {} ms)", d.as_millis()),
            JobError::GiveUp { error } => write!(f, "{error} (permanent)"),
            JobError::Snooze { after } => write!(f, "snoozed for {} ms", after.as_millis()),
            JobError::SlowDown { error, after } => write!(f, "{error} (slow down for {} ms)", after.as_millis()),
        }
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for JobError {
    fn from(e: E) -> Self {
        // Include the chain of causes: operators see them in the attempt history.
        let mut msg = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        JobError::retry(msg)
    }
}

/// What a handler knows about the job it runs.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// Job id.
    pub id: String,
    /// Stable kind name.
    pub kind: String,
    /// Queue.
    pub queue: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Enqueue time, ms since the epoch.
    pub enqueued_at: u64,
    /// The worker instance running it.
    pub instance: Arc<str>,
    /// Trace context of the enqueuing request.
    pub trace: Option<String>,
    /// The tenant the job belongs to (set by the HTTP API from the caller's key).
    pub tenant: Option<String>,
    /// The bounded pool [`JobContext::blocking`] runs on.
    pub cpu: CpuPool,
    /// Limit keys learned while the handler runs (see [`JobContext::limits`]);
    /// `AttemptLimits::default()` admits everything (no Redis: a handler run in a test).
    pub limits: AttemptLimits,
    /// Where [`JobContext::progress`] and [`JobContext::set_result`] go;
    /// `JobReport::default()` keeps them in memory (a handler run in a test).
    pub report: JobReport,
}

impl JobContext {
    /// Whether this is the last attempt allowed.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }

    /// The fleet-wide limits of keys the handler learns only while it runs (an account
    /// named by settings it reads, the provider whose turn it is): admit a key before
    /// calling the service behind it, and settle it after the call if the call's own
    /// outcome says more than the attempt's. The runtime settles the keys left with the
    /// attempt's outcome, as it does the keys of [`Handler::limit_keys`].
    pub fn limits(&self) -> &AttemptLimits {
        &self.limits
    }

    /// Reports `percent` done (0–100) and a short message (at most 200 characters),
    /// shown with the job and streamed to its tenant as `job.progress`. Never waits;
    /// reports are coalesced to a few writes a second, the last one always written.
    pub fn progress(&self, percent: f64, message: impl Into<String>) {
        self.report.progress(percent, message);
    }

    /// Reports `done` of `total` units and a short message, like [`JobContext::progress`].
    pub fn progress_of(&self, done: u64, total: u64, message: impl Into<String>) {
        self.report.progress_of(done, total, message);
    }

    /// Records the job's result (JSON, at most 64 KiB; a larger one is a permanent
    /// error), shown with the job as long as its finished record is kept.
    pub async fn set_result<T: serde::Serialize + ?Sized>(&self, value: &T) -> Result<(), JobError> {
        self.report.set_result(value).await
    }

    /// The workflow step this job is, if it is one: its dependencies' results by step
    /// name ([`StepHandle::result`](fleet_jobs::workflows::StepHandle::result)) and steps
    /// added at run time ([`StepHandle::add_steps`](fleet_jobs::workflows::StepHandle::add_steps)).
    /// `None` for any other job, and in a unit test.
    pub fn workflow(&self) -> Option<fleet_jobs::workflows::StepHandle> {
        let (workflow, step) = fleet_jobs::workflows::parse_step_job_id(&self.id)?;
        Some(self.report.client()?.step_handle(workflow, step))
    }

    /// Runs CPU-heavy work on the bounded blocking pool so it never stalls the
    /// async runtime; waits for a free pool slot first.
    pub async fn blocking<T, F>(&self, f: F) -> Result<T, JobError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.cpu.run(f).await
    }
}

/// A bounded pool for CPU-heavy work: at most `size` closures at once on
/// tokio's blocking threads.
#[derive(Debug, Clone)]
pub struct CpuPool {
    slots: Arc<Semaphore>,
}

impl CpuPool {
    /// A pool running at most `size` closures at once.
    pub fn new(size: usize) -> Self {
        CpuPool { slots: Arc::new(Semaphore::new(size.max(1))) }
    }

    async fn run<T, F>(&self, f: F) -> Result<T, JobError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let permit = self.slots.clone().acquire_owned().await.map_err(|_| JobError::retry("cpu pool closed"))?;
        let out = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f()
        })
        .await;
        match out {
            Ok(v) => Ok(v),
            Err(e) if e.is_panic() => Err(JobError::retry(format!("panicked: {}", panic_message(e.into_panic())))),
            Err(e) => Err(JobError::retry(e)),
        }
    }
}

/// The message of a panic payload.
pub fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_job_errors_are_redacted() {
        let e = JobError::retry("error sending request for url (https://u:p@h.example/feed?token=abc): refused");
        assert_eq!(
            e,
            JobError::Retry {
                error: "error sending request for url (https://***@h.example/feed?***): refused".into(),
                after: None
            }
        );
        let e = JobError::give_up("GET http://h.example/x?sig=1 failed");
        assert!(!e.to_string().contains("sig=1"), "{e}");
        let e = JobError::slow_down("429 from https://h.example/?k=v", Duration::from_secs(1));
        assert!(!e.to_string().contains("k=v"), "{e}");
    }
}
