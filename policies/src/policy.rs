//! The per-tenant policy: the limits every call of a tenant runs under.
//!
//! A policy is always complete (every field has a value). A tenant's policy is its plan's
//! policy with the tenant's own overrides applied; both plans and overrides change through a
//! [`PolicyPatch`], which is validated as a whole before anything is applied, so a bad field
//! never leaves a half-changed policy behind.

use serde::{Deserialize, Deserializer, Serialize};

pub use crate::egress::Network;

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
    /// CPU seconds a tenant's calls may use per calendar month (UTC); `None`: no quota.
    #[serde(default)]
    pub cpu_seconds_per_month: Option<u64>,
    /// The most bytes (in MiB) an archive a built-in downloads may unpack to.
    #[serde(default = "default_max_unzipped_mb")]
    pub max_unzipped_mb: u32,
    /// The deadline of a background job's run (a call's is `timeout_ms`).
    #[serde(default = "default_job_timeout_ms")]
    pub job_timeout_ms: u32,
    /// Modules imported once into a zygote per tenant version, which then forks each call
    /// (empty: every call imports its module afresh). See docs/security.md.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preload: Vec<String>,
    /// How long a call's logs are kept, in hours.
    #[serde(default = "default_log_retention_hours")]
    pub log_retention_hours: u32,
    /// How many MiB of its calls' logs a tenant keeps; past it the oldest go.
    #[serde(default = "default_log_mb")]
    pub log_mb: u32,
}

/// The most modules a policy may preload, and the longest name.
pub const MAX_PRELOAD: usize = 32;
pub const MAX_PRELOAD_NAME: usize = 200;

/// Whether `name` is a dotted Python module name (`pandas`, `pkg.sub`).
fn is_module_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_PRELOAD_NAME
        && name.split('.').all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
                && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
        })
}

fn default_max_unzipped_mb() -> u32 {
    4096
}

fn default_job_timeout_ms() -> u32 {
    900_000
}

fn default_log_retention_hours() -> u32 {
    168
}

fn default_log_mb() -> u32 {
    64
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
            cpu_seconds_per_month: None,
            max_unzipped_mb: default_max_unzipped_mb(),
            job_timeout_ms: default_job_timeout_ms(),
            preload: Vec::new(),
            log_retention_hours: default_log_retention_hours(),
            log_mb: default_log_mb(),
        }
    }
}

/// Any subset of a policy's fields; the rest keep their values. Stored as a tenant's
/// overrides of its plan (only the fields given).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyPatch {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "value"
    )]
    pub memory_mb: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "value"
    )]
    pub timeout_ms: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "value"
    )]
    pub cpu_percent: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "value"
    )]
    pub pids: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "value"
    )]
    pub tmp_mb: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "value"
    )]
    pub max_concurrency: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "value"
    )]
    pub calls_per_minute: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "value"
    )]
    pub network: Option<Network>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "value"
    )]
    pub builtins: Option<bool>,
    /// `Some(None)` (JSON `null`) removes the quota.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub cpu_seconds_per_month: Option<Option<u64>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "value"
    )]
    pub max_unzipped_mb: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "value"
    )]
    pub job_timeout_ms: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "value"
    )]
    pub preload: Option<Vec<String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "value"
    )]
    pub log_retention_hours: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "value"
    )]
    pub log_mb: Option<u32>,
}

/// A field that is present must hold a value: `null` is refused (a field goes back to its plan's
/// value through `reset`, not through `null`).
fn value<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A field that is present, even as `null`, is `Some`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(d).map(Some)
}

impl PolicyPatch {
    /// Adds `later`'s fields over these (a later patch wins field by field).
    pub fn merge(&mut self, later: &PolicyPatch) {
        let l = later.clone();
        self.memory_mb = l.memory_mb.or(self.memory_mb);
        self.timeout_ms = l.timeout_ms.or(self.timeout_ms);
        self.cpu_percent = l.cpu_percent.or(self.cpu_percent);
        self.pids = l.pids.or(self.pids);
        self.tmp_mb = l.tmp_mb.or(self.tmp_mb);
        self.max_concurrency = l.max_concurrency.or(self.max_concurrency);
        self.calls_per_minute = l.calls_per_minute.or(self.calls_per_minute);
        self.network = l.network.or(self.network.take());
        self.builtins = l.builtins.or(self.builtins);
        self.cpu_seconds_per_month = l.cpu_seconds_per_month.or(self.cpu_seconds_per_month);
        self.max_unzipped_mb = l.max_unzipped_mb.or(self.max_unzipped_mb);
        self.job_timeout_ms = l.job_timeout_ms.or(self.job_timeout_ms);
        self.preload = l.preload.or(self.preload.take());
        self.log_retention_hours = l.log_retention_hours.or(self.log_retention_hours);
        self.log_mb = l.log_mb.or(self.log_mb);
    }

    /// Drops the named fields (they fall back to the plan's values); unknown names are
    /// returned as an error.
    pub fn reset(&mut self, fields: &[String]) -> Result<(), String> {
        for field in fields {
            match field.as_str() {
                "memory_mb" => self.memory_mb = None,
                "timeout_ms" => self.timeout_ms = None,
                "cpu_percent" => self.cpu_percent = None,
                "pids" => self.pids = None,
                "tmp_mb" => self.tmp_mb = None,
                "max_concurrency" => self.max_concurrency = None,
                "calls_per_minute" => self.calls_per_minute = None,
                "network" => self.network = None,
                "builtins" => self.builtins = None,
                "cpu_seconds_per_month" => self.cpu_seconds_per_month = None,
                "max_unzipped_mb" => self.max_unzipped_mb = None,
                "job_timeout_ms" => self.job_timeout_ms = None,
                "preload" => self.preload = None,
                "log_retention_hours" => self.log_retention_hours = None,
                "log_mb" => self.log_mb = None,
                other => return Err(other.to_owned()),
            }
        }
        Ok(())
    }
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
    #[error(
        "cpu_seconds_per_month must be null (no quota) or between 1 and {MAX_QUOTA_SECONDS}, got {0}"
    )]
    QuotaOutOfRange(u64),
    #[error(
        "preload must be a list of at most {MAX_PRELOAD} module names (such as \"pandas\" or \"pkg.sub\"), got {0:?}"
    )]
    Preload(String),
}

/// The longest a job may run: a day.
pub const MAX_JOB_TIMEOUT_MS: u32 = 86_400_000;

/// The largest monthly CPU quota, in seconds.
pub const MAX_QUOTA_SECONDS: u64 = 1 << 40;

impl PolicyError {
    pub fn field(&self) -> &'static str {
        match self {
            PolicyError::OutOfRange { field, .. } => field,
            PolicyError::QuotaOutOfRange(_) => "cpu_seconds_per_month",
            PolicyError::Preload(_) => "preload",
        }
    }
}

/// The bounds of every integer field of a policy but the quota, inclusive: what `apply`
/// enforces and what the API's schema documents (`falra` builds it from this table).
pub const RANGES: [(&str, u32, u32); 11] = [
    ("memory_mb", 16, 65_536),
    ("timeout_ms", 10, 900_000),
    ("cpu_percent", 1, 6_400),
    ("pids", 1, 32_768),
    ("tmp_mb", 1, 65_536),
    ("max_concurrency", 1, 10_000),
    ("calls_per_minute", 1, 10_000_000),
    ("max_unzipped_mb", 1, 1_048_576),
    ("job_timeout_ms", 10, MAX_JOB_TIMEOUT_MS),
    ("log_retention_hours", 1, 8_760),
    ("log_mb", 1, 65_536),
];

/// `field`'s bounds in [`RANGES`].
pub fn range(field: &str) -> (u32, u32) {
    RANGES
        .iter()
        .find(|(f, _, _)| *f == field)
        .map(|&(_, lo, hi)| (lo, hi))
        .expect("every bounded field is in RANGES")
}

fn check(field: &'static str, value: Option<u32>) -> Result<(), PolicyError> {
    let (min, max) = range(field);
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
        check("memory_mb", patch.memory_mb)?;
        check("timeout_ms", patch.timeout_ms)?;
        check("cpu_percent", patch.cpu_percent)?;
        check("pids", patch.pids)?;
        check("tmp_mb", patch.tmp_mb)?;
        check("max_concurrency", patch.max_concurrency)?;
        check("calls_per_minute", patch.calls_per_minute)?;
        check("max_unzipped_mb", patch.max_unzipped_mb)?;
        check("job_timeout_ms", patch.job_timeout_ms)?;
        check("log_retention_hours", patch.log_retention_hours)?;
        check("log_mb", patch.log_mb)?;
        if let Some(Some(q)) = patch.cpu_seconds_per_month {
            if q == 0 || q > MAX_QUOTA_SECONDS {
                return Err(PolicyError::QuotaOutOfRange(q));
            }
        }
        if let Some(preload) = &patch.preload {
            if preload.len() > MAX_PRELOAD {
                return Err(PolicyError::Preload(format!("{} names", preload.len())));
            }
            if let Some(bad) = preload.iter().find(|n| !is_module_name(n)) {
                return Err(PolicyError::Preload(bad.chars().take(80).collect()));
            }
        }
        let p = patch.clone();
        self.memory_mb = p.memory_mb.unwrap_or(self.memory_mb);
        self.timeout_ms = p.timeout_ms.unwrap_or(self.timeout_ms);
        self.cpu_percent = p.cpu_percent.unwrap_or(self.cpu_percent);
        self.pids = p.pids.unwrap_or(self.pids);
        self.tmp_mb = p.tmp_mb.unwrap_or(self.tmp_mb);
        self.max_concurrency = p.max_concurrency.unwrap_or(self.max_concurrency);
        self.calls_per_minute = p.calls_per_minute.unwrap_or(self.calls_per_minute);
        if let Some(network) = p.network.clone() {
            self.network = network;
        }
        self.builtins = p.builtins.unwrap_or(self.builtins);
        if let Some(quota) = p.cpu_seconds_per_month {
            self.cpu_seconds_per_month = quota;
        }
        self.max_unzipped_mb = p.max_unzipped_mb.unwrap_or(self.max_unzipped_mb);
        self.job_timeout_ms = p.job_timeout_ms.unwrap_or(self.job_timeout_ms);
        self.log_retention_hours = p.log_retention_hours.unwrap_or(self.log_retention_hours);
        self.log_mb = p.log_mb.unwrap_or(self.log_mb);
        if let Some(preload) = p.preload {
            let mut seen = std::collections::BTreeSet::new();
            self.preload = preload
                .into_iter()
                .filter(|n| seen.insert(n.clone()))
                .collect();
        }
        Ok(())
    }

    /// `base` with `overrides` applied, both already validated when they were stored.
    pub fn effective(base: &Policy, overrides: &PolicyPatch) -> Policy {
        let mut p = base.clone();
        if p.apply(overrides).is_err() {
            // Stored overrides were validated when set; should limits ever tighten, the
            // plan's values stand.
            return base.clone();
        }
        p
    }
}

/// The plans every store starts with; operators change or add plans at will.
pub fn builtin_plans() -> Vec<(&'static str, Policy)> {
    let default = Policy::default();
    vec![
        ("default", default.clone()),
        (
            "free",
            Policy {
                memory_mb: 128,
                timeout_ms: 10_000,
                max_concurrency: 2,
                calls_per_minute: 60,
                cpu_seconds_per_month: Some(3_600),
                job_timeout_ms: 300_000,
                ..default.clone()
            },
        ),
        (
            "annual",
            Policy {
                memory_mb: 1024,
                timeout_ms: 120_000,
                cpu_percent: 200,
                pids: 256,
                tmp_mb: 512,
                max_concurrency: 32,
                calls_per_minute: 6_000,
                cpu_seconds_per_month: Some(1_000_000),
                job_timeout_ms: 3_600_000,
                ..default
            },
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_is_not_a_value_but_removes_the_quota() {
        for field in ["memory_mb", "network", "builtins", "preload"] {
            let text = format!("{{\"{field}\": null}}");
            assert!(
                serde_json::from_str::<PolicyPatch>(&text).is_err(),
                "{field}"
            );
        }
        let p: PolicyPatch = serde_json::from_str(r#"{"cpu_seconds_per_month": null}"#).unwrap();
        assert_eq!(p.cpu_seconds_per_month, Some(None));
        let p: PolicyPatch = serde_json::from_str("{}").unwrap();
        assert_eq!(p, PolicyPatch::default());
    }

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
    fn overrides_merge_reset_and_apply_over_a_plan() {
        let mut overrides: PolicyPatch =
            serde_json::from_str(r#"{"timeout_ms": 500, "cpu_seconds_per_month": 10}"#).unwrap();
        let later: PolicyPatch = serde_json::from_str(r#"{"memory_mb": 64}"#).unwrap();
        overrides.merge(&later);
        assert_eq!(
            serde_json::to_value(&overrides).unwrap(),
            serde_json::json!({"memory_mb": 64, "timeout_ms": 500, "cpu_seconds_per_month": 10})
        );
        let p = Policy::effective(&Policy::default(), &overrides);
        assert_eq!((p.memory_mb, p.timeout_ms), (64, 500));
        assert_eq!(p.cpu_seconds_per_month, Some(10));
        overrides.reset(&["timeout_ms".into()]).unwrap();
        assert_eq!(
            Policy::effective(&Policy::default(), &overrides).timeout_ms,
            30_000
        );
        assert!(overrides.reset(&["nope".into()]).is_err());
        // `null` removes a quota; an absent field leaves it.
        let none: PolicyPatch = serde_json::from_str(r#"{"cpu_seconds_per_month": null}"#).unwrap();
        assert_eq!(none.cpu_seconds_per_month, Some(None));
        let mut q = p.clone();
        q.apply(&none).unwrap();
        assert_eq!(q.cpu_seconds_per_month, None);
        let zero: PolicyPatch = serde_json::from_str(r#"{"cpu_seconds_per_month": 0}"#).unwrap();
        assert!(q.apply(&zero).is_err());
    }

    #[test]
    fn preload_takes_module_names_only() {
        let mut p = Policy::default();
        let ok: PolicyPatch =
            serde_json::from_str(r#"{"preload": ["pandas", "pkg.sub_2", "pandas"]}"#).unwrap();
        p.apply(&ok).unwrap();
        assert_eq!(p.preload, vec!["pandas".to_owned(), "pkg.sub_2".to_owned()]);
        for bad in [
            r#"{"preload": ["os; import x"]}"#,
            r#"{"preload": [""]}"#,
            r#"{"preload": ["a..b"]}"#,
            r#"{"preload": ["1abc"]}"#,
            r#"{"preload": ["../etc"]}"#,
        ] {
            let patch: PolicyPatch = serde_json::from_str(bad).unwrap();
            let mut q = p.clone();
            assert_eq!(q.apply(&patch).unwrap_err().field(), "preload", "{bad}");
            assert_eq!(q, p, "{bad}");
        }
        let many: PolicyPatch = serde_json::from_value(serde_json::json!({
            "preload": (0..33).map(|i| format!("m{i}")).collect::<Vec<_>>()
        }))
        .unwrap();
        assert!(p.clone().apply(&many).is_err());
        // An empty list turns preloading off; the field is then left out of the JSON.
        let off: PolicyPatch = serde_json::from_str(r#"{"preload": []}"#).unwrap();
        p.apply(&off).unwrap();
        assert!(p.preload.is_empty());
        assert!(serde_json::to_value(&p).unwrap().get("preload").is_none());
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<PolicyPatch>(r#"{"memroy_mb": 5}"#).is_err());
    }
}
