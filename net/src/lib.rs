//! The SSRF guard shared by every client that calls an address a tenant gave (webhook
//! endpoints, calendar servers and provider APIs, vision endpoints): outgoing requests go
//! only to public unicast addresses, unless an allow-list in config permits a range
//! (tests allow loopback explicitly).
//!
//! Checked on the addresses a name resolves to (inside the HTTP client's resolver, so
//! the address checked is the address connected to: no DNS-rebinding window) and on IP
//! literals in URLs ([`Guard::check_url`]); one refused address refuses the whole name.
//! Clients that follow redirects check each hop's IP literal the same way.
//!
//! IPv6 is allowed only in global unicast `2000::/3`, minus its special
//! ranges (documentation, 6to4, Teredo, ORCHID, NAT64's local use); mapped and
//! translated IPv4 forms are refused whatever they embed.
//!
//! ## Layout
//!
//! The guard itself is in this file; also, one home for the rest of outbound HTTP:
//! - [`ClientOptions::client`] (feature `client`): the one builder of an HTTP client
//!   (timeouts, the guard's resolver and redirect checks, TLS), and [`tls`]: the one
//!   rustls configuration (ring, Mozilla's roots, extra CAs), which IMAP uses too;
//! - [`parse_retry_after`] / [`retry_after`]: `Retry-After` read the same way, under one
//!   cap policy, by every client;
//! - [`request_failure`] / [`error_chain`]: a failed request as every client reports it
//!   (the guard's refusal, a timeout, or the error with its causes, never its URL);
//! - [`redact_url`]: the one way a URL is shown in logs, errors, attempt rows and
//!   listings (user information, query string and fragment hidden).

#[cfg(feature = "client")]
mod client;
mod failure;
mod redact;
mod retry_after;
#[cfg(feature = "client")]
pub mod tls;
#[cfg(feature = "client")]
pub use client::{ClientError, ClientOptions};
pub use failure::{RequestFailure, error_chain, request_failure};
pub use redact::{redact_url, redact_urls_in};
pub use retry_after::{RETRY_AFTER_MAX, RETRY_AFTER_MIN, parse_retry_after, retry_after};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// An allowed range: address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a.parse().map_err(|_| format!("{s:?} is not an address or CIDR range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() { max } else { p.parse().map_err(|_| format!("{s:?}: bad prefix length"))? };
        if prefix > max {
            return Err(format!("{s:?}: prefix longer than {max}"));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - self.prefix) };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn v4_in(ip: Ipv4Addr, net: [u8; 4], prefix: u8) -> bool {
    Cidr { addr: IpAddr::V4(Ipv4Addr::from(net)), prefix }.contains(IpAddr::V4(ip))
}

fn v6_in(ip: Ipv6Addr, net: &str, prefix: u8) -> bool {
    let net: Ipv6Addr = net.parse().expect("static range");
    Cidr { addr: IpAddr::V6(net), prefix }.contains(IpAddr::V6(ip))
}

/// Whether `ip` is a public unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            const BLOCKED: &[([u8; 4], u8)] = &[
                ([0, 0, 0, 0], 8),       // "this network"
                ([10, 0, 0, 0], 8),      // private
                ([100, 64, 0, 0], 10),   // carrier-grade NAT
                ([127, 0, 0, 0], 8),     // loopback
                ([169, 254, 0, 0], 16),  // link-local, cloud metadata
                ([172, 16, 0, 0], 12),   // private
                ([192, 0, 0, 0], 24),    // IETF protocol assignments
                ([192, 0, 2, 0], 24),    // documentation
                ([192, 88, 99, 0], 24),  // 6to4 relay anycast
                ([192, 168, 0, 0], 16),  // private
                ([198, 18, 0, 0], 15),   // benchmarking
                ([198, 51, 100, 0], 24), // documentation
                ([203, 0, 113, 0], 24),  // documentation
                ([224, 0, 0, 0], 4),     // multicast
                ([240, 0, 0, 0], 4),     // reserved, broadcast
            ];
            !BLOCKED.iter().any(|(net, p)| v4_in(v4, *net, *p))
        }
        IpAddr::V6(v6) => {
            if !v6_in(v6, "2000::", 3) {
                return false; // loopback, unspecified, ULA, link-local, multicast, mapped, 64:ff9b::, 100::, 5f00::, ...
            }
            const SPECIAL: &[(&str, u8)] = &[
                ("2001::", 32),     // Teredo (embeds IPv4)
                ("2001:2::", 48),   // benchmarking
                ("2001:10::", 28),  // ORCHID
                ("2001:20::", 28),  // ORCHIDv2
                ("2001:db8::", 32), // documentation
                ("2002::", 16),     // 6to4 (embeds IPv4)
                ("3fff::", 20),     // documentation
            ];
            !SPECIAL.iter().any(|(net, p)| v6_in(v6, net, *p))
        }
    }
}

/// The guard: public addresses, plus what the allow-list permits.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    allow: Vec<Cidr>,
}

impl Guard {
    /// A guard allowing `allow` (e.g. `127.0.0.0/8`) besides public addresses.
    pub fn new(allow: Vec<Cidr>) -> Self {
        Guard { allow }
    }

    /// Whether a connection to `ip` is allowed.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            // An IPv4-mapped address is the IPv4 address for the allow-list's purposes.
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.allow.iter().any(|c| c.contains(ip)) || is_public(ip)
    }

    /// Refuses a URL whose host is an IP literal the guard does not permit (a name is
    /// checked by [`GuardedResolver`] when it resolves).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), Refused> {
        match ip_literal(url) {
            Some(ip) if !self.permits(ip) => Err(Refused(ip.to_string())),
            _ => Ok(()),
        }
    }
}

/// The IP address a URL names literally, if it does.
pub fn ip_literal(url: &reqwest::Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

/// The guard's refusal somewhere in an error's source chain (a request to a refused name
/// or redirect fails with a transport error that wraps it), as its message.
pub fn refusal_in(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(error);
    while let Some(c) = cause {
        // Matched by text too: the resolver's error may come back re-wrapped.
        if c.is::<Refused>() || c.to_string().starts_with("refused by the SSRF guard") {
            return Some(c.to_string());
        }
        cause = c.source();
    }
    None
}

/// A name refused by the guard, raised from [`GuardedResolver`] (it surfaces as a
/// connect error whose source chain holds it).
#[derive(Debug, thiserror::Error)]
#[error("refused by the SSRF guard: {0} resolves to a private or reserved address")]
pub struct Refused(pub String);

/// A `reqwest` resolver that returns only addresses the guard permits; one refused address
/// refuses the name. The client connects to exactly what it returns.
pub struct GuardedResolver(pub Arc<Guard>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.is_empty() {
                return Err(format!("{host} has no addresses").into());
            }
            if addrs.iter().any(|a| !guard.permits(a.ip())) {
                return Err(Box::new(Refused(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(s: &str) -> bool {
        is_public(s.parse().unwrap())
    }

    #[test]
    fn private_and_special_addresses_are_refused() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.31.255.255",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "192.0.0.8",
            "192.88.99.1",
            "198.18.0.1",
            "198.19.255.255",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:0.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::c0a8:0",
            "64:ff9b:1::1",
            "2002:a9fe:a9fe::1",
            "::127.0.0.1",
            "::5efe:a00:1",
            "febf:ffff::1",
            "fe80::1",
            "fd7a:115c:a1e0::1",
            "fd00:ec2::254",
            "5f00::1",
            "100::1:2:3:4",
            "3fff::1",
            "2001:db8::1",
            "2001::1",
            "ff02::1",
            "fc00::1",
        ] {
            assert!(!public(a), "{a} must be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for a in ["1.1.1.1", "8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e"] {
            assert!(public(a), "{a} is public");
        }
    }

    #[test]
    fn the_allow_list_opens_exactly_its_ranges() {
        let g = Guard::new(vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()]);
        assert!(g.permits("127.0.0.1".parse().unwrap()));
        assert!(g.permits("::1".parse().unwrap()));
        assert!(g.permits("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!g.permits("10.0.0.1".parse().unwrap()));
        assert!(!g.permits("169.254.169.254".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
    }
}
