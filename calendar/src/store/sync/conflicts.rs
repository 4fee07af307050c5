//! Step 6 of applying a fetch: the supplier's double bookings recomputed over all its
//! sources. A conflict's id is a hash of its sorted pair of occurrences, and its outbox
//! event's dedup key carries the conflict's generation (which rises each time it opens
//! again), so a retried apply writes each detection and resolution once.

use super::{SyncReport, SyncSource, Tx};
use crate::{BusyInterval, find_conflicts};
use chrono::{DateTime, Utc};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::Row;
use std::collections::HashMap;

/// (source, occurrence key) of both sides, and the overlap.
type OpenConflict = ((String, String), (String, String), DateTime<Utc>, DateTime<Utc>);

/// Step 6: every busy occurrence of the supplier checked against every other; new and
/// resolved conflicts stored and written to the outbox once each.
pub(super) async fn recompute_conflicts(
    tx: &mut Tx,
    source: &SyncSource,
    report: &mut SyncReport,
) -> Result<(), sqlx::Error> {
    let busy = busy_intervals(tx, source).await?;
    let scanning = std::time::Instant::now();
    let current = current_conflicts(&busy);
    report.conflicts_ms = super::elapsed_ms(scanning);
    let mut open: HashMap<String, (DateTime<Utc>, DateTime<Utc>)> = HashMap::new();
    for row in sqlx::query(
        "SELECT id, start_at, end_at FROM calendar_conflicts WHERE tenant = $1 AND supplier = $2 AND resolved_at IS NULL",
    )
    .bind(&source.tenant)
    .bind(&source.supplier)
    .fetch_all(&mut **tx)
    .await?
    {
        open.insert(row.get("id"), (row.get("start_at"), row.get("end_at")));
    }
    for (id, conflict) in &current {
        match open.get(id) {
            Some(stored) if *stored == (conflict.2, conflict.3) => {}
            Some(_) => move_conflict(tx, id, conflict).await?,
            None => {
                detect_conflict(tx, source, id, conflict).await?;
                report.conflicts_detected += 1;
            }
        }
    }
    for id in open.keys().filter(|id| !current.contains_key(*id)) {
        resolve_conflict(tx, source, id).await?;
        report.conflicts_resolved += 1;
    }
    Ok(())
}

/// The supplier's occurrences that block time now or later: not cancelled, not transparent,
/// not empty, and all-day ones only when the supplier says all-day events are busy.
async fn busy_intervals(
    tx: &mut Tx,
    source: &SyncSource,
) -> Result<Vec<BusyInterval<(String, String, String)>>, sqlx::Error> {
    let all_day_busy: bool =
        sqlx::query_scalar("SELECT all_day_busy FROM calendar_suppliers WHERE tenant = $1 AND supplier = $2")
            .bind(&source.tenant)
            .bind(&source.supplier)
            .fetch_optional(&mut **tx)
            .await?
            .unwrap_or(false);
    let rows = sqlx::query(
        "SELECT source_id, key, uid, start_at, end_at FROM calendar_occurrences
         WHERE tenant = $1 AND supplier = $2 AND status <> 'cancelled' AND NOT transparent AND end_at > start_at
           AND end_at > now() AND ($3 OR NOT all_day)",
    )
    .bind(&source.tenant)
    .bind(&source.supplier)
    .bind(all_day_busy)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .iter()
        .map(|r| BusyInterval {
            key: (r.get("source_id"), r.get("key"), r.get("uid")),
            start: r.get("start_at"),
            end: r.get("end_at"),
        })
        .collect())
}

/// The double bookings among `busy` by conflict id (`cf_` and a hash of the sorted pair, so
/// the same two occurrences are always the same conflict).
fn current_conflicts(busy: &[BusyInterval<(String, String, String)>]) -> HashMap<String, OpenConflict> {
    let mut current = HashMap::new();
    for c in find_conflicts(busy) {
        // The same UID in two calendars is one booking copied, not a double booking.
        if c.a.2 == c.b.2 {
            continue;
        }
        let (a, b) = {
            let a = (c.a.0.clone(), c.a.1.clone());
            let b = (c.b.0.clone(), c.b.1.clone());
            if a <= b { (a, b) } else { (b, a) }
        };
        let id = {
            let mut h = Sha256::new();
            h.update(format!("{}\u{0}{}\u{0}{}\u{0}{}", a.0, a.1, b.0, b.1));
            format!("cf_{}", &hex::encode(h.finalize())[..32])
        };
        current.insert(id, (a, b, c.start, c.end));
    }
    current
}

/// An open conflict whose overlap changed: updated in place, nothing published.
async fn move_conflict(tx: &mut Tx, id: &str, (_, _, start, end): &OpenConflict) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE calendar_conflicts SET start_at = $2, end_at = $3 WHERE id = $1")
        .bind(id)
        .bind(start)
        .bind(end)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A new conflict (or a resolved one back, in its next generation), with its
/// `calendar.conflict.detected` event.
async fn detect_conflict(
    tx: &mut Tx,
    source: &SyncSource,
    id: &str,
    (a, b, start, end): &OpenConflict,
) -> Result<(), sqlx::Error> {
    let generation: i32 = sqlx::query_scalar(
        "INSERT INTO calendar_conflicts (id, tenant, supplier, a_source, a_key, b_source, b_key, start_at, end_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (id) DO UPDATE SET generation = calendar_conflicts.generation + 1, resolved_at = NULL,
           detected_at = now(), start_at = EXCLUDED.start_at, end_at = EXCLUDED.end_at
         RETURNING generation",
    )
    .bind(id)
    .bind(&source.tenant)
    .bind(&source.supplier)
    .bind(&a.0)
    .bind(&a.1)
    .bind(&b.0)
    .bind(&b.1)
    .bind(start)
    .bind(end)
    .fetch_one(&mut **tx)
    .await?;
    outbox(
        tx,
        &source.tenant,
        "calendar.conflict.detected",
        &format!("{id}:{generation}:detected"),
        json!({
            "conflict": id, "supplier": source.supplier, "start": start, "end": end,
            "a": {"source": a.0, "occurrence": a.1}, "b": {"source": b.0, "occurrence": b.1},
        }),
    )
    .await
}

/// An open conflict no longer found, with its `calendar.conflict.resolved` event.
async fn resolve_conflict(tx: &mut Tx, source: &SyncSource, id: &str) -> Result<(), sqlx::Error> {
    let generation: i32 =
        sqlx::query_scalar("UPDATE calendar_conflicts SET resolved_at = now() WHERE id = $1 RETURNING generation")
            .bind(id)
            .fetch_one(&mut **tx)
            .await?;
    outbox(
        tx,
        &source.tenant,
        "calendar.conflict.resolved",
        &format!("{id}:{generation}:resolved"),
        json!({
            "conflict": id, "supplier": source.supplier,
        }),
    )
    .await
}

/// An event for the relay to publish after the commit; `dedup` makes a retried apply's
/// second copy a no-op.
async fn outbox(
    tx: &mut Tx,
    tenant: &str,
    event_type: &str,
    dedup: &str,
    payload: serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO calendar_outbox (tenant, event_type, dedup, payload) VALUES ($1, $2, $3, $4) ON CONFLICT (dedup) DO NOTHING",
    )
    .bind(tenant)
    .bind(event_type)
    .bind(dedup)
    .bind(payload)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
