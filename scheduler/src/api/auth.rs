//! API keys: `fk_<id>_<secret>`. Only a SHA-256 of the secret is stored; a presented
//! secret is hashed and compared with the stored hash in constant time. Keys are
//! scoped to a tenant and carry [`Role`]s (stored by name in the `roles TEXT[]` column).

use super::ApiState;
use super::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What an API key may do. The wire names (`enqueue`, `operator`, `admin`) are the ones
/// stored in `api_keys.roles`, given to `create-api-key --role` and named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A tenant's application: enqueue and read its own jobs, batches, sources.
    Enqueue,
    /// Fleet's operators: read every tenant's queues, dead letters, schedules.
    Operator,
    /// Fleet's operators, also allowed to change things (replay, pause, limits); it
    /// grants every other role.
    Admin,
}

impl Role {
    /// Every role, in the order errors list them.
    pub const ALL: [Role; 3] = [Role::Enqueue, Role::Operator, Role::Admin];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Enqueue => "enqueue",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Whether a key holding `self` may do what needs `needed` (`admin` may do anything).
    pub fn grants(self, needed: Role) -> bool {
        self == needed || self == Role::Admin
    }

    /// The roles of a stored key. A name this scheduler does not know (written by a newer
    /// version, or by hand) grants nothing: it is left out, with a warning naming the key.
    pub fn from_stored(key_id: &str, names: &[String]) -> Vec<Role> {
        names
            .iter()
            .filter_map(|name| match name.parse() {
                Ok(role) => Some(role),
                Err(e) => {
                    tracing::warn!(key = %key_id, error = %e, "API key has a role this scheduler does not know; it grants nothing");
                    None
                }
            })
            .collect()
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is none of [`Role::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected one of enqueue, operator, admin")]
pub struct UnknownRole(pub String);

impl std::str::FromStr for Role {
    type Err = UnknownRole;

    /// The exact wire name (no case folding: the names are stored and compared as they are).
    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Tenant of the key.
    pub tenant: String,
    /// Key id (never the secret).
    pub key_id: String,
    /// The key's roles (unknown stored names left out).
    pub roles: Vec<Role>,
}

impl Caller {
    /// Refuses (403) a caller whose key holds no role that grants `role`.
    pub(crate) fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.roles.iter().any(|r| r.grants(role)) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("this key lacks the {:?} role", role.as_str())))
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
    roles: &[Role],
) -> Result<String, sqlx::Error> {
    fleet_jobs::tenant::validate_tenant(tenant).map_err(sqlx::Error::Protocol)?;
    let id = hex::encode(rand::random::<[u8; 6]>());
    let secret = hex::encode(rand::random::<[u8; 24]>());
    let hash = Sha256::digest(secret.as_bytes()).to_vec();
    let roles: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
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
        // Already authenticated by a layer in front of the route (the idempotency layer):
        // the key is looked up and its rate counted once per request.
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
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
        let roles = Role::from_stored(id, &roles);
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
    fn roles_parse_from_their_wire_names_and_nothing_else() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(role.to_string(), role.as_str());
            let json = serde_json::to_string(&role).unwrap();
            assert_eq!(json, format!("\"{role}\""));
            assert_eq!(serde_json::from_str::<Role>(&json).unwrap(), role);
        }
        assert_eq!(["enqueue", "operator", "admin"], Role::ALL.map(Role::as_str), "the stored names never change");
        for bad in ["", "Admin", "ADMIN", " admin", "admin ", "enqueu", "operators", "root"] {
            let e = bad.parse::<Role>().unwrap_err();
            assert_eq!(e, UnknownRole(bad.to_owned()));
            let msg = e.to_string();
            assert!(msg.contains(&format!("{bad:?}")), "{msg}");
            for role in Role::ALL {
                assert!(msg.contains(role.as_str()), "{msg}");
            }
        }
        assert!(serde_json::from_str::<Role>("\"superuser\"").is_err());
    }

    #[test]
    fn admin_grants_every_role_and_the_others_only_their_own() {
        for needed in Role::ALL {
            assert!(Role::Admin.grants(needed));
        }
        assert!(Role::Operator.grants(Role::Operator));
        assert!(!Role::Operator.grants(Role::Enqueue) && !Role::Operator.grants(Role::Admin));
        assert!(!Role::Enqueue.grants(Role::Operator) && !Role::Enqueue.grants(Role::Admin));
    }

    #[test]
    fn unknown_stored_roles_grant_nothing() {
        let stored = ["enqueue".to_owned(), "superuser".to_owned(), "Admin".to_owned()];
        assert_eq!(Role::from_stored("k1", &stored), vec![Role::Enqueue]);
        let caller = Caller { tenant: "acme".into(), key_id: "k1".into(), roles: Role::from_stored("k1", &stored) };
        assert!(caller.require(Role::Enqueue).is_ok());
        assert!(caller.require(Role::Operator).is_err());
        assert!(caller.require(Role::Admin).is_err());
        let nothing = Caller { roles: Role::from_stored("k2", &["root".to_owned()]), ..caller.clone() };
        assert!(nothing.roles.is_empty());
        assert!(nothing.require(Role::Enqueue).is_err());
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
