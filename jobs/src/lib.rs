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
//! * [`admin`]: the operators' data API (queues, jobs by state, dead letters, replay, purge).
//! * [`backend`]: the per-queue engine (fetcher, acker, heartbeat) and the apalis-core backend.
//! * [`limits`]: fleet-wide rate limits, concurrency caps, circuit breakers and slow-downs per key.
//! * [`batches`]: groups of jobs with counters and callbacks fired exactly once.
//! * [`events`]: live job events per tenant (a capped Redis stream each).
//! * [`retry`]: backoff policy for failed attempts.
//! * [`state`]: job states, queue counters, dead letters.
//! * [`keys`]: Redis key names; every key of a queue shares one hash tag.
//! * [`tenant`]: tenant names, the namespaces a tenant's keys live in, fair shares and quotas.
//! * [`tls`]: `rediss://` with a CA file and a client certificate; the rustls provider.
//! * `scripts/`: the Lua scripts; each declares its keys and does bounded work.

pub mod admin;
pub mod backend;
pub mod batches;
pub mod catalogue;
pub mod client;
pub mod deadcaps;
pub mod envelope;
pub mod error;
pub mod events;
pub mod health;
pub mod keys;
pub mod kind;
pub mod limits;
pub mod retry;
mod scripts;
pub mod state;
pub mod tenant;
pub mod tls;

pub use client::{CancelOutcome, Client, EnqueueOptions, Unique};
pub use envelope::{Envelope, JobId, Priority};
pub use error::{Error, Result};
pub use kind::{Audience, JobArgs, KindOptions};
pub use state::{JobState, QueueStats};
pub use tls::RedisTls;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

/// Opens a self-reconnecting Redis connection with Fleet's timeouts (2 s to
/// connect, 5 s per response).
pub async fn connect(url: &str) -> Result<ConnectionManager> {
    connect_with(url, &RedisTls::default()).await
}

/// Like [`connect`], with the CA file and client certificate of `tls` for a `rediss://`
/// URL ([`tls::redis_client`]).
pub async fn connect_with(url: &str, tls: &RedisTls) -> Result<ConnectionManager> {
    let client = tls::redis_client(url, tls)?;
    connect_client(&client).await
}

/// Like [`connect`], from an existing `redis::Client`. A failed TLS handshake is
/// [`Error::TlsHandshake`], naming the server's address and rustls' reason.
pub async fn connect_client(client: &redis::Client) -> Result<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_with_config(client.clone(), config).await.map_err(|e| match tls::tls_failure(&e) {
        Some(reason) => Error::TlsHandshake { addr: tls::redis_addr(client), reason },
        None => Error::Redis(e),
    })
}
