//! Fleet-wide protection of outside services, by limit key (e.g.
//! `webhook:endpoint:42`, `vision:provider:acme`): a rate limit, a concurrency cap,
//! a circuit breaker and a slow-down, all shared by every worker through Redis and
//! checked in one script call per key.
//!
//! * **Rate**: GCRA. A request that must wait reserves the next free slot, so each
//!   waiting job is deferred once, to its own slot. On top, an admission log guarantees
//!   by the Redis clock that no window of 1.025 s ever admits more than
//!   `max(rate, burst)` requests, whatever the timing of the workers; the 25 ms guard
//!   band keeps starts measured on the workers' clocks within the rate too, at a cost of
//!   about 2.5% of the configured rate when it is saturated.
//! * **Concurrency**: at most K holders at once; a slot is a lease (renewed while the
//!   job runs), so a dead worker's slot comes back when the lease ends.
//! * **Breaker**: after `failures` consecutive failures it opens for `cooldown`; then one
//!   probe is let through (half-open); its success closes it, its failure reopens it.
//! * **Slow-down**: "the service told me to slow down" blocks the key for everyone.
//!
//! Each key's Redis keys share the hash tag `{lim:<key>}`.

use crate::conn::RedisConn;
use crate::error::{Error, Result};
use crate::scripts;
use redis::Value;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Limits of one key (from config, overridable at run time with [`Limiter::set_spec`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSpec {
    /// Requests per second, fleet-wide; `None` = no rate limit.
    pub rate: Option<f64>,
    /// Requests allowed back to back before the rate applies (at least 1).
    pub burst: u32,
    /// Requests in flight at once, fleet-wide; `None` = no cap.
    pub concurrency: Option<u32>,
    /// Consecutive failures that open the breaker; `None` = no breaker.
    pub breaker_failures: Option<u32>,
    /// How long an open breaker stays open before one probe is let through, in ms.
    pub breaker_cooldown_ms: u64,
    /// Requests per second per worker process (checked locally, before Redis).
    pub process_rate: Option<f64>,
}

impl LimitSpec {
    /// Checks values: positive rates, a burst of at least 1.
    pub fn validate(&self) -> Result<(), String> {
        for (name, r) in [("rate", self.rate), ("process_rate", self.process_rate)] {
            if let Some(r) = r
                && !(r.is_finite() && r > 0.0)
            {
                return Err(format!("{name} must be a positive number, got {r}"));
            }
        }
        if self.concurrency == Some(0) {
            return Err("concurrency must be at least 1 (leave it out for no cap)".into());
        }
        if self.breaker_failures == Some(0) {
            return Err("breaker_failures must be at least 1 (leave it out for no breaker)".into());
        }
        Ok(())
    }
}

/// A circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls are held back until the cool-down ends.
    Open,
    /// One probe call is let through.
    HalfOpen,
}

impl BreakerState {
    fn parse(s: &str) -> Self {
        match s {
            "open" => BreakerState::Open,
            "half" => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    /// 0 closed, 1 half-open, 2 open (the metric's value).
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

/// Why a request must wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitReason {
    /// The fleet-wide rate.
    Rate,
    /// The fleet-wide concurrency cap.
    Concurrency,
    /// The breaker is open (or a probe is in flight).
    Breaker,
    /// The service asked to slow down.
    SlowDown,
    /// This process's own rate.
    Process,
}

impl WaitReason {
    /// Lower-case name (metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            WaitReason::Rate => "rate",
            WaitReason::Concurrency => "concurrency",
            WaitReason::Breaker => "breaker",
            WaitReason::SlowDown => "slow_down",
            WaitReason::Process => "process",
        }
    }
}

/// The answer to [`Limiter::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead (and call [`Limiter::report`] when done).
    Admitted,
    /// Come back after `delay` (for rate limits, a slot is reserved for then).
    Wait {
        /// How long to wait.
        delay: Duration,
        /// Why.
        reason: WaitReason,
    },
}

/// The state of one key, as reported by each call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitStatus {
    /// The breaker.
    pub breaker: BreakerState,
    /// Tokens available now (`None` without a rate limit).
    pub tokens: Option<u64>,
}

/// One of a limit key's Redis keys, as `limit.lua`'s `KEYS` list names it (the list
/// itself is declared once, in `crate::scripts::LIMIT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitKey {
    /// GCRA theoretical arrival time (string).
    Tat,
    /// Concurrency slots: sorted set holder -> lease end.
    Cap,
    /// Breaker state (hash).
    Brk,
    /// Rate reservations: sorted set holder -> reserved time.
    Resv,
    /// Admissions in the last second (sorted set).
    Log,
    /// Run-time overrides (hash).
    Conf,
}

impl LimitKey {
    /// The key's name in `limit.lua`.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            LimitKey::Tat => "tat",
            LimitKey::Cap => "cap",
            LimitKey::Brk => "brk",
            LimitKey::Resv => "resv",
            LimitKey::Log => "log",
            LimitKey::Conf => "conf",
        }
    }
}

/// Redis keys of one limit key: `<prefix>:{lim:<key>}:<name>`.
#[derive(Debug, Clone)]
struct LimitKeys {
    base: String,
}

impl LimitKeys {
    fn new(prefix: &str, key: &str) -> Self {
        LimitKeys { base: format!("{prefix}:{{lim:{key}}}:") }
    }

    fn key(&self, k: LimitKey) -> String {
        format!("{}{}", self.base, k.name())
    }
}

/// Checks a limit key: 1 to 200 characters, no braces or whitespace.
pub fn validate_limit_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 200 || key.chars().any(|c| c == '{' || c == '}' || c.is_whitespace()) {
        return Err(format!("limit key {key:?} must be 1 to 200 characters without braces or spaces"));
    }
    Ok(())
}

/// A limit key as operators see it: its run-time overrides and its live state.
#[derive(Debug, Clone, Serialize)]
pub struct LimitView {
    /// The limit key.
    pub key: String,
    /// Run-time overrides in force (`None`: the workers' config applies).
    pub overrides: Option<LimitSpec>,
    /// The breaker.
    pub breaker: BreakerState,
    /// Consecutive failures counted by the breaker.
    pub failures: u64,
    /// Tokens available now (`None` when no rate is known here: the rate is the workers' config).
    pub tokens: Option<u64>,
    /// Concurrency slots held now.
    pub in_flight: u64,
    /// Until when a slow-down holds every request back (ms since the epoch), if it does.
    pub slowed_until: Option<u64>,
}

/// Fleet-wide limits in Redis. Cheap to clone.
#[derive(Clone)]
pub struct Limiter {
    conn: RedisConn,
    prefix: String,
    lease: Duration,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").field("prefix", &self.prefix).finish()
    }
}

impl Limiter {
    /// A limiter under `prefix`; concurrency slots and breaker probes are leased for `lease`.
    pub fn new(conn: impl Into<RedisConn>, prefix: impl Into<String>, lease: Duration) -> Self {
        Limiter { conn: conn.into(), prefix: prefix.into(), lease }
    }

    async fn call(
        &self,
        op: &str,
        key: &str,
        holder: &str,
        spec: &LimitSpec,
        extra_ms: u64,
    ) -> Result<(Vec<Value>, LimitStatus)> {
        validate_limit_key(key).map_err(Error::Invalid)?;
        let k = LimitKeys::new(&self.prefix, key);
        let mut inv = scripts::LIMIT.call();
        for key in scripts::LIMIT.keys {
            inv.key(k.key(*key));
        }
        inv.arg(op)
            .arg(holder)
            .arg(spec.rate.unwrap_or(0.0))
            .arg(spec.burst.max(1))
            .arg(spec.concurrency.unwrap_or(0))
            .arg(self.lease.as_millis() as u64)
            .arg(spec.breaker_failures.unwrap_or(0))
            .arg(spec.breaker_cooldown_ms)
            .arg(extra_ms);
        let v: Vec<Value> = inv.invoke_async(&mut self.conn.clone()).await?;
        let text = |v: &Value| match v {
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            Value::SimpleString(s) => s.clone(),
            _ => String::new(),
        };
        let int = |v: &Value| match v {
            Value::Int(i) => *i,
            _ => 0,
        };
        let status = LimitStatus {
            breaker: v.get(3).map(|s| BreakerState::parse(&text(s))).unwrap_or(BreakerState::Closed),
            tokens: v.get(4).map(int).filter(|t| *t >= 0).map(|t| t as u64),
        };
        Ok((v, status))
    }

    /// Asks to start one request for `key` on behalf of `holder` (a job id).
    pub async fn acquire(&self, key: &str, holder: &str, spec: &LimitSpec) -> Result<(Admission, LimitStatus)> {
        let (v, status) = self.call("acquire", key, holder, spec, 0).await?;
        let num = |i: usize| match v.get(i) {
            Some(Value::Int(n)) => *n,
            _ => 0,
        };
        if num(0) == 1 {
            return Ok((Admission::Admitted, status));
        }
        let reason = match v.get(2) {
            Some(Value::BulkString(b)) => match b.as_slice() {
                b"concurrency" => WaitReason::Concurrency,
                b"breaker" => WaitReason::Breaker,
                b"slowdown" => WaitReason::SlowDown,
                _ => WaitReason::Rate,
            },
            _ => WaitReason::Rate,
        };
        Ok((Admission::Wait { delay: Duration::from_millis(num(1).max(1) as u64), reason }, status))
    }

    /// Extends `holder`'s concurrency slot while its request runs.
    pub async fn renew(&self, key: &str, holder: &str, spec: &LimitSpec) -> Result<()> {
        self.call("renew", key, holder, spec, 0).await.map(|_| ())
    }

    /// Gives back `holder`'s concurrency slot without judging the outcome.
    pub async fn release(&self, key: &str, holder: &str, spec: &LimitSpec) -> Result<()> {
        self.call("release", key, holder, spec, 0).await.map(|_| ())
    }

    /// Reports how the request went (feeds the breaker) and gives the slot back.
    pub async fn report(&self, key: &str, holder: &str, spec: &LimitSpec, ok: bool) -> Result<LimitStatus> {
        self.call(if ok { "success" } else { "failure" }, key, holder, spec, 0).await.map(|(_, s)| s)
    }

    /// Holds every request for `key` back for `wait`, fleet-wide (e.g. HTTP 429 Retry-After).
    pub async fn slow_down(&self, key: &str, spec: &LimitSpec, wait: Duration) -> Result<()> {
        self.call("slowdown", key, "", spec, wait.as_millis() as u64).await.map(|_| ())
    }

    /// The key's breaker and tokens.
    pub async fn status(&self, key: &str, spec: &LimitSpec) -> Result<LimitStatus> {
        self.call("status", key, "", spec, 0).await.map(|(_, s)| s)
    }

    /// Limit keys with state in Redis (a rate, a breaker, slots or overrides), sorted, at
    /// most `max` (a SCAN of every primary: for operators, never a worker's hot path).
    pub async fn keys(&self, max: usize) -> Result<Vec<String>> {
        let pattern = format!("{}:{{lim:*}}:*", self.prefix);
        let raw = self.conn.clone().scan_match(&pattern, 1000).await?;
        let mut out: Vec<String> = raw
            .iter()
            .filter_map(|k| {
                let k = std::str::from_utf8(k).ok()?;
                let start = k.find("{lim:")? + 5;
                let end = start + k[start..].find('}')?;
                Some(k[start..end].to_owned())
            })
            .collect();
        out.sort();
        out.dedup();
        out.truncate(max);
        Ok(out)
    }

    /// One key's overrides and live state.
    pub async fn inspect(&self, key: &str) -> Result<LimitView> {
        validate_limit_key(key).map_err(Error::Invalid)?;
        let k = LimitKeys::new(&self.prefix, key);
        let now = crate::envelope::now_ms();
        let (conf, brk, in_flight): (
            std::collections::HashMap<String, String>,
            std::collections::HashMap<String, String>,
            u64,
        ) = redis::pipe()
            .hgetall(k.key(LimitKey::Conf))
            .hgetall(k.key(LimitKey::Brk))
            .zcount(k.key(LimitKey::Cap), now, "+inf")
            .query_async(&mut self.conn.clone())
            .await?;
        let num = |m: &std::collections::HashMap<String, String>, f: &str| m.get(f).and_then(|v| v.parse::<f64>().ok());
        let overrides = (!conf.is_empty()).then(|| LimitSpec {
            rate: num(&conf, "rate"),
            burst: num(&conf, "burst").map_or(1, |b| b as u32),
            concurrency: num(&conf, "concurrency").map(|c| c as u32),
            breaker_failures: num(&conf, "failures").map(|f| f as u32),
            breaker_cooldown_ms: num(&conf, "cooldown_ms").map_or(0, |c| c as u64),
            process_rate: None,
        });
        let status = self.status(key, &LimitSpec::default()).await?;
        Ok(LimitView {
            key: key.to_owned(),
            overrides,
            breaker: status.breaker,
            failures: num(&brk, "failures").map_or(0, |f| f as u64),
            tokens: status.tokens,
            in_flight,
            slowed_until: num(&brk, "until").map(|u| u as u64).filter(|u| *u > now),
        })
    }

    /// Sets run-time overrides for `key` (they win over config); `None` fields are cleared.
    pub async fn set_spec(&self, key: &str, spec: &LimitSpec) -> Result<()> {
        validate_limit_key(key).map_err(Error::Invalid)?;
        spec.validate().map_err(Error::Invalid)?;
        let conf = &LimitKeys::new(&self.prefix, key).key(LimitKey::Conf);
        let mut pipe = redis::pipe();
        pipe.atomic().del(conf).ignore();
        let mut fields: Vec<(&str, String)> = vec![("burst", spec.burst.max(1).to_string())];
        if let Some(r) = spec.rate {
            fields.push(("rate", r.to_string()));
        }
        if let Some(c) = spec.concurrency {
            fields.push(("concurrency", c.to_string()));
        }
        if let Some(f) = spec.breaker_failures {
            fields.push(("failures", f.to_string()));
            fields.push(("cooldown_ms", spec.breaker_cooldown_ms.to_string()));
        }
        pipe.hset_multiple(conf, &fields).ignore();
        let _: () = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(())
    }
}
