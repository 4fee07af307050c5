//! A Google Calendar source end to end: a fake Google Calendar v3 server (127.0.0.1:0, its JSON),
//! the `calendar.sync` handler, PostgreSQL. The first sync is a full listing; a deletion comes
//! back incrementally (applied as a change, not as a listing that empties the rest); a booking in
//! another source (an `.ics` feed) double-books the Google one and is resolved when the Google
//! event goes; an expired sync token with an account that suddenly lists nothing is
//! quarantined by the mass-deletion guard, not applied.

use super::KEY;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use fleet_accounts::secrets::SecretBox;
use fleet_calendar::jobs::CalendarSyncHandler;
use fleet_tests::TestDb;
use serde_json::{Value, json};
use sqlx::Row;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct FakeGoogle {
    /// id → (change number, event JSON).
    events: BTreeMap<String, (u64, Value)>,
    clock: u64,
    expired_before: u64,
    rate_limited: bool,
}

impl FakeGoogle {
    fn put(&mut self, mut event: Value) {
        self.clock += 1;
        event["etag"] = json!(format!("\"{}\"", self.clock));
        self.events.insert(event["id"].as_str().unwrap().to_owned(), (self.clock, event));
    }
}

type Shared = Arc<Mutex<FakeGoogle>>;

const FEED: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Fleet//it//EN\r\nBEGIN:VEVENT\r\nUID:feed-jones\r\n\
DTSTAMP:20261201T000000Z\r\nDTSTART;TZID=Europe/London:20270612T210000\r\nDTEND;TZID=Europe/London:20270612T230000\r\n\
SUMMARY:jones\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\nUID:feed-class-slot\r\nDTSTAMP:20261201T000000Z\r\n\
DTSTART;TZID=Europe/London:20270320T100000\r\nDTEND;TZID=Europe/London:20270320T110000\r\nSUMMARY:slot\r\nEND:VEVENT\r\n\
END:VCALENDAR\r\n";

async fn fake(State(state): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: String) -> Response {
    if uri.path() == "/feed.ics" {
        return ([("content-type", "text/calendar")], FEED).into_response();
    }
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer ya29.e2e") {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    assert_eq!(uri.path(), "/calendar/v3/calendars/studio/events");
    let mut g = state.lock().unwrap();
    if method == Method::POST {
        // events.insert with a client-chosen id: 409 when it exists.
        let mut event: Value = serde_json::from_str(&body).unwrap();
        let id = event["id"].as_str().unwrap().to_owned();
        if g.events.contains_key(&id) {
            return StatusCode::CONFLICT.into_response();
        }
        event["iCalUID"] = json!(format!("{id}@google.com"));
        event["updated"] = json!("2026-12-02T10:00:00.000Z");
        g.put(event);
        return Json(g.events[&id].1.clone()).into_response();
    }
    if std::mem::take(&mut g.rate_limited) {
        return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "30")], "").into_response();
    }
    let query: BTreeMap<String, String> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    let since = match query.get("syncToken") {
        Some(token) => {
            let n: u64 = token.trim_start_matches("tok").parse().unwrap();
            if n < g.expired_before {
                return (
                    StatusCode::GONE,
                    Json(json!({"error": {"code": 410, "errors": [{"reason": "fullSyncRequired"}]}})),
                )
                    .into_response();
            }
            n
        }
        None => 0,
    };
    let items: Vec<Value> = g.events.values().filter(|(n, _)| *n > since).map(|(_, e)| e.clone()).collect();
    Json(json!({"items": items, "nextSyncToken": format!("tok{}", g.clock)})).into_response()
}

fn timed(id: &str, start: &str, end: &str) -> Value {
    json!({
        "id": id, "status": "confirmed", "iCalUID": format!("{id}@google.com"), "summary": id, "sequence": 0,
        "updated": "2026-12-01T10:00:00.000Z",
        "start": {"dateTime": start, "timeZone": "Europe/London"}, "end": {"dateTime": end, "timeZone": "Europe/London"},
    })
}

/// A calendar source of tenant `t1` (the token sealed as the API would).
pub(crate) async fn source(db: &TestDb, secrets: &SecretBox, kind: &str, url: &str, token: Option<&str>) -> String {
    let id = format!("cal_{}", uuid::Uuid::now_v7().simple());
    sqlx::query("INSERT INTO calendar_sources (id, tenant, supplier, kind, url, secret) VALUES ($1, 't1', 'studio-9', $2, $3, $4)")
        .bind(&id)
        .bind(kind)
        .bind(url)
        .bind(token.map(|t| secrets.seal(&id, t).unwrap()))
        .execute(&db.pool)
        .await
        .unwrap();
    id
}

async fn occurrences(db: &TestDb, source: &str) -> Vec<(String, String, String)> {
    sqlx::query("SELECT uid, start_at, status FROM calendar_occurrences WHERE source_id = $1 ORDER BY start_at, uid")
        .bind(source)
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get::<String, _>("uid"),
                r.get::<chrono::DateTime<chrono::Utc>, _>("start_at").format("%Y-%m-%dT%H:%MZ").to_string(),
                r.get::<String, _>("status"),
            )
        })
        .collect()
}

async fn open_conflicts(db: &TestDb) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> =
        sqlx::query("SELECT a_key, b_key FROM calendar_conflicts WHERE resolved_at IS NULL")
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| {
                let a = r.get::<String, _>("a_key").split('|').next().unwrap().to_owned();
                let b = r.get::<String, _>("b_key").split('|').next().unwrap().to_owned();
                (a.clone().min(b.clone()), a.max(b))
            })
            .collect();
    pairs.sort();
    pairs
}

fn occ(uid: &str, start: &str, status: &str) -> (String, String, String) {
    (uid.to_owned(), start.to_owned(), status.to_owned())
}

#[tokio::test]
async fn a_google_source_syncs_incrementally_double_books_a_feed_and_a_mass_deletion_is_quarantined() {
    let db = TestDb::new().await;
    let state: Shared = Arc::default();
    {
        let mut g = state.lock().unwrap();
        g.put(timed("wedding", "2027-06-12T14:00:00+01:00", "2027-06-12T22:00:00+01:00"));
        // Saturday classes 10:00 London from 13 March (GMT) across 28 March (BST); 20 March cancelled.
        let mut classes = timed("classes", "2027-03-13T10:00:00Z", "2027-03-13T11:00:00Z");
        classes["recurrence"] = json!(["RRULE:FREQ=WEEKLY;COUNT=4"]);
        g.put(classes);
        g.put(json!({
            "id": "classes_20270320T100000Z", "status": "cancelled", "recurringEventId": "classes",
            "originalStartTime": {"dateTime": "2027-03-20T10:00:00Z", "timeZone": "Europe/London"},
        }));
        g.put(timed("portrait", "2027-07-01T09:00:00+01:00", "2027-07-01T10:00:00+01:00"));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new().fallback(fake).with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    sqlx::query("INSERT INTO calendar_suppliers (tenant, supplier, all_day_busy, time_zone) VALUES ('t1', 'studio-9', false, 'Europe/London')")
        .execute(&db.pool)
        .await
        .unwrap();
    let secrets = SecretBox::new(KEY).unwrap();
    let google =
        source(&db, &secrets, "google", &format!("{base}/calendar/v3/calendars/studio"), Some("ya29.e2e")).await;
    let feed = source(&db, &secrets, "ics", &format!("{base}/feed.ics"), None).await;
    let handler =
        CalendarSyncHandler::new(db.pool.clone(), Some(secrets)).with_allowed(vec!["127.0.0.0/8".parse().unwrap()]);

    let report = handler.sync_source(&google).await.unwrap();
    assert_eq!((report.mode.as_str(), report.fetched, report.events_written), ("initial", 4, 4), "{report:?}");
    assert_eq!(
        occurrences(&db, &google).await,
        [
            occ("classes@google.com", "2027-03-13T10:00Z", "confirmed"),
            occ("classes@google.com", "2027-03-20T10:00Z", "cancelled"),
            occ("classes@google.com", "2027-03-27T10:00Z", "confirmed"),
            occ("classes@google.com", "2027-04-03T09:00Z", "confirmed"), // 10:00 BST
            occ("wedding@google.com", "2027-06-12T13:00Z", "confirmed"),
            occ("portrait@google.com", "2027-07-01T08:00Z", "confirmed"),
        ]
    );
    let token: Value = sqlx::query_scalar("SELECT state FROM calendar_sources WHERE id = $1")
        .bind(&google)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(token["sync_token"], "tok4");

    // The feed's 21:00 booking overlaps the wedding; its 20 March slot is the cancelled class.
    let report = handler.sync_source(&feed).await.unwrap();
    assert_eq!(report.conflicts_detected, 1, "{report:?}");
    assert_eq!(open_conflicts(&db).await, [("feed-jones".to_owned(), "wedding@google.com".to_owned())]);

    // 429 with Retry-After: an error for this attempt, nothing applied.
    state.lock().unwrap().rate_limited = true;
    let err = handler.sync_source(&google).await.unwrap_err();
    assert!(err.contains("rate limited"), "{err}");

    // The wedding is deleted in Google: only that change comes back, and it resolves the conflict.
    {
        let mut g = state.lock().unwrap();
        let mut gone = g.events["wedding"].1.clone();
        gone["status"] = json!("cancelled");
        g.put(gone);
    }
    let report = handler.sync_source(&google).await.unwrap();
    assert_eq!((report.mode.as_str(), report.fetched, report.events_deleted), ("incremental", 0, 1), "{report:?}");
    assert_eq!(report.conflicts_resolved, 1);
    assert!(open_conflicts(&db).await.is_empty());
    assert_eq!(occurrences(&db, &google).await.len(), 5, "the other events stay");

    // The token expires and the account suddenly lists nothing: a full listing that would
    // delete everything is quarantined, not applied.
    {
        let mut g = state.lock().unwrap();
        g.expired_before = u64::MAX;
        g.events.clear();
    }
    let report = handler.sync_source(&google).await.unwrap();
    assert!(report.quarantined.as_deref().unwrap_or_default().contains("would delete"), "{report:?}");
    assert_eq!(occurrences(&db, &google).await.len(), 5, "nothing deleted");

    // The account lists its events again (a fresh full listing): applied as a listing.
    {
        let mut g = state.lock().unwrap();
        g.put(timed("portrait", "2027-07-01T11:00:00+01:00", "2027-07-01T12:00:00+01:00"));
        let mut classes = timed("classes", "2027-03-13T10:00:00Z", "2027-03-13T11:00:00Z");
        classes["recurrence"] = json!(["RRULE:FREQ=WEEKLY;COUNT=4"]);
        g.put(classes);
    }
    let report = handler.sync_source(&google).await.unwrap();
    assert_eq!(report.mode, "resync", "{report:?}");
    assert!(report.quarantined.is_none());
    // The cancelled-instance object is no longer listed: removed, so 20 March is back.
    let now = occurrences(&db, &google).await;
    assert_eq!(now.len(), 5, "{now:?}");
    assert!(now.contains(&occ("classes@google.com", "2027-03-20T10:00Z", "confirmed")), "{now:?}");
    assert!(now.contains(&occ("portrait@google.com", "2027-07-01T10:00Z", "confirmed")), "{now:?}");

    // A moved instance, then the whole series deleted in Google (which lists only the master
    // again): the stored exception goes with it instead of staying behind as a busy orphan.
    {
        let mut g = state.lock().unwrap();
        g.expired_before = 0;
        let mut moved = timed("classes_20270327T100000Z", "2027-03-27T12:00:00Z", "2027-03-27T13:00:00Z");
        moved["iCalUID"] = json!("classes@google.com");
        moved["recurringEventId"] = json!("classes");
        moved["originalStartTime"] = json!({"dateTime": "2027-03-27T10:00:00Z", "timeZone": "Europe/London"});
        g.put(moved);
    }
    let report = handler.sync_source(&google).await.unwrap();
    assert_eq!((report.mode.as_str(), report.fetched), ("incremental", 1), "{report:?}");
    assert!(occurrences(&db, &google).await.contains(&occ("classes@google.com", "2027-03-27T12:00Z", "confirmed")));
    {
        let mut g = state.lock().unwrap();
        let mut gone = g.events["classes"].1.clone();
        gone["status"] = json!("cancelled");
        g.put(gone);
    }
    let report = handler.sync_source(&google).await.unwrap();
    assert_eq!((report.mode.as_str(), report.events_deleted), ("incremental", 2), "{report:?}");
    assert_eq!(occurrences(&db, &google).await, [occ("portrait@google.com", "2027-07-01T10:00Z", "confirmed")]);
    db.drop_db().await;
}

/// A booking pushed to a Google calendar: written through events.insert (a client-chosen id
/// from the booking), a sync of the source is asked for at once, and that sync brings the
/// provider's version into Fleet's copy, where it double-books the feed's event.
#[tokio::test]
async fn a_booking_pushed_to_google_is_synced_back_at_once() {
    let db = TestDb::new().await;
    let env = fleet_tests::TestEnv::new().await;
    let state: Shared = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new().fallback(fake).with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let secrets = SecretBox::new(KEY).unwrap();
    let google =
        source(&db, &secrets, "google", &format!("{base}/calendar/v3/calendars/studio"), Some("ya29.e2e")).await;
    let feed = source(&db, &secrets, "ics", &format!("{base}/feed.ics"), None).await;
    let relay = fleet_accounts::outbox::Relay::new(db.pool.clone(), env.client.clone());
    let handler = CalendarSyncHandler::new(db.pool.clone(), Some(secrets))
        .with_allowed(vec!["127.0.0.0/8".parse().unwrap()])
        .with_relay(relay);
    handler.sync_source(&feed).await.unwrap();
    handler.sync_source(&google).await.unwrap();
    sqlx::query(
        "INSERT INTO calendar_bookings (tenant, id, supplier, target_source, summary, start_at, end_at, version)
         VALUES ('t1', 'bk-g1', 'studio-9', $1, 'Jones reception', '2027-06-12T19:00:00Z', '2027-06-12T21:00:00Z', 1)",
    )
    .bind(&google)
    .execute(&db.pool)
    .await
    .unwrap();

    let result = handler.push_handler().push("t1", "bk-g1").await.unwrap();
    assert_eq!(result, fleet_calendar::jobs::PushResult::Pushed);
    let id = fleet_calendar::google::event_id_for("t1.bk-g1");
    assert!(state.lock().unwrap().events.contains_key(&id), "inserted under the booking's id");
    let row = sqlx::query("SELECT push_state, remote_href FROM calendar_bookings WHERE id = 'bk-g1'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>("push_state"), "pushed");
    assert_eq!(row.get::<Option<String>, _>("remote_href"), Some(id.clone()));
    // A retried push of the same version writes nothing more.
    assert_eq!(
        handler.push_handler().push("t1", "bk-g1").await.unwrap(),
        fleet_calendar::jobs::PushResult::AlreadyPushed
    );

    // The sync asked for is on the calendar queue; running it brings the booking in.
    assert_eq!(env.client.stats("calendar").await.unwrap().ready, 1);
    let report = handler.sync_source(&google).await.unwrap();
    assert_eq!(report.events_written, 1, "{report:?}");
    assert_eq!(open_conflicts(&db).await, [("feed-jones".to_owned(), format!("{id}@google.com"))]);
    db.drop_db().await;
    env.cleanup().await;
}
