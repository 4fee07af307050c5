//! One module per job kind, each with its handler and tests.

pub mod probe;
pub mod webhook;
