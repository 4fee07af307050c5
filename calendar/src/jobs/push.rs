//! `calendar.push`: a booking made in the platform (`calendar_bookings`) written to the
//! supplier's calendar.
//!
//! The remote event's UID (and so its CalDAV href) comes from the booking id, so a retried
//! or duplicated push writes the same resource. A create carries `If-None-Match: *`, an
//! update or delete `If-Match` with the ETag Fleet last saw; on 412 the server's version is
//! fetched and the newer one (SEQUENCE, then DTSTAMP) wins — the other side's change is kept
//! unless ours is newer ([`crate::push`]). What the calendar holds afterwards is
//! applied to Fleet's own copy of the source at once (events, occurrences, conflicts), under
//! the ETag the server returned: the next sync sees the same content and ETag and reports no
//! change, so our own writes never come back as changes.

use super::{CalendarSyncHandler, Fetched, Source, SyncError};
use crate::caldav::{CalDavClient, WriteOutcome};
use crate::push::{PushOutcome, push_event};
use crate::store::bookings::{self, Booking, PushRecord};
use crate::store::sync;
use chrono::{DateTime, Utc};
use fleet_jobs::catalogue::CalendarPush;
use fleet_kit::{Handler, JobContext, JobError};

/// The `calendar.push` handler (built from the sync handler: same database, secrets and
/// client options).
#[derive(Debug, Clone)]
pub struct CalendarPushHandler {
    sync: CalendarSyncHandler,
}

/// What the push did, as recorded on the booking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushResult {
    /// The calendar already held this version.
    AlreadyPushed,
    /// Written (created or updated).
    Pushed,
    /// Removed from the calendar.
    Deleted,
    /// The calendar holds a newer version changed outside the platform: kept.
    KeptTheirs,
}

/// The remote UID of a booking: stable, so every push of it addresses one resource (defined
/// with the bookings' store, which the API's conflict check shares).
pub use crate::store::bookings::booking_uid;

/// What a push of a booking that is missing, or not the job's tenant's, gives up with.
fn not_found(booking_id: &str) -> String {
    format!("booking {booking_id} not found")
}

impl CalendarSyncHandler {
    /// The `calendar.push` handler sharing this handler's database, secrets and options.
    pub fn push_handler(&self) -> CalendarPushHandler {
        CalendarPushHandler { sync: self.clone() }
    }
}

impl CalendarPushHandler {
    /// Pushes one booking now (what the job does; tests call it directly).
    pub async fn push(&self, tenant: &str, booking_id: &str) -> Result<PushResult, String> {
        self.run(tenant, booking_id).await.map_err(|e| match e {
            SyncError::Transient(e, _) | SyncError::Permanent(e) => e,
        })
    }

    async fn run(&self, tenant: &str, booking_id: &str) -> Result<PushResult, SyncError> {
        let db = &self.sync.db;
        let Some(booking) = bookings::for_push(db, tenant, booking_id).await? else {
            return Err(SyncError::Permanent(not_found(booking_id)));
        };
        if booking.pushed_version == Some(booking.version) && booking.push_state != "failed" {
            return Ok(PushResult::AlreadyPushed);
        }
        // The booking's source must be its own tenant's: another tenant's is "not found".
        let source = match self.sync.load(Some(tenant), &booking.target_source).await {
            Err(SyncError::Permanent(e)) => return self.fail(tenant, booking_id, e).await,
            other => other?,
        };
        if source.supplier != booking.supplier {
            return self.fail(tenant, booking_id, "the target source belongs to another supplier".into()).await;
        }
        if source.kind == "google" || source.kind == "graph" {
            return match self.push_provider(&source, tenant, booking_id, &booking).await {
                Err(SyncError::Permanent(e)) => self.fail(tenant, booking_id, e).await,
                other => other,
            };
        }
        if source.kind != "caldav" {
            let e = format!("a {} source is read-only: book into a CalDAV, Google or Graph source", source.kind);
            return self.fail(tenant, booking_id, e).await;
        }
        let uid = booking_uid(tenant, booking_id);
        let result = match self.sync.client(&booking.target_source, &source, &source.url) {
            Err(e) => Err(e),
            Ok(client) if booking.deleted => self.delete(&client, &source, tenant, booking_id, &booking).await,
            Ok(client) => self.write(&client, &source, tenant, booking_id, &uid, &booking).await,
        };
        match result {
            Err(SyncError::Permanent(e)) => self.fail(tenant, booking_id, e).await,
            other => other,
        }
    }

    async fn write(
        &self,
        client: &CalDavClient,
        source: &Source,
        tenant: &str,
        booking_id: &str,
        uid: &str,
        booking: &Booking,
    ) -> Result<PushResult, SyncError> {
        let ics = booking_ics(uid, booking);
        let (href, etag, body, result) =
            match push_event(client, uid, ics.as_bytes(), booking.remote_etag.as_deref()).await? {
                PushOutcome::Written { href, etag } | PushOutcome::Unchanged { href, etag } => {
                    (href, etag, ics.into_bytes(), PushResult::Pushed)
                }
                PushOutcome::KeptTheirs(theirs) => (theirs.href, theirs.etag, theirs.body, PushResult::KeptTheirs),
            };
        let fetched = Fetched {
            changed: vec![(href.clone(), etag.clone(), body)],
            removed: Vec::new(),
            state: serde_json::Value::Null,
            mode: "push",
        };
        // A push's own write: no pull to time.
        sync::apply(&self.sync.db, &booking.target_source, source, fetched, 0).await?;
        let (state, note) = match result {
            PushResult::KeptTheirs => (
                "kept_theirs",
                Some("the calendar holds a newer version of this event changed outside the platform; it was kept"),
            ),
            _ => ("pushed", None),
        };
        self.record(tenant, booking_id, booking.version, Some(&href), etag.as_deref(), state, note).await?;
        Ok(result)
    }

    async fn delete(
        &self,
        client: &CalDavClient,
        source: &Source,
        tenant: &str,
        booking_id: &str,
        booking: &Booking,
    ) -> Result<PushResult, SyncError> {
        let Some(href) = booking.remote_href.clone() else {
            // Never written: nothing to remove.
            self.record(tenant, booking_id, booking.version, None, None, "deleted", None).await?;
            return Ok(PushResult::Deleted);
        };
        let mut etag = booking.remote_etag.clone();
        for _ in 0..4 {
            match client.delete(&href, etag.as_deref()).await? {
                WriteOutcome::Written(_) => {
                    let fetched = Fetched {
                        changed: Vec::new(),
                        removed: vec![href.clone()],
                        state: serde_json::Value::Null,
                        mode: "push",
                    };
                    // A push's own write: no pull to time.
                    sync::apply(&self.sync.db, &booking.target_source, source, fetched, 0).await?;
                    self.record(tenant, booking_id, booking.version, Some(&href), None, "deleted", None).await?;
                    return Ok(PushResult::Deleted);
                }
                WriteOutcome::PreconditionFailed => {}
            }
            // Changed since we wrote it: delete only if theirs is not newer than our version.
            let Some(theirs) = client.get(&href).await? else {
                self.record(tenant, booking_id, booking.version, Some(&href), None, "deleted", None).await?;
                return Ok(PushResult::Deleted);
            };
            let text = crate::decode(&theirs.body).unwrap_or_default();
            let their_sequence = crate::parse(&text).events.iter().map(|e| e.sequence).max().unwrap_or(0);
            if their_sequence > booking.version {
                let fetched = Fetched {
                    changed: vec![(href.clone(), theirs.etag.clone(), theirs.body.clone())],
                    removed: Vec::new(),
                    state: serde_json::Value::Null,
                    mode: "push",
                };
                // A push's own write: no pull to time.
                sync::apply(&self.sync.db, &booking.target_source, source, fetched, 0).await?;
                let note = "the calendar holds a newer version of this event changed outside the platform; not deleted";
                self.record(
                    tenant,
                    booking_id,
                    booking.version,
                    Some(&href),
                    theirs.etag.as_deref(),
                    "kept_theirs",
                    Some(note),
                )
                .await?;
                return Ok(PushResult::KeptTheirs);
            }
            etag = theirs.etag;
        }
        Err(SyncError::Transient(format!("{href} keeps changing while being deleted (412)"), None))
    }

    /// Google Calendar and Microsoft Graph: written through their APIs (Google's event id
    /// derives from the booking, Graph's `transactionId` is the booking), update and delete
    /// with `If-Match`. Fleet's copy of the source picks the event up at its next sync (the
    /// provider's own representation, so its identity matches what later syncs pull).
    async fn push_provider(
        &self,
        source: &Source,
        tenant: &str,
        booking_id: &str,
        booking: &Booking,
    ) -> Result<PushResult, SyncError> {
        use crate::google::GoogleCalendar;
        use crate::graph::{GraphCalendar, GraphRef};
        use crate::provider::{PushEvent, PushTime};
        let (token, _) = self.sync.access_token(&booking.target_source, source, false).await?;
        let remote_id = format!("{tenant}.{booking_id}");
        let options = &self.sync.client_options;
        let google = source.kind == "google";
        let etag = booking.remote_etag.as_deref();
        if booking.deleted {
            let outcome = if google {
                GoogleCalendar::new(&source.url, token, options)?.delete(&remote_id, etag).await?
            } else {
                let Some(event_id) = booking.remote_href.as_deref() else {
                    self.record(tenant, booking_id, booking.version, None, None, "deleted", None).await?;
                    return Ok(PushResult::Deleted);
                };
                GraphCalendar::new(&source.url, token, options)?.delete(event_id, etag).await?
            };
            return match outcome {
                WriteOutcome::Written(_) => {
                    self.record(tenant, booking_id, booking.version, None, None, "deleted", None).await?;
                    Ok(PushResult::Deleted)
                }
                WriteOutcome::PreconditionFailed => {
                    let note = "the event was changed in the calendar since Fleet wrote it; not deleted";
                    self.record(tenant, booking_id, booking.version, None, etag, "kept_theirs", Some(note)).await?;
                    Ok(PushResult::KeptTheirs)
                }
            };
        }
        let event = PushEvent {
            booking_id: remote_id,
            summary: booking.summary.clone(),
            location: booking.location.clone(),
            description: booking.description.clone(),
            start: PushTime::Timed { at: booking.start, zone: None },
            end: PushTime::Timed { at: booking.end, zone: None },
            transparent: false,
            sequence: booking.version,
            updated: booking.updated_at,
        };
        let outcome = if google {
            GoogleCalendar::new(&source.url, token, options)?.push(&event, etag).await?
        } else {
            let known = match (&booking.remote_href, &booking.remote_etag) {
                (Some(id), Some(etag)) => Some(GraphRef { id: id.clone(), etag: etag.clone() }),
                _ => None,
            };
            GraphCalendar::new(&source.url, token, options)?.push(&event, known.as_ref()).await?
        };
        // The provider's own version of the event reaches Fleet's copy through a sync of the
        // source (so its identity is what later syncs pull): ask for one now.
        self.sync_soon(tenant, &booking.target_source).await;
        match outcome {
            PushOutcome::Written { href, etag } | PushOutcome::Unchanged { href, etag } => {
                self.record(tenant, booking_id, booking.version, Some(&href), etag.as_deref(), "pushed", None).await?;
                Ok(PushResult::Pushed)
            }
            PushOutcome::KeptTheirs(theirs) => {
                let note = "the calendar holds a newer version of this event changed outside the platform; it was kept";
                self.record(
                    tenant,
                    booking_id,
                    booking.version,
                    Some(&theirs.href),
                    theirs.etag.as_deref(),
                    "kept_theirs",
                    Some(note),
                )
                .await?;
                Ok(PushResult::KeptTheirs)
            }
        }
    }

    /// Enqueues a sync of `source` when the handler has a job client (its relay); the
    /// source's schedule syncs it anyway, so a failure here is only logged.
    async fn sync_soon(&self, tenant: &str, source: &str) {
        let Some(relay) = &self.sync.relay else { return };
        let args = fleet_jobs::catalogue::CalendarSync { source_id: source.to_owned() };
        let opts = fleet_jobs::EnqueueOptions { tenant: Some(tenant.to_owned()), ..Default::default() };
        if let Err(e) = relay.client().enqueue_with(&args, opts).await {
            tracing::warn!(source, error = %e, "sync after a provider push not enqueued; the schedule will sync it");
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        tenant: &str,
        booking_id: &str,
        version: i64,
        href: Option<&str>,
        etag: Option<&str>,
        state: &str,
        note: Option<&str>,
    ) -> Result<(), SyncError> {
        let record = PushRecord { version, href, etag, state, note };
        Ok(bookings::record_push(&self.sync.db, tenant, booking_id, record).await?)
    }

    async fn fail(&self, tenant: &str, booking_id: &str, error: String) -> Result<PushResult, SyncError> {
        bookings::record_push_failure(&self.sync.db, tenant, booking_id, &error).await?;
        Err(SyncError::Permanent(error))
    }
}

/// The booking as one iCalendar object (times in UTC, so no VTIMEZONE is needed).
fn booking_ics(uid: &str, b: &Booking) -> String {
    let utc = |t: DateTime<Utc>| t.format("%Y%m%dT%H%M%SZ").to_string();
    let mut lines = vec![
        "BEGIN:VCALENDAR".to_owned(),
        "VERSION:2.0".to_owned(),
        "PRODID:-//Fleet//calendar push//EN".to_owned(),
        "BEGIN:VEVENT".to_owned(),
        format!("UID:{}", escape(uid)),
        format!("DTSTAMP:{}", utc(b.updated_at)),
        format!("SEQUENCE:{}", b.version),
        format!("DTSTART:{}", utc(b.start)),
        format!("DTEND:{}", utc(b.end)),
        format!("SUMMARY:{}", escape(&b.summary)),
    ];
    if let Some(d) = &b.description {
        lines.push(format!("DESCRIPTION:{}", escape(d)));
    }
    if let Some(l) = &b.location {
        lines.push(format!("LOCATION:{}", escape(l)));
    }
    lines.extend(["END:VEVENT".to_owned(), "END:VCALENDAR".to_owned()]);
    let mut out = String::new();
    for line in lines {
        fold_into(&mut out, &line);
    }
    out
}

/// TEXT escaping (RFC 5545 §3.3.11).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            ';' => out.push_str("\\;"),
            ',' => out.push_str("\\,"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Appends `line` folded at 75 octets, never inside a UTF-8 sequence (RFC 5545 §3.1).
fn fold_into(out: &mut String, line: &str) {
    let mut width = 0;
    for c in line.chars() {
        if width + c.len_utf8() > 75 {
            out.push_str("\r\n ");
            width = 1;
        }
        out.push(c);
        width += c.len_utf8();
    }
    out.push_str("\r\n");
}

impl Handler for CalendarPushHandler {
    type Args = CalendarPush;

    /// The job's envelope tenant is the authority: `args.tenant` must match it, or the
    /// job gives up with the message of a missing booking (it learns nothing about other
    /// tenants' ids). A job with no envelope tenant was enqueued by Fleet's operators
    /// (`fleetctl`, tests), never by the public API, which always sets it from the
    /// caller's key: then `args.tenant` names the booking's tenant.
    async fn handle(&self, args: CalendarPush, ctx: JobContext) -> Result<(), JobError> {
        if ctx.tenant.as_deref().is_some_and(|t| t != args.tenant) {
            return Err(JobError::give_up(not_found(&args.booking_id)));
        }
        match self.run(&args.tenant, &args.booking_id).await {
            Ok(result) => {
                tracing::info!(booking = %args.booking_id, result = ?result, "booking pushed");
                Ok(())
            }
            Err(SyncError::Transient(e, Some(after))) => Err(JobError::slow_down(e, after)),
            Err(SyncError::Transient(e, None)) => Err(JobError::retry(e)),
            Err(SyncError::Permanent(e)) => Err(JobError::give_up(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_long_lines_fold_between_characters() {
        assert_eq!(escape("a;b,c\\d\ne"), "a\\;b\\,c\\\\d\\ne");
        let mut out = String::new();
        let line = format!("SUMMARY:{}", "é".repeat(60));
        fold_into(&mut out, &line);
        for physical in out.split("\r\n").filter(|l| !l.is_empty()) {
            assert!(physical.len() <= 75, "{} octets", physical.len());
        }
        let unfolded = out.replace("\r\n ", "");
        assert_eq!(unfolded.trim_end(), line);
    }
}
