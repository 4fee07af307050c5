//! Communication aggregation end to end: a real Dovecot (`scripts/dovecot.sh`) loaded
//! over IMAP by the test, the PostgreSQL timeline (a database per test), and the
//! `comms.sync` job on a worker: cursors committed with their items (a killed sync
//! resumes without loss or duplicates), a UIDVALIDITY change without duplicates, and a
//! failing source isolated from the supplier's other sources.

use fleet_comms::contacts::ContactBook;
use fleet_comms::imap::{
    CommitCounts, FolderBatch, FolderCursor, ImapAccount, StoreError, SyncError, SyncOptions, SyncStore, sync_account,
};
use fleet_comms::secrets::SecretBox;
use fleet_jobs::EnqueueOptions;
use fleet_jobs::catalogue::CommsSync;
use fleet_tests::{TestDb, TestEnv, eventually, n_final};
use fleet_worker::kinds::comms::{PgStore, SyncSource};
use fleet_worker::{QueueConfig, Registry};
use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

const KEY: &str = "8f1c2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7";

fn ensure_dovecot() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/dovecot.sh");
        let out = std::process::Command::new("bash").arg(script).output().expect("run scripts/dovecot.sh");
        assert!(out.status.success(), "scripts/dovecot.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    });
}

/// A fresh IMAP user of this test's own on the project's Dovecot.
fn new_user() -> ImapAccount {
    ensure_dovecot();
    let user = format!("c{}", uuid::Uuid::now_v7().simple());
    let password = format!("pw-{}", uuid::Uuid::now_v7().simple());
    let dir = std::env::var("FLEET_DOVECOT_DIR").unwrap_or_else(|_| "/tmp/fleet-dovecot".into());
    std::fs::write(format!("{dir}/users/{user}"), format!("{user}:{{PLAIN}}{password}::::::\n"))
        .expect("Dovecot's users folder (scripts/dovecot.sh makes it)");
    let port = std::env::var("FLEET_TEST_IMAP_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(10143);
    ImapAccount { host: "127.0.0.1".into(), port, tls: false, user, password, folders: None }
}

async fn load(account: &ImapAccount, folder: &str, msgs: &[Vec<u8>]) {
    let mut s = fleet_comms::imap::connect(account, Duration::from_secs(10)).await.expect("login");
    if folder != "INBOX" {
        let _ = s.create(folder).await;
    }
    for m in msgs {
        s.append(folder, None, None, m).await.expect("APPEND");
    }
    s.logout().await.ok();
}

fn mail(id: &str, parent: Option<&str>, body: &str) -> Vec<u8> {
    let reply = parent.map(|p| format!("In-Reply-To: <{p}>\r\nReferences: <{p}>\r\n")).unwrap_or_default();
    format!(
        "From: Anna <anna@example.com>\r\nTo: studio@photo.example\r\nMessage-ID: <{id}>\r\n{reply}Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nSubject: Booking\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

async fn add_source(db: &TestDb, id: &str, tenant: &str, account: &ImapAccount) {
    let secrets = SecretBox::new(KEY).unwrap();
    let config = serde_json::json!({"host": account.host, "port": account.port, "user": account.user});
    sqlx::query("INSERT INTO comms_sources (id, tenant, kind, config, secret) VALUES ($1, $2, 'imap', $3, $4)")
        .bind(id)
        .bind(tenant)
        .bind(config)
        .bind(secrets.seal(id, &account.password).unwrap())
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO comms_contacts (tenant, kind, value, client) VALUES ($1, 'email', 'anna@example.com', 'anna') ON CONFLICT DO NOTHING")
        .bind(tenant)
        .execute(&db.pool)
        .await
        .unwrap();
}

async fn count(db: &TestDb, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap()
}

/// Fails its `fail_at`th commit, as a sync killed midway leaves the database.
struct Killed {
    inner: PgStore,
    fail_at: usize,
    commits: usize,
}

impl SyncStore for Killed {
    async fn cursor(&mut self, source: &str, folder: &str) -> Result<Option<FolderCursor>, StoreError> {
        self.inner.cursor(source, folder).await
    }
    async fn known_uids(&mut self, source: &str, folder: &str, v: u32) -> Result<BTreeSet<u32>, StoreError> {
        self.inner.known_uids(source, folder, v).await
    }
    async fn commit(&mut self, batch: FolderBatch) -> Result<CommitCounts, StoreError> {
        self.commits += 1;
        if self.commits == self.fail_at {
            return Err(StoreError("killed".into()));
        }
        self.inner.commit(batch).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_timeline_resumes_a_killed_sync_and_survives_a_uidvalidity_change() {
    let db = TestDb::new().await;
    let account = new_user();
    add_source(&db, "src-a", "studio", &account).await;
    // A thread of three whose parent arrives last, plus seven more, across two folders.
    let mut msgs =
        vec![mail("t3@x", Some("t2@x"), "third"), mail("t2@x", Some("t1@x"), "second"), mail("t1@x", None, "first")];
    msgs.extend((0..7).map(|i| mail(&format!("m{i}@x"), None, &format!("message {i}"))));
    load(&account, "Work", &msgs).await;
    load(&account, "INBOX", &msgs[..2]).await; // copies: the same messages in INBOX

    let book = Arc::new(ContactBook::new("GB"));
    let options = SyncOptions { chunk: 3, ..SyncOptions::default() };
    let mut killed = Killed { inner: PgStore::new(db.pool.clone(), "studio"), fail_at: 3, commits: 0 };
    let err = sync_account(&account, "src-a", &book, &mut killed, &options).await.unwrap_err();
    assert!(matches!(err, SyncError::Store(_)), "{err}");

    let mut store = PgStore::new(db.pool.clone(), "studio");
    let report = sync_account(&account, "src-a", &book, &mut store, &options).await.unwrap();
    assert!(report.folders.iter().all(|f| f.error.is_none()), "{report:?}");
    assert_eq!(count(&db, "SELECT count(*) FROM comms_entries").await, 10, "no loss, no duplicates");
    assert_eq!(count(&db, "SELECT count(*) FROM comms_locations").await, 12);
    assert_eq!(
        count(&db, "SELECT count(DISTINCT thread_id) FROM comms_entries WHERE message_id IN ('t1@x','t2@x','t3@x')")
            .await,
        1
    );

    // Recreate Work: a new UIDVALIDITY, the same messages.
    let mut s = fleet_comms::imap::connect(&account, Duration::from_secs(10)).await.unwrap();
    s.delete("Work").await.unwrap();
    s.logout().await.ok();
    load(&account, "Work", &msgs).await;
    let ids_before: Vec<String> =
        sqlx::query_scalar("SELECT id FROM comms_entries ORDER BY id").fetch_all(&db.pool).await.unwrap();
    let report = sync_account(&account, "src-a", &book, &mut store, &options).await.unwrap();
    let work = report.folders.iter().find(|f| f.folder == "Work").unwrap();
    assert!(work.uidvalidity_changed);
    assert_eq!(work.new, 0);
    let ids_after: Vec<String> =
        sqlx::query_scalar("SELECT id FROM comms_entries ORDER BY id").fetch_all(&db.pool).await.unwrap();
    assert_eq!(ids_before, ids_after, "zero duplicates after a UIDVALIDITY change");
    assert_eq!(count(&db, "SELECT count(*) FROM comms_locations").await, 12, "old UIDs dropped");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_source_is_isolated_and_records_its_error() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let good = new_user();
    load(&good, "INBOX", &[mail("g1@x", None, "hello"), mail("g2@x", Some("g1@x"), "again")]).await;
    let mut bad = new_user();
    add_source(&db, "src-good", "studio", &good).await;
    bad.password = "wrong-password-xyz".into();
    add_source(&db, "src-bad", "studio", &bad).await;

    let registry = Registry::new().register(SyncSource::new(db.pool.clone(), Some(SecretBox::new(KEY).unwrap())));
    let mut cfg = env.config("comms", 2);
    cfg.queues = vec![QueueConfig { name: "comms".into(), concurrency: 2, fetch_batch: None }];
    let worker = env.worker(cfg, registry).await;
    let mut rx = worker.events();
    let tenant = EnqueueOptions { tenant: Some("studio".into()), ..Default::default() };
    env.client.enqueue_with(&CommsSync { source_id: "src-bad".into() }, tenant.clone()).await.unwrap();
    env.client.enqueue_with(&CommsSync { source_id: "src-good".into() }, tenant).await.unwrap();
    n_final(&mut rx, 1, Duration::from_secs(60)).await;

    assert_eq!(count(&db, "SELECT count(*) FROM comms_entries WHERE source_id = 'src-good'").await, 2);
    assert_eq!(count(&db, "SELECT count(*) FROM comms_entries WHERE client = 'anna'").await, 2);
    let pool = db.pool.clone();
    let error: String = eventually("the bad source records its error", Duration::from_secs(30), || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, Option<String>>("SELECT last_error FROM comms_sources WHERE id = 'src-bad'")
                .fetch_one(&pool)
                .await
                .ok()
                .flatten()
        }
    })
    .await;
    assert!(error.contains("login refused"), "{error}");
    assert!(!error.contains("wrong-password-xyz"), "no secret in errors");
    let ok: Option<String> = sqlx::query_scalar("SELECT last_error FROM comms_sources WHERE id = 'src-good'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(ok, None);
    let stored: String =
        sqlx::query_scalar("SELECT secret FROM comms_sources WHERE id = 'src-good'").fetch_one(&db.pool).await.unwrap();
    assert!(!stored.contains(&good.password), "secrets are sealed at rest");
    worker.shutdown().await;
    db.drop_db().await;
    env.cleanup().await;
}

/// A local server speaking the provider's JSON: two pages of messages (the second
/// answers 500 once), one page of calls; it records the queries it was asked.
#[derive(Default)]
struct FakeProvider {
    messages: Vec<serde_json::Value>,
    failed_once: bool,
    queries: Vec<String>,
}

type Fake = Arc<std::sync::Mutex<FakeProvider>>;

async fn provider_page(
    axum::extract::State(fake): axum::extract::State<Fake>,
    axum::extract::Path((account, resource)): axum::extract::Path<(String, String)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let query = query.unwrap_or_default();
    let mut f = fake.lock().unwrap();
    f.queries.push(format!("{resource}?{query}"));
    if resource == "Calls.json" {
        let calls = serde_json::json!([{"sid": "CA1", "from": "+447700900999", "to": "07911 123456", "status": "completed",
            "direction": "outbound-api", "start_time": "Tue, 01 Dec 2026 09:00:00 +0000", "duration": "95"}]);
        return axum::Json(serde_json::json!({"calls": calls, "next_page_uri": null})).into_response();
    }
    if query.contains("PageToken=P2") {
        if !f.failed_once {
            f.failed_once = true;
            return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        let rest: Vec<_> = f.messages.iter().skip(2).cloned().collect();
        return axum::Json(serde_json::json!({"messages": rest, "next_page_uri": null})).into_response();
    }
    let first: Vec<_> = f.messages.iter().take(2).cloned().collect();
    let next = format!("/2010-04-01/Accounts/{account}/Messages.json?PageSize=1000&PageToken=P2");
    axum::Json(serde_json::json!({"messages": first, "next_page_uri": next})).into_response()
}

fn sms(sid: &str, from: &str, status: &str, body: &str, date: &str) -> serde_json::Value {
    serde_json::json!({"sid": sid, "from": from, "to": "+447700900999", "body": body, "status": status,
        "direction": "inbound", "date_sent": date})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_and_calls_page_retry_overlap_a_day_and_merge_status() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let fake: Fake = Arc::new(std::sync::Mutex::new(FakeProvider {
        messages: vec![
            sms("SM3", "07911 123456", "received", "Late on the 1st", "Tue, 01 Dec 2026 23:59:00 +0000"),
            sms("SM2", "+447911123456", "received", "Morning", "Tue, 01 Dec 2026 08:00:00 +0000"),
            sms("SM1", "VENUE", "sent", "Your venue booking", "Mon, 30 Nov 2026 10:00:00 +0000"),
        ],
        ..Default::default()
    }));
    let app = axum::Router::new()
        .route("/2010-04-01/Accounts/{account}/{resource}", axum::routing::get(provider_page))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let secrets = SecretBox::new(KEY).unwrap();
    sqlx::query(
        "INSERT INTO comms_sources (id, tenant, kind, config, secret) VALUES ('sms-1', 'studio', 'sms', $1, $2)",
    )
    .bind(serde_json::json!({"api_base": base, "account_sid": "AC1"}))
    .bind(secrets.seal("sms-1", "auth-token").unwrap())
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO comms_contacts (tenant, kind, value, client) VALUES ('studio', 'phone', '+447911123456', 'anna')",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    let registry = Registry::new().register(SyncSource::new(db.pool.clone(), Some(secrets)));
    let mut cfg = env.config("comms", 1);
    cfg.queues = vec![QueueConfig { name: "comms".into(), concurrency: 1, fetch_batch: None }];
    let worker = env.worker(cfg, registry).await;
    let mut rx = worker.events();
    let job = CommsSync { source_id: "sms-1".into() };
    env.client.enqueue(&job).await.unwrap();
    let done = n_final(&mut rx, 1, Duration::from_secs(60)).await;
    assert!(matches!(done[0].outcome, fleet_jobs::backend::Outcome::Succeeded), "{:?}", done[0]);
    assert_eq!(count(&db, "SELECT count(*) FROM comms_entries WHERE channel = 'sms'").await, 3);
    assert_eq!(count(&db, "SELECT count(*) FROM comms_entries WHERE channel = 'call' AND client = 'anna'").await, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM comms_entries WHERE channel = 'sms' AND client = 'anna'").await, 2);
    assert_eq!(
        count(&db, "SELECT count(*) FROM comms_entries WHERE channel = 'sms' AND client IS NULL AND doc->'participants'->>0 = 'VENUE'").await,
        1,
        "the alphanumeric sender stays unmatched"
    );
    assert!(fake.lock().unwrap().failed_once, "the 500 was retried");

    // The provider now has a newer status for SM1 and a new message; the next run asks
    // from a whole day before the newest record and doubles nothing.
    {
        let mut f = fake.lock().unwrap();
        f.messages[2] = sms("SM1", "VENUE", "delivered", "Your venue booking", "Mon, 30 Nov 2026 10:00:00 +0000");
        f.messages.insert(0, sms("SM4", "07911 123456", "received", "Next day", "Wed, 02 Dec 2026 07:00:00 +0000"));
        f.queries.clear();
    }
    env.client.enqueue(&job).await.unwrap();
    n_final(&mut rx, 1, Duration::from_secs(60)).await;
    assert_eq!(count(&db, "SELECT count(*) FROM comms_entries WHERE channel = 'sms'").await, 4, "no duplicates");
    let status: String = sqlx::query_scalar("SELECT doc->>'status' FROM comms_entries WHERE message_id = 'sms:SM1'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(status, "delivered");
    let queries = fake.lock().unwrap().queries.clone();
    assert!(
        queries.iter().any(|q| q.starts_with("Messages.json") && q.contains("DateSent%3E=2026-11-30")),
        "{queries:?}"
    );
    worker.shutdown().await;
    db.drop_db().await;
    env.cleanup().await;
}

async fn call(
    api: &axum::Router,
    key: &str,
    method: &str,
    uri: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    use tower::ServiceExt;
    let req = axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    let res = api.clone().oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 22).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_are_registered_synced_and_read_through_the_api() {
    use fleet_scheduler::api::{ApiState, app, auth};
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let account = new_user();
    let mut msgs: Vec<Vec<u8>> = (0..5).map(|i| mail(&format!("api{i}@x"), None, &format!("page me {i}"))).collect();
    let mut deep = String::from("From: x@example.com\r\nMessage-ID: <deep@x>\r\nSubject: deep\r\n");
    for i in 0..200 {
        deep.push_str(&format!("Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"));
    }
    msgs.push(deep.into_bytes());
    load(&account, "INBOX", &msgs).await;
    let key = auth::create_api_key(&db.pool, "studio", "comms", &["enqueue"]).await.unwrap();
    let api =
        app(ApiState::new(env.client.clone(), db.pool.clone()).with_secrets(SecretBox::new(KEY).unwrap()), 1 << 20);

    let (s, v) = call(
        &api,
        &key,
        "POST",
        "/v1/comms/contacts",
        serde_json::json!({"client": "anna",
        "emails": ["Anna@Example.com"], "phones": ["07911 123456", "VENUE"]}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["phones"], serde_json::json!(["+447911123456"]));
    assert_eq!(v["rejected"], serde_json::json!(["VENUE"]));
    let (s, v) = call(
        &api,
        &key,
        "POST",
        "/v1/comms/sources",
        serde_json::json!({"kind": "imap", "host": account.host,
        "port": account.port, "user": account.user, "password": account.password}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert!(!v.to_string().contains(&account.password), "the password is never returned");
    let id = v["id"].as_str().unwrap().to_owned();
    let (s, _) =
        call(&api, &key, "POST", "/v1/comms/sources", serde_json::json!({"kind": "fax", "password": "x"})).await;
    assert_eq!(s, 422);

    let registry = Registry::new().register(SyncSource::new(db.pool.clone(), Some(SecretBox::new(KEY).unwrap())));
    let mut cfg = env.config("comms", 1);
    cfg.queues = vec![QueueConfig { name: "comms".into(), concurrency: 1, fetch_batch: None }];
    let worker = env.worker(cfg, registry).await;
    let mut rx = worker.events();
    let (s, v) = call(&api, &key, "POST", &format!("/v1/comms/sources/{id}/sync"), serde_json::Value::Null).await;
    assert_eq!(s, 202, "{v}");
    n_final(&mut rx, 1, Duration::from_secs(60)).await;

    let (_, sources) = call(&api, &key, "GET", "/v1/comms/sources", serde_json::Value::Null).await;
    assert_eq!(sources[0]["last_error"], serde_json::Value::Null, "{sources}");
    assert_eq!(sources[0]["cursors"][0]["folder"], "INBOX");
    assert_eq!(sources[0]["cursors"][0]["last_uid"], 6);
    assert_eq!(sources[0]["quarantined"], 1);
    let (s, q) = call(&api, &key, "GET", &format!("/v1/comms/sources/{id}/quarantine"), serde_json::Value::Null).await;
    assert_eq!(s, 200, "{q}");
    assert_eq!(q[0]["reason"]["reason"], "too_deep", "{q}");
    // Paged newest first, two at a time.
    let mut seen = Vec::new();
    let mut uri = "/v1/comms/clients/anna/timeline?limit=2".to_owned();
    loop {
        let (s, page) = call(&api, &key, "GET", &uri, serde_json::Value::Null).await;
        assert_eq!(s, 200, "{page}");
        seen.extend(page["entries"].as_array().unwrap().iter().map(|e| e["message_id"].as_str().unwrap().to_owned()));
        match page["next"].as_str() {
            Some(next) => uri = format!("/v1/comms/clients/anna/timeline?limit=2&cursor={}", next.replace('+', "%2B")),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, (0..5).map(|i| format!("api{i}@x")).collect::<Vec<_>>());
    let (s, _) = call(&api, &key, "DELETE", &format!("/v1/comms/sources/{id}"), serde_json::Value::Null).await;
    assert_eq!(s, 204);
    assert_eq!(count(&db, "SELECT count(*) FROM comms_entries").await, 0);
    worker.shutdown().await;
    db.drop_db().await;
    env.cleanup().await;
}

/// `cargo test --release -p fleet-tests --test comms -- --ignored --nocapture bench`:
/// messages per second from the local Dovecot into the PostgreSQL timeline for a
/// 10,000-message mailbox, full and incremental, and the duplicates after a forced
/// UIDVALIDITY change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by hand, prints figures"]
async fn bench_postgres_ten_thousand_messages() {
    let n: usize = std::env::var("FLEET_BENCH_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let db = TestDb::new().await;
    let mut account = new_user();
    add_source(&db, "bench", "studio", &account).await;
    let body = "Hello, we would love to book you for our wedding next June. ".repeat(40);
    let msgs: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let parent = if i % 3 == 0 { None } else { Some(format!("pb{}@x", i - 1)) };
            mail(&format!("pb{i}@x"), parent.as_deref(), &format!("{i}: {body}"))
        })
        .collect();
    let started = std::time::Instant::now();
    let lanes: Vec<_> = (0..4)
        .map(|lane| {
            let account = account.clone();
            let mine: Vec<Vec<u8>> = msgs.iter().skip(lane).step_by(4).cloned().collect();
            tokio::spawn(async move { load(&account, "Bench", &mine).await })
        })
        .collect();
    for l in lanes {
        l.await.unwrap();
    }
    println!("loaded {n} messages in {:.1} s", started.elapsed().as_secs_f64());
    account.folders = Some(vec!["Bench".into()]);
    let mut book = ContactBook::new("GB");
    book.add_client("anna", &["anna@example.com"], &[]);
    let book = Arc::new(book);
    let mut store = PgStore::new(db.pool.clone(), "studio");
    let options = SyncOptions::default();
    let t = std::time::Instant::now();
    let full = sync_account(&account, "bench", &book, &mut store, &options).await.unwrap();
    let s = t.elapsed().as_secs_f64();
    println!("postgres full sync: {} new in {s:.2} s = {:.0} msgs/s", full.total(|f| f.new), n as f64 / s);
    let t = std::time::Instant::now();
    let idle = sync_account(&account, "bench", &book, &mut store, &options).await.unwrap();
    println!(
        "postgres idle incremental: {:.1} ms, {} bytes fetched",
        t.elapsed().as_secs_f64() * 1e3,
        idle.total(|f| f.fetched_bytes)
    );
    let extra: Vec<Vec<u8>> = (0..100).map(|i| mail(&format!("px{i}@x"), None, &format!("extra {i}"))).collect();
    load(&account, "Bench", &extra).await;
    let t = std::time::Instant::now();
    let inc = sync_account(&account, "bench", &book, &mut store, &options).await.unwrap();
    let s = t.elapsed().as_secs_f64();
    println!(
        "postgres incremental: {} new in {:.1} ms = {:.0} msgs/s",
        inc.total(|f| f.new),
        s * 1e3,
        inc.total(|f| f.new) as f64 / s
    );
    let before = count(&db, "SELECT count(*) FROM comms_entries").await;
    let mut s2 = fleet_comms::imap::connect(&account, Duration::from_secs(10)).await.unwrap();
    s2.delete("Bench").await.unwrap();
    s2.logout().await.ok();
    load(&account, "Bench", &[msgs, extra].concat()).await;
    let t = std::time::Instant::now();
    let re = sync_account(&account, "bench", &book, &mut store, &options).await.unwrap();
    let after = count(&db, "SELECT count(*) FROM comms_entries").await;
    println!(
        "postgres forced UIDVALIDITY change: re-read {} in {:.2} s; duplicates created: {} ({before} → {after})",
        re.total(|f| f.fetched),
        t.elapsed().as_secs_f64(),
        after - before
    );
    db.drop_db().await;
}
