//! The runner's deploy-time modes, each in a sandboxed child of the tenant: compiling a
//! version's modules into its tree, and listing its functions. Neither runs tenant code in the
//! daemon; the compile imports nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use falra_policies::{Network, Policy};
use falra_sandbox::protocol::interpret;
use falra_sandbox::setup::SetupLimits;
use falra_sandbox::{Bind, Finished, Termination};
use falra_tenants::{TenantName, VersionId};
use serde_json::{json, Value};

use crate::Core;
use falra_runtime::isolation::CodeMounts;
use falra_runtime::ChildStage;
use falra_runtime::ErrorChain;
use falra_store::TenantRow;

/// How long listing a version's functions (it imports every module) or compiling them may take.
pub(super) const RUNNER_MODE_TIMEOUT: Duration = Duration::from_secs(60);
/// Where a compiling child writes its bytecode.
pub(super) const BYTECODE_DIR: &str = "/falra-bytecode";
/// The largest function listing kept.
pub(super) const INTROSPECT_MAX_BYTES: usize = 4 << 20;

/// Why a version's modules were not compiled ahead (logged; the deploy goes on).
#[derive(Debug, thiserror::Error)]
pub(super) enum CompileError {
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
pub(super) async fn compile_version(
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
/// The modules are imported with the environment the tenant's calls get (its variables and
/// secrets for code), so a module that reads one at import lists as it will run; what the
/// listing says of a module that fails is masked as a call's error is.
pub(super) async fn introspect(
    state: &Core,
    tenant: &TenantRow,
    policy: &Policy,
    mounts: &CodeMounts,
) -> Value {
    let code_env = match crate::secrets::code_env(state, &tenant.name, &tenant.env).await {
        Ok(env) => env,
        Err(e) => {
            return json!({"modules": [], "error": format!("the tenant's secrets for code could not be read: {e}")})
        }
    };
    let request = json!({
        "protocol": 1, "call_id": "introspect", "fn": "", "kwargs": {}, "mode": "introspect",
        "env": code_env.vars,
    });
    let listing = list_in_child(state, tenant, policy, mounts, &request).await;
    code_env.masker.value(listing)
}

async fn list_in_child(
    state: &Core,
    tenant: &TenantRow,
    policy: &Policy,
    mounts: &CodeMounts,
    request: &Value,
) -> Value {
    let request = request.clone();
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
pub(super) async fn run_runner_mode(
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
        fork: false,
        stdin_fd: None,
        preload: None,
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
pub(super) fn tenant_owned_dir(dir: &Path, uid: u32) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::os::unix::fs::chown(dir, Some(uid), Some(uid))
}

/// The listing as the runner writes it: `{"modules": [{"module": str, "functions"?: [..],
/// "error"?: {..}}]}`. Tenant code ran in the child that wrote it, so it is checked.
pub(super) fn listing_is_well_formed(v: &Value) -> bool {
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
