//! Dedup modes: how enqueues that share a key collapse, besides the unique key's
//! throttle (the first job inside the window wins).
//!
//! Each mode is decided inside the one enqueue script call (`scripts/enqueue.lua`);
//! the fetch, completion, lease-reaping and cancel scripts let a key go when its job is
//! leased or ends (`scripts/prelude.lua`, "Dedup modes"), so a key is never left held by
//! a job that is gone.
//!
//! | mode | a new job with the key, while | does |
//! |---|---|---|
//! | [`DedupMode::Debounce`] | a job of the key has not started | takes its place (same id): its args, start moved to `delay` from now, never past `max_wait` after the burst's first job |
//! | [`DedupMode::Replace`] | a job of the key is ready or scheduled (never leased) | cancels it and is enqueued |
//! | [`DedupMode::KeepLast`] | a job of the key runs | waits (held) until that one ends; a job already waiting is cancelled for it |

use crate::envelope::JobId;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Longest debounce delay and max wait: 7 days (like the unique window).
pub const MAX_DEBOUNCE: Duration = Duration::from_secs(7 * 24 * 3600);

/// A dedup key and its mode (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dedup {
    /// The key, scoped to the queue (the HTTP API puts a tenant's under `tenant:<name>:`).
    pub key: String,
    /// How jobs with the key collapse.
    pub mode: DedupMode,
}

/// How enqueues with the same dedup key collapse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupMode {
    /// Each new job pushes the start of the pending one back to `delay` from now and
    /// gives it its args (the last args win), but never past `max_wait` after the first
    /// job of the burst, so a steady stream still runs at least every `max_wait`. Once
    /// the job is leased, the next one starts a new burst.
    Debounce {
        /// Quiet time after the last job before the job starts.
        delay: Duration,
        /// Longest time from the burst's first job to the start (at least `delay`).
        max_wait: Duration,
    },
    /// A pending job (ready or scheduled, never leased) with the key is cancelled and
    /// the new one (its args and options) is enqueued; if the key's job has started,
    /// the new one is simply enqueued.
    Replace,
    /// At most one running and one waiting job per key: the waiting one carries the
    /// latest args (a newer job cancels it and takes its place) and starts only when the
    /// running one ends (success, retry, dead letter, expiry, cancel, lost lease). A run
    /// that ends without finishing (retry, snooze, lost lease) while a newer job waits is
    /// superseded by it; with none waiting, it is itself the waiting job.
    KeepLast,
}

impl DedupMode {
    /// The mode's name in the API and in the envelope: `debounce`, `replace`, `keep_last`.
    pub fn name(self) -> &'static str {
        match self {
            DedupMode::Debounce { .. } => "debounce",
            DedupMode::Replace => "replace",
            DedupMode::KeepLast => "keep_last",
        }
    }

    /// The mode's letter in the enqueue script.
    pub(crate) fn letter(self) -> &'static str {
        match self {
            DedupMode::Debounce { .. } => "d",
            DedupMode::Replace => "p",
            DedupMode::KeepLast => "k",
        }
    }
}

/// The key and mode a job was enqueued with, as kept in its envelope (the unique key's
/// throttle shows as mode `throttle`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupTag {
    /// `throttle`, `debounce`, `replace` or `keep_last`.
    pub mode: String,
    /// The key as enqueued (a tenant's with its `tenant:<name>:` namespace).
    pub key: String,
}

/// What a key did to an enqueue (see [`crate::Client::enqueue_reported`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deduplicated {
    /// The unique key's window holds: the job holding it is returned, nothing created.
    Throttled,
    /// Merged into the key's pending job (the id returned): its args are now these and
    /// its start moved back.
    Debounced,
    /// Created; the key's pending job `previous` was cancelled for it.
    Replaced {
        /// The job it replaced.
        previous: JobId,
    },
    /// Created, held until the key's running job `running` ends; a waiting job it
    /// replaced, if any, is `previous`.
    Waiting {
        /// The running job it waits for.
        running: JobId,
        /// The waiting job it replaced.
        previous: Option<JobId>,
    },
}

impl Deduplicated {
    /// The outcome's name in the API: `throttled`, `debounced`, `replaced`, `waiting`.
    pub fn name(&self) -> &'static str {
        match self {
            Deduplicated::Throttled => "throttled",
            Deduplicated::Debounced => "debounced",
            Deduplicated::Replaced { .. } => "replaced",
            Deduplicated::Waiting { .. } => "waiting",
        }
    }

    /// Reads the script's reply element `{ id, outcome, replaced, running }`.
    pub(crate) fn from_reply(outcome: &str, replaced: String, running: String) -> Option<Self> {
        let previous = (!replaced.is_empty()).then_some(JobId(replaced));
        match outcome {
            "throttled" => Some(Deduplicated::Throttled),
            "debounced" => Some(Deduplicated::Debounced),
            "replaced" => previous.map(|previous| Deduplicated::Replaced { previous }),
            "waiting" => Some(Deduplicated::Waiting { running: JobId(running), previous }),
            _ => None,
        }
    }
}

/// The result of [`crate::Client::enqueue_reported`]: the job that holds the enqueue and
/// what its key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// The surviving job: the new one, or the one the enqueue collapsed into.
    pub id: JobId,
    /// `None`: created as asked (or the same id existed already).
    pub deduplicated: Option<Deduplicated>,
}

/// Checks a dedup request: a key of 1 to 200 characters without control characters, a
/// debounce delay of at least 1 ms and a max wait from the delay to [`MAX_DEBOUNCE`].
pub fn check(d: &Dedup) -> Result<(), String> {
    if d.key.is_empty() || d.key.len() > 300 || d.key.chars().any(char::is_control) {
        return Err("a dedup key must be 1 to 300 characters without control characters".into());
    }
    if let DedupMode::Debounce { delay, max_wait } = d.mode {
        if delay.is_zero() || delay > MAX_DEBOUNCE {
            return Err(format!("a debounce delay must be 1 ms to {} s", MAX_DEBOUNCE.as_secs()));
        }
        if max_wait < delay || max_wait > MAX_DEBOUNCE {
            return Err(format!(
                "a debounce max wait must be at least the delay and at most {} s",
                MAX_DEBOUNCE.as_secs()
            ));
        }
    }
    Ok(())
}

/// A caller-chosen id a keyed job may have: one the enqueue script can name without
/// JSON escapes (letters, digits, `-`, `_`, `.`, `:`).
pub(crate) fn plain_id(id: &str) -> bool {
    id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}
