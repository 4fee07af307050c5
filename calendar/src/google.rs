//! Google Calendar API v3: pull one calendar's events incrementally, and push Fleet's bookings.
//!
//! # How to call it
//!
//! ```no_run
//! # async fn demo(token: secrecy::SecretString) -> Result<(), crate::provider::ProviderError> {
//! use fleet_net::ClientOptions;
//! use crate::google::{GoogleCalendar, GoogleState};
//! // The calendar's URL (`{base}/calendars/{calendarId}`); tests point it at a local server.
//! let google = GoogleCalendar::new(
//!     "https://www.googleapis.com/calendar/v3/calendars/primary",
//!     token,
//!     &ClientOptions::default(),
//! )?;
//! // Pull: pass the stored state (default on the first run) and the UIDs of the recurring
//! // masters already stored (event id → UID), used for cancelled instances that carry none.
//! let pull = google.pull(&GoogleState::default(), &Default::default()).await?;
//! // `pull.full`: a full listing (stored events missing from it are gone); otherwise changes.
//! // Store `pull.state` once the changes are applied.
//! # Ok(()) }
//! ```
//!
//! Push (from a `calendar.push` job): [`GoogleCalendar::push`] with a [`PushEvent`] and the
//! ETag last stored for it (`None`: believed new). The Google event id is derived from the
//! booking id ([`event_id_for`]), so a retried create finds its own event (409) instead of
//! making a second one. An update sends `If-Match`; on 412 the provider's version is fetched:
//! equal content → [`PushOutcome::Unchanged`]; ours newer by (SEQUENCE, updated) → written over
//! theirs with `If-Match` on their ETag; otherwise [`PushOutcome::KeptTheirs`] with their event
//! as iCalendar, for the caller to store. [`GoogleCalendar::delete`] removes a booking.
//!
//! # Pull
//!
//! `events.list` with `showDeleted=true` and `singleEvents=false` (masters with their
//! `recurrence` lines, instance exceptions as separate items), `pageToken` paging, and the
//! `syncToken` of the last `nextSyncToken` (Google only sends it on the last page). A 410 Gone
//! means the token expired: it is dropped and a full listing done ([`ProviderPull::resynced`]).
//! Each event becomes one VCALENDAR (href = the event id): `start`/`end` (`dateTime` + `timeZone`,
//! or `date` for all-day), `recurrence` lines embedded, exceptions as RECURRENCE-ID overrides of
//! the master's UID, a cancelled instance as a `STATUS:CANCELLED` override, a cancelled event as
//! a removal, `transparency`, `sequence`, `updated` → DTSTAMP, `iCalUID` → UID.

use crate::caldav::{CalendarObject, WriteOutcome};
use crate::provider::{
    Http, IcsTime, MAX_PAGES, MAX_PUSH_ROUNDS, ProviderError, ProviderPull, PushEvent, PushTime, VEvent, unexpected,
};
use crate::push::PushOutcome;
use crate::zone::resolve_name;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use fleet_net::ClientOptions;
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use url::Url;

/// What Fleet stores about a Google calendar between pulls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoogleState {
    /// The last `nextSyncToken` (`None`: full listing next time).
    #[serde(default)]
    pub sync_token: Option<String>,
}

/// A client for one Google calendar.
#[derive(Debug, Clone)]
pub struct GoogleCalendar {
    http: Http,
    /// `{calendar}/events`.
    events: Url,
}

/// A time as Google writes it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GoogleTime {
    /// `yyyy-mm-dd` for all-day events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    /// RFC 3339 with an offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_time: Option<String>,
    /// The IANA zone the time is shown (and a series recurs) in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// The fields of a Google event Fleet reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct GoogleEvent {
    /// The event id (also the href of its iCalendar object).
    pub id: String,
    /// `confirmed`, `tentative` or `cancelled`.
    pub status: Option<String>,
    /// The ETag (quoted).
    pub etag: Option<String>,
    /// The iCalendar UID.
    #[serde(rename = "iCalUID")]
    pub ical_uid: Option<String>,
    /// Title.
    pub summary: Option<String>,
    /// Location.
    pub location: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Start.
    pub start: Option<GoogleTime>,
    /// End (exclusive).
    pub end: Option<GoogleTime>,
    /// RRULE, EXRULE, RDATE and EXDATE lines of a recurring master.
    pub recurrence: Vec<String>,
    /// For an instance exception: the master's id.
    pub recurring_event_id: Option<String>,
    /// For an instance exception: the instance's original start (its RECURRENCE-ID).
    pub original_start_time: Option<GoogleTime>,
    /// `opaque` (default) or `transparent`.
    pub transparency: Option<String>,
    /// SEQUENCE.
    pub sequence: Option<i64>,
    /// Last modification (RFC 3339).
    pub updated: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    #[serde(default)]
    items: Vec<Value>,
    next_page_token: Option<String>,
    next_sync_token: Option<String>,
}

/// The Google event id of a booking: `fleet` + base32hex (lowercase, no padding) of the booking
/// id — only `a-v0-9`, as Google requires, and the same on every retry. Ids that would exceed
/// Google's 1,024 characters use the SHA-256 of the booking id instead.
pub fn event_id_for(booking_id: &str) -> String {
    let encoded = base32hex(booking_id.as_bytes());
    if encoded.len() + 5 <= 1024 {
        format!("fleet{encoded}")
    } else {
        format!("fleeth{}", base32hex(&Sha256::digest(booking_id.as_bytes())))
    }
}

fn base32hex(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
        buffer &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

impl GoogleCalendar {
    /// A client for the calendar at `calendar_url` (`…/calendars/{calendarId}`; a URL already
    /// ending in `/events` is taken as is).
    pub fn new(
        calendar_url: &str,
        access_token: SecretString,
        options: &ClientOptions,
    ) -> Result<GoogleCalendar, ProviderError> {
        let mut events = Url::parse(calendar_url).map_err(|e| ProviderError::Url(e.to_string()))?;
        let path = events.path().trim_end_matches('/').to_owned();
        if !path.ends_with("/events") {
            events.set_path(&format!("{path}/events"));
        }
        events.set_query(None);
        let http = Http::new(&events, access_token, options)?;
        Ok(GoogleCalendar { http, events })
    }

    fn event_url(&self, id: &str) -> Result<Url, ProviderError> {
        let mut url = self.events.clone();
        url.path_segments_mut().map_err(|_| ProviderError::Url("not a base URL".into()))?.push(id);
        Ok(url)
    }

    /// Pulls what changed since `state` (everything without a token). `known_uids` maps the ids
    /// of stored recurring masters to their UIDs, for cancelled instances, which Google sends
    /// without `iCalUID`; unknown masters fall back to Google's default `{id}@google.com`.
    pub async fn pull(
        &self,
        state: &GoogleState,
        known_uids: &HashMap<String, String>,
    ) -> Result<ProviderPull<GoogleState>, ProviderError> {
        let mut sync_token = state.sync_token.clone();
        let mut resynced = false;
        let mut pages = 0;
        'round: loop {
            let mut items: Vec<Value> = Vec::new();
            let mut page_token: Option<String> = None;
            loop {
                if pages >= MAX_PAGES {
                    return Err(ProviderError::Json(format!("more than {MAX_PAGES} pages")));
                }
                let mut url = self.events.clone();
                {
                    let mut query = url.query_pairs_mut();
                    query.append_pair("maxResults", "2500").append_pair("showDeleted", "true");
                    query.append_pair("singleEvents", "false");
                    if let Some(token) = &sync_token {
                        query.append_pair("syncToken", token);
                    }
                    if let Some(page) = &page_token {
                        query.append_pair("pageToken", page);
                    }
                }
                let response = self.http.send(Method::GET, url, &[], None).await?;
                pages += 1;
                match response.status.as_u16() {
                    200 => {}
                    410 if sync_token.is_some() => {
                        // The token expired: a full listing, applied as one.
                        sync_token = None;
                        resynced = true;
                        continue 'round;
                    }
                    403 if is_rate_limit(&response.error_code()) => {
                        return Err(ProviderError::RateLimited {
                            status: response.status,
                            retry_after: fleet_net::retry_after(&response.headers),
                        });
                    }
                    _ => return Err(unexpected(&response)),
                }
                let page: Page = response.json()?;
                items.extend(page.items);
                match (page.next_page_token, page.next_sync_token) {
                    (Some(next), _) => page_token = Some(next),
                    (None, Some(token)) => {
                        let full = state.sync_token.is_none() || resynced;
                        let (changed, removed, skipped) = convert_all(items, known_uids);
                        return Ok(ProviderPull {
                            changed,
                            removed,
                            skipped,
                            full,
                            resynced,
                            pages,
                            state: GoogleState { sync_token: Some(token) },
                        });
                    }
                    (None, None) => return Err(ProviderError::Json("last page without nextSyncToken".into())),
                }
            }
        }
    }

    /// GETs one event by id; `None` when it does not exist (a deleted event Google still
    /// keeps comes back with `status: cancelled`).
    pub async fn get(&self, event_id: &str) -> Result<Option<GoogleEvent>, ProviderError> {
        let response = self.http.send(Method::GET, self.event_url(event_id)?, &[], None).await?;
        match response.status.as_u16() {
            200 => Ok(Some(response.json()?)),
            404 | 410 => Ok(None),
            _ => Err(unexpected(&response)),
        }
    }

    /// Writes a booking (see the module documentation). `known_etag`: the ETag Fleet last stored
    /// for it (`None`: believed new). The returned href is the Google event id.
    pub async fn push(&self, event: &PushEvent, known_etag: Option<&str>) -> Result<PushOutcome, ProviderError> {
        let id = event_id_for(&event.booking_id);
        let body = request_body(event, &id);
        let mut etag: Option<String> = known_etag.map(str::to_owned);
        for _ in 0..MAX_PUSH_ROUNDS {
            let response = match &etag {
                None => self.http.send(Method::POST, self.events.clone(), &[], Some(&body)).await?,
                Some(etag) => {
                    self.http.send(Method::PUT, self.event_url(&id)?, &[("If-Match", etag)], Some(&body)).await?
                }
            };
            match response.status.as_u16() {
                200 | 201 => {
                    let written: GoogleEvent = response.json()?;
                    return Ok(PushOutcome::Written { href: id, etag: written.etag.or_else(|| response.etag()) });
                }
                // 409 on insert: the id exists (a retried create, or a deleted event Google
                // keeps). 412 on update: changed since our ETag. Either way, look at theirs.
                409 | 412 => {}
                // Updated something that is gone: create it again.
                404 | 410 if etag.is_some() => {
                    etag = None;
                    continue;
                }
                _ => return Err(unexpected(&response)),
            }
            let Some(theirs) = self.get(&id).await? else {
                etag = None;
                continue;
            };
            if same_content(&theirs, event) {
                return Ok(PushOutcome::Unchanged { href: id, etag: theirs.etag });
            }
            let their_updated = theirs.updated.as_deref().and_then(parse_instant);
            let ours_newer = (event.sequence, Some(event.updated)) > (theirs.sequence.unwrap_or(0), their_updated);
            match (&theirs.etag, ours_newer) {
                (Some(their_etag), true) => etag = Some(their_etag.clone()),
                _ => {
                    let uid = theirs.ical_uid.clone().unwrap_or_else(|| format!("{id}@google.com"));
                    let body = to_icalendar(&theirs, &uid).unwrap_or_default();
                    return Ok(PushOutcome::KeptTheirs(CalendarObject { href: id, etag: theirs.etag, body }));
                }
            }
        }
        Err(ProviderError::Status(StatusCode::PRECONDITION_FAILED, "changed concurrently on every attempt".into()))
    }

    /// Deletes a booking's event if it still has `etag` (`None`: unconditionally). Gone
    /// already is fine.
    pub async fn delete(&self, booking_id: &str, etag: Option<&str>) -> Result<WriteOutcome, ProviderError> {
        let headers: Vec<(&str, &str)> = etag.map(|e| ("If-Match", e)).into_iter().collect();
        let response =
            self.http.send(Method::DELETE, self.event_url(&event_id_for(booking_id))?, &headers, None).await?;
        match response.status.as_u16() {
            200..=299 | 404 | 410 => Ok(WriteOutcome::Written(None)),
            412 => Ok(WriteOutcome::PreconditionFailed),
            _ => Err(unexpected(&response)),
        }
    }
}

/// A watch channel as Google set it up (`events.watch`'s answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchChannel {
    /// Google's opaque id of the watched resource (notifications carry it in
    /// `X-Goog-Resource-ID`; `channels.stop` needs it).
    pub resource_id: String,
    /// When Google drops the channel (it may choose a shorter life than asked for).
    pub expires_at: DateTime<Utc>,
}

impl GoogleCalendar {
    /// `channels.stop` next to this calendar's URL: `{base}/calendars/{id}/events` gives
    /// `{base}/channels/stop`.
    fn channels_stop_url(&self) -> Result<Url, ProviderError> {
        let path = self.events.path();
        let at = path
            .rfind("/calendars/")
            .ok_or_else(|| ProviderError::Url("the calendar URL has no /calendars/ segment".into()))?;
        let mut url = self.events.clone();
        url.set_path(&format!("{}/channels/stop", &path[..at]));
        Ok(url)
    }

    /// `events.watch`: asks Google to POST to `address` whenever the calendar's events change,
    /// on channel `id` (at most 64 characters of `A-Za-z0-9-_+/=`) with `token` echoed in each
    /// notification, until `expires_at` (Google may cut it shorter; its answer says).
    pub async fn watch(
        &self,
        id: &str,
        address: &str,
        token: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<WatchChannel, ProviderError> {
        let mut url = self.events.clone();
        url.path_segments_mut().map_err(|_| ProviderError::Url("not a base URL".into()))?.push("watch");
        let body = json!({
            "id": id,
            "type": "web_hook",
            "address": address,
            "token": token,
            // int64 fields travel as strings in Google's JSON.
            "expiration": expires_at.timestamp_millis().to_string(),
        });
        let response = self.http.send(Method::POST, url, &[], Some(&body)).await?;
        if !response.status.is_success() {
            return Err(unexpected(&response));
        }
        let answer: Value = response.json()?;
        let resource_id = answer["resourceId"]
            .as_str()
            .filter(|r| !r.is_empty())
            .ok_or_else(|| ProviderError::Json("events.watch answered without a resourceId".into()))?
            .to_owned();
        let millis = match &answer["expiration"] {
            Value::String(s) => s.parse::<i64>().ok(),
            Value::Number(n) => n.as_i64(),
            _ => None,
        };
        let expires_at = millis.and_then(DateTime::from_timestamp_millis).unwrap_or(expires_at);
        Ok(WatchChannel { resource_id, expires_at })
    }

    /// `channels.stop`: no more notifications on channel `id`. A channel Google no longer
    /// knows (404) is already stopped.
    pub async fn stop_channel(&self, id: &str, resource_id: &str) -> Result<(), ProviderError> {
        let body = json!({ "id": id, "resourceId": resource_id });
        let response = self.http.send(Method::POST, self.channels_stop_url()?, &[], Some(&body)).await?;
        match response.status.as_u16() {
            200..=299 | 404 => Ok(()),
            _ => Err(unexpected(&response)),
        }
    }
}

fn is_rate_limit(reason: &str) -> bool {
    matches!(reason, "rateLimitExceeded" | "userRateLimitExceeded" | "quotaExceeded" | "RESOURCE_EXHAUSTED")
}

fn request_body(event: &PushEvent, id: &str) -> Value {
    let mut body = json!({
        "id": id,
        "status": "confirmed",
        "summary": event.summary,
        "start": time_json(&event.start),
        "end": time_json(&event.end),
        "transparency": if event.transparent { "transparent" } else { "opaque" },
        "sequence": event.sequence,
        "extendedProperties": {"private": {"fleetBookingId": event.booking_id}},
    });
    if let Some(location) = &event.location {
        body["location"] = json!(location);
    }
    if let Some(description) = &event.description {
        body["description"] = json!(description);
    }
    body
}

fn time_json(time: &PushTime) -> Value {
    match time {
        PushTime::AllDay(date) => json!({"date": date.format("%Y-%m-%d").to_string()}),
        PushTime::Timed { at, zone } => json!({
            "dateTime": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "timeZone": zone.as_deref().unwrap_or("UTC"),
        }),
    }
}

/// Their event says what ours says (Google normalises formats, so compare values).
fn same_content(theirs: &GoogleEvent, ours: &PushEvent) -> bool {
    let text = |v: &Option<String>| v.as_deref().unwrap_or_default().trim().to_owned();
    let time = |t: &Option<GoogleTime>| t.as_ref().and_then(time_key);
    theirs.status.as_deref() != Some("cancelled")
        && text(&theirs.summary) == ours.summary.trim()
        && text(&theirs.location) == ours.location.as_deref().unwrap_or_default().trim()
        && text(&theirs.description) == ours.description.as_deref().unwrap_or_default().trim()
        && time(&theirs.start) == Some(push_key(&ours.start))
        && time(&theirs.end) == Some(push_key(&ours.end))
        && (theirs.transparency.as_deref() == Some("transparent")) == ours.transparent
}

#[derive(PartialEq, Eq)]
enum TimeKey {
    Date(NaiveDate),
    At(DateTime<Utc>),
}

fn time_key(t: &GoogleTime) -> Option<TimeKey> {
    match (&t.date, &t.date_time) {
        (Some(date), _) => NaiveDate::parse_from_str(date, "%Y-%m-%d").ok().map(TimeKey::Date),
        (None, Some(dt)) => parse_instant(dt).map(TimeKey::At),
        _ => None,
    }
}

fn push_key(t: &PushTime) -> TimeKey {
    match t {
        PushTime::AllDay(date) => TimeKey::Date(*date),
        PushTime::Timed { at, .. } => TimeKey::At(*at),
    }
}

fn parse_instant(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text.trim()).ok().map(|t| t.with_timezone(&Utc))
}

/// Converts a pull's items: the latest version of each id; cancelled events as removals.
fn convert_all(
    items: Vec<Value>,
    known_uids: &HashMap<String, String>,
) -> (Vec<CalendarObject>, Vec<String>, Vec<String>) {
    let mut skipped = Vec::new();
    let mut events: Vec<GoogleEvent> = Vec::new();
    let mut position: HashMap<String, usize> = HashMap::new();
    for item in items {
        let id = item.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
        match serde_json::from_value::<GoogleEvent>(item) {
            Ok(event) if !event.id.is_empty() => match position.get(&event.id) {
                Some(&i) => events[i] = event,
                None => {
                    position.insert(event.id.clone(), events.len());
                    events.push(event);
                }
            },
            Ok(_) => skipped.push("an item without id".to_owned()),
            Err(e) => skipped.push(format!("{id}: {e}")),
        }
    }
    // The UIDs of masters seen in this pull, for their instances.
    let mut uids: HashMap<&str, &str> = known_uids.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for event in &events {
        if event.recurring_event_id.is_none()
            && let Some(uid) = &event.ical_uid
        {
            uids.insert(&event.id, uid);
        }
    }
    let mut changed = Vec::new();
    let mut removed = Vec::new();
    for event in &events {
        let cancelled = event.status.as_deref() == Some("cancelled");
        let uid = match (&event.ical_uid, &event.recurring_event_id) {
            (Some(uid), _) => uid.clone(),
            (None, Some(master)) => {
                uids.get(master.as_str()).map(|u| (*u).to_owned()).unwrap_or_else(|| format!("{master}@google.com"))
            }
            (None, None) => format!("{}@google.com", event.id),
        };
        if cancelled && event.recurring_event_id.is_none() {
            removed.push(event.id.clone());
            continue;
        }
        match to_icalendar(event, &uid) {
            Some(body) => changed.push(CalendarObject { href: event.id.clone(), etag: event.etag.clone(), body }),
            None => skipped.push(format!("{}: no readable start", event.id)),
        }
    }
    (changed, removed, skipped)
}

/// One Google event as a VCALENDAR with one VEVENT whose UID is `uid`; `None` without a
/// readable start (or, for a cancelled instance, original start).
pub fn to_icalendar(event: &GoogleEvent, uid: &str) -> Option<Vec<u8>> {
    let cancelled = event.status.as_deref() == Some("cancelled");
    let original = event.original_start_time.as_ref().and_then(ics_time);
    let start = event.start.as_ref().and_then(ics_time).or_else(|| if cancelled { original.clone() } else { None })?;
    let mut vevent = VEvent::default();
    vevent.text("UID", uid);
    if let Some(updated) = event.updated.as_deref().and_then(parse_instant) {
        vevent.time("DTSTAMP", &IcsTime::Utc(updated));
        vevent.time("LAST-MODIFIED", &IcsTime::Utc(updated));
    }
    vevent.raw(&format!("SEQUENCE:{}", event.sequence.unwrap_or(0)));
    if event.recurring_event_id.is_some()
        && let Some(original) = &original
    {
        vevent.time("RECURRENCE-ID", original);
    }
    vevent.time("DTSTART", &start);
    if !cancelled && let Some(end) = event.end.as_ref().and_then(ics_time) {
        vevent.time("DTEND", &end);
    }
    if event.recurring_event_id.is_none() {
        for line in &event.recurrence {
            let upper = line.trim_start().to_ascii_uppercase();
            if ["RRULE", "EXRULE", "RDATE", "EXDATE"].iter().any(|p| upper.starts_with(p)) {
                vevent.raw(line.trim());
            }
        }
    }
    if let Some(summary) = &event.summary {
        vevent.text("SUMMARY", summary);
    }
    if let Some(location) = &event.location {
        vevent.text("LOCATION", location);
    }
    vevent.raw(match event.status.as_deref() {
        Some("cancelled") => "STATUS:CANCELLED",
        Some("tentative") => "STATUS:TENTATIVE",
        _ => "STATUS:CONFIRMED",
    });
    vevent.raw(if event.transparency.as_deref() == Some("transparent") {
        "TRANSP:TRANSPARENT"
    } else {
        "TRANSP:OPAQUE"
    });
    Some(vevent.into_calendar())
}

/// A Google time as an iCalendar value: a date; an instant in its `timeZone` (wall-clock time
/// kept, so a series follows the zone's DST); UTC when the zone is missing or unknown.
fn ics_time(t: &GoogleTime) -> Option<IcsTime> {
    if let Some(date) = &t.date {
        return NaiveDate::parse_from_str(date.trim(), "%Y-%m-%d").ok().map(IcsTime::Date);
    }
    let text = t.date_time.as_deref()?.trim();
    let zone = t.time_zone.as_deref().and_then(resolve_name);
    if let Some(at) = parse_instant(text) {
        return Some(IcsTime::zoned(at, zone.as_ref()));
    }
    // A wall-clock time without offset: only meaningful with its zone.
    let local = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S").ok()?;
    match zone {
        Some(zone) => Some(IcsTime::zoned(crate::zone::localize(local, &zone), Some(&zone))),
        None => t.time_zone.as_deref().map(|tz| IcsTime::unresolved(local, tz)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_base32hex_and_stable() {
        let id = event_id_for("bk_01J9Z-ÅÄÖ/x");
        assert!(id.len() >= 5 && id.len() <= 1024);
        assert!(id.chars().all(|c| matches!(c, 'a'..='v' | '0'..='9')), "{id}");
        assert_eq!(id, event_id_for("bk_01J9Z-ÅÄÖ/x"));
        assert_ne!(id, event_id_for("bk_01J9Z-ÅÄÖ/y"));
        // RFC 4648 test vector, lowercased.
        assert_eq!(base32hex(b"foobar"), "cpnmuoj1e8");
        let long = event_id_for(&"x".repeat(2000));
        assert!(long.len() <= 1024 && long.chars().all(|c| matches!(c, 'a'..='v' | '0'..='9')));
    }
}
