//! The child's setup between `clone` and `exec`, as an ordered list of steps.
//!
//! Order is the contract, and it is the order of [`plan`]:
//!
//! 1. join the call's cgroups (so everything after is accounted and limited);
//! 2. a new session (the child leads its own process group);
//! 3. mounts, all in the child's own mount namespace: make every mount private, build a new root
//!    on a small tmpfs, bind the system and Python directories read-only, bind the tenant's
//!    code read-only, give it a capped `/tmp` and `/dev/shm`, a minimal `/dev` and a fresh
//!    `/proc`;
//! 4. `pivot_root` into the new root and detach the old one, then make the root read-only;
//! 5. bring up loopback (own network namespace) and set the hostname;
//! 6. working directory, resource limits, close-on-exec for every inherited descriptor;
//! 7. drop privileges: no supplementary groups, the per-tenant gid and uid (which clears every
//!    capability);
//! 8. parent-death signal (after the uid change, which would clear it), `no_new_privs`;
//! 9. seccomp, last, so that every step before it may still use what it denies.
//!
//! The plan is plain data so it can be reviewed and unit-tested; [`apply`] runs it against a
//! [`ChildSys`], whose real implementation ([`HostSys`]) makes the syscalls and whose test
//! implementation records them. Everything here runs in the child of a multi-threaded parent,
//! between `clone` and `exec`: only async-signal-safe calls, no allocation, no locks.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::seccomp::SockFilter;

/// One setup action in the child, in the order [`plan`] lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write `0` into a `cgroup.procs` file: move this process into that cgroup.
    JoinCgroup(CString),
    NewSession,
    /// Stop mount events from propagating between the host and the child.
    MountPrivate,
    Mount {
        source: CString,
        target: CString,
        fstype: CString,
        flags: libc::c_ulong,
        data: CString,
    },
    /// Bind `source` at `target`, then remount it read-only, nosuid, nodev.
    BindReadOnly {
        source: CString,
        target: CString,
    },
    /// Show the directory `source` at `target` read-only, nosuid, nodev, through an overlay
    /// whose lower layers are named by descriptor (`/proc/self/fd/N`) with the empty directory
    /// `empty` under it: unlike a bind, whose `/proc/self/mountinfo` line carries the source's
    /// host path, the overlay's line names only descriptor numbers. Where the kernel or the
    /// source's filesystem has no overlay (or `source` is a file), a read-only bind instead.
    ReadOnlyView {
        source: CString,
        target: CString,
        empty: CString,
    },
    /// Bind `source` at `target` writable, nosuid, nodev (a build's output directory).
    BindWritable {
        source: CString,
        target: CString,
    },
    /// Bind a device node (writable, devices allowed).
    BindDevice {
        source: CString,
        target: CString,
    },
    Mkdir(CString, libc::mode_t),
    /// Create an empty file (a mount point for a file bind) or one with contents.
    WriteFile(CString, Vec<u8>),
    Symlink {
        target: CString,
        link: CString,
    },
    /// Make `new_root` the root and detach the old one.
    PivotRoot(CString),
    RemountRootReadOnly,
    LoopbackUp,
    /// Enter a prepared network namespace (its loopback already up) by descriptor.
    JoinNetns(std::os::fd::RawFd),
    /// Enter a prepared mount namespace (see [`crate::mountns`]) by descriptor and take a
    /// private copy of it: the call's root, already built, read-only and pivoted into.
    CopyMountTemplate(std::os::fd::RawFd),
    SetHostname(CString),
    Chdir(CString),
    Rlimit(Resource, u64),
    /// Mark every descriptor above stderr close-on-exec, whoever opened it.
    CloseInheritedFds,
    /// No supplementary groups, then this gid and uid; all capabilities go with root.
    DropIdentity {
        uid: u32,
        gid: u32,
    },
    /// A new cgroup namespace, rooted at the cgroups just joined: the call's `/proc/self/cgroup`
    /// then reads `/`, naming neither the daemon's cgroup nor the call's.
    NewCgroupNamespace,
    /// Not dumpable: no core files, and nothing in the call may read init's memory through
    /// `/proc` (init shares the daemon's address space), whatever `fs.suid_dumpable` says.
    NotDumpable,
    /// SIGKILL when the daemon dies, so no child outlives its supervisor.
    ParentDeathSignal,
    NoNewPrivs,
    /// Restrict file access with Landlock, where the kernel has it (a no-op otherwise).
    Landlock(Vec<crate::landlock::Rule>),
    Seccomp(&'static [SockFilter]),
}

impl Step {
    /// The step's name, for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Step::JoinCgroup(_) => "join cgroup",
            Step::NewSession => "new session",
            Step::NewCgroupNamespace => "new cgroup namespace",
            Step::MountPrivate => "make mounts private",
            Step::Mount { .. } => "mount",
            Step::BindReadOnly { .. } => "bind read-only",
            Step::ReadOnlyView { .. } => "read-only view",
            Step::BindWritable { .. } => "bind writable",
            Step::BindDevice { .. } => "bind device",
            Step::Mkdir(..) => "mkdir",
            Step::WriteFile(..) => "write file",
            Step::Symlink { .. } => "symlink",
            Step::PivotRoot(_) => "pivot_root",
            Step::RemountRootReadOnly => "remount root read-only",
            Step::LoopbackUp => "loopback up",
            Step::JoinNetns(_) => "join network namespace",
            Step::CopyMountTemplate(_) => "copy mount template",
            Step::SetHostname(_) => "set hostname",
            Step::Chdir(_) => "chdir",
            Step::Rlimit(..) => "rlimit",
            Step::CloseInheritedFds => "close inherited descriptors",
            Step::DropIdentity { .. } => "drop identity",
            Step::NotDumpable => "not dumpable",
            Step::ParentDeathSignal => "parent-death signal",
            Step::NoNewPrivs => "no_new_privs",
            Step::Landlock(_) => "landlock",
            Step::Seccomp(_) => "seccomp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Core,
    OpenFiles,
    FileSize,
    Stack,
}

/// Resource limits applied in every child, isolated or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetupLimits {
    pub open_files: u64,
    pub file_size_bytes: u64,
    pub stack_bytes: u64,
}

impl Default for SetupLimits {
    fn default() -> Self {
        SetupLimits {
            open_files: 256,
            file_size_bytes: 64 << 20,
            stack_bytes: 8 << 20,
        }
    }
}

/// A bind of a host path into the child's root: read-only unless `writable` (only a build's
/// output directory is).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Bind {
    pub source: PathBuf,
    /// Absolute path inside the child.
    pub target: PathBuf,
    pub writable: bool,
}

/// What the child's filesystem, network and identity are made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolation {
    /// An empty host directory: the new root's tmpfs is mounted on it, in the child's mount
    /// namespace only, so every call can use the same one.
    pub root_mount_point: PathBuf,
    /// System entries: directories bound read-only, or symlinks recreated as they are.
    pub system: Vec<SystemEntry>,
    /// Further binds (the tenant's code and virtualenv read-only; a build's output writable).
    pub binds: Vec<Bind>,
    pub tmp_bytes: u64,
    /// Keep the host's network (no network namespace of its own).
    pub network: NetworkMode,
    /// A prepared mount namespace holding this child's root but for `/tmp`, `/dev/shm` and
    /// `/proc` ([`crate::mountns`]): the child copies it instead of building its root, then
    /// mounts those three fresh. `None`: the child builds its whole root itself.
    pub mount_template: Option<std::os::fd::RawFd>,
    pub uid: u32,
    pub gid: u32,
    pub hostname: String,
    /// `cgroup.procs` files to join, one per hierarchy.
    pub cgroup_procs: Vec<PathBuf>,
}

/// Which network the child gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkMode {
    /// The host's network (no network namespace of its own).
    Host,
    /// A new network namespace of its own, with only loopback.
    Fresh,
    /// A prepared network namespace with only loopback, entered by this descriptor (see
    /// [`crate::netns`]); creating one per call costs more than the rest of the setup.
    Join(std::os::fd::RawFd),
}

/// A top-level system path as found on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemEntry {
    Dir(PathBuf),
    File(PathBuf),
    Symlink { path: PathBuf, target: PathBuf },
}

/// The system paths a Python child needs, as they exist on this host: `/usr` and friends
/// (bound read-only, or recreated as the symlinks merged-`/usr` systems make them), and the few
/// files of `/etc` that TLS, time zones and name lookup read.
pub fn host_system_entries() -> Vec<SystemEntry> {
    const DIRS: &[&str] = &[
        "/usr",
        "/lib",
        "/lib64",
        "/lib32",
        "/bin",
        "/sbin",
        "/etc/ssl",
        "/etc/ca-certificates",
    ];
    const FILES: &[&str] = &[
        "/etc/localtime",
        "/etc/hosts",
        "/etc/nsswitch.conf",
        "/etc/resolv.conf",
    ];
    let mut out = Vec::new();
    for p in DIRS.iter().chain(FILES) {
        let path = Path::new(p);
        let Ok(meta) = path.symlink_metadata() else {
            continue;
        };
        if meta.file_type().is_symlink() {
            let is_top = path.parent() == Some(Path::new("/"));
            match (
                is_top,
                std::fs::read_link(path),
                std::fs::canonicalize(path),
            ) {
                (true, Ok(target), _) => out.push(SystemEntry::Symlink {
                    path: path.to_path_buf(),
                    target,
                }),
                // Below /etc, bind what the link resolves to (mount follows the source link).
                (false, _, Ok(real)) if real.is_file() => {
                    out.push(SystemEntry::File(path.to_path_buf()))
                }
                (false, _, Ok(real)) if real.is_dir() => {
                    out.push(SystemEntry::Dir(path.to_path_buf()))
                }
                _ => {}
            }
        } else if meta.is_dir() {
            out.push(SystemEntry::Dir(path.to_path_buf()));
        } else if meta.is_file() {
            out.push(SystemEntry::File(path.to_path_buf()));
        }
    }
    out
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("paths never contain NUL")
}

fn cs(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

fn under(root: &Path, inside: &Path) -> PathBuf {
    root.join(inside.strip_prefix("/").unwrap_or(inside))
}

/// The ordered setup for one child. Without `isolation` the child is a plain process in its own
/// session (used for measurements and by tests of the supervisor).
pub fn plan(
    limits: &SetupLimits,
    isolation: Option<&Isolation>,
    cwd: &Path,
    seccomp: Option<&'static [Vec<SockFilter>]>,
) -> Vec<Step> {
    let mut steps = Vec::new();
    if let Some(iso) = isolation {
        steps.extend(iso.cgroup_procs.iter().map(|p| Step::JoinCgroup(cstr(p))));
        steps.push(Step::NewCgroupNamespace);
    }
    steps.push(Step::NewSession);
    if let Some(iso) = isolation {
        match iso.mount_template {
            Some(fd) => {
                steps.push(Step::CopyMountTemplate(fd));
                call_mounts(iso, Path::new("/"), &mut steps);
            }
            None => {
                root_steps(iso, &mut steps);
                call_mounts(iso, &iso.root_mount_point, &mut steps);
                steps.push(Step::PivotRoot(cstr(&iso.root_mount_point)));
                steps.push(Step::RemountRootReadOnly);
            }
        }
        match iso.network {
            NetworkMode::Host => {}
            NetworkMode::Fresh => steps.push(Step::LoopbackUp),
            NetworkMode::Join(fd) => steps.push(Step::JoinNetns(fd)),
        }
        steps.push(Step::SetHostname(cs(&iso.hostname)));
    }
    steps.push(Step::Chdir(cstr(cwd)));
    steps.extend([
        Step::Rlimit(Resource::Core, 0),
        Step::Rlimit(Resource::OpenFiles, limits.open_files),
        Step::Rlimit(Resource::FileSize, limits.file_size_bytes),
        Step::Rlimit(Resource::Stack, limits.stack_bytes),
        Step::CloseInheritedFds,
    ]);
    if let Some(iso) = isolation {
        steps.push(Step::DropIdentity {
            uid: iso.uid,
            gid: iso.gid,
        });
        steps.push(Step::NotDumpable);
    }
    steps.push(Step::ParentDeathSignal);
    steps.push(Step::NoNewPrivs);
    if let Some(iso) = isolation {
        let writable = iso
            .binds
            .iter()
            .filter(|b| b.writable)
            .map(|b| b.target.as_path());
        steps.push(Step::Landlock(crate::landlock::call_rules(writable)));
    }
    // The policy's filters, in order: the kernel runs them all on every later system call.
    for filter in seccomp.into_iter().flatten() {
        steps.push(Step::Seccomp(filter));
    }
    steps
}

/// The steps that build a mount template for `iso` ([`crate::mountns`]), in a fresh mount
/// namespace: the whole root of [`plan`] but for the per-call `/tmp`, `/dev/shm` and `/proc`.
pub fn template_plan(iso: &Isolation) -> Vec<Step> {
    let mut steps = Vec::new();
    root_steps(iso, &mut steps);
    steps.push(Step::PivotRoot(cstr(&iso.root_mount_point)));
    steps.push(Step::RemountRootReadOnly);
    steps
}

/// The mounts every call gets fresh, with the new root at `root`: a capped `/tmp` and
/// `/dev/shm` of its own, and a `/proc` of its own PID namespace.
fn call_mounts(iso: &Isolation, root: &Path, steps: &mut Vec<Step>) {
    let at = |inside: &str| cstr(&under(root, Path::new(inside)));
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    steps.push(tmpfs(at("tmp"), iso.tmp_bytes, "1777", nosuid_nodev));
    steps.push(tmpfs(
        at("dev/shm"),
        iso.tmp_bytes,
        "1777",
        nosuid_nodev | libc::MS_NOEXEC,
    ));
    // hidepid: the call's processes (its uid) see each other, not init (root), whose
    // command line would be the daemon's (init shares the daemon's address space).
    steps.push(Step::Mount {
        source: cs("proc"),
        target: at("proc"),
        fstype: cs("proc"),
        flags: nosuid_nodev | libc::MS_NOEXEC,
        data: cs("hidepid=2"),
    });
}

/// A tmpfs of `size` bytes at `target`, its root directory of `mode`.
fn tmpfs(target: CString, size: u64, mode: &str, flags: libc::c_ulong) -> Step {
    Step::Mount {
        source: cs("tmpfs"),
        target,
        fstype: cs("tmpfs"),
        flags,
        data: cs(&format!("size={size},mode={mode}")),
    }
}

/// Everything of the new root but what [`call_mounts`] adds, mounted at `root_mount_point`.
fn root_steps(iso: &Isolation, steps: &mut Vec<Step>) {
    let root = &iso.root_mount_point;
    let at = |inside: &str| cstr(&under(root, Path::new(inside)));
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    steps.push(Step::MountPrivate);
    steps.push(Step::Mount {
        source: cs("falra-root"),
        target: cstr(root),
        fstype: cs("tmpfs"),
        flags: nosuid_nodev,
        data: cs("size=1m,mode=0755"),
    });
    for dir in ["etc", "proc", "dev", "tmp"] {
        steps.push(Step::Mkdir(at(dir), 0o755));
    }
    for entry in &iso.system {
        match entry {
            SystemEntry::Dir(p) => {
                mkdir_all(root, p, steps);
                steps.push(Step::BindReadOnly {
                    source: cstr(p),
                    target: cstr(&under(root, p)),
                });
            }
            SystemEntry::File(p) => {
                if let Some(parent) = p.parent() {
                    mkdir_all(root, parent, steps);
                }
                steps.push(Step::WriteFile(cstr(&under(root, p)), Vec::new()));
                steps.push(Step::BindReadOnly {
                    source: cstr(p),
                    target: cstr(&under(root, p)),
                });
            }
            SystemEntry::Symlink { path, target } => steps.push(Step::Symlink {
                target: cstr(target),
                link: cstr(&under(root, path)),
            }),
        }
    }
    let passwd = format!(
        "root:x:0:0::/:/usr/sbin/nologin\nfalra:x:{}:{}::/tmp:/usr/sbin/nologin\n",
        iso.uid, iso.gid
    );
    let group = format!("root:x:0:\nfalra:x:{}:\n", iso.gid);
    steps.push(Step::WriteFile(at("etc/passwd"), passwd.into_bytes()));
    steps.push(Step::WriteFile(at("etc/group"), group.into_bytes()));
    steps.push(Step::WriteFile(
        at("etc/hostname"),
        format!("{}\n", iso.hostname).into_bytes(),
    ));
    for bind in &iso.binds {
        mkdir_all(root, &bind.target, steps);
        let (source, target) = (cstr(&bind.source), cstr(&under(root, &bind.target)));
        steps.push(if bind.writable {
            Step::BindWritable { source, target }
        } else {
            // The new root's `proc` is still an empty directory here, and stays one below the
            // `/proc` a call mounts on it: the overlay keeps its own reference to the layer.
            Step::ReadOnlyView {
                source,
                target,
                empty: at("proc"),
            }
        });
    }
    steps.push(tmpfs(
        at("dev"),
        64 << 10,
        "0755",
        libc::MS_NOSUID | libc::MS_NOEXEC,
    ));
    for node in ["null", "zero", "full", "random", "urandom"] {
        steps.push(Step::WriteFile(at(&format!("dev/{node}")), Vec::new()));
        steps.push(Step::BindDevice {
            source: cs(&format!("/dev/{node}")),
            target: at(&format!("dev/{node}")),
        });
    }
    steps.push(Step::Mkdir(at("dev/shm"), 0o755));
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        steps.push(Step::Symlink {
            target: cs(target),
            link: at(&format!("dev/{name}")),
        });
    }
}

/// Mkdir steps for every component of `inside` below the new root (the tmpfs starts empty).
fn mkdir_all(root: &Path, inside: &Path, steps: &mut Vec<Step>) {
    let mut path = root.to_path_buf();
    for part in inside.strip_prefix("/").unwrap_or(inside).components() {
        path.push(part);
        let step = Step::Mkdir(cstr(&path), 0o755);
        if !steps.contains(&step) {
            steps.push(step);
        }
    }
}

/// The syscalls the setup makes, behind a trait so tests can record them.
pub trait ChildSys {
    fn write_file(&mut self, path: &CStr, data: &[u8]) -> io::Result<()>;
    fn setsid(&mut self) -> io::Result<()>;
    fn unshare_cgroup_namespace(&mut self) -> io::Result<()>;
    fn mount(
        &mut self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> io::Result<()>;
    fn mkdir(&mut self, path: &CStr, mode: libc::mode_t) -> io::Result<()>;
    /// Open a directory as an `O_PATH` descriptor (close-on-exec).
    fn open_dir(&mut self, path: &CStr) -> io::Result<std::os::fd::RawFd>;
    fn close(&mut self, fd: std::os::fd::RawFd);
    fn symlink(&mut self, target: &CStr, link: &CStr) -> io::Result<()>;
    fn pivot_root(&mut self, new_root: &CStr) -> io::Result<()>;
    fn loopback_up(&mut self) -> io::Result<()>;
    fn setns_net(&mut self, fd: std::os::fd::RawFd) -> io::Result<()>;
    /// Enter the mount namespace `fd` refers to, then unshare a private copy of it.
    fn copy_mount_namespace(&mut self, fd: std::os::fd::RawFd) -> io::Result<()>;
    fn sethostname(&mut self, name: &CStr) -> io::Result<()>;
    fn chdir(&mut self, path: &CStr) -> io::Result<()>;
    fn setrlimit(&mut self, resource: Resource, value: u64) -> io::Result<()>;
    fn cloexec_from(&mut self, first_fd: u32) -> io::Result<()>;
    fn drop_identity(&mut self, uid: u32, gid: u32) -> io::Result<()>;
    fn not_dumpable(&mut self) -> io::Result<()>;
    fn set_parent_death_signal(&mut self) -> io::Result<()>;
    fn no_new_privs(&mut self) -> io::Result<()>;
    fn landlock(&mut self, rules: &[crate::landlock::Rule]) -> io::Result<()>;
    fn seccomp(&mut self, filter: &[SockFilter]) -> io::Result<()>;
}

/// Runs the plan in order, stopping at the first failure; returns the failing step's index.
pub fn apply(steps: &[Step], sys: &mut impl ChildSys) -> Result<(), (usize, io::Error)> {
    let bind_flags = libc::MS_BIND | libc::MS_REC;
    for (i, step) in steps.iter().enumerate() {
        let r = match step {
            Step::JoinCgroup(procs) => sys.write_file(procs, b"0"),
            Step::NewSession => sys.setsid(),
            Step::NewCgroupNamespace => sys.unshare_cgroup_namespace(),
            Step::MountPrivate => {
                sys.mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)
            }
            Step::Mount {
                source,
                target,
                fstype,
                flags,
                data,
            } => sys.mount(Some(source), target, Some(fstype), *flags, Some(data)),
            Step::BindReadOnly { source, target } => bind_read_only(sys, source, target),
            Step::ReadOnlyView {
                source,
                target,
                empty,
            } => match read_only_view(sys, source, target, empty) {
                Err(e) if VIEW_FALLBACK.contains(&e.raw_os_error().unwrap_or(0)) => {
                    bind_read_only(sys, source, target)
                }
                other => other,
            },
            Step::BindWritable { source, target } => sys
                .mount(Some(source), target, None, bind_flags, None)
                .and_then(|()| {
                    let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
                    sys.mount(None, target, None, flags, None)
                }),
            Step::BindDevice { source, target } => {
                sys.mount(Some(source), target, None, libc::MS_BIND, None)
            }
            Step::Mkdir(path, mode) => sys.mkdir(path, *mode),
            Step::WriteFile(path, data) => sys.write_file(path, data),
            Step::Symlink { target, link } => sys.symlink(target, link),
            Step::PivotRoot(root) => sys.pivot_root(root),
            Step::RemountRootReadOnly => sys.mount(
                None,
                c"/",
                None,
                libc::MS_REMOUNT
                    | libc::MS_BIND
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV,
                None,
            ),
            Step::LoopbackUp => sys.loopback_up(),
            Step::JoinNetns(fd) => sys.setns_net(*fd),
            Step::CopyMountTemplate(fd) => sys.copy_mount_namespace(*fd),
            Step::SetHostname(name) => sys.sethostname(name),
            Step::Chdir(path) => sys.chdir(path),
            Step::Rlimit(resource, value) => sys.setrlimit(*resource, *value),
            Step::CloseInheritedFds => sys.cloexec_from(3),
            Step::DropIdentity { uid, gid } => sys.drop_identity(*uid, *gid),
            Step::NotDumpable => sys.not_dumpable(),
            Step::ParentDeathSignal => sys.set_parent_death_signal(),
            Step::NoNewPrivs => sys.no_new_privs(),
            Step::Landlock(rules) => sys.landlock(rules),
            Step::Seccomp(filter) => sys.seccomp(filter),
        };
        r.map_err(|e| (i, e))?;
    }
    Ok(())
}

fn bind_read_only(sys: &mut impl ChildSys, source: &CStr, target: &CStr) -> io::Result<()> {
    sys.mount(
        Some(source),
        target,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )?;
    let ro = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    sys.mount(None, target, None, ro, None)
}

/// Errors of [`read_only_view`] that mean "no overlay here", not "something is wrong": no
/// overlayfs in the kernel, a source filesystem overlayfs cannot stack on, a file.
const VIEW_FALLBACK: [i32; 3] = [libc::ENODEV, libc::EINVAL, libc::ENOTDIR];

/// The overlay of [`Step::ReadOnlyView`]. Between `clone` and `exec` nothing may allocate, so
/// the option string is written into a buffer on the stack.
fn read_only_view(
    sys: &mut impl ChildSys,
    source: &CStr,
    target: &CStr,
    empty: &CStr,
) -> io::Result<()> {
    let lower = sys.open_dir(source)?;
    let result = sys.open_dir(empty).and_then(|below| {
        let mut buf = [0u8; 64];
        let mut w = StackWriter {
            buf: &mut buf,
            len: 0,
        };
        w.push(b"lowerdir=/proc/self/fd/");
        w.push_number(lower);
        w.push(b":/proc/self/fd/");
        w.push_number(below);
        let data = w.as_cstr();
        let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
        let r = sys.mount(Some(c"falra"), target, Some(c"overlay"), flags, Some(data));
        sys.close(below);
        r
    });
    sys.close(lower);
    result
}

/// A NUL-terminated string built in a fixed buffer (the last byte always stays NUL).
struct StackWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl StackWriter<'_> {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.len + 1 < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn push_number(&mut self, n: i32) {
        let mut digits = [0u8; 10];
        let mut i = digits.len();
        let mut n = n.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    fn as_cstr(&self) -> &CStr {
        CStr::from_bytes_until_nul(&self.buf[..=self.len]).expect("the buffer ends in NUL")
    }
}

/// The real syscalls. Only async-signal-safe calls, as required between `clone` and `exec`.
#[derive(Debug, Default)]
pub struct HostSys;

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn ptr(s: Option<&CStr>) -> *const libc::c_char {
    s.map_or(std::ptr::null(), CStr::as_ptr)
}

#[allow(unsafe_code)]
impl ChildSys for HostSys {
    fn write_file(&mut self, path: &CStr, data: &[u8]) -> io::Result<()> {
        // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                0o644,
            )
        };
        if fd == -1 {
            return Err(io::Error::last_os_error());
        }
        let mut rest = data;
        let mut result = Ok(());
        while !rest.is_empty() {
            // SAFETY: `rest` is a live slice; write reads at most `rest.len()` bytes from it.
            let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
            if n < 0 {
                result = Err(io::Error::last_os_error());
                break;
            }
            rest = &rest[n as usize..];
        }
        // SAFETY: `fd` was opened above and is closed exactly once.
        unsafe { libc::close(fd) };
        result
    }

    fn setsid(&mut self) -> io::Result<()> {
        // SAFETY: setsid takes no arguments and only changes this process's session.
        check(unsafe { libc::setsid() })
    }

    fn unshare_cgroup_namespace(&mut self) -> io::Result<()> {
        // SAFETY: unshare takes a flag word and changes only this process's namespaces.
        check(unsafe { libc::unshare(libc::CLONE_NEWCGROUP) })
    }

    fn mount(
        &mut self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> io::Result<()> {
        // SAFETY: every pointer is either null or a valid NUL-terminated string that outlives
        // the call; this process is alone in its own mount namespace.
        check(unsafe {
            libc::mount(
                ptr(source),
                target.as_ptr(),
                ptr(fstype),
                flags,
                ptr(data).cast(),
            )
        })
    }

    fn mkdir(&mut self, path: &CStr, mode: libc::mode_t) -> io::Result<()> {
        // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
        match check(unsafe { libc::mkdir(path.as_ptr(), mode) }) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    fn open_dir(&mut self, path: &CStr) -> io::Result<std::os::fd::RawFd> {
        // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }

    fn close(&mut self, fd: std::os::fd::RawFd) {
        // SAFETY: `fd` came from `open_dir` and is closed exactly once.
        unsafe { libc::close(fd) };
    }

    fn symlink(&mut self, target: &CStr, link: &CStr) -> io::Result<()> {
        // SAFETY: both are valid NUL-terminated strings for the duration of the call.
        check(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) })
    }

    fn pivot_root(&mut self, new_root: &CStr) -> io::Result<()> {
        // pivot_root(".", ".") stacks the old root under the new one; detaching "." then
        // removes the old root without needing a directory for it.
        // SAFETY: plain path arguments, valid for each call.
        check(unsafe { libc::chdir(new_root.as_ptr()) })?;
        // SAFETY: as above; pivot_root has no libc wrapper, the syscall takes two paths.
        let rc = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) };
        if rc == -1 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        check(unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) })?;
        // SAFETY: as above.
        check(unsafe { libc::chdir(c"/".as_ptr()) })
    }

    fn loopback_up(&mut self) -> io::Result<()> {
        // SAFETY: socket takes integers; the descriptor is closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd == -1 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: ifreq is plain data; all-zero is valid.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        // SAFETY: `req` is a valid ifreq naming "lo" for both ioctls, and lives across them.
        let result =
            check(unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) }).and_then(|()| {
                // SAFETY: reading and writing the flags member of the union the kernel just filled.
                unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
                // SAFETY: as above.
                check(unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) })
            });
        // SAFETY: `fd` was opened above and is closed exactly once.
        unsafe { libc::close(fd) };
        result
    }

    fn setns_net(&mut self, fd: std::os::fd::RawFd) -> io::Result<()> {
        // SAFETY: setns takes a descriptor and a flag by value.
        check(unsafe { libc::setns(fd, libc::CLONE_NEWNET) })
    }

    fn copy_mount_namespace(&mut self, fd: std::os::fd::RawFd) -> io::Result<()> {
        // SAFETY: setns takes a descriptor and a flag by value. Entering a mount namespace also
        // moves root and working directory to its root.
        check(unsafe { libc::setns(fd, libc::CLONE_NEWNS) })?;
        // SAFETY: a flag by value; the copy is this process's alone, so the template stays as
        // it was whatever the call mounts on its copy.
        check(unsafe { libc::unshare(libc::CLONE_NEWNS) })
    }

    fn sethostname(&mut self, name: &CStr) -> io::Result<()> {
        let bytes = name.to_bytes();
        // SAFETY: the pointer and length describe `name`'s bytes, valid for the call.
        check(unsafe { libc::sethostname(bytes.as_ptr().cast(), bytes.len()) })
    }

    fn chdir(&mut self, path: &CStr) -> io::Result<()> {
        // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
        check(unsafe { libc::chdir(path.as_ptr()) })
    }

    fn setrlimit(&mut self, resource: Resource, value: u64) -> io::Result<()> {
        let which = match resource {
            Resource::Core => libc::RLIMIT_CORE,
            Resource::OpenFiles => libc::RLIMIT_NOFILE,
            Resource::FileSize => libc::RLIMIT_FSIZE,
            Resource::Stack => libc::RLIMIT_STACK,
        };
        let lim = libc::rlimit {
            rlim_cur: value as libc::rlim_t,
            rlim_max: value as libc::rlim_t,
        };
        // SAFETY: `lim` is a valid, initialised rlimit on this stack frame for the whole call.
        check(unsafe { libc::setrlimit(which, &lim) })
    }

    fn cloexec_from(&mut self, first_fd: u32) -> io::Result<()> {
        const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
        // SAFETY: close_range with CLOEXEC only sets flags on descriptors this process owns;
        // it takes integers by value and touches no memory.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                first_fd as libc::c_uint,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            )
        };
        if rc == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn drop_identity(&mut self, uid: u32, gid: u32) -> io::Result<()> {
        // Raw syscalls, not libc's wrappers: glibc's setuid family signals every thread it
        // believes the process has and waits for them, and after clone the child has only one
        // thread while glibc's bookkeeping still lists the parent's. That wait never ends.
        let raw = |rc: libc::c_long| {
            if rc == -1 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: an empty group list needs no pointer; the id syscalls take integers by value
        // and change this (single-threaded) process's credentials only.
        raw(unsafe {
            libc::syscall(
                libc::SYS_setgroups,
                0 as libc::c_long,
                std::ptr::null::<libc::gid_t>(),
            )
        })?;
        // SAFETY: as above.
        raw(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) })?;
        // SAFETY: as above. Leaving uid 0 for a non-zero uid clears every capability.
        raw(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) })
    }

    fn not_dumpable(&mut self) -> io::Result<()> {
        // SAFETY: integer arguments only.
        check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0 as libc::c_ulong) })
    }

    fn set_parent_death_signal(&mut self) -> io::Result<()> {
        // SAFETY: PR_SET_PDEATHSIG takes a signal number by value; no memory is shared.
        check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) })
    }

    fn no_new_privs(&mut self) -> io::Result<()> {
        // SAFETY: integer arguments only.
        check(unsafe {
            libc::prctl(
                libc::PR_SET_NO_NEW_PRIVS,
                1 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        })
    }

    fn landlock(&mut self, rules: &[crate::landlock::Rule]) -> io::Result<()> {
        const CREATE_RULESET_VERSION: libc::c_ulong = 1;
        const RULE_PATH_BENEATH: libc::c_ulong = 1;
        #[repr(C, packed)]
        struct PathBeneath {
            allowed_access: u64,
            parent_fd: i32,
        }
        let raw = |rc: libc::c_long| {
            if rc < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(rc)
            }
        };
        // SAFETY: asking for the ABI version takes no attribute pointer.
        let abi = match raw(unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<u64>(),
                0usize,
                CREATE_RULESET_VERSION,
            )
        }) {
            Ok(abi) => abi as i32,
            // No Landlock in this kernel (or it is disabled): nothing to add.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
                ) =>
            {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        let handled: u64 = crate::landlock::handled(abi);
        // SAFETY: `handled` is the ruleset attribute's first field (handled_access_fs); the
        // kernel reads exactly the size given.
        let ruleset = raw(unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                &handled as *const u64,
                std::mem::size_of::<u64>(),
                0 as libc::c_ulong,
            )
        })? as libc::c_int;
        let result = (|| {
            for rule in rules {
                // SAFETY: a valid NUL-terminated path; O_PATH opens without reading.
                let fd = unsafe { libc::open(rule.path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
                if fd == -1 {
                    // A path this root does not have needs no rule.
                    continue;
                }
                let attr = PathBeneath {
                    allowed_access: crate::landlock::rights(rule.grant, abi),
                    parent_fd: fd,
                };
                // SAFETY: `attr` is a live packed struct of the layout the kernel expects.
                let added = raw(unsafe {
                    libc::syscall(
                        libc::SYS_landlock_add_rule,
                        ruleset,
                        RULE_PATH_BENEATH,
                        &attr as *const PathBeneath,
                        0 as libc::c_ulong,
                    )
                });
                // SAFETY: closing the descriptor opened above.
                unsafe { libc::close(fd) };
                added?;
            }
            // SAFETY: restricts this process from now on; no_new_privs is already set.
            raw(unsafe {
                libc::syscall(
                    libc::SYS_landlock_restrict_self,
                    ruleset,
                    0 as libc::c_ulong,
                )
            })
        })();
        // SAFETY: closing the ruleset descriptor created above.
        unsafe { libc::close(ruleset) };
        result.map(|_| ())
    }

    fn seccomp(&mut self, filter: &[SockFilter]) -> io::Result<()> {
        #[repr(C)]
        struct SockFprog {
            len: libc::c_ushort,
            filter: *const SockFilter,
        }
        let prog = SockFprog {
            len: filter.len() as libc::c_ushort,
            filter: filter.as_ptr(),
        };
        // SAFETY: `prog` points at `filter`, a slice of `struct sock_filter`-layout values that
        // outlives the call; the kernel copies the program. no_new_privs is already set.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                1 as libc::c_ulong, /* SECCOMP_SET_MODE_FILTER */
                0 as libc::c_ulong,
                &prog as *const SockFprog,
            )
        };
        if rc == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    /// Records every call; fails the first whose record starts with `.1`, with errno `.2`
    /// (EPERM when 0).
    struct Recorder(Vec<String>, Option<&'static str>, i32);

    impl Recorder {
        fn record(&mut self, call: String) -> io::Result<()> {
            let fail = self.1.is_some_and(|f| call.starts_with(f));
            self.0.push(call);
            if fail {
                self.1 = None;
                let errno = if self.2 == 0 { libc::EPERM } else { self.2 };
                Err(io::Error::from_raw_os_error(errno))
            } else {
                Ok(())
            }
        }
    }

    fn s(c: &CStr) -> String {
        c.to_string_lossy().into_owned()
    }

    impl ChildSys for Recorder {
        fn write_file(&mut self, path: &CStr, data: &[u8]) -> io::Result<()> {
            self.record(format!(
                "write {} {}",
                s(path),
                String::from_utf8_lossy(data).lines().next().unwrap_or("")
            ))
        }
        fn setsid(&mut self) -> io::Result<()> {
            self.record("setsid".into())
        }
        fn unshare_cgroup_namespace(&mut self) -> io::Result<()> {
            self.record("unshare cgroup".into())
        }
        fn mount(
            &mut self,
            source: Option<&CStr>,
            target: &CStr,
            fstype: Option<&CStr>,
            flags: libc::c_ulong,
            data: Option<&CStr>,
        ) -> io::Result<()> {
            let ro = if flags & libc::MS_RDONLY != 0 {
                " ro"
            } else {
                ""
            };
            let data = match data.map(s) {
                Some(d) if fstype.is_some_and(|t| t == c"overlay") => format!(" {d}"),
                _ => String::new(),
            };
            self.record(format!(
                "mount {} {} {}{ro}{data}",
                source.map(s).unwrap_or_default(),
                s(target),
                fstype.map(s).unwrap_or_default()
            ))
        }
        fn open_dir(&mut self, path: &CStr) -> io::Result<std::os::fd::RawFd> {
            self.record(format!("open {}", s(path)))?;
            Ok(40 + self.0.iter().filter(|c| c.starts_with("open ")).count() as i32)
        }
        fn close(&mut self, fd: std::os::fd::RawFd) {
            self.0.push(format!("close {fd}"));
        }
        fn mkdir(&mut self, path: &CStr, _mode: libc::mode_t) -> io::Result<()> {
            self.record(format!("mkdir {}", s(path)))
        }
        fn symlink(&mut self, target: &CStr, link: &CStr) -> io::Result<()> {
            self.record(format!("symlink {} -> {}", s(link), s(target)))
        }
        fn pivot_root(&mut self, new_root: &CStr) -> io::Result<()> {
            self.record(format!("pivot_root {}", s(new_root)))
        }
        fn loopback_up(&mut self) -> io::Result<()> {
            self.record("loopback_up".into())
        }
        fn setns_net(&mut self, fd: std::os::fd::RawFd) -> io::Result<()> {
            self.record(format!("setns_net {fd}"))
        }
        fn copy_mount_namespace(&mut self, fd: std::os::fd::RawFd) -> io::Result<()> {
            self.record(format!("copy_mount_namespace {fd}"))
        }
        fn sethostname(&mut self, name: &CStr) -> io::Result<()> {
            self.record(format!("sethostname {}", s(name)))
        }
        fn chdir(&mut self, path: &CStr) -> io::Result<()> {
            self.record(format!("chdir {}", s(path)))
        }
        fn setrlimit(&mut self, r: Resource, v: u64) -> io::Result<()> {
            self.record(format!("rlimit {r:?} {v}"))
        }
        fn cloexec_from(&mut self, fd: u32) -> io::Result<()> {
            self.record(format!("cloexec {fd}"))
        }
        fn drop_identity(&mut self, uid: u32, gid: u32) -> io::Result<()> {
            self.record(format!("identity {uid}:{gid}"))
        }
        fn not_dumpable(&mut self) -> io::Result<()> {
            self.record("not_dumpable".into())
        }
        fn set_parent_death_signal(&mut self) -> io::Result<()> {
            self.record("pdeathsig".into())
        }
        fn no_new_privs(&mut self) -> io::Result<()> {
            self.record("no_new_privs".into())
        }
        fn landlock(&mut self, rules: &[crate::landlock::Rule]) -> io::Result<()> {
            self.record(format!("landlock {}", rules.len()))
        }
        fn seccomp(&mut self, filter: &[SockFilter]) -> io::Result<()> {
            self.record(format!("seccomp {}", filter.len()))
        }
    }

    fn isolation() -> Isolation {
        Isolation {
            root_mount_point: "/data/root".into(),
            system: vec![
                SystemEntry::Dir("/usr".into()),
                SystemEntry::Symlink {
                    path: "/lib".into(),
                    target: "usr/lib".into(),
                },
                SystemEntry::File("/etc/localtime".into()),
            ],
            binds: vec![Bind {
                source: "/data/versions/t/abc".into(),
                target: "/code".into(),
                writable: false,
            }],
            tmp_bytes: 1 << 20,
            network: NetworkMode::Fresh,
            mount_template: None,
            uid: 100_001,
            gid: 100_001,
            hostname: "falra".into(),
            cgroup_procs: vec!["/cg/memory/falra/t1/c1/cgroup.procs".into()],
        }
    }

    fn position(calls: &[String], prefix: &str) -> usize {
        calls
            .iter()
            .position(|c| c.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {calls:#?}"))
    }

    /// The calls a whole isolated plan with seccomp makes for `iso`.
    fn recorded(iso: &Isolation) -> Vec<String> {
        let mut rec = Recorder::default();
        let steps = plan(
            &SetupLimits::default(),
            Some(iso),
            Path::new("/code"),
            Some(crate::seccomp::programs()),
        );
        apply(&steps, &mut rec).unwrap();
        rec.0
    }

    #[test]
    fn isolated_plan_runs_in_the_documented_order() {
        let calls = &recorded(&isolation());
        let order = [
            "write /cg/memory/falra/t1/c1/cgroup.procs 0",
            "unshare cgroup",
            "setsid",
            "mount  / ",
            "mount falra-root /data/root tmpfs",
            "mount /usr /data/root/usr ",
            "mount  /data/root/usr  ro",
            "symlink /data/root/lib -> usr/lib",
            "open /data/versions/t/abc",
            "open /data/root/proc",
            "mount falra /data/root/code overlay ro \
             lowerdir=/proc/self/fd/41:/proc/self/fd/42",
            "close 42",
            "close 41",
            "mount /dev/null /data/root/dev/null",
            "mount tmpfs /data/root/tmp tmpfs",
            "mount tmpfs /data/root/dev/shm tmpfs",
            "mount proc /data/root/proc proc",
            "pivot_root /data/root",
            "mount  / ",
            "loopback_up",
            "sethostname falra",
            "chdir /code",
            "rlimit Core 0",
            "cloexec 3",
            "identity 100001:100001",
            "not_dumpable",
            "pdeathsig",
            "no_new_privs",
            "landlock 4",
            "seccomp",
        ];
        let mut last = 0;
        for want in order {
            let at = calls[last..]
                .iter()
                .position(|c| c.starts_with(want))
                .map(|p| p + last);
            let at = at.unwrap_or_else(|| panic!("{want:?} missing or out of order in {calls:#?}"));
            last = at;
        }
        assert_eq!(calls.last().unwrap().split(' ').next(), Some("seccomp"));
        // The root is made read-only after the pivot, and no mount happens after it.
        let pivot = position(calls, "pivot_root");
        assert!(calls[pivot + 1].ends_with(" ro"), "{}", calls[pivot + 1]);
        assert!(calls[pivot + 2..].iter().all(|c| !c.starts_with("mount")));
    }

    #[test]
    fn a_template_holds_the_root_and_each_call_mounts_only_its_own_tmp_shm_and_proc() {
        let iso = isolation();
        let mut rec = Recorder::default();
        apply(&template_plan(&iso), &mut rec).unwrap();
        let template = rec.0;
        // The whole root, pivoted into and read-only...
        for want in [
            "mount  / ",
            "mount falra-root /data/root tmpfs",
            "mount  /data/root/usr  ro",
            "mount falra /data/root/code overlay ro",
            "mount /dev/null /data/root/dev/null",
        ] {
            assert!(template.iter().any(|c| c.starts_with(want)), "{want}");
        }
        let n = template.len();
        assert_eq!(template[n - 2], "pivot_root /data/root");
        assert!(template[n - 1].ends_with(" ro"), "{}", template[n - 1]);
        // ...but nothing a call must have of its own, and nothing of a process's identity.
        for unwanted in [
            "/data/root/tmp tmpfs",
            "/data/root/dev/shm tmpfs",
            "proc proc",
        ] {
            assert!(!template.iter().any(|c| c.contains(unwanted)), "{unwanted}");
        }
        for unwanted in [
            "write /cg",
            "setsid",
            "identity",
            "seccomp",
            "landlock",
            "sethostname",
        ] {
            assert!(
                !template.iter().any(|c| c.starts_with(unwanted)),
                "{unwanted}"
            );
        }

        let mut iso = isolation();
        iso.mount_template = Some(9);
        let calls = recorded(&iso);
        let mounts: Vec<_> = calls.iter().filter(|c| c.starts_with("mount")).collect();
        assert_eq!(
            mounts,
            [
                "mount tmpfs /tmp tmpfs",
                "mount tmpfs /dev/shm tmpfs",
                "mount proc /proc proc"
            ]
        );
        assert_eq!(
            calls[..4],
            [
                "write /cg/memory/falra/t1/c1/cgroup.procs 0",
                "unshare cgroup",
                "setsid",
                "copy_mount_namespace 9"
            ]
        );
        assert!(!calls.iter().any(|c| c.starts_with("pivot_root")));
        // Everything after the mounts is as in a plan that builds its own root.
        let tail = |calls: &[String]| {
            let at = position(calls, "mount proc");
            calls[at + 1..].to_vec()
        };
        let own_tail: Vec<_> = tail(&recorded(&isolation()))
            .into_iter()
            .filter(|c| !c.starts_with("pivot_root") && !c.starts_with("mount  / "))
            .collect();
        assert_eq!(tail(&calls), own_tail);
    }

    #[test]
    fn host_network_skips_loopback_and_unisolated_children_only_get_limits() {
        let mut iso = isolation();
        iso.network = NetworkMode::Host;
        let run = |iso: &Isolation| {
            let mut rec = Recorder::default();
            let steps = plan(&SetupLimits::default(), Some(iso), Path::new("/code"), None);
            apply(&steps, &mut rec).unwrap();
            rec.0
        };
        let calls = run(&iso);
        assert!(!calls
            .iter()
            .any(|c| c == "loopback_up" || c.starts_with("setns")));
        iso.network = NetworkMode::Join(7);
        let calls = run(&iso);
        assert!(calls.iter().any(|c| c == "setns_net 7"));
        assert!(!calls.iter().any(|c| c == "loopback_up"));

        let mut rec = Recorder::default();
        apply(
            &plan(&SetupLimits::default(), None, Path::new("/srv"), None),
            &mut rec,
        )
        .unwrap();
        assert_eq!(
            rec.0,
            [
                "setsid",
                "chdir /srv",
                "rlimit Core 0",
                "rlimit OpenFiles 256",
                "rlimit FileSize 67108864",
                "rlimit Stack 8388608",
                "cloexec 3",
                "pdeathsig",
                "no_new_privs"
            ]
        );
    }

    #[test]
    fn a_failing_step_stops_the_setup_and_names_itself() {
        let mut rec = Recorder(Vec::new(), Some("pivot_root"), 0);
        let steps = plan(
            &SetupLimits::default(),
            Some(&isolation()),
            Path::new("/code"),
            None,
        );
        let (index, err) = apply(&steps, &mut rec).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        assert!(matches!(steps[index], Step::PivotRoot(_)));
        assert_eq!(rec.0.last().unwrap(), "pivot_root /data/root");
    }

    #[test]
    fn a_read_only_view_falls_back_to_a_bind_only_where_there_is_no_overlay() {
        let steps = plan(
            &SetupLimits::default(),
            Some(&isolation()),
            Path::new("/code"),
            None,
        );
        // No overlayfs: the same directory, bound read-only, both descriptors closed.
        let mut rec = Recorder(
            Vec::new(),
            Some("mount falra /data/root/code"),
            libc::ENODEV,
        );
        apply(&steps, &mut rec).unwrap();
        let at = position(&rec.0, "mount falra /data/root/code");
        assert_eq!(
            rec.0[at + 1..at + 5],
            [
                "close 42",
                "close 41",
                "mount /data/versions/t/abc /data/root/code ",
                "mount  /data/root/code  ro",
            ]
        );
        // Any other failure is the step's failure, not a silent bind.
        let mut rec = Recorder(
            Vec::new(),
            Some("mount falra /data/root/code"),
            libc::EACCES,
        );
        let (index, err) = apply(&steps, &mut rec).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EACCES));
        assert!(matches!(steps[index], Step::ReadOnlyView { .. }));
        assert!(!rec
            .0
            .iter()
            .any(|c| c == "mount /data/versions/t/abc /data/root/code "));
        // A source that cannot be opened closes nothing it did not open.
        let mut rec = Recorder(Vec::new(), Some("open /data/versions"), libc::ENOTDIR);
        apply(&steps, &mut rec).unwrap();
        let at = position(&rec.0, "open /data/versions");
        assert_eq!(rec.0[at + 1], "mount /data/versions/t/abc /data/root/code ");
    }

    #[test]
    fn the_stack_writer_writes_numbers_and_never_overflows() {
        let mut buf = [0u8; 8];
        let mut w = StackWriter {
            buf: &mut buf,
            len: 0,
        };
        w.push(b"fd=");
        w.push_number(0);
        w.push_number(1234567);
        assert_eq!(w.as_cstr(), c"fd=0123");
    }
}
