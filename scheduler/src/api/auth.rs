//! API keys: `fk_<id>_<secret>`. Only a SHA-256 of the secret is stored; a presented
//! secret is hashed and compared with the stored hash in constant time. Keys are
//! scoped to a tenant and carry roles.

use super::ApiState;
use super::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Tenant of the key.
    pub tenant: String,
    /// Key id (never the secret).
    pub key_id: String,
    /// Roles, e.g. `enqueue`, `admin`.
    pub roles: Vec<String>,
}

impl Caller {
    pub(crate) fn require(&self, role: &str) -> Result<(), ApiError> {
        if self.roles.iter().any(|r| r == role || r == "admin") {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("this key lacks the {role:?} role")))
        }
    }
}

/// Creates a key for `tenant` and returns it; it is shown once and never stored. The
/// tenant name must pass `fleet_jobs::tenant::validate_tenant` (a malformed one is
/// refused as a protocol error before anything is written).
pub async fn create_api_key(
    db: &sqlx::PgPool,
    tenant: &str,
    name: &str,
    roles: &[&str],
) -> Result<String, sqlx::Error> {
    fleet_jobs::tenant::validate_tenant(tenant).map_err(sqlx::Error::Protocol)?;
    let id = hex::encode(rand::random::<[u8; 6]>());
    let secret = hex::encode(rand::random::<[u8; 24]>());
    let hash = Sha256::digest(secret.as_bytes()).to_vec();
    let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
    sqlx::query("INSERT INTO api_keys (id, tenant, name, secret_sha256, roles) VALUES ($1, $2, $3, $4, $5)")
        .bind(&id)
        .bind(tenant)
        .bind(name)
        .bind(hash)
        .bind(roles)
        .execute(db)
        .await?;
    Ok(format!("fk_{id}_{secret}"))
}

/// Revokes a key by id.
pub async fn revoke_api_key(db: &sqlx::PgPool, id: &str) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
        .bind(id)
        .execute(db)
        .await?;
    Ok(r.rows_affected() == 1)
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <api key>"))?;
        let token =
            bearer_token(header).ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer <api key>"))?;
        let (id, secret) = token
            .strip_prefix("fk_")
            .and_then(|rest| rest.split_once('_'))
            .ok_or_else(|| ApiError::unauthorized("malformed API key"))?;
        let row: Option<(String, Vec<u8>, Vec<String>)> =
            sqlx::query_as("SELECT tenant, secret_sha256, roles FROM api_keys WHERE id = $1 AND revoked_at IS NULL")
                .bind(id)
                .fetch_optional(&state.db)
                .await
                .map_err(|e| ApiError::unavailable("api key lookup", e))?;
        // Hash even when the id is unknown, so both paths take the same time.
        let presented = Sha256::digest(secret.as_bytes());
        let (tenant, stored, roles) = row.unwrap_or_else(|| (String::new(), vec![0u8; 32], Vec::new()));
        let matches: bool = presented[..].ct_eq(stored.as_slice()).into();
        if !matches || tenant.is_empty() {
            return Err(ApiError::unauthorized("invalid or revoked API key"));
        }
        // Counted once the key is proven: a caller cannot spend another key's rate.
        state.limits.check_key(id)?;
        Ok(Caller { tenant, key_id: id.to_owned(), roles })
    }
}

/// The credentials of `Authorization: Bearer <token>`; the scheme is case-insensitive
/// (RFC 7235 §2.1) and may be followed by more than one space.
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, rest) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_matches(' ');
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for h in ["Bearer fk_a_b", "bearer fk_a_b", "BEARER fk_a_b", "bEaReR  fk_a_b"] {
            assert_eq!(bearer_token(h), Some("fk_a_b"), "{h}");
        }
        for h in ["Basic fk_a_b", "Bearerfk_a_b", "Bearer ", "fk_a_b"] {
            assert_eq!(bearer_token(h), None, "{h}");
        }
    }

    #[test]
    fn hashes_compare_in_constant_time_and_exactly() {
        let a = Sha256::digest(b"secret");
        let b = Sha256::digest(b"secret");
        let c = Sha256::digest(b"secreT");
        assert!(bool::from(a[..].ct_eq(&b[..])));
        assert!(!bool::from(a[..].ct_eq(&c[..])));
        assert!(!bool::from(a[..].ct_eq(&a[..31])));
    }
}
