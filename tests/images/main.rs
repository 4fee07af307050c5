//! Image jobs end to end: uploads in a local object store, a worker with the image
//! kinds, results in PostgreSQL and variants back in the store, checked by decoding
//! them again with the `image` crate. Hostile uploads (a decompression bomb, a truncated
//! JPEG, a HEIC named .jpg) each end as one clear dead letter while the others go on.

use fleet_images::jobs::{ImageSettings, Images};
use fleet_images::storage::{LocalConfig, StoreConfig};
use fleet_jobs::EnqueueOptions;
use fleet_jobs::catalogue::{ImageAnalyze, ImageVariants};
use fleet_tests::{TestDb, TestEnv, n_final};
use fleet_worker::{QueueConfig, Registry};
use std::path::{Path, PathBuf};
use std::time::Duration;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/images");

fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(Path::new(FIXTURES).join(rel)).unwrap_or_else(|e| panic!("fixture {rel}: {e}"))
}

/// A store folder of the test's own, removed at the end.
struct Store(PathBuf);

impl Store {
    fn new(name: &str) -> Store {
        let dir = std::env::temp_dir().join(format!("fleet-images-{name}-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Store(dir)
    }
    fn put(&self, key: &str, bytes: &[u8]) {
        let path = self.0.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    fn get(&self, key: &str) -> Vec<u8> {
        std::fs::read(self.0.join(key)).unwrap_or_else(|e| panic!("object {key}: {e}"))
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A PNG whose header claims 50,000 × 50,000 pixels, followed by a little deflate data:
/// what a decompression bomb looks like before its pixels are inflated.
fn png_bomb() -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&50_000u32.to_be_bytes());
    ihdr.extend_from_slice(&50_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit grey, no interlace
    chunk(&mut png, b"IHDR", &ihdr);
    // A stored deflate stream of zeros (a real bomb would compress 2.5 GB into ~2.4 MB).
    chunk(&mut png, b"IDAT", &[0x78, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01]);
    chunk(&mut png, b"IEND", &[]);
    png
}

fn settings(store: &Store) -> ImageSettings {
    ImageSettings { storage: StoreConfig::Local(LocalConfig { root: store.0.clone() }), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_analysed_and_varied_and_hostile_ones_end_as_one_clear_dead_letter_each() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let store = Store::new("e2e");
    store.put("tenants/studio/uploads/gps.jpg", &fixture("exif/gps/DSCN0010.jpg"));
    store.put("tenants/studio/uploads/gps-allowed.jpg", &fixture("exif/gps/DSCN0010.jpg"));
    store.put("tenants/studio/uploads/people.jpg", &fixture("formats/people.jpg"));
    store.put("tenants/studio/uploads/tree.webp", &fixture("formats/tree.webp"));
    store.put("tenants/studio/uploads/really-a-png.jpg", &fixture("pngsuite/basn6a08.png"));
    store.put("tenants/studio/uploads/bomb.png", &png_bomb());
    let people = fixture("formats/people.jpg");
    store.put("tenants/studio/uploads/truncated.jpg", &people[..people.len() / 2]);
    store.put("tenants/studio/uploads/heic-named.jpg", &fixture("formats/tree.heic"));

    let tenant = EnqueueOptions { tenant: Some("studio".into()), ..Default::default() };
    let analyze = |id: &str, key: &str, allow_gps: bool| {
        (
            ImageAnalyze {
                image_id: id.into(),
                key: format!("tenants/studio/uploads/{key}"),
                portfolio: Some("smith-jones".into()),
                allow_gps,
                vision: false,
            },
            tenant.clone(),
        )
    };
    let good = env
        .client
        .enqueue_bulk_with(vec![
            analyze("gps", "gps.jpg", false),
            analyze("gps-allowed", "gps-allowed.jpg", true),
            analyze("people", "people.jpg", false),
            analyze("tree", "tree.webp", false),
            analyze("png", "really-a-png.jpg", false),
        ])
        .await
        .unwrap();
    let variants = |id: &str, key: &str| {
        (
            ImageVariants {
                image_id: id.into(),
                key: format!("tenants/studio/uploads/{key}"),
                widths: Some(vec![320, 640, 1280, 2048]),
                formats: None,
                watermark: None,
                keep_metadata: None,
            },
            tenant.clone(),
        )
    };
    let varied =
        env.client.enqueue_bulk_with(vec![variants("gps", "gps.jpg"), variants("people", "people.jpg")]).await.unwrap();
    let bad = env
        .client
        .enqueue_bulk_with(vec![
            analyze("bomb", "bomb.png", false),
            analyze("truncated", "truncated.jpg", false),
            analyze("heic", "heic-named.jpg", false),
        ])
        .await
        .unwrap();

    let images = Images::new(db.pool.clone(), &settings(&store)).unwrap();
    let registry = Registry::new().register(images.analyzer()).register(images.variants());
    let mut cfg = env.config("images", 4);
    cfg.queues = vec![QueueConfig { name: "images".into(), concurrency: 4, fetch_batch: None, partitions: None }];
    let worker = env.worker(cfg, registry).await;
    let mut rx = worker.events();
    n_final(&mut rx, 10, Duration::from_secs(120)).await;

    let stats = env.stats("images").await;
    assert_eq!((stats.succeeded, stats.dead), (7, 3), "{stats:?}");
    // Each hostile upload: one attempt, one dead letter, a reason that says what is wrong.
    let dead = env.client.dead_letters("images", 0, 10).await.unwrap();
    let reason = |id: &fleet_jobs::JobId| {
        let d = dead.iter().find(|d| d.id == id.as_str()).expect("a dead letter");
        assert_eq!(d.job.attempts, 1, "no retries for {}: {}", d.id, d.reason);
        d.reason.clone()
    };
    assert!(reason(&bad[0]).contains("too large"), "{}", reason(&bad[0]));
    assert!(reason(&bad[1]).contains("truncated"), "{}", reason(&bad[1]));
    assert!(reason(&bad[2]).contains("unsupported format: heic"), "{}", reason(&bad[2]));
    let _ = (&good, &varied);

    // Analyses: the format from the bytes, GPS withheld unless allowed.
    type Row = (String, String, i32, i32, bool, serde_json::Value, f64);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT image_id, format, width, height, gps_present, metadata, sharpness FROM image_analyses \
         WHERE tenant = 'studio' ORDER BY image_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let row = |id: &str| rows.iter().find(|r| r.0 == id).unwrap_or_else(|| panic!("analysis of {id}"));
    assert_eq!(rows.len(), 5);
    assert_eq!(row("png").1, "png", "detected from the bytes, not the .jpg name");
    assert_eq!(row("tree").1, "webp");
    assert_eq!(row("people").1, "jpeg");
    let gps = row("gps");
    assert!(gps.4, "the photo had a position");
    assert!(gps.5["gps"].is_null(), "withheld by default: {}", gps.5);
    let allowed = row("gps-allowed");
    let lat = allowed.5["gps"]["latitude"].as_f64().expect("kept when the tenant allows it");
    assert!((-90.0..=90.0).contains(&lat) && lat != 0.0);
    assert_eq!(gps.5["make"].as_str().map(str::trim), Some("NIKON"));

    // Variants: every width the source allows × JPEG and WebP, decoded again.
    let rows: Vec<(String, i32, i32, String, String)> = sqlx::query_as(
        "SELECT image_id, width, height, format, key FROM image_variants WHERE tenant = 'studio' ORDER BY image_id, format, width",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for (id, src) in [("gps", "exif/gps/DSCN0010.jpg"), ("people", "formats/people.jpg")] {
        let source = image::load_from_memory(&fixture(src)).unwrap();
        let mine: Vec<_> = rows.iter().filter(|r| r.0 == id).collect();
        let expected_widths: std::collections::BTreeSet<u32> =
            [320u32, 640, 1280, 2048].iter().map(|w| (*w).min(source.width())).collect();
        assert_eq!(mine.len(), expected_widths.len() * 2, "{id}: {mine:?}");
        for (_, width, height, format, key) in mine {
            assert!(key.starts_with("tenants/studio/variants/"), "variants live under the tenant's prefix: {key}");
            let bytes = store.get(key);
            let got = image::load_from_memory(&bytes).unwrap();
            assert_eq!((got.width() as i32, got.height() as i32), (*width, *height));
            let want = if format == "jpg" { image::ImageFormat::Jpeg } else { image::ImageFormat::WebP };
            assert_eq!(image::guess_format(&bytes).unwrap(), want);
            let aspect = f64::from(source.width()) / f64::from(source.height());
            assert!((f64::from(*width) / f64::from(*height) - aspect).abs() < 0.02, "aspect kept");
            assert!(!bytes.windows(6).any(|w| w == b"Exif\0\0"), "no EXIF in {key}");
            assert!(!bytes.windows(4).any(|w| w == b"EXIF" || w == b"XMP "), "no metadata chunks in {key}");
        }
    }
    worker.shutdown().await;
    db.drop_db().await;
    env.cleanup().await;
}

/// Waits for workflow `id` to end (with a timeout) and returns its status.
async fn workflow_end(env: &TestEnv, id: &str) -> fleet_jobs::workflows::WorkflowStatus {
    fleet_tests::eventually(&format!("workflow {id} to end"), Duration::from_secs(180), || async {
        env.client.workflow(id).await.unwrap().filter(|w| w.state.is_final())
    })
    .await
}

/// The workflow events (`workflow.step.*`, `workflow.finished`) on `tenant`'s stream, as
/// `(type, step or "")` of workflow `id`.
async fn stream_of(env: &TestEnv, tenant: &str, id: &str) -> Vec<(String, String)> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(fleet_jobs::events::stream_key(&env.prefix, tenant))
        .arg("-")
        .arg("+")
        .query_async(&mut env.client.connection())
        .await
        .unwrap();
    entries
        .iter()
        .flat_map(|(_, fields)| fields.iter())
        .filter_map(|(_, v)| serde_json::from_str::<serde_json::Value>(v).ok())
        .filter(|e| e["data"]["workflow"] == id)
        .map(|e| {
            (e["type"].as_str().unwrap_or_default().to_owned(), e["data"]["step"].as_str().unwrap_or("").to_owned())
        })
        .collect()
}

/// The image jobs' registry (with `probe` for callbacks) and a worker on `images` and
/// `callbacks`.
async fn portfolio_worker(env: &TestEnv, images: &Images) -> fleet_worker::RunningWorker {
    let registry =
        Registry::builtin().register(images.analyzer()).register(images.variants()).register(images.selector());
    let mut cfg = env.config("images", 2);
    cfg.queues = vec![
        QueueConfig { name: "images".into(), concurrency: 2, fetch_batch: None, partitions: None },
        QueueConfig { name: "callbacks".into(), concurrency: 1, fetch_batch: None, partitions: None },
    ];
    env.worker(cfg, registry).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portfolio_upload_is_a_workflow_and_only_the_sharpest_near_duplicate_gets_variants() {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use fleet_scheduler::api::{ApiState, app, auth};
    use serde_json::{Value, json};
    use tower::ServiceExt;

    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let store = Store::new("portfolio");
    let people = fixture("formats/people.jpg");
    store.put("tenants/studio/up/people.jpg", &people);
    // The same photo, halved, softened, re-encoded at JPEG q60 and 10 % brighter: a
    // near-duplicate, and a less sharp one.
    let copy = image::load_from_memory(&people).unwrap();
    let copy =
        copy.resize(copy.width() / 2, copy.height() / 2, image::imageops::FilterType::Triangle).blur(1.5).brighten(12);
    let mut reencoded = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut reencoded, 60).encode_image(&copy.to_rgb8()).unwrap();
    store.put("tenants/studio/up/people-copy.jpg", &reencoded);
    store.put("tenants/studio/up/tree.webp", &fixture("formats/tree.webp"));
    store.put("tenants/studio/up/dog.jpg", &fixture("formats/image-rs_jpg_progressive_cat.jpg"));

    let key = auth::create_api_key(&db.pool, "studio", "uploads", &[auth::Role::Enqueue]).await.unwrap();
    let api = app(
        ApiState::new(env.client.clone(), db.pool.clone())
            .with_tenancy(fleet_scheduler::tenancy::TenancyConfig::for_tests()),
        1 << 20,
    );
    let call = |method: &str, uri: &str, body: Option<Value>| {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty))
            .unwrap();
        let api = api.clone();
        async move {
            let res = api.oneshot(req).await.unwrap();
            let status = res.status();
            let bytes = axum::body::to_bytes(res.into_body(), 1 << 22).await.unwrap();
            (status, serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null))
        }
    };
    // Ids are the caller's own names, any characters: the steps are named by position.
    let upload = json!({
        "portfolio": "smith-jones",
        "images": [
            {"id": "people", "key": "tenants/studio/up/people.jpg"},
            {"id": "people copy (2)", "key": "tenants/studio/up/people-copy.jpg"},
            {"id": "tree", "key": "tenants/studio/up/tree.webp"},
            {"id": "cat", "key": "tenants/studio/up/dog.jpg"}
        ],
        "variants": {"widths": [320, 640], "formats": ["webp"]},
        "on_complete": {"kind": "probe", "args": {"do": "succeed", "tag": "portfolio-processed"}, "queue": "callbacks"}
    });
    let (s, dup) = call(
        "POST",
        "/v1/portfolios",
        Some(json!({"portfolio": "x", "images": [
        {"id": "a", "key": "tenants/studio/k"}, {"id": "a", "key": "tenants/studio/k2"}]})),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{dup}");
    // Variant requests stay within the documented maxima (one request cannot ask for
    // thousands of variants per image).
    for variants in [
        json!({"widths": (1..=9).map(|i| i * 100).collect::<Vec<_>>()}),
        json!({"widths": [100_000]}),
        json!({"widths": [0]}),
        json!({"formats": ["png"]}),
    ] {
        let (s, body) = call(
            "POST",
            "/v1/portfolios",
            Some(json!({"portfolio": "x", "images": [{"id": "a", "key": "tenants/studio/k"}], "variants": variants})),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{variants}: {body}");
    }
    // Over the cap: refused, naming it.
    let many: Vec<Value> =
        (0..5001).map(|i| json!({"id": format!("i{i}"), "key": format!("tenants/studio/{i}.jpg")})).collect();
    let (s, body) = call("POST", "/v1/portfolios", Some(json!({"portfolio": "x", "images": many}))).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("1 to 5000 images"), "{body}");
    assert_eq!(env.stats("images").await.enqueued, 0, "no refused request enqueued anything");

    let (s, accepted) = call("POST", "/v1/portfolios", Some(upload)).await;
    assert_eq!(s, StatusCode::CREATED, "{accepted}");
    assert_eq!((accepted["images"].clone(), accepted["steps"].clone()), (json!(4), json!(6)), "{accepted}");
    let id = accepted["workflow"].as_str().unwrap().to_owned();
    // Followed step by step: at first the analyses are enqueued and the rest waits.
    let (s, view) = call("GET", &format!("/v1/workflows/{id}"), None).await;
    assert_eq!(s, StatusCode::OK, "{view}");
    let state_of = |view: &Value, step: &str| {
        view["steps"].as_array().unwrap().iter().find(|s| s["name"] == step).map(|s| s["state"].clone())
    };
    assert_eq!(state_of(&view, "analyze-0"), Some(json!("enqueued")), "{view}");
    assert_eq!(state_of(&view, "select"), Some(json!("waiting")), "{view}");
    assert_eq!(state_of(&view, "on-complete"), Some(json!("waiting")), "{view}");

    let images = Images::new(db.pool.clone(), &settings(&store)).unwrap();
    let worker = portfolio_worker(&env, &images).await;
    let end = workflow_end(&env, &id).await;
    assert_eq!(end.state, fleet_jobs::workflows::WorkflowState::Succeeded, "{end:?}");

    // Every step, through the API: four analyses, the selection, two variants steps (the
    // sharper duplicate's and the distinct photos'), and the callback.
    let (s, view) = call("GET", &format!("/v1/workflows/{id}"), None).await;
    assert_eq!(s, StatusCode::OK, "{view}");
    let names: Vec<&str> = view["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "analyze-0",
            "analyze-1",
            "analyze-2",
            "analyze-3",
            "on-complete",
            "select",
            "variants-0",
            "variants-2",
            "variants-3"
        ],
        "{view}"
    );
    assert!(view["steps"].as_array().unwrap().iter().all(|s| s["state"] == "succeeded"), "{view}");
    assert_eq!((view["total"].clone(), view["open"].clone(), view["failed"].clone()), (json!(9), json!(0), json!(0)));
    let step = |name: &str| view["steps"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap().clone();
    let analysis = step("analyze-1")["result"].clone();
    assert_eq!(analysis["image_id"], "people copy (2)", "{analysis}");
    let selection = step("select")["result"].clone();
    assert_eq!(selection["kept"], json!(["people", "tree", "cat"]), "{selection}");
    assert_eq!(selection["dropped"], json!([{"id": "people copy (2)", "duplicate_of": "people"}]), "{selection}");
    assert_eq!((selection["unanalysed"].clone(), selection["truncated"].clone()), (json!([]), json!(false)));
    assert!(
        step("analyze-0")["result"]["sharpness"].as_f64().unwrap() > analysis["sharpness"].as_f64().unwrap(),
        "the kept one is the sharper: {view}"
    );
    let made = step("variants-0")["result"].clone();
    assert_eq!((made["image_id"].clone(), made["variants"].as_array().unwrap().len()), (json!("people"), 2), "{made}");
    // Each step's job is readable where the workflow says, as the tenant's.
    let cb = step("on-complete");
    let job = env.client.job(cb["queue"].as_str().unwrap(), cb["job_id"].as_str().unwrap()).await.unwrap().unwrap();
    assert_eq!(job.envelope.as_ref().unwrap().tenant.as_deref(), Some("studio"));

    // The callback ran once, after the last variant was written.
    let callbacks = env.stats("callbacks").await;
    assert_eq!((callbacks.enqueued, callbacks.succeeded), (1, 1), "{callbacks:?}");
    let last_variant: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT max(created_at) FROM image_variants WHERE tenant = 'studio'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let enqueued_at = job.envelope.unwrap().enqueued_at;
    assert!(enqueued_at as i64 >= last_variant.timestamp_millis(), "{enqueued_at} vs {last_variant}");

    // The stream told the tenant of every step and of the end.
    let events = stream_of(&env, "studio", &id).await;
    for name in &names {
        assert!(events.contains(&("workflow.step.succeeded".into(), name.to_string())), "{name}: {events:?}");
    }
    assert_eq!(events.iter().filter(|e| e.1 == "on-complete").count(), 1, "{events:?}");
    assert!(events.contains(&("workflow.finished".into(), String::new())), "{events:?}");

    let (s, view) = call("GET", "/v1/portfolios/smith-jones", None).await;
    assert_eq!(s, StatusCode::OK, "{view}");
    assert_eq!(view["images"].as_array().unwrap().len(), 4);
    assert_eq!(
        view["near_duplicates"],
        json!([["people", "people copy (2)"]]),
        "only the copy matches: {}",
        view["near_duplicates"]
    );
    for img in view["images"].as_array().unwrap() {
        let formats: Vec<&str> =
            img["variants"].as_array().unwrap().iter().map(|v| v["format"].as_str().unwrap()).collect();
        if img["id"] == "people copy (2)" {
            assert!(formats.is_empty(), "no variants for the softer duplicate: {img}");
        } else {
            assert!(!formats.is_empty() && formats.iter().all(|f| *f == "webp"), "{img}");
        }
    }
    // Paged, sharpest first: two pages of two, every image once, the groups on each page.
    let (s, first) = call("GET", "/v1/portfolios/smith-jones?limit=2", None).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    let next = first["next"].as_str().expect("a next page").to_owned();
    let (s, second) = call("GET", &format!("/v1/portfolios/smith-jones?limit=2&cursor={next}"), None).await;
    assert_eq!(s, StatusCode::OK, "{second}");
    assert!(second.get("next").is_none(), "the last page: {second}");
    let ids = |page: &Value| -> Vec<String> {
        page["images"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect()
    };
    let mut paged = [ids(&first), ids(&second)].concat();
    let sharpness: Vec<f64> = [&first, &second]
        .iter()
        .flat_map(|p| p["images"].as_array().unwrap().iter().map(|i| i["sharpness"].as_f64().unwrap()))
        .collect();
    assert!(sharpness.windows(2).all(|w| w[0] >= w[1]), "sharpest first across pages: {sharpness:?}");
    paged.sort();
    assert_eq!(paged, ["cat", "people", "people copy (2)", "tree"]);
    assert_eq!(second["near_duplicates"], json!([["people", "people copy (2)"]]));
    for bad in ["limit=0", "limit=501", "cursor=not-a-cursor"] {
        let (s, body) = call("GET", &format!("/v1/portfolios/smith-jones?{bad}"), None).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
    }
    let (s, _) = call("GET", "/v1/portfolios/nope", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    worker.shutdown().await;
    db.drop_db().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vision_falls_back_and_a_429_holds_the_provider_back_for_the_whole_fleet() {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let store = Store::new("vision");
    store.put("up/a.jpg", &fixture("formats/people.jpg"));
    store.put("up/b.jpg", &fixture("exif/gps/DSCN0010.jpg"));

    // "busy" speaks Azure's API and answers 429 with Retry-After 60; "labels" speaks
    // Google's and knows a wedding when it sees one.
    let busy_hits = Arc::new(AtomicUsize::new(0));
    let hits = busy_hits.clone();
    let busy = axum::Router::new().route(
        "/computervision/imageanalysis:analyze",
        axum::routing::post(move || {
            hits.fetch_add(1, Ordering::SeqCst);
            async { (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "60")], "slow down").into_response() }
        }),
    );
    let labels = axum::Router::new().route(
        "/v1/images:annotate",
        axum::routing::post(|| async {
            axum::Json(serde_json::json!({"responses": [{"labelAnnotations": [
                {"description": "Wedding cake", "score": 0.96},
                {"description": "Dance", "score": 0.81},
                {"description": "Blurry thing", "score": 0.2}
            ]}]}))
        }),
    );
    let serve = |router: axum::Router| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        url
    };
    let (busy_url, labels_url) = (serve(busy).await, serve(labels).await);

    let mut settings = settings(&store);
    settings.vision = Some(
        toml::from_str(&format!(
            r#"allow = ["127.0.0.0/8"]
               [[providers]]
               name = "busy"
               kind = "azure"
               base_url = "{busy_url}"
               api_key = "azure-key-never-logged"
               [[providers]]
               name = "labels"
               kind = "google"
               base_url = "{labels_url}"
               api_key = "google-key-never-logged"
               min_confidence = 0.5"#
        ))
        .unwrap(),
    );
    let rules: std::collections::BTreeMap<String, fleet_jobs::limits::LimitSpec> =
        toml::from_str("[\"ai:provider:*\"]\nrate = 100\nbreaker_failures = 5\n").unwrap();
    let images = Images::new(db.pool.clone(), &settings).unwrap();
    let registry = Registry::new().register(images.analyzer());
    let mut cfg = env.config("images", 1);
    cfg.queues = vec![QueueConfig { name: "images".into(), concurrency: 1, fetch_batch: None, partitions: None }];
    // The handler takes each provider's key through the worker's limits.
    cfg.limits = rules;
    let worker = env.worker(cfg, registry).await;
    let mut rx = worker.events();
    for (id, key) in [("a", "up/a.jpg"), ("b", "up/b.jpg")] {
        let args =
            ImageAnalyze { image_id: id.into(), key: key.into(), portfolio: None, allow_gps: false, vision: true };
        env.client.enqueue(&args).await.unwrap();
        n_final(&mut rx, 1, Duration::from_secs(60)).await;
    }
    assert_eq!(env.stats("images").await.succeeded, 2, "a provider outage never fails the analysis");
    let rows: Vec<(String, serde_json::Value)> =
        sqlx::query_as("SELECT image_id, vision FROM image_analyses ORDER BY image_id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    for (id, v) in &rows {
        assert_eq!(v["status"], "analyzed", "{id}: {v}");
        assert_eq!(v["provider"], "labels", "{id}: fell back to the second provider");
        assert_eq!(v["category"], "reception", "{id}: {v}");
        let tags: Vec<&str> = v["tags"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(tags, ["Wedding cake", "Dance"], "below-threshold labels dropped");
        assert!(!v.to_string().contains("never-logged"), "no API key in the stored outcome");
    }
    assert_eq!(rows[0].1["skipped"][0]["reason"]["kind"], "rate_limited");
    assert_eq!(
        rows[1].1["skipped"][0]["reason"]["kind"], "held_back",
        "the 429's Retry-After holds the provider back fleet-wide: {}",
        rows[1].1
    );
    assert_eq!(busy_hits.load(Ordering::SeqCst), 1, "the rate-limited provider is not called again");
    worker.shutdown().await;
    db.drop_db().await;
    env.cleanup().await;
}

mod metadata_and_placeholders;
mod portfolio_workflow;
mod presigned_uploads;
