//! One function per engine script call. The engine's tasks use them; tests,
//! benchmarks and tools can drive a queue step by step with them too.

use super::{Completion, EngineConfig, Op, RawJob};
use crate::conn::RedisConn;
use crate::keys::QueueKeys;
use crate::scripts;
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

/// Marks an envelope whose stored bytes are not UTF-8 (see [`envelope_text`]).
pub const NOT_UTF8: &str = "\u{0}fleet:envelope-not-utf-8\u{0}";

/// A leased envelope as text. Bytes that are not UTF-8 are never run with their
/// arguments mangled by a lossy conversion: the text becomes [`NOT_UTF8`], which no
/// decoder accepts, so the job goes to the dead letters with that reason (its stored
/// bytes stay as they were, for an operator to inspect).
fn envelope_text(v: Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8(b).unwrap_or_else(|_| NOT_UTF8.to_owned()),
        other => string(other),
    }
}

/// Promotes due scheduled jobs (at most `cfg.promote_limit`) and leases up to
/// `want` ready jobs for `cfg.lease`, in one script call, for a caller that holds no
/// job of this queue (so it may be given one suspect, alone: see [`lease_for`]).
pub async fn lease(conn: &mut RedisConn, k: &QueueKeys, cfg: &EngineConfig, want: usize) -> RedisResult<Leased> {
    lease_for(conn, k, cfg, want, true).await
}

/// Like [`lease`]. `holds_nothing`: the caller holds no job of this queue, so it may be
/// given one suspect (a job that was running when its worker stopped) to run alone;
/// then it must lease nothing else until that job has finished.
pub async fn lease_for(
    conn: &mut RedisConn,
    k: &QueueKeys,
    cfg: &EngineConfig,
    want: usize,
    holds_nothing: bool,
) -> RedisResult<Leased> {
    let v: Vec<Value> = k
        .invoke(&scripts::FETCH)
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
            envelope: envelope_text(env),
            lost: tokio_util::sync::CancellationToken::new(),
        });
    }
    Ok(Leased { now, next_due, paused, suspects_waiting: flags == 1, isolated: flags == 2, jobs })
}

/// What became of one completion in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckFlag {
    /// Refused: its lease was taken back and the job moved on (`stats.stale`), or the
    /// worker sent `Lost` (nothing to apply).
    Refused,
    /// Applied now.
    Applied,
    /// Applied before: this is a resend of a completion whose reply was lost
    /// (`stats.duplicate_acks`).
    Duplicate,
    /// The job's record is gone (finished and deleted): nothing to apply (`stats.gone_acks`).
    Gone,
    /// Applied now although its lease had expired and been taken back, because no other
    /// attempt had started (`stats.late_acks`): the job does not run again.
    Late,
}

impl AckFlag {
    fn from_wire(f: i64) -> Self {
        match f {
            1 => AckFlag::Applied,
            2 => AckFlag::Duplicate,
            3 => AckFlag::Gone,
            4 => AckFlag::Late,
            _ => AckFlag::Refused,
        }
    }

    /// Whether the completion's effect is in Redis (applied now or before).
    pub fn applied(self) -> bool {
        matches!(self, AckFlag::Applied | AckFlag::Duplicate | AckFlag::Late)
    }
}

/// What one completion call returned.
#[derive(Debug, Default)]
pub struct Completed {
    /// One flag per completion: true = its effect is in Redis (applied by this call, or
    /// before by the same completion sent earlier), false = refused or job gone.
    pub applied: Vec<bool>,
    /// One flag per completion, in detail.
    pub flags: Vec<AckFlag>,
    /// Batches whose last job this call finished: their callbacks are due.
    pub finished_batches: Vec<String>,
}

/// Applies completions in one script call.
pub async fn complete(
    conn: &mut RedisConn,
    k: &QueueKeys,
    cfg: &EngineConfig,
    batch: &[Completion],
) -> RedisResult<Completed> {
    let mut inv = k.invoke(&scripts::ACK);
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
        inv.arg(&c.id)
            .arg(&c.token)
            .arg(c.op.wire())
            .arg(delay)
            .arg(entry)
            .arg(c.batch.as_deref().unwrap_or(""))
            .arg(c.attempt);
    }
    let out: Vec<Value> = inv.invoke_async(conn).await?;
    let mut done = Completed::default();
    for v in out {
        match v {
            Value::Int(f) => {
                let flag = AckFlag::from_wire(f);
                done.applied.push(flag.applied());
                done.flags.push(flag);
            }
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
    conn: &mut RedisConn,
    k: &QueueKeys,
    cfg: &EngineConfig,
    held: &[(String, String)],
) -> RedisResult<HeartbeatReport> {
    let mut inv = k.invoke(&scripts::HEARTBEAT);
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

/// Most removals per structure in one janitor call.
pub const JANITOR_LIMIT: usize = 500;

/// How long the counters of a finished batch are kept after its callbacks were enqueued.
pub const BATCH_KEEP: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// What one janitor call removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Finished records (succeeded, expired, cancelled) past their retention, deleted.
    pub expired: u64,
    /// Dead letters evicted (past their age, or over the count cap).
    pub evicted: u64,
    /// Unique keys past their window, forgotten.
    pub unique_keys: u64,
    /// Counters of finished batches, forgotten.
    pub batches: u64,
    /// Whether a structure still holds due entries (call again).
    pub more: bool,
}

/// Time-based expiry of one queue, bounded: removes at most `limit` entries per
/// structure (finished records past retention, dead letters past their age or over
/// the cap, unique keys past their window, counters of batches finished a week ago).
pub async fn janitor(conn: &mut RedisConn, k: &QueueKeys, cfg: &EngineConfig, limit: usize) -> RedisResult<Swept> {
    let v: Vec<i64> = k
        .invoke(&scripts::JANITOR)
        .arg(limit.max(1))
        .arg(cfg.dead_max_count)
        .arg(cfg.dead_max_age.as_millis() as u64)
        .arg(BATCH_KEEP.as_millis() as u64)
        .invoke_async(conn)
        .await?;
    let g = |i: usize| v.get(i).copied().unwrap_or(0).max(0) as u64;
    Ok(Swept { expired: g(0), evicted: g(1), unique_keys: g(2), batches: g(3), more: g(4) == 1 })
}
