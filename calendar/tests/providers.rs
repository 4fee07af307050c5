//! Google Calendar v3 and Microsoft Graph against local fake servers that speak their JSON:
//! paging, incremental sync, expired tokens (410 / `syncStateNotFound`) → full resync, 429/503
//! with Retry-After, Windows zone names across the US and EU DST changes, all-day, recurring
//! series with moved and cancelled instances, and push-back (idempotent create, 412 handling).
//!
//! The fakes bind 127.0.0.1:0 and keep their state in memory; tests change it directly (as the
//! supplier editing their calendar would) and read it back.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDate, Utc};
use fleet_calendar::caldav::ClientOptions;
use fleet_calendar::google::{GoogleCalendar, GoogleState, event_id_for};
use fleet_calendar::graph::{GraphCalendar, GraphRef, GraphState};
use fleet_calendar::provider::{ProviderError, ProviderPull, PushEvent, PushTime};
use fleet_calendar::push::PushOutcome;
use fleet_calendar::{EventStatus, ExpandOptions, Occurrence, decode, expand, parse};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TOKEN: &str = "ya29.test-token";

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// Every occurrence of the pulled objects in March–April 2027 (default zone UTC).
fn occurrences<S>(pull: &ProviderPull<S>) -> Vec<Occurrence> {
    let mut text = String::new();
    for object in &pull.changed {
        text.push_str(&decode(&object.body).unwrap());
    }
    let calendar = parse(&text);
    assert!(calendar.warnings.is_empty(), "{:?}", calendar.warnings);
    expand(&calendar, &ExpandOptions::window(utc("2027-03-01T00:00:00Z"), utc("2027-05-01T00:00:00Z"))).occurrences
}

fn find<'a>(occurrences: &'a [Occurrence], uid: &str) -> Vec<&'a Occurrence> {
    occurrences.iter().filter(|o| o.uid == uid).collect()
}

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{address}")
}

fn authorised(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"))
}

fn query_of(uri: &Uri) -> HashMap<String, String> {
    url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect()
}

// ---------------------------------------------------------------------------------------------
// Fake Google Calendar v3.

#[derive(Default)]
struct Google {
    /// id → event JSON (cancelled ones kept, as Google does).
    events: BTreeMap<String, Value>,
    /// id → change number of its last change.
    changed_at: BTreeMap<String, u64>,
    clock: u64,
    page_size: usize,
    /// Tokens older than this are expired (410).
    expired_before: u64,
    /// The next list answers 429 with this Retry-After.
    rate_limit_once: Option<&'static str>,
    /// Query strings of every list request.
    lists: Vec<HashMap<String, String>>,
}

impl Google {
    fn upsert(&mut self, mut event: Value) {
        self.clock += 1;
        let id = event["id"].as_str().unwrap().to_owned();
        event["etag"] = json!(format!("\"{}\"", self.clock));
        if event.get("updated").is_none() {
            event["updated"] = json!(format!("2026-12-01T10:00:{:02}.000Z", self.clock % 60));
        }
        self.changed_at.insert(id.clone(), self.clock);
        self.events.insert(id, event);
    }

    fn cancel(&mut self, id: &str) {
        let mut event = self.events[id].clone();
        event["status"] = json!("cancelled");
        self.upsert(event);
    }
}

type Shared<T> = Arc<Mutex<T>>;

async fn google_handler(
    State(state): State<Shared<Google>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorised(&headers) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}})))
            .into_response();
    }
    let mut g = state.lock().unwrap();
    let path = uri.path().to_owned();
    let rest = path.strip_prefix("/calendar/v3/calendars/primary/events").expect("events path");
    match (method, rest.trim_start_matches('/')) {
        (Method::GET, "") => {
            let query = query_of(&uri);
            g.lists.push(query.clone());
            if let Some(after) = g.rate_limit_once.take() {
                return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", after)], "slow down").into_response();
            }
            let since = match query.get("syncToken") {
                Some(token) => {
                    let n: u64 = token.strip_prefix("sync-").unwrap().parse().unwrap();
                    if n < g.expired_before {
                        return (
                            StatusCode::GONE,
                            Json(json!({"error": {"code": 410, "errors": [{"reason": "fullSyncRequired"}]}})),
                        )
                            .into_response();
                    }
                    Some(n)
                }
                None => None,
            };
            assert_eq!(query.get("showDeleted").map(String::as_str), Some("true"));
            let ids: Vec<&String> = g.events.keys().filter(|id| since.is_none_or(|n| g.changed_at[*id] > n)).collect();
            let offset: usize = query.get("pageToken").map(|p| p.parse().unwrap()).unwrap_or(0);
            let page: Vec<Value> = ids.iter().skip(offset).take(g.page_size).map(|id| g.events[*id].clone()).collect();
            let mut out = json!({"kind": "calendar#events", "items": page});
            if offset + g.page_size < ids.len() {
                out["nextPageToken"] = json!((offset + g.page_size).to_string());
            } else {
                out["nextSyncToken"] = json!(format!("sync-{}", g.clock));
            }
            Json(out).into_response()
        }
        (Method::POST, "") => {
            let event: Value = serde_json::from_slice(&body).unwrap();
            let id = event["id"].as_str().unwrap().to_owned();
            if g.events.contains_key(&id) {
                return (
                    StatusCode::CONFLICT,
                    Json(json!({"error": {"code": 409, "errors": [{"reason": "duplicate"}]}})),
                )
                    .into_response();
            }
            g.upsert(event);
            Json(g.events[&id].clone()).into_response()
        }
        (method, id) => {
            let Some(current) = g.events.get(id).cloned() else {
                return StatusCode::NOT_FOUND.into_response();
            };
            let if_match = headers.get("if-match").and_then(|v| v.to_str().ok());
            if method != Method::GET && if_match.is_some_and(|m| Some(m) != current["etag"].as_str()) {
                return StatusCode::PRECONDITION_FAILED.into_response();
            }
            match method {
                Method::GET => Json(current).into_response(),
                Method::PUT => {
                    let mut event: Value = serde_json::from_slice(&body).unwrap();
                    event["id"] = json!(id);
                    event.as_object_mut().unwrap().remove("updated");
                    g.upsert(event);
                    Json(g.events[id].clone()).into_response()
                }
                Method::DELETE => {
                    g.cancel(id);
                    StatusCode::NO_CONTENT.into_response()
                }
                _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
            }
        }
    }
}

async fn google_server(page_size: usize) -> (Shared<Google>, String) {
    let state = Arc::new(Mutex::new(Google { page_size, ..Google::default() }));
    let router = axum::Router::new().fallback(google_handler).with_state(state.clone());
    let base = serve(router).await;
    (state, format!("{base}/calendar/v3/calendars/primary"))
}

fn google_client(url: &str, token: &str) -> GoogleCalendar {
    GoogleCalendar::new(url, token.to_owned().into(), &ClientOptions::default()).unwrap()
}

fn g_event(id: &str, start: &str, end: &str, zone: &str) -> Value {
    json!({
        "kind": "calendar#event", "id": id, "status": "confirmed", "iCalUID": format!("{id}@google.com"),
        "summary": id, "sequence": 0,
        "start": {"dateTime": start, "timeZone": zone}, "end": {"dateTime": end, "timeZone": zone},
    })
}

#[tokio::test]
async fn google_pages_incremental_changes_and_410_full_resync() {
    let (fake, url) = google_server(2).await;
    for i in 0..5 {
        fake.lock().unwrap().upsert(g_event(
            &format!("ev{i}"),
            &format!("2027-04-0{}T10:00:00+01:00", i + 1),
            &format!("2027-04-0{}T11:00:00+01:00", i + 1),
            "Europe/London",
        ));
    }
    let google = google_client(&url, TOKEN);

    // Full listing over three pages; the token only arrives on the last.
    let first = google.pull(&GoogleState::default(), &HashMap::new()).await.unwrap();
    assert_eq!((first.pages, first.changed.len(), first.full, first.resynced), (3, 5, true, false));
    assert_eq!(first.state.sync_token.as_deref(), Some("sync-5"));
    assert!(first.removed.is_empty() && first.skipped.is_empty());
    let ev0 = &first.changed[0];
    assert_eq!((ev0.href.as_str(), ev0.etag.as_deref()), ("ev0", Some("\"1\"")));
    let text = String::from_utf8(ev0.body.clone()).unwrap();
    assert!(text.contains("DTSTART;TZID=Europe/London:20270401T100000"), "{text}");
    assert!(text.contains("UID:ev0@google.com"), "{text}");

    // Incremental: one changed, one deleted; only those come back.
    {
        let mut g = fake.lock().unwrap();
        let mut changed = g_event("ev1", "2027-04-02T12:00:00+01:00", "2027-04-02T13:00:00+01:00", "Europe/London");
        changed["sequence"] = json!(1);
        g.upsert(changed);
        g.cancel("ev3");
    }
    let second = google.pull(&first.state, &HashMap::new()).await.unwrap();
    assert_eq!(fake.lock().unwrap().lists.last().unwrap().get("syncToken").map(String::as_str), Some("sync-5"));
    assert_eq!((second.full, second.resynced, second.pages), (false, false, 1));
    assert_eq!(second.changed.iter().map(|o| o.href.as_str()).collect::<Vec<_>>(), ["ev1"]);
    assert_eq!(second.removed, ["ev3"]);
    let moved = occurrences(&second);
    assert_eq!(moved[0].start, utc("2027-04-02T11:00:00Z"));

    // The token expires: 410 → dropped, full listing, flagged as such.
    fake.lock().unwrap().expired_before = u64::MAX;
    let third = google.pull(&second.state, &HashMap::new()).await.unwrap();
    assert_eq!((third.full, third.resynced), (true, true));
    assert_eq!(third.changed.len(), 4, "the cancelled event is a removal, not an object");
    assert_eq!(third.removed, ["ev3"]);
    let lists = fake.lock().unwrap().lists.clone();
    assert!(lists.last().unwrap().get("syncToken").is_none(), "the resync sends no token");
}

#[tokio::test]
async fn google_429_surfaces_retry_after_body_cap_and_401_is_an_auth_error() {
    let (fake, url) = google_server(50).await;
    fake.lock().unwrap().upsert(g_event("a", "2027-04-01T10:00:00Z", "2027-04-01T11:00:00Z", "UTC"));
    fake.lock().unwrap().rate_limit_once = Some("120");
    let google = google_client(&url, TOKEN);
    match google.pull(&GoogleState::default(), &HashMap::new()).await {
        Err(ProviderError::RateLimited { status, retry_after }) => {
            assert_eq!(status.as_u16(), 429);
            assert_eq!(retry_after, Some(Duration::from_secs(120)));
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    // The next attempt goes through.
    assert_eq!(google.pull(&GoogleState::default(), &HashMap::new()).await.unwrap().changed.len(), 1);

    // Every response is read up to the cap, no further.
    let small = ClientOptions { max_response_bytes: 200, ..ClientOptions::default() };
    let capped = GoogleCalendar::new(&url, TOKEN.to_owned().into(), &small).unwrap();
    let err = capped.pull(&GoogleState::default(), &HashMap::new()).await.unwrap_err();
    assert!(matches!(err, ProviderError::TooLarge(200)), "{err:?}");

    let wrong = google_client(&url, "ya29.secret-that-must-not-leak");
    let err = wrong.pull(&GoogleState::default(), &HashMap::new()).await.unwrap_err();
    assert!(matches!(err, ProviderError::Unauthorised(_)), "{err:?}");
    assert!(!err.is_transient());
    let shown = format!("{err} {err:?} {wrong:?}");
    assert!(!shown.contains("secret-that-must-not-leak"), "{shown}");
}

#[tokio::test]
async fn google_recurring_series_across_dst_with_moved_and_cancelled_instances_and_all_day() {
    let (fake, url) = google_server(3).await;
    {
        let mut g = fake.lock().unwrap();
        // Wednesdays 09:00–10:00 Los Angeles from 10 March 2027 (PST) across 14 March (PDT).
        let mut master =
            g_event("series", "2027-03-10T09:00:00-08:00", "2027-03-10T10:00:00-08:00", "America/Los_Angeles");
        master["recurrence"] = json!(["RRULE:FREQ=WEEKLY;COUNT=5", "EXDATE;TZID=America/Los_Angeles:20270407T090000"]);
        g.upsert(master);
        // 24 March moved to 11:00.
        let mut moved = g_event(
            "series_20270324T160000Z",
            "2027-03-24T11:00:00-07:00",
            "2027-03-24T12:00:00-07:00",
            "America/Los_Angeles",
        );
        moved["iCalUID"] = json!("series@google.com");
        moved["recurringEventId"] = json!("series");
        moved["originalStartTime"] =
            json!({"dateTime": "2027-03-24T09:00:00-07:00", "timeZone": "America/Los_Angeles"});
        g.upsert(moved);
        // 31 March cancelled: Google sends only these fields.
        g.upsert(json!({
            "id": "series_20270331T160000Z", "status": "cancelled", "recurringEventId": "series",
            "originalStartTime": {"dateTime": "2027-03-31T09:00:00-07:00", "timeZone": "America/Los_Angeles"},
        }));
        g.upsert(json!({
            "id": "holiday", "status": "confirmed", "iCalUID": "holiday@google.com", "summary": "Holiday",
            "start": {"date": "2027-03-20"}, "end": {"date": "2027-03-21"}, "transparency": "transparent",
        }));
    }
    let google = google_client(&url, TOKEN);
    let pull = google.pull(&GoogleState::default(), &HashMap::new()).await.unwrap();
    assert_eq!((pull.pages, pull.changed.len()), (2, 4));
    let all = occurrences(&pull);
    let series: Vec<(DateTime<Utc>, EventStatus)> =
        find(&all, "series@google.com").iter().map(|o| (o.start, o.status)).collect();
    assert_eq!(
        series,
        [
            (utc("2027-03-10T17:00:00Z"), EventStatus::Confirmed), // 09:00 PST
            (utc("2027-03-17T16:00:00Z"), EventStatus::Confirmed), // 09:00 PDT
            (utc("2027-03-24T18:00:00Z"), EventStatus::Confirmed), // moved to 11:00 PDT
            (utc("2027-03-31T16:00:00Z"), EventStatus::Cancelled), // cancelled instance
        ]
    );
    let moved = find(&all, "series@google.com")[2];
    assert_eq!(moved.recurrence_id, Some(utc("2027-03-24T16:00:00Z")));
    assert_eq!(moved.start_local.format("%H:%M").to_string(), "11:00");
    let holiday = find(&all, "holiday@google.com");
    assert_eq!(holiday.len(), 1);
    assert!(holiday[0].all_day && holiday[0].transparent);
    assert_eq!(holiday[0].start_local.date(), NaiveDate::from_ymd_opt(2027, 3, 20).unwrap());
    assert_eq!(holiday[0].end_local.date(), NaiveDate::from_ymd_opt(2027, 3, 21).unwrap());

    // Incremental: a cancelled instance whose master is not in this pull takes the stored UID.
    fake.lock().unwrap().upsert(json!({
        "id": "imported_20270317", "status": "cancelled", "recurringEventId": "imported",
        "originalStartTime": {"dateTime": "2027-03-17T09:00:00-07:00", "timeZone": "America/Los_Angeles"},
    }));
    let known: HashMap<String, String> = [("imported".to_owned(), "custom-uid-from-ics".to_owned())].into();
    let next = google.pull(&pull.state, &known).await.unwrap();
    let text = String::from_utf8(next.changed[0].body.clone()).unwrap();
    assert!(text.contains("UID:custom-uid-from-ics") && text.contains("STATUS:CANCELLED"), "{text}");
    assert!(text.contains("RECURRENCE-ID;TZID=America/Los_Angeles:20270317T090000"), "{text}");
}

fn booking(id: &str, summary: &str, sequence: i64, updated: &str) -> PushEvent {
    PushEvent {
        booking_id: id.to_owned(),
        summary: summary.to_owned(),
        location: Some("Studio 7".to_owned()),
        description: None,
        start: PushTime::Timed { at: utc("2027-06-12T18:00:00Z"), zone: Some("Europe/London".to_owned()) },
        end: PushTime::Timed { at: utc("2027-06-12T22:00:00Z"), zone: Some("Europe/London".to_owned()) },
        transparent: false,
        sequence,
        updated: utc(updated),
    }
}

#[tokio::test]
async fn google_push_create_is_idempotent_and_412_keeps_the_newer_version() {
    let (fake, url) = google_server(50).await;
    let google = google_client(&url, TOKEN);
    let ours = booking("bk_42", "Smith wedding", 0, "2026-11-30T09:00:00Z");
    let id = event_id_for("bk_42");

    let PushOutcome::Written { href, etag } = google.push(&ours, None).await.unwrap() else { panic!("not written") };
    assert_eq!(href, id);
    let etag = etag.unwrap();
    // The create is retried (the response was lost): 409 → found, same content → unchanged.
    match google.push(&ours, None).await.unwrap() {
        PushOutcome::Unchanged { href, etag: same } => {
            assert_eq!((href.as_str(), same.as_deref()), (id.as_str(), Some(etag.as_str())))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.lock().unwrap().events.len(), 1, "one event, not two");

    // The supplier edits it in Google meanwhile (newer `updated`, same SEQUENCE).
    {
        let mut g = fake.lock().unwrap();
        let mut theirs = g.events[&id].clone();
        theirs["summary"] = json!("Smith wedding (moved room)");
        theirs["updated"] = json!("2026-12-01T12:00:00.000Z");
        g.upsert(theirs);
    }
    // Our stale edit (same SEQUENCE, older) → 412 → theirs kept and returned.
    let stale = booking("bk_42", "Smith wedding, 4 hours", 0, "2026-11-30T10:00:00Z");
    match google.push(&stale, Some(&etag)).await.unwrap() {
        PushOutcome::KeptTheirs(object) => {
            assert_eq!(object.href, id);
            let text = String::from_utf8(object.body).unwrap();
            assert!(text.contains("SUMMARY:Smith wedding (moved room)"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.lock().unwrap().events[&id]["summary"], "Smith wedding (moved room)");

    // A real change of ours (higher SEQUENCE) → 412 → written over theirs with their ETag.
    let newer = booking("bk_42", "Smith wedding, 5 hours", 1, "2026-12-01T13:00:00Z");
    assert!(matches!(google.push(&newer, Some(&etag)).await.unwrap(), PushOutcome::Written { .. }));
    let g = fake.lock().unwrap();
    assert_eq!(g.events[&id]["summary"], "Smith wedding, 5 hours");
    assert_eq!(g.events[&id]["sequence"], 1);
    assert_eq!(g.events[&id]["start"]["timeZone"], "Europe/London");
}

// ---------------------------------------------------------------------------------------------
// Fake Microsoft Graph.

#[derive(Default)]
struct Graph {
    base: String,
    /// id → event JSON; `None`: deleted (reported as @removed).
    events: BTreeMap<String, Option<Value>>,
    changed_at: BTreeMap<String, u64>,
    clock: u64,
    page_size: usize,
    expired_before: u64,
    unavailable_once: Option<&'static str>,
    windows: Vec<(String, String)>,
}

impl Graph {
    fn upsert(&mut self, mut event: Value) -> String {
        self.clock += 1;
        let id = event["id"].as_str().unwrap().to_owned();
        event["@odata.etag"] = json!(format!("W/\"{}\"", self.clock));
        if event.get("lastModifiedDateTime").is_none() {
            event["lastModifiedDateTime"] = json!(format!("2026-12-01T10:00:{:02}Z", self.clock % 60));
        }
        self.changed_at.insert(id.clone(), self.clock);
        self.events.insert(id.clone(), Some(event));
        id
    }

    fn remove(&mut self, id: &str) {
        self.clock += 1;
        self.changed_at.insert(id.to_owned(), self.clock);
        self.events.insert(id.to_owned(), None);
    }
}

async fn graph_handler(
    State(state): State<Shared<Graph>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorised(&headers) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": {"code": "InvalidAuthenticationToken"}})))
            .into_response();
    }
    let mut g = state.lock().unwrap();
    let path = uri.path().to_owned();
    let rest = path.strip_prefix("/v1.0/me/calendar/").expect("calendar path");
    let query = query_of(&uri);
    match (method, rest) {
        (Method::GET, "calendarView/delta") => {
            if let Some(after) = g.unavailable_once.take() {
                return (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", after)], "busy").into_response();
            }
            // (changes after, offset): a new round, a page link, or a delta link.
            let (since, offset) = if let Some(skip) = query.get("$skiptoken") {
                let (since, offset) = skip.split_once('-').unwrap();
                (since.parse::<u64>().unwrap(), offset.parse::<usize>().unwrap())
            } else if let Some(delta) = query.get("$deltatoken") {
                let n: u64 = delta.parse().unwrap();
                if n < g.expired_before {
                    return (StatusCode::GONE, Json(json!({"error": {"code": "syncStateNotFound"}}))).into_response();
                }
                (n, 0)
            } else {
                let window = (query["startDateTime"].clone(), query["endDateTime"].clone());
                g.windows.push(window);
                (0, 0)
            };
            let full = since == 0;
            let ids: Vec<&String> = g
                .events
                .iter()
                .filter(|(id, e)| g.changed_at[*id] > since && (e.is_some() || !full))
                .map(|(id, _)| id)
                .collect();
            let page: Vec<Value> = ids
                .iter()
                .skip(offset)
                .take(g.page_size)
                .map(|id| g.events[*id].clone().unwrap_or_else(|| json!({"id": id, "@removed": {"reason": "deleted"}})))
                .collect();
            let mut out = json!({"@odata.context": "fake", "value": page});
            let link = format!("{}/v1.0/me/calendar/calendarView/delta", g.base);
            if offset + g.page_size < ids.len() {
                out["@odata.nextLink"] = json!(format!("{link}?$skiptoken={since}-{}", offset + g.page_size));
            } else {
                out["@odata.deltaLink"] = json!(format!("{link}?$deltatoken={}", g.clock));
            }
            Json(out).into_response()
        }
        (Method::POST, "events") => {
            let mut event: Value = serde_json::from_slice(&body).unwrap();
            let transaction = event["transactionId"].clone();
            let existing = g.events.values().flatten().find(|e| e["transactionId"] == transaction).cloned();
            if let Some(existing) = existing {
                return (StatusCode::CREATED, Json(existing)).into_response();
            }
            event["id"] = json!(format!("AAMk{}", g.clock + 1));
            event["type"] = json!("singleInstance");
            let id = g.upsert(event);
            (StatusCode::CREATED, Json(g.events[&id].clone())).into_response()
        }
        (method, rest) => {
            let id = rest.strip_prefix("events/").expect("event path");
            let Some(Some(current)) = g.events.get(id).cloned() else {
                return StatusCode::NOT_FOUND.into_response();
            };
            let if_match = headers.get("if-match").and_then(|v| v.to_str().ok());
            if method != Method::GET && if_match.is_some_and(|m| Some(m) != current["@odata.etag"].as_str()) {
                return (
                    StatusCode::PRECONDITION_FAILED,
                    Json(json!({"error": {"code": "ErrorIrresolvableConflict"}})),
                )
                    .into_response();
            }
            match method {
                Method::GET => Json(current).into_response(),
                Method::PATCH => {
                    let patch: Value = serde_json::from_slice(&body).unwrap();
                    let mut event = current;
                    for (k, v) in patch.as_object().unwrap() {
                        event[k] = v.clone();
                    }
                    event.as_object_mut().unwrap().remove("lastModifiedDateTime");
                    g.upsert(event);
                    Json(g.events[id].clone().unwrap()).into_response()
                }
                Method::DELETE => {
                    g.remove(id);
                    StatusCode::NO_CONTENT.into_response()
                }
                _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
            }
        }
    }
}

async fn graph_server(page_size: usize) -> (Shared<Graph>, String) {
    let state = Arc::new(Mutex::new(Graph { page_size, ..Graph::default() }));
    let router = axum::Router::new().fallback(graph_handler).with_state(state.clone());
    let base = serve(router).await;
    state.lock().unwrap().base = base.clone();
    (state, format!("{base}/v1.0/me/calendar"))
}

fn graph_client(url: &str) -> GraphCalendar {
    GraphCalendar::new(url, TOKEN.to_owned().into(), &ClientOptions::default()).unwrap()
}

fn m_event(id: &str, start: &str, end: &str, zone: &str) -> Value {
    json!({
        "id": id, "iCalUId": format!("uid-{id}"), "subject": id, "type": "singleInstance",
        "start": {"dateTime": format!("{start}.0000000"), "timeZone": zone},
        "end": {"dateTime": format!("{end}.0000000"), "timeZone": zone},
        "isAllDay": false, "showAs": "busy", "isCancelled": false,
    })
}

fn window() -> (DateTime<Utc>, DateTime<Utc>) {
    (utc("2027-03-01T00:00:00Z"), utc("2029-03-01T00:00:00Z"))
}

#[tokio::test]
async fn graph_delta_pages_removals_and_sync_state_not_found_resync() {
    let (fake, url) = graph_server(2).await;
    for i in 0..5 {
        fake.lock().unwrap().upsert(m_event(
            &format!("m{i}"),
            &format!("2027-04-0{}T10:00:00", i + 1),
            &format!("2027-04-0{}T11:00:00", i + 1),
            "UTC",
        ));
    }
    let graph = graph_client(&url);
    let first = graph.pull(&GraphState::default(), window()).await.unwrap();
    assert_eq!((first.pages, first.changed.len(), first.full, first.resynced), (3, 5, true, false));
    assert!(first.state.delta_link.as_deref().unwrap().ends_with("$deltatoken=5"));
    assert_eq!(first.state.window_end, Some(window().1));
    assert_eq!(fake.lock().unwrap().windows, [("2027-03-01T00:00:00Z".to_owned(), "2029-03-01T00:00:00Z".to_owned())]);

    {
        let mut g = fake.lock().unwrap();
        g.upsert(m_event("m1", "2027-04-02T15:00:00", "2027-04-02T16:00:00", "UTC"));
        g.remove("m4");
    }
    let second = graph.pull(&first.state, window()).await.unwrap();
    assert_eq!((second.full, second.resynced), (false, false));
    assert_eq!(second.changed.iter().map(|o| o.href.as_str()).collect::<Vec<_>>(), ["m1"]);
    assert_eq!(second.removed, ["m4"]);
    assert_eq!(fake.lock().unwrap().windows.len(), 1, "no new round");

    // 503 with Retry-After on the way.
    fake.lock().unwrap().unavailable_once = Some("7");
    match graph.pull(&second.state, window()).await {
        Err(e @ ProviderError::RateLimited { .. }) => {
            assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
            assert!(e.is_transient());
        }
        other => panic!("{other:?}"),
    }

    // The delta token is forgotten by the server → a new round, applied as a full listing.
    fake.lock().unwrap().expired_before = u64::MAX;
    let third = graph.pull(&second.state, window()).await.unwrap();
    assert_eq!((third.full, third.resynced, third.changed.len()), (true, true, 4));
    assert_eq!(fake.lock().unwrap().windows.len(), 2);

    // A window asked for well past the stored one slides by a new round.
    let later = (utc("2027-05-01T00:00:00Z"), utc("2029-05-01T00:00:00Z"));
    let fourth = graph.pull(&third.state, later).await.unwrap();
    assert_eq!((fourth.full, fourth.resynced), (true, false));
    assert_eq!(fourth.state.window_end, Some(later.1));

    // A page link to another origin is not followed: the token would go with it.
    fake.lock().unwrap().base = "http://attacker.invalid".to_owned();
    let err = graph.pull(&GraphState::default(), window()).await.unwrap_err();
    assert!(matches!(err, ProviderError::Url(_)), "{err:?}");
}

#[tokio::test]
async fn graph_windows_zone_names_across_dst_all_day_free_cancelled_and_instances() {
    let (fake, url) = graph_server(100).await;
    {
        let mut g = fake.lock().unwrap();
        // US DST starts 14 March 2027 at 02:00: 09:00 Pacific is 17:00Z before, 16:00Z after.
        g.upsert(m_event("pst", "2027-03-13T09:00:00", "2027-03-13T10:00:00", "Pacific Standard Time"));
        g.upsert(m_event("pdt", "2027-03-15T09:00:00", "2027-03-15T10:00:00", "Pacific Standard Time"));
        // EU summer time starts 28 March 2027.
        g.upsert(m_event("cet", "2027-03-27T10:00:00", "2027-03-27T11:00:00", "W. Europe Standard Time"));
        g.upsert(m_event("cest", "2027-03-29T10:00:00", "2027-03-29T11:00:00", "W. Europe Standard Time"));
        g.upsert(m_event("bst", "2027-03-29T09:00:00", "2027-03-29T12:00:00", "GMT Standard Time"));
        let mut all_day = m_event("allday", "2027-04-10T00:00:00", "2027-04-12T00:00:00", "UTC");
        all_day["isAllDay"] = json!(true);
        g.upsert(all_day);
        let mut free = m_event("free", "2027-04-13T10:00:00", "2027-04-13T11:00:00", "UTC");
        free["showAs"] = json!("free");
        g.upsert(free);
        let mut cancelled = m_event("cancelled", "2027-04-14T10:00:00", "2027-04-14T11:00:00", "UTC");
        cancelled["isCancelled"] = json!(true);
        g.upsert(cancelled);
        // An exception of a weekly series: moved from 09:00 to 13:00 Pacific.
        let mut exception = m_event("exc", "2027-04-15T13:00:00", "2027-04-15T14:00:00", "Pacific Standard Time");
        exception["type"] = json!("exception");
        exception["seriesMasterId"] = json!("master");
        exception["originalStart"] = json!("2027-04-15T16:00:00Z");
        g.upsert(exception);
        let mut master = m_event("master", "2027-04-01T09:00:00", "2027-04-01T10:00:00", "Pacific Standard Time");
        master["type"] = json!("seriesMaster");
        g.upsert(master);
    }
    let pull = graph_client(&url).pull(&GraphState::default(), window()).await.unwrap();
    assert_eq!(pull.changed.len(), 9, "the series master is not an object of the view");
    let all = occurrences(&pull);
    let one = |uid: &str| {
        let found = find(&all, uid);
        assert_eq!(found.len(), 1, "{uid}");
        found[0].clone()
    };
    assert_eq!(one("uid-pst").start, utc("2027-03-13T17:00:00Z"));
    assert_eq!(one("uid-pdt").start, utc("2027-03-15T16:00:00Z"));
    assert_eq!(one("uid-pdt").zone.as_deref(), Some("America/Los_Angeles"));
    assert_eq!(one("uid-cet").start, utc("2027-03-27T09:00:00Z"));
    assert_eq!(one("uid-cest").start, utc("2027-03-29T08:00:00Z"));
    assert_eq!((one("uid-bst").start, one("uid-bst").end), (utc("2027-03-29T08:00:00Z"), utc("2027-03-29T11:00:00Z")));
    let all_day = one("uid-allday");
    assert!(all_day.all_day);
    assert_eq!((all_day.start, all_day.end), (utc("2027-04-10T00:00:00Z"), utc("2027-04-12T00:00:00Z")));
    assert!(one("uid-free").transparent);
    assert_eq!(one("uid-cancelled").status, EventStatus::Cancelled);
    let exception = one("uid-exc");
    assert_eq!(exception.recurrence_id, Some(utc("2027-04-15T16:00:00Z")));
    assert_eq!(exception.start, utc("2027-04-15T20:00:00Z"));
}

#[tokio::test]
async fn graph_push_create_with_transaction_id_and_412_conflicts() {
    let (fake, url) = graph_server(100).await;
    let graph = graph_client(&url);
    let ours = booking("bk_7", "Jones portraits", 0, "2026-11-30T09:00:00Z");
    let PushOutcome::Written { href: id, etag } = graph.push(&ours, None).await.unwrap() else { panic!() };
    // Retried create: Graph returns the event the first attempt made (same transactionId).
    let PushOutcome::Written { href: again, .. } = graph.push(&ours, None).await.unwrap() else { panic!() };
    assert_eq!(again, id);
    assert_eq!(fake.lock().unwrap().events.len(), 1, "one event, not two");
    let etag = etag.unwrap();

    // The supplier moves it in Outlook.
    {
        let mut g = fake.lock().unwrap();
        let mut theirs = g.events[&id].clone().unwrap();
        theirs["subject"] = json!("Jones portraits (client asked)");
        theirs["lastModifiedDateTime"] = json!("2026-12-01T12:00:00Z");
        g.upsert(theirs);
    }
    let known = GraphRef { id: id.clone(), etag: etag.clone() };
    let stale = booking("bk_7", "Jones portraits, long", 0, "2026-11-30T10:00:00Z");
    match graph.push(&stale, Some(&known)).await.unwrap() {
        PushOutcome::KeptTheirs(object) => {
            assert!(String::from_utf8(object.body).unwrap().contains("SUMMARY:Jones portraits (client asked)"));
        }
        other => panic!("{other:?}"),
    }
    let newer = booking("bk_7", "Jones portraits, rebooked", 1, "2026-12-01T13:00:00Z");
    let PushOutcome::Written { href, .. } = graph.push(&newer, Some(&known)).await.unwrap() else { panic!() };
    assert_eq!(href, id);
    assert_eq!(fake.lock().unwrap().events[&id].as_ref().unwrap()["subject"], "Jones portraits, rebooked");

    // Same content again with a stale ETag: nothing to write.
    assert!(matches!(graph.push(&newer, Some(&known)).await.unwrap(), PushOutcome::Unchanged { .. }));
    let current = fake.lock().unwrap().events[&id].clone().unwrap()["@odata.etag"].as_str().unwrap().to_owned();
    assert_eq!(graph.delete(&id, Some(&current)).await.unwrap(), fleet_calendar::caldav::WriteOutcome::Written(None));
    assert!(fake.lock().unwrap().events[&id].is_none());
}
