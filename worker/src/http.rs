//! `/healthz` (liveness), `/readyz` (readiness) and Prometheus `/metrics`.
//!
//! `/healthz` says the process runs and its runtime answers; nothing it depends on is
//! checked, so an outage of Redis or PostgreSQL never gets a worker restarted.
//! `/readyz` checks what the worker needs to make progress: Redis (`PING`), PostgreSQL
//! where its kinds use it (`SELECT 1`), each queue's fetch, ack and heartbeat loops, and
//! the supervised tasks (the job runtime, this endpoint). 200 `{"status":"ready",...}`
//! or 503 `{"status":"not_ready",...}`, with every check's state.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use fleet_jobs::backend::EngineHandle;
use fleet_jobs::health::{self, Check, Tasks};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use std::sync::{Arc, Mutex, OnceLock};

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                        60.0, 300.0,
                    ],
                )
                .expect("static bucket list is not empty");
            match builder.install_recorder() {
                Ok(h) => h,
                // Another recorder is installed (embedding app): render an empty registry.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

#[derive(Clone)]
pub(crate) struct HttpState {
    pub(crate) instance: Arc<str>,
    pub(crate) queues: Arc<Vec<String>>,
    pub(crate) metrics: PrometheusHandle,
    pub(crate) ready: Readiness,
}

/// What `/readyz` checks.
#[derive(Clone)]
pub(crate) struct Readiness {
    pub(crate) redis: fleet_jobs::RedisConn,
    pub(crate) db: Option<sqlx::PgPool>,
    pub(crate) tasks: Tasks,
    pub(crate) engines: Engines,
}

/// The queue engines, shared with `/readyz` until shutdown takes them.
pub(crate) type Engines = Arc<Mutex<Vec<EngineHandle>>>;

/// One check per engine loop (`loop:<name>:<queue>`): fine while it runs.
pub(crate) fn loop_checks(engines: &[EngineHandle]) -> Vec<Check> {
    let mut out = Vec::new();
    for e in engines {
        let ended = e.ended_loops();
        for name in ["fetch", "ack", "heartbeat"] {
            let check = format!("loop:{name}:{}", e.queue());
            out.push(if ended.contains(&name) {
                Check::failed(check, "ended (panicked or returned); restart the worker")
            } else {
                Check::ok(check, "running")
            });
        }
    }
    out
}

impl Readiness {
    /// Every check, the slow ones (Redis, PostgreSQL) at once.
    pub(crate) async fn checks(&self) -> Vec<Check> {
        let mut conn = self.redis.clone();
        let redis = health::redis(&mut conn, health::CHECK_TIMEOUT);
        let db = async {
            match &self.db {
                Some(pool) => Some(crate::db::check(pool, health::CHECK_TIMEOUT).await),
                None => None,
            }
        };
        let (redis, db) = tokio::join!(redis, db);
        let mut checks = vec![redis];
        checks.extend(db);
        let engines = self.engines.lock().unwrap_or_else(|p| p.into_inner());
        if engines.is_empty() {
            checks.push(Check::failed("engines", "stopped (shutting down)"));
        }
        checks.extend(loop_checks(&engines));
        drop(engines);
        checks.extend(self.tasks.checks());
        checks
    }
}

#[derive(Serialize)]
struct Health<'a> {
    status: &'a str,
    instance: &'a str,
    queues: &'a [String],
}

/// The worker's HTTP routes.
pub(crate) fn app(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    let (ready, mut body) = health::readiness(&s.ready.checks().await);
    body["instance"] = serde_json::Value::from(&*s.instance);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body))
}

async fn healthz(State(s): State<HttpState>) -> impl IntoResponse {
    Json(serde_json::json!(Health { status: "ok", instance: &s.instance, queues: &s.queues }))
}

async fn metrics_text(State(s): State<HttpState>) -> impl IntoResponse {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}
