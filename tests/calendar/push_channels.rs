//! Push channels end to end: a fake Google Calendar v3 and a fake Microsoft Graph (one local
//! HTTP server speaking both, recording every watch, stop, subscription, renewal and
//! validation), the scheduler's API on a real socket (the fake Graph calls it to validate the
//! notification URL), a worker running `calendar.sync` with `[calendar.push] public_url`
//! pointing at that API, the ticker, PostgreSQL and Redis.
//!
//! - A sync makes the channel (Google `events.watch`; a Graph subscription, validated by
//!   Graph's handshake against Fleet's route); the token / clientState is random, only its
//!   hash is stored.
//! - A burst of notifications becomes exactly one sync, and the change reaches
//!   `calendar.conflict.detected` on the tenant's stream; Google's `sync` message triggers
//!   nothing; a forged token or clientState, a wrong resource and an unknown channel get
//!   401/404 and enqueue nothing.
//! - Providers that grant short lifetimes: the ticker asks for a sync once a third of the
//!   lifetime is left, which replaces the Google channel (the old one stopped) and renews
//!   the Graph subscription (or makes it again when Graph answers 404).

use super::KEY;
use super::providers::source;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use fleet_accounts::outbox::Relay;
use fleet_accounts::secrets::SecretBox;
use fleet_calendar::jobs::{CalendarSyncHandler, PushSettings};
use fleet_jobs::events;
use fleet_scheduler::api::{ApiState, app};
use fleet_tests::{TestDb, TestEnv, eventually};
use fleet_worker::Registry;
use serde_json::{Value, json};
use sqlx::Row;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const FEED: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Fleet//it//EN\r\nBEGIN:VEVENT\r\nUID:feed-jones\r\n\
DTSTAMP:20261201T000000Z\r\nDTSTART;TZID=Europe/London:20270612T210000\r\nDTEND;TZID=Europe/London:20270612T230000\r\n\
SUMMARY:jones\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";

/// What the fake providers hold and what they were asked.
#[derive(Default)]
pub(crate) struct Fake {
    base: String,
    clock: u64,
    /// Google: id → (change number, event).
    google: BTreeMap<String, (u64, Value)>,
    /// Graph: id → (change number, event).
    graph: BTreeMap<String, (u64, Value)>,
    /// Listings served (Google events.list, Graph delta), counted per provider.
    pub(crate) listings: BTreeMap<&'static str, usize>,
    /// Google watch requests (their bodies, plus `_at`: when, and `_granted`: the expiry
    /// answered, both in Unix ms) and channels.stop bodies.
    pub(crate) watches: Vec<Value>,
    pub(crate) stops: Vec<Value>,
    /// Graph subscriptions: id → (request body, expiry), and PATCH bodies.
    pub(crate) subscriptions: BTreeMap<String, (Value, String)>,
    /// Subscriptions ever made (their ids are `sub-1`, `sub-2`, ...).
    made: usize,
    /// An id every new subscription gets instead (a hostile server's answer).
    pub(crate) fixed_id: Option<String>,
    pub(crate) renewals: Vec<(String, Value)>,
    /// Graph's validation handshakes: (token sent, status, content type, body).
    pub(crate) validations: Vec<(String, u16, String, String)>,
    /// Lifetime the providers grant, in milliseconds (`None`: what was asked).
    pub(crate) grant_ms: Option<i64>,
}

pub(crate) type Shared = Arc<Mutex<Fake>>;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Fake {
    pub(crate) fn google_put(&mut self, event: Value) {
        self.clock += 1;
        self.google.insert(event["id"].as_str().unwrap().to_owned(), (self.clock, event));
    }

    pub(crate) fn graph_put(&mut self, mut event: Value) {
        self.clock += 1;
        event["@odata.etag"] = json!(format!("W/\"{}\"", self.clock));
        self.graph.insert(event["id"].as_str().unwrap().to_owned(), (self.clock, event));
    }

    fn granted(&self, asked_ms: i64) -> i64 {
        self.grant_ms.map_or(asked_ms, |g| now_ms() + g)
    }
}

fn query_of(uri: &Uri) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect()
}

async fn fake(State(state): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: String) -> Response {
    let path = uri.path().to_owned();
    if path == "/feed.ics" {
        return ([("content-type", "text/calendar")], FEED).into_response();
    }
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer token-e2e") {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let query = query_of(&uri);
    if method == Method::POST && path == "/v1.0/subscriptions" {
        // Graph validates the notification URL before it answers: a POST with a
        // validationToken, which must come back as text/plain within 10 s.
        let request: Value = serde_json::from_str(&body).unwrap();
        let token = format!("Validation: {} +/= ok", uuid::Uuid::now_v7());
        let target = format!(
            "{}?validationToken={}",
            request["notificationUrl"].as_str().unwrap(),
            url::form_urlencoded::byte_serialize(token.as_bytes()).collect::<String>()
        );
        let answer = reqwest::Client::new()
            .post(target)
            .header("content-type", "text/plain")
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        let content_type =
            answer.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let echoed = answer.text().await.unwrap();
        let ok = status == 200 && content_type.starts_with("text/plain") && echoed == token;
        let mut f = state.lock().unwrap();
        f.validations.push((token, status, content_type, echoed));
        if !ok {
            return (StatusCode::BAD_REQUEST, Json(json!({"error": {"code": "ValidationError"}}))).into_response();
        }
        let asked = chrono::DateTime::parse_from_rfc3339(request["expirationDateTime"].as_str().unwrap()).unwrap();
        let expiry = chrono::DateTime::from_timestamp_millis(f.granted(asked.timestamp_millis())).unwrap();
        f.made += 1;
        let id = f.fixed_id.clone().unwrap_or_else(|| format!("sub-{}", f.made));
        let expiry = expiry.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        f.subscriptions.insert(id.clone(), (request.clone(), expiry.clone()));
        let mut out = request;
        out["id"] = json!(id);
        out["expirationDateTime"] = json!(expiry);
        return (StatusCode::CREATED, Json(out)).into_response();
    }
    let mut f = state.lock().unwrap();
    if let Some(id) = path.strip_prefix("/v1.0/subscriptions/") {
        if !f.subscriptions.contains_key(id) {
            return (StatusCode::NOT_FOUND, Json(json!({"error": {"code": "ResourceNotFound"}}))).into_response();
        }
        if method == Method::DELETE {
            f.subscriptions.remove(id);
            return StatusCode::NO_CONTENT.into_response();
        }
        let patch: Value = serde_json::from_str(&body).unwrap();
        let asked = chrono::DateTime::parse_from_rfc3339(patch["expirationDateTime"].as_str().unwrap()).unwrap();
        let expiry = chrono::DateTime::from_timestamp_millis(f.granted(asked.timestamp_millis()))
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        f.renewals.push((id.to_owned(), patch));
        let entry = f.subscriptions.get_mut(id).unwrap();
        entry.1 = expiry.clone();
        return Json(json!({"id": id, "expirationDateTime": expiry})).into_response();
    }
    match (method, path.as_str()) {
        (Method::POST, "/calendar/v3/calendars/studio/events/watch") => {
            let request: Value = serde_json::from_str(&body).unwrap();
            let asked: i64 = request["expiration"].as_str().unwrap().parse().unwrap();
            let expiration = f.granted(asked);
            let mut seen = request.clone();
            seen["_at"] = json!(now_ms());
            seen["_granted"] = json!(expiration);
            f.watches.push(seen);
            Json(json!({
                "kind": "api#channel", "id": request["id"], "resourceId": "res-studio",
                "resourceUri": "https://www.googleapis.com/calendar/v3/calendars/studio/events?alt=json",
                "expiration": expiration.to_string(),
            }))
            .into_response()
        }
        (Method::POST, "/calendar/v3/channels/stop") => {
            f.stops.push(serde_json::from_str(&body).unwrap());
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::GET, "/calendar/v3/calendars/studio/events") => {
            *f.listings.entry("google").or_default() += 1;
            let since: u64 = query.get("syncToken").map_or(0, |t| t.trim_start_matches("tok").parse().unwrap());
            let items: Vec<Value> = f.google.values().filter(|(n, _)| *n > since).map(|(_, e)| e.clone()).collect();
            Json(json!({"items": items, "nextSyncToken": format!("tok{}", f.clock)})).into_response()
        }
        (Method::GET, "/v1.0/me/calendars/studio/calendarView/delta") => {
            *f.listings.entry("graph").or_default() += 1;
            let since: u64 = query.get("$deltatoken").map_or(0, |t| t.parse().unwrap());
            let items: Vec<Value> = f.graph.values().filter(|(n, _)| *n > since).map(|(_, e)| e.clone()).collect();
            let link = format!("{}/v1.0/me/calendars/studio/calendarView/delta?$deltatoken={}", f.base, f.clock);
            Json(json!({"value": items, "@odata.deltaLink": link})).into_response()
        }
        _ => (StatusCode::NOT_FOUND, format!("fake: nothing at {path}")).into_response(),
    }
}

pub(crate) fn google_event(id: &str, start: &str, end: &str) -> Value {
    json!({
        "id": id, "status": "confirmed", "iCalUID": format!("{id}@google.com"), "summary": id, "sequence": 0,
        "updated": "2026-12-01T10:00:00.000Z",
        "start": {"dateTime": start, "timeZone": "Europe/London"}, "end": {"dateTime": end, "timeZone": "Europe/London"},
    })
}

pub(crate) fn graph_event(id: &str, start: &str, end: &str) -> Value {
    json!({
        "id": id, "iCalUId": format!("uid-{id}"), "subject": id, "type": "singleInstance",
        "start": {"dateTime": format!("{start}.0000000"), "timeZone": "GMT Standard Time"},
        "end": {"dateTime": format!("{end}.0000000"), "timeZone": "GMT Standard Time"},
        "isAllDay": false, "showAs": "busy", "isCancelled": false,
        "lastModifiedDateTime": "2026-12-01T10:00:00Z",
    })
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    base
}

/// The world of one test: database, Redis namespace, fake providers, the API on a socket,
/// a handler with push on, a Google, a Graph and a feed source of supplier `studio-9`.
pub(crate) struct World {
    pub(crate) db: TestDb,
    pub(crate) env: TestEnv,
    pub(crate) fake: Shared,
    pub(crate) api: String,
    pub(crate) handler: CalendarSyncHandler,
    pub(crate) google: String,
    pub(crate) graph: String,
    pub(crate) feed: String,
    pub(crate) http: reqwest::Client,
}

impl World {
    pub(crate) async fn new() -> World {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let db = TestDb::new().await;
        let env = TestEnv::new().await;
        let shared: Shared = Arc::default();
        let base = serve(Router::new().fallback(fake).with_state(shared.clone())).await;
        shared.lock().unwrap().base = base.clone();
        let api = serve(app(ApiState::new(env.client.clone(), db.pool.clone()), 1 << 20)).await;
        sqlx::query("INSERT INTO calendar_suppliers (tenant, supplier, all_day_busy, time_zone) VALUES ('t1', 'studio-9', false, 'Europe/London')")
            .execute(&db.pool)
            .await
            .unwrap();
        let secrets = SecretBox::new(KEY).unwrap();
        let google =
            source(&db, &secrets, "google", &format!("{base}/calendar/v3/calendars/studio"), Some("token-e2e")).await;
        let graph =
            source(&db, &secrets, "graph", &format!("{base}/v1.0/me/calendars/studio"), Some("token-e2e")).await;
        let feed = source(&db, &secrets, "ics", &format!("{base}/feed.ics"), None).await;
        let handler = CalendarSyncHandler::new(db.pool.clone(), Some(secrets))
            .with_allowed(vec!["127.0.0.0/8".parse().unwrap()])
            .with_push(PushSettings { public_url: Some(api.clone()), ..Default::default() })
            .with_relay(Relay::new(db.pool.clone(), env.client.clone()));
        World { db, env, fake: shared, api, handler, google, graph, feed, http: reqwest::Client::new() }
    }

    /// The stored channels of `source`: (id, provider, tenant, resource id, expires_at).
    pub(crate) async fn channels(&self, source: &str) -> Vec<(String, String, String, Option<String>, String)> {
        sqlx::query(
            "SELECT id, provider, tenant, resource_id, expires_at FROM calendar_channels WHERE source_id = $1 ORDER BY created_at",
        )
        .bind(source)
        .fetch_all(&self.db.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get("id"),
                r.get("provider"),
                r.get("tenant"),
                r.get("resource_id"),
                r.get::<chrono::DateTime<chrono::Utc>, _>("expires_at").to_rfc3339(),
            )
        })
        .collect()
    }

    /// A Google notification as Google sends it.
    pub(crate) async fn google_notify(&self, channel: &str, token: &str, resource: &str, state: &str, n: u64) -> u16 {
        self.http
            .post(format!("{}/v1/push/google", self.api))
            .header("X-Goog-Channel-ID", channel)
            .header("X-Goog-Channel-Token", token)
            .header("X-Goog-Channel-Expiration", "Tue, 19 Nov 2030 01:13:52 GMT")
            .header("X-Goog-Resource-ID", resource)
            .header("X-Goog-Resource-URI", "https://www.googleapis.com/calendar/v3/calendars/studio/events")
            .header("X-Goog-Resource-State", state)
            .header("X-Goog-Message-Number", n.to_string())
            .header("content-length", "0")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// A Graph delivery of one notification per (subscription, clientState).
    pub(crate) async fn graph_notify(&self, items: &[(&str, &str)]) -> u16 {
        let value: Vec<Value> = items
            .iter()
            .map(|(sub, state)| {
                json!({
                    "subscriptionId": sub, "clientState": state, "changeType": "updated",
                    "resource": "Users/abc/Events/AAMk1", "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z",
                    "resourceData": {"@odata.type": "#Microsoft.Graph.Event", "id": "AAMk1"}, "tenantId": "t-ms",
                })
            })
            .collect();
        self.http
            .post(format!("{}/v1/push/graph", self.api))
            .header("content-type", "application/json")
            .body(json!({ "value": value }).to_string())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Calendar-queue jobs that are not finished.
    pub(crate) async fn pending(&self) -> i64 {
        let s = self.env.stats("calendar").await;
        s.ready + s.scheduled + s.running + s.retrying
    }

    /// Waits until the calendar queue has nothing left to run, then returns the listings
    /// served by `provider` so far.
    pub(crate) async fn settled_listings(&self, provider: &'static str) -> usize {
        eventually("the calendar queue to drain", Duration::from_secs(20), || async {
            (self.pending().await == 0).then_some(())
        })
        .await;
        self.fake.lock().unwrap().listings.get(provider).copied().unwrap_or(0)
    }

    /// Waits for the first `calendar.conflict.detected` after stream id `after`; the time
    /// it took from `since`.
    pub(crate) async fn conflict_after(&self, after: &str, since: Instant) -> Duration {
        let mut conn = self.env.client.connection();
        loop {
            let read = events::read_after(&mut conn, self.env.client.prefix(), "t1", after, 100).await.unwrap();
            if read.iter().any(|(_, e)| e.event_type == "calendar.conflict.detected") {
                return since.elapsed();
            }
            assert!(since.elapsed() < Duration::from_secs(30), "no conflict event within 30 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub(crate) async fn stream_position(&self) -> String {
        let mut conn = self.env.client.connection();
        events::latest_id(&mut conn, self.env.client.prefix(), "t1").await.unwrap()
    }

    pub(crate) async fn finish(self) {
        self.db.drop_db().await;
        self.env.cleanup().await;
    }
}

/// Runs ticker passes (as the scheduler does, every few hundred ms) until `check` holds, or
/// panics after 15 s naming `what`.
async fn until_ticked<T, F, Fut>(what: &str, ticker: &mut fleet_scheduler::ticker::Ticker, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        ticker.tick(chrono::Utc::now()).await;
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after 15 s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_google_watch_channel_is_made_notifies_one_sync_per_burst_and_is_replaced_before_it_expires() {
    let w = World::new().await;
    w.fake.lock().unwrap().google_put(google_event(
        "portrait",
        "2027-07-01T09:00:00+01:00",
        "2027-07-01T10:00:00+01:00",
    ));
    w.handler.sync_source(&w.feed).await.unwrap();

    // The first sync makes the channel: events.watch with Fleet's route, a random token.
    let started = chrono::Utc::now();
    let report = w.handler.sync_source(&w.google).await.unwrap();
    assert!(report.push.as_deref().unwrap_or_default().starts_with("created google channel fleet-"), "{report:?}");
    let watch = w.fake.lock().unwrap().watches[0].clone();
    assert_eq!(watch["type"], "web_hook");
    assert_eq!(watch["address"], format!("{}/v1/push/google", w.api));
    let token = watch["token"].as_str().unwrap().to_owned();
    let channel = watch["id"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 64);
    let asked = watch["expiration"].as_str().unwrap().parse::<i64>().unwrap() - started.timestamp_millis();
    assert!((7 * 86_400_000 - 60_000..=7 * 86_400_000 + 60_000).contains(&asked), "asked for 7 days: {asked} ms");
    let stored = w.channels(&w.google).await;
    assert_eq!(stored.len(), 1);
    assert_eq!((&stored[0].0, stored[0].1.as_str(), stored[0].2.as_str()), (&channel, "google", "t1"));
    assert_eq!(stored[0].3.as_deref(), Some("res-studio"));
    let hash: Vec<u8> = sqlx::query_scalar("SELECT token_sha256 FROM calendar_channels WHERE id = $1")
        .bind(&channel)
        .fetch_one(&w.db.pool)
        .await
        .unwrap();
    assert_ne!(hash, token.as_bytes(), "only the token's hash is stored");
    // A second sync leaves a live channel alone.
    assert_eq!(w.handler.sync_source(&w.google).await.unwrap().push, None);
    assert_eq!(w.fake.lock().unwrap().watches.len(), 1);

    // Google's first message on the channel, refusals: nothing is enqueued.
    assert_eq!(w.google_notify(&channel, &token, "res-studio", "sync", 1).await, 200);
    let forged = format!("{}0", &token[..63]);
    assert_eq!(w.google_notify(&channel, &forged, "res-studio", "exists", 2).await, 401, "forged token");
    assert_eq!(w.google_notify(&channel, &token, "res-other", "exists", 2).await, 401, "another resource");
    assert_eq!(w.google_notify("fleet-unknown", &token, "res-studio", "exists", 2).await, 404, "unknown channel");
    assert_eq!(w.google_notify("", "", "", "exists", 2).await, 404, "no channel at all");
    assert_eq!(w.pending().await, 0, "a refused or sync notification enqueues nothing");

    // The wedding is booked in Google over the feed's 21:00 booking; Google notifies five
    // times in a burst: one sync, and the conflict event on the tenant's stream.
    let worker = w.env.worker(w.env.config("calendar", 2), Registry::new().register(w.handler.clone())).await;
    let listings = w.settled_listings("google").await;
    let after = w.stream_position().await;
    let since = Instant::now();
    w.fake.lock().unwrap().google_put(google_event(
        "wedding",
        "2027-06-12T14:00:00+01:00",
        "2027-06-12T22:00:00+01:00",
    ));
    for n in 0..5 {
        assert_eq!(w.google_notify(&channel, &token, "res-studio", "exists", 10 + n).await, 200);
    }
    let latency = w.conflict_after(&after, since).await;
    assert_eq!(w.settled_listings("google").await, listings + 1, "five notifications, one sync");
    println!("google: change → calendar.conflict.detected in {} ms", latency.as_millis());
    let count: i64 = sqlx::query_scalar("SELECT notifications FROM calendar_channels WHERE id = $1")
        .bind(&channel)
        .fetch_one(&w.db.pool)
        .await
        .unwrap();
    assert_eq!(count, 6, "the sync message and the five changes");

    // Google grants 3 s: once a third is left the ticker asks for a sync, which replaces the
    // channel and stops the old one; the old channel's notifications are then unknown.
    w.fake.lock().unwrap().grant_ms = Some(3_000);
    w.handler.sync_source(&w.google).await.unwrap(); // still live: nothing
    sqlx::query("UPDATE calendar_channels SET renew_at = now() - interval '1 second' WHERE id = $1")
        .bind(&channel)
        .execute(&w.db.pool)
        .await
        .unwrap();
    let mut ticker = fleet_scheduler::ticker::Ticker::new(w.env.client.clone(), Some(w.db.pool.clone()), vec![]);
    let report = ticker.tick(chrono::Utc::now()).await;
    assert_eq!(report.channels.len(), 1, "{:?}", report.errors);
    assert_eq!(report.channels[0].source_id, w.google);
    let second = eventually("the replacing channel", Duration::from_secs(20), || async {
        let f = w.fake.lock().unwrap();
        (f.watches.len() == 2 && f.stops.len() == 1).then(|| f.watches[1].clone())
    })
    .await;
    let stop = w.fake.lock().unwrap().stops[0].clone();
    assert_eq!((stop["id"].as_str(), stop["resourceId"].as_str()), (Some(channel.as_str()), Some("res-studio")));
    let second_id = second["id"].as_str().unwrap().to_owned();
    assert_ne!(second_id, channel);
    assert_ne!(second["token"], token, "a new token with the new channel");
    eventually("only the new channel stored", Duration::from_secs(10), || async {
        let stored = w.channels(&w.google).await;
        (stored.len() == 1 && stored[0].0 == second_id).then_some(())
    })
    .await;
    // The new channel lives 3 s (what Google granted): the ticker asks again by itself,
    // with no hand on the table, before it expires.
    let third = until_ticked("a renewal before the 3 s channel expires", &mut ticker, || async {
        let f = w.fake.lock().unwrap();
        (f.watches.len() == 3).then(|| f.watches[2]["id"].as_str().unwrap().to_owned())
    })
    .await;
    assert_ne!(third, second_id);
    {
        let f = w.fake.lock().unwrap();
        let (made, expired) = (f.watches[2]["_at"].as_i64().unwrap(), f.watches[1]["_granted"].as_i64().unwrap());
        assert!(made < expired, "replaced {} ms before the old channel expired", expired - made);
    }
    assert_eq!(w.google_notify(&channel, &token, "res-studio", "exists", 99).await, 404, "the replaced channel");
    worker.shutdown().await;
    w.finish().await;
}

#[tokio::test]
async fn a_graph_subscription_is_validated_notifies_one_sync_per_burst_and_is_renewed_or_made_again() {
    let w = World::new().await;
    w.fake.lock().unwrap().graph_put(graph_event("AAMk1", "2027-07-01T09:00:00", "2027-07-01T10:00:00"));
    w.handler.sync_source(&w.feed).await.unwrap();

    // Graph's handshake on Fleet's route, answered by hand: the token back as text/plain.
    let answer = w
        .http
        .post(format!("{}/v1/push/graph?validationToken=Validation%3A%20abc%2Bdef", w.api))
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    assert!(answer.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    assert_eq!(answer.text().await.unwrap(), "Validation: abc+def");

    // The first sync makes the subscription; Graph validated the URL before answering.
    let report = w.handler.sync_source(&w.graph).await.unwrap();
    assert_eq!(report.push.as_deref(), Some("created graph channel sub-1"), "{report:?}");
    let (request, validations) = {
        let f = w.fake.lock().unwrap();
        (f.subscriptions["sub-1"].0.clone(), f.validations.clone())
    };
    assert_eq!(validations.len(), 1);
    assert_eq!((validations[0].1, validations[0].3 == validations[0].0), (200, true), "{validations:?}");
    assert_eq!(request["notificationUrl"], format!("{}/v1/push/graph", w.api));
    assert_eq!(request["resource"], "me/calendars/studio/events");
    assert_eq!(request["changeType"], "created,updated,deleted");
    let state = request["clientState"].as_str().unwrap().to_owned();
    assert_eq!(state.len(), 64);
    let stored = w.channels(&w.graph).await;
    assert_eq!((stored.len(), stored[0].0.as_str(), stored[0].2.as_str()), (1, "sub-1", "t1"));

    // Refusals enqueue nothing: a forged clientState (401), an unknown subscription (404), a
    // body that is not a notification (400).
    let forged = format!("{}0", &state[..63]);
    assert_eq!(w.graph_notify(&[("sub-1", &forged)]).await, 401);
    assert_eq!(w.graph_notify(&[("sub-404", &state)]).await, 404);
    assert_eq!(w.graph_notify(&[]).await, 404);
    let not_json = w.http.post(format!("{}/v1/push/graph", w.api)).body("hello").send().await.unwrap();
    assert_eq!(not_json.status().as_u16(), 400);
    assert_eq!(w.pending().await, 0);

    // A change in Outlook overlapping the feed's booking, notified three times in two
    // deliveries (one with a forged item beside the genuine ones): one sync, one conflict.
    let worker = w.env.worker(w.env.config("calendar", 2), Registry::new().register(w.handler.clone())).await;
    let listings = w.settled_listings("graph").await;
    let after = w.stream_position().await;
    let since = Instant::now();
    w.fake.lock().unwrap().graph_put(graph_event("AAMk2", "2027-06-12T20:00:00", "2027-06-12T22:00:00"));
    assert_eq!(w.graph_notify(&[("sub-1", &state), ("sub-1", &state)]).await, 202);
    assert_eq!(w.graph_notify(&[("sub-1", &forged), ("sub-1", &state)]).await, 202);
    let latency = w.conflict_after(&after, since).await;
    assert_eq!(w.settled_listings("graph").await, listings + 1, "three notifications, one sync");
    println!("graph: change → calendar.conflict.detected in {} ms", latency.as_millis());

    // Graph grants 3 s on renewal: the ticker's sync PATCHes the expiry forward...
    w.fake.lock().unwrap().grant_ms = Some(3_000);
    sqlx::query("UPDATE calendar_channels SET renew_at = now() - interval '1 second' WHERE id = 'sub-1'")
        .execute(&w.db.pool)
        .await
        .unwrap();
    let mut ticker = fleet_scheduler::ticker::Ticker::new(w.env.client.clone(), Some(w.db.pool.clone()), vec![]);
    assert_eq!(ticker.tick(chrono::Utc::now()).await.channels.len(), 1);
    let patch =
        eventually("a renewal", Duration::from_secs(20), || async { w.fake.lock().unwrap().renewals.first().cloned() })
            .await;
    assert_eq!(patch.0, "sub-1");
    assert!(patch.1["expirationDateTime"].is_string());
    let renewed_until = w.fake.lock().unwrap().subscriptions["sub-1"].1.clone();
    eventually("the renewed expiry stored", Duration::from_secs(10), || async {
        let stored = w.channels(&w.graph).await;
        let stored_at = chrono::DateTime::parse_from_rfc3339(&stored[0].4).unwrap();
        let renewed = chrono::DateTime::parse_from_rfc3339(&renewed_until).unwrap();
        ((stored_at - renewed).num_milliseconds().abs() < 1000).then_some(())
    })
    .await;
    // ...and, since 3 s is all it grants, asks again by itself before it runs out; this time
    // Graph has dropped the subscription (404), so a new one is made and validated.
    w.fake.lock().unwrap().subscriptions.remove("sub-1");
    until_ticked("a new subscription after the 404", &mut ticker, || async {
        let stored = w.channels(&w.graph).await;
        (stored.len() == 1 && stored[0].0 == "sub-2").then_some(())
    })
    .await;
    assert_eq!(w.fake.lock().unwrap().validations.len(), 2);
    assert_eq!(w.graph_notify(&[("sub-1", &state)]).await, 404, "the dropped subscription is unknown now");
    worker.shutdown().await;
    w.finish().await;
}

/// The provider is reached at a URL the tenant chose: a server answering with another
/// source's subscription id takes nothing over (the stored channel keeps its source, tenant
/// and token), and its own clientState for that id is refused.
#[tokio::test]
async fn a_provider_answer_cannot_take_over_another_tenants_channel() {
    let w = World::new().await;
    w.handler.sync_source(&w.graph).await.unwrap();
    let genuine = w.fake.lock().unwrap().subscriptions["sub-1"].0["clientState"].as_str().unwrap().to_owned();
    let secrets = SecretBox::new(KEY).unwrap();
    let hostile = format!("cal_{}", uuid::Uuid::now_v7().simple());
    let url = format!("{}/v1.0/me/calendars/studio", w.fake.lock().unwrap().base);
    sqlx::query("INSERT INTO calendar_sources (id, tenant, supplier, kind, url, secret) VALUES ($1, 't2', 'mallory', 'graph', $2, $3)")
        .bind(&hostile)
        .bind(&url)
        .bind(secrets.seal(&hostile, "token-e2e").unwrap())
        .execute(&w.db.pool)
        .await
        .unwrap();
    w.fake.lock().unwrap().fixed_id = Some("sub-1".into());
    let report = w.handler.sync_source(&hostile).await.unwrap();
    assert!(report.push.as_deref().unwrap_or_default().contains("belongs to another source"), "{report:?}");
    assert!(w.channels(&hostile).await.is_empty());
    let stored = w.channels(&w.graph).await;
    assert_eq!((stored.len(), stored[0].0.as_str(), stored[0].2.as_str()), (1, "sub-1", "t1"));
    let theirs = w.fake.lock().unwrap().subscriptions["sub-1"].0["clientState"].as_str().unwrap().to_owned();
    assert_ne!(theirs, genuine);
    assert_eq!(w.graph_notify(&[("sub-1", &theirs)]).await, 401, "the hostile clientState is not the channel's");
    assert_eq!(w.pending().await, 0);
    assert_eq!(w.graph_notify(&[("sub-1", &genuine)]).await, 202, "the genuine one still is");
    w.finish().await;
}

/// A source with push off gets no channel; one turned off has its channel stopped; a worker
/// without a public URL makes none (sources stay polled).
#[tokio::test]
async fn without_push_or_a_public_url_sources_stay_polled() {
    let w = World::new().await;
    let polled = CalendarSyncHandler::new(w.db.pool.clone(), Some(SecretBox::new(KEY).unwrap()))
        .with_allowed(vec!["127.0.0.0/8".parse().unwrap()]);
    assert_eq!(polled.sync_source(&w.google).await.unwrap().push, None);
    assert!(w.channels(&w.google).await.is_empty());
    assert!(w.fake.lock().unwrap().watches.is_empty());

    w.handler.sync_source(&w.google).await.unwrap();
    assert_eq!(w.channels(&w.google).await.len(), 1);
    sqlx::query("UPDATE calendar_sources SET push = false WHERE id = $1")
        .bind(&w.google)
        .execute(&w.db.pool)
        .await
        .unwrap();
    let report = w.handler.sync_source(&w.google).await.unwrap();
    assert!(report.push.as_deref().unwrap_or_default().starts_with("stopped 1"), "{report:?}");
    assert!(w.channels(&w.google).await.is_empty());
    assert_eq!(w.fake.lock().unwrap().stops.len(), 1);
    assert_eq!(w.handler.sync_source(&w.google).await.unwrap().push, None, "nothing more to stop");
    w.finish().await;
}

/// The figure for BENCHMARKS.md (not run by CI):
///
/// `cargo test --release -p fleet-tests --test calendar -- --ignored --nocapture bench_push`
///
/// Time from a change on the (local, fake) provider to `calendar.conflict.detected` on the
/// tenant's stream, through the push route, the debounced sync (1 s after the last
/// notification), a worker and the relay; 20 rounds per provider, each a booking that
/// double-books the feed, then its cancellation (which resolves it, not timed).
#[tokio::test]
#[ignore]
async fn bench_push_change_to_conflict() {
    let w = World::new().await;
    w.handler.sync_source(&w.feed).await.unwrap();
    w.handler.sync_source(&w.google).await.unwrap();
    w.handler.sync_source(&w.graph).await.unwrap();
    let (channel, token, state) = {
        let f = w.fake.lock().unwrap();
        let sub = f.subscriptions["sub-1"].0["clientState"].as_str().unwrap().to_owned();
        (f.watches[0]["id"].as_str().unwrap().to_owned(), f.watches[0]["token"].as_str().unwrap().to_owned(), sub)
    };
    let worker = w.env.worker(w.env.config("calendar", 2), Registry::new().register(w.handler.clone())).await;
    w.settled_listings("google").await;
    const ROUNDS: usize = 20;
    for provider in ["google", "graph"] {
        let mut times = Vec::new();
        for round in 0..ROUNDS {
            let after = w.stream_position().await;
            let since = Instant::now();
            let id = format!("bench{round}");
            if provider == "google" {
                let booked = google_event(&id, "2027-06-12T20:00:00+01:00", "2027-06-12T22:00:00+01:00");
                w.fake.lock().unwrap().google_put(booked);
                assert_eq!(w.google_notify(&channel, &token, "res-studio", "exists", round as u64).await, 200);
            } else {
                w.fake.lock().unwrap().graph_put(graph_event(&id, "2027-06-12T20:00:00", "2027-06-12T22:00:00"));
                assert_eq!(w.graph_notify(&[("sub-1", &state)]).await, 202);
            }
            times.push(w.conflict_after(&after, since).await);
            // Cancelled again (resolving the conflict) before the next round.
            w.settled_listings(provider).await;
            if provider == "google" {
                let mut gone = google_event(&id, "2027-06-12T20:00:00+01:00", "2027-06-12T22:00:00+01:00");
                gone["status"] = json!("cancelled");
                w.fake.lock().unwrap().google_put(gone);
                assert_eq!(w.google_notify(&channel, &token, "res-studio", "exists", 1000 + round as u64).await, 200);
            } else {
                let mut gone = graph_event(&id, "2027-06-12T20:00:00", "2027-06-12T22:00:00");
                gone["isCancelled"] = json!(true);
                w.fake.lock().unwrap().graph_put(gone);
                assert_eq!(w.graph_notify(&[("sub-1", &state)]).await, 202);
            }
            eventually("the conflict resolved", Duration::from_secs(20), || async {
                let open: i64 = sqlx::query_scalar("SELECT count(*) FROM calendar_conflicts WHERE resolved_at IS NULL")
                    .fetch_one(&w.db.pool)
                    .await
                    .unwrap();
                (open == 0).then_some(())
            })
            .await;
            w.settled_listings(provider).await;
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{provider}: change → calendar.conflict.detected over {ROUNDS} rounds: p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms \
             (of which the debounce holds 1000 ms)",
            ms(times[ROUNDS / 2]),
            ms(times[ROUNDS * 9 / 10]),
            ms(times[ROUNDS - 1])
        );
    }
    worker.shutdown().await;
    w.finish().await;
}
