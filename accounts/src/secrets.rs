//! Secrets at rest (IMAP passwords, OAuth tokens, provider auth tokens, webhook endpoint
//! signing secrets), sealed with AES-256-GCM under versioned keys.
//!
//! # Keys and rotation
//!
//! * `FLEET_SECRETS_KEY`: the current key (32 bytes, as 64 hex digits or base64). Every
//!   new seal uses it.
//! * `FLEET_SECRETS_KEYS_OLD`: comma-separated keys it replaced. They only open.
//!
//! A key's id is derived from the key itself (the first 4 bytes of
//! SHA-256(`fleet-secrets-key-id:` ‖ key), 8 hex digits), so there is no id to configure
//! and none to get wrong. To rotate: set the new key as `FLEET_SECRETS_KEY`, move the old
//! one to `FLEET_SECRETS_KEYS_OLD`, restart, run `fleet-scheduler reseal-secrets` (which
//! re-seals every stored secret with the current key), then drop the old key.
//!
//! # Stored forms
//!
//! * `v2:<key id>:` + base64(nonce ‖ ciphertext ‖ tag), written now. The key id says
//!   which key opens it; the `v2:<key id>:` header is bound in as associated data.
//! * `v1:` + base64(nonce ‖ ciphertext ‖ tag), written before key versions. It names no
//!   key, so every configured key is tried (current first).
//!
//! Each seal uses a fresh random 96-bit nonce (at most 2^32 seals per key, NIST SP
//! 800-38D §8.3: rotate long before). The caller's associated data (a source id, or
//! tenant + table + row id) is bound in, so a ciphertext copied onto another row does
//! not open. Neither a key nor a plaintext ever appears in an error or a `Debug` output.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// The environment variable with the current key.
pub const KEY_VAR: &str = "FLEET_SECRETS_KEY";
/// The environment variable with the old keys (comma-separated), which only open.
pub const OLD_KEYS_VAR: &str = "FLEET_SECRETS_KEYS_OLD";

/// Why a secret could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// No key is configured.
    #[error("no secrets key: set FLEET_SECRETS_KEY (32 bytes as 64 hex digits or base64)")]
    NoKey,
    /// The key is not 32 bytes in hex or base64.
    #[error("the secrets key must be 32 bytes, as 64 hex digits or base64")]
    BadKey,
    /// An entry of `FLEET_SECRETS_KEYS_OLD` is not a key (numbered from 1).
    #[error("entry {0} of FLEET_SECRETS_KEYS_OLD is not a key (32 bytes, as 64 hex digits or base64)")]
    BadOldKey(usize),
    /// The value was sealed with a key that is not configured.
    #[error("the stored secret was sealed with key {0}, which is not configured (add it to FLEET_SECRETS_KEYS_OLD)")]
    UnknownKey(String),
    /// The stored value is not one this version wrote, or it was altered, or another
    /// key or row sealed it.
    #[error("the stored secret cannot be opened with this key (altered, or sealed by another key)")]
    Corrupt,
}

/// One key and its id.
#[derive(Clone)]
struct Key {
    id: String,
    cipher: Aes256Gcm,
}

impl Key {
    fn parse(key: &str) -> Result<Key, SecretError> {
        let key = key.trim();
        let bytes = if key.len() == 64 && key.chars().all(|c| c.is_ascii_hexdigit()) {
            hex::decode(key).map_err(|_| SecretError::BadKey)?
        } else {
            base64::engine::general_purpose::STANDARD.decode(key).map_err(|_| SecretError::BadKey)?
        };
        if bytes.len() != 32 {
            return Err(SecretError::BadKey);
        }
        let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| SecretError::BadKey)?;
        let mut h = Sha256::new();
        h.update(b"fleet-secrets-key-id:");
        h.update(&bytes);
        let id = hex::encode(&h.finalize()[..4]);
        Ok(Key { id, cipher })
    }

    fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<String, SecretError> {
        if sealed.len() < 12 + 16 {
            return Err(SecretError::Corrupt);
        }
        let (nonce, body) = sealed.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| SecretError::Corrupt)?;
        let plain =
            self.cipher.decrypt(&Nonce::from(nonce), Payload { msg: body, aad }).map_err(|_| SecretError::Corrupt)?;
        String::from_utf8(plain).map_err(|_| SecretError::Corrupt)
    }
}

/// The keys that seal and open secrets: the current one, which seals, and any number
/// of old ones, which only open.
#[derive(Clone)]
pub struct SecretBox {
    current: Key,
    old: Vec<Key>,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key ids are not secret (a hash prefix), and they tell an operator which keys are loaded.
        let old: Vec<&str> = self.old.iter().map(|k| k.id.as_str()).collect();
        write!(f, "SecretBox(current {}, old {:?})", self.current.id, old)
    }
}

/// Associated data binding a secret to one row: `tenant`, `table` and row `id` joined by
/// NUL (which PostgreSQL text cannot hold, so the parts cannot run into each other). A
/// value sealed for one row does not open for another row, table or tenant.
pub fn row_aad(tenant: &str, table: &str, id: &str) -> String {
    format!("{tenant}\0{table}\0{id}")
}

/// Whether `stored` is a sealed value (of any version) rather than a plaintext.
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with("v1:") || stored.starts_with("v2:")
}

impl SecretBox {
    /// A box whose current key is `key` (64 hex digits or base64 of 32 bytes).
    pub fn new(key: &str) -> Result<Self, SecretError> {
        Ok(SecretBox { current: Key::parse(key)?, old: Vec::new() })
    }

    /// The same box that also opens what `old` sealed (`old` never seals).
    pub fn with_old_key(mut self, old: &str) -> Result<Self, SecretError> {
        let key = Key::parse(old)?;
        if key.id != self.current.id && self.old.iter().all(|k| k.id != key.id) {
            self.old.push(key);
        }
        Ok(self)
    }

    /// A box with the current key `key` and the comma-separated old keys `old` (empty
    /// entries are skipped).
    pub fn from_keys(key: &str, old: &str) -> Result<Self, SecretError> {
        let mut b = SecretBox::new(key)?;
        for (i, k) in old.split(',').map(str::trim).filter(|k| !k.is_empty()).enumerate() {
            b = b.with_old_key(k).map_err(|_| SecretError::BadOldKey(i + 1))?;
        }
        Ok(b)
    }

    /// A box with the keys in `FLEET_SECRETS_KEY` and `FLEET_SECRETS_KEYS_OLD`.
    pub fn from_env() -> Result<Self, SecretError> {
        match std::env::var(KEY_VAR) {
            Ok(k) if !k.trim().is_empty() => SecretBox::from_keys(&k, &std::env::var(OLD_KEYS_VAR).unwrap_or_default()),
            _ => Err(SecretError::NoKey),
        }
    }

    /// The box of `FLEET_SECRETS_KEY` if it is set, `None` if it is not, and an error if
    /// it (or an old key) is set to something that is not a key: a typo must stop the
    /// start, not silently turn sealing off.
    pub fn from_env_if_set() -> Result<Option<Self>, SecretError> {
        match SecretBox::from_env() {
            Ok(b) => Ok(Some(b)),
            Err(SecretError::NoKey) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The id of the current key (8 hex digits), which new seals carry.
    pub fn key_id(&self) -> &str {
        &self.current.id
    }

    /// Ids of the old keys, which only open.
    pub fn old_key_ids(&self) -> impl Iterator<Item = &str> {
        self.old.iter().map(|k| k.id.as_str())
    }

    /// The id of the key that sealed `stored`, if its form names one (`v2`).
    pub fn key_id_of(stored: &str) -> Option<&str> {
        stored.strip_prefix("v2:")?.split_once(':').map(|(id, _)| id)
    }

    /// Whether `stored` is sealed with the current key in the current form (a reseal
    /// would not change it).
    pub fn is_current(&self, stored: &str) -> bool {
        SecretBox::key_id_of(stored) == Some(self.current.id.as_str())
    }

    /// Seals `plaintext` with the current key, bound to `aad` (a source id, or tenant +
    /// table + row id).
    pub fn seal(&self, aad: &str, plaintext: &str) -> Result<String, SecretError> {
        let header = format!("v2:{}:", self.current.id);
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = self
            .current
            .cipher
            .encrypt(&nonce, Payload { msg: plaintext.as_bytes(), aad: &v2_aad(&header, aad) })
            .map_err(|_| SecretError::Corrupt)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(format!("{header}{}", base64::engine::general_purpose::STANDARD.encode(out)))
    }

    /// Opens a value [`SecretBox::seal`] made for `aad` with any configured key, in
    /// either stored form.
    pub fn open(&self, aad: &str, stored: &str) -> Result<String, SecretError> {
        let decode = |b: &str| base64::engine::general_purpose::STANDARD.decode(b).map_err(|_| SecretError::Corrupt);
        if let Some(rest) = stored.strip_prefix("v2:") {
            let (id, body) = rest.split_once(':').ok_or(SecretError::Corrupt)?;
            let key = self.keys().find(|k| k.id == id).ok_or_else(|| SecretError::UnknownKey(id.to_owned()))?;
            let header = &stored[..3 + id.len() + 1];
            return key.open(&decode(body)?, &v2_aad(header, aad));
        }
        let body = stored.strip_prefix("v1:").ok_or(SecretError::Corrupt)?;
        let bytes = decode(body)?;
        // v1 names no key: try each, current first.
        self.keys().find_map(|k| k.open(&bytes, aad.as_bytes()).ok()).ok_or(SecretError::Corrupt)
    }

    /// `stored` sealed again with the current key, or `None` when it already is.
    pub fn reseal(&self, aad: &str, stored: &str) -> Result<Option<String>, SecretError> {
        if self.is_current(stored) {
            return Ok(None);
        }
        let plain = self.open(aad, stored)?;
        self.seal(aad, &plain).map(Some)
    }

    fn keys(&self) -> impl Iterator<Item = &Key> {
        std::iter::once(&self.current).chain(self.old.iter())
    }
}

fn v2_aad(header: &str, aad: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(header.len() + aad.len());
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(aad.as_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const NEW: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

    /// A `v1:` value as the version before key ids wrote it.
    fn seal_v1(key: &str, aad: &str, plaintext: &str) -> String {
        let k = Key::parse(key).unwrap();
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = k.cipher.encrypt(&nonce, Payload { msg: plaintext.as_bytes(), aad: aad.as_bytes() }).unwrap();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!("v1:{}", base64::engine::general_purpose::STANDARD.encode(out))
    }

    #[test]
    fn sealed_secrets_open_only_for_their_source_and_key() {
        let b = SecretBox::new(KEY).unwrap();
        let sealed = b.seal("src-1", "hunter2").unwrap();
        assert!(!sealed.contains("hunter2"));
        assert!(sealed.starts_with(&format!("v2:{}:", b.key_id())), "{sealed}");
        assert_ne!(sealed, b.seal("src-1", "hunter2").unwrap(), "fresh nonce each time");
        assert_eq!(b.open("src-1", &sealed).unwrap(), "hunter2");
        assert_eq!(b.open("src-2", &sealed), Err(SecretError::Corrupt));
        let other = SecretBox::new(&"ab".repeat(32)).unwrap();
        assert!(matches!(other.open("src-1", &sealed), Err(SecretError::UnknownKey(_))));
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push('A');
        assert!(b.open("src-1", &tampered).is_err());
    }

    #[test]
    fn keys_are_checked() {
        assert_eq!(SecretBox::new("short").unwrap_err(), SecretError::BadKey);
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert!(SecretBox::new(&b64).is_ok());
        assert!(!format!("{:?}", SecretBox::new(KEY).unwrap()).contains("0001"));
        assert_eq!(SecretBox::from_keys(KEY, &format!("{NEW}, nope")).unwrap_err(), SecretError::BadOldKey(2));
        let b = SecretBox::from_keys(NEW, &format!(" {KEY} ,,{NEW}")).unwrap();
        assert_eq!(b.old_key_ids().count(), 1, "empty entries and the current key are skipped");
    }

    #[test]
    fn key_ids_are_stable_and_distinct() {
        let a = SecretBox::new(KEY).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(hex::decode(KEY).unwrap());
        assert_eq!(a.key_id(), SecretBox::new(&b64).unwrap().key_id(), "the same key in hex or base64");
        assert_eq!(a.key_id().len(), 8);
        assert_ne!(a.key_id(), SecretBox::new(NEW).unwrap().key_id());
    }

    #[test]
    fn after_a_rotation_old_values_open_and_new_seals_use_the_new_key() {
        let before = SecretBox::new(KEY).unwrap();
        let old_v2 = before.seal("ep-1", "whsec_old").unwrap();
        let old_v1 = seal_v1(KEY, "ep-1", "whsec_v1");
        assert_eq!(before.open("ep-1", &old_v1).unwrap(), "whsec_v1", "v1 values still open");

        let after = SecretBox::from_keys(NEW, KEY).unwrap();
        assert_eq!(after.open("ep-1", &old_v2).unwrap(), "whsec_old");
        assert_eq!(after.open("ep-1", &old_v1).unwrap(), "whsec_v1");
        assert_eq!(after.open("ep-2", &old_v1), Err(SecretError::Corrupt), "v1 is still bound to its row");
        let fresh = after.seal("ep-1", "whsec_new").unwrap();
        assert_eq!(SecretBox::key_id_of(&fresh), Some(after.key_id()));
        assert!(after.is_current(&fresh) && !after.is_current(&old_v2) && !after.is_current(&old_v1));
        // The key that was rotated out no longer opens what the new one sealed.
        assert!(matches!(before.open("ep-1", &fresh), Err(SecretError::UnknownKey(_))));

        // Reseal moves old values to the current key, and is a no-op on current ones.
        for (old, plain) in [(&old_v2, "whsec_old"), (&old_v1, "whsec_v1")] {
            let moved = after.reseal("ep-1", old).unwrap().expect("resealed");
            assert!(after.is_current(&moved));
            assert_eq!(SecretBox::new(NEW).unwrap().open("ep-1", &moved).unwrap(), plain, "the old key is not needed");
            assert_eq!(after.reseal("ep-1", &moved).unwrap(), None);
        }
        // Without the old key, old values say which key they need.
        let only_new = SecretBox::new(NEW).unwrap();
        assert_eq!(only_new.open("ep-1", &old_v2), Err(SecretError::UnknownKey(before.key_id().to_owned())));
        assert_eq!(only_new.open("ep-1", &old_v1), Err(SecretError::Corrupt));
    }

    #[test]
    fn the_version_header_cannot_be_swapped() {
        let b = SecretBox::from_keys(NEW, KEY).unwrap();
        let sealed = b.seal("ep-1", "s").unwrap();
        // Relabelled as v1: the header is bound in, so it no longer opens.
        let body = sealed.rsplit_once(':').unwrap().1;
        assert_eq!(b.open("ep-1", &format!("v1:{body}")), Err(SecretError::Corrupt));
        assert!(is_sealed(&sealed) && is_sealed("v1:x") && !is_sealed("whsec_abc"));
    }
}
