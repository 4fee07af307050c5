//! Fleet's calendar domain: iCalendar parsing, expansion and conflicts, the CalDAV, Google and
//! Graph clients, the calendar tables' store and the `calendar.sync` / `calendar.push` jobs.
//!
//! # Layout
//!
//! Pure calendar logic (with the `jobs` feature; no database):
//!
//! - [`decode`]: bytes → text. Detects bodies that are not iCalendar (an HTML login page, an empty
//!   body) or not whole ([`decode_complete`]: a BEGIN without its END), strips a BOM and NUL
//!   bytes, unfolds lines *before* decoding (a fold may split a UTF-8 sequence) and falls back
//!   to Latin-1 for non-UTF-8 charsets. Bodies stay bytes from the wire to here.
//! - [`parse`]: text → [`Calendar`] of [`Event`]s through `calcard`'s lenient parser. One broken
//!   event becomes a [`Warning`] and is skipped; the others import.
//! - [`zone`]: TZID resolution (VTIMEZONE, IANA, Windows names; unknown → default zone + warning)
//!   and local → UTC conversion following RFC 5545 §3.3.5 exactly in gaps and folds, which is
//!   where the recurrence crates go wrong.
//! - [`expand`]: RRULE / RDATE / EXDATE / RECURRENCE-ID (incl. THISANDFUTURE, cancelled instances,
//!   overrides in another zone) into [`Occurrence`]s over a window, capped by count and time.
//! - [`conflict`]: double bookings among busy occurrences (half-open intervals).
//!
//! Talking to calendars (with `jobs`):
//!
//! - [`caldav`]: a small CalDAV client (RFC 4791, RFC 6578 sync-collection with 507 continuation,
//!   ETag listing fallback, conditional writes) and conditional GET of `.ics` feeds.
//! - [`google`], [`graph`]: Google Calendar v3 and Microsoft Graph calendars — incremental pulls
//!   (sync token, delta link; expired → full listing) with each event written as iCalendar so
//!   the pipeline above applies unchanged, and idempotent conditional push-back. [`provider`]
//!   holds what they share (bearer-token HTTP with timeouts and a body cap, typed errors with
//!   Retry-After); [`oauth`] refreshes their tokens.
//! - [`push`]: push-back with `If-None-Match: *` / `If-Match`, 412 → compare versions, newer wins.
//!
//! The database — every query on a `calendar_*` table lives in [`store`]:
//!
//! - [`store`] (always built; the scheduler links only this): sources, supplier settings,
//!   occurrences and double bookings as `/v1/calendar` and `fleetctl calendar` see them;
//!   [`store::bookings`]: bookings as the API writes them (checked against the supplier's busy
//!   occurrences, each change written to the outbox) and the push job records them.
//! - `store::sync` (with `jobs`): what the jobs read and write, and **the hard part**:
//!   `store::sync::apply`, one fetch applied in one transaction under a per-supplier lock
//!   — parse, the mass-deletion guard (quarantine), events by (UID, RECURRENCE-ID) with
//!   stale versions refused, occurrences re-expanded and diffed (`store/sync/occurrences.rs`),
//!   the supplier's conflicts recomputed with each change written to the outbox once
//!   (`store/sync/conflicts.rs`). Its header lists the steps in order.
//!
//! The jobs (with `jobs`): [`jobs`] — `calendar.sync` (`jobs/mod.rs`: load the source with
//! the job's tenant, pull, apply through the store, publish the outbox; Google and Graph pulls
//! and token refresh in `jobs/providers.rs`) and `calendar.push` (`jobs/push.rs`). They hold
//! no SQL; they decide what each failure means for the job (retry, slow down, give up).
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
pub use decode::{DecodeError, decode, decode_complete, join_objects};
#[cfg(feature = "jobs")]
pub use expand::{ExpandOptions, Expansion, Occurrence, expand};
#[cfg(feature = "jobs")]
pub use parse::{Calendar, Event, EventStatus, TimeValue, Warning, parse};
