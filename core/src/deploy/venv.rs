//! A version's virtualenv: found by the hash of what goes into it (its requirements file,
//! the interpreter, the index, the builder), built with `uv` from the node's wheel cache
//! (`uv.rs`) or, where `uv` is not installed, in two sandboxed pip children (`pip download`
//! through the build's egress gateway, then `pip install --no-index` with no network);
//! sealed read-only, with the set of packages it holds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use falra_policies::Policy;
use falra_sandbox::{Bind, Termination};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::Core;
use falra_runtime::isolation::VENV_DIR;
use falra_store::TenantRow;

use super::log::DeployLog;
use super::runner_modes::tenant_owned_dir;
use super::uv::{
    child_output, inside, run_child, termination_text, BuildChild, Inputs, Package, PACKAGES_FILE,
};
use super::{node, DeployError};
use falra_tenants::requirements;
use falra_tenants::VersionId;

/// Where a build's downloaded wheels are, inside its children.
pub(super) const WHEELS_DIR: &str = "/falra-wheels";
/// How long each child of a virtualenv build may take.
pub(super) const VENV_TIMEOUT: Duration = Duration::from_secs(600);
/// The most a virtualenv may take on disk.
pub(super) const VENV_MAX_BYTES: u64 = 2 << 30;

/// The virtualenv a version's requirements ask for, built if it is not there yet.
/// Virtualenvs are shared by every version (of any tenant) with the same requirements and
/// interpreter: `venvs/<hash>/`.
pub(super) async fn ensure_venv(
    state: &Core,
    tenant: &TenantRow,
    policy: &Policy,
    code: &Path,
    version: &VersionId,
    log: &DeployLog,
) -> Result<Option<PathBuf>, DeployError> {
    let Some(dir) = venv_for(state, code) else {
        return Ok(None);
    };
    if dir.is_dir() {
        state.venv_ready(code, &dir);
        return Ok(Some(dir));
    }
    let venvs = dir.parent().expect("venvs/<hash>").to_path_buf();
    let staging_name = format!(
        ".tmp-{}-{}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("venv"),
        crate::calls::new_call_id()
    );
    // With uv, the install runs as the node's builder in the build arena, beside the unpacked
    // wheels it links from; with pip, as the tenant. Either way only the output directory
    // (and the arena's cache) is writable to it.
    let with_uv = state.config.uv.is_some();
    // A uv build's tree leaves the arena before the daemon touches it: it is sealed where no
    // sandboxed process can reach it.
    let (staging, owner, sealing) = if with_uv {
        (
            super::uv::prepare_arena(state)?.join(&staging_name),
            super::uv::BUILDER_UID,
            venvs.join(format!(".seal{staging_name}")),
        )
    } else {
        let staging = venvs.join(&staging_name);
        (staging.clone(), tenant.uid.get(), staging)
    };
    tenant_owned_dir(&staging, owner)
        .map_err(node("could not prepare the virtualenv directory"))?;
    let built = build_venv(
        state, tenant, policy, code, version, &staging, &sealing, log,
    )
    .await;
    let finished = built.and_then(|packages| {
        let record = serde_json::to_vec(&packages).expect("packages serialise");
        std::fs::write(sealing.join(PACKAGES_FILE), record)
            .map_err(node("could not record the virtualenv's packages"))?;
        seal_venv(&sealing, with_uv)
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
        let _ = std::fs::remove_dir_all(&sealing);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&sealing, &dir) {
        let _ = std::fs::remove_dir_all(&sealing);
        if !dir.is_dir() {
            return Err(node("could not move the virtualenv in place")(e));
        }
    }
    tracing::info!(tenant = %tenant.name, venv = %dir.display(), "virtualenv built");
    state.venv_ready(code, &dir);
    Ok(Some(dir))
}

/// The file a version's requirements are read from: `requirements.txt`; else, where the node
/// builds with uv, a `uv.lock` beside a `pyproject.toml`; else a `pyproject.toml` whose
/// `[project]` has dependencies (or that cannot be read, so the build says why). Regular
/// files only: a symlink is not followed. For a lock, the bytes are the project's and the
/// lock's together.
fn requirements_file(code: &Path, uv: bool) -> Option<(&'static str, Vec<u8>)> {
    let read = |name: &str| {
        let path = code.join(name);
        if !path.symlink_metadata().ok()?.is_file() {
            return None;
        }
        std::fs::read(&path).ok()
    };
    if let Some(text) = read("requirements.txt") {
        return Some(("requirements.txt", text));
    }
    let text = read("pyproject.toml")?;
    if uv {
        if let Some(lock) = read("uv.lock") {
            let mut both = (text.len() as u64).to_be_bytes().to_vec();
            both.extend_from_slice(&text);
            both.extend_from_slice(&lock);
            return Some(("uv.lock", both));
        }
    }
    let declares = std::str::from_utf8(&text)
        .map(|t| !matches!(requirements::from_pyproject(t), Ok(deps) if deps.is_empty()))
        .unwrap_or(true);
    declares.then_some(("pyproject.toml", text))
}

/// Where a version's requirements come from.
pub(super) enum Source {
    /// A requirements file or a project's dependencies, checked.
    Checked(Inputs),
    /// A `uv.lock`: exported by uv (`uv::export_lock`), then checked.
    UvLock,
}

/// The version's requirements, checked (`falra_tenants::requirements`); none without a file.
pub(super) fn read_inputs(code: &Path, uv: bool) -> Result<Option<Source>, DeployError> {
    let Some((file, bytes)) = requirements_file(code, uv) else {
        return Ok(None);
    };
    if file == "uv.lock" {
        return Ok(Some(Source::UvLock));
    }
    let text = String::from_utf8(bytes)
        .map_err(|e| DeployError::failed(format!("{file} could not be read as UTF-8 text: {e}")))?;
    let parsed = match file {
        "requirements.txt" => requirements::parse(&text),
        _ => requirements::from_pyproject(&text),
    };
    let requirements = parsed.map_err(|e| DeployError::Failed {
        message: e.to_string(),
        detail: Some(
            json!({"reason": "refused", "file": e.file, "line": e.line, "requirement": e.text}),
        ),
    })?;
    Ok(Some(Source::Checked(Inputs { file, requirements })))
}

/// The packages a built virtualenv holds, as recorded when it was built.
pub fn venv_packages(dir: &Path) -> Option<Vec<Package>> {
    let text = std::fs::read(dir.join(PACKAGES_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// `venvs/<hash>` for the version at `code`, if it has requirements (`requirements_file`).
/// The hash covers the builder, the interpreter, the operator's package index and the whole
/// file, which names packages only (`falra_tenants::requirements`): two tenants with the
/// same file get the same packages, so they share the virtualenv.
pub fn venv_for(state: &Core, code: &Path) -> Option<PathBuf> {
    let (file, text) = requirements_file(code, state.config.uv.is_some())?;
    let mut h = Sha256::new();
    h.update(state.config.python_version.as_bytes());
    h.update(b"\n");
    // uv and pip lay out the same `--target` tree: a virtualenv either built serves both, so
    // one built before uv was installed is still found (a requirements.txt hashes as before).
    if file != "requirements.txt" {
        h.update(file.as_bytes());
        h.update(b"\n");
    }
    for source in state.config.pip_index_args() {
        h.update(source.as_bytes());
        h.update(b"\n");
    }
    h.update(&text);
    let hash = hex::encode(h.finalize());
    Some(state.config.data_dir.join("venvs").join(&hash[..24]))
}

/// Builds the virtualenv of the version's requirements into `out`: with `uv` where the node
/// has it (`uv::build`, reusing the version's recorded set), else with pip
/// (`build_with_pip`). Returns what it installed.
#[allow(clippy::too_many_arguments)]
pub(super) async fn build_venv(
    state: &Core,
    tenant: &TenantRow,
    policy: &Policy,
    code: &Path,
    version: &VersionId,
    out: &Path,
    sealing: &Path,
    log: &DeployLog,
) -> Result<Vec<Package>, DeployError> {
    let source = read_inputs(code, state.config.uv.is_some())?
        .ok_or_else(|| DeployError::failed("the version's requirements file went away"))?;
    let Some(uv) = &state.config.uv else {
        let Source::Checked(inputs) = source else {
            return Err(DeployError::failed("a uv.lock is read only with uv"));
        };
        let rendered = requirements::render(&inputs.requirements);
        build_with_pip(state, tenant, policy, code, &rendered, out).await?;
        return Ok(installed_dists(out));
    };
    // A version built before keeps its set: a rollback gets what it had, not what resolves now.
    let recorded = state
        .store
        .version(&tenant.name, version)
        .await?
        .and_then(|v| v.packages)
        .and_then(|p| serde_json::from_str::<Vec<Package>>(&p).ok())
        .filter(|p| !p.is_empty() && p.iter().all(Package::is_well_formed));
    let inputs = match source {
        Source::Checked(inputs) => inputs,
        Source::UvLock => {
            log.step(
                "lock",
                super::uv::export_lock(state, tenant, policy, code, uv, out),
                |i: &Inputs| {
                    Some(format!(
                        "{} packages pinned by uv.lock",
                        i.requirements.len()
                    ))
                },
            )
            .await?
        }
    };
    super::uv::build(
        state, tenant, policy, code, uv, &inputs, recorded, out, sealing, log,
    )
    .await
}

/// The distributions a pip-built `--target` directory holds (their `*.dist-info`), by name
/// and version: what a pip build records of itself (no digests).
fn installed_dists(dir: &Path) -> Vec<Package> {
    let mut out: Vec<Package> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".dist-info")?;
            let (package, version) = stem.split_once('-')?;
            Some(Package {
                name: requirements::normalize_name(package),
                version: version.to_owned(),
                wheel: String::new(),
                sha256: String::new(),
                url: String::new(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Builds the virtualenv of `requirements` (the checked file, rendered) into `out`, in two
/// sandboxed children of the tenant, neither with the host's network and neither running
/// anything the tenant controls:
///
/// 1. `pip download`, wheels only, in a network namespace of its own whose only way out is a
///    build gateway (every connection checked by the node's address rule at connect time),
///    from the operator's package index, into a scratch directory;
/// 2. `pip install --no-index` from that directory, with no network at all, into `out`.
///
/// The file was checked line by line first (`falra_tenants::requirements`): package names,
/// versions, markers and hashes only, so pip cannot be pointed at a path, a VCS, another
/// index or an sdist; pip reads the daemon's rendering of it, one requirement a line. Both
/// children run in an empty working directory.
async fn build_with_pip(
    state: &Core,
    tenant: &TenantRow,
    policy: &Policy,
    code: &Path,
    requirements: &str,
    out: &Path,
) -> Result<(), DeployError> {
    let wheels = out.with_extension("wheels");
    tenant_owned_dir(&wheels, tenant.uid.get())
        .map_err(node("could not prepare the build's download directory"))?;
    std::fs::write(wheels.join("requirements.txt"), requirements)
        .map_err(node("could not write the build's requirements"))?;
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
pub(super) enum PipStage {
    Download,
    Install,
}

pub(super) async fn pip_stage(
    state: &Core,
    tenant: &TenantRow,
    policy: &Policy,
    code: &Path,
    out: &Path,
    wheels: &Path,
    which: PipStage,
) -> Result<(), DeployError> {
    let isolated = state.runtime.sandbox.is_enabled();
    let target = inside(state, out, VENV_DIR);
    let wheel_dir = inside(state, wheels, WHEELS_DIR);
    let requirements = wheel_dir.join("requirements.txt");
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
    let child = BuildChild {
        what: match which {
            PipStage::Download => "pip-download",
            PipStage::Install => "pip-install",
        },
        program: state.config.python.clone(),
        args,
        binds,
        // The build's own network namespace: for the download, with the build gateway
        // inside; for the install, with nothing at all.
        gateway: which == PipStage::Download,
        // No configuration file of pip's is read (a planted pip.conf would choose the index).
        env: vec![
            ("PIP_NO_CACHE_DIR".into(), "1".into()),
            ("PIP_CONFIG_FILE".into(), "/dev/null".into()),
        ],
        cwd: wheel_dir,
        uid: None,
    };
    let (finished, refused) = run_child(state, tenant, policy, code, child).await?;
    if finished.termination == Termination::Exited(0) {
        return Ok(());
    }
    let why = termination_text("pip", &finished.termination);
    let output = child_output(&finished, &refused);
    let step = match which {
        PipStage::Download => "downloading the wheels of requirements.txt failed (only wheels are installed, from the operator's package index)",
        PipStage::Install => "installing requirements.txt failed",
    };
    let mut detail = json!({"pip": output});
    let message = match explain_pip(&output) {
        Some(explained) => {
            detail["reason"] = json!(explained.reason);
            detail["requirement"] = json!(explained.requirement);
            format!("{step}: {}: {why}: {output}", explained.text)
        }
        None => format!("{step}: {why}: {output}"),
    };
    Err(DeployError::Failed {
        message,
        detail: Some(detail),
    })
}

/// Why pip failed, in words a tenant can act on, when its output says.
#[derive(Debug, PartialEq, Eq)]
struct PipExplained {
    /// `no_wheel`, `no_wheel_of_version` or `hash_mismatch`.
    reason: &'static str,
    requirement: String,
    text: String,
}

/// Reads pip's output for the failures it words least helpfully. pip is run with
/// `--only-binary=:all:`, so "No matching distribution" means no wheel for this platform and
/// Python (a package published only as source is never built here).
fn explain_pip(output: &str) -> Option<PipExplained> {
    if let Some(at) = output.find("No matching distribution found for ") {
        let rest = &output[at + "No matching distribution found for ".len()..];
        let requirement: String = rest
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .chars()
            .take(200)
            .collect();
        let had_versions = output
            .find("(from versions: ")
            .map(|i| !output[i..].starts_with("(from versions: none)"))
            .unwrap_or(false);
        let (reason, text) = if had_versions {
            (
                "no_wheel_of_version",
                format!("no wheel of the version {requirement} asks for is on the package index (other versions have wheels; only wheels are installed)"),
            )
        } else {
            (
                "no_wheel",
                format!("no wheel of {requirement} for this node's Python and platform is on the package index (only wheels are installed: a package published only as source cannot be)"),
            )
        };
        return Some(PipExplained {
            reason,
            requirement,
            text,
        });
    }
    if output.contains("DO NOT MATCH THE HASHES") {
        let requirement = output
            .lines()
            .skip_while(|l| !l.contains("DO NOT MATCH THE HASHES"))
            .find_map(|l| {
                l.split_whitespace()
                    .next()
                    .filter(|w| w.contains("=="))
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        return Some(PipExplained {
            reason: "hash_mismatch",
            text: format!(
                "a downloaded file does not match the hash requirements.txt gives for {}",
                if requirement.is_empty() {
                    "it"
                } else {
                    &requirement
                }
            ),
            requirement,
        });
    }
    None
}

/// Makes a built virtualenv read-only for everyone (it is bound read-only into calls anyway)
/// and its directories root's; returns its size in bytes (a file linked from the unpacked
/// wheels counted once per virtualenv). Its files are root's too, except with `linked`
/// (a uv build): those are the arena's unpacked wheels' own inodes, which stay the
/// builder's so later installs can link them (the kernel's `protected_hardlinks` lets a uid
/// link only files it owns); no call runs as the builder. Symlinks are left as they are.
pub(super) fn seal_venv(dir: &Path, linked: bool) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::fs::PermissionsExt;
    let mut size = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = path.symlink_metadata()?;
        if !(linked && meta.is_file() && meta.nlink() > 1) {
            std::os::unix::fs::lchown(&path, Some(0), Some(0))?;
        }
        if meta.is_dir() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            for entry in std::fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        } else if meta.is_file() {
            size += meta.len();
            let executable = meta.permissions().mode() & 0o111 != 0;
            // A linked file stays the builder's: read-only to it too, so no write of a later
            // install lands in it by mistake.
            let mode = match (executable, linked && meta.nlink() > 1) {
                (true, true) => 0o555,
                (false, true) => 0o444,
                (true, false) => 0o755,
                (false, false) => 0o644,
            };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pip_failures_are_explained_when_only_wheels_are_why() {
        let none = "ERROR: Could not find a version that satisfies the requirement srconly==1.0 (from versions: none)\nERROR: No matching distribution found for srconly==1.0";
        let e = explain_pip(none).unwrap();
        assert_eq!(
            (e.reason, e.requirement.as_str()),
            ("no_wheel", "srconly==1.0")
        );
        assert!(e.text.contains("only wheels are installed"));
        let some = "ERROR: Could not find a version that satisfies the requirement six==9.9 (from versions: 1.16.0)\nERROR: No matching distribution found for six==9.9";
        assert_eq!(explain_pip(some).unwrap().reason, "no_wheel_of_version");
        let hashes = "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.\n    six==1.16.0 from https://x/six.whl:\n        Expected sha256 00\n";
        let e = explain_pip(hashes).unwrap();
        assert_eq!(
            (e.reason, e.requirement.as_str()),
            ("hash_mismatch", "six==1.16.0")
        );
        assert_eq!(explain_pip("ERROR: something else"), None);
    }
}
