//! `calendar_channels`: the push channels providers hold for Google and Graph sources —
//! a Google Calendar `events.watch` channel or a Microsoft Graph subscription each.
//!
//! - The scheduler's push routes [`verify`] a notification: the channel id (Google) or
//!   subscription id (Graph) must name a live channel of that provider, and the token
//!   (Google `X-Goog-Channel-Token`, Graph `clientState`) must hash to the stored SHA-256,
//!   compared in constant time. The answer names the source and its tenant as stored when
//!   the channel was made: nothing in a notification chooses either.
//! - The ticker [`claim_due`]s channels a third of whose lifetime is left (or that expired)
//!   and asks for a sync of their source; the `calendar.sync` job renews or replaces them
//!   (`jobs/channels.rs`, with the worker's `[calendar.push]` settings).
//!
//! Only the token's hash is stored: a leaked table lets no one forge a notification.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};

/// `google` or `graph`.
pub const PROVIDERS: [&str; 2] = ["google", "graph"];

/// The SHA-256 of a channel token, as stored.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A channel whose notification was verified: which source to sync, for which tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The source the channel watches.
    pub source_id: String,
    /// The source's tenant, as stored when the channel was made.
    pub tenant: String,
}

/// Why a notification is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No live channel with that id for this provider (never made, expired or replaced).
    Unknown,
    /// The channel exists but the token (or Google's resource id) does not match.
    Mismatch,
}

impl Refused {
    /// The reason's name in metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Unknown => "unknown_channel",
            Refused::Mismatch => "token",
        }
    }
}

/// Checks a notification for channel `id` of `provider` carrying `token` (and, for Google,
/// the `resource_id` it names). A match counts the notification on the channel.
pub async fn verify(
    db: &PgPool,
    provider: &str,
    id: &str,
    token: &str,
    resource_id: Option<&str>,
) -> Result<Result<Verified, Refused>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT source_id, tenant, token_sha256, resource_id FROM calendar_channels
          WHERE provider = $1 AND id = $2 AND expires_at > now()",
    )
    .bind(provider)
    .bind(id)
    .fetch_optional(db)
    .await?;
    let Some(row) = row else {
        return Ok(Err(Refused::Unknown));
    };
    let stored: Vec<u8> = row.get("token_sha256");
    let given = token_hash(token);
    let token_ok = bool::from(subtle::ConstantTimeEq::ct_eq(stored.as_slice(), given.as_slice()));
    // Google names the watched resource in every notification; a channel id with the right
    // token but another resource is not ours either.
    let stored_resource: Option<String> = row.get("resource_id");
    let resource_ok = match (stored_resource.as_deref(), resource_id) {
        (Some(stored), Some(given)) => stored == given,
        _ => true,
    };
    if !(token_ok && resource_ok) {
        return Ok(Err(Refused::Mismatch));
    }
    sqlx::query(
        "UPDATE calendar_channels SET notifications = notifications + 1, last_notified_at = now()
          WHERE provider = $1 AND id = $2",
    )
    .bind(provider)
    .bind(id)
    .execute(db)
    .await?;
    Ok(Ok(Verified { source_id: row.get("source_id"), tenant: row.get("tenant") }))
}

/// A source whose channel is due for renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueChannel {
    /// The source.
    pub source_id: String,
    /// Its tenant.
    pub tenant: String,
    /// The channel.
    pub channel: String,
}

/// How long the ticker waits before asking again for the renewal of a channel it already
/// asked for (the sync may be queued behind others, or the provider down).
pub const RENEW_ASK_AGAIN_SECS: i64 = 600;

/// Claims up to `limit` live channels whose renewal time has come (a third of their
/// lifetime left, or already expired) and that were not asked for in the last
/// [`RENEW_ASK_AGAIN_SECS`]; the caller enqueues a sync of each source. Replicas share the
/// work (`SKIP LOCKED`); only each source's newest channel counts.
pub async fn claim_due(db: &PgPool, now: DateTime<Utc>, limit: i64) -> Result<Vec<DueChannel>, sqlx::Error> {
    let rows = sqlx::query(
        "WITH due AS (
             SELECT c.provider, c.id FROM calendar_channels c
              WHERE c.renew_at <= $1
                AND (c.renew_requested_at IS NULL OR c.renew_requested_at <= $1 - make_interval(secs => $2))
                AND NOT EXISTS (SELECT 1 FROM calendar_channels n
                                 WHERE n.source_id = c.source_id AND n.created_at > c.created_at)
              ORDER BY c.renew_at LIMIT $3 FOR UPDATE SKIP LOCKED)
         UPDATE calendar_channels c SET renew_requested_at = $1
           FROM due WHERE c.provider = due.provider AND c.id = due.id
         RETURNING c.source_id, c.tenant, c.id",
    )
    .bind(now)
    .bind(RENEW_ASK_AGAIN_SECS as f64)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| DueChannel { source_id: r.get("source_id"), tenant: r.get("tenant"), channel: r.get("id") })
        .collect())
}

/// A source's channel as the sync job sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    /// Channel or subscription id.
    pub id: String,
    /// `google` or `graph`.
    pub provider: String,
    /// Google's resource id.
    pub resource_id: Option<String>,
    /// When it was made or last renewed.
    pub renewed_at: DateTime<Utc>,
    /// When the provider drops it.
    pub expires_at: DateTime<Utc>,
    /// When to renew it.
    pub renew_at: DateTime<Utc>,
}

/// When a channel valid from `from` to `expires` should be renewed: with a third of its
/// lifetime left.
pub fn renew_time(from: DateTime<Utc>, expires: DateTime<Utc>) -> DateTime<Utc> {
    let lifetime = expires - from;
    expires - lifetime / 3
}

/// The channels of `source_id`, newest first.
pub async fn of_source(db: &PgPool, source_id: &str) -> Result<Vec<Channel>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, provider, resource_id, renewed_at, expires_at, renew_at FROM calendar_channels
          WHERE source_id = $1 ORDER BY created_at DESC, id",
    )
    .bind(source_id)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Channel {
            id: r.get("id"),
            provider: r.get("provider"),
            resource_id: r.get("resource_id"),
            renewed_at: r.get("renewed_at"),
            expires_at: r.get("expires_at"),
            renew_at: r.get("renew_at"),
        })
        .collect())
}

/// What the job writes about a new channel.
#[derive(Debug, Clone)]
pub struct NewChannel<'a> {
    /// Channel or subscription id.
    pub id: &'a str,
    /// `google` or `graph`.
    pub provider: &'a str,
    /// The source.
    pub source_id: &'a str,
    /// The source's tenant (from the stored source).
    pub tenant: &'a str,
    /// The random token (only its hash is stored).
    pub token: &'a str,
    /// Google's resource id.
    pub resource_id: Option<&'a str>,
    /// When the provider drops it.
    pub expires_at: DateTime<Utc>,
}

/// Stores a new channel (the source's live one from now on). False when the provider
/// handed back an id that another source's channel already has: a provider is reached at a
/// URL a tenant chose, so its answer cannot take over another tenant's channel.
pub async fn insert(db: &PgPool, channel: &NewChannel<'_>) -> Result<bool, sqlx::Error> {
    let now = Utc::now();
    let done = sqlx::query(
        "INSERT INTO calendar_channels (id, provider, source_id, tenant, token_sha256, resource_id, created_at, renewed_at, expires_at, renew_at)
         VALUES ($1, $2, $3, $4, $5, $6, clock_timestamp(), $7, $8, $9)
         ON CONFLICT (provider, id) DO UPDATE SET token_sha256 = EXCLUDED.token_sha256, resource_id = EXCLUDED.resource_id,
             renewed_at = EXCLUDED.renewed_at, expires_at = EXCLUDED.expires_at, renew_at = EXCLUDED.renew_at,
             renew_requested_at = NULL
           WHERE calendar_channels.source_id = EXCLUDED.source_id AND calendar_channels.tenant = EXCLUDED.tenant",
    )
    .bind(channel.id)
    .bind(channel.provider)
    .bind(channel.source_id)
    .bind(channel.tenant)
    .bind(token_hash(channel.token))
    .bind(channel.resource_id)
    .bind(now)
    .bind(channel.expires_at)
    .bind(renew_time(now, channel.expires_at))
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records a renewal: the channel now lives until `expires_at`.
pub async fn renewed(db: &PgPool, provider: &str, id: &str, expires_at: DateTime<Utc>) -> Result<(), sqlx::Error> {
    let now = Utc::now();
    sqlx::query(
        "UPDATE calendar_channels SET renewed_at = $3, expires_at = $4, renew_at = $5, renew_requested_at = NULL
          WHERE provider = $1 AND id = $2",
    )
    .bind(provider)
    .bind(id)
    .bind(now)
    .bind(expires_at)
    .bind(renew_time(now, expires_at))
    .execute(db)
    .await?;
    Ok(())
}

/// Forgets a channel (stopped, replaced, or gone at the provider).
pub async fn remove(db: &PgPool, provider: &str, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM calendar_channels WHERE provider = $1 AND id = $2")
        .bind(provider)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// Whether source `source_id` asks for push (`calendar_sources.push`).
pub async fn push_enabled(db: &PgPool, source_id: &str) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query_scalar::<_, bool>("SELECT push FROM calendar_sources WHERE id = $1")
        .bind(source_id)
        .fetch_optional(db)
        .await?
        .unwrap_or(false))
}
