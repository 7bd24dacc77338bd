// The job queue's queries, shared by both SQL backends like `queries.rs` (included after it,
// with the same `DbRow` and `Backend`). Each backend also defines `SKIP_LOCKED`: PostgreSQL's
// `FOR UPDATE SKIP LOCKED`, so nodes claiming at once never wait on, nor take, each other's
// rows; empty on SQLite, whose one writer at a time already makes a claim exclusive.
//
// Every write to a claimed job names its lease (`lease_owner` and `attempts`, still
// `running`): that is the fence. A node whose lease lapsed and whose job was claimed again
// writes nothing.

const JOB_COLUMNS: &str = "id, tenant, token_id, function, kwargs, version, status, attempts, \
     max_attempts, run_after, lease_owner, lease_until, idempotency_key, callback_url, progress, \
     outcome, created_at, started_at, finished_at";

impl Backend {
    /// Inserts the job, unless the tenant already has one with its idempotency key: then that
    /// one is returned with `false`.
    pub async fn insert_job(&self, j: &NewJob) -> Result<(JobRow, bool), StoreError> {
        let done = sqlx::query(
            "INSERT INTO jobs (id, tenant, token_id, function, kwargs, version, status, \
             attempts, max_attempts, run_after, idempotency_key, callback_url, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'queued', 0, $7, $8, $9, $10, $8) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&j.id)
        .bind(j.tenant.as_str())
        .bind(&j.token_id)
        .bind(&j.function)
        .bind(&j.kwargs)
        .bind(&j.version)
        .bind(j.max_attempts)
        .bind(j.created_at)
        .bind(&j.idempotency_key)
        .bind(&j.callback_url)
        .execute(&self.pool)
        .await?;
        let created = done.rows_affected() == 1;
        let row = match (&j.idempotency_key, created) {
            (Some(key), false) => sqlx::query(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = $1 AND idempotency_key = $2"
            ))
            .bind(j.tenant.as_str())
            .bind(key)
            .fetch_optional(&self.pool)
            .await?,
            _ => sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
                .bind(&j.id)
                .fetch_optional(&self.pool)
                .await?,
        };
        match row {
            Some(r) => Ok((job_from_row(&r)?, created)),
            None => Err(StoreError::Conflict(format!("job {:?}", j.id))),
        }
    }

    /// The tenant's job.
    pub async fn job(&self, tenant: &TenantName, id: &str) -> Result<Option<JobRow>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = $1 AND id = $2"
        ))
        .bind(tenant.as_str())
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// The tenant's jobs, newest first.
    pub async fn jobs_of(
        &self,
        tenant: &TenantName,
        filter: &JobFilter,
    ) -> Result<Vec<JobRow>, StoreError> {
        let (before_at, before_id) = match &filter.before {
            Some((at, id)) => (*at, id.as_str()),
            None => (i64::MAX, ""),
        };
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = $1 \
             AND ($2 = '' OR status = $2) \
             AND (created_at < $3 OR (created_at = $3 AND id < $4)) \
             ORDER BY created_at DESC, id DESC LIMIT $5"
        ))
        .bind(tenant.as_str())
        .bind(filter.status.map_or("", JobStatus::as_str))
        .bind(before_at)
        .bind(before_id)
        .bind(filter.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Leases up to `limit` jobs that are due to `owner` until `lease_until`, oldest first.
    pub async fn claim_jobs(
        &self,
        owner: &str,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<JobRow>, StoreError> {
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(&format!(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, lease_owner = $1, \
             lease_until = $2, started_at = COALESCE(started_at, $3) \
             WHERE id IN (SELECT id FROM jobs WHERE status = 'queued' AND run_after <= $3 \
             ORDER BY run_after, created_at, id LIMIT $4 {SKIP_LOCKED}) \
             RETURNING {JOB_COLUMNS}"
        ))
        .bind(owner)
        .bind(lease_until)
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut jobs = rows.iter().map(job_from_row).collect::<Result<Vec<_>, _>>()?;
        // RETURNING keeps no order: the oldest first, as they were chosen.
        jobs.sort_by(|a, b| {
            (a.run_after, a.created_at, &a.id).cmp(&(b.run_after, b.created_at, &b.id))
        });
        Ok(jobs)
    }

    /// Extends every lease `owner` holds to `lease_until`; the leases it still holds (a job
    /// cancelled or claimed again is not among them).
    pub async fn renew_leases(
        &self,
        owner: &str,
        lease_until: i64,
    ) -> Result<Vec<Lease>, StoreError> {
        let rows = sqlx::query(
            "UPDATE jobs SET lease_until = $2 WHERE lease_owner = $1 AND status = 'running' \
             RETURNING id, attempts",
        )
        .bind(owner)
        .bind(lease_until)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Lease {
                    job: r.try_get(0)?,
                    owner: owner.to_owned(),
                    attempt: r.try_get(1)?,
                })
            })
            .collect()
    }

    /// Records the job's latest progress, under its lease; false if the lease is gone.
    pub async fn job_progress(&self, lease: &Lease, progress: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET progress = $4 WHERE id = $1 AND lease_owner = $2 AND attempts = $3 \
             AND status = 'running'",
        )
        .bind(&lease.job)
        .bind(&lease.owner)
        .bind(lease.attempt)
        .bind(progress)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Ends the job (`succeeded` or `failed`) with its outcome, under its lease; false if the
    /// lease is gone (the job was cancelled, or rescued and claimed again).
    pub async fn finish_job(
        &self,
        lease: &Lease,
        status: JobStatus,
        outcome: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET status = $4, outcome = $5, finished_at = $6, lease_owner = NULL, \
             lease_until = NULL WHERE id = $1 AND lease_owner = $2 AND attempts = $3 \
             AND status = 'running'",
        )
        .bind(&lease.job)
        .bind(&lease.owner)
        .bind(lease.attempt)
        .bind(status.as_str())
        .bind(outcome)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Puts the job back in the queue, due at `run_after`, under its lease; with `refund`
    /// the attempt is not counted (it never ran: not admitted yet, or handed back by a node
    /// that is stopping). False if the lease is gone.
    pub async fn retry_job(
        &self,
        lease: &Lease,
        run_after: i64,
        outcome: &str,
        refund: bool,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET status = 'queued', run_after = $4, outcome = $5, \
             attempts = attempts - $6, lease_owner = NULL, lease_until = NULL \
             WHERE id = $1 AND lease_owner = $2 AND attempts = $3 AND status = 'running'",
        )
        .bind(&lease.job)
        .bind(&lease.owner)
        .bind(lease.attempt)
        .bind(run_after)
        .bind(outcome)
        .bind(i64::from(refund))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Cancels the tenant's job if it has not ended; the job as it is afterwards.
    pub async fn cancel_job(
        &self,
        tenant: &TenantName,
        id: &str,
        outcome: &str,
        now: i64,
    ) -> Result<Option<JobRow>, StoreError> {
        sqlx::query(
            "UPDATE jobs SET status = 'cancelled', outcome = $3, finished_at = $4, \
             lease_owner = NULL, lease_until = NULL \
             WHERE tenant = $1 AND id = $2 AND status IN ('queued', 'running')",
        )
        .bind(tenant.as_str())
        .bind(id)
        .bind(outcome)
        .bind(now)
        .execute(&self.pool)
        .await?;
        self.job(tenant, id).await
    }

    /// Rescues the jobs whose lease lapsed before `now`: back to the queue while attempts
    /// remain, `failed` with `outcome` once they are spent. The jobs rescued and failed.
    pub async fn rescue_jobs(&self, now: i64, outcome: &str) -> Result<(u64, u64), StoreError> {
        let mut tx = self.write_tx().await?;
        let failed = sqlx::query(
            "UPDATE jobs SET status = 'failed', outcome = $2, finished_at = $1, \
             lease_owner = NULL, lease_until = NULL \
             WHERE status = 'running' AND lease_until < $1 AND attempts >= max_attempts",
        )
        .bind(now)
        .bind(outcome)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let requeued = sqlx::query(
            "UPDATE jobs SET status = 'queued', run_after = $1, lease_owner = NULL, \
             lease_until = NULL WHERE status = 'running' AND lease_until < $1",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok((requeued, failed))
    }

    /// Removes the jobs that ended before `before`; how many.
    pub async fn forget_jobs(&self, before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM jobs WHERE finished_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

fn job_from_row(r: &DbRow) -> Result<JobRow, StoreError> {
    let id: String = r.try_get(0)?;
    let invalid = |reason: String| StoreError::InvalidRow {
        table: "job",
        key: id.clone(),
        reason,
    };
    let tenant: String = r.try_get(1)?;
    let tenant = TenantName::parse(&tenant).map_err(|e| invalid(e.to_string()))?;
    let status: String = r.try_get(6)?;
    let status = JobStatus::parse(&status).ok_or_else(|| invalid(format!("status {status:?}")))?;
    Ok(JobRow {
        tenant,
        token_id: r.try_get(2)?,
        function: r.try_get(3)?,
        kwargs: r.try_get(4)?,
        version: r.try_get(5)?,
        status,
        attempts: r.try_get(7)?,
        max_attempts: r.try_get(8)?,
        run_after: r.try_get(9)?,
        lease_owner: r.try_get(10)?,
        lease_until: r.try_get(11)?,
        idempotency_key: r.try_get(12)?,
        callback_url: r.try_get(13)?,
        progress: r.try_get(14)?,
        outcome: r.try_get(15)?,
        created_at: r.try_get(16)?,
        started_at: r.try_get(17)?,
        finished_at: r.try_get(18)?,
        id,
    })
}
