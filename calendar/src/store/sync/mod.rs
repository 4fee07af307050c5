//! What the `calendar.sync` and `calendar.push` jobs read and write: a source with its sync
//! state, what a sync records on it (errors, quarantine, its report, a refreshed token), and
//! [`apply`]: one fetch turned into the source's events, occurrences and the supplier's
//! double bookings, in one transaction. This is where the hard part of the calendar domain
//! lives; the steps below are named functions, in this order.
//!
//! 1. [`read_objects`]: parse every changed object; keep the newest version of each
//!    (UID, RECURRENCE-ID) within the fetch. A feed that is not iCalendar is quarantined, never
//!    read as "everything deleted".
//! 2. [`lock_supplier`]: one apply per supplier at a time (conflicts span its sources).
//! 3. [`stored_events`], [`gone_events`], [`mass_deletion`]: what the fetch would delete, and
//!    whether that is too much to believe (quarantine instead, until an operator releases).
//! 4. [`write_objects`], [`write_events`], [`delete_events`]: an unchanged content hash is not
//!    rewritten; a lower (SEQUENCE, DTSTAMP) than stored is not applied.
//! 5. [`occurrences`]: re-expand over the window the series the fetch touched (the whole
//!    source on the day's first apply, so the window slides), write only the occurrences
//!    whose fingerprint changed.
//! 6. [`conflicts`]: the supplier's double bookings (after an incremental apply, only those
//!    the changed occurrences can open, move or resolve); each new or resolved one is
//!    written to `calendar_outbox` once (its dedup key carries the conflict's generation), so
//!    a retried apply publishes nothing twice.
//! 7. [`record_applied`]: the new sync state, the report, and commit.
//!
//! A retried or repeated apply is harmless: an unchanged event or occurrence is not
//! rewritten, and the outbox refuses a second copy of an event. A push applies its own write
//! the same way (`mode = "push"`): never quarantined, and the source's sync state kept.
//!
//! Tenant scoping: a job loads its source with its envelope's tenant ([`load_source`]); every
//! later statement addresses that source by id, the source's own (tenant, supplier), or
//! conflict ids read under that (tenant, supplier).

use crate::decode::nul_bytes;
use crate::zone::Zone;
use crate::{Event, decode_complete, parse};
use chrono::{DateTime, Utc};
use conflicts::recompute_conflicts;
use occurrences::rewrite_occurrences;
use serde_json::json;
use sqlx::{PgPool, Row};
use std::collections::{HashMap, HashSet};

mod conflicts;
mod occurrences;

/// How far ahead occurrences are materialised.
pub const WINDOW_MONTHS: u32 = 24;

/// The outbox table the relay publishes conflict events from.
pub(crate) const OUTBOX: &str = "calendar_outbox";

/// Rows per multi-row statement.
const WRITE_CHUNK: usize = 1000;

/// Changed occurrences up to which step 6 looks only at them and what overlaps them.
const SCOPED_CONFLICTS_MAX: usize = 500;

type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

/// (UID, RECURRENCE-ID as stored).
type EventKey = (String, String);
/// A stored event's href, SEQUENCE, DTSTAMP and content hash.
type StoredVersion = (String, i64, Option<DateTime<Utc>>, String);

/// A source as a sync reads it (its secret still sealed).
pub(crate) struct SyncSource {
    pub(crate) tenant: String,
    pub(crate) supplier: String,
    pub(crate) kind: String,
    pub(crate) url: String,
    pub(crate) username: Option<String>,
    pub(crate) secret: Option<String>,
    pub(crate) state: serde_json::Value,
    pub(crate) max_delete_share: f64,
}

/// A fetch, before it is applied.
pub(crate) struct Fetched {
    /// (href, etag, body) of new or changed objects. Bodies stay bytes until
    /// [`crate::decode`] reads them: it unfolds before decoding and falls back to Latin-1,
    /// which a lossy conversion to `String` before it would defeat (U+FFFD for good).
    pub(crate) changed: Vec<(String, Option<String>, Vec<u8>)>,
    /// Hrefs gone.
    pub(crate) removed: Vec<String>,
    /// The source state to store when applied (`Null`: keep it, as a push does).
    pub(crate) state: serde_json::Value,
    pub(crate) mode: &'static str,
}

/// What one sync did (also stored as the source's `last_report`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SyncReport {
    /// Objects fetched.
    pub fetched: usize,
    /// Events written (new or changed).
    pub events_written: usize,
    /// Events seen with an unchanged content hash (not rewritten).
    pub events_unchanged: usize,
    /// Events not applied because the stored version is newer.
    pub events_stale: usize,
    /// Events deleted.
    pub events_deleted: usize,
    /// Occurrences inserted or changed.
    pub occurrences_written: usize,
    /// Occurrences removed.
    pub occurrences_deleted: usize,
    /// Conflicts newly detected.
    pub conflicts_detected: usize,
    /// Conflicts resolved.
    pub conflicts_resolved: usize,
    /// Why the fetch was quarantined instead of applied.
    pub quarantined: Option<String>,
    /// Parse and expansion warnings (the first 50).
    pub warnings: Vec<String>,
    /// How changes were found (`initial`, `incremental`, `listing`, `resync`, `feed`, `not_modified`).
    pub mode: String,
    /// Milliseconds spent fetching from the server (the pull).
    pub fetch_ms: u64,
    /// Milliseconds spent applying it (parse, expand, write, conflicts).
    pub apply_ms: u64,
    /// Of `apply_ms`, milliseconds spent parsing the fetched objects (step 1).
    pub parse_ms: u64,
    /// Of `apply_ms`, milliseconds spent re-expanding the source and comparing its
    /// occurrences with the stored fingerprints (step 5, without its queries).
    pub expand_ms: u64,
    /// Of `apply_ms`, milliseconds spent finding the supplier's double bookings among its
    /// busy intervals (step 6, without its queries). The rest of `apply_ms` is PostgreSQL.
    pub conflicts_ms: u64,
    /// What this sync did to the source's push channel (made, renewed, replaced, or why
    /// not), when it did anything. Not stored with the report.
    #[serde(skip)]
    pub push: Option<String>,
}

/// Source `source_id`, restricted to `tenant` when given: none when missing or another
/// tenant's, so a job cannot learn whether an id exists elsewhere. `None` loads any
/// tenant's source: only Fleet's operators produce such jobs (`fleetctl`, tests), never the
/// public API, which always sets the envelope's tenant from the caller's key.
pub(crate) async fn load_source(
    db: &PgPool,
    tenant: Option<&str>,
    source_id: &str,
) -> Result<Option<SyncSource>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT tenant, supplier, kind, url, username, secret, state, max_delete_share FROM calendar_sources \
         WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)",
    )
    .bind(source_id)
    .bind(tenant)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|row| SyncSource {
        tenant: row.get("tenant"),
        supplier: row.get("supplier"),
        kind: row.get("kind"),
        url: row.get("url"),
        username: row.get("username"),
        secret: row.get("secret"),
        state: row.get("state"),
        max_delete_share: row.get("max_delete_share"),
    }))
}

/// Records a sync that failed for good (the source's `last_error`).
pub(crate) async fn record_failure(db: &PgPool, source_id: &str, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE calendar_sources SET last_sync_at = now(), last_error = $2 WHERE id = $1")
        .bind(source_id)
        .bind(error)
        .execute(db)
        .await?;
    Ok(())
}

/// Records the failure of a sync job that gives up, on source `source_id` of `tenant` (any
/// tenant's with `None`, as in [`load_source`]): its last attempt may have failed before the
/// source was loaded, so the tenant is checked here.
pub(crate) async fn record_failure_of(
    db: &PgPool,
    tenant: Option<&str>,
    source_id: &str,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE calendar_sources SET last_sync_at = now(), last_error = $2 WHERE id = $1 AND ($3::text IS NULL OR tenant = $3)",
    )
    .bind(source_id)
    .bind(error)
    .bind(tenant)
    .execute(db)
    .await?;
    Ok(())
}

/// Records a sync that found nothing changed (and had no window to slide).
pub(crate) async fn record_unchanged(db: &PgPool, source_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE calendar_sources SET last_sync_at = now(), last_ok_at = now(), last_error = NULL WHERE id = $1",
    )
    .bind(source_id)
    .execute(db)
    .await?;
    Ok(())
}

/// Stores a source's re-sealed secret (a refreshed OAuth token), before it is used.
pub(crate) async fn store_secret(db: &PgPool, source_id: &str, sealed: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE calendar_sources SET secret = $2 WHERE id = $1")
        .bind(source_id)
        .bind(sealed)
        .execute(db)
        .await?;
    Ok(())
}

/// The ETag of every stored object of the source, by href (what a CalDAV pull compares).
pub(crate) async fn object_etags(db: &PgPool, source_id: &str) -> Result<HashMap<String, Option<String>>, sqlx::Error> {
    let mut etags = HashMap::new();
    for row in sqlx::query("SELECT href, etag FROM calendar_objects WHERE source_id = $1")
        .bind(source_id)
        .fetch_all(db)
        .await?
    {
        etags.insert(row.get::<String, _>("href"), row.get::<Option<String>, _>("etag"));
    }
    Ok(etags)
}

/// The href of every stored object of the source.
pub(crate) async fn object_hrefs(db: &PgPool, source_id: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT href FROM calendar_objects WHERE source_id = $1").bind(source_id).fetch_all(db).await
}

/// UIDs of the source's stored master events (no RECURRENCE-ID) by href.
pub(crate) async fn master_uids(db: &PgPool, source_id: &str) -> Result<HashMap<String, String>, sqlx::Error> {
    let mut known = HashMap::new();
    for row in sqlx::query("SELECT href, uid FROM calendar_events WHERE source_id = $1 AND rid = ''")
        .bind(source_id)
        .fetch_all(db)
        .await?
    {
        known.insert(row.get::<String, _>("href"), row.get::<String, _>("uid"));
    }
    Ok(known)
}

/// Records that a fetch was not applied, and why; the source stays quarantined until an
/// operator releases it (and a release's `force_apply` is used up).
async fn quarantine(
    db: &PgPool,
    source_id: &str,
    reason: String,
    mut report: SyncReport,
) -> Result<SyncReport, sqlx::Error> {
    report.quarantined = Some(reason.clone());
    sqlx::query(
        "UPDATE calendar_sources SET quarantined = $2, last_sync_at = now(), last_error = $2, last_report = $3,
           state = state - 'force_apply' WHERE id = $1",
    )
    .bind(source_id)
    .bind(&reason)
    .bind(json!(report))
    .execute(db)
    .await?;
    tracing::warn!(source = source_id, reason = %reason, "calendar fetch quarantined, not applied");
    Ok(report)
}

/// Applies `fetched` to source `source_id` (see the steps in the module's header);
/// `fetch_ms` is how long the pull took, stored in the report with the apply's own time.
pub(crate) async fn apply(
    db: &PgPool,
    source_id: &str,
    source: &SyncSource,
    fetched: Fetched,
    fetch_ms: u64,
) -> Result<SyncReport, sqlx::Error> {
    let started = std::time::Instant::now();
    let mut report =
        SyncReport { fetched: fetched.changed.len(), mode: fetched.mode.into(), fetch_ms, ..SyncReport::default() };
    let read = read_objects(fetched.changed, &source.kind, &mut report);
    report.parse_ms = elapsed_ms(started);
    let read = match read {
        Ok(read) => read,
        Err(reason) => {
            report.apply_ms = elapsed_ms(started);
            return quarantine(db, source_id, reason, report).await;
        }
    };

    let mut tx = lock_supplier(db, source).await?;
    let existing = stored_events(&mut tx, source_id, &read, &fetched.removed).await?;
    let gone = gone_events(&existing, &read, &fetched.removed);
    // The guard weighs the deletions against all the source's events: counted only when
    // something would be deleted.
    let stored = if gone.is_empty() { 0 } else { count_events(&mut tx, source_id).await? };
    if let Some(reason) = mass_deletion(source, fetched.mode, stored, gone.len()) {
        tx.rollback().await?;
        report.apply_ms = elapsed_ms(started);
        return quarantine(db, source_id, reason, report).await;
    }

    write_objects(&mut tx, source_id, &read.bodies, &fetched.removed).await?;
    write_events(&mut tx, source_id, &read.events, &existing, &mut report).await?;
    delete_events(&mut tx, source_id, &gone).await?;
    report.events_deleted = gone.len();

    // Occurrences are re-expanded when something changed, and once a day so the window
    // slides; an incremental sync that found nothing costs two queries.
    let changed = !read.bodies.is_empty() || !fetched.removed.is_empty() || report.events_written + gone.len() > 0;
    let expand_now = changed || window_stale(&source.state);
    if expand_now {
        // The day's first apply re-expands the whole source (the window slides); the others
        // only the series the fetch touched: the rest of the source's occurrences cannot have
        // changed, and re-expanding 5,000 events for one was most of an incremental sync.
        let touched = (!window_stale(&source.state)).then(|| touched_uids(&read, &gone));
        let changed =
            rewrite_occurrences(&mut tx, source_id, source, touched.as_ref(), &read.bodies, &mut report).await?;
        // Only the occurrences just changed can open, move or resolve a conflict; the day's
        // first apply checks them all (conflicts that have passed are resolved then).
        // Many changed occurrences (a long series rewritten) are cheaper checked whole.
        let narrow = touched.is_some() && changed.ranges.len() <= SCOPED_CONFLICTS_MAX;
        let scope = narrow.then_some(conflicts::Scope { source_id, changed: &changed });
        recompute_conflicts(&mut tx, source, scope, &mut report).await?;
    }
    let state = next_state(fetched.state, &source.state, expand_now);
    // Measured before the report is stored: `last_report` is what operators read.
    report.apply_ms = elapsed_ms(started);
    record_applied(tx, source_id, state, &report).await?;
    Ok(report)
}

/// Milliseconds since `started`.
pub(crate) fn elapsed_ms(started: std::time::Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The changed objects of a fetch, read.
struct ReadObjects {
    /// The newest version of each (UID, RECURRENCE-ID) within the fetch, with its href.
    events: HashMap<EventKey, (String, Event)>,
    /// Hrefs of the objects read (their stored events not in `events` are gone).
    hrefs: HashSet<String>,
    /// (href, etag, decoded text) to store.
    bodies: Vec<(String, Option<String>, String)>,
}

/// Step 1: decodes and parses every changed object. An object that is not iCalendar, or not
/// whole (a download cut short), is skipped with a warning and its stored events kept; a
/// feed that is not is the quarantine reason (`Err`). NUL bytes are dropped, with a warning.
fn read_objects(
    changed: Vec<(String, Option<String>, Vec<u8>)>,
    kind: &str,
    report: &mut SyncReport,
) -> Result<ReadObjects, String> {
    let mut read = ReadObjects { events: HashMap::new(), hrefs: HashSet::new(), bodies: Vec::new() };
    for (href, etag, body) in changed {
        let text = match decode_complete(&body) {
            Ok(text) => text,
            Err(e) if kind == "ics" => return Err(format!("feed is not iCalendar: {e}")),
            Err(e) => {
                report.warnings.push(format!("{href}: not iCalendar ({e}), skipped"));
                continue;
            }
        };
        // A feed's one object has no href: its warnings say "feed".
        let name = if href.is_empty() { "feed" } else { href.as_str() };
        let nuls = nul_bytes(&body);
        if nuls > 0 && report.warnings.len() < 50 {
            report.warnings.push(format!("{name}: {nuls} NUL bytes removed (not allowed in iCalendar)"));
        }
        let calendar = parse(&text);
        for w in calendar.warnings.iter().take(50usize.saturating_sub(report.warnings.len())) {
            report.warnings.push(format!(
                "{name}: {}{}",
                w.uid.as_deref().map(|u| format!("{u}: ")).unwrap_or_default(),
                w.message
            ));
        }
        for event in calendar.events {
            let rid = event.recurrence_id.as_ref().map(|r| rid_text(r.instant(&Zone::Utc))).unwrap_or_default();
            let key = (event.uid.clone(), rid);
            let newer =
                read.events.get(&key).is_none_or(|(_, e)| (event.sequence, event.dtstamp) >= (e.sequence, e.dtstamp));
            if newer {
                read.events.insert(key, (href.clone(), event));
            }
        }
        read.hrefs.insert(href.clone());
        read.bodies.push((href, etag, text));
    }
    Ok(read)
}

/// Step 2: opens the transaction holding the supplier's lock until it ends: conflicts are
/// computed over all the supplier's sources, so two of its syncs must not interleave.
async fn lock_supplier(db: &PgPool, source: &SyncSource) -> Result<Tx, sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('calendar:' || $1 || ':' || $2))")
        .bind(&source.tenant)
        .bind(&source.supplier)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Step 3: the stored events this fetch can touch, with their versions: those in the
/// objects it re-read or removed, and those with a key it read (an event may move between
/// objects). A one-change sync reads a handful of rows, not the source's 5,000.
async fn stored_events(
    tx: &mut Tx,
    source_id: &str,
    read: &ReadObjects,
    removed: &[String],
) -> Result<HashMap<EventKey, StoredVersion>, sqlx::Error> {
    let hrefs: Vec<&str> = read.hrefs.iter().chain(removed).map(String::as_str).collect();
    let (uids, rids): (Vec<&str>, Vec<&str>) = read.events.keys().map(|(u, r)| (u.as_str(), r.as_str())).unzip();
    let mut existing = HashMap::new();
    for row in sqlx::query(
        "SELECT uid, rid, href, sequence, dtstamp, content_hash FROM calendar_events
          WHERE source_id = $1
            AND (href = ANY($2) OR (uid, rid) IN (SELECT * FROM UNNEST($3::text[], $4::text[])))",
    )
    .bind(source_id)
    .bind(&hrefs)
    .bind(&uids)
    .bind(&rids)
    .fetch_all(&mut **tx)
    .await?
    {
        existing.insert(
            (row.get("uid"), row.get("rid")),
            (row.get("href"), row.get("sequence"), row.get("dtstamp"), row.get("content_hash")),
        );
    }
    Ok(existing)
}

/// Step 3: how many events the source has stored (the mass-deletion guard's base).
async fn count_events(tx: &mut Tx, source_id: &str) -> Result<usize, sqlx::Error> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM calendar_events WHERE source_id = $1")
        .bind(source_id)
        .fetch_one(&mut **tx)
        .await?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// Step 3: events in removed or re-fetched objects that the fetch no longer has.
fn gone_events(existing: &HashMap<EventKey, StoredVersion>, read: &ReadObjects, removed: &[String]) -> Vec<EventKey> {
    let removed: HashSet<&String> = removed.iter().collect();
    existing
        .iter()
        .filter(|(key, (href, ..))| {
            (removed.contains(href) || read.hrefs.contains(href)) && !read.events.contains_key(*key)
        })
        .map(|(key, _)| key.clone())
        .collect()
}

/// Step 3, the mass-deletion guard: why deleting `gone` of `existing` events is not
/// believed, if it is not. Emptying a calendar of several events, or deleting more than the
/// source's share of a larger one, is far more often a broken server or account than a
/// supplier's intent. An operator's release (`force_apply` in the state, set by the API)
/// lets one fetch through, and a push's own write is always applied.
fn mass_deletion(source: &SyncSource, mode: &str, existing: usize, gone: usize) -> Option<String> {
    let emptied = existing >= 2 && gone == existing;
    let too_many = existing >= 4 && gone as f64 > source.max_delete_share * existing as f64;
    let released = source.state.get("force_apply").and_then(|v| v.as_bool()) == Some(true);
    let own_write = mode == "push";
    (gone > 0 && (emptied || too_many) && !released && !own_write).then(|| {
        format!(
            "would delete {gone} of {existing} events (more than {:.0}%): quarantined",
            source.max_delete_share * 100.0
        )
    })
}

/// Step 5's scope: the UIDs whose occurrences a fetch can have changed, those of its events
/// and of the events it deleted (all of a UID's events are expanded together).
fn touched_uids(read: &ReadObjects, gone: &[EventKey]) -> HashSet<String> {
    read.events.keys().chain(gone).map(|(uid, _)| uid.clone()).collect()
}

/// Step 4: stores the fetched objects' bodies and drops the removed ones.
async fn write_objects(
    tx: &mut Tx,
    source_id: &str,
    bodies: &[(String, Option<String>, String)],
    removed: &[String],
) -> Result<(), sqlx::Error> {
    // Multi-row statements: a first sync's 5,000 objects are a handful of round trips. A
    // statement may not upsert one row twice: the last copy of an href wins, as it would
    // one statement each.
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(bodies.len());
    for (i, (href, ..)) in bodies.iter().enumerate() {
        last.insert(href.as_str(), i);
    }
    let bodies: Vec<&(String, Option<String>, String)> =
        bodies.iter().enumerate().filter(|(i, b)| last.get(b.0.as_str()) == Some(i)).map(|(_, b)| b).collect();
    for chunk in bodies.chunks(WRITE_CHUNK) {
        sqlx::query(
            "INSERT INTO calendar_objects (source_id, href, etag, body)
             SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[])
             ON CONFLICT (source_id, href) DO UPDATE SET etag = EXCLUDED.etag, body = EXCLUDED.body",
        )
        .bind(source_id)
        .bind(chunk.iter().map(|b| b.0.as_str()).collect::<Vec<&str>>())
        .bind(chunk.iter().map(|b| b.1.as_deref()).collect::<Vec<Option<&str>>>())
        .bind(chunk.iter().map(|b| b.2.as_str()).collect::<Vec<&str>>())
        .execute(&mut **tx)
        .await?;
    }
    if !removed.is_empty() {
        sqlx::query("DELETE FROM calendar_objects WHERE source_id = $1 AND href = ANY($2)")
            .bind(source_id)
            .bind(removed)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Step 4: writes the new and changed events; an unchanged one (same content hash and
/// href) and one older than what is stored are counted, not written.
async fn write_events(
    tx: &mut Tx,
    source_id: &str,
    events: &HashMap<EventKey, (String, Event)>,
    existing: &HashMap<EventKey, StoredVersion>,
    report: &mut SyncReport,
) -> Result<(), sqlx::Error> {
    let mut writes: Vec<(&EventKey, &String, &Event)> = Vec::new();
    for (key, (href, event)) in events {
        if let Some((old_href, sequence, dtstamp, hash)) = existing.get(key) {
            if *hash == event.content_hash && old_href == href {
                report.events_unchanged += 1;
                continue;
            }
            if (event.sequence, event.dtstamp) < (*sequence, *dtstamp) {
                report.events_stale += 1;
                continue;
            }
        }
        writes.push((key, href, event));
    }
    // Multi-row statements, a bounded number of rows each: a 5,000-event first sync is a
    // handful of round trips, not 5,000.
    for chunk in writes.chunks(WRITE_CHUNK) {
        let column =
            |f: &dyn Fn(&(&EventKey, &String, &Event)) -> String| -> Vec<String> { chunk.iter().map(f).collect() };
        sqlx::query(
            "INSERT INTO calendar_events (source_id, uid, rid, href, sequence, dtstamp, content_hash, summary)
             SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::bigint[], $6::timestamptz[], $7::text[], $8::text[])
             ON CONFLICT (source_id, uid, rid) DO UPDATE SET href = EXCLUDED.href, sequence = EXCLUDED.sequence,
               dtstamp = EXCLUDED.dtstamp, content_hash = EXCLUDED.content_hash, summary = EXCLUDED.summary, updated_at = now()",
        )
        .bind(source_id)
        .bind(column(&|w| w.0.0.clone()))
        .bind(column(&|w| w.0.1.clone()))
        .bind(column(&|w| w.1.clone()))
        .bind(chunk.iter().map(|w| w.2.sequence).collect::<Vec<i64>>())
        .bind(chunk.iter().map(|w| w.2.dtstamp).collect::<Vec<Option<DateTime<Utc>>>>())
        .bind(column(&|w| w.2.content_hash.clone()))
        .bind(chunk.iter().map(|w| w.2.summary.clone()).collect::<Vec<Option<String>>>())
        .execute(&mut **tx)
        .await?;
    }
    report.events_written = writes.len();
    Ok(())
}

/// Step 4: deletes the events that are gone.
async fn delete_events(tx: &mut Tx, source_id: &str, gone: &[EventKey]) -> Result<(), sqlx::Error> {
    for chunk in gone.chunks(WRITE_CHUNK) {
        sqlx::query(
            "DELETE FROM calendar_events WHERE source_id = $1
               AND (uid, rid) IN (SELECT * FROM UNNEST($2::text[], $3::text[]))",
        )
        .bind(source_id)
        .bind(chunk.iter().map(|g| g.0.clone()).collect::<Vec<String>>())
        .bind(chunk.iter().map(|g| g.1.clone()).collect::<Vec<String>>())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// The sync state to store: none for a push (it applies its own write and keeps the
/// source's sync state, as a sync may be between reading and storing its token); for a
/// sync its new state, without a used-up release and with the day the window was slid.
fn next_state(fetched: serde_json::Value, stored: &serde_json::Value, expanded: bool) -> Option<serde_json::Value> {
    match fetched {
        serde_json::Value::Null => None,
        mut state => {
            if let Some(map) = state.as_object_mut() {
                map.remove("force_apply");
                let day = if expanded { Some(today()) } else { window_day(stored).map(str::to_owned) };
                map.insert("window_day".into(), json!(day));
            }
            Some(state)
        }
    }
}

/// Step 7: records the applied fetch on the source and commits.
async fn record_applied(
    mut tx: Tx,
    source_id: &str,
    state: Option<serde_json::Value>,
    report: &SyncReport,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE calendar_sources SET state = COALESCE($2, state), quarantined = NULL, last_sync_at = now(), last_ok_at = now(),
           last_error = NULL, last_report = $3 WHERE id = $1",
    )
    .bind(source_id)
    .bind(&state)
    .bind(json!(report))
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// The UTC day the source's occurrences were last expanded on.
fn window_day(state: &serde_json::Value) -> Option<&str> {
    state.get("window_day").and_then(|v| v.as_str())
}

/// Today (UTC) as `YYYY-MM-DD`.
fn today() -> String {
    Utc::now().format("%Y-%m-%d").to_string()
}

/// Whether the source's window has not been slid to today yet.
pub(crate) fn window_stale(state: &serde_json::Value) -> bool {
    window_day(state) != Some(today().as_str())
}

/// RECURRENCE-ID as stored: the instant in UTC, RFC 3339.
fn rid_text(instant: DateTime<Utc>) -> String {
    instant.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(share: f64, state: serde_json::Value) -> SyncSource {
        SyncSource {
            tenant: "t1".into(),
            supplier: "s1".into(),
            kind: "caldav".into(),
            url: "https://cal.example/".into(),
            username: None,
            secret: None,
            state,
            max_delete_share: share,
        }
    }

    #[test]
    fn mass_deletions_are_held_back_unless_released_or_our_own() {
        let plain = source(0.5, json!({}));
        assert!(mass_deletion(&plain, "incremental", 2, 2).is_some(), "a calendar of several emptied");
        assert!(mass_deletion(&plain, "incremental", 1, 1).is_none(), "one event deleted is believed");
        assert!(mass_deletion(&plain, "incremental", 4, 2).is_none(), "half is not more than half");
        let reason = mass_deletion(&plain, "listing", 4, 3).expect("three of four is too many");
        assert_eq!(reason, "would delete 3 of 4 events (more than 50%): quarantined");
        assert!(mass_deletion(&plain, "incremental", 4, 0).is_none(), "nothing deleted");
        assert!(mass_deletion(&plain, "push", 2, 2).is_none(), "a push's own delete");
        let released = source(0.5, json!({ "force_apply": true }));
        assert!(mass_deletion(&released, "incremental", 10, 10).is_none(), "an operator's release");
    }

    #[test]
    fn a_sync_stores_its_state_without_the_release_and_a_push_keeps_the_stored_one() {
        assert_eq!(next_state(serde_json::Value::Null, &json!({ "token": "a" }), true), None);
        let stored = json!({ "token": "a", "window_day": "2000-01-01" });
        let fetched = json!({ "token": "b", "force_apply": true });
        assert_eq!(
            next_state(fetched.clone(), &stored, false),
            Some(json!({ "token": "b", "window_day": "2000-01-01" }))
        );
        assert_eq!(next_state(fetched, &stored, true), Some(json!({ "token": "b", "window_day": today() })));
    }
}
