//! One child from setup to its end: the runtime's single way of starting a process for a
//! tenant (a call's, a built-in's, a listing's, a compile's, a build's) and reading what it
//! used.
//!
//! [`prepare`] acquires the child's cgroup, builds its isolation (namespaces, mounts, the
//! tenant's gateway), and starts it up to where it waits for its stdin; [`Child::run_to_end`]
//! delivers the request and supervises it in a task of its own, and reads its usage from the
//! cgroup before giving the cgroup back.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use falra_policies::Policy;
use falra_sandbox::runner::{child_env, interpreter_args, RUNNER_DIR};
use falra_sandbox::setup::SetupLimits;
use falra_sandbox::{ChildSpec, Finished, Limits, Prepared};

use crate::cgroup_pool::CgroupLease;
use crate::isolation::{ChildIsolation, CodeMounts, CODE_DIR};
use crate::Runtime;

/// A started child, waiting for its stdin, and the cgroup it runs in.
#[derive(Debug)]
pub struct Child {
    pub prepared: Prepared,
    pub cgroup: Option<CgroupLease>,
    pub(crate) made: Instant,
    /// The preload zygote it was forked from, kept running while the child lives.
    pub(crate) zygote: Option<Arc<crate::preloads::Running>>,
}

impl Child {
    /// Whether the child still waits for its request: it is alive, and so is the preload
    /// zygote it was forked from (whose end ends it).
    pub(crate) fn is_alive(&self) -> bool {
        self.prepared.is_alive() && self.zygote.as_ref().is_none_or(|z| z.alive())
    }

    /// Stops the child and gives its cgroup back once it is gone (in the background).
    pub fn discard(self) {
        let Child {
            prepared,
            cgroup,
            zygote,
            ..
        } = self;
        crate::task::spawn(async move {
            prepared.kill_and_wait().await;
            drop(cgroup);
            drop(zygote);
        });
    }
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
    /// Fork it from the node's zygote where it can be (a call's runner).
    pub fork: bool,
    /// Its stdin instead of a pipe (a preload zygote's channel).
    pub stdin_fd: Option<Arc<std::os::fd::OwnedFd>>,
    /// The call's tenant version: fork it from that version's preload zygote where its policy
    /// preloads modules.
    pub preload: Option<crate::prestart::ChildKey>,
}

impl ChildStage {
    /// A call's child: the interpreter running the runner, nothing more.
    pub fn call(python: PathBuf) -> ChildStage {
        ChildStage {
            program: python,
            args: None,
            extra: Vec::new(),
            env: Vec::new(),
            setup: SetupLimits::default(),
            netns: None,
            cwd: None,
            fork: true,
            stdin_fd: None,
            preload: None,
        }
    }
}

/// Sets up and starts `stage` for the tenant with `uid`, up to where it waits for its stdin.
pub(crate) async fn prepare(
    state: &Runtime,
    uid: u32,
    mounts: &CodeMounts,
    policy: &Policy,
    stage: ChildStage,
) -> Result<Child, RunError> {
    let config = &state.config;
    // On every early return below, the lease gives the cgroup back as it drops.
    let cgroup = state
        .sandbox
        .acquire_cgroup(uid, policy)
        .map_err(RunError::Cgroup)?;
    if let (true, Some(key)) = (stage.fork, stage.preload.as_ref()) {
        if state.preloads.wanted(policy) && state.sandbox.is_enabled() {
            match state.preloads.get(state, key, mounts, policy) {
                Some(running) => {
                    let asked = Instant::now();
                    let members = cgroup.as_ref().and_then(CgroupLease::members);
                    match running.zygote.fork(members).await {
                        Ok(prepared) => {
                            state.preloads.forked(key, asked.elapsed());
                            return Ok(Child {
                                prepared,
                                cgroup,
                                made: Instant::now(),
                                zygote: Some(running),
                            });
                        }
                        // Started as any other call instead.
                        Err(e) => state.preloads.fell_back(key, Some((&running, &e))),
                    }
                }
                None => state.preloads.fell_back(key, None),
            }
        }
    }
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
    let zygote = match (stage.fork, &isolation) {
        (true, Some(_)) => state.zygotes.get().await,
        _ => None,
    };
    let mut spec = ChildSpec {
        program: stage.program,
        args: stage.args.unwrap_or_else(|| interpreter_args(runner_dir)),
        cwd: cwd.to_path_buf(),
        env,
        stdin: Vec::new(),
        limits: Limits {
            setup: stage.setup,
            ..state.limits(policy.timeout_ms)
        },
        seccomp: isolation.is_some(),
        isolation,
        hold,
        zygote: zygote.clone(),
        stdin_fd: stage.stdin_fd,
    };
    let asked = Instant::now();
    let mut prepared = falra_sandbox::prepare(&spec).await;
    if let Some(zygote) = zygote {
        match &prepared {
            Ok(_) => state.zygotes.forked(asked.elapsed()),
            Err(e) => {
                // Whatever went wrong with the fork, the call's child is exec'd instead.
                state.zygotes.fell_back(&zygote, e);
                spec.zygote = None;
                prepared = falra_sandbox::prepare(&spec).await;
            }
        }
    }
    match prepared {
        Ok(prepared) => Ok(Child {
            prepared,
            cgroup,
            made: Instant::now(),
            zygote: None,
        }),
        Err(e) => {
            state.count_sandbox_failure();
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

impl Child {
    /// Runs the child to its end in a task of its own, so a caller that goes away (a client
    /// hanging up) cuts nothing short: not the child's deadline, not its usage reading, not
    /// its cgroup's return. `keep` (an admission permit, a version in use) is held until the
    /// child is gone.
    pub async fn run_to_end<K: Send + 'static>(
        self,
        stdin: Vec<u8>,
        limits: Limits,
        keep: K,
    ) -> Result<Ran, RunError> {
        run_to_end(self, stdin, limits, keep).await
    }
}

async fn run_to_end<K: Send + 'static>(
    child: Child,
    stdin: Vec<u8>,
    limits: Limits,
    keep: K,
) -> Result<Ran, RunError> {
    let run = crate::task::spawn(async move {
        let _keep = keep;
        let Child {
            prepared,
            cgroup,
            zygote,
            ..
        } = child;
        let finished = prepared.run(stdin, &limits).await;
        let usage = cgroup.as_ref().map(CgroupLease::usage);
        // Given back to the pool (its processes are gone).
        drop(cgroup);
        drop(zygote);
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
