//! Limits around each attempt: a job kind names the limit keys a job uses (from its
//! args); before the handler runs, every key must admit it (this process's own rate
//! first, then the fleet-wide rate, cap and breaker in Redis). A job that must wait
//! is deferred to when it may run and gives its worker slot back. After the handler,
//! the outcome feeds the breakers and the concurrency slots are given back.
//!
//! Some keys are known only once the handler runs: the SMS account a source's settings
//! name, the vision provider whose turn it is. The handler takes them through
//! [`AttemptLimits`] (its [`JobContext::limits`](crate::JobContext::limits)), which goes
//! through the same [`Guard`]: admit, then report, slow down and release, written once
//! here. The handler may settle such a key itself with the call's [`Verdict`]; the runtime
//! settles what is left with the attempt's outcome, as it does the declared keys.

use crate::handler::JobError;
use fleet_jobs::limits::{Admission, LimitSpec, Limiter, WaitReason};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
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

/// What a call under a limit key says about the service behind it, and so how the key
/// is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The service answered: a success for the key's breaker.
    Healthy,
    /// The service may be down (a timeout, a 5xx, no connection): a failure for the
    /// key's breaker.
    Failing,
    /// The service asked to slow down: every job of the key is held back for the wait,
    /// fleet-wide.
    SlowDown(Duration),
    /// Nothing about an outage (a refused request, a permanent error, a snooze): the slot
    /// goes back and the breaker stays as it is.
    Neutral,
}

impl Verdict {
    /// The verdict of an attempt's outcome, for the keys its handler did not settle.
    pub fn of(result: &Result<(), JobError>) -> Self {
        match result {
            Ok(()) => Verdict::Healthy,
            Err(JobError::Retry { .. }) => Verdict::Failing,
            Err(JobError::SlowDown { after, .. }) => Verdict::SlowDown(*after),
            // Permanent errors and snoozes say nothing about an outage.
            Err(JobError::GiveUp { .. } | JobError::Snooze { .. }) => Verdict::Neutral,
        }
    }
}

/// Why a key did not admit a job.
enum Refused {
    /// The key's limits say to wait.
    Wait { key: String, delay: Duration, reason: WaitReason },
    /// Redis could not be asked: the service must not be called unchecked.
    Unchecked { key: String, error: String },
}

/// Checks a job's limit keys and settles them afterwards. Cheap to clone (one shared
/// value): every attempt's [`AttemptLimits`] holds one.
#[derive(Clone, Debug)]
pub struct Guard(Arc<GuardParts>);

/// What a [`Guard`] shares between its clones.
#[derive(Debug)]
pub struct GuardParts {
    limiter: Limiter,
    table: Arc<LimitTable>,
    renew_every: Duration,
}

impl std::ops::Deref for Guard {
    type Target = GuardParts;
    fn deref(&self) -> &GuardParts {
        &self.0
    }
}

/// Keys a job holds while it runs.
pub struct Held {
    keys: Vec<(String, LimitSpec)>,
    renewal: Option<tokio::task::JoinHandle<()>>,
    /// Whether the keys' gauges are written (for those [`has_series`] allows).
    series: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        // Keys dropped unsettled (their attempt was aborted) stop renewing: their slots
        // come back when their leases end.
        if let Some(r) = self.renewal.take() {
            r.abort();
        }
    }
}

impl Guard {
    /// A guard over `limiter` with `table`'s rules; slots are leased for `lease`.
    pub fn new(limiter: Limiter, table: Arc<LimitTable>, lease: Duration) -> Self {
        Guard(Arc::new(GuardParts { limiter, table, renew_every: lease / 3 }))
    }

    /// Admits the job on every key, or says how long to wait (the job is then deferred).
    pub async fn admit(&self, keys: Vec<String>, holder: &str) -> Result<Held, (Duration, WaitReason, String)> {
        self.take(keys, holder, true).await.map_err(|refused| match refused {
            Refused::Wait { key, delay, reason } => (delay, reason, key),
            Refused::Unchecked { key, error } => {
                // Without Redis the limits cannot be checked: do not call the service.
                tracing::warn!(%key, %error, "limit check failed; deferring the job");
                (Duration::from_secs(1), WaitReason::Rate, key)
            }
        })
    }

    /// Admits `holder` on every key in turn (giving back what it took when one refuses);
    /// `series` writes the keys' gauges.
    async fn take(&self, keys: Vec<String>, holder: &str, series: bool) -> Result<Held, Refused> {
        let mut held: Vec<(String, LimitSpec)> = Vec::with_capacity(keys.len());
        for key in keys {
            let series = series && has_series(&key);
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
                return Err(Refused::Wait {
                    key,
                    delay: wait.max(Duration::from_millis(1)),
                    reason: WaitReason::Process,
                });
            }
            match self.limiter.acquire(&key, holder, &spec).await {
                Ok((Admission::Admitted, status)) => {
                    if let Some(t) = status.tokens
                        && series
                    {
                        metrics::gauge!("fleet_limiter_tokens", "key" => key.clone()).set(t as f64);
                    }
                    if series {
                        metrics::gauge!("fleet_breaker_state", "key" => key.clone()).set(status.breaker.gauge());
                    }
                    held.push((key, spec));
                }
                Ok((Admission::Wait { delay, reason }, status)) => {
                    if series {
                        metrics::gauge!("fleet_breaker_state", "key" => key.clone()).set(status.breaker.gauge());
                    }
                    self.give_back(&held, holder).await;
                    return Err(Refused::Wait { key, delay, reason });
                }
                Err(e) => {
                    self.give_back(&held, holder).await;
                    return Err(Refused::Unchecked { key, error: e.to_string() });
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
        Ok(Held { keys: held, renewal, series })
    }

    async fn give_back(&self, held: &[(String, LimitSpec)], holder: &str) {
        for (k, s) in held {
            if let Err(e) = self.limiter.release(k, holder, s).await {
                tracing::warn!(key = %k, error = %e,
                    "could not give a concurrency slot back; it returns when its lease ends");
            }
        }
    }

    /// Settles the keys after the handler with how it went ([`Verdict::of`] its result):
    /// success or failure for the breakers, a fleet-wide slow-down when asked, and the
    /// slots back.
    pub async fn settle(&self, mut held: Held, holder: &str, verdict: Verdict) {
        if let Some(r) = held.renewal.take() {
            r.abort();
        }
        for (k, s) in &held.keys {
            if let Verdict::SlowDown(after) = verdict
                && let Err(e) = self.limiter.slow_down(k, s, after).await
            {
                tracing::warn!(key = %k, error = %e, "could not record the slow-down");
            }
            let r = match verdict {
                Verdict::Healthy | Verdict::Failing => {
                    self.limiter.report(k, holder, s, verdict == Verdict::Healthy).await.map(|st| {
                        if held.series && has_series(k) {
                            metrics::gauge!("fleet_breaker_state", "key" => k.clone()).set(st.breaker.gauge());
                        }
                    })
                }
                Verdict::SlowDown(_) | Verdict::Neutral => self.limiter.release(k, holder, s).await,
            };
            if let Err(e) = r {
                tracing::warn!(key = %k, error = %e, "could not report to the limiter");
            }
        }
    }
}

/// The limit keys an attempt's handler learns while it runs (see the module docs),
/// handed to it in its [`JobContext`](crate::JobContext); clones share the keys held.
///
/// [`AttemptLimits::default`] has no guard and admits everything: a handler run outside
/// the worker (a unit test) needs no Redis.
#[derive(Clone, Default)]
pub struct AttemptLimits {
    inner: Option<Arc<Learned>>,
}

struct Learned {
    guard: Guard,
    holder: String,
    /// Keys admitted and not settled yet; `None` once the runtime has settled the attempt.
    held: Mutex<Option<Vec<(String, Held)>>>,
}

impl Learned {
    fn held(&self) -> MutexGuard<'_, Option<Vec<(String, Held)>>> {
        // A panic elsewhere cannot leave the list half-written: use it as it is.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl std::fmt::Debug for AttemptLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            None => f.write_str("AttemptLimits(admit everything)"),
            Some(l) => {
                let keys: Vec<String> = l.held().iter().flatten().map(|(k, _)| k.clone()).collect();
                f.debug_struct("AttemptLimits").field("holder", &l.holder).field("held", &keys).finish()
            }
        }
    }
}

impl AttemptLimits {
    /// Keys checked by `guard` and held by `holder` (the job id, as for its declared keys).
    pub fn new(guard: Guard, holder: impl Into<String>) -> Self {
        AttemptLimits {
            inner: Some(Arc::new(Learned { guard, holder: holder.into(), held: Mutex::new(Some(Vec::new())) })),
        }
    }

    /// Takes `key` for this attempt before calling the service behind it. A key with no
    /// rule in the `limits` config admits at once and is not held (no Redis round trip
    /// for services nobody limits); a key already held admits again. A wait, or a limit
    /// check that fails (Redis unreachable), is a [`JobError::Snooze`] until the key may
    /// admit: return it to run again then, without counting an attempt, or pass the
    /// service over.
    pub async fn admit(&self, key: &str) -> Result<(), JobError> {
        let Some(l) = &self.inner else { return Ok(()) };
        if l.guard.table.spec(key).is_none() {
            return Ok(());
        }
        match l.held().as_ref() {
            None => return Err(JobError::retry(format!("limit key {key} asked for after its attempt ended"))),
            Some(held) if held.iter().any(|(k, _)| k == key) => return Ok(()),
            Some(_) => {}
        }
        // A key learned at run time may come from a tenant's settings (an SMS account):
        // it gets no gauge series of its own, or tenants could add series without bound.
        match l.guard.take(vec![key.to_owned()], &l.holder, false).await {
            Ok(taken) => {
                let late = {
                    let mut held = l.held();
                    match held.as_mut() {
                        Some(held) => {
                            held.push((key.to_owned(), taken));
                            None
                        }
                        None => Some(taken),
                    }
                };
                match late {
                    None => Ok(()),
                    Some(taken) => {
                        // The runtime settled the attempt meanwhile: nobody would settle it.
                        l.guard.settle(taken, &l.holder, Verdict::Neutral).await;
                        Err(JobError::retry(format!("limit key {key} taken after its attempt ended")))
                    }
                }
            }
            Err(Refused::Wait { key, delay, reason }) => {
                tracing::debug!(%key, reason = reason.as_str(), wait_ms = delay.as_millis() as u64,
                    "a limit key learned at run time holds the handler back");
                metrics::counter!("fleet_limiter_waits_total", "key" => key, "reason" => reason.as_str()).increment(1);
                Err(JobError::snooze(delay.max(Duration::from_millis(1))))
            }
            Err(Refused::Unchecked { key, error }) => {
                // Without Redis the limits cannot be checked: do not call the service.
                tracing::warn!(%key, %error, "limit check failed; the service behind the key is not called");
                Err(JobError::snooze(Duration::from_secs(1)))
            }
        }
    }

    /// Settles `key` now with how the call went (a handler that calls several services
    /// in one attempt settles each after its call). A key not held does nothing.
    pub async fn settle(&self, key: &str, verdict: Verdict) {
        let Some(l) = &self.inner else { return };
        let taken = {
            let mut held = l.held();
            let Some(held) = held.as_mut() else { return };
            let Some(i) = held.iter().position(|(k, _)| k == key) else { return };
            held.swap_remove(i).1
        };
        l.guard.settle(taken, &l.holder, verdict).await;
    }

    /// Settles every key still held with `verdict` and admits no more. The runtime calls
    /// this once the handler has returned, timed out, panicked or been stopped.
    pub async fn settle_rest(&self, verdict: Verdict) {
        let Some(l) = &self.inner else { return };
        let rest = l.held().take().unwrap_or_default();
        for (_, taken) in rest {
            l.guard.settle(taken, &l.holder, verdict).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempts_outcome_settles_its_keys() {
        let d = Duration::from_secs(3);
        assert_eq!(Verdict::of(&Ok(())), Verdict::Healthy);
        assert_eq!(Verdict::of(&Err(JobError::retry("5xx"))), Verdict::Failing);
        assert_eq!(Verdict::of(&Err(JobError::retry_after("5xx", d))), Verdict::Failing);
        assert_eq!(Verdict::of(&Err(JobError::slow_down("429", d))), Verdict::SlowDown(d));
        assert_eq!(Verdict::of(&Err(JobError::give_up("bad"))), Verdict::Neutral);
        assert_eq!(Verdict::of(&Err(JobError::snooze(d))), Verdict::Neutral);
    }

    #[tokio::test]
    async fn without_a_guard_every_key_admits_and_settling_does_nothing() {
        let limits = AttemptLimits::default();
        assert_eq!(limits.admit("sms:acme:AC1").await, Ok(()));
        limits.settle("sms:acme:AC1", Verdict::SlowDown(Duration::from_secs(1))).await;
        limits.settle_rest(Verdict::Failing).await;
        assert_eq!(limits.admit("sms:acme:AC1").await, Ok(()), "no guard: nothing is ever closed");
    }
}
