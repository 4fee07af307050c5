//! Re-sealing stored secrets with the current key (`fleet-scheduler reseal-secrets`), and
//! sealing the webhook endpoint secrets stored in plaintext before sealing existed (also
//! done by the scheduler at start-up when it has a key).
//!
//! Every sealed column, each with the associated data it was sealed with:
//!
//! | table | column | associated data |
//! |---|---|---|
//! | `webhook_endpoints` | `secrets` (array) | tenant + table + endpoint id ([`endpoint_store::endpoint_aad`]) |
//! | `calendar_sources` | `secret` | source id |
//! | `comms_sources` | `secret` | source id |
//!
//! Safe to re-run and to interrupt: rows are walked in id order, a page at a time, and each
//! row is rewritten by its own statement only if it still holds what was read
//! (compare-and-set), so an endpoint rotated or a token refreshed meanwhile is left as
//! its writer left it (counted as `changed`; a re-run picks it up if it needs it). Values
//! already sealed with the current key are not touched. A value no configured key opens
//! is reported by row id (never by content) and left as it is.

use fleet_accounts::secrets::{SecretBox, is_sealed};
use fleet_accounts::sources::SourceTable;
use fleet_webhooks::store as endpoint_store;
use sqlx::PgPool;

/// Rows read per query.
const PAGE: i64 = 200;

/// What a pass over one table did, counted in secrets (an endpoint has one or two).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Sealed with an old key or in the `v1` form, now sealed with the current key.
    pub resealed: u64,
    /// Stored in plaintext, now sealed.
    pub sealed_plaintext: u64,
    /// Already sealed with the current key.
    pub current: u64,
    /// Rows changed by someone else between the read and the write (left as they are).
    pub changed: u64,
    /// Rows with a secret that no configured key opens (left as they are).
    pub failed: Vec<String>,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} resealed, {} sealed from plaintext, {} already current, {} changed meanwhile, {} failed",
            self.resealed,
            self.sealed_plaintext,
            self.current,
            self.changed,
            self.failed.len()
        )?;
        if !self.failed.is_empty() {
            let shown: Vec<&str> = self.failed.iter().take(20).map(String::as_str).collect();
            write!(f, " ({}{})", shown.join(", "), if self.failed.len() > 20 { ", ..." } else { "" })?;
        }
        Ok(())
    }
}

/// One value moved to the current key: the new value, or `None` if it is current.
enum Step {
    Keep,
    Resealed(String),
    Sealed(String),
}

fn step(secrets: &SecretBox, aad: &str, stored: &str) -> Result<Step, fleet_accounts::secrets::SecretError> {
    if !is_sealed(stored) {
        return secrets.seal(aad, stored).map(Step::Sealed);
    }
    Ok(match secrets.reseal(aad, stored)? {
        Some(v) => Step::Resealed(v),
        None => Step::Keep,
    })
}

/// Re-seals every sealed column with the current key; one report per table.
pub async fn reseal_all(db: &PgPool, secrets: &SecretBox) -> Result<Vec<(&'static str, Counts)>, sqlx::Error> {
    Ok(vec![
        ("webhook_endpoints", endpoints(db, secrets, false).await?),
        ("calendar_sources", sources(db, secrets, SourceTable::Calendar).await?),
        ("comms_sources", sources(db, secrets, SourceTable::Comms).await?),
    ])
}

/// Seals the webhook endpoint secrets still stored in plaintext (rows with sealed
/// secrets only are not read).
pub async fn seal_plaintext_endpoint_secrets(db: &PgPool, secrets: &SecretBox) -> Result<Counts, sqlx::Error> {
    endpoints(db, secrets, true).await
}

async fn endpoints(db: &PgPool, secrets: &SecretBox, plaintext_only: bool) -> Result<Counts, sqlx::Error> {
    let mut counts = Counts::default();
    let mut after = String::new();
    loop {
        let rows = endpoint_store::endpoint_secrets_page(db, &after, plaintext_only, PAGE).await?;
        let Some(last) = rows.last() else { break };
        after = last.id.clone();
        for endpoint_store::StoredSecrets { id, tenant, secrets: old } in rows {
            let aad = endpoint_store::endpoint_aad(&tenant, &id);
            let mut new = Vec::with_capacity(old.len());
            let (mut resealed, mut sealed, mut current) = (0, 0, 0);
            let mut ok = true;
            for s in &old {
                match step(secrets, &aad, s) {
                    Ok(Step::Keep) => {
                        current += 1;
                        new.push(s.clone());
                    }
                    Ok(Step::Resealed(v)) => {
                        resealed += 1;
                        new.push(v);
                    }
                    Ok(Step::Sealed(v)) => {
                        sealed += 1;
                        new.push(v);
                    }
                    Err(_) => ok = false,
                }
            }
            if !ok {
                counts.failed.push(id);
                continue;
            }
            counts.current += current;
            if resealed + sealed == 0 {
                continue;
            }
            if endpoint_store::replace_secrets(db, &id, &old, &new).await? {
                counts.resealed += resealed;
                counts.sealed_plaintext += sealed;
            } else {
                counts.changed += 1;
            }
        }
    }
    Ok(counts)
}

async fn sources(db: &PgPool, secrets: &SecretBox, table: SourceTable) -> Result<Counts, sqlx::Error> {
    let mut counts = Counts::default();
    let mut after = String::new();
    loop {
        let rows = fleet_accounts::sources::sealed_secrets_after(db, table, &after, PAGE).await?;
        let Some(last) = rows.last() else { break };
        after = last.0.clone();
        for (id, old) in rows {
            // Source secrets are bound to the source id alone (as calendar.sync and comms.sync open them).
            let (new, resealed) = match step(secrets, &id, &old) {
                Ok(Step::Keep) => {
                    counts.current += 1;
                    continue;
                }
                Ok(Step::Resealed(v)) => (v, true),
                Ok(Step::Sealed(v)) => (v, false),
                Err(_) => {
                    counts.failed.push(id);
                    continue;
                }
            };
            let swapped = fleet_accounts::sources::swap_secret(db, table, &id, &old, &new).await?;
            match (swapped, resealed) {
                (true, true) => counts.resealed += 1,
                (true, false) => counts.sealed_plaintext += 1,
                _ => counts.changed += 1,
            }
        }
    }
    Ok(counts)
}
