//! Source secrets (IMAP passwords, OAuth tokens, provider auth tokens) encrypted at
//! rest with AES-256-GCM.
//!
//! The key comes from configuration or `FLEET_SECRETS_KEY` (32 bytes, as 64 hex digits
//! or base64). Each secret gets a fresh random 96-bit nonce, and the source id is bound
//! in as associated data, so a ciphertext copied onto another source does not decrypt.
//! Stored form: `v1:` + base64(nonce ‖ ciphertext ‖ tag). Neither the key nor a
//! plaintext ever appears in an error or a `Debug` output.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;

/// Why a secret could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// No key is configured.
    #[error("no secrets key: set FLEET_SECRETS_KEY (32 bytes as 64 hex digits or base64)")]
    NoKey,
    /// The key is not 32 bytes in hex or base64.
    #[error("the secrets key must be 32 bytes, as 64 hex digits or base64")]
    BadKey,
    /// The stored value is not one this version wrote, or it was altered, or another
    /// key or source sealed it.
    #[error("the stored secret cannot be opened with this key (altered, or sealed by another key)")]
    Corrupt,
}

/// The key that seals and opens source secrets.
#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(<key>)")
    }
}

impl SecretBox {
    /// A box with `key` (64 hex digits or base64 of 32 bytes).
    pub fn new(key: &str) -> Result<Self, SecretError> {
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
        Ok(SecretBox { cipher })
    }

    /// A box with the key in `FLEET_SECRETS_KEY`.
    pub fn from_env() -> Result<Self, SecretError> {
        match std::env::var("FLEET_SECRETS_KEY") {
            Ok(k) if !k.trim().is_empty() => SecretBox::new(&k),
            _ => Err(SecretError::NoKey),
        }
    }

    /// The box of `FLEET_SECRETS_KEY` if it is set, `None` if it is not, and an error if
    /// it is set to something that is not a key: a typo must stop the start, not silently
    /// turn sealing off.
    pub fn from_env_if_set() -> Result<Option<Self>, SecretError> {
        match SecretBox::from_env() {
            Ok(b) => Ok(Some(b)),
            Err(SecretError::NoKey) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Seals `plaintext` for source `source_id`.
    pub fn seal(&self, source_id: &str, plaintext: &str) -> Result<String, SecretError> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = self
            .cipher
            .encrypt(&nonce, Payload { msg: plaintext.as_bytes(), aad: source_id.as_bytes() })
            .map_err(|_| SecretError::Corrupt)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(format!("v1:{}", base64::engine::general_purpose::STANDARD.encode(out)))
    }

    /// Opens a value [`SecretBox::seal`] made for `source_id`.
    pub fn open(&self, source_id: &str, stored: &str) -> Result<String, SecretError> {
        let body = stored.strip_prefix("v1:").ok_or(SecretError::Corrupt)?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(body).map_err(|_| SecretError::Corrupt)?;
        if bytes.len() < 12 + 16 {
            return Err(SecretError::Corrupt);
        }
        let (nonce, sealed) = bytes.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| SecretError::Corrupt)?;
        let plain = self
            .cipher
            .decrypt(&Nonce::from(nonce), Payload { msg: sealed, aad: source_id.as_bytes() })
            .map_err(|_| SecretError::Corrupt)?;
        String::from_utf8(plain).map_err(|_| SecretError::Corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn sealed_secrets_open_only_for_their_source_and_key() {
        let b = SecretBox::new(KEY).unwrap();
        let sealed = b.seal("src-1", "hunter2").unwrap();
        assert!(!sealed.contains("hunter2"));
        assert_ne!(sealed, b.seal("src-1", "hunter2").unwrap(), "fresh nonce each time");
        assert_eq!(b.open("src-1", &sealed).unwrap(), "hunter2");
        assert_eq!(b.open("src-2", &sealed), Err(SecretError::Corrupt));
        let other = SecretBox::new(&"ab".repeat(32)).unwrap();
        assert_eq!(other.open("src-1", &sealed), Err(SecretError::Corrupt));
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
    }
}
