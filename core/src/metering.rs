//! Metering: every call that reached a tenant is recorded, off the call path, in batches; the
//! monthly CPU quota is checked against what was recorded.
//!
//! A call hands its [`CallRecord`] to a bounded channel and returns; one writer task drains the
//! channel and writes whatever has gathered in one transaction, so a burst of calls costs one
//! write, not one each. Readers of usage flush first, so totals include every answered call.
//! The quota keeps each tenant's CPU milliseconds of the current month in memory (read from
//! the store once per tenant and month, then added to as calls finish; on a shared store read
//! again every few seconds, so that every node's calls count).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use falra_store::{CallRecord, Store, StoreError};
use falra_tenants::TenantName;
use tokio::sync::{mpsc, oneshot};

use crate::clock::{format_ms, month_bounds, now_ms};
use crate::Core;

/// Records waiting to be written, at most.
const QUEUE: usize = 100_000;
/// Records written per transaction, at most.
const BATCH: usize = 2_000;

enum Message {
    Call(Box<CallRecord>),
    Flush(oneshot::Sender<()>),
}

/// The sending side of metering.
#[derive(Debug)]
pub struct Meter {
    tx: mpsc::Sender<Message>,
    queued: Arc<AtomicUsize>,
    pub dropped: AtomicU64,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Message")
    }
}

impl Meter {
    /// Starts the writer task.
    pub fn start(store: Store) -> Meter {
        let (tx, rx) = mpsc::channel(QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        tokio::spawn(tracing::Instrument::instrument(
            write_batches(store, rx, Arc::clone(&queued)),
            tracing::info_span!("meter"),
        ));
        Meter {
            tx,
            queued,
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues one record; never waits. A full queue (the store stuck for a long while) drops
    /// the record and counts it.
    pub fn record(&self, record: CallRecord) {
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.try_send(Message::Call(Box::new(record))).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::error!(dropped = n + 1, "metering queue full: call records dropped");
            }
        }
    }

    /// Waits until everything queued before now is in the store.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    pub fn queue_depth(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// How often, at most, one tenant's kept logs are pruned to its policy's age and size.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

async fn write_batches(store: Store, mut rx: mpsc::Receiver<Message>, queued: Arc<AtomicUsize>) {
    let mut pruned: HashMap<TenantName, std::time::Instant> = HashMap::new();
    while let Some(first) = rx.recv().await {
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Call(c) => batch.push(*c),
                Message::Flush(done) => flushes.push(done),
            }
            if batch.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            // Kept through a passing outage (a database restart): retried with backoff for up
            // to a minute while new records wait in the queue behind it.
            let mut wait = std::time::Duration::from_millis(100);
            let started = std::time::Instant::now();
            loop {
                match store.insert_calls(&batch).await {
                    Ok(()) => break,
                    Err(e) if started.elapsed() > std::time::Duration::from_secs(60) => {
                        tracing::error!(
                            error = %falra_runtime::ErrorChain(&e),
                            records = batch.len(),
                            "could not write call records"
                        );
                        break;
                    }
                    Err(_) => {
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(std::time::Duration::from_secs(5));
                    }
                }
            }
            queued.fetch_sub(batch.len(), Ordering::Relaxed);
            prune_logs(&store, &batch, &mut pruned).await;
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Prunes the kept logs of the batch's tenants that were not pruned in the last
/// [`PRUNE_EVERY`]: those past their policy's age, then the oldest past its size. A tenant's
/// logs exceed its size by at most what it logs in that time.
async fn prune_logs(
    store: &Store,
    batch: &[CallRecord],
    pruned: &mut HashMap<TenantName, std::time::Instant>,
) {
    let now = now_ms();
    let mut due: HashMap<&TenantName, (i64, i64)> = HashMap::new();
    for c in batch {
        if let Some(log) = &c.log {
            let recent = pruned
                .get(&c.tenant)
                .is_some_and(|at| at.elapsed() < PRUNE_EVERY);
            if !recent {
                due.insert(&c.tenant, (log.keep_ms, log.keep_bytes));
            }
        }
    }
    for (tenant, (keep_ms, keep_bytes)) in due {
        pruned.insert(tenant.clone(), std::time::Instant::now());
        if let Err(e) = store
            .prune_call_logs(tenant, now.saturating_sub(keep_ms), keep_bytes)
            .await
        {
            tracing::warn!(tenant = %tenant, error = %falra_runtime::ErrorChain(&e), "could not prune call logs");
        }
    }
    if pruned.len() > 100_000 {
        pruned.retain(|_, at| at.elapsed() < PRUNE_EVERY);
    }
}

/// How long a node counts a tenant's CPU on its own before it reads the cluster's total again
/// (on a shared store; one node alone counts every call itself).
pub const QUOTA_REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

/// A tenant's CPU milliseconds in one month, and when that was read from the store.
#[derive(Debug, Clone, Copy)]
struct Used {
    month: i64,
    ms: i64,
    read_at: std::time::Instant,
}

/// Each tenant's CPU milliseconds in the current month.
#[derive(Debug, Default)]
pub struct Quotas(Mutex<HashMap<TenantName, Used>>);

impl Quotas {
    /// The tenant's CPU milliseconds this month: read from the store once per tenant and month
    /// and then counted here, or on a shared store read again every [`QUOTA_REFRESH`], so that
    /// the other nodes' calls count too.
    pub async fn used_ms(
        &self,
        store: &Store,
        tenant: &TenantName,
        now: i64,
    ) -> Result<i64, StoreError> {
        let (month, _) = month_bounds(now);
        let known = self
            .0
            .lock()
            .expect("quota table poisoned")
            .get(tenant)
            .filter(|u| u.month == month)
            .filter(|u| !store.is_shared() || u.read_at.elapsed() < QUOTA_REFRESH)
            .map(|u| u.ms);
        if let Some(used) = known {
            return Ok(used);
        }
        let ms = match store.cpu_ms_since(tenant, month).await {
            Ok(ms) => ms,
            // Unreachable: the last total read this month, as this node has counted on since.
            Err(e @ StoreError::Busy(_)) => {
                let last = self
                    .0
                    .lock()
                    .expect("quota table poisoned")
                    .get(tenant)
                    .filter(|u| u.month == month)
                    .map(|u| u.ms);
                return last.ok_or(e);
            }
            Err(e) => return Err(e),
        };
        let used = Used {
            month,
            ms,
            read_at: std::time::Instant::now(),
        };
        self.0
            .lock()
            .expect("quota table poisoned")
            .insert(tenant.clone(), used);
        Ok(ms)
    }

    /// Adds a finished call's CPU time.
    pub fn add(&self, tenant: &TenantName, cpu_ms: i64, at: i64) {
        let (month, _) = month_bounds(at);
        let mut table = self.0.lock().expect("quota table poisoned");
        if let Some(used) = table.get_mut(tenant) {
            if used.month == month {
                used.ms += cpu_ms;
            }
        }
    }

    pub fn forget(&self, tenant: &TenantName) {
        self.0.lock().expect("quota table poisoned").remove(tenant);
    }
}

/// Whether a usage row is a deploy-time child's (see [`record_deploy_child`]).
pub fn is_deploy_child(function: &str) -> bool {
    function.starts_with("<deploy:")
}

/// Meters a deploy-time child of `tenant` (a listing, the compiler, a package build): its CPU
/// counts against the tenant's quota like a call's, and it is recorded as a call of the
/// pseudo-function `<deploy:{what}>` so usage reports show it.
pub fn record_deploy_child(
    state: &Core,
    tenant: &TenantName,
    what: &str,
    ran: &falra_runtime::Ran,
) {
    let at = now_ms();
    let cpu_ms = i64::try_from(ran.cpu_ms).unwrap_or(i64::MAX);
    state.quotas.add(tenant, cpu_ms, at);
    let outcome = match ran.finished.termination {
        falra_sandbox::Termination::Exited(0) => "ok",
        falra_sandbox::Termination::TimedOut => "timeout",
        _ if ran.oom_killed => "memory_limit_exceeded",
        _ => "process_exited",
    };
    state.meter.record(CallRecord {
        call_id: crate::calls::new_call_id(),
        tenant: tenant.clone(),
        token_id: String::new(),
        function: format!("<deploy:{what}>"),
        version: None,
        outcome: outcome.to_owned(),
        wall_ms: i64::try_from(ran.wall_ms).unwrap_or(i64::MAX),
        cpu_ms,
        peak_memory_bytes: i64::try_from(ran.peak_memory_bytes).unwrap_or(i64::MAX),
        bytes_in: 0,
        bytes_out: 0,
        at,
        log: None,
    });
}

/// A tenant past its monthly CPU quota, or the usage it is measured by out of reach.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error(
        "this tenant has used its {quota_seconds} CPU seconds for this month; the quota renews at {}",
        format_ms(*renews_at)
    )]
    Exceeded {
        quota_seconds: u64,
        used_ms: i64,
        renews_at: i64,
        /// Seconds until it renews.
        wait_seconds: u64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Refuses a call of a tenant that has used its monthly CPU quota.
pub async fn check_quota(
    state: &Core,
    tenant: &TenantName,
    quota_seconds: Option<u64>,
) -> Result<(), QuotaError> {
    let Some(quota) = quota_seconds else {
        return Ok(());
    };
    let now = now_ms();
    let used = state.quotas.used_ms(&state.store, tenant, now).await?;
    let quota_ms = i64::try_from(quota.saturating_mul(1000)).unwrap_or(i64::MAX);
    if used < quota_ms {
        return Ok(());
    }
    let (_, next_month) = month_bounds(now);
    Err(QuotaError::Exceeded {
        quota_seconds: quota,
        used_ms: used,
        renews_at: next_month,
        wait_seconds: u64::try_from((next_month - now) / 1000).unwrap_or(1),
    })
}
