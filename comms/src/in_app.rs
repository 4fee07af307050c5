//! The platform's own messages (`platform_messages`, written by the upstream app) as
//! timeline entries.
//!
//! The client is known directly (the app knows whom it talks to), the row id is the
//! identity (`in_app:<id>`), and threading goes through remembered ids like email: a
//! message with a `thread_ref` joins that conversation (`in_app-thread:<ref>`), one
//! without joins the client's in-app conversation (`in_app-client:<client>`). NUL
//! characters (which PostgreSQL text cannot hold) are stripped.

use crate::entry::{Channel, Direction, NewEntry, snippet};
use crate::parse::{TimeSource, body_fingerprint};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One row of `platform_messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InAppMessage {
    /// The app's id of the message (unique per tenant).
    pub id: String,
    /// The client the conversation is with.
    pub client: String,
    /// Who wrote it (the app's user id or name).
    pub sender: String,
    /// `inbound` (from the client) or `outbound` (from the supplier).
    pub direction: String,
    /// Text.
    pub body: String,
    /// When it was sent.
    pub sent_at: DateTime<Utc>,
    /// The app's conversation, if it has several per client.
    #[serde(default)]
    pub thread_ref: Option<String>,
}

/// The entry of in-app message `m` from `source`, and the raw record kept for it (its
/// JSON; the entry's content hash is the SHA-256 of those bytes).
pub fn entry_from_in_app(m: &InAppMessage, source: &str) -> (NewEntry, Vec<u8>) {
    let raw = serde_json::to_vec(m).unwrap_or_default();
    let text = m.body.replace('\0', "");
    let parent = match m.thread_ref.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
        Some(r) => format!("in_app-thread:{r}"),
        None => format!("in_app-client:{}", m.client),
    };
    let entry = NewEntry {
        client: Some(m.client.clone()).filter(|c| !c.is_empty()),
        source: source.to_owned(),
        channel: Channel::InApp,
        direction: if m.direction == "outbound" { Direction::Outbound } else { Direction::Inbound },
        participants: vec![m.sender.replace('\0', "")],
        subject: None,
        snippet: snippet(&text, 200),
        body_fingerprint: body_fingerprint(&text),
        text,
        time: m.sent_at,
        time_source: TimeSource::Provider,
        message_id: Some(format!("in_app:{}", m.id)),
        parents: vec![parent],
        content_hash: hex::encode(Sha256::digest(&raw)),
        via_list: false,
        attachments: Vec::new(),
        status: None,
    };
    (entry, raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::{Ingested, Location, Timeline};
    use chrono::TimeZone;

    fn msg(id: &str, thread_ref: Option<&str>, body: &str) -> InAppMessage {
        InAppMessage {
            id: id.into(),
            client: "anna".into(),
            sender: "u_anna".into(),
            direction: "inbound".into(),
            body: body.into(),
            sent_at: Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap(),
            thread_ref: thread_ref.map(str::to_owned),
        }
    }

    fn loc(id: &str) -> Location {
        Location { source: "app".into(), folder: format!("in_app:{id}"), uidvalidity: 0, uid: 0 }
    }

    #[test]
    fn messages_thread_by_ref_else_by_client_and_dedup_by_id() {
        let mut t = Timeline::new();
        let (a, _) = entry_from_in_app(&msg("m1", None, "Hi\0 there"), "app");
        assert_eq!(a.client.as_deref(), Some("anna"));
        assert_eq!(a.channel, Channel::InApp);
        assert_eq!(a.text, "Hi there");
        let (b, _) = entry_from_in_app(&msg("m2", None, "Second"), "app");
        let (c, _) = entry_from_in_app(&msg("m3", Some("booking-7"), "About booking 7"), "app");
        let (d, _) = entry_from_in_app(&msg("m4", Some("booking-7"), "More on 7"), "app");
        let ids: Vec<String> = [(a.clone(), "m1"), (b, "m2"), (c, "m3"), (d, "m4")]
            .into_iter()
            .map(|(e, id)| match t.ingest(e, loc(id)) {
                Ingested::New(id) => id,
                Ingested::Duplicate(_) => panic!("new"),
            })
            .collect();
        let thread = |id: &str| t.get(id).unwrap().thread_id.clone();
        assert_eq!(thread(&ids[0]), thread(&ids[1]), "one conversation per client without a ref");
        assert_eq!(thread(&ids[2]), thread(&ids[3]), "a ref is a conversation");
        assert_ne!(thread(&ids[0]), thread(&ids[2]));
        assert!(matches!(t.ingest(a, loc("m1")), Ingested::Duplicate(_)), "the same id is one entry");
    }
}
