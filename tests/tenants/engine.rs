//! Hostile-tenant cases: the engine. One tenant's flood, its long jobs or its backlog must
//! not starve another tenant on a shared queue; caps and quotas hold, and their counters
//! come back to zero whatever becomes of the jobs. Driven script call by script call
//! (`fleet_jobs::backend::calls`), so each assertion is about exactly one fetch.

use fleet_jobs::backend::{EngineConfig, Op, RawJob, calls};
use fleet_jobs::catalogue::{ProbeAction, ProbeArgs};
use fleet_jobs::state::AttemptRecord;
use fleet_jobs::tenant::{TenantLimits, TenantUsage};
use fleet_jobs::{EnqueueOptions, Error, JobId};
use fleet_tests::{TestEnv, eventually};
use std::time::Duration;

fn as_tenant(t: &str) -> EnqueueOptions {
    EnqueueOptions { tenant: Some(t.to_owned()), ..Default::default() }
}

async fn flood(env: &TestEnv, tenant: &str, n: usize) -> Vec<JobId> {
    let jobs = (0..n).map(|_| (ProbeArgs::new(ProbeAction::Succeed), as_tenant(tenant)));
    env.client.enqueue_bulk_with(jobs).await.unwrap()
}

fn engine(env: &TestEnv) -> EngineConfig {
    let mut cfg = EngineConfig::new(env.prefix.clone(), "default", "test-instance");
    cfg.lease = Duration::from_secs(30);
    cfg
}

fn tenant_of(job: &RawJob) -> Option<String> {
    serde_json::from_str::<fleet_jobs::Envelope>(&job.envelope).unwrap().tenant
}

fn completion(job: &RawJob, op: Op) -> fleet_jobs::backend::Completion {
    fleet_jobs::backend::Completion {
        id: job.id.clone(),
        token: job.token.clone(),
        kind: "probe".into(),
        attempt: job.attempt,
        batch: None,
        tenant: tenant_of(job),
        op,
    }
}

#[tokio::test]
async fn a_single_job_of_another_tenant_is_served_in_the_next_fetch_behind_a_flood() {
    let env = TestEnv::new().await;
    let (k, cfg, mut conn) = (env.client.keys("default"), engine(&env), env.client.connection());
    flood(&env, "flooder", 5_000).await;
    let lone = env.client.enqueue_with(&ProbeArgs::new(ProbeAction::Succeed), as_tenant("lone")).await.unwrap();
    // A worker with one free slot at a time: the lone job is the first or second fetched.
    let mut order = Vec::new();
    for _ in 0..2 {
        let got = calls::lease(&mut conn, &k, &cfg, 1).await.unwrap();
        order.extend(got.jobs.iter().map(|j| j.id.clone()));
    }
    assert!(order.contains(&lone.0), "the lone tenant's job waited behind the flood: {order:?}");
    // With a batch of ten, tenants share it: the flood does not take all ten slots while
    // another tenant waits.
    let other = flood(&env, "other", 3).await;
    let got = calls::lease(&mut conn, &k, &cfg, 10).await.unwrap();
    let ids: Vec<&str> = got.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(got.jobs.len(), 10);
    for id in &other {
        assert!(ids.contains(&id.as_str()), "the other tenant's jobs got no share of the batch: {ids:?}");
    }
    env.cleanup().await;
}

#[tokio::test]
async fn jobs_without_a_tenant_take_their_turn_and_each_tenant_keeps_its_order() {
    let env = TestEnv::new().await;
    let (k, cfg, mut conn) = (env.client.keys("default"), engine(&env), env.client.connection());
    let a = flood(&env, "acme", 100).await;
    let fleet_own = env.client.enqueue(&ProbeArgs::new(ProbeAction::Succeed)).await.unwrap();
    let got = calls::lease(&mut conn, &k, &cfg, 4).await.unwrap();
    let ids: Vec<String> = got.jobs.iter().map(|j| j.id.clone()).collect();
    assert!(ids.contains(&fleet_own.0), "Fleet's own job waited behind a tenant's backlog");
    let acme_seen: Vec<&String> = ids.iter().filter(|i| **i != fleet_own.0).collect();
    assert_eq!(acme_seen, a.iter().take(acme_seen.len()).map(|i| &i.0).collect::<Vec<_>>(), "FIFO within a tenant");
    env.cleanup().await;
}

#[tokio::test]
async fn a_tenant_at_its_concurrency_cap_waits_while_others_run_and_resumes_when_a_job_stops() {
    let env = TestEnv::new().await;
    let (k, cfg, mut conn) = (env.client.keys("default"), engine(&env), env.client.connection());
    let cap = TenantLimits { concurrency: Some(2), quota: None };
    env.client.set_tenant_limits("default", Some("sleepy"), cap).await.unwrap();
    flood(&env, "sleepy", 20).await;
    flood(&env, "quick", 3).await;
    let first = calls::lease(&mut conn, &k, &cfg, 10).await.unwrap();
    let by = |t: &str, jobs: &[RawJob]| jobs.iter().filter(|j| tenant_of(j).as_deref() == Some(t)).count();
    assert_eq!((by("sleepy", &first.jobs), by("quick", &first.jobs)), (2, 3), "the cap held and others ran");
    // Nothing more for the capped tenant while both of its jobs run.
    let none = calls::lease(&mut conn, &k, &cfg, 10).await.unwrap();
    assert!(none.jobs.is_empty(), "a capped tenant got more than its cap: {:?}", none.jobs.len());
    let usage = env.client.tenant_usage("default", "sleepy").await.unwrap();
    assert_eq!((usage.running, usage.open, usage.concurrency), (2, 20, 2));
    // One of its jobs finishes: exactly one more starts.
    let sleepy: Vec<&RawJob> = first.jobs.iter().filter(|j| tenant_of(j).as_deref() == Some("sleepy")).collect();
    calls::complete(&mut conn, &k, &cfg, &[completion(sleepy[0], Op::Succeeded)]).await.unwrap();
    let next = calls::lease(&mut conn, &k, &cfg, 10).await.unwrap();
    assert_eq!(next.jobs.len(), 1, "one slot came back");
    // Raising the cap at run time lets the waiting jobs go at once.
    env.client
        .set_tenant_limits("default", Some("sleepy"), TenantLimits { concurrency: Some(0), quota: None })
        .await
        .unwrap();
    let rest = calls::lease(&mut conn, &k, &cfg, 100).await.unwrap();
    assert_eq!(rest.jobs.len(), 17);
    env.cleanup().await;
}

#[tokio::test]
async fn a_tenant_over_its_quota_is_refused_without_writing_and_others_are_not() {
    let env = TestEnv::new().await;
    let (k, cfg, mut conn) = (env.client.keys("default"), engine(&env), env.client.connection());
    env.client.set_tenant_limits("default", None, TenantLimits { concurrency: None, quota: Some(5) }).await.unwrap();
    flood(&env, "greedy", 4).await;
    // A bulk that would cross the quota writes nothing at all.
    let jobs = (0..3).map(|_| (ProbeArgs::new(ProbeAction::Succeed), as_tenant("greedy")));
    match env.client.enqueue_bulk_with(jobs).await {
        Err(Error::QuotaExceeded { tenant, open, quota, .. }) => {
            assert_eq!((tenant.as_str(), open, quota), ("greedy", 4, 5))
        }
        other => panic!("expected a quota refusal, got {other:?}"),
    }
    assert_eq!(env.stats("default").await.ready, 4);
    flood(&env, "greedy", 1).await;
    assert!(matches!(flood_one(&env, "greedy").await, Err(Error::QuotaExceeded { .. })));
    // Another tenant has its own quota.
    flood(&env, "polite", 5).await;
    // A retried enqueue of a job that already exists is not a new job.
    let id = JobId("same-id".into());
    let again = || EnqueueOptions { id: Some(id.clone()), ..as_tenant("polite2") };
    env.client
        .set_tenant_limits("default", Some("polite2"), TenantLimits { concurrency: None, quota: Some(1) })
        .await
        .unwrap();
    env.client.enqueue_with(&ProbeArgs::new(ProbeAction::Succeed), again()).await.unwrap();
    env.client.enqueue_with(&ProbeArgs::new(ProbeAction::Succeed), again()).await.unwrap();
    // Finishing a job makes room again.
    let got = calls::lease(&mut conn, &k, &cfg, 100).await.unwrap();
    let greedy = got.jobs.iter().find(|j| tenant_of(j).as_deref() == Some("greedy")).unwrap();
    calls::complete(&mut conn, &k, &cfg, &[completion(greedy, Op::Succeeded)]).await.unwrap();
    flood_one(&env, "greedy").await.expect("room after a job finished");
    env.cleanup().await;
}

async fn flood_one(env: &TestEnv, tenant: &str) -> fleet_jobs::Result<JobId> {
    env.client.enqueue_with(&ProbeArgs::new(ProbeAction::Succeed), as_tenant(tenant)).await
}

#[tokio::test]
async fn tenant_counters_come_back_to_zero_whatever_becomes_of_the_jobs() {
    let env = TestEnv::new().await;
    let (k, mut cfg, mut conn) = (env.client.keys("default"), engine(&env), env.client.connection());
    env.client
        .set_tenant_limits("default", Some("t"), TenantLimits { concurrency: Some(100), quota: Some(100) })
        .await
        .unwrap();
    let ids = flood(&env, "t", 8).await;
    // One cancelled while queued, one delayed then cancelled.
    env.client.cancel("default", ids[7].as_str()).await.unwrap();
    let later = env
        .client
        .enqueue_with(
            &ProbeArgs::new(ProbeAction::Succeed),
            EnqueueOptions { delay: Some(Duration::from_secs(60)), ..as_tenant("t") },
        )
        .await
        .unwrap();
    env.client.cancel("default", later.as_str()).await.unwrap();
    let got = calls::lease(&mut conn, &k, &cfg, 100).await.unwrap();
    assert_eq!(got.jobs.len(), 7);
    let record = |j: &RawJob| AttemptRecord {
        attempt: j.attempt,
        at: fleet_jobs::envelope::now_ms(),
        worker: None,
        started_at: None,
        duration_ms: None,
        error: "scripted".into(),
    };
    let j = &got.jobs;
    calls::complete(
        &mut conn,
        &k,
        &cfg,
        &[
            completion(&j[0], Op::Succeeded),
            completion(&j[1], Op::Dead { record: record(&j[1]) }),
            completion(&j[2], Op::Expire),
            completion(&j[3], Op::Release),
            completion(&j[4], Op::Retry { delay: Duration::ZERO, record: record(&j[4]) }),
            completion(&j[5], Op::Snooze { delay: Duration::ZERO }),
        ],
    )
    .await
    .unwrap();
    // j[6] is cancelled while running.
    env.client.cancel("default", &j[6].id).await.unwrap();
    // Released, retried and snoozed jobs are back; one more lease runs them, and a short
    // lease that expires hands one back through the reaper.
    cfg.lease = Duration::from_millis(1);
    let again = calls::lease(&mut conn, &k, &cfg, 100).await.unwrap();
    assert_eq!(again.jobs.len(), 3, "released, retried and snoozed jobs came back");
    cfg.lease = Duration::from_secs(30);
    eventually("every expired lease taken back", Duration::from_secs(5), || {
        let (mut conn, k, cfg) = (conn.clone(), k.clone(), cfg.clone());
        async move {
            let _ = calls::heartbeat(&mut conn, &k, &cfg, &[]).await.unwrap();
            let stats = fleet_jobs::Client::new(conn, cfg.prefix.clone()).stats("default").await.unwrap();
            (stats.running == 0).then_some(())
        }
    })
    .await;
    // They come back as suspects, leased one at a time (alone).
    for _ in 0..3 {
        let last = calls::lease(&mut conn, &k, &cfg, 100).await.unwrap();
        assert_eq!((last.jobs.len(), last.isolated), (1, true));
        assert_eq!(env.client.tenant_usage("default", "t").await.unwrap().running, 1);
        let done: Vec<_> = last.jobs.iter().map(|j| completion(j, Op::Succeeded)).collect();
        calls::complete(&mut conn, &k, &cfg, &done).await.unwrap();
    }
    // Replaying the dead letter opens one job again; finishing it closes it.
    let only = fleet_jobs::admin::DeadFilter { ids: vec![j[1].id.clone()], ..Default::default() };
    assert_eq!(env.client.replay("default", &only, None).await.unwrap(), 1);
    assert_eq!(env.client.tenant_usage("default", "t").await.unwrap().open, 1);
    let replayed = calls::lease(&mut conn, &k, &cfg, 100).await.unwrap();
    calls::complete(&mut conn, &k, &cfg, &[completion(&replayed.jobs[0], Op::Succeeded)]).await.unwrap();
    let usage = env.client.tenant_usage("default", "t").await.unwrap();
    assert_eq!(usage, TenantUsage { running: 0, open: 0, concurrency: 100, quota: 100, own_limits: true });
    assert_eq!(env.stats("default").await.running, 0);
    env.cleanup().await;
}
