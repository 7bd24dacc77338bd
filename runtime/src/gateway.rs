//! The egress gateway: the one way out of a child's network namespace.
//!
//! A call's network namespace holds only loopback. Where a tenant's policy allows hosts
//! (`"network": {"allow": [...]}`), and for every package build, the daemon serves an HTTP
//! proxy inside that namespace at [`GATEWAY_ADDR`] (bound when the namespace is made, before
//! any process lives there) and the child is told so (`HTTP_PROXY`, `HTTPS_PROXY`). Each
//! connection through it is decided at connect time, in the daemon, by one rule:
//!
//! 1. the target (`CONNECT host:port`, or the absolute URL of a plain-HTTP request) is
//!    normalised, and for a tenant's calls must match the tenant's allow-list as it is now;
//! 2. the name is resolved by the daemon, and every address it resolves to must pass the
//!    node's address rule (no loopback, private, link-local, CGNAT, metadata, or mapped and
//!    embedded forms of those, unless `--egress-allow-private`): one forbidden answer refuses
//!    the name whole;
//! 3. the daemon dials the address it checked (so a second DNS answer cannot rebind it) and
//!    then only relays bytes. A redirect is a new connection, decided anew.
//!
//! Refusals answer `403` with the reason, which pip and Python's HTTP clients show. This is
//! the design of Stripe's Smokescreen, built into the daemon rather than run beside it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use falra_policies::egress::normalize_host;
use falra_policies::Network;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{Inner, Runtime};

/// Where the gateway listens inside a child's network namespace.
pub const GATEWAY_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 3128);

/// The proxy URL children are given.
pub const PROXY_URL: &str = "http://127.0.0.1:3128";

/// The environment that points a child's HTTP clients at the gateway. No `NO_PROXY`: every
/// name, loopback ones too, goes through the gateway, which is the only way out anyway.
pub fn proxy_env() -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"]
        .into_iter()
        .map(|key| (key.into(), PROXY_URL.into()))
        .collect()
}

/// The most a request head to the gateway may be.
const MAX_HEAD: usize = 16 << 10;
/// How long a client has to send its request head, a name to resolve, a dial to complete.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// Whose connections a listener serves.
#[derive(Debug, Clone)]
enum Rule {
    /// A tenant's calls: its allow-list as the gateway last saw it.
    Tenant(u32),
    /// A package build: any host the address rule lets through. Refusals are kept (a few)
    /// for the build's error message.
    Build(Refusals),
}

/// The first few refusals of a build's gateway.
#[derive(Debug, Clone, Default)]
pub struct Refusals(std::sync::Arc<Mutex<Vec<String>>>);

impl Refusals {
    fn push(&self, why: &str) {
        let mut kept = self.0.lock().expect("refusal list poisoned");
        if kept.len() < 3 && !kept.iter().any(|k| k == why) {
            kept.push(why.to_owned());
        }
    }

    /// What was refused, if anything.
    pub fn list(&self) -> Vec<String> {
        self.0.lock().expect("refusal list poisoned").clone()
    }
}

/// The gateways of this node.
#[derive(Debug, Default)]
pub struct Gateways {
    tenants: Mutex<HashMap<u32, TenantGate>>,
}

#[derive(Debug)]
struct TenantGate {
    network: Network,
    task: Option<tokio::task::AbortHandle>,
}

/// A build's gateway; stops when dropped.
#[derive(Debug)]
pub struct BuildGate {
    task: tokio::task::AbortHandle,
    pub refusals: Refusals,
}

impl Drop for BuildGate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Gateways {
    /// Records the network policy a child of the tenant with `uid` is prepared with: the
    /// gateway of its namespace decides by the latest one.
    pub fn set_policy(&self, uid: u32, network: &Network) {
        let mut tenants = self.tenants.lock().expect("gateway table poisoned");
        let gate = tenants.entry(uid).or_insert(TenantGate {
            network: Network::None,
            task: None,
        });
        // Called for every prepared child: the common case changes nothing and clones nothing.
        if gate.network != *network {
            gate.network = network.clone();
        }
    }

    fn network_of(&self, uid: u32) -> Network {
        self.tenants
            .lock()
            .expect("gateway table poisoned")
            .get(&uid)
            .map(|g| g.network.clone())
            .unwrap_or_default()
    }

    /// Serves the gateway of the tenant's namespace on `listener` (made with the namespace).
    pub fn serve_tenant(&self, state: &Runtime, uid: u32, listener: std::net::TcpListener) {
        let Some(task) = spawn_accept(state, listener, Rule::Tenant(uid)) else {
            return;
        };
        let mut tenants = self.tenants.lock().expect("gateway table poisoned");
        let gate = tenants.entry(uid).or_insert(TenantGate {
            network: Network::None,
            task: None,
        });
        if let Some(old) = gate.task.replace(task) {
            old.abort();
        }
    }

    /// Serves a build's gateway on `listener` until the returned guard is dropped.
    pub fn serve_build(state: &Runtime, listener: std::net::TcpListener) -> Option<BuildGate> {
        let refusals = Refusals::default();
        spawn_accept(state, listener, Rule::Build(refusals.clone()))
            .map(|task| BuildGate { task, refusals })
    }

    /// Stops a removed tenant's gateway.
    pub fn forget(&self, uid: u32) {
        if let Some(gate) = self
            .tenants
            .lock()
            .expect("gateway table poisoned")
            .remove(&uid)
        {
            if let Some(task) = gate.task {
                task.abort();
            }
        }
    }
}

fn spawn_accept(
    state: &Runtime,
    listener: std::net::TcpListener,
    rule: Rule,
) -> Option<tokio::task::AbortHandle> {
    let listener = listener
        .set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(listener));
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "could not serve an egress gateway");
            return None;
        }
    };
    let weak = state.downgrade();
    let span = match &rule {
        Rule::Tenant(uid) => tracing::info_span!("gateway", uid),
        Rule::Build(_) => tracing::info_span!("gateway", build = true),
    };
    let task = tokio::spawn(tracing::Instrument::instrument(
        accept_loop(weak, listener, rule),
        span,
    ));
    Some(task.abort_handle())
}

/// Connections one gateway relays at once; more wait in the listener's backlog.
const MAX_RELAYS: usize = 64;
/// The longest one relayed connection may last.
const MAX_RELAY_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// Accepts and relays. The relays belong to this task (a `JoinSet`): when the gateway is
/// stopped (its tenant removed, its build over) every connection it relays ends with it.
async fn accept_loop(state: Weak<Inner>, listener: TcpListener, rule: Rule) {
    let mut relays = tokio::task::JoinSet::new();
    loop {
        // Reap finished relays; at the cap, wait for one to end before accepting more.
        while relays.try_join_next().is_some() {}
        if relays.len() >= MAX_RELAYS {
            relays.join_next().await;
            continue;
        }
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(state) = Runtime::upgrade(&state) else {
            return;
        };
        let rule = rule.clone();
        relays.spawn(tracing::Instrument::in_current_span(async move {
            let relayed = tokio::time::timeout(MAX_RELAY_LIFETIME, relay(&state, stream, &rule));
            if let Ok(Err(refusal)) = relayed.await {
                state
                    .counters
                    .egress_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Rule::Build(kept) = &rule {
                    kept.push(&refusal.0);
                }
                note_refusal(&refusal);
            }
        }));
    }
}

/// Refusals are the tenant's doing: logged at most ten a minute.
fn note_refusal(refusal: &Refusal) {
    static WINDOW: AtomicU64 = AtomicU64::new(0);
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let minute = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60);
    if WINDOW.swap(minute, Ordering::Relaxed) != minute {
        COUNT.store(0, Ordering::Relaxed);
    }
    if COUNT.fetch_add(1, Ordering::Relaxed) < 10 {
        tracing::info!(reason = %refusal.0, "egress refused");
    }
}

/// Why a connection was not relayed.
#[derive(Debug)]
struct Refusal(String);

/// What a client asked the gateway for.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
    /// `None` for `CONNECT`; for plain HTTP, the head to send upstream (origin form) and the
    /// length of the one body that may follow it.
    forward: Option<(Vec<u8>, u64)>,
}

/// Why a request head to the gateway is refused before any target is checked.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum BadHead {
    #[error("the request head is not text")]
    NotText,
    #[error("control characters in the request head")]
    ControlCharacters,
    #[error("malformed request line")]
    RequestLine,
    #[error("only HTTP/1 is proxied")]
    NotHttp1,
    #[error("a proxied request must name an http:// URL, or CONNECT for https")]
    NotHttpUrl,
    #[error("credentials in the target are not proxied")]
    Credentials,
    #[error("{0:?} is not a host name")]
    NotAHost(String),
    #[error("folded header lines are not proxied")]
    Folded,
    #[error("a header line without a colon")]
    NoColon,
    #[error("chunked request bodies are not proxied")]
    Chunked,
    #[error("a bad Content-Length")]
    ContentLength,
    #[error("unclosed [ in the host")]
    UnclosedBracket,
    #[error("bad port")]
    Port,
    #[error("CONNECT needs host:port")]
    NoPort,
}

/// Parses a request head: `CONNECT host:port HTTP/1.1`, or `METHOD http://host[:port]/path
/// HTTP/1.x` with its headers (rewritten for the origin: no `Proxy-*`, `Connection: close`).
fn parse_head(head: &[u8]) -> Result<Target, BadHead> {
    let text = std::str::from_utf8(head).map_err(|_| BadHead::NotText)?;
    // Lines end in CRLF only; a bare CR or LF, or any other control character, is refused, so
    // that what this parser sees is what the origin sees.
    let body = text.strip_suffix("\r\n\r\n").unwrap_or(text);
    if body
        .split("\r\n")
        .any(|l| l.chars().any(|c| c.is_control() && c != '\t'))
    {
        return Err(BadHead::ControlCharacters);
    }
    let mut lines = body.split("\r\n");
    let request = lines.next().unwrap_or_default();
    let mut parts = request.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BadHead::RequestLine);
    };
    if !version.starts_with("HTTP/1.") {
        return Err(BadHead::NotHttp1);
    }
    let (authority, path) = if method == "CONNECT" {
        (target, None)
    } else {
        let rest = target.strip_prefix("http://").ok_or(BadHead::NotHttpUrl)?;
        match rest.find(['/', '?']) {
            Some(at) => (&rest[..at], Some(&rest[at..])),
            None => (rest, Some("/")),
        }
    };
    if authority.contains('@') {
        return Err(BadHead::Credentials);
    }
    let default_port = if method == "CONNECT" { None } else { Some(80) };
    let (host, port) = split_authority(authority, default_port)?;
    let host = normalize_host(host).ok_or_else(|| BadHead::NotAHost(host.to_owned()))?;
    let forward = match path {
        None => None,
        Some(path) => {
            let mut out = format!("{method} {path} {version}\r\n");
            let mut length = 0u64;
            for line in lines.filter(|l| !l.is_empty()) {
                if line.starts_with([' ', '\t']) {
                    return Err(BadHead::Folded);
                }
                let (name, value) = line.split_once(':').ok_or(BadHead::NoColon)?;
                let name = name.trim();
                let lower = name.to_ascii_lowercase();
                match lower.as_str() {
                    "transfer-encoding" => {
                        return Err(BadHead::Chunked);
                    }
                    "content-length" => {
                        length = value.trim().parse().map_err(|_| BadHead::ContentLength)?;
                        continue;
                    }
                    // The origin is told the host that was checked, whatever the client said.
                    "host" | "connection" | "keep-alive" | "upgrade" | "te" | "trailer" => continue,
                    _ if lower.starts_with("proxy-") => continue,
                    _ => {}
                }
                out.push_str(line);
                out.push_str("\r\n");
            }
            let host_header = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            };
            let host_header = if port == 80 {
                host_header
            } else {
                format!("{host_header}:{port}")
            };
            out.push_str(&format!("Host: {host_header}\r\n"));
            if length > 0 {
                out.push_str(&format!("Content-Length: {length}\r\n"));
            }
            out.push_str("Connection: close\r\n\r\n");
            Some((out.into_bytes(), length))
        }
    };
    Ok(Target {
        host,
        port,
        forward,
    })
}

fn split_authority(authority: &str, default_port: Option<u16>) -> Result<(&str, u16), BadHead> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(BadHead::UnclosedBracket)?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or(BadHead::Port)?,
        None => default_port.ok_or(BadHead::NoPort)?,
    };
    Ok((host, port))
}

async fn relay(state: &Runtime, mut client: TcpStream, rule: &Rule) -> Result<(), Refusal> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = tokio::time::timeout(STEP_TIMEOUT, read_head(&mut client, &mut buf))
        .await
        .map_err(|_| Refusal("the request head did not arrive in time".into()))?
        .map_err(|e| Refusal(format!("reading the request head: {e}")))?;
    let target = match parse_head(&buf[..head_end]) {
        Ok(t) => t,
        Err(why) => return refuse(&mut client, 400, &why.to_string()).await,
    };
    if let Rule::Tenant(uid) = *rule {
        let network = state.gateways.network_of(uid);
        if !network.allows(&target.host, target.port) {
            let why = format!(
                "{}:{} is not in this tenant's network allow-list",
                target.host, target.port
            );
            return refuse(&mut client, 403, &why).await;
        }
    }
    let rule = &state.config.egress;
    let addrs: Vec<SocketAddr> = match target.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, target.port)],
        Err(_) => {
            let looked_up = tokio::time::timeout(
                STEP_TIMEOUT,
                tokio::net::lookup_host((target.host.as_str(), target.port)),
            )
            .await;
            match looked_up {
                Ok(Ok(addrs)) => addrs.collect(),
                _ => {
                    let why = format!("{} could not be resolved", target.host);
                    return refuse(&mut client, 502, &why).await;
                }
            }
        }
    };
    if addrs.iter().any(|a| !rule.permits(a.ip())) {
        // (The address is not named: a call cannot resolve names itself, and learns none.)
        let why = format!(
            "egress to {}:{} is not allowed: it is not a public address",
            target.host, target.port
        );
        return refuse(&mut client, 403, &why).await;
    }
    let mut upstream = None;
    for addr in &addrs {
        if let Ok(Ok(s)) = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr)).await {
            upstream = Some(s);
            break;
        }
    }
    let Some(mut upstream) = upstream else {
        let why = format!("could not connect to {}:{}", target.host, target.port);
        return refuse(&mut client, 502, &why).await;
    };
    let early = &buf[head_end..];
    match &target.forward {
        None => {
            let opened = client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await;
            if opened.is_err() || upstream.write_all(early).await.is_err() {
                return Ok(());
            }
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
        Some((head, length)) => {
            // Exactly one request: its head, then at most its announced body; nothing the
            // client sends after that reaches the origin.
            let first = &early[..early.len().min(*length as usize)];
            if upstream.write_all(head).await.is_err() || upstream.write_all(first).await.is_err() {
                return Ok(());
            }
            let rest = length.saturating_sub(first.len() as u64);
            let (mut client_r, mut client_w) = client.split();
            let (mut upstream_r, mut upstream_w) = upstream.split();
            let mut body = (&mut client_r).take(rest);
            let up = tokio::io::copy(&mut body, &mut upstream_w);
            let down = tokio::io::copy(&mut upstream_r, &mut client_w);
            let _ = tokio::join!(up, down);
        }
    }
    Ok(())
}

/// Reads until the end of the request head; returns where it ends (just past `\r\n\r\n`).
async fn read_head(client: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(at + 4);
        }
        if buf.len() >= MAX_HEAD {
            return Err(std::io::Error::other("the request head is too large"));
        }
        let mut chunk = [0u8; 4096];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("the client closed the connection"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn refuse(client: &mut TcpStream, status: u16, why: &str) -> Result<(), Refusal> {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        _ => "Bad Gateway",
    };
    let body = format!("falra egress gateway: {why}\n");
    let answer = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(answer.as_bytes()).await;
    Err(Refusal(why.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_and_plain_http_heads_are_parsed_into_checked_targets() {
        let t = parse_head(b"CONNECT API.Example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.forward),
            ("api.example.com", 443, None)
        );
        let t = parse_head(
            b"GET http://files.example.org/simple/six/?a=1 HTTP/1.1\r\nHost: files.example.org\r\n\
              Proxy-Connection: keep-alive\r\nProxy-Authorization: x\r\nConnection: keep-alive\r\n\
              Accept: */*\r\n\r\n",
        )
        .unwrap();
        assert_eq!((t.host.as_str(), t.port), ("files.example.org", 80));
        let (head, length) = t.forward.unwrap();
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET /simple/six/?a=1 HTTP/1.1\r\nAccept: */*\r\nHost: files.example.org\r\n\
             Connection: close\r\n\r\n"
        );
        assert_eq!(length, 0);
        // The Host the origin sees is the one checked, whatever the client wrote.
        let t = parse_head(
            b"POST http://api.example.com:8080/x HTTP/1.1\r\nHost: internal.example\r\n\
              Content-Length: 5\r\n\r\n",
        )
        .unwrap();
        let (head, length) = t.forward.unwrap();
        let head = String::from_utf8(head).unwrap();
        assert!(head.contains("Host: api.example.com:8080\r\n"), "{head}");
        assert!(!head.contains("internal"), "{head}");
        assert_eq!(length, 5);
        let t = parse_head(b"CONNECT [::1]:8443 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 8443));
        let t = parse_head(b"GET http://127.0.0.1:9000 HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 9000));
    }

    #[test]
    fn odd_requests_are_refused() {
        for bad in [
            &b"GET /local HTTP/1.1\r\n\r\n"[..],
            b"GET https://example.com/ HTTP/1.1\r\n\r\n",
            b"CONNECT example.com HTTP/1.1\r\n\r\n",
            b"CONNECT example.com:0 HTTP/1.1\r\n\r\n",
            b"CONNECT user@example.com:443 HTTP/1.1\r\n\r\n",
            b"CONNECT exa mple.com:443 HTTP/1.1\r\n\r\n",
            b"CONNECT example.com:443 HTTP/2\r\n\r\n",
            b"CONNECT b\xc3\xbccher.de:443 HTTP/1.1\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
            b"GET http://a.example/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET http://a.example/ HTTP/1.1\r\nX: a\nHost: b.example\r\n\r\n",
            b"GET http://a.example/ HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
            b"GET http://a.example/ HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        ] {
            assert!(
                parse_head(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_address_rule_is_the_built_ins_rule() {
        use falra_policies::address::Egress;
        let strict = Egress::default();
        let open = Egress {
            allow_private: true,
            ..Egress::default()
        };
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "169.254.169.254",
            "::1",
            "::ffff:127.0.0.1",
            "100.64.0.1",
        ] {
            assert!(!strict.permits(ip.parse().unwrap()), "{ip}");
            assert!(open.permits(ip.parse().unwrap()), "{ip}");
        }
        assert!(strict.permits("93.184.216.34".parse().unwrap()));
    }
}
