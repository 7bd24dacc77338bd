//! Removing what no one uses any more: versions beyond the kept number (never the active one,
//! one a call is running or a prepared child holds), and virtualenvs no version names.

use falra_tenants::TenantName;

use crate::Core;

use super::venv::venv_for;

/// Removes the tenant's versions beyond the newest `keep_versions` (never the active one, nor
/// one that a call in flight or a prepared child uses: those go at a later deploy).
pub async fn collect_versions(state: &Core, name: &TenantName) {
    let (Ok(Some(tenant)), Ok(versions)) = (
        state.store.tenant(name).await,
        state.store.versions_of(name).await,
    ) else {
        return;
    };
    let uid = tenant.uid.get();
    for old in versions.iter().skip(state.config.keep_versions) {
        let id = &old.id;
        let busy = tenant.active_version.as_ref() == Some(id)
            || state.version_in_use(name, id.as_str())
            || state.runtime.holds_version(uid, id.as_str());
        if busy {
            continue;
        }
        if let Err(e) = state.store.delete_version(name, id).await {
            tracing::warn!(tenant = %name, version = %id, error = %e, "could not forget an old version");
            continue;
        }
        if let Err(e) = state.layout.remove_version(name, id) {
            tracing::warn!(tenant = %name, version = %id, error = %e, "could not remove an old version");
        } else {
            tracing::info!(tenant = %name, version = %id, "old version removed");
        }
    }
    collect_venvs(state).await;
}

/// Removes the virtualenvs no remaining version of any tenant asks for. Runs under the
/// deploying tenant's lock; a build of another tenant in progress writes under a `.tmp-` name,
/// which is never touched here, and a version in use keeps its virtualenv referenced.
pub(super) async fn collect_venvs(state: &Core) {
    let dir = state.config.data_dir.join("venvs");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let Ok(tenants) = state.store.tenants().await else {
        return;
    };
    let mut wanted = std::collections::HashSet::new();
    for tenant in &tenants {
        let Ok(versions) = state.store.versions_of(&tenant.name).await else {
            return;
        };
        for v in versions {
            if let Some(venv) = venv_for(state, &state.layout.version_dir(&tenant.name, &v.id)) {
                wanted.insert(venv);
            }
        }
    }
    for entry in entries.flatten() {
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden || wanted.contains(&path) {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => tracing::info!(venv = %path.display(), "unused virtualenv removed"),
            Err(e) => {
                tracing::warn!(venv = %path.display(), error = %e, "could not remove an unused virtualenv")
            }
        }
    }
}
