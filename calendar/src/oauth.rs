//! OAuth 2.0 access-token refresh for Google and Microsoft Graph sources: the refresh
//! itself lives in [`fleet_accounts::oauth`] (mailboxes use it too); here its errors
//! become [`ProviderError`]s, so a refresh failure is recorded and retried (or not) like
//! any other provider failure.

pub use fleet_accounts::oauth::{OAuthCredentials, OAuthError, REFRESH_MARGIN_SECS};

use crate::provider::ProviderError;

impl From<OAuthError> for ProviderError {
    fn from(e: OAuthError) -> Self {
        match e {
            OAuthError::Url(_) => ProviderError::Url(e.to_string()),
            OAuthError::Refused(why) => ProviderError::Refused(why),
            OAuthError::Transport(why) => ProviderError::Transport(why),
            OAuthError::TooLarge(cap) => ProviderError::TooLarge(cap),
            OAuthError::RateLimited { status, retry_after } => {
                ProviderError::RateLimited { status, retry_after: Some(retry_after) }
            }
            OAuthError::Unavailable(status) => ProviderError::Status(status, "token endpoint".into()),
            OAuthError::BadResponse(why) => ProviderError::Json(why),
            // Only re-authorising helps: permanent, like a calendar the account cannot see.
            OAuthError::Rejected(why) => ProviderError::Forbidden(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn refresh_failures_keep_their_retry_decision_as_provider_errors() {
        let rejected = ProviderError::from(OAuthError::Rejected("invalid_grant: re-authorise the account".into()));
        assert!(!rejected.is_transient());
        assert!(rejected.to_string().contains("re-authorise"), "{rejected}");
        let limited = ProviderError::from(OAuthError::RateLimited {
            status: StatusCode::TOO_MANY_REQUESTS,
            retry_after: std::time::Duration::from_secs(30),
        });
        assert!(limited.is_transient());
        assert_eq!(limited.retry_after(), Some(std::time::Duration::from_secs(30)));
        assert!(ProviderError::from(OAuthError::Unavailable(StatusCode::BAD_GATEWAY)).is_transient());
        assert!(ProviderError::from(OAuthError::Transport("timed out".into())).is_transient());
        assert!(!ProviderError::from(OAuthError::BadResponse("token response: eof".into())).is_transient());
    }
}
