//! Landlock: a second wall behind the mount namespace, where the kernel has it.
//!
//! After `pivot_root` the child sees only read-only system directories, its code and its own
//! `/tmp`; Landlock then restricts the process itself, independently of mounts: reading and
//! executing anywhere under `/`, writing only under `/tmp` and `/dev/shm`, and reading and
//! writing the device nodes of `/dev`. Should a mount ever be writable by mistake, the process
//! still cannot write there. On a kernel without Landlock the step does nothing.
//!
//! Why not the `landlock` crate: the rules name paths that exist only inside the child's new
//! root (its `/tmp`, its `/dev`), so the ruleset must be built in the child, after
//! `pivot_root` and before `exec`, where only async-signal-safe calls are allowed (the child
//! shares the daemon's address space, whose other threads may hold the allocator's locks). The
//! crate allocates as it builds a ruleset; this module makes the four raw system calls with
//! data prepared before the clone, and `tests/tests/hostile.rs` checks the result from inside a
//! call (writes outside `/tmp` fail).

use std::ffi::CString;

/// `LANDLOCK_ACCESS_FS_*` bits, by the ABI version that introduced them.
pub mod access {
    pub const EXECUTE: u64 = 1 << 0;
    pub const WRITE_FILE: u64 = 1 << 1;
    pub const READ_FILE: u64 = 1 << 2;
    pub const READ_DIR: u64 = 1 << 3;
    /// Every right of ABI 1: removing, making files, directories, sockets, fifos, devices,
    /// symlinks.
    pub const ALL_V1: u64 = (1 << 13) - 1;
    /// ABI 2: linking or renaming across directories.
    pub const REFER: u64 = 1 << 13;
    /// ABI 3: truncating.
    pub const TRUNCATE: u64 = 1 << 14;
    /// ABI 5: ioctl on device files.
    pub const IOCTL_DEV: u64 = 1 << 15;
}

/// What a rule grants beneath its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Read files and directories, execute.
    ReadOnly,
    /// Everything.
    ReadWrite,
    /// Read and write existing files (the device nodes), list the directory.
    Devices,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub path: CString,
    pub grant: Grant,
}

/// The kernel's Landlock ABI version, or `None` where Landlock is missing or disabled.
#[allow(unsafe_code)]
pub fn abi_version() -> Option<i32> {
    // SAFETY: asking for the version passes no attribute pointer and changes nothing.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u64>(),
            0usize,
            1 as libc::c_ulong,
        )
    };
    (rc > 0).then_some(rc as i32)
}

/// Every right this kernel's Landlock ABI knows.
pub fn handled(abi: i32) -> u64 {
    let mut all = access::ALL_V1;
    if abi >= 2 {
        all |= access::REFER;
    }
    if abi >= 3 {
        all |= access::TRUNCATE;
    }
    if abi >= 5 {
        all |= access::IOCTL_DEV;
    }
    all
}

/// The rights `grant` gives under ABI `abi`.
pub fn rights(grant: Grant, abi: i32) -> u64 {
    let all = handled(abi);
    match grant {
        Grant::ReadOnly => access::READ_FILE | access::READ_DIR | access::EXECUTE,
        Grant::ReadWrite => all,
        Grant::Devices => {
            (access::READ_FILE | access::WRITE_FILE | access::READ_DIR)
                | (all & (access::TRUNCATE | access::IOCTL_DEV))
        }
    }
}

/// The rules every isolated child gets, in its own root, plus read-write access beneath
/// `writable` (the output directory of a build).
pub fn call_rules<'a>(writable: impl Iterator<Item = &'a std::path::Path>) -> Vec<Rule> {
    use std::os::unix::ffi::OsStrExt;
    let mut rules: Vec<Rule> = [
        ("/", Grant::ReadOnly),
        ("/tmp", Grant::ReadWrite),
        ("/dev/shm", Grant::ReadWrite),
        ("/dev", Grant::Devices),
    ]
    .into_iter()
    .map(|(path, grant)| Rule {
        path: CString::new(path).expect("no NUL"),
        grant,
    })
    .collect();
    rules.extend(writable.filter_map(|p| {
        Some(Rule {
            path: CString::new(p.as_os_str().as_bytes()).ok()?,
            grant: Grant::ReadWrite,
        })
    }));
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rights_never_exceed_what_the_abi_handles() {
        for abi in 1..=7 {
            for grant in [Grant::ReadOnly, Grant::ReadWrite, Grant::Devices] {
                assert_eq!(rights(grant, abi) & !handled(abi), 0, "{grant:?} abi {abi}");
            }
        }
        assert_eq!(rights(Grant::ReadOnly, 1) & access::WRITE_FILE, 0);
        assert_eq!(rights(Grant::Devices, 1) & access::EXECUTE, 0);
        assert_ne!(rights(Grant::Devices, 5) & access::IOCTL_DEV, 0);
    }

    /// The real thing, on the host: a child that may write only beneath one directory.
    #[test]
    fn writes_outside_the_granted_directories_are_refused() {
        use crate::setup::{ChildSys, HostSys};
        use std::os::unix::process::CommandExt;
        let allowed = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let rules = vec![
            Rule {
                path: CString::new("/").unwrap(),
                grant: Grant::ReadOnly,
            },
            Rule {
                path: CString::new(allowed.path().to_str().unwrap()).unwrap(),
                grant: Grant::ReadWrite,
            },
        ];
        let script = format!(
            "echo ok > {}/a && (echo no > {}/b) 2>/dev/null; echo done",
            allowed.path().display(),
            other.path().display()
        );
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args(["-c", &script]);
        #[allow(unsafe_code)]
        // SAFETY: the hook runs between fork and exec and only makes syscalls on data prepared
        // before the fork (`rules`); it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                HostSys.no_new_privs()?;
                HostSys.landlock(&rules)
            });
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(allowed.path().join("a").exists());
        if abi_version().is_some() {
            assert!(
                !other.path().join("b").exists(),
                "Landlock let a write through"
            );
        } else {
            eprintln!("this kernel has no Landlock: only the no-op path was tested");
        }
    }
}
