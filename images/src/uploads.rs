//! Presigned upload URLs: an app PUTs an original straight into the S3 store, and Fleet
//! never carries the bytes (`POST /v1/uploads`).
//!
//! The key is made here, never taken from the caller: `tenants/<tenant>/uploads/<uuid v7>/<name>`,
//! so a URL can only write under the caller's own prefix (where `POST /v1/portfolios` accepts
//! keys) and two uploads of the same file name never overwrite each other. The URL is a SigV4
//! query-string signature by `rusty-s3` over the method, the bucket and key, and the
//! `content-type` and `content-length` headers: the store refuses a PUT to another key, of
//! another type or of another size. It expires after [`UPLOAD_URL_VALID_FOR`].
//!
//! Always built (no decoders, no HTTP client): the scheduler links it.

use crate::storage::{S3Config, StorageError, validate_key};
use chrono::{DateTime, Utc};
use rusty_s3::{Bucket, Credentials, S3Action};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long a presigned upload URL stays valid: time to start a large upload on a slow
/// connection, short enough that a leaked URL is soon useless.
pub const UPLOAD_URL_VALID_FOR: Duration = Duration::from_secs(15 * 60);

/// Largest upload a URL is signed for, in bytes: the default largest file the image jobs
/// read (`Limits::max_bytes`, 64 MiB), so nothing is stored that analysis would refuse.
pub const MAX_UPLOAD_BYTES: u64 = 64 << 20;

/// Longest file name accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 200;

/// Content types a URL is signed for: the formats the image jobs decode.
pub const UPLOAD_CONTENT_TYPES: [&str; 6] =
    ["image/jpeg", "image/png", "image/webp", "image/gif", "image/tiff", "image/avif"];

/// Why no URL was signed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The request cannot be signed as asked (name, type or size); fix it and ask again.
    #[error("{0}")]
    Invalid(String),
    /// The store is misconfigured (bucket or endpoint); an operator must fix `[images.storage]`.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A URL to PUT one original to, and what the PUT must carry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PresignedUpload {
    /// The object key the upload lands at: pass it to `POST /v1/portfolios`.
    pub key: String,
    /// The presigned PUT URL.
    pub url: String,
    /// When the URL stops working.
    pub expires_at: DateTime<Utc>,
    /// Headers the PUT must send with exactly these values (they are signed).
    pub headers: BTreeMap<String, String>,
}

/// Signs upload URLs for one bucket.
pub struct UploadSigner {
    bucket: Bucket,
    credentials: Credentials,
}

impl std::fmt::Debug for UploadSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `Credentials`' own Debug shows the access key id.
        f.debug_struct("UploadSigner")
            .field("bucket", &self.bucket.name())
            .field("base_url", &self.bucket.base_url().as_str())
            .field("credentials", &"[REDACTED]")
            .finish()
    }
}

/// `name` made safe as the last segment of a key: letters, digits, `.`, `-` and `_` kept,
/// anything else `_`, no leading dot. Refuses a name that is empty, too long, has a path
/// separator or a control character, or is nothing but dots.
pub fn sanitise_name(name: &str) -> Result<String, UploadError> {
    let invalid = |why: &str| UploadError::Invalid(format!("name {name:?} {why}"));
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(invalid(&format!("must be 1 to {MAX_NAME_BYTES} bytes")));
    }
    if name.contains(['/', '\\']) || name.chars().any(char::is_control) {
        return Err(invalid("must be a file name: no path separators or control characters"));
    }
    let safe: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' }).collect();
    let safe = safe.trim_start_matches('.');
    if safe.is_empty() {
        return Err(invalid("has no usable characters"));
    }
    Ok(safe.to_owned())
}

/// Checks the content type and size asked for.
fn check_request(content_type: &str, bytes: u64) -> Result<(), UploadError> {
    if !UPLOAD_CONTENT_TYPES.contains(&content_type) {
        return Err(UploadError::Invalid(format!(
            "content_type {content_type:?} is not an image type Fleet decodes (one of {})",
            UPLOAD_CONTENT_TYPES.join(", ")
        )));
    }
    if bytes == 0 || bytes > MAX_UPLOAD_BYTES {
        return Err(UploadError::Invalid(format!("bytes must be 1 to {MAX_UPLOAD_BYTES} (64 MiB), not {bytes}")));
    }
    Ok(())
}

impl UploadSigner {
    /// A signer for `config`'s bucket; checks the endpoint and bucket name like
    /// [`crate::storage::S3Config`]'s store does, without contacting the server.
    pub fn new(config: &S3Config) -> Result<Self, StorageError> {
        let (bucket, credentials) = config.bucket()?;
        Ok(UploadSigner { bucket, credentials })
    }

    /// A URL to PUT a `bytes`-long `content_type` file called `name` into `tenant`'s
    /// uploads, valid for [`UPLOAD_URL_VALID_FOR`].
    pub fn sign_put(
        &self,
        tenant: &str,
        name: &str,
        content_type: &str,
        bytes: u64,
    ) -> Result<PresignedUpload, UploadError> {
        let name = sanitise_name(name)?;
        check_request(content_type, bytes)?;
        let key = format!("tenants/{tenant}/uploads/{}/{name}", uuid::Uuid::now_v7());
        validate_key(&key)?;
        // Taken before signing, so the URL never outlives the time given.
        let expires_at = Utc::now() + UPLOAD_URL_VALID_FOR;
        let length = bytes.to_string();
        let mut action = self.bucket.put_object(Some(&self.credentials), &key);
        action.headers_mut().insert("content-type", content_type);
        action.headers_mut().insert("content-length", length.as_str());
        let url = action.sign(UPLOAD_URL_VALID_FOR).to_string();
        let headers = BTreeMap::from([
            ("content-type".to_owned(), content_type.to_owned()),
            ("content-length".to_owned(), length.clone()),
        ]);
        Ok(PresignedUpload { key, url, expires_at, headers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn signer() -> UploadSigner {
        UploadSigner::new(&S3Config {
            endpoint: "http://127.0.0.1:9000".into(),
            bucket: "photos".into(),
            region: "us-east-1".into(),
            access_key_id: SecretString::from("AKIDEXAMPLE"),
            secret_access_key: SecretString::from("very-secret-value"),
            path_style: true,
            timeout_ms: 1000,
            connect_timeout_ms: 1000,
            ..S3Config::new(String::new(), String::new(), SecretString::from(""), SecretString::from(""))
        })
        .unwrap()
    }

    /// The URL's signature recomputed for `key`, `content_type` and `length` at the URL's
    /// own `X-Amz-Date` (what S3 does to check a presigned request).
    fn expected_signature(s: &UploadSigner, url: &url::Url, key: &str, content_type: &str, length: &str) -> String {
        let query: BTreeMap<_, _> = url.query_pairs().into_owned().collect();
        let date = jiff::fmt::strtime::parse("%Y%m%dT%H%M%SZ", &query["X-Amz-Date"]).unwrap();
        let time = date.to_datetime().unwrap().to_zoned(jiff::tz::TimeZone::UTC).unwrap().timestamp();
        let mut action = s.bucket.put_object(Some(&s.credentials), key);
        action.headers_mut().insert("content-type", content_type);
        action.headers_mut().insert("content-length", length);
        let resigned = action.sign_with_time(UPLOAD_URL_VALID_FOR, &time);
        resigned.query_pairs().find(|(k, _)| k == "X-Amz-Signature").unwrap().1.into_owned()
    }

    #[test]
    fn the_key_is_under_the_tenant_and_the_signature_covers_key_type_and_size() {
        let s = signer();
        let before = Utc::now();
        let up = s.sign_put("acme", "Wedding day #1 (ünï).JPG", "image/jpeg", 1234).unwrap();
        let parts: Vec<_> = up.key.split('/').collect();
        assert_eq!(&parts[..3], ["tenants", "acme", "uploads"], "{}", up.key);
        assert_eq!(uuid::Uuid::parse_str(parts[3]).unwrap().get_version_num(), 7);
        assert_eq!(parts[4], "Wedding_day__1___n__.JPG");
        assert!(up.expires_at >= before + UPLOAD_URL_VALID_FOR && up.expires_at <= Utc::now() + UPLOAD_URL_VALID_FOR);
        assert_eq!(up.headers["content-type"], "image/jpeg");
        assert_eq!(up.headers["content-length"], "1234");
        let url: url::Url = up.url.parse().unwrap();
        assert_eq!(url.path(), format!("/photos/{}", up.key));
        let query: BTreeMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(query["X-Amz-Expires"], "900");
        assert_eq!(query["X-Amz-SignedHeaders"], "content-length;content-type;host");
        assert!(!up.url.contains("very-secret-value"));

        let signature = &query["X-Amz-Signature"];
        assert_eq!(&expected_signature(&s, &url, &up.key, "image/jpeg", "1234"), signature, "recomputed as S3 does");
        let other = up.key.replace("/acme/", "/other/");
        for (key, ct, len) in
            [(other.as_str(), "image/jpeg", "1234"), (&up.key, "image/png", "1234"), (&up.key, "image/jpeg", "99999")]
        {
            assert_ne!(&expected_signature(&s, &url, key, ct, len), signature, "{key} {ct} {len} is not covered");
        }
        // Two uploads of the same name never share a key.
        assert_ne!(
            s.sign_put("acme", "a.jpg", "image/jpeg", 1).unwrap().key,
            s.sign_put("acme", "a.jpg", "image/jpeg", 1).unwrap().key
        );
    }

    #[test]
    fn bad_names_types_and_sizes_are_refused_with_the_reason() {
        let s = signer();
        let long = "a".repeat(MAX_NAME_BYTES + 1);
        for name in ["", "../x.jpg", "a/b.jpg", "a\\b.jpg", "a\nb.jpg", "...", &long] {
            let e = s.sign_put("acme", name, "image/jpeg", 10).unwrap_err();
            assert!(matches!(e, UploadError::Invalid(_)) && e.to_string().contains("name"), "{name:?}: {e}");
        }
        assert_eq!(sanitise_name(".hidden.jpg").unwrap(), "hidden.jpg");
        for ct in ["text/html", "image/svg+xml", "application/octet-stream", "IMAGE/JPEG"] {
            let e = s.sign_put("acme", "a.jpg", ct, 10).unwrap_err().to_string();
            assert!(e.contains("content_type") && e.contains(ct), "{e}");
        }
        for bytes in [0, MAX_UPLOAD_BYTES + 1] {
            let e = s.sign_put("acme", "a.jpg", "image/jpeg", bytes).unwrap_err().to_string();
            assert!(e.contains("bytes must be 1 to"), "{e}");
        }
        assert!(s.sign_put("acme", "a.jpg", "image/jpeg", MAX_UPLOAD_BYTES).is_ok());
        assert!(!format!("{s:?}").contains("AKIDEXAMPLE"));
    }
}
