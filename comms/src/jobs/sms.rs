//! SMS and calls from a Twilio-style REST API (`/2010-04-01/Accounts/{sid}/Messages.json`
//! and `Calls.json`, HTTP basic auth with the account id and auth token).
//!
//! A run reads from one whole day before the newest record it has seen (the API's
//! `DateSent>=` filter is day-granular GMT), follows `next_page_uri` to the end, and
//! commits each page with the new high-water mark in the same transaction (through
//! [`PgStore`]). Records are keyed by their id, so the overlap re-reads without
//! doubling, and a re-read record's status is merged forward only. 429 and 5xx answers
//! and connection errors are retried with exponential backoff (honouring
//! `Retry-After`, at most 30 s); after the last try the job is retried by the engine
//! (a 429 as a fleet-wide slow-down).

use crate::contacts::ContactBook;
use crate::imap::{FetchedItem, FolderBatch, FolderCursor, StoreError, SyncStore};
use crate::sms::{Page, date_sent_from, entry_from_call, entry_from_sms};
use crate::store::PgStore;
use crate::timeline::Location;
use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;
use std::time::Duration;

/// The non-secret settings of an SMS source (`comms_sources.config`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsSourceConfig {
    /// Base URL of the API, e.g. `https://api.twilio.com`.
    pub api_base: String,
    /// Account id (`AC…`), the basic-auth user.
    pub account_sid: String,
    /// Also read call logs.
    #[serde(default = "yes")]
    pub calls: bool,
}

fn yes() -> bool {
    true
}

/// Why an SMS sync stopped.
#[derive(Debug, thiserror::Error)]
pub enum SmsError {
    /// The provider asked to slow down (429) past the retries.
    #[error("provider rate limit (429); retry after {0:?}")]
    RateLimited(Duration),
    /// The provider refused the credentials (401/403).
    #[error("provider refused the credentials (HTTP {0})")]
    Auth(u16),
    /// The provider failed or could not be reached past the retries.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct SmsReport {
    /// Pages read.
    pub pages: usize,
    /// New entries.
    pub new: usize,
    /// Records read again (the overlap).
    pub duplicates: usize,
    /// HTTP attempts retried.
    pub retries: usize,
}

/// Tries per page.
const TRIES: u32 = 5;

/// The fleet-wide limit key of a tenant's provider account (`[limits."sms:*"]`):
/// `sms:<tenant>:<account sid>`. The account SID is the tenant's input, so the tenant is
/// part of the key: naming another tenant's account cannot use up its rate or hold it back.
pub fn limit_key(tenant: &str, account_sid: &str) -> String {
    format!("sms:{tenant}:{account_sid}")
}

/// `Retry-After` as seconds or as an HTTP date, capped at 30 s (longer waits are the
/// engine's: the job is retried, or the account slowed down fleet-wide).
pub fn retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let v = value.trim();
    let wait = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
            (at - now).to_std().unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(Duration::from_secs(30)))
}

async fn get_page(
    http: &reqwest::Client,
    url: &str,
    user: &str,
    token: &str,
    report: &mut SmsReport,
) -> Result<Page, SmsError> {
    let mut last = String::new();
    for attempt in 0..TRIES {
        if attempt > 0 {
            report.retries += 1;
        }
        let backoff = Duration::from_millis(100 * (1 << attempt));
        match http.get(url).basic_auth(user, Some(token)).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                if resp.status().is_success() {
                    let body = resp
                        .bytes()
                        .await
                        .map_err(|e| SmsError::Unavailable(format!("reading a page: {}", e.without_url())))?;
                    return serde_json::from_slice::<Page>(&body)
                        .map_err(|e| SmsError::Unavailable(format!("bad page: {e}")));
                }
                if status == 401 || status == 403 {
                    return Err(SmsError::Auth(status));
                }
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| retry_after(v, Utc::now()));
                if status == 429 {
                    if attempt + 1 == TRIES {
                        return Err(SmsError::RateLimited(retry_after.unwrap_or(Duration::from_secs(5))));
                    }
                    tokio::time::sleep(retry_after.unwrap_or(backoff)).await;
                    continue;
                }
                if status >= 500 {
                    last = format!("HTTP {status}");
                    tokio::time::sleep(retry_after.unwrap_or(backoff)).await;
                    continue;
                }
                return Err(SmsError::Unavailable(format!("HTTP {status}")));
            }
            Err(e) => {
                last = if e.is_timeout() { "timeout".into() } else { "connection failed".into() };
                tokio::time::sleep(backoff).await;
            }
        }
    }
    Err(SmsError::Unavailable(last))
}

/// Reads messages (and calls) of `cfg` into `store`.
pub async fn sync_sms(
    http: &reqwest::Client,
    cfg: &SmsSourceConfig,
    token: &str,
    source: &str,
    book: &ContactBook,
    store: &mut PgStore,
) -> Result<SmsReport, SmsError> {
    let mut report = SmsReport::default();
    let mut kinds = vec![("sms", "Messages.json", "DateSent")];
    if cfg.calls {
        kinds.push(("calls", "Calls.json", "StartTime"));
    }
    let base = cfg.api_base.trim_end_matches('/');
    for (folder, resource, filter) in kinds {
        // The high-water mark (newest record time, seconds) lives in the cursor's last_uid.
        let mut cursor = store.cursor(source, folder).await?.unwrap_or(FolderCursor {
            uidvalidity: 0,
            uidnext: 0,
            last_uid: 0,
            highestmodseq: None,
        });
        let newest: Option<DateTime<Utc>> =
            (cursor.last_uid > 0).then(|| Utc.timestamp_opt(i64::from(cursor.last_uid), 0).single()).flatten();
        let mut url = format!("{base}/2010-04-01/Accounts/{}/{resource}?PageSize=1000", cfg.account_sid);
        if let Some(day) = date_sent_from(newest) {
            url.push_str(&format!("&{filter}%3E={}", day.format("%Y-%m-%d")));
        }
        loop {
            let page = get_page(http, &url, &cfg.account_sid, token, &mut report).await?;
            report.pages += 1;
            let now = Utc::now();
            let entries: Vec<_> = page
                .messages
                .iter()
                .map(|m| {
                    (m.sid.clone(), entry_from_sms(m, source, book, now), serde_json::to_vec(m).unwrap_or_default())
                })
                .chain(page.calls.iter().map(|c| {
                    (c.sid.clone(), entry_from_call(c, source, book, now), serde_json::to_vec(c).unwrap_or_default())
                }))
                .collect();
            let mut items = Vec::new();
            for (sid, entry, raw) in entries {
                if entry.time_source == crate::parse::TimeSource::Provider {
                    cursor.last_uid = cursor.last_uid.max(entry.time.timestamp().clamp(0, i64::from(u32::MAX)) as u32);
                }
                let location =
                    Location { source: source.to_owned(), folder: format!("{folder}:{sid}"), uidvalidity: 0, uid: 0 };
                items.push(FetchedItem { location, outcome: Ok(entry), raw });
            }
            let counts = store
                .commit(FolderBatch {
                    source: source.to_owned(),
                    folder: folder.to_owned(),
                    cursor,
                    items,
                    removed: Vec::new(),
                    drop_stale_validity: false,
                })
                .await?;
            report.new += counts.new;
            report.duplicates += counts.duplicates;
            match page.next_page_uri.as_deref().filter(|n| !n.is_empty()) {
                Some(next) if next.starts_with('/') => url = format!("{base}{next}"),
                // An absolute link is followed only on the same API (never to another host).
                Some(next) if next.starts_with(&format!("{base}/")) => url = next.to_owned(),
                Some(_) => return Err(SmsError::Unavailable("next page link points off the API".into())),
                None => break,
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates_and_is_capped() {
        let now = Utc.with_ymd_and_hms(2026, 12, 2, 7, 0, 0).unwrap();
        assert_eq!(retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(retry_after("Wed, 02 Dec 2026 07:00:12 GMT", now), Some(Duration::from_secs(12)));
        assert_eq!(retry_after("Wed, 02 Dec 2026 06:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(retry_after("3600", now), Some(Duration::from_secs(30)));
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(limit_key("acme", "AC1"), "sms:acme:AC1");
        assert_ne!(limit_key("a", "AC1"), limit_key("b", "AC1"));
    }
}
