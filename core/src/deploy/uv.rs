//! A virtualenv built with `uv`, from the node's wheel cache, in three sandboxed children of
//! the tenant, none running anything the tenant controls:
//!
//! 1. **resolve** — `uv pip compile --no-build` of the checked requirements (rendered by the
//!    daemon, never the tenant's file) into a `pylock.toml` naming one wheel per package with
//!    its URL and SHA-256, reaching the operator's index only through the build gateway;
//!    skipped when the version's resolved set was recorded before (a rollback rebuilds what
//!    it had);
//! 2. **wheels** — the wheels the cache lacks, fetched by a short script of ours run by the
//!    node's interpreter, through the build gateway; each checked against its digest again
//!    by the daemon as it enters the cache (and against the tenant's `--hash` pins);
//! 3. **install** — `uv pip install --offline --no-index --require-hashes` of exactly that
//!    set, from a directory of the cached wheels, with no network at all, as the node's
//!    builder uid ([`BUILDER_UID`], no tenant's) in the build arena (`<data>/builds`): uv
//!    unpacks each wheel there once and links its files into every virtualenv that installs
//!    it, so a warm install writes no file data and twenty virtualenvs of pandas take the
//!    disk of about one. The arena is bound into install children only, one at a time
//!    ([`ARENA`]); no call, and nothing a tenant controls, ever runs as the builder. The
//!    tree leaves the arena before the daemon writes to it or seals it.
//!
//! What was installed (name, version, wheel, digest) is kept in the virtualenv and with the
//! version.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use falra_policies::{Network, Policy};
use falra_runtime::isolation::CodeMounts;
use falra_runtime::ChildStage;
use falra_sandbox::setup::SetupLimits;
use falra_sandbox::{netns, Bind, Finished, Termination};
use falra_store::TenantRow;
use falra_tenants::requirements::{self, Requirement};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::log::DeployLog;
use super::runner_modes::tenant_owned_dir;
use super::venv::{VENV_MAX_BYTES, VENV_TIMEOUT};
use super::wheels::{is_digest, is_wheel_file_name};
use super::{node, DeployError};
use crate::Core;

/// One package of a resolved set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// The wheel's file name.
    pub wheel: String,
    pub sha256: String,
    /// Where it was fetched from (fetched from there again if the cache lost it).
    pub url: String,
}

impl Package {
    /// Whether a recorded package can be built from as it is: what `parse_pylock` accepts
    /// (a set read back from the store is checked again before it names files or lines).
    pub fn is_well_formed(&self) -> bool {
        !self.name.is_empty()
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && is_version(&self.version)
            && is_wheel_file_name(&self.wheel)
            && is_digest(&self.sha256)
            && url::Url::parse(&self.url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
    }
}

/// A version as a package index writes one: PEP 440's characters only (one line, no spaces).
fn is_version(v: &str) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'!' | b'_' | b'-'))
}

/// The file a virtualenv keeps its resolved set in (a dot file: never importable).
pub const PACKAGES_FILE: &str = ".falra-packages.json";

/// The uid install children run as: below every tenant's, so no tenant's code ever runs as
/// it. It owns the build arena's unpacked wheels, whose files virtualenvs link.
pub const BUILDER_UID: u32 = falra_store::TenantUid::FIRST - 1;
/// Where the build arena is, inside install children.
const ARENA_DIR: &str = "/falra-builds";
/// uv's cache of unpacked wheels, in the arena.
const UV_CACHE: &str = ".uv-cache";

/// The build arena (`<data>/builds`, root's, with uv's cache the builder's), made if missing.
pub(super) fn prepare_arena(state: &Core) -> Result<PathBuf, DeployError> {
    let arena = state.config.data_dir.join("builds");
    tenant_owned_dir(&arena.join(UV_CACHE), BUILDER_UID)
        .map_err(node("could not prepare the build arena"))?;
    Ok(arena)
}

/// A build's scratch directory (`<data>/venvs/<staging name>.<what>`), away from the arena.
fn scratch_for(state: &Core, out: &Path, what: &str) -> PathBuf {
    let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("venv");
    state
        .config
        .data_dir
        .join("venvs")
        .join(format!("{name}.{what}"))
}

/// Where a build's scratch directory is, inside its children.
const BUILD_DIR: &str = "/falra-build";
/// Where the wheels to install are, inside the install child.
const WHEELS_DIR: &str = "/falra-wheels";
/// Where the directory holding `uv` is bound, inside the children that run it.
const UV_DIR: &str = "/falra-uv";
/// The largest `pylock.toml` read.
const MAX_LOCK_BYTES: u64 = 4 << 20;

/// What a build reads its requirements from.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// `requirements.txt`, `pyproject.toml` or `uv.lock` (whose requirements are uv's export
    /// of it: their lines are not the lock's, so errors name the package instead).
    pub file: &'static str,
    pub requirements: Vec<Requirement>,
}

impl Inputs {
    /// Whether the file pins every package by hash (pip's hash-checking mode, or a lock).
    fn hashed(&self) -> bool {
        self.requirements.iter().any(|r| !r.hashes.is_empty())
    }

    fn line_of(&self, package: &str) -> Option<&Requirement> {
        let name = requirements::normalize_name(package);
        self.requirements.iter().find(|r| r.name == name)
    }

    /// Every hash the file gives a package, over all its lines (a lock exports a package
    /// once per marker).
    fn hashes_of(&self, package: &str) -> HashSet<&str> {
        let name = requirements::normalize_name(package);
        self.requirements
            .iter()
            .filter(|r| r.name == name)
            .flat_map(|r| r.hashes.iter().map(String::as_str))
            .collect()
    }
}

/// One uv install on this node at a time, and nothing else in the arena meanwhile: a
/// virtualenv is moved out of the arena (to be sealed by the daemon) before the next install
/// child starts, so no install child ever shares the arena with another build's output, and
/// uv's unpacked wheels are cleared only between installs.
static ARENA: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Builds the virtualenv of `inputs` into `out` (its staging directory in the build arena,
/// the builder's), then moves it to `sealing` (out of the arena) for the daemon to seal.
/// `recorded` is the version's resolved set, if it was built before.
#[allow(clippy::too_many_arguments)]
pub(super) async fn build(
    state: &Core,
    tenant: &TenantRow,
    policy: &Policy,
    code: &Path,
    uv: &Path,
    inputs: &Inputs,
    recorded: Option<Vec<Package>>,
    out: &Path,
    sealing: &Path,
    log: &DeployLog,
) -> Result<Vec<Package>, DeployError> {
    let scratch = scratch_for(state, out, "build");
    tenant_owned_dir(&scratch, tenant.uid.get())
        .map_err(node("could not prepare the build's directory"))?;
    let built = async {
        let packages = match recorded {
            Some(packages) => {
                log.step(
                    "resolve",
                    async { Ok::<_, DeployError>(packages) },
                    |p: &Vec<Package>| {
                        Some(format!(
                            "{} packages as this version recorded them",
                            p.len()
                        ))
                    },
                )
                .await?
            }
            None => {
                log.step(
                    "resolve",
                    resolve(state, tenant, policy, code, uv, inputs, &scratch),
                    |p: &Vec<Package>| Some(describe(p)),
                )
                .await?
            }
        };
        check_pins(inputs, &packages)?;
        let links = log
            .step(
                "wheels",
                wheels(state, tenant, policy, code, &packages, &scratch),
                |w: &Wheels| Some(w.summary.clone()),
            )
            .await?;
        let arena = ARENA.lock().await;
        log.step(
            "install",
            install(
                state, tenant, policy, code, uv, &packages, &links.dir, &scratch, out,
            ),
            |()| Some(format!("{} packages installed", packages.len())),
        )
        .await?;
        std::fs::rename(out, sealing)
            .map_err(node("could not move the virtualenv to be sealed"))?;
        drop(arena);
        Ok(packages)
    }
    .await;
    let doomed = scratch.clone();
    let _ = falra_runtime::task::spawn_blocking(move || std::fs::remove_dir_all(doomed)).await;
    let keep: HashSet<String> = match &built {
        Ok(p) => p.iter().map(|p| p.sha256.clone()).collect(),
        Err(_) => HashSet::new(),
    };
    let cache = state.wheels.clone();
    let unpacked = state.config.data_dir.join("builds").join(UV_CACHE);
    let bound = state.config.wheel_cache_bytes;
    let arena = ARENA.lock().await;
    let _ = falra_runtime::task::spawn_blocking(move || {
        let _ = cache.evict(&keep);
        bound_unpacked(&unpacked, bound);
    })
    .await;
    drop(arena);
    built
}

/// Past the wheel cache's bound, uv's unpacked wheels are cleared whole (virtualenvs keep the
/// files they link; the next installs unpack again). Measured by blocks, so a file linked
/// from many virtualenvs counts once.
fn bound_unpacked(dir: &Path, bound: u64) {
    use std::os::unix::fs::MetadataExt;
    let mut size = 0u64;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.nlink() == 1 {
                // Held by the cache alone: what clearing it would give back.
                size += meta.len();
            }
        }
    }
    if size > bound {
        tracing::info!(
            bytes = size,
            "the unpacked wheels passed the cache's bound; cleared"
        );
        let _ = std::fs::remove_dir_all(dir);
        let _ = tenant_owned_dir(dir, BUILDER_UID);
    }
}

/// `6 packages: numpy 2.4.6, pandas 3.1.1, …` (the first few).
fn describe(packages: &[Package]) -> String {
    let named: Vec<String> = packages
        .iter()
        .take(8)
        .map(|p| format!("{} {}", p.name, p.version))
        .collect();
    let more = if packages.len() > named.len() {
        format!(", and {} more", packages.len() - named.len())
    } else {
        String::new()
    };
    format!("{} packages: {}{more}", packages.len(), named.join(", "))
}

/// With hashes in the file, every package installed must be pinned there, and by a digest
/// of the very wheel chosen.
fn check_pins(inputs: &Inputs, packages: &[Package]) -> Result<(), DeployError> {
    if !inputs.hashed() {
        return Ok(());
    }
    for p in packages {
        let Some(line) = inputs.line_of(&p.name) else {
            return Err(requirement_error(
                inputs,
                None,
                "hash_mismatch",
                format!(
                    "{} {} is needed but not pinned by a --hash in {} (with hashes, every package must be)",
                    p.name, p.version, inputs.file
                ),
            ));
        };
        if !inputs.hashes_of(&p.name).contains(p.sha256.as_str()) {
            return Err(requirement_error(
                inputs,
                Some(line),
                "hash_mismatch",
                format!(
                    "the wheel {} has the SHA-256 {}, which is none of the hashes given",
                    p.wheel, p.sha256
                ),
            ));
        }
    }
    Ok(())
}

/// A failed build naming the requirement (its line) and why.
fn requirement_error(
    inputs: &Inputs,
    line: Option<&Requirement>,
    reason: &'static str,
    why: String,
) -> DeployError {
    let line = line.filter(|_| inputs.file != "uv.lock");
    let message = match line {
        Some(r) => format!("{} line {} ({}): {why}", inputs.file, r.line, r.spec),
        None => format!("{}: {why}", inputs.file),
    };
    DeployError::Failed {
        message,
        detail: Some(json!({
            "reason": reason,
            "file": inputs.file,
            "line": line.map(|r| r.line),
            "requirement": line.map(|r| r.spec.clone()),
        })),
    }
}

/// A child of a build (uv's or pip's): its program, arguments, binds, whether it may reach
/// the index (through the build gateway), its environment and working directory.
pub(super) struct BuildChild {
    /// What metering calls it (`uv-resolve`, `pip-download`, …).
    pub what: &'static str,
    pub program: PathBuf,
    pub args: Vec<std::ffi::OsString>,
    pub binds: Vec<Bind>,
    pub gateway: bool,
    pub env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    /// As the child sees it.
    pub cwd: PathBuf,
    /// Whom it runs as, if not the tenant ([`BUILDER_UID`]).
    pub uid: Option<u32>,
}

/// Runs one child of a build to its end, as the tenant, with the build's limits and in a
/// network namespace of its own (the build gateway inside only if `gateway`); returns what
/// it wrote and the gateway's refusals.
pub(super) async fn run_child(
    state: &Core,
    tenant: &TenantRow,
    policy: &Policy,
    code: &Path,
    child: BuildChild,
) -> Result<(Finished, Vec<String>), DeployError> {
    let isolated = state.runtime.sandbox.is_enabled();
    let mut build_policy = policy.clone();
    build_policy.network = Network::None;
    build_policy.memory_mb = build_policy.memory_mb.max(1024);
    build_policy.pids = build_policy.pids.max(256);
    build_policy.tmp_mb = build_policy.tmp_mb.max(1024);
    build_policy.cpu_percent = build_policy.cpu_percent.max(100);
    let (netns, listener) = if isolated {
        let gateway = child
            .gateway
            .then_some(falra_runtime::gateway::GATEWAY_ADDR);
        let (fd, listener) = netns::new_loopback_namespace_listening(gateway)
            .map_err(node("could not prepare the build's network namespace"))?;
        (Some(std::sync::Arc::new(fd)), listener)
    } else {
        (None, None)
    };
    let gate =
        listener.and_then(|l| falra_runtime::gateway::Gateways::serve_build(&state.runtime, l));
    let mut env = child.env;
    if child.gateway && isolated {
        env.extend(falra_runtime::gateway::proxy_env());
    }
    let stage = ChildStage {
        program: child.program,
        args: Some(child.args),
        extra: if isolated { child.binds } else { Vec::new() },
        env,
        setup: SetupLimits {
            file_size_bytes: 1 << 30,
            open_files: 1024,
            ..SetupLimits::default()
        },
        netns,
        cwd: Some(if isolated {
            child.cwd
        } else {
            std::env::temp_dir()
        }),
        fork: false,
        stdin_fd: None,
        preload: None,
    };
    let mounts = CodeMounts {
        code: code.to_path_buf(),
        venv: None,
    };
    let mut limits = state.runtime.limits(0);
    limits.wall = VENV_TIMEOUT;
    let prepared = state
        .runtime
        .prepare(
            child.uid.unwrap_or(tenant.uid.get()),
            &mounts,
            &build_policy,
            stage,
        )
        .await?;
    let ran = prepared.run_to_end(Vec::new(), limits, ()).await?;
    crate::metering::record_deploy_child(state, &tenant.name, child.what, &ran);
    let refused = gate.map(|g| g.refusals.list()).unwrap_or_default();
    Ok((ran.finished, refused))
}

/// What a child said on stderr, trimmed, with the gateway's refusals.
pub(super) fn child_output(finished: &Finished, refused: &[String]) -> String {
    let mut output = String::from_utf8_lossy(&finished.stderr).trim().to_owned();
    if !finished.stderr_tail.is_empty() {
        output.push_str("\n…\n");
        output.push_str(String::from_utf8_lossy(&finished.stderr_tail).trim());
    }
    if !refused.is_empty() {
        output.push_str(&format!(
            "\n(the egress gateway refused: {})",
            refused.join("; ")
        ));
    }
    output
}

pub(super) fn termination_text(tool: &str, termination: &Termination) -> String {
    match termination {
        Termination::Exited(code) => format!("{tool} exited with status {code}"),
        Termination::Signaled(sig) => format!("{tool} was killed by signal {sig}"),
        Termination::TimedOut => format!(
            "{tool} ran over the build limit of {} s",
            VENV_TIMEOUT.as_secs()
        ),
    }
}

/// Paths as a child sees them (the real ones when the sandbox is off).
pub(super) fn inside(state: &Core, real: &Path, at: &str) -> PathBuf {
    if state.runtime.sandbox.is_enabled() {
        PathBuf::from(at)
    } else {
        real.to_path_buf()
    }
}

fn uv_program(state: &Core, uv: &Path) -> (PathBuf, Option<Bind>) {
    let dir = uv.parent().unwrap_or(Path::new("/")).to_path_buf();
    let file = uv.file_name().unwrap_or_default();
    if state.runtime.sandbox.is_enabled() {
        (
            Path::new(UV_DIR).join(file),
            Some(Bind {
                source: dir,
                target: UV_DIR.into(),
                writable: false,
            }),
        )
    } else {
        (uv.to_path_buf(), None)
    }
}

/// uv reads no configuration file and downloads no interpreter; its home is the build's.
fn uv_env() -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    vec![
        ("UV_NO_CONFIG".into(), "1".into()),
        ("UV_PYTHON_DOWNLOADS".into(), "never".into()),
        ("HOME".into(), BUILD_DIR.into()),
    ]
}

fn scratch_bind(scratch: &Path) -> Bind {
    Bind {
        source: scratch.to_path_buf(),
        target: BUILD_DIR.into(),
        writable: true,
    }
}

/// The requirements a `uv.lock` pins for this project (`uv export --frozen`: the lock as it
/// is, never resolved again, without the project itself or its development groups), read
/// in a child with no network and checked as a requirements file is: a lock naming a path,
/// a VCS checkout or a URL is refused.
pub(super) async fn export_lock(
    state: &Core,
    tenant: &TenantRow,
    policy: &Policy,
    code: &Path,
    uv: &Path,
    out: &Path,
) -> Result<Inputs, DeployError> {
    let scratch = scratch_for(state, out, "lock");
    tenant_owned_dir(&scratch, tenant.uid.get())
        .map_err(node("could not prepare the build's directory"))?;
    let (program, uv_bind) = uv_program(state, uv);
    let project = if state.runtime.sandbox.is_enabled() {
        PathBuf::from(falra_runtime::isolation::CODE_DIR)
    } else {
        code.to_path_buf()
    };
    let args: Vec<std::ffi::OsString> = vec![
        "export".into(),
        "--frozen".into(),
        "--no-emit-project".into(),
        "--no-dev".into(),
        "--format".into(),
        "requirements.txt".into(),
        "--no-header".into(),
        "--no-annotate".into(),
        "--no-config".into(),
        "--no-cache".into(),
        "--quiet".into(),
        "--color".into(),
        "never".into(),
        "--project".into(),
        project.into(),
    ];
    let child = BuildChild {
        what: "uv-export",
        program,
        args,
        binds: uv_bind
            .into_iter()
            .chain([scratch_bind(&scratch)])
            .collect(),
        gateway: false,
        env: uv_env(),
        cwd: BUILD_DIR.into(),
        uid: None,
    };
    let ran = run_child(state, tenant, policy, code, child).await;
    let _ = std::fs::remove_dir_all(&scratch);
    let (finished, refused) = ran?;
    if finished.termination != Termination::Exited(0) || finished.stdout_overflow {
        let output = child_output(&finished, &refused);
        return Err(DeployError::Failed {
            message: format!(
                "uv.lock could not be read: {}: {output}",
                termination_text("uv export", &finished.termination)
            ),
            detail: Some(json!({"reason": "lock_unreadable", "file": "uv.lock", "uv": output})),
        });
    }
    let text = String::from_utf8_lossy(&finished.stdout);
    let requirements = requirements::parse(&text).map_err(|e| DeployError::Failed {
        message: format!("uv.lock pins {:?}, which is not allowed: {}", e.text, e.why),
        detail: Some(json!({"reason": "refused", "file": "uv.lock", "requirement": e.text})),
    })?;
    Ok(Inputs {
        file: "uv.lock",
        requirements,
    })
}

async fn resolve(
    state: &Core,
    tenant: &TenantRow,
    policy: &Policy,
    code: &Path,
    uv: &Path,
    inputs: &Inputs,
    scratch: &Path,
) -> Result<Vec<Package>, DeployError> {
    std::fs::write(
        scratch.join("requirements.in"),
        requirements::render(&inputs.requirements),
    )
    .map_err(node("could not write the build's requirements"))?;
    let at = inside(state, scratch, BUILD_DIR);
    let (program, uv_bind) = uv_program(state, uv);
    let mut args: Vec<std::ffi::OsString> = vec![
        "pip".into(),
        "compile".into(),
        at.join("requirements.in").into(),
        "--output-file".into(),
        at.join("pylock.toml").into(),
        "--python".into(),
        state.config.python.clone().into(),
        // Wheels only: building a source distribution runs its code.
        "--no-build".into(),
        "--no-config".into(),
        "--no-sources".into(),
        "--no-cache".into(),
        "--quiet".into(),
        "--no-progress".into(),
        "--color".into(),
        "never".into(),
    ];
    args.extend(state.config.pip_index_args().into_iter().map(Into::into));
    let child = BuildChild {
        what: "uv-resolve",
        program,
        args,
        binds: uv_bind.into_iter().chain([scratch_bind(scratch)]).collect(),
        gateway: true,
        env: uv_env(),
        cwd: BUILD_DIR.into(),
        uid: None,
    };
    let (finished, refused) = run_child(state, tenant, policy, code, child).await?;
    if finished.termination != Termination::Exited(0) {
        let output = child_output(&finished, &refused);
        return Err(
            explain_resolve(inputs, &output).unwrap_or_else(|| DeployError::Failed {
                message: format!(
                    "resolving {} failed: {}: {output}",
                    inputs.file,
                    termination_text("uv", &finished.termination)
                ),
                detail: Some(
                    json!({"reason": "resolve_failed", "file": inputs.file, "uv": output}),
                ),
            }),
        );
    }
    let lock = scratch.join("pylock.toml");
    let size = lock
        .metadata()
        .map_err(node("the resolver wrote no pylock.toml"))?
        .len();
    if size > MAX_LOCK_BYTES {
        return Err(DeployError::failed(format!(
            "the resolved set takes {size} bytes, over {MAX_LOCK_BYTES}"
        )));
    }
    let text = std::fs::read_to_string(&lock).map_err(node("could not read pylock.toml"))?;
    parse_pylock(&text).map_err(|why| {
        DeployError::failed(format!(
            "the resolver's pylock.toml was not understood: {why}"
        ))
    })
}

/// The packages of a `pylock.toml` uv wrote for this node's interpreter: one wheel each.
pub fn parse_pylock(text: &str) -> Result<Vec<Package>, String> {
    #[derive(Deserialize)]
    struct Lock {
        #[serde(default)]
        packages: Vec<LockPackage>,
    }
    #[derive(Deserialize)]
    struct LockPackage {
        name: String,
        version: Option<String>,
        #[serde(default)]
        wheels: Vec<LockWheel>,
    }
    #[derive(Deserialize)]
    struct LockWheel {
        url: Option<String>,
        #[serde(default)]
        hashes: HashMap<String, String>,
    }
    let lock: Lock = toml::from_str(text).map_err(|e| e.message().to_owned())?;
    let mut out = Vec::new();
    for p in lock.packages {
        let [wheel] = p.wheels.as_slice() else {
            return Err(format!(
                "{} has {} wheels for this node, not one",
                p.name,
                p.wheels.len()
            ));
        };
        let url = wheel
            .url
            .clone()
            .ok_or_else(|| format!("{}'s wheel has no URL", p.name))?;
        let parsed = url::Url::parse(&url).map_err(|e| format!("{}: {e}", p.name))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("{}'s wheel is not fetched over HTTP", p.name));
        }
        let file = parsed
            .path_segments()
            .and_then(|mut s| s.next_back())
            .map(|f| {
                percent_encoding::percent_decode_str(f)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .unwrap_or_default();
        if !is_wheel_file_name(&file) {
            return Err(format!("{}'s wheel is named {file:?}", p.name));
        }
        let sha256 = wheel
            .hashes
            .get("sha256")
            .map(|h| h.to_ascii_lowercase())
            .filter(|h| is_digest(h))
            .ok_or_else(|| format!("{}'s wheel has no SHA-256", p.name))?;
        let version = p
            .version
            .ok_or_else(|| format!("{} has no version", p.name))?;
        if !is_version(&version) {
            return Err(format!("{}'s version {version:?}", p.name));
        }
        out.push(Package {
            name: requirements::normalize_name(&p.name),
            version,
            wheel: file,
            sha256,
            url,
        });
    }
    Ok(out)
}

/// A resolver's failure in words a tenant can act on, naming the line, when its output says.
fn explain_resolve(inputs: &Inputs, output: &str) -> Option<DeployError> {
    // "Because <pkg> was not found in the package registry and you require <pkg>, …"
    // "Because there is no version of <pkg>==9.9 and you require …"
    // "Because <pkg>==1.0 has no usable wheels and building from source is disabled …"
    // "Because only <pkg><=1 is available and you require <pkg>>=2, …"
    let cause = output
        .lines()
        .find(|l| l.contains("Because ") || l.contains("because "))
        .unwrap_or(output);
    let after = |marker: &str| {
        cause.find(marker).map(|at| {
            cause[at + marker.len()..]
                .split(|c: char| c.is_whitespace() || "<>=!~[;,".contains(c))
                .next()
                .unwrap_or_default()
                .to_owned()
        })
    };
    let (reason, package, why) = if cause.contains("was not found in") {
        let p = after("Because ").or_else(|| after("because "))?;
        (
            "not_found",
            p.clone(),
            format!("no package named {p} is on the package index"),
        )
    } else if cause.contains("no usable wheels") || cause.contains("no wheels with a matching") {
        let p = after("Because ")
            .or_else(|| after("because "))
            .filter(|p| p != "there" && p != "only" && p != "all")
            .or_else(|| after("versions of "))?;
        (
            "no_wheel",
            p.clone(),
            format!("{p} has no wheel for this node's Python and platform on the package index (only wheels are installed: a package published only as source cannot be)"),
        )
    } else if cause.contains("there is no version of ") || cause.contains("only ") {
        let p = after("there is no version of ").or_else(|| after("only "))?;
        (
            "no_matching_version",
            p.clone(),
            format!("no version of {p} on the package index matches what is asked for"),
        )
    } else {
        return None;
    };
    let line = inputs.line_of(&package);
    let mut error = requirement_error(inputs, line, reason, why);
    if let DeployError::Failed {
        message,
        detail: Some(detail),
    } = &mut error
    {
        detail["package"] = json!(package);
        detail["uv"] = json!(output);
        if line.is_none() {
            message.push_str(&format!(" (needed by another requirement): {cause}"));
        }
    }
    Some(error)
}

/// The wheels of a build, found in the cache or fetched into it, linked into one directory.
struct Wheels {
    dir: PathBuf,
    summary: String,
}

/// The script that fetches wheels through the build gateway: `fetch.json` lists them (URL,
/// digest), each goes to `fetched/<digest>.whl`. Its own digest check only fails early; the
/// daemon checks again as each enters the cache.
const FETCH_SCRIPT: &str = r#"
import hashlib, json, os, sys, urllib.request
spec = json.load(open(sys.argv[1]))
out, limit, total = sys.argv[2], spec["max_bytes"], 0
opener = urllib.request.build_opener()
for w in spec["wheels"]:
    dest = os.path.join(out, w["sha256"] + ".whl")
    digest, size = hashlib.sha256(), 0
    try:
        with opener.open(w["url"], timeout=120) as r, open(dest, "wb") as f:
            while True:
                chunk = r.read(1 << 16)
                if not chunk:
                    break
                size += len(chunk)
                total += len(chunk)
                if total > limit:
                    sys.exit("the wheels take more than %d bytes" % limit)
                digest.update(chunk)
                f.write(chunk)
    except Exception as e:
        sys.exit("fetching %s failed: %s" % (w["wheel"], e))
    if digest.hexdigest() != w["sha256"]:
        sys.exit("hash mismatch: %s is not the file its SHA-256 names" % w["wheel"])
    print("fetched %s (%d bytes)" % (w["wheel"], size), file=sys.stderr, flush=True)
"#;

async fn wheels(
    state: &Core,
    tenant: &TenantRow,
    policy: &Policy,
    code: &Path,
    packages: &[Package],
    scratch: &Path,
) -> Result<Wheels, DeployError> {
    let links = scratch.join("wheels");
    let fetched = scratch.join("fetched");
    std::fs::create_dir_all(&links).map_err(node("could not prepare the build's wheels"))?;
    tenant_owned_dir(&fetched, tenant.uid.get())
        .map_err(node("could not prepare the build's download directory"))?;
    let cache = state.wheels.clone();
    let wanted = packages.to_vec();
    let hit_links = links.clone();
    // A hit is linked into the build's directory at once: an eviction by another build while
    // this one fetches cannot take it away.
    let present = falra_runtime::task::spawn_blocking(move || {
        wanted
            .iter()
            .map(|p| {
                let hit = cache.get(&p.sha256, &p.wheel).ok().flatten()?;
                link_wheel(&hit, &hit_links.join(&p.wheel)).ok()
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(node("wheel cache task failed"))?;
    let missing: Vec<&Package> = packages
        .iter()
        .zip(&present)
        .filter(|(_, hit)| hit.is_none())
        .map(|(p, _)| p)
        .collect();
    if !missing.is_empty() {
        let spec = json!({
            "max_bytes": VENV_MAX_BYTES,
            "wheels": missing.iter().map(|p| json!({"url": p.url, "sha256": p.sha256, "wheel": p.wheel})).collect::<Vec<_>>(),
        });
        std::fs::write(scratch.join("fetch.json"), spec.to_string())
            .map_err(node("could not write the build's fetch list"))?;
        let at = inside(state, scratch, BUILD_DIR);
        let child = BuildChild {
            what: "wheel-fetch",
            program: state.config.python.clone(),
            args: vec![
                "-I".into(),
                "-S".into(),
                "-c".into(),
                FETCH_SCRIPT.into(),
                at.join("fetch.json").into(),
                at.join("fetched").into(),
            ],
            binds: vec![scratch_bind(scratch)],
            gateway: true,
            env: Vec::new(),
            cwd: BUILD_DIR.into(),
            uid: None,
        };
        let (finished, refused) = run_child(state, tenant, policy, code, child).await?;
        if finished.termination != Termination::Exited(0) {
            let output = child_output(&finished, &refused);
            let reason = if output.contains("hash mismatch") {
                "hash_mismatch"
            } else {
                "fetch_failed"
            };
            return Err(DeployError::Failed {
                message: format!(
                    "fetching the wheels failed: {}: {output}",
                    termination_text("the fetch", &finished.termination)
                ),
                detail: Some(json!({"reason": reason, "output": output})),
            });
        }
    }
    let cache = state.wheels.clone();
    let all = packages.to_vec();
    let fetched_bytes: u64 = tokio::task::spawn_blocking({
        let links = links.clone();
        let fetched = fetched.clone();
        move || -> Result<u64, DeployError> {
            let mut bytes = 0;
            for (p, hit) in all.iter().zip(present) {
                match hit {
                    Some(()) => {}
                    None => {
                        let file = fetched.join(format!("{}.whl", p.sha256));
                        bytes += file.metadata().map(|m| m.len()).unwrap_or(0);
                        let path = cache.put(&file, &p.sha256, &p.wheel).map_err(|e| match e {
                            super::wheels::PutError::Mismatch { .. } => DeployError::Failed {
                                message: format!("hash mismatch: the fetched {} is not the file its SHA-256 names", p.wheel),
                                detail: Some(json!({"reason": "hash_mismatch", "package": p.name})),
                            },
                            super::wheels::PutError::Io(e) => {
                                node("could not keep a fetched wheel")(e)
                            }
                        })?;
                        link_wheel(&path, &links.join(&p.wheel))
                            .map_err(node("could not lay out the build's wheels"))?;
                    }
                }
            }
            Ok(bytes)
        }
    })
    .await
    .map_err(node("wheel cache task failed"))??;
    let fetched_count = missing.len();
    Ok(Wheels {
        dir: links,
        summary: format!(
            "{} from the node's wheel cache, {fetched_count} fetched ({})",
            packages.len() - fetched_count,
            human_bytes(fetched_bytes)
        ),
    })
}

/// Links a cached wheel into a build's directory (a copy across file systems, made beside it
/// and renamed, so nothing is ever written through an existing link into the cache).
fn link_wheel(cached: &Path, link: &Path) -> std::io::Result<()> {
    if link.symlink_metadata().is_ok() {
        // Two packages cannot share a wheel's file name; refuse rather than overwrite.
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} is named twice", link.display()),
        ));
    }
    if std::fs::hard_link(cached, link).is_ok() {
        return Ok(());
    }
    let partial = link.with_extension("part");
    std::fs::copy(cached, &partial)?;
    std::fs::rename(&partial, link)
}

/// `812 B`, `92.9 kB`, `29.3 MB`.
fn human_bytes(n: u64) -> String {
    match n {
        0..=999 => format!("{n} B"),
        1_000..=999_999 => format!("{:.1} kB", n as f64 / 1e3),
        _ => format!("{:.1} MB", n as f64 / 1e6),
    }
}

#[allow(clippy::too_many_arguments)]
async fn install(
    state: &Core,
    tenant: &TenantRow,
    policy: &Policy,
    code: &Path,
    uv: &Path,
    packages: &[Package],
    links: &Path,
    scratch: &Path,
    out: &Path,
) -> Result<(), DeployError> {
    let pinned: String = packages
        .iter()
        .map(|p| format!("{}=={} --hash=sha256:{}\n", p.name, p.version, p.sha256))
        .collect();
    std::fs::write(scratch.join("pinned.txt"), pinned)
        .map_err(node("could not write the build's pinned set"))?;
    let at = inside(state, scratch, BUILD_DIR);
    let (program, uv_bind) = uv_program(state, uv);
    // The output is in the arena (`ensure_venv` made it there), beside uv's unpacked wheels:
    // one mount, so uv can link their files into it.
    let arena = prepare_arena(state)?;
    let arena_at = inside(state, &arena, ARENA_DIR);
    let staging = out
        .file_name()
        .ok_or_else(|| DeployError::failed("the virtualenv's staging directory has no name"))?;
    let args: Vec<std::ffi::OsString> = vec![
        "pip".into(),
        "install".into(),
        "--target".into(),
        arena_at.join(staging).into(),
        "--python".into(),
        state.config.python.clone().into(),
        "--offline".into(),
        "--no-index".into(),
        "--find-links".into(),
        inside(state, links, WHEELS_DIR).into(),
        "--no-deps".into(),
        "--require-hashes".into(),
        "--no-build".into(),
        "--no-config".into(),
        "--cache-dir".into(),
        arena_at.join(UV_CACHE).into(),
        "--link-mode".into(),
        "hardlink".into(),
        "--quiet".into(),
        "--no-progress".into(),
        "--color".into(),
        "never".into(),
        "-r".into(),
        at.join("pinned.txt").into(),
    ];
    let binds = uv_bind
        .into_iter()
        .chain([
            Bind {
                source: scratch.to_path_buf(),
                target: BUILD_DIR.into(),
                writable: false,
            },
            Bind {
                source: links.to_path_buf(),
                target: WHEELS_DIR.into(),
                writable: false,
            },
            Bind {
                source: arena,
                target: ARENA_DIR.into(),
                writable: true,
            },
        ])
        .collect();
    let child = BuildChild {
        what: "uv-install",
        program,
        args,
        binds,
        gateway: false,
        env: uv_env(),
        cwd: BUILD_DIR.into(),
        uid: Some(BUILDER_UID),
    };
    let (finished, refused) = run_child(state, tenant, policy, code, child).await?;
    if finished.termination == Termination::Exited(0) {
        return Ok(());
    }
    let output = child_output(&finished, &refused);
    Err(DeployError::Failed {
        message: format!(
            "installing the wheels failed: {}: {output}",
            termination_text("uv", &finished.termination)
        ),
        detail: Some(json!({"reason": "install_failed", "uv": output})),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: &str = r#"
lock-version = "1.0"
created-by = "uv"
requires-python = ">=3.11.2"

[[packages]]
name = "Python_Dateutil"
version = "4.0.0"
wheels = [{ url = "https://files.example/p/python_dateutil-4.0.0-py3-none-any.whl", size = 92853, hashes = { sha256 = "A5E246F79EB80475E691BF93862CEAD98DECD8A498CF53BA0516FCDC0F50DC1C" } }]

[[packages]]
name = "six"
version = "1.17.0"
wheels = [{ url = "http://127.0.0.1:9/six-1.17.0-py2.py3-none-any.whl", hashes = { sha256 = "4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274" } }]
"#;

    #[test]
    fn a_pylock_gives_one_checked_wheel_a_package() {
        let packages = parse_pylock(LOCK).unwrap();
        assert_eq!(packages.len(), 2);
        assert_eq!(packages[0].name, "python-dateutil");
        assert_eq!(packages[0].wheel, "python_dateutil-4.0.0-py3-none-any.whl");
        assert_eq!(
            packages[0].sha256,
            "a5e246f79eb80475e691bf93862cead98decd8a498cf53ba0516fcdc0f50dc1c"
        );
        assert_eq!(packages[1].version, "1.17.0");

        for (from, to, why) in [
            ("http://127.0.0.1:9/six", "file:///srv/six", "HTTP"),
            (
                "six-1.17.0-py2.py3-none-any.whl",
                "six-1.17.0.tar.gz",
                "named",
            ),
            (
                "six-1.17.0-py2.py3-none-any.whl",
                "..%2F..%2Fx-1-py3-none-any.whl",
                "named",
            ),
            ("4721f391ed9054", "4721f391ed90", "SHA-256"),
        ] {
            let bad = LOCK.replacen(from, to, 1);
            let e = parse_pylock(&bad).expect_err(to);
            assert!(e.contains(why), "{to}: {e}");
        }
        let two = LOCK.replace(
            "wheels = [{ url = \"http",
            "wheels = [{ url = \"http://127.0.0.1:9/six-1.17.0-py3-none-any.whl\", hashes = {} }, { url = \"http",
        );
        assert!(parse_pylock(&two).unwrap_err().contains("2 wheels"));
    }

    fn inputs(text: &str) -> Inputs {
        Inputs {
            file: "requirements.txt",
            requirements: requirements::parse(text).unwrap(),
        }
    }

    fn message(e: DeployError) -> (String, serde_json::Value) {
        match e {
            DeployError::Failed { message, detail } => (message, detail.unwrap_or_default()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn resolver_failures_name_the_line_and_why() {
        let i = inputs("# deps\nsix\nnotthere>=1\ntabulate==9.9\nsrconly\n");
        let (m, d) = message(
            explain_resolve(&i, "error: No solution found when resolving dependencies\n  cause: Because notthere was not found in the provided package locations and you require notthere>=1, we can conclude that your requirements are unsatisfiable.").unwrap(),
        );
        assert!(
            m.starts_with("requirements.txt line 3 (notthere>=1): no package named notthere"),
            "{m}"
        );
        assert_eq!(
            (d["reason"].as_str(), d["line"].as_u64()),
            (Some("not_found"), Some(3))
        );

        let (m, d) = message(explain_resolve(&i, "  cause: Because there is no version of tabulate==9.9 and you require tabulate==9.9, we can conclude that your requirements are unsatisfiable.").unwrap());
        assert!(
            m.starts_with("requirements.txt line 4 (tabulate==9.9)"),
            "{m}"
        );
        assert_eq!(d["reason"], "no_matching_version");

        let (m, d) = message(explain_resolve(&i, "  cause: Because srconly==1.0 has no usable wheels and building from source is disabled and you require srconly, we can conclude that your requirements are unsatisfiable.").unwrap());
        assert!(
            m.contains("line 5") && m.contains("only wheels are installed"),
            "{m}"
        );
        assert_eq!(d["reason"], "no_wheel");

        // A dependency of a dependency has no line of its own.
        let (m, d) = message(explain_resolve(&i, "  cause: Because deep was not found in the package registry and six==1.0 depends on deep, we can conclude …").unwrap());
        assert!(m.contains("needed by another requirement"), "{m}");
        assert_eq!(d["line"], serde_json::Value::Null);
        assert!(explain_resolve(&i, "error: something else").is_none());
    }

    #[test]
    fn with_hashes_every_package_is_pinned_to_the_wheel_chosen() {
        let packages = parse_pylock(LOCK).unwrap();
        let six = "4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274";
        let du = "a5e246f79eb80475e691bf93862cead98decd8a498cf53ba0516fcdc0f50dc1c";
        let ok = inputs(&format!(
            "six==1.17.0 --hash=sha256:{six}\npython-dateutil==4.0.0 --hash=sha256:{du}\n"
        ));
        check_pins(&ok, &packages).unwrap();
        let wrong = inputs(&format!(
            "six==1.17.0 --hash=sha256:{}\npython-dateutil==4.0.0 --hash=sha256:{du}\n",
            "0".repeat(64)
        ));
        let (m, d) = message(check_pins(&wrong, &packages).unwrap_err());
        assert!(
            m.starts_with("requirements.txt line 1 (six==1.17.0)"),
            "{m}"
        );
        assert_eq!(d["reason"], "hash_mismatch");
        let partial = inputs(&format!("six==1.17.0 --hash=sha256:{six}\n"));
        let (m, _) = message(check_pins(&partial, &packages).unwrap_err());
        assert!(
            m.contains("python-dateutil 4.0.0 is needed but not pinned"),
            "{m}"
        );
        // No hashes at all: nothing to check.
        check_pins(&inputs("six\n"), &packages).unwrap();
        // A lock exports a package once per marker: its hashes are all of its lines'.
        let exported = inputs(&format!(
            "six==1.16.0 ; python_version < '3.9' --hash=sha256:{}\nsix==1.17.0 ; python_version >= '3.9' --hash=sha256:{six}\npython-dateutil==4.0.0 --hash=sha256:{du}\n",
            "1".repeat(64)
        ));
        check_pins(&exported, &packages).unwrap();
    }

    #[test]
    fn a_recorded_set_is_checked_again_before_it_is_built_from() {
        let good = parse_pylock(LOCK).unwrap();
        assert!(good.iter().all(Package::is_well_formed));
        for broken in [
            Package {
                version: "1.0\n--index-url http://x".into(),
                ..good[1].clone()
            },
            Package {
                wheel: "../six.whl".into(),
                ..good[1].clone()
            },
            Package {
                url: "file:///etc/passwd".into(),
                ..good[1].clone()
            },
            Package {
                name: "Six Two".into(),
                ..good[1].clone()
            },
        ] {
            assert!(!broken.is_well_formed(), "{broken:?}");
        }
    }
}
