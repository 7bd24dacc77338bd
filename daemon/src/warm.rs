//! Children started ahead of their calls.
//!
//! Starting a Python interpreter in a fresh sandbox is most of a call's latency. For each
//! tenant version that was called recently, the daemon keeps one child set up and started,
//! blocked on reading its request; the next call of that version takes it and only has to
//! deliver the request, and a new one is prepared in the background. Every call still gets a
//! process of its own that served no call before: only the start moves off the request's path.
//!
//! A prepared child is bound to everything that went into its setup — the tenant's uid, the
//! version, the policy as it was — so a changed policy or a new version is never served by a
//! child prepared for the old one. Children nobody took within [`IDLE`] are stopped.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use falra_policies::Policy;
use falra_sandbox::runner::{child_env, interpreter_args, RUNNER_DIR};
use falra_sandbox::setup::SetupLimits;
use falra_sandbox::{ChildSpec, Finished, Limits, Prepared};

use crate::isolation::{CgroupLease, ChildIsolation, CodeMounts, CODE_DIR};
use crate::server::{AppState, Inner};

/// How long a prepared child waits for a call before it is stopped.
pub const IDLE: Duration = Duration::from_secs(60);

/// What a prepared child was made for; only a call with the same key may take it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WarmKey {
    pub uid: u32,
    pub version: String,
    /// The policy as stored (JSON): any change makes a new key.
    pub policy: String,
}

/// A started child and the cgroup it runs in.
#[derive(Debug)]
pub struct Warm {
    pub prepared: Prepared,
    pub cgroup: Option<CgroupLease>,
    made: Instant,
}

#[derive(Debug, Default)]
pub struct WarmPool {
    enabled: bool,
    ready: Mutex<HashMap<WarmKey, Warm>>,
    preparing: Mutex<HashSet<WarmKey>>,
}

impl WarmPool {
    pub fn new(enabled: bool) -> WarmPool {
        WarmPool {
            enabled,
            ..WarmPool::default()
        }
    }

    /// The prepared child for `key`, if one is ready and still alive.
    pub fn take(&self, key: &WarmKey) -> Option<Warm> {
        let warm = self.ready.lock().expect("warm pool poisoned").remove(key)?;
        warm.prepared.is_alive().then_some(warm)
    }

    /// Prepares a child for `key` in the background, unless one is ready or on its way.
    pub fn replenish(&self, state: &AppState, key: WarmKey, mounts: CodeMounts, policy: Policy) {
        if !self.enabled
            || self
                .ready
                .lock()
                .expect("warm pool poisoned")
                .contains_key(&key)
        {
            return;
        }
        if !self
            .preparing
            .lock()
            .expect("warm pool poisoned")
            .insert(key.clone())
        {
            return;
        }
        let state = state.clone();
        crate::task::spawn(async move {
            let made = prepare_child(&state, key.uid, &mounts, &policy).await;
            state
                .warm
                .preparing
                .lock()
                .expect("warm pool poisoned")
                .remove(&key);
            match made {
                Ok(warm) => {
                    let displaced = state
                        .warm
                        .ready
                        .lock()
                        .expect("warm pool poisoned")
                        .insert(key, warm);
                    if let Some(old) = displaced {
                        discard(old);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %crate::api_error::ErrorChain(&e), "could not prepare a child ahead")
                }
            }
        });
    }

    /// How many children are prepared and waiting.
    pub fn ready_count(&self) -> usize {
        self.ready.lock().expect("warm pool poisoned").len()
    }

    /// Whether a child is prepared for `version` of the tenant with `uid`.
    pub fn holds_version(&self, uid: u32, version: &str) -> bool {
        self.ready
            .lock()
            .expect("warm pool poisoned")
            .keys()
            .any(|k| k.uid == uid && k.version == version)
    }

    /// Stops the prepared children of a removed tenant.
    pub fn forget_uid(&self, uid: u32) {
        self.discard_where(|k| k.uid == uid);
    }

    /// Stops the tenant's prepared children (and forgets its mount templates) for versions
    /// other than `active` (after a deploy or a rollback they would only wait for calls pinned
    /// to an old version).
    pub fn forget_other_versions(&self, state: &AppState, uid: u32, active: &str) {
        self.discard_where(|k| k.uid == uid && k.version != active);
        state.sandbox.forget_templates_except(uid, active);
    }

    fn discard_where(&self, doomed: impl Fn(&WarmKey) -> bool) {
        let gone: Vec<Warm> = {
            let mut ready = self.ready.lock().expect("warm pool poisoned");
            let keys: Vec<WarmKey> = ready.keys().filter(|k| doomed(k)).cloned().collect();
            keys.iter().filter_map(|k| ready.remove(k)).collect()
        };
        for warm in gone {
            discard(warm);
        }
    }

    /// Stops prepared children nobody took within [`IDLE`]; runs until the daemon is gone.
    pub fn expire_idle(state: Weak<Inner>) {
        let span = tracing::info_span!("warm_pool_expiry");
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                loop {
                    tokio::time::sleep(IDLE / 4).await;
                    let Some(inner) = state.upgrade() else {
                        return;
                    };
                    let state = AppState::from_inner(inner);
                    let stale: Vec<Warm> = {
                        let mut ready = state.warm.ready.lock().expect("warm pool poisoned");
                        let keys: Vec<WarmKey> = ready
                            .iter()
                            .filter(|(_, w)| w.made.elapsed() > IDLE || !w.prepared.is_alive())
                            .map(|(k, _)| k.clone())
                            .collect();
                        keys.iter().filter_map(|k| ready.remove(k)).collect()
                    };
                    for warm in stale {
                        discard(warm);
                    }
                }
            },
            span,
        ));
    }

    /// Stops every prepared child (at shutdown).
    pub fn drain(&self) {
        let all: Vec<Warm> = self
            .ready
            .lock()
            .expect("warm pool poisoned")
            .drain()
            .map(|(_, w)| w)
            .collect();
        for warm in all {
            discard(warm);
        }
    }
}

/// Stops a prepared child and gives its cgroup back once it is gone.
fn discard(warm: Warm) {
    let Warm {
        prepared, cgroup, ..
    } = warm;
    crate::task::spawn(async move {
        prepared.kill_and_wait().await;
        drop(cgroup);
    });
}

/// Why a child could not be started or run to its end: always the node's fault (a cgroup, a
/// namespace, a process the kernel would not give), never the tenant's code, whose failures are
/// in the child's answer.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("could not prepare the child's cgroup")]
    Cgroup(#[source] falra_sandbox::cgroup::CgroupError),
    #[error("could not prepare the child's isolation")]
    Isolation(#[source] crate::isolation::IsolationError),
    #[error("could not start the child process")]
    Start(#[source] falra_sandbox::SandboxError),
    #[error("could not run the child process")]
    Run(#[source] falra_sandbox::SandboxError),
    #[error("a child's task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// Sets up and starts a child for a call of the tenant with `uid` on the version at `root`,
/// up to the point where it waits for its request.
pub async fn prepare_child(
    state: &AppState,
    uid: u32,
    mounts: &CodeMounts,
    policy: &Policy,
) -> Result<Warm, RunError> {
    let config = &state.config;
    let stage = ChildStage {
        program: config.python.clone(),
        args: None,
        extra: Vec::new(),
        env: Vec::new(),
        setup: SetupLimits::default(),
        netns: None,
        cwd: None,
    };
    prepare_stage(state, uid, mounts, policy, stage).await
}

/// A child other than a call's: a program, its arguments (`None`: the runner), more binds and
/// environment.
#[derive(Debug)]
pub struct ChildStage {
    pub program: PathBuf,
    pub args: Option<Vec<std::ffi::OsString>>,
    pub extra: Vec<falra_sandbox::Bind>,
    pub env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    /// The resource limits set before exec.
    pub setup: SetupLimits,
    /// A network namespace of its own (a build's), instead of the tenant's.
    pub netns: Option<Arc<std::os::fd::OwnedFd>>,
    /// Its working directory, as the child sees it (default: the code, `/code`).
    pub cwd: Option<PathBuf>,
}

/// Sets up and starts `stage` for the tenant with `uid`, up to where it waits for its stdin.
pub async fn prepare_stage(
    state: &AppState,
    uid: u32,
    mounts: &CodeMounts,
    policy: &Policy,
    stage: ChildStage,
) -> Result<Warm, RunError> {
    let config = &state.config;
    // On every early return below, the lease gives the cgroup back as it drops.
    let cgroup = state
        .sandbox
        .acquire_cgroup(uid, policy)
        .map_err(RunError::Cgroup)?;
    let own_netns = stage.netns.is_some();
    let mut isolation = state
        .sandbox
        .isolation(
            uid,
            mounts,
            &config.runner_dir,
            stage.extra,
            policy,
            cgroup.as_ref(),
            stage.netns,
        )
        .map_err(RunError::Isolation)?;
    if let Some(iso) = isolation.as_mut() {
        if !own_netns {
            // The tenant's gateway decides by the policy its newest child was prepared with.
            state.gateways.set_policy(uid, &policy.network);
        }
        if let Some(listener) = iso.take_new_gateway() {
            state.gateways.serve_tenant(state, uid, listener);
        }
    }
    let (isolation, hold) = match isolation.map(ChildIsolation::into_parts) {
        Some((isolation, hold)) => (Some(isolation), hold),
        None => (None, Vec::new()),
    };
    let (cwd, runner_dir) = match isolation {
        Some(_) => (Path::new(CODE_DIR), Path::new(RUNNER_DIR)),
        None => (mounts.code.as_path(), config.runner_dir.as_path()),
    };
    let cwd = stage.cwd.as_deref().unwrap_or(cwd);
    let mut env = child_env(mounts.venv_in_child(isolation.is_some()));
    if isolation.is_some() && matches!(policy.network, falra_policies::Network::Allow(_)) {
        env.extend(crate::gateway::proxy_env());
    }
    env.extend(stage.env);
    let spec = ChildSpec {
        program: stage.program,
        args: stage.args.unwrap_or_else(|| interpreter_args(runner_dir)),
        cwd: cwd.to_path_buf(),
        env,
        stdin: Vec::new(),
        limits: Limits {
            setup: stage.setup,
            ..call_limits(state, policy.timeout_ms)
        },
        seccomp: isolation.is_some(),
        isolation,
        hold,
    };
    match falra_sandbox::prepare(&spec).await {
        Ok(prepared) => Ok(Warm {
            prepared,
            cgroup,
            made: Instant::now(),
        }),
        Err(e) => {
            state
                .metrics
                .sandbox_failures
                .fetch_add(1, Ordering::Relaxed);
            Err(RunError::Start(e))
        }
    }
}

/// A child that ran to its end, and what it used: wall time from the supervisor, CPU time and
/// peak memory from its cgroup where it had one (the supervisor's figures otherwise).
#[derive(Debug)]
pub struct Ran {
    pub finished: Finished,
    pub wall_ms: u64,
    pub cpu_ms: u64,
    pub peak_memory_bytes: u64,
    /// The kernel killed something in the child's memory limit.
    pub oom_killed: bool,
}

/// Runs a prepared child to its end in a task of its own, so a caller that goes away (a client
/// hanging up) cuts nothing short: not the child's deadline, not its usage reading, not its
/// cgroup's return. `keep` (an admission permit, a version in use) is held until the child is
/// gone.
pub async fn run_to_end<K: Send + 'static>(
    warm: Warm,
    stdin: Vec<u8>,
    limits: Limits,
    keep: K,
) -> Result<Ran, RunError> {
    let run = crate::task::spawn(async move {
        let _keep = keep;
        let Warm {
            prepared, cgroup, ..
        } = warm;
        let finished = prepared.run(stdin, &limits).await;
        let usage = cgroup.as_ref().map(CgroupLease::usage);
        // Given back to the pool (its processes are gone).
        drop(cgroup);
        (finished, usage)
    });
    let (finished, usage) = run.await.map_err(RunError::Task)?;
    let finished = finished.map_err(RunError::Run)?;
    Ok(Ran {
        wall_ms: finished.usage.wall_ms,
        cpu_ms: usage
            .and_then(|u| u.cpu_ns)
            .map_or(finished.usage.cpu_ms, |ns| ns / 1_000_000),
        peak_memory_bytes: usage
            .and_then(|u| u.peak_memory_bytes)
            .unwrap_or(finished.usage.peak_memory_bytes),
        oom_killed: usage.is_some_and(|u| u.oom_killed),
        finished,
    })
}

/// The supervision limits of one call.
pub fn call_limits(state: &AppState, timeout_ms: u32) -> Limits {
    Limits {
        wall: Duration::from_millis(timeout_ms.into()),
        stdout_bytes: state.config.max_result_bytes,
        stderr_bytes: state.config.max_log_bytes,
        setup: SetupLimits::default(),
    }
}

/// A weak handle on the daemon's state, for tasks that must not keep it alive.
pub fn downgrade(state: &AppState) -> Weak<Inner> {
    Arc::downgrade(state.inner())
}
