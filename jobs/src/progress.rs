//! What a running job reports: its progress (a percentage, or done of total, and a
//! short message) and its result (JSON, at most [`MAX_RESULT_BYTES`]).
//!
//! Both are kept beside the job's record, in the queue's `progress` and `results`
//! hashes (under the queue's hash tag), written by the `record` script only while the
//! job runs under the writer's lease token, and deleted with the record: they live as
//! long as the finished record does (the worker's `retention`). The worker throttles
//! progress (see `fleet_kit::report`) and appends each write it makes to the job's
//! tenant's event stream as a `job.progress` event; results are never copied into the
//! stream.

use crate::conn::RedisConn;
use crate::error::Result;
use crate::events::TenantEvent;
use crate::keys::QueueKeys;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Largest result, in bytes of JSON: 64 KiB. A larger one is refused with a clear error.
pub const MAX_RESULT_BYTES: usize = 64 * 1024;
/// Longest progress message, in characters; a longer one is cut.
pub const MAX_MESSAGE_CHARS: usize = 200;
/// Least time between two progress writes of one job (at most 4 a second); the
/// reports in between are coalesced into the newest, which is always written.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// A job's progress as last reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// 0 to 100.
    pub percent: f64,
    /// Units done, when reported as done of total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<u64>,
    /// Units in all, when reported as done of total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// A short message (at most [`MAX_MESSAGE_CHARS`] characters).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When it was reported, ms since the epoch.
    pub at: u64,
}

impl Progress {
    /// `percent` (clamped to 0–100; not a number is 0) with `message` (cut to
    /// [`MAX_MESSAGE_CHARS`] characters).
    pub fn percent(percent: f64, message: impl Into<String>) -> Self {
        let percent = if percent.is_nan() { 0.0 } else { percent.clamp(0.0, 100.0) };
        Progress { percent, done: None, total: None, message: cut(message.into()), at: crate::envelope::now_ms() }
    }

    /// `done` of `total` units (done is capped at total; a total of 0 is 100 %).
    pub fn count(done: u64, total: u64, message: impl Into<String>) -> Self {
        let done = done.min(total);
        let percent = if total == 0 { 100.0 } else { done as f64 * 100.0 / total as f64 };
        Progress { done: Some(done), total: Some(total), ..Progress::percent(percent, message) }
    }
}

fn cut(mut message: String) -> String {
    if let Some((i, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS) {
        message.truncate(i);
    }
    message
}

/// Why a result is not recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultError {
    /// Over [`MAX_RESULT_BYTES`].
    #[error(
        "the job's result is {0} bytes of JSON, over the limit of {MAX_RESULT_BYTES} (64 KiB): keep large outputs elsewhere (e.g. object storage) and record a reference"
    )]
    TooLarge(usize),
    /// The value does not encode as JSON.
    #[error("the job's result does not encode as JSON: {0}")]
    NotJson(String),
}

/// A value as a result's JSON text, or why it cannot be one.
pub fn result_json<T: Serialize + ?Sized>(value: &T) -> std::result::Result<String, ResultError> {
    let json = serde_json::to_string(value).map_err(|e| ResultError::NotJson(e.to_string()))?;
    if json.len() > MAX_RESULT_BYTES {
        return Err(ResultError::TooLarge(json.len()));
    }
    Ok(json)
}

/// One running attempt, as its writes name it.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Queue.
    pub queue: String,
    /// Job id.
    pub id: String,
    /// Its lease token: writes apply only while the job runs under it.
    pub token: String,
    /// Kind (for the events).
    pub kind: String,
    /// Attempt number (for the events).
    pub attempt: u32,
    /// The job's tenant: its progress goes to this tenant's stream only.
    pub tenant: Option<String>,
    /// The job's batch, if any (for the events).
    pub batch: Option<String>,
}

/// Writes what running jobs report (the worker's side). Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    conn: RedisConn,
    prefix: String,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("prefix", &self.prefix).finish()
    }
}

impl Recorder {
    /// Writes to `conn` under `prefix`.
    pub fn new(conn: RedisConn, prefix: impl Into<String>) -> Self {
        Recorder { conn, prefix: prefix.into() }
    }

    /// A client on the same connection and prefix (what a workflow step's handler uses).
    pub fn client(&self) -> crate::Client {
        crate::Client::new(self.conn.clone(), self.prefix.clone())
    }

    async fn record(&self, a: &Attempt, what: &str, json: &str) -> Result<bool> {
        let k = QueueKeys::new(&self.prefix, &a.queue);
        let mut call = k.invoke(&crate::scripts::RECORD);
        call.arg(&a.id).arg(&a.token).arg(what).arg(json);
        let n: i64 = call.invoke_async(&mut self.conn.clone()).await?;
        Ok(n == 1)
    }

    /// Records `p` as the attempt's progress and, when it was recorded and the job has
    /// a tenant, appends a `job.progress` event to that tenant's stream. False when
    /// the job no longer runs under the attempt's lease (nothing written).
    pub async fn progress(&self, a: &Attempt, p: &Progress) -> Result<bool> {
        let json = serde_json::to_string(p).map_err(|e| crate::Error::Corrupt(e.to_string()))?;
        if !self.record(a, "progress", &json).await? {
            return Ok(false);
        }
        if let Some(tenant) = &a.tenant {
            let event = TenantEvent {
                event_type: "job.progress".to_owned(),
                queue: a.queue.clone(),
                id: a.id.clone(),
                kind: a.kind.clone(),
                attempt: a.attempt,
                batch: a.batch.clone(),
                at: p.at,
                data: serde_json::to_value(p).ok(),
            };
            // A notification: the record above is the truth; a lost append is logged.
            let mut conn = self.conn.clone();
            if let Err(e) = crate::events::append(&mut conn, &self.prefix, &[(tenant.clone(), event)]).await {
                tracing::warn!(error = %e, job = %a.id, "job.progress event not appended to its tenant's stream");
            }
        }
        Ok(true)
    }

    /// Records `json` (checked by [`result_json`]) as the job's result. False when the
    /// job no longer runs under the attempt's lease (nothing written).
    pub async fn result(&self, a: &Attempt, json: &str) -> Result<bool> {
        self.record(a, "result", json).await
    }
}

/// The progress and result kept for a job, as stored (see [`read`]).
pub(crate) fn decode(
    progress: Option<Vec<u8>>,
    result: Option<Vec<u8>>,
) -> (Option<Progress>, Option<Box<serde_json::value::RawValue>>) {
    let progress = progress.and_then(|p| serde_json::from_slice(&p).ok());
    let result =
        result.and_then(|r| String::from_utf8(r).ok()).and_then(|r| serde_json::value::RawValue::from_string(r).ok());
    (progress, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_bounded() {
        assert_eq!(Progress::percent(140.0, "").percent, 100.0);
        assert_eq!(Progress::percent(f64::NAN, "").percent, 0.0);
        assert_eq!(Progress::percent(-1.0, "").percent, 0.0);
        let p = Progress::count(30, 120, "analysing");
        assert_eq!((p.percent, p.done, p.total, p.message.as_str()), (25.0, Some(30), Some(120), "analysing"));
        assert_eq!(Progress::count(5, 0, "").percent, 100.0);
        let long = "é".repeat(300);
        assert_eq!(Progress::percent(1.0, long).message.chars().count(), MAX_MESSAGE_CHARS);
    }

    #[test]
    fn results_over_64_kib_are_refused_clearly() {
        assert!(result_json(&serde_json::json!({"ok": true})).is_ok());
        let big = "x".repeat(MAX_RESULT_BYTES);
        let e = result_json(&big).unwrap_err();
        assert_eq!(e, ResultError::TooLarge(MAX_RESULT_BYTES + 2));
        assert!(e.to_string().contains("over the limit of 65536"), "{e}");
    }
}
