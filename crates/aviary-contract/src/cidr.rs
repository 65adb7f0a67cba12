//! CIDR ranges for trusted override sources.

use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => masked(
                u128::from(u32::from(net)),
                u128::from(u32::from(*ip)),
                self.prefix,
                32,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), u128::from(*ip), self.prefix, 128)
            }
            (IpAddr::V4(_), IpAddr::V6(ip)) => ip
                .to_ipv4_mapped()
                .is_some_and(|v4| self.contains(&IpAddr::V4(v4))),
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }
}

fn masked(net: u128, ip: u128, prefix: u8, bits: u32) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = bits - u32::from(prefix);
    (net >> shift) == (ip >> shift)
}

/// Parses Envoy's `source.address` property value ("1.2.3.4:5678", "[::1]:80" or a bare IP).
pub fn parse_socket_ip(s: &str) -> Option<IpAddr> {
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains() {
        let c = Cidr::parse("10.0.0.0/8").unwrap_or_else(|| unreachable!());
        assert!(c.contains(&"10.1.2.3".parse().unwrap_or_else(|_| unreachable!())));
        assert!(!c.contains(&"11.0.0.1".parse().unwrap_or_else(|_| unreachable!())));
        let one = Cidr::parse("127.0.0.1").unwrap_or_else(|| unreachable!());
        assert!(one.contains(&"127.0.0.1".parse().unwrap_or_else(|_| unreachable!())));
        assert!(!one.contains(&"127.0.0.2".parse().unwrap_or_else(|_| unreachable!())));
        let any = Cidr::parse("0.0.0.0/0").unwrap_or_else(|| unreachable!());
        assert!(any.contains(&"8.8.8.8".parse().unwrap_or_else(|_| unreachable!())));
        let v6 = Cidr::parse("fd00::/8").unwrap_or_else(|| unreachable!());
        assert!(v6.contains(&"fd12::1".parse().unwrap_or_else(|_| unreachable!())));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nope").is_none());
        assert_eq!(parse_socket_ip("127.0.0.1:5555"), "127.0.0.1".parse().ok());
        assert_eq!(parse_socket_ip("[::1]:80"), "::1".parse().ok());
    }
}
