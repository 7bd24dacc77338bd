//! Everything the job reaches over the network goes through here: an egress rule on every
//! address (the download, each redirect, the S3 endpoint), then HTTP.
//!
//! By default no loopback, private, link-local, shared (CGNAT), multicast or unspecified
//! address may be reached — a tenant must not turn the job against a cloud metadata service
//! (169.254.169.254), the daemon's own API or anything else inside the network. The rule is
//! applied to what a name resolves to, at connect time, for every connection ureq makes, so a
//! redirect or a DNS answer cannot slip past it; a name that resolves to any forbidden address
//! is refused whole. The operator lifts the rule with `--egress-allow-private`.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

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

/// The resolver ureq connects through: resolves, then applies the rule.
#[derive(Debug, Clone, Copy)]
pub struct Egress {
    pub allow_private: bool,
}

impl ureq::Resolver for Egress {
    fn resolve(&self, netloc: &str) -> io::Result<Vec<SocketAddr>> {
        let addrs: Vec<SocketAddr> = netloc.to_socket_addrs()?.collect();
        if !self.allow_private {
            if let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "egress to {netloc} ({}) is not allowed: it is not a public address",
                        bad.ip()
                    ),
                ));
            }
        }
        Ok(addrs)
    }
}

/// An HTTP agent whose every connection passes the egress rule.
pub fn agent(egress: Egress) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .resolver(egress)
        .timeout_connect(Duration::from_secs(15))
        .timeout_read(Duration::from_secs(60))
        .timeout_write(Duration::from_secs(60))
        .redirects(5)
        .user_agent("falra-etl/0.1")
        .build()
}

/// Whether an error from ureq was the egress rule.
pub fn denied(e: &ureq::Error) -> Option<String> {
    let ureq::Error::Transport(t) = e else {
        return None;
    };
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(t);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::PermissionDenied {
                return Some(io.to_string());
            }
        }
        source = s.source();
    }
    t.message()
        .filter(|m| m.contains("egress"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_resolver_refuses_names_of_private_addresses() {
        let strict = Egress {
            allow_private: false,
        };
        let e = ureq::Resolver::resolve(&strict, "127.0.0.1:80").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        let open = Egress {
            allow_private: true,
        };
        assert!(ureq::Resolver::resolve(&open, "127.0.0.1:80").is_ok());
    }
}
