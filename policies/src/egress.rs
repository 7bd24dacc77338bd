//! Where a tenant's code may connect: the `network` field of a policy.
//!
//! `"none"` (the default) leaves a call its own loopback only. `{"allow": ["api.example.com:443",
//! "*.wasabisys.com:443"]}` lets it reach those hosts and ports through the daemon's egress
//! gateway, which checks every connection against this list and the node's address rule at
//! connect time. `"host"` shares the host's network: an operator's escape hatch, unsafe for
//! any tenant the operator would not trust with the host.
//!
//! Host patterns are parsed here, at the boundary, into a normal form (lowercase ASCII labels,
//! no trailing dot, an explicit port), so that matching is a plain comparison: a name that is
//! spelled differently (`API.Example.com.`) matches the same entry, and one that cannot be
//! normalised (non-ASCII, empty labels, a bare `*`) never enters a policy.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The most entries one allow-list may hold.
pub const MAX_ALLOWED_HOSTS: usize = 64;

/// Whether a tenant's calls may reach the network beyond their own loopback.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Network {
    #[default]
    None,
    /// Only these hosts and ports, through the egress gateway.
    Allow(Vec<HostPattern>),
    Host,
}

impl Network {
    /// Whether `host:port` (normalised) may be reached under this policy, through the gateway.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        match self {
            Network::Allow(list) => list.iter().any(|p| p.matches(host, port)),
            Network::None | Network::Host => false,
        }
    }
}

/// One allow-list entry: an exact host, or `*.` and a domain (any name below it, not the
/// domain itself), and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// Normalised; without the `*.` of a wildcard.
    host: String,
    wildcard: bool,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?} is not a host pattern: {why}")]
pub struct PatternError {
    pub entry: String,
    pub why: &'static str,
}

/// A host name in normal form: lowercase ASCII labels of letters, digits and `-` (or an IP
/// address literal), no trailing dot. `None` if it cannot be one.
pub fn normalize_host(host: &str) -> Option<String> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return None;
    }
    if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    {
        return Some(ip.to_string());
    }
    let lower = host.to_ascii_lowercase();
    let ok = lower.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    ok.then_some(lower)
}

impl HostPattern {
    pub fn parse(entry: &str) -> Result<HostPattern, PatternError> {
        let err = |why| PatternError {
            entry: entry.to_owned(),
            why,
        };
        let (host, port) = entry
            .rsplit_once(':')
            .ok_or_else(|| err("it needs a port, as host:port"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| err("the port must be a number from 1 to 65535"))?;
        let (wildcard, host) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host),
        };
        if host.contains('*') {
            return Err(err("a wildcard may only stand first, as *.domain"));
        }
        let host = normalize_host(host).ok_or_else(|| {
            err("the host must be ASCII letters, digits, '-' and dots (IDNA names in their xn-- form), or an IP address")
        })?;
        if wildcard && (host.parse::<std::net::IpAddr>().is_ok() || !host.contains('.')) {
            return Err(err("a wildcard needs a domain of two or more labels"));
        }
        Ok(HostPattern {
            host,
            wildcard,
            port,
        })
    }

    /// Whether the normalised `host` and `port` match.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if port != self.port {
            return false;
        }
        if self.wildcard {
            host.len() > self.host.len() + 1
                && host.ends_with(&self.host)
                && host.as_bytes()[host.len() - self.host.len() - 1] == b'.'
        } else {
            host == self.host
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let star = if self.wildcard { "*." } else { "" };
        if self.host.contains(':') {
            write!(f, "{star}[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{star}{}:{}", self.host, self.port)
        }
    }
}

impl Serialize for Network {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Network::None => s.serialize_str("none"),
            Network::Host => s.serialize_str("host"),
            Network::Allow(list) => {
                use serde::ser::SerializeMap;
                let entries: Vec<String> = list.iter().map(ToString::to_string).collect();
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("allow", &entries)?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Network, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Word(String),
            Allow { allow: Vec<String> },
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct AllowOnly {
            #[allow(dead_code)]
            allow: Vec<String>,
        }
        let value = serde_json::Value::deserialize(d)?;
        if value.is_object() {
            // Only {"allow": [...]}: any other key is a mistake worth naming.
            AllowOnly::deserialize(&value).map_err(serde::de::Error::custom)?;
        }
        let wire = Wire::deserialize(&value).map_err(|_| {
            serde::de::Error::custom(
                "network must be \"none\", \"host\" or {\"allow\": [\"host:port\", ...]}",
            )
        })?;
        match wire {
            Wire::Word(w) if w == "none" => Ok(Network::None),
            Wire::Word(w) if w == "host" => Ok(Network::Host),
            Wire::Word(w) => Err(serde::de::Error::custom(format!(
                "network must be \"none\", \"host\" or {{\"allow\": [...]}}, got {w:?}"
            ))),
            Wire::Allow { allow } => {
                if allow.len() > MAX_ALLOWED_HOSTS {
                    return Err(serde::de::Error::custom(format!(
                        "network.allow holds at most {MAX_ALLOWED_HOSTS} entries"
                    )));
                }
                allow
                    .iter()
                    .map(|e| HostPattern::parse(e))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Network::Allow)
                    .map_err(serde::de::Error::custom)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(json: &str) -> Result<Network, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn the_three_forms_round_trip() {
        for text in [
            r#""none""#,
            r#""host""#,
            r#"{"allow":["api.example.com:443","*.wasabisys.com:443","[::1]:8080","10.0.0.1:80"]}"#,
        ] {
            let n = net(text).unwrap();
            assert_eq!(serde_json::to_string(&n).unwrap(), text);
        }
    }

    #[test]
    fn names_are_normalised_before_matching() {
        let n = net(r#"{"allow": ["API.Example.COM.:443", "*.S3.wasabisys.com:443"]}"#).unwrap();
        assert!(n.allows("api.example.com", 443));
        assert!(!n.allows("api.example.com", 80));
        assert!(!n.allows("evil-api.example.com", 443));
        assert!(n.allows("eu.s3.wasabisys.com", 443));
        assert!(n.allows("a.b.s3.wasabisys.com", 443));
        assert!(
            !n.allows("s3.wasabisys.com", 443),
            "a wildcard is not its apex"
        );
        assert!(!n.allows("evils3.wasabisys.com", 443));
        assert!(!Network::None.allows("api.example.com", 443));
        assert!(!Network::Host.allows("api.example.com", 443));
    }

    #[test]
    fn bad_patterns_are_refused_with_the_reason() {
        for bad in [
            r#"{"allow": ["example.com"]}"#,
            r#"{"allow": ["example.com:0"]}"#,
            r#"{"allow": ["example.com:http"]}"#,
            r#"{"allow": ["*:443"]}"#,
            r#"{"allow": ["*.com:443"]}"#,
            r#"{"allow": ["a.*.com:443"]}"#,
            r#"{"allow": ["bücher.de:443"]}"#,
            r#"{"allow": ["a..b:443"]}"#,
            r#"{"allow": ["-a.b:443"]}"#,
            r#"{"allow": ["a b.com:443"]}"#,
            r#"{"deny": []}"#,
            r#"{"allow": [], "extra": 1}"#,
            r#""open""#,
            r#"7"#,
        ] {
            assert!(net(bad).is_err(), "{bad} was accepted");
        }
        let many: Vec<String> = (0..65)
            .map(|i| format!("\"h{i}.example.com:443\""))
            .collect();
        assert!(net(&format!("{{\"allow\": [{}]}}", many.join(","))).is_err());
    }

    #[test]
    fn host_normal_form() {
        assert_eq!(normalize_host("Example.COM."), Some("example.com".into()));
        assert_eq!(normalize_host("[::1]"), Some("::1".into()));
        assert_eq!(normalize_host("127.0.0.1"), Some("127.0.0.1".into()));
        assert_eq!(
            normalize_host("xn--bcher-kva.de"),
            Some("xn--bcher-kva.de".into())
        );
        assert_eq!(normalize_host("bücher.de"), None);
        assert_eq!(normalize_host(""), None);
        assert_eq!(normalize_host("a_b.com"), None);
    }
}
