//! The per-queue engine: fetcher, acker and heartbeat tasks around one Redis connection.

use super::{Completion, EngineConfig, JobEvent, Op, Outcome, RawJob, RedisBackend, calls};
use crate::conn::RedisConn;
use crate::keys::QueueKeys;
use apalis_core::task::{builder::TaskBuilder, task_id::TaskId};
use redis::RedisResult;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long shutdown keeps trying to hand unfinished jobs back before leaving
/// them to lease expiry.
const RELEASE_DEADLINE: Duration = Duration::from_secs(10);
/// Most completions applied in one script call.
const ACK_BATCH: usize = 1000;
/// Longest wait between two sends of completions that Redis did not take.
const ACK_RETRY_MAX: Duration = Duration::from_millis(250);

struct Shared {
    cfg: EngineConfig,
    keys: QueueKeys,
    conn: RedisConn,
    /// Jobs this process holds a lease on (buffered or running): id -> lease.
    leased: Mutex<HashMap<String, Held>>,
    /// Free concurrency slots.
    slots: Arc<Semaphore>,
    events: broadcast::Sender<JobEvent>,
    /// A client on the same connection, for batch callbacks.
    client: crate::Client,
    stop_fetch: CancellationToken,
}

/// A lease this process holds.
struct Held {
    token: String,
    lost: CancellationToken,
    /// Its completion is on its way to Redis: a heartbeat that no longer finds the
    /// lease there is seeing the completion, not another attempt.
    completing: bool,
    /// Attempt number (for events).
    attempt: u32,
    /// When the call that last set its lease (the fetch, then each successful renewal)
    /// was sent, on this process's monotonic clock: the lease in Redis ends no sooner
    /// than this plus the lease length.
    renewed_at: Instant,
    /// Stopped by this process because its lease could not be renewed in time (see
    /// `fence`): no longer renewed, its completion is `Op::Lost`.
    fenced: bool,
}

impl Shared {
    fn leased(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.leased.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Starts the engine of one queue.
pub struct QueueEngine;

impl QueueEngine {
    /// Starts the fetcher, acker and heartbeat of `cfg.queue`. `client` opens the
    /// extra connection that idle waits block on; `conn` carries every script call;
    /// every applied completion is sent to `events` (when it has subscribers).
    pub fn start(
        client: crate::RedisClient,
        conn: RedisConn,
        cfg: EngineConfig,
        events: broadcast::Sender<JobEvent>,
    ) -> (RedisBackend, EngineHandle) {
        let keys = QueueKeys::new(&cfg.prefix, &cfg.queue);
        let concurrency = cfg.concurrency.max(1);
        let stop_fetch = CancellationToken::new();
        let shared = Arc::new(Shared {
            client: crate::Client::new(conn.clone(), cfg.prefix.clone()),
            keys,
            conn,
            leased: Mutex::new(HashMap::new()),
            slots: cfg.shared_slots.clone().unwrap_or_else(|| Arc::new(Semaphore::new(concurrency))),
            events,
            stop_fetch: stop_fetch.clone(),
            cfg,
        });
        let (task_tx, task_rx) = mpsc::channel(concurrency);
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let ack_close = CancellationToken::new();
        let hb_stop = CancellationToken::new();
        let fetcher = tokio::spawn(fetcher(shared.clone(), client, task_tx));
        let acker = tokio::spawn(acker(shared.clone(), done_rx, ack_close.clone()));
        let heartbeat = tokio::spawn(heartbeat(shared.clone(), hb_stop.clone()));
        // Ends with the heartbeat (shutdown cancels hb_stop).
        tokio::spawn(janitor(shared.clone(), hb_stop.clone()));
        let fence = tokio::spawn(fence(shared.clone(), hb_stop.clone()));
        let backend = RedisBackend { rx: Arc::new(Mutex::new(task_rx)), config: shared.cfg.clone(), stop: stop_fetch };
        let handle = EngineHandle {
            completer: Completer { tx: done_tx, slots: shared.slots.clone() },
            shared,
            fetcher,
            acker,
            heartbeat,
            fence,
            ack_close,
            hb_stop,
        };
        (backend, handle)
    }
}

/// Sends completions to the acker and frees the job's concurrency slot.
#[derive(Clone)]
pub struct Completer {
    tx: mpsc::UnboundedSender<Completion>,
    slots: Arc<Semaphore>,
}

impl Completer {
    /// Records the end of one attempt. Call exactly once per delivered job.
    pub fn complete(&self, c: Completion) {
        // The acker outlives every service that holds a Completer, except at the
        // very end of shutdown, when the job stays leased and is handed back.
        let _ = self.tx.send(c);
        self.slots.add_permits(1);
    }
}

impl std::fmt::Debug for Completer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Completer")
    }
}

/// Controls a running queue engine.
pub struct EngineHandle {
    shared: Arc<Shared>,
    completer: Completer,
    fetcher: JoinHandle<()>,
    acker: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
    fence: JoinHandle<()>,
    ack_close: CancellationToken,
    hb_stop: CancellationToken,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle").field("queue", &self.shared.cfg.queue).finish()
    }
}

impl EngineHandle {
    /// The completer that the job runtime reports attempts to.
    pub fn completer(&self) -> Completer {
        self.completer.clone()
    }

    /// Events for every completion applied (or refused) in Redis.
    pub fn events(&self) -> broadcast::Receiver<JobEvent> {
        self.shared.events.subscribe()
    }

    /// The queue this engine serves.
    pub fn queue(&self) -> &str {
        &self.shared.cfg.queue
    }

    /// Jobs currently leased by this process.
    pub fn leased(&self) -> usize {
        self.shared.leased().len()
    }

    /// The engine's loops (`fetch`, `ack`, `heartbeat`) that have ended. Before shutdown
    /// each runs for the life of the engine, so an ended one panicked or returned: the
    /// worker's `/readyz` and its supervisor read this.
    pub fn ended_loops(&self) -> Vec<&'static str> {
        [("fetch", &self.fetcher), ("ack", &self.acker), ("heartbeat", &self.heartbeat)]
            .into_iter()
            .filter(|(_, h)| h.is_finished())
            .map(|(name, _)| name)
            .collect()
    }

    /// Stops leasing new jobs (running jobs go on).
    pub fn stop_fetching(&self) {
        self.shared.stop_fetch.cancel();
    }

    /// Shuts the engine down: stops leasing, applies every completion received,
    /// hands every job still leased but unfinished back to the front of ready
    /// (attempt not counted), and deregisters this worker.
    pub async fn shutdown(self) {
        let shared = self.shared;
        shared.stop_fetch.cancel();
        let _ = self.fetcher.await;
        self.ack_close.cancel();
        drop(self.completer);
        let _ = self.acker.await;

        let leftover: Vec<(String, String)> = shared.leased().drain().map(|(id, h)| (id, h.token)).collect();
        if !leftover.is_empty() {
            let batch: Vec<Completion> = leftover
                .into_iter()
                .map(|(id, token)| Completion {
                    id,
                    token,
                    kind: String::new(),
                    attempt: 0,
                    batch: None,
                    tenant: None,
                    op: Op::Release,
                })
                .collect();
            let deadline = Instant::now() + RELEASE_DEADLINE;
            let mut delay = Duration::from_millis(50);
            loop {
                {
                    let mut leased = shared.leased();
                    for c in &batch {
                        if let Some(h) = leased.get_mut(&c.id) {
                            h.completing = true;
                        }
                    }
                }
                match apply(&shared, &batch).await {
                    Ok(_) => {
                        tracing::info!(queue = %shared.cfg.queue, jobs = batch.len(), "handed unfinished jobs back to ready");
                        break;
                    }
                    Err(e) if Instant::now() < deadline => {
                        tracing::warn!(queue = %shared.cfg.queue, error = %e, "could not hand jobs back yet; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(1));
                    }
                    Err(e) => {
                        tracing::error!(queue = %shared.cfg.queue, error = %e, jobs = batch.len(),
                            "could not hand jobs back; they return to ready when their leases expire");
                        break;
                    }
                }
            }
        }
        self.hb_stop.cancel();
        let _ = self.heartbeat.await;
        let _ = self.fence.await;
        let _: RedisResult<()> = redis::pipe()
            .zrem(&shared.keys.workers, &shared.cfg.instance)
            .ignore()
            .hdel(&shared.keys.workerjobs, &shared.cfg.instance)
            .ignore()
            .query_async(&mut shared.conn.clone())
            .await;
    }
}

/// Exponential backoff for Redis errors: 50 ms doubling to 5 s.
struct ErrorBackoff(Duration);

impl ErrorBackoff {
    fn new() -> Self {
        ErrorBackoff(Duration::from_millis(50))
    }
    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        d
    }
    fn reset(&mut self) {
        self.0 = Duration::from_millis(50);
    }
}

async fn fetcher(shared: Arc<Shared>, client: crate::RedisClient, tx: mpsc::Sender<apalis_core::task::Task<RawJob>>) {
    let cfg = &shared.cfg;
    let stop = shared.stop_fetch.clone();
    let mut waiter: Option<RedisConn> = None;
    let mut backoff = ErrorBackoff::new();
    let batch = cfg.fetch_batch.max(1);
    // Set while a suspect runs alone here, or while suspects wait for a worker that holds
    // nothing: lease nothing until every job held here has finished.
    let mut drain = false;
    'fetching: loop {
        while drain {
            if shared.leased().is_empty() {
                drain = false;
            } else {
                tokio::select! { _ = stop.cancelled() => break 'fetching, _ = tokio::time::sleep(Duration::from_millis(10)) => {} }
            }
        }
        // Hold at least one free slot, then take every other free slot up to a batch.
        let first = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            p = shared.slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        first.forget();
        let mut want = 1;
        while want < batch {
            match shared.slots.try_acquire() {
                Ok(p) => {
                    p.forget();
                    want += 1;
                }
                Err(_) => break,
            }
        }
        // A fetch is never cancelled half-way: its leases must be recorded.
        let holds_nothing = shared.leased().is_empty();
        let sent = Instant::now();
        let fetched = match calls::lease_for(&mut shared.conn.clone(), &shared.keys, cfg, want, holds_nothing).await {
            Ok(f) => f,
            Err(e) => {
                shared.slots.add_permits(want);
                metrics::counter!("fleet_redis_errors_total", "queue" => cfg.queue.clone(), "op" => "fetch")
                    .increment(1);
                let d = backoff.next();
                tracing::warn!(queue = %cfg.queue, error = %e, retry_in_ms = d.as_millis() as u64, "fetch failed");
                tokio::select! { _ = stop.cancelled() => break, _ = tokio::time::sleep(d) => continue }
            }
        };
        backoff.reset();
        let got = fetched.jobs.len();
        if got < want {
            shared.slots.add_permits(want - got);
        }
        if fetched.isolated
            && let Some(j) = fetched.jobs.first()
        {
            tracing::info!(queue = %cfg.queue, id = %j.id, "running a suspect alone (it was running when its worker stopped)");
        }
        if got > 0 {
            {
                let mut leased = shared.leased();
                for j in &fetched.jobs {
                    leased.insert(
                        j.id.clone(),
                        Held {
                            token: j.token.clone(),
                            lost: j.lost.clone(),
                            completing: false,
                            attempt: j.attempt,
                            renewed_at: sent,
                            fenced: false,
                        },
                    );
                }
            }
            for job in fetched.jobs {
                let (id, attempt) = (job.id.clone(), job.attempt as usize);
                let task = TaskBuilder::new(job).task_id(TaskId::from_string(id)).attempt(attempt).build();
                // If the worker is gone the job stays leased and is handed back at shutdown.
                let _ = tx.send(task).await;
            }
        }
        if fetched.isolated || fetched.suspects_waiting {
            drain = true;
            continue;
        }
        if got == want && !fetched.paused {
            continue;
        }
        // Nothing (more) ready: block until woken, the next scheduled job is due, or idle_wait.
        let mut wait = cfg.idle_wait;
        if fetched.next_due >= 0 && !fetched.paused {
            let until_due = Duration::from_millis((fetched.next_due - fetched.now).max(0) as u64);
            wait = wait.min(until_due);
        }
        if wait < Duration::from_millis(1) {
            continue;
        }
        if waiter.is_none() {
            // Its own connection: a BLPOP on the shared one would hold up every command
            // behind it on that server (on a cluster, that queue's node).
            match client.blocking(cfg.idle_wait).await {
                Ok(c) => waiter = Some(c),
                Err(e) => {
                    tracing::warn!(queue = %cfg.queue, error = %e, "could not open the wake-up connection");
                    tokio::select! { _ = stop.cancelled() => break, _ = tokio::time::sleep(wait) => continue }
                }
            }
        }
        let Some(conn) = waiter.as_mut() else { continue };
        let mut cmd = redis::cmd("BLPOP");
        cmd.arg(&shared.keys.wake).arg(wait.as_secs_f64());
        let blpop = cmd.query_async::<Option<(String, String)>>(conn);
        tokio::select! {
            _ = stop.cancelled() => break,
            r = blpop => if let Err(e) = r {
                waiter = None;
                metrics::counter!("fleet_redis_errors_total", "queue" => cfg.queue.clone(), "op" => "wait").increment(1);
                let d = backoff.next();
                tracing::warn!(queue = %cfg.queue, error = %e, "wake-up wait failed");
                tokio::select! { _ = stop.cancelled() => break, _ = tokio::time::sleep(d) => {} }
            }
        }
    }
    tracing::debug!(queue = %cfg.queue, "fetcher stopped");
}

async fn apply(shared: &Shared, batch: &[Completion]) -> RedisResult<calls::Completed> {
    calls::complete(&mut shared.conn.clone(), &shared.keys, &shared.cfg, batch).await
}

async fn acker(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Completion>, close: CancellationToken) {
    let queue = shared.cfg.queue.clone();
    let mut batch: Vec<Completion> = Vec::with_capacity(ACK_BATCH);
    let mut backoff = ErrorBackoff::new();
    let mut failing_since: Option<Instant> = None;
    let mut failures = 0u64;
    let mut closing = false;
    loop {
        if batch.is_empty() {
            if closing {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            } else {
                tokio::select! {
                    c = rx.recv() => match c { Some(c) => batch.push(c), None => break },
                    _ = close.cancelled() => { closing = true; continue }
                }
            }
        }
        while batch.len() < ACK_BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        match apply(&shared, &batch).await {
            Ok(done) => {
                backoff.reset();
                failing_since = None;
                failures = 0;
                if !done.finished_batches.is_empty() {
                    // Enqueue their callbacks off the ack path (idempotent; the heartbeat
                    // retries any left behind).
                    let client = shared.client.clone();
                    let q = queue.clone();
                    tokio::spawn(async move {
                        if let Err(e) = client.fire_finished_batches(&q).await {
                            tracing::warn!(queue = %q, error = %e, "batch callbacks not enqueued yet; the heartbeat retries");
                        }
                    });
                }
                if batch.iter().any(|c| c.id.starts_with("wf:")) {
                    // Workflow steps ended: move their workflows on, off the ack path
                    // (idempotent; the heartbeat applies any left behind).
                    let client = shared.client.clone();
                    let q = queue.clone();
                    tokio::spawn(async move {
                        if let Err(e) = client.pump_workflows(&q).await {
                            tracing::warn!(queue = %q, error = %e, "workflow steps not applied yet; the heartbeat retries");
                        }
                    });
                }
                let detail = done.flags;
                let flags = done.applied;
                let count = |which: calls::AckFlag| {
                    detail.iter().zip(&batch).filter(|(f, c)| **f == which && !matches!(c.op, Op::Lost)).count()
                };
                let stale = count(calls::AckFlag::Refused);
                if stale > 0 {
                    metrics::counter!("fleet_stale_completions_total", "queue" => queue.clone())
                        .increment(stale as u64);
                    tracing::warn!(queue = %queue, refused = stale, "completions refused: their lease had been taken back");
                }
                let (dup, late) = (count(calls::AckFlag::Duplicate), count(calls::AckFlag::Late));
                if dup > 0 {
                    metrics::counter!("fleet_duplicate_completions_total", "queue" => queue.clone())
                        .increment(dup as u64);
                    tracing::info!(queue = %queue, completions = dup, "completions were already applied (a resend after a lost reply)");
                }
                if late > 0 {
                    metrics::counter!("fleet_late_completions_total", "queue" => queue.clone()).increment(late as u64);
                    tracing::warn!(queue = %queue, completions = late,
                        "completions applied after their leases had expired (no other attempt had started)");
                }
                {
                    let mut leased = shared.leased();
                    for c in &batch {
                        leased.remove(&c.id);
                    }
                }
                publish_tenant_events(&shared, &batch, &flags);
                if shared.events.receiver_count() > 0 {
                    for ((c, applied), flag) in batch.drain(..).zip(flags).zip(detail) {
                        let outcome = if matches!(c.op, Op::Lost) {
                            Outcome::Abandoned
                        } else if flag == calls::AckFlag::Gone {
                            Outcome::Gone
                        } else if !applied {
                            Outcome::Stale
                        } else {
                            match c.op {
                                Op::Succeeded => Outcome::Succeeded,
                                Op::Retry { .. } => Outcome::Retrying,
                                Op::Dead { .. } => Outcome::Dead,
                                Op::Snooze { .. } => Outcome::Snoozed,
                                Op::Defer { .. } => Outcome::Deferred,
                                Op::Release => Outcome::Released,
                                Op::Expire => Outcome::Expired,
                                Op::Lost => Outcome::Abandoned,
                            }
                        };
                        let _ = shared.events.send(JobEvent {
                            queue: queue.clone(),
                            id: c.id,
                            kind: c.kind,
                            attempt: c.attempt,
                            outcome,
                        });
                    }
                }
                batch.clear();
            }
            Err(e) => {
                // Keep the batch and try again: a completion is never dropped while
                // this process lives. If it dies, the leases expire and the jobs rerun.
                // Resent at least every ACK_RETRY_MAX: once Redis is back, completions should
                // land before a heartbeat reaps their expired leases and another worker
                // leases the jobs again (a completion that arrives first is still applied).
                metrics::counter!("fleet_redis_errors_total", "queue" => queue.clone(), "op" => "ack").increment(1);
                let since = *failing_since.get_or_insert_with(Instant::now);
                let d = backoff.next().min(ACK_RETRY_MAX);
                failures += 1;
                if failures % 20 == 1 {
                    tracing::warn!(queue = %queue, error = %e, pending = batch.len(), failures,
                        retry_in_ms = d.as_millis() as u64, "ack failed");
                }
                tokio::time::sleep(d).await;
                if closing && since.elapsed() >= RELEASE_DEADLINE {
                    tracing::error!(queue = %queue, pending = batch.len(),
                        "giving up acknowledging at shutdown; these jobs return to ready when their leases expire");
                    break;
                }
            }
        }
    }
}

/// Appends the outcomes of applied tenant jobs to their tenants' event streams, off
/// the ack path (a notification channel: a failed append is logged, not retried).
fn publish_tenant_events(shared: &Shared, batch: &[Completion], applied: &[bool]) {
    let at = crate::envelope::now_ms();
    let events: Vec<(String, crate::events::TenantEvent)> = batch
        .iter()
        .zip(applied)
        .filter(|(_, ok)| **ok)
        .filter_map(|(c, _)| {
            let tenant = c.tenant.as_ref()?;
            let event_type = match c.op {
                Op::Succeeded => "job.succeeded",
                Op::Retry { .. } => "job.retrying",
                Op::Dead { .. } => "job.dead",
                Op::Expire => "job.expired",
                _ => return None,
            };
            let event = crate::events::TenantEvent {
                event_type: event_type.to_owned(),
                queue: shared.cfg.queue.clone(),
                id: c.id.clone(),
                kind: c.kind.clone(),
                attempt: c.attempt,
                batch: c.batch.clone(),
                at,
                data: None,
            };
            Some((tenant.clone(), event))
        })
        .collect();
    if events.is_empty() {
        return;
    }
    let mut conn = shared.conn.clone();
    let prefix = shared.cfg.prefix.clone();
    tokio::spawn(async move {
        if let Err(e) = crate::events::append(&mut conn, &prefix, &events).await {
            tracing::warn!(error = %e, events = events.len(), "tenant job events not appended to their streams");
        }
    });
}

async fn heartbeat(shared: Arc<Shared>, stop: CancellationToken) {
    let cfg = &shared.cfg;
    let k = &shared.keys;
    // A third of the lease, so two renewals can fail before it expires; at most 2 s,
    // so a cancelled job's handler is stopped within about 2 s.
    let interval = (cfg.lease / 3).clamp(Duration::from_millis(50), Duration::from_secs(2));
    loop {
        // Jobs stopped by the fence are not renewed: their leases run out and another
        // worker takes them over.
        let held: Vec<(String, String)> =
            shared.leased().iter().filter(|(_, h)| !h.fenced).map(|(id, h)| (id.clone(), h.token.clone())).collect();
        let sent = Instant::now();
        match calls::heartbeat(&mut shared.conn.clone(), k, cfg, &held).await {
            Ok(report) => {
                {
                    let lost: std::collections::HashSet<&str> = report.lost.iter().map(String::as_str).collect();
                    let mut leased = shared.leased();
                    for (id, token) in &held {
                        if lost.contains(id.as_str()) {
                            continue;
                        }
                        if let Some(h) = leased.get_mut(id).filter(|h| &h.token == token) {
                            h.renewed_at = h.renewed_at.max(sent);
                        }
                    }
                }
                if report.reaped > 0 {
                    metrics::counter!("fleet_lease_expiries_total", "queue" => cfg.queue.clone())
                        .increment(report.reaped);
                    tracing::warn!(queue = %cfg.queue, jobs = report.reaped, "took back jobs whose leases expired");
                }
                if !report.lost.is_empty() {
                    // Jobs whose completion was applied meanwhile are not lost: only those
                    // still running here are (cancelled, or taken back after an expiry).
                    let leased = shared.leased();
                    let mut lost = 0u64;
                    for id in &report.lost {
                        // The handler stops; its completion (Op::Lost) removes the entry.
                        if let Some(h) = leased.get(id).filter(|h| !h.completing && !h.fenced) {
                            h.lost.cancel();
                            lost += 1;
                        }
                    }
                    drop(leased);
                    if lost > 0 {
                        metrics::counter!("fleet_leases_lost_total", "queue" => cfg.queue.clone()).increment(lost);
                        tracing::warn!(queue = %cfg.queue, jobs = lost, "leases lost: another attempt owns these jobs now");
                    }
                }
            }
            Err(e) => {
                metrics::counter!("fleet_redis_errors_total", "queue" => cfg.queue.clone(), "op" => "heartbeat")
                    .increment(1);
                tracing::warn!(queue = %cfg.queue, error = %e, "heartbeat failed");
            }
        }
        if let Ok(lag) = shared.client.lag_ms(&cfg.queue).await {
            metrics::gauge!("fleet_queue_lag_seconds", "queue" => cfg.queue.clone()).set(lag as f64 / 1000.0);
        }
        if let Err(e) = shared.client.fire_finished_batches(&cfg.queue).await {
            tracing::warn!(queue = %cfg.queue, error = %e, "batch callbacks not enqueued yet");
        }
        // Workflow steps ended by the lease reaper, or left behind by an interrupted pump.
        if let Err(e) = shared.client.pump_workflows(&cfg.queue).await {
            tracing::warn!(queue = %cfg.queue, error = %e, "workflow steps not applied yet");
        }
        // Workflow submissions whose submitter stopped before enqueueing the first steps.
        if let Err(e) = shared.client.resume_submissions().await {
            tracing::warn!(error = %e, "workflow submissions not resumed yet");
        }
        if let Ok(map) =
            redis::cmd("HGETALL").arg(&k.stats).query_async::<HashMap<String, i64>>(&mut shared.conn.clone()).await
        {
            let s = crate::state::QueueStats::from_map(&map);
            for (state, v) in [
                ("ready", s.ready),
                ("scheduled", s.scheduled),
                ("running", s.running),
                ("retrying", s.retrying),
                ("dead", s.dead),
            ] {
                metrics::gauge!("fleet_queue_jobs", "queue" => cfg.queue.clone(), "state" => state).set(v as f64);
            }
            // Queue-wide totals (kept in Redis by the scripts, so every worker reports the same).
            for (name, v) in [
                ("fleet_queue_succeeded_total", s.succeeded),
                ("fleet_queue_failed_attempts_total", s.failed),
                ("fleet_queue_dead_letters_total", s.died),
                ("fleet_queue_dead_letter_evictions_total", s.evicted),
                ("fleet_queue_lease_expiries_total", s.lease_expired),
                ("fleet_queue_stale_completions_total", s.stale),
            ] {
                metrics::counter!(name, "queue" => cfg.queue.clone()).absolute(v.max(0) as u64);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            // Renewals keep their cadence whatever the calls above took (the fence
            // counts from each renewal).
            _ = tokio::time::sleep(interval.saturating_sub(sent.elapsed()).max(Duration::from_millis(10))) => {}
        }
    }
}

/// How long before its lease ends in Redis a job that could not be renewed is stopped:
/// a fifth of the lease.
fn fence_margin(lease: Duration) -> Duration {
    lease / 5
}

/// Self-fencing. When leases cannot be renewed (Redis unreachable), every job whose
/// lease was last set more than `lease - margin` ago is stopped here before its lease
/// ends in Redis, where another worker may take it over: its `lost` token fires (the
/// runtime drops the handler and reports `Op::Lost`, which Redis never applies) and an
/// [`Outcome::Fenced`] event is sent at once. Measured on this process's monotonic
/// clock from the sending of the call that set the lease, so it holds whatever the
/// clocks of Redis and this host say.
async fn fence(shared: Arc<Shared>, stop: CancellationToken) {
    let cfg = &shared.cfg;
    let keep = cfg.lease.saturating_sub(fence_margin(cfg.lease));
    let tick = (cfg.lease / 20).clamp(Duration::from_millis(5), Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(tick) => {}
        }
        let now = Instant::now();
        let mut fenced: Vec<(String, u32)> = Vec::new();
        {
            let mut leased = shared.leased();
            for (id, h) in leased.iter_mut() {
                if h.fenced || h.completing || now.saturating_duration_since(h.renewed_at) < keep {
                    continue;
                }
                h.fenced = true;
                h.lost.cancel();
                fenced.push((id.clone(), h.attempt));
            }
        }
        if fenced.is_empty() {
            continue;
        }
        metrics::counter!("fleet_leases_fenced_total", "queue" => cfg.queue.clone()).increment(fenced.len() as u64);
        let shown: Vec<&str> = fenced.iter().take(10).map(|(id, _)| id.as_str()).collect();
        tracing::warn!(queue = %cfg.queue, jobs = fenced.len(), ids = ?shown, lease_ms = cfg.lease.as_millis() as u64,
            "leases not renewed in time (Redis unreachable?): stopping these jobs before their leases expire; \
             another worker takes them over and this one will not acknowledge them");
        if shared.events.receiver_count() > 0 {
            for (id, attempt) in fenced {
                let _ = shared.events.send(JobEvent {
                    queue: cfg.queue.clone(),
                    id,
                    kind: String::new(),
                    attempt,
                    outcome: Outcome::Fenced,
                });
            }
        }
    }
}

/// Most janitor calls in a row before it waits for the next interval: 200 calls of at
/// most 500 removals each, so a backlog of a million expired records goes in seconds
/// while each call stays short.
const JANITOR_BURST: usize = 200;

/// Time-based expiry, once per heartbeat interval (and at once again while more is due),
/// whether or not jobs complete: see `janitor.lua`.
async fn janitor(shared: Arc<Shared>, stop: CancellationToken) {
    let cfg = &shared.cfg;
    let interval = (cfg.lease / 3).clamp(Duration::from_millis(50), Duration::from_secs(2));
    loop {
        for _ in 0..JANITOR_BURST {
            if stop.is_cancelled() {
                return;
            }
            match calls::janitor(&mut shared.conn.clone(), &shared.keys, cfg, calls::JANITOR_LIMIT).await {
                Ok(swept) => {
                    if swept.evicted > 0 {
                        tracing::debug!(queue = %cfg.queue, evicted = swept.evicted, "dead letters evicted by age or count");
                    }
                    if !swept.more {
                        break;
                    }
                }
                Err(e) => {
                    metrics::counter!("fleet_redis_errors_total", "queue" => cfg.queue.clone(), "op" => "janitor")
                        .increment(1);
                    tracing::debug!(queue = %cfg.queue, error = %e, "janitor call failed");
                    break;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
