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
//! * [`calendar_store`], [`comms_store`], [`sources`]: calendar and comms sources in
//!   PostgreSQL, shared by the API, `fleetctl` and the ticker (which syncs each source on
//!   its own cron schedule).

pub mod api;
pub mod calendar_store;
pub mod cli;
pub mod comms_store;
pub mod config;
pub mod db;
pub mod fleetctl;
pub mod schedule;
pub mod sources;
pub mod tenancy;
pub mod ticker;

pub use fleet_jobs::Client;

use anyhow::Context as _;
use axum::routing::get;
use std::time::Duration;

/// Runs the scheduler until `shutdown`: migrates PostgreSQL (under its advisory lock),
/// runs the ticker, serves the API with `/healthz` and `/metrics`; then stops serving
/// new requests and finishes those in flight.
pub async fn run(
    config: config::SchedulerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    // A set but malformed key stops the start (unset: sources with secrets are refused).
    fleet_comms::secrets::SecretBox::from_env_if_set().map_err(|e| anyhow::anyhow!("FLEET_SECRETS_KEY: {e}"))?;
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let db = loop {
        let statement_timeout = Duration::from_millis(config.api.statement_timeout_ms);
        match db::connect_and_migrate_with(&config.database_url, Some(statement_timeout)).await {
            Ok(db) => break db,
            Err(e) => {
                tracing::warn!(error = %e, "PostgreSQL not ready; retrying in 2 s");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let client = loop {
        match Client::connect(&config.redis_url, config.prefix.clone()).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %e, "Redis not ready; retrying in 2 s");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let ticker = ticker::Ticker::new(client.clone(), Some(db.clone()), config.schedules.clone());
    let ticking = tokio::spawn(ticker::run(ticker, stop.clone()));
    // The default cap and quota of every tenant, where the engine reads them.
    if let Err(e) = config.tenants.apply_defaults(&client).await {
        tracing::warn!(error = %e, "could not write the tenants' default limits; the previous ones stay");
    }
    let state = api::ApiState::new(client.clone(), db.clone())
        .with_intake(config.intake.clone())
        .with_tenancy(config.tenants.clone())
        .with_limits(config.api.clone());
    let sampling = tokio::spawn(state.history.clone().run(client, stop.clone()));
    let router = api::app(state, config.max_body_bytes)
        .route("/healthz", get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }))
        .route("/metrics", get(move || std::future::ready(metrics.render())));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (set `listen` or FLEET_API_LISTEN)", config.listen))?;
    tracing::info!(listen = %config.listen, schedules = config.schedules.len(), "scheduler started");
    let serve_stop = stop.clone();
    let server = axum::serve(listener, router).with_graceful_shutdown(async move { serve_stop.cancelled().await });
    let serving = tokio::spawn(async move { server.await });
    shutdown.await;
    tracing::info!("shutting down");
    stop.cancel();
    let _ = ticking.await;
    let _ = sampling.await;
    serving.await.context("api server task")?.context("api server")?;
    db.close().await;
    Ok(())
}
