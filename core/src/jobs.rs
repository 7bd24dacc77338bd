//! Background jobs: a call submitted now and run when a node has room, durable in the store.
//!
//! A job is queued in the store ([`submit`]); every node's claimer leases due jobs while it has
//! room ([`JobSettings::workers`]), woken by the store's change notifications (and a poll, in
//! case one is missed); the lease is renewed while the job runs and any node rescues a job
//! whose lease lapsed (its node died or lost the database), so execution is at least once.
//! The run itself is a call ([`calls::run`]) with the tenant's `job_timeout_ms`, a cancel
//! signal and a progress sink, admitted, quota-checked and metered as any call. Its end is
//! written under its lease (owner and attempt), so a node presumed dead never overwrites a
//! rescued job.
//!
//! Retries: only for failures that are the node's, not the function's — the node lost, a
//! child that could not start or ended before answering, the store busy — up to the job's
//! `max_attempts`, with exponential backoff. A job refused by admission (rate, concurrency, a
//! full node) waits for its turn without spending an attempt. A `function_error`, a timeout or
//! a memory kill ends the job `failed`, never retried.
//!
//! What a failure is called (its code and message, as a call's answer would say it) is the
//! HTTP layer's table: the daemon hands [`start`] the function that writes it ([`Describe`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use falra_store::{Change, JobFilter, JobRow, JobStatus, Lease, NewJob, StoreError};
use falra_tenants::{FnName, TenantName, VersionId};
use serde_json::{json, Map, Value};
use tokio::sync::{watch, Notify};

use crate::auth::Caller;
use crate::calls::{self, Background, CallError, CallOptions, Metered};
use crate::clock::{format_ms, now_ms, now_ms_unique};
use crate::Core;

/// How this node runs jobs.
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// Jobs this node runs at once, at most.
    pub workers: usize,
    /// How long a claim holds without renewal; a job whose node is silent this long is
    /// rescued by another.
    pub lease: Duration,
    /// How long an ended job (and its result) is kept.
    pub retention: Duration,
    /// Attempts a job gets unless it asks for fewer.
    pub max_attempts: u32,
}

impl Default for JobSettings {
    fn default() -> JobSettings {
        JobSettings {
            workers: 4,
            lease: Duration::from_secs(15),
            retention: Duration::from_secs(7 * 86_400),
            max_attempts: 3,
        }
    }
}

/// The most attempts a job may ask for.
pub const MAX_ATTEMPTS: u32 = 10;
/// The claimer looks at the queue at least this often, notified or not.
const POLL: Duration = Duration::from_secs(1);
/// A lapsed lease is rescued only this long after it lapsed, for the clocks of nodes that do
/// not agree to the millisecond.
const CLOCK_SLACK_MS: i64 = 500;
/// Progress is written to the store at most this often per job (the latest wins).
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// The longest message of a progress record.
const MAX_PROGRESS_MESSAGE: usize = 200;

/// Writes a failed call's answer (`{"ok": false, "error": {…}, …}`) for its call id.
pub type Describe = Arc<dyn Fn(CallError, &str) -> Value + Send + Sync>;

/// A job's failed outcome that no call answered (the job was cancelled, lost its node, its
/// token): the shape of a call's error answer.
fn failure(code: &str, message: &str) -> Value {
    json!({"ok": false, "error": {"code": code, "message": message}})
}

/// Why a running job's child is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// A client cancelled it (the store has it `cancelled` already).
    Cancelled,
    /// Its lease is gone (it was rescued, or this node is cut off past the lease).
    LeaseLost,
    /// This node is shutting down: the job goes back to the queue for another.
    HandBack,
}

#[derive(Debug)]
struct Running {
    attempt: i64,
    /// When it was launched: a renewal that began before then may not list it yet.
    launched: std::time::Instant,
    stop: watch::Sender<bool>,
    why: Arc<Mutex<Option<Stop>>>,
}

impl Running {
    fn stop(&self, why: Stop) {
        self.why
            .lock()
            .expect("stop reason poisoned")
            .get_or_insert(why);
        self.stop.send_replace(true);
    }
}

/// This node's jobs: the ones it runs, and what wakes its claimer.
#[derive(Default)]
pub struct Jobs {
    wake: Arc<Notify>,
    running: Mutex<HashMap<String, Running>>,
    describe: OnceLock<Describe>,
    stopping: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("running", &self.running_count())
            .finish_non_exhaustive()
    }
}

impl Jobs {
    /// Acts on a change another node (or this one) notified.
    pub fn changed(&self, change: &Change) {
        match change {
            Change::Jobs => self.wake.notify_one(),
            Change::JobCancelled(id) => self.stop_local(id, Stop::Cancelled),
            _ => {}
        }
    }

    /// Wakes this node's claimer: a job may be due.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Jobs running on this node.
    pub fn running_count(&self) -> usize {
        self.running.lock().expect("job table poisoned").len()
    }

    fn stop_local(&self, id: &str, why: Stop) {
        if let Some(r) = self.running.lock().expect("job table poisoned").get(id) {
            r.stop(why);
        }
    }
}

/// Why a job request was refused.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("no job {0:?}")]
    NotFound(String),
    #[error("max_attempts must be between 1 and {MAX_ATTEMPTS}")]
    BadAttempts,
    #[error("{0}")]
    BadCallback(String),
    #[error("the Idempotency-Key must be 1 to 200 visible ASCII characters")]
    BadIdempotencyKey,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A job as submitted, validated at the boundary.
#[derive(Debug, Clone)]
pub struct Submit {
    pub function: FnName,
    pub kwargs: Map<String, Value>,
    pub version: Option<VersionId>,
    pub idempotency_key: Option<String>,
    pub callback_url: Option<String>,
    pub max_attempts: Option<u32>,
}

/// Checks an `Idempotency-Key` header's value.
pub fn check_idempotency_key(key: &str) -> Result<(), JobError> {
    let visible = key.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if key.is_empty() || key.len() > 200 || !visible {
        return Err(JobError::BadIdempotencyKey);
    }
    Ok(())
}

/// A job id: `j_` and 16 random hex digits.
pub fn new_job_id() -> String {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).expect("the operating system's random source failed");
    format!("j_{}", hex::encode(b))
}

/// Queues the job; with an idempotency key the tenant used before, the first job instead
/// (`false`).
pub async fn submit(
    state: &Core,
    caller: &Caller,
    submit: Submit,
) -> Result<(JobRow, bool), JobError> {
    let max_attempts = match submit.max_attempts {
        Some(n) if n == 0 || n > MAX_ATTEMPTS => return Err(JobError::BadAttempts),
        Some(n) => n,
        None => state.config.jobs.max_attempts,
    };
    if let Some(key) = &submit.idempotency_key {
        check_idempotency_key(key)?;
    }
    let callback_url = match &submit.callback_url {
        Some(raw) => {
            let url = crate::callbacks::check_url(raw).map_err(JobError::BadCallback)?;
            let signed = state
                .store
                .tenant(&caller.tenant)
                .await?
                .is_some_and(|t| t.webhook_secret.is_some());
            if !signed {
                return Err(JobError::BadCallback(
                    "callbacks are signed with the tenant's webhook secret, and this tenant has \
                     none: an operator sets one (PATCH /admin/v1/tenants/{name} \
                     {\"webhook_secret\": …})"
                        .into(),
                ));
            }
            Some(url)
        }
        None => None,
    };
    let job = NewJob {
        id: new_job_id(),
        tenant: caller.tenant.clone(),
        token_id: caller.token_id.clone(),
        function: submit.function.as_str().to_owned(),
        kwargs: Value::Object(submit.kwargs).to_string(),
        version: submit.version.map(|v| v.as_str().to_owned()),
        max_attempts: i64::from(max_attempts),
        idempotency_key: submit.idempotency_key,
        callback_url,
        created_at: now_ms_unique(),
    };
    let (row, created) = state.store.insert_job(&job).await?;
    if created {
        state.jobs.wake.notify_one();
        tracing::info!(job_id = %row.id, tenant = %row.tenant, "job queued");
    }
    Ok((row, created))
}

/// The tenant's job.
pub async fn get(state: &Core, tenant: &TenantName, id: &str) -> Result<JobRow, JobError> {
    state
        .store
        .job(tenant, id)
        .await?
        .ok_or_else(|| JobError::NotFound(id.to_owned()))
}

/// The tenant's jobs, newest first.
pub async fn list(
    state: &Core,
    tenant: &TenantName,
    filter: &JobFilter,
) -> Result<Vec<JobRow>, JobError> {
    Ok(state.store.jobs_of(tenant, filter).await?)
}

/// Cancels the tenant's job unless it has ended; its process is stopped on whichever node
/// runs it (this one at once; another when the store's notification reaches it, or at its
/// next lease renewal at the latest).
pub async fn cancel(state: &Core, tenant: &TenantName, id: &str) -> Result<JobRow, JobError> {
    let outcome = failure("cancelled", "the job was cancelled").to_string();
    let job = state
        .store
        .cancel_job(tenant, id, &outcome, now_ms())
        .await?
        .ok_or_else(|| JobError::NotFound(id.to_owned()))?;
    if job.status == JobStatus::Cancelled {
        state.jobs.stop_local(id, Stop::Cancelled);
    }
    Ok(job)
}

/// A job as the API shows it: its state, and once it ended, the call's answer beside it.
pub fn view(job: &JobRow) -> Value {
    let progress = job
        .progress
        .as_deref()
        .and_then(|p| serde_json::from_str::<Value>(p).ok());
    let mut v = json!({
        "job_id": job.id,
        "status": job.status.as_str(),
        "fn": job.function,
        "version": job.version,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "node": job.lease_owner,
        "progress": progress,
        "created_at": format_ms(job.created_at),
        "started_at": job.started_at.map(format_ms),
        "finished_at": job.finished_at.map(format_ms),
    });
    if let Some(key) = &job.idempotency_key {
        v["idempotency_key"] = json!(key);
    }
    if let Some(callback) = crate::callbacks::describe(job) {
        v["callback"] = callback;
    }
    let outcome = job
        .outcome
        .as_deref()
        .and_then(|o| serde_json::from_str::<Value>(o).ok());
    match (job.status.is_final(), outcome) {
        (true, Some(Value::Object(answer))) => {
            for (k, val) in answer {
                match k.as_str() {
                    // The job's own fields win over the answer's (its version was pinned or not).
                    "version" if job.status == JobStatus::Succeeded => {
                        v["version"] = val;
                    }
                    "node" => v["node"] = val,
                    "ok" | "result" | "error" | "call_id" | "logs" | "usage" => v[k] = val,
                    _ => {}
                }
            }
        }
        // Waiting for a retry: the last attempt's failure, for the curious.
        (false, Some(Value::Object(answer))) if job.attempts > 0 => {
            if let Some(e) = answer.get("error") {
                v["last_error"] = e.clone();
            }
        }
        _ => {}
    }
    v
}

/// Starts this node's claimer and lease keeper. `describe` writes a failed call's answer.
pub fn start(state: &Core, describe: Describe) {
    let _ = state.jobs.describe.set(describe);
    let weak = state.downgrade();
    let wake = Arc::clone(&state.jobs.wake);
    crate::spawn_in_span(tracing::info_span!("job_claimer"), async move {
        claim_loop(weak, wake).await;
    });
    let weak = state.downgrade();
    crate::spawn_in_span(tracing::info_span!("job_leases"), async move {
        lease_loop(weak).await;
    });
    start_rescuer(state);
}

/// Stops claiming and hands this node's running jobs back to the queue (their children are
/// stopped; another node takes them at once). Waits for them to be written back, a few
/// seconds at most.
pub async fn hand_back(state: &Core) {
    state
        .jobs
        .stopping
        .store(true, std::sync::atomic::Ordering::Release);
    {
        let running = state.jobs.running.lock().expect("job table poisoned");
        for r in running.values() {
            r.stop(Stop::HandBack);
        }
    }
    for _ in 0..100 {
        if state.jobs.running_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stopping(state: &Core) -> bool {
    state.is_shutting_down()
        || state
            .jobs
            .stopping
            .load(std::sync::atomic::Ordering::Acquire)
}

async fn claim_loop(weak: std::sync::Weak<crate::Inner>, wake: Arc<Notify>) {
    loop {
        let notified = wake.notified();
        let Some(state) = Core::upgrade(&weak) else {
            return;
        };
        if stopping(&state) {
            return;
        }
        let mut full = false;
        let room = state
            .config
            .jobs
            .workers
            .saturating_sub(state.jobs.running_count());
        if let (true, true, Some(node)) = (room > 0, state.node.is_healthy(), state.node.id()) {
            let now = now_ms();
            let until = now + lease_ms(&state);
            match state
                .store
                .claim_jobs(node, now, until, i64::try_from(room).unwrap_or(1))
                .await
            {
                Ok(jobs) => {
                    full = jobs.len() == room;
                    for job in jobs {
                        launch(&state, job);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %falra_runtime::ErrorChain(&e), "could not claim jobs")
                }
            }
        }
        drop(state);
        if !full {
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

fn lease_ms(state: &Core) -> i64 {
    i64::try_from(state.config.jobs.lease.as_millis()).unwrap_or(i64::MAX / 2)
}

/// Renews this node's leases, a third of the lease time apart, and stops what it no longer
/// holds: a job cancelled or rescued for another node, or every job once this node could not
/// renew for longer than the lease (another node may have taken them). Runs whatever the
/// node's health, since it is what notices a lapse.
async fn lease_loop(weak: std::sync::Weak<crate::Inner>) {
    let mut renewed_at = now_ms();
    let mut seen_orphans: std::collections::HashSet<Lease> = std::collections::HashSet::new();
    loop {
        let Some(state) = Core::upgrade(&weak) else {
            return;
        };
        let every = renew_every(&state);
        let lease = lease_ms(&state);
        let now = now_ms();
        if let Some(node) = state.node.id() {
            let asked = std::time::Instant::now();
            match state.store.renew_leases(node, now + lease).await {
                Ok(held) => {
                    renewed_at = now;
                    let mut orphans = Vec::new();
                    {
                        let running = state.jobs.running.lock().expect("job table poisoned");
                        let by_id: HashMap<_, _> =
                            held.iter().map(|l| (l.job.as_str(), l.attempt)).collect();
                        for (id, r) in running.iter() {
                            // (One launched since the renewal began may not be in its answer.)
                            if r.launched < asked && by_id.get(id.as_str()) != Some(&r.attempt) {
                                r.stop(Stop::LeaseLost);
                            }
                        }
                        // Held in the store but run by no task here (its end could not be
                        // written): given back once seen so twice in a row, since a job just
                        // claimed may not be running yet.
                        for lease in held {
                            let runs = running
                                .get(&lease.job)
                                .is_some_and(|r| r.attempt == lease.attempt);
                            if !runs {
                                orphans.push(lease);
                            }
                        }
                    }
                    let again: Vec<Lease> = orphans
                        .iter()
                        .filter(|l| seen_orphans.contains(*l))
                        .cloned()
                        .collect();
                    seen_orphans = orphans.into_iter().collect();
                    for lease in again {
                        let outcome = failure(
                            "process_exited",
                            "the node running the job could not record its end",
                        );
                        match state
                            .store
                            .retry_job(&lease, now, &outcome.to_string(), false)
                            .await
                        {
                            Ok(true) => {
                                tracing::info!(job_id = %lease.job, "job whose end was lost put back in the queue")
                            }
                            Ok(false) => {}
                            Err(e) => {
                                tracing::debug!(error = %falra_runtime::ErrorChain(&e), "could not put a job back")
                            }
                        }
                        seen_orphans.remove(&lease);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %falra_runtime::ErrorChain(&e), "could not renew job leases");
                    if now - renewed_at > lease {
                        let running = state.jobs.running.lock().expect("job table poisoned");
                        for r in running.values() {
                            r.stop(Stop::LeaseLost);
                        }
                    }
                }
            }
        }
        drop(state);
        tokio::time::sleep(every).await;
    }
}

fn renew_every(state: &Core) -> Duration {
    (state.config.jobs.lease / 3).max(Duration::from_millis(100))
}

/// Rescues lapsed leases of any node and forgets ended jobs past their retention; apart from
/// the renewals, so that nothing it waits for can delay them.
fn start_rescuer(state: &Core) {
    let every = renew_every(state);
    let forgot_at = Arc::new(std::sync::atomic::AtomicI64::new(0));
    crate::spawn_periodic(
        state,
        tracing::info_span!("job_rescuer"),
        every,
        move |state| {
            let forgot_at = Arc::clone(&forgot_at);
            async move {
                let now = now_ms();
                let lost = failure(
                    "process_exited",
                    "the node running the job was lost, and the job has no attempts left",
                )
                .to_string();
                // Queued jobs whose token was revoked (or expired) since: never claimed, failed here.
                let revoked = failure(
                    "token_revoked",
                    "the token that submitted the job was revoked before it started",
                );
                let expired = failure(
                    "token_expired",
                    "the token that submitted the job expired before it started",
                );
                match state
                    .store
                    .fail_unauthorised_jobs(now, &revoked.to_string(), &expired.to_string())
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(failed = n, "queued jobs whose token no longer holds failed")
                    }
                    Err(e) => {
                        tracing::debug!(error = %falra_runtime::ErrorChain(&e), "could not fail jobs of revoked tokens")
                    }
                }
                match state.store.rescue_jobs(now - CLOCK_SLACK_MS, &lost).await {
                    Ok((0, 0)) => {}
                    Ok((requeued, failed)) => {
                        tracing::info!(requeued, failed, "rescued jobs whose node was lost")
                    }
                    Err(e) => {
                        tracing::debug!(error = %falra_runtime::ErrorChain(&e), "could not rescue jobs")
                    }
                }
                let last = forgot_at.load(std::sync::atomic::Ordering::Relaxed);
                if now - last > 60_000 {
                    let retention = i64::try_from(state.config.jobs.retention.as_millis())
                        .unwrap_or(i64::MAX / 2);
                    match state.store.forget_jobs(now - retention).await {
                        Ok(n) => {
                            forgot_at.store(now, std::sync::atomic::Ordering::Relaxed);
                            if n > 0 {
                                tracing::info!(
                                    removed = n,
                                    "ended jobs past their retention removed"
                                );
                            }
                        }
                        Err(e) => {
                            tracing::debug!(error = %falra_runtime::ErrorChain(&e), "could not remove old jobs")
                        }
                    }
                }
            }
        },
    );
}

/// Runs a claimed job in a task of its own.
fn launch(state: &Core, job: JobRow) {
    let Some(owner) = state.node.id() else {
        return;
    };
    let lease = Lease {
        job: job.id.clone(),
        owner: owner.to_owned(),
        attempt: job.attempts,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let why = Arc::new(Mutex::new(None));
    {
        let mut running = state.jobs.running.lock().expect("job table poisoned");
        // An earlier attempt of this job is still ending here (it was rescued and claimed
        // again meanwhile): this one is not started, and its lease, held by no task, is given
        // back by the lease keeper.
        if running.contains_key(&job.id) {
            tracing::info!(job_id = %job.id, "an earlier attempt of this job is still ending here");
            return;
        }
        running.insert(
            job.id.clone(),
            Running {
                attempt: job.attempts,
                launched: std::time::Instant::now(),
                stop: stop_tx,
                why: Arc::clone(&why),
            },
        );
    }
    let state = state.clone();
    let span =
        tracing::info_span!("job", job_id = %job.id, tenant = %job.tenant, attempt = job.attempts);
    crate::spawn_in_span(span, async move {
        run(&state, &job, &lease, stop_rx, &why).await;
        let mut running = state.jobs.running.lock().expect("job table poisoned");
        if running
            .get(&job.id)
            .is_some_and(|r| r.attempt == job.attempts)
        {
            running.remove(&job.id);
        }
        drop(running);
        state.jobs.wake.notify_one();
    });
}

/// What became of one attempt.
enum End {
    Done(JobStatus, Value),
    Retry {
        after_ms: i64,
        outcome: Value,
        refund: bool,
    },
}

async fn run(
    state: &Core,
    job: &JobRow,
    lease: &Lease,
    stop: watch::Receiver<bool>,
    why: &Mutex<Option<Stop>>,
) {
    let call_id = calls::new_call_id();
    let (progress_tx, progress_rx) = watch::channel(None);
    let masker = Arc::new(std::sync::OnceLock::new());
    let forward = tokio::spawn(forward_progress(
        state.clone(),
        lease.clone(),
        progress_rx,
        masker.clone(),
    ));
    let mut metered = Metered {
        tenant: Some(job.tenant.clone()),
        token_id: job.token_id.clone(),
        function: job.function.clone(),
        bytes_in: job.kwargs.len(),
        ..Metered::default()
    };
    let end = attempt(
        state,
        job,
        &call_id,
        Background {
            cancel: stop,
            progress: Arc::new(progress_tx),
            masker: masker.clone(),
        },
        &mut metered,
    )
    .await;
    // The progress written so far is in; nothing later overwrites the end.
    let _ = forward.await;
    let outcome_code = match &end {
        End::Done(JobStatus::Succeeded, _) => "ok".to_owned(),
        End::Done(_, v) | End::Retry { outcome: v, .. } => {
            v["error"]["code"].as_str().unwrap_or("internal").to_owned()
        }
    };
    let (End::Done(_, v) | End::Retry { outcome: v, .. }) = &end;
    metered.error = v["error"]["message"].as_str().map(str::to_owned);
    let stopped = *why.lock().expect("stop reason poisoned");
    // What to write: nothing (the store says it all already: cancelled, or rescued for another
    // node), the end, or a retry.
    let write = match (stopped, end) {
        // A success that came in before the stop took effect is kept: the write is fenced by
        // the lease, so it lands only if the lease is still this node's. Any other end of a
        // stopped attempt is the stop's own doing (its child was killed).
        (Some(Stop::LeaseLost | Stop::HandBack), End::Done(JobStatus::Succeeded, mut outcome)) => {
            outcome["node"] = json!(lease.owner);
            Some((Some(JobStatus::Succeeded), 0, outcome, false))
        }
        (Some(Stop::Cancelled | Stop::LeaseLost), _) => None,
        (Some(Stop::HandBack), End::Done(_, outcome) | End::Retry { outcome, .. }) => {
            Some((None, 0, outcome, true))
        }
        (None, End::Done(status, mut outcome)) => {
            outcome["node"] = json!(lease.owner);
            Some((Some(status), 0, outcome, false))
        }
        (
            None,
            End::Retry {
                after_ms,
                outcome,
                refund,
            },
        ) => Some((None, after_ms, outcome, refund)),
    };
    // Written under the lease; a store that does not answer (a restart) is tried again for a
    // few seconds before the lease is left to lapse (then the job is rescued).
    let mut written = Ok(false);
    if let Some((status, after_ms, outcome, refund)) = write {
        let outcome = outcome.to_string();
        for attempt in 0..10 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let now = now_ms();
            written = match status {
                Some(status) => state.store.finish_job(lease, status, &outcome, now).await,
                None => {
                    state
                        .store
                        .retry_job(lease, now + after_ms, &outcome, refund)
                        .await
                }
            };
            if !matches!(written, Err(StoreError::Busy(_))) {
                break;
            }
        }
    }
    match written {
        Ok(true) => tracing::info!(outcome = %outcome_code, "job attempt ended"),
        Ok(false) => tracing::info!(
            outcome = %outcome_code,
            "job attempt ended after its lease was gone: nothing written"
        ),
        Err(e) => tracing::warn!(
            error = %falra_runtime::ErrorChain(&e),
            "could not record the job's end: its lease lapses and it is rescued"
        ),
    }
    if metered.wall_ms > 0 || outcome_code == "ok" {
        calls::record(state, call_id, metered, &outcome_code);
    }
}

/// One attempt of the job, as a call.
async fn attempt(
    state: &Core,
    job: &JobRow,
    call_id: &str,
    background: Background,
    metered: &mut Metered,
) -> End {
    let describe = |e: CallError| match state.jobs.describe.get() {
        Some(d) => d(e, call_id),
        None => failure("internal", &e.to_string()),
    };
    let malformed = |what: &str| {
        End::Done(JobStatus::Failed, {
            let mut f = failure("internal", &format!("the stored job is malformed: {what}"));
            f["call_id"] = json!(call_id);
            f
        })
    };
    let Ok(function) = FnName::parse(&job.function) else {
        return malformed("its function");
    };
    let Ok(Value::Object(kwargs)) = serde_json::from_str::<Value>(&job.kwargs) else {
        return malformed("its arguments");
    };
    let version = match job.version.as_deref().map(VersionId::parse) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => return malformed("its version"),
    };
    // (The token that submitted the job still held when it was claimed: `claim_jobs`.)
    let caller = Caller {
        token_id: job.token_id.clone(),
        tenant: job.tenant.clone(),
    };
    let options = CallOptions {
        version,
        timeout_ms: None,
        background: Some(background),
    };
    match calls::run(
        state, &caller, &function, &kwargs, options, call_id, metered,
    )
    .await
    {
        Ok(answer) => {
            let mut outcome = json!({
                "ok": true,
                "call_id": call_id,
                "version": answer.version,
                "logs": answer.logs,
                "usage": answer.usage,
            });
            outcome["result"] = serde_json::from_str(answer.result.get()).unwrap_or(Value::Null);
            End::Done(JobStatus::Succeeded, outcome)
        }
        Err(e) => {
            let kind = classify(&e);
            let outcome = describe(e);
            match kind {
                Kind::Final => End::Done(JobStatus::Failed, outcome),
                Kind::Wait(after_ms) => End::Retry {
                    after_ms,
                    outcome,
                    refund: true,
                },
                Kind::Infrastructure if job.attempts < job.max_attempts => End::Retry {
                    after_ms: backoff_ms(job.attempts),
                    outcome,
                    refund: false,
                },
                Kind::Infrastructure => End::Done(JobStatus::Failed, outcome),
            }
        }
    }
}

enum Kind {
    /// The function's own failure, or the request's: the job ends.
    Final,
    /// Not admitted yet: the job waits this long, without spending an attempt.
    Wait(i64),
    /// The node's failure: retried while attempts remain.
    Infrastructure,
}

fn classify(e: &CallError) -> Kind {
    use falra_policies::admission::Refusal;
    use falra_sandbox::ChildFailure;
    match e {
        CallError::Refused { refusal, .. } => Kind::Wait(match refusal {
            Refusal::RateLimited { retry_after } => i64::try_from(retry_after.as_millis())
                .unwrap_or(60_000)
                .max(100),
            _ => 1_000,
        }),
        CallError::ShuttingDown | CallError::StoppedAtShutdown { .. } => Kind::Wait(0),
        CallError::Run(_) | CallError::Materialise(_) | CallError::Store(_) => Kind::Infrastructure,
        CallError::Failed(f) if matches!(f.failure, ChildFailure::ProcessExited { .. }) => {
            Kind::Infrastructure
        }
        _ => Kind::Final,
    }
}

/// The wait before attempt `attempts + 1`: 1 s, 2 s, 4 s… up to a minute.
fn backoff_ms(attempts: i64) -> i64 {
    let exp = u32::try_from(attempts.clamp(1, 7) - 1).unwrap_or(0);
    (1_000i64 << exp).min(60_000)
}

/// Writes the child's progress records to the store as they come (parsed strictly; the latest
/// at most every [`PROGRESS_EVERY`]), until the child is gone.
async fn forward_progress(
    state: Core,
    lease: Lease,
    mut records: watch::Receiver<Option<Vec<u8>>>,
    masker: Arc<std::sync::OnceLock<falra_sandbox::logs::Masker>>,
) {
    // A record's message is shown with the call's secrets masked (none are known before the
    // call is); the record's own fields are left as they are.
    let shown = |p: String| match masker.get() {
        Some(m) if !m.is_empty() => match serde_json::from_str::<serde_json::Value>(&p) {
            Ok(mut record) => {
                if let Some(message) = record["message"].as_str() {
                    record["message"] = serde_json::Value::String(m.text(message));
                }
                record.to_string()
            }
            Err(_) => p,
        },
        _ => p,
    };
    loop {
        if records.changed().await.is_err() {
            // The child is gone; its last record may not have been written yet.
            let last = records.borrow().clone();
            if let Some(p) = last.as_deref().and_then(parse_progress) {
                let _ = state.store.job_progress(&lease, &shown(p)).await;
            }
            return;
        }
        let latest = records.borrow_and_update().clone();
        if let Some(p) = latest.as_deref().and_then(parse_progress).map(shown) {
            if let Err(e) = state.store.job_progress(&lease, &p).await {
                tracing::debug!(error = %falra_runtime::ErrorChain(&e), "could not record progress");
            }
        }
        tokio::time::sleep(PROGRESS_EVERY).await;
    }
}

/// A progress record as the child wrote it → `{"fraction", "message"}` (or `None` if it is
/// not one).
pub fn parse_progress(record: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Record {
        fraction: f64,
        #[serde(default)]
        message: String,
        /// Rows done (the built-in ETL's, which cannot know the total).
        #[serde(default)]
        rows: Option<u64>,
    }
    let r: Record = serde_json::from_slice(record).ok()?;
    if !r.fraction.is_finite() {
        return None;
    }
    let mut message = r.message;
    if message.len() > MAX_PROGRESS_MESSAGE {
        let mut cut = MAX_PROGRESS_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    let mut p = json!({"fraction": r.fraction.clamp(0.0, 1.0), "message": message});
    if let Some(rows) = r.rows {
        p["rows"] = json!(rows);
    }
    Some(p.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_records_are_parsed_strictly_and_bounded() {
        assert_eq!(
            parse_progress(br#"{"fraction": 0.25, "message": "rows 10"}"#).as_deref(),
            Some(r#"{"fraction":0.25,"message":"rows 10"}"#)
        );
        assert_eq!(
            parse_progress(br#"{"fraction": 7}"#).as_deref(),
            Some(r#"{"fraction":1.0,"message":""}"#)
        );
        for bad in [
            &br#"{"fraction": "x"}"#[..],
            br#"{"fraction": 1, "evil": 1}"#,
            b"nope",
        ] {
            assert_eq!(parse_progress(bad), None);
        }
        let long = format!(r#"{{"fraction": 0.5, "message": "{}"}}"#, "é".repeat(300));
        let p: Value = serde_json::from_str(&parse_progress(long.as_bytes()).unwrap()).unwrap();
        assert!(p["message"].as_str().unwrap().len() <= MAX_PROGRESS_MESSAGE);
    }

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        assert_eq!([1, 2, 3, 10].map(backoff_ms), [1_000, 2_000, 4_000, 60_000]);
    }

    #[test]
    fn idempotency_keys_are_checked() {
        assert!(check_idempotency_key("order-42").is_ok());
        for bad in ["", "a\nb", &"x".repeat(201), "é"] {
            assert!(check_idempotency_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_the_nodes_failures_are_retried() {
        use falra_sandbox::ChildFailure;
        let failed = |failure| {
            CallError::Failed(Box::new(calls::Failed {
                failure,
                logs: String::new(),
                memory_mb: 1,
                timeout_ms: 1,
                result_cap: 1,
                usage: calls::Usage {
                    wall_ms: 1,
                    cpu_ms: 1,
                    peak_memory_bytes: 1,
                },
            }))
        };
        let exited = ChildFailure::ProcessExited {
            exit_code: Some(1),
            signal: None,
            reason: "x",
        };
        assert!(matches!(classify(&failed(exited)), Kind::Infrastructure));
        for f in [
            ChildFailure::Timeout,
            ChildFailure::MemoryLimitExceeded,
            ChildFailure::FunctionError {
                type_name: "E".into(),
                message: String::new(),
                traceback: String::new(),
            },
        ] {
            assert!(matches!(classify(&failed(f)), Kind::Final));
        }
        assert!(matches!(classify(&CallError::NotDeployed), Kind::Final));
    }
}
