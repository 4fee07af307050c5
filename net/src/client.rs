//! The one way Fleet builds an outbound HTTP client ([`ClientOptions::client`]): a
//! whole-request timeout, a connect timeout, the SSRF guard's resolver and redirect
//! checks (when a guard is given), the TLS configuration of [`crate::tls`] and a fixed
//! redirect budget. Kinds never assemble a `reqwest::ClientBuilder` by hand, so a client
//! cannot be built without the guard by leaving a line out.

use crate::Guard;
use crate::tls::{CertificateDer, client_config};
use std::sync::Arc;
use std::time::Duration;

/// The limits and the guard of an outbound HTTP client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Whole-request timeout (connect, headers and body); a request's own timeout, when
    /// it sets one, replaces it.
    pub timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Largest response body read, in bytes (each reader enforces it as it reads).
    pub max_response_bytes: usize,
    /// The SSRF guard every request passes (names when they resolve, redirect targets
    /// before they are followed; IP literals in the first URL are the caller's to check
    /// with [`Guard::check_url`]); `None`: no guard (operator-configured endpoints such
    /// as object storage, tests).
    pub guard: Option<Arc<Guard>>,
    /// CA certificates trusted besides Mozilla's roots (see [`crate::tls::read_ca_file`]).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// The `User-Agent` header; `None`: none is sent.
    pub user_agent: Option<&'static str>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_response_bytes: 32 * 1024 * 1024,
            guard: None,
            extra_roots: Vec::new(),
            user_agent: None,
        }
    }
}

/// The client could not be built (a bad extra CA certificate, a TLS backend that will
/// not start): nothing can be sent with it, so the caller fails rather than falling back
/// to another client.
#[derive(Debug, thiserror::Error)]
#[error("building the HTTP client: {0}")]
pub struct ClientError(String);

impl ClientOptions {
    /// A client with these options that follows up to `redirects` redirects (0: none),
    /// each to a target the guard permits. Redirects carry the request's credentials
    /// along, so clients that send a token or a signature pass 0.
    ///
    /// With a guard, names resolve through [`crate::GuardedResolver`] and proxies from
    /// the environment are not used (a proxy would resolve the name where the guard
    /// cannot see it); without one, the environment's proxies apply.
    pub fn client(&self, redirects: usize) -> Result<reqwest::Client, ClientError> {
        let mut tls = client_config(&self.extra_roots).map_err(|e| ClientError(e.to_string()))?;
        // What reqwest offers by default with HTTP/2 enabled.
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut builder = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .tls_backend_preconfigured(tls);
        if let Some(agent) = self.user_agent {
            builder = builder.user_agent(agent);
        }
        let builder = match &self.guard {
            Some(guard) => guarded(guard, builder, redirects),
            None if redirects == 0 => builder.redirect(reqwest::redirect::Policy::none()),
            None => builder.redirect(reqwest::redirect::Policy::limited(redirects)),
        };
        builder.build().map_err(|e| ClientError(e.without_url().to_string()))
    }
}

/// `builder` behind `guard`: names resolve through [`crate::GuardedResolver`], proxies
/// from the environment are not used, and up to `max_redirects` redirects are followed,
/// each to a target whose IP literal the guard permits (0: none followed).
fn guarded(guard: &Arc<Guard>, builder: reqwest::ClientBuilder, max_redirects: usize) -> reqwest::ClientBuilder {
    let policy = if max_redirects == 0 {
        reqwest::redirect::Policy::none()
    } else {
        let guard = guard.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > max_redirects {
                attempt.error("too many redirects")
            } else if let Err(refused) = guard.check_url(attempt.url()) {
                attempt.error(refused)
            } else {
                attempt.follow()
            }
        })
    };
    builder.dns_resolver(Arc::new(crate::GuardedResolver(guard.clone()))).redirect(policy).no_proxy()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A local server answering every request with a redirect to `target`.
    async fn redirecting_to(target: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let answer = format!("HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\n\r\n");
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        format!("http://{addr}/")
    }

    #[tokio::test]
    async fn a_guarded_client_refuses_private_names_and_redirects() {
        let url = redirecting_to("http://10.0.0.1/").await;
        let loopback = Arc::new(Guard::new(vec!["127.0.0.0/8".parse().unwrap()]));
        let options = ClientOptions { guard: Some(loopback), ..ClientOptions::default() };

        // No redirects followed: the 302 is the answer.
        let response = options.client(0).unwrap().get(&url).send().await.unwrap();
        assert_eq!(response.status(), 302);

        // Followed, but the target is a private literal: refused by the guard.
        let e = options.client(3).unwrap().get(&url).send().await.unwrap_err();
        assert!(crate::refusal_in(&e).is_some(), "{e:?}");

        // Without loopback in the allow-list the name itself is refused at resolution.
        let strict = ClientOptions { guard: Some(Arc::new(Guard::default())), ..ClientOptions::default() };
        let e = strict.client(0).unwrap().get(url.replace("127.0.0.1", "localhost")).send().await.unwrap_err();
        assert!(crate::refusal_in(&e).is_some(), "{e:?}");
    }

    #[test]
    fn a_bad_extra_root_fails_the_build_instead_of_being_skipped() {
        let options =
            ClientOptions { extra_roots: vec![CertificateDer::from(vec![1, 2, 3])], ..ClientOptions::default() };
        let e = options.client(0).unwrap_err();
        assert!(e.to_string().starts_with("building the HTTP client: "), "{e}");
    }
}
