//! The per-tenant policy: the limits every call of a tenant runs under.
//!
//! A policy is always complete (every field has a value); operators change it with a
//! [`PolicyPatch`], which is validated as a whole before anything is applied, so a bad field
//! never leaves a half-changed policy behind.

use serde::{Deserialize, Serialize};

/// Whether a tenant's calls may reach the network beyond their own loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    None,
    Host,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub memory_mb: u32,
    pub timeout_ms: u32,
    pub cpu_percent: u32,
    pub pids: u32,
    pub tmp_mb: u32,
    pub max_concurrency: u32,
    pub calls_per_minute: u32,
    pub network: Network,
    pub builtins: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            memory_mb: 256,
            timeout_ms: 30_000,
            cpu_percent: 100,
            pids: 64,
            tmp_mb: 64,
            max_concurrency: 8,
            calls_per_minute: 600,
            network: Network::None,
            builtins: false,
        }
    }
}

/// Any subset of a policy's fields; the rest keep their values.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyPatch {
    pub memory_mb: Option<u32>,
    pub timeout_ms: Option<u32>,
    pub cpu_percent: Option<u32>,
    pub pids: Option<u32>,
    pub tmp_mb: Option<u32>,
    pub max_concurrency: Option<u32>,
    pub calls_per_minute: Option<u32>,
    pub network: Option<Network>,
    pub builtins: Option<bool>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("{field} must be between {min} and {max}, got {value}")]
    OutOfRange {
        field: &'static str,
        value: u32,
        min: u32,
        max: u32,
    },
}

impl PolicyError {
    pub fn field(&self) -> &'static str {
        match self {
            PolicyError::OutOfRange { field, .. } => field,
        }
    }
}

fn check(field: &'static str, value: Option<u32>, min: u32, max: u32) -> Result<(), PolicyError> {
    match value {
        Some(v) if v < min || v > max => Err(PolicyError::OutOfRange {
            field,
            value: v,
            min,
            max,
        }),
        _ => Ok(()),
    }
}

impl Policy {
    /// Applies `patch` if every field in it is valid; otherwise changes nothing.
    pub fn apply(&mut self, patch: &PolicyPatch) -> Result<(), PolicyError> {
        check("memory_mb", patch.memory_mb, 16, 65_536)?;
        check("timeout_ms", patch.timeout_ms, 10, 900_000)?;
        check("cpu_percent", patch.cpu_percent, 1, 6_400)?;
        check("pids", patch.pids, 1, 32_768)?;
        check("tmp_mb", patch.tmp_mb, 1, 65_536)?;
        check("max_concurrency", patch.max_concurrency, 1, 10_000)?;
        check("calls_per_minute", patch.calls_per_minute, 1, 10_000_000)?;
        let p = patch.clone();
        self.memory_mb = p.memory_mb.unwrap_or(self.memory_mb);
        self.timeout_ms = p.timeout_ms.unwrap_or(self.timeout_ms);
        self.cpu_percent = p.cpu_percent.unwrap_or(self.cpu_percent);
        self.pids = p.pids.unwrap_or(self.pids);
        self.tmp_mb = p.tmp_mb.unwrap_or(self.tmp_mb);
        self.max_concurrency = p.max_concurrency.unwrap_or(self.max_concurrency);
        self.calls_per_minute = p.calls_per_minute.unwrap_or(self.calls_per_minute);
        self.network = p.network.unwrap_or(self.network);
        self.builtins = p.builtins.unwrap_or(self.builtins);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_changes_only_named_fields() {
        let mut p = Policy::default();
        let patch: PolicyPatch = serde_json::from_str(r#"{"timeout_ms": 500}"#).unwrap();
        p.apply(&patch).unwrap();
        assert_eq!(p.timeout_ms, 500);
        assert_eq!(p.memory_mb, Policy::default().memory_mb);
    }

    #[test]
    fn invalid_patch_changes_nothing() {
        let mut p = Policy::default();
        let patch: PolicyPatch =
            serde_json::from_str(r#"{"timeout_ms": 500, "memory_mb": 0}"#).unwrap();
        let err = p.apply(&patch).unwrap_err();
        assert_eq!(err.field(), "memory_mb");
        assert_eq!(p, Policy::default());
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<PolicyPatch>(r#"{"memroy_mb": 5}"#).is_err());
    }
}
