//! Time zones: TZID resolution and wall-clock → instant conversion per RFC 5545 §3.3.5.
//!
//! §3.3.5: a local time that falls in a gap (spring forward) is read with the UTC offset in
//! effect *before* the gap, so `02:30` Europe/Berlin on 2024-03-31 is `01:30Z` (03:30+02:00) and
//! `00:30` America/Santiago on 2023-09-03 is `04:30Z` (01:30−03:00); a local time that occurs
//! twice (fall back) is the *first* of the two. calcard 0.3.14 returns the floating time (+00:00)
//! in a gap and `rrule` 0.14 drops it, so every conversion in Fleet goes through [`localize`].

use calcard::icalendar::{ICalendar, ICalendarComponent, ICalendarComponentType, ICalendarProperty, ICalendarValue};
use chrono::{DateTime, FixedOffset, LocalResult, NaiveDateTime, Offset, TimeDelta, TimeZone, Utc};
use std::collections::HashMap;
use std::sync::Arc;

/// A resolved time zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Zone {
    /// UTC (`Z`, `Etc/UTC`, …).
    Utc,
    /// A fixed offset (an explicit `+hh:mm`, or a VTIMEZONE without transitions).
    Fixed(FixedOffset),
    /// An IANA zone from the compiled tz database.
    Iana(chrono_tz::Tz),
    /// A zone defined by a VTIMEZONE whose TZID names no known zone.
    Custom(Arc<CustomZone>),
}

/// The transitions a VTIMEZONE describes (RFC 5545 §3.6.5), from its STANDARD and DAYLIGHT
/// observances, computed up to 2100.
#[derive(Debug, PartialEq, Eq)]
pub struct CustomZone {
    name: String,
    /// The offset before the first transition, in seconds east of UTC.
    initial: i32,
    /// (UTC seconds of the onset, offset in seconds from then on), sorted.
    transitions: Vec<(i64, i32)>,
}

impl CustomZone {
    fn offset_at(&self, utc_seconds: i64) -> i32 {
        match self.transitions.partition_point(|(onset, _)| *onset <= utc_seconds) {
            0 => self.initial,
            n => self.transitions[n - 1].1,
        }
    }

    /// Reads a VTIMEZONE; `None` when it has no usable observance.
    fn from_component(ical: &ICalendar, vtimezone: &ICalendarComponent) -> Option<CustomZone> {
        let name = vtimezone.entries.iter().find_map(|e| match (&e.name, e.values.first()) {
            (ICalendarProperty::Tzid, Some(ICalendarValue::Text(id))) => Some(id.clone()),
            _ => None,
        })?;
        let limit = chrono::NaiveDate::from_ymd_opt(2100, 1, 1)?.and_hms_opt(0, 0, 0)?;
        let mut transitions = Vec::new();
        let mut first: Option<(i64, i32)> = None;
        for &id in &vtimezone.component_ids {
            let Some(observance) = ical.components.get(id as usize) else { continue };
            if !matches!(observance.component_type, ICalendarComponentType::Standard | ICalendarComponentType::Daylight)
            {
                continue;
            }
            let (mut start, mut from, mut to, mut rule, mut rdates) = (None, None, None, None, Vec::new());
            for entry in &observance.entries {
                match (&entry.name, entry.values.first()) {
                    (ICalendarProperty::Dtstart, Some(ICalendarValue::PartialDateTime(dt))) => {
                        start = dt.to_date_time().map(|r| r.date_time)
                    }
                    (ICalendarProperty::Tzoffsetfrom, Some(ICalendarValue::PartialDateTime(dt))) => {
                        from = Some(utc_offset(dt))
                    }
                    (ICalendarProperty::Tzoffsetto, Some(ICalendarValue::PartialDateTime(dt))) => {
                        to = Some(utc_offset(dt))
                    }
                    (ICalendarProperty::Rrule, Some(ICalendarValue::RecurrenceRule(r))) => rule = Some(r.clone()),
                    (ICalendarProperty::Rdate, _) => {
                        for value in &entry.values {
                            if let ICalendarValue::PartialDateTime(dt) = value
                                && let Some(r) = dt.to_date_time()
                            {
                                rdates.push((r.date_time, r.offset.is_some()));
                            }
                        }
                    }
                    _ => {}
                }
            }
            let (Some(start), Some(from), Some(to)) = (start, from, to) else { continue };
            if !(1000..=9999).contains(&chrono::Datelike::year(&start)) {
                continue;
            }
            let mut onsets = vec![start];
            for (rdate, is_utc) in rdates {
                onsets.push(if is_utc { rdate + TimeDelta::seconds(i64::from(from)) } else { rdate });
            }
            if let Some(rule) = rule {
                let mut text: Vec<String> = rule
                    .to_string()
                    .trim()
                    .trim_start_matches("RRULE:")
                    .split(';')
                    .filter(|p| !p.is_empty() && !p.to_ascii_uppercase().starts_with("UNTIL="))
                    .map(str::to_owned)
                    .collect();
                if let Some(until) = rule.until.as_ref().and_then(|u| u.to_date_time()) {
                    // UNTIL is UTC; the rule runs in local time before the onset.
                    let local = until.date_time + TimeDelta::seconds(i64::from(from));
                    text.push(format!("UNTIL={}Z", local.format("%Y%m%dT%H%M%S")));
                }
                let source = format!("DTSTART:{}Z\nRRULE:{}", start.format("%Y%m%dT%H%M%S"), text.join(";"));
                if let Ok(set) = source.parse::<rrule::RRuleSet>() {
                    for date in set.limit().into_iter().take(2_000) {
                        let local = date.naive_utc();
                        if local > limit {
                            break;
                        }
                        onsets.push(local);
                    }
                }
            }
            for onset in onsets {
                let utc = onset.and_utc().timestamp() - i64::from(from);
                transitions.push((utc, to));
                if first.is_none_or(|(t, _)| utc < t) {
                    first = Some((utc, from));
                }
            }
        }
        let (_, initial) = first?;
        transitions.sort_unstable();
        transitions.dedup();
        Some(CustomZone { name, initial, transitions })
    }
}

fn utc_offset(dt: &calcard::common::PartialDateTime) -> i32 {
    let seconds = i32::from(dt.tz_hour.unwrap_or_default()) * 3600 + i32::from(dt.tz_minute.unwrap_or_default()) * 60;
    if dt.tz_minus { -seconds } else { seconds }
}

/// The zones a calendar's VTIMEZONEs define, by TZID.
pub(crate) fn vtimezones(ical: &ICalendar) -> HashMap<String, Zone> {
    let mut zones = HashMap::new();
    for component in &ical.components {
        if component.component_type == ICalendarComponentType::VTimezone
            && let Some(zone) = CustomZone::from_component(ical, component)
        {
            zones.insert(zone.name.clone(), Zone::Custom(Arc::new(zone)));
        }
    }
    zones
}

impl Zone {
    /// The zone for a calcard `Tz`; `None` for floating time.
    pub(crate) fn from_calcard(tz: calcard::common::timezone::Tz) -> Option<Zone> {
        use calcard::common::timezone::Tz;
        match tz {
            Tz::Floating => None,
            _ if tz.is_utc() => Some(Zone::Utc),
            Tz::Fixed(offset) => Some(Zone::Fixed(offset)),
            Tz::Tz(tz) => Some(Zone::Iana(tz)),
        }
    }

    /// The zone's name: an IANA name, `UTC`, or `+hh:mm`.
    pub fn name(&self) -> String {
        match self {
            Zone::Utc => "UTC".to_owned(),
            Zone::Fixed(offset) => offset.to_string(),
            Zone::Iana(tz) => tz.name().to_owned(),
            Zone::Custom(zone) => zone.name.clone(),
        }
    }

    /// The UTC offset in effect at an instant.
    pub fn offset_at(&self, instant: DateTime<Utc>) -> FixedOffset {
        match self {
            Zone::Utc => FixedOffset::east_opt(0).expect("zero offset"),
            Zone::Fixed(offset) => *offset,
            Zone::Iana(tz) => tz.offset_from_utc_datetime(&instant.naive_utc()).fix(),
            Zone::Custom(zone) => FixedOffset::east_opt(zone.offset_at(instant.timestamp()))
                .unwrap_or_else(|| FixedOffset::east_opt(0).expect("zero offset")),
        }
    }

    /// The wall-clock time of an instant in this zone.
    pub fn local(&self, instant: DateTime<Utc>) -> NaiveDateTime {
        instant.naive_utc() + TimeDelta::seconds(i64::from(self.offset_at(instant).local_minus_utc()))
    }
}

/// Resolves a TZID: a VTIMEZONE of the same calendar, an IANA name, a Windows name (as Microsoft
/// Graph and Outlook send them) or a decorated form such as `/Europe/Berlin`. `None` for a TZID
/// nobody knows; the caller then uses its default zone and reports a warning.
pub fn resolve_tzid(resolver: &calcard::icalendar::timezone::TzResolver<&str>, tzid: &str) -> Option<Zone> {
    // A TZID that resolves to "floating" is as good as unknown.
    let tzid = tzid.trim();
    windows_extra(tzid).map(Zone::Iana).or_else(|| resolver.resolve(tzid).and_then(Zone::from_calcard))
}

/// Resolves a zone name outside any iCalendar file, as the provider APIs send them: an IANA
/// name (Google), a Windows name (Microsoft Graph: `Pacific Standard Time`, `W. Europe
/// Standard Time`, `UTC-11`, `Central Standard Time (Mexico)`), or a spelling of UTC. `None`
/// for a name nobody knows.
pub fn resolve_name(name: &str) -> Option<Zone> {
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    let lower = name.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "utc" | "z" | "gmt" | "etc/utc" | "etc/gmt" | "coordinated universal time" | "tzone://microsoft/utc"
    ) {
        return Some(Zone::Utc);
    }
    if let Ok(tz) = name.parse::<chrono_tz::Tz>() {
        return Some(if tz == chrono_tz::UTC { Zone::Utc } else { Zone::Iana(tz) });
    }
    if let Some(tz) = windows_extra(name) {
        return Some(Zone::Iana(tz));
    }
    name.parse::<calcard::common::timezone::Tz>().ok().and_then(Zone::from_calcard)
}

/// Windows zone names (CLDR `windowsZones.xml`, territory 001) that calcard 0.3.14's table lacks
/// or maps to a zone whose rules have since diverged; calcard's table covers the rest.
fn windows_extra(name: &str) -> Option<chrono_tz::Tz> {
    use chrono_tz::Tz;
    Some(match name {
        // calcard says America/Chihuahua, which moved to UTC−6 without DST in 2022; CLDR now
        // maps this name to Mazatlán (UTC−7).
        "Mountain Standard Time (Mexico)" => Tz::America__Mazatlan,
        "Mid-Atlantic Standard Time" => Tz::Etc__GMTPlus2,
        "Kamchatka Standard Time" => Tz::Asia__Kamchatka,
        "South Sudan Standard Time" => Tz::Africa__Juba,
        _ => return None,
    })
}

/// The instant of a wall-clock time in a zone, per RFC 5545 §3.3.5: in a gap the offset before
/// the gap applies; in a fold the first occurrence wins.
pub fn localize(local: NaiveDateTime, zone: &Zone) -> DateTime<Utc> {
    match zone {
        Zone::Custom(custom) => {
            // The offsets around this wall-clock time; a candidate instant is valid when the
            // zone really has that offset then.
            let naive = local.and_utc().timestamp();
            let before = custom.offset_at(naive - 30 * 3600);
            let after = custom.offset_at(naive + 30 * 3600);
            let valid = |offset: i32| {
                let instant = naive - i64::from(offset);
                (custom.offset_at(instant) == offset).then_some(instant)
            };
            let seconds = match (valid(before), valid(after)) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                // A gap: the offset before it.
                (None, None) => naive - i64::from(before),
            };
            DateTime::from_timestamp(seconds, 0).unwrap_or(local.and_utc())
        }
        Zone::Utc => local.and_utc(),
        Zone::Fixed(offset) => (local - TimeDelta::seconds(i64::from(offset.local_minus_utc()))).and_utc(),
        Zone::Iana(tz) => match tz.offset_from_local_datetime(&local) {
            LocalResult::Single(offset) => minus_offset(local, offset.fix()),
            LocalResult::Ambiguous(a, b) => minus_offset(local, a.fix()).min(minus_offset(local, b.fix())),
            LocalResult::None => {
                // The offset in effect before the gap: 30 h earlier is before the transition
                // (offsets are within ±14 h) and after any previous one (zones never change
                // twice within two days).
                let before = (local - TimeDelta::hours(30)).and_utc();
                let offset = tz.offset_from_utc_datetime(&before.naive_utc()).fix();
                minus_offset(local, offset)
            }
        },
    }
}

fn minus_offset(local: NaiveDateTime, offset: FixedOffset) -> DateTime<Utc> {
    (local - TimeDelta::seconds(i64::from(offset.local_minus_utc()))).and_utc()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn at(y: i32, m: u32, d: u32, h: u32, min: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(y, m, d).unwrap().and_hms_opt(h, min, 0).unwrap()
    }

    #[test]
    fn gap_uses_the_offset_before_the_gap() {
        let berlin = Zone::Iana(chrono_tz::Europe::Berlin);
        assert_eq!(localize(at(2024, 3, 31, 2, 30), &berlin), at(2024, 3, 31, 1, 30).and_utc());
        let santiago = Zone::Iana(chrono_tz::America::Santiago);
        assert_eq!(localize(at(2023, 9, 3, 0, 30), &santiago), at(2023, 9, 3, 4, 30).and_utc());
    }

    #[test]
    fn provider_zone_names() {
        for (name, iana) in [
            ("Pacific Standard Time", "America/Los_Angeles"),
            ("GMT Standard Time", "Europe/London"),
            ("W. Europe Standard Time", "Europe/Berlin"),
            ("Romance Standard Time", "Europe/Paris"),
            ("Eastern Standard Time", "America/New_York"),
            ("AUS Eastern Standard Time", "Australia/Sydney"),
            ("India Standard Time", "Asia/Calcutta"),
            ("Tokyo Standard Time", "Asia/Tokyo"),
            ("Central Standard Time (Mexico)", "America/Mexico_City"),
            ("Mountain Standard Time (Mexico)", "America/Mazatlan"),
            ("Kamchatka Standard Time", "Asia/Kamchatka"),
            ("UTC-11", "Etc/GMT+11"),
            ("America/Los_Angeles", "America/Los_Angeles"),
        ] {
            let zone = resolve_name(name).unwrap_or_else(|| panic!("{name} unresolved"));
            // Equal offsets through a year stand in for "the same zone" (aliases differ by name).
            let reference: chrono_tz::Tz = iana.parse().unwrap();
            for month in 1..=12 {
                let t = at(2027, month, 14, 12, 0).and_utc();
                assert_eq!(zone.offset_at(t), Zone::Iana(reference).offset_at(t), "{name} in month {month}");
            }
        }
        assert_eq!(resolve_name("UTC"), Some(Zone::Utc));
        assert_eq!(resolve_name("tzone://Microsoft/Utc"), Some(Zone::Utc));
        assert_eq!(resolve_name("Mars Standard Time"), None);
    }

    #[test]
    fn fold_takes_the_first_instance() {
        let berlin = Zone::Iana(chrono_tz::Europe::Berlin);
        // 02:30 happens at 00:30Z (CEST) and again at 01:30Z (CET).
        assert_eq!(localize(at(2024, 10, 27, 2, 30), &berlin), at(2024, 10, 27, 0, 30).and_utc());
    }
}
