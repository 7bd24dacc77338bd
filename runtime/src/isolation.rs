//! What the daemon asks of the sandbox for one call: derived from the tenant's policy and uid,
//! the version's directory and the host's cgroup hierarchy. The sandbox itself never learns
//! the tenant's name: it gets paths, numbers and limits.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use falra_policies::{Network, Policy};
use falra_sandbox::cgroup::{self, CgroupError, CgroupLimits, Hierarchy, HostFs};

pub use crate::cgroup_pool::CgroupLease;
use crate::cgroup_pool::CgroupPool;
use falra_sandbox::runner::RUNNER_DIR;
use falra_sandbox::{mountns, netns, Bind, Isolation, NetworkMode, SystemEntry};

/// Where the tenant's code appears inside the child.
pub const CODE_DIR: &str = "/code";

/// Where the tenant's virtualenv appears inside the child.
pub const VENV_DIR: &str = "/venv";

/// What a child sees of a tenant's code: a version's tree and, when the version has a
/// `requirements.txt`, the virtualenv built from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeMounts {
    pub code: PathBuf,
    pub venv: Option<PathBuf>,
}

impl CodeMounts {
    /// The virtualenv's path as the child sees it.
    pub fn venv_in_child(&self, isolated: bool) -> Option<&Path> {
        match (&self.venv, isolated) {
            (Some(_), true) => Some(Path::new(VENV_DIR)),
            (Some(host), false) => Some(host),
            (None, _) => None,
        }
    }
}

/// The host facts every call's isolation is built from, found once at start-up.
#[derive(Debug)]
pub struct SandboxSettings {
    /// `None`: calls run as plain children (`--sandbox off`).
    enabled: Option<Enabled>,
}

#[derive(Debug)]
struct Enabled {
    /// The call cgroups: lent to children, pooled per tenant where they can be reused.
    cgroups: CgroupPool,
    system: Vec<SystemEntry>,
    root_mount_point: PathBuf,
    /// One prepared network namespace per tenant uid, made on its first call.
    netns: Mutex<HashMap<u32, Arc<OwnedFd>>>,
    /// Mount templates (`falra_sandbox::mountns`) per tenant uid and set of read-only binds,
    /// made on the first child that needs one.
    templates: Mutex<HashMap<TemplateKey, Template>>,
    /// When building a template last failed (children then build their own root for a while);
    /// held while a template is built, so that one is built at a time.
    template_failed_at: Mutex<Option<std::time::Instant>>,
}

/// What a mount template is built from besides the host's fixed system entries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TemplateKey {
    uid: u32,
    binds: Vec<Bind>,
}

/// A built mount template and the identity (device, inode) of every host path it binds, when
/// it was built: a path replaced since (a version tree removed and written again under the
/// same name, a host file such as `/etc/resolv.conf` replaced) makes a new template.
#[derive(Debug)]
struct Template {
    fd: Arc<OwnedFd>,
    sources: Vec<(u64, u64)>,
}

/// The most mount templates kept; past it the table starts over (children starting meanwhile
/// hold their own template open).
const MAX_TEMPLATES: usize = 256;
/// How long children build their own root after a template could not be built.
const TEMPLATE_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

/// One child's isolation, with the prepared namespaces it names, to be held open until the
/// child is gone (`ChildSpec::hold`): a table entry dropped meanwhile cannot close a
/// descriptor the child still has to use (nor let its number be reused by another namespace).
#[derive(Debug)]
pub struct ChildIsolation {
    isolation: Isolation,
    hold: Vec<Arc<OwnedFd>>,
    /// The egress gateway's listener of a tenant network namespace made for this child.
    new_gateway: Option<std::net::TcpListener>,
}

impl ChildIsolation {
    /// The isolation, and the descriptors it names (for `ChildSpec::hold`).
    pub fn into_parts(self) -> (Isolation, Vec<Arc<OwnedFd>>) {
        (self.isolation, self.hold)
    }

    /// The listener of the gateway of the tenant's network namespace, when this child's
    /// preparation made that namespace: the caller serves it.
    pub fn take_new_gateway(&mut self) -> Option<std::net::TcpListener> {
        self.new_gateway.take()
    }
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
    pub fn detect(
        data_dir: &Path,
        proc_root: &Path,
        tune_cgroups: bool,
    ) -> Result<SandboxSettings, IsolationError> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(IsolationError::NotRoot);
        }
        let hierarchy = cgroup::detect(proc_root, &HostFs)?;
        if tune_cgroups {
            match cgroup::favor_dynamic_modifications(proc_root, &HostFs) {
                Ok(Some(point)) => tracing::info!(
                    mount = %point.display(),
                    "cgroup2 mount set to favordynmods: moving a call into its cgroup no longer waits for an RCU grace period"
                ),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %crate::ErrorChain(&e), "could not set favordynmods; calls may wait on cgroup moves")
                }
            }
        }
        let swept = hierarchy.sweep(&HostFs, &|name| {
            stale_pid(name).is_some_and(|pid| !proc_root.join(pid.to_string()).exists())
        });
        if swept > 0 {
            tracing::info!(swept, "removed call cgroups left by a daemon that is gone");
        }
        let root_mount_point = data_dir.join("sandbox-root");
        std::fs::create_dir_all(&root_mount_point).map_err(|source| IsolationError::Io {
            path: root_mount_point.clone(),
            source,
        })?;
        Ok(SandboxSettings {
            enabled: Some(Enabled {
                cgroups: CgroupPool::new(hierarchy, Arc::new(HostFs)),
                system: falra_sandbox::setup::host_system_entries(),
                root_mount_point,
                netns: Mutex::new(HashMap::new()),
                templates: Mutex::new(HashMap::new()),
                template_failed_at: Mutex::new(None),
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
            Some(e) => match e.cgroups.hierarchy() {
                Hierarchy::V2 { base } => format!("on, cgroup v2 at {}", base.display()),
                Hierarchy::V1 { memory, .. } => {
                    format!("on, cgroup v1 (memory at {})", memory.display())
                }
            },
        }
    }

    /// A cgroup for one call with the policy's limits (none when the sandbox is off): an idle
    /// one of the tenant's, its limits updated if the policy changed, or a new one.
    pub fn acquire_cgroup(
        &self,
        uid: u32,
        policy: &Policy,
    ) -> Result<Option<CgroupLease>, CgroupError> {
        let Some(e) = &self.enabled else {
            return Ok(None);
        };
        let limits = CgroupLimits {
            memory_bytes: u64::from(policy.memory_mb) << 20,
            // The call's init counts too; the policy's figure is the function's own.
            pids: policy.pids.saturating_add(1),
            cpu_percent: policy.cpu_percent,
        };
        e.cgroups.acquire(uid, limits).map(Some)
    }

    /// The isolation for one child of the tenant with `uid`, seeing its code as `mounts` says
    /// and the runner installed in `runner_dir`, plus `extra` binds. Its network namespace is
    /// `netns` where given (a build's own), else the tenant's, made on first use with its
    /// egress gateway's listener bound inside before any process lives there.
    #[allow(clippy::too_many_arguments)]
    pub fn isolation(
        &self,
        uid: u32,
        mounts: &CodeMounts,
        runner_dir: &Path,
        extra: Vec<Bind>,
        policy: &Policy,
        cgroup: Option<&CgroupLease>,
        netns: Option<Arc<OwnedFd>>,
    ) -> Result<Option<ChildIsolation>, IsolationError> {
        let Some(e) = self.enabled.as_ref() else {
            return Ok(None);
        };
        let mut hold = Vec::new();
        let mut new_gateway = None;
        let network = match (&policy.network, netns) {
            (_, Some(fd)) => {
                let raw = fd.as_raw_fd();
                hold.push(fd);
                NetworkMode::Join(raw)
            }
            (Network::Host, None) => NetworkMode::Host,
            (Network::None | Network::Allow(_), None) => {
                let mut spaces = e.netns.lock().expect("netns table poisoned");
                let fd = match spaces.get(&uid) {
                    Some(fd) => Arc::clone(fd),
                    None => {
                        let (fd, listener) = netns::new_loopback_namespace_listening(Some(
                            crate::gateway::GATEWAY_ADDR,
                        ))
                        .map_err(IsolationError::Netns)?;
                        new_gateway = listener;
                        let fd = Arc::new(fd);
                        spaces.insert(uid, Arc::clone(&fd));
                        fd
                    }
                };
                let raw = fd.as_raw_fd();
                hold.push(fd);
                NetworkMode::Join(raw)
            }
        };
        let mut isolation = Isolation {
            root_mount_point: e.root_mount_point.clone(),
            system: e.system.clone(),
            binds: [
                Some((mounts.code.clone(), CODE_DIR)),
                mounts.venv.clone().map(|venv| (venv, VENV_DIR)),
                Some((runner_dir.to_path_buf(), RUNNER_DIR)),
            ]
            .into_iter()
            .flatten()
            .map(|(source, target)| Bind {
                source,
                target: PathBuf::from(target),
                writable: false,
            })
            .chain(extra)
            .collect(),
            tmp_bytes: u64::from(policy.tmp_mb) << 20,
            network,
            uid,
            gid: uid,
            hostname: "falra".to_owned(),
            cgroup_procs: cgroup.map(CgroupLease::procs_files).unwrap_or_default(),
            mount_template: None,
        };
        // Children with a writable bind (builds) are rare and build their own root.
        if isolation.binds.iter().all(|b| !b.writable) {
            if let Some(template) = e.template(uid, &isolation) {
                isolation.mount_template = Some(template.as_raw_fd());
                hold.push(template);
            }
        }
        Ok(Some(ChildIsolation {
            isolation,
            hold,
            new_gateway,
        }))
    }

    /// Forgets the tenant's mount templates but those of version `active` (after a deploy or
    /// a rollback: the others would only serve calls pinned to an old version, and are made
    /// again if one comes).
    pub fn forget_templates_except(&self, uid: u32, active: &str) {
        if let Some(e) = &self.enabled {
            let is_active = |b: &Bind| {
                b.target == Path::new(CODE_DIR) && b.source.file_name().is_some_and(|n| n == active)
            };
            e.templates
                .lock()
                .expect("template table poisoned")
                .retain(|k, _| k.uid != uid || k.binds.iter().any(is_active));
        }
    }

    /// Forgets a removed tenant's network namespace and idle cgroups.
    pub fn forget_tenant(&self, uid: u32) {
        if let Some(e) = &self.enabled {
            e.netns.lock().expect("netns table poisoned").remove(&uid);
            e.templates
                .lock()
                .expect("template table poisoned")
                .retain(|k, _| k.uid != uid);
            e.cgroups.forget_tenant(uid);
        }
    }
}

impl Enabled {
    /// The mount template for `iso`'s tenant and binds, built on first use. `None` when it
    /// cannot be built: the child then builds its own root, as it would without templates.
    fn template(&self, uid: u32, iso: &Isolation) -> Option<Arc<OwnedFd>> {
        let key = TemplateKey {
            uid,
            binds: iso.binds.clone(),
        };
        // A path that is gone: no template (the child's own setup reports what is missing).
        let sources = source_identities(iso)?;
        let built = || {
            self.templates
                .lock()
                .expect("template table poisoned")
                .get(&key)
                .filter(|t| t.sources == sources)
                .map(|t| Arc::clone(&t.fd))
        };
        if let Some(fd) = built() {
            return Some(fd);
        }
        // Templates are built one at a time, under this lock (the table's stays free for the
        // lookups of other children); a child that waited for it finds the one just built.
        let mut failed_at = self
            .template_failed_at
            .lock()
            .expect("template table poisoned");
        if let Some(fd) = built() {
            return Some(fd);
        }
        if failed_at.is_some_and(|at| at.elapsed() < TEMPLATE_RETRY) {
            return None;
        }
        match mountns::new_template(iso) {
            Ok(fd) => {
                *failed_at = None;
                drop(failed_at);
                let fd = Arc::new(fd);
                let mut table = self.templates.lock().expect("template table poisoned");
                if table.len() >= MAX_TEMPLATES {
                    table.clear();
                }
                let template = Template {
                    fd: Arc::clone(&fd),
                    sources,
                };
                table.insert(key, template);
                Some(fd)
            }
            Err(err) => {
                if failed_at.replace(std::time::Instant::now()).is_none() {
                    tracing::warn!(
                        error = %crate::ErrorChain(&err),
                        "could not build a mount template; children build their own root for a minute"
                    );
                }
                None
            }
        }
    }
}

/// (device, inode) of every host path a template of `iso` binds; `None` if one is missing.
fn source_identities(iso: &Isolation) -> Option<Vec<(u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    let system = iso.system.iter().filter_map(|e| match e {
        SystemEntry::Dir(p) | SystemEntry::File(p) => Some(p.as_path()),
        SystemEntry::Symlink { .. } => None,
    });
    iso.binds
        .iter()
        .map(|b| b.source.as_path())
        .chain(system)
        .map(|p| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino())))
        .collect()
}

/// The daemon pid in a call cgroup's name (`c<pid>-<n>`).
fn stale_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('c')?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn isolation_binding(code: &Path, file: &Path) -> Isolation {
        Isolation {
            root_mount_point: "/nowhere".into(),
            system: vec![
                SystemEntry::File(file.to_path_buf()),
                SystemEntry::Symlink {
                    path: "/lib".into(),
                    target: "usr/lib".into(),
                },
            ],
            binds: vec![Bind {
                source: code.to_path_buf(),
                target: CODE_DIR.into(),
                writable: false,
            }],
            tmp_bytes: 0,
            network: NetworkMode::Host,
            mount_template: None,
            uid: 1,
            gid: 1,
            hostname: "falra".into(),
            cgroup_procs: Vec::new(),
        }
    }

    #[test]
    fn a_replaced_bind_source_or_host_file_changes_a_templates_identity() {
        let dir = tempfile::tempdir().unwrap();
        let (code, file) = (dir.path().join("v1"), dir.path().join("resolv.conf"));
        std::fs::create_dir(&code).unwrap();
        std::fs::write(&file, "nameserver 192.0.2.1\n").unwrap();
        let iso = isolation_binding(&code, &file);
        let first = source_identities(&iso).unwrap();
        assert_eq!(source_identities(&iso).unwrap(), first);

        // A version tree removed and written again under the same name (the old one stays
        // alive, as the template's bind of it keeps it).
        std::fs::rename(&code, dir.path().join("v1.removed")).unwrap();
        std::fs::create_dir(&code).unwrap();
        let second = source_identities(&iso).unwrap();
        assert_ne!(second, first);

        // A host file replaced by a rename, as resolvers do.
        let tmp = dir.path().join("resolv.conf.new");
        std::fs::write(&tmp, "nameserver 192.0.2.2\n").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        assert_ne!(source_identities(&iso).unwrap(), second);

        // A path that is gone: no template at all.
        std::fs::remove_dir(&code).unwrap();
        assert_eq!(source_identities(&iso), None);
    }
}
