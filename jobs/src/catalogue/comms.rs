//! `comms.sync`: pull one communication source (an IMAP mailbox, an SMS/calls
//! provider account) into its supplier's timeline. The arguments are a reference: the
//! source's settings and sealed secrets live in PostgreSQL (`comms_sources`), its
//! cursors too, so a job carries no secret and a retry resumes where the last one
//! committed.

use crate::kind::{JobArgs, KindOptions};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Arguments of `comms.sync`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommsSync {
    /// The source (`comms_sources.id`).
    pub source_id: String,
}

impl JobArgs for CommsSync {
    const KIND: &'static str = "comms.sync";

    fn options() -> KindOptions {
        KindOptions {
            queue: "comms".into(),
            max_attempts: 8,
            timeout: Some(Duration::from_secs(600)),
            ..KindOptions::default()
        }
    }
}
