//! Push-back against Radicale, and conflict events reaching the webhooks queue and the
//! tenant's live stream exactly once.

use super::{setup, vevent, wrap};
use fleet_accounts::outbox::Relay;
use fleet_calendar::jobs::{PushResult, booking_uid};
use fleet_jobs::catalogue::WebhookPublish;
use fleet_jobs::events;
use fleet_tests::TestEnv;
use sqlx::Row;

async fn book(s: &super::Setup, id: &str, start: &str, end: &str, version: i64) {
    sqlx::query(
        "INSERT INTO calendar_bookings (tenant, id, supplier, target_source, summary, start_at, end_at, version)
         VALUES ('t1', $1, (SELECT supplier FROM calendar_sources WHERE id = $2), $2, $1, $3::timestamptz, $4::timestamptz, $5)
         ON CONFLICT (tenant, id) DO UPDATE SET start_at = EXCLUDED.start_at, end_at = EXCLUDED.end_at,
           version = EXCLUDED.version, updated_at = now(), push_state = 'pending'",
    )
    .bind(id)
    .bind(&s.source)
    .bind(start)
    .bind(end)
    .bind(version)
    .execute(&s.db.pool)
    .await
    .unwrap();
}

async fn booking_state(s: &super::Setup, id: &str) -> (String, Option<String>) {
    let row = sqlx::query("SELECT push_state, push_error FROM calendar_bookings WHERE tenant = 't1' AND id = $1")
        .bind(id)
        .fetch_one(&s.db.pool)
        .await
        .unwrap();
    (row.get("push_state"), row.get("push_error"))
}

#[tokio::test]
async fn a_booking_is_pushed_not_re_reported_and_a_concurrent_edit_is_kept_unless_ours_is_newer() {
    let s = setup("photographer-push").await;
    let push = s.handler.push_handler();
    s.put("existing", &wrap(&vevent("existing", 0, "20270612T120000", "20270612T160000", ""))).await;
    s.sync().await;

    // Create: written with If-None-Match, visible at once, and the overlap is a conflict.
    book(&s, "bk-1", "2027-06-12T14:00:00Z", "2027-06-12T18:00:00Z", 1).await;
    assert_eq!(push.push("t1", "bk-1").await.unwrap(), PushResult::Pushed);
    let uid = booking_uid("t1", "bk-1");
    let href = s.cal.href_for_uid(&uid);
    let remote = s.cal.get(&href).await.unwrap().expect("the booking is on the server");
    assert!(String::from_utf8_lossy(&remote.body).contains("DTSTART:20270612T140000Z"));
    assert!(s.occurrences().await.iter().any(|o| o.0 == uid), "applied to Fleet's copy at once");
    assert_eq!(s.conflicts().await.len(), 1);
    assert_eq!(s.outbox().await, ["calendar.conflict.detected"]);

    // A retried push of the same version does nothing.
    assert_eq!(push.push("t1", "bk-1").await.unwrap(), PushResult::AlreadyPushed);

    // Our own write does not come back as a change.
    let report = s.sync().await;
    assert_eq!((report.events_written, report.conflicts_detected, report.conflicts_resolved), (0, 0, 0), "{report:?}");
    assert_eq!(s.outbox().await, ["calendar.conflict.detected"]);

    // Someone edits the event on the server (SEQUENCE 5), then the platform changes the
    // booking (version 2 < 5): 412, theirs is newer → kept, and Fleet's copy shows theirs.
    let theirs = String::from_utf8_lossy(&remote.body)
        .replace("SEQUENCE:1", "SEQUENCE:5")
        .replace("DTSTART:20270612T140000Z", "DTSTART:20270612T170000Z")
        .replace("DTEND:20270612T180000Z", "DTEND:20270612T210000Z");
    s.cal
        .put(&href, theirs.as_bytes(), &fleet_calendar::caldav::Precondition::Match(remote.etag.clone().unwrap()))
        .await
        .unwrap();
    book(&s, "bk-1", "2027-06-12T15:00:00Z", "2027-06-12T19:00:00Z", 2).await;
    assert_eq!(push.push("t1", "bk-1").await.unwrap(), PushResult::KeptTheirs);
    let (state, note) = booking_state(&s, "bk-1").await;
    assert_eq!(state, "kept_theirs");
    assert!(note.unwrap().contains("newer version"));
    let body = String::from_utf8_lossy(&s.cal.get(&href).await.unwrap().unwrap().body).into_owned();
    assert!(body.contains("DTSTART:20270612T170000Z"), "their edit survives: {body}");
    assert!(s.conflicts().await.is_empty(), "their time no longer overlaps");
    assert_eq!(s.outbox().await, ["calendar.conflict.detected", "calendar.conflict.resolved"]);

    // The platform's next change is newer than theirs (version 6 > 5): ours wins.
    book(&s, "bk-1", "2027-06-12T13:00:00Z", "2027-06-12T15:00:00Z", 6).await;
    assert_eq!(push.push("t1", "bk-1").await.unwrap(), PushResult::Pushed);
    let body = String::from_utf8_lossy(&s.cal.get(&href).await.unwrap().unwrap().body).into_owned();
    assert!(body.contains("DTSTART:20270612T130000Z") && body.contains("SEQUENCE:6"), "{body}");
    assert_eq!(s.conflicts().await.len(), 1);

    // Delete: gone from the server and from the occurrences, conflict resolved.
    sqlx::query("UPDATE calendar_bookings SET deleted = true, version = 7 WHERE tenant = 't1' AND id = 'bk-1'")
        .execute(&s.db.pool)
        .await
        .unwrap();
    assert_eq!(push.push("t1", "bk-1").await.unwrap(), PushResult::Deleted);
    assert!(s.cal.get(&href).await.unwrap().is_none());
    assert!(!s.occurrences().await.iter().any(|o| o.0 == uid));
    assert!(s.conflicts().await.is_empty());
    assert_eq!(booking_state(&s, "bk-1").await.0, "deleted");
    s.finish().await;
}

#[tokio::test]
async fn conflict_events_reach_webhooks_and_the_live_stream_once() {
    let mut s = setup("photographer-events").await;
    let env = TestEnv::new().await;
    s.handler = s.handler.clone().with_relay(Relay::new(s.db.pool.clone(), env.client.clone()));
    s.put("a", &wrap(&vevent("a", 0, "20270612T120000", "20270612T160000", ""))).await;
    s.put("b", &wrap(&vevent("b", 0, "20270612T150000", "20270612T170000", ""))).await;
    s.sync().await;
    s.sync().await;

    // One webhook.publish job for the one conflict, with the event's stable id.
    let stats = env.client.stats("webhooks").await.unwrap();
    assert_eq!(stats.ready, 1, "{stats:?}");
    let pending: Vec<Option<String>> =
        sqlx::query_scalar("SELECT published_at::text FROM calendar_outbox").fetch_all(&s.db.pool).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert!(pending[0].is_some(), "marked published");

    let mut conn = env.client.connection();
    let read = events::read_after(&mut conn, env.client.prefix(), "t1", "0", 10).await.unwrap();
    assert_eq!(read.len(), 1, "{read:?}");
    let event = &read[0].1;
    assert_eq!(event.event_type, "calendar.conflict.detected");
    assert!(event.id.starts_with("evt_"));
    let data = event.data.as_ref().expect("payload");
    assert!(data.to_string().contains("photographer-events"), "{data}");
    let job = env.client.job("webhooks", &event.id).await.unwrap().expect("the publish job has the event's id");
    let envelope = job.envelope.expect("envelope");
    assert_eq!(envelope.kind, <WebhookPublish as fleet_jobs::JobArgs>::KIND);
    assert_eq!(envelope.tenant.as_deref(), Some("t1"), "the publish is the source's tenant's job");

    // Resolved: a second event, still one per change.
    s.delete("b").await;
    s.sync().await;
    let read = events::read_after(&mut conn, env.client.prefix(), "t1", "0", 10).await.unwrap();
    let types: Vec<&str> = read.iter().map(|(_, e)| e.event_type.as_str()).collect();
    assert_eq!(types, ["calendar.conflict.detected", "calendar.conflict.resolved"]);
    assert_eq!(env.client.stats("webhooks").await.unwrap().ready, 2);
    s.finish().await;
    env.cleanup().await;
}

/// The booking API end to end: `PUT` → a `calendar.push` job run by a worker → on the
/// CalDAV server; an unchanged `PUT` does not bump the version; `DELETE` removes it.
#[tokio::test]
async fn bookings_through_the_api_are_pushed_by_a_worker() {
    use axum::http::StatusCode;
    use fleet_scheduler::api::{ApiState, app, auth};
    use serde_json::{Value, json};

    let s = setup("photographer-api-push").await;
    let env = TestEnv::new().await;
    let key = auth::create_api_key(&s.db.pool, "t1", "test", &[auth::Role::Enqueue]).await.unwrap();
    let router = app(
        ApiState::new(env.client.clone(), s.db.pool.clone())
            .with_tenancy(fleet_scheduler::tenancy::TenancyConfig::for_tests()),
        1 << 20,
    );
    let call = |method: &'static str, uri: String, body: Option<Value>| {
        let (router, key) = (router.clone(), key.clone());
        async move { super::api::call(&router, &key, method, &uri, body).await }
    };
    let uri = "/v1/calendar/suppliers/photographer-api-push/bookings/bk-7".to_owned();
    let booking = json!({"source": s.source, "summary": "Smith, Jones; wedding", "start": "2027-07-03T11:00:00Z",
        "end": "2027-07-03T19:00:00Z"});

    let (status, body) = call(
        "PUT",
        uri.clone(),
        Some(json!({"source": s.source, "start": "2027-07-03T11:00:00Z",
        "end": "2027-07-03T10:00:00Z"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "end before start: {body}");
    let (status, body) = call(
        "PUT",
        uri.clone(),
        Some(json!({"source": "cal_nope", "start": "2027-07-03T11:00:00Z",
        "end": "2027-07-03T19:00:00Z"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let (status, body) = call("PUT", uri.clone(), Some(booking.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["version"].as_i64(), body["push_state"].as_str()), (Some(1), Some("pending")));

    let worker =
        env.worker(env.config("calendar", 1), fleet_worker::Registry::new().register(s.handler.push_handler())).await;
    let pushed = fleet_tests::eventually("the booking is pushed", std::time::Duration::from_secs(20), || {
        let uri = uri.clone();
        async move {
            let (_, body) = call("GET", uri, None).await;
            (body["push_state"] == "pushed").then_some(body)
        }
    })
    .await;
    let href = pushed["remote_href"].as_str().unwrap().to_owned();
    let remote = s.cal.get(&href).await.unwrap().expect("on the server");
    let text = String::from_utf8_lossy(&remote.body).into_owned();
    assert!(text.contains("SUMMARY:Smith\\, Jones\\; wedding"), "escaped text: {text}");

    // Unchanged: same version, nothing new to write.
    let (_, body) = call("PUT", uri.clone(), Some(booking.clone())).await;
    assert_eq!(body["version"].as_i64(), Some(1));
    // Moving it to another calendar would leave this copy behind: refused, with the way out.
    let other = format!("cal_{}", uuid::Uuid::now_v7().simple());
    let feed = format!("cal_{}", uuid::Uuid::now_v7().simple());
    for (id, kind) in [(&other, "caldav"), (&feed, "ics")] {
        sqlx::query(
            "INSERT INTO calendar_sources (id, tenant, supplier, kind, url) VALUES ($1, 't1', 'photographer-api-push', $2, 'https://x.example/c/')",
        )
        .bind(id)
        .bind(kind)
        .execute(&s.db.pool)
        .await
        .unwrap();
    }
    let mut moved = booking.clone();
    moved["source"] = json!(other);
    let (status, body) = call("PUT", uri.clone(), Some(moved)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("delete it"), "{body}");
    // And a feed cannot take bookings at all.
    let mut into_feed = booking.clone();
    into_feed["source"] = json!(feed);
    let (status, body) = call("PUT", format!("{uri}-feed"), Some(into_feed)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("read-only"), "{body}");

    let (status, body) = call("DELETE", uri.clone(), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    fleet_tests::eventually("the booking is removed", std::time::Duration::from_secs(20), || {
        let uri = uri.clone();
        async move { (call("GET", uri, None).await.1["push_state"] == "deleted").then_some(()) }
    })
    .await;
    assert!(s.cal.get(&href).await.unwrap().is_none());
    worker.shutdown().await;
    env.cleanup().await;
    s.finish().await;
}

/// Calendar URLs are a tenant's input: a handler without an allow-list refuses a server at a
/// private address (here the loopback Radicale, and a metadata-service literal) for good, with
/// the reason on the source, and pushes are refused the same way.
#[tokio::test]
async fn a_calendar_server_at_a_private_address_is_refused_by_default() {
    use fleet_calendar::jobs::CalendarSyncHandler;
    let s = setup("photographer-ssrf").await;
    let secrets = fleet_accounts::secrets::SecretBox::new(super::KEY).unwrap();
    let guarded = CalendarSyncHandler::new(s.db.pool.clone(), Some(secrets));
    let error = guarded.sync_source(&s.source).await.unwrap_err();
    assert!(error.contains("SSRF guard"), "{error}");
    let last_error: Option<String> = sqlx::query_scalar("SELECT last_error FROM calendar_sources WHERE id = $1")
        .bind(&s.source)
        .fetch_one(&s.db.pool)
        .await
        .unwrap();
    assert!(last_error.unwrap().contains("SSRF guard"));

    sqlx::query("UPDATE calendar_sources SET url = 'http://169.254.169.254/latest/meta-data/' WHERE id = $1")
        .bind(&s.source)
        .execute(&s.db.pool)
        .await
        .unwrap();
    let error = guarded.sync_source(&s.source).await.unwrap_err();
    assert!(error.contains("169.254.169.254"), "{error}");

    book(&s, "bk-ssrf", "2027-06-12T14:00:00Z", "2027-06-12T18:00:00Z", 1).await;
    let error = guarded.push_handler().push("t1", "bk-ssrf").await.unwrap_err();
    assert!(error.contains("SSRF guard") || error.contains("169.254.169.254"), "{error}");
    assert_eq!(booking_state(&s, "bk-ssrf").await.0, "failed");
    s.finish().await;
}
