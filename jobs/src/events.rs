//! Live job events per tenant: what became of each of a tenant's jobs (succeeded,
//! retrying, dead, expired), kept in one capped Redis stream per tenant so an upstream
//! app can follow its work ("analysing 120 / 300") and resume after a reconnect.
//!
//! Workers append after their completions are applied (one pipelined round trip per
//! acknowledged batch that holds tenant jobs; jobs without a tenant cost nothing). The
//! stream is a notification channel, not the record: a job's state in its queue is the
//! truth, and an append lost to a Redis error is logged, never retried at the expense
//! of the ack path. The HTTP API serves it as server-sent events (`GET /v1/stream`).

use crate::conn::RedisConn;
use crate::error::Result;
use serde::{Deserialize, Serialize};

/// Entries kept per tenant stream (approximately: Redis trims whole nodes).
pub const STREAM_MAX_LEN: usize = 10_000;

/// The stream key of `tenant`: its own hash tag, apart from every queue.
pub fn stream_key(prefix: &str, tenant: &str) -> String {
    format!("{prefix}:{{tenant:{tenant}}}:events")
}

/// What became of one job, or a domain event of the tenant (a double booking found in its
/// calendars, a new message in a client's timeline) carried in `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantEvent {
    /// `job.succeeded`, `job.retrying`, `job.dead`, `job.expired`, `job.progress` (its
    /// `data` the progress, see `crate::progress`), or a domain event type
    /// such as `calendar.conflict.detected` or `comms.entry.created`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Queue (empty for domain events).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub queue: String,
    /// Job id, or the domain event's id (stable: a consumer dedups by it).
    pub id: String,
    /// Kind (empty for domain events).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// The attempt that ended this way (0 for domain events).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
    /// The batch the job belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    /// When it was recorded (ms since the epoch).
    pub at: u64,
    /// A domain event's payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl TenantEvent {
    /// A domain event: `event_type` with its stable `id` and payload.
    pub fn domain(event_type: impl Into<String>, id: impl Into<String>, at: u64, data: serde_json::Value) -> Self {
        TenantEvent {
            event_type: event_type.into(),
            queue: String::new(),
            id: id.into(),
            kind: String::new(),
            attempt: 0,
            batch: None,
            at,
            data: Some(data),
        }
    }
}

/// Appends each `(tenant, event)` to its tenant's stream: one pipelined round trip on a
/// single server; on a cluster, where each tenant's stream has its own slot, one pipeline
/// per tenant, sent at once.
pub async fn append(conn: &mut RedisConn, prefix: &str, events: &[(String, TenantEvent)]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut pipes: Vec<redis::Pipeline> = Vec::new();
    let mut by_tenant: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (tenant, event) in events {
        let data = serde_json::to_string(event).map_err(|e| crate::Error::Corrupt(e.to_string()))?;
        let group = if conn.is_cluster() { tenant.as_str() } else { "" };
        let at = *by_tenant.entry(group).or_insert_with(|| {
            pipes.push(redis::pipe());
            pipes.len() - 1
        });
        pipes[at]
            .cmd("XADD")
            .arg(stream_key(prefix, tenant))
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_MAX_LEN)
            .arg("*")
            .arg("e")
            .arg(data)
            .ignore();
    }
    let sends = pipes.iter().map(|pipe| {
        let mut conn = conn.clone();
        async move { pipe.query_async::<()>(&mut conn).await }
    });
    futures::future::try_join_all(sends).await?;
    Ok(())
}

/// Up to `count` events of `tenant` after the stream id `after` (`"$"`-like starts are
/// the caller's: pass [`latest_id`]'s answer to see only new events, `"0"` for all kept).
/// Entries whose data does not decode are skipped.
pub async fn read_after(
    conn: &mut RedisConn,
    prefix: &str,
    tenant: &str,
    after: &str,
    count: usize,
) -> Result<Vec<(String, TenantEvent)>> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream_key(prefix, tenant))
        .arg(format!("({after}"))
        .arg("+")
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    Ok(reply
        .ids
        .into_iter()
        .filter_map(|entry| {
            let data: String = entry.get("e")?;
            let event = serde_json::from_str(&data).ok()?;
            Some((entry.id, event))
        })
        .collect())
}

/// The id of the newest event of `tenant`, or `"0-0"` when there is none.
pub async fn latest_id(conn: &mut RedisConn, prefix: &str, tenant: &str) -> Result<String> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(stream_key(prefix, tenant))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(reply.ids.into_iter().next().map(|e| e.id).unwrap_or_else(|| "0-0".to_owned()))
}

/// Whether `id` has the shape of a stream id (`<ms>-<seq>` or `<ms>`), as a client's
/// `Last-Event-ID` must.
pub fn is_stream_id(id: &str) -> bool {
    let mut parts = id.splitn(2, '-');
    let ms = parts.next().unwrap_or("");
    let ok_num = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    ok_num(ms) && parts.next().is_none_or(ok_num)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_are_checked() {
        assert!(is_stream_id("1700000000000-0"));
        assert!(is_stream_id("0"));
        assert!(!is_stream_id(""));
        assert!(!is_stream_id("1-"));
        assert!(!is_stream_id("+"));
        assert!(!is_stream_id("1-2-3"));
        assert!(!is_stream_id("abc"));
    }

    #[test]
    fn each_tenant_has_its_own_slot() {
        assert_eq!(stream_key("fleet", "acme"), "fleet:{tenant:acme}:events");
    }
}
