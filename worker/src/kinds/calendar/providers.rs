//! `calendar.sync` for Google Calendar (`kind = 'google'`) and Microsoft Graph (`kind = 'graph'`)
//! sources: `url` is the calendar's API URL (`https://www.googleapis.com/calendar/v3/calendars/{id}`,
//! `https://graph.microsoft.com/v1.0/me/calendars/{id}`), the sealed `secret` its OAuth access
//! token, and `state` the provider's sync token (Google `sync_token`; Graph `delta_link` and its
//! window).
//!
//! Incremental results are applied as changes; a full listing (first sync, a refused token, a
//! slid Graph window) as a listing: every stored object missing from it is removed — through
//! the same mass-deletion guard as CalDAV, so an account that suddenly lists nothing is
//! quarantined, not emptied. 429/503 become a retry after the provider's `Retry-After`; a
//! rejected token is recorded on the source and not retried.

use super::{CalendarSyncHandler, Fetched, Source, SyncError, WINDOW_MONTHS};
use chrono::{Months, TimeDelta, Utc};
use fleet_calendar::caldav::CalendarObject;
use fleet_calendar::google::{GoogleCalendar, GoogleState};
use fleet_calendar::graph::{GraphCalendar, GraphState};
use fleet_calendar::provider::ProviderError;
use secrecy::SecretString;
use sqlx::Row;
use std::collections::{HashMap, HashSet};

impl From<ProviderError> for SyncError {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::RateLimited { retry_after, .. } => SyncError::Transient(e.to_string(), retry_after),
            ref other if other.is_transient() => SyncError::Transient(e.to_string(), None),
            other => SyncError::Permanent(other.to_string()),
        }
    }
}

/// What a provider pull gives the sync, before the listing is turned into removals.
struct ProviderFetch {
    changed: Vec<CalendarObject>,
    removed: Vec<String>,
    full: bool,
    resynced: bool,
    skipped: Vec<String>,
    state: serde_json::Value,
}

impl CalendarSyncHandler {
    pub(super) fn access_token(&self, source_id: &str, source: &Source) -> Result<SecretString, SyncError> {
        let sealed = source
            .secret
            .as_ref()
            .ok_or_else(|| SyncError::Permanent(format!("{} source without an access token", source.kind)))?;
        let secrets = self.secrets.as_ref().ok_or_else(|| {
            SyncError::Permanent("the source has a sealed secret but FLEET_SECRETS_KEY is not set".into())
        })?;
        Ok(secrets.open(source_id, sealed).map_err(|e| SyncError::Permanent(e.to_string()))?.into())
    }

    /// Pulls a Google or Graph source.
    pub(super) async fn fetch_provider(&self, source_id: &str, source: &Source) -> Result<Fetched, SyncError> {
        let token = self.access_token(source_id, source)?;
        let had_state = !source.state.get("sync_token").is_none_or(|v| v.is_null())
            || !source.state.get("delta_link").is_none_or(|v| v.is_null());
        let pull = match source.kind.as_str() {
            "google" => {
                let client = GoogleCalendar::new(&source.url, token, &self.client_options)?;
                let state: GoogleState = serde_json::from_value(source.state.clone()).unwrap_or_default();
                // UIDs of stored events by href (the Google event id), for cancelled instances
                // whose master is not in this pull.
                let mut known = HashMap::new();
                for row in sqlx::query("SELECT href, uid FROM calendar_events WHERE source_id = $1 AND rid = ''")
                    .bind(source_id)
                    .fetch_all(&self.db)
                    .await?
                {
                    known.insert(row.get::<String, _>("href"), row.get::<String, _>("uid"));
                }
                let pull = client.pull(&state, &known).await?;
                ProviderFetch {
                    changed: pull.changed,
                    removed: pull.removed,
                    full: pull.full,
                    resynced: pull.resynced,
                    skipped: pull.skipped,
                    state: serde_json::to_value(&pull.state).unwrap_or_default(),
                }
            }
            "graph" => {
                let client = GraphCalendar::new(&source.url, token, &self.client_options)?;
                let state: GraphState = serde_json::from_value(source.state.clone()).unwrap_or_default();
                let now = Utc::now();
                let pull = client.pull(&state, (now - TimeDelta::days(1), now + Months::new(WINDOW_MONTHS))).await?;
                ProviderFetch {
                    changed: pull.changed,
                    removed: pull.removed,
                    full: pull.full,
                    resynced: pull.resynced,
                    skipped: pull.skipped,
                    state: serde_json::to_value(&pull.state).unwrap_or_default(),
                }
            }
            other => return Err(SyncError::Permanent(format!("{other} is not a provider source"))),
        };
        for skipped in pull.skipped.iter().take(20) {
            tracing::warn!(source = source_id, item = %skipped, "provider event skipped");
        }
        let mut removed = pull.removed;
        let stored: Vec<String> = sqlx::query_scalar("SELECT href FROM calendar_objects WHERE source_id = $1")
            .bind(source_id)
            .fetch_all(&self.db)
            .await?;
        let present: HashSet<&str> =
            pull.changed.iter().map(|o| o.href.as_str()).chain(removed.iter().map(String::as_str)).collect();
        let gone: Vec<String> = if pull.full {
            // A listing: whatever Fleet holds that the provider no longer lists is gone.
            stored.iter().filter(|h| !present.contains(h.as_str())).cloned().collect()
        } else if source.kind == "google" {
            // A deleted recurring event takes its stored instance exceptions (Google ids
            // `{master}_{original start}`) with it, even when Google does not list them again.
            let masters: Vec<String> = removed.iter().map(|m| format!("{m}_")).collect();
            stored
                .iter()
                .filter(|h| !present.contains(h.as_str()) && masters.iter().any(|m| h.starts_with(m.as_str())))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        removed.extend(gone);
        let mode = match (pull.full, pull.resynced, had_state) {
            (true, true, _) => "resync",
            (true, false, false) => "initial",
            (true, false, true) => "listing",
            (false, ..) => "incremental",
        };
        Ok(Fetched {
            changed: pull
                .changed
                .into_iter()
                .map(|o| (o.href, o.etag, String::from_utf8_lossy(&o.body).into_owned()))
                .collect(),
            removed,
            state: pull.state,
            mode,
        })
    }
}
