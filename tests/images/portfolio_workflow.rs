//! A portfolio upload as a workflow when an analysis fails: the other photos still get
//! their variants and the callback still runs once. The selection reads only the
//! uploading tenant's analyses (another tenant's portfolio of the same name, with the same
//! image ids, changes nothing), a retried request with the same `Idempotency-Key` creates
//! no second workflow, and an upload past the tenant's quota is refused whole.

use super::{Store, fixture, portfolio_worker, settings, stream_of, workflow_end};
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use fleet_images::jobs::Images;
use fleet_images::store;
use fleet_jobs::workflows::WorkflowState;
use fleet_scheduler::api::{ApiState, app, auth};
use fleet_tests::{TestDb, TestEnv};
use serde_json::{Value, json};
use tower::ServiceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_analysis_costs_only_its_photo_and_the_selection_reads_only_the_tenants_analyses() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let store = Store::new("portfolio-failure");
    let people = fixture("formats/people.jpg");
    store.put("tenants/rival/up/one.jpg", &people);
    store.put("tenants/rival/up/two.webp", &fixture("formats/tree.webp"));
    store.put("tenants/rival/up/broken.jpg", &people[..people.len() / 2]);

    // Another tenant's portfolio of the same name holds images of the same ids, stored as
    // near-duplicates of each other ("two" the sharper): were the selection to read them,
    // rival's "one" would be dropped.
    for (id, sharpness) in [("one", 1.0), ("two", 900.0)] {
        let a = store::NewAnalysis {
            tenant: "acme",
            image_id: id,
            portfolio: Some("wedding"),
            source_key: "tenants/acme/up/x.jpg",
            source_sha256: "00",
            format: "jpeg",
            width: 10,
            height: 10,
            phash: 0x0f0f_0f0f_0f0f_0f0f,
            sharpness,
            exposure: json!({}),
            colours: json!([]),
            metadata: json!({}),
            gps_present: false,
            vision: None,
            thumbhash: None,
        };
        store::record_analysis(&db.pool, &a).await.unwrap();
    }
    let acme = store::select_sharpest(&db.pool, "acme", "wedding", &["one".into(), "two".into()]).await.unwrap();
    assert_eq!((acme.kept, acme.dropped), (vec!["two".to_owned()], vec![("one".to_owned(), "two".to_owned())]));

    let key = auth::create_api_key(&db.pool, "rival", "uploads", &[auth::Role::Enqueue]).await.unwrap();
    let api = app(
        ApiState::new(env.client.clone(), db.pool.clone())
            .with_tenancy(fleet_scheduler::tenancy::TenancyConfig::for_tests())
            .with_secrets(fleet_accounts::secrets::SecretBox::new(&"5a".repeat(32)).unwrap()),
        1 << 20,
    );
    let call = |method: &str, uri: &str, idem: Option<&str>, body: Option<Value>| {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json");
        if let Some(k) = idem {
            req = req.header("idempotency-key", k);
        }
        let req = req.body(body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty)).unwrap();
        let api = api.clone();
        async move {
            let res = api.oneshot(req).await.unwrap();
            let (status, headers): (StatusCode, HeaderMap) = (res.status(), res.headers().clone());
            let bytes = axum::body::to_bytes(res.into_body(), 1 << 22).await.unwrap();
            (status, headers, serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null))
        }
    };
    let upload = json!({
        "portfolio": "wedding",
        "images": [
            {"id": "one", "key": "tenants/rival/up/one.jpg"},
            {"id": "broken", "key": "tenants/rival/up/broken.jpg"},
            {"id": "two", "key": "tenants/rival/up/two.webp"}
        ],
        "variants": {"widths": [320], "formats": ["jpeg"]},
        "on_complete": {"kind": "probe", "args": {"do": "succeed"}, "queue": "callbacks"}
    });
    // Without room for every analysis under the tenant's quota: refused whole, nothing made.
    let quota = |n| fleet_jobs::tenant::TenantLimits { concurrency: None, quota: Some(n) };
    env.client.set_tenant_limits("images", Some("rival"), quota(2)).await.unwrap();
    let (s, headers, refused) = call("POST", "/v1/portfolios", None, Some(upload.clone())).await;
    assert_eq!((s, refused["error"]["code"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("quota_exceeded")));
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    assert_eq!(env.stats("images").await.enqueued, 0, "{refused}");
    env.client.set_tenant_limits("images", Some("rival"), quota(100)).await.unwrap();

    let (s, _, accepted) = call("POST", "/v1/portfolios", Some("wedding-upload-1"), Some(upload.clone())).await;
    assert_eq!(s, StatusCode::CREATED, "{accepted}");
    let id = accepted["workflow"].as_str().unwrap().to_owned();
    // A retry with the same key gets the same workflow and creates nothing.
    let (s, headers, again) = call("POST", "/v1/portfolios", Some("wedding-upload-1"), Some(upload)).await;
    assert_eq!((s, again["workflow"].as_str()), (StatusCode::CREATED, Some(id.as_str())), "{again}");
    assert_eq!(headers.get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
    assert_eq!(env.stats("images").await.enqueued, 3, "one analysis per photo, once");

    let images = Images::new(db.pool.clone(), &settings(&store)).unwrap();
    let worker = portfolio_worker(&env, &images).await;
    let end = workflow_end(&env, &id).await;
    // A step failed, so the workflow did; everything else ran.
    assert_eq!((end.state, end.failed), (WorkflowState::Failed, 1), "{end:?}");
    let (s, _, view) = call("GET", &format!("/v1/workflows/{id}"), None, None).await;
    assert_eq!(s, StatusCode::OK, "{view}");
    let steps: Vec<(String, String)> = view["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_owned(), s["state"].as_str().unwrap().to_owned()))
        .collect();
    let expect = [
        ("analyze-0", "succeeded"),
        ("analyze-1", "failed"),
        ("analyze-2", "succeeded"),
        ("on-complete", "succeeded"),
        ("select", "succeeded"),
        ("variants-0", "succeeded"),
        ("variants-2", "succeeded"),
    ];
    assert_eq!(steps, expect.map(|(a, b)| (a.to_owned(), b.to_owned())), "{view}");
    let step = |name: &str| view["steps"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap().clone();
    assert_eq!(step("analyze-1")["error"], "dead", "{view}");
    let selection = step("select")["result"].clone();
    assert_eq!(selection["kept"], json!(["one", "two"]), "acme's pair is not rival's: {selection}");
    assert_eq!((selection["dropped"].clone(), selection["unanalysed"].clone()), (json!([]), json!(["broken"])));
    assert_eq!(selection["kept_count"], 2);

    // The broken photo: one clear dead letter, no retries.
    let dead = env.client.dead_letters("images", 0, 10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].reason.contains("truncated"), "{}", dead[0].reason);
    assert_eq!(dead[0].job.attempts, 1);
    // Variants for the two good photos, none for the broken one, and acme's untouched.
    let made: Vec<(String, String)> =
        sqlx::query_as("SELECT DISTINCT tenant, image_id FROM image_variants ORDER BY tenant, image_id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(made, [("rival".to_owned(), "one".to_owned()), ("rival".to_owned(), "two".to_owned())]);
    let acme = store::select_sharpest(&db.pool, "acme", "wedding", &["one".into(), "two".into()]).await.unwrap();
    assert_eq!(acme.kept, ["two"], "acme's analyses are as they were");
    // The callback ran once, after everything, and the stream says so.
    let callbacks = env.stats("callbacks").await;
    assert_eq!((callbacks.enqueued, callbacks.succeeded), (1, 1), "{callbacks:?}");
    let events = stream_of(&env, "rival", &id).await;
    assert!(events.contains(&("workflow.step.failed".into(), "analyze-1".into())), "{events:?}");
    assert!(events.contains(&("workflow.step.succeeded".into(), "on-complete".into())), "{events:?}");
    assert!(events.contains(&("workflow.finished".into(), String::new())), "{events:?}");
    assert!(stream_of(&env, "acme", &id).await.is_empty(), "another tenant hears nothing of it");

    worker.shutdown().await;
    db.drop_db().await;
    env.cleanup().await;
}
