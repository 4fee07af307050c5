//! Fleet on a Redis Cluster: the same engine, client, admin tools, limits, batches and
//! cron as on one server, with queues spread over every primary; and workers that ride
//! through a primary handing over (`CLUSTER FAILOVER`) or dying (`kill -9`).
//!
//! The suite needs a cluster: `FLEET_TEST_REDIS_CLUSTER_URLS` (set by `scripts/test.sh`,
//! which starts `scripts/redis-cluster.sh`). Without it every test returns at once saying
//! so. Each test has its own key prefix on the shared cluster; the drills that demote or
//! kill a primary start a cluster of their own so they disturb no other test.

use fleet_jobs::backend::Outcome;
use fleet_jobs::batches::{Callback, Callbacks, callback_id};
use fleet_jobs::catalogue::{ProbeAction, ProbeArgs};
use fleet_jobs::limits::{Admission, LimitSpec, Limiter, WaitReason};
use fleet_jobs::{EnqueueOptions, JobArgs, JobId, JobState};
use fleet_tests::cluster_facts::{self, Node};
use fleet_tests::{OwnCluster, TestEnv, cluster_urls, eventually};

mod sentinel;
use fleet_worker::{QueueConfig, Registry, WorkerConfig};
use serde_json::value::RawValue;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// A namespace on the suite's cluster, or `None` (the test is skipped) without one.
async fn on_cluster() -> Option<(TestEnv, String)> {
    let urls = cluster_urls()?;
    let env = TestEnv::on(&urls).await;
    assert!(env.client.connection().is_cluster(), "{urls} opens a cluster connection");
    Some((env, urls))
}

/// A worker config on `urls` serving `queues`.
fn config(env: &TestEnv, urls: &str, queues: &[String], concurrency: usize) -> WorkerConfig {
    let mut cfg = env.config(&queues[0], concurrency);
    cfg.redis_url = urls.to_owned();
    cfg.queues = queues
        .iter()
        .map(|q| QueueConfig { name: q.clone(), concurrency, fetch_batch: None, partitions: None })
        .collect();
    cfg
}

fn on(queue: &str) -> EnqueueOptions {
    EnqueueOptions::default().queue(queue)
}

fn succeed() -> ProbeArgs {
    ProbeArgs::new(ProbeAction::Succeed)
}

async fn succeeded(env: &TestEnv, queue: &str, n: i64) {
    eventually(&format!("{n} jobs to succeed on {queue}"), T, || async {
        (env.stats(queue).await.succeeded >= n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_on_queues_of_every_primary_are_all_processed_by_one_worker() {
    let Some((env, urls)) = on_cluster().await else { return };
    let queues = cluster_facts::queue_per_primary(&urls, &env.prefix, "q").await;
    assert_eq!(queues.len(), 3, "one queue on each of the 3 primaries");
    let w = env.worker(config(&env, &urls, &queues, 8), Registry::builtin()).await;
    let per = 60;
    for q in &queues {
        // Tenant jobs: their outcomes go to four tenant streams, each in its own slot.
        let jobs = (0..per).map(|i| {
            let mut opts = on(q);
            opts.tenant = Some(format!("t{}", i % 4));
            (succeed(), opts)
        });
        env.client.enqueue_bulk_with(jobs).await.unwrap();
    }
    for q in &queues {
        succeeded(&env, q, per).await;
        let s = env.stats(q).await;
        assert_eq!((s.succeeded, s.ready, s.running, s.failed), (per, 0, 0, 0), "{q}");
    }
    let mut conn = env.client.connection();
    for t in 0..4 {
        let tenant = format!("t{t}");
        let want = (per as usize) * queues.len() / 4;
        let events = eventually(&format!("{want} events in {tenant}'s stream"), T, || {
            let (mut conn, prefix, tenant) = (conn.clone(), env.prefix.clone(), tenant.clone());
            async move {
                let ev = fleet_jobs::events::read_after(&mut conn, &prefix, &tenant, "0", 10_000).await.ok()?;
                (ev.len() >= want).then_some(ev)
            }
        })
        .await;
        assert_eq!(events.len(), want);
        assert!(events.iter().all(|(_, e)| e.event_type == "job.succeeded"));
    }
    // A tenant event appended for several tenants at once (one pipeline per slot).
    let batch: Vec<(String, fleet_jobs::events::TenantEvent)> = (0..4)
        .map(|t| {
            (
                format!("t{t}"),
                fleet_jobs::events::TenantEvent::domain("test.ping", format!("p{t}"), 1, serde_json::json!({})),
            )
        })
        .collect();
    fleet_jobs::events::append(&mut conn, &env.prefix, &batch).await.expect("appends across slots");
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_fires_its_callback_onto_a_queue_on_another_primary() {
    let Some((env, urls)) = on_cluster().await else { return };
    let queues = cluster_facts::queue_per_primary(&urls, &env.prefix, "b").await;
    let (jobs_q, callback_q) = (queues[0].clone(), queues[1].clone());
    let w = env.worker(config(&env, &urls, &queues, 8), Registry::builtin()).await;
    let args = |a: &ProbeArgs| -> Box<RawValue> { serde_json::value::to_raw_value(a).unwrap() };
    let jobs: Vec<_> = (0..20)
        .map(|i| {
            let a = if i == 7 { ProbeArgs::new(ProbeAction::GiveUp) } else { succeed() };
            ("probe".to_owned(), args(&a), ProbeArgs::options(), EnqueueOptions::default())
        })
        .collect();
    let callbacks = Callbacks {
        on_success: None,
        on_complete: Some(Callback {
            kind: "probe".into(),
            args: args(&succeed().tagged("batch done")),
            queue: Some(callback_q.clone()),
            priority: None,
            max_attempts: None,
        }),
        tenant: None,
    };
    let batch = env.client.create_batch(&jobs_q, jobs, &callbacks).await.unwrap();
    let cb = callback_id(&batch, "complete");
    eventually("the batch's callback to succeed on the other primary's queue", T, || async {
        (env.client.job_state(&callback_q, cb.as_str()).await.unwrap() == Some(JobState::Succeeded)).then_some(())
    })
    .await;
    let status = env.client.batch(&jobs_q, &batch).await.unwrap().expect("batch counters");
    assert_eq!((status.total, status.succeeded, status.failed, status.pending), (20, 19, 1, 0));
    assert!(status.callbacks_enqueued);
    assert_eq!(env.stats(&callback_q).await.enqueued, 1, "exactly one callback");
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_keys_hold_on_a_cluster() {
    let Some((env, urls)) = on_cluster().await else { return };
    let limiter = Limiter::new(env.client.connection(), env.prefix.clone(), Duration::from_secs(5));
    // Keys on different primaries; each key's Redis keys share its own hash tag.
    let spec = LimitSpec { concurrency: Some(1), burst: 1, ..Default::default() };
    for key in ["endpoint:a", "endpoint:b", "endpoint:c", "provider:x"] {
        let (a, _) = limiter.acquire(key, "job-1", &spec).await.unwrap();
        assert_eq!(a, Admission::Admitted, "{key}");
        let (b, _) = limiter.acquire(key, "job-2", &spec).await.unwrap();
        assert!(matches!(b, Admission::Wait { reason: WaitReason::Concurrency, .. }), "{key}: {b:?}");
        limiter.release(key, "job-1", &spec).await.unwrap();
        let (c, _) = limiter.acquire(key, "job-2", &spec).await.unwrap();
        assert_eq!(c, Admission::Admitted, "{key}: the slot came back");
    }
    // Run-time overrides (a MULTI/EXEC pipeline on the key's node).
    let tight = LimitSpec { rate: Some(1.0), burst: 1, ..Default::default() };
    limiter.set_spec("endpoint:a", &tight).await.unwrap();
    // Jobs held by a limit key, run by a worker.
    let queues = cluster_facts::queue_per_primary(&urls, &env.prefix, "l").await;
    let mut cfg = config(&env, &urls, &queues[..1], 4);
    cfg.limits.insert("endpoint:z".into(), LimitSpec { rate: Some(50.0), burst: 5, ..Default::default() });
    let w = env.worker(cfg, Registry::builtin()).await;
    let jobs = (0..20).map(|_| (succeed().limited("endpoint:z"), on(&queues[0])));
    env.client.enqueue_bulk_with(jobs).await.unwrap();
    succeeded(&env, &queues[0], 20).await;
    let _ = urls;
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_tools_see_queues_on_every_primary() {
    let Some((env, urls)) = on_cluster().await else { return };
    let queues = cluster_facts::queue_per_primary(&urls, &env.prefix, "a").await;
    let w = env.worker(config(&env, &urls, &queues, 4), Registry::builtin()).await;
    for q in &queues {
        let jobs = (0..5).map(|i| {
            let a = if i == 0 { ProbeArgs::new(ProbeAction::GiveUp) } else { succeed() };
            (a, on(q))
        });
        env.client.enqueue_bulk_with(jobs).await.unwrap();
    }
    for q in &queues {
        eventually(&format!("{q}: 4 succeeded, 1 dead"), T, || async {
            let s = env.stats(q).await;
            (s.succeeded == 4 && s.dead == 1).then_some(())
        })
        .await;
    }
    // SCAN visits every primary: every queue is listed.
    let mut listed = env.client.queues().await.unwrap();
    listed.sort();
    let mut want = queues.clone();
    want.sort();
    assert_eq!(listed, want);
    let overviews = env.client.overviews().await.unwrap();
    assert_eq!(overviews.len(), 3);
    assert!(overviews.iter().all(|o| o.stats.dead == 1 && o.workers == 1), "{overviews:?}");
    let all = env.client.all_stats().await.unwrap();
    assert_eq!(all.iter().map(|(_, s)| s.succeeded).sum::<i64>(), 12);
    for q in &queues {
        let dead = env.client.jobs_in_state(q, JobState::Dead, 0, 10).await.unwrap();
        assert_eq!(dead.len(), 1, "{q}");
        assert_eq!(env.client.dead_by_reason(q).await.unwrap().len(), 1);
        assert_eq!(env.client.workers(q).await.unwrap().len(), 1);
    }
    // Pause one queue, replay its dead letter: it waits; resume: it runs (and gives up again).
    let q = &queues[2];
    env.client.pause(q).await.unwrap();
    assert!(env.client.is_paused(q).await.unwrap());
    let replayed = env.client.replay(q, &fleet_jobs::admin::DeadFilter::default(), None).await.unwrap();
    assert_eq!(replayed, 1);
    assert_eq!(env.stats(q).await.ready, 1);
    env.client.resume(q).await.unwrap();
    eventually("the replayed job to die again", T, || async { (env.stats(q).await.dead == 1).then_some(()) }).await;
    assert_eq!(env.client.purge(&queues[0], &Default::default()).await.unwrap(), 1);
    // fleetctl, given the cluster's URL setting, sees the same.
    let fleetctl = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetctl-e2e"))
            .args(["--redis-url", &urls, "--prefix", &env.prefix])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run fleetctl");
        assert!(out.status.success(), "fleetctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed: serde_json::Value = serde_json::from_str(&fleetctl(&["queues", "--json"])).unwrap();
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|q| q["queue"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 3, "{listed}");
    assert!(queues.iter().all(|q| names.contains(&q.as_str())), "{listed}");
    assert!(fleetctl(&["dead", &queues[1], "--group"]).contains("probe: scripted give-up"));
    fleetctl(&["pause", &queues[1]]);
    assert!(env.client.is_paused(&queues[1]).await.unwrap());
    fleetctl(&["resume", &queues[1]]);
    w.shutdown().await;
    env.cleanup().await;
}

/// The shipped worker command, given the cluster's URL setting in `FLEET_REDIS_URL`,
/// serves queues on every primary and reports ready (`PING` to every primary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_command_runs_on_the_cluster_from_its_url_setting() {
    let Some((env, urls)) = on_cluster().await else { return };
    let queues = cluster_facts::queue_per_primary(&urls, &env.prefix, "p").await;
    let listen = format!("127.0.0.1:{}", fleet_tests::free_port());
    let spec: Vec<String> = queues.iter().map(|q| format!("{q}=4")).collect();
    let spec = spec.join(",");
    let worker = fleet_tests::WorkerProcess::spawn(
        env!("CARGO_BIN_EXE_fleet-worker-e2e"),
        &urls,
        &env.prefix,
        &[("FLEET_QUEUES", spec.as_str()), ("FLEET_LISTEN", listen.as_str())],
    );
    for q in &queues {
        env.client.enqueue_bulk_with((0..20).map(|_| (succeed(), on(q)))).await.unwrap();
    }
    for q in &queues {
        succeeded(&env, q, 20).await;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let body = eventually("the worker's /readyz to say ready", T, || async {
        let res = http.get(format!("http://{listen}/readyz")).send().await.ok()?;
        (res.status().as_u16() == 200).then_some(())?;
        serde_json::from_slice::<serde_json::Value>(&res.bytes().await.ok()?).ok()
    })
    .await;
    assert_eq!(body["checks"]["redis"]["ok"], true, "{body}");
    worker.terminate(T);
    env.cleanup().await;
}

/// Every primary's script cache flushed (as after a failover to a replica that never ran
/// the scripts, or a restart): the next calls send the scripts' bodies and go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_run_again_after_every_node_forgot_them() {
    let Some((env, urls)) = on_cluster().await else { return };
    let queues = cluster_facts::queue_per_primary(&urls, &env.prefix, "s").await;
    env.client.enqueue_with(&succeed(), on(&queues[0])).await.unwrap();
    // SCRIPT FLUSH on each primary (a command of its own per node: never FLUSHALL).
    let primaries: std::collections::BTreeSet<Node> =
        cluster_facts::slots(&urls).await.into_iter().map(|(_, _, p, _)| p).collect();
    for p in &primaries {
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut cluster_facts::node(p).await).await.unwrap();
    }
    let w = env.worker(config(&env, &urls, &queues, 4), Registry::builtin()).await;
    for q in &queues {
        env.client.enqueue_with(&succeed(), on(q)).await.expect("enqueue after NOSCRIPT");
    }
    succeeded(&env, &queues[0], 2).await;
    succeeded(&env, &queues[1], 1).await;
    succeeded(&env, &queues[2], 1).await;
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_ticks_are_enqueued_once_each_onto_queues_on_different_primaries() {
    use chrono::{DurationRound, Utc};
    use fleet_scheduler::schedule::{Missed, ScheduleSpec};
    use fleet_scheduler::ticker::Ticker;
    let Some((env, urls)) = on_cluster().await else { return };
    let queues = cluster_facts::queue_per_primary(&urls, &env.prefix, "c").await;
    let spec = |name: &str, queue: &str| ScheduleSpec {
        name: name.into(),
        cron: "* * * * * *".into(),
        timezone: "UTC".into(),
        kind: "probe".into(),
        args: serde_json::json!({"do": "succeed"}),
        queue: Some(queue.to_owned()),
        priority: None,
        max_attempts: None,
        missed: Missed::Skip,
        catch_up_secs: 0,
        paused: false,
        dedup: None,
    };
    let specs = vec![spec("first", &queues[0]), spec("second", &queues[1]), spec("third", &queues[2])];
    // Two replicas, no database: each tick's unique key (in its queue's slot) makes one job.
    let mut replicas: Vec<Ticker> = (0..2).map(|_| Ticker::new(env.client.clone(), None, specs.clone())).collect();
    for r in &mut replicas {
        assert!(r.reload().await.is_empty());
    }
    let t0 = Utc::now().duration_trunc(chrono::Duration::seconds(1)).unwrap();
    for step in 0..=10 {
        let now = t0 + chrono::Duration::seconds(step) + chrono::Duration::milliseconds(250);
        for r in &mut replicas {
            let report = r.tick(now).await;
            assert!(report.errors.is_empty(), "{:?}", report.errors);
        }
    }
    for q in &queues {
        assert_eq!(env.stats(q).await.enqueued, 10, "{q}: one job per tick over 10 s");
    }
    env.cleanup().await;
}

/// Enqueues `n` jobs with ids `<tag>-<i>` round-robin over `queues`, retrying each until
/// acknowledged (an id enqueued twice is one job), and returns how many needed retries.
async fn enqueue_through(
    env: &TestEnv,
    queues: &[String],
    tag: &str,
    range: std::ops::Range<usize>,
    job: &ProbeArgs,
) -> usize {
    let mut retried = 0;
    for i in range {
        let q = &queues[i % queues.len()];
        let mut opts = on(q);
        opts.id = Some(JobId(format!("{tag}-{i}")));
        let deadline = std::time::Instant::now() + T;
        loop {
            match env.client.enqueue_with(job, opts.clone()).await {
                Ok(_) => break,
                Err(e) => {
                    assert!(std::time::Instant::now() < deadline, "enqueue of {tag}-{i} failed for {T:?}: {e}");
                    retried += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    retried
}

/// Waits until `node` reports itself a primary.
async fn until_primary(node: &Node) {
    eventually(&format!("{node:?} to be a primary"), T, || async {
        let mut c = cluster_facts::node(node).await;
        let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut c).await.ok()?;
        let first: String = redis::from_redis_value_ref(role.first()?).ok()?;
        (first == "master").then_some(())
    })
    .await;
}

/// `CLUSTER FAILOVER` on a replica while jobs flow: the replica waits for its primary's
/// replication offset before taking over, so no acknowledged job is lost; the worker
/// rides through (retries, follows `MOVED`, reopens its wake-up connection) and is never
/// restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_handing_over_loses_no_job_and_the_worker_rides_through() {
    if cluster_urls().is_none() {
        return;
    }
    let cluster = OwnCluster::start();
    let env = TestEnv::on(&cluster.urls).await;
    let queues = cluster_facts::queue_per_primary(&cluster.urls, &env.prefix, "f").await;
    let w = env.worker(config(&env, &cluster.urls, &queues, 8), Registry::builtin()).await;
    let mut rx = w.events();
    // Jobs of 100 ms, 8 at a time per queue: some run and most wait when the primary goes.
    let job = ProbeArgs::new(ProbeAction::Sleep { ms: 100 });
    enqueue_through(&env, &queues, "before", 0..150, &job).await;
    let (old, replicas) = cluster_facts::owner(&cluster.urls, &format!("{}:{{{}}}:stats", env.prefix, queues[0])).await;
    let new = replicas.first().expect("the primary has a replica").clone();
    let _: () = redis::cmd("CLUSTER").arg("FAILOVER").query_async(&mut cluster_facts::node(&new).await).await.unwrap();
    let retried = enqueue_through(&env, &queues, "during", 0..150, &job).await;
    until_primary(&new).await;
    enqueue_through(&env, &queues, "after", 0..150, &job).await;
    let total: i64 = 450;
    eventually("every acknowledged job to succeed", Duration::from_secs(60), || async {
        let mut done = 0;
        for q in &queues {
            done += env.client.stats(q).await.ok()?.succeeded;
        }
        (done >= total).then_some(())
    })
    .await;
    let mut sum = 0;
    for q in &queues {
        let s = env.stats(q).await;
        assert_eq!((s.ready, s.running, s.dead), (0, 0, 0), "{q}: {s:?}");
        sum += s.succeeded;
    }
    assert_eq!(sum, total, "each job once");
    let (now_owner, _) = cluster_facts::owner(&cluster.urls, &format!("{}:{{{}}}:stats", env.prefix, queues[0])).await;
    assert_eq!(now_owner, new, "the replica took over from {old:?}");
    // The worker was never restarted: the same process, still delivering.
    let id = env.client.enqueue_with(&succeed(), on(&queues[0])).await.unwrap();
    let seen = fleet_tests::until_final(&mut rx, id.as_str(), T).await;
    assert_eq!(seen.last().unwrap().event.outcome, Outcome::Succeeded);
    eprintln!("enqueues retried while the primary handed over: {retried}");
    w.shutdown().await;
}

/// `kill -9` of a primary while jobs flow: the cluster promotes its replica after the node
/// timeout, and the worker rides through without a restart. The jobs enqueued before the
/// kill asked to be acknowledged once replicated (`EnqueueOptions::replicated`), so none
/// is lost with the primary; the ones enqueued meanwhile are retried by the caller until
/// a primary takes them. Every job runs to success, and the counters add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_mid_run_loses_no_replicated_job_and_the_worker_rides_through() {
    if cluster_urls().is_none() {
        return;
    }
    let cluster = OwnCluster::start();
    let env = TestEnv::on(&cluster.urls).await;
    let queues = cluster_facts::queue_per_primary(&cluster.urls, &env.prefix, "k").await;
    let w = env.worker(config(&env, &cluster.urls, &queues, 8), Registry::builtin()).await;
    // Jobs of 100 ms, 8 at a time per queue: some run and most wait when the primary dies.
    let job = ProbeArgs::new(ProbeAction::Sleep { ms: 100 });
    for i in 0..150 {
        let opts = on(&queues[i % 3]).replicated(1, Duration::from_secs(2));
        env.client.enqueue_with(&job, opts).await.expect("acknowledged by a replica");
    }
    let (old, replicas) = cluster_facts::owner(&cluster.urls, &format!("{}:{{{}}}:stats", env.prefix, queues[0])).await;
    let pid = cluster.pid(old.1);
    assert!(std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status().unwrap().success());
    let retried = enqueue_through(&env, &queues, "during", 0..150, &job).await;
    let new = replicas.first().expect("a replica").clone();
    until_primary(&new).await;
    enqueue_through(&env, &queues, "after", 0..150, &job).await;
    let total: i64 = 450;
    eventually("every acknowledged job to succeed", Duration::from_secs(90), || async {
        let mut done = 0;
        for q in &queues {
            done += env.client.stats(q).await.ok()?.succeeded;
        }
        (done >= total).then_some(())
    })
    .await;
    for q in &queues {
        let s = env.stats(q).await;
        assert_eq!((s.succeeded, s.ready, s.running, s.dead), (150, 0, 0, 0), "{q}: {s:?}");
    }
    eprintln!("kill -9 of {old:?}: {retried} enqueues retried until {new:?} took over");
    w.shutdown().await;
    // `scripts/redis-cluster.sh start` again starts the dead node, which rejoins as a replica.
    cluster.heal();
    let mut c = cluster_facts::node(&old).await;
    let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut c).await.unwrap();
    assert_eq!(redis::from_redis_value_ref::<String>(&role[0]).unwrap(), "slave", "{old:?} came back as a replica");
}

/// The scheduler's HTTP API on the cluster: an idempotent enqueue (its key in the tenant's
/// own slot), a batch whose completion callback goes to a queue on another primary, and the
/// batch's view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_enqueues_and_runs_a_batch_on_the_cluster() {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use fleet_scheduler::api::{ApiState, app, auth};
    use serde_json::{Value, json};
    use tower::ServiceExt;
    let Some((env, urls)) = on_cluster().await else { return };
    let db = fleet_tests::TestDb::new().await;
    let key = auth::create_api_key(&db.pool, "acme", "test", &[auth::Role::Enqueue]).await.unwrap();
    let router = app(
        ApiState::new(env.client.clone(), db.pool.clone())
            .with_tenancy(fleet_scheduler::tenancy::TenancyConfig::for_tests()),
        64 * 1024,
    );
    let call = |method: &str, uri: &str, body: Option<Value>, idem: Option<&str>| {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {key}"));
        if let Some(k) = idem {
            req = req.header("idempotency-key", k);
        }
        let req = req.body(body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty)).unwrap();
        let router = router.clone();
        async move {
            let res = router.oneshot(req).await.unwrap();
            let status = res.status();
            let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
            (status, serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null))
        }
    };
    let probe = |action: &str| json!({"kind": "probe", "args": {"do": action}});
    let (s1, first) = call("POST", "/v1/jobs", Some(probe("succeed")), Some("order-7")).await;
    let (s2, again) = call("POST", "/v1/jobs", Some(probe("succeed")), Some("order-7")).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED), "{first}");
    assert_eq!(first["id"], again["id"]);
    // A queue declared for tenants whose slot is on another primary than `default`'s.
    let (default_owner, _) = cluster_facts::owner(&urls, &format!("{}:{{default}}:stats", env.prefix)).await;
    let mut callback_q = String::new();
    for q in ["callbacks", "images", "webhooks"] {
        if cluster_facts::owner(&urls, &format!("{}:{{{q}}}:stats", env.prefix)).await.0 != default_owner {
            callback_q = q.to_owned();
            break;
        }
    }
    assert!(!callback_q.is_empty(), "a tenant queue on another primary than default's");
    let jobs: Vec<Value> = (0..30).map(|i| if i == 3 { probe("give_up") } else { probe("succeed") }).collect();
    let req = json!({
        "jobs": jobs,
        "on_complete": {"kind": "probe", "args": {"do": "succeed", "tag": "done"}, "queue": callback_q}
    });
    let (s, batch) = call("POST", "/v1/batches", Some(req), None).await;
    assert_eq!(s, StatusCode::CREATED, "{batch}");
    let id = batch["id"].as_str().unwrap().to_owned();
    let queues = vec!["default".to_owned(), callback_q.clone()];
    let w = env.worker(config(&env, &urls, &queues, 8), Registry::builtin()).await;
    eventually("the completion callback to run on another primary's queue", T, || async {
        (env.stats(&callback_q).await.succeeded == 1).then_some(())
    })
    .await;
    let (s, view) = call("GET", &format!("/v1/batches/{id}"), None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (view["total"].as_i64(), view["succeeded"].as_i64(), view["failed"].as_i64()),
        (Some(30), Some(29), Some(1))
    );
    w.shutdown().await;
    db.drop_db().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_queue_lands_on_every_primary_and_all_its_jobs_run() {
    let Some((mut env, urls)) = on_cluster().await else { return };
    env.client = env.client.clone().with_partitions("hot", 3).unwrap();
    let parts = env.client.partitions("hot");
    let mut primaries = std::collections::HashSet::new();
    for p in &parts {
        let (primary, _) = cluster_facts::owner(&urls, &format!("{}:{{{p}}}:stats", env.prefix)).await;
        primaries.insert(primary);
    }
    assert_eq!(primaries.len(), 3, "the 3 partitions {parts:?} are on 3 different primaries");

    let mut cfg = config(&env, &urls, &["hot".to_owned()], 9);
    cfg.queues[0].partitions = Some(3);
    let w = env.worker(cfg, Registry::builtin()).await;
    let n = 150;
    let jobs = (0..n).map(|i| {
        let mut opts = on("hot");
        if i % 2 == 0 {
            opts.tenant = Some(format!("t{}", i % 6));
        }
        (succeed(), opts)
    });
    let ids = env.client.enqueue_bulk_with(jobs).await.unwrap();
    succeeded(&env, "hot", n).await;
    let s = env.stats("hot").await;
    assert_eq!((s.enqueued, s.succeeded, s.ready, s.running, s.failed), (n, n, 0, 0, 0));
    for (p, s) in env.client.partition_stats("hot").await.unwrap() {
        assert!(s.succeeded > 0, "{p} on its own primary ran jobs");
    }
    let job = env.client.job("hot", ids[7].as_str()).await.unwrap().expect("found by id");
    assert_eq!(job.state, JobState::Succeeded);
    w.shutdown().await;
    env.cleanup().await;
}
