//! The engine under fire, with real processes and real Redis servers: workers killed
//! with SIGKILL mid-run, a job that kills its worker every time, a Redis restart,
//! and 100,000 jobs due at once. Every check is the same: every job ends succeeded
//! or dead, none is lost.

use fleet_jobs::catalogue::{ProbeAction, ProbeArgs};
use fleet_jobs::{EnqueueOptions, JobState};
use fleet_tests::{RedisServer, TestEnv, WorkerProcess, eventually, redis_url, states};
use fleet_worker::{QueueConfig, Registry};
use std::time::{Duration, SystemTime};

mod fencing;
mod poison;

const EXE: &str = env!("CARGO_BIN_EXE_fleet-worker-e2e");

fn settings(lease_ms: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![("FLEET_QUEUES", "default=10"), ("FLEET_LEASE_MS", lease_ms), ("FLEET_SHUTDOWN_GRACE_SECS", "10")]
}

async fn all_final(env: &TestEnv, n: i64, timeout: Duration) {
    // The test's own connection may see errors while Redis restarts: not done yet.
    eventually(&format!("all {n} jobs to finish"), timeout, || async {
        let s = env.client.stats("default").await.ok()?;
        (s.pending() == 0 && s.succeeded + s.died == n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_three_times_mid_run_lose_no_job() {
    let env = TestEnv::new().await;
    let jobs: Vec<ProbeArgs> = (0..500)
        .map(|i| match i % 5 {
            0 => ProbeArgs::new(ProbeAction::FailTimes { times: 1 }),
            _ => ProbeArgs::new(ProbeAction::Sleep { ms: 40 }),
        })
        .collect();
    let ids = env.client.enqueue_bulk(jobs).await.unwrap();
    let url = redis_url();
    let mut workers: Vec<WorkerProcess> =
        (0..3).map(|_| WorkerProcess::spawn(EXE, &url, &env.prefix, &settings("1000"))).collect();
    for round in 1..=3i64 {
        eventually(&format!("{} jobs done before kill {round}", round * 100), Duration::from_secs(60), || async {
            (env.stats("default").await.succeeded >= round * 100).then_some(())
        })
        .await;
        let victim = workers.remove(0);
        victim.kill();
        workers.push(WorkerProcess::spawn(EXE, &url, &env.prefix, &settings("1000")));
    }
    all_final(&env, 500, Duration::from_secs(120)).await;
    let s = env.stats("default").await;
    assert_eq!(s.succeeded, 500, "every job succeeded (FailTimes 1 retries once): {s:?}");
    assert!(s.lease_expired >= 1, "killed workers held jobs that came back: {s:?}");
    for (id, st) in ids.iter().zip(states(&env.client, "default", &ids).await) {
        assert_eq!(st, Some(JobState::Succeeded), "job {id}");
    }
    for w in workers {
        w.terminate(Duration::from_secs(15));
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_kills_its_worker_every_time_ends_in_dead_letters() {
    let env = TestEnv::new().await;
    let opts = EnqueueOptions::default().max_attempts(3);
    let id = env.client.enqueue_with(&ProbeArgs::new(ProbeAction::Crash), opts).await.unwrap();
    let url = redis_url();
    let mut worker = WorkerProcess::spawn(EXE, &url, &env.prefix, &settings("600"));
    let mut crashes = 0;
    // A supervisor (like Kubernetes) restarts the worker whenever it dies.
    eventually("the crashing job to reach the dead letters", Duration::from_secs(60), || {
        if worker.exited() {
            crashes += 1;
            worker = WorkerProcess::spawn(EXE, &url, &env.prefix, &settings("600"));
        }
        let client = env.client.clone();
        let id = id.clone();
        async move { (client.job_state("default", id.as_str()).await.unwrap() == Some(JobState::Dead)).then_some(()) }
    })
    .await;
    assert!(crashes >= 3, "the job crashed its worker 3 times, the crash limit ({crashes} crashes seen)");
    let job = env.client.job("default", id.as_str()).await.unwrap().unwrap();
    // The first crash is not charged (others might have been running beside it); the
    // next two, with the job running alone, are.
    assert_eq!(job.attempts, 2);
    assert_eq!(job.history.len(), 3);
    assert!(job.history.iter().all(|a| a.error.contains("lease expired")), "{:?}", job.history);
    assert!(job.history[2].error.starts_with("crashed its worker 3 times"), "{:?}", job.history);
    let s = env.stats("default").await;
    assert_eq!((s.died, s.lease_expired, s.running), (1, 3, 0));
    worker.terminate(Duration::from_secs(15));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_run_loses_nothing_and_the_worker_goes_on() {
    let mut redis = RedisServer::start().await;
    let env = TestEnv::on(&redis.url()).await;
    let ids = env.client.enqueue_bulk((0..500).map(|_| ProbeArgs::new(ProbeAction::Sleep { ms: 10 }))).await.unwrap();
    let mut cfg = env.config("default", 10);
    cfg.redis_url = redis.url();
    cfg.lease_ms = 1500;
    let worker = env.worker(cfg, Registry::builtin()).await;
    eventually("150 jobs done before the restart", Duration::from_secs(60), || async {
        (env.stats("default").await.succeeded >= 150).then_some(())
    })
    .await;
    // Unreachable for 10 s, then back with its data.
    redis.restart(Duration::from_secs(10)).await;
    all_final(&env, 500, Duration::from_secs(120)).await;
    let s = env.stats("default").await;
    assert_eq!(s.succeeded, 500, "{s:?}");
    for st in states(&env.client, "default", &ids).await {
        assert_eq!(st, Some(JobState::Succeeded));
    }
    // The same worker is still serving: a new job runs.
    let mut rx = worker.events();
    let id = env.client.enqueue(&ProbeArgs::new(ProbeAction::Succeed)).await.unwrap();
    fleet_tests::until_final(&mut rx, id.as_str(), Duration::from_secs(20)).await;
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_comes_back_empty_does_not_stop_the_worker() {
    let mut redis = RedisServer::start_ephemeral().await;
    let env = TestEnv::on(&redis.url()).await;
    let mut cfg = env.config("default", 5);
    cfg.redis_url = redis.url();
    cfg.lease_ms = 1500;
    let worker = env.worker(cfg, Registry::builtin()).await;
    let mut rx = worker.events();
    // Jobs in flight when Redis loses everything: their completions are refused, nothing breaks.
    env.client.enqueue_bulk((0..20).map(|_| ProbeArgs::new(ProbeAction::Sleep { ms: 300 }))).await.unwrap();
    eventually("jobs to be running", Duration::from_secs(20), || async {
        (env.client.stats("default").await.ok()?.running > 0).then_some(())
    })
    .await;
    redis.restart(Duration::from_secs(2)).await;
    let id = eventually("an enqueue to succeed again", Duration::from_secs(30), || async {
        env.client.enqueue(&ProbeArgs::new(ProbeAction::Succeed)).await.ok()
    })
    .await;
    fleet_tests::until_final(&mut rx, id.as_str(), Duration::from_secs(30)).await;
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_jobs_due_in_the_same_second_are_all_processed() {
    let env = TestEnv::new().await;
    let n = 100_000;
    let at = SystemTime::now() + Duration::from_secs(5);
    let opts = || EnqueueOptions { run_at: Some(at), ..Default::default() };
    env.client.enqueue_bulk_with((0..n).map(|_| (ProbeArgs::new(ProbeAction::Succeed), opts()))).await.unwrap();
    // All wait for the same instant (any enqueued after it, on a slow machine, are already ready).
    let s = env.stats("default").await;
    assert_eq!(s.scheduled + s.ready, n);
    assert!(s.scheduled > 0, "{s:?}");
    let mut cfg = env.config("default", 200);
    cfg.queues =
        vec![QueueConfig { name: "default".into(), concurrency: 200, fetch_batch: Some(200), partitions: None }];
    cfg.retention_secs = 0;
    let worker = env.worker(cfg, Registry::builtin()).await;
    all_final(&env, n, Duration::from_secs(240)).await;
    let s = env.stats("default").await;
    assert_eq!((s.succeeded, s.scheduled, s.ready), (n, 0, 0));
    worker.shutdown().await;
    env.cleanup().await;
}

/// Bytes held by the keys of `env`'s namespace (MEMORY USAGE, exact) and how many keys.
async fn namespace_memory(env: &TestEnv) -> (i64, usize) {
    let keys = env.client.scan_keys(&format!("{}:*", env.prefix)).await.unwrap();
    let mut conn = env.client.connection();
    let mut total = 0;
    for k in &keys {
        let n: Option<i64> =
            redis::cmd("MEMORY").arg("USAGE").arg(k).arg("SAMPLES").arg(0).query_async(&mut conn).await.unwrap();
        total += n.unwrap_or(0);
    }
    (total, keys.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_fleet_returns_to_its_baseline_memory_after_the_retention() {
    // The idle-memory run scaled down: 20,000 no-op jobs (a tenth of them with a
    // unique key) with a 2 s retention through two worker processes, then nothing: no
    // completion deletes anything, only the workers' janitor.
    let env = TestEnv::new().await;
    let n = 20_000i64;
    let jobs = (0..n).map(|i| {
        let opts = if i % 10 == 0 {
            EnqueueOptions::default().unique(format!("u{i}"), Duration::from_secs(2))
        } else {
            EnqueueOptions::default()
        };
        (ProbeArgs::new(ProbeAction::Succeed), opts)
    });
    env.client.enqueue_bulk_with(jobs.collect::<Vec<_>>()).await.unwrap();
    let (queued, _) = namespace_memory(&env).await;
    let mut settings = settings("3000");
    settings[0] = ("FLEET_QUEUES", "default=100");
    settings.push(("FLEET_RETENTION_SECS", "2"));
    let url = redis_url();
    let workers: Vec<WorkerProcess> = (0..2).map(|_| WorkerProcess::spawn(EXE, &url, &env.prefix, &settings)).collect();
    all_final(&env, n, Duration::from_secs(180)).await;
    let (peak, _) = namespace_memory(&env).await;
    let started = std::time::Instant::now();
    let k = env.client.keys("default");
    eventually("every finished record and unique key to expire", Duration::from_secs(62), || async {
        let mut p = redis::pipe();
        p.hlen(&k.jobs).hlen(&k.state).hlen(&k.att).zcard(&k.done).hlen(&k.uniq).zcard(&k.uniqexp);
        let v: Vec<i64> = p.query_async(&mut env.client.connection()).await.ok()?;
        v.iter().all(|n| *n == 0).then_some(())
    })
    .await;
    let (idle, keys) = namespace_memory(&env).await;
    eprintln!(
        "{n} jobs: {queued} B queued ({} B/job), {peak} B finished ({} B/record), {idle} B in {keys} keys \
         after {:.1} s idle",
        queued / n,
        peak / n,
        started.elapsed().as_secs_f64()
    );
    // Left: counters, settings, live workers: a few kilobytes whatever ran before.
    assert!(idle < 16 * 1024, "{idle} bytes left in {keys} keys");
    let s = env.stats("default").await;
    assert_eq!((s.succeeded, s.pending()), (n, 0));

    // Dead letters: 2,000 jobs that give up, kept 3 s by the queue's own cap set at run time.
    let d = 2_000i64;
    env.client
        .set_dead_caps("default", fleet_jobs::deadcaps::DeadCaps { max_count: None, max_age_secs: Some(3) })
        .await
        .unwrap();
    env.client.enqueue_bulk((0..d).map(|_| ProbeArgs::new(ProbeAction::GiveUp))).await.unwrap();
    all_final(&env, n + d, Duration::from_secs(60)).await;
    let (with_dead, _) = namespace_memory(&env).await;
    eventually("every dead letter to be evicted by age", Duration::from_secs(63), || async {
        let s = env.client.stats("default").await.ok()?;
        (s.dead == 0 && s.evicted == d).then_some(())
    })
    .await;
    let (after, keys) = namespace_memory(&env).await;
    eprintln!("{d} dead letters: {} B/dead letter; {after} B in {keys} keys once evicted", (with_dead - idle) / d);
    assert!(after < 16 * 1024, "{after} bytes left in {keys} keys");
    for w in workers {
        w.terminate(Duration::from_secs(15));
    }
    env.cleanup().await;
}

mod pg_outage {
    //! PostgreSQL unreachable for a while (through a proxy the test cuts: the server is
    //! shared with other tests): PG-using workers retry without losing a job, `/readyz`
    //! of the worker and the scheduler turns 503 and back, the API answers 503 in its
    //! error shape, and all recover without a restart.

    use axum::body::{Body, Bytes};
    use axum::extract::State;
    use axum::http::{HeaderMap, Request, StatusCode};
    use fleet_jobs::catalogue::WebhookPublish;
    use fleet_jobs::retry::{Backoff, Jitter};
    use fleet_jobs::{EnqueueOptions, JobState};
    use fleet_scheduler::api::{ApiState, app, auth};
    use fleet_tests::{TcpProxy, TestDb, TestEnv, eventually, states};
    use fleet_webhooks::jobs::{Deliver, WebhookSettings, publish::Publish};
    use fleet_worker::{KindPolicy, QueueConfig, Registry};
    use serde_json::{Value, json};
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tower::ServiceExt;

    const T: Duration = Duration::from_secs(60);

    fn secrets() -> fleet_accounts::secrets::SecretBox {
        fleet_accounts::secrets::SecretBox::new(&"5a".repeat(32)).unwrap()
    }

    /// Deliveries by `webhook-id`.
    type Got = Arc<Mutex<HashMap<String, usize>>>;

    async fn receive(State(got): State<Got>, headers: HeaderMap, _body: Bytes) -> StatusCode {
        let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        *got.lock().unwrap().entry(id).or_default() += 1;
        StatusCode::OK
    }

    async fn call(api: &axum::Router, key: &str, method: &str, uri: &str, body: Value) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let res = api.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// (status, body) of a worker's `/readyz`.
    async fn worker_ready(http: &reqwest::Client, addr: std::net::SocketAddr) -> Option<(u16, Value)> {
        let res = http.get(format!("http://{addr}/readyz")).send().await.ok()?;
        let status = res.status().as_u16();
        Some((status, serde_json::from_slice(&res.bytes().await.ok()?).ok()?))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_postgresql_outage_loses_no_job_fails_readiness_and_heals_without_a_restart() {
        let env = TestEnv::new().await;
        let db = TestDb::new().await;
        let proxy = TcpProxy::start(&db.server()).await;
        // Everything under test reaches PostgreSQL through the proxy; the test itself does not.
        let via = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(1))
            .connect(&db.url_via(proxy.port))
            .await
            .unwrap();
        let key = auth::create_api_key(&db.pool, "acme", "hooks", &[auth::Role::Enqueue]).await.unwrap();
        let api = app(
            ApiState::new(env.client.clone(), via.clone())
                .with_tenancy(fleet_scheduler::tenancy::TenancyConfig::for_tests())
                .with_secrets(secrets()),
            1 << 20,
        );
        let scheduler_health = fleet_scheduler::health_routes(fleet_scheduler::Readiness {
            client: env.client.clone(),
            db: via.clone(),
            tasks: fleet_jobs::health::Tasks::new(),
        });
        let scheduler_ready = || async {
            let req = Request::builder().uri("/readyz").body(Body::empty()).unwrap();
            let res = scheduler_health.clone().oneshot(req).await.unwrap();
            let status = res.status();
            let body: Value =
                serde_json::from_slice(&axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap()).unwrap();
            (status, body)
        };

        let got: Got = Default::default();
        let router = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(got.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hook = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

        let settings = WebhookSettings {
            allow: vec!["127.0.0.0/8".into()],
            connect_timeout_ms: 500,
            timeout_ms: 2_000,
            max_response_bytes: 64 * 1024,
        };
        let policy = || KindPolicy {
            backoff: Backoff::exponential(Duration::from_millis(200)).jitter(Jitter::None).max(Duration::from_secs(1)),
            timeout: None,
        };
        let registry = Registry::new()
            .with_database(via.clone())
            .register_with(Deliver::new(via.clone(), settings).unwrap().with_secrets(Some(secrets())), policy())
            .register_with(Publish::new(via.clone(), env.client.clone()), policy());
        let mut cfg = env.config("webhooks", 10);
        cfg.queues =
            vec![QueueConfig { name: "webhooks".into(), concurrency: 10, fetch_batch: None, partitions: None }];
        cfg.listen = Some("127.0.0.1:0".parse().unwrap());
        cfg.lease_ms = 10_000;
        let worker = env.worker(cfg, registry).await;
        let addr = worker.http_addr().unwrap();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();

        // Before: ready, with every check named.
        let (_, body) = eventually("the worker to be ready", T, || async {
            worker_ready(&http, addr).await.filter(|(s, _)| *s == 200)
        })
        .await;
        assert_eq!(body["status"], "ready", "{body}");
        for check in ["redis", "postgres", "loop:fetch:webhooks", "loop:ack:webhooks", "loop:heartbeat:webhooks"] {
            assert_eq!(body["checks"][check]["ok"], true, "{check}: {body}");
        }
        assert_eq!(scheduler_ready().await.0, StatusCode::OK);
        let (s, ep) = call(&api, &key, "POST", "/v1/endpoints", json!({"url": hook})).await;
        assert_eq!(s, StatusCode::CREATED, "{ep}");
        let (s, before) =
            call(&api, &key, "POST", "/v1/events", json!({"type": "gallery.ready", "payload": {"n": -1}})).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{before}");
        eventually("the first event to be delivered", T, || async { (got.lock().unwrap().len() == 1).then_some(()) })
            .await;

        // The outage.
        proxy.cut();
        let (_, body) = eventually("the worker's /readyz to turn 503", T, || async {
            worker_ready(&http, addr).await.filter(|(s, _)| *s == 503)
        })
        .await;
        assert_eq!(body["status"], "not_ready", "{body}");
        assert_eq!(body["checks"]["postgres"]["ok"], false, "{body}");
        assert_eq!(body["checks"]["redis"]["ok"], true, "Redis is fine: {body}");
        let (s, body) = eventually("the scheduler's /readyz to turn 503", T, || async {
            let (s, body) = scheduler_ready().await;
            (s == StatusCode::SERVICE_UNAVAILABLE).then_some((s, body))
        })
        .await;
        assert_eq!((s, &body["checks"]["postgres"]["ok"]), (StatusCode::SERVICE_UNAVAILABLE, &json!(false)), "{body}");
        let (s, err) = call(&api, &key, "POST", "/v1/events", json!({"type": "gallery.ready", "payload": {}})).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{err}");
        assert!(err["error"]["code"].is_string() && err["error"]["message"].is_string(), "documented shape: {err}");
        let (s, err) = call(&api, &key, "GET", "/v1/endpoints", Value::Null).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{err}");
        assert!(err["error"]["code"].is_string(), "{err}");

        // Jobs enqueued meanwhile (Redis is up): their attempts fail on PostgreSQL and are retried.
        let n = 20;
        let opts = || EnqueueOptions { tenant: Some("acme".into()), max_attempts: Some(100), ..Default::default() };
        let ids = env
            .client
            .enqueue_bulk_with((0..n).map(|i| {
                let payload = serde_json::value::to_raw_value(&json!({"n": i})).unwrap();
                (WebhookPublish { event_type: "gallery.ready".into(), payload }, opts())
            }))
            .await
            .unwrap();
        eventually("attempts to fail while PostgreSQL is away", T, || async {
            let job = env.client.job("webhooks", ids[0].as_str()).await.ok()??;
            (job.history.iter().any(|a| a.error.contains("database"))).then_some(())
        })
        .await;
        assert!(got.lock().unwrap().len() == 1, "nothing delivered during the outage");

        // Back: the same processes recover.
        proxy.restore();
        eventually("the worker's /readyz to turn 200 again", T, || async {
            worker_ready(&http, addr).await.filter(|(s, _)| *s == 200)
        })
        .await;
        eventually("the scheduler's /readyz to turn 200 again", T, || async {
            (scheduler_ready().await.0 == StatusCode::OK).then_some(())
        })
        .await;
        let (s, after) = eventually("the API to accept an event again", T, || async {
            let (s, v) =
                call(&api, &key, "POST", "/v1/events", json!({"type": "gallery.ready", "payload": {"n": 99}})).await;
            (s == StatusCode::ACCEPTED).then_some((s, v))
        })
        .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{after}");

        // Every event delivered exactly once; every job succeeded, none dead.
        let events = n + 2;
        eventually("every event to be delivered", T, || async {
            (got.lock().unwrap().values().sum::<usize>() >= events).then_some(())
        })
        .await;
        eventually("every job to finish", T, || async {
            let s = env.client.stats("webhooks").await.ok()?;
            (s.pending() == 0).then_some(())
        })
        .await;
        let s = env.stats("webhooks").await;
        assert_eq!((s.succeeded, s.died), (2 * events as i64, 0), "{events} publish and {events} deliver jobs: {s:?}");
        for (id, st) in ids.iter().zip(states(&env.client, "webhooks", &ids).await) {
            assert_eq!(st, Some(JobState::Succeeded), "job {id}");
        }
        let got = got.lock().unwrap().clone();
        assert_eq!(got.len(), events, "one message id per event: {got:?}");
        assert!(got.values().all(|&c| c == 1), "each delivered exactly once: {got:?}");

        worker.shutdown().await;
        via.close().await;
        drop(proxy);
        db.drop_db().await;
        env.cleanup().await;
    }
}

/// Redis away: the worker's `/readyz` turns 503 naming Redis while `/healthz` (liveness)
/// stays 200, so an orchestrator takes it out of rotation without restarting it; both
/// answer 200 once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_away_the_worker_is_alive_but_not_ready() {
    let mut redis = RedisServer::start().await;
    let env = TestEnv::on(&redis.url()).await;
    let mut cfg = env.config("default", 2);
    cfg.redis_url = redis.url();
    cfg.listen = Some("127.0.0.1:0".parse().unwrap());
    let worker = env.worker(cfg, Registry::builtin()).await;
    let addr = worker.http_addr().unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let get = |path: &'static str| {
        let http = http.clone();
        async move {
            let res = http.get(format!("http://{addr}{path}")).send().await.ok()?;
            let status = res.status().as_u16();
            Some((status, serde_json::from_slice::<serde_json::Value>(&res.bytes().await.ok()?).ok()?))
        }
    };
    let (_, ready) =
        eventually("ready", Duration::from_secs(30), || async { get("/readyz").await.filter(|(s, _)| *s == 200) })
            .await;
    assert!(ready["checks"].get("postgres").is_none(), "no PostgreSQL configured, none checked: {ready}");
    let outage = async {
        let (_, body) = eventually("/readyz to turn 503 while Redis is down", Duration::from_secs(8), || async {
            get("/readyz").await.filter(|(s, _)| *s == 503)
        })
        .await;
        assert_eq!(body["checks"]["redis"]["ok"], false, "{body}");
        assert_eq!(body["checks"]["loop:fetch:default"]["ok"], true, "the loops retry and live on: {body}");
        let (status, _) = get("/healthz").await.expect("/healthz answers during the outage");
        assert_eq!(status, 200, "liveness does not depend on Redis");
    };
    tokio::join!(redis.restart(Duration::from_secs(10)), outage);
    eventually("/readyz to turn 200 again", Duration::from_secs(30), || async {
        get("/readyz").await.filter(|(s, _)| *s == 200)
    })
    .await;
    worker.shutdown().await;
}
