//! Making a version another node deployed present on this one.
//!
//! On a shared store, a deploy through one node records the version (its git commit, its
//! function listing) and the uploads it was built from; the other nodes have no tree for it
//! yet. The first call of that version on a node builds the tree here from the same inputs —
//! the commit fetched from the tenant's repository, the uploads read from the store — and
//! checks that what it built is that version: a version's id is the hash of those inputs, so a
//! tree that hashes differently (the uploads changed since) is refused, never served as the
//! version. Then the virtualenv and the bytecode are made as a deploy makes them; the listing
//! is the one recorded. Nothing is written to the store.

use falra_store::TenantRow;
use falra_tenants::{build_version, VersionId, VersionPlan};

use super::{
    fetch_branch, finish_version, needs_fetch, node, stored_uploads, sync_failed, DeployError,
};
use crate::Core;

/// Makes `version` of `tenant` present on this node, if it is not already.
pub async fn materialise(
    state: &Core,
    tenant: &TenantRow,
    version: &VersionId,
) -> Result<(), DeployError> {
    let name = &tenant.name;
    if state.layout.version_dir(name, version).is_dir() {
        return Ok(());
    }
    // One materialisation at a time on this node; a call that waited finds the tree made.
    let _one = state.materialising.lock().await;
    if state.layout.version_dir(name, version).is_dir() {
        return Ok(());
    }
    let row =
        state.store.version(name, version).await?.ok_or_else(|| {
            DeployError::failed(format!("tenant {name} has no version {version}"))
        })?;
    if row.git_commit.is_some() && needs_fetch(state, tenant, row.git_commit.as_deref()) {
        // The fetch brings the branch's history, which holds the version's commit unless the
        // branch was rewritten since (then writing the tree below fails, and says so).
        falra_runtime::task::step("fetch", fetch_branch(state, name, tenant)).await?;
    }
    let uploads = stored_uploads(state, name).await?;
    let plan_commit = row.git_commit.clone();
    let subdir = tenant.subdir.clone();
    let max_bytes = state.config.max_version_bytes;
    let layout = state.layout.clone();
    let tenant_name = name.clone();
    let wanted = version.clone();
    let built = falra_runtime::task::step(
        "tree",
        falra_runtime::task::spawn_blocking(move || {
            let plan = VersionPlan {
                commit: plan_commit.as_deref(),
                subdir: subdir.as_deref(),
                uploads: &uploads,
                max_bytes,
            };
            if plan.id() != wanted {
                return Ok(None);
            }
            build_version(&layout, &tenant_name, &plan).map(Some)
        }),
    )
    .await
    .map_err(node("version task failed"))?
    .map_err(|e| sync_failed(name, &e))?;
    if built.is_none() {
        return Err(DeployError::failed(format!(
            "version {version} of tenant {name} cannot be made on this node: its uploads \
             changed since it was deployed (deploy again, or call the active version)"
        )));
    }
    let policy = crate::plans::effective_policy(state, tenant);
    let made = finish_version(
        state,
        tenant,
        &policy,
        version,
        None,
        row.functions,
        &super::DeployLog::new(),
    )
    .await;
    if let Err(e) = made {
        let _ = state.layout.remove_version(name, version);
        return Err(e);
    }
    if tenant.active_version.as_ref() == Some(version) {
        state
            .layout
            .activate(name, version)
            .map_err(node("could not switch the active version link"))?;
    }
    tracing::info!(tenant = %name, version = %version, "version made on this node");
    Ok(())
}
