//! Notifications end to end: the API (recipients, templates, `POST /v1/notifications`,
//! a notification's send records), the `notify.send` job on a worker, email through a
//! real SMTP server (aiosmtpd, `scripts/smtp.sh`) read back from its Maildir, failover
//! from a relay that refuses to the next, dedup of a retried event and of a retried job,
//! quiet hours deferring in the recipient's zone, urgent sends going through them,
//! preferences skipping a channel, and in-app events on the tenant's live stream.

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
