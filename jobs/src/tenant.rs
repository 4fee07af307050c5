//! Tenants: who a job belongs to, and what keeps tenants apart on a shared queue.
//!
//! The tenant of a job comes from the credential that enqueued it (the HTTP API sets it
//! from the caller's key), never from its arguments. Inside a queue:
//!
//! * **Fair turns.** Each tenant's ready jobs wait in a list of their own, and fetch
//!   serves the tenants with ready work round-robin (each a share of the batch), so a
//!   tenant with 20,000 queued jobs delays another tenant's single job by a fetch or two.
//!   Jobs without a tenant (Fleet's own, cron, Rust apps) take their turn as one more
//!   tenant. Still one script call per fetch, with bounded work.
//! * **Concurrency caps.** At most `cap` jobs of a tenant run at once across the fleet; a
//!   tenant at its cap is parked (its jobs wait, others run) until one of its jobs stops.
//! * **Queued-job quotas.** At most `quota` unfinished jobs (ready, scheduled, retrying,
//!   running) per tenant and queue; an enqueue past it writes nothing and fails with
//!   [`Error::QuotaExceeded`](crate::Error::QuotaExceeded) (the API answers 429).
//!
//! Caps and quotas are per queue: a default for every tenant and overrides per tenant,
//! stored in the queue's settings in Redis and changed at run time ([`Client::set_tenant_limits`]).
//!
//! Names a tenant can choose (unique keys, limit keys, object keys) are put in the
//! tenant's namespace by the functions here, so they cannot collide with another
//! tenant's or with Fleet's own.

use crate::client::Client;
use crate::error::Result;
use crate::keys::validate_queue_name;
use std::collections::BTreeMap;

/// Checks a tenant name: 1 to 64 characters, ASCII letters, digits and `-_.`, starting
/// with a letter or digit. Tenant names become parts of Redis keys, object paths and
/// limit keys, so nothing that separates or tags (`:`, `/`, `{`, `}`, spaces) is allowed.
pub fn validate_tenant(name: &str) -> std::result::Result<(), String> {
    let ok_len = !name.is_empty() && name.len() <= 64;
    let ok_first = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok_len && ok_first && ok_chars {
        Ok(())
    } else {
        Err(format!(
            "tenant name {name:?} must be 1 to 64 ASCII letters, digits, '-', '_' or '.', starting with a letter or digit"
        ))
    }
}

/// A unique key chosen by a tenant, in its namespace: `tenant:<tenant>:<key>`. Fleet's own
/// unique keys (ticks, syncs, intake, batches, deliveries) never start with `tenant:`,
/// and tenant names hold no `:`, so no tenant can take another's key or Fleet's.
pub fn unique_key(tenant: &str, key: &str) -> String {
    format!("tenant:{tenant}:{key}")
}

/// A limit key chosen by a tenant, in its namespace: `tenant:<tenant>:<key>`. The
/// `[limits."tenant:*"]` prefix (or `tenant:<name>:*`) configures them.
pub fn limit_key(tenant: &str, key: &str) -> String {
    format!("tenant:{tenant}:{key}")
}

/// A tenant's usage of one queue, with the limits that apply to it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TenantUsage {
    /// Jobs running (leased) now that count against the cap: those started while the
    /// tenant had one (an uncapped tenant's running jobs are not counted, at no cost).
    pub running: u64,
    /// Jobs not finished: ready, scheduled, retrying and running.
    pub open: u64,
    /// Concurrency cap in force (0: none).
    pub concurrency: u64,
    /// Queued-job quota in force (0: none).
    pub quota: u64,
    /// Whether the cap is the tenant's own (else the queue's default).
    pub own_limits: bool,
}

/// Limits to set for a tenant (or, with no tenant, the default of every tenant).
/// `None` leaves a limit as it is; `Some(0)` removes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TenantLimits {
    /// At most this many of the tenant's jobs run at once on the queue, fleet-wide.
    pub concurrency: Option<u64>,
    /// At most this many of its jobs are unfinished on the queue.
    pub quota: Option<u64>,
}

impl Client {
    /// Sets the concurrency cap and queued-job quota of `tenant` on `queue` (with `None`,
    /// the defaults of every tenant). Takes effect at the next fetch or enqueue.
    ///
    /// On a partitioned queue, set on every partition (a tenant's jobs all go to one
    /// partition unless their enqueues give another partition key).
    pub async fn set_tenant_limits(&self, queue: &str, tenant: Option<&str>, limits: TenantLimits) -> Result<()> {
        validate_queue_name(queue).map_err(crate::Error::Invalid)?;
        if let Some(t) = tenant {
            validate_tenant(t).map_err(crate::Error::Invalid)?;
        }
        for p in self.partitions(queue) {
            self.set_tenant_limits_in(&p, tenant, limits).await?;
        }
        Ok(())
    }

    async fn set_tenant_limits_in(&self, queue: &str, tenant: Option<&str>, limits: TenantLimits) -> Result<()> {
        let k = self.keys(queue);
        let field = |name: &str| match tenant {
            Some(t) => format!("t{name}:{t}"),
            None => format!("t{name}"),
        };
        let mut pipe = redis::pipe();
        for (name, v) in [("cap", limits.concurrency), ("quota", limits.quota)] {
            match v {
                Some(0) => pipe.hdel(&k.conf, field(name)).ignore(),
                Some(n) => pipe.hset(&k.conf, field(name), n).ignore(),
                None => &mut pipe,
            };
        }
        if tenant.is_some() {
            // The scripts look up tenants' own values only once some tenant has one.
            pipe.hset(&k.conf, "town", 1).ignore();
        }
        // A raised cap lets parked tenants run: wake an idle worker to look.
        pipe.rpush(&k.wake, "1").ignore().ltrim(&k.wake, 0, 0).ignore();
        let _: () = pipe.query_async(&mut self.connection()).await?;
        if limits.concurrency.is_some() {
            self.unpark(queue, tenant).await?;
        }
        Ok(())
    }

    /// Puts tenants parked at their cap back in the rings (a raised cap applies at once).
    async fn unpark(&self, queue: &str, tenant: Option<&str>) -> Result<()> {
        let k = self.keys(queue);
        let tpark = format!("{}tpark", k.jobs.trim_end_matches("jobs"));
        let mut conn = self.connection();
        let parked: BTreeMap<String, String> = redis::cmd("HGETALL").arg(&tpark).query_async(&mut conn).await?;
        for (t, pris) in parked {
            if tenant.is_some_and(|want| want != t) {
                continue;
            }
            let mut pipe = redis::pipe();
            pipe.hdel(&tpark, &t).ignore();
            for p in pris.chars().filter_map(|c| c.to_digit(10)).filter(|p| *p < 3) {
                let base = &k.ready[p as usize];
                // SADD first: only a tenant not in the ring is added to it.
                let added: i64 = redis::cmd("SADD").arg(format!("{base}:rset")).arg(&t).query_async(&mut conn).await?;
                if added == 1 {
                    pipe.rpush(format!("{base}:ring"), &t).ignore();
                }
            }
            let _: () = pipe.query_async(&mut conn).await?;
        }
        Ok(())
    }

    /// The limits of `tenant` on `queue` and its usage now.
    /// (On a partitioned queue: in the tenant's partition.)
    pub async fn tenant_usage(&self, queue: &str, tenant: &str) -> Result<TenantUsage> {
        validate_queue_name(queue).map_err(crate::Error::Invalid)?;
        let k = self.keys(&self.partition_of(queue, tenant));
        let base = k.jobs.trim_end_matches("jobs").to_owned();
        let v: Vec<Option<u64>> = redis::pipe()
            .hget(format!("{base}trun"), tenant)
            .hget(format!("{base}topen"), tenant)
            .hget(&k.conf, "tcap")
            .hget(&k.conf, format!("tcap:{tenant}"))
            .hget(&k.conf, "tquota")
            .hget(&k.conf, format!("tquota:{tenant}"))
            .query_async(&mut self.connection())
            .await?;
        let at = |i: usize| v.get(i).copied().flatten();
        let (running, open, cap, own_cap, quota, own_quota) = (at(0), at(1), at(2), at(3), at(4), at(5));
        Ok(TenantUsage {
            running: running.unwrap_or(0),
            open: open.unwrap_or(0),
            concurrency: own_cap.or(cap).unwrap_or(0),
            quota: own_quota.or(quota).unwrap_or(0),
            own_limits: own_cap.is_some() || own_quota.is_some(),
        })
    }

    /// Every tenant with unfinished jobs on `queue` (at most `limit`), with its usage.
    pub async fn tenants(&self, queue: &str, limit: usize) -> Result<Vec<(String, TenantUsage)>> {
        let k = self.keys(queue);
        let topen = format!("{}topen", k.jobs.trim_end_matches("jobs"));
        let mut conn = self.connection();
        let mut names = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<(String, String)>) =
                redis::cmd("HSCAN").arg(&topen).arg(cursor).arg("COUNT").arg(200).query_async(&mut conn).await?;
            names.extend(batch.into_iter().map(|(t, _)| t));
            cursor = next;
            if cursor == 0 || names.len() >= limit {
                break;
            }
        }
        names.sort();
        names.dedup();
        names.truncate(limit);
        let mut out = Vec::with_capacity(names.len());
        for t in names {
            let u = self.tenant_usage(queue, &t).await?;
            out.push((t, u));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_cannot_break_out_of_their_namespace() {
        for ok in ["acme", "studio-7", "a.b_c", "A1"] {
            assert!(validate_tenant(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", ".x", "a:b", "a/b", "a{b}", "a b", "é", &"x".repeat(65)] {
            assert!(validate_tenant(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tenant_keys_never_meet_fleets_own() {
        assert_eq!(unique_key("intake", "vision:abc"), "tenant:intake:vision:abc");
        assert!(!unique_key("batch", "x").starts_with("batch:"));
        assert_eq!(limit_key("acme", "webhook:endpoint:1"), "tenant:acme:webhook:endpoint:1");
    }
}
