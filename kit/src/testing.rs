//! Running one attempt of a handler in a unit test: no Redis, no worker (the model is
//! Oban's `Oban.Testing.perform_job`).
//!
//! The dispatcher is the only code that builds a [`JobContext`] for real; here
//! [`TestJob`] builds one with the defaults a test rarely cares about (a fresh id, the
//! kind and queue of `H::Args`, attempt 1 of the kind's attempts, no tenant, a small
//! CPU pool), and runs the handler the way the worker runs one attempt: the arguments
//! go through JSON (so a type that does not survive its own encoding fails here, not in
//! production), arguments that do not decode give up as the worker dead-letters them,
//! and a panic is a retryable failure with the panic's message.
//!
//! ```
//! # use fleet_kit::{Handler, JobContext, JobError};
//! # #[derive(Debug, serde::Serialize, serde::Deserialize)]
//! # struct Ping { to: String }
//! # impl fleet_jobs::JobArgs for Ping { const KIND: &'static str = "doc.ping"; }
//! # struct Pinger;
//! # impl Handler for Pinger {
//! #     type Args = Ping;
//! #     async fn handle(&self, _: Ping, ctx: JobContext) -> Result<(), JobError> {
//! #         if ctx.tenant.is_none() { return Err(JobError::give_up("needs a tenant")) }
//! #         Ok(())
//! #     }
//! # }
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use fleet_kit::testing::{TestJob, assert_give_up, perform_job};
//!
//! // Defaults: no tenant, attempt 1.
//! let why = assert_give_up(&perform_job(&Pinger, Ping { to: "a".into() }).await).to_owned();
//! assert!(why.contains("tenant"), "{why}");
//! // The tenant's own job, on its last attempt.
//! TestJob::new().tenant("t1").attempt(3, 3).perform(&Pinger, Ping { to: "a".into() }).await.unwrap();
//! # });
//! ```
//!
//! Kinds that keep records in PostgreSQL get a database of each test's own, migrated
//! with the caller's migrator, from `TestDb` (feature `postgres`), so tests run in
//! parallel on one server and never wipe a shared table.
//!
//! What is not here: the engine's side of an attempt (leases, limits admitted, retry
//! backoff, dead letters, the kind's timeout unless [`TestJob::timeout`] asks for one).
//! [`TestJob::limit_keys`] says which limit keys the engine would admit the job through;
//! the engine itself is tested in `fleet-tests`.

use crate::{CpuPool, Handler, JobContext, JobError, panic_message};
use fleet_jobs::JobArgs;
use futures::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// One attempt of one job, as a test describes it. Build with [`TestJob::new`] and the
/// setters, then [`TestJob::perform`] or [`TestJob::perform_json`].
#[derive(Debug, Clone)]
pub struct TestJob {
    id: String,
    queue: Option<String>,
    attempt: u32,
    max_attempts: Option<u32>,
    enqueued_at: u64,
    tenant: Option<String>,
    trace: Option<String>,
    cpu_slots: usize,
    timeout: Option<Duration>,
    report: crate::report::JobReport,
}

impl Default for TestJob {
    fn default() -> Self {
        Self::new()
    }
}

/// Jobs made by this process, so each default id is new.
static MADE: AtomicU64 = AtomicU64::new(0);

impl TestJob {
    /// A job with a fresh id (`test-<ms>-<n>`), enqueued now, no tenant (as Fleet's own
    /// jobs and trusted Rust apps enqueue), on attempt 1 of the kind's attempts, with a
    /// two-slot CPU pool and no timeout.
    pub fn new() -> Self {
        let enqueued_at = fleet_jobs::envelope::now_ms();
        TestJob {
            id: format!("test-{enqueued_at}-{}", MADE.fetch_add(1, Ordering::Relaxed)),
            queue: None,
            attempt: 1,
            max_attempts: None,
            enqueued_at,
            tenant: None,
            trace: None,
            cpu_slots: 2,
            timeout: None,
            report: crate::report::JobReport::default(),
        }
    }

    /// The job id (handlers that derive ids from it, e.g. `webhook.publish`, see it).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// The job's tenant, as the API sets it from the caller's key.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// This attempt's number (from 1) and the attempts allowed; `attempt(3, 3)` is the
    /// last one ([`JobContext::is_last_attempt`]).
    pub fn attempt(mut self, attempt: u32, max_attempts: u32) -> Self {
        self.attempt = attempt;
        self.max_attempts = Some(max_attempts);
        self
    }

    /// The queue (default: the kind's, from `JobArgs::options`).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// The enqueue time, ms since the epoch (default: when the `TestJob` was made).
    pub fn enqueued_at(mut self, ms: u64) -> Self {
        self.enqueued_at = ms;
        self
    }

    /// The W3C `traceparent` of the enqueuing request.
    pub fn trace(mut self, traceparent: impl Into<String>) -> Self {
        self.trace = Some(traceparent.into());
        self
    }

    /// Closures [`JobContext::blocking`] runs at once (default 2).
    pub fn cpu_slots(mut self, slots: usize) -> Self {
        self.cpu_slots = slots;
        self
    }

    /// Stops the attempt after `timeout`, as the worker does with the kind's or job's
    /// timeout: a retryable `timed out after <ms> ms`. None by default.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The context the handler of `A` gets: the one place a test `JobContext` is built.
    pub fn context<A: JobArgs>(&self) -> JobContext {
        let defaults = A::options();
        JobContext {
            id: self.id.clone(),
            kind: A::KIND.to_owned(),
            queue: self.queue.clone().unwrap_or(defaults.queue),
            attempt: self.attempt,
            max_attempts: self.max_attempts.unwrap_or(defaults.max_attempts),
            enqueued_at: self.enqueued_at,
            instance: Arc::from("test"),
            trace: self.trace.clone(),
            tenant: self.tenant.clone(),
            cpu: CpuPool::new(self.cpu_slots),
            limits: crate::limits::AttemptLimits::default(),
            report: self.report.clone(),
        }
    }

    /// What the handler reported so far through this job's contexts: every progress
    /// report, in order (unthrottled), and the result recorded last.
    pub fn reported(&self) -> crate::report::Reported {
        self.report.reported().unwrap_or_default()
    }

    /// Runs one attempt of `handler` with `args`, encoded to JSON and decoded again as
    /// the worker decodes them from the envelope.
    pub async fn perform<H: Handler>(&self, handler: &H, args: H::Args) -> Result<(), JobError> {
        let json = serde_json::to_string(&args).map_err(|e| {
            JobError::give_up(format!("arguments of kind {:?} do not encode as JSON: {e}", H::Args::KIND))
        })?;
        self.perform_json(handler, &json).await
    }

    /// Runs one attempt of `handler` with arguments as JSON text, as a client sends them
    /// and the envelope keeps them (byte for byte: a `RawValue` field sees this text).
    /// Ones that do not decode as `H::Args` give up with the worker's dead-letter reason
    /// (`arguments do not decode as kind "<kind>": <serde error>`), without running it.
    pub async fn perform_json<H: Handler>(&self, handler: &H, args: &str) -> Result<(), JobError> {
        let args = decode::<H::Args>(args)?;
        let run = AssertUnwindSafe(handler.handle(args, self.context::<H::Args>())).catch_unwind();
        let outcome = match self.timeout {
            Some(t) => match tokio::time::timeout(t, run).await {
                Ok(outcome) => outcome,
                Err(_) => return Err(JobError::retry(format!("timed out after {} ms", t.as_millis()))),
            },
            None => run.await,
        };
        outcome.unwrap_or_else(|panic| Err(JobError::retry(format!("panicked: {}", panic_message(panic)))))
    }

    /// The limit keys the engine would admit this job through before running it: the
    /// handler's own keys as named, then the keys its arguments name, in the job's
    /// tenant's namespace (`tenant:<tenant>:<key>`) when it has one.
    pub fn limit_keys<H: Handler>(&self, handler: &H, args: &H::Args) -> Vec<String> {
        let mut keys = handler.limit_keys(args);
        keys.extend(handler.tenant_limit_keys(args).into_iter().map(|k| match &self.tenant {
            Some(t) => fleet_jobs::tenant::limit_key(t, &k),
            None => k,
        }));
        keys
    }
}

/// The arguments as the worker decodes them; the worker's dead-letter reason when they do not.
fn decode<A: JobArgs>(json: &str) -> Result<A, JobError> {
    // From text, as the worker does: through a `serde_json::Value` a `RawValue` field
    // would lose the client's exact bytes (spacing, key order), which signatures cover.
    serde_json::from_str(json)
        .map_err(|e| JobError::give_up(format!("arguments do not decode as kind {:?}: {e}", A::KIND)))
}

/// Runs one attempt of `handler` with `args` as a default [`TestJob`] (no tenant,
/// attempt 1): see [`TestJob::perform`].
pub async fn perform_job<H: Handler>(handler: &H, args: H::Args) -> Result<(), JobError> {
    TestJob::new().perform(handler, args).await
}

/// Runs one attempt of `handler` with arguments as JSON text, as a default [`TestJob`]:
/// see [`TestJob::perform_json`].
pub async fn perform_json<H: Handler>(handler: &H, args: &str) -> Result<(), JobError> {
    TestJob::new().perform_json(handler, args).await
}

/// The error of a retryable failure (with or without a wait); panics, naming the
/// outcome, on anything else.
#[track_caller]
pub fn assert_retry(outcome: &Result<(), JobError>) -> &str {
    match outcome {
        Err(JobError::Retry { error, .. }) => error,
        other => panic!("expected a retry, got {other:?}"),
    }
}

/// The error and the wait of a failure retried after a wait the handler chose (e.g. a
/// `Retry-After`); panics, naming the outcome, on anything else.
#[track_caller]
pub fn assert_retry_after(outcome: &Result<(), JobError>) -> (&str, Duration) {
    match outcome {
        Err(JobError::Retry { error, after: Some(after) }) => (error, *after),
        other => panic!("expected a retry after a wait, got {other:?}"),
    }
}

/// The error of a permanent failure (the job goes to the dead letters); panics, naming
/// the outcome, on anything else.
#[track_caller]
pub fn assert_give_up(outcome: &Result<(), JobError>) -> &str {
    match outcome {
        Err(JobError::GiveUp { error }) => error,
        other => panic!("expected the job to give up, got {other:?}"),
    }
}

/// The wait of a snooze (run again without counting an attempt); panics, naming the
/// outcome, on anything else.
#[track_caller]
pub fn assert_snooze(outcome: &Result<(), JobError>) -> Duration {
    match outcome {
        Err(JobError::Snooze { after }) => *after,
        other => panic!("expected a snooze, got {other:?}"),
    }
}

/// The error and the hold-back of a slow-down (the job's limit keys held back
/// fleet-wide); panics, naming the outcome, on anything else.
#[track_caller]
pub fn assert_slow_down(outcome: &Result<(), JobError>) -> (&str, Duration) {
    match outcome {
        Err(JobError::SlowDown { error, after }) => (error, *after),
        other => panic!("expected a slow-down, got {other:?}"),
    }
}

#[cfg(feature = "postgres")]
pub use database::{TestDb, unreachable_database};

#[cfg(feature = "postgres")]
mod database {
    /// A pool on no server: a handler that queries it gets an error (a retry), so a job
    /// that gives up with it has provably not read or written anything.
    pub fn unreachable_database() -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("a lazy pool is made without connecting")
    }

    /// A PostgreSQL database of one test's own, created fresh and migrated, so tests run
    /// in parallel on one server without seeing each other's rows. Server:
    /// `FLEET_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432`, the one
    /// `scripts/services.sh` starts).
    #[derive(Debug)]
    pub struct TestDb {
        /// A pool on it.
        pub pool: sqlx::PgPool,
        /// Its URL.
        pub url: String,
        name: String,
        admin_url: String,
    }

    impl TestDb {
        /// Creates a database and runs `migrator` on it (pass
        /// `&sqlx::migrate!("../migrations")` for Fleet's schema). Panics with what to do
        /// when PostgreSQL is not running.
        pub async fn new(migrator: &sqlx::migrate::Migrator) -> TestDb {
            let base =
                std::env::var("FLEET_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
            let admin_url = format!("{base}/postgres");
            let n = super::MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let name = format!("fleet_kit_{}_{}_{n}", std::process::id(), fleet_jobs::envelope::now_ms());
            let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url).await.unwrap_or_else(|e| {
                panic!("PostgreSQL is not reachable at {base}: {e}. Start it with `scripts/services.sh` (or set FLEET_TEST_PG_URL).")
            });
            // The name is made here of digits and underscores: safe to splice.
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut admin)
                .await
                .expect("create the test database");
            let url = format!("{base}/{name}");
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .connect(&url)
                .await
                .expect("connect to the test database");
            migrator.run(&pool).await.expect("migrate the test database");
            TestDb { pool, url, name, admin_url }
        }

        /// Drops the database (optional: a test that fails first leaves it for a look).
        pub async fn drop_db(self) {
            self.pool.close().await;
            if let Ok(mut admin) = <sqlx::PgConnection as sqlx::Connection>::connect(&self.admin_url).await {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
                    .execute(&mut admin)
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    /// Arguments that say what the handler does.
    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Act {
        what: String,
        #[serde(default)]
        key: Option<String>,
    }

    impl JobArgs for Act {
        const KIND: &'static str = "test.act";
        fn options() -> fleet_jobs::KindOptions {
            fleet_jobs::KindOptions { queue: "acts".into(), max_attempts: 7, ..Default::default() }
        }
    }

    fn act(what: &str) -> Act {
        Act { what: what.into(), key: None }
    }

    /// Records the context it saw, then does what the arguments say.
    #[derive(Default)]
    struct Actor {
        seen: std::sync::Mutex<Option<JobContext>>,
    }

    impl Handler for Actor {
        type Args = Act;

        fn limit_keys(&self, _: &Act) -> Vec<String> {
            vec!["act:global".into()]
        }

        fn tenant_limit_keys(&self, args: &Act) -> Vec<String> {
            args.key.iter().cloned().collect()
        }

        async fn handle(&self, args: Act, ctx: JobContext) -> Result<(), JobError> {
            *self.seen.lock().unwrap() = Some(ctx.clone());
            match args.what.as_str() {
                "ok" => Ok(()),
                "retry" => Err(JobError::retry("try again")),
                "retry-after" => Err(JobError::retry_after("busy", Duration::from_secs(7))),
                "give-up" => Err(JobError::give_up("never")),
                "snooze" => Err(JobError::snooze(Duration::from_secs(3))),
                "slow-down" => Err(JobError::slow_down("429", Duration::from_secs(9))),
                "panic" => panic!("scripted"),
                "hang" => std::future::pending().await,
                "cpu" => ctx.blocking(|| 6 * 7).await.map(|n| assert_eq!(n, 42)),
                other => Err(JobError::give_up(format!("unknown act {other}"))),
            }
        }
    }

    impl Actor {
        fn seen(&self) -> JobContext {
            self.seen.lock().unwrap().clone().expect("the handler ran")
        }
    }

    #[tokio::test]
    async fn defaults_are_the_kinds_and_the_setters_win() {
        let actor = Actor::default();
        perform_job(&actor, act("ok")).await.unwrap();
        let ctx = actor.seen();
        assert_eq!((ctx.kind.as_str(), ctx.queue.as_str()), ("test.act", "acts"));
        assert_eq!((ctx.attempt, ctx.max_attempts), (1, 7), "attempt 1 of the kind's attempts");
        assert_eq!(ctx.tenant, None);
        assert!(ctx.id.starts_with("test-") && !ctx.is_last_attempt());

        TestJob::new()
            .id("j1")
            .tenant("t1")
            .attempt(3, 3)
            .queue("q")
            .enqueued_at(5)
            .trace("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            .perform(&actor, act("ok"))
            .await
            .unwrap();
        let ctx = actor.seen();
        assert_eq!((ctx.id.as_str(), ctx.tenant.as_deref(), ctx.queue.as_str()), ("j1", Some("t1"), "q"));
        assert_eq!((ctx.attempt, ctx.max_attempts, ctx.enqueued_at), (3, 3, 5));
        assert!(ctx.is_last_attempt() && ctx.trace.is_some());
        assert_ne!(TestJob::new().context::<Act>().id, TestJob::new().context::<Act>().id, "ids are fresh");
    }

    #[tokio::test]
    async fn each_outcome_reads_back_through_its_assertion() {
        let a = Actor::default();
        assert_eq!(assert_retry(&perform_job(&a, act("retry")).await), "try again");
        assert_eq!(assert_retry_after(&perform_job(&a, act("retry-after")).await), ("busy", Duration::from_secs(7)));
        assert_eq!(assert_give_up(&perform_job(&a, act("give-up")).await), "never");
        assert_eq!(assert_snooze(&perform_job(&a, act("snooze")).await), Duration::from_secs(3));
        assert_eq!(assert_slow_down(&perform_job(&a, act("slow-down")).await), ("429", Duration::from_secs(9)));
        perform_job(&a, act("cpu")).await.unwrap();
    }

    #[test]
    #[should_panic(expected = "expected the job to give up, got Err(Retry")]
    fn an_assertion_names_the_outcome_it_got() {
        assert_give_up(&Err(JobError::retry("x")));
    }

    #[tokio::test]
    async fn undecodable_arguments_give_up_as_the_worker_dead_letters_them_without_running() {
        let a = Actor::default();
        let out = perform_json(&a, r#"{ "what": "ok", "extra": 1 }"#).await;
        let why = assert_give_up(&out);
        assert!(why.starts_with("arguments do not decode as kind \"test.act\": unknown field `extra`"), "{why}");
        assert!(a.seen.lock().unwrap().is_none(), "the handler did not run");
        perform_json(&a, r#"{ "what": "ok" }"#).await.unwrap();
    }

    #[tokio::test]
    async fn a_panic_is_a_retry_and_a_timeout_stops_the_attempt() {
        let a = Actor::default();
        assert_eq!(assert_retry(&perform_job(&a, act("panic")).await), "panicked: scripted");
        let out = TestJob::new().timeout(Duration::from_millis(20)).perform(&a, act("hang")).await;
        assert_eq!(assert_retry(&out), "timed out after 20 ms");
    }

    /// Arguments carrying a payload as the client wrote it.
    #[derive(Debug, Serialize, Deserialize)]
    struct Echo {
        payload: Box<serde_json::value::RawValue>,
    }

    impl JobArgs for Echo {
        const KIND: &'static str = "test.echo";
    }

    /// Succeeds only when the payload is byte for byte the one the test wrote.
    struct Echoer;

    const WRITTEN: &str = r#"{ "b": 1,  "a": [2] }"#;

    impl Handler for Echoer {
        type Args = Echo;

        async fn handle(&self, args: Echo, _: JobContext) -> Result<(), JobError> {
            if args.payload.get() == WRITTEN { Ok(()) } else { Err(JobError::give_up(args.payload.get())) }
        }
    }

    #[tokio::test]
    async fn raw_arguments_reach_the_handler_byte_for_byte() {
        perform_json(&Echoer, &format!(r#"{{"payload": {WRITTEN}}}"#)).await.unwrap();
        let payload = serde_json::value::RawValue::from_string(WRITTEN.to_owned()).unwrap();
        perform_job(&Echoer, Echo { payload }).await.unwrap();
    }

    #[test]
    fn limit_keys_a_tenant_names_are_in_its_namespace() {
        let args = Act { what: "ok".into(), key: Some("api:x".into()) };
        let a = Actor::default();
        assert_eq!(TestJob::new().limit_keys(&a, &args), ["act:global", "api:x"]);
        assert_eq!(TestJob::new().tenant("t1").limit_keys(&a, &args), ["act:global", "tenant:t1:api:x"]);
    }
}
