//! Standard Webhooks (<https://www.standardwebhooks.com>, spec 1.0): signing outgoing
//! deliveries and verifying incoming calls.
//!
//! The signed content is `{id}.{timestamp}.{body}` over the **raw body bytes** (never
//! re-serialised JSON); the key is the base64-decoded secret after the optional
//! `whsec_` prefix; a signature is `v1,` + base64 of HMAC-SHA256. Several signatures,
//! space-separated, are sent during a secret rotation; a verifier accepts the call if
//! any `v1` signature matches, compared in constant time, and skips other versions.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

/// How far a timestamp may be from now, either way.
pub const TOLERANCE_SECS: i64 = 300;

/// A webhook secret (the decoded key). Never printed.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Why a secret, a header or a signature is refused. Messages never include secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// The secret is empty or not base64.
    #[error("invalid secret: expected whsec_ followed by base64")]
    InvalidSecret,
    /// The id or timestamp header is missing or malformed.
    #[error("missing or malformed {0} header")]
    BadHeader(&'static str),
    /// The timestamp is too far from now.
    #[error("timestamp outside the {TOLERANCE_SECS} s tolerance")]
    Stale,
    /// No signature matched.
    #[error("no matching signature")]
    NoMatch,
    /// An id containing `.` would make the signed content ambiguous.
    #[error("message ids may not contain '.'")]
    BadId,
}

impl Secret {
    /// Parses `whsec_<base64>` (or bare base64).
    pub fn parse(text: &str) -> Result<Secret, WebhookError> {
        let b64 = text.strip_prefix("whsec_").unwrap_or(text);
        if b64.is_empty() {
            return Err(WebhookError::InvalidSecret);
        }
        let key = STANDARD.decode(b64).map_err(|_| WebhookError::InvalidSecret)?;
        if key.is_empty() {
            return Err(WebhookError::InvalidSecret);
        }
        Ok(Secret(key))
    }

    /// A new random secret in its `whsec_` form (24 random bytes).
    pub fn generate() -> String {
        format!("whsec_{}", STANDARD.encode(rand::random::<[u8; 24]>()))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `v1,<base64>` signature of one delivery.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> Result<String, WebhookError> {
        if id.contains('.') || id.is_empty() {
            return Err(WebhookError::BadId);
        }
        Ok(format!("v1,{}", STANDARD.encode(self.mac(id, timestamp, body).finalize().into_bytes())))
    }
}

/// The `webhook-signature` header value: one signature per secret (rotation).
pub fn signature_header(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> Result<String, WebhookError> {
    let sigs: Result<Vec<String>, _> = secrets.iter().map(|s| s.sign(id, timestamp, body)).collect();
    Ok(sigs?.join(" "))
}

/// Verifies an incoming call: the `webhook-id`, `webhook-timestamp` and
/// `webhook-signature` header values and the raw body, against any of `secrets`,
/// at time `now` (Unix seconds).
pub fn verify(
    secrets: &[Secret],
    id: Option<&str>,
    timestamp: Option<&str>,
    signatures: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), WebhookError> {
    let id = id.filter(|i| !i.is_empty()).ok_or(WebhookError::BadHeader("webhook-id"))?;
    let ts_text = timestamp.ok_or(WebhookError::BadHeader("webhook-timestamp"))?;
    if ts_text.is_empty() || !ts_text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(WebhookError::BadHeader("webhook-timestamp"));
    }
    let ts: i64 = ts_text.parse().map_err(|_| WebhookError::BadHeader("webhook-timestamp"))?;
    if (now - ts).abs() > TOLERANCE_SECS {
        return Err(WebhookError::Stale);
    }
    let signatures = signatures.ok_or(WebhookError::BadHeader("webhook-signature"))?;
    for secret in secrets {
        let expected = secret.mac(id, ts, body);
        for entry in signatures.split(' ') {
            let Some(b64) = entry.strip_prefix("v1,") else { continue };
            let Ok(given) = STANDARD.decode(b64) else { continue };
            // verify_slice compares in constant time.
            if expected.clone().verify_slice(&given).is_ok() {
                return Ok(());
            }
        }
    }
    Err(WebhookError::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vector A: the spec's sign tests (JS, Python, Go, PHP, Ruby, C# libraries).
    const A_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const A_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const A_TS: i64 = 1614265330;
    const A_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const A_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_the_published_vectors() {
        assert_eq!(Secret::parse(A_SECRET).unwrap().sign(A_ID, A_TS, A_BODY).unwrap(), A_SIG);
        // Vector B: the reference Rust library's test_sign.
        let b = Secret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let sig = b
            .sign(
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                br#"{"email":"test@example.com","username":"test_user"}"#,
            )
            .unwrap();
        assert_eq!(sig, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
        // The secret works without its prefix too.
        assert_eq!(Secret::parse(&A_SECRET[6..]).unwrap().sign(A_ID, A_TS, A_BODY).unwrap(), A_SIG);
    }

    fn check(sig: &str, ts: &str, now: i64) -> Result<(), WebhookError> {
        verify(&[Secret::parse(A_SECRET).unwrap()], Some(A_ID), Some(ts), Some(sig), A_BODY, now)
    }

    #[test]
    fn verifies_like_the_reference_libraries() {
        let ts = A_TS.to_string();
        assert_eq!(check(A_SIG, &ts, A_TS), Ok(()));
        let decoy = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=";
        assert_eq!(check(&format!("{decoy} {A_SIG}"), &ts, A_TS), Ok(()), "decoy before the good one");
        assert_eq!(check(&format!("{A_SIG} {decoy}"), &ts, A_TS), Ok(()), "decoy after");
        assert_eq!(check(&format!("v2,{} {A_SIG}", &decoy[3..]), &ts, A_TS), Ok(()), "unknown versions skipped");
        assert_eq!(check(decoy, &ts, A_TS), Err(WebhookError::NoMatch));
        assert_eq!(check("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=", &ts, A_TS), Err(WebhookError::NoMatch));
        assert_eq!(check("v1,", &ts, A_TS), Err(WebhookError::NoMatch), "empty signature");
        assert_eq!(check(&A_SIG[..A_SIG.len() - 4], &ts, A_TS), Err(WebhookError::NoMatch), "truncated");
        assert_eq!(check(&format!("v2,{}", &A_SIG[3..]), &ts, A_TS), Err(WebhookError::NoMatch), "only v1 counts");
        for bad in ["161426533.0", "-161426533", "invalid timestamp", ""] {
            assert_eq!(check(A_SIG, bad, A_TS), Err(WebhookError::BadHeader("webhook-timestamp")), "{bad:?}");
        }
        assert_eq!(check(A_SIG, &ts, A_TS + 301), Err(WebhookError::Stale));
        assert_eq!(check(A_SIG, &ts, A_TS - 301), Err(WebhookError::Stale));
        assert_eq!(check(A_SIG, &ts, A_TS + 300), Ok(()));
        let s = Secret::parse(A_SECRET).unwrap();
        assert_eq!(
            verify(std::slice::from_ref(&s), None, Some(&ts), Some(A_SIG), A_BODY, A_TS),
            Err(WebhookError::BadHeader("webhook-id"))
        );
        assert_eq!(
            verify(&[s], Some(A_ID), Some(&ts), None, A_BODY, A_TS),
            Err(WebhookError::BadHeader("webhook-signature"))
        );
    }

    #[test]
    fn bad_secrets_and_ids_are_refused_without_echoing_them() {
        assert_eq!(Secret::parse("").unwrap_err(), WebhookError::InvalidSecret);
        assert_eq!(Secret::parse("whsec_").unwrap_err(), WebhookError::InvalidSecret);
        assert_eq!(Secret::parse("whsec_not base64!").unwrap_err(), WebhookError::InvalidSecret);
        assert_eq!(format!("{:?}", Secret::parse(A_SECRET).unwrap()), "Secret(***)");
        assert_eq!(Secret::parse(A_SECRET).unwrap().sign("msg.1", 1, b"").unwrap_err(), WebhookError::BadId);
        let g = Secret::generate();
        assert!(g.starts_with("whsec_") && Secret::parse(&g).is_ok());
    }

    #[test]
    fn every_secret_of_a_rotation_signs() {
        let old = Secret::parse(A_SECRET).unwrap();
        let new = Secret::parse(&Secret::generate()).unwrap();
        let header = signature_header(&[new.clone(), old.clone()], A_ID, A_TS, A_BODY).unwrap();
        assert_eq!(header.split(' ').count(), 2);
        let ts = A_TS.to_string();
        assert!(
            verify(&[old], Some(A_ID), Some(&ts), Some(&header), A_BODY, A_TS).is_ok(),
            "a receiver on the old secret"
        );
        assert!(verify(&[new], Some(A_ID), Some(&ts), Some(&header), A_BODY, A_TS).is_ok(), "and one on the new");
    }
}
