//! Proving an origin: CallHome fetches `<origin>/.well-known/callhome-challenge/<token>` and
//! expects the token back, which only whoever serves the origin can arrange.
//!
//! The fetch is the one request CallHome makes to an address someone else chose, so it is
//! fenced in: the host is resolved here and every address checked (no loopback, private,
//! link-local, shared, documentation or multicast ranges unless [`Policy::allow_private`]),
//! then the connection is pinned to the checked address, so a second DNS answer cannot point
//! it elsewhere (DNS rebinding). Redirects are followed by hand, only within the origin and at
//! most [`Policy::max_redirects`] times; the whole fetch (DNS included) has [`Policy::timeout`]
//! and reads at most [`Policy::max_bytes`] of body. Nothing here knows about apps or HTTP
//! routes; `api` calls [`prove`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::header;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rand::TryRng as _;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::origin::Origin;

/// Where the token is served, below the origin.
pub const PATH: &str = "/.well-known/callhome-challenge/";

const USER_AGENT: &str = concat!(
    "CallHome/",
    env!("CARGO_PKG_VERSION"),
    " (origin challenge)"
);

/// How a challenge is fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The whole fetch, DNS, connect, redirects and body included.
    pub timeout: Duration,
    /// The most body read; a longer answer fails as `challenge_too_large`.
    pub max_bytes: usize,
    /// Fetch from loopback and private addresses too (tests, intranets).
    pub allow_private: bool,
    /// Redirects followed within the origin.
    pub max_redirects: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            max_bytes: 1024,
            allow_private: false,
            max_redirects: 2,
        }
    }
}

/// Why an origin was not proven. Each variant is one stable API code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    /// DNS failed, or the connection or TLS handshake did.
    #[error("{origin}: the challenge could not be fetched: {why}")]
    Unreachable {
        /// The origin.
        origin: String,
        /// What failed.
        why: String,
    },
    /// The answer was not a 2xx (after same-origin redirects).
    #[error("{origin}: the challenge URL answered {status}, not 200 with the token")]
    Missing {
        /// The origin.
        origin: String,
        /// The status it answered.
        status: u16,
    },
    /// The body is not the token.
    #[error("{origin}: the challenge URL answered, but not with the token")]
    Mismatch {
        /// The origin.
        origin: String,
    },
    /// The body is longer than [`Policy::max_bytes`].
    #[error("{origin}: the challenge answer is longer than {max_bytes} bytes")]
    TooLarge {
        /// The origin.
        origin: String,
        /// The limit.
        max_bytes: usize,
    },
    /// The fetch took longer than [`Policy::timeout`].
    #[error("{origin}: the challenge took longer than {timeout:?}")]
    Timeout {
        /// The origin.
        origin: String,
        /// The limit.
        timeout: Duration,
    },
    /// A redirect to another origin, or more than [`Policy::max_redirects`].
    #[error(
        "{origin}: the challenge redirects {why}; only redirects within the origin are followed"
    )]
    Redirect {
        /// The origin.
        origin: String,
        /// Where, or how often.
        why: String,
    },
    /// The host is or resolves to an address that is not public.
    #[error(
        "{origin}: {address} is not a public address; challenges are fetched from public addresses only"
    )]
    PrivateAddress {
        /// The origin.
        origin: String,
        /// The refused address.
        address: IpAddr,
    },
}

impl ChallengeError {
    /// The stable code of each error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } => "challenge_unreachable",
            Self::Missing { .. } => "challenge_missing",
            Self::Mismatch { .. } => "challenge_mismatch",
            Self::TooLarge { .. } => "challenge_too_large",
            Self::Timeout { .. } => "challenge_timeout",
            Self::Redirect { .. } => "challenge_redirect",
            Self::PrivateAddress { .. } => "challenge_private_address",
        }
    }
}

/// A fresh token: 24 random bytes from the system (192 bits), as 32 characters of base64url,
/// so it is a path segment as it stands. `None` when the system has no entropy to give.
pub fn new_token() -> Option<String> {
    let mut bytes = [0u8; 24];
    rand::rngs::SysRng.try_fill_bytes(&mut bytes).ok()?;
    Some(URL_SAFE_NO_PAD.encode(bytes))
}

/// The URL the app serves `token` at.
pub fn url(origin: &Origin, token: &str) -> String {
    format!("{origin}{PATH}{token}")
}

/// True when the answer `body` is `token`: the token itself, trailing whitespace (a newline
/// from `echo`) aside.
pub fn matches(body: &[u8], token: &str) -> bool {
    body.trim_ascii_end() == token.as_bytes()
}

/// Fetches `origin`'s challenge and checks that it answers `token`.
pub async fn prove(origin: &Origin, token: &str, policy: &Policy) -> Result<(), ChallengeError> {
    let timeout = || ChallengeError::Timeout {
        origin: origin.to_string(),
        timeout: policy.timeout,
    };
    tokio::time::timeout(policy.timeout, fetch(origin, token, policy))
        .await
        .map_err(|_| timeout())?
}

async fn fetch(origin: &Origin, token: &str, policy: &Policy) -> Result<(), ChallengeError> {
    let name = origin.to_string();
    let unreachable = |why: String| ChallengeError::Unreachable {
        origin: name.clone(),
        why,
    };
    let start = url::Url::parse(&url(origin, token)).map_err(|e| unreachable(e.to_string()))?;
    let port = start
        .port_or_known_default()
        .ok_or_else(|| unreachable("no port".into()))?;
    // Resolved and checked once: every request of this fetch (redirects stay within the
    // origin) connects to this address, never to another answer the resolver might give.
    let address = match start.host().ok_or_else(|| unreachable("no host".into()))? {
        url::Host::Ipv4(ip) => check(origin, SocketAddr::new(IpAddr::V4(ip), port), policy)?,
        url::Host::Ipv6(ip) => check(origin, SocketAddr::new(IpAddr::V6(ip), port), policy)?,
        url::Host::Domain(domain) => resolve(origin, domain, port, policy).await?,
    };
    let mut at = start;
    let mut redirects = 0;
    loop {
        let (response, _connection) = get(origin, &at, address).await?;
        let status = response.status();
        if status.is_redirection() {
            let next = response
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| at.join(l).ok())
                .ok_or_else(|| ChallengeError::Missing {
                    origin: name.clone(),
                    status: status.as_u16(),
                })?;
            if next.origin() != at.origin() {
                return Err(ChallengeError::Redirect {
                    origin: name,
                    why: format!("to {}", next.origin().ascii_serialization()),
                });
            }
            redirects += 1;
            if redirects > policy.max_redirects {
                return Err(ChallengeError::Redirect {
                    origin: name,
                    why: format!("more than {} times", policy.max_redirects),
                });
            }
            at = next;
            continue;
        }
        if !status.is_success() {
            return Err(ChallengeError::Missing {
                origin: name,
                status: status.as_u16(),
            });
        }
        let body = read_bounded(response, origin, policy).await?;
        return if matches(&body, token) {
            Ok(())
        } else {
            Err(ChallengeError::Mismatch { origin: name })
        };
    }
}

/// Aborts the connection's task when the fetch ends, however it ends (a timeout included).
struct Connection(tokio::task::JoinHandle<()>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One `GET` of `at` on a new connection to `address` (TLS for https), the connection
/// alive as long as the response.
async fn get(
    origin: &Origin,
    at: &url::Url,
    address: SocketAddr,
) -> Result<(Response<Incoming>, Connection), ChallengeError> {
    let unreachable = |why: String| ChallengeError::Unreachable {
        origin: origin.to_string(),
        why,
    };
    let tcp = TcpStream::connect(address)
        .await
        .map_err(|e| unreachable(format!("connect to {address}: {e}")))?;
    let host = at.host_str().unwrap_or_default();
    let authority = match at.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    let target = match at.query() {
        Some(query) => format!("{}?{query}", at.path()),
        None => at.path().to_owned(),
    };
    let request = Request::get(target)
        .header(header::HOST, authority)
        .header(header::USER_AGENT, USER_AGENT)
        .header(header::ACCEPT, "text/plain, */*")
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| unreachable(e.to_string()))?;
    let handshake = |e: hyper::Error| unreachable(format!("HTTP: {e}"));
    let (mut sender, connection) = if at.scheme() == "https" {
        let server_name = match at.host() {
            Some(url::Host::Ipv4(ip)) => ServerName::IpAddress(IpAddr::V4(ip).into()),
            Some(url::Host::Ipv6(ip)) => ServerName::IpAddress(IpAddr::V6(ip).into()),
            _ => ServerName::try_from(host.to_owned())
                .map_err(|e| unreachable(format!("TLS: {e}")))?,
        };
        let tls = TlsConnector::from(tls()?)
            .connect(server_name, tcp)
            .await
            .map_err(|e| unreachable(format!("TLS: {e}")))?;
        let (sender, connection) = http1::handshake(TokioIo::new(tls))
            .await
            .map_err(handshake)?;
        (
            sender,
            Connection(tokio::spawn(async move { drop(connection.await) })),
        )
    } else {
        let (sender, connection) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(handshake)?;
        (
            sender,
            Connection(tokio::spawn(async move { drop(connection.await) })),
        )
    };
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| unreachable(format!("HTTP: {e}")))?;
    Ok((response, connection))
}

/// The body, refused as soon as it passes `max_bytes` (by its `Content-Length` or by what
/// arrived), so a huge answer is never read whole.
async fn read_bounded(
    response: Response<Incoming>,
    origin: &Origin,
    policy: &Policy,
) -> Result<Vec<u8>, ChallengeError> {
    let too_large = || ChallengeError::TooLarge {
        origin: origin.to_string(),
        max_bytes: policy.max_bytes,
    };
    let declared = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > policy.max_bytes as u64) {
        return Err(too_large());
    }
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ChallengeError::Unreachable {
            origin: origin.to_string(),
            why: format!("HTTP: {e}"),
        })?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > policy.max_bytes {
                return Err(too_large());
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

/// The first public address `domain` resolves to (any address, with `allow_private`).
async fn resolve(
    origin: &Origin,
    domain: &str,
    port: u16,
    policy: &Policy,
) -> Result<SocketAddr, ChallengeError> {
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((domain, port))
        .await
        .map_err(|e| ChallengeError::Unreachable {
            origin: origin.to_string(),
            why: format!("DNS: {e}"),
        })?
        .collect();
    let mut refused = None;
    for address in addresses {
        match check(origin, address, policy) {
            Ok(address) => return Ok(address),
            Err(e) => refused = refused.or(Some(e)),
        }
    }
    Err(refused.unwrap_or_else(|| ChallengeError::Unreachable {
        origin: origin.to_string(),
        why: "DNS: no addresses".into(),
    }))
}

fn check(
    origin: &Origin,
    address: SocketAddr,
    policy: &Policy,
) -> Result<SocketAddr, ChallengeError> {
    if policy.allow_private || is_public(address.ip()) {
        Ok(address)
    } else {
        Err(ChallengeError::PrivateAddress {
            origin: origin.to_string(),
            address: address.ip(),
        })
    }
}

/// The TLS settings of every fetch: rustls on ring, the system's roots.
fn tls() -> Result<Arc<rustls::ClientConfig>, ChallengeError> {
    static TLS: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    TLS.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(rustls_platform_verifier::BuilderVerifierExt::with_platform_verifier)
            .map(|builder| Arc::new(builder.with_no_client_auth()))
            .map_err(|e| e.to_string())
    })
    .clone()
    .map_err(|why| ChallengeError::Unreachable {
        origin: String::new(),
        why: format!("no TLS settings: {why}"),
    })
}

/// True for an address anyone on the internet could reach: not loopback, private (RFC 1918,
/// unique local), link-local, shared (CGNAT), unspecified, documentation, benchmarking,
/// reserved or multicast. An IPv6 address that embeds an IPv4 one (mapped, 6to4) is judged by
/// the IPv4 address; other IPv6 addresses must be global unicast (`2000::/3`).
pub fn is_public(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let refused = a == 0 // "this network"
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // TEST-NET-1
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 192 && b == 168)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
        || a >= 224; // multicast, reserved, broadcast
    !refused
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let segments = ip.segments();
    // 6to4 carries the IPv4 address it routes to.
    if segments[0] == 0x2002 {
        let [a, b] = segments[1].to_be_bytes();
        let [c, d] = segments[2].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    let global_unicast = segments[0] & 0xe000 == 0x2000;
    // 2001::/23: IETF assignments (Teredo among them); 2001:db8::/32 and 3fff::/20:
    // documentation.
    let refused = (segments[0] == 0x2001 && (segments[1] < 0x0200 || segments[1] == 0x0db8))
        || (segments[0] & 0xfff0 == 0x3ff0);
    global_unicast && !refused
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "2002:7f00:1::1",
            "2002:c0a8:101::1",
            "3fff::1",
            "100::1",
        ] {
            let ip: IpAddr = private.parse().unwrap();
            assert!(!is_public(ip), "{private} must be refused");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.0.1.1",
            "198.20.0.1",
            "223.255.255.254",
            "::ffff:8.8.8.8",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "2002:808:808::1",
        ] {
            let ip: IpAddr = public.parse().unwrap();
            assert!(is_public(ip), "{public} is public");
        }
    }

    #[test]
    fn tokens_are_long_random_path_segments() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32, "24 bytes, base64url without padding");
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
            "{a}"
        );
        let origin = Origin::parse("https://app.example").unwrap();
        assert_eq!(
            url(&origin, &a),
            format!("https://app.example/.well-known/callhome-challenge/{a}")
        );
    }

    #[test]
    fn the_answer_is_the_token_with_trailing_whitespace_allowed() {
        assert!(matches(b"abc", "abc"));
        assert!(matches(b"abc\n", "abc"));
        assert!(matches(b"abc\r\n \t", "abc"));
        assert!(!matches(b" abc", "abc"));
        assert!(!matches(b"abcd", "abc"));
        assert!(!matches(b"ab", "abc"));
        assert!(!matches(b"", "abc"));
    }

    #[tokio::test]
    async fn a_private_address_is_refused_before_any_connection() {
        let origin = Origin::parse("http://127.0.0.1:9").unwrap();
        let err = prove(&origin, "token", &Policy::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), "challenge_private_address", "{err}");
        let origin = Origin::parse("http://localhost:9").unwrap();
        let err = prove(&origin, "token", &Policy::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), "challenge_private_address", "{err}");
    }
}
