//! `calendar.sync`: pull one calendar source (a CalDAV collection, an `.ics` feed) into its
//! supplier's events and occurrences, and recompute the supplier's double bookings. The
//! arguments are a reference: the source's URL, sealed credentials and sync state live in
//! PostgreSQL (`calendar_sources`), so a job carries no secret and a retry resumes from the
//! last committed sync token.

use crate::kind::{JobArgs, KindOptions};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Arguments of `calendar.sync`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarSync {
    /// The source (`calendar_sources.id`).
    pub source_id: String,
}

impl JobArgs for CalendarSync {
    const KIND: &'static str = "calendar.sync";

    fn options() -> KindOptions {
        KindOptions {
            queue: "calendar".into(),
            max_attempts: 8,
            timeout: Some(Duration::from_secs(300)),
            ..KindOptions::default()
        }
    }
}

/// Arguments of `calendar.push`: write one booking made in the platform
/// (`calendar_bookings`) to its supplier's calendar (create, update or delete, whichever
/// the booking's current version needs). A reference again: the booking and the target
/// source's credentials live in PostgreSQL, so retries and duplicates push the newest
/// version, idempotently (the remote event's identity comes from the booking id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarPush {
    /// The tenant the booking belongs to.
    pub tenant: String,
    /// The booking (`calendar_bookings.id`).
    pub booking_id: String,
}

impl JobArgs for CalendarPush {
    const KIND: &'static str = "calendar.push";

    fn options() -> KindOptions {
        KindOptions {
            queue: "calendar".into(),
            max_attempts: 10,
            timeout: Some(Duration::from_secs(120)),
            ..KindOptions::default()
        }
    }
}
