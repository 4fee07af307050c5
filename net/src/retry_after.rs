//! `Retry-After` (RFC 9110 §10.2.3) as every outbound client of Fleet reads it, under one
//! cap policy: at least [`RETRY_AFTER_MIN`] (0 or a date in the past would be an
//! immediate retry loop against a service that asked for a pause), at most
//! [`RETRY_AFTER_MAX`] (a hostile or broken server must not park a job or an endpoint for
//! a month). A caller that waits inline for less (an in-run retry) bounds its own sleep
//! and hands longer waits to the engine; it does not parse again.

use chrono::{DateTime, Utc};
use std::time::Duration;

/// The shortest wait a `Retry-After` yields: 1 s.
pub const RETRY_AFTER_MIN: Duration = Duration::from_secs(1);

/// The longest wait a `Retry-After` yields: 10 h.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(10 * 3600);

/// `Retry-After` as seconds or an HTTP date, clamped to [`RETRY_AFTER_MIN`]..[`RETRY_AFTER_MAX`];
/// garbage, negative or fractional values are ignored (`None`).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    parse_at(v, Utc::now())
}

/// The `Retry-After` header of a response, read by [`parse_retry_after`].
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    parse_retry_after(headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?)
}

fn parse_at(v: &str, now: DateTime<Utc>) -> Option<Duration> {
    let v = v.trim();
    let secs = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        v.parse::<u64>().ok()?
    } else {
        let at = DateTime::parse_from_rfc2822(v).ok()?;
        (at.timestamp() - now.timestamp()).max(0) as u64
    };
    Some(Duration::from_secs(secs).clamp(RETRY_AFTER_MIN, RETRY_AFTER_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_safely() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("0"), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after("2592000"), Some(Duration::from_secs(36_000)), "a month is clamped to 10 h");
        for bad in ["-1", "1.5", "soon", ""] {
            assert_eq!(parse_retry_after(bad), None, "{bad:?}");
        }
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::from_secs(1)), "a past date");
    }

    #[test]
    fn dates_count_from_now() {
        let now = DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(parse_at("Wed, 02 Dec 2026 10:00:30 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_at("Wed, 02 Dec 2026 09:00:00 GMT", now), Some(RETRY_AFTER_MIN));
        assert_eq!(parse_at("Thu, 02 Dec 2027 10:00:00 GMT", now), Some(RETRY_AFTER_MAX));
    }

    #[test]
    fn the_header_is_read_from_a_response() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
    }
}
