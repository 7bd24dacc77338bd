//! Preload zygotes: an interpreter per tenant version that has imported the modules its policy
//! names (`"preload": ["pandas"]`), forking each call's process from that state.
//!
//! Unlike the node's zygote ([`crate::zygote`]), a preload zygote has run tenant code (the
//! modules' top level, whatever they import), so nothing it does afterwards is trusted. It is
//! therefore started as an ordinary sandboxed child ([`crate::prepare`], the whole plan: its
//! own PID, mount, IPC and UTS namespaces, the tenant's network namespace and read-only root,
//! the tenant's uid, no capability, `no_new_privs`, Landlock, seccomp, a cgroup of the tenant's
//! that counts its memory), with one end of a `SOCK_SEQPACKET` socket as its stdin, and it
//! never gets a privilege back. Everything a forked call may do it could do as the zygote.
//!
//! Per call the daemon sends the zygote the call's pipes and one end of a new socket, and the
//! zygote forks. The call's process, before it runs anything of the call (`runner.py`,
//! `_preload_call`): takes its stdio, closes every other descriptor, starts a session, makes
//! its own directory under `/tmp`, and restricts itself further — a Landlock domain of its own
//! in which it writes only beneath that directory and reads what the zygote reads except the
//! rest of `/tmp`, and, where the kernel has it (ABI 6), cannot signal or reach the abstract
//! sockets of any process outside its domain (its zygote, the other calls); a seccomp filter
//! that refuses System V IPC objects (the IPC namespace is the zygote's, see
//! [`crate::seccomp::DENIED_TO_PRELOADED_CALLS`]). It then says hello on the socket. The
//! kernel attaches the sender's pid to that message (`SO_PASSCRED`), translated into the
//! daemon's PID namespace, so the daemon learns the process's pid from the kernel, not from
//! the zygote; it opens a pidfd of it, checks that it lives in the zygote's PID namespace,
//! writes it into the call's cgroups (resource limits and usage as for any call), checks it is
//! still the same process, and only then tells it to go on. The deadline, the kill and the
//! usage are the daemon's, by pidfd and cgroup; what the zygote reports (the wait status) can
//! only misstate the tenant's own call. When the process is gone, whatever it left in its
//! cgroup is killed.
//!
//! What a preloaded call shares with the other calls of its zygote (the same tenant, version
//! and policy, nobody else) is stated in docs/security.md: the zygote's PID and IPC namespaces
//! and `/tmp` mount (each call sees only its own directory), and whatever the preloaded
//! modules hold in memory, as each call's own copy.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;

use crate::cgroup::Members;
use crate::zygote::{hex, send, seqpacket_pair, set_receive_timeout};
use crate::{Prepared, SandboxError};

/// How long a forked call's process has to say hello once the zygote got the request.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// After a call's process is gone, how long its zygote has to report its wait status.
const STATUS_GRACE: Duration = Duration::from_secs(2);
/// `SIGKILL`'s wait status: a process whose status nobody reported was killed.
const KILLED: libc::c_int = libc::SIGKILL;

#[derive(Debug, thiserror::Error)]
pub enum PreloadError {
    #[error("could not talk to the preload zygote")]
    Channel(#[source] io::Error),
    #[error("the preloaded modules could not be imported: {0}")]
    Import(String),
    #[error("the preload zygote did not become ready in time")]
    Timeout,
    #[error("the preload zygote answered something else than expected")]
    Protocol,
    #[error("the preload zygote is out of service")]
    Retired,
    #[error("the forked call's process could not set itself up: {0}")]
    Setup(String),
    #[error("the forked call's process is not in its zygote's PID namespace")]
    Stranger,
    #[error("could not place the forked call's process in its cgroup")]
    Cgroup(#[source] crate::cgroup::CgroupError),
}

/// What the zygote is told at its start: the modules, and what each call adds to its sandbox.
#[derive(Debug, serde::Serialize)]
struct Hello<'a> {
    modules: &'a [String],
    nr: serde_json::Value,
    seccomp: String,
    landlock: Option<CallLandlock>,
}

/// The Landlock domain each call's process adds (see the module's comment).
#[derive(Debug, serde::Serialize)]
struct CallLandlock {
    /// File-system rights the domain handles, and its scopes (ABI 6: signals, abstract sockets).
    handled: u64,
    scoped: u64,
    read_only: u64,
    read_write: u64,
    /// On each device node (not on `/dev`: `/dev/shm` is beneath it).
    device_file: u64,
}

/// `LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | LANDLOCK_SCOPE_SIGNAL`.
const SCOPES: u64 = 0b11;

/// The Landlock ABI from which a call of a preload zygote gets a domain of its own that also
/// scopes signals and abstract sockets (Linux 6.12): without it, the calls of one zygote could
/// signal each other and their zygote, so no preload zygote is made.
pub const MIN_LANDLOCK_ABI: i32 = 6;

/// Whether this kernel lets preloaded calls be kept apart ([`MIN_LANDLOCK_ABI`]).
pub fn supported() -> bool {
    crate::zygote::landlock_abi().is_some_and(|abi| abi >= MIN_LANDLOCK_ABI)
}

fn call_landlock(abi: Option<i32>) -> Option<CallLandlock> {
    use crate::landlock::{access, handled, rights, Grant};
    let abi = abi?;
    let all = handled(abi);
    Some(CallLandlock {
        handled: all,
        scoped: if abi >= MIN_LANDLOCK_ABI { SCOPES } else { 0 },
        read_only: rights(Grant::ReadOnly, abi),
        read_write: rights(Grant::ReadWrite, abi),
        device_file: (access::READ_FILE | access::WRITE_FILE)
            | (all & (access::TRUNCATE | access::IOCTL_DEV)),
    })
}

/// A running preload zygote's channel. The zygote's process itself (its init, its cgroup) is
/// the caller's to hold; dropping that kills the zygote and every call forked from it.
#[derive(Debug)]
pub struct PreloadZygote {
    channel: Mutex<OwnedFd>,
    /// The zygote's pid in the daemon's PID namespace (from the kernel, with its hello).
    pid: libc::pid_t,
    /// Its PID namespace (`st_dev`, `st_ino` of `/proc/<pid>/ns/pid`).
    pid_ns: (u64, u64),
    retired: AtomicBool,
    forks: AtomicU64,
    next: AtomicU64,
    started: Instant,
}

/// A new channel: the daemon's end (receiving the sender's credentials) and the zygote's, to
/// be its stdin ([`crate::ChildSpec::stdin_fd`]).
pub fn channel() -> io::Result<(OwnedFd, Arc<OwnedFd>)> {
    let (ours, theirs) = seqpacket_pair()?;
    pass_credentials(ours.as_fd())?;
    Ok((ours, Arc::new(theirs)))
}

impl PreloadZygote {
    /// Tells the zygote on `channel` what to import and waits (blocking, up to `timeout`) until
    /// it has: call it off the async threads. An import that fails, hangs or leaves threads
    /// running is an error; the caller stops the zygote's process.
    pub fn handshake(
        channel: OwnedFd,
        modules: &[String],
        timeout: Duration,
    ) -> Result<PreloadZygote, PreloadError> {
        let hello = Hello {
            modules,
            nr: serde_json::json!({
                "seccomp": libc::SYS_seccomp,
                "landlock_create_ruleset": libc::SYS_landlock_create_ruleset,
                "landlock_add_rule": libc::SYS_landlock_add_rule,
                "landlock_restrict_self": libc::SYS_landlock_restrict_self,
            }),
            seccomp: hex(crate::seccomp::preloaded_call_program()),
            landlock: call_landlock(crate::zygote::landlock_abi()),
        };
        let body = serde_json::to_vec(&hello).map_err(|e| PreloadError::Channel(e.into()))?;
        set_receive_timeout(channel.as_fd(), timeout).map_err(PreloadError::Channel)?;
        send(channel.as_fd(), &body, &[]).map_err(PreloadError::Channel)?;
        let mut buf = vec![0u8; 4096];
        let (n, pid) = match receive_with_pid(channel.as_fd(), &mut buf) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(PreloadError::Timeout)
            }
            Err(e) => return Err(PreloadError::Channel(e)),
        };
        let answer: serde_json::Value =
            serde_json::from_slice(&buf[..n]).map_err(|_| PreloadError::Protocol)?;
        if let Some(error) = answer.get("error").and_then(|e| e.as_str()) {
            return Err(PreloadError::Import(error.chars().take(2000).collect()));
        }
        let (true, Some(pid)) = (answer.get("ready") == Some(&serde_json::json!(true)), pid) else {
            return Err(PreloadError::Protocol);
        };
        let pid_ns = pid_namespace(pid).map_err(PreloadError::Channel)?;
        set_nonblocking(channel.as_fd()).map_err(PreloadError::Channel)?;
        Ok(PreloadZygote {
            channel: Mutex::new(channel),
            pid,
            pid_ns,
            retired: AtomicBool::new(false),
            forks: AtomicU64::new(0),
            next: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    /// Forks a call's process: placed among `members` (the call's cgroup, when it has one),
    /// waiting for its request on stdin.
    pub async fn fork(&self, members: Option<Members>) -> Result<Prepared, SandboxError> {
        let fail = |e: PreloadError| SandboxError::Preload(e);
        if self.retired.load(Ordering::Relaxed) {
            return Err(fail(PreloadError::Retired));
        }
        let io_err = |e: io::Error| fail(PreloadError::Channel(e));
        let (stdin_r, stdin_w) = crate::spawn::pipe().map_err(io_err)?;
        let (stdout_r, stdout_w) = crate::spawn::pipe().map_err(io_err)?;
        let (stderr_r, stderr_w) = crate::spawn::pipe().map_err(io_err)?;
        let (call, theirs) = seqpacket_pair().map_err(io_err)?;
        pass_credentials(call.as_fd()).map_err(io_err)?;
        set_nonblocking(call.as_fd()).map_err(io_err)?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        {
            let channel = self.channel.lock().unwrap_or_else(|p| p.into_inner());
            let fds: [RawFd; 4] = [
                stdin_r.as_raw_fd(),
                stdout_w.as_raw_fd(),
                stderr_w.as_raw_fd(),
                theirs.as_raw_fd(),
            ];
            // Never waits: a zygote that stopped reading its requests is out of service.
            if let Err(e) = send(channel.as_fd(), format!("{{\"n\": {n}}}").as_bytes(), &fds) {
                self.retired.store(true, Ordering::Relaxed);
                return Err(io_err(e));
            }
        }
        drop((stdin_r, stdout_w, stderr_w, theirs));
        let call = register(call, tokio::io::Interest::READABLE).map_err(io_err)?;
        let mut buf = [0u8; 512];
        let hello = tokio::time::timeout(REPLY_TIMEOUT, receive_async(&call, &mut buf)).await;
        let (len, pid) = match hello {
            Err(_) => {
                self.retired.store(true, Ordering::Relaxed);
                return Err(fail(PreloadError::Timeout));
            }
            Ok(Err(e)) => return Err(io_err(e)),
            Ok(Ok(got)) => got,
        };
        let message = &buf[..len];
        let pid = match (message, pid) {
            (b"h", Some(pid)) if pid != self.pid && pid > 0 => pid,
            ([b'e', why @ ..], _) => {
                return Err(fail(PreloadError::Setup(
                    String::from_utf8_lossy(why).chars().take(200).collect(),
                )))
            }
            _ => return Err(fail(PreloadError::Protocol)),
        };
        let pidfd = Arc::new(pidfd_open(pid).map_err(io_err)?);
        let placed = (|| {
            // By number, but the pidfd pins the process: checked alive after the writes, it
            // was the process at that number all along.
            if pid_namespace(pid).map_err(PreloadError::Channel)? != self.pid_ns {
                return Err(PreloadError::Stranger);
            }
            if let Some(members) = &members {
                members.place(pid).map_err(PreloadError::Cgroup)?;
            }
            // Alive after the writes: the pid was this process's all along (a pid is not
            // reused while its process lives, and the pidfd was opened before the checks).
            if !crate::spawn::signal_pidfd(&pidfd, 0) {
                return Err(PreloadError::Setup("gone before it was placed".into()));
            }
            Ok(())
        })();
        match placed {
            Ok(()) => {}
            // Not the zygote's (its pid was taken by another process since it spoke): nothing
            // is done to it.
            Err(e @ PreloadError::Stranger) => return Err(fail(e)),
            Err(e) => {
                crate::spawn::signal_pidfd(&pidfd, libc::SIGKILL);
                return Err(fail(e));
            }
        }
        if let Err(e) = send(call.get_ref().as_fd(), b"g", &[]) {
            crate::spawn::signal_pidfd(&pidfd, libc::SIGKILL);
            return Err(io_err(e));
        }
        self.forks.fetch_add(1, Ordering::Relaxed);
        let exited = tokio::spawn(exited(Arc::clone(&pidfd), call, self.pid, members));
        Prepared::forked(pidfd, exited, stdin_w, stdout_r, stderr_r)
    }

    /// Whether the zygote still takes requests (its process may have died: the holder checks).
    pub fn is_usable(&self) -> bool {
        !self.retired.load(Ordering::Relaxed)
    }

    /// Whether the zygote is still one thread (`/proc/<pid>/status` under `proc_root`): a
    /// preloaded module's at-fork hooks run in it before every fork, and a thread they leave
    /// would be copied into no call (and its fork could hold a lock forever).
    pub fn is_one_thread(&self, proc_root: &Path) -> bool {
        std::fs::read_to_string(proc_root.join(self.pid.to_string()).join("status")).is_ok_and(
            |status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("Threads:"))
                    .is_some_and(|n| n.trim() == "1")
            },
        )
    }

    /// Takes the zygote out of service.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    pub fn forks(&self) -> u64 {
        self.forks.load(Ordering::Relaxed)
    }

    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    /// The zygote's resident memory, from `/proc/<pid>/status` under `proc_root`.
    pub fn rss_bytes(&self, proc_root: &Path) -> Option<u64> {
        crate::zygote::rss_of(self.pid, proc_root)
    }
}

/// Waits until the call's process is gone, takes its wait status from its zygote (or
/// `SIGKILL` when none comes), and kills whatever the call left in its cgroup.
async fn exited(
    pidfd: Arc<OwnedFd>,
    call: AsyncFd<OwnedFd>,
    zygote: libc::pid_t,
    members: Option<Members>,
) -> io::Result<(libc::c_int, libc::rusage)> {
    // A pidfd polls readable once its process has exited.
    let gone = register(Arc::clone(&pidfd), tokio::io::Interest::READABLE)?;
    let _ = gone.readable().await?;
    let status = tokio::time::timeout(STATUS_GRACE, async {
        let mut buf = [0u8; 64];
        loop {
            match receive_async(&call, &mut buf).await {
                // Only the zygote's word counts: the call's own messages are the call's.
                Ok((5, Some(pid))) if pid == zygote && buf[0] == b's' => {
                    return Some(i32::from_ne_bytes([buf[1], buf[2], buf[3], buf[4]]));
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
    .unwrap_or(KILLED);
    if let Some(members) = members {
        let _ = tokio::task::spawn_blocking(move || members.kill_all()).await;
    }
    // SAFETY: rusage is a plain C struct for which all-zero is a valid value; the usage comes
    // from the call's cgroup.
    #[allow(unsafe_code)]
    let rusage: libc::rusage = unsafe { std::mem::zeroed() };
    Ok((status, rusage))
}

/// `fd` registered with the runtime's reactor.
#[allow(unsafe_code)]
fn register<T: AsRawFd>(fd: T, interest: tokio::io::Interest) -> io::Result<AsyncFd<T>> {
    // SAFETY: `fd` is an `OwnedFd` (or an `Arc` of one) that the returned `AsyncFd` owns: its
    // descriptor is open, and stays open and the same, for as long as the `AsyncFd` lives.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into())
}

fn pid_namespace(pid: libc::pid_t) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(format!("/proc/{pid}/ns/pid"))?;
    Ok((meta.dev(), meta.ino()))
}

#[allow(unsafe_code)]
fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes integers and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just made for us and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

#[allow(unsafe_code)]
fn pass_credentials(sock: BorrowedFd<'_>) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `on` is a live int of the size given, read by the kernel during the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[allow(unsafe_code)]
fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we hold, with integer arguments.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One message and the pid the kernel attached to it (in the daemon's PID namespace; `None`
/// when the sender is not visible there).
#[allow(unsafe_code)]
fn receive_with_pid(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Option<libc::pid_t>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: CMSG_SPACE computes a size from an integer.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::ucred>() as u32) } as usize;
    // Room for the credentials and, should a sender pass descriptors, a few of those (which
    // are closed below); u64 words keep the buffer aligned for a cmsghdr.
    let mut control = vec![0u64; (space + 64).div_ceil(8)];
    loop {
        // SAFETY: msghdr is a plain C struct for which all-zero is a valid (empty) value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len() * 8;
        // SAFETY: `msg` points at `iov` (into `buf`) and `control`, both live and writable
        // for the call; MSG_CMSG_CLOEXEC keeps any passed descriptor from being inherited.
        let rc = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if rc == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut pid = None;
        // SAFETY: the kernel filled `msg_controllen` bytes of `control` with well-formed
        // headers; CMSG_FIRSTHDR/NXTHDR walk them within that length, and each payload is read
        // unaligned, as the size its header says.
        unsafe {
            let mut header = libc::CMSG_FIRSTHDR(&msg);
            while !header.is_null() {
                let h = &*header;
                if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_CREDENTIALS {
                    let cred: libc::ucred =
                        std::ptr::read_unaligned(libc::CMSG_DATA(header).cast::<libc::ucred>());
                    pid = (cred.pid > 0).then_some(cred.pid);
                } else if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(header);
                    let len = h.cmsg_len - libc::CMSG_LEN(0) as usize;
                    for i in 0..len / 4 {
                        let fd = std::ptr::read_unaligned(data.add(i * 4).cast::<RawFd>());
                        drop(OwnedFd::from_raw_fd(fd));
                    }
                }
                header = libc::CMSG_NXTHDR(&msg, header);
            }
        }
        return Ok((rc as usize, pid));
    }
}

async fn receive_async(
    sock: &AsyncFd<OwnedFd>,
    buf: &mut [u8],
) -> io::Result<(usize, Option<libc::pid_t>)> {
    loop {
        let mut ready = sock.readable().await?;
        match ready.try_io(|fd| receive_with_pid(fd.get_ref().as_fd(), buf)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_call_gets_its_own_landlock_scopes_where_the_kernel_has_them() {
        assert!(call_landlock(None).is_none());
        let old = call_landlock(Some(5)).unwrap();
        assert_eq!(old.scoped, 0);
        let new = call_landlock(Some(6)).unwrap();
        assert_eq!(new.scoped, SCOPES);
        // A device node gets file rights only (a rule on a file may carry no others).
        assert_eq!(new.device_file & crate::landlock::access::READ_DIR, 0);
        assert_ne!(new.device_file & crate::landlock::access::WRITE_FILE, 0);
        // Read-only grants no write, and a call's own directory everything handled.
        assert_eq!(new.read_only & crate::landlock::access::WRITE_FILE, 0);
        assert_eq!(new.read_write, new.handled);
    }

    #[tokio::test]
    async fn the_kernel_names_the_sender_of_a_message() {
        let (ours, theirs) = channel().unwrap();
        set_nonblocking(ours.as_fd()).unwrap();
        send(theirs.as_fd(), b"h", &[]).unwrap();
        let ours = register(ours, tokio::io::Interest::READABLE).unwrap();
        let mut buf = [0u8; 8];
        let (n, pid) = receive_async(&ours, &mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"h");
        assert_eq!(pid, Some(std::process::id() as libc::pid_t));
    }
}
