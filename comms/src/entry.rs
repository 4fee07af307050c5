//! One timeline entry: what every email, SMS, call and in-app message becomes.

use crate::contacts::{ContactBook, normalise_email};
use crate::parse::{Attachment, ParsedMail, TimeSource};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How the message travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// Email (IMAP).
    Email,
    /// SMS or MMS.
    Sms,
    /// A phone call.
    Call,
    /// The platform's own messages.
    InApp,
}

/// Whether the supplier sent or received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From someone else to the supplier.
    Inbound,
    /// From the supplier.
    Outbound,
}

/// A timeline entry before dedup and threading gave it an id and a thread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEntry {
    /// The matched client, if any participant is one.
    pub client: Option<String>,
    /// The source (mailbox or provider account) it came from.
    pub source: String,
    /// How it travelled.
    pub channel: Channel,
    /// Sent or received.
    pub direction: Direction,
    /// Addresses or E.164 numbers (raw sender ids when not numbers), sender first.
    pub participants: Vec<String>,
    /// Subject (email only), decoded.
    pub subject: Option<String>,
    /// First 200 characters of the text, on one line.
    pub snippet: String,
    /// Full text.
    pub text: String,
    /// UTC time.
    pub time: DateTime<Utc>,
    /// Where [`NewEntry::time`] came from.
    pub time_source: TimeSource,
    /// Message-ID (email) or the provider's id (SMS, calls).
    pub message_id: Option<String>,
    /// Ids this message replies to (In-Reply-To, then References newest first).
    pub parents: Vec<String>,
    /// SHA-256 of the raw message.
    pub content_hash: String,
    /// Fingerprint of the text (see [`crate::parse::body_fingerprint`]).
    pub body_fingerprint: String,
    /// Came through a mailing list.
    pub via_list: bool,
    /// Attachments, listed.
    pub attachments: Vec<Attachment>,
    /// Delivery or call status (SMS and calls), merged monotonically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// A stored timeline entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// Stable id, derived from the message's identity.
    pub id: String,
    /// The thread it belongs to.
    pub thread_id: String,
    /// True when its Message-ID is also used by a different message.
    pub id_collision: bool,
    /// Everything else.
    #[serde(flatten)]
    pub entry: NewEntry,
}

/// The first `max` characters of `text` on one line.
pub fn snippet(text: &str, max: usize) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

/// The entry of parsed mail `mail` from `source`, matched against `book`.
pub fn entry_from_mail(mail: &ParsedMail, source: &str, book: &ContactBook) -> NewEntry {
    let sender = mail.from.first().map(|m| m.address.clone());
    let outbound = sender.as_deref().is_some_and(|s| book.is_own_email(s));
    let mut participants: Vec<String> = Vec::new();
    for m in mail.from.iter().chain(&mail.to).chain(&mail.cc) {
        if let Some(a) = normalise_email(&m.address)
            && !participants.contains(&a)
        {
            participants.push(a);
        }
    }
    let client = participants.iter().filter(|a| !book.is_own_email(a)).find_map(|a| book.client_by_email(a));
    // In-Reply-To first: it is the direct parent; then References from the newest,
    // capped so a long chain cannot fuse unrelated threads.
    let mut parents: Vec<String> = mail.in_reply_to.clone();
    for r in mail.references.iter().rev().take(20) {
        if !parents.contains(r) {
            parents.push(r.clone());
        }
    }
    parents.retain(|p| Some(p) != mail.message_id.as_ref());
    NewEntry {
        client: client.map(str::to_owned),
        source: source.to_owned(),
        channel: Channel::Email,
        direction: if outbound { Direction::Outbound } else { Direction::Inbound },
        participants,
        subject: mail.subject.clone(),
        snippet: snippet(&mail.text, 200),
        text: mail.text.clone(),
        time: mail.time,
        time_source: mail.time_source,
        message_id: mail.message_id.clone(),
        parents,
        content_hash: mail.content_hash.clone(),
        body_fingerprint: mail.body_fingerprint(),
        via_list: mail.list_id.is_some(),
        attachments: mail.attachments.clone(),
        status: None,
    }
}

/// A subject without reply and forward prefixes (`Re:`, `Fwd:`, `AW:`, `SV:`, …) and
/// mailing-list tags (`[wedding-list]`), lower-cased: what a list copy and a reply share.
pub fn base_subject(subject: &str) -> String {
    let mut s = subject.trim();
    loop {
        let before = s;
        if s.starts_with('[')
            && let Some(end) = s.find(']')
        {
            s = s[end + 1..].trim_start();
        }
        let lower = s.to_lowercase();
        for prefix in ["re:", "fw:", "fwd:", "aw:", "sv:", "wg:", "tr:", "réf:", "re :", "fwd :"] {
            if lower.starts_with(prefix) {
                s = s[prefix.len()..].trim_start();
                break;
            }
        }
        if s == before {
            break;
        }
    }
    s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_subject_strips_prefixes_and_list_tags() {
        assert_eq!(base_subject("Re: [weddings] Fwd: Venue  visit"), "venue visit");
        assert_eq!(base_subject("AW: RE: Venue visit"), "venue visit");
        assert_eq!(base_subject("Venue visit"), "venue visit");
    }

    #[test]
    fn snippets_are_one_line_and_capped() {
        assert_eq!(snippet("a\n\n b  c", 200), "a b c");
        assert_eq!(snippet("abcdef", 3), "abc…");
    }
}
