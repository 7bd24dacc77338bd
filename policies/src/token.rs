//! Bearer tokens: generation, hashing at rest and scopes.
//!
//! A token is `flr_` followed by 64 hex digits (256 bits from the OS RNG). Only its SHA-256 is
//! stored; the plaintext exists once, in the answer that issues it.

use std::fmt;

use sha2::{Digest, Sha256};

/// The prefix every Falra token carries, so leaked tokens are easy to recognise in logs and scans.
pub const TOKEN_PREFIX: &str = "flr_";

/// A freshly generated token. Deliberately not `Debug`/`Display`, so it cannot slip into logs.
pub struct TokenSecret(String);

impl TokenSecret {
    /// Draws a new token from the operating system's random source.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes).expect("the operating system's random source failed");
        TokenSecret(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
    }

    /// The plaintext, to be shown exactly once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }

    /// The first characters, safe to list and show in audit records.
    pub fn display_prefix(&self) -> String {
        self.0.chars().take(TOKEN_PREFIX.len() + 8).collect()
    }
}

/// SHA-256 of a presented token, hex encoded: the only form a token is stored in.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash(String);

impl TokenHash {
    pub fn of(presented: &str) -> Self {
        TokenHash(hex::encode(Sha256::digest(presented.as_bytes())))
    }

    /// Wraps a hash read back from the store.
    pub fn from_stored(hex: &str) -> Self {
        TokenHash(hex.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Compares two hashes without an early exit, so timing reveals nothing of either.
    pub fn ct_eq(&self, other: &TokenHash) -> bool {
        crate::ct_eq(self.0.as_bytes(), other.0.as_bytes())
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({}…)", &self.0[..8.min(self.0.len())])
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Run functions (`/v1/call`).
    Call,
    /// Upload modules and manage the tenant's own code.
    Deploy,
    /// Start and manage background jobs.
    Jobs,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Call, Scope::Deploy, Scope::Jobs];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Call => "call",
            Scope::Deploy => "deploy",
            Scope::Jobs => "jobs",
        }
    }

    pub fn parse(s: &str) -> Result<Scope, ScopeError> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| ScopeError::Unknown(s.to_owned()))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScopeError {
    #[error("unknown scope {0:?} (expected one of: call, deploy, jobs)")]
    Unknown(String),
    #[error("a token needs at least one scope")]
    Empty,
}

/// A non-empty, duplicate-free set of scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scopes(Vec<Scope>);

impl Scopes {
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Scopes, ScopeError> {
        let mut scopes = items
            .into_iter()
            .map(Scope::parse)
            .collect::<Result<Vec<_>, _>>()?;
        scopes.sort();
        scopes.dedup();
        if scopes.is_empty() {
            return Err(ScopeError::Empty);
        }
        Ok(Scopes(scopes))
    }

    /// Parses the stored form, a comma-separated list.
    pub fn from_stored(s: &str) -> Result<Scopes, ScopeError> {
        Scopes::parse(s.split(',').filter(|p| !p.is_empty()))
    }

    pub fn to_stored(&self) -> String {
        self.names().collect::<Vec<_>>().join(",")
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.iter().map(|s| s.as_str())
    }

    pub fn contains(&self, scope: Scope) -> bool {
        self.0.contains(&scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_random_and_hash_stably() {
        let a = TokenSecret::generate();
        let b = TokenSecret::generate();
        assert!(a.expose().starts_with("flr_"));
        assert_eq!(a.expose().len(), 4 + 64);
        assert_ne!(a.expose(), b.expose());
        assert!(a.hash().ct_eq(&TokenHash::of(a.expose())));
        assert!(!a.hash().ct_eq(&b.hash()));
        assert!(!a.hash().as_str().contains(a.expose()));
    }

    #[test]
    fn scopes_parse_dedupe_and_refuse_unknown_or_empty() {
        let s = Scopes::parse(["jobs", "call", "call"]).unwrap();
        assert_eq!(s.to_stored(), "call,jobs");
        assert!(s.contains(Scope::Call) && !s.contains(Scope::Deploy));
        assert_eq!(Scopes::from_stored("call,jobs").unwrap(), s);
        assert_eq!(
            Scopes::parse(["admin"]),
            Err(ScopeError::Unknown("admin".into()))
        );
        assert_eq!(Scopes::parse([]), Err(ScopeError::Empty));
    }
}
