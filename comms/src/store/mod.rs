//! The comms domain's one store: every query on the `comms_*` tables.
//!
//! - This file: sources, clients' contacts, quarantine and timeline pages, the one
//!   implementation behind `/v1/comms` and `fleetctl comms`; and the source rows the
//!   `comms.sync` job reads and records its outcome on.
//! - [`timeline`] (with the `jobs` feature): the PostgreSQL timeline ([`PgStore`]), the
//!   [`crate::imap::SyncStore`] that syncs commit to. Its dedup and threading decisions
//!   are [`crate::timeline::decide`], the same rules as the in-memory timeline.
//!
//! A source's password is sealed with AES-256-GCM (`FLEET_SECRETS_KEY`) before it is
//! stored and never read back by the API. Timelines are paged newest first with an
//! opaque cursor (`next`).

#[cfg(feature = "jobs")]
pub mod timeline;

#[cfg(feature = "jobs")]
pub use timeline::PgStore;

use crate::contacts::{ContactBook, normalise_email, normalise_phone};
use chrono::{DateTime, Utc};
use fleet_accounts::secrets::SecretBox;
use fleet_accounts::sources::{SourceTable, StoreError, SyncStatus, check_schedule, delete_row, seal, source_tenant};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row};
use utoipa::{IntoParams, ToSchema};

/// A source to register: an IMAP mailbox (`host`, `port`, `user`, `password`), an
/// SMS/calls account of a Twilio-style API (`api_base`, `account_sid`, `password` = the
/// auth token), or the platform's in-app messages (`in_app`: nothing else).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceRequest {
    /// `imap`, `sms` or `in_app`.
    pub kind: String,
    /// A name for people.
    #[serde(default)]
    pub name: String,
    /// IMAP server host.
    #[serde(default)]
    pub host: Option<String>,
    /// IMAP server port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Implicit TLS (IMAP, usually port 993).
    #[serde(default)]
    pub tls: bool,
    /// STARTTLS on a plain port (IMAP, usually 143); a server that refuses it is an error,
    /// never a fallback to plain text.
    #[serde(default)]
    pub starttls: bool,
    /// IMAP authentication: `login` (password, the default) or `xoauth2` (the password is an
    /// OAuth2 access token, for Gmail and Microsoft 365).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub auth: Option<crate::account::AuthMethod>,
    /// IMAP login name.
    #[serde(default)]
    pub user: Option<String>,
    /// IMAP password, app password or the provider's auth token (stored sealed, never
    /// returned); required for `imap` and `sms`, refused for `in_app`.
    #[serde(default)]
    pub password: Option<String>,
    /// SMS: the API's base URL, e.g. `https://api.twilio.com`.
    #[serde(default)]
    pub api_base: Option<String>,
    /// SMS: the account id (`AC…`).
    #[serde(default)]
    pub account_sid: Option<String>,
    /// Folders to read (default: every selectable folder).
    #[serde(default)]
    pub folders: Option<Vec<String>>,
    /// ISO 3166 region for phone numbers without a country code (default `GB`).
    #[serde(default)]
    pub default_region: Option<String>,
    /// When to sync: a five-field cron expression in UTC (default every 5 minutes, `*/5 * * * *`).
    #[serde(default)]
    pub schedule: Option<String>,
}

/// A source and where its sync stands (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct SourceView {
    /// `cs_…`.
    pub id: String,
    /// The tenant it belongs to.
    pub tenant: String,
    /// `imap`, `sms` or `in_app`.
    pub kind: String,
    /// A name for people.
    pub name: String,
    /// Where it reads from (never a secret).
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
    /// Region for phone numbers without a country code.
    pub default_region: String,
    /// Whether a (sealed) secret is stored.
    pub has_secret: bool,
    /// Schedule and the last sync's outcome.
    #[serde(flatten)]
    pub sync: SyncStatus,
    /// Per folder: UIDVALIDITY, UIDNEXT, last UID, HIGHESTMODSEQ.
    #[schema(value_type = Object)]
    pub cursors: serde_json::Value,
    /// Messages that could not be parsed.
    pub quarantined: i64,
}

fn config_of(req: &SourceRequest) -> Result<serde_json::Value, StoreError> {
    let invalid = |m: &str| Err(StoreError::Invalid(m.to_owned()));
    let no_password = req.password.as_deref().is_none_or(str::is_empty);
    match req.kind.as_str() {
        "imap" => {
            let (Some(host), Some(port), Some(user)) = (&req.host, req.port, &req.user) else {
                return invalid("an imap source needs host, port and user");
            };
            if host.is_empty() || user.is_empty() || port == 0 {
                return invalid("an imap source needs host, port and user");
            }
            if no_password {
                return invalid("an imap source needs a password");
            }
            if req.tls && req.starttls {
                return invalid("tls (implicit TLS) and starttls exclude each other");
            }
            // An extra CA file (`ca_file`) is a path on the workers: operators set it, not the API.
            Ok(serde_json::json!({"host": host, "port": port, "tls": req.tls, "starttls": req.starttls,
                "auth": req.auth.unwrap_or_default(), "user": user, "folders": req.folders}))
        }
        "sms" => {
            let (Some(base), Some(account)) = (&req.api_base, &req.account_sid) else {
                return invalid("an sms source needs api_base and account_sid");
            };
            if !(base.starts_with("https://") || base.starts_with("http://")) || account.is_empty() {
                return invalid("api_base must be an http(s) URL and account_sid not empty");
            }
            if no_password {
                return invalid("an sms source needs a password (the provider's auth token)");
            }
            Ok(serde_json::json!({"api_base": base, "account_sid": account}))
        }
        "in_app" => {
            let extra = req.password.is_some()
                || req.host.is_some()
                || req.port.is_some()
                || req.user.is_some()
                || req.api_base.is_some()
                || req.account_sid.is_some()
                || req.folders.is_some();
            if extra {
                return invalid("an in_app source takes no connection settings and no password");
            }
            Ok(serde_json::json!({}))
        }
        _ => invalid("kind must be \"imap\", \"sms\" or \"in_app\""),
    }
}

/// Registers a source for `tenant`: checks it, seals its secret with `secrets`.
pub async fn create(
    db: &PgPool,
    secrets: Option<&SecretBox>,
    tenant: &str,
    req: SourceRequest,
) -> Result<SourceView, StoreError> {
    let config = config_of(&req)?;
    let region = req.default_region.clone().unwrap_or_else(|| "GB".into()).to_ascii_uppercase();
    if region.len() != 2 || normalise_phone("+44 7911 123456", &region).is_none() {
        return Err(StoreError::Invalid("default_region must be an ISO 3166 alpha-2 code".into()));
    }
    let schedule = check_schedule(SourceTable::Comms, req.schedule.as_deref())?;
    let id = format!("cs_{}", uuid::Uuid::now_v7().simple());
    let sealed = req.password.as_deref().map(|p| seal(secrets, &id, p)).transpose()?;
    sqlx::query(
        "INSERT INTO comms_sources (id, tenant, kind, name, config, secret, default_region, schedule)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&id)
    .bind(tenant)
    .bind(&req.kind)
    .bind(&req.name)
    .bind(&config)
    .bind(sealed)
    .bind(&region)
    .bind(&schedule)
    .execute(db)
    .await?;
    get(db, Some(tenant), &id).await
}

async fn select(db: &PgPool, tenant: Option<&str>, id: Option<&str>) -> Result<Vec<SourceView>, StoreError> {
    select_page(db, tenant, id, None, 0).await
}

async fn select_page(
    db: &PgPool,
    tenant: Option<&str>,
    id: Option<&str>,
    limit: Option<i64>,
    offset: i64,
) -> Result<Vec<SourceView>, StoreError> {
    let sql = format!(
        "SELECT s.id, s.tenant, s.kind, s.name, s.config, s.default_region, s.secret IS NOT NULL AS has_secret, {},
                COALESCE((SELECT json_agg(json_build_object('folder', c.folder, 'uidvalidity', c.uidvalidity,
                          'uidnext', c.uidnext, 'last_uid', c.last_uid, 'highestmodseq', c.highestmodseq,
                          'updated_at', c.updated_at) ORDER BY c.folder)
                          FROM comms_cursors c WHERE c.source_id = s.id), '[]'::json)::jsonb AS cursors,
                (SELECT count(*) FROM comms_quarantine q WHERE q.source_id = s.id) AS quarantined
           FROM comms_sources s
          WHERE ($1::text IS NULL OR s.tenant = $1) AND ($2::text IS NULL OR s.id = $2)
          ORDER BY s.created_at, s.id LIMIT $3 OFFSET $4",
        SyncStatus::COLUMNS
    );
    let rows =
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant).bind(id).bind(limit).bind(offset).fetch_all(db).await?;
    Ok(rows
        .into_iter()
        .map(|r| SourceView {
            id: r.get("id"),
            tenant: r.get("tenant"),
            kind: r.get("kind"),
            name: r.get("name"),
            config: r.get("config"),
            default_region: r.get("default_region"),
            has_secret: r.get("has_secret"),
            sync: SyncStatus::from_row(&r),
            cursors: r.get("cursors"),
            quarantined: r.get("quarantined"),
        })
        .collect())
}

/// The sources (of `tenant`, when given) by registration, with their sync state.
pub async fn list(db: &PgPool, tenant: Option<&str>) -> Result<Vec<SourceView>, StoreError> {
    select(db, tenant, None).await
}

/// A page of the tenant's sources by registration, with their sync state.
pub async fn list_page(
    db: &PgPool,
    tenant: &str,
    page: &fleet_accounts::sources::ListPage,
) -> Result<Vec<SourceView>, StoreError> {
    let (limit, offset) = page.bounds()?;
    select_page(db, Some(tenant), None, Some(limit), offset).await
}

/// One source with its sync state.
pub async fn get(db: &PgPool, tenant: Option<&str>, id: &str) -> Result<SourceView, StoreError> {
    select(db, tenant, Some(id)).await?.pop().ok_or_else(|| StoreError::NotFound(format!("no source {id}")))
}

/// Removes a source: its cursors, its copies, and the entries no other source holds.
pub async fn delete(db: &PgPool, tenant: Option<&str>, id: &str) -> Result<(), StoreError> {
    let mut tx = db.begin().await?;
    let owner = delete_row(&mut tx, SourceTable::Comms, tenant, id).await?;
    for sql in [
        "DELETE FROM comms_locations WHERE source_id = $1 AND tenant = $2",
        "DELETE FROM comms_quarantine WHERE source_id = $1 AND tenant = $2",
        "DELETE FROM comms_entries e WHERE e.source_id = $1 AND e.tenant = $2
            AND NOT EXISTS (SELECT 1 FROM comms_locations l WHERE l.tenant = e.tenant AND l.entry_id = e.id)",
    ] {
        sqlx::query(sql).bind(id).bind(&owner).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A quarantined message: where it was and why (its raw bytes stay in the store, by hash).
#[derive(Debug, Serialize, ToSchema)]
pub struct QuarantinedView {
    /// The folder.
    pub folder: String,
    /// The folder's UIDVALIDITY then.
    pub uidvalidity: i64,
    /// The message's UID.
    pub uid: i64,
    /// Why (`reason` and details).
    #[schema(value_type = Object)]
    pub reason: serde_json::Value,
    /// SHA-256 of the raw message (`comms_raw`).
    pub content_hash: String,
    /// Bytes.
    pub size: i64,
    /// When.
    pub quarantined_at: DateTime<Utc>,
}

/// The messages of a source that could not be parsed (newest first, at most 500).
pub async fn quarantine(db: &PgPool, tenant: Option<&str>, id: &str) -> Result<Vec<QuarantinedView>, StoreError> {
    let owner = source_tenant(db, SourceTable::Comms, tenant, id).await?;
    let rows = sqlx::query(
        "SELECT folder, uidvalidity, uid, reason, content_hash, size, quarantined_at
           FROM comms_quarantine WHERE source_id = $1 AND tenant = $2 ORDER BY quarantined_at DESC LIMIT 500",
    )
    .bind(id)
    .bind(&owner)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| QuarantinedView {
            folder: r.get("folder"),
            uidvalidity: r.get("uidvalidity"),
            uid: r.get("uid"),
            reason: r.get("reason"),
            content_hash: r.get("content_hash"),
            size: r.get("size"),
            quarantined_at: r.get("quarantined_at"),
        })
        .collect())
}

/// A client's addresses and numbers.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactRequest {
    /// The app's client id (`""` for the supplier's own addresses).
    pub client: String,
    /// Email addresses.
    #[serde(default)]
    pub emails: Vec<String>,
    /// Phone numbers in any format the region reads.
    #[serde(default)]
    pub phones: Vec<String>,
    /// Region for numbers without a country code (default `GB`).
    #[serde(default)]
    pub default_region: Option<String>,
}

/// What was stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContactView {
    /// The client.
    pub client: String,
    /// Lower-cased.
    pub emails: Vec<String>,
    /// E.164.
    pub phones: Vec<String>,
    /// Entries that did not normalise (not stored).
    pub rejected: Vec<String>,
}

/// Stores which addresses and numbers are a client's (matching applies to later syncs).
pub async fn put_contact(db: &PgPool, tenant: &str, req: ContactRequest) -> Result<ContactView, StoreError> {
    let region = req.default_region.unwrap_or_else(|| "GB".into());
    let mut view = ContactView { client: req.client, emails: vec![], phones: vec![], rejected: vec![] };
    for e in req.emails {
        match normalise_email(&e) {
            Some(n) => view.emails.push(n),
            None => view.rejected.push(e),
        }
    }
    for p in req.phones {
        match normalise_phone(&p, &region) {
            Some(n) => view.phones.push(n),
            None => view.rejected.push(p),
        }
    }
    let rows = view.emails.iter().map(|v| ("email", v)).chain(view.phones.iter().map(|v| ("phone", v)));
    for (kind, value) in rows {
        sqlx::query(
            "INSERT INTO comms_contacts (tenant, kind, value, client) VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant, kind, value) DO UPDATE SET client = EXCLUDED.client",
        )
        .bind(tenant)
        .bind(kind)
        .bind(value)
        .bind(&view.client)
        .execute(db)
        .await?;
    }
    Ok(view)
}

/// Paging of a timeline.
#[derive(Debug, Default, Deserialize, IntoParams)]
pub struct PageQuery {
    /// Entries per page (1 to 200, default 50).
    pub limit: Option<i64>,
    /// The `next` of the previous page.
    pub cursor: Option<String>,
}

/// One page of a timeline, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct TimelinePage {
    /// Entries: id, thread, channel, direction, participants, subject, snippet, text,
    /// time and its source, attachments.
    #[schema(value_type = Vec<Object>)]
    pub entries: Vec<serde_json::Value>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Whose entries a page holds.
#[derive(Debug, Clone, Copy)]
pub enum Entries<'a> {
    /// One client's, across sources and channels.
    Client(&'a str),
    /// Those one source brought in (an entry another source also holds stays under the
    /// source that stored it first).
    Source(&'a str),
}

/// One page of entries of `tenant`, newest first.
async fn page(db: &PgPool, tenant: &str, of: Entries<'_>, q: &PageQuery) -> Result<TimelinePage, StoreError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 200);
    let (before_time, before_id) = match &q.cursor {
        Some(c) => {
            let malformed = || StoreError::Invalid("malformed cursor".into());
            let (t, id) = c.split_once('~').ok_or_else(malformed)?;
            let t = DateTime::parse_from_rfc3339(t).map_err(|_| malformed())?;
            (Some(t.with_timezone(&Utc)), id.to_owned())
        }
        None => (None, String::new()),
    };
    // Each filter has its own index: (tenant, client, occurred_at, id) and (source_id, occurred_at).
    let (column, value) = match of {
        Entries::Client(c) => ("client", c),
        Entries::Source(s) => ("source_id", s),
    };
    let sql = format!(
        "SELECT id, thread_id, id_collision, occurred_at, doc FROM comms_entries
          WHERE tenant = $1 AND {column} = $2 AND ($3::timestamptz IS NULL OR (occurred_at, id) < ($3, $4))
          ORDER BY occurred_at DESC, id DESC LIMIT $5"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(value)
        .bind(before_time)
        .bind(&before_id)
        .bind(limit + 1)
        .fetch_all(db)
        .await?;
    let more = rows.len() as i64 > limit;
    let mut entries = Vec::new();
    let mut next = None;
    for r in rows.into_iter().take(limit as usize) {
        let id: String = r.get("id");
        let at: DateTime<Utc> = r.get("occurred_at");
        let mut doc: serde_json::Value = r.get("doc");
        if let Some(o) = doc.as_object_mut() {
            o.insert("id".into(), id.clone().into());
            o.insert("thread_id".into(), r.get::<String, _>("thread_id").into());
            o.insert("id_collision".into(), r.get::<bool, _>("id_collision").into());
            o.remove("body_fingerprint");
        }
        entries.push(doc);
        next = Some(format!("{}~{id}", at.to_rfc3339()));
    }
    Ok(TimelinePage { entries, next: if more { next } else { None } })
}

/// A page of a client's timeline across sources and channels.
pub async fn client_timeline(
    db: &PgPool,
    tenant: &str,
    client: &str,
    q: &PageQuery,
) -> Result<TimelinePage, StoreError> {
    page(db, tenant, Entries::Client(client), q).await
}

/// A page of the entries source `id` brought in (not found: no such source for `tenant`).
pub async fn source_entries(
    db: &PgPool,
    tenant: Option<&str>,
    id: &str,
    q: &PageQuery,
) -> Result<TimelinePage, StoreError> {
    let owner = source_tenant(db, SourceTable::Comms, tenant, id).await?;
    page(db, &owner, Entries::Source(id), q).await
}

/// A source as the `comms.sync` job reads it: everything it needs to sync, the secret
/// still sealed.
#[derive(Debug, Clone)]
pub struct SourceToSync {
    /// The tenant it belongs to.
    pub tenant: String,
    /// `imap`, `sms` or `in_app`.
    pub kind: String,
    /// Where it reads from (never a secret).
    pub config: serde_json::Value,
    /// The sealed password, token or OAuth credentials, if any.
    pub secret: Option<String>,
    /// Region for phone numbers without a country code.
    pub default_region: String,
}

/// Source `id` for a sync: of `tenant` when given (another tenant's source is `None`,
/// like a missing one); without a tenant, by id alone (operators' jobs).
pub async fn source_to_sync(db: &PgPool, tenant: Option<&str>, id: &str) -> Result<Option<SourceToSync>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT tenant, kind, config, secret, default_region FROM comms_sources \
         WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)",
    )
    .bind(id)
    .bind(tenant)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| SourceToSync {
        tenant: r.get(0),
        kind: r.get(1),
        config: r.get(2),
        secret: r.get(3),
        default_region: r.get(4),
    }))
}

/// Records a sync's outcome on source `id`: its report, or its error (the last report is
/// kept when a sync fails).
pub async fn record_sync(db: &PgPool, id: &str, outcome: Result<serde_json::Value, String>) -> Result<(), sqlx::Error> {
    let (report, error) = match outcome {
        Ok(r) => (Some(r), None),
        Err(e) => (None, Some(e)),
    };
    sqlx::query(
        "UPDATE comms_sources SET last_sync_at = now(),
                last_ok_at = CASE WHEN $3::text IS NULL THEN now() ELSE last_ok_at END,
                last_report = COALESCE($2, last_report), last_error = $3
          WHERE id = $1",
    )
    .bind(id)
    .bind(report)
    .bind(error)
    .execute(db)
    .await?;
    Ok(())
}

/// Replaces source `id`'s sealed secret (refreshed OAuth credentials).
pub async fn replace_secret(db: &PgPool, id: &str, sealed: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE comms_sources SET secret = $2 WHERE id = $1").bind(id).bind(sealed).execute(db).await?;
    Ok(())
}

/// The supplier's clients and own addresses (`client` empty: the supplier's own), read
/// with `region` for numbers without a country code.
pub async fn contact_book(db: &PgPool, tenant: &str, region: &str) -> Result<ContactBook, sqlx::Error> {
    let rows = sqlx::query("SELECT kind, value, client FROM comms_contacts WHERE tenant = $1")
        .bind(tenant)
        .fetch_all(db)
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
