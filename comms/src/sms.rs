//! SMS and call logs from a Twilio-style REST API, as timeline entries.
//!
//! The provider lists records newest first, pages by a `next_page_uri` link, and
//! filters by whole days of `DateSent` (GMT). So a run asks from one day **before** the
//! newest record it has seen (an overlap that catches late-arriving records of that
//! day), follows every next-page link, and relies on the record id (`SM…`, `CA…`) for
//! dedup. Delivery status only moves forward (`queued` → `sent` → `delivered`), so a
//! re-read record never moves an entry's status back. NUL characters (which
//! PostgreSQL text cannot hold) are stripped. Senders that are not phone numbers (an
//! alphanumeric sender such as `VENUE`) stay as they are and match no client.
//!
//! The HTTP side (retries of 429 and 5xx with backoff) is the caller's; this module is
//! the pure part, so it is tested without a network.

use crate::contacts::{ContactBook, normalise_phone};
use crate::entry::{Channel, Direction, NewEntry, snippet};
use crate::parse::{TimeSource, body_fingerprint};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One page of `Messages.json` or `Calls.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Page {
    /// Messages (on a messages page).
    #[serde(default)]
    pub messages: Vec<SmsRecord>,
    /// Calls (on a calls page).
    #[serde(default)]
    pub calls: Vec<CallRecord>,
    /// The next page, relative to the API's base URL; absent or null on the last page.
    #[serde(default)]
    pub next_page_uri: Option<String>,
}

/// A message record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SmsRecord {
    /// Provider id (`SM…`/`MM…`).
    pub sid: String,
    /// Sender (E.164, `whatsapp:+…`, or an alphanumeric sender id).
    pub from: String,
    /// Recipient.
    pub to: String,
    /// Text.
    #[serde(default)]
    pub body: Option<String>,
    /// `queued`, `sending`, `sent`, `delivered`, `undelivered`, `failed`, `received`, `read`, …
    #[serde(default)]
    pub status: Option<String>,
    /// `inbound`, `outbound-api`, `outbound-call`, `outbound-reply`.
    #[serde(default)]
    pub direction: Option<String>,
    /// RFC 2822 time it was sent.
    #[serde(default)]
    pub date_sent: Option<String>,
    /// RFC 2822 time the record was created.
    #[serde(default)]
    pub date_created: Option<String>,
}

/// A call record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallRecord {
    /// Provider id (`CA…`).
    pub sid: String,
    /// Caller.
    pub from: String,
    /// Callee.
    pub to: String,
    /// `queued`, `ringing`, `in-progress`, `completed`, `busy`, `failed`, `no-answer`, `canceled`.
    #[serde(default)]
    pub status: Option<String>,
    /// `inbound`, `outbound-api`, `outbound-dial`.
    #[serde(default)]
    pub direction: Option<String>,
    /// RFC 2822 start time.
    #[serde(default)]
    pub start_time: Option<String>,
    /// Seconds, as a string.
    #[serde(default)]
    pub duration: Option<String>,
}

/// The rank of a delivery or call status: a merge keeps the higher one.
pub fn status_rank(status: &str) -> u8 {
    match status {
        "accepted" | "scheduled" | "queued" => 1,
        "sending" | "ringing" => 2,
        "sent" | "in-progress" => 3,
        "delivered" | "undelivered" | "failed" | "received" | "completed" | "busy" | "no-answer" | "canceled" => 4,
        "read" => 5,
        _ => 0,
    }
}

/// The status to keep when `incoming` arrives for a record stored with `stored`.
pub fn merge_status(stored: Option<&str>, incoming: Option<&str>) -> Option<String> {
    match (stored, incoming) {
        (Some(s), Some(i)) => Some(if status_rank(i) >= status_rank(s) { i } else { s }.to_owned()),
        (s, i) => s.or(i).map(str::to_owned),
    }
}

/// The `DateSent>=` day to ask from: one whole day before the newest record seen
/// (the filter is day-granular GMT, so the overlap re-reads that day and the day
/// before), or `None` for everything.
pub fn date_sent_from(newest_seen: Option<DateTime<Utc>>) -> Option<NaiveDate> {
    newest_seen.map(|t| (t - Duration::days(1)).date_naive())
}

fn parse_time(s: Option<&str>) -> Option<DateTime<Utc>> {
    let s = s?.trim();
    DateTime::parse_from_rfc2822(s).or_else(|_| DateTime::parse_from_rfc3339(s)).ok().map(|t| t.with_timezone(&Utc))
}

/// A participant: E.164 when the id is a phone number, else the id as given.
fn party(raw: &str, book: &ContactBook) -> String {
    normalise_phone(raw, book.region()).unwrap_or_else(|| raw.trim().to_owned())
}

fn hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    hex::encode(h.finalize())
}

/// The entry of a message record from `source`.
pub fn entry_from_sms(m: &SmsRecord, source: &str, book: &ContactBook, now: DateTime<Utc>) -> NewEntry {
    let outbound = m.direction.as_deref().is_some_and(|d| d.starts_with("outbound"));
    let (from, to) = (party(&m.from, book), party(&m.to, book));
    let other = if outbound { &m.to } else { &m.from };
    let text = m.body.as_deref().unwrap_or("").replace('\0', "");
    let (time, time_source) = match parse_time(m.date_sent.as_deref()).or_else(|| parse_time(m.date_created.as_deref()))
    {
        Some(t) => (t, TimeSource::Provider),
        None => (now, TimeSource::Ingested),
    };
    NewEntry {
        client: book.client_by_phone(other).map(str::to_owned),
        source: source.to_owned(),
        channel: Channel::Sms,
        direction: if outbound { Direction::Outbound } else { Direction::Inbound },
        participants: vec![from, to],
        subject: None,
        snippet: snippet(&text, 200),
        body_fingerprint: body_fingerprint(&text),
        text,
        time,
        time_source,
        message_id: Some(format!("sms:{}", m.sid)),
        parents: Vec::new(),
        content_hash: hash(&["sms", &m.sid]),
        via_list: false,
        attachments: Vec::new(),
        status: m.status.clone(),
    }
}

/// The entry of a call record from `source`.
pub fn entry_from_call(c: &CallRecord, source: &str, book: &ContactBook, now: DateTime<Utc>) -> NewEntry {
    let outbound = c.direction.as_deref().is_some_and(|d| d.starts_with("outbound"));
    let (from, to) = (party(&c.from, book), party(&c.to, book));
    let other = if outbound { &c.to } else { &c.from };
    let secs: u64 = c.duration.as_deref().and_then(|d| d.parse().ok()).unwrap_or(0);
    let status = c.status.as_deref().unwrap_or("unknown");
    let text =
        format!("{} call, {status}, {}:{:02}", if outbound { "Outgoing" } else { "Incoming" }, secs / 60, secs % 60);
    let (time, time_source) = match parse_time(c.start_time.as_deref()) {
        Some(t) => (t, TimeSource::Provider),
        None => (now, TimeSource::Ingested),
    };
    NewEntry {
        client: book.client_by_phone(other).map(str::to_owned),
        source: source.to_owned(),
        channel: Channel::Call,
        direction: if outbound { Direction::Outbound } else { Direction::Inbound },
        participants: vec![from, to],
        subject: None,
        snippet: text.clone(),
        body_fingerprint: hash(&["call", &c.sid]),
        text,
        time,
        time_source,
        message_id: Some(format!("call:{}", c.sid)),
        parents: Vec::new(),
        content_hash: hash(&["call", &c.sid]),
        via_list: false,
        attachments: Vec::new(),
        status: c.status.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn book() -> ContactBook {
        let mut b = ContactBook::new("GB");
        b.add_client("anna", &[], &["07911 123456"]);
        b.add_own(&[], &["+447700900999"]);
        b
    }

    fn sms(sid: &str, from: &str, status: &str, body: &str) -> SmsRecord {
        SmsRecord {
            sid: sid.into(),
            from: from.into(),
            to: "+447700900999".into(),
            body: Some(body.into()),
            status: Some(status.into()),
            direction: Some("inbound".into()),
            date_sent: Some("Tue, 01 Dec 2026 23:59:30 +0000".into()),
            date_created: None,
        }
    }

    #[test]
    fn pages_parse_with_and_without_a_next_link() {
        let p: Page = serde_json::from_str(
            r#"{"messages":[{"sid":"SM1","from":"+447911123456","to":"+447700900999","body":"hi","status":"received","direction":"inbound","date_sent":"Tue, 01 Dec 2026 10:00:00 +0000"}],"next_page_uri":"/2010-04-01/Accounts/AC1/Messages.json?Page=1&PageToken=PA1","page":0}"#,
        )
        .unwrap();
        assert_eq!(p.messages.len(), 1);
        assert!(p.next_page_uri.is_some());
        let last: Page = serde_json::from_str(r#"{"messages":[],"next_page_uri":null}"#).unwrap();
        assert!(last.next_page_uri.is_none());
    }

    #[test]
    fn messages_match_clients_by_number_and_strip_nul() {
        let now = Utc::now();
        let e = entry_from_sms(&sms("SM1", "07911 123456", "received", "see\0 you"), "tw", &book(), now);
        assert_eq!(e.client.as_deref(), Some("anna"));
        assert_eq!(e.participants, ["+447911123456", "+447700900999"]);
        assert_eq!(e.text, "see you");
        assert_eq!(e.time, Utc.with_ymd_and_hms(2026, 12, 1, 23, 59, 30).unwrap());
        assert_eq!(e.time_source, TimeSource::Provider);
        let venue = entry_from_sms(&sms("SM2", "VENUE", "received", "Your booking"), "tw", &book(), now);
        assert_eq!(venue.client, None, "alphanumeric senders stay unmatched");
        assert_eq!(venue.participants[0], "VENUE");
    }

    #[test]
    fn status_merges_only_move_forward() {
        assert_eq!(merge_status(Some("delivered"), Some("sent")).as_deref(), Some("delivered"));
        assert_eq!(merge_status(Some("sent"), Some("delivered")).as_deref(), Some("delivered"));
        assert_eq!(merge_status(Some("delivered"), Some("read")).as_deref(), Some("read"));
        assert_eq!(merge_status(None, Some("queued")).as_deref(), Some("queued"));
    }

    #[test]
    fn the_date_filter_overlaps_a_whole_day() {
        let newest = Utc.with_ymd_and_hms(2026, 12, 2, 0, 0, 5).unwrap();
        assert_eq!(date_sent_from(Some(newest)), NaiveDate::from_ymd_opt(2026, 12, 1));
        assert_eq!(date_sent_from(None), None);
    }

    #[test]
    fn calls_become_entries() {
        let c = CallRecord {
            sid: "CA1".into(),
            from: "+447700900999".into(),
            to: "07911 123456".into(),
            status: Some("completed".into()),
            direction: Some("outbound-api".into()),
            start_time: Some("Tue, 01 Dec 2026 09:00:00 +0000".into()),
            duration: Some("95".into()),
        };
        let e = entry_from_call(&c, "tw", &book(), Utc::now());
        assert_eq!(e.client.as_deref(), Some("anna"));
        assert_eq!(e.direction, Direction::Outbound);
        assert_eq!(e.text, "Outgoing call, completed, 1:35");
    }
}
