//! A version's virtualenv: found by the hash of what goes into it, built in two sandboxed
//! children (`pip download` through the build's egress gateway, then `pip install
//! --no-index` with no network), sealed read-only.

use std::path::{Path, PathBuf};
use std::time::Duration;

use falra_policies::{Network, Policy};
use falra_sandbox::setup::SetupLimits;
use falra_sandbox::{netns, Bind, Termination};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::Core;
use falra_runtime::isolation::{CodeMounts, VENV_DIR};
use falra_runtime::ChildStage;
use falra_store::TenantRow;

use super::runner_modes::tenant_owned_dir;
use super::{node, DeployError};

/// Where a build's downloaded wheels are, inside its children.
pub(super) const WHEELS_DIR: &str = "/falra-wheels";
/// How long each child of a virtualenv build may take.
pub(super) const VENV_TIMEOUT: Duration = Duration::from_secs(600);
/// The most a virtualenv may take on disk.
pub(super) const VENV_MAX_BYTES: u64 = 2 << 30;

/// The virtualenv a version's `requirements.txt` asks for, built if it is not there yet.
/// Virtualenvs are shared by every version (of any tenant) with the same requirements and
/// interpreter: `venvs/<hash>/`.
pub(super) async fn ensure_venv(
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
pub(super) async fn build_venv(
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

/// Makes a built virtualenv root's and read-only for everyone (it is bound read-only into
/// calls anyway); returns its size in bytes. Symlinks pip made are left as they are.
pub(super) fn seal_venv(dir: &Path) -> std::io::Result<u64> {
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
