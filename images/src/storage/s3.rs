//! The S3-compatible store: `rusty-s3` signs (SigV4, query-string auth with an
//! unsigned payload), the client `fleet_net` builds sends.
//!
//! Why `rusty-s3` and not `object_store` (Apache Arrow): `rusty-s3` is sans-IO, so every
//! request goes out through Fleet's one client builder (`fleet_net::ClientOptions`, its
//! TLS roots, timeouts and redirect policy) on the workspace's `reqwest` 0.13, and the
//! scheduler presigns upload URLs with the same crate without linking an HTTP stack
//! ([`crate::uploads`], which signs `content-type` and `content-length` into the URL;
//! `object_store`'s `Signer` signs the host only). `object_store` would bring its own
//! `reqwest` 0.12 and hyper stack beside the workspace's, plus its own retry and error
//! types to map back to [`StorageError`].
//!
//! What this module adds around the signer:
//! * **Retries**: each request is tried up to `max_attempts` times while it fails in a
//!   way that may pass (408, 429, 5xx, timeouts, connection errors), waiting 100 ms,
//!   200 ms, ... (with jitter) or the server's `Retry-After` when it is at most 10 s.
//!   Every S3 call made here is idempotent, so a retry cannot store something twice.
//!   No retry starts once one request's deadline (`timeout_ms`) has gone by since the
//!   first try: a request that timed out is left to the job's own retry, so a hung store
//!   costs a job one deadline, not `max_attempts` of them.
//! * **Multipart uploads**: an object above `multipart_threshold_bytes` goes up in parts
//!   of `multipart_part_bytes` (slices of the caller's buffer, no copies), up to
//!   [`PARALLEL_PARTS`] at a time, each retried on its own; a failed upload is aborted so
//!   its parts are not kept (and paid for). Readers see the old object or the whole new
//!   one: S3 publishes a multipart object only when it is completed.
//!
//! Every request has a deadline (connect to the last body byte) and a connect timeout.
//! Responses map to: 2xx done; 404 `NoSuchKey` is "no object"; 404 `NoSuchBucket` and
//! other 4xx (403: refused credentials) are permanent; 408, 429 and 5xx, timeouts and
//! connection errors are retryable. Error texts carry the S3 error code and message,
//! never the signed URL (which holds the access key id and a signature) nor the keys.
//!
//! The endpoint is operator configuration, not user input, so requests do not go
//! through the webhook SSRF guard (an internal MinIO is a normal setup): the client is
//! `fleet_net`'s with no guard and no redirects (a redirect would carry the signature).

use super::{ObjectMeta, ObjectStore, S3Config, StorageError, validate_key};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{StreamExt as _, TryStreamExt as _};
use rusty_s3::actions::{CompleteMultipartUploadResponse, CreateMultipartUpload};
use rusty_s3::{Bucket, Credentials, S3Action};
use std::future::Future;
use std::time::Duration;

/// How long a signed URL stays valid: long enough for a slow 5 MB upload on top of
/// clock skew, short enough to be useless if it leaked. Each attempt signs anew.
const SIGNED_FOR: Duration = Duration::from_secs(15 * 60);

/// Most bytes of an error response read (to find its `<Code>`).
const MAX_ERROR_BODY: usize = 16 * 1024;

/// Parts of one multipart upload in flight at once.
pub const PARALLEL_PARTS: usize = 4;

/// S3's most parts in one multipart upload.
const MAX_PARTS: u64 = 10_000;

/// The first wait before a retry; each further one doubles.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The longest `Retry-After` waited for inline; a longer one ends the retries (the job's
/// own retry, with its backoff, takes over).
const MAX_INLINE_WAIT: Duration = Duration::from_secs(10);

/// A bucket on an S3-compatible server.
#[derive(Clone)]
pub struct S3Store {
    http: reqwest::Client,
    bucket: Bucket,
    credentials: Credentials,
    multipart_threshold: u64,
    part_bytes: u64,
    max_attempts: u32,
    /// No retry starts once this much time has gone by since the first try (one request's
    /// deadline): a request that timed out has used it up, and the job's retry takes over.
    retry_budget: Duration,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `Credentials`' own Debug shows the access key id.
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket.name())
            .field("region", &self.bucket.region())
            .field("base_url", &self.bucket.base_url().as_str())
            .field("credentials", &"[REDACTED]")
            .field("multipart_threshold", &self.multipart_threshold)
            .field("part_bytes", &self.part_bytes)
            .field("max_attempts", &self.max_attempts)
            .field("retry_budget", &self.retry_budget)
            .finish()
    }
}

/// A request error without its URL (a signed URL carries the access key id).
fn send_error(what: &str, e: reqwest::Error) -> StorageError {
    // Timeouts, refused or reset connections, broken bodies: the server may be back soon.
    let retryable = !(e.is_builder() || e.is_redirect());
    let hint = if e.is_connect() {
        " (the store cannot be reached)"
    } else if e.is_timeout() {
        " (the store did not answer in time)"
    } else {
        ""
    };
    let text = format!("{what}: {}{hint}", fleet_net::request_failure(e));
    if retryable { StorageError::Retryable(text) } else { StorageError::Permanent(text) }
}

/// `<Code>` and `<Message>` of an S3 error document, if there is one.
fn error_code(body: &str) -> (Option<&str>, Option<&str>) {
    let field = |name: &str| {
        let open = format!("<{name}>");
        let start = body.find(&open)? + open.len();
        let end = body[start..].find("</")? + start;
        Some(body[start..end].trim())
    };
    (field("Code"), field("Message"))
}

/// A non-2xx response: its status, S3 error code, `Retry-After` and a text for the error.
struct Failure {
    status: u16,
    code: Option<String>,
    retry_after: Option<Duration>,
    text: String,
}

impl Failure {
    async fn read(what: &str, resp: reqwest::Response) -> Failure {
        let status = resp.status().as_u16();
        let retry_after = fleet_net::retry_after(resp.headers());
        let body = read_capped(resp, MAX_ERROR_BODY).await.unwrap_or_default();
        Failure::from_body(what, status, retry_after, &String::from_utf8_lossy(&body))
    }

    fn from_body(what: &str, status: u16, retry_after: Option<Duration>, body: &str) -> Failure {
        let (code, message) = error_code(body);
        let mut text = format!("{what}: HTTP {status}");
        if let Some(c) = code {
            text.push_str(&format!(" {c}"));
        }
        if let Some(m) = message {
            text.push_str(&format!(": {}", m.chars().take(300).collect::<String>()));
        }
        match code {
            Some("NoSuchBucket") => text.push_str(" (the bucket does not exist)"),
            Some("AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch") => {
                text.push_str(" (the store refused the credentials or their permissions)")
            }
            _ if status == 403 => text.push_str(" (the store refused the credentials or their permissions)"),
            _ => {}
        }
        Failure { status, code: code.map(str::to_owned), retry_after, text }
    }

    /// 404 about the key (not the bucket): the object is not there.
    fn is_absent_object(&self) -> bool {
        self.status == 404 && self.code.as_deref() != Some("NoSuchBucket")
    }

    /// Retryable on 408, 429 and 5xx; permanent otherwise.
    fn is_retryable(&self) -> bool {
        self.status >= 500 || self.status == 429 || self.status == 408
    }

    fn into_error(self) -> StorageError {
        if self.is_retryable() { StorageError::Retryable(self.text) } else { StorageError::Permanent(self.text) }
    }
}

/// One attempt's failure: the error, and how long the server asked us to wait.
struct Attempt {
    error: StorageError,
    retry_after: Option<Duration>,
}

impl From<StorageError> for Attempt {
    fn from(error: StorageError) -> Self {
        Attempt { error, retry_after: None }
    }
}

impl From<Failure> for Attempt {
    fn from(f: Failure) -> Self {
        let retry_after = f.retry_after;
        Attempt { error: f.into_error(), retry_after }
    }
}

/// The wait before try `next` (2, 3, ...): 100 ms doubling, between half and all of it
/// (jitter, so parallel parts do not retry in step), or the server's `Retry-After`.
fn backoff(next: u32, retry_after: Option<Duration>) -> Duration {
    let full = FIRST_BACKOFF.saturating_mul(1 << (next - 2).min(10));
    let jittered = full.mul_f64(0.5 + rand::random::<f64>() / 2.0);
    retry_after.map_or(jittered, |r| r.max(jittered))
}

/// Reads at most `cap` bytes of a body.
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = cap - out.len();
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= cap {
            break;
        }
    }
    Ok(out)
}

impl S3Store {
    /// A store for `config`'s bucket. Checks the endpoint, bucket name and settings (a
    /// virtual-host style bucket needs a host name endpoint and a DNS-safe name); it
    /// does not contact the server.
    pub fn new(config: &S3Config) -> Result<Self, StorageError> {
        let (bucket, credentials) = config.bucket()?;
        // The endpoint is the operator's (config), not a tenant's: no SSRF guard, and no
        // redirects (they would carry the signed query string elsewhere).
        let options = fleet_net::ClientOptions {
            timeout: Duration::from_millis(config.timeout_ms),
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            user_agent: Some(concat!("Fleet-Storage/", env!("CARGO_PKG_VERSION"))),
            ..fleet_net::ClientOptions::default()
        };
        let http = options.client(0).map_err(|e| StorageError::Permanent(e.to_string()))?;
        Ok(S3Store {
            http,
            bucket,
            credentials,
            multipart_threshold: config.multipart_threshold_bytes,
            part_bytes: config.multipart_part_bytes,
            max_attempts: config.max_attempts,
            retry_budget: Duration::from_millis(config.timeout_ms),
        })
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        self.bucket.name()
    }

    /// The URL of `key` (unsigned), e.g. for logs.
    pub fn object_url(&self, key: &str) -> reqwest::Url {
        self.bucket.object_url(key)
    }

    /// Runs `attempt` until it succeeds, fails in a way a retry cannot help, or has
    /// been tried `max_attempts` times; the last error says how many tries were made.
    async fn retrying<T, F, Fut>(&self, mut attempt: F) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Attempt>>,
    {
        let started = tokio::time::Instant::now();
        let mut tried = 0;
        loop {
            tried += 1;
            let failed = match attempt().await {
                Ok(v) => return Ok(v),
                Err(failed) => failed,
            };
            let wait = backoff(tried + 1, failed.retry_after);
            let too_long =
                failed.retry_after.is_some_and(|r| r > MAX_INLINE_WAIT) || started.elapsed() + wait > self.retry_budget;
            match failed.error {
                StorageError::Retryable(text) if tried >= self.max_attempts || too_long => {
                    let s = if tried == 1 { "" } else { "s" };
                    return Err(StorageError::Retryable(format!("{text} (after {tried} attempt{s})")));
                }
                StorageError::Retryable(_) => tokio::time::sleep(wait).await,
                other => return Err(other),
            }
        }
    }

    /// Sends `request`: `Ok(Ok(..))` on 2xx, `Ok(Err(..))` on an answer the caller reads
    /// (404, other 4xx), `Err` on what [`Self::retrying`] tries again (5xx, 429, 408,
    /// timeouts, connection errors) or a request that could not be built.
    async fn send(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Result<reqwest::Response, Failure>, Attempt> {
        let resp = request.send().await.map_err(|e| send_error(what, e))?;
        if resp.status().is_success() {
            return Ok(Ok(resp));
        }
        let failure = Failure::read(what, resp).await;
        if failure.is_retryable() { Err(failure.into()) } else { Ok(Err(failure)) }
    }

    /// Creates the bucket (for tests and first-time setup); a bucket this account
    /// already owns is fine.
    pub async fn create_bucket(&self) -> Result<(), StorageError> {
        // Outside us-east-1 the region goes in the body as the location constraint.
        let body = match self.bucket.region() {
            "us-east-1" => String::new(),
            region => format!(
                "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                 <LocationConstraint>{region}</LocationConstraint></CreateBucketConfiguration>"
            ),
        };
        let what = &format!("creating bucket {:?}", self.bucket.name());
        let body = &body;
        self.retrying(|| async move {
            let url = self.bucket.create_bucket(&self.credentials).sign(SIGNED_FOR);
            let request = self.http.put(url).header(reqwest::header::CONTENT_LENGTH, body.len()).body(body.clone());
            match self.send(what, request).await? {
                Ok(_) => Ok(()),
                Err(f) if f.code.as_deref() == Some("BucketAlreadyOwnedByYou") => Ok(()),
                Err(f) => Err(f.into()),
            }
        })
        .await
    }

    fn what(&self, verb: &str, key: &str) -> String {
        format!("{verb} {key:?} in bucket {:?}", self.bucket.name())
    }

    /// One `PUT` of the whole object.
    async fn put_single(&self, key: &str, bytes: Bytes, content_type: &str) -> Result<(), StorageError> {
        let what = &self.what("storing", key);
        let bytes = &bytes;
        self.retrying(|| async move {
            let mut action = self.bucket.put_object(Some(&self.credentials), key);
            action.headers_mut().insert("content-type", content_type);
            let url = action.sign(SIGNED_FOR);
            let request = self
                .http
                .put(url)
                .header(reqwest::header::CONTENT_TYPE, content_type)
                // reqwest leaves it out for an empty body, and S3 wants it (411 otherwise).
                .header(reqwest::header::CONTENT_LENGTH, bytes.len())
                .body(bytes.clone());
            match self.send(what, request).await? {
                Ok(_) => Ok(()),
                Err(f) => Err(f.into()),
            }
        })
        .await
    }

    /// The part size for an object of `len` bytes: the configured one, raised so that
    /// no more than S3's 10,000 parts are needed.
    fn part_size(&self, len: u64) -> u64 {
        self.part_bytes.max(len.div_ceil(MAX_PARTS))
    }

    /// A multipart upload: create, parts in parallel, complete; aborted on failure.
    async fn put_multipart(&self, key: &str, bytes: Bytes, content_type: &str) -> Result<(), StorageError> {
        let what = &self.what("storing (multipart)", key);
        let upload_id = self
            .retrying(|| async move {
                let mut action = self.bucket.create_multipart_upload(Some(&self.credentials), key);
                action.headers_mut().insert("content-type", content_type);
                let url = action.sign(SIGNED_FOR);
                let request = self.http.post(url).header(reqwest::header::CONTENT_TYPE, content_type);
                let resp = match self.send(what, request).await? {
                    Ok(resp) => resp,
                    Err(f) => return Err(f.into()),
                };
                let body = resp.text().await.map_err(|e| send_error(what, e))?;
                let created = CreateMultipartUpload::parse_response(&body).map_err(|e| {
                    StorageError::Permanent(format!(
                        "{what}: the store's answer to starting the upload has no upload id ({e})"
                    ))
                })?;
                Ok(created.upload_id().to_owned())
            })
            .await?;
        let outcome = self.upload_parts_and_complete(key, &upload_id, bytes).await;
        if let Err(e) = &outcome {
            // The parts are kept (and paid for) until the upload is completed or aborted.
            if let Err(abort) = self.abort_multipart(key, &upload_id).await {
                tracing::warn!(bucket = self.bucket.name(), key, error = %abort, upload_error = %e,
                    "a failed multipart upload could not be aborted: its parts stay until a lifecycle rule removes them");
            }
        }
        outcome
    }

    async fn upload_parts_and_complete(&self, key: &str, upload_id: &str, bytes: Bytes) -> Result<(), StorageError> {
        let len = bytes.len() as u64;
        let part = self.part_size(len);
        let parts = len.div_ceil(part);
        let etags: Vec<String> = futures::stream::iter(0..parts)
            .map(|i| {
                let start = (i * part) as usize;
                let end = ((i + 1) * part).min(len) as usize;
                // `i + 1` ≤ 10,000: `part_size` keeps the count under S3's limit.
                self.upload_part(key, upload_id, (i + 1) as u16, bytes.slice(start..end))
            })
            .buffered(PARALLEL_PARTS)
            .try_collect()
            .await?;

        let what = &self.what("completing the multipart upload of", key);
        let etags = &etags;
        self.retrying(|| async move {
            let action = self.bucket.complete_multipart_upload(
                Some(&self.credentials),
                key,
                upload_id,
                etags.iter().map(String::as_str),
            );
            let url = action.sign(SIGNED_FOR);
            let body = action.body();
            let request = self.http.post(url).header(reqwest::header::CONTENT_LENGTH, body.len()).body(body);
            let resp = match self.send(what, request).await? {
                Ok(resp) => resp,
                // A retry after a completion whose answer was lost: the upload is gone
                // because it became the object. Whole if its size is ours.
                Err(f) if f.code.as_deref() == Some("NoSuchUpload") => {
                    return match self.head(key).await? {
                        Some(meta) if meta.size == len => Ok(()),
                        _ => Err(f.into()),
                    };
                }
                Err(f) => return Err(f.into()),
            };
            // S3 answers 200 before it knows, and puts an `<Error>` in the body on failure.
            let body = resp.text().await.map_err(|e| send_error(what, e))?;
            match CompleteMultipartUploadResponse::parse(&body) {
                Ok(_) => Ok(()),
                // An answer with the object's ETag and no `<Error>` under another root name
                // (moto 5 says `CompleteMultipartUploadResponse`, not S3's `...Result`).
                Err(_) if !body.contains("<Error>") && body.contains("<ETag>") => Ok(()),
                Err(_) => {
                    let failure = Failure::from_body(what, 200, None, &body);
                    Err(match failure.code.as_deref() {
                        Some("InternalError" | "SlowDown" | "ServiceUnavailable") | None => {
                            StorageError::Retryable(failure.text).into()
                        }
                        Some(_) => StorageError::Permanent(failure.text).into(),
                    })
                }
            }
        })
        .await
    }

    /// Uploads part `number`; its ETag.
    async fn upload_part(&self, key: &str, upload_id: &str, number: u16, chunk: Bytes) -> Result<String, StorageError> {
        let what = &format!("{} (part {number})", self.what("storing (multipart)", key));
        let chunk = &chunk;
        self.retrying(|| async move {
            let url = self.bucket.upload_part(Some(&self.credentials), key, number, upload_id).sign(SIGNED_FOR);
            let request = self.http.put(url).header(reqwest::header::CONTENT_LENGTH, chunk.len()).body(chunk.clone());
            let resp = match self.send(what, request).await? {
                Ok(resp) => resp,
                Err(f) => return Err(f.into()),
            };
            let etag = resp.headers().get(reqwest::header::ETAG).and_then(|v| v.to_str().ok());
            let etag =
                etag.ok_or_else(|| StorageError::Permanent(format!("{what}: the store's answer has no ETag")))?;
            Ok(etag.to_owned())
        })
        .await
    }

    /// `GET` of `key`, the body streamed into one buffer and, with `cap`, refused past it
    /// (by `Content-Length` before reading, and while reading).
    async fn read(&self, key: &str, cap: Option<u64>) -> Result<Option<Bytes>, StorageError> {
        validate_key(key)?;
        let what = &self.what("reading", key);
        self.retrying(|| async move {
            let url = self.bucket.get_object(Some(&self.credentials), key).sign(SIGNED_FOR);
            let mut resp = match self.send(what, self.http.get(url)).await? {
                Ok(resp) => resp,
                Err(f) if f.is_absent_object() => return Ok(None),
                Err(f) => return Err(f.into()),
            };
            let length = resp.content_length();
            let max = cap.unwrap_or(u64::MAX);
            if let Some(n) = length.filter(|&n| n > max) {
                return Err(super::too_large(key, Some(n), max).into());
            }
            // Sized from Content-Length, but never more than 64 MiB up front on its word.
            let mut out = bytes::BytesMut::with_capacity(length.unwrap_or(0).min(64 << 20) as usize);
            // A body cut off midway is retried like a failed request.
            while let Some(chunk) = resp.chunk().await.map_err(|e| send_error(what, e))? {
                if (out.len() + chunk.len()) as u64 > max {
                    return Err(super::too_large(key, None, max).into());
                }
                out.extend_from_slice(&chunk);
            }
            Ok(Some(out.freeze()))
        })
        .await
    }

    /// Aborts a multipart upload (its parts are deleted); an upload already gone is fine.
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StorageError> {
        let what = &self.what("aborting the multipart upload of", key);
        self.retrying(|| async move {
            let url = self.bucket.abort_multipart_upload(Some(&self.credentials), key, upload_id).sign(SIGNED_FOR);
            match self.send(what, self.http.delete(url)).await? {
                Ok(_) => Ok(()),
                Err(f) if f.status == 404 => Ok(()),
                Err(f) => Err(f.into()),
            }
        })
        .await
    }
}

impl ObjectStore for S3Store {
    fn put<'a>(&'a self, key: &'a str, bytes: Bytes, content_type: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            validate_key(key)?;
            if bytes.len() as u64 > self.multipart_threshold {
                self.put_multipart(key, bytes, content_type).await
            } else {
                self.put_single(key, bytes, content_type).await
            }
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StorageError>> {
        Box::pin(self.read(key, None))
    }

    fn get_at_most<'a>(&'a self, key: &'a str, max_bytes: u64) -> BoxFuture<'a, Result<Option<Bytes>, StorageError>> {
        Box::pin(self.read(key, Some(max_bytes)))
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<ObjectMeta>, StorageError>> {
        Box::pin(async move {
            validate_key(key)?;
            let what = &self.what("looking up", key);
            self.retrying(|| async move {
                let url = self.bucket.head_object(Some(&self.credentials), key).sign(SIGNED_FOR);
                match self.send(what, self.http.head(url)).await? {
                    Ok(resp) => {
                        let header = |name| resp.headers().get(name).and_then(|v| v.to_str().ok());
                        let size = header(reqwest::header::CONTENT_LENGTH).and_then(|v| v.parse().ok()).unwrap_or(0);
                        let content_type = header(reqwest::header::CONTENT_TYPE).map(str::to_owned);
                        Ok(Some(ObjectMeta { size, content_type }))
                    }
                    // A HEAD response has no body, so a missing bucket cannot be told
                    // apart from a missing key here: both read as "no object".
                    Err(f) if f.status == 404 => Ok(None),
                    Err(f) => Err(f.into()),
                }
            })
            .await
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            validate_key(key)?;
            let what = &self.what("deleting", key);
            self.retrying(|| async move {
                let url = self.bucket.delete_object(Some(&self.credentials), key).sign(SIGNED_FOR);
                match self.send(what, self.http.delete(url)).await? {
                    Ok(_) => Ok(()),
                    Err(f) if f.is_absent_object() => Ok(()),
                    Err(f) => Err(f.into()),
                }
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    //! Against a real S3-protocol server: moto (`scripts/s3.sh` starts it on
    //! 127.0.0.1:9000; `FLEET_TEST_S3_URL` points elsewhere). Each test makes its
    //! own bucket, so they run in parallel.

    use super::*;
    use secrecy::SecretString;

    const ACCESS_KEY: &str = "AKIAFLEETTESTKEY0001";
    const SECRET_KEY: &str = "fleet/test+secret/that-must-never-be-shown";

    fn endpoint() -> String {
        std::env::var("FLEET_TEST_S3_URL").unwrap_or_else(|_| "http://127.0.0.1:9000".into())
    }

    fn config(bucket: &str) -> S3Config {
        S3Config {
            endpoint: endpoint(),
            bucket: bucket.into(),
            region: "us-east-1".into(),
            access_key_id: SecretString::from(ACCESS_KEY),
            secret_access_key: SecretString::from(SECRET_KEY),
            path_style: true,
            timeout_ms: 30_000,
            connect_timeout_ms: 2_000,
            multipart_threshold_bytes: 16 << 20,
            multipart_part_bytes: 8 << 20,
            max_attempts: 3,
        }
    }

    /// A store on a fresh bucket of its own; fails clearly when moto is not running.
    async fn fresh_store(name: &str) -> S3Store {
        fresh_store_with(name, |_| {}).await
    }

    /// [`fresh_store`] with settings changed by `change`.
    async fn fresh_store_with(name: &str, change: impl FnOnce(&mut S3Config)) -> S3Store {
        let bucket = format!("fleet-{name}-{:08x}", rand::random::<u32>());
        let mut c = config(&bucket);
        change(&mut c);
        let store = S3Store::new(&c).unwrap();
        if let Err(e) = store.create_bucket().await {
            panic!(
                "no S3-protocol server answers at {} ({e}). Start moto with scripts/s3.sh \
                 (pip install 'moto[server]'; moto_server -H 127.0.0.1 -p 9000), or set FLEET_TEST_S3_URL",
                endpoint()
            );
        }
        store
    }

    fn assert_no_secrets(text: &str) {
        assert!(!text.contains(SECRET_KEY), "secret key leaked: {text}");
        assert!(!text.contains(ACCESS_KEY), "access key leaked: {text}");
        assert!(!text.contains("X-Amz-Signature"), "signed URL leaked: {text}");
    }

    #[tokio::test]
    async fn s3_put_get_overwrite_delete_and_not_found() {
        let store = fresh_store("crud").await;
        let key = "tenant/batch 7/photo.jpg";
        assert_eq!(store.get(key).await.unwrap(), None);
        assert_eq!(store.head(key).await.unwrap(), None);
        assert!(!store.exists(key).await.unwrap());
        assert!(matches!(store.get_existing(key).await, Err(StorageError::NotFound(_))));

        store.put(key, Bytes::from_static(b"first"), "image/jpeg").await.unwrap();
        assert_eq!(store.get(key).await.unwrap().as_deref(), Some(&b"first"[..]));
        let meta = store.head(key).await.unwrap().unwrap();
        assert_eq!(meta.size, 5);
        assert_eq!(meta.content_type.as_deref(), Some("image/jpeg"));

        store.put(key, Bytes::from_static(b"second!"), "image/webp").await.unwrap();
        assert_eq!(store.get_existing(key).await.unwrap(), Bytes::from_static(b"second!"));
        assert_eq!(store.head(key).await.unwrap().unwrap().content_type.as_deref(), Some("image/webp"));

        // Read with a size limit: at the limit it comes back, over it the error names it.
        assert_eq!(store.get_at_most(key, 7).await.unwrap().as_deref(), Some(&b"second!"[..]));
        let e = store.get_at_most(key, 6).await.unwrap_err();
        assert!(matches!(&e, StorageError::Permanent(t) if t.contains("7 bytes, more than the 6")), "{e}");
        assert_eq!(store.get_at_most("absent", 6).await.unwrap(), None);

        store.put("empty", Bytes::new(), "text/plain").await.unwrap();
        assert_eq!(store.get("empty").await.unwrap().as_deref(), Some(&b""[..]));

        store.delete(key).await.unwrap();
        assert_eq!(store.get(key).await.unwrap(), None);
        store.delete(key).await.unwrap(); // idempotent
    }

    #[tokio::test]
    async fn s3_keys_with_spaces_unicode_and_reserved_characters() {
        let store = fresh_store("keys").await;
        for key in
            ["with space/and+plus&amp=eq?q#h.jpg", "ünïcödé/写真 ✓/ça.jpg", "a..b/%41%2F.txt", "~tilde/(x)!*'.png"]
        {
            store.put(key, Bytes::from(key.as_bytes().to_vec()), "text/plain").await.unwrap();
            assert_eq!(store.get(key).await.unwrap().as_deref(), Some(key.as_bytes()), "{key}");
            assert!(store.exists(key).await.unwrap(), "{key}");
        }
        // The encoded look-alike is a different key.
        assert_eq!(store.get("a..b/A/.txt").await.unwrap(), None);
        for key in ["../escape", "/abs", "a//b", "a/./b"] {
            assert!(matches!(store.put(key, Bytes::new(), "x/y").await, Err(StorageError::InvalidKey { .. })));
        }
    }

    #[tokio::test]
    async fn s3_a_5_mb_object_round_trips() {
        let store = fresh_store("big").await;
        let big: Vec<u8> = (0..5 * 1024 * 1024).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        store.put("big.bin", Bytes::from(big.clone()), "application/octet-stream").await.unwrap();
        let got = store.get("big.bin").await.unwrap().unwrap();
        assert_eq!(got.len(), big.len());
        assert!(got == big, "the 5 MB object comes back byte for byte");
        assert_eq!(store.head("big.bin").await.unwrap().unwrap().size, big.len() as u64);
    }

    /// The object's ETag as the server reports it (a multipart object's ends in `-<parts>`).
    async fn etag(store: &S3Store, key: &str) -> String {
        let url = store.bucket.head_object(Some(&store.credentials), key).sign(SIGNED_FOR);
        let resp = store.http.head(url).send().await.unwrap();
        assert!(resp.status().is_success(), "HEAD {key}: {}", resp.status());
        resp.headers()[reqwest::header::ETAG].to_str().unwrap().trim_matches('"').to_owned()
    }

    /// Multipart uploads in progress in the store's bucket (`GET ?uploads`).
    async fn uploads_in_progress(store: &S3Store) -> usize {
        // The bucket's URL (path style: `<endpoint>/<bucket>/`); moto takes it unsigned.
        let mut url = store.bucket.base_url().clone();
        url.set_query(Some("uploads"));
        let body = store.http.get(url).send().await.unwrap().text().await.unwrap();
        body.matches("<UploadId>").count()
    }

    #[tokio::test]
    async fn s3_an_object_above_the_threshold_goes_up_in_parts_and_comes_back_whole() {
        // 5 MiB parts (S3's smallest) from 6 MiB on: 12 MiB and 3 bytes is 3 parts.
        let store = fresh_store_with("multipart", |c| {
            c.multipart_threshold_bytes = 6 << 20;
            c.multipart_part_bytes = 5 << 20;
        })
        .await;
        let big: Vec<u8> = (0..(12 << 20) + 3).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        let key = "tenants/acme/uploads/big photo.tif";
        store.put(key, Bytes::from(big.clone()), "image/tiff").await.unwrap();
        let got = store.get(key).await.unwrap().unwrap();
        assert_eq!(got.len(), big.len());
        assert!(got == big, "the multipart object comes back byte for byte, parts in order");
        let meta = store.head(key).await.unwrap().unwrap();
        assert_eq!((meta.size, meta.content_type.as_deref()), (big.len() as u64, Some("image/tiff")));
        assert!(etag(&store, key).await.ends_with("-3"), "stored as 3 parts: {}", etag(&store, key).await);
        assert_eq!(uploads_in_progress(&store).await, 0, "the upload was completed, nothing left over");

        // Overwritten by a smaller one-PUT object: readers see the new one whole.
        store.put(key, Bytes::from_static(b"small"), "image/jpeg").await.unwrap();
        assert_eq!(store.get(key).await.unwrap().as_deref(), Some(&b"small"[..]));
        assert!(!etag(&store, key).await.contains('-'), "at or under the threshold: one PUT");

        // Another tenant's prefix holds nothing of it.
        assert_eq!(store.get("tenants/other/uploads/big photo.tif").await.unwrap(), None);

        // A store with a larger threshold sends the same 12 MiB with one PUT.
        let single = fresh_store("single").await;
        single.put(key, Bytes::from(big.clone()), "image/tiff").await.unwrap();
        assert!(!etag(&single, key).await.contains('-'));
        assert!(single.get(key).await.unwrap().unwrap() == big);
    }

    #[tokio::test]
    async fn s3_a_multipart_upload_that_fails_is_aborted_and_says_why() {
        // The bucket is missing: starting the upload is refused, permanently.
        let mut c = config(&format!("fleet-missing-{:08x}", rand::random::<u32>()));
        c.multipart_threshold_bytes = 1;
        let store = S3Store::new(&c).unwrap();
        let e = store.put("k", Bytes::from_static(b"xy"), "text/plain").await.unwrap_err();
        assert!(
            matches!(&e, StorageError::Permanent(t) if t.contains("NoSuchBucket") && t.contains("multipart")),
            "{e}"
        );
        assert_no_secrets(&format!("{e} {e:?}"));

        // Parts under S3's 5 MiB minimum (moto checks it at completion): the completion
        // is refused, and the upload is aborted rather than left holding its parts.
        let store = fresh_store_with("abort", |c| c.multipart_threshold_bytes = 1).await;
        let mut tiny = store.clone();
        tiny.part_bytes = 1 << 20;
        let e = tiny.put("k", Bytes::from(vec![7u8; (2 << 20) + 1]), "text/plain").await.unwrap_err();
        assert!(matches!(&e, StorageError::Permanent(t) if t.contains("EntityTooSmall")), "{e}");
        assert_eq!(uploads_in_progress(&store).await, 0, "the failed upload was aborted");
        assert_eq!(store.get("k").await.unwrap(), None, "no part of it is readable");
    }

    #[test]
    fn settings_out_of_range_are_refused_with_the_setting_named() {
        let mut c = config("photos");
        c.multipart_part_bytes = (5 << 20) - 1;
        let e = S3Store::new(&c).unwrap_err().to_string();
        assert!(e.contains("multipart_part_bytes") && e.contains("5 MiB"), "{e}");
        let mut c = config("photos");
        c.max_attempts = 0;
        assert!(S3Store::new(&c).unwrap_err().to_string().contains("max_attempts"));
        let mut c = config("photos");
        c.multipart_threshold_bytes = 0;
        assert!(S3Store::new(&c).unwrap_err().to_string().contains("multipart_threshold_bytes"));
        // 10,000 parts at most: a part grows for an object that would need more.
        let store = S3Store::new(&config("photos")).unwrap();
        assert_eq!(store.part_size(1 << 20), 8 << 20);
        assert_eq!(store.part_size(100_000 * (8 << 20)), 10 * (8 << 20));
    }

    /// A server that answers each request with the next of `answers` (status, body,
    /// `Retry-After`), then 200 "hello"; and how many requests it has had.
    async fn scripted_server(
        answers: Vec<(u16, &'static str, Option<&'static str>)>,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>, tokio::task::JoinHandle<()>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let seen = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        let app = axum::Router::new().fallback(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let answer = answers.get(n).copied().unwrap_or((200, "hello", None));
            async move {
                let mut res = axum::response::Response::new(axum::body::Body::from(answer.1));
                *res.status_mut() = axum::http::StatusCode::from_u16(answer.0).unwrap();
                if let Some(after) = answer.2 {
                    res.headers_mut().insert("retry-after", after.parse().unwrap());
                }
                res
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), seen, server)
    }

    #[tokio::test]
    async fn s3_retryable_failures_are_tried_again_and_the_rest_are_not() {
        use std::sync::atomic::Ordering;
        const SLOW_DOWN: &str = "<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>";
        const DENIED: &str = "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
        let store_at = |endpoint: String| {
            let mut c = config("fleet-retry");
            c.endpoint = endpoint;
            S3Store::new(&c).unwrap()
        };

        // 503 then 500, then the object: the third try reads it.
        let (url, seen, server) = scripted_server(vec![(503, SLOW_DOWN, None), (500, "", None)]).await;
        let got = store_at(url).get("k").await.unwrap();
        assert_eq!(got.as_deref(), Some(&b"hello"[..]));
        assert_eq!(seen.load(Ordering::SeqCst), 3);
        server.abort();

        // A `Retry-After` within 10 s is waited for (1 s, the floor fleet_net applies to it).
        let (url, seen, server) = scripted_server(vec![(429, SLOW_DOWN, Some("1"))]).await;
        let started = std::time::Instant::now();
        store_at(url).put("k", Bytes::from_static(b"x"), "text/plain").await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());
        assert_eq!(seen.load(Ordering::SeqCst), 2);
        server.abort();

        // Still failing after max_attempts: retryable, saying how often it was tried.
        let (url, seen, server) = scripted_server(vec![(503, SLOW_DOWN, None); 5]).await;
        let e = store_at(url).head("k").await.unwrap_err();
        assert!(
            matches!(&e, StorageError::Retryable(t) if t.contains("HTTP 503") && t.contains("after 3 attempts")),
            "{e}"
        );
        assert_eq!(seen.load(Ordering::SeqCst), 3);
        server.abort();

        // A `Retry-After` longer than 10 s is left to the job's own retry.
        let (url, seen, server) = scripted_server(vec![(503, SLOW_DOWN, Some("120"))]).await;
        let e = store_at(url).get("k").await.unwrap_err();
        assert!(e.is_retryable() && e.to_string().contains("after 1 attempt)"), "{e}");
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        server.abort();

        // Refused credentials: permanent at once, and said plainly.
        let (url, seen, server) = scripted_server(vec![(403, DENIED, None)]).await;
        let e = store_at(url).delete("k").await.unwrap_err();
        assert!(
            matches!(&e, StorageError::Permanent(t) if t.contains("AccessDenied") && t.contains("credentials")),
            "{e}"
        );
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        assert_no_secrets(&format!("{e} {e:?}"));
        server.abort();
    }

    #[tokio::test]
    async fn s3_a_body_without_a_length_is_cut_off_at_the_limit() {
        // Chunked, no Content-Length: the limit is enforced while reading.
        let app = axum::Router::new().fallback(|| async {
            let chunks = futures::stream::iter((0..3).map(|_| Ok::<_, std::io::Error>(Bytes::from_static(b"abcd"))));
            axum::body::Body::from_stream(chunks)
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let mut c = config("fleet-chunked");
        c.endpoint = format!("http://{addr}");
        let store = S3Store::new(&c).unwrap();
        assert_eq!(store.get_at_most("k", 12).await.unwrap().as_deref(), Some(&b"abcdabcdabcd"[..]));
        let e = store.get_at_most("k", 10).await.unwrap_err();
        assert!(matches!(&e, StorageError::Permanent(t) if t.contains("is larger, more than the 10 bytes")), "{e}");
        server.abort();
    }

    /// A fake S3 for multipart uploads: part `failing_part` always answers 500, and the
    /// first `bad_completions` completions answer 200 with an `<Error>` in the body. The
    /// log lists each request as `<method> <query>`.
    async fn multipart_server(
        failing_part: Option<u16>,
        bad_completions: usize,
    ) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
        use axum::http::{Method, StatusCode, Uri};
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen = log.clone();
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri| {
            let seen = seen.clone();
            async move {
                // The query without the signature's `X-Amz-*` parameters.
                let query: Vec<&str> =
                    uri.query().unwrap_or_default().split('&').filter(|kv| !kv.starts_with("X-Amz-")).collect();
                let query = query.join("&");
                let completions = {
                    let mut log = seen.lock().unwrap();
                    log.push(format!("{method} {query}"));
                    log.iter().filter(|l| l.starts_with("POST uploadId")).count()
                };
                let part =
                    query.split('&').find_map(|kv| kv.strip_prefix("partNumber=")).and_then(|n| n.parse::<u16>().ok());
                let xml =
                    |body: &str| (StatusCode::OK, [("etag", "\"abc\"")], format!("<?xml version=\"1.0\"?>{body}"));
                match (method.as_str(), part) {
                    ("POST", _) if query.starts_with("uploads") => {
                        xml("<InitiateMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                         <UploadId>up-1</UploadId></InitiateMultipartUploadResult>")
                    }
                    ("PUT", Some(n)) if Some(n) == failing_part => {
                        (StatusCode::INTERNAL_SERVER_ERROR, [("etag", "")], String::new())
                    }
                    ("PUT", Some(_)) => xml(""),
                    ("POST", _) if completions <= bad_completions => {
                        xml("<Error><Code>InternalError</Code><Message>try again</Message></Error>")
                    }
                    ("POST", _) => {
                        xml("<CompleteMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                         <ETag>\"abc-3\"</ETag></CompleteMultipartUploadResult>")
                    }
                    ("DELETE", _) => (StatusCode::NO_CONTENT, [("etag", "")], String::new()),
                    _ => (StatusCode::BAD_REQUEST, [("etag", "")], String::new()),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), log, server)
    }

    #[tokio::test]
    async fn s3_each_part_and_the_completion_are_retried_and_a_failed_upload_is_aborted() {
        let store_at = |endpoint: String| {
            let mut c = config("fleet-parts");
            c.endpoint = endpoint;
            c.multipart_threshold_bytes = 1;
            c.multipart_part_bytes = 5 << 20;
            S3Store::new(&c).unwrap()
        };
        let object = Bytes::from(vec![1u8; (10 << 20) + 1]); // 3 parts

        // Part 2 keeps failing: tried 3 times, the error names it, the upload is aborted.
        let (url, log, server) = multipart_server(Some(2), 0).await;
        let e = store_at(url).put("k", object.clone(), "image/jpeg").await.unwrap_err();
        assert!(
            matches!(&e, StorageError::Retryable(t) if t.contains("part 2") && t.contains("after 3 attempts")),
            "{e}"
        );
        let log = log.lock().unwrap().clone();
        let count = |prefix: &str| log.iter().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(count("PUT partNumber=2&"), 3, "{log:?}");
        assert_eq!(count("POST uploadId"), 0, "never completed: {log:?}");
        assert_eq!(count("DELETE uploadId=up-1"), 1, "aborted once: {log:?}");
        server.abort();

        // A completion answered 200 with an `<Error>` inside is tried again.
        let (url, log, server) = multipart_server(None, 1).await;
        store_at(url).put("k", object, "image/jpeg").await.unwrap();
        let log = log.lock().unwrap().clone();
        assert_eq!(log.iter().filter(|l| l.starts_with("POST uploadId=up-1")).count(), 2, "{log:?}");
        assert!(!log.iter().any(|l| l.starts_with("DELETE")), "{log:?}");
        server.abort();
    }

    #[tokio::test]
    async fn s3_errors_say_whether_to_retry_and_hide_credentials() {
        // A missing bucket is permanent, and says so.
        let store = S3Store::new(&config(&format!("fleet-missing-{:08x}", rand::random::<u32>()))).unwrap();
        let e = store.put("k", Bytes::from_static(b"x"), "text/plain").await.unwrap_err();
        assert!(matches!(&e, StorageError::Permanent(t) if t.contains("NoSuchBucket")), "{e}");
        assert_no_secrets(&e.to_string());
        let e = store.get("k").await.unwrap_err();
        assert!(!e.is_retryable() && e.to_string().contains("bucket does not exist"), "{e}");

        // A request the server refuses (400, a bucket name too short) is permanent.
        let bad = S3Store::new(&config("ab")).unwrap();
        let e = bad.create_bucket().await.unwrap_err();
        assert!(matches!(&e, StorageError::Permanent(t) if t.contains("HTTP 400 InvalidBucketName")), "{e}");
        assert_no_secrets(&format!("{e} {e:?}"));

        // Access refused (403) is permanent. moto does not check signatures unless
        // auth is switched on server-wide, so a bucket policy that denies reads
        // stands in for refused credentials.
        let denied = fresh_store("denied").await;
        denied.put("k", Bytes::from_static(b"x"), "text/plain").await.unwrap();
        let policy = serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Deny",
            "Principal": "*", "Action": "s3:GetObject", "Resource": format!("arn:aws:s3:::{}/*", denied.bucket())}]});
        let set = fleet_net::ClientOptions::default()
            .client(0)
            .unwrap()
            .put(format!("{}/{}?policy", endpoint(), denied.bucket()))
            .body(policy.to_string())
            .send()
            .await
            .unwrap();
        assert!(set.status().is_success(), "moto took the bucket policy: {}", set.status());
        let e = denied.get("k").await.unwrap_err();
        assert!(matches!(&e, StorageError::Permanent(t) if t.contains("HTTP 403")), "{e}");
        assert_no_secrets(&format!("{e} {e:?}"));

        // Nothing listening: retryable, and the signed URL is not in the error.
        let mut c = config("fleet-nowhere");
        c.endpoint = "http://127.0.0.1:9".into();
        let nowhere = S3Store::new(&c).unwrap();
        let e = nowhere.put("k", Bytes::from_static(b"x"), "text/plain").await.unwrap_err();
        assert!(e.is_retryable() && e.to_string().contains("cannot be reached"), "{e}");
        assert!(e.to_string().contains("after 3 attempts"), "{e}");
        assert_no_secrets(&format!("{e} {e:?}"));
        assert_no_secrets(&format!("{nowhere:?}"));
    }

    #[tokio::test]
    async fn s3_a_server_that_hangs_times_out_as_retryable() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (sock, _) = listener.accept().await.unwrap();
                held.push(sock); // accept, never answer
            }
        });
        let mut c = config("fleet-hang");
        c.endpoint = format!("http://{addr}");
        c.timeout_ms = 300;
        let store = S3Store::new(&c).unwrap();
        let started = std::time::Instant::now();
        let e = store.get("k").await.unwrap_err();
        assert!(e.is_retryable() && e.to_string().contains("did not answer in time"), "{e}");
        assert!(e.to_string().contains("after 1 attempt)"), "a timeout used up the retry budget: {e}");
        assert!(started.elapsed() < Duration::from_secs(5), "the deadline held: {:?}", started.elapsed());
        server.abort();
    }

    #[test]
    fn status_codes_map_to_what_happens_next() {
        let (code, message) = error_code(
            "<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><Message>check your key</Message>\
             <AWSAccessKeyId>AKIA</AWSAccessKeyId></Error>",
        );
        assert_eq!((code, message), (Some("SignatureDoesNotMatch"), Some("check your key")));
        assert_eq!(error_code("not xml"), (None, None));
    }

    #[test]
    fn both_url_styles_address_the_bucket() {
        let mut c = config("photos");
        c.endpoint = "https://s3.eu-west-1.amazonaws.com".into();
        c.path_style = false;
        let vhost = S3Store::new(&c).unwrap();
        assert_eq!(
            vhost.object_url("a b/ü.jpg").as_str(),
            "https://photos.s3.eu-west-1.amazonaws.com/a%20b/%C3%BC.jpg"
        );
        c.path_style = true;
        let path = S3Store::new(&c).unwrap();
        assert_eq!(path.object_url("a.jpg").as_str(), "https://s3.eu-west-1.amazonaws.com/photos/a.jpg");
        // An IP endpoint cannot carry the bucket in its host name.
        let mut c = config("photos");
        c.path_style = false;
        let e = S3Store::new(&c).unwrap_err();
        assert!(e.to_string().contains("path_style"), "{e}");
    }
}
