//! The timeline: deduplication, threading and where each entry was seen.
//!
//! **Identity.** An email with a Message-ID is keyed by it; a second message with the
//! same id is the same entry when its content matches (the copy in another folder, the
//! self-cc of a sent mail, a list copy whose subject was rewritten and whose footer
//! was appended), and a new entry flagged `id_collision` when it does not, so a reused
//! Message-ID never hides mail. A message without a Message-ID is keyed by a hash of
//! its sender, time, subject and body: never dropped, and still one entry when the
//! same bytes sit in two folders. SMS and calls are keyed by the provider's id.
//!
//! **Threads.** In-Reply-To and References (JWZ-style) with remembered "ghost" ids: a
//! reply that arrives before its parent holds the parent's id, so the parent joins the
//! reply's thread when it comes. Two threads that a message links are merged into the
//! older one. A message with no reference at all falls back to its subject, but only
//! among the same client's messages within [`Timeline::subject_window`].
//!
//! **Locations.** Each entry remembers where it was seen (source, folder,
//! UIDVALIDITY, UID); an entry leaves the timeline when its last location goes
//! (expunged or `\Deleted` on the server). A UIDVALIDITY change re-keys locations by
//! content identity, so no entry is doubled.
//!
//! **One set of rules.** Dedup and threading are decided by [`decide`], one message at
//! a time against what a timeline already holds ([`Known`]); it returns the decision and
//! changes nothing. The in-memory [`Timeline`] here and the PostgreSQL timeline
//! (`crate::store::PgStore`, which reads up front what a chunk of messages needs to know)
//! both apply its decisions, so they cannot drift; `tests/comms/rules.rs` runs one table
//! of cases against both.

use crate::entry::{Channel, NewEntry, TimelineEntry, base_subject};
use crate::parse::ParseFailure;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Where a message was seen: an IMAP (source, folder, UIDVALIDITY, UID), or a
/// provider's record (folder = the record type, UID 0).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Location {
    /// Source id.
    pub source: String,
    /// IMAP folder, or `sms` / `calls`.
    pub folder: String,
    /// UIDVALIDITY of the folder when it was seen (0 outside IMAP).
    pub uidvalidity: u32,
    /// IMAP UID (0 outside IMAP).
    pub uid: u32,
}

/// A message that could not be parsed, kept with its raw bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quarantined {
    /// Where it was.
    pub location: Location,
    /// Why.
    pub failure: ParseFailure,
    /// SHA-256 of the raw bytes.
    pub content_hash: String,
    /// Size on the server.
    pub size: usize,
}

/// What ingesting one message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    /// A new entry.
    New(String),
    /// The same message as an existing entry (another copy); its id.
    Duplicate(String),
}

/// The timeline of one supplier, in memory.
#[derive(Debug, Clone)]
pub struct Timeline {
    entries: BTreeMap<String, TimelineEntry>,
    /// Message-ID → entries using it.
    by_message_id: HashMap<String, Vec<String>>,
    /// (client, channel, base subject) → entries, for the subject fallback.
    by_subject: HashMap<SubjectKey, Vec<String>>,
    /// Message-ID (seen or only referenced) → thread.
    thread_of_id: HashMap<String, String>,
    /// Entry → where it was seen.
    locations: HashMap<String, HashSet<Location>>,
    /// Location → entry.
    at: HashMap<Location, String>,
    /// Raw messages by content hash.
    raw: HashMap<String, Vec<u8>>,
    quarantine: Vec<Quarantined>,
    /// How far apart two messages may be to thread by subject.
    pub subject_window: Duration,
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline {
            entries: BTreeMap::new(),
            by_message_id: HashMap::new(),
            by_subject: HashMap::new(),
            thread_of_id: HashMap::new(),
            locations: HashMap::new(),
            at: HashMap::new(),
            raw: HashMap::new(),
            quarantine: Vec::new(),
            subject_window: Duration::days(SUBJECT_WINDOW_DAYS),
        }
    }
}

/// The id of an entry: from its Message-ID, or for mail without one from its sender,
/// time, subject and body fingerprint (SMS and calls use the provider's id as
/// Message-ID).
pub fn primary_id(e: &NewEntry) -> String {
    match &e.message_id {
        Some(mid) => format!("e{}", short_hash(&["mid", mid])),
        None => {
            let sender = e.participants.first().map(String::as_str).unwrap_or("");
            let time = e.time.timestamp().to_string();
            let subject = e.subject.as_deref().unwrap_or("");
            format!("e{}", short_hash(&["nomid", sender, &time, subject, &e.body_fingerprint]))
        }
    }
}

/// The id of a message whose Message-ID is already used by a different message.
pub fn collision_id(e: &NewEntry) -> String {
    let mid = e.message_id.as_deref().unwrap_or("");
    format!("e{}", short_hash(&["mid", mid, &e.body_fingerprint]))
}

/// The id of a thread started by entry `entry_id`.
pub fn new_thread_id(entry_id: &str) -> String {
    format!("t{}", entry_id.trim_start_matches('e'))
}

/// Default window of the subject fallback, in days.
pub const SUBJECT_WINDOW_DAYS: i64 = 30;

fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..12])
}

/// True when two messages with the same Message-ID carry the same content: the same
/// body, or one body extending the other (a list footer) with the same base subject.
pub fn same_content(a: &NewEntry, b: &NewEntry) -> bool {
    if a.content_hash == b.content_hash || a.body_fingerprint == b.body_fingerprint {
        return true;
    }
    let squeeze = |t: &str| t.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    let (sa, sb) = (squeeze(&a.text), squeeze(&b.text));
    let (short, long) = if sa.len() <= sb.len() { (sa, sb) } else { (sb, sa) };
    let subjects_match = base_subject(a.subject.as_deref().unwrap_or(""))
        == base_subject(b.subject.as_deref().unwrap_or(""))
        && (a.via_list || b.via_list || a.subject == b.subject);
    subjects_match && !short.is_empty() && long.starts_with(&short)
}

impl Timeline {
    /// An empty timeline.
    pub fn new() -> Self {
        Timeline::default()
    }

    /// Every entry, oldest first.
    pub fn entries(&self) -> Vec<&TimelineEntry> {
        let mut v: Vec<_> = self.entries.values().collect();
        v.sort_by(|a, b| a.entry.time.cmp(&b.entry.time).then_with(|| a.id.cmp(&b.id)));
        v
    }

    /// Entry `id`.
    pub fn get(&self, id: &str) -> Option<&TimelineEntry> {
        self.entries.get(id)
    }

    /// Entries with Message-ID `message_id`.
    pub fn by_message_id(&self, message_id: &str) -> Vec<&TimelineEntry> {
        self.by_message_id.get(message_id).into_iter().flatten().filter_map(|id| self.entries.get(id)).collect()
    }

    /// A client's entries, oldest first.
    pub fn client_timeline(&self, client: &str) -> Vec<&TimelineEntry> {
        self.entries().into_iter().filter(|e| e.entry.client.as_deref() == Some(client)).collect()
    }

    /// Quarantined messages.
    pub fn quarantine(&self) -> &[Quarantined] {
        &self.quarantine
    }

    /// The raw message with content hash `hash`.
    pub fn raw(&self, hash: &str) -> Option<&[u8]> {
        self.raw.get(hash).map(Vec::as_slice)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there is no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry at `location`.
    pub fn entry_at(&self, location: &Location) -> Option<&str> {
        self.at.get(location).map(String::as_str)
    }

    /// UIDs seen in (source, folder) under `uidvalidity`.
    pub fn uids(&self, source: &str, folder: &str, uidvalidity: u32) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .at
            .keys()
            .filter(|l| l.source == source && l.folder == folder && l.uidvalidity == uidvalidity)
            .map(|l| l.uid)
            .collect();
        v.sort_unstable();
        v
    }

    /// Keeps a raw message under its content hash.
    pub fn keep_raw(&mut self, hash: &str, raw: &[u8]) {
        self.raw.entry(hash.to_owned()).or_insert_with(|| raw.to_vec());
    }

    /// Quarantines a message that could not be parsed (its raw bytes are kept).
    pub fn add_quarantined(&mut self, q: Quarantined, raw: &[u8]) {
        self.keep_raw(&q.content_hash, raw);
        if !self.quarantine.iter().any(|x| x.location == q.location) {
            self.quarantine.push(q);
        }
    }

    /// Adds `e` seen at `location`: a new entry, or another copy of an existing one.
    pub fn ingest(&mut self, e: NewEntry, location: Location) -> Ingested {
        match decide(self, &e, self.subject_window) {
            Decision::Duplicate { id, status } => {
                if let Some(status) = status
                    && let Some(x) = self.entries.get_mut(&id)
                {
                    x.entry.status = Some(status);
                }
                self.attach(&id, location);
                Ingested::Duplicate(id)
            }
            Decision::New(p) => {
                for from in &p.merged {
                    self.merge_thread(from, &p.thread);
                }
                for key in &p.keys {
                    self.thread_of_id.insert(key.clone(), p.thread.clone());
                }
                if let Some(mid) = &e.message_id {
                    let same = self.by_message_id.entry(mid.clone()).or_default();
                    same.push(p.id.clone());
                    if p.id_collision {
                        for other in same.clone() {
                            if let Some(x) = self.entries.get_mut(&other) {
                                x.id_collision = true;
                            }
                        }
                    }
                }
                if let Some(key) = subject_key(&e) {
                    self.by_subject.entry(key).or_default().push(p.id.clone());
                }
                let entry =
                    TimelineEntry { id: p.id.clone(), thread_id: p.thread, id_collision: p.id_collision, entry: e };
                self.entries.insert(p.id.clone(), entry);
                self.attach(&p.id, location);
                Ingested::New(p.id)
            }
        }
    }

    fn attach(&mut self, id: &str, location: Location) {
        if let Some(old) = self.at.insert(location.clone(), id.to_owned())
            && old != id
            && let Some(set) = self.locations.get_mut(&old)
        {
            set.remove(&location);
            if set.is_empty() {
                self.remove_entry(&old);
            }
        }
        self.locations.entry(id.to_owned()).or_default().insert(location);
    }

    /// Forgets `location` (expunged or `\Deleted`); the entry leaves the timeline when
    /// it was its last location. Returns the removed entry's id.
    pub fn remove_location(&mut self, location: &Location) -> Option<String> {
        let id = self.at.remove(location)?;
        let set = self.locations.get_mut(&id)?;
        set.remove(location);
        if set.is_empty() {
            self.remove_entry(&id);
            return Some(id);
        }
        None
    }

    /// Forgets every location of (source, folder) whose UIDVALIDITY is not `keep`.
    pub fn drop_stale_validity(&mut self, source: &str, folder: &str, keep: u32) -> usize {
        let stale: Vec<Location> = self
            .at
            .keys()
            .filter(|l| l.source == source && l.folder == folder && l.uidvalidity != keep)
            .cloned()
            .collect();
        stale.iter().filter_map(|l| self.remove_location(l)).count()
    }

    fn remove_entry(&mut self, id: &str) {
        self.locations.remove(id);
        let Some(e) = self.entries.remove(id) else { return };
        if let Some(mid) = &e.entry.message_id
            && let Some(v) = self.by_message_id.get_mut(mid)
        {
            v.retain(|x| x != id);
        }
        if let Some(key) = subject_key(&e.entry)
            && let Some(v) = self.by_subject.get_mut(&key)
        {
            v.retain(|x| x != id);
        }
    }

    fn merge_thread(&mut self, from: &str, into: &str) {
        for t in self.thread_of_id.values_mut().filter(|t| *t == from) {
            *t = into.to_owned();
        }
        for e in self.entries.values_mut().filter(|e| e.thread_id == from) {
            e.thread_id = into.to_owned();
        }
    }
}

/// What the subject fallback compares: entries of one client, one channel and one base
/// subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubjectKey {
    /// The client.
    pub client: String,
    /// The channel.
    pub channel: Channel,
    /// [`base_subject`] of the subject, never empty.
    pub subject: String,
}

/// The subject-fallback key of `e`: only entries with a client and a subject have one.
pub fn subject_key(e: &NewEntry) -> Option<SubjectKey> {
    let client = e.client.clone()?;
    let subject = base_subject(e.subject.as_deref()?);
    (!subject.is_empty()).then_some(SubjectKey { client, channel: e.channel, subject })
}

/// What [`decide`] asks of a timeline: the entries already in it (a store may answer for
/// only the messages it is about to decide, having read what they need up front).
pub trait Known {
    /// The entries with Message-ID `message_id`: (entry id, entry).
    fn with_message_id(&self, message_id: &str) -> Vec<(&str, &NewEntry)>;
    /// True when entry `id` is in the timeline.
    fn has_entry(&self, id: &str) -> bool;
    /// The thread of Message-ID `id`, seen or only referenced (a "ghost").
    fn thread_of(&self, id: &str) -> Option<&str>;
    /// (time, thread) of entries with subject key `key`: all of them, or at least the
    /// nearest to `time` on each side within `window` (ties: the smallest thread id).
    fn same_subject(&self, key: &SubjectKey, time: DateTime<Utc>, window: Duration) -> Vec<(DateTime<Utc>, String)>;
}

/// Where a new entry goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Its id.
    pub id: String,
    /// Its Message-ID is already used by a different message: every entry with that
    /// Message-ID is flagged `id_collision`, this one too.
    pub id_collision: bool,
    /// Its thread.
    pub thread: String,
    /// Threads this message links, merged into [`Placement::thread`].
    pub merged: Vec<String>,
    /// Its Message-ID and parents: each now belongs to [`Placement::thread`].
    pub keys: Vec<String>,
}

/// What ingesting one message does to a timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The same message as entry `id` (another copy).
    Duplicate {
        /// The existing entry.
        id: String,
        /// Its status moved forward to this one (a re-read SMS or call).
        status: Option<String>,
    },
    /// A new entry.
    New(Placement),
}

/// The dedup and threading rules: what `e` is in a timeline holding `known`.
///
/// Identity: a Message-ID already used by an entry with the same content (the first
/// by id) is that entry; used only by different content, a new entry under its
/// collision id; unused, a new entry under its primary id, as is mail without a
/// Message-ID (whose id is its content, so a second copy is that entry).
///
/// Thread: the threads of its Message-ID and parents, merged into the smallest id;
/// else, for a message with no parent, the thread of the same client's nearest entry
/// on the same channel with the same base subject within `window` (ties: the earlier,
/// then the smallest thread id); else a thread of its own.
pub fn decide(known: &impl Known, e: &NewEntry, window: Duration) -> Decision {
    let (id, id_collision) = match &e.message_id {
        Some(mid) => {
            let mut same_id = known.with_message_id(mid);
            same_id.sort_by(|a, b| a.0.cmp(b.0));
            if let Some((id, existing)) = same_id.iter().find(|(_, x)| same_content(x, e)) {
                // A re-read SMS or call: its status only moves forward.
                let merged = crate::sms::merge_status(existing.status.as_deref(), e.status.as_deref());
                let status = merged.filter(|m| existing.status.as_ref() != Some(m));
                return Decision::Duplicate { id: (*id).to_owned(), status };
            }
            if same_id.is_empty() { (primary_id(e), false) } else { (collision_id(e), true) }
        }
        None => (primary_id(e), false),
    };
    if known.has_entry(&id) {
        // Mail without a Message-ID seen before, or the collision id of a message seen before.
        return Decision::Duplicate { id, status: None };
    }
    let keys: Vec<String> = e.message_id.iter().chain(&e.parents).cloned().collect();
    let mut linked: Vec<String> = keys.iter().filter_map(|k| known.thread_of(k).map(str::to_owned)).collect();
    linked.sort();
    linked.dedup();
    let (thread, merged) = match linked.split_first() {
        Some((first, others)) => (first.clone(), others.to_vec()),
        None => {
            let by_subject = if e.parents.is_empty() { subject_match(known, e, window) } else { None };
            (by_subject.unwrap_or_else(|| new_thread_id(&id)), Vec::new())
        }
    };
    Decision::New(Placement { id, id_collision, thread, merged, keys })
}

/// The thread of the same client's nearest entry with `e`'s subject key within `window`.
fn subject_match(known: &impl Known, e: &NewEntry, window: Duration) -> Option<String> {
    let key = subject_key(e)?;
    known
        .same_subject(&key, e.time, window)
        .into_iter()
        .filter(|(t, _)| (*t - e.time).abs() <= window)
        .min_by(|(ta, a), (tb, b)| ((*ta - e.time).abs(), ta, a).cmp(&((*tb - e.time).abs(), tb, b)))
        .map(|(_, thread)| thread)
}

impl Known for Timeline {
    fn with_message_id(&self, message_id: &str) -> Vec<(&str, &NewEntry)> {
        let ids = self.by_message_id.get(message_id).into_iter().flatten();
        ids.filter_map(|id| self.entries.get(id)).map(|x| (x.id.as_str(), &x.entry)).collect()
    }

    fn has_entry(&self, id: &str) -> bool {
        self.entries.contains_key(id)
    }

    fn thread_of(&self, id: &str) -> Option<&str> {
        self.thread_of_id.get(id).map(String::as_str)
    }

    fn same_subject(&self, key: &SubjectKey, _: DateTime<Utc>, _: Duration) -> Vec<(DateTime<Utc>, String)> {
        let ids = self.by_subject.get(key).into_iter().flatten();
        ids.filter_map(|id| self.entries.get(id)).map(|x| (x.entry.time, x.thread_id.clone())).collect()
    }
}

/// Turns an unparseable message into a quarantine record.
pub fn quarantine_record(location: Location, failure: ParseFailure, raw: &[u8], size: usize) -> Quarantined {
    Quarantined { location, failure, content_hash: crate::parse::content_hash(raw), size }
}
