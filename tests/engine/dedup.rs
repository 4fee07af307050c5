//! Dedup modes per key (debounce, replace, keep-last), each under 50 concurrent enqueues
//! of one key; debounce's max wait read from the start stored on the job; keep-last
//! with a lost worker and with its running job gone; tenants' keys; the HTTP API.

use super::{T, probe};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::SubsecRound;
use fleet_jobs::backend::calls;
use fleet_jobs::backend::{Completion, EngineConfig, Op, RawJob};
use fleet_jobs::catalogue::{ProbeAction, ProbeArgs};
use fleet_jobs::dedup::DedupTag;
use fleet_jobs::state::AttemptRecord;
use fleet_jobs::{Deduplicated, EnqueueOptions, Enqueued, JobId, JobState};
use fleet_scheduler::api::{ApiState, app, auth};
use fleet_scheduler::tenancy::TenancyConfig;
use fleet_tests::{TestDb, TestEnv, eventually, until_final};
use fleet_worker::Registry;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tower::ServiceExt;

/// Enqueues 50 probes tagged 0..50 with `opts` at once, one task each.
async fn fifty_at_once(env: &TestEnv, opts: EnqueueOptions) -> Vec<Enqueued> {
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (client, opts) = (env.client.clone(), opts.clone());
            tokio::spawn(async move {
                client.enqueue_reported(&probe(ProbeAction::Succeed).tagged(i.to_string()), opts).await.unwrap()
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

async fn redis_now(env: &TestEnv) -> i64 {
    let (s, us): (i64, i64) = redis::cmd("TIME").query_async(&mut env.client.connection()).await.unwrap();
    s * 1000 + us / 1000
}

/// When the job is due to start (its score in the queue's scheduled set).
async fn start_of(env: &TestEnv, id: &JobId) -> Option<i64> {
    redis::cmd("ZSCORE")
        .arg(env.client.keys("default").sched)
        .arg(id.as_str())
        .query_async(&mut env.client.connection())
        .await
        .unwrap()
}

async fn state(env: &TestEnv, id: &JobId) -> JobState {
    env.client.job_state("default", id.as_str()).await.unwrap().expect("the job exists")
}

async fn tag_of(env: &TestEnv, id: &JobId) -> String {
    let job = env.client.job("default", id.as_str()).await.unwrap().unwrap();
    let args: ProbeArgs = serde_json::from_str(job.envelope.unwrap().args.get()).unwrap();
    args.tag.unwrap_or_default()
}

/// Leases until `want` jobs came back (fetch drops superseded jobs' entries as it meets
/// them, a few per call), polling with a timeout.
async fn lease_n(env: &TestEnv, cfg: &EngineConfig, want: usize) -> Vec<RawJob> {
    let (k, mut conn) = (env.client.keys("default"), env.client.connection());
    let deadline = Instant::now() + T;
    let mut got = Vec::new();
    while got.len() < want {
        assert!(Instant::now() < deadline, "only {} of {want} jobs leased within {T:?}", got.len());
        got.extend(calls::lease(&mut conn, &k, cfg, want - got.len()).await.unwrap().jobs);
        if got.len() < want {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    got
}

async fn finish(env: &TestEnv, cfg: &EngineConfig, job: &RawJob, op: Op) {
    let c = Completion {
        id: job.id.clone(),
        token: job.token.clone(),
        kind: "probe".into(),
        attempt: job.attempt,
        batch: None,
        tenant: None,
        op,
    };
    let done = calls::complete(&mut env.client.connection(), &env.client.keys("default"), cfg, &[c]).await.unwrap();
    assert_eq!(done.applied, vec![true], "the completion of {} applies", job.id);
}

fn failed(attempt: u32) -> AttemptRecord {
    AttemptRecord { attempt, at: 0, worker: None, started_at: None, duration_ms: None, error: "boom".into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debounce_collapses_fifty_concurrent_enqueues_into_one_job_with_the_last_args() {
    let env = TestEnv::new().await;
    let delay = Duration::from_secs(60);
    let opts = EnqueueOptions::default().debounce("sync:client:7", delay, Duration::from_secs(600));
    let all = fifty_at_once(&env, opts.clone()).await;
    let id = all[0].id.clone();
    assert!(all.iter().all(|e| e.id == id), "every enqueue names the one job: {all:?}");
    assert_eq!(all.iter().filter(|e| e.deduplicated.is_none()).count(), 1, "one created");
    assert_eq!(all.iter().filter(|e| e.deduplicated == Some(Deduplicated::Debounced)).count(), 49);
    let s = env.stats("default").await;
    assert_eq!((s.enqueued, s.scheduled, s.ready, s.debounced), (1, 1, 0, 49));

    // One more after them all: its args are the job's, its start a delay from now.
    let before = redis_now(&env).await;
    let last = env.client.enqueue_reported(&probe(ProbeAction::Succeed).tagged("last"), opts).await.unwrap();
    let after = redis_now(&env).await;
    assert_eq!(last, Enqueued { id: id.clone(), deduplicated: Some(Deduplicated::Debounced) });
    let at = start_of(&env, &id).await.expect("scheduled");
    assert!((before + 60_000..=after + 60_000).contains(&at), "start {at} is a delay after {before}..{after}");
    let job = env.client.job("default", id.as_str()).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Scheduled);
    let envelope = job.envelope.unwrap();
    assert_eq!((envelope.id.clone(), envelope.run_at as i64), (id.clone(), at), "the envelope is the job's");
    assert_eq!(envelope.dedup, Some(DedupTag { mode: "debounce".into(), key: "sync:client:7".into() }));
    assert_eq!(tag_of(&env, &id).await, "last", "the last args win");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debounce_never_pushes_the_start_past_the_max_wait_and_a_new_burst_follows_the_run() {
    let env = TestEnv::new().await;
    let (delay, max_wait) = (Duration::from_millis(400), Duration::from_millis(1200));
    let opts = || EnqueueOptions::default().debounce("digest:9", delay, max_wait);
    let first = env.client.enqueue_reported(&probe(ProbeAction::Succeed).tagged("0"), opts()).await.unwrap();
    assert_eq!(first.deduplicated, None);
    let id = first.id;
    let first_start = start_of(&env, &id).await.unwrap();
    // The burst began a delay before the first start; its job starts by the max wait after that.
    let bound = first_start - 400 + 1200;
    // A steady stream: each enqueue moves the start back until it reaches the bound.
    let deadline = Instant::now() + T;
    let mut prev = first_start;
    for n in 1.. {
        assert!(Instant::now() < deadline, "the start never reached the max wait: {prev} of {bound}");
        let e = env.client.enqueue_reported(&probe(ProbeAction::Succeed).tagged(n.to_string()), opts()).await.unwrap();
        assert_eq!((&e.id, &e.deduplicated), (&id, &Some(Deduplicated::Debounced)), "the stream is one job");
        let at = start_of(&env, &id).await.unwrap();
        assert!(at >= prev && at <= bound, "start {at}: never earlier than {prev}, never past {bound}");
        prev = at;
        if at == bound {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let last_tag = tag_of(&env, &id).await;

    env.client.pause("default").await.unwrap();
    let w = env.worker(env.config("default", 2), Registry::builtin()).await;
    let mut rx = w.events();
    env.client.resume("default").await.unwrap();
    let seen = until_final(&mut rx, id.as_str(), T).await;
    assert_eq!(seen.len(), 1, "one run for the whole burst");
    assert_eq!(tag_of(&env, &id).await, last_tag, "with the stream's last args");
    // Once the job has started, the key starts a new burst.
    let next = env.client.enqueue_reported(&probe(ProbeAction::Succeed).tagged("next"), opts()).await.unwrap();
    assert_ne!(next.id, id);
    assert_eq!(next.deduplicated, None);
    assert_eq!(until_final(&mut rx, next.id.as_str(), T).await.len(), 1);
    let s = env.stats("default").await;
    assert_eq!((s.enqueued, s.succeeded), (2, 2));
    w.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_leaves_one_pending_job_and_never_touches_a_running_one() {
    let env = TestEnv::new().await;
    let opts = EnqueueOptions::default().replace("calendar:42");
    let all = fifty_at_once(&env, opts.clone()).await;
    let ids: HashSet<JobId> = all.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), 50, "each enqueue makes its own job");
    let replaced: Vec<JobId> = all
        .iter()
        .filter_map(|e| match &e.deduplicated {
            Some(Deduplicated::Replaced { previous }) => Some(previous.clone()),
            None => None,
            other => panic!("unexpected outcome {other:?}"),
        })
        .collect();
    assert_eq!(replaced.len(), 49, "all but the first replaced one");
    let replaced: HashSet<JobId> = replaced.into_iter().collect();
    assert_eq!(replaced.len(), 49, "each job was replaced once at most");
    let survivor = ids.difference(&replaced).next().unwrap().clone();
    for id in &replaced {
        assert_eq!(state(&env, id).await, JobState::Cancelled);
    }
    assert_eq!(state(&env, &survivor).await, JobState::Ready);
    let s = env.stats("default").await;
    assert_eq!((s.enqueued, s.ready, s.cancelled, s.superseded), (50, 1, 49, 49));

    // Running, it stays: a new job is enqueued beside it, and replaces only that one.
    let cfg = EngineConfig::new(&env.prefix, "default", "w1");
    let leased = lease_n(&env, &cfg, 1).await;
    assert_eq!(leased[0].id, survivor.as_str());
    let beside = env.client.enqueue_reported(&probe(ProbeAction::Succeed), opts.clone()).await.unwrap();
    assert_eq!(beside.deduplicated, None);
    let again = env.client.enqueue_reported(&probe(ProbeAction::Succeed), opts).await.unwrap();
    assert_eq!(again.deduplicated, Some(Deduplicated::Replaced { previous: beside.id.clone() }));
    assert_eq!(state(&env, &survivor).await, JobState::Running);
    let s = env.stats("default").await;
    assert_eq!((s.running, s.ready, s.superseded), (1, 1, 50));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_last_holds_one_waiting_job_with_the_latest_args_until_the_running_one_ends() {
    let env = TestEnv::new().await;
    let cfg = EngineConfig::new(&env.prefix, "default", "w1");
    let opts = EnqueueOptions::default().keep_last("index:doc:9");
    let first = env.client.enqueue_reported(&probe(ProbeAction::Succeed).tagged("first"), opts.clone()).await.unwrap();
    assert_eq!(first.deduplicated, None);
    let running = lease_n(&env, &cfg, 1).await.remove(0);

    let all = fifty_at_once(&env, opts.clone()).await;
    let mut previous = HashSet::new();
    for e in &all {
        match &e.deduplicated {
            Some(Deduplicated::Waiting { running, previous: p }) => {
                assert_eq!(running, &first.id);
                if let Some(p) = p {
                    assert!(previous.insert(p.clone()), "{p} replaced twice");
                }
            }
            other => panic!("every enqueue waits behind the running job: {other:?}"),
        }
    }
    assert_eq!(previous.len(), 49, "each waiting job but the last was replaced by a newer one");
    let waiting: Vec<JobId> = all.iter().map(|e| e.id.clone()).filter(|id| !previous.contains(id)).collect();
    assert_eq!(waiting.len(), 1);
    let waiting = waiting[0].clone();
    let s = env.stats("default").await;
    assert_eq!((s.running, s.scheduled, s.ready, s.superseded), (1, 1, 0, 49));
    // Held: nothing starts while the key's job runs.
    let k = env.client.keys("default");
    let mut conn = env.client.connection();
    assert!(calls::lease(&mut conn, &k, &cfg, 10).await.unwrap().jobs.is_empty());

    // The running job succeeds: the waiting one starts, alone.
    finish(&env, &cfg, &running, Op::Succeeded).await;
    let next = lease_n(&env, &cfg, 1).await.remove(0);
    assert_eq!(next.id, waiting.as_str());
    assert!(calls::lease(&mut conn, &k, &cfg, 10).await.unwrap().jobs.is_empty());

    // A failure to be retried also lets a newer waiting job go on; the failed run is
    // superseded by it (it carries newer args), not run again beside it.
    let newer = env.client.enqueue_reported(&probe(ProbeAction::Succeed).tagged("newer"), opts.clone()).await.unwrap();
    assert_eq!(newer.deduplicated, Some(Deduplicated::Waiting { running: waiting.clone(), previous: None }));
    finish(&env, &cfg, &next, Op::Retry { delay: Duration::from_millis(1), record: failed(1) }).await;
    assert_eq!(state(&env, &waiting).await, JobState::Cancelled);
    let third = lease_n(&env, &cfg, 1).await.remove(0);
    assert_eq!(third.id, newer.id.as_str());
    assert_eq!(tag_of(&env, &newer.id).await, "newer");

    // Dead-lettered: the key is free again, and with nothing running a new job is not held.
    finish(&env, &cfg, &third, Op::Dead { record: failed(1) }).await;
    let free = env.client.enqueue_reported(&probe(ProbeAction::Succeed), opts).await.unwrap();
    assert_eq!(free.deduplicated, None);
    assert_eq!(state(&env, &free.id).await, JobState::Ready);
    let s = env.stats("default").await;
    assert_eq!((s.running, s.scheduled, s.retrying, s.ready), (0, 0, 0, 1));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_last_a_lost_worker_or_a_cancel_never_blocks_the_key() {
    let env = TestEnv::new().await;
    let (k, conn) = (env.client.keys("default"), env.client.connection());
    let mut zombie = EngineConfig::new(&env.prefix, "default", "zombie");
    zombie.lease = Duration::from_millis(1);
    let healthy = EngineConfig::new(&env.prefix, "default", "healthy");
    let opts = EnqueueOptions::default().keep_last("push:booking:5");
    let first = env.client.enqueue_reported(&probe(ProbeAction::Succeed), opts.clone()).await.unwrap();
    let lost = lease_n(&env, &zombie, 1).await.remove(0);
    assert_eq!(lost.id, first.id.as_str());
    let waiting = env.client.enqueue_reported(&probe(ProbeAction::Succeed), opts.clone()).await.unwrap();
    assert!(matches!(waiting.deduplicated, Some(Deduplicated::Waiting { .. })), "{waiting:?}");

    // The zombie's lease expires; a heartbeat of another worker takes it back, and the
    // waiting job (newer args) goes on instead of the lost run.
    eventually("the lost lease to be reaped", T, || {
        let (mut c, k, h) = (conn.clone(), k.clone(), healthy.clone());
        async move { calls::heartbeat(&mut c, &k, &h, &[]).await.ok().filter(|r| r.reaped == 1) }
    })
    .await;
    let next = lease_n(&env, &healthy, 1).await.remove(0);
    assert_eq!(next.id, waiting.id.as_str());
    assert_eq!(state(&env, &first.id).await, JobState::Cancelled, "the lost run is superseded");

    // Cancelling the running job lets the next waiting one go on too.
    let third = env.client.enqueue_reported(&probe(ProbeAction::Succeed), opts.clone()).await.unwrap();
    assert!(matches!(third.deduplicated, Some(Deduplicated::Waiting { .. })));
    env.client.cancel("default", &next.id).await.unwrap();
    assert_eq!(lease_n(&env, &healthy, 1).await[0].id, third.id.as_str());

    // A lost run with no job waiting is run again (as a suspect), and stays the key's.
    let solo = EnqueueOptions::default().keep_last("push:booking:6");
    let alone = env.client.enqueue_reported(&probe(ProbeAction::Succeed), solo.clone()).await.unwrap();
    lease_n(&env, &zombie, 1).await;
    eventually("the second lost lease to be reaped", T, || {
        let (mut c, k, h) = (conn.clone(), k.clone(), healthy.clone());
        async move { calls::heartbeat(&mut c, &k, &h, &[]).await.ok().filter(|r| r.reaped == 1) }
    })
    .await;
    let other = EngineConfig::new(&env.prefix, "default", "idle");
    let again = lease_n(&env, &other, 1).await.remove(0);
    assert_eq!(again.id, alone.id.as_str());
    let behind = env.client.enqueue_reported(&probe(ProbeAction::Succeed), solo).await.unwrap();
    assert_eq!(behind.deduplicated, Some(Deduplicated::Waiting { running: alone.id.clone(), previous: None }));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_job_whose_running_job_vanished_runs_after_the_hold() {
    let env = TestEnv::new().await;
    let (k, mut conn) = (env.client.keys("default"), env.client.connection());
    let cfg = EngineConfig::new(&env.prefix, "default", "w1");
    let opts = EnqueueOptions::default().keep_last("sync:7");
    let first = env.client.enqueue_reported(&probe(ProbeAction::Succeed), opts.clone()).await.unwrap();
    lease_n(&env, &cfg, 1).await;
    let held = env.client.enqueue_reported(&probe(ProbeAction::Succeed), opts).await.unwrap();
    let hold = start_of(&env, &held.id).await.unwrap();
    assert!(hold > redis_now(&env).await + 50_000, "held about a minute, then looked at again");
    // The hold ends while the key's job still runs: held again.
    let _: () = redis::cmd("ZADD").arg(&k.sched).arg(0).arg(held.id.as_str()).query_async(&mut conn).await.unwrap();
    assert!(calls::lease(&mut conn, &k, &cfg, 10).await.unwrap().jobs.is_empty());
    assert!(start_of(&env, &held.id).await.unwrap() > redis_now(&env).await + 50_000);
    // The running job's record disappears without its completion (removed by hand): at
    // the end of the hold the waiting job runs.
    let _: () = redis::pipe()
        .hdel(&k.state, first.id.as_str())
        .zrem(&k.leases, first.id.as_str())
        .zadd(&k.sched, held.id.as_str(), 0)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(lease_n(&env, &cfg, 1).await[0].id, held.id.as_str());

    // The janitor finds such a key at once: its waiting job is due now, not after the hold.
    let opts = EnqueueOptions::default().keep_last("sync:8");
    let gone = env.client.enqueue_reported(&probe(ProbeAction::Succeed), opts.clone()).await.unwrap();
    lease_n(&env, &cfg, 1).await;
    let waiting = env.client.enqueue_reported(&probe(ProbeAction::Succeed), opts).await.unwrap();
    let _: () = redis::pipe()
        .hdel(&k.state, gone.id.as_str())
        .zrem(&k.leases, gone.id.as_str())
        .query_async(&mut conn)
        .await
        .unwrap();
    calls::janitor(&mut conn, &k, &cfg, 100).await.unwrap();
    assert!(start_of(&env, &waiting.id).await.unwrap() <= redis_now(&env).await, "released by the janitor");
    assert_eq!(lease_n(&env, &cfg, 1).await[0].id, waiting.id.as_str());
    env.cleanup().await;
}

struct Api {
    env: TestEnv,
    db: TestDb,
    router: axum::Router,
    a: String,
    b: String,
}

impl Api {
    async fn call(&self, key: &str, method: &str, uri: &str, body: Value) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {key}"))
            .body(Body::from(body.to_string()))
            .unwrap();
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

fn job_with(dedup: Value) -> Value {
    json!({"kind": "probe", "args": {"do": "succeed"}, "dedup": dedup})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_reports_each_mode_keeps_tenants_keys_apart_and_refuses_bad_combinations() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let a = auth::create_api_key(&db.pool, "tenant-a", "a", &[auth::Role::Enqueue]).await.unwrap();
    let b = auth::create_api_key(&db.pool, "tenant-b", "b", &[auth::Role::Enqueue]).await.unwrap();
    let state = ApiState::new(env.client.clone(), db.pool.clone()).with_tenancy(TenancyConfig::for_tests());
    let api = Api { router: app(state, 1 << 20), env, db, a, b };

    // Debounce: the second enqueue of A's key merges; B's same key is B's own job.
    let debounce = job_with(json!({"key": "client:7", "mode": "debounce", "delay_ms": 60000}));
    let (s, first) = api.call(&api.a, "POST", "/v1/jobs", debounce.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{first}");
    assert!(first.get("deduplicated").is_none(), "{first}");
    let (_, second) = api.call(&api.a, "POST", "/v1/jobs", debounce.clone()).await;
    assert_eq!((&second["deduplicated"], &second["id"]), (&json!("debounced"), &first["id"]));
    let (_, of_b) = api.call(&api.b, "POST", "/v1/jobs", debounce).await;
    assert_ne!(of_b["id"], first["id"], "tenants never share a key");
    assert!(of_b.get("deduplicated").is_none(), "{of_b}");
    let (s, view) =
        api.call(&api.a, "GET", &format!("/v1/jobs/default/{}", first["id"].as_str().unwrap()), json!(null)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(view["dedup"], json!({"mode": "debounce", "key": "client:7"}), "shown as the tenant named it");
    let stored = api.env.client.job("default", first["id"].as_str().unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.envelope.unwrap().dedup.unwrap().key, "tenant:tenant-a:client:7");

    // Replace and keep-last report the job they replaced.
    for mode in ["replace", "keep_last"] {
        let body = job_with(json!({"key": "k", "mode": mode}));
        let (_, one) = api.call(&api.a, "POST", "/v1/jobs", body.clone()).await;
        let (_, two) = api.call(&api.a, "POST", "/v1/jobs", body.clone()).await;
        assert_eq!((&two["deduplicated"], &two["replaced"]), (&json!("replaced"), &one["id"]), "{mode}: {two}");
        let (_, other) = api.call(&api.b, "POST", "/v1/jobs", body).await;
        assert!(other.get("deduplicated").is_none(), "{mode}: B's key is not A's: {other}");
    }

    // Bad combinations are a 400 that says what is wrong, and create nothing.
    let before = api.env.stats("default").await.enqueued;
    for (body, says) in [
        (job_with(json!({"key": "x", "mode": "debounce"})), "needs delay_ms"),
        (job_with(json!({"key": "x", "mode": "replace", "delay_ms": 5})), "debounce only"),
        (job_with(json!({"key": "x", "mode": "debounce", "delay_ms": 500, "max_wait_ms": 100})), "max_wait_ms"),
        (job_with(json!({"key": "", "mode": "replace"})), "dedup.key"),
    ] {
        let (s, e) = api.call(&api.a, "POST", "/v1/jobs", body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
        assert_eq!(e["error"]["code"], "bad_dedup");
        assert!(e["error"]["message"].as_str().unwrap().contains(says), "{e}");
    }
    let mut delayed = job_with(json!({"key": "x", "mode": "debounce", "delay_ms": 500}));
    delayed["delay_ms"] = json!(100);
    assert_eq!(api.call(&api.a, "POST", "/v1/jobs", delayed).await.0, StatusCode::BAD_REQUEST);
    let unknown = job_with(json!({"key": "x", "mode": "sometimes"}));
    assert_eq!(api.call(&api.a, "POST", "/v1/jobs", unknown).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(api.env.stats("default").await.enqueued, before);
    let (s, doc) = api.call(&api.a, "GET", "/openapi.json", json!(null)).await;
    assert_eq!(s, StatusCode::OK);
    let schemas = &doc["components"]["schemas"];
    assert!(schemas["DedupRequest"]["properties"]["mode"].is_object(), "the dedup request is described");
    assert!(schemas["Enqueued"]["properties"]["deduplicated"].is_object(), "and its outcome");
    api.db.drop_db().await;
    api.env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_last_schedule_never_piles_up_ticks_and_its_dedup_is_stored_in_postgres() {
    use fleet_scheduler::schedule::{Missed, Schedule, ScheduleDedup, ScheduleSpec};
    use fleet_scheduler::ticker::{Ticker, load_spec, store_spec};
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let spec = ScheduleSpec {
        name: "resync".into(),
        cron: "* * * * * *".into(),
        timezone: "UTC".into(),
        kind: "probe".into(),
        args: json!({"do": "succeed"}),
        queue: None,
        priority: None,
        max_attempts: None,
        missed: Missed::Skip,
        catch_up_secs: 0,
        paused: false,
        dedup: Some(ScheduleDedup {
            key: "resync".into(),
            mode: "keep_last".into(),
            delay_ms: None,
            max_wait_ms: None,
        }),
    };
    assert!(store_spec(&db.pool, &spec, false).await.unwrap());
    assert_eq!(load_spec(&db.pool, "resync").await.unwrap().as_ref(), Some(&spec));
    let mut bad = spec.clone();
    bad.dedup = Some(ScheduleDedup { key: "k".into(), mode: "replace".into(), delay_ms: Some(5), max_wait_ms: None });
    assert!(Schedule::parse(bad).unwrap_err().contains("debounce only"));

    // Two replicas, ten ticks, no worker: one job waits, each newer tick replaced the last.
    let mut replicas: Vec<Ticker> = (0..2).map(|_| Ticker::new(env.client.clone(), None, vec![spec.clone()])).collect();
    for r in &mut replicas {
        assert!(r.reload().await.is_empty());
    }
    let t0 = chrono::Utc::now().trunc_subsecs(0);
    for step in 0..=10 {
        let now = t0 + chrono::Duration::seconds(step) + chrono::Duration::milliseconds(250);
        for r in &mut replicas {
            let report = r.tick(now).await;
            assert!(report.errors.is_empty(), "{:?}", report.errors);
        }
    }
    let s = env.stats("default").await;
    assert_eq!((s.enqueued, s.pending(), s.superseded), (10, 1, 9), "{s:?}");
    db.drop_db().await;
    env.cleanup().await;
}
