//! Plans: named, complete policies that tenants are on, and a tenant's effective policy.
//!
//! A tenant's effective policy is its plan's policy with the tenant's own overrides (the
//! fields an operator set for it) applied. Plans live in the store and in memory (read on
//! every call; on a shared store each node reads them again at every beat, so a plan set
//! through one node holds on the others within a beat); [`put`] with any subset of the policy's fields creates a plan (from the
//! defaults) or changes one, and the next call of every tenant on it obeys.

use std::collections::HashMap;
use std::sync::RwLock;

use falra_policies::{builtin_plans, Policy, PolicyError, PolicyPatch};
use falra_store::{PlanName, Store, StoreError, TenantRow};

use crate::clock::now_ms;
use crate::Core;

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

    /// Reads every plan from the store again, replacing the table: how a node sees a plan
    /// another node set or removed (on a shared store, at every beat).
    pub async fn refresh(&self, store: &Store) -> Result<(), StoreError> {
        let plans: HashMap<String, Policy> = store
            .plans()
            .await?
            .into_iter()
            .map(|(name, policy)| (name.as_str().to_owned(), policy))
            .collect();
        *self.0.write().expect("plan table poisoned") = plans;
        Ok(())
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

    pub fn set(&self, name: &str, policy: Policy) {
        self.0
            .write()
            .expect("plan table poisoned")
            .insert(name.to_owned(), policy);
    }

    pub fn remove(&self, name: &str) {
        self.0.write().expect("plan table poisoned").remove(name);
    }

    pub fn all(&self) -> Vec<(String, Policy)> {
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
pub fn effective_policy(state: &Core, tenant: &TenantRow) -> Policy {
    let plan = state.plans.get(tenant.plan.as_str()).unwrap_or_default();
    Policy::effective(&plan, &tenant.overrides)
}

/// The plan named `name`, if a tenant may be put on it.
pub fn check_plan(state: &Core, name: &str) -> Result<PlanName, PlanError> {
    match PlanName::parse(name) {
        Ok(plan) if state.plans.contains(name) => Ok(plan),
        _ => Err(PlanError::NoSuchPlan(name.to_owned())),
    }
}

/// Why a plan could not be used, set or removed.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A tenant was to be put on a plan that does not exist.
    #[error("there is no plan named {0:?} (see GET /admin/v1/plans)")]
    NoSuchPlan(String),
    #[error("{0}")]
    BadName(String),
    #[error(transparent)]
    BadPolicy(#[from] PolicyError),
    #[error("the default plan cannot be removed: new tenants are put on it")]
    DefaultPlan,
    /// The plan to remove does not exist.
    #[error("no plan named {0:?}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Creates the plan `name` from the defaults with `patch` applied, or applies `patch` to it.
pub async fn put(state: &Core, name: &str, patch: &PolicyPatch) -> Result<Policy, PlanError> {
    let plan = PlanName::parse(name).map_err(|e| PlanError::BadName(e.to_string()))?;
    let mut policy = state.plans.get(name).unwrap_or_default();
    policy.apply(patch)?;
    state.store.put_plan(&plan, &policy, now_ms()).await?;
    state.plans.set(name, policy.clone());
    Ok(policy)
}

/// Removes the plan `name`: only one no tenant is on (the store refuses it otherwise).
pub async fn delete(state: &Core, name: &str) -> Result<(), PlanError> {
    if name == DEFAULT_PLAN {
        return Err(PlanError::DefaultPlan);
    }
    let Ok(plan) = PlanName::parse(name) else {
        return Err(PlanError::NotFound(name.to_owned()));
    };
    if !state.store.delete_plan(&plan).await? {
        return Err(PlanError::NotFound(name.to_owned()));
    }
    state.plans.remove(name);
    Ok(())
}
