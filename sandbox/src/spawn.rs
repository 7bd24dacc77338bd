//! Starting one child, feeding it, supervising it and collecting what it left.
//!
//! The supervision contract: stdin gets the request and is closed; stdout and stderr are read
//! concurrently into capped buffers (stderr keeps reading past its cap, counting what it drops,
//! so a chatty child never blocks on a full pipe); the wall-clock deadline kills the child's
//! whole process group; when the child exits, whatever it left behind in its group is killed too.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::setup::{self, HostSys, SetupLimits};

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
    #[error("could not wait for the child process")]
    Wait(#[source] io::Error),
}

/// Starts the child described by `spec` and waits until it is gone.
pub async fn spawn_and_wait(spec: ChildSpec) -> Result<Finished, SandboxError> {
    let steps = setup::plan(&spec.limits.setup);
    let mut cmd = std::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[allow(unsafe_code)]
    // SAFETY: the hook runs in the forked child before exec; `setup::apply` walks a slice that
    // was allocated before the fork and makes only async-signal-safe syscalls (no allocation,
    // no locks), which is what `pre_exec` requires in a multi-threaded parent.
    unsafe {
        cmd.pre_exec(move || setup::apply(&steps, &mut HostSys));
    }

    let started = Instant::now();
    let mut child = cmd.spawn().map_err(SandboxError::Spawn)?;
    let pid = child.id() as libc::pid_t;
    let pipes = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let (Some(stdin), Some(stdout), Some(stderr)) = pipes else {
        kill_group(pid);
        return Err(SandboxError::Spawn(io::Error::other("child pipes missing")));
    };
    let converted = (
        tokio::process::ChildStdin::from_std(stdin),
        tokio::process::ChildStdout::from_std(stdout),
        tokio::process::ChildStderr::from_std(stderr),
    );
    let (stdin, stdout, stderr) = match converted {
        (Ok(i), Ok(o), Ok(e)) => (i, o, e),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            kill_group(pid);
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
        Overflow::KillGroup(pid),
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
            kill_group(pid);
            waiter.await
        }
    };
    let (status, rusage) = waited
        .map_err(|e| SandboxError::Wait(io::Error::other(e)))?
        .map_err(SandboxError::Wait)?;
    let wall = started.elapsed();
    // Whatever the child left in its process group goes with it.
    kill_group(pid);

    // Normally both pipes reach EOF as the child exits. If something that escaped the group
    // still holds them, stop reading after a short grace: the child's own output is in by then.
    tokio::spawn(async move {
        tokio::time::sleep(DRAIN_GRACE).await;
        let _ = stop_tx.send(true);
    });
    let (out, err) = (out.await, err.await);
    let out = out.map_err(|e| SandboxError::Wait(io::Error::other(e)))?;
    let err = err.map_err(|e| SandboxError::Wait(io::Error::other(e)))?;

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
    KillGroup(libc::pid_t),
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
            if let Overflow::KillGroup(pid) = overflow {
                kill_group(pid);
                break;
            }
        }
    }
    c
}

#[allow(unsafe_code)]
fn kill_group(pgid: libc::pid_t) {
    // SAFETY: kill takes integers by value. The group id is the child's pid, which leads its
    // own group since `Step::NewSession`; ESRCH (group already gone) is expected and ignored.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
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
        assert!(matches!(
            spawn_and_wait(spec).await,
            Err(SandboxError::Spawn(_))
        ));
    }
}
