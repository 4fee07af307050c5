//! Fleet's communication aggregation: every email, SMS, call and in-app message of a
//! supplier's clients gathered into one deduplicated, threaded timeline per client.
//!
//! # Layout
//!
//! - [`parse`]: one raw email → [`parse::ParsedMail`], under size and depth caps,
//!   panic-isolated; what cannot be parsed is quarantined with its raw bytes.
//! - [`html`]: HTML-only mail as text, with a flat fallback for hostile HTML.
//! - [`contacts`]: clients matched by email and by E.164 phone number.
//! - [`entry`]: the one shape every item takes ([`entry::NewEntry`] →
//!   [`entry::TimelineEntry`]).
//! - [`timeline`]: the dedup and threading rules ([`timeline::decide`]: one message
//!   against what a timeline already holds) and the in-memory timeline that applies
//!   them, with where each entry was seen. The PostgreSQL timeline applies the very
//!   same decisions; one table of cases (`tests/comms/rules.rs`) runs against both.
//! - [`imap`]: exact incremental IMAP sync with per-folder cursors.
//! - [`sms`]: SMS and call records of a Twilio-style API as entries.
//! - [`in_app`]: the platform's own messages as entries.
//! - [`account`]: what a source's account is as the API registers it.
//! - [`store`]: the domain's one store, every query on the `comms_*` tables: sources,
//!   contacts, quarantine and timeline pages for the API and `fleetctl` (`store/mod.rs`),
//!   and the PostgreSQL timeline syncs commit to ([`store::PgStore`],
//!   `store/timeline.rs`, with the `jobs` feature).
//! - [`jobs`]: the `comms.sync` handler (`jobs/mod.rs`) and the SMS provider's API
//!   (`jobs/sms.rs`); their reads and writes go through [`store`].
//!
//! Everything but `account`, `contacts` and `store/mod.rs` is behind the `jobs` feature
//! (IMAP, MIME, provider APIs): the scheduler builds without it. Sealed secrets are
//! `fleet_accounts::secrets`.
//!
//! Nothing here polls by date window: cursors are exact, so downtime never loses mail.

pub mod account;
pub mod contacts;
pub mod store;

#[cfg(feature = "jobs")]
pub mod entry;
#[cfg(feature = "jobs")]
pub mod html;
#[cfg(feature = "jobs")]
pub mod imap;
#[cfg(feature = "jobs")]
pub mod in_app;
#[cfg(feature = "jobs")]
pub mod jobs;
#[cfg(feature = "jobs")]
pub mod parse;
#[cfg(feature = "jobs")]
pub mod sms;
#[cfg(feature = "jobs")]
pub mod timeline;

#[cfg(all(test, feature = "jobs"))]
mod tests;
