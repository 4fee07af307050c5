//! The shared test harness: every test gets its own Redis key prefix, so tests run
//! in parallel on one Redis without seeing each other (nothing is ever flushed).
//!
//! ## Layout
//!
//! * [`TestEnv`]: a key prefix and a client per test, in-process workers, queue stats.
//! * [`until_final`], [`n_final`], [`eventually`]: waits on job events or a condition,
//!   with a timeout (never sleep-then-assert).
//! * [`TestDb`]: a fresh migrated PostgreSQL database per test.
//! * [`WorkerProcess`], [`RedisServer`], [`TcpProxy`]: real processes and a proxy for the
//!   chaos suites (killed workers, restarted Redis, cut connections).
//!
//! Each suite is one binary (`engine/`, `chaos/`, `limits/`, `scheduler/`, `webhooks/`,
//! `admin/`, `images/`, `calendar/`, `comms/`, `tenants/`). A kind's own logic is tested
//! beside it, without a worker, through `fleet_kit::testing`.

use fleet_jobs::backend::{JobEvent, Outcome};
use fleet_jobs::{Client, QueueStats};
use fleet_worker::{QueueConfig, Registry, RunningWorker, WorkerConfig};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Redis used by the tests: `FLEET_TEST_REDIS_URL`, default the local one.
pub fn redis_url() -> String {
    std::env::var("FLEET_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// One test's world: a unique key prefix and a client on it.
pub struct TestEnv {
    /// The prefix (namespace) of this test.
    pub prefix: String,
    /// A client on it.
    pub client: Client,
}

impl TestEnv {
    /// A fresh namespace. Panics with a clear message when Redis is not running.
    pub async fn new() -> Self {
        let url = redis_url();
        let prefix = format!("test-{}", uuid::Uuid::now_v7().simple());
        let client = match tokio::time::timeout(Duration::from_secs(5), Client::connect(&url, prefix.clone())).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => panic!(
                "Redis is not reachable at {url}: {e}. Start it with `scripts/services.sh` (or set FLEET_TEST_REDIS_URL)."
            ),
            Err(_) => panic!("Redis at {url} did not answer within 5 s. Start it with `scripts/services.sh`."),
        };
        TestEnv { prefix, client }
    }

    /// A worker config on this namespace serving `queue` at `concurrency`, with a
    /// short lease and no HTTP endpoint.
    pub fn config(&self, queue: &str, concurrency: usize) -> WorkerConfig {
        WorkerConfig {
            redis_url: redis_url(),
            prefix: self.prefix.clone(),
            listen: None,
            queues: vec![QueueConfig { name: queue.to_owned(), concurrency, fetch_batch: None, partitions: None }],
            lease_ms: 5_000,
            shutdown_grace_secs: 10,
            ..WorkerConfig::default()
        }
    }

    /// Starts an in-process worker.
    pub async fn worker(&self, config: WorkerConfig, registry: Registry) -> RunningWorker {
        fleet_worker::start(config, registry).await.expect("worker starts")
    }

    /// Counters of `queue`.
    pub async fn stats(&self, queue: &str) -> QueueStats {
        self.client.stats(queue).await.expect("stats")
    }

    /// Deletes this test's keys (SCAN + DEL on its own prefix only).
    pub async fn cleanup(self) {
        let mut conn = self.client.connection();
        let keys = self.client.scan_keys(&format!("{}:*", self.prefix)).await.expect("scan");
        for k in keys {
            let _: () = redis::cmd("DEL").arg(k).query_async(&mut conn).await.expect("del");
        }
    }
}

/// An event with the time it was received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The event.
    pub event: JobEvent,
    /// When the test saw it.
    pub at: Instant,
}

/// Collects events of one job until it reaches a final outcome (succeeded, dead,
/// expired) or `timeout` passes (then panics, naming what was seen).
pub async fn until_final(rx: &mut broadcast::Receiver<JobEvent>, id: &str, timeout: Duration) -> Vec<Seen> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(ev)) if ev.id == id => {
                let done = matches!(ev.outcome, Outcome::Succeeded | Outcome::Dead | Outcome::Expired);
                seen.push(Seen { event: ev, at: Instant::now() });
                if done {
                    return seen;
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(broadcast::error::RecvError::Lagged(n))) => panic!("test fell {n} events behind"),
            Ok(Err(broadcast::error::RecvError::Closed)) => panic!("worker stopped; events of {id} so far: {seen:?}"),
            Err(_) => panic!("job {id} did not finish within {timeout:?}; events so far: {seen:?}"),
        }
    }
}

/// Waits for `n` final events (any jobs) and returns them in order.
pub async fn n_final(rx: &mut broadcast::Receiver<JobEvent>, n: usize, timeout: Duration) -> Vec<JobEvent> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(ev)) => {
                if matches!(ev.outcome, Outcome::Succeeded | Outcome::Dead | Outcome::Expired) {
                    out.push(ev);
                }
            }
            Ok(Err(e)) => panic!("event stream failed: {e}"),
            Err(_) => panic!("only {} of {n} jobs finished within {timeout:?}", out.len()),
        }
    }
    out
}

/// Polls `check` every 10 ms until it returns `Some`, or panics after `timeout`
/// naming `what`. For conditions that have no event (e.g. a count in Redis).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl TestEnv {
    /// A fresh namespace on the Redis at `url`.
    pub async fn on(url: &str) -> Self {
        let prefix = format!("test-{}", uuid::Uuid::now_v7().simple());
        let client = Client::connect(url, prefix.clone()).await.unwrap_or_else(|e| panic!("Redis at {url}: {e}"));
        TestEnv { prefix, client }
    }
}

/// A free TCP port on loopback (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A `fleet-worker` process (the test package's copy of the shipped command).
pub struct WorkerProcess {
    child: std::process::Child,
}

impl WorkerProcess {
    /// Starts `exe` (pass `env!("CARGO_BIN_EXE_fleet-worker-e2e")`) on `redis_url`
    /// and `prefix`, with extra `FLEET_*` settings.
    pub fn spawn(exe: &str, redis_url: &str, prefix: &str, settings: &[(&str, &str)]) -> WorkerProcess {
        Self::spawn_logged(exe, redis_url, prefix, settings, None)
    }

    /// Like [`WorkerProcess::spawn`], with the process's log (stderr) written to `log`
    /// when given.
    pub fn spawn_logged(
        exe: &str,
        redis_url: &str,
        prefix: &str,
        settings: &[(&str, &str)],
        log: Option<&std::path::Path>,
    ) -> WorkerProcess {
        let mut cmd = std::process::Command::new(exe);
        if let Some(path) = log {
            cmd.stderr(std::fs::File::create(path).expect("create the worker's log file"));
        }
        cmd.env("FLEET_REDIS_URL", redis_url)
            .env("FLEET_PREFIX", prefix)
            .env("FLEET_LISTEN", "")
            .env("FLEET_TEST_KINDS", "1")
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(std::process::Stdio::null());
        for (k, v) in settings {
            cmd.env(k, v);
        }
        WorkerProcess { child: cmd.spawn().expect("start the worker process") }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Sends `signal` (e.g. "KILL", "TERM").
    pub fn signal(&self, signal: &str) {
        let _ = std::process::Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status();
    }

    /// SIGKILL, then reap.
    pub fn kill(mut self) {
        self.signal("KILL");
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit (panics if it fails or takes over `timeout`).
    pub fn terminate(mut self, timeout: Duration) {
        self.signal("TERM");
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "worker exited with {status} after SIGTERM");
                return;
            }
            assert!(Instant::now() < deadline, "worker did not stop within {timeout:?} of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if !self.exited() {
            self.signal("KILL");
            let _ = self.child.wait();
        }
    }
}

/// A Redis server of a test's own, on its own port: either keeping data in an
/// append-only file (a restart loses nothing acknowledged) or keeping nothing.
pub struct RedisServer {
    /// Its port.
    pub port: u16,
    dir: std::path::PathBuf,
    persistent: bool,
    child: Option<std::process::Child>,
}

impl RedisServer {
    /// Starts a persistent `redis-server` on a free port and waits until it answers.
    pub async fn start() -> RedisServer {
        Self::start_with(true).await
    }

    /// Starts a `redis-server` that keeps nothing on disk (a restart loses everything).
    pub async fn start_ephemeral() -> RedisServer {
        Self::start_with(false).await
    }

    async fn start_with(persistent: bool) -> RedisServer {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("fleet-test-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut s = RedisServer { port, dir, persistent, child: None };
        s.launch().await;
        s
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn launch(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(if self.persistent {
                ["--appendonly", "yes", "--appendfsync", "always"]
            } else {
                ["--appendonly", "no", "--appendfsync", "no"]
            })
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server ({e}); install it with scripts/services.sh"));
        self.child = Some(child);
        let url = self.url();
        eventually("the test's Redis to answer", Duration::from_secs(10), || {
            let url = url.clone();
            async move {
                let client = redis::Client::open(url).ok()?;
                let mut c = client.get_multiplexed_async_connection().await.ok()?;
                let pong: String = redis::cmd("PING").query_async(&mut c).await.ok()?;
                (pong == "PONG").then_some(())
            }
        })
        .await;
    }

    /// Stops the server (SIGTERM: it flushes its append-only file and exits).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    /// Stops the server, keeps it down for `down`, and starts it again on the same port.
    pub async fn restart(&mut self, down: Duration) {
        self.stop();
        tokio::time::sleep(down).await;
        self.launch().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The states of `ids` on `queue`.
pub async fn states(client: &Client, queue: &str, ids: &[fleet_jobs::JobId]) -> Vec<Option<fleet_jobs::JobState>> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(client.job_state(queue, id.as_str()).await.expect("job state"));
    }
    out
}

/// A PostgreSQL database of one test's own, created fresh and migrated, dropped by
/// [`TestDb::drop_db`]. Server: `FLEET_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432`).
pub struct TestDb {
    /// URL of the test's database.
    pub url: String,
    /// A pool on it.
    pub pool: sqlx::PgPool,
    name: String,
    admin_url: String,
}

impl TestDb {
    /// Creates and migrates a new database. Panics with a clear message when PostgreSQL is down.
    pub async fn new() -> TestDb {
        let base = std::env::var("FLEET_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
        let admin_url = format!("{base}/postgres");
        let name = format!("fleet_test_{}", uuid::Uuid::now_v7().simple());
        let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!("PostgreSQL is not reachable at {base}: {e}. Start it with `scripts/services.sh` (or set FLEET_TEST_PG_URL).")
        });
        // The name is generated here (hex digits only): safe to splice.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create the test database");
        let url = format!("{base}/{name}");
        let pool = fleet_scheduler::db::connect_and_migrate(&url).await.expect("migrate the test database");
        TestDb { url, pool, name, admin_url }
    }

    /// Drops the database.
    pub async fn drop_db(self) {
        self.pool.close().await;
        if let Ok(mut admin) = <sqlx::PgConnection as sqlx::Connection>::connect(&self.admin_url).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
                .execute(&mut admin)
                .await;
        }
    }
}

/// A TCP proxy a test controls: forwards connections on a loopback port of its own to
/// `target` until [`TcpProxy::cut`], which closes every forwarded connection and refuses
/// new ones (accepted and closed at once) until [`TcpProxy::restore`]. Stands in for an
/// outage of a server other tests share (PostgreSQL), which cannot be stopped.
pub struct TcpProxy {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    state: std::sync::Arc<ProxyState>,
    accept: tokio::task::JoinHandle<()>,
}

struct ProxyState {
    up: std::sync::atomic::AtomicBool,
    conns: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl TcpProxy {
    /// Starts forwarding to `target` (`host:port`).
    pub async fn start(target: &str) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let state = std::sync::Arc::new(ProxyState {
            up: std::sync::atomic::AtomicBool::new(true),
            conns: std::sync::Mutex::new(Vec::new()),
        });
        let (s, target) = (state.clone(), target.to_owned());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { continue };
                if !s.up.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut conns = s.conns.lock().unwrap();
                conns.retain(|c| !c.is_finished());
                conns.push(task.abort_handle());
            }
        });
        TcpProxy { port, state, accept }
    }

    /// Cuts the link: every open connection is closed, new ones are refused.
    pub fn cut(&self) {
        self.state.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.state.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.state.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

impl TestDb {
    /// The host and port of the test's PostgreSQL server (`127.0.0.1:5432`).
    pub fn server(&self) -> String {
        let rest = self.url.split_once("://").map_or(self.url.as_str(), |(_, r)| r);
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        rest.split('/').next().unwrap_or(rest).to_owned()
    }

    /// The test database's URL through `127.0.0.1:<port>` (a [`TcpProxy`]) instead of the server.
    pub fn url_via(&self, port: u16) -> String {
        self.url.replacen(&self.server(), &format!("127.0.0.1:{port}"), 1)
    }
}

/// An envelope that is not UTF-8 (with a NUL inside), as something other than Fleet may
/// write it.
pub const BINARY_ENVELOPE: &[u8] = b"\xff\xfe{\"kind\":\"probe\",\0\"args\":{}}";

/// Writes a dead letter of queue `default` byte for byte, the way the engine keeps one:
/// envelope and history as given, state `d1`, in the dead-letter set and counted.
pub async fn foreign_dead_letter(env: &TestEnv, id: &str, envelope: &[u8], history: &[u8]) {
    let k = env.client.keys("default");
    let _: () = redis::pipe()
        .hset(&k.jobs, id, envelope)
        .hset(&k.state, id, "d1")
        .hset(&k.att, id, 3)
        .hset(&k.hist, id, history)
        .zadd(&k.dead, id, fleet_jobs::envelope::now_ms())
        .hincr(&k.stats, "dead", 1)
        .hincr(&k.stats, "died", 1)
        .query_async(&mut env.client.connection())
        .await
        .unwrap();
}

/// The local Redis Cluster's URL setting (`FLEET_TEST_REDIS_CLUSTER_URLS`, set by
/// `scripts/test.sh` after `scripts/redis-cluster.sh start`), or `None` with a message
/// saying how to run the cluster suite: its tests then return early.
pub fn cluster_urls() -> Option<String> {
    match std::env::var("FLEET_TEST_REDIS_CLUSTER_URLS") {
        Ok(urls) if !urls.trim().is_empty() => Some(urls),
        _ => {
            eprintln!(
                "SKIPPED: FLEET_TEST_REDIS_CLUSTER_URLS is not set. Start a local cluster with \
                 `scripts/redis-cluster.sh start` and export its output as FLEET_TEST_REDIS_CLUSTER_URLS \
                 (scripts/test.sh does both)."
            );
            None
        }
    }
}

/// A Redis Cluster of a test's own (3 primaries, 3 replicas on six free ports), started by
/// `scripts/redis-cluster.sh` and stopped when dropped: for drills that kill or demote a
/// primary without disturbing the tests that share the suite's cluster.
pub struct OwnCluster {
    /// Its URL setting (the six nodes, comma-separated).
    pub urls: String,
    ports: Vec<u16>,
    state: std::path::PathBuf,
}

impl OwnCluster {
    fn script() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/redis-cluster.sh")
    }

    fn run(&self, action: &str) -> std::process::Output {
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        std::process::Command::new(Self::script())
            .arg(action)
            .env("FLEET_CLUSTER_PORTS", ports.join(" "))
            .env("FLEET_STATE_DIR", &self.state)
            .env("FLEET_CLUSTER_NODE_TIMEOUT", "2000")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", Self::script().display()))
    }

    /// Starts one and waits for `cluster_state:ok`.
    pub fn start() -> OwnCluster {
        // Six ports whose cluster bus ports (port + 10000) are free too.
        let mut ports = Vec::new();
        while ports.len() < 6 {
            let p = free_port();
            if p < 55_000 && !ports.contains(&p) && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
                ports.push(p);
            }
        }
        let state = std::env::temp_dir().join(format!("fleet-test-cluster-{}-{}", ports[0], std::process::id()));
        let mut c = OwnCluster { urls: String::new(), ports, state };
        let out = c.run("start");
        assert!(out.status.success(), "the test's cluster did not start: {}", String::from_utf8_lossy(&out.stderr));
        c.urls = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        c
    }

    /// Starts the nodes that are down again (they rejoin from their nodes.conf) and waits
    /// for `cluster_state:ok`.
    pub fn heal(&self) {
        let out = self.run("start");
        assert!(out.status.success(), "the test's cluster did not heal: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The process id of the node on `port`.
    pub fn pid(&self, port: u16) -> u32 {
        let file = self.state.join(format!("redis-cluster-{}/{port}/redis.pid", self.ports[0]));
        std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .trim()
            .parse()
            .expect("a pid")
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = self.run("stop");
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// A primary, its replica and three Sentinels of the test's own
/// (`scripts/redis-sentinel.sh` on free ports), stopped when dropped.
pub struct OwnSentinel {
    /// Its URL setting (the three Sentinels, comma-separated).
    pub urls: String,
    /// Primary, replica, then the Sentinels' ports.
    pub ports: Vec<u16>,
    state: std::path::PathBuf,
}

impl OwnSentinel {
    fn run(&self, action: &str) -> std::process::Output {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/redis-sentinel.sh");
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        std::process::Command::new(&script)
            .arg(action)
            .env("FLEET_SENTINEL_PORTS", ports.join(" "))
            .env("FLEET_STATE_DIR", &self.state)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()))
    }

    /// Starts one and waits until the Sentinels agree on the primary and its replica.
    pub fn start() -> OwnSentinel {
        let mut ports = Vec::new();
        while ports.len() < 5 {
            let p = free_port();
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let state = std::env::temp_dir().join(format!("fleet-test-sentinel-{}-{}", ports[0], std::process::id()));
        let mut s = OwnSentinel { urls: String::new(), ports, state };
        let out = s.run("start");
        assert!(
            out.status.success(),
            "the test's Sentinel setup did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        s.urls = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        s
    }

    /// The primary's port, as the Sentinels name it now.
    pub fn primary(&self) -> Option<u16> {
        String::from_utf8_lossy(&self.run("primary").stdout).trim().parse().ok()
    }

    /// The process id of the server on `port`.
    pub fn pid(&self, port: u16) -> u32 {
        let file = self.state.join(format!("redis-sentinel-{}/{port}/redis.pid", self.ports[0]));
        std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .trim()
            .parse()
            .expect("a pid")
    }
}

impl Drop for OwnSentinel {
    fn drop(&mut self) {
        let _ = self.run("stop");
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// `CLUSTER` facts a test needs, asked of one node directly with `redis-cli`-free plain
/// connections: which primary serves a key, and its replicas.
pub mod cluster_facts {
    use std::time::Duration;

    /// A node's address.
    pub type Node = (String, u16);

    /// One node's plain connection (not the cluster client: tests ask specific nodes).
    pub async fn node(addr: &Node) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(format!("redis://{}:{}", addr.0, addr.1)).expect("node url");
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(5)));
        client.get_multiplexed_async_connection_with_config(&config).await.expect("connect to a cluster node")
    }

    /// The first reachable node of a URL setting.
    pub async fn any_node(urls: &str) -> redis::aio::MultiplexedConnection {
        for url in urls.split(',') {
            let Ok(client) = redis::Client::open(url.trim()) else { continue };
            if let Ok(c) = client.get_multiplexed_async_connection().await {
                return c;
            }
        }
        panic!("no node of {urls} answers");
    }

    /// The slot ranges: (start, end, primary, replicas).
    pub async fn slots(urls: &str) -> Vec<(u16, u16, Node, Vec<Node>)> {
        let mut c = any_node(urls).await;
        let v: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut c).await.expect("CLUSTER SLOTS");
        let node = |v: &redis::Value| -> Option<Node> {
            let redis::Value::Array(parts) = v else { return None };
            Some((redis::from_redis_value_ref(parts.first()?).ok()?, redis::from_redis_value_ref(parts.get(1)?).ok()?))
        };
        v.iter()
            .filter_map(|r| {
                let redis::Value::Array(r) = r else { return None };
                let start: u16 = redis::from_redis_value_ref(r.first()?).ok()?;
                let end: u16 = redis::from_redis_value_ref(r.get(1)?).ok()?;
                let primary = node(r.get(2)?)?;
                let replicas = r.iter().skip(3).filter_map(node).collect();
                Some((start, end, primary, replicas))
            })
            .collect()
    }

    /// The slot of `key`.
    pub async fn slot(urls: &str, key: &str) -> u16 {
        let mut c = any_node(urls).await;
        redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query_async(&mut c).await.expect("CLUSTER KEYSLOT")
    }

    /// The primary serving `key`, and its replicas (asked of every node of `urls` with
    /// `ROLE`: the slot map a node gossips can lag behind a replica that just attached).
    pub async fn owner(urls: &str, key: &str) -> (Node, Vec<Node>) {
        let s = slot(urls, key).await;
        let primary = slots(urls)
            .await
            .into_iter()
            .find(|(a, b, _, _)| (*a..=*b).contains(&s))
            .map(|(_, _, p, _)| p)
            .unwrap_or_else(|| panic!("no primary serves slot {s}"));
        let mut replicas = Vec::new();
        for url in urls.split(',') {
            let Some((host, port)) = url.trim().trim_start_matches("redis://").rsplit_once(':') else { continue };
            let n: Node = (host.to_owned(), port.trim_end_matches('/').parse().expect("a port"));
            let Ok(Ok(mut c)) = tokio::time::timeout(Duration::from_secs(2), async {
                redis::Client::open(url.trim())?.get_multiplexed_async_connection().await
            })
            .await
            else {
                continue;
            };
            let Ok(role): redis::RedisResult<Vec<redis::Value>> = redis::cmd("ROLE").query_async(&mut c).await else {
                continue;
            };
            let text = |i: usize| role.get(i).and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
            let port = role.get(2).and_then(|v| redis::from_redis_value_ref::<u16>(v).ok());
            if text(0).as_deref() == Some("slave") && port == Some(primary.1) {
                replicas.push(n);
            }
        }
        (primary, replicas)
    }

    /// One queue name (from `base-0`, `base-1`, ...) per primary: names whose hash tags
    /// land on each of the cluster's primaries.
    pub async fn queue_per_primary(urls: &str, prefix: &str, base: &str) -> Vec<String> {
        let primaries: std::collections::BTreeSet<Node> = slots(urls).await.into_iter().map(|(_, _, p, _)| p).collect();
        let mut taken = std::collections::BTreeMap::new();
        for i in 0..1000 {
            let q = format!("{base}-{i}");
            let (p, _) = owner(urls, &format!("{prefix}:{{{q}}}:stats")).await;
            taken.entry(p).or_insert(q);
            if taken.len() == primaries.len() {
                break;
            }
        }
        assert_eq!(taken.len(), primaries.len(), "queue names on every primary");
        taken.into_values().collect()
    }
}
