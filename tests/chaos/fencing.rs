//! Self-fencing: a worker cut off from Redis stops the jobs whose leases it cannot
//! renew before those leases expire, and does not acknowledge them when it is back.

use fleet_jobs::JobState;
use fleet_jobs::backend::{JobEvent, Outcome};
use fleet_jobs::catalogue::{ProbeAction, ProbeArgs};
use fleet_tests::{TcpProxy, TestEnv, WorkerProcess, eventually, redis_url};
use fleet_worker::Registry;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

/// The Redis URL through `proxy`.
fn via(proxy: &TcpProxy) -> String {
    format!("redis://127.0.0.1:{}", proxy.port)
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The next event of `id` on `rx` matching `want`, within `timeout`.
async fn next_event(
    rx: &mut broadcast::Receiver<JobEvent>,
    id: &str,
    want: impl Fn(&Outcome) -> bool,
    timeout: Duration,
    seen: &mut Vec<Outcome>,
) -> Option<JobEvent> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(ev)) if ev.id == id => {
                seen.push(ev.outcome.clone());
                if want(&ev.outcome) {
                    return Some(ev);
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("event stream failed: {e}"),
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_redis_stops_its_job_before_the_lease_ends_and_does_not_ack_it() {
    let env = TestEnv::new().await;
    let upstream = redis_url().trim_start_matches("redis://").split('/').next().unwrap().to_owned();
    let proxy = TcpProxy::start(&upstream).await;
    let lease = Duration::from_millis(1500);
    let mut cfg = env.config("default", 2);
    cfg.redis_url = via(&proxy);
    cfg.lease_ms = lease.as_millis() as u64;
    let a = env.worker(cfg, Registry::builtin()).await;
    let mut rx_a = a.events();
    // Runs twice the lease.
    let id = env.client.enqueue(&ProbeArgs::new(ProbeAction::Sleep { ms: 3000 })).await.unwrap();
    eventually("the job to run on the worker behind the proxy", Duration::from_secs(20), || async {
        (env.client.job_state("default", id.as_str()).await.ok()?? == JobState::Running).then_some(())
    })
    .await;

    proxy.cut();
    let cut_at = Instant::now();
    let mut seen_a = Vec::new();
    let fenced = next_event(&mut rx_a, id.as_str(), |o| *o == Outcome::Fenced, lease * 2, &mut seen_a).await;
    let fenced_at = wall_ms();
    let took = cut_at.elapsed();
    assert!(fenced.is_some(), "the cut-off worker did not stop the job; its events: {seen_a:?}");
    assert!(took < lease, "stopped {took:?} after the cut, not within the lease ({lease:?})");
    // Before the lease ended in Redis (which nothing could renew after the cut).
    let leases = env.client.keys("default").leases;
    let deadline: Option<f64> =
        redis::cmd("ZSCORE").arg(&leases).arg(id.as_str()).query_async(&mut env.client.connection()).await.unwrap();
    let deadline = deadline.expect("the lease was still in Redis when the job was stopped") as u64;
    assert!(fenced_at < deadline, "stopped at {fenced_at}, after its lease ended at {deadline}");

    // Another worker takes the job over once the lease has expired, and completes it.
    let mut cfg_b = env.config("default", 2);
    cfg_b.lease_ms = lease.as_millis() as u64;
    let b = env.worker(cfg_b, Registry::builtin()).await;
    let mut rx_b = b.events();
    let mut seen_b = Vec::new();
    let done = next_event(&mut rx_b, id.as_str(), |o| *o == Outcome::Succeeded, Duration::from_secs(30), &mut seen_b);
    assert!(done.await.is_some(), "the other worker did not complete the job: {seen_b:?}");

    // Back online, the first worker gives the job up without applying anything.
    proxy.restore();
    let abandoned =
        next_event(&mut rx_a, id.as_str(), |o| *o == Outcome::Abandoned, Duration::from_secs(30), &mut seen_a).await;
    assert!(abandoned.is_some(), "the reconnected worker did not report the job abandoned: {seen_a:?}");
    assert_eq!(seen_a, vec![Outcome::Fenced, Outcome::Abandoned], "the first worker applied nothing");
    let s = env.stats("default").await;
    assert_eq!((s.succeeded, s.stale, s.running, s.lease_expired), (1, 0, 0, 1), "{s:?}");
    let job = env.client.job("default", id.as_str()).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Succeeded, 1), "{:?}", job.history);
    assert!(job.history[0].error.contains("lease expired: its worker stopped (crash 1 of 3"), "{:?}", job.history);
    b.shutdown().await;
    a.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_worker_process_says_it_stops_its_jobs_and_runs_them_again_once_back() {
    let env = TestEnv::new().await;
    let upstream = redis_url().trim_start_matches("redis://").split('/').next().unwrap().to_owned();
    let proxy = TcpProxy::start(&upstream).await;
    let log = std::env::temp_dir().join(format!("{}-worker.log", env.prefix));
    let settings = super::settings("1500");
    let worker = WorkerProcess::spawn_logged(super::EXE, &via(&proxy), &env.prefix, &settings, Some(&log));
    // Long enough that it cannot finish before the cut, however slow the machine.
    let id = env.client.enqueue(&ProbeArgs::new(ProbeAction::Sleep { ms: 5000 })).await.unwrap();
    eventually("the job to run in the worker behind the proxy", Duration::from_secs(20), || async {
        (env.client.job_state("default", id.as_str()).await.ok()?? == JobState::Running).then_some(())
    })
    .await;
    proxy.cut();
    let cut_at = Instant::now();
    let took = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("leases not renewed in time") {
            break cut_at.elapsed();
        }
        assert!(
            cut_at.elapsed() < Duration::from_secs(10),
            "the worker did not say it stopped the job; its log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // The exact bound (before the lease ends in Redis) is checked by the in-process test
    // above; here the log line comes about 0.8 lease after the last renewal.
    assert!(took < Duration::from_millis(3000), "logged {took:?} after the cut");
    // Back online: the stopped attempt is not acknowledged; the job's lease expires and
    // it runs again (alone, as a suspect), once.
    proxy.restore();
    eventually("the job to succeed", Duration::from_secs(30), || async {
        (env.client.job_state("default", id.as_str()).await.ok()?? == JobState::Succeeded).then_some(())
    })
    .await;
    let s = env.stats("default").await;
    assert_eq!((s.succeeded, s.stale, s.lease_expired, s.running), (1, 0, 1, 0), "{s:?}");
    let job = env.client.job("default", id.as_str()).await.unwrap().unwrap();
    assert_eq!(job.attempts, 1, "{:?}", job.history);
    worker.terminate(Duration::from_secs(15));
    let _ = std::fs::remove_file(&log);
    env.cleanup().await;
}
