//! Per-job controls (unique keys, deadlines, cancellation) and the bounds on what Redis keeps.

use super::{T, fixed_backoff, probe};
use fleet_jobs::backend::Outcome;
use fleet_jobs::catalogue::ProbeAction;
use fleet_jobs::{CancelOutcome, EnqueueOptions, JobState};
use fleet_tests::{TestEnv, eventually, n_final, until_final};
use fleet_worker::Registry;
use std::time::{Duration, Instant, SystemTime};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_inside_the_unique_window_returns_the_existing_job() {
    let env = TestEnv::new().await;
    let window = Duration::from_millis(300);
    let opts = || EnqueueOptions::default().unique("sync:calendar:42", window);
    let t0 = Instant::now();
    let first = env.client.enqueue_with(&probe(ProbeAction::Succeed), opts()).await.unwrap();
    let dup = env.client.enqueue_with(&probe(ProbeAction::Succeed), opts()).await.unwrap();
    assert_eq!(dup, first, "inside the window the existing job's id comes back");
    let other = env
        .client
        .enqueue_with(&probe(ProbeAction::Succeed), EnqueueOptions::default().unique("sync:calendar:43", window))
        .await
        .unwrap();
    assert_ne!(other, first, "another key is another job");
    let bulk = env.client.enqueue_bulk_with((0..3).map(|_| (probe(ProbeAction::Succeed), opts()))).await.unwrap();
    assert!(bulk.iter().all(|id| *id == first), "bulk duplicates too: {bulk:?}");
    assert_eq!(env.stats("default").await.enqueued, 2);
    // Once the window is over, the key takes a new job.
    let later = eventually("the unique window to end", T, || async {
        let id = env.client.enqueue_with(&probe(ProbeAction::Succeed), opts()).await.unwrap();
        (id != first).then_some(id)
    })
    .await;
    assert!(t0.elapsed() >= window);
    assert_eq!(env.client.job_state("default", later.as_str()).await.unwrap(), Some(JobState::Ready));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_not_started_by_its_deadline_expires_instead_of_running() {
    let env = TestEnv::new().await;
    env.client.pause("default").await.unwrap();
    let deadline = SystemTime::now() + Duration::from_millis(50);
    // If it ran, Fail would make it retry: Expired proves it did not run.
    let late =
        env.client.enqueue_with(&probe(ProbeAction::Fail), EnqueueOptions::default().deadline(deadline)).await.unwrap();
    let in_time = env
        .client
        .enqueue_with(
            &probe(ProbeAction::Succeed),
            EnqueueOptions::default().deadline(SystemTime::now() + Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    eventually("the deadline to pass", T, || async { (SystemTime::now() > deadline).then_some(()) }).await;
    let w = env.worker(env.config("default", 2), Registry::builtin()).await;
    let mut rx = w.events();
    env.client.resume("default").await.unwrap();
    let seen = until_final(&mut rx, late.as_str(), T).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].event.outcome, Outcome::Expired);
    assert_eq!(env.client.job_state("default", late.as_str()).await.unwrap(), Some(JobState::Expired));
    assert_eq!(until_final(&mut rx, in_time.as_str(), T).await[0].event.outcome, Outcome::Succeeded);
    let s = env.stats("default").await;
    assert_eq!((s.expired, s.failed, s.succeeded), (1, 0, 1));
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_queued_and_scheduled_jobs_means_they_never_run() {
    let env = TestEnv::new().await;
    env.client.pause("default").await.unwrap();
    let queued = env.client.enqueue(&probe(ProbeAction::Fail)).await.unwrap();
    let delayed = env
        .client
        .enqueue_with(&probe(ProbeAction::Fail), EnqueueOptions::default().delay(Duration::from_secs(3600)))
        .await
        .unwrap();
    let kept = env.client.enqueue(&probe(ProbeAction::Succeed)).await.unwrap();
    assert_eq!(env.client.cancel("default", queued.as_str()).await.unwrap(), CancelOutcome::Cancelled(JobState::Ready));
    assert_eq!(
        env.client.cancel("default", delayed.as_str()).await.unwrap(),
        CancelOutcome::Cancelled(JobState::Scheduled)
    );
    assert_eq!(
        env.client.cancel("default", queued.as_str()).await.unwrap(),
        CancelOutcome::AlreadyFinished(JobState::Cancelled)
    );
    assert_eq!(env.client.cancel("default", "no-such-job").await.unwrap(), CancelOutcome::NotFound);
    let s = env.stats("default").await;
    assert_eq!((s.ready, s.scheduled, s.cancelled), (1, 0, 2));

    let w = env.worker(env.config("default", 2), Registry::builtin()).await;
    let mut rx = w.events();
    env.client.resume("default").await.unwrap();
    let seen = until_final(&mut rx, kept.as_str(), T).await;
    assert_eq!(seen[0].event.outcome, Outcome::Succeeded);
    let mut others = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        others.push(ev);
    }
    assert!(others.is_empty(), "cancelled jobs never ran: {others:?}");
    assert_eq!(env.client.job_state("default", queued.as_str()).await.unwrap(), Some(JobState::Cancelled));
    let s = env.stats("default").await;
    assert_eq!((s.pending(), s.failed, s.succeeded), (0, 0, 1));
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_stops_its_handler() {
    let env = TestEnv::new().await;
    let mut cfg = env.config("default", 2);
    cfg.lease_ms = 900; // heartbeats every 300 ms
    let w = env.worker(cfg, Registry::builtin()).await;
    let mut rx = w.events();
    let id = env.client.enqueue(&probe(ProbeAction::Sleep { ms: 60_000 })).await.unwrap();
    eventually("the job to run", T, || async {
        (env.client.job_state("default", id.as_str()).await.unwrap() == Some(JobState::Running)).then_some(())
    })
    .await;
    assert_eq!(env.client.cancel("default", id.as_str()).await.unwrap(), CancelOutcome::Cancelled(JobState::Running));
    // The handler is stopped well before its 60 s sleep ends.
    let ev = tokio::time::timeout(T, async {
        loop {
            let ev = rx.recv().await.unwrap();
            if ev.id == id.as_str() {
                break ev;
            }
        }
    })
    .await
    .expect("the worker stops the cancelled handler");
    assert_eq!(ev.outcome, Outcome::Abandoned);
    assert_eq!(w_leased_after(&env).await, 0);
    let s = env.stats("default").await;
    assert_eq!((s.running, s.cancelled, s.stale, s.succeeded), (0, 1, 0, 0));
    assert_eq!(env.client.job_state("default", id.as_str()).await.unwrap(), Some(JobState::Cancelled));
    // The slot is free again.
    let next = env.client.enqueue(&probe(ProbeAction::Succeed)).await.unwrap();
    assert_eq!(until_final(&mut rx, next.as_str(), T).await[0].event.outcome, Outcome::Succeeded);
    w.shutdown().await;
    env.cleanup().await;
}

async fn w_leased_after(env: &TestEnv) -> i64 {
    redis::cmd("ZCARD").arg(env.client.keys("default").leases).query_async(&mut env.client.connection()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_bounded_by_count_and_evictions_are_counted() {
    let env = TestEnv::new().await;
    let mut cfg = env.config("default", 1);
    cfg.dead_max_count = 3;
    let w = env.worker(cfg, Registry::builtin()).await;
    let mut rx = w.events();
    let ids = env.client.enqueue_bulk((0..5).map(|_| probe(ProbeAction::GiveUp))).await.unwrap();
    n_final(&mut rx, 5, T).await;
    let s = env.stats("default").await;
    assert_eq!((s.dead, s.died, s.evicted), (3, 5, 2));
    let dead: Vec<String> =
        env.client.dead_letters("default", 0, 10).await.unwrap().into_iter().map(|d| d.id).collect();
    let newest: Vec<String> = ids[2..].iter().rev().map(|i| i.to_string()).collect();
    assert_eq!(dead, newest, "the oldest are evicted");
    assert!(env.client.job("default", ids[0].as_str()).await.unwrap().is_none(), "evicted records are deleted");
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_history_is_capped_and_finished_records_expire() {
    let env = TestEnv::new().await;
    let mut cfg = env.config("default", 1);
    cfg.history_cap = 2;
    cfg.retention_secs = 0;
    let w = env.worker(cfg, fixed_backoff(Duration::from_millis(5))).await;
    let mut rx = w.events();
    let failing =
        env.client.enqueue_with(&probe(ProbeAction::Fail), EnqueueOptions::default().max_attempts(4)).await.unwrap();
    until_final(&mut rx, failing.as_str(), T).await;
    let job = env.client.job("default", failing.as_str()).await.unwrap().unwrap();
    let kept: Vec<u32> = job.history.iter().map(|a| a.attempt).collect();
    assert_eq!(kept, vec![3, 4], "only the newest attempts are kept");
    let ok = env.client.enqueue(&probe(ProbeAction::Succeed)).await.unwrap();
    until_final(&mut rx, ok.as_str(), T).await;
    assert!(env.client.job("default", ok.as_str()).await.unwrap().is_none(), "retention 0 deletes succeeded records");
    assert_eq!(env.stats("default").await.succeeded, 1, "the counters still count it");
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_enqueue_that_too_few_replicas_confirm_is_an_error_but_written() {
    let env = TestEnv::new().await;
    let info: String = redis::cmd("INFO").arg("replication").query_async(&mut env.client.connection()).await.unwrap();
    let have: u32 = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("connected_slaves:"))
        .and_then(|n| n.parse().ok())
        .expect("INFO replication names connected_slaves");
    let mut opts = EnqueueOptions::default().replicated(have + 1, Duration::from_millis(100));
    opts.id = Some(fleet_jobs::JobId("replicated-1".into()));
    let err = env.client.enqueue_with(&probe(ProbeAction::Succeed), opts.clone()).await.unwrap_err();
    match err {
        fleet_jobs::Error::NotReplicated { replicas, wanted, .. } => assert_eq!((replicas, wanted), (have, have + 1)),
        other => panic!("expected NotReplicated, got {other}"),
    }
    // Written on the primary all the same: enqueueing the same id again is the same job.
    assert_eq!(env.client.job_state("default", "replicated-1").await.unwrap(), Some(JobState::Ready));
    let _ = env.client.enqueue_with(&probe(ProbeAction::Succeed), opts).await;
    assert_eq!(env.stats("default").await.enqueued, 1);
    // A queue's own setting on a client applies to the calls that do not say.
    let strict = env
        .client
        .clone()
        .with_queue_durability(
            "payments",
            fleet_jobs::Durability::Replicated { replicas: have + 1, timeout: Duration::from_millis(50) },
        )
        .unwrap();
    let on_payments = || EnqueueOptions::default().queue("payments");
    let e = strict.enqueue_with(&probe(ProbeAction::Succeed), on_payments()).await.unwrap_err();
    assert!(matches!(e, fleet_jobs::Error::NotReplicated { .. }), "{e}");
    let mut relaxed = on_payments();
    relaxed.durability = Some(fleet_jobs::Durability::Primary);
    strict.enqueue_with(&probe(ProbeAction::Succeed), relaxed).await.expect("a call's own setting wins");
    strict.enqueue_with(&probe(ProbeAction::Succeed), EnqueueOptions::default()).await.expect("other queues: primary");
    for bad in [
        EnqueueOptions::default().replicated(0, Duration::from_secs(1)),
        EnqueueOptions::default().replicated(1, Duration::from_secs(5)),
    ] {
        let e = env.client.enqueue_with(&probe(ProbeAction::Succeed), bad).await.unwrap_err();
        assert!(matches!(e, fleet_jobs::Error::Invalid(_)), "{e}");
    }
    env.cleanup().await;
}
