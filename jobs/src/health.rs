//! Health of a Fleet process: the readiness checks workers and the scheduler answer
//! `/readyz` with, and the supervision of their long-running tasks.
//!
//! * A [`Check`] is one dependency or loop: its name, whether it is fine, and a word on
//!   why. [`readiness`] turns a list of them into the `/readyz` answer.
//! * [`redis`] is a `PING` under a short timeout; PostgreSQL's `SELECT 1` lives with the
//!   crates that hold a pool.
//! * [`supervise`] spawns a named task and watches it: a panic or an unexpected end is
//!   logged with the task's name, counted in `fleet_task_failures_total{task}`, and
//!   either the task is restarted with backoff or it is marked failed, which fails
//!   readiness. [`Tasks`] holds every task's state (and, for loops that report their
//!   progress with [`Tasks::beat`], when they last did) for `/readyz`, and tells whoever
//!   waits on it ([`Tasks::wait_until`]) of every change.

use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a readiness check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// One readiness check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked (`redis`, `postgres`, `task:ticker`, ...).
    pub name: String,
    /// Whether it is fine.
    pub ok: bool,
    /// A short word on its state (an error message when it is not fine).
    pub detail: String,
}

impl Check {
    /// A passing check.
    pub fn ok(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check { name: name.into(), ok: true, detail: detail.into() }
    }
    /// A failing check.
    pub fn failed(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check { name: name.into(), ok: false, detail: detail.into() }
    }
}

/// Whether every check passed, and the `/readyz` body:
/// `{"status": "ready" | "not_ready", "checks": {"<name>": {"ok": bool, "detail": "..."}}}`.
pub fn readiness(checks: &[Check]) -> (bool, serde_json::Value) {
    let ready = checks.iter().all(|c| c.ok);
    let map: serde_json::Map<String, serde_json::Value> =
        checks.iter().map(|c| (c.name.clone(), serde_json::json!({"ok": c.ok, "detail": c.detail}))).collect();
    (ready, serde_json::json!({"status": if ready { "ready" } else { "not_ready" }, "checks": map}))
}

/// Redis answers `PING` within `timeout` (on a cluster, every primary).
pub async fn redis(conn: &mut crate::RedisConn, timeout: Duration) -> Check {
    match tokio::time::timeout(timeout, conn.ping()).await {
        Ok(Ok(_)) => Check::ok("redis", "PONG"),
        Ok(Err(e)) => Check::failed("redis", format!("PING failed: {e}")),
        Err(_) => Check::failed("redis", format!("no answer to PING within {} ms", timeout.as_millis())),
    }
}

/// What a supervised task is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Running.
    Running,
    /// Ended unexpectedly; waiting to be started again.
    Restarting,
    /// Ended unexpectedly and not restarted: readiness fails until the process restarts.
    Failed,
    /// Stopped by shutdown.
    Stopped,
}

#[derive(Debug, Clone)]
struct TaskStatus {
    state: TaskState,
    failures: u64,
    last_error: Option<String>,
    last_beat: Option<Instant>,
    /// Passes reported with [`Tasks::beat`].
    beats: u64,
    /// A task that beats must beat at least this often to count as alive.
    max_quiet: Option<Duration>,
}

/// The supervised tasks of a process and their states (cheap to clone, shared).
#[derive(Debug, Clone)]
pub struct Tasks(Arc<TasksInner>);

#[derive(Debug)]
struct TasksInner {
    all: Mutex<BTreeMap<String, TaskStatus>>,
    /// Bumped after every change (state, failure, beat), for [`Tasks::wait_until`].
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for Tasks {
    fn default() -> Self {
        Tasks(Arc::new(TasksInner { all: Mutex::default(), changed: tokio::sync::watch::Sender::new(0) }))
    }
}

impl Tasks {
    /// An empty set.
    pub fn new() -> Tasks {
        Tasks::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, TaskStatus>> {
        self.0.all.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with<R>(&self, name: &str, f: impl FnOnce(&mut TaskStatus) -> R) -> R {
        let r = {
            let mut all = self.lock();
            let status = all.entry(name.to_owned()).or_insert(TaskStatus {
                state: TaskState::Running,
                failures: 0,
                last_error: None,
                last_beat: None,
                beats: 0,
                max_quiet: None,
            });
            f(status)
        };
        self.0.changed.send_modify(|v| *v = v.wrapping_add(1));
        r
    }

    /// Waits until `cond` holds: it is asked now and again after every change of any
    /// task (its state, a failure, a beat), never on a timer. Returns whether it held
    /// before `timeout` passed. For tests and tools that must see a task fail, restart
    /// or make progress without sleeping and hoping.
    pub async fn wait_until(&self, timeout: Duration, mut cond: impl FnMut(&Tasks) -> bool) -> bool {
        let mut changes = self.0.changed.subscribe();
        tokio::time::timeout(timeout, async {
            loop {
                changes.borrow_and_update();
                if cond(self) {
                    return;
                }
                // The sender lives in `self`: it cannot be dropped while we wait.
                let _ = changes.changed().await;
            }
        })
        .await
        .is_ok()
    }

    /// Declares that `name` reports its progress with [`Tasks::beat`] and counts as stuck
    /// (not ready) when it has not for `max_quiet`.
    pub fn expect_beats(&self, name: &str, max_quiet: Duration) {
        self.with(name, |s| {
            s.max_quiet = Some(max_quiet);
            s.last_beat = Some(Instant::now());
        });
    }

    /// `name` made progress (one pass of its loop).
    pub fn beat(&self, name: &str) {
        self.with(name, |s| {
            s.last_beat = Some(Instant::now());
            s.beats += 1;
        });
    }

    /// Records `name`'s state.
    pub fn set(&self, name: &str, state: TaskState) {
        self.with(name, |s| s.state = state);
    }

    /// Records an unexpected end of `name` (logged and counted by the caller's
    /// [`task_failed`]), now in `state`.
    pub fn failed(&self, name: &str, state: TaskState, reason: &str) {
        self.with(name, |s| {
            s.state = state;
            s.failures += 1;
            s.last_error = Some(reason.to_owned());
        });
    }

    /// `name`'s state, if it is known.
    pub fn state(&self, name: &str) -> Option<TaskState> {
        self.lock().get(name).map(|s| s.state)
    }

    /// Unexpected ends of `name` so far.
    pub fn failures(&self, name: &str) -> u64 {
        self.lock().get(name).map_or(0, |s| s.failures)
    }

    /// Passes `name` has reported with [`Tasks::beat`] so far.
    pub fn beats(&self, name: &str) -> u64 {
        self.lock().get(name).map_or(0, |s| s.beats)
    }

    /// One check per task (`task:<name>`): fine while it runs (and, if it beats, beat recently).
    pub fn checks(&self) -> Vec<Check> {
        let all = self.lock();
        all.iter().map(|(name, s)| task_check(name, s, Instant::now())).collect()
    }
}

fn task_check(name: &str, s: &TaskStatus, now: Instant) -> Check {
    let name = format!("task:{name}");
    let why = s.last_error.as_deref().unwrap_or("no error recorded");
    match s.state {
        TaskState::Running => match (s.max_quiet, s.last_beat) {
            (Some(max), Some(beat)) if now.duration_since(beat) > max => Check::failed(
                name,
                format!("running but made no progress for {} ms", now.duration_since(beat).as_millis()),
            ),
            _ if s.failures > 0 => Check::ok(name, format!("running (restarted {} times; last: {why})", s.failures)),
            _ => Check::ok(name, "running"),
        },
        TaskState::Restarting => Check::failed(name, format!("restarting after: {why}")),
        TaskState::Failed => Check::failed(name, format!("failed: {why}")),
        TaskState::Stopped => Check::failed(name, "stopped (shutting down)"),
    }
}

/// Logs and counts an unexpected end of a task: an error log naming it and
/// `fleet_task_failures_total{task}`.
pub fn task_failed(name: &str, reason: &str, restart_in: Option<Duration>) {
    metrics::counter!("fleet_task_failures_total", "task" => name.to_owned()).increment(1);
    match restart_in {
        Some(d) => tracing::error!(task = %name, reason = %reason, restart_in_ms = d.as_millis() as u64,
            "task ended unexpectedly; restarting it"),
        None => {
            tracing::error!(task = %name, reason = %reason, "task ended unexpectedly; readiness fails until the process restarts")
        }
    }
}

/// Creates `fleet_task_failures_total{task}` at 0, so the first failure is an increase
/// that alerts can see (a series that appears at 1 has none).
pub fn counted(name: &str) {
    metrics::counter!("fleet_task_failures_total", "task" => name.to_owned()).increment(0);
}

/// What [`supervise`] does when its task ends unexpectedly.
#[derive(Debug, Clone, Copy)]
pub enum Restart {
    /// Mark it failed: readiness fails.
    Never,
    /// Start it again after `initial`, doubling up to `max` while it keeps failing.
    Backoff {
        /// First delay.
        initial: Duration,
        /// Longest delay.
        max: Duration,
    },
}

impl Restart {
    /// Backoff from 200 ms to 30 s.
    pub const DEFAULT: Restart = Restart::Backoff { initial: Duration::from_millis(200), max: Duration::from_secs(30) };
}

/// The message of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// Why a task ended unexpectedly, from its join result.
pub fn end_reason(result: Result<(), tokio::task::JoinError>) -> String {
    match result {
        Ok(()) => "returned while the process was not stopping".to_owned(),
        Err(e) if e.is_panic() => format!("panicked: {}", panic_message(&*e.into_panic())),
        Err(e) => format!("cancelled: {e}"),
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Spawns the task `make()` under the name `name` and supervises it until `stop` is
/// cancelled: when it panics or returns before `stop`, the end is logged and counted
/// ([`task_failed`]) and, per `restart`, a new task from `make()` starts after a backoff
/// or the task is marked [`TaskState::Failed`]. The task itself should return soon
/// after `stop` is cancelled; the returned handle ends when it has.
pub fn supervise<F, Fut>(
    tasks: &Tasks,
    name: impl Into<String>,
    restart: Restart,
    stop: CancellationToken,
    mut make: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tasks = tasks.clone();
    let name = name.into();
    tasks.set(&name, TaskState::Running);
    counted(&name);
    tokio::spawn(async move {
        let mut delay = match restart {
            Restart::Backoff { initial, .. } => initial,
            Restart::Never => Duration::ZERO,
        };
        loop {
            tasks.set(&name, TaskState::Running);
            let started = Instant::now();
            // A panic while making the task counts as the task's own.
            let failure = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut make)) {
                Ok(fut) => {
                    let mut inner = AbortOnDrop(tokio::spawn(fut));
                    match (&mut inner.0).await {
                        Ok(()) if stop.is_cancelled() => None,
                        result => Some(end_reason(result)),
                    }
                }
                Err(payload) => Some(format!("panicked: {}", panic_message(&*payload))),
            };
            let Some(reason) = failure else {
                tasks.set(&name, TaskState::Stopped);
                return;
            };
            match restart {
                Restart::Never => {
                    task_failed(&name, &reason, None);
                    tasks.failed(&name, TaskState::Failed, &reason);
                    return;
                }
                Restart::Backoff { initial, max } => {
                    // A task that ran well for a while starts again from the first delay.
                    if started.elapsed() > max {
                        delay = initial;
                    }
                    task_failed(&name, &reason, Some(delay));
                    tasks.failed(&name, TaskState::Restarting, &reason);
                    tokio::select! {
                        _ = stop.cancelled() => {
                            tasks.set(&name, TaskState::Stopped);
                            return;
                        }
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(max);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn readiness_is_ready_only_when_every_check_passes() {
        let (ready, body) = readiness(&[Check::ok("redis", "PONG"), Check::ok("task:x", "running")]);
        assert!(ready);
        assert_eq!(body["status"], "ready");
        assert_eq!(body["checks"]["redis"]["ok"], true);
        let (ready, body) = readiness(&[Check::ok("redis", "PONG"), Check::failed("postgres", "refused")]);
        assert!(!ready);
        assert_eq!(body["status"], "not_ready");
        assert_eq!(body["checks"]["postgres"]["detail"], "refused");
    }

    #[test]
    fn a_task_that_stops_beating_is_not_alive() {
        let now = Instant::now();
        let s = TaskStatus {
            state: TaskState::Running,
            failures: 0,
            last_error: None,
            last_beat: Some(now),
            beats: 0,
            max_quiet: Some(Duration::from_secs(5)),
        };
        assert!(task_check("t", &s, now + Duration::from_secs(1)).ok);
        assert!(!task_check("t", &s, now + Duration::from_secs(6)).ok);
        let failed = TaskStatus { state: TaskState::Failed, last_error: Some("panicked: x".into()), ..s };
        let c = task_check("t", &failed, now);
        assert!(!c.ok && c.detail.contains("panicked: x"), "{c:?}");
    }

    #[tokio::test]
    async fn a_panicking_task_is_counted_and_restarted() {
        let tasks = Tasks::new();
        let stop = CancellationToken::new();
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let (s, t) = (stop.clone(), tasks.clone());
        let backoff = Restart::Backoff { initial: Duration::from_millis(5), max: Duration::from_millis(20) };
        let handle = supervise(&tasks, "flaky", backoff, stop.clone(), move || {
            let n = r.fetch_add(1, Ordering::SeqCst);
            let (s, t) = (s.clone(), t.clone());
            async move {
                if n < 2 {
                    panic!("boom {n}");
                }
                t.beat("flaky");
                s.cancelled().await;
            }
        });
        let restarted = tasks
            .wait_until(Duration::from_secs(10), |t| {
                t.failures("flaky") == 2 && t.state("flaky") == Some(TaskState::Running) && t.beats("flaky") == 1
            })
            .await;
        assert!(restarted, "not restarted: {:?}", tasks.checks());
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let c = tasks.checks();
        assert!(c[0].ok && c[0].detail.contains("restarted 2 times") && c[0].detail.contains("boom 1"), "{c:?}");
        stop.cancel();
        handle.await.unwrap();
        assert_eq!(tasks.state("flaky"), Some(TaskState::Stopped));
    }

    #[tokio::test]
    async fn a_panicked_task_fails_readiness_while_it_waits_to_restart() {
        let tasks = Tasks::new();
        let stop = CancellationToken::new();
        // Restarted only after an hour: the test sees the gap for sure, and ends it by stopping.
        let later = Restart::Backoff { initial: Duration::from_secs(3600), max: Duration::from_secs(3600) };
        let handle = supervise(&tasks, "ticker", later, stop.clone(), || async { panic!("a bug") });
        let waiting =
            tasks.wait_until(Duration::from_secs(10), |t| t.state("ticker") == Some(TaskState::Restarting)).await;
        assert!(waiting, "{:?}", tasks.checks());
        assert_eq!(tasks.failures("ticker"), 1);
        let (ready, body) = readiness(&tasks.checks());
        assert!(!ready, "{body}");
        let detail = body["checks"]["task:ticker"]["detail"].as_str().unwrap();
        assert!(detail.contains("restarting after: panicked: a bug"), "{body}");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), handle).await.expect("stops while waiting").unwrap();
        assert_eq!(tasks.state("ticker"), Some(TaskState::Stopped));
    }

    #[tokio::test]
    async fn waiting_on_tasks_ends_at_the_change_or_at_the_timeout() {
        let tasks = Tasks::new();
        assert!(!tasks.wait_until(Duration::from_millis(20), |t| t.beats("x") > 0).await, "nothing happened");
        let t = tasks.clone();
        let beating = tokio::spawn(async move {
            tokio::task::yield_now().await;
            t.beat("x");
        });
        assert!(tasks.wait_until(Duration::from_secs(10), |t| t.beats("x") == 1).await);
        beating.await.unwrap();
        assert!(tasks.wait_until(Duration::from_secs(10), |t| t.beats("x") == 1).await, "already true");
    }

    #[tokio::test]
    async fn a_task_that_is_not_restarted_fails_readiness() {
        let tasks = Tasks::new();
        let stop = CancellationToken::new();
        supervise(&tasks, "once", Restart::Never, stop.clone(), || async {}).await.unwrap();
        assert_eq!(tasks.state("once"), Some(TaskState::Failed));
        let (ready, body) = readiness(&tasks.checks());
        assert!(!ready);
        assert!(body["checks"]["task:once"]["detail"].as_str().unwrap().contains("returned"), "{body}");
    }
}
