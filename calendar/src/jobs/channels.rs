//! Push channels, kept by `calendar.sync`: after each successful sync of a Google or Graph
//! source whose `push` is on, the source's channel is made, renewed or replaced here, with the
//! access token the pull used (refreshed by [`super::CalendarSyncHandler::access_token`]).
//!
//! - **None yet, or expired**: Google `events.watch` on a new channel id, or a Graph
//!   subscription (Graph checks the notification URL before it answers). A random token
//!   (Google `token`, Graph `clientState`) goes with it; only its SHA-256 is stored.
//! - **A third of its lifetime left** ([`crate::store::channels::renew_time`]; the ticker asks
//!   for a sync then): Graph is renewed with `PATCH /subscriptions/{id}` (404: made again);
//!   Google has no renewal, so a new channel replaces the old one, which is then stopped.
//! - **Push turned off on the source**: its channels are stopped and forgotten.
//!
//! Without `[calendar.push] public_url` nothing here runs: sources stay polled on their
//! schedules. A failure is logged and put in the sync's report, never fails the sync: the
//! pull already succeeded, and the next sync tries again.

use super::{CalendarSyncHandler, Source};
use crate::google::GoogleCalendar;
use crate::graph::GraphCalendar;
use crate::provider::ProviderError;
use crate::store::channels::{self as store, Channel, NewChannel};
use chrono::{DateTime, TimeDelta, Utc};
use secrecy::SecretString;
use serde::Deserialize;

/// Google's longest watch channel for events (it may answer with a shorter one).
pub const GOOGLE_LIFETIME_SECS: u64 = 7 * 24 * 3600;
/// Graph's cap on Outlook subscriptions has been 4,230 minutes (and 10,080 for events
/// since); the lower one is asked for, which every tenant accepts.
pub const GRAPH_LIFETIME_SECS: u64 = 4230 * 60;

/// `[calendar.push]` in the worker's config.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PushSettings {
    /// The public origin (and any path prefix a proxy adds) at which Google and Microsoft
    /// reach the scheduler's API, e.g. `https://fleet.example.com`: notifications go to
    /// `{public_url}/v1/push/google` and `{public_url}/v1/push/graph`. Without it no channel
    /// is made and sources stay polled (`FLEET_CALENDAR_PUSH_URL`).
    pub public_url: Option<String>,
    /// Lifetime asked for Google channels, in seconds (default 7 days).
    pub google_lifetime_secs: u64,
    /// Lifetime asked for Graph subscriptions, in seconds (default 4,230 minutes).
    pub graph_lifetime_secs: u64,
}

impl Default for PushSettings {
    fn default() -> Self {
        PushSettings {
            public_url: None,
            google_lifetime_secs: GOOGLE_LIFETIME_SECS,
            graph_lifetime_secs: GRAPH_LIFETIME_SECS,
        }
    }
}

impl PushSettings {
    /// Checks the settings: an http(s) URL without query or credentials; lifetimes from a
    /// minute to 30 days.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.public_url {
            let parsed = url::Url::parse(url).map_err(|e| format!("calendar.push.public_url: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https")
                || parsed.host_str().is_none()
                || parsed.query().is_some()
                || !parsed.username().is_empty()
                || parsed.password().is_some()
            {
                return Err("calendar.push.public_url must be an http(s) URL without query or credentials \
                     (the providers call https only)"
                    .into());
            }
        }
        for (name, secs) in
            [("google_lifetime_secs", self.google_lifetime_secs), ("graph_lifetime_secs", self.graph_lifetime_secs)]
        {
            if !(60..=30 * 24 * 3600).contains(&secs) {
                return Err(format!("calendar.push.{name} must be between 60 and 2592000 seconds"));
            }
        }
        Ok(())
    }

    /// Where provider `provider`'s notifications go, when push is configured.
    pub fn notification_url(&self, provider: &str) -> Option<String> {
        self.public_url.as_deref().map(|base| format!("{}/v1/push/{provider}", base.trim_end_matches('/')))
    }
}

/// `[calendar]` in the worker's config: the SSRF guard's allow-list and push channels.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CalendarSettings {
    /// Address ranges calendar servers may be at besides public ones (see
    /// [`fleet_accounts::allow::SourceSettings`]).
    pub allow: Vec<String>,
    /// Push channels (`[calendar.push]`).
    pub push: PushSettings,
}

impl CalendarSettings {
    /// The allow-list, parsed.
    pub fn ranges(&self) -> Result<Vec<fleet_net::Cidr>, String> {
        self.allow.iter().map(|c| c.parse()).collect()
    }
}

/// A random channel token: 32 bytes as hex (64 characters: within Graph's 128 for
/// `clientState` and Google's 256 for `token`).
fn new_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

impl CalendarSyncHandler {
    /// Makes, renews or replaces the push channel of a Google or Graph source after a
    /// successful sync; `None` when there was nothing to do. Never fails the sync: a
    /// problem comes back as a sentence for the report (and the log).
    pub(super) async fn maintain_channel(&self, source_id: &str) -> Option<String> {
        self.push.public_url.as_ref()?;
        let outcome = match self.channel_step(source_id).await {
            Ok(outcome) => outcome,
            Err(e) => Some(format!("push channel not set up: {e}")),
        };
        if let Some(outcome) = &outcome {
            tracing::info!(source = source_id, push = %outcome, "calendar push channel");
        }
        outcome
    }

    async fn channel_step(&self, source_id: &str) -> Result<Option<String>, String> {
        // The pull may have refreshed the token: read the source again for the new one.
        let Some(source) =
            crate::store::sync::load_source(&self.db, None, source_id).await.map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        if !matches!(source.kind.as_str(), "google" | "graph") {
            return Ok(None);
        }
        let channels = store::of_source(&self.db, source_id).await.map_err(|e| e.to_string())?;
        let push = store::push_enabled(&self.db, source_id).await.map_err(|e| e.to_string())?;
        if !push && channels.is_empty() {
            return Ok(None);
        }
        let (token, _) = self.access_token(source_id, &source, false).await.map_err(|e| match e {
            super::SyncError::Transient(e, _) | super::SyncError::Permanent(e) => e,
        })?;
        let client = ProviderClient::new(&source, token, self)?;
        if !push {
            for old in &channels {
                client.stop(old).await.map_err(|e| e.to_string())?;
                store::remove(&self.db, &old.provider, &old.id).await.map_err(|e| e.to_string())?;
            }
            return Ok(Some(format!("stopped {} channel(s): push is off for the source", channels.len())));
        }
        let now = Utc::now();
        let (newest, older) = match channels.split_first() {
            Some((newest, older)) => (Some(newest), older),
            None => (None, &[][..]),
        };
        // Leftovers of an interrupted replacement: stopped now (best effort; they expire anyway).
        for old in older {
            if let Err(e) = client.stop(old).await {
                tracing::warn!(source = source_id, channel = %old.id, error = %e, "old push channel not stopped");
            }
            store::remove(&self.db, &old.provider, &old.id).await.map_err(|e| e.to_string())?;
        }
        let outcome = match newest {
            Some(live) if live.provider == source.kind && live.renew_at > now && live.expires_at > now => {
                return Ok(None);
            }
            Some(live) if live.provider == source.kind && live.expires_at > now => {
                match client.renew(self, source_id, &source.tenant, live).await? {
                    Renewal::Renewed(until) => format!("renewed {} until {}", live.id, until.to_rfc3339()),
                    Renewal::Replaced(id) => format!("replaced {} with {id}", live.id),
                }
            }
            stale => {
                if let Some(stale) = stale {
                    // Expired (or of another kind): forgotten; the provider has dropped it.
                    store::remove(&self.db, &stale.provider, &stale.id).await.map_err(|e| e.to_string())?;
                }
                let id = client.create(self, source_id, &source.tenant).await?;
                format!("created {} channel {id}", source.kind)
            }
        };
        Ok(Some(outcome))
    }
}

enum Renewal {
    Renewed(DateTime<Utc>),
    Replaced(String),
}

enum ProviderClient {
    Google(GoogleCalendar),
    Graph(GraphCalendar),
}

impl ProviderClient {
    fn new(source: &Source, token: SecretString, handler: &CalendarSyncHandler) -> Result<Self, String> {
        let options = &handler.client_options;
        match source.kind.as_str() {
            "google" => {
                Ok(ProviderClient::Google(GoogleCalendar::new(&source.url, token, options).map_err(|e| e.to_string())?))
            }
            _ => Ok(ProviderClient::Graph(GraphCalendar::new(&source.url, token, options).map_err(|e| e.to_string())?)),
        }
    }

    async fn stop(&self, channel: &Channel) -> Result<(), ProviderError> {
        match (self, channel.provider.as_str()) {
            (ProviderClient::Google(g), "google") => match &channel.resource_id {
                Some(resource) => g.stop_channel(&channel.id, resource).await,
                None => Ok(()),
            },
            (ProviderClient::Graph(g), "graph") => g.unsubscribe(&channel.id).await,
            // A channel of the other provider (the source's kind changed): it expires.
            _ => Ok(()),
        }
    }

    /// A new channel, stored once the provider has it; its id.
    async fn create(&self, handler: &CalendarSyncHandler, source_id: &str, tenant: &str) -> Result<String, String> {
        let token = new_token();
        let now = Utc::now();
        match self {
            ProviderClient::Google(g) => {
                let url = handler.push.notification_url("google").unwrap_or_default();
                let id = format!("fleet-{}", hex::encode(rand::random::<[u8; 16]>()));
                let asked = now + lifetime(handler.push.google_lifetime_secs);
                let watched = g.watch(&id, &url, &token, asked).await.map_err(|e| format!("events.watch: {e}"))?;
                let channel = NewChannel {
                    id: &id,
                    provider: "google",
                    source_id,
                    tenant,
                    token: &token,
                    resource_id: Some(&watched.resource_id),
                    expires_at: watched.expires_at,
                };
                let stored = store::insert(&handler.db, &channel).await;
                if !matches!(stored, Ok(true)) {
                    // Not stored: Google would notify a channel nobody knows. Stop it.
                    let _ = g.stop_channel(&id, &watched.resource_id).await;
                    return Err(stored_error(stored, "channel"));
                }
                Ok(id)
            }
            ProviderClient::Graph(g) => {
                let url = handler.push.notification_url("graph").unwrap_or_default();
                let asked = now + lifetime(handler.push.graph_lifetime_secs);
                let sub = g.subscribe(&url, &token, asked).await.map_err(|e| format!("subscription: {e}"))?;
                let channel = NewChannel {
                    id: &sub.id,
                    provider: "graph",
                    source_id,
                    tenant,
                    token: &token,
                    resource_id: None,
                    expires_at: sub.expires_at,
                };
                let stored = store::insert(&handler.db, &channel).await;
                if !matches!(stored, Ok(true)) {
                    // Graph answered with an id another source's subscription has (a tenant
                    // chooses the URL Fleet calls), or the write failed: nothing is stored.
                    if stored.is_err() {
                        let _ = g.unsubscribe(&sub.id).await;
                    }
                    return Err(stored_error(stored, "subscription"));
                }
                Ok(sub.id)
            }
        }
    }

    async fn renew(
        &self,
        handler: &CalendarSyncHandler,
        source_id: &str,
        tenant: &str,
        live: &Channel,
    ) -> Result<Renewal, String> {
        match self {
            ProviderClient::Google(g) => {
                // No renewal in Google's API: a new channel first, then the old one stopped.
                let id = self.create(handler, source_id, tenant).await?;
                if let Some(resource) = &live.resource_id
                    && let Err(e) = g.stop_channel(&live.id, resource).await
                {
                    tracing::warn!(source = source_id, channel = %live.id, error = %e, "replaced push channel not stopped");
                }
                store::remove(&handler.db, "google", &live.id).await.map_err(|e| e.to_string())?;
                Ok(Renewal::Replaced(id))
            }
            ProviderClient::Graph(g) => {
                let asked = Utc::now() + lifetime(handler.push.graph_lifetime_secs);
                match g.renew_subscription(&live.id, asked).await {
                    Ok(until) => {
                        store::renewed(&handler.db, "graph", &live.id, until).await.map_err(|e| e.to_string())?;
                        Ok(Renewal::Renewed(until))
                    }
                    Err(ProviderError::NotFound) => {
                        // Graph dropped it (expired early, or removed): made again.
                        store::remove(&handler.db, "graph", &live.id).await.map_err(|e| e.to_string())?;
                        Ok(Renewal::Replaced(self.create(handler, source_id, tenant).await?))
                    }
                    Err(e) => Err(format!("renewing subscription {}: {e}", live.id)),
                }
            }
        }
    }
}

/// Why a new channel was not stored.
fn stored_error(stored: Result<bool, sqlx::Error>, what: &str) -> String {
    match stored {
        Err(e) => format!("storing the {what}: {e}"),
        _ => format!("the provider answered with a {what} id that belongs to another source; not stored"),
    }
}

fn lifetime(secs: u64) -> TimeDelta {
    TimeDelta::seconds(secs.min(i64::MAX as u64) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_and_name_the_routes() {
        let settings = PushSettings { public_url: Some("https://fleet.example.com/".into()), ..Default::default() };
        settings.validate().unwrap();
        assert_eq!(settings.notification_url("graph").unwrap(), "https://fleet.example.com/v1/push/graph");
        assert_eq!(PushSettings::default().notification_url("google"), None, "no URL: no push");
        for bad in ["fleet.example.com", "ftp://fleet.example.com", "https://u:p@fleet.example.com", "https://x/?a=1"] {
            let s = PushSettings { public_url: Some(bad.into()), ..Default::default() };
            assert!(s.validate().is_err(), "{bad}");
        }
        let s = PushSettings { graph_lifetime_secs: 10, ..Default::default() };
        assert!(s.validate().unwrap_err().contains("graph_lifetime_secs"));
        let token = new_token();
        assert_eq!(token.len(), 64);
        assert_ne!(token, new_token());
    }
}
