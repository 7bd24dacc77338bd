//! The job's download goes through here: the node's address rule
//! ([`falra_policies::address`]) on every address, then HTTP (ureq). The S3 writer applies the
//! same rule through the SDK's resolver (`s3::EgressResolver`).
//!
//! The rule is applied to what a name resolves to, at connect time, for every connection ureq
//! makes, so a redirect or a DNS answer cannot slip past it; a name that resolves to any
//! forbidden address is refused whole.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

pub use falra_policies::address::{is_public, Egress, IpNet};

/// The resolver ureq connects through: resolves, then applies the rule.
#[derive(Debug, Clone)]
pub struct Resolver(pub Egress);

impl ureq::Resolver for Resolver {
    fn resolve(&self, netloc: &str) -> io::Result<Vec<SocketAddr>> {
        let addrs: Vec<SocketAddr> = netloc.to_socket_addrs()?.collect();
        {
            if let Some(bad) = addrs.iter().find(|a| !self.0.permits(a.ip())) {
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
        .resolver(Resolver(egress))
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
    fn the_resolver_refuses_names_of_private_addresses() {
        let strict = Resolver(Egress::default());
        let e = ureq::Resolver::resolve(&strict, "127.0.0.1:80").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        let open = Resolver(Egress {
            allow_private: true,
            ..Egress::default()
        });
        assert!(ureq::Resolver::resolve(&open, "127.0.0.1:80").is_ok());
    }
}
