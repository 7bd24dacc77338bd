//! Making a tenant's next version and activating it: a git sync, an upload and an upload's
//! removal all come through [`deploy`], one at a time per tenant.
//!
//! The order is what keeps a failed deploy from changing anything: fetch (a sync) → write the
//! version tree (commit + uploads) → build its virtualenv if it has a `requirements.txt` or a
//! `pyproject.toml` with dependencies (resolve, fetch wheels into the node's cache, install:
//! sandboxed children, only the first two with a way out, through the build gateway) → compile its modules into the tree (in a sandboxed child,
//! which runs no tenant code) → list its functions (in a sandboxed child, never in the
//! daemon) → record the version, the upload change and the activation in one store
//! transaction → swap `github/git_<tenant>`. Until the transaction, nothing a call reads has
//! changed; a new version tree that fails a later step is removed again.
//!
//! This module holds the order; the steps that run children are beside it: the virtualenv
//! ([`venv`], with `uv` in [`uv`] and the node's wheel cache in [`wheels`]), the compile and the listing ([`runner_modes`]), and the collection of what no
//! version uses any more ([`collect`]), and making a version another node deployed present on
//! this one ([`materialise`]).

use std::path::PathBuf;

use falra_policies::Policy;
use falra_tenants::{
    build_version, fetch, GitSource, ModuleName, TenantName, Upload, VersionId, VersionPlan,
};
use serde_json::{json, Value};

use crate::clock::now_ms;
use crate::Core;
use falra_runtime::isolation::CodeMounts;
use falra_runtime::ErrorChain;
use falra_store::{NewVersion, TenantRow, UploadChange};

mod collect;
pub mod log;
mod materialise;
mod runner_modes;
pub mod uv;
mod venv;
pub mod wheels;

pub use collect::collect_versions;
pub use log::{DeployEvent, DeployLog, StepRecord};
pub use materialise::materialise;
use runner_modes::{compile_version, introspect};
use venv::ensure_venv;
pub use venv::venv_for;

/// Why a deploy changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// One deploy of the tenant runs and another waits already.
    #[error("a deploy of {0} is running and another is waiting; try again when one ends")]
    Queued(TenantName),
    #[error("no tenant named {0}")]
    NoTenant(TenantName),
    #[error("tenant {0} has no repository to sync")]
    NoRepository(TenantName),
    /// Modules of the new version fail to compile or import: it is not activated, the active
    /// version stays.
    #[error("{}", broken_message(modules))]
    Broken { modules: Vec<BrokenModule> },
    /// An upload would replace (or shadow, as a package) a module of the tenant's repository.
    #[error(
        "{module} would replace {path} of the tenant's repository; upload it with replace=true to do so"
    )]
    WouldReplace { module: ModuleName, path: String },
    #[error("tenant {tenant} has no upload named {module}")]
    NoUpload {
        tenant: TenantName,
        module: ModuleName,
    },
    /// The uploaded module is refused for what it holds (it does not compile).
    #[error("{message}")]
    BadUpload {
        message: String,
        module: ModuleName,
        line: Option<u64>,
    },
    /// The version could not be made from what the tenant gave: its repository, its
    /// requirements, its packages. `detail` says where, when it is known.
    #[error("{message}")]
    Failed {
        message: String,
        detail: Option<Value>,
    },
    #[error(transparent)]
    Quota(#[from] crate::metering::QuotaError),
    #[error(transparent)]
    Credentials(#[from] crate::secrets::SecretUseError),
    #[error(transparent)]
    Store(#[from] falra_store::StoreError),
    #[error(transparent)]
    Run(#[from] falra_runtime::RunError),
    /// The node's own failure: a file it could not write, a task that died.
    #[error("{context}")]
    Node {
        context: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl DeployError {
    fn failed(message: impl Into<String>) -> DeployError {
        DeployError::Failed {
            message: message.into(),
            detail: None,
        }
    }
}

/// A module of a version that does not compile or import.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BrokenModule {
    pub module: String,
    /// `compile` or `import`.
    pub stage: &'static str,
    /// The exception's type (`SyntaxError`, `ImportError`, `ImportTimeout`, …).
    #[serde(rename = "type")]
    pub type_name: String,
    pub message: String,
    pub line: Option<u64>,
}

fn broken_message(modules: &[BrokenModule]) -> String {
    let mut text = String::from("not activated: ");
    for (i, m) in modules.iter().take(5).enumerate() {
        if i > 0 {
            text.push_str("; ");
        }
        let at = m.line.map(|l| format!(" line {l}")).unwrap_or_default();
        text.push_str(&format!(
            "{}{at} does not {}: {}: {}",
            m.module, m.stage, m.type_name, m.message
        ));
    }
    if modules.len() > 5 {
        text.push_str(&format!("; and {} more", modules.len() - 5));
    }
    text.push_str(" (the active version stays; force=true activates it anyway)");
    text
}

/// The modules the listing of a version reports as failing to compile or import.
fn broken_modules(functions: &Value) -> Vec<BrokenModule> {
    functions["modules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["error"].is_object())
        .map(|m| {
            let e = &m["error"];
            BrokenModule {
                module: m["module"].as_str().unwrap_or_default().to_owned(),
                stage: if e["stage"] == "compile" {
                    "compile"
                } else {
                    "import"
                },
                type_name: e["type"].as_str().unwrap_or("Error").to_owned(),
                message: e["message"].as_str().unwrap_or_default().to_owned(),
                line: e["line"].as_u64(),
            }
        })
        .collect()
}

/// The node's failure at `context`, for `map_err`.
pub(super) fn node<E: std::error::Error + Send + Sync + 'static>(
    context: &'static str,
) -> impl FnOnce(E) -> DeployError {
    move |e| DeployError::Node {
        context,
        source: Box::new(e),
    }
}

/// What a deploy changes.
#[derive(Debug)]
pub enum Change {
    /// Fetch the tenant's branch and build on its head.
    Sync,
    /// Add or replace one upload (already parsed; compiled in the sandbox here).
    Put(Upload),
    /// Remove one upload.
    Delete(ModuleName),
}

impl Change {
    /// The change's kind, for logs.
    pub fn label(&self) -> &'static str {
        match self {
            Change::Sync => "sync",
            Change::Put(_) => "upload",
            Change::Delete(_) => "delete_upload",
        }
    }
}

/// A deploy that landed.
#[derive(Debug)]
pub struct Deployed {
    pub version: VersionId,
    pub functions: Value,
}

/// Deploys of each tenant that are running or waiting: one runs, at most one more waits, and a
/// third is refused. A burst of syncs, uploads or pushes from one tenant can so never queue up
/// work (and memory) without bound.
#[derive(Debug, Default)]
pub struct DeploySlots(std::sync::Mutex<std::collections::HashMap<TenantName, usize>>);

/// The place of one deploy in its tenant's queue; given back when dropped.
#[derive(Debug)]
pub struct DeploySlot {
    slots: std::sync::Arc<DeploySlots>,
    tenant: TenantName,
}

/// How many deploys of one tenant may be running or waiting at once.
const DEPLOYS_PER_TENANT: usize = 2;

impl DeploySlots {
    /// A place for a deploy of `tenant`, unless one is running and another already waits.
    pub fn try_take(self: &std::sync::Arc<Self>, tenant: &TenantName) -> Option<DeploySlot> {
        let mut slots = self.0.lock().expect("deploy slots poisoned");
        let held = slots.entry(tenant.clone()).or_default();
        if *held >= DEPLOYS_PER_TENANT {
            return None;
        }
        *held += 1;
        Some(DeploySlot {
            slots: self.clone(),
            tenant: tenant.clone(),
        })
    }
}

impl Drop for DeploySlot {
    fn drop(&mut self) {
        let mut slots = self.slots.0.lock().expect("deploy slots poisoned");
        if let Some(n) = slots.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                slots.remove(&self.tenant);
            }
        }
    }
}

/// Makes and activates the tenant's next version; a failure changes nothing. The work runs in a
/// task of its own, so a client that hangs up does not stop a deploy halfway (with a cgroup on
/// loan, a half-built virtualenv or a tree written but not recorded).
/// A version whose modules do not all compile and import is not activated
/// ([`DeployError::Broken`]); see [`deploy_with`] to activate it anyway.
pub async fn deploy(
    state: &Core,
    name: &TenantName,
    change: Change,
) -> Result<Deployed, DeployError> {
    deploy_with(state, name, change, false, DeployLog::new()).await
}

/// [`deploy`], with `force`: a version whose modules fail to compile or import is activated
/// all the same (its listing says which); its steps go to `log`, which the caller keeps.
pub async fn deploy_with(
    state: &Core,
    name: &TenantName,
    change: Change,
    force: bool,
    log: DeployLog,
) -> Result<Deployed, DeployError> {
    let slot = state
        .deploy_slots
        .try_take(name)
        .ok_or_else(|| DeployError::Queued(name.clone()))?;
    deploy_in(state, name, change, slot, force, log).await
}

/// [`deploy`] with its place in the tenant's queue already taken.
pub async fn deploy_in(
    state: &Core,
    name: &TenantName,
    change: Change,
    slot: DeploySlot,
    force: bool,
    log: DeployLog,
) -> Result<Deployed, DeployError> {
    let (task_state, task_name) = (state.clone(), name.clone());
    falra_runtime::task::spawn(async move {
        let deployed = deploy_now(&task_state, &task_name, change, force, &log).await;
        drop(slot);
        deployed
    })
    .await
    .map_err(node("the deploy's task failed"))?
}

/// The path of the repository module in the tenant's active commit that an upload of `module`
/// would replace, unless `module` is already an upload (replacing an upload is an upload's
/// business).
pub async fn replaced_by_upload(
    state: &Core,
    tenant: &falra_store::TenantRow,
    module: &ModuleName,
) -> Result<Option<String>, DeployError> {
    let Some(active) = &tenant.active_version else {
        return Ok(None);
    };
    let uploads = state.store.uploads_of(&tenant.name).await?;
    if uploads.iter().any(|u| u.module == module.as_str()) {
        return Ok(None);
    }
    let Some(commit) = state
        .store
        .version(&tenant.name, active)
        .await?
        .and_then(|v| v.git_commit)
    else {
        return Ok(None);
    };
    let (layout, name, subdir, module) = (
        state.layout.clone(),
        tenant.name.clone(),
        tenant.subdir.clone(),
        module.clone(),
    );
    let found = falra_runtime::task::spawn_blocking(move || {
        falra_tenants::repository_module(&layout, &name, &commit, subdir.as_deref(), &module)
    })
    .await
    .map_err(node("the repository lookup failed"))?;
    // A mirror this node does not have yet (the version was made elsewhere): nothing known to
    // replace here; the listing after the deploy shows what is there.
    Ok(found.unwrap_or(None))
}

#[tracing::instrument(name = "deploy", skip_all, fields(tenant = %name, change = change.label()))]
async fn deploy_now(
    state: &Core,
    name: &TenantName,
    change: Change,
    force: bool,
    log: &DeployLog,
) -> Result<Deployed, DeployError> {
    let _lock = state.store.deploy_lock(name).await?;
    let tenant = state
        .store
        .tenant(name)
        .await?
        .ok_or_else(|| DeployError::NoTenant(name.clone()))?;
    let policy = crate::plans::effective_policy(state, &tenant);
    // Deploys run the tenant's code (imports, listings, builds): not for a tenant past its quota.
    crate::metering::check_quota(state, name, policy.cpu_seconds_per_month).await?;
    let mut uploads = stored_uploads(state, name).await?;

    let known_commit = match &tenant.active_version {
        Some(active) => state
            .store
            .version(name, active)
            .await?
            .and_then(|v| v.git_commit),
        None => None,
    };
    let fetch_needed =
        matches!(change, Change::Sync) || needs_fetch(state, &tenant, known_commit.as_deref());
    let commit = if fetch_needed {
        let commit = log
            .step("fetch", fetch_branch(state, name, &tenant), |c: &String| {
                Some(format!("commit {}", &c[..c.len().min(12)]))
            })
            .await?;
        Some(commit)
    } else {
        known_commit
    };
    let (label, upload_change) = match &change {
        Change::Sync => ("git", None),
        Change::Put(upload) => {
            uploads.retain(|u| u.module != upload.module);
            uploads.push(upload.clone());
            ("upload", Some(upload.module.clone()))
        }
        Change::Delete(module) => {
            let before = uploads.len();
            uploads.retain(|u| &u.module != module);
            if uploads.len() == before {
                return Err(DeployError::NoUpload {
                    tenant: name.clone(),
                    module: module.clone(),
                });
            }
            ("upload", None)
        }
    };

    let plan_commit = commit.clone();
    let subdir = tenant.subdir.clone();
    let max_bytes = state.config.max_version_bytes;
    let layout = state.layout.clone();
    let tenant_name = name.clone();
    let plan_uploads = uploads.clone();
    let version = log
        .step(
            "tree",
            async {
                falra_runtime::task::spawn_blocking(move || {
                    let plan = VersionPlan {
                        commit: plan_commit.as_deref(),
                        subdir: subdir.as_deref(),
                        uploads: &plan_uploads,
                        max_bytes,
                    };
                    build_version(&layout, &tenant_name, &plan)
                })
                .await
                .map_err(node("version task failed"))?
                .map_err(|e| sync_failed(name, &e))
            },
            |v: &VersionId| Some(format!("version {v}")),
        )
        .await?;
    let known = state.store.version(name, &version).await?;
    let fresh = known.is_none();

    let prepared = finish_version(
        state,
        &tenant,
        &policy,
        &version,
        upload_change.as_ref(),
        known.and_then(|v| v.functions),
        log,
    )
    .await;
    // What is broken already in the active version (activated by force) does not hold back
    // a new one; what the new one breaks does.
    let broken_before: Vec<String> = match &tenant.active_version {
        Some(active) => state
            .store
            .version(name, active)
            .await?
            .and_then(|v| v.functions)
            .and_then(|f| serde_json::from_str::<Value>(&f).ok())
            .map(|f| broken_modules(&f).into_iter().map(|m| m.module).collect())
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let prepared = prepared.and_then(|functions| {
        let mut broken = broken_modules(&functions);
        broken.retain(|m| !broken_before.contains(&m.module));
        if broken.is_empty() || force || tenant.active_version.as_ref() == Some(&version) {
            Ok(functions)
        } else {
            Err(DeployError::Broken { modules: broken })
        }
    });
    let functions = match prepared {
        Ok(functions) => functions,
        Err(e) => {
            if fresh && tenant.active_version.as_ref() != Some(&version) {
                let _ = state.layout.remove_version(name, &version);
            }
            return Err(e);
        }
    };

    let functions_text = functions.to_string();
    let now = now_ms();
    let sha = match &change {
        Change::Put(u) => u.sha256(),
        _ => String::new(),
    };
    let stored_change = match &change {
        Change::Sync => UploadChange::None,
        Change::Put(u) => UploadChange::Put {
            module: u.module.as_str(),
            source: &u.source,
            sha256: &sha,
            now,
        },
        Change::Delete(module) => UploadChange::Delete {
            module: module.as_str(),
        },
    };
    let upload_names = serde_json::to_string(
        &uploads
            .iter()
            .map(|u| u.module.as_str())
            .collect::<Vec<_>>(),
    )
    .expect("names serialise");
    // The log as it stands before activation: the version is kept with every step that made
    // it; the answer shows the activation too.
    let deploy_log = log.to_json();
    let packages = venv_for(state, &state.layout.version_dir(name, &version))
        .and_then(|dir| venv::venv_packages(&dir))
        .map(|p| serde_json::to_string(&p).expect("packages serialise"));
    let record = NewVersion {
        id: &version,
        source: label,
        git_commit: commit.as_deref(),
        functions: Some(&functions_text),
        uploads: Some(&upload_names),
        deploy_log: Some(&deploy_log),
        packages: packages.as_deref(),
        now,
    };
    log.step(
        "activate",
        async {
            state
                .store
                .activate_version(name, &record, stored_change)
                .await?;
            state
                .layout
                .activate(name, &version)
                .map_err(node("could not switch the active version link"))
        },
        |_| None,
    )
    .await?;
    state
        .runtime
        .forget_other_versions(tenant.uid.get(), version.as_str());
    collect_versions(state, name).await;
    tracing::info!(tenant = %name, version = %version, source = label, "version active");
    Ok(Deployed { version, functions })
}

/// What a listing says of the version, for its step's record.
fn listed(functions: &Value) -> (bool, Option<String>) {
    if let Some(error) = functions["error"].as_str() {
        return (false, Some(error.to_owned()));
    }
    let modules = functions["modules"].as_array().map_or(0, Vec::len);
    let count: usize = functions["modules"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|e| e["functions"].as_array().map_or(0, Vec::len))
                .sum()
        })
        .unwrap_or(0);
    let broken = broken_modules(functions).len();
    let detail = match broken {
        0 => format!("{count} functions in {modules} modules"),
        n => format!("{count} functions in {modules} modules; {n} modules fail to load"),
    };
    (broken == 0, Some(detail))
}

/// Whether an upload's deploy must fetch first: the tenant has a repository but this node's
/// mirror cannot give the commit its versions are built on (it was never recorded, or another
/// node of the cluster fetched it).
fn needs_fetch(state: &Core, tenant: &TenantRow, commit: Option<&str>) -> bool {
    if tenant.repo.is_none() {
        return false;
    }
    match commit {
        Some(commit) => !falra_tenants::has_commit(&state.layout, &tenant.name, commit),
        None => tenant.active_version.is_some(),
    }
}

/// The tenant's uploads as the store holds them: what the next version is built with.
async fn stored_uploads(state: &Core, name: &TenantName) -> Result<Vec<Upload>, DeployError> {
    Ok(state
        .store
        .uploads_of(name)
        .await?
        .into_iter()
        .map(|u| Upload {
            module: ModuleName::from_stored(&u.module),
            source: u.source,
        })
        .collect())
}

fn sync_failed(name: &TenantName, e: &(dyn std::error::Error + 'static)) -> DeployError {
    let message = ErrorChain(e).to_string();
    tracing::warn!(tenant = %name, error = %message, "deploy failed");
    DeployError::failed(message)
}

async fn fetch_branch(
    state: &Core,
    name: &TenantName,
    tenant: &TenantRow,
) -> Result<String, DeployError> {
    let url = tenant
        .repo
        .clone()
        .ok_or_else(|| DeployError::NoRepository(name.clone()))?;
    let source = GitSource {
        url,
        branch: tenant.branch.clone(),
        credentials: crate::secrets::git_credentials(state, name).await?,
        max_fetch_bytes: state.config.max_version_bytes,
    };
    let layout = state.layout.clone();
    let tenant_name = name.clone();
    falra_runtime::task::spawn_blocking(move || fetch(&layout, &tenant_name, &source))
        .await
        .map_err(node("fetch task failed"))?
        .map_err(|e| sync_failed(name, &e))
}

/// Builds a kept version's virtualenv again if this node has the version's tree but not its
/// virtualenv (collected, or lost), from the packages recorded with the version: what a
/// rollback activates is what the version had.
pub async fn rebuild_venv(
    state: &Core,
    tenant: &TenantRow,
    version: &VersionId,
) -> Result<(), DeployError> {
    let code = state.layout.version_dir(&tenant.name, version);
    if !code.is_dir() || venv_for(state, &code).is_none_or(|v| v.is_dir()) {
        return Ok(());
    }
    // Only a version that had a virtualenv (its set recorded) is given one again: an old
    // version whose files only now read as requirements is left as it was deployed.
    let recorded = state
        .store
        .version(&tenant.name, version)
        .await?
        .is_some_and(|v| v.packages.is_some());
    if !recorded {
        return Ok(());
    }
    let policy = crate::plans::effective_policy(state, tenant);
    ensure_venv(state, tenant, &policy, &code, version, &DeployLog::new()).await?;
    Ok(())
}

/// Everything a new version needs before it may become active: its owner, its virtualenv,
/// its function listing (reused when the version was made before). Returns the listing.
async fn finish_version(
    state: &Core,
    tenant: &TenantRow,
    policy: &Policy,
    version: &VersionId,
    uploaded: Option<&ModuleName>,
    known_functions: Option<String>,
    log: &DeployLog,
) -> Result<Value, DeployError> {
    let name = &tenant.name;
    if state.runtime.sandbox.is_enabled() {
        // Only the tenant's own gid may read its versions, should a mount ever leak.
        state
            .layout
            .restrict_versions(name, tenant.uid.get())
            .map_err(node("could not set the version tree's owner"))?;
    }
    let code = state.layout.version_dir(name, version);
    let venv = log
        .step(
            "venv",
            ensure_venv(state, tenant, policy, &code, version, log),
            |venv: &Option<PathBuf>| {
                Some(match venv {
                    Some(dir) => match venv::venv_packages(dir) {
                        Some(p) => format!("{} packages ready", p.len()),
                        None => "packages ready".to_owned(),
                    },
                    None => "no requirements".to_owned(),
                })
            },
        )
        .await?;
    let mounts = CodeMounts { code, venv };
    log.step_with(
        "compile",
        compile_version(state, name, tenant, policy, version, &mounts),
        |_| (true, None),
    )
    .await;
    let functions = match known_functions.and_then(|f| serde_json::from_str(&f).ok()) {
        Some(known) => known,
        None => {
            log.step_with("list", introspect(state, tenant, policy, &mounts), listed)
                .await
        }
    };
    // A listing cut short by the node's shutdown says nothing of the version's modules.
    if state.runtime.is_stopping_calls() {
        return Err(DeployError::failed(
            "this node shut down during the deploy; nothing was activated",
        ));
    }
    if let Some(module) = uploaded {
        let entry = functions["modules"]
            .as_array()
            .and_then(|m| m.iter().find(|e| e["module"] == module.as_str()));
        let Some(entry) = entry else {
            // No word on the module: the upload cannot be known to compile, so it is refused.
            let why = functions["error"]
                .as_str()
                .unwrap_or("the module was not listed");
            return Err(DeployError::Failed {
                message: format!("{module} could not be checked: {why}"),
                detail: Some(json!({"module": module.as_str()})),
            });
        };
        if let Some(error) = Some(&entry["error"]).filter(|e| e["stage"] == "compile") {
            let line = error["line"].as_u64();
            let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
            return Err(DeployError::BadUpload {
                message: format!(
                    "{module} does not compile: {}: {}{at}",
                    error["type"].as_str().unwrap_or("SyntaxError"),
                    error["message"].as_str().unwrap_or("invalid source"),
                ),
                module: module.clone(),
                line,
            });
        }
    }
    Ok(functions)
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_deploy_runs_one_waits_and_a_third_is_refused() {
        let slots = std::sync::Arc::new(super::DeploySlots::default());
        let caro = falra_tenants::TenantName::parse("caro").unwrap();
        let dana = falra_tenants::TenantName::parse("dana").unwrap();
        let running = slots.try_take(&caro).unwrap();
        let waiting = slots.try_take(&caro).unwrap();
        assert!(slots.try_take(&caro).is_none());
        assert!(slots.try_take(&dana).is_some());
        drop(running);
        let next = slots.try_take(&caro).unwrap();
        drop((waiting, next));
        assert!(slots.0.lock().unwrap().is_empty());
    }
}
