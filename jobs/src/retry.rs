//! Backoff between attempts: exponential with jitter, capped.

use rand::Rng;
use std::time::Duration;

/// How random the wait before a retry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Uniform in `[0, d]` ("full jitter"): spreads retries of many jobs that
    /// failed together, so a recovering service is not hit by a wave.
    Full,
    /// Uniform in `[d/2, d]`: still spread, but never much shorter than `d`.
    Equal,
    /// Exactly `d`.
    None,
}

/// Retry backoff of a job kind: before attempt `n + 1` wait about
/// `min(max, base * factor^(n - 1))`, randomised by `jitter`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Wait after the first failed attempt (before jitter).
    pub base: Duration,
    /// Growth per attempt.
    pub factor: f64,
    /// Upper bound of the wait.
    pub max: Duration,
    /// Randomisation.
    pub jitter: Jitter,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { base: Duration::from_secs(1), factor: 2.0, max: Duration::from_secs(3600), jitter: Jitter::Full }
    }
}

impl Backoff {
    /// Exponential backoff from `base`, doubling, capped at one hour, full jitter.
    pub fn exponential(base: Duration) -> Self {
        Backoff { base, ..Backoff::default() }
    }

    /// The same backoff with other jitter.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The same backoff with another cap.
    pub fn max(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// The ceiling of the wait after failed attempt `attempt` (from 1), before jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let secs = self.base.as_secs_f64() * self.factor.powi(exp);
        if !secs.is_finite() || secs >= self.max.as_secs_f64() { self.max } else { Duration::from_secs_f64(secs) }
    }

    /// The wait after failed attempt `attempt` (from 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let d = self.ceiling(attempt);
        let mut rng = rand::rng();
        match self.jitter {
            Jitter::None => d,
            Jitter::Full => d.mul_f64(rng.random_range(0.0..=1.0)),
            Jitter::Equal => d.mul_f64(rng.random_range(0.5..=1.0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_grow_exponentially_up_to_the_cap() {
        let b = Backoff::exponential(Duration::from_millis(100)).max(Duration::from_secs(1));
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(2), Duration::from_millis(200));
        assert_eq!(b.ceiling(4), Duration::from_millis(800));
        assert_eq!(b.ceiling(5), Duration::from_secs(1));
        assert_eq!(b.ceiling(10_000), Duration::from_secs(1));
    }

    #[test]
    fn full_jitter_stays_within_the_ceiling_and_spreads() {
        let b = Backoff::exponential(Duration::from_secs(8));
        let samples: Vec<Duration> = (0..200).map(|_| b.delay(3)).collect();
        assert!(samples.iter().all(|d| *d <= Duration::from_secs(32)));
        let min = samples.iter().min().unwrap();
        let max = samples.iter().max().unwrap();
        assert!(*max - *min > Duration::from_secs(10), "full jitter should spread retries");
    }

    #[test]
    fn equal_jitter_never_goes_below_half() {
        let b = Backoff::exponential(Duration::from_secs(2)).jitter(Jitter::Equal);
        for _ in 0..100 {
            let d = b.delay(2);
            assert!(d >= Duration::from_secs(2) && d <= Duration::from_secs(4));
        }
    }
}
