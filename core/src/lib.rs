//! The services: what Falra does, with no HTTP in it.
//!
//! A call ([`calls`]), a deploy ([`deploy`]), a built-in job ([`builtin`]), the plans and a
//! tenant's effective policy ([`plans`]), metering and the monthly quota ([`metering`]),
//! tenant secrets ([`secrets`]), a tenant's lifecycle ([`tenants`]), the audit log ([`audit`]),
//! token checks ([`auth`]) and this node's place among the others ([`nodes`]). Each
//! takes the node's services ([`Core`]) and validated values, and returns its own error enum;
//! what a client is told of an error is decided above, in the HTTP layer, in one table. The
//! same services serve a request, a push webhook's background deploy, and (next) a jobs worker
//! with no request behind it.
//!
//! Architecture invariant: nothing here imports axum, hyper or the daemon's HTTP types, and no
//! service returns or builds an HTTP status. The store is reached only through
//! `falra_store::Store`, children only through `falra_runtime::Runtime`.

pub mod audit;
pub mod auth;
pub mod builtin;
pub mod cache;
pub mod callbacks;
pub mod calls;
pub mod clock;
pub mod config;
pub mod console;
pub mod deploy;
pub mod error_code;
pub mod jobs;
pub mod metering;
pub mod nodes;
pub mod plans;
pub mod schedules;
pub mod secrets;
pub mod tenants;
pub mod versions;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use falra_policies::admission::Admission;
use falra_policies::SecretKey;
use falra_runtime::{CodeMounts, Runtime};
use falra_store::Store;
use falra_tenants::{Layout, TenantName};

pub use config::ServiceConfig;
pub use error_code::ErrorCode;

/// Spawns `future` in `span`, so what it logs carries the span's fields.
pub(crate) fn spawn_in_span<F>(span: tracing::Span, future: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(tracing::Instrument::instrument(future, span));
}

/// Runs `tick` every `period` for as long as the services live, while the node takes work
/// (not shutting down) and its store answers.
pub(crate) fn spawn_periodic<F, Fut>(
    state: &Core,
    span: tracing::Span,
    period: std::time::Duration,
    tick: F,
) where
    F: Fn(Core) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let weak = state.downgrade();
    spawn_in_span(span, async move {
        loop {
            tokio::time::sleep(period).await;
            let Some(state) = Core::upgrade(&weak) else {
                return;
            };
            if state.is_shutting_down() || !state.node.is_healthy() {
                continue;
            }
            tick(state).await;
        }
    });
}

/// The node's services: cheap to clone, shared by every request and background task.
#[derive(Clone)]
pub struct Core(Arc<Inner>);

pub struct Inner {
    pub store: Store,
    /// Starts, supervises and pools this node's children.
    pub runtime: Runtime,
    pub layout: Layout,
    pub config: ServiceConfig,
    /// Seals and opens tenant secrets.
    pub secret_key: SecretKey,
    pub plans: plans::PlanTable,
    pub admission: Arc<Admission<TenantName>>,
    pub quotas: metering::Quotas,
    pub meter: metering::Meter,
    /// Deploys running or waiting, per tenant.
    pub deploy_slots: Arc<deploy::DeploySlots>,
    /// Set when the node stops taking calls.
    shutting_down: AtomicBool,
    /// Held while a version another node deployed is made here (`deploy::materialise`).
    pub materialising: tokio::sync::Mutex<()>,
    /// This node's identity in the store, and its health.
    pub node: nodes::Node,
    /// The call path's rows (tokens, tenants), kept while a shared store's changes are watched.
    pub cache: cache::Cache,
    /// The background jobs this node runs.
    pub jobs: jobs::Jobs,
    /// The wheels this node's builds fetched, shared by every tenant's builds.
    pub wheels: Arc<deploy::wheels::WheelCache>,
    /// Each version's virtualenv (if any), found once per version.
    venvs: Mutex<HashMap<PathBuf, Option<PathBuf>>>,
    /// Calls in flight per tenant holding (or taking) a slot in a shared store.
    slots: Mutex<HashMap<TenantName, u32>>,
    /// Calls in flight per (tenant, version): versions in use are never collected.
    versions_in_use: Mutex<HashMap<(TenantName, String), usize>>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("runtime", &self.0.runtime)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for Core {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Marks a version as in use by one call for as long as it lives.
pub struct VersionInUse {
    core: Core,
    key: (TenantName, String),
}

impl Drop for VersionInUse {
    fn drop(&mut self) {
        let mut uses = self
            .core
            .versions_in_use
            .lock()
            .expect("version table poisoned");
        if let Some(n) = uses.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                uses.remove(&self.key);
            }
        }
    }
}

impl Core {
    /// The node's services; starts the metering writer (so it needs a tokio runtime).
    pub fn new(
        store: Store,
        config: ServiceConfig,
        runtime: Runtime,
        secret_key: SecretKey,
        plans: plans::PlanTable,
    ) -> Core {
        Core(Arc::new(Inner {
            secret_key,
            plans,
            admission: Admission::new(config.max_children),
            quotas: metering::Quotas::default(),
            meter: metering::Meter::start(store.clone()),
            shutting_down: AtomicBool::new(false),
            materialising: tokio::sync::Mutex::new(()),
            node: nodes::Node::default(),
            cache: cache::Cache::default(),
            jobs: jobs::Jobs::default(),
            venvs: Mutex::new(HashMap::new()),
            wheels: Arc::new(deploy::wheels::WheelCache::new(
                config.data_dir.join("wheels"),
                config.wheel_cache_bytes,
            )),
            runtime,
            layout: Layout::new(&config.data_dir),
            store,
            config,
            deploy_slots: Arc::default(),
            versions_in_use: Mutex::new(HashMap::new()),
            slots: Mutex::new(HashMap::new()),
        }))
    }

    /// A weak handle, for node-wide loops that must not keep the services alive.
    pub fn downgrade(&self) -> std::sync::Weak<Inner> {
        Arc::downgrade(&self.0)
    }

    pub(crate) fn upgrade(weak: &std::sync::Weak<Inner>) -> Option<Core> {
        weak.upgrade().map(Core)
    }

    /// Marks `version` of `tenant` as in use until the returned guard is dropped.
    pub fn use_version(&self, tenant: &TenantName, version: &str) -> VersionInUse {
        let key = (tenant.clone(), version.to_owned());
        *self
            .versions_in_use
            .lock()
            .expect("version table poisoned")
            .entry(key.clone())
            .or_default() += 1;
        VersionInUse {
            core: self.clone(),
            key,
        }
    }

    pub fn version_in_use(&self, tenant: &TenantName, version: &str) -> bool {
        self.versions_in_use
            .lock()
            .expect("version table poisoned")
            .contains_key(&(tenant.clone(), version.to_owned()))
    }

    /// From now on, calls are refused as `shutting_down`.
    pub fn stop_taking_calls(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// The virtualenv of the version at `code` is built (or found): its calls see it.
    pub(crate) fn venv_ready(&self, code: &std::path::Path, venv: &std::path::Path) {
        self.venvs
            .lock()
            .expect("venv table poisoned")
            .insert(code.to_path_buf(), Some(venv.to_path_buf()));
    }

    /// What a call of the version at `code` sees: the tree and its virtualenv, if any.
    pub fn code_mounts(&self, code: PathBuf) -> CodeMounts {
        let known = self
            .venvs
            .lock()
            .expect("venv table poisoned")
            .get(&code)
            .cloned();
        let venv = match known {
            Some(venv) => venv,
            None => {
                // Not built (yet) is remembered as none too: the build says when it is
                // (`venv_ready`).
                let venv = deploy::venv_for(self, &code).filter(|v| v.is_dir());
                let mut table = self.venvs.lock().expect("venv table poisoned");
                if table.len() > 10_000 {
                    table.clear();
                }
                table.insert(code.clone(), venv.clone());
                venv
            }
        };
        CodeMounts { code, venv }
    }
}
