//! A cron schedule: expression with seconds, time zone, job template, missed-tick
//! policy and paused flag. Pure logic: fire times are computed here (DST-correct,
//! in the schedule's zone) and enqueued by the ticker.

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::Seconds;
use fleet_accounts::cron::{check_fires, next_fire, parse_cron};
use fleet_jobs::Priority;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What to do with ticks that passed while no scheduler ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// Count them as missed and go on from now.
    #[default]
    Skip,
    /// Enqueue those within the catch-up window; count older ones as missed.
    CatchUp,
}

/// A schedule as written in the config file or stored in PostgreSQL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Unique name.
    pub name: String,
    /// Cron expression; six fields with seconds (`sec min hour dom month dow`) or five.
    pub cron: String,
    /// IANA time zone the expression is read in (e.g. `Europe/Berlin`).
    #[serde(default = "utc")]
    pub timezone: String,
    /// Job kind to enqueue.
    pub kind: String,
    /// Job arguments.
    #[serde(default = "empty_args")]
    pub args: serde_json::Value,
    /// Queue (default: the kind's).
    #[serde(default)]
    pub queue: Option<String>,
    /// Priority (default: the kind's).
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Attempts (default: the kind's).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Missed-tick policy.
    #[serde(default)]
    pub missed: Missed,
    /// Catch-up window in seconds (with `missed = "catch_up"`).
    #[serde(default)]
    pub catch_up_secs: u64,
    /// Paused schedules enqueue nothing (their ticks count as missed).
    #[serde(default)]
    pub paused: bool,
    /// A dedup key and mode for the jobs it enqueues (e.g. `keep_last`, so a slow run
    /// never has more than one tick waiting behind it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<ScheduleDedup>,
}

/// A schedule's dedup key and mode (see the README's "Dedup modes"). The tick's own
/// unique key is checked first; a debounced tick starts after the debounce delay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleDedup {
    /// The key, scoped to the queue.
    pub key: String,
    /// `debounce`, `replace` or `keep_last`.
    pub mode: String,
    /// Debounce only (required there): quiet time after the last job, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Debounce only: longest wait from the burst's first job, in ms (default 10 × delay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait_ms: Option<u64>,
}

impl ScheduleDedup {
    /// The engine's dedup key and mode, or why these settings are not one.
    pub fn to_dedup(&self) -> Result<fleet_jobs::Dedup, String> {
        use fleet_jobs::DedupMode;
        let timing = self.delay_ms.is_some() || self.max_wait_ms.is_some();
        let mode = match self.mode.as_str() {
            "debounce" => {
                let delay = self.delay_ms.ok_or("dedup mode debounce needs delay_ms")?;
                let max_wait = self.max_wait_ms.unwrap_or(delay.saturating_mul(10));
                DedupMode::Debounce { delay: Duration::from_millis(delay), max_wait: Duration::from_millis(max_wait) }
            }
            "replace" | "keep_last" if timing => {
                return Err("dedup delay_ms and max_wait_ms are for debounce only".into());
            }
            "replace" => DedupMode::Replace,
            "keep_last" => DedupMode::KeepLast,
            other => return Err(format!("unknown dedup mode {other:?} (debounce, replace or keep_last)")),
        };
        let d = fleet_jobs::Dedup { key: self.key.clone(), mode };
        fleet_jobs::dedup::check(&d)?;
        Ok(d)
    }
}

fn utc() -> String {
    "UTC".to_owned()
}

fn empty_args() -> serde_json::Value {
    serde_json::json!({})
}

/// A parsed, checked schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The spec it came from.
    pub spec: ScheduleSpec,
    cron: Cron,
    tz: chrono_tz::Tz,
}

/// Most ticks handled for one schedule in one pass (bounds catch-up work).
pub const MAX_TICKS_PER_PASS: usize = 1000;

impl Schedule {
    /// Parses and checks a spec: the expression, the zone, the kind and its arguments.
    pub fn parse(spec: ScheduleSpec) -> Result<Schedule, String> {
        if spec.name.is_empty()
            || spec.name.len() > 200
            || spec.name.chars().any(|c| c.is_whitespace() || c == '{' || c == '}')
        {
            return Err(format!("schedule name {:?} must be 1 to 200 characters without spaces or braces", spec.name));
        }
        let cron = parse_cron(&spec.cron, Seconds::Optional)
            .map_err(|e| format!("schedule {:?}: cron {:?} is invalid: {e}", spec.name, spec.cron))?;
        let tz: chrono_tz::Tz = spec.timezone.parse().map_err(|_| {
            format!(
                "schedule {:?}: unknown time zone {:?} (use an IANA name such as Europe/Berlin)",
                spec.name, spec.timezone
            )
        })?;
        check_fires(&cron, &tz).map_err(|e| format!("schedule {:?}: cron {:?} {e}", spec.name, spec.cron))?;
        let kind = fleet_jobs::catalogue::lookup(&spec.kind)
            .ok_or_else(|| format!("schedule {:?}: unknown job kind {:?}", spec.name, spec.kind))?;
        let raw = serde_json::value::to_raw_value(&spec.args).map_err(|e| e.to_string())?;
        (kind.validate)(&raw)
            .map_err(|e| format!("schedule {:?}: args do not fit kind {:?}: {e}", spec.name, spec.kind))?;
        if let Some(q) = &spec.queue {
            fleet_jobs::keys::validate_queue_name(q).map_err(|e| format!("schedule {:?}: {e}", spec.name))?;
        }
        if let Some(d) = &spec.dedup {
            d.to_dedup().map_err(|e| format!("schedule {:?}: {e}", spec.name))?;
        }
        Ok(Schedule { spec, cron, tz })
    }

    /// The schedule's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The first fire time strictly after `t`; always a whole second (croner keeps
    /// the start's sub-second part, and tick keys must be the same on every replica).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        next_fire(&self.cron, &self.tz, t)
    }

    /// Fire times in `(after, until]`, at most `limit`.
    pub fn ticks(&self, after: DateTime<Utc>, until: DateTime<Utc>, limit: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut t = after;
        while out.len() < limit {
            match self.next_after(t) {
                Some(n) if n <= until => {
                    out.push(n);
                    t = n;
                }
                _ => break,
            }
        }
        out
    }

    /// The catch-up window.
    pub fn catch_up(&self) -> Duration {
        Duration::from_secs(self.spec.catch_up_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use fleet_accounts::cron::SourceCron;

    fn spec(cron: &str, tz: &str) -> ScheduleSpec {
        ScheduleSpec {
            name: "s".into(),
            cron: cron.into(),
            timezone: tz.into(),
            kind: "probe".into(),
            args: serde_json::json!({"do": "succeed"}),
            queue: None,
            priority: None,
            max_attempts: None,
            missed: Missed::Skip,
            catch_up_secs: 0,
            paused: false,
            dedup: None,
        }
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn a_daily_berlin_schedule_follows_daylight_saving_time() {
        let s = Schedule::parse(spec("0 0 9 * * *", "Europe/Berlin")).unwrap();
        // 09:00 CET is 08:00 UTC before 29 March 2026; 09:00 CEST is 07:00 UTC after.
        let ticks = s.ticks(utc(2026, 3, 27, 12, 0, 0), utc(2026, 3, 31, 12, 0, 0), 10);
        assert_eq!(
            ticks,
            vec![
                utc(2026, 3, 28, 8, 0, 0),
                utc(2026, 3, 29, 7, 0, 0),
                utc(2026, 3, 30, 7, 0, 0),
                utc(2026, 3, 31, 7, 0, 0)
            ]
        );
        // And back on 25 October 2026.
        let ticks = s.ticks(utc(2026, 10, 24, 12, 0, 0), utc(2026, 10, 26, 12, 0, 0), 10);
        assert_eq!(ticks, vec![utc(2026, 10, 25, 8, 0, 0), utc(2026, 10, 26, 8, 0, 0)]);
    }

    #[test]
    fn a_time_in_the_spring_gap_fires_once_after_it_and_an_autumn_repeat_fires_once() {
        let s = Schedule::parse(spec("0 30 2 * * *", "Europe/Berlin")).unwrap();
        // 02:30 does not exist on 29 March 2026 (02:00 -> 03:00): it fires at 03:00 CEST = 01:00 UTC.
        let spring = s.ticks(utc(2026, 3, 28, 12, 0, 0), utc(2026, 3, 29, 12, 0, 0), 10);
        assert_eq!(spring, vec![utc(2026, 3, 29, 1, 0, 0)]);
        // 02:30 happens twice on 25 October 2026: it fires once, at the first (CEST, 00:30 UTC).
        let autumn = s.ticks(utc(2026, 10, 24, 12, 0, 0), utc(2026, 10, 25, 12, 0, 0), 10);
        assert_eq!(autumn, vec![utc(2026, 10, 25, 0, 30, 0)]);
    }

    #[test]
    fn ticks_fall_on_whole_seconds_whatever_the_start() {
        let s = Schedule::parse(spec("* * * * * *", "UTC")).unwrap();
        let start = utc(2026, 1, 1, 0, 0, 0) + chrono::Duration::milliseconds(273);
        assert_eq!(s.next_after(start), Some(utc(2026, 1, 1, 0, 0, 1)));
    }

    #[test]
    fn seconds_are_supported_and_five_fields_too() {
        let every_second = Schedule::parse(spec("* * * * * *", "UTC")).unwrap();
        assert_eq!(every_second.ticks(utc(2026, 1, 1, 0, 0, 0), utc(2026, 1, 1, 0, 0, 3), 10).len(), 3);
        let hourly = Schedule::parse(spec("0 * * * *", "UTC")).unwrap();
        assert_eq!(hourly.next_after(utc(2026, 1, 1, 0, 10, 0)), Some(utc(2026, 1, 1, 1, 0, 0)));
    }

    #[test]
    fn source_schedules_have_five_fields_in_utc() {
        let every_15 = SourceCron::parse("*/15 * * * *").unwrap();
        assert_eq!(every_15.next_after(utc(2026, 1, 1, 0, 15, 0)), Some(utc(2026, 1, 1, 0, 30, 0)));
        assert_eq!(every_15.next_after(utc(2026, 1, 1, 0, 16, 40)), Some(utc(2026, 1, 1, 0, 30, 0)));
        for bad in ["* * * * * *", "*/15 * * *", "every 5 minutes", "61 * * * *", ""] {
            assert!(SourceCron::parse(bad).unwrap_err().contains("five-field cron"), "{bad:?}");
        }
    }

    #[test]
    fn expressions_that_never_fire_are_refused() {
        for never in ["0 0 30 2 *", "0 0 0 31 4 *", "0 0 31 11 *"] {
            let e = Schedule::parse(spec(never, "UTC")).unwrap_err();
            assert!(e.contains("never fires"), "{never}: {e}");
        }
        assert!(SourceCron::parse("0 0 30 2 *").unwrap_err().contains("never fires"));
        // Rare but real: 29 February.
        Schedule::parse(spec("0 0 29 2 *", "UTC")).unwrap();
        SourceCron::parse("0 0 29 2 *").unwrap();
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        assert!(Schedule::parse(spec("61 * * * * *", "UTC")).unwrap_err().contains("cron"));
        assert!(Schedule::parse(spec("* * * * *", "Mars/Olympus")).unwrap_err().contains("time zone"));
        let mut s = spec("* * * * *", "UTC");
        s.kind = "nope".into();
        assert!(Schedule::parse(s).unwrap_err().contains("unknown job kind"));
        let mut s = spec("* * * * *", "UTC");
        s.args = serde_json::json!({"do": "explode"});
        assert!(Schedule::parse(s).unwrap_err().contains("args do not fit"));
    }
}
