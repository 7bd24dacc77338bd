//! Tenant lifecycle beyond a row's fields: a tenant's policy overrides, rolling back to an
//! earlier version, removing a tenant with everything the node keeps for it, and minting
//! tokens. Validating what an operator sent (names, branches, paths) happens at the edge;
//! these take validated values.

use falra_policies::{Policy, PolicyError, PolicyPatch, Scopes, TokenSecret};
use falra_store::{StoreError, TenantRow, TokenKind, TokenRow};
use falra_tenants::{TenantName, VersionId};

use crate::Core;

/// Why a tenant change was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("tenant {tenant} has no version {version}")]
    NoSuchVersion {
        tenant: TenantName,
        version: VersionId,
    },
    #[error("{0:?} is not a policy field")]
    UnknownField(String),
    #[error(transparent)]
    BadPolicy(#[from] PolicyError),
    #[error("{context}")]
    Node {
        context: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A kept version's virtualenv was gone and could not be built again.
    #[error(transparent)]
    Rebuild(#[from] crate::deploy::DeployError),
}

fn node<E: std::error::Error + Send + Sync + 'static>(
    context: &'static str,
) -> impl FnOnce(E) -> TenantError {
    move |e| TenantError::Node {
        context,
        source: Box::new(e),
    }
}

/// Replaces the tenant's environment variables (already validated); its next call and job
/// get them: they travel in each call's request, so no prepared child or zygote holds old
/// ones.
pub async fn set_env(
    state: &Core,
    tenant: &TenantName,
    env: &falra_policies::env::Env,
) -> Result<bool, TenantError> {
    Ok(state.store.set_env(tenant, env.vars()).await?)
}

/// Sets the tenant's policy overrides: `patch` over the current ones, then the `reset`
/// fields given back to the plan. Checked against the plan as a whole, so a bad field changes
/// nothing. Returns the tenant's effective policy.
pub async fn set_overrides(
    state: &Core,
    tenant: &TenantRow,
    patch: &PolicyPatch,
    reset: &[String],
) -> Result<Policy, TenantError> {
    let mut overrides = tenant.overrides.clone();
    overrides.merge(patch);
    overrides.reset(reset).map_err(TenantError::UnknownField)?;
    let mut policy: Policy = state.plans.get(tenant.plan.as_str()).unwrap_or_default();
    policy.apply(&overrides)?;
    state.store.set_overrides(&tenant.name, &overrides).await?;
    Ok(policy)
}

/// Makes `version`, an earlier version of the tenant's code (as the store records it), the
/// active one again.
pub async fn rollback(
    state: &Core,
    tenant: &TenantRow,
    version: &VersionId,
) -> Result<(), TenantError> {
    let name = &tenant.name;
    let _lock = state.store.deploy_lock(name).await?;
    if state.store.version(name, version).await?.is_some() {
        // Its virtualenv, if it went, is built again from the packages recorded with it.
        crate::deploy::rebuild_venv(state, tenant, version).await?;
    }
    if !state
        .store
        .set_active_version(name, version, crate::clock::now_ms())
        .await?
    {
        return Err(TenantError::NoSuchVersion {
            tenant: name.clone(),
            version: version.clone(),
        });
    }
    // A node of a cluster may not have the version's tree: its first call makes it there
    // (`deploy::materialise`), and switches the link then.
    if state.layout.version_dir(name, version).is_dir() {
        state
            .layout
            .activate(name, version)
            .map_err(node("could not switch the active version link"))?;
    }
    state
        .runtime
        .forget_other_versions(tenant.uid.get(), version.as_str());
    Ok(())
}

/// Removes the tenant: its row (and with it its tokens, secrets and versions' rows), its
/// files, and everything this node keeps for it (children, namespaces, cgroups, counters).
pub async fn remove(state: &Core, tenant: &TenantRow) -> Result<(), TenantError> {
    let name = &tenant.name;
    let _lock = state.store.deploy_lock(name).await?;
    state.store.delete_tenant(name).await?;
    state.runtime.forget_tenant(tenant.uid.get());
    let layout = state.layout.clone();
    let files = name.clone();
    falra_runtime::task::spawn_blocking(move || layout.remove_tenant(&files))
        .await
        .map_err(node("tenant removal task failed"))?
        .map_err(node("could not remove the tenant's files"))?;
    state.admission.forget(name);
    state.quotas.forget(name);
    Ok(())
}

/// A new token and the row that stores it (hash only).
pub fn new_token(
    tenant: Option<&TenantName>,
    kind: TokenKind,
    scopes: &Scopes,
    expires_at: Option<i64>,
    now: i64,
) -> (TokenRow, TokenSecret) {
    let secret = TokenSecret::generate();
    let mut id = [0u8; 8];
    getrandom::getrandom(&mut id).expect("the operating system's random source failed");
    let row = TokenRow {
        id: format!("tok_{}", hex::encode(id)),
        tenant: tenant.cloned(),
        kind,
        hash: secret.hash().as_str().to_owned(),
        prefix: secret.display_prefix(),
        scopes: scopes.to_stored(),
        expires_at,
        revoked_at: None,
        created_at: now,
        last_used_at: None,
    };
    (row, secret)
}
