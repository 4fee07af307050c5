//! The catalogue of job kinds: argument types with their stable kind names.
//!
//! Workers register a handler per kind (see `fleet-worker`); apps enqueue these
//! types with the [`Client`](crate::Client); the HTTP API checks kinds and
//! arguments against [`lookup`] before anything reaches Redis.

pub mod calendar;
pub mod comms;
pub mod image;
pub mod notify;
pub mod portfolio;
pub mod probe;
pub mod webhook;

pub use calendar::{CalendarPush, CalendarSync};
pub use comms::CommsSync;
pub use image::{ImageAnalyze, ImageVariants, WatermarkArgs};
pub use notify::NotifySend;
pub use portfolio::PortfolioSelect;
pub use probe::{ProbeAction, ProbeArgs};
pub use webhook::{IntakeRoute, WebhookDelivery, WebhookIntake, WebhookPublish};

use crate::kind::{Audience, JobArgs, KindOptions};
use serde_json::value::RawValue;

/// What the catalogue knows of one kind.
#[derive(Debug, Clone, Copy)]
pub struct KindInfo {
    /// Stable kind name.
    pub name: &'static str,
    /// Who may enqueue it.
    pub audience: Audience,
    /// The kind's defaults.
    pub options: fn() -> KindOptions,
    /// Checks JSON arguments against the kind's argument type.
    pub validate: fn(&RawValue) -> Result<(), String>,
}

fn info<A: JobArgs>() -> KindInfo {
    KindInfo {
        name: A::KIND,
        audience: A::AUDIENCE,
        options: A::options,
        validate: |raw| serde_json::from_str::<A>(raw.get()).map(|_| ()).map_err(|e| e.to_string()),
    }
}

/// Every kind in the catalogue.
pub fn kinds() -> Vec<KindInfo> {
    vec![
        info::<ProbeArgs>(),
        info::<WebhookDelivery>(),
        info::<WebhookIntake>(),
        info::<WebhookPublish>(),
        info::<ImageAnalyze>(),
        info::<ImageVariants>(),
        info::<PortfolioSelect>(),
        info::<CommsSync>(),
        info::<CalendarSync>(),
        info::<CalendarPush>(),
        info::<NotifySend>(),
    ]
}

/// The kinds tenants may enqueue (with test kinds when `test_kinds`).
pub fn public_kinds(test_kinds: bool) -> Vec<&'static str> {
    kinds()
        .into_iter()
        .filter(|k| k.audience == Audience::Public || (test_kinds && k.audience == Audience::Test))
        .map(|k| k.name)
        .collect()
}

/// The kind named `name`, if the catalogue has it.
pub fn lookup(name: &str) -> Option<KindInfo> {
    kinds().into_iter().find(|k| k.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_checked_against_the_kind() {
        let probe = lookup("probe").expect("probe is in the catalogue");
        let ok = RawValue::from_string(r#"{"do":"succeed"}"#.into()).unwrap();
        let bad = RawValue::from_string(r#"{"do":"explode"}"#.into()).unwrap();
        assert!((probe.validate)(&ok).is_ok());
        assert!((probe.validate)(&bad).unwrap_err().contains("explode"));
        assert!(lookup("nope").is_none());
    }

    #[test]
    fn only_the_kinds_meant_for_tenants_are_public() {
        assert_eq!(public_kinds(false), vec!["webhook.publish", "image.analyze", "image.variants"]);
        assert!(public_kinds(true).contains(&"probe"));
        for internal in [
            "webhook.deliver",
            "webhook.intake",
            "calendar.sync",
            "calendar.push",
            "comms.sync",
            "notify.send",
            "portfolio.select",
        ] {
            assert_eq!(lookup(internal).unwrap().audience, Audience::Internal, "{internal}");
        }
    }
}
