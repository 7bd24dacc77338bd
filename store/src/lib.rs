//! Falra's store: everything a node must remember, as typed models behind one facade.
//!
//! [`Store`] is the facade every caller holds; it dispatches to one backend per database
//! ([`sqlite::SqliteStore`], the embedded default, and [`postgres::PgStore`], shared by the
//! nodes of a cluster), each with its own migrations and the queries both share
//! (`queries.rs`). Rows
//! are parsed into the models of [`models`] as they are read, so callers never re-check a
//! name, a uid or a policy, and a row that cannot be parsed is refused with its key
//! ([`StoreError::InvalidRow`]). Per-tenant serialisation of deploys is also the store's
//! ([`Store::deploy_lock`]): in-process on the embedded backend, where one daemon owns the
//! file; an advisory lock on PostgreSQL.
//!
//! Architecture Invariant: nothing here knows HTTP, the sandbox or the runtime; the store is
//! told what to keep and answers what it holds.

#[cfg(test)]
mod backend_tests;
mod error;
mod locks;
pub mod models;
pub mod postgres;
pub mod sqlite;

use std::path::Path;

use falra_policies::{Policy, PolicyPatch, Sealed};
use falra_tenants::{TenantName, VersionId};

pub use error::StoreError;
pub use locks::DeployLock;
pub use models::*;

/// A change to what nodes cache from a shared store, as it is notified to every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Some token changed (revoked, or its tenant removed).
    Tokens,
    /// The tenant's row changed (its plan, overrides, active version), or it was removed.
    Tenant(TenantName),
    /// Changes may have been missed (the watch's connection was lost): nothing cached holds.
    Lost,
    /// A job became due (submitted, or put back in the queue): a node with room may claim it.
    Jobs,
    /// The job was cancelled: the node running it stops it.
    JobCancelled(String),
}

impl Change {
    fn payload(&self) -> String {
        match self {
            Change::Tokens => "tokens".to_owned(),
            Change::Tenant(t) => format!("tenant:{t}"),
            Change::Lost => "lost".to_owned(),
            Change::Jobs => "jobs".to_owned(),
            Change::JobCancelled(id) => format!("cancel:{id}"),
        }
    }

    /// A payload as notified; one this build does not know means anything may have changed.
    fn parse(payload: &str) -> Change {
        match payload.split_once(':') {
            _ if payload == "tokens" => Change::Tokens,
            _ if payload == "jobs" => Change::Jobs,
            Some(("cancel", id)) if !id.is_empty() && id.len() <= 64 => {
                Change::JobCancelled(id.to_owned())
            }
            Some(("tenant", name)) => match TenantName::parse(name) {
                Ok(name) => Change::Tenant(name),
                Err(_) => Change::Lost,
            },
            _ => Change::Lost,
        }
    }
}

pub use postgres::ChangeWatch;

/// The store, whichever database is behind it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
    locks: std::sync::Arc<locks::TenantLocks>,
    /// When this handle last announced a queued job (epoch ms): a burst of submissions shares
    /// one notification.
    jobs_noticed_at: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

/// Queued jobs are announced to the other nodes at most this often by one node (they also
/// look at the queue every second).
const JOBS_NOTICE_EVERY_MS: i64 = 20;

#[derive(Debug, Clone)]
enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

/// Calls `$method` on whichever backend the store has.
macro_rules! backend {
    ($self:ident.$method:ident($($arg:expr),*)) => {
        match &$self.backend {
            Backend::Sqlite(b) => b.$method($($arg),*).await,
            Backend::Postgres(b) => b.$method($($arg),*).await,
        }
    };
}

/// sqlx's migrator over a backend's embedded migrations (`(version, description, sql)`):
/// each applied once, in a transaction, and a store whose applied migrations changed since
/// (checksums) refused.
pub(crate) fn migrator(migrations: &[(i64, &str, &str)]) -> sqlx::migrate::Migrator {
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    let migrations = migrations
        .iter()
        .map(|&(version, description, sql)| {
            Migration::new(
                version,
                description.to_owned().into(),
                MigrationType::Simple,
                sql.to_owned().into(),
                false,
            )
        })
        .collect::<Vec<_>>();
    Migrator {
        migrations: migrations.into(),
        ..Migrator::DEFAULT
    }
}

impl Store {
    /// Opens (creating if needed) the embedded store at `path` and migrates it.
    pub async fn open_sqlite(path: &Path) -> Result<Store, StoreError> {
        Ok(Store {
            backend: Backend::Sqlite(sqlite::SqliteStore::open(path).await?),
            locks: Default::default(),
            jobs_noticed_at: Default::default(),
        })
    }

    /// Connects to the PostgreSQL database at `url` and migrates it: the store every node of
    /// a cluster shares.
    pub async fn open_postgres(url: &str) -> Result<Store, StoreError> {
        Ok(Store {
            backend: Backend::Postgres(postgres::PgStore::open(url).await?),
            locks: Default::default(),
            jobs_noticed_at: Default::default(),
        })
    }

    /// Which database is behind the store (`sqlite` or `postgres`), for logs and health.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Waits for, then holds, the tenant's deploy lock: one deploy (sync, upload, rollback) of
    /// a tenant at a time — in this process on the embedded store (one daemon owns it), in the
    /// database (an advisory lock) on PostgreSQL, so across every node. Dropping the guard
    /// releases it.
    pub async fn deploy_lock(&self, tenant: &TenantName) -> Result<DeployLock, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(self.locks.lock(tenant).await),
            Backend::Postgres(b) => Ok(DeployLock::held_in_database(b.deploy_lock(tenant).await?)),
        }
    }

    /// Runs a statement as is (tests that write rows no API would).
    #[cfg(test)]
    pub(crate) async fn execute_raw(&self, sql: &str) {
        match &self.backend {
            Backend::Sqlite(b) => b.execute_raw(sql).await,
            Backend::Postgres(b) => b.execute_raw(sql).await,
        }
    }

    /// Records this node and its first beat.
    pub async fn register_node(&self, n: &NodeRow) -> Result<(), StoreError> {
        backend!(self.register_node(n))
    }

    /// This node's beat; false if its row is gone.
    pub async fn beat(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        backend!(self.beat(id, now))
    }

    /// The registered nodes, after forgetting those whose beat is older than `forget_before`.
    pub async fn nodes(&self, forget_before: i64) -> Result<Vec<NodeRow>, StoreError> {
        backend!(self.nodes(forget_before))
    }

    /// Tells the nodes watching a shared store what a write changed. A notification that
    /// fails is logged: caches also expire on their own (`falra_core::cache`).
    async fn changed(&self, changes: &[Change]) {
        if let Backend::Postgres(b) = &self.backend {
            for change in changes {
                if let Err(e) = b.notify(&change.payload()).await {
                    tracing::warn!(error = %e, "could not notify the other nodes of a change");
                }
            }
        }
    }

    /// Announces queued jobs, unless this handle did within the last few milliseconds.
    async fn jobs_queued(&self) {
        use std::sync::atomic::Ordering;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let last = self.jobs_noticed_at.load(Ordering::Relaxed);
        if now - last >= JOBS_NOTICE_EVERY_MS
            && self
                .jobs_noticed_at
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.changed(&[Change::Jobs]).await;
        }
    }

    /// Watches a shared store for changes (`None` on the embedded store, which only this
    /// node writes). Listening when this returns.
    pub async fn watch(&self) -> Result<Option<ChangeWatch>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(None),
            Backend::Postgres(b) => b.watch().await.map(Some),
        }
    }

    /// Whether several nodes may share this store (PostgreSQL): limits that must hold for the
    /// cluster are then counted in it.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Counts one admitted call of `tenant` in `minute` (epoch minutes); the minute's count.
    pub async fn count_call(&self, tenant: &TenantName, minute: i64) -> Result<i64, StoreError> {
        backend!(self.count_call(tenant, minute))
    }

    /// Admits a call on a shared store: its minute counted against `per_minute` and, within
    /// it, one of the tenant's `max_concurrency` slots taken for `node` (one round trip). On
    /// the embedded store, which one node owns, admission in memory is already exact: every
    /// call is admitted here.
    pub async fn admit_call(
        &self,
        tenant: &TenantName,
        minute: i64,
        per_minute: i64,
        max_concurrency: i64,
        node: &str,
    ) -> Result<postgres::Admitted, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(postgres::Admitted {
                minute_calls: 0,
                slot: true,
            }),
            Backend::Postgres(b) => {
                b.admit_call(tenant, minute, per_minute, max_concurrency, node)
                    .await
            }
        }
    }

    /// Gives back a slot `admit_call` took.
    pub async fn release_call(&self, tenant: &TenantName, node: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(b) => b.release_call(tenant, node).await,
        }
    }

    /// Gives back the slots of nodes gone (beat before `alive_after`), and `node`'s own of
    /// tenants not in `busy`.
    pub async fn reclaim_slots(
        &self,
        alive_after: i64,
        node: &str,
        busy: &[String],
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(b) => b.reclaim_slots(alive_after, node, busy).await,
        }
    }

    /// Removes the call counts of minutes before `minute`.
    pub async fn forget_call_counts(&self, minute: i64) -> Result<(), StoreError> {
        backend!(self.forget_call_counts(minute))
    }

    /// Whether the database answers (one round trip).
    pub async fn ping(&self) -> Result<(), StoreError> {
        backend!(self.ping())
    }

    /// Inserts a tenant with the next free uid, and returns it as stored.
    pub async fn insert_tenant(&self, t: &NewTenant) -> Result<TenantRow, StoreError> {
        backend!(self.insert_tenant(t))
    }

    /// Replaces a tenant's mutable fields (everything but name, uid and creation time).
    pub async fn update_tenant(&self, t: &TenantRow) -> Result<bool, StoreError> {
        let done = backend!(self.update_tenant(t))?;
        self.changed(&[Change::Tenant(t.name.clone())]).await;
        Ok(done)
    }

    pub async fn tenant(&self, name: &TenantName) -> Result<Option<TenantRow>, StoreError> {
        backend!(self.tenant(name))
    }

    pub async fn tenants(&self) -> Result<Vec<TenantRow>, StoreError> {
        backend!(self.tenants())
    }

    /// Removes the tenant with its tokens and versions.
    pub async fn delete_tenant(&self, name: &TenantName) -> Result<bool, StoreError> {
        let done = backend!(self.delete_tenant(name))?;
        self.changed(&[Change::Tenant(name.clone()), Change::Tokens])
            .await;
        Ok(done)
    }

    /// Records `version` (if new) and makes it the tenant's active one, applying the upload
    /// change it was built with in the same transaction: either all of it lands or nothing.
    pub async fn activate_version(
        &self,
        tenant: &TenantName,
        version: &NewVersion<'_>,
        change: UploadChange<'_>,
    ) -> Result<(), StoreError> {
        backend!(self.activate_version(tenant, version, change))?;
        self.changed(&[Change::Tenant(tenant.clone())]).await;
        Ok(())
    }

    pub async fn version(
        &self,
        tenant: &TenantName,
        version: &VersionId,
    ) -> Result<Option<VersionRow>, StoreError> {
        backend!(self.version(tenant, version))
    }

    /// The tenant's versions, newest first.
    pub async fn versions_of(&self, tenant: &TenantName) -> Result<Vec<VersionRow>, StoreError> {
        backend!(self.versions_of(tenant))
    }

    pub async fn delete_version(
        &self,
        tenant: &TenantName,
        version: &VersionId,
    ) -> Result<(), StoreError> {
        backend!(self.delete_version(tenant, version))
    }

    /// Makes an existing version the tenant's active one; false if there is no such version.
    pub async fn set_active_version(
        &self,
        tenant: &TenantName,
        version: &VersionId,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = backend!(self.set_active_version(tenant, version, now))?;
        self.changed(&[Change::Tenant(tenant.clone())]).await;
        Ok(done)
    }

    /// Replaces the tenant's environment variables; false if there is no such tenant.
    pub async fn set_env(
        &self,
        tenant: &TenantName,
        env: &[(String, String)],
    ) -> Result<bool, StoreError> {
        let done = backend!(self.set_env(tenant, env))?;
        self.changed(&[Change::Tenant(tenant.clone())]).await;
        Ok(done)
    }

    /// Replaces the tenant's policy overrides; false if there is no such tenant.
    pub async fn set_overrides(
        &self,
        tenant: &TenantName,
        overrides: &PolicyPatch,
    ) -> Result<bool, StoreError> {
        let done = backend!(self.set_overrides(tenant, overrides))?;
        self.changed(&[Change::Tenant(tenant.clone())]).await;
        Ok(done)
    }

    /// Inserts the plan unless one of that name exists.
    pub async fn insert_plan_if_absent(
        &self,
        name: &PlanName,
        policy: &Policy,
        now: i64,
    ) -> Result<(), StoreError> {
        backend!(self.insert_plan_if_absent(name, policy, now))
    }

    pub async fn put_plan(
        &self,
        name: &PlanName,
        policy: &Policy,
        now: i64,
    ) -> Result<(), StoreError> {
        backend!(self.put_plan(name, policy, now))
    }

    /// Every plan, by name.
    pub async fn plans(&self) -> Result<Vec<(PlanName, Policy)>, StoreError> {
        backend!(self.plans())
    }

    /// Removes a plan no tenant is on; `InUse` if one is, `false` if there is none.
    pub async fn delete_plan(&self, name: &PlanName) -> Result<bool, StoreError> {
        backend!(self.delete_plan(name))
    }

    /// Records finished calls, all in one transaction.
    pub async fn insert_calls(&self, calls: &[CallRecord]) -> Result<(), StoreError> {
        backend!(self.insert_calls(calls))
    }

    /// Removes the tenant's call logs older than `before`, then the oldest past `keep_bytes`.
    pub async fn prune_call_logs(
        &self,
        tenant: &TenantName,
        before: i64,
        keep_bytes: i64,
    ) -> Result<u64, StoreError> {
        backend!(self.prune_call_logs(tenant, before, keep_bytes))
    }

    /// One recorded call with what was kept of its logs; of one tenant only, when given.
    pub async fn call_view(
        &self,
        tenant: Option<&TenantName>,
        call_id: &str,
    ) -> Result<Option<CallView>, StoreError> {
        backend!(self.call_view(tenant, call_id))
    }

    /// The keys of a tenant's calls in `((after), (to)]`, oldest first (no logs).
    pub async fn call_keys_between(
        &self,
        tenant: &TenantName,
        after: (i64, &str),
        to: (i64, &str),
        limit: i64,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        backend!(self.call_keys_between(tenant, after, to, limit))
    }

    /// A tenant's calls recorded after `(after_at, after_id)`, oldest first.
    pub async fn calls_after(
        &self,
        tenant: &TenantName,
        after_at: i64,
        after_id: &str,
        limit: i64,
    ) -> Result<Vec<CallView>, StoreError> {
        backend!(self.calls_after(tenant, after_at, after_id, limit))
    }

    /// Calls per tenant and function in `[from, to)`, optionally of one tenant.
    pub async fn usage(
        &self,
        tenant: Option<&TenantName>,
        from: i64,
        to: i64,
    ) -> Result<Vec<UsageRow>, StoreError> {
        backend!(self.usage(tenant, from, to))
    }

    /// The CPU milliseconds a tenant's calls used since `from`.
    pub async fn cpu_ms_since(&self, tenant: &TenantName, from: i64) -> Result<i64, StoreError> {
        backend!(self.cpu_ms_since(tenant, from))
    }

    /// Recorded calls, newest first, as `filter` says (without their logs).
    pub async fn calls_page(&self, filter: &CallFilter) -> Result<Vec<CallView>, StoreError> {
        backend!(self.calls_page(filter))
    }

    /// Calls per UTC day in `[from, to)`, with each day's median and p99 wall time.
    pub async fn day_stats(
        &self,
        tenant: Option<&TenantName>,
        from: i64,
        to: i64,
    ) -> Result<Vec<DayStats>, StoreError> {
        backend!(self.day_stats(tenant, from, to))
    }

    /// How many calls in `[from, to)` answered each error code, most frequent first.
    pub async fn error_codes(
        &self,
        tenant: Option<&TenantName>,
        from: i64,
        to: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        backend!(self.error_codes(tenant, from, to))
    }

    pub async fn insert_session(&self, s: &SessionRow) -> Result<(), StoreError> {
        backend!(self.insert_session(s))
    }

    pub async fn session_by_hash(&self, hash: &str) -> Result<Option<SessionRow>, StoreError> {
        backend!(self.session_by_hash(hash))
    }

    /// Ends a session (signing out); whether it existed.
    pub async fn revoke_session(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        backend!(self.revoke_session(id, now))
    }

    /// Removes sessions that expired before `expired_before`.
    pub async fn forget_sessions(&self, expired_before: i64) -> Result<u64, StoreError> {
        backend!(self.forget_sessions(expired_before))
    }

    pub async fn insert_audit(&self, a: &AuditRow) -> Result<(), StoreError> {
        backend!(self.insert_audit(a))
    }

    /// Audit events, newest first, optionally of one tenant and since a time.
    pub async fn audit(
        &self,
        tenant: Option<&TenantName>,
        since: i64,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        backend!(self.audit(tenant, since, limit))
    }

    /// Stores (or replaces) a sealed secret; `expose` says where else than the node it goes
    /// (`env`: the tenant's code, as an environment variable).
    pub async fn put_secret(
        &self,
        tenant: &TenantName,
        key: &str,
        sealed: &Sealed,
        expose: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError> {
        backend!(self.put_secret(tenant, key, sealed, expose, now))?;
        // The nodes' caches hold the secrets exposed to code with the tenant.
        self.changed(&[Change::Tenant(tenant.clone())]).await;
        Ok(())
    }

    pub async fn secret(
        &self,
        tenant: &TenantName,
        key: &str,
    ) -> Result<Option<Sealed>, StoreError> {
        backend!(self.secret(tenant, key))
    }

    /// Whether any tenant has a secret exposed as `expose`.
    pub async fn any_exposed_secrets(&self, expose: &str) -> Result<bool, StoreError> {
        backend!(self.any_exposed_secrets(expose))
    }

    /// The tenant's secrets exposed as `expose`, sealed, by name.
    pub async fn exposed_secrets(
        &self,
        tenant: &TenantName,
        expose: &str,
    ) -> Result<Vec<(String, Sealed)>, StoreError> {
        backend!(self.exposed_secrets(tenant, expose))
    }

    /// The names of the tenant's secrets, when each was last set and where it is exposed
    /// (never their values).
    pub async fn secret_names(&self, tenant: &TenantName) -> Result<Vec<SecretName>, StoreError> {
        backend!(self.secret_names(tenant))
    }

    pub async fn delete_secret(&self, tenant: &TenantName, key: &str) -> Result<bool, StoreError> {
        let done = backend!(self.delete_secret(tenant, key))?;
        self.changed(&[Change::Tenant(tenant.clone())]).await;
        Ok(done)
    }

    /// The tenant's uploads, by module name.
    pub async fn uploads_of(&self, tenant: &TenantName) -> Result<Vec<UploadRow>, StoreError> {
        backend!(self.uploads_of(tenant))
    }

    pub async fn insert_token(&self, t: &TokenRow) -> Result<(), StoreError> {
        backend!(self.insert_token(t))
    }

    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>, StoreError> {
        backend!(self.token_by_hash(hash))
    }

    pub async fn tokens_of(&self, tenant: &TenantName) -> Result<Vec<TokenRow>, StoreError> {
        backend!(self.tokens_of(tenant))
    }

    /// Marks a token revoked; false if there is no such token.
    /// Every operator token, oldest first.
    pub async fn operator_tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        backend!(self.operator_tokens())
    }

    pub async fn revoke_token(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let done = backend!(self.revoke_token(id, now))?;
        self.changed(&[Change::Tokens]).await;
        Ok(done)
    }

    pub async fn touch_token(&self, id: &str, now: i64) -> Result<(), StoreError> {
        backend!(self.touch_token(id, now))
    }

    /// Queues the job, unless the tenant already has one with its idempotency key: then that
    /// one, with `false`.
    pub async fn insert_job(&self, job: &NewJob) -> Result<(JobRow, bool), StoreError> {
        let (row, created) = backend!(self.insert_job(job))?;
        if created {
            self.jobs_queued().await;
        }
        Ok((row, created))
    }

    pub async fn job(&self, tenant: &TenantName, id: &str) -> Result<Option<JobRow>, StoreError> {
        backend!(self.job(tenant, id))
    }

    /// The tenant's jobs, newest first.
    pub async fn jobs_of(
        &self,
        tenant: &TenantName,
        filter: &JobFilter,
    ) -> Result<Vec<JobRow>, StoreError> {
        backend!(self.jobs_of(tenant, filter))
    }

    /// Leases up to `limit` due jobs to `owner` until `lease_until` (one claim never takes a
    /// job another claim holds), oldest first.
    pub async fn claim_jobs(
        &self,
        owner: &str,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<JobRow>, StoreError> {
        backend!(self.claim_jobs(owner, now, lease_until, limit))
    }

    /// Extends `owner`'s leases; the ones it still holds.
    pub async fn renew_leases(
        &self,
        owner: &str,
        lease_until: i64,
    ) -> Result<Vec<Lease>, StoreError> {
        backend!(self.renew_leases(owner, lease_until))
    }

    /// Records a running job's progress under its lease; false if the lease is gone.
    pub async fn job_progress(&self, lease: &Lease, progress: &str) -> Result<bool, StoreError> {
        backend!(self.job_progress(lease, progress))
    }

    /// Ends a job under its lease; false (and nothing written) if the lease is gone.
    pub async fn finish_job(
        &self,
        lease: &Lease,
        status: JobStatus,
        outcome: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        backend!(self.finish_job(lease, status, outcome, now))
    }

    /// Queues a job again under its lease, due at `run_after` (with `refund`, the attempt is
    /// not counted); false if the lease is gone.
    pub async fn retry_job(
        &self,
        lease: &Lease,
        run_after: i64,
        outcome: &str,
        refund: bool,
    ) -> Result<bool, StoreError> {
        let done = backend!(self.retry_job(lease, run_after, outcome, refund))?;
        if done {
            self.changed(&[Change::Jobs]).await;
        }
        Ok(done)
    }

    /// Cancels the tenant's job unless it has ended; the job as it is afterwards (`None`: no
    /// such job). The node running it is told.
    pub async fn cancel_job(
        &self,
        tenant: &TenantName,
        id: &str,
        outcome: &str,
        now: i64,
    ) -> Result<Option<JobRow>, StoreError> {
        let job = backend!(self.cancel_job(tenant, id, outcome, now))?;
        if job.is_some() {
            self.changed(&[Change::JobCancelled(id.to_owned())]).await;
        }
        Ok(job)
    }

    /// Rescues jobs whose lease lapsed before `now` (queued again, or failed with `outcome`
    /// once their attempts are spent): how many of each.
    pub async fn rescue_jobs(&self, now: i64, outcome: &str) -> Result<(u64, u64), StoreError> {
        let (requeued, failed) = backend!(self.rescue_jobs(now, outcome))?;
        if requeued > 0 {
            self.changed(&[Change::Jobs]).await;
        }
        Ok((requeued, failed))
    }

    /// Fails queued jobs whose token was revoked, removed or expired by `now`.
    pub async fn fail_unauthorised_jobs(
        &self,
        now: i64,
        revoked: &str,
        expired: &str,
    ) -> Result<u64, StoreError> {
        backend!(self.fail_unauthorised_jobs(now, revoked, expired))
    }

    /// Removes jobs that ended before `before`.
    pub async fn forget_jobs(&self, before: i64) -> Result<u64, StoreError> {
        backend!(self.forget_jobs(before))
    }

    /// Leases up to `limit` due job callbacks until `hold_until`.
    pub async fn claim_callbacks(
        &self,
        now: i64,
        hold_until: i64,
        limit: i64,
    ) -> Result<Vec<JobRow>, StoreError> {
        backend!(self.claim_callbacks(now, hold_until, limit))
    }

    /// Records a callback delivery's result under its fence; false if another took over.
    pub async fn callback_result(
        &self,
        job: &str,
        attempt: i64,
        state: &str,
        retry_at: Option<i64>,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        backend!(self.callback_result(job, attempt, state, retry_at, error))
    }

    pub async fn insert_schedule(&self, s: &NewSchedule) -> Result<ScheduleRow, StoreError> {
        backend!(self.insert_schedule(s))
    }

    pub async fn schedule(
        &self,
        tenant: &TenantName,
        id: &str,
    ) -> Result<Option<ScheduleRow>, StoreError> {
        backend!(self.schedule(tenant, id))
    }

    /// The tenant's schedules, oldest first.
    pub async fn schedules_of(&self, tenant: &TenantName) -> Result<Vec<ScheduleRow>, StoreError> {
        backend!(self.schedules_of(tenant))
    }

    /// Pauses or resumes a schedule (resumed, it next ticks at `next_at`).
    pub async fn set_schedule_paused(
        &self,
        tenant: &TenantName,
        id: &str,
        paused: bool,
        next_at: i64,
    ) -> Result<Option<ScheduleRow>, StoreError> {
        backend!(self.set_schedule_paused(tenant, id, paused, next_at))
    }

    pub async fn delete_schedule(&self, tenant: &TenantName, id: &str) -> Result<bool, StoreError> {
        backend!(self.delete_schedule(tenant, id))
    }

    /// Fires due schedules: one job per tick across every node (see the backend's
    /// `fire_schedules`). The nodes are told of the jobs.
    pub async fn fire_schedules(
        &self,
        now: i64,
        limit: i64,
        next: &(dyn Fn(&str, i64) -> Option<i64> + Sync),
        make_job: &(dyn Fn(&ScheduleRow) -> NewJob + Sync),
    ) -> Result<Vec<(ScheduleRow, String)>, StoreError> {
        let fired = backend!(self.fire_schedules(now, limit, next, make_job))?;
        if !fired.is_empty() {
            self.changed(&[Change::Jobs]).await;
        }
        Ok(fired)
    }
}
