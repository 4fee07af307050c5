//! The webhook kinds, one attempt at a time through `fleet_kit::testing`: a database of
//! each test's own, a local receiver for deliveries, Redis only where publish fans out.

use axum::http::{HeaderMap, StatusCode};
use fleet_jobs::catalogue::webhook::message_id;
use fleet_jobs::catalogue::{WebhookDelivery, WebhookIntake, WebhookPublish};
use fleet_jobs::{Client, JobState};
use fleet_kit::testing::{TestDb, TestJob, assert_give_up, assert_slow_down, perform_job, unreachable_database};
use fleet_webhooks::jobs::intake::Record;
use fleet_webhooks::jobs::publish::Publish;
use fleet_webhooks::jobs::{Deliver, WebhookSettings};
use fleet_webhooks::signing::{Secret, verify};
use sqlx::PgPool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A job client on no server: an enqueue through it fails (a retry), so a job that gives
/// up with it has enqueued nothing.
fn no_redis() -> Client {
    let client = redis::Client::open("redis://127.0.0.1:1").unwrap();
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_number_of_retries(0)
        .set_connection_timeout(Some(Duration::from_secs(1)));
    Client::new(redis::aio::ConnectionManager::new_lazy_with_config(client, config).unwrap(), "unused")
}

fn local_delivery() -> WebhookSettings {
    WebhookSettings { allow: vec!["127.0.0.0/8".into()], timeout_ms: 10_000, ..WebhookSettings::default() }
}

async fn endpoint(db: &PgPool, id: &str, tenant: &str, url: &str, secret: &str, event_types: &[&str]) {
    sqlx::query("INSERT INTO webhook_endpoints (id, tenant, url, secrets, event_types) VALUES ($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(tenant)
        .bind(url)
        .bind(vec![secret.to_owned()])
        .bind(event_types.iter().map(|t| t.to_string()).collect::<Vec<_>>())
        .execute(db)
        .await
        .unwrap();
}

async fn message(db: &PgPool, id: &str, tenant: &str, payload: &str) {
    sqlx::query("INSERT INTO webhook_messages (id, tenant, event_type, payload) VALUES ($1, $2, 'order.paid', $3)")
        .bind(id)
        .bind(tenant)
        .bind(payload)
        .execute(db)
        .await
        .unwrap();
}

async fn count(db: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.unwrap()
}

/// One request the receiver saw.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// A receiver on a loopback port: `/ok` answers 200, `/gone` 410, `/busy` 429 with
/// `Retry-After: 30`. Returns its base URL and what it saw.
async fn receiver() -> (String, Arc<Mutex<Vec<Received>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri, headers: HeaderMap, body: axum::body::Bytes| {
        let log = log.clone();
        async move {
            let path = uri.path().to_owned();
            log.lock().unwrap().push(Received { path: path.clone(), headers, body: body.to_vec() });
            match path.as_str() {
                "/ok" => (StatusCode::OK, HeaderMap::new()),
                "/gone" => (StatusCode::GONE, HeaderMap::new()),
                _ => {
                    let mut h = HeaderMap::new();
                    h.insert("retry-after", "30".parse().unwrap());
                    (StatusCode::TOO_MANY_REQUESTS, h)
                }
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

#[tokio::test]
async fn a_delivery_without_a_tenant_gives_up_before_reading_anything() {
    let deliver = Deliver::new(unreachable_database(), local_delivery()).unwrap();
    let args = WebhookDelivery { message_id: "msg_1".into(), endpoint_id: "ep_1".into() };
    let why = assert_give_up(&perform_job(&deliver, args).await).to_owned();
    assert!(why.contains("needs a tenant"), "{why}");
}

#[tokio::test]
async fn an_endpoint_of_another_tenant_is_not_found_and_nothing_is_sent() {
    let db = TestDb::new(&MIGRATOR).await;
    let (base, seen) = receiver().await;
    endpoint(&db.pool, "ep_1", "t2", &format!("{base}/ok"), &Secret::generate(), &[]).await;
    message(&db.pool, "msg_1", "t1", r#"{"n":1}"#).await;
    let deliver = Deliver::new(db.pool.clone(), local_delivery()).unwrap();
    let args = WebhookDelivery { message_id: "msg_1".into(), endpoint_id: "ep_1".into() };

    let out = TestJob::new().tenant("t1").perform(&deliver, args).await;
    assert_eq!(assert_give_up(&out), "endpoint ep_1 not found", "the same words as a missing endpoint");
    assert!(seen.lock().unwrap().is_empty(), "nothing sent to another tenant's endpoint");
    assert_eq!(count(&db.pool, "SELECT count(*) FROM webhook_attempts").await, 0);
    db.drop_db().await;
}

#[tokio::test]
async fn a_delivery_is_signed_with_standard_webhooks_headers_over_the_exact_payload() {
    let db = TestDb::new(&MIGRATOR).await;
    let (base, seen) = receiver().await;
    let secret = Secret::generate();
    endpoint(&db.pool, "ep_1", "t1", &format!("{base}/ok"), &secret, &[]).await;
    // Spacing and key order are the publisher's: signatures cover these bytes.
    let payload = r#"{ "b": 2,  "a": "é" }"#;
    message(&db.pool, "msg_1", "t1", payload).await;
    let deliver = Deliver::new(db.pool.clone(), local_delivery()).unwrap();
    let args = WebhookDelivery { message_id: "msg_1".into(), endpoint_id: "ep_1".into() };

    TestJob::new().tenant("t1").attempt(2, 10).perform(&deliver, args).await.unwrap();
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    let header = |name: &str| got[0].headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(got[0].body, payload.as_bytes());
    assert_eq!(header("webhook-id").as_deref(), Some("msg_1"));
    assert_eq!(header("content-type").as_deref(), Some("application/json"));
    let now = chrono::Utc::now().timestamp();
    verify(
        &[Secret::parse(&secret).unwrap()],
        header("webhook-id").as_deref(),
        header("webhook-timestamp").as_deref(),
        header("webhook-signature").as_deref(),
        &got[0].body,
        now,
    )
    .expect("a receiver holding the endpoint's secret verifies the delivery");
    let (attempt, outcome, status): (i32, String, Option<i32>) =
        sqlx::query_as("SELECT attempt, outcome, status FROM webhook_attempts").fetch_one(&db.pool).await.unwrap();
    assert_eq!((attempt, outcome.as_str(), status), (2, "delivered", Some(200)));
    db.drop_db().await;
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_too_many_requests_slows_it_down() {
    let db = TestDb::new(&MIGRATOR).await;
    let (base, seen) = receiver().await;
    endpoint(&db.pool, "ep_gone", "t1", &format!("{base}/gone"), &Secret::generate(), &[]).await;
    endpoint(&db.pool, "ep_busy", "t1", &format!("{base}/busy"), &Secret::generate(), &[]).await;
    message(&db.pool, "msg_1", "t1", "{}").await;
    let deliver = Deliver::new(db.pool.clone(), local_delivery()).unwrap();
    let job = TestJob::new().tenant("t1");

    let gone =
        job.perform(&deliver, WebhookDelivery { message_id: "msg_1".into(), endpoint_id: "ep_gone".into() }).await;
    assert!(assert_give_up(&gone).contains("410"), "{gone:?}");
    let enabled: bool = sqlx::query_scalar("SELECT enabled FROM webhook_endpoints WHERE id = 'ep_gone'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(!enabled, "a 410 disables the endpoint");
    // Disabled: the next delivery is skipped without a request.
    let again =
        job.perform(&deliver, WebhookDelivery { message_id: "msg_1".into(), endpoint_id: "ep_gone".into() }).await;
    assert!(assert_give_up(&again).starts_with("endpoint disabled"), "{again:?}");

    let busy =
        job.perform(&deliver, WebhookDelivery { message_id: "msg_1".into(), endpoint_id: "ep_busy".into() }).await;
    assert_eq!(assert_slow_down(&busy), ("HTTP 429 Too Many Requests", Duration::from_secs(30)));
    let paths: Vec<String> = seen.lock().unwrap().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/gone", "/busy"]);
    db.drop_db().await;
}

#[tokio::test]
async fn publish_without_a_tenant_gives_up_before_recording_anything() {
    let publish = Publish::new(unreachable_database(), no_redis());
    let args = WebhookPublish {
        event_type: "order.paid".into(),
        payload: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
    };
    assert!(assert_give_up(&perform_job(&publish, args).await).contains("needs a tenant"));
}

#[tokio::test]
async fn publish_fans_nothing_out_under_a_message_id_another_tenant_holds() {
    let db = TestDb::new(&MIGRATOR).await;
    message(&db.pool, &message_id("j1"), "t2", r#"{"theirs":true}"#).await;
    endpoint(&db.pool, "ep_1", "t1", "https://example.com/hook", &Secret::generate(), &[]).await;
    // An enqueue through `no_redis` would fail as a retry: giving up shows none was tried.
    let publish = Publish::new(db.pool.clone(), no_redis());
    let args = WebhookPublish {
        event_type: "order.paid".into(),
        payload: serde_json::value::RawValue::from_string(r#"{"mine":true}"#.into()).unwrap(),
    };

    let out = TestJob::new().id("j1").tenant("t1").perform(&publish, args).await;
    assert!(assert_give_up(&out).contains("already taken"), "{out:?}");
    let payload: String = sqlx::query_scalar("SELECT payload FROM webhook_messages").fetch_one(&db.pool).await.unwrap();
    assert_eq!(payload, r#"{"theirs":true}"#, "the other tenant's message is untouched");
    db.drop_db().await;
}

#[tokio::test]
async fn publish_enqueues_one_delivery_per_subscribed_endpoint_of_the_tenant_once() {
    let db = TestDb::new(&MIGRATOR).await;
    let url = "https://example.com/hook";
    endpoint(&db.pool, "ep_all", "t1", url, &Secret::generate(), &[]).await;
    endpoint(&db.pool, "ep_paid", "t1", url, &Secret::generate(), &["order.paid"]).await;
    endpoint(&db.pool, "ep_other", "t1", url, &Secret::generate(), &["order.refunded"]).await;
    endpoint(&db.pool, "ep_theirs", "t2", url, &Secret::generate(), &[]).await;
    sqlx::query("UPDATE webhook_endpoints SET enabled = FALSE WHERE id = 'ep_paid'").execute(&db.pool).await.unwrap();
    endpoint(&db.pool, "ep_paid2", "t1", url, &Secret::generate(), &["order.paid"]).await;
    let redis_url = std::env::var("FLEET_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("test-webhooks-{}-{}", std::process::id(), fleet_jobs::envelope::now_ms());
    let client = Client::connect(&redis_url, prefix.clone()).await.expect("Redis (scripts/services.sh)");
    let publish = Publish::new(db.pool.clone(), client.clone());
    let payload = r#"{"order": 7}"#;
    let args = || WebhookPublish {
        event_type: "order.paid".into(),
        payload: serde_json::value::RawValue::from_string(payload.into()).unwrap(),
    };

    let job = TestJob::new().id("j1").tenant("t1");
    job.perform(&publish, args()).await.unwrap();
    // A retry of the same job (same id) records and enqueues nothing twice.
    job.attempt(2, 20).perform(&publish, args()).await.unwrap();

    let ready = client.jobs_in_state("webhooks", JobState::Ready, 0, 100).await.unwrap();
    let mut sent = Vec::new();
    for summary in &ready {
        let env = client.job("webhooks", &summary.id).await.unwrap().unwrap().envelope.unwrap();
        let args: WebhookDelivery = serde_json::from_str(env.args.get()).unwrap();
        assert_eq!(env.tenant.as_deref(), Some("t1"), "deliveries carry the tenant");
        assert_eq!(args.message_id, message_id("j1"));
        sent.push(args.endpoint_id);
    }
    sent.sort();
    assert_eq!(sent, ["ep_all", "ep_paid2"]);
    let stored: (String, String) =
        sqlx::query_as("SELECT tenant, payload FROM webhook_messages").fetch_one(&db.pool).await.unwrap();
    assert_eq!(stored, ("t1".to_owned(), payload.to_owned()));

    let mut conn = client.connection();
    for key in client.scan_keys(&format!("{prefix}:*")).await.unwrap() {
        let _: () = redis::cmd("DEL").arg(key).query_async(&mut conn).await.unwrap();
    }
    db.drop_db().await;
}

#[tokio::test]
async fn intake_refuses_a_job_with_a_tenant_before_recording_anything() {
    let record = Record::new(unreachable_database(), no_redis());
    let args = WebhookIntake {
        provider: "stripe".into(),
        id: "evt_1".into(),
        body: "{}".into(),
        received_at: 1,
        routes: vec![],
    };
    let out = TestJob::new().tenant("t1").perform(&record, args).await;
    assert!(assert_give_up(&out).contains("refused"), "{out:?}");
}

#[tokio::test]
async fn intake_records_an_event_once_however_often_it_runs() {
    let db = TestDb::new(&MIGRATOR).await;
    let record = Record::new(db.pool.clone(), no_redis());
    let event = |body: &str| WebhookIntake {
        provider: "stripe".into(),
        id: "evt_1".into(),
        body: body.into(),
        received_at: 1_764_892_800_000,
        routes: vec![],
    };
    perform_job(&record, event("first")).await.unwrap();
    perform_job(&record, event("replayed")).await.unwrap();
    let rows: Vec<(String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT body, received_at FROM intake_events").fetch_all(&db.pool).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, "first");
    assert_eq!(rows[0].1.timestamp_millis(), 1_764_892_800_000);
    db.drop_db().await;
}

#[tokio::test]
async fn intake_routes_enqueue_their_jobs_for_the_configured_tenant_once_however_often_it_runs() {
    let db = TestDb::new(&MIGRATOR).await;
    let redis_url = std::env::var("FLEET_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("test-intake-routes-{}-{}", std::process::id(), fleet_jobs::envelope::now_ms());
    let client = Client::connect(&redis_url, prefix.clone()).await.expect("Redis (scripts/services.sh)");
    let record = Record::new(db.pool.clone(), client.clone());
    let body = r#"{"id":"evt_9","type":"client.updated","client":{"id":"c_7"}}"#;
    let args = WebhookIntake {
        provider: "crm".into(),
        id: "evt_9".into(),
        body: body.into(),
        received_at: 1,
        routes: vec![fleet_jobs::catalogue::IntakeRoute {
            tenant: "studio-7".into(),
            kind: "webhook.publish".into(),
            queue: None,
            args: format!(r#"{{"event_type":"crm.client.updated","payload":{body}}}"#),
        }],
    };
    let job = TestJob::new().id("intake-1");
    job.perform(&record, args.clone()).await.unwrap();
    // The same attempt again (a worker died after enqueueing) and a second delivery of the
    // same event (another intake job) enqueue nothing more.
    job.attempt(2, 10).perform(&record, args.clone()).await.unwrap();
    TestJob::new().id("intake-2").perform(&record, args).await.unwrap();
    let ready = client.jobs_in_state("webhooks", JobState::Ready, 0, 100).await.unwrap();
    assert_eq!(ready.len(), 1, "{ready:?}");
    let env = client.job("webhooks", &ready[0].id).await.unwrap().unwrap().envelope.unwrap();
    assert_eq!((env.kind.as_str(), env.tenant.as_deref()), ("webhook.publish", Some("studio-7")));
    let published: WebhookPublish = serde_json::from_str(env.args.get()).unwrap();
    assert_eq!((published.event_type.as_str(), published.payload.get()), ("crm.client.updated", body));

    // A route naming a kind Fleet does not have gives up with that name, after recording.
    let bad = WebhookIntake {
        id: "evt_10".into(),
        routes: vec![fleet_jobs::catalogue::IntakeRoute {
            tenant: "studio-7".into(),
            kind: "crm.sync".into(),
            queue: None,
            args: "{}".into(),
        }],
        ..WebhookIntake { provider: "crm".into(), id: String::new(), body: "{}".into(), received_at: 1, routes: vec![] }
    };
    let out = perform_job(&record, bad).await;
    assert!(assert_give_up(&out).contains("crm.sync"), "{out:?}");

    let mut conn = client.connection();
    for key in client.scan_keys(&format!("{prefix}:*")).await.unwrap() {
        let _: () = redis::cmd("DEL").arg(key).query_async(&mut conn).await.unwrap();
    }
    db.drop_db().await;
}
