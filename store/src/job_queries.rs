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
     outcome, created_at, started_at, finished_at, callback_state, callback_attempts, \
     callback_error";

const SCHEDULE_COLUMNS: &str = "id, tenant, token_id, cron, function, kwargs, version, paused, \
     next_at, last_at, last_job, created_at";

/// Queues a job (bound by `bind_new_job!`), unless the tenant has one with its idempotency key.
const INSERT_JOB: &str = "INSERT INTO jobs (id, tenant, token_id, function, kwargs, version, \
     status, attempts, max_attempts, run_after, idempotency_key, callback_url, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, 'queued', 0, $7, $8, $9, $10, $8) ON CONFLICT DO NOTHING";

/// Binds a `NewJob` to `INSERT_JOB`'s placeholders.
macro_rules! bind_new_job {
    ($query:expr, $j:expr) => {
        $query
            .bind(&$j.id)
            .bind($j.tenant.as_str())
            .bind(&$j.token_id)
            .bind(&$j.function)
            .bind(&$j.kwargs)
            .bind(&$j.version)
            .bind($j.max_attempts)
            .bind($j.created_at)
            .bind(&$j.idempotency_key)
            .bind(&$j.callback_url)
    };
}

/// A queued job's token still holds (not revoked, not expired at `$3`, not removed): only then
/// is the job claimed. One that does not is failed by `fail_unauthorised_jobs`.
const TOKEN_HOLDS: &str = "EXISTS (SELECT 1 FROM tokens t WHERE t.id = jobs.token_id \
     AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > $3))";

/// What an ending job's row gets besides its status: a callback to deliver, if it has one.
const CALLBACK_PENDING: &str =
    "callback_state = CASE WHEN callback_url IS NULL THEN NULL ELSE 'pending' END";

impl Backend {
    /// Inserts the job, unless the tenant already has one with its idempotency key: then that
    /// one is returned with `false`.
    pub async fn insert_job(&self, j: &NewJob) -> Result<(JobRow, bool), StoreError> {
        let inserted = bind_new_job!(
            sqlx::query(&format!("{INSERT_JOB} RETURNING {JOB_COLUMNS}")),
            j
        )
        .fetch_optional(&self.pool)
        .await?;
        let created = inserted.is_some();
        let row = match (inserted, &j.idempotency_key) {
            (Some(row), _) => Some(row),
            (None, Some(key)) => sqlx::query(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = $1 AND idempotency_key = $2"
            ))
            .bind(j.tenant.as_str())
            .bind(key)
            .fetch_optional(&self.pool)
            .await?,
            (None, None) => None,
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
        // One statement, no transaction around it: nothing stays locked should this node lose
        // the database between two round trips.
        let rows = sqlx::query(&format!(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, lease_owner = $1, \
             lease_until = $2, started_at = COALESCE(started_at, $3) \
             WHERE id IN (SELECT id FROM jobs WHERE status = 'queued' AND run_after <= $3 \
             AND {TOKEN_HOLDS} \
             ORDER BY run_after, created_at, id LIMIT $4 {SKIP_LOCKED}) \
             RETURNING {JOB_COLUMNS}"
        ))
        .bind(owner)
        .bind(lease_until)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
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
            &format!(
                "UPDATE jobs SET status = $4, outcome = $5, finished_at = $6, lease_owner = NULL, \
                 lease_until = NULL, {CALLBACK_PENDING}, callback_due_at = $6 \
                 WHERE id = $1 AND lease_owner = $2 AND attempts = $3 AND status = 'running'"
            ),
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
        sqlx::query(&format!(
            "UPDATE jobs SET status = 'cancelled', outcome = $3, finished_at = $4, \
             lease_owner = NULL, lease_until = NULL, {CALLBACK_PENDING}, callback_due_at = $4 \
             WHERE tenant = $1 AND id = $2 AND status IN ('queued', 'running')"
        ))
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
        // One statement (see `claim_jobs`): spent jobs fail, the others go back to the queue.
        let spent = "attempts >= max_attempts";
        let rows = sqlx::query(&format!(
            "UPDATE jobs SET \
             status = CASE WHEN {spent} THEN 'failed' ELSE 'queued' END, \
             outcome = CASE WHEN {spent} THEN $2 ELSE outcome END, \
             finished_at = CASE WHEN {spent} THEN $1 ELSE finished_at END, \
             callback_state = CASE WHEN {spent} AND callback_url IS NOT NULL THEN 'pending' \
             ELSE callback_state END, \
             callback_due_at = CASE WHEN {spent} THEN $1 ELSE callback_due_at END, \
             run_after = $1, lease_owner = NULL, lease_until = NULL \
             WHERE status = 'running' AND lease_until < $1 RETURNING status"
        ))
        .bind(now)
        .bind(outcome)
        .fetch_all(&self.pool)
        .await?;
        let mut failed = 0;
        for r in &rows {
            let status: String = r.try_get(0)?;
            failed += u64::from(status == "failed");
        }
        Ok((rows.len() as u64 - failed, failed))
    }

    /// Fails the queued jobs whose token no longer holds at `now` (`expired` as outcome for a
    /// token past its expiry, `revoked` for one revoked or removed); how many.
    pub async fn fail_unauthorised_jobs(
        &self,
        now: i64,
        revoked: &str,
        expired: &str,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(&format!(
            "UPDATE jobs SET status = 'failed', finished_at = $1, \
             outcome = CASE WHEN EXISTS (SELECT 1 FROM tokens t WHERE t.id = jobs.token_id \
             AND t.revoked_at IS NULL) THEN $3 ELSE $2 END, \
             {CALLBACK_PENDING}, callback_due_at = $1 \
             WHERE status = 'queued' AND NOT EXISTS (SELECT 1 FROM tokens t \
             WHERE t.id = jobs.token_id AND t.revoked_at IS NULL \
             AND (t.expires_at IS NULL OR t.expires_at > $1))"
        ))
        .bind(now)
        .bind(revoked)
        .bind(expired)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Removes the jobs that ended before `before`; how many.
    pub async fn forget_jobs(&self, before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM jobs WHERE finished_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Leases up to `limit` due callbacks until `hold_until` (a delivery in flight); each
    /// returned job's `callback_attempts` counts this delivery and fences its result.
    pub async fn claim_callbacks(
        &self,
        now: i64,
        hold_until: i64,
        limit: i64,
    ) -> Result<Vec<JobRow>, StoreError> {
        // One statement (see `claim_jobs`).
        let rows = sqlx::query(&format!(
            "UPDATE jobs SET callback_due_at = $2, callback_attempts = callback_attempts + 1 \
             WHERE id IN (SELECT id FROM jobs WHERE callback_state = 'pending' \
             AND callback_due_at <= $1 ORDER BY callback_due_at, id LIMIT $3 {SKIP_LOCKED}) \
             RETURNING {JOB_COLUMNS}"
        ))
        .bind(now)
        .bind(hold_until)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Records a delivery's result under its fence (`callback_attempts`): `delivered`, due
    /// again at `retry_at`, or `failed` for good with `error`. False if another delivery
    /// took over.
    pub async fn callback_result(
        &self,
        job: &str,
        attempt: i64,
        state: &str,
        retry_at: Option<i64>,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET callback_state = $3, callback_due_at = $4, callback_error = $5 \
             WHERE id = $1 AND callback_attempts = $2 AND callback_state = 'pending'",
        )
        .bind(job)
        .bind(attempt)
        .bind(state)
        .bind(retry_at)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn insert_schedule(&self, s: &NewSchedule) -> Result<ScheduleRow, StoreError> {
        sqlx::query(
            "INSERT INTO schedules (id, tenant, token_id, cron, function, kwargs, version, \
             paused, next_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9)",
        )
        .bind(&s.id)
        .bind(s.tenant.as_str())
        .bind(&s.token_id)
        .bind(&s.cron)
        .bind(&s.function)
        .bind(&s.kwargs)
        .bind(&s.version)
        .bind(s.next_at)
        .bind(s.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| conflict_or(e, format!("schedule {:?}", s.id)))?;
        self.schedule(&s.tenant, &s.id)
            .await?
            .ok_or_else(|| StoreError::Conflict(format!("schedule {:?}", s.id)))
    }

    pub async fn schedule(
        &self,
        tenant: &TenantName,
        id: &str,
    ) -> Result<Option<ScheduleRow>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE tenant = $1 AND id = $2"
        ))
        .bind(tenant.as_str())
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(schedule_from_row).transpose()
    }

    /// The tenant's schedules, oldest first.
    pub async fn schedules_of(&self, tenant: &TenantName) -> Result<Vec<ScheduleRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE tenant = $1 ORDER BY created_at, id"
        ))
        .bind(tenant.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(schedule_from_row).collect()
    }

    /// Pauses or resumes the tenant's schedule (resumed, its next tick is `next_at`).
    pub async fn set_schedule_paused(
        &self,
        tenant: &TenantName,
        id: &str,
        paused: bool,
        next_at: i64,
    ) -> Result<Option<ScheduleRow>, StoreError> {
        sqlx::query(
            "UPDATE schedules SET paused = $3, next_at = CASE WHEN $3 = 0 THEN $4 ELSE next_at END \
             WHERE tenant = $1 AND id = $2",
        )
        .bind(tenant.as_str())
        .bind(id)
        .bind(i64::from(paused))
        .bind(next_at)
        .execute(&self.pool)
        .await?;
        self.schedule(tenant, id).await
    }

    pub async fn delete_schedule(&self, tenant: &TenantName, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM schedules WHERE tenant = $1 AND id = $2")
            .bind(tenant.as_str())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Fires up to `limit` due schedules in one transaction: each queues the job `make_job`
    /// makes for its tick (with the idempotency key `schedule:<id>:<tick>`, so a tick never
    /// makes two) and moves on to the tick `next` gives after `now` (ticks missed while no node
    /// ran are not made up; `None` pauses the schedule). The schedules fired and their jobs.
    pub async fn fire_schedules(
        &self,
        now: i64,
        limit: i64,
        next: &(dyn Fn(&str, i64) -> Option<i64> + Sync),
        make_job: &(dyn Fn(&ScheduleRow) -> NewJob + Sync),
    ) -> Result<Vec<(ScheduleRow, String)>, StoreError> {
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE paused = 0 AND next_at <= $1 \
             ORDER BY next_at, id LIMIT $2 {SKIP_LOCKED}"
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let mut fired = Vec::new();
        for row in &rows {
            let schedule = schedule_from_row(row)?;
            let tick = schedule.next_at;
            let mut job = make_job(&schedule);
            job.idempotency_key = Some(format!("schedule:{}:{tick}", schedule.id));
            bind_new_job!(sqlx::query(INSERT_JOB), &job)
                .execute(&mut *tx)
                .await?;
            let after = next(&schedule.cron, now.max(tick));
            sqlx::query(
                "UPDATE schedules SET next_at = $2, paused = $3, last_at = $4, last_job = $5 \
                 WHERE id = $1",
            )
            .bind(&schedule.id)
            .bind(after.unwrap_or(tick))
            .bind(i64::from(after.is_none()))
            .bind(tick)
            .bind(&job.id)
            .execute(&mut *tx)
            .await?;
            fired.push((schedule, job.id));
        }
        tx.commit().await?;
        Ok(fired)
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
        callback_state: r.try_get(19)?,
        callback_attempts: r.try_get(20)?,
        callback_error: r.try_get(21)?,
        id,
    })
}

fn schedule_from_row(r: &DbRow) -> Result<ScheduleRow, StoreError> {
    let id: String = r.try_get(0)?;
    let tenant: String = r.try_get(1)?;
    let tenant = TenantName::parse(&tenant).map_err(|e| StoreError::InvalidRow {
        table: "schedule",
        key: id.clone(),
        reason: e.to_string(),
    })?;
    let paused: i64 = r.try_get(7)?;
    Ok(ScheduleRow {
        tenant,
        token_id: r.try_get(2)?,
        cron: r.try_get(3)?,
        function: r.try_get(4)?,
        kwargs: r.try_get(5)?,
        version: r.try_get(6)?,
        paused: paused != 0,
        next_at: r.try_get(8)?,
        last_at: r.try_get(9)?,
        last_job: r.try_get(10)?,
        created_at: r.try_get(11)?,
        id,
    })
}
