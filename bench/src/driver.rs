//! `fleet-bench run`: the workloads, timed from the events jobs write to a named pipe.

use crate::adapter::{self, BenchJob};
use fleet_jobs::{Client, EnqueueOptions};
use std::io::Read;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// What the pipe reader has seen.
#[derive(Default)]
struct Seen {
    done: usize,
    started: usize,
    first_done: Option<Instant>,
    last_done: Option<Instant>,
    first_start: Option<Instant>,
    lat: Vec<f64>,
    starts: Vec<f64>,
}

struct Pipe {
    path: std::path::PathBuf,
    seen: Arc<Mutex<Seen>>,
}

impl Pipe {
    fn new(name: &str) -> Pipe {
        let path = std::env::temp_dir().join(format!("fleet-bench-{}-{name}.fifo", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let ok = Command::new("mkfifo").arg(&path).status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "mkfifo {} failed", path.display());
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (p, s) = (path.clone(), seen.clone());
        std::thread::spawn(move || {
            // A worker that exits (or is killed) closes its end: reopen for the next one.
            let Ok(mut f) = std::fs::File::open(&p) else { return };
            let mut buf = vec![0u8; 1 << 16];
            let mut line = Vec::new();
            loop {
                let n = match f.read(&mut buf) {
                    Ok(0) => match std::fs::File::open(&p) {
                        Ok(reopened) => {
                            f = reopened;
                            continue;
                        }
                        Err(_) => return,
                    },
                    Err(_) => return,
                    Ok(n) => n,
                };
                let at = Instant::now();
                let mut g = s.lock().unwrap();
                for &b in &buf[..n] {
                    if !line.is_empty() || b == b'L' {
                        if b == b'\n' {
                            let text = String::from_utf8_lossy(&line).into_owned();
                            let parts: Vec<f64> =
                                text.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
                            if let [enq, start] = parts[..] {
                                g.lat.push(start - enq);
                                g.starts.push(start);
                            }
                            line.clear();
                        } else {
                            line.push(b);
                        }
                        continue;
                    }
                    match b {
                        b'x' => {
                            g.done += 1;
                            g.first_done.get_or_insert(at);
                            g.last_done = Some(at);
                        }
                        b's' => {
                            g.started += 1;
                            g.first_start.get_or_insert(at);
                        }
                        _ => {}
                    }
                }
            }
        });
        Pipe { path, seen }
    }

    fn wait(&self, what: &str, timeout: Duration, f: impl Fn(&Seen) -> bool) {
        let deadline = Instant::now() + timeout;
        while !f(&self.seen.lock().unwrap()) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

struct Worker {
    child: Child,
}

impl Worker {
    fn spawn(pipe: &Pipe, prefix: &str, args: &[&str]) -> Worker {
        Worker::spawn_on(pipe, prefix, args, None)
    }

    /// Like [`Worker::spawn`], on the Redis URL setting `urls` when given.
    fn spawn_on(pipe: &Pipe, prefix: &str, args: &[&str], urls: Option<&str>) -> Worker {
        let exe = std::env::current_exe().expect("own path");
        let mut cmd = Command::new(exe);
        if let Some(urls) = urls {
            cmd.env("FLEET_BENCH_REDIS_URLS", urls);
        }
        let child = cmd
            .arg("worker")
            .args(args)
            .env("PEERS_FIFO", &pipe.path)
            .env("FLEET_BENCH_PREFIX", prefix)
            .env("PEERS_QUEUE", "bench")
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("spawn worker");
        Worker { child }
    }

    fn status(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Peak resident memory in MB.
    fn peak_rss_mb(&self) -> f64 {
        self.status("VmHWM:") as f64 / 1024.0
    }

    /// User + system CPU seconds used so far.
    fn cpu_secs(&self) -> f64 {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let after = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<f64> = after.split_whitespace().filter_map(|v| v.parse().ok()).collect();
        // Fields after the command: state(skipped, not numeric) ... utime is field 14, stime 15 overall.
        if f.len() > 12 { (f[10] + f[11]) / 100.0 } else { 0.0 }
    }

    fn stop(mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

pub(crate) async fn redis_cpu(c: &Client) -> f64 {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(&mut c.connection()).await.expect("INFO");
    let get = |k: &str| {
        info.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(0.0)
    };
    get("used_cpu_sys:") + get("used_cpu_user:")
}

async fn redis_memory(c: &Client) -> f64 {
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut c.connection()).await.expect("INFO");
    info.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

pub(crate) async fn cleanup(c: &Client) {
    let mut conn = c.connection();
    for k in c.scan_keys(&format!("{}:*", c.prefix())).await.expect("scan") {
        let _: () = redis::cmd("UNLINK").arg(k).query_async(&mut conn).await.expect("unlink");
    }
}

async fn fresh() -> Client {
    let prefix = format!("bench-{}", uuid_like());
    Client::connect(&adapter::url(), prefix).await.expect("connect to Redis")
}

fn uuid_like() -> String {
    let t = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{:x}{:x}", t, std::process::id())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

async fn w1(n: usize) {
    let c = fresh().await;
    let cpu0 = redis_cpu(&c).await;
    let single = adapter::enqueue(&c, n, None, "noop", 0.0).await;
    let cpu1 = redis_cpu(&c).await;
    cleanup(&c).await;
    let cpu2 = redis_cpu(&c).await;
    let bulk = adapter::enqueue(&c, n, Some(1000), "noop", 0.0).await;
    let cpu3 = redis_cpu(&c).await;
    cleanup(&c).await;
    println!(
        "W1 enqueue {n} no-op jobs: single {:.0} jobs/s (Redis CPU {:.1} µs/job), bulk x1000 {:.0} jobs/s (Redis CPU {:.1} µs/job)",
        n as f64 / single,
        (cpu1 - cpu0) * 1e6 / n as f64,
        n as f64 / bulk,
        (cpu3 - cpu2) * 1e6 / n as f64
    );
}

/// W1 single enqueues on a Redis Cluster (`FLEET_BENCH_CLUSTER_URLS`, default the local
/// `scripts/redis-cluster.sh` one), acknowledged by the primary and then once replicated
/// (`EnqueueOptions::replicated(1, 1 s)`: the script and `WAIT 1` in one pipeline): jobs/s
/// and per-call latency, so the cost of a replicated acknowledgement is measured.
async fn w1_replicated(n: usize) {
    let urls = std::env::var("FLEET_BENCH_CLUSTER_URLS")
        .unwrap_or_else(|_| (7000..7006).map(|p| format!("redis://127.0.0.1:{p}")).collect::<Vec<_>>().join(","));
    let c = Client::connect(&urls, format!("bench-{}", uuid_like())).await.expect("connect to the Redis Cluster");
    let n = n.min(20_000);
    for (label, replicated) in [("primary ack", false), ("replicated(1) ack", true), ("primary ack", false)] {
        let mut lat = Vec::with_capacity(n);
        let t0 = Instant::now();
        for i in 0..n {
            let mut opts = EnqueueOptions::default().queue("bench");
            if replicated {
                opts = opts.replicated(1, Duration::from_secs(1));
            }
            let t = Instant::now();
            c.enqueue_with(&BenchJob { k: "noop".into(), a: i as f64 }, opts).await.expect("enqueue");
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let secs = t0.elapsed().as_secs_f64();
        lat.sort_by(|a, b| a.total_cmp(b));
        println!(
            "W1 single enqueue on a 3+3 cluster, {label}: {n} jobs, {:.0} jobs/s, per call p50 {:.3} ms, p99 {:.3} ms",
            n as f64 / secs,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        );
    }
    cleanup(&c).await;
}

async fn w2(n: usize, label: &str, args: &[&str]) {
    w2_tenants(n, 0, label, args).await
}

/// W2 with the jobs spread round-robin over `tenants` tenants (0: no tenant, as W2).
async fn w2_tenants(n: usize, tenants: usize, label: &str, args: &[&str]) {
    let c = fresh().await;
    if tenants == 0 {
        adapter_enqueue_queue(&c, n, "noop", 0.0).await;
    } else {
        let mut i = 0;
        while i < n {
            let end = (i + 1000).min(n);
            let jobs = (i..end).map(|j| {
                let opts = EnqueueOptions { tenant: Some(format!("tenant-{}", j % tenants)), ..Default::default() };
                (BenchJob { k: "noop".into(), a: j as f64 }, opts.queue("bench"))
            });
            c.enqueue_bulk_with(jobs).await.expect("enqueue");
            i = end;
        }
    }
    let pipe = Pipe::new("w2");
    let cpu0 = redis_cpu(&c).await;
    let w = Worker::spawn(&pipe, c.prefix(), args);
    pipe.wait("W2 drain", Duration::from_secs(300), |s| s.done >= n);
    let cpu1 = redis_cpu(&c).await;
    let (rate, worker_cpu, rss) = {
        let s = pipe.seen.lock().unwrap();
        let span = s.last_done.unwrap() - s.first_done.unwrap();
        ((n - 1) as f64 / span.as_secs_f64(), w.cpu_secs(), w.peak_rss_mb())
    };
    w.stop();
    cleanup(&c).await;
    println!(
        "W2 drain {n} queued no-op jobs, {label}: {rate:.0} jobs/s; Redis CPU {:.1} µs/job; worker CPU {:.1} µs/job; worker peak RSS {rss:.1} MB",
        (cpu1 - cpu0) * 1e6 / n as f64,
        worker_cpu * 1e6 / n as f64
    );
}

/// The local cluster's nodes (`FLEET_BENCH_CLUSTER_URLS`, default `scripts/redis-cluster.sh`'s).
fn cluster_urls() -> String {
    std::env::var("FLEET_BENCH_CLUSTER_URLS")
        .unwrap_or_else(|_| (7000..7006).map(|p| format!("redis://127.0.0.1:{p}")).collect::<Vec<_>>().join(","))
}

/// CPU seconds used so far by each primary among `urls`' nodes, by address.
async fn primaries_cpu(urls: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for url in urls.split(',') {
        let client = redis::Client::open(url.trim()).expect("node url");
        let mut c = client.get_multiplexed_async_connection().await.expect("connect to a node");
        let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut c).await.expect("ROLE");
        if redis::from_redis_value_ref::<String>(&role[0]).ok().as_deref() != Some("master") {
            continue;
        }
        let info: String = redis::cmd("INFO").arg("cpu").query_async(&mut c).await.expect("INFO");
        let get = |k: &str| {
            info.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(0.0)
        };
        out.push((url.trim().to_owned(), get("used_cpu_sys:") + get("used_cpu_user:")));
    }
    out
}

/// W2 on one Redis against the local 3+3 cluster with the queue in 3 partitions (one per
/// primary): drain jobs/s, and each primary's Redis CPU per job, so the spread is seen.
async fn w2_cluster(n: usize, args: &[&str]) {
    let single = adapter::url();
    let cluster = cluster_urls();
    for (label, urls, partitions) in
        [("one Redis", single.as_str(), 1u32), ("3+3 cluster, 3 partitions", cluster.as_str(), 3)]
    {
        let mut c = Client::connect(urls, format!("bench-{}", uuid_like())).await.expect("connect to Redis");
        if partitions > 1 {
            c = c.with_partitions("bench", partitions).expect("partitions");
        }
        adapter_enqueue_queue(&c, n, "noop", 0.0).await;
        let pipe = Pipe::new("w2c");
        let cpu0 = primaries_cpu(urls).await;
        let mut worker_args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        if partitions > 1 {
            worker_args.push(format!("partitions={partitions}"));
        }
        let worker_args: Vec<&str> = worker_args.iter().map(String::as_str).collect();
        let w = Worker::spawn_on(&pipe, c.prefix(), &worker_args, Some(urls));
        pipe.wait("W2 drain", Duration::from_secs(300), |s| s.done >= n);
        let cpu1 = primaries_cpu(urls).await;
        let (rate, worker_cpu) = {
            let s = pipe.seen.lock().unwrap();
            let span = s.last_done.unwrap() - s.first_done.unwrap();
            ((n - 1) as f64 / span.as_secs_f64(), w.cpu_secs())
        };
        w.stop();
        cleanup(&c).await;
        let shards: Vec<String> = cpu0
            .iter()
            .zip(&cpu1)
            .map(|((addr, a), (_, b))| {
                format!("{} {:.1} µs/job", addr.rsplit(':').next().unwrap_or(addr), (b - a) * 1e6 / n as f64)
            })
            .collect();
        println!(
            "W2 drain {n} queued no-op jobs, {label} ({}): {rate:.0} jobs/s; Redis CPU per primary: {}; worker CPU {:.1} µs/job",
            args.join(" "),
            shards.join(", "),
            worker_cpu * 1e6 / n as f64
        );
    }
}

/// Fairness between tenants on one queue: tenant A queues 20,000 jobs of 10 ms, then
/// tenant B enqueues one job every 100 ms while A's backlog lasts; B's enqueue-to-start
/// latency, with tenants (fair turns) and with the same jobs enqueued without tenants
/// (one FIFO list, as before tenants), in one run.
async fn fairness(with_tenants: bool) {
    let c = fresh().await;
    let tenant = |t: &str| with_tenants.then(|| t.to_owned());
    let backlog = 20_000;
    let mut i = 0;
    while i < backlog {
        let end = (i + 1000).min(backlog);
        let jobs = (i..end).map(|_| {
            let opts = EnqueueOptions { tenant: tenant("studio-a"), ..Default::default() };
            (BenchJob { k: "sleep".into(), a: 10.0 }, opts.queue("bench"))
        });
        c.enqueue_bulk_with(jobs).await.expect("enqueue");
        i = end;
    }
    let pipe = Pipe::new("fair");
    let w = Worker::spawn(&pipe, c.prefix(), &["20"]);
    pipe.wait("A's jobs to start", Duration::from_secs(30), |s| s.started > 0);
    let count = 50;
    let start = tokio::time::Instant::now();
    for i in 0..count {
        tokio::time::sleep_until(start + Duration::from_millis(100 * i as u64)).await;
        let opts = EnqueueOptions { tenant: tenant("venue-b"), ..Default::default() }.queue("bench");
        c.enqueue_with(&BenchJob { k: "lat".into(), a: adapter::now() }, opts).await.expect("enqueue");
    }
    pipe.wait("B's jobs", Duration::from_secs(120), |s| s.lat.len() == count);
    let a_done = pipe.seen.lock().unwrap().done;
    w.stop();
    let mut lat: Vec<f64> = pipe.seen.lock().unwrap().lat.iter().map(|s| s * 1000.0).collect();
    lat.sort_by(f64::total_cmp);
    cleanup(&c).await;
    println!(
        "Fairness, tenant A {backlog} queued jobs of 10 ms, tenant B one job every 100 ms (x{count}), concurrency 20, {}: \
         B enqueue-to-start p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; A jobs done meanwhile {a_done}",
        if with_tenants { "with tenants" } else { "without tenants (one FIFO)" },
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
}

/// Redis memory as `n` no-op jobs go through one worker that keeps finished records for
/// `retention` seconds: before, with the jobs queued, at the peak once all finished, and
/// with the fleet idle after the retention (the janitor's work, no completions).
async fn memory(n: usize, retention: u64) {
    let c = fresh().await;
    let mb = |b: f64| b / (1024.0 * 1024.0);
    let base = redis_memory(&c).await;
    adapter_enqueue_queue(&c, n, "noop", 0.0).await;
    let queued = redis_memory(&c).await;
    let pipe = Pipe::new("memory");
    let retention_arg = format!("retention={retention}");
    let w = Worker::spawn(&pipe, c.prefix(), &["200", "batch=200", &retention_arg]);
    pipe.wait("every job", Duration::from_secs(600), |s| s.done >= n);
    let peak = redis_memory(&c).await;
    let idle_from = Instant::now();
    let k = c.keys("bench");
    let mut idle = peak;
    while idle_from.elapsed() < Duration::from_secs(retention + 120) {
        let left: i64 = redis::cmd("HLEN").arg(&k.jobs).query_async(&mut c.connection()).await.unwrap_or(-1);
        idle = redis_memory(&c).await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let waited = idle_from.elapsed().as_secs_f64();
    w.stop();
    cleanup(&c).await;
    println!(
        "Memory, {n} no-op jobs, retention {retention} s: Redis used_memory {:.1} MB before, {:.1} MB queued, \
         {:.1} MB when all finished, {:.1} MB idle {waited:.0} s later (every record expired)",
        mb(base),
        mb(queued),
        mb(peak),
        mb(idle)
    );
}

/// Bulk-enqueues bench jobs onto the bench queue of `c`'s prefix.
async fn adapter_enqueue_queue(c: &Client, n: usize, kind: &str, arg: f64) {
    let opts = || EnqueueOptions::default().queue("bench");
    let mut i = 0;
    while i < n {
        let end = (i + 1000).min(n);
        c.enqueue_bulk_with(
            (i..end).map(|j| (BenchJob { k: kind.into(), a: if kind == "noop" { j as f64 } else { arg } }, opts())),
        )
        .await
        .expect("enqueue");
        i = end;
    }
}

async fn w3() {
    let c = fresh().await;
    let pipe = Pipe::new("w3");
    let w = Worker::spawn(&pipe, c.prefix(), &["10"]);
    let opts = || EnqueueOptions::default().queue("bench");
    c.enqueue_with(&BenchJob { k: "lat".into(), a: adapter::now() }, opts()).await.expect("enqueue");
    pipe.wait("W3 warm-up", Duration::from_secs(30), |s| s.lat.len() == 1);
    let count = 1000;
    let start = tokio::time::Instant::now();
    for i in 0..count {
        tokio::time::sleep_until(start + Duration::from_millis(10 * i as u64)).await;
        c.enqueue_with(&BenchJob { k: "lat".into(), a: adapter::now() }, opts()).await.expect("enqueue");
    }
    pipe.wait("W3 jobs", Duration::from_secs(30), |s| s.lat.len() == count + 1);
    let rss = w.peak_rss_mb();
    w.stop();
    let mut lat: Vec<f64> = pipe.seen.lock().unwrap().lat[1..].iter().map(|s| s * 1000.0).collect();
    lat.sort_by(f64::total_cmp);
    cleanup(&c).await;
    println!(
        "W3 idle worker, one job every 10 ms for 10 s: enqueue-to-start p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms; worker peak RSS {rss:.1} MB",
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
}

async fn w4() {
    let c = fresh().await;
    adapter_enqueue_queue(&c, 2000, "sleep", 50.0).await;
    let pipe = Pipe::new("w4");
    let w = Worker::spawn(&pipe, c.prefix(), &["100"]);
    pipe.wait("W4", Duration::from_secs(120), |s| s.done >= 2000);
    let rss = w.peak_rss_mb();
    w.stop();
    let wall = {
        let s = pipe.seen.lock().unwrap();
        (s.last_done.unwrap() - s.first_start.unwrap()).as_secs_f64()
    };
    cleanup(&c).await;
    println!(
        "W4 2000 jobs sleeping 50 ms, concurrency 100: wall {wall:.3} s (ideal 1.000 s); worker peak RSS {rss:.1} MB"
    );
}

/// Fetch cost per job with a small and a huge backlog, and Redis bytes per queued job.
async fn backlog(sizes: &[usize], measure: usize) {
    for &size in sizes {
        let c = fresh().await;
        let mem0 = redis_memory(&c).await;
        adapter_enqueue_queue(&c, size, "noop", 0.0).await;
        let mem1 = redis_memory(&c).await;
        let pipe = Pipe::new("backlog");
        let cpu0 = redis_cpu(&c).await;
        let w = Worker::spawn(&pipe, c.prefix(), &["200", "batch=200"]);
        let n = measure.min(size);
        pipe.wait("backlog drain", Duration::from_secs(300), |s| s.done >= n);
        let cpu1 = redis_cpu(&c).await;
        w.stop();
        cleanup(&c).await;
        println!(
            "backlog {size} ready jobs: Redis CPU {:.2} µs/job over the first {n} (fetch+ack, worker 200/200); Redis memory {:.0} bytes/queued job",
            (cpu1 - cpu0) * 1e6 / n as f64,
            (mem1 - mem0) / size as f64
        );
    }
}

/// Redis bytes per dead job (envelope, state, attempt count, history, dead-set entry).
async fn dead(n: usize) {
    let c = fresh().await;
    let mem0 = redis_memory(&c).await;
    adapter_enqueue_queue(&c, n, "die", 0.0).await;
    let pipe = Pipe::new("dead");
    let w = Worker::spawn(&pipe, c.prefix(), &["100"]);
    loop {
        let s = c.stats("bench").await.expect("stats");
        if s.dead as usize >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w.stop();
    let mem1 = redis_memory(&c).await;
    cleanup(&c).await;
    println!(
        "dead letters: {:.0} bytes of Redis memory per dead job ({n} jobs, one attempt each)",
        (mem1 - mem0) / n as f64
    );
}

/// Time from SIGKILL of a worker running a job to that job starting again on
/// another worker, for a given lease length.
async fn recovery(lease_ms: u64) {
    let c = fresh().await;
    adapter_enqueue_queue(&c, 1, "sleep", 600_000.0).await;
    let pipe = Pipe::new("recovery");
    let lease = format!("lease={lease_ms}");
    let a = Worker::spawn(&pipe, c.prefix(), &["1", &lease]);
    pipe.wait("the job to start", Duration::from_secs(30), |s| s.started == 1);
    let b = Worker::spawn(&pipe, c.prefix(), &["1", &lease]);
    // Let the second worker come up before the crash, as a replica would be.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    let mut a = a;
    let _ = a.child.kill();
    let _ = a.child.wait();
    pipe.wait("the job to start again", Duration::from_secs(lease_ms / 1000 * 3 + 30), |s| s.started == 2);
    let recovered = Instant::now();
    b.stop();
    cleanup(&c).await;
    println!(
        "crash recovery, lease {lease_ms} ms: a SIGKILLed worker's job started again on another worker {:.2} s after the kill",
        (recovered - killed).as_secs_f64()
    );
}

/// The cost of one limiter check, and the accuracy of a shared rate with three workers.
async fn limits() {
    let c = fresh().await;
    let limiter = fleet_jobs::limits::Limiter::new(c.connection(), c.prefix(), Duration::from_secs(30));
    let spec = fleet_jobs::limits::LimitSpec { rate: Some(1e9), burst: 1, ..Default::default() };
    let n = 20_000;
    let cpu0 = redis_cpu(&c).await;
    let t0 = Instant::now();
    for i in 0..n {
        let holder = format!("h{i}");
        limiter.acquire("bench:cost", &holder, &spec).await.expect("acquire");
    }
    let el = t0.elapsed().as_secs_f64();
    let cpu1 = redis_cpu(&c).await;
    println!(
        "limiter check (rate limit, one key): 1 round trip, {:.1} µs per check from one client awaiting each, Redis CPU {:.1} µs per check",
        el * 1e6 / n as f64,
        (cpu1 - cpu0) * 1e6 / n as f64
    );
    cleanup(&c).await;

    let c = fresh().await;
    let rate = 20.0;
    let jobs = 300;
    adapter_enqueue_queue(&c, jobs, "limited", 0.0).await;
    let pipe = Pipe::new("limits");
    let rate_arg = format!("rate={rate}");
    let ws: Vec<Worker> = (0..3).map(|_| Worker::spawn(&pipe, c.prefix(), &["10", &rate_arg])).collect();
    pipe.wait("limited jobs", Duration::from_secs(120), |s| s.lat.len() >= jobs);
    for w in ws {
        w.stop();
    }
    // Start times on the workers' clocks (seconds since the epoch).
    let mut starts: Vec<f64> = pipe.seen.lock().unwrap().starts.clone();
    starts.sort_by(f64::total_cmp);
    let mut peak = 0;
    let mut j = 0;
    for i in 0..starts.len() {
        while j < starts.len() && starts[j] < starts[i] + 1.0 {
            j += 1;
        }
        peak = peak.max(j - i);
    }
    let span = starts.last().unwrap_or(&0.0) - starts.first().unwrap_or(&0.0);
    cleanup(&c).await;
    println!(
        "limiter accuracy: 3 worker processes x concurrency 10, {jobs} jobs on one key limited to {rate}/s (burst 1): max {peak} starts in any 1 s window; {:.2} jobs/s overall",
        (jobs - 1) as f64 / span
    );
}

/// Webhook deliveries by one worker process to a fast receiver on loopback: throughput
/// with a backlog, and event-to-delivered latency at a steady 500 events/s.
async fn webhooks() {
    use axum::routing::post;
    let base = std::env::var("FLEET_BENCH_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let name = format!("fleet_bench_{}", uuid_like());
    let mut admin =
        <sqlx::PgConnection as sqlx::Connection>::connect(&format!("{base}/postgres")).await.expect("PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.expect("create db");
    let db_url = format!("{base}/{name}");
    let db = fleet_worker::db::connect_and_migrate(&db_url).await.expect("migrate");

    // The receiver: records when each webhook-id arrived.
    let arrivals: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let rec = arrivals.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: axum::http::HeaderMap| {
            let rec = rec.clone();
            async move {
                let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                rec.lock().unwrap().push((id, Instant::now()));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    let secret = fleet_webhooks::signing::Secret::generate();
    // A plaintext secret, as endpoints from before sealing hold: the worker needs no key.
    fleet_webhooks::store::insert_endpoint(&db, "ep_bench", "bench", &format!("http://{addr}/hook"), &[secret], &[])
        .await
        .expect("endpoint");

    let c = fresh().await;
    let publish = |i: usize, db: sqlx::PgPool, c: Client| async move {
        let id = format!("msg_{i:08}");
        let payload = format!(r#"{{"n":{i},"gallery":"smith-jones"}}"#);
        fleet_webhooks::store::record_message(&db, &id, "bench", "bench.event", &payload).await.expect("message");
        let args = fleet_jobs::catalogue::WebhookDelivery { message_id: id.clone(), endpoint_id: "ep_bench".into() };
        // Deliveries carry their tenant: the handler loads the endpoint and message for it only.
        let opts = fleet_jobs::EnqueueOptions { tenant: Some("bench".into()), ..Default::default() };
        c.enqueue_with(&args, opts).await.expect("enqueue");
        id
    };

    // Throughput: 10,000 deliveries queued, then one worker at concurrency 100.
    let n = 10_000;
    let jobs: Vec<_> = (0..n)
        .map(|i| fleet_jobs::catalogue::WebhookDelivery {
            message_id: format!("msg_{i:08}"),
            endpoint_id: "ep_bench".into(),
        })
        .collect();
    let mut tx = db.begin().await.expect("tx");
    for i in 0..n {
        let (id, payload) = (format!("msg_{i:08}"), format!(r#"{{"n":{i}}}"#));
        fleet_webhooks::store::record_message(&mut *tx, &id, "bench", "bench.event", &payload).await.expect("message");
    }
    tx.commit().await.expect("commit");
    let bench = || fleet_jobs::EnqueueOptions { tenant: Some("bench".into()), ..Default::default() };
    c.enqueue_bulk_with(jobs.into_iter().map(|j| (j, bench()))).await.expect("enqueue");
    let pipe = Pipe::new("webhooks");
    let exe = std::env::current_exe().expect("exe");
    let mut child = Command::new(exe)
        .args(["worker", "100", "batch=100"])
        .env("PEERS_FIFO", &pipe.path)
        .env("FLEET_BENCH_PREFIX", c.prefix())
        .env("FLEET_DATABASE_URL", &db_url)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("worker");
    let deadline = Instant::now() + Duration::from_secs(120);
    while arrivals.lock().unwrap().len() < n {
        assert!(Instant::now() < deadline, "deliveries did not finish");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (first, last) = {
        let a = arrivals.lock().unwrap();
        (a.iter().map(|x| x.1).min().unwrap(), a.iter().map(|x| x.1).max().unwrap())
    };
    let rate = (n - 1) as f64 / (last - first).as_secs_f64();
    let rss = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0;

    // Latency: 500 events/s for 10 s, each published (PostgreSQL insert + enqueue) and timed.
    arrivals.lock().unwrap().clear();
    let mut published = Vec::new();
    let start = tokio::time::Instant::now();
    for i in 0..5_000 {
        tokio::time::sleep_until(start + Duration::from_micros(2_000 * i as u64)).await;
        let t = Instant::now();
        let id = publish(n + i, db.clone(), c.clone()).await;
        published.push((id, t));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while arrivals.lock().unwrap().len() < published.len() {
        assert!(Instant::now() < deadline, "latency run did not finish");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let got: std::collections::HashMap<String, Instant> = arrivals.lock().unwrap().iter().cloned().collect();
    let mut lat: Vec<f64> =
        published.iter().filter_map(|(id, t)| got.get(id).map(|a| (*a - *t).as_secs_f64() * 1000.0)).collect();
    lat.sort_by(f64::total_cmp);
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let _ = child.wait();
    db.close().await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)"))).execute(&mut admin).await;
    cleanup(&c).await;
    println!(
        "webhooks: {rate:.0} signed deliveries/s by one worker (concurrency 100) to a local receiver; at 500 events/s event-to-delivered p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; worker peak RSS {rss:.1} MB",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
}

/// `n` jobs all due in the same second, then processed.
async fn due(n: usize) {
    let c = fresh().await;
    let at = SystemTime::now() + Duration::from_secs(3);
    let mut i = 0;
    let t0 = Instant::now();
    while i < n {
        let end = (i + 1000).min(n);
        c.enqueue_bulk_with((i..end).map(|j| {
            (
                BenchJob { k: "noop".into(), a: j as f64 },
                EnqueueOptions { queue: Some("bench".into()), run_at: Some(at), ..Default::default() },
            )
        }))
        .await
        .expect("enqueue");
        i = end;
    }
    let enq = t0.elapsed().as_secs_f64();
    let pipe = Pipe::new("due");
    let w = Worker::spawn(&pipe, c.prefix(), &["200", "batch=200"]);
    pipe.wait("due-at-once drain", Duration::from_secs(300), |s| s.done >= n);
    let span = {
        let s = pipe.seen.lock().unwrap();
        (s.last_done.unwrap() - s.first_done.unwrap()).as_secs_f64()
    };
    w.stop();
    let stats = c.stats("bench").await.expect("stats");
    cleanup(&c).await;
    println!(
        "due-at-once: {n} jobs enqueued in {enq:.2} s for the same instant, all processed in {span:.2} s after the first ({:.0} jobs/s); left pending {}",
        n as f64 / span,
        stats.pending()
    );
}

pub async fn run(args: &[String]) {
    let mut which: Vec<String> = vec!["w1".into(), "w2".into(), "w3".into(), "w4".into()];
    let mut n = 50_000;
    let mut best = "200 batch=200".to_owned();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--n" => n = it.next().and_then(|v| v.parse().ok()).expect("--n N"),
            "--best" => best = it.next().expect("--best \"C batch=B\"").clone(),
            list => which = list.split(',').map(str::to_owned).collect(),
        }
    }
    println!("fleet-bench on {} ({})", adapter::url(), chrono_like_now());
    for w in &which {
        match w.as_str() {
            "w1" => w1(n).await,
            "w1-replicated" => w1_replicated(n).await,
            "w2" => {
                w2(n, "concurrency 10", &["10"]).await;
                let best_args: Vec<&str> = best.split_whitespace().collect();
                w2(n, &format!("best ({best})"), &best_args).await;
            }
            "w2-cluster" => {
                let best_args: Vec<&str> = best.split_whitespace().collect();
                for _ in 0..2 {
                    w2_cluster(n, &best_args).await;
                }
            }
            "fairness" => {
                fairness(true).await;
                fairness(false).await;
            }
            "w2-tenants" => {
                let best_args: Vec<&str> = best.split_whitespace().collect();
                for _ in 0..3 {
                    w2_tenants(n, 0, &format!("no tenants, best ({best})"), &best_args).await;
                    w2_tenants(n, 1, &format!("1 tenant, best ({best})"), &best_args).await;
                    w2_tenants(n, 100, &format!("100 tenants, best ({best})"), &best_args).await;
                    w2_tenants(n, 0, "no tenants, concurrency 10", &["10"]).await;
                    w2_tenants(n, 100, "100 tenants, concurrency 10", &["10"]).await;
                }
            }
            "memory" => memory(1_000_000, 60).await,
            "w3" => w3().await,
            "w4" => w4().await,
            "backlog" => backlog(&[10_000, 1_000_000], 10_000).await,
            "due" => due(100_000).await,
            "dead" => dead(10_000).await,
            "limits" => limits().await,
            "webhooks" => webhooks().await,
            "images" => crate::images::run(&fresh().await).await,
            "dedup" => crate::dedup::run(fresh, n).await,
            "notify" => {
                let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
                let client = fresh().await;
                let rate = env("FLEET_BENCH_NOTIFY_RATE", 200);
                crate::notify::run(client.clone(), rate, env("FLEET_BENCH_NOTIFY_COUNT", 2000) as usize).await;
                cleanup(&client).await;
            }
            "recovery" => {
                recovery(5_000).await;
                recovery(30_000).await;
            }
            other => eprintln!(
                "unknown workload {other} (w1, w1-replicated, w2, w2-cluster, w2-tenants, w3, w4, fairness, memory, backlog, due, dead, recovery, limits, webhooks, images, dedup, notify)"
            ),
        }
    }
}

fn chrono_like_now() -> String {
    let out = Command::new("date").arg("-u").arg("+%Y-%m-%dT%H:%M:%SZ").output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default()
}
