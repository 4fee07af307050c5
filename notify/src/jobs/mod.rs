//! `notify.send`: one notification to one recipient, channel by channel.
//!
//! A state machine per (notification, channel), kept in `notify_sends`:
//! `sending` (written before the provider is called, with the Message-ID the email will
//! carry) → `sent` | `failed` | `skipped` (a preference, no address, no provider), and
//! later provider statuses (`delivered`, …). A retry of the job sends only the channels
//! that are not `sent`/`skipped` yet, so one channel failing never repeats the others;
//! a channel left `sending` by a crash is sent again with the same Message-ID (at least
//! once, as the rest of Fleet). The dedup key (`POST /v1/notifications`) makes a retried
//! event one notification; the job id is the notification's id, so it makes one job.
//!
//! Order of decisions at each attempt: the recipient's quiet hours first (a non-urgent
//! notification inside them is snoozed to the window's end, recorded as `deferred`, and
//! costs no attempt), then per channel the recipient's preference for the category,
//! then the send.
//!
//! Providers: email over the SMTP relays of `[notify]` in order ([`email`]), each relay
//! under the fleet-wide limit key `smtp:<name>` (rate, cap and breaker from `[limits]`):
//! a relay that fails, or is held back by its limit or its open breaker, hands the
//! email to the next. In-app: a `notification.in_app` event on the tenant's live stream.

pub mod email;
pub mod push;
pub mod sms;

use crate::quiet::{QuietHours, zone};
use crate::store::{self, RecipientView, SendView, ToSend};
use crate::template::{self, Rendered};
use fleet_jobs::catalogue::NotifySend;
use fleet_kit::limits::{AttemptLimits, Verdict};
use fleet_kit::{Handler, JobContext, JobError};
use serde::Deserialize;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;

pub use email::{DkimAlgorithm, DkimKey, SmtpRelay, SmtpTls};
pub use sms::SmsAccount;

/// The worker's `[notify]` settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifySettings {
    /// SMTP relays, tried in this order (`[[notify.smtp]]`).
    pub smtp: Vec<SmtpRelay>,
    /// The From of every email (`Studio <notify@example.com>`).
    pub from: Option<String>,
    /// DKIM keys, one per sender domain (`[[notify.dkim]]`): an email whose From is in
    /// one of these domains is signed with its key.
    pub dkim: Vec<DkimKey>,
    /// One-click unsubscribe: the notification's token is appended (`{url}/{token}`),
    /// e.g. `https://api.example.com/v1/notify/unsubscribe`. Unset: no List-Unsubscribe.
    pub unsubscribe_url: Option<String>,
    /// SMS provider accounts (Twilio-style API), tried in this order (`[[notify.sms]]`).
    pub sms: Vec<SmsAccount>,
    /// CIDR ranges the SSRF guard lets SMS APIs be in besides public addresses (tests:
    /// `127.0.0.0/8`).
    pub allow: Vec<String>,
    /// Web Push: the VAPID private key, base64url of its 32 bytes (prefer
    /// `vapid_private_key_env`); browsers subscribe with its public key.
    pub vapid_private_key: Option<String>,
    /// The environment variable holding the VAPID private key.
    pub vapid_private_key_env: Option<String>,
    /// Web Push: the operator's contact in VAPID tokens (`mailto:ops@example.com`).
    pub vapid_subject: Option<String>,
}

/// What became of one channel in one attempt.
#[derive(Debug)]
enum Outcome {
    Sent { provider: String, id: Option<String>, status: Option<String> },
    Skipped(String),
    Failed { provider: Option<String>, error: String, transient: bool },
    Held(Duration),
}

/// The `notify.send` handler.
#[derive(Clone)]
pub struct SendNotification {
    db: PgPool,
    relays: Arc<Vec<email::Relay>>,
    from: Option<lettre::message::Mailbox>,
    /// DKIM signers by sender domain (lowercase).
    dkim: Arc<std::collections::BTreeMap<String, Arc<lettre::message::dkim::DkimConfig>>>,
    unsubscribe_url: Option<String>,
    stream: Option<fleet_jobs::Client>,
    sms: Arc<Vec<sms::Account>>,
    http: Option<reqwest::Client>,
    /// The SSRF guard: also checks push endpoints that name an IP address literally
    /// (the guarded client checks the addresses names resolve to).
    guard: Arc<fleet_net::Guard>,
    vapid: Option<push::Vapid>,
}

impl std::fmt::Debug for SendNotification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendNotification")
            .field("relays", &self.relays.iter().map(|r| r.name.as_str()).collect::<Vec<_>>())
            .field("dkim_domains", &self.dkim.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SendNotification {
    /// A handler on `db` with `settings`' relays (transports are built now; nothing
    /// connects until the first email). Errors name the setting.
    pub fn new(db: PgPool, settings: &NotifySettings) -> Result<Self, String> {
        let relays = settings.smtp.iter().map(email::Relay::new).collect::<Result<Vec<_>, _>>()?;
        let from = match &settings.from {
            Some(f) => Some(f.parse::<lettre::message::Mailbox>().map_err(|e| format!("notify.from {f:?}: {e}"))?),
            None if !relays.is_empty() => return Err("notify.from is required with SMTP relays".into()),
            None => None,
        };
        let dkim = email::dkim_signers(&settings.dkim)?;
        if let Some(from) = &from
            && !dkim.is_empty()
            && !dkim.contains_key(&from.email.domain().to_ascii_lowercase())
        {
            return Err(format!(
                "notify.dkim: no key for {:?}, the domain of notify.from (keys for: {})",
                from.email.domain(),
                dkim.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        let allow = settings
            .allow
            .iter()
            .map(|c| c.parse::<fleet_net::Cidr>().map_err(|e| format!("notify.allow: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let guard = Arc::new(fleet_net::Guard::new(allow));
        let accounts = settings.sms.iter().map(|a| sms::Account::new(a, &guard)).collect::<Result<Vec<_>, _>>()?;
        let vapid_key = match (&settings.vapid_private_key, &settings.vapid_private_key_env) {
            (Some(k), _) => Some(k.clone()),
            (None, Some(var)) => {
                Some(std::env::var(var).map_err(|_| format!("notify.vapid_private_key_env: {var} is not set"))?)
            }
            (None, None) => None,
        };
        let vapid = match (vapid_key, &settings.vapid_subject) {
            (Some(k), Some(subject)) => Some(push::Vapid::new(&k, subject)?),
            (Some(_), None) => return Err("notify.vapid_subject is required with a VAPID key".into()),
            (None, _) => None,
        };
        // SMS APIs and push services (a browser's endpoint: a tenant's input) share the
        // SSRF-guarded client.
        let http = if accounts.is_empty() && vapid.is_none() { None } else { Some(sms::client(guard.clone())?) };
        Ok(SendNotification {
            db,
            sms: Arc::new(accounts),
            http,
            guard,
            vapid,
            relays: Arc::new(relays),
            from,
            dkim: Arc::new(dkim),
            unsubscribe_url: settings.unsubscribe_url.as_ref().map(|u| u.trim_end_matches('/').to_owned()),
            stream: None,
        })
    }

    /// Publishes in-app notifications on the tenant's live stream through `client`.
    pub fn with_stream(mut self, client: fleet_jobs::Client) -> Self {
        self.stream = Some(client);
        self
    }

    async fn email(
        &self,
        n: &ToSend,
        r: &RecipientView,
        out: &Rendered,
        prior: Option<&SendView>,
        limits: &AttemptLimits,
    ) -> Outcome {
        let Some(to) = &r.email else { return Outcome::Skipped("the recipient has no email address".into()) };
        let (Some(from), false) = (&self.from, self.relays.is_empty()) else {
            return Outcome::Skipped("no SMTP relay is configured".into());
        };
        let Some(subject) = &out.subject else { return Outcome::Skipped("the template has no subject".into()) };
        // The same Message-ID on every attempt: written before the first send.
        let message_id = match prior.and_then(|p| p.provider_message_id.clone()) {
            Some(id) => id,
            None => {
                let id = email::message_id(from.email.domain());
                if let Err(e) =
                    store::record_send(&self.db, &n.id, "email", None, "sending", Some(&id), None, false).await
                {
                    return Outcome::Failed { provider: None, error: format!("database: {e}"), transient: true };
                }
                id
            }
        };
        let unsubscribe = self.unsubscribe_url.as_ref().map(|u| format!("{u}/{}", n.unsubscribe));
        let mut msg = match email::build(&email::Email {
            from,
            to,
            subject,
            text: out.text.as_deref(),
            html: out.html.as_deref(),
            message_id: &message_id,
            unsubscribe: unsubscribe.as_deref(),
        }) {
            Ok(m) => m,
            Err(e) => return Outcome::Failed { provider: None, error: e, transient: false },
        };
        // Signed once, before the relays: every relay sends the same signed bytes.
        if let Some(dkim) = self.dkim.get(&from.email.domain().to_ascii_lowercase()) {
            msg.sign(dkim);
        }
        let mut errors = Vec::new();
        let mut held: Option<Duration> = None;
        for relay in self.relays.iter() {
            let key = format!("smtp:{}", relay.name);
            if let Err(e) = limits.admit(&key).await {
                let wait = match e {
                    JobError::Snooze { after } => after,
                    _ => Duration::from_secs(1),
                };
                held = Some(held.map_or(wait, |h| h.min(wait)));
                errors.push(format!("{}: held back by its limit or breaker", relay.name));
                continue;
            }
            let started = std::time::Instant::now();
            match relay.send(&msg).await {
                Ok(_) => {
                    limits.settle(&key, Verdict::Healthy).await;
                    metrics::histogram!("fleet_notify_smtp_seconds", "relay" => relay.name.clone())
                        .record(started.elapsed().as_secs_f64());
                    return Outcome::Sent { provider: relay.name.clone(), id: Some(message_id), status: None };
                }
                Err(e) => {
                    // A refused recipient (5xx to RCPT) is the address's fault, but a relay
                    // refusing to relay, or refusing everything at its greeting, says the
                    // same code: the next relay gets its chance, and when every relay
                    // failed the job is retried with its backoff (bounded by its attempts).
                    limits.settle(&key, if e.is_permanent() { Verdict::Neutral } else { Verdict::Failing }).await;
                    let error = relay.describe(&e);
                    tracing::warn!(relay = %relay.name, error = %error, "SMTP relay failed; trying the next");
                    errors.push(error);
                }
            }
        }
        if errors.iter().all(|e| e.ends_with("held back by its limit or breaker"))
            && let Some(wait) = held
        {
            return Outcome::Held(wait);
        }
        Outcome::Failed {
            provider: self.relays.last().map(|r| r.name.clone()),
            error: errors.join("; "),
            transient: true,
        }
    }

    async fn sms(&self, r: &RecipientView, out: &Rendered, limits: &AttemptLimits) -> Outcome {
        let Some(to) = &r.phone else { return Outcome::Skipped("the recipient has no phone number".into()) };
        let (Some(http), false) = (&self.http, self.sms.is_empty()) else {
            return Outcome::Skipped("no SMS provider is configured".into());
        };
        let Some(body) = out.sms.as_ref().or(out.text.as_ref()) else {
            return Outcome::Skipped("the template has no sms or text part".into());
        };
        let mut errors = Vec::new();
        let mut held: Option<Duration> = None;
        for account in self.sms.iter() {
            let key = format!("sms:{}", account.name);
            if let Err(e) = limits.admit(&key).await {
                let wait = if let JobError::Snooze { after } = e { after } else { Duration::from_secs(1) };
                held = Some(held.map_or(wait, |h| h.min(wait)));
                continue;
            }
            match account.send(http, to, body).await {
                Ok((sid, status)) => {
                    limits.settle(&key, Verdict::Healthy).await;
                    return Outcome::Sent { provider: account.name.clone(), id: Some(sid), status: Some(status) };
                }
                Err(sms::SmsError::Refused(e)) => {
                    limits.settle(&key, Verdict::Neutral).await;
                    return Outcome::Failed { provider: Some(account.name.clone()), error: e, transient: false };
                }
                Err(sms::SmsError::Unavailable(e)) => {
                    limits.settle(&key, Verdict::Failing).await;
                    tracing::warn!(account = %account.name, error = %e, "SMS provider failed; trying the next");
                    errors.push(e);
                }
            }
        }
        match held {
            Some(wait) if errors.is_empty() => Outcome::Held(wait),
            _ => Outcome::Failed {
                provider: self.sms.last().map(|a| a.name.clone()),
                error: errors.join("; "),
                transient: true,
            },
        }
    }

    async fn push(&self, n: &ToSend, r: &RecipientView, out: &Rendered) -> Outcome {
        let (Some(http), Some(vapid)) = (&self.http, &self.vapid) else {
            return Outcome::Skipped("no Web Push sender is configured".into());
        };
        let title = out.push_title.clone().or_else(|| out.subject.clone());
        let body = out.push_body.clone().or_else(|| out.text.clone());
        if title.is_none() && body.is_none() {
            return Outcome::Skipped("the template has no push_title or push_body".into());
        }
        let payload =
            serde_json::json!({"notification": n.id, "category": n.category, "title": title, "body": body}).to_string();
        let subs = match store::push_subscriptions(&self.db, &n.tenant, &r.id).await {
            Ok(s) => s,
            Err(e) => return Outcome::Failed { provider: None, error: format!("database: {e}"), transient: true },
        };
        let (mut accepted, mut gone, mut errors, mut transient) = (0, 0, Vec::new(), false);
        for sub in &subs {
            // An endpoint is a tenant's input: one naming a private address literally is
            // refused here (names are checked as they resolve, by the guarded client).
            if let Ok(url) = sub.endpoint.parse::<reqwest::Url>()
                && let Err(ip) = self.guard.check_url(&url)
            {
                errors.push(format!("push endpoint is a private address ({}); see notify.allow", ip.0));
                continue;
            }
            match push::send(http, vapid, &sub.endpoint, &sub.p256dh, &sub.auth, payload.as_bytes(), n.urgent).await {
                push::PushResult::Accepted => accepted += 1,
                push::PushResult::Gone => {
                    gone += 1;
                    tracing::info!(tenant = %n.tenant, recipient = %r.id, "push subscription gone; removed");
                    if let Err(e) = store::delete_push_subscription(&self.db, &n.tenant, &r.id, &sub.endpoint).await {
                        tracing::warn!(error = %e, "could not remove a gone push subscription");
                    }
                }
                push::PushResult::Failed { error, transient: t } => {
                    transient |= t;
                    errors.push(error);
                }
            }
        }
        if accepted > 0 {
            let id = format!("{accepted} of {} subscription(s)", subs.len());
            Outcome::Sent { provider: "webpush".into(), id: Some(id), status: None }
        } else if errors.is_empty() {
            Outcome::Skipped(format!("no live push subscription ({gone} gone, removed)"))
        } else {
            Outcome::Failed { provider: Some("webpush".into()), error: errors.join("; "), transient }
        }
    }

    async fn in_app(&self, n: &ToSend, r: &RecipientView, out: &Rendered) -> Outcome {
        let Some(user) = &r.user_id else { return Outcome::Skipped("the recipient has no in-app user id".into()) };
        let Some(client) = &self.stream else { return Outcome::Skipped("no live stream on this worker".into()) };
        let title = out.subject.clone().or_else(|| out.push_title.clone());
        let body = out.text.clone().or_else(|| out.push_body.clone());
        if title.is_none() && body.is_none() {
            return Outcome::Skipped("the template has no subject or text for in-app".into());
        }
        let at =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let event = fleet_jobs::events::TenantEvent::domain(
            "notification.in_app",
            n.id.clone(),
            at,
            serde_json::json!({"notification": n.id, "recipient": r.id, "user_id": user,
                "category": n.category, "urgent": n.urgent, "title": title, "body": body}),
        );
        let mut conn = client.connection();
        match fleet_jobs::events::append(&mut conn, client.prefix(), &[(n.tenant.clone(), event)]).await {
            Ok(()) => Outcome::Sent { provider: "stream".into(), id: None, status: None },
            Err(e) => {
                Outcome::Failed { provider: Some("stream".into()), error: format!("live stream: {e}"), transient: true }
            }
        }
    }
}

/// Whether a channel's record says it needs no more sending.
fn done(status: &str) -> bool {
    !matches!(status, "sending" | "failed")
}

async fn db<T>(r: Result<T, sqlx::Error>) -> Result<T, JobError> {
    r.map_err(|e| JobError::retry(format!("database: {e}")))
}

impl Handler for SendNotification {
    type Args = NotifySend;

    async fn handle(&self, a: NotifySend, ctx: JobContext) -> Result<(), JobError> {
        // The envelope's tenant is the authority: another tenant's notification is "not found".
        let Some(n) = db(store::to_send(&self.db, ctx.tenant.as_deref(), &a.notification).await).await? else {
            return Err(JobError::give_up(format!("notification {} not found", a.notification)));
        };
        let fail = |why: String| async move {
            let _ = store::set_status(&self.db, &a.notification, "failed", None).await;
            Err(JobError::give_up(why))
        };
        let Some(recipient) = &n.recipient else { return fail("the recipient was removed".into()).await };
        let Some((default_locale, variants)) = &n.template else {
            return fail("the template was removed".into()).await;
        };
        // Quiet hours, in the recipient's zone: a non-urgent send waits for the window's end.
        if !n.urgent
            && let Some(q) = &recipient.quiet_hours
            && let (Ok(quiet), Ok(tz)) = (QuietHours::parse(&q.start, &q.end), zone(&recipient.time_zone))
            && let Some(until) = quiet.deferred_until(tz, chrono::Utc::now())
        {
            db(store::set_status(&self.db, &n.id, "deferred", Some(until)).await).await?;
            let wait = (until - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(1);
            tracing::debug!(notification = %n.id, until = %until, "quiet hours: deferred");
            return Err(JobError::snooze(wait));
        }
        let Some(variant) = template::pick(variants, &recipient.locale, default_locale) else {
            return fail("the template has no variant".into()).await;
        };
        let mut data = n.data.clone();
        if let Some(map) = data.as_object_mut() {
            map.entry("recipient")
                .or_insert_with(|| serde_json::json!({"id": recipient.id, "locale": recipient.locale}));
            if let Some(u) = &self.unsubscribe_url {
                map.entry("unsubscribe_url").or_insert_with(|| format!("{u}/{}", n.unsubscribe).into());
            }
        }
        let rendered = match template::render(variant, &data) {
            Ok(r) => r,
            Err(e) => return fail(format!("template: {e}")).await,
        };
        let has = |c: &str| match c {
            "email" => recipient.email.is_some(),
            "sms" => recipient.phone.is_some(),
            "push" => !recipient.push_subscriptions.is_empty(),
            _ => recipient.user_id.is_some(),
        };
        let channels: Vec<&str> = match &n.channels {
            Some(asked) => store::CHANNELS.iter().copied().filter(|c| asked.iter().any(|a| a == c)).collect(),
            None => store::CHANNELS.iter().copied().filter(|c| has(c)).collect(),
        };
        let mut retry: Vec<String> = Vec::new();
        let mut held: Option<Duration> = None;
        for channel in channels {
            let prior = n.sends.iter().find(|s| s.channel == channel);
            if prior.is_some_and(|p| done(&p.status)) {
                continue;
            }
            let off = recipient.preferences.get(&n.category).and_then(|p| p.get(channel)) == Some(&false);
            let outcome = if off {
                Outcome::Skipped(format!("turned off by the recipient for category {:?}", n.category))
            } else {
                match channel {
                    "email" => self.email(&n, recipient, &rendered, prior, ctx.limits()).await,
                    "in_app" => self.in_app(&n, recipient, &rendered).await,
                    "sms" => self.sms(recipient, &rendered, ctx.limits()).await,
                    _ => self.push(&n, recipient, &rendered).await,
                }
            };
            metrics::counter!("fleet_notify_sends_total", "channel" => channel, "outcome" => match &outcome {
                Outcome::Sent { .. } => "sent",
                Outcome::Skipped(_) => "skipped",
                Outcome::Failed { .. } => "failed",
                Outcome::Held(_) => "held",
            })
            .increment(1);
            let recorded = match &outcome {
                Outcome::Sent { provider, id, status } => {
                    // A provider's own first status (an SMS `queued`) is kept as it said it.
                    let status = status.as_deref().unwrap_or("sent");
                    store::record_send(&self.db, &n.id, channel, Some(provider), status, id.as_deref(), None, true)
                        .await
                }
                Outcome::Skipped(why) => {
                    store::record_send(&self.db, &n.id, channel, None, "skipped", None, Some(why), false).await
                }
                Outcome::Failed { provider, error, transient } => {
                    if *transient {
                        retry.push(format!("{channel}: {error}"));
                    }
                    store::record_send(&self.db, &n.id, channel, provider.as_deref(), "failed", None, Some(error), true)
                        .await
                }
                Outcome::Held(wait) => {
                    held = Some(held.map_or(*wait, |h| h.min(*wait)));
                    Ok(())
                }
            };
            db(recorded).await?;
        }
        let sends = db(store::to_send(&self.db, None, &n.id).await).await?.map(|t| t.sends).unwrap_or_default();
        let count = |s: &str| sends.iter().filter(|x| x.status == s).count();
        let (failed, skipped) = (count("failed"), count("skipped"));
        let sent = sends.len() - failed - skipped - count("sending");
        let status = if held.is_some() || (!retry.is_empty() && !ctx.is_last_attempt()) {
            "retrying"
        } else if failed == 0 && sent == 0 {
            "skipped"
        } else if failed == 0 {
            "sent"
        } else if sent == 0 && skipped == 0 {
            "failed"
        } else {
            "partial"
        };
        db(store::set_status(&self.db, &n.id, status, None).await).await?;
        if let Some(wait) = held
            && retry.is_empty()
        {
            return Err(JobError::snooze(wait));
        }
        if !retry.is_empty() {
            return Err(JobError::retry(retry.join("; ")));
        }
        Ok(())
    }
}
