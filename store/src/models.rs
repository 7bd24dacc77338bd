//! What the store holds, as validated types: a row that cannot be made into one of these is an
//! [`InvalidRow`](crate::StoreError::InvalidRow) naming the row, never a default.
//!
//! The types that matter for safety are the tenant's identity: [`TenantUid`] cannot hold 0, a
//! system uid, or anything `setresuid` would read as "leave unchanged", so no code reading a
//! tenant can run its calls as root by accident.

use std::fmt;

use falra_policies::PolicyPatch;
use falra_tenants::{TenantName, VersionId};

/// A tenant's own uid (and gid, the same number): the identity its calls and builds run as.
///
/// Always in [`TenantUid::FIRST`]`..=`[`TenantUid::LAST`]: never root, never a system or
/// `nobody` uid, never `u32::MAX` (`-1`, which `setresuid` takes as "unchanged").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct TenantUid(u32);

impl TenantUid {
    /// The first uid given to a tenant; each new tenant gets the next free one.
    pub const FIRST: u32 = 200_000;
    /// The last: below `i32::MAX`, so the number also fits every signed uid field.
    pub const LAST: u32 = 0x7fff_fffe;

    pub fn new(uid: i64) -> Result<TenantUid, String> {
        match u32::try_from(uid) {
            Ok(u) if (Self::FIRST..=Self::LAST).contains(&u) => Ok(TenantUid(u)),
            _ => Err(format!(
                "uid {uid} is outside the tenant range {}..={}",
                Self::FIRST,
                Self::LAST
            )),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for TenantUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A plan's name: 1 to 64 ASCII letters, digits, `_` or `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct PlanName(String);

impl PlanName {
    pub fn parse(name: &str) -> Result<PlanName, String> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(PlanName(name.to_owned()))
        } else {
            Err(format!(
                "{name:?} is not a valid plan name: use 1 to 64 letters, digits, '_' or '-'"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PlanName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantRow {
    pub name: TenantName,
    pub repo: Option<String>,
    pub branch: String,
    pub subdir: Option<String>,
    pub plan: PlanName,
    /// The push webhook's secret, sealed (`falra_policies::SecretKey`).
    pub webhook_secret: Option<String>,
    /// The tenant's own policy fields over its plan's.
    pub overrides: PolicyPatch,
    pub active_version: Option<VersionId>,
    pub created_at: i64,
    /// Allocated by [`crate::Store::insert_tenant`], never changed.
    pub uid: TenantUid,
    /// Environment variables its calls and jobs get, in the order set.
    pub env: Vec<(String, String)>,
}

/// A tenant about to be created: everything but what the store allocates.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTenant {
    pub name: TenantName,
    pub repo: Option<String>,
    pub branch: String,
    pub subdir: Option<String>,
    pub plan: PlanName,
    pub webhook_secret: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRow {
    pub id: VersionId,
    /// What made it: `git`, `upload`, `rollback`…
    pub source: String,
    pub created_at: i64,
    /// The commit the version was built from (none: uploads only).
    pub git_commit: Option<String>,
    /// The version's callable functions as JSON, found when it was made.
    pub functions: Option<String>,
    /// When it last became the active version.
    pub activated_at: Option<i64>,
    /// The modules it holds from uploads.
    pub uploads: Vec<String>,
    /// The steps of the deploy that last made it, as JSON: a sync of the same tree again
    /// replaces them, a rollback keeps them (none for versions made before they were kept).
    pub deploy_log: Option<String>,
    /// The packages its virtualenv was built from (`falra_core::deploy::uv::Package`s), as
    /// JSON: a rollback rebuilds exactly these (none without a requirements file).
    pub packages: Option<String>,
}

/// A secret's name and what is known of it without opening it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretName {
    pub key: String,
    pub updated_at: i64,
    /// Where it is exposed besides the node (`env`), if anywhere.
    pub expose: Option<String>,
}

/// A version about to become active.
#[derive(Debug, Clone, Copy)]
pub struct NewVersion<'a> {
    pub id: &'a VersionId,
    /// What made it: `git`, `upload`, `rollback`…
    pub source: &'a str,
    pub git_commit: Option<&'a str>,
    pub functions: Option<&'a str>,
    /// The modules it holds from uploads, as a JSON list of names.
    pub uploads: Option<&'a str>,
    /// The deploy's steps, as JSON (`falra_core::deploy::StepRecord`s).
    pub deploy_log: Option<&'a str>,
    /// The packages of its virtualenv, as JSON.
    pub packages: Option<&'a str>,
    pub now: i64,
}

/// The change to the tenant's uploads a new version was built with.
#[derive(Debug, Clone, Copy)]
pub enum UploadChange<'a> {
    None,
    Put {
        module: &'a str,
        source: &'a str,
        sha256: &'a str,
        now: i64,
    },
    Delete {
        module: &'a str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRow {
    pub module: String,
    pub source: String,
    pub sha256: String,
    pub updated_at: i64,
}

/// One finished call (or deploy child), as metering records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    pub call_id: String,
    pub tenant: TenantName,
    pub token_id: String,
    pub function: String,
    pub version: Option<String>,
    /// `ok`, or the error code of the answer.
    pub outcome: String,
    pub wall_ms: i64,
    pub cpu_ms: i64,
    pub peak_memory_bytes: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub at: i64,
    /// What the call printed and its error, kept when there is either.
    pub log: Option<CallLog>,
}

/// A call's logs (in `falra_sandbox::logs`' stored form) and error message, and how much of
/// its tenant's logs the store keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallLog {
    pub logs: String,
    pub error: Option<String>,
    /// Logs older than this (milliseconds) are removed.
    pub keep_ms: i64,
    /// Past this many bytes of a tenant's logs, the oldest are removed.
    pub keep_bytes: i64,
}

/// One recorded call, as `GET /v1/calls/{call_id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallView {
    pub call_id: String,
    pub tenant: String,
    pub function: String,
    pub version: Option<String>,
    pub outcome: String,
    pub wall_ms: i64,
    pub cpu_ms: i64,
    pub peak_memory_bytes: i64,
    pub at: i64,
    pub error: Option<String>,
    /// `None`: nothing kept (the call printed nothing, or its logs were pruned).
    pub logs: Option<String>,
}

/// Which recorded calls to list, newest first: of one tenant or all, by outcome, after a
/// cursor.
#[derive(Debug, Clone, Default)]
pub struct CallFilter {
    pub tenant: Option<TenantName>,
    pub outcome: OutcomeFilter,
    /// The `(at, call_id)` of the last call of the previous page.
    pub before: Option<(i64, String)>,
    pub limit: i64,
}

/// Which outcomes a call listing keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum OutcomeFilter {
    #[default]
    Any,
    Ok,
    /// Any error code.
    Failed,
    /// One error code (`timeout`, `user_error`, …).
    Code(String),
}

/// Calls of one UTC day (deploy-time children left out; their CPU counts in `cpu_ms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayStats {
    /// The day's start, epoch ms.
    pub day: i64,
    pub calls: i64,
    pub errors: i64,
    pub cpu_ms: i64,
    /// Wall time of the median and the 99th-percentile call (nearest rank).
    pub p50_ms: i64,
    pub p99_ms: i64,
}

/// A console session as stored: the hashes of its cookie and of the operator token it was
/// opened with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub id: String,
    pub hash: String,
    pub token_hash: String,
    pub token_id: String,
    pub csrf: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

/// Calls of one tenant's function over a time range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub tenant: String,
    pub function: String,
    pub calls: i64,
    pub ok: i64,
    pub wall_ms: i64,
    pub cpu_ms: i64,
    pub max_peak_memory_bytes: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
}

/// One audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub id: String,
    pub at: i64,
    /// The token id that acted (an operator's or a tenant's), or `webhook`.
    pub actor: String,
    pub action: String,
    pub tenant: Option<String>,
    /// JSON.
    pub detail: String,
    /// The client's address.
    pub remote: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Tenant,
    Operator,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Tenant => "tenant",
            TokenKind::Operator => "operator",
        }
    }

    pub fn parse(s: &str) -> Option<TokenKind> {
        match s {
            "tenant" => Some(TokenKind::Tenant),
            "operator" => Some(TokenKind::Operator),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub id: String,
    /// The tenant of a tenant token; none for an operator's.
    pub tenant: Option<TenantName>,
    pub kind: TokenKind,
    pub hash: String,
    pub prefix: String,
    pub scopes: String,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_uid_is_never_root_a_system_uid_or_minus_one() {
        for bad in [
            0,
            1,
            65_534,
            i64::from(TenantUid::FIRST) - 1,
            -1,
            i64::from(u32::MAX),
            i64::from(TenantUid::LAST) + 1,
            i64::MAX,
            i64::MIN,
        ] {
            assert!(TenantUid::new(bad).is_err(), "{bad}");
        }
        for good in [TenantUid::FIRST, 200_001, TenantUid::LAST] {
            assert_eq!(TenantUid::new(i64::from(good)).unwrap().get(), good);
        }
    }

    #[test]
    fn plan_names() {
        for ok in ["default", "pro-2", "A_b"] {
            assert_eq!(PlanName::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "a b", "é", &"x".repeat(65)] {
            assert!(PlanName::parse(bad).is_err(), "{bad}");
        }
    }
}

/// A node serving the store: registered at its start, beating while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    /// `node_` and 16 hex digits, made at the node's start.
    pub id: String,
    /// The address it listens on.
    pub address: String,
    /// Its `falra` version.
    pub version: String,
    pub started_at: i64,
    pub heartbeat_at: i64,
}

/// Where a background job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        Some(match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "succeeded" => JobStatus::Succeeded,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            _ => return None,
        })
    }

    /// Whether the job has ended (nothing will change it again).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// A job as it is submitted.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// `j_` and 16 hex digits.
    pub id: String,
    pub tenant: TenantName,
    pub token_id: String,
    pub function: String,
    /// The keyword arguments, as a JSON object.
    pub kwargs: String,
    /// A pinned version, or the active one at the time it runs.
    pub version: Option<String>,
    pub max_attempts: i64,
    pub idempotency_key: Option<String>,
    pub callback_url: Option<String>,
    pub created_at: i64,
}

/// A job as it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub id: String,
    pub tenant: TenantName,
    pub token_id: String,
    pub function: String,
    pub kwargs: String,
    pub version: Option<String>,
    pub status: JobStatus,
    /// Times a node has claimed it.
    pub attempts: i64,
    pub max_attempts: i64,
    /// Not claimed before this time (a retry's backoff).
    pub run_after: i64,
    /// The node whose lease it runs under, while running.
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    pub idempotency_key: Option<String>,
    pub callback_url: Option<String>,
    /// The latest progress record, as JSON.
    pub progress: Option<String>,
    /// The answer, as JSON, once it ended (and the last failure while it waits for a retry).
    pub outcome: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// `pending`, `delivered` or `failed` once a job with a callback ended.
    pub callback_state: Option<String>,
    /// Deliveries tried so far (the fence of the one in flight).
    pub callback_attempts: i64,
    /// Why the last delivery failed.
    pub callback_error: Option<String>,
}

/// A schedule as it is created.
#[derive(Debug, Clone)]
pub struct NewSchedule {
    /// `s_` and 16 hex digits.
    pub id: String,
    pub tenant: TenantName,
    pub token_id: String,
    /// A cron expression the service checked (5 fields, or 6 with seconds first; UTC).
    pub cron: String,
    pub function: String,
    pub kwargs: String,
    pub version: Option<String>,
    /// The first tick.
    pub next_at: i64,
    pub created_at: i64,
}

/// A schedule as it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleRow {
    pub id: String,
    pub tenant: TenantName,
    pub token_id: String,
    pub cron: String,
    pub function: String,
    pub kwargs: String,
    pub version: Option<String>,
    pub paused: bool,
    /// The next tick (epoch ms).
    pub next_at: i64,
    /// The last tick that made a job, and that job.
    pub last_at: Option<i64>,
    pub last_job: Option<String>,
    pub created_at: i64,
}

/// A claimed job's fence: only the node holding this lease may write the job's progress and
/// end.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    pub job: String,
    pub owner: String,
    pub attempt: i64,
}

/// Which of a tenant's jobs to list: by status, newest first, after a cursor.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub limit: i64,
    /// The `(created_at, id)` of the last job of the previous page.
    pub before: Option<(i64, String)>,
}
