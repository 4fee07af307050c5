//! The PostgreSQL timeline: [`fleet_comms::imap::SyncStore`] over the `comms_*`
//! tables, following the in-memory reference ([`fleet_comms::timeline`]) rule for rule.
//!
//! Each commit is one transaction: entries, locations, thread ids, raw messages,
//! quarantine rows **and the folder's cursor**, so a sync killed at any point resumes
//! from the last commit without losing or doubling mail. Commits of one tenant are
//! serialised by a transaction-scoped advisory lock, so two sources of a supplier that
//! carry the same message (a sent copy and its received copy) agree on one entry.

use fleet_comms::entry::{NewEntry, base_subject};
use fleet_comms::imap::{CommitCounts, FetchedItem, FolderBatch, FolderCursor, StoreError, SyncStore};
use fleet_comms::sms::merge_status;
use fleet_comms::timeline::{Location, SUBJECT_WINDOW_DAYS, collision_id, new_thread_id, primary_id, same_content};
use sqlx::{PgPool, Postgres, Row, Transaction};
use std::collections::BTreeSet;

/// A supplier's timeline in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStore {
    db: PgPool,
    tenant: String,
}

fn db_err(e: sqlx::Error) -> StoreError {
    StoreError(e.to_string())
}

fn as_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

impl PgStore {
    /// The timeline of `tenant` in `db`.
    pub fn new(db: PgPool, tenant: impl Into<String>) -> Self {
        PgStore { db, tenant: tenant.into() }
    }

    async fn remove_locations(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        removed: &[Location],
    ) -> Result<usize, StoreError> {
        let mut touched: Vec<String> = Vec::new();
        for l in removed {
            let entry: Option<String> = sqlx::query_scalar(
                "DELETE FROM comms_locations WHERE source_id = $1 AND folder = $2 AND uidvalidity = $3 AND uid = $4 RETURNING entry_id",
            )
            .bind(&l.source)
            .bind(&l.folder)
            .bind(i64::from(l.uidvalidity))
            .bind(i64::from(l.uid))
            .fetch_optional(&mut **tx)
            .await
            .map_err(db_err)?;
            touched.extend(entry);
            sqlx::query(
                "DELETE FROM comms_quarantine WHERE source_id = $1 AND folder = $2 AND uidvalidity = $3 AND uid = $4",
            )
            .bind(&l.source)
            .bind(&l.folder)
            .bind(i64::from(l.uidvalidity))
            .bind(i64::from(l.uid))
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
        }
        self.drop_orphans(tx, &touched).await
    }

    /// Deletes the entries among `ids` that have no location left.
    async fn drop_orphans(&self, tx: &mut Transaction<'_, Postgres>, ids: &[String]) -> Result<usize, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let done = sqlx::query(
            "DELETE FROM comms_entries e WHERE e.tenant = $1 AND e.id = ANY($2)
               AND NOT EXISTS (SELECT 1 FROM comms_locations l WHERE l.tenant = e.tenant AND l.entry_id = e.id)",
        )
        .bind(&self.tenant)
        .bind(ids)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected() as usize)
    }

    async fn put_raw(&self, tx: &mut Transaction<'_, Postgres>, hash: &str, raw: &[u8]) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO comms_raw (content_hash, raw) VALUES ($1, $2) ON CONFLICT (content_hash) DO NOTHING")
            .bind(hash)
            .bind(raw)
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn put_location(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        l: &Location,
        entry_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO comms_locations (source_id, folder, uidvalidity, uid, tenant, entry_id) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (source_id, folder, uidvalidity, uid) DO UPDATE SET entry_id = EXCLUDED.entry_id",
        )
        .bind(&l.source)
        .bind(&l.folder)
        .bind(i64::from(l.uidvalidity))
        .bind(i64::from(l.uid))
        .bind(&self.tenant)
        .bind(entry_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// Adds one parsed message: a new entry or another copy of an existing one.
    /// Returns true for a new entry.
    async fn ingest(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: &NewEntry,
        location: &Location,
    ) -> Result<bool, StoreError> {
        let mut collision = false;
        let id = match &e.message_id {
            Some(mid) => {
                let rows = sqlx::query("SELECT id, doc FROM comms_entries WHERE tenant = $1 AND message_id = $2")
                    .bind(&self.tenant)
                    .bind(mid)
                    .fetch_all(&mut **tx)
                    .await
                    .map_err(db_err)?;
                for row in &rows {
                    let doc: serde_json::Value = row.get("doc");
                    if let Ok(existing) = serde_json::from_value::<NewEntry>(doc)
                        && same_content(&existing, e)
                    {
                        let id: String = row.get("id");
                        // A re-read SMS or call: its status only moves forward.
                        let merged = merge_status(existing.status.as_deref(), e.status.as_deref());
                        if merged != existing.status {
                            sqlx::query("UPDATE comms_entries SET doc = jsonb_set(doc, '{status}', to_jsonb($3::text)) WHERE tenant = $1 AND id = $2")
                                .bind(&self.tenant)
                                .bind(&id)
                                .bind(&merged)
                                .execute(&mut **tx)
                                .await
                                .map_err(db_err)?;
                        }
                        self.put_location(tx, location, &id).await?;
                        return Ok(false);
                    }
                }
                if rows.is_empty() {
                    primary_id(e)
                } else {
                    collision = true;
                    collision_id(e)
                }
            }
            None => {
                let id = primary_id(e);
                let exists: Option<i32> =
                    sqlx::query_scalar("SELECT 1 FROM comms_entries WHERE tenant = $1 AND id = $2")
                        .bind(&self.tenant)
                        .bind(&id)
                        .fetch_optional(&mut **tx)
                        .await
                        .map_err(db_err)?;
                if exists.is_some() {
                    self.put_location(tx, location, &id).await?;
                    return Ok(false);
                }
                id
            }
        };
        let thread = self.thread_for(tx, &id, e).await?;
        if collision && let Some(mid) = &e.message_id {
            sqlx::query("UPDATE comms_entries SET id_collision = TRUE WHERE tenant = $1 AND message_id = $2")
                .bind(&self.tenant)
                .bind(mid)
                .execute(&mut **tx)
                .await
                .map_err(db_err)?;
        }
        let doc = serde_json::to_value(e).map_err(|err| StoreError(err.to_string()))?;
        sqlx::query(
            "INSERT INTO comms_entries (tenant, id, thread_id, client, source_id, channel, direction, occurred_at,
                                        message_id, base_subject, id_collision, doc)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (tenant, id) DO NOTHING",
        )
        .bind(&self.tenant)
        .bind(&id)
        .bind(&thread)
        .bind(&e.client)
        .bind(&e.source)
        .bind(as_text(&e.channel))
        .bind(as_text(&e.direction))
        .bind(e.time)
        .bind(&e.message_id)
        .bind(base_subject(e.subject.as_deref().unwrap_or("")))
        .bind(collision)
        .bind(doc)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        self.put_location(tx, location, &id).await?;
        Ok(true)
    }

    /// The thread of a new entry: linked threads merged into the smallest id, else
    /// the subject fallback within the client and window, else a new thread.
    async fn thread_for(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        id: &str,
        e: &NewEntry,
    ) -> Result<String, StoreError> {
        let keys: Vec<String> = e.message_id.iter().chain(&e.parents).cloned().collect();
        let mut linked: Vec<String> = if keys.is_empty() {
            Vec::new()
        } else {
            sqlx::query_scalar(
                "SELECT DISTINCT thread_id FROM comms_thread_ids WHERE tenant = $1 AND message_id = ANY($2)",
            )
            .bind(&self.tenant)
            .bind(&keys)
            .fetch_all(&mut **tx)
            .await
            .map_err(db_err)?
        };
        linked.sort();
        let thread = if let Some(first) = linked.first().cloned() {
            let others: Vec<String> = linked[1..].to_vec();
            if !others.is_empty() {
                for sql in [
                    "UPDATE comms_thread_ids SET thread_id = $2 WHERE tenant = $1 AND thread_id = ANY($3)",
                    "UPDATE comms_entries SET thread_id = $2 WHERE tenant = $1 AND thread_id = ANY($3)",
                ] {
                    sqlx::query(sql)
                        .bind(&self.tenant)
                        .bind(&first)
                        .bind(&others)
                        .execute(&mut **tx)
                        .await
                        .map_err(db_err)?;
                }
            }
            first
        } else {
            let subject = base_subject(e.subject.as_deref().unwrap_or(""));
            let by_subject: Option<String> = match (&e.client, e.parents.is_empty() && !subject.is_empty()) {
                (Some(client), true) => sqlx::query_scalar(
                    "SELECT thread_id FROM comms_entries
                      WHERE tenant = $1 AND client = $2 AND channel = $3 AND base_subject = $4
                        AND occurred_at BETWEEN $5 - make_interval(days => $6) AND $5 + make_interval(days => $6)
                      ORDER BY abs(extract(epoch FROM occurred_at - $5)) LIMIT 1",
                )
                .bind(&self.tenant)
                .bind(client)
                .bind(as_text(&e.channel))
                .bind(&subject)
                .bind(e.time)
                .bind(SUBJECT_WINDOW_DAYS as i32)
                .fetch_optional(&mut **tx)
                .await
                .map_err(db_err)?,
                _ => None,
            };
            by_subject.unwrap_or_else(|| new_thread_id(id))
        };
        if !keys.is_empty() {
            sqlx::query(
                "INSERT INTO comms_thread_ids (tenant, message_id, thread_id) SELECT $1, k, $3 FROM unnest($2::text[]) AS k
                 ON CONFLICT (tenant, message_id) DO UPDATE SET thread_id = EXCLUDED.thread_id",
            )
            .bind(&self.tenant)
            .bind(&keys)
            .bind(&thread)
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
        }
        Ok(thread)
    }

    async fn add_item(&self, tx: &mut Transaction<'_, Postgres>, item: &FetchedItem) -> Result<bool, StoreError> {
        match &item.outcome {
            Ok(entry) => {
                self.put_raw(tx, &entry.content_hash, &item.raw).await?;
                self.ingest(tx, entry, &item.location).await
            }
            Err(q) => {
                self.put_raw(tx, &q.content_hash, &item.raw).await?;
                let l = &q.location;
                sqlx::query(
                    "INSERT INTO comms_quarantine (source_id, folder, uidvalidity, uid, tenant, reason, content_hash, size)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                )
                .bind(&l.source)
                .bind(&l.folder)
                .bind(i64::from(l.uidvalidity))
                .bind(i64::from(l.uid))
                .bind(&self.tenant)
                .bind(serde_json::to_value(&q.failure).unwrap_or_default())
                .bind(&q.content_hash)
                .bind(q.size as i64)
                .execute(&mut **tx)
                .await
                .map_err(db_err)?;
                Ok(false)
            }
        }
    }
}

impl SyncStore for PgStore {
    async fn cursor(&mut self, source: &str, folder: &str) -> Result<Option<FolderCursor>, StoreError> {
        let row = sqlx::query(
            "SELECT uidvalidity, uidnext, last_uid, highestmodseq FROM comms_cursors WHERE source_id = $1 AND folder = $2",
        )
        .bind(source)
        .bind(folder)
        .fetch_optional(&self.db)
        .await
        .map_err(db_err)?;
        Ok(row.map(|r| FolderCursor {
            uidvalidity: r.get::<i64, _>("uidvalidity") as u32,
            uidnext: r.get::<i64, _>("uidnext") as u32,
            last_uid: r.get::<i64, _>("last_uid") as u32,
            highestmodseq: r.get::<Option<i64>, _>("highestmodseq").map(|m| m as u64),
        }))
    }

    async fn known_uids(&mut self, source: &str, folder: &str, uidvalidity: u32) -> Result<BTreeSet<u32>, StoreError> {
        let uids: Vec<i64> = sqlx::query_scalar(
            "SELECT uid FROM comms_locations WHERE source_id = $1 AND folder = $2 AND uidvalidity = $3
             UNION SELECT uid FROM comms_quarantine WHERE source_id = $1 AND folder = $2 AND uidvalidity = $3",
        )
        .bind(source)
        .bind(folder)
        .bind(i64::from(uidvalidity))
        .fetch_all(&self.db)
        .await
        .map_err(db_err)?;
        Ok(uids.into_iter().map(|u| u as u32).collect())
    }

    async fn commit(&mut self, batch: FolderBatch) -> Result<CommitCounts, StoreError> {
        let mut counts = CommitCounts::default();
        let mut tx = self.db.begin().await.map_err(db_err)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('comms:' || $1))")
            .bind(&self.tenant)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        counts.removed += self.remove_locations(&mut tx, &batch.removed).await?;
        for item in &batch.items {
            match (&item.outcome, self.add_item(&mut tx, item).await?) {
                (Err(_), _) => counts.quarantined += 1,
                (Ok(_), true) => counts.new += 1,
                (Ok(_), false) => counts.duplicates += 1,
            }
        }
        if batch.drop_stale_validity {
            let stale: Vec<String> = sqlx::query_scalar(
                "DELETE FROM comms_locations WHERE source_id = $1 AND folder = $2 AND uidvalidity <> $3 RETURNING entry_id",
            )
            .bind(&batch.source)
            .bind(&batch.folder)
            .bind(i64::from(batch.cursor.uidvalidity))
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
            sqlx::query("DELETE FROM comms_quarantine WHERE source_id = $1 AND folder = $2 AND uidvalidity <> $3")
                .bind(&batch.source)
                .bind(&batch.folder)
                .bind(i64::from(batch.cursor.uidvalidity))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            counts.removed += self.drop_orphans(&mut tx, &stale).await?;
        }
        let c = batch.cursor;
        sqlx::query(
            "INSERT INTO comms_cursors (source_id, folder, uidvalidity, uidnext, last_uid, highestmodseq, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, now())
             ON CONFLICT (source_id, folder) DO UPDATE SET uidvalidity = EXCLUDED.uidvalidity, uidnext = EXCLUDED.uidnext,
                 last_uid = EXCLUDED.last_uid, highestmodseq = EXCLUDED.highestmodseq, updated_at = now()",
        )
        .bind(&batch.source)
        .bind(&batch.folder)
        .bind(i64::from(c.uidvalidity))
        .bind(i64::from(c.uidnext))
        .bind(i64::from(c.last_uid))
        .bind(c.highestmodseq.map(|m| m as i64))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(counts)
    }
}
