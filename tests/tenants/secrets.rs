//! Hostile-tenant cases: webhook deliveries for another tenant's endpoint or message,
//! forged intake jobs, secrets at rest (sealed, rotated, re-sealed) and URLs with tokens
//! in attempt rows, job errors and listings.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Request, StatusCode};
use fleet_accounts::secrets::{SecretBox, row_aad};
use fleet_jobs::EnqueueOptions;
use fleet_jobs::catalogue::{WebhookDelivery, WebhookIntake};
use fleet_jobs::retry::{Backoff, Jitter};
use fleet_jobs::state::DeadLetter;
use fleet_scheduler::api::{ApiState, app, auth};
use fleet_tests::{TestDb, TestEnv, eventually};
use fleet_webhooks::jobs::{Deliver, WebhookSettings};
use fleet_webhooks::signing::{Secret, verify};
use fleet_worker::{KindPolicy, Registry, RunningWorker};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::ServiceExt;

const T: Duration = Duration::from_secs(60);
const OLD_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const NEW_KEY: &str = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf";

/// Requests a receiver got, by path.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<(String, HeaderMap, Bytes)>>>,
}

impl Receiver {
    fn count(&self, path: &str) -> usize {
        self.got.lock().unwrap().iter().filter(|g| g.0 == path).count()
    }
    fn of(&self, path: &str) -> Vec<(HeaderMap, Bytes)> {
        self.got.lock().unwrap().iter().filter(|g| g.0 == path).map(|g| (g.1.clone(), g.2.clone())).collect()
    }
}

async fn receive(State(r): State<Receiver>, Path(p): Path<String>, headers: HeaderMap, body: Bytes) -> StatusCode {
    r.got.lock().unwrap().push((p, headers, body));
    StatusCode::OK
}

struct World {
    env: TestEnv,
    db: TestDb,
    api: Router,
    /// Tenant A (`acme`) and tenant B (`bravo`).
    key_a: String,
    key_b: String,
    receiver: Receiver,
    base: String,
    worker: Option<RunningWorker>,
}

impl World {
    /// An API sealing with `api_key` (none: not configured) and a worker opening with `worker_keys`.
    async fn new(api_key: Option<SecretBox>, worker_keys: Option<SecretBox>) -> World {
        let env = TestEnv::new().await;
        let db = TestDb::new().await;
        let key_a = auth::create_api_key(&db.pool, "acme", "a", &[auth::Role::Enqueue]).await.unwrap();
        let key_b = auth::create_api_key(&db.pool, "bravo", "b", &[auth::Role::Enqueue]).await.unwrap();
        let mut state = ApiState::new(env.client.clone(), db.pool.clone());
        state.secrets = api_key;
        let api = app(state, 1 << 20);
        let receiver = Receiver::default();
        let router = Router::new().route("/{p}", axum::routing::post(receive)).with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let settings = WebhookSettings {
            allow: vec!["127.0.0.0/8".into()],
            connect_timeout_ms: 500,
            timeout_ms: 800,
            ..Default::default()
        };
        let policy = KindPolicy {
            backoff: Backoff::exponential(Duration::from_millis(50))
                .jitter(Jitter::None)
                .max(Duration::from_millis(200)),
            timeout: None,
        };
        let registry = Registry::new()
            .register_with(Deliver::new(db.pool.clone(), settings).unwrap().with_secrets(worker_keys), policy)
            .register(fleet_webhooks::jobs::intake::Record::new(db.pool.clone(), env.client.clone()))
            .register(fleet_webhooks::jobs::publish::Publish::new(db.pool.clone(), env.client.clone()));
        let mut cfg = env.config("webhooks", 10);
        cfg.lease_ms = 10_000;
        let worker = Some(env.worker(cfg, registry).await);
        World { env, db, api, key_a, key_b, receiver, base, worker }
    }

    async fn call(&self, key: &str, method: &str, uri: &str, body: Value) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let res = self.api.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Subscribes `url` for the tenant of `key`: (endpoint id, secret).
    async fn subscribe(&self, key: &str, url: &str) -> (String, String) {
        let (s, ep) = self.call(key, "POST", "/v1/endpoints", json!({"url": url})).await;
        assert_eq!(s, StatusCode::CREATED, "{ep}");
        (ep["id"].as_str().unwrap().to_owned(), ep["secret"].as_str().unwrap().to_owned())
    }

    /// Publishes an event for the tenant of `key`: the message id.
    async fn publish(&self, key: &str, payload: Value) -> String {
        let (s, v) = self.call(key, "POST", "/v1/events", json!({"type": "t.x", "payload": payload})).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        let id = v["id"].as_str().unwrap().to_owned();
        // The message row is written by the `webhook.publish` job: a delivery enqueued by
        // hand before it runs would find no message.
        eventually(&format!("message {id} stored"), T, || async {
            let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM webhook_messages WHERE id = $1")
                .bind(&id)
                .fetch_optional(&self.db.pool)
                .await
                .unwrap();
            found
        })
        .await;
        id
    }

    /// A `webhook.deliver` job enqueued directly with `tenant` in its envelope.
    async fn deliver_as(&self, tenant: &str, message_id: &str, endpoint_id: &str, attempts: u32) -> String {
        let args = WebhookDelivery { message_id: message_id.into(), endpoint_id: endpoint_id.into() };
        let opts = EnqueueOptions { tenant: Some(tenant.into()), max_attempts: Some(attempts), ..Default::default() };
        self.env.client.enqueue_with(&args, opts).await.unwrap().0
    }

    /// The dead letter of job `id`, once it is dead.
    async fn dead(&self, id: &str) -> DeadLetter {
        eventually(&format!("job {id} in the dead letters"), T, || async {
            self.env.client.dead_letters("webhooks", 0, 100).await.unwrap().into_iter().find(|d| d.id == id)
        })
        .await
    }

    async fn secrets_of(&self, endpoint: &str) -> Vec<String> {
        sqlx::query_scalar("SELECT secrets FROM webhook_endpoints WHERE id = $1")
            .bind(endpoint)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    async fn done(mut self) {
        if let Some(w) = self.worker.take() {
            w.shutdown().await;
        }
        self.db.drop_db().await;
        self.env.cleanup().await;
    }
}

fn verifies(got: &(HeaderMap, Bytes), secret: &str) -> bool {
    let h = |n: &str| got.0.get(n).and_then(|v| v.to_str().ok());
    let s = [Secret::parse(secret).unwrap()];
    let now = chrono::Utc::now().timestamp();
    verify(&s, h("webhook-id"), h("webhook-timestamp"), h("webhook-signature"), &got.1, now).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_job_of_tenant_b_naming_a_s_endpoint_or_message_sends_nothing_and_gives_up() {
    let keys = SecretBox::new(NEW_KEY).unwrap();
    let w = World::new(Some(keys.clone()), Some(keys)).await;
    let (ep_a, _) = w.subscribe(&w.key_a, &format!("{}/a", w.base)).await;
    let (ep_b, _) = w.subscribe(&w.key_b, &format!("{}/b", w.base)).await;
    let msg_a = w.publish(&w.key_a, json!({"secret": "A's"})).await;
    let msg_b = w.publish(&w.key_b, json!({"secret": "B's"})).await;
    eventually("each tenant's own delivery", T, || async {
        (w.receiver.count("a") == 1 && w.receiver.count("b") == 1).then_some(())
    })
    .await;
    // An attempt row is written once the receiver has answered.
    eventually("both deliveries' attempt rows", T, || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_attempts").fetch_one(&w.db.pool).await.unwrap();
        (n == 2).then_some(())
    })
    .await;

    // B's message to A's URL (signed with A's secret), A's message to B's URL, A's
    // message to A's URL on B's behalf; and ids that do not exist at all.
    let b_to_a = w.deliver_as("bravo", &msg_b, &ep_a, 5).await;
    let a_to_b = w.deliver_as("bravo", &msg_a, &ep_b, 5).await;
    let a_to_a = w.deliver_as("bravo", &msg_a, &ep_a, 5).await;
    let no_endpoint = w.deliver_as("bravo", &msg_b, "ep_nope", 5).await;
    let no_message = w.deliver_as("bravo", "msg_nope", &ep_b, 5).await;
    // No tenant at all: not from webhook.publish either.
    let anonymous = {
        let args = WebhookDelivery { message_id: msg_a.clone(), endpoint_id: ep_a.clone() };
        w.env.client.enqueue(&args).await.unwrap().0
    };

    let reason = |d: &DeadLetter| d.reason.clone();
    let dead_b_to_a = w.dead(&b_to_a).await;
    assert_eq!(reason(&dead_b_to_a), format!("endpoint {ep_a} not found"));
    assert_eq!(dead_b_to_a.job.attempts, 1, "given up at once, not retried");
    assert_eq!(reason(&w.dead(&a_to_b).await), format!("message {msg_a} not found"));
    assert_eq!(reason(&w.dead(&a_to_a).await), format!("endpoint {ep_a} not found"));
    // The same words as for ids that do not exist: nothing to learn about A.
    assert_eq!(reason(&w.dead(&no_endpoint).await), "endpoint ep_nope not found");
    assert_eq!(reason(&w.dead(&no_message).await), "message msg_nope not found");
    assert!(reason(&w.dead(&anonymous).await).contains("needs a tenant"));

    assert_eq!(w.receiver.count("a"), 1, "A's receiver got only A's own event");
    assert_eq!(w.receiver.count("b"), 1, "B's receiver got only B's own event");
    let attempts: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_attempts").fetch_one(&w.db.pool).await.unwrap();
    assert_eq!(attempts, 2, "no attempt logged for the refused jobs");
    w.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intake_job_with_a_tenant_is_refused_and_records_nothing() {
    let w = World::new(None, None).await;
    let forged =
        WebhookIntake { provider: "sms".into(), id: "evt_1".into(), body: "{}".into(), received_at: 1, routes: vec![] };
    let opts = EnqueueOptions { tenant: Some("bravo".into()), max_attempts: Some(3), ..Default::default() };
    let id = w.env.client.enqueue_with(&forged, opts).await.unwrap().0;
    let dead = w.dead(&id).await;
    assert!(dead.reason.contains("intake route"), "{}", dead.reason);
    assert_eq!(dead.job.attempts, 1);
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM intake_events").fetch_one(&w.db.pool).await.unwrap();
    assert_eq!(recorded, 0, "the genuine evt_1 can still be recorded later");
    w.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_secrets_are_sealed_in_the_database_and_still_sign() {
    let keys = SecretBox::new(NEW_KEY).unwrap();
    let w = World::new(Some(keys.clone()), Some(keys.clone())).await;
    let (ep, secret) = w.subscribe(&w.key_a, &format!("{}/sealed", w.base)).await;
    let stored = w.secrets_of(&ep).await;
    assert_eq!(stored.len(), 1);
    let body = secret.trim_start_matches("whsec_");
    assert!(!stored[0].contains(body), "the secret is not in the row: {}", stored[0]);
    assert!(stored[0].starts_with(&format!("v2:{}:", keys.key_id())), "{}", stored[0]);
    // Bound to its row: the same value does not open for another endpoint or tenant.
    assert_eq!(keys.open(&row_aad("acme", "webhook_endpoints", &ep), &stored[0]).unwrap(), secret);
    assert!(keys.open(&row_aad("bravo", "webhook_endpoints", &ep), &stored[0]).is_err());
    assert!(keys.open(&row_aad("acme", "webhook_endpoints", "ep_other"), &stored[0]).is_err());

    // A rotation seals the new one too, and both sign during the grace period.
    let (s, rotated) = w.call(&w.key_a, "POST", &format!("/v1/endpoints/{ep}/secrets"), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    let stored = w.secrets_of(&ep).await;
    assert_eq!(stored.len(), 2);
    assert!(stored.iter().all(|s| s.starts_with("v2:") && !s.contains(new.trim_start_matches("whsec_"))));
    w.publish(&w.key_a, json!({"n": 1})).await;
    eventually("the delivery", T, || async { (w.receiver.count("sealed") == 1).then_some(()) }).await;
    let got = &w.receiver.of("sealed")[0];
    assert!(verifies(got, &secret) && verifies(got, &new), "signed with both opened secrets");

    // A row from before sealing (plaintext) still delivers, and start-up sealing seals it.
    let legacy = Secret::generate();
    sqlx::query("INSERT INTO webhook_endpoints (id, tenant, url, secrets) VALUES ('ep_legacy', 'acme', $1, $2)")
        .bind(format!("{}/legacy", w.base))
        .bind(vec![legacy.clone()])
        .execute(&w.db.pool)
        .await
        .unwrap();
    let msg = w.publish(&w.key_a, json!({"n": 2})).await;
    eventually("the legacy delivery", T, || async { (w.receiver.count("legacy") == 1).then_some(()) }).await;
    assert!(verifies(&w.receiver.of("legacy")[0], &legacy));
    let counts = fleet_scheduler::reseal::seal_plaintext_endpoint_secrets(&w.db.pool, &keys).await.unwrap();
    assert_eq!((counts.sealed_plaintext, counts.failed.len()), (1, 0), "{counts}");
    let sealed = w.secrets_of("ep_legacy").await;
    assert!(sealed[0].starts_with("v2:") && !sealed[0].contains(legacy.trim_start_matches("whsec_")));
    // ...and the sealed value still signs (a re-delivery of the same message).
    w.deliver_as("acme", &msg, "ep_legacy", 3).await;
    eventually("the re-delivery", T, || async { (w.receiver.count("legacy") == 2).then_some(()) }).await;
    assert!(verifies(&w.receiver.of("legacy")[1], &legacy));
    w.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_endpoints_are_refused_with_not_configured() {
    let w = World::new(None, None).await;
    let (s, body) = w.call(&w.key_a, "POST", "/v1/endpoints", json!({"url": format!("{}/x", w.base)})).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "not_configured");
    assert!(body["error"]["message"].as_str().unwrap().contains("FLEET_SECRETS_KEY"), "{body}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_endpoints").fetch_one(&w.db.pool).await.unwrap();
    assert_eq!(rows, 0);
    w.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_key_rotation_old_rows_open_and_reseal_moves_every_sealed_column_to_the_new_key() {
    let old = SecretBox::new(OLD_KEY).unwrap();
    let rotated = SecretBox::from_keys(NEW_KEY, OLD_KEY).unwrap();
    let only_new = SecretBox::new(NEW_KEY).unwrap();
    // Sealed before the rotation: the API had the old key. The worker already has both.
    let w = World::new(Some(old.clone()), Some(rotated.clone())).await;
    let (ep, secret) = w.subscribe(&w.key_a, &format!("{}/rotated", w.base)).await;
    assert_eq!(SecretBox::key_id_of(&w.secrets_of(&ep).await[0]), Some(old.key_id()));
    sqlx::query("INSERT INTO calendar_suppliers (tenant, supplier, all_day_busy, time_zone) VALUES ('acme', 'sup', false, 'UTC')")
        .execute(&w.db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO calendar_sources (id, tenant, supplier, kind, url, username, secret) VALUES ('cal_1', 'acme', 'sup', 'ics', 'https://cal.example/feed.ics', 'u', $1)")
        .bind(old.seal("cal_1", "cal-password").unwrap())
        .execute(&w.db.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO comms_sources (id, tenant, kind, config, secret) VALUES ('com_1', 'acme', 'imap', '{}', $1)",
    )
    .bind(old.seal("com_1", "imap-password").unwrap())
    .execute(&w.db.pool)
    .await
    .unwrap();

    // The worker with the new key (and the old one among its old keys) still delivers.
    w.publish(&w.key_a, json!({"n": 1})).await;
    eventually("the delivery", T, || async { (w.receiver.count("rotated") == 1).then_some(()) }).await;
    assert!(verifies(&w.receiver.of("rotated")[0], &secret));

    let report = fleet_scheduler::reseal::reseal_all(&w.db.pool, &rotated).await.unwrap();
    let by_table = |t: &str| report.iter().find(|(n, _)| *n == t).map(|(_, c)| c.clone()).unwrap();
    for t in ["webhook_endpoints", "calendar_sources", "comms_sources"] {
        let c = by_table(t);
        assert_eq!((c.resealed, c.failed.len()), (1, 0), "{t}: {c}");
    }
    // Everything now opens with the new key alone.
    let ep_secret = &w.secrets_of(&ep).await[0];
    assert_eq!(SecretBox::key_id_of(ep_secret), Some(only_new.key_id()));
    assert_eq!(only_new.open(&row_aad("acme", "webhook_endpoints", &ep), ep_secret).unwrap(), secret);
    let cal: String = sqlx::query_scalar("SELECT secret FROM calendar_sources WHERE id = 'cal_1'")
        .fetch_one(&w.db.pool)
        .await
        .unwrap();
    assert_eq!(only_new.open("cal_1", &cal).unwrap(), "cal-password");
    let com: String =
        sqlx::query_scalar("SELECT secret FROM comms_sources WHERE id = 'com_1'").fetch_one(&w.db.pool).await.unwrap();
    assert_eq!(only_new.open("com_1", &com).unwrap(), "imap-password");

    // Re-running changes nothing.
    let again = fleet_scheduler::reseal::reseal_all(&w.db.pool, &rotated).await.unwrap();
    for (t, c) in &again {
        assert_eq!((c.resealed, c.sealed_plaintext, c.failed.len()), (0, 0, 0), "{t}: {c}");
        assert_eq!(c.current, 1, "{t}: {c}");
    }
    // A value no configured key opens is reported by row and left alone.
    let stranger = SecretBox::new(&"77".repeat(32)).unwrap();
    let foreign = stranger.seal("com_2", "x").unwrap();
    sqlx::query(
        "INSERT INTO comms_sources (id, tenant, kind, config, secret) VALUES ('com_2', 'acme', 'imap', '{}', $1)",
    )
    .bind(&foreign)
    .execute(&w.db.pool)
    .await
    .unwrap();
    let report = fleet_scheduler::reseal::reseal_all(&w.db.pool, &rotated).await.unwrap();
    let comms = report.iter().find(|(n, _)| *n == "comms_sources").map(|(_, c)| c.clone()).unwrap();
    assert_eq!(comms.failed, vec!["com_2".to_owned()]);
    let kept: String =
        sqlx::query_scalar("SELECT secret FROM comms_sources WHERE id = 'com_2'").fetch_one(&w.db.pool).await.unwrap();
    assert_eq!(kept, foreign);
    w.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_with_a_token_is_redacted_in_attempt_rows_job_errors_and_listings() {
    let keys = SecretBox::new(NEW_KEY).unwrap();
    let w = World::new(Some(keys.clone()), Some(keys.clone())).await;
    // Nothing listens on port 1: every attempt fails to connect.
    let (ep, _) = w.subscribe(&w.key_a, "http://127.0.0.1:1/hook?token=tok-abc-123").await;
    let (s, listed) = w.call(&w.key_a, "GET", "/v1/endpoints", Value::Null).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(listed[0]["url"], "http://127.0.0.1:1/hook?***");

    // A URL the worker cannot use at all (stored by an older version): its error names it.
    let sealed = keys.seal(&row_aad("acme", "webhook_endpoints", "ep_ftp"), &Secret::generate()).unwrap();
    sqlx::query("INSERT INTO webhook_endpoints (id, tenant, url, secrets) VALUES ('ep_ftp', 'acme', 'ftp://user:pw-xyz@files.example/x?token=tok-abc-123', $1)")
        .bind(vec![sealed])
        .execute(&w.db.pool)
        .await
        .unwrap();

    let msg = w.publish(&w.key_a, json!({"n": 1})).await;
    let refused = w.deliver_as("acme", &msg, &ep, 2).await;
    let invalid = w.deliver_as("acme", &msg, "ep_ftp", 2).await;
    let dead = [w.dead(&refused).await, w.dead(&invalid).await];
    assert!(dead[1].reason.contains("ftp://***@files.example/x?***"), "{}", dead[1].reason);

    let errors: Vec<Option<String>> =
        sqlx::query_scalar("SELECT error FROM webhook_attempts").fetch_all(&w.db.pool).await.unwrap();
    assert!(errors.len() >= 3, "{errors:?}");
    let mut seen = errors.into_iter().flatten().collect::<Vec<_>>();
    for d in &dead {
        seen.push(d.reason.clone());
        seen.extend(d.job.history.iter().map(|a| a.error.clone()));
    }
    for text in &seen {
        assert!(!text.contains("tok-abc-123") && !text.contains("pw-xyz"), "a credential leaked: {text}");
    }
    assert!(seen.iter().any(|e| e.contains("connection failed")), "{seen:?}");
    w.done().await;
}

/// Runs `fleet-scheduler reseal-secrets` on `db` with `vars`: (success, stdout, stderr).
async fn reseal_command(db: &TestDb, vars: &[(&str, &str)]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleet-scheduler-e2e"))
        .arg("reseal-secrets")
        .env_remove("FLEET_SECRETS_KEY")
        .env_remove("FLEET_SECRETS_KEYS_OLD")
        .env_remove("FLEET_CONFIG")
        .env("FLEET_DATABASE_URL", &db.url)
        .envs(vars.iter().copied())
        .output()
        .await
        .expect("run fleet-scheduler");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (out.status.success(), text(out.stdout), text(out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reseal_secrets_command_seals_plaintext_and_old_key_rows_and_is_safe_to_re_run() {
    let db = TestDb::new().await;
    let old = SecretBox::new(OLD_KEY).unwrap();
    let aad = row_aad("acme", "webhook_endpoints", "ep_old");
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, tenant, url, secrets) VALUES ('ep_old', 'acme', 'https://h.example/a', $1), \
         ('ep_plain', 'acme', 'https://h.example/b', $2)",
    )
    .bind(vec![old.seal(&aad, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()])
    .bind(vec!["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".to_owned()])
    .execute(&db.pool)
    .await
    .unwrap();

    let (ok, _, err) = reseal_command(&db, &[]).await;
    assert!(!ok && err.contains("FLEET_SECRETS_KEY"), "refused without a key: {err}");
    // The new key alone cannot open the old row: reported, and a failure.
    let (ok, out, err) = reseal_command(&db, &[("FLEET_SECRETS_KEY", NEW_KEY)]).await;
    assert!(!ok && err.contains("FLEET_SECRETS_KEYS_OLD") && out.contains("ep_old"), "{out}\n{err}");

    let rotated = [("FLEET_SECRETS_KEY", NEW_KEY), ("FLEET_SECRETS_KEYS_OLD", OLD_KEY)];
    let (ok, out, err) = reseal_command(&db, &rotated).await;
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("webhook_endpoints: 1 resealed, 0 sealed from plaintext, 1 already current"), "{out}");
    let new = SecretBox::new(NEW_KEY).unwrap();
    let rows: Vec<(String, Vec<String>)> =
        sqlx::query_as("SELECT id, secrets FROM webhook_endpoints ORDER BY id").fetch_all(&db.pool).await.unwrap();
    for (id, secrets) in &rows {
        assert!(new.is_current(&secrets[0]), "{id}: {secrets:?}");
        new.open(&row_aad("acme", "webhook_endpoints", id), &secrets[0]).unwrap();
    }
    let (ok, out, _) = reseal_command(&db, &rotated).await;
    assert!(ok && out.contains("webhook_endpoints: 0 resealed, 0 sealed from plaintext, 2 already current"), "{out}");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_whose_message_id_is_another_tenants_fans_out_nothing() {
    let keys = SecretBox::new(NEW_KEY).unwrap();
    let w = World::new(Some(keys.clone()), Some(keys)).await;
    w.subscribe(&w.key_b, &format!("{}/b", w.base)).await;
    // A's message, under the id a publish job with a chosen id would record.
    let job = fleet_jobs::JobId::new();
    let msg = fleet_jobs::catalogue::webhook::message_id(job.as_str());
    sqlx::query(
        "INSERT INTO webhook_messages (id, tenant, event_type, payload) VALUES ($1, 'acme', 't.x', '{\"a\":1}')",
    )
    .bind(&msg)
    .execute(&w.db.pool)
    .await
    .unwrap();
    let args = fleet_jobs::catalogue::WebhookPublish {
        event_type: "t.x".into(),
        payload: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
    };
    let opts = EnqueueOptions { id: Some(job.clone()), tenant: Some("bravo".into()), ..Default::default() };
    w.env.client.enqueue_with(&args, opts).await.unwrap();
    let dead = w.dead(job.as_str()).await;
    assert!(dead.reason.contains("already taken"), "{}", dead.reason);
    assert_eq!(w.env.stats("webhooks").await.dead, 1, "no delivery was enqueued");
    assert_eq!(w.receiver.count("b"), 0, "A's payload never reached B's endpoint");
    w.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_job_holding_the_intake_route_s_old_unique_key_does_not_swallow_a_genuine_event() {
    let w = World::new(None, None).await;
    let providers: std::collections::BTreeMap<String, fleet_scheduler::api::intake::IntakeProvider> = toml::from_str(
        r#"
        [vision]
        scheme = "standard_webhooks"
        secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
        "#,
    )
    .unwrap();
    let router = app(ApiState::new(w.env.client.clone(), w.db.pool.clone()).with_intake(providers), 64 * 1024);
    // Tenant B claims, on the intake jobs' queue, the unique key the route used to set
    // for the event id it expects (`intake:<provider>:<sha256 of the id>`).
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"evt_genuine"));
    let squatter = fleet_jobs::catalogue::WebhookPublish {
        event_type: "t.x".into(),
        payload: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
    };
    let opts =
        EnqueueOptions { tenant: Some("bravo".into()), delay: Some(Duration::from_secs(3600)), ..Default::default() }
            .unique(format!("intake:vision:{digest}"), Duration::from_secs(3600));
    w.env.client.enqueue_with(&squatter, opts).await.unwrap();

    let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let body = r#"{"image": "img_42"}"#;
    let ts = chrono::Utc::now().timestamp();
    let req = Request::builder()
        .method("POST")
        .uri("/v1/intake/vision")
        .header("webhook-id", "evt_genuine")
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", secret.sign("evt_genuine", ts, body.as_bytes()).unwrap())
        .body(Body::from(body))
        .unwrap();
    assert_eq!(router.oneshot(req).await.unwrap().status(), StatusCode::ACCEPTED);
    eventually("the genuine event recorded", T, || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM intake_events WHERE id = 'evt_genuine'")
            .fetch_one(&w.db.pool)
            .await
            .unwrap();
        (n == 1).then_some(())
    })
    .await;
    w.done().await;
}
