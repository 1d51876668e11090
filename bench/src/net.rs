//! Socket set-up: the open-files limit, source addresses, and connecting.
//!
//! One process may hold at most the hard NOFILE limit of sockets, so each process raises its
//! soft limit to that first. Client sockets bind to several loopback source addresses because
//! one source address has only ~28,000 ephemeral ports towards one server port.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};

/// Raises the soft open-files limit to the hard limit and returns the new soft limit.
pub fn raise_nofile() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// The source addresses clients spread over: 127.0.0.1 ..= 127.0.0.`count` for an IPv4
/// target, none (the kernel picks) for `[::1]`, which is the only IPv6 loopback address.
pub fn source_ips(server: SocketAddr, count: u8) -> Vec<IpAddr> {
    if server.is_ipv6() {
        return Vec::new();
    }
    (1..=count)
        .map(|last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .collect()
}

/// Connects to `server`, from `source` (any port) when given, with Nagle off: requests are
/// written whole and latency is what is measured.
pub async fn connect(server: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = if server.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_spread_over_ipv4_loopback_only() {
        let v4: SocketAddr = "127.0.0.1:80".parse().expect("literal");
        let v6: SocketAddr = "[::1]:80".parse().expect("literal");
        let ips = source_ips(v4, 3);
        assert_eq!(ips.len(), 3);
        assert_eq!(ips[2], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
        assert!(source_ips(v6, 3).is_empty());
    }
}
