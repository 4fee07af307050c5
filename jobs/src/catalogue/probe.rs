//! `probe`: a scripted job whose arguments say what to do. Tests and benchmarks use it
//! to drive every path of the engine.

use crate::kind::{Audience, JobArgs, KindOptions};
use serde::{Deserialize, Serialize};

/// What a probe job does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case")]
pub enum ProbeAction {
    /// Succeed at once.
    Succeed,
    /// Fail (retryably) on the first `times` attempts, then succeed.
    FailTimes {
        /// Attempts that fail.
        times: u32,
    },
    /// Always fail (retryably).
    Fail,
    /// Panic.
    Panic,
    /// Kill the whole worker process (abort), as a crashing native library would.
    /// For crash-recovery tests: the job's lease expires and it is retried elsewhere.
    Crash,
    /// Sleep, then succeed.
    Sleep {
        /// Milliseconds to sleep.
        ms: u64,
    },
    /// Give up at once: straight to the dead letters.
    GiveUp,
    /// Fail and ask to be retried after a delay (like HTTP 429 Retry-After), `times` times.
    RetryAfter {
        /// Milliseconds to wait.
        ms: u64,
        /// Attempts that ask for it.
        times: u32,
    },
    /// Snooze for `ms` at a time until the clock passes `until` (ms since the
    /// epoch), then succeed.
    SnoozeUntil {
        /// Milliseconds to snooze.
        ms: u64,
        /// When to stop snoozing.
        until: u64,
    },
    /// Report progress `steps` times (1 of `steps`, 2 of `steps`, ...), `step_ms` apart
    /// (0: only yielding between reports), then record the result
    /// `{"steps": steps, "pad": "<pad_bytes x's>"}` (a large `pad_bytes` makes it too
    /// large: the job gives up) and succeed.
    Report {
        /// Progress reports.
        steps: u32,
        /// Milliseconds between reports.
        #[serde(default)]
        step_ms: u64,
        /// Bytes of padding in the result.
        #[serde(default)]
        pad_bytes: usize,
    },
}

/// Arguments of the `probe` kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeArgs {
    /// What to do.
    #[serde(flatten)]
    pub action: ProbeAction,
    /// A free label, handy to tell jobs apart in tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// A limit key the job must be admitted on before it runs (see the `limits` config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_key: Option<String>,
}

impl ProbeArgs {
    /// The stable kind name.
    pub const KIND_NAME: &'static str = "probe";

    /// A probe that does `action`.
    pub fn new(action: ProbeAction) -> Self {
        ProbeArgs { action, tag: None, limit_key: None }
    }

    /// The same probe, held by a limit key.
    pub fn limited(mut self, key: impl Into<String>) -> Self {
        self.limit_key = Some(key.into());
        self
    }

    /// The same probe with a tag.
    pub fn tagged(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }
}

impl JobArgs for ProbeArgs {
    const KIND: &'static str = Self::KIND_NAME;
    const AUDIENCE: Audience = Audience::Test;

    fn options() -> KindOptions {
        KindOptions { max_attempts: 5, ..KindOptions::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_have_a_readable_wire_form() {
        let a = ProbeArgs::new(ProbeAction::FailTimes { times: 2 });
        assert_eq!(serde_json::to_string(&a).unwrap(), r#"{"do":"fail_times","times":2}"#);
        let b: ProbeArgs = serde_json::from_str(r#"{"do":"sleep","ms":5,"tag":"x"}"#).unwrap();
        assert_eq!(b, ProbeArgs::new(ProbeAction::Sleep { ms: 5 }).tagged("x"));
    }
}
