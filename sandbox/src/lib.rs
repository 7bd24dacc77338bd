//! Spawning one isolated, limited child process per call, and talking to it.
//!
//! The sandbox is deliberately ignorant of tenants, tokens and HTTP: it is handed a
//! [`ChildSpec`] (program, working directory, environment, limits, the request bytes) and gives
//! back what happened ([`Finished`]), which [`protocol`] turns into a call outcome. Everything
//! that happens between `fork` and `exec` is an ordered list of [`setup::Step`]s, so isolation
//! layers (namespaces, cgroups, seccomp) slot in as new steps without touching the callers.

pub mod cgroup;
pub mod landlock;
pub mod logs;
pub mod mountns;
pub mod netns;
pub mod preload;
pub mod progress;
pub mod protocol;
pub mod runner;
pub mod seccomp;
pub mod setup;
mod spawn;
pub mod zygote;

pub use protocol::{Answer, ChildFailure, ProtocolRequest};
pub use setup::{Bind, Isolation, NetworkMode, SystemEntry};
pub use spawn::{
    prepare, spawn_and_wait, ChildSpec, Finished, Limits, Prepared, SandboxError, Termination,
    Usage,
};
