//! # fleet-worker
//!
//! Fleet's data plane: the runtime that runs every job kind. One apalis-core `Monitor`
//! runs one apalis worker per queue; each worker pulls leased jobs from Fleet's Redis
//! engine (`fleet_jobs::backend`) and calls the dispatcher, which runs the kind's handler
//! and reports the outcome back to the engine. The kinds themselves live with their
//! domains (`fleet_webhooks`, `fleet_images`, `fleet_calendar`, `fleet_comms`), written
//! against `fleet_kit` ([`Handler`], [`JobError`], [`JobContext`]).
//!
//! ## Layout
//!
//! * [`kinds`]: every kind Fleet ships, in one public list ([`kinds::shipped`]) built
//!   from the config; the binary, the tests and the benchmark start from it.
//! * [`registry`]: kinds by stable name, with backoff and timeout policies.
//! * `dispatch`: the tower service around every attempt, as a pipeline of steps (decode,
//!   expire, admit limits, run under a timeout, settle limits, decide, report).
//! * `events`: one typed event per outcome of an attempt, writing its log line and metrics.
//! * [`config`]: typed configuration from a file and `FLEET_*` variables.
//! * `http`: `/healthz` (liveness), `/readyz` (readiness) and `/metrics`.
//! * [`telemetry`]: logs, and job spans exported over OTLP as children of the enqueuer's trace.
//!
//! `main.rs` only calls [`cli::main`], which parses arguments, starts telemetry and calls [`run`].

pub mod cli;
pub mod config;
pub mod db;
mod dispatch;
mod events;
mod http;
pub mod kinds;
pub mod registry;
pub mod telemetry;

pub use config::{QueueConfig, WorkerConfig};
pub use fleet_kit::{Handler, JobContext, JobError};
pub use registry::{KindPolicy, Registry};

use anyhow::Context as _;
use apalis_core::monitor::Monitor;
use apalis_core::worker::builder::WorkerBuilder;
use dispatch::{Dispatch, DispatchConfig};
use fleet_jobs::backend::{EngineConfig, JobEvent, QueueEngine};
use fleet_jobs::health::{Restart, TaskState, Tasks};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A unique id for this process start: host, pid and a random part.
pub fn instance_id() -> String {
    let host = hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "unknown".into());
    format!("{host}:{}:{:06x}", std::process::id(), rand::random::<u32>() & 0xff_ffff)
}

/// Runs a worker until `shutdown` completes, then shuts down gracefully: stops
/// leasing, lets running jobs finish within the grace period, and hands every
/// unstarted or unfinished job back to the front of its ready list.
pub async fn run(config: WorkerConfig, registry: Registry, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    // Waiting for Redis at start-up can be interrupted too.
    let worker = tokio::select! {
        w = start(config, registry) => w?,
        _ = &mut shutdown => return Ok(()),
    };
    shutdown.await;
    worker.shutdown().await;
    Ok(())
}

/// A started worker.
pub struct RunningWorker {
    instance: Arc<str>,
    engines: http::Engines,
    events: broadcast::Sender<JobEvent>,
    signal: CancellationToken,
    /// Stops the engine-loop watcher before shutdown ends the loops on purpose.
    watching: CancellationToken,
    tasks: Tasks,
    monitor: JoinHandle<()>,
    http: Option<(SocketAddr, JoinHandle<()>)>,
}

impl std::fmt::Debug for RunningWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningWorker").field("instance", &self.instance).finish()
    }
}

/// Connects to Redis (one server or a cluster; over TLS for `rediss://` URLs, with `tls`),
/// retrying with backoff and saying what it waits for. A TLS file that cannot be read or a
/// failed TLS handshake ends the start: retrying would not fix either.
async fn connect_redis(
    url: &str,
    tls: &fleet_jobs::RedisTls,
) -> anyhow::Result<(fleet_jobs::RedisClient, fleet_jobs::RedisConn)> {
    let client = fleet_jobs::RedisClient::open_with(url, tls).map_err(|e| match e {
        fleet_jobs::Error::Redis(e) => anyhow::anyhow!("invalid Redis URL {:?}: {e}", redacted(url)),
        e => anyhow::anyhow!("the Redis URL setting: {e}"),
    })?;
    let mut delay = Duration::from_millis(200);
    loop {
        match client.connect().await {
            Ok(conn) => return Ok((client, conn)),
            Err(e @ fleet_jobs::Error::TlsHandshake { .. }) => anyhow::bail!("{e}"),
            Err(e) => {
                tracing::warn!(redis = %redacted(url), error = %e, retry_in_ms = delay.as_millis() as u64,
                    "Redis is not reachable yet; the worker keeps trying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A Redis URL setting (one URL, or a cluster's comma-separated nodes) without its
/// passwords, for logs.
fn redacted(url: &str) -> String {
    url.split(',').map(fleet_net::redact_url).collect::<Vec<_>>().join(",")
}

/// Starts a worker: one engine and one apalis worker per queue, plus the HTTP endpoint.
pub async fn start(config: WorkerConfig, registry: Registry) -> anyhow::Result<RunningWorker> {
    config.validate()?;
    let metrics = http::prometheus();
    let instance: Arc<str> = instance_id().into();
    let (client, conn) = connect_redis(&config.redis_url, &config.redis_tls).await?;
    let registry = Arc::new(registry);
    let (events, _) = broadcast::channel(65_536);
    let dispatch_cfg = DispatchConfig {
        instance: instance.clone(),
        default_timeout: Duration::from_secs(config.job_timeout_secs),
        cpu: fleet_kit::CpuPool::new(config.cpu_threads),
        guard: fleet_kit::limits::Guard::new(
            fleet_jobs::limits::Limiter::new(conn.clone(), config.prefix.clone(), config.lease()),
            Arc::new(fleet_kit::limits::LimitTable::new(&config.limits)),
            config.lease(),
        ),
        recorder: fleet_jobs::progress::Recorder::new(conn.clone(), config.prefix.clone()),
    };

    let mut monitor = Monitor::new().shutdown_timeout(Duration::from_secs(config.shutdown_grace_secs));
    let mut engines = Vec::new();
    // A partitioned queue is one engine per partition, each its own fetch loop and
    // wake-up wait, so a job on any partition wakes a worker.
    // Its partitions take their slots from one pool of the queue's concurrency.
    let physical = config.queues.iter().flat_map(|q| {
        let pool = Arc::new(tokio::sync::Semaphore::new(q.concurrency.max(1)));
        q.physical().into_iter().map(move |p| (p, pool.clone()))
    });
    for (p, pool) in physical {
        let queue = p.queue;
        let mut ec = EngineConfig::new(&config.prefix, &queue, instance.to_string());
        ec.concurrency = p.concurrency;
        ec.fetch_batch = p.fetch_batch;
        ec.shared_slots = p.shared.then_some(pool);
        ec.lease = config.lease();
        ec.retention = Duration::from_secs(config.retention_secs);
        ec.dead_max_count = config.dead_max_count;
        ec.dead_max_age = Duration::from_secs(config.dead_max_age_secs);
        ec.history_cap = config.history_cap;
        ec.crash_limit = config.crash_limit;
        let (backend, handle) = QueueEngine::start(client.clone(), conn.clone(), ec, events.clone());
        let service = Dispatch::new(registry.clone(), handle.completer(), dispatch_cfg.clone());
        let name = format!("{queue}@{instance}");
        monitor = monitor.register(move |_restarts| {
            WorkerBuilder::new(name.as_str()).backend(backend.clone()).build(service.clone())
        });
        engines.push(handle);
    }

    let signal = CancellationToken::new();
    let tasks = Tasks::new();
    // The job runtime cannot be rebuilt in place: if it ends before shutdown, readiness fails.
    let monitor_signal = signal.clone();
    let mut monitor = Some(monitor);
    let monitor = fleet_jobs::health::supervise(&tasks, "runtime", Restart::Never, signal.clone(), move || {
        let monitor = monitor.take();
        let monitor_signal = monitor_signal.clone();
        async move {
            let Some(monitor) = monitor else { return };
            let stop = async move {
                monitor_signal.cancelled().await;
                Ok(())
            };
            if let Err(e) = monitor.run_with_signal(stop).await {
                tracing::error!(error = %e, "worker monitor ended with an error");
            }
        }
    });
    let engines: http::Engines = Arc::new(std::sync::Mutex::new(engines));
    let watching = CancellationToken::new();
    watch_engine_loops(&tasks, engines.clone(), watching.clone());

    let http = match config.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} for /healthz, /readyz and /metrics (set `listen` or FLEET_LISTEN)")
            })?;
            let local = listener.local_addr()?;
            let state = http::HttpState {
                instance: instance.clone(),
                queues: Arc::new(config.queues.iter().map(|q| q.name.clone()).collect()),
                metrics,
                ready: http::Readiness {
                    redis: conn.clone(),
                    db: registry.database().cloned(),
                    tasks: tasks.clone(),
                    engines: engines.clone(),
                },
            };
            let stop = signal.clone();
            let mut listener = Some(listener);
            // An endpoint that ended leaves probes unanswered: the orchestrator restarts the process.
            let task = fleet_jobs::health::supervise(&tasks, "http", Restart::Never, signal.clone(), move || {
                let listener = listener.take();
                let (state, stop) = (state.clone(), stop.clone());
                async move {
                    let Some(listener) = listener else { return };
                    let serve = axum::serve(listener, http::app(state))
                        .with_graceful_shutdown(async move { stop.cancelled().await });
                    if let Err(e) = serve.await {
                        tracing::error!(error = %e, "http endpoint failed");
                    }
                }
            });
            tracing::info!(%local, "serving /healthz, /readyz and /metrics");
            Some((local, task))
        }
        None => None,
    };
    tracing::info!(instance = %instance, queues = ?config.queues.iter().map(|q| &q.name).collect::<Vec<_>>(),
        kinds = ?registry.kinds().collect::<Vec<_>>(), "worker started");
    // A kind whose default queue this worker does not serve only runs if another worker
    // serves it: say so, since its jobs would otherwise wait without a word.
    for kind in registry.kinds() {
        if let Some(info) = fleet_jobs::catalogue::lookup(kind) {
            let queue = (info.options)().queue;
            if !config.queues.iter().any(|q| q.name == queue) {
                tracing::warn!(kind, queue = %queue, "this worker handles the kind but does not serve its queue; add the queue unless another worker serves it");
            }
        }
    }
    Ok(RunningWorker { instance, engines, events, signal, watching, tasks, monitor, http })
}

/// How often the engines' loops are looked at.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// Watches the engines' fetch, ack and heartbeat loops until `stop`: a loop that ends
/// before shutdown (a panic, an unexpected return) is logged with its name
/// (`fetch:<queue>`, ...), counted in `fleet_task_failures_total` and marked failed, so
/// `/readyz` fails (the engine cannot restart one loop alone; the process is restarted).
fn watch_engine_loops(tasks: &Tasks, engines: http::Engines, stop: CancellationToken) {
    let tasks = tasks.clone();
    for e in engines.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        for l in ["fetch", "ack", "heartbeat"] {
            fleet_jobs::health::counted(&format!("{l}:{}", e.queue()));
        }
    }
    tokio::spawn(async move {
        let mut reported = std::collections::HashSet::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(WATCH_EVERY) => {}
            }
            if stop.is_cancelled() {
                return;
            }
            let ended: Vec<String> = {
                let engines = engines.lock().unwrap_or_else(|p| p.into_inner());
                engines
                    .iter()
                    .flat_map(|e| e.ended_loops().into_iter().map(move |l| format!("{l}:{}", e.queue())))
                    .collect()
            };
            for name in ended {
                if reported.insert(name.clone()) {
                    let reason = "ended while the worker was running (panicked or returned)";
                    fleet_jobs::health::task_failed(&name, reason, None);
                    tasks.failed(&name, TaskState::Failed, reason);
                }
            }
        }
    });
}

impl RunningWorker {
    /// This process's instance id.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Every completion applied in Redis, as it happens.
    pub fn events(&self) -> broadcast::Receiver<JobEvent> {
        self.events.subscribe()
    }

    /// The bound address of `/healthz` and `/metrics`, if enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|(a, _)| *a)
    }

    /// The supervised tasks and their states (what `/readyz` reports of them).
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// Graceful shutdown (see [`run`]).
    pub async fn shutdown(self) {
        tracing::info!(instance = %self.instance, "shutting down: no new jobs; waiting for running jobs");
        self.watching.cancel();
        let engines = std::mem::take(&mut *self.engines.lock().unwrap_or_else(|p| p.into_inner()));
        for e in &engines {
            e.stop_fetching();
        }
        self.signal.cancel();
        let _ = self.monitor.await;
        for e in engines {
            e.shutdown().await;
        }
        if let Some((_, task)) = self.http {
            let _ = task.await;
        }
        tracing::info!(instance = %self.instance, "worker stopped");
    }
}
