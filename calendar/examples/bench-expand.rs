//! Prints how many occurrences per second `fleet-calendar` expands (decode + parse + expand).
//!
//! `cargo run --release -p fleet-calendar --example bench-expand`

use chrono::{TimeZone, Utc};
use fleet_calendar::{ExpandOptions, decode, expand, parse};
use std::fmt::Write;
use std::time::Instant;

fn main() {
    // 500 series in three zones: daily, weekly with EXDATEs and an override, monthly by weekday.
    let mut ics = String::from("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Fleet//bench//EN\r\n");
    let zones = ["Europe/London", "America/New_York", "Australia/Sydney"];
    for i in 0..500 {
        let zone = zones[i % 3];
        let rule = match i % 3 {
            0 => "FREQ=DAILY",
            1 => "FREQ=WEEKLY;BYDAY=SA,SU",
            _ => "FREQ=MONTHLY;BYDAY=2SA",
        };
        write!(
            ics,
            "BEGIN:VEVENT\r\nUID:bench-{i}@fleet\r\nDTSTAMP:20260101T000000Z\r\nDTSTART;TZID={zone}:20260103T{:02}0000\r\n\
             DTEND;TZID={zone}:20260103T{:02}3000\r\nRRULE:{rule}\r\nEXDATE;TZID={zone}:20260110T{:02}0000\r\nSUMMARY:Series {i}\r\nEND:VEVENT\r\n",
            8 + i % 10,
            9 + i % 10,
            8 + i % 10
        )
        .unwrap();
        write!(
            ics,
            "BEGIN:VEVENT\r\nUID:bench-{i}@fleet\r\nDTSTAMP:20260101T000000Z\r\nRECURRENCE-ID;TZID={zone}:20260117T{:02}0000\r\n\
             DTSTART;TZID={zone}:20260117T200000\r\nDTEND;TZID={zone}:20260117T210000\r\nEND:VEVENT\r\n",
            8 + i % 10
        )
        .unwrap();
    }
    ics.push_str("END:VCALENDAR\r\n");
    let mut options = ExpandOptions::window(
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(2028, 1, 1, 0, 0, 0).unwrap(),
    );
    options.time_budget = std::time::Duration::from_secs(60);
    let rounds = 5;
    let started = Instant::now();
    let mut occurrences = 0;
    for _ in 0..rounds {
        let calendar = parse(&decode(ics.as_bytes()).expect("ics"));
        let expansion = expand(&calendar, &options);
        assert!(!expansion.capped);
        occurrences += expansion.occurrences.len();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "expanded {occurrences} occurrences ({} series × 24 months, {rounds} rounds) in {secs:.3} s: {:.0} occurrences/s",
        500,
        occurrences as f64 / secs
    );
}
