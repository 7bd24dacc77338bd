//! `/admin/v1/plans`: the plans over HTTP (`falra_core::plans` keeps them).

use axum::extract::State;
use axum::Json;
use falra_core::plans;
use falra_policies::PolicyPatch;
use serde_json::{json, Value};

use crate::api_error::ApiError;
use crate::audit::audit;
use crate::auth::Operator;
use crate::extract::{ApiJson, ApiPath};
use crate::server::AppState;

pub use falra_core::plans::{check_plan, effective_policy, DEFAULT_PLAN};

/// `GET /admin/v1/plans`.
#[utoipa::path(
    get,
    path = "/admin/v1/plans",
    operation_id = "plans_list_plans",
    tag = "policies",
    summary = "List plans",
    responses((status = 200, description = "OK", body = crate::schemas::PlanList), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn list_plans(_op: Operator, State(state): State<AppState>) -> Json<Value> {
    let plans: Vec<Value> = state
        .plans
        .all()
        .into_iter()
        .map(|(name, policy)| json!({"name": name, "policy": policy}))
        .collect();
    Json(json!({ "plans": plans }))
}

/// `PUT /admin/v1/plans/{name}`: creates the plan from the defaults, or changes it.
#[utoipa::path(
    put,
    path = "/admin/v1/plans/{name}",
    operation_id = "plans_put_plan",
    tag = "policies",
    summary = "Create a plan (from the defaults) or change one",
    params(("name" = String, Path, description = "A plan name")),
    request_body = crate::schemas::PolicyPatch,
    responses((status = 200, description = "OK", body = crate::schemas::Plan), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn put_plan(
    op: Operator,
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(patch): ApiJson<PolicyPatch>,
) -> Result<Json<Value>, ApiError> {
    let policy = plans::put(&state, &name, &patch).await?;
    audit(
        &state,
        &op.token_id,
        "plan.set",
        None,
        json!({"plan": name, "changes": patch}),
    )
    .await;
    Ok(Json(json!({"name": name, "policy": policy})))
}

/// `DELETE /admin/v1/plans/{name}`: only a plan no tenant is on.
#[utoipa::path(
    delete,
    path = "/admin/v1/plans/{name}",
    operation_id = "plans_delete_plan",
    tag = "policies",
    summary = "Remove a plan no tenant is on",
    params(("name" = String, Path, description = "A plan name")),
    responses((status = 200, description = "OK", body = crate::schemas::Deleted), (status = 409, description = "Tenants are on the plan", body = crate::schemas::Error), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn delete_plan(
    op: Operator,
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    plans::delete(&state, &name).await?;
    audit(
        &state,
        &op.token_id,
        "plan.delete",
        None,
        json!({"plan": name}),
    )
    .await;
    Ok(Json(json!({ "deleted": name })))
}
