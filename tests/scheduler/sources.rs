//! Calendar and comms sources on the scheduler's side: each source's own cron schedule
//! enqueued once by several replicas (time driven, no sleeping), and the read and
//! operator endpoints (one source, release, a source's entries, `in_app`, schedules).

use super::api::Api;
use axum::http::StatusCode;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use fleet_accounts::sources::SourceTable;
use fleet_calendar::store::{self as calendar_store, CalendarSourceRequest};
use fleet_comms::store::{self as comms_store, SourceRequest};
use fleet_scheduler::ticker::{TickReport, Ticker};
use fleet_tests::{TestDb, TestEnv};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// An `.ics` feed source of supplier `studio-7` (no password), registered through the store.
pub(crate) fn feed(schedule: Option<&str>) -> CalendarSourceRequest {
    CalendarSourceRequest {
        supplier: "studio-7".into(),
        kind: "ics".into(),
        url: "https://calendars.example.com/studio-7.ics".into(),
        schedule: schedule.map(str::to_owned),
        ..Default::default()
    }
}

/// Stores a timeline entry of `source` for `client`, `minute` minutes into 2026-12-01.
pub(crate) async fn entry(db: &TestDb, tenant: &str, source: &str, client: &str, minute: i64) -> String {
    let id = format!("e{source}{minute:04}");
    let at = DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z").unwrap().to_utc() + TimeDelta::minutes(minute);
    let doc = json!({"channel": "in_app", "direction": "inbound", "client": client, "subject": format!("note {minute}"),
        "text": "hello", "time": at, "body_fingerprint": "x"});
    sqlx::query(
        "INSERT INTO comms_entries (tenant, id, thread_id, client, source_id, channel, direction, occurred_at, doc)
         VALUES ($1, $2, $2, $3, $4, 'in_app', 'inbound', $5, $6)",
    )
    .bind(tenant)
    .bind(&id)
    .bind(client)
    .bind(source)
    .bind(at)
    .bind(doc)
    .execute(&db.pool)
    .await
    .unwrap();
    id
}

async fn next_sync(db: &TestDb, table: SourceTable) -> BTreeMap<String, DateTime<Utc>> {
    let sql = format!("SELECT id, next_sync_at FROM {}", table.table());
    sqlx::query_as::<_, (String, DateTime<Utc>)>(sqlx::AssertSqlSafe(sql))
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// One pass of every replica at `at`, at once.
async fn tick(replicas: &mut [Ticker], at: DateTime<Utc>) -> Vec<TickReport> {
    futures::future::join_all(replicas.iter_mut().map(|r| r.tick(at))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_enqueue_each_due_source_sync_once_and_move_it_to_its_next_time() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let quarterly = calendar_store::create(&db.pool, None, "acme", feed(None)).await.unwrap();
    let hourly = calendar_store::create(&db.pool, None, "acme", feed(Some("0 * * * *"))).await.unwrap();
    let chat =
        comms_store::create(&db.pool, None, "acme", SourceRequest { kind: "in_app".into(), ..Default::default() })
            .await
            .unwrap();
    assert_eq!((quarterly.sync.schedule.as_str(), chat.sync.schedule.as_str()), ("*/15 * * * *", "*/5 * * * *"));
    // Time is driven: every source is due at t0, a whole hour two hours ago.
    let t0 = Utc::now().duration_trunc(TimeDelta::hours(1)).unwrap() - TimeDelta::hours(2);
    for table in SourceTable::ALL {
        let sql = format!("UPDATE {} SET next_sync_at = $1", table.table());
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(t0).execute(&db.pool).await.unwrap();
    }
    let mut replicas: Vec<Ticker> =
        (0..3).map(|_| Ticker::new(env.client.clone(), Some(db.pool.clone()), vec![])).collect();

    let reports = tick(&mut replicas, t0 + TimeDelta::seconds(30)).await;
    assert!(reports.iter().all(|r| r.errors.is_empty()), "{reports:?}");
    let mut synced: Vec<String> = reports.iter().flat_map(|r| r.sources.iter().map(|d| d.source.clone())).collect();
    synced.sort();
    let mut expected = vec![quarterly.id.clone(), hourly.id.clone(), chat.id.clone()];
    expected.sort();
    assert_eq!(synced, expected, "each due source once across the replicas");
    assert_eq!((env.stats("calendar").await.enqueued, env.stats("comms").await.enqueued), (2, 1));
    let calendar_next = next_sync(&db, SourceTable::Calendar).await;
    assert_eq!(calendar_next[&quarterly.id], t0 + TimeDelta::minutes(15));
    assert_eq!(calendar_next[&hourly.id], t0 + TimeDelta::hours(1));
    assert_eq!(next_sync(&db, SourceTable::Comms).await[&chat.id], t0 + TimeDelta::minutes(5));
    let chat_job = reports.iter().flat_map(|r| &r.sources).find(|d| d.source == chat.id).unwrap().job.clone();

    // Nothing is due a minute later.
    let reports = tick(&mut replicas, t0 + TimeDelta::seconds(90)).await;
    assert!(reports.iter().all(|r| r.sources.is_empty()), "{reports:?}");

    // At t0 + 5 min the comms source is due again; its first sync still holds the source's
    // unique key, so no second job is pending beside it.
    let reports = tick(&mut replicas, t0 + TimeDelta::minutes(5)).await;
    let again: Vec<_> = reports.iter().flat_map(|r| &r.sources).collect();
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!((again[0].source.as_str(), again[0].job.as_str()), (chat.id.as_str(), chat_job.as_str()));
    assert_eq!(env.stats("comms").await.enqueued, 1);
    assert_eq!(next_sync(&db, SourceTable::Comms).await[&chat.id], t0 + TimeDelta::minutes(10));

    // A schedule stored by hand that does not parse falls back to the default, and says so.
    sqlx::query("UPDATE comms_sources SET schedule = 'whenever'").execute(&db.pool).await.unwrap();
    let report = replicas[0].tick(t0 + TimeDelta::minutes(11)).await;
    assert!(report.errors.iter().any(|e| e.contains("whenever")), "{:?}", report.errors);
    assert_eq!(next_sync(&db, SourceTable::Comms).await[&chat.id], t0 + TimeDelta::minutes(15));
    db.drop_db().await;
    env.cleanup().await;
}

async fn get(api: &Api, uri: &str) -> (StatusCode, Value) {
    api.call("GET", uri, Some(&api.key.clone()), None, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_take_a_cron_schedule_and_a_bad_one_is_refused() {
    let api = Api::new().await;
    let (s, e) = api
        .post(
            "/v1/calendar/sources",
            json!({"supplier": "studio-7", "kind": "ics", "url": "https://x.example/c.ics", "schedule": "every day"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["error"]["code"], "invalid_schedule");
    assert!(e["error"]["message"].as_str().unwrap().contains("five-field cron"), "{e}");
    let (s, e) = api.post("/v1/comms/sources", json!({"kind": "in_app", "schedule": "* * * * * *"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "seconds are not accepted: {e}");
    let (s, v) = api
        .post("/v1/calendar/sources", json!({"supplier": "studio-7", "kind": "ics", "url": "https://x.example/c.ics", "schedule": "*/30 * * * *"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!((v["schedule"].as_str(), v["has_password"].as_bool()), (Some("*/30 * * * *"), Some(false)));

    // In-app messages: no settings, no secret (so no FLEET_SECRETS_KEY needed).
    let (s, chat) = api.post("/v1/comms/sources", json!({"kind": "in_app", "name": "app"})).await;
    assert_eq!(s, StatusCode::CREATED, "{chat}");
    assert_eq!((chat["config"].clone(), chat["has_secret"].clone()), (json!({}), json!(false)));
    assert_eq!(chat["schedule"], "*/5 * * * *");
    let (s, _) = api.post("/v1/comms/sources", json!({"kind": "in_app", "password": "x"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, e) = api.post("/v1/comms/sources", json!({"kind": "imap", "host": "h", "port": 143, "user": "u"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(e["error"]["message"].as_str().unwrap().contains("password"), "{e}");
    // IMAP transport and authentication.
    let imap = json!({"kind": "imap", "host": "imap.example.com", "port": 143, "user": "u", "password": "p",
        "tls": true, "starttls": true});
    let (s, e) = api.post("/v1/comms/sources", imap).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("starttls"), "{e}");
    let (s, e) = api
        .post(
            "/v1/comms/sources",
            json!({"kind": "imap", "host": "h", "port": 993, "user": "u",
        "password": "p", "auth": "kerberos"}),
        )
        .await;
    assert!(s.is_client_error(), "an unknown auth method is refused: {s} {e}");
    api.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_calendar_source_is_read_and_released_once() {
    let api = Api::new().await;
    let (_, v) = api
        .post("/v1/calendar/sources", json!({"supplier": "studio-7", "kind": "ics", "url": "https://x.example/c.ics"}))
        .await;
    let id = v["id"].as_str().unwrap().to_owned();
    let (s, one) = get(&api, &format!("/v1/calendar/sources/{id}")).await;
    assert_eq!(s, StatusCode::OK, "{one}");
    assert_eq!(
        (one["id"].as_str(), one["quarantined"].clone(), one["state"].clone()),
        (Some(id.as_str()), Value::Null, json!({}))
    );
    assert_eq!(get(&api, "/v1/calendar/sources/cal_nope").await.0, StatusCode::NOT_FOUND);
    let other = fleet_scheduler::api::auth::create_api_key(
        &api.db.pool,
        "globex",
        "other",
        &[fleet_scheduler::api::auth::Role::Enqueue],
    )
    .await
    .unwrap();
    let uri = format!("/v1/calendar/sources/{id}");
    assert_eq!(api.call("GET", &uri, Some(&other), None, &[]).await.0, StatusCode::NOT_FOUND, "another tenant's");

    let release = format!("/v1/calendar/sources/{id}/release");
    let (s, e) = api.post(&release, Value::Null).await;
    assert_eq!(s, StatusCode::CONFLICT, "only a quarantined source is released: {e}");
    let report = json!({"mode": "feed", "quarantined": "would delete 9 of 10 events (more than 50%): quarantined"});
    sqlx::query("UPDATE calendar_sources SET quarantined = $2, last_error = $2, last_report = $3, state = '{\"etag\": \"\\\"v1\\\"\"}' WHERE id = $1")
        .bind(&id)
        .bind(report["quarantined"].as_str())
        .bind(&report)
        .execute(&api.db.pool)
        .await
        .unwrap();
    let (_, one) = get(&api, &uri).await;
    assert!(one["quarantined"].as_str().unwrap().contains("would delete 9 of 10"), "{one}");
    assert_eq!(one["last_report"], report);
    assert_eq!(api.call("POST", &release, Some(&other), None, &[]).await.0, StatusCode::NOT_FOUND);

    let (s, released) = api.post(&release, Value::Null).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{released}");
    let job = released["job"].as_str().unwrap();
    let queued = api.env.client.job("calendar", job).await.unwrap().unwrap();
    assert_eq!(queued.envelope.unwrap().kind, "calendar.sync");
    let (_, one) = get(&api, &uri).await;
    assert_eq!(one["quarantined"], Value::Null);
    assert_eq!(one["state"], json!({"etag": "\"v1\"", "force_apply": true}), "the worker's flag, its sync state kept");
    assert_eq!(api.post(&release, Value::Null).await.0, StatusCode::CONFLICT, "released once");
    api.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comms_source_shows_its_cursors_and_pages_its_own_entries() {
    let api = Api::new().await;
    let (_, chat) = api.post("/v1/comms/sources", json!({"kind": "in_app"})).await;
    let (_, other) = api.post("/v1/comms/sources", json!({"kind": "in_app"})).await;
    let (id, other) = (chat["id"].as_str().unwrap().to_owned(), other["id"].as_str().unwrap().to_owned());
    sqlx::query("INSERT INTO comms_cursors (source_id, folder, uidvalidity, uidnext, last_uid, highestmodseq) VALUES ($1, 'in_app', 1, 8, 7, 912)")
        .bind(&id)
        .execute(&api.db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE comms_sources SET last_error = 'relation platform_messages: timeout', last_report = '{\"new\": 7}' WHERE id = $1")
        .bind(&id)
        .execute(&api.db.pool)
        .await
        .unwrap();
    let (s, one) = get(&api, &format!("/v1/comms/sources/{id}")).await;
    assert_eq!(s, StatusCode::OK, "{one}");
    assert_eq!(one["cursors"][0]["folder"], "in_app");
    assert_eq!(
        (one["cursors"][0]["last_uid"].as_i64(), one["cursors"][0]["highestmodseq"].as_i64()),
        (Some(7), Some(912))
    );
    assert_eq!(
        (one["last_error"].as_str(), one["last_report"]["new"].as_i64()),
        (Some("relation platform_messages: timeout"), Some(7))
    );
    assert!(one.get("secret").is_none());
    assert_eq!(get(&api, "/v1/comms/sources/cs_nope").await.0, StatusCode::NOT_FOUND);

    let mut mine = Vec::new();
    for minute in 0..5 {
        mine.push(entry(&api.db, "acme", &id, "anna", minute).await);
    }
    entry(&api.db, "acme", &other, "anna", 30).await;
    entry(&api.db, "globex", &id, "anna", 40).await; // another tenant's row never shows
    let mut seen = Vec::new();
    let mut uri = format!("/v1/comms/sources/{id}/entries?limit=2");
    loop {
        let (s, page) = get(&api, &uri).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        let entries = page["entries"].as_array().unwrap();
        assert!(entries.iter().all(|e| e.get("body_fingerprint").is_none()));
        seen.extend(entries.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
        match page["next"].as_str() {
            Some(next) => uri = format!("/v1/comms/sources/{id}/entries?limit=2&cursor={}", next.replace('+', "%2B")),
            None => break,
        }
    }
    mine.reverse();
    assert_eq!(seen, mine, "newest first, each once, only this source's");
    assert_eq!(get(&api, "/v1/comms/sources/cs_nope/entries").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        get(&api, &format!("/v1/comms/sources/{id}/entries?cursor=garbage")).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    api.done().await;
}

/// "Sync now" is one pending sync per source: asked again while the first waits, the same
/// job; once that sync has run, a new one at once (not when the unique key's minute is up),
/// and again one only while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_now_after_a_finished_sync_enqueues_a_new_one() {
    use fleet_calendar::jobs::CalendarSyncHandler;
    use fleet_jobs::JobState;
    let api = Api::new().await;
    // A feed on loopback, which this handler is allowed to reach.
    let app = axum::Router::new().route(
        "/c.ics",
        axum::routing::get(|| async {
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:a\r\nDTSTART:20270612T100000Z\r\n\
             DTEND:20270612T110000Z\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/c.ics", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let source = calendar_store::create(&api.db.pool, None, "acme", feed(None)).await.unwrap().id;
    sqlx::query("UPDATE calendar_sources SET url = $2 WHERE id = $1")
        .bind(&source)
        .bind(&url)
        .execute(&api.db.pool)
        .await
        .unwrap();
    let sync_now = || async {
        let (status, body) = api.post(&format!("/v1/calendar/sources/{source}/sync"), json!({})).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body["job"].as_str().unwrap().to_owned()
    };

    let first = sync_now().await;
    assert_eq!(sync_now().await, first, "one pending sync per source");

    let handler =
        CalendarSyncHandler::new(api.db.pool.clone(), None).with_allowed(vec!["127.0.0.0/8".parse().unwrap()]);
    let worker = api.env.worker(api.env.config("calendar", 1), fleet_worker::Registry::new().register(handler)).await;
    fleet_tests::eventually("the first sync to finish", std::time::Duration::from_secs(20), || async {
        (api.env.client.job_state("calendar", &first).await.unwrap() == Some(JobState::Succeeded)).then_some(())
    })
    .await;
    worker.shutdown().await;

    // Well inside the first one's unique window, and it has run: a new sync.
    let second = sync_now().await;
    assert_ne!(second, first, "a sync asked for after the last one finished is enqueued");
    assert_eq!(api.env.client.job_state("calendar", &second).await.unwrap(), Some(JobState::Ready));
    assert_eq!(sync_now().await, second, "and it is the one pending sync");
    // The ticker (and fleetctl) share the rule: a due schedule finds the same pending job.
    let job = fleet_accounts::sources::enqueue_sync(&api.env.client, SourceTable::Calendar, "acme", &source, true)
        .await
        .unwrap();
    assert_eq!(job.as_str(), second);
    assert_eq!(api.env.stats("calendar").await.enqueued, 2);
    api.done().await;
}

/// A supplier's settings can be read back (`GET`), by its own tenant only: another tenant
/// sees the defaults of a supplier of that name in its own space.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supplier_settings_are_read_back_per_tenant() {
    let api = Api::new().await;
    let (status, body) = get(&api, "/v1/calendar/suppliers/studio-7").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"all_day_busy": false, "time_zone": "UTC"}), "never set: the defaults a sync uses");
    let settings = json!({"all_day_busy": true, "time_zone": "Europe/London"});
    let (status, body) =
        api.call("PUT", "/v1/calendar/suppliers/studio-7", Some(&api.key.clone()), Some(settings.clone()), &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(get(&api, "/v1/calendar/suppliers/studio-7").await.1, settings);

    let other = fleet_scheduler::api::auth::create_api_key(
        &api.db.pool,
        "globex",
        "test",
        &[fleet_scheduler::api::auth::Role::Enqueue],
    )
    .await
    .unwrap();
    let (status, body) = api.call("GET", "/v1/calendar/suppliers/studio-7", Some(&other), None, &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"all_day_busy": false, "time_zone": "UTC"}), "acme's settings are not globex's");
    let (status, _) = api.call("GET", "/v1/calendar/suppliers/studio-7", None, None, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    api.done().await;
}
