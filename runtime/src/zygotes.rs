//! The node's zygote (see `falra_sandbox::zygote`): started with the runtime, replaced when it
//! dies or grows old, and skipped — with one warning per episode — when it cannot serve.
//!
//! A call's child is forked from the zygote whenever the call is isolated and the zygote is
//! usable; otherwise, or when the fork fails for any reason, the call's child is exec'd as
//! before (`--no-zygote` makes that the only way). Whichever way a child starts, it is set up
//! by the same plan, so the choice changes speed, never what a call may do.
//!
//! A zygote is replaced after [`MAX_AGE`] or [`MAX_FORKS`]: every call forked from one shares
//! its address-space layout and its string-hash seed, and a fresh zygote bounds how long any
//! one layout is served (see docs/security.md).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use falra_sandbox::zygote::{Zygote, ZygoteError};

/// How long one zygote serves, and how many calls it forks, before it is replaced.
pub const MAX_AGE: Duration = Duration::from_secs(15 * 60);
pub const MAX_FORKS: u64 = 100_000;
/// After a zygote could not be started, how long calls are exec'd before it is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(10);
/// Forks failed in a row after which a zygote is retired (and a new one tried after
/// [`RETRY_AFTER`]), rather than every call paying for a failed fork before its exec.
pub const MAX_FAILURES_IN_A_ROW: u32 = 3;

/// The zygote's counters, read by the metrics.
#[derive(Debug, Default)]
pub struct ZygoteCounters {
    /// Calls' children forked from a zygote.
    pub forks: AtomicU64,
    /// Calls' children exec'd because no zygote could fork them.
    pub fallbacks: AtomicU64,
    /// Zygotes started.
    pub starts: AtomicU64,
    /// Sum of the time from asking for a forked child to its report, in microseconds.
    pub fork_micros: AtomicU64,
}

#[derive(Debug)]
pub struct Zygotes {
    enabled: bool,
    python: PathBuf,
    runner_dir: PathBuf,
    current: Mutex<Option<Arc<Zygote>>>,
    /// Serialises starts, so that a burst of calls starts one zygote, not one each.
    starting: tokio::sync::Mutex<()>,
    retry_at: Mutex<Option<Instant>>,
    /// Set from the first fallback until a fork works again: one warning per episode.
    falling_back: AtomicBool,
    failures_in_a_row: std::sync::atomic::AtomicU32,
    pub counters: ZygoteCounters,
}

impl Zygotes {
    pub fn new(enabled: bool, python: PathBuf, runner_dir: PathBuf) -> Zygotes {
        Zygotes {
            enabled,
            python,
            runner_dir,
            current: Mutex::new(None),
            starting: tokio::sync::Mutex::new(()),
            retry_at: Mutex::new(None),
            falling_back: AtomicBool::new(false),
            failures_in_a_row: std::sync::atomic::AtomicU32::new(0),
            counters: ZygoteCounters::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Zygotes alive (0 or 1).
    pub fn alive(&self) -> u64 {
        let current = self.current.lock().expect("zygote slot poisoned");
        u64::from(current.as_ref().is_some_and(|z| z.is_usable()))
    }

    /// The live zygote's resident memory.
    pub fn rss_bytes(&self) -> Option<u64> {
        let current = self.current.lock().expect("zygote slot poisoned").clone();
        current?.rss_bytes(std::path::Path::new("/proc"))
    }

    /// The zygote to fork the next call from: the current one while it is usable and young, a
    /// new one otherwise; `None` when zygotes are off or one cannot be started now. Only one
    /// call starts a zygote; calls that come meanwhile are exec'd rather than kept waiting
    /// (and a zygote that has grown old goes on serving until its successor is ready).
    pub async fn get(&self) -> Option<Arc<Zygote>> {
        if !self.enabled {
            return None;
        }
        if let Some(z) = self.fresh() {
            return Some(z);
        }
        if self
            .retry_at
            .lock()
            .expect("zygote slot poisoned")
            .is_some_and(|at| Instant::now() < at)
        {
            return None;
        }
        let Ok(_one) = self.starting.try_lock() else {
            return self.usable();
        };
        if let Some(z) = self.fresh() {
            return Some(z);
        }
        let (python, runner_dir) = (self.python.clone(), self.runner_dir.clone());
        let started = tokio::task::spawn_blocking(move || {
            Zygote::start(&python, &runner_dir, falra_sandbox::seccomp::programs())
        })
        .await
        .unwrap_or_else(|e| Err(ZygoteError::Start(std::io::Error::other(e))));
        match started {
            Ok(z) => {
                let z = Arc::new(z);
                self.counters.starts.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(pid = z.pid(), "zygote started");
                *self.retry_at.lock().expect("zygote slot poisoned") = None;
                // The old one (if any) goes once no call holds it any more.
                *self.current.lock().expect("zygote slot poisoned") = Some(Arc::clone(&z));
                Some(z)
            }
            Err(e) => {
                *self.retry_at.lock().expect("zygote slot poisoned") =
                    Some(Instant::now() + RETRY_AFTER);
                self.warn_once(&e);
                None
            }
        }
    }

    /// The current zygote if it can still fork, young or not.
    fn usable(&self) -> Option<Arc<Zygote>> {
        let current = self.current.lock().expect("zygote slot poisoned");
        current.as_ref().filter(|z| z.is_usable()).cloned()
    }

    fn fresh(&self) -> Option<Arc<Zygote>> {
        let current = self.current.lock().expect("zygote slot poisoned");
        current
            .as_ref()
            .filter(|z| z.is_usable() && z.age() < MAX_AGE && z.forks() < MAX_FORKS)
            .cloned()
    }

    /// A call's child was forked from `zygote` in `took`.
    pub fn forked(&self, took: Duration) {
        self.failures_in_a_row.store(0, Ordering::Relaxed);
        self.counters.forks.fetch_add(1, Ordering::Relaxed);
        self.counters
            .fork_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        if self.falling_back.swap(false, Ordering::Relaxed) {
            tracing::info!("calls are forked from the zygote again");
        }
    }

    /// Forking from `zygote` failed with `error`; the call's child is exec'd instead.
    pub fn fell_back(&self, zygote: &Arc<Zygote>, error: &(dyn std::error::Error + 'static)) {
        self.counters.fallbacks.fetch_add(1, Ordering::Relaxed);
        if self.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1 >= MAX_FAILURES_IN_A_ROW {
            self.failures_in_a_row.store(0, Ordering::Relaxed);
            zygote.retire();
            *self.retry_at.lock().expect("zygote slot poisoned") =
                Some(Instant::now() + RETRY_AFTER);
        }
        if !zygote.is_usable() {
            let mut current = self.current.lock().expect("zygote slot poisoned");
            if current.as_ref().is_some_and(|z| Arc::ptr_eq(z, zygote)) {
                *current = None;
            }
        }
        self.warn_once(error);
    }

    fn warn_once(&self, error: &(dyn std::error::Error + 'static)) {
        if !self.falling_back.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = %crate::ErrorChain(error),
                "calls' children are started without the zygote until it serves again"
            );
        }
    }

    /// Stops the zygote (at shutdown); calls still running are not affected.
    pub fn stop(&self) {
        self.current.lock().expect("zygote slot poisoned").take();
    }
}
