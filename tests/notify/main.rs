//! Notifications end to end: the API (recipients, templates, `POST /v1/notifications`,
//! a notification's send records), the `notify.send` job on a worker, email through a
//! real SMTP server (aiosmtpd, `scripts/smtp.sh`) read back from its Maildir, failover
//! from a relay that refuses to the next, dedup of a retried event and of a retried job,
//! quiet hours deferring in the recipient's zone, urgent sends going through them,
//! preferences skipping a channel, and in-app events on the tenant's live stream.
//! `mailserver.rs`: email through a real mail server (Postfix with STARTTLS, implicit TLS
//! and AUTH, delivering into Dovecot) read back over IMAP, and DKIM checked by dkimpy.

use fleet_jobs::catalogue::NotifySend;
use fleet_kit::testing::{TestJob, assert_snooze};
use fleet_notify::jobs::{NotifySettings, SendNotification, SmtpRelay};
use fleet_notify::store::{self, NotificationRequest, RecipientRequest, TemplateRequest};
use fleet_notify::template::Variant;
use fleet_scheduler::api::{ApiState, app, auth};
use fleet_tests::{TestDb, TestEnv, n_final};
use fleet_worker::{QueueConfig, Registry};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

mod mailserver;

const UNSUBSCRIBE: &str = "https://notify.example.com/v1/notify/unsubscribe";

fn ensure_smtp() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/smtp.sh");
        let out = std::process::Command::new("bash").arg(script).output().expect("run scripts/smtp.sh");
        assert!(out.status.success(), "scripts/smtp.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    });
}

fn smtp_port() -> u16 {
    std::env::var("FLEET_TEST_SMTP_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(10025)
}

fn relay(name: &str, port: u16) -> SmtpRelay {
    toml::from_str(&format!("name = {name:?}\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"")).unwrap()
}

fn settings(relays: Vec<SmtpRelay>) -> NotifySettings {
    NotifySettings {
        smtp: relays,
        from: Some("Studio Lumen <notify@studio.example>".into()),
        unsubscribe_url: Some(UNSUBSCRIBE.into()),
        ..NotifySettings::default()
    }
}

/// The messages the SMTP server stored for `rcpt`, as (unfolded headers, raw text).
fn mailbox(rcpt: &str) -> Vec<(BTreeMap<String, String>, String)> {
    let dir = std::env::var("FLEET_TEST_SMTP_DIR").unwrap_or_else(|_| "/tmp/fleet-smtp".into());
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("{dir}/Maildir/new")).expect("the SMTP server's Maildir") {
        let raw = std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default().replace("\r\n", "\n");
        let head = raw.split("\n\n").next().unwrap_or("").replace("\n ", " ").replace("\n\t", " ");
        let headers: BTreeMap<String, String> = head
            .lines()
            .filter_map(|l| l.split_once(':').map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned())))
            .collect();
        if headers.get("x-rcptto").is_some_and(|r| r.eq_ignore_ascii_case(rcpt)) {
            out.push((headers, raw));
        }
    }
    out
}

fn address() -> String {
    format!("c{}@couples.example", uuid::Uuid::now_v7().simple())
}

fn booking_template() -> TemplateRequest {
    let en = Variant {
        subject: Some("Booking confirmed for {{ date }}".into()),
        text: Some("Hello {{ name }}, see you on {{ date }}. Unsubscribe: {{ unsubscribe_url }}".into()),
        html: Some("<p>Hello {{ name }}, see you on <b>{{ date }}</b>.</p>".into()),
        ..Variant::default()
    };
    let fr = Variant {
        subject: Some("Réservation confirmée pour le {{ date }}".into()),
        text: Some("Bonjour {{ name }}".into()),
        ..Variant::default()
    };
    TemplateRequest { default_locale: "en".into(), variants: BTreeMap::from([("en".into(), en), ("fr".into(), fr)]) }
}

async fn call(
    api: &axum::Router,
    key: &str,
    method: &str,
    uri: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    use tower::ServiceExt;
    let req = axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    let res = api.clone().oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 22).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

async fn notification(db: &TestDb, tenant: &str, recipient: &str, category: &str, urgent: bool) -> String {
    let req = NotificationRequest {
        recipient: recipient.into(),
        template: "booking".into(),
        category: category.into(),
        urgent,
        data: serde_json::json!({"name": "Anna", "date": "12 June"}),
        dedup_key: None,
        channels: None,
    };
    store::create_notification(&db.pool, tenant, &req).await.unwrap().id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_becomes_an_email_read_back_with_its_headers_and_an_in_app_event() {
    ensure_smtp();
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let key = auth::create_api_key(&db.pool, "studio", "notify", &[auth::Role::Enqueue]).await.unwrap();
    let other = auth::create_api_key(&db.pool, "rival", "notify", &[auth::Role::Enqueue]).await.unwrap();
    let api = app(ApiState::new(env.client.clone(), db.pool.clone()), 1 << 20);
    let to = address();

    // A template that does not compile is refused with the compiler's message.
    let bad = serde_json::json!({"default_locale": "en", "variants": {"en": {"subject": "Hi {{ name"}}});
    let (s, v) = call(&api, &key, "PUT", "/v1/notify/templates/booking", bad).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "template_invalid");
    assert!(v["error"]["message"].as_str().unwrap().contains("subject"), "{v}");
    let (s, v) =
        call(&api, &key, "PUT", "/v1/notify/templates/booking", serde_json::to_value(booking_template()).unwrap())
            .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        &api,
        &key,
        "PUT",
        "/v1/notify/recipients/anna",
        serde_json::json!({"email": to, "user_id": "u-anna", "locale": "en-GB", "time_zone": "Europe/London",
            "preferences": {"marketing": {"email": false}}}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) =
        call(&api, &key, "PUT", "/v1/notify/recipients/bad", serde_json::json!({"time_zone": "Mars/Base"})).await;
    assert_eq!(s, 422, "{v}");

    let event = serde_json::json!({"recipient": "anna", "template": "booking", "category": "booking",
        "data": {"name": "Anna", "date": "12 June"}, "dedup_key": "booking-42-confirmed"});
    let (s, created) = call(&api, &key, "POST", "/v1/notifications", event.clone()).await;
    assert_eq!(s, 202, "{created}");
    assert_eq!(created["deduplicated"], false);
    let id = created["id"].as_str().unwrap().to_owned();
    // Another tenant sees none of it.
    let (s, _) = call(&api, &other, "GET", &format!("/v1/notifications/{id}"), serde_json::Value::Null).await;
    assert_eq!(s, 404);
    let (s, _) = call(&api, &other, "GET", "/v1/notify/recipients/anna", serde_json::Value::Null).await;
    assert_eq!(s, 404);
    let (s, v) = call(&api, &other, "POST", "/v1/notifications", event.clone()).await;
    assert_eq!(s, 422, "the rival tenant has no recipient anna: {v}");

    let handler = SendNotification::new(db.pool.clone(), &settings(vec![relay("primary", smtp_port())]))
        .unwrap()
        .with_stream(env.client.clone());
    let mut cfg = env.config("notify", 2);
    cfg.queues = vec![QueueConfig { name: "notify".into(), concurrency: 2, fetch_batch: None, partitions: None }];
    let worker = env.worker(cfg, Registry::new().register(handler)).await;
    let mut rx = worker.events();
    n_final(&mut rx, 1, Duration::from_secs(30)).await;

    let (s, n) = call(&api, &key, "GET", &format!("/v1/notifications/{id}"), serde_json::Value::Null).await;
    assert_eq!(s, 200, "{n}");
    assert_eq!(n["status"], "sent", "{n}");
    let sends = n["sends"].as_array().unwrap();
    let email = sends.iter().find(|s| s["channel"] == "email").expect("an email send record");
    assert_eq!(email["status"], "sent", "{n}");
    assert_eq!(email["provider"], "primary");
    let message_id = email["provider_message_id"].as_str().unwrap().to_owned();
    assert!(message_id.starts_with('<') && message_id.ends_with("@studio.example>"), "{message_id}");
    let in_app = sends.iter().find(|s| s["channel"] == "in_app").expect("an in-app send record");
    assert_eq!(in_app["status"], "sent", "{n}");

    // The email as the SMTP server received it.
    let mails = mailbox(&to);
    assert_eq!(mails.len(), 1);
    let (h, raw) = &mails[0];
    assert_eq!(h["message-id"], message_id);
    assert_eq!(h["subject"], "Booking confirmed for 12 June");
    assert!(h["from"].contains("notify@studio.example"), "{h:?}");
    let unsubscribe = h["list-unsubscribe"].trim_matches(['<', '>']).to_owned();
    assert!(unsubscribe.starts_with(&format!("{UNSUBSCRIBE}/")), "{h:?}");
    assert_eq!(h["list-unsubscribe-post"], "List-Unsubscribe=One-Click");
    assert!(h["content-type"].starts_with("multipart/alternative"), "{h:?}");
    assert!(raw.contains("text/plain") && raw.contains("text/html"), "{raw}");
    assert!(raw.contains("<b>12 June</b>"), "{raw}");

    // In-app: the event on the tenant's live stream (and not on another tenant's).
    let mut conn = env.client.connection();
    let events = fleet_jobs::events::read_after(&mut conn, &env.prefix, "studio", "0", 100).await.unwrap();
    let (_, ev) = events.iter().find(|(_, e)| e.event_type == "notification.in_app").expect("an in-app event");
    assert_eq!(ev.id, id);
    let data = ev.data.as_ref().unwrap();
    assert_eq!(data["user_id"], "u-anna");
    assert_eq!(data["title"], "Booking confirmed for 12 June");
    let rival = fleet_jobs::events::read_after(&mut conn, &env.prefix, "rival", "0", 100).await.unwrap();
    assert!(rival.is_empty());

    // The event is retried: the same notification, no second job, no second email.
    let (s, again) = call(&api, &key, "POST", "/v1/notifications", event).await;
    assert_eq!(s, 202, "{again}");
    assert_eq!(again["id"], id);
    assert_eq!(again["deduplicated"], true);
    assert_eq!(env.stats("notify").await.succeeded, 1);
    assert_eq!(mailbox(&to).len(), 1);

    // The routes are described in the OpenAPI document.
    let (_, doc) = call(&api, &key, "GET", "/openapi.json", serde_json::Value::Null).await;
    for path in
        ["/v1/notifications", "/v1/notifications/{id}", "/v1/notify/templates/{name}", "/v1/notify/recipients/{id}"]
    {
        assert!(doc["paths"][path].is_object(), "{path} is described");
    }

    // One-click unsubscribe turns this category's email off for the recipient.
    let token = unsubscribe.rsplit('/').next().unwrap();
    let (s, _) = call(&api, "", "POST", &format!("/v1/notify/unsubscribe/{token}"), serde_json::Value::Null).await;
    assert_eq!(s, 200);
    let (_, r) = call(&api, &key, "GET", "/v1/notify/recipients/anna", serde_json::Value::Null).await;
    assert_eq!(r["preferences"]["booking"]["email"], false, "{r}");
    assert_eq!(r["preferences"]["marketing"]["email"], false, "{r}");
    let (s, _) =
        call(&api, "", "POST", "/v1/notify/unsubscribe/00000000000000000000000000000000", serde_json::Value::Null)
            .await;
    assert_eq!(s, 404);

    worker.shutdown().await;
    env.cleanup().await;
    db.drop_db().await;
}

/// A relay that greets with a refusal (`554`), as a relay that will not take mail does.
async fn refusing_relay() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let _ = sock.write_all(b"554 5.3.2 relay.example not accepting mail\r\n").await;
            let _ = sock.shutdown().await;
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_relay_takes_the_email_when_the_first_refuses_and_a_retried_job_sends_once() {
    ensure_smtp();
    let db = TestDb::new().await;
    let to = address();
    store::put_template(&db.pool, "studio", "booking", booking_template()).await.unwrap();
    let recipient = RecipientRequest { email: Some(to.clone()), locale: Some("fr-CA".into()), ..Default::default() };
    store::put_recipient(&db.pool, "studio", "anna", recipient).await.unwrap();
    let id = notification(&db, "studio", "anna", "booking", false).await;
    let relays = vec![relay("primary", refusing_relay().await), relay("backup", smtp_port())];
    let handler = SendNotification::new(db.pool.clone(), &settings(relays)).unwrap();

    TestJob::new().tenant("studio").perform(&handler, NotifySend { notification: id.clone() }).await.unwrap();
    let n = store::get_notification(&db.pool, Some("studio"), &id).await.unwrap();
    assert_eq!(n.status, "sent");
    assert_eq!(n.sends.len(), 1, "{n:?}");
    assert_eq!(n.sends[0].provider.as_deref(), Some("backup"), "{n:?}");
    let mails = mailbox(&to);
    assert_eq!(mails.len(), 1);
    // The recipient's locale fr-CA falls back to the template's fr variant.
    assert!(
        mails[0].0["subject"].contains("=?utf-8?") || mails[0].0["subject"].starts_with("Réservation"),
        "{:?}",
        mails[0].0
    );
    assert_eq!(mails[0].0["message-id"], n.sends[0].provider_message_id.clone().unwrap());

    // The job runs again (a lost acknowledgement): nothing is sent twice.
    TestJob::new().tenant("studio").perform(&handler, NotifySend { notification: id.clone() }).await.unwrap();
    assert_eq!(mailbox(&to).len(), 1);
    // Another tenant's job cannot send this tenant's notification.
    let r = TestJob::new().tenant("rival").perform(&handler, NotifySend { notification: id.clone() }).await;
    fleet_kit::testing::assert_give_up(&r);

    // Every relay refusing: the send is recorded as failed with each relay's answer.
    let only_refusing =
        SendNotification::new(db.pool.clone(), &settings(vec![relay("primary", refusing_relay().await)])).unwrap();
    let id2 = notification(&db, "studio", "anna", "booking", false).await;
    let r = TestJob::new()
        .tenant("studio")
        .attempt(1, 8)
        .perform(&only_refusing, NotifySend { notification: id2.clone() })
        .await;
    assert!(fleet_kit::testing::assert_retry(&r).contains("554"), "{r:?}");
    let n = store::get_notification(&db.pool, Some("studio"), &id2).await.unwrap();
    assert_eq!(n.sends[0].status, "failed");
    assert!(n.sends[0].error.as_deref().unwrap().contains("primary"), "{n:?}");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hours_defer_urgent_goes_through_and_preferences_skip_a_channel() {
    ensure_smtp();
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let to = address();
    store::put_template(&db.pool, "studio", "booking", booking_template()).await.unwrap();
    // Quiet from an hour ago to an hour from now on the recipient's clock (UTC+14).
    let zone = "Pacific/Kiritimati";
    let local = chrono::Utc::now().with_timezone(&fleet_notify::quiet::zone(zone).unwrap());
    let minute = chrono::Timelike::hour(&local) * 60 + chrono::Timelike::minute(&local);
    let hhmm = |m: u32| fleet_notify::quiet::QuietHours::format(m % 1440);
    let recipient = RecipientRequest {
        email: Some(to.clone()),
        user_id: Some("u-anna".into()),
        time_zone: Some(zone.into()),
        quiet_hours: Some(store::QuietHoursView { start: hhmm(minute + 1440 - 60), end: hhmm(minute + 60) }),
        preferences: BTreeMap::from([("marketing".into(), BTreeMap::from([("email".into(), false)]))]),
        ..Default::default()
    };
    store::put_recipient(&db.pool, "studio", "anna", recipient).await.unwrap();
    let handler = SendNotification::new(db.pool.clone(), &settings(vec![relay("primary", smtp_port())]))
        .unwrap()
        .with_stream(env.client.clone());

    // Not urgent: deferred to the window's end (about an hour), nothing sent, no attempt spent.
    let id = notification(&db, "studio", "anna", "booking", false).await;
    let r = TestJob::new().tenant("studio").perform(&handler, NotifySend { notification: id.clone() }).await;
    let wait = assert_snooze(&r);
    assert!(wait >= Duration::from_secs(59 * 60) && wait <= Duration::from_secs(60 * 60 + 2), "{wait:?}");
    let n = store::get_notification(&db.pool, Some("studio"), &id).await.unwrap();
    assert_eq!(n.status, "deferred");
    let until = n.deferred_until.expect("when it will be sent");
    let expected = chrono::Utc::now() + chrono::Duration::from_std(wait).unwrap();
    assert!((until - expected).num_seconds().abs() <= 2, "{until} vs {expected}");
    assert!(n.sends.is_empty(), "{n:?}");
    assert!(mailbox(&to).is_empty());

    // Urgent: sent now.
    let urgent = notification(&db, "studio", "anna", "booking", true).await;
    TestJob::new().tenant("studio").perform(&handler, NotifySend { notification: urgent.clone() }).await.unwrap();
    let n = store::get_notification(&db.pool, Some("studio"), &urgent).await.unwrap();
    assert_eq!(n.status, "sent", "{n:?}");
    assert_eq!(mailbox(&to).len(), 1);

    // Email turned off for marketing: skipped and recorded; in-app still goes out.
    let promo = notification(&db, "studio", "anna", "marketing", true).await;
    TestJob::new().tenant("studio").perform(&handler, NotifySend { notification: promo.clone() }).await.unwrap();
    let n = store::get_notification(&db.pool, Some("studio"), &promo).await.unwrap();
    let email = n.sends.iter().find(|s| s.channel == "email").unwrap();
    assert_eq!(email.status, "skipped");
    assert!(email.error.as_deref().unwrap().contains("marketing"), "{email:?}");
    assert_eq!(n.sends.iter().find(|s| s.channel == "in_app").unwrap().status, "sent");
    assert_eq!(n.status, "sent");
    assert_eq!(mailbox(&to).len(), 1, "no marketing email");
    env.cleanup().await;
    db.drop_db().await;
}

/// A Twilio-style messages API: account `ACdown` answers 503; `ACup` (token `tok-up`)
/// takes the message and answers its sid. Returns its base URL and what `ACup` took.
async fn sms_provider() -> (String, std::sync::Arc<std::sync::Mutex<Vec<BTreeMap<String, String>>>>) {
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    type Taken = std::sync::Arc<std::sync::Mutex<Vec<BTreeMap<String, String>>>>;
    async fn messages(
        State(taken): State<Taken>,
        Path(account): Path<String>,
        headers: HeaderMap,
        body: String,
    ) -> (StatusCode, String) {
        use base64::Engine;
        if account == "ACdown" {
            return (StatusCode::SERVICE_UNAVAILABLE, "down".into());
        }
        let auth = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("ACup:tok-up"));
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(auth.as_str()) {
            return (StatusCode::UNAUTHORIZED, r#"{"code":20003}"#.into());
        }
        let form: BTreeMap<String, String> = url::form_urlencoded::parse(body.as_bytes()).into_owned().collect();
        taken.lock().unwrap().push(form);
        let sid = format!("SM{}", uuid::Uuid::now_v7().simple());
        (StatusCode::CREATED, serde_json::json!({"sid": sid, "status": "queued"}).to_string())
    }
    let taken: Taken = Default::default();
    let app = axum::Router::new()
        .route("/2010-04-01/Accounts/{account}/Messages.json", axum::routing::post(messages))
        .with_state(taken.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), taken)
}

/// A Twilio status callback to `/v1/intake/twilio`, signed as Twilio signs it.
async fn status_callback(api: &axum::Router, sid: &str, status: &str, signed_with: &str) -> u16 {
    use base64::Engine;
    use hmac::Mac;
    use tower::ServiceExt;
    let params = BTreeMap::from([("MessageSid", sid), ("MessageStatus", status), ("AccountSid", "ACup")]);
    let mut signed = "https://fleet.example.com/v1/intake/twilio".to_owned();
    for (k, v) in &params {
        signed.push_str(k);
        signed.push_str(v);
    }
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(signed_with.as_bytes()).unwrap();
    mac.update(signed.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let body: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/v1/intake/twilio")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", signature)
        .header("i-twilio-idempotency-token", uuid::Uuid::now_v7().to_string())
        .body(axum::body::Body::from(body))
        .unwrap();
    api.clone().oneshot(req).await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sms_fails_over_to_the_second_account_and_status_callbacks_move_its_record_forward() {
    let env = TestEnv::new().await;
    let db = TestDb::new().await;
    let (base, taken) = sms_provider().await;
    let mut template = booking_template();
    template.variants.get_mut("en").unwrap().sms = Some("{{ name }}, booking confirmed for {{ date }}".into());
    store::put_template(&db.pool, "studio", "booking", template).await.unwrap();
    let recipient = RecipientRequest { phone: Some("+447911123456".into()), ..Default::default() };
    store::put_recipient(&db.pool, "studio", "anna", recipient).await.unwrap();
    let account = |name: &str, sid: &str, token: &str| -> fleet_notify::jobs::SmsAccount {
        toml::from_str(&format!(
            "name = {name:?}\napi_base = {base:?}\naccount_sid = {sid:?}\nauth_token = {token:?}\nfrom = \"+15005550006\"\nstatus_callback = \"https://fleet.example.com/v1/intake/twilio\""
        ))
        .unwrap()
    };
    let mut s = settings(Vec::new());
    s.from = None;
    s.sms = vec![account("main", "ACdown", "tok-down"), account("backup", "ACup", "tok-up")];
    // The provider is on loopback: refused unless allowed.
    assert!(SendNotification::new(db.pool.clone(), &s).unwrap_err().contains("private"));
    s.allow = vec!["127.0.0.0/8".into()];
    let handler = SendNotification::new(db.pool.clone(), &s).unwrap();

    let id = notification(&db, "studio", "anna", "booking", false).await;
    TestJob::new().tenant("studio").perform(&handler, NotifySend { notification: id.clone() }).await.unwrap();
    let n = store::get_notification(&db.pool, Some("studio"), &id).await.unwrap();
    assert_eq!(n.status, "sent", "{n:?}");
    let sms = n.sends.iter().find(|s| s.channel == "sms").unwrap();
    assert_eq!((sms.provider.as_deref(), sms.status.as_str()), (Some("backup"), "queued"), "{n:?}");
    let sid = sms.provider_message_id.clone().unwrap();
    {
        let taken = taken.lock().unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0]["To"], "+447911123456");
        assert_eq!(taken[0]["Body"], "Anna, booking confirmed for 12 June");
        assert_eq!(taken[0]["StatusCallback"], "https://fleet.example.com/v1/intake/twilio");
    }

    // Status callbacks through the intake, verified, applied in order only.
    let provider: fleet_scheduler::api::intake::IntakeProvider = toml::from_str(
        "scheme = \"twilio\"\nsecrets = [\"tok-up\"]\npublic_url = \"https://fleet.example.com\"\ntenant = \"studio\"",
    )
    .unwrap();
    let api = app(
        ApiState::new(env.client.clone(), db.pool.clone()).with_intake(BTreeMap::from([("twilio".into(), provider)])),
        1 << 20,
    );
    let status =
        || async { store::get_notification(&db.pool, Some("studio"), &id).await.unwrap().sends[0].status.clone() };
    assert_eq!(status_callback(&api, &sid, "delivered", "forged").await, 401);
    assert_eq!(status().await, "queued");
    assert_eq!(status_callback(&api, &sid, "delivered", "tok-up").await, 202);
    assert_eq!(status().await, "delivered");
    // A late "sent" does not move it back.
    assert_eq!(status_callback(&api, &sid, "sent", "tok-up").await, 202);
    assert_eq!(status().await, "delivered");
    env.cleanup().await;
    db.drop_db().await;
}

fn ensure_push_service() -> String {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/push-service.sh");
        let out = std::process::Command::new("bash").arg(script).output().expect("run scripts/push-service.sh");
        assert!(out.status.success(), "scripts/push-service.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    });
    let port = std::env::var("FLEET_TEST_PUSH_PORT").unwrap_or_else(|_| "10080".into());
    format!("http://127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_is_decrypted_by_an_independent_receiver_and_a_gone_subscription_is_removed() {
    use base64::Engine;
    let service = ensure_push_service();
    let db = TestDb::new().await;
    let http = fleet_net::ClientOptions::default().client(0).unwrap();
    let subscribe = |gone: bool| {
        let http = http.clone();
        let service = service.clone();
        async move {
            let res = http
                .post(format!("{service}/subscribe"))
                .body(serde_json::json!({"gone": gone}).to_string())
                .send()
                .await;
            serde_json::from_slice::<serde_json::Value>(&res.unwrap().bytes().await.unwrap()).unwrap()
        }
    };
    let (live, gone) = (subscribe(false).await, subscribe(true).await);
    let mut template = booking_template();
    let en = template.variants.get_mut("en").unwrap();
    en.push_title = Some("Booking confirmed".into());
    en.push_body = Some("{{ name }}, see you on {{ date }}".into());
    store::put_template(&db.pool, "studio", "booking", template).await.unwrap();
    store::put_recipient(&db.pool, "studio", "anna", RecipientRequest::default()).await.unwrap();
    for s in [&live, &gone] {
        let (e, k) = (s["endpoint"].as_str().unwrap(), &s["keys"]);
        store::add_push_subscription(
            &db.pool,
            "studio",
            "anna",
            e,
            k["p256dh"].as_str().unwrap(),
            k["auth"].as_str().unwrap(),
        )
        .await
        .unwrap();
    }
    let mut s = settings(Vec::new());
    s.from = None;
    s.allow = vec!["127.0.0.0/8".into()];
    s.vapid_private_key = Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand_key()));
    s.vapid_subject = Some("mailto:ops@studio.example".into());
    let handler = SendNotification::new(db.pool.clone(), &s).unwrap();

    let id = notification(&db, "studio", "anna", "booking", true).await;
    TestJob::new().tenant("studio").perform(&handler, NotifySend { notification: id.clone() }).await.unwrap();
    let n = store::get_notification(&db.pool, Some("studio"), &id).await.unwrap();
    let push = n.sends.iter().find(|s| s.channel == "push").expect("a push send record");
    assert_eq!((push.status.as_str(), push.provider.as_deref()), ("sent", Some("webpush")), "{n:?}");

    // The receiver decrypted it with the subscription's private key (http_ece) after
    // checking the VAPID token.
    let sid = live["endpoint"].as_str().unwrap().rsplit('/').next().unwrap().to_owned();
    let res = http.get(format!("{service}/messages/{sid}")).send().await.unwrap();
    let got: serde_json::Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(got.as_array().map(Vec::len), Some(1), "{got}");
    assert_eq!(got[0]["urgency"], "high");
    let payload: serde_json::Value = serde_json::from_str(got[0]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["title"], "Booking confirmed");
    assert_eq!(payload["body"], "Anna, see you on 12 June");
    assert_eq!(payload["notification"], id.as_str());
    // The subscription that answered 410 is gone from the recipient.
    let r = store::get_recipient(&db.pool, "studio", "anna").await.unwrap();
    assert_eq!(r.push_subscriptions, vec![live["endpoint"].as_str().unwrap().to_owned()]);
    db.drop_db().await;
}

/// A push endpoint is a tenant's input: one naming a private address literally (here the
/// cloud metadata address) is refused before any request, and the send says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_endpoint_at_a_private_address_is_refused() {
    use base64::Engine;
    let service = ensure_push_service();
    let db = TestDb::new().await;
    let http = fleet_net::ClientOptions::default().client(0).unwrap();
    let res = http.post(format!("{service}/subscribe")).body("{}").send().await.unwrap();
    let real: serde_json::Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    let mut template = booking_template();
    let en = template.variants.get_mut("en").unwrap();
    en.push_title = Some("Booking confirmed".into());
    store::put_template(&db.pool, "studio", "booking", template).await.unwrap();
    store::put_recipient(&db.pool, "studio", "anna", RecipientRequest::default()).await.unwrap();
    let k = &real["keys"];
    store::add_push_subscription(
        &db.pool,
        "studio",
        "anna",
        "http://169.254.169.254/latest/push/1",
        k["p256dh"].as_str().unwrap(),
        k["auth"].as_str().unwrap(),
    )
    .await
    .unwrap();
    let mut s = settings(Vec::new());
    s.from = None;
    s.allow = vec!["127.0.0.0/8".into()];
    s.vapid_private_key = Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand_key()));
    s.vapid_subject = Some("mailto:ops@studio.example".into());
    let handler = SendNotification::new(db.pool.clone(), &s).unwrap();
    let id = notification(&db, "studio", "anna", "booking", true).await;
    let _ = TestJob::new().tenant("studio").perform(&handler, NotifySend { notification: id.clone() }).await;
    let n = store::get_notification(&db.pool, Some("studio"), &id).await.unwrap();
    let push = n.sends.iter().find(|s| s.channel == "push").expect("a push send record");
    assert_eq!(push.status, "failed", "{n:?}");
    assert!(push.error.as_deref().unwrap_or("").contains("private address"), "{n:?}");
    db.drop_db().await;
}

fn rand_key() -> [u8; 32] {
    // A P-256 scalar: any 32 bytes below the group order; these random bytes are, but
    // for a chance of about 2^-32.
    let mut k: [u8; 32] = rand::random();
    k[0] &= 0x7f;
    k
}
