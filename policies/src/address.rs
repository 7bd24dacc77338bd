//! The node's address rule for outbound connections a tenant can steer: which IP addresses may
//! be dialled at all.
//!
//! By default no loopback, private, link-local, shared (CGNAT), multicast or unspecified
//! address may be reached — a tenant must not turn a job, a callback or a package download
//! against a cloud metadata service (169.254.169.254), the daemon's own API or anything else
//! inside the network. The operator lifts the rule with `--egress-allow-private`, or exempts
//! networks with `--egress-allow-net`. This is pure data and decisions; the clients that apply
//! it at connect time (the built-ins' HTTP and S3 clients, the egress gateway, job callbacks)
//! live with their protocols.

use std::net::IpAddr;

/// Whether `ip` is on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10, shared address space
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24, protocol assignments
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15, benchmarking
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            // IPv4-compatible (::a.b.c.d) and 6to4 (2002:a.b.c.d::/48) carry an IPv4 address.
            if s[..6] == [0, 0, 0, 0, 0, 0] {
                let o = v6.octets();
                return is_public(IpAddr::V4(std::net::Ipv4Addr::new(
                    o[12], o[13], o[14], o[15],
                )));
            }
            if s[0] == 0x2002 {
                let o = v6.octets();
                return is_public(IpAddr::V4(std::net::Ipv4Addr::new(o[2], o[3], o[4], o[5])));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link local
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64, may reach IPv4 inside
                || (s[0] & 0xffc0) == 0xfec0 // deprecated site-local
                || s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        }
    }
}

/// An IP network (`10.1.0.0/16`, `127.0.0.1/32`, `fd00::/8`) the operator exempts from the
/// rule (`falra serve --egress-allow-net`): narrower than lifting the rule altogether.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<IpNet, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a network: write address/prefix"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|&p| p <= max)
            .ok_or_else(|| format!("the prefix of {s:?} must be 0 to {max}"))?;
        Ok(IpNet { addr, prefix })
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl IpNet {
    /// Whether `ip` is in the network (an IPv4-mapped IPv6 address as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let bits = |a: IpAddr| -> (u128, u32) {
            match a {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        };
        let ((net, width), (got, got_width)) = (bits(self.addr), bits(ip));
        if width != got_width {
            return false;
        }
        let prefix = u32::from(self.prefix);
        if prefix == 0 {
            return true;
        }
        let mask = u128::MAX << (128 - prefix);
        (net & mask) == (got & mask)
    }
}

/// The rule, as the operator set it.
#[derive(Debug, Clone, Default)]
pub struct Egress {
    /// Every address passes (`--egress-allow-private`).
    pub allow_private: bool,
    /// These networks pass even where they are not public (`--egress-allow-net`).
    pub allow_nets: Vec<IpNet>,
}

impl Egress {
    /// Whether `ip` may be dialled.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.allow_private || is_public(ip) || self.allow_nets.iter().any(|n| n.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_networks_pass_and_nothing_else_does() {
        let nets: Vec<IpNet> = ["127.0.0.1/32", "10.1.0.0/16", "fd00::/8"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        let rule = Egress {
            allow_private: false,
            allow_nets: nets,
        };
        for ok in [
            "127.0.0.1",
            "::ffff:127.0.0.1",
            "10.1.200.3",
            "fd12::1",
            "93.184.216.34",
        ] {
            assert!(rule.permits(ok.parse().unwrap()), "{ok}");
        }
        for no in ["127.0.0.2", "10.2.0.1", "169.254.169.254", "fe80::1", "::1"] {
            assert!(!rule.permits(no.parse().unwrap()), "{no}");
        }
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/8", "::/129"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
        assert!("0.0.0.0/0"
            .parse::<IpNet>()
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn only_public_addresses_pass() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "::127.0.0.1",
            "2002:a9fe:a9fe::1",
            "64:ff9b:1::1",
            "fec0::1",
        ] {
            assert!(!is_public(bad.parse().unwrap()), "{bad}");
        }
        for good in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(good.parse().unwrap()), "{good}");
        }
    }
}
