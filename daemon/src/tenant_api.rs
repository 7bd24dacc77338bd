//! The tenant side of the API beside calls: what a tenant's token may read about its own code.

use axum::extract::State;
use axum::Json;
use falra_policies::Scope;
use serde_json::{json, Value};

use crate::api_error::{ApiError, ErrorCode};
use crate::auth::{tenant_caller_any, Caller};
use crate::extract::{bearer, ApiQuery};
use crate::server::AppState;
use crate::store::TenantRow;
use falra_core::clock::format_ms;
use falra_tenants::VersionId;

/// The tenant's version that `given` names: a version id, or a commit (full SHA or a unique
/// prefix of at least 7 hex digits); a failure answers for the request's `key` `version`.
pub(crate) async fn resolve_version(
    state: &AppState,
    tenant: &falra_tenants::TenantName,
    given: &str,
    key: &str,
) -> Result<VersionId, ApiError> {
    falra_core::versions::resolve(&state.store, tenant, given)
        .await
        .map_err(|e| crate::api_error::version_ref_error(e, key))
}

/// The caller (a `call` or `deploy` token) and its tenant.
async fn reader(
    state: &AppState,
    headers: &axum::http::HeaderMap,
) -> Result<(Caller, TenantRow), ApiError> {
    let caller = tenant_caller_any(state, bearer(headers), &[Scope::Call, Scope::Deploy]).await?;
    let tenant = state
        .store
        .tenant(&caller.tenant)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "unknown token"))?;
    Ok((caller, tenant))
}

/// `GET /v1/versions`: the caller's tenant's versions, newest first, the active one marked.
#[utoipa::path(
    get,
    path = "/v1/versions",
    operation_id = "tenant_api_list_versions",
    tag = "code",
    summary = "The tenant's versions, newest first, the active one marked",
    responses((status = 200, description = "OK", body = crate::schemas::Versions), crate::schemas::TenantErrors),
    security(("tenant" = []))
)]
pub async fn list_versions(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (_, tenant) = reader(&state, &headers).await?;
    versions_json(&state, &tenant).await.map(Json)
}

/// A tenant's versions, newest first: what made each, its commit and uploads, when it was made
/// and last activated, the active one marked.
pub(crate) async fn versions_json(state: &AppState, tenant: &TenantRow) -> Result<Value, ApiError> {
    let versions = state.store.versions_of(&tenant.name).await?;
    let list: Vec<Value> = versions
        .iter()
        .map(|v| {
            json!({
                "id": v.id,
                "source": v.source,
                "commit": v.git_commit,
                "uploads": v.uploads,
                "created_at": format_ms(v.created_at),
                "activated_at": v.activated_at.map(format_ms),
                "active": tenant.active_version.as_ref() == Some(&v.id),
                "deploy_log": v.deploy_log.as_deref()
                    .and_then(|l| serde_json::from_str::<Value>(l).ok()),
                "packages": v.packages.as_deref()
                    .and_then(|p| serde_json::from_str::<Value>(p).ok())
                    .unwrap_or_else(|| json!([])),
            })
        })
        .collect();
    Ok(json!({"versions": list, "active": tenant.active_version}))
}

/// `GET /admin/v1/tenants/{name}/versions`: a tenant's versions, as its own tokens see them.
#[utoipa::path(
    get,
    path = "/admin/v1/tenants/{name}/versions",
    operation_id = "admin_list_versions",
    tag = "tenants",
    summary = "A tenant's versions, newest first, the active one marked",
    params(("name" = String, Path, description = "A tenant name")),
    responses((status = 200, description = "OK", body = crate::schemas::Versions), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn admin_list_versions(
    _op: crate::auth::Operator,
    State(state): State<AppState>,
    crate::extract::ApiPath(name): crate::extract::ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let (_, tenant) = crate::admin::load_tenant(&state, &name).await?;
    versions_json(&state, &tenant).await.map(Json)
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FunctionsQuery {
    /// Another version than the active one.
    version: Option<String>,
}

/// `GET /v1/functions`: the callable functions of the caller's tenant (its active version, or
/// `?version=`), as listed in a sandboxed child when the version was made.
#[utoipa::path(
    get,
    path = "/v1/functions",
    operation_id = "tenant_api_list_functions",
    tag = "code",
    summary = "The tenant's callable functions",
    params(FunctionsQuery),
    responses((status = 200, description = "OK", body = crate::schemas::Functions), (status = 400, description = "No such version", body = crate::schemas::Error), (status = 409, description = "not_deployed", body = crate::schemas::Error), crate::schemas::TenantErrors),
    security(("tenant" = []))
)]
pub async fn list_functions(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    query: Result<ApiQuery<FunctionsQuery>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let ApiQuery(query) = query?;
    let (_, tenant) = reader(&state, &headers).await?;
    functions_json(&state, &tenant, query.version.as_deref())
        .await
        .map(Json)
}

/// `GET /admin/v1/tenants/{name}/functions`: a tenant's functions, as its own tokens see them.
#[utoipa::path(
    get,
    path = "/admin/v1/tenants/{name}/functions",
    operation_id = "admin_list_functions",
    tag = "tenants",
    summary = "A tenant's callable functions (its active version, or ?version=)",
    params(("name" = String, Path, description = "A tenant name"), FunctionsQuery),
    responses((status = 200, description = "OK", body = crate::schemas::Functions), (status = 400, description = "No such version", body = crate::schemas::Error), (status = 409, description = "not_deployed", body = crate::schemas::Error), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn admin_list_functions(
    _op: crate::auth::Operator,
    State(state): State<AppState>,
    crate::extract::ApiPath(name): crate::extract::ApiPath<String>,
    query: Result<ApiQuery<FunctionsQuery>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let ApiQuery(query) = query?;
    let (_, tenant) = crate::admin::load_tenant(&state, &name).await?;
    functions_json(&state, &tenant, query.version.as_deref())
        .await
        .map(Json)
}

/// The functions of the tenant's active version, or of `version` (an id or a commit), with
/// the modules that fail to load.
async fn functions_json(
    state: &AppState,
    tenant: &TenantRow,
    version: Option<&str>,
) -> Result<Value, ApiError> {
    let no_version = |id: &str| {
        ApiError::bad_request(format!("this tenant has no version {id:?}"))
            .with_detail(json!({"parameter": "version"}))
    };
    let id = match (version, &tenant.active_version) {
        (Some(asked), _) => resolve_version(state, &tenant.name, asked, "parameter").await?,
        (None, Some(active)) => active.clone(),
        (None, None) => {
            return Err(ApiError::new(
                ErrorCode::NotDeployed,
                "this tenant has no deployed code yet: sync its repository first",
            ))
        }
    };
    let version = state
        .store
        .version(&tenant.name, &id)
        .await?
        .ok_or_else(|| no_version(id.as_str()))?;
    let listing: Value = version
        .functions
        .as_deref()
        .and_then(|f| serde_json::from_str(f).ok())
        .unwrap_or_else(|| json!({"modules": [], "error": "not listed for this version"}));
    let mut functions = Vec::new();
    let mut errors = Vec::new();
    for module in listing["modules"].as_array().into_iter().flatten() {
        if let Some(mut e) = module.get("error").and_then(Value::as_object).cloned() {
            e.insert("module".into(), module["module"].clone());
            errors.push(Value::Object(e));
        }
        functions.extend(
            module["functions"]
                .as_array()
                .into_iter()
                .flatten()
                .cloned(),
        );
    }
    functions.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let mut answer = json!({"version": version.id, "functions": functions, "errors": errors});
    if let Some(e) = listing.get("error") {
        answer["listing_error"] = e.clone();
    }
    Ok(answer)
}

/// The listed functions of one module, from a version's listing.
pub fn functions_of_module(listing: &Value, module: &str) -> Value {
    listing["modules"]
        .as_array()
        .and_then(|m| m.iter().find(|e| e["module"] == module))
        .map(|e| e.get("functions").cloned().unwrap_or_else(|| json!([])))
        .unwrap_or_else(|| json!([]))
}
