//! Broken and hostile input, DST rules, zones and caps: what a sync meets in the wild.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use fleet_calendar::{BusyInterval, DecodeError, EventStatus, ExpandOptions, decode, expand, find_conflicts, parse};
use std::path::Path;
use std::time::{Duration, Instant};

fn utc(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, min, 0).unwrap()
}

fn window(from_year: i32, to_year: i32) -> ExpandOptions {
    ExpandOptions::window(utc(from_year, 1, 1, 0, 0), utc(to_year, 1, 1, 0, 0))
}

fn ics(events: &str) -> String {
    format!("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Fleet//test//EN\r\n{events}END:VCALENDAR\r\n")
}

#[test]
fn libical_fuzz_crashers_neither_crash_nor_hang() {
    // libical's fuzzer-found crashers are committed (tests/fixtures/ics/libical/fuzz, MPL-2.0);
    // FLEET_ICS_TESTDATA may point at a fuller copy of libical's test files.
    let dir = std::env::var("FLEET_ICS_TESTDATA")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/ics").to_owned());
    let fuzz = Path::new(&dir).join("libical/fuzz");
    let entries = std::fs::read_dir(&fuzz).unwrap_or_else(|e| panic!("{}: {e}", fuzz.display()));
    let mut count = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let started = Instant::now();
        if let Ok(text) = decode(&bytes) {
            let calendar = parse(&text);
            let _ = expand(&calendar, &window(1900, 2100));
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{} took {:?}", path.display(), started.elapsed());
        count += 1;
    }
    // And every other libical test file, as a smoke test.
    for entry in std::fs::read_dir(Path::new(&dir).join("libical")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            if let Ok(text) = decode(&bytes) {
                let _ = expand(&parse(&text), &window(1990, 2040));
            }
            count += 1;
        }
    }
    assert!(count > 10, "expected libical files, found {count}");
}

#[test]
fn not_icalendar_is_an_error_never_an_empty_calendar() {
    assert_eq!(decode(b""), Err(DecodeError::Empty));
    let login = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body><form></form></body></html>";
    assert_eq!(decode(login), Err(DecodeError::Html));
    assert_eq!(decode(b"<html><body>502 Bad Gateway</body></html>"), Err(DecodeError::Html));
    assert_eq!(decode(b"Unauthorized"), Err(DecodeError::NotICalendar));
}

#[test]
fn one_broken_event_is_skipped_and_reported_the_others_import() {
    let text = ics(concat!(
        "BEGIN:VEVENT\r\nUID:good-1\r\nDTSTART:20270612T140000Z\r\nDTEND:20270612T220000Z\r\nEND:VEVENT\r\n",
        "BEGIN:VEVENT\r\nUID:broken\r\nDTSTART:2027-banana\r\nEND:VEVENT\r\n",
        "BEGIN:VEVENT\r\nUID:no-start\r\nSUMMARY:nothing\r\nEND:VEVENT\r\n",
        "BEGIN:VEVENT\r\nUID:good-2\r\nDTSTART;VALUE=DATE:20270613\r\nEND:VEVENT\r\n",
    ));
    let calendar = parse(&decode(text.as_bytes()).unwrap());
    let uids: Vec<&str> = calendar.events.iter().map(|e| e.uid.as_str()).collect();
    assert_eq!(uids, ["good-1", "good-2"]);
    let skipped: Vec<Option<&str>> = calendar.warnings.iter().map(|w| w.uid.as_deref()).collect();
    assert!(skipped.contains(&Some("broken")) && skipped.contains(&Some("no-start")), "{:?}", calendar.warnings);
    let occurrences = expand(&calendar, &window(2027, 2028)).occurrences;
    assert_eq!(occurrences.len(), 2);
    // An all-day event without DTEND lasts one day.
    assert_eq!(occurrences[1].end - occurrences[1].start, chrono::TimeDelta::days(1));
}

#[test]
fn truncated_file_keeps_the_complete_events() {
    let full = ics(concat!(
        "BEGIN:VEVENT\r\nUID:a\r\nDTSTART:20270612T140000Z\r\nDTEND:20270612T150000Z\r\nEND:VEVENT\r\n",
        "BEGIN:VEVENT\r\nUID:b\r\nDTSTART:20270613T140000Z\r\nDTEND:20270613T150000Z\r\nEND:VEVENT\r\n",
    ));
    let cut = &full.as_bytes()[..full.find("UID:b").unwrap() + 8];
    let calendar = parse(&decode(cut).unwrap());
    assert!(calendar.events.iter().any(|e| e.uid == "a"), "{calendar:?}");
    assert!(!calendar.warnings.is_empty());
}

#[test]
fn unbounded_and_absurd_rules_are_capped_quickly() {
    let text = ics(concat!(
        "BEGIN:VEVENT\r\nUID:secondly\r\nDTSTART:20260101T000000Z\r\nRRULE:FREQ=SECONDLY\r\nEND:VEVENT\r\n",
        "BEGIN:VEVENT\r\nUID:feb30\r\nDTSTART:20260101T100000Z\r\nRRULE:FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30\r\nEND:VEVENT\r\n",
        "BEGIN:VEVENT\r\nUID:fine\r\nDTSTART:20260301T100000Z\r\nDURATION:PT1H\r\nRRULE:FREQ=MONTHLY\r\nEND:VEVENT\r\n",
    ));
    let started = Instant::now();
    let expansion = expand(&parse(&decode(text.as_bytes()).unwrap()), &window(2026, 2028));
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(expansion.capped);
    let count = |uid: &str| expansion.occurrences.iter().filter(|o| o.uid == uid).count();
    assert!(count("secondly") <= 10_000);
    // Feb 30 never happens: only DTSTART.
    assert_eq!(count("feb30"), 1);
    assert_eq!(count("fine"), 22);
}

#[test]
fn dst_gaps_and_folds_follow_rfc_5545() {
    let text = ics(concat!(
        "BEGIN:VEVENT\r\nUID:santiago\r\nDTSTART;TZID=America/Santiago:20230901T003000\r\n",
        "RRULE:FREQ=DAILY;COUNT=5\r\nEND:VEVENT\r\n",
        "BEGIN:VEVENT\r\nUID:berlin\r\nDTSTART;TZID=Europe/Berlin:20240330T023000\r\n",
        "RRULE:FREQ=DAILY;COUNT=3\r\nEND:VEVENT\r\n",
        "BEGIN:VEVENT\r\nUID:fold\r\nDTSTART;TZID=Europe/Berlin:20241027T023000\r\nEND:VEVENT\r\n",
    ));
    let expansion = expand(&parse(&decode(text.as_bytes()).unwrap()), &window(2023, 2025));
    let starts = |uid: &str| -> Vec<DateTime<Utc>> {
        expansion.occurrences.iter().filter(|o| o.uid == uid).map(|o| o.start).collect()
    };
    // Nothing dropped (rrule 0.14 drops 09-03), nothing floating (calcard: 00:30+00:00):
    // 00:30 in the gap is read with the offset before it (−04:00), i.e. 01:30−03:00.
    assert_eq!(
        starts("santiago"),
        [
            utc(2023, 9, 1, 4, 30),
            utc(2023, 9, 2, 4, 30),
            utc(2023, 9, 3, 4, 30),
            utc(2023, 9, 4, 3, 30),
            utc(2023, 9, 5, 3, 30)
        ]
    );
    assert_eq!(starts("berlin"), [utc(2024, 3, 30, 1, 30), utc(2024, 3, 31, 1, 30), utc(2024, 4, 1, 0, 30)]);
    // In a fold the first of the two 02:30s.
    assert_eq!(starts("fold"), [utc(2024, 10, 27, 0, 30)]);
}

#[test]
fn zones_windows_names_unknown_tzid_and_x_wr_timezone() {
    let text = ics(concat!(
        "BEGIN:VEVENT\r\nUID:win\r\nDTSTART;TZID=W. Europe Standard Time:20270612T140000\r\nEND:VEVENT\r\n",
        "BEGIN:VEVENT\r\nUID:mars\r\nDTSTART;TZID=Mars/Olympus:20270612T140000\r\nEND:VEVENT\r\n",
        "BEGIN:VEVENT\r\nUID:unique\r\nDTSTART;TZID=/mozilla.org/20070129_1/America/New_York:20270612T140000\r\nEND:VEVENT\r\n",
    ));
    let calendar = parse(&decode(text.as_bytes()).unwrap());
    assert!(calendar.warnings.iter().any(|w| w.message.contains("Mars/Olympus")), "{:?}", calendar.warnings);
    let mut options = window(2027, 2028);
    options.default_zone = fleet_calendar::zone::Zone::Iana(chrono_tz::Europe::London);
    let expansion = expand(&calendar, &options);
    let start = |uid: &str| expansion.occurrences.iter().find(|o| o.uid == uid).unwrap().start;
    assert_eq!(start("win"), utc(2027, 6, 12, 12, 0)); // CEST, not a fixed +01:00
    assert_eq!(start("mars"), utc(2027, 6, 12, 13, 0)); // the supplier's zone (BST)
    assert_eq!(start("unique"), utc(2027, 6, 12, 18, 0));

    let google = "BEGIN:VCALENDAR\r\nX-WR-TIMEZONE:Europe/Paris\r\nBEGIN:VEVENT\r\nUID:g\r\nDTSTART:20270612T140000\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    let expansion = expand(&parse(&decode(google.as_bytes()).unwrap()), &window(2027, 2028));
    assert_eq!(expansion.occurrences[0].start, utc(2027, 6, 12, 12, 0));
}

#[test]
fn overrides_exdates_cancellations_and_this_and_future() {
    let text = ics(concat!(
        "BEGIN:VEVENT\r\nUID:s\r\nDTSTART;TZID=Europe/London:20270306T140000\r\nDTEND;TZID=Europe/London:20270306T160000\r\n",
        "RRULE:FREQ=WEEKLY;COUNT=8\r\nEXDATE;TZID=Europe/London:20270313T140000\r\nEND:VEVENT\r\n",
        // Instance of 03-20 moved, RECURRENCE-ID in UTC.
        "BEGIN:VEVENT\r\nUID:s\r\nRECURRENCE-ID:20270320T140000Z\r\nDTSTART;TZID=Europe/London:20270320T180000\r\n",
        "DTEND;TZID=Europe/London:20270320T190000\r\nEND:VEVENT\r\n",
        // 03-27 cancelled.
        "BEGIN:VEVENT\r\nUID:s\r\nRECURRENCE-ID;TZID=Europe/London:20270327T140000\r\nDTSTART;TZID=Europe/London:20270327T140000\r\n",
        "DTEND;TZID=Europe/London:20270327T160000\r\nSTATUS:CANCELLED\r\nEND:VEVENT\r\n",
        // From 04-10 on: an hour later, three hours long.
        "BEGIN:VEVENT\r\nUID:s\r\nRECURRENCE-ID;RANGE=THISANDFUTURE;TZID=Europe/London:20270410T140000\r\n",
        "DTSTART;TZID=Europe/London:20270410T150000\r\nDTEND;TZID=Europe/London:20270410T180000\r\nEND:VEVENT\r\n",
    ));
    let expansion = expand(&parse(&decode(text.as_bytes()).unwrap()), &window(2027, 2028));
    let got: Vec<(String, EventStatus)> = expansion
        .occurrences
        .iter()
        .map(|o| (format!("{} {}", o.start_local.format("%m-%d %H:%M"), o.end_local.format("%H:%M")), o.status))
        .collect();
    use EventStatus::*;
    let want: Vec<(String, EventStatus)> = [
        ("03-06 14:00 16:00", Confirmed),
        ("03-20 18:00 19:00", Confirmed),
        ("03-27 14:00 16:00", Cancelled),
        ("04-03 14:00 16:00", Confirmed),
        ("04-10 15:00 18:00", Confirmed),
        ("04-17 15:00 18:00", Confirmed),
        ("04-24 15:00 18:00", Confirmed),
    ]
    .iter()
    .map(|(s, st)| (s.to_string(), *st))
    .collect();
    assert_eq!(got, want);
    // Every instance keeps the RECURRENCE-ID of its original slot.
    assert_eq!(expansion.occurrences[1].recurrence_id, Some(utc(2027, 3, 20, 14, 0)));
}

#[test]
fn content_hash_ignores_dtstamp_and_order_but_not_content() {
    let a = ics(
        "BEGIN:VEVENT\r\nUID:x\r\nDTSTAMP:20260101T000000Z\r\nSUMMARY:Wedding\r\nDTSTART:20270612T140000Z\r\nEND:VEVENT\r\n",
    );
    let b = ics(
        "BEGIN:VEVENT\r\nDTSTART:20270612T140000Z\r\nUID:x\r\nDTSTAMP:20261201T101010Z\r\nLAST-MODIFIED:20261201T101010Z\r\nSUMMARY:Wedding\r\nEND:VEVENT\r\n",
    );
    let c = ics(
        "BEGIN:VEVENT\r\nUID:x\r\nDTSTAMP:20260101T000000Z\r\nSUMMARY:Wedding (moved)\r\nDTSTART:20270612T140000Z\r\nEND:VEVENT\r\n",
    );
    let hash = |t: &str| parse(&decode(t.as_bytes()).unwrap()).events[0].content_hash.clone();
    assert_eq!(hash(&a), hash(&b));
    assert_ne!(hash(&a), hash(&c));
}

#[test]
fn conflicts_on_expanded_occurrences() {
    let text = ics(concat!(
        "BEGIN:VEVENT\r\nUID:wedding\r\nDTSTART:20270612T120000Z\r\nDTEND:20270612T200000Z\r\nEND:VEVENT\r\n",
        "BEGIN:VEVENT\r\nUID:touching\r\nDTSTART:20270612T200000Z\r\nDTEND:20270612T220000Z\r\nEND:VEVENT\r\n",
        "BEGIN:VEVENT\r\nUID:free\r\nDTSTART:20270612T130000Z\r\nDTEND:20270612T140000Z\r\nTRANSP:TRANSPARENT\r\nEND:VEVENT\r\n",
        "BEGIN:VEVENT\r\nUID:cancelled\r\nDTSTART:20270612T130000Z\r\nDTEND:20270612T140000Z\r\nSTATUS:CANCELLED\r\nEND:VEVENT\r\n",
        "BEGIN:VEVENT\r\nUID:holiday\r\nDTSTART;VALUE=DATE:20270612\r\nEND:VEVENT\r\n",
        "BEGIN:VEVENT\r\nUID:weekly\r\nDTSTART:20270529T190000Z\r\nDTEND:20270529T210000Z\r\nRRULE:FREQ=WEEKLY;COUNT=3\r\nEND:VEVENT\r\n",
    ));
    let expansion = expand(&parse(&decode(text.as_bytes()).unwrap()), &window(2027, 2028));
    let during = vec![("wedding", "weekly"), ("touching", "weekly")];
    let mut with_all_day = during.clone();
    with_all_day.extend([("holiday", "wedding"), ("holiday", "weekly"), ("holiday", "touching")]);
    for (all_day_busy, want) in [(false, during), (true, with_all_day)] {
        let busy: Vec<BusyInterval<String>> = expansion
            .occurrences
            .iter()
            .filter(|o| o.is_busy(all_day_busy))
            .map(|o| BusyInterval { key: o.uid.clone(), start: o.start, end: o.end })
            .collect();
        let mut got: Vec<(String, String)> =
            find_conflicts(&busy).into_iter().map(|c| (c.a.clone().min(c.b.clone()), c.a.max(c.b))).collect();
        got.sort();
        let mut want: Vec<(String, String)> =
            want.into_iter().map(|(a, b)| (a.min(b).to_owned(), a.max(b).to_owned())).collect();
        want.sort();
        assert_eq!(got, want, "all_day_busy={all_day_busy}");
    }
    let _ = NaiveDate::from_ymd_opt(2027, 1, 1);
}

#[test]
fn unreadable_rules_and_swapped_ends_are_reported() {
    let text = ics(concat!(
        "BEGIN:VEVENT\r\nUID:bad-rule\r\nDTSTART:20270612T140000Z\r\nDTEND:20270612T150000Z\r\n",
        "RRULE:FREQ=SOMETIMES;COUNT=3\r\nEND:VEVENT\r\n",
        "BEGIN:VEVENT\r\nUID:swapped\r\nDTSTART:20270613T150000Z\r\nDTEND:20270613T140000Z\r\nEND:VEVENT\r\n",
    ));
    let calendar = parse(&decode(text.as_bytes()).unwrap());
    assert!(
        calendar.warnings.iter().any(|w| w.uid.as_deref() == Some("bad-rule") && w.message.contains("RRULE")),
        "{:?}",
        calendar.warnings
    );
    let expansion = expand(&calendar, &window(2027, 2028));
    assert_eq!(expansion.occurrences.len(), 2, "the bad rule's DTSTART is kept");
    assert!(
        expansion.warnings.iter().any(|w| w.uid.as_deref() == Some("swapped") && w.message.contains("DTEND before")),
        "{:?}",
        expansion.warnings
    );
}

#[test]
fn exdate_removes_an_override_and_a_tie_goes_to_the_last_in_the_file() {
    // As `recurring-ical-events` (scripts/calendar-oracle.py) expands it: an EXDATEd instance
    // is gone even when an override (older or newer) moved it, and an override of an
    // instance the rule never produces is kept unless EXDATEd too.
    let text = ics(concat!(
        "BEGIN:VEVENT\r\nUID:w\r\nSEQUENCE:2\r\nDTSTAMP:20261201T000000Z\r\n",
        "DTSTART;TZID=Europe/London:20270605T140000\r\nDTEND;TZID=Europe/London:20270605T220000\r\n",
        "RRULE:FREQ=WEEKLY;COUNT=3\r\nEXDATE;TZID=Europe/London:20270612T140000,20270601T140000\r\nEND:VEVENT\r\n",
        "BEGIN:VEVENT\r\nUID:w\r\nSEQUENCE:5\r\nDTSTAMP:20270101T000000Z\r\n",
        "RECURRENCE-ID;TZID=Europe/London:20270612T140000\r\n",
        "DTSTART;TZID=Europe/London:20270612T100000\r\nDTEND;TZID=Europe/London:20270612T230000\r\nEND:VEVENT\r\n",
        "BEGIN:VEVENT\r\nUID:w\r\nRECURRENCE-ID;TZID=Europe/London:20270601T140000\r\n",
        "DTSTART;TZID=Europe/London:20270601T100000\r\nDTEND;TZID=Europe/London:20270601T230000\r\nEND:VEVENT\r\n",
        "BEGIN:VEVENT\r\nUID:w\r\nRECURRENCE-ID;TZID=Europe/London:20270602T140000\r\n",
        "DTSTART;TZID=Europe/London:20270602T100000\r\nDTEND;TZID=Europe/London:20270602T230000\r\nEND:VEVENT\r\n",
        "BEGIN:VEVENT\r\nUID:d\r\nSEQUENCE:1\r\nDTSTAMP:20261201T000000Z\r\nDTSTART:20270705T100000Z\r\n",
        "DTEND:20270705T110000Z\r\nEND:VEVENT\r\n",
        "BEGIN:VEVENT\r\nUID:d\r\nSEQUENCE:1\r\nDTSTAMP:20261201T000000Z\r\nDTSTART:20270706T100000Z\r\n",
        "DTEND:20270706T110000Z\r\nEND:VEVENT\r\n",
    ));
    let expansion = expand(&parse(&decode(text.as_bytes()).unwrap()), &window(2027, 2028));
    let starts: Vec<(String, DateTime<Utc>)> = expansion.occurrences.iter().map(|o| (o.uid.clone(), o.start)).collect();
    assert_eq!(
        starts,
        [
            ("w".to_owned(), utc(2027, 6, 2, 9, 0)),
            ("w".to_owned(), utc(2027, 6, 5, 13, 0)),
            ("w".to_owned(), utc(2027, 6, 19, 13, 0)),
            ("d".to_owned(), utc(2027, 7, 6, 10, 0)),
        ]
    );
    assert!(
        expansion.warnings.iter().any(|w| w.uid.as_deref() == Some("d") && w.message.contains("last in the file")),
        "{:?}",
        expansion.warnings
    );
}
