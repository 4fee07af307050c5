//! Fleet's Redis backend behind apalis-core's [`Backend`] trait.
//!
//! One [`QueueEngine`] per queue and worker process runs three small tasks
//! (see `driver.rs`):
//!
//! * the **fetcher** leases up to the free concurrency slots in one script call
//!   (promoting due scheduled jobs on the way) and hands the jobs to apalis-core
//!   through a channel; when nothing is ready it blocks on the queue's wake-up
//!   list (at most one second, or until the next scheduled job is due), so an
//!   idle worker starts new work within milliseconds without polling;
//! * the **acker** applies completions in batches, one script call for all the
//!   completions that arrived while the previous call was in flight;
//! * the **heartbeat** renews the leases of all this process's jobs in one call
//!   per interval and takes back expired leases of any worker.
//!
//! The backend never returns an error to apalis-core (which would end the
//! worker): Redis errors are logged and retried with backoff, and jobs are
//! yielded undecoded, so a payload that does not decode fails only that job.

pub mod calls;
mod driver;

use crate::state::AttemptRecord;
use apalis_core::backend::{Backend, BackendConfig, finalize::Ephemeral};
use apalis_core::task::Task;
use apalis_core::worker::context::WorkerContext;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;
use tower::layer::util::Identity;

pub use driver::{Completer, EngineHandle, QueueEngine};

/// A leased job as fetched from Redis, not yet decoded.
#[derive(Debug, Clone)]
pub struct RawJob {
    /// Job id.
    pub id: String,
    /// Queue it was fetched from.
    pub queue: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// The lease token that completions must carry.
    pub token: String,
    /// The stored envelope text (JSON).
    pub envelope: String,
    /// Fired when the job's lease is no longer this attempt's (cancelled by an
    /// operator, or taken back after expiry): the handler must stop.
    pub lost: tokio_util::sync::CancellationToken,
}

/// What happens to a job after an attempt.
#[derive(Debug, Clone)]
pub enum Op {
    /// It succeeded.
    Succeeded,
    /// It failed and runs again after `delay`, counting an attempt.
    Retry {
        /// Wait before the next attempt.
        delay: Duration,
        /// The failed attempt, for the history.
        record: AttemptRecord,
    },
    /// It goes to the dead letters.
    Dead {
        /// The last attempt and why the job died.
        record: AttemptRecord,
    },
    /// It runs again after `delay` without counting an attempt.
    Snooze {
        /// Wait before it runs again.
        delay: Duration,
    },
    /// Held back by a limit, cap or breaker: runs again after `delay`, no attempt counted.
    Defer {
        /// Wait before it runs again.
        delay: Duration,
    },
    /// It was not started (or was cut off by shutdown): back to the front of ready,
    /// attempt not counted.
    Release,
    /// It was not started before its deadline.
    Expire,
    /// The attempt was abandoned because its lease was lost (cancelled, or taken
    /// back): nothing to record.
    Lost,
}

impl Op {
    pub(crate) fn wire(&self) -> &'static str {
        match self {
            Op::Succeeded => "ok",
            Op::Retry { .. } => "retry",
            Op::Dead { .. } => "dead",
            Op::Snooze { .. } => "snooze",
            Op::Defer { .. } => "defer",
            Op::Release => "release",
            Op::Expire => "expire",
            Op::Lost => "lost",
        }
    }
}

/// The result of one attempt, sent by the runtime to the acker.
#[derive(Debug, Clone)]
pub struct Completion {
    /// Job id.
    pub id: String,
    /// Lease token of the attempt.
    pub token: String,
    /// Job kind (for events and metrics).
    pub kind: String,
    /// Attempt number.
    pub attempt: u32,
    /// The batch the job belongs to, if any (from its envelope).
    pub batch: Option<String>,
    /// The tenant that enqueued it, if any (from its envelope): its outcome is
    /// appended to the tenant's event stream.
    pub tenant: Option<String>,
    /// What happens next.
    pub op: Op,
}

/// What became of a job after its completion reached Redis; broadcast to
/// subscribers of [`EngineHandle::events`] (tests, observers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Finished successfully.
    Succeeded,
    /// Scheduled for another attempt.
    Retrying,
    /// Moved to the dead letters.
    Dead,
    /// Snoozed.
    Snoozed,
    /// Held back by a limit, cap or breaker, and rescheduled.
    Deferred,
    /// Handed back to ready.
    Released,
    /// Expired before it started.
    Expired,
    /// Refused: the lease token was stale.
    Stale,
    /// Nothing applied: the job's record was gone (finished and deleted).
    Gone,
    /// Abandoned by this worker after its lease was lost (cancelled or taken back).
    Abandoned,
    /// Stopped by this worker because it could not renew the job's lease (Redis
    /// unreachable) and the lease was about to expire: sent at once, before Redis is
    /// reached again; the job's completion follows as [`Outcome::Abandoned`].
    Fenced,
}

/// One applied (or refused) completion.
#[derive(Debug, Clone)]
pub struct JobEvent {
    /// Queue.
    pub queue: String,
    /// Job id.
    pub id: String,
    /// Job kind.
    pub kind: String,
    /// Attempt number.
    pub attempt: u32,
    /// What became of it.
    pub outcome: Outcome,
}

/// Settings of one queue's engine in one worker process.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Key prefix (deployment namespace).
    pub prefix: String,
    /// Queue name.
    pub queue: String,
    /// This process's instance id (host, pid, random part).
    pub instance: String,
    /// Jobs of this queue running at once in this process.
    pub concurrency: usize,
    /// Most jobs leased per fetch call.
    pub fetch_batch: usize,
    /// Lease length; leases are renewed every third of it.
    pub lease: Duration,
    /// How long finished (succeeded, expired) job records are kept; zero deletes them at once.
    pub retention: Duration,
    /// Most dead letters kept; older ones are evicted (and counted).
    pub dead_max_count: u64,
    /// Oldest dead letter kept.
    pub dead_max_age: Duration,
    /// Attempt records kept per job.
    pub history_cap: u32,
    /// Most scheduled jobs promoted per fetch call.
    pub promote_limit: usize,
    /// Longest an idle fetcher blocks before looking again.
    pub idle_wait: Duration,
    /// Times a job may be running when its worker stops (its lease expires) before it
    /// goes to the dead letters as "crashed its worker N times". The queue's `conf`
    /// hash field `crash_limit` overrides it at run time.
    pub crash_limit: u32,
    /// Concurrency slots shared with other engines (the partitions of one logical queue):
    /// when set, this engine's fetcher takes its slots from here instead of its own
    /// `concurrency` slots, so a busy partition can use what idle ones leave, and the
    /// fetchers waiting for a slot get them in turn (tokio's semaphore is fair).
    pub shared_slots: Option<std::sync::Arc<tokio::sync::Semaphore>>,
}

impl EngineConfig {
    /// Defaults for `queue` under `prefix`.
    pub fn new(prefix: impl Into<String>, queue: impl Into<String>, instance: impl Into<String>) -> Self {
        EngineConfig {
            prefix: prefix.into(),
            queue: queue.into(),
            instance: instance.into(),
            concurrency: 10,
            fetch_batch: 100,
            lease: Duration::from_secs(30),
            retention: Duration::from_secs(24 * 3600),
            dead_max_count: 100_000,
            dead_max_age: Duration::from_secs(30 * 24 * 3600),
            history_cap: 10,
            promote_limit: 1000,
            idle_wait: Duration::from_secs(1),
            crash_limit: 3,
            shared_slots: None,
        }
    }
}

/// The apalis-core backend of one queue: yields leased jobs from the engine's fetcher.
pub struct RedisBackend {
    rx: Arc<Mutex<mpsc::Receiver<Task<RawJob>>>>,
    config: EngineConfig,
    stop: tokio_util::sync::CancellationToken,
}

impl Clone for RedisBackend {
    fn clone(&self) -> Self {
        RedisBackend { rx: self.rx.clone(), config: self.config.clone(), stop: self.stop.clone() }
    }
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend").field("queue", &self.config.queue).finish()
    }
}

/// The backend never fails; Redis errors are handled inside the engine.
#[derive(Debug, thiserror::Error)]
#[error("fleet backend error")]
pub struct BackendError;

impl Backend for RedisBackend {
    type Task = Task<RawJob>;
    type Error = BackendError;

    fn poll_ready(&mut self, _cx: &mut Context<'_>, _worker: &WorkerContext) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        let mut rx = self.rx.lock().unwrap_or_else(|p| p.into_inner());
        match rx.poll_recv(cx) {
            Poll::Ready(Some(task)) => Poll::Ready(Some(Ok(task))),
            // The fetcher stopped (shutdown): no more tasks.
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_close(&mut self, _cx: &mut Context<'_>, _worker: &WorkerContext) -> Poll<Result<(), Self::Error>> {
        // Stop leasing; jobs still buffered are handed back by EngineHandle::shutdown.
        self.stop.cancel();
        Poll::Ready(Ok(()))
    }
}

impl BackendConfig for RedisBackend {
    type Args = RawJob;
    type Id = String;
    type Kind = Ephemeral;
    type Config = EngineConfig;
    type Layer = Identity;

    fn config(&self) -> &Self::Config {
        &self.config
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> Self::Layer {
        Identity::new()
    }
}
