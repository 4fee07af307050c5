//! `calendar.sync`: one calendar source pulled into its supplier's events, occurrences and
//! double bookings.
//!
//! A run: load the source (`calendar_sources`), pull what changed (CalDAV `sync-collection`
//! with the stored token, ETag listing when refused; conditional GET for feeds), parse with
//! [`fleet_calendar`], refuse to apply anything that is not iCalendar or would delete more than
//! the source's `max_delete_share` (quarantine, reported on the source), then in one
//! transaction under a per-supplier lock: upsert events by (UID, RECURRENCE-ID) — unchanged
//! content hash: not rewritten; lower (SEQUENCE, DTSTAMP): not applied — delete what is gone,
//! re-expand the source's occurrences over the window and write only the differences,
//! recompute the supplier's conflicts and write each new or resolved one to the outbox once.

use crate::caldav::{CalDavClient, CalDavError, ClientOptions, CollectionState, FeedOutcome, fetch_feed, pull_changes};
use crate::zone::Zone;
use crate::{BusyInterval, ExpandOptions, decode, expand, find_conflicts, join_objects, parse};
use chrono::{DateTime, Months, TimeDelta, Utc};
use fleet_accounts::secrets::SecretBox;
use fleet_jobs::catalogue::CalendarSync;
use fleet_kit::{Handler, JobContext, JobError};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};
use std::collections::{HashMap, HashSet};

mod providers;
mod push;

pub use push::{CalendarPushHandler, PushResult, booking_uid};

/// (UID, RECURRENCE-ID as stored).
type EventKey = (String, String);
/// A stored event's href, SEQUENCE, DTSTAMP and content hash.
type StoredVersion = (String, i64, Option<DateTime<Utc>>, String);
/// (source, occurrence key) of both sides, and the overlap.
type OpenConflict = ((String, String), (String, String), DateTime<Utc>, DateTime<Utc>);

/// How far ahead occurrences are materialised.
pub const WINDOW_MONTHS: u32 = 24;

/// Rows per multi-row statement.
const WRITE_CHUNK: usize = 1000;

pub use fleet_accounts::allow::SourceSettings;

/// The `calendar.sync` handler.
#[derive(Debug, Clone)]
pub struct CalendarSyncHandler {
    db: PgPool,
    secrets: Option<SecretBox>,
    client_options: ClientOptions,
    relay: Option<fleet_accounts::outbox::Relay>,
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
}

struct Source {
    tenant: String,
    supplier: String,
    kind: String,
    url: String,
    username: Option<String>,
    secret: Option<String>,
    state: serde_json::Value,
    max_delete_share: f64,
}

/// A fetch, before it is applied.
struct Fetched {
    /// (href, etag, body) of new or changed objects.
    changed: Vec<(String, Option<String>, String)>,
    /// Hrefs gone.
    removed: Vec<String>,
    /// The source state to store when applied.
    state: serde_json::Value,
    mode: &'static str,
}

enum SyncError {
    /// Retry later (after a delay when the server said so).
    Transient(String, Option<std::time::Duration>),
    /// Retrying will not help: recorded on the source.
    Permanent(String),
}

impl From<sqlx::Error> for SyncError {
    fn from(e: sqlx::Error) -> Self {
        SyncError::Transient(format!("database: {e}"), None)
    }
}

impl From<CalDavError> for SyncError {
    fn from(e: CalDavError) -> Self {
        match e {
            CalDavError::RateLimited { retry_after, .. } => SyncError::Transient(e.to_string(), retry_after),
            ref other if other.is_transient() => SyncError::Transient(e.to_string(), None),
            other => SyncError::Permanent(other.to_string()),
        }
    }
}

impl CalendarSyncHandler {
    /// A handler on `db`; `secrets` opens sealed source credentials (`FLEET_SECRETS_KEY`).
    pub fn new(db: PgPool, secrets: Option<SecretBox>) -> Self {
        let guard = Some(std::sync::Arc::new(fleet_net::Guard::new(Vec::new())));
        CalendarSyncHandler {
            db,
            secrets,
            client_options: ClientOptions { guard, ..ClientOptions::default() },
            relay: None,
        }
    }

    /// Lets requests reach these address ranges besides public ones (the SSRF guard refuses
    /// every other private or reserved address).
    pub fn with_allowed(mut self, allow: Vec<fleet_net::Cidr>) -> Self {
        self.client_options.guard = Some(std::sync::Arc::new(fleet_net::Guard::new(allow)));
        self
    }

    /// The same, from the worker's settings (`[calendar] allow`).
    pub fn with_settings(self, settings: &SourceSettings) -> Result<Self, String> {
        Ok(self.with_allowed(settings.ranges()?))
    }

    /// Publishes conflict events (the outbox) to webhooks and the live stream after each sync.
    pub fn with_relay(mut self, relay: fleet_accounts::outbox::Relay) -> Self {
        self.relay = Some(relay);
        self
    }

    /// Syncs one source now, whatever its tenant (an operator's call; tests call it
    /// directly). A job syncs with [`Self::sync_tenant_source`].
    pub async fn sync_source(&self, source_id: &str) -> Result<SyncReport, String> {
        self.sync_tenant_source(None, source_id).await
    }

    /// Syncs one source now as the `calendar.sync` job of `tenant` does: a source of
    /// another tenant is "not found", with the same message as a missing one.
    pub async fn sync_tenant_source(&self, tenant: Option<&str>, source_id: &str) -> Result<SyncReport, String> {
        match self.run(tenant, source_id).await {
            Ok(report) => Ok(report),
            Err(SyncError::Transient(e, _)) | Err(SyncError::Permanent(e)) => Err(e),
        }
    }

    async fn run(&self, tenant: Option<&str>, source_id: &str) -> Result<SyncReport, SyncError> {
        let source = self.load(tenant, source_id).await?;
        let result = self.pull_and_apply(source_id, &source).await;
        // Conflict events committed by this run (or left by a crashed one) go out now.
        if let Some(relay) = &self.relay {
            match relay.publish_pending("calendar_outbox", &source.tenant).await {
                Ok(n) if n > 0 => tracing::info!(source = source_id, events = n, "calendar events published"),
                Ok(_) => {}
                Err(e) if result.is_ok() => return Err(SyncError::Transient(e, None)),
                Err(e) => tracing::warn!(source = source_id, error = %e, "calendar events not published yet"),
            }
        }
        result
    }

    async fn pull_and_apply(&self, source_id: &str, source: &Source) -> Result<SyncReport, SyncError> {
        let started = std::time::Instant::now();
        let fetched = match self.fetch(source_id, source).await {
            Ok(f) => f,
            Err(SyncError::Permanent(e)) => {
                sqlx::query("UPDATE calendar_sources SET last_sync_at = now(), last_error = $2 WHERE id = $1")
                    .bind(source_id)
                    .bind(&e)
                    .execute(&self.db)
                    .await?;
                return Err(SyncError::Permanent(e));
            }
            Err(e) => return Err(e),
        };
        let Some(fetched) = fetched else {
            if window_stale(&source.state) {
                // Nothing changed, but the 24-month window slides daily: re-expand.
                let fetched = Fetched {
                    changed: Vec::new(),
                    removed: Vec::new(),
                    state: source.state.clone(),
                    mode: "not_modified",
                };
                return self.apply(source_id, source, fetched).await;
            }
            sqlx::query(
                "UPDATE calendar_sources SET last_sync_at = now(), last_ok_at = now(), last_error = NULL WHERE id = $1",
            )
            .bind(source_id)
            .execute(&self.db)
            .await?;
            return Ok(SyncReport { mode: "not_modified".into(), ..SyncReport::default() });
        };
        let fetch_ms = started.elapsed().as_millis() as u64;
        let started = std::time::Instant::now();
        let mut report = self.apply(source_id, source, fetched).await?;
        report.fetch_ms = fetch_ms;
        report.apply_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }

    /// Source `source_id`, restricted to `tenant` when given: a source of another tenant is
    /// "not found", with the same message as a missing one, so a job cannot learn whether
    /// an id exists elsewhere. `None` loads any tenant's source: only Fleet's operators
    /// produce such jobs (`fleetctl`, tests), never the public API, which always sets
    /// the envelope's tenant from the caller's key.
    async fn load(&self, tenant: Option<&str>, source_id: &str) -> Result<Source, SyncError> {
        let row = sqlx::query(
            "SELECT tenant, supplier, kind, url, username, secret, state, max_delete_share FROM calendar_sources \
             WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)",
        )
        .bind(source_id)
        .bind(tenant)
        .fetch_optional(&self.db)
        .await?
        .ok_or_else(|| SyncError::Permanent(format!("calendar source {source_id} not found")))?;
        Ok(Source {
            tenant: row.get("tenant"),
            supplier: row.get("supplier"),
            kind: row.get("kind"),
            url: row.get("url"),
            username: row.get("username"),
            secret: row.get("secret"),
            state: row.get("state"),
            max_delete_share: row.get("max_delete_share"),
        })
    }

    fn client(&self, source_id: &str, source: &Source, url: &str) -> Result<CalDavClient, SyncError> {
        let password = match &source.secret {
            None => None,
            Some(sealed) => {
                let secrets = self.secrets.as_ref().ok_or_else(|| {
                    SyncError::Permanent("the source has a sealed secret but FLEET_SECRETS_KEY is not set".into())
                })?;
                Some(secrets.open(source_id, sealed).map_err(|e| SyncError::Permanent(e.to_string()))?.into())
            }
        };
        CalDavClient::new(url, source.username.clone(), password, self.client_options.clone())
            .map_err(|e| SyncError::Permanent(e.to_string()))
    }

    /// Pulls what changed; `None` when a feed is unchanged.
    async fn fetch(&self, source_id: &str, source: &Source) -> Result<Option<Fetched>, SyncError> {
        match source.kind.as_str() {
            "caldav" => {
                let client = self.client(source_id, source, &source.url)?;
                let mut etags = HashMap::new();
                for row in sqlx::query("SELECT href, etag FROM calendar_objects WHERE source_id = $1")
                    .bind(source_id)
                    .fetch_all(&self.db)
                    .await?
                {
                    etags.insert(row.get::<String, _>("href"), row.get::<Option<String>, _>("etag"));
                }
                let state = CollectionState {
                    token: source.state.get("token").and_then(|t| t.as_str()).map(str::to_owned),
                    etags,
                };
                let pull = pull_changes(&client, &state).await?;
                let mode = match pull.mode {
                    crate::caldav::PullMode::Initial => "initial",
                    crate::caldav::PullMode::Incremental => "incremental",
                    crate::caldav::PullMode::Listing => "listing",
                };
                Ok(Some(Fetched {
                    changed: pull
                        .changed
                        .into_iter()
                        .map(|o| (o.href, o.etag, String::from_utf8_lossy(&o.body).into_owned()))
                        .collect(),
                    removed: pull.removed,
                    state: json!({ "token": pull.state.token }),
                    mode,
                }))
            }
            "ics" => {
                let client = self.client(source_id, source, &source.url)?;
                let etag = source.state.get("etag").and_then(|v| v.as_str());
                let last_modified = source.state.get("last_modified").and_then(|v| v.as_str());
                match fetch_feed(&client, &source.url, etag, last_modified).await? {
                    FeedOutcome::NotModified => Ok(None),
                    FeedOutcome::Body { body, etag, last_modified } => Ok(Some(Fetched {
                        // Decoded (and checked to be iCalendar) in `apply`.
                        changed: vec![(String::new(), etag.clone(), String::from_utf8_lossy(&body).into_owned())],
                        removed: Vec::new(),
                        state: json!({ "etag": etag, "last_modified": last_modified }),
                        mode: "feed",
                    })),
                }
            }
            "google" | "graph" => self.fetch_provider(source_id, source).await.map(Some),
            other => Err(SyncError::Permanent(format!("calendar source kind {other} is not supported yet"))),
        }
    }

    async fn quarantine(
        &self,
        source_id: &str,
        reason: String,
        mut report: SyncReport,
    ) -> Result<SyncReport, SyncError> {
        report.quarantined = Some(reason.clone());
        sqlx::query(
            "UPDATE calendar_sources SET quarantined = $2, last_sync_at = now(), last_error = $2, last_report = $3,
               state = state - 'force_apply' WHERE id = $1",
        )
        .bind(source_id)
        .bind(&reason)
        .bind(json!(report))
        .execute(&self.db)
        .await?;
        tracing::warn!(source = source_id, reason = %reason, "calendar fetch quarantined, not applied");
        Ok(report)
    }

    async fn apply(&self, source_id: &str, source: &Source, fetched: Fetched) -> Result<SyncReport, SyncError> {
        let mut report =
            SyncReport { fetched: fetched.changed.len(), mode: fetched.mode.into(), ..SyncReport::default() };
        // Parse every changed object; a body that is not iCalendar is never "everything deleted".
        let mut new_events: HashMap<(String, String), (String, crate::Event)> = HashMap::new();
        let mut changed_hrefs: HashSet<String> = HashSet::new();
        let mut bodies: Vec<(String, Option<String>, String)> = Vec::new();
        for (href, etag, body) in fetched.changed {
            let text = match decode(body.as_bytes()) {
                Ok(text) => text,
                Err(e) if source.kind == "ics" => {
                    return self.quarantine(source_id, format!("feed is not iCalendar: {e}"), report).await;
                }
                Err(e) => {
                    report.warnings.push(format!("{href}: not iCalendar ({e}), skipped"));
                    continue;
                }
            };
            let calendar = parse(&text);
            for w in calendar.warnings.iter().take(50usize.saturating_sub(report.warnings.len())) {
                report.warnings.push(format!(
                    "{href}: {}{}",
                    w.uid.as_deref().map(|u| format!("{u}: ")).unwrap_or_default(),
                    w.message
                ));
            }
            for event in calendar.events {
                let rid = event.recurrence_id.as_ref().map(|r| rid_text(r.instant(&Zone::Utc))).unwrap_or_default();
                let key = (event.uid.clone(), rid);
                // The newest version of one (UID, RECURRENCE-ID) within the fetch.
                let newer = new_events
                    .get(&key)
                    .is_none_or(|(_, e)| (event.sequence, event.dtstamp) >= (e.sequence, e.dtstamp));
                if newer {
                    new_events.insert(key, (href.clone(), event));
                }
            }
            changed_hrefs.insert(href.clone());
            bodies.push((href, etag, text));
        }

        let mut tx = self.db.begin().await?;
        // One sync per supplier at a time: conflicts are computed over all its sources.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('calendar:' || $1 || ':' || $2))")
            .bind(&source.tenant)
            .bind(&source.supplier)
            .execute(&mut *tx)
            .await?;
        let mut existing: HashMap<EventKey, StoredVersion> = HashMap::new();
        for row in sqlx::query(
            "SELECT uid, rid, href, sequence, dtstamp, content_hash FROM calendar_events WHERE source_id = $1",
        )
        .bind(source_id)
        .fetch_all(&mut *tx)
        .await?
        {
            existing.insert(
                (row.get("uid"), row.get("rid")),
                (row.get("href"), row.get("sequence"), row.get("dtstamp"), row.get("content_hash")),
            );
        }
        // Gone: events in removed or re-fetched objects that the fetch no longer has.
        let removed: HashSet<&String> = fetched.removed.iter().collect();
        let gone: Vec<(String, String)> = existing
            .iter()
            .filter(|(key, (href, ..))| {
                (removed.contains(href) || changed_hrefs.contains(href)) && !new_events.contains_key(*key)
            })
            .map(|(key, _)| key.clone())
            .collect();
        // Mass-deletion guard.
        // Emptying a calendar of several events, or deleting more than the source's share of
        // a larger one, is far more often a broken server or account than a supplier's intent.
        // An operator's release (`force_apply` in the state, set by the API) lets one fetch through.
        let emptied = existing.len() >= 2 && gone.len() == existing.len();
        let too_many = existing.len() >= 4 && gone.len() as f64 > source.max_delete_share * existing.len() as f64;
        let released = source.state.get("force_apply").and_then(|v| v.as_bool()) == Some(true);
        let own_write = fetched.mode == "push";
        if !gone.is_empty() && (emptied || too_many) && !released && !own_write {
            tx.rollback().await?;
            let reason = format!(
                "would delete {} of {} events (more than {:.0}%): quarantined",
                gone.len(),
                existing.len(),
                source.max_delete_share * 100.0
            );
            return self.quarantine(source_id, reason, report).await;
        }

        for (href, etag, body) in &bodies {
            sqlx::query(
                "INSERT INTO calendar_objects (source_id, href, etag, body) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (source_id, href) DO UPDATE SET etag = EXCLUDED.etag, body = EXCLUDED.body",
            )
            .bind(source_id)
            .bind(href)
            .bind(etag)
            .bind(body)
            .execute(&mut *tx)
            .await?;
        }
        if !fetched.removed.is_empty() {
            sqlx::query("DELETE FROM calendar_objects WHERE source_id = $1 AND href = ANY($2)")
                .bind(source_id)
                .bind(&fetched.removed)
                .execute(&mut *tx)
                .await?;
        }
        let mut writes: Vec<(&EventKey, &String, &crate::Event)> = Vec::new();
        for (key, (href, event)) in &new_events {
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
            let column = |f: &dyn Fn(&(&EventKey, &String, &crate::Event)) -> String| -> Vec<String> {
                chunk.iter().map(f).collect()
            };
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
            .execute(&mut *tx)
            .await?;
        }
        report.events_written = writes.len();
        for chunk in gone.chunks(WRITE_CHUNK) {
            sqlx::query(
                "DELETE FROM calendar_events WHERE source_id = $1
                   AND (uid, rid) IN (SELECT * FROM UNNEST($2::text[], $3::text[]))",
            )
            .bind(source_id)
            .bind(chunk.iter().map(|g| g.0.clone()).collect::<Vec<String>>())
            .bind(chunk.iter().map(|g| g.1.clone()).collect::<Vec<String>>())
            .execute(&mut *tx)
            .await?;
        }
        report.events_deleted = gone.len();

        // Occurrences are re-expanded when something changed, and once a day so the window
        // slides; an incremental sync that found nothing costs two queries.
        let changed = !bodies.is_empty() || !fetched.removed.is_empty() || report.events_written + gone.len() > 0;
        let expand_now = changed || window_stale(&source.state);
        if expand_now {
            self.rewrite_occurrences(&mut tx, source_id, source, &mut report).await?;
            self.recompute_conflicts(&mut tx, source, &mut report).await?;
        }
        // A push applies its own write and keeps the source's sync state (a sync may be
        // between reading and storing its token); a sync stores its new state.
        let state = match fetched.state {
            serde_json::Value::Null => None,
            mut state => {
                if let Some(map) = state.as_object_mut() {
                    map.remove("force_apply");
                    let day = if expand_now { Some(today()) } else { window_day(&source.state).map(str::to_owned) };
                    map.insert("window_day".into(), json!(day));
                }
                Some(state)
            }
        };

        sqlx::query(
            "UPDATE calendar_sources SET state = COALESCE($2, state), quarantined = NULL, last_sync_at = now(), last_ok_at = now(),
               last_error = NULL, last_report = $3 WHERE id = $1",
        )
        .bind(source_id)
        .bind(&state)
        .bind(json!(report))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(report)
    }

    /// Re-expands every object of the source and writes only the occurrences that changed.
    async fn rewrite_occurrences(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        source_id: &str,
        source: &Source,
        report: &mut SyncReport,
    ) -> Result<(), SyncError> {
        let zone_name: Option<String> =
            sqlx::query_scalar("SELECT time_zone FROM calendar_suppliers WHERE tenant = $1 AND supplier = $2")
                .bind(&source.tenant)
                .bind(&source.supplier)
                .fetch_optional(&mut **tx)
                .await?;
        let zone = zone_name.and_then(|z| z.parse::<chrono_tz::Tz>().ok()).map(Zone::Iana).unwrap_or(Zone::Utc);
        let bodies: Vec<String> =
            sqlx::query_scalar("SELECT body FROM calendar_objects WHERE source_id = $1 ORDER BY href")
                .bind(source_id)
                .fetch_all(&mut **tx)
                .await?;
        let calendar = parse(&join_objects(bodies.iter().map(String::as_str)));
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
        let mut stored: HashMap<String, String> = HashMap::new();
        for row in sqlx::query("SELECT key, fingerprint FROM calendar_occurrences WHERE source_id = $1")
            .bind(source_id)
            .fetch_all(&mut **tx)
            .await?
        {
            stored.insert(row.get("key"), row.get("fingerprint"));
        }
        let mut seen = HashSet::new();
        let mut writes: Vec<(String, String, &crate::Occurrence)> = Vec::new();
        for o in &expansion.occurrences {
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
        for chunk in writes.chunks(WRITE_CHUNK) {
            let texts =
                |f: &dyn Fn(&crate::Occurrence) -> String| -> Vec<String> { chunk.iter().map(|w| f(w.2)).collect() };
            let options = |f: &dyn Fn(&crate::Occurrence) -> Option<String>| -> Vec<Option<String>> {
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
        report.occurrences_written = writes.len();
        let gone: Vec<String> = stored.into_keys().filter(|k| !seen.contains(k)).collect();
        if !gone.is_empty() {
            sqlx::query("DELETE FROM calendar_occurrences WHERE source_id = $1 AND key = ANY($2)")
                .bind(source_id)
                .bind(&gone)
                .execute(&mut **tx)
                .await?;
        }
        report.occurrences_deleted = gone.len();
        Ok(())
    }

    /// Every busy occurrence of the supplier checked against every other; new and resolved
    /// conflicts stored and written to the outbox once each.
    async fn recompute_conflicts(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        source: &Source,
        report: &mut SyncReport,
    ) -> Result<(), SyncError> {
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
        let intervals: Vec<BusyInterval<(String, String, String)>> = rows
            .iter()
            .map(|r| BusyInterval {
                key: (r.get("source_id"), r.get("key"), r.get("uid")),
                start: r.get("start_at"),
                end: r.get("end_at"),
            })
            .collect();
        let mut current: HashMap<String, OpenConflict> = HashMap::new();
        for c in find_conflicts(&intervals) {
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
        for (id, (a, b, start, end)) in &current {
            if let Some(stored) = open.get(id) {
                if *stored == (*start, *end) {
                    continue;
                }
                sqlx::query("UPDATE calendar_conflicts SET start_at = $2, end_at = $3 WHERE id = $1")
                    .bind(id)
                    .bind(start)
                    .bind(end)
                    .execute(&mut **tx)
                    .await?;
                continue;
            }
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
            .await?;
            report.conflicts_detected += 1;
        }
        for id in open.keys().filter(|id| !current.contains_key(*id)) {
            let generation: i32 = sqlx::query_scalar(
                "UPDATE calendar_conflicts SET resolved_at = now() WHERE id = $1 RETURNING generation",
            )
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
            .await?;
            report.conflicts_resolved += 1;
        }
        Ok(())
    }
}

async fn outbox(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
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

/// RECURRENCE-ID as stored: the instant in UTC, RFC 3339.
/// The UTC day the source's occurrences were last expanded on.
fn window_day(state: &serde_json::Value) -> Option<&str> {
    state.get("window_day").and_then(|v| v.as_str())
}

/// Today (UTC) as `YYYY-MM-DD`.
fn today() -> String {
    Utc::now().format("%Y-%m-%d").to_string()
}

/// Whether the source's window has not been slid to today yet.
fn window_stale(state: &serde_json::Value) -> bool {
    window_day(state) != Some(today().as_str())
}

fn rid_text(instant: DateTime<Utc>) -> String {
    instant.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl Handler for CalendarSyncHandler {
    type Args = CalendarSync;

    /// `calendar:account:<source>`: the fleet-wide rate, concurrency cap and breaker of the
    /// account behind the source (`[limits."calendar:account:*"]`); a 429/503 with
    /// Retry-After holds every job of the key back (see `SlowDown`).
    fn limit_keys(&self, args: &CalendarSync) -> Vec<String> {
        vec![format!("calendar:account:{}", args.source_id)]
    }

    /// The job's envelope tenant is the authority: a source of another tenant is "not
    /// found" (see `load`).
    async fn handle(&self, args: CalendarSync, ctx: JobContext) -> Result<(), JobError> {
        match self.run(ctx.tenant.as_deref(), &args.source_id).await {
            Ok(report) => {
                tracing::info!(
                    source = %args.source_id,
                    mode = %report.mode,
                    fetched = report.fetched,
                    written = report.events_written,
                    deleted = report.events_deleted,
                    conflicts = report.conflicts_detected,
                    quarantined = report.quarantined.is_some(),
                    "calendar synced"
                );
                Ok(())
            }
            Err(SyncError::Transient(e, Some(after))) => Err(JobError::slow_down(e, after)),
            Err(SyncError::Transient(e, None)) => Err(JobError::retry(e)),
            Err(SyncError::Permanent(e)) => Err(JobError::give_up(e)),
        }
    }
}
