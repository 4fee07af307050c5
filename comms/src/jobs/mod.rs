//! `comms.sync`: one communication source pulled into its supplier's timeline.
//!
//! The job names a source (`comms_sources`); its settings, sealed secret and cursors
//! are in PostgreSQL. The sync itself is [`crate::imap::sync_account`] over the
//! PostgreSQL store ([`crate::store::PgStore`]), which commits each chunk of messages with the
//! cursor that covers it: a retry, or a sync after a crash, goes on from there.
//!
//! Kinds: `imap` (password `LOGIN` or OAuth2 `XOAUTH2`; implicit TLS, STARTTLS, or plain
//! on loopback only), `sms` (a Twilio-style API, see [`sms`]) and `in_app` (the
//! platform's own `platform_messages`, see [`PgStore::sync_in_app`]). Every query
//! on the `comms_*` tables is in [`crate::store`].
//!
//! Every new entry is written with a `comms.entry.created` row in `comms_outbox` in the
//! same transaction; with a relay ([`SyncSource::with_relay`]) the handler publishes the
//! tenant's pending rows after the sync (whatever its outcome: committed chunks count).
//!
//! Fleet-wide limits of SMS providers: `sms:<tenant>:<account sid>` (e.g. `[limits."sms:*"]`).
//! The key depends on the source's settings, which are in PostgreSQL, not in the job's
//! arguments, so it is taken in the handler once the source is read (like the vision
//! providers of `image.analyze`), through [`JobContext::limits`] rather than
//! [`Handler::limit_keys`]: a source over its rate or cap is snoozed, a 429 past the
//! in-run retries holds the whole account back for its `Retry-After`, and failures feed
//! its breaker ([`sms::verdict`]).
//!
//! Isolation: each source is its own job. A source that fails (wrong password, server
//! down) records the error on its row and is retried with the kind's backoff; the
//! other sources of the same supplier are other jobs and sync regardless. Inside one
//! source, a folder that fails is reported and the other folders go on.

pub mod sms;

use crate::contacts::ContactBook;
use crate::imap::{AuthMethod, ImapAccount, SyncOptions, sync_account};
use crate::store::{self, PgStore};
use fleet_accounts::oauth::{OAuthCredentials, OAuthError};
use fleet_accounts::outbox::Relay;
use fleet_accounts::secrets::SecretBox;
use fleet_jobs::catalogue::CommsSync;
use fleet_kit::limits::AttemptLimits;
use fleet_kit::{Handler, JobContext, JobError};
use sqlx::PgPool;
use std::sync::Arc;

/// The `comms.sync` handler.
#[derive(Debug, Clone)]
pub struct SyncSource {
    db: PgPool,
    /// The provider HTTP client, or why it could not be built: a job that needs it then
    /// fails with that reason (never with a client built some other way).
    http: Result<reqwest::Client, String>,
    secrets: Option<SecretBox>,
    options: SyncOptions,
    relay: Option<Relay>,
}

/// The provider HTTP client: the SSRF guard, fleet-net's timeouts (30 s per request), no
/// redirects (they would carry the credentials).
fn guarded_http(guard: &Arc<fleet_net::Guard>) -> Result<reqwest::Client, String> {
    let options = fleet_net::ClientOptions { guard: Some(guard.clone()), ..fleet_net::ClientOptions::default() };
    options.client(0).map_err(|e| e.to_string())
}

impl SyncSource {
    /// A handler on `db`, opening secrets with `secrets` (`None`: sources with a secret
    /// fail with a clear error naming `FLEET_SECRETS_KEY`).
    /// Mail servers and provider APIs must be at public addresses ([`Self::with_allowed`]
    /// opens ranges): a source's host is a tenant's input.
    pub fn new(db: PgPool, secrets: Option<SecretBox>) -> Self {
        let guard = Arc::new(fleet_net::Guard::new(Vec::new()));
        SyncSource {
            db,
            http: guarded_http(&guard),
            secrets,
            options: SyncOptions { guard: Some(guard), ..SyncOptions::default() },
            relay: None,
        }
    }

    /// Lets mail servers and provider APIs be in these address ranges besides public ones.
    pub fn with_allowed(mut self, allow: Vec<fleet_net::Cidr>) -> Self {
        let guard = Arc::new(fleet_net::Guard::new(allow));
        self.http = guarded_http(&guard);
        self.options.guard = Some(guard);
        self
    }

    /// Publishes the new entries' events (`comms_outbox`) after each sync.
    pub fn with_relay(mut self, relay: Relay) -> Self {
        self.relay = Some(relay);
        self
    }

    /// Refreshes `credentials` when their access token is due (or `force`), and stores them
    /// sealed again; a refused refresh is recorded on the source and not retried.
    async fn renew(&self, source: &str, credentials: &mut OAuthCredentials, force: bool) -> Result<(), JobError> {
        let now = chrono::Utc::now().timestamp();
        if !force && !credentials.needs_refresh(now) {
            return Ok(());
        }
        let options =
            fleet_net::ClientOptions { guard: self.options.guard.clone(), ..fleet_net::ClientOptions::default() };
        if let Err(e) = credentials.refresh(&options, now).await {
            self.record(source, Err(e.to_string())).await;
            return Err(match e {
                OAuthError::RateLimited { retry_after, .. } => JobError::retry_after(e, retry_after),
                e if e.is_transient() => JobError::retry(e),
                e => JobError::give_up(e),
            });
        }
        let Some(secrets) = &self.secrets else { return Err(JobError::retry("FLEET_SECRETS_KEY is not set")) };
        let sealed = secrets.seal(source, &credentials.to_secret()).map_err(JobError::give_up)?;
        store::replace_secret(&self.db, source, &sealed)
            .await
            .map_err(|e| JobError::retry(format!("database: {e}")))?;
        tracing::info!(source, "mail access token refreshed");
        Ok(())
    }

    /// Publishes the tenant's pending events; a failure leaves them for the next run.
    async fn publish(&self, tenant: &str) {
        if let Some(relay) = &self.relay
            && let Err(e) = relay.publish_pending("comms_outbox", tenant).await
        {
            tracing::warn!(tenant, error = %e, "could not publish new timeline entries; the next sync retries");
        }
    }

    async fn sync_in_app(&self, source: &str, tenant: &str, config: serde_json::Value) -> Result<(), JobError> {
        if let Some(map) = config.as_object().filter(|m| !m.is_empty()) {
            let keys: Vec<&String> = map.keys().collect();
            let e = format!("source settings are not valid: in_app sources take no settings (got {keys:?})");
            self.record(source, Err(e.clone())).await;
            return Err(JobError::give_up(e));
        }
        let store = PgStore::new(self.db.clone(), tenant);
        match store.sync_in_app(source, self.options.chunk).await {
            Ok(report) => {
                metrics::counter!("fleet_comms_entries_total", "channel" => "in_app").increment(report.new as u64);
                self.record(source, Ok(serde_json::to_value(report).unwrap_or_default())).await;
                Ok(())
            }
            Err(e) => {
                self.record(source, Err(e.to_string())).await;
                Err(JobError::retry(e))
            }
        }
    }

    /// The same handler with other sync options (chunk sizes, limits, timeouts).
    pub fn with_options(mut self, options: SyncOptions) -> Self {
        self.options = options;
        self
    }

    /// The supplier's clients and own addresses.
    async fn contact_book(&self, tenant: &str, region: &str) -> Result<ContactBook, sqlx::Error> {
        store::contact_book(&self.db, tenant, region).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn sync_sms(
        &self,
        source: &str,
        tenant: &str,
        config: serde_json::Value,
        secret: Option<String>,
        region: &str,
        limits: &AttemptLimits,
    ) -> Result<(), JobError> {
        let cfg: sms::SmsSourceConfig = match serde_json::from_value(config) {
            Ok(c) => c,
            Err(e) => {
                let e = format!("source settings are not valid: {e}");
                self.record(source, Err(e.clone())).await;
                return Err(JobError::give_up(e));
            }
        };
        let token = match (secret, &self.secrets) {
            (Some(sealed), Some(secrets)) => match secrets.open(source, &sealed) {
                Ok(t) => t,
                Err(e) => {
                    self.record(source, Err(e.to_string())).await;
                    return Err(JobError::give_up(e));
                }
            },
            (None, _) => String::new(),
            (Some(_), None) => {
                let e = fleet_accounts::secrets::SecretError::NoKey.to_string();
                self.record(source, Err(e.clone())).await;
                return Err(JobError::retry(e));
            }
        };
        // The API's host is the tenant's input: a private IP literal is refused here (names
        // are checked by the client's resolver; pages stay on this host).
        let refused = match (reqwest::Url::parse(&cfg.api_base), &self.options.guard) {
            (Err(e), _) => Some(format!("api_base is not a URL: {e}")),
            (Ok(url), Some(guard)) => guard
                .check_url(&url)
                .err()
                .map(|ip| format!("refused by the SSRF guard: {} is a private or reserved address", ip.0)),
            (Ok(_), None) => None,
        };
        if let Some(e) = refused {
            self.record(source, Err(e.clone())).await;
            return Err(JobError::give_up(e));
        }
        let http = match &self.http {
            Ok(http) => http,
            Err(e) => {
                // A worker-side fault, not the source's: retried (another worker, or this
                // one once fixed, may have a client), and never sent without the guard.
                let e = format!("no provider HTTP client on this worker ({e}); the sync is retried");
                self.record(source, Err(e.clone())).await;
                return Err(JobError::retry(e));
            }
        };
        let book = self.contact_book(tenant, region).await?;
        // The provider account's fleet-wide limits, when configured: a wait snoozes the job.
        let key = sms::limit_key(tenant, &cfg.account_sid);
        limits.admit(&key).await?;
        let mut store = PgStore::new(self.db.clone(), tenant);
        let outcome = sms::sync_sms(http, &cfg, &token, source, &book, &mut store).await;
        limits.settle(&key, sms::verdict(&outcome)).await;
        match outcome {
            Ok(report) => {
                metrics::counter!("fleet_comms_entries_total", "channel" => "sms").increment(report.new as u64);
                self.record(source, Ok(serde_json::to_value(report).unwrap_or_default())).await;
                Ok(())
            }
            Err(e) => {
                self.record(source, Err(e.to_string())).await;
                match e {
                    sms::SmsError::RateLimited(after) => Err(JobError::slow_down(e, after)),
                    other => Err(JobError::retry(other)),
                }
            }
        }
    }

    async fn record(&self, source: &str, outcome: Result<serde_json::Value, String>) {
        if let Err(e) = store::record_sync(&self.db, source, outcome).await {
            tracing::warn!(source, error = %e, "could not record the sync outcome on the source");
        }
    }
}

impl Handler for SyncSource {
    type Args = CommsSync;

    async fn handle(&self, a: CommsSync, ctx: JobContext) -> Result<(), JobError> {
        // The job's envelope tenant is the authority: a source of another tenant is "not
        // found", with the same message as a missing one. A job with no tenant was
        // enqueued by Fleet's operators (`fleetctl`, tests), never by the public API,
        // which always sets it from the caller's key: it loads the source by id.
        let Some(row) = store::source_to_sync(&self.db, ctx.tenant.as_deref(), &a.source_id).await? else {
            return Err(JobError::give_up(format!("comms source {} not found (removed?)", a.source_id)));
        };
        let store::SourceToSync { tenant, kind, config, secret, default_region: region } = row;
        if kind == "sms" {
            let r = self.sync_sms(&a.source_id, &tenant, config, secret, &region, ctx.limits()).await;
            self.publish(&tenant).await;
            return r;
        }
        if kind == "in_app" {
            let r = self.sync_in_app(&a.source_id, &tenant, config).await;
            self.publish(&tenant).await;
            return r;
        }
        if kind != "imap" {
            let e = format!("{kind} sources are not synced by this worker yet");
            self.record(&a.source_id, Err(e.clone())).await;
            return Err(JobError::give_up(e));
        }
        // `config` holds everything but the secret (the API writes it; never a password).
        let mut config = config;
        if let Some(map) = config.as_object_mut() {
            map.insert("password".into(), serde_json::Value::String(String::new()));
        }
        let mut account: ImapAccount = match serde_json::from_value(config) {
            Ok(c) => c,
            Err(e) => {
                let e = format!("source settings are not valid: {e}");
                self.record(&a.source_id, Err(e.clone())).await;
                return Err(JobError::give_up(e));
            }
        };
        let password = match (secret, &self.secrets) {
            (None, _) => String::new(),
            (Some(sealed), Some(secrets)) => match secrets.open(&a.source_id, &sealed) {
                Ok(p) => p,
                Err(e) => {
                    self.record(&a.source_id, Err(e.to_string())).await;
                    return Err(JobError::give_up(e));
                }
            },
            (Some(_), None) => {
                let e = fleet_accounts::secrets::SecretError::NoKey.to_string();
                self.record(&a.source_id, Err(e.clone())).await;
                return Err(JobError::retry(e));
            }
        };
        // XOAUTH2 with OAuth credentials as the secret: the access token is kept fresh (the
        // same refresh as calendar providers), a refused one renewed before the retry.
        let mut oauth =
            (account.auth == AuthMethod::Xoauth2).then(|| OAuthCredentials::from_secret(&password)).flatten();
        account.password = match &mut oauth {
            Some(credentials) => match self.renew(&a.source_id, credentials, false).await {
                Ok(()) => credentials.access_token.clone(),
                Err(e) => return Err(e),
            },
            None => password,
        };
        let book = Arc::new(self.contact_book(&tenant, &region).await?);
        let mut store = PgStore::new(self.db.clone(), tenant.clone());
        let outcome = sync_account(&account, &a.source_id, &book, &mut store, &self.options).await;
        self.publish(&tenant).await;
        if let (Err(crate::imap::SyncError::Auth { .. }), Some(credentials)) = (&outcome, &mut oauth) {
            self.renew(&a.source_id, credentials, true).await?;
            let e = "the server refused the access token; refreshed it, retrying";
            self.record(&a.source_id, Err(e.into())).await;
            return Err(JobError::retry_after(e, std::time::Duration::from_secs(1)));
        }
        match outcome {
            Ok(report) => {
                let failed: Vec<String> = report
                    .folders
                    .iter()
                    .filter_map(|f| f.error.as_ref().map(|e| format!("{}: {e}", f.folder)))
                    .collect();
                let value = serde_json::to_value(&report).unwrap_or_default();
                metrics::counter!("fleet_comms_entries_total", "channel" => "email")
                    .increment(report.total(|f| f.new) as u64);
                metrics::counter!("fleet_comms_quarantined_total").increment(report.total(|f| f.quarantined) as u64);
                if failed.is_empty() {
                    self.record(&a.source_id, Ok(value)).await;
                    Ok(())
                } else {
                    // Partial progress is committed; the failed folders are retried.
                    self.record(&a.source_id, Err(failed.join("; "))).await;
                    Err(JobError::retry(format!("{} folder(s) failed: {}", failed.len(), failed.join("; "))))
                }
            }
            Err(e) => {
                self.record(&a.source_id, Err(e.to_string())).await;
                match e {
                    // A setting this build cannot honour will not get better by retrying.
                    crate::imap::SyncError::Unsupported(_) => Err(JobError::give_up(e)),
                    other => Err(JobError::retry(other)),
                }
            }
        }
    }
}
