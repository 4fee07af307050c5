//! # fleet-jobs
//!
//! The contract and the engine of Fleet, a durable job-processing worker fleet:
//! the job envelope, the catalogue of job kinds, the typed [`Client`] that
//! enqueues jobs, and the Redis backend that workers run behind apalis-core's
//! `Backend` trait. Light dependencies only, so any Rust app can depend on it
//! to enqueue typed jobs.
//!
//! ## Layout
//!
//! * [`envelope`]: what is stored for every job (id, kind, args, attempts, times, priority, trace).
//! * [`kind`]: the [`JobArgs`] trait that gives typed arguments a stable kind name and defaults.
//! * [`catalogue`]: the job kinds Fleet knows, by stable name.
//! * [`client`]: enqueue one, with options, or in bulk; read job and queue state.
//! * [`dedup`]: dedup modes per key (debounce, replace, keep-last) beside the unique key's throttle.
//! * [`conn`]: one connection type for a single Redis and a Redis Cluster (the URL forms).
//! * [`archive`]: finished jobs queued for the scheduler's archive in PostgreSQL.
//! * [`admin`]: the operators' data API (queues, jobs by state, dead letters, replay, purge).
//! * [`browse`]: jobs by state with filters, a page at a time; retry now and delete of one job.
//! * [`backend`]: the per-queue engine (fetcher, acker, heartbeat) and the apalis-core backend.
//! * [`limits`]: fleet-wide rate limits, concurrency caps, circuit breakers and slow-downs per key.
//! * [`batches`]: groups of jobs with counters and callbacks fired exactly once.
//! * [`events`]: live job events per tenant (a capped Redis stream each).
//! * [`progress`]: what a running job reports (progress) and records (its result).
//! * [`retry`]: backoff policy for failed attempts.
//! * [`state`]: job states, queue counters, dead letters.
//! * [`keys`]: Redis key names; every key of a queue shares one hash tag.
//! * [`tenant`]: tenant names, the namespaces a tenant's keys live in, fair shares and quotas.
//! * [`workflows`]: DAGs of jobs across queues, with failure policies, fan-out and nesting.
//! * [`tls`]: `rediss://` with a CA file and a client certificate; the rustls provider.
//! * `scripts/`: the Lua scripts; each declares its keys and does bounded work.

pub mod admin;
pub mod archive;
pub mod backend;
pub mod batches;
pub mod browse;
pub mod catalogue;
pub mod client;
pub mod conn;
pub mod deadcaps;
pub mod dedup;
pub mod envelope;
pub mod error;
pub mod events;
pub mod health;
pub mod keys;
pub mod kind;
pub mod limits;
pub mod partitions;
pub mod progress;
pub mod retry;
mod scripts;
pub mod state;
pub mod tenant;
pub mod tls;
pub mod workflows;

pub use client::{CancelOutcome, Client, Durability, EnqueueOptions, Unique};
pub use dedup::{Dedup, DedupMode, Deduplicated, Enqueued};
pub use envelope::{Envelope, JobId, Priority};
pub use error::{Error, Result};
pub use kind::{Audience, JobArgs, KindOptions};
pub use state::{JobState, QueueStats};
pub use tls::RedisTls;

pub use conn::{RedisClient, RedisConn};

/// Opens the shared Redis connection for a URL setting with Fleet's timeouts (2 s to
/// connect, 5 s per response): one URL is a single server, several comma-separated
/// URLs (or a `redis+cluster://` URL) a Redis Cluster (see [`conn`]).
pub async fn connect(url: &str) -> Result<RedisConn> {
    RedisClient::open(url)?.connect().await
}

/// Like [`connect`], with the CA file and client certificate of `tls` for `rediss://`
/// URLs (one server or a cluster's nodes). A failed TLS handshake is
/// [`Error::TlsHandshake`], naming the server's address and rustls' reason.
pub async fn connect_with(url: &str, tls: &RedisTls) -> Result<RedisConn> {
    RedisClient::open_with(url, tls)?.connect().await
}
