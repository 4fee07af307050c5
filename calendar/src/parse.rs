//! iCalendar text → [`Calendar`], leniently, through `calcard`'s parser.

use crate::zone::{Zone, resolve_tzid};
use calcard::icalendar::{
    ICalendar, ICalendarComponent, ICalendarComponentType, ICalendarParameterName, ICalendarPeriod, ICalendarProperty,
    ICalendarRecurrenceRule, ICalendarStatus, ICalendarTransparency, ICalendarValue,
};
use calcard::{Entry, Parser};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

/// At most this many top-level entries are read from one body (a hostile file cannot loop us).
const MAX_ENTRIES: usize = 100_000;

/// The events of one iCalendar body, and what was wrong with it.
#[derive(Debug, Clone, Default)]
pub struct Calendar {
    /// Every VEVENT that could be read, masters and overrides alike, in file order.
    pub events: Vec<Event>,
    /// Skipped events, invalid lines, unknown TZIDs.
    pub warnings: Vec<Warning>,
}

/// Something that was skipped or guessed while reading or expanding a calendar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// The UID of the event concerned, when there is one.
    pub uid: Option<String>,
    /// What happened, for an operator.
    pub message: String,
}

/// A date or date-time value as written in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeValue {
    /// `VALUE=DATE`: an all-day date.
    Date(NaiveDate),
    /// A date-time without zone: the same wall-clock time wherever the reader is.
    Floating(NaiveDateTime),
    /// A date-time in a zone (UTC, a fixed offset, or a TZID).
    Zoned {
        /// The wall-clock time as written.
        local: NaiveDateTime,
        /// The resolved zone.
        zone: Zone,
        /// The TZID as written, if any.
        tzid: Option<String>,
    },
}

impl TimeValue {
    /// The wall-clock time (midnight for a date).
    pub fn local(&self) -> NaiveDateTime {
        match self {
            TimeValue::Date(date) => date.and_hms_opt(0, 0, 0).expect("midnight"),
            TimeValue::Floating(local) | TimeValue::Zoned { local, .. } => *local,
        }
    }

    /// The zone, for a zoned value.
    pub fn zone(&self) -> Option<&Zone> {
        match self {
            TimeValue::Zoned { zone, .. } => Some(zone),
            _ => None,
        }
    }

    /// The instant of this value; dates and floating times are read in `default_zone`.
    pub fn instant(&self, default_zone: &Zone) -> DateTime<Utc> {
        crate::zone::localize(self.local(), self.zone().unwrap_or(default_zone))
    }
}

/// The STATUS of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    /// CONFIRMED, or no STATUS.
    Confirmed,
    /// TENTATIVE.
    Tentative,
    /// CANCELLED: never busy; an instance override with it is a tombstone.
    Cancelled,
}

impl EventStatus {
    /// The name stored and returned by the API.
    pub fn as_str(&self) -> &'static str {
        match self {
            EventStatus::Confirmed => "confirmed",
            EventStatus::Tentative => "tentative",
            EventStatus::Cancelled => "cancelled",
        }
    }
}

/// How long an event lasts when it has no DTEND.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Nominal days (weeks × 7 + days): added to the wall-clock time.
    pub days: i64,
    /// Exact seconds: added to the instant.
    pub seconds: i64,
}

/// An extra instance from RDATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RDate {
    /// Its start.
    pub start: TimeValue,
    /// Its end when RDATE is a PERIOD with an end.
    pub end: Option<TimeValue>,
    /// Its length when RDATE is a PERIOD with a duration.
    pub span: Option<Span>,
}

/// One VEVENT: a master (maybe recurring), a single event, or an override of one instance.
#[derive(Debug, Clone)]
pub struct Event {
    /// UID (a missing UID gets a stable one derived from the content).
    pub uid: String,
    /// RECURRENCE-ID: the original start of the instance this VEVENT overrides.
    pub recurrence_id: Option<TimeValue>,
    /// `RANGE=THISANDFUTURE` on the RECURRENCE-ID.
    pub this_and_future: bool,
    /// SEQUENCE (0 when absent).
    pub sequence: i64,
    /// DTSTAMP, when present and readable.
    pub dtstamp: Option<DateTime<Utc>>,
    /// SUMMARY.
    pub summary: Option<String>,
    /// LOCATION.
    pub location: Option<String>,
    /// STATUS.
    pub status: EventStatus,
    /// TRANSP:TRANSPARENT (does not block time).
    pub transparent: bool,
    /// DTSTART.
    pub start: TimeValue,
    /// DTEND.
    pub end: Option<TimeValue>,
    /// DURATION, when there is no DTEND.
    pub duration: Option<Span>,
    /// RRULE values (more than one is deprecated but still seen; their union is used).
    pub rrules: Vec<Box<ICalendarRecurrenceRule>>,
    /// RDATE values.
    pub rdates: Vec<RDate>,
    /// EXDATE values.
    pub exdates: Vec<TimeValue>,
    /// SHA-256 (hex) of the event's properties without the volatile ones (DTSTAMP,
    /// LAST-MODIFIED), sorted: equal hashes mean nothing worth rewriting changed.
    pub content_hash: String,
}

impl Event {
    /// True when the event has recurrences (RRULE or RDATE).
    pub fn is_recurring(&self) -> bool {
        !self.rrules.is_empty() || !self.rdates.is_empty()
    }

    /// True for an all-day event (DTSTART is a DATE).
    pub fn is_all_day(&self) -> bool {
        matches!(self.start, TimeValue::Date(_))
    }
}

/// Parses decoded iCalendar text (see [`crate::decode`]). Never fails: what cannot be read
/// becomes a warning, and every readable event is returned.
pub fn parse(text: &str) -> Calendar {
    let mut calendar = Calendar::default();
    let mut parser = Parser::new(text);
    let mut unknown_tzids = BTreeSet::new();
    for _ in 0..MAX_ENTRIES {
        match parser.entry() {
            Entry::ICalendar(ical) => read_icalendar(&ical, &mut calendar, &mut unknown_tzids),
            Entry::Eof => break,
            Entry::InvalidLine(line) => calendar
                .warnings
                .push(Warning { uid: None, message: format!("invalid line skipped: {}", truncate(&line, 80)) }),
            Entry::TooManyComponents => {
                calendar.warnings.push(Warning {
                    uid: None,
                    message: "too many components: the rest of the file was skipped".to_owned(),
                });
                break;
            }
            Entry::UnterminatedComponent(name) => calendar
                .warnings
                .push(Warning { uid: None, message: format!("unterminated component {name} (truncated file?)") }),
            Entry::UnexpectedComponentEnd { expected, found } => calendar.warnings.push(Warning {
                uid: None,
                message: format!("END:{} where END:{} was expected", found.as_str(), expected.as_str()),
            }),
            _ => {}
        }
    }
    for tzid in unknown_tzids {
        calendar
            .warnings
            .push(Warning { uid: None, message: format!("unknown TZID {tzid:?}: read in the default zone") });
    }
    calendar
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn read_icalendar(ical: &ICalendar, calendar: &mut Calendar, unknown: &mut BTreeSet<String>) {
    let mut resolver =
        Resolver { names: ical.build_tz_resolver(), ical, vtimezones: std::cell::OnceCell::new(), calendar_zone: None };
    // X-WR-TIMEZONE (Google, Apple exports): floating times of this calendar are in that zone.
    let wr_timezone = ical.components.first().and_then(|c| {
        c.entries.iter().find_map(|e| match (&e.name, e.values.first()) {
            (ICalendarProperty::Other(name), Some(ICalendarValue::Text(zone)))
                if name.eq_ignore_ascii_case("X-WR-TIMEZONE") =>
            {
                Some(zone.clone())
            }
            _ => None,
        })
    });
    if let Some(name) = wr_timezone {
        resolver.calendar_zone = resolver.resolve(&name);
    }
    for component in &ical.components {
        if component.component_type != ICalendarComponentType::VEvent {
            continue;
        }
        match read_event(component, &resolver, unknown, &mut calendar.warnings) {
            Ok(event) => calendar.events.push(event),
            Err((uid, message)) => {
                calendar.warnings.push(Warning { uid, message: format!("event skipped: {message}") })
            }
        }
    }
}

/// TZID resolution for one VCALENDAR: its VTIMEZONE definitions first (RFC 5545 makes them
/// authoritative), then the names calcard knows (IANA, Windows, decorated forms).
struct Resolver<'x> {
    names: calcard::icalendar::timezone::TzResolver<&'x str>,
    ical: &'x ICalendar,
    /// The VTIMEZONE definitions, read only when a TZID is not a known name: reading one
    /// expands its rules to 2100, and most calendars carry IANA-named ones.
    vtimezones: std::cell::OnceCell<std::collections::HashMap<String, Zone>>,
    /// X-WR-TIMEZONE: the zone of floating times.
    calendar_zone: Option<Zone>,
}

impl Resolver<'_> {
    fn resolve(&self, tzid: &str) -> Option<Zone> {
        // A VTIMEZONE named like an IANA zone is taken by name: compiled tzdata is more
        // complete than most exported definitions.
        resolve_tzid(&self.names, tzid)
            .or_else(|| globally_unique(tzid))
            .or_else(|| self.vtimezones.get_or_init(|| crate::zone::vtimezones(self.ical)).get(tzid).cloned())
    }
}

/// A "globally unique" TZID (RFC 5545 §3.2.19) such as
/// `/freeassociation.sourceforge.net/Tzfile/America/Argentina/Buenos_Aires`: the longest
/// trailing part that is an IANA name.
fn globally_unique(tzid: &str) -> Option<Zone> {
    let parts: Vec<&str> = tzid.trim().trim_start_matches('/').split('/').collect();
    (1..parts.len()).find_map(|skip| parts[skip..].join("/").parse::<chrono_tz::Tz>().ok().map(Zone::Iana))
}

/// One VEVENT; what was read but ignored in an event that is kept goes to `warnings`.
fn read_event(
    component: &ICalendarComponent,
    resolver: &Resolver<'_>,
    unknown: &mut BTreeSet<String>,
    warnings: &mut Vec<Warning>,
) -> Result<Event, (Option<String>, String)> {
    // Ignored properties of this event, reported with its UID once that is known.
    let mut ignored: Vec<String> = Vec::new();
    let mut uid = None;
    let mut recurrence_id = None;
    let mut this_and_future = false;
    let mut sequence = 0;
    let mut dtstamp = None;
    let mut summary = None;
    let mut location = None;
    let mut status = EventStatus::Confirmed;
    let mut transparent = false;
    let mut start = None;
    let mut end = None;
    let mut duration = None;
    let mut rrules = Vec::new();
    let mut rdates = Vec::new();
    let mut exdates = Vec::new();
    let mut bad_start = false;

    for entry in &component.entries {
        let first = entry.values.first();
        let tzid = entry.tz_id();
        match (&entry.name, first) {
            (ICalendarProperty::Uid, Some(value)) => uid = text_of(value),
            (ICalendarProperty::Summary, Some(value)) => summary = text_of(value),
            (ICalendarProperty::Location, Some(value)) => location = text_of(value),
            (ICalendarProperty::Sequence, Some(ICalendarValue::Integer(n))) => sequence = *n,
            (ICalendarProperty::Status, Some(ICalendarValue::Status(s))) => {
                status = match s {
                    ICalendarStatus::Cancelled => EventStatus::Cancelled,
                    ICalendarStatus::Tentative => EventStatus::Tentative,
                    _ => EventStatus::Confirmed,
                }
            }
            (ICalendarProperty::Transp, Some(ICalendarValue::Transparency(t))) => {
                transparent = *t == ICalendarTransparency::Transparent
            }
            (ICalendarProperty::Dtstamp, Some(ICalendarValue::PartialDateTime(dt))) => {
                dtstamp = time_value(dt, None, resolver, unknown).map(|t| t.instant(&Zone::Utc));
            }
            (ICalendarProperty::Dtstart, value) => match value.and_then(|v| as_time(v, tzid, resolver, unknown)) {
                Some(t) => start = Some(t),
                None => bad_start = true,
            },
            (ICalendarProperty::Dtend, value) => {
                end = value.and_then(|v| as_time(v, tzid, resolver, unknown));
            }
            (ICalendarProperty::Duration, Some(ICalendarValue::Duration(d))) => {
                duration = Some(span_of(d));
            }
            (ICalendarProperty::RecurrenceId, Some(ICalendarValue::PartialDateTime(dt))) => {
                recurrence_id = time_value(dt, tzid, resolver, unknown);
                this_and_future = entry.parameters(&ICalendarParameterName::Range).next().is_some();
            }
            (ICalendarProperty::Rrule, Some(ICalendarValue::RecurrenceRule(rule))) if rrules.len() < 8 => {
                rrules.push(rule.clone());
            }
            (ICalendarProperty::Rrule, Some(ICalendarValue::RecurrenceRule(_))) => {
                ignored.push("more than 8 RRULEs: the rest ignored".to_owned());
            }
            (ICalendarProperty::Rrule, value) => {
                // Not a rule calcard could read (a typo, an unknown FREQ): the event is read
                // as not recurring, which an operator must be told about.
                let text = value.and_then(text_of).unwrap_or_default();
                ignored
                    .push(format!("unreadable RRULE {:?} ignored: only DTSTART and RDATEs kept", truncate(&text, 80)));
            }
            (ICalendarProperty::Rdate, _) => {
                for value in &entry.values {
                    match value {
                        ICalendarValue::PartialDateTime(dt) => {
                            if let Some(start) = time_value(dt, tzid, resolver, unknown) {
                                rdates.push(RDate { start, end: None, span: None });
                            }
                        }
                        ICalendarValue::Period(ICalendarPeriod::Range { start, end }) => {
                            if let (Some(start), Some(end)) =
                                (time_value(start, tzid, resolver, unknown), time_value(end, tzid, resolver, unknown))
                            {
                                rdates.push(RDate { start, end: Some(end), span: None });
                            }
                        }
                        ICalendarValue::Period(ICalendarPeriod::Duration { start, duration }) => {
                            if let Some(start) = time_value(start, tzid, resolver, unknown) {
                                rdates.push(RDate { start, end: None, span: Some(span_of(duration)) });
                            }
                        }
                        _ => {}
                    }
                }
            }
            (ICalendarProperty::Exdate, _) => {
                for value in &entry.values {
                    if let ICalendarValue::PartialDateTime(dt) = value
                        && let Some(t) = time_value(dt, tzid, resolver, unknown)
                    {
                        exdates.push(t);
                    }
                }
            }
            _ => {}
        }
    }

    let content_hash = content_hash(component);
    if bad_start {
        return Err((uid, "unreadable DTSTART".to_owned()));
    }
    // An override without DTSTART starts at its RECURRENCE-ID (RFC 5545 §3.8.4.4).
    let start = match (start, &recurrence_id) {
        (Some(start), _) => start,
        (None, Some(rid)) => rid.clone(),
        (None, None) => return Err((uid, "no DTSTART".to_owned())),
    };
    let uid = uid.unwrap_or_else(|| format!("fleet-nouid-{}", &content_hash[..32]));
    warnings.extend(ignored.into_iter().map(|message| Warning { uid: Some(uid.clone()), message }));
    Ok(Event {
        uid,
        recurrence_id,
        this_and_future,
        sequence,
        dtstamp,
        summary,
        location,
        status,
        transparent,
        start,
        end,
        duration,
        rrules,
        rdates,
        exdates,
        content_hash,
    })
}

fn text_of(value: &ICalendarValue) -> Option<String> {
    match value {
        ICalendarValue::Text(text) => Some(text.clone()),
        other => other.as_text().map(str::to_owned),
    }
}

fn as_time(
    value: &ICalendarValue,
    tzid: Option<&str>,
    resolver: &Resolver<'_>,
    unknown: &mut BTreeSet<String>,
) -> Option<TimeValue> {
    match value {
        ICalendarValue::PartialDateTime(dt) => time_value(dt, tzid, resolver, unknown),
        _ => None,
    }
}

fn span_of(d: &calcard::icalendar::ICalendarDuration) -> Span {
    // Clamped to ten years each way, so no arithmetic downstream can overflow.
    const MAX_DAYS: i64 = 3_653;
    let sign = if d.neg { -1 } else { 1 };
    Span {
        days: (sign * (i64::from(d.weeks) * 7 + i64::from(d.days))).clamp(-MAX_DAYS, MAX_DAYS),
        seconds: (sign * (i64::from(d.hours) * 3600 + i64::from(d.minutes) * 60 + i64::from(d.seconds)))
            .clamp(-MAX_DAYS * 86_400, MAX_DAYS * 86_400),
    }
}

fn time_value(
    dt: &calcard::common::PartialDateTime,
    tzid: Option<&str>,
    resolver: &Resolver<'_>,
    unknown: &mut BTreeSet<String>,
) -> Option<TimeValue> {
    // Years outside 1000..=9999 are garbage (fuzzers, typos); refusing them keeps every later
    // addition far from chrono's limits.
    if !(1000..=9999).contains(&dt.year?) {
        return None;
    }
    if !dt.has_time() {
        let date = NaiveDate::from_ymd_opt(i32::from(dt.year?), u32::from(dt.month?), u32::from(dt.day?))?;
        return Some(TimeValue::Date(date));
    }
    let result = dt.to_date_time()?;
    let local = result.date_time;
    if let Some(offset) = result.offset {
        let zone = if offset.local_minus_utc() == 0 { Zone::Utc } else { Zone::Fixed(offset) };
        return Some(TimeValue::Zoned { local, zone, tzid: None });
    }
    match tzid {
        None => Some(match &resolver.calendar_zone {
            Some(zone) => TimeValue::Zoned { local, zone: zone.clone(), tzid: None },
            None => TimeValue::Floating(local),
        }),
        Some(tzid) => match resolver.resolve(tzid) {
            Some(zone) => Some(TimeValue::Zoned { local, zone, tzid: Some(tzid.to_owned()) }),
            None => {
                if unknown.len() < 100 {
                    unknown.insert(tzid.to_owned());
                }
                // Unknown zone: floating, read later in the supplier's default zone.
                Some(TimeValue::Floating(local))
            }
        },
    }
}

/// The normalised content hash of a VEVENT: its properties written back as iCalendar lines,
/// without DTSTAMP and LAST-MODIFIED (servers and feeds rewrite them on every fetch), sorted so
/// a reordering is not a change.
fn content_hash(component: &ICalendarComponent) -> String {
    let mut lines: Vec<String> = component
        .entries
        .iter()
        .filter(|e| !matches!(e.name, ICalendarProperty::Dtstamp | ICalendarProperty::LastModified))
        .map(|e| {
            let mut line = String::new();
            let _ = e.write_to(&mut line);
            line
        })
        .collect();
    lines.sort();
    let mut hasher = Sha256::new();
    for line in lines {
        hasher.update(line.as_bytes());
        hasher.update(b"\n");
    }
    hex::encode(hasher.finalize())
}
