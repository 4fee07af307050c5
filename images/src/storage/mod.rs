//! Object storage behind one trait: originals and variants of image jobs.
//!
//! * [`ObjectStore`]: `put`, `get`, `head`/`exists`, `delete` on keys like
//!   `tenant/batch/abc.jpg`. Every implementation checks keys the same way
//!   ([`validate_key`]), so a key that works on one works on the other.
//! * [`LocalStore`] (the default): one file per key under a root folder, written
//!   atomically (temporary file, `fsync`, rename).
//! * [`S3Store`]: any S3-compatible server (AWS, MinIO, R2, moto), path-style or
//!   virtual-host style, requests signed with SigV4 by `rusty-s3` and sent with the
//!   client `fleet_net` builds; retryable failures are tried again, and large objects
//!   go up as multipart uploads with parts in parallel.
//! * [`StoreConfig`] and [`from_config`]: `{ kind = "local", root = ".." }` or
//!   `{ kind = "s3", endpoint = .., bucket = .., .. }`.
//!
//! Errors say what the caller should do ([`StorageError::is_retryable`]): a missing
//! object is `Ok(None)` from [`ObjectStore::get`] (or [`StorageError::NotFound`] from
//! [`ObjectStore::get_existing`]); bad keys, refused credentials and other 4xx are
//! permanent; 5xx, 429, timeouts and connection errors are retryable.

//!
//! Without the `jobs` feature (the scheduler) only the configuration, [`validate_key`] and
//! [`StorageError`] are built: what [`crate::uploads`] needs to presign, no HTTP client.

#[cfg(feature = "jobs")]
mod local;
#[cfg(feature = "jobs")]
mod s3;

#[cfg(feature = "jobs")]
pub use local::LocalStore;
#[cfg(feature = "jobs")]
pub use s3::S3Store;

#[cfg(feature = "jobs")]
use bytes::Bytes;
#[cfg(feature = "jobs")]
use futures::future::BoxFuture;
/// The keys' type in [`S3Config`] and how to read it: re-exported, so a config can be built
/// and checked without depending on `secrecy` directly.
pub use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::path::PathBuf;
#[cfg(feature = "jobs")]
use std::sync::Arc;

/// What went wrong, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The key cannot name an object (empty, `..`, absolute, NUL, too long).
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The object does not exist (only from calls that require it to).
    #[error("object {0:?} not found")]
    NotFound(String),
    /// Trying again will not help: refused credentials, missing bucket, bad request.
    #[error("storage error (permanent): {0}")]
    Permanent(String),
    /// Trying again later may help: 5xx, 429, timeout, connection error, full disk.
    #[error("storage error (retryable): {0}")]
    Retryable(String),
}

impl StorageError {
    /// Whether the operation may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StorageError::Retryable(_))
    }
}

/// What `head` knows about a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Size in bytes.
    pub size: u64,
    /// The content type stored with it (S3 only; the local store keeps none).
    pub content_type: Option<String>,
}

#[cfg(feature = "jobs")]
/// A store of immutable-ish blobs by key. Object-safe: use it as `Arc<dyn ObjectStore>`.
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// Stores `bytes` under `key`, replacing any object there. Readers see the old
    /// object or the new one, never a part of one.
    fn put<'a>(&'a self, key: &'a str, bytes: Bytes, content_type: &'a str) -> BoxFuture<'a, Result<(), StorageError>>;

    /// The object under `key`, or `None` when there is none.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StorageError>>;

    /// The object under `key` if it is at most `max_bytes` long, or `None` when there is
    /// none. A larger one is a permanent error naming its size and the limit, found
    /// without reading it all: S3 checks `Content-Length` and stops reading the body at
    /// the limit, the local store checks the file's size.
    fn get_at_most<'a>(&'a self, key: &'a str, max_bytes: u64) -> BoxFuture<'a, Result<Option<Bytes>, StorageError>> {
        Box::pin(async move {
            match self.get(key).await? {
                Some(b) if b.len() as u64 > max_bytes => Err(too_large(key, Some(b.len() as u64), max_bytes)),
                other => Ok(other),
            }
        })
    }

    /// Size and content type of the object under `key`, or `None` when there is none.
    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<ObjectMeta>, StorageError>>;

    /// Removes the object under `key`; removing a missing object succeeds (idempotent).
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Whether an object exists under `key`.
    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(async move { Ok(self.head(key).await?.is_some()) })
    }

    /// The object under `key`, which must exist ([`StorageError::NotFound`] otherwise).
    fn get_existing<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Bytes, StorageError>> {
        Box::pin(async move { self.get(key).await?.ok_or_else(|| StorageError::NotFound(key.to_owned())) })
    }
}

/// The error for an object over the size a reader takes ([`ObjectStore::get_at_most`]).
#[cfg(feature = "jobs")]
pub(crate) fn too_large(key: &str, size: Option<u64>, max_bytes: u64) -> StorageError {
    let size = size.map_or_else(|| "larger".to_owned(), |s| format!("{s} bytes"));
    StorageError::Permanent(format!("object {key:?} is {size}, more than the {max_bytes} bytes allowed"))
}

/// Longest key accepted, in bytes (S3's limit).
pub const MAX_KEY_BYTES: usize = fleet_jobs::catalogue::image::MAX_OBJECT_KEY_BYTES;

/// Checks that `key` names an object the same way in every store: 1..=1024 bytes of
/// `/`-separated segments, none empty, `.` or `..`; no leading `/`, no backslash, no
/// NUL or other control character (the one rule, `fleet_jobs::catalogue::image::check_object_key`).
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    fleet_jobs::catalogue::image::check_object_key(key)
        .map_err(|reason| StorageError::InvalidKey { key: key.to_owned(), reason })
}

/// Which store to use (`[storage]` in the worker config).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StoreConfig {
    /// Files under a local folder.
    Local(LocalConfig),
    /// An S3-compatible bucket.
    S3(S3Config),
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::Local(LocalConfig { root: PathBuf::from("data/objects") })
    }
}

/// `{ kind = "local", root = "..." }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// The folder objects are stored under (created when missing).
    pub root: PathBuf,
}

/// `{ kind = "s3", endpoint, bucket, region, access_key_id, secret_access_key, path_style }`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The server, e.g. `https://s3.eu-west-1.amazonaws.com` or `http://127.0.0.1:9000`.
    pub endpoint: String,
    /// The bucket.
    pub bucket: String,
    /// The region signed into requests (`us-east-1` for most S3-compatible servers).
    #[serde(default = "default_region")]
    pub region: String,
    /// Access key id (kept out of logs and `Debug` output too).
    pub access_key_id: SecretString,
    /// Secret access key.
    pub secret_access_key: SecretString,
    /// `https://host/bucket/key` when true (MinIO, moto, IP endpoints); else
    /// `https://bucket.host/key`.
    #[serde(default)]
    pub path_style: bool,
    /// Deadline of one request, connect to last body byte, ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Connect timeout, ms.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Objects larger than this many bytes are stored as a multipart upload (parts sent
    /// in parallel, each retried on its own); smaller ones with one `PUT`.
    #[serde(default = "default_multipart_threshold_bytes")]
    pub multipart_threshold_bytes: u64,
    /// Size of each part of a multipart upload, bytes: 5 MiB (S3's smallest part) to
    /// 5 GiB. Raised when an object would need more than 10,000 parts.
    #[serde(default = "default_multipart_part_bytes")]
    pub multipart_part_bytes: u64,
    /// Tries of one request before a retryable failure (5xx, 429, 408, timeout,
    /// connection error) is returned, 1 to 10; waits grow from 100 ms, with jitter, and
    /// honour `Retry-After` up to 10 s.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

/// S3's smallest part (except the last), and largest part, of a multipart upload.
pub const MULTIPART_PART_BYTES_RANGE: std::ops::RangeInclusive<u64> = (5 << 20)..=(5 << 30);

impl S3Config {
    /// A config for `bucket` at `endpoint` with these keys, and the defaults of the
    /// settings left out (region `us-east-1`, virtual-host style, 60 s and 5 s timeouts).
    pub fn new(endpoint: String, bucket: String, access_key_id: SecretString, secret_access_key: SecretString) -> Self {
        S3Config {
            endpoint,
            bucket,
            region: default_region(),
            access_key_id,
            secret_access_key,
            path_style: false,
            timeout_ms: default_timeout_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
            multipart_threshold_bytes: default_multipart_threshold_bytes(),
            multipart_part_bytes: default_multipart_part_bytes(),
            max_attempts: default_max_attempts(),
        }
    }

    /// The bucket and keys this config names, checked without contacting the server: the
    /// endpoint must be a URL, a virtual-host style bucket needs a host name endpoint and a
    /// DNS-safe name, and the multipart and retry settings must be in range. What both the
    /// store and the upload signer ([`crate::uploads`]) sign with.
    pub(crate) fn bucket(&self) -> Result<(rusty_s3::Bucket, rusty_s3::Credentials), StorageError> {
        let invalid = |setting: &str, why: String| StorageError::Permanent(format!("S3 setting {setting}: {why}"));
        if !MULTIPART_PART_BYTES_RANGE.contains(&self.multipart_part_bytes) {
            return Err(invalid(
                "multipart_part_bytes",
                format!("must be 5 MiB to 5 GiB (S3's part sizes), not {}", self.multipart_part_bytes),
            ));
        }
        if self.multipart_threshold_bytes == 0 {
            return Err(invalid("multipart_threshold_bytes", "must be at least 1".into()));
        }
        if !(1..=10).contains(&self.max_attempts) {
            return Err(invalid("max_attempts", format!("must be 1 to 10, not {}", self.max_attempts)));
        }
        let endpoint: url::Url = self
            .endpoint
            .parse()
            .map_err(|e| StorageError::Permanent(format!("S3 endpoint {:?} is not a URL: {e}", self.endpoint)))?;
        let style = if self.path_style { rusty_s3::UrlStyle::Path } else { rusty_s3::UrlStyle::VirtualHost };
        let bucket = rusty_s3::Bucket::new(endpoint, style, self.bucket.clone(), self.region.clone()).map_err(|e| {
            let hint = if self.path_style { "" } else { " (an IP endpoint needs path_style = true)" };
            StorageError::Permanent(format!(
                "S3 bucket {:?} at {:?} cannot be addressed: {e}{hint}",
                self.bucket, self.endpoint
            ))
        })?;
        let credentials = rusty_s3::Credentials::new(
            self.access_key_id.expose_secret().to_owned(),
            self.secret_access_key.expose_secret().to_owned(),
        );
        Ok((bucket, credentials))
    }
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_timeout_ms() -> u64 {
    60_000
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_multipart_threshold_bytes() -> u64 {
    16 << 20
}
fn default_multipart_part_bytes() -> u64 {
    8 << 20
}
fn default_max_attempts() -> u32 {
    3
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key_id", &"[REDACTED]")
            .field("secret_access_key", &"[REDACTED]")
            .field("path_style", &self.path_style)
            .field("timeout_ms", &self.timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("multipart_threshold_bytes", &self.multipart_threshold_bytes)
            .field("multipart_part_bytes", &self.multipart_part_bytes)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

/// The store `config` describes. Fails only on a config that cannot work (bad
/// endpoint URL or bucket name); it does not contact the server.
#[cfg(feature = "jobs")]
pub fn from_config(config: &StoreConfig) -> Result<Arc<dyn ObjectStore>, StorageError> {
    Ok(match config {
        StoreConfig::Local(c) => Arc::new(LocalStore::new(&c.root)),
        StoreConfig::S3(c) => Arc::new(S3Store::new(c)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_the_same_way_for_every_store() {
        for good in ["a", "a/b/c.jpg", "tenant 1/ünïcödé ✓.jpg", "a..b/c.", ".hidden", "x/.y"] {
            assert!(validate_key(good).is_ok(), "{good:?} is a fine key");
        }
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        for bad in ["", "/etc/passwd", "..", "a/../b", "./a", "a/./b", "a//b", "a/", "a\0b", "a\\b", "a\nb", &long] {
            let e = validate_key(bad).unwrap_err();
            assert!(matches!(e, StorageError::InvalidKey { .. }), "{bad:?}: {e}");
            assert!(!e.is_retryable());
        }
        assert!(validate_key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        let e = validate_key("a/../b").unwrap_err().to_string();
        assert!(e.contains("a/../b") && e.contains(".."), "the error names the key and the reason: {e}");
    }

    #[cfg(feature = "jobs")]
    #[test]
    fn config_reads_both_kinds_and_refuses_unknown_fields() {
        let local: StoreConfig = toml::from_str("kind = \"local\"\nroot = \"/tmp/x\"").unwrap();
        assert!(matches!(local, StoreConfig::Local(LocalConfig { ref root }) if root == &PathBuf::from("/tmp/x")));
        let s3: StoreConfig = toml::from_str(
            r#"kind = "s3"
            endpoint = "http://127.0.0.1:9000"
            bucket = "photos"
            region = "eu-west-1"
            access_key_id = "AKIDEXAMPLE"
            secret_access_key = "very-secret-value"
            path_style = true"#,
        )
        .unwrap();
        let StoreConfig::S3(c) = &s3 else { panic!("s3 expected") };
        assert_eq!((c.bucket.as_str(), c.region.as_str(), c.path_style), ("photos", "eu-west-1", true));
        let shown = format!("{s3:?}");
        assert!(!shown.contains("AKIDEXAMPLE") && !shown.contains("very-secret-value"), "{shown}");
        let store = from_config(&s3).unwrap();
        let shown = format!("{store:?}");
        assert!(!shown.contains("AKIDEXAMPLE") && !shown.contains("very-secret-value"), "{shown}");

        assert!(toml::from_str::<StoreConfig>("kind = \"local\"\nroot = \"/x\"\nbukcet = \"y\"").is_err());
        assert!(toml::from_str::<StoreConfig>("kind = \"ftp\"\nroot = \"/x\"").is_err());
        let typo = "kind = \"s3\"\nendpoint = \"http://x\"\nbucket = \"b\"\naccess_key_id = \"a\"\nsecret_access_key = \"s\"\npathstyle = true";
        assert!(toml::from_str::<StoreConfig>(typo).is_err());
    }
}
