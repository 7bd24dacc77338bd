//! Private module uploads: `PUT/DELETE /v1/modules/{dotted.name}` with a `deploy` token, the
//! same under `/admin/v1/tenants/{name}/modules/…` for operators, and their listings.
//!
//! The body is the module's `.py` source, capped like every body (413). The name is parsed
//! once here ([`ModuleName`]: identifiers, no `_` prefix, no standard-library or built-in
//! name); the source must compile, which is checked in a sandboxed child while the new version
//! is made (never in the daemon). Uploads live in the store, so another node could rebuild
//! every version from it, and each one makes a new version: the tenant's commit with all its
//! uploads laid over it.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use falra_policies::Scope;
use falra_tenants::{ModuleName, TenantName, Upload};
use serde_json::{json, Value};

use crate::admin::load_tenant;
use crate::api_error::ApiError;
use crate::auth::{tenant_caller, Operator};
use crate::extract::{bearer, ApiPath, ApiQuery, LimitedBody};
use crate::server::AppState;
use falra_core::clock::format_ms;
use falra_core::deploy::{deploy, Change, Deployed};

fn module_name(state: &AppState, name: &str) -> Result<ModuleName, ApiError> {
    ModuleName::parse(
        name,
        &state.config.stdlib,
        falra_builtins::is_reserved_module,
    )
    .map_err(|e| ApiError::bad_request(e.to_string()).with_detail(json!({"module": name})))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PutQuery {
    /// Upload even over a module (or package) of the tenant's repository of that name.
    replace: Option<bool>,
    /// Activate the new version even if some of its modules fail to compile or import.
    force: Option<bool>,
}

/// `?force=true`: activate a version whose modules do not all compile and import.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ForceQuery {
    /// Activate the new version even if some of its modules fail to compile or import.
    pub force: Option<bool>,
}

async fn put(
    state: &AppState,
    tenant: &TenantName,
    module: &str,
    query: Result<ApiQuery<PutQuery>, ApiError>,
    body: Result<LimitedBody, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let module = module_name(state, module)?;
    let ApiQuery(query) = query?;
    let LimitedBody(bytes) = body?;
    if !query.replace.unwrap_or(false) {
        let (_, row) = load_tenant(state, tenant.as_str()).await?;
        if let Some(path) = falra_core::deploy::replaced_by_upload(state, &row, &module).await? {
            return Err(falra_core::deploy::DeployError::WouldReplace { module, path }.into());
        }
    }
    let source = String::from_utf8(bytes.to_vec()).map_err(|e| {
        ApiError::bad_request(format!(
            "the module's source is not UTF-8 (byte {})",
            e.utf8_error().valid_up_to()
        ))
        .with_detail(json!({"module": module.as_str()}))
    })?;
    let upload = Upload {
        module: module.clone(),
        source,
    };
    let sha256 = upload.sha256();
    let force = query.force.unwrap_or(false);
    let Deployed { version, functions } = falra_core::deploy::deploy_with(
        state,
        tenant,
        Change::Put(upload),
        force,
        falra_core::deploy::DeployLog::new(),
    )
    .await?;
    let listed = crate::tenant_api::functions_of_module(&functions, module.as_str());
    Ok(Json(json!({
        "module": module.as_str(),
        "sha256": sha256,
        "version": version.as_str(),
        "functions": listed,
    })))
}

async fn remove(
    state: &AppState,
    tenant: &TenantName,
    module: &str,
) -> Result<Json<Value>, ApiError> {
    let module = module_name(state, module)?;
    let Deployed { version, .. } = deploy(state, tenant, Change::Delete(module.clone())).await?;
    Ok(Json(
        json!({"deleted": module.as_str(), "version": version.as_str()}),
    ))
}

async fn list(state: &AppState, tenant: &TenantName) -> Result<Json<Value>, ApiError> {
    let uploads = state.store.uploads_of(tenant).await?;
    let list: Vec<Value> = uploads
        .iter()
        .map(|u| {
            json!({
                "module": u.module,
                "sha256": u.sha256,
                "bytes": u.source.len(),
                "updated_at": format_ms(u.updated_at),
            })
        })
        .collect();
    Ok(Json(json!({"modules": list})))
}

async fn audit_upload(
    state: &AppState,
    actor: &str,
    tenant: &TenantName,
    action: &str,
    answer: &Json<Value>,
) {
    let detail = json!({
        "module": answer.0.get("module").or_else(|| answer.0.get("deleted")),
        "sha256": answer.0.get("sha256"),
        "version": answer.0.get("version"),
    });
    crate::audit::audit(state, actor, action, Some(tenant.as_str()), detail).await;
}

/// `PUT /v1/modules/{module}`.
#[utoipa::path(
    put,
    path = "/v1/modules/{module}",
    operation_id = "uploads_tenant_put",
    tag = "code",
    summary = "Upload a private module: makes a new active version",
    params(("module" = String, Path, description = "A dotted module name"), PutQuery),
    request_body(content = String, content_type = "text/x-python", description = "The module's source, UTF-8"),
    responses((status = 200, description = "OK", body = crate::schemas::Uploaded), (status = 400, description = "Bad name (stdlib, private, not an identifier, a built-in), not UTF-8, or does not compile (detail.line)", body = crate::schemas::Error), (status = 409, description = "conflict: it would replace a module of the repository (detail.path); pass replace=true", body = crate::schemas::Error), (status = 413, description = "payload_too_large", body = crate::schemas::Error), (status = 422, description = "sync_failed", body = crate::schemas::Error), crate::schemas::TenantErrors),
    security(("tenant" = []))
)]
pub async fn tenant_put(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(module): ApiPath<String>,
    query: Result<ApiQuery<PutQuery>, ApiError>,
    body: Result<LimitedBody, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let caller = tenant_caller(&state, bearer(&headers), Scope::Deploy).await?;
    let answer = put(&state, &caller.tenant, &module, query, body).await?;
    tracing::info!(tenant = %caller.tenant, token = %caller.token_id, %module, "module uploaded");
    audit_upload(
        &state,
        &caller.token_id,
        &caller.tenant,
        "deploy.upload",
        &answer,
    )
    .await;
    Ok(answer)
}

/// `DELETE /v1/modules/{module}`.
#[utoipa::path(
    delete,
    path = "/v1/modules/{module}",
    operation_id = "uploads_tenant_delete",
    tag = "code",
    summary = "Remove an upload: makes a new active version",
    params(("module" = String, Path, description = "A dotted module name")),
    responses((status = 400, description = "A malformed path parameter (a tenant, module or secret name)", body = crate::schemas::Error), (status = 200, description = "OK", body = crate::schemas::ModuleRemoved), (status = 404, description = "No such upload", body = crate::schemas::Error), crate::schemas::TenantErrors),
    security(("tenant" = []))
)]
pub async fn tenant_delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(module): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = tenant_caller(&state, bearer(&headers), Scope::Deploy).await?;
    let answer = remove(&state, &caller.tenant, &module).await?;
    tracing::info!(tenant = %caller.tenant, token = %caller.token_id, %module, "upload removed");
    audit_upload(
        &state,
        &caller.token_id,
        &caller.tenant,
        "deploy.remove_upload",
        &answer,
    )
    .await;
    Ok(answer)
}

/// `GET /v1/modules`.
#[utoipa::path(
    get,
    path = "/v1/modules",
    operation_id = "uploads_tenant_list",
    tag = "code",
    summary = "The tenant's uploaded modules",
    responses((status = 200, description = "OK", body = crate::schemas::Modules), crate::schemas::TenantErrors),
    security(("tenant" = []))
)]
pub async fn tenant_list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = tenant_caller(&state, bearer(&headers), Scope::Deploy).await?;
    list(&state, &caller.tenant).await
}

/// `PUT /admin/v1/tenants/{name}/modules/{module}`.
#[utoipa::path(
    put,
    path = "/admin/v1/tenants/{name}/modules/{module}",
    operation_id = "uploads_admin_put",
    tag = "code",
    summary = "Upload a module for a tenant",
    params(("name" = String, Path, description = "A tenant name"), ("module" = String, Path, description = "A dotted module name"), PutQuery),
    request_body(content = String, content_type = "text/x-python", description = "The module's source, UTF-8"),
    responses((status = 200, description = "OK", body = crate::schemas::Uploaded), (status = 409, description = "conflict: it would replace a module of the repository (detail.path); pass replace=true", body = crate::schemas::Error), (status = 413, description = "payload_too_large", body = crate::schemas::Error), (status = 422, description = "sync_failed", body = crate::schemas::Error), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn admin_put(
    op: Operator,
    State(state): State<AppState>,
    ApiPath((name, module)): ApiPath<(String, String)>,
    query: Result<ApiQuery<PutQuery>, ApiError>,
    body: Result<LimitedBody, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let (name, _) = load_tenant(&state, &name).await?;
    let answer = put(&state, &name, &module, query, body).await?;
    tracing::info!(operator = %op.token_id, tenant = %name, %module, "module uploaded");
    audit_upload(&state, &op.token_id, &name, "deploy.upload", &answer).await;
    Ok(answer)
}

/// `DELETE /admin/v1/tenants/{name}/modules/{module}`.
#[utoipa::path(
    delete,
    path = "/admin/v1/tenants/{name}/modules/{module}",
    operation_id = "uploads_admin_delete",
    tag = "code",
    summary = "Remove a tenant's upload",
    params(("name" = String, Path, description = "A tenant name"), ("module" = String, Path, description = "A dotted module name")),
    responses((status = 200, description = "OK", body = crate::schemas::ModuleRemoved), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn admin_delete(
    op: Operator,
    State(state): State<AppState>,
    ApiPath((name, module)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (name, _) = load_tenant(&state, &name).await?;
    let answer = remove(&state, &name, &module).await?;
    tracing::info!(operator = %op.token_id, tenant = %name, %module, "upload removed");
    audit_upload(&state, &op.token_id, &name, "deploy.remove_upload", &answer).await;
    Ok(answer)
}

/// `GET /admin/v1/tenants/{name}/modules`.
#[utoipa::path(
    get,
    path = "/admin/v1/tenants/{name}/modules",
    operation_id = "uploads_admin_list",
    tag = "code",
    summary = "A tenant's uploads",
    params(("name" = String, Path, description = "A tenant name")),
    responses((status = 200, description = "OK", body = crate::schemas::Modules), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn admin_list(
    _op: Operator,
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let (name, _) = load_tenant(&state, &name).await?;
    list(&state, &name).await
}
