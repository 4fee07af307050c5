//! Quiet hours: a daily window of local wall-clock time, in the recipient's time zone,
//! during which non-urgent notifications wait. A window may wrap past midnight
//! (22:00–07:00): read naively (`start ≤ t < end`) that window would never match and
//! sends would silently stop, or always match. A send inside the window is deferred to
//! its end, never dropped.
//!
//! Windows are at most [`MAX_WINDOW_MINUTES`] long so a typo cannot stop a channel.
//! Across a DST change the end is the first instant at or after the local end time.

use chrono::{DateTime, Duration, LocalResult, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// Longest quiet window (20 hours).
pub const MAX_WINDOW_MINUTES: u32 = 20 * 60;

/// A daily window, minutes since local midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    /// Start (inclusive).
    pub start: u32,
    /// End (exclusive); below `start` the window wraps past midnight.
    pub end: u32,
}

impl QuietHours {
    /// Parses `HH:MM` pair; checks the window's length.
    pub fn parse(start: &str, end: &str) -> Result<Self, String> {
        let q = QuietHours { start: minutes(start)?, end: minutes(end)? };
        if q.start == q.end {
            return Err("quiet hours: start and end are the same time".into());
        }
        if q.length() > MAX_WINDOW_MINUTES {
            return Err(format!("quiet hours: the window is longer than {} hours", MAX_WINDOW_MINUTES / 60));
        }
        Ok(q)
    }

    fn length(&self) -> u32 {
        (self.end + 24 * 60 - self.start) % (24 * 60)
    }

    /// `HH:MM` of a minute of the day.
    pub fn format(m: u32) -> String {
        format!("{:02}:{:02}", m / 60, m % 60)
    }

    /// When the window that holds `now` ends (in `zone`), or `None` when `now` is outside it.
    pub fn deferred_until(&self, zone: Tz, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = now.with_timezone(&zone).naive_local();
        let minute = local.time().signed_duration_since(NaiveTime::MIN).num_minutes() as u32;
        let inside = if self.start < self.end {
            self.start <= minute && minute < self.end
        } else {
            minute >= self.start || minute < self.end
        };
        if !inside {
            return None;
        }
        // The end is today when it is later than now on the clock, else tomorrow.
        let day = if minute < self.end { local.date() } else { local.date() + Duration::days(1) };
        Some(first_instant_at(zone, day, self.end))
    }
}

/// The first instant at or after `day` `minute` local time (a time skipped by a DST
/// change resolves to the instant the clocks jumped to).
fn first_instant_at(zone: Tz, day: NaiveDate, minute: u32) -> DateTime<Utc> {
    let mut at = day.and_time(NaiveTime::MIN) + Duration::minutes(minute as i64);
    for _ in 0..(4 * 60) {
        match zone.from_local_datetime(&at) {
            LocalResult::Single(t) => return t.with_timezone(&Utc),
            LocalResult::Ambiguous(a, _) => return a.with_timezone(&Utc),
            LocalResult::None => at += Duration::minutes(1),
        }
    }
    Utc.from_utc_datetime(&at)
}

/// `HH:MM` (00:00 to 23:59) as minutes since midnight.
fn minutes(s: &str) -> Result<u32, String> {
    let bad = || format!("quiet hours: {s:?} is not a time of day HH:MM");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 || s.len() != 5 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// A time zone by its IANA name.
pub fn zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| format!("{name:?} is not an IANA time zone (e.g. Europe/Paris)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn an_overnight_window_defers_to_its_end_in_the_recipients_zone() {
        let q = QuietHours::parse("22:00", "07:00").unwrap();
        let paris = zone("Europe/Paris").unwrap();
        // 23:30 in Paris (UTC+1 in December) → 07:00 Paris the next day.
        assert_eq!(q.deferred_until(paris, utc("2026-12-05T22:30:00Z")), Some(utc("2026-12-06T06:00:00Z")));
        // 02:00 in Paris → 07:00 the same day.
        assert_eq!(q.deferred_until(paris, utc("2026-12-06T01:00:00Z")), Some(utc("2026-12-06T06:00:00Z")));
        // 07:00 and 21:59 are outside.
        assert_eq!(q.deferred_until(paris, utc("2026-12-06T06:00:00Z")), None);
        assert_eq!(q.deferred_until(paris, utc("2026-12-06T20:59:00Z")), None);
    }

    #[test]
    fn a_daytime_window_and_a_dst_gap() {
        let q = QuietHours::parse("12:00", "14:00").unwrap();
        let ny = zone("America/New_York").unwrap();
        assert_eq!(q.deferred_until(ny, utc("2026-12-05T17:30:00Z")), Some(utc("2026-12-05T19:00:00Z")));
        assert_eq!(q.deferred_until(ny, utc("2026-12-05T16:59:00Z")), None);
        // Ends at 02:30 on the night clocks jump from 02:00 to 03:00 (2026-03-08 in New York).
        let q = QuietHours::parse("01:00", "02:30").unwrap();
        assert_eq!(q.deferred_until(ny, utc("2026-03-08T06:30:00Z")), Some(utc("2026-03-08T07:00:00Z")));
    }

    #[test]
    fn bad_windows_are_refused() {
        assert!(QuietHours::parse("22:00", "22:00").is_err());
        assert!(QuietHours::parse("24:00", "07:00").is_err());
        assert!(QuietHours::parse("7:00", "08:00").is_err());
        assert!(QuietHours::parse("00:00", "23:00").unwrap_err().contains("longer"));
        assert!(zone("Mars/Olympus").is_err());
    }
}
