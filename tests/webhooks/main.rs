//! Webhook delivery end to end: the API records endpoints and events, workers deliver
//! to receivers this test starts on loopback, and every rule of the delivery job is
//! checked from the receiver's side.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use fleet_jobs::limits::LimitSpec;
use fleet_jobs::retry::{Backoff, Jitter};
use fleet_scheduler::api::{ApiState, app, auth};
use fleet_tests::{TestDb, TestEnv, eventually};
use fleet_webhooks::jobs::{Deliver, WebhookSettings};
use fleet_webhooks::signing::{Secret, verify};
use fleet_worker::{KindPolicy, Registry, RunningWorker};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tower::ServiceExt;

const T: Duration = Duration::from_secs(60);

/// The key endpoint secrets are sealed with (the API refuses endpoints without one).
fn secrets() -> fleet_accounts::secrets::SecretBox {
    fleet_accounts::secrets::SecretBox::new(&"5a".repeat(32)).unwrap()
}

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Got {
    path: String,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    /// Whether `/switch` answers 410 Gone (else 200).
    gone: Arc<std::sync::atomic::AtomicBool>,
}

impl Receiver {
    fn count(&self, path: &str) -> usize {
        self.got.lock().unwrap().iter().filter(|g| g.path == path).count()
    }
    fn of(&self, path: &str) -> Vec<Got> {
        self.got.lock().unwrap().iter().filter(|g| g.path == path).cloned().collect()
    }
}

async fn receive(
    State(r): State<Receiver>,
    Path(behaviour): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let n = {
        let mut got = r.got.lock().unwrap();
        got.push(Got { path: behaviour.clone(), headers, body, at: Instant::now() });
        got.iter().filter(|g| g.path == behaviour).count()
    };
    match behaviour.as_str() {
        "flaky" if n <= 2 => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        "throttle" if n == 1 => (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "2")]).into_response(),
        "gone" => StatusCode::GONE.into_response(),
        "switch" if r.gone.load(std::sync::atomic::Ordering::SeqCst) => StatusCode::GONE.into_response(),
        "broken" => (StatusCode::INTERNAL_SERVER_ERROR, "x".repeat(200_000)).into_response(),
        "hang" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::OK.into_response()
        }
        _ => StatusCode::OK.into_response(),
    }
}

async fn start_receiver() -> (Receiver, String) {
    let r = Receiver::default();
    let router = Router::new().route("/{behaviour}", axum::routing::post(receive)).with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (r, format!("http://{addr}"))
}

struct World {
    env: TestEnv,
    db: TestDb,
    api: Router,
    key: String,
    receiver: Receiver,
    base: String,
    workers: Vec<RunningWorker>,
}

impl World {
    async fn new(allow_loopback: bool, limits: &[(&str, LimitSpec)]) -> World {
        World::with_handler_connections(allow_loopback, limits, None).await
    }

    /// A world whose job handlers share a pool of `connections` PostgreSQL connections
    /// (default: the test database's pool), so their reads can be made to queue.
    async fn with_handler_connections(
        allow_loopback: bool,
        limits: &[(&str, LimitSpec)],
        connections: Option<u32>,
    ) -> World {
        let env = TestEnv::new().await;
        let db = TestDb::new().await;
        let handlers_db = match connections {
            Some(n) => sqlx::postgres::PgPoolOptions::new().max_connections(n).connect(&db.url).await.unwrap(),
            None => db.pool.clone(),
        };
        let key = auth::create_api_key(&db.pool, "acme", "hooks", &[auth::Role::Enqueue]).await.unwrap();
        let api = app(
            ApiState::new(env.client.clone(), db.pool.clone())
                .with_tenancy(fleet_scheduler::tenancy::TenancyConfig::for_tests())
                .with_secrets(secrets()),
            1 << 20,
        );
        let (receiver, base) = start_receiver().await;
        let settings = WebhookSettings {
            allow: if allow_loopback { vec!["127.0.0.0/8".into()] } else { vec![] },
            connect_timeout_ms: 500,
            timeout_ms: 800,
            max_response_bytes: 64 * 1024,
        };
        let policy = KindPolicy {
            backoff: Backoff::exponential(Duration::from_millis(200)).jitter(Jitter::None).max(Duration::from_secs(1)),
            timeout: None,
        };
        let registry = Registry::new()
            .register_with(Deliver::new(handlers_db.clone(), settings).unwrap().with_secrets(Some(secrets())), policy)
            .register(fleet_webhooks::jobs::intake::Record::new(handlers_db.clone(), env.client.clone()))
            .register(fleet_webhooks::jobs::publish::Publish::new(handlers_db, env.client.clone()))
            .register(fleet_worker::kinds::probe::Probe);
        let mut cfg = env.config("webhooks", 20);
        cfg.queues.push(fleet_worker::QueueConfig {
            name: "default".into(),
            concurrency: 10,
            fetch_batch: None,
            partitions: None,
        });
        cfg.limits = limits.iter().map(|(k, s)| (k.to_string(), s.clone())).collect();
        cfg.lease_ms = 10_000;
        let workers = vec![env.worker(cfg, registry).await];
        World { env, db, api, key, receiver, base, workers }
    }

    async fn call(&self, method: &str, uri: &str, body: Value) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {}", self.key))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let res = self.api.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Subscribes `url` and returns (endpoint id, secret).
    async fn subscribe(&self, url: &str) -> (String, String) {
        let (s, ep) = self.call("POST", "/v1/endpoints", json!({"url": url})).await;
        assert_eq!(s, StatusCode::CREATED, "{ep}");
        (ep["id"].as_str().unwrap().to_owned(), ep["secret"].as_str().unwrap().to_owned())
    }

    async fn publish(&self, event_type: &str, payload: &str) -> String {
        // The payload is spliced as raw text so its exact bytes are what is sent.
        let body = format!(r#"{{"type": "{event_type}", "payload": {payload}}}"#);
        let req = Request::builder()
            .method("POST")
            .uri("/v1/events")
            .header("authorization", format!("Bearer {}", self.key))
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let res = self.api.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        let v: Value = serde_json::from_slice(&axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap()).unwrap();
        v["id"].as_str().unwrap().to_owned()
    }

    async fn attempts(&self, endpoint: &str) -> Vec<(i32, String, Option<i32>, Option<String>)> {
        sqlx::query_as(
            "SELECT attempt, outcome, status, error FROM webhook_attempts WHERE endpoint_id = $1 ORDER BY id",
        )
        .bind(endpoint)
        .fetch_all(&self.db.pool)
        .await
        .unwrap()
    }

    async fn done(self) {
        for w in self.workers {
            w.shutdown().await;
        }
        self.db.drop_db().await;
        self.env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_over_the_exact_payload_bytes() {
    let w = World::new(true, &[]).await;
    let (ep, secret) = w.subscribe(&format!("{}/ok", w.base)).await;
    let payload = r#"{"gallery":  "Smith & Jones", "photos": [1 ,2,3], "note": "é"}"#;
    let msg = w.publish("portfolio.processed", payload).await;
    eventually("the delivery", T, || async { (w.receiver.count("ok") == 1).then_some(()) }).await;
    let got = &w.receiver.of("ok")[0];
    assert_eq!(got.body.as_ref(), payload.as_bytes(), "byte for byte");
    let h = |n: &str| got.headers.get(n).and_then(|v| v.to_str().ok());
    assert_eq!(h("webhook-id"), Some(msg.as_str()));
    let now = chrono::Utc::now().timestamp();
    verify(
        &[Secret::parse(&secret).unwrap()],
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
        &got.body,
        now,
    )
    .expect("the receiver verifies the signature");
    let other = Secret::parse(&Secret::generate()).unwrap();
    assert!(verify(&[other], h("webhook-id"), h("webhook-timestamp"), h("webhook-signature"), &got.body, now).is_err());
    eventually("the attempt log", T, || async { (w.attempts(&ep).await.len() == 1).then_some(()) }).await;
    assert_eq!(w.attempts(&ep).await[0].1, "delivered");
    w.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_signs_beside_the_old_one_until_its_grace_period_ends() {
    let w = World::new(true, &[]).await;
    let (ep, old) = w.subscribe(&format!("{}/ok", w.base)).await;
    let (s, rotated) =
        w.call("POST", &format!("/v1/endpoints/{ep}/secrets"), json!({"previous_valid_secs": 3600})).await;
    assert_eq!(s, StatusCode::OK, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    let (s, listed) = w.call("GET", "/v1/endpoints", json!({})).await;
    assert_eq!(s, StatusCode::OK);
    assert!(!listed.to_string().contains("whsec_"), "secrets are never listed: {listed}");

    let verify_with = |got: &Got, secret: &str| {
        let h = |n: &str| got.headers.get(n).and_then(|v| v.to_str().ok());
        let now = chrono::Utc::now().timestamp();
        let key = Secret::parse(secret).unwrap();
        verify(&[key], h("webhook-id"), h("webhook-timestamp"), h("webhook-signature"), &got.body, now).is_ok()
    };
    w.publish("portfolio.processed", r#"{"n": 1}"#).await;
    eventually("the first delivery", T, || async { (w.receiver.count("ok") == 1).then_some(()) }).await;
    let got = &w.receiver.of("ok")[0];
    assert!(verify_with(got, &new) && verify_with(got, &old), "both secrets verify during the grace period");

    // End the grace period: only the new secret signs.
    sqlx::query("UPDATE webhook_endpoints SET previous_secrets_until = now() - interval '1 second' WHERE id = $1")
        .bind(&ep)
        .execute(&w.db.pool)
        .await
        .unwrap();
    w.publish("portfolio.processed", r#"{"n": 2}"#).await;
    eventually("the second delivery", T, || async { (w.receiver.count("ok") == 2).then_some(()) }).await;
    let got = &w.receiver.of("ok")[1];
    assert!(verify_with(got, &new) && !verify_with(got, &old), "the replaced secret no longer signs");

    let (s, _) =
        w.call("POST", &format!("/v1/endpoints/{ep}/secrets"), json!({"previous_valid_secs": 999_999_999})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) = w.call("POST", &format!("/v1/endpoints/{ep}/secrets"), json!({"secret": "not-a-secret"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) = w.call("POST", "/v1/endpoints/ep_nope/secrets", json!({})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    w.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_endpoint_gets_it_on_the_third_attempt_with_growing_gaps_and_one_id() {
    let w = World::new(true, &[]).await;
    let (ep, _) = w.subscribe(&format!("{}/flaky", w.base)).await;
    w.publish("booking.moved", r#"{"booking": 7}"#).await;
    eventually("three attempts", T, || async { (w.receiver.count("flaky") == 3).then_some(()) }).await;
    let got = w.receiver.of("flaky");
    let ids: Vec<_> = got.iter().map(|g| g.headers["webhook-id"].clone()).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "the same webhook-id on every attempt");
    let sigs: std::collections::HashSet<_> = got.iter().map(|g| g.headers["webhook-signature"].clone()).collect();
    assert!(!sigs.is_empty());
    let (g1, g2) = (got[1].at - got[0].at, got[2].at - got[1].at);
    assert!(
        g1 >= Duration::from_millis(200) && g2 >= Duration::from_millis(400) && g2 > g1,
        "growing gaps: {g1:?}, {g2:?}"
    );
    eventually("the log", T, || async { (w.attempts(&ep).await.len() == 3).then_some(()) }).await;
    let outcomes: Vec<String> = w.attempts(&ep).await.into_iter().map(|a| a.1).collect();
    assert_eq!(outcomes, vec!["failed", "failed", "delivered"]);
    w.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_2_is_not_retried_before_2_seconds() {
    let w = World::new(true, &[]).await;
    w.subscribe(&format!("{}/throttle", w.base)).await;
    w.publish("message.received", r#"{"n": 1}"#).await;
    eventually("the retry", T, || async { (w.receiver.count("throttle") == 2).then_some(()) }).await;
    let got = w.receiver.of("throttle");
    assert!(got[1].at - got[0].at >= Duration::from_secs(2), "retried after {:?}", got[1].at - got[0].at);
    w.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_disables_the_endpoint_and_an_always_500_ends_in_dead_letters() {
    let w = World::new(true, &[]).await;
    let (gone, _) = w.subscribe(&format!("{}/gone", w.base)).await;
    let (broken, _) = w.subscribe(&format!("{}/broken", w.base)).await;
    w.publish("calendar.conflict", r#"{"id": 1}"#).await;
    eventually("the 500s to run out of attempts", T, || async {
        (w.env.stats("webhooks").await.dead == 2).then_some(())
    })
    .await;
    assert_eq!(w.receiver.count("gone"), 1, "no retry after 410");
    assert_eq!(w.receiver.count("broken"), 10, "every attempt of WebhookDelivery's 10");
    let (enabled, reason): (bool, Option<String>) =
        sqlx::query_as("SELECT enabled, disabled_reason FROM webhook_endpoints WHERE id = $1")
            .bind(&gone)
            .fetch_one(&w.db.pool)
            .await
            .unwrap();
    assert!(!enabled && reason.unwrap().contains("410"));
    let log = w.attempts(&broken).await;
    assert_eq!(log.len(), 10);
    assert!(log.iter().all(|a| a.1 == "failed" && a.2 == Some(500)));
    // A later event goes to the broken endpoint again but never to the disabled one.
    w.publish("calendar.conflict", r#"{"id": 2}"#).await;
    eventually("the next delivery", T, || async { (w.receiver.count("broken") > 10).then_some(()) }).await;
    assert_eq!(w.receiver.count("gone"), 1);
    w.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_endpoint_times_out_while_the_others_keep_flowing() {
    let w = World::new(true, &[]).await;
    let (hang, _) = w.subscribe(&format!("{}/hang", w.base)).await;
    w.subscribe(&format!("{}/ok", w.base)).await;
    let t0 = Instant::now();
    for i in 0..5 {
        w.publish("message.received", &format!(r#"{{"n": {i}}}"#)).await;
    }
    eventually("deliveries to the healthy endpoint", T, || async { (w.receiver.count("ok") == 5).then_some(()) }).await;
    assert!(t0.elapsed() < Duration::from_secs(3), "not held up by the hanging endpoint: {:?}", t0.elapsed());
    eventually("a timed-out attempt", T, || async {
        w.attempts(&hang).await.iter().any(|a| a.3.as_deref().is_some_and(|e| e.contains("timed out"))).then_some(())
    })
    .await;
    w.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_addresses_are_refused_without_retries() {
    let w = World::new(false, &[]).await;
    let (meta, _) = w.subscribe("http://169.254.169.254/latest/meta-data").await;
    let (private, _) = w.subscribe("http://10.0.0.1/hook").await;
    // The receiver is on loopback, which this worker's guard does not allow: by name too.
    let port = w.base.rsplit(':').next().unwrap().to_owned();
    let (local, _) = w.subscribe(&format!("http://localhost:{port}/ok")).await;
    w.publish("message.received", r#"{"n": 1}"#).await;
    eventually("three refusals", T, || async { (w.env.stats("webhooks").await.dead == 3).then_some(()) }).await;
    for ep in [&meta, &private, &local] {
        let log = w.attempts(ep).await;
        assert_eq!(log.len(), 1, "no retry for {ep}");
        assert_eq!(log[0].1, "refused");
        assert!(log[0].3.as_deref().unwrap().contains("SSRF guard"), "{log:?}");
    }
    assert_eq!(w.receiver.count("ok"), 0, "nothing reached the loopback receiver");
    w.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_endpoint_never_gets_more_than_its_limit_per_second() {
    let limit = LimitSpec { rate: Some(5.0), burst: 1, ..Default::default() };
    let w = World::new(true, &[("webhook:endpoint:*", limit)]).await;
    w.subscribe(&format!("{}/ok", w.base)).await;
    for i in 0..15 {
        w.publish("message.received", &format!(r#"{{"n": {i}}}"#)).await;
    }
    eventually("all deliveries", T, || async { (w.receiver.count("ok") == 15).then_some(()) }).await;
    let mut at: Vec<Instant> = w.receiver.of("ok").into_iter().map(|g| g.at).collect();
    at.sort();
    let mut peak = 0;
    for i in 0..at.len() {
        peak = peak.max(at[i..].iter().take_while(|t| **t < at[i] + Duration::from_secs(1)).count());
    }
    assert!(peak <= 5, "{peak} deliveries in one second, limit 5");
    w.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_receiver_verifies_the_signatures() {
    // scripts/webhook-receiver.py checks signatures with Python's stdlib hmac, per the spec.
    let w = World::new(true, &[]).await;
    let port = fleet_tests::free_port();
    let (ep, secret) = w.subscribe(&format!("http://127.0.0.1:{port}/hooks")).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/webhook-receiver.py");
    let mut receiver = tokio::process::Command::new("python3")
        .arg(script)
        .arg(port.to_string())
        .env("WEBHOOK_SECRET", &secret)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs the receiver");
    let mut out = tokio::io::BufReader::new(receiver.stdout.take().unwrap());
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line).await.unwrap();
    assert!(line.starts_with("listening"), "{line}");
    let msg = w.publish("portfolio.processed", r#"{"gallery": "smith-jones", "photos": 312}"#).await;
    line.clear();
    tokio::time::timeout(T, tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line))
        .await
        .expect("a delivery")
        .unwrap();
    assert_eq!(line.trim(), format!(r#"verified {msg} {{"gallery": "smith-jones", "photos": 312}}"#));
    eventually("the attempt log", T, || async {
        (w.attempts(&ep).await.first().map(|a| a.1.clone()) == Some("delivered".into())).then_some(())
    })
    .await;
    w.done().await;
}

fn intake_router(w: &World) -> Router {
    let providers: std::collections::BTreeMap<String, fleet_scheduler::api::intake::IntakeProvider> = toml::from_str(
        r#"
        [vision]
        scheme = "standard_webhooks"
        secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]

        [sms]
        scheme = "hmac_sha256"
        secrets = ["sms-shared-secret"]
        signature_header = "x-signature"
        prefix = "sha256="
        encoding = "hex"
        id_header = "x-request-id"
        timestamp_header = "x-timestamp"

        [twilio]
        scheme = "twilio"
        secrets = ["12345"]
        public_url = "https://fleet.example.com"

        [stripe]
        scheme = "stripe"
        secrets = ["whsec_test_5b8f0c1d2e3f"]

        [crm]
        scheme = "hmac_sha256"
        secrets = ["crm-secret"]
        signature_header = "x-signature"
        tenant = "acme"
        event_type = "/type"

        [[crm.routes]]
        events = ["client.*"]
        publish = ""
        "#,
    )
    .unwrap();
    app(
        ApiState::new(w.env.client.clone(), w.db.pool.clone())
            .with_tenancy(fleet_scheduler::tenancy::TenancyConfig::for_tests())
            .with_secrets(secrets())
            .with_intake(providers),
        64 * 1024,
    )
}

async fn post_raw(router: &Router, uri: &str, headers: &[(&str, String)], body: &str) -> (StatusCode, String) {
    let mut req = Request::builder().method("POST").uri(uri);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let res = router.clone().oneshot(req.body(Body::from(body.to_owned())).unwrap()).await.unwrap();
    let status = res.status();
    (status, String::from_utf8_lossy(&axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap()).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_accepts_a_good_call_and_refuses_tampered_stale_and_replayed_ones() {
    let w = World::new(true, &[]).await;
    let router = intake_router(&w);
    let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let body = r#"{"image": "img_42", "labels": ["ceremony"]}"#;
    let signed = |id: &str, ts: i64, body: &str| {
        vec![
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", secret.sign(id, ts, body.as_bytes()).unwrap()),
        ]
    };
    let now = chrono::Utc::now().timestamp();
    let (s, _) = post_raw(&router, "/v1/intake/vision", &signed("evt_1", now, body), body).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    eventually("the call to be recorded", T, || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM intake_events WHERE provider = 'vision' AND id = 'evt_1'")
                .fetch_one(&w.db.pool)
                .await
                .unwrap();
        (n == 1).then_some(())
    })
    .await;
    let stored: String =
        sqlx::query_scalar("SELECT body FROM intake_events WHERE id = 'evt_1'").fetch_one(&w.db.pool).await.unwrap();
    assert_eq!(stored, body);

    let refused = r#"{"error":{"code":"unauthorized","message":"invalid signature"}}"#;
    let cases = [
        ("replayed", signed("evt_1", now, body), body.to_owned()),
        ("tampered", signed("evt_2", now, body), body.replace("ceremony", "reception")),
        ("stale", signed("evt_3", now - 400, body), body.to_owned()),
        ("unsigned", vec![("webhook-id", "evt_4".to_owned()), ("webhook-timestamp", now.to_string())], body.to_owned()),
    ];
    for (what, headers, b) in cases {
        let (s, text) = post_raw(&router, "/v1/intake/vision", &headers, &b).await;
        assert_eq!((s, text.as_str()), (StatusCode::UNAUTHORIZED, refused), "{what}: the same bare 401");
    }
    assert_eq!(
        post_raw(&router, "/v1/intake/nobody", &signed("evt_5", now, body), body).await.0,
        StatusCode::NOT_FOUND
    );

    // The HMAC header scheme, signed over "{timestamp}.{body}".
    use hmac::Mac;
    let sms_body = r#"{"from":"+4917612345678","text":"See you Saturday!"}"#;
    let sign = |key: &str, ts: i64| {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(format!("{ts}.{sms_body}").as_bytes());
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    };
    let hmac_headers = |sig: String, id: &str, ts: i64| {
        vec![("x-signature", sig), ("x-request-id", id.to_owned()), ("x-timestamp", ts.to_string())]
    };
    let (s, _) =
        post_raw(&router, "/v1/intake/sms", &hmac_headers(sign("sms-shared-secret", now), "sms_1", now), sms_body)
            .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, _) =
        post_raw(&router, "/v1/intake/sms", &hmac_headers(sign("wrong-secret", now), "sms_2", now), sms_body).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = post_raw(
        &router,
        "/v1/intake/sms",
        &hmac_headers(sign("sms-shared-secret", now - 400), "sms_3", now - 400),
        sms_body,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) =
        post_raw(&router, "/v1/intake/sms", &hmac_headers(sign("sms-shared-secret", now), "sms_1", now), sms_body)
            .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "replayed id");

    // Twilio: a status callback signed by Twilio's own library (twilio 9.13.0) for the
    // public URL, arriving through the route with the path it was sent to.
    let form = "MessageSid=SM0123456789abcdef0123456789abcdef&MessageStatus=delivered&To=%2B447700900123&From=%2B447700900999&Body=Caf%C3%A9+at+3+%E2%80%94+see+you+%E2%9C%93";
    let twilio = |sig: &str, token: &str| {
        vec![
            ("content-type", "application/x-www-form-urlencoded".to_owned()),
            ("x-twilio-signature", sig.to_owned()),
            ("i-twilio-idempotency-token", token.to_owned()),
        ]
    };
    let (s, _) = post_raw(&router, "/v1/intake/twilio", &twilio("UMYNvNo6L/qohtBWOU26dFeDXWQ=", "tw_1"), form).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, _) = post_raw(&router, "/v1/intake/twilio", &twilio("UMYNvNo6L/qohtBWOU26dFeDXWQ=", "tw_1"), form).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a replayed Twilio call");
    let tampered = form.replace("delivered", "failed");
    let (s, _) =
        post_raw(&router, "/v1/intake/twilio", &twilio("UMYNvNo6L/qohtBWOU26dFeDXWQ=", "tw_2"), &tampered).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a tampered Twilio call");
    // Stripe: signed now over "{t}.{body}"; the event id is the replay id.
    let event = r#"{"id":"evt_stripe_1","object":"event","type":"invoice.paid"}"#;
    let stripe = |t: i64| {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"whsec_test_5b8f0c1d2e3f").unwrap();
        mac.update(format!("{t}.{event}").as_bytes());
        vec![("stripe-signature", format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes())))]
    };
    assert_eq!(post_raw(&router, "/v1/intake/stripe", &stripe(now), event).await.0, StatusCode::ACCEPTED);
    assert_eq!(post_raw(&router, "/v1/intake/stripe", &stripe(now + 1), event).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(post_raw(&router, "/v1/intake/stripe", &stripe(now - 400), event).await.0, StatusCode::UNAUTHORIZED);
    eventually("the Twilio and Stripe calls to be recorded", T, || async {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM intake_events WHERE provider IN ('twilio', 'stripe') ORDER BY id")
                .fetch_all(&w.db.pool)
                .await
                .unwrap();
        (ids == ["evt_stripe_1", "tw_1"]).then_some(())
    })
    .await;
    w.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routed_intake_event_reaches_the_configured_tenants_endpoints_and_others_are_only_recorded() {
    let w = World::new(true, &[]).await;
    let router = intake_router(&w);
    let (s, ep) = w
        .call("POST", "/v1/endpoints", json!({"url": format!("{}/ok", w.base), "event_types": ["crm.client.updated"]}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{ep}");
    use hmac::Mac;
    let signed = |body: &str| {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"crm-secret").unwrap();
        mac.update(body.as_bytes());
        vec![("x-signature", hex::encode(mac.finalize().into_bytes()))]
    };
    let updated = r#"{"type": "client.updated", "client": {"id": "c_7", "name": "Ada & Grace"}}"#;
    let invoice = r#"{"type": "invoice.paid", "invoice": "in_1"}"#;
    // A payload naming another tenant changes nothing: the tenant is the provider's config.
    let forged = r#"{"type": "client.created", "tenant": "globex"}"#;
    for body in [updated, invoice, forged] {
        assert_eq!(post_raw(&router, "/v1/intake/crm", &signed(body), body).await.0, StatusCode::ACCEPTED);
    }
    let rows = eventually("the routed events to be published", T, || async {
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT tenant, event_type, payload FROM webhook_messages ORDER BY event_type")
                .fetch_all(&w.db.pool)
                .await
                .unwrap();
        let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM intake_events WHERE provider = 'crm'")
            .fetch_one(&w.db.pool)
            .await
            .unwrap();
        (rows.len() == 2 && recorded == 3).then_some(rows)
    })
    .await;
    assert_eq!(
        rows,
        [
            ("acme".to_owned(), "crm.client.created".to_owned(), forged.to_owned()),
            ("acme".to_owned(), "crm.client.updated".to_owned(), updated.to_owned()),
        ],
        "client.* events published byte for byte to the provider's tenant, invoice.paid only recorded"
    );
    let ep = ep["id"].as_str().unwrap().to_owned();
    eventually("the subscribed endpoint's delivery", T, || async {
        let attempts = w.attempts(&ep).await;
        (attempts.iter().map(|a| a.1.as_str()).collect::<Vec<_>>() == ["delivered"]).then_some(())
    })
    .await;
    w.done().await;
}

/// POSTs `body` to `uri` with `key` and an `Idempotency-Key`; (status, replayed, body).
async fn idempotent_post(api: &Router, key: &str, idem: &str, uri: &str, body: &Value) -> (StatusCode, bool, Value) {
    let req = Request::builder()
        .method("POST")
        .uri(uri)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .header("idempotency-key", idem)
        .body(Body::from(body.to_string()))
        .unwrap();
    let res = api.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let replayed = res.headers().get("idempotent-replayed").is_some();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    (status, replayed, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_creating_posts_with_an_idempotency_key_create_once_even_concurrently() {
    let w = World::new(true, &[]).await;
    let endpoint = json!({"url": format!("{}/ok", w.base), "event_types": ["gallery.ready"]});
    let tries = futures::future::join_all(
        (0..5).map(|_| idempotent_post(&w.api, &w.key, "ep-create-1", "/v1/endpoints", &endpoint)),
    )
    .await;
    assert!(tries.iter().all(|t| t.0 == StatusCode::CREATED), "{tries:?}");
    assert!(tries.iter().all(|t| t.2 == tries[0].2), "every retry gets the first answer: {tries:?}");
    assert_eq!(tries.iter().filter(|t| !t.1).count(), 1, "one ran, the others were replayed: {tries:?}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_endpoints WHERE tenant = 'acme'")
        .fetch_one(&w.db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);

    let other = json!({"url": format!("{}/other", w.base)});
    let (s, _, e) = idempotent_post(&w.api, &w.key, "ep-create-1", "/v1/endpoints", &other).await;
    assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("idempotency_key_reused")));
    // Another tenant's same key is its own.
    let globex = auth::create_api_key(&w.db.pool, "globex", "hooks", &[auth::Role::Enqueue]).await.unwrap();
    let (s, replayed, theirs) = idempotent_post(&w.api, &globex, "ep-create-1", "/v1/endpoints", &endpoint).await;
    assert_eq!((s, replayed), (StatusCode::CREATED, false));
    assert_ne!(theirs["id"], tries[0].2["id"]);

    let event = json!({"type": "gallery.ready", "payload": {"gallery": "smith-jones"}});
    let events =
        futures::future::join_all((0..4).map(|_| idempotent_post(&w.api, &w.key, "evt-1", "/v1/events", &event))).await;
    assert!(events.iter().all(|t| t.0 == StatusCode::ACCEPTED && t.2 == events[0].2), "{events:?}");
    let ep = tries[0].2["id"].as_str().unwrap().to_owned();
    eventually("the one delivery of the one event", T, || async {
        let attempts = w.attempts(&ep).await;
        (attempts.iter().map(|a| a.1.as_str()).collect::<Vec<_>>() == ["delivered"]).then_some(())
    })
    .await;
    let messages: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_messages WHERE event_type = 'gallery.ready'")
        .fetch_one(&w.db.pool)
        .await
        .unwrap();
    assert_eq!(messages, 1);
    w.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_batch_publishes_a_portfolio_processed_webhook() {
    let w = World::new(true, &[]).await;
    let (s, ep) = w
        .call("POST", "/v1/endpoints", json!({"url": format!("{}/ok", w.base), "event_types": ["portfolio.processed"]}))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let secret = ep["secret"].as_str().unwrap().to_owned();
    let analyses: Vec<Value> = (0..20).map(|_| json!({"kind": "probe", "args": {"do": "succeed"}})).collect();
    let (s, batch) = w
        .call(
            "POST",
            "/v1/batches",
            json!({
                "jobs": analyses,
                "on_complete": {"kind": "webhook.publish", "args": {"event_type": "portfolio.processed", "payload": {"portfolio": "smith-jones", "photos": 20}}}
            }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{batch}");
    eventually("the portfolio webhook", T, || async { (w.receiver.count("ok") == 1).then_some(()) }).await;
    let got = &w.receiver.of("ok")[0];
    // Exactly the payload as the API received it (serde_json's json! sorts the keys).
    assert_eq!(got.body.as_ref(), br#"{"photos":20,"portfolio":"smith-jones"}"#);
    let h = |n: &str| got.headers.get(n).and_then(|v| v.to_str().ok());
    verify(
        &[Secret::parse(&secret).unwrap()],
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
        &got.body,
        chrono::Utc::now().timestamp(),
    )
    .expect("signed with the endpoint's secret");
    w.done().await;
}

/// A receiver on its own thread and its own runtime, apart from the worker's: it notes
/// the arrival time of every request before anything else and answers 200.
struct ArrivalClock {
    at: Arc<Mutex<Vec<Instant>>>,
    url: String,
}

impl ArrivalClock {
    fn start() -> ArrivalClock {
        let at: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let noted = at.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let router = Router::new().route(
                    "/hook",
                    axum::routing::post(move || {
                        noted.lock().unwrap().push(Instant::now());
                        async { StatusCode::OK }
                    }),
                );
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                axum::serve(listener, router).await.unwrap();
            });
        });
        let addr = rx.recv().unwrap();
        ArrivalClock { at, url: format!("http://{addr}/hook") }
    }

    fn count(&self) -> usize {
        self.at.lock().unwrap().len()
    }

    /// The most arrivals in any 1 s window (a window holding the most can always be
    /// moved to start at an arrival, so those are the windows counted).
    fn max_per_second(&self) -> usize {
        let mut at = self.at.lock().unwrap().clone();
        at.sort();
        (0..at.len())
            .map(|i| at[i..].iter().take_while(|t| **t < at[i] + Duration::from_secs(1)).count())
            .max()
            .unwrap_or(0)
    }

    fn span(&self) -> Duration {
        let at = self.at.lock().unwrap();
        match (at.iter().min(), at.iter().max()) {
            (Some(first), Some(last)) => *last - *first,
            _ => Duration::ZERO,
        }
    }
}

/// Publishes `events` at once to an endpoint limited to `rate`/s and returns the most
/// arrivals the receiver saw in any 1 s window, once all have arrived. The handlers
/// share two database connections, so the deliveries' reads queue behind the publishes'
/// and each other's: a busy database, whose varying delays bunched the sends when the
/// endpoint's key was admitted before them.
async fn arrivals_per_second(rate: f64, events: usize) -> usize {
    let limit = LimitSpec { rate: Some(rate), ..Default::default() };
    let w = World::with_handler_connections(true, &[("webhook:endpoint:*", limit)], Some(2)).await;
    let clock = ArrivalClock::start();
    w.subscribe(&clock.url).await;
    for i in 0..events {
        w.publish("message.received", &format!(r#"{{"n": {i}}}"#)).await;
    }
    eventually("every delivery", T, || async { (clock.count() == events).then_some(()) }).await;
    let peak = clock.max_per_second();
    println!(
        "webhook arrivals at the receiver: limit {rate}/s, {events} events over {:.2} s, at most {peak} in any sliding 1 s window",
        clock.span().as_secs_f64()
    );
    w.done().await;
    peak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5_per_second_endpoint_never_receives_more_than_5_in_any_sliding_second() {
    let peak = arrivals_per_second(5.0, 30).await;
    assert!(peak <= 5, "{peak} arrivals within one second, limit 5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_per_second_endpoint_never_receives_more_than_100_in_any_sliding_second() {
    let peak = arrivals_per_second(100.0, 400).await;
    assert!(peak <= 100, "{peak} arrivals within one second, limit 100");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_naming_another_tenants_endpoint_leaves_its_limit_untouched() {
    // One delivery per 100 s: a single admission shows in the key's tokens for the
    // whole test.
    let spec = LimitSpec { rate: Some(0.01), ..Default::default() };
    let w = World::new(true, &[("webhook:endpoint:*", spec.clone())]).await;
    // A message of acme's recorded before its endpoint exists: nothing is delivered yet.
    let msg = w.publish("message.received", r#"{"n": 0}"#).await;
    w.settled().await;
    let (ep, _) = w.subscribe(&format!("{}/ok", w.base)).await;
    let key = format!("webhook:endpoint:{ep}");
    let limiter =
        fleet_jobs::limits::Limiter::new(w.env.client.connection(), w.env.prefix.clone(), Duration::from_secs(5));
    let delivery = |tenant: &str| {
        let args = fleet_jobs::catalogue::WebhookDelivery { message_id: msg.clone(), endpoint_id: ep.clone() };
        (args, fleet_jobs::EnqueueOptions { tenant: Some(tenant.to_owned()), ..Default::default() })
    };
    // Another tenant's jobs name acme's endpoint and message: they give up, and the
    // endpoint's key is never admitted (its one token is still there).
    for _ in 0..3 {
        let (args, opts) = delivery("mallory");
        w.env.client.enqueue_with(&args, opts).await.unwrap();
    }
    w.settled().await;
    assert_eq!(w.env.stats("webhooks").await.dead, 3);
    assert_eq!(w.receiver.count("ok"), 0, "nothing sent for mallory");
    assert_eq!(limiter.status(&key, &spec).await.unwrap().tokens, Some(1), "acme's endpoint key was not touched");
    // acme's own delivery takes it.
    let (args, opts) = delivery("acme");
    w.env.client.enqueue_with(&args, opts).await.unwrap();
    eventually("acme's delivery", T, || async { (w.receiver.count("ok") == 1).then_some(()) }).await;
    assert_eq!(limiter.status(&key, &spec).await.unwrap().tokens, Some(0));
    w.done().await;
}

impl World {
    /// Waits until every job enqueued so far has finished (succeeded or dead).
    async fn settled(&self) {
        eventually("the queue to settle", T, || async {
            let s = self.env.stats("webhooks").await;
            let idle = s.ready + s.scheduled + s.running + s.retrying == 0;
            (idle && s.enqueued == s.succeeded + s.dead).then_some(())
        })
        .await;
    }

    /// The webhook-ids `path` received, in order.
    fn ids(&self, path: &str) -> Vec<String> {
        self.receiver.of(path).iter().map(|g| g.headers["webhook-id"].to_str().unwrap().to_owned()).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reenabled_endpoint_gets_each_held_event_exactly_once() {
    use std::sync::atomic::Ordering::SeqCst;
    let w = World::new(true, &[]).await;
    let (s, ep) = w
        .call(
            "POST",
            "/v1/endpoints",
            json!({"url": format!("{}/switch", w.base), "event_types": ["booking.moved", "booking.made"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{ep}");
    let ep = ep["id"].as_str().unwrap().to_owned();

    // Delivered while it answers 200; then a 410 disables it.
    let before = w.publish("booking.made", r#"{"n": 0}"#).await;
    eventually("the first delivery", T, || async { (w.receiver.count("switch") == 1).then_some(()) }).await;
    w.settled().await;
    w.receiver.gone.store(true, SeqCst);
    let gone = w.publish("booking.moved", r#"{"n": 1}"#).await;
    w.settled().await;
    let (_, listed) = w.call("GET", "/v1/endpoints", json!({})).await;
    assert_eq!(listed[0]["enabled"], false, "{listed}");
    assert!(listed[0]["disabled_at"].is_string(), "{listed}");

    // Published while it is disabled: not sent, held.
    let held_1 = w.publish("booking.moved", r#"{"n": 2}"#).await;
    let held_2 = w.publish("booking.made", r#"{"n": 3}"#).await;
    w.publish("invoice.paid", r#"{"n": 4}"#).await; // not one of its event types
    w.settled().await;
    // A delivery still queued when it was disabled runs now and is skipped: held too.
    let args = fleet_jobs::catalogue::WebhookDelivery { message_id: held_1.clone(), endpoint_id: ep.clone() };
    let opts = fleet_jobs::EnqueueOptions { tenant: Some("acme".into()), ..Default::default() };
    w.env.client.enqueue_with(&args, opts).await.unwrap();
    w.settled().await;
    let outcomes: Vec<String> = w.attempts(&ep).await.into_iter().map(|a| a.1).collect();
    assert_eq!(outcomes, vec!["delivered", "gone", "skipped"]);
    assert_eq!(w.ids("switch"), vec![before.clone(), gone.clone()], "nothing sent while disabled");

    // Another tenant's key cannot see or enable it.
    let other = auth::create_api_key(&w.db.pool, "globex", "hooks", &[auth::Role::Enqueue]).await.unwrap();
    let req = Request::builder()
        .method("POST")
        .uri(format!("/v1/endpoints/{ep}/enable"))
        .header("authorization", format!("Bearer {other}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(w.api.clone().oneshot(req).await.unwrap().status(), StatusCode::NOT_FOUND);
    let (s, _) = w.call("POST", &format!("/v1/endpoints/{ep}/enable"), json!({"replay_since": "yesterday"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (_, doc) = w.call("GET", "/openapi.json", Value::Null).await;
    assert!(doc["paths"]["/v1/endpoints/{id}/enable"]["post"].is_object(), "the route is described");

    // Re-enabled: the 410'd delivery and the two held events, once each; twice asked.
    w.receiver.gone.store(false, SeqCst);
    let (s, first) = w.call("POST", &format!("/v1/endpoints/{ep}/enable"), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    assert_eq!((first["held"].as_u64(), first["enqueued"].as_u64()), (Some(3), Some(3)), "{first}");
    assert!(first.get("next_since").is_none());
    let (s, again) = w.call("POST", &format!("/v1/endpoints/{ep}/enable"), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["enqueued"].as_u64(), Some(0), "nothing enqueued twice: {again}");
    w.settled().await;
    let mut replayed = w.ids("switch")[2..].to_vec();
    replayed.sort();
    let mut want = vec![gone.clone(), held_1.clone(), held_2.clone()];
    want.sort();
    assert_eq!(replayed, want, "each held event exactly once");

    // Delivered now, so nothing is held any more.
    let (_, third) = w.call("POST", &format!("/v1/endpoints/{ep}/enable"), json!({})).await;
    assert_eq!((third["held"].as_u64(), third["enqueued"].as_u64()), (Some(0), Some(0)), "{third}");
    let (_, listed) = w.call("GET", "/v1/endpoints", json!({})).await;
    assert_eq!(listed[0]["enabled"], true, "{listed}");
    // And it receives new events again, through publishing.
    let after = w.publish("booking.made", r#"{"n": 5}"#).await;
    w.settled().await;
    assert_eq!(w.ids("switch").last(), Some(&after));
    assert_eq!(w.ids("switch").len(), 6);
    w.done().await;
}
