//! Step 5 of applying a fetch: the source's occurrences (or only the series the fetch
//! touched) re-expanded over the window, and only those whose fingerprint (a hash of the
//! whole occurrence) changed written.

use super::{SyncReport, SyncSource, Tx, WINDOW_MONTHS, WRITE_CHUNK, rid_text};
use crate::zone::Zone;
use crate::{ExpandOptions, Expansion, Occurrence, expand, join_objects, parse};
use chrono::{DateTime, Months, TimeDelta, Utc};
use sha2::{Digest, Sha256};
use sqlx::Row;
use std::collections::{HashMap, HashSet};

/// Step 5: re-expands the series with a UID in `touched` (every series of the source when
/// `None`) and writes only the occurrences that changed. A touched series is read from every
/// object holding one of its events (an override may sit in another object than its master),
/// so it is expanded whole, as in a full expansion.
pub(super) async fn rewrite_occurrences(
    tx: &mut Tx,
    source_id: &str,
    source: &SyncSource,
    touched: Option<&HashSet<String>>,
    fresh: &[(String, Option<String>, String)],
    report: &mut SyncReport,
) -> Result<Changed, sqlx::Error> {
    let zone = supplier_zone(tx, source).await?;
    let uids: Option<Vec<&str>> = touched.map(|t| t.iter().map(String::as_str).collect());
    // The objects this apply has just written are in memory: their bodies are not read
    // back (a first sync's 5,000 of them were megabytes through the connection again).
    let fresh: HashMap<&str, &str> = fresh.iter().map(|(href, _, body)| (href.as_str(), body.as_str())).collect();
    let fresh_hrefs: Vec<&str> = fresh.keys().copied().collect();
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT o.href, CASE WHEN f.href IS NULL THEN o.body END FROM calendar_objects o
           LEFT JOIN UNNEST($3::text[]) AS f(href) ON f.href = o.href
         WHERE o.source_id = $1
           AND ($2::text[] IS NULL OR o.href IN (SELECT href FROM calendar_events WHERE source_id = $1 AND uid = ANY($2)))
         ORDER BY o.href",
    )
    .bind(source_id)
    .bind(&uids)
    .bind(&fresh_hrefs)
    .fetch_all(&mut **tx)
    .await?;
    let expanding = std::time::Instant::now();
    let bodies: Vec<&str> =
        rows.iter().filter_map(|(href, body)| body.as_deref().or_else(|| fresh.get(href.as_str()).copied())).collect();
    let expansion = expand_window(&bodies, zone, touched, report);
    let mut expand_time = expanding.elapsed();
    let mut stored: HashMap<String, String> = HashMap::new();
    for row in sqlx::query(
        "SELECT key, fingerprint FROM calendar_occurrences WHERE source_id = $1 AND ($2::text[] IS NULL OR uid = ANY($2))",
    )
    .bind(source_id)
    .bind(&uids)
    .fetch_all(&mut **tx)
    .await?
    {
        stored.insert(row.get("key"), row.get("fingerprint"));
    }
    let comparing = std::time::Instant::now();
    let (writes, gone) = occurrence_changes(&expansion.occurrences, stored);
    expand_time += comparing.elapsed();
    report.expand_ms = u64::try_from(expand_time.as_millis()).unwrap_or(u64::MAX);
    write_occurrences(tx, source_id, source, &writes).await?;
    report.occurrences_written = writes.len();
    if !gone.is_empty() {
        sqlx::query("DELETE FROM calendar_occurrences WHERE source_id = $1 AND key = ANY($2)")
            .bind(source_id)
            .bind(&gone)
            .execute(&mut **tx)
            .await?;
    }
    report.occurrences_deleted = gone.len();
    let mut keys: Vec<String> = writes.iter().map(|w| w.0.clone()).collect();
    let ranges = writes.iter().map(|w| (w.2.start, w.2.end)).collect();
    keys.extend(gone);
    Ok(Changed { keys, ranges })
}

/// The occurrences of the source a rewrite changed: what step 6 needs to narrow its scan.
pub(super) struct Changed {
    /// Keys of the occurrences written or deleted.
    pub(super) keys: Vec<String>,
    /// (start, end) of each occurrence written.
    pub(super) ranges: Vec<(DateTime<Utc>, DateTime<Utc>)>,
}

/// The supplier's zone for floating times and all-day dates (UTC unless set).
async fn supplier_zone(tx: &mut Tx, source: &SyncSource) -> Result<Zone, sqlx::Error> {
    let zone_name: Option<String> =
        sqlx::query_scalar("SELECT time_zone FROM calendar_suppliers WHERE tenant = $1 AND supplier = $2")
            .bind(&source.tenant)
            .bind(&source.supplier)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(zone_name.and_then(|z| z.parse::<chrono_tz::Tz>().ok()).map(Zone::Iana).unwrap_or(Zone::Utc))
}

/// The source's objects expanded from yesterday to [`WINDOW_MONTHS`] ahead, only the events
/// with a UID in `touched` when given (an object may hold other series too); warnings go
/// to the report (up to 50 in all).
fn expand_window(bodies: &[&str], zone: Zone, touched: Option<&HashSet<String>>, report: &mut SyncReport) -> Expansion {
    let mut calendar = parse(&join_objects(bodies.iter().copied()));
    if let Some(touched) = touched {
        calendar.events.retain(|e| touched.contains(&e.uid));
    }
    let now = Utc::now();
    let mut options = ExpandOptions::window(now - TimeDelta::days(1), now + Months::new(WINDOW_MONTHS));
    options.default_zone = zone;
    let expansion = expand(&calendar, &options);
    for w in expansion.warnings.iter().take(50usize.saturating_sub(report.warnings.len())) {
        report.warnings.push(format!(
            "{}{}",
            w.uid.as_deref().map(|u| format!("{u}: ")).unwrap_or_default(),
            w.message
        ));
    }
    expansion
}

/// The occurrences to write — (key, fingerprint, occurrence) of each new or changed one, the
/// first of a duplicated key — and the stored keys no longer expanded.
fn occurrence_changes(
    occurrences: &[Occurrence],
    mut stored: HashMap<String, String>,
) -> (Vec<(String, String, &Occurrence)>, Vec<String>) {
    let mut seen = HashSet::new();
    let mut writes = Vec::new();
    for o in occurrences {
        let key = format!("{}|{}", o.uid, o.recurrence_id.map(rid_text).unwrap_or_default());
        let fingerprint = {
            let mut h = Sha256::new();
            h.update(serde_json::to_vec(o).unwrap_or_default());
            hex::encode(h.finalize())
        };
        if !seen.insert(key.clone()) {
            continue;
        }
        if stored.get(&key) == Some(&fingerprint) {
            continue;
        }
        writes.push((key, fingerprint, o));
    }
    stored.retain(|k, _| !seen.contains(k));
    (writes, stored.into_keys().collect())
}

/// Upserts occurrences, [`WRITE_CHUNK`] rows a statement.
async fn write_occurrences(
    tx: &mut Tx,
    source_id: &str,
    source: &SyncSource,
    writes: &[(String, String, &Occurrence)],
) -> Result<(), sqlx::Error> {
    for chunk in writes.chunks(WRITE_CHUNK) {
        let texts = |f: &dyn Fn(&Occurrence) -> String| -> Vec<String> { chunk.iter().map(|w| f(w.2)).collect() };
        let options = |f: &dyn Fn(&Occurrence) -> Option<String>| -> Vec<Option<String>> {
            chunk.iter().map(|w| f(w.2)).collect()
        };
        sqlx::query(
            "INSERT INTO calendar_occurrences (source_id, tenant, supplier, key, fingerprint, uid, recurrence_id,
               start_at, end_at, start_local, end_local, zone, all_day, status, transparent, summary)
             SELECT $1, $2, $3, * FROM UNNEST($4::text[], $5::text[], $6::text[], $7::timestamptz[], $8::timestamptz[],
               $9::timestamptz[], $10::timestamp[], $11::timestamp[], $12::text[], $13::bool[], $14::text[], $15::bool[], $16::text[])
             ON CONFLICT (source_id, key) DO UPDATE SET start_at = EXCLUDED.start_at, end_at = EXCLUDED.end_at,
               start_local = EXCLUDED.start_local, end_local = EXCLUDED.end_local, zone = EXCLUDED.zone,
               all_day = EXCLUDED.all_day, status = EXCLUDED.status, transparent = EXCLUDED.transparent,
               summary = EXCLUDED.summary, fingerprint = EXCLUDED.fingerprint, uid = EXCLUDED.uid,
               recurrence_id = EXCLUDED.recurrence_id",
        )
        .bind(source_id)
        .bind(&source.tenant)
        .bind(&source.supplier)
        .bind(chunk.iter().map(|w| w.0.clone()).collect::<Vec<String>>())
        .bind(chunk.iter().map(|w| w.1.clone()).collect::<Vec<String>>())
        .bind(texts(&|o| o.uid.clone()))
        .bind(chunk.iter().map(|w| w.2.recurrence_id).collect::<Vec<Option<DateTime<Utc>>>>())
        .bind(chunk.iter().map(|w| w.2.start).collect::<Vec<DateTime<Utc>>>())
        .bind(chunk.iter().map(|w| w.2.end).collect::<Vec<DateTime<Utc>>>())
        .bind(chunk.iter().map(|w| w.2.start_local).collect::<Vec<chrono::NaiveDateTime>>())
        .bind(chunk.iter().map(|w| w.2.end_local).collect::<Vec<chrono::NaiveDateTime>>())
        .bind(options(&|o| o.zone.clone()))
        .bind(chunk.iter().map(|w| w.2.all_day).collect::<Vec<bool>>())
        .bind(texts(&|o| o.status.as_str().to_owned()))
        .bind(chunk.iter().map(|w| w.2.transparent).collect::<Vec<bool>>())
        .bind(options(&|o| o.summary.clone()))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
