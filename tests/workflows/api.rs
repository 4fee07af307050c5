//! `/v1/workflows` through the router (no socket): a tenant submits, reads and cancels
//! its own workflows; another tenant gets 404 for both; bad workflows get 422 naming the
//! step; every step's job runs as the submitting tenant.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use fleet_scheduler::api::{ApiState, app, auth};
use fleet_scheduler::tenancy::TenancyConfig;
use fleet_tests::{TestDb, TestEnv};
use serde_json::{Value, json};
use tower::ServiceExt;

async fn call(router: &Router, method: &str, uri: &str, key: &str, body: Option<Value>) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty))
        .unwrap();
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_reads_and_cancels_only_its_own_workflows() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let a = auth::create_api_key(&db.pool, "acme", "a", &[auth::Role::Enqueue]).await.unwrap();
    let b = auth::create_api_key(&db.pool, "globex", "b", &[auth::Role::Enqueue]).await.unwrap();
    let router =
        app(ApiState::new(env.client.clone(), db.pool.clone()).with_tenancy(TenancyConfig::for_tests()), 1 << 20);
    let body = json!({"steps": [
        {"name": "first", "kind": "probe", "args": {"do": "succeed"}},
        {"name": "second", "kind": "probe", "args": {"do": "succeed"}, "depends_on": ["first"]},
        {"name": "third", "kind": "probe", "args": {"do": "succeed"},
         "depends_on": [{"step": "second", "on_failure": "run"}]}
    ]});
    let (status, created) = call(&router, "POST", "/v1/workflows", &a, Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["steps"], 3);

    let (status, view) = call(&router, "GET", &format!("/v1/workflows/{id}"), &a, None).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["state"], "running");
    let first = view["steps"].as_array().unwrap().iter().find(|s| s["name"] == "first").unwrap().clone();
    assert_eq!(first["state"], "enqueued");
    // The step's job is the tenant's.
    let job = env.client.job("default", first["job_id"].as_str().unwrap()).await.unwrap().unwrap();
    assert_eq!(job.envelope.unwrap().tenant.as_deref(), Some("acme"));

    // Another tenant sees nothing and cancels nothing.
    let (status, _) = call(&router, "GET", &format!("/v1/workflows/{id}"), &b, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&router, "DELETE", &format!("/v1/workflows/{id}"), &b, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(env.client.workflow(&id).await.unwrap().unwrap().state, fleet_jobs::workflows::WorkflowState::Running);

    let (status, cancelled) = call(&router, "DELETE", &format!("/v1/workflows/{id}"), &a, None).await;
    assert_eq!((status, cancelled["state"].clone()), (StatusCode::OK, json!("cancelled")));
    let (_, view) = call(&router, "GET", &format!("/v1/workflows/{id}"), &a, None).await;
    assert!(view["steps"].as_array().unwrap().iter().all(|s| s["state"] == "cancelled"), "{view}");
    // The tenant's stream tells of it (and only that tenant's).
    let stream = |t: &str| fleet_jobs::events::stream_key(&env.prefix, t);
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(stream("acme"))
        .arg("-")
        .arg("+")
        .query_async(&mut env.client.connection())
        .await
        .unwrap();
    let finished =
        entries.iter().flat_map(|(_, f)| f.iter()).any(|(_, v)| v.contains("workflow.finished") && v.contains(&id));
    assert!(finished, "{entries:?}");
    let other: i64 = redis::cmd("XLEN").arg(stream("globex")).query_async(&mut env.client.connection()).await.unwrap();
    assert_eq!(other, 0);

    // A bad workflow is refused, naming what is wrong.
    let cycle = json!({"steps": [
        {"name": "x", "kind": "probe", "args": {"do": "succeed"}, "depends_on": ["y"]},
        {"name": "y", "kind": "probe", "args": {"do": "succeed"}, "depends_on": ["x"]}
    ]});
    let (status, err) = call(&router, "POST", "/v1/workflows", &a, Some(cycle)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(err.to_string().contains("cycle"), "{err}");
    let internal = json!({"steps": [{"name": "x", "kind": "webhook.deliver", "args": {}}]});
    let (status, err) = call(&router, "POST", "/v1/workflows", &a, Some(internal)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert!(err.to_string().contains("step \\\"x\\\""), "{err}");
    db.drop_db().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_workflow_step_quota_a_tenant_gets_429_and_nothing_is_stored() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let a = auth::create_api_key(&db.pool, "acme", "a", &[auth::Role::Enqueue]).await.unwrap();
    let b = auth::create_api_key(&db.pool, "globex", "b", &[auth::Role::Enqueue]).await.unwrap();
    let tenancy = TenancyConfig { workflow_steps: 4, ..TenancyConfig::for_tests() };
    let router = app(ApiState::new(env.client.clone(), db.pool.clone()).with_tenancy(tenancy), 1 << 20);
    // Three steps that wait on a queue no worker serves: they stay open.
    let body = json!({"steps": [
        {"name": "a", "kind": "probe", "args": {"do": "succeed"}, "queue": "callbacks"},
        {"name": "b", "kind": "probe", "args": {"do": "succeed"}, "queue": "callbacks", "depends_on": ["a"]},
        {"name": "c", "kind": "probe", "args": {"do": "succeed"}, "queue": "callbacks", "depends_on": ["b"]}
    ]});
    let (status, created) = call(&router, "POST", "/v1/workflows", &a, Some(body.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, refused) = call(&router, "POST", "/v1/workflows", &a, Some(body.clone())).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{refused}");
    assert_eq!(refused["error"]["code"], "quota_exceeded");
    let msg = refused["error"]["message"].as_str().unwrap();
    assert!(msg.contains("holds 3 workflow steps") && msg.contains("quota of 4"), "{msg}");
    // Another tenant's quota is its own.
    let (status, _) = call(&router, "POST", "/v1/workflows", &b, Some(body.clone())).await;
    assert_eq!(status, StatusCode::CREATED);
    // Cancelled, the first workflow gives its steps back.
    let id = created["id"].as_str().unwrap();
    let (status, _) = call(&router, "DELETE", &format!("/v1/workflows/{id}"), &a, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, again) = call(&router, "POST", "/v1/workflows", &a, Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    env.cleanup().await;
    db.drop_db().await;
}
