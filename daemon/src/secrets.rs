//! Tenant secrets over the operator API (`falra_core::secrets` seals and opens them).
//!
//! `PUT /admin/v1/tenants/{name}/secrets/{key} {"value": <json>, "expose": "env"?}` sets one
//! (`expose: env` hands it to the tenant's code as an environment variable); `DELETE` removes
//! it; `GET …/secrets` lists names, times and exposure, never values.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin::load_tenant;
use crate::api_error::ApiError;
use crate::audit::audit;
use crate::auth::Operator;
use crate::extract::{ApiJson, ApiPath};
use crate::server::AppState;
use falra_core::clock::format_ms;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretBody {
    /// Any JSON value; sealed at rest, never shown again. A string when `expose` is `env`.
    value: Value,
    /// `env`: the tenant's calls and jobs read it as the environment variable of its name
    /// (from their next call; masked as `***` in their logs and errors). `none`: only the node
    /// uses it. Absent: as it was (`none` for a new secret).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    expose: Option<falra_core::secrets::Expose>,
}

#[utoipa::path(
    put,
    path = "/admin/v1/tenants/{name}/secrets/{key}",
    operation_id = "secrets_put_secret",
    tag = "secrets",
    summary = "Set a secret, sealed at rest",
    params(("name" = String, Path, description = "A tenant name"), ("key" = String, Path, description = "The secret's name")),
    request_body = SecretBody,
    responses((status = 200, description = "OK", body = crate::schemas::SecretStored), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn put_secret(
    op: Operator,
    State(state): State<AppState>,
    ApiPath((name, key)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<SecretBody>,
) -> Result<Json<Value>, ApiError> {
    let (name, _) = load_tenant(&state, &name).await?;
    let (now, expose) =
        falra_core::secrets::put(&state, &name, &key, &body.value, body.expose).await?;
    tracing::info!(operator = %op.token_id, tenant = %name, secret = %key, "secret set");
    audit(
        &state,
        &op.token_id,
        "secret.set",
        Some(name.as_str()),
        json!({"key": key, "expose": expose}),
    )
    .await;
    Ok(Json(json!({
        "tenant": name.as_str(), "key": key, "updated_at": format_ms(now), "expose": expose
    })))
}

#[utoipa::path(
    delete,
    path = "/admin/v1/tenants/{name}/secrets/{key}",
    operation_id = "secrets_delete_secret",
    tag = "secrets",
    summary = "Remove a secret",
    params(("name" = String, Path, description = "A tenant name"), ("key" = String, Path, description = "The secret's name")),
    responses((status = 200, description = "OK", body = crate::schemas::Deleted), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn delete_secret(
    op: Operator,
    State(state): State<AppState>,
    ApiPath((name, key)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (name, _) = load_tenant(&state, &name).await?;
    if !state.store.delete_secret(&name, &key).await? {
        return Err(ApiError::not_found(format!(
            "tenant {name} has no secret named {key:?}"
        )));
    }
    tracing::info!(operator = %op.token_id, tenant = %name, secret = %key, "secret removed");
    audit(
        &state,
        &op.token_id,
        "secret.remove",
        Some(name.as_str()),
        json!({"key": key}),
    )
    .await;
    Ok(Json(json!({"deleted": key})))
}

#[utoipa::path(
    get,
    path = "/admin/v1/tenants/{name}/secrets",
    operation_id = "secrets_list_secrets",
    tag = "secrets",
    summary = "A tenant's secret names (never values)",
    params(("name" = String, Path, description = "A tenant name")),
    responses((status = 200, description = "OK", body = crate::schemas::SecretList), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn list_secrets(
    _op: Operator,
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let (name, _) = load_tenant(&state, &name).await?;
    let names = state.store.secret_names(&name).await?;
    let list: Vec<Value> = names
        .into_iter()
        .map(|s| {
            let expose = falra_core::secrets::Expose::from_stored(s.expose.as_deref());
            json!({"key": s.key, "updated_at": format_ms(s.updated_at), "expose": expose})
        })
        .collect();
    Ok(Json(json!({"secrets": list})))
}
