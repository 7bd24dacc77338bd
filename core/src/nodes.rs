//! This node among the others: its identity in the store, its beat, and whether the store
//! answers it.
//!
//! At start the node registers (`node_<hex>`, its address, its version, when it started) and
//! then beats every [`BEAT`]; on a shared store each beat also reads the plans again and drops
//! the cluster's call counts of past minutes. A node whose beat is older than [`GONE_AFTER_MS`] is listed as
//! not alive (killed, cut off from the database, stopped); rows older than a day are removed.
//! The beat doubles as the node's health check: while the store does not answer it, the node
//! reports itself unhealthy, and it is healthy again with the first beat that succeeds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use falra_store::{NodeRow, StoreError};

use crate::clock::now_ms;
use crate::Core;

/// How often a node beats (and, on a shared store, reads the plans again).
pub const BEAT: Duration = Duration::from_secs(1);
/// A node whose last beat is older than this is not alive.
pub const GONE_AFTER_MS: i64 = 10_000;
/// Rows of nodes gone longer than this are removed.
const FORGET_AFTER_MS: i64 = 86_400_000;

/// This node's identity and health.
#[derive(Debug)]
pub struct Node {
    identity: OnceLock<NodeRow>,
    store_ok: AtomicBool,
}

impl Default for Node {
    fn default() -> Node {
        Node {
            identity: OnceLock::new(),
            store_ok: AtomicBool::new(true),
        }
    }
}

impl Node {
    /// This node's id, once registered.
    pub fn id(&self) -> Option<&str> {
        self.identity.get().map(|n| n.id.as_str())
    }

    /// Whether the store answered this node's last beat.
    pub fn is_healthy(&self) -> bool {
        self.store_ok.load(Ordering::Relaxed)
    }
}

/// A registered node as the operator API lists it.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub row: NodeRow,
    pub alive: bool,
    /// The node answering.
    pub this: bool,
}

/// Registers this node, listening on `address`, and starts its beat.
pub async fn register(state: &Core, address: String) -> Result<(), StoreError> {
    let mut id = [0u8; 8];
    getrandom::getrandom(&mut id).expect("the operating system's random source failed");
    let now = now_ms();
    let row = NodeRow {
        id: format!("node_{}", hex::encode(id)),
        address,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: now,
        heartbeat_at: now,
    };
    state.store.register_node(&row).await?;
    tracing::info!(node = %row.id, "node registered");
    let _ = state.node.identity.set(row);
    let weak = state.downgrade();
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            loop {
                tokio::time::sleep(BEAT).await;
                let Some(state) = Core::upgrade(&weak) else {
                    return;
                };
                beat(&state).await;
            }
        },
        tracing::info_span!("node_beat"),
    ));
    Ok(())
}

/// One beat: the row's time moved on (or the row made again if it was removed); the node's
/// health is what the store answered. A change of health is logged, once.
async fn beat(state: &Core) {
    let Some(row) = state.node.identity.get() else {
        return;
    };
    let now = now_ms();
    let answered = match state.store.beat(&row.id, now).await {
        Ok(true) => Ok(()),
        Ok(false) => {
            let again = NodeRow {
                heartbeat_at: now,
                ..row.clone()
            };
            state.store.register_node(&again).await
        }
        Err(e) => Err(e),
    };
    // Plans another node set, and the cluster's call counts of past minutes (any node may
    // remove them).
    let answered = match answered {
        Ok(()) if state.store.is_shared() => match state.plans.refresh(&state.store).await {
            Ok(()) => match state.store.forget_call_counts(now / 60_000 - 5).await {
                // Slots of nodes gone, and this node's of tenants it runs nothing of now.
                Ok(()) => {
                    state
                        .store
                        .reclaim_slots(
                            now - GONE_AFTER_MS,
                            &row.id,
                            &crate::calls::busy_tenants(state),
                        )
                        .await
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
        other => other,
    };
    let ok = answered.is_ok();
    if state.node.store_ok.swap(ok, Ordering::Relaxed) != ok {
        match answered {
            Ok(()) => tracing::info!("the store answers again: healthy"),
            Err(e) => {
                tracing::warn!(error = %falra_runtime::ErrorChain(&e), "the store does not answer: unhealthy")
            }
        }
    }
}

/// Every node registered in the last day, whether it is alive, and which one is this.
pub async fn list(state: &Core) -> Result<Vec<NodeStatus>, StoreError> {
    let now = now_ms();
    let this = state.node.id();
    Ok(state
        .store
        .nodes(now - FORGET_AFTER_MS)
        .await?
        .into_iter()
        .map(|row| NodeStatus {
            alive: now - row.heartbeat_at <= GONE_AFTER_MS,
            this: Some(row.id.as_str()) == this,
            row,
        })
        .collect())
}
