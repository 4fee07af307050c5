//! The service apalis-core calls for every leased job. An attempt is a pipeline of
//! small steps, each of which may end it with an [`AttemptOutcome`]:
//!
//! 1. [`decode`] the envelope, then find the kind's handler ([`find`]);
//! 2. [`expire`] a job whose deadline passed before it started;
//! 3. [`admit`] the job on the limit keys its kind declares (a wait defers it);
//! 4. [`run`] the handler on its own task under a timeout, turning a timeout or a panic
//!    into a failure and stopping it when its lease is lost;
//! 5. [`settle`] its limit keys, declared and learned at run time, with how it went;
//! 6. [`decide`] what the handler's result means for the job (retry, dead letter, ...);
//! 7. [`report`]: the outcome's event writes the log line and the metrics
//!    ([`AttemptOutcome::emit`]), and the outcome becomes the one [`Completion`] the
//!    acker applies.
//!
//! Nothing here can stop the worker: an envelope that does not parse, a kind this
//! worker does not know and arguments that do not decode each send that one job
//! to the dead letters with the reason; a panic is a failed attempt.

use crate::events::{AttemptOutcome, JobStarted};
use crate::registry::{Entry, Registry, Started};
use apalis_core::error::BoxDynError;
use apalis_core::task::Task;
use fleet_jobs::backend::{Completer, Completion, Op, RawJob};
use fleet_jobs::envelope::{Envelope, now_ms};
use fleet_jobs::limits::WaitReason;
use fleet_jobs::progress::Attempt;
use fleet_jobs::retry::Backoff;
use fleet_jobs::state::AttemptRecord;
use fleet_kit::limits::{AttemptLimits, Guard, Held, Verdict};
use fleet_kit::report::JobReport;
use fleet_kit::{CpuPool, JobContext, JobError, panic_message};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Settings the dispatcher needs besides the registry.
#[derive(Debug, Clone)]
pub(crate) struct DispatchConfig {
    pub(crate) instance: Arc<str>,
    pub(crate) default_timeout: Duration,
    pub(crate) cpu: CpuPool,
    pub(crate) guard: Guard,
    /// Writes what handlers report (progress, results).
    pub(crate) recorder: fleet_jobs::progress::Recorder,
}

/// Longest wait for a finished attempt's last progress to be written.
const REPORT_FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// The tower service of one queue's apalis worker.
#[derive(Clone)]
pub(crate) struct Dispatch {
    registry: Arc<Registry>,
    completer: Completer,
    cfg: DispatchConfig,
}

impl Dispatch {
    pub(crate) fn new(registry: Arc<Registry>, completer: Completer, cfg: DispatchConfig) -> Self {
        Dispatch { registry, completer, cfg }
    }
}

impl tower::Service<Task<RawJob>> for Dispatch {
    type Response = ();
    type Error = BoxDynError;
    type Future = BoxFuture<'static, Result<(), BoxDynError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Concurrency is bounded by the engine's slots: it leases only as many jobs as are free.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, task: Task<RawJob>) -> Self::Future {
        let registry = self.registry.clone();
        let completer = self.completer.clone();
        let cfg = self.cfg.clone();
        Box::pin(async move {
            let completion = run_attempt(&registry, &cfg, task.args).await;
            completer.complete(completion);
            Ok(())
        })
    }
}

/// Aborts the spawned attempt if the dispatcher's future is dropped (shutdown
/// grace period over), so the job can be handed back instead of running on.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// When the attempt started, for its record and its run time.
#[derive(Debug, Clone, Copy)]
struct Clock {
    /// ms since the epoch.
    started_at: u64,
    t0: Instant,
}

/// One attempt, from the leased job to its completion.
async fn run_attempt(registry: &Registry, cfg: &DispatchConfig, job: RawJob) -> Completion {
    let clock = Clock { started_at: now_ms(), t0: Instant::now() };
    let env = match decode(&job) {
        Ok(env) => env,
        Err(outcome) => return report(&job, None, outcome, &cfg.instance, clock),
    };
    let span = job_span(&job, &env);
    async {
        let outcome = attempt(registry, cfg, &job, &env, clock).await;
        report(&job, Some(&env), outcome, &cfg.instance, clock)
    }
    .instrument(span)
    .await
}

/// The steps between a decoded envelope and the attempt's outcome.
async fn attempt(
    registry: &Registry,
    cfg: &DispatchConfig,
    job: &RawJob,
    env: &Envelope,
    clock: Clock,
) -> AttemptOutcome {
    let entry = match find(registry, env) {
        Ok(entry) => entry,
        Err(outcome) => return outcome,
    };
    if let Some(outcome) = expire(env, clock.started_at) {
        return outcome;
    }
    if job.attempt == 1 {
        let due = env.run_at.max(env.enqueued_at);
        JobStarted { queue: &job.queue, lag: Duration::from_millis(clock.started_at.saturating_sub(due)) }.emit();
    }
    // Keys the handler learns while it runs are held by the job, as its declared ones.
    let learned = AttemptLimits::new(cfg.guard.clone(), job.id.clone());
    let report = JobReport::live(
        cfg.recorder.clone(),
        Attempt {
            queue: job.queue.clone(),
            id: job.id.clone(),
            token: job.token.clone(),
            kind: env.kind.clone(),
            attempt: job.attempt,
            tenant: env.tenant.clone(),
            batch: env.batch.clone(),
        },
    );
    let ctx = context(job, env, cfg, learned.clone(), report.clone());
    if job.lost.is_cancelled() {
        // Cancelled, taken back or fenced (its lease could not be renewed) before it started.
        return AttemptOutcome::NotStarted;
    }
    let prepared = match entry.start(&env.args, ctx) {
        Ok(p) => p,
        Err(e) => {
            return AttemptOutcome::BadArgs { reason: format!("arguments do not decode as kind {:?}: {e}", env.kind) };
        }
    };
    let held = match admit(&cfg.guard, prepared.limit_keys, &job.id).await {
        Ok(held) => held,
        Err(outcome) => return outcome,
    };
    let timeout = env.timeout_ms.map(Duration::from_millis).or(entry.policy.timeout).unwrap_or(cfg.default_timeout);
    let ran = run(prepared.run, timeout, &job.lost).await;
    // The last progress reported is written before the completion is sent (bounded: a
    // slow Redis does not hold the completion back for long).
    if tokio::time::timeout(REPORT_FLUSH_TIMEOUT, report.finish()).await.is_err() {
        tracing::warn!(job = %job.id, "the job's last progress was not written in time");
    }
    settle(&cfg.guard, held, &learned, &job.id, &ran).await;
    match ran {
        // Cancelled by an operator, or the lease was taken back: there is nothing to record.
        Ran::Abandoned => AttemptOutcome::Abandoned,
        Ran::Finished(result) => {
            decide(result, clock.t0.elapsed(), job.attempt, env.max_attempts, &entry.policy.backoff)
        }
    }
}

/// Step 1: the stored envelope, or why it is not one.
fn decode(job: &RawJob) -> Result<Envelope, AttemptOutcome> {
    serde_json::from_str(&job.envelope).map_err(|e| {
        let reason = if job.envelope == fleet_jobs::backend::calls::NOT_UTF8 {
            "undecodable envelope: its bytes are not UTF-8 (kept as stored; see fleetctl job)".to_owned()
        } else {
            format!("undecodable envelope: {e}")
        };
        AttemptOutcome::Undecodable { reason }
    })
}

/// The job's span. The enqueuing request's trace: every log line of the job carries its
/// trace id and the request's span as parent, so the logs join the upstream trace.
fn job_span(job: &RawJob, env: &Envelope) -> tracing::Span {
    let (trace_id, parent_span) =
        env.trace.as_deref().and_then(fleet_jobs::envelope::parse_traceparent).unwrap_or(("", ""));
    let span = tracing::info_span!("job", job_id = %job.id, kind = %env.kind, queue = %job.queue,
        attempt = job.attempt, trace_id = trace_id, parent_span = parent_span);
    if let Some(tp) = env.trace.as_deref() {
        crate::telemetry::set_remote_parent(&span, tp);
    }
    span
}

/// Step 1 (cont.): the kind's handler, or a dead letter naming the kinds this worker handles.
fn find<'r>(registry: &'r Registry, env: &Envelope) -> Result<&'r Entry, AttemptOutcome> {
    registry.get(&env.kind).ok_or_else(|| {
        let known: Vec<&str> = registry.kinds().collect();
        AttemptOutcome::UnknownKind {
            reason: format!("unknown kind {:?}: this worker handles {}", env.kind, known.join(", ")),
        }
    })
}

/// Step 2: a job whose deadline passed before it started is not run.
fn expire(env: &Envelope, started_at: u64) -> Option<AttemptOutcome> {
    let deadline = env.deadline?;
    (started_at > deadline).then(|| AttemptOutcome::Expired { late_ms: started_at - deadline })
}

/// What a handler knows about its job.
fn context(job: &RawJob, env: &Envelope, cfg: &DispatchConfig, limits: AttemptLimits, report: JobReport) -> JobContext {
    JobContext {
        id: job.id.clone(),
        kind: env.kind.clone(),
        queue: job.queue.clone(),
        attempt: job.attempt,
        max_attempts: env.max_attempts,
        enqueued_at: env.enqueued_at,
        instance: cfg.instance.clone(),
        trace: env.trace.clone(),
        tenant: env.tenant.clone(),
        cpu: cfg.cpu.clone(),
        limits,
        report,
    }
}

/// Step 3: every limit key the kind declares admits the job, or it is deferred.
async fn admit(guard: &Guard, keys: Vec<String>, holder: &str) -> Result<Option<Held>, AttemptOutcome> {
    if keys.is_empty() {
        return Ok(None);
    }
    match guard.admit(keys, holder).await {
        Ok(held) => Ok(Some(held)),
        Err((delay, reason, key)) => {
            // Rate waits are exact reserved slots; other waits are spread a little
            // so held-back jobs do not all come back at once.
            let delay = match reason {
                WaitReason::Rate => delay,
                _ => delay + delay.mul_f64(rand::random::<f64>() * 0.5),
            };
            Err(AttemptOutcome::Deferred { key, reason, delay })
        }
    }
}

/// How the handler's run ended.
#[derive(Debug)]
enum Ran {
    /// It returned, timed out or panicked (both failures).
    Finished(Result<(), JobError>),
    /// Its lease was lost while it ran: it was stopped.
    Abandoned,
}

/// Step 4: runs the handler on its own task under `timeout`, and stops it when `lost`
/// fires.
async fn run(handler: Started, timeout: Duration, lost: &CancellationToken) -> Ran {
    let mut handle = AbortOnDrop(tokio::spawn(tokio::time::timeout(timeout, handler).in_current_span()));
    let joined = tokio::select! {
        j = &mut handle.0 => j,
        // Cancelled by an operator, or the lease was taken back: stop the handler
        // (dropping `handle` aborts it).
        _ = lost.cancelled() => return Ran::Abandoned,
    };
    Ran::Finished(match joined {
        Ok(Ok(r)) => r,
        Ok(Err(_elapsed)) => Err(JobError::retry(format!("timed out after {} ms", timeout.as_millis()))),
        Err(e) if e.is_panic() => Err(JobError::retry(format!("panicked: {}", panic_message(e.into_panic())))),
        Err(e) => Err(JobError::retry(format!("attempt aborted: {e}"))),
    })
}

/// Step 5: the breakers of the job's limit keys hear how it went (a slow-down holds its
/// keys back fleet-wide), and their slots go back. A stopped job says nothing about the
/// services behind its keys.
async fn settle(guard: &Guard, held: Option<Held>, learned: &AttemptLimits, holder: &str, ran: &Ran) {
    let verdict = match ran {
        Ran::Finished(result) => Verdict::of(result),
        Ran::Abandoned => Verdict::Neutral,
    };
    if let Some(held) = held {
        guard.settle(held, holder, verdict).await;
    }
    learned.settle_rest(verdict).await;
}

/// Step 6: what the handler's result means for the job. The handler's own wait
/// (Retry-After, slow-down) wins over the kind's backoff; a failure of the last attempt
/// sends the job to the dead letters.
fn decide(
    result: Result<(), JobError>,
    elapsed: Duration,
    attempt: u32,
    max_attempts: u32,
    backoff: &Backoff,
) -> AttemptOutcome {
    let retry_or_dead = |error: String, after: Option<Duration>| {
        if attempt >= max_attempts {
            let error = format!("{error} (attempt {attempt} of {max_attempts}: no attempts left)");
            AttemptOutcome::Exhausted { elapsed, error }
        } else {
            let delay = after.unwrap_or_else(|| backoff.delay(attempt));
            AttemptOutcome::Retried { elapsed, error, delay }
        }
    };
    match result {
        Ok(()) => AttemptOutcome::Succeeded { elapsed },
        Err(JobError::Snooze { after }) => AttemptOutcome::Snoozed { elapsed, after },
        Err(JobError::GiveUp { error }) => AttemptOutcome::GaveUp { elapsed, error },
        // A slow-down already held the job's limit keys back fleet-wide (in `settle`).
        Err(JobError::SlowDown { error, after }) => retry_or_dead(error, Some(after)),
        Err(JobError::Retry { error, after }) => retry_or_dead(error, after),
    }
}

/// Step 7: the outcome's event, then the completion the acker applies.
fn report(job: &RawJob, env: Option<&Envelope>, outcome: AttemptOutcome, instance: &str, clock: Clock) -> Completion {
    outcome.emit(&job.id, &job.queue, job.attempt, env.map_or("", |e| e.kind.as_str()));
    // A handler's run time is the one its histogram has; before a handler, the time so far.
    let duration = outcome.elapsed().unwrap_or_else(|| clock.t0.elapsed());
    let record = |error: String| AttemptRecord {
        attempt: job.attempt,
        at: now_ms(),
        worker: Some(instance.to_owned()),
        started_at: Some(clock.started_at),
        duration_ms: Some(duration.as_millis() as u64),
        error,
    };
    let op = match outcome {
        AttemptOutcome::Undecodable { reason }
        | AttemptOutcome::UnknownKind { reason }
        | AttemptOutcome::BadArgs { reason } => Op::Dead { record: record(reason) },
        AttemptOutcome::Expired { .. } => Op::Expire,
        AttemptOutcome::NotStarted | AttemptOutcome::Abandoned => Op::Lost,
        AttemptOutcome::Deferred { delay, .. } => Op::Defer { delay },
        AttemptOutcome::Succeeded { .. } => Op::Succeeded,
        AttemptOutcome::Snoozed { after, .. } => Op::Snooze { delay: after },
        AttemptOutcome::GaveUp { error, .. } | AttemptOutcome::Exhausted { error, .. } => {
            Op::Dead { record: record(error) }
        }
        AttemptOutcome::Retried { error, delay, .. } => Op::Retry { delay, record: record(error) },
    };
    Completion {
        id: job.id.clone(),
        token: job.token.clone(),
        kind: env.map(|e| e.kind.clone()).unwrap_or_default(),
        attempt: job.attempt,
        batch: env.and_then(|e| e.batch.clone()),
        tenant: env.and_then(|e| e.tenant.clone()),
        op,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn job(attempt: u32) -> RawJob {
        RawJob {
            id: "j1".into(),
            queue: "default".into(),
            attempt,
            token: "t1".into(),
            envelope: String::new(),
            lost: CancellationToken::new(),
        }
    }

    fn envelope() -> Envelope {
        serde_json::from_value(serde_json::json!({
            "id": "j1", "kind": "probe", "queue": "default", "args": {}, "max_attempts": 3,
            "enqueued_at": 1, "run_at": 1, "tenant": "acme", "batch": "b1"
        }))
        .unwrap()
    }

    /// The completion of `result` at `attempt` of 3, with a fixed backoff of 7 s.
    fn completion_of(result: Result<(), JobError>, attempt: u32) -> Completion {
        let backoff = Backoff {
            base: Duration::from_secs(7),
            factor: 1.0,
            max: Duration::from_secs(7),
            jitter: fleet_jobs::retry::Jitter::None,
        };
        let outcome = decide(result, 5 * MS, attempt, 3, &backoff);
        let clock = Clock { started_at: 1_000, t0: Instant::now() };
        report(&job(attempt), Some(&envelope()), outcome, "w1", clock)
    }

    fn dead_error(c: &Completion) -> &str {
        match &c.op {
            Op::Dead { record } => &record.error,
            other => panic!("not a dead letter: {other:?}"),
        }
    }

    #[test]
    fn success_and_snooze_become_their_ops_for_the_envelopes_job() {
        let c = completion_of(Ok(()), 1);
        assert!(matches!(c.op, Op::Succeeded), "{:?}", c.op);
        assert_eq!((c.id.as_str(), c.token.as_str(), c.kind.as_str(), c.attempt), ("j1", "t1", "probe", 1));
        assert_eq!((c.batch.as_deref(), c.tenant.as_deref()), (Some("b1"), Some("acme")));
        let c = completion_of(Err(JobError::snooze(9 * MS)), 3);
        assert!(matches!(c.op, Op::Snooze { delay } if delay == 9 * MS), "a snooze counts no attempt: {:?}", c.op);
    }

    #[test]
    fn a_failure_retries_after_the_handlers_wait_or_the_kinds_backoff() {
        let c = completion_of(Err(JobError::retry("boom")), 1);
        let Op::Retry { delay, record } = &c.op else { panic!("{:?}", c.op) };
        assert_eq!(*delay, Duration::from_secs(7));
        assert_eq!(record.error, "boom");
        assert_eq!((record.attempt, record.started_at, record.duration_ms), (1, Some(1_000), Some(5)));
        assert_eq!(record.worker.as_deref(), Some("w1"));
        let c = completion_of(Err(JobError::retry_after("busy", 2 * MS)), 2);
        assert!(matches!(c.op, Op::Retry { delay, .. } if delay == 2 * MS), "{:?}", c.op);
        let c = completion_of(Err(JobError::slow_down("429", 3 * MS)), 2);
        assert!(matches!(c.op, Op::Retry { delay, .. } if delay == 3 * MS), "{:?}", c.op);
    }

    #[test]
    fn the_last_attempts_failure_and_a_give_up_are_dead_letters() {
        let c = completion_of(Err(JobError::retry("boom")), 3);
        assert_eq!(dead_error(&c), "boom (attempt 3 of 3: no attempts left)");
        let c = completion_of(Err(JobError::slow_down("429", MS)), 3);
        assert_eq!(dead_error(&c), "429 (attempt 3 of 3: no attempts left)");
        let c = completion_of(Err(JobError::give_up("bad input")), 1);
        assert_eq!(dead_error(&c), "bad input", "a give-up uses no more attempts");
    }

    #[test]
    fn outcomes_are_counted_under_the_readmes_labels() {
        let backoff = Backoff::default();
        let label = |r: Result<(), JobError>, attempt| decide(r, MS, attempt, 3, &backoff).counted_as();
        assert_eq!(label(Ok(()), 1), Some("succeeded"));
        assert_eq!(label(Err(JobError::retry("x")), 1), Some("retried"));
        assert_eq!(label(Err(JobError::retry("x")), 3), Some("dead"));
        assert_eq!(label(Err(JobError::give_up("x")), 1), Some("dead"));
        assert_eq!(label(Err(JobError::snooze(MS)), 1), Some("snoozed"));
        assert_eq!(AttemptOutcome::Expired { late_ms: 1 }.counted_as(), Some("expired"));
        assert_eq!(AttemptOutcome::Abandoned.counted_as(), Some("abandoned"));
        assert_eq!(AttemptOutcome::NotStarted.counted_as(), None);
        assert_eq!(AttemptOutcome::Undecodable { reason: String::new() }.counted_as(), None);
    }

    #[test]
    fn steps_before_the_handler_end_the_attempt_with_their_own_ops() {
        let clock = Clock { started_at: 1_000, t0: Instant::now() };
        let mut bad = job(1);
        bad.envelope = "{not json".into();
        let outcome = decode(&bad).unwrap_err();
        let c = report(&bad, None, outcome, "w1", clock);
        assert!(dead_error(&c).starts_with("undecodable envelope: "), "{:?}", c.op);
        assert_eq!((c.kind.as_str(), c.batch.as_deref()), ("", None), "nothing of an envelope that is not one");

        let mut env = envelope();
        env.deadline = Some(999);
        let expired = expire(&env, 1_000).unwrap();
        assert_eq!(expired, AttemptOutcome::Expired { late_ms: 1 });
        assert!(matches!(report(&job(1), Some(&env), expired, "w1", clock).op, Op::Expire));
        assert_eq!(expire(&env, 999), None, "a job starting at its deadline runs");

        let registry = Registry::new();
        let Err(unknown) = find(&registry, &env) else { panic!("an empty registry knows no kind") };
        assert!(dead_error(&report(&job(1), Some(&env), unknown, "w1", clock)).starts_with("unknown kind \"probe\""));

        let deferred = AttemptOutcome::Deferred { key: "k".into(), reason: WaitReason::Rate, delay: 4 * MS };
        assert!(
            matches!(report(&job(1), Some(&env), deferred, "w1", clock).op, Op::Defer { delay } if delay == 4 * MS)
        );
        assert!(matches!(report(&job(1), Some(&env), AttemptOutcome::Abandoned, "w1", clock).op, Op::Lost));
    }
}
