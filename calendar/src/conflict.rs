//! Double bookings: overlaps among busy intervals.
//!
//! Intervals are half-open, `[start, end)`: two bookings overlap when
//! `a.start < b.end && b.start < a.end`, so one ending at 14:00 and one starting at 14:00 do
//! not conflict. Which occurrences are busy is [`crate::Occurrence::is_busy`]'s call.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// A busy stretch of time, with a key the caller uses to find the occurrence again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusyInterval<K> {
    /// The caller's key (an occurrence id).
    pub key: K,
    /// Inclusive start.
    pub start: DateTime<Utc>,
    /// Exclusive end.
    pub end: DateTime<Utc>,
}

/// Two busy intervals that overlap, and the overlap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict<K> {
    /// The interval that starts first (or the first given, on a tie).
    pub a: K,
    /// The other one.
    pub b: K,
    /// Start of the overlap.
    pub start: DateTime<Utc>,
    /// End of the overlap.
    pub end: DateTime<Utc>,
}

/// Every overlapping pair, each once; every interval is checked, in O(n log n + pairs).
/// Empty intervals (`end <= start`) never conflict.
pub fn find_conflicts<K: Clone>(intervals: &[BusyInterval<K>]) -> Vec<Conflict<K>> {
    let mut order: Vec<usize> = (0..intervals.len()).filter(|&i| intervals[i].start < intervals[i].end).collect();
    order.sort_by_key(|&i| (intervals[i].start, i));
    let mut active: Vec<usize> = Vec::new();
    let mut conflicts = Vec::new();
    for &i in &order {
        let current = &intervals[i];
        // Touching is not overlapping: an interval that ended at `current.start` is done.
        active.retain(|&j| intervals[j].end > current.start);
        for &j in &active {
            let other = &intervals[j];
            conflicts.push(Conflict {
                a: other.key.clone(),
                b: current.key.clone(),
                start: current.start,
                end: other.end.min(current.end),
            });
        }
        active.push(i);
    }
    conflicts
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn iv(key: u32, start_h: u32, end_h: u32) -> BusyInterval<u32> {
        BusyInterval {
            key,
            start: Utc.with_ymd_and_hms(2027, 6, 12, start_h, 0, 0).unwrap(),
            end: Utc.with_ymd_and_hms(2027, 6, 12, end_h, 0, 0).unwrap(),
        }
    }

    #[test]
    fn touching_is_not_a_conflict_overlap_is() {
        let found = find_conflicts(&[iv(1, 10, 14), iv(2, 14, 18), iv(3, 13, 15), iv(4, 20, 20)]);
        let pairs: Vec<(u32, u32)> = found.iter().map(|c| (c.a, c.b)).collect();
        assert_eq!(pairs, vec![(1, 3), (3, 2)]);
    }

    #[test]
    fn brute_force_agrees() {
        let mut intervals = Vec::new();
        let mut seed = 7u64;
        for key in 0..300u32 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let start = (seed >> 33) % 2000;
            let len = (seed >> 20) % 30;
            let base = Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap();
            intervals.push(BusyInterval {
                key,
                start: base + chrono::TimeDelta::minutes(start as i64),
                end: base + chrono::TimeDelta::minutes((start + len) as i64),
            });
        }
        let mut fast: Vec<(u32, u32)> =
            find_conflicts(&intervals).iter().map(|c| (c.a.min(c.b), c.a.max(c.b))).collect();
        fast.sort();
        let mut slow = Vec::new();
        for a in &intervals {
            for b in &intervals {
                let nonempty = a.start < a.end && b.start < b.end;
                if nonempty && a.key < b.key && a.start < b.end && b.start < a.end {
                    slow.push((a.key, b.key));
                }
            }
        }
        assert_eq!(fast, slow);
    }
}
