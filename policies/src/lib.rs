//! Who may do what, and within which bounds.
//!
//! This crate holds the rules that decide whether a request is allowed and with which limits:
//! token format and hashing, scopes, and the per-tenant policy. It knows nothing of HTTP or of
//! the store; `daemon` persists what this crate produces and asks it for decisions.

pub mod address;
pub mod admission;
pub mod egress;
pub mod env;
pub mod policy;
pub mod secrets;
pub mod token;
pub mod webhook;

/// Compares two byte strings without an early exit, so timing reveals nothing of where they
/// differ (their lengths are not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub use policy::{builtin_plans, Network, Policy, PolicyError, PolicyPatch};
pub use secrets::{Sealed, SecretError, SecretKey};
pub use token::{Scope, ScopeError, Scopes, TokenHash, TokenSecret};
