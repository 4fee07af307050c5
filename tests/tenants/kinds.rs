//! Hostile-tenant cases: what a tenant may enqueue. Internal kinds (deliveries, intake,
//! syncs, pushes) and the test kind are refused with 422 naming the kind, on every path
//! (single, bulk, batch jobs and callbacks, portfolio callbacks); queues are declared;
//! options have maxima; quotas answer 429; a tenant's keys live in its namespace; and
//! a worker without test kinds survives a `crash` probe it was handed anyway.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use fleet_jobs::catalogue::{ProbeAction, ProbeArgs};
use fleet_jobs::tenant::TenantLimits;
use fleet_scheduler::api::{ApiState, app, auth};
use fleet_scheduler::tenancy::TenancyConfig;
use fleet_tests::{TestDb, TestEnv, WorkerProcess, eventually};
use serde_json::{Value, json};
use std::time::Duration;
use tower::ServiceExt;

struct Api {
    env: TestEnv,
    db: TestDb,
    router: Router,
    a: String,
    b: String,
}

impl Api {
    async fn new(tenancy: TenancyConfig) -> Api {
        let env = TestEnv::new().await;
        let db = TestDb::new().await;
        let a = auth::create_api_key(&db.pool, "tenant-a", "a", &[auth::Role::Enqueue]).await.unwrap();
        let b = auth::create_api_key(&db.pool, "tenant-b", "b", &[auth::Role::Enqueue]).await.unwrap();
        let router = app(ApiState::new(env.client.clone(), db.pool.clone()).with_tenancy(tenancy), 1 << 20);
        Api { env, db, router, a, b }
    }

    async fn call(&self, key: &str, method: &str, uri: &str, body: Value) -> (StatusCode, Option<String>, Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {key}"))
            .body(Body::from(body.to_string()))
            .unwrap();
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let retry = res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        (status, retry, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn done(self) {
        self.db.drop_db().await;
        self.env.cleanup().await;
    }
}

const INTERNAL: [(&str, &str); 6] = [
    ("webhook.deliver", r#"{"message_id": "msg_1", "endpoint_id": "ep_of_a"}"#),
    ("webhook.intake", r#"{"provider": "vision", "id": "evt_1", "body": "{}", "received_at": 1}"#),
    ("calendar.sync", r#"{"source_id": "cal_of_a"}"#),
    ("calendar.push", r#"{"tenant": "tenant-a", "booking_id": "bk-1"}"#),
    ("comms.sync", r#"{"source_id": "cs_of_a"}"#),
    // Only a portfolio's workflow runs it, as the uploading tenant.
    ("portfolio.select", r#"{"portfolio": "p", "images": [{"id": "i", "key": "tenants/tenant-a/x.jpg"}]}"#),
];

fn job(kind: &str, args: &str) -> Value {
    json!({"kind": kind, "args": serde_json::from_str::<Value>(args).unwrap()})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_kinds_are_refused_on_every_path_with_the_kind_named() {
    let api = Api::new(TenancyConfig::default()).await;
    for (kind, args) in INTERNAL {
        let refused = |(s, _, body): (StatusCode, Option<String>, Value), path: &str| {
            assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{kind} via {path}: {body}");
            let msg = body["error"]["message"].as_str().unwrap_or_default().to_owned();
            assert!(msg.contains(kind) && msg.contains("only by Fleet"), "{kind} via {path}: {msg}");
        };
        refused(api.call(&api.b, "POST", "/v1/jobs", job(kind, args)).await, "/v1/jobs");
        refused(api.call(&api.b, "POST", "/v1/jobs/bulk", json!({"jobs": [job(kind, args)]})).await, "bulk");
        let ok = job("webhook.publish", r#"{"event_type": "x", "payload": {}}"#);
        refused(api.call(&api.b, "POST", "/v1/batches", json!({"jobs": [job(kind, args)]})).await, "batch job");
        let cb = json!({"jobs": [ok.clone()], "on_complete": job(kind, args)});
        refused(api.call(&api.b, "POST", "/v1/batches", cb).await, "batch callback");
        let portfolio = json!({"portfolio": "p", "images": [{"id": "i", "key": "tenants/tenant-b/x.jpg"}],
            "on_complete": job(kind, args)});
        refused(api.call(&api.b, "POST", "/v1/portfolios", portfolio).await, "portfolio callback");
    }
    // The test kind is refused too where test kinds are off, and nothing reached a queue.
    let (s, _, body) = api.call(&api.b, "POST", "/v1/jobs", job("probe", r#"{"do": "crash"}"#)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("test kind"));
    for q in ["default", "webhooks", "calendar", "comms", "images"] {
        assert_eq!(api.env.stats(q).await.enqueued, 0, "queue {q}");
    }
    api.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_comes_from_the_key_and_queues_are_declared_not_created() {
    let api = Api::new(TenancyConfig::for_tests()).await;
    // A tenant field in the request is not a thing the API takes.
    let mut spoof = job("probe", r#"{"do": "succeed"}"#);
    spoof["tenant"] = json!("tenant-a");
    let (s, _, body) = api.call(&api.b, "POST", "/v1/jobs", spoof).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("tenant"), "{body}");
    let (s, _, body) = api.call(&api.b, "POST", "/v1/jobs", job("probe", r#"{"do": "succeed"}"#)).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let stored = api.env.client.job("default", body["id"].as_str().unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.envelope.unwrap().tenant.as_deref(), Some("tenant-b"));
    // Queues a tenant may use are declared; any other name is refused and nothing is created.
    let mut elsewhere = job("probe", r#"{"do": "succeed"}"#);
    elsewhere["queue"] = json!("my-own-queue-7");
    let (s, _, body) = api.call(&api.b, "POST", "/v1/jobs", elsewhere).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("not declared"));
    assert!(!api.env.client.queues().await.unwrap().contains(&"my-own-queue-7".to_owned()));
    let batch = json!({"queue": "calendar", "jobs": [job("probe", r#"{"do": "succeed"}"#)]});
    assert_eq!(api.call(&api.b, "POST", "/v1/batches", batch).await.0, StatusCode::UNPROCESSABLE_ENTITY);
    api.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_past_their_maxima_are_refused() {
    let api = Api::new(TenancyConfig::for_tests()).await;
    for (field, value) in [
        ("delay_ms", json!(31u64 * 24 * 3600 * 1000)),
        ("timeout_ms", json!(2 * 3600 * 1000)),
        ("timeout_ms", json!(0)),
        ("max_attempts", json!(1000)),
        ("max_attempts", json!(0)),
        ("unique_window_secs", json!(30 * 24 * 3600)),
        ("run_at", json!("2099-01-01T00:00:00Z")),
        ("unique_key", json!("")),
    ] {
        let mut j = job("probe", r#"{"do": "succeed"}"#);
        j[field] = value.clone();
        let (s, _, body) = api.call(&api.a, "POST", "/v1/jobs", j).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{field} = {value}: {body}");
    }
    api.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_quota_gets_429_with_retry_after_and_another_tenant_does_not() {
    let api = Api::new(TenancyConfig::for_tests()).await;
    let quota = TenantLimits { concurrency: None, quota: Some(3) };
    api.env.client.set_tenant_limits("default", None, quota).await.unwrap();
    let three = json!({"jobs": (0..3).map(|_| job("probe", r#"{"do": "succeed"}"#)).collect::<Vec<_>>()});
    assert_eq!(api.call(&api.a, "POST", "/v1/jobs/bulk", three.clone()).await.0, StatusCode::CREATED);
    let (s, retry, body) = api.call(&api.a, "POST", "/v1/jobs", job("probe", r#"{"do": "succeed"}"#)).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded");
    assert!(retry.is_some_and(|r| r.parse::<u64>().is_ok_and(|n| n >= 1)), "Retry-After in seconds");
    // A batch of several chunks past the quota is refused before any chunk is written.
    let big = json!({"jobs": (0..1_500).map(|_| job("probe", r#"{"do": "succeed"}"#)).collect::<Vec<_>>()});
    let (s, _, body) = api.call(&api.b, "POST", "/v1/batches", big).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(api.env.stats("default").await.enqueued, 3, "nothing of the refused batch was written");
    // A batch past the quota is refused whole, and leaves no counters behind.
    let batch = json!({"jobs": [job("probe", r#"{"do": "succeed"}"#)]});
    let (s, _, body) = api.call(&api.a, "POST", "/v1/batches", batch).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let k = api.env.client.keys("default");
    let left: i64 = redis::cmd("HLEN").arg(&k.batches).query_async(&mut api.env.client.connection()).await.unwrap();
    assert_eq!(left, 0, "a refused batch leaves nothing");
    // B has a quota of its own, untouched by A's backlog.
    assert_eq!(api.call(&api.b, "POST", "/v1/jobs/bulk", three).await.0, StatusCode::CREATED);
    assert_eq!(api.env.stats("default").await.ready, 6);
    api.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_keys_live_in_the_tenants_namespace() {
    let api = Api::new(TenancyConfig::for_tests()).await;
    let with_key = |k: &str| {
        let mut j = job("probe", r#"{"do": "succeed"}"#);
        j["unique_key"] = json!(k);
        j
    };
    let (_, _, a) = api.call(&api.a, "POST", "/v1/jobs", with_key("nightly")).await;
    let (_, _, b) = api.call(&api.b, "POST", "/v1/jobs", with_key("nightly")).await;
    assert_ne!(a["id"], b["id"], "B's duplicate key must not return A's job");
    // Fleet's own keys (ticks, intake replay, syncs) cannot be taken by a tenant: every
    // key a tenant names is stored under `tenant:<name>:`.
    let (_, _, fleet_like) = api.call(&api.b, "POST", "/v1/jobs", with_key("intake:vision:abc")).await;
    let own = fleet_jobs::Unique { key: "intake:vision:abc".into(), window: Duration::from_secs(60) };
    let opts = fleet_jobs::EnqueueOptions { unique: Some(own), ..Default::default() };
    let fleet = api.env.client.enqueue_with(&ProbeArgs::new(ProbeAction::Succeed), opts).await.unwrap();
    assert_ne!(fleet.0, fleet_like["id"].as_str().unwrap());
    api.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_test_kinds_dead_letters_a_crash_probe_and_keeps_running() {
    let env = TestEnv::new().await;
    let crash = env.client.enqueue(&ProbeArgs::new(ProbeAction::Crash)).await.unwrap();
    let mut worker = WorkerProcess::spawn(
        env!("CARGO_BIN_EXE_fleet-worker-e2e"),
        &fleet_tests::redis_url(),
        &env.prefix,
        &[("FLEET_TEST_KINDS", "0"), ("FLEET_QUEUES", "default=2")],
    );
    eventually("the crash probe in the dead letters", Duration::from_secs(20), || async {
        (env.client.job_state("default", crash.as_str()).await.unwrap() == Some(fleet_jobs::JobState::Dead))
            .then_some(())
    })
    .await;
    let dead = env.client.job("default", crash.as_str()).await.unwrap().unwrap();
    assert!(dead.history.last().unwrap().error.contains("unknown kind"), "{:?}", dead.history);
    assert!(!worker.exited(), "the worker must survive");
    worker.terminate(Duration::from_secs(10));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_and_override_a_tenants_limits_at_run_time_and_tenants_cannot() {
    let api = Api::new(TenancyConfig::for_tests()).await;
    let admin = auth::create_api_key(&api.db.pool, "ops", "ops", &[auth::Role::Admin]).await.unwrap();
    let put = json!({"concurrency": 2, "quota": 1});
    // A tenant's own key cannot raise its limits, nor read another's usage.
    assert_eq!(
        api.call(&api.a, "PUT", "/admin/v1/queues/default/tenants/tenant-a", put.clone()).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.call(&api.a, "GET", "/admin/v1/queues/default/tenants/tenant-b", json!({})).await.0,
        StatusCode::FORBIDDEN
    );
    let (s, _, view) = api.call(&admin, "PUT", "/admin/v1/queues/default/tenants/tenant-a", put).await;
    assert_eq!(s, StatusCode::OK, "{view}");
    assert_eq!((view["concurrency"].as_u64(), view["quota"].as_u64()), (Some(2), Some(1)));
    assert_eq!(api.call(&api.a, "POST", "/v1/jobs", job("probe", r#"{"do": "succeed"}"#)).await.0, StatusCode::CREATED);
    assert_eq!(
        api.call(&api.a, "POST", "/v1/jobs", job("probe", r#"{"do": "succeed"}"#)).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    let (_, _, list) = api.call(&admin, "GET", "/admin/v1/queues/default/tenants", json!({})).await;
    assert_eq!(list[0]["tenant"], "tenant-a");
    assert_eq!(list[0]["open"], 1);
    let bad = api.call(&admin, "PUT", "/admin/v1/queues/default/tenants/a:b", json!({"quota": 1})).await;
    assert_eq!(bad.0, StatusCode::UNPROCESSABLE_ENTITY);
    api.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_has_at_most_100_endpoints_and_another_tenant_is_not_affected() {
    let mut api = Api::new(TenancyConfig::for_tests()).await;
    let key = fleet_accounts::secrets::SecretBox::new(&"7c".repeat(32)).unwrap();
    api.router = app(
        ApiState::new(api.env.client.clone(), api.db.pool.clone())
            .with_tenancy(TenancyConfig::for_tests())
            .with_secrets(key),
        1 << 20,
    );
    for i in 0..100 {
        let ep = json!({"url": format!("https://hooks.example.com/{i}")});
        let (s, body) = {
            let (s, _, b) = api.call(&api.a, "POST", "/v1/endpoints", ep).await;
            (s, b)
        };
        assert_eq!(s, StatusCode::CREATED, "endpoint {i}: {body}");
    }
    let (s, _, body) = api.call(&api.a, "POST", "/v1/endpoints", json!({"url": "https://hooks.example.com/x"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("at most 100 endpoints"), "{body}");
    let (s, _, body) = api.call(&api.b, "POST", "/v1/endpoints", json!({"url": "https://hooks.example.com/b"})).await;
    assert_eq!(s, StatusCode::CREATED, "B's own endpoints are its own: {body}");
    api.done().await;
}
