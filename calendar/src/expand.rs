//! Recurrence expansion: masters, RRULE, RDATE, EXDATE and RECURRENCE-ID overrides into
//! occurrences over a window.
//!
//! Rules are iterated by `rrule` in floating time (wall-clock times as if they were UTC), and each
//! wall-clock instance is mapped to an instant by [`crate::zone::localize`], which follows RFC
//! 5545 §3.3.5 in gaps and folds. Overrides match instances by instant, so a RECURRENCE-ID written
//! in another zone than the master still finds its instance. Every rule is capped by a count and
//! the whole calendar by a time budget; a capped rule is reported, never a hang.

use crate::parse::{Calendar, Event, EventStatus, Span, TimeValue, Warning};
use crate::zone::{Zone, localize};
use chrono::{DateTime, Months, NaiveDate, NaiveDateTime, TimeDelta, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

/// What to expand and the limits.
#[derive(Debug, Clone)]
pub struct ExpandOptions {
    /// Occurrences ending after this instant are returned…
    pub from: DateTime<Utc>,
    /// …and starting before this one.
    pub to: DateTime<Utc>,
    /// The zone of floating times, all-day dates and unknown TZIDs (the supplier's zone).
    pub default_zone: Zone,
    /// At most this many occurrences of one series inside the window.
    pub max_per_series: usize,
    /// At most this many rule iterations (also before the window) per series.
    pub max_iterations_per_series: usize,
    /// Wall-clock budget for the whole calendar.
    pub time_budget: Duration,
}

impl ExpandOptions {
    /// The default window: from `now` to 24 months ahead, in UTC, with the default caps.
    pub fn months_ahead(now: DateTime<Utc>, months: u32) -> ExpandOptions {
        ExpandOptions::window(now, now + Months::new(months))
    }

    /// A window `[from, to)` with the default caps (10,000 occurrences and 1,000,000 iterations
    /// per series, 2 s per calendar) and UTC as default zone.
    pub fn window(from: DateTime<Utc>, to: DateTime<Utc>) -> ExpandOptions {
        ExpandOptions {
            from,
            to,
            default_zone: Zone::Utc,
            max_per_series: 10_000,
            max_iterations_per_series: 1_000_000,
            time_budget: Duration::from_secs(2),
        }
    }
}

/// One materialised instance of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Occurrence {
    /// The event's UID.
    pub uid: String,
    /// For an instance of a series: its original start (the RECURRENCE-ID) as an instant.
    pub recurrence_id: Option<DateTime<Utc>>,
    /// Start instant.
    pub start: DateTime<Utc>,
    /// End instant (exclusive).
    pub end: DateTime<Utc>,
    /// Wall-clock start in the event's zone (or as written, for floating and all-day).
    pub start_local: NaiveDateTime,
    /// Wall-clock end.
    pub end_local: NaiveDateTime,
    /// The zone the local times are in (`None`: floating or all-day).
    pub zone: Option<String>,
    /// All-day (DATE values).
    pub all_day: bool,
    /// Floating time (no zone).
    pub floating: bool,
    /// STATUS of the instance (an override may cancel one instance).
    pub status: EventStatus,
    /// TRANSP:TRANSPARENT.
    pub transparent: bool,
    /// SUMMARY of the instance.
    pub summary: Option<String>,
    /// Index in [`Calendar::events`] of the VEVENT that produced this occurrence.
    pub event: usize,
}

impl Occurrence {
    /// Whether the occurrence blocks time: not cancelled, not transparent, not empty, and for
    /// all-day events only when the supplier counts them (`all_day_busy`).
    pub fn is_busy(&self, all_day_busy: bool) -> bool {
        self.status != EventStatus::Cancelled
            && !self.transparent
            && self.end > self.start
            && (!self.all_day || all_day_busy)
    }
}

/// The result of [`expand`].
#[derive(Debug, Clone, Default)]
pub struct Expansion {
    /// Occurrences overlapping the window, by start then UID.
    pub occurrences: Vec<Occurrence>,
    /// Capped rules, unreadable rules, duplicate masters.
    pub warnings: Vec<Warning>,
    /// True when a cap or the time budget stopped a series early.
    pub capped: bool,
}

/// Expands every event of a calendar into occurrences inside the window.
pub fn expand(calendar: &Calendar, options: &ExpandOptions) -> Expansion {
    let deadline = Instant::now() + options.time_budget;
    let mut expansion = Expansion::default();
    // Group by UID, keeping file order of first appearance.
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    let mut by_uid: HashMap<&str, usize> = HashMap::new();
    for (i, event) in calendar.events.iter().enumerate() {
        let slot = *by_uid.entry(event.uid.as_str()).or_insert_with(|| {
            groups.push((event.uid.as_str(), Vec::new()));
            groups.len() - 1
        });
        groups[slot].1.push(i);
    }
    for (uid, members) in groups {
        expand_series(calendar, uid, &members, options, deadline, &mut expansion);
    }
    expansion.occurrences.sort_by(|a, b| (a.start, &a.uid, a.recurrence_id).cmp(&(b.start, &b.uid, b.recurrence_id)));
    expansion
}

/// Whether `a`, later in the file than `b`, replaces it: a higher (SEQUENCE, DTSTAMP), or the
/// same one (the last in the file wins a tie, as in `store::sync`'s reading of a fetch).
fn replaces(a: &Event, b: &Event) -> bool {
    (a.sequence, a.dtstamp) >= (b.sequence, b.dtstamp)
}

/// The instants and (for a date-time series) the days a master's EXDATEs remove.
fn excluded(event: &Event, default: &Zone) -> (HashSet<DateTime<Utc>>, HashSet<NaiveDate>) {
    let instants = event.exdates.iter().map(|x| x.instant(default)).collect();
    let days = if event.is_all_day() {
        HashSet::new()
    } else {
        event
            .exdates
            .iter()
            .filter_map(|x| match x {
                TimeValue::Date(d) => Some(*d),
                _ => None,
            })
            .collect()
    };
    (instants, days)
}

struct Series<'c> {
    calendar: &'c Calendar,
    options: &'c ExpandOptions,
}

impl Series<'_> {
    fn default_zone(&self) -> &Zone {
        &self.options.default_zone
    }

    /// The zone wall-clock times of `event` are read in.
    fn frame<'e>(&'e self, event: &'e Event) -> &'e Zone {
        event.start.zone().unwrap_or(self.default_zone())
    }

    /// The end of an instance of `event` starting at wall-clock `local` (instant `start`).
    fn end_of(&self, event: &Event, local: NaiveDateTime, start: DateTime<Utc>) -> DateTime<Utc> {
        let zone = self.frame(event);
        let end = if let Some(end) = &event.end {
            let same_frame = match (&event.start, end) {
                (TimeValue::Date(_), TimeValue::Date(_)) | (TimeValue::Floating(_), TimeValue::Floating(_)) => true,
                (TimeValue::Zoned { zone: a, .. }, TimeValue::Zoned { zone: b, .. }) => a == b,
                _ => false,
            };
            if same_frame {
                // Nominal: the same wall-clock length on every instance.
                localize(local + (end.local() - event.start.local()), zone)
            } else {
                start + (end.instant(self.default_zone()) - event.start.instant(self.default_zone()))
            }
        } else if let Some(span) = event.duration {
            localize(local + TimeDelta::days(span.days), zone) + TimeDelta::seconds(span.seconds)
        } else if event.is_all_day() {
            localize(local + TimeDelta::days(1), zone)
        } else {
            start
        };
        end.max(start)
    }

    fn in_window(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> bool {
        let (from, to) = (self.options.from, self.options.to);
        if end > start { start < to && end > from } else { start >= from && start < to }
    }

    #[allow(clippy::too_many_arguments)]
    fn occurrence(
        &self,
        index: usize,
        recurrence_id: Option<DateTime<Utc>>,
        local: NaiveDateTime,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        status_of: usize,
    ) -> Occurrence {
        let event = &self.calendar.events[index];
        let shown = &self.calendar.events[status_of];
        let zone = event.start.zone();
        let (start_local, end_local) = match zone {
            Some(zone) => (zone.local(start), zone.local(end)),
            None => (local, local + (end - start)),
        };
        Occurrence {
            uid: event.uid.clone(),
            recurrence_id,
            start,
            end,
            start_local,
            end_local,
            zone: zone.map(|z| z.name()),
            all_day: event.is_all_day(),
            floating: matches!(event.start, TimeValue::Floating(_)),
            status: shown.status,
            transparent: shown.transparent,
            summary: shown.summary.clone(),
            event: status_of,
        }
    }
}

fn expand_series(
    calendar: &Calendar,
    uid: &str,
    members: &[usize],
    options: &ExpandOptions,
    deadline: Instant,
    out: &mut Expansion,
) {
    let series = Series { calendar, options };
    let events = &calendar.events;
    let default = &options.default_zone;

    // The master: the newest VEVENT without RECURRENCE-ID, the last in the file on a tie
    // (`members` is in file order).
    let mut master: Option<usize> = None;
    let mut masters = 0;
    for &i in members.iter().filter(|&&i| events[i].recurrence_id.is_none()) {
        masters += 1;
        if master.is_none_or(|m| replaces(&events[i], &events[m])) {
            master = Some(i);
        }
    }
    if masters > 1 {
        out.warnings.push(Warning {
            uid: Some(uid.to_owned()),
            message: format!(
                "{masters} VEVENTs without RECURRENCE-ID share this UID: the newest (SEQUENCE, then DTSTAMP) \
                 wins, the last in the file on a tie"
            ),
        });
    }
    let (exdates, exdays) = master.map(|m| excluded(&events[m], default)).unwrap_or_default();

    // Overrides by the instant of their RECURRENCE-ID (newest per instance wins, the last in
    // the file on a tie). An instance the master EXDATEs is gone whatever overrides it (RFC
    // 5545 §3.8.5.1; `recurring-ical-events` agrees): a master that deleted an instance is
    // newer than the override that moved it, and keeping the override would bring a deleted
    // booking back.
    let mut overrides: BTreeMap<DateTime<Utc>, usize> = BTreeMap::new();
    for &i in members.iter().filter(|&&i| events[i].recurrence_id.is_some()) {
        let rid = events[i].recurrence_id.as_ref().expect("filtered");
        let key = rid.instant(default);
        if exdates.contains(&key) || exdays.contains(&rid.local().date()) {
            continue;
        }
        match overrides.get(&key) {
            Some(&j) if !replaces(&events[i], &events[j]) => {}
            _ => {
                overrides.insert(key, i);
            }
        }
    }
    let by_local: HashMap<NaiveDateTime, DateTime<Utc>> = overrides
        .keys()
        .map(|&k| (events[overrides[&k]].recurrence_id.as_ref().expect("override").local(), k))
        .collect();
    let this_and_future: Vec<(DateTime<Utc>, usize)> =
        overrides.iter().filter(|(_, i)| events[**i].this_and_future).map(|(k, i)| (*k, *i)).collect();
    let mut used: HashSet<DateTime<Utc>> = HashSet::new();

    if let Some(m) = master {
        let event = &events[m];
        if !event.is_recurring() {
            let mut start = event.start.instant(default);
            let mut local = event.start.local();
            let mut end = series.end_of(event, local, start);
            if let Some(written_end) = &event.end
                && written_end.instant(default) < start
            {
                // DTSTART and DTEND swapped: read them the right way round, and say so.
                out.warnings.push(Warning {
                    uid: Some(uid.to_owned()),
                    message: "DTEND before DTSTART: read the other way round".to_owned(),
                });
                end = start;
                start = written_end.instant(default);
                local = written_end.local();
            }
            if series.in_window(start, end) {
                out.occurrences.push(series.occurrence(m, None, local, start, end, m));
            }
        } else {
            let zone = series.frame(event);
            let instances = instances(&series, event, m, deadline, out);
            let mut in_window = 0usize;
            for (local, rdate_end) in instances {
                let key = localize(local, zone);
                if key >= options.to && overrides.range(key..).next().is_none() {
                    // Past the window and no override could move anything back in.
                    break;
                }
                let direct = overrides
                    .get(&key)
                    .copied()
                    .or_else(|| by_local.get(&local).and_then(|k| overrides.get(k).copied()));
                if let Some(o) = direct {
                    used.insert(events[o].recurrence_id.as_ref().expect("override").instant(default));
                    let ovr = &events[o];
                    let start = ovr.start.instant(default);
                    let end = series.end_of(ovr, ovr.start.local(), start);
                    if series.in_window(start, end) {
                        out.occurrences.push(series.occurrence(o, Some(key), ovr.start.local(), start, end, o));
                        in_window += 1;
                    }
                    continue;
                }
                if exdates.contains(&key) || exdays.contains(&local.date()) {
                    continue;
                }
                let taf = this_and_future.iter().rev().find(|(k, _)| *k < key).map(|(k, i)| (*k, *i));
                let (start, end, shown) = match taf {
                    Some((rid, o)) => {
                        let ovr = &events[o];
                        let delta = ovr.start.instant(default) - rid;
                        let length = series.end_of(ovr, ovr.start.local(), ovr.start.instant(default))
                            - ovr.start.instant(default);
                        (key + delta, key + delta + length, o)
                    }
                    None => {
                        let end = match rdate_end {
                            Some((Some(end), _)) => end.instant(default).max(key),
                            Some((None, Some(span))) => {
                                localize(local + TimeDelta::days(span.days), zone) + TimeDelta::seconds(span.seconds)
                            }
                            _ => series.end_of(event, local, key),
                        };
                        (key, end, m)
                    }
                };
                if series.in_window(start, end) {
                    in_window += 1;
                    if in_window > options.max_per_series {
                        out.capped = true;
                        out.warnings.push(Warning {
                            uid: Some(uid.to_owned()),
                            message: format!("more than {} occurrences in the window: capped", options.max_per_series),
                        });
                        break;
                    }
                    out.occurrences.push(series.occurrence(m, Some(key), local, start, end, shown));
                }
            }
        }
    }

    // Overrides whose instance was never produced (no master, or past the iterated range):
    // kept as occurrences of their own.
    for (&key, &o) in &overrides {
        if used.contains(&key) {
            continue;
        }
        let ovr = &events[o];
        let start = ovr.start.instant(default);
        let end = series.end_of(ovr, ovr.start.local(), start);
        if series.in_window(start, end) {
            out.occurrences.push(series.occurrence(o, Some(key), ovr.start.local(), start, end, o));
        }
    }
}

type RDateEnd = Option<(Option<TimeValue>, Option<Span>)>;

/// The wall-clock starts of a recurring master, in order, without duplicates: DTSTART, the
/// RRULE's instances up to the window's end (plus a day of margin for zone offsets), and RDATEs.
fn instances(
    series: &Series<'_>,
    event: &Event,
    index: usize,
    deadline: Instant,
    out: &mut Expansion,
) -> Vec<(NaiveDateTime, RDateEnd)> {
    let options = series.options;
    let zone = series.frame(event).clone();
    // The rule runs in wall-clock time; stop it a day after the window's end in that frame.
    let stop_local = zone.local(options.to) + TimeDelta::days(2);
    let from_local = zone.local(options.from) - TimeDelta::days(2);
    // One absurd rule must not starve the calendar's other series: each gets an eighth of the
    // budget at most.
    let deadline = deadline.min(Instant::now() + options.time_budget / 8);
    let mut starts: BTreeMap<NaiveDateTime, RDateEnd> = BTreeMap::new();
    starts.insert(event.start.local(), None);
    for rdate in &event.rdates {
        // An RDATE in another zone is moved into the master's frame.
        let local = match rdate.start.zone() {
            Some(z) if Some(z) != event.start.zone() => zone.local(rdate.start.instant(series.default_zone())),
            _ => rdate.start.local(),
        };
        if rdate.end.is_some() || rdate.span.is_some() {
            starts.insert(local, Some((rdate.end.clone(), rdate.span)));
        } else {
            starts.entry(local).or_insert(None);
        }
    }
    for rule in &event.rrules {
        if Instant::now() > deadline {
            out.capped = true;
            out.warnings.push(Warning {
                uid: Some(event.uid.clone()),
                message: "time budget of the calendar spent: recurrence not expanded".to_owned(),
            });
            break;
        }
        match rule_set(event, rule, &zone, series.default_zone()) {
            Ok(set) => {
                let mut iterations = 0usize;
                let mut in_window = 0usize;
                for date in &set {
                    iterations += 1;
                    let local = date.naive_utc();
                    if local > stop_local {
                        break;
                    }
                    starts.entry(local).or_insert(None);
                    if local >= from_local {
                        in_window += 1;
                    }
                    if in_window > options.max_per_series + event.exdates.len() + 1
                        || iterations >= options.max_iterations_per_series
                        || (iterations.is_multiple_of(512) && Instant::now() > deadline)
                    {
                        out.capped = true;
                        out.warnings.push(Warning {
                            uid: Some(event.uid.clone()),
                            message: format!(
                                "recurrence capped after {iterations} instances (FREQ too fine or too long)"
                            ),
                        });
                        break;
                    }
                }
            }
            Err(message) => out.warnings.push(Warning {
                uid: Some(event.uid.clone()),
                message: format!("RRULE ignored ({message}); only DTSTART and RDATEs kept"),
            }),
        }
    }
    let _ = index;
    starts.into_iter().collect()
}

/// Builds the `rrule` set in floating time: DTSTART and UNTIL are wall-clock times in the
/// master's frame written as UTC.
fn rule_set(
    event: &Event,
    rule: &calcard::icalendar::ICalendarRecurrenceRule,
    zone: &Zone,
    default: &Zone,
) -> Result<rrule::RRuleSet, String> {
    let text = rule.to_string();
    let mut parts: Vec<String> = text
        .trim()
        .trim_start_matches("RRULE:")
        .split(';')
        .filter(|p| {
            let upper = p.to_ascii_uppercase();
            // Dropped: UNTIL (rewritten below in the master's frame), RFC 7529 parts `rrule`
            // does not know, and COUNT next to UNTIL (invalid; UNTIL wins, as in dateutil).
            let dropped = upper.is_empty()
                || upper.starts_with("UNTIL=")
                || upper.starts_with("RSCALE=")
                || upper.starts_with("SKIP=")
                || (rule.until.is_some() && upper.starts_with("COUNT="));
            !dropped
        })
        .map(str::to_owned)
        .collect();
    if let Some(until) = &rule.until {
        let until_local = match until.to_date_time() {
            _ if !until.has_time() => {
                let date = NaiveDate::from_ymd_opt(
                    i32::from(until.year.ok_or("UNTIL without year")?),
                    u32::from(until.month.ok_or("UNTIL without month")?),
                    u32::from(until.day.ok_or("UNTIL without day")?),
                )
                .ok_or("invalid UNTIL date")?;
                // A DATE UNTIL on a DATE-TIME series (invalid, common): midnight, as dateutil does.
                date.and_hms_opt(0, 0, 0).expect("midnight")
            }
            Some(result) => match (result.offset, event.start.zone()) {
                // UNTIL in UTC for a zoned master: the wall-clock time in the master's zone.
                (Some(offset), Some(_)) => {
                    zone.local((result.date_time - TimeDelta::seconds(i64::from(offset.local_minus_utc()))).and_utc())
                }
                (Some(offset), None) if *default != Zone::Utc && !event.is_all_day() => default
                    .local((result.date_time - TimeDelta::seconds(i64::from(offset.local_minus_utc()))).and_utc()),
                _ => result.date_time,
            },
            None => return Err("invalid UNTIL".to_owned()),
        };
        parts.push(format!("UNTIL={}Z", until_local.format("%Y%m%dT%H%M%S")));
    }
    let source = format!("DTSTART:{}Z\nRRULE:{}", event.start.local().format("%Y%m%dT%H%M%S"), parts.join(";"));
    source.parse::<rrule::RRuleSet>().map(rrule::RRuleSet::limit).map_err(|e| e.to_string())
}
