//! The service apalis-core calls for every leased job: decode the envelope, find
//! the kind's handler, run it on its own task under a timeout, and turn what
//! happened into a completion for the acker.
//!
//! Nothing here can stop the worker: an envelope that does not parse, a kind this
//! worker does not know and arguments that do not decode each send that one job
//! to the dead letters with the reason; a panic is a failed attempt.

use crate::registry::Registry;
use apalis_core::error::BoxDynError;
use apalis_core::task::Task;
use fleet_jobs::backend::{Completer, Completion, Op, RawJob};
use fleet_jobs::envelope::{Envelope, now_ms};
use fleet_jobs::limits::WaitReason;
use fleet_jobs::state::AttemptRecord;
use fleet_kit::limits::{AttemptLimits, Verdict};
use fleet_kit::{CpuPool, JobContext, JobError, panic_message};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Settings the dispatcher needs besides the registry.
#[derive(Debug, Clone)]
pub(crate) struct DispatchConfig {
    pub(crate) instance: Arc<str>,
    pub(crate) default_timeout: Duration,
    pub(crate) cpu: CpuPool,
    pub(crate) guard: fleet_kit::limits::Guard,
}

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

async fn run_attempt(registry: &Registry, cfg: &DispatchConfig, job: RawJob) -> Completion {
    let started_at = now_ms();
    let t0 = Instant::now();
    let env: Envelope = match serde_json::from_str(&job.envelope) {
        Ok(env) => env,
        Err(e) => {
            let reason = if job.envelope == fleet_jobs::backend::calls::NOT_UTF8 {
                "undecodable envelope: its bytes are not UTF-8 (kept as stored; see fleetctl job)".to_owned()
            } else {
                format!("undecodable envelope: {e}")
            };
            tracing::error!(job_id = %job.id, queue = %job.queue, attempt = job.attempt, %reason, "job sent to dead letters");
            return dead(&job, None, cfg, started_at, t0, reason);
        }
    };
    // The enqueuing request's trace: every log line of the job carries its trace id and
    // the request's span as parent, so the logs join the upstream trace.
    let (trace_id, parent_span) =
        env.trace.as_deref().and_then(fleet_jobs::envelope::parse_traceparent).unwrap_or(("", ""));
    let span = tracing::info_span!("job", job_id = %job.id, kind = %env.kind, queue = %job.queue, attempt = job.attempt,
        trace_id = trace_id, parent_span = parent_span);
    if let Some(tp) = env.trace.as_deref() {
        crate::telemetry::set_remote_parent(&span, tp);
    }
    async move {
        let Some(entry) = registry.get(&env.kind) else {
            let known: Vec<&str> = registry.kinds().collect();
            let reason = format!("unknown kind {:?}: this worker handles {}", env.kind, known.join(", "));
            tracing::error!(%reason, "job sent to dead letters");
            metrics::counter!("fleet_jobs_total", "queue" => job.queue.clone(), "kind" => "unknown", "outcome" => "dead").increment(1);
            return dead(&job, Some(&env), cfg, started_at, t0, reason);
        };
        if let Some(deadline) = env.deadline
            && started_at > deadline
        {
            tracing::info!(late_ms = started_at - deadline, "job expired before it started");
            metrics::counter!("fleet_jobs_total", "queue" => job.queue.clone(), "kind" => env.kind.clone(), "outcome" => "expired").increment(1);
            return Completion { id: job.id, token: job.token, kind: env.kind, attempt: job.attempt, batch: env.batch.clone(), tenant: env.tenant.clone(), op: Op::Expire };
        }
        if job.attempt == 1 {
            let due = env.run_at.max(env.enqueued_at);
            let lag = started_at.saturating_sub(due) as f64 / 1000.0;
            metrics::histogram!("fleet_job_start_latency_seconds", "queue" => job.queue.clone()).record(lag);
        }
        // Keys the handler learns while it runs are held by the job, as its declared ones.
        let learned = AttemptLimits::new(cfg.guard.clone(), job.id.clone());
        let ctx = JobContext {
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
            limits: learned.clone(),
        };
        if job.lost.is_cancelled() {
            // Cancelled, taken back or fenced (its lease could not be renewed) before it started.
            tracing::warn!("job not started: its lease is no longer this attempt's");
            return Completion { id: job.id, token: job.token, kind: env.kind, attempt: job.attempt, batch: env.batch.clone(), tenant: env.tenant.clone(), op: Op::Lost };
        }
        let prepared = match entry.start(&env.args, ctx) {
            Ok(p) => p,
            Err(e) => {
                let reason = format!("arguments do not decode as kind {:?}: {e}", env.kind);
                tracing::error!(%reason, "job sent to dead letters");
                metrics::counter!("fleet_jobs_total", "queue" => job.queue.clone(), "kind" => env.kind.clone(), "outcome" => "dead").increment(1);
                return dead(&job, Some(&env), cfg, started_at, t0, reason);
            }
        };
        let held = if prepared.limit_keys.is_empty() {
            None
        } else {
            match cfg.guard.admit(prepared.limit_keys, &job.id).await {
                Ok(h) => Some(h),
                Err((delay, reason, key)) => {
                    // Rate waits are exact reserved slots; other waits are spread a little
                    // so held-back jobs do not all come back at once.
                    let delay = match reason {
                        WaitReason::Rate => delay,
                        _ => delay + delay.mul_f64(rand::random::<f64>() * 0.5),
                    };
                    tracing::debug!(%key, reason = reason.as_str(), wait_ms = delay.as_millis() as u64, "job deferred by a limit");
                    metrics::counter!("fleet_limiter_waits_total", "key" => key, "reason" => reason.as_str()).increment(1);
                    return Completion { id: job.id, token: job.token, kind: env.kind, attempt: job.attempt, batch: env.batch.clone(), tenant: env.tenant.clone(), op: Op::Defer { delay } };
                }
            }
        };
        let fut = prepared.run;
        let timeout = env
            .timeout_ms
            .map(Duration::from_millis)
            .or(entry.policy.timeout)
            .unwrap_or(cfg.default_timeout);
        let mut handle = AbortOnDrop(tokio::spawn(tokio::time::timeout(timeout, fut).in_current_span()));
        let joined = tokio::select! {
            j = &mut handle.0 => j,
            _ = job.lost.cancelled() => {
                // Cancelled by an operator, or the lease was taken back: stop the
                // handler (dropping `handle` aborts it); there is nothing to record.
                drop(handle);
                if let Some(h) = held {
                    cfg.guard.settle(h, &job.id, Verdict::Neutral).await;
                }
                learned.settle_rest(Verdict::Neutral).await;
                tracing::warn!("job stopped: its lease is no longer this attempt's (cancelled or taken back)");
                metrics::counter!("fleet_jobs_total", "queue" => job.queue.clone(), "kind" => env.kind.clone(), "outcome" => "abandoned").increment(1);
                return Completion { id: job.id, token: job.token, kind: env.kind, attempt: job.attempt, batch: env.batch.clone(), tenant: env.tenant.clone(), op: Op::Lost };
            }
        };
        let result = match joined {
            Ok(Ok(r)) => r,
            Ok(Err(_elapsed)) => Err(JobError::retry(format!("timed out after {} ms", timeout.as_millis()))),
            Err(e) if e.is_panic() => Err(JobError::retry(format!("panicked: {}", panic_message(e.into_panic())))),
            Err(e) => Err(JobError::retry(format!("attempt aborted: {e}"))),
        };
        let verdict = Verdict::of(&result);
        if let Some(h) = held {
            cfg.guard.settle(h, &job.id, verdict).await;
        }
        learned.settle_rest(verdict).await;
        let elapsed = t0.elapsed();
        metrics::histogram!("fleet_job_duration_seconds", "queue" => job.queue.clone(), "kind" => env.kind.clone())
            .record(elapsed.as_secs_f64());
        let record = |error: String| AttemptRecord {
            attempt: job.attempt,
            at: now_ms(),
            worker: Some(cfg.instance.to_string()),
            started_at: Some(started_at),
            duration_ms: Some(elapsed.as_millis() as u64),
            error,
        };
        // The handler's own wait (Retry-After, slow-down) wins over the kind's backoff.
        let retry_or_dead = |error: String, after: Option<Duration>| {
            if job.attempt >= env.max_attempts {
                let error = format!("{error} (attempt {} of {}: no attempts left)", job.attempt, env.max_attempts);
                tracing::warn!(%error, "job failed its last attempt; sent to dead letters");
                (Op::Dead { record: record(error) }, "dead")
            } else {
                let delay = after.unwrap_or_else(|| entry.policy.backoff.delay(job.attempt));
                tracing::info!(%error, retry_in_ms = delay.as_millis() as u64, "job failed; will retry");
                (Op::Retry { delay, record: record(error) }, "retried")
            }
        };
        let (op, outcome) = match result {
            Ok(()) => (Op::Succeeded, "succeeded"),
            Err(JobError::Snooze { after }) => (Op::Snooze { delay: after }, "snoozed"),
            Err(JobError::GiveUp { error }) => {
                tracing::warn!(%error, "job gave up; sent to dead letters");
                (Op::Dead { record: record(error) }, "dead")
            }
            // A slow-down already held the job's limit keys back fleet-wide (in `settle`).
            Err(JobError::SlowDown { error, after }) => retry_or_dead(error, Some(after)),
            Err(JobError::Retry { error, after }) => retry_or_dead(error, after),
        };
        metrics::counter!("fleet_jobs_total", "queue" => job.queue.clone(), "kind" => env.kind.clone(), "outcome" => outcome)
            .increment(1);
        Completion { id: job.id, token: job.token, kind: env.kind, attempt: job.attempt, batch: env.batch.clone(), tenant: env.tenant.clone(), op }
    }
    .instrument(span)
    .await
}

fn dead(
    job: &RawJob,
    env: Option<&Envelope>,
    cfg: &DispatchConfig,
    started_at: u64,
    t0: Instant,
    error: String,
) -> Completion {
    Completion {
        id: job.id.clone(),
        token: job.token.clone(),
        kind: env.map(|e| e.kind.clone()).unwrap_or_default(),
        attempt: job.attempt,
        batch: env.and_then(|e| e.batch.clone()),
        tenant: env.and_then(|e| e.tenant.clone()),
        op: Op::Dead {
            record: AttemptRecord {
                attempt: job.attempt,
                at: now_ms(),
                worker: Some(cfg.instance.to_string()),
                started_at: Some(started_at),
                duration_ms: Some(t0.elapsed().as_millis() as u64),
                error,
            },
        },
    }
}
