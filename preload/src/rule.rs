//! One rule of `TCPCRYPT_INCLUDE` or `TCPCRYPT_EXCLUDE` (`tcpcrypt run
//! --include` / `--exclude`): an address, a network or a port. The shim
//! and the `tcpcrypt` command both compile this one file (the command
//! through a `#[path]` include), so that `tcpcrypt run` refuses a rule
//! the shim would not understand instead of starting a program with it
//! ignored.

use std::net::{IpAddr, SocketAddr};

/// One rule of `TCPCRYPT_INCLUDE` or `TCPCRYPT_EXCLUDE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    Net(IpAddr, u8),
    Port(u16),
}

impl Rule {
    /// `ADDR`, `ADDR/PREFIX` or `:PORT`; `None` when it is none of these.
    pub fn parse(s: &str) -> Option<Rule> {
        let s = s.trim();
        // ":22" is a port; "::1" an IPv6 address.
        if let Some(port) = s.strip_prefix(':').filter(|p| !p.contains(':')) {
            return port.parse().ok().map(Rule::Port);
        }
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, p.parse().ok()?),
            None => (s, if s.contains(':') { 128 } else { 32 }),
        };
        let ip: IpAddr = ip.parse().ok()?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Rule::Net(ip, prefix.min(max)))
    }

    /// Whether `addr` is one this rule names.
    pub fn matches(&self, addr: SocketAddr) -> bool {
        match *self {
            Rule::Port(p) => addr.port() == p,
            Rule::Net(net, prefix) => same_prefix(net, canonical(addr.ip()), prefix),
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn same_prefix(a: IpAddr, b: IpAddr, prefix: u8) -> bool {
    let (a, b, bits) = match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b)), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return false,
    };
    let prefix = u32::from(prefix).min(bits);
    if prefix == 0 {
        return true;
    }
    let shift = bits - prefix;
    (a >> shift) == (b >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_addresses_networks_and_ports() {
        assert_eq!(Rule::parse(" :22 "), Some(Rule::Port(22)));
        assert_eq!(
            Rule::parse("10.0.0.0/8"),
            Some(Rule::Net("10.0.0.0".parse().unwrap(), 8))
        );
        assert_eq!(
            Rule::parse("192.0.2.7"),
            Some(Rule::Net("192.0.2.7".parse().unwrap(), 32))
        );
        assert_eq!(
            Rule::parse("2001:db8::/32"),
            Some(Rule::Net("2001:db8::".parse().unwrap(), 32))
        );
        for bad in [
            "bogus",
            ":http",
            ":99999",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/x",
        ] {
            assert_eq!(Rule::parse(bad), None, "{bad}");
        }
    }
}
