//! The node's preload zygotes (see `falra_sandbox::preload`): one per tenant version whose
//! policy names modules to preload, started on demand, capped in number and memory, evicted
//! least recently used, and replaced on deploy, rollback and policy change.
//!
//! A zygote is bound to everything that went into it ([`ChildKey`]: the tenant's uid, the
//! version, the policy as stored), so no call is ever forked from a zygote of another tenant,
//! another version or an older policy. The first call of a key starts its zygote in the
//! background and is forked from the node's zygote meanwhile (or exec'd), as is every call
//! whose zygote cannot be made — a module that fails to import, hangs at import (past the
//! policy's `timeout_ms`) or leaves threads running — with one warning per key and episode and
//! a new try after [`RETRY_AFTER`]. A zygote that dies is noticed by its next call and
//! replaced. Calls already forked from a zygote that is replaced run to their end: the zygote's
//! process is stopped once the last of them is gone.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use falra_policies::Policy;
use falra_sandbox::preload::{PreloadError, PreloadZygote};

use crate::child::{Child, ChildStage, RunError};
use crate::isolation::CodeMounts;
use crate::prestart::ChildKey;
use crate::Runtime;

/// After a zygote could not be made, how long its key's calls go without one.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);
/// A zygote no call used for this long is stopped.
pub const IDLE: Duration = Duration::from_secs(10 * 60);
/// The most zygotes one tenant keeps (its active version and one pinned by `?version=`, say):
/// a tenant calling many versions in turn replaces its own zygotes, not other tenants'.
pub const MAX_PER_TENANT: usize = 2;
/// The longest a zygote serves (its forks share its address-space layout, as the node
/// zygote's do).
pub const MAX_AGE: Duration = Duration::from_secs(60 * 60);

/// The preload zygotes' counters, read by the metrics.
#[derive(Debug, Default)]
pub struct PreloadCounters {
    pub forks: AtomicU64,
    /// Calls of a preloading policy that were not forked from its zygote.
    pub fallbacks: AtomicU64,
    pub starts: AtomicU64,
    pub fork_micros: AtomicU64,
}

/// A running zygote and its process (init, cgroup). Every call forked from it holds it, so
/// the process outlives the last of them.
#[derive(Debug)]
pub struct Running {
    pub zygote: PreloadZygote,
    process: Mutex<Option<Child>>,
    last_used: Mutex<Instant>,
}

impl Running {
    /// Whether the zygote still serves: in service, and its process (init) still there.
    pub(crate) fn alive(&self) -> bool {
        self.zygote.is_usable()
            && self
                .process
                .lock()
                .expect("preload zygote poisoned")
                .as_ref()
                .is_some_and(|c| c.prepared.is_alive())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.process.get_mut().expect("poisoned").take() {
            child.discard();
        }
    }
}

#[derive(Debug)]
enum Slot {
    Starting,
    Ready(Arc<Running>),
    /// Could not be made; not tried again before `until`.
    Failed {
        until: Instant,
    },
}

#[derive(Debug)]
pub struct Preloads {
    enabled: bool,
    max: usize,
    max_memory_bytes: u64,
    slots: Mutex<HashMap<ChildKey, Slot>>,
    /// Keys whose zygote could not be made, or could not fork, and that were warned of: once
    /// per episode.
    warned: Mutex<std::collections::HashSet<ChildKey>>,
    fork_warned: Mutex<std::collections::HashSet<ChildKey>>,
    pub counters: PreloadCounters,
}

impl Preloads {
    pub fn new(enabled: bool, max: usize, max_memory_bytes: u64) -> Preloads {
        let supported = falra_sandbox::preload::supported();
        if enabled && max > 0 && !supported {
            tracing::warn!(
                min_landlock_abi = falra_sandbox::preload::MIN_LANDLOCK_ABI,
                "this kernel's Landlock cannot keep preloaded calls apart: policies' preload is ignored"
            );
        }
        Preloads {
            enabled: enabled && max > 0 && supported,
            max,
            max_memory_bytes,
            slots: Mutex::new(HashMap::new()),
            warned: Mutex::new(std::collections::HashSet::new()),
            fork_warned: Mutex::new(std::collections::HashSet::new()),
            counters: PreloadCounters::default(),
        }
    }

    /// Whether calls of `policy` are to be forked from a preload zygote.
    pub fn wanted(&self, policy: &Policy) -> bool {
        self.enabled && !policy.preload.is_empty()
    }

    /// The zygote to fork `key`'s next call from, when one is ready; otherwise starts one in
    /// the background (unless one is on its way, or failed a moment ago) and returns `None`.
    pub fn get(
        &self,
        runtime: &Runtime,
        key: &ChildKey,
        mounts: &CodeMounts,
        policy: &Policy,
    ) -> Option<Arc<Running>> {
        let mut slots = self.slots.lock().expect("preloads poisoned");
        // A policy changed since: the zygotes of its older policies serve no call again.
        slots.retain(|k, _| !(k.uid == key.uid && k.version == key.version && k != key));
        match slots.get(key) {
            Some(Slot::Ready(running))
                if running.alive()
                    && running.zygote.age() < MAX_AGE
                    && running.zygote.is_one_thread(Path::new("/proc")) =>
            {
                *running.last_used.lock().expect("preload zygote poisoned") = Instant::now();
                return Some(Arc::clone(running));
            }
            Some(Slot::Starting) => return None,
            Some(Slot::Failed { until }) if Instant::now() < *until => return None,
            Some(Slot::Ready(_)) => {
                // Debug, not info: a tenant's module can make its own zygote die at will.
                tracing::debug!(uid = key.uid, version = %key.version, "a preload zygote is gone or has served its time; starting another");
            }
            _ => {}
        }
        slots.insert(key.clone(), Slot::Starting);
        drop(slots);
        let (runtime, key, mounts, policy) =
            (runtime.clone(), key.clone(), mounts.clone(), policy.clone());
        let span = tracing::info_span!("preload_start", uid = key.uid, version = %key.version);
        crate::task::spawn(tracing::Instrument::instrument(
            async move {
                let started = start(&runtime, &key, &mounts, &policy).await;
                let preloads = &runtime.preloads;
                let mut slots = preloads.slots.lock().expect("preloads poisoned");
                // Forgotten meanwhile (a deploy, a policy change): the new zygote goes.
                if !matches!(slots.get(&key), Some(Slot::Starting)) {
                    return;
                }
                match started {
                    Ok(running) => {
                        preloads
                            .warned
                            .lock()
                            .expect("preloads poisoned")
                            .remove(&key);
                        preloads.counters.starts.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(pid = running.zygote.pid(), "preload zygote ready");
                        slots.insert(key, Slot::Ready(Arc::new(running)));
                        let evicted = preloads.evict(&mut slots);
                        drop(slots);
                        drop(evicted);
                    }
                    Err(e) => {
                        let first = preloads
                            .warned
                            .lock()
                            .expect("preloads poisoned")
                            .insert(key.clone());
                        if first {
                            tracing::warn!(
                                error = %crate::ErrorChain(&e),
                                "calls of this version are not forked from a preload zygote until it can be made"
                            );
                        } else {
                            tracing::debug!(error = %crate::ErrorChain(&e), "a preload zygote could not be made again");
                        }
                        slots.insert(
                            key,
                            Slot::Failed {
                                until: Instant::now() + RETRY_AFTER,
                            },
                        );
                    }
                }
            },
            span,
        ));
        None
    }

    /// Takes out, least recently used first, the zygotes over the count or the memory cap.
    fn evict(&self, slots: &mut HashMap<ChildKey, Slot>) -> Vec<Slot> {
        let mut ready: Vec<(Instant, u64, ChildKey)> = slots
            .iter()
            .filter_map(|(k, s)| match s {
                Slot::Ready(r) => Some((
                    *r.last_used.lock().expect("preload zygote poisoned"),
                    r.zygote.rss_bytes(Path::new("/proc")).unwrap_or(0),
                    k.clone(),
                )),
                _ => None,
            })
            .collect();
        ready.sort_by_key(|(used, _, _)| *used);
        let mut gone = Vec::new();
        // A tenant's own least recently used zygotes go first, past its share.
        let mut per_tenant: HashMap<u32, usize> = HashMap::new();
        for (_, _, key) in &ready {
            *per_tenant.entry(key.uid).or_default() += 1;
        }
        ready.retain(|(_, _, key)| {
            let n = per_tenant.get_mut(&key.uid).expect("counted");
            if *n > MAX_PER_TENANT {
                *n -= 1;
                tracing::debug!(uid = key.uid, version = %key.version, "preload zygote evicted: its tenant's share");
                gone.extend(slots.remove(key));
                return false;
            }
            true
        });
        let mut count = ready.len();
        let mut memory: u64 = ready.iter().map(|(_, rss, _)| rss).sum();
        for (_, rss, key) in ready {
            // The newest always stays, even alone over the memory cap.
            if count <= 1 || (count <= self.max && memory <= self.max_memory_bytes) {
                break;
            }
            tracing::info!(uid = key.uid, version = %key.version, "preload zygote evicted");
            gone.extend(slots.remove(&key));
            count -= 1;
            memory = memory.saturating_sub(rss);
        }
        gone
    }

    /// A call's child of `key` was forked from a preload zygote in `took`.
    pub fn forked(&self, key: &ChildKey, took: Duration) {
        if self
            .fork_warned
            .lock()
            .expect("preloads poisoned")
            .remove(key)
        {
            tracing::info!(uid = key.uid, version = %key.version, "calls are forked from a preload zygote again");
        }
        self.counters.forks.fetch_add(1, Ordering::Relaxed);
        self.counters
            .fork_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// A call of a preloading policy was not forked from its zygote: none was ready, or
    /// forking from `failed` went wrong with `error`. That zygote is taken out of service and
    /// the key gets no new one for [`RETRY_AFTER`] (a tenant's module that makes every fork
    /// fail does not get a zygote started per call); one warning per key and episode.
    pub fn fell_back(
        &self,
        key: &ChildKey,
        failed: Option<(&Arc<Running>, &falra_sandbox::SandboxError)>,
    ) {
        self.counters.fallbacks.fetch_add(1, Ordering::Relaxed);
        let Some((running, error)) = failed else {
            return;
        };
        running.zygote.retire();
        let mut slots = self.slots.lock().expect("preloads poisoned");
        if matches!(slots.get(key), Some(Slot::Ready(r)) if Arc::ptr_eq(r, running)) {
            slots.insert(
                key.clone(),
                Slot::Failed {
                    until: Instant::now() + RETRY_AFTER,
                },
            );
        }
        drop(slots);
        let first = self
            .fork_warned
            .lock()
            .expect("preloads poisoned")
            .insert(key.clone());
        if first {
            tracing::warn!(
                uid = key.uid,
                version = %key.version,
                error = %crate::ErrorChain(error),
                "a call could not be forked from its preload zygote; calls of this version start without one for a while"
            );
        } else {
            tracing::debug!(error = %crate::ErrorChain(error), "a call could not be forked from its preload zygote");
        }
    }

    /// Zygotes ready.
    pub fn alive(&self) -> u64 {
        let slots = self.slots.lock().expect("preloads poisoned");
        slots
            .values()
            .filter(|s| matches!(s, Slot::Ready(r) if r.alive()))
            .count() as u64
    }

    /// The ready zygotes' resident memory, together.
    pub fn rss_bytes(&self) -> u64 {
        let slots = self.slots.lock().expect("preloads poisoned");
        slots
            .values()
            .filter_map(|s| match s {
                Slot::Ready(r) => r.zygote.rss_bytes(Path::new("/proc")),
                _ => None,
            })
            .sum()
    }

    /// Stops the zygotes matching `doomed` (calls forked from them run to their end).
    pub fn forget_where(&self, doomed: impl Fn(&ChildKey) -> bool) {
        self.remove_where(|k, _| doomed(k));
    }

    /// Stops the zygotes nobody used within [`IDLE`], and those that died.
    pub fn expire(&self) {
        self.remove_where(|_, s| match s {
            Slot::Ready(r) => !r.alive() || r.last_used.lock().expect("poisoned").elapsed() > IDLE,
            _ => false,
        });
    }

    fn remove_where(&self, doomed: impl Fn(&ChildKey, &Slot) -> bool) {
        let gone: Vec<Slot> = {
            let mut slots = self.slots.lock().expect("preloads poisoned");
            slots
                .extract_if(|k, s| doomed(k, s))
                .map(|(_, s)| s)
                .collect()
        };
        // Dropped here, outside the lock: the last holder of a zygote stops its process.
        for slot in &gone {
            if let Slot::Ready(r) = slot {
                r.zygote.retire();
            }
        }
    }
}

/// Starts `key`'s zygote: a sandboxed child as any call's, with its channel as stdin, told to
/// import the policy's modules within the policy's deadline.
async fn start(
    runtime: &Runtime,
    key: &ChildKey,
    mounts: &CodeMounts,
    policy: &Policy,
) -> Result<Running, RunError> {
    let (ours, theirs) = falra_sandbox::preload::channel()
        .map_err(|e| RunError::Start(falra_sandbox::SandboxError::Spawn(e)))?;
    let mut stage = ChildStage::call(runtime.config.python.clone());
    stage.fork = false;
    stage.stdin_fd = Some(theirs);
    let mut args =
        falra_sandbox::runner::interpreter_args(Path::new(falra_sandbox::runner::RUNNER_DIR));
    args.push("--preload".into());
    stage.args = Some(args);
    let process = crate::child::prepare(runtime, key.uid, mounts, policy, stage).await?;
    let modules = policy.preload.clone();
    let timeout = Duration::from_millis(policy.timeout_ms.into()).max(Duration::from_secs(1));
    let made =
        tokio::task::spawn_blocking(move || PreloadZygote::handshake(ours, &modules, timeout))
            .await
            .unwrap_or_else(|e| Err(PreloadError::Channel(std::io::Error::other(e))));
    match made {
        Ok(zygote) => Ok(Running {
            zygote,
            process: Mutex::new(Some(process)),
            last_used: Mutex::new(Instant::now()),
        }),
        Err(e) => {
            process.discard();
            Err(RunError::Start(falra_sandbox::SandboxError::Preload(e)))
        }
    }
}
