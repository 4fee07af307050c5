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
    cfg.queues = vec![QueueConfig { name: "default".into(), concurrency: 200, fetch_batch: Some(200) }];
    cfg.retention_secs = 0;
    let worker = env.worker(cfg, Registry::builtin()).await;
    all_final(&env, n, Duration::from_secs(240)).await;
    let s = env.stats("default").await;
    assert_eq!((s.succeeded, s.scheduled, s.ready), (n, 0, 0));
    worker.shutdown().await;
    env.cleanup().await;
}
