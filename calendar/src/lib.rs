//! Fleet's calendar core: everything a `calendar.sync` job needs that is not the database.
//!
//! # Layout
//!
//! - [`decode`]: bytes → text. Detects bodies that are not iCalendar (an HTML login page, an empty
//!   body), strips a BOM, unfolds lines *before* decoding (a fold may split a UTF-8 sequence) and
//!   falls back to Latin-1 for non-UTF-8 charsets.
//! - [`parse`]: text → [`Calendar`] of [`Event`]s through `calcard`'s lenient parser. One broken
//!   event becomes a [`Warning`] and is skipped; the others import.
//! - [`zone`]: TZID resolution (VTIMEZONE, IANA, Windows names; unknown → default zone + warning)
//!   and local → UTC conversion following RFC 5545 §3.3.5 exactly in gaps and folds, which is
//!   where the recurrence crates go wrong.
//! - [`expand`]: RRULE / RDATE / EXDATE / RECURRENCE-ID (incl. THISANDFUTURE, cancelled instances,
//!   overrides in another zone) into [`Occurrence`]s over a window, capped by count and time.
//! - [`conflict`]: double bookings among busy occurrences (half-open intervals).
//! - [`push`]: push-back with `If-None-Match: *` / `If-Match`, 412 → compare versions, newer wins.
//! - [`google`], [`graph`]: Google Calendar v3 and Microsoft Graph calendars — incremental pulls
//!   (sync token, delta link; expired → full listing) with each event written as iCalendar so
//!   the pipeline above applies unchanged, and idempotent conditional push-back. [`provider`]
//!   holds what they share (bearer-token HTTP with timeouts and a body cap, typed errors with
//!   Retry-After).
//! - [`caldav`]: a small CalDAV client (RFC 4791, RFC 6578 sync-collection with 507 continuation,
//!   ETag listing fallback, conditional writes) and conditional GET of `.ics` feeds.
//!
//! Recurrence rules are iterated by the `rrule` crate in *floating* time (local wall-clock time
//! treated as UTC); this crate alone maps wall-clock times to instants, so DST handling lives in
//! one place ([`zone::localize`]).

#[cfg(feature = "jobs")]
pub mod caldav;
#[cfg(feature = "jobs")]
pub mod conflict;
#[cfg(feature = "jobs")]
pub mod decode;
#[cfg(feature = "jobs")]
pub mod expand;
#[cfg(feature = "jobs")]
pub mod google;
#[cfg(feature = "jobs")]
pub mod graph;
#[cfg(feature = "jobs")]
pub mod oauth;
#[cfg(feature = "jobs")]
pub mod parse;
#[cfg(feature = "jobs")]
pub mod provider;
#[cfg(feature = "jobs")]
pub mod push;
#[cfg(feature = "jobs")]
pub mod zone;

#[cfg(feature = "jobs")]
pub mod jobs;
pub mod store;

#[cfg(feature = "jobs")]
pub use conflict::{BusyInterval, Conflict, find_conflicts};
#[cfg(feature = "jobs")]
pub use decode::{DecodeError, decode, join_objects};
#[cfg(feature = "jobs")]
pub use expand::{ExpandOptions, Expansion, Occurrence, expand};
#[cfg(feature = "jobs")]
pub use parse::{Calendar, Event, EventStatus, TimeValue, Warning, parse};
