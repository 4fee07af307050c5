//! `calendar.sync`: one calendar source pulled into its supplier's events, occurrences and
//! double bookings.
//!
//! A run: load the source with the job's tenant (another tenant's is "not found"), pull what
//! changed (CalDAV `sync-collection` with the stored token, ETag listing when refused;
//! conditional GET for feeds; Google and Graph in [`providers`]), then apply it —
//! `crate::store::sync::apply`: parse, refuse anything that is not iCalendar or would
//! delete more than the source's `max_delete_share` (quarantine, reported on the source),
//! and in one transaction under a per-supplier lock write events, occurrences and conflicts
//! and each new or resolved conflict to the outbox once — and finally hand the outbox to the
//! relay. This module decides what to pull and what each failure means for the job
//! (retry, slow down, give up); every read and write of the calendar tables is the store's.

use crate::caldav::{CalDavClient, CalDavError, ClientOptions, CollectionState, FeedOutcome, fetch_feed, pull_changes};
use crate::store::sync::{self, Fetched, SyncSource as Source, window_stale};
use fleet_accounts::secrets::SecretBox;
use fleet_jobs::catalogue::CalendarSync;
use fleet_kit::{Handler, JobContext, JobError};
use serde_json::json;
use sqlx::PgPool;

mod channels;
mod providers;
mod push;

pub use channels::{CalendarSettings, GOOGLE_LIFETIME_SECS, GRAPH_LIFETIME_SECS, PushSettings};

pub use push::{CalendarPushHandler, PushResult, booking_uid};

pub use crate::store::sync::{SyncReport, WINDOW_MONTHS};
pub use fleet_accounts::allow::SourceSettings;

/// The `calendar.sync` handler.
#[derive(Debug, Clone)]
pub struct CalendarSyncHandler {
    db: PgPool,
    secrets: Option<SecretBox>,
    client_options: ClientOptions,
    relay: Option<fleet_accounts::outbox::Relay>,
    /// Push channels (`[calendar.push]`); without a public URL, none are made.
    push: PushSettings,
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
            push: PushSettings::default(),
        }
    }

    /// Lets requests reach these address ranges besides public ones (the SSRF guard refuses
    /// every other private or reserved address).
    pub fn with_allowed(mut self, allow: Vec<fleet_net::Cidr>) -> Self {
        self.client_options.guard = Some(std::sync::Arc::new(fleet_net::Guard::new(allow)));
        self
    }

    /// The same, from the worker's settings (`[calendar] allow` and `[calendar.push]`).
    pub fn with_settings(self, settings: &CalendarSettings) -> Result<Self, String> {
        settings.push.validate()?;
        Ok(self.with_allowed(settings.ranges()?).with_push(settings.push.clone()))
    }

    /// Keeps a push channel for each Google and Graph source whose `push` is on, made,
    /// renewed and replaced by its syncs (see `jobs/channels.rs`), when `push.public_url`
    /// is set; without it sources stay polled.
    pub fn with_push(mut self, push: PushSettings) -> Self {
        self.push = push;
        self
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
        let mut result = self.pull_and_apply(source_id, &source).await;
        if let Ok(report) = &mut result
            && matches!(source.kind.as_str(), "google" | "graph")
        {
            report.push = self.maintain_channel(source_id).await;
        }
        // Conflict events committed by this run (or left by a crashed one) go out now.
        if let Some(relay) = &self.relay {
            match relay.publish_pending(sync::OUTBOX, &source.tenant).await {
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
                sync::record_failure(&self.db, source_id, &e).await?;
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
                return Ok(sync::apply(&self.db, source_id, source, fetched, sync::elapsed_ms(started)).await?);
            }
            sync::record_unchanged(&self.db, source_id).await?;
            return Ok(SyncReport { mode: "not_modified".into(), ..SyncReport::default() });
        };
        // The times go into the report `apply` stores, not only into what it returns.
        match sync::apply(&self.db, source_id, source, fetched, sync::elapsed_ms(started)).await {
            Ok(report) => Ok(report),
            // A value PostgreSQL refuses (SQLSTATE class 22) fails every attempt the same way:
            // give up now and say so on the source, instead of retrying into the dead letters
            // with the source showing nothing.
            Err(e) if is_data_error(&e) => {
                let error = format!(
                    "the calendar holds a value the store refuses ({e}); nothing was applied, the next sync tries again"
                );
                sync::record_failure(&self.db, source_id, &error).await?;
                Err(SyncError::Permanent(error))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Source `source_id`, restricted to `tenant` when given: a source of another tenant is
    /// "not found", with the same message as a missing one, so a job cannot learn whether
    /// an id exists elsewhere. `None` loads any tenant's source: only Fleet's operators
    /// produce such jobs (`fleetctl`, tests), never the public API, which always sets
    /// the envelope's tenant from the caller's key.
    async fn load(&self, tenant: Option<&str>, source_id: &str) -> Result<Source, SyncError> {
        sync::load_source(&self.db, tenant, source_id)
            .await?
            .ok_or_else(|| SyncError::Permanent(format!("calendar source {source_id} not found")))
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
                let etags = sync::object_etags(&self.db, source_id).await?;
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
                    changed: pull.changed.into_iter().map(|o| (o.href, o.etag, o.body)).collect(),
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
                        // Decoded (and checked to be iCalendar) when applied (`store::sync::apply`).
                        changed: vec![(String::new(), etag.clone(), body)],
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
}

/// Whether PostgreSQL refused a value (SQLSTATE class 22, data exception: an invalid byte
/// sequence, a value out of range), which no retry changes.
fn is_data_error(e: &sqlx::Error) -> bool {
    e.as_database_error().and_then(|d| d.code()).is_some_and(|code| code.starts_with("22"))
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
            Err(SyncError::Transient(e, None)) => {
                if ctx.is_last_attempt() {
                    // The job goes to the dead letters now: the source must say why, or it
                    // shows neither an error nor a sync.
                    let error = format!("gave up after {} attempts: {e}", ctx.attempt);
                    if let Err(db) =
                        sync::record_failure_of(&self.db, ctx.tenant.as_deref(), &args.source_id, &error).await
                    {
                        tracing::warn!(source = %args.source_id, error = %db, "the sync's failure not recorded on the source");
                    }
                }
                Err(JobError::retry(e))
            }
            Err(SyncError::Permanent(e)) => Err(JobError::give_up(e)),
        }
    }
}
