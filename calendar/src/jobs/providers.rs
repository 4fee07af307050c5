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
use crate::google::{GoogleCalendar, GoogleState};
use crate::graph::{GraphCalendar, GraphState};
use crate::oauth::OAuthCredentials;
use crate::provider::ProviderError;
use chrono::{Months, TimeDelta, Utc};
use secrecy::SecretString;
use std::collections::HashSet;

impl From<ProviderError> for SyncError {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::RateLimited { retry_after, .. } => SyncError::Transient(e.to_string(), retry_after),
            ref other if other.is_transient() => SyncError::Transient(e.to_string(), None),
            other => SyncError::Permanent(other.to_string()),
        }
    }
}

/// Why a provider pull failed: the provider (a refused token may be refreshed) or the rest.
enum PullError {
    Provider(ProviderError),
    Sync(SyncError),
}

impl From<ProviderError> for PullError {
    fn from(e: ProviderError) -> Self {
        PullError::Provider(e)
    }
}

impl From<sqlx::Error> for PullError {
    fn from(e: sqlx::Error) -> Self {
        PullError::Sync(e.into())
    }
}

impl CalendarSyncHandler {
    /// The source's access token, and whether it can be refreshed: the sealed secret is a bare
    /// token or OAuth credentials ([`OAuthCredentials`]), refreshed here when the token is
    /// about to expire or `force` says the provider refused it; a new token is sealed and
    /// stored before it is used.
    pub(super) async fn access_token(
        &self,
        source_id: &str,
        source: &Source,
        force: bool,
    ) -> Result<(SecretString, bool), SyncError> {
        let sealed = source
            .secret
            .as_ref()
            .ok_or_else(|| SyncError::Permanent(format!("{} source without an access token", source.kind)))?;
        let secrets = self.secrets.as_ref().ok_or_else(|| {
            SyncError::Permanent("the source has a sealed secret but FLEET_SECRETS_KEY is not set".into())
        })?;
        let opened = secrets.open(source_id, sealed).map_err(|e| SyncError::Permanent(e.to_string()))?;
        let Some(mut credentials) = OAuthCredentials::from_secret(&opened) else {
            return Ok((opened.into(), false));
        };
        let now = Utc::now().timestamp();
        if force || credentials.needs_refresh(now) {
            credentials.refresh(&self.client_options, now).await.map_err(ProviderError::from)?;
            let resealed =
                secrets.seal(source_id, &credentials.to_secret()).map_err(|e| SyncError::Permanent(e.to_string()))?;
            crate::store::sync::store_secret(&self.db, source_id, &resealed).await?;
            tracing::info!(source = source_id, "provider access token refreshed");
        }
        Ok((credentials.access_token.into(), true))
    }

    /// Pulls a Google or Graph source.
    pub(super) async fn fetch_provider(&self, source_id: &str, source: &Source) -> Result<Fetched, SyncError> {
        let (token, refreshable) = self.access_token(source_id, source, false).await?;
        match self.pull_provider(source_id, source, token).await {
            Err(PullError::Provider(ProviderError::Unauthorised(status))) if refreshable => {
                // Revoked early or expired without notice: renew now; the retry uses it.
                self.access_token(source_id, source, true).await?;
                Err(SyncError::Transient(
                    format!("the provider refused the access token ({status}); refreshed it, retrying"),
                    Some(std::time::Duration::from_secs(1)),
                ))
            }
            Err(PullError::Provider(e)) => Err(e.into()),
            Err(PullError::Sync(e)) => Err(e),
            Ok(fetched) => Ok(fetched),
        }
    }

    async fn pull_provider(&self, source_id: &str, source: &Source, token: SecretString) -> Result<Fetched, PullError> {
        let had_state = !source.state.get("sync_token").is_none_or(|v| v.is_null())
            || !source.state.get("delta_link").is_none_or(|v| v.is_null());
        let pull = match source.kind.as_str() {
            "google" => {
                let client = GoogleCalendar::new(&source.url, token, &self.client_options)?;
                let state: GoogleState = serde_json::from_value(source.state.clone()).unwrap_or_default();
                // UIDs of stored events by href (the Google event id), for cancelled instances
                // whose master is not in this pull.
                let known = crate::store::sync::master_uids(&self.db, source_id).await?;
                client.pull(&state, &known).await?.with_json_state()
            }
            "graph" => {
                let client = GraphCalendar::new(&source.url, token, &self.client_options)?;
                let state: GraphState = serde_json::from_value(source.state.clone()).unwrap_or_default();
                let now = Utc::now();
                client
                    .pull(&state, (now - TimeDelta::days(1), now + Months::new(WINDOW_MONTHS)))
                    .await?
                    .with_json_state()
            }
            other => return Err(PullError::Sync(SyncError::Permanent(format!("{other} is not a provider source")))),
        };
        for skipped in pull.skipped.iter().take(20) {
            tracing::warn!(source = source_id, item = %skipped, "provider event skipped");
        }
        let mut removed = pull.removed;
        let stored = crate::store::sync::object_hrefs(&self.db, source_id).await?;
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
            changed: pull.changed.into_iter().map(|o| (o.href, o.etag, o.body)).collect(),
            removed,
            state: pull.state,
            mode,
        })
    }
}
