//! `notify.send`: one notification to one recipient over its channels (email, SMS, Web
//! Push, in-app). The arguments are a reference: the notification (template, data,
//! category, dedup key) and its per-channel send records live in PostgreSQL
//! (`notifications`, `notify_sends`), so a retry sends only the channels not yet sent.
//! Enqueued by Fleet (`POST /v1/notifications`) with the notification's id as the job
//! id: enqueueing it twice makes one job.

use crate::kind::{JobArgs, KindOptions};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Arguments of `notify.send`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySend {
    /// The notification (`notifications.id`).
    pub notification: String,
}

impl JobArgs for NotifySend {
    const KIND: &'static str = "notify.send";

    fn options() -> KindOptions {
        KindOptions {
            queue: "notify".into(),
            max_attempts: 8,
            timeout: Some(Duration::from_secs(120)),
            ..KindOptions::default()
        }
    }
}
