//! The zygote: a warm interpreter that forks each call's process instead of a fresh `exec`.
//!
//! Starting CPython is most of a call's CPU. The zygote is the runner (`runner.py`, zygote
//! mode) loaded once, with the standard-library modules the per-call setup needs and **no
//! tenant code**; the daemon starts it as root and is the only one holding its socket. For a
//! call, [`crate::prepare`] clones the call's init exactly as for an exec'd child (new
//! namespaces, the whole mount plan, identity, seccomp), except that init does not start a
//! program: it waits for the process the zygote forks into its PID namespace. The zygote gets
//! the call's pipes, a pidfd of init and the per-process part of the same plan
//! ([`ForkRequest::from_plan`]). It forks into init's PID namespace (the fork is PID 2 there);
//! that fork joins the call's cgroups and init's other namespaces, sets its session, stdio,
//! working directory, limits, closes every other descriptor, drops to the tenant's uid,
//! becomes not dumpable, sets `no_new_privs`, applies Landlock and the seccomp filters, forks
//! the call's process ([`PROGRAM_PID`]) and exits, so that the call's process is init's child
//! as an exec'd program is. Only that process imports the tenant's module; init reaps it and
//! reports its end, and its exit ends the namespace and whatever the call left in it.
//!
//! Why this is sound: every privileged step runs in code the daemon shipped, in a process in
//! which no tenant code has run yet (the zygote's own imports are the standard library's, under
//! `-I -S`). What a call's process can reach of the zygote afterwards: nothing — a different
//! uid, not dumpable, ptrace and `process_vm_*` outside the seccomp policy, a PID namespace in
//! which the zygote does not exist. The values (paths, uid, rules, filters) are the daemon's,
//! taken from the same [`crate::setup::plan`] init ran, so the two ways of starting a child
//! cannot drift apart in what they allow.
//!
//! The zygote serves one request at a time (the socket is behind a mutex); a request is one
//! `fork` and one `waitpid` of a process that exits at once. A zygote that does not answer
//! within [`REPLY_TIMEOUT`] is killed, and the caller falls back to an exec'd child.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::setup::{Resource, Step};

/// How long the zygote may take to start, and to answer one request.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The call's process in its PID namespace: after init (1) and the zygote's first fork (2).
pub const PROGRAM_PID: libc::pid_t = 3;

/// Report records at or above this are a forked child's setup steps, by index into
/// [`STEP_NAMES`].
pub const STEP_BASE: u32 = 0x1000;

/// The forked child's setup steps, in the order `runner.py` numbers them (`_Z_*`).
pub const STEP_NAMES: [&str; 14] = [
    "join cgroup",
    "enter namespaces",
    "fork",
    "session",
    "stdio",
    "chdir",
    "rlimit",
    "close descriptors",
    "drop identity",
    "not dumpable",
    "no_new_privs",
    "landlock",
    "seccomp",
    "environment",
];

#[derive(Debug, thiserror::Error)]
pub enum ZygoteError {
    #[error("could not start the zygote")]
    Start(#[source] io::Error),
    #[error("the zygote did not become ready")]
    NotReady(#[source] io::Error),
    #[error("the zygote did not take the request")]
    Request(#[source] io::Error),
    #[error("the zygote could not fork the call's process")]
    Refused,
    #[error("the call cannot be forked from the zygote: {0}")]
    Unsupported(&'static str),
}

/// What the zygote's forks need to know of one call: the per-process part of the plan.
#[derive(Debug, Serialize)]
pub struct ForkRequest {
    cgroups: Vec<String>,
    /// `CLONE_NEW*` flags for the call's process to `setns` on init's pidfd (the PID namespace
    /// is entered by the zygote, for its fork).
    ns: i32,
    cwd: String,
    rlimits: Vec<(i32, u64)>,
    uid: u32,
    gid: u32,
    landlock: Option<LandlockRules>,
    seccomp: bool,
    env: Vec<(String, String)>,
    argv0: String,
    /// What an exec'd interpreter's `sys.orig_argv` would be.
    orig_argv: Vec<String>,
}

#[derive(Debug, Serialize)]
struct LandlockRules {
    handled: u64,
    rules: Vec<(String, u64)>,
}

fn text(path: &std::ffi::CStr) -> Result<String, ZygoteError> {
    path.to_str()
        .map(str::to_owned)
        .map_err(|_| ZygoteError::Unsupported("a path that is not UTF-8"))
}

impl ForkRequest {
    /// The per-process steps of `steps` (the plan init ran for this call), in the zygote's
    /// terms; `env` and `argv0` as an exec'd child would get them.
    pub fn from_plan(
        steps: &[Step],
        env: &[(OsString, OsString)],
        argv: &[&std::ffi::OsStr],
        landlock_abi: Option<i32>,
    ) -> Result<ForkRequest, ZygoteError> {
        let utf8 = |a: &std::ffi::OsStr| {
            a.to_str()
                .map(str::to_owned)
                .ok_or(ZygoteError::Unsupported("an argument that is not UTF-8"))
        };
        let orig_argv = argv
            .iter()
            .map(|a| utf8(a))
            .collect::<Result<Vec<_>, _>>()?;
        let mut request = ForkRequest {
            cgroups: Vec::new(),
            ns: libc::CLONE_NEWNS
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWUTS
                | libc::CLONE_NEWNET
                | libc::CLONE_NEWCGROUP,
            cwd: String::new(),
            rlimits: Vec::new(),
            uid: 0,
            gid: 0,
            landlock: None,
            seccomp: false,
            env: Vec::new(),
            argv0: orig_argv.last().cloned().unwrap_or_default(),
            orig_argv,
        };
        let mut dropped = false;
        for step in steps {
            match step {
                Step::JoinCgroup(procs) => request.cgroups.push(text(procs)?),
                Step::Chdir(path) => request.cwd = text(path)?,
                Step::Rlimit(resource, value) => {
                    let which = match resource {
                        Resource::Core => libc::RLIMIT_CORE,
                        Resource::OpenFiles => libc::RLIMIT_NOFILE,
                        Resource::FileSize => libc::RLIMIT_FSIZE,
                        Resource::Stack => libc::RLIMIT_STACK,
                    };
                    request.rlimits.push((which as i32, *value));
                }
                Step::DropIdentity { uid, gid } => {
                    (request.uid, request.gid) = (*uid, *gid);
                    dropped = true;
                }
                Step::Landlock(rules) => {
                    request.landlock = landlock_abi.map(|abi| LandlockRules {
                        handled: crate::landlock::handled(abi),
                        rules: rules
                            .iter()
                            .filter_map(|r| {
                                Some((
                                    r.path.to_str().ok()?.to_owned(),
                                    crate::landlock::rights(r.grant, abi),
                                ))
                            })
                            .collect(),
                    })
                }
                Step::Seccomp(filter) => {
                    // The zygote installs the filters it was handed at start: the policy's.
                    if !crate::seccomp::programs()
                        .iter()
                        .any(|p| std::ptr::eq(p.as_slice(), *filter))
                    {
                        return Err(ZygoteError::Unsupported("a seccomp filter of its own"));
                    }
                    request.seccomp = true;
                }
                // Steps init takes for the call (its namespaces, mounts, hostname) or that
                // bind its whole namespace; the forked process inherits or enters them.
                Step::NewCgroupNamespace
                | Step::MountPrivate
                | Step::Mount { .. }
                | Step::BindReadOnly { .. }
                | Step::BindDevice { .. }
                | Step::ReadOnlyView { .. }
                | Step::Mkdir(..)
                | Step::WriteFile(..)
                | Step::Symlink { .. }
                | Step::PivotRoot(_)
                | Step::RemountRootReadOnly
                | Step::LoopbackUp
                | Step::JoinNetns(_)
                | Step::CopyMountTemplate(_)
                | Step::SetHostname(_) => {}
                // Taken by the forked process for itself, in the same order (runner.py); the
                // parent-death signal is init's, whose death ends the namespace.
                Step::NewSession
                | Step::CloseInheritedFds
                | Step::NotDumpable
                | Step::ParentDeathSignal
                | Step::NoNewPrivs => {}
                // A writable bind: children that have one (builds, the compiler) are exec'd.
                Step::BindWritable { .. } => {
                    return Err(ZygoteError::Unsupported("a child with a writable bind"))
                }
            }
        }
        if !dropped || request.uid == 0 {
            // Only a sandboxed child with an identity of its own is ever forked.
            return Err(ZygoteError::Unsupported(
                "a child without a tenant identity",
            ));
        }
        for (k, v) in env {
            match (k.to_str(), v.to_str()) {
                (Some(k), Some(v)) => request.env.push((k.to_owned(), v.to_owned())),
                _ => return Err(ZygoteError::Unsupported("an environment that is not UTF-8")),
            }
        }
        Ok(request)
    }
}

/// What init itself runs when the program is forked: the plan but for the seccomp filters.
/// init runs no tenant code — it reaps and exits — and the filters bound the program, which
/// installs them itself; attaching them would cost init a JIT compilation per call for
/// nothing. init still joins the call's cgroups, so that the `pids` limit counts the same
/// processes as for an exec'd program.
pub fn init_part(steps: Vec<Step>) -> Vec<Step> {
    steps
        .into_iter()
        .filter(|s| !matches!(s, Step::Seccomp(_)))
        .collect()
}

/// A running zygote. Dropping it kills it.
#[derive(Debug)]
pub struct Zygote {
    process: Mutex<Process>,
    /// Set once a request failed at the socket (or the zygote was retired): it is not used
    /// again. Read without the lock, which a request holds while it waits for the zygote.
    broken: std::sync::atomic::AtomicBool,
    pid: u32,
    started: Instant,
    forks: AtomicU64,
}

#[derive(Debug)]
struct Process {
    child: std::process::Child,
    sock: OwnedFd,
}

impl Zygote {
    /// Starts `python` on the compiled runner in `runner_dir` in zygote mode and hands it the
    /// seccomp `filters` it will install in every call's process.
    pub fn start(
        python: &Path,
        runner_dir: &Path,
        filters: &[Vec<crate::seccomp::SockFilter>],
    ) -> Result<Zygote, ZygoteError> {
        let (ours, theirs) = seqpacket_pair().map_err(ZygoteError::Start)?;
        let theirs_fd = theirs.as_raw_fd();
        let mut command = Command::new(python);
        // The runner by a relative name, from its directory: the zygote's command line, which
        // its forks inherit, names no host path.
        command
            .args(crate::runner::interpreter_args(Path::new(".")))
            .args(["--zygote", "3"])
            .env_clear()
            .current_dir(runner_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // SAFETY: between fork and exec the closure makes one async-signal-safe call, dup2 (or fcntl),
        // which places the zygote's end of the socket at descriptor 3 (clearing its
        // close-on-exec flag); it allocates nothing and touches no lock.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(move || {
                // Already at 3: dup2 would leave it close-on-exec, so clear the flag instead.
                let rc = if theirs_fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(theirs_fd, 3)
                };
                if rc == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(ZygoteError::Start)?;
        drop(theirs);
        let pid = child.id();
        let mut process = Process { child, sock: ours };
        let hello = serde_json::json!({
            "nr": {
                "seccomp": libc::SYS_seccomp,
                "landlock_create_ruleset": libc::SYS_landlock_create_ruleset,
                "landlock_add_rule": libc::SYS_landlock_add_rule,
                "landlock_restrict_self": libc::SYS_landlock_restrict_self,
            },
            "seccomp": filters.iter().map(|f| hex(f)).collect::<Vec<_>>(),
        });
        let ready = (|| {
            set_receive_timeout(process.sock.as_fd(), START_TIMEOUT)?;
            send(process.sock.as_fd(), hello.to_string().as_bytes(), &[])?;
            let mut reply = [0u8; 16];
            let n = receive(process.sock.as_fd(), &mut reply)?;
            if &reply[..n] != b"ready" {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the zygote answered something other than ready",
                ));
            }
            set_receive_timeout(process.sock.as_fd(), REPLY_TIMEOUT)
        })();
        if let Err(e) = ready {
            process.kill();
            return Err(ZygoteError::NotReady(e));
        }
        Ok(Zygote {
            process: Mutex::new(process),
            broken: std::sync::atomic::AtomicBool::new(false),
            pid,
            started: Instant::now(),
            forks: AtomicU64::new(0),
        })
    }

    /// Has the zygote fork the call's process. `fds` are the call's stdin (read end), stdout
    /// and stderr (write ends), its report pipe (write end) and a pidfd of its init. Blocks
    /// until the zygote has forked (well under a millisecond): call it off the async threads.
    pub fn fork(&self, request: &ForkRequest, fds: [BorrowedFd<'_>; 5]) -> Result<(), ZygoteError> {
        let body =
            serde_json::to_vec(request).map_err(|e| ZygoteError::Request(io::Error::other(e)))?;
        let mut process = self.process.lock().unwrap_or_else(|p| p.into_inner());
        if self.broken.load(Ordering::Relaxed) {
            return Err(ZygoteError::Request(io::Error::from(
                io::ErrorKind::BrokenPipe,
            )));
        }
        let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        let answered = send(process.sock.as_fd(), &body, &raw).and_then(|()| {
            let mut reply = [0u8; 8];
            let n = receive(process.sock.as_fd(), &mut reply)?;
            match &reply[..n] {
                b"1" => Ok(true),
                b"0" => Ok(false),
                _ => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            }
        });
        match answered {
            Ok(true) => {
                self.forks.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(false) => Err(ZygoteError::Refused),
            Err(e) => {
                // A zygote that does not answer cannot be trusted to answer the next one in
                // order: it is stopped, and whoever holds it starts another.
                self.broken.store(true, Ordering::Relaxed);
                process.kill();
                Err(ZygoteError::Request(e))
            }
        }
    }

    /// Whether the zygote can still take requests.
    pub fn is_usable(&self) -> bool {
        if self.broken.load(Ordering::Relaxed) {
            return false;
        }
        // Never waits: a zygote busy with a request is usable.
        match self.process.try_lock() {
            Ok(mut process) => matches!(process.child.try_wait(), Ok(None)),
            Err(std::sync::TryLockError::Poisoned(_)) => false,
            Err(std::sync::TryLockError::WouldBlock) => true,
        }
    }

    /// Takes the zygote out of service (its forks keep failing); it is stopped once no call
    /// holds it.
    pub fn retire(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    /// Calls' processes forked so far.
    pub fn forks(&self) -> u64 {
        self.forks.load(Ordering::Relaxed)
    }

    /// The zygote's resident memory, from `/proc/<pid>/status` under `proc_root`.
    pub fn rss_bytes(&self, proc_root: &Path) -> Option<u64> {
        rss_of(self.pid, proc_root)
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        self.process
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .kill();
    }
}

impl Process {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The resident memory of process `pid`, from `/proc/<pid>/status` under `proc_root`.
pub(crate) fn rss_of(pid: impl std::fmt::Display, proc_root: &Path) -> Option<u64> {
    let status = std::fs::read_to_string(proc_root.join(pid.to_string()).join("status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Landlock's ABI on this kernel, as a forked child would find it (`None`: no Landlock). Asked
/// of the kernel once: it cannot change while the daemon runs, and every forked call needs it.
pub fn landlock_abi() -> Option<i32> {
    static ABI: std::sync::OnceLock<Option<i32>> = std::sync::OnceLock::new();
    *ABI.get_or_init(crate::landlock::abi_version)
}

pub(crate) fn hex(filter: &[crate::seccomp::SockFilter]) -> String {
    let mut out = String::with_capacity(filter.len() * 16);
    for insn in filter {
        let mut bytes = Vec::with_capacity(8);
        bytes.extend_from_slice(&insn.code.to_ne_bytes());
        bytes.push(insn.jt);
        bytes.push(insn.jf);
        bytes.extend_from_slice(&insn.k.to_ne_bytes());
        for b in bytes {
            out.push_str(&format!("{b:02x}"));
        }
    }
    out
}

use std::os::fd::AsFd;

#[allow(unsafe_code)]
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[allow(unsafe_code)]
pub(crate) fn set_receive_timeout(sock: BorrowedFd<'_>, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: `tv` is a live timeval of the size given, read by the kernel during the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One message, with `fds` passed along as `SCM_RIGHTS`.
#[allow(unsafe_code)]
pub(crate) fn send(sock: BorrowedFd<'_>, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let payload = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE computes a size from an integer.
    let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    // u64 words keep the control buffer aligned as a cmsghdr needs.
    let mut control = vec![0u64; space.div_ceil(8).max(1)];
    // SAFETY: msghdr is a plain C struct for which all-zero is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: the control buffer is `space` bytes, room for one header and `fds`; the
        // header pointer CMSG_FIRSTHDR returns lies inside it, and CMSG_DATA points at the
        // payload after the header, where `payload` bytes fit.
        unsafe {
            let header = libc::CMSG_FIRSTHDR(&msg);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(payload as u32) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(header),
                payload,
            );
        }
    }
    loop {
        // SAFETY: `msg` points at `iov` and `control`, live for the call; the kernel copies
        // the message and duplicates the descriptors before it returns.
        let rc = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if rc >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[allow(unsafe_code)]
fn receive(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is writable for its whole length during the call.
        let rc = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        match rc {
            0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            n if n > 0 => return Ok(n as usize),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup::{plan, Isolation, NetworkMode, SetupLimits};

    fn isolation(uid: u32) -> Isolation {
        Isolation {
            root_mount_point: "/tmp/root".into(),
            system: Vec::new(),
            binds: Vec::new(),
            tmp_bytes: 1 << 20,
            network: NetworkMode::Host,
            mount_template: Some(7),
            uid,
            gid: uid,
            hostname: "falra".into(),
            cgroup_procs: vec!["/cg/memory/c_1/cgroup.procs".into()],
        }
    }

    #[test]
    fn a_fork_request_carries_the_plans_per_process_steps() {
        let iso = isolation(200_001);
        let steps = plan(
            &SetupLimits::default(),
            Some(&iso),
            Path::new("/code"),
            Some(crate::seccomp::programs()),
        );
        let env = vec![("PATH".into(), "/usr/bin".into())];
        let r = ForkRequest::from_plan(
            &steps,
            &env,
            &["/usr/bin/python3".as_ref(), "/falra/runner.pyc".as_ref()],
            Some(3),
        )
        .unwrap();
        assert_eq!(r.cgroups, vec!["/cg/memory/c_1/cgroup.procs"]);
        assert_eq!((r.uid, r.gid), (200_001, 200_001));
        assert_eq!(r.cwd, "/code");
        assert!(r.seccomp);
        assert_eq!(
            r.ns & libc::CLONE_NEWPID,
            0,
            "the zygote enters the PID namespace"
        );
        let limits: Vec<i32> = r.rlimits.iter().map(|(w, _)| *w).collect();
        assert!(limits.contains(&(libc::RLIMIT_NOFILE as i32)), "{limits:?}");
        let landlock = r.landlock.expect("landlock rules");
        assert_eq!(landlock.handled, crate::landlock::handled(3));
        assert!(landlock.rules.iter().any(|(p, _)| p == "/tmp"));
        assert_eq!(r.env, vec![("PATH".to_owned(), "/usr/bin".to_owned())]);
        // init keeps everything but the filters.
        let init = init_part(steps.clone());
        assert_eq!(
            init.len(),
            steps.len() - crate::seccomp::programs().len(),
            "only the seccomp steps leave init's plan"
        );
        assert!(init.iter().any(|s| matches!(s, Step::JoinCgroup(_))));
        assert!(!init.iter().any(|s| matches!(s, Step::Seccomp(_))));
    }

    #[test]
    fn only_a_child_with_a_tenant_identity_is_forked() {
        let steps = plan(&SetupLimits::default(), None, Path::new("/code"), None);
        let err = ForkRequest::from_plan(&steps, &[], &["/r".as_ref()], None).unwrap_err();
        assert!(matches!(err, ZygoteError::Unsupported(_)), "{err}");
        let iso = isolation(200_001);
        let steps = plan(
            &SetupLimits::default(),
            Some(&iso),
            Path::new("/code"),
            None,
        );
        let bad_env = vec![(
            std::ffi::OsString::from("K"),
            std::os::unix::ffi::OsStringExt::from_vec(vec![0xff]),
        )];
        let err = ForkRequest::from_plan(&steps, &bad_env, &["/r".as_ref()], None).unwrap_err();
        assert!(matches!(err, ZygoteError::Unsupported(_)), "{err}");
    }
}
