//! Prints what Fleet reads from .ics files: warnings, then occurrences in a window.
//!
//! `cargo run -p fleet-calendar --example ics-dump -- FILE... [--from 2000-01-01] [--to 2030-01-01]`

use chrono::{NaiveDate, TimeZone, Utc};
use fleet_calendar::{ExpandOptions, decode, expand, parse};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut take = |flag: &str, default: &str| -> String {
        match args.iter().position(|a| a == flag) {
            Some(i) => {
                let value = args.remove(i + 1);
                args.remove(i);
                value
            }
            None => default.to_owned(),
        }
    };
    let day = |s: String| {
        Utc.from_utc_datetime(
            &NaiveDate::parse_from_str(&s, "%Y-%m-%d").expect("YYYY-MM-DD").and_hms_opt(0, 0, 0).expect("midnight"),
        )
    };
    let from = day(take("--from", "2000-01-01"));
    let to = day(take("--to", "2030-01-01"));
    for file in &args {
        println!("== {file}");
        let bytes = std::fs::read(file).expect("read");
        let text = match decode(&bytes) {
            Ok(text) => text,
            Err(err) => {
                println!("not iCalendar: {err}");
                continue;
            }
        };
        let calendar = parse(&text);
        for w in &calendar.warnings {
            println!("warning: {:?} {}", w.uid, w.message);
        }
        for e in &calendar.events {
            println!(
                "event {} rid={:?} start={:?} end={:?} dur={:?} rrules={:?}",
                e.uid,
                e.recurrence_id,
                e.start,
                e.end,
                e.duration,
                e.rrules.iter().map(|r| r.to_string()).collect::<Vec<_>>()
            );
        }
        let expansion = expand(&calendar, &ExpandOptions::window(from, to));
        for w in &expansion.warnings {
            println!("warning: {:?} {}", w.uid, w.message);
        }
        for o in &expansion.occurrences {
            println!(
                "{} → {}  local {} → {} {:?} {} {:?}",
                o.start,
                o.end,
                o.start_local,
                o.end_local,
                o.zone,
                o.status.as_str(),
                o.summary
            );
        }
    }
}
