//! The `fleet-worker` command: arguments, telemetry, then [`run`](crate::run) until
//! SIGTERM or SIGINT. Shared by the real binary and the end-to-end test binary, so
//! tests run exactly what ships.

use crate::{Registry, WorkerConfig};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Fleet worker: processes jobs from Redis.
#[derive(Parser)]
#[command(name = "fleet-worker", version)]
struct Args {
    /// TOML config file (FLEET_* environment variables override it).
    #[arg(long, short, env = "FLEET_CONFIG")]
    config: Option<PathBuf>,
}

/// Runs the worker command with the built-in job kinds.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let config = match WorkerConfig::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleet-worker: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleet-worker: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let telemetry = crate::telemetry::init(config.log_format, runtime.handle());
    let registry = match runtime.block_on(registry(&config)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleet-worker: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(crate::run(config, registry, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("fleet-worker: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Flush buffered spans while the runtime that sends them still runs.
    telemetry.shutdown();
    code
}

/// The kinds that need PostgreSQL when it is configured, and `probe` when test kinds are on.
async fn registry(config: &WorkerConfig) -> anyhow::Result<Registry> {
    let mut registry = if config.test_kinds { Registry::builtin() } else { Registry::new() };
    if let Some(url) = &config.database_url {
        let db = crate::db::connect_and_migrate(url).await?;
        let deliver =
            fleet_webhooks::jobs::Deliver::new(db.clone(), config.webhooks.clone()).map_err(anyhow::Error::msg)?;
        let client = fleet_jobs::Client::connect(&config.redis_url, config.prefix.clone()).await?;
        // Vision providers use `[limits."ai:provider:*"]`, through the runtime's limits.
        let images = fleet_images::jobs::Images::new(db.clone(), &config.images).map_err(anyhow::Error::msg)?;
        // calendar.sync, comms.sync and webhook.deliver open sealed secrets with FLEET_SECRETS_KEY
        // (and FLEET_SECRETS_KEYS_OLD during a rotation).
        let secrets = fleet_accounts::secrets::SecretBox::from_env_if_set()
            .map_err(|e| anyhow::anyhow!("FLEET_SECRETS_KEY: {e}"))?;
        if let Some(b) = &secrets {
            tracing::info!(current = b.key_id(), old = ?b.old_key_ids().collect::<Vec<_>>(), "secrets keys loaded");
        }
        let relay = fleet_accounts::outbox::Relay::new(db.clone(), client.clone());
        let calendar = fleet_calendar::jobs::CalendarSyncHandler::new(db.clone(), secrets.clone())
            .with_settings(&config.calendar)
            .map_err(|e| anyhow::anyhow!("calendar.allow: {e}"))?
            .with_relay(relay.clone());
        registry = registry
            .with_database(db.clone())
            .register(calendar.push_handler())
            .register(calendar)
            .register(images.analyzer())
            .register(images.variants())
            // Endpoint secrets are sealed with FLEET_SECRETS_KEY too.
            .register(deliver.with_secrets(secrets.clone()))
            .register(fleet_webhooks::jobs::intake::Record::new(db.clone()))
            .register(fleet_webhooks::jobs::publish::Publish::new(db.clone(), client));
        // Source secrets need FLEET_SECRETS_KEY; without it, sources with a secret fail clearly.
        // New entries are published through the relay; SMS accounts use `[limits."sms:*"]`.
        registry = registry.register(
            fleet_comms::jobs::SyncSource::new(db, secrets)
                .with_allowed(config.comms.ranges().map_err(|e| anyhow::anyhow!("comms.allow: {e}"))?)
                .with_relay(relay),
        );
    } else {
        tracing::info!("no database_url: webhook and image jobs are not handled by this worker");
    }
    Ok(registry)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; stop with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
