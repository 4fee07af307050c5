//! `/healthz` and Prometheus `/metrics`.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use std::sync::{Arc, OnceLock};

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
}

#[derive(Serialize)]
struct Health<'a> {
    status: &'a str,
    instance: &'a str,
    queues: &'a [String],
}

/// The worker's HTTP routes.
pub(crate) fn app(state: HttpState) -> Router {
    Router::new().route("/healthz", get(healthz)).route("/metrics", get(metrics_text)).with_state(state)
}

async fn healthz(State(s): State<HttpState>) -> impl IntoResponse {
    Json(serde_json::json!(Health { status: "ok", instance: &s.instance, queues: &s.queues }))
}

async fn metrics_text(State(s): State<HttpState>) -> impl IntoResponse {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}
