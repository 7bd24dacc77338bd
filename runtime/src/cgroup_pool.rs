//! The pool of call cgroups: one lent to each child, kept for the tenant's next child where
//! the hierarchy lets a cgroup be reused, removed otherwise.
//!
//! Creating a cgroup and writing its limits is a good part of a call's cost on cgroup v1, so
//! an emptied cgroup of a tenant goes back to the pool with the limits it carries, and the next
//! child of that tenant gets it (its limits rewritten if the policy changed since, or a fresh
//! one if they cannot be). A [`CgroupLease`] gives its cgroup back when it is dropped, on every
//! path, a panic included; one that still holds processes then is removed once they are gone.
//! Every file access goes through the sandbox's [`CgroupFs`], so the pool is unit-tested
//! against an in-memory tree.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use falra_sandbox::cgroup::{CallCgroup, CgroupError, CgroupFs, CgroupLimits, Hierarchy};

/// Idle cgroups per tenant uid, with the limits each carries.
type Idle = Mutex<HashMap<u32, Vec<(CallCgroup, CgroupLimits)>>>;

#[derive(Clone)]
pub struct CgroupPool(Arc<Pool>);

struct Pool {
    fs: Arc<dyn CgroupFs>,
    hierarchy: Hierarchy,
    idle: Idle,
    next: AtomicU64,
}

impl std::fmt::Debug for CgroupPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CgroupPool")
            .field("hierarchy", &self.0.hierarchy)
            .finish_non_exhaustive()
    }
}

/// A call's cgroup, on loan from the pool for one child; given back when dropped.
#[derive(Debug)]
pub struct CgroupLease {
    pool: CgroupPool,
    uid: u32,
    cgroup: Option<CallCgroup>,
    limits: CgroupLimits,
    oom_kills_before: u64,
}

/// What a child used, from its cgroup.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallUsage {
    pub cpu_ns: Option<u64>,
    pub peak_memory_bytes: Option<u64>,
    pub oom_killed: bool,
}

impl CgroupPool {
    pub fn new(hierarchy: Hierarchy, fs: Arc<dyn CgroupFs>) -> CgroupPool {
        CgroupPool(Arc::new(Pool {
            fs,
            hierarchy,
            idle: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
        }))
    }

    pub fn hierarchy(&self) -> &Hierarchy {
        &self.0.hierarchy
    }

    /// A cgroup for one child of the tenant with `uid`, with `limits`: an idle one of the
    /// tenant's (its limits rewritten if they changed), or a new one.
    pub fn acquire(&self, uid: u32, limits: CgroupLimits) -> Result<CgroupLease, CgroupError> {
        let pool = &self.0;
        let fs = pool.fs.as_ref();
        let idle = pool
            .idle
            .lock()
            .expect("cgroup pool poisoned")
            .get_mut(&uid)
            .and_then(Vec::pop);
        // An idle cgroup whose limits cannot be changed (memory still charged to it above a
        // lowered limit, say tmpfs pages its last call left) is dropped for a new one.
        let reused = idle.and_then(|(cgroup, old)| {
            let ready = if old == limits {
                Ok(())
            } else {
                cgroup.set_limits(fs, limits)
            };
            match ready.and_then(|()| cgroup.reset_peak(fs)) {
                Ok(()) => Some(cgroup),
                Err(err) => {
                    tracing::debug!(error = %crate::ErrorChain(&err), "idle call cgroup not reusable");
                    self.remove_later(cgroup);
                    None
                }
            }
        });
        let cgroup = match reused {
            Some(cgroup) => cgroup,
            None => {
                let n = pool.next.fetch_add(1, Ordering::Relaxed);
                // The daemon's pid keeps two daemons on one host (tests do that) apart.
                let name = format!("c{}-{n}", std::process::id());
                pool.hierarchy
                    .create_call(fs, &format!("t{uid}"), &name, limits)?
            }
        };
        let oom_kills_before = cgroup.usage(fs).oom_kills;
        Ok(CgroupLease {
            pool: self.clone(),
            uid,
            cgroup: Some(cgroup),
            limits,
            oom_kills_before,
        })
    }

    /// Removes a tenant's idle cgroups (the tenant is gone).
    pub fn forget_tenant(&self, uid: u32) {
        let idle = self
            .0
            .idle
            .lock()
            .expect("cgroup pool poisoned")
            .remove(&uid);
        for (cgroup, _) in idle.into_iter().flatten() {
            self.remove_later(cgroup);
        }
    }

    /// How many idle cgroups the tenant has.
    #[cfg(test)]
    fn idle_of(&self, uid: u32) -> usize {
        self.0.idle.lock().unwrap().get(&uid).map_or(0, Vec::len)
    }

    fn give_back(&self, uid: u32, cgroup: CallCgroup, limits: CgroupLimits) {
        let fs = self.0.fs.as_ref();
        if cgroup.reusable() && cgroup.is_empty(fs) {
            let mut idle = self.0.idle.lock().expect("cgroup pool poisoned");
            idle.entry(uid).or_default().push((cgroup, limits));
        } else {
            self.remove_later(cgroup);
        }
    }

    /// Removes a cgroup, retrying for up to a second while the kernel tears its processes
    /// down. On the daemon's runtime every attempt runs on the blocking pool (this is on every
    /// call's way out, and an rmdir in cgroupfs may wait); without one (unit tests) the first
    /// attempt is made at once and only the retries go to a thread.
    fn remove_later(&self, cgroup: CallCgroup) {
        let fs = Arc::clone(&self.0.fs);
        let on_runtime = tokio::runtime::Handle::try_current().is_ok();
        if !on_runtime && cgroup.remove(fs.as_ref()).is_ok() {
            return;
        }
        let retry = move || {
            for attempt in 0..200u32 {
                match cgroup.remove(fs.as_ref()) {
                    Ok(()) => return,
                    Err(e) if attempt == 199 => {
                        tracing::warn!(error = %crate::ErrorChain(&e), "could not remove a call's cgroup")
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        };
        if on_runtime {
            crate::task::spawn_blocking(retry);
        } else {
            std::thread::spawn(retry);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let idle = std::mem::take(self.idle.get_mut().expect("cgroup pool poisoned"));
        for (cgroup, _) in idle.into_values().flatten() {
            let _ = cgroup.remove(self.fs.as_ref());
        }
    }
}

impl CgroupLease {
    pub fn procs_files(&self) -> Vec<std::path::PathBuf> {
        self.cgroup
            .as_ref()
            .map(CallCgroup::procs_files)
            .unwrap_or_default()
    }

    /// The cgroup's membership, to place a process forked elsewhere in it and to empty it.
    pub fn members(&self) -> Option<falra_sandbox::cgroup::Members> {
        let fs = Arc::clone(&self.pool.0.fs);
        self.cgroup.as_ref().map(|c| c.members(fs))
    }

    /// What the child used; read once its processes are gone.
    pub fn usage(&self) -> CallUsage {
        let Some(cgroup) = &self.cgroup else {
            return CallUsage::default();
        };
        let u = cgroup.usage(self.pool.0.fs.as_ref());
        CallUsage {
            cpu_ns: u.cpu_ns,
            peak_memory_bytes: u.peak_memory_bytes,
            oom_killed: u.oom_kills > self.oom_kills_before,
        }
    }
}

impl Drop for CgroupLease {
    fn drop(&mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            self.pool.give_back(self.uid, cgroup, self.limits);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::io;
    use std::path::{Path, PathBuf};

    use super::*;

    /// An in-memory cgroup tree: directories, files, and writes that can be made to fail.
    #[derive(Default)]
    struct MemFs {
        dirs: Mutex<BTreeSet<PathBuf>>,
        files: Mutex<BTreeMap<PathBuf, String>>,
        /// Writes to files of this name fail.
        fail_writes_to: Mutex<Option<&'static str>>,
    }

    impl MemFs {
        fn procs(&self, dir: &Path) -> String {
            self.files
                .lock()
                .unwrap()
                .get(&dir.join("cgroup.procs"))
                .cloned()
                .unwrap_or_default()
        }
        fn file(&self, path: &Path) -> Option<String> {
            self.files.lock().unwrap().get(path).cloned()
        }
        fn has_dir(&self, path: &Path) -> bool {
            self.dirs.lock().unwrap().contains(path)
        }
    }

    impl CgroupFs for MemFs {
        fn create_dir(&self, path: &Path) -> io::Result<()> {
            self.dirs.lock().unwrap().insert(path.to_path_buf());
            Ok(())
        }
        fn remove_dir(&self, path: &Path) -> io::Result<()> {
            // As the kernel does: a cgroup with processes in it cannot go.
            if !self.procs(path).trim().is_empty() {
                return Err(io::Error::other("busy"));
            }
            self.dirs.lock().unwrap().remove(path);
            self.files
                .lock()
                .unwrap()
                .retain(|p, _| p.parent() != Some(path));
            Ok(())
        }
        fn write(&self, path: &Path, value: &str) -> io::Result<()> {
            let fail = *self.fail_writes_to.lock().unwrap();
            if fail.is_some_and(|name| path.ends_with(name)) {
                return Err(io::Error::other("refused"));
            }
            self.files
                .lock()
                .unwrap()
                .insert(path.to_path_buf(), value.to_owned());
            Ok(())
        }
        fn read(&self, path: &Path) -> io::Result<String> {
            self.file(path)
                .or_else(|| path.ends_with("cgroup.procs").then(String::new))
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }
        fn exists(&self, path: &Path) -> bool {
            self.has_dir(path) || self.file(path).is_some()
        }
        fn subdirs(&self, path: &Path) -> io::Result<Vec<String>> {
            Ok(self
                .dirs
                .lock()
                .unwrap()
                .iter()
                .filter(|d| d.parent() == Some(path))
                .filter_map(|d| d.file_name()?.to_str().map(str::to_owned))
                .collect())
        }
    }

    fn v1() -> Hierarchy {
        Hierarchy::V1 {
            memory: "/cg/memory/falra".into(),
            pids: "/cg/pids/falra".into(),
            cpu: "/cg/cpu/falra".into(),
            cpuacct: Some("/cg/cpu/falra".into()),
        }
    }

    const LIMITS: CgroupLimits = CgroupLimits {
        memory_bytes: 128 << 20,
        pids: 33,
        cpu_percent: 100,
    };

    fn pool(hierarchy: Hierarchy) -> (Arc<MemFs>, CgroupPool) {
        let fs = Arc::new(MemFs::default());
        let pool = CgroupPool::new(hierarchy, Arc::clone(&fs) as Arc<dyn CgroupFs>);
        (fs, pool)
    }

    fn memory_dir(lease: &CgroupLease) -> PathBuf {
        lease.procs_files()[0].parent().unwrap().to_path_buf()
    }

    #[test]
    fn an_emptied_cgroup_is_reused_by_the_same_tenant_only() {
        let (fs, pool) = pool(v1());
        let first = pool.acquire(200_000, LIMITS).unwrap();
        let dir = memory_dir(&first);
        assert!(dir.starts_with("/cg/memory/falra/t200000"));
        drop(first);
        assert_eq!(pool.idle_of(200_000), 1);
        let again = pool.acquire(200_000, LIMITS).unwrap();
        assert_eq!(memory_dir(&again), dir);
        // Its counters start from zero for the new child.
        assert_eq!(
            fs.file(&dir.join("memory.max_usage_in_bytes")).as_deref(),
            Some("0")
        );
        let other = pool.acquire(200_001, LIMITS).unwrap();
        assert_ne!(memory_dir(&other), dir);
        assert!(memory_dir(&other).starts_with("/cg/memory/falra/t200001"));
    }

    #[test]
    fn a_changed_policy_rewrites_the_reused_cgroups_limits() {
        let (fs, pool) = pool(v1());
        let dir = memory_dir(&pool.acquire(200_000, LIMITS).unwrap());
        let lower = CgroupLimits {
            memory_bytes: 64 << 20,
            ..LIMITS
        };
        let lease = pool.acquire(200_000, lower).unwrap();
        assert_eq!(memory_dir(&lease), dir);
        assert_eq!(
            fs.file(&dir.join("memory.limit_in_bytes")).as_deref(),
            Some("67108864")
        );
    }

    #[test]
    fn a_cgroup_whose_limits_cannot_be_changed_is_replaced_and_removed() {
        let (fs, pool) = pool(v1());
        let old = memory_dir(&pool.acquire(200_000, LIMITS).unwrap());
        *fs.fail_writes_to.lock().unwrap() = Some("memory.limit_in_bytes");
        let lower = CgroupLimits {
            memory_bytes: 64 << 20,
            ..LIMITS
        };
        // The rewrite fails, and so would a new cgroup's: the error is the caller's.
        assert!(pool.acquire(200_000, lower).is_err());
        assert!(!fs.has_dir(&old), "the unusable cgroup was removed");
        *fs.fail_writes_to.lock().unwrap() = None;
        let fresh = pool.acquire(200_000, lower).unwrap();
        assert_ne!(memory_dir(&fresh), old);
    }

    #[test]
    fn a_cgroup_with_processes_left_is_removed_not_pooled() {
        let (fs, pool) = pool(v1());
        let lease = pool.acquire(200_000, LIMITS).unwrap();
        let dir = memory_dir(&lease);
        fs.write(&dir.join("cgroup.procs"), "4242\n").unwrap();
        drop(lease);
        assert_eq!(pool.idle_of(200_000), 0);
        assert!(fs.has_dir(&dir), "busy: removal waits for its processes");
        fs.write(&dir.join("cgroup.procs"), "").unwrap();
        let gone = (0..400).any(|_| {
            std::thread::sleep(Duration::from_millis(5));
            !fs.has_dir(&dir)
        });
        assert!(gone, "removed once empty");
    }

    #[test]
    fn a_lease_is_given_back_when_its_holder_panics() {
        let (_fs, pool) = pool(v1());
        let held = pool.clone();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _lease = held.acquire(200_000, LIMITS).unwrap();
            panic!("the call's task failed");
        }));
        assert!(panicked.is_err());
        assert_eq!(pool.idle_of(200_000), 1);
    }

    #[test]
    fn on_v2_no_cgroup_is_reused_and_forgetting_a_tenant_removes_its_idle_ones() {
        let (fs, pool) = pool(Hierarchy::V2 {
            base: "/cg/falra".into(),
        });
        let lease = pool.acquire(200_000, LIMITS).unwrap();
        let dir = memory_dir(&lease);
        drop(lease);
        assert_eq!(pool.idle_of(200_000), 0);
        assert!(!fs.has_dir(&dir));

        let (fs, pool) = self::pool(v1());
        let dir = memory_dir(&pool.acquire(200_000, LIMITS).unwrap());
        assert!(fs.has_dir(&dir));
        pool.forget_tenant(200_000);
        assert!(!fs.has_dir(&dir));
        assert_eq!(pool.idle_of(200_000), 0);
    }
}
