//! SMS and calls from a Twilio-style REST API (`/2010-04-01/Accounts/{sid}/Messages.json`
//! and `Calls.json`, HTTP basic auth with the account id and auth token).
//!
//! A run reads from one whole day before the newest record it has seen (the API's
//! `DateSent>=` filter is day-granular GMT), follows `next_page_uri` to the end, and
//! commits each page with the new high-water mark in the same transaction (through
//! [`PgStore`]). Records are keyed by their id, so the overlap re-reads without
//! doubling, and a re-read record's status is merged forward only. 429 and 5xx answers
//! and connection errors are retried with exponential backoff (honouring
//! `Retry-After` as [`fleet_net::retry_after`] reads it, sleeping at most
//! [`MAX_INLINE_WAIT`]); after the last try, or at once when a 429 asks for longer than
//! that, the job is retried by the engine (a 429 as a fleet-wide slow-down for its wait).

use crate::contacts::ContactBook;
use crate::imap::{FetchedItem, FolderBatch, FolderCursor, StoreError, SyncStore};
use crate::sms::{Page, date_sent_from, entry_from_call, entry_from_sms};
use crate::store::PgStore;
use crate::timeline::Location;
use chrono::{DateTime, TimeZone, Utc};
use fleet_kit::limits::Verdict;
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

/// What a sync's outcome says about its provider account, for the account's limit key: a
/// 429 past the retries holds the account back fleet-wide, an unreachable or failing
/// provider feeds its breaker, and refused credentials or a store failure say nothing
/// about the provider.
pub fn verdict(outcome: &Result<SmsReport, SmsError>) -> Verdict {
    match outcome {
        Ok(_) => Verdict::Healthy,
        Err(SmsError::RateLimited(after)) => Verdict::SlowDown(*after),
        Err(SmsError::Unavailable(_)) => Verdict::Failing,
        Err(SmsError::Auth(_) | SmsError::Store(_)) => Verdict::Neutral,
    }
}

/// The longest a run sleeps before trying a page again. Longer waits are the engine's: a
/// 429 asking for more ends the run at once with its whole wait ([`SmsError::RateLimited`],
/// a fleet-wide slow-down of the account) rather than holding a worker asleep.
pub const MAX_INLINE_WAIT: Duration = Duration::from_secs(30);

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
                let retry_after = fleet_net::retry_after(resp.headers());
                if status == 429 {
                    if attempt + 1 == TRIES || retry_after.is_some_and(|wait| wait > MAX_INLINE_WAIT) {
                        return Err(SmsError::RateLimited(retry_after.unwrap_or(Duration::from_secs(5))));
                    }
                    tokio::time::sleep(retry_after.unwrap_or(backoff)).await;
                    continue;
                }
                if status >= 500 {
                    last = format!("HTTP {status}");
                    tokio::time::sleep(retry_after.unwrap_or(backoff).min(MAX_INLINE_WAIT)).await;
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
    fn limit_keys_are_per_tenant() {
        assert_eq!(limit_key("acme", "AC1"), "sms:acme:AC1");
        assert_ne!(limit_key("a", "AC1"), limit_key("b", "AC1"));
    }

    /// A provider answering 429 with `retry-after` to every request, counting them.
    async fn always_429(retry_after: &'static str) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use axum::response::IntoResponse;
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let app = axum::Router::new().fallback(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { (axum::http::StatusCode::TOO_MANY_REQUESTS, [("retry-after", retry_after)]).into_response() }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/page", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, calls)
    }

    #[tokio::test]
    async fn a_429_asking_for_more_than_the_inline_wait_ends_the_run_with_the_whole_wait() {
        let (url, calls) = always_429("3600").await;
        let http = fleet_net::ClientOptions::default().client(0).unwrap();
        let mut report = SmsReport::default();
        let started = std::time::Instant::now();
        let e = get_page(&http, &url, "AC1", "token", &mut report).await.unwrap_err();
        assert!(matches!(e, SmsError::RateLimited(d) if d == Duration::from_secs(3600)), "{e}");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1, "no inline retry");
        assert!(started.elapsed() < MAX_INLINE_WAIT, "no inline sleep");
    }
}
