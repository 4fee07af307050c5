//! `Retry-After` (RFC 9110 §10.2.3) as every outbound client of Fleet reads it.

use std::time::Duration;

/// `Retry-After` as seconds or an HTTP date, clamped to 1 s..10 h; garbage, negative
/// or fractional values are ignored.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    let secs = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        v.parse::<u64>().ok()?
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
        (at.timestamp() - chrono::Utc::now().timestamp()).max(0) as u64
    };
    Some(Duration::from_secs(secs.clamp(1, 10 * 3600)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_safely() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("0"), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after("2592000"), Some(Duration::from_secs(36_000)), "a month is clamped to 10 h");
        for bad in ["-1", "1.5", "soon", ""] {
            assert_eq!(parse_retry_after(bad), None, "{bad:?}");
        }
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::from_secs(1)), "a past date");
    }
}
