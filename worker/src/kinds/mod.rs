//! One module per job kind, each with its handler and tests.

pub mod calendar;
pub mod comms;
pub mod image;
pub mod probe;
pub mod webhook;
