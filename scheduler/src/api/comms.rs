//! `/v1/comms`: a supplier's communication sources (IMAP mailboxes so far), its
//! clients' addresses, and a client's timeline.
//!
//! A source's password is sealed with AES-256-GCM (`FLEET_SECRETS_KEY`) before it is
//! stored and never shown again; a sync is a `comms.sync` job on the `comms` queue.
//! The timeline is paged newest first with an opaque cursor (`next`).

use super::ApiState;
use super::auth::Caller;
use super::error::ApiError;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use fleet_comms::contacts::{normalise_email, normalise_phone};
use fleet_comms::secrets::SecretBox;
use fleet_jobs::catalogue::CommsSync;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::{IntoParams, ToSchema};

/// A source to register: an IMAP mailbox (`host`, `port`, `user`, `password`) or an
/// SMS/calls account of a Twilio-style API (`api_base`, `account_sid`, `password` = the
/// auth token).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SourceRequest {
    /// `imap` or `sms` (in-app messages are not accepted yet).
    kind: String,
    /// A name for people.
    #[serde(default)]
    name: String,
    /// IMAP server host.
    #[serde(default)]
    host: Option<String>,
    /// IMAP server port.
    #[serde(default)]
    port: Option<u16>,
    /// Implicit TLS (IMAP).
    #[serde(default)]
    tls: bool,
    /// IMAP login name.
    #[serde(default)]
    user: Option<String>,
    /// IMAP password, app password or the provider's auth token (stored sealed, never returned).
    password: String,
    /// SMS: the API's base URL, e.g. `https://api.twilio.com`.
    #[serde(default)]
    api_base: Option<String>,
    /// SMS: the account id (`AC…`).
    #[serde(default)]
    account_sid: Option<String>,
    /// Folders to read (default: every selectable folder).
    #[serde(default)]
    folders: Option<Vec<String>>,
    /// ISO 3166 region for phone numbers without a country code (default `GB`).
    #[serde(default)]
    default_region: Option<String>,
}

/// A source and where its sync stands (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SourceView {
    id: String,
    kind: String,
    name: String,
    #[schema(value_type = Object)]
    config: serde_json::Value,
    last_sync_at: Option<DateTime<Utc>>,
    last_ok_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
    /// Per folder: UIDVALIDITY, UIDNEXT, last UID, HIGHESTMODSEQ.
    #[schema(value_type = Object)]
    cursors: serde_json::Value,
    /// Messages that could not be parsed.
    quarantined: i64,
}

fn secrets(state: &ApiState) -> Result<SecretBox, ApiError> {
    state.secrets.clone().ok_or_else(|| {
        let e = fleet_comms::secrets::SecretError::NoKey;
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_configured", format!("sources cannot be stored: {e}"))
    })
}

/// Register a source.
#[utoipa::path(post, path = "/v1/comms/sources", request_body = SourceRequest,
    responses((status = 201, body = SourceView), (status = 401, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn create_source(
    State(state): State<ApiState>,
    caller: Caller,
    Json(req): Json<SourceRequest>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require("enqueue")?;
    let config = match req.kind.as_str() {
        "imap" => {
            let (Some(host), Some(port), Some(user)) = (&req.host, req.port, &req.user) else {
                return Err(ApiError::invalid("an imap source needs host, port and user"));
            };
            if host.is_empty() || user.is_empty() || port == 0 {
                return Err(ApiError::invalid("an imap source needs host, port and user"));
            }
            serde_json::json!({"host": host, "port": port, "tls": req.tls, "user": user, "folders": req.folders})
        }
        "sms" => {
            let (Some(base), Some(account)) = (&req.api_base, &req.account_sid) else {
                return Err(ApiError::invalid("an sms source needs api_base and account_sid"));
            };
            if !(base.starts_with("https://") || base.starts_with("http://")) || account.is_empty() {
                return Err(ApiError::invalid("api_base must be an http(s) URL and account_sid not empty"));
            }
            serde_json::json!({"api_base": base, "account_sid": account})
        }
        _ => return Err(ApiError::invalid("kind must be \"imap\" or \"sms\"")),
    };
    let region = req.default_region.unwrap_or_else(|| "GB".into()).to_ascii_uppercase();
    if region.len() != 2 || normalise_phone("+44 7911 123456", &region).is_none() {
        return Err(ApiError::invalid("default_region must be an ISO 3166 alpha-2 code"));
    }
    let sealer = secrets(&state)?;
    let id = format!("cs_{}", uuid::Uuid::now_v7().simple());
    let sealed = sealer.seal(&id, &req.password).map_err(|e| ApiError::internal("sealing a secret", e))?;
    sqlx::query(
        "INSERT INTO comms_sources (id, tenant, kind, name, config, secret, default_region) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(&caller.tenant)
    .bind(&req.kind)
    .bind(&req.name)
    .bind(&config)
    .bind(sealed)
    .bind(&region)
    .execute(&state.db)
    .await
    .map_err(|e| ApiError::unavailable("creating a source", e))?;
    let view = SourceView {
        id,
        kind: req.kind,
        name: req.name,
        config,
        last_sync_at: None,
        last_ok_at: None,
        last_error: None,
        cursors: serde_json::json!([]),
        quarantined: 0,
    };
    Ok((StatusCode::CREATED, Json(view)))
}

/// List the tenant's sources with their sync state.
#[utoipa::path(get, path = "/v1/comms/sources", responses((status = 200, body = Vec<SourceView>), (status = 401, body = super::error::ErrorBody)))]
pub(crate) async fn list_sources(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<SourceView>>, ApiError> {
    let rows = sqlx::query(
        "SELECT s.id, s.kind, s.name, s.config, s.last_sync_at, s.last_ok_at, s.last_error,
                COALESCE((SELECT json_agg(json_build_object('folder', c.folder, 'uidvalidity', c.uidvalidity,
                          'uidnext', c.uidnext, 'last_uid', c.last_uid, 'highestmodseq', c.highestmodseq) ORDER BY c.folder)
                          FROM comms_cursors c WHERE c.source_id = s.id), '[]'::json)::jsonb AS cursors,
                (SELECT count(*) FROM comms_quarantine q WHERE q.source_id = s.id) AS quarantined
           FROM comms_sources s WHERE s.tenant = $1 ORDER BY s.created_at",
    )
    .bind(&caller.tenant)
    .fetch_all(&state.db)
    .await
    .map_err(|e| ApiError::unavailable("listing sources", e))?;
    Ok(Json(
        rows.into_iter()
            .map(|r| SourceView {
                id: r.get("id"),
                kind: r.get("kind"),
                name: r.get("name"),
                config: r.get("config"),
                last_sync_at: r.get("last_sync_at"),
                last_ok_at: r.get("last_ok_at"),
                last_error: r.get("last_error"),
                cursors: r.get("cursors"),
                quarantined: r.get("quarantined"),
            })
            .collect(),
    ))
}

/// Remove a source: its cursors, its copies, and the entries no other source holds.
#[utoipa::path(delete, path = "/v1/comms/sources/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn delete_source(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require("enqueue")?;
    let mut tx = state.db.begin().await.map_err(|e| ApiError::unavailable("removing a source", e))?;
    let gone = sqlx::query("DELETE FROM comms_sources WHERE id = $1 AND tenant = $2")
        .bind(&id)
        .bind(&caller.tenant)
        .execute(&mut *tx)
        .await
        .map_err(|e| ApiError::unavailable("removing a source", e))?;
    if gone.rows_affected() == 0 {
        return Err(ApiError::not_found(format!("no source {id}")));
    }
    for sql in [
        "DELETE FROM comms_locations WHERE source_id = $1 AND tenant = $2",
        "DELETE FROM comms_quarantine WHERE source_id = $1 AND tenant = $2",
        "DELETE FROM comms_entries e WHERE e.source_id = $1 AND e.tenant = $2
            AND NOT EXISTS (SELECT 1 FROM comms_locations l WHERE l.tenant = e.tenant AND l.entry_id = e.id)",
    ] {
        sqlx::query(sql)
            .bind(&id)
            .bind(&caller.tenant)
            .execute(&mut *tx)
            .await
            .map_err(|e| ApiError::unavailable("removing a source", e))?;
    }
    tx.commit().await.map_err(|e| ApiError::unavailable("removing a source", e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// A queued sync.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SyncView {
    /// The `comms.sync` job.
    job: String,
}

/// Sync a source now (a `comms.sync` job; the same job id while one is pending).
#[utoipa::path(post, path = "/v1/comms/sources/{id}/sync", params(("id" = String, Path)),
    responses((status = 202, body = SyncView), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn sync_source(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let job =
        super::enqueue_source_sync(&state, &caller, "comms_sources", &id, CommsSync { source_id: id.clone() }).await?;
    Ok((StatusCode::ACCEPTED, Json(SyncView { job: job.to_string() })))
}

/// A quarantined message: where it was and why (its raw bytes stay in the store, by hash).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct QuarantinedView {
    folder: String,
    uidvalidity: i64,
    uid: i64,
    #[schema(value_type = Object)]
    reason: serde_json::Value,
    content_hash: String,
    size: i64,
    quarantined_at: DateTime<Utc>,
}

/// The messages of a source that could not be parsed (newest first, at most 500).
#[utoipa::path(get, path = "/v1/comms/sources/{id}/quarantine", params(("id" = String, Path)),
    responses((status = 200, body = Vec<QuarantinedView>), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn source_quarantine(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Vec<QuarantinedView>>, ApiError> {
    let rows = sqlx::query(
        "SELECT q.folder, q.uidvalidity, q.uid, q.reason, q.content_hash, q.size, q.quarantined_at
           FROM comms_quarantine q JOIN comms_sources s ON s.id = q.source_id
          WHERE q.source_id = $1 AND s.tenant = $2 ORDER BY q.quarantined_at DESC LIMIT 500",
    )
    .bind(&id)
    .bind(&caller.tenant)
    .fetch_all(&state.db)
    .await
    .map_err(|e| ApiError::unavailable("reading the quarantine", e))?;
    Ok(Json(
        rows.into_iter()
            .map(|r| QuarantinedView {
                folder: r.get("folder"),
                uidvalidity: r.get("uidvalidity"),
                uid: r.get("uid"),
                reason: r.get("reason"),
                content_hash: r.get("content_hash"),
                size: r.get("size"),
                quarantined_at: r.get("quarantined_at"),
            })
            .collect(),
    ))
}

/// A client's addresses and numbers.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ContactRequest {
    /// The app's client id (`""` for the supplier's own addresses).
    client: String,
    /// Email addresses.
    #[serde(default)]
    emails: Vec<String>,
    /// Phone numbers in any format the region reads.
    #[serde(default)]
    phones: Vec<String>,
    /// Region for numbers without a country code (default `GB`).
    #[serde(default)]
    default_region: Option<String>,
}

/// What was stored.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ContactView {
    client: String,
    emails: Vec<String>,
    /// E.164.
    phones: Vec<String>,
    /// Entries that did not normalise (not stored).
    rejected: Vec<String>,
}

/// Set which addresses and numbers are a client's (matching applies to later syncs).
#[utoipa::path(post, path = "/v1/comms/contacts", request_body = ContactRequest,
    responses((status = 200, body = ContactView), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn put_contact(
    State(state): State<ApiState>,
    caller: Caller,
    Json(req): Json<ContactRequest>,
) -> Result<Json<ContactView>, ApiError> {
    caller.require("enqueue")?;
    let region = req.default_region.unwrap_or_else(|| "GB".into());
    let mut view = ContactView { client: req.client.clone(), emails: vec![], phones: vec![], rejected: vec![] };
    for e in &req.emails {
        match normalise_email(e) {
            Some(n) => view.emails.push(n),
            None => view.rejected.push(e.clone()),
        }
    }
    for p in &req.phones {
        match normalise_phone(p, &region) {
            Some(n) => view.phones.push(n),
            None => view.rejected.push(p.clone()),
        }
    }
    let rows = view.emails.iter().map(|v| ("email", v)).chain(view.phones.iter().map(|v| ("phone", v)));
    for (kind, value) in rows {
        sqlx::query(
            "INSERT INTO comms_contacts (tenant, kind, value, client) VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant, kind, value) DO UPDATE SET client = EXCLUDED.client",
        )
        .bind(&caller.tenant)
        .bind(kind)
        .bind(value)
        .bind(&req.client)
        .execute(&state.db)
        .await
        .map_err(|e| ApiError::unavailable("storing contacts", e))?;
    }
    Ok(Json(view))
}

/// Paging of a timeline.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct TimelineQuery {
    /// Entries per page (1 to 200, default 50).
    limit: Option<i64>,
    /// The `next` of the previous page.
    cursor: Option<String>,
}

/// One page of a timeline, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TimelinePage {
    /// Entries: id, thread, channel, direction, participants, subject, snippet, text,
    /// time and its source, attachments.
    #[schema(value_type = Vec<Object>)]
    entries: Vec<serde_json::Value>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// A client's timeline across sources and channels, newest first.
#[utoipa::path(get, path = "/v1/comms/clients/{client}/timeline", params(("client" = String, Path), TimelineQuery),
    responses((status = 200, body = TimelinePage), (status = 422, body = super::error::ErrorBody)))]
pub(crate) async fn client_timeline(
    State(state): State<ApiState>,
    caller: Caller,
    Path(client): Path<String>,
    Query(q): Query<TimelineQuery>,
) -> Result<Json<TimelinePage>, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 200);
    let (before_time, before_id) = match &q.cursor {
        Some(c) => {
            let (t, id) = c.split_once('~').ok_or_else(|| ApiError::invalid("malformed cursor"))?;
            let t = DateTime::parse_from_rfc3339(t).map_err(|_| ApiError::invalid("malformed cursor"))?;
            (Some(t.with_timezone(&Utc)), id.to_owned())
        }
        None => (None, String::new()),
    };
    let rows = sqlx::query(
        "SELECT id, thread_id, id_collision, occurred_at, doc FROM comms_entries
          WHERE tenant = $1 AND client = $2 AND ($3::timestamptz IS NULL OR (occurred_at, id) < ($3, $4))
          ORDER BY occurred_at DESC, id DESC LIMIT $5",
    )
    .bind(&caller.tenant)
    .bind(&client)
    .bind(before_time)
    .bind(&before_id)
    .bind(limit + 1)
    .fetch_all(&state.db)
    .await
    .map_err(|e| ApiError::unavailable("reading a timeline", e))?;
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
    Ok(Json(TimelinePage { entries, next: if more { next } else { None } }))
}
