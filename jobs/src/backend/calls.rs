//! One function per engine script call. The engine's tasks use them; tests,
//! benchmarks and tools can drive a queue step by step with them too.

use super::{Completion, EngineConfig, Op, RawJob};
use crate::keys::QueueKeys;
use crate::scripts;
use redis::aio::ConnectionManager;
use redis::{RedisResult, Value};

/// What one lease call returned.
#[derive(Debug)]
pub struct Leased {
    /// Redis clock at the call, ms since the epoch.
    pub now: i64,
    /// When the next scheduled job is due (Redis clock), or -1 if none.
    pub next_due: i64,
    /// Whether the queue is paused (then no jobs are leased).
    pub paused: bool,
    /// Suspects (jobs whose worker stopped while they ran) wait for a worker that holds
    /// nothing of this queue: the caller should drain and ask again holding nothing.
    pub suspects_waiting: bool,
    /// The one job returned is a suspect leased alone: lease nothing else until it ends.
    pub isolated: bool,
    /// The leased jobs, highest priority first.
    pub jobs: Vec<RawJob>,
}

/// What one heartbeat call returned.
#[derive(Debug, Default)]
pub struct HeartbeatReport {
    /// Expired leases (of any worker) taken back by this call.
    pub reaped: u64,
    /// Jobs the caller said it holds whose lease is no longer its own.
    pub lost: Vec<String>,
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        Value::BulkString(b) => std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()).unwrap_or(0),
        _ => 0,
    }
}

fn string(v: Value) -> String {
    match v {
        Value::BulkString(b) => {
            String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
        }
        Value::SimpleString(s) => s,
        Value::Int(i) => i.to_string(),
        _ => String::new(),
    }
}

/// Promotes due scheduled jobs (at most `cfg.promote_limit`) and leases up to
/// `want` ready jobs for `cfg.lease`, in one script call, for a caller that holds no
/// job of this queue (so it may be given one suspect, alone: see [`lease_for`]).
pub async fn lease(
    conn: &mut ConnectionManager,
    k: &QueueKeys,
    cfg: &EngineConfig,
    want: usize,
) -> RedisResult<Leased> {
    lease_for(conn, k, cfg, want, true).await
}

/// Like [`lease`]. `holds_nothing`: the caller holds no job of this queue, so it may be
/// given one suspect (a job that was running when its worker stopped) to run alone;
/// then it must lease nothing else until that job has finished.
pub async fn lease_for(
    conn: &mut ConnectionManager,
    k: &QueueKeys,
    cfg: &EngineConfig,
    want: usize,
    holds_nothing: bool,
) -> RedisResult<Leased> {
    let v: Vec<Value> = k
        .invoke(&scripts::FETCH, "jobs state att r0 r1 r2 sched leases stats wake conf suspects drain")
        .arg(want)
        .arg(cfg.lease.as_millis() as u64)
        .arg(cfg.promote_limit)
        .arg(u8::from(holds_nothing))
        .arg(&cfg.instance)
        .invoke_async(conn)
        .await?;
    let mut it = v.into_iter();
    let now = it.next().map(|v| int(&v)).unwrap_or(0);
    let next_due = it.next().map(|v| int(&v)).unwrap_or(-1);
    let paused = it.next().map(|v| int(&v)).unwrap_or(0) == 1;
    let flags = it.next().map(|v| int(&v)).unwrap_or(0);
    let mut jobs = Vec::new();
    while let (Some(id), Some(env), Some(att), Some(tok)) = (it.next(), it.next(), it.next(), it.next()) {
        jobs.push(RawJob {
            id: string(id),
            queue: cfg.queue.clone(),
            attempt: int(&att).max(1) as u32,
            token: string(tok),
            envelope: string(env),
            lost: tokio_util::sync::CancellationToken::new(),
        });
    }
    Ok(Leased { now, next_due, paused, suspects_waiting: flags == 1, isolated: flags == 2, jobs })
}

/// What one completion call returned.
#[derive(Debug, Default)]
pub struct Completed {
    /// One flag per completion: true = applied, false = refused (stale lease token).
    pub applied: Vec<bool>,
    /// Batches whose last job this call finished: their callbacks are due.
    pub finished_batches: Vec<String>,
}

/// Applies completions in one script call.
pub async fn complete(
    conn: &mut ConnectionManager,
    k: &QueueKeys,
    cfg: &EngineConfig,
    batch: &[Completion],
) -> RedisResult<Completed> {
    let mut inv =
        k.invoke(&scripts::ACK, "jobs state att r0 r1 r2 sched leases stats dead done hist wake batches batchdone");
    inv.arg(cfg.retention.as_millis() as u64)
        .arg(cfg.dead_max_count)
        .arg(cfg.dead_max_age.as_millis() as u64)
        .arg(cfg.history_cap.max(1));
    for c in batch {
        let (delay, entry) = match &c.op {
            Op::Retry { delay, record } => {
                (delay.as_millis() as u64, serde_json::to_string(record).unwrap_or_default())
            }
            Op::Dead { record } => (0, serde_json::to_string(record).unwrap_or_default()),
            Op::Snooze { delay } | Op::Defer { delay } => (delay.as_millis() as u64, String::new()),
            _ => (0, String::new()),
        };
        inv.arg(&c.id).arg(&c.token).arg(c.op.wire()).arg(delay).arg(entry).arg(c.batch.as_deref().unwrap_or(""));
    }
    let out: Vec<Value> = inv.invoke_async(conn).await?;
    let mut done = Completed::default();
    for v in out {
        match v {
            Value::Int(f) => done.applied.push(f == 1),
            other => done.finished_batches.push(string(other)),
        }
    }
    Ok(done)
}

/// Renews the leases of `held` (id, token) pairs, records `cfg.instance` as alive,
/// and takes back up to 100 expired leases of any worker, in one script call: each
/// such job's crash count goes up and it waits as a suspect, or ends dead at
/// `cfg.crash_limit` crashes (see `heartbeat.lua`).
pub async fn heartbeat(
    conn: &mut ConnectionManager,
    k: &QueueKeys,
    cfg: &EngineConfig,
    held: &[(String, String)],
) -> RedisResult<HeartbeatReport> {
    let mut inv = k.invoke(
        &scripts::HEARTBEAT,
        "jobs state att r0 r1 r2 leases stats dead hist workers wake batches batchdone workerjobs crashes suspects conf",
    );
    inv.arg(cfg.lease.as_millis() as u64)
        .arg(&cfg.instance)
        .arg(100)
        .arg(cfg.dead_max_count)
        .arg(cfg.dead_max_age.as_millis() as u64)
        .arg(cfg.history_cap.max(1))
        .arg(cfg.crash_limit.max(1));
    for (id, tok) in held {
        inv.arg(id).arg(tok);
    }
    let out: Vec<Value> = inv.invoke_async(conn).await?;
    let mut it = out.into_iter();
    let reaped = it.next().map(|v| int(&v)).unwrap_or(0).max(0) as u64;
    Ok(HeartbeatReport { reaped, lost: it.map(string).collect() })
}
