//! # fleet-scheduler
//!
//! Fleet's control plane: cron schedules that enqueue each tick exactly once however
//! many replicas run, the HTTP enqueue API, and batches.
//!
//! ## Layout
//!
//! * [`schedule`]: cron with seconds and time zones, DST-correct fire times.
//! * [`ticker`]: enqueues due ticks; a tick's unique key makes any number of replicas
//!   enqueue it once.
//! * [`db`]: PostgreSQL pool and migrations (under an advisory lock).
//! * [`api`]: the HTTP API (jobs, batches, OpenAPI).
//!
//! What the API and `fleetctl` read and write lives with its domain: each route is a thin
//! call into that domain's store (`fleet_calendar::store`, `fleet_comms::store`,
//! `fleet_images::store`, `fleet_webhooks::store`); what sources share is in
//! `fleet_accounts`. The scheduler links no job handler, IMAP client or image decoder.
//! * [`archive`]: the archive of finished jobs in PostgreSQL and its search; [`archiver`]
//!   copies finished jobs into it from Redis in batches; [`retention`] prunes it and every
//!   other growing table in bounded batches.
//! * [`reseal`]: stored secrets re-sealed with the current key (`reseal-secrets`), and
//!   plaintext endpoint secrets sealed at start-up.

pub mod api;
pub mod archive;
pub mod archiver;
pub mod audit;
pub mod cli;
pub mod config;
pub mod db;
pub mod fleetctl;
pub mod reseal;
pub mod retention;
pub mod schedule;
pub mod tenancy;
pub mod ticker;

pub use fleet_jobs::Client;

use anyhow::Context as _;
use axum::routing::get;
use fleet_jobs::health::{self, Check, Restart, Tasks, supervise};
use std::time::Duration;

/// Runs the scheduler until `shutdown`: migrates PostgreSQL (under its advisory lock),
/// runs the ticker, serves the API with `/healthz`, `/readyz` and `/metrics`; then stops
/// serving new requests and finishes those in flight. The ticker, the sampler and the
/// server are supervised ([`fleet_jobs::health::supervise`]): a panicking ticker or
/// sampler is logged, counted and restarted with backoff; an API server that ends makes
/// `run` return an error.
pub async fn run(
    config: config::SchedulerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    // A set but malformed key stops the start (unset: sources and endpoints are refused).
    let secrets =
        fleet_accounts::secrets::SecretBox::from_env_if_set().map_err(|e| anyhow::anyhow!("FLEET_SECRETS_KEY: {e}"))?;
    if let Some(b) = &secrets {
        // Key ids are hash prefixes, not secrets: they say which keys a process holds during a rotation.
        tracing::info!(current = b.key_id(), old = ?b.old_key_ids().collect::<Vec<_>>(), "secrets keys loaded");
    }
    let metrics = match metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
        Ok(handle) => handle,
        // Another recorder is installed (an embedding process, a test): /metrics renders an empty registry.
        Err(e) => {
            tracing::warn!(error = %e, "a metrics recorder is already installed; /metrics of this scheduler stays empty");
            metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder().handle()
        }
    };
    let db = loop {
        let statement_timeout = Duration::from_millis(config.api.statement_timeout_ms);
        match db::connect_and_migrate_tls(&config.database_url, &config.database_tls, Some(statement_timeout)).await {
            Ok(db) => break db,
            // A refused certificate or a server without TLS will not change in 2 s: say so and stop.
            Err(e) if e.downcast_ref::<sqlx::Error>().is_some_and(fleet_kit::postgres::is_tls_failure) => {
                return Err(e);
            }
            Err(e) => {
                tracing::warn!(error = %e, "PostgreSQL not ready; retrying in 2 s");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    seal_plaintext_endpoint_secrets(&db, secrets.as_ref()).await;
    let client = loop {
        match Client::connect_with(&config.redis_url, &config.redis_tls, config.prefix.clone()).await {
            Ok(c) => break config.tenants.partitioned(c)?,
            Err(e @ (fleet_jobs::Error::TlsHandshake { .. } | fleet_jobs::Error::TlsFile { .. })) => {
                return Err(e.into());
            }
            Err(e) => {
                tracing::warn!(error = %e, "Redis not ready; retrying in 2 s");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let tasks = Tasks::new();
    let ticking = {
        let (client, db, schedules) = (client.clone(), db.clone(), config.schedules.clone());
        spawn_ticker(&tasks, stop.clone(), move || {
            ticker::Ticker::new(client.clone(), Some(db.clone()), schedules.clone())
        })
    };
    // The default cap and quota of every tenant, where the engine reads them.
    if let Err(e) = config.tenants.apply_defaults(&client).await {
        tracing::warn!(error = %e, "could not write the tenants' default limits; the previous ones stay");
    }
    let state = api::ApiState::new(client.clone(), db.clone())
        .with_intake(config.intake.clone())
        .with_tenancy(config.tenants.clone())
        .with_limits(config.api.clone())
        .with_config_schedules(config.schedules.clone())
        .with_upload_store(&config.images.storage)
        .context("[images.storage] (or FLEET_S3_*)")?;
    let sampling = {
        let (history, client, s) = (state.history.clone(), client.clone(), stop.clone());
        supervise(&tasks, "sampler", Restart::DEFAULT, stop.clone(), move || {
            history.clone().run(client.clone(), s.clone())
        })
    };
    let archiving = {
        let archiver = archiver::Archiver::new(client.clone(), db.clone(), config.archive.clone());
        supervise(&tasks, "archiver", Restart::DEFAULT, stop.clone(), {
            let s = stop.clone();
            move || archiver.clone().run(s.clone())
        })
    };
    let pruning = {
        let (db, archive, tables) = (db.clone(), config.archive.clone(), config.retention.clone());
        supervise(&tasks, "retention", Restart::DEFAULT, stop.clone(), {
            let s = stop.clone();
            move || retention::run(db.clone(), archive.clone(), tables.clone(), s.clone())
        })
    };
    let router = api::app(state, config.max_body_bytes)
        .merge(health_routes(Readiness { client, db: db.clone(), tasks: tasks.clone() }))
        .route("/metrics", get(move || std::future::ready(metrics.render())));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (set `listen` or FLEET_API_LISTEN)", config.listen))?;
    tracing::info!(listen = %config.listen, schedules = config.schedules.len(), "scheduler started");
    let serve_stop = stop.clone();
    let served = std::sync::Arc::new(std::sync::Mutex::new(None));
    let mut server =
        Some(axum::serve(listener, router).with_graceful_shutdown(async move { serve_stop.cancelled().await }));
    let result = served.clone();
    // The listener cannot be taken over by a new server: if the API ends before shutdown,
    // the process ends with an error and its supervisor (Kubernetes, compose) restarts it.
    let mut serving = supervise(&tasks, "api", Restart::Never, stop.clone(), move || {
        let server = server.take();
        let result = result.clone();
        async move {
            if let Some(server) = server {
                let outcome = server.await;
                *result.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
            }
        }
    });
    let ended_early = tokio::select! {
        _ = shutdown => false,
        _ = &mut serving => true,
    };
    tracing::info!("shutting down");
    stop.cancel();
    let _ = ticking.await;
    let _ = sampling.await;
    let _ = archiving.await;
    let _ = pruning.await;
    if !ended_early {
        let _ = serving.await;
    }
    db.close().await;
    let outcome = served.lock().unwrap_or_else(|p| p.into_inner()).take();
    match outcome {
        Some(Err(e)) => Err(anyhow::Error::new(e).context("api server")),
        _ if ended_early => Err(anyhow::anyhow!("the API server ended unexpectedly (see the log)")),
        _ => Ok(()),
    }
}

/// Runs the ticker `make()` returns as the supervised task `ticker` until `stop`: each pass
/// is reported to `tasks` (`/readyz` fails after [`TICKER_MAX_QUIET`] without one), and a
/// ticker that panics or ends is logged, counted (`fleet_task_failures_total{task="ticker"}`),
/// fails `/readyz` while it waits, and is replaced by a new one from `make()` after a
/// backoff ([`TICKER_RESTART`]). Starting over loses and doubles nothing: the ticks' unique
/// keys and `schedule_state` keep each tick enqueued once. The ticker's pass also enqueues
/// the due syncs of calendar and comms sources, so they are supervised with it.
pub fn spawn_ticker(
    tasks: &Tasks,
    stop: tokio_util::sync::CancellationToken,
    make: impl FnMut() -> ticker::Ticker + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    spawn_ticker_with(tasks, stop, TICKER_RESTART, make)
}

/// [`spawn_ticker`] restarted as `restart` says (tests hold a failed ticker down to see
/// `/readyz` report it).
pub fn spawn_ticker_with(
    tasks: &Tasks,
    stop: tokio_util::sync::CancellationToken,
    restart: Restart,
    mut make: impl FnMut() -> ticker::Ticker + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tasks.expect_beats("ticker", TICKER_MAX_QUIET);
    let t = tasks.clone();
    supervise(tasks, "ticker", restart, stop.clone(), move || {
        ticker::run(make().with_progress(t.clone(), "ticker"), stop.clone())
    })
}

/// How a ticker that panicked or ended is started again: after 200 ms, doubling up to 30 s
/// while it keeps failing.
pub const TICKER_RESTART: Restart = Restart::DEFAULT;

/// How long the ticker may go without a pass before `/readyz` fails.
pub const TICKER_MAX_QUIET: Duration = Duration::from_secs(60);

/// What the scheduler's `/readyz` checks: Redis (`PING`) and PostgreSQL (`SELECT 1`), the
/// API's stores, and the supervised tasks (the ticker, alive and passing, the sampler and
/// the API server).
#[derive(Clone)]
pub struct Readiness {
    /// The job client (Redis).
    pub client: Client,
    /// PostgreSQL.
    pub db: sqlx::PgPool,
    /// The supervised tasks.
    pub tasks: Tasks,
}

impl Readiness {
    /// Every check; Redis and PostgreSQL at once, each under [`health::CHECK_TIMEOUT`].
    pub async fn checks(&self) -> Vec<Check> {
        let mut conn = self.client.connection();
        let (redis, pg) =
            tokio::join!(health::redis(&mut conn, health::CHECK_TIMEOUT), db::check(&self.db, health::CHECK_TIMEOUT));
        let mut checks = vec![redis, pg];
        checks.extend(self.tasks.checks());
        checks
    }
}

/// `/healthz` (liveness: the process runs and its runtime answers; nothing else is
/// checked, so an outage never gets the scheduler restarted) and `/readyz` (200
/// `{"status":"ready",...}` or 503 `{"status":"not_ready",...}` with each check's state).
pub fn health_routes(ready: Readiness) -> axum::Router {
    async fn readyz(axum::extract::State(r): axum::extract::State<Readiness>) -> axum::response::Response {
        use axum::response::IntoResponse as _;
        let (ok, body) = health::readiness(&r.checks().await);
        let status = if ok { axum::http::StatusCode::OK } else { axum::http::StatusCode::SERVICE_UNAVAILABLE };
        (status, axum::Json(body)).into_response()
    }
    axum::Router::new()
        .route("/healthz", get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .with_state(ready)
}

/// Seals the webhook endpoint secrets stored in plaintext by versions before sealing
/// (workers deliver with both meanwhile). A failure is logged, not fatal: the next start
/// or `fleet-scheduler reseal-secrets` does it.
async fn seal_plaintext_endpoint_secrets(db: &sqlx::PgPool, secrets: Option<&fleet_accounts::secrets::SecretBox>) {
    let Some(secrets) = secrets else {
        let plain = fleet_webhooks::store::count_plaintext_endpoints(db).await;
        if let Ok(n @ 1..) = plain {
            tracing::warn!(
                endpoints = n,
                "webhook endpoint secrets stored in plaintext: set FLEET_SECRETS_KEY to seal them"
            );
        }
        return;
    };
    match reseal::seal_plaintext_endpoint_secrets(db, secrets).await {
        Ok(c) if c.sealed_plaintext > 0 || !c.failed.is_empty() => {
            tracing::info!(
                sealed = c.sealed_plaintext,
                failed = c.failed.len(),
                "sealed plaintext webhook endpoint secrets"
            )
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "sealing plaintext webhook endpoint secrets failed; will retry at the next start")
        }
    }
}
