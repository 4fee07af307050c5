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
    /// The Redis URL setting does not parse, or names cluster nodes that disagree.
    #[error("redis url: {0}")]
    RedisUrl(String),
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
    /// A workflow submission (or a step's run-time add) would take a tenant past its
    /// quota of workflow steps not yet ended; nothing was stored.
    #[error(
        "tenant {tenant:?} holds {open} workflow steps not yet ended; {asked} more would pass its quota of {quota}"
    )]
    WorkflowQuotaExceeded {
        /// The tenant.
        tenant: String,
        /// Steps of its workflows not yet ended.
        open: u64,
        /// Steps the refused call asked for.
        asked: u64,
        /// Its quota.
        quota: u64,
    },
    /// A TLS file of the Redis connection cannot be read or holds no PEM certificate (or
    /// key): fix the file or the setting naming it; retrying will not help.
    #[error("{setting} {}: {reason}", .path.display())]
    TlsFile {
        /// The setting (and its environment variable) that names the file.
        setting: &'static str,
        /// The file as configured.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS handshake with Redis failed: its certificate was refused (wrong CA, wrong
    /// host name, expired), it does not speak TLS on that port, or it refused the client
    /// certificate.
    #[error(
        "TLS handshake with Redis at {addr} failed: {reason} (check redis_tls.ca_file / FLEET_REDIS_CA_FILE, \
         the host name in the URL and the server's certificate)"
    )]
    TlsHandshake {
        /// `host:port` (never the URL, which may hold a password).
        addr: String,
        /// rustls' reason.
        reason: String,
    },
    /// An enqueue asked to be acknowledged once replicated ([`crate::client::Durability`])
    /// and fewer replicas confirmed it in time. The jobs were written on the primary (an
    /// enqueue of the same ids again is safe) but are lost if it dies before replicating them.
    #[error("enqueued on queue {queue:?} but held by {replicas} replicas of the {wanted} asked for in time")]
    NotReplicated {
        /// The queue.
        queue: String,
        /// Replicas that confirmed.
        replicas: u32,
        /// Replicas asked for.
        wanted: u32,
    },
    /// Redis returned data Fleet did not write (another program changed the keys).
    #[error("unexpected data in redis: {0}")]
    Corrupt(String),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
