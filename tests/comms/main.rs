//! Communication aggregation end to end: a real Dovecot (`scripts/dovecot.sh`) loaded
//! over IMAP by the test, the PostgreSQL timeline (a database per test), and the
//! `comms.sync` job on a worker: cursors committed with their items (a killed sync
//! resumes without loss or duplicates), a UIDVALIDITY change without duplicates, and a
//! failing source isolated from the supplier's other sources. `rules.rs` runs one table
//! of dedup and threading cases against the in-memory and the PostgreSQL timeline.

use fleet_accounts::secrets::SecretBox;
use fleet_comms::contacts::ContactBook;
use fleet_comms::imap::{
    CommitCounts, FolderBatch, FolderCursor, ImapAccount, StoreError, SyncError, SyncOptions, SyncStore, sync_account,
};
use fleet_comms::jobs::SyncSource;
use fleet_comms::store::PgStore;
use fleet_jobs::EnqueueOptions;
use fleet_jobs::catalogue::CommsSync;
use fleet_tests::{TestDb, TestEnv, eventually, n_final};
use fleet_worker::{QueueConfig, Registry};
use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

mod rules;

/// Dovecot and the fake providers run on loopback: allowed past the SSRF guard here.
fn loopback() -> Vec<fleet_net::Cidr> {
    vec!["127.0.0.0/8".parse().unwrap()]
}

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
    ImapAccount::plain("127.0.0.1", port, user, password)
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
    // One event per entry, written with it; none for the copies or the re-read.
    assert_eq!(count(&db, "SELECT count(*) FROM comms_outbox WHERE event_type = 'comms.entry.created'").await, 10);
    assert_eq!(
        count(&db, "SELECT count(*) FROM comms_outbox o JOIN comms_entries e ON o.payload->>'entry_id' = e.id AND o.payload->>'thread_id' = e.thread_id AND o.dedup = 'studio:' || e.id").await,
        10,
        "payloads name the entry and its final thread"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM comms_outbox WHERE payload ? 'text'").await, 0, "no full text");
    db.drop_db().await;
}

/// In a batch, a parent arriving after its replies, a reply linking two threads and
/// a reused Message-ID all behave as one message at a time would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_commits_keep_dedup_and_threading_rules_within_one_chunk() {
    let db = TestDb::new().await;
    let account = new_user();
    add_source(&db, "src-b", "studio", &account).await;
    let reused = b"From: Anna <anna@example.com>\r\nMessage-ID: <a1@x>\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\nSubject: Other\r\n\r\ncompletely different words\r\n".to_vec();
    let two_parents = b"From: Anna <anna@example.com>\r\nMessage-ID: <link@x>\r\nIn-Reply-To: <a2@x>\r\nReferences: <b1@x> <a2@x>\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\nSubject: Re: Booking\r\n\r\nlinks both\r\n".to_vec();
    let msgs = vec![
        mail("a2@x", Some("a1@x"), "reply a"),
        mail("a1@x", None, "root a"),
        mail("b1@x", None, "root b"),
        two_parents,
        reused,
        mail("a1@x", None, "root a"),
    ];
    load(&account, "INBOX", &msgs).await;
    let mut store = PgStore::new(db.pool.clone(), "studio");
    let report =
        sync_account(&account, "src-b", &Arc::new(ContactBook::new("GB")), &mut store, &SyncOptions::default())
            .await
            .unwrap();
    assert_eq!(report.total(|f| f.new), 5, "{report:?}");
    assert_eq!(report.total(|f| f.duplicates), 1);
    assert_eq!(count(&db, "SELECT count(*) FROM comms_entries").await, 5);
    assert_eq!(
        count(
            &db,
            "SELECT count(DISTINCT thread_id) FROM comms_entries WHERE message_id IN ('a1@x', 'a2@x', 'b1@x', 'link@x')"
        )
        .await,
        1
    );
    assert_eq!(count(&db, "SELECT count(*) FROM comms_entries WHERE message_id = 'a1@x' AND id_collision").await, 2);
    assert_eq!(count(&db, "SELECT count(*) FROM comms_locations").await, 6);
    assert_eq!(count(&db, "SELECT count(DISTINCT thread_id) FROM comms_thread_ids").await, 1, "ghost ids merged too");
    assert_eq!(count(&db, "SELECT count(*) FROM comms_outbox").await, 5);
    db.drop_db().await;
}

async fn in_app(db: &TestDb, tenant: &str, id: &str, thread_ref: Option<&str>, body: &str) {
    sqlx::query(
        "INSERT INTO platform_messages (tenant, id, client, sender, direction, body, sent_at, thread_ref)
         VALUES ($1, $2, 'anna', 'u_anna', 'inbound', $3, '2026-12-01T10:00:00Z', $4)",
    )
    .bind(tenant)
    .bind(id)
    .bind(body)
    .bind(thread_ref)
    .execute(&db.pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_app_messages_join_the_timeline_in_commit_order_and_are_published() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    sqlx::query("INSERT INTO comms_sources (id, tenant, kind, config) VALUES ('app', 'studio', 'in_app', '{}')")
        .execute(&db.pool)
        .await
        .unwrap();
    for (id, r) in [("m1", None), ("m2", None), ("m3", Some("booking-7")), ("m4", Some("booking-7"))] {
        in_app(&db, "studio", id, r, &format!("hello {id}")).await;
    }
    in_app(&db, "other", "m1", None, "another tenant's").await;

    let relay = fleet_accounts::outbox::Relay::new(db.pool.clone(), env.client.clone());
    let registry =
        Registry::new().register(SyncSource::new(db.pool.clone(), None).with_allowed(loopback()).with_relay(relay));
    let mut cfg = env.config("comms", 1);
    cfg.queues = vec![QueueConfig { name: "comms".into(), concurrency: 1, fetch_batch: None, partitions: None }];
    let worker = env.worker(cfg, registry).await;
    let mut rx = worker.events();
    let job = CommsSync { source_id: "app".into() };
    let tenant = EnqueueOptions { tenant: Some("studio".into()), ..Default::default() };
    // Rows are read once every older transaction of the cluster has finished; another
    // test's open transaction can hold them back for a moment, so sync until they land.
    let sync_until = async |rx: &mut tokio::sync::broadcast::Receiver<_>, want: i64| {
        for _ in 0..100 {
            env.client.enqueue_with(&job, tenant.clone()).await.unwrap();
            let done = n_final(rx, 1, Duration::from_secs(60)).await;
            assert!(matches!(done[0].outcome, fleet_jobs::backend::Outcome::Succeeded), "{:?}", done[0]);
            if count(&db, "SELECT count(*) FROM comms_entries WHERE channel = 'in_app'").await >= want {
                return;
            }
        }
        panic!("in-app rows were not read");
    };
    sync_until(&mut rx, 4).await;
    assert_eq!(count(&db, "SELECT count(*) FROM comms_entries WHERE channel = 'in_app' AND client = 'anna'").await, 4);
    assert_eq!(count(&db, "SELECT count(DISTINCT thread_id) FROM comms_entries WHERE channel = 'in_app'").await, 2);
    assert_eq!(
        count(&db, "SELECT count(*) FROM comms_outbox WHERE published_at IS NOT NULL").await,
        4,
        "published after the commit"
    );

    // A slow writer: its row (lower seq) is not committed yet when a later row is.
    let mut slow = db.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO platform_messages (tenant, id, client, sender, direction, body, sent_at)
         VALUES ('studio', 'late', 'anna', 'studio', 'outbound', 'committed last', '2026-12-01T11:00:00Z')",
    )
    .execute(&mut *slow)
    .await
    .unwrap();
    in_app(&db, "studio", "m5", None, "committed first").await;
    env.client.enqueue_with(&job, tenant.clone()).await.unwrap();
    n_final(&mut rx, 1, Duration::from_secs(60)).await;
    let held: i64 = count(&db, "SELECT count(*) FROM comms_entries WHERE channel = 'in_app'").await;
    assert_eq!(held, 4, "nothing past a running writer is read, so its row cannot be skipped");
    slow.commit().await.unwrap();
    sync_until(&mut rx, 6).await;
    assert_eq!(count(&db, "SELECT count(*) FROM comms_entries WHERE channel = 'in_app'").await, 6, "none lost");
    assert_eq!(
        count(&db, "SELECT count(*) FROM comms_entries WHERE message_id = 'in_app:late' AND direction = 'outbound'")
            .await,
        1
    );
    assert_eq!(count(&db, "SELECT count(*) FROM comms_outbox").await, 6, "one event per entry");
    assert_eq!(count(&db, "SELECT count(*) FROM comms_cursors WHERE source_id = 'app' AND folder = 'in_app'").await, 1);
    let pool = db.pool.clone();
    eventually("every event published", Duration::from_secs(30), || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM comms_outbox WHERE published_at IS NULL")
                .fetch_one(&pool)
                .await
                .ok()?;
            (n == 0).then_some(())
        }
    })
    .await;
    // Re-reading from scratch doubles nothing (dedup by id).
    sqlx::query("DELETE FROM comms_cursors WHERE source_id = 'app'").execute(&db.pool).await.unwrap();
    let (mut read, mut new) = (0, 0);
    for _ in 0..100 {
        let report = PgStore::new(db.pool.clone(), "studio").sync_in_app("app", 2).await.unwrap();
        (read, new) = (read + report.read, new + report.new);
        if read >= 6 {
            break;
        }
    }
    assert_eq!((read, new), (6, 0));
    worker.shutdown().await;
    db.drop_db().await;
    env.cleanup().await;
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

    let registry = Registry::new()
        .register(SyncSource::new(db.pool.clone(), Some(SecretBox::new(KEY).unwrap())).with_allowed(loopback()));
    let mut cfg = env.config("comms", 2);
    cfg.queues = vec![QueueConfig { name: "comms".into(), concurrency: 2, fetch_batch: None, partitions: None }];
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

    let registry = Registry::new().register(SyncSource::new(db.pool.clone(), Some(secrets)).with_allowed(loopback()));
    let mut cfg = env.config("comms", 1);
    cfg.queues = vec![QueueConfig { name: "comms".into(), concurrency: 1, fetch_batch: None, partitions: None }];
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
    let key = auth::create_api_key(&db.pool, "studio", "comms", &[auth::Role::Enqueue]).await.unwrap();
    let api = app(
        ApiState::new(env.client.clone(), db.pool.clone())
            .with_tenancy(fleet_scheduler::tenancy::TenancyConfig::for_tests())
            .with_secrets(SecretBox::new(KEY).unwrap()),
        1 << 20,
    );

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

    let registry = Registry::new()
        .register(SyncSource::new(db.pool.clone(), Some(SecretBox::new(KEY).unwrap())).with_allowed(loopback()));
    let mut cfg = env.config("comms", 1);
    cfg.queues = vec![QueueConfig { name: "comms".into(), concurrency: 1, fetch_batch: None, partitions: None }];
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

/// A multipart message whose only text part never gets its closing boundary, as some
/// mailers and truncating relays send it: through Dovecot, `comms.sync` and the API,
/// its text is shown and it lists no attachment; a real attachment that is cut off the
/// same way stays listed, with its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unterminated_text_part_is_shown_as_text_not_listed_as_an_attachment() {
    use fleet_scheduler::api::{ApiState, app, auth};
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let account = new_user();
    add_source(&db, "src-cut", "studio", &account).await;
    let head = |id: &str| {
        format!(
            "From: Anna <anna@example.com>\r\nTo: studio@photo.example\r\nMessage-ID: <{id}>\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\nSubject: Booking\r\nMIME-Version: 1.0\r\n"
        )
    };
    let only_text = format!(
        "{}Content-Type: multipart/mixed; boundary=\"cut\"\r\n\r\n--cut\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nWe would love to book you for June at the caf=E9.\r\nAnna\r\n",
        head("cut-text@x")
    );
    let cut_pdf = format!(
        "{}Content-Type: multipart/mixed; boundary=\"cut\"\r\n\r\n--cut\r\nContent-Type: text/plain\r\n\r\nThe contract is attached.\r\n--cut\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"contract.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n",
        head("cut-pdf@x")
    );
    load(&account, "INBOX", &[only_text.into_bytes(), cut_pdf.into_bytes()]).await;

    let registry = Registry::new()
        .register(SyncSource::new(db.pool.clone(), Some(SecretBox::new(KEY).unwrap())).with_allowed(loopback()));
    let mut cfg = env.config("comms", 1);
    cfg.queues = vec![QueueConfig { name: "comms".into(), concurrency: 1, fetch_batch: None, partitions: None }];
    let worker = env.worker(cfg, registry).await;
    let mut rx = worker.events();
    let tenant = EnqueueOptions { tenant: Some("studio".into()), ..Default::default() };
    env.client.enqueue_with(&CommsSync { source_id: "src-cut".into() }, tenant).await.unwrap();
    n_final(&mut rx, 1, Duration::from_secs(60)).await;

    let key = auth::create_api_key(&db.pool, "studio", "comms", &[auth::Role::Enqueue]).await.unwrap();
    let api = app(
        ApiState::new(env.client.clone(), db.pool.clone())
            .with_tenancy(fleet_scheduler::tenancy::TenancyConfig::for_tests())
            .with_secrets(SecretBox::new(KEY).unwrap()),
        1 << 20,
    );
    let (s, page) = call(&api, &key, "GET", "/v1/comms/clients/anna/timeline", serde_json::Value::Null).await;
    assert_eq!(s, 200, "{page}");
    let entries = page["entries"].as_array().unwrap();
    let entry =
        |mid: &str| entries.iter().find(|e| e["message_id"] == mid).unwrap_or_else(|| panic!("{mid} in {page}"));
    let text = entry("cut-text@x");
    assert_eq!(text["text"], "We would love to book you for June at the café.\nAnna", "{text}");
    assert_eq!(text["snippet"], "We would love to book you for June at the café. Anna");
    assert_eq!(text["attachments"], serde_json::json!([]), "{text}");
    let pdf = entry("cut-pdf@x");
    assert_eq!(pdf["text"], "The contract is attached.");
    let listed = pdf["attachments"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{pdf}");
    assert_eq!(listed[0]["name"], "contract.pdf");
    assert_eq!(listed[0]["content_type"], "application/pdf");
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

/// Answers 429 to every page: `Retry-After: 1` until the last try, then 30.
async fn always_busy(
    axum::extract::State(calls): axum::extract::State<Arc<std::sync::atomic::AtomicUsize>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    let wait = if n >= 5 { "30" } else { "1" };
    (axum::http::StatusCode::TOO_MANY_REQUESTS, [("retry-after", wait)], "slow down").into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_429_is_retried_then_slows_the_whole_account_down_fleet_wide() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = axum::Router::new()
        .route("/2010-04-01/Accounts/{account}/{resource}", axum::routing::get(always_busy))
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let secrets = SecretBox::new(KEY).unwrap();
    sqlx::query(
        "INSERT INTO comms_sources (id, tenant, kind, config, secret) VALUES ('sms-busy', 'studio', 'sms', $1, $2)",
    )
    .bind(serde_json::json!({"api_base": base, "account_sid": "AC429", "calls": false}))
    .bind(secrets.seal("sms-busy", "auth-token").unwrap())
    .execute(&db.pool)
    .await
    .unwrap();

    let limiter = fleet_jobs::limits::Limiter::new(
        fleet_jobs::connect(&fleet_tests::redis_url()).await.unwrap(),
        env.prefix.clone(),
        Duration::from_secs(30),
    );
    let rules: std::collections::BTreeMap<String, fleet_jobs::limits::LimitSpec> =
        toml::from_str("[\"sms:*\"]\nbreaker_failures = 5\n").unwrap();
    let table = Arc::new(fleet_kit::limits::LimitTable::new(&rules));
    let spec = table.spec("sms:studio:AC429").cloned().expect("sms:* matches the account");
    let handler = SyncSource::new(db.pool.clone(), Some(secrets)).with_allowed(loopback());
    let mut cfg = env.config("comms", 1);
    cfg.queues = vec![QueueConfig { name: "comms".into(), concurrency: 1, fetch_batch: None, partitions: None }];
    // The handler takes the account's key through the worker's limits.
    cfg.limits = rules;
    let worker = env.worker(cfg, Registry::new().register(handler)).await;
    env.client.enqueue(&CommsSync { source_id: "sms-busy".into() }).await.unwrap();

    // The run retries each 429 after its Retry-After, then holds the account back for the
    // last Retry-After: any job of any source of AC429 now waits, fleet-wide.
    let (limiter2, spec2) = (limiter.clone(), spec.clone());
    eventually("the account is slowed down", Duration::from_secs(60), || {
        let (limiter, spec) = (limiter2.clone(), spec2.clone());
        async move {
            match limiter.acquire("sms:studio:AC429", "probe", &spec).await.ok()?.0 {
                fleet_jobs::limits::Admission::Wait { reason: fleet_jobs::limits::WaitReason::SlowDown, delay } => {
                    Some(delay)
                }
                fleet_jobs::limits::Admission::Admitted => {
                    limiter.release("sms:studio:AC429", "probe", &spec).await.ok();
                    None
                }
                _ => None,
            }
        }
    })
    .await;
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 5, "five tries, each after the Retry-After");
    // The hold is set as the run ends; its error is recorded on the source right after.
    let pool = db.pool.clone();
    let error = eventually("the 429 is recorded on the source", Duration::from_secs(10), || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, Option<String>>("SELECT last_error FROM comms_sources WHERE id = 'sms-busy'")
                .fetch_one(&pool)
                .await
                .ok()
                .flatten()
        }
    })
    .await;
    assert!(error.contains("429"), "{error}");
    worker.shutdown().await;
    db.drop_db().await;
    env.cleanup().await;
}

/// A source's host is a tenant's input: without an allow-list, a mail server at a private
/// address (here the loopback Dovecot) and an SMS API at one are refused for good, each with
/// the reason on its source, and nothing is read.
#[tokio::test]
async fn servers_at_private_addresses_are_refused_by_default() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let account = new_user();
    load(&account, "INBOX", &[mail("p1@x", None, "hello")]).await;
    add_source(&db, "src-private", "studio", &account).await;
    let secrets = SecretBox::new(KEY).unwrap();
    sqlx::query(
        "INSERT INTO comms_sources (id, tenant, kind, config, secret) VALUES ('sms-private', 'studio', 'sms', $1, $2)",
    )
    .bind(serde_json::json!({"api_base": "http://10.1.2.3", "account_sid": "AC1"}))
    .bind(secrets.seal("sms-private", "auth-token").unwrap())
    .execute(&db.pool)
    .await
    .unwrap();

    let registry = Registry::new().register(SyncSource::new(db.pool.clone(), Some(secrets)));
    let mut cfg = env.config("comms", 2);
    cfg.queues = vec![QueueConfig { name: "comms".into(), concurrency: 2, fetch_batch: None, partitions: None }];
    let worker = env.worker(cfg, registry).await;
    let mut rx = worker.events();
    let tenant = EnqueueOptions { tenant: Some("studio".into()), ..Default::default() };
    env.client.enqueue_with(&CommsSync { source_id: "src-private".into() }, tenant.clone()).await.unwrap();
    env.client.enqueue_with(&CommsSync { source_id: "sms-private".into() }, tenant).await.unwrap();
    let finals = n_final(&mut rx, 2, Duration::from_secs(60)).await;
    assert_eq!(finals.len(), 2);
    for source in ["src-private", "sms-private"] {
        let pool = db.pool.clone();
        let error = eventually("the refusal is recorded", Duration::from_secs(10), || {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, Option<String>>("SELECT last_error FROM comms_sources WHERE id = $1")
                    .bind(source)
                    .fetch_one(&pool)
                    .await
                    .ok()
                    .flatten()
            }
        })
        .await;
        assert!(error.contains("SSRF guard"), "{source}: {error}");
    }
    assert_eq!(count(&db, "SELECT count(*) FROM comms_entries").await, 0);
    worker.shutdown().await;
    db.drop_db().await;
    env.cleanup().await;
}

/// An HS256 JWT for `user` signed with the test Dovecot's OAuth2 key (`scripts/dovecot.sh`).
fn dovecot_jwt(user: &str, valid_for: i64) -> String {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let dir = std::env::var("FLEET_DOVECOT_DIR").unwrap_or_else(|_| "/tmp/fleet-dovecot".into());
    let key = std::fs::read_to_string(format!("{dir}/oauth2/secret")).expect("the test OAuth2 key");
    let b64u = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let now = chrono::Utc::now().timestamp();
    let header = b64u(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = b64u(
        serde_json::json!({"sub": user, "iat": now - 10, "nbf": now - 10, "exp": now + valid_for})
            .to_string()
            .as_bytes(),
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.trim().as_bytes()).unwrap();
    mac.update(format!("{header}.{claims}").as_bytes());
    format!("{header}.{claims}.{}", b64u(&mac.finalize().into_bytes()))
}

/// XOAUTH2 mail with OAuth credentials: the server refuses the stored (expired) access token,
/// the sync renews it at the token endpoint, stores it sealed and the retry reads the mail.
#[tokio::test]
async fn an_xoauth2_source_renews_a_refused_access_token_and_syncs() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let account = new_user();
    load(&account, "INBOX", &[mail("oauth-renew@x", None, "hello over oauth")]).await;

    // A token endpoint minting Dovecot-valid tokens for this user's refresh token.
    let refreshes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let user = account.user.clone();
    let counter = refreshes.clone();
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post(move |body: String| {
            let (user, counter) = (user.clone(), counter.clone());
            async move {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                assert!(body.contains("grant_type=refresh_token") && body.contains("refresh_token=rt-mail"), "{body}");
                axum::Json(serde_json::json!({"access_token": dovecot_jwt(&user, 600), "expires_in": 600}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token_url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = std::env::var("FLEET_DOVECOT_DIR").unwrap_or_else(|_| "/tmp/fleet-dovecot".into());
    let tls_port: u16 = std::env::var("FLEET_TEST_IMAPS_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(10993);
    let config = serde_json::json!({"host": "127.0.0.1", "port": tls_port, "user": account.user, "tls": true,
        "ca_file": format!("{dir}/tls/ca.pem"), "auth": "xoauth2"});
    let credentials = serde_json::json!({"access_token": dovecot_jwt(&account.user, -60),
        "expires_at": chrono::Utc::now().timestamp() + 3600, "refresh_token": "rt-mail", "token_url": token_url,
        "client_id": "cid"});
    let secrets = SecretBox::new(KEY).unwrap();
    sqlx::query(
        "INSERT INTO comms_sources (id, tenant, kind, config, secret) VALUES ('src-oauth', 'studio', 'imap', $1, $2)",
    )
    .bind(config)
    .bind(secrets.seal("src-oauth", &credentials.to_string()).unwrap())
    .execute(&db.pool)
    .await
    .unwrap();

    let registry =
        Registry::new().register(SyncSource::new(db.pool.clone(), Some(secrets.clone())).with_allowed(loopback()));
    let mut cfg = env.config("comms", 1);
    cfg.queues = vec![QueueConfig { name: "comms".into(), concurrency: 1, fetch_batch: None, partitions: None }];
    let worker = env.worker(cfg, registry).await;
    let tenant = EnqueueOptions { tenant: Some("studio".into()), ..Default::default() };
    env.client.enqueue_with(&CommsSync { source_id: "src-oauth".into() }, tenant).await.unwrap();
    let pool = db.pool.clone();
    eventually("the mail is read after the renewal", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM comms_entries WHERE source_id = 'src-oauth'")
                .fetch_one(&pool)
                .await
                .ok()?;
            (n == 1).then_some(())
        }
    })
    .await;
    assert_eq!(refreshes.load(std::sync::atomic::Ordering::SeqCst), 1, "one renewal");
    let sealed: String = sqlx::query_scalar("SELECT secret FROM comms_sources WHERE id = 'src-oauth'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let stored: serde_json::Value = serde_json::from_str(&secrets.open("src-oauth", &sealed).unwrap()).unwrap();
    assert_ne!(stored["access_token"], credentials["access_token"], "the renewed token is stored");
    assert_eq!(stored["refresh_token"], "rt-mail");
    worker.shutdown().await;
    db.drop_db().await;
    env.cleanup().await;
}
