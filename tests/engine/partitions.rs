//! Partitioned queues on one Redis: a queue declared with 3 partitions is 3 physical
//! queues; enqueues spread over them (by tenant, else round-robin), one worker serves
//! all of them, and the client's reads cover the logical queue.

use super::{T, probe};
use fleet_jobs::catalogue::ProbeAction;
use fleet_jobs::{CancelOutcome, EnqueueOptions, JobState};
use fleet_tests::{TestEnv, eventually};
use fleet_worker::Registry;
use std::collections::HashMap;

const Q: &str = "hot";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_partition_queue_spreads_jobs_and_runs_each_once_with_summed_stats() {
    let mut env = TestEnv::new().await;
    env.client = env.client.clone().with_partitions(Q, 3).unwrap();
    let parts = env.client.partitions(Q);
    assert_eq!(parts.len(), 3);
    assert!(parts.iter().all(|p| p.starts_with("hot#")), "{parts:?}");

    // Round-robin without a key; by tenant with one.
    let plain = env
        .client
        .enqueue_bulk_with((0..30).map(|_| (probe(ProbeAction::Succeed), EnqueueOptions::default().queue(Q))))
        .await
        .unwrap();
    let tenants = env
        .client
        .enqueue_bulk_with((0..30).map(|i| {
            let mut o = EnqueueOptions::default().queue(Q);
            o.tenant = Some(format!("t{}", i % 5));
            (probe(ProbeAction::Succeed), o)
        }))
        .await
        .unwrap();
    let per: Vec<_> = env.client.partition_stats(Q).await.unwrap();
    for (p, s) in &per {
        assert!(s.enqueued >= 10, "round-robin puts 10 plain jobs on every partition: {p} has {}", s.enqueued);
    }
    // Every job of one tenant is in the partition of that tenant.
    for t in 0..5 {
        let want = env.client.partition_of(Q, &format!("t{t}"));
        for id in tenants.iter().skip(t).step_by(5) {
            assert!(env.client.job_state(&want, id.as_str()).await.unwrap().is_some(), "{id} in {want}");
        }
    }
    let s = env.stats(Q).await;
    assert_eq!((s.enqueued, s.ready), (60, 60), "the logical queue sums its partitions");

    let mut cfg = env.config(Q, 6);
    cfg.queues[0].partitions = Some(3);
    let w = env.worker(cfg, Registry::builtin()).await;
    let mut rx = w.events();
    let mut runs: HashMap<String, u32> = HashMap::new();
    let want: std::collections::HashSet<String> = plain.iter().chain(&tenants).map(|i| i.0.clone()).collect();
    tokio::time::timeout(T, async {
        while runs.len() < want.len() {
            let ev = rx.recv().await.expect("events");
            *runs.entry(ev.id.clone()).or_default() += 1;
        }
    })
    .await
    .expect("all 60 jobs finish");
    assert!(runs.keys().all(|id| want.contains(id)));
    assert!(runs.values().all(|n| *n == 1), "each job ran once: {runs:?}");
    let s = eventually("stats to settle", T, || async {
        let s = env.stats(Q).await;
        (s.succeeded == 60).then_some(s)
    })
    .await;
    assert_eq!((s.succeeded, s.ready, s.running, s.failed), (60, 0, 0, 0));
    for (p, s) in env.client.partition_stats(Q).await.unwrap() {
        assert!(s.succeeded >= 10, "{p} ran its share: {s:?}");
    }
    // Reads by id find a job in whichever partition it is.
    let info = env.client.job(Q, plain[1].as_str()).await.unwrap().expect("found in its partition");
    assert_eq!(info.state, JobState::Succeeded);
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_keeps_its_order_within_its_partition_and_cancel_finds_jobs_by_id() {
    let mut env = TestEnv::new().await;
    env.client = env.client.clone().with_partitions(Q, 3).unwrap();
    let opts = |t: &str| {
        let mut o = EnqueueOptions::default().queue(Q);
        o.tenant = Some(t.to_owned());
        o
    };
    let mut ids: HashMap<&str, Vec<String>> = HashMap::new();
    for i in 0..40 {
        let t = ["acme", "globex", "initech", "umbrella"][i % 4];
        let id = env.client.enqueue_with(&probe(ProbeAction::Succeed), opts(t)).await.unwrap();
        ids.entry(t).or_default().push(id.0);
    }
    // Cancel by id on the logical queue, in whichever partition the job is.
    let victim = ids.get_mut("globex").unwrap().pop().unwrap();
    assert_eq!(env.client.cancel(Q, &victim).await.unwrap(), CancelOutcome::Cancelled(JobState::Ready));
    assert_eq!(env.client.job_state(Q, &victim).await.unwrap(), Some(JobState::Cancelled));
    assert_eq!(env.client.cancel(Q, "no-such-job").await.unwrap(), CancelOutcome::NotFound);

    // One job at a time (the partitions share the queue's one slot): each tenant's jobs
    // run in enqueue order.
    let mut cfg = env.config(Q, 1);
    cfg.queues[0].partitions = Some(3);
    let w = env.worker(cfg, Registry::builtin()).await;
    let mut rx = w.events();
    let mut order: Vec<String> = Vec::new();
    tokio::time::timeout(T, async {
        while order.len() < 39 {
            let ev = rx.recv().await.expect("events");
            order.push(ev.id.clone());
        }
    })
    .await
    .expect("39 jobs finish");
    for (t, want) in &ids {
        let got: Vec<&String> = order.iter().filter(|id| want.contains(id)).collect();
        assert_eq!(got, want.iter().collect::<Vec<_>>(), "{t}'s jobs ran in enqueue order");
    }
    let s = env.stats(Q).await;
    assert_eq!((s.enqueued, s.cancelled), (40, 1));
    w.shutdown().await;
    env.cleanup().await;
}

/// A tenant's batches land in the tenant's own partition: several batches cannot spread a
/// tenant over partitions (each of which holds its own cap and quota for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_batches_all_land_in_the_tenants_partition() {
    let mut env = TestEnv::new().await;
    env.client = env.client.clone().with_partitions(Q, 3).unwrap();
    let home = env.client.partition_of(Q, "studio-7");
    let job = || {
        let args = serde_json::value::RawValue::from_string(r#"{"do":"succeed"}"#.into()).unwrap();
        let mut o = EnqueueOptions::default().queue(Q);
        o.tenant = Some("studio-7".into());
        ("probe".to_owned(), args, fleet_jobs::KindOptions::default(), o)
    };
    for _ in 0..9 {
        let batch =
            env.client.create_batch(Q, vec![job(), job()], &fleet_jobs::batches::Callbacks::default()).await.unwrap();
        assert_eq!(env.client.partition_of(Q, &batch), home, "batch {batch}");
        assert_eq!(env.client.batch(Q, &batch).await.unwrap().map(|b| b.total), Some(2));
    }
    let per = env.client.partition_stats(Q).await.unwrap();
    for (p, s) in &per {
        assert_eq!(s.enqueued, if *p == home { 18 } else { 0 }, "{p}");
    }
    env.cleanup().await;
}

/// The partitions share the queue's concurrency: with every job in one partition, that
/// partition runs as many at once as the whole queue may (an even split would give it a
/// third), and the others still get slots as soon as they have work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_partition_uses_the_slots_idle_partitions_leave() {
    let mut env = TestEnv::new().await;
    env.client = env.client.clone().with_partitions(Q, 3).unwrap();
    let on_one = || {
        let mut o = EnqueueOptions::default().queue(Q);
        o.partition_key = Some("one-key".into());
        o
    };
    for _ in 0..6 {
        env.client.enqueue_with(&probe(ProbeAction::Sleep { ms: 5_000 }), on_one()).await.unwrap();
    }
    let busy: Vec<String> = {
        let per = env.client.partition_stats(Q).await.unwrap();
        per.into_iter().filter(|(_, s)| s.enqueued > 0).map(|(p, _)| p).collect()
    };
    assert_eq!(busy.len(), 1, "every job with one key lands in one partition: {busy:?}");
    let mut cfg = env.config(Q, 6);
    cfg.queues[0].partitions = Some(3);
    let w = env.worker(cfg, Registry::builtin()).await;
    eventually("all 6 jobs of the one busy partition to run at once", T, || async {
        let s = env.client.stats(Q).await.ok()?;
        (s.running == 6).then_some(())
    })
    .await;
    // The whole queue is still bounded by its 6 slots: a job on another partition waits.
    let mut other = EnqueueOptions::default().queue(Q);
    other.partition_key = Some("another-key-0".into());
    let mut k = 0;
    while env.client.partition_of(Q, other.partition_key.as_deref().unwrap()) == busy[0] {
        k += 1;
        other.partition_key = Some(format!("another-key-{k}"));
    }
    let id = env.client.enqueue_with(&probe(ProbeAction::Succeed), other).await.unwrap();
    assert_eq!(env.client.job_state(Q, id.as_str()).await.unwrap(), Some(JobState::Ready));
    let s = env.client.stats(Q).await.unwrap();
    assert!(s.running <= 6, "never more than the queue's concurrency: {s:?}");
    eventually("the other partition's job to run once a slot frees", T, || async {
        (env.client.job_state(Q, id.as_str()).await.ok()?? == JobState::Succeeded).then_some(())
    })
    .await;
    w.shutdown().await;
    env.cleanup().await;
}
