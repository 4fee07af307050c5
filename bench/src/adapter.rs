//! The peer-harness adapter protocol (see `../shared/peer-bench/README.md`).

use fleet_jobs::{Client, JobArgs, KindOptions};
use fleet_worker::{Handler, JobContext, JobError, QueueConfig, Registry, WorkerConfig};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A benchmark job: `k` is noop, sleep (a = ms) or lat (a = enqueue time, s).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchJob {
    pub k: String,
    pub a: f64,
}

impl JobArgs for BenchJob {
    const KIND: &'static str = "bench";
    fn options() -> KindOptions {
        KindOptions { queue: queue(), ..KindOptions::default() }
    }
}

static FIFO: OnceLock<Option<File>> = OnceLock::new();

fn emit(b: &[u8]) {
    let f = FIFO.get_or_init(|| {
        std::env::var("PEERS_FIFO").ok().map(|p| File::options().write(true).open(p).expect("open PEERS_FIFO"))
    });
    if let Some(f) = f {
        let mut w: &File = f;
        let _ = w.write_all(b);
    }
}

pub fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

struct Bench;

impl Handler for Bench {
    type Args = BenchJob;

    fn limit_keys(&self, job: &BenchJob) -> Vec<String> {
        if job.k == "limited" { vec!["bench:limited".to_owned()] } else { Vec::new() }
    }

    async fn handle(&self, job: BenchJob, _ctx: JobContext) -> Result<(), JobError> {
        match job.k.as_str() {
            "noop" => emit(b"x"),
            "lat" | "limited" => {
                let t = now();
                emit(format!("L {} {}\n", job.a, t).as_bytes());
            }
            "sleep" => {
                emit(b"s");
                tokio::time::sleep(Duration::from_millis(job.a as u64)).await;
                emit(b"x");
            }
            // Any other kind of bench job (e.g. "die") gives up: the dead-letter workload.
            other => return Err(JobError::give_up(format!("bench job {other:?} gives up"))),
        }
        Ok(())
    }
}

pub fn url() -> String {
    // A whole URL setting (a cluster's nodes, comma-separated) wins over the peer harness's parts.
    if let Ok(urls) = std::env::var("FLEET_BENCH_REDIS_URLS") {
        return urls;
    }
    format!(
        "redis://{}:{}/{}",
        std::env::var("PEERS_REDIS_HOST").unwrap_or_else(|_| "127.0.0.1".into()),
        std::env::var("PEERS_REDIS_PORT").unwrap_or_else(|_| "6379".into()),
        std::env::var("PEERS_REDIS_DB").unwrap_or_else(|_| "0".into())
    )
}

pub fn queue() -> String {
    std::env::var("PEERS_QUEUE").unwrap_or_else(|_| "peersbench-fleet".into())
}

pub fn prefix() -> String {
    std::env::var("FLEET_BENCH_PREFIX").unwrap_or_else(|_| "fleet".into())
}

pub async fn client() -> Client {
    Client::connect(&url(), prefix()).await.expect("connect to Redis")
}

/// Enqueues `n` jobs one call each (awaited) or in bulk chunks; returns seconds taken.
pub async fn enqueue(c: &Client, n: usize, bulk: Option<usize>, kind: &str, arg: f64) -> f64 {
    let job = |i: usize| BenchJob { k: kind.into(), a: if kind == "noop" { i as f64 } else { arg } };
    let t0 = Instant::now();
    match bulk {
        None => {
            for i in 0..n {
                c.enqueue(&job(i)).await.expect("enqueue");
            }
        }
        Some(chunk) => {
            let mut i = 0;
            while i < n {
                let end = (i + chunk).min(n);
                c.enqueue_bulk((i..end).map(job)).await.expect("enqueue_bulk");
                i = end;
            }
        }
    }
    t0.elapsed().as_secs_f64()
}

pub async fn main(args: &[String]) {
    let chunk: usize = std::env::var("PEERS_BULK_CHUNK").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    match args[0].as_str() {
        "enqueue" => {
            let n: usize = args[1].parse().expect("n");
            let mode = args[2].as_str();
            let kind = args[3].as_str();
            let arg: f64 = args.get(4).map(|v| v.parse().expect("arg")).unwrap_or(0.0);
            let c = client().await;
            let el = enqueue(&c, n, (mode == "bulk").then_some(chunk), kind, arg).await;
            let bc = if mode == "bulk" { chunk.to_string() } else { "null".into() };
            println!("{{\"n\":{n},\"mode\":\"{mode}\",\"kind\":\"{kind}\",\"elapsed_s\":{el},\"bulk_chunk\":{bc}}}");
        }
        "trickle" => {
            let count: usize = args[1].parse().expect("count");
            let interval: u64 = args[2].parse().expect("interval");
            let c = client().await;
            let start = tokio::time::Instant::now() + Duration::from_millis(50);
            let t_start = now() + 0.05;
            let mut late = 0;
            for i in 0..count {
                let target = start + Duration::from_millis(interval * i as u64);
                if target > tokio::time::Instant::now() {
                    tokio::time::sleep_until(target).await;
                } else {
                    late += 1;
                }
                c.enqueue(&BenchJob { k: "lat".into(), a: now() }).await.expect("enqueue");
            }
            println!(
                "{{\"count\":{count},\"interval_ms\":{interval},\"elapsed_s\":{},\"late\":{late}}}",
                now() - t_start
            );
        }
        "worker" => {
            let concurrency: usize = args.get(1).map(|v| v.parse().expect("concurrency")).unwrap_or(10);
            let mut batch = None;
            let mut lease_ms = WorkerConfig::default().lease_ms;
            let mut limits = std::collections::BTreeMap::new();
            let mut retention_secs = 0;
            let mut partitions = None;
            for kv in &args[2.min(args.len())..] {
                match kv.split_once('=') {
                    Some(("batch", v)) => batch = Some(v.parse().expect("batch")),
                    Some(("lease", v)) => lease_ms = v.parse().expect("lease"),
                    Some(("retention", v)) => retention_secs = v.parse().expect("retention"),
                    Some(("partitions", v)) => partitions = Some(v.parse().expect("partitions")),
                    Some(("rate", v)) => {
                        let spec = fleet_jobs::limits::LimitSpec {
                            rate: Some(v.parse().expect("rate")),
                            burst: 1,
                            ..Default::default()
                        };
                        limits.insert("bench:limited".to_owned(), spec);
                    }
                    _ => panic!(
                        "unknown worker option {kv:?} (known: batch=N, lease=MS, rate=R, retention=S, partitions=N)"
                    ),
                }
            }
            let cfg = WorkerConfig {
                lease_ms,
                limits,
                redis_url: url(),
                prefix: prefix(),
                listen: None,
                queues: vec![QueueConfig { name: queue(), concurrency, fetch_batch: batch, partitions }],
                retention_secs,
                ..WorkerConfig::default()
            };
            eprintln!("fleet worker concurrency={concurrency} fetch_batch={batch:?}");
            let mut registry = Registry::new().register(Bench);
            let mut cfg = cfg;
            if let Ok(db_url) = std::env::var("FLEET_DATABASE_URL") {
                // The webhook workload: deliveries to a receiver on loopback.
                let db = fleet_worker::db::connect_and_migrate(&db_url).await.expect("database");
                let settings =
                    fleet_webhooks::jobs::WebhookSettings { allow: vec!["127.0.0.0/8".into()], ..Default::default() };
                registry =
                    registry.register(fleet_webhooks::jobs::Deliver::new(db, settings).expect("webhook handler"));
                cfg.database_url = Some(db_url);
                cfg.queues =
                    vec![QueueConfig { name: "webhooks".into(), concurrency, fetch_batch: batch, partitions: None }];
            }
            let stop = async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
                tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
            };
            fleet_worker::run(cfg, registry, stop).await.expect("worker");
        }
        other => {
            eprintln!("unknown command {other:?}; see the module docs of fleet-bench");
            std::process::exit(2);
        }
    }
}
