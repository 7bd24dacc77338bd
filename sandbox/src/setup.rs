//! The child's setup between `fork` and `exec`, as an ordered list of steps.
//!
//! Order matters and is part of the contract: steps that need privileges come first, the
//! steps that take privileges away come last, and nothing after them may need what they removed.
//! The plan is plain data ([`plan`]) so it can be reviewed and unit-tested; [`apply`] runs it
//! against a [`ChildSys`], whose real implementation ([`HostSys`]) issues the syscalls and whose
//! test implementation records them.
//!
//! Everything here runs in the forked child of a multi-threaded parent, so it may only make
//! async-signal-safe calls: no allocation, no locks, no logging.

use std::io;

/// One setup action in the child, in the order [`plan`] lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Become the leader of a new session and process group, so the whole group can be killed
    /// at once and the child has no controlling terminal.
    NewSession,
    /// Receive SIGKILL if the daemon dies, so no child outlives the daemon that supervises it.
    ParentDeathSignal,
    /// Set one resource limit (soft and hard to the same value).
    Rlimit(Resource, u64),
    /// Mark every descriptor above stderr close-on-exec, whoever opened it.
    CloseInheritedFds,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Core,
    OpenFiles,
    FileSize,
    Stack,
}

/// What the plan needs to know; grows with the isolation layers.
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

/// The ordered setup for one child.
pub fn plan(limits: &SetupLimits) -> Vec<Step> {
    vec![
        Step::NewSession,
        Step::ParentDeathSignal,
        Step::Rlimit(Resource::Core, 0),
        Step::Rlimit(Resource::OpenFiles, limits.open_files),
        Step::Rlimit(Resource::FileSize, limits.file_size_bytes),
        Step::Rlimit(Resource::Stack, limits.stack_bytes),
        Step::CloseInheritedFds,
    ]
}

/// The syscalls the setup makes, behind a trait so tests can record them.
pub trait ChildSys {
    fn setsid(&mut self) -> io::Result<()>;
    fn set_parent_death_signal(&mut self) -> io::Result<()>;
    fn setrlimit(&mut self, resource: Resource, value: u64) -> io::Result<()>;
    fn cloexec_from(&mut self, first_fd: u32) -> io::Result<()>;
}

/// Runs the plan in order, stopping at the first failure.
pub fn apply(steps: &[Step], sys: &mut impl ChildSys) -> io::Result<()> {
    for step in steps {
        match *step {
            Step::NewSession => sys.setsid()?,
            Step::ParentDeathSignal => sys.set_parent_death_signal()?,
            Step::Rlimit(resource, value) => sys.setrlimit(resource, value)?,
            Step::CloseInheritedFds => sys.cloexec_from(3)?,
        }
    }
    Ok(())
}

/// The real syscalls. Only async-signal-safe calls, as required after `fork`.
#[derive(Debug, Default)]
pub struct HostSys;

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[allow(unsafe_code)]
impl ChildSys for HostSys {
    fn setsid(&mut self) -> io::Result<()> {
        // SAFETY: setsid takes no pointers and only changes this (forked) process's session.
        check(unsafe { libc::setsid() })
    }

    fn set_parent_death_signal(&mut self) -> io::Result<()> {
        // SAFETY: PR_SET_PDEATHSIG takes a signal number by value; no memory is shared.
        check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) })?;
        // The parent may have died between fork and prctl; then we were reparented already.
        // SAFETY: getppid has no arguments and cannot fail.
        if unsafe { libc::getppid() } == 1 {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(Vec<String>, Option<&'static str>);

    impl Recorder {
        fn record(&mut self, call: String) -> io::Result<()> {
            let fail = self.1.is_some_and(|f| call.starts_with(f));
            self.0.push(call);
            if fail {
                Err(io::Error::from_raw_os_error(libc::EPERM))
            } else {
                Ok(())
            }
        }
    }

    impl ChildSys for Recorder {
        fn setsid(&mut self) -> io::Result<()> {
            self.record("setsid".into())
        }
        fn set_parent_death_signal(&mut self) -> io::Result<()> {
            self.record("pdeathsig".into())
        }
        fn setrlimit(&mut self, r: Resource, v: u64) -> io::Result<()> {
            self.record(format!("rlimit {r:?} {v}"))
        }
        fn cloexec_from(&mut self, fd: u32) -> io::Result<()> {
            self.record(format!("cloexec {fd}"))
        }
    }

    #[test]
    fn plan_runs_in_documented_order() {
        let mut rec = Recorder::default();
        apply(&plan(&SetupLimits::default()), &mut rec).unwrap();
        assert_eq!(
            rec.0,
            [
                "setsid",
                "pdeathsig",
                "rlimit Core 0",
                "rlimit OpenFiles 256",
                "rlimit FileSize 67108864",
                "rlimit Stack 8388608",
                "cloexec 3",
            ]
        );
    }

    #[test]
    fn a_failing_step_stops_the_setup() {
        let mut rec = Recorder(Vec::new(), Some("pdeathsig"));
        let err = apply(&plan(&SetupLimits::default()), &mut rec).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        assert_eq!(rec.0, ["setsid", "pdeathsig"]);
    }
}
