//! The PostgreSQL timeline: [`crate::imap::SyncStore`] over the `comms_*` tables.
//!
//! Each commit is one transaction: entries, locations, thread ids, raw messages,
//! quarantine rows, outbox events **and the folder's cursor**, so a sync killed at any
//! point resumes from the last commit without losing or doubling mail. Commits of one
//! tenant are serialised by a transaction-scoped advisory lock, so two sources of a
//! supplier that carry the same message (a sent copy and its received copy) agree on
//! one entry.
//!
//! **Batched.** A commit costs a fixed number of round trips whatever its size: what
//! the chunk needs to know is read up front (entries sharing its Message-IDs, thread
//! ids of its Message-IDs and parents, the nearest same-subject entry on each side of
//! each root), dedup and threading are decided in memory in message order by
//! [`crate::timeline::decide`], the rules the in-memory timeline applies too (exactly
//! as one message at a time would, including messages of the same chunk), and the
//! results are written with multi-row `INSERT … SELECT FROM unnest(…)`.
//!
//! **Events.** Every new entry gets a `comms.entry.created` row in `comms_outbox` in the
//! same transaction (dedup `<tenant>:<entry id>`; the payload has no full text).

use crate::entry::{NewEntry, TimelineEntry, base_subject};
use crate::imap::{CommitCounts, FetchedItem, FolderBatch, FolderCursor, StoreError, SyncStore};
use crate::in_app::{InAppMessage, entry_from_in_app};
use crate::timeline::{
    Decision, Known, Location, SUBJECT_WINDOW_DAYS, SubjectKey, collision_id, decide, primary_id, subject_key,
};
use chrono::{DateTime, Duration, Utc};
use sqlx::{PgPool, Postgres, Row, Transaction};
use std::collections::{BTreeSet, HashMap, HashSet};

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

/// The event type of a new timeline entry.
pub const ENTRY_CREATED: &str = "comms.entry.created";

/// The cursor folder of an in-app source.
pub const IN_APP_FOLDER: &str = "in_app";

/// What an in-app run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct InAppReport {
    /// Rows read.
    pub read: usize,
    /// New entries.
    pub new: usize,
    /// Rows that were already entries.
    pub duplicates: usize,
    /// Commits (one per chunk).
    pub commits: usize,
}

/// A root (a message without parents) as the subject fallback looks it up: its subject
/// key and time.
type Root = (SubjectKey, DateTime<Utc>);

/// A new entry decided in memory, written at the end of the commit.
struct Pending {
    id: String,
    thread: String,
    collision: bool,
    entry: NewEntry,
}

/// The in-memory state of one commit: what the database held for the chunk's ids,
/// plus what the chunk itself adds, message by message. It answers [`decide`]
/// ([`Known`]) and applies its decisions; the writes happen at the end of the commit.
#[derive(Default)]
struct Chunk {
    /// Message-ID → (entry id, entry) with that Message-ID (stored or new here).
    by_mid: HashMap<String, Vec<(String, NewEntry)>>,
    /// Entry ids known (stored among the chunk's candidate ids, or new here).
    ids: HashSet<String>,
    /// Message-ID or parent id → thread.
    thread_of: HashMap<String, String>,
    /// Keys whose thread this commit writes.
    written_keys: HashSet<String>,
    /// Thread merges, in order: (into, from).
    merges: Vec<(String, Vec<String>)>,
    /// Thread → the thread it was merged into (for threads read before a merge).
    renamed: HashMap<String, String>,
    /// Nearest stored entries (time, thread) on each side of each root, by its subject
    /// key and time.
    subject_db: HashMap<Root, Vec<(DateTime<Utc>, String)>>,
    /// Subject key → (time, pending index) of the entries new here.
    subject_new: HashMap<SubjectKey, Vec<(DateTime<Utc>, usize)>>,
    pending: Vec<Pending>,
    pending_at: HashMap<String, usize>,
    /// Status changes of stored entries (entry id → status).
    status: HashMap<String, String>,
    /// Message-IDs used by two different messages.
    collided: BTreeSet<String>,
    /// Location → entry id.
    locations: HashMap<Location, String>,
    /// Raw messages by content hash.
    raw: HashMap<String, Vec<u8>>,
    duplicates: usize,
}

impl Known for Chunk {
    fn with_message_id(&self, message_id: &str) -> Vec<(&str, &NewEntry)> {
        self.by_mid.get(message_id).into_iter().flatten().map(|(id, e)| (id.as_str(), e)).collect()
    }

    fn has_entry(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    fn thread_of(&self, id: &str) -> Option<&str> {
        self.thread_of.get(id).map(String::as_str)
    }

    fn same_subject(&self, key: &SubjectKey, time: DateTime<Utc>, _: Duration) -> Vec<(DateTime<Utc>, String)> {
        // The window is the query's (`load`): the stored rows are the nearest within it.
        let stored = self.subject_db.get(&(key.clone(), time)).into_iter().flatten();
        let here = self.subject_new.get(key).into_iter().flatten();
        stored
            .map(|(t, thread)| (*t, self.resolve(thread)))
            .chain(here.map(|(t, p)| (*t, self.pending[*p].thread.clone())))
            .collect()
    }
}

impl Chunk {
    fn resolve(&self, thread: &str) -> String {
        let mut t = thread.to_owned();
        let mut hops = 0;
        while let Some(next) = self.renamed.get(&t) {
            t = next.clone();
            hops += 1;
            if hops > 1000 {
                break;
            }
        }
        t
    }

    /// Adds one parsed message: decides, then applies the decision here.
    fn ingest(&mut self, e: &NewEntry, location: &Location) {
        let window = Duration::days(SUBJECT_WINDOW_DAYS);
        let p = match decide(self, e, window) {
            Decision::Duplicate { id, status } => {
                if let Some(status) = status {
                    self.set_status(e.message_id.as_deref(), &id, status);
                }
                self.locations.insert(location.clone(), id);
                self.duplicates += 1;
                return;
            }
            Decision::New(p) => p,
        };
        if !p.merged.is_empty() {
            for t in self.thread_of.values_mut().chain(self.pending.iter_mut().map(|x| &mut x.thread)) {
                if p.merged.contains(t) {
                    t.clone_from(&p.thread);
                }
            }
            for from in &p.merged {
                self.renamed.insert(from.clone(), p.thread.clone());
            }
            self.merges.push((p.thread.clone(), p.merged));
        }
        for key in p.keys {
            self.thread_of.insert(key.clone(), p.thread.clone());
            self.written_keys.insert(key);
        }
        if let Some(mid) = &e.message_id {
            if p.id_collision {
                self.collided.insert(mid.clone());
                for (id, _) in self.by_mid.get(mid).into_iter().flatten() {
                    if let Some(&at) = self.pending_at.get(id.as_str()) {
                        self.pending[at].collision = true;
                    }
                }
            }
            self.by_mid.entry(mid.clone()).or_default().push((p.id.clone(), e.clone()));
        }
        let at = self.pending.len();
        if let Some(key) = subject_key(e) {
            self.subject_new.entry(key).or_default().push((e.time, at));
        }
        self.ids.insert(p.id.clone());
        self.pending_at.insert(p.id.clone(), at);
        self.locations.insert(location.clone(), p.id.clone());
        self.pending.push(Pending { id: p.id, thread: p.thread, collision: p.id_collision, entry: e.clone() });
    }

    /// Moves entry `id`'s status forward: in the chunk's view, and in its pending row or
    /// the stored row's update.
    fn set_status(&mut self, message_id: Option<&str>, id: &str, status: String) {
        let same = message_id.and_then(|mid| self.by_mid.get_mut(mid)).into_iter().flatten();
        for (_, existing) in same.filter(|(x, _)| x == id) {
            existing.status = Some(status.clone());
        }
        match self.pending_at.get(id) {
            Some(&at) => self.pending[at].entry.status = Some(status),
            None => {
                self.status.insert(id.to_owned(), status);
            }
        }
    }
}

impl PgStore {
    /// The timeline of `tenant` in `db`.
    pub fn new(db: PgPool, tenant: impl Into<String>) -> Self {
        PgStore { db, tenant: tenant.into() }
    }

    /// The entry seen at `location`, as [`crate::timeline::Timeline::entry_at`] and
    /// [`crate::timeline::Timeline::get`] give it in memory.
    pub async fn entry_at(&self, location: &Location) -> Result<Option<TimelineEntry>, StoreError> {
        let row = sqlx::query(
            "SELECT e.id, e.thread_id, e.id_collision, e.doc FROM comms_locations l
               JOIN comms_entries e ON e.tenant = l.tenant AND e.id = l.entry_id
              WHERE l.tenant = $1 AND l.source_id = $2 AND l.folder = $3 AND l.uidvalidity = $4 AND l.uid = $5",
        )
        .bind(&self.tenant)
        .bind(&location.source)
        .bind(&location.folder)
        .bind(i64::from(location.uidvalidity))
        .bind(i64::from(location.uid))
        .fetch_optional(&self.db)
        .await
        .map_err(db_err)?;
        let Some(r) = row else { return Ok(None) };
        let entry = serde_json::from_value(r.get("doc")).map_err(|e| StoreError(format!("entry document: {e}")))?;
        Ok(Some(TimelineEntry {
            id: r.get("id"),
            thread_id: r.get("thread_id"),
            id_collision: r.get("id_collision"),
            entry,
        }))
    }

    /// Takes the tenant's commit lock, and in the same round trip makes this
    /// transaction compress what it stores out of line (entry documents and raw
    /// messages are a few KB each) with lz4 instead of the default pglz, which is about
    /// twice as slow at it; reading either needs nothing. A server built without lz4
    /// keeps pglz.
    async fn lock(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtext('comms:' || $1)),
                    set_config('default_toast_compression',
                               CASE WHEN EXISTS (SELECT 1 FROM pg_settings
                                                  WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals))
                                    THEN 'lz4' ELSE current_setting('default_toast_compression') END,
                               true)",
        )
        .bind(&self.tenant)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn remove_locations(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        removed: &[Location],
    ) -> Result<usize, StoreError> {
        if removed.is_empty() {
            return Ok(0);
        }
        let sources: Vec<&str> = removed.iter().map(|l| l.source.as_str()).collect();
        let folders: Vec<&str> = removed.iter().map(|l| l.folder.as_str()).collect();
        let validities: Vec<i64> = removed.iter().map(|l| i64::from(l.uidvalidity)).collect();
        let uids: Vec<i64> = removed.iter().map(|l| i64::from(l.uid)).collect();
        let touched: Vec<String> = sqlx::query_scalar(
            "DELETE FROM comms_locations l USING unnest($1::text[], $2::text[], $3::int8[], $4::int8[]) AS r(s, f, v, u)
              WHERE l.source_id = r.s AND l.folder = r.f AND l.uidvalidity = r.v AND l.uid = r.u RETURNING l.entry_id",
        )
        .bind(&sources)
        .bind(&folders)
        .bind(&validities)
        .bind(&uids)
        .fetch_all(&mut **tx)
        .await
        .map_err(db_err)?;
        sqlx::query(
            "DELETE FROM comms_quarantine q USING unnest($1::text[], $2::text[], $3::int8[], $4::int8[]) AS r(s, f, v, u)
              WHERE q.source_id = r.s AND q.folder = r.f AND q.uidvalidity = r.v AND q.uid = r.u",
        )
        .bind(&sources)
        .bind(&folders)
        .bind(&validities)
        .bind(&uids)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
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

    /// Reads what the chunk's messages need to know from the database.
    async fn load(&self, tx: &mut Transaction<'_, Postgres>, items: &[FetchedItem]) -> Result<Chunk, StoreError> {
        let mut chunk = Chunk::default();
        let entries: Vec<&NewEntry> = items.iter().filter_map(|it| it.outcome.as_ref().ok()).collect();
        if entries.is_empty() {
            return Ok(chunk);
        }
        let mids: Vec<&str> = entries.iter().filter_map(|e| e.message_id.as_deref()).collect();
        if !mids.is_empty() {
            let rows =
                sqlx::query("SELECT id, message_id, doc FROM comms_entries WHERE tenant = $1 AND message_id = ANY($2)")
                    .bind(&self.tenant)
                    .bind(&mids)
                    .fetch_all(&mut **tx)
                    .await
                    .map_err(db_err)?;
            for row in rows {
                let (id, mid, doc): (String, String, serde_json::Value) = (row.get(0), row.get(1), row.get(2));
                chunk.ids.insert(id.clone());
                if let Ok(existing) = serde_json::from_value::<NewEntry>(doc) {
                    chunk.by_mid.entry(mid).or_default().push((id, existing));
                }
            }
        }
        // Ids the chunk could take that are stored without a matching Message-ID
        // (mail without one; collision ids).
        let candidates: Vec<String> = entries
            .iter()
            .flat_map(|e| {
                let mut v = vec![primary_id(e)];
                if e.message_id.is_some() {
                    v.push(collision_id(e));
                }
                v
            })
            .collect();
        let known: Vec<String> = sqlx::query_scalar("SELECT id FROM comms_entries WHERE tenant = $1 AND id = ANY($2)")
            .bind(&self.tenant)
            .bind(&candidates)
            .fetch_all(&mut **tx)
            .await
            .map_err(db_err)?;
        chunk.ids.extend(known);
        let keys: Vec<&str> = entries
            .iter()
            .flat_map(|e| e.message_id.iter().chain(&e.parents).map(String::as_str))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if !keys.is_empty() {
            let rows = sqlx::query(
                "SELECT message_id, thread_id FROM comms_thread_ids WHERE tenant = $1 AND message_id = ANY($2)",
            )
            .bind(&self.tenant)
            .bind(&keys)
            .fetch_all(&mut **tx)
            .await
            .map_err(db_err)?;
            chunk.thread_of.extend(rows.into_iter().map(|r| (r.get(0), r.get(1))));
        }
        // The subject fallback: the nearest stored entry on each side of each root (ties:
        // the smallest thread id, as `decide` breaks them).
        let roots: Vec<Root> = entries
            .iter()
            .filter(|e| e.parents.is_empty())
            .filter_map(|e| subject_key(e).map(|k| (k, e.time)))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if !roots.is_empty() {
            let idx: Vec<i64> = (0..roots.len() as i64).collect();
            let clients: Vec<&str> = roots.iter().map(|(k, _)| k.client.as_str()).collect();
            let channels: Vec<String> = roots.iter().map(|(k, _)| as_text(&k.channel)).collect();
            let subjects: Vec<&str> = roots.iter().map(|(k, _)| k.subject.as_str()).collect();
            let times: Vec<DateTime<Utc>> = roots.iter().map(|(_, t)| *t).collect();
            let rows = sqlx::query(
                "SELECT r.i, m.thread_id, m.occurred_at
                   FROM unnest($2::int8[], $3::text[], $4::text[], $5::text[], $6::timestamptz[]) AS r(i, c, ch, s, t)
                   CROSS JOIN LATERAL (
                     (SELECT thread_id, occurred_at FROM comms_entries
                       WHERE tenant = $1 AND client = r.c AND channel = r.ch AND base_subject = r.s
                         AND occurred_at <= r.t AND occurred_at >= r.t - make_interval(days => $7)
                       ORDER BY occurred_at DESC, thread_id LIMIT 1)
                     UNION ALL
                     (SELECT thread_id, occurred_at FROM comms_entries
                       WHERE tenant = $1 AND client = r.c AND channel = r.ch AND base_subject = r.s
                         AND occurred_at > r.t AND occurred_at <= r.t + make_interval(days => $7)
                       ORDER BY occurred_at ASC, thread_id LIMIT 1)
                   ) AS m",
            )
            .bind(&self.tenant)
            .bind(&idx)
            .bind(&clients)
            .bind(&channels)
            .bind(&subjects)
            .bind(&times)
            .bind(SUBJECT_WINDOW_DAYS as i32)
            .fetch_all(&mut **tx)
            .await
            .map_err(db_err)?;
            for r in rows {
                let i: i64 = r.get(0);
                chunk.subject_db.entry(roots[i as usize].clone()).or_default().push((r.get(2), r.get(1)));
            }
        }
        Ok(chunk)
    }

    /// Adds `items` (parsed or quarantined) in a few multi-row statements; returns the
    /// counts. The caller holds the tenant's lock and writes the cursor.
    async fn write_items(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        items: &[FetchedItem],
    ) -> Result<CommitCounts, StoreError> {
        let mut counts = CommitCounts::default();
        if items.is_empty() {
            return Ok(counts);
        }
        let mut chunk = self.load(tx, items).await?;
        let mut quarantined: Vec<&FetchedItem> = Vec::new();
        for item in items {
            match &item.outcome {
                Ok(e) => {
                    chunk.raw.entry(e.content_hash.clone()).or_insert_with(|| item.raw.clone());
                    chunk.ingest(e, &item.location);
                }
                Err(q) => {
                    chunk.raw.entry(q.content_hash.clone()).or_insert_with(|| item.raw.clone());
                    quarantined.push(item);
                }
            }
        }
        counts.quarantined = quarantined.len();
        counts.duplicates = chunk.duplicates;

        // Raw messages.
        let (hashes, raws): (Vec<String>, Vec<Vec<u8>>) = chunk.raw.drain().unzip();
        if !hashes.is_empty() {
            sqlx::query(
                "INSERT INTO comms_raw (content_hash, raw) SELECT * FROM unnest($1::text[], $2::bytea[])
                 ON CONFLICT (content_hash) DO NOTHING",
            )
            .bind(&hashes)
            .bind(&raws)
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
        }
        // Thread merges of stored rows, then the threads of this chunk's ids. Every
        // merged thread goes straight to the thread it ends in after the chunk's merges
        // (a chain A → B → C moves A's rows once, to C): one statement per table
        // whatever the number of merges, and each stored row rewritten at most once,
        // which matters when a long thread is merged again and again as its replies
        // arrive before their parents.
        if !chunk.merges.is_empty() {
            let (froms, intos): (Vec<String>, Vec<String>) = chunk
                .merges
                .iter()
                .flat_map(|(_, from)| from.iter())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .map(|from| (from.clone(), chunk.resolve(from)))
                .filter(|(from, into)| from != into)
                .unzip();
            for sql in [
                "UPDATE comms_thread_ids t SET thread_id = m.i FROM unnest($2::text[], $3::text[]) AS m(f, i)
                  WHERE t.tenant = $1 AND t.thread_id = m.f",
                "UPDATE comms_entries e SET thread_id = m.i FROM unnest($2::text[], $3::text[]) AS m(f, i)
                  WHERE e.tenant = $1 AND e.thread_id = m.f",
            ] {
                sqlx::query(sql)
                    .bind(&self.tenant)
                    .bind(&froms)
                    .bind(&intos)
                    .execute(&mut **tx)
                    .await
                    .map_err(db_err)?;
            }
        }
        if !chunk.written_keys.is_empty() {
            let (keys, threads): (Vec<String>, Vec<String>) = chunk
                .written_keys
                .iter()
                .filter_map(|k| chunk.thread_of.get(k).map(|t| (k.clone(), t.clone())))
                .unzip();
            sqlx::query(
                "INSERT INTO comms_thread_ids (tenant, message_id, thread_id)
                 SELECT $1, k, t FROM unnest($2::text[], $3::text[]) AS u(k, t)
                 ON CONFLICT (tenant, message_id) DO UPDATE SET thread_id = EXCLUDED.thread_id",
            )
            .bind(&self.tenant)
            .bind(&keys)
            .bind(&threads)
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
        }
        // New entries, and their events.
        if !chunk.pending.is_empty() {
            let n = chunk.pending.len();
            let mut ids = Vec::with_capacity(n);
            let mut threads = Vec::with_capacity(n);
            let mut clients: Vec<Option<String>> = Vec::with_capacity(n);
            let mut sources = Vec::with_capacity(n);
            let mut channels = Vec::with_capacity(n);
            let mut directions = Vec::with_capacity(n);
            let mut times: Vec<DateTime<Utc>> = Vec::with_capacity(n);
            let mut mids: Vec<Option<String>> = Vec::with_capacity(n);
            let mut subjects = Vec::with_capacity(n);
            let mut collisions = Vec::with_capacity(n);
            let mut docs = Vec::with_capacity(n);
            for p in &chunk.pending {
                let e = &p.entry;
                ids.push(p.id.clone());
                threads.push(p.thread.clone());
                clients.push(e.client.clone());
                sources.push(e.source.clone());
                channels.push(as_text(&e.channel));
                directions.push(as_text(&e.direction));
                times.push(e.time);
                mids.push(e.message_id.clone());
                subjects.push(base_subject(e.subject.as_deref().unwrap_or("")));
                collisions.push(p.collision);
                docs.push(serde_json::to_value(e).map_err(|err| StoreError(err.to_string()))?);
            }
            let inserted: Vec<String> = sqlx::query_scalar(
                "INSERT INTO comms_entries (tenant, id, thread_id, client, source_id, channel, direction, occurred_at,
                                            message_id, base_subject, id_collision, doc)
                 SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                                          $8::timestamptz[], $9::text[], $10::text[], $11::bool[], $12::jsonb[])
                 ON CONFLICT (tenant, id) DO NOTHING RETURNING id",
            )
            .bind(&self.tenant)
            .bind(&ids)
            .bind(&threads)
            .bind(&clients)
            .bind(&sources)
            .bind(&channels)
            .bind(&directions)
            .bind(&times)
            .bind(&mids)
            .bind(&subjects)
            .bind(&collisions)
            .bind(&docs)
            .fetch_all(&mut **tx)
            .await
            .map_err(db_err)?;
            counts.new = inserted.len();
            counts.duplicates += n - inserted.len();
            let inserted: HashSet<String> = inserted.into_iter().collect();
            let (dedups, payloads): (Vec<String>, Vec<serde_json::Value>) = chunk
                .pending
                .iter()
                .filter(|p| inserted.contains(&p.id))
                .map(|p| {
                    let e = &p.entry;
                    let payload = serde_json::json!({
                        "entry_id": p.id,
                        "thread_id": p.thread,
                        "client": e.client,
                        "source_id": e.source,
                        "channel": e.channel,
                        "direction": e.direction,
                        "occurred_at": e.time,
                        "subject": e.subject,
                        "snippet": e.snippet,
                    });
                    (format!("{}:{}", self.tenant, p.id), payload)
                })
                .unzip();
            if !dedups.is_empty() {
                sqlx::query(
                    "INSERT INTO comms_outbox (tenant, event_type, dedup, payload)
                     SELECT $1, $2, d, p FROM unnest($3::text[], $4::jsonb[]) AS u(d, p)
                     ON CONFLICT (dedup) DO NOTHING",
                )
                .bind(&self.tenant)
                .bind(ENTRY_CREATED)
                .bind(&dedups)
                .bind(&payloads)
                .execute(&mut **tx)
                .await
                .map_err(db_err)?;
            }
        }
        if !chunk.collided.is_empty() {
            let mids: Vec<&String> = chunk.collided.iter().collect();
            sqlx::query("UPDATE comms_entries SET id_collision = TRUE WHERE tenant = $1 AND message_id = ANY($2)")
                .bind(&self.tenant)
                .bind(&mids)
                .execute(&mut **tx)
                .await
                .map_err(db_err)?;
        }
        if !chunk.status.is_empty() {
            let (ids, statuses): (Vec<String>, Vec<String>) = chunk.status.drain().unzip();
            sqlx::query(
                "UPDATE comms_entries c SET doc = jsonb_set(c.doc, '{status}', to_jsonb(u.s))
                   FROM unnest($2::text[], $3::text[]) AS u(id, s) WHERE c.tenant = $1 AND c.id = u.id",
            )
            .bind(&self.tenant)
            .bind(&ids)
            .bind(&statuses)
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
        }
        if !chunk.locations.is_empty() {
            let n = chunk.locations.len();
            let (mut sources, mut folders, mut validities, mut uids, mut entries) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            for (l, id) in chunk.locations.drain() {
                sources.push(l.source);
                folders.push(l.folder);
                validities.push(i64::from(l.uidvalidity));
                uids.push(i64::from(l.uid));
                entries.push(id);
            }
            sqlx::query(
                "INSERT INTO comms_locations (source_id, folder, uidvalidity, uid, tenant, entry_id)
                 SELECT s, f, v, u, $1, e FROM unnest($2::text[], $3::text[], $4::int8[], $5::int8[], $6::text[]) AS x(s, f, v, u, e)
                 ON CONFLICT (source_id, folder, uidvalidity, uid) DO UPDATE SET entry_id = EXCLUDED.entry_id",
            )
            .bind(&self.tenant)
            .bind(&sources)
            .bind(&folders)
            .bind(&validities)
            .bind(&uids)
            .bind(&entries)
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
        }
        if !quarantined.is_empty() {
            let mut seen = HashSet::new();
            let qs: Vec<_> = quarantined
                .iter()
                .filter_map(|i| i.outcome.as_ref().err())
                .filter(|q| seen.insert(q.location.clone()))
                .collect();
            let sources: Vec<&str> = qs.iter().map(|q| q.location.source.as_str()).collect();
            let folders: Vec<&str> = qs.iter().map(|q| q.location.folder.as_str()).collect();
            let validities: Vec<i64> = qs.iter().map(|q| i64::from(q.location.uidvalidity)).collect();
            let uids: Vec<i64> = qs.iter().map(|q| i64::from(q.location.uid)).collect();
            let reasons: Vec<serde_json::Value> =
                qs.iter().map(|q| serde_json::to_value(&q.failure).unwrap_or_default()).collect();
            let hashes: Vec<&str> = qs.iter().map(|q| q.content_hash.as_str()).collect();
            let sizes: Vec<i64> = qs.iter().map(|q| q.size as i64).collect();
            sqlx::query(
                "INSERT INTO comms_quarantine (source_id, folder, uidvalidity, uid, tenant, reason, content_hash, size)
                 SELECT s, f, v, u, $1, r, h, z
                   FROM unnest($2::text[], $3::text[], $4::int8[], $5::int8[], $6::jsonb[], $7::text[], $8::int8[])
                     AS x(s, f, v, u, r, h, z)
                 ON CONFLICT DO NOTHING",
            )
            .bind(&self.tenant)
            .bind(&sources)
            .bind(&folders)
            .bind(&validities)
            .bind(&uids)
            .bind(&reasons)
            .bind(&hashes)
            .bind(&sizes)
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
        }
        Ok(counts)
    }

    /// Reads the tenant's new in-app messages (`platform_messages`) into the timeline,
    /// `chunk` rows per transaction, each committed with the cursor that covers it.
    ///
    /// Rows are read in commit order (writing transaction, then `seq`) and only from
    /// transactions older than every one still running, so a row committed late by a
    /// slow writer is read by a later run instead of being skipped by the cursor.
    pub async fn sync_in_app(&self, source: &str, chunk: usize) -> Result<InAppReport, StoreError> {
        let mut report = InAppReport::default();
        let limit = chunk.max(1) as i64;
        loop {
            let mut tx = self.db.begin().await.map_err(db_err)?;
            self.lock(&mut tx).await?;
            let cursor: Option<(i64, Option<i64>)> = sqlx::query_as(
                "SELECT last_uid, highestmodseq FROM comms_cursors WHERE source_id = $1 AND folder = $2",
            )
            .bind(source)
            .bind(IN_APP_FOLDER)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
            let (seq, txid) = cursor.map(|(s, t)| (s, t.unwrap_or(0))).unwrap_or((0, 0));
            let rows = sqlx::query(
                "SELECT id, seq, txid::text::int8 AS txid, client, sender, direction, body, sent_at, thread_ref
                   FROM platform_messages
                  WHERE tenant = $1 AND (txid, seq) > ($2::text::xid8, $3)
                    AND txid < pg_snapshot_xmin(pg_current_snapshot())
                  ORDER BY txid, seq LIMIT $4",
            )
            .bind(&self.tenant)
            .bind(txid.to_string())
            .bind(seq)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
            if rows.is_empty() {
                return Ok(report);
            }
            let (mut last_seq, mut last_txid) = (seq, txid);
            let mut items = Vec::with_capacity(rows.len());
            for r in &rows {
                let m = InAppMessage {
                    id: r.get("id"),
                    client: r.get("client"),
                    sender: r.get("sender"),
                    direction: r.get("direction"),
                    body: r.get("body"),
                    sent_at: r.get("sent_at"),
                    thread_ref: r.get("thread_ref"),
                };
                (last_seq, last_txid) = (r.get("seq"), r.get("txid"));
                let (entry, raw) = entry_from_in_app(&m, source);
                let location = Location {
                    source: source.to_owned(),
                    folder: format!("{IN_APP_FOLDER}:{}", m.id),
                    uidvalidity: 0,
                    uid: 0,
                };
                items.push(FetchedItem { location, outcome: Ok(entry), raw });
            }
            let counts = self.write_items(&mut tx, &items).await?;
            sqlx::query(
                "INSERT INTO comms_cursors (source_id, folder, uidvalidity, uidnext, last_uid, highestmodseq, updated_at)
                 VALUES ($1, $2, 0, 0, $3, $4, now())
                 ON CONFLICT (source_id, folder) DO UPDATE SET last_uid = EXCLUDED.last_uid,
                     highestmodseq = EXCLUDED.highestmodseq, updated_at = now()",
            )
            .bind(source)
            .bind(IN_APP_FOLDER)
            .bind(last_seq)
            .bind(last_txid)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            report.read += rows.len();
            report.new += counts.new;
            report.duplicates += counts.duplicates;
            report.commits += 1;
            if (rows.len() as i64) < limit {
                return Ok(report);
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
        let mut tx = self.db.begin().await.map_err(db_err)?;
        self.lock(&mut tx).await?;
        let removed = self.remove_locations(&mut tx, &batch.removed).await?;
        let mut counts = self.write_items(&mut tx, &batch.items).await?;
        counts.removed += removed;
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
