//! The audit log: every operator action and every deploy, with who, what, when and from where.
//!
//! Handlers call [`audit`] after an action succeeded; the row names the acting token (an
//! operator's, a tenant's deploy token, or `webhook`), the action (`tenant.create`,
//! `token.issue`, `deploy.upload`, …), the tenant, a JSON detail that never holds a secret, and
//! the client's address. `GET /admin/v1/audit` reads it back, newest first.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api_error::ApiError;
use crate::auth::Operator;
use crate::clock::{format_ms, now_ms, parse_rfc3339};
use crate::extract::ApiQuery;
use crate::server::{client_addr, AppState};
use crate::store::AuditRow;

/// Records one action. A store failure is logged, not returned: the action already happened.
pub async fn audit(
    state: &AppState,
    actor: &str,
    action: &str,
    tenant: Option<&str>,
    detail: Value,
) {
    let mut id = [0u8; 8];
    getrandom::getrandom(&mut id).expect("the operating system's random source failed");
    let row = AuditRow {
        id: format!("ev_{}", hex::encode(id)),
        at: now_ms(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        tenant: tenant.map(str::to_owned),
        detail: detail.to_string(),
        remote: client_addr().map(|a| a.to_string()),
    };
    if let Err(e) = state.store.insert_audit(&row).await {
        tracing::error!(error = %crate::api_error::ErrorChain(&e), action, "could not write the audit log");
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    tenant: Option<String>,
    since: Option<String>,
    limit: Option<u32>,
}

/// `GET /admin/v1/audit?tenant=&since=&limit=`.
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
    let limit = i64::from(q.limit.unwrap_or(100).clamp(1, 10_000));
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
