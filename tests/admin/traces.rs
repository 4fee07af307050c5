//! A job's span reaches an OpenTelemetry backend as a child of the enqueuing request's
//! span: a worker process exports over OTLP/HTTP (JSON encoding) to a collector this
//! test serves on loopback, and the test reads the spans as the OTLP specification
//! lays them out (`resourceSpans[].scopeSpans[].spans[]`, ids in hex).

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use fleet_jobs::EnqueueOptions;
use fleet_jobs::catalogue::{ProbeAction, ProbeArgs};
use fleet_tests::{TestEnv, WorkerProcess, eventually, redis_url};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WORKER: &str = env!("CARGO_BIN_EXE_fleet-worker-e2e");

#[derive(Clone, Default)]
struct Collector {
    exports: Arc<Mutex<Vec<Value>>>,
}

async fn traces(State(c): State<Collector>, headers: axum::http::HeaderMap, body: Bytes) -> &'static str {
    assert_eq!(headers.get("content-type").and_then(|v| v.to_str().ok()), Some("application/json"));
    c.exports.lock().unwrap().push(serde_json::from_slice(&body).expect("an OTLP/JSON export"));
    "{}"
}

/// Every span the collector got, with its resource's `service.name`.
fn spans(c: &Collector) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for export in c.exports.lock().unwrap().iter() {
        for rs in export["resourceSpans"].as_array().into_iter().flatten() {
            let service = rs["resource"]["attributes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["key"] == "service.name")
                .and_then(|a| a["value"]["stringValue"].as_str())
                .unwrap_or("")
                .to_owned();
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for span in ss["spans"].as_array().into_iter().flatten() {
                    out.push((service.clone(), span.clone()));
                }
            }
        }
    }
    out
}

fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"].as_array()?.iter().find(|a| a["key"] == key).map(|a| &a["value"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_span_is_exported_as_a_child_of_the_enqueuing_requests_span() {
    let env = TestEnv::new().await;
    let collector = Collector::default();
    let router = Router::new().route("/v1/traces", axum::routing::post(traces)).with_state(collector.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let trace = "0af7651916cd43dd8448eb211c80319c";
    let parent = "b7ad6b7169203331";
    let traced = EnqueueOptions { trace: Some(format!("00-{trace}-{parent}-01")), ..Default::default() };
    let id = env.client.enqueue_with(&ProbeArgs::new(ProbeAction::Succeed), traced).await.unwrap();
    let untraced = env.client.enqueue(&ProbeArgs::new(ProbeAction::Succeed)).await.unwrap();

    let worker = WorkerProcess::spawn(
        WORKER,
        &redis_url(),
        &env.prefix,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_SERVICE_NAME", "fleet-worker-under-test"),
        ],
    );
    eventually("both jobs to succeed", Duration::from_secs(30), || async {
        (env.stats("default").await.succeeded == 2).then_some(())
    })
    .await;
    // Stopping flushes the spans still buffered.
    worker.terminate(Duration::from_secs(20));

    let all = spans(&collector);
    let job_spans: Vec<&(String, Value)> = all.iter().filter(|(_, s)| s["name"] == "job").collect();
    let child = job_spans
        .iter()
        .find(|(_, s)| attribute(s, "job_id").and_then(|v| v["stringValue"].as_str()) == Some(id.as_str()))
        .unwrap_or_else(|| panic!("the traced job's span was exported; got {all:?}"));
    assert_eq!(child.0, "fleet-worker-under-test");
    assert_eq!(child.1["traceId"], trace, "same trace as the request");
    assert_eq!(child.1["parentSpanId"], parent, "the request's span is the parent");
    assert_eq!(attribute(&child.1, "kind").and_then(|v| v["stringValue"].as_str()), Some("probe"));
    let root = job_spans
        .iter()
        .find(|(_, s)| attribute(s, "job_id").and_then(|v| v["stringValue"].as_str()) == Some(untraced.as_str()))
        .expect("the untraced job's span was exported too");
    assert_ne!(root.1["traceId"], trace, "a job without a trace context starts its own trace");
    assert!(root.1["parentSpanId"].as_str().unwrap_or("").is_empty(), "and has no parent");
    assert!(
        all.iter().all(|(_, s)| s["name"] == "job"
            || s["traceId"] == child.1["traceId"]
            || s["traceId"] == root.1["traceId"]),
        "only jobs and what runs inside them are exported"
    );
    env.cleanup().await;
}
