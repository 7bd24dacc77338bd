//! One function call: from a checked caller and validated arguments to the function's answer.
//!
//! The steps, in order: the tenant and its effective policy, the monthly quota, admission
//! (calls per minute, concurrency, the node's cap; on a shared store, calls per minute across
//! the cluster too), the deadline, then either a built-in job
//! or the tenant's own function: resolve the version once (a deploy during the call does not
//! disturb it), resolve the module in that version's tree, start a child through the runtime's
//! starter, deliver the request, and read what the child left. What metering needs is filled
//! in as the call goes ([`Metered`]) and recorded once it is answered ([`record`]).

use std::num::NonZeroU32;

use falra_policies::admission::{Limits as AdmissionLimits, Refusal};
use falra_runtime::{CallChild, ChildKey};
use falra_sandbox::logs::Logs;
use falra_sandbox::protocol::{interpret, PROTOCOL_VERSION};
use falra_sandbox::{ChildFailure, ProtocolRequest};
use falra_store::{CallLog, CallRecord, StoreError};
use falra_tenants::{resolve_module, FnName, TenantName, VersionId};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::auth::Caller;
use crate::builtin::BuiltinError;
use crate::metering::{check_quota, QuotaError};
use crate::plans::effective_policy;
use crate::{Core, ErrorCode};

/// How a call may differ from its tenant's defaults, validated at the boundary.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// A version to run instead of the active one.
    pub version: Option<VersionId>,
    /// A shorter deadline than the policy's (a longer one is cut to the policy's).
    pub timeout_ms: Option<NonZeroU32>,
    /// Run as a background job: the policy's `job_timeout_ms`, a cancel signal, progress.
    pub background: Option<Background>,
}

/// What a background job's call has that a request's does not.
#[derive(Debug, Clone)]
pub struct Background {
    /// Set to stop the child (the job was cancelled, its lease lost, its node stopping).
    pub cancel: tokio::sync::watch::Receiver<bool>,
    /// Where the child's latest progress record goes.
    pub progress: std::sync::Arc<tokio::sync::watch::Sender<Option<Vec<u8>>>>,
    /// What the progress records must not show, once the call knows (its secrets for code).
    pub masker: std::sync::Arc<std::sync::OnceLock<falra_sandbox::logs::Masker>>,
}

impl Background {
    /// `limits` with this job's cancel signal and progress sink.
    pub fn watch(&self, mut limits: falra_sandbox::Limits) -> falra_sandbox::Limits {
        limits.cancel = Some(self.cancel.clone());
        limits.progress = Some(self.progress.clone());
        limits
    }
}

/// What metering learns of a call as it goes; recorded once it is answered.
#[derive(Debug, Default)]
pub struct Metered {
    pub tenant: Option<TenantName>,
    pub token_id: String,
    pub function: String,
    pub version: Option<String>,
    pub wall_ms: u64,
    pub cpu_ms: u64,
    pub peak_memory_bytes: u64,
    pub bytes_in: usize,
    pub bytes_out: usize,
    /// What the function printed.
    pub logs: Logs,
    /// The answer's error message, when it failed.
    pub error: Option<String>,
    /// How long and how much of the tenant's logs are kept (its policy's), once known.
    pub keep_logs: Option<(i64, i64)>,
}

/// What a call used, as its answer reports it.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Usage {
    pub wall_ms: u64,
    pub cpu_ms: u64,
    pub peak_memory_bytes: u64,
}

/// A call's successful answer.
#[derive(Debug)]
pub struct Answer {
    pub result: Box<RawValue>,
    /// The version that ran (`builtin` for a built-in job).
    pub version: String,
    /// What the function printed.
    pub logs: String,
    pub usage: Usage,
}

/// Why a call has no answer from its function.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("this node is shutting down and takes no new calls")]
    ShuttingDown,
    /// Still running at the node's shutdown deadline, and stopped.
    #[error("the call was stopped: this node shut down before it ended")]
    StoppedAtShutdown { usage: Usage, logs: String },
    /// The token's tenant is gone.
    #[error("unknown token")]
    UnknownTenant,
    #[error(transparent)]
    Quota(#[from] QuotaError),
    #[error("the call was not admitted")]
    Refused {
        refusal: Refusal,
        calls_per_minute: u32,
    },
    #[error("this tenant has no version {0:?}")]
    NoSuchVersion(String),
    #[error("this tenant has no deployed code yet: sync its repository first")]
    NotDeployed,
    #[error("{message}")]
    FnNotFound { message: String, module: String },
    #[error(transparent)]
    Builtin(#[from] BuiltinError),
    #[error("could not encode the built-in's result")]
    Encode(#[source] serde_json::Error),
    #[error(transparent)]
    Run(#[from] falra_runtime::RunError),
    /// The version is not on this node and could not be made here.
    #[error(transparent)]
    Materialise(crate::deploy::DeployError),
    /// The function ran and failed (raised, ran out of time or memory, exited, answered
    /// something that is not an answer).
    #[error("the function failed")]
    Failed(Box<Failed>),
    /// The tenant's secrets for code could not be opened.
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretUseError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A function's failure, with what the answer reports beside it.
#[derive(Debug)]
pub struct Failed {
    pub failure: ChildFailure,
    pub logs: String,
    pub memory_mb: u32,
    pub timeout_ms: u32,
    pub result_cap: usize,
    /// What the call used before it failed.
    pub usage: Usage,
}

/// Refuses new calls while the node is shutting down.
pub fn accepting(state: &Core) -> Result<(), CallError> {
    if state.is_shutting_down() {
        return Err(CallError::ShuttingDown);
    }
    Ok(())
}

/// Runs `function` of the caller's tenant with `kwargs`. `metered` is filled in as far as the
/// call got, whatever its outcome.
pub async fn run(
    state: &Core,
    caller: &Caller,
    function: &FnName,
    kwargs: &Map<String, Value>,
    options: CallOptions,
    call_id: &str,
    metered: &mut Metered,
) -> Result<Answer, CallError> {
    let tenant = state
        .cache
        .tenant(&state.store, &caller.tenant)
        .await?
        .ok_or(CallError::UnknownTenant)?;
    let policy = effective_policy(state, &tenant);
    metered.keep_logs = Some((
        i64::from(policy.log_retention_hours) * 3_600_000,
        i64::from(policy.log_mb) << 20,
    ));
    check_quota(state, &caller.tenant, policy.cpu_seconds_per_month).await?;
    let permit = state
        .admission
        .admit(
            &caller.tenant,
            AdmissionLimits {
                calls_per_minute: policy.calls_per_minute,
                max_concurrency: policy.max_concurrency,
            },
            std::time::Instant::now(),
        )
        .map_err(|refusal| CallError::Refused {
            refusal,
            calls_per_minute: policy.calls_per_minute,
        })?;
    // A node whose store does not answer its beat admits by itself (below), at once.
    let slot = if state.store.is_shared() && state.node.is_healthy() {
        match cluster_admit(state, &caller.tenant, &policy).await {
            Ok(slot) => Some(slot),
            // The store cannot be reached: this node's own admission (above) is all there is
            // until it can, so a call it authorised from memory still runs.
            Err(CallError::Store(StoreError::Busy(e))) => {
                tracing::debug!(error = %e, "the store is unreachable: admitted by this node alone");
                None
            }
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    let permit = (permit, slot);

    let longest = match options.background {
        Some(_) => policy.job_timeout_ms,
        None => policy.timeout_ms,
    };
    let timeout_ms = match options.timeout_ms {
        Some(t) => t.get().min(longest),
        None => longest,
    };
    let watch = |limits| match &options.background {
        Some(b) => b.watch(limits),
        None => limits,
    };
    let uid = tenant.uid.get();
    if falra_builtins::is_reserved_module(function.module()) {
        let outcome = crate::builtin::run(
            state,
            &caller.tenant,
            uid,
            &policy,
            function,
            kwargs,
            watch(state.runtime.limits(timeout_ms)),
            permit,
        )
        .await?;
        metered.wall_ms = outcome.wall_ms;
        metered.cpu_ms = outcome.cpu_ms;
        metered.peak_memory_bytes = outcome.peak_memory_bytes;
        if outcome.result.is_err() && state.runtime.is_stopping_calls() {
            return Err(CallError::StoppedAtShutdown {
                usage: Usage {
                    wall_ms: outcome.wall_ms,
                    cpu_ms: outcome.cpu_ms,
                    peak_memory_bytes: outcome.peak_memory_bytes,
                },
                logs: String::new(),
            });
        }
        let result =
            serde_json::value::to_raw_value(&outcome.result?).map_err(CallError::Encode)?;
        return Ok(Answer {
            result,
            version: "builtin".to_owned(),
            logs: String::new(),
            usage: Usage {
                wall_ms: outcome.wall_ms,
                cpu_ms: outcome.cpu_ms,
                peak_memory_bytes: outcome.peak_memory_bytes,
            },
        });
    }

    let version = match options.version.clone() {
        Some(pinned) => {
            if state
                .store
                .version(&caller.tenant, &pinned)
                .await?
                .is_none()
            {
                return Err(CallError::NoSuchVersion(pinned.as_str().to_owned()));
            }
            pinned
        }
        None => tenant
            .active_version
            .clone()
            .ok_or(CallError::NotDeployed)?,
    };
    tracing::Span::current().record("version", version.as_str());
    let root = state.layout.version_dir(&caller.tenant, &version);
    if !root.is_dir() {
        // Deployed through another node of the cluster: made here on its first call.
        crate::deploy::materialise(state, &tenant, &version)
            .await
            .map_err(CallError::Materialise)?;
    }
    let mounts = state.code_mounts(root);
    resolve_module(&mounts.code, function)
        .or_else(|e| match &mounts.venv {
            // A module of the tenant's own packages; the runner checks where it was found.
            Some(venv) => resolve_module(venv, function),
            None => Err(e),
        })
        .map_err(|e| CallError::FnNotFound {
            message: e.to_string(),
            module: function.module().to_owned(),
        })?;

    let code_env = crate::secrets::code_env(state, &caller.tenant, &tenant.env).await?;
    if let Some(background) = &options.background {
        let _ = background.masker.set(code_env.masker.clone());
    }
    let stdin = ProtocolRequest {
        protocol: PROTOCOL_VERSION,
        call_id,
        function: function.as_str(),
        kwargs,
        env: &code_env.vars,
    }
    .encode();
    metered.version = Some(version.as_str().to_owned());
    let key = ChildKey {
        uid,
        version: version.as_str().to_owned(),
        policy: serde_json::to_string(&policy).expect("a policy serialises"),
    };
    let in_use = state.use_version(&caller.tenant, version.as_str());
    let child = state
        .runtime
        .start_call(CallChild {
            key,
            mounts,
            policy: policy.clone(),
        })
        .await?;
    let ran = child
        .run_to_end(
            stdin,
            watch(state.runtime.limits(timeout_ms)),
            (in_use, permit),
        )
        .await?;
    let finished = &ran.finished;
    let kept = Logs::from_pipe(
        &finished.stderr,
        finished.stderr_dropped,
        &finished.stderr_tail,
    )
    .masked(&code_env.masker);
    let logs = kept.text();
    metered.logs = kept;
    let usage = Usage {
        wall_ms: ran.wall_ms,
        cpu_ms: ran.cpu_ms,
        peak_memory_bytes: ran.peak_memory_bytes,
    };
    metered.wall_ms = usage.wall_ms;
    metered.cpu_ms = usage.cpu_ms;
    metered.peak_memory_bytes = usage.peak_memory_bytes;
    let result_cap = state.config.max_result_bytes;
    let answer = interpret(finished, result_cap);
    // Killed in its memory limit: whatever else the child left, that is the answer.
    let answer = match answer {
        Err(ChildFailure::ProcessExited { .. }) | Err(ChildFailure::FunctionError { .. })
            if ran.oom_killed =>
        {
            Err(ChildFailure::MemoryLimitExceeded)
        }
        // Stopped at the node's shutdown deadline: that is the answer, whatever the child left.
        Err(_) if state.runtime.is_stopping_calls() => {
            return Err(CallError::StoppedAtShutdown { usage, logs })
        }
        Err(failure) => Err(code_env.masker.failure(failure)),
        other => other,
    };
    tracing::info!(
        wall_ms = usage.wall_ms,
        outcome = match &answer {
            Ok(_) => "ok",
            Err(f) => failure_code(f).as_str(),
        },
        "call finished"
    );
    match answer {
        Ok(result) => Ok(Answer {
            result,
            version: version.as_str().to_owned(),
            logs,
            usage,
        }),
        Err(failure) => Err(CallError::Failed(Box::new(Failed {
            failure,
            logs,
            memory_mb: policy.memory_mb,
            timeout_ms,
            result_cap,
            usage,
        }))),
    }
}

/// The tenant's `calls_per_minute` and `max_concurrency` over every node of a shared store,
/// in one round trip: each admitted call is counted in the store under its calendar minute, and
/// takes one of the tenant's slots there until its child is gone ([`ClusterSlot`]). A call past
/// the minute's limit is refused until the next minute begins; one past the running limit,
/// until a call of the tenant ends on any node. Within a node, admission's token bucket and
/// counters have already spread and bounded the calls; this makes the limits the cluster's.
async fn cluster_admit(
    state: &Core,
    tenant: &TenantName,
    policy: &falra_policies::Policy,
) -> Result<ClusterSlot, CallError> {
    let node = state.node.id().unwrap_or("node_unregistered").to_owned();
    // Counted here before the store is asked, so a node's reclaim never takes a slot being
    // taken.
    let slot = ClusterSlot::counted(state, tenant, node);
    let now = crate::clock::now_ms();
    let admitted = state
        .store
        .admit_call(
            tenant,
            now / 60_000,
            i64::from(policy.calls_per_minute),
            i64::from(policy.max_concurrency),
            &slot.node,
        )
        .await?;
    if admitted.minute_calls > i64::from(policy.calls_per_minute) {
        let left_ms = u64::try_from(60_000 - now % 60_000).unwrap_or(60_000);
        return Err(CallError::Refused {
            refusal: Refusal::RateLimited {
                retry_after: std::time::Duration::from_millis(left_ms),
            },
            calls_per_minute: policy.calls_per_minute,
        });
    }
    if !admitted.slot {
        return Err(CallError::Refused {
            refusal: Refusal::ConcurrencyLimited {
                limit: policy.max_concurrency,
            },
            calls_per_minute: policy.calls_per_minute,
        });
    }
    Ok(slot.held())
}

/// One of a tenant's running-call slots on a shared store, given back (in the background) when
/// dropped. Counted in this node's memory for as long as it may be held in the store, which is
/// what the beat's reclaim of leaked slots goes by.
pub struct ClusterSlot {
    state: Core,
    tenant: TenantName,
    node: String,
    held: bool,
}

impl ClusterSlot {
    fn counted(state: &Core, tenant: &TenantName, node: String) -> ClusterSlot {
        *state
            .slots
            .lock()
            .expect("slot table poisoned")
            .entry(tenant.clone())
            .or_default() += 1;
        ClusterSlot {
            state: state.clone(),
            tenant: tenant.clone(),
            node,
            held: false,
        }
    }

    fn held(mut self) -> ClusterSlot {
        self.held = true;
        self
    }
}

impl Drop for ClusterSlot {
    fn drop(&mut self) {
        let (state, tenant, node, held) = (
            self.state.clone(),
            self.tenant.clone(),
            std::mem::take(&mut self.node),
            self.held,
        );
        if !held {
            forget_slot(&state, &tenant);
            return;
        }
        let span = tracing::Span::current();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                // Retried through a passing outage (a database restart): a slot not given back
                // stays counted against the tenant while it is busy on this node.
                let mut wait = std::time::Duration::from_millis(100);
                let started = std::time::Instant::now();
                loop {
                    match state.store.release_call(&tenant, &node).await {
                        Ok(()) => break,
                        Err(e) if started.elapsed() > std::time::Duration::from_secs(60) => {
                            tracing::warn!(error = %falra_runtime::ErrorChain(&e), "could not give a call slot back: reclaimed once the tenant is idle on this node");
                            break;
                        }
                        Err(_) => {
                            tokio::time::sleep(wait).await;
                            wait = (wait * 2).min(std::time::Duration::from_secs(5));
                        }
                    }
                }
                forget_slot(&state, &tenant);
            },
            span,
        ));
    }
}

fn forget_slot(state: &Core, tenant: &TenantName) {
    let mut slots = state.slots.lock().expect("slot table poisoned");
    if let Some(n) = slots.get_mut(tenant) {
        *n -= 1;
        if *n == 0 {
            slots.remove(tenant);
        }
    }
}

/// Tenants with calls in flight on this node (holding, or taking, a slot in the store).
pub fn busy_tenants(state: &Core) -> Vec<String> {
    state
        .slots
        .lock()
        .expect("slot table poisoned")
        .keys()
        .map(|t| t.as_str().to_owned())
        .collect()
}

/// Records an answered call of an identified tenant: its CPU time against the quota, its
/// record for metering. `outcome` is `ok` or the answer's error code.
pub fn record(state: &Core, call_id: String, metered: Metered, outcome: &str) {
    let Some(tenant) = metered.tenant else {
        return;
    };
    let at = crate::clock::now_ms();
    let cpu_ms = i64::try_from(metered.cpu_ms).unwrap_or(i64::MAX);
    state.quotas.add(&tenant, cpu_ms, at);
    state.meter.record(CallRecord {
        call_id,
        tenant,
        token_id: metered.token_id,
        function: metered.function,
        version: metered.version,
        outcome: outcome.to_owned(),
        wall_ms: i64::try_from(metered.wall_ms).unwrap_or(i64::MAX),
        cpu_ms,
        peak_memory_bytes: i64::try_from(metered.peak_memory_bytes).unwrap_or(i64::MAX),
        bytes_in: i64::try_from(metered.bytes_in).unwrap_or(i64::MAX),
        bytes_out: i64::try_from(metered.bytes_out).unwrap_or(i64::MAX),
        at,
        log: (!metered.logs.is_empty() || metered.error.is_some()).then(|| {
            let (keep_ms, keep_bytes) = metered.keep_logs.unwrap_or((7 * 86_400_000, 64 << 20));
            CallLog {
                logs: metered.logs.stored().to_owned(),
                error: metered.error,
                keep_ms,
                keep_bytes,
            }
        }),
    });
}

/// The error code of a function's failure.
pub fn failure_code(f: &ChildFailure) -> ErrorCode {
    match f {
        ChildFailure::FunctionError { .. } => ErrorCode::FunctionError,
        ChildFailure::FnNotFound { .. } => ErrorCode::FnNotFound,
        ChildFailure::ResultNotSerializable { .. } => ErrorCode::ResultNotSerializable,
        ChildFailure::ResultTooLarge { .. } => ErrorCode::ResultTooLarge,
        ChildFailure::ProcessExited { .. } => ErrorCode::ProcessExited,
        ChildFailure::MemoryLimitExceeded => ErrorCode::MemoryLimitExceeded,
        ChildFailure::Timeout => ErrorCode::Timeout,
    }
}

/// A call id: `c_` and 16 random hex digits.
pub fn new_call_id() -> String {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).expect("the operating system's random source failed");
    format!("c_{}", hex::encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_are_distinct_and_shaped() {
        let (a, b) = (new_call_id(), new_call_id());
        assert_ne!(a, b);
        assert!(a.starts_with("c_") && a.len() == 18, "{a}");
    }
}
