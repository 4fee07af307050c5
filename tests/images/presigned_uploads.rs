//! Presigned uploads end to end, against a real S3-protocol server (moto, started by
//! `scripts/s3.sh`; `FLEET_TEST_S3_URL` points elsewhere): the API signs a PUT URL under the
//! caller's prefix, the app PUTs a JPEG to it with plain HTTP, and `image.analyze` reads the
//! original from the same bucket through the portfolio endpoint.
//!
//! moto does not check SigV4 signatures (it stores a PUT whatever its signature), so that a
//! URL works for its own key, type and size only is shown by recomputing the signature as
//! S3 does (`fleet_images::uploads` unit tests), not by a refusal here.

use super::fixture;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use fleet_images::jobs::{ImageSettings, Images};
use fleet_images::storage::{ObjectStore as _, S3Config, S3Store, SecretString, StoreConfig};
use fleet_scheduler::api::{ApiState, app, auth};
use fleet_tests::{TestDb, TestEnv};
use fleet_worker::{QueueConfig, Registry};
use serde_json::{Value, json};
use std::time::Duration;
use tower::ServiceExt;

fn s3_config(bucket: &str) -> S3Config {
    let endpoint = std::env::var("FLEET_TEST_S3_URL").unwrap_or_else(|_| "http://127.0.0.1:9000".into());
    let mut c = S3Config::new(
        endpoint,
        bucket.into(),
        SecretString::from("AKIAFLEETUPLOADTEST1"),
        SecretString::from("fleet/upload+test/secret"),
    );
    c.path_style = true;
    c
}

/// Calls the API as the holder of `key`; the status and the JSON body.
async fn call(api: &axum::Router, key: &str, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty))
        .unwrap();
    let res = api.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 22).await.unwrap();
    (status, serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_puts_an_original_through_a_presigned_url_and_it_is_analysed() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let bucket = format!("fleet-uploads-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let config = s3_config(&bucket);
    let store = S3Store::new(&config).unwrap();
    store.create_bucket().await.unwrap_or_else(|e| {
        panic!("no S3-protocol server answers ({e}); start moto with scripts/s3.sh or set FLEET_TEST_S3_URL")
    });
    let storage = StoreConfig::S3(config);
    let api = app(
        ApiState::new(env.client.clone(), db.pool.clone())
            .with_tenancy(fleet_scheduler::tenancy::TenancyConfig::for_tests())
            .with_upload_store(&storage)
            .unwrap(),
        1 << 20,
    );
    let studio = auth::create_api_key(&db.pool, "studio", "app", &[auth::Role::Enqueue]).await.unwrap();
    let other = auth::create_api_key(&db.pool, "other", "app", &[auth::Role::Enqueue]).await.unwrap();

    // The app asks for a URL, then PUTs the file to it with plain HTTP.
    let photo = fixture("formats/people.jpg");
    let ask = json!({"name": "Smith & Jones/../people.jpg", "content_type": "image/jpeg", "bytes": photo.len()});
    let (s, body) = call(&api, &studio, "POST", "/v1/uploads", Some(ask)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "a path is not a file name: {body}");
    let ask = json!({"name": "Smith & Jones 01.jpg", "content_type": "image/jpeg", "bytes": photo.len()});
    let (s, granted) = call(&api, &studio, "POST", "/v1/uploads", Some(ask.clone())).await;
    assert_eq!(s, StatusCode::CREATED, "{granted}");
    let key = granted["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("tenants/studio/uploads/") && key.ends_with("/Smith___Jones_01.jpg"), "{key}");
    let url = granted["url"].as_str().unwrap();
    assert!(url.contains(&format!("/{bucket}/")) && url.contains("X-Amz-Signature="), "{url}");
    let expires: chrono::DateTime<chrono::Utc> = serde_json::from_value(granted["expires_at"].clone()).unwrap();
    let left = expires - chrono::Utc::now();
    assert!(left > chrono::TimeDelta::minutes(14) && left <= chrono::TimeDelta::minutes(15), "{left}");
    assert_eq!(granted["headers"], json!({"content-type": "image/jpeg", "content-length": photo.len().to_string()}));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut put = reqwest::Client::new().put(url).body(photo.clone());
    for (name, value) in granted["headers"].as_object().unwrap() {
        put = put.header(name, value.as_str().unwrap());
    }
    let res = put.send().await.unwrap();
    assert!(res.status().is_success(), "PUT to the presigned URL: {}", res.status());
    assert_eq!(store.get(&key).await.unwrap().as_deref(), Some(&photo[..]), "the original is in the bucket");
    assert_eq!(store.head(&key).await.unwrap().unwrap().content_type.as_deref(), Some("image/jpeg"));

    // Another tenant's URL is always under its own prefix: a key cannot be asked for.
    let (s, theirs) = call(&api, &other, "POST", "/v1/uploads", Some(ask.clone())).await;
    assert_eq!(s, StatusCode::CREATED, "{theirs}");
    assert!(theirs["key"].as_str().unwrap().starts_with("tenants/other/uploads/"), "{theirs}");
    let mut smuggled = ask.clone();
    smuggled["key"] = json!(key);
    let (s, body) = call(&api, &other, "POST", "/v1/uploads", Some(smuggled)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "the key is Fleet's to choose: {body}");
    // ... and it cannot process studio's upload either.
    let foreign = json!({"portfolio": "p", "images": [{"id": "x", "key": key}]});
    let (s, body) = call(&api, &other, "POST", "/v1/portfolios", Some(foreign)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // Too large, not an image, or no size: refused with the reason.
    for (bad, says) in [
        (json!({"name": "a.jpg", "content_type": "image/jpeg", "bytes": (64u64 << 20) + 1}), "bytes must be 1 to"),
        (json!({"name": "a.jpg", "content_type": "image/jpeg", "bytes": 0}), "bytes must be 1 to"),
        (json!({"name": "a.html", "content_type": "text/html", "bytes": 10}), "content_type"),
        (json!({"name": "a.svg", "content_type": "image/svg+xml", "bytes": 10}), "content_type"),
    ] {
        let (s, body) = call(&api, &studio, "POST", "/v1/uploads", Some(bad.clone())).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert!(body.to_string().contains(says), "{bad}: {body}");
    }

    // The uploaded original is analysed from the bucket, through the portfolio endpoint.
    let upload = json!({"portfolio": "direct", "images": [{"id": "people", "key": key}],
        "variants": {"widths": [320], "formats": ["jpeg"]}});
    let (s, accepted) = call(&api, &studio, "POST", "/v1/portfolios", Some(upload)).await;
    assert_eq!(s, StatusCode::CREATED, "{accepted}");
    // A job of another tenant that names studio's key anyway (enqueued past the API): the
    // worker refuses it before it reads the bucket.
    let stolen = env
        .client
        .enqueue_with(
            &fleet_jobs::catalogue::ImageAnalyze {
                image_id: "stolen".into(),
                key: key.clone(),
                portfolio: Some("direct".into()),
                allow_gps: false,
                vision: false,
            },
            fleet_jobs::EnqueueOptions { tenant: Some("other".into()), ..Default::default() },
        )
        .await
        .unwrap();
    let images = Images::new(db.pool.clone(), &ImageSettings { storage, ..Default::default() }).unwrap();
    let registry =
        Registry::builtin().register(images.analyzer()).register(images.variants()).register(images.selector());
    let mut cfg = env.config("images", 2);
    cfg.queues = vec![QueueConfig { name: "images".into(), concurrency: 2, fetch_batch: None, partitions: None }];
    let worker = env.worker(cfg, registry).await;
    fleet_tests::eventually(
        "the upload's three steps (analysis, selection, variants), and the other tenant's job refused",
        Duration::from_secs(120),
        || async {
            let stats = env.stats("images").await;
            assert!(stats.dead <= 1, "only the other tenant's job may fail: {stats:?}");
            (stats.succeeded == 3 && stats.dead == 1).then_some(())
        },
    )
    .await;
    let dead = env.client.dead_letters("images", 0, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, stolen.as_str());
    assert!(dead[0].reason.contains("outside the tenant's prefix"), "{}", dead[0].reason);
    assert_eq!(dead[0].job.attempts, 1, "refused once, not retried");
    let (s, view) = call(&api, &studio, "GET", "/v1/portfolios/direct", None).await;
    assert_eq!(s, StatusCode::OK, "{view}");
    let analysed = &view["images"][0];
    let decoded = image::load_from_memory(&photo).unwrap();
    assert_eq!(analysed["format"], "jpeg", "{analysed}");
    assert_eq!(
        (analysed["width"].as_u64(), analysed["height"].as_u64()),
        (Some(decoded.width().into()), Some(decoded.height().into()))
    );
    let variant = &analysed["variants"][0];
    assert_eq!((variant["width"].as_u64(), variant["format"].as_str()), (Some(320), Some("jpg")), "{analysed}");
    let written = store.get(variant["key"].as_str().unwrap()).await.unwrap().expect("the variant is in the bucket");
    assert_eq!(image::load_from_memory(&written).unwrap().width(), 320);
    worker.shutdown().await;
    db.drop_db().await;
    env.cleanup().await;
}

#[tokio::test]
async fn with_a_local_store_uploads_answer_501_and_say_why() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let api = app(
        ApiState::new(env.client.clone(), db.pool.clone()).with_upload_store(&StoreConfig::default()).unwrap(),
        1 << 20,
    );
    let key = auth::create_api_key(&db.pool, "studio", "app", &[auth::Role::Enqueue]).await.unwrap();
    let ask = json!({"name": "a.jpg", "content_type": "image/jpeg", "bytes": 10});
    let (s, body) = call(&api, &key, "POST", "/v1/uploads", Some(ask.clone())).await;
    assert_eq!(s, StatusCode::NOT_IMPLEMENTED, "{body}");
    assert!(body.to_string().contains("need an S3 store"), "{body}");
    let reader = auth::create_api_key(&db.pool, "studio", "ro", &[auth::Role::Operator]).await.unwrap();
    let (s, _) = call(&api, &reader, "POST", "/v1/uploads", Some(ask)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "an operator key is not an app: signing an upload needs the enqueue role");
    db.drop_db().await;
    env.cleanup().await;
}
