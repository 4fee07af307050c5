//! Bookings through the API against what the supplier's calendars hold: a time that
//! overlaps a busy occurrence is refused with 409 and the occurrences unless booked anyway
//! (`?force=true`), the booking's own copy in the calendar never counts, and every change is
//! published through the outbox like conflicts.

use super::{setup, vevent, wrap};
use axum::http::StatusCode;
use fleet_scheduler::api::{ApiState, app, auth};
use fleet_tests::TestEnv;
use serde_json::{Value, json};
use sqlx::Row;

#[tokio::test]
async fn a_booking_over_busy_time_is_refused_unless_forced_and_each_change_is_published() {
    let s = setup("photographer-book").await;
    let env = TestEnv::new().await;
    let key =
        auth::create_api_key(&s.db.pool, "t1", "test", &[fleet_scheduler::api::auth::Role::Enqueue]).await.unwrap();
    let router = app(
        ApiState::new(env.client.clone(), s.db.pool.clone())
            .with_tenancy(fleet_scheduler::tenancy::TenancyConfig::for_tests()),
        1 << 20,
    );
    let call = |method: &'static str, uri: String, body: Option<Value>| {
        let (router, key) = (router.clone(), key.clone());
        async move { super::api::call(&router, &key, method, &uri, body).await }
    };
    // 12 June 12:00-16:00 London (11:00-15:00Z) is taken in the supplier's calendar.
    s.put("shoot", &wrap(&vevent("shoot", 0, "20270612T120000", "20270612T160000", ""))).await;
    s.sync().await;
    let uri = |id: &str| format!("/v1/calendar/suppliers/photographer-book/bookings/{id}");
    let booking =
        |start: &str, end: &str| json!({"source": s.source, "summary": "Smith wedding", "start": start, "end": end});
    let outbox = || async {
        sqlx::query(
            "SELECT event_type, payload, published_at IS NOT NULL AS published FROM calendar_outbox ORDER BY id",
        )
        .fetch_all(&s.db.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<String, _>("event_type"), r.get::<Value, _>("payload"), r.get::<bool, _>("published")))
        .collect::<Vec<_>>()
    };

    // Overlapping: 409 with the occurrence, and nothing booked.
    let (status, body) = call("PUT", uri("bk-1"), Some(booking("2027-06-12T14:00:00Z", "2027-06-12T18:00:00Z"))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "booking_conflict");
    assert!(body["error"]["message"].as_str().unwrap().contains("force=true"), "{body}");
    let conflicts = body["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{body}");
    assert_eq!(
        (conflicts[0]["uid"].as_str(), conflicts[0]["start"].as_str()),
        (Some("shoot"), Some("2027-06-12T11:00:00Z"))
    );
    assert_eq!(call("GET", uri("bk-1"), None).await.0, StatusCode::NOT_FOUND);
    assert!(outbox().await.is_empty());
    // Touching is not overlapping (half-open intervals).
    let (status, body) = call("PUT", uri("bk-2"), Some(booking("2027-06-12T15:00:00Z", "2027-06-12T17:00:00Z"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Booked anyway: written, and the event says what it was booked over.
    let (status, body) = call(
        "PUT",
        format!("{}?force=true", uri("bk-1")),
        Some(booking("2027-06-12T14:00:00Z", "2027-06-12T18:00:00Z")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 1);
    // The same time again, without force: an idempotent retry, not a 409, and no new event.
    let (status, body) = call("PUT", uri("bk-1"), Some(booking("2027-06-12T14:00:00Z", "2027-06-12T18:00:00Z"))).await;
    assert_eq!((status, body["version"].as_i64()), (StatusCode::OK, Some(1)), "{body}");

    // Pushed: its own copy in the calendar is not a conflict when it moves within its time.
    s.handler.push_handler().push("t1", "bk-2").await.unwrap();
    assert!(s.occurrences().await.iter().any(|o| o.0 == fleet_calendar::jobs::booking_uid("t1", "bk-2")));
    let (status, body) = call("PUT", uri("bk-2"), Some(booking("2027-06-12T15:30:00Z", "2027-06-12T17:00:00Z"))).await;
    assert_eq!((status, body["version"].as_i64()), (StatusCode::OK, Some(2)), "{body}");

    let (status, _) = call("DELETE", uri("bk-1"), None).await;
    assert_eq!(status, StatusCode::OK);

    let events = outbox().await;
    let summary: Vec<(&str, &str, i64)> = events
        .iter()
        .map(|(t, p, _)| (t.as_str(), p["booking"].as_str().unwrap(), p["version"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            ("calendar.booking.created", "bk-2", 1),
            ("calendar.booking.created", "bk-1", 1),
            ("calendar.booking.changed", "bk-2", 2),
            ("calendar.booking.deleted", "bk-1", 2),
        ]
    );
    assert_eq!(events[1].1["overlapping"][0]["uid"], "shoot", "{:?}", events[1]);
    assert_eq!(events[0].1["overlapping"], json!([]));
    // Published by the API as they happened: one webhook.publish job each.
    assert!(events.iter().all(|e| e.2), "{events:?}");
    assert!(env.client.stats("webhooks").await.unwrap().enqueued >= 4);
    env.cleanup().await;
    s.finish().await;
}
