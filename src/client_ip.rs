//! Who a request comes from, for per-client rate limits.
//!
//! The TCP peer is the client, unless the peer is a reverse proxy the operator trusts
//! (`trusted_proxies`). Then the client is found in `X-Forwarded-For`, read from the right:
//! each proxy appends the address it received the request from, so the rightmost entry that
//! is not itself a trusted proxy is the first address nobody we trust could have made up.
//! Entries further left were written by the client and are never believed. Without trusted
//! proxies the header is ignored entirely: anyone can send it.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderValue;
use ipnet::IpNet;

/// The reverse proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

/// The header proxies append client addresses to.
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";

impl TrustedProxies {
    /// Trust these ranges.
    pub fn new(ranges: Vec<IpNet>) -> Self {
        Self(ranges)
    }

    /// Parses one `trusted_proxies` entry: an address (`127.0.0.1`, `::1`) or a range in CIDR
    /// notation (`10.0.0.0/8`). The error completes "`<entry>` ...".
    pub fn parse_one(text: &str) -> Result<IpNet, &'static str> {
        let text = text.trim();
        text.parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map(|net| net.trunc())
            .map_err(|_| "is neither an IP address nor a CIDR range such as 10.0.0.0/8")
    }

    /// True when `ip` is one of the trusted proxies.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address, given the TCP peer and the request's `X-Forwarded-For` values
    /// in the order they appear.
    pub fn client_ip<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl DoubleEndedIterator<Item = &'a HeaderValue>,
    ) -> IpAddr {
        let mut client = peer.to_canonical();
        if self.0.is_empty() || !self.contains(client) {
            return client;
        }
        let hops = forwarded_for.rev().flat_map(|value| {
            let text = value.to_str().unwrap_or_default();
            text.rsplit(',').map(parse_hop).collect::<Vec<_>>()
        });
        for hop in hops {
            // An entry that does not parse ends the walk: whoever is to its left cannot be
            // told apart, and the last trusted hop is as close to the client as we can get.
            let Some(hop) = hop else { break };
            client = hop;
            if !self.contains(hop) {
                break;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `2001:db8::1`, or with a port
/// (`1.2.3.4:5678`, `[2001:db8::1]:5678`), as some proxies write them.
fn parse_hop(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    text.parse::<IpAddr>()
        .or_else(|_| text.parse::<SocketAddr>().map(|addr| addr.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// The key a per-IP limit counts under: the address for IPv4, the /64 network for IPv6
/// (one subscriber usually gets a whole /64, and could otherwise rotate through it).
pub fn rate_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::new(
            entries
                .iter()
                .map(|e| TrustedProxies::parse_one(e).unwrap())
                .collect(),
        )
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn client(proxies: &TrustedProxies, peer: &str, headers: &[&str]) -> IpAddr {
        let values: Vec<HeaderValue> = headers
            .iter()
            .map(|h| HeaderValue::from_str(h).unwrap())
            .collect();
        proxies.client_ip(ip(peer), values.iter())
    }

    #[test]
    fn without_trusted_proxies_the_header_is_ignored() {
        let none = TrustedProxies::default();
        assert_eq!(client(&none, "127.0.0.1", &["9.9.9.9"]), ip("127.0.0.1"));
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        let p = trusted(&["10.0.0.0/8"]);
        assert_eq!(client(&p, "192.0.2.7", &["9.9.9.9"]), ip("192.0.2.7"));
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let p = trusted(&["10.0.0.0/8", "127.0.0.1"]);
        // The client claimed 9.9.9.9; its real address 203.0.113.5 was appended by the
        // outer proxy 10.1.1.1, which the inner proxy appended before connecting to us.
        assert_eq!(
            client(&p, "127.0.0.1", &["9.9.9.9, 203.0.113.5", "10.1.1.1"]),
            ip("203.0.113.5")
        );
    }

    #[test]
    fn a_chain_of_only_trusted_hops_ends_at_the_leftmost() {
        let p = trusted(&["10.0.0.0/8"]);
        assert_eq!(client(&p, "10.0.0.1", &["10.0.0.2"]), ip("10.0.0.2"));
        assert_eq!(client(&p, "10.0.0.1", &[]), ip("10.0.0.1"));
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_trusted_hop() {
        let p = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            client(&p, "10.0.0.1", &["203.0.113.5, nonsense, 10.0.0.9"]),
            ip("10.0.0.9")
        );
    }

    #[test]
    fn ports_and_mapped_addresses_are_understood() {
        let p = trusted(&["127.0.0.1"]);
        assert_eq!(
            client(&p, "::ffff:127.0.0.1", &["[2001:db8::1]:4711"]),
            ip("2001:db8::1")
        );
        assert_eq!(client(&p, "127.0.0.1", &["192.0.2.1:80"]), ip("192.0.2.1"));
    }

    #[test]
    fn entries_parse_as_addresses_or_ranges() {
        assert!(TrustedProxies::parse_one("::1").is_ok());
        assert!(TrustedProxies::parse_one("10.0.0.0/8").is_ok());
        assert!(TrustedProxies::parse_one("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse_one("localhost").is_err());
        // Host bits are dropped, so 10.1.2.3/8 means 10.0.0.0/8.
        assert!(trusted(&["10.1.2.3/8"]).contains(ip("10.200.0.1")));
    }

    #[test]
    fn ipv6_clients_count_per_64() {
        assert_eq!(rate_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(rate_key(ip("192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(rate_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }
}
