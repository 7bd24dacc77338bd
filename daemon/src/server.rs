//! The HTTP server: shared state, the route table, and serving until shutdown.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::Request;
use axum::extract::State;
use axum::middleware::Next;
use axum::response::Response;
use axum::{Json, Router};
use falra_core::plans::PlanTable;
use falra_core::Core;
use falra_policies::admission::FailureLimiter;
use falra_policies::SecretKey;
use serde_json::{json, Value};
use tracing::Instrument;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api_error::{ApiError, ErrorCode};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::{
    admin, audit, call, call_logs, console, hooks, jobs, metering, metrics, openapi, plans,
    schedules, secrets, tenant_api, uploads,
};
use falra_runtime::prestart::{Fresh, PrestartPool};
use falra_runtime::{Runtime, SandboxSettings, Starter};

pub use crate::config::ServeConfig;

/// What the HTTP layer holds: the node's services, and what only the network edge needs.
#[derive(Clone)]
pub struct AppState {
    core: Core,
    http: Arc<Http>,
}

/// The HTTP layer's own state.
pub struct Http {
    pub config: ServeConfig,
    pub auth_failures: FailureLimiter<IpAddr>,
    pub metrics: Metrics,
    /// Push deliveries already taken (`X-GitHub-Delivery`), so a replay starts nothing.
    pub deliveries: crate::hooks::RecentDeliveries,
}

/// Handlers reach the services as if they were the state's own fields (`state.store`), and
/// pass `&state` wherever a service takes `&Core`.
impl std::ops::Deref for AppState {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
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
        let runtime = Runtime::new(config.service.runtime(), sandbox, starter);
        let core = Core::new(store, config.service.clone(), runtime, secret_key, plans);
        AppState {
            core,
            http: Arc::new(Http {
                auth_failures: FailureLimiter::new(config.auth_failures_per_minute),
                metrics: Metrics::default(),
                deliveries: crate::hooks::RecentDeliveries::default(),
                config,
            }),
        }
    }

    /// The HTTP layer's own state.
    pub fn http(&self) -> &Http {
        &self.http
    }
}

/// Every route, each registered with its OpenAPI operation (`#[utoipa::path]` on the
/// handler): the router and the document are made from the same list, so no route can be left
/// out of the document and no documented operation can be missing from the router.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(call::call))
        .routes(routes!(call_logs::tenant_show))
        .routes(routes!(call_logs::admin_show))
        .routes(routes!(call_logs::admin_list))
        .routes(routes!(call_logs::admin_follow))
        .routes(routes!(jobs::submit, jobs::list))
        .routes(routes!(jobs::show, jobs::cancel))
        .routes(routes!(jobs::admin_list))
        .routes(routes!(jobs::admin_show, jobs::admin_cancel))
        .routes(routes!(schedules::create, schedules::list))
        .routes(routes!(schedules::show, schedules::remove))
        .routes(routes!(schedules::pause))
        .routes(routes!(schedules::resume))
        .routes(routes!(tenant_api::list_versions))
        .routes(routes!(tenant_api::admin_list_versions))
        .routes(routes!(tenant_api::admin_list_functions))
        .routes(routes!(tenant_api::list_functions))
        .routes(routes!(uploads::tenant_list))
        .routes(routes!(uploads::tenant_put, uploads::tenant_delete))
        .routes(routes!(hooks::github))
        .routes(routes!(healthz))
        .routes(routes!(metrics::metrics))
        .routes(routes!(openapi::document))
        .routes(routes!(admin::create_tenant, admin::list_tenants))
        .routes(routes!(
            admin::show_tenant,
            admin::update_tenant,
            admin::delete_tenant
        ))
        .routes(routes!(admin::sync_tenant))
        .routes(routes!(admin::rollback_tenant))
        .routes(routes!(admin::issue_token, admin::list_tokens))
        .routes(routes!(admin::set_policy))
        .routes(routes!(secrets::list_secrets))
        .routes(routes!(secrets::put_secret, secrets::delete_secret))
        .routes(routes!(uploads::admin_list))
        .routes(routes!(uploads::admin_put, uploads::admin_delete))
        .routes(routes!(admin::revoke_token))
        .routes(routes!(admin::list_operator_tokens))
        .routes(routes!(admin::set_env, admin::show_env))
        .routes(routes!(plans::list_plans))
        .routes(routes!(plans::put_plan, plans::delete_plan))
        .routes(routes!(metering::usage))
        .routes(routes!(metering::stats))
        .routes(routes!(admin::list_nodes))
        .routes(routes!(audit::list_audit))
        .routes(routes!(console::index))
        .routes(routes!(console::asset))
        .routes(routes!(
            console::sign_in,
            console::show_session,
            console::sign_out
        ))
}

pub fn router(state: AppState) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(request_span))
        .with_state(state)
}

/// Healthy while the store answers this node's beat (`falra_core::nodes`); `503` otherwise, so
/// a load balancer sends calls to the nodes that can authorise them.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "server_healthz",
    tag = "node",
    summary = "Health: the node and its store",
    responses((status = 200, description = "OK", body = crate::schemas::Health), (status = 503, description = "The store does not answer this node", body = crate::schemas::Health))
)]
async fn healthz(State(state): State<AppState>) -> (axum::http::StatusCode, Json<Value>) {
    let node = state.node.id();
    if state.node.is_healthy() {
        (
            axum::http::StatusCode::OK,
            Json(json!({"ok": true, "store": "ok", "node": node})),
        )
    } else {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ok": false, "store": "unreachable", "node": node})),
        )
    }
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

/// The address of the client whose request is being handled, if known.
pub fn client_addr() -> Option<IpAddr> {
    falra_core::audit::origin()
}

/// One span per request, with the fields later stages fill in (call id, tenant, fn), and the
/// client's address within reach of the handlers.
async fn request_span(req: Request, next: Next) -> Response {
    let client = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
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
    falra_core::audit::with_origin(
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

/// Serves until SIGINT or SIGTERM, then lets in-flight requests finish for `grace`; a second
/// signal ends the wait at once. Calls still running then are stopped with the runtime.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    limits: crate::front::FrontLimits,
    grace: std::time::Duration,
) -> std::io::Result<()> {
    state.runtime.start_upkeep();
    let signals = Signals::listen()?;
    let mut first = signals.clone();
    let mut second = signals;
    let stopping = state.clone();
    let stop = async move {
        first.reached(1).await;
        // Requests still arriving on open connections are told, not started; running jobs
        // go back to the queue for the other nodes (or this one's next start).
        stopping.stop_taking_calls();
        falra_core::jobs::hand_back(&stopping).await;
        tracing::info!(
            grace_secs = grace.as_secs(),
            "shutting down: finishing calls in flight"
        );
    };
    let deadline_state = state.clone();
    let deadline = async move {
        tokio::select! {
            () = tokio::time::sleep(grace) => {
                tracing::warn!("the shutdown grace period is over: stopping the calls still running");
            }
            () = second.reached(2) => {
                tracing::warn!("a second signal: stopping the calls still running now");
            }
        }
        // Their children are killed; each call answers 503 and is metered, if its client
        // is still there to take the answer within a moment.
        deadline_state.runtime.stop_calls();
        tokio::time::sleep(STOPPED_CALLS_ANSWER).await;
    };
    crate::front::serve(
        listener,
        router(state.clone()),
        limits,
        stop,
        deadline,
        || {
            state
                .http
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

/// How long calls stopped at the shutdown deadline have to send their answers.
const STOPPED_CALLS_ANSWER: std::time::Duration = std::time::Duration::from_secs(2);

/// SIGINT and SIGTERM counted from the start: the first stops the node taking work, the
/// second ends the grace period. Listening begins before serving, so no signal is missed
/// between the two.
#[derive(Clone)]
struct Signals(tokio::sync::watch::Receiver<u32>);

impl Signals {
    fn listen() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let (tx, rx) = tokio::sync::watch::channel(0u32);
        tokio::spawn(async move {
            // The first stops the node taking work, the second the grace period; a third,
            // should the rest of the stop hang, ends the process there and then.
            for n in 1.. {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
                tracing::info!(signal = n, "shutdown signal");
                if n >= 3 {
                    tracing::warn!("a third signal: exiting now");
                    std::process::exit(130);
                }
                let _ = tx.send(n);
            }
        });
        Ok(Signals(rx))
    }

    /// Returns once `n` signals have come.
    async fn reached(&mut self, n: u32) {
        if self.0.wait_for(|seen| *seen >= n).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
