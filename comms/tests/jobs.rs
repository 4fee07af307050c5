//! `comms.sync`, one attempt at a time through `fleet_kit::testing`, with a database of
//! each test's own.

use fleet_comms::jobs::SyncSource;
use fleet_jobs::catalogue::CommsSync;
use fleet_kit::testing::{TestDb, TestJob, assert_give_up};
use sqlx::PgPool;
use std::time::{Duration, Instant};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

async fn source(db: &PgPool, id: &str, tenant: &str, kind: &str, config: &str) {
    sqlx::query("INSERT INTO comms_sources (id, tenant, kind, config) VALUES ($1, $2, $3, $4::jsonb)")
        .bind(id)
        .bind(tenant)
        .bind(kind)
        .bind(config)
        .execute(db)
        .await
        .unwrap();
}

async fn in_app(db: &PgPool, tenant: &str, id: &str, body: &str) {
    sqlx::query(
        "INSERT INTO platform_messages (tenant, id, client, sender, direction, body, sent_at)
         VALUES ($1, $2, 'anna', 'anna', 'inbound', $3, now())",
    )
    .bind(tenant)
    .bind(id)
    .bind(body)
    .execute(db)
    .await
    .unwrap();
}

async fn count(db: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.unwrap()
}

fn sync(id: &str) -> CommsSync {
    CommsSync { source_id: id.into() }
}

#[tokio::test]
async fn an_unknown_source_or_another_tenants_gives_up_with_the_same_words() {
    let db = TestDb::new(&MIGRATOR).await;
    source(&db.pool, "theirs", "t2", "in_app", "{}").await;
    in_app(&db.pool, "t2", "m1", "hello").await;
    let handler = SyncSource::new(db.pool.clone(), None);
    let job = TestJob::new().tenant("t1");

    let out = job.perform(&handler, sync("gone")).await;
    assert_eq!(assert_give_up(&out), "comms source gone not found (removed?)");
    let out = job.perform(&handler, sync("theirs")).await;
    assert_eq!(assert_give_up(&out), "comms source theirs not found (removed?)");
    assert_eq!(count(&db.pool, "SELECT count(*) FROM comms_sources WHERE last_sync_at IS NULL").await, 1);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM comms_entries").await, 0, "nothing read for another tenant");
    db.drop_db().await;
}

#[tokio::test]
async fn an_in_app_source_with_settings_gives_up_and_records_why() {
    let db = TestDb::new(&MIGRATOR).await;
    source(&db.pool, "app", "t1", "in_app", r#"{"host": "imap.example.com"}"#).await;
    let handler = SyncSource::new(db.pool.clone(), None);

    let out = TestJob::new().tenant("t1").perform(&handler, sync("app")).await;
    assert!(assert_give_up(&out).contains("in_app sources take no settings"), "{out:?}");
    let error: Option<String> =
        sqlx::query_scalar("SELECT last_error FROM comms_sources").fetch_one(&db.pool).await.unwrap();
    assert!(error.is_some_and(|e| e.contains("take no settings")), "the source shows why");
    db.drop_db().await;
}

#[tokio::test]
async fn an_in_app_source_syncs_its_tenants_messages_into_the_timeline_once() {
    let db = TestDb::new(&MIGRATOR).await;
    source(&db.pool, "app", "t1", "in_app", "{}").await;
    in_app(&db.pool, "t1", "m1", "hello").await;
    in_app(&db.pool, "t1", "m2", "are you free on Friday?").await;
    in_app(&db.pool, "t2", "m3", "another tenant's").await;
    let handler = SyncSource::new(db.pool.clone(), None);
    let job = TestJob::new().tenant("t1");

    // Rows are read once every older transaction of the cluster has finished: another
    // test's open transaction (other databases share the server's transaction ids) can
    // hold them back for a moment, so sync until they land, as the schedule would.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        job.perform(&handler, sync("app")).await.unwrap();
        if count(&db.pool, "SELECT count(*) FROM comms_entries").await >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the in-app messages were not read within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    job.perform(&handler, sync("app")).await.unwrap();
    let entries: Vec<(String, String, String)> =
        sqlx::query_as("SELECT tenant, client, channel FROM comms_entries ORDER BY occurred_at, id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let want = ("t1".to_owned(), "anna".to_owned(), "in_app".to_owned());
    assert_eq!(entries, [want.clone(), want], "the tenant's two messages, once each");
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM comms_outbox WHERE tenant = 't1' AND event_type = 'comms.entry.created'")
            .await,
        2,
        "one event per new entry"
    );
    assert_eq!(count(&db.pool, "SELECT count(*) FROM comms_sources WHERE last_ok_at IS NOT NULL").await, 1);
    db.drop_db().await;
}
