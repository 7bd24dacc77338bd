//! The HTTP front: how connections are accepted, before any request is read.
//!
//! This is the part an anonymous client reaches first, so it must hold whatever such a client
//! does. Every connection is counted against a node-wide cap and a cap per client address (an
//! IPv6 client by its /64); one past either is closed at once, so that a flood of idle sockets
//! from one place can never use up the daemon's descriptors. Each connection gets a deadline for
//! its request head (which also ends a keep-alive connection left idle that long). The soft
//! descriptor limit is raised to the hard one at start, and the node-wide cap is kept below it
//! with a reserve for the children's pipes and cgroup files.
//!
//! Bodies are not read here: their deadline and the token-first rule live with the extractors
//! (`extract.rs`) and the call handler.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};

/// Limits on connections, as configured.
#[derive(Debug, Clone, Copy)]
pub struct FrontLimits {
    /// Open connections on this node, at most.
    pub max_connections: usize,
    /// Open connections from one client address (an IPv6 /64), at most.
    pub max_connections_per_address: usize,
    /// How long a connection may take to send a request head, and stay idle between requests.
    pub header_timeout: Duration,
}

/// Descriptors kept free for everything that is not a client connection: the store, the
/// listener, and each running child's pipes, pidfd and cgroup files.
pub fn descriptor_reserve(max_children: usize) -> u64 {
    256 + 16 * max_children as u64
}

/// Raises the soft limit on open descriptors to the hard one, and returns the soft limit now in
/// force.
pub fn raise_descriptor_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard {
                if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                    tracing::warn!(error = %e, soft, hard, "could not raise the descriptor limit");
                    return soft;
                }
            }
            hard
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read the descriptor limit");
            1024
        }
    }
}

/// The node-wide connection cap that fits in `descriptor_limit` with the reserve kept.
pub fn effective_connection_cap(wanted: usize, descriptor_limit: u64, reserve: u64) -> usize {
    let room = descriptor_limit.saturating_sub(reserve).max(32);
    wanted.min(usize::try_from(room).unwrap_or(usize::MAX))
}

/// The address connections are counted against: an IPv6 client by its /64 (one host can hold a
/// whole /64), an IPv4-mapped one by its IPv4 address.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// Open connections, node-wide and per address.
#[derive(Debug)]
pub struct ConnectionCaps {
    limits: (usize, usize),
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Why a connection was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Node,
    Address,
}

/// One open connection's place; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    caps: Arc<ConnectionCaps>,
    key: IpAddr,
}

impl ConnectionCaps {
    pub fn new(max_connections: usize, per_address: usize) -> Arc<ConnectionCaps> {
        Arc::new(ConnectionCaps {
            limits: (max_connections, per_address),
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// Takes a place for a connection from `ip`, if both caps leave room.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let key = address_key(ip);
        let mut open = self.open.lock().expect("connection table poisoned");
        if open.0 >= self.limits.0 {
            return Err(Refused::Node);
        }
        let from_here = open.1.get(&key).copied().unwrap_or(0);
        if from_here >= self.limits.1 {
            return Err(Refused::Address);
        }
        open.0 += 1;
        open.1.insert(key, from_here + 1);
        Ok(Slot {
            caps: self.clone(),
            key,
        })
    }

    /// Connections open now.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.open.lock().expect("connection table poisoned").0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.caps.open.lock().expect("connection table poisoned");
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.key);
            }
        }
    }
}

/// Accepts and serves connections until `stop` resolves, then lets open ones finish their
/// requests (up to `grace`). `refused` is told of each connection closed over a cap.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: FrontLimits,
    stop: impl std::future::Future<Output = ()>,
    deadline: impl std::future::Future<Output = ()>,
    refused: impl Fn(),
) {
    let caps = ConnectionCaps::new(limits.max_connections, limits.max_connections_per_address);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut refusals_logged = 0u32;
    let mut refusal_window = tokio::time::Instant::now();
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of descriptors (or another passing failure): wait rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match caps.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                refused();
                // Bounded logging: at most ten lines a minute, whatever a client does.
                if refusal_window.elapsed() > Duration::from_secs(60) {
                    refusal_window = tokio::time::Instant::now();
                    refusals_logged = 0;
                }
                if refusals_logged < 10 {
                    refusals_logged += 1;
                    tracing::warn!(client = %address_key(peer.ip()), cap = ?why, "connection refused: over its cap");
                }
                drop(tcp);
                continue;
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut router = router.clone();
            async move {
                let req = req.map(axum::body::Body::new);
                let response = tower_service::Service::call(&mut router, req).await;
                Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(64 << 10);
        let conn = builder.serve_connection(TokioIo::new(tcp), service);
        let conn = graceful.watch(conn);
        let span = tracing::debug_span!("connection", client = %peer);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                drop(slot);
            },
            span,
        ));
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {},
        () = deadline => {
            tracing::warn!("connections still open at the shutdown deadline; closing them");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_per_address_and_node_wide_and_free_on_drop() {
        let caps = ConnectionCaps::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let a1 = caps.admit(a).unwrap();
        let _a2 = caps.admit(a).unwrap();
        assert_eq!(caps.admit(a).unwrap_err(), Refused::Address);
        let _b1 = caps.admit(b).unwrap();
        assert_eq!(caps.admit(c).unwrap_err(), Refused::Node);
        drop(a1);
        assert_eq!(caps.open(), 2);
        let _c1 = caps.admit(c).unwrap();
        assert_eq!(caps.admit(a).unwrap_err(), Refused::Node);
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let caps = ConnectionCaps::new(10, 1);
        let _x = caps.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert_eq!(
            caps.admit("2001:db8:1:2:ffff::9".parse().unwrap())
                .unwrap_err(),
            Refused::Address
        );
        assert!(caps.admit("2001:db8:1:3::1".parse().unwrap()).is_ok());
        let _m = caps.admit("::ffff:10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(
            caps.admit("10.0.0.1".parse().unwrap()).unwrap_err(),
            Refused::Address
        );
    }

    #[test]
    fn the_node_cap_keeps_the_reserve() {
        assert_eq!(effective_connection_cap(10_000, 1024, 768), 256);
        assert_eq!(effective_connection_cap(100, 1 << 20, 768), 100);
        assert_eq!(effective_connection_cap(10_000, 512, 768), 32);
    }
}
