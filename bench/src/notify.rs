//! `fleet-bench run notify`: event → email accepted by a real SMTP server. Each event is
//! what `POST /v1/notifications` does (the notification recorded in PostgreSQL, its
//! `notify.send` job enqueued), sent at a steady rate to one in-process worker whose
//! relay is the local SMTP server of `scripts/smtp.sh` (`FLEET_BENCH_SMTP_PORT`, default
//! 10025); the time is from the start of the event to the job's success, which follows
//! the relay's `250` for the message. Prints p50/p99/max.
//!
//! `FLEET_BENCH_SMTP=postfix` sends through the Postfix of `scripts/postfix.sh` instead:
//! STARTTLS and AUTH on 127.0.0.1:10587 (the Dovecot user `FLEET_BENCH_SMTP_USER`, default
//! `bench`, password the same, written into `FLEET_BENCH_DOVECOT_DIR`, default
//! `/tmp/fleet-dovecot`), trusting the test CA of `scripts/dovecot.sh`, to that user's
//! mailbox at `fleet.test` (Postfix delivers into it over LMTP after its `250`, so the
//! deliveries go on for a while after the run; remove the mailbox once they are done).

use fleet_jobs::catalogue::NotifySend;
use fleet_jobs::{EnqueueOptions, JobId};
use fleet_notify::jobs::{NotifySettings, SendNotification};
use fleet_notify::store::{self, NotificationRequest, RecipientRequest, TemplateRequest};
use fleet_notify::template::Variant;
use fleet_worker::{QueueConfig, Registry, WorkerConfig};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Runs `count` events at `rate` per second and prints the latencies.
pub async fn run(client: fleet_jobs::Client, rate: u64, count: usize) {
    let base = std::env::var("FLEET_BENCH_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let port: u16 = std::env::var("FLEET_BENCH_SMTP_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(10025);
    let name = format!("fleet_bench_notify_{}", std::process::id());
    let mut admin =
        <sqlx::PgConnection as sqlx::Connection>::connect(&format!("{base}/postgres")).await.expect("PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.expect("create db");
    let db = fleet_worker::db::connect_and_migrate(&format!("{base}/{name}")).await.expect("migrate");

    let variant = Variant {
        subject: Some("Booking confirmed for {{ date }}".into()),
        text: Some("Hello {{ name }}, see you on {{ date }}.".into()),
        html: Some("<p>Hello {{ name }}, see you on <b>{{ date }}</b>.</p>".into()),
        ..Variant::default()
    };
    let template = TemplateRequest { default_locale: "en".into(), variants: [("en".to_owned(), variant)].into() };
    store::put_template(&db, "bench", "booking", template).await.expect("template");
    let postfix = std::env::var("FLEET_BENCH_SMTP").is_ok_and(|v| v == "postfix");
    let user = std::env::var("FLEET_BENCH_SMTP_USER").unwrap_or_else(|_| "bench".into());
    let dovecot = std::env::var("FLEET_BENCH_DOVECOT_DIR").unwrap_or_else(|_| "/tmp/fleet-dovecot".into());
    if postfix {
        std::fs::write(format!("{dovecot}/users/{user}"), format!("{user}:{{PLAIN}}{user}::::::\n"))
            .expect("the bench's Dovecot user (is scripts/postfix.sh running?)");
    }
    let to = if postfix { format!("{user}@fleet.test") } else { "bench@couples.example".into() };
    let recipient = RecipientRequest { email: Some(to), ..Default::default() };
    store::put_recipient(&db, "bench", "anna", recipient).await.expect("recipient");

    let (relay, port) = if postfix {
        let ca = format!("{dovecot}/tls/ca.pem");
        let port: u16 = std::env::var("FLEET_BENCH_SMTP_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(10587);
        let text = format!(
            "name = \"postfix\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"starttls\"\nuser = {user:?}\npassword = {user:?}\nca_file = {ca:?}"
        );
        (toml::from_str(&text).expect("relay"), port)
    } else {
        (toml_relay(port), port)
    };
    let settings = NotifySettings {
        smtp: vec![relay],
        from: Some("Bench <notify@bench.example>".into()),
        unsubscribe_url: Some("https://bench.example/u".into()),
        ..NotifySettings::default()
    };
    let handler = SendNotification::new(db.clone(), &settings).expect("settings");
    let config = WorkerConfig {
        redis_url: crate::adapter::url(),
        prefix: client.prefix().to_owned(),
        listen: None,
        queues: vec![QueueConfig { name: "notify".into(), concurrency: 50, fetch_batch: None, partitions: None }],
        ..WorkerConfig::default()
    };
    let worker = fleet_worker::start(config, Registry::new().register(handler)).await.expect("worker");
    let mut events = worker.events();
    let done = tokio::spawn(async move {
        let mut at = HashMap::new();
        while at.len() < count {
            match tokio::time::timeout(Duration::from_secs(60), events.recv()).await {
                Ok(Ok(e)) if matches!(e.outcome, fleet_jobs::backend::Outcome::Succeeded) => {
                    at.insert(e.id, Instant::now());
                }
                Ok(Ok(_)) => {}
                _ => break,
            }
        }
        at
    });

    let mut started = Vec::with_capacity(count);
    let t0 = tokio::time::Instant::now();
    let every = Duration::from_micros(1_000_000 / rate.max(1));
    for i in 0..count {
        tokio::time::sleep_until(t0 + every * i as u32).await;
        let t = Instant::now();
        let req = NotificationRequest {
            recipient: "anna".into(),
            template: "booking".into(),
            category: "booking".into(),
            urgent: true,
            data: serde_json::json!({"name": "Anna", "date": "12 June"}),
            dedup_key: Some(format!("event-{i}")),
            channels: None,
        };
        let created = store::create_notification(&db, "bench", &req).await.expect("notification");
        let opts =
            EnqueueOptions { tenant: Some("bench".into()), id: Some(JobId(created.id.clone())), ..Default::default() };
        client.enqueue_with(&NotifySend { notification: created.id.clone() }, opts).await.expect("enqueue");
        started.push((created.id, t));
    }
    let at = done.await.expect("events");
    let mut lat: Vec<f64> =
        started.iter().filter_map(|(id, t)| at.get(id).map(|a| (*a - *t).as_secs_f64() * 1000.0)).collect();
    lat.sort_by(f64::total_cmp);
    worker.shutdown().await;
    db.close().await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)"))).execute(&mut admin).await;
    if postfix {
        // Postfix delivers into Dovecot over LMTP after each 250: the mailbox fills on.
        println!("  (the {count} emails go on into {dovecot}/mail/{user}: remove it once delivered)");
    }
    let pct = |p: f64| lat.get(((lat.len().max(1) - 1) as f64 * p).round() as usize).copied().unwrap_or(f64::NAN);
    println!(
        "notify: {} of {count} events at {rate}/s became emails accepted by the SMTP server on 127.0.0.1:{port}{}; event-to-accepted p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        if postfix { " (Postfix, STARTTLS + AUTH)" } else { "" },
        pct(0.5),
        pct(0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
}

fn toml_relay(port: u16) -> fleet_notify::jobs::SmtpRelay {
    let text = format!("name = \"local\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"");
    toml::from_str(&text).expect("relay")
}
