//! A small CalDAV client (RFC 4791) with incremental sync (RFC 6578) and conditional writes,
//! and conditional GET for plain `.ics` feeds.
//!
//! Written on reqwest rather than taken from `libdav` because Fleet needs what it lacks: 507
//! continuation of truncated sync reports, a cap on every response body, and typed outcomes for
//! the sync engine (token refused → ETag listing; 412 → merge). Every request has a timeout.
//! Credentials are never put in errors or logs.

use reqwest::{Method, StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::time::Duration;
use thiserror::Error;
use url::Url;

/// Why a CalDAV or feed request failed.
#[derive(Debug, Error)]
pub enum CalDavError {
    /// Connection, TLS or timeout: worth a retry.
    #[error("transport: {0}")]
    Transport(String),
    /// The body was larger than the configured cap.
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    /// 401/403: the credentials are wrong or lack rights; retrying will not help.
    #[error("not authorised ({0})")]
    Unauthorised(StatusCode),
    /// 404 for the collection or feed itself.
    #[error("not found")]
    NotFound,
    /// 429/503: back off, for `retry_after` when the server said so.
    #[error("rate limited ({status}), retry after {retry_after:?}")]
    RateLimited {
        /// The status.
        status: StatusCode,
        /// `Retry-After` (seconds or an HTTP date, by [`fleet_net::parse_retry_after`]),
        /// when given.
        retry_after: Option<Duration>,
    },
    /// Any other unexpected status.
    #[error("unexpected status {0}")]
    Status(StatusCode),
    /// A multistatus body that is not XML.
    #[error("bad XML: {0}")]
    Xml(String),
    /// A URL that cannot be built.
    #[error("bad URL: {0}")]
    Url(String),
    /// The server's address is private or reserved and not allowed (the SSRF guard).
    #[error("{0}")]
    Refused(String),
}

impl CalDavError {
    /// True when a later attempt may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, CalDavError::Transport(_) | CalDavError::RateLimited { .. })
            || matches!(self, CalDavError::Status(s) if s.is_server_error())
    }
}

/// Limits of a client: the one outbound HTTP client of `fleet-net`, shared with the
/// provider clients and OAuth refresh.
pub use fleet_net::ClientOptions;

/// Hrefs per `calendar-multiget` REPORT.
const MULTIGET_BATCH: usize = 100;

/// Redirects a CalDAV server may send a request through (each checked by the guard).
const MAX_REDIRECTS: usize = 3;

/// A member of a collection: its href and ETag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteItem {
    /// The href as the server wrote it (an absolute path).
    pub href: String,
    /// The ETag, quotes included, when the server gave one.
    pub etag: Option<String>,
}

/// The result of a `sync-collection` REPORT, all truncated pages followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    /// What changed since the token (everything, without a token).
    Changes {
        /// New or changed members.
        changed: Vec<RemoteItem>,
        /// Hrefs removed since the token.
        removed: Vec<String>,
        /// The token for next time.
        token: String,
        /// How many REPORTs it took (more than one when the server truncated with 507).
        pages: usize,
    },
    /// The server refused the token (`DAV:valid-sync-token`): do a full ETag listing.
    TokenRefused,
    /// The server does not do sync-collection: use ETag listings.
    Unsupported,
}

/// A fetched calendar object.
#[derive(Debug, Clone)]
pub struct CalendarObject {
    /// Its href.
    pub href: String,
    /// Its ETag.
    pub etag: Option<String>,
    /// The iCalendar bytes.
    pub body: Vec<u8>,
}

/// What a conditional write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Written; the new ETag when the server returned one.
    Written(Option<String>),
    /// 412: someone else changed (or created) it first.
    PreconditionFailed,
}

/// The precondition of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// `If-None-Match: *`: create only.
    Create,
    /// `If-Match: <etag>`: update only that version.
    Match(String),
}

/// A CalDAV client bound to one calendar collection.
#[derive(Clone)]
pub struct CalDavClient {
    http: reqwest::Client,
    collection: Url,
    username: Option<String>,
    password: Option<SecretString>,
    options: ClientOptions,
}

impl std::fmt::Debug for CalDavClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CalDavClient").field("collection", &self.collection.as_str()).finish_non_exhaustive()
    }
}

const SYNC_PAGES_MAX: usize = 1_000;

impl CalDavClient {
    /// A client for the collection at `collection` (a trailing slash is added), with Basic auth
    /// when a username is given.
    pub fn new(
        collection: &str,
        username: Option<String>,
        password: Option<SecretString>,
        options: ClientOptions,
    ) -> Result<CalDavClient, CalDavError> {
        let mut collection = Url::parse(collection).map_err(|e| CalDavError::Url(e.to_string()))?;
        if !collection.path().ends_with('/') {
            let path = format!("{}/", collection.path());
            collection.set_path(&path);
        }
        if let Some(guard) = &options.guard {
            guard.check_url(&collection).map_err(|e| CalDavError::Refused(e.to_string()))?;
        }
        let http = options.client(MAX_REDIRECTS).map_err(|e| CalDavError::Transport(e.to_string()))?;
        Ok(CalDavClient { http, collection, username, password, options })
    }

    /// The collection URL.
    pub fn collection(&self) -> &Url {
        &self.collection
    }

    /// The URL of a member href (absolute path or relative name).
    /// An href the server gave may only point at the collection's own server: an absolute
    /// href elsewhere would take the Basic credentials (and the request) to another host.
    pub fn url_of(&self, href: &str) -> Result<Url, CalDavError> {
        let url = self.collection.join(href).map_err(|e| CalDavError::Url(e.to_string()))?;
        if url.origin() != self.collection.origin() {
            return Err(CalDavError::Url(format!("{} is not on the calendar's server", fleet_net::redact_url(href))));
        }
        Ok(url)
    }

    /// The href Fleet writes its own event with UID `uid` to: derived from the UID only, so a
    /// retried push hits the same resource.
    pub fn href_for_uid(&self, uid: &str) -> String {
        let safe: String = uid
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "-_.@".contains(c) { c } else { '_' })
            .take(200)
            .collect();
        format!("{}{}.ics", self.collection.path(), safe)
    }

    fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, url);
        match &self.username {
            Some(user) => builder.basic_auth(user, self.password.as_ref().map(|p| p.expose_secret().to_owned())),
            None => builder,
        }
    }

    async fn send(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, header::HeaderMap, Vec<u8>), CalDavError> {
        let mut response = builder.send().await.map_err(transport)?;
        let status = response.status();
        let headers = response.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > self.options.max_response_bytes {
                return Err(CalDavError::TooLarge(self.options.max_response_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        match status {
            StatusCode::UNAUTHORIZED => Err(CalDavError::Unauthorised(status)),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                Err(CalDavError::RateLimited { status, retry_after: fleet_net::retry_after(&headers) })
            }
            _ => Ok((status, headers, body)),
        }
    }

    /// Creates the collection (`MKCALENDAR`). An existing one is fine.
    pub async fn make_calendar(&self) -> Result<(), CalDavError> {
        let (status, _, _) = self
            .send(self.request(Method::from_bytes(b"MKCALENDAR").expect("method"), self.collection.clone()))
            .await?;
        match status.as_u16() {
            200..=299 | 405 => Ok(()),
            403 | 409 => Err(CalDavError::Status(status)),
            _ => Err(CalDavError::Status(status)),
        }
    }

    /// Deletes the whole collection (tests, source removal).
    pub async fn delete_collection(&self) -> Result<(), CalDavError> {
        let (status, _, _) = self.send(self.request(Method::DELETE, self.collection.clone())).await?;
        if status.is_success() || status == StatusCode::NOT_FOUND { Ok(()) } else { Err(CalDavError::Status(status)) }
    }

    /// `sync-collection` (RFC 6578) from `token` (`None`: initial sync), following 507-truncated
    /// results until the server says it is complete.
    pub async fn sync_collection(&self, token: Option<&str>) -> Result<SyncOutcome, CalDavError> {
        Ok(self.sync_report(token, false).await?.0)
    }

    /// `sync-collection` as [`Self::sync_collection`]; with `with_data` it also asks for each
    /// changed member's `calendar-data` (RFC 6578 lets a client ask for any property), so a
    /// server that sends it inline needs no `calendar-multiget` after it. The bodies it sent,
    /// by href, come beside the outcome; a member without one is fetched as before.
    async fn sync_report(
        &self,
        token: Option<&str>,
        with_data: bool,
    ) -> Result<(SyncOutcome, HashMap<String, Vec<u8>>), CalDavError> {
        let mut changed: HashMap<String, RemoteItem> = HashMap::new();
        let mut bodies: HashMap<String, Vec<u8>> = HashMap::new();
        let mut removed: Vec<String> = Vec::new();
        let mut token = token.unwrap_or("").to_owned();
        let (namespaces, data) =
            if with_data { (r#" xmlns:c="urn:ietf:params:xml:ns:caldav""#, "<c:calendar-data/>") } else { ("", "") };
        for page in 1..=SYNC_PAGES_MAX {
            let body = format!(
                r#"<?xml version="1.0" encoding="utf-8"?><d:sync-collection xmlns:d="DAV:"{namespaces}><d:sync-token>{}</d:sync-token><d:sync-level>1</d:sync-level><d:prop><d:getetag/>{data}</d:prop></d:sync-collection>"#,
                xml_escape(&token)
            );
            let request = self
                .request(Method::from_bytes(b"REPORT").expect("method"), self.collection.clone())
                .header(header::CONTENT_TYPE, "application/xml; charset=utf-8")
                .header("Depth", "0")
                .body(body);
            let (status, _, bytes) = self.send(request).await?;
            let text = xml_text(&bytes);
            match status.as_u16() {
                207 => {}
                403 | 409 if text.contains("valid-sync-token") => return Ok((SyncOutcome::TokenRefused, bodies)),
                400 | 403 | 405 | 409 | 415 | 501 => {
                    let outcome = if token.is_empty() { SyncOutcome::Unsupported } else { SyncOutcome::TokenRefused };
                    return Ok((outcome, bodies));
                }
                404 => return Err(CalDavError::NotFound),
                _ => return Err(CalDavError::Status(status)),
            }
            let parsed = parse_multistatus(&text, self.collection.path())?;
            let mut truncated = false;
            for response in parsed.responses {
                if response.is_collection {
                    // RFC 6578 §3.6: a 507 on the request URI means "more to come".
                    truncated |= response.status == Some(507);
                    continue;
                }
                if response.status == Some(404) {
                    changed.remove(&response.href);
                    bodies.remove(&response.href);
                    removed.push(response.href);
                } else if response.ok {
                    removed.retain(|h| *h != response.href);
                    match response.calendar_data.filter(|d| !d.trim().is_empty()) {
                        Some(data) => bodies.insert(response.href.clone(), data_bytes(data)),
                        // A later page's version without a body: the earlier body is stale.
                        None => bodies.remove(&response.href),
                    };
                    changed.insert(response.href.clone(), RemoteItem { href: response.href, etag: response.etag });
                }
            }
            let Some(next) = parsed.sync_token else {
                return Err(CalDavError::Xml("multistatus without sync-token".to_owned()));
            };
            token = next;
            if !truncated {
                let mut changed: Vec<RemoteItem> = changed.into_values().collect();
                changed.sort_by(|a, b| a.href.cmp(&b.href));
                return Ok((SyncOutcome::Changes { changed, removed, token, pages: page }, bodies));
            }
        }
        Err(CalDavError::Xml(format!("sync-collection still truncated after {SYNC_PAGES_MAX} pages")))
    }

    /// Every calendar object of the collection with its ETag (`PROPFIND`, Depth 1).
    pub async fn list_etags(&self) -> Result<Vec<RemoteItem>, CalDavError> {
        let body = r#"<?xml version="1.0" encoding="utf-8"?><d:propfind xmlns:d="DAV:"><d:prop><d:getetag/><d:resourcetype/></d:prop></d:propfind>"#;
        let request = self
            .request(Method::from_bytes(b"PROPFIND").expect("method"), self.collection.clone())
            .header(header::CONTENT_TYPE, "application/xml; charset=utf-8")
            .header("Depth", "1")
            .body(body);
        let (status, _, bytes) = self.send(request).await?;
        match status.as_u16() {
            207 => {}
            404 => return Err(CalDavError::NotFound),
            _ => return Err(CalDavError::Status(status)),
        }
        let parsed = parse_multistatus(&xml_text(&bytes), self.collection.path())?;
        let mut items: Vec<RemoteItem> = parsed
            .responses
            .into_iter()
            .filter(|r| !r.is_collection && !r.is_subcollection && r.ok)
            .map(|r| RemoteItem { href: r.href, etag: r.etag })
            .collect();
        items.sort_by(|a, b| a.href.cmp(&b.href));
        Ok(items)
    }

    /// Fetches members in `calendar-multiget` batches. Hrefs gone meanwhile are left out.
    pub async fn multiget(&self, hrefs: &[String]) -> Result<Vec<CalendarObject>, CalDavError> {
        let mut objects = Vec::with_capacity(hrefs.len());
        for batch in hrefs.chunks(MULTIGET_BATCH) {
            let mut body = String::from(
                r#"<?xml version="1.0" encoding="utf-8"?><c:calendar-multiget xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav"><d:prop><d:getetag/><c:calendar-data/></d:prop>"#,
            );
            for href in batch {
                body.push_str("<d:href>");
                body.push_str(&xml_escape(href));
                body.push_str("</d:href>");
            }
            body.push_str("</c:calendar-multiget>");
            let request = self
                .request(Method::from_bytes(b"REPORT").expect("method"), self.collection.clone())
                .header(header::CONTENT_TYPE, "application/xml; charset=utf-8")
                .header("Depth", "1")
                .body(body);
            let (status, _, bytes) = self.send(request).await?;
            if status.as_u16() != 207 {
                return Err(CalDavError::Status(status));
            }
            let parsed = parse_multistatus(&xml_text(&bytes), self.collection.path())?;
            for response in parsed.responses {
                if let (true, Some(data)) = (response.ok, response.calendar_data) {
                    objects.push(CalendarObject { href: response.href, etag: response.etag, body: data_bytes(data) });
                }
            }
        }
        Ok(objects)
    }

    /// GETs one member; `None` when it is gone.
    pub async fn get(&self, href: &str) -> Result<Option<CalendarObject>, CalDavError> {
        let (status, headers, body) = self.send(self.request(Method::GET, self.url_of(href)?)).await?;
        match status.as_u16() {
            200 => Ok(Some(CalendarObject { href: href.to_owned(), etag: etag_of(&headers), body })),
            404 | 410 => Ok(None),
            _ => Err(CalDavError::Status(status)),
        }
    }

    /// PUTs an iCalendar object under a precondition.
    pub async fn put(&self, href: &str, ics: &[u8], precondition: &Precondition) -> Result<WriteOutcome, CalDavError> {
        let mut request = self
            .request(Method::PUT, self.url_of(href)?)
            .header(header::CONTENT_TYPE, "text/calendar; charset=utf-8")
            .body(ics.to_vec());
        request = match precondition {
            Precondition::Create => request.header(header::IF_NONE_MATCH, "*"),
            Precondition::Match(etag) => request.header(header::IF_MATCH, etag.as_str()),
        };
        let (status, headers, _) = self.send(request).await?;
        match status.as_u16() {
            200..=299 => Ok(WriteOutcome::Written(etag_of(&headers))),
            412 => Ok(WriteOutcome::PreconditionFailed),
            _ => Err(CalDavError::Status(status)),
        }
    }

    /// DELETEs a member if it still has `etag` (`None`: unconditionally). Gone already is fine.
    pub async fn delete(&self, href: &str, etag: Option<&str>) -> Result<WriteOutcome, CalDavError> {
        let mut request = self.request(Method::DELETE, self.url_of(href)?);
        if let Some(etag) = etag {
            request = request.header(header::IF_MATCH, etag);
        }
        let (status, _, _) = self.send(request).await?;
        match status.as_u16() {
            200..=299 | 404 | 410 => Ok(WriteOutcome::Written(None)),
            412 => Ok(WriteOutcome::PreconditionFailed),
            _ => Err(CalDavError::Status(status)),
        }
    }
}

/// The result of a conditional feed GET.
#[derive(Debug, Clone)]
pub enum FeedOutcome {
    /// 304: unchanged since the validators.
    NotModified,
    /// A new body and its validators.
    Body {
        /// The bytes.
        body: Vec<u8>,
        /// ETag, for next time.
        etag: Option<String>,
        /// Last-Modified, for next time.
        last_modified: Option<String>,
    },
}

/// Conditional GET of an `.ics` feed (`If-None-Match` / `If-Modified-Since`).
pub async fn fetch_feed(
    client: &CalDavClient,
    url: &str,
    etag: Option<&str>,
    last_modified: Option<&str>,
) -> Result<FeedOutcome, CalDavError> {
    let url = Url::parse(url).map_err(|e| CalDavError::Url(e.to_string()))?;
    let mut request = client.request(Method::GET, url);
    if let Some(etag) = etag {
        request = request.header(header::IF_NONE_MATCH, etag);
    }
    if let Some(last_modified) = last_modified {
        request = request.header(header::IF_MODIFIED_SINCE, last_modified);
    }
    let (status, headers, body) = client.send(request).await?;
    match status.as_u16() {
        304 => Ok(FeedOutcome::NotModified),
        200 => Ok(FeedOutcome::Body {
            body,
            etag: etag_of(&headers),
            last_modified: headers.get(header::LAST_MODIFIED).and_then(|v| v.to_str().ok()).map(str::to_owned),
        }),
        403 => Err(CalDavError::Unauthorised(status)),
        404 | 410 => Err(CalDavError::NotFound),
        _ => Err(CalDavError::Status(status)),
    }
}

/// The difference between a stored state (href → ETag) and a fresh listing: what to fetch
/// (new or changed ETag) and what is gone. Items whose ETag equals the stored one — including
/// Fleet's own writes, stored with the ETag the server returned — are not fetched again.
pub fn diff_listing(stored: &HashMap<String, Option<String>>, listing: &[RemoteItem]) -> (Vec<String>, Vec<String>) {
    let mut fetch = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for item in listing {
        seen.insert(item.href.as_str());
        match stored.get(&item.href) {
            Some(Some(etag)) if item.etag.as_deref() == Some(etag.as_str()) => {}
            _ => fetch.push(item.href.clone()),
        }
    }
    let mut gone: Vec<String> = stored.keys().filter(|h| !seen.contains(h.as_str())).cloned().collect();
    gone.sort();
    (fetch, gone)
}

fn transport(err: reqwest::Error) -> CalDavError {
    // Never the URL (it may hold user information); the Basic auth header is never shown.
    match fleet_net::request_failure(err) {
        fleet_net::RequestFailure::Refused(why) => CalDavError::Refused(why),
        other => CalDavError::Transport(other.to_string()),
    }
}

fn etag_of(headers: &header::HeaderMap) -> Option<String> {
    headers.get(header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[derive(Debug, Default)]
struct MultiStatus {
    responses: Vec<DavResponse>,
    sync_token: Option<String>,
}

#[derive(Debug, Default)]
struct DavResponse {
    href: String,
    /// The response-level status (`<d:status>` directly in `<d:response>`).
    status: Option<u16>,
    /// A propstat with 200.
    ok: bool,
    etag: Option<String>,
    calendar_data: Option<String>,
    /// The href is the collection itself.
    is_collection: bool,
    /// resourcetype says collection (a child collection).
    is_subcollection: bool,
}

const DAV: &str = "DAV:";
const CALDAV: &str = "urn:ietf:params:xml:ns:caldav";

fn status_code(text: &str) -> Option<u16> {
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok())
}

fn normalise_href(href: &str) -> String {
    // Servers answer with absolute URLs or absolute paths, percent-encoded or not.
    let path = match Url::parse(href) {
        Ok(url) => url.path().to_owned(),
        Err(_) => href.to_owned(),
    };
    // Keys are decoded paths, so `a%40b.ics` from the server and `a@b.ics` from us agree.
    percent_decode(path.trim())
}

fn parse_multistatus(text: &str, collection_path: &str) -> Result<MultiStatus, CalDavError> {
    let doc = roxmltree::Document::parse(text).map_err(|e| CalDavError::Xml(e.to_string()))?;
    let mut out = MultiStatus::default();
    let root = doc.root_element();
    for child in root.children().filter(|n| n.is_element()) {
        if child.has_tag_name((DAV, "sync-token")) {
            out.sync_token = child.text().map(|t| t.trim().to_owned());
        }
        if !child.has_tag_name((DAV, "response")) {
            continue;
        }
        let mut response = DavResponse::default();
        for part in child.children().filter(|n| n.is_element()) {
            if part.has_tag_name((DAV, "href")) {
                response.href = normalise_href(part.text().unwrap_or_default());
            } else if part.has_tag_name((DAV, "status")) {
                response.status = part.text().and_then(status_code);
            } else if part.has_tag_name((DAV, "propstat")) {
                let status = part
                    .children()
                    .find(|n| n.has_tag_name((DAV, "status")))
                    .and_then(|n| n.text())
                    .and_then(status_code);
                if status != Some(200) {
                    continue;
                }
                response.ok = true;
                for prop in part.descendants().filter(|n| n.is_element()) {
                    if prop.has_tag_name((DAV, "getetag")) {
                        response.etag = prop.text().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
                    } else if prop.has_tag_name((CALDAV, "calendar-data")) {
                        response.calendar_data = Some(prop.text().unwrap_or_default().to_owned());
                    } else if prop.has_tag_name((DAV, "resourcetype")) {
                        response.is_subcollection = prop.children().any(|n| n.has_tag_name((DAV, "collection")));
                    }
                }
            }
        }
        response.is_collection =
            response.href.trim_end_matches('/') == percent_decode(collection_path).trim_end_matches('/');
        out.responses.push(response);
    }
    if out.sync_token.is_none() {
        out.sync_token = root
            .descendants()
            .find(|n| n.has_tag_name((DAV, "sync-token")) && n.parent().is_some_and(|p| p == root))
            .and_then(|n| n.text())
            .map(|t| t.trim().to_owned());
    }
    Ok(out)
}

/// Where [`xml_text`] puts a byte that is not part of valid UTF-8: U+10FE00 + the byte, in
/// Supplementary Private Use Area-B, which XML allows and calendars do not use.
const RAW_BYTE_BASE: u32 = 0x10_FE00;

/// A multistatus body as text for the XML parser, with every byte that is not valid UTF-8
/// kept as a private-use character instead of U+FFFD: `calendar-data` may be folded inside a
/// UTF-8 sequence or be Latin-1, and [`crate::decode`] repairs both only if it gets the
/// original bytes back ([`data_bytes`]).
fn xml_text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut text = String::with_capacity(bytes.len() + 16);
    for chunk in bytes.utf8_chunks() {
        text.push_str(chunk.valid());
        for &b in chunk.invalid() {
            text.push(char::from_u32(RAW_BYTE_BASE + u32::from(b)).expect("a valid code point"));
        }
    }
    std::borrow::Cow::Owned(text)
}

/// The bytes of `calendar-data` read through [`xml_text`]: each kept byte put back.
fn data_bytes(data: String) -> Vec<u8> {
    let raw = RAW_BYTE_BASE..RAW_BYTE_BASE + 0x100;
    if !data.chars().any(|c| raw.contains(&u32::from(c))) {
        return data.into_bytes();
    }
    let mut out = Vec::with_capacity(data.len());
    for c in data.chars() {
        match u32::from(c) {
            code if raw.contains(&code) => out.push((code - RAW_BYTE_BASE) as u8),
            _ => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_data_keeps_its_bytes_through_the_xml() {
        // A fold between the two bytes of "ö" (0xC3 0xB6) and a Latin-1 "é" (0xE9).
        let mut xml = br#"<?xml version="1.0"?><d:multistatus xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav"><d:response><d:href>/cal/a.ics</d:href><d:propstat><d:prop><c:calendar-data>BEGIN:VCALENDAR
BEGIN:VEVENT
SUMMARY:K"#
            .to_vec();
        xml.extend_from_slice(b"\xC3\r\n \xB6ln caf\xE9\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n");
        xml.extend_from_slice(
            b"</c:calendar-data></d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response></d:multistatus>",
        );
        let parsed = parse_multistatus(&xml_text(&xml), "/cal/").unwrap();
        let body = data_bytes(parsed.responses[0].calendar_data.clone().unwrap());
        assert!(body.windows(6).any(|w| w == b"K\xC3\n \xB6l"), "{body:?}");
        assert!(body.ends_with(b"caf\xE9\nEND:VEVENT\nEND:VCALENDAR\n"), "{body:?}");
    }

    #[test]
    fn hrefs_stay_on_the_calendar_server() {
        let client =
            CalDavClient::new("https://dav.example.com/cal/studio/", Some("u".into()), None, ClientOptions::default())
                .unwrap();
        assert_eq!(client.url_of("/cal/studio/a.ics").unwrap().as_str(), "https://dav.example.com/cal/studio/a.ics");
        assert_eq!(client.url_of("b.ics").unwrap().as_str(), "https://dav.example.com/cal/studio/b.ics");
        for elsewhere in
            ["http://169.254.169.254/latest/meta-data", "https://evil.example/a.ics", "//evil.example/a.ics"]
        {
            assert!(matches!(client.url_of(elsewhere), Err(CalDavError::Url(_))), "{elsewhere}");
        }
    }

    #[test]
    fn truncated_multistatus_is_recognised() {
        let xml = r#"<?xml version="1.0"?><d:multistatus xmlns:d="DAV:">
          <d:response><d:href>/cal/a.ics</d:href><d:propstat><d:prop><d:getetag>"1"</d:getetag></d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>
          <d:response><d:href>/cal/b.ics</d:href><d:status>HTTP/1.1 404 Not Found</d:status></d:response>
          <d:response><d:href>/cal/</d:href><d:status>HTTP/1.1 507 Insufficient Storage</d:status></d:response>
          <d:sync-token>http://example.com/sync/2</d:sync-token></d:multistatus>"#;
        let parsed = parse_multistatus(xml, "/cal/").unwrap();
        assert_eq!(parsed.sync_token.as_deref(), Some("http://example.com/sync/2"));
        assert_eq!(parsed.responses.len(), 3);
        assert!(parsed.responses[0].ok && parsed.responses[0].etag.as_deref() == Some("\"1\""));
        assert_eq!(parsed.responses[1].status, Some(404));
        assert!(parsed.responses[2].is_collection && parsed.responses[2].status == Some(507));
    }

    #[test]
    fn listing_diff() {
        let stored: HashMap<String, Option<String>> = [
            ("/c/a.ics".to_owned(), Some("\"1\"".to_owned())),
            ("/c/b.ics".to_owned(), Some("\"1\"".to_owned())),
            ("/c/gone.ics".to_owned(), Some("\"1\"".to_owned())),
        ]
        .into();
        let listing = [
            RemoteItem { href: "/c/a.ics".into(), etag: Some("\"1\"".into()) },
            RemoteItem { href: "/c/b.ics".into(), etag: Some("\"2\"".into()) },
            RemoteItem { href: "/c/new.ics".into(), etag: Some("\"1\"".into()) },
        ];
        let (fetch, gone) = diff_listing(&stored, &listing);
        assert_eq!(fetch, ["/c/b.ics", "/c/new.ics"]);
        assert_eq!(gone, ["/c/gone.ics"]);
    }
}

/// What Fleet remembers about a CalDAV collection between syncs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectionState {
    /// The last sync token (`None`: no incremental sync yet, or the server has none).
    pub token: Option<String>,
    /// Every member href with the ETag last fetched (or written by Fleet).
    pub etags: HashMap<String, Option<String>>,
}

/// How a pull found its changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullMode {
    /// `sync-collection` from a token.
    Incremental,
    /// `sync-collection` without a token.
    Initial,
    /// The token was refused or the server has no sync-collection: ETag listing diffed
    /// against the stored state.
    Listing,
}

/// The changes a pull found, fetched.
#[derive(Debug, Clone)]
pub struct Pull {
    /// New or changed objects, with their bodies.
    pub changed: Vec<CalendarObject>,
    /// Hrefs gone from the server.
    pub removed: Vec<String>,
    /// The state to store once the changes are applied.
    pub state: CollectionState,
    /// How the changes were found.
    pub mode: PullMode,
}

/// Pulls what changed since `state`: `sync-collection` with the stored token, following 507
/// truncation; an ETag listing when the token is refused or unsupported. Objects whose ETag
/// equals the stored one (Fleet's own writes included) are not fetched.
///
/// A first pull (nothing stored) and an incremental one ask for the bodies inside the
/// `sync-collection` report itself: one pass over the collection on the server instead of
/// a listing and then `calendar-multiget`s of the same objects (a 5,000-object Radicale
/// served the two in about twice the time of the one). Members the server sends without a
/// body are fetched with `calendar-multiget`, and a report too large for the body cap is
/// asked again without bodies. A pull without a token that still has a stored state (the
/// token was lost) lists first and fetches only what differs, as the listing does.
pub async fn pull_changes(client: &CalDavClient, state: &CollectionState) -> Result<Pull, CalDavError> {
    let inline = state.token.is_some() || state.etags.is_empty();
    let token = state.token.as_deref();
    let (outcome, mut bodies) = match client.sync_report(token, inline).await {
        Err(CalDavError::TooLarge(_)) if inline => client.sync_report(token, false).await?,
        other => other?,
    };
    let (to_fetch, removed, token, mode) = match outcome {
        SyncOutcome::Changes { changed, removed, token, .. } => {
            let mode = if state.token.is_some() { PullMode::Incremental } else { PullMode::Initial };
            let mut removed = removed;
            if mode == PullMode::Initial {
                // An initial report lists everything that exists: the rest is gone.
                let present: std::collections::HashSet<&str> = changed.iter().map(|c| c.href.as_str()).collect();
                removed.extend(state.etags.keys().filter(|h| !present.contains(h.as_str())).cloned());
            }
            let fetch: Vec<RemoteItem> = changed
                .into_iter()
                .filter(|item| match state.etags.get(&item.href) {
                    Some(Some(etag)) => item.etag.as_deref() != Some(etag.as_str()),
                    _ => true,
                })
                .collect();
            (fetch, removed, Some(token), mode)
        }
        SyncOutcome::TokenRefused | SyncOutcome::Unsupported => {
            bodies.clear();
            let listing = client.list_etags().await?;
            let (fetch, gone) = diff_listing(&state.etags, &listing);
            // A fresh token for next time, when the server has one.
            let token = match client.sync_collection(None).await {
                Ok(SyncOutcome::Changes { token, .. }) => Some(token),
                _ => None,
            };
            let fetch = fetch.into_iter().map(|href| RemoteItem { href, etag: None }).collect();
            (fetch, gone, token, PullMode::Listing)
        }
    };
    let mut changed = Vec::with_capacity(to_fetch.len());
    let mut missing = Vec::new();
    for item in to_fetch {
        match bodies.remove(&item.href) {
            Some(body) => changed.push(CalendarObject { href: item.href, etag: item.etag, body }),
            None => missing.push(item.href),
        }
    }
    changed.extend(client.multiget(&missing).await?);
    changed.sort_by(|a, b| a.href.cmp(&b.href));
    let mut next = state.clone();
    next.token = token;
    for href in &removed {
        next.etags.remove(href);
    }
    for object in &changed {
        next.etags.insert(object.href.clone(), object.etag.clone());
    }
    Ok(Pull { changed, removed, state: next, mode })
}
