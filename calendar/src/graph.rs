//! Microsoft Graph (Outlook / Microsoft 365) calendars: pull with `calendarView/delta`, push
//! Fleet's bookings.
//!
//! # How to call it
//!
//! ```no_run
//! # async fn demo(token: secrecy::SecretString) -> Result<(), crate::provider::ProviderError> {
//! use chrono::{Months, TimeDelta, Utc};
//! use fleet_net::ClientOptions;
//! use crate::graph::{GraphCalendar, GraphState};
//! // The calendar's URL: `{base}/me/calendar`, `{base}/me/calendars/{id}` or
//! // `{base}/users/{user}/calendars/{id}`; tests point it at a local server.
//! let graph = GraphCalendar::new("https://graph.microsoft.com/v1.0/me/calendar", token, &ClientOptions::default())?;
//! let now = Utc::now();
//! let pull = graph.pull(&GraphState::default(), (now - TimeDelta::days(1), now + Months::new(24))).await?;
//! // `pull.full`: a full listing (stored events missing from it are gone); otherwise changes.
//! // Store `pull.state` (the delta link and its window) once the changes are applied.
//! # Ok(()) }
//! ```
//!
//! Push (from a `calendar.push` job): [`GraphCalendar::push`] with a [`PushEvent`] and the
//! [`GraphRef`] (event id + `@odata.etag`) last stored for it (`None`: believed new). A create
//! carries `transactionId` = the booking id, so Graph answers a retried create with the event
//! the first attempt made. Graph assigns event ids: store the href of the outcome. An update is
//! a PATCH with `If-Match`; on 412 theirs is fetched: equal content → unchanged; ours newer
//! (booking `updated` after their `lastModifiedDateTime`) → written over theirs with their ETag;
//! otherwise kept, returned as iCalendar. [`GraphCalendar::delete`] removes one.
//!
//! # Pull
//!
//! A round starts with `calendarView/delta?startDateTime=…&endDateTime=…` (the window is fixed by
//! that first request), follows `@odata.nextLink` pages, and ends with `@odata.deltaLink`, the
//! token of the next round. `@removed` items are deletions. 410 Gone or the error codes
//! `syncStateNotFound` / `syncStateInvalid` / `resyncRequired` on a stored link start a new
//! round ([`ProviderPull::resynced`]); so does a window whose end is more than 31 days short of
//! the one asked for (the window slides by full listings). The view returns single events,
//! occurrences and exceptions — not series masters — so each item is one VEVENT (href = its
//! id, UID = `iCalUId`; occurrences and exceptions with their `originalStart` as RECURRENCE-ID):
//! `start`/`end` are wall-clock times with a zone that is often a Windows name (`Pacific
//! Standard Time`), resolved by [`crate::zone::resolve_name`] and written with its IANA TZID;
//! `isAllDay` → DATE values; `showAs: free` → TRANSPARENT; `showAs: tentative` → TENTATIVE;
//! `isCancelled` → CANCELLED; `lastModifiedDateTime` → DTSTAMP.

use crate::caldav::{CalendarObject, WriteOutcome};
use crate::provider::{
    Http, IcsTime, MAX_PAGES, MAX_PUSH_ROUNDS, ProviderError, ProviderPull, PushEvent, PushTime, VEvent, unexpected,
};
use crate::push::PushOutcome;
use crate::zone::{Zone, resolve_name};
use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use fleet_net::ClientOptions;
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;
use url::Url;

/// What Fleet stores about a Graph calendar between pulls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphState {
    /// The last `@odata.deltaLink` (`None`: a new round next time).
    #[serde(default)]
    pub delta_link: Option<String>,
    /// The window of the round the link belongs to.
    #[serde(default)]
    pub window_start: Option<DateTime<Utc>>,
    /// Its end.
    #[serde(default)]
    pub window_end: Option<DateTime<Utc>>,
}

/// A stored Graph event: its id and `@odata.etag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphRef {
    /// The Graph event id.
    pub id: String,
    /// Its `@odata.etag`.
    pub etag: String,
}

/// A client for one Graph calendar.
#[derive(Debug, Clone)]
pub struct GraphCalendar {
    http: Http,
    /// The calendar URL, without a trailing slash.
    calendar: Url,
}

/// A Graph `dateTimeTimeZone`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct GraphTime {
    /// Wall-clock time, `2027-03-14T09:00:00.0000000`.
    pub date_time: String,
    /// A Windows or IANA zone name, or `UTC`.
    pub time_zone: Option<String>,
}

/// A Graph location.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct GraphLocation {
    /// The name shown.
    pub display_name: Option<String>,
}

/// The fields of a Graph event Fleet reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct GraphEvent {
    /// The event id (the href of its iCalendar object).
    pub id: String,
    /// The ETag.
    #[serde(rename = "@odata.etag")]
    pub etag: Option<String>,
    /// The iCalendar UID (different for each occurrence of a series).
    #[serde(rename = "iCalUId")]
    pub ical_uid: Option<String>,
    /// Title.
    pub subject: Option<String>,
    /// Location.
    pub location: Option<GraphLocation>,
    /// Start.
    pub start: Option<GraphTime>,
    /// End (exclusive).
    pub end: Option<GraphTime>,
    /// All-day.
    pub is_all_day: bool,
    /// `free`, `tentative`, `busy`, `oof`, `workingElsewhere`, `unknown`.
    pub show_as: Option<String>,
    /// Cancelled by the organiser.
    pub is_cancelled: bool,
    /// `singleInstance`, `occurrence`, `exception` or `seriesMaster`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The series of an occurrence or exception.
    pub series_master_id: Option<String>,
    /// The original start of an occurrence or exception (an instant, RFC 3339).
    pub original_start: Option<String>,
    /// Last change (RFC 3339).
    pub last_modified_date_time: Option<String>,
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    value: Vec<Value>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
    #[serde(rename = "@odata.deltaLink")]
    delta_link: Option<String>,
}

/// How far the stored window's end may lag the asked one before a new round slides it.
const WINDOW_SLACK_DAYS: i64 = 31;

impl GraphCalendar {
    /// A client for the calendar at `calendar_url`.
    pub fn new(
        calendar_url: &str,
        access_token: SecretString,
        options: &ClientOptions,
    ) -> Result<GraphCalendar, ProviderError> {
        let mut calendar = Url::parse(calendar_url).map_err(|e| ProviderError::Url(e.to_string()))?;
        let path = calendar.path().trim_end_matches('/').to_owned();
        calendar.set_path(&path);
        calendar.set_query(None);
        let http = Http::new(&calendar, access_token, options)?;
        Ok(GraphCalendar { http, calendar })
    }

    fn url(&self, segments: &[&str]) -> Result<Url, ProviderError> {
        let mut url = self.calendar.clone();
        url.path_segments_mut().map_err(|_| ProviderError::Url("not a base URL".into()))?.extend(segments);
        Ok(url)
    }

    fn round_start(&self, window: (DateTime<Utc>, DateTime<Utc>)) -> Result<Url, ProviderError> {
        let mut url = self.url(&["calendarView", "delta"])?;
        url.query_pairs_mut()
            .append_pair("startDateTime", &window.0.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .append_pair("endDateTime", &window.1.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        Ok(url)
    }

    /// Pulls what changed since `state`, or everything in `window` when a new round starts (no
    /// link, a refused link, or a stored window ending over 31 days before `window` does).
    pub async fn pull(
        &self,
        state: &GraphState,
        window: (DateTime<Utc>, DateTime<Utc>),
    ) -> Result<ProviderPull<GraphState>, ProviderError> {
        let slid = state.window_end.is_none_or(|end| end < window.1 - TimeDelta::days(WINDOW_SLACK_DAYS));
        let mut incremental = match (&state.delta_link, slid) {
            (Some(link), false) => Some(self.http.same_origin(link)?),
            _ => None,
        };
        let mut resynced = false;
        let mut pages = 0;
        'round: loop {
            let (mut url, round_window) = match &incremental {
                Some(link) => {
                    (link.clone(), (state.window_start.unwrap_or(window.0), state.window_end.unwrap_or(window.1)))
                }
                None => (self.round_start(window)?, window),
            };
            let mut items: Vec<Value> = Vec::new();
            loop {
                if pages >= MAX_PAGES {
                    return Err(ProviderError::Json(format!("more than {MAX_PAGES} pages")));
                }
                let response = self.http.send(Method::GET, url, &[("Prefer", "odata.maxpagesize=200")], None).await?;
                pages += 1;
                let code = response.error_code();
                match response.status.as_u16() {
                    200 => {}
                    400 | 404 | 410
                        if incremental.is_some() && (response.status == StatusCode::GONE || is_resync(&code)) =>
                    {
                        incremental = None;
                        resynced = true;
                        continue 'round;
                    }
                    _ => return Err(unexpected(&response)),
                }
                let page: Page = response.json()?;
                items.extend(page.value);
                match (page.next_link, page.delta_link) {
                    (Some(next), _) => url = self.http.same_origin(&next)?,
                    (None, Some(delta)) => {
                        self.http.same_origin(&delta)?;
                        let (changed, removed, skipped) = convert_all(items);
                        return Ok(ProviderPull {
                            changed,
                            removed,
                            skipped,
                            full: incremental.is_none(),
                            resynced,
                            pages,
                            state: GraphState {
                                delta_link: Some(delta),
                                window_start: Some(round_window.0),
                                window_end: Some(round_window.1),
                            },
                        });
                    }
                    (None, None) => return Err(ProviderError::Json("last page without @odata.deltaLink".into())),
                }
            }
        }
    }

    /// GETs one event; `None` when it is gone.
    pub async fn get(&self, event_id: &str) -> Result<Option<GraphEvent>, ProviderError> {
        let response = self.http.send(Method::GET, self.url(&["events", event_id])?, &[], None).await?;
        match response.status.as_u16() {
            200 => Ok(Some(response.json()?)),
            404 | 410 => Ok(None),
            _ => Err(unexpected(&response)),
        }
    }

    /// The event a create with this booking's `transactionId` made, if any.
    async fn find_by_transaction(&self, booking_id: &str) -> Result<Option<GraphEvent>, ProviderError> {
        let mut url = self.url(&["events"])?;
        url.query_pairs_mut()
            .append_pair("$filter", &format!("transactionId eq '{}'", booking_id.replace('\'', "''")))
            .append_pair("$top", "1");
        let response = self.http.send(Method::GET, url, &[], None).await?;
        if response.status != StatusCode::OK {
            return Err(unexpected(&response));
        }
        let page: Page = response.json()?;
        Ok(page.value.into_iter().next().and_then(|v| serde_json::from_value(v).ok()))
    }

    /// Writes a booking (see the module documentation). `known`: the event id and ETag Fleet
    /// last stored for it (`None`: believed new). The returned href is the Graph event id.
    pub async fn push(&self, event: &PushEvent, known: Option<&GraphRef>) -> Result<PushOutcome, ProviderError> {
        let mut target: Option<GraphRef> = known.cloned();
        for _ in 0..MAX_PUSH_ROUNDS {
            let theirs = match &target {
                None => {
                    let body = request_body(event, true);
                    let response = self.http.send(Method::POST, self.url(&["events"])?, &[], Some(&body)).await?;
                    match response.status.as_u16() {
                        200 | 201 => {
                            let written: GraphEvent = response.json()?;
                            return Ok(PushOutcome::Written { href: written.id, etag: written.etag });
                        }
                        409 => match self.find_by_transaction(&event.booking_id).await? {
                            Some(theirs) => theirs,
                            None => return Err(unexpected(&response)),
                        },
                        _ => return Err(unexpected(&response)),
                    }
                }
                Some(GraphRef { id, etag }) => {
                    let body = request_body(event, false);
                    let response = self
                        .http
                        .send(Method::PATCH, self.url(&["events", id])?, &[("If-Match", etag)], Some(&body))
                        .await?;
                    match response.status.as_u16() {
                        200 | 201 => {
                            let written: GraphEvent = response.json()?;
                            let href = if written.id.is_empty() { id.clone() } else { written.id };
                            return Ok(PushOutcome::Written { href, etag: written.etag });
                        }
                        412 => match self.get(id).await? {
                            Some(theirs) => theirs,
                            None => {
                                target = None;
                                continue;
                            }
                        },
                        404 | 410 => {
                            target = None;
                            continue;
                        }
                        _ => return Err(unexpected(&response)),
                    }
                }
            };
            if same_content(&theirs, event) {
                return Ok(PushOutcome::Unchanged { href: theirs.id, etag: theirs.etag });
            }
            let their_updated = theirs.last_modified_date_time.as_deref().and_then(parse_instant);
            match (&theirs.etag, Some(event.updated) > their_updated) {
                (Some(etag), true) => target = Some(GraphRef { id: theirs.id.clone(), etag: etag.clone() }),
                _ => {
                    let body = to_icalendar(&theirs).unwrap_or_default();
                    return Ok(PushOutcome::KeptTheirs(CalendarObject { href: theirs.id, etag: theirs.etag, body }));
                }
            }
        }
        Err(ProviderError::Status(StatusCode::PRECONDITION_FAILED, "changed concurrently on every attempt".into()))
    }

    /// Deletes an event if it still has `etag` (`None`: unconditionally). Gone already is fine.
    pub async fn delete(&self, event_id: &str, etag: Option<&str>) -> Result<WriteOutcome, ProviderError> {
        let headers: Vec<(&str, &str)> = etag.map(|e| ("If-Match", e)).into_iter().collect();
        let response = self.http.send(Method::DELETE, self.url(&["events", event_id])?, &headers, None).await?;
        match response.status.as_u16() {
            200..=299 | 404 | 410 => Ok(WriteOutcome::Written(None)),
            412 => Ok(WriteOutcome::PreconditionFailed),
            _ => Err(unexpected(&response)),
        }
    }
}

/// A Graph change-notification subscription as Graph set it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The id Graph assigned (`subscriptionId` in each notification).
    pub id: String,
    /// When Graph drops it unless renewed.
    pub expires_at: DateTime<Utc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubscriptionBody {
    #[serde(default)]
    id: String,
    expiration_date_time: Option<String>,
}

impl SubscriptionBody {
    fn expires(&self, asked: DateTime<Utc>) -> DateTime<Utc> {
        self.expiration_date_time
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map_or(asked, |t| t.to_utc())
    }
}

impl GraphCalendar {
    /// The API root (`https://graph.microsoft.com/v1.0`) and the calendar's events as a
    /// subscription resource (`me/calendars/{id}/events`), from the calendar URL.
    fn subscription_parts(&self) -> Result<(Url, String), ProviderError> {
        let path = self.calendar.path().trim_start_matches('/');
        let (version, rest) = path
            .split_once('/')
            .filter(|(v, rest)| !v.is_empty() && !rest.is_empty())
            .ok_or_else(|| ProviderError::Url("the calendar URL has no API version segment".into()))?;
        let mut root = self.calendar.clone();
        root.set_path(&format!("/{version}"));
        Ok((root, format!("{rest}/events")))
    }

    fn subscription_url(&self, id: Option<&str>) -> Result<Url, ProviderError> {
        let (mut url, _) = self.subscription_parts()?;
        {
            let mut segments = url.path_segments_mut().map_err(|_| ProviderError::Url("not a base URL".into()))?;
            segments.push("subscriptions");
            if let Some(id) = id {
                segments.push(id);
            }
        }
        Ok(url)
    }

    /// `POST /subscriptions`: asks Graph to notify `notification_url` of created, updated and
    /// deleted events of this calendar, each notification carrying `client_state` (at most
    /// 128 characters), until `expires_at`. Graph validates `notification_url` before it
    /// answers (a POST with `?validationToken=`, to be echoed within 10 s).
    pub async fn subscribe(
        &self,
        notification_url: &str,
        client_state: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<Subscription, ProviderError> {
        let (_, resource) = self.subscription_parts()?;
        let body = json!({
            "changeType": "created,updated,deleted",
            "notificationUrl": notification_url,
            "resource": resource,
            "expirationDateTime": expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "clientState": client_state,
        });
        let response = self.http.send(Method::POST, self.subscription_url(None)?, &[], Some(&body)).await?;
        if !response.status.is_success() {
            return Err(unexpected(&response));
        }
        let answer: SubscriptionBody = response.json()?;
        if answer.id.is_empty() {
            return Err(ProviderError::Json("the subscription was answered without an id".into()));
        }
        Ok(Subscription { expires_at: answer.expires(expires_at), id: answer.id })
    }

    /// `PATCH /subscriptions/{id}`: moves the subscription's expiry to `expires_at`; returns
    /// the expiry Graph set. [`ProviderError::NotFound`] when Graph no longer has it.
    pub async fn renew_subscription(
        &self,
        id: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, ProviderError> {
        let body = json!({ "expirationDateTime": expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true) });
        let response = self.http.send(Method::PATCH, self.subscription_url(Some(id))?, &[], Some(&body)).await?;
        if !response.status.is_success() {
            return Err(unexpected(&response));
        }
        let answer: SubscriptionBody =
            response.json().unwrap_or(SubscriptionBody { id: String::new(), expiration_date_time: None });
        Ok(answer.expires(expires_at))
    }

    /// `DELETE /subscriptions/{id}`; one Graph no longer has is already gone.
    pub async fn unsubscribe(&self, id: &str) -> Result<(), ProviderError> {
        let response = self.http.send(Method::DELETE, self.subscription_url(Some(id))?, &[], None).await?;
        match response.status.as_u16() {
            200..=299 | 404 => Ok(()),
            _ => Err(unexpected(&response)),
        }
    }
}

fn is_resync(code: &str) -> bool {
    ["syncstatenotfound", "syncstateinvalid", "resyncrequired"].contains(&code.to_ascii_lowercase().as_str())
}

/// Times are sent in UTC: Graph's `timeZone` wants Windows names, and the instant is what
/// matters for a booking (Outlook shows it in the reader's zone).
fn request_body(event: &PushEvent, create: bool) -> Value {
    let time = |t: &PushTime| match t {
        PushTime::AllDay(date) => {
            json!({"dateTime": format!("{}T00:00:00", date.format("%Y-%m-%d")), "timeZone": "UTC"})
        }
        PushTime::Timed { at, .. } => {
            json!({"dateTime": at.format("%Y-%m-%dT%H:%M:%S").to_string(), "timeZone": "UTC"})
        }
    };
    let mut body = json!({
        "subject": event.summary,
        "start": time(&event.start),
        "end": time(&event.end),
        "isAllDay": matches!(event.start, PushTime::AllDay(_)),
        "showAs": if event.transparent { "free" } else { "busy" },
        "location": {"displayName": event.location.as_deref().unwrap_or_default()},
    });
    if let Some(description) = &event.description {
        body["body"] = json!({"contentType": "text", "content": description});
    }
    if create {
        body["transactionId"] = json!(event.booking_id);
    }
    body
}

fn same_content(theirs: &GraphEvent, ours: &PushEvent) -> bool {
    let instant = |t: &Option<GraphTime>| t.as_ref().and_then(graph_instant);
    let ours_at = |t: &PushTime| match t {
        PushTime::AllDay(date) => date.and_hms_opt(0, 0, 0).map(|d| d.and_utc()),
        PushTime::Timed { at, .. } => Some(*at),
    };
    !theirs.is_cancelled
        && theirs.subject.as_deref().unwrap_or_default().trim() == ours.summary.trim()
        && theirs.location.as_ref().and_then(|l| l.display_name.as_deref()).unwrap_or_default().trim()
            == ours.location.as_deref().unwrap_or_default().trim()
        && theirs.is_all_day == matches!(ours.start, PushTime::AllDay(_))
        && instant(&theirs.start) == ours_at(&ours.start)
        && instant(&theirs.end) == ours_at(&ours.end)
        && (theirs.show_as.as_deref() == Some("free")) == ours.transparent
}

fn parse_instant(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text.trim()).ok().map(|t| t.with_timezone(&Utc))
}

fn parse_local(text: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(text.trim().trim_end_matches('Z'), "%Y-%m-%dT%H:%M:%S%.f").ok()
}

/// The instant of a Graph time (its zone resolved; unknown zones read as UTC).
fn graph_instant(t: &GraphTime) -> Option<DateTime<Utc>> {
    let local = parse_local(&t.date_time)?;
    let zone = t.time_zone.as_deref().and_then(resolve_name).unwrap_or(Zone::Utc);
    Some(crate::zone::localize(local, &zone))
}

/// A Graph time as an iCalendar value: a known zone keeps its wall-clock time under the IANA
/// TZID; UTC as UTC; an unknown zone name is written as given (the parser reports it and reads
/// the time in the supplier's zone).
fn ics_time(t: &GraphTime, all_day: bool) -> Option<IcsTime> {
    let local = parse_local(&t.date_time)?;
    if all_day {
        return Some(IcsTime::Date(local.date()));
    }
    let name = t.time_zone.as_deref().unwrap_or("UTC");
    Some(match resolve_name(name) {
        Some(zone @ Zone::Iana(_)) => IcsTime::Local(local, zone.name()),
        Some(zone) => IcsTime::Utc(crate::zone::localize(local, &zone)),
        None => IcsTime::unresolved(local, name),
    })
}

fn convert_all(items: Vec<Value>) -> (Vec<CalendarObject>, Vec<String>, Vec<String>) {
    // The latest row of each id wins, in page order.
    let mut order: Vec<String> = Vec::new();
    let mut latest: HashMap<String, Option<GraphEvent>> = HashMap::new();
    let mut skipped = Vec::new();
    for item in items {
        let id = item.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
        if id.is_empty() {
            skipped.push("an item without id".to_owned());
            continue;
        }
        let row = if item.get("@removed").is_some() {
            None
        } else {
            match serde_json::from_value::<GraphEvent>(item) {
                Ok(event) => Some(event),
                Err(e) => {
                    skipped.push(format!("{id}: {e}"));
                    continue;
                }
            }
        };
        if !latest.contains_key(&id) {
            order.push(id.clone());
        }
        latest.insert(id, row);
    }
    let mut changed = Vec::new();
    let mut removed = Vec::new();
    for id in order {
        match latest.remove(&id).flatten() {
            None => removed.push(id),
            // The view lists a series' occurrences itself; a master would count twice.
            Some(event) if event.kind.as_deref() == Some("seriesMaster") => {}
            Some(event) => match to_icalendar(&event) {
                Some(body) => changed.push(CalendarObject { href: id, etag: event.etag.clone(), body }),
                None => skipped.push(format!("{id}: no readable start")),
            },
        }
    }
    (changed, removed, skipped)
}

/// One Graph event as a VCALENDAR with one VEVENT; `None` without a readable start.
pub fn to_icalendar(event: &GraphEvent) -> Option<Vec<u8>> {
    let start = ics_time(event.start.as_ref()?, event.is_all_day)?;
    let mut vevent = VEvent::default();
    vevent.text("UID", event.ical_uid.as_deref().filter(|u| !u.is_empty()).unwrap_or(&event.id));
    if let Some(updated) = event.last_modified_date_time.as_deref().and_then(parse_instant) {
        vevent.time("DTSTAMP", &IcsTime::Utc(updated));
        vevent.time("LAST-MODIFIED", &IcsTime::Utc(updated));
    }
    if matches!(event.kind.as_deref(), Some("occurrence" | "exception"))
        && let Some(original) = event.original_start.as_deref().and_then(parse_instant)
    {
        vevent.time("RECURRENCE-ID", &IcsTime::Utc(original));
    }
    vevent.time("DTSTART", &start);
    if let Some(end) = event.end.as_ref().and_then(|e| ics_time(e, event.is_all_day)) {
        vevent.time("DTEND", &end);
    }
    if let Some(subject) = &event.subject {
        vevent.text("SUMMARY", subject);
    }
    if let Some(location) = event.location.as_ref().and_then(|l| l.display_name.as_deref()).filter(|l| !l.is_empty()) {
        vevent.text("LOCATION", location);
    }
    vevent.raw(match (event.is_cancelled, event.show_as.as_deref()) {
        (true, _) => "STATUS:CANCELLED",
        (false, Some("tentative")) => "STATUS:TENTATIVE",
        _ => "STATUS:CONFIRMED",
    });
    vevent.raw(if event.show_as.as_deref() == Some("free") { "TRANSP:TRANSPARENT" } else { "TRANSP:OPAQUE" });
    Some(vevent.into_calendar())
}
