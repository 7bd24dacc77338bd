//! Starting one child, feeding it, supervising it and collecting what it left.
//!
//! The supervision contract: stdin gets the request and is closed; stdout and stderr are read
//! concurrently into capped buffers (stderr keeps reading past its cap, counting what it drops,
//! so a chatty child never blocks on a full pipe); the wall-clock deadline kills the child's
//! whole process group; when the child exits, whatever it left behind in its group is killed too.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::setup::{self, HostSys, Isolation, SetupLimits};

/// How long to keep reading the child's pipes after it exited, when something it spawned still
/// holds them open. Everything the child itself wrote is already in the pipe by then.
const DRAIN_GRACE: Duration = Duration::from_millis(50);

/// Everything needed to start one child. Knows nothing of who the child is for.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
    /// The child's whole environment: nothing of the daemon's is inherited.
    pub env: Vec<(OsString, OsString)>,
    /// Written to the child's stdin, which is then closed.
    pub stdin: Vec<u8>,
    pub limits: Limits,
    /// Namespaces, new root, identity, cgroups; `None` runs a plain child (for measurements
    /// and tests of the supervisor itself).
    pub isolation: Option<Isolation>,
    /// Install the seccomp policy as the last step before exec.
    pub seccomp: bool,
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall-clock deadline from spawn; the process group is killed when it passes.
    pub wall: Duration,
    /// The most stdout kept; past it the child is killed and `stdout_overflow` is set.
    pub stdout_bytes: usize,
    /// The most stderr kept; the rest is read and counted, not kept.
    pub stderr_bytes: usize,
    pub setup: SetupLimits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    Exited(i32),
    Signaled(i32),
    /// Killed by the supervisor at the wall-clock deadline.
    TimedOut,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub wall_ms: u64,
    pub cpu_ms: u64,
    pub peak_memory_bytes: u64,
}

/// What a finished child left: how it ended, its output, what it used.
#[derive(Debug)]
pub struct Finished {
    pub termination: Termination,
    pub stdout: Vec<u8>,
    pub stdout_overflow: bool,
    pub stderr: Vec<u8>,
    pub stderr_dropped: u64,
    pub usage: Usage,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("could not start the child process")]
    Spawn(#[source] io::Error),
    #[error("could not set up the child process at {step}")]
    Setup {
        step: String,
        #[source]
        source: io::Error,
    },
    #[error("could not wait for the child process")]
    Wait(#[source] io::Error),
}

/// Starts the child described by `spec` and waits until it is gone.
pub async fn spawn_and_wait(spec: ChildSpec) -> Result<Finished, SandboxError> {
    let filter = spec.seccomp.then(crate::seccomp::compile);
    let steps = setup::plan(
        &spec.limits.setup,
        spec.isolation.as_ref(),
        &spec.cwd,
        filter,
    );
    let namespaces = match &spec.isolation {
        None => 0,
        Some(iso) => {
            let mut flags = libc::CLONE_NEWPID
                | libc::CLONE_NEWNS
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWUTS
                | libc::CLONE_NEWCGROUP;
            if !iso.host_network {
                flags |= libc::CLONE_NEWNET;
            }
            flags as u64
        }
    };
    let started = Instant::now();
    let Spawned {
        pid,
        stdin,
        stdout,
        stderr,
        status: status_pipe,
    } = {
        // Raw pointers inside: kept out of the future's state, used before the first await.
        let mut exec = Exec::new(&spec.program, &spec.args, &spec.env)?;
        spawn_child(&mut exec, &steps, namespaces)?
    };
    drop(steps);
    // Should this future be dropped before the child is reaped, the child dies with it.
    let mut guard = KillOnDrop(Some(pid));
    let stdin = tokio::net::unix::pipe::Sender::from_owned_fd(stdin).map_err(|e| {
        kill_child(pid);
        SandboxError::Spawn(e)
    });
    let stdout = tokio::net::unix::pipe::Receiver::from_owned_fd(stdout);
    let stderr = tokio::net::unix::pipe::Receiver::from_owned_fd(stderr);
    let (stdin, stdout, stderr) = match (stdin, stdout, stderr) {
        (Ok(i), Ok(o), Ok(e)) => (i, o, e),
        (Err(e), _, _) => return Err(e),
        (_, Err(e), _) | (_, _, Err(e)) => {
            kill_child(pid);
            return Err(SandboxError::Spawn(e));
        }
    };

    let request = spec.stdin;
    tokio::spawn(async move {
        let mut stdin = stdin;
        // A child that exits without reading its request is not an error of ours.
        let _ = stdin.write_all(&request).await;
        let _ = stdin.shutdown().await;
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let out = tokio::spawn(collect(
        stdout,
        spec.limits.stdout_bytes,
        Overflow::Kill(pid),
        stop_rx.clone(),
    ));
    let err = tokio::spawn(collect(
        stderr,
        spec.limits.stderr_bytes,
        Overflow::Discard,
        stop_rx,
    ));

    let mut waiter = tokio::task::spawn_blocking(move || wait4(pid));
    let mut timed_out = false;
    let waited = tokio::select! {
        r = &mut waiter => r,
        _ = tokio::time::sleep(spec.limits.wall) => {
            timed_out = true;
            kill_child(pid);
            waiter.await
        }
    };
    let (status, rusage) = waited
        .map_err(|e| SandboxError::Wait(io::Error::other(e)))?
        .map_err(SandboxError::Wait)?;
    guard.0 = None;
    let wall = started.elapsed();
    // Whatever the child left in its process group goes with it (in a PID namespace the
    // kernel has already killed everything when its init, the child, exited).
    kill_child(pid);

    // Normally both pipes reach EOF as the child exits. If something that escaped the group
    // still holds them, stop reading after a short grace: the child's own output is in by then.
    tokio::spawn(async move {
        tokio::time::sleep(DRAIN_GRACE).await;
        let _ = stop_tx.send(true);
    });
    let (out, err) = (out.await, err.await);
    let out = out.map_err(|e| SandboxError::Wait(io::Error::other(e)))?;
    let err = err.map_err(|e| SandboxError::Wait(io::Error::other(e)))?;

    // init reported the program's own status, unless init itself was killed (deadline,
    // overflow, daemon shutdown): then its status is the call's.
    let status = read_status(&status_pipe).unwrap_or(status);
    let termination = if timed_out {
        Termination::TimedOut
    } else if libc::WIFSIGNALED(status) {
        Termination::Signaled(libc::WTERMSIG(status))
    } else {
        Termination::Exited(libc::WEXITSTATUS(status))
    };
    let cpu = Duration::from_secs((rusage.ru_utime.tv_sec + rusage.ru_stime.tv_sec) as u64)
        + Duration::from_micros((rusage.ru_utime.tv_usec + rusage.ru_stime.tv_usec) as u64);
    Ok(Finished {
        termination,
        stdout: out.kept,
        stdout_overflow: out.overflowed,
        stderr: err.kept,
        stderr_dropped: err.dropped,
        usage: Usage {
            wall_ms: wall.as_millis() as u64,
            cpu_ms: cpu.as_millis() as u64,
            peak_memory_bytes: (rusage.ru_maxrss as u64).saturating_mul(1024),
        },
    })
}

#[derive(Clone, Copy)]
enum Overflow {
    /// Past the cap the output is useless (an answer too large): stop the child at once.
    Kill(libc::pid_t),
    /// Past the cap the output is only counted (logs).
    Discard,
}

struct Collected {
    kept: Vec<u8>,
    overflowed: bool,
    dropped: u64,
}

async fn collect(
    mut pipe: impl AsyncRead + Unpin,
    cap: usize,
    overflow: Overflow,
    mut stop: watch::Receiver<bool>,
) -> Collected {
    let mut c = Collected {
        kept: Vec::new(),
        overflowed: false,
        dropped: 0,
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            r = pipe.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = stop.changed() => break,
        };
        let room = cap.saturating_sub(c.kept.len());
        c.kept.extend_from_slice(&buf[..n.min(room)]);
        if n > room {
            c.overflowed = true;
            c.dropped += (n - room) as u64;
            if let Overflow::Kill(pid) = overflow {
                kill_child(pid);
                break;
            }
        }
    }
    c
}

#[allow(unsafe_code)]
fn kill_child(pid: libc::pid_t) {
    // SAFETY: kill takes integers by value. The child leads its own process group
    // (`Step::NewSession`), so `-pid` reaches everything it started that stayed in the group;
    // in a PID namespace, killing the child (its init) takes every process in it along.
    // ESRCH (already gone) is expected and ignored.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        libc::kill(pid, libc::SIGKILL);
    }
}

/// Kills the child when dropped while still armed.
struct KillOnDrop(Option<libc::pid_t>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            kill_child(pid);
        }
    }
}

/// argv and envp as C arrays, built before the fork: nothing may allocate after it.
struct Exec {
    program: CString,
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    /// The stack the program's process runs on between its clone and its exec.
    stack: Vec<u8>,
    /// Where that process reports an exec failure.
    report: RawFd,
}

impl Exec {
    fn new(
        program: &std::path::Path,
        args: &[OsString],
        env: &[(OsString, OsString)],
    ) -> Result<Exec, SandboxError> {
        let c = |bytes: &[u8]| {
            CString::new(bytes)
                .map_err(|e| SandboxError::Spawn(io::Error::new(io::ErrorKind::InvalidInput, e)))
        };
        let program = c(program.as_os_str().as_bytes())?;
        let mut strings = vec![program.clone()];
        strings.extend(
            args.iter()
                .map(|a| c(a.as_bytes()))
                .collect::<Result<Vec<_>, _>>()?,
        );
        let argc = strings.len();
        for (k, v) in env {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            strings.push(c(&kv)?);
        }
        let mut argv: Vec<_> = strings[..argc].iter().map(|s| s.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<_> = strings[argc..].iter().map(|s| s.as_ptr()).collect();
        envp.push(std::ptr::null());
        Ok(Exec {
            program,
            _strings: strings,
            argv,
            envp,
            stack: vec![0u8; 64 * 1024],
            report: -1,
        })
    }
}

struct Spawned {
    /// The child's init: it waits for the program and reports its status.
    pid: libc::pid_t,
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
    /// Where init writes the program's wait status before it exits.
    status: OwnedFd,
}

#[allow(unsafe_code)]
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The kernel's `struct clone_args`, up to the `cgroup` field.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// clone3 → (child) setup steps → exec; (parent) wait until exec succeeded or a step failed.
#[allow(unsafe_code)]
fn spawn_child(
    exec: &mut Exec,
    steps: &[setup::Step],
    namespaces: u64,
) -> Result<Spawned, SandboxError> {
    let spawn_err = SandboxError::Spawn;
    let (stdin_r, stdin_w) = pipe().map_err(spawn_err)?;
    let (stdout_r, stdout_w) = pipe().map_err(spawn_err)?;
    let (stderr_r, stderr_w) = pipe().map_err(spawn_err)?;
    let (report_r, report_w) = pipe().map_err(spawn_err)?;
    let (status_r, status_w) = pipe().map_err(spawn_err)?;
    exec.report = report_w.as_raw_fd();
    let args = CloneArgs {
        flags: namespaces,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM behaves like fork: the child gets a copy of this
    // address space with only the calling thread. Everything it touches (`exec`, `steps`, the
    // descriptors) was built before the call, and `child_after_clone` never returns, allocates
    // or takes a lock.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid == 0 {
        let fds = ChildFds {
            stdin: stdin_r.as_raw_fd(),
            stdout: stdout_w.as_raw_fd(),
            stderr: stderr_w.as_raw_fd(),
            report: report_w.as_raw_fd(),
            status: status_w.as_raw_fd(),
        };
        child_after_clone(exec, steps, fds);
    }
    if pid == -1 {
        return Err(SandboxError::Spawn(io::Error::last_os_error()));
    }
    let pid = pid as libc::pid_t;
    drop((stdin_r, stdout_w, stderr_w, report_w, status_w));

    // The report pipe closes on exec (O_CLOEXEC): EOF means the child is running the program.
    let mut report = [0u8; 8];
    let mut got = 0;
    while got < report.len() {
        // SAFETY: reading into the unfilled tail of a live local buffer.
        let n = unsafe {
            libc::read(
                report_r.as_raw_fd(),
                report[got..].as_mut_ptr().cast(),
                report.len() - got,
            )
        };
        if n == -1 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    if got == 0 {
        return Ok(Spawned {
            pid,
            stdin: stdin_w,
            stdout: stdout_r,
            stderr: stderr_r,
            status: status_r,
        });
    }
    let step = u32::from_ne_bytes([report[0], report[1], report[2], report[3]]);
    let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
    // Reap the failed child.
    let _ = wait4(pid);
    let what = match steps.get(step as usize) {
        Some(s) => format!("setup step {step} ({s:?})"),
        None => "exec".to_owned(),
    };
    Err(SandboxError::Setup {
        step: what,
        source: io::Error::from_raw_os_error(errno),
    })
}

#[derive(Clone, Copy)]
struct ChildFds {
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    report: RawFd,
    status: RawFd,
}

/// In the child: wire the pipes, run the setup, start the program, and stay as its init.
/// Never returns.
///
/// The child stays behind as a minimal init rather than becoming the program, so that the
/// program is not PID 1 of its namespace (where the kernel drops signals it sends itself, and
/// orphans would be left unreaped): init reaps every process reparented to it, and when the
/// program exits it reports the program's wait status and exits, which makes the kernel kill
/// whatever is left in the namespace.
#[allow(unsafe_code)]
fn child_after_clone(exec: &Exec, steps: &[setup::Step], fds: ChildFds) -> ! {
    let fail = |step: u32, errno: i32| -> ! {
        report_failure(fds.report, step, errno);
        // SAFETY: leaving without running any destructor or atexit handler of the parent's copy.
        unsafe { libc::_exit(126) }
    };
    for (from, to) in [(fds.stdin, 0), (fds.stdout, 1), (fds.stderr, 2)] {
        // SAFETY: dup2 on descriptors this process owns; the copy at 0..2 is not close-on-exec.
        if unsafe { libc::dup2(from, to) } == -1 {
            fail(u32::MAX, errno());
        }
    }
    // Keep only stdio and the two report pipes. Everything else this copy of the daemon holds
    // (other calls' pipes among them) must not stay open in init for the length of the call.
    let (low, high) = (fds.report.min(fds.status), fds.report.max(fds.status));
    for (first, last) in [
        (3, low - 1),
        (low + 1, high - 1),
        (high + 1, libc::c_int::MAX),
    ] {
        if first <= last {
            // SAFETY: closing a range of this process's own descriptors; integers only.
            unsafe {
                libc::syscall(
                    libc::SYS_close_range,
                    first as libc::c_uint,
                    last as libc::c_uint,
                    0 as libc::c_uint,
                )
            };
        }
    }
    if let Err((index, e)) = setup::apply(steps, &mut HostSys) {
        fail(index as u32, e.raw_os_error().unwrap_or(libc::EIO));
    }
    // SAFETY: the stack region lies inside `exec.stack`, which this process owns and does not
    // touch while the new process runs on it: CLONE_VFORK suspends us until it has called
    // execve or _exit. `exec_program` only reads `exec` and makes async-signal-safe calls.
    let program = unsafe {
        let top = exec.stack.as_ptr().add(exec.stack.len()) as usize & !0xf;
        libc::clone(
            exec_program,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            exec as *const Exec as *mut libc::c_void,
        )
    };
    if program == -1 {
        fail(u32::MAX, errno());
    }
    // The program has exec'd (or reported why not): let go of everything it reads or writes,
    // so that end-of-file on the daemon's side means the program and its children are done.
    // SAFETY: closing descriptors this process owns.
    unsafe {
        libc::close(fds.report);
        libc::close(0);
        libc::close(1);
        libc::close(2);
    }
    let mut status: libc::c_int = 0;
    loop {
        let mut reaped: libc::c_int = 0;
        // SAFETY: `reaped` is a live local the kernel writes the status into.
        let pid = unsafe { libc::waitpid(-1, &mut reaped, 0) };
        if pid == program {
            status = reaped;
            break;
        }
        if pid == -1 && errno() != libc::EINTR {
            break;
        }
    }
    // SAFETY: writing a local integer to the status pipe, then leaving.
    unsafe {
        libc::write(fds.status, (&status as *const libc::c_int).cast(), 4);
        libc::_exit(0)
    }
}

/// Runs on the program's fresh stack after the vfork-style clone: exec, or report and leave.
#[allow(unsafe_code)]
extern "C" fn exec_program(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Exec` that `child_after_clone` passed, alive and unmoved in the
    // shared address space until this process execs or exits.
    let exec = unsafe { &*(arg as *const Exec) };
    // SAFETY: the pointers are NUL-terminated arrays of valid C strings; prctl takes integers.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
        libc::execve(
            exec.program.as_ptr(),
            exec.argv.as_ptr(),
            exec.envp.as_ptr(),
        );
    }
    report_failure(exec.report, u32::MAX, errno());
    // SAFETY: leaving the failed process without unwinding into its parent's stack.
    unsafe { libc::_exit(127) }
}

#[allow(unsafe_code)]
fn report_failure(report: RawFd, step: u32, errno: i32) {
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&step.to_ne_bytes());
    buf[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: writing a local buffer to a pipe this process holds.
    unsafe {
        libc::write(report, buf.as_ptr().cast(), buf.len());
    }
}

#[allow(unsafe_code)]
fn read_status(pipe: &OwnedFd) -> Option<libc::c_int> {
    let mut buf = [0u8; 4];
    // SAFETY: reading at most 4 bytes into a local buffer; init has exited, so this cannot block.
    let n = unsafe { libc::read(pipe.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    (n == 4).then(|| libc::c_int::from_ne_bytes(buf))
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

#[allow(unsafe_code)]
fn wait4(pid: libc::pid_t) -> io::Result<(libc::c_int, libc::rusage)> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: rusage is a plain C struct of integers, for which all-zero is a valid value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers refer to live locals for the duration of the call, and `pid`
        // is our own unreaped child, so no other waiter can race us for it.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok((status, usage));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, wall_ms: u64) -> ChildSpec {
        ChildSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            cwd: "/".into(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            stdin: b"hello".to_vec(),
            limits: Limits {
                wall: Duration::from_millis(wall_ms),
                stdout_bytes: 1024,
                stderr_bytes: 16,
                setup: SetupLimits::default(),
            },
            isolation: None,
            seccomp: false,
        }
    }

    #[tokio::test]
    async fn echoes_stdin_and_reports_exit_code() {
        let f = spawn_and_wait(sh("cat; exit 3", 5000)).await.unwrap();
        assert_eq!(f.stdout, b"hello");
        assert_eq!(f.termination, Termination::Exited(3));
    }

    #[tokio::test]
    async fn environment_is_only_what_was_given() {
        let f = spawn_and_wait(sh("env", 5000)).await.unwrap();
        let env = String::from_utf8(f.stdout).unwrap();
        assert!(env.contains("PATH=/usr/bin:/bin"), "{env}");
        assert!(!env.contains("HOME="), "{env}");
    }

    #[tokio::test]
    async fn deadline_kills_the_whole_group() {
        let started = Instant::now();
        let f = spawn_and_wait(sh("sleep 30 & sleep 30", 200))
            .await
            .unwrap();
        assert_eq!(f.termination, Termination::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn stderr_is_capped_and_counted() {
        let f = spawn_and_wait(sh("printf '%040d' 0 >&2", 5000))
            .await
            .unwrap();
        assert_eq!(f.stderr.len(), 16);
        assert_eq!(f.stderr_dropped, 24);
    }

    #[tokio::test]
    async fn stdout_overflow_stops_the_child() {
        let f = spawn_and_wait(sh("yes", 10_000)).await.unwrap();
        assert!(f.stdout_overflow);
        assert_eq!(f.stdout.len(), 1024);
        assert_eq!(f.termination, Termination::Signaled(libc::SIGKILL));
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let mut spec = sh("true", 1000);
        spec.program = "/nonexistent/python".into();
        match spawn_and_wait(spec).await {
            Err(SandboxError::Setup { step, source }) => {
                assert_eq!(step, "exec");
                assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
            }
            other => panic!("{other:?}"),
        }
    }
}
