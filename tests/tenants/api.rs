//! Hostile-tenant cases: api.
//! The HTTP API through its router (no socket): every error in the documented shape,
//! whichever extractor refused the request; the bearer scheme in any case; the dashboard's
//! security headers; one tenant's key over its rate or at its stream cap does not limit
//! another tenant; never-firing cron expressions are refused; a batch stream ends when the
//! batch is gone; PostgreSQL statements are bounded.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use fleet_scheduler::api::limits::ApiLimits;
use fleet_scheduler::api::{ApiState, app, auth};
use fleet_tests::{TestDb, TestEnv};
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;
use tower::ServiceExt;

/// Most bytes a request body may have in these routers.
const MAX_BODY: usize = 64 * 1024;

/// Two tenants' keys on a fresh database and namespace.
struct Tenants {
    env: TestEnv,
    db: TestDb,
    a: String,
    b: String,
}

impl Tenants {
    async fn new() -> Tenants {
        let env = TestEnv::new().await;
        let db = TestDb::new().await;
        let a = auth::create_api_key(&db.pool, "acme", "a", &[auth::Role::Enqueue]).await.unwrap();
        let b = auth::create_api_key(&db.pool, "globex", "b", &[auth::Role::Enqueue]).await.unwrap();
        Tenants { env, db, a, b }
    }

    fn router(&self, limits: Option<ApiLimits>) -> Router {
        let state = ApiState::new(self.env.client.clone(), self.db.pool.clone());
        let state = match limits {
            Some(l) => state.with_limits(l),
            None => state,
        };
        app(state, MAX_BODY)
    }

    async fn done(self) {
        self.db.drop_db().await;
        self.env.cleanup().await;
    }
}

/// A request with an `Authorization: Bearer` key (the scheme as given) and a raw body.
fn request(method: &str, uri: &str, auth: Option<String>, content_type: Option<&str>, body: Vec<u8>) -> Request<Body> {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(a) = auth {
        req = req.header(header::AUTHORIZATION, a);
    }
    if let Some(ct) = content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    req.body(Body::from(body)).unwrap()
}

fn bearer(key: &str) -> Option<String> {
    Some(format!("Bearer {key}"))
}

/// Sends `req`; the status, headers and JSON body (Null when not JSON).
async fn send(router: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let res = router.clone().oneshot(req).await.unwrap();
    let (status, headers) = (res.status(), res.headers().clone());
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    (status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Asserts the documented error shape with `code`, and nosniff.
fn assert_error(status: StatusCode, headers: &HeaderMap, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(headers[header::CONTENT_TYPE], "application/json", "{body}");
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "only `error`: {body}");
}

fn feed(schedule: Option<&str>) -> Vec<u8> {
    let mut v = json!({"supplier": "studio-1", "kind": "ics", "url": "https://calendar.example.com/feed.ics"});
    if let Some(s) = schedule {
        v["schedule"] = json!(s);
    }
    v.to_string().into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extractor_rejections_answer_the_documented_error_shape() {
    let t = Tenants::new().await;
    let r = t.router(None);
    let json = Some("application/json");
    let sources = "/v1/calendar/sources";

    // 415: no JSON content type.
    let (s, h, b) = send(&r, request("POST", sources, bearer(&t.a), None, feed(None))).await;
    assert_error(s, &h, &b, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    let (s, h, b) = send(&r, request("POST", sources, bearer(&t.a), Some("text/plain"), feed(None))).await;
    assert_error(s, &h, &b, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    // 400: not JSON at all.
    let (s, h, b) = send(&r, request("POST", sources, bearer(&t.a), json, b"{not json".to_vec())).await;
    assert_error(s, &h, &b, StatusCode::BAD_REQUEST, "bad_request");
    // 422: JSON of the wrong shape.
    let wrong = json!({"supplier": 5}).to_string().into_bytes();
    let (s, h, b) = send(&r, request("POST", sources, bearer(&t.a), json, wrong)).await;
    assert_error(s, &h, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    // 413: over the body limit, through the Json extractor and through a raw-bytes handler.
    let big = format!("{{\"supplier\": \"{}\"}}", "x".repeat(MAX_BODY + 10)).into_bytes();
    for uri in [sources, "/v1/batches", "/v1/comms/contacts"] {
        let (s, h, b) = send(&r, request("POST", uri, bearer(&t.a), json, big.clone())).await;
        assert_error(s, &h, &b, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    }
    // 400: a query that does not parse.
    let (s, h, b) = send(&r, request("GET", "/v1/comms/sources?limit=many", bearer(&t.a), None, vec![])).await;
    assert_error(s, &h, &b, StatusCode::BAD_REQUEST, "bad_request");
    // 422: a page out of bounds.
    let (s, h, b) = send(&r, request("GET", "/v1/calendar/sources?limit=100000", bearer(&t.a), None, vec![])).await;
    assert_error(s, &h, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    // 405 (keeping Allow) and 404 from the router itself.
    let (s, h, b) = send(&r, request("PUT", "/v1/jobs", bearer(&t.a), json, b"{}".to_vec())).await;
    assert_error(s, &h, &b, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert!(h.get(header::ALLOW).is_some());
    let (s, h, b) = send(&r, request("GET", "/v1/nothing-here", bearer(&t.a), None, vec![])).await;
    assert_error(s, &h, &b, StatusCode::NOT_FOUND, "not_found");
    // An occurrences window over the maximum.
    let uri = "/v1/calendar/suppliers/studio-1/occurrences?from=2026-01-01T00:00:00Z&to=2036-01-01T00:00:00Z";
    let (s, h, b) = send(&r, request("GET", uri, bearer(&t.a), None, vec![])).await;
    assert_error(s, &h, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    // Nothing was created by any of it.
    let (s, h, b) = send(&r, request("GET", sources, bearer(&t.a), None, vec![])).await;
    assert_eq!((s, b), (StatusCode::OK, json!([])));
    assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    t.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_accepted_in_any_case() {
    let t = Tenants::new().await;
    let r = t.router(None);
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let auth = Some(format!("{scheme} {}", t.a));
        let (s, _, b) = send(&r, request("GET", "/v1/calendar/sources", auth, None, vec![])).await;
        assert_eq!(s, StatusCode::OK, "{scheme}: {b}");
    }
    let (s, h, b) =
        send(&r, request("GET", "/v1/calendar/sources", Some(format!("Basic {}", t.a)), None, vec![])).await;
    assert_error(s, &h, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    t.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_sends_csp_framing_sniffing_and_referrer_headers() {
    let t = Tenants::new().await;
    let r = t.router(None);
    let res = r.clone().oneshot(request("GET", "/dashboard", None, None, vec![])).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let h = res.headers();
    let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert!(csp.contains("style-src 'sha256-"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
    t.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_rate_gets_429_and_another_tenants_key_does_not() {
    let t = Tenants::new().await;
    let limits = ApiLimits { rate_per_key: 1, burst_per_key: 3, ..ApiLimits::generous() };
    let r = t.router(Some(limits));
    let list = "/v1/calendar/sources";
    // A's burst of 3 goes through; within the few requests after it, one is refused.
    let mut refused = None;
    for i in 0..10 {
        let (s, h, b) = send(&r, request("GET", list, bearer(&t.a), None, vec![])).await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            assert!(i >= 3, "refused within the burst, at request {i}");
            refused = Some((s, h, b));
            break;
        }
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    let (s, h, b) = refused.expect("the 10th request at 1/s with a burst of 3 is over the rate");
    assert_error(s, &h, &b, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let wait: u64 = h[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=5).contains(&wait), "Retry-After {wait}");
    // B's key is untouched by A's flood (two requests of B's burst of 3).
    for _ in 0..2 {
        let (s, _, b) = send(&r, request("GET", list, bearer(&t.b), None, vec![])).await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    // Forged secrets with B's key id do not spend B's rate (only verified keys count):
    // the third request of B's burst still goes through.
    let (id, _) = t.b.strip_prefix("fk_").unwrap().split_once('_').unwrap();
    let forged = format!("fk_{id}_{}", "0".repeat(48));
    for _ in 0..5 {
        let (s, h, b) = send(&r, request("GET", list, bearer(&forged), None, vec![])).await;
        assert_error(s, &h, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let (s, _, b) = send(&r, request("GET", list, bearer(&t.b), None, vec![])).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    t.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_capped_per_tenant_without_touching_another_tenant() {
    let t = Tenants::new().await;
    let r = t.router(Some(ApiLimits { streams_per_tenant: 2, ..ApiLimits::generous() }));
    let open = |key: &str| r.clone().oneshot(request("GET", "/v1/stream", bearer(key), None, vec![]));
    let a1 = open(&t.a).await.unwrap();
    let a2 = open(&t.a).await.unwrap();
    assert_eq!((a1.status(), a2.status()), (StatusCode::OK, StatusCode::OK));
    // A third stream of A's, and a batch stream of A's, are refused.
    let (s, h, b) = send(&r, request("GET", "/v1/stream", bearer(&t.a), None, vec![])).await;
    assert_error(s, &h, &b, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(h.get(header::RETRY_AFTER).is_some());
    sqlx::query("INSERT INTO batches (id, tenant, queue, total) VALUES ('bt_a', 'acme', 'default', 1)")
        .execute(&t.db.pool)
        .await
        .unwrap();
    let (s, h, b) = send(&r, request("GET", "/v1/batches/bt_a/events", bearer(&t.a), None, vec![])).await;
    assert_error(s, &h, &b, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // B streams as usual.
    let b1 = open(&t.b).await.unwrap();
    let b2 = open(&t.b).await.unwrap();
    assert_eq!((b1.status(), b2.status()), (StatusCode::OK, StatusCode::OK));
    // A closes one: A may open one again.
    drop(a1);
    let a3 = open(&t.a).await.unwrap();
    assert_eq!(a3.status(), StatusCode::OK);
    drop((a2, a3, b1, b2));
    t.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_expression_that_never_fires_is_refused() {
    let t = Tenants::new().await;
    let r = t.router(None);
    let json = Some("application/json");
    for never in ["0 0 30 2 *", "0 0 31 4 *"] {
        let (s, h, b) = send(&r, request("POST", "/v1/calendar/sources", bearer(&t.a), json, feed(Some(never)))).await;
        assert_error(s, &h, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid_schedule");
        assert!(b["error"]["message"].as_str().unwrap().contains("never fires"), "{b}");
    }
    // A rare but real date is fine.
    let (s, _, b) =
        send(&r, request("POST", "/v1/calendar/sources", bearer(&t.a), json, feed(Some("0 0 29 2 *")))).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    t.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_event_stream_ends_when_the_batch_is_gone() {
    let t = Tenants::new().await;
    let r = t.router(None);
    let batches = t.env.client.keys("default").batches;
    let mut redis = t.env.client.connection();
    for id in ["bt_live", "bt_expired"] {
        sqlx::query("INSERT INTO batches (id, tenant, queue, total) VALUES ($1, 'acme', 'default', 2)")
            .bind(id)
            .execute(&t.db.pool)
            .await
            .unwrap();
    }
    let _: () = redis::cmd("HSET").arg(&batches).arg("bt_live:total").arg(2).query_async(&mut redis).await.unwrap();

    // Counters already forgotten: one `gone` event, then the stream ends.
    let res = r.clone().oneshot(request("GET", "/v1/batches/bt_expired/events", bearer(&t.a), None, vec![])).await;
    let body = tokio::time::timeout(Duration::from_secs(10), axum::body::to_bytes(res.unwrap().into_body(), 1 << 16))
        .await
        .expect("the stream of a batch that no longer exists ends")
        .unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("event: gone"), "{text}");

    // Counters deleted while the stream is open: progress, then gone, then the end.
    let res = r.clone().oneshot(request("GET", "/v1/batches/bt_live/events", bearer(&t.a), None, vec![])).await;
    let mut stream = res.unwrap().into_body().into_data_stream();
    let mut seen = String::new();
    let read = async {
        while let Some(chunk) = stream.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if seen.contains("event: progress") && !seen.contains("event: gone") {
                let _: () =
                    redis::cmd("HDEL").arg(&batches).arg("bt_live:total").query_async(&mut redis).await.unwrap();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("the stream ends once its batch is gone");
    assert!(seen.contains("event: progress") && seen.contains("event: gone"), "{seen}");

    // Another tenant cannot stream A's batch at all.
    let (s, h, b) = send(&r, request("GET", "/v1/batches/bt_live/events", bearer(&t.b), None, vec![])).await;
    assert_error(s, &h, &b, StatusCode::NOT_FOUND, "not_found");
    t.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_statements_of_the_scheduler_pool_are_bounded() {
    let t = Tenants::new().await;
    let pool =
        fleet_scheduler::db::connect_and_migrate_with(&t.db.url, Some(Duration::from_millis(200))).await.unwrap();
    let started = std::time::Instant::now();
    let err = sqlx::query("SELECT pg_sleep(5)").execute(&pool).await.unwrap_err();
    assert_eq!(err.as_database_error().and_then(|e| e.code()).as_deref(), Some("57014"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(4), "cancelled by the timeout, not finished");
    pool.close().await;
    t.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_stuck_on_the_database_answers_503_within_the_request_timeout() {
    let t = Tenants::new().await;
    let r = t.router(Some(ApiLimits { request_timeout_secs: 1, ..ApiLimits::generous() }));
    let json = Some("application/json");
    let (s, _, created) = send(&r, request("POST", "/v1/calendar/sources", bearer(&t.a), json, feed(None))).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    // Something else holds the source's row: the delete waits on its lock.
    let mut holder = t.db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM calendar_sources WHERE id = $1 FOR UPDATE")
        .bind(&id)
        .execute(&mut *holder)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let uri = format!("/v1/calendar/sources/{id}");
    let (s, h, b) = send(&r, request("DELETE", &uri, bearer(&t.a), None, vec![])).await;
    assert_error(s, &h, &b, StatusCode::SERVICE_UNAVAILABLE, "timeout");
    assert!(h.get(header::RETRY_AFTER).is_some());
    assert!(started.elapsed() < Duration::from_secs(5), "answered at the timeout: {:?}", started.elapsed());
    // Meanwhile the other tenant is served.
    let (s, _, b) = send(&r, request("GET", "/v1/calendar/sources", bearer(&t.b), None, vec![])).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    holder.rollback().await.unwrap();
    t.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intake_provider_over_its_rate_gets_429_and_another_provider_does_not() {
    use fleet_webhooks::signing::Secret;
    let t = Tenants::new().await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let providers = toml::from_str(&format!(
        "[vision]\nscheme = \"standard_webhooks\"\nsecrets = [\"{secret}\"]\n\
         [labels]\nscheme = \"standard_webhooks\"\nsecrets = [\"{secret}\"]\n"
    ))
    .unwrap();
    let limits = ApiLimits { rate_per_provider: 1, burst_per_provider: 2, ..ApiLimits::generous() };
    let state = ApiState::new(t.env.client.clone(), t.db.pool.clone()).with_intake(providers).with_limits(limits);
    let r = app(state, MAX_BODY);
    let secret = Secret::parse(secret).unwrap();
    let body = r#"{"image": "img_1"}"#;
    let call = |provider: &str, id: &str, signed: bool| {
        let now = chrono::Utc::now().timestamp();
        let mut req = Request::builder()
            .method("POST")
            .uri(format!("/v1/intake/{provider}"))
            .header("webhook-id", id)
            .header("webhook-timestamp", now.to_string());
        if signed {
            req = req.header("webhook-signature", secret.sign(id, now, body.as_bytes()).unwrap());
        }
        req.body(Body::from(body)).unwrap()
    };
    // Unsigned calls are refused and spend nothing of the provider's rate.
    for i in 0..5 {
        let (s, h, b) = send(&r, call("vision", &format!("forged_{i}"), false)).await;
        assert_error(s, &h, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let mut refused = None;
    for i in 0..10 {
        let (s, h, b) = send(&r, call("vision", &format!("evt_{i}"), true)).await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            assert!(i >= 2, "refused within the burst, at call {i}");
            refused = Some((s, h, b));
            break;
        }
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    }
    let (s, h, b) = refused.expect("10 calls at 1/s with a burst of 2 are over the rate");
    assert_error(s, &h, &b, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(h.get(header::RETRY_AFTER).is_some());
    let (s, _, b) = send(&r, call("labels", "evt_other", true)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "another provider is not limited: {b}");
    t.done().await;
}
