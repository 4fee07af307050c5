//! A failed request as every outbound client of Fleet reports it: the SSRF guard's refusal
//! (permanent unless the allow-list changes), a timeout, or the error with its causes (the
//! part operators need: "connection refused", "certificate not valid for name"), never
//! with the URL, whose query string or user information may hold a credential.

use crate::{redact_urls_in, refusal_in};

/// What a request that got no response came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestFailure {
    /// The guard refused the name or a redirect target: its message.
    Refused(String),
    /// The request's timeout ran out: the error and its causes.
    Timeout(String),
    /// Anything else (connect, TLS, a broken body): the error and its causes.
    Other(String),
}

impl RequestFailure {
    /// The text to record or log, whatever the failure.
    pub fn text(&self) -> &str {
        match self {
            RequestFailure::Refused(t) | RequestFailure::Timeout(t) | RequestFailure::Other(t) => t,
        }
    }
}

impl std::fmt::Display for RequestFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text())
    }
}

/// `e` classified, its URL removed and any URL left in its causes redacted.
pub fn request_failure(e: reqwest::Error) -> RequestFailure {
    if let Some(refusal) = refusal_in(&e) {
        return RequestFailure::Refused(refusal);
    }
    let timeout = e.is_timeout();
    let text = error_chain(&e.without_url());
    if timeout { RequestFailure::Timeout(text) } else { RequestFailure::Other(text) }
}

/// An error and its causes, joined by ": ", with any URL in them redacted.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    redact_urls_in(&text)
}

// The client feature: a client is needed to make a request fail.
#[cfg(all(test, feature = "client"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_failure_names_its_cause_and_not_its_url() {
        // Port 9 (discard) on loopback: nothing listens, the connection is refused.
        let e = crate::ClientOptions::default()
            .client(0)
            .unwrap()
            .get("http://127.0.0.1:9/path?token=hunter2")
            .send()
            .await
            .unwrap_err();
        let failure = request_failure(e);
        assert!(matches!(failure, RequestFailure::Other(_)), "{failure:?}");
        assert!(failure.text().contains(": "), "the causes are kept: {failure}");
        assert!(!failure.text().contains("hunter2") && !failure.text().contains("/path"), "{failure}");
    }
}
