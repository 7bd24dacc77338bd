//! The seccomp policy: which system calls a tenant's process may not make, as reviewed data.
//!
//! The policy is a deny list on top of what namespaces, dropped capabilities and
//! `no_new_privs` already take away: calls that reach kernel surfaces a Python function never
//! needs and that have a history of privilege escalations. [`DENIED`] is the table to review;
//! [`compile`] turns it into a classic BPF program, installed as the last step before `exec`.
//!
//! Denied calls fail with `EPERM` (so a library that probes for a feature falls back cleanly)
//! rather than killing the process; `clone3` fails with `ENOSYS` so that libc falls back to
//! `clone`, whose flags a classic filter can inspect; a foreign architecture or the x32 ABI
//! kills the process.

/// A system call a tenant's process may not make, and why.
pub struct Denied {
    pub nr: libc::c_long,
    pub name: &'static str,
    pub why: &'static str,
}

macro_rules! denied {
    ($($name:ident: $why:literal,)*) => {
        &[$(Denied { nr: libc::$name, name: stringify!($name), why: $why },)*]
    };
}

/// The reviewed deny list (x86_64 numbers via `libc`).
pub const DENIED: &[Denied] = denied! {
    SYS_ptrace: "inspecting or controlling other processes",
    SYS_process_vm_readv: "reading another process's memory",
    SYS_process_vm_writev: "writing another process's memory",
    SYS_kcmp: "comparing kernel objects of other processes",
    SYS_pidfd_getfd: "stealing descriptors from other processes",
    SYS_mount: "changing the filesystem view",
    SYS_umount2: "changing the filesystem view",
    SYS_pivot_root: "changing the filesystem root",
    SYS_chroot: "changing the filesystem root",
    SYS_fsopen: "new mount API",
    SYS_fsconfig: "new mount API",
    SYS_fsmount: "new mount API",
    SYS_fspick: "new mount API",
    SYS_move_mount: "new mount API",
    SYS_open_tree: "new mount API",
    SYS_mount_setattr: "new mount API",
    SYS_unshare: "new namespaces",
    SYS_setns: "entering other namespaces",
    SYS_keyctl: "kernel keyrings are not namespaced",
    SYS_add_key: "kernel keyrings are not namespaced",
    SYS_request_key: "kernel keyrings are not namespaced",
    SYS_bpf: "loading programs into the kernel",
    SYS_perf_event_open: "performance counters: side channels and a history of bugs",
    SYS_userfaultfd: "a staple of kernel exploit races",
    SYS_io_uring_setup: "io_uring: a large, often-exploited attack surface",
    SYS_io_uring_enter: "io_uring: a large, often-exploited attack surface",
    SYS_io_uring_register: "io_uring: a large, often-exploited attack surface",
    SYS_init_module: "loading kernel modules",
    SYS_finit_module: "loading kernel modules",
    SYS_delete_module: "unloading kernel modules",
    SYS_kexec_load: "replacing the kernel",
    SYS_kexec_file_load: "replacing the kernel",
    SYS_reboot: "rebooting the host",
    SYS_swapon: "host swap configuration",
    SYS_swapoff: "host swap configuration",
    SYS_acct: "host process accounting",
    SYS_settimeofday: "the host clock",
    SYS_clock_settime: "the host clock",
    SYS_clock_adjtime: "the host clock",
    SYS_adjtimex: "the host clock",
    SYS_syslog: "the kernel log",
    SYS_quotactl: "host disk quotas",
    SYS_open_by_handle_at: "opening files by handle bypasses the mount namespace",
    SYS_name_to_handle_at: "file handles: pairs with open_by_handle_at",
    SYS_lookup_dcookie: "kernel profiling interface",
    SYS_vhangup: "terminal control",
    SYS_iopl: "raw I/O port access",
    SYS_ioperm: "raw I/O port access",
    SYS_uselib: "obsolete loader interface",
    SYS_sethostname: "host identity",
    SYS_setdomainname: "host identity",
};

/// Namespace flags that `clone` may not be given.
const NAMESPACE_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWTIME) as u32;

/// Socket families a function has no use for: raw packets, kernel interfaces, VM sockets.
/// `AF_NETLINK` is allowed for `NETLINK_ROUTE` only (libc reads interface lists through it, and
/// in the call's own network namespace it sees only loopback); every other netlink protocol is
/// a kernel configuration interface.
pub const DENIED_SOCKET_FAMILIES: &[(libc::c_int, &str)] = &[
    (libc::AF_PACKET, "raw packets"),
    (libc::AF_VSOCK, "host and VM sockets"),
    (libc::AF_KEY, "IPsec key management"),
    (libc::AF_BLUETOOTH, "bluetooth"),
    (libc::AF_ALG, "kernel crypto API"),
    (libc::AF_TIPC, "cluster IPC"),
    (libc::AF_RDS, "reliable datagram sockets"),
];

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;

const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;

const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
const OFFSET_ARG0_LOW: u32 = 16;
const OFFSET_ARG2_LOW: u32 = 32;

/// One classic BPF instruction, laid out as the kernel's `struct sock_filter`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockFilter {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Label {
    ArchOk,
    Allow,
    Deny,
    NoSys,
    Kill,
    CloneFlags,
    SocketFamily,
    NetlinkProtocol,
}

enum Insn {
    Stmt(u16, u32),
    /// Jump if the condition holds to `then`, else fall through.
    Jump(u16, u32, Label),
    /// Jump if the condition holds to `then`, else to `otherwise`.
    Branch(u16, u32, Label, Label),
    Mark(Label),
}

/// The compiled policy, built once per process and shared by every child.
pub fn program() -> &'static [SockFilter] {
    static PROGRAM: std::sync::OnceLock<Vec<SockFilter>> = std::sync::OnceLock::new();
    PROGRAM.get_or_init(compile)
}

/// Compiles the policy into a BPF program for `seccomp(SECCOMP_SET_MODE_FILTER)`.
pub fn compile() -> Vec<SockFilter> {
    use Insn::*;
    let mut program = vec![
        Stmt(LD_W_ABS, OFFSET_ARCH),
        Jump(JEQ_K, AUDIT_ARCH_X86_64, Label::ArchOk),
        Stmt(RET_K, RET_KILL_PROCESS),
        Mark(Label::ArchOk),
        Stmt(LD_W_ABS, OFFSET_NR),
        Jump(JGE_K, X32_SYSCALL_BIT, Label::Kill),
    ];
    for d in DENIED {
        program.push(Jump(JEQ_K, d.nr as u32, Label::Deny));
    }
    program.push(Jump(JEQ_K, libc::SYS_clone3 as u32, Label::NoSys));
    program.push(Jump(JEQ_K, libc::SYS_clone as u32, Label::CloneFlags));
    program.push(Jump(JEQ_K, libc::SYS_socket as u32, Label::SocketFamily));
    program.push(Stmt(RET_K, RET_ALLOW));
    program.push(Mark(Label::CloneFlags));
    program.push(Stmt(LD_W_ABS, OFFSET_ARG0_LOW));
    program.push(Branch(JSET_K, NAMESPACE_FLAGS, Label::Deny, Label::Allow));
    program.push(Mark(Label::SocketFamily));
    program.push(Stmt(LD_W_ABS, OFFSET_ARG0_LOW));
    for (family, _) in DENIED_SOCKET_FAMILIES {
        program.push(Jump(JEQ_K, *family as u32, Label::Deny));
    }
    program.push(Jump(JEQ_K, libc::AF_NETLINK as u32, Label::NetlinkProtocol));
    program.push(Stmt(RET_K, RET_ALLOW));
    program.push(Mark(Label::NetlinkProtocol));
    program.push(Stmt(LD_W_ABS, OFFSET_ARG2_LOW));
    program.push(Branch(
        JEQ_K,
        libc::NETLINK_ROUTE as u32,
        Label::Allow,
        Label::Deny,
    ));
    program.push(Mark(Label::Deny));
    program.push(Stmt(RET_K, RET_ERRNO | libc::EPERM as u32));
    program.push(Mark(Label::NoSys));
    program.push(Stmt(RET_K, RET_ERRNO | libc::ENOSYS as u32));
    program.push(Mark(Label::Kill));
    program.push(Stmt(RET_K, RET_KILL_PROCESS));
    program.push(Mark(Label::Allow));
    program.push(Stmt(RET_K, RET_ALLOW));
    assemble(&program)
}

/// Resolves labels to forward offsets (classic BPF only jumps forward).
fn assemble(program: &[Insn]) -> Vec<SockFilter> {
    // Index of each real instruction.
    let mut positions = Vec::with_capacity(program.len());
    let mut n = 0usize;
    for insn in program {
        positions.push(n);
        if !matches!(insn, Insn::Mark(_)) {
            n += 1;
        }
    }
    let target = |from: usize, label: Label| -> u8 {
        let at = positions[from];
        let dest = program
            .iter()
            .enumerate()
            .skip(from + 1)
            .find_map(|(i, insn)| {
                matches!(insn, Insn::Mark(l) if *l == label).then_some(positions[i])
            })
            .expect("every jump has a later target");
        let offset = dest - at - 1;
        u8::try_from(offset).expect("BPF jump offsets fit in a byte")
    };
    let mut out = Vec::with_capacity(n);
    for (i, insn) in program.iter().enumerate() {
        match *insn {
            Insn::Stmt(code, k) => out.push(SockFilter {
                code,
                jt: 0,
                jf: 0,
                k,
            }),
            Insn::Jump(code, k, then) => out.push(SockFilter {
                code,
                jt: target(i, then),
                jf: 0,
                k,
            }),
            Insn::Branch(code, k, then, otherwise) => out.push(SockFilter {
                code,
                jt: target(i, then),
                jf: target(i, otherwise),
                k,
            }),
            Insn::Mark(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny classic-BPF interpreter, enough to run the policy against syscalls.
    fn run(prog: &[SockFilter], arch: u32, nr: u32, arg0: u32) -> u32 {
        run3(prog, arch, nr, arg0, 0)
    }

    fn run3(prog: &[SockFilter], arch: u32, nr: u32, arg0: u32, arg2: u32) -> u32 {
        let mut pc = 0usize;
        let mut acc = 0u32;
        loop {
            let f = prog[pc];
            match f.code {
                LD_W_ABS => {
                    acc = match f.k {
                        OFFSET_NR => nr,
                        OFFSET_ARCH => arch,
                        OFFSET_ARG0_LOW => arg0,
                        OFFSET_ARG2_LOW => arg2,
                        other => panic!("unexpected load offset {other}"),
                    };
                    pc += 1;
                }
                JEQ_K | JGE_K | JSET_K => {
                    let hit = match f.code {
                        JEQ_K => acc == f.k,
                        JGE_K => acc >= f.k,
                        _ => acc & f.k != 0,
                    };
                    pc += 1 + usize::from(if hit { f.jt } else { f.jf });
                }
                RET_K => return f.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    const X86: u32 = AUDIT_ARCH_X86_64;
    const EPERM: u32 = RET_ERRNO | libc::EPERM as u32;

    #[test]
    fn denied_calls_fail_with_eperm_and_others_pass() {
        let prog = compile();
        for d in DENIED {
            assert_eq!(run(&prog, X86, d.nr as u32, 0), EPERM, "{}", d.name);
        }
        for ok in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_mmap,
        ] {
            assert_eq!(run(&prog, X86, ok as u32, 0), RET_ALLOW, "{ok}");
        }
    }

    #[test]
    fn clone_is_allowed_without_namespace_flags_only() {
        let prog = compile();
        let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u32;
        assert_eq!(run(&prog, X86, libc::SYS_clone as u32, thread), RET_ALLOW);
        assert_eq!(
            run(&prog, X86, libc::SYS_clone as u32, libc::SIGCHLD as u32),
            RET_ALLOW
        );
        for ns in [
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWNS,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
        ] {
            assert_eq!(
                run(
                    &prog,
                    X86,
                    libc::SYS_clone as u32,
                    ns as u32 | libc::SIGCHLD as u32
                ),
                EPERM
            );
        }
        assert_eq!(
            run(&prog, X86, libc::SYS_clone3 as u32, 0),
            RET_ERRNO | libc::ENOSYS as u32
        );
    }

    #[test]
    fn sockets_of_denied_families_fail() {
        let prog = compile();
        let socket = libc::SYS_socket as u32;
        assert_eq!(run(&prog, X86, socket, libc::AF_INET as u32), RET_ALLOW);
        assert_eq!(run(&prog, X86, socket, libc::AF_UNIX as u32), RET_ALLOW);
        assert_eq!(run(&prog, X86, socket, libc::AF_INET6 as u32), RET_ALLOW);
        for (family, _) in DENIED_SOCKET_FAMILIES {
            assert_eq!(run(&prog, X86, socket, *family as u32), EPERM);
        }
        let netlink = libc::AF_NETLINK as u32;
        assert_eq!(
            run3(&prog, X86, socket, netlink, libc::NETLINK_ROUTE as u32),
            RET_ALLOW
        );
        for protocol in [
            libc::NETLINK_AUDIT,
            libc::NETLINK_KOBJECT_UEVENT,
            libc::NETLINK_NETFILTER,
        ] {
            assert_eq!(run3(&prog, X86, socket, netlink, protocol as u32), EPERM);
        }
    }

    #[test]
    fn foreign_architectures_and_x32_are_killed() {
        let prog = compile();
        assert_eq!(
            run(&prog, 0x4000_0003, libc::SYS_read as u32, 0),
            RET_KILL_PROCESS
        );
        assert_eq!(run(&prog, X86, X32_SYSCALL_BIT | 1, 0), RET_KILL_PROCESS);
    }
}
