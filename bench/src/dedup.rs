//! `fleet-bench run dedup`: the enqueue cost of each dedup mode beside plain jobs and the
//! unique key's throttle: enqueues/s with 16 enqueues in flight, and Redis CPU per
//! enqueue (`INFO cpu` before and after), over 100 keys (each key is hit n/100 times,
//! so nearly every enqueue collapses into an earlier one, the costly path).

use crate::adapter::BenchJob;
use fleet_jobs::{Client, EnqueueOptions};
use std::time::{Duration, Instant};

/// Enqueues in flight at once.
const IN_FLIGHT: usize = 16;
/// Distinct keys the enqueues spread over.
const KEYS: usize = 100;

fn options(mode: &str, i: usize) -> EnqueueOptions {
    let key = format!("bench:{}", i % KEYS);
    let o = EnqueueOptions::default().queue("bench");
    match mode {
        "plain" => o,
        "throttle" => o.unique(key, Duration::from_secs(3600)),
        "debounce" => o.debounce(key, Duration::from_secs(3600), Duration::from_secs(7200)),
        "replace" => o.replace(key),
        "keep-last" => o.keep_last(key),
        other => unreachable!("mode {other}"),
    }
}

/// Prints one line per mode.
pub async fn run(fresh: impl AsyncFn() -> Client, n: usize) {
    for mode in ["plain", "throttle", "debounce", "replace", "keep-last"] {
        let c = fresh().await;
        let cpu0 = crate::driver::redis_cpu(&c).await;
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..IN_FLIGHT)
            .map(|t| {
                let c = c.clone();
                tokio::spawn(async move {
                    for i in (t..n).step_by(IN_FLIGHT) {
                        let job = BenchJob { k: "noop".into(), a: i as f64 };
                        c.enqueue_with(&job, options(mode, i)).await.expect("enqueue");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("enqueue task");
        }
        let secs = t0.elapsed().as_secs_f64();
        let cpu1 = crate::driver::redis_cpu(&c).await;
        let s = c.stats("bench").await.expect("stats");
        println!(
            "dedup {mode:>9}: {n} enqueues over {KEYS} keys, {:.0} enqueues/s, Redis CPU {:.1} µs/enqueue; jobs created {}, pending {}, superseded {}, debounced {}",
            n as f64 / secs,
            (cpu1 - cpu0) * 1e6 / n as f64,
            s.enqueued,
            s.pending(),
            s.superseded,
            s.debounced
        );
        crate::driver::cleanup(&c).await;
    }
}
