//! The tenant side of the API beside calls: what a tenant's token may read about its own code.

use axum::extract::State;
use axum::Json;
use falra_policies::Scope;
use serde_json::{json, Value};

use crate::api_error::{ApiError, ErrorCode};
use crate::auth::tenant_caller_any;
use crate::clock::format_ms;
use crate::extract::bearer;
use crate::server::AppState;

/// `GET /v1/versions`: the caller's tenant's versions, newest first, the active one marked.
pub async fn list_versions(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = tenant_caller_any(&state, bearer(&headers), &[Scope::Call, Scope::Deploy]).await?;
    let tenant = state
        .store
        .tenant(caller.tenant.as_str())
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "unknown token"))?;
    let versions = state.store.versions_of(caller.tenant.as_str()).await?;
    let list: Vec<Value> = versions
        .iter()
        .map(|v| {
            json!({
                "id": v.id,
                "source": v.source,
                "created_at": format_ms(v.created_at),
                "active": tenant.active_version.as_deref() == Some(v.id.as_str()),
            })
        })
        .collect();
    Ok(Json(
        json!({"versions": list, "active": tenant.active_version}),
    ))
}
