//! What a comms source's account is, as the API registers it (no protocol code here).

use serde::{Deserialize, Serialize};

/// How a sync authenticates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// `LOGIN user password`.
    #[default]
    Login,
    /// `AUTHENTICATE XOAUTH2` with an OAuth2 bearer token (Gmail, Microsoft 365).
    Xoauth2,
}
