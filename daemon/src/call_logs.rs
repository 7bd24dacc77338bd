//! Recorded calls and their logs over HTTP: `GET /v1/calls/{call_id}` for the tenant's own
//! tokens, `GET /admin/v1/calls/{call_id}` for operators, and
//! `GET /admin/v1/tenants/{name}/calls/follow`, a server-sent event per new call of a tenant
//! (what `falra logs --follow` prints). What is kept, and for how long, is
//! `falra_core::calls::record`'s and the tenant's policy's (`log_retention_hours`, `log_mb`).

use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use falra_core::clock::{format_ms, now_ms};
use falra_policies::Scope;
use falra_sandbox::logs::Logs;
use falra_store::{CallFilter, CallView, OutcomeFilter};
use falra_tenants::TenantName;
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};

use crate::admin::load_tenant;
use crate::api_error::ApiError;
use crate::auth::{tenant_caller_any, Operator};
use crate::extract::{bearer, ApiPath, ApiQuery};
use crate::server::AppState;

/// How often a follow looks for new calls.
const FOLLOW_POLL: Duration = Duration::from_millis(500);
/// Calls one page of a look reads.
const FOLLOW_BATCH: i64 = 100;
/// Pages of new calls one look reads, at most (the rest wait for the next look).
const FOLLOW_PAGES: usize = 20;
/// How far behind the newest call read each look checks again: a call is recorded by its
/// node's meter after it is answered, stamped with that node's clock, so a call of another
/// node (or one whose meter was slow to write) can land behind calls already read. Each is
/// still shown once: the ids seen within the window are kept.
const FOLLOW_LAG_MS: i64 = 10_000;
/// Keys one look checks again, at most (ids only, no logs): the window of a tenant busier
/// than this is checked in part.
const FOLLOW_RECHECK: i64 = 2_000;

/// Where a follow stands: how far it has read, and the calls it has seen within the lag
/// window behind that.
struct Followed {
    started_at: i64,
    /// The last call read in order (`(at, call_id)`); the next look reads on from there.
    cursor: (i64, String),
    seen: std::collections::HashMap<String, i64>,
}

impl Followed {
    fn new(now: i64) -> Followed {
        Followed {
            started_at: now,
            cursor: (now, String::new()),
            seen: std::collections::HashMap::new(),
        }
    }

    /// The calls of one look not shown yet: those recorded late behind the cursor, then the
    /// new ones after it, oldest first. A store that does not answer now may at the next look.
    async fn look(&mut self, state: &AppState, tenant: &TenantName) -> Vec<CallView> {
        let mut fresh = Vec::new();
        let from = (self.cursor.0 - FOLLOW_LAG_MS).max(self.started_at);
        let behind = state
            .store
            .call_keys_between(
                tenant,
                (from, ""),
                (self.cursor.0, &self.cursor.1),
                FOLLOW_RECHECK,
            )
            .await
            .unwrap_or_default();
        for (at, id) in behind {
            if self.seen.contains_key(&id) {
                continue;
            }
            if let Ok(Some(v)) = state.store.call_view(Some(tenant), &id).await {
                self.seen.insert(id, at);
                fresh.push(v);
            }
        }
        for _ in 0..FOLLOW_PAGES {
            let page = state
                .store
                .calls_after(tenant, self.cursor.0, &self.cursor.1, FOLLOW_BATCH)
                .await
                .unwrap_or_default();
            let full = page.len() as i64 == FOLLOW_BATCH;
            for v in page {
                self.cursor = (v.at, v.call_id.clone());
                if self.seen.insert(v.call_id.clone(), v.at).is_none() {
                    fresh.push(v);
                }
            }
            if !full {
                break;
            }
        }
        let horizon = self.cursor.0 - FOLLOW_LAG_MS;
        self.seen.retain(|_, at| *at >= horizon);
        fresh
    }
}

/// A call as the API shows it.
pub fn call_json(v: &CallView) -> Value {
    let logs = v.logs.clone().map(Logs::from_stored);
    let ok = v.outcome == "ok";
    json!({
        "call_id": v.call_id,
        "tenant": v.tenant,
        "fn": v.function,
        "version": v.version,
        "status": if ok { "succeeded" } else { "failed" },
        "error": (!ok).then(|| json!({"code": v.outcome, "message": v.error})),
        "usage": {
            "wall_ms": v.wall_ms,
            "cpu_ms": v.cpu_ms,
            "peak_memory_bytes": v.peak_memory_bytes,
        },
        "at": format_ms(v.at),
        "logs": logs.as_ref().map(Logs::text).unwrap_or_default(),
        "lines": logs.as_ref().map(Logs::lines).unwrap_or_default(),
    })
}

fn check_call_id(id: &str) -> Result<(), ApiError> {
    let ok =
        id.len() == 18 && id.starts_with("c_") && id[2..].bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{:?} is not a call id (c_ and 16 hex digits, as answers carry it)",
            id.chars().take(40).collect::<String>()
        ))
        .with_detail(json!({"parameter": "call_id"})))
    }
}

async fn lookup(
    state: &AppState,
    tenant: Option<&TenantName>,
    id: &str,
) -> Result<Json<Value>, ApiError> {
    check_call_id(id)?;
    // This node's own calls are written off the call path: in the store once flushed.
    state.meter.flush().await;
    let view = state.store.call_view(tenant, id).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "no call {id:?}{}",
            if tenant.is_some() {
                " of this tenant"
            } else {
                ""
            }
        ))
    })?;
    Ok(Json(call_json(&view)))
}

/// `GET /v1/calls/{call_id}`.
#[utoipa::path(
    get,
    path = "/v1/calls/{call_id}",
    operation_id = "calls_show",
    tag = "calls",
    summary = "A call of the caller's tenant: status, error, usage and logs",
    params(("call_id" = String, Path, description = "The call's id, from its answer")),
    responses((status = 200, description = "The call", body = crate::schemas::CallRecordView), (status = 400, description = "Not a call id", body = crate::schemas::Error), (status = 404, description = "not_found", body = crate::schemas::Error), crate::schemas::TenantErrors),
    security(("tenant" = []))
)]
pub async fn tenant_show(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = tenant_caller_any(&state, bearer(&headers), &Scope::ALL).await?;
    lookup(&state, Some(&caller.tenant), &id).await
}

/// `GET /admin/v1/calls/{call_id}`.
#[utoipa::path(
    get,
    path = "/admin/v1/calls/{call_id}",
    operation_id = "admin_show_call",
    tag = "calls",
    summary = "Any tenant's call: status, error, usage and logs",
    params(("call_id" = String, Path, description = "The call's id, from its answer")),
    responses((status = 200, description = "The call", body = crate::schemas::CallRecordView), (status = 400, description = "Not a call id", body = crate::schemas::Error), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn admin_show(
    _op: Operator,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    lookup(&state, None, &id).await
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Of this tenant only.
    tenant: Option<String>,
    /// `succeeded` or `failed`.
    #[param(pattern = "^(succeeded|failed)$")]
    status: Option<String>,
    /// Failed with this error code (`timeout`, `function_error`, …).
    code: Option<String>,
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// `GET /admin/v1/calls?tenant=&status=&code=&limit=&cursor=`: recorded calls, newest first.
#[utoipa::path(
    get,
    path = "/admin/v1/calls",
    operation_id = "admin_list_calls",
    tag = "calls",
    summary = "Recorded calls of every tenant or one, newest first, by status or error code",
    params(ListQuery),
    responses((status = 200, description = "A page of calls (without their logs)", body = crate::schemas::CallList), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn admin_list(
    _op: Operator,
    State(state): State<AppState>,
    query: Result<ApiQuery<ListQuery>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let ApiQuery(q) = query?;
    let bad = |parameter: &str, message: String| {
        ApiError::bad_request(message).with_detail(json!({ "parameter": parameter }))
    };
    let tenant = crate::extract::tenant_parameter(q.tenant.as_deref())?;
    let outcome = match (q.status.as_deref(), q.code.as_deref()) {
        (_, Some(code)) => {
            let known = falra_core::ErrorCode::ALL
                .iter()
                .any(|c| c.as_str() == code);
            if !known {
                return Err(bad(
                    "code",
                    format!(
                        "{:?} is not an error code (docs/api.md lists them)",
                        code.chars().take(40).collect::<String>()
                    ),
                ));
            }
            if q.status.as_deref() == Some("succeeded") {
                return Err(bad(
                    "code",
                    "a call with an error code did not succeed: drop status or code".into(),
                ));
            }
            OutcomeFilter::Code(code.to_owned())
        }
        (Some("succeeded"), None) => OutcomeFilter::Ok,
        (Some("failed"), None) => OutcomeFilter::Failed,
        (Some(other), None) => {
            return Err(bad(
                "status",
                format!(
                    "status {:?} is not succeeded or failed",
                    other.chars().take(40).collect::<String>()
                ),
            ))
        }
        (None, None) => OutcomeFilter::Any,
    };
    let (limit, before) = crate::extract::page_parameters(q.limit, q.cursor.as_deref(), |id| {
        check_call_id(id).is_ok()
    })?;
    state.meter.flush().await;
    let page = state
        .store
        .calls_page(&CallFilter {
            tenant,
            outcome,
            before,
            limit,
        })
        .await?;
    let next = crate::extract::next_cursor(
        page.len(),
        limit,
        page.last().map(|c| (c.at, c.call_id.as_str())),
    );
    let calls: Vec<Value> = page
        .iter()
        .map(|v| {
            let mut shown = call_json(v);
            if let Some(map) = shown.as_object_mut() {
                map.remove("logs");
                map.remove("lines");
            }
            shown
        })
        .collect();
    Ok(Json(json!({ "calls": calls, "next_cursor": next })))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FollowQuery {
    /// How long the stream stays open, in seconds (default 3600); follow again after.
    #[param(minimum = 1, maximum = 86400)]
    seconds: Option<u32>,
}

/// `GET /admin/v1/tenants/{name}/calls/follow`: every call of the tenant recorded from now on,
/// one server-sent event (`call`, its data the call as `GET /admin/v1/calls/{id}` shows it)
/// each, once, on every node of the store: in the order recorded, but for a call another
/// node recorded late, which comes when it lands.
#[utoipa::path(
    get,
    path = "/admin/v1/tenants/{name}/calls/follow",
    operation_id = "admin_follow_calls",
    tag = "calls",
    summary = "Follow a tenant's calls and their logs live (server-sent events)",
    params(("name" = String, Path, description = "A tenant name"), FollowQuery),
    responses((status = 200, description = "One `call` event per new call", content_type = "text/event-stream", body = String), (status = 400, description = "A bad parameter", body = crate::schemas::Error), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn admin_follow(
    _op: Operator,
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    query: Result<ApiQuery<FollowQuery>, ApiError>,
) -> Result<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>, ApiError> {
    let ApiQuery(query) = query?;
    let seconds = query.seconds.unwrap_or(3600);
    if !(1..=86_400).contains(&seconds) {
        return Err(
            ApiError::bad_request(format!("seconds must be 1–86400, got {seconds}"))
                .with_detail(json!({"parameter": "seconds"})),
        );
    }
    let (tenant, _) = load_tenant(&state, &name).await?;
    let until = tokio::time::Instant::now() + Duration::from_secs(u64::from(seconds));
    let events = stream::unfold(
        (state, tenant, Followed::new(now_ms())),
        move |(state, tenant, mut followed)| async move {
            if tokio::time::Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(FOLLOW_POLL).await;
            state.meter.flush().await;
            let found = followed.look(&state, &tenant).await;
            let batch: Vec<Result<Event, std::convert::Infallible>> = found
                .iter()
                .map(|v| {
                    Ok(Event::default()
                        .event("call")
                        .id(v.call_id.clone())
                        .data(call_json(v).to_string()))
                })
                .collect();
            Some((stream::iter(batch), (state, tenant, followed)))
        },
    )
    .flatten();
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
