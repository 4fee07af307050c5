//! Differential test: Fleet's expansion against the Python `icalendar` + `recurring-ical-events`
//! packages, on the ~250 `.ics` files their wheels ship (used where pip installed them, never
//! copied here) plus Fleet's own fixtures. `scripts/calendar-oracle.sh` installs the oracle.
//!
//! Every difference must be listed in `KNOWN_DIFFERENCES` with whose bug it is.

use chrono::{NaiveDate, TimeZone, Utc};
use fleet_calendar::{ExpandOptions, Occurrence, decode, expand, parse};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const FROM: &str = "2000-01-01";
const TO: &str = "2030-01-01";

/// File name → why Fleet and the oracle differ there.
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[
    // TZID "Western/Central Europe" with no VTIMEZONE: the oracle guesses a zone from a legacy
    // Outlook name; Fleet reports the TZID as unknown and reads the time in the supplier's zone.
    ("issue_526_calendar_with_different_events.ics", "unknown TZID guessed by the oracle"),
    ("issue_526_calendar_with_event_subset.ics", "unknown TZID guessed by the oracle"),
    ("issue_526_calendar_with_events.ics", "unknown TZID guessed by the oracle"),
    ("issue_526_calendar_with_shuffeled_events.ics", "unknown TZID guessed by the oracle"),
    // The same UID in two VCALENDARs of one file: Fleet keeps one event per UID (a sync key), the
    // oracle returns both copies.
    ("multiple_calendar_components.ics", "duplicate UID counted once by Fleet"),
    // DTSTART not matched by its RRULE (RFC 5545: "undefined"). Fleet always keeps DTSTART as the
    // first instance (RFC 5545 §3.8.5.3 builds the set from DTSTART; libical and Google do the
    // same), so a booking never vanishes; the oracle (python-dateutil) drops it.
    ("issue_117_until_before_dtstart.ics", "DTSTART kept although UNTIL is before it"),
    // Several masters (no RECURRENCE-ID) under one UID: Fleet keeps the newest (SEQUENCE, then
    // DTSTAMP) as the one version of the event; the oracle expands every copy.
    ("issue_148_edge_case_1.ics", "several masters with one UID: newest wins"),
    ("issue_163_deleted_modification.ics", "several masters with one UID: newest wins"),
    ("issue_253_additional_recurrence_id.ics", "several masters with one UID: newest wins"),
    // DTSTART a DATE and DTEND a DATE-TIME (invalid): Fleet keeps the event all-day (it blocks
    // days, not instants); the oracle turns it into a timed event.
    ("issue_201_mixed_datetime_and_date.ics", "mixed DATE/DATE-TIME read as all-day"),
    ("issue_201_test_matrix.ics", "mixed DATE/DATE-TIME read as all-day"),
    // Their bug: DURATION:PT1H / PT30M added as wall-clock time across a DST change. RFC 5545
    // §3.3.6 makes hours, minutes and seconds exact: 02:30 in the Berlin gap (= 01:30Z) + PT1H
    // ends at 02:30Z (they: 01:30Z, zero length); 02:30 in the fold (first, = 00:30Z) + PT30M
    // ends at 01:00Z (they: 02:00Z, 90 minutes).
    ("berlin_gap_and_fold.ics", "oracle adds exact durations as wall-clock time over DST"),
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn oracle(args: &[String]) -> String {
    let output = Command::new(repo_root().join("scripts/calendar-oracle.sh"))
        .args(args)
        .output()
        .expect("run scripts/calendar-oracle.sh");
    assert!(output.status.success(), "scripts/calendar-oracle.sh failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8")
}

fn norm_start(o: &Occurrence) -> (String, String) {
    if o.all_day {
        (format!("D:{}", o.start_local.date()), format!("D:{}", o.end_local.date()))
    } else if o.floating {
        (
            format!("F:{}", o.start_local.format("%Y-%m-%dT%H:%M:%S")),
            format!("F:{}", o.end_local.format("%Y-%m-%dT%H:%M:%S")),
        )
    } else {
        (format!("U:{}", o.start.format("%Y-%m-%dT%H:%M:%SZ")), format!("U:{}", o.end.format("%Y-%m-%dT%H:%M:%SZ")))
    }
}

fn fleet(path: &Path) -> Result<Vec<(String, String)>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let text = decode(&bytes).map_err(|e| e.to_string())?;
    let calendar = parse(&text);
    let day = |s: &str| {
        Utc.from_utc_datetime(&NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap().and_hms_opt(0, 0, 0).unwrap())
    };
    let options = ExpandOptions::window(day(FROM), day(TO));
    let mut out: Vec<(String, String)> = expand(&calendar, &options).occurrences.iter().map(norm_start).collect();
    out.sort();
    Ok(out)
}

#[test]
fn expansion_matches_the_python_oracle() {
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in oracle(&["--fixtures".to_owned()]).lines() {
        for entry in std::fs::read_dir(dir).expect("fixture dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "ics") {
                files.push(path);
            }
        }
    }
    let own = repo_root().join("tests/fixtures/ics");
    if let Ok(entries) = std::fs::read_dir(&own) {
        for entry in entries {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "ics") {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(files.len() > 200, "expected the wheels' fixtures, found {}", files.len());
    let mut args = vec![FROM.to_owned(), TO.to_owned()];
    args.extend(files.iter().map(|p| p.display().to_string()));
    let mut expected: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for line in oracle(&args).lines() {
        let value: serde_json::Value = serde_json::from_str(line).expect("oracle json");
        expected.insert(value["file"].as_str().expect("file").to_owned(), value);
    }
    let known: BTreeMap<&str, &str> = KNOWN_DIFFERENCES.iter().copied().collect();
    let (mut same, mut oracle_failed, mut known_seen) = (0, 0, 0);
    let mut unexpected = Vec::new();
    for path in &files {
        let key = path.display().to_string();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let theirs = &expected[&key];
        let ours = fleet(path);
        if theirs["ok"] != true {
            oracle_failed += 1;
            continue;
        }
        let mut theirs: Vec<(String, String)> = theirs["occurrences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| (o["start"].as_str().unwrap().to_owned(), o["end"].as_str().unwrap().to_owned()))
            .collect();
        theirs.sort();
        let ours = ours.unwrap_or_default();
        if ours == theirs {
            same += 1;
        } else if known.contains_key(name.as_str()) {
            known_seen += 1;
        } else {
            let only_ours: Vec<_> = ours.iter().filter(|o| !theirs.contains(o)).take(3).collect();
            let only_theirs: Vec<_> = theirs.iter().filter(|o| !ours.contains(o)).take(3).collect();
            unexpected.push(format!(
                "{name}: ours {} theirs {}; only ours {only_ours:?}; only theirs {only_theirs:?}",
                ours.len(),
                theirs.len()
            ));
        }
    }
    eprintln!(
        "oracle: {} files, {same} identical, {known_seen} known differences, {oracle_failed} the oracle could not read",
        files.len()
    );
    assert!(unexpected.is_empty(), "{} unexpected differences:\n{}", unexpected.len(), unexpected.join("\n"));
}
