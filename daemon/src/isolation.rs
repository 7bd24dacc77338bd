//! What the daemon asks of the sandbox for one call: derived from the tenant's policy and uid,
//! the version's directory and the host's cgroup hierarchy. The sandbox itself never learns
//! the tenant's name: it gets paths, numbers and limits.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use falra_policies::{Network, Policy};
use falra_sandbox::cgroup::{self, CallCgroup, CgroupError, CgroupLimits, Hierarchy, HostFs};
use falra_sandbox::runner::RUNNER_DIR;
use falra_sandbox::{netns, Bind, Isolation, NetworkMode, SystemEntry};

/// Where the tenant's code appears inside the child.
pub const CODE_DIR: &str = "/code";

/// The host facts every call's isolation is built from, found once at start-up.
#[derive(Debug)]
pub struct SandboxSettings {
    /// `None`: calls run as plain children (`--sandbox off`).
    enabled: Option<Enabled>,
}

#[derive(Debug)]
struct Enabled {
    hierarchy: Hierarchy,
    system: Vec<SystemEntry>,
    root_mount_point: PathBuf,
    /// One prepared network namespace per tenant uid, made on its first call.
    netns: Mutex<HashMap<u32, OwnedFd>>,
}

#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    #[error(
        "the sandbox needs root (namespaces, mounts, cgroups); run as root or pass --sandbox off"
    )]
    NotRoot,
    #[error("no usable cgroup hierarchy")]
    Cgroup(#[from] CgroupError),
    #[error("could not prepare a network namespace")]
    Netns(#[source] std::io::Error),
    #[error("could not prepare {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SandboxSettings {
    pub fn disabled() -> SandboxSettings {
        SandboxSettings { enabled: None }
    }

    /// Checks that the host can isolate calls and finds what isolation is built from.
    pub fn detect(data_dir: &Path, proc_root: &Path) -> Result<SandboxSettings, IsolationError> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(IsolationError::NotRoot);
        }
        let hierarchy = cgroup::detect(proc_root, &HostFs)?;
        let root_mount_point = data_dir.join("sandbox-root");
        std::fs::create_dir_all(&root_mount_point).map_err(|source| IsolationError::Io {
            path: root_mount_point.clone(),
            source,
        })?;
        Ok(SandboxSettings {
            enabled: Some(Enabled {
                hierarchy,
                system: falra_sandbox::setup::host_system_entries(),
                root_mount_point,
                netns: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.is_some()
    }

    /// A short description for the start-up log.
    pub fn describe(&self) -> String {
        match &self.enabled {
            None => "off: calls run as plain child processes".to_owned(),
            Some(e) => match &e.hierarchy {
                Hierarchy::V2 { base } => format!("on, cgroup v2 at {}", base.display()),
                Hierarchy::V1 { memory, .. } => {
                    format!("on, cgroup v1 (memory at {})", memory.display())
                }
            },
        }
    }

    /// The call's cgroup, created with the policy's limits (none when the sandbox is off).
    pub fn create_cgroup(
        &self,
        uid: u32,
        call_id: &str,
        policy: &Policy,
    ) -> Result<Option<CallCgroup>, CgroupError> {
        let Some(e) = &self.enabled else {
            return Ok(None);
        };
        let limits = CgroupLimits {
            memory_bytes: u64::from(policy.memory_mb) << 20,
            pids: policy.pids,
            cpu_percent: policy.cpu_percent,
        };
        e.hierarchy
            .create_call(&HostFs, &format!("t{uid}"), call_id, limits)
            .map(Some)
    }

    /// The isolation for one call of the tenant with `uid`, running `version_dir` with the
    /// runner installed in `runner_dir`.
    pub fn isolation(
        &self,
        uid: u32,
        version_dir: &Path,
        runner_dir: &Path,
        policy: &Policy,
        cgroup: Option<&CallCgroup>,
    ) -> Result<Option<Isolation>, IsolationError> {
        let Some(e) = self.enabled.as_ref() else {
            return Ok(None);
        };
        let network = match policy.network {
            Network::Host => NetworkMode::Host,
            Network::None => {
                let mut spaces = e.netns.lock().expect("netns table poisoned");
                let fd = match spaces.get(&uid) {
                    Some(fd) => fd.as_raw_fd(),
                    None => {
                        let fd = netns::new_loopback_namespace().map_err(IsolationError::Netns)?;
                        let raw = fd.as_raw_fd();
                        spaces.insert(uid, fd);
                        raw
                    }
                };
                NetworkMode::Join(fd)
            }
        };
        Ok(Some(Isolation {
            root_mount_point: e.root_mount_point.clone(),
            system: e.system.clone(),
            binds: vec![
                Bind {
                    source: version_dir.to_path_buf(),
                    target: PathBuf::from(CODE_DIR),
                },
                Bind {
                    source: runner_dir.to_path_buf(),
                    target: PathBuf::from(RUNNER_DIR),
                },
            ],
            tmp_bytes: u64::from(policy.tmp_mb) << 20,
            network,
            uid,
            gid: uid,
            hostname: "falra".to_owned(),
            cgroup_procs: cgroup.map(CallCgroup::procs_files).unwrap_or_default(),
        }))
    }

    /// Forgets a removed tenant's network namespace.
    pub fn forget_tenant(&self, uid: u32) {
        if let Some(e) = &self.enabled {
            e.netns.lock().expect("netns table poisoned").remove(&uid);
        }
    }
}

/// Removes a finished call's cgroup, retrying while the kernel finishes tearing down its
/// processes. Runs off the request path.
pub fn remove_cgroup_later(cgroup: CallCgroup) {
    tokio::task::spawn_blocking(move || {
        for attempt in 0..200u32 {
            match cgroup.remove(&HostFs) {
                Ok(()) => return,
                Err(e) if attempt == 199 => {
                    tracing::warn!(error = %crate::api_error::ErrorChain(&e), "could not remove a call's cgroup")
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
    });
}
