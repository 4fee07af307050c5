//! Fleet-wide rate limits, concurrency caps, circuit breakers and slow-downs, with
//! several worker runtimes sharing one Redis.

use fleet_jobs::limits::{Admission, BreakerState, LimitSpec, Limiter, WaitReason};
use fleet_jobs::{EnqueueOptions, JobArgs, KindOptions};
use fleet_tests::{TestEnv, eventually};
use fleet_worker::{Handler, JobContext, JobError, KindPolicy, Registry, RunningWorker, WorkerConfig};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

/// A call to a pretend outside service: sleeps, and fails while the service is down.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Call {
    key: String,
    #[serde(default)]
    sleep_ms: u64,
    #[serde(default)]
    slow_down_ms: Option<u64>,
}

impl JobArgs for Call {
    const KIND: &'static str = "test.call";
    fn options() -> KindOptions {
        KindOptions { max_attempts: 50, ..KindOptions::default() }
    }
}

#[derive(Default)]
struct Service {
    /// (key, start, end) of every call that reached the service.
    calls: Mutex<Vec<(String, Instant, Instant)>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
    down: AtomicBool,
    slowed: AtomicBool,
}

#[derive(Clone)]
struct Caller(Arc<Service>);

impl Handler for Caller {
    type Args = Call;

    fn limit_keys(&self, args: &Call) -> Vec<String> {
        vec![args.key.clone()]
    }

    async fn handle(&self, args: Call, _ctx: JobContext) -> Result<(), JobError> {
        let s = &self.0;
        let start = Instant::now();
        let now_running = s.running.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_running.fetch_max(now_running, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(args.sleep_ms)).await;
        s.running.fetch_sub(1, Ordering::SeqCst);
        s.calls.lock().unwrap().push((args.key.clone(), start, Instant::now()));
        if let Some(ms) = args.slow_down_ms
            && !s.slowed.swap(true, Ordering::SeqCst)
        {
            return Err(JobError::slow_down("429 Too Many Requests", Duration::from_millis(ms)));
        }
        if s.down.load(Ordering::SeqCst) {
            return Err(JobError::retry("503 Service Unavailable"));
        }
        Ok(())
    }
}

fn registry(service: &Arc<Service>) -> Registry {
    let policy = KindPolicy {
        backoff: fleet_jobs::retry::Backoff::exponential(Duration::from_millis(20))
            .jitter(fleet_jobs::retry::Jitter::None)
            .max(Duration::from_millis(50)),
        timeout: None,
    };
    Registry::new().register_with(Caller(service.clone()), policy)
}

fn config(env: &TestEnv, concurrency: usize, limits: &[(&str, LimitSpec)]) -> WorkerConfig {
    let mut cfg = env.config("default", concurrency);
    cfg.limits = limits.iter().map(|(k, s)| (k.to_string(), s.clone())).collect();
    cfg
}

async fn workers(env: &TestEnv, n: usize, cfg: &WorkerConfig, service: &Arc<Service>) -> Vec<RunningWorker> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(env.worker(cfg.clone(), registry(service)).await);
    }
    out
}

fn starts(service: &Service, key: &str) -> Vec<Instant> {
    let mut v: Vec<Instant> = service.calls.lock().unwrap().iter().filter(|c| c.0 == key).map(|c| c.1).collect();
    v.sort();
    v
}

/// The most starts in any window [t, t + 1 s).
fn max_per_second(starts: &[Instant]) -> usize {
    let mut best = 0;
    let mut j = 0;
    for i in 0..starts.len() {
        while j < starts.len() && starts[j] < starts[i] + Duration::from_secs(1) {
            j += 1;
        }
        best = best.max(j - i);
    }
    best
}

async fn all_done(env: &TestEnv, n: i64) {
    eventually(&format!("{n} jobs to succeed"), T, || async {
        (env.stats("default").await.succeeded >= n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_never_exceed_a_shared_rate_while_other_keys_flow() {
    let env = TestEnv::new().await;
    let service = Arc::new(Service::default());
    let spec = LimitSpec { rate: Some(20.0), burst: 1, ..Default::default() };
    let cfg = config(&env, 10, &[("endpoint:a", spec)]);
    env.client.pause("default").await.unwrap();
    let ws = workers(&env, 3, &cfg, &service).await;
    let jobs = (0..200).map(|_| Call { key: "endpoint:a".into(), sleep_ms: 0, slow_down_ms: None });
    env.client.enqueue_bulk(jobs).await.unwrap();
    let other = (0..100).map(|_| Call { key: "endpoint:b".into(), sleep_ms: 0, slow_down_ms: None });
    env.client.enqueue_bulk(other).await.unwrap();
    let t0 = Instant::now();
    env.client.resume("default").await.unwrap();
    all_done(&env, 300).await;

    let a = starts(&service, "endpoint:a");
    let b = starts(&service, "endpoint:b");
    assert_eq!((a.len(), b.len()), (200, 100));
    let peak = max_per_second(&a);
    assert!(peak <= 20, "{peak} calls to endpoint:a in one second, limit 20");
    assert!(peak >= 15, "the limit is used, not starved: {peak} per second at best");
    let a_span = *a.last().unwrap() - a[0];
    assert!(a_span >= Duration::from_millis(9_000), "200 calls at 20/s take about 10 s, took {a_span:?}");
    let b_done = *b.last().unwrap() - t0;
    assert!(b_done < Duration::from_secs(4), "endpoint:b is not slowed down by endpoint:a: last call after {b_done:?}");
    assert!(env.stats("default").await.deferred > 0);
    for w in ws {
        w.shutdown().await;
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_cap_of_two_holds_across_three_workers() {
    let env = TestEnv::new().await;
    let service = Arc::new(Service::default());
    let spec = LimitSpec { concurrency: Some(2), ..Default::default() };
    let cfg = config(&env, 5, &[("crm:*", spec)]);
    let ws = workers(&env, 3, &cfg, &service).await;
    env.client
        .enqueue_bulk((0..12).map(|_| Call { key: "crm:7".into(), sleep_ms: 150, slow_down_ms: None }))
        .await
        .unwrap();
    all_done(&env, 12).await;
    assert_eq!(service.max_running.load(Ordering::SeqCst), 2, "at most 2 at once, and the cap is used");
    for w in ws {
        w.shutdown().await;
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_opens_stops_calls_half_opens_and_closes() {
    let env = TestEnv::new().await;
    let service = Arc::new(Service::default());
    service.down.store(true, Ordering::SeqCst);
    let cooldown = Duration::from_millis(800);
    let spec =
        LimitSpec { breaker_failures: Some(3), breaker_cooldown_ms: cooldown.as_millis() as u64, ..Default::default() };
    let cfg = config(&env, 1, &[("vision:acme", spec.clone())]);
    let ws = workers(&env, 1, &cfg, &service).await;
    let limiter = Limiter::new(env.client.connection(), env.prefix.clone(), Duration::from_secs(5));
    env.client
        .enqueue_bulk((0..4).map(|_| Call { key: "vision:acme".into(), sleep_ms: 0, slow_down_ms: None }))
        .await
        .unwrap();

    // Three failures open it.
    eventually("the breaker to open", T, || async {
        (limiter.status("vision:acme", &spec).await.unwrap().breaker == BreakerState::Open).then_some(())
    })
    .await;
    let opened = Instant::now();
    let calls_when_opened = service.calls.lock().unwrap().len();
    assert_eq!(calls_when_opened, 3, "exactly the failures that opened it reached the service");
    service.down.store(false, Ordering::SeqCst);
    // After the cool-down one probe goes through, succeeds and closes the breaker; then the rest flows.
    all_done(&env, 4).await;
    let calls = service.calls.lock().unwrap().clone();
    let after_open: Vec<_> = calls[3..].iter().map(|c| c.1).collect();
    assert!(
        after_open.iter().all(|t| *t >= opened + cooldown - Duration::from_millis(100)),
        "no call while the breaker was open (cool-down {cooldown:?})"
    );
    assert_eq!(limiter.status("vision:acme", &spec).await.unwrap().breaker, BreakerState::Closed);
    for w in ws {
        w.shutdown().await;
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_down_holds_the_key_back_for_the_whole_fleet() {
    let env = TestEnv::new().await;
    let service = Arc::new(Service::default());
    let cfg = config(&env, 5, &[]);
    let ws = workers(&env, 2, &cfg, &service).await;
    let hold = Duration::from_millis(1_000);
    env.client
        .enqueue(&Call { key: "sms:provider".into(), sleep_ms: 0, slow_down_ms: Some(hold.as_millis() as u64) })
        .await
        .unwrap();
    eventually("the 429", T, || async { (!service.calls.lock().unwrap().is_empty()).then_some(()) }).await;
    let told = Instant::now();
    env.client
        .enqueue_bulk((0..5).map(|_| Call { key: "sms:provider".into(), sleep_ms: 0, slow_down_ms: None }))
        .await
        .unwrap();
    env.client
        .enqueue_bulk((0..5).map(|_| Call { key: "sms:other".into(), sleep_ms: 0, slow_down_ms: None }))
        .await
        .unwrap();
    all_done(&env, 11).await;
    let held = starts(&service, "sms:provider");
    assert!(
        held[1..].iter().all(|t| *t >= told + hold - Duration::from_millis(150)),
        "no call to the slowed key within {hold:?}"
    );
    let other = starts(&service, "sms:other");
    assert!(other.iter().all(|t| *t < told + hold), "other keys are not held back");
    for w in ws {
        w.shutdown().await;
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_concurrency_slot_comes_back_after_its_lease() {
    let env = TestEnv::new().await;
    let spec = LimitSpec { concurrency: Some(1), ..Default::default() };
    let lease = Duration::from_millis(400);
    let dead_worker = Limiter::new(env.client.connection(), env.prefix.clone(), lease);
    assert_eq!(dead_worker.acquire("calendar:account:9", "job-1", &spec).await.unwrap().0, Admission::Admitted);
    let t0 = Instant::now();
    // The holder dies without giving the slot back (no release, no renewal).
    let other = Limiter::new(env.client.connection(), env.prefix.clone(), lease);
    let (first, _) = other.acquire("calendar:account:9", "job-2", &spec).await.unwrap();
    assert!(matches!(first, Admission::Wait { reason: WaitReason::Concurrency, .. }), "{first:?}");
    eventually("the slot to come back", T, || async {
        (other.acquire("calendar:account:9", "job-2", &spec).await.unwrap().0 == Admission::Admitted).then_some(())
    })
    .await;
    assert!(t0.elapsed() >= lease - Duration::from_millis(50), "not before the lease ended");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_time_limits_override_config_and_process_limits_apply_locally() {
    let env = TestEnv::new().await;
    let service = Arc::new(Service::default());
    // Config says 1000/s; an operator lowers it to 5/s at run time.
    let cfg = config(&env, 10, &[("hook:*", LimitSpec { rate: Some(1000.0), burst: 1, ..Default::default() })]);
    let limiter = Limiter::new(env.client.connection(), env.prefix.clone(), Duration::from_secs(5));
    limiter.set_spec("hook:1", &LimitSpec { rate: Some(5.0), burst: 1, ..Default::default() }).await.unwrap();
    let ws = workers(&env, 1, &cfg, &service).await;
    env.client
        .enqueue_bulk((0..10).map(|_| Call { key: "hook:1".into(), sleep_ms: 0, slow_down_ms: None }))
        .await
        .unwrap();
    all_done(&env, 10).await;
    assert!(max_per_second(&starts(&service, "hook:1")) <= 5);
    for w in ws {
        w.shutdown().await;
    }

    // A per-process limit holds without any fleet-wide one.
    let service2 = Arc::new(Service::default());
    let cfg = config(&env, 10, &[("local:*", LimitSpec { process_rate: Some(4.0), burst: 1, ..Default::default() })]);
    let ws = workers(&env, 1, &cfg, &service2).await;
    env.client
        .enqueue_bulk((0..8).map(|_| Call { key: "local:1".into(), sleep_ms: 0, slow_down_ms: None }))
        .await
        .unwrap();
    all_done(&env, 18).await;
    let s = starts(&service2, "local:1");
    assert!(*s.last().unwrap() - s[0] >= Duration::from_millis(1_500), "8 calls at 4/s take about 1.75 s");
    for w in ws {
        w.shutdown().await;
    }
    let _ = EnqueueOptions::default();
    env.cleanup().await;
}

/// A job whose limit key only its handler knows (here its args stand for the settings a
/// handler reads, like an SMS account's).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Learn {
    key: String,
    sleep_ms: u64,
    /// Never returns: the attempt times out.
    hang: bool,
}

impl JobArgs for Learn {
    const KIND: &'static str = "test.learn";
    fn options() -> KindOptions {
        KindOptions { max_attempts: 1, ..KindOptions::default() }
    }
}

struct Learner(Arc<Service>);

impl Handler for Learner {
    type Args = Learn;

    async fn handle(&self, args: Learn, ctx: JobContext) -> Result<(), JobError> {
        ctx.limits().admit(&args.key).await?;
        if args.hang {
            std::future::pending::<()>().await;
        }
        let s = &self.0;
        let now_running = s.running.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_running.fetch_max(now_running, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(args.sleep_ms)).await;
        s.running.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A key learned at run time is held like a declared one: its cap holds across workers
/// (a handler over it is snoozed), and the runtime settles it whatever becomes of the
/// handler, so a timed-out handler's slot comes back at once rather than after its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_learned_at_run_time_is_capped_fleet_wide_and_settled_by_the_runtime() {
    let env = TestEnv::new().await;
    let service = Arc::new(Service::default());
    let spec = LimitSpec { concurrency: Some(1), ..Default::default() };
    let cfg = config(&env, 4, &[("acct:*", spec.clone())]);
    let policy = KindPolicy { timeout: Some(Duration::from_millis(300)), ..KindPolicy::default() };
    let registry = || Registry::new().register_with(Learner(service.clone()), policy.clone());
    let ws = [env.worker(cfg.clone(), registry()).await, env.worker(cfg.clone(), registry()).await];
    let jobs = (0..6).map(|_| Learn { key: "acct:1".into(), sleep_ms: 50, hang: false });
    env.client.enqueue_bulk(jobs).await.unwrap();
    all_done(&env, 6).await;
    assert_eq!(service.max_running.load(Ordering::SeqCst), 1, "one at a time on the learned key, fleet-wide");

    env.client.enqueue(&Learn { key: "acct:2".into(), sleep_ms: 0, hang: true }).await.unwrap();
    eventually("the hung job to time out and die", T, || async {
        (env.stats("default").await.dead >= 1).then_some(())
    })
    .await;
    // The slot is leased for the worker's 5 s: taken at once, it was given back.
    let limiter = Limiter::new(env.client.connection(), env.prefix.clone(), Duration::from_secs(5));
    let (admission, _) = limiter.acquire("acct:2", "probe", &spec).await.unwrap();
    assert_eq!(admission, Admission::Admitted, "the runtime settled the timed-out handler's key");
    for w in ws {
        w.shutdown().await;
    }
    env.cleanup().await;
}
