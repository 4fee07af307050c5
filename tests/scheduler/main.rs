//! The scheduler against real Redis and PostgreSQL: exactly once per tick with several
//! replicas, missed ticks, schedules edited at run time, and the HTTP API.

mod api;
mod fleetctl;
mod progress;
mod sources;

use chrono::{DateTime, Duration as ChronoDuration, SubsecRound, Utc};
use fleet_jobs::health::{Restart, TaskState, Tasks};
use fleet_scheduler::schedule::{Missed, ScheduleSpec};
use fleet_scheduler::ticker::Ticker;
use fleet_tests::{TestDb, TestEnv, eventually};
use std::collections::BTreeSet;
use std::time::Duration;

fn every_second(name: &str) -> ScheduleSpec {
    ScheduleSpec {
        name: name.into(),
        cron: "* * * * * *".into(),
        timezone: "UTC".into(),
        kind: "probe".into(),
        args: serde_json::json!({"do": "succeed"}),
        queue: None,
        priority: None,
        max_attempts: None,
        missed: Missed::Skip,
        catch_up_secs: 0,
        paused: false,
        dedup: None,
    }
}

/// The run-at times (the tick times) of every job on the default queue.
async fn tick_times(env: &TestEnv) -> Vec<DateTime<Utc>> {
    let all: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(env.client.keys("default").jobs)
        .query_async(&mut env.client.connection())
        .await
        .unwrap();
    let mut out: Vec<DateTime<Utc>> = all
        .values()
        .map(|e| serde_json::from_str::<fleet_jobs::Envelope>(e).unwrap())
        .map(|e| DateTime::from_timestamp_millis(e.run_at as i64).unwrap())
        .collect();
    out.sort();
    out
}

fn t0() -> DateTime<Utc> {
    (Utc::now() - ChronoDuration::seconds(600)).trunc_subsecs(0)
}

fn at(t0: DateTime<Utc>, secs: i64, ms: i64) -> DateTime<Utc> {
    t0 + ChronoDuration::seconds(secs) + ChronoDuration::milliseconds(ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_enqueue_each_of_30_ticks_exactly_once_when_one_dies_midway() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let mut replicas: Vec<Ticker> = (0..3)
        .map(|_| Ticker::new(env.client.clone(), Some(db.pool.clone()), vec![every_second("heartbeat")]))
        .collect();
    for r in &mut replicas {
        assert!(r.reload().await.is_empty());
    }
    let t0 = t0();
    // Time is driven: each step is one second later; every live replica handles it at once.
    for step in 0..=30 {
        if step == 15 {
            replicas.remove(1); // killed midway
        }
        let now = at(t0, step, 250);
        futures::future::join_all(replicas.iter_mut().map(|r| r.tick(now))).await;
    }
    let ticks = tick_times(&env).await;
    let expected: Vec<DateTime<Utc>> = (1..=30).map(|s| at(t0, s, 0)).collect();
    assert_eq!(ticks, expected, "one job per tick, no tick skipped or doubled");
    assert_eq!(env.stats("default").await.enqueued, 30);
    let last: DateTime<Utc> = sqlx::query_scalar("SELECT last_fired_at FROM schedule_state WHERE name = 'heartbeat'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(last, at(t0, 30, 0));
    db.drop_db().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_ticks_are_skipped_or_caught_up_as_configured() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let t0 = t0();
    let mut skip = every_second("skipper");
    skip.missed = Missed::Skip;
    let mut catch = every_second("catcher");
    catch.missed = Missed::CatchUp;
    catch.catch_up_secs = 5;
    let specs = vec![skip, catch];

    let mut before = Ticker::new(env.client.clone(), Some(db.pool.clone()), specs.clone());
    before.reload().await;
    for step in 0..=10 {
        before.tick(at(t0, step, 250)).await;
    }
    drop(before); // every scheduler is down from t0+10 s to t0+20 s
    let mut after = Ticker::new(env.client.clone(), Some(db.pool.clone()), specs);
    after.reload().await;
    let report = after.tick(at(t0, 20, 250)).await;
    let enqueued: BTreeSet<(String, i64)> =
        report.enqueued.iter().map(|(n, t)| (n.clone(), (*t - t0).num_seconds())).collect();
    let caught: BTreeSet<(String, i64)> = (16..=20).map(|s| ("catcher".to_owned(), s)).collect();
    assert_eq!(enqueued, caught, "catch-up enqueues the last 5 s of missed ticks; skip enqueues none");
    let missed: Vec<(String, i64)> = sqlx::query_as("SELECT name, missed_ticks FROM schedule_state ORDER BY name")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(missed, vec![("catcher".to_owned(), 5), ("skipper".to_owned(), 10)]);
    // From then on both run normally.
    let report = after.tick(at(t0, 21, 250)).await;
    assert_eq!(report.enqueued.len(), 2);
    db.drop_db().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_in_postgres_are_picked_up_paused_and_resumed_at_run_time() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let mut ticker = Ticker::new(env.client.clone(), Some(db.pool.clone()), vec![]);
    ticker.reload().await;
    assert!(ticker.schedules().is_empty());
    sqlx::query("INSERT INTO schedules (name, cron, timezone, kind, args) VALUES ('sync', '*/2 * * * * *', 'Europe/Berlin', 'probe', '{\"do\":\"succeed\"}')")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO schedules (name, cron, kind) VALUES ('broken', 'not a cron', 'probe')")
        .execute(&db.pool)
        .await
        .unwrap();
    let errors = ticker.reload().await;
    assert_eq!(ticker.schedules().len(), 1);
    assert!(errors.iter().any(|e| e.contains("broken") && e.contains("cron")), "{errors:?}");
    let t0 = t0();
    ticker.tick(at(t0, 0, 100)).await;
    assert_eq!(ticker.tick(at(t0, 4, 100)).await.enqueued.len(), 2);
    sqlx::query("UPDATE schedules SET paused = TRUE WHERE name = 'sync'").execute(&db.pool).await.unwrap();
    ticker.reload().await;
    let paused = ticker.tick(at(t0, 8, 100)).await;
    assert!(paused.enqueued.is_empty());
    assert_eq!(paused.missed, 2);
    let state: Option<String> = sqlx::query_scalar("SELECT last_error FROM schedule_state WHERE name = 'broken'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(state.unwrap().contains("cron"));
    db.drop_db().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_the_real_clock_enqueue_each_tick_once() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let ticker = Ticker::new(env.client.clone(), Some(db.pool.clone()), vec![every_second("clock")]);
        tasks.push(tokio::spawn(fleet_scheduler::ticker::run(ticker, stop.clone())));
    }
    eventually("three ticks", Duration::from_secs(20), || async {
        (env.stats("default").await.enqueued >= 3).then_some(())
    })
    .await;
    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }
    let ticks = tick_times(&env).await;
    let distinct: BTreeSet<_> = ticks.iter().collect();
    assert_eq!(distinct.len(), ticks.len(), "no tick enqueued twice: {ticks:?}");
    for w in ticks.windows(2) {
        assert_eq!(w[1] - w[0], ChronoDuration::seconds(1), "consecutive seconds: {ticks:?}");
    }
    db.drop_db().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_at_once_apply_the_migrations_once() {
    let db = TestDb::new().await;
    // A second and third replica start on the same (already migrated) database at once.
    let (a, b) = tokio::join!(
        fleet_scheduler::db::connect_and_migrate(&db.url),
        fleet_scheduler::db::connect_and_migrate(&db.url)
    );
    a.unwrap();
    b.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations").fetch_one(&db.pool).await.unwrap();
    assert_eq!(applied as usize, fleet_scheduler::db::MIGRATOR.iter().count());
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_pauses_and_resumes_a_config_schedule_at_run_time() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let mut ticker = Ticker::new(env.client.clone(), Some(db.pool.clone()), vec![every_second("digest")]);
    ticker.reload().await;
    let t0 = t0();
    ticker.tick(at(t0, 0, 100)).await;
    assert_eq!(ticker.tick(at(t0, 2, 100)).await.enqueued.len(), 2);
    fleet_scheduler::ticker::set_paused(&db.pool, "digest", true).await.unwrap();
    ticker.reload().await;
    let paused = ticker.tick(at(t0, 5, 100)).await;
    assert!(paused.enqueued.is_empty());
    assert_eq!(paused.missed, 3);
    fleet_scheduler::ticker::set_paused(&db.pool, "digest", false).await.unwrap();
    ticker.reload().await;
    assert_eq!(ticker.tick(at(t0, 7, 100)).await.enqueued.len(), 2, "enqueues again from where it was resumed");
    db.drop_db().await;
    env.cleanup().await;
}

/// The scheduler process as shipped (`fleet_scheduler::run`): `/healthz` answers, `/readyz`
/// names Redis, PostgreSQL and the supervised ticker, sampler and API server, the ticker
/// enqueues, and shutdown ends `run` cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_serves_readyz_with_its_stores_and_supervised_tasks() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let port = fleet_tests::free_port();
    let config = fleet_scheduler::config::SchedulerConfig {
        redis_url: fleet_tests::redis_url(),
        prefix: env.prefix.clone(),
        database_url: db.url.clone(),
        listen: ([127, 0, 0, 1], port).into(),
        schedules: vec![every_second("health-beat")],
        ..Default::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(fleet_scheduler::run(config, async move {
        let _ = stopped.await;
    }));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let get = |path: &'static str| {
        let http = http.clone();
        async move {
            let res = http.get(format!("http://127.0.0.1:{port}{path}")).send().await.ok()?;
            let status = res.status().as_u16();
            Some((status, serde_json::from_slice::<serde_json::Value>(&res.bytes().await.ok()?).ok()?))
        }
    };
    let (_, body) = eventually("the scheduler's /readyz to answer 200", Duration::from_secs(60), || async {
        get("/readyz").await.filter(|(s, _)| *s == 200)
    })
    .await;
    assert_eq!(body["status"], "ready", "{body}");
    for check in ["redis", "postgres", "task:ticker", "task:sampler", "task:archiver", "task:retention", "task:api"] {
        assert_eq!(body["checks"][check]["ok"], true, "{check}: {body}");
    }
    let (status, live) = get("/healthz").await.unwrap();
    assert_eq!((status, &live["status"]), (200, &serde_json::json!("ok")));
    eventually("the ticker to enqueue a tick", Duration::from_secs(30), || async {
        let s = env.client.stats("default").await.ok()?;
        (s.scheduled + s.ready > 0).then_some(())
    })
    .await;
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), running).await.expect("run ends").unwrap().expect("clean shutdown");
    db.drop_db().await;
    env.cleanup().await;
}

/// The scheduler's `/readyz` (its own router, with the test's Redis and PostgreSQL and
/// `tasks`): status and body.
async fn readyz(env: &TestEnv, db: &TestDb, tasks: &Tasks) -> (u16, serde_json::Value) {
    use tower::ServiceExt as _;
    let ready = fleet_scheduler::Readiness { client: env.client.clone(), db: db.pool.clone(), tasks: tasks.clone() };
    let req = axum::http::Request::builder().uri("/readyz").body(axum::body::Body::empty()).unwrap();
    let res = fleet_scheduler::health_routes(ready).oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

/// A ticker that panics does not leave cron stopped behind a green probe: while it waits
/// to be restarted, the scheduler's `/readyz` answers 503 naming it and the panic (Redis
/// and PostgreSQL fine). Its restart is held off for an hour here, so the test sees that
/// state for sure; the next test sees the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicked_ticker_fails_the_schedulers_readyz_while_it_waits_to_restart() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let tasks = Tasks::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let later = Restart::Backoff { initial: Duration::from_secs(3600), max: Duration::from_secs(3600) };
    let ticking =
        fleet_scheduler::spawn_ticker_with(&tasks, stop.clone(), later, || -> Ticker { panic!("a bug in the ticker") });
    let failed = tasks.wait_until(Duration::from_secs(30), |t| t.state("ticker") == Some(TaskState::Restarting)).await;
    assert!(failed, "the ticker's panic was not seen: {:?}", tasks.checks());
    assert_eq!(tasks.failures("ticker"), 1);
    let (status, body) = readyz(&env, &db, &tasks).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not_ready", "{body}");
    assert_eq!(body["checks"]["task:ticker"]["ok"], false, "{body}");
    let detail = body["checks"]["task:ticker"]["detail"].as_str().unwrap();
    assert!(detail.contains("restarting after: panicked: a bug in the ticker"), "{body}");
    for store in ["redis", "postgres"] {
        assert_eq!(body["checks"][store]["ok"], true, "only the ticker fails: {body}");
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), ticking).await.expect("stops while it waits").unwrap();
    assert_eq!(tasks.state("ticker"), Some(TaskState::Stopped));
    db.drop_db().await;
    env.cleanup().await;
}

/// A ticker that panics is logged, counted and replaced: a new ticker runs passes, the
/// scheduler's `/readyz` is 200 again (saying it was restarted and why), and cron goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_ticker_is_counted_and_restarted_and_cron_goes_on() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let tasks = Tasks::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let (client, pool) = (env.client.clone(), db.pool.clone());
    let mut made = 0;
    let ticking = fleet_scheduler::spawn_ticker(&tasks, stop.clone(), move || {
        made += 1;
        if made == 1 {
            panic!("a bug in the ticker");
        }
        Ticker::new(client.clone(), Some(pool.clone()), vec![every_second("after-a-panic")])
    });
    let restarted = tasks
        .wait_until(Duration::from_secs(30), |t| {
            t.failures("ticker") == 1 && t.state("ticker") == Some(TaskState::Running) && t.beats("ticker") >= 1
        })
        .await;
    assert!(restarted, "no pass of a restarted ticker: {:?}", tasks.checks());
    let (status, body) = readyz(&env, &db, &tasks).await;
    assert_eq!(status, 200, "{body}");
    let detail = body["checks"]["task:ticker"]["detail"].as_str().unwrap();
    assert!(detail.contains("restarted 1 times") && detail.contains("a bug in the ticker"), "{body}");
    eventually("a tick enqueued by the restarted ticker", Duration::from_secs(30), || async {
        let s = env.client.stats("default").await.ok()?;
        (s.scheduled + s.ready > 0).then_some(())
    })
    .await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), ticking).await.expect("the ticker stops").unwrap();
    assert_eq!(tasks.state("ticker"), Some(TaskState::Stopped));
    db.drop_db().await;
    env.cleanup().await;
}
