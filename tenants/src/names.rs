//! Validated names: a tenant's name and a version id.

use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("tenant name {0:?} must match [a-z][a-z0-9_]{{0,31}}")]
    Tenant(String),
    #[error("version id {0:?} must be 7 to 64 lowercase hex digits")]
    Version(String),
}

/// A tenant's name: `[a-z][a-z0-9_]{0,31}`, safe as a path component and in `git_<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct TenantName(String);

impl TenantName {
    pub fn parse(s: &str) -> Result<TenantName, NameError> {
        let mut chars = s.chars();
        let valid = matches!(chars.next(), Some('a'..='z'))
            && s.len() <= 32
            && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'));
        if valid {
            Ok(TenantName(s.to_owned()))
        } else {
            Err(NameError::Tenant(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of an immutable code version: lowercase hex, safe as a path component.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct VersionId(String);

impl VersionId {
    pub fn parse(s: &str) -> Result<VersionId, NameError> {
        let valid = (7..=64).contains(&s.len())
            && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if valid {
            Ok(VersionId(s.to_owned()))
        } else {
            Err(NameError::Version(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names() {
        for ok in ["caro", "jc", "a", "a_1", "abcdefghijklmnopqrstuvwxyz012345"] {
            assert!(TenantName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Caro",
            "1a",
            "_a",
            "a-b",
            "a/b",
            "..",
            "abcdefghijklmnopqrstuvwxyz0123456",
            "é",
        ] {
            assert!(TenantName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn version_ids() {
        assert!(VersionId::parse("0123abcd").is_ok());
        assert!(VersionId::parse("../etc").is_err());
        assert!(VersionId::parse("ABCDEF12").is_err());
        assert!(VersionId::parse("abc").is_err());
    }
}
