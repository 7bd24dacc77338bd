//! The node runtime: everything about tenants' children that is local to this host and knows
//! nothing of the store or of HTTP.
//!
//! It is told a uid, a version's directories and a policy, and it starts a child for them,
//! runs it to its end and reads what it used. Under that one API sit the host's state the
//! children share: the call cgroups ([`cgroup_pool`]), the tenants' network namespaces and
//! mount templates ([`isolation`]), the egress gateways serving those namespaces
//! ([`gateway`]), and the way a call's child is started ([`Starter`]): prepared ahead by the
//! [`prestart`] pool, or started when asked ([`prestart::Fresh`]); either way a call's process
//! is forked from the node's warm interpreter ([`zygotes`]) where it can be, exec'd otherwise.
//!
//! Architecture invariant: this crate never names a tenant (only its uid), never reads or
//! writes the store, and never speaks HTTP. Its errors say what the node could not do; the
//! layer above decides what a client is told.

pub mod cgroup_pool;
pub mod child;
mod error_chain;
pub mod gateway;
pub mod isolation;
pub mod preloads;
pub mod prestart;
pub mod task;
pub mod zygotes;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use falra_policies::Policy;
use falra_sandbox::setup::SetupLimits;
use falra_sandbox::Limits;

pub use child::{Child, ChildStage, Ran, RunError};
pub use error_chain::ErrorChain;
pub use isolation::{CodeMounts, SandboxSettings};
pub use prestart::{CallChild, ChildKey, Starter};

/// What the runtime needs to know of the daemon's settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The interpreter every call runs (never a shell shim: it must run inside the sandbox).
    pub python: PathBuf,
    /// Where the compiled runner was installed (`falra_sandbox::runner::install`).
    pub runner_dir: PathBuf,
    /// The most a child may write on stdout (its answer) and on stderr (its logs).
    pub max_result_bytes: usize,
    pub max_log_bytes: usize,
    /// The address rule the egress gateways apply.
    pub egress: falra_policies::address::Egress,
    /// Fork calls' processes from a zygote (`--no-zygote`: exec each one, and no preload
    /// zygotes either).
    pub zygote: bool,
    /// The most preload zygotes this node keeps, and the most resident memory they may take
    /// together (past either, the least recently used goes).
    pub preload_zygotes: usize,
    pub preload_memory_bytes: u64,
}

/// Events the runtime counts for the node's metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Children the sandbox could not start.
    pub sandbox_failures: AtomicU64,
    /// Connections the egress gateways refused.
    pub egress_refused: AtomicU64,
}

/// The node runtime: cheap to clone, shared by every call, deploy and built-in of the node.
#[derive(Clone)]
pub struct Runtime(Arc<Inner>);

pub struct Inner {
    pub config: RuntimeConfig,
    pub sandbox: SandboxSettings,
    pub gateways: gateway::Gateways,
    pub counters: Counters,
    pub zygotes: zygotes::Zygotes,
    pub preloads: preloads::Preloads,
    starter: Box<dyn Starter>,
    /// Set at the shutdown deadline: every call's child still running is stopped.
    stopping: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("sandbox", &self.0.sandbox)
            .field("starter", &self.0.starter)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for Runtime {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Runtime {
    /// The runtime of this node; calls' children are started by `starter`.
    pub fn new(
        config: RuntimeConfig,
        sandbox: SandboxSettings,
        starter: Box<dyn Starter>,
    ) -> Runtime {
        let zygotes = zygotes::Zygotes::new(
            config.zygote && sandbox.is_enabled(),
            config.python.clone(),
            config.runner_dir.clone(),
        );
        let preloads = preloads::Preloads::new(
            config.zygote && sandbox.is_enabled(),
            config.preload_zygotes,
            config.preload_memory_bytes,
        );
        Runtime(Arc::new(Inner {
            zygotes,
            preloads,
            config,
            sandbox,
            gateways: gateway::Gateways::default(),
            counters: Counters::default(),
            starter,
            stopping: tokio::sync::watch::channel(false).0,
        }))
    }

    /// Stops every call's child still running (the node's shutdown deadline has come): each
    /// call then answers that the node is shutting down, and is metered as it ended.
    pub fn stop_calls(&self) {
        self.stopping.send_replace(true);
    }

    /// Whether [`Runtime::stop_calls`] was called.
    pub fn is_stopping_calls(&self) -> bool {
        *self.stopping.borrow()
    }

    /// A weak handle, for tasks that must not keep the runtime alive.
    pub fn downgrade(&self) -> Weak<Inner> {
        Arc::downgrade(&self.0)
    }

    pub(crate) fn upgrade(weak: &Weak<Inner>) -> Option<Runtime> {
        weak.upgrade().map(Runtime)
    }

    /// Starts background upkeep (the starter's), until the runtime is dropped.
    pub fn start_upkeep(&self) {
        self.starter.start_upkeep(self);
        if self.zygotes.enabled() {
            // Ready before the first call, rather than started by it.
            let runtime = self.clone();
            crate::task::spawn(async move {
                runtime.zygotes.get().await;
            });
        }
        let weak = self.downgrade();
        crate::task::spawn(async move {
            loop {
                tokio::time::sleep(preloads::IDLE / 10).await;
                let Some(runtime) = Runtime::upgrade(&weak) else {
                    return;
                };
                runtime.preloads.expire();
            }
        });
    }

    /// A child for one call, waiting for its request: from the starter (prepared ahead where
    /// it keeps children, started now otherwise).
    pub async fn start_call(&self, request: CallChild) -> Result<Child, RunError> {
        self.starter.start(self, request).await
    }

    /// Sets up and starts `stage` for the tenant with `uid`, up to where it waits for its
    /// stdin: a built-in's, a listing's, a compile's or a build's child.
    pub async fn prepare(
        &self,
        uid: u32,
        mounts: &CodeMounts,
        policy: &Policy,
        stage: ChildStage,
    ) -> Result<Child, RunError> {
        child::prepare(self, uid, mounts, policy, stage).await
    }

    /// The supervision limits of one child with the given deadline (`0`: none but the caller's).
    pub fn limits(&self, timeout_ms: u32) -> Limits {
        Limits {
            wall: Duration::from_millis(timeout_ms.into()),
            stdout_bytes: self.config.max_result_bytes,
            stderr_bytes: self.config.max_log_bytes,
            setup: SetupLimits::default(),
            progress: None,
            // Stopped at the node's shutdown deadline (a job's own cancel replaces it: running
            // jobs were handed back to the queue before).
            cancel: Some(self.stopping.subscribe()),
        }
    }

    /// Children the starter holds ready.
    pub fn ready_count(&self) -> usize {
        self.starter.ready_count()
    }

    /// Whether the starter holds a child for `version` of the tenant with `uid`.
    pub fn holds_version(&self, uid: u32, version: &str) -> bool {
        self.starter.holds_version(uid, version)
    }

    /// Forgets everything kept for a removed tenant: ready children, its network namespace,
    /// mount templates, idle cgroups and its gateway.
    pub fn forget_tenant(&self, uid: u32) {
        self.starter.forget_uid(uid);
        self.preloads.forget_where(|k| k.uid == uid);
        self.sandbox.forget_tenant(uid);
        self.gateways.forget(uid);
    }

    /// Forgets what was kept for the tenant's versions other than `active` (after a deploy or
    /// a rollback they would only wait for calls pinned to an old version).
    pub fn forget_other_versions(&self, uid: u32, active: &str) {
        self.starter.forget_other_versions(uid, active);
        self.preloads
            .forget_where(|k| k.uid == uid && k.version != active);
        self.sandbox.forget_templates_except(uid, active);
    }

    /// Stops every child kept ready (at shutdown).
    pub fn drain(&self) {
        self.starter.drain();
        self.zygotes.stop();
        self.preloads.forget_where(|_| true);
    }

    pub(crate) fn count_sandbox_failure(&self) {
        self.counters
            .sandbox_failures
            .fetch_add(1, Ordering::Relaxed);
    }
}
