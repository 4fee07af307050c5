//! What tenants may do through the API: which kinds they may enqueue, on which queues,
//! and the default concurrency cap and queued-job quota every tenant gets per queue
//! (`[tenants]` in the scheduler's config; per-tenant overrides at run time through
//! `/admin/v1/tenants` and `fleetctl tenant-limits`). See `fleet_jobs::tenant` for how
//! the engine enforces caps, quotas and fair turns.

use fleet_jobs::Client;
use fleet_jobs::catalogue::{self, KindInfo};
use fleet_jobs::kind::Audience;
use fleet_jobs::tenant::TenantLimits;
use serde::Deserialize;

/// `[tenants]`: the rules for tenants' requests.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TenancyConfig {
    /// Accept the test kind `probe` from tenants (tests, benchmarks, the local demo).
    pub test_kinds: bool,
    /// Queues tenants may name. Empty: `default` and the default queues of the public
    /// kinds (`webhooks`, `images`). A queue is declared here, never created on demand.
    pub queues: Vec<String>,
    /// Jobs of one tenant running at once on one queue, fleet-wide (0: no cap).
    pub concurrency: u64,
    /// Unfinished jobs of one tenant on one queue (0: no quota); over it the API answers 429.
    pub queued: u64,
    /// Steps of one tenant's workflows that may be open (not yet ended) at once, nested
    /// and run-time steps included (0: no quota). Over it `POST /v1/workflows` answers
    /// 429 `quota_exceeded` and a step's run-time add fails.
    pub workflow_steps: u64,
    /// Partitioned queues and their partition counts, e.g. `partitions = { emails = 3 }`
    /// (the same numbers as the workers' `[[queues]] partitions`): tenants' jobs on such a
    /// queue go to the partition of their tenant, so each tenant keeps its order.
    pub partitions: std::collections::BTreeMap<String, u32>,
    /// Queues whose enqueues are acknowledged only once replicated, e.g.
    /// `durability = { payments = { replicas = 1, timeout_ms = 500 } }`: the API's and
    /// cron's enqueues onto them wait (Redis `WAIT`) until that many replicas hold the job,
    /// at most `timeout_ms` (up to 4,000), and answer 503 `not_replicated` otherwise (the
    /// job was written on the primary; retrying with the same Idempotency-Key is safe).
    /// See the README's "Durability" section for what each setting survives.
    pub durability: std::collections::BTreeMap<String, QueueDurability>,
}

/// One queue's replicated acknowledgement (see [`TenancyConfig::durability`]).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QueueDurability {
    /// Replicas that must hold each job before the enqueue is acknowledged.
    pub replicas: u32,
    /// Longest wait for them, in milliseconds.
    pub timeout_ms: u64,
}

impl QueueDurability {
    /// As the engine's setting.
    pub fn durability(self) -> fleet_jobs::Durability {
        fleet_jobs::Durability::Replicated {
            replicas: self.replicas,
            timeout: std::time::Duration::from_millis(self.timeout_ms),
        }
    }
}

impl Default for TenancyConfig {
    fn default() -> Self {
        TenancyConfig {
            test_kinds: false,
            queues: Vec::new(),
            concurrency: 0,
            queued: 10_000,
            workflow_steps: 100_000,
            partitions: Default::default(),
            durability: Default::default(),
        }
    }
}

/// Why a tenant's job is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No such kind.
    UnknownKind(String),
    /// A kind only Fleet creates.
    InternalKind(String),
    /// A queue that is not declared for tenants.
    UndeclaredQueue(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::UnknownKind(m) | Refusal::InternalKind(m) | Refusal::UndeclaredQueue(m) => f.write_str(m),
        }
    }
}

impl TenancyConfig {
    /// The settings tests use: every default, plus the test kind `probe` and a
    /// `callbacks` queue beside the public kinds' queues.
    pub fn for_tests() -> Self {
        let mut t = TenancyConfig { test_kinds: true, ..TenancyConfig::default() };
        t.queues = t.declared_queues();
        t.queues.push("callbacks".into());
        t
    }

    /// `client`, knowing the partitioned queues (see [`TenancyConfig::partitions`]) and
    /// the queues acknowledged once replicated ([`TenancyConfig::durability`]).
    pub fn partitioned(&self, mut client: Client) -> fleet_jobs::Result<Client> {
        for (queue, n) in &self.partitions {
            client = client.with_partitions(queue, *n)?;
        }
        for (queue, d) in &self.durability {
            client = client.with_queue_durability(queue, d.durability())?;
        }
        Ok(client)
    }

    /// The kinds tenants may enqueue.
    pub fn public_kinds(&self) -> Vec<&'static str> {
        catalogue::public_kinds(self.test_kinds)
    }

    /// The queues tenants may name.
    pub fn declared_queues(&self) -> Vec<String> {
        if !self.queues.is_empty() {
            return self.queues.clone();
        }
        let mut qs: Vec<String> = catalogue::kinds()
            .into_iter()
            .filter(|k| self.public_kinds().contains(&k.name))
            .map(|k| (k.options)().queue)
            .chain(["default".to_owned()])
            .collect();
        qs.sort();
        qs.dedup();
        qs
    }

    /// The kind `name` if a tenant may enqueue it (the API answers 422 otherwise).
    pub fn public_kind(&self, name: &str) -> Result<KindInfo, Refusal> {
        let public = self.public_kinds();
        let kind = catalogue::lookup(name).ok_or_else(|| {
            Refusal::UnknownKind(format!("unknown job kind {name:?}; kinds you may enqueue: {}", public.join(", ")))
        })?;
        match kind.audience {
            Audience::Public => Ok(kind),
            Audience::Test if self.test_kinds => Ok(kind),
            Audience::Test => Err(Refusal::InternalKind(format!(
                "job kind {name:?} is a test kind, not enabled on this deployment; kinds you may enqueue: {}",
                public.join(", ")
            ))),
            Audience::Internal => Err(Refusal::InternalKind(format!(
                "job kind {name:?} is created only by Fleet itself; kinds you may enqueue: {}",
                public.join(", ")
            ))),
        }
    }

    /// Checks that a tenant may use `queue`.
    pub fn check_queue(&self, queue: &str) -> Result<(), Refusal> {
        let declared = self.declared_queues();
        if declared.iter().any(|q| q == queue) {
            Ok(())
        } else {
            Err(Refusal::UndeclaredQueue(format!(
                "queue {queue:?} is not declared for tenants; declared queues: {}",
                declared.join(", ")
            )))
        }
    }

    /// Writes the default cap and quota into every declared queue's settings, where the
    /// engine reads them (run at start; overrides per tenant are left alone).
    pub async fn apply_defaults(&self, client: &Client) -> fleet_jobs::Result<()> {
        for q in self.declared_queues() {
            let limits = TenantLimits { concurrency: Some(self.concurrency), quota: Some(self.queued) };
            client.set_tenant_limits(&q, None, limits).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_and_test_kinds_are_refused_with_the_kind_named() {
        let t = TenancyConfig::default();
        assert!(t.public_kind("webhook.publish").is_ok());
        let e = t.public_kind("webhook.deliver").unwrap_err();
        assert!(matches!(e, Refusal::InternalKind(_)) && e.to_string().contains("webhook.deliver"), "{e}");
        assert!(matches!(t.public_kind("probe"), Err(Refusal::InternalKind(_))));
        assert!(TenancyConfig::for_tests().public_kind("probe").is_ok());
        assert!(matches!(t.public_kind("nope"), Err(Refusal::UnknownKind(_))));
    }

    #[test]
    fn only_declared_queues_are_open_to_tenants() {
        let t = TenancyConfig::default();
        assert_eq!(t.declared_queues(), vec!["default", "images", "webhooks"]);
        assert!(t.check_queue("images").is_ok());
        assert!(t.check_queue("calendar").is_err());
        let custom = TenancyConfig { queues: vec!["bulk".into()], ..TenancyConfig::default() };
        assert!(custom.check_queue("bulk").is_ok() && custom.check_queue("default").is_err());
    }
}
