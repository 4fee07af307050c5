//! The job envelope: what Fleet stores for every job, whatever its kind.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt;

/// A job's identifier: a time-ordered UUID (v7) in its 32-digit hex form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub String);

impl JobId {
    /// A new, unique, time-ordered id.
    pub fn new() -> Self {
        JobId(uuid::Uuid::now_v7().simple().to_string())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for JobId {
    fn from(s: &str) -> Self {
        JobId(s.to_owned())
    }
}

/// Priority levels; within a level jobs run in the order they became ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Served before everything else.
    High,
    /// The default level.
    #[default]
    Default,
    /// Served only when no high or default job is ready.
    Low,
}

impl Priority {
    /// The digit used in Redis (0 = high).
    pub(crate) fn digit(self) -> u8 {
        match self {
            Priority::High => 0,
            Priority::Default => 1,
            Priority::Low => 2,
        }
    }

    pub(crate) fn from_digit(d: u8) -> Self {
        match d {
            0 => Priority::High,
            2 => Priority::Low,
            _ => Priority::Default,
        }
    }
}

/// The stored envelope of a job. The attempt count is kept beside it in Redis
/// (it changes on every fetch) and is reported with each fetched job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// The job's id.
    pub id: JobId,
    /// The stable kind name that selects the handler (not a Rust type name).
    pub kind: String,
    /// The queue the job was enqueued on.
    pub queue: String,
    /// The job's arguments, as JSON.
    pub args: Box<RawValue>,
    /// Attempts allowed before the job goes to the dead letters.
    pub max_attempts: u32,
    /// When the job was enqueued (milliseconds since the Unix epoch, client clock).
    pub enqueued_at: u64,
    /// When the job was first due (milliseconds since the Unix epoch).
    pub run_at: u64,
    /// Priority level.
    #[serde(default)]
    pub priority: Priority,
    /// W3C trace context (`traceparent`) of the enqueuing request, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    /// Execution timeout for one attempt, overriding the kind's, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// A job not started by this time (ms since the epoch) expires instead of running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<u64>,
    /// The tenant that enqueued it (through the HTTP API), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The batch it belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    /// Its unique or dedup key and mode, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<crate::dedup::DedupTag>,
}

/// A W3C `traceparent` (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`), split;
/// `None` when malformed or all-zero.
pub fn parse_traceparent(v: &str) -> Option<(&str, &str)> {
    let parts: Vec<&str> = v.trim().split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    match parts.as_slice() {
        [ver, trace, parent, flags]
            if hex(ver, 2)
                && *ver != "ff"
                && hex(trace, 32)
                && hex(parent, 16)
                && hex(flags, 2)
                && trace.bytes().any(|b| b != b'0')
                && parent.bytes().any(|b| b != b'0') =>
        {
            Some((trace, parent))
        }
        _ => None,
    }
}

/// Milliseconds since the Unix epoch on this host's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_checked() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(parse_traceparent(ok), Some(("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f35-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }
}
