//! The webhook tables in PostgreSQL (`webhook_endpoints`, `webhook_messages`,
//! `webhook_attempts`, `intake_events`): every query on them, for `/v1/endpoints`, the
//! webhook jobs, `reseal-secrets` and the benchmark. Always built: the scheduler uses it
//! without the `jobs` feature.
//!
//! Every function that serves a tenant (its API calls, its jobs) takes that tenant and
//! reads or writes its rows only: an endpoint or message of another tenant is "not
//! found", exactly like a missing one. The few that walk every tenant's rows say so
//! (sealing and re-sealing secrets, which operators run).
//!
//! Endpoint secrets are stored sealed ([`fleet_accounts::secrets`]), bound to tenant,
//! table and endpoint id ([`endpoint_aad`]); endpoints from before sealing may still hold
//! plaintext ones until the scheduler or `reseal-secrets` seals them.

use chrono::{DateTime, Utc};
use fleet_accounts::secrets::{SecretBox, row_aad};
use fleet_accounts::sources::{StoreError, seal};
use sqlx::{PgExecutor, PgPool};

/// Most endpoints one tenant may have (every event fans out to each subscribed one, so
/// this also bounds the deliveries one publish can cause).
pub const MAX_ENDPOINTS_PER_TENANT: i64 = 100;
/// Most event types one endpoint subscribes to.
pub const MAX_EVENT_TYPES: usize = 50;
/// Most endpoints one listing returns (more than a tenant may have).
const MAX_LISTED: i64 = 1000;

/// The associated data an endpoint's secrets are sealed with: the tenant, the table and
/// the endpoint id, so a sealed secret copied to another row or tenant does not open.
pub fn endpoint_aad(tenant: &str, id: &str) -> String {
    row_aad(tenant, "webhook_endpoints", id)
}

/// An endpoint as its tenant sees it (never its secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `ep_…`.
    pub id: String,
    /// Where deliveries are POSTed, whole (redact it before showing it).
    pub url: String,
    /// Event types it receives; empty means all.
    pub event_types: Vec<String>,
    /// False once disabled (a 410 Gone from it).
    pub enabled: bool,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// When it was last disabled (kept after it is re-enabled).
    pub disabled_at: Option<DateTime<Utc>>,
}

/// Subscribes an endpoint for `tenant` and returns its new id. Checks, in this order:
/// at most [`MAX_EVENT_TYPES`] event types, fewer than [`MAX_ENDPOINTS_PER_TENANT`]
/// endpoints already, event types of 1 to 200 characters; then seals `secret` (a
/// `whsec_` secret, already checked by the caller) with `secrets` ([`StoreError::NoKey`]
/// without a key).
pub async fn create_endpoint(
    db: &PgPool,
    secrets: Option<&SecretBox>,
    tenant: &str,
    url: &str,
    event_types: &[String],
    secret: &str,
) -> Result<String, StoreError> {
    if event_types.len() > MAX_EVENT_TYPES {
        return Err(StoreError::Invalid(format!("an endpoint subscribes to at most {MAX_EVENT_TYPES} event types")));
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_endpoints WHERE tenant = $1")
        .bind(tenant)
        .fetch_one(db)
        .await?;
    if count >= MAX_ENDPOINTS_PER_TENANT {
        return Err(StoreError::Invalid(format!(
            "a tenant has at most {MAX_ENDPOINTS_PER_TENANT} endpoints; delete one first"
        )));
    }
    if event_types.iter().any(|t| t.is_empty() || t.len() > 200) {
        return Err(StoreError::Invalid("event types must be 1 to 200 characters".into()));
    }
    let id = format!("ep_{}", uuid::Uuid::now_v7().simple());
    let sealed = seal(secrets, &endpoint_aad(tenant, &id), secret)?;
    insert_endpoint(db, &id, tenant, url, &[sealed], event_types).await?;
    Ok(id)
}

/// Writes endpoint `id` of `tenant` as given, with no checks: `stored_secrets` go in as
/// they are (sealed with [`endpoint_aad`], or plaintext as endpoints from before sealing
/// held them). [`create_endpoint`] is the way in for tenants; this is for it and for
/// the benchmark's fixed endpoint.
pub async fn insert_endpoint<'e>(
    db: impl PgExecutor<'e>,
    id: &str,
    tenant: &str,
    url: &str,
    stored_secrets: &[String],
    event_types: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO webhook_endpoints (id, tenant, url, secrets, event_types) VALUES ($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(tenant)
        .bind(url)
        .bind(stored_secrets)
        .bind(event_types)
        .execute(db)
        .await?;
    Ok(())
}

/// id, url, event types, enabled, disabled reason, disabled at.
type EndpointRow = (String, String, Vec<String>, bool, Option<String>, Option<DateTime<Utc>>);

/// The endpoints of `tenant`, oldest first.
pub async fn list_endpoints(db: &PgPool, tenant: &str) -> Result<Vec<Endpoint>, StoreError> {
    let rows: Vec<EndpointRow> = sqlx::query_as(
        "SELECT id, url, event_types, enabled, disabled_reason, disabled_at FROM webhook_endpoints WHERE tenant = $1 ORDER BY created_at LIMIT $2",
    )
    .bind(tenant)
    .bind(MAX_LISTED)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, url, event_types, enabled, disabled_reason, disabled_at)| Endpoint {
            id,
            url,
            event_types,
            enabled,
            disabled_reason,
            disabled_at,
        })
        .collect())
}

/// Removes endpoint `id` of `tenant` (its pending deliveries then give up: they find no
/// endpoint); not found if it is not the tenant's.
pub async fn delete_endpoint(db: &PgPool, tenant: &str, id: &str) -> Result<(), StoreError> {
    let r = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1 AND tenant = $2")
        .bind(id)
        .bind(tenant)
        .execute(db)
        .await?;
    if r.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("no endpoint {id}")));
    }
    Ok(())
}

/// Makes `secret` (a `whsec_` secret, already checked) the signing secret of endpoint
/// `id` of `tenant`, sealed with `secrets` ([`StoreError::NoKey`] without a key, checked
/// before the endpoint is looked up). The current secret keeps signing beside it for
/// `grace_secs`; one replaced earlier stops. Returns until when the replaced one signs;
/// not found if the endpoint is not the tenant's.
pub async fn rotate_secret(
    db: &PgPool,
    secrets: Option<&SecretBox>,
    tenant: &str,
    id: &str,
    secret: &str,
    grace_secs: u32,
) -> Result<DateTime<Utc>, StoreError> {
    let sealed = seal(secrets, &endpoint_aad(tenant, id), secret)?;
    let until: Option<DateTime<Utc>> = sqlx::query_scalar(
        "UPDATE webhook_endpoints SET secrets = ARRAY[$3, secrets[1]], \
         previous_secrets_until = now() + make_interval(secs => $4), updated_at = now() \
         WHERE id = $1 AND tenant = $2 RETURNING previous_secrets_until",
    )
    .bind(id)
    .bind(tenant)
    .bind(&sealed)
    .bind(f64::from(grace_secs))
    .fetch_optional(db)
    .await?;
    until.ok_or_else(|| StoreError::NotFound(format!("no endpoint {id}")))
}

/// What a delivery needs of its endpoint.
#[derive(Debug, Clone)]
pub struct DeliveryEndpoint {
    /// Where to POST.
    pub url: String,
    /// The secrets that sign now, as stored (sealed or plaintext): the current one first,
    /// the replaced one only during its grace period.
    pub secrets: Vec<String>,
    /// False once disabled.
    pub enabled: bool,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
}

/// Endpoint `id` of `tenant` as a delivery needs it, or `None` (also when it is another
/// tenant's).
pub async fn delivery_endpoint(db: &PgPool, tenant: &str, id: &str) -> Result<Option<DeliveryEndpoint>, sqlx::Error> {
    // After a rotation's grace period only the current secret (the first) signs.
    let row: Option<(String, Vec<String>, bool, Option<String>)> = sqlx::query_as(
        "SELECT url, CASE WHEN previous_secrets_until < now() THEN secrets[1:1] ELSE secrets END, enabled, disabled_reason \
         FROM webhook_endpoints WHERE id = $1 AND tenant = $2",
    )
    .bind(id)
    .bind(tenant)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(url, secrets, enabled, disabled_reason)| DeliveryEndpoint { url, secrets, enabled, disabled_reason }))
}

/// Disables endpoint `id` of `tenant` because it answered 410 Gone: nothing more is sent
/// to it until it is re-enabled ([`enable_endpoint`]). `disabled_at` is set only when it
/// goes from enabled to disabled: a second 410 from a delivery already in flight keeps
/// the first time, so the held messages start where the endpoint stopped receiving.
pub async fn disable_gone(db: &PgPool, tenant: &str, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_endpoints SET enabled = FALSE, disabled_reason = '410 Gone from the endpoint', \
         disabled_at = CASE WHEN enabled THEN now() ELSE disabled_at END, updated_at = now() \
         WHERE id = $1 AND tenant = $2",
    )
    .bind(id)
    .bind(tenant)
    .execute(db)
    .await?;
    Ok(())
}

/// An endpoint just re-enabled by [`enable_endpoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enabled {
    /// When it was created: nothing published before was ever meant for it.
    pub created_at: DateTime<Utc>,
    /// When it was last disabled (kept after it is re-enabled); `None` if it never was.
    pub disabled_at: Option<DateTime<Utc>>,
}

/// Re-enables endpoint `id` of `tenant` (deliveries go to it again from now on, and
/// publishing includes it); not found if it is not the tenant's. Enabling an enabled
/// endpoint changes nothing. `disabled_at` is kept: it is where the held messages start.
pub async fn enable_endpoint(db: &PgPool, tenant: &str, id: &str) -> Result<Enabled, StoreError> {
    let row: Option<(DateTime<Utc>, Option<DateTime<Utc>>)> = sqlx::query_as(
        "UPDATE webhook_endpoints SET enabled = TRUE, disabled_reason = NULL, \
         updated_at = CASE WHEN enabled THEN updated_at ELSE now() END \
         WHERE id = $1 AND tenant = $2 RETURNING created_at, disabled_at",
    )
    .bind(id)
    .bind(tenant)
    .fetch_optional(db)
    .await?;
    let (created_at, disabled_at) = row.ok_or_else(|| StoreError::NotFound(format!("no endpoint {id}")))?;
    Ok(Enabled { created_at, disabled_at })
}

/// A message endpoint `id` did not get while it was disabled (see [`held_messages`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldMessage {
    /// The message.
    pub message_id: String,
    /// When it was published.
    pub created_at: DateTime<Utc>,
    /// The attempt that ended its delivery to the endpoint (a 410 Gone, or skipped
    /// because the endpoint was disabled); `None` when it was never delivered to it
    /// (published while the endpoint was disabled).
    pub ended_by: Option<i64>,
}

/// The messages of `tenant` that endpoint `id` did not get since `since`, oldest first,
/// at most `limit`:
///
/// * messages published at or after `since` (and after the endpoint was created) that
///   match its event types and were never attempted to it: publishing skipped it while
///   it was disabled;
/// * messages whose last attempt to it, at or after `since`, ended with `gone` (its 410)
///   or `skipped` (the endpoint was disabled when the delivery ran).
///
/// Delivered messages are not held, nor are those whose delivery is under way or ended
/// otherwise (failed, refused: those are dead letters, replayed from there). Nothing for
/// an endpoint of another tenant.
pub async fn held_messages(
    db: &PgPool,
    tenant: &str,
    id: &str,
    since: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<HeldMessage>, sqlx::Error> {
    let rows: Vec<(String, DateTime<Utc>, Option<i64>)> = sqlx::query_as(
        "WITH ep AS (SELECT event_types, created_at FROM webhook_endpoints WHERE id = $1 AND tenant = $2), \
         candidates AS ( \
           SELECT m.id, m.created_at FROM webhook_messages m, ep \
           WHERE m.tenant = $2 AND m.created_at >= greatest($3, ep.created_at) \
             AND (cardinality(ep.event_types) = 0 OR m.event_type = ANY(ep.event_types)) \
           UNION \
           SELECT m.id, m.created_at FROM webhook_attempts a \
           JOIN webhook_messages m ON m.id = a.message_id AND m.tenant = $2 \
           WHERE a.endpoint_id = $1 AND a.at >= $3 AND a.outcome IN ('gone', 'skipped') AND EXISTS (SELECT 1 FROM ep)) \
         SELECT c.id, c.created_at, last.id FROM candidates c \
         LEFT JOIN LATERAL (SELECT a.id, a.outcome, a.at FROM webhook_attempts a \
           WHERE a.message_id = c.id AND a.endpoint_id = $1 ORDER BY a.id DESC LIMIT 1) last ON TRUE \
         WHERE last.id IS NULL OR (last.outcome IN ('gone', 'skipped') AND last.at >= $3) \
         ORDER BY c.created_at, c.id LIMIT $4",
    )
    .bind(id)
    .bind(tenant)
    .bind(since)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(message_id, created_at, ended_by)| HeldMessage { message_id, created_at, ended_by })
        .collect())
}

/// The enabled endpoints of `tenant` subscribed to `event_type` (or to every event).
pub async fn subscribed_endpoints(db: &PgPool, tenant: &str, event_type: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM webhook_endpoints WHERE tenant = $1 AND enabled AND (cardinality(event_types) = 0 OR $2 = ANY(event_types))",
    )
    .bind(tenant)
    .bind(event_type)
    .fetch_all(db)
    .await
}

/// Records event message `id` of `tenant` unless it is there already, and returns the
/// tenant that owns id `id`: `tenant` when it was recorded now or by an earlier attempt
/// of the same publish, another one when that id was already taken by it.
pub async fn record_message<'e>(
    db: impl PgExecutor<'e>,
    id: &str,
    tenant: &str,
    event_type: &str,
    payload: &str,
) -> Result<String, sqlx::Error> {
    sqlx::query_scalar(
        "WITH ins AS (INSERT INTO webhook_messages (id, tenant, event_type, payload) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (id) DO NOTHING RETURNING tenant) \
         SELECT tenant FROM ins UNION ALL SELECT tenant FROM webhook_messages WHERE id = $1 LIMIT 1",
    )
    .bind(id)
    .bind(tenant)
    .bind(event_type)
    .bind(payload)
    .fetch_one(db)
    .await
}

/// The payload of message `id` of `tenant` (the exact text received), or `None` (also
/// when it is another tenant's).
pub async fn message_payload(db: &PgPool, tenant: &str, id: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT payload FROM webhook_messages WHERE id = $1 AND tenant = $2")
        .bind(id)
        .bind(tenant)
        .fetch_optional(db)
        .await
}

/// One delivery attempt, as `webhook_attempts` keeps it.
#[derive(Debug, Clone)]
pub struct Attempt<'a> {
    /// The message delivered.
    pub message_id: &'a str,
    /// The endpoint it went to.
    pub endpoint_id: &'a str,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// `delivered`, `failed`, `refused`, `throttled`, `gone` or `skipped`.
    pub outcome: &'a str,
    /// The HTTP status, if one came back.
    pub status: Option<u16>,
    /// How long it took.
    pub duration_ms: u32,
    /// The start of the response body.
    pub response: Option<&'a str>,
    /// What went wrong (URLs redacted).
    pub error: Option<&'a str>,
}

/// Writes one delivery attempt.
pub async fn log_attempt(db: &PgPool, a: &Attempt<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO webhook_attempts (message_id, endpoint_id, attempt, outcome, status, duration_ms, response, error)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(a.message_id)
    .bind(a.endpoint_id)
    .bind(a.attempt as i32)
    .bind(a.outcome)
    .bind(a.status.map(i32::from))
    .bind(a.duration_ms as i32)
    .bind(a.response)
    .bind(a.error)
    .execute(db)
    .await?;
    Ok(())
}

/// Records a verified incoming call of `provider`, once per (provider, id): a second
/// one with the same id changes nothing.
pub async fn record_intake(
    db: &PgPool,
    provider: &str,
    id: &str,
    body: &str,
    received_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO intake_events (provider, id, body, received_at) VALUES ($1, $2, $3, $4) ON CONFLICT (provider, id) DO NOTHING",
    )
    .bind(provider)
    .bind(id)
    .bind(body)
    .bind(received_at)
    .execute(db)
    .await?;
    Ok(())
}

/// An endpoint's stored secrets, for sealing and re-sealing them.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredSecrets {
    /// The endpoint id.
    pub id: String,
    /// Its tenant (part of the secrets' associated data).
    pub tenant: String,
    /// Its secrets as stored: sealed (`v1:`/`v2:`) or plaintext.
    pub secrets: Vec<String>,
}

/// A page of endpoints of every tenant, in id order after `after`, with their stored
/// secrets; with `plaintext_only`, only those holding a secret still in plaintext.
/// For operators' sealing and re-sealing.
pub async fn endpoint_secrets_page(
    db: &PgPool,
    after: &str,
    plaintext_only: bool,
    limit: i64,
) -> Result<Vec<StoredSecrets>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, tenant, secrets FROM webhook_endpoints WHERE id > $1 \
         AND (NOT $2 OR EXISTS (SELECT 1 FROM unnest(secrets) s WHERE s NOT LIKE 'v1:%' AND s NOT LIKE 'v2:%')) \
         ORDER BY id LIMIT $3",
    )
    .bind(after)
    .bind(plaintext_only)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Replaces the stored secrets of endpoint `id` by `new` if they are still `old`
/// (compare-and-set: a rotation meanwhile wins); whether they were replaced.
pub async fn replace_secrets(db: &PgPool, id: &str, old: &[String], new: &[String]) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("UPDATE webhook_endpoints SET secrets = $3 WHERE id = $1 AND secrets = $2")
        .bind(id)
        .bind(old)
        .bind(new)
        .execute(db)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// How many endpoints, of every tenant, still hold a secret in plaintext.
pub async fn count_plaintext_endpoints(db: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM webhook_endpoints WHERE EXISTS \
         (SELECT 1 FROM unnest(secrets) s WHERE s NOT LIKE 'v1:%' AND s NOT LIKE 'v2:%')",
    )
    .fetch_one(db)
    .await
}
