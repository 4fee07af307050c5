//! The catalogue of job kinds: argument types with their stable kind names.
//!
//! Workers register a handler per kind (see `fleet-worker`); apps enqueue these
//! types with the [`Client`](crate::Client).

pub mod probe;

pub use probe::{ProbeAction, ProbeArgs};

/// Every kind in the catalogue, by stable name.
pub const KINDS: &[&str] = &[probe::ProbeArgs::KIND_NAME];
