//! A portfolio upload as a workflow when an analysis fails: the other photos still get
//! their variants and the callback still runs once. The selection reads only the
//! uploading tenant's analyses (another tenant's portfolio of the same name, with the same
//! image ids, changes nothing), a retried request with the same `Idempotency-Key` creates
//! no second workflow, and an upload past the tenant's quota is refused whole. At scale:
//! the largest upload is one submission, and a 1,000-photo upload (with stand-in image
//! handlers, the real selection) runs through, its selection's result cut to fit.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_upload_is_one_workflow_of_an_analysis_per_photo() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let key = auth::create_api_key(&db.pool, "rival", "uploads", &[auth::Role::Enqueue]).await.unwrap();
    let api = app(
        ApiState::new(env.client.clone(), db.pool.clone())
            .with_tenancy(fleet_scheduler::tenancy::TenancyConfig::for_tests()),
        1 << 20,
    );
    let images: Vec<Value> = (0..5000)
        .map(|i| json!({"id": format!("wedding/IMG_{i:05}.JPG"), "key": format!("tenants/rival/up/IMG_{i:05}.JPG")}))
        .collect();
    let body = json!({"portfolio": "big", "images": images,
        "on_complete": {"kind": "probe", "args": {"do": "succeed"}, "queue": "callbacks"}});
    let req = Request::builder()
        .method("POST")
        .uri("/v1/portfolios")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let res = api.oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    let accepted: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::CREATED, "{accepted}");
    assert_eq!((accepted["images"].clone(), accepted["steps"].clone()), (json!(5000), json!(5002)));
    let wf = env.client.workflow(accepted["workflow"].as_str().unwrap()).await.unwrap().unwrap();
    assert_eq!((wf.total, wf.open), (5002, 5002));
    let enqueued = wf.steps.iter().filter(|s| s.state == fleet_jobs::workflows::StepState::Enqueued).count();
    assert_eq!(enqueued, 5000, "every analysis at once; the selection and callback wait");
    assert_eq!(env.stats("images").await.enqueued, 5000);
    db.drop_db().await;
    env.cleanup().await;
}

/// Stands in for `image.analyze`: records an analysis whose hash makes photos 2k and 2k+1
/// near-duplicates (2k+1 the sharper), without decoding anything.
struct StandInAnalyze(sqlx::PgPool);

/// A 64-bit hash per pair of photos, far from every other pair's (checked by the test).
fn pair_hash(pair: u64) -> i64 {
    let mut z = pair.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as i64
}

fn index_of(key: &str) -> u64 {
    key.rsplit('-').next().and_then(|n| n.strip_suffix(".jpg")).and_then(|n| n.parse().ok()).expect("an index")
}

impl fleet_kit::Handler for StandInAnalyze {
    type Args = fleet_jobs::catalogue::ImageAnalyze;

    async fn handle(&self, a: Self::Args, ctx: fleet_kit::JobContext) -> Result<(), fleet_kit::JobError> {
        let i = index_of(&a.key);
        let tenant = ctx.tenant.clone().unwrap_or_default();
        let analysis = store::NewAnalysis {
            tenant: &tenant,
            image_id: &a.image_id,
            portfolio: a.portfolio.as_deref(),
            source_key: &a.key,
            source_sha256: "00",
            format: "jpeg",
            width: 10,
            height: 10,
            phash: pair_hash(i / 2),
            sharpness: i as f64,
            exposure: json!({}),
            colours: json!([]),
            metadata: json!({}),
            gps_present: false,
            vision: None,
            thumbhash: None,
        };
        store::record_analysis(&self.0, &analysis).await.map_err(fleet_kit::JobError::retry)
    }
}

/// Stands in for `image.variants`: counts the photos it is asked for.
struct StandInVariants(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl fleet_kit::Handler for StandInVariants {
    type Args = fleet_jobs::catalogue::ImageVariants;

    async fn handle(&self, a: Self::Args, _ctx: fleet_kit::JobContext) -> Result<(), fleet_kit::JobError> {
        self.0.lock().unwrap().push(a.image_id);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_photo_upload_keeps_the_sharper_of_each_pair_and_its_selection_fits_a_result() {
    const N: u64 = 1000;
    // No two pairs' hashes within the near-duplicate distance of each other.
    for a in 0..N / 2 {
        for b in a + 1..N / 2 {
            assert!((pair_hash(a) ^ pair_hash(b)).count_ones() > 10, "pairs {a} and {b}");
        }
    }
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let store_dir = Store::new("portfolio-thousand");
    let key = auth::create_api_key(&db.pool, "rival", "uploads", &[auth::Role::Enqueue]).await.unwrap();
    let api = app(
        ApiState::new(env.client.clone(), db.pool.clone())
            .with_tenancy(fleet_scheduler::tenancy::TenancyConfig::for_tests()),
        1 << 20,
    );
    // Long ids, as apps make them: the selection's lists pass the 64 KiB result limit.
    let id = |i: u64| format!("gallery/smith-jones-2027/ceremony/second-shooter/DSC_{i:05}-edited-final.jpg");
    let images: Vec<Value> =
        (0..N).map(|i| json!({"id": id(i), "key": format!("tenants/rival/up/photo-{i}.jpg")})).collect();
    let body = json!({"portfolio": "thousand", "images": images,
        "on_complete": {"kind": "probe", "args": {"do": "succeed"}, "queue": "callbacks"}});
    let req = Request::builder()
        .method("POST")
        .uri("/v1/portfolios")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let res = api.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let accepted: Value =
        serde_json::from_slice(&axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap()).unwrap();
    let workflow = accepted["workflow"].as_str().unwrap().to_owned();

    let varied = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let images = Images::new(db.pool.clone(), &settings(&store_dir)).unwrap();
    let registry = fleet_worker::Registry::builtin()
        .register(StandInAnalyze(db.pool.clone()))
        .register(StandInVariants(varied.clone()))
        .register(images.selector());
    let mut cfg = env.config("images", 8);
    cfg.queues = vec![
        fleet_worker::QueueConfig { name: "images".into(), concurrency: 8, fetch_batch: None, partitions: None },
        fleet_worker::QueueConfig { name: "callbacks".into(), concurrency: 1, fetch_batch: None, partitions: None },
    ];
    let started = std::time::Instant::now();
    let worker = env.worker(cfg, registry).await;
    let end = workflow_end(&env, &workflow).await;
    let took = started.elapsed();
    assert_eq!(end.state, WorkflowState::Succeeded, "{:?}", (end.total, end.open, end.failed));
    assert_eq!(end.total, N + 2 + N / 2, "the analyses, the selection, the callback and a variants step per pair");
    let mut got = varied.lock().unwrap().clone();
    got.sort();
    let mut want: Vec<String> = (0..N).filter(|i| i % 2 == 1).map(id).collect();
    want.sort();
    assert_eq!(got, want, "the sharper photo of each pair, once each");
    let select = end.steps.iter().find(|s| s.name == "select").unwrap();
    let result: Value = serde_json::from_str(select.result.as_ref().unwrap().get()).unwrap();
    assert_eq!((result["kept_count"].as_u64(), result["dropped_count"].as_u64()), (Some(N / 2), Some(N / 2)));
    assert_eq!(result["truncated"], true, "cut to fit");
    assert!(select.result.as_ref().unwrap().get().len() <= fleet_jobs::progress::MAX_RESULT_BYTES);
    assert_eq!(result["dropped"][0], json!({"id": id(0), "duplicate_of": id(1)}), "{}", result["dropped"][0]);
    assert_eq!(env.stats("callbacks").await.succeeded, 1);
    eprintln!("a {N}-photo upload with stand-in image handlers ran through its workflow in {took:?}");

    worker.shutdown().await;
    db.drop_db().await;
    env.cleanup().await;
}
