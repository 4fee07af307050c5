//! Job kinds: typed arguments with a stable kind name and default options.

use crate::envelope::Priority;
use serde::{Serialize, de::DeserializeOwned};
use std::time::Duration;

/// Typed arguments of one job kind.
///
/// `KIND` is the stable name stored with each job and used by workers to pick
/// the handler; renaming the Rust type never changes it. Arguments should be
/// ids and references, not database rows.
pub trait JobArgs: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Stable kind name, e.g. `"webhook.deliver"`.
    const KIND: &'static str;

    /// Who may enqueue jobs of this kind: internal by default, so a kind is never
    /// open to tenants by accident.
    const AUDIENCE: Audience = Audience::Internal;

    /// Defaults for jobs of this kind; enqueue options override them per job.
    fn options() -> KindOptions {
        KindOptions::default()
    }
}

/// Per-kind defaults used at enqueue time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindOptions {
    /// Queue the kind's jobs go to.
    pub queue: String,
    /// Attempts before the dead letters.
    pub max_attempts: u32,
    /// Priority level.
    pub priority: Priority,
    /// Timeout of one attempt; `None` uses the worker's default.
    pub timeout: Option<Duration>,
}

/// The default number of attempts (the first run plus retries).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 20;

impl Default for KindOptions {
    fn default() -> Self {
        KindOptions {
            queue: "default".to_owned(),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            priority: Priority::Default,
            timeout: None,
        }
    }
}

/// Who may enqueue a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Audience {
    /// Tenants, through the HTTP API and in batch and portfolio callbacks.
    Public,
    /// Only Fleet itself (deliveries, intake, syncs, pushes): the API refuses it.
    Internal,
    /// Tests and benchmarks (`probe`): the API takes it only where the config allows
    /// test kinds, and production workers do not run it unless told to.
    Test,
}
