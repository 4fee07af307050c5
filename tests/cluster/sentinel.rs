//! Fleet behind Redis Sentinel: a `redis+sentinel://` URL setting finds the primary
//! through the Sentinels, and when the primary dies the worker and the client follow the
//! replica the Sentinels promote, without a restart.

use super::{T, on, succeed};
use fleet_jobs::JobId;
use fleet_jobs::catalogue::{ProbeAction, ProbeArgs};
use fleet_tests::{OwnSentinel, TestEnv, eventually};
use fleet_worker::{QueueConfig, Registry};
use std::time::Duration;

/// Enqueues `n` jobs tagged `tag`, each retried until a primary takes it (while the
/// Sentinels have not promoted the replica yet, enqueues fail). Returns the retries.
async fn enqueue_until_taken(env: &TestEnv, queue: &str, tag: &str, n: usize, job: &ProbeArgs) -> usize {
    let mut retried = 0;
    for i in 0..n {
        let mut opts = on(queue);
        opts.id = Some(JobId(format!("{tag}-{i}")));
        let deadline = std::time::Instant::now() + T;
        while let Err(e) = env.client.enqueue_with(job, opts.clone()).await {
            assert!(std::time::Instant::now() < deadline, "enqueue of {tag}-{i} failed for {T:?}: {e}");
            retried += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    retried
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_behind_sentinel_loses_no_replicated_job_and_the_worker_follows_the_new_one() {
    let t0 = std::time::Instant::now();
    let sentinel = OwnSentinel::start();
    eprintln!("{:?}: Sentinel setup up", t0.elapsed());
    let env = TestEnv::on(&sentinel.urls).await;
    assert_eq!(format!("{:?}", env.client.connection()), "RedisConn(sentinel)");
    let queue = "sentinel";
    let mut cfg = env.config(queue, 8);
    cfg.redis_url = sentinel.urls.clone();
    cfg.queues = vec![QueueConfig { name: queue.into(), concurrency: 8, fetch_batch: None, partitions: None }];
    let w = env.worker(cfg, Registry::builtin()).await;
    // Jobs of 50 ms, 8 at a time: most still wait when the primary dies.
    let job = ProbeArgs::new(ProbeAction::Sleep { ms: 50 });
    for i in 0..100 {
        let mut opts = on(queue).replicated(1, Duration::from_secs(2));
        opts.id = Some(JobId(format!("before-{i}")));
        env.client.enqueue_with(&job, opts).await.expect("acknowledged by the replica");
    }
    let (old, replica) = (sentinel.ports[0], sentinel.ports[1]);
    assert_eq!(sentinel.primary(), Some(old));
    let pid = sentinel.pid(old);
    assert!(std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status().unwrap().success());
    // Enqueues fail until the Sentinels promote the replica; the client then follows it.
    eprintln!("{:?}: primary killed", t0.elapsed());
    let retried = enqueue_until_taken(&env, queue, "during", 50, &job).await;
    eprintln!("{:?}: 50 enqueued during", t0.elapsed());
    eventually("the Sentinels to name the replica", T, || async {
        (sentinel.primary() == Some(replica)).then_some(())
    })
    .await;
    enqueue_until_taken(&env, queue, "after", 50, &job).await;
    eprintln!("{:?}: 50 enqueued after; {:?}", t0.elapsed(), env.stats(queue).await);
    eventually("every acknowledged job to succeed", Duration::from_secs(60), || async {
        (env.client.stats(queue).await.ok()?.succeeded >= 200).then_some(())
    })
    .await;
    let s = env.stats(queue).await;
    eprintln!("{:?}: all done", t0.elapsed());
    assert_eq!((s.succeeded, s.ready, s.running, s.dead), (200, 0, 0, 0), "{s:?}");
    // A job enqueued now runs on the new primary through the same, never restarted, worker.
    let mut rx = w.events();
    let id = env.client.enqueue_with(&succeed(), on(queue)).await.unwrap();
    let seen = fleet_tests::until_final(&mut rx, id.as_str(), T).await;
    assert_eq!(seen.last().unwrap().event.outcome, fleet_jobs::backend::Outcome::Succeeded);
    eprintln!("kill -9 of the primary on {old}: {retried} enqueues retried until {replica} took over");
    w.shutdown().await;
}
