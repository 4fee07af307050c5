//! Vision against fake providers served by the tests on loopback (port 0). The
//! fakes check the request shape each API expects and answer 400 when it is wrong,
//! so a success also proves the request was right.

use super::*;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

const KEY: &str = "sk-live-THIS-KEY-MUST-NEVER-SHOW-9f8e7d";
const IMAGE: &[u8] = b"\xff\xd8\xff\xe0 not really a jpeg, but bytes are bytes";

/// How a fake provider behaves.
#[derive(Clone)]
enum Fake {
    /// Google Cloud Vision with these labels.
    Google(Vec<(&'static str, f32)>),
    /// Azure Image Analysis 4.0 with this caption and these tags.
    Azure(Option<(&'static str, f32)>, Vec<(&'static str, f32)>),
    /// A status, headers and body.
    Status(u16, Vec<(&'static str, &'static str)>, String),
    /// Accepts and never answers.
    Hang,
}

/// A running fake: its base URL and how many requests it got.
struct Served {
    base: String,
    hits: Arc<AtomicUsize>,
}

async fn serve(fake: Fake) -> Served {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let fake = fake.clone();
        counter.fetch_add(1, Ordering::SeqCst);
        async move { answer(fake, method, uri, headers, body).await }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Served { base: format!("http://{addr}"), hits }
}

fn bad_request(why: &str) -> Response {
    (StatusCode::BAD_REQUEST, format!("fake provider: {why}")).into_response()
}

async fn answer(fake: Fake, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    match fake {
        Fake::Google(labels) => {
            if method != Method::POST || uri.path() != "/v1/images:annotate" {
                return bad_request("POST /v1/images:annotate expected");
            }
            if header("x-goog-api-key") != KEY || uri.query().is_some_and(|q| q.contains(KEY)) {
                return bad_request("the key belongs in x-goog-api-key, not the URL");
            }
            let Ok(req) = serde_json::from_slice::<serde_json::Value>(&body) else { return bad_request("JSON") };
            let r = &req["requests"][0];
            let content = r["image"]["content"].as_str().unwrap_or("");
            if base64::engine::general_purpose::STANDARD.decode(content).ok().as_deref() != Some(IMAGE) {
                return bad_request("image.content must be the image in base64");
            }
            if r["features"][0]["type"] != "LABEL_DETECTION" || !r["features"][0]["maxResults"].is_u64() {
                return bad_request("features[0] must be LABEL_DETECTION with maxResults");
            }
            let labels: Vec<_> = labels
                .iter()
                .enumerate()
                .map(|(i, (d, s))| serde_json::json!({"mid": format!("/m/{i}"), "description": d, "score": s, "topicality": s}))
                .collect();
            axum::Json(serde_json::json!({"responses": [{"labelAnnotations": labels}]})).into_response()
        }
        Fake::Azure(caption, tags) => {
            if method != Method::POST || uri.path() != "/computervision/imageanalysis:analyze" {
                return bad_request("POST /computervision/imageanalysis:analyze expected");
            }
            let query = uri.query().unwrap_or("");
            if !query.contains("api-version=2023-10-01") || !query.contains("features=tags%2Ccaption") {
                return bad_request("api-version=2023-10-01&features=tags,caption expected");
            }
            if header("ocp-apim-subscription-key") != KEY || header("content-type") != "application/octet-stream" {
                return bad_request("key header and octet-stream body expected");
            }
            if body.as_ref() != IMAGE {
                return bad_request("the body must be the image bytes");
            }
            let mut answer = serde_json::json!({
                "modelVersion": "2023-10-01",
                "metadata": {"width": 1024, "height": 768},
                "tagsResult": {"values": tags.iter().map(|(n, c)| serde_json::json!({"name": n, "confidence": c})).collect::<Vec<_>>()},
            });
            if let Some((text, confidence)) = caption {
                answer["captionResult"] = serde_json::json!({"text": text, "confidence": confidence});
            }
            axum::Json(answer).into_response()
        }
        Fake::Status(status, extra, body) => {
            let mut resp = (StatusCode::from_u16(status).unwrap(), body).into_response();
            for (k, v) in extra {
                resp.headers_mut().insert(k, v.parse().unwrap());
            }
            resp
        }
        Fake::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            StatusCode::OK.into_response()
        }
    }
}

fn provider(name: &str, kind: ProviderKind, base: &str) -> ProviderConfig {
    ProviderConfig {
        name: name.into(),
        kind,
        base_url: base.into(),
        api_key: SecretString::from(KEY),
        timeout_ms: 2_000,
        min_confidence: 0.5,
    }
}

fn vision(providers: Vec<ProviderConfig>) -> Vision {
    Vision::new(VisionConfig { providers, allow: vec!["127.0.0.0/8".into()], ..VisionConfig::default() }).unwrap()
}

/// Every way an outcome can be shown, none with the key.
fn assert_no_key(outcome: &VisionOutcome, v: &Vision) {
    let mut shown = format!("{outcome:?}\n{v:?}\n{}", serde_json::to_string(outcome).unwrap());
    for s in outcome.skipped() {
        shown.push_str(&format!("\n{s}\n{}", s.reason));
    }
    assert!(!shown.contains(KEY), "the API key leaked: {shown}");
    assert!(!shown.contains("THIS-KEY-MUST-NEVER-SHOW"), "a part of the API key leaked: {shown}");
}

#[tokio::test]
async fn google_labels_become_tags_and_a_category() {
    let g = serve(Fake::Google(vec![("Bride", 0.97), ("Veil", 0.93), ("Wedding dress", 0.9), ("Sky", 0.31)])).await;
    let v = vision(vec![provider("gcv", ProviderKind::Google, &g.base)]);
    let outcome = v.analyze(IMAGE).await;
    assert_no_key(&outcome, &v);
    let r = outcome.result().unwrap_or_else(|| panic!("google answered: {outcome:?}"));
    assert_eq!(r.provider, "gcv");
    assert_eq!(r.tags.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["Bride", "Veil", "Wedding dress"]);
    assert!(r.tags.iter().all(|t| t.confidence >= 0.5), "the label under the threshold is dropped");
    assert_eq!(r.category, Category::GettingReady);
    assert!(r.category_confidence > 0.9 && r.category_confidence <= 1.0, "{}", r.category_confidence);
    assert_eq!(r.alt_text, None, "label detection has no caption");
    assert!(r.skipped.is_empty());
    assert_eq!(g.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn azure_caption_and_tags() {
    let a = serve(Fake::Azure(
        Some(("a bride and groom cutting a wedding cake", 0.84)),
        vec![("wedding", 0.99), ("cake", 0.95), ("person", 0.93), ("indoor", 0.4)],
    ))
    .await;
    let v = vision(vec![provider("azure", ProviderKind::Azure, &a.base)]);
    let outcome = v.analyze(IMAGE).await;
    assert_no_key(&outcome, &v);
    let r = outcome.result().unwrap_or_else(|| panic!("azure answered: {outcome:?}"));
    assert_eq!(r.provider, "azure");
    assert_eq!(r.category, Category::Reception);
    assert_eq!(r.alt_text, Some(Label { name: "a bride and groom cutting a wedding cake".into(), confidence: 0.84 }));
    assert_eq!(r.tags.len(), 3, "`indoor` is under the threshold: {:?}", r.tags);
}

#[tokio::test]
async fn a_rate_limited_provider_is_skipped_with_its_retry_after() {
    let limited = serve(Fake::Status(429, vec![("retry-after", "7")], "slow down".into())).await;
    let g = serve(Fake::Google(vec![("Altar", 0.9), ("Church", 0.85)])).await;
    let v = vision(vec![
        provider("azure", ProviderKind::Azure, &limited.base),
        provider("gcv", ProviderKind::Google, &g.base),
    ]);
    let outcome = v.analyze(IMAGE).await;
    assert_no_key(&outcome, &v);
    let r = outcome.result().unwrap();
    assert_eq!((r.provider.as_str(), r.category), ("gcv", Category::Ceremony));
    assert_eq!(r.skipped.len(), 1);
    assert_eq!(r.skipped[0].provider, "azure");
    assert_eq!(r.skipped[0].reason, SkipReason::RateLimited { retry_after: Some(Duration::from_secs(7)) });
    assert_eq!(r.skipped[0].retry_after(), Some(Duration::from_secs(7)));
    assert!(r.skipped[0].to_string().contains("retry after 7 s"), "{}", r.skipped[0]);
    assert_eq!(v.limit_key("azure"), "ai:provider:azure");

    // The caller holds the provider back (fleet-wide) and it is not called again.
    let outcome = v.analyze_skipping(IMAGE, &["azure"]).await;
    assert_eq!(outcome.skipped()[0].reason, SkipReason::HeldBack);
    assert_eq!(limited.hits.load(Ordering::SeqCst), 1);
    assert_eq!(g.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_provider_that_hangs_is_skipped_at_its_timeout() {
    let hang = serve(Fake::Hang).await;
    let a = serve(Fake::Azure(None, vec![("ring", 0.9), ("jewellery", 0.8)])).await;
    let mut slow = provider("hangs", ProviderKind::Google, &hang.base);
    slow.timeout_ms = 300;
    let v = vision(vec![slow, provider("azure", ProviderKind::Azure, &a.base)]);
    let started = Instant::now();
    let outcome = v.analyze(IMAGE).await;
    assert!(started.elapsed() < Duration::from_secs(2), "the timeout held: {:?}", started.elapsed());
    let r = outcome.result().unwrap();
    assert_eq!((r.provider.as_str(), r.category), ("azure", Category::Details));
    assert_eq!(r.skipped[0].reason, SkipReason::Timeout { timeout_ms: 300 });
}

#[tokio::test]
async fn garbage_error_objects_and_server_errors_fall_through_to_the_next() {
    let garbage = serve(Fake::Status(200, vec![("content-type", "application/json")], "<html>oops".into())).await;
    let error_object =
        serve(Fake::Status(200, vec![], r#"{"responses":[{"error":{"code":3,"message":"Bad image data."}}]}"#.into()))
            .await;
    let down = serve(Fake::Status(503, vec![], "unavailable".into())).await;
    let g = serve(Fake::Google(vec![("Face", 0.9), ("Smile", 0.8)])).await;
    let v = vision(vec![
        provider("garbage", ProviderKind::Azure, &garbage.base),
        provider("error-object", ProviderKind::Google, &error_object.base),
        provider("down", ProviderKind::Google, &down.base),
        provider("gcv", ProviderKind::Google, &g.base),
    ]);
    let outcome = v.analyze(IMAGE).await;
    assert_no_key(&outcome, &v);
    let r = outcome.result().unwrap();
    assert_eq!((r.provider.as_str(), r.category), ("gcv", Category::Portrait));
    let reasons: Vec<_> = r.skipped.iter().map(|s| (s.provider.as_str(), &s.reason)).collect();
    assert!(matches!(reasons[0], ("garbage", SkipReason::InvalidResponse { .. })), "{reasons:?}");
    assert!(
        matches!(reasons[1], ("error-object", SkipReason::ProviderError { message }) if message.contains("Bad image data")),
        "{reasons:?}"
    );
    assert_eq!(reasons[2], ("down", &SkipReason::ServerError { status: 503 }));
}

#[tokio::test]
async fn all_failing_is_unavailable_with_reasons_and_no_key() {
    // A provider that echoes the key in its error message, as some do.
    let echo = serve(Fake::Status(
        403,
        vec![],
        format!(r#"{{"error":{{"code":403,"message":"API key {KEY} not valid","status":"PERMISSION_DENIED"}}}}"#),
    ))
    .await;
    let big = serve(Fake::Status(200, vec![], format!(r#"{{"responses":[{{"x":"{}"}}]}}"#, "a".repeat(4096)))).await;
    let limited = serve(Fake::Status(429, vec![], String::new())).await;
    let v = Vision::new(VisionConfig {
        providers: vec![
            provider("echo", ProviderKind::Google, &echo.base),
            provider("big", ProviderKind::Google, &big.base),
            provider("limited", ProviderKind::Azure, &limited.base),
            provider("nobody", ProviderKind::Azure, "http://127.0.0.1:9"),
        ],
        allow: vec!["127.0.0.0/8".into()],
        max_response_bytes: 1024,
        ..VisionConfig::default()
    })
    .unwrap();
    let outcome = v.analyze(IMAGE).await;
    assert_no_key(&outcome, &v);
    let VisionOutcome::Unavailable { skipped } = &outcome else { panic!("nothing answered: {outcome:?}") };
    let names: Vec<_> = skipped.iter().map(|s| s.provider.as_str()).collect();
    assert_eq!(names, ["echo", "big", "limited", "nobody"]);
    assert!(
        matches!(&skipped[0].reason, SkipReason::Rejected { status: 403, message }
            if message.contains("PERMISSION_DENIED") && message.contains("[REDACTED]")),
        "{:?}",
        skipped[0]
    );
    assert!(
        matches!(&skipped[1].reason, SkipReason::InvalidResponse { message: m } if m.contains("larger than 1024")),
        "{:?}",
        skipped[1]
    );
    assert_eq!(skipped[2].reason, SkipReason::RateLimited { retry_after: None });
    assert!(matches!(&skipped[3].reason, SkipReason::Connection { .. }), "{:?}", skipped[3]);
    assert!(outcome.result().is_none());
}

#[tokio::test]
async fn the_total_deadline_bounds_the_whole_call() {
    let one = serve(Fake::Hang).await;
    let two = serve(Fake::Hang).await;
    let v = Vision::new(VisionConfig {
        providers: vec![
            provider("one", ProviderKind::Google, &one.base),
            provider("two", ProviderKind::Azure, &two.base),
        ],
        allow: vec!["127.0.0.0/8".into()],
        total_timeout_ms: 400,
        ..VisionConfig::default()
    })
    .unwrap();
    let started = Instant::now();
    let outcome = v.analyze(IMAGE).await;
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
    let skipped = outcome.skipped();
    assert!(matches!(skipped[0].reason, SkipReason::Timeout { timeout_ms } if timeout_ms <= 400), "{skipped:?}");
    assert!(matches!(skipped[1].reason, SkipReason::NoTimeLeft | SkipReason::Timeout { .. }), "{skipped:?}");
}

#[tokio::test]
async fn loopback_is_refused_unless_allowed() {
    let g = serve(Fake::Google(vec![("Bride", 0.9)])).await;
    let by_name = g.base.replace("127.0.0.1", "localhost");
    let v = Vision::new(VisionConfig {
        providers: vec![
            provider("literal", ProviderKind::Google, &g.base),
            provider("by-name", ProviderKind::Google, &by_name),
        ],
        ..VisionConfig::default()
    })
    .unwrap();
    let outcome = v.analyze(IMAGE).await;
    assert_no_key(&outcome, &v);
    let skipped = outcome.skipped();
    assert!(outcome.result().is_none());
    assert!(matches!(&skipped[0].reason, SkipReason::Refused { .. }), "{skipped:?}");
    assert!(matches!(&skipped[1].reason, SkipReason::Refused { message: m } if m.contains("localhost")), "{skipped:?}");
    assert_eq!(g.hits.load(Ordering::SeqCst), 0, "nothing reached the loopback server");
}

#[test]
fn config_is_checked_and_never_shows_the_key() {
    let text = format!(
        r#"total_timeout_ms = 5000
        [[providers]]
        name = "gcv"
        kind = "google"
        base_url = "https://vision.googleapis.com"
        api_key = "{KEY}"
        min_confidence = 0.6
        [[providers]]
        name = "azure"
        kind = "azure"
        base_url = "https://example.cognitiveservices.azure.com/"
        api_key = "{KEY}""#
    );
    let config: VisionConfig = toml::from_str(&text).unwrap();
    assert_eq!(config.providers.len(), 2);
    assert_eq!(config.providers[1].timeout_ms, 10_000);
    assert!(!format!("{config:?}").contains(KEY));
    let v = Vision::new(config.clone()).unwrap();
    assert!(!format!("{v:?}").contains(KEY));
    assert_eq!(v.providers().collect::<Vec<_>>(), ["gcv", "azure"]);

    assert!(
        toml::from_str::<VisionConfig>(
            "[[providers]]\nname=\"x\"\nkind=\"google\"\nbase_url=\"https://x\"\napi_key=\"k\"\ntimeout=1"
        )
        .is_err()
    );
    assert!(
        toml::from_str::<VisionConfig>(
            "[[providers]]\nname=\"x\"\nkind=\"aws\"\nbase_url=\"https://x\"\napi_key=\"k\""
        )
        .is_err()
    );
    let mut twice = config.clone();
    twice.providers[1].name = "gcv".into();
    assert!(Vision::new(twice).unwrap_err().to_string().contains("twice"));
    let mut bad_url = config.clone();
    bad_url.providers[0].base_url = "ftp://x".into();
    assert!(Vision::new(bad_url).is_err());
    let mut bad_threshold = config.clone();
    bad_threshold.providers[0].min_confidence = 1.5;
    assert!(Vision::new(bad_threshold).is_err());
    let mut bad_allow = config;
    bad_allow.allow = vec!["nonsense".into()];
    assert!(Vision::new(bad_allow).is_err());
}

#[tokio::test]
async fn no_providers_is_unavailable() {
    let v = Vision::new(VisionConfig::default()).unwrap();
    assert_eq!(v.analyze(IMAGE).await, VisionOutcome::Unavailable { skipped: vec![] });
}
