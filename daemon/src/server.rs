//! The HTTP server: shared state, the route table, and serving until shutdown.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use falra_policies::admission::{Admission, FailureLimiter};
use falra_policies::SecretKey;
use falra_tenants::{Layout, TenantName};
use serde_json::{json, Value};
use tracing::Instrument;

use crate::api_error::{ApiError, ErrorCode};
use crate::metering::{Meter, Quotas};
use crate::metrics::Metrics;
use crate::plans::PlanTable;
use crate::store::Store;
use crate::{
    admin, audit, call, hooks, metering, metrics, openapi, plans, secrets, tenant_api, uploads,
};
use falra_runtime::prestart::{Fresh, PrestartPool};
use falra_runtime::{CodeMounts, Runtime, RuntimeConfig, SandboxSettings, Starter};

pub use crate::config::ServeConfig;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub store: Store,
    /// Starts, supervises and pools this node's children.
    pub runtime: Runtime,
    pub layout: Layout,
    pub config: ServeConfig,
    /// Seals and opens tenant secrets.
    pub secret_key: SecretKey,
    pub plans: PlanTable,
    pub admission: Arc<Admission<TenantName>>,
    pub auth_failures: FailureLimiter<IpAddr>,
    pub quotas: Quotas,
    pub meter: Meter,
    pub metrics: Metrics,
    /// Set when the daemon stops taking calls.
    shutting_down: AtomicBool,
    /// Each version's virtualenv (if any), found once per version.
    venvs: Mutex<HashMap<PathBuf, Option<PathBuf>>>,
    /// Deploys running or waiting, per tenant.
    pub deploy_slots: Arc<crate::deploy::DeploySlots>,
    /// Push deliveries already taken (`X-GitHub-Delivery`), so a replay starts nothing.
    pub deliveries: crate::hooks::RecentDeliveries,
    /// Calls in flight per (tenant, version): versions in use are never collected.
    versions_in_use: Mutex<HashMap<(TenantName, String), usize>>,
}

/// Marks a version as in use by one call for as long as it lives.
pub struct VersionInUse {
    state: AppState,
    key: (TenantName, String),
}

impl Drop for VersionInUse {
    fn drop(&mut self) {
        let mut uses = self
            .state
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

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// The daemon's state; starts the metering writer (so it needs a runtime).
    pub fn new(
        store: Store,
        config: ServeConfig,
        sandbox: SandboxSettings,
        secret_key: SecretKey,
        plans: PlanTable,
        prewarm: bool,
    ) -> AppState {
        let starter: Box<dyn Starter> = if prewarm {
            Box::new(PrestartPool::default())
        } else {
            Box::new(Fresh)
        };
        let runtime = Runtime::new(
            RuntimeConfig {
                python: config.python.clone(),
                runner_dir: config.runner_dir.clone(),
                max_result_bytes: config.max_result_bytes,
                max_log_bytes: config.max_log_bytes,
                egress: config.egress.clone(),
            },
            sandbox,
            starter,
        );
        AppState(Arc::new(Inner {
            secret_key,
            plans,
            admission: Admission::new(config.max_children),
            auth_failures: FailureLimiter::new(config.auth_failures_per_minute),
            quotas: Quotas::default(),
            meter: Meter::start(store.clone()),
            metrics: Metrics::default(),
            shutting_down: AtomicBool::new(false),
            venvs: Mutex::new(HashMap::new()),
            runtime,
            layout: Layout::new(&config.data_dir),
            store,
            config,
            deploy_slots: Arc::default(),
            deliveries: crate::hooks::RecentDeliveries::default(),
            versions_in_use: Mutex::new(HashMap::new()),
        }))
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
            state: self.clone(),
            key,
        }
    }

    pub fn version_in_use(&self, tenant: &TenantName, version: &str) -> bool {
        self.versions_in_use
            .lock()
            .expect("version table poisoned")
            .contains_key(&(tenant.clone(), version.to_owned()))
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
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
                let venv = crate::deploy::venv_for(self, &code).filter(|v| v.is_dir());
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

pub fn router(state: AppState) -> Router {
    let admin = Router::new()
        .route(
            "/tenants",
            post(admin::create_tenant).get(admin::list_tenants),
        )
        .route(
            "/tenants/{name}",
            get(admin::show_tenant)
                .patch(admin::update_tenant)
                .delete(admin::delete_tenant),
        )
        .route("/tenants/{name}/sync", post(admin::sync_tenant))
        .route("/tenants/{name}/rollback", post(admin::rollback_tenant))
        .route(
            "/tenants/{name}/tokens",
            post(admin::issue_token).get(admin::list_tokens),
        )
        .route("/tenants/{name}/policy", put(admin::set_policy))
        .route("/tenants/{name}/secrets", get(secrets::list_secrets))
        .route(
            "/tenants/{name}/secrets/{key}",
            put(secrets::put_secret).delete(secrets::delete_secret),
        )
        .route("/tenants/{name}/modules", get(uploads::admin_list))
        .route(
            "/tenants/{name}/modules/{module}",
            put(uploads::admin_put).delete(uploads::admin_delete),
        )
        .route("/tokens/{id}", delete(admin::revoke_token))
        .route("/plans", get(plans::list_plans))
        .route(
            "/plans/{name}",
            put(plans::put_plan).delete(plans::delete_plan),
        )
        .route("/usage", get(metering::usage))
        .route("/audit", get(audit::list_audit));
    Router::new()
        .route("/v1/call", post(call::call))
        .route("/v1/versions", get(tenant_api::list_versions))
        .route("/v1/functions", get(tenant_api::list_functions))
        .route("/v1/modules", get(uploads::tenant_list))
        .route(
            "/v1/modules/{module}",
            put(uploads::tenant_put).delete(uploads::tenant_delete),
        )
        .route("/hooks/github/{tenant}", post(hooks::github))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::metrics))
        .route("/openapi.json", get(openapi::document))
        .nest("/admin/v1", admin)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(request_span))
        .with_state(state)
}

async fn healthz() -> Json<Value> {
    Json(json!({"ok": true}))
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this endpoint does not accept that method",
    )
}

tokio::task_local! {
    /// The client's address, for the request being handled.
    static CLIENT: Option<SocketAddr>;
}

/// The address of the client whose request is being handled, if known.
pub fn client_addr() -> Option<IpAddr> {
    CLIENT.try_with(|c| c.map(|a| a.ip())).ok().flatten()
}

/// One span per request, with the fields later stages fill in (call id, tenant, fn), and the
/// client's address within reach of the handlers.
async fn request_span(req: Request, next: Next) -> Response {
    let client = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        call_id = tracing::field::Empty,
        tenant = tracing::field::Empty,
        fn = tracing::field::Empty,
        version = tracing::field::Empty,
        token_id = tracing::field::Empty,
    );
    CLIENT
        .scope(
            client,
            async move {
                let response = next.run(req).await;
                tracing::debug!(status = response.status().as_u16(), "answered");
                response
            }
            .instrument(span),
        )
        .await
}

/// Serves until SIGINT or SIGTERM, then lets in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    limits: crate::front::FrontLimits,
) -> std::io::Result<()> {
    state.runtime.start_upkeep();
    let stopping = state.clone();
    let stop = async move {
        shutdown_signal().await;
        // Requests still arriving on open connections are told, not started.
        stopping.shutting_down.store(true, Ordering::Relaxed);
        tracing::info!("shutting down: finishing calls in flight");
    };
    crate::front::serve(
        listener,
        router(state.clone()),
        limits,
        stop,
        std::time::Duration::from_secs(SHUTDOWN_GRACE_SECS),
        || {
            state
                .metrics
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
        },
    )
    .await;
    state.runtime.drain();
    state.meter.flush().await;
    Ok(())
}

/// How long requests in flight at shutdown may take to finish.
const SHUTDOWN_GRACE_SECS: u64 = 300;

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
