//! # fleet-scheduler
//!
//! Fleet's control plane: cron schedules that enqueue each tick exactly once however
//! many replicas run, the HTTP enqueue API, and batches.
//!
//! ## Layout
//!
//! * [`schedule`]: cron with seconds and time zones, DST-correct fire times.
//! * [`ticker`]: enqueues due ticks; a tick's unique key makes any number of replicas
//!   enqueue it once.
//! * [`db`]: PostgreSQL pool and migrations (under an advisory lock).
//! * [`api`]: the HTTP API (jobs, batches, OpenAPI).

pub mod api;
pub mod db;
pub mod schedule;
pub mod ticker;

pub use fleet_jobs::Client;
