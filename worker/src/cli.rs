//! The `fleet-worker` command: arguments, telemetry, then [`run`](crate::run) until
//! SIGTERM or SIGINT. Shared by the real binary and the end-to-end test binary, so
//! tests run exactly what ships.

use crate::WorkerConfig;
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
    // One rustls provider for the process (ring, as fleet_net's), before any TLS connection.
    fleet_jobs::tls::install_crypto_provider();
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
    let registry = match runtime.block_on(crate::kinds::shipped(&config)) {
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
