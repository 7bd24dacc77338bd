//! Control groups: one per tenant, one per call beneath it, on cgroup v2 or v1.
//!
//! The daemon's host decides the version: production hosts mount the unified v2 hierarchy with
//! the controllers enabled; older hosts (and these build machines) have v1 hierarchies, one per
//! controller. [`detect`] reads `/proc/self/mountinfo` and `/proc/self/cgroup` (from a `/proc`
//! root passed in) and picks. Every file operation goes through [`CgroupFs`], so both versions
//! are unit-tested against a fixture tree in a temporary directory.
//!
//! A call's cgroup is created before the child starts (the child joins it as its first setup
//! step), read back for usage after the child is gone, and removed.

use std::io;
use std::path::{Path, PathBuf};

/// What one call may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    pub memory_bytes: u64,
    pub pids: u32,
    /// Percent of one CPU (100 = one full CPU, 200 = two).
    pub cpu_percent: u32,
}

/// What one call used, read back after it ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    pub cpu_ns: Option<u64>,
    pub peak_memory_bytes: Option<u64>,
    /// How often the kernel's OOM killer has acted in this cgroup (cumulative: a reused
    /// cgroup's caller compares it with the count before the call).
    pub oom_kills: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no usable cgroup hierarchy: {0}")]
    Unavailable(String),
    #[error("could not {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The file operations cgroup management needs; the real one touches the filesystem.
pub trait CgroupFs: Send + Sync {
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    fn write(&self, path: &Path, value: &str) -> io::Result<()>;
    fn read(&self, path: &Path) -> io::Result<String>;
    fn exists(&self, path: &Path) -> bool;
    /// Names of the subdirectories of `path`.
    fn subdirs(&self, path: &Path) -> io::Result<Vec<String>>;
}

/// The host filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostFs;

impl CgroupFs for HostFs {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        match std::fs::create_dir(path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        }
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }
    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        std::fs::write(path, value)
    }
    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn subdirs(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                out.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(out)
    }
}

/// Where the hierarchies are and which version they speak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// One unified tree; `base` is the directory falra's cgroups go under.
    V2 { base: PathBuf },
    /// One tree per controller; each `base` is falra's directory in that controller's tree.
    /// `cpuacct` is where a call's CPU time is read: the cpu base where cpuacct is mounted with
    /// cpu, else falra's directory in the separate cpuacct tree, which calls then join too.
    /// `wait4` cannot stand in for it: a call stopped at its deadline or for an oversized
    /// answer has its init killed before init reaps the program, and that CPU would go
    /// unmetered.
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        cpu: PathBuf,
        cpuacct: Option<PathBuf>,
    },
}

/// Finds the hierarchies from `/proc/self/mountinfo` and `/proc/self/cgroup` under `proc_root`.
/// falra's cgroups go beneath the daemon's own cgroup, in a directory named `falra`.
pub fn detect(proc_root: &Path, fs: &dyn CgroupFs) -> Result<Hierarchy, CgroupError> {
    let read = |name: &str| {
        let path = proc_root.join("self").join(name);
        fs.read(&path).map_err(|source| CgroupError::Io {
            action: "read",
            path,
            source,
        })
    };
    let mountinfo = read("mountinfo")?;
    let membership = read("cgroup")?;
    let mounts = parse_mountinfo(&mountinfo);

    // v2 with the controllers we need enabled wins.
    if let Some(mount) = mounts.iter().find(|m| m.fstype == "cgroup2") {
        let own = membership
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("/");
        let dir = join_cgroup(&mount.point, own);
        let controllers = fs.read(&dir.join("cgroup.controllers")).unwrap_or_default();
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        if has("memory") && has("pids") && has("cpu") {
            if own != "/" {
                claim_delegated_subtree(&dir, fs, std::process::id())?;
            }
            return Ok(Hierarchy::V2 {
                base: dir.join("falra"),
            });
        }
    }
    let v1 = |controller: &str| -> Option<(PathBuf, bool)> {
        let mount = mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && m.options.split(',').any(|o| o == controller))?;
        let own = membership.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
            list.split(',').any(|c| c == controller).then_some(path)
        })?;
        let with_cpuacct = mount.options.split(',').any(|o| o == "cpuacct");
        Some((join_cgroup(&mount.point, own).join("falra"), with_cpuacct))
    };
    match (v1("memory"), v1("pids"), v1("cpu")) {
        (Some((memory, _)), Some((pids, _)), Some((cpu, cpuacct_with_cpu))) => Ok(Hierarchy::V1 {
            memory,
            pids,
            cpuacct: if cpuacct_with_cpu {
                Some(cpu.clone())
            } else {
                v1("cpuacct").map(|(dir, _)| dir)
            },
            cpu,
        }),
        _ => Err(CgroupError::Unavailable(
            "neither cgroup v2 with memory, pids and cpu, nor v1 memory, pids and cpu hierarchies are mounted"
                .into(),
        )),
    }
}

/// The error of `action` on `path`, for `map_err`.
fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io {
        action,
        path,
        source,
    }
}

/// Makes the daemon's own v2 cgroup (one delegated to it, as systemd's `Delegate=yes` does)
/// able to hand controllers to falra's cgroups beneath it. cgroup v2 lets a cgroup enable
/// controllers for its children only while it holds no processes itself, so the processes in
/// it (the daemon) move into a leaf `daemon` beside `falra` first, then memory, pids and cpu
/// are enabled. Nothing changes where they are enabled already (a cgroup set up for falra by
/// hand, or a test's fake tree without the file).
fn claim_delegated_subtree(
    own: &Path,
    fs: &dyn CgroupFs,
    daemon_pid: u32,
) -> Result<(), CgroupError> {
    let control = own.join("cgroup.subtree_control");
    let Ok(enabled) = fs.read(&control) else {
        return Ok(());
    };
    let on = |c: &str| enabled.split_whitespace().any(|x| x == c);
    if on("memory") && on("pids") && on("cpu") {
        return Ok(());
    }
    let procs = own.join("cgroup.procs");
    let pids = fs.read(&procs).map_err(io("read", &procs))?;
    let me = daemon_pid.to_string();
    if pids.split_whitespace().any(|p| p != me) {
        // Not a cgroup delegated to the daemon alone (a login shell's, a runner's): its
        // other processes are not the daemon's to move, and it is left as it is.
        tracing::warn!(cgroup = %own.display(), "the daemon's cgroup holds other processes: controllers not enabled for falra beneath it");
        return Ok(());
    }
    let leaf = own.join("daemon");
    if !fs.exists(&leaf) {
        fs.create_dir(&leaf).map_err(io("create", &leaf))?;
    }
    let into = leaf.join("cgroup.procs");
    fs.write(&into, &me)
        .map_err(io("move the daemon into", &into))?;
    fs.write(&control, "+memory +pids +cpu")
        .map_err(io("enable controllers in", &control))
}

/// Turns on `favordynmods` on the host's cgroup2 mount, if there is one and it is off; returns
/// the mount point when it changed anything.
///
/// Moving a process into a cgroup takes a global lock whose writers wait for an RCU grace period
/// (milliseconds) unless the hierarchy "favors dynamic modifications"; every call moves its
/// child into its cgroups, so without it calls queue behind grace periods. The lock is shared by
/// all hierarchies, so on a v1 host the cgroup2 mount beside them carries the option too. The
/// price is a slightly slower fork and exit for every process on the host.
pub fn favor_dynamic_modifications(
    proc_root: &Path,
    fs: &dyn CgroupFs,
) -> Result<Option<PathBuf>, CgroupError> {
    let path = proc_root.join("self").join("mountinfo");
    let mountinfo = fs.read(&path).map_err(|source| CgroupError::Io {
        action: "read",
        path,
        source,
    })?;
    let Some(mount) = parse_mountinfo(&mountinfo)
        .into_iter()
        .find(|m| m.fstype == "cgroup2")
    else {
        return Ok(None);
    };
    let options: Vec<&str> = mount
        .options
        .split(',')
        .filter(|o| *o != "rw" && *o != "ro")
        .collect();
    if options.contains(&"favordynmods") {
        return Ok(None);
    }
    // A cgroup2 remount resets every option it is not given: keep the ones already there.
    let mut wanted = options.join(",");
    if !wanted.is_empty() {
        wanted.push(',');
    }
    wanted.push_str("favordynmods");
    remount(&mount.point, &wanted).map_err(|source| CgroupError::Io {
        action: "remount with favordynmods",
        path: mount.point.clone(),
        source,
    })?;
    Ok(Some(mount.point))
}

#[allow(unsafe_code)]
fn remount(point: &Path, options: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let target = std::ffi::CString::new(point.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let data = std::ffi::CString::new(options).map_err(io::Error::other)?;
    // SAFETY: both strings are valid and NUL-terminated for the duration of the call; a
    // remount changes only the options of the mount at `target`.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT,
            data.as_ptr().cast(),
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn join_cgroup(mount_point: &Path, own: &str) -> PathBuf {
    mount_point.join(own.trim_start_matches('/'))
}

struct Mount {
    point: PathBuf,
    fstype: String,
    options: String,
}

/// The mount point, filesystem type and super options of each line of mountinfo.
fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split_whitespace().nth(4)?;
            let mut r = right.split_whitespace();
            let fstype = r.next()?.to_owned();
            let _source = r.next();
            let options = r.next().unwrap_or("").to_owned();
            Some(Mount {
                point: PathBuf::from(unescape_octal(point)),
                fstype,
                options,
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v as char);
            i += 4;
        } else {
            out.push(bytes[i] as char);
            i += 1;
        }
    }
    out
}

/// One call's cgroup (a directory per hierarchy), removed by [`CallCgroup::remove`].
#[derive(Debug)]
pub struct CallCgroup {
    hierarchy: Hierarchy,
    /// `<group>/<call>` beneath each base.
    relative: PathBuf,
}

impl Hierarchy {
    fn bases(&self) -> Vec<&Path> {
        match self {
            Hierarchy::V2 { base } => vec![base],
            Hierarchy::V1 {
                memory,
                pids,
                cpu,
                cpuacct,
            } => {
                let mut bases = vec![memory.as_path(), pids, cpu];
                if let Some(acct) = cpuacct.as_deref().filter(|a| a != cpu) {
                    bases.push(acct);
                }
                bases
            }
        }
    }

    /// Removes the call cgroups that `is_stale` names (left by a daemon that did not shut down
    /// cleanly); returns how many went. Cgroups with processes in them are left alone.
    pub fn sweep(&self, fs: &dyn CgroupFs, is_stale: &dyn Fn(&str) -> bool) -> usize {
        let mut removed = 0;
        for base in self.bases() {
            for group in fs.subdirs(base).unwrap_or_default() {
                let group_dir = base.join(&group);
                for call in fs.subdirs(&group_dir).unwrap_or_default() {
                    if is_stale(&call) && fs.remove_dir(&group_dir.join(&call)).is_ok() {
                        removed += 1;
                    }
                }
            }
        }
        removed
    }

    /// Creates `<group>/<call>` with `limits`. `group` is one directory per tenant.
    pub fn create_call(
        &self,
        fs: &dyn CgroupFs,
        group: &str,
        call: &str,
        limits: CgroupLimits,
    ) -> Result<CallCgroup, CgroupError> {
        for base in self.bases() {
            for dir in [base.to_path_buf(), base.join(group)] {
                if !fs.exists(&dir) {
                    fs.create_dir(&dir).map_err(io("create", &dir))?;
                    if let Hierarchy::V2 { .. } = self {
                        let control = dir.join("cgroup.subtree_control");
                        fs.write(&control, "+memory +pids +cpu")
                            .map_err(io("enable controllers in", &control))?;
                    }
                }
            }
        }
        let relative = Path::new(group).join(call);
        let cg = CallCgroup {
            hierarchy: self.clone(),
            relative,
        };
        for dir in cg.dirs() {
            fs.create_dir(&dir).map_err(io("create", &dir))?;
        }
        if let Err(e) = cg.set_limits(fs, limits) {
            let _ = cg.remove(fs);
            return Err(e);
        }
        Ok(cg)
    }
}

impl CallCgroup {
    /// Writes `limits` (again, when a reused cgroup's policy changed).
    pub fn set_limits(&self, fs: &dyn CgroupFs, limits: CgroupLimits) -> Result<(), CgroupError> {
        let period: u64 = 100_000;
        let quota = period * u64::from(limits.cpu_percent) / 100;
        let memory = limits.memory_bytes.to_string();
        let writes: Vec<(PathBuf, String)> = match &self.hierarchy {
            Hierarchy::V2 { base } => {
                let d = base.join(&self.relative);
                vec![
                    (d.join("memory.max"), memory),
                    (d.join("memory.swap.max"), "0".into()),
                    (d.join("pids.max"), limits.pids.to_string()),
                    (d.join("cpu.max"), format!("{quota} {period}")),
                ]
            }
            Hierarchy::V1 {
                memory: mem_base,
                pids,
                cpu,
                ..
            } => {
                let (m, p, c) = (
                    mem_base.join(&self.relative),
                    pids.join(&self.relative),
                    cpu.join(&self.relative),
                );
                // memory + swap may never be below memory alone: lift it, set memory, then cap
                // memory + swap at memory (only where swap accounting is on).
                let memsw = m.join("memory.memsw.limit_in_bytes");
                let swap_accounting = fs.exists(&memsw);
                let mut w = Vec::new();
                if swap_accounting {
                    w.push((memsw.clone(), "-1".to_owned()));
                }
                w.extend([
                    (m.join("memory.limit_in_bytes"), memory.clone()),
                    (m.join("memory.swappiness"), "0".into()),
                    // v1 keeps socket buffers out of memory.limit_in_bytes: without this cap one
                    // call could pin the host's TCP memory. (v2 charges them to memory.max.)
                    (m.join("memory.kmem.tcp.limit_in_bytes"), memory.clone()),
                    (p.join("pids.max"), limits.pids.to_string()),
                    (c.join("cpu.cfs_period_us"), period.to_string()),
                    (c.join("cpu.cfs_quota_us"), quota.to_string()),
                ]);
                if swap_accounting {
                    w.push((memsw, memory));
                }
                w
            }
        };
        for (path, value) in writes {
            // swap files may be missing where the kernel has no swap accounting
            // (and kmem accounting may be compiled out)
            let optional = path.ends_with("memory.swap.max")
                || path.ends_with("memory.swappiness")
                || (path.ends_with("memory.kmem.tcp.limit_in_bytes") && !fs.exists(&path));
            match fs.write(&path, &value) {
                Err(_) if optional => {}
                Err(source) => {
                    return Err(CgroupError::Io {
                        action: "write",
                        path,
                        source,
                    })
                }
                Ok(()) => {}
            }
        }
        Ok(())
    }

    /// Whether this cgroup can be used for another call: on v1, where its peak memory can be
    /// reset. (On v2 a call's peak is only exact in a fresh cgroup.)
    pub fn reusable(&self) -> bool {
        matches!(self.hierarchy, Hierarchy::V1 { .. })
    }

    /// Starts a new call in a reused cgroup: its peak memory and its CPU time count from now.
    pub fn reset_peak(&self, fs: &dyn CgroupFs) -> Result<(), CgroupError> {
        if let Hierarchy::V1 {
            memory, cpuacct, ..
        } = &self.hierarchy
        {
            let mut counters = vec![memory
                .join(&self.relative)
                .join("memory.max_usage_in_bytes")];
            if let Some(acct) = cpuacct {
                counters.push(acct.join(&self.relative).join("cpuacct.usage"));
            }
            for path in counters {
                fs.write(&path, "0").map_err(|source| CgroupError::Io {
                    action: "reset",
                    path,
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Whether no process is left in it (so it can be reused or removed).
    pub fn is_empty(&self, fs: &dyn CgroupFs) -> bool {
        self.procs_files()
            .iter()
            .all(|p| fs.read(p).is_ok_and(|s| s.trim().is_empty()))
    }

    fn dirs(&self) -> Vec<PathBuf> {
        self.hierarchy
            .bases()
            .into_iter()
            .map(|b| b.join(&self.relative))
            .collect()
    }

    /// The `cgroup.procs` files a process writes `0` into to join this cgroup.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// Its membership, detached from it: what a process forked by a preload zygote needs to be
    /// placed in this cgroup and to have what it left emptied out (`crate::preload`), while the
    /// cgroup itself stays with the call.
    pub fn members(&self, fs: std::sync::Arc<dyn CgroupFs>) -> Members {
        let kill = match &self.hierarchy {
            Hierarchy::V2 { base } => Some(base.join(&self.relative).join("cgroup.kill")),
            Hierarchy::V1 { .. } => None,
        };
        Members {
            fs,
            procs: self.procs_files(),
            kill,
        }
    }

    /// What the call used. Missing files read as unknown, not as errors.
    pub fn usage(&self, fs: &dyn CgroupFs) -> CgroupUsage {
        let num = |p: PathBuf| fs.read(&p).ok().and_then(|s| s.trim().parse::<u64>().ok());
        let keyed = |p: PathBuf, key: &str| {
            fs.read(&p).ok().and_then(|s| {
                s.lines().find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == key).then(|| v.trim().parse::<u64>().ok()).flatten()
                })
            })
        };
        match &self.hierarchy {
            Hierarchy::V2 { base } => {
                let d = base.join(&self.relative);
                CgroupUsage {
                    cpu_ns: keyed(d.join("cpu.stat"), "usage_usec").map(|us| us * 1000),
                    peak_memory_bytes: num(d.join("memory.peak")),
                    oom_kills: keyed(d.join("memory.events"), "oom_kill").unwrap_or(0),
                }
            }
            Hierarchy::V1 {
                memory, cpuacct, ..
            } => {
                let m = memory.join(&self.relative);
                let cpu_ns = cpuacct
                    .as_ref()
                    .and_then(|acct| num(acct.join(&self.relative).join("cpuacct.usage")));
                CgroupUsage {
                    cpu_ns,
                    peak_memory_bytes: num(m.join("memory.max_usage_in_bytes")),
                    oom_kills: keyed(m.join("memory.oom_control"), "oom_kill").unwrap_or(0),
                }
            }
        }
    }

    /// Removes the call's directories; they must be empty of processes by now.
    pub fn remove(&self, fs: &dyn CgroupFs) -> Result<(), CgroupError> {
        let mut first_error = None;
        for dir in self.dirs() {
            if fs.exists(&dir) {
                if let Err(source) = fs.remove_dir(&dir) {
                    first_error.get_or_insert(CgroupError::Io {
                        action: "remove",
                        path: dir,
                        source,
                    });
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The processes of one call cgroup: placing one there, killing all of them.
pub struct Members {
    fs: std::sync::Arc<dyn CgroupFs>,
    procs: Vec<PathBuf>,
    /// `cgroup.kill` (v2); v1 has none, and its processes are killed one by one.
    kill: Option<PathBuf>,
}

impl std::fmt::Debug for Members {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Members")
            .field("procs", &self.procs)
            .finish_non_exhaustive()
    }
}

impl Members {
    /// Moves process `pid` (in the daemon's PID namespace) into the cgroup.
    pub fn place(&self, pid: libc::pid_t) -> Result<(), CgroupError> {
        for file in &self.procs {
            self.fs
                .write(file, &pid.to_string())
                .map_err(|source| CgroupError::Io {
                    action: "join",
                    path: file.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Kills every process in the cgroup, until it is empty or about a second has passed.
    pub fn kill_all(&self) {
        if let Some(kill) = &self.kill {
            let _ = self.fs.write(kill, "1");
        }
        for _ in 0..200 {
            let pids: Vec<libc::pid_t> = self
                .procs
                .iter()
                .filter_map(|file| self.fs.read(file).ok())
                .flat_map(|text| {
                    text.lines()
                        .filter_map(|l| l.trim().parse().ok())
                        .collect::<Vec<libc::pid_t>>()
                })
                .collect();
            if pids.is_empty() {
                return;
            }
            for pid in pids.into_iter().filter(|&p| p > 0) {
                // SAFETY: kill takes integers; the pid was in the call's cgroup a moment ago
                // (on v1, which has no cgroup.kill; on v2 it is already dying).
                #[allow(unsafe_code)]
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixture host: a fake `/proc` and a cgroup tree, both under one temporary directory.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new(mountinfo: &str, membership: &str) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let proc_self = dir.path().join("proc/self");
            std::fs::create_dir_all(&proc_self).unwrap();
            let root = dir.path().display().to_string();
            std::fs::write(proc_self.join("mountinfo"), mountinfo.replace("@", &root)).unwrap();
            std::fs::write(proc_self.join("cgroup"), membership).unwrap();
            Fixture { dir }
        }

        fn path(&self, p: &str) -> PathBuf {
            self.dir.path().join(p)
        }

        fn mkdirs(&self, p: &str) {
            std::fs::create_dir_all(self.path(p)).unwrap();
        }

        fn write(&self, p: &str, s: &str) {
            std::fs::write(self.path(p), s).unwrap();
        }

        fn read(&self, p: &str) -> String {
            std::fs::read_to_string(self.path(p)).unwrap()
        }
    }

    const LIMITS: CgroupLimits = CgroupLimits {
        memory_bytes: 128 << 20,
        pids: 32,
        cpu_percent: 50,
    };

    const V2_MOUNTINFO: &str = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
30 22 0:26 / @/cg rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn v2_is_detected_beneath_the_daemons_own_cgroup() {
        let f = Fixture::new(V2_MOUNTINFO, "0::/system.slice/falra.service\n");
        f.mkdirs("cg/system.slice/falra.service");
        f.write(
            "cg/system.slice/falra.service/cgroup.controllers",
            "cpuset cpu io memory pids\n",
        );
        let h = detect(&f.path("proc"), &HostFs).unwrap();
        assert_eq!(
            h,
            Hierarchy::V2 {
                base: f.path("cg/system.slice/falra.service/falra")
            }
        );
    }

    #[test]
    fn a_delegated_v2_cgroup_moves_the_daemon_into_a_leaf_before_enabling_controllers() {
        let f = Fixture::new(V2_MOUNTINFO, "0::/system.slice/falra.service\n");
        let own = "cg/system.slice/falra.service";
        f.mkdirs(own);
        f.write(&format!("{own}/cgroup.controllers"), "cpu io memory pids\n");
        f.write(&format!("{own}/cgroup.subtree_control"), "\n");
        let me = std::process::id();
        f.write(&format!("{own}/cgroup.procs"), &format!("{me}\n"));
        let h = detect(&f.path("proc"), &HostFs).unwrap();
        assert_eq!(
            h,
            Hierarchy::V2 {
                base: f.path(&format!("{own}/falra"))
            }
        );
        assert_eq!(
            f.read(&format!("{own}/daemon/cgroup.procs")),
            me.to_string()
        );
        assert_eq!(
            f.read(&format!("{own}/cgroup.subtree_control")),
            "+memory +pids +cpu"
        );
        // Other processes in it (a login shell's cgroup): nothing moves.
        let f = Fixture::new(V2_MOUNTINFO, "0::/system.slice/falra.service\n");
        f.mkdirs(own);
        f.write(&format!("{own}/cgroup.controllers"), "cpu memory pids\n");
        f.write(&format!("{own}/cgroup.subtree_control"), "\n");
        f.write(&format!("{own}/cgroup.procs"), &format!("1\n{me}\n"));
        detect(&f.path("proc"), &HostFs).unwrap();
        assert!(!f.path(&format!("{own}/daemon")).exists());
        assert_eq!(f.read(&format!("{own}/cgroup.subtree_control")), "\n");
        // Enabled already: nothing moves.
        let f = Fixture::new(V2_MOUNTINFO, "0::/system.slice/falra.service\n");
        f.mkdirs(own);
        f.write(&format!("{own}/cgroup.controllers"), "cpu memory pids\n");
        f.write(
            &format!("{own}/cgroup.subtree_control"),
            "cpu memory pids\n",
        );
        detect(&f.path("proc"), &HostFs).unwrap();
        assert!(!f.path(&format!("{own}/daemon")).exists());
    }

    #[test]
    fn v2_call_cgroups_get_limits_usage_and_removal() {
        let f = Fixture::new(V2_MOUNTINFO, "0::/\n");
        f.mkdirs("cg");
        f.write("cg/cgroup.controllers", "cpu memory pids\n");
        let h = detect(&f.path("proc"), &HostFs).unwrap();
        let cg = h.create_call(&HostFs, "t200000", "c_1", LIMITS).unwrap();
        let call = "cg/falra/t200000/c_1";
        assert_eq!(f.read(&format!("{call}/memory.max")), "134217728");
        assert_eq!(f.read(&format!("{call}/memory.swap.max")), "0");
        assert_eq!(f.read(&format!("{call}/pids.max")), "32");
        assert_eq!(f.read(&format!("{call}/cpu.max")), "50000 100000");
        assert_eq!(
            f.read("cg/falra/cgroup.subtree_control"),
            "+memory +pids +cpu"
        );
        assert_eq!(
            f.read("cg/falra/t200000/cgroup.subtree_control"),
            "+memory +pids +cpu"
        );
        assert_eq!(
            cg.procs_files(),
            vec![f.path(&format!("{call}/cgroup.procs"))]
        );

        f.write(
            &format!("{call}/cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
        );
        f.write(&format!("{call}/memory.peak"), "9000000\n");
        f.write(
            &format!("{call}/memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        );
        assert_eq!(
            cg.usage(&HostFs),
            CgroupUsage {
                cpu_ns: Some(1_500_000),
                peak_memory_bytes: Some(9_000_000),
                oom_kills: 1
            }
        );
        // The kernel removes control files with the directory; the fixture must do it by hand.
        for file in std::fs::read_dir(f.path(call)).unwrap() {
            std::fs::remove_file(file.unwrap().path()).unwrap();
        }
        cg.remove(&HostFs).unwrap();
        assert!(!f.path(call).exists());
        assert!(
            f.path("cg/falra/t200000").exists(),
            "the tenant's cgroup stays"
        );
    }

    #[test]
    fn v2_without_controllers_falls_back_to_v1() {
        let mountinfo = "\
30 22 0:26 / @/cg/unified rw - cgroup2 cgroup2 rw
31 22 0:27 / @/cg/memory rw - cgroup cgroup rw,memory
32 22 0:28 / @/cg/pids rw - cgroup cgroup rw,pids
33 22 0:29 / @/cg/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
";
        let membership = "5:pids:/\n4:memory:/job/42\n3:cpu,cpuacct:/\n0::/\n";
        let f = Fixture::new(mountinfo, membership);
        f.mkdirs("cg/unified");
        f.write("cg/unified/cgroup.controllers", "");
        f.mkdirs("cg/memory/job/42");
        f.mkdirs("cg/pids");
        f.mkdirs("cg/cpu,cpuacct");
        let h = detect(&f.path("proc"), &HostFs).unwrap();
        assert_eq!(
            h,
            Hierarchy::V1 {
                memory: f.path("cg/memory/job/42/falra"),
                pids: f.path("cg/pids/falra"),
                cpu: f.path("cg/cpu,cpuacct/falra"),
                cpuacct: Some(f.path("cg/cpu,cpuacct/falra")),
            }
        );
    }

    #[test]
    fn v1_call_cgroups_get_limits_usage_and_removal() {
        let mountinfo = "\
31 22 0:27 / @/cg/memory rw - cgroup cgroup rw,memory
32 22 0:28 / @/cg/pids rw - cgroup cgroup rw,pids
33 22 0:29 / @/cg/cpu rw - cgroup cgroup rw,cpu
34 22 0:30 / @/cg/cpuacct rw - cgroup cgroup rw,cpuacct
";
        let membership = "5:pids:/\n4:memory:/\n3:cpu:/\n2:cpuacct:/\n";
        let f = Fixture::new(mountinfo, membership);
        for c in ["memory", "pids", "cpu", "cpuacct"] {
            f.mkdirs(&format!("cg/{c}"));
        }
        let h = detect(&f.path("proc"), &HostFs).unwrap();
        // Swap accounting present: memory + swap is capped too.
        f.mkdirs("cg/memory/falra/t7/c_2");
        f.write("cg/memory/falra/t7/c_2/memory.memsw.limit_in_bytes", "max");
        let cg = h.create_call(&HostFs, "t7", "c_2", LIMITS).unwrap();
        assert_eq!(
            f.read("cg/memory/falra/t7/c_2/memory.limit_in_bytes"),
            "134217728"
        );
        assert_eq!(
            f.read("cg/memory/falra/t7/c_2/memory.memsw.limit_in_bytes"),
            "134217728"
        );
        assert_eq!(
            f.read("cg/memory/falra/t7/c_2/memory.kmem.tcp.limit_in_bytes"),
            "134217728",
            "socket buffers are capped with the memory"
        );
        assert_eq!(f.read("cg/pids/falra/t7/c_2/pids.max"), "32");
        assert_eq!(f.read("cg/cpu/falra/t7/c_2/cpu.cfs_quota_us"), "50000");
        assert_eq!(f.read("cg/cpu/falra/t7/c_2/cpu.cfs_period_us"), "100000");
        assert_eq!(
            cg.procs_files().len(),
            4,
            "a separate cpuacct hierarchy is joined, so CPU is metered however the call ends"
        );
        assert!(f.path("cg/cpuacct/falra/t7/c_2").is_dir());

        f.write(
            "cg/memory/falra/t7/c_2/memory.max_usage_in_bytes",
            "7000000\n",
        );
        f.write(
            "cg/memory/falra/t7/c_2/memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        f.write("cg/cpuacct/falra/t7/c_2/cpuacct.usage", "1500000000\n");
        assert_eq!(
            cg.usage(&HostFs),
            CgroupUsage {
                cpu_ns: Some(1_500_000_000),
                peak_memory_bytes: Some(7_000_000),
                oom_kills: 2
            }
        );
        // A reused cgroup counts the next call from zero.
        cg.reset_peak(&HostFs).unwrap();
        assert_eq!(f.read("cg/cpuacct/falra/t7/c_2/cpuacct.usage"), "0");
        assert_eq!(
            f.read("cg/memory/falra/t7/c_2/memory.max_usage_in_bytes"),
            "0"
        );
    }

    #[test]
    fn favordynmods_is_left_alone_where_set_or_without_cgroup2() {
        let set = "30 22 0:26 / @/cg rw - cgroup2 cgroup2 rw,nsdelegate,favordynmods\n";
        let f = Fixture::new(set, "0::/\n");
        assert_eq!(
            favor_dynamic_modifications(&f.path("proc"), &HostFs).unwrap(),
            None
        );
        let f = Fixture::new(
            "31 22 0:27 / @/cg/memory rw - cgroup cgroup rw,memory\n",
            "4:memory:/\n",
        );
        assert_eq!(
            favor_dynamic_modifications(&f.path("proc"), &HostFs).unwrap(),
            None
        );
    }

    #[test]
    fn sweep_removes_only_stale_empty_call_cgroups() {
        let f = Fixture::new(V2_MOUNTINFO, "0::/\n");
        f.mkdirs("cg");
        f.write("cg/cgroup.controllers", "cpu memory pids\n");
        let h = detect(&f.path("proc"), &HostFs).unwrap();
        f.mkdirs("cg/falra/t1/c111-0");
        f.mkdirs("cg/falra/t1/c222-0");
        f.mkdirs("cg/falra/t2/c111-5");
        f.write("cg/falra/t2/c111-5/cgroup.procs", "42\n"); // not empty: rmdir fails
        let removed = h.sweep(&HostFs, &|name| name.starts_with("c111-"));
        assert_eq!(removed, 1);
        assert!(!f.path("cg/falra/t1/c111-0").exists());
        assert!(f.path("cg/falra/t1/c222-0").exists());
        assert!(f.path("cg/falra/t2/c111-5").exists());
    }

    #[test]
    fn no_hierarchy_is_a_clear_error() {
        let f = Fixture::new("22 1 0:21 / /proc rw - proc proc rw\n", "0::/\n");
        let err = detect(&f.path("proc"), &HostFs).unwrap_err();
        assert!(matches!(err, CgroupError::Unavailable(_)), "{err}");
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_octal("/a\\040b"), "/a b");
        assert_eq!(unescape_octal("/plain"), "/plain");
    }

    #[test]
    fn members_are_placed_in_every_hierarchy_and_a_v2_cgroup_is_killed_at_once() {
        let root = tempfile::tempdir().unwrap();
        let call = |h: Hierarchy| CallCgroup {
            hierarchy: h,
            relative: PathBuf::from("t7/c1"),
        };
        let v2 = call(Hierarchy::V2 {
            base: root.path().join("v2"),
        });
        let v1 = call(Hierarchy::V1 {
            memory: root.path().join("memory"),
            pids: root.path().join("pids"),
            cpu: root.path().join("cpu"),
            cpuacct: None,
        });
        for dir in ["v2", "memory", "pids", "cpu"] {
            std::fs::create_dir_all(root.path().join(dir).join("t7/c1")).unwrap();
        }
        std::fs::write(root.path().join("v2/t7/c1/cgroup.kill"), "0").unwrap();
        let fs: std::sync::Arc<dyn CgroupFs> = std::sync::Arc::new(HostFs);
        let v2_members = v2.members(fs.clone());
        v2_members.place(4242).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.path().join("v2/t7/c1/cgroup.procs")).unwrap(),
            "4242"
        );
        let v1_members = v1.members(fs);
        v1_members.place(4243).unwrap();
        for dir in ["memory", "pids", "cpu"] {
            let procs = root.path().join(dir).join("t7/c1/cgroup.procs");
            assert_eq!(std::fs::read_to_string(&procs).unwrap(), "4243");
            std::fs::write(&procs, "\n").unwrap();
        }
        std::fs::write(root.path().join("v2/t7/c1/cgroup.procs"), "").unwrap();
        let started = std::time::Instant::now();
        v2_members.kill_all();
        v1_members.kill_all();
        assert_eq!(
            std::fs::read_to_string(root.path().join("v2/t7/c1/cgroup.kill")).unwrap(),
            "1"
        );
        assert!(!root.path().join("memory/t7/c1/cgroup.kill").exists());
        assert!(
            started.elapsed() < std::time::Duration::from_millis(100),
            "nothing to wait for"
        );
    }
}
