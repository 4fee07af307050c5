//! OAuth refresh for provider sources: a fake token endpoint (RFC 6749 §6) and a fake Google
//! Calendar that accepts only the latest access token. A refused token is renewed and the
//! retry syncs; credentials without a current token are renewed before the first call; a
//! revoked refresh token is recorded on the source for the account to re-authorise.

use super::KEY;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fleet_accounts::secrets::SecretBox;
use fleet_calendar::jobs::CalendarSyncHandler;
use fleet_calendar::oauth::OAuthCredentials;
use fleet_tests::TestDb;
use serde_json::json;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Fake {
    issued: u32,
    valid: String,
    refreshes: Vec<String>,
}

type Shared = Arc<Mutex<Fake>>;

async fn token(State(state): State<Shared>, body: String) -> Response {
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(body.as_bytes()).into_owned().collect();
    let mut fake = state.lock().unwrap();
    fake.refreshes.push(form.get("refresh_token").cloned().unwrap_or_default());
    if form.get("grant_type").map(String::as_str) != Some("refresh_token")
        || form.get("client_id").map(String::as_str) != Some("cid")
    {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_request"}))).into_response();
    }
    if form.get("refresh_token").map(String::as_str) != Some("rt-good") {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_grant"}))).into_response();
    }
    fake.issued += 1;
    fake.valid = format!("fresh-{}", fake.issued);
    Json(json!({"access_token": fake.valid, "expires_in": 3600, "token_type": "Bearer"})).into_response()
}

async fn events(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let fake = state.lock().unwrap();
    let presented = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if fake.valid.is_empty() || presented != format!("Bearer {}", fake.valid) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let event = json!({"id": "w1", "status": "confirmed", "iCalUID": "w1@google.com", "summary": "Wedding", "sequence": 0,
        "updated": "2026-12-01T10:00:00.000Z",
        "start": {"dateTime": "2027-06-12T12:00:00+01:00"}, "end": {"dateTime": "2027-06-12T20:00:00+01:00"}});
    Json(json!({"items": [event], "nextSyncToken": "tok1"})).into_response()
}

async fn start() -> (String, Shared) {
    let state: Shared = Arc::default();
    let app = Router::new()
        .route("/token", post(token))
        .route("/calendar/v3/calendars/studio/events", get(events))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, state)
}

async fn google_source(db: &TestDb, secrets: &SecretBox, base: &str, credentials: &OAuthCredentials) -> String {
    let id = format!("cal_{}", uuid::Uuid::now_v7().simple());
    sqlx::query("INSERT INTO calendar_sources (id, tenant, supplier, kind, url, secret) VALUES ($1, 't1', 'oauth-1', 'google', $2, $3)")
        .bind(&id)
        .bind(format!("{base}/calendar/v3/calendars/studio"))
        .bind(secrets.seal(&id, &credentials.to_secret()).unwrap())
        .execute(&db.pool)
        .await
        .unwrap();
    id
}

async fn stored(db: &TestDb, secrets: &SecretBox, id: &str) -> OAuthCredentials {
    let sealed: String = sqlx::query_scalar("SELECT secret FROM calendar_sources WHERE id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    OAuthCredentials::from_secret(&secrets.open(id, &sealed).unwrap()).expect("credentials")
}

#[tokio::test]
async fn provider_tokens_are_refreshed_before_expiry_and_when_refused() {
    let db = TestDb::new().await;
    let (base, fake) = start().await;
    let secrets = SecretBox::new(KEY).unwrap();
    let handler = CalendarSyncHandler::new(db.pool.clone(), Some(secrets.clone()))
        .with_allowed(vec!["127.0.0.0/8".parse().unwrap()]);
    let credentials = |access: &str, expires_at: Option<i64>, refresh: &str| OAuthCredentials {
        access_token: access.into(),
        expires_at,
        refresh_token: refresh.into(),
        token_url: format!("{base}/token"),
        client_id: "cid".into(),
        client_secret: Some("shh".into()),
    };
    let in_an_hour = chrono::Utc::now().timestamp() + 3600;

    // A token the provider no longer accepts (revoked early): refreshed, then the retry syncs.
    let source = google_source(&db, &secrets, &base, &credentials("stale", Some(in_an_hour), "rt-good")).await;
    let error = handler.sync_source(&source).await.unwrap_err();
    assert!(error.contains("refreshed"), "{error}");
    assert!(!error.contains("stale") && !error.contains("rt-good"), "no secret in errors: {error}");
    let renewed = stored(&db, &secrets, &source).await;
    assert_eq!(renewed.access_token, "fresh-1");
    assert!(renewed.expires_at.unwrap() >= in_an_hour - 5);
    let report = handler.sync_source(&source).await.unwrap();
    assert_eq!(report.events_written, 1);
    assert_eq!(fake.lock().unwrap().refreshes, ["rt-good"], "a valid token is not refreshed again");

    // No current token (or one about to expire): refreshed before the first call.
    let source = google_source(&db, &secrets, &base, &credentials("", None, "rt-good")).await;
    let report = handler.sync_source(&source).await.unwrap();
    assert_eq!(report.events_written, 1);
    assert_eq!(stored(&db, &secrets, &source).await.access_token, "fresh-2");

    // A revoked refresh token: the source says to re-authorise; nothing is retried.
    let source = google_source(&db, &secrets, &base, &credentials("", None, "rt-revoked")).await;
    let error = handler.sync_source(&source).await.unwrap_err();
    assert!(error.contains("re-authorise") && error.contains("invalid_grant"), "{error}");
    assert!(!error.contains("rt-revoked") && !error.contains("shh"), "no secret in errors: {error}");
    let last_error: Option<String> = sqlx::query_scalar("SELECT last_error FROM calendar_sources WHERE id = $1")
        .bind(&source)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(last_error.unwrap().contains("re-authorise"));
    db.drop_db().await;
}
