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
//! - [`timeline`]: dedup, threading and where each entry was seen; the in-memory
//!   reference the PostgreSQL store follows.
//! - [`imap`]: exact incremental IMAP sync with per-folder cursors.
//! - [`secrets`]: source secrets sealed with AES-256-GCM.
//! - [`sms`]: SMS and call records of a Twilio-style API as entries.
//! - [`in_app`]: the platform's own messages as entries.
//!
//! Nothing here polls by date window: cursors are exact, so downtime never loses mail.

pub mod contacts;
pub mod entry;
pub mod html;
pub mod imap;
pub mod in_app;
pub mod parse;
pub mod secrets;
pub mod sms;
pub mod timeline;

#[cfg(test)]
mod tests;
