//! Cron expressions as Fleet reads them: the scheduler's schedules and every source's sync
//! schedule. An expression that parses but never fires is refused, so it cannot sit in a
//! ticker forever; fire times are found in the schedule's zone, DST-correct (`croner`).

use chrono::{DateTime, SubsecRound, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// How far ahead an expression must fire at least once.
pub const MAX_FIRST_FIRE_YEARS: u32 = 5;

/// An expression that parses but never fires (`0 0 30 2 *`, 30 February) or not for years
/// is a mistake: refused, so it cannot sit in the ticker forever.
pub fn check_fires(cron: &Cron, tz: &chrono_tz::Tz) -> Result<(), String> {
    let now = Utc::now();
    let horizon = now + chrono::Months::new(12 * MAX_FIRST_FIRE_YEARS);
    match next_fire(cron, tz, now) {
        Some(t) if t <= horizon => Ok(()),
        _ => Err(format!("never fires within {MAX_FIRST_FIRE_YEARS} years (a date that does not exist?)")),
    }
}

/// Parses a cron expression, with or without a seconds field.
pub fn parse_cron(expr: &str, seconds: Seconds) -> Result<Cron, croner::errors::CronError> {
    CronParser::builder().seconds(seconds).build().parse(expr)
}

/// The first fire time of `cron` in `tz` strictly after `t` (whole seconds).
pub fn next_fire(cron: &Cron, tz: &chrono_tz::Tz, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let local = t.trunc_subsecs(0).with_timezone(tz);
    cron.find_next_occurrence(&local, false).ok().map(|d| d.with_timezone(&Utc))
}

/// A calendar or comms source's sync schedule: a five-field cron expression (minute
/// hour day-of-month month day-of-week, no seconds) read in UTC.
#[derive(Debug, Clone)]
pub struct SourceCron {
    cron: Cron,
}

impl SourceCron {
    /// Parses `expr`; the error says what is wrong with it.
    pub fn parse(expr: &str) -> Result<SourceCron, String> {
        let cron = parse_cron(expr, Seconds::Disallowed).map_err(|e| {
            format!("schedule {expr:?} is not a five-field cron expression (e.g. \"*/15 * * * *\"): {e}")
        })?;
        check_fires(&cron, &chrono_tz::UTC).map_err(|e| format!("schedule {expr:?} {e}"))?;
        Ok(SourceCron { cron })
    }

    /// The first time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        next_fire(&self.cron, &chrono_tz::UTC, t)
    }
}
