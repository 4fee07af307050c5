//! Time-based expiry: with the fleet idle (no job completes), finished records past
//! their retention, dead letters past their age and unique keys past their window are
//! deleted by the workers' janitor, so the queue's structures return to empty.

use fleet_jobs::EnqueueOptions;
use fleet_jobs::backend::EngineConfig;
use fleet_jobs::backend::calls;
use fleet_jobs::catalogue::{ProbeAction, ProbeArgs};
use fleet_jobs::deadcaps::DeadCaps;
use fleet_tests::{TestEnv, eventually};
use fleet_worker::Registry;
use std::time::Duration;

/// Entries in each per-job structure of `queue`: job records, states, attempt counts,
/// histories, tenants, finished, dead, unique keys (hash and zset).
pub(crate) async fn sizes(env: &TestEnv, queue: &str) -> [i64; 9] {
    let k = env.client.keys(queue);
    let ten = k.jobs.trim_end_matches("jobs").to_owned() + "ten";
    let mut p = redis::pipe();
    p.hlen(&k.jobs).hlen(&k.state).hlen(&k.att).hlen(&k.hist).hlen(&ten);
    p.zcard(&k.done).zcard(&k.dead).hlen(&k.uniq).zcard(&k.uniqexp);
    let v: Vec<i64> = p.query_async(&mut env.client.connection()).await.unwrap();
    v.try_into().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_records_dead_letters_and_unique_keys_expire_while_the_fleet_is_idle() {
    let env = TestEnv::new().await;
    env.client.set_dead_caps("default", DeadCaps { max_count: None, max_age_secs: Some(1) }).await.unwrap();
    let mut jobs = Vec::new();
    for i in 0..300 {
        let (action, opts) = match i % 3 {
            0 => (ProbeAction::Succeed, EnqueueOptions::default()),
            1 => (ProbeAction::GiveUp, EnqueueOptions::default()),
            _ => (ProbeAction::Succeed, EnqueueOptions::default().unique(format!("u{i}"), Duration::from_secs(1))),
        };
        jobs.push((ProbeArgs::new(action), EnqueueOptions { tenant: Some(format!("t{}", i % 7)), ..opts }));
    }
    env.client.enqueue_bulk_with(jobs).await.unwrap();
    let mut config = env.config("default", 20);
    config.retention_secs = 1;
    let w = env.worker(config, Registry::builtin()).await;
    eventually("every job to finish", Duration::from_secs(60), || async {
        let s = env.client.stats("default").await.ok()?;
        (s.succeeded + s.died == 300 && s.pending() == 0).then_some(s)
    })
    .await;
    // From here no job completes; only the janitor can delete anything.
    let s = eventually("every record to expire with the fleet idle", Duration::from_secs(30), || async {
        (sizes(&env, "default").await == [0; 9]).then_some(env.stats("default").await)
    })
    .await;
    assert_eq!((s.succeeded, s.died, s.evicted, s.dead), (200, 100, 100, 0), "{s:?}");
    assert_eq!(env.client.job_state("default", "nope").await.unwrap(), None);
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_janitor_is_bounded_per_call_and_says_when_more_remains() {
    let env = TestEnv::new().await;
    let (k, mut conn) = (env.client.keys("default"), env.client.connection());
    let cfg = EngineConfig::new(env.prefix.clone(), "default", "w");
    let jobs = (0..30).map(|i| {
        (
            ProbeArgs::new(ProbeAction::Succeed),
            EnqueueOptions::default().unique(format!("k{i}"), Duration::from_millis(1)),
        )
    });
    env.client.enqueue_bulk_with(jobs.collect::<Vec<_>>()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let first = calls::janitor(&mut conn, &k, &cfg, 20).await.unwrap();
    assert_eq!((first.unique_keys, first.more), (20, true));
    let second = calls::janitor(&mut conn, &k, &cfg, 20).await.unwrap();
    assert_eq!((second.unique_keys, second.more), (10, false));
    // The dead-letter caps set at run time are read by the scripts.
    env.client.set_dead_caps("default", DeadCaps { max_count: Some(5), max_age_secs: None }).await.unwrap();
    assert_eq!(env.client.dead_caps("default").await.unwrap(), DeadCaps { max_count: Some(5), max_age_secs: None });
    env.client.set_dead_caps("default", DeadCaps::default()).await.unwrap();
    assert_eq!(env.client.dead_caps("default").await.unwrap(), DeadCaps::default());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_of_batches_finished_a_week_ago_are_forgotten_by_the_janitor() {
    let env = TestEnv::new().await;
    let (k, mut conn) = (env.client.keys("default"), env.client.connection());
    let cfg = EngineConfig::new(env.prefix.clone(), "default", "w");
    let now = fleet_jobs::envelope::now_ms();
    let week = calls::BATCH_KEEP.as_millis() as u64;
    let mut p = redis::pipe();
    for (b, at) in [("b-old", now - week - 1000), ("b-new", now - 1000)] {
        for f in ["total", "ok", "fail", "cb", "fired", "done"] {
            p.hset(&k.batches, format!("{b}:{f}"), 1).ignore();
        }
        p.zadd(&k.batchfin, b, at).ignore();
    }
    let _: () = p.query_async(&mut conn).await.unwrap();
    let swept = calls::janitor(&mut conn, &k, &cfg, 500).await.unwrap();
    assert_eq!((swept.batches, swept.more), (1, false));
    let fields: Vec<String> = redis::cmd("HKEYS").arg(&k.batches).query_async(&mut conn).await.unwrap();
    assert_eq!(fields.len(), 6);
    assert!(fields.iter().all(|f| f.starts_with("b-new:")), "{fields:?}");
    assert!(env.client.batch("default", "b-old").await.unwrap().is_none());
    env.cleanup().await;
}
