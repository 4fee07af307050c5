//! The S3-compatible store: `rusty-s3` signs (SigV4, query-string auth with an
//! unsigned payload), the workspace's `reqwest` sends.
//!
//! Every request has a deadline (connect to the last body byte) and a connect
//! timeout. Responses map to: 2xx done; 404 `NoSuchKey` is "no object"; 404
//! `NoSuchBucket` and other 4xx are permanent; 408, 429 and 5xx, timeouts and
//! connection errors are retryable. Error texts carry the S3 error code and message,
//! never the signed URL (which holds the access key id and a signature) nor the keys.
//!
//! The endpoint is operator configuration, not user input, so requests do not go
//! through the webhook SSRF guard (an internal MinIO is a normal setup).

use super::{ObjectMeta, ObjectStore, S3Config, StorageError, validate_key};
use bytes::Bytes;
use futures::future::BoxFuture;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use secrecy::ExposeSecret as _;
use std::time::Duration;

/// How long a signed URL stays valid: long enough for a slow 5 MB upload on top of
/// clock skew, short enough to be useless if it leaked.
const SIGNED_FOR: Duration = Duration::from_secs(15 * 60);

/// Most bytes of an error response read (to find its `<Code>`).
const MAX_ERROR_BODY: usize = 16 * 1024;

/// A bucket on an S3-compatible server.
#[derive(Clone)]
pub struct S3Store {
    http: reqwest::Client,
    bucket: Bucket,
    credentials: Credentials,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `Credentials`' own Debug shows the access key id.
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket.name())
            .field("region", &self.bucket.region())
            .field("base_url", &self.bucket.base_url().as_str())
            .field("credentials", &"[REDACTED]")
            .finish()
    }
}

/// A request error without its URL (a signed URL carries the access key id).
fn send_error(what: &str, e: reqwest::Error) -> StorageError {
    // Timeouts, refused or reset connections, broken bodies: the server may be back soon.
    let retryable = !(e.is_builder() || e.is_redirect());
    let text = format!("{what}: {}", fleet_net::error_chain(&e.without_url()));
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

/// A non-2xx response: its status, S3 error code and a text for the error.
struct Failure {
    status: u16,
    code: Option<String>,
    text: String,
}

impl Failure {
    async fn read(what: &str, resp: reqwest::Response) -> Failure {
        let status = resp.status().as_u16();
        let body = read_capped(resp, MAX_ERROR_BODY).await.unwrap_or_default();
        let body = String::from_utf8_lossy(&body);
        let (code, message) = error_code(&body);
        let mut text = format!("{what}: HTTP {status}");
        if let Some(c) = code {
            text.push_str(&format!(" {c}"));
        }
        if let Some(m) = message {
            text.push_str(&format!(": {}", m.chars().take(300).collect::<String>()));
        }
        if code == Some("NoSuchBucket") {
            text.push_str(" (the bucket does not exist)");
        }
        Failure { status, code: code.map(str::to_owned), text }
    }

    /// 404 about the key (not the bucket): the object is not there.
    fn is_absent_object(&self) -> bool {
        self.status == 404 && self.code.as_deref() != Some("NoSuchBucket")
    }

    /// Retryable on 408, 429 and 5xx; permanent otherwise.
    fn into_error(self) -> StorageError {
        if self.status >= 500 || self.status == 429 || self.status == 408 {
            StorageError::Retryable(self.text)
        } else {
            StorageError::Permanent(self.text)
        }
    }
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
    /// A store for `config`'s bucket. Checks the endpoint and bucket name (a
    /// virtual-host style bucket needs a host name endpoint and a DNS-safe name); it
    /// does not contact the server.
    pub fn new(config: &S3Config) -> Result<Self, StorageError> {
        let endpoint: reqwest::Url = config
            .endpoint
            .parse()
            .map_err(|e| StorageError::Permanent(format!("S3 endpoint {:?} is not a URL: {e}", config.endpoint)))?;
        let style = if config.path_style { UrlStyle::Path } else { UrlStyle::VirtualHost };
        let bucket = Bucket::new(endpoint, style, config.bucket.clone(), config.region.clone()).map_err(|e| {
            let hint = if config.path_style { "" } else { " (an IP endpoint needs path_style = true)" };
            StorageError::Permanent(format!(
                "S3 bucket {:?} at {:?} cannot be addressed: {e}{hint}",
                config.bucket, config.endpoint
            ))
        })?;
        let credentials = Credentials::new(
            config.access_key_id.expose_secret().to_owned(),
            config.secret_access_key.expose_secret().to_owned(),
        );
        // The endpoint is the operator's (config), not a tenant's: no SSRF guard.
        let options = fleet_net::ClientOptions {
            timeout: Duration::from_millis(config.timeout_ms),
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            user_agent: Some(concat!("Fleet-Storage/", env!("CARGO_PKG_VERSION"))),
            ..fleet_net::ClientOptions::default()
        };
        let http = options.client(0).map_err(|e| StorageError::Permanent(e.to_string()))?;
        Ok(S3Store { http, bucket, credentials })
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        self.bucket.name()
    }

    /// The URL of `key` (unsigned), e.g. for logs.
    pub fn object_url(&self, key: &str) -> reqwest::Url {
        self.bucket.object_url(key)
    }

    /// Creates the bucket (for tests and first-time setup); a bucket this account
    /// already owns is fine.
    pub async fn create_bucket(&self) -> Result<(), StorageError> {
        let url = self.bucket.create_bucket(&self.credentials).sign(SIGNED_FOR);
        // Outside us-east-1 the region goes in the body as the location constraint.
        let body = match self.bucket.region() {
            "us-east-1" => String::new(),
            region => format!(
                "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                 <LocationConstraint>{region}</LocationConstraint></CreateBucketConfiguration>"
            ),
        };
        let what = format!("creating bucket {:?}", self.bucket.name());
        let resp = self
            .http
            .put(url)
            .header(reqwest::header::CONTENT_LENGTH, body.len())
            .body(body)
            .send()
            .await
            .map_err(|e| send_error(&what, e))?;
        if resp.status().is_success() {
            return Ok(());
        }
        let failure = Failure::read(&what, resp).await;
        if failure.code.as_deref() == Some("BucketAlreadyOwnedByYou") {
            return Ok(());
        }
        Err(failure.into_error())
    }

    fn what(&self, verb: &str, key: &str) -> String {
        format!("{verb} {key:?} in bucket {:?}", self.bucket.name())
    }
}

impl ObjectStore for S3Store {
    fn put<'a>(&'a self, key: &'a str, bytes: Bytes, content_type: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            validate_key(key)?;
            let mut action = self.bucket.put_object(Some(&self.credentials), key);
            action.headers_mut().insert("content-type", content_type);
            let url = action.sign(SIGNED_FOR);
            let what = self.what("storing", key);
            let resp = self
                .http
                .put(url)
                .header(reqwest::header::CONTENT_TYPE, content_type)
                // reqwest leaves it out for an empty body, and S3 wants it (411 otherwise).
                .header(reqwest::header::CONTENT_LENGTH, bytes.len())
                .body(bytes)
                .send()
                .await
                .map_err(|e| send_error(&what, e))?;
            if resp.status().is_success() {
                return Ok(());
            }
            Err(Failure::read(&what, resp).await.into_error())
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StorageError>> {
        Box::pin(async move {
            validate_key(key)?;
            let url = self.bucket.get_object(Some(&self.credentials), key).sign(SIGNED_FOR);
            let what = self.what("reading", key);
            let resp = self.http.get(url).send().await.map_err(|e| send_error(&what, e))?;
            if resp.status().is_success() {
                return resp.bytes().await.map(Some).map_err(|e| send_error(&what, e));
            }
            let failure = Failure::read(&what, resp).await;
            if failure.is_absent_object() { Ok(None) } else { Err(failure.into_error()) }
        })
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<ObjectMeta>, StorageError>> {
        Box::pin(async move {
            validate_key(key)?;
            let url = self.bucket.head_object(Some(&self.credentials), key).sign(SIGNED_FOR);
            let what = self.what("looking up", key);
            let resp = self.http.head(url).send().await.map_err(|e| send_error(&what, e))?;
            let status = resp.status();
            if status.is_success() {
                let header = |name| resp.headers().get(name).and_then(|v| v.to_str().ok());
                let size = header(reqwest::header::CONTENT_LENGTH).and_then(|v| v.parse().ok()).unwrap_or(0);
                let content_type = header(reqwest::header::CONTENT_TYPE).map(str::to_owned);
                return Ok(Some(ObjectMeta { size, content_type }));
            }
            // A HEAD response has no body, so a missing bucket cannot be told
            // apart from a missing key here: both read as "no object".
            if status.as_u16() == 404 {
                return Ok(None);
            }
            Err(Failure::read(&what, resp).await.into_error())
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            validate_key(key)?;
            let url = self.bucket.delete_object(Some(&self.credentials), key).sign(SIGNED_FOR);
            let what = self.what("deleting", key);
            let resp = self.http.delete(url).send().await.map_err(|e| send_error(&what, e))?;
            if resp.status().is_success() {
                return Ok(());
            }
            let failure = Failure::read(&what, resp).await;
            if failure.is_absent_object() { Ok(()) } else { Err(failure.into_error()) }
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
        }
    }

    /// A store on a fresh bucket of its own; fails clearly when moto is not running.
    async fn fresh_store(name: &str) -> S3Store {
        let bucket = format!("fleet-{name}-{:08x}", rand::random::<u32>());
        let store = S3Store::new(&config(&bucket)).unwrap();
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
        assert!(e.is_retryable(), "{e}");
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
        assert!(e.is_retryable(), "{e}");
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
