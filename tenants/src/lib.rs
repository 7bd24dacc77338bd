//! Tenant code: where it comes from, where it lives, and which of it may be called.
//!
//! A tenant's code reaches the node as a git commit ([`git`]) and private uploads
//! ([`upload`]), is laid out as an immutable version tree ([`layout`]) with its modules' bytecode laid in ([`bytecode`]), and a call names a
//! function in it ([`function`]); its `requirements.txt` may name packages only
//! ([`requirements`]). Names are parsed
//! once, at the boundary, into validated types ([`TenantName`], [`FnName`], [`VersionId`]), so
//! nothing deeper re-checks them. This crate knows nothing of HTTP, tokens or processes.

pub mod bytecode;
pub mod function;
pub mod git;
pub mod layout;
pub mod names;
pub mod requirements;
pub mod upload;

pub use function::{resolve_module, FnName, FnNameError, ResolveError};
pub use git::{
    build_version, fetch, has_commit, repository_module, Credentials, GitSource, SyncError,
    VersionPlan,
};
pub use layout::Layout;
pub use names::{NameError, TenantName, VersionId};
pub use upload::{ModuleName, ModuleNameError, StdlibNames, Upload};
