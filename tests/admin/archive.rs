//! The archive of finished jobs: jobs ending in every state reach PostgreSQL with their
//! arguments, result, progress and error; the search API filters, matches text, ranges
//! over time and pages; a tenant's key sees only its own; nothing is lost or doubled when
//! the scheduler stops mid-drain or PostgreSQL is down; retention prunes in bounded
//! batches and keeps what is inside its window.

use super::{fleetctl, http};
use axum::http::StatusCode;
use chrono::{Duration as Days, Utc};
use fleet_jobs::catalogue::{ProbeAction, ProbeArgs};
use fleet_jobs::{CancelOutcome, EnqueueOptions};
use fleet_scheduler::api::{ApiState, app, auth};
use fleet_scheduler::archive::{self, FinalState, NewRow};
use fleet_scheduler::archiver::{ArchiveConfig, Archiver, RetentionRule};
use fleet_scheduler::retention::{self, RetentionConfig};
use fleet_tests::{TcpProxy, TestDb, TestEnv, n_final};
use fleet_worker::Registry;
use serde_json::{Value, json};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(20);

fn archiver(env: &TestEnv, db: &sqlx::PgPool, batch: usize) -> Archiver {
    Archiver::new(env.client.clone(), db.clone(), ArchiveConfig { batch, ..Default::default() })
}

async fn count_rows(db: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM job_archive").fetch_one(db).await.unwrap()
}

fn probe(action: ProbeAction, tag: &str) -> ProbeArgs {
    ProbeArgs { tag: Some(tag.into()), ..ProbeArgs::new(action) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_finishing_in_every_state_are_archived_with_their_args_result_and_error() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let stop = CancellationToken::new();
    let a = archiver(&env, &db.pool, 100);
    // The archiver marks the queue, from then on its finished jobs are queued for it.
    env.client.pause("default").await.unwrap();
    a.pass(&["default".into()], &stop).await;

    let acme = EnqueueOptions { tenant: Some("acme".into()), ..Default::default() };
    let report = ProbeAction::Report { steps: 2, step_ms: 0, pad_bytes: 0 };
    let ok = env.client.enqueue_with(&probe(report, "studio-7 calendar sync"), acme.clone()).await.unwrap();
    let dead = env.client.enqueue_with(&probe(ProbeAction::GiveUp, "doomed"), acme.clone()).await.unwrap();
    let expires = SystemTime::now() + Duration::from_millis(30);
    let expired = env
        .client
        .enqueue_with(&probe(ProbeAction::Fail, "late"), EnqueueOptions::default().deadline(expires))
        .await
        .unwrap();
    let later = env
        .client
        .enqueue_with(&probe(ProbeAction::Succeed, "never"), EnqueueOptions::default().delay(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert!(matches!(env.client.cancel("default", later.as_str()).await.unwrap(), CancelOutcome::Cancelled(_)));
    fleet_tests::eventually("the deadline to pass", T, || async { (SystemTime::now() > expires).then_some(()) }).await;
    let w = env.worker(env.config("default", 4), Registry::builtin()).await;
    let mut rx = w.events();
    env.client.resume("default").await.unwrap();
    n_final(&mut rx, 3, T).await;
    w.shutdown().await;
    assert_eq!(env.client.archive_pending("default").await.unwrap(), 4);

    let done = a.pass(&["default".into()], &stop).await;
    assert_eq!((done.read, done.written, done.missed), (4, 4, 0));
    assert_eq!(env.client.archive_pending("default").await.unwrap(), 0);
    let get = |id: String| {
        let db = db.pool.clone();
        async move { archive::get(&db, "default", &id, None, None).await.unwrap().expect("archived") }
    };
    let ok_id = ok.0.clone();
    let j = get(ok.0.clone()).await;
    assert_eq!((j.state.as_str(), j.kind.as_str(), j.tenant.as_deref()), ("succeeded", "probe", Some("acme")));
    assert_eq!(j.args["tag"], "studio-7 calendar sync");
    assert_eq!(j.result.as_ref().unwrap()["steps"], 2, "{:?}", j.result);
    let done = j.progress.as_ref().and_then(|p| p["done"].as_u64());
    assert!(matches!(done, Some(1..=2)), "the progress it last reported: {:?}", j.progress);
    assert_eq!((j.attempt, j.error.as_deref()), (1, None));
    assert!(j.enqueued_at.unwrap() <= j.finished_at);
    let j = get(dead.0.clone()).await;
    assert_eq!(j.state, "dead");
    assert_eq!(j.error.as_deref(), Some("probe: scripted give-up"));
    assert_eq!(j.history.as_array().unwrap().len(), 1);
    assert_eq!(get(expired.0.clone()).await.state, "expired");
    let j = get(later.0.clone()).await;
    assert_eq!((j.state.as_str(), j.attempt), ("cancelled", 0));

    // The same through the admin API, by state.
    let router = app(ApiState::new(env.client.clone(), db.pool.clone()), 1 << 20);
    let operator = auth::create_api_key(&db.pool, "ops", "viewer", &[auth::Role::Operator]).await.unwrap();
    let (s, body) = http(&router, "GET", "/admin/v1/archive/jobs?state=dead", Some(&operator), None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(page["jobs"][0]["id"], dead.0.as_str());
    let (s, body) =
        http(&router, "GET", &format!("/admin/v1/archive/jobs/default/{}", ok.0), Some(&operator), None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["result"]["steps"], 2);

    // And through fleetctl.
    let ctl = |args: &[&str]| fleetctl(&env, &[args, &["--database-url", db.url.as_str()][..]].concat());
    let (ok, out, err) = ctl(&["archive", "search", "--text", "STUDIO-7"]);
    assert!(
        ok && out.starts_with("FINISHED") && out.contains(ok_id.as_str()) && out.lines().count() == 2,
        "{out}{err}"
    );
    let (ok, out, err) = ctl(&["archive", "search", "--json", "--tenant", "acme", "--state", "dead"]);
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["jobs"][0]["id"], dead.0.as_str());
    let (ok, out, err) = ctl(&["archive", "show", "default", dead.0.as_str()]);
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["error"], "probe: scripted give-up");
    let (ok, _, err) = ctl(&["archive", "search", "--state", "running"]);
    assert!(!ok && err.contains("state must be one of"), "{err}");
    env.cleanup().await;
    db.drop_db().await;
}

/// 30 archived rows: i % 3 picks the queue, i % 4 the state, i % 2 the tenant, i % 5
/// the kind; row i finished i hours ago.
async fn thirty_rows(db: &sqlx::PgPool) -> Vec<NewRow> {
    let now = Utc::now();
    let rows: Vec<NewRow> = (0..30)
        .map(|i| NewRow {
            tenant: Some(["acme", "globex"][i % 2].into()),
            queue: ["default", "mail", "images"][i % 3].into(),
            id: format!("job-{i:02}"),
            attempt: 1,
            kind: format!("kind{}", i % 5),
            state: FinalState::ALL[i % 4],
            args: json!({"supplier": format!("studio-{i}"), "n": i}),
            result: None,
            error: (i % 4 == 1).then(|| format!("calendar feed answered 50{} for studio-{i}", i % 10)),
            progress: None,
            history: json!([]),
            batch: None,
            enqueued_at: Some(now - Days::hours(i as i64 + 1)),
            started_at: None,
            finished_at: now - Days::hours(i as i64),
        })
        .collect();
    assert_eq!(archive::insert(db, &rows).await.unwrap(), 30);
    assert_eq!(archive::insert(db, &rows).await.unwrap(), 0, "a second copy changes nothing");
    rows
}

async fn ids(router: &axum::Router, key: &str, query: &str) -> (Vec<String>, Option<String>) {
    let (s, body) = http(router, "GET", query, Some(key), None).await;
    assert_eq!(s, StatusCode::OK, "{query}: {body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    let ids = page["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_owned()).collect();
    (ids, page["next"].as_str().map(str::to_owned))
}

fn expect(rows: &[NewRow], keep: impl Fn(&NewRow) -> bool) -> Vec<String> {
    // Newest first: row i finished i hours ago.
    rows.iter().filter(|r| keep(r)).map(|r| r.id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_filters_matches_text_ranges_over_time_pages_and_scopes_tenants() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let rows = thirty_rows(&db.pool).await;
    let router = app(ApiState::new(env.client.clone(), db.pool.clone()), 1 << 20);
    let op = auth::create_api_key(&db.pool, "ops", "viewer", &[auth::Role::Operator]).await.unwrap();
    let acme = auth::create_api_key(&db.pool, "acme", "app", &[auth::Role::Enqueue]).await.unwrap();
    let base = "/admin/v1/archive/jobs?limit=500";

    let cases: Vec<(String, Vec<String>)> = vec![
        (format!("{base}&queue=mail"), expect(&rows, |r| r.queue == "mail")),
        (format!("{base}&state=dead"), expect(&rows, |r| r.state == FinalState::Dead)),
        (
            format!("{base}&queue=mail&state=succeeded"),
            expect(&rows, |r| r.queue == "mail" && r.state == FinalState::Succeeded),
        ),
        (format!("{base}&kind=kind3"), expect(&rows, |r| r.kind == "kind3")),
        (format!("{base}&tenant=globex"), expect(&rows, |r| r.tenant.as_deref() == Some("globex"))),
        // Text in the arguments, and in the error (case-insensitive).
        (format!("{base}&q=studio-1"), expect(&rows, |r| r.args["supplier"].as_str().unwrap().starts_with("studio-1"))),
        (
            format!("{base}&q=FEED%20ANSWERED%20505"),
            expect(&rows, |r| r.error.as_deref().is_some_and(|e| e.contains("505"))),
        ),
        (format!("{base}&q=50%25"), vec![]),
    ];
    for (query, want) in cases {
        assert!(!want.is_empty() || query.ends_with("%25"), "{query}");
        assert_eq!(ids(&router, &op, &query).await.0, want, "{query}");
    }
    // A time range: finished between 10.5 and 4.5 hours ago (rows 5 to 10).
    let (from, to) = (Utc::now() - Days::minutes(630), Utc::now() - Days::minutes(270));
    let q = format!("{base}&from={}&to={}", urlencode(&from.to_rfc3339()), urlencode(&to.to_rfc3339()));
    assert_eq!(ids(&router, &op, &q).await.0, (5..=10).map(|i| format!("job-{i:02}")).collect::<Vec<_>>());

    // Pages of 7: every row once, newest first, then no cursor.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/admin/v1/archive/jobs?limit=7&cursor={c}"),
            None => "/admin/v1/archive/jobs?limit=7".into(),
        };
        let (page, next) = ids(&router, &op, &q).await;
        assert!(page.len() <= 7);
        seen.extend(page);
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, expect(&rows, |_| true));

    // A tenant sees its own jobs only, whatever it asks for.
    let own = expect(&rows, |r| r.tenant.as_deref() == Some("acme"));
    assert_eq!(ids(&router, &acme, "/v1/archive/jobs?limit=500").await.0, own);
    assert_eq!(ids(&router, &acme, "/v1/archive/jobs?limit=500&tenant=globex").await.0, own);
    let (s, _) = http(&router, "GET", "/v1/archive/jobs/default/job-00", Some(&acme), None).await;
    assert_eq!(s, StatusCode::OK, "job-00 is acme's");
    let (s, _) = http(&router, "GET", "/v1/archive/jobs/images/job-05", Some(&acme), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "job-05 is globex's");
    assert_eq!(http(&router, "GET", base, Some(&acme), None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(http(&router, "GET", base, None, None).await.0, StatusCode::UNAUTHORIZED);
    for bad in
        ["state=running", "q=ab", "cursor=nonsense", "limit=0", "from=2026-12-05T00:00:00Z&to=2026-12-04T00:00:00Z"]
    {
        let (s, body) = http(&router, "GET", &format!("/admin/v1/archive/jobs?{bad}"), Some(&op), None).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
    }
    // Described in the OpenAPI document.
    let (_, doc) = http(&router, "GET", "/openapi.json", None, None).await;
    let doc: Value = serde_json::from_str(&doc).unwrap();
    for path in [
        "/admin/v1/archive/jobs",
        "/admin/v1/archive/jobs/{queue}/{id}",
        "/v1/archive/jobs",
        "/v1/archive/jobs/{queue}/{id}",
    ] {
        assert!(doc["paths"][path]["get"].is_object(), "{path}");
    }
    for schema in ["ArchivedJob", "ArchivedSummary", "ArchivePage"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
    env.cleanup().await;
    db.drop_db().await;
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_or_doubled_when_the_scheduler_stops_mid_drain_or_postgres_is_down() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let stop = CancellationToken::new();
    archiver(&env, &db.pool, 10).pass(&["default".into()], &stop).await;
    let w = env.worker(env.config("default", 4), Registry::builtin()).await;
    let mut rx = w.events();
    let ids = env.client.enqueue_bulk((0..25).map(|i| probe(ProbeAction::Succeed, &format!("n{i}")))).await.unwrap();
    n_final(&mut rx, 25, T).await;
    w.shutdown().await;
    assert_eq!(env.client.archive_pending("default").await.unwrap(), 25);

    // A scheduler copies a batch and stops before dropping it from the list.
    let (entries, done) = archiver(&env, &db.pool, 10).copy("default").await.unwrap();
    assert_eq!((entries.len(), done.written), (10, 10));
    assert_eq!(env.client.archive_pending("default").await.unwrap(), 25, "nothing dropped uncommitted");

    // PostgreSQL goes away: the copy fails and the entries stay.
    let proxy = TcpProxy::start(&db.server()).await;
    let via = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect(&db.url_via(proxy.port))
        .await
        .unwrap();
    proxy.cut();
    assert!(archiver(&env, &via, 10).drain_batch("default").await.is_err());
    assert_eq!(env.client.archive_pending("default").await.unwrap(), 25);

    // Another scheduler (PostgreSQL back) drains it all: every job once.
    let done = archiver(&env, &db.pool, 10).pass(&["default".into()], &stop).await;
    assert_eq!((done.read, done.written, done.missed), (25, 15, 0));
    assert_eq!(env.client.archive_pending("default").await.unwrap(), 0);
    let archived: Vec<String> =
        sqlx::query_scalar("SELECT id FROM job_archive ORDER BY id").fetch_all(&db.pool).await.unwrap();
    let mut want: Vec<String> = ids.into_iter().map(|i| i.0).collect();
    want.sort();
    assert_eq!(archived, want);
    // A stale drop (entries another scheduler already dropped) drops nothing.
    assert!(!env.client.archive_done("default", &entries).await.unwrap());
    env.cleanup().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_in_bounded_batches_and_keeps_what_is_inside_its_window() {
    let db = TestDb::new().await;
    let now = Utc::now();
    let row = |i: usize, queue: &str, state: FinalState, age_days: i64| NewRow {
        tenant: None,
        queue: queue.into(),
        id: format!("{queue}-{i}"),
        attempt: 1,
        kind: "probe".into(),
        state,
        args: json!({}),
        result: None,
        error: None,
        progress: None,
        history: json!([]),
        batch: None,
        enqueued_at: None,
        started_at: None,
        finished_at: now - Days::days(age_days),
    };
    let mut rows: Vec<NewRow> = (0..12).map(|i| row(i, "default", FinalState::Succeeded, 40)).collect();
    rows.extend((12..15).map(|i| row(i, "default", FinalState::Succeeded, 1)));
    rows.extend((0..4).map(|i| row(i, "mail", FinalState::Dead, 40)));
    rows.extend((4..6).map(|i| row(i, "mail", FinalState::Dead, 100)));
    archive::insert(&db.pool, &rows).await.unwrap();
    for (id, age) in [("old-1", 40), ("old-2", 31), ("new-1", 29)] {
        sqlx::query(
            "INSERT INTO webhook_messages (id, tenant, event_type, payload, created_at)
             VALUES ($1, 't', 'e', '{}', now() - make_interval(days => $2))",
        )
        .bind(id)
        .bind(age)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    // Dead jobs of `mail` are kept 90 days; everything else 30.
    let config = ArchiveConfig {
        retention: vec![RetentionRule { queue: Some("mail".into()), state: Some("dead".into()), days: 90 }],
        ..Default::default()
    };
    let tables = RetentionConfig { batch: 5, ..Default::default() };
    let targets = retention::targets(&config, &tables);
    let succeeded = targets.iter().find(|t| t.name == "job_archive:*:succeeded").unwrap();
    assert_eq!(retention::prune_batch(&db.pool, succeeded, 5).await.unwrap(), 5, "one statement, one batch");
    assert_eq!(rows_of(&db.pool, "default").await, 10);

    let deleted = retention::pass(&db.pool, &config, &tables).await;
    assert!(deleted.contains(&("job_archive:*:succeeded".into(), 7)), "{deleted:?}");
    assert!(deleted.contains(&("job_archive:mail:dead".into(), 2)), "{deleted:?}");
    assert!(deleted.contains(&("webhook_messages".into(), 2)), "{deleted:?}");
    let left: Vec<String> =
        sqlx::query_scalar("SELECT id FROM job_archive ORDER BY id").fetch_all(&db.pool).await.unwrap();
    assert_eq!(left, ["default-12", "default-13", "default-14", "mail-0", "mail-1", "mail-2", "mail-3"]);
    let left: Vec<String> = sqlx::query_scalar("SELECT id FROM webhook_messages").fetch_all(&db.pool).await.unwrap();
    assert_eq!(left, ["new-1"]);
    assert!(retention::pass(&db.pool, &config, &tables).await.is_empty(), "nothing more to prune");
    assert_eq!(count_rows(&db.pool).await, 7);
    db.drop_db().await;
}

async fn rows_of(db: &sqlx::PgPool, queue: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM job_archive WHERE queue = $1").bind(queue).fetch_one(db).await.unwrap()
}

/// Search answer times on 1,000,000 archived jobs, through the API's router (in process).
/// A benchmark, not a test: `cargo test -p fleet-tests --test admin -- --ignored
/// --nocapture bench_archive_search` prints the figures (BENCHMARKS.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: loads 1,000,000 rows and prints figures"]
async fn bench_archive_search() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let n: i64 = std::env::var("FLEET_BENCH_ARCHIVE_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let t = std::time::Instant::now();
    // 1,000 tenants, 5 queues, 8 kinds; 85 % succeeded, 5 % each dead, cancelled, expired
    // (the dead with an error); finished over the last 30 days.
    sqlx::query(
        "INSERT INTO job_archive (tenant, queue, id, attempt, kind, state, args, result, error, history,
                                  enqueued_at, finished_at)
         SELECT 'tenant-' || (i % 1000),
                (ARRAY['default','mail','images','calendar','webhooks'])[1 + i % 5],
                md5(i::text), 1 + (i % 3),
                (ARRAY['calendar.sync','comms.sync','image.analyze','image.variants','webhook.deliver',
                       'webhook.publish','calendar.push','probe'])[1 + (i / 7) % 8],
                CASE WHEN i % 20 = 0 THEN 'dead' WHEN i % 20 = 1 THEN 'cancelled'
                     WHEN i % 20 = 2 THEN 'expired' ELSE 'succeeded' END,
                jsonb_build_object('supplier', 'studio-' || (i % 50000), 'source', 'src-' || md5((i % 9973)::text),
                                   'url', 'https://cal.example.com/' || md5((i % 4999)::text) || '.ics'),
                CASE WHEN i % 20 = 3 THEN '{\"events\": 12}'::jsonb END,
                CASE WHEN i % 20 = 0 THEN 'calendar feed answered ' || (500 + (i / 20) % 4) || ' for studio-' || (i % 50000) END,
                '[]'::jsonb,
                now() - make_interval(secs => (i * 2.592)::float8 + 5),
                now() - make_interval(secs => (i * 2.592)::float8)
           FROM generate_series(1, $1::bigint) AS i",
    )
    .bind(n)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE job_archive").execute(&db.pool).await.unwrap();
    println!("loaded {n} rows in {:.1} s", t.elapsed().as_secs_f64());
    let router = app(ApiState::new(env.client.clone(), db.pool.clone()), 1 << 20);
    let op = auth::create_api_key(&db.pool, "ops", "viewer", &[auth::Role::Operator]).await.unwrap();
    let day_ago = urlencode(&(Utc::now() - Days::days(1)).to_rfc3339());
    let week_ago = urlencode(&(Utc::now() - Days::days(7)).to_rfc3339());
    let two_weeks_ago = urlencode(&(Utc::now() - Days::days(14)).to_rfc3339());
    let queries = [
        ("newest, no filter".to_owned(), "/admin/v1/archive/jobs".to_owned()),
        ("queue + state=dead".into(), "/admin/v1/archive/jobs?queue=default&state=dead".into()),
        ("tenant".into(), "/admin/v1/archive/jobs?tenant=tenant-417".into()),
        ("kind + last 24 h".into(), format!("/admin/v1/archive/jobs?kind=image.analyze&from={day_ago}")),
        (
            "state=cancelled, a week 2 weeks ago".into(),
            format!("/admin/v1/archive/jobs?state=cancelled&from={two_weeks_ago}&to={week_ago}"),
        ),
        ("text, one supplier (20 rows)".into(), "/admin/v1/archive/jobs?q=studio-42170".into()),
        ("text in errors (12,500 rows)".into(), "/admin/v1/archive/jobs?q=answered%20503".into()),
        ("text, no match".into(), "/admin/v1/archive/jobs?q=no-such-text-anywhere".into()),
        ("tenant + text".into(), "/admin/v1/archive/jobs?tenant=tenant-17&q=studio-1".into()),
        (
            "tenant + state=dead + 7 days".into(),
            format!("/admin/v1/archive/jobs?tenant=tenant-20&state=dead&from={week_ago}"),
        ),
    ];
    println!("{:<40} {:>6} {:>9} {:>9}", "query (50 rows a page)", "rows", "median", "max");
    for (name, q) in &queries {
        let mut times = Vec::new();
        let mut got = 0;
        for _ in 0..7 {
            let t = std::time::Instant::now();
            let (s, body) = http(&router, "GET", q, Some(&op), None).await;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(s, StatusCode::OK, "{q}: {body}");
            got = serde_json::from_str::<Value>(&body).unwrap()["jobs"].as_array().unwrap().len();
        }
        times.sort_by(f64::total_cmp);
        println!("{name:<40} {got:>6} {:>7.1}ms {:>7.1}ms", times[3], times[6]);
    }
    // Paging: 100 pages of 50 in a row, each through the previous page's cursor.
    for (name, base) in [
        ("pages, no filter", "/admin/v1/archive/jobs?"),
        ("pages, queue + state", "/admin/v1/archive/jobs?queue=images&state=succeeded&"),
    ] {
        let mut cursor = String::new();
        let mut times = Vec::new();
        for _ in 0..100 {
            let t = std::time::Instant::now();
            let (_, body) = http(&router, "GET", &format!("{base}limit=50{cursor}"), Some(&op), None).await;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            let page: Value = serde_json::from_str(&body).unwrap();
            cursor = format!("&cursor={}", page["next"].as_str().expect("a next page"));
        }
        let last = times[99];
        times.sort_by(f64::total_cmp);
        println!("{name:<40} {:>6} {:>7.1}ms {:>7.1}ms  (page 100: {last:.1}ms)", 100, times[50], times[99]);
    }
    env.cleanup().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_replayed_and_dead_again_keeps_both_endings() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let stop = CancellationToken::new();
    let a = archiver(&env, &db.pool, 100);
    a.pass(&["default".into()], &stop).await;
    let w = env.worker(env.config("default", 2), Registry::builtin()).await;
    let mut rx = w.events();
    let id = env.client.enqueue(&probe(ProbeAction::GiveUp, "twice")).await.unwrap();
    n_final(&mut rx, 1, T).await;
    let only = fleet_jobs::admin::DeadFilter { ids: vec![id.0.clone()], ..Default::default() };
    assert_eq!(env.client.replay("default", &only, None).await.unwrap(), 1);
    n_final(&mut rx, 1, T).await;
    w.shutdown().await;
    // Both endings wait in one batch, under the same attempt number (a replay starts again).
    let done = a.pass(&["default".into()], &stop).await;
    assert_eq!((done.read, done.written), (2, 2));
    let endings: Vec<(String, i32)> =
        sqlx::query_as("SELECT state, attempt FROM job_archive WHERE id = $1 ORDER BY finished_at")
            .bind(&id.0)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(endings, [("dead".to_owned(), 1), ("dead".to_owned(), 1)]);
    env.cleanup().await;
    db.drop_db().await;
}
