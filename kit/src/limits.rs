//! Limits around each attempt: a job kind names the limit keys a job uses (from its
//! args); before the handler runs, every key must admit it (this process's own rate
//! first, then the fleet-wide rate, cap and breaker in Redis). A job that must wait
//! is deferred to when it may run and gives its worker slot back. After the handler,
//! the outcome feeds the breakers and the concurrency slots are given back.

use crate::handler::JobError;
use fleet_jobs::limits::{Admission, LimitSpec, Limiter, WaitReason};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// This process's own limiter of one pattern, keyed by limit key.
type ProcessLimiter = Arc<DefaultKeyedRateLimiter<String>>;

/// Limit specs by key pattern: an exact key, or a prefix ending in `*`
/// (`webhook:endpoint:*`). The longest matching pattern wins.
#[derive(Default)]
pub struct LimitTable {
    rules: BTreeMap<String, (LimitSpec, Option<ProcessLimiter>)>,
}

impl std::fmt::Debug for LimitTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.rules.keys()).finish()
    }
}

impl LimitTable {
    /// Builds the table from config rules (already validated).
    pub fn new(rules: &BTreeMap<String, LimitSpec>) -> Self {
        let rules = rules
            .iter()
            .map(|(pattern, spec)| {
                let local = spec.process_rate.map(|r| {
                    // governor counts whole cells per period: express r/s as one cell per 1/r s.
                    let period = Duration::from_secs_f64(1.0 / r);
                    let burst = NonZeroU32::new(spec.burst.max(1)).unwrap_or(NonZeroU32::MIN);
                    let quota = Quota::with_period(period).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN));
                    Arc::new(RateLimiter::keyed(quota.allow_burst(burst)))
                });
                (pattern.clone(), (spec.clone(), local))
            })
            .collect();
        LimitTable { rules }
    }

    /// The limits of `key` (its exact entry or longest matching prefix), if any.
    pub fn spec(&self, key: &str) -> Option<&LimitSpec> {
        self.resolve(key).map(|(s, _)| s)
    }

    fn resolve(&self, key: &str) -> Option<&(LimitSpec, Option<ProcessLimiter>)> {
        if let Some(r) = self.rules.get(key) {
            return Some(r);
        }
        self.rules
            .iter()
            .filter(|(p, _)| p.strip_suffix('*').is_some_and(|prefix| key.starts_with(prefix)))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, r)| r)
    }
}

/// Whether a limit key gets metric series of its own. Keys a tenant names (in its
/// `tenant:<name>:` namespace) do not: tenants could otherwise add series without bound.
fn has_series(key: &str) -> bool {
    !key.starts_with("tenant:")
}

/// Checks a job's limit keys and settles them afterwards.
#[derive(Clone, Debug)]
pub struct Guard {
    limiter: Limiter,
    table: Arc<LimitTable>,
    renew_every: Duration,
}

/// Keys a job holds while it runs.
pub struct Held {
    keys: Vec<(String, LimitSpec)>,
    renewal: Option<tokio::task::JoinHandle<()>>,
}

impl Guard {
    /// A guard over `limiter` with `table`'s rules; slots are leased for `lease`.
    pub fn new(limiter: Limiter, table: Arc<LimitTable>, lease: Duration) -> Self {
        Guard { limiter, table, renew_every: lease / 3 }
    }

    /// Admits the job on every key, or says how long to wait (the job is then deferred).
    pub async fn admit(&self, keys: Vec<String>, holder: &str) -> Result<Held, (Duration, WaitReason, String)> {
        let mut held: Vec<(String, LimitSpec)> = Vec::with_capacity(keys.len());
        for key in keys {
            let (spec, local) = match self.table.resolve(&key) {
                Some((s, l)) => (s.clone(), l.clone()),
                None => (LimitSpec::default(), None),
            };
            if let Some(local) = local
                && let Err(not_until) = local.check_key(&key)
            {
                let wait =
                    not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
                self.give_back(&held, holder).await;
                return Err((wait.max(Duration::from_millis(1)), WaitReason::Process, key));
            }
            match self.limiter.acquire(&key, holder, &spec).await {
                Ok((Admission::Admitted, status)) => {
                    if let Some(t) = status.tokens
                        && has_series(&key)
                    {
                        metrics::gauge!("fleet_limiter_tokens", "key" => key.clone()).set(t as f64);
                    }
                    if has_series(&key) {
                        metrics::gauge!("fleet_breaker_state", "key" => key.clone()).set(status.breaker.gauge());
                    }
                    held.push((key, spec));
                }
                Ok((Admission::Wait { delay, reason }, status)) => {
                    if has_series(&key) {
                        metrics::gauge!("fleet_breaker_state", "key" => key.clone()).set(status.breaker.gauge());
                    }
                    self.give_back(&held, holder).await;
                    return Err((delay, reason, key));
                }
                Err(e) => {
                    // Without Redis the limits cannot be checked: do not call the service.
                    tracing::warn!(%key, error = %e, "limit check failed; deferring the job");
                    self.give_back(&held, holder).await;
                    return Err((Duration::from_secs(1), WaitReason::Rate, key));
                }
            }
        }
        let renewal = held.iter().any(|(_, s)| s.concurrency.is_some()).then(|| {
            let (limiter, keys, holder, every) =
                (self.limiter.clone(), held.clone(), holder.to_owned(), self.renew_every);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    for (k, s) in &keys {
                        if let Err(e) = limiter.renew(k, &holder, s).await {
                            tracing::warn!(key = %k, error = %e, "could not renew a concurrency slot");
                        }
                    }
                }
            })
        });
        Ok(Held { keys: held, renewal })
    }

    async fn give_back(&self, held: &[(String, LimitSpec)], holder: &str) {
        for (k, s) in held {
            if let Err(e) = self.limiter.release(k, holder, s).await {
                tracing::warn!(key = %k, error = %e, "could not give a concurrency slot back; it returns when its lease ends");
            }
        }
    }

    /// Settles the keys after the handler: success or failure for the breakers, a
    /// fleet-wide slow-down when asked, and the slots back.
    /// Gives back what `admit` took and feeds the breakers with the outcome.
    pub async fn settle(&self, held: Held, holder: &str, result: &Result<(), JobError>) {
        if let Some(r) = held.renewal {
            r.abort();
        }
        for (k, s) in &held.keys {
            let outcome = match result {
                Ok(()) => Some(true),
                Err(JobError::Retry { .. }) => Some(false),
                // Permanent errors, snoozes and slow-downs say nothing about an outage.
                Err(JobError::GiveUp { .. } | JobError::Snooze { .. } | JobError::SlowDown { .. }) => None,
            };
            if let Err(JobError::SlowDown { after, .. }) = result
                && let Err(e) = self.limiter.slow_down(k, s, *after).await
            {
                tracing::warn!(key = %k, error = %e, "could not record the slow-down");
            }
            let r = match outcome {
                Some(ok) => self.limiter.report(k, holder, s, ok).await.map(|st| {
                    if has_series(k) {
                        metrics::gauge!("fleet_breaker_state", "key" => k.clone()).set(st.breaker.gauge());
                    }
                }),
                None => self.limiter.release(k, holder, s).await,
            };
            if let Err(e) = r {
                tracing::warn!(key = %k, error = %e, "could not report to the limiter");
            }
        }
    }
}
