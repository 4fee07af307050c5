//! The engine, through its public API, against the real Redis: one test per behaviour.
//! Each test has its own key prefix, so they run in parallel.

use fleet_jobs::backend::calls;
use fleet_jobs::backend::{Completion, EngineConfig, Op, Outcome};
use fleet_jobs::catalogue::{ProbeAction, ProbeArgs};
use fleet_jobs::envelope::now_ms;
use fleet_jobs::retry::{Backoff, Jitter};
use fleet_jobs::{EnqueueOptions, JobArgs, JobState, KindOptions, Priority};
use fleet_tests::{TestEnv, eventually, n_final, until_final};
use fleet_worker::kinds::probe::Probe;
use fleet_worker::{KindPolicy, Registry};
use serde_json::value::RawValue;
use std::time::{Duration, Instant};

mod acks;
mod controls;
mod dedup;
mod expiry;
mod kinds;
mod partitions;
mod progress;
mod suspects;

const T: Duration = Duration::from_secs(20);

fn probe(action: ProbeAction) -> ProbeArgs {
    ProbeArgs::new(action)
}

/// A registry whose probe retries after exactly `base`, doubling (no jitter).
pub(crate) fn fixed_backoff(base: Duration) -> Registry {
    Registry::new()
        .register_with(Probe, KindPolicy { backoff: Backoff::exponential(base).jitter(Jitter::None), timeout: None })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_once_and_succeeds() {
    let env = TestEnv::new().await;
    let w = env.worker(env.config("default", 4), Registry::builtin()).await;
    let mut rx = w.events();
    let id = env.client.enqueue(&probe(ProbeAction::Succeed)).await.unwrap();
    let seen = until_final(&mut rx, id.as_str(), T).await;
    assert_eq!(seen.len(), 1, "exactly one attempt: {seen:?}");
    assert_eq!(seen[0].event.outcome, Outcome::Succeeded);
    assert_eq!(seen[0].event.kind, "probe");
    let job = env.client.job("default", id.as_str()).await.unwrap().expect("record kept for the retention time");
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.attempts, 1);
    let s = env.stats("default").await;
    assert_eq!((s.succeeded, s.ready, s.running, s.failed, s.enqueued), (1, 0, 0, 0, 1));
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_failing_twice_succeeds_on_its_third_attempt_with_growing_delays() {
    let env = TestEnv::new().await;
    let base = Duration::from_millis(200);
    let w = env.worker(env.config("default", 4), fixed_backoff(base)).await;
    let mut rx = w.events();
    let id = env.client.enqueue(&probe(ProbeAction::FailTimes { times: 2 })).await.unwrap();
    let seen = until_final(&mut rx, id.as_str(), T).await;
    let outcomes: Vec<_> = seen.iter().map(|s| (s.event.attempt, s.event.outcome.clone())).collect();
    assert_eq!(outcomes, vec![(1, Outcome::Retrying), (2, Outcome::Retrying), (3, Outcome::Succeeded)]);
    let first_gap = seen[1].at - seen[0].at;
    let second_gap = seen[2].at - seen[1].at;
    assert!(first_gap >= base, "first retry waited {first_gap:?}, backoff is {base:?}");
    assert!(second_gap >= base * 2, "second retry waited {second_gap:?}, backoff is {:?}", base * 2);
    assert!(second_gap > first_gap, "delays grow: {first_gap:?} then {second_gap:?}");
    let job = env.client.job("default", id.as_str()).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Succeeded, 3));
    assert_eq!(job.history.len(), 2, "the two failures are in the history");
    assert!(job.history[0].error.contains("scripted failure 1 of 2"), "{:?}", job.history);
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_reached_goes_to_dead_letters_with_the_attempt_history() {
    let env = TestEnv::new().await;
    let w = env.worker(env.config("default", 4), fixed_backoff(Duration::from_millis(10))).await;
    let mut rx = w.events();
    let opts = EnqueueOptions::default().max_attempts(3);
    let id = env.client.enqueue_with(&probe(ProbeAction::Fail), opts).await.unwrap();
    let seen = until_final(&mut rx, id.as_str(), T).await;
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2].event.outcome, Outcome::Dead);
    let dead = env.client.dead_letters("default", 0, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.id, id.as_str());
    assert!(d.reason.contains("no attempts left"), "{}", d.reason);
    assert_eq!(d.job.state, JobState::Dead);
    let attempts: Vec<u32> = d.job.history.iter().map(|a| a.attempt).collect();
    assert_eq!(attempts, vec![1, 2, 3]);
    for a in &d.job.history {
        assert_eq!(a.worker.as_deref(), Some(w.instance()));
        assert!(a.started_at.is_some() && a.duration_ms.is_some());
    }
    assert_eq!(d.job.envelope.as_ref().unwrap().kind, "probe", "the envelope is kept");
    let s = env.stats("default").await;
    assert_eq!((s.dead, s.died, s.failed, s.retrying, s.running), (1, 1, 3, 0, 0));
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn give_up_goes_to_dead_letters_after_one_attempt() {
    let env = TestEnv::new().await;
    let w = env.worker(env.config("default", 4), Registry::builtin()).await;
    let mut rx = w.events();
    let id = env.client.enqueue(&probe(ProbeAction::GiveUp)).await.unwrap();
    let seen = until_final(&mut rx, id.as_str(), T).await;
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0].event.attempt, &seen[0].event.outcome), (1, &Outcome::Dead));
    let dead = env.client.dead_letters("default", 0, 10).await.unwrap();
    assert!(dead[0].reason.contains("scripted give-up"), "{}", dead[0].reason);
    assert_eq!(dead[0].job.attempts, 1);
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snooze_runs_again_without_counting_an_attempt() {
    let env = TestEnv::new().await;
    let w = env.worker(env.config("default", 4), Registry::builtin()).await;
    let mut rx = w.events();
    let until = now_ms() + 300;
    let opts = EnqueueOptions::default().max_attempts(1);
    let id = env.client.enqueue_with(&probe(ProbeAction::SnoozeUntil { ms: 60, until }), opts).await.unwrap();
    let seen = until_final(&mut rx, id.as_str(), T).await;
    let snoozes = seen.iter().filter(|s| s.event.outcome == Outcome::Snoozed).count();
    assert!(snoozes >= 2, "snoozed several times: {seen:?}");
    assert_eq!(seen.last().unwrap().event.outcome, Outcome::Succeeded, "max_attempts = 1 was never used up");
    assert!(seen.iter().all(|s| s.event.attempt == 1), "every run is attempt 1: {seen:?}");
    let job = env.client.job("default", id.as_str()).await.unwrap().unwrap();
    assert_eq!(job.attempts, 1);
    assert_eq!(env.stats("default").await.snoozed, snoozes as i64);
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_instead_of_the_backoff() {
    let env = TestEnv::new().await;
    // The kind's own backoff is a minute: only the handler's Retry-After can bring it back sooner.
    let w = env.worker(env.config("default", 4), fixed_backoff(Duration::from_secs(60))).await;
    let mut rx = w.events();
    let id = env.client.enqueue(&probe(ProbeAction::RetryAfter { ms: 400, times: 1 })).await.unwrap();
    let seen = until_final(&mut rx, id.as_str(), T).await;
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].event.outcome, Outcome::Retrying);
    // Events are seen when their acks land, so the gap between them can be a little shorter
    // than the delay (the first ack's event late, the second's early): allow 10 ms of that.
    let gap = seen[1].at - seen[0].at;
    assert!(gap >= Duration::from_millis(390), "retried after {gap:?}, asked for 400 ms");
    assert!(gap < Duration::from_secs(10), "retried after {gap:?}: the backoff was used, not Retry-After");
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_payloads_and_unknown_kinds_go_to_dead_letters_and_the_worker_goes_on() {
    let env = TestEnv::new().await;
    let w = env.worker(env.config("default", 1), Registry::builtin()).await;
    let mut rx = w.events();
    let defaults = KindOptions::default();
    let bad_args = RawValue::from_string(r#"{"do":"explode"}"#.into()).unwrap();
    let bad = env.client.enqueue_raw("probe", bad_args, &defaults, EnqueueOptions::default()).await.unwrap();
    let unknown_args = RawValue::from_string("{}".into()).unwrap();
    let unknown =
        env.client.enqueue_raw("no.such.kind", unknown_args, &defaults, EnqueueOptions::default()).await.unwrap();
    // An envelope that is not even JSON, written by something other than Fleet.
    let k = env.client.keys("default");
    let mut conn = env.client.connection();
    let _: () = redis::pipe()
        .hset(&k.jobs, "garbage", "\u{1}not json{")
        .hset(&k.state, "garbage", "q1")
        .rpush(&k.ready[1], "garbage")
        .hincr(&k.stats, "ready", 1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let good = env.client.enqueue(&probe(ProbeAction::Succeed)).await.unwrap();

    let done = n_final(&mut rx, 4, T).await;
    let outcome_of = |id: &str| done.iter().find(|e| e.id == id).map(|e| e.outcome.clone());
    assert_eq!(outcome_of(bad.as_str()), Some(Outcome::Dead));
    assert_eq!(outcome_of(unknown.as_str()), Some(Outcome::Dead));
    assert_eq!(outcome_of("garbage"), Some(Outcome::Dead));
    assert_eq!(outcome_of(good.as_str()), Some(Outcome::Succeeded), "the next job still runs");

    let dead = env.client.dead_letters("default", 0, 10).await.unwrap();
    let reason = |id: &str| dead.iter().find(|d| d.id == id).unwrap().reason.clone();
    assert!(reason(bad.as_str()).contains("do not decode as kind \"probe\""), "{}", reason(bad.as_str()));
    assert!(reason(unknown.as_str()).contains("unknown kind \"no.such.kind\""), "{}", reason(unknown.as_str()));
    assert!(reason("garbage").contains("undecodable envelope"), "{}", reason("garbage"));
    assert_eq!(dead.iter().find(|d| d.id == "garbage").unwrap().job.raw_envelope, "\u{1}not json{");
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_with_a_stale_lease_token_is_refused_and_counted() {
    let env = TestEnv::new().await;
    let mut conn = env.client.connection();
    let keys = env.client.keys("default");
    let mut zombie = EngineConfig::new(&env.prefix, "default", "zombie");
    zombie.lease = Duration::from_millis(1);
    let id = env.client.enqueue(&probe(ProbeAction::Succeed)).await.unwrap();

    let first = calls::lease(&mut conn, &keys, &zombie, 10).await.unwrap();
    assert_eq!(first.jobs.len(), 1);
    let old = &first.jobs[0];
    // The zombie's 1 ms lease has expired by the time anyone looks: a heartbeat of
    // another worker takes the job back, as a suspect (its attempt is not charged).
    let other = EngineConfig::new(&env.prefix, "default", "healthy");
    let report = eventually("the expired lease to be reaped", T, || {
        let (mut c, k, o) = (conn.clone(), keys.clone(), other.clone());
        async move { calls::heartbeat(&mut c, &k, &o, &[]).await.ok().filter(|r| r.reaped == 1) }
    })
    .await;
    assert_eq!(report.reaped, 1);
    let second = calls::lease(&mut conn, &keys, &other, 10).await.unwrap();
    assert_eq!(second.jobs.len(), 1);
    let new = &second.jobs[0];
    assert_eq!(new.attempt, 1, "the expired attempt is not charged: its worker stopped beside it");
    assert!(second.isolated, "a suspect is leased alone");
    assert_ne!(new.token, old.token);

    let done = |token: &str| Completion {
        id: id.to_string(),
        token: token.to_owned(),
        kind: "probe".into(),
        attempt: 1,
        batch: None,
        tenant: None,
        op: Op::Succeeded,
    };
    let refused = calls::complete(&mut conn, &keys, &zombie, &[done(&old.token)]).await.unwrap();
    assert_eq!(refused.applied, vec![false], "the zombie's completion is refused");
    assert_eq!(env.client.job_state("default", id.as_str()).await.unwrap(), Some(JobState::Running));
    let accepted = calls::complete(&mut conn, &keys, &other, &[done(&new.token)]).await.unwrap();
    assert_eq!(accepted.applied, vec![true]);
    let s = env.stats("default").await;
    assert_eq!((s.stale, s.lease_expired, s.succeeded, s.running), (1, 1, 1, 0));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_are_served_in_order_and_fifo_within_a_level() {
    let env = TestEnv::new().await;
    let mut expected = Vec::new();
    let mut jobs = Vec::new();
    for (i, p) in [Priority::Low, Priority::Default, Priority::High].iter().cycle().take(15).enumerate() {
        jobs.push((probe(ProbeAction::Succeed).tagged(i.to_string()), EnqueueOptions::default().priority(*p)));
    }
    // Paused while the worker starts and the test subscribes, so no event is missed.
    env.client.pause("default").await.unwrap();
    let ids = env.client.enqueue_bulk_with(jobs.clone()).await.unwrap();
    for level in [Priority::High, Priority::Default, Priority::Low] {
        for (i, (_, o)) in jobs.iter().enumerate() {
            if o.priority == Some(level) {
                expected.push(ids[i].to_string());
            }
        }
    }
    let w = env.worker(env.config("default", 1), Registry::builtin()).await;
    let mut rx = w.events();
    env.client.resume("default").await.unwrap();
    let done = n_final(&mut rx, 15, T).await;
    let order: Vec<String> = done.into_iter().map(|e| e.id).collect();
    assert_eq!(order, expected);
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_job_does_not_run_early() {
    let env = TestEnv::new().await;
    let w = env.worker(env.config("default", 2), Registry::builtin()).await;
    let mut rx = w.events();
    let delay = Duration::from_millis(700);
    let t0 = Instant::now();
    let id =
        env.client.enqueue_with(&probe(ProbeAction::Succeed), EnqueueOptions::default().delay(delay)).await.unwrap();
    assert_eq!(env.client.job_state("default", id.as_str()).await.unwrap(), Some(JobState::Scheduled));
    let seen = until_final(&mut rx, id.as_str(), T).await;
    let ran_after = seen[0].at - t0;
    assert!(ran_after >= delay, "ran {ran_after:?} after enqueue, delay {delay:?}");
    assert!(ran_after < delay + Duration::from_secs(2), "an idle worker picks the job up when due, took {ran_after:?}");
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_running_jobs_and_loses_none() {
    let env = TestEnv::new().await;
    let w = env.worker(env.config("default", 2), Registry::builtin()).await;
    let mut rx = w.events();
    let slow: Vec<_> = env
        .client
        .enqueue_bulk([probe(ProbeAction::Sleep { ms: 700 }), probe(ProbeAction::Sleep { ms: 700 })])
        .await
        .unwrap();
    eventually("both slow jobs to be running", T, || async { (env.stats("default").await.running == 2).then_some(()) })
        .await;
    let queued = env.client.enqueue_bulk((0..5).map(|_| probe(ProbeAction::Succeed))).await.unwrap();
    w.shutdown().await;

    let mut finished = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        finished.push(ev);
    }
    for id in &slow {
        assert!(
            finished.iter().any(|e| e.id == id.as_str() && e.outcome == Outcome::Succeeded),
            "running job {id} finished before exit: {finished:?}"
        );
    }
    let s = env.stats("default").await;
    assert_eq!(s.running, 0, "no job left running");
    let leases: i64 = redis::cmd("ZCARD")
        .arg(env.client.keys("default").leases)
        .query_async(&mut env.client.connection())
        .await
        .unwrap();
    assert_eq!(leases, 0, "no lease left behind");
    let ran_before_exit = finished.iter().filter(|e| queued.iter().any(|q| q.as_str() == e.id)).count() as i64;
    assert_eq!(s.ready, 5 - ran_before_exit, "queued jobs are still ready: {s:?}");

    // Nothing was lost: a new worker runs everything that is left.
    let w2 = env.worker(env.config("default", 2), Registry::builtin()).await;
    let s = eventually("the rest to run", T, || async {
        let s = env.stats("default").await;
        (s.pending() == 0).then_some(s)
    })
    .await;
    assert_eq!(s.succeeded, 7);
    w2.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cut_off_by_the_grace_period_is_handed_back_without_counting_an_attempt() {
    let env = TestEnv::new().await;
    let mut cfg = env.config("default", 1);
    cfg.shutdown_grace_secs = 0;
    let w = env.worker(cfg, Registry::builtin()).await;
    let id = env.client.enqueue(&probe(ProbeAction::Sleep { ms: 30_000 })).await.unwrap();
    eventually("the job to run", T, || async {
        (env.client.job_state("default", id.as_str()).await.unwrap() == Some(JobState::Running)).then_some(())
    })
    .await;
    w.shutdown().await;
    let job = env.client.job("default", id.as_str()).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Ready, "handed back to ready");
    assert_eq!(job.attempts, 0, "the cut-off attempt is not counted");
    let s = env.stats("default").await;
    assert_eq!((s.ready, s.running), (1, 0));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_fails_that_attempt_only() {
    let env = TestEnv::new().await;
    let w = env.worker(env.config("default", 2), fixed_backoff(Duration::from_millis(10))).await;
    let mut rx = w.events();
    let opts = EnqueueOptions::default().max_attempts(2);
    let id = env.client.enqueue_with(&probe(ProbeAction::Panic), opts).await.unwrap();
    let seen = until_final(&mut rx, id.as_str(), T).await;
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].event.outcome, Outcome::Dead);
    let job = env.client.job("default", id.as_str()).await.unwrap().unwrap();
    assert!(job.history[0].error.contains("panicked: probe: scripted panic"), "{:?}", job.history);
    let ok = env.client.enqueue(&probe(ProbeAction::Succeed)).await.unwrap();
    assert_eq!(until_final(&mut rx, ok.as_str(), T).await[0].event.outcome, Outcome::Succeeded);
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_over_its_timeout_counts_as_a_failure() {
    let env = TestEnv::new().await;
    let w = env.worker(env.config("default", 2), fixed_backoff(Duration::from_millis(10))).await;
    let mut rx = w.events();
    let opts = EnqueueOptions::default().max_attempts(1).timeout(Duration::from_millis(100));
    let id = env.client.enqueue_with(&probe(ProbeAction::Sleep { ms: 10_000 }), opts).await.unwrap();
    let seen = until_final(&mut rx, id.as_str(), T).await;
    assert_eq!(seen[0].event.outcome, Outcome::Dead);
    let job = env.client.job("default", id.as_str()).await.unwrap().unwrap();
    assert!(job.history[0].error.contains("timed out after 100 ms"), "{:?}", job.history);
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_enqueue_runs_every_job_once_across_workers() {
    let env = TestEnv::new().await;
    let n = 2_500;
    env.client.pause("default").await.unwrap();
    let ids = env.client.enqueue_bulk((0..n).map(|i| probe(ProbeAction::Succeed).tagged(i.to_string()))).await.unwrap();
    assert_eq!(ids.len(), n);
    assert_eq!(env.stats("default").await.ready, n as i64);
    let a = env.worker(env.config("default", 50), Registry::builtin()).await;
    let b = env.worker(env.config("default", 50), Registry::builtin()).await;
    let (mut ra, mut rb) = (a.events(), b.events());
    env.client.resume("default").await.unwrap();
    let mut seen = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + T;
    while seen.len() < n {
        let ev = tokio::select! {
            e = ra.recv() => e,
            e = rb.recv() => e,
            _ = tokio::time::sleep_until(deadline) => panic!("only {} of {n} jobs finished", seen.len()),
        }
        .expect("events");
        assert_eq!(ev.outcome, Outcome::Succeeded);
        assert!(seen.insert(ev.id.clone()), "job {} ran twice", ev.id);
    }
    assert_eq!(seen.len(), n);
    let s = env.stats("default").await;
    assert_eq!((s.pending(), s.stale, s.failed), (0, 0, 0));
    a.shutdown().await;
    b.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueueing_the_same_id_twice_creates_one_job() {
    let env = TestEnv::new().await;
    let opts = EnqueueOptions { id: Some("order-42".into()), ..Default::default() };
    env.client.enqueue_with(&probe(ProbeAction::Succeed), opts.clone()).await.unwrap();
    env.client.enqueue_with(&probe(ProbeAction::Fail), opts).await.unwrap();
    let s = env.stats("default").await;
    assert_eq!((s.enqueued, s.ready), (1, 1));
    let job = env.client.job("default", "order-42").await.unwrap().unwrap();
    let args: ProbeArgs = serde_json::from_str(job.envelope.unwrap().args.get()).unwrap();
    assert_eq!(args.action, ProbeAction::Succeed, "the first enqueue wins");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_queue_starts_nothing_until_resumed() {
    let env = TestEnv::new().await;
    env.client.pause("default").await.unwrap();
    let w = env.worker(env.config("default", 2), Registry::builtin()).await;
    let mut rx = w.events();
    let id = env.client.enqueue(&probe(ProbeAction::Succeed)).await.unwrap();
    // The wake-up from the enqueue reaches the worker, which must find the queue paused.
    eventually("the worker to see the enqueue", T, || async {
        let len: i64 = redis::cmd("LLEN")
            .arg(env.client.keys("default").wake)
            .query_async(&mut env.client.connection())
            .await
            .unwrap();
        (len == 0).then_some(())
    })
    .await;
    assert_eq!(env.client.job_state("default", id.as_str()).await.unwrap(), Some(JobState::Ready));
    env.client.resume("default").await.unwrap();
    assert_eq!(until_final(&mut rx, id.as_str(), T).await[0].event.outcome, Outcome::Succeeded);
    w.shutdown().await;
    env.cleanup().await;
}

#[test]
fn probe_kind_name_is_stable() {
    assert_eq!(ProbeArgs::KIND, "probe");
}
