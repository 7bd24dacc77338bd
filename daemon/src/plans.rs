//! Plans: named, complete policies that tenants are on, and a tenant's effective policy.
//!
//! A tenant's effective policy is its plan's policy with the tenant's own overrides (the
//! fields an operator set for it) applied. Plans live in the store and in memory (read on
//! every call); `PUT /admin/v1/plans/{name}` with any subset of the policy's fields creates a
//! plan (from the defaults) or changes one, and the next call of every tenant on it obeys.

use std::collections::HashMap;
use std::sync::RwLock;

use axum::extract::State;
use axum::Json;
use falra_policies::{builtin_plans, Policy, PolicyPatch};
use serde_json::{json, Value};

use crate::api_error::ApiError;
use crate::audit::audit;
use crate::auth::Operator;
use crate::clock::now_ms;
use crate::extract::{ApiJson, ApiPath};
use crate::server::AppState;
use crate::store::{PlanName, Store, StoreError, TenantRow};

/// The plan a tenant is on unless it says otherwise.
pub const DEFAULT_PLAN: &str = "default";

/// The plans, as read by calls.
#[derive(Debug, Default)]
pub struct PlanTable(RwLock<HashMap<String, Policy>>);

impl PlanTable {
    /// Seeds the built-in plans into a store that has none (its first start: a removed one
    /// stays removed), then reads every plan. `default` is always there: tenants land on it.
    pub async fn load(store: &Store) -> Result<PlanTable, StoreError> {
        let now = now_ms();
        let fresh = store.plans().await?.is_empty();
        for (name, policy) in builtin_plans() {
            if fresh || name == DEFAULT_PLAN {
                let name = PlanName::parse(name).expect("built-in plan names are valid");
                store.insert_plan_if_absent(&name, &policy, now).await?;
            }
        }
        let mut plans = HashMap::new();
        for (name, policy) in store.plans().await? {
            plans.insert(name.as_str().to_owned(), policy);
        }
        Ok(PlanTable(RwLock::new(plans)))
    }

    pub fn get(&self, name: &str) -> Option<Policy> {
        self.0
            .read()
            .expect("plan table poisoned")
            .get(name)
            .cloned()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0
            .read()
            .expect("plan table poisoned")
            .contains_key(name)
    }

    fn set(&self, name: &str, policy: Policy) {
        self.0
            .write()
            .expect("plan table poisoned")
            .insert(name.to_owned(), policy);
    }

    fn remove(&self, name: &str) {
        self.0.write().expect("plan table poisoned").remove(name);
    }

    fn all(&self) -> Vec<(String, Policy)> {
        let mut all: Vec<_> = self
            .0
            .read()
            .expect("plan table poisoned")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// The policy a tenant's calls run under now: its plan with its overrides.
pub fn effective_policy(state: &AppState, tenant: &TenantRow) -> Policy {
    let plan = state.plans.get(tenant.plan.as_str()).unwrap_or_default();
    Policy::effective(&plan, &tenant.overrides)
}

/// The plan named `name`, if a tenant may be put on it.
pub fn check_plan(state: &AppState, name: &str) -> Result<PlanName, ApiError> {
    match PlanName::parse(name) {
        Ok(plan) if state.plans.contains(name) => Ok(plan),
        _ => Err(ApiError::bad_request(format!(
            "there is no plan named {name:?} (see GET /admin/v1/plans)"
        ))
        .with_detail(json!({"field": "plan"}))),
    }
}

fn plan_name(name: &str) -> Result<PlanName, ApiError> {
    PlanName::parse(name)
        .map_err(|e| ApiError::bad_request(e).with_detail(json!({"field": "name"})))
}

/// `GET /admin/v1/plans`.
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
pub async fn put_plan(
    op: Operator,
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(patch): ApiJson<PolicyPatch>,
) -> Result<Json<Value>, ApiError> {
    let plan = plan_name(&name)?;
    let mut policy = state.plans.get(&name).unwrap_or_default();
    policy.apply(&patch).map_err(|e| {
        ApiError::bad_request(e.to_string()).with_detail(json!({"field": e.field()}))
    })?;
    state.store.put_plan(&plan, &policy, now_ms()).await?;
    state.plans.set(&name, policy.clone());
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
pub async fn delete_plan(
    op: Operator,
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    if name == DEFAULT_PLAN {
        return Err(ApiError::new(
            crate::api_error::ErrorCode::Conflict,
            "the default plan cannot be removed: new tenants are put on it",
        ));
    }
    let Ok(plan) = PlanName::parse(&name) else {
        return Err(ApiError::not_found(format!("no plan named {name:?}")));
    };
    if !state.store.delete_plan(&plan).await? {
        return Err(ApiError::not_found(format!("no plan named {name:?}")));
    }
    state.plans.remove(&name);
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
