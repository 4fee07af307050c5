//! Every query on the notification tables (`notify_recipients`,
//! `notify_push_subscriptions`, `notify_templates`, `notifications`, `notify_sends`), for
//! the API, `fleetctl` and the `notify.send` handler. Every function takes the tenant
//! and names it in its `WHERE`: one tenant can never read, change or notify another's
//! recipients, templates or notifications. `None` as the tenant is Fleet's own
//! (operators through `fleetctl`, a job without a tenant).

use crate::quiet::{QuietHours, zone};
use crate::template::{self, Variant};
use chrono::{DateTime, Utc};
pub use fleet_accounts::sources::StoreError;
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// The channels a notification can go out on.
pub const CHANNELS: [&str; 4] = ["email", "sms", "push", "in_app"];
/// Largest `data` of one notification (JSON bytes).
pub const MAX_DATA: usize = 64 * 1024;

/// A recipient's channels, preferences and quiet hours (`PUT` replaces them all).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecipientRequest {
    /// Email address.
    #[serde(default)]
    pub email: Option<String>,
    /// Phone number in E.164 (`+447911123456`), for SMS.
    #[serde(default)]
    pub phone: Option<String>,
    /// The platform's user id, for in-app notifications on the tenant's live stream.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Locale tag for templates (`en`, `fr-CA`); default `en`.
    #[serde(default)]
    pub locale: Option<String>,
    /// IANA time zone of the quiet hours (`Europe/Paris`); default `UTC`.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Daily quiet hours in the recipient's zone; non-urgent sends wait until they end.
    #[serde(default)]
    pub quiet_hours: Option<QuietHoursView>,
    /// Channels turned off per category: `{"marketing": {"email": false, "sms": false}}`.
    #[serde(default)]
    pub preferences: BTreeMap<String, BTreeMap<String, bool>>,
}

/// Quiet hours as local times of day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuietHoursView {
    /// Start, `HH:MM` (e.g. `22:00`).
    pub start: String,
    /// End, `HH:MM` (e.g. `07:00`); before `start` it wraps past midnight.
    pub end: String,
}

/// A recipient as stored.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RecipientView {
    /// Its id (the tenant's own).
    pub id: String,
    /// Email address.
    pub email: Option<String>,
    /// Phone (E.164).
    pub phone: Option<String>,
    /// In-app user id.
    pub user_id: Option<String>,
    /// Locale.
    pub locale: String,
    /// Time zone.
    pub time_zone: String,
    /// Quiet hours.
    pub quiet_hours: Option<QuietHoursView>,
    /// Channels turned off per category.
    pub preferences: BTreeMap<String, BTreeMap<String, bool>>,
    /// Web Push subscriptions (their endpoints).
    pub push_subscriptions: Vec<String>,
}

/// A template: variants per locale, one of them the default.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateRequest {
    /// The locale used when the recipient's (and its language's) is missing.
    pub default_locale: String,
    /// The variants by locale tag.
    pub variants: BTreeMap<String, Variant>,
}

/// A template as stored.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TemplateView {
    /// Name.
    pub name: String,
    /// Default locale.
    pub default_locale: String,
    /// Variants by locale.
    pub variants: BTreeMap<String, Variant>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A notification to send.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotificationRequest {
    /// The recipient's id.
    pub recipient: String,
    /// The template's name.
    pub template: String,
    /// Category (`booking`, `payment`, `marketing`…): the key of the recipient's preferences.
    pub category: String,
    /// Urgent: sent through quiet hours (preferences still apply).
    #[serde(default)]
    pub urgent: bool,
    /// The template's data (a JSON object).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    /// The event's own key: a second notification with the same key (a retried event)
    /// returns the first and sends nothing.
    #[serde(default)]
    pub dedup_key: Option<String>,
    /// Channels to use (default: every channel the recipient has).
    #[serde(default)]
    pub channels: Option<Vec<String>>,
}

/// A notification accepted.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NotificationCreated {
    /// The notification's id (also its `notify.send` job's).
    pub id: String,
    /// True when the dedup key matched an earlier notification, which is returned.
    pub deduplicated: bool,
}

/// One channel's send record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SendView {
    /// `email`, `sms`, `push` or `in_app`.
    pub channel: String,
    /// The provider account that took it (an SMTP relay's name, `stream`).
    pub provider: Option<String>,
    /// `sending`, `sent`, `delivered`, `skipped`, `failed`, or a provider's status.
    pub status: String,
    /// The provider's id of the message (an email's Message-ID, an SMS's sid).
    pub provider_message_id: Option<String>,
    /// Why it failed or was skipped.
    pub error: Option<String>,
    /// Attempts made.
    pub attempts: i32,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A notification and its sends.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NotificationView {
    /// Id.
    pub id: String,
    /// Recipient.
    pub recipient: String,
    /// Template.
    pub template: String,
    /// Category.
    pub category: String,
    /// Urgent.
    pub urgent: bool,
    /// `queued`, `deferred` (quiet hours), `retrying` (a channel failed and is retried),
    /// `sent`, `partial` (some channels failed for good), `failed` or `skipped`.
    pub status: String,
    /// While deferred: when it will be sent.
    pub deferred_until: Option<DateTime<Utc>>,
    /// The dedup key.
    pub dedup_key: Option<String>,
    /// The `notify.send` job.
    pub job: Option<String>,
    /// Accepted at.
    pub created_at: DateTime<Utc>,
    /// Send records by channel.
    pub sends: Vec<SendView>,
}

/// What the handler needs to send one notification.
#[derive(Debug, Clone)]
pub struct ToSend {
    /// The tenant.
    pub tenant: String,
    /// Notification id.
    pub id: String,
    /// Category.
    pub category: String,
    /// Urgent.
    pub urgent: bool,
    /// Data.
    pub data: serde_json::Value,
    /// Channels asked for.
    pub channels: Option<Vec<String>>,
    /// One-click unsubscribe token.
    pub unsubscribe: String,
    /// The recipient (`None`: removed since).
    pub recipient: Option<RecipientView>,
    /// The template's default locale and variants (`None`: removed since).
    pub template: Option<(String, BTreeMap<String, Variant>)>,
    /// Each channel's send so far.
    pub sends: Vec<SendView>,
}

fn check_id(what: &str, id: &str) -> Result<(), StoreError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!("{what} {id:?}: 1 to 128 letters, digits, '-', '_', '.', ':' or '@'")))
    }
}

fn check_email(email: &str) -> Result<(), StoreError> {
    let ok = email.len() <= 254
        && email.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.'))
        && !email.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';' | '"'));
    if ok { Ok(()) } else { Err(StoreError::Invalid(format!("email {email:?} is not an address"))) }
}

fn check_phone(phone: &str) -> Result<(), StoreError> {
    let digits = phone.strip_prefix('+').unwrap_or("");
    if (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0') {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!("phone {phone:?} is not an E.164 number (+447911123456)")))
    }
}

fn check_channel(c: &str) -> Result<(), StoreError> {
    if CHANNELS.contains(&c) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!("channel {c:?}: one of {}", CHANNELS.join(", "))))
    }
}

/// Creates or replaces recipient `id`'s channels, preferences and quiet hours (its Web
/// Push subscriptions stay).
pub async fn put_recipient(
    db: &PgPool,
    tenant: &str,
    id: &str,
    req: RecipientRequest,
) -> Result<RecipientView, StoreError> {
    check_id("recipient", id)?;
    if let Some(e) = &req.email {
        check_email(e)?;
    }
    if let Some(p) = &req.phone {
        check_phone(p)?;
    }
    if let Some(u) = &req.user_id {
        check_id("user_id", u)?;
    }
    let locale = req.locale.unwrap_or_else(|| "en".into());
    template::check_locale(&locale).map_err(StoreError::Invalid)?;
    let time_zone = req.time_zone.unwrap_or_else(|| "UTC".into());
    zone(&time_zone).map_err(StoreError::Invalid)?;
    let quiet = match &req.quiet_hours {
        Some(q) => Some(QuietHours::parse(&q.start, &q.end).map_err(StoreError::Invalid)?),
        None => None,
    };
    if req.preferences.len() > 100 {
        return Err(StoreError::Invalid("at most 100 categories of preferences".into()));
    }
    for (category, channels) in &req.preferences {
        check_id("category", category)?;
        for c in channels.keys() {
            check_channel(c)?;
        }
    }
    sqlx::query(
        "INSERT INTO notify_recipients (tenant, id, email, phone, user_id, locale, time_zone, quiet_start, quiet_end, preferences)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (tenant, id) DO UPDATE SET email = $3, phone = $4, user_id = $5, locale = $6, time_zone = $7,
             quiet_start = $8, quiet_end = $9, preferences = $10, updated_at = now()",
    )
    .bind(tenant)
    .bind(id)
    .bind(&req.email)
    .bind(&req.phone)
    .bind(&req.user_id)
    .bind(&locale)
    .bind(&time_zone)
    .bind(quiet.map(|q| q.start as i32))
    .bind(quiet.map(|q| q.end as i32))
    .bind(serde_json::to_value(&req.preferences).unwrap_or_default())
    .execute(db)
    .await?;
    get_recipient(db, tenant, id).await
}

fn recipient_from(row: &sqlx::postgres::PgRow, push: Vec<String>) -> RecipientView {
    let qs: Option<i32> = row.get("quiet_start");
    let qe: Option<i32> = row.get("quiet_end");
    RecipientView {
        id: row.get("id"),
        email: row.get("email"),
        phone: row.get("phone"),
        user_id: row.get("user_id"),
        locale: row.get("locale"),
        time_zone: row.get("time_zone"),
        quiet_hours: qs
            .zip(qe)
            .map(|(s, e)| QuietHoursView { start: QuietHours::format(s as u32), end: QuietHours::format(e as u32) }),
        preferences: serde_json::from_value(row.get("preferences")).unwrap_or_default(),
        push_subscriptions: push,
    }
}

/// Recipient `id` of `tenant`.
pub async fn get_recipient(db: &PgPool, tenant: &str, id: &str) -> Result<RecipientView, StoreError> {
    let row = sqlx::query("SELECT * FROM notify_recipients WHERE tenant = $1 AND id = $2")
        .bind(tenant)
        .bind(id)
        .fetch_optional(db)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no recipient {id:?}")))?;
    let push: Vec<String> = sqlx::query_scalar(
        "SELECT endpoint FROM notify_push_subscriptions WHERE tenant = $1 AND recipient = $2 ORDER BY created_at",
    )
    .bind(tenant)
    .bind(id)
    .fetch_all(db)
    .await?;
    Ok(recipient_from(&row, push))
}

/// Removes recipient `id` (and its push subscriptions); its notifications stay.
pub async fn delete_recipient(db: &PgPool, tenant: &str, id: &str) -> Result<(), StoreError> {
    let n = sqlx::query("DELETE FROM notify_recipients WHERE tenant = $1 AND id = $2")
        .bind(tenant)
        .bind(id)
        .execute(db)
        .await?
        .rows_affected();
    if n == 0 { Err(StoreError::NotFound(format!("no recipient {id:?}"))) } else { Ok(()) }
}

/// Checks and stores template `name` (replacing every variant). A variant that does not
/// compile is [`StoreError::Invalid`] with the compiler's message.
pub async fn put_template(
    db: &PgPool,
    tenant: &str,
    name: &str,
    req: TemplateRequest,
) -> Result<TemplateView, StoreError> {
    check_id("template", name)?;
    template::check_locale(&req.default_locale).map_err(StoreError::Invalid)?;
    template::check(&req.default_locale, &req.variants).map_err(StoreError::Invalid)?;
    sqlx::query(
        "INSERT INTO notify_templates (tenant, name, default_locale, variants) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant, name) DO UPDATE SET default_locale = $3, variants = $4, updated_at = now()",
    )
    .bind(tenant)
    .bind(name)
    .bind(&req.default_locale)
    .bind(serde_json::to_value(&req.variants).unwrap_or_default())
    .execute(db)
    .await?;
    get_template(db, tenant, name).await
}

/// Template `name` of `tenant`.
pub async fn get_template(db: &PgPool, tenant: &str, name: &str) -> Result<TemplateView, StoreError> {
    let row = sqlx::query("SELECT * FROM notify_templates WHERE tenant = $1 AND name = $2")
        .bind(tenant)
        .bind(name)
        .fetch_optional(db)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no template {name:?}")))?;
    Ok(TemplateView {
        name: row.get("name"),
        default_locale: row.get("default_locale"),
        variants: serde_json::from_value(row.get("variants")).unwrap_or_default(),
        updated_at: row.get("updated_at"),
    })
}

/// Records a notification of `tenant`, or finds the earlier one with the same dedup key
/// (then `deduplicated` is true and nothing new is recorded). The caller enqueues its
/// `notify.send` job with the notification's id as the job id (so a second enqueue of
/// the same notification makes no second job) and calls [`set_job`].
pub async fn create_notification(
    db: &PgPool,
    tenant: &str,
    req: &NotificationRequest,
) -> Result<NotificationCreated, StoreError> {
    check_id("recipient", &req.recipient)?;
    check_id("template", &req.template)?;
    check_id("category", &req.category)?;
    if let Some(k) = &req.dedup_key
        && (k.is_empty() || k.len() > 200)
    {
        return Err(StoreError::Invalid("dedup_key: 1 to 200 characters".into()));
    }
    let data = match &req.data {
        serde_json::Value::Null => serde_json::json!({}),
        v @ serde_json::Value::Object(_) => v.clone(),
        _ => return Err(StoreError::Invalid("data must be a JSON object".into())),
    };
    if data.to_string().len() > MAX_DATA {
        return Err(StoreError::Invalid(format!("data is larger than {MAX_DATA} bytes")));
    }
    if let Some(cs) = &req.channels {
        if cs.is_empty() {
            return Err(StoreError::Invalid("channels: name at least one, or leave it out".into()));
        }
        for c in cs {
            check_channel(c)?;
        }
    }
    // The recipient and template must exist now (they are read again at send time).
    get_recipient(db, tenant, &req.recipient).await.map_err(|e| match e {
        StoreError::NotFound(m) => StoreError::Invalid(m),
        e => e,
    })?;
    get_template(db, tenant, &req.template).await.map_err(|e| match e {
        StoreError::NotFound(m) => StoreError::Invalid(m),
        e => e,
    })?;
    let id = uuid::Uuid::now_v7().to_string();
    let unsubscribe = hex::encode(rand::random::<[u8; 16]>());
    let inserted: Option<String> = sqlx::query_scalar(
        "INSERT INTO notifications (id, tenant, recipient, template, category, urgent, data, channels, dedup_key, unsubscribe)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (tenant, dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING RETURNING id",
    )
    .bind(&id)
    .bind(tenant)
    .bind(&req.recipient)
    .bind(&req.template)
    .bind(&req.category)
    .bind(req.urgent)
    .bind(&data)
    .bind(&req.channels)
    .bind(&req.dedup_key)
    .bind(&unsubscribe)
    .fetch_optional(db)
    .await?;
    if let Some(id) = inserted {
        return Ok(NotificationCreated { id, deduplicated: false });
    }
    let earlier: String = sqlx::query_scalar("SELECT id FROM notifications WHERE tenant = $1 AND dedup_key = $2")
        .bind(tenant)
        .bind(&req.dedup_key)
        .fetch_one(db)
        .await?;
    Ok(NotificationCreated { id: earlier, deduplicated: true })
}

/// Whether notification `id` still needs its job enqueued (no job recorded yet).
pub async fn needs_job(db: &PgPool, tenant: &str, id: &str) -> Result<bool, StoreError> {
    let job: Option<Option<String>> = sqlx::query_scalar("SELECT job FROM notifications WHERE tenant = $1 AND id = $2")
        .bind(tenant)
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(matches!(job, Some(None)))
}

/// Records the `notify.send` job of notification `id`.
pub async fn set_job(db: &PgPool, tenant: &str, id: &str, job: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE notifications SET job = $3 WHERE tenant = $1 AND id = $2")
        .bind(tenant)
        .bind(id)
        .bind(job)
        .execute(db)
        .await?;
    Ok(())
}

fn send_from(row: &sqlx::postgres::PgRow) -> SendView {
    SendView {
        channel: row.get("channel"),
        provider: row.get("provider"),
        status: row.get("status"),
        provider_message_id: row.get("provider_message_id"),
        error: row.get("error"),
        attempts: row.get("attempts"),
        updated_at: row.get("updated_at"),
    }
}

async fn sends(db: &PgPool, id: &str) -> Result<Vec<SendView>, sqlx::Error> {
    let rows = sqlx::query("SELECT * FROM notify_sends WHERE notification = $1 ORDER BY channel")
        .bind(id)
        .fetch_all(db)
        .await?;
    Ok(rows.iter().map(send_from).collect())
}

/// Notification `id` with its send records (`tenant` `None`: any tenant's, for operators).
pub async fn get_notification(db: &PgPool, tenant: Option<&str>, id: &str) -> Result<NotificationView, StoreError> {
    let row = sqlx::query("SELECT * FROM notifications WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)")
        .bind(id)
        .bind(tenant)
        .fetch_optional(db)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no notification {id:?}")))?;
    Ok(NotificationView {
        id: row.get("id"),
        recipient: row.get("recipient"),
        template: row.get("template"),
        category: row.get("category"),
        urgent: row.get("urgent"),
        status: row.get("status"),
        deferred_until: row.get("deferred_until"),
        dedup_key: row.get("dedup_key"),
        job: row.get("job"),
        created_at: row.get("created_at"),
        sends: sends(db, id).await?,
    })
}

/// Everything the handler needs for notification `id` (`None`: no such notification
/// for this tenant).
pub async fn to_send(db: &PgPool, tenant: Option<&str>, id: &str) -> Result<Option<ToSend>, sqlx::Error> {
    let Some(n) = sqlx::query("SELECT * FROM notifications WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)")
        .bind(id)
        .bind(tenant)
        .fetch_optional(db)
        .await?
    else {
        return Ok(None);
    };
    let tenant: String = n.get("tenant");
    let recipient_id: String = n.get("recipient");
    let template_name: String = n.get("template");
    let recipient = match get_recipient(db, &tenant, &recipient_id).await {
        Ok(r) => Some(r),
        Err(StoreError::Db(e)) => return Err(e),
        Err(_) => None,
    };
    let template = sqlx::query("SELECT default_locale, variants FROM notify_templates WHERE tenant = $1 AND name = $2")
        .bind(&tenant)
        .bind(&template_name)
        .fetch_optional(db)
        .await?
        .map(|r| (r.get("default_locale"), serde_json::from_value(r.get("variants")).unwrap_or_default()));
    Ok(Some(ToSend {
        id: n.get("id"),
        category: n.get("category"),
        urgent: n.get("urgent"),
        data: n.get("data"),
        channels: n.get("channels"),
        unsubscribe: n.get("unsubscribe"),
        recipient,
        template,
        sends: sends(db, id).await?,
        tenant,
    }))
}

/// Records one channel's send: its provider, status, provider message id and error;
/// `attempt` counts an attempt.
#[allow(clippy::too_many_arguments)]
pub async fn record_send(
    db: &PgPool,
    id: &str,
    channel: &str,
    provider: Option<&str>,
    status: &str,
    provider_message_id: Option<&str>,
    error: Option<&str>,
    attempt: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO notify_sends (notification, channel, provider, status, provider_message_id, error, attempts)
         VALUES ($1, $2, $3, $4, $5, $6, $7::int)
         ON CONFLICT (notification, channel) DO UPDATE SET provider = COALESCE($3, notify_sends.provider), status = $4,
             provider_message_id = COALESCE($5, notify_sends.provider_message_id), error = $6,
             attempts = notify_sends.attempts + $7::int, updated_at = now()",
    )
    .bind(id)
    .bind(channel)
    .bind(provider)
    .bind(status)
    .bind(provider_message_id)
    .bind(error)
    .bind(attempt as i32)
    .execute(db)
    .await?;
    Ok(())
}

/// Sets a notification's overall status (and when a deferred one will be sent).
pub async fn set_status(
    db: &PgPool,
    id: &str,
    status: &str,
    deferred_until: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE notifications SET status = $2, deferred_until = $3, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(status)
        .bind(deferred_until)
        .execute(db)
        .await?;
    Ok(())
}

/// One-click unsubscribe (RFC 8058): turns email off for the category of the
/// notification whose link carries `token`, for its recipient. Idempotent; `false` when
/// no notification has that token.
pub async fn unsubscribe(db: &PgPool, token: &str) -> Result<bool, sqlx::Error> {
    if token.len() != 32 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(false);
    }
    let n = sqlx::query(
        "UPDATE notify_recipients r
         SET preferences = jsonb_set(r.preferences, ARRAY[n.category],
             COALESCE(r.preferences -> n.category, '{}'::jsonb) || '{\"email\": false}'::jsonb), updated_at = now()
         FROM notifications n WHERE n.unsubscribe = $1 AND r.tenant = n.tenant AND r.id = n.recipient",
    )
    .bind(token)
    .execute(db)
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// Adds (or refreshes) a Web Push subscription of recipient `id`.
pub async fn add_push_subscription(
    db: &PgPool,
    tenant: &str,
    recipient: &str,
    endpoint: &str,
    p256dh: &str,
    auth: &str,
) -> Result<(), StoreError> {
    get_recipient(db, tenant, recipient).await?;
    let url = endpoint.parse::<url_check::Https>().map_err(StoreError::Invalid)?;
    if p256dh.is_empty() || p256dh.len() > 200 || auth.is_empty() || auth.len() > 100 {
        return Err(StoreError::Invalid("keys.p256dh and keys.auth are the subscription's base64url keys".into()));
    }
    sqlx::query(
        "INSERT INTO notify_push_subscriptions (tenant, recipient, endpoint, p256dh, auth) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (tenant, recipient, endpoint) DO UPDATE SET p256dh = $4, auth = $5",
    )
    .bind(tenant)
    .bind(recipient)
    .bind(url.0)
    .bind(p256dh)
    .bind(auth)
    .execute(db)
    .await?;
    Ok(())
}

mod url_check {
    /// A push service endpoint: an `https://` URL (or `http://` for loopback test services).
    pub struct Https(pub String);

    impl std::str::FromStr for Https {
        type Err = String;
        fn from_str(s: &str) -> Result<Self, String> {
            let ok = s.len() <= 2048
                && (s.starts_with("https://") || s.starts_with("http://"))
                && !s.chars().any(|c| c.is_whitespace() || c.is_control());
            if ok { Ok(Https(s.to_owned())) } else { Err(format!("endpoint {s:?} is not an http(s) URL")) }
        }
    }
}

/// The order of an SMS provider's statuses: a status moves a record only forward, since
/// the provider's callbacks can arrive out of order (`sent` after `delivered`).
fn sms_rank(status: &str) -> Option<i32> {
    Some(match status {
        "accepted" | "scheduled" | "queued" => 1,
        "sending" => 2,
        "sent" => 3,
        "delivered" | "undelivered" | "failed" | "read" | "canceled" => 4,
        _ => return None,
    })
}

/// Applies an SMS provider's status callback (`MessageSid`, `MessageStatus`) to the send
/// record of `tenant` with that provider message id, when it moves the record forward.
/// `tenant` is the intake provider's configured tenant, never the caller's say. Returns
/// whether a record changed.
pub async fn apply_sms_status(
    db: &PgPool,
    tenant: &str,
    sid: &str,
    status: &str,
    error_code: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let Some(rank) = sms_rank(status) else { return Ok(false) };
    let n = sqlx::query(
        "UPDATE notify_sends s SET status = $3, error = COALESCE($5, s.error), updated_at = now()
         FROM notifications n
         WHERE s.notification = n.id AND n.tenant = $1 AND s.channel = 'sms' AND s.provider_message_id = $2
           AND (CASE s.status WHEN 'accepted' THEN 1 WHEN 'scheduled' THEN 1 WHEN 'queued' THEN 1 WHEN 'sending' THEN 2
                WHEN 'sent' THEN 3 WHEN 'delivered' THEN 4 WHEN 'undelivered' THEN 4 WHEN 'failed' THEN 4
                WHEN 'read' THEN 4 WHEN 'canceled' THEN 4 ELSE 0 END) < $4",
    )
    .bind(tenant)
    .bind(sid)
    .bind(status)
    .bind(rank)
    .bind(error_code.map(|c| format!("provider error code {c}")))
    .execute(db)
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// A Web Push subscription's endpoint and keys.
#[derive(Debug, Clone)]
pub struct PushSubscription {
    /// Push service URL.
    pub endpoint: String,
    /// The browser's P-256 key, base64url.
    pub p256dh: String,
    /// The auth secret, base64url.
    pub auth: String,
}

/// Recipient `recipient`'s Web Push subscriptions.
pub async fn push_subscriptions(
    db: &PgPool,
    tenant: &str,
    recipient: &str,
) -> Result<Vec<PushSubscription>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT endpoint, p256dh, auth FROM notify_push_subscriptions WHERE tenant = $1 AND recipient = $2 ORDER BY created_at",
    )
    .bind(tenant)
    .bind(recipient)
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .map(|r| PushSubscription { endpoint: r.get("endpoint"), p256dh: r.get("p256dh"), auth: r.get("auth") })
        .collect())
}

/// Removes a subscription the push service said is gone (404/410).
pub async fn delete_push_subscription(
    db: &PgPool,
    tenant: &str,
    recipient: &str,
    endpoint: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM notify_push_subscriptions WHERE tenant = $1 AND recipient = $2 AND endpoint = $3")
        .bind(tenant)
        .bind(recipient)
        .bind(endpoint)
        .execute(db)
        .await?;
    Ok(())
}
