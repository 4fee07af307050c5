//! Errors of the `fleet-jobs` client and backend.

/// An error from enqueueing or inspecting jobs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis could not be reached or refused a command.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Arguments could not be encoded as JSON.
    #[error("job arguments for kind {kind:?} could not be encoded: {source}")]
    Encode {
        /// The job kind.
        kind: String,
        /// The serializer's error.
        source: serde_json::Error,
    },
    /// An enqueue option or name is invalid.
    #[error("invalid job: {0}")]
    Invalid(String),
    /// The enqueue would take a tenant past its queued-job quota on a queue; nothing was
    /// written.
    #[error("tenant {tenant:?} has {open} unfinished jobs on queue {queue:?}, its quota is {quota}")]
    QuotaExceeded {
        /// The tenant.
        tenant: String,
        /// The queue.
        queue: String,
        /// Its jobs not finished on the queue.
        open: u64,
        /// Its quota there.
        quota: u64,
    },
    /// Redis returned data Fleet did not write (another program changed the keys).
    #[error("unexpected data in redis: {0}")]
    Corrupt(String),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
