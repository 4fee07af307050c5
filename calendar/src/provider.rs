//! What the Google Calendar ([`crate::google`]) and Microsoft Graph ([`crate::graph`]) clients
//! share: an HTTP client with a bearer token, timeouts and a body cap; typed errors (429/503 with
//! their `Retry-After`, read by [`fleet_net::retry_after`], 401); the shape of a pull ([`ProviderPull`]); the event Fleet pushes
//! ([`PushEvent`]); and writing provider events as iCalendar, so the parse → expand → upsert
//! pipeline of CalDAV sources applies unchanged.
//!
//! The access token lives in a [`SecretString`]: it is only ever put in the `Authorization`
//! header, never in `Debug` output or an error. Links the provider hands back (`@odata.nextLink`,
//! `@odata.deltaLink`) are only followed on the origin the client was configured with, so the
//! token is never sent elsewhere.

use crate::caldav::CalendarObject;
use crate::zone::Zone;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use fleet_net::ClientOptions;
use reqwest::{Method, StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;
use thiserror::Error;
use url::Url;

/// Why a provider request failed.
#[derive(Debug, Error)]
pub enum ProviderError {
    /// Connection, TLS or timeout: worth a retry.
    #[error("transport: {0}")]
    Transport(String),
    /// The body was larger than the configured cap.
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    /// 401: the access token is missing, expired or revoked. Retrying with the same token will
    /// not help; the account must be re-authorised (or the token refreshed).
    #[error("the provider rejected the access token ({0}): re-authorise the account")]
    Unauthorised(StatusCode),
    /// 403 that is not a rate limit: the token lacks the scope or the calendar is not shared.
    #[error("forbidden ({0}): the account has no access to this calendar")]
    Forbidden(String),
    /// 404 for the calendar itself.
    #[error("calendar not found")]
    NotFound,
    /// 429/503 (and Google's 403 `rateLimitExceeded`): back off, for `retry_after` when the
    /// provider said so.
    #[error("rate limited ({status}), retry after {retry_after:?}")]
    RateLimited {
        /// The status.
        status: StatusCode,
        /// `Retry-After` (seconds or an HTTP date), when given.
        retry_after: Option<Duration>,
    },
    /// Any other unexpected status, with the provider's error code when it gave one.
    #[error("unexpected status {0} ({1})")]
    Status(StatusCode, String),
    /// A body that is not the JSON expected.
    #[error("bad JSON: {0}")]
    Json(String),
    /// A URL that cannot be built, or a link to another origin.
    #[error("bad URL: {0}")]
    Url(String),
    /// The provider's address is private or reserved and not allowed (the SSRF guard).
    #[error("{0}")]
    Refused(String),
}

impl ProviderError {
    /// True when a later attempt may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ProviderError::Transport(_) | ProviderError::RateLimited { .. })
            || matches!(self, ProviderError::Status(s, _) if s.is_server_error())
    }

    /// The delay the provider asked for, when it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The changes one pull found, as iCalendar objects, and the state to store once they are
/// applied (`S`: [`crate::google::GoogleState`] or [`crate::graph::GraphState`]).
#[derive(Debug, Clone)]
pub struct ProviderPull<S> {
    /// New or changed events, one VCALENDAR each; `href` is the provider's event id.
    pub changed: Vec<CalendarObject>,
    /// Provider event ids deleted since the token.
    pub removed: Vec<String>,
    /// True when this is a full listing (no token, or the token expired): every event the
    /// caller stored that is not in `changed` is gone. False: `changed`/`removed` are changes
    /// only, and everything else stays.
    pub full: bool,
    /// True when a stored token was refused (410 / `syncStateNotFound`) and a full listing
    /// was done instead.
    pub resynced: bool,
    /// Requests made (pages followed).
    pub pages: usize,
    /// Items that could not be read (id: why), for the sync report.
    pub skipped: Vec<String>,
    /// The state to store once the changes are applied, and to pass to the next pull.
    pub state: S,
}

impl<S: serde::Serialize> ProviderPull<S> {
    /// The same pull with its state as JSON, as a source stores it.
    pub fn with_json_state(self) -> ProviderPull<serde_json::Value> {
        ProviderPull {
            changed: self.changed,
            removed: self.removed,
            full: self.full,
            resynced: self.resynced,
            pages: self.pages,
            skipped: self.skipped,
            state: serde_json::to_value(&self.state).unwrap_or_default(),
        }
    }
}

/// A time of a pushed event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushTime {
    /// An instant, shown in `zone` (an IANA name; `None`: UTC).
    Timed {
        /// The instant.
        at: DateTime<Utc>,
        /// The IANA zone it is shown in.
        zone: Option<String>,
    },
    /// An all-day date (the end date is exclusive, as in iCalendar and both APIs).
    AllDay(NaiveDate),
}

/// A booking as Fleet pushes it to a provider calendar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushEvent {
    /// Fleet's booking id: the Google event id is derived from it ([`crate::google::event_id_for`]),
    /// and it is Graph's `transactionId`, so a retried create makes no second event.
    pub booking_id: String,
    /// Title.
    pub summary: String,
    /// Location, if any.
    pub location: Option<String>,
    /// Description, if any.
    pub description: Option<String>,
    /// Start.
    pub start: PushTime,
    /// End (exclusive).
    pub end: PushTime,
    /// Free time (does not block).
    pub transparent: bool,
    /// Our version: bumped on every change of the booking.
    pub sequence: i64,
    /// When the booking last changed in Fleet.
    pub updated: DateTime<Utc>,
}

/// Most 412 rounds of one push before giving up (someone writing in a tight loop).
pub(crate) const MAX_PUSH_ROUNDS: usize = 4;
/// Most pages of one pull.
pub(crate) const MAX_PAGES: usize = 10_000;

/// An HTTP client with a bearer token, bound to one origin.
#[derive(Clone)]
pub(crate) struct Http {
    client: reqwest::Client,
    token: SecretString,
    origin: Url,
    max_response_bytes: usize,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http").field("origin", &self.origin.origin().ascii_serialization()).finish_non_exhaustive()
    }
}

/// A response: status, headers and the (capped) body.
pub(crate) struct Response {
    pub status: StatusCode,
    pub headers: header::HeaderMap,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ProviderError> {
        serde_json::from_slice(&self.body).map_err(|e| ProviderError::Json(e.to_string()))
    }

    /// The provider's error code (`error.code` for Graph, `error.errors[0].reason` or
    /// `error.status` for Google), when the body has one.
    pub fn error_code(&self) -> String {
        let value: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        let error = &value["error"];
        [&error["errors"][0]["reason"], &error["code"], &error["status"]]
            .iter()
            .find_map(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    pub fn etag(&self) -> Option<String> {
        self.headers.get(header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }
}

impl Http {
    pub fn new(base: &Url, token: SecretString, options: &ClientOptions) -> Result<Http, ProviderError> {
        if let Some(guard) = &options.guard {
            guard.check_url(base).map_err(|e| ProviderError::Refused(e.to_string()))?;
        }
        // Redirects would carry the bearer token to wherever they point: none.
        let client = options.client(0).map_err(|e| ProviderError::Transport(e.to_string()))?;
        Ok(Http { client, token, origin: base.clone(), max_response_bytes: options.max_response_bytes })
    }

    /// A link handed back by the provider, refused unless it is on the configured origin.
    pub fn same_origin(&self, link: &str) -> Result<Url, ProviderError> {
        let url = Url::parse(link).map_err(|e| ProviderError::Url(e.to_string()))?;
        if url.origin() != self.origin.origin() {
            return Err(ProviderError::Url(format!(
                "link to {} refused: not the calendar's origin",
                url.origin().ascii_serialization()
            )));
        }
        Ok(url)
    }

    /// Sends a request and reads the body up to the cap. 401, 429 and 503 become errors here;
    /// every other status is the caller's to interpret.
    pub async fn send(
        &self,
        method: Method,
        url: Url,
        headers: &[(&str, &str)],
        json: Option<&serde_json::Value>,
    ) -> Result<Response, ProviderError> {
        let mut builder = self
            .client
            .request(method, url)
            .bearer_auth(self.token.expose_secret())
            .header(header::ACCEPT, "application/json");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        if let Some(json) = json {
            builder = builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(json).map_err(|e| ProviderError::Json(e.to_string()))?);
        }
        let mut response = builder.send().await.map_err(transport)?;
        let status = response.status();
        let headers = response.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > self.max_response_bytes {
                return Err(ProviderError::TooLarge(self.max_response_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        let response = Response { status, headers, body };
        match status {
            StatusCode::UNAUTHORIZED => Err(ProviderError::Unauthorised(status)),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                Err(ProviderError::RateLimited { status, retry_after: fleet_net::retry_after(&response.headers) })
            }
            _ => Ok(response),
        }
    }
}

pub(crate) fn transport(err: reqwest::Error) -> ProviderError {
    match fleet_net::request_failure(err) {
        fleet_net::RequestFailure::Refused(why) => ProviderError::Refused(why),
        other => ProviderError::Transport(other.to_string()),
    }
}

/// The status of a failed request as an error.
pub(crate) fn unexpected(response: &Response) -> ProviderError {
    match response.status.as_u16() {
        404 => ProviderError::NotFound,
        403 => ProviderError::Forbidden(response.error_code()),
        _ => ProviderError::Status(response.status, response.error_code()),
    }
}

/// Writing one VEVENT as iCalendar text.
#[derive(Default)]
pub(crate) struct VEvent {
    lines: Vec<String>,
}

/// A date or date-time property value, ready to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IcsTime {
    /// `;VALUE=DATE:yyyymmdd`.
    Date(NaiveDate),
    /// `:yyyymmddThhmmssZ`.
    Utc(DateTime<Utc>),
    /// `;TZID=<zone>:yyyymmddThhmmss`.
    Local(NaiveDateTime, String),
}

impl IcsTime {
    /// An instant shown in a zone: a known zone keeps the wall-clock time and the zone (so
    /// recurrences follow its DST rules); UTC or an unknown zone gives UTC.
    pub fn zoned(at: DateTime<Utc>, zone: Option<&Zone>) -> IcsTime {
        match zone {
            Some(zone @ (Zone::Iana(_) | Zone::Custom(_))) => IcsTime::Local(zone.local(at), zone.name()),
            _ => IcsTime::Utc(at),
        }
    }

    /// A wall-clock time in a zone the caller could not resolve: written with its TZID as
    /// given, so the parser reports it and reads it in the supplier's zone.
    pub fn unresolved(local: NaiveDateTime, tzid: &str) -> IcsTime {
        IcsTime::Local(local, tzid.to_owned())
    }
}

impl VEvent {
    pub fn text(&mut self, name: &str, value: &str) {
        self.lines.push(format!("{name}:{}", escape_text(value)));
    }

    pub fn raw(&mut self, line: &str) {
        // A provider's own iCalendar line (RRULE, EXDATE, …): one line, no control characters.
        let line: String = line.chars().filter(|c| !c.is_control()).collect();
        if !line.trim().is_empty() {
            self.lines.push(line);
        }
    }

    pub fn time(&mut self, name: &str, time: &IcsTime) {
        self.lines.push(match time {
            IcsTime::Date(date) => format!("{name};VALUE=DATE:{}", date.format("%Y%m%d")),
            IcsTime::Utc(at) => format!("{name}:{}", at.format("%Y%m%dT%H%M%SZ")),
            IcsTime::Local(local, tzid) => {
                format!("{name};TZID={}:{}", param_value(tzid), local.format("%Y%m%dT%H%M%S"))
            }
        });
    }

    /// One VCALENDAR holding this VEVENT, lines folded at 75 octets.
    pub fn into_calendar(self) -> Vec<u8> {
        let mut out = String::from("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Fleet//provider sync//EN\r\n");
        out.push_str("BEGIN:VEVENT\r\n");
        for line in &self.lines {
            fold_into(&mut out, line);
        }
        out.push_str("END:VEVENT\r\nEND:VCALENDAR\r\n");
        out.into_bytes()
    }
}

fn escape_text(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            ';' => out.push_str("\\;"),
            ',' => out.push_str("\\,"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn param_value(value: &str) -> String {
    let clean: String = value.chars().filter(|c| *c != '"' && !c.is_control()).collect();
    if clean.contains([':', ';', ',']) { format!("\"{clean}\"") } else { clean }
}

fn fold_into(out: &mut String, line: &str) {
    let mut width = 0;
    for c in line.chars() {
        let len = c.len_utf8();
        if width + len > 75 {
            out.push_str("\r\n ");
            width = 1;
        }
        out.push(c);
        width += len;
    }
    out.push_str("\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_fold_on_character_boundaries() {
        let mut event = VEvent::default();
        event.text("SUMMARY", &"Müller; ".repeat(20));
        let text = String::from_utf8(event.into_calendar()).unwrap();
        assert!(text.lines().all(|l| l.len() <= 75));
        assert!(text.contains("Müller\\;"));
    }
}
