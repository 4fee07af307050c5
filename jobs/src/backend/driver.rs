//! The per-queue engine: fetcher, acker and heartbeat tasks around one Redis connection.

use super::{Completion, EngineConfig, JobEvent, Op, Outcome, RawJob, RedisBackend};
use crate::keys::QueueKeys;
use crate::scripts;
use apalis_core::task::{builder::TaskBuilder, task_id::TaskId};
use redis::aio::ConnectionManager;
use redis::{RedisResult, Value};
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

struct Shared {
    cfg: EngineConfig,
    keys: QueueKeys,
    conn: ConnectionManager,
    /// Jobs this process holds a lease on (buffered or running): id -> token.
    leased: Mutex<HashMap<String, String>>,
    /// Free concurrency slots.
    slots: Arc<Semaphore>,
    events: broadcast::Sender<JobEvent>,
    stop_fetch: CancellationToken,
}

impl Shared {
    fn leased(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.leased.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Starts the engine of one queue.
pub struct QueueEngine;

impl QueueEngine {
    /// Starts the fetcher, acker and heartbeat of `cfg.queue`. `client` opens the
    /// extra connection that idle waits block on; `conn` carries every script call.
    pub fn start(client: redis::Client, conn: ConnectionManager, cfg: EngineConfig) -> (RedisBackend, EngineHandle) {
        let keys = QueueKeys::new(&cfg.prefix, &cfg.queue);
        let concurrency = cfg.concurrency.max(1);
        let (events, _) = broadcast::channel(4096);
        let stop_fetch = CancellationToken::new();
        let shared = Arc::new(Shared {
            keys,
            conn,
            leased: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(concurrency)),
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
        let backend = RedisBackend {
            rx: Arc::new(Mutex::new(task_rx)),
            config: shared.cfg.clone(),
            stop: stop_fetch,
        };
        let handle = EngineHandle {
            completer: Completer { tx: done_tx, slots: shared.slots.clone() },
            shared,
            fetcher,
            acker,
            heartbeat,
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

        let leftover: Vec<(String, String)> = shared.leased().drain().collect();
        if !leftover.is_empty() {
            let batch: Vec<Completion> = leftover
                .into_iter()
                .map(|(id, token)| Completion { id, token, kind: String::new(), attempt: 0, op: Op::Release })
                .collect();
            let deadline = Instant::now() + RELEASE_DEADLINE;
            let mut delay = Duration::from_millis(50);
            loop {
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
        let _: RedisResult<()> = redis::cmd("ZREM")
            .arg(&shared.keys.workers)
            .arg(&shared.cfg.instance)
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

struct Fetched {
    now: i64,
    next_due: i64,
    paused: bool,
    jobs: Vec<(String, String, u32, String)>,
}

async fn fetch(shared: &Shared, want: usize) -> RedisResult<Fetched> {
    let k = &shared.keys;
    let v: Vec<Value> = scripts::FETCH
        .key(&k.jobs)
        .key(&k.state)
        .key(&k.att)
        .key(&k.ready[0])
        .key(&k.ready[1])
        .key(&k.ready[2])
        .key(&k.sched)
        .key(&k.leases)
        .key(&k.stats)
        .key(&k.wake)
        .key(&k.conf)
        .arg(want)
        .arg(shared.cfg.lease.as_millis() as u64)
        .arg(shared.cfg.promote_limit)
        .invoke_async(&mut shared.conn.clone())
        .await?;
    let int = |v: &Value| -> i64 {
        match v {
            Value::Int(i) => *i,
            Value::BulkString(b) => std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()).unwrap_or(0),
            _ => 0,
        }
    };
    let string = |v: Value| -> String {
        match v {
            Value::BulkString(b) => String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            Value::SimpleString(s) => s,
            Value::Int(i) => i.to_string(),
            _ => String::new(),
        }
    };
    let mut it = v.into_iter();
    let now = it.next().map(|v| int(&v)).unwrap_or(0);
    let next_due = it.next().map(|v| int(&v)).unwrap_or(-1);
    let paused = it.next().map(|v| int(&v)).unwrap_or(0) == 1;
    let mut jobs = Vec::new();
    while let (Some(id), Some(env), Some(att), Some(tok)) = (it.next(), it.next(), it.next(), it.next()) {
        jobs.push((string(id), string(env), int(&att).max(1) as u32, string(tok)));
    }
    Ok(Fetched { now, next_due, paused, jobs })
}

async fn fetcher(shared: Arc<Shared>, client: redis::Client, tx: mpsc::Sender<apalis_core::task::Task<RawJob>>) {
    let cfg = &shared.cfg;
    let stop = shared.stop_fetch.clone();
    let mut waiter: Option<ConnectionManager> = None;
    let mut backoff = ErrorBackoff::new();
    let batch = cfg.fetch_batch.max(1);
    loop {
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
        let fetched = match fetch(&shared, want).await {
            Ok(f) => f,
            Err(e) => {
                shared.slots.add_permits(want);
                metrics::counter!("fleet_redis_errors_total", "queue" => cfg.queue.clone(), "op" => "fetch").increment(1);
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
        if got > 0 {
            let received = Instant::now();
            {
                let mut leased = shared.leased();
                for (id, _, _, tok) in &fetched.jobs {
                    leased.insert(id.clone(), tok.clone());
                }
            }
            for (id, envelope, attempt, token) in fetched.jobs {
                let task = TaskBuilder::new(RawJob {
                    id: id.clone(),
                    queue: cfg.queue.clone(),
                    attempt,
                    token,
                    envelope,
                    fetched_at: received,
                })
                .task_id(TaskId::from_string(id))
                .attempt(attempt as usize)
                .build();
                // If the worker is gone the job stays leased and is handed back at shutdown.
                let _ = tx.send(task).await;
            }
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
            match waiting_connection(&client, cfg.idle_wait).await {
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

async fn waiting_connection(client: &redis::Client, idle_wait: Duration) -> RedisResult<ConnectionManager> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(idle_wait + Duration::from_secs(2)))
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(1);
    ConnectionManager::new_with_config(client.clone(), config).await
}

/// Applies completions in one script call; returns one flag per completion
/// (true = applied, false = refused as stale).
async fn apply(shared: &Shared, batch: &[Completion]) -> RedisResult<Vec<bool>> {
    let k = &shared.keys;
    let cfg = &shared.cfg;
    let mut inv = scripts::ACK.prepare_invoke();
    inv.key(&k.jobs)
        .key(&k.state)
        .key(&k.att)
        .key(&k.ready[0])
        .key(&k.ready[1])
        .key(&k.ready[2])
        .key(&k.sched)
        .key(&k.leases)
        .key(&k.stats)
        .key(&k.dead)
        .key(&k.done)
        .key(&k.hist)
        .key(&k.wake)
        .arg(cfg.retention.as_millis() as u64)
        .arg(cfg.dead_max_count)
        .arg(cfg.dead_max_age.as_millis() as u64)
        .arg(cfg.history_cap.max(1));
    for c in batch {
        let (delay, entry) = match &c.op {
            Op::Retry { delay, record } => (delay.as_millis() as u64, serde_json::to_string(record).unwrap_or_default()),
            Op::Dead { record } => (0, serde_json::to_string(record).unwrap_or_default()),
            Op::Snooze { delay } => (delay.as_millis() as u64, String::new()),
            _ => (0, String::new()),
        };
        inv.arg(&c.id).arg(&c.token).arg(c.op.wire()).arg(delay).arg(entry);
    }
    let flags: Vec<i64> = inv.invoke_async(&mut shared.conn.clone()).await?;
    Ok(flags.into_iter().map(|f| f == 1).collect())
}

async fn acker(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Completion>, close: CancellationToken) {
    let queue = shared.cfg.queue.clone();
    let mut batch: Vec<Completion> = Vec::with_capacity(ACK_BATCH);
    let mut backoff = ErrorBackoff::new();
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
            Ok(flags) => {
                backoff.reset();
                let stale = flags.iter().filter(|f| !**f).count();
                if stale > 0 {
                    metrics::counter!("fleet_stale_completions_total", "queue" => queue.clone()).increment(stale as u64);
                    tracing::warn!(queue = %queue, refused = stale, "completions refused: their lease had been taken back");
                }
                {
                    let mut leased = shared.leased();
                    for c in &batch {
                        leased.remove(&c.id);
                    }
                }
                if shared.events.receiver_count() > 0 {
                    for (c, applied) in batch.drain(..).zip(flags) {
                        let outcome = if !applied {
                            Outcome::Stale
                        } else {
                            match c.op {
                                Op::Succeeded => Outcome::Succeeded,
                                Op::Retry { .. } => Outcome::Retrying,
                                Op::Dead { .. } => Outcome::Dead,
                                Op::Snooze { .. } => Outcome::Snoozed,
                                Op::Release => Outcome::Released,
                                Op::Expire => Outcome::Expired,
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
                metrics::counter!("fleet_redis_errors_total", "queue" => queue.clone(), "op" => "ack").increment(1);
                let d = backoff.next();
                tracing::warn!(queue = %queue, error = %e, pending = batch.len(), retry_in_ms = d.as_millis() as u64, "ack failed");
                tokio::time::sleep(d).await;
                if closing && d >= Duration::from_secs(5) {
                    tracing::error!(queue = %queue, pending = batch.len(),
                        "giving up acknowledging at shutdown; these jobs return to ready when their leases expire");
                    break;
                }
            }
        }
    }
}

async fn heartbeat(shared: Arc<Shared>, stop: CancellationToken) {
    let cfg = &shared.cfg;
    let k = &shared.keys;
    let interval = (cfg.lease / 3).max(Duration::from_millis(50));
    loop {
        let held: Vec<(String, String)> = shared.leased().iter().map(|(a, b)| (a.clone(), b.clone())).collect();
        let mut inv = scripts::HEARTBEAT.prepare_invoke();
        inv.key(&k.jobs)
            .key(&k.state)
            .key(&k.att)
            .key(&k.ready[0])
            .key(&k.ready[1])
            .key(&k.ready[2])
            .key(&k.leases)
            .key(&k.stats)
            .key(&k.dead)
            .key(&k.hist)
            .key(&k.workers)
            .key(&k.wake)
            .arg(cfg.lease.as_millis() as u64)
            .arg(&cfg.instance)
            .arg(100)
            .arg(cfg.dead_max_count)
            .arg(cfg.dead_max_age.as_millis() as u64)
            .arg(cfg.history_cap.max(1));
        for (id, tok) in &held {
            inv.arg(id).arg(tok);
        }
        match inv.invoke_async::<Vec<Value>>(&mut shared.conn.clone()).await {
            Ok(out) => {
                let mut it = out.into_iter();
                if let Some(Value::Int(reaped)) = it.next()
                    && reaped > 0
                {
                    metrics::counter!("fleet_lease_expiries_total", "queue" => cfg.queue.clone()).increment(reaped as u64);
                    tracing::warn!(queue = %cfg.queue, jobs = reaped, "took back jobs whose leases expired");
                }
                let lost: Vec<String> = it
                    .filter_map(|v| match v {
                        Value::BulkString(b) => String::from_utf8(b).ok(),
                        _ => None,
                    })
                    .collect();
                if !lost.is_empty() {
                    metrics::counter!("fleet_leases_lost_total", "queue" => cfg.queue.clone()).increment(lost.len() as u64);
                    tracing::warn!(queue = %cfg.queue, jobs = lost.len(), "leases lost: another attempt owns these jobs now");
                }
            }
            Err(e) => {
                metrics::counter!("fleet_redis_errors_total", "queue" => cfg.queue.clone(), "op" => "heartbeat").increment(1);
                tracing::warn!(queue = %cfg.queue, error = %e, "heartbeat failed");
            }
        }
        if let Ok(map) = redis::cmd("HGETALL")
            .arg(&k.stats)
            .query_async::<HashMap<String, i64>>(&mut shared.conn.clone())
            .await
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
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
