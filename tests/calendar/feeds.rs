//! `.ics` feeds (and one CalDAV collection) served by a local axum server, through the
//! `calendar.sync` handler into what is stored: bytes that only `decode()` may read (a fold
//! inside "ö", Latin-1, NULs),
//! a download cut short, an override whose instance a newer master deleted, duplicate UIDs,
//! and what the source's `last_report` says about each.

use super::*;
use std::sync::{Arc, Mutex};

/// A feed at `http://127.0.0.1:<port>/feed.ics` answering with whatever body is set, after
/// a short delay (so the pull takes measurable time).
struct Feed {
    body: Arc<Mutex<Vec<u8>>>,
    url: String,
}

impl Feed {
    async fn start() -> Feed {
        let body = Arc::new(Mutex::new(Vec::new()));
        let served = body.clone();
        let app = axum::Router::new().route(
            "/feed.ics",
            axum::routing::get(move || {
                let served = served.clone();
                async move {
                    tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                    let bytes = served.lock().unwrap().clone();
                    ([("content-type", "text/calendar")], bytes)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/feed.ics", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Feed { body, url }
    }

    fn set(&self, bytes: impl Into<Vec<u8>>) {
        *self.body.lock().unwrap() = bytes.into();
    }
}

/// A feed source of the setup's supplier.
async fn feed_source(s: &Setup, feed: &Feed) -> String {
    let id = format!("cal_{}", uuid::Uuid::now_v7().simple());
    let supplier: String = sqlx::query_scalar("SELECT supplier FROM calendar_sources WHERE id = $1")
        .bind(&s.source)
        .fetch_one(&s.db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO calendar_sources (id, tenant, supplier, kind, url) VALUES ($1, 't1', $2, 'ics', $3)")
        .bind(&id)
        .bind(supplier)
        .bind(&feed.url)
        .execute(&s.db.pool)
        .await
        .unwrap();
    id
}

/// (summary, local start) of the source's occurrences, by start.
async fn summaries(s: &Setup, source: &str) -> Vec<(String, String)> {
    sqlx::query("SELECT summary, start_local FROM calendar_occurrences WHERE source_id = $1 ORDER BY start_at")
        .bind(source)
        .fetch_all(&s.db.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get::<Option<String>, _>("summary").unwrap_or_default(),
                r.get::<chrono::NaiveDateTime, _>("start_local").format("%Y-%m-%d %H:%M").to_string(),
            )
        })
        .collect()
}

/// The source as stored: (last_report, last_error, quarantined).
async fn stored(s: &Setup, source: &str) -> (serde_json::Value, Option<String>, Option<String>) {
    let row = sqlx::query("SELECT last_report, last_error, quarantined FROM calendar_sources WHERE id = $1")
        .bind(source)
        .fetch_one(&s.db.pool)
        .await
        .unwrap();
    (
        row.get::<Option<serde_json::Value>, _>("last_report").unwrap_or_default(),
        row.get("last_error"),
        row.get("quarantined"),
    )
}

fn warnings(report: &serde_json::Value) -> Vec<String> {
    report["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn feed_bytes_reach_decode_folds_in_utf8_latin1_and_nul() {
    let s = setup("photographer-20").await;
    let feed = Feed::start().await;
    let source = feed_source(&s, &feed).await;

    // "Köln" folded between the two bytes of "ö".
    let mut body = b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:koeln\r\nDTSTAMP:20261201T000000Z\r\n\
                     DTSTART;TZID=Europe/London:20270612T120000\r\nDTEND;TZID=Europe/London:20270612T140000\r\nSUMMARY:K"
        .to_vec();
    body.extend_from_slice(b"\xC3\r\n \xB6ln\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n");
    feed.set(body);
    let report = s.handler.sync_source(&source).await.unwrap();
    assert_eq!(report.events_written, 1, "{report:?}");
    assert_eq!(summaries(&s, &source).await, [("K\u{f6}ln".to_owned(), "2027-06-12 12:00".to_owned())]);
    // The times are in the stored report, not only in the returned one.
    let (last, ..) = stored(&s, &source).await;
    assert!(last["fetch_ms"].as_u64().unwrap() >= 25, "{last}");
    assert_eq!(last["apply_ms"].as_u64(), Some(report.apply_ms));

    // A Latin-1 feed.
    feed.set(
        b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:koeln\r\nSEQUENCE:1\r\nDTSTAMP:20261201T000000Z\r\n\
          DTSTART;TZID=Europe/London:20270612T120000\r\nDTEND;TZID=Europe/London:20270612T140000\r\n\
          SUMMARY:Caf\xE9 M\xFCller\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
            .to_vec(),
    );
    s.handler.sync_source(&source).await.unwrap();
    assert_eq!(summaries(&s, &source).await, [("Caf\u{e9} M\u{fc}ller".to_owned(), "2027-06-12 12:00".to_owned())]);

    // NUL bytes (PostgreSQL refuses them in text): dropped, the sync completes and says so.
    feed.set(
        b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:koeln\r\nSEQUENCE:2\r\nDTSTAMP:20261201T000000Z\r\n\
          DTSTART;TZID=Europe/London:20270612T120000\r\nDTEND;TZID=Europe/London:20270612T140000\r\n\
          SUMMARY:Nul\x00l\x00\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
            .to_vec(),
    );
    let report = s.handler.sync_source(&source).await.unwrap();
    assert_eq!(report.events_written, 1, "{report:?}");
    assert_eq!(summaries(&s, &source).await, [("Null".to_owned(), "2027-06-12 12:00".to_owned())]);
    let (last, error, quarantined) = stored(&s, &source).await;
    assert_eq!((error, quarantined), (None, None));
    assert!(warnings(&last).iter().any(|w| w == "feed: 2 NUL bytes removed (not allowed in iCalendar)"), "{last}");
    s.finish().await;
}

#[tokio::test]
async fn a_download_cut_short_is_refused_and_nothing_is_deleted() {
    let s = setup("photographer-21").await;
    let feed = Feed::start().await;
    let source = feed_source(&s, &feed).await;
    let events: String = (1..=4)
        .map(|d| {
            let uid = format!("shoot-{d}");
            vevent(&uid, 0, &format!("202709{d:02}T100000"), &format!("202709{d:02}T110000"), "")
        })
        .collect();
    let whole = wrap(&events);
    feed.set(whole.clone());
    assert_eq!(s.handler.sync_source(&source).await.unwrap().events_written, 4);

    // The connection drops inside the second event's DTEND: no END lines at all.
    let cut = &whole[..whole.find("DTEND;TZID=Europe/London:20270902").unwrap() + 30];
    feed.set(cut);
    let report = s.handler.sync_source(&source).await.unwrap();
    let reason = report.quarantined.clone().unwrap_or_default();
    assert!(reason.contains("incomplete iCalendar"), "{report:?}");
    assert_eq!(summaries(&s, &source).await.len(), 4, "nothing deleted, nothing stretched");
    let (_, error, quarantined) = stored(&s, &source).await;
    assert_eq!((error.as_deref(), quarantined.as_deref()), (Some(reason.as_str()), Some(reason.as_str())));

    // The whole feed again: applied, and the source is clear.
    feed.set(whole);
    let report = s.handler.sync_source(&source).await.unwrap();
    assert!(report.quarantined.is_none(), "{report:?}");
    assert_eq!(stored(&s, &source).await.2, None);
    s.finish().await;
}

#[tokio::test]
async fn an_exdated_override_stays_deleted_and_duplicate_uids_keep_the_last() {
    let s = setup("photographer-22").await;
    let feed = Feed::start().await;
    let source = feed_source(&s, &feed).await;
    // Saturdays from 5 June 2027; the 12 June one (a wedding) moved to the morning.
    let master = |seq: i64, extra: &str| {
        vevent("season", seq, "20270605T140000", "20270605T220000", &format!("RRULE:FREQ=WEEKLY;COUNT=3\r\n{extra}"))
    };
    let wedding = "BEGIN:VEVENT\r\nUID:season\r\nSEQUENCE:0\r\nDTSTAMP:20261201T000000Z\r\n\
                   RECURRENCE-ID;TZID=Europe/London:20270612T140000\r\nDTSTART;TZID=Europe/London:20270612T100000\r\n\
                   DTEND;TZID=Europe/London:20270612T230000\r\nSUMMARY:wedding\r\nEND:VEVENT\r\n";
    let other = vevent("other", 0, "20270612T180000", "20270612T190000", "");
    feed.set(wrap(&format!("{}{wedding}{other}", master(0, ""))));
    s.handler.sync_source(&source).await.unwrap();
    assert_eq!(
        summaries(&s, &source).await,
        [
            ("season".to_owned(), "2027-06-05 14:00".to_owned()),
            ("wedding".to_owned(), "2027-06-12 10:00".to_owned()),
            ("other".to_owned(), "2027-06-12 18:00".to_owned()),
            ("season".to_owned(), "2027-06-19 14:00".to_owned()),
        ]
    );
    assert_eq!(s.conflicts().await.len(), 1);

    // The wedding is deleted: a newer master EXDATEs it, the old override still in the file.
    let exdate = "EXDATE;TZID=Europe/London:20270612T140000\r\n";
    feed.set(wrap(&format!("{}{wedding}{other}", master(1, exdate))));
    let report = s.handler.sync_source(&source).await.unwrap();
    assert_eq!(report.conflicts_resolved, 1, "{report:?}");
    assert_eq!(
        summaries(&s, &source).await,
        [
            ("season".to_owned(), "2027-06-05 14:00".to_owned()),
            ("other".to_owned(), "2027-06-12 18:00".to_owned()),
            ("season".to_owned(), "2027-06-19 14:00".to_owned()),
        ]
    );
    assert!(s.conflicts().await.is_empty());

    // Two copies of one event, tied: the last in the file wins, and the warning says so.
    // With them, an unreadable RRULE and a DTEND before its DTSTART, each reported.
    let first = vevent("dup", 0, "20270701T100000", "20270701T110000", "");
    let last = vevent("dup", 0, "20270702T100000", "20270702T110000", "");
    let bad_rule = vevent("bad-rule", 0, "20270710T100000", "20270710T110000", "RRULE:FREQ=SOMETIMES\r\n");
    let swapped = vevent("swapped", 0, "20270711T110000", "20270711T100000", "");
    feed.set(wrap(&format!("{}{wedding}{other}{first}{last}{bad_rule}{swapped}", master(1, exdate))));
    s.handler.sync_source(&source).await.unwrap();
    let shown: Vec<(String, String)> = summaries(&s, &source).await;
    assert_eq!(
        shown[3..],
        [
            ("dup".to_owned(), "2027-07-02 10:00".to_owned()),
            ("bad-rule".to_owned(), "2027-07-10 10:00".to_owned()),
            ("swapped".to_owned(), "2027-07-11 10:00".to_owned()),
        ]
    );
    let (last_report, ..) = stored(&s, &source).await;
    let said = warnings(&last_report);
    for expected in
        ["dup: 2 VEVENTs without RECURRENCE-ID", "bad-rule: unreadable RRULE", "swapped: DTEND before DTSTART"]
    {
        assert!(said.iter().any(|w| w.contains(expected)), "{expected}: {said:?}");
    }
    assert!(said.iter().any(|w| w.contains("the last in the file on a tie")), "{said:?}");
    s.finish().await;
}

/// A CalDAV server (a stand-in answering `sync-collection` and `calendar-multiget`: Radicale
/// re-serialises what it stores, so it never serves a fold inside a character or Latin-1)
/// whose objects only `decode()` can read right: their bytes survive the XML around them.
#[tokio::test]
async fn caldav_objects_reach_decode_as_bytes() {
    use axum::body::Bytes;
    let s = setup("photographer-23").await;
    let folded = b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:koeln\r\nDTSTART:20270612T100000Z\r\n\
                   DTEND:20270612T110000Z\r\nSUMMARY:K\xC3\r\n \xB6ln\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    let latin1 = b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:cafe\r\nDTSTART:20270613T100000Z\r\n\
                   DTEND:20270613T110000Z\r\nSUMMARY:Caf\xE9\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    let app = axum::Router::new().route(
        "/cal/",
        axum::routing::any(move |body: Bytes| async move {
            let request = String::from_utf8_lossy(&body);
            let mut xml = br#"<?xml version="1.0" encoding="utf-8"?><d:multistatus xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav">"#.to_vec();
            for (href, data) in [("/cal/a.ics", &folded[..]), ("/cal/b.ics", &latin1[..])] {
                xml.extend_from_slice(format!("<d:response><d:href>{href}</d:href><d:propstat><d:prop><d:getetag>\"1\"</d:getetag>").as_bytes());
                if request.contains("calendar-multiget") {
                    xml.extend_from_slice(b"<c:calendar-data>");
                    xml.extend_from_slice(data);
                    xml.extend_from_slice(b"</c:calendar-data>");
                }
                xml.extend_from_slice(b"</d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>");
            }
            if request.contains("sync-collection") {
                xml.extend_from_slice(b"<d:sync-token>http://example.com/sync/1</d:sync-token>");
            }
            xml.extend_from_slice(b"</d:multistatus>");
            (axum::http::StatusCode::MULTI_STATUS, [("content-type", "application/xml; charset=utf-8")], xml)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/cal/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let source = format!("cal_{}", uuid::Uuid::now_v7().simple());
    sqlx::query("INSERT INTO calendar_sources (id, tenant, supplier, kind, url) VALUES ($1, 't1', 'photographer-23', 'caldav', $2)")
        .bind(&source)
        .bind(&url)
        .execute(&s.db.pool)
        .await
        .unwrap();
    let report = s.handler.sync_source(&source).await.unwrap();
    assert_eq!((report.mode.as_str(), report.events_written), ("initial", 2), "{report:?}");
    assert_eq!(
        summaries(&s, &source).await,
        [
            ("K\u{f6}ln".to_owned(), "2027-06-12 10:00".to_owned()),
            ("Caf\u{e9}".to_owned(), "2027-06-13 10:00".to_owned())
        ]
    );
    s.finish().await;
}

/// A sync job whose last attempt fails (the feed answers 500) goes to the dead letters with
/// the reason on the source, not only in the job's history.
#[tokio::test]
async fn a_sync_job_that_gives_up_says_why_on_the_source() {
    use fleet_jobs::catalogue::CalendarSync;
    let s = setup("photographer-24").await;
    let env = fleet_tests::TestEnv::new().await;
    let app = axum::Router::new()
        .route("/feed.ics", axum::routing::get(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "down") }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let feed = Feed {
        body: Arc::new(Mutex::new(Vec::new())),
        url: format!("http://{}/feed.ics", listener.local_addr().unwrap()),
    };
    tokio::spawn(async move { axum::serve(listener, app).await });
    let source = feed_source(&s, &feed).await;
    let worker = env.worker(env.config("calendar", 1), fleet_worker::Registry::new().register(s.handler.clone())).await;
    let opts = fleet_jobs::EnqueueOptions { tenant: Some("t1".into()), max_attempts: Some(1), ..Default::default() };
    let job = env.client.enqueue_with(&CalendarSync { source_id: source.clone() }, opts).await.unwrap();
    fleet_tests::eventually("the sync to give up", std::time::Duration::from_secs(20), || async {
        (env.client.job_state("calendar", job.as_str()).await.unwrap() == Some(fleet_jobs::JobState::Dead))
            .then_some(())
    })
    .await;
    worker.shutdown().await;
    let (_, error, _) = stored(&s, &source).await;
    let error = error.unwrap_or_default();
    assert!(error.starts_with("gave up after 1 attempts") && error.contains("500"), "{error}");
    env.cleanup().await;
    s.finish().await;
}
