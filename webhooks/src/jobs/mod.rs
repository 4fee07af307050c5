//! The webhook job kinds.

pub mod deliver;
pub mod intake;
pub mod publish;

pub use deliver::{Deliver, WebhookSettings, parse_retry_after};
