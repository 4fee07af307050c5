//! # fleet-scheduler
//!
//! Fleet's control plane: cron schedules that enqueue each tick exactly once,
//! the HTTP enqueue API, batches, and the `fleetctl` operator CLI. Not built yet:
//! upstream apps enqueue through [`fleet_jobs::Client`] meanwhile.

pub use fleet_jobs::Client;
