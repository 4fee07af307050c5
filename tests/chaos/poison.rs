//! Poison pills: a job that kills its worker is a suspect, run alone, and ends dead by
//! itself; the jobs that were leased beside it are not charged for its crashes.

use super::{EXE, settings};
use fleet_jobs::catalogue::{ProbeAction, ProbeArgs};
use fleet_jobs::{JobId, JobState};
use fleet_tests::{TestEnv, WorkerProcess, eventually, redis_url};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_job_in_a_bulk_of_twenty_dies_alone_and_the_others_succeed() {
    let env = TestEnv::new().await;
    // The culprit first, so it is leased in the first batch, beside nine sleepers.
    let jobs = std::iter::once(ProbeArgs::new(ProbeAction::Crash))
        .chain((0..19).map(|_| ProbeArgs::new(ProbeAction::Sleep { ms: 500 })));
    let ids: Vec<JobId> = env.client.enqueue_bulk(jobs).await.unwrap();
    let (culprit, innocents) = (ids[0].clone(), ids[1..].to_vec());
    let url = redis_url();
    let spawn = || WorkerProcess::spawn(EXE, &url, &env.prefix, &settings("1500"));
    let mut workers = vec![spawn(), spawn()];
    let mut restarts = 0;
    // A supervisor (like Kubernetes) restarts a worker whenever it dies.
    eventually("the culprit dead and the 19 others succeeded", Duration::from_secs(120), || {
        for w in workers.iter_mut() {
            if w.exited() {
                restarts += 1;
                *w = spawn();
            }
        }
        let client = env.client.clone();
        async move {
            let s = client.stats("default").await.ok()?;
            (s.died == 1 && s.succeeded == 19 && s.pending() == 0).then_some(())
        }
    })
    .await;
    assert!(restarts >= 3, "the culprit crashed a worker at least 3 times ({restarts} restarts)");

    let job = env.client.job("default", culprit.as_str()).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Dead);
    assert_eq!(job.history.len(), 3, "{:?}", job.history);
    assert!(job.history.iter().all(|a| a.error.contains("lease expired: its worker stopped")), "{:?}", job.history);
    assert!(job.history[0].error.contains("crash 1 of 3"), "{:?}", job.history);
    let dead = env.client.dead_letters("default", 0, 10).await.unwrap();
    assert_eq!(dead.len(), 1, "only the culprit is dead: {dead:?}");
    assert_eq!(dead[0].id, culprit.as_str());
    assert!(dead[0].reason.starts_with("crashed its worker 3 times"), "{}", dead[0].reason);

    // Its neighbours: succeeded on their first counted attempt; those that were running
    // beside it when it crashed say so, once.
    let mut beside = 0;
    for id in &innocents {
        let job = env.client.job("default", id.as_str()).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Succeeded, "{id}: {:?}", job.history);
        assert_eq!(job.attempts, 1, "{id}: no attempt charged for a crash it did not cause: {:?}", job.history);
        assert!(job.history.len() <= 1, "{id} was beside a crash at most once: {:?}", job.history);
        for a in &job.history {
            assert!(
                a.error.contains("lease expired: its worker stopped (crash 1 of 3, attempt not counted)"),
                "{id}: {}",
                a.error
            );
            beside += 1;
        }
    }
    assert!(beside >= 1, "some sleepers were leased beside the culprit when it first crashed");
    let s = env.stats("default").await;
    assert_eq!((s.died, s.succeeded, s.running, s.ready), (1, 19, 0, 0), "{s:?}");
    for w in workers {
        w.terminate(Duration::from_secs(15));
    }
    env.cleanup().await;
}
