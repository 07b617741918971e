//! The advertised-address rule: the address other processes should dial to reach a
//! node, and whether an address can be dialled at all.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

use super::{resolve, NetError};

/// coordinator (learned by connecting a UDP socket, which sends nothing).
pub async fn advertise_addr(
    explicit: Option<&str>,
    bound: SocketAddr,
    coord: &str,
) -> Result<String, NetError> {
    if let Some(a) = explicit {
        return Ok(a.to_string());
    }
    if !bound.ip().is_unspecified() {
        return Ok(bound.to_string());
    }
    let coord_sock = resolve(coord).await?;
    let local_ip = route_source(coord_sock).unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    Ok(SocketAddr::new(local_ip, bound.port()).to_string())
}

fn route_source(to: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if to.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).ok()?;
    sock.connect(to).ok()?;
    let ip = sock.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// Whether an advertised address can be dialled by others.
pub fn dialable(addr: &str) -> bool {
    match addr.parse::<SocketAddr>() {
        Ok(sock) => !sock.ip().is_unspecified() && sock.port() != 0,
        Err(_) => addr
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0)),
    }
}
