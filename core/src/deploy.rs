//! Making a tenant's next version and activating it: a git sync, an upload and an upload's
//! removal all come through [`deploy`], one at a time per tenant.
//!
//! The order is what keeps a failed deploy from changing anything: fetch (a sync) → write the
//! version tree (commit + uploads) → build its virtualenv if it has a `requirements.txt` (in a
//! sandboxed child, with network) → compile its modules into the tree (in a sandboxed child,
//! which runs no tenant code) → list its functions (in a sandboxed child, never in the
//! daemon) → record the version, the upload change and the activation in one store
//! transaction → swap `github/git_<tenant>`. Until the transaction, nothing a call reads has
//! changed; a new version tree that fails a later step is removed again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use falra_policies::{Network, Policy};
use falra_sandbox::protocol::interpret;
use falra_sandbox::setup::SetupLimits;
use falra_sandbox::{netns, Bind, Finished, Termination};
use falra_tenants::{
    build_version, fetch, GitSource, ModuleName, TenantName, Upload, VersionId, VersionPlan,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::clock::now_ms;
use crate::Core;
use falra_runtime::isolation::{CodeMounts, VENV_DIR};
use falra_runtime::task::step;
use falra_runtime::ChildStage;
use falra_runtime::ErrorChain;
use falra_store::{NewVersion, TenantRow, UploadChange};

/// How long listing a version's functions (it imports every module) or compiling them may take.
const RUNNER_MODE_TIMEOUT: Duration = Duration::from_secs(60);
/// Where a compiling child writes its bytecode.
const BYTECODE_DIR: &str = "/falra-bytecode";
/// The largest function listing kept.
const INTROSPECT_MAX_BYTES: usize = 4 << 20;
/// Where a build's downloaded wheels are, inside its children.
const WHEELS_DIR: &str = "/falra-wheels";
/// How long each child of a virtualenv build may take.
const VENV_TIMEOUT: Duration = Duration::from_secs(600);
/// The most a virtualenv may take on disk.
const VENV_MAX_BYTES: u64 = 2 << 30;

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

/// The node's failure at `context`, for `map_err`.
fn node<E: std::error::Error + Send + Sync + 'static>(
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
pub async fn deploy(
    state: &Core,
    name: &TenantName,
    change: Change,
) -> Result<Deployed, DeployError> {
    let slot = state
        .deploy_slots
        .try_take(name)
        .ok_or_else(|| DeployError::Queued(name.clone()))?;
    deploy_in(state, name, change, slot).await
}

/// [`deploy`] with its place in the tenant's queue already taken.
pub async fn deploy_in(
    state: &Core,
    name: &TenantName,
    change: Change,
    slot: DeploySlot,
) -> Result<Deployed, DeployError> {
    let (task_state, task_name) = (state.clone(), name.clone());
    falra_runtime::task::spawn(async move {
        let deployed = deploy_now(&task_state, &task_name, change).await;
        drop(slot);
        deployed
    })
    .await
    .map_err(node("the deploy's task failed"))?
}

#[tracing::instrument(name = "deploy", skip_all, fields(tenant = %name, change = change.label()))]
async fn deploy_now(
    state: &Core,
    name: &TenantName,
    change: Change,
) -> Result<Deployed, DeployError> {
    let _lock = state.store.deploy_lock(name).await;
    let tenant = state
        .store
        .tenant(name)
        .await?
        .ok_or_else(|| DeployError::NoTenant(name.clone()))?;
    let policy = crate::plans::effective_policy(state, &tenant);
    // Deploys run the tenant's code (imports, listings, builds): not for a tenant past its quota.
    crate::metering::check_quota(state, name, policy.cpu_seconds_per_month).await?;
    let mut uploads: Vec<Upload> = state
        .store
        .uploads_of(name)
        .await?
        .into_iter()
        .map(|u| Upload {
            module: ModuleName::from_stored(&u.module),
            source: u.source,
        })
        .collect();

    let known_commit = match &tenant.active_version {
        Some(active) => state
            .store
            .version(name, active)
            .await?
            .and_then(|v| v.git_commit),
        None => None,
    };
    let fetch_needed = matches!(change, Change::Sync)
        || (tenant.repo.is_some() && known_commit.is_none() && tenant.active_version.is_some());
    let commit = if fetch_needed {
        Some(step("fetch", fetch_branch(state, name, &tenant)).await?)
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
    let version = step(
        "tree",
        falra_runtime::task::spawn_blocking(move || {
            let plan = VersionPlan {
                commit: plan_commit.as_deref(),
                subdir: subdir.as_deref(),
                uploads: &plan_uploads,
                max_bytes,
            };
            build_version(&layout, &tenant_name, &plan)
        }),
    )
    .await
    .map_err(node("version task failed"))?
    .map_err(|e| sync_failed(name, &e))?;
    let known = state.store.version(name, &version).await?;
    let fresh = known.is_none();

    let prepared = finish_version(
        state,
        name,
        &tenant,
        &policy,
        &version,
        upload_change.as_ref(),
        known.and_then(|v| v.functions),
    )
    .await;
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
    let record = NewVersion {
        id: &version,
        source: label,
        git_commit: commit.as_deref(),
        functions: Some(&functions_text),
        now,
    };
    step("activate", async {
        state
            .store
            .activate_version(name, &record, stored_change)
            .await?;
        state
            .layout
            .activate(name, &version)
            .map_err(node("could not switch the active version link"))
    })
    .await?;
    state
        .runtime
        .forget_other_versions(tenant.uid.get(), version.as_str());
    collect_versions(state, name).await;
    tracing::info!(tenant = %name, version = %version, source = label, "version active");
    Ok(Deployed { version, functions })
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

/// Everything a new version needs before it may become active: its owner, its virtualenv,
/// its function listing (reused when the version was made before). Returns the listing.
async fn finish_version(
    state: &Core,
    name: &TenantName,
    tenant: &TenantRow,
    policy: &Policy,
    version: &VersionId,
    uploaded: Option<&ModuleName>,
    known_functions: Option<String>,
) -> Result<Value, DeployError> {
    if state.runtime.sandbox.is_enabled() {
        // Only the tenant's own gid may read its versions, should a mount ever leak.
        state
            .layout
            .restrict_versions(name, tenant.uid.get())
            .map_err(node("could not set the version tree's owner"))?;
    }
    let code = state.layout.version_dir(name, version);
    let venv = step("venv", ensure_venv(state, tenant, policy, &code)).await?;
    let mounts = CodeMounts { code, venv };
    step(
        "compile",
        compile_version(state, name, tenant, policy, version, &mounts),
    )
    .await;
    let functions = match known_functions.and_then(|f| serde_json::from_str(&f).ok()) {
        Some(known) => known,
        None => step("list", introspect(state, tenant, policy, &mounts)).await,
    };
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

/// Why a version's modules were not compiled ahead (logged; the deploy goes on).
#[derive(Debug, thiserror::Error)]
enum CompileError {
    #[error("could not prepare the scratch directory")]
    Scratch(#[source] std::io::Error),
    #[error("could not run the compiler")]
    Run(#[source] falra_runtime::RunError),
    #[error("the compiler ended with {0:?}")]
    Ended(Termination),
    #[error("the compiler's task failed")]
    Task(#[source] tokio::task::JoinError),
    #[error("could not lay the bytecode in")]
    LayIn(#[source] falra_tenants::bytecode::BytecodeError),
}

/// Compiles the version's modules in a sandboxed child and lays the bytecode into its tree
/// (`falra_tenants::bytecode`), so that no call compiles them again: the tree is read-only to
/// calls, which could never cache it themselves. The child runs no tenant code (the runner's
/// compile mode imports nothing and only compiles), and what it wrote is checked as it is laid
/// in. Nothing here can fail a deploy: a version without bytecode works, its calls only start
/// slower.
async fn compile_version(
    state: &Core,
    name: &TenantName,
    tenant: &TenantRow,
    policy: &Policy,
    version: &VersionId,
    mounts: &CodeMounts,
) {
    let versions = state.layout.tenant_versions(name);
    // Scratch directories a crashed daemon left behind (deploys of one tenant run one at a time).
    if let Ok(entries) = std::fs::read_dir(&versions) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".pyc-") {
                let _ = falra_runtime::task::spawn_blocking(move || {
                    std::fs::remove_dir_all(entry.path())
                })
                .await;
            }
        }
    }
    let scratch = versions.join(format!(
        ".pyc-{}-{}",
        version.as_str(),
        crate::calls::new_call_id()
    ));
    let compiled = async {
        // The compiler runs as the tenant: only the scratch directory is writable to it.
        tenant_owned_dir(&scratch, tenant.uid.get()).map_err(CompileError::Scratch)?;
        let isolated = state.runtime.sandbox.is_enabled();
        let out = if isolated {
            PathBuf::from(BYTECODE_DIR)
        } else {
            scratch.clone()
        };
        let writable = Bind {
            source: scratch.clone(),
            target: out.clone(),
            writable: true,
        };
        let request = json!({
            "protocol": 1, "call_id": "compile", "fn": "", "kwargs": {},
            "mode": "compile", "out": out,
        });
        let finished = run_runner_mode(
            state,
            tenant,
            policy,
            mounts,
            isolated.then_some(writable),
            &request,
        )
        .await
        .map_err(CompileError::Run)?;
        if finished.termination != Termination::Exited(0) {
            return Err(CompileError::Ended(finished.termination));
        }
        let (from, tree) = (scratch.clone(), mounts.code.clone());
        let (tag, max_total) = (
            state.config.cache_tag.clone(),
            state.config.max_version_bytes,
        );
        falra_runtime::task::spawn_blocking(move || {
            falra_tenants::bytecode::lay_in(&from, &tree, &tag, max_total)
        })
        .await
        .map_err(CompileError::Task)?
        .map_err(CompileError::LayIn)
    }
    .await;
    let doomed = scratch.clone();
    match falra_runtime::task::spawn_blocking(move || std::fs::remove_dir_all(&doomed)).await {
        Ok(Err(e)) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(tenant = %name, error = %e, "could not remove the bytecode scratch directory")
        }
        _ => {}
    }
    match compiled {
        Ok(n) => {
            tracing::debug!(tenant = %name, version = %version, modules = n, "bytecode laid in")
        }
        Err(e) => {
            tracing::warn!(tenant = %name, version = %version, error = %ErrorChain(&e), "the version's modules were not compiled ahead")
        }
    }
}

/// Lists the version's modules and functions in a sandboxed child (the runner's introspection
/// mode). A listing that cannot be made is recorded as an error, not a failed deploy: a module
/// that misbehaves at import time must not keep the rest of the tenant's code from deploying.
async fn introspect(
    state: &Core,
    tenant: &TenantRow,
    policy: &Policy,
    mounts: &CodeMounts,
) -> Value {
    let request = json!({
        "protocol": 1, "call_id": "introspect", "fn": "", "kwargs": {}, "mode": "introspect",
    });
    let finished = match run_runner_mode(state, tenant, policy, mounts, None, &request).await {
        Ok(finished) => finished,
        Err(e) => return json!({"modules": [], "error": e.to_string()}),
    };
    match interpret(&finished, INTROSPECT_MAX_BYTES) {
        Ok(raw) => serde_json::from_str::<Value>(raw.get())
            .ok()
            .filter(listing_is_well_formed)
            .unwrap_or_else(|| json!({"modules": [], "error": "the listing was not readable"})),
        Err(failure) => json!({
            "modules": [],
            "error": format!(
                "listing the functions failed: {}",
                crate::calls::failure_code(&failure).as_str()
            ),
        }),
    }
}

/// Runs the runner in one of its deploy-time modes (`request["mode"]`) in a sandboxed child of
/// the tenant, with `writable` bound for its output if it has any. Whatever calls may do, these
/// never need the network.
async fn run_runner_mode(
    state: &Core,
    tenant: &TenantRow,
    policy: &Policy,
    mounts: &CodeMounts,
    writable: Option<Bind>,
    request: &Value,
) -> Result<Finished, falra_runtime::RunError> {
    let mut policy = policy.clone();
    policy.network = Network::None;
    let stage = ChildStage {
        program: state.config.python.clone(),
        args: None,
        extra: writable.into_iter().collect(),
        env: Vec::new(),
        setup: SetupLimits::default(),
        netns: None,
        cwd: None,
    };
    let mut limits = state.runtime.limits(0);
    // The tenant's own time limit: importing its modules is its code running, as in a call.
    limits.wall = Duration::from_millis(policy.timeout_ms.into()).min(RUNNER_MODE_TIMEOUT);
    limits.stdout_bytes = INTROSPECT_MAX_BYTES;
    let child = state
        .runtime
        .prepare(tenant.uid.get(), mounts, &policy, stage)
        .await?;
    let mode = request["mode"].as_str().unwrap_or("runner");
    let request = request.to_string().into_bytes();
    let ran = child.run_to_end(request, limits, ()).await?;
    crate::metering::record_deploy_child(state, &tenant.name, mode, &ran);
    Ok(ran.finished)
}

/// Makes `dir` (a new directory) the tenant's, for a child of it to write its output into.
fn tenant_owned_dir(dir: &Path, uid: u32) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::os::unix::fs::chown(dir, Some(uid), Some(uid))
}

/// The listing as the runner writes it: `{"modules": [{"module": str, "functions"?: [..],
/// "error"?: {..}}]}`. Tenant code ran in the child that wrote it, so it is checked.
fn listing_is_well_formed(v: &Value) -> bool {
    v["modules"].as_array().is_some_and(|modules| {
        modules.iter().all(|m| {
            m["module"].is_string()
                && (m.get("error").is_none() || m["error"].is_object())
                && (m.get("functions").is_none()
                    || m["functions"].as_array().is_some_and(|fs| {
                        fs.iter()
                            .all(|f| f["name"].is_string() && f["signature"].is_string())
                    }))
        })
    })
}

/// The virtualenv a version's `requirements.txt` asks for, built if it is not there yet.
/// Virtualenvs are shared by every version (of any tenant) with the same requirements and
/// interpreter: `venvs/<hash>/`.
async fn ensure_venv(
    state: &Core,
    tenant: &TenantRow,
    policy: &Policy,
    code: &Path,
) -> Result<Option<PathBuf>, DeployError> {
    let Some(dir) = venv_for(state, code) else {
        return Ok(None);
    };
    if dir.is_dir() {
        return Ok(Some(dir));
    }
    let venvs = dir.parent().expect("venvs/<hash>").to_path_buf();
    let staging = venvs.join(format!(
        ".tmp-{}-{}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("venv"),
        crate::calls::new_call_id()
    ));
    // The build runs as the tenant: only its output directory is writable to it.
    tenant_owned_dir(&staging, tenant.uid.get())
        .map_err(node("could not prepare the virtualenv directory"))?;
    let built = build_venv(state, tenant, policy, code, &staging).await;
    let finished = built.and_then(|()| {
        seal_venv(&staging)
            .map_err(node("could not seal the virtualenv"))
            .and_then(|size| {
                if size > VENV_MAX_BYTES {
                    Err(DeployError::failed(format!(
                        "the virtualenv takes {size} bytes, over the limit of {VENV_MAX_BYTES}"
                    )))
                } else {
                    Ok(())
                }
            })
    });
    if let Err(e) = finished {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&staging, &dir) {
        let _ = std::fs::remove_dir_all(&staging);
        if !dir.is_dir() {
            return Err(node("could not move the virtualenv in place")(e));
        }
    }
    tracing::info!(tenant = %tenant.name, venv = %dir.display(), "virtualenv built");
    Ok(Some(dir))
}

/// `venvs/<hash>` for the version at `code`, if it has a `requirements.txt` (a regular file;
/// a symlink is not followed). The hash covers the interpreter, the operator's package index
/// and the whole file, which names packages only (`falra_tenants::requirements`): two
/// tenants with the same file get the same packages, so they share the virtualenv.
pub fn venv_for(state: &Core, code: &Path) -> Option<PathBuf> {
    let path = code.join("requirements.txt");
    if !path.symlink_metadata().ok()?.is_file() {
        return None;
    }
    let text = std::fs::read(&path).ok()?;
    let mut h = Sha256::new();
    h.update(state.config.python_version.as_bytes());
    h.update(b"\n");
    for source in state.config.pip_index_args() {
        h.update(source.as_bytes());
        h.update(b"\n");
    }
    h.update(&text);
    let hash = hex::encode(h.finalize());
    Some(state.config.data_dir.join("venvs").join(&hash[..24]))
}

/// Builds the virtualenv of `requirements.txt` into `out`, in two sandboxed children of the
/// tenant, neither with the host's network and neither running anything the tenant controls:
///
/// 1. `pip download`, wheels only, in a network namespace of its own whose only way out is a
///    build gateway (every connection checked by the node's address rule at connect time),
///    from the operator's package index, into a scratch directory;
/// 2. `pip install --no-index` from that directory, with no network at all, into `out`.
///
/// The file is checked line by line first (`falra_tenants::requirements`): package names,
/// versions, markers and hashes only, so pip cannot be pointed at a path, a VCS, another
/// index or an sdist. Both children run in an empty working directory.
async fn build_venv(
    state: &Core,
    tenant: &TenantRow,
    policy: &Policy,
    code: &Path,
    out: &Path,
) -> Result<(), DeployError> {
    let text = std::fs::read_to_string(code.join("requirements.txt")).map_err(|e| {
        DeployError::failed(format!(
            "requirements.txt could not be read as UTF-8 text: {e}"
        ))
    })?;
    falra_tenants::requirements::check(&text).map_err(|e| DeployError::Failed {
        message: e.to_string(),
        detail: Some(json!({"line": e.line, "requirement": e.text})),
    })?;
    let wheels = out.with_extension("wheels");
    tenant_owned_dir(&wheels, tenant.uid.get())
        .map_err(node("could not prepare the build's download directory"))?;
    let built = async {
        pip_stage(
            state,
            tenant,
            policy,
            code,
            out,
            &wheels,
            PipStage::Download,
        )
        .await?;
        pip_stage(state, tenant, policy, code, out, &wheels, PipStage::Install).await
    }
    .await;
    let doomed = wheels.clone();
    let _ = falra_runtime::task::spawn_blocking(move || std::fs::remove_dir_all(doomed)).await;
    built
}

/// One of the two children of a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PipStage {
    Download,
    Install,
}

async fn pip_stage(
    state: &Core,
    tenant: &TenantRow,
    policy: &Policy,
    code: &Path,
    out: &Path,
    wheels: &Path,
    which: PipStage,
) -> Result<(), DeployError> {
    let isolated = state.runtime.sandbox.is_enabled();
    let inside = |real: &Path, at: &str| {
        if isolated {
            PathBuf::from(at)
        } else {
            real.to_path_buf()
        }
    };
    let requirements = if isolated {
        PathBuf::from(falra_runtime::isolation::CODE_DIR).join("requirements.txt")
    } else {
        code.join("requirements.txt")
    };
    let target = inside(out, VENV_DIR);
    let wheel_dir = inside(wheels, WHEELS_DIR);
    let mut build_policy = policy.clone();
    build_policy.network = Network::None;
    build_policy.memory_mb = build_policy.memory_mb.max(1024);
    build_policy.pids = build_policy.pids.max(256);
    build_policy.tmp_mb = build_policy.tmp_mb.max(1024);
    build_policy.cpu_percent = build_policy.cpu_percent.max(100);
    let mut args: Vec<std::ffi::OsString> = [
        "-I",
        "-m",
        "pip",
        match which {
            PipStage::Download => "download",
            PipStage::Install => "install",
        },
        "--quiet",
        "--no-input",
        "--disable-pip-version-check",
        "--no-cache-dir",
        // Wheels only: installing a wheel runs none of its code.
        "--only-binary=:all:",
    ]
    .into_iter()
    .map(std::ffi::OsString::from)
    .collect();
    // The build's own network namespace: for the download, with the build gateway inside;
    // for the install, with nothing at all.
    let (netns, listener) = if isolated {
        let gateway = (which == PipStage::Download).then_some(falra_runtime::gateway::GATEWAY_ADDR);
        let (fd, listener) = netns::new_loopback_namespace_listening(gateway)
            .map_err(node("could not prepare the build's network namespace"))?;
        (Some(std::sync::Arc::new(fd)), listener)
    } else {
        (None, None)
    };
    let _gate =
        listener.and_then(|l| falra_runtime::gateway::Gateways::serve_build(&state.runtime, l));
    match which {
        PipStage::Download => {
            if isolated {
                args.extend(["--proxy".into(), falra_runtime::gateway::PROXY_URL.into()]);
            }
            args.extend(state.config.pip_index_args().into_iter().map(Into::into));
            args.extend(["--dest".into(), wheel_dir.clone().into_os_string()]);
        }
        PipStage::Install => {
            args.extend([
                "--no-index".into(),
                "--find-links".into(),
                wheel_dir.clone().into_os_string(),
                "--no-warn-script-location".into(),
                "--target".into(),
                target.clone().into_os_string(),
            ]);
        }
    }
    args.extend(["-r".into(), requirements.into_os_string()]);
    let binds = vec![
        Bind {
            source: out.to_path_buf(),
            target: target.clone(),
            writable: which == PipStage::Install,
        },
        Bind {
            source: wheels.to_path_buf(),
            target: wheel_dir.clone(),
            writable: which == PipStage::Download,
        },
    ];
    let stage = ChildStage {
        program: state.config.python.clone(),
        args: Some(args),
        extra: binds.into_iter().filter(|_| isolated).collect(),
        // No configuration file of pip's is read (a planted pip.conf would choose the index).
        env: vec![
            ("PIP_NO_CACHE_DIR".into(), "1".into()),
            ("PIP_CONFIG_FILE".into(), "/dev/null".into()),
        ],
        // Wheels and compiled extensions can be large files; many files are open at once.
        setup: SetupLimits {
            file_size_bytes: 512 << 20,
            open_files: 1024,
            ..SetupLimits::default()
        },
        netns,
        cwd: Some(wheel_dir),
    };
    let mounts = CodeMounts {
        code: code.to_path_buf(),
        venv: None,
    };
    let mut limits = state.runtime.limits(0);
    limits.wall = VENV_TIMEOUT;
    let child = state
        .runtime
        .prepare(tenant.uid.get(), &mounts, &build_policy, stage)
        .await?;
    let ran = child.run_to_end(Vec::new(), limits, ()).await?;
    let what = match which {
        PipStage::Download => "pip-download",
        PipStage::Install => "pip-install",
    };
    crate::metering::record_deploy_child(state, &tenant.name, what, &ran);
    let finished = ran.finished;
    let output = String::from_utf8_lossy(&finished.stderr).trim().to_owned();
    let why = match finished.termination {
        Termination::Exited(0) => return Ok(()),
        Termination::Exited(code) => format!("pip exited with status {code}"),
        Termination::Signaled(sig) => format!("pip was killed by signal {sig}"),
        Termination::TimedOut => format!(
            "pip ran over the build limit of {} s",
            VENV_TIMEOUT.as_secs()
        ),
    };
    let refused = _gate.map(|g| g.refusals.list()).unwrap_or_default();
    let output = if refused.is_empty() {
        output
    } else {
        format!(
            "{output}\n(the egress gateway refused: {})",
            refused.join("; ")
        )
    };
    let step = match which {
        PipStage::Download => "downloading the wheels of requirements.txt failed (only wheels are installed, from the operator's package index)",
        PipStage::Install => "installing requirements.txt failed",
    };
    Err(DeployError::Failed {
        message: format!("{step}: {why}: {output}"),
        detail: Some(json!({"pip": output})),
    })
}

/// Makes a built virtualenv root's and read-only for everyone (it is bound read-only into
/// calls anyway); returns its size in bytes. Symlinks pip made are left as they are.
fn seal_venv(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::PermissionsExt;
    let mut size = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = path.symlink_metadata()?;
        std::os::unix::fs::lchown(&path, Some(0), Some(0))?;
        if meta.is_dir() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            for entry in std::fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        } else if meta.is_file() {
            size += meta.len();
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(size)
}

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
async fn collect_venvs(state: &Core) {
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
