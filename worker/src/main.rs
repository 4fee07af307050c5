//! `fleet-worker`: parses arguments, starts telemetry, runs the worker until SIGTERM or SIGINT.

use clap::Parser;
use fleet_worker::config::LogFormat;
use fleet_worker::{Registry, WorkerConfig};
use std::path::PathBuf;
use std::process::ExitCode;

/// Fleet worker: processes jobs from Redis.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML config file (FLEET_* environment variables override it).
    #[arg(long, short, env = "FLEET_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = match WorkerConfig::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleet-worker: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(config.log_format);
    match fleet_worker::run(config, Registry::builtin(), shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("fleet-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
