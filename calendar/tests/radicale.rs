//! Against a real Radicale (`scripts/radicale.sh` starts it; `FLEET_TEST_CALDAV_URL`, default
//! `http://127.0.0.1:5232`, user `fleet`/`fleet`). Every test gets its own calendar collection.

use fleet_calendar::caldav::{
    CalDavClient, ClientOptions, CollectionState, Precondition, PullMode, WriteOutcome, pull_changes,
};
use fleet_calendar::push::{PushOutcome, push_event};
use fleet_calendar::{ExpandOptions, decode, expand, parse};

fn base() -> String {
    std::env::var("FLEET_TEST_CALDAV_URL").unwrap_or_else(|_| "http://127.0.0.1:5232".to_owned())
}

async fn new_calendar() -> CalDavClient {
    calendar_with(ClientOptions::default()).await
}

async fn calendar_with(options: ClientOptions) -> CalDavClient {
    let url = format!("{}/fleet/test-{}/", base().trim_end_matches('/'), uuid::Uuid::now_v7());
    let client =
        CalDavClient::new(&url, Some("fleet".to_owned()), Some("fleet".to_owned().into()), options).expect("client");
    client
        .make_calendar()
        .await
        .unwrap_or_else(|e| panic!("Radicale at {} is not reachable ({e}): run scripts/radicale.sh", base()));
    client
}

fn event(uid: &str, sequence: i64, dtstamp: &str, start: &str, end: &str, summary: &str) -> String {
    format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Fleet//test//EN\r\nBEGIN:VEVENT\r\nUID:{uid}\r\nSEQUENCE:{sequence}\r\n\
         DTSTAMP:{dtstamp}\r\nDTSTART;TZID=Europe/London:{start}\r\nDTEND;TZID=Europe/London:{end}\r\nSUMMARY:{summary}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
}

async fn put_new(client: &CalDavClient, uid: &str, body: &str) -> String {
    match client.put(&client.href_for_uid(uid), body.as_bytes(), &Precondition::Create).await.unwrap() {
        WriteOutcome::Written(_) => client.href_for_uid(uid),
        other => panic!("create {uid}: {other:?}"),
    }
}

#[tokio::test]
async fn incremental_sync_sees_create_change_move_and_delete() {
    let cal = new_calendar().await;
    let a = put_new(
        &cal,
        "a@fleet",
        &event("a@fleet", 0, "20261201T000000Z", "20270612T140000", "20270612T220000", "Smith wedding"),
    )
    .await;
    let b = put_new(
        &cal,
        "b@fleet",
        &event("b@fleet", 0, "20261201T000000Z", "20270619T140000", "20270619T220000", "Jones wedding"),
    )
    .await;

    let first = pull_changes(&cal, &CollectionState::default()).await.unwrap();
    assert_eq!(first.mode, PullMode::Initial);
    assert_eq!(first.changed.len(), 2);
    assert!(first.state.token.is_some());

    // Nothing changed: nothing fetched.
    let idle = pull_changes(&cal, &first.state).await.unwrap();
    assert_eq!(idle.mode, PullMode::Incremental);
    assert!(idle.changed.is_empty() && idle.removed.is_empty());

    // Move A (new time), delete B, create C.
    let etag_a = first.state.etags[&a].clone().unwrap();
    let moved = event("a@fleet", 1, "20261202T000000Z", "20270613T120000", "20270613T200000", "Smith wedding (moved)");
    assert!(matches!(
        cal.put(&a, moved.as_bytes(), &Precondition::Match(etag_a)).await.unwrap(),
        WriteOutcome::Written(_)
    ));
    assert!(matches!(cal.delete(&b, first.state.etags[&b].as_deref()).await.unwrap(), WriteOutcome::Written(_)));
    let c = put_new(
        &cal,
        "c@fleet",
        &event("c@fleet", 0, "20261201T000000Z", "20270613T180000", "20270613T230000", "Evening shoot"),
    )
    .await;

    let second = pull_changes(&cal, &idle.state).await.unwrap();
    assert_eq!(second.mode, PullMode::Incremental);
    let mut changed: Vec<&str> = second.changed.iter().map(|o| o.href.as_str()).collect();
    changed.sort();
    assert_eq!(changed, [a.as_str(), c.as_str()]);
    assert_eq!(second.removed, std::slice::from_ref(&b));

    // The moved A now clashes with C.
    let mut all = String::new();
    for object in &second.changed {
        all.push_str(&String::from_utf8_lossy(&object.body));
    }
    let calendar = parse(&decode(all.as_bytes()).unwrap());
    let window =
        ExpandOptions::window("2027-01-01T00:00:00Z".parse().unwrap(), "2028-01-01T00:00:00Z".parse().unwrap());
    let occurrences = expand(&calendar, &window).occurrences;
    assert_eq!(occurrences.len(), 2);
    assert!(occurrences[0].end > occurrences[1].start, "{occurrences:?}");

    // A refused token falls back to an ETag listing diffed against the stored state.
    let mut stale = second.state.clone();
    stale.token = Some("http://radicale.org/ns/sync/not-a-token".to_owned());
    stale.etags.insert(format!("{}ghost.ics", cal.collection().path()), Some("\"x\"".to_owned()));
    let fallback = pull_changes(&cal, &stale).await.unwrap();
    assert_eq!(fallback.mode, PullMode::Listing);
    assert!(fallback.changed.is_empty());
    assert_eq!(fallback.removed.len(), 1);
    assert!(fallback.state.token.is_some());
    cal.delete_collection().await.unwrap();
}

#[tokio::test]
async fn push_back_is_idempotent_and_meets_a_concurrent_edit() {
    let cal = new_calendar().await;
    let ours =
        event("booking-42@fleet", 0, "20261201T100000Z", "20270703T120000", "20270703T180000", "Booked via Fleet");
    let first = push_event(&cal, "booking-42@fleet", ours.as_bytes(), None).await.unwrap();
    let PushOutcome::Written { href, etag: Some(etag) } = first else { panic!("{first:?}") };
    // A retry of the same push (we lost the answer): If-None-Match fails, content is identical.
    let retry = push_event(&cal, "booking-42@fleet", ours.as_bytes(), None).await.unwrap();
    assert!(matches!(retry, PushOutcome::Unchanged { .. }), "{retry:?}");

    // The supplier edits it in their calendar app (SEQUENCE 1).
    let theirs =
        event("booking-42@fleet", 1, "20261201T110000Z", "20270703T130000", "20270703T190000", "Moved by the supplier");
    assert!(matches!(
        cal.put(&href, theirs.as_bytes(), &Precondition::Match(etag.clone())).await.unwrap(),
        WriteOutcome::Written(_)
    ));

    // Our older update (still SEQUENCE 0 base, stale ETag) meets it: 412, theirs is newer, kept.
    let stale_update =
        event("booking-42@fleet", 0, "20261201T105000Z", "20270703T120000", "20270703T170000", "Fleet edit");
    let outcome = push_event(&cal, "booking-42@fleet", stale_update.as_bytes(), Some(&etag)).await.unwrap();
    let PushOutcome::KeptTheirs(kept) = outcome else { panic!("{outcome:?}") };
    assert!(String::from_utf8_lossy(&kept.body).contains("Moved by the supplier"));

    // A newer edit of ours (SEQUENCE 2) wins over theirs after the 412.
    let newer =
        event("booking-42@fleet", 2, "20261201T120000Z", "20270703T140000", "20270703T200000", "Rebooked via Fleet");
    let outcome = push_event(&cal, "booking-42@fleet", newer.as_bytes(), Some(&etag)).await.unwrap();
    assert!(matches!(outcome, PushOutcome::Written { .. }), "{outcome:?}");
    let now = cal.get(&href).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&now.body).contains("Rebooked via Fleet"));
    cal.delete_collection().await.unwrap();
}
