//! Calendar figures for BENCHMARKS.md (a program that prints them; not run by CI):
//!
//! `cargo test --release -p fleet-tests --test calendar -- --ignored --nocapture bench`
//!
//! A 5,000-event calendar on the local Radicale (a photographer's two years in Europe/London:
//! 4,950 bookings, about 20 of them double-booked, and 50 recurring series), synced through
//! the `calendar.sync` handler into PostgreSQL: the full sync, an incremental one after 10 changes, one with nothing changed,
//! the expansion rate of the calendar core, and the time from a change on the CalDAV server
//! to the conflict event in the tenant's live stream, through a running worker.
//!
//! Radicale's own upload path (one PUT per event, or a whole-calendar PUT it splits) takes
//! many minutes for 5,000 events, so the items are written straight into Radicale's storage
//! folder (`FLEET_RADICALE_STORAGE`, default the one `scripts/radicale.sh` configures), one
//! file per event as Radicale itself stores them; every change after that goes through CalDAV.
//!
//! Radicale then takes minutes to index the folder on its first read. With
//! `FLEET_BENCH_COLLECTION=<name>` the bench uses (and keeps) the collection `<name>`: a
//! later run finds Radicale's cache of it warm, rewrites only the events an earlier run
//! changed and removes the event it added, so runs can alternate (two builds, same server).
//! `FLEET_BENCH_FULL_SYNCS=<n>` (default 1) measures the full sync `n` times, each into a
//! new source of a new supplier in the same database.

use super::{KEY, setup, setup_at, wrap};
use fleet_accounts::outbox::Relay;
use fleet_accounts::secrets::SecretBox;
use fleet_calendar::{ExpandOptions, decode, expand, parse};
use fleet_jobs::catalogue::CalendarSync;
use fleet_jobs::events;
use fleet_tests::TestEnv;
use fleet_worker::Registry;
use std::time::{Duration, Instant};

const EVENTS: usize = 5000;
/// Recurring series among them.
const SERIES: usize = 50;

fn storage_root() -> String {
    std::env::var("FLEET_RADICALE_STORAGE").unwrap_or_else(|_| "/tmp/fleet-services/radicale/collections".to_owned())
}

/// Event `i`, a photographer's two years: 4,950 single bookings in seven 90-minute slots a
/// day (07:00, 09:00, ... 19:00, so they do not overlap), of which every 250th is double-booked
/// on purpose (the slot of the booking before it, 30 minutes later), and 50 series of studio
/// hours at 05:00 every eight weeks, each on its own day (they never overlap either).
fn event(i: usize) -> String {
    let base = chrono::NaiveDate::from_ymd_opt(2027, 1, 1).unwrap();
    let (day, start, end, rule) = if i < SERIES {
        (base + chrono::Days::new(i as u64), 5 * 60, 6 * 60, "RRULE:FREQ=WEEKLY;INTERVAL=8\r\n")
    } else {
        let n = i - SERIES;
        let (slot, offset) = if n % 250 == 249 { (n - 1, 30) } else { (n, 0) };
        let start = (7 + 2 * (slot / 730) as u32) * 60 + offset;
        (base + chrono::Days::new((slot % 730) as u64), start, start + 90, "")
    };
    let d = day.format("%Y%m%d");
    let (sh, sm, eh, em) = (start / 60, start % 60, end / 60, end % 60);
    format!(
        "BEGIN:VEVENT\r\nUID:bench-{i}@fleet\r\nDTSTAMP:20261201T000000Z\r\n\
         DTSTART;TZID=Europe/London:{d}T{sh:02}{sm:02}00\r\nDTEND;TZID=Europe/London:{d}T{eh:02}{em:02}00\r\n\
         {rule}SUMMARY:Booking {i}\r\nEND:VEVENT\r\n"
    )
}

/// Where a sync's time went, from its report: the fetch (the CalDAV server and the transfer),
/// Fleet's own computation (parse, expand and compare, conflict scan), and the rest of the
/// apply, which is PostgreSQL.
fn split(report: &fleet_calendar::jobs::SyncReport) -> String {
    let fleet = report.parse_ms + report.expand_ms + report.conflicts_ms;
    format!(
        "fetch {} ms, Fleet {fleet} ms (parse {}, expand+compare {}, conflict scan {}), apply in PostgreSQL {} ms",
        report.fetch_ms,
        report.parse_ms,
        report.expand_ms,
        report.conflicts_ms,
        report.apply_ms.saturating_sub(fleet)
    )
}

/// The load average, as `/proc/loadavg` says it (the machine is shared).
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A new source of a new supplier `supplier` on the same collection (same database), for
/// another first sync.
async fn another_source(s: &super::Setup, supplier: &str) -> String {
    let source = format!("cal_{}", uuid::Uuid::now_v7().simple());
    sqlx::query("INSERT INTO calendar_suppliers (tenant, supplier, all_day_busy, time_zone) VALUES ('t1', $1, false, 'Europe/London')")
        .bind(supplier)
        .execute(&s.db.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO calendar_sources (id, tenant, supplier, kind, url, username, secret) VALUES ($1, 't1', $2, 'caldav', $3, 'fleet', $4)",
    )
    .bind(&source)
    .bind(supplier)
    .bind(s.cal.collection().as_str())
    .bind(SecretBox::new(KEY).unwrap().seal(&source, "fleet").unwrap())
    .execute(&s.db.pool)
    .await
    .unwrap();
    source
}

#[tokio::test]
#[ignore]
async fn bench_sync_5000_events() {
    let kept = std::env::var("FLEET_BENCH_COLLECTION").ok().filter(|c| !c.is_empty());
    let mut s = match &kept {
        Some(name) => setup_at("bench-supplier", name).await,
        None => setup("bench-supplier").await,
    };
    let collection = s.cal.collection().path().trim_matches('/').to_owned();
    let dir = format!("{}/collection-root/{collection}", storage_root());
    assert!(
        std::path::Path::new(&dir).is_dir(),
        "Radicale's storage folder {dir} not found: set FLEET_RADICALE_STORAGE"
    );
    for i in 0..EVENTS {
        let (path, body) = (format!("{dir}/bench-{i}.ics"), wrap(&event(i)));
        // An unchanged file keeps Radicale's cache of it (a kept collection).
        if std::fs::read_to_string(&path).ok().as_deref() != Some(body.as_str()) {
            std::fs::write(path, body).unwrap();
        }
    }
    // What an earlier run of a kept collection added.
    let _ = std::fs::remove_file(format!("{dir}/clash.ics"));
    println!("load average at the start: {}", load());

    // Radicale parses and caches each item on first read (its PUT path does that on upload):
    // one untimed pass with a patient client so the measured sync meets a warm server.
    let started = Instant::now();
    let patient = fleet_calendar::caldav::CalDavClient::new(
        s.cal.collection().as_ref(),
        Some("fleet".into()),
        Some("fleet".to_owned().into()),
        fleet_calendar::caldav::ClientOptions { timeout: Duration::from_secs(900), ..Default::default() },
    )
    .unwrap();
    let warm = fleet_calendar::caldav::pull_changes(&patient, &Default::default()).await.unwrap();
    assert_eq!(warm.changed.len(), EVENTS);
    println!("Radicale's first read of the folder (cache build, not Fleet): {:.1} s", started.elapsed().as_secs_f64());

    let started = Instant::now();
    let full = s.sync().await;
    let full_time = started.elapsed();
    println!(
        "full sync of {EVENTS} events: {:.2} s ({}; {} events, {} occurrences written, {} conflicts)",
        full_time.as_secs_f64(),
        split(&full),
        full.events_written,
        full.occurrences_written,
        full.conflicts_detected
    );
    assert_eq!(full.events_written, EVENTS);
    let rounds: usize = std::env::var("FLEET_BENCH_FULL_SYNCS").ok().and_then(|n| n.parse().ok()).unwrap_or(1);
    for round in 2..=rounds {
        let source = another_source(&s, &format!("bench-supplier-{round}")).await;
        let started = Instant::now();
        let again = s.handler.sync_source(&source).await.unwrap();
        println!(
            "full sync of {EVENTS} events, run {round}: {:.2} s ({}; load {})",
            started.elapsed().as_secs_f64(),
            split(&again),
            load()
        );
        assert_eq!(again.events_written, EVENTS);
    }

    // The fetch alone, as it was done before (a sync report of hrefs and ETags, then
    // `calendar-multiget`s of 100) and as `pull_changes` does it now (the bodies inside the
    // sync report), alternating on the same warm server.
    for round in 1..=3 {
        let started = Instant::now();
        let listed = s.cal.sync_collection(None).await.unwrap();
        let fleet_calendar::caldav::SyncOutcome::Changes { changed, .. } = listed else { panic!("{listed:?}") };
        let hrefs: Vec<String> = changed.into_iter().map(|c| c.href).collect();
        let objects = s.cal.multiget(&hrefs).await.unwrap();
        let before = started.elapsed();
        assert_eq!(objects.len(), EVENTS);
        let started = Instant::now();
        let pull = fleet_calendar::caldav::pull_changes(&s.cal, &Default::default()).await.unwrap();
        let after = started.elapsed();
        assert_eq!(pull.changed.len(), EVENTS);
        println!(
            "fetch of {EVENTS} objects, round {round}: sync report + calendar-multiget {:.2} s, bodies in the sync report {:.2} s (load {})",
            before.as_secs_f64(),
            after.as_secs_f64(),
            load()
        );
    }

    let started = Instant::now();
    let idle = s.sync().await;
    println!("incremental sync, nothing changed: {:.3} s (mode {})", started.elapsed().as_secs_f64(), idle.mode);

    s.put("bench-0", &wrap(&event(0).replace("SUMMARY:Booking", "SUMMARY:Moved booking"))).await;
    let started = Instant::now();
    let one = s.sync().await;
    println!(
        "incremental sync, 1 of {EVENTS} changed: {:.3} s ({}; {} fetched, {} written, {} occurrences written, mode {})",
        started.elapsed().as_secs_f64(),
        split(&one),
        one.fetched,
        one.events_written,
        one.occurrences_written,
        one.mode
    );
    assert_eq!(one.events_written, 1);

    for i in 0..10 {
        s.put(&format!("bench-{i}"), &wrap(&event(i).replace("SUMMARY:Booking", "SUMMARY:Rebooked"))).await;
    }
    let started = Instant::now();
    let incremental = s.sync().await;
    println!(
        "incremental sync, 10 of {EVENTS} changed: {:.3} s ({}; {} fetched, {} written, {} occurrences written, mode {})",
        started.elapsed().as_secs_f64(),
        split(&incremental),
        incremental.fetched,
        incremental.events_written,
        incremental.occurrences_written,
        incremental.mode
    );
    assert_eq!(incremental.events_written, 10);

    // The calendar core alone: parse + expand the 5,000 events over 24 months.
    let mut text = String::new();
    for i in 0..EVENTS {
        text.push_str(&wrap(&event(i)));
    }
    let options =
        ExpandOptions::window("2027-01-01T00:00:00Z".parse().unwrap(), "2029-01-01T00:00:00Z".parse().unwrap());
    let calendar = parse(&decode(text.as_bytes()).unwrap());
    let rounds = 5;
    let started = Instant::now();
    let mut occurrences = 0;
    for _ in 0..rounds {
        occurrences = expand(&calendar, &options).occurrences.len();
    }
    let per_round = started.elapsed().as_secs_f64() / rounds as f64;
    println!(
        "expansion: {occurrences} occurrences from {EVENTS} events in {:.1} ms: {:.0} occurrences/s",
        per_round * 1000.0,
        occurrences as f64 / per_round
    );

    // Change → conflict event, through a running worker and the live stream.
    let env = TestEnv::new().await;
    s.handler = s.handler.clone().with_relay(Relay::new(s.db.pool.clone(), env.client.clone()));
    let worker = env.worker(env.config("calendar", 1), Registry::new().register(s.handler.clone())).await;
    let mut conn = env.client.connection();
    let after = events::latest_id(&mut conn, env.client.prefix(), "t1").await.unwrap();
    // A new event overlapping bench-781 (2027-01-02 09:00-10:30 London).
    let clash = "BEGIN:VEVENT\r\nUID:clash@fleet\r\nDTSTAMP:20261201T000000Z\r\n\
                 DTSTART;TZID=Europe/London:20270102T090000\r\nDTEND;TZID=Europe/London:20270102T100000\r\n\
                 SUMMARY:Double booked\r\nEND:VEVENT\r\n";
    let started = Instant::now();
    s.put("clash", &wrap(clash)).await;
    env.client.enqueue(&CalendarSync { source_id: s.source.clone() }).await.unwrap();
    let latency = loop {
        let read = events::read_after(&mut conn, env.client.prefix(), "t1", &after, 100).await.unwrap();
        if read.iter().any(|(_, e)| e.event_type == "calendar.conflict.detected") {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no conflict event within 120 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    println!(
        "change on the CalDAV server → calendar.conflict.detected in the live stream: {:.2} s \
         (PUT, on-demand sync of the {EVENTS}-event calendar, relay)",
        latency.as_secs_f64()
    );
    worker.shutdown().await;
    env.cleanup().await;
    println!("load average at the end: {}", load());
    if kept.is_some() {
        s.db.drop_db().await;
    } else {
        s.finish().await;
    }
}
