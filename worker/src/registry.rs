//! The registry: every job kind this worker handles, by stable kind name, with
//! its retry backoff and timeout.

use fleet_jobs::JobArgs;
use fleet_jobs::retry::Backoff;
use fleet_kit::{Handler, JobContext, JobError};
use futures::future::BoxFuture;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How the worker runs one kind.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KindPolicy {
    /// Wait between failed attempts.
    pub backoff: Backoff,
    /// Timeout of one attempt; `None` uses the worker's default. A job's own
    /// timeout (set at enqueue) wins over both.
    pub timeout: Option<Duration>,
}

/// A handler's attempt, ready to run.
pub(crate) type Started = BoxFuture<'static, Result<(), JobError>>;

/// A decoded attempt, not started yet: the limit keys it needs and the handler's future.
pub(crate) struct Prepared {
    pub(crate) limit_keys: Vec<String>,
    pub(crate) run: Started,
}

/// A handler with its argument type erased: decodes the JSON arguments, then runs.
trait ErasedHandler: Send + Sync {
    fn start(&self, args: &RawValue, ctx: JobContext) -> Result<Prepared, serde_json::Error>;
}

struct Typed<H>(Arc<H>);

impl<H: Handler> ErasedHandler for Typed<H> {
    fn start(&self, args: &RawValue, ctx: JobContext) -> Result<Prepared, serde_json::Error> {
        let args: H::Args = serde_json::from_str(args.get())?;
        let mut limit_keys = self.0.limit_keys(&args);
        // Jobs without a tenant come from Fleet itself or a trusted Rust app: their keys stay as named.
        limit_keys.extend(self.0.tenant_limit_keys(&args).into_iter().map(|k| match ctx.tenant.as_deref() {
            Some(t) => fleet_jobs::tenant::limit_key(t, &k),
            None => k,
        }));
        let h = self.0.clone();
        Ok(Prepared { limit_keys, run: Box::pin(async move { h.handle(args, ctx).await }) })
    }
}

pub(crate) struct Entry {
    handler: Box<dyn ErasedHandler>,
    pub(crate) policy: KindPolicy,
}

impl Entry {
    pub(crate) fn start(&self, args: &RawValue, ctx: JobContext) -> Result<Prepared, serde_json::Error> {
        self.handler.start(args, ctx)
    }
}

/// Job kinds known to a worker.
#[derive(Default)]
pub struct Registry {
    kinds: BTreeMap<String, Entry>,
    database: Option<sqlx::PgPool>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.kinds.keys()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The kinds that need nothing outside Redis: the scripted test kind `probe`. Tests and
    /// benchmarks start from here; the worker binary registers it only with `test_kinds`.
    pub fn builtin() -> Self {
        Registry::new().register(crate::kinds::probe::Probe)
    }

    /// Adds a handler for `H::Args::KIND` with the default policy.
    pub fn register<H: Handler>(self, handler: H) -> Self {
        self.register_with(handler, KindPolicy::default())
    }

    /// Adds (or replaces) a handler with a policy.
    pub fn register_with<H: Handler>(mut self, handler: H, policy: KindPolicy) -> Self {
        self.kinds.insert(
            <H::Args as JobArgs>::KIND.to_owned(),
            Entry { handler: Box::new(Typed(Arc::new(handler))), policy },
        );
        self
    }

    /// The PostgreSQL the registered kinds keep their records in: `/readyz` checks it
    /// (`SELECT 1`), so a worker whose kinds cannot reach their database is not ready.
    pub fn with_database(mut self, pool: sqlx::PgPool) -> Self {
        self.database = Some(pool);
        self
    }

    /// The database given to [`Registry::with_database`].
    pub fn database(&self) -> Option<&sqlx::PgPool> {
        self.database.as_ref()
    }

    pub(crate) fn get(&self, kind: &str) -> Option<&Entry> {
        self.kinds.get(kind)
    }

    /// Names of the registered kinds.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.kinds.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_jobs::catalogue::{ProbeAction, ProbeArgs};
    use fleet_kit::CpuPool;

    fn ctx(tenant: Option<&str>) -> JobContext {
        JobContext {
            id: "j".into(),
            kind: "probe".into(),
            queue: "default".into(),
            attempt: 1,
            max_attempts: 1,
            enqueued_at: 0,
            instance: "test".into(),
            trace: None,
            tenant: tenant.map(str::to_owned),
            cpu: CpuPool::new(1),
            limits: Default::default(),
            report: Default::default(),
        }
    }

    #[test]
    fn limit_keys_a_tenant_names_live_in_its_namespace() {
        let registry = Registry::builtin();
        let args =
            serde_json::to_string(&ProbeArgs::new(ProbeAction::Succeed).limited("webhook:endpoint:ep_1")).unwrap();
        let raw = RawValue::from_string(args).unwrap();
        let entry = registry.get("probe").unwrap();
        let hostile = entry.start(&raw, ctx(Some("mallory"))).unwrap();
        assert_eq!(hostile.limit_keys, vec!["tenant:mallory:webhook:endpoint:ep_1"]);
        let own = entry.start(&raw, ctx(None)).unwrap();
        assert_eq!(own.limit_keys, vec!["webhook:endpoint:ep_1"], "Fleet's own jobs name keys as they are");
    }
}
