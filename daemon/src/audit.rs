//! `GET /admin/v1/audit`: the audit log over HTTP.
//!
//! Rows are written by `falra_core::audit::audit`; `GET /admin/v1/audit` reads them back,
//! newest first.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api_error::ApiError;
use crate::auth::Operator;
use crate::extract::ApiQuery;
use crate::server::AppState;
pub use falra_core::audit::audit;
use falra_core::clock::{format_ms, parse_rfc3339};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    tenant: Option<String>,
    /// An RFC 3339 time.
    since: Option<String>,
    /// At most this many (default 100).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<u32>,
}

/// The most events one request returns.
const MAX_EVENTS: u32 = 10_000;

/// `GET /admin/v1/audit?tenant=&since=&limit=`.
#[utoipa::path(
    get,
    path = "/admin/v1/audit",
    operation_id = "audit_list_audit",
    tag = "audit",
    summary = "Operator actions and deploys, newest first",
    params(AuditQuery),
    responses((status = 200, description = "OK", body = crate::schemas::AuditList), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn list_audit(
    _op: Operator,
    State(state): State<AppState>,
    query: Result<ApiQuery<AuditQuery>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let ApiQuery(q) = query?;
    let since = match q.since.as_deref() {
        Some(t) => parse_rfc3339(t).ok_or_else(|| {
            ApiError::bad_request(format!("since {t:?} is not an RFC 3339 time"))
                .with_detail(json!({"parameter": "since"}))
        })?,
        None => 0,
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_EVENTS).contains(&limit) {
        return Err(
            ApiError::bad_request(format!("limit must be between 1 and {MAX_EVENTS}"))
                .with_detail(json!({"parameter": "limit"})),
        );
    }
    let limit = i64::from(limit);
    let tenant = crate::extract::tenant_parameter(q.tenant.as_deref())?;
    let rows = state.store.audit(tenant.as_ref(), since, limit).await?;
    let events: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            json!({
                "id": r.id,
                "at": format_ms(r.at),
                "actor": r.actor,
                "action": r.action,
                "tenant": r.tenant,
                "detail": serde_json::from_str::<Value>(&r.detail).unwrap_or(Value::Null),
                "remote": r.remote,
            })
        })
        .collect();
    Ok(Json(json!({ "events": events })))
}

/// Records a deploy's outcome in the audit log (`<action>` or `<action>_failed`, with its
/// steps and `extra`) and turns it into the answer: `{"version", "steps"}`, or the error with
/// the steps in its detail. One place for operator syncs and pushes alike.
pub async fn audit_deploy(
    state: &AppState,
    actor: &str,
    action: &str,
    tenant: &falra_tenants::TenantName,
    outcome: Result<falra_core::deploy::Deployed, falra_core::deploy::DeployError>,
    log: &falra_core::deploy::DeployLog,
    extra: Value,
) -> Result<Value, ApiError> {
    let steps = serde_json::to_value(log.steps()).expect("steps serialise");
    let mut entry = match extra {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    entry.insert("steps".into(), steps.clone());
    match outcome {
        Ok(deployed) => {
            entry.insert("version".into(), json!(deployed.version.as_str()));
            audit(
                state,
                actor,
                action,
                Some(tenant.as_str()),
                Value::Object(entry),
            )
            .await;
            Ok(json!({"version": deployed.version.as_str(), "steps": steps}))
        }
        Err(e) => {
            let mut answer = ApiError::from(e);
            entry.insert("code".into(), json!(answer.code.as_str()));
            entry.insert(
                "error".into(),
                json!(answer.message.chars().take(2000).collect::<String>()),
            );
            let failed = format!("{action}_failed");
            audit(
                state,
                actor,
                &failed,
                Some(tenant.as_str()),
                Value::Object(entry),
            )
            .await;
            let mut detail = match answer.detail.take() {
                Some(Value::Object(map)) => map,
                Some(other) => serde_json::Map::from_iter([("cause".to_owned(), other)]),
                None => serde_json::Map::new(),
            };
            detail.insert("steps".into(), steps);
            answer.detail = Some(Value::Object(detail));
            Err(answer)
        }
    }
}
