//! The seccomp policy: the system calls a tenant's process may make, as reviewed data.
//!
//! The policy is an allow-list ([`ALLOWED`]): what CPython, its standard library and common
//! wheels (numpy, pandas, the falra binary's own built-in children) use, taken from Docker's
//! default profile and then narrowed. Anything not listed fails with `EPERM`, so a kernel
//! interface added next year is closed until someone reviews it. Three calls are allowed only
//! with arguments checked: `clone` without namespace flags, `socket` for the families in
//! [`SOCKET_FAMILIES`] (and netlink for routing only), and `clone3`, which fails with `ENOSYS`
//! so that libc falls back to `clone` (a filter cannot read `clone3`'s flags, which sit in
//! memory). [`NOTABLY_DENIED`] names what is left out on purpose and why, so a reviewer sees
//! the decision and the tests hold it.
//!
//! The program is compiled by libseccomp (the library Docker, runc, systemd and Podman use),
//! not by hand, with its binary-tree layout: a filter is attached once per call, and the kernel
//! evaluates it for every system call number at attach time to cache the constant answers, so
//! a linear chain of some 300 comparisons would cost each call about a millisecond of CPU
//! before its program even starts (`seccompiler`, which emits linear chains, was measured at
//! 0.96 ms per attach here; the tree at a few tens of microseconds). A foreign architecture
//! kills the process; so does an x32 system call number.

use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext};

/// A system call, and why it is (or is not) on the list.
pub struct Syscall {
    pub nr: libc::c_long,
    pub name: &'static str,
    pub why: &'static str,
}

macro_rules! syscalls {
    ($($name:ident: $why:literal,)*) => {
        &[$(Syscall { nr: libc::$name, name: stringify!($name), why: $why },)*]
    };
}

/// The reviewed allow-list (x86_64 numbers via `libc`), unconditional entries.
pub const ALLOWED: &[Syscall] = syscalls! {
    // Files and descriptors.
    SYS_read: "I/O", SYS_write: "I/O", SYS_readv: "I/O", SYS_writev: "I/O",
    SYS_pread64: "I/O", SYS_pwrite64: "I/O", SYS_preadv: "I/O", SYS_pwritev: "I/O",
    SYS_preadv2: "I/O", SYS_pwritev2: "I/O", SYS_lseek: "I/O",
    SYS_open: "opening files", SYS_openat: "opening files", SYS_openat2: "opening files",
    SYS_creat: "opening files", SYS_close: "descriptors", SYS_close_range: "descriptors",
    SYS_dup: "descriptors", SYS_dup2: "descriptors", SYS_dup3: "descriptors",
    SYS_fcntl: "descriptors", SYS_ioctl: "terminals, FIONREAD and the like",
    SYS_flock: "file locks", SYS_pipe: "pipes", SYS_pipe2: "pipes",
    SYS_stat: "metadata", SYS_fstat: "metadata", SYS_lstat: "metadata",
    SYS_newfstatat: "metadata", SYS_statx: "metadata", SYS_statfs: "metadata",
    SYS_fstatfs: "metadata", SYS_access: "metadata", SYS_faccessat: "metadata",
    SYS_faccessat2: "metadata", SYS_readlink: "metadata", SYS_readlinkat: "metadata",
    SYS_getdents: "listing directories", SYS_getdents64: "listing directories",
    SYS_getcwd: "the working directory", SYS_chdir: "the working directory",
    SYS_fchdir: "the working directory",
    SYS_mkdir: "changing files in /tmp", SYS_mkdirat: "changing files in /tmp",
    SYS_rmdir: "changing files in /tmp", SYS_unlink: "changing files in /tmp",
    SYS_unlinkat: "changing files in /tmp", SYS_rename: "changing files in /tmp",
    SYS_renameat: "changing files in /tmp", SYS_renameat2: "changing files in /tmp",
    SYS_link: "changing files in /tmp", SYS_linkat: "changing files in /tmp",
    SYS_symlink: "changing files in /tmp", SYS_symlinkat: "changing files in /tmp",
    SYS_mknod: "fifos in /tmp", SYS_mknodat: "fifos in /tmp",
    SYS_truncate: "changing files in /tmp", SYS_ftruncate: "changing files in /tmp",
    SYS_fallocate: "changing files in /tmp", SYS_chmod: "modes of its own files",
    SYS_fchmod: "modes of its own files", SYS_fchmodat: "modes of its own files",
    SYS_fchmodat2: "modes of its own files", SYS_chown: "fails without CAP_CHOWN",
    SYS_fchown: "fails without CAP_CHOWN", SYS_lchown: "fails without CAP_CHOWN",
    SYS_fchownat: "fails without CAP_CHOWN", SYS_umask: "file creation mask",
    SYS_utime: "timestamps", SYS_utimes: "timestamps", SYS_utimensat: "timestamps",
    SYS_futimesat: "timestamps",
    SYS_fsync: "flushing", SYS_fdatasync: "flushing", SYS_sync: "flushing",
    SYS_syncfs: "flushing", SYS_sync_file_range: "flushing",
    SYS_fadvise64: "read-ahead hints", SYS_readahead: "read-ahead hints",
    SYS_sendfile: "shutil copies", SYS_copy_file_range: "shutil copies",
    SYS_splice: "zero-copy pipes", SYS_tee: "zero-copy pipes",
    SYS_getxattr: "extended attributes", SYS_lgetxattr: "extended attributes",
    SYS_fgetxattr: "extended attributes", SYS_listxattr: "extended attributes",
    SYS_llistxattr: "extended attributes", SYS_flistxattr: "extended attributes",
    SYS_setxattr: "extended attributes", SYS_lsetxattr: "extended attributes",
    SYS_fsetxattr: "extended attributes", SYS_removexattr: "extended attributes",
    SYS_lremovexattr: "extended attributes", SYS_fremovexattr: "extended attributes",
    SYS_inotify_init: "file watching", SYS_inotify_init1: "file watching",
    SYS_inotify_add_watch: "file watching", SYS_inotify_rm_watch: "file watching",
    SYS_memfd_create: "anonymous files (cffi, JITs)",
    // Memory.
    SYS_brk: "memory", SYS_mmap: "memory", SYS_munmap: "memory", SYS_mremap: "memory",
    SYS_mprotect: "memory", SYS_madvise: "memory", SYS_mincore: "memory",
    SYS_msync: "memory", SYS_mlock: "bounded by RLIMIT_MEMLOCK",
    SYS_mlock2: "bounded by RLIMIT_MEMLOCK", SYS_munlock: "bounded by RLIMIT_MEMLOCK",
    SYS_mlockall: "bounded by RLIMIT_MEMLOCK", SYS_munlockall: "bounded by RLIMIT_MEMLOCK",
    SYS_membarrier: "memory barriers (JITs, liburcu)", SYS_pkey_alloc: "memory protection keys",
    SYS_pkey_free: "memory protection keys", SYS_pkey_mprotect: "memory protection keys",
    // Processes and threads.
    SYS_execve: "running programs", SYS_execveat: "running programs",
    SYS_fork: "subprocesses (no flags to check)", SYS_vfork: "subprocesses (no flags)",
    SYS_exit: "exiting", SYS_exit_group: "exiting", SYS_wait4: "waiting for children",
    SYS_waitid: "waiting for children", SYS_kill: "signals, within its PID namespace",
    SYS_tkill: "signals", SYS_tgkill: "signals", SYS_pidfd_open: "subprocess (3.12+)",
    SYS_pidfd_send_signal: "subprocess (3.12+)",
    SYS_rt_sigaction: "signals", SYS_rt_sigprocmask: "signals", SYS_rt_sigreturn: "signals",
    SYS_rt_sigpending: "signals", SYS_rt_sigsuspend: "signals", SYS_rt_sigtimedwait: "signals",
    SYS_rt_sigqueueinfo: "signals", SYS_rt_tgsigqueueinfo: "signals",
    SYS_sigaltstack: "signals", SYS_signalfd: "signals", SYS_signalfd4: "signals",
    SYS_pause: "signals", SYS_restart_syscall: "signals",
    SYS_futex: "threads", SYS_futex_waitv: "threads", SYS_set_robust_list: "threads",
    SYS_get_robust_list: "threads", SYS_set_tid_address: "threads",
    SYS_arch_prctl: "thread-local storage", SYS_rseq: "glibc's restartable sequences",
    SYS_prctl: "thread names, no_new_privs", SYS_gettid: "identity",
    SYS_getpid: "identity", SYS_getppid: "identity", SYS_getpgid: "identity",
    SYS_getpgrp: "identity", SYS_getsid: "identity", SYS_setpgid: "process groups",
    SYS_setsid: "sessions", SYS_getuid: "identity", SYS_geteuid: "identity",
    SYS_getgid: "identity", SYS_getegid: "identity", SYS_getresuid: "identity",
    SYS_getresgid: "identity", SYS_getgroups: "identity",
    SYS_setuid: "fails without CAP_SETUID", SYS_setgid: "fails without CAP_SETGID",
    SYS_setreuid: "fails without CAP_SETUID", SYS_setregid: "fails without CAP_SETGID",
    SYS_setresuid: "fails without CAP_SETUID", SYS_setresgid: "fails without CAP_SETGID",
    SYS_setgroups: "fails without CAP_SETGID", SYS_setfsuid: "fails without CAP_SETUID",
    SYS_setfsgid: "fails without CAP_SETGID", SYS_capget: "reading its (empty) capabilities",
    SYS_capset: "dropping capabilities further", SYS_getrlimit: "limits",
    SYS_setrlimit: "lowering its limits", SYS_prlimit64: "limits",
    SYS_getrusage: "usage", SYS_times: "usage", SYS_getpriority: "priority",
    SYS_setpriority: "lowering its priority", SYS_ioprio_get: "I/O priority",
    SYS_ioprio_set: "lowering its I/O priority",
    SYS_sched_yield: "scheduling", SYS_sched_getaffinity: "cpu counts (os.cpu_count)",
    SYS_sched_setaffinity: "pinning threads", SYS_sched_getparam: "scheduling",
    SYS_sched_setparam: "fails without CAP_SYS_NICE", SYS_sched_getscheduler: "scheduling",
    SYS_sched_setscheduler: "fails without CAP_SYS_NICE", SYS_sched_getattr: "scheduling",
    SYS_sched_setattr: "fails without CAP_SYS_NICE",
    SYS_sched_get_priority_max: "scheduling", SYS_sched_get_priority_min: "scheduling",
    SYS_sched_rr_get_interval: "scheduling", SYS_getcpu: "scheduling",
    SYS_seccomp: "adding stricter filters of its own", SYS_landlock_create_ruleset: "stricter rules of its own",
    SYS_landlock_add_rule: "stricter rules of its own", SYS_landlock_restrict_self: "stricter rules of its own",
    // Time.
    SYS_clock_gettime: "time", SYS_clock_getres: "time", SYS_clock_nanosleep: "sleeping",
    SYS_nanosleep: "sleeping", SYS_gettimeofday: "time", SYS_time: "time",
    SYS_alarm: "timers", SYS_getitimer: "timers", SYS_setitimer: "timers",
    SYS_timer_create: "timers", SYS_timer_settime: "timers", SYS_timer_gettime: "timers",
    SYS_timer_getoverrun: "timers", SYS_timer_delete: "timers",
    SYS_timerfd_create: "timers", SYS_timerfd_settime: "timers", SYS_timerfd_gettime: "timers",
    // Waiting for events.
    SYS_poll: "event loops", SYS_ppoll: "event loops", SYS_select: "event loops",
    SYS_pselect6: "event loops", SYS_epoll_create: "event loops",
    SYS_epoll_create1: "event loops", SYS_epoll_ctl: "event loops",
    SYS_epoll_wait: "event loops", SYS_epoll_pwait: "event loops",
    SYS_epoll_pwait2: "event loops", SYS_eventfd: "event loops", SYS_eventfd2: "event loops",
    // Sockets (creation is checked below): loopback, or the egress gateway.
    SYS_socketpair: "AF_UNIX pairs (multiprocessing)", SYS_connect: "sockets",
    SYS_bind: "sockets", SYS_listen: "sockets", SYS_accept: "sockets",
    SYS_accept4: "sockets", SYS_getsockname: "sockets", SYS_getpeername: "sockets",
    SYS_getsockopt: "sockets", SYS_setsockopt: "sockets", SYS_shutdown: "sockets",
    SYS_sendto: "sockets", SYS_recvfrom: "sockets", SYS_sendmsg: "sockets",
    SYS_recvmsg: "sockets", SYS_sendmmsg: "sockets", SYS_recvmmsg: "sockets",
    // System V IPC, in the call's own IPC namespace (multiprocessing, shared memory).
    SYS_shmget: "own IPC namespace", SYS_shmat: "own IPC namespace",
    SYS_shmdt: "own IPC namespace", SYS_shmctl: "own IPC namespace",
    SYS_semget: "own IPC namespace", SYS_semop: "own IPC namespace",
    SYS_semtimedop: "own IPC namespace", SYS_semctl: "own IPC namespace",
    SYS_msgget: "own IPC namespace", SYS_msgsnd: "own IPC namespace",
    SYS_msgrcv: "own IPC namespace", SYS_msgctl: "own IPC namespace",
    // The machine, as its namespaces show it.
    SYS_uname: "platform", SYS_sysinfo: "memory totals", SYS_getrandom: "randomness",
};

/// Left out on purpose: each fails with `EPERM`. Not the whole complement of [`ALLOWED`] (that
/// is every other number), but the calls a reviewer should see were decided.
pub const NOTABLY_DENIED: &[Syscall] = syscalls! {
    SYS_ptrace: "inspecting or controlling other processes",
    SYS_process_vm_readv: "reading another process's memory",
    SYS_process_vm_writev: "writing another process's memory",
    SYS_process_madvise: "acting on another process's memory",
    SYS_kcmp: "comparing kernel objects of other processes",
    SYS_pidfd_getfd: "stealing descriptors from other processes",
    SYS_mount: "changing the filesystem view", SYS_umount2: "changing the filesystem view",
    SYS_pivot_root: "changing the filesystem root", SYS_chroot: "changing the filesystem root",
    SYS_fsopen: "new mount API", SYS_fsconfig: "new mount API", SYS_fsmount: "new mount API",
    SYS_fspick: "new mount API", SYS_move_mount: "new mount API",
    SYS_open_tree: "new mount API", SYS_mount_setattr: "new mount API",
    SYS_unshare: "new namespaces", SYS_setns: "entering other namespaces",
    SYS_keyctl: "kernel keyrings are not namespaced",
    SYS_add_key: "kernel keyrings are not namespaced",
    SYS_request_key: "kernel keyrings are not namespaced",
    SYS_bpf: "loading programs into the kernel",
    SYS_perf_event_open: "performance counters: side channels and a history of bugs",
    SYS_userfaultfd: "a staple of kernel exploit races",
    SYS_io_uring_setup: "io_uring: a large, often-exploited attack surface",
    SYS_io_uring_enter: "io_uring: a large, often-exploited attack surface",
    SYS_io_uring_register: "io_uring: a large, often-exploited attack surface",
    SYS_io_setup: "Linux AIO: one call can reserve the host-wide fs.aio-max-nr",
    SYS_io_submit: "Linux AIO", SYS_io_getevents: "Linux AIO (io_pgetevents, 333, is not on the list either)",
    SYS_io_cancel: "Linux AIO", SYS_io_destroy: "Linux AIO",
    SYS_mq_open: "POSIX queues count against a per-user host limit",
    SYS_mq_unlink: "POSIX queues", SYS_mq_timedsend: "POSIX queues",
    SYS_mq_timedreceive: "POSIX queues", SYS_mq_notify: "POSIX queues",
    SYS_mq_getsetattr: "POSIX queues",
    SYS_init_module: "loading kernel modules", SYS_finit_module: "loading kernel modules",
    SYS_delete_module: "unloading kernel modules", SYS_kexec_load: "replacing the kernel",
    SYS_kexec_file_load: "replacing the kernel", SYS_reboot: "rebooting the host",
    SYS_swapon: "host swap configuration", SYS_swapoff: "host swap configuration",
    SYS_acct: "host process accounting", SYS_settimeofday: "the host clock",
    SYS_clock_settime: "the host clock", SYS_clock_adjtime: "the host clock",
    SYS_adjtimex: "the host clock", SYS_syslog: "the kernel log",
    SYS_quotactl: "host disk quotas",
    SYS_open_by_handle_at: "opening files by handle bypasses the mount namespace",
    SYS_name_to_handle_at: "file handles: pairs with open_by_handle_at",
    SYS_lookup_dcookie: "kernel profiling interface", SYS_vhangup: "terminal control",
    SYS_iopl: "raw I/O port access", SYS_ioperm: "raw I/O port access",
    SYS_modify_ldt: "segment descriptors: old exploit surface",
    SYS_personality: "changes how the kernel parses later calls",
    SYS_uselib: "obsolete loader interface", SYS_sethostname: "host identity",
    SYS_setdomainname: "host identity", SYS_vmsplice: "page-splicing bugs (Dirty Pipe)",
    SYS_remap_file_pages: "deprecated, emulated in the kernel",
    SYS_fanotify_init: "filesystem-wide monitoring", SYS_fanotify_mark: "filesystem-wide monitoring",
    SYS_mbind: "NUMA placement of host memory", SYS_set_mempolicy: "NUMA placement",
    SYS_migrate_pages: "moving another process's pages", SYS_move_pages: "moving pages",
    SYS_memfd_secret: "memory the kernel cannot see",
};

/// Namespace flags that `clone` may not be given.
const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWTIME) as u64;

/// The socket families a call may create. `AF_NETLINK` is allowed for `NETLINK_ROUTE` only
/// (libc reads interface lists through it, and in the call's own network namespace it sees only
/// loopback); raw packets, kernel crypto, VM sockets and the rest are not.
pub const SOCKET_FAMILIES: &[(libc::c_int, &str)] = &[
    (libc::AF_UNIX, "local sockets"),
    (libc::AF_INET, "IPv4"),
    (libc::AF_INET6, "IPv6"),
];

/// One classic BPF instruction, laid out as the kernel's `struct sock_filter`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockFilter {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// Why the policy could not be compiled (a libseccomp that refuses it: a bug or a broken host).
#[derive(Debug, thiserror::Error)]
#[error("the seccomp policy could not be compiled: {0}")]
pub struct CompileError(String);

fn err(e: impl std::fmt::Display) -> CompileError {
    CompileError(e.to_string())
}

/// The policy as a libseccomp filter context.
fn filter() -> Result<ScmpFilterContext, CompileError> {
    let mut ctx = ScmpFilterContext::new(ScmpAction::Errno(libc::EPERM)).map_err(err)?;
    // Only the native architecture; anything else, x32 included, kills the process.
    ctx.set_act_badarch(ScmpAction::KillProcess).map_err(err)?;
    ctx.set_ctl_optimize(2).map_err(err)?;
    for s in ALLOWED {
        ctx.add_rule(ScmpAction::Allow, s.nr as i32).map_err(err)?;
    }
    ctx.add_rule_conditional(
        ScmpAction::Allow,
        libc::SYS_clone as i32,
        &[ScmpArgCompare::new(
            0,
            ScmpCompareOp::MaskedEqual(NAMESPACE_FLAGS),
            0,
        )],
    )
    .map_err(err)?;
    for (family, _) in SOCKET_FAMILIES {
        ctx.add_rule_conditional(
            ScmpAction::Allow,
            libc::SYS_socket as i32,
            &[ScmpArgCompare::new(0, ScmpCompareOp::Equal, *family as u64)],
        )
        .map_err(err)?;
    }
    ctx.add_rule_conditional(
        ScmpAction::Allow,
        libc::SYS_socket as i32,
        &[
            ScmpArgCompare::new(0, ScmpCompareOp::Equal, libc::AF_NETLINK as u64),
            ScmpArgCompare::new(2, ScmpCompareOp::Equal, libc::NETLINK_ROUTE as u64),
        ],
    )
    .map_err(err)?;
    ctx.add_rule(ScmpAction::Errno(libc::ENOSYS), libc::SYS_clone3 as i32)
        .map_err(err)?;
    Ok(ctx)
}

/// What a call forked from a preload zygote may not do on top of [`ALLOWED`]: it shares its
/// zygote's IPC namespace with the other calls of that zygote, so System V shared memory,
/// semaphores and message queues (which outlive the process that makes them) cannot be made,
/// rather than left for the next call to find, and those the zygote itself made at import
/// cannot be used (see docs/security.md).
pub const DENIED_TO_PRELOADED_CALLS: &[Syscall] = syscalls! {
    SYS_shmget: "a segment would outlive the call", SYS_semget: "a set would outlive the call",
    SYS_msgget: "a queue would outlive the call",
    // And those the zygote made at import are nobody's call's to use.
    SYS_shmat: "shared with the zygote's other calls", SYS_shmctl: "shared with the zygote's other calls",
    SYS_semop: "shared with the zygote's other calls", SYS_semtimedop: "shared with the zygote's other calls",
    SYS_semctl: "shared with the zygote's other calls", SYS_msgsnd: "shared with the zygote's other calls",
    SYS_msgrcv: "shared with the zygote's other calls", SYS_msgctl: "shared with the zygote's other calls",
};

/// The filter a preloaded call adds to the policy's (filters stack: both apply).
fn preloaded_call_filter() -> Result<ScmpFilterContext, CompileError> {
    let mut ctx = ScmpFilterContext::new(ScmpAction::Allow).map_err(err)?;
    ctx.set_act_badarch(ScmpAction::KillProcess).map_err(err)?;
    for s in DENIED_TO_PRELOADED_CALLS {
        ctx.add_rule(ScmpAction::Errno(libc::EPERM), s.nr as i32)
            .map_err(err)?;
    }
    Ok(ctx)
}

/// The extra program a call forked from a preload zygote installs, built once.
pub fn preloaded_call_program() -> &'static [SockFilter] {
    static PROGRAM: std::sync::OnceLock<Vec<SockFilter>> = std::sync::OnceLock::new();
    PROGRAM.get_or_init(|| {
        preloaded_call_filter()
            .and_then(|ctx| export(&ctx))
            .expect("the preloaded calls' filter compiles")
    })
}

/// Compiles the policy into the program(s) to install, in order.
pub fn compile() -> Result<Vec<Vec<SockFilter>>, CompileError> {
    Ok(vec![export(&filter()?)?])
}

fn export(ctx: &ScmpFilterContext) -> Result<Vec<SockFilter>, CompileError> {
    let (mut reader, writer) = std::io::pipe().map_err(err)?;
    // The program is far below a pipe's capacity; the writer is closed before reading.
    let exported = ctx.export_bpf(&writer).map_err(err);
    drop(writer);
    exported?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut bytes).map_err(err)?;
    if bytes.is_empty() || bytes.len() % 8 != 0 {
        return Err(CompileError(format!(
            "libseccomp exported {} bytes",
            bytes.len()
        )));
    }
    let program = bytes
        .chunks_exact(8)
        .map(|c| SockFilter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    Ok(program)
}

/// The compiled policy, built once per process and shared by every child.
pub fn programs() -> &'static [Vec<SockFilter>] {
    static PROGRAMS: std::sync::OnceLock<Vec<Vec<SockFilter>>> = std::sync::OnceLock::new();
    PROGRAMS.get_or_init(|| compile().expect("the reviewed seccomp policy compiles"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    const RET_KILL_PROCESS: u32 = 0x8000_0000;
    const EPERM: u32 = RET_ERRNO | libc::EPERM as u32;

    /// `struct seccomp_data` as the filter reads it.
    struct Data {
        nr: u32,
        arch: u32,
        args: [u64; 6],
    }

    impl Data {
        fn word(&self, offset: u32) -> u32 {
            match offset {
                0 => self.nr,
                4 => self.arch,
                8 | 12 => 0, // instruction pointer
                o if (16..64).contains(&o) => {
                    let arg = self.args[((o - 16) / 8) as usize];
                    if (o - 16) % 8 == 0 {
                        arg as u32
                    } else {
                        (arg >> 32) as u32
                    }
                }
                other => panic!("load outside seccomp_data: {other}"),
            }
        }
    }

    /// A classic-BPF interpreter for the instructions the compiler emits.
    fn run(prog: &[SockFilter], data: &Data) -> u32 {
        run_counted(prog, data).0
    }

    fn steps(prog: &[SockFilter], data: &Data) -> usize {
        run_counted(prog, data).1
    }

    fn run_counted(prog: &[SockFilter], data: &Data) -> (u32, usize) {
        let (mut pc, mut acc) = (0usize, 0u32);
        for step in 0..100_000 {
            let f = prog[pc];
            let class = f.code & 0x07;
            match (class, f.code) {
                (0x00, 0x20) => {
                    acc = data.word(f.k);
                    pc += 1;
                }
                (0x04, 0x54) => {
                    acc &= f.k;
                    pc += 1;
                }
                (0x05, 0x05) => pc += 1 + f.k as usize,
                (0x05, code) => {
                    let hit = match code {
                        0x15 => acc == f.k,
                        0x25 => acc > f.k,
                        0x35 => acc >= f.k,
                        0x45 => acc & f.k != 0,
                        other => panic!("unexpected jump {other:#x}"),
                    };
                    pc += 1 + usize::from(if hit { f.jt } else { f.jf });
                }
                (0x06, _) => return (f.k, step + 1),
                (_, other) => panic!("unexpected opcode {other:#x}"),
            }
        }
        panic!("the program did not end");
    }

    /// What the kernel answers with every filter installed: each runs, the most restrictive
    /// action wins, and between equal actions the filter installed last.
    fn verdict(nr: libc::c_long, args: [u64; 6]) -> u32 {
        verdict_on(AUDIT_ARCH_X86_64, nr as u32, args)
    }

    #[test]
    fn preloaded_calls_may_not_make_system_v_ipc_objects_and_lose_nothing_else() {
        let prog = preloaded_call_program();
        let on = |nr: libc::c_long| {
            run(
                prog,
                &Data {
                    nr: nr as u32,
                    arch: AUDIT_ARCH_X86_64,
                    args: [0; 6],
                },
            )
        };
        for nr in [
            libc::SYS_shmget,
            libc::SYS_semget,
            libc::SYS_msgget,
            libc::SYS_shmat,
            libc::SYS_semop,
            libc::SYS_msgrcv,
        ] {
            assert_eq!(on(nr), EPERM, "{nr}");
        }
        for s in ALLOWED
            .iter()
            .filter(|s| !DENIED_TO_PRELOADED_CALLS.iter().any(|d| d.nr == s.nr))
        {
            assert_eq!(on(s.nr), RET_ALLOW, "{}", s.name);
        }
    }

    fn verdict_on(arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let data = Data { nr, arch, args };
        let mut best = RET_ALLOW;
        for prog in compile().unwrap().iter().rev() {
            let ret = run(prog, &data);
            let action = |r: u32| (r & 0xffff_0000) as i32;
            if action(ret) < action(best) {
                best = ret;
            }
        }
        best
    }

    #[test]
    fn listed_calls_pass_and_everything_else_is_eperm() {
        for s in ALLOWED {
            assert_eq!(verdict(s.nr, [0; 6]), RET_ALLOW, "{}", s.name);
        }
        for s in NOTABLY_DENIED {
            assert_eq!(verdict(s.nr, [0; 6]), EPERM, "{}: {}", s.name, s.why);
        }
        // A number no kernel has yet is closed too.
        assert_eq!(verdict(470, [0; 6]), EPERM);
    }

    #[test]
    fn the_lists_do_not_overlap_and_hold_no_duplicates() {
        let mut seen = std::collections::HashSet::new();
        for s in ALLOWED.iter().chain(NOTABLY_DENIED) {
            assert!(seen.insert(s.nr), "{} listed twice", s.name);
        }
    }

    #[test]
    fn clone_is_allowed_without_namespace_flags_only() {
        let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
        assert_eq!(verdict(libc::SYS_clone, [thread, 0, 0, 0, 0, 0]), RET_ALLOW);
        let fork = libc::SIGCHLD as u64;
        assert_eq!(verdict(libc::SYS_clone, [fork, 0, 0, 0, 0, 0]), RET_ALLOW);
        for ns in [
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWNS,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWTIME,
        ] {
            let flags = ns as u64 | libc::SIGCHLD as u64;
            assert_eq!(verdict(libc::SYS_clone, [flags, 0, 0, 0, 0, 0]), EPERM);
        }
        assert_eq!(
            verdict(libc::SYS_clone3, [0; 6]),
            RET_ERRNO | libc::ENOSYS as u32
        );
    }

    #[test]
    fn sockets_only_of_listed_families() {
        let socket = |family: i32, protocol: i32| {
            verdict(
                libc::SYS_socket,
                [
                    family as u64,
                    libc::SOCK_STREAM as u64,
                    protocol as u64,
                    0,
                    0,
                    0,
                ],
            )
        };
        for (family, _) in SOCKET_FAMILIES {
            assert_eq!(socket(*family, 0), RET_ALLOW);
        }
        for family in [
            libc::AF_PACKET,
            libc::AF_VSOCK,
            libc::AF_KEY,
            libc::AF_BLUETOOTH,
            libc::AF_ALG,
            libc::AF_TIPC,
            libc::AF_RDS,
            libc::AF_XDP,
        ] {
            assert_eq!(socket(family, 0), EPERM, "family {family}");
        }
        assert_eq!(socket(libc::AF_NETLINK, libc::NETLINK_ROUTE), RET_ALLOW);
        for protocol in [
            libc::NETLINK_AUDIT,
            libc::NETLINK_KOBJECT_UEVENT,
            libc::NETLINK_NETFILTER,
        ] {
            assert_eq!(socket(libc::AF_NETLINK, protocol), EPERM);
        }
    }

    #[test]
    fn foreign_architectures_and_x32_are_killed() {
        assert_eq!(
            verdict_on(0x4000_0003, libc::SYS_read as u32, [0; 6]),
            RET_KILL_PROCESS
        );
        let x32_read = 0x4000_0000;
        assert_eq!(
            verdict_on(AUDIT_ARCH_X86_64, x32_read, [0; 6]),
            RET_KILL_PROCESS
        );
    }

    #[test]
    fn the_program_is_a_tree_not_a_chain() {
        // Attach-time cost grows with the steps the kernel emulates per system call number.
        let prog = &compile().unwrap()[0];
        let data = |nr| Data {
            nr,
            arch: AUDIT_ARCH_X86_64,
            args: [0; 6],
        };
        let worst = (0..460).map(|nr| steps(prog, &data(nr))).max().unwrap();
        assert!(worst < 60, "{worst} steps for one system call number");
    }
}
