//! `calendar.sync` and `calendar.push`, one attempt at a time through
//! `fleet_kit::testing`: a database of each test's own, feeds served on a loopback port.

use axum::http::{HeaderMap, StatusCode};
use chrono::{TimeDelta, Utc};
use fleet_calendar::jobs::CalendarSyncHandler;
use fleet_jobs::catalogue::{CalendarPush, CalendarSync};
use fleet_kit::testing::{TestDb, TestJob, assert_give_up, unreachable_database};
use sqlx::PgPool;
use std::sync::{Arc, Mutex};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

fn handler(db: &PgPool) -> CalendarSyncHandler {
    CalendarSyncHandler::new(db.clone(), None).with_allowed(vec!["127.0.0.0/8".parse().unwrap()])
}

async fn source(db: &PgPool, id: &str, tenant: &str, kind: &str, url: &str) {
    sqlx::query("INSERT INTO calendar_sources (id, tenant, supplier, kind, url) VALUES ($1, $2, 'sup', $3, $4)")
        .bind(id)
        .bind(tenant)
        .bind(kind)
        .bind(url)
        .execute(db)
        .await
        .unwrap();
}

async fn count(db: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.unwrap()
}

/// Two bookings that overlap tomorrow: a double booking.
fn feed() -> String {
    let day = (Utc::now() + TimeDelta::days(1)).format("%Y%m%d").to_string();
    let event = |uid: &str, from: &str, to: &str| {
        format!(
            "BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20261201T000000Z\r\nDTSTART:{day}T{from}00Z\r\n\
             DTEND:{day}T{to}00Z\r\nSUMMARY:{uid}\r\nEND:VEVENT\r\n"
        )
    };
    format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\n{}{}END:VCALENDAR\r\n",
        event("shoot@test", "1000", "1200"),
        event("fitting@test", "1100", "1300")
    )
}

/// Serves `body` at `/feed.ics` with ETag `"v1"`, answering 304 to `If-None-Match: "v1"`.
/// Returns the feed's URL and the `If-None-Match` of each request.
async fn feed_server(body: String) -> (String, Arc<Mutex<Vec<Option<String>>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/feed.ics",
        axum::routing::get(move |headers: HeaderMap| {
            let (log, body) = (log.clone(), body.clone());
            async move {
                let validator = headers.get("if-none-match").and_then(|v| v.to_str().ok()).map(str::to_owned);
                log.lock().unwrap().push(validator.clone());
                let mut out = HeaderMap::new();
                out.insert("etag", "\"v1\"".parse().unwrap());
                out.insert("content-type", "text/calendar".parse().unwrap());
                if validator.as_deref() == Some("\"v1\"") {
                    (StatusCode::NOT_MODIFIED, out, String::new())
                } else {
                    (StatusCode::OK, out, body)
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/feed.ics"), seen)
}

#[tokio::test]
async fn a_source_of_another_tenant_is_not_found_and_not_fetched() {
    let db = TestDb::new(&MIGRATOR).await;
    let (url, seen) = feed_server(feed()).await;
    source(&db.pool, "src_1", "t2", "ics", &url).await;

    let out = TestJob::new().tenant("t1").perform(&handler(&db.pool), CalendarSync { source_id: "src_1".into() }).await;
    assert_eq!(assert_give_up(&out), "calendar source src_1 not found", "the same words as a missing source");
    assert!(seen.lock().unwrap().is_empty(), "the other tenant's feed was not fetched");
    assert_eq!(count(&db.pool, "SELECT count(*) FROM calendar_sources WHERE last_sync_at IS NULL").await, 1);
    db.drop_db().await;
}

#[tokio::test]
async fn a_feed_is_synced_into_events_occurrences_and_a_double_booking_then_fetched_conditionally() {
    let db = TestDb::new(&MIGRATOR).await;
    let (url, seen) = feed_server(feed()).await;
    source(&db.pool, "src_1", "t1", "ics", &url).await;
    let sync = handler(&db.pool);
    let job = TestJob::new().tenant("t1");

    job.perform(&sync, CalendarSync { source_id: "src_1".into() }).await.unwrap();
    assert_eq!(count(&db.pool, "SELECT count(*) FROM calendar_events WHERE source_id = 'src_1'").await, 2);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM calendar_occurrences WHERE tenant = 't1'").await, 2);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM calendar_conflicts WHERE resolved_at IS NULL").await, 1);
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM calendar_outbox WHERE event_type = 'calendar.conflict.detected'").await,
        1,
        "the double booking is announced once"
    );

    // The next sync asks with the feed's ETag; a 304 changes nothing.
    job.perform(&sync, CalendarSync { source_id: "src_1".into() }).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), [None, Some("\"v1\"".to_owned())]);
    let mode: String = sqlx::query_scalar("SELECT last_report->>'mode' FROM calendar_sources WHERE id = 'src_1'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(mode, "feed", "the report of the last applied fetch stays");
    assert_eq!(count(&db.pool, "SELECT count(*) FROM calendar_outbox").await, 1, "nothing announced twice");
    db.drop_db().await;
}

#[tokio::test]
async fn a_push_naming_another_tenant_than_the_jobs_gives_up_as_not_found() {
    let push = handler(&unreachable_database()).push_handler();
    let args = CalendarPush { tenant: "t2".into(), booking_id: "b1".into() };
    let out = TestJob::new().tenant("t1").perform(&push, args).await;
    assert_eq!(assert_give_up(&out), "booking b1 not found");
}

#[tokio::test]
async fn a_booking_into_a_feed_or_another_tenants_source_fails_and_says_why() {
    let db = TestDb::new(&MIGRATOR).await;
    source(&db.pool, "feed", "t1", "ics", "https://example.com/feed.ics").await;
    source(&db.pool, "theirs", "t2", "caldav", "https://example.com/dav/").await;
    for (id, target) in [("b_feed", "feed"), ("b_theirs", "theirs")] {
        sqlx::query(
            "INSERT INTO calendar_bookings (tenant, id, supplier, target_source, summary, start_at, end_at, version)
             VALUES ('t1', $1, 'sup', $2, 'Shoot', now() + interval '1 day', now() + interval '25 hours', 1)",
        )
        .bind(id)
        .bind(target)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let push = handler(&db.pool).push_handler();
    let job = TestJob::new().tenant("t1");

    let out = job.perform(&push, CalendarPush { tenant: "t1".into(), booking_id: "b_feed".into() }).await;
    assert!(assert_give_up(&out).contains("read-only"), "{out:?}");
    let out = job.perform(&push, CalendarPush { tenant: "t1".into(), booking_id: "b_theirs".into() }).await;
    assert_eq!(assert_give_up(&out), "calendar source theirs not found");
    let states: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT id, push_state, push_error FROM calendar_bookings ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(states[0].0, "b_feed");
    assert_eq!(states[0].1, "failed");
    assert!(states[0].2.as_deref().is_some_and(|e| e.contains("read-only")), "{states:?}");
    assert_eq!(states[1], ("b_theirs".into(), "failed".into(), Some("calendar source theirs not found".into())));
    db.drop_db().await;
}
