//! Hostile-tenant cases: handlers. The job's envelope tenant (set by the API from the
//! caller's key) is the authority: tenant B's jobs that name tenant A's sources, bookings
//! or object keys give up exactly as for a missing id, and A's rows stay as they were;
//! a tenant names only object keys under `tenants/<tenant>/`, and its variants are
//! written there, so no tenant reads another's uploads (their EXIF) or variants.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use fleet_calendar::jobs::CalendarSyncHandler;
use fleet_comms::jobs::SyncSource;
use fleet_images::jobs::{ImageSettings, Images};
use fleet_images::storage::{LocalConfig, StoreConfig};
use fleet_jobs::backend::Outcome;
use fleet_jobs::catalogue::{CalendarPush, CalendarSync, CommsSync, ImageAnalyze, ImageVariants, WatermarkArgs};
use fleet_jobs::{EnqueueOptions, JobArgs, JobId};
use fleet_scheduler::api::{ApiState, app, auth};
use fleet_tests::{TestDb, TestEnv};
use fleet_worker::{QueueConfig, Registry, RunningWorker};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tower::ServiceExt;

const A: &str = "acme";
const B: &str = "rival";
const WAIT: Duration = Duration::from_secs(60);

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/images");

fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(Path::new(FIXTURES).join(rel)).unwrap_or_else(|e| panic!("fixture {rel}: {e}"))
}

fn as_tenant(tenant: &str) -> EnqueueOptions {
    EnqueueOptions { tenant: Some(tenant.to_owned()), ..Default::default() }
}

/// A local object store of the test's own, removed at the end.
struct Store(PathBuf);

impl Store {
    fn new() -> Store {
        let dir = std::env::temp_dir().join(format!("fleet-tenants-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Store(dir)
    }
    fn put(&self, key: &str, bytes: &[u8]) {
        let path = self.0.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    fn exists(&self, key: &str) -> bool {
        self.0.join(key).is_file()
    }
    fn settings(&self) -> ImageSettings {
        ImageSettings { storage: StoreConfig::Local(LocalConfig { root: self.0.clone() }), ..Default::default() }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A worker serving `queues` with `registry`.
async fn worker(env: &TestEnv, queues: &[&str], registry: Registry) -> RunningWorker {
    let mut cfg = env.config(queues[0], 2);
    cfg.queues = queues
        .iter()
        .map(|q| QueueConfig { name: (*q).to_owned(), concurrency: 2, fetch_batch: None, partitions: None })
        .collect();
    env.worker(cfg, registry).await
}

/// Enqueues each job, waits for all to finish, and returns the reason each one died with
/// (`None` when it succeeded).
async fn outcomes<J: JobArgs>(
    env: &TestEnv,
    worker: &RunningWorker,
    jobs: Vec<(J, EnqueueOptions)>,
) -> Vec<Option<String>> {
    let mut rx = worker.events();
    let mut ids: Vec<JobId> = Vec::new();
    for (args, opts) in jobs {
        ids.push(env.client.enqueue_with(&args, opts).await.unwrap());
    }
    // Jobs finish in any order: wait until every one has had its final event.
    let mut pending: std::collections::HashSet<&str> = ids.iter().map(|id| id.0.as_str()).collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !pending.is_empty() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(ev)) if matches!(ev.outcome, Outcome::Succeeded | Outcome::Dead | Outcome::Expired) => {
                pending.remove(ev.id.as_str());
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("worker events: {e}"),
            Err(_) => panic!("jobs {pending:?} did not finish within {WAIT:?}"),
        }
    }
    let dead = env.client.dead_letters(&J::options().queue, 0, 1000).await.unwrap();
    ids.iter().map(|id| dead.iter().find(|d| d.id == id.0).map(|d| d.reason.clone())).collect()
}

async fn insert_calendar_source(db: &TestDb, tenant: &str, id: &str) {
    sqlx::query(
        "INSERT INTO calendar_sources (id, tenant, supplier, kind, url) VALUES ($1, $2, 'venue', 'ics', 'http://127.0.0.1:9/cal.ics')",
    )
    .bind(id)
    .bind(tenant)
    .execute(&db.pool)
    .await
    .unwrap();
}

/// What a user sees of a calendar source: (last sync, last error, state).
async fn calendar_source_row(db: &TestDb, id: &str) -> (Option<chrono::DateTime<chrono::Utc>>, Option<String>, Value) {
    sqlx::query_as("SELECT last_sync_at, last_error, state FROM calendar_sources WHERE id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calendar_sync_of_b_naming_a_s_source_gives_up_as_not_found_and_a_s_source_is_untouched() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    insert_calendar_source(&db, A, "cal-acme").await;
    let before = calendar_source_row(&db, "cal-acme").await;
    let handler = CalendarSyncHandler::new(db.pool.clone(), None);
    let worker = worker(&env, &["calendar"], Registry::new().register(handler)).await;

    let reasons = outcomes(
        &env,
        &worker,
        vec![
            (CalendarSync { source_id: "cal-acme".into() }, as_tenant(B)),
            (CalendarSync { source_id: "cal-missing".into() }, as_tenant(B)),
        ],
    )
    .await;
    let (theirs, missing) = (reasons[0].clone().expect("dead"), reasons[1].clone().expect("dead"));
    assert!(theirs.contains("not found"), "{theirs}");
    assert_eq!(
        theirs.replace("cal-acme", "<id>"),
        missing.replace("cal-missing", "<id>"),
        "another tenant's source reads exactly like a missing one"
    );
    assert_eq!(calendar_source_row(&db, "cal-acme").await, before, "A's source was not synced nor marked");

    // A's own job does reach its source (the guard refuses the loopback URL, which the
    // source records): the scope is by tenant, not a refusal of everything.
    env.client.enqueue_with(&CalendarSync { source_id: "cal-acme".into() }, as_tenant(A)).await.unwrap();
    let error = fleet_tests::eventually("A's own sync to record its outcome", WAIT, || async {
        calendar_source_row(&db, "cal-acme").await.1
    })
    .await;
    assert!(!error.contains("not found"), "{error}");

    worker.shutdown().await;
    db.drop_db().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calendar_push_of_b_for_a_s_booking_gives_up_as_not_found_and_the_booking_is_untouched() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    insert_calendar_source(&db, A, "cal-acme").await;
    sqlx::query(
        "INSERT INTO calendar_bookings (tenant, id, supplier, target_source, summary, start_at, end_at) \
         VALUES ($1, 'bk-1', 'venue', 'cal-acme', 'Smith wedding', '2027-06-12T12:00:00Z', '2027-06-12T18:00:00Z')",
    )
    .bind(A)
    .execute(&db.pool)
    .await
    .unwrap();
    let booking = || async {
        sqlx::query_as::<_, (String, Option<String>, Option<i64>, Option<String>)>(
            "SELECT push_state, push_error, pushed_version, remote_href FROM calendar_bookings WHERE tenant = $1 AND id = 'bk-1'",
        )
        .bind(A)
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    let before = booking().await;
    let handler = CalendarSyncHandler::new(db.pool.clone(), None);
    let worker = worker(&env, &["calendar"], Registry::new().register(handler.push_handler())).await;

    let reasons = outcomes(
        &env,
        &worker,
        vec![
            // B's envelope, A named in the args: the envelope is the authority.
            (CalendarPush { tenant: A.into(), booking_id: "bk-1".into() }, as_tenant(B)),
            // B's envelope and args, A's booking id.
            (CalendarPush { tenant: B.into(), booking_id: "bk-1".into() }, as_tenant(B)),
            // A booking that does not exist at all.
            (CalendarPush { tenant: B.into(), booking_id: "bk-none".into() }, as_tenant(B)),
        ],
    )
    .await;
    let reasons: Vec<String> = reasons.into_iter().map(|r| r.expect("every push gave up")).collect();
    assert!(reasons[0].contains("not found"), "{reasons:?}");
    assert_eq!(reasons[0], reasons[1], "{reasons:?}");
    assert_eq!(reasons[1].replace("bk-1", "<id>"), reasons[2].replace("bk-none", "<id>"), "indistinguishable");
    assert_eq!(booking().await, before, "A's booking was neither pushed nor marked failed");

    worker.shutdown().await;
    db.drop_db().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comms_sync_of_b_naming_a_s_source_gives_up_as_not_found_and_a_s_source_is_untouched() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    sqlx::query("INSERT INTO comms_sources (id, tenant, kind, config) VALUES ('app-acme', $1, 'in_app', '{}')")
        .bind(A)
        .execute(&db.pool)
        .await
        .unwrap();
    let source = || async {
        sqlx::query_as::<_, (Option<chrono::DateTime<chrono::Utc>>, Option<String>, Option<Value>)>(
            "SELECT last_sync_at, last_error, last_report FROM comms_sources WHERE id = 'app-acme'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    let before = source().await;
    let worker = worker(&env, &["comms"], Registry::new().register(SyncSource::new(db.pool.clone(), None))).await;

    let reasons = outcomes(
        &env,
        &worker,
        vec![
            (CommsSync { source_id: "app-acme".into() }, as_tenant(B)),
            (CommsSync { source_id: "app-missing".into() }, as_tenant(B)),
        ],
    )
    .await;
    let (theirs, missing) = (reasons[0].clone().expect("dead"), reasons[1].clone().expect("dead"));
    assert!(theirs.contains("not found"), "{theirs}");
    assert_eq!(theirs.replace("app-acme", "<id>"), missing.replace("app-missing", "<id>"), "indistinguishable");
    assert_eq!(source().await, before, "A's source was not synced nor marked");
    let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM comms_entries WHERE tenant = $1")
        .bind(B)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(entries, 0, "nothing of A's landed in B's timeline");

    worker.shutdown().await;
    db.drop_db().await;
    env.cleanup().await;
}

/// The API of `db` and `env`, called with `tenant`'s key.
async fn api_as(
    env: &TestEnv,
    db: &TestDb,
    tenant: &str,
) -> impl Fn(&str, &str, Option<Value>) -> std::pin::Pin<Box<dyn std::future::Future<Output = (StatusCode, Value)> + Send>>
{
    let key = auth::create_api_key(&db.pool, tenant, "uploads", &[auth::Role::Enqueue]).await.unwrap();
    let api = app(ApiState::new(env.client.clone(), db.pool.clone()), 1 << 20);
    move |method: &str, uri: &str, body: Option<Value>| {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty))
            .unwrap();
        let api = api.clone();
        Box::pin(async move {
            let res = api.oneshot(req).await.unwrap();
            let status = res.status();
            let bytes = axum::body::to_bytes(res.into_body(), 1 << 22).await.unwrap();
            (status, serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_cannot_put_a_s_object_keys_in_a_portfolio() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let call = api_as(&env, &db, B).await;
    let portfolio = |key: &str| json!({"portfolio": "p", "images": [{"id": "x", "key": key}]});

    for key in [
        "tenants/acme/uploads/gps.jpg",
        "uploads/gps.jpg",
        "tenants/rival/../acme/uploads/gps.jpg",
        "tenants/rival/%2e%2e/acme/uploads/gps.jpg",
        "tenants/rival%2f..%2facme/uploads/gps.jpg",
        "/tenants/rival/x.jpg",
        "tenants/rival//x.jpg",
        "tenants/rival\\..\\acme\\uploads\\gps.jpg",
        "tenants/rival/\u{ff0e}\u{ff0e}/acme/uploads/gps.jpg",
        "tenants/rival/x\u{0}.jpg",
        "tenants/rivalry/x.jpg",
    ] {
        let (s, body) = call("POST", "/v1/portfolios", Some(portfolio(key))).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{key:?}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("tenants/rival/"), "the message names the required prefix: {body}");
    }
    // A's watermark on B's own upload: refused too.
    let (s, body) = call(
        "POST",
        "/v1/portfolios",
        Some(json!({"portfolio": "p", "images": [{"id": "x", "key": "tenants/rival/x.jpg"}],
            "variants": {"watermark": {"key": "tenants/acme/logo.png"}}})),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let stats = env.stats("images").await;
    assert_eq!((stats.ready, stats.scheduled), (0, 0), "no refused request enqueued anything");

    // B's own keys are fine.
    let (s, body) = call("POST", "/v1/portfolios", Some(portfolio("tenants/rival/uploads/x.jpg"))).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    drop(call);
    db.drop_db().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_jobs_of_b_naming_a_s_keys_give_up_and_read_nothing_of_a_s() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let store = Store::new();
    // A's photo with a GPS position, and A's watermark.
    store.put("tenants/acme/uploads/gps.jpg", &fixture("exif/gps/DSCN0010.jpg"));
    store.put("tenants/acme/logo.png", &fixture("pngsuite/basn6a08.png"));
    store.put("tenants/rival/uploads/mine.jpg", &fixture("formats/people.jpg"));
    let images = Images::new(db.pool.clone(), &store.settings()).unwrap();
    let worker =
        worker(&env, &["images"], Registry::new().register(images.analyzer()).register(images.variants())).await;

    // Jobs that bypass the API's check (as a batch callback or a future route might).
    let analyze = |key: &str| ImageAnalyze {
        image_id: "stolen".into(),
        key: key.into(),
        portfolio: Some("p".into()),
        allow_gps: true,
        vision: false,
    };
    let reasons = outcomes(
        &env,
        &worker,
        vec![
            (analyze("tenants/acme/uploads/gps.jpg"), as_tenant(B)),
            (analyze("tenants/rival/../acme/uploads/gps.jpg"), as_tenant(B)),
        ],
    )
    .await;
    let vary = |key: &str, watermark: Option<&str>| ImageVariants {
        image_id: "stolen".into(),
        key: key.into(),
        widths: Some(vec![320]),
        formats: None,
        watermark: watermark.map(|k| WatermarkArgs { key: k.into(), position: None, opacity: None, scale: None }),
        keep_metadata: None,
    };
    let more = outcomes(
        &env,
        &worker,
        vec![
            (vary("tenants/acme/uploads/gps.jpg", None), as_tenant(B)),
            (vary("tenants/rival/uploads/mine.jpg", Some("tenants/acme/logo.png")), as_tenant(B)),
        ],
    )
    .await;
    for r in reasons.iter().chain(&more) {
        let r = r.as_deref().expect("every job gave up");
        assert!(r.contains("tenants/rival/"), "the reason names the required prefix: {r}");
    }
    let analyses: i64 = sqlx::query_scalar("SELECT count(*) FROM image_analyses").fetch_one(&db.pool).await.unwrap();
    let variants: i64 = sqlx::query_scalar("SELECT count(*) FROM image_variants").fetch_one(&db.pool).await.unwrap();
    assert_eq!((analyses, variants), (0, 0), "nothing of A's photo (its EXIF, its GPS) reached B");

    worker.shutdown().await;
    db.drop_db().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variants_live_under_each_tenant_s_prefix_so_no_tenant_names_another_s() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let store = Store::new();
    // The same photo uploaded by both tenants: content-addressed variants, yet apart.
    let photo = fixture("formats/people.jpg");
    store.put("tenants/acme/uploads/p.jpg", &photo);
    store.put("tenants/rival/uploads/p.jpg", &photo);
    let images = Images::new(db.pool.clone(), &store.settings()).unwrap();
    let worker = worker(&env, &["images"], Registry::new().register(images.variants())).await;
    let vary = |tenant: &str| {
        let args = ImageVariants {
            image_id: "p".into(),
            key: format!("tenants/{tenant}/uploads/p.jpg"),
            widths: Some(vec![320, 640]),
            formats: None,
            watermark: None,
            keep_metadata: None,
        };
        (args, as_tenant(tenant))
    };
    let reasons = outcomes(&env, &worker, vec![vary(A), vary(B)]).await;
    assert_eq!(reasons, vec![None, None]);

    let keys = |tenant: &'static str| {
        let db = &db;
        async move {
            sqlx::query_scalar::<_, String>("SELECT key FROM image_variants WHERE tenant = $1 ORDER BY key")
                .bind(tenant)
                .fetch_all(&db.pool)
                .await
                .unwrap()
        }
    };
    let (a, b) = (keys(A).await, keys(B).await);
    assert_eq!((a.len(), b.len()), (4, 4), "{a:?} {b:?}");
    for k in &a {
        assert!(k.starts_with("tenants/acme/variants/"), "{k}");
        assert!(store.exists(k), "{k} written");
    }
    for k in &b {
        assert!(k.starts_with("tenants/rival/variants/"), "{k}");
        assert!(store.exists(k), "{k} written");
        assert!(fleet_jobs::catalogue::image::check_tenant_object_key(A, k).is_err(), "A cannot name B's variant {k}");
    }

    worker.shutdown().await;
    db.drop_db().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_fleet_enqueues_on_schedule_or_for_an_operator_carry_the_source_s_tenant() {
    use fleet_accounts::sources::{SourceTable, enqueue_due, sync_now};
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    insert_calendar_source(&db, A, "cal-acme").await;
    sqlx::query("INSERT INTO comms_sources (id, tenant, kind, config) VALUES ('app-acme', $1, 'in_app', '{}')")
        .bind(A)
        .execute(&db.pool)
        .await
        .unwrap();
    let tenant_of = |queue: &'static str, id: String| {
        let client = env.client.clone();
        async move {
            let info = client.job(queue, &id).await.unwrap().expect("the job exists");
            info.envelope.expect("a readable envelope").tenant
        }
    };
    // Both sources are due now (a new source's first sync is).
    let mut errors = Vec::new();
    for (table, queue) in [(SourceTable::Calendar, "calendar"), (SourceTable::Comms, "comms")] {
        let due = enqueue_due(&db.pool, &env.client, table, chrono::Utc::now(), &mut errors).await.unwrap();
        assert_eq!(due.len(), 1, "{errors:?}");
        assert_eq!(tenant_of(queue, due[0].job.clone()).await.as_deref(), Some(A), "a scheduled sync is A's job");
    }
    // fleetctl's "sync now" (no tenant of its own): the job is still the source's tenant's.
    let job = sync_now(&db.pool, &env.client, SourceTable::Calendar, None, "cal-acme").await.unwrap();
    assert_eq!(tenant_of("calendar", job.0).await.as_deref(), Some(A));
    // B's API key cannot sync A's source at all.
    assert!(sync_now(&db.pool, &env.client, SourceTable::Calendar, Some(B), "cal-acme").await.is_err());

    db.drop_db().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_duplicates_are_found_within_a_tenant_s_portfolio_never_across_tenants() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let store = Store::new();
    // The same photo in a portfolio of the same name, for both tenants (twice for A).
    let photo = fixture("formats/people.jpg");
    store.put("tenants/acme/uploads/1.jpg", &photo);
    store.put("tenants/acme/uploads/2.jpg", &photo);
    store.put("tenants/rival/uploads/1.jpg", &photo);
    let images = Images::new(db.pool.clone(), &store.settings()).unwrap();
    let worker = worker(&env, &["images"], Registry::new().register(images.analyzer())).await;
    let analyze = |tenant: &str, id: &str| {
        let args = ImageAnalyze {
            image_id: id.into(),
            key: format!("tenants/{tenant}/uploads/{id}.jpg"),
            portfolio: Some("wedding".into()),
            allow_gps: false,
            vision: false,
        };
        (args, as_tenant(tenant))
    };
    let reasons = outcomes(&env, &worker, vec![analyze(A, "1"), analyze(B, "1"), analyze(A, "2")]).await;
    assert_eq!(reasons, vec![None, None, None]);

    let get = |tenant: &'static str| {
        let (env, db) = (&env, &db);
        async move {
            let call = api_as(env, db, tenant).await;
            let (s, view) = call("GET", "/v1/portfolios/wedding", None).await;
            assert_eq!(s, StatusCode::OK, "{view}");
            view
        }
    };
    let (a, b) = (get(A).await, get(B).await);
    assert_eq!(a["near_duplicates"], json!([["1", "2"]]), "{a}");
    assert_eq!(a["images"].as_array().unwrap().len(), 2);
    assert_eq!(b["near_duplicates"], json!([]), "B's photo is no near-duplicate of A's: {b}");
    assert_eq!(b["images"].as_array().unwrap().len(), 1);

    // A moves "2" to another portfolio: its pairs go with it.
    let mut moved = analyze(A, "2");
    moved.0.portfolio = Some("other".into());
    assert_eq!(outcomes(&env, &worker, vec![moved]).await, vec![None]);
    let a = get(A).await;
    assert_eq!((a["near_duplicates"].clone(), a["images"].as_array().unwrap().len()), (json!([]), 1), "{a}");

    worker.shutdown().await;
    db.drop_db().await;
    env.cleanup().await;
}
