//! Push-back: writing a booking made in the platform to the supplier's CalDAV calendar.
//!
//! Create with `If-None-Match: *`, update with `If-Match`, so a concurrent edit is never
//! overwritten blindly. On 412 the server's version is fetched and compared: the one with the
//! higher (SEQUENCE, DTSTAMP) wins — ours is written over theirs with `If-Match` on their ETag,
//! or theirs is kept and returned so the caller stores it. The href comes from our UID, so a
//! retried push is idempotent.

use crate::caldav::{CalDavClient, CalDavError, CalendarObject, Precondition, WriteOutcome};
use crate::{decode, parse};
use chrono::{DateTime, Utc};

/// What a push did.
#[derive(Debug, Clone)]
pub enum PushOutcome {
    /// Written (created or updated); the server's new ETag, when it returned one.
    Written {
        /// The href written.
        href: String,
        /// The new ETag.
        etag: Option<String>,
    },
    /// The server already holds the same content (a retried push).
    Unchanged {
        /// The href.
        href: String,
        /// Its ETag.
        etag: Option<String>,
    },
    /// Someone changed the event concurrently with a newer version: theirs was kept.
    KeptTheirs(CalendarObject),
}

/// How many 412 rounds before giving up (someone writing in a tight loop).
const MAX_ROUNDS: usize = 4;

/// Writes `ics` (one event with UID `uid`) to the collection. `known_etag` is the ETag Fleet
/// last saw for it (`None`: believed new).
pub async fn push_event(
    client: &CalDavClient,
    uid: &str,
    ics: &[u8],
    known_etag: Option<&str>,
) -> Result<PushOutcome, CalDavError> {
    let href = client.href_for_uid(uid);
    let ours = version_of(ics, uid);
    let mut precondition = match known_etag {
        Some(etag) => Precondition::Match(etag.to_owned()),
        None => Precondition::Create,
    };
    for _ in 0..MAX_ROUNDS {
        match client.put(&href, ics, &precondition).await? {
            WriteOutcome::Written(etag) => return Ok(PushOutcome::Written { href, etag }),
            WriteOutcome::PreconditionFailed => {}
        }
        // 412: look at what is there now.
        let Some(theirs) = client.get(&href).await? else {
            // Deleted meanwhile: only an update raced with a delete; recreate.
            precondition = Precondition::Create;
            continue;
        };
        let their_version = version_of(&theirs.body, uid);
        if their_version.as_ref().map(|v| &v.hash) == ours.as_ref().map(|v| &v.hash) {
            return Ok(PushOutcome::Unchanged { href, etag: theirs.etag });
        }
        let ours_newer = match (&ours, &their_version) {
            (Some(o), Some(t)) => (o.sequence, o.dtstamp) > (t.sequence, t.dtstamp),
            (Some(_), None) => true,
            _ => false,
        };
        if !ours_newer {
            return Ok(PushOutcome::KeptTheirs(theirs));
        }
        match theirs.etag {
            Some(etag) => precondition = Precondition::Match(etag),
            None => return Ok(PushOutcome::KeptTheirs(theirs)),
        }
    }
    Err(CalDavError::Status(reqwest::StatusCode::PRECONDITION_FAILED))
}

struct Version {
    sequence: i64,
    dtstamp: Option<DateTime<Utc>>,
    hash: String,
}

/// The version of the master (or first) VEVENT with this UID in a body.
fn version_of(ics: &[u8], uid: &str) -> Option<Version> {
    let calendar = parse(&decode(ics).ok()?);
    let event = calendar.events.iter().filter(|e| e.uid == uid).min_by_key(|e| e.recurrence_id.is_some())?;
    let mut hashes: Vec<&str> =
        calendar.events.iter().filter(|e| e.uid == uid).map(|e| e.content_hash.as_str()).collect();
    hashes.sort_unstable();
    Some(Version { sequence: event.sequence, dtstamp: event.dtstamp, hash: hashes.join(",") })
}
