//! Who may do what, and within which bounds.
//!
//! This crate holds the rules that decide whether a request is allowed and with which limits:
//! token format and hashing, scopes, and the per-tenant policy. It knows nothing of HTTP or of
//! the store; `daemon` persists what this crate produces and asks it for decisions.

pub mod policy;
pub mod token;
pub mod webhook;

pub use policy::{Network, Policy, PolicyError, PolicyPatch};
pub use token::{Scope, ScopeError, Scopes, TokenHash, TokenSecret};
