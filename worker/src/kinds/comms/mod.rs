//! `comms.sync`: one communication source pulled into its supplier's timeline.
//!
//! The job names a source (`comms_sources`); its settings, sealed secret and cursors
//! are in PostgreSQL. The sync itself is [`fleet_comms::imap::sync_account`] over the
//! PostgreSQL store ([`store::PgStore`]), which commits each chunk of messages with the
//! cursor that covers it: a retry, or a sync after a crash, goes on from there.
//!
//! Isolation: each source is its own job. A source that fails (wrong password, server
//! down) records the error on its row and is retried with the kind's backoff; the
//! other sources of the same supplier are other jobs and sync regardless. Inside one
//! source, a folder that fails is reported and the other folders go on.

pub mod sms;
pub mod store;

use crate::handler::{Handler, JobContext, JobError};
use fleet_comms::contacts::ContactBook;
use fleet_comms::imap::{ImapAccount, SyncOptions, sync_account};
use fleet_comms::secrets::SecretBox;
use fleet_jobs::catalogue::CommsSync;
use serde::Deserialize;
use sqlx::{PgPool, Row};
use std::sync::Arc;

pub use store::PgStore;

/// The non-secret settings of an IMAP source (`comms_sources.config`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImapSourceConfig {
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Implicit TLS.
    #[serde(default)]
    pub tls: bool,
    /// Login name.
    pub user: String,
    /// Folders to read (default: every selectable folder).
    #[serde(default)]
    pub folders: Option<Vec<String>>,
}

/// The `comms.sync` handler.
#[derive(Debug, Clone)]
pub struct SyncSource {
    db: PgPool,
    http: reqwest::Client,
    secrets: Option<SecretBox>,
    options: SyncOptions,
}

impl SyncSource {
    /// A handler on `db`, opening secrets with `secrets` (`None`: sources with a secret
    /// fail with a clear error naming `FLEET_SECRETS_KEY`).
    pub fn new(db: PgPool, secrets: Option<SecretBox>) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        SyncSource { db, http, secrets, options: SyncOptions::default() }
    }

    /// The same handler with other sync options (chunk sizes, limits, timeouts).
    pub fn with_options(mut self, options: SyncOptions) -> Self {
        self.options = options;
        self
    }

    /// The supplier's clients and own addresses.
    async fn contact_book(&self, tenant: &str, region: &str) -> Result<ContactBook, sqlx::Error> {
        let rows = sqlx::query("SELECT kind, value, client FROM comms_contacts WHERE tenant = $1")
            .bind(tenant)
            .fetch_all(&self.db)
            .await?;
        let mut book = ContactBook::new(region);
        for r in rows {
            let (kind, value, client): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            let (emails, phones): (Vec<&str>, Vec<&str>) =
                if kind == "email" { (vec![value.as_str()], vec![]) } else { (vec![], vec![value.as_str()]) };
            if client.is_empty() {
                book.add_own(&emails, &phones);
            } else {
                book.add_client(&client, &emails, &phones);
            }
        }
        Ok(book)
    }

    async fn sync_sms(
        &self,
        source: &str,
        tenant: &str,
        config: serde_json::Value,
        secret: Option<String>,
        region: &str,
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
                let e = fleet_comms::secrets::SecretError::NoKey.to_string();
                self.record(source, Err(e.clone())).await;
                return Err(JobError::retry(e));
            }
        };
        let book = self.contact_book(tenant, region).await?;
        let mut store = PgStore::new(self.db.clone(), tenant);
        match sms::sync_sms(&self.http, &cfg, &token, source, &book, &mut store).await {
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
        let (report, error) = match outcome {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(e)),
        };
        let done = sqlx::query(
            "UPDATE comms_sources SET last_sync_at = now(),
                    last_ok_at = CASE WHEN $3::text IS NULL THEN now() ELSE last_ok_at END,
                    last_report = COALESCE($2, last_report), last_error = $3
              WHERE id = $1",
        )
        .bind(source)
        .bind(report)
        .bind(error)
        .execute(&self.db)
        .await;
        if let Err(e) = done {
            tracing::warn!(source, error = %e, "could not record the sync outcome on the source");
        }
    }
}

impl Handler for SyncSource {
    type Args = CommsSync;

    async fn handle(&self, a: CommsSync, _ctx: JobContext) -> Result<(), JobError> {
        let row = sqlx::query("SELECT tenant, kind, config, secret, default_region FROM comms_sources WHERE id = $1")
            .bind(&a.source_id)
            .fetch_optional(&self.db)
            .await?;
        let Some(row) = row else {
            return Err(JobError::give_up(format!("comms source {} not found (removed?)", a.source_id)));
        };
        let (tenant, kind, config, secret, region): (String, String, serde_json::Value, Option<String>, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        if kind == "sms" {
            return self.sync_sms(&a.source_id, &tenant, config, secret, &region).await;
        }
        if kind != "imap" {
            let e = format!("{kind} sources are not synced by this worker yet");
            self.record(&a.source_id, Err(e.clone())).await;
            return Err(JobError::give_up(e));
        }
        let cfg: ImapSourceConfig = match serde_json::from_value(config) {
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
                let e = fleet_comms::secrets::SecretError::NoKey.to_string();
                self.record(&a.source_id, Err(e.clone())).await;
                return Err(JobError::retry(e));
            }
        };
        let account = ImapAccount {
            host: cfg.host,
            port: cfg.port,
            tls: cfg.tls,
            user: cfg.user,
            password,
            folders: cfg.folders,
        };
        let book = Arc::new(self.contact_book(&tenant, &region).await?);
        let mut store = PgStore::new(self.db.clone(), tenant);
        match sync_account(&account, &a.source_id, &book, &mut store, &self.options).await {
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
                    fleet_comms::imap::SyncError::Unsupported(_) => Err(JobError::give_up(e)),
                    other => Err(JobError::retry(other)),
                }
            }
        }
    }
}
