//! `fleet-bench workflow [--n 10000] [--concurrency 200]`: a fan-out/fan-in workflow of
//! `n` steps plus one gathering step, end to end with an in-process worker, beside the
//! same number of plain jobs on the same worker: steps/s and jobs/s, and Redis CPU per
//! step and per job (`INFO cpu` before and after). Uses the `probe` kind (succeed at
//! once) and a fresh key prefix on `FLEET_BENCH_REDIS_URL` (default the local Redis).

use fleet_jobs::catalogue::{ProbeAction, ProbeArgs};
use fleet_jobs::workflows::{StepSpec, SubmitOptions, WorkflowSpec};
use fleet_jobs::{Client, JobArgs};
use fleet_worker::{QueueConfig, Registry, WorkerConfig};
use std::time::{Duration, Instant};

async fn redis_cpu(c: &Client) -> f64 {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(&mut c.connection()).await.expect("INFO");
    let get = |k: &str| {
        info.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(0.0)
    };
    get("used_cpu_sys:") + get("used_cpu_user:")
}

fn flag(args: &[String], name: &str, default: usize) -> usize {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Runs both workloads and prints their figures.
pub async fn run(args: &[String]) {
    let n = flag(args, "--n", 10_000);
    let concurrency = flag(args, "--concurrency", 200);
    let url = std::env::var("FLEET_BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let prefix = format!("bench-wf-{}", std::process::id());
    let client = Client::connect(&url, prefix.clone()).await.expect("Redis");
    let cfg = WorkerConfig {
        redis_url: url,
        prefix: prefix.clone(),
        listen: None,
        queues: vec![QueueConfig { name: "default".into(), concurrency, fetch_batch: None, partitions: None }],
        retention_secs: 0,
        ..WorkerConfig::default()
    };
    let worker = fleet_worker::start(cfg, Registry::builtin()).await.expect("worker");

    // Plain jobs: the same count, enqueued in bulk, timed until all succeeded.
    let cpu0 = redis_cpu(&client).await;
    let t0 = Instant::now();
    client.enqueue_bulk((0..n).map(|_| ProbeArgs::new(ProbeAction::Succeed))).await.expect("enqueue");
    while (client.stats("default").await.expect("stats").succeeded as usize) < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let plain = t0.elapsed();
    let plain_cpu = redis_cpu(&client).await - cpu0;

    // The workflow: n independent steps, then one that depends on all of them.
    let probe =
        |name: String| StepSpec::job(name, ProbeArgs::KIND, &ProbeArgs::new(ProbeAction::Succeed)).expect("step");
    let mut steps: Vec<StepSpec> = (0..n).map(|i| probe(format!("s{i}"))).collect();
    steps.push(probe("gather".into()).after((0..n).map(|i| format!("s{i}"))));
    let spec = WorkflowSpec { steps };
    let cpu0 = redis_cpu(&client).await;
    let t0 = Instant::now();
    let id = client.submit_workflow(&spec, SubmitOptions::default()).await.expect("submit");
    let submitted = t0.elapsed();
    loop {
        match client.workflow_state(&id).await.expect("state") {
            Some(s) if s.is_final() => {
                assert_eq!(s, fleet_jobs::workflows::WorkflowState::Succeeded, "the workflow failed");
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
    let flow = t0.elapsed();
    let flow_cpu = redis_cpu(&client).await - cpu0;
    worker.shutdown().await;

    let steps = n + 1;
    println!("workload                    items   seconds   per second   Redis CPU µs/item");
    println!(
        "plain jobs                 {n:>6}   {:>7.2}   {:>10.0}   {:>17.1}",
        plain.as_secs_f64(),
        n as f64 / plain.as_secs_f64(),
        plain_cpu * 1e6 / n as f64
    );
    println!(
        "workflow fan-out/fan-in    {steps:>6}   {:>7.2}   {:>10.0}   {:>17.1}   (submit {:.2} s)",
        flow.as_secs_f64(),
        steps as f64 / flow.as_secs_f64(),
        flow_cpu * 1e6 / steps as f64,
        submitted.as_secs_f64()
    );
    // Forget the benchmark's keys (its own prefix only).
    let mut conn = client.connection();
    let keys = client.scan_keys(&format!("{prefix}:*")).await.unwrap_or_default();
    for k in keys {
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(k).query_async(&mut conn).await;
    }
}
