//! Web Push (RFC 8030) with the payload encrypted for the browser (RFC 8291, `aes128gcm`)
//! and the sender identified by VAPID (RFC 8292), written on RustCrypto primitives
//! (`p256` ECDH and ECDSA, `hkdf`, `aes-gcm`): the maintained crates that do all of it
//! either bring OpenSSL and an HTTP client of their own (`web-push`) or a JWT stack
//! (`web-push-native`), while the scheme is a page of key derivation.
//!
//! Encryption (RFC 8291 §3): an ephemeral P-256 key per message; ECDH with the
//! subscription's `p256dh`; `IKM = HKDF(auth, ecdh, "WebPush: info\0" ‖ ua_public ‖
//! as_public)`; a random 16-byte salt; `CEK` and `NONCE` from `HKDF(salt, IKM)`; one
//! record (plaintext ‖ 0x02) sealed with AES-128-GCM, after the header `salt ‖ rs ‖ idlen
//! ‖ as_public`. VAPID: an ES256 JWT (`aud` = the push service's origin, `exp` 12 h,
//! `sub` the operator's contact) in `Authorization: vapid t=…, k=…`.

use aes_gcm::aead::Aead;
use aes_gcm::{Aes128Gcm, KeyInit};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hkdf::Hkdf;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use sha2::Sha256;

/// Largest plaintext of one push (one 4096-byte record less its overhead).
pub const MAX_PAYLOAD: usize = 3993;
const RS: u32 = 4096;

/// A new random P-256 secret key.
fn random_secret() -> SecretKey {
    loop {
        if let Ok(k) = SecretKey::from_slice(&rand::random::<[u8; 32]>()) {
            return k;
        }
    }
}

/// Encrypts `plaintext` for a subscription (`p256dh`, `auth`: the raw bytes).
pub fn encrypt(ua_public: &[u8], auth: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, String> {
    if plaintext.len() > MAX_PAYLOAD {
        return Err(format!("push payload is {} bytes, more than {MAX_PAYLOAD}", plaintext.len()));
    }
    let ua = PublicKey::from_sec1_bytes(ua_public).map_err(|_| "the subscription's p256dh is not a P-256 key")?;
    let ua_bytes = ua.to_encoded_point(false);
    let secret = random_secret();
    let as_public = secret.public_key().to_encoded_point(false);
    let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), ua.as_affine());
    let mut info = b"WebPush: info\0".to_vec();
    info.extend_from_slice(ua_bytes.as_bytes());
    info.extend_from_slice(as_public.as_bytes());
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(auth), &shared.raw_secret_bytes()[..])
        .expand(&info, &mut ikm)
        .map_err(|e| e.to_string())?;
    let salt: [u8; 16] = rand::random();
    let hk = Hkdf::<Sha256>::new(Some(&salt), &ikm);
    let (mut cek, mut nonce) = ([0u8; 16], [0u8; 12]);
    hk.expand(b"Content-Encoding: aes128gcm\0", &mut cek).map_err(|e| e.to_string())?;
    hk.expand(b"Content-Encoding: nonce\0", &mut nonce).map_err(|e| e.to_string())?;
    let mut record = plaintext.to_vec();
    record.push(2); // the last (and only) record's delimiter
    let sealed = Aes128Gcm::new_from_slice(&cek)
        .map_err(|e| e.to_string())?
        .encrypt(&nonce.into(), record.as_slice())
        .map_err(|_| "encryption failed")?;
    let mut out = Vec::with_capacity(16 + 4 + 1 + 65 + sealed.len());
    out.extend_from_slice(&salt);
    out.extend_from_slice(&RS.to_be_bytes());
    out.push(as_public.as_bytes().len() as u8);
    out.extend_from_slice(as_public.as_bytes());
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// The operator's VAPID key pair and contact.
#[derive(Clone)]
pub struct Vapid {
    key: SigningKey,
    public: String,
    subject: String,
}

impl Vapid {
    /// From the private key as base64url (32 raw bytes) and a `mailto:`/`https:` contact.
    pub fn new(private_b64: &str, subject: &str) -> Result<Self, String> {
        let raw = URL_SAFE_NO_PAD
            .decode(private_b64.trim().trim_end_matches('='))
            .map_err(|_| "notify.vapid_private_key: not base64url".to_owned())?;
        let secret =
            SecretKey::from_slice(&raw).map_err(|_| "notify.vapid_private_key: not a P-256 private key".to_owned())?;
        if !subject.starts_with("mailto:") && !subject.starts_with("https:") {
            return Err("notify.vapid_subject: a mailto: or https: contact".into());
        }
        let public = URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false).as_bytes());
        Ok(Vapid { key: SigningKey::from(secret), public, subject: subject.to_owned() })
    }

    /// The public key browsers subscribe with (`applicationServerKey`), base64url.
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// `Authorization` for a push to `endpoint` (its origin is the token's audience).
    pub fn authorization(&self, endpoint: &reqwest::Url, now: i64) -> String {
        let origin = endpoint.origin().ascii_serialization();
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = serde_json::json!({"aud": origin, "exp": now + 12 * 3600, "sub": self.subject});
        let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature: Signature = self.key.sign(input.as_bytes());
        format!("vapid t={input}.{}, k={}", URL_SAFE_NO_PAD.encode(signature.to_bytes()), self.public)
    }
}

/// What a push service said to one push.
pub(crate) enum PushResult {
    Accepted,
    /// 404/410: the subscription is gone.
    Gone,
    Failed {
        error: String,
        transient: bool,
    },
}

/// Sends one encrypted push.
pub(crate) async fn send(
    http: &reqwest::Client,
    vapid: &Vapid,
    endpoint: &str,
    p256dh: &str,
    auth: &str,
    payload: &[u8],
    urgent: bool,
) -> PushResult {
    let failed = |error: String, transient| PushResult::Failed { error, transient };
    let (Ok(url), Ok(ua), Ok(secret)) = (
        endpoint.parse::<reqwest::Url>(),
        URL_SAFE_NO_PAD.decode(p256dh.trim_end_matches('=')),
        URL_SAFE_NO_PAD.decode(auth.trim_end_matches('=')),
    ) else {
        return failed("the subscription's endpoint or keys are malformed".into(), false);
    };
    let body = match encrypt(&ua, &secret, payload) {
        Ok(b) => b,
        Err(e) => return failed(e, false),
    };
    let res = http
        .post(url.clone())
        .header("authorization", vapid.authorization(&url, chrono::Utc::now().timestamp()))
        .header("content-encoding", "aes128gcm")
        .header("content-type", "application/octet-stream")
        .header("ttl", "86400")
        .header("urgency", if urgent { "high" } else { "normal" })
        .body(body)
        .send()
        .await;
    match res {
        Err(e) => failed(format!("push service: {}", fleet_net::redact_urls_in(&e.to_string())), true),
        Ok(r) if r.status().is_success() => PushResult::Accepted,
        Ok(r) if matches!(r.status().as_u16(), 404 | 410) => PushResult::Gone,
        Ok(r) => {
            let transient = r.status().is_server_error() || r.status().as_u16() == 429;
            failed(format!("push service answered HTTP {}", r.status()), transient)
        }
    }
}
