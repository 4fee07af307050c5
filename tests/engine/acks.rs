//! Idempotent acknowledgements, driven script call by script call: a completion sent
//! again after its reply was lost is recognised as applied (not stale), and a completion
//! that reaches Redis after its lease was reaped, before another attempt started, is
//! applied and the job does not run again.

use fleet_jobs::backend::calls::{self, AckFlag};
use fleet_jobs::backend::{Completion, EngineConfig, Op, RawJob};
use fleet_jobs::catalogue::{ProbeAction, ProbeArgs};
use fleet_jobs::state::AttemptRecord;
use fleet_jobs::{EnqueueOptions, JobState};
use fleet_tests::{TestEnv, eventually};
use std::collections::HashMap;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn engine(env: &TestEnv, instance: &str, lease: Duration) -> EngineConfig {
    let mut cfg = EngineConfig::new(env.prefix.clone(), "default", instance);
    cfg.lease = lease;
    cfg
}

fn completion(job: &RawJob, op: Op) -> Completion {
    Completion {
        id: job.id.clone(),
        token: job.token.clone(),
        kind: "probe".into(),
        attempt: job.attempt,
        batch: None,
        tenant: serde_json::from_str::<fleet_jobs::Envelope>(&job.envelope).unwrap().tenant,
        op,
    }
}

fn failed(job: &RawJob) -> AttemptRecord {
    AttemptRecord {
        attempt: job.attempt,
        at: fleet_jobs::envelope::now_ms(),
        worker: None,
        started_at: None,
        duration_ms: None,
        error: "boom".into(),
    }
}

async fn tenant_counters(env: &TestEnv) -> (HashMap<String, i64>, HashMap<String, i64>) {
    let k = env.client.keys("default");
    let mut conn = env.client.connection();
    let q = |name: &str| k.jobs.trim_end_matches("jobs").to_owned() + name;
    let trun: HashMap<String, i64> = redis::cmd("HGETALL").arg(q("trun")).query_async(&mut conn).await.unwrap();
    let topen: HashMap<String, i64> = redis::cmd("HGETALL").arg(q("topen")).query_async(&mut conn).await.unwrap();
    (trun, topen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_sent_twice_is_recognised_as_applied_not_stale() {
    let env = TestEnv::new().await;
    let (k, mut conn) = (env.client.keys("default"), env.client.connection());
    let cfg = engine(&env, "w1", Duration::from_secs(30));
    let opts = || EnqueueOptions { tenant: Some("acme".into()), ..Default::default() };
    for _ in 0..4 {
        env.client.enqueue_with(&ProbeArgs::new(ProbeAction::Succeed), opts()).await.unwrap();
    }
    let got = calls::lease(&mut conn, &k, &cfg, 10).await.unwrap().jobs;
    assert_eq!(got.len(), 4);
    let batch = vec![
        completion(&got[0], Op::Succeeded),
        completion(&got[1], Op::Retry { delay: Duration::from_secs(60), record: failed(&got[1]) }),
        completion(&got[2], Op::Dead { record: failed(&got[2]) }),
        completion(&got[3], Op::Snooze { delay: Duration::from_secs(60) }),
    ];
    let first = calls::complete(&mut conn, &k, &cfg, &batch).await.unwrap();
    assert_eq!(first.flags, vec![AckFlag::Applied; 4]);
    let before = env.stats("default").await;
    // The reply was lost (say, Redis restarted): the worker sends the same batch again.
    let again = calls::complete(&mut conn, &k, &cfg, &batch).await.unwrap();
    assert_eq!(again.flags, vec![AckFlag::Duplicate; 4], "each completion is recognised");
    assert_eq!(again.applied, vec![true; 4]);
    let s = env.stats("default").await;
    assert_eq!((s.stale, s.duplicate_acks), (0, 4), "{s:?}");
    // Nothing was applied twice.
    assert_eq!(
        (s.succeeded, s.failed, s.died, s.retrying, s.scheduled, s.dead, s.running),
        (before.succeeded, before.failed, before.died, before.retrying, before.scheduled, before.dead, 0)
    );
    let states = fleet_tests::states(
        &env.client,
        "default",
        &got.iter().map(|j| fleet_jobs::JobId(j.id.clone())).collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(
        states,
        vec![Some(JobState::Succeeded), Some(JobState::Retrying), Some(JobState::Dead), Some(JobState::Scheduled)]
    );
    let (trun, topen) = tenant_counters(&env).await;
    assert!(trun.is_empty(), "nothing runs: {trun:?}");
    assert_eq!(topen.get("acme"), Some(&2), "the retrying and the snoozed job are open: {topen:?}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_after_the_record_is_deleted_is_not_stale() {
    let env = TestEnv::new().await;
    let (k, mut conn) = (env.client.keys("default"), env.client.connection());
    let mut cfg = engine(&env, "w1", Duration::from_secs(30));
    cfg.retention = Duration::ZERO;
    env.client.enqueue(&ProbeArgs::new(ProbeAction::Succeed)).await.unwrap();
    let got = calls::lease(&mut conn, &k, &cfg, 10).await.unwrap().jobs;
    let ok = [completion(&got[0], Op::Succeeded)];
    assert_eq!(calls::complete(&mut conn, &k, &cfg, &ok).await.unwrap().flags, vec![AckFlag::Applied]);
    assert_eq!(calls::complete(&mut conn, &k, &cfg, &ok).await.unwrap().flags, vec![AckFlag::Gone]);
    let s = env.stats("default").await;
    assert_eq!((s.stale, s.gone_acks, s.succeeded), (0, 1, 1), "{s:?}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_after_its_lease_was_reaped_but_before_another_attempt_is_applied() {
    let env = TestEnv::new().await;
    let (k, mut conn) = (env.client.keys("default"), env.client.connection());
    // The worker that ran the jobs was cut off longer than its 1 ms lease.
    let cut_off = engine(&env, "cut-off", Duration::from_millis(1));
    let other = engine(&env, "other", Duration::from_secs(30));
    let opts = || EnqueueOptions { tenant: Some("acme".into()), ..Default::default() }.max_attempts(5);
    let ok_id = env.client.enqueue_with(&ProbeArgs::new(ProbeAction::Succeed), opts()).await.unwrap();
    let retry_id = env.client.enqueue_with(&ProbeArgs::new(ProbeAction::Succeed), opts()).await.unwrap();
    let got = calls::lease(&mut conn, &k, &cut_off, 10).await.unwrap().jobs;
    assert_eq!(got.len(), 2);
    // Another worker's heartbeat takes both back to ready, counting the attempt.
    eventually("both expired leases to be reaped", T, || {
        let (mut c, k, o) = (conn.clone(), k.clone(), other.clone());
        async move { calls::heartbeat(&mut c, &k, &o, &[]).await.ok().filter(|r| r.reaped == 2) }
    })
    .await;
    assert_eq!(env.client.job_state("default", ok_id.as_str()).await.unwrap(), Some(JobState::Ready));
    let s = env.stats("default").await;
    assert_eq!((s.ready, s.running, s.lease_expired), (2, 0, 2), "{s:?}");

    // The cut-off worker reconnects and sends what it finished meanwhile.
    let by_id = |id: &str| got.iter().find(|j| j.id == id).unwrap();
    let batch = [
        completion(by_id(ok_id.as_str()), Op::Succeeded),
        completion(
            by_id(retry_id.as_str()),
            Op::Retry { delay: Duration::from_secs(60), record: failed(by_id(retry_id.as_str())) },
        ),
    ];
    let late = calls::complete(&mut conn, &k, &cut_off, &batch).await.unwrap();
    assert_eq!(late.flags, vec![AckFlag::Late, AckFlag::Late]);
    assert_eq!(env.client.job_state("default", ok_id.as_str()).await.unwrap(), Some(JobState::Succeeded));
    assert_eq!(env.client.job_state("default", retry_id.as_str()).await.unwrap(), Some(JobState::Retrying));
    let s = env.stats("default").await;
    assert_eq!((s.stale, s.late_acks, s.succeeded, s.ready, s.running, s.retrying), (0, 2, 1, 0, 0, 1), "{s:?}");

    // Neither runs again now: the next fetch finds nothing (their old ready entries are dropped).
    let next = calls::lease(&mut conn, &k, &other, 10).await.unwrap();
    assert!(next.jobs.is_empty(), "{:?}", next.jobs);
    assert_eq!(env.stats("default").await.ready, 0);
    // Sent once more (the reply was lost again): a duplicate, not stale, not applied twice.
    let dup = calls::complete(&mut conn, &k, &cut_off, &batch).await.unwrap();
    assert_eq!(dup.flags, vec![AckFlag::Duplicate, AckFlag::Duplicate]);
    let (trun, topen) = tenant_counters(&env).await;
    assert!(trun.is_empty(), "{trun:?}");
    assert_eq!(topen.get("acme"), Some(&1), "only the retrying job is open: {topen:?}");
    let s = env.stats("default").await;
    assert_eq!((s.succeeded, s.retrying, s.stale, s.duplicate_acks), (1, 1, 0, 2), "{s:?}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_after_another_attempt_started_is_still_refused() {
    let env = TestEnv::new().await;
    let (k, mut conn) = (env.client.keys("default"), env.client.connection());
    let cut_off = engine(&env, "cut-off", Duration::from_millis(1));
    let other = engine(&env, "other", Duration::from_secs(30));
    let id = env
        .client
        .enqueue_with(&ProbeArgs::new(ProbeAction::Succeed), EnqueueOptions::default().max_attempts(5))
        .await
        .unwrap();
    let old = calls::lease(&mut conn, &k, &cut_off, 10).await.unwrap().jobs.remove(0);
    eventually("the expired lease to be reaped", T, || {
        let (mut c, k, o) = (conn.clone(), k.clone(), other.clone());
        async move { calls::heartbeat(&mut c, &k, &o, &[]).await.ok().filter(|r| r.reaped == 1) }
    })
    .await;
    let new = calls::lease(&mut conn, &k, &other, 10).await.unwrap().jobs.remove(0);
    // Reaped beside nothing it could blame, the job came back a suspect with its attempt
    // handed back: the same attempt number, under a new lease token.
    assert_eq!(new.attempt, 1);
    assert_ne!(new.token, old.token);
    let refused = calls::complete(&mut conn, &k, &cut_off, &[completion(&old, Op::Succeeded)]).await.unwrap();
    assert_eq!(refused.flags, vec![AckFlag::Refused]);
    // Reaped again and back in ready: the first attempt's completion is still refused.
    let mut gone = other.clone();
    gone.lease = Duration::from_millis(1);
    let _ = calls::heartbeat(&mut conn, &k, &gone, &[(new.id.clone(), new.token.clone())]).await.unwrap();
    eventually("the second lease to be reaped", T, || {
        let (mut c, k, o) = (conn.clone(), k.clone(), other.clone());
        async move { calls::heartbeat(&mut c, &k, &o, &[]).await.ok().filter(|r| r.reaped == 1) }
    })
    .await;
    let refused = calls::complete(&mut conn, &k, &cut_off, &[completion(&old, Op::Succeeded)]).await.unwrap();
    assert_eq!(refused.flags, vec![AckFlag::Refused]);
    assert_eq!(env.client.job_state("default", id.as_str()).await.unwrap(), Some(JobState::Ready));
    let s = env.stats("default").await;
    assert_eq!((s.stale, s.late_acks, s.succeeded), (2, 0, 0), "{s:?}");
    env.cleanup().await;
}
