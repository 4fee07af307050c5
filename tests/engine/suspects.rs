//! The suspect path step by step: a job reaped beside others is not charged, waits as
//! a suspect, is leased alone (one busy worker at a time is told to drain for it), is
//! charged when it stops its worker alone, and dies at the crash limit.

use super::{T, probe};
use fleet_jobs::backend::{Completion, EngineConfig, Op, calls};
use fleet_jobs::catalogue::ProbeAction;
use fleet_jobs::{JobId, JobState};
use fleet_tests::{TestEnv, eventually};
use std::time::Duration;

async fn reap(env: &TestEnv, n: u64) {
    let (conn, keys) = (env.client.connection(), env.client.keys("default"));
    let reaper = EngineConfig::new(&env.prefix, "default", "reaper");
    eventually("the expired leases to be reaped", T, || {
        let (mut c, k, r) = (conn.clone(), keys.clone(), reaper.clone());
        async move { calls::heartbeat(&mut c, &k, &r, &[]).await.ok().filter(|x| x.reaped == n) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_reaped_beside_others_is_a_suspect_run_alone_and_a_culprit_dies_at_the_crash_limit() {
    let env = TestEnv::new().await;
    let mut conn = env.client.connection();
    let keys = env.client.keys("default");
    let ids: Vec<JobId> = env.client.enqueue_bulk((0..3).map(|_| probe(ProbeAction::Succeed))).await.unwrap();
    let mut dying = EngineConfig::new(&env.prefix, "default", "dying");
    dying.lease = Duration::from_millis(1);
    let first = calls::lease_for(&mut conn, &keys, &dying, 10, false).await.unwrap();
    assert_eq!(first.jobs.len(), 3);
    reap(&env, 3).await;
    // Nobody charged; all three wait as suspects (counted as ready).
    for id in &ids {
        let job = env.client.job("default", id.as_str()).await.unwrap().unwrap();
        assert_eq!((job.state, job.attempts), (JobState::Ready, 0));
        assert!(
            job.history[0].error.contains("its worker stopped (crash 1 of 3, attempt not counted)"),
            "{:?}",
            job.history
        );
    }
    let s = env.stats("default").await;
    assert_eq!((s.ready, s.running, s.failed, s.lease_expired), (3, 0, 0, 3));

    // A worker holding jobs gets none of them and is told to drain; a second busy one is
    // not (one drains at a time).
    let busy = EngineConfig::new(&env.prefix, "default", "busy");
    let got = calls::lease_for(&mut conn, &keys, &busy, 10, false).await.unwrap();
    assert_eq!((got.jobs.len(), got.suspects_waiting, got.isolated), (0, true, false));
    let busy2 = EngineConfig::new(&env.prefix, "default", "busy2");
    let got = calls::lease_for(&mut conn, &keys, &busy2, 10, false).await.unwrap();
    assert_eq!((got.jobs.len(), got.suspects_waiting), (0, false));
    // Holding nothing, it gets exactly one, alone.
    let mut alone = busy.clone();
    alone.lease = Duration::from_millis(1);
    let got = calls::lease_for(&mut conn, &keys, &alone, 10, true).await.unwrap();
    assert_eq!((got.jobs.len(), got.isolated), (1, true));
    let culprit = got.jobs[0].id.clone();
    assert_eq!(culprit, ids[0].as_str(), "suspects in the order they were reaped");
    // It stops its worker alone: charged, crash 2.
    reap(&env, 1).await;
    let job = env.client.job("default", &culprit).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Ready, 1));
    assert!(
        job.history[1].error.contains("while running it alone (crash 2 of 3, attempt 1 of 5)"),
        "{:?}",
        job.history
    );
    // The innocents, leased one at a time and alone, succeed on their first counted attempt.
    let calm = EngineConfig::new(&env.prefix, "default", "calm");
    for id in &ids[1..] {
        let one = calls::lease_for(&mut conn, &keys, &calm, 10, true).await.unwrap();
        assert_eq!((one.jobs.len(), one.isolated), (1, true));
        let j = &one.jobs[0];
        assert_eq!((j.id.as_str(), j.attempt), (id.as_str(), 1));
        let none = calls::lease_for(&mut conn, &keys, &calm, 10, false).await.unwrap();
        assert_eq!(none.jobs.len(), 0, "nothing beside a suspect");
        let done = Completion {
            id: j.id.clone(),
            token: j.token.clone(),
            kind: "probe".into(),
            attempt: j.attempt,
            batch: None,
            tenant: None,
            op: Op::Succeeded,
        };
        assert_eq!(calls::complete(&mut conn, &keys, &calm, &[done]).await.unwrap().applied, vec![true]);
    }
    // The crash limit is read at run time from the queue's conf.
    let _: () = redis::cmd("HSET").arg(&keys.conf).arg("crash_limit").arg(3).query_async(&mut conn).await.unwrap();
    let got = calls::lease_for(&mut conn, &keys, &alone, 10, true).await.unwrap();
    assert_eq!((got.jobs.len(), got.isolated, got.jobs[0].id.as_str()), (1, true, culprit.as_str()));
    reap(&env, 1).await;
    let dead = env.client.dead_letters("default", 0, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, culprit);
    assert!(dead[0].reason.starts_with("crashed its worker 3 times"), "{}", dead[0].reason);
    assert_eq!(dead[0].job.attempts, 2);
    let s = env.stats("default").await;
    assert_eq!((s.ready, s.dead, s.succeeded, s.running, s.failed, s.lease_expired), (0, 1, 2, 0, 2, 5));
    env.cleanup().await;
}
