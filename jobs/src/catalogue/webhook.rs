//! `webhook.deliver`: deliver one event message to one subscribed endpoint, signed per
//! Standard Webhooks. The arguments are references; the message and endpoint live in
//! PostgreSQL (`webhook_messages`, `webhook_endpoints`).

use crate::kind::{Audience, JobArgs, KindOptions};
use serde::{Deserialize, Serialize};

/// Arguments of `webhook.deliver`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookDelivery {
    /// The message (also the `webhook-id` on every attempt).
    pub message_id: String,
    /// The endpoint.
    pub endpoint_id: String,
}

impl JobArgs for WebhookDelivery {
    const KIND: &'static str = "webhook.deliver";

    fn options() -> KindOptions {
        KindOptions { queue: "webhooks".into(), max_attempts: 10, ..KindOptions::default() }
    }
}

impl WebhookDelivery {
    /// The limit key of the endpoint: its fleet-wide rate, cap and breaker.
    pub fn limit_key(&self) -> String {
        format!("webhook:endpoint:{}", self.endpoint_id)
    }
}

/// Arguments of `webhook.intake`: one verified incoming call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookIntake {
    /// The configured provider it came from.
    pub provider: String,
    /// The sender's delivery id.
    pub id: String,
    /// The body as received (UTF-8; non-UTF-8 bytes are replaced).
    pub body: String,
    /// When it was received, ms since the epoch.
    pub received_at: u64,
    /// What else to do with it: the jobs the provider's configured routes asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<IntakeRoute>,
}

/// One job an incoming call leads to, decided by the scheduler's config for its provider
/// (never by the call itself): `kind` with `args`, for `tenant`, on `queue` or the kind's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntakeRoute {
    /// The tenant the provider's config names.
    pub tenant: String,
    /// A public kind, e.g. `webhook.publish`.
    pub kind: String,
    /// Queue, if not the kind's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The job's arguments, JSON.
    pub args: String,
}

impl JobArgs for WebhookIntake {
    const KIND: &'static str = "webhook.intake";

    fn options() -> KindOptions {
        KindOptions { queue: "webhooks".into(), max_attempts: 10, ..KindOptions::default() }
    }
}

/// Arguments of `webhook.publish`: an event to record and fan out to the tenant's
/// subscribed endpoints. The tenant is the job's own (set by the API from the caller's
/// key, or inherited by a batch callback); the message id is `msg_<job id>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookPublish {
    /// Event type, e.g. `portfolio.processed`.
    pub event_type: String,
    /// The payload, sent to subscribers byte for byte.
    pub payload: Box<serde_json::value::RawValue>,
}

impl JobArgs for WebhookPublish {
    const KIND: &'static str = "webhook.publish";
    const AUDIENCE: Audience = Audience::Public;

    fn options() -> KindOptions {
        KindOptions { queue: "webhooks".into(), max_attempts: 20, ..KindOptions::default() }
    }
}

/// The message id of the event published by the `webhook.publish` job `job_id`.
pub fn message_id(job_id: &str) -> String {
    format!("msg_{job_id}")
}
