//! The HTTP API through its router (no socket): auth, validation, idempotency, tenants,
//! cancellation, batches with exactly one callback, OpenAPI.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use fleet_jobs::JobState;
use fleet_scheduler::api::{ApiState, app, auth};
use fleet_tests::{TestDb, TestEnv, eventually};
use fleet_worker::{QueueConfig, Registry};
use serde_json::{Value, json};
use std::time::Duration;
use tower::ServiceExt;

/// A router on a fresh database and namespace, with an `enqueue` key of tenant `acme`.
pub(crate) struct Api {
    pub(crate) env: TestEnv,
    pub(crate) db: TestDb,
    pub(crate) router: Router,
    pub(crate) key: String,
}

impl Api {
    pub(crate) async fn new() -> Api {
        let env = TestEnv::new().await;
        let db = TestDb::new().await;
        let key = auth::create_api_key(&db.pool, "acme", "test", &[auth::Role::Enqueue]).await.unwrap();
        let router = app(
            ApiState::new(env.client.clone(), db.pool.clone())
                .with_tenancy(fleet_scheduler::tenancy::TenancyConfig::for_tests()),
            1 << 20,
        );
        Api { env, db, router, key }
    }

    pub(crate) async fn call(
        &self,
        method: &str,
        uri: &str,
        key: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri).header("content-type", "application/json");
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        for (h, v) in headers {
            req = req.header(*h, *v);
        }
        let body = body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty);
        let res = self.router.clone().oneshot(req.body(body).unwrap()).await.unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    pub(crate) async fn post(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        self.call("POST", uri, Some(&self.key.clone()), Some(body), &[]).await
    }

    pub(crate) async fn done(self) {
        self.db.drop_db().await;
        self.env.cleanup().await;
    }
}

fn probe(action: &str) -> Value {
    json!({"kind": "probe", "args": {"do": action}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_key_get_401() {
    let api = Api::new().await;
    let body = Some(probe("succeed"));
    assert_eq!(api.call("POST", "/v1/jobs", None, body.clone(), &[]).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(api.call("POST", "/v1/jobs", Some("not-a-key"), body.clone(), &[]).await.0, StatusCode::UNAUTHORIZED);
    let (id, _) = api.key.strip_prefix("fk_").unwrap().split_once('_').unwrap();
    let wrong = format!("fk_{id}_{}", "0".repeat(48));
    let (status, err) = api.call("POST", "/v1/jobs", Some(&wrong), body.clone(), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(err["error"]["code"], "unauthorized");
    assert!(!err.to_string().contains(&api.key[10..]), "no secret echoed");
    assert_eq!(api.post("/v1/jobs", probe("succeed")).await.0, StatusCode::CREATED);
    auth::revoke_api_key(&api.db.pool, id).await.unwrap();
    assert_eq!(api.post("/v1/jobs", probe("succeed")).await.0, StatusCode::UNAUTHORIZED, "revoked keys stop working");
    api.done().await;
}

/// Roles are read from `api_keys.roles` (TEXT[]) by name: a name the scheduler does not
/// know (a newer version's, a typo by hand, another case) grants nothing, and the key's
/// known roles still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_role_names_in_the_database_grant_nothing() {
    let api = Api::new().await;
    let (id, _) = api.key.strip_prefix("fk_").unwrap().split_once('_').unwrap();
    sqlx::query("UPDATE api_keys SET roles = ARRAY['enqueue', 'superuser', 'Admin', 'operators'] WHERE id = $1")
        .bind(id)
        .execute(&api.db.pool)
        .await
        .unwrap();
    let (status, err) = api.call("GET", "/admin/v1/queues", Some(&api.key.clone()), None, &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    assert_eq!(api.post("/v1/jobs", probe("succeed")).await.0, StatusCode::CREATED);
    api.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_4xx_errors() {
    let api = Api::new().await;
    let (s, e) = api.post("/v1/jobs", json!({"kind": "no.such", "args": {}})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(e["error"]["message"].as_str().unwrap().contains("unknown job kind \"no.such\""), "{e}");
    let (s, e) = api.post("/v1/jobs", json!({"kind": "probe", "args": {"do": "explode"}})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(e["error"]["message"].as_str().unwrap().contains("args do not fit"), "{e}");
    let (s, _) = api.post("/v1/jobs", json!({"kind": "probe", "args": {"do": "succeed"}, "queue": "bad{queue}"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, e) = api.post("/v1/jobs", json!({"kind": "probe"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    let huge = json!({"kind": "probe", "args": {"do": "succeed", "tag": "x".repeat(1_100_000)}});
    let (s, e) = api.post("/v1/jobs", huge).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{e}");
    let (s, e) = api.post("/v1/jobs/bulk", json!({"jobs": [probe("succeed"), {"kind": "nope", "args": {}}]})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(e["error"]["message"].as_str().unwrap().starts_with("jobs[1]"), "{e}");
    assert_eq!(api.env.stats("default").await.enqueued, 0, "nothing of a refused request is enqueued");
    api.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_with_an_idempotency_key_returns_the_first_job() {
    let api = Api::new().await;
    let key = api.key.clone();
    let idem = [("idempotency-key", "order-7-thumbnails")];
    let (s1, first) = api.call("POST", "/v1/jobs", Some(&key), Some(probe("succeed")), &idem).await;
    let (s2, again) = api.call("POST", "/v1/jobs", Some(&key), Some(probe("succeed")), &idem).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!(first["id"], again["id"]);
    assert_eq!(api.env.stats("default").await.enqueued, 1);
    let (s3, e) = api.call("POST", "/v1/jobs", Some(&key), Some(probe("fail")), &idem).await;
    assert_eq!(s3, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["error"]["code"], "idempotency_key_reused");
    api.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_read_and_cancelled_within_their_tenant_only() {
    let api = Api::new().await;
    let (_, job) =
        api.post("/v1/jobs", json!({"kind": "probe", "args": {"do": "succeed"}, "delay_ms": 3_600_000})).await;
    let id = job["id"].as_str().unwrap().to_owned();
    let (s, view) = api.call("GET", &format!("/v1/jobs/default/{id}"), Some(&api.key.clone()), None, &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!((view["kind"].as_str(), view["state"].as_str()), (Some("probe"), Some("scheduled")));
    let other = auth::create_api_key(&api.db.pool, "globex", "other", &[auth::Role::Enqueue]).await.unwrap();
    assert_eq!(
        api.call("GET", &format!("/v1/jobs/default/{id}"), Some(&other), None, &[]).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.call("DELETE", &format!("/v1/jobs/default/{id}"), Some(&other), None, &[]).await.0,
        StatusCode::NOT_FOUND
    );
    let (s, c) = api.call("DELETE", &format!("/v1/jobs/default/{id}"), Some(&api.key.clone()), None, &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!((c["outcome"].as_str(), c["state"].as_str()), (Some("cancelled"), Some("scheduled")));
    assert_eq!(api.env.client.job_state("default", &id).await.unwrap(), Some(JobState::Cancelled));
    let (s, bulk) = api.post("/v1/jobs/bulk", json!({"jobs": [probe("succeed"), probe("succeed")]})).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(bulk["jobs"].as_array().unwrap().len(), 2);
    api.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_300_with_3_failures_fires_its_completion_callback_exactly_once() {
    let api = Api::new().await;
    let jobs: Vec<Value> = (0..300).map(|i| if i % 100 == 7 { probe("give_up") } else { probe("succeed") }).collect();
    let req = json!({
        "jobs": jobs,
        "on_success": {"kind": "probe", "args": {"do": "succeed", "tag": "all-good"}},
        "on_complete": {"kind": "probe", "args": {"do": "succeed", "tag": "portfolio-processed"}, "queue": "callbacks"}
    });
    let (s, batch) = api.post("/v1/batches", req).await;
    assert_eq!(s, StatusCode::CREATED, "{batch}");
    let id = batch["id"].as_str().unwrap().to_owned();
    // Two workers share the batch's queue; a third runs the callback queue.
    let mut cfg = api.env.config("default", 20);
    cfg.queues.push(QueueConfig { name: "callbacks".into(), concurrency: 2, fetch_batch: None, partitions: None });
    let a = api.env.worker(cfg.clone(), Registry::builtin()).await;
    let b = api.env.worker(cfg, Registry::builtin()).await;
    eventually("the completion callback to run", Duration::from_secs(60), || async {
        (api.env.stats("callbacks").await.succeeded == 1).then_some(())
    })
    .await;
    let (s, view) = api.call("GET", &format!("/v1/batches/{id}"), Some(&api.key.clone()), None, &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (view["total"].as_i64(), view["succeeded"].as_i64(), view["failed"].as_i64(), view["pending"].as_i64()),
        (Some(300), Some(297), Some(3), Some(0))
    );
    assert_eq!(view["callbacks_enqueued"], true);
    // Fire again, as a recovering worker would: still one callback.
    api.env.client.fire_finished_batches("default").await.unwrap();
    let cb = api.env.stats("callbacks").await;
    assert_eq!(cb.enqueued, 1, "exactly one completion callback");
    let callback = api.env.client.job("callbacks", &format!("{id}-complete")).await.unwrap().expect("the callback job");
    assert_eq!(callback.envelope.unwrap().tenant.as_deref(), Some("acme"));
    assert!(
        api.env.client.job("default", &format!("{id}-success")).await.unwrap().is_none(),
        "no success callback with failures"
    );
    assert_eq!(api.env.stats("default").await.enqueued, 300);
    a.shutdown().await;
    b.shutdown().await;
    api.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_one_chunk_fires_its_callback_once_after_every_job() {
    let api = Api::new().await;
    let jobs: Vec<Value> = (0..2_500).map(|_| probe("succeed")).collect();
    let req = json!({
        "jobs": jobs,
        "on_success": {"kind": "probe", "args": {"do": "succeed", "tag": "all-good"}, "queue": "callbacks"}
    });
    let (s, batch) = api.post("/v1/batches", req).await;
    assert_eq!(s, StatusCode::CREATED, "{batch}");
    let id = batch["id"].as_str().unwrap().to_owned();
    assert_eq!(api.env.stats("default").await.enqueued, 2_500);
    let mut cfg = api.env.config("default", 50);
    cfg.queues.push(QueueConfig { name: "callbacks".into(), concurrency: 2, fetch_batch: None, partitions: None });
    let w = api.env.worker(cfg, Registry::builtin()).await;
    eventually("the success callback to run", Duration::from_secs(90), || async {
        (api.env.stats("callbacks").await.succeeded == 1).then_some(())
    })
    .await;
    let (_, view) = api.call("GET", &format!("/v1/batches/{id}"), Some(&api.key.clone()), None, &[]).await;
    assert_eq!((view["total"].as_i64(), view["succeeded"].as_i64()), (Some(2_500), Some(2_500)), "{view}");
    assert_eq!(api.env.stats("callbacks").await.enqueued, 1);
    // Past the largest batch: refused, nothing written.
    let (s, body) = api.post("/v1/batches", json!({"jobs": (0..10_001).map(|_| json!({"kind": "probe", "args": {"do": "succeed"}})).collect::<Vec<_>>()})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    w.shutdown().await;
    api.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_description_is_served() {
    let api = Api::new().await;
    let (s, doc) = api.call("GET", "/openapi.json", None, None, &[]).await;
    assert_eq!(s, StatusCode::OK);
    for path in ["/v1/jobs", "/v1/jobs/bulk", "/v1/jobs/{queue}/{id}", "/v1/batches", "/v1/batches/{id}"] {
        assert!(doc["paths"][path].is_object(), "{path} is described");
    }
    api.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_streams_its_progress_live_until_done() {
    use futures::StreamExt;
    let api = Api::new().await;
    let jobs: Vec<Value> = (0..40).map(|_| json!({"kind": "probe", "args": {"do": "sleep", "ms": 20}})).collect();
    let (_, batch) = api.post("/v1/batches", json!({"jobs": jobs})).await;
    let id = batch["id"].as_str().unwrap().to_owned();
    let other = auth::create_api_key(&api.db.pool, "globex", "other", &[auth::Role::Enqueue]).await.unwrap();
    assert_eq!(
        api.call("GET", &format!("/v1/batches/{id}/events"), Some(&other), None, &[]).await.0,
        StatusCode::NOT_FOUND
    );

    let req = Request::builder()
        .uri(format!("/v1/batches/{id}/events"))
        .header("authorization", format!("Bearer {}", api.key))
        .body(Body::empty())
        .unwrap();
    let res = api.router.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.into_body().into_data_stream();
    let worker = api.env.worker(api.env.config("default", 4), Registry::builtin()).await;
    let mut text = String::new();
    let mut progress: Vec<i64> = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if text.contains("event: done") {
                break;
            }
        }
    })
    .await
    .expect("the stream ends with done");
    for block in text.split("\n\n").filter(|b| b.contains("data:")) {
        let data = block.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        let v: Value = serde_json::from_str(data).unwrap();
        progress.push(v["succeeded"].as_i64().unwrap());
    }
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "counts only grow: {progress:?}");
    assert!(progress.len() >= 2, "progress was streamed before the end: {progress:?}");
    assert_eq!(*progress.last().unwrap(), 40);
    worker.shutdown().await;
    api.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enqueuing_requests_trace_context_travels_with_the_job() {
    let api = Api::new().await;
    let key = api.key.clone();
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (_, job) = api.call("POST", "/v1/jobs", Some(&key), Some(probe("succeed")), &[("traceparent", tp)]).await;
    let env = api.env.client.job("default", job["id"].as_str().unwrap()).await.unwrap().unwrap().envelope.unwrap();
    assert_eq!(env.trace.as_deref(), Some(tp));
    let (_, job) =
        api.call("POST", "/v1/jobs", Some(&key), Some(probe("succeed")), &[("traceparent", "not-a-trace")]).await;
    let env = api.env.client.job("default", job["id"].as_str().unwrap()).await.unwrap().unwrap().envelope.unwrap();
    assert_eq!(env.trace, None, "a malformed traceparent is dropped");
    api.done().await;
}

/// Reads server-sent events from `body` until `enough` says so (or 60 s pass):
/// `(id, event, data)` per event.
pub(crate) async fn read_sse(
    body: &mut (impl futures::Stream<Item = Result<axum::body::Bytes, axum::Error>> + Unpin),
    enough: impl Fn(&[(String, String, Value)]) -> bool,
) -> Vec<(String, String, Value)> {
    use futures::StreamExt;
    let mut text = String::new();
    let mut events = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                let field = |name: &str| block.lines().find_map(|l| l.strip_prefix(name)).unwrap_or("").to_owned();
                let data = field("data: ");
                if data.is_empty() {
                    continue;
                }
                events.push((field("id: "), field("event: "), serde_json::from_str(&data).unwrap()));
            }
            if enough(&events) {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the stream did not deliver the expected events; got {events:?}"));
    events
}

pub(crate) fn stream_request(uri: &str, key: &str, last_event_id: Option<&str>) -> Request<Body> {
    let mut req = Request::builder().uri(uri).header("authorization", format!("Bearer {key}"));
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    req.body(Body::empty()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_follows_its_own_jobs_live_and_resumes_after_a_reconnect() {
    let api = Api::new().await;
    let key = api.key.clone();
    let other = auth::create_api_key(&api.db.pool, "globex", "other", &[auth::Role::Enqueue]).await.unwrap();
    assert_eq!(api.call("GET", "/v1/stream", None, None, &[]).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        api.router.clone().oneshot(stream_request("/v1/stream", &key, Some("garbage"))).await.unwrap().status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );

    let res = api.router.clone().oneshot(stream_request("/v1/stream", &key, None)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.into_body().into_data_stream();

    let (_, ok) = api.post("/v1/jobs", probe("succeed")).await;
    let (_, dead) = api.post("/v1/jobs", probe("give_up")).await;
    let (_, flaky) = api
        .post("/v1/jobs", json!({"kind": "probe", "args": {"do": "fail_times", "times": 1}, "max_attempts": 3}))
        .await;
    let (_, theirs) = api.call("POST", "/v1/jobs", Some(&other), Some(probe("succeed")), &[]).await;
    let (_, batch) = api.post("/v1/batches", json!({"jobs": [probe("succeed"), probe("succeed")]})).await;
    let id = |v: &Value| v["id"].as_str().unwrap().to_owned();
    let (ok, dead, flaky, theirs, batch) = (id(&ok), id(&dead), id(&flaky), id(&theirs), id(&batch));

    let worker = api.env.worker(api.env.config("default", 4), Registry::builtin()).await;
    let seen = |events: &[(String, String, Value)], kind: &str, job: &str| {
        events.iter().any(|(_, e, d)| e == kind && d["id"] == job)
    };
    let events = read_sse(&mut body, |ev| {
        seen(ev, "job.succeeded", &ok)
            && seen(ev, "job.dead", &dead)
            && seen(ev, "job.retrying", &flaky)
            && seen(ev, "job.succeeded", &flaky)
            && ev.iter().any(|(_, e, d)| e == "batch.progress" && d["id"] == batch && d["finished"] == true)
    })
    .await;
    assert!(!events.iter().any(|(_, _, d)| d["id"] == theirs), "another tenant's job is not in this stream");
    let dead_event = events.iter().find(|(_, e, d)| e == "job.dead" && d["id"] == dead).unwrap();
    assert_eq!((dead_event.2["kind"].as_str(), dead_event.2["attempt"].as_u64()), (Some("probe"), Some(1)));
    let job_events: Vec<&(String, String, Value)> = events.iter().filter(|(_, e, _)| e.starts_with("job.")).collect();
    assert!(job_events.iter().all(|(id, _, _)| !id.is_empty()), "every job event has an id to resume from");
    assert_eq!(job_events.len(), 6, "each outcome once: {job_events:?}");

    // Reconnect after the first event, as a browser does with Last-Event-ID: the rest
    // comes again, in the same order, and nothing before it.
    let first = job_events[0].0.clone();
    let res = api.router.clone().oneshot(stream_request("/v1/stream", &key, Some(&first))).await.unwrap();
    let mut body = res.into_body().into_data_stream();
    let rest = read_sse(&mut body, |ev| ev.iter().filter(|(_, e, _)| e.starts_with("job.")).count() >= 5).await;
    let rest_ids: Vec<&str> =
        rest.iter().filter(|(_, e, _)| e.starts_with("job.")).map(|(id, _, _)| id.as_str()).collect();
    let expected: Vec<&str> = job_events[1..].iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(rest_ids, expected);
    worker.shutdown().await;
    api.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_token_opens_only_its_tenants_named_events_and_nothing_else() {
    let api = Api::new().await;
    let (s, e) = api.post("/v1/stream/tokens", json!({})).await;
    assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::NOT_IMPLEMENTED, Some("not_configured")));
    let sealed = app(
        ApiState::new(api.env.client.clone(), api.db.pool.clone())
            .with_tenancy(fleet_scheduler::tenancy::TenancyConfig::for_tests())
            .with_secrets(fleet_accounts::secrets::SecretBox::new(&"5a".repeat(32)).unwrap()),
        64 * 1024,
    );
    let call = |method: &str, uri: &str, auth: Option<String>, body: Option<Value>| {
        let mut req = Request::builder().method(method).uri(uri).header("content-type", "application/json");
        if let Some(a) = auth {
            req = req.header("authorization", format!("Bearer {a}"));
        }
        let req = req.body(body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty)).unwrap();
        sealed.clone().oneshot(req)
    };
    let json_of = |res: axum::response::Response| async move {
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null))
    };
    let key = api.key.clone();
    let (_, batch) = api.post("/v1/batches", json!({"jobs": [probe("succeed"), probe("succeed")]})).await;
    let batch = batch["id"].as_str().unwrap().to_owned();
    let (_, alone) = api.post("/v1/jobs", probe("succeed")).await;
    let alone = alone["id"].as_str().unwrap().to_owned();

    for bad in [json!({"ttl_secs": 0}), json!({"ttl_secs": 90000}), json!({"types": [""]})] {
        let (s, _) = json_of(call("POST", "/v1/stream/tokens", Some(key.clone()), Some(bad)).await.unwrap()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    }
    let token_for = |body: Value| {
        let res = call("POST", "/v1/stream/tokens", Some(key.clone()), Some(body));
        async move {
            let (s, t) = json_of(res.await.unwrap()).await;
            assert_eq!(s, StatusCode::CREATED, "{t}");
            t["token"].as_str().unwrap().to_owned()
        }
    };
    let narrow = token_for(json!({"batches": [batch], "types": ["job.*"]})).await;
    let everything = token_for(json!({})).await;

    // A token is no API key: it enqueues nothing and reads no job.
    let (s, _) = json_of(call("POST", "/v1/jobs", Some(narrow.clone()), Some(probe("succeed"))).await.unwrap()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) =
        json_of(call("GET", &format!("/v1/jobs/default/{alone}"), Some(narrow.clone()), None).await.unwrap()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Altered or foreign tokens open nothing.
    let mut altered = narrow.clone().into_bytes();
    let i = altered.len() / 2;
    altered[i] = if altered[i] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    for bad in [altered.as_str(), "fst_", "fk_000000000000_nope"] {
        let res = call("GET", &format!("/v1/stream?token={bad}"), None, None).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{bad}");
    }

    let worker = api.env.worker(api.env.config("default", 4), Registry::builtin()).await;
    let res = call("GET", &format!("/v1/stream?token={narrow}&after=0"), None, None).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["access-control-allow-origin"], "*", "a browser on the app's origin may read it");
    let mut body = res.into_body().into_data_stream();
    let events = read_sse(&mut body, |ev| ev.iter().filter(|(_, e, _)| e == "job.succeeded").count() >= 2).await;
    assert!(events.iter().all(|(_, e, d)| e == "job.succeeded" && d["batch"] == batch.as_str()), "{events:?}");
    let res = call("GET", &format!("/v1/stream?token={everything}&after=0"), None, None).await.unwrap();
    let mut body = res.into_body().into_data_stream();
    let all =
        read_sse(&mut body, |ev| ev.iter().any(|(_, e, d)| e == "job.succeeded" && d["id"] == alone.as_str())).await;
    assert!(!all.is_empty());

    // It expires.
    let short = token_for(json!({"ttl_secs": 1})).await;
    eventually("the one-second token to expire", Duration::from_secs(10), || async {
        let res = call("GET", &format!("/v1/stream?token={short}"), None, None).await.unwrap();
        (res.status() == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    worker.shutdown().await;
    api.done().await;
}
