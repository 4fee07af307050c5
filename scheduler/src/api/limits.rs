//! What bounds a caller in one scheduler process: a request rate per API key and per
//! intake provider (GCRA, `governor`), a request timeout, and a cap on the live event
//! streams a tenant holds open. Over a limit the answer is 429 with `Retry-After` in the
//! API's error shape.
//!
//! The limits are per process: with N scheduler replicas behind a load balancer a key
//! gets up to N times the rate. Keyed state is pruned of idle keys once a minute, so it
//! is bounded by the keys active in the last burst period.

use super::error::ApiError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The `[api]` table of the scheduler's config: per-process limits of the HTTP API.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiLimits {
    /// Requests per second per API key (sustained).
    pub rate_per_key: u32,
    /// Requests a key may send at once above the sustained rate.
    pub burst_per_key: u32,
    /// Calls per second per intake provider (`/v1/intake/{provider}`).
    pub rate_per_provider: u32,
    /// Burst per intake provider.
    pub burst_per_provider: u32,
    /// Longest time to answer a request, in seconds (event streams excepted): 503 after it.
    pub request_timeout_secs: u64,
    /// Longest PostgreSQL statement of the scheduler's pool, in milliseconds (0: none).
    pub statement_timeout_ms: u64,
    /// Most event streams (`/v1/stream`, `/v1/batches/{id}/events`) open at once per tenant.
    pub streams_per_tenant: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            rate_per_key: 50,
            burst_per_key: 100,
            rate_per_provider: 100,
            burst_per_provider: 200,
            request_timeout_secs: 30,
            statement_timeout_ms: 15_000,
            streams_per_tenant: 10,
        }
    }
}

impl ApiLimits {
    /// Generous limits for tests and embedders that construct [`super::ApiState::new`].
    pub fn generous() -> Self {
        ApiLimits {
            rate_per_key: 10_000,
            burst_per_key: 10_000,
            rate_per_provider: 10_000,
            burst_per_provider: 10_000,
            streams_per_tenant: 1_000,
            ..ApiLimits::default()
        }
    }

    /// Checks the settings, naming the one that is wrong.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("api.rate_per_key", self.rate_per_key),
            ("api.burst_per_key", self.burst_per_key),
            ("api.rate_per_provider", self.rate_per_provider),
            ("api.burst_per_provider", self.burst_per_provider),
        ] {
            if v == 0 {
                return Err(format!("invalid setting {name}: must be at least 1"));
            }
        }
        if self.request_timeout_secs == 0 || self.request_timeout_secs > 3600 {
            return Err("invalid setting api.request_timeout_secs: 1 to 3600".into());
        }
        if self.streams_per_tenant == 0 {
            return Err("invalid setting api.streams_per_tenant: must be at least 1".into());
        }
        Ok(())
    }
}

/// How often idle keys are dropped from the limiters.
const PRUNE_EVERY_MS: u64 = 60_000;

/// The per-process limiters, shared by every request of the router.
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

struct Inner {
    settings: ApiLimits,
    keys: DefaultKeyedRateLimiter<String>,
    providers: DefaultKeyedRateLimiter<String>,
    last_prune_ms: AtomicU64,
    streams: Mutex<HashMap<String, usize>>,
}

fn quota(rate: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(rate.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

impl Limiter {
    /// Limiters with `settings` (assumed valid, see [`ApiLimits::validate`]).
    pub fn new(settings: ApiLimits) -> Self {
        Limiter {
            inner: Arc::new(Inner {
                keys: RateLimiter::keyed(quota(settings.rate_per_key, settings.burst_per_key)),
                providers: RateLimiter::keyed(quota(settings.rate_per_provider, settings.burst_per_provider)),
                settings,
                last_prune_ms: AtomicU64::new(fleet_jobs::envelope::now_ms()),
                streams: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &ApiLimits {
        &self.inner.settings
    }

    /// The request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.inner.settings.request_timeout_secs)
    }

    /// Counts one request of API key `key_id`; 429 over the key's rate.
    pub fn check_key(&self, key_id: &str) -> Result<(), ApiError> {
        self.prune();
        check(&self.inner.keys, key_id, "this API key")
    }

    /// Counts one call from intake provider `provider`; 429 over its rate.
    pub fn check_provider(&self, provider: &str) -> Result<(), ApiError> {
        self.prune();
        check(&self.inner.providers, provider, "this provider")
    }

    /// Opens one event stream for `tenant`: a guard to keep while the stream lives, or
    /// 429 when the tenant already holds the most streams allowed.
    pub fn open_stream(&self, tenant: &str) -> Result<StreamGuard, ApiError> {
        let max = self.inner.settings.streams_per_tenant;
        let mut open = self.inner.streams.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(tenant.to_owned()).or_insert(0);
        if *n >= max {
            return Err(too_many(
                Duration::from_secs(5),
                format!("at most {max} event streams may be open at once per tenant; close one first"),
            ));
        }
        *n += 1;
        Ok(StreamGuard { limiter: self.clone(), tenant: tenant.to_owned() })
    }

    /// Drops the state of keys that are back to a full burst, at most once a minute.
    fn prune(&self) {
        let now = fleet_jobs::envelope::now_ms();
        let last = self.inner.last_prune_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < PRUNE_EVERY_MS
            || self.inner.last_prune_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        for l in [&self.inner.keys, &self.inner.providers] {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Keys with limiter state (for tests and metrics).
    pub fn tracked_keys(&self) -> usize {
        self.inner.keys.len() + self.inner.providers.len()
    }
}

fn check(limiter: &DefaultKeyedRateLimiter<String>, key: &str, who: &str) -> Result<(), ApiError> {
    limiter.check_key(&key.to_owned()).map_err(|not_until| {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        metrics::counter!("fleet_api_rate_limited_total").increment(1);
        too_many(wait, format!("{who} is over its request rate; retry after the Retry-After delay"))
    })
}

/// 429 with a `Retry-After` (whole seconds, at least 1).
pub(crate) fn too_many(wait: Duration, message: String) -> ApiError {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message).retry_after(secs.max(1))
}

/// One open event stream of a tenant; dropping it (when the client goes) frees the slot.
pub struct StreamGuard {
    limiter: Limiter,
    tenant: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut open = self.limiter.inner.streams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

/// Adds `Retry-After: secs` to a response.
pub(crate) fn with_retry_after(mut res: Response, secs: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        res.headers_mut().insert(header::RETRY_AFTER, v);
    }
    res
}

/// 503 in the error shape for a request that ran past the timeout.
pub(crate) fn timed_out(after: Duration) -> Response {
    let e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "timeout",
        format!("the request took longer than {} s; retry later", after.as_secs()),
    );
    with_retry_after(e.into_response(), 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_over_its_burst_is_refused_with_a_delay_and_another_key_is_not() {
        let l = Limiter::new(ApiLimits { rate_per_key: 1, burst_per_key: 3, ..ApiLimits::default() });
        for _ in 0..3 {
            l.check_key("a").unwrap();
        }
        let e = l.check_key("a").unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after, Some(1));
        l.check_key("b").unwrap();
    }

    #[test]
    fn stream_slots_are_per_tenant_and_freed_on_drop() {
        let l = Limiter::new(ApiLimits { streams_per_tenant: 2, ..ApiLimits::default() });
        let a1 = l.open_stream("a").unwrap();
        let _a2 = l.open_stream("a").unwrap();
        assert_eq!(l.open_stream("a").err().unwrap().status, StatusCode::TOO_MANY_REQUESTS);
        let _b = l.open_stream("b").unwrap();
        drop(a1);
        let _a3 = l.open_stream("a").unwrap();
    }
}
