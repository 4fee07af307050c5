//! # fleet-kit
//!
//! What a job kind is written with, and tested with, wherever it lives: the domain crates
//! (webhooks, images, calendar, comms) implement their handlers against this crate alone,
//! and the worker runs them.
//!
//! ## Layout
//!
//! * [`handler`]: the [`Handler`] trait, [`JobError`] (what happens next: retry, retry
//!   after, give up, snooze, slow down) and [`JobContext`] (the job, its tenant, a bounded
//!   pool for CPU work).
//! * [`limits`]: fleet-wide rate limits, concurrency caps and breakers around attempts.
//! * [`report`]: progress and a result, reported by a handler while it runs.
//! * [`testing`]: one attempt of a handler in a unit test, without Redis or a worker
//!   ([`testing::perform_job`], [`testing::TestJob`], `assert_give_up` and kin); with the
//!   `postgres` feature, a fresh migrated database per test (`testing::TestDb`).
//! * `postgres` (feature `postgres`): how the binaries reach PostgreSQL, TLS modes included
//!   (`postgres::PgTls`).

pub mod handler;
pub mod limits;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod report;
pub mod testing;

pub use handler::{CpuPool, Handler, JobContext, JobError, panic_message};
