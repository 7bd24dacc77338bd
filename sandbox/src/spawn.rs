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
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::setup::{self, HostSys, Isolation, NetworkMode, SetupLimits};

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
    /// Descriptors the isolation names by number (prepared namespaces), kept open until the
    /// child is gone, so that their numbers cannot be closed or reused under it.
    pub hold: Vec<Arc<OwnedFd>>,
    /// Fork the program from this zygote instead of exec'ing it (isolated children only; see
    /// [`crate::zygote`]). `program` and `args` are then only what the forked process is told
    /// it runs.
    pub zygote: Option<Arc<crate::zygote::Zygote>>,
    /// The child's stdin instead of a pipe from the supervisor (a preload zygote's channel,
    /// see [`crate::preload`]); the request written to [`Prepared::run`]'s stdin then goes
    /// nowhere.
    pub stdin_fd: Option<Arc<OwnedFd>>,
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
    /// Where the child's latest progress record goes (see [`crate::progress`]); records are
    /// taken out of stdout whether or not anyone listens.
    pub progress: Option<Arc<watch::Sender<Option<Vec<u8>>>>>,
    /// Set to `true` to stop the child before its deadline (a cancelled job): its whole
    /// process group is killed, as at the deadline, and it ends `Signaled(SIGKILL)`.
    pub cancel: Option<watch::Receiver<bool>>,
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
    /// The first half of the logs' cap (all of them, when they fit).
    pub stderr: Vec<u8>,
    /// The last bytes of logs past the cap's first half, at most its other half.
    pub stderr_tail: Vec<u8>,
    /// Bytes between `stderr` and `stderr_tail`, read and not kept.
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
    #[error("could not fork the child from the zygote")]
    Zygote(#[source] crate::zygote::ZygoteError),
    #[error("could not fork the child from its preload zygote")]
    Preload(#[source] crate::preload::PreloadError),
}

/// Starts the child described by `spec`, gives it `spec.stdin`, and waits until it is gone.
pub async fn spawn_and_wait(spec: ChildSpec) -> Result<Finished, SandboxError> {
    let prepared = prepare(&spec).await?;
    prepared.run(spec.stdin, &spec.limits).await
}

/// A child that is set up and running its program, which has not been given its request yet.
/// Dropping it kills it.
#[derive(Debug)]
pub struct Prepared {
    target: Target,
    guard: KillOnDrop,
    init: tokio::task::JoinHandle<io::Result<(libc::c_int, libc::rusage)>>,
    stdin: tokio::net::unix::pipe::Sender,
    stdout: tokio::net::unix::pipe::Receiver,
    stderr: tokio::net::unix::pipe::Receiver,
    status: OwnedFd,
}

/// Starts the child described by `spec` (its `stdin` is not used) up to the point where its
/// program waits for its request: everything but the call itself, ahead of time.
pub async fn prepare(spec: &ChildSpec) -> Result<Prepared, SandboxError> {
    let filter = spec.seccomp.then(crate::seccomp::programs);
    let steps = setup::plan(
        &spec.limits.setup,
        spec.isolation.as_ref(),
        &spec.cwd,
        filter,
    );
    // A forked child gets the per-process part of the same plan; anything that cannot be
    // forked (no isolation, no identity of its own) fails here, before anything is started.
    let zygote = match (&spec.zygote, &spec.isolation) {
        (Some(z), Some(_)) => {
            let argv: Vec<&std::ffi::OsStr> = std::iter::once(spec.program.as_os_str())
                .chain(spec.args.iter().map(|a| a.as_os_str()))
                .collect();
            let request = crate::zygote::ForkRequest::from_plan(
                &steps,
                &spec.env,
                &argv,
                crate::zygote::landlock_abi(),
            )
            .map_err(SandboxError::Zygote)?;
            Some((Arc::clone(z), request))
        }
        _ => None,
    };
    let steps: Arc<[setup::Step]> = match zygote {
        Some(_) => crate::zygote::init_part(steps).into(),
        None => steps.into(),
    };
    let mut flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
    let mut keep_fd = None;
    let mut mount_template = -1;
    if let Some(iso) = &spec.isolation {
        // The cgroup namespace is made by a setup step, after the call's cgroups are joined.
        flags |= libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
        // With a template, init copies that namespace instead of the daemon's (a setup step).
        match iso.mount_template {
            Some(fd) => mount_template = fd,
            None => flags |= libc::CLONE_NEWNS,
        }
        match iso.network {
            NetworkMode::Host => {}
            NetworkMode::Fresh => flags |= libc::CLONE_NEWNET,
            NetworkMode::Join(fd) => keep_fd = Some(fd),
        }
    }
    let spawn_err = SandboxError::Spawn;
    let (stdin_r, stdin_w) = pipe().map_err(spawn_err)?;
    let stdin_r = match &spec.stdin_fd {
        Some(fd) => fd.try_clone().map_err(spawn_err)?,
        None => stdin_r,
    };
    let (stdout_r, stdout_w) = pipe().map_err(spawn_err)?;
    let (stderr_r, stderr_w) = pipe().map_err(spawn_err)?;
    let (report_r, report_w) = pipe().map_err(spawn_err)?;
    let (status_r, status_w) = pipe().map_err(spawn_err)?;
    let pid_cell = Arc::new(AtomicI32::new(0));
    let reaped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A forked child's init as a pidfd, made by the clone itself (`CLONE_PIDFD`): the zygote
    // enters exactly that process's namespaces, never a pid reused since. -1 until then, and
    // once taken.
    let pidfd_slot = Arc::new(AtomicI32::new(-1));
    // The zygote's copies of the call's ends: stdin, stdout, stderr and the report pipe.
    let forked_ends = match &zygote {
        Some(_) => Some(
            [&stdin_r, &stdout_w, &stderr_w, &report_w]
                .map(|fd| fd.try_clone())
                .into_iter()
                .collect::<io::Result<Vec<OwnedFd>>>()
                .map_err(spawn_err)?,
        ),
        None => None,
    };
    let launch = Launch {
        forked: zygote.is_some(),
        exec: Exec::new(&spec.program, &spec.args, &spec.env)?,
        steps: Arc::clone(&steps),
        fds: ChildFds {
            stdin: stdin_r.as_raw_fd(),
            stdout: stdout_w.as_raw_fd(),
            stderr: stderr_w.as_raw_fd(),
            report: report_w.as_raw_fd(),
            status: status_w.as_raw_fd(),
            netns: keep_fd.unwrap_or(-1),
            mount_template,
        },
        init_stack: vec![0u8; INIT_STACK_BYTES],
        // A forked program is not cloned by init: no stack for it.
        program_stack: if zygote.is_some() {
            Vec::new()
        } else {
            vec![0u8; PROGRAM_STACK_BYTES]
        },
        flags,
        pid: pid_cell.clone(),
        reaped: reaped.clone(),
        pidfd: zygote.as_ref().map(|_| pidfd_slot.clone()),
        _open: Open {
            _child_ends: [stdin_r, stdout_w, stderr_w, report_w, status_w],
            _held: spec.hold.clone(),
        },
    };

    // The child shares this address space until it exits (CLONE_VM | CLONE_VFORK), so nothing
    // of the daemon's memory is copied per call; the thread that clones it waits in the
    // kernel for as long as the call runs, then reaps it.
    // Whatever becomes of this future from here on (a caller that goes away drops it at any
    // await), init does not outlive it unless it is handed on as a `Prepared`.
    let mut cell_guard = KillCell(Some((pid_cell.clone(), reaped.clone(), pidfd_slot.clone())));
    let mut init = tokio::task::spawn_blocking(move || launch.run());
    let mut report =
        tokio::net::unix::pipe::Receiver::from_owned_fd(report_r).map_err(spawn_err)?;
    let mut record = [0u8; 8];
    // init may be gone before its report is read (a program that failed to exec): then what
    // it left in the pipe is still read, and its result is kept, not awaited twice.
    let mut init_done = None;
    let reported = tokio::select! {
        r = report.read_exact(&mut record) => r.is_ok(),
        done = &mut init => {
            init_done = Some(done);
            report.read_exact(&mut record).await.is_ok()
        }
    };
    // A forked child's init: its pidfd, and its pid read from that.
    let init_pidfd = match zygote {
        Some(_) if reported => take_pidfd(&pidfd_slot).inspect(|fd| {
            if let Some(pid) = pid_of(fd) {
                pid_cell.store(pid, Ordering::Release);
            }
        }),
        _ => None,
    };
    let pid = pid_cell.load(Ordering::Acquire);
    let (mut step, mut errno) = decode_record(&record);
    let mut reported = reported;
    if let (true, STARTED, Some((zygote, request)), Some(ends)) =
        (reported, step, zygote, forked_ends)
    {
        // init is waiting in the call's namespaces; the zygote forks the program into them,
        // unless init is already gone (then nothing is forked anywhere).
        let pidfd = match (init_done.is_some(), init_pidfd) {
            (false, Some(fd)) => Ok(fd),
            _ => Err(io::Error::from_raw_os_error(libc::ESRCH)),
        };
        let forked = match pidfd {
            Ok(pidfd) => tokio::task::spawn_blocking(move || {
                use std::os::fd::AsFd;
                zygote.fork(
                    &request,
                    [
                        ends[0].as_fd(),
                        ends[1].as_fd(),
                        ends[2].as_fd(),
                        ends[3].as_fd(),
                        pidfd.as_fd(),
                    ],
                )
            })
            .await
            .unwrap_or_else(|e| Err(crate::zygote::ZygoteError::Request(io::Error::other(e)))),
            Err(e) => Err(crate::zygote::ZygoteError::Request(e)),
        };
        if let Err(e) = forked {
            kill_child(pid);
            if init_done.is_none() {
                let _ = init.await;
            }
            return Err(SandboxError::Zygote(e));
        }
        // The forked process reports once it is sandboxed (or why it could not be); one that
        // died without a word is given up on after the zygote's reply deadline.
        let forked_report = async {
            match init_done {
                Some(_) => report.read_exact(&mut record).await.is_ok(),
                None => tokio::select! {
                    r = report.read_exact(&mut record) => r.is_ok(),
                    done = &mut init => {
                        init_done = Some(done);
                        report.read_exact(&mut record).await.is_ok()
                    }
                },
            }
        };
        reported = tokio::time::timeout(crate::zygote::REPLY_TIMEOUT, forked_report)
            .await
            .unwrap_or(false);
        (step, errno) = decode_record(&record);
    }
    if !reported || step != STARTED {
        if pid > 0 {
            kill_child(pid);
        }
        let finished = match init_done {
            Some(done) => done,
            None => init.await,
        };
        let source = match finished {
            Ok(Err(e)) => e,
            _ => io::Error::from_raw_os_error(if reported { errno } else { libc::ECHILD }),
        };
        let what = match (reported, step) {
            (false, _) => "start".to_owned(),
            (true, EXEC_FAILED) => "exec".to_owned(),
            (true, n) if n >= crate::zygote::STEP_BASE => {
                let name = crate::zygote::STEP_NAMES
                    .get((n - crate::zygote::STEP_BASE) as usize)
                    .unwrap_or(&"?");
                format!("the forked child's {name}")
            }
            (true, n) => match steps.get(n as usize) {
                Some(failed) => format!("setup step {n} ({})", failed.name()),
                None => format!("setup step {n}"),
            },
        };
        return Err(SandboxError::Setup { step: what, source });
    }
    // A program that already ran to its end: its reaped status is handed on as it is, never
    // awaited a second time.
    if let Some(done) = init_done {
        init = tokio::spawn(async move { done.map_err(io::Error::other)? });
    }
    // Should this child be dropped before it is reaped, it dies.
    let guard = KillOnDrop(Some(Target::Init(pid)));
    cell_guard.0 = None;
    let stdin = tokio::net::unix::pipe::Sender::from_owned_fd(stdin_w);
    let stdout = tokio::net::unix::pipe::Receiver::from_owned_fd(stdout_r);
    let stderr = tokio::net::unix::pipe::Receiver::from_owned_fd(stderr_r);
    let (stdin, stdout, stderr) = match (stdin, stdout, stderr) {
        (Ok(i), Ok(o), Ok(e)) => (i, o, e),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return Err(SandboxError::Spawn(e)),
    };
    Ok(Prepared {
        target: Target::Init(pid),
        guard,
        init,
        stdin,
        stdout,
        stderr,
        status: status_r,
    })
}

/// Whom a [`Prepared`] kills.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// The child's init, by pid: the supervisor reaps it, so until then the pid is its own.
    Init(libc::pid_t),
    /// A program forked by a preload zygote, by pidfd: its parent is the zygote, which reaps
    /// it, so its pid may name another process once it is gone.
    Forked(Arc<OwnedFd>),
}

impl Target {
    fn kill(&self) {
        match self {
            Target::Init(pid) => kill_child(*pid),
            Target::Forked(pidfd) => {
                signal_pidfd(pidfd, libc::SIGKILL);
            }
        }
    }
}

impl Prepared {
    /// A program forked by a preload zygote ([`crate::preload`]): `exited` resolves with its
    /// wait status once it is gone (and whatever it left in its cgroup is killed).
    pub(crate) fn forked(
        pidfd: Arc<OwnedFd>,
        exited: tokio::task::JoinHandle<io::Result<(libc::c_int, libc::rusage)>>,
        stdin_w: OwnedFd,
        stdout_r: OwnedFd,
        stderr_r: OwnedFd,
    ) -> Result<Prepared, SandboxError> {
        let stdin = tokio::net::unix::pipe::Sender::from_owned_fd(stdin_w);
        let stdout = tokio::net::unix::pipe::Receiver::from_owned_fd(stdout_r);
        let stderr = tokio::net::unix::pipe::Receiver::from_owned_fd(stderr_r);
        let (stdin, stdout, stderr) = match (stdin, stdout, stderr) {
            (Ok(i), Ok(o), Ok(e)) => (i, o, e),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                signal_pidfd(&pidfd, libc::SIGKILL);
                return Err(SandboxError::Spawn(e));
            }
        };
        // No status of init's: the pipe's write end is closed at once.
        let (status_r, _) = pipe().map_err(SandboxError::Spawn)?;
        let target = Target::Forked(pidfd);
        Ok(Prepared {
            guard: KillOnDrop(Some(target.clone())),
            target,
            init: exited,
            stdin,
            stdout,
            stderr,
            status: status_r,
        })
    }
}

impl Prepared {
    /// Kills the child and waits until it is reaped.
    pub async fn kill_and_wait(self) {
        self.target.kill();
        let _ = self.init.await;
    }

    /// Whether the child is still waiting for its request (it may have died meanwhile).
    pub fn is_alive(&self) -> bool {
        !self.init.is_finished()
    }

    /// Gives the child its request and supervises it until it is gone; the deadline and the
    /// usage's wall time count from now.
    pub async fn run(self, request: Vec<u8>, limits: &Limits) -> Result<Finished, SandboxError> {
        let Prepared {
            target,
            mut guard,
            mut init,
            stdin,
            stdout,
            stderr,
            status: status_r,
        } = self;
        let started = Instant::now();
        tokio::spawn(async move {
            let mut stdin = stdin;
            // A child that exits without reading its request is not an error of ours.
            let _ = stdin.write_all(&request).await;
            let _ = stdin.shutdown().await;
        });

        let (stop_tx, stop_rx) = watch::channel(false);
        let out = tokio::spawn(collect(
            stdout,
            limits.stdout_bytes,
            Overflow::Kill(target.clone()),
            stop_rx.clone(),
            Some(crate::progress::Records::new(limits.progress.clone())),
        ));
        let err = tokio::spawn(collect(
            stderr,
            limits.stderr_bytes,
            Overflow::Discard,
            stop_rx,
            None,
        ));

        let mut timed_out = false;
        let waited = tokio::select! {
            r = &mut init => r,
            _ = tokio::time::sleep(limits.wall) => {
                timed_out = true;
                target.kill();
                init.await
            }
            () = cancelled(limits.cancel.clone()) => {
                target.kill();
                init.await
            }
        };
        let (status, rusage) = waited
            .map_err(|e| SandboxError::Wait(io::Error::other(e)))?
            .map_err(SandboxError::Wait)?;
        guard.0 = None;
        let wall = started.elapsed();
        // Without a PID namespace, whatever the program left in its process group goes with it
        // (with one, the kernel has already killed everything when init exited; a preload
        // zygote's fork leaves nothing in its cgroup once `init` is done).
        if let Target::Init(pid) = target {
            kill_group(pid);
        }

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
        let status = read_status(&status_r).unwrap_or(status);
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
            stderr_tail: err.tail.into(),
            stderr_dropped: err.dropped,
            usage: Usage {
                wall_ms: wall.as_millis() as u64,
                cpu_ms: cpu.as_millis() as u64,
                peak_memory_bytes: (rusage.ru_maxrss as u64).saturating_mul(1024),
            },
        })
    }
}

#[derive(Clone)]
enum Overflow {
    /// Past the cap the output is useless (an answer too large): stop the child at once.
    Kill(Target),
    /// Past the cap the output is only counted (logs).
    Discard,
}

struct Collected {
    kept: Vec<u8>,
    overflowed: bool,
    dropped: u64,
    /// The last bytes read past the head (logs only).
    tail: std::collections::VecDeque<u8>,
}

/// Resolves once `cancel` is set; never without one (or once its sender is gone unset).
async fn cancelled(cancel: Option<watch::Receiver<bool>>) {
    if let Some(mut rx) = cancel {
        if rx.wait_for(|set| *set).await.is_ok() {
            return;
        }
    }
    std::future::pending::<()>().await;
}

/// Reads `pipe` into a buffer capped at `cap`; with `records`, progress records are taken out
/// first (they never count against the cap).
async fn collect(
    mut pipe: impl AsyncRead + Unpin,
    cap: usize,
    overflow: Overflow,
    mut stop: watch::Receiver<bool>,
    mut records: Option<crate::progress::Records>,
) -> Collected {
    let mut c = Collected {
        kept: Vec::new(),
        overflowed: false,
        dropped: 0,
        tail: std::collections::VecDeque::new(),
    };
    // An answer is kept whole or not at all; logs keep their first half of the cap and their
    // last half, where a failure shows.
    let (head_cap, tail_cap) = match overflow {
        Overflow::Kill(_) => (cap, 0),
        Overflow::Discard => (cap - cap / 2, cap / 2),
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
        let mut answer = Vec::new();
        let data = match records.as_mut() {
            Some(r) => {
                r.split(&buf[..n], &mut answer);
                &answer[..]
            }
            None => &buf[..n],
        };
        let n = data.len();
        let room = head_cap.saturating_sub(c.kept.len());
        c.kept.extend_from_slice(&data[..n.min(room)]);
        if n > room {
            c.overflowed = true;
            if let Overflow::Kill(target) = &overflow {
                c.dropped += (n - room) as u64;
                target.kill();
                break;
            }
            // Logs: the newest bytes past the head are the tail; what the tail lets go of is
            // dropped (and counted).
            c.tail.extend(&data[room..]);
            if c.tail.len() > tail_cap {
                let excess = c.tail.len() - tail_cap;
                c.tail.drain(..excess);
                c.dropped += excess as u64;
            }
        }
    }
    c
}

#[allow(unsafe_code)]
fn kill_child(pid: libc::pid_t) {
    // SAFETY: kill takes integers by value; ESRCH (already gone) is expected and ignored. In a
    // PID namespace, killing its init takes every process in it along.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    kill_group(pid);
}

#[allow(unsafe_code)]
fn kill_group(pid: libc::pid_t) {
    // SAFETY: as above. init leads its own process group (`Step::NewSession`), which the
    // program and whatever it starts without a new session belong to.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}

/// Kills init, once its pid is known, when dropped while still armed: covers the start, before
/// a [`KillOnDrop`] takes over.
/// With a pidfd (a forked program's init), by that; it is closed with the guard.
struct KillCell(
    Option<(
        Arc<AtomicI32>,
        Arc<std::sync::atomic::AtomicBool>,
        Arc<AtomicI32>,
    )>,
);

impl Drop for KillCell {
    fn drop(&mut self) {
        let Some((pid, reaped, pidfd)) = &self.0 else {
            return;
        };
        if let Some(fd) = take_pidfd(pidfd) {
            signal_pidfd(&fd, libc::SIGKILL);
            return;
        }
        let pid = pid.load(Ordering::Acquire);
        if pid > 0 && !reaped.load(Ordering::Acquire) {
            kill_child(pid);
        }
    }
}

/// The pidfd the clone wrote into `slot`, now owned by the caller (once).
#[allow(unsafe_code)]
fn take_pidfd(slot: &AtomicI32) -> Option<OwnedFd> {
    let fd = slot.swap(-1, Ordering::AcqRel);
    // SAFETY: the kernel installed this descriptor in our table for this clone, and the swap
    // hands it to exactly one owner.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The pid a pidfd refers to, from `/proc/self/fdinfo`.
fn pid_of(pidfd: &OwnedFd) -> Option<libc::pid_t> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|p| p.trim().parse().ok())
        .filter(|&p| p > 0)
}

#[allow(unsafe_code)]
pub(crate) fn signal_pidfd(pidfd: &OwnedFd, signal: libc::c_int) -> bool {
    // SAFETY: pidfd_send_signal takes a descriptor and integers; no info struct is passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0 as libc::c_uint,
        )
    };
    rc == 0
}

/// Kills the child when dropped while still armed.
#[derive(Debug)]
struct KillOnDrop(Option<Target>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(target) = &self.0 {
            target.kill();
        }
    }
}

/// How long (seconds) the init of a forked child waits for its program before it gives up.
const FORKED_PROGRAM_WAIT: u32 = 10;

/// The stack init runs on, in the daemon's address space: the setup steps and one clone.
const INIT_STACK_BYTES: usize = 256 * 1024;
/// The stack the program's process runs on between its clone and its exec.
const PROGRAM_STACK_BYTES: usize = 64 * 1024;

/// Report records (step, errno) on the report pipe: a failed setup step by index, or these.
const STARTED: u32 = u32::MAX - 1;
const EXEC_FAILED: u32 = u32::MAX;

fn decode_record(record: &[u8; 8]) -> (u32, i32) {
    (
        u32::from_ne_bytes([record[0], record[1], record[2], record[3]]),
        i32::from_ne_bytes([record[4], record[5], record[6], record[7]]),
    )
}

/// argv and envp as C arrays, built before the clone: nothing may allocate after it.
struct Exec {
    program: CString,
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

// SAFETY: the raw pointers point into `_strings`, which `Exec` owns and never changes; moving
// an `Exec` to another thread moves the strings with it.
#[allow(unsafe_code)]
unsafe impl Send for Exec {}

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
        })
    }
}

#[derive(Clone, Copy)]
struct ChildFds {
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    report: RawFd,
    status: RawFd,
    /// A network namespace to enter, or -1.
    netns: RawFd,
    /// A mount namespace to copy, or -1.
    mount_template: RawFd,
}

/// Everything init needs, owned by the thread that clones it and alive until init is gone.
struct Launch {
    /// The program is forked from the zygote into init's namespaces, not cloned by init.
    forked: bool,
    exec: Exec,
    steps: Arc<[setup::Step]>,
    fds: ChildFds,
    init_stack: Vec<u8>,
    program_stack: Vec<u8>,
    flags: libc::c_int,
    pid: Arc<AtomicI32>,
    /// Set once init is reaped: its pid may then name another process.
    reaped: Arc<std::sync::atomic::AtomicBool>,
    /// Where the clone writes init's pidfd, for a forked program (instead of its pid).
    pidfd: Option<Arc<AtomicI32>>,
    _open: Open,
}

/// The descriptors `ChildFds` names by number, owned with the launch: whatever happens to the
/// task that started it (a caller that hangs up drops it before the clone may have run), none
/// is closed, nor its number reused, until init is gone. init closes its own copies of the pipe
/// ends before it waits for the program, so end-of-file still means the program is done once
/// init has exited.
struct Open {
    _child_ends: [OwnedFd; 5],
    _held: Vec<Arc<OwnedFd>>,
}

#[allow(unsafe_code)]
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl Launch {
    /// Clones init and blocks until it has exited, then reaps it. Runs on a blocking thread.
    #[allow(unsafe_code)]
    fn run(self) -> io::Result<(libc::c_int, libc::rusage)> {
        let top = stack_top(&self.init_stack);
        // The kernel writes init's pid there, or for a forked program its pidfd (`clone`
        // takes one slot for either; the pid is read back from the pidfd).
        let (slot, slot_flag) = match &self.pidfd {
            Some(pidfd) => (pidfd.as_ptr(), libc::CLONE_PIDFD),
            None => (self.pid.as_ptr(), libc::CLONE_PARENT_SETTID),
        };
        // Every signal blocked across the clone, as posix_spawn does: init starts with the
        // daemon's handlers (a copy), and none of them may run in init before it has reset
        // them. This thread only waits for init, so nothing is missed here meanwhile: the
        // daemon's other threads take its signals.
        let mut all = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        let mut before = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: both sets are written by the kernel/libc before they are read.
        let blocked = unsafe {
            libc::sigfillset(all.as_mut_ptr());
            libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), before.as_mut_ptr()) == 0
        };
        // SAFETY: init runs on `init_stack`, inside `self`, which outlives it: CLONE_VFORK keeps
        // this thread (and so `self`) in place until init has exited. init shares this address
        // space but writes only to its own stack; it reads `self` and makes only
        // async-signal-safe calls. CLONE_PARENT_SETTID (CLONE_PIDFD) stores init's pid (a
        // pidfd of it) in `slot` before init runs, where the supervising task reads it once
        // init has reported.
        let pid = unsafe {
            libc::clone(
                init_main,
                top,
                self.flags | slot_flag,
                &self as *const Launch as *mut libc::c_void,
                slot,
            )
        };
        let cloned = if pid == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(pid)
        };
        if blocked {
            // SAFETY: `before` was filled by the pthread_sigmask call above.
            unsafe {
                libc::pthread_sigmask(libc::SIG_SETMASK, before.as_ptr(), std::ptr::null_mut());
            }
        }
        let ended = wait4(cloned?);
        self.reaped.store(true, Ordering::Release);
        ended
    }
}

fn stack_top(stack: &[u8]) -> *mut libc::c_void {
    // Stacks grow down on every architecture falra builds for; keep 16-byte alignment.
    ((stack.as_ptr() as usize + stack.len()) & !0xf) as *mut libc::c_void
}

/// init's entry point on its own stack.
#[allow(unsafe_code)]
extern "C" fn init_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Launch` that `Launch::run` passed; it stays alive and unmoved
    // while init runs (its thread is suspended by CLONE_VFORK).
    let launch = unsafe { &*(arg as *const Launch) };
    child_after_clone(launch)
}

/// In init: wire the pipes, run the setup, start the program, and stay as its init.
/// Never returns.
///
/// init stays behind rather than becoming the program, so that the program is not PID 1 of its
/// namespace (where the kernel drops signals it sends itself, and orphans would be left
/// unreaped): init reaps every process reparented to it, and when the program exits it
/// reports the program's wait status and exits, which makes the kernel kill whatever is left
/// in the namespace.
#[allow(unsafe_code)]
fn child_after_clone(launch: &Launch) -> ! {
    let fds = launch.fds;
    // Signals arrive blocked (see `Launch::run`). Every handler copied from the daemon goes
    // back to its default before anything could run one.
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: a zeroed sigaction is SIG_DFL with an empty mask; rt_sigaction is
        // async-signal-safe and fails harmlessly for numbers the kernel reserves.
        unsafe {
            let mut default: libc::sigaction = std::mem::zeroed();
            default.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &default, std::ptr::null_mut());
        }
    }
    let fail = |step: u32, errno: i32| -> ! {
        report(fds.report, step, errno);
        // SAFETY: leaving without running any destructor: the memory belongs to the daemon.
        unsafe { libc::_exit(126) }
    };
    for (from, to) in [(fds.stdin, 0), (fds.stdout, 1), (fds.stderr, 2)] {
        // SAFETY: dup2 on descriptors of init's own table; the copy at 0..2 is not close-on-exec.
        if unsafe { libc::dup2(from, to) } == -1 {
            fail(EXEC_FAILED, errno());
        }
    }
    // Keep only stdio, the two report pipes and the namespaces to enter. Everything else
    // this copy of the daemon's descriptor table holds (other calls' pipes among them) must not
    // stay open for the call.
    let mut keep = [fds.report, fds.status, fds.netns, fds.mount_template];
    keep.sort_unstable();
    let mut first = 3;
    for fd in keep
        .into_iter()
        .filter(|&fd| fd >= 3)
        .chain([libc::c_int::MAX])
    {
        let last = if fd == libc::c_int::MAX { fd } else { fd - 1 };
        let range = (first, last);
        first = fd.saturating_add(1);
        let (first, last) = range;
        if first <= last {
            // SAFETY: closing a range of init's own descriptors; integers only.
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
    if let Err((index, e)) = setup::apply(&launch.steps, &mut HostSys) {
        fail(index as u32, e.raw_os_error().unwrap_or(libc::EIO));
    }
    if launch.forked {
        wait_for_forked_program(fds);
    }
    // The program starts with no signal blocked (the mask survives exec). init itself, PID 1
    // of the namespace with default dispositions, gets no signal from the call's processes.
    // SAFETY: an empty set, filled by sigemptyset before use; sigprocmask is async-signal-safe.
    unsafe {
        let mut none = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(none.as_mut_ptr());
        libc::sigprocmask(libc::SIG_SETMASK, none.as_ptr(), std::ptr::null_mut());
    }
    // SAFETY: the program runs on `program_stack`, which nothing else uses, until it has called
    // execve or _exit (CLONE_VFORK suspends init until then). `exec_program` only reads `exec`
    // and makes async-signal-safe calls.
    let program = unsafe {
        libc::clone(
            exec_program,
            stack_top(&launch.program_stack),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            launch as *const Launch as *mut libc::c_void,
        )
    };
    if program == -1 {
        fail(EXEC_FAILED, errno());
    }
    // The program has exec'd, or reported why not (before this record, so its record wins).
    report_started(fds);
    let mut status: libc::c_int = 0;
    loop {
        let mut reaped: libc::c_int = 0;
        // SAFETY: `reaped` is a local the kernel writes the status into.
        let pid = unsafe { libc::waitpid(-1, &mut reaped, 0) };
        if pid == program {
            status = reaped;
            break;
        }
        if pid == -1 && errno() != libc::EINTR {
            break;
        }
    }
    report_status_and_exit(fds, status)
}

/// init, set up: report so, and let go of everything the program reads or writes, so that
/// end-of-file on the daemon's side means the program and its children are done.
#[allow(unsafe_code)]
fn report_started(fds: ChildFds) {
    report(fds.report, STARTED, 0);
    // SAFETY: closing descriptors of init's own table.
    unsafe {
        libc::close(fds.report);
        libc::close(0);
        libc::close(1);
        libc::close(2);
    }
}

/// init's last act: the program's wait status to the daemon, then leave.
#[allow(unsafe_code)]
fn report_status_and_exit(fds: ChildFds, status: libc::c_int) -> ! {
    // SAFETY: writing a local integer to the status pipe, then leaving.
    unsafe {
        libc::write(fds.status, (&status as *const libc::c_int).cast(), 4);
        libc::_exit(0)
    }
}

/// init of a forked child: report, let go of the pipes, and reap until the program the zygote
/// forks into this PID namespace ([`crate::zygote::PROGRAM_PID`]) has ended. It becomes init's
/// child when the zygote's first fork exits (a zombie included), and its wait status is
/// reported as an exec'd program's is. SIGCHLD stays blocked, so it waits in `sigtimedwait`.
/// Never returns.
#[allow(unsafe_code)]
fn wait_for_forked_program(fds: ChildFds) -> ! {
    report_started(fds);
    let mut status: libc::c_int = 0;
    let mut childless_seconds = 0;
    // SAFETY: a set filled by sigemptyset/sigaddset before use.
    let child_signal = unsafe {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGCHLD);
        set.assume_init()
    };
    // Everything but SIGCHLD unblocked: with default dispositions, the kernel drops what the
    // call's processes send to their namespace's init (a blocked signal would be queued).
    // SAFETY: `child_signal` is a filled set; sigprocmask is async-signal-safe.
    unsafe {
        libc::sigprocmask(libc::SIG_SETMASK, &child_signal, std::ptr::null_mut());
    }
    loop {
        let mut reaped: libc::c_int = 0;
        // SAFETY: `reaped` is a local the kernel writes the status into.
        let pid = unsafe { libc::waitpid(-1, &mut reaped, libc::WNOHANG) };
        if pid == crate::zygote::PROGRAM_PID {
            status = reaped;
            break;
        }
        if pid > 0 {
            continue;
        }
        let childless = pid == -1 && errno() == libc::ECHILD;
        if pid == -1 && !childless && errno() != libc::EINTR {
            break;
        }
        // Nothing to reap yet: sleep until a child changes state, or a second passes. The
        // program becomes init's child within milliseconds of the zygote's fork; an init that
        // has had no child for `FORKED_PROGRAM_WAIT` seconds was never given one (its start
        // was abandoned) and leaves.
        let second = libc::timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        // SAFETY: both pointers refer to live locals; the info pointer may be null.
        let woken = unsafe { libc::sigtimedwait(&child_signal, std::ptr::null_mut(), &second) };
        if woken == -1 && childless {
            childless_seconds += 1;
            if childless_seconds >= FORKED_PROGRAM_WAIT {
                status = libc::SIGKILL;
                break;
            }
        }
    }
    report_status_and_exit(fds, status)
}

/// Runs on the program's own stack after its clone: exec, or report and leave.
#[allow(unsafe_code)]
extern "C" fn exec_program(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Launch` init runs from, alive and unmoved until this process
    // execs or exits (init is suspended until then).
    let launch = unsafe { &*(arg as *const Launch) };
    let exec = &launch.exec;
    // SAFETY: the pointers are NUL-terminated arrays of valid C strings; prctl takes integers.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
        libc::execve(
            exec.program.as_ptr(),
            exec.argv.as_ptr(),
            exec.envp.as_ptr(),
        );
    }
    // exec failed; this process's copy of init's descriptors still holds the report pipe.
    report(launch.fds.report, EXEC_FAILED, errno());
    // SAFETY: leaving the failed process without unwinding into init's stack.
    unsafe { libc::_exit(127) }
}

#[allow(unsafe_code)]
fn report(fd: RawFd, step: u32, errno: i32) {
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&step.to_ne_bytes());
    buf[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: writing a local buffer to a pipe this process holds.
    unsafe {
        libc::write(fd, buf.as_ptr().cast(), buf.len());
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
        let rc = unsafe { libc::wait4(pid, &mut status, libc::__WALL, &mut usage) };
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
                progress: None,
                cancel: None,
            },
            isolation: None,
            seccomp: false,
            hold: Vec::new(),
            zygote: None,
            stdin_fd: None,
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
    async fn a_cancel_kills_the_group_before_its_deadline() {
        let mut spec = sh("sleep 30 & sleep 30", 20_000);
        let (tx, rx) = watch::channel(false);
        spec.limits.cancel = Some(rx);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            tx.send_replace(true);
        });
        let started = Instant::now();
        let f = spawn_and_wait(spec).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(f.termination, Termination::Signaled(libc::SIGKILL));
    }

    #[tokio::test]
    async fn progress_records_reach_the_sink_not_the_answer() {
        let mut spec = sh(r#"printf '\036{"n":1}\n\036{"n":2}\nanswer\n'"#, 5_000);
        let (tx, rx) = watch::channel(None);
        spec.limits.progress = Some(Arc::new(tx));
        let f = spawn_and_wait(spec).await.unwrap();
        assert_eq!(f.stdout, b"answer\n");
        assert_eq!(rx.borrow().as_deref(), Some(&b"{\"n\":2}"[..]));
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
    async fn stderr_keeps_its_head_and_tail_and_counts_the_middle() {
        let f = spawn_and_wait(sh("printf 'head%032dtail' 0 >&2", 5000))
            .await
            .unwrap();
        assert_eq!(f.stderr, b"head0000");
        assert_eq!(f.stderr_tail, b"0000tail");
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
    async fn a_prepared_child_waits_for_its_request_and_its_deadline_starts_then() {
        let spec = sh("cat; exit 4", 300);
        let prepared = prepare(&spec).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(prepared.is_alive());
        let f = prepared.run(b"late".to_vec(), &spec.limits).await.unwrap();
        assert_eq!(f.stdout, b"late");
        assert_eq!(f.termination, Termination::Exited(4));
    }

    #[tokio::test]
    async fn dropping_a_prepared_child_kills_it() {
        let spec = sh("cat", 5000);
        let prepared = prepare(&spec).await.unwrap();
        let Target::Init(pid) = prepared.target else {
            panic!("an exec'd child is killed by its init's pid");
        };
        drop(prepared);
        let gone = async {
            loop {
                let state =
                    std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                if state.is_empty() || state.contains(") Z ") {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), gone)
            .await
            .unwrap();
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
