//! Calendar sync end to end: a real Radicale (`scripts/radicale.sh`), a PostgreSQL database
//! per test, a calendar collection per test, and the `calendar.sync` handler. After each step
//! (create, change, move, delete, a recurring series across a DST change with an EXDATE and a
//! moved instance) the stored occurrences and conflicts are checked, and every conflict change
//! is in the outbox exactly once.

use fleet_accounts::secrets::SecretBox;
use fleet_calendar::caldav::{CalDavClient, ClientOptions, Precondition};
use fleet_calendar::jobs::CalendarSyncHandler;
use fleet_tests::TestDb;
use sqlx::Row;

mod bench;
mod bookings;
mod feeds;
mod oauth;
mod providers;
mod push;
mod push_channels;
mod release;

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn caldav_base() -> String {
    std::env::var("FLEET_TEST_CALDAV_URL").unwrap_or_else(|_| "http://127.0.0.1:5232".to_owned())
}

struct Setup {
    db: TestDb,
    cal: CalDavClient,
    handler: CalendarSyncHandler,
    source: String,
}

async fn setup(supplier: &str) -> Setup {
    setup_at(supplier, &format!("it-{}", uuid::Uuid::now_v7())).await
}

/// A database and a source on the collection `collection` of the test user (created when
/// missing, kept when it exists).
async fn setup_at(supplier: &str, collection: &str) -> Setup {
    let db = TestDb::new().await;
    let url = format!("{}/fleet/{collection}/", caldav_base().trim_end_matches('/'));
    let cal = CalDavClient::new(&url, Some("fleet".into()), Some("fleet".to_owned().into()), ClientOptions::default())
        .unwrap();
    match cal.make_calendar().await {
        Ok(()) => {}
        // Radicale answers MKCALENDAR on an existing collection with 409: a kept one is fine.
        Err(fleet_calendar::caldav::CalDavError::Status(s)) if s.as_u16() == 409 => {}
        Err(e) => panic!("Radicale at {} is not reachable ({e}): run scripts/radicale.sh", caldav_base()),
    }
    let secrets = SecretBox::new(KEY).unwrap();
    let source = format!("cal_{}", uuid::Uuid::now_v7().simple());
    sqlx::query("INSERT INTO calendar_suppliers (tenant, supplier, all_day_busy, time_zone) VALUES ('t1', $1, false, 'Europe/London')")
        .bind(supplier)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO calendar_sources (id, tenant, supplier, kind, url, username, secret) VALUES ($1, 't1', $2, 'caldav', $3, 'fleet', $4)",
    )
    .bind(&source)
    .bind(supplier)
    .bind(&url)
    .bind(secrets.seal(&source, "fleet").unwrap())
    .execute(&db.pool)
    .await
    .unwrap();
    // Radicale runs on loopback: allowed here, refused by a default handler (the SSRF guard).
    let handler =
        CalendarSyncHandler::new(db.pool.clone(), Some(secrets)).with_allowed(vec!["127.0.0.0/8".parse().unwrap()]);
    Setup { db, cal, handler, source }
}

fn vevent(uid: &str, seq: i64, start: &str, end: &str, extra: &str) -> String {
    format!(
        "BEGIN:VEVENT\r\nUID:{uid}\r\nSEQUENCE:{seq}\r\nDTSTAMP:20261201T000000Z\r\nDTSTART;TZID=Europe/London:{start}\r\n\
         DTEND;TZID=Europe/London:{end}\r\nSUMMARY:{uid}\r\n{extra}END:VEVENT\r\n"
    )
}

fn wrap(events: &str) -> String {
    format!("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Fleet//it//EN\r\n{events}END:VCALENDAR\r\n")
}

impl Setup {
    async fn put(&self, name: &str, body: &str) {
        let href = format!("{}{name}.ics", self.cal.collection().path());
        let precondition = match self.cal.get(&href).await.unwrap() {
            Some(o) => Precondition::Match(o.etag.unwrap()),
            None => Precondition::Create,
        };
        self.cal.put(&href, body.as_bytes(), &precondition).await.unwrap();
    }

    async fn delete(&self, name: &str) {
        self.cal.delete(&format!("{}{name}.ics", self.cal.collection().path()), None).await.unwrap();
    }

    async fn sync(&self) -> fleet_calendar::jobs::SyncReport {
        self.handler.sync_source(&self.source).await.unwrap()
    }

    /// (uid, local start, local end, status) of stored occurrences, by start.
    async fn occurrences(&self) -> Vec<(String, String, String, String)> {
        sqlx::query("SELECT uid, start_local, end_local, status FROM calendar_occurrences WHERE source_id = $1 ORDER BY start_at, uid")
            .bind(&self.source)
            .fetch_all(&self.db.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.get::<String, _>("uid"),
                    r.get::<chrono::NaiveDateTime, _>("start_local").format("%Y-%m-%d %H:%M").to_string(),
                    r.get::<chrono::NaiveDateTime, _>("end_local").format("%H:%M").to_string(),
                    r.get::<String, _>("status"),
                )
            })
            .collect()
    }

    /// Open conflicts as sorted UID pairs.
    async fn conflicts(&self) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> =
            sqlx::query("SELECT a_key, b_key FROM calendar_conflicts WHERE resolved_at IS NULL")
                .fetch_all(&self.db.pool)
                .await
                .unwrap()
                .iter()
                .map(|r| {
                    let a: String = r.get::<String, _>("a_key").split('|').next().unwrap().to_owned();
                    let b: String = r.get::<String, _>("b_key").split('|').next().unwrap().to_owned();
                    (a.clone().min(b.clone()), a.max(b))
                })
                .collect();
        pairs.sort();
        pairs
    }

    async fn outbox(&self) -> Vec<String> {
        sqlx::query_scalar("SELECT event_type FROM calendar_outbox ORDER BY id").fetch_all(&self.db.pool).await.unwrap()
    }

    async fn finish(self) {
        let _ = self.cal.delete_collection().await;
        self.db.drop_db().await;
    }
}

fn occ(uid: &str, start: &str, end: &str, status: &str) -> (String, String, String, String) {
    (uid.to_owned(), start.to_owned(), end.to_owned(), status.to_owned())
}

#[tokio::test]
async fn create_change_move_delete_with_conflicts_emitted_once() {
    let s = setup("photographer-1").await;
    s.put("smith", &wrap(&vevent("smith", 0, "20270612T120000", "20270612T200000", ""))).await;
    s.put("jones", &wrap(&vevent("jones", 0, "20270612T200000", "20270612T230000", ""))).await;
    let report = s.sync().await;
    assert_eq!(report.events_written, 2);
    assert_eq!(
        s.occurrences().await,
        [
            occ("smith", "2027-06-12 12:00", "20:00", "confirmed"),
            occ("jones", "2027-06-12 20:00", "23:00", "confirmed")
        ]
    );
    assert!(s.conflicts().await.is_empty(), "touching is not a conflict");

    // Change: Jones starts an hour earlier → overlaps Smith.
    s.put("jones", &wrap(&vevent("jones", 1, "20270612T190000", "20270612T230000", ""))).await;
    let report = s.sync().await;
    assert_eq!((report.mode.as_str(), report.events_written, report.conflicts_detected), ("incremental", 1, 1));
    assert_eq!(s.conflicts().await, [("jones".to_owned(), "smith".to_owned())]);

    // Nothing changed: nothing written, no second event.
    let report = s.sync().await;
    assert_eq!((report.events_written, report.conflicts_detected, report.occurrences_written), (0, 0, 0));
    assert_eq!(s.outbox().await, ["calendar.conflict.detected"]);

    // Move: Smith's wedding moves to another resource (delete + create under a new href).
    s.delete("smith").await;
    s.put("smith-moved", &wrap(&vevent("smith", 2, "20270613T120000", "20270613T200000", ""))).await;
    let report = s.sync().await;
    assert_eq!(report.events_deleted, 0, "a move is not a deletion");
    assert_eq!(report.conflicts_resolved, 1);
    assert_eq!(
        s.occurrences().await,
        [
            occ("jones", "2027-06-12 19:00", "23:00", "confirmed"),
            occ("smith", "2027-06-13 12:00", "20:00", "confirmed")
        ]
    );
    assert!(s.conflicts().await.is_empty());
    assert_eq!(s.outbox().await, ["calendar.conflict.detected", "calendar.conflict.resolved"]);

    // Delete.
    s.put("extra-1", &wrap(&vevent("extra-1", 0, "20270701T100000", "20270701T110000", ""))).await;
    s.put("extra-2", &wrap(&vevent("extra-2", 0, "20270702T100000", "20270702T110000", ""))).await;
    s.sync().await;
    s.delete("jones").await;
    let report = s.sync().await;
    assert_eq!(report.events_deleted, 1);
    assert_eq!(s.occurrences().await.len(), 3);

    // Mass deletion: the collection emptied → quarantined, nothing deleted.
    for name in ["smith-moved", "extra-1", "extra-2"] {
        s.delete(name).await;
    }
    let report = s.sync().await;
    assert!(report.quarantined.is_some(), "{report:?}");
    assert_eq!(s.occurrences().await.len(), 3);
    let quarantined: Option<String> = sqlx::query_scalar("SELECT quarantined FROM calendar_sources WHERE id = $1")
        .bind(&s.source)
        .fetch_one(&s.db.pool)
        .await
        .unwrap();
    assert!(quarantined.unwrap().contains("would delete 3 of 3"));
    s.finish().await;
}

#[tokio::test]
async fn recurring_series_across_dst_with_exdate_moved_and_cancelled_instances() {
    let s = setup("photographer-2").await;
    // Saturdays 14:00-22:00 London from 13 March 2027 (GMT) across 28 March (BST), six weeks.
    let master = vevent(
        "season",
        0,
        "20270313T140000",
        "20270313T220000",
        "RRULE:FREQ=WEEKLY;COUNT=6\r\nEXDATE;TZID=Europe/London:20270320T140000\r\n",
    );
    // 3 April moved to the morning, RECURRENCE-ID written in UTC (13:00Z = 14:00 BST).
    let moved = "BEGIN:VEVENT\r\nUID:season\r\nSEQUENCE:0\r\nDTSTAMP:20261201T000000Z\r\nRECURRENCE-ID:20270403T130000Z\r\n\
                 DTSTART;TZID=America/New_York:20270403T040000\r\nDTEND;TZID=America/New_York:20270403T080000\r\nSUMMARY:moved\r\nEND:VEVENT\r\n";
    let cancelled = "BEGIN:VEVENT\r\nUID:season\r\nSEQUENCE:0\r\nDTSTAMP:20261201T000000Z\r\nRECURRENCE-ID;TZID=Europe/London:20270410T140000\r\n\
                     DTSTART;TZID=Europe/London:20270410T140000\r\nDTEND;TZID=Europe/London:20270410T220000\r\nSTATUS:CANCELLED\r\nEND:VEVENT\r\n";
    s.put("season", &wrap(&format!("{master}{moved}{cancelled}"))).await;
    // A second booking on 10 April (the cancelled slot: no conflict) and one on 27 March (conflict).
    s.put("other-a", &wrap(&vevent("other-a", 0, "20270410T150000", "20270410T170000", ""))).await;
    s.put("other-b", &wrap(&vevent("other-b", 0, "20270327T210000", "20270327T230000", ""))).await;
    s.sync().await;
    assert_eq!(
        s.occurrences().await,
        [
            occ("season", "2027-03-13 14:00", "22:00", "confirmed"),
            occ("season", "2027-03-27 14:00", "22:00", "confirmed"),
            occ("other-b", "2027-03-27 21:00", "23:00", "confirmed"),
            occ("season", "2027-04-03 04:00", "08:00", "confirmed"),
            occ("season", "2027-04-10 14:00", "22:00", "cancelled"),
            occ("other-a", "2027-04-10 15:00", "17:00", "confirmed"),
            occ("season", "2027-04-17 14:00", "22:00", "confirmed"),
        ]
    );
    // The BST instances are at 13:00Z, the GMT ones at 14:00Z.
    let starts: Vec<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT start_at FROM calendar_occurrences WHERE uid = 'season' AND status = 'confirmed' ORDER BY start_at",
    )
    .fetch_all(&s.db.pool)
    .await
    .unwrap();
    let hours: Vec<u32> = starts.iter().map(chrono::Timelike::hour).collect();
    assert_eq!(hours, [14, 14, 8, 13]);
    assert_eq!(s.conflicts().await, [("other-b".to_owned(), "season".to_owned())]);
    s.finish().await;
}

mod api {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use fleet_scheduler::api::{ApiState, app, auth};
    use fleet_tests::TestEnv;
    use serde_json::{Value, json};
    use tower::ServiceExt;

    pub(crate) async fn call(
        router: &axum::Router,
        key: &str,
        method: &str,
        uri: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {key}"))
            .body(body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty))
            .unwrap();
        let res = router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 22).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Sources through the API; a Radicale collection read as an `.ics` feed (conditional GET);
    /// an HTML login page instead of a feed is quarantined, never applied as "all deleted".
    #[tokio::test]
    async fn feed_sources_through_the_api_and_a_login_page_is_quarantined() {
        let s = setup("photographer-3").await;
        let env = TestEnv::new().await;
        let key = auth::create_api_key(&s.db.pool, "t1", "test", &[auth::Role::Enqueue]).await.unwrap();
        let router = app(
            ApiState::new(env.client.clone(), s.db.pool.clone())
                .with_tenancy(fleet_scheduler::tenancy::TenancyConfig::for_tests()),
            1 << 20,
        );
        s.put("feed-a", &wrap(&vevent("feed-a", 0, "20270801T100000", "20270801T120000", ""))).await;
        s.put("feed-b", &wrap(&vevent("feed-b", 0, "20270801T110000", "20270801T130000", ""))).await;

        let url = s.cal.collection().to_string();
        let (status, created) = call(
            &router,
            &key,
            "POST",
            "/v1/calendar/sources",
            Some(json!({"supplier": "photographer-3", "kind": "ics", "url": url, "username": "fleet"})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let feed = created["id"].as_str().unwrap().to_owned();
        // The password is sealed by whoever holds the key (the API with FLEET_SECRETS_KEY set).
        let sealed = SecretBox::new(KEY).unwrap().seal(&feed, "fleet").unwrap();
        sqlx::query("UPDATE calendar_sources SET secret = $2 WHERE id = $1")
            .bind(&feed)
            .bind(sealed)
            .execute(&s.db.pool)
            .await
            .unwrap();
        let (status, _) = call(&router, &key, "POST", "/v1/calendar/sources/nope/sync", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, queued) = call(&router, &key, "POST", &format!("/v1/calendar/sources/{feed}/sync"), None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{queued}");

        let report = s.handler.sync_source(&feed).await.unwrap();
        assert_eq!((report.mode.as_str(), report.events_written, report.conflicts_detected), ("feed", 2, 1));
        let again = s.handler.sync_source(&feed).await.unwrap();
        assert!(matches!(again.mode.as_str(), "not_modified" | "feed"), "{again:?}");
        assert_eq!(again.events_written, 0);

        let (status, occurrences) = call(
            &router,
            &key,
            "GET",
            "/v1/calendar/suppliers/photographer-3/occurrences?from=2027-01-01T00:00:00Z&to=2028-01-01T00:00:00Z",
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let uids: Vec<&str> = occurrences.as_array().unwrap().iter().map(|o| o["uid"].as_str().unwrap()).collect();
        assert_eq!(uids, ["feed-a", "feed-b"]);
        assert_eq!(occurrences[0]["start_local"], "2027-08-01T10:00:00");
        assert_eq!(occurrences[0]["zone"], "Europe/London");
        let (_, conflicts) = call(&router, &key, "GET", "/v1/calendar/suppliers/photographer-3/conflicts", None).await;
        assert_eq!(conflicts.as_array().unwrap().len(), 1, "{conflicts}");

        // The feed URL starts answering with an HTML page (Radicale's web UI stands in for a login page).
        let login = format!("{}/.web/", caldav_base().trim_end_matches('/'));
        sqlx::query("UPDATE calendar_sources SET url = $2, state = '{}' WHERE id = $1")
            .bind(&feed)
            .bind(&login)
            .execute(&s.db.pool)
            .await
            .unwrap();
        let report = s.handler.sync_source(&feed).await.unwrap();
        assert!(report.quarantined.as_deref().unwrap_or_default().contains("HTML"), "{report:?}");
        let (_, sources) = call(&router, &key, "GET", "/v1/calendar/sources?supplier=photographer-3", None).await;
        let view = sources.as_array().unwrap().iter().find(|v| v["id"] == feed.as_str()).unwrap().clone();
        assert!(view["quarantined"].as_str().unwrap().contains("HTML"));
        assert!(view.get("secret").is_none());
        let (_, occurrences) = call(
            &router,
            &key,
            "GET",
            "/v1/calendar/suppliers/photographer-3/occurrences?from=2027-01-01T00:00:00Z&to=2028-01-01T00:00:00Z",
            None,
        )
        .await;
        assert_eq!(occurrences.as_array().unwrap().len(), 2, "nothing deleted");

        let (status, _) = call(&router, &key, "DELETE", &format!("/v1/calendar/sources/{feed}"), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (_, conflicts) = call(&router, &key, "GET", "/v1/calendar/suppliers/photographer-3/conflicts", None).await;
        assert!(conflicts.as_array().unwrap().is_empty());
        env.cleanup().await;
        s.finish().await;
    }
}
