//! The HTTP client of the vision providers, behind the SSRF guard (built by
//! [`fleet_net::ClientOptions::client`]).
//!
//! The guard checks every address a host name resolves to inside the client's
//! resolver (so the address checked is the one connected to), and IP literals in
//! URLs before sending (the resolver never sees those). Redirects are not followed,
//! proxies from the environment are not used, and bodies are read up to a cap.

use super::SkipReason;
use fleet_net::{Cidr, ClientOptions, Guard, Refused, RequestFailure};
use std::sync::Arc;
use std::time::Duration;

/// A client whose every request passes the SSRF guard.
pub(super) struct GuardedClient {
    http: reqwest::Client,
    guard: Arc<Guard>,
    max_body: usize,
}

/// A 2xx answer's body.
pub(super) struct Body(pub Vec<u8>);

impl GuardedClient {
    pub(super) fn new(allow: &[String], connect_timeout_ms: u64, max_body: usize) -> Result<Self, String> {
        let allow = allow.iter().map(|c| c.parse()).collect::<Result<Vec<Cidr>, String>>()?;
        let guard = Arc::new(Guard::new(allow));
        // Every request sets its own timeout (the provider's, within the call's deadline).
        let options = ClientOptions {
            connect_timeout: Duration::from_millis(connect_timeout_ms),
            guard: Some(guard.clone()),
            user_agent: Some(concat!("Fleet-Vision/", env!("CARGO_PKG_VERSION"))),
            ..ClientOptions::default()
        };
        let http = options.client(0).map_err(|e| e.to_string())?;
        Ok(GuardedClient { http, guard, max_body })
    }

    /// A POST to `url` (checked by the guard when it is an IP literal).
    pub(super) fn post(&self, url: reqwest::Url) -> Result<reqwest::RequestBuilder, SkipReason> {
        if let Err(Refused(ip)) = self.guard.check_url(&url) {
            return Err(SkipReason::Refused { message: format!("{ip} is a private or reserved address") });
        }
        Ok(self.http.post(url))
    }

    /// Sends `request` and reads a 2xx body (up to the cap); anything else becomes
    /// the reason to skip the provider. `error_message` pulls a message out of an
    /// error body.
    pub(super) async fn send(
        &self,
        request: reqwest::RequestBuilder,
        timeout: Duration,
        error_message: fn(&[u8]) -> Option<String>,
    ) -> Result<Body, SkipReason> {
        let resp = request.timeout(timeout).send().await.map_err(|e| transport(e, timeout))?;
        let status = resp.status().as_u16();
        let retry_after = fleet_net::retry_after(resp.headers());
        let body = self.read_capped(resp, timeout).await;
        match status {
            200..=299 => body.map(Body),
            429 => Err(SkipReason::RateLimited { retry_after }),
            500..=599 => Err(SkipReason::ServerError { status }),
            _ => {
                let message = body.ok().as_deref().and_then(error_message).unwrap_or_default();
                Err(SkipReason::Rejected { status, message: message.chars().take(300).collect() })
            }
        }
    }

    async fn read_capped(&self, mut resp: reqwest::Response, timeout: Duration) -> Result<Vec<u8>, SkipReason> {
        if resp.content_length().is_some_and(|n| n > self.max_body as u64) {
            return Err(too_large(self.max_body));
        }
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| transport(e, timeout))? {
            if out.len() + chunk.len() > self.max_body {
                return Err(too_large(self.max_body));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

fn too_large(cap: usize) -> SkipReason {
    SkipReason::InvalidResponse { message: format!("response larger than {cap} bytes") }
}

/// A transport error as a skip reason, without the URL: the guard's refusal, or
/// the chain of causes of a connection failure.
fn transport(e: reqwest::Error, timeout: Duration) -> SkipReason {
    match fleet_net::request_failure(e) {
        RequestFailure::Refused(message) => SkipReason::Refused { message },
        RequestFailure::Timeout(_) => SkipReason::Timeout { timeout_ms: timeout.as_millis() as u64 },
        RequestFailure::Other(message) => SkipReason::Connection { message },
    }
}
