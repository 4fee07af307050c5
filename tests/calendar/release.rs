//! Releasing a quarantined source (`POST /v1/calendar/sources/{id}/release`, `fleetctl
//! calendar release`): the mass deletion that was held back is applied by the next sync,
//! once; the one after that is guarded again.

use super::*;
use fleet_calendar::store as calendar_store;
use fleet_tests::TestEnv;

async fn put_days(s: &Setup, prefix: &str, days: std::ops::Range<u32>) {
    for d in days {
        let uid = format!("{prefix}{d}");
        let (start, end) = (format!("202709{d:02}T100000"), format!("202709{d:02}T110000"));
        s.put(&uid, &wrap(&vevent(&uid, 0, &start, &end, ""))).await;
    }
}

#[tokio::test]
async fn a_released_source_applies_the_held_back_deletion_once() {
    let s = setup("photographer-9").await;
    let env = TestEnv::new().await;
    put_days(&s, "shoot-", 1..6).await;
    assert_eq!(s.sync().await.events_written, 5);
    for d in 1..5 {
        s.delete(&format!("shoot-{d}")).await;
    }
    let held = s.sync().await;
    assert!(held.quarantined.as_deref().unwrap_or_default().contains("would delete 4 of 5"), "{held:?}");
    assert_eq!(s.occurrences().await.len(), 5, "nothing deleted while quarantined");

    let job = calendar_store::release(&s.db.pool, &env.client, Some("t1"), &s.source).await.unwrap();
    assert!(env.client.job("calendar", job.as_str()).await.unwrap().is_some(), "the release enqueued a sync");
    let applied = s.sync().await;
    assert_eq!((applied.quarantined.clone(), applied.events_deleted), (None, 4), "{applied:?}");
    assert_eq!(s.occurrences().await.len(), 1);
    let view = calendar_store::get(&s.db.pool, Some("t1"), &s.source).await.unwrap();
    assert!(view.quarantined.is_none() && view.state.get(calendar_store::FORCE_APPLY).is_none(), "{:?}", view.state);

    // Once: the next mass deletion is held back again.
    put_days(&s, "again-", 10..15).await;
    s.sync().await;
    for d in 10..15 {
        s.delete(&format!("again-{d}")).await;
    }
    let held = s.sync().await;
    assert!(held.quarantined.is_some(), "{held:?}");
    env.cleanup().await;
    s.finish().await;
}
