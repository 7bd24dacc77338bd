// The queries both SQL backends run, written once. Each backend's module defines `DbRow`
// (its sqlx row type) and `Backend` (its store type, with a `pool` and a
// `write_tx`) and then includes this file, so the SQL below must be what SQLite and
// PostgreSQL both accept: `$n` placeholders, BIGINT epoch milliseconds, `ON CONFLICT`, sums
// cast to BIGINT (PostgreSQL sums BIGINTs as NUMERIC), no functions only one of them has.

const TENANT_COLUMNS: &str =
    "name, repo, branch, subdir, plan, webhook_secret, policy, active_version, created_at, uid, \
     env";
const TOKEN_COLUMNS: &str =
    "id, tenant, kind, hash, prefix, scopes, expires_at, revoked_at, created_at, last_used_at";
/// A call's record with what is kept of its logs, as [`call_view_from_row`] reads it.
const CALL_VIEW: &str = "SELECT c.call_id, c.tenant, c.fn, c.version, c.outcome, c.wall_ms, \
     c.cpu_ms, c.peak_memory_bytes, c.at, l.error, l.logs FROM calls c \
     LEFT JOIN call_logs l ON l.call_id = c.call_id";
/// [`CALL_VIEW`] without the logs, for listings.
const CALL_LISTED: &str = "SELECT c.call_id, c.tenant, c.fn, c.version, c.outcome, c.wall_ms, \
     c.cpu_ms, c.peak_memory_bytes, c.at, l.error, CAST(NULL AS TEXT) FROM calls c \
     LEFT JOIN call_logs l ON l.call_id = c.call_id";
const SESSION_COLUMNS: &str =
    "id, hash, token_hash, token_id, csrf, created_at, expires_at, revoked_at";
const DAY_MS: i64 = 86_400_000;
const VERSION_COLUMNS: &str =
    "id, source, created_at, git_commit, functions, activated_at, uploads, deploy_log, packages";

impl Backend {
    #[cfg(test)]
    pub(crate) async fn execute_raw(&self, sql: &str) {
        sqlx::query(sql).execute(&self.pool).await.unwrap();
    }

    /// Inserts a tenant with the next free uid. The next uid is computed inside the INSERT
    /// (which holds SQLite's one write lock), and the unique index on `uid` refuses a
    /// duplicate whatever happens: a uid taken by a concurrent writer (PostgreSQL) is retried.
    pub async fn insert_tenant(&self, t: &NewTenant) -> Result<TenantRow, StoreError> {
        let sql = format!(
            "INSERT INTO tenants ({TENANT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $8, \
             (SELECT COALESCE(MAX(uid) + 1, $9) FROM tenants), NULL)"
        );
        let overrides = serde_json::to_string(&PolicyPatch::default()).expect("serialises");
        let mut attempts = 0;
        loop {
            let done = sqlx::query(&sql)
                .bind(t.name.as_str())
                .bind(&t.repo)
                .bind(&t.branch)
                .bind(&t.subdir)
                .bind(t.plan.as_str())
                .bind(&t.webhook_secret)
                .bind(&overrides)
                .bind(t.created_at)
                .bind(i64::from(TenantUid::FIRST))
                .execute(&self.pool)
                .await;
            match done {
                Ok(_) => break,
                Err(e) => {
                    // Only a uid taken by a concurrent writer is worth another try.
                    let unique =
                        matches!(&e, sqlx::Error::Database(db) if db.is_unique_violation());
                    attempts += 1;
                    if !unique || attempts >= 10 || self.tenant(&t.name).await?.is_some() {
                        return Err(conflict_or(e, format!("tenant {:?}", t.name.as_str())));
                    }
                    // Writers that collided retry at staggered times, so they do not collide
                    // again on the next uid.
                    let mut jitter = [0u8; 1];
                    getrandom::getrandom(&mut jitter).expect("the random source failed");
                    tokio::time::sleep(std::time::Duration::from_millis(u64::from(jitter[0] % 8)))
                        .await;
                }
            }
        }
        self.tenant(&t.name)
            .await?
            .ok_or_else(|| StoreError::InvalidRow {
                table: "tenant",
                key: t.name.to_string(),
                reason: "it vanished right after its insert".into(),
            })
    }

    /// Replaces a tenant's mutable fields (everything but name, uid and creation time).
    pub async fn update_tenant(&self, t: &TenantRow) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE tenants SET repo = $2, branch = $3, subdir = $4, plan = $5, webhook_secret = $6, \
             policy = $7 WHERE name = $1",
        )
        .bind(t.name.as_str())
        .bind(&t.repo)
        .bind(&t.branch)
        .bind(&t.subdir)
        .bind(t.plan.as_str())
        .bind(&t.webhook_secret)
        .bind(serde_json::to_string(&t.overrides).expect("serialises"))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn tenant(&self, name: &TenantName) -> Result<Option<TenantRow>, StoreError> {
        let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE name = $1");
        let row = sqlx::query(&sql)
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| tenant_from_row(&r)).transpose()
    }

    pub async fn tenants(&self) -> Result<Vec<TenantRow>, StoreError> {
        let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY name");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(tenant_from_row).collect()
    }

    pub async fn delete_tenant(&self, name: &TenantName) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        for sql in [
            "DELETE FROM tokens WHERE tenant = $1",
            "DELETE FROM versions WHERE tenant = $1",
        ] {
            sqlx::query(sql)
                .bind(name.as_str())
                .execute(&mut *tx)
                .await?;
        }
        let done = sqlx::query("DELETE FROM tenants WHERE name = $1")
            .bind(name.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn activate_version(
        &self,
        tenant: &TenantName,
        version: &NewVersion<'_>,
        change: UploadChange<'_>,
    ) -> Result<(), StoreError> {
        let tenant = tenant.as_str();
        let mut tx = self.write_tx().await?;
        match change {
            UploadChange::None => {}
            UploadChange::Put {
                module,
                source,
                sha256,
                now,
            } => {
                sqlx::query(
                    "INSERT INTO uploads (tenant, module, source, sha256, updated_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant, module) DO UPDATE \
                     SET source = excluded.source, sha256 = excluded.sha256, \
                     updated_at = excluded.updated_at",
                )
                .bind(tenant)
                .bind(module)
                .bind(source)
                .bind(sha256)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            UploadChange::Delete { module } => {
                sqlx::query("DELETE FROM uploads WHERE tenant = $1 AND module = $2")
                    .bind(tenant)
                    .bind(module)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        sqlx::query(
            "INSERT INTO versions (tenant, id, source, created_at, git_commit, functions, \
             activated_at, uploads, deploy_log, packages) \
             VALUES ($1, $2, $3, $4, $5, $6, $4, $7, $8, $9) \
             ON CONFLICT (tenant, id) DO UPDATE SET activated_at = $4, \
             deploy_log = COALESCE(excluded.deploy_log, versions.deploy_log), \
             packages = COALESCE(excluded.packages, versions.packages)",
        )
        .bind(tenant)
        .bind(version.id.as_str())
        .bind(version.source)
        .bind(version.now)
        .bind(version.git_commit)
        .bind(version.functions)
        .bind(version.uploads)
        .bind(version.deploy_log)
        .bind(version.packages)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE tenants SET active_version = $2 WHERE name = $1")
            .bind(tenant)
            .bind(version.id.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn version(
        &self,
        tenant: &TenantName,
        version: &VersionId,
    ) -> Result<Option<VersionRow>, StoreError> {
        let sql = format!("SELECT {VERSION_COLUMNS} FROM versions WHERE tenant = $1 AND id = $2");
        let row = sqlx::query(&sql)
            .bind(tenant.as_str())
            .bind(version.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| version_from_row(tenant, &r)).transpose()
    }

    pub async fn versions_of(&self, tenant: &TenantName) -> Result<Vec<VersionRow>, StoreError> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM versions WHERE tenant = $1 ORDER BY created_at DESC, id"
        );
        let rows = sqlx::query(&sql)
            .bind(tenant.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| version_from_row(tenant, r)).collect()
    }

    pub async fn delete_version(
        &self,
        tenant: &TenantName,
        version: &VersionId,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM versions WHERE tenant = $1 AND id = $2")
            .bind(tenant.as_str())
            .bind(version.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_active_version(
        &self,
        tenant: &TenantName,
        version: &VersionId,
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "UPDATE tenants SET active_version = $2 WHERE name = $1 \
             AND EXISTS (SELECT 1 FROM versions WHERE tenant = $1 AND id = $2)",
        )
        .bind(tenant.as_str())
        .bind(version.as_str())
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE versions SET activated_at = $3 WHERE tenant = $1 AND id = $2")
            .bind(tenant.as_str())
            .bind(version.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Replaces the tenant's environment variables; false if there is no such tenant.
    pub async fn set_env(
        &self,
        tenant: &TenantName,
        env: &[(String, String)],
    ) -> Result<bool, StoreError> {
        let object: serde_json::Map<String, serde_json::Value> = env
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let done = sqlx::query("UPDATE tenants SET env = $2 WHERE name = $1")
            .bind(tenant.as_str())
            .bind(serde_json::Value::Object(object).to_string())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn set_overrides(
        &self,
        tenant: &TenantName,
        overrides: &PolicyPatch,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE tenants SET policy = $2 WHERE name = $1")
            .bind(tenant.as_str())
            .bind(serde_json::to_string(overrides).expect("serialises"))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn insert_plan_if_absent(
        &self,
        name: &PlanName,
        policy: &Policy,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO plans (name, policy, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name.as_str())
        .bind(serde_json::to_string(policy).expect("serialises"))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn put_plan(
        &self,
        name: &PlanName,
        policy: &Policy,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO plans (name, policy, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET policy = excluded.policy, updated_at = excluded.updated_at",
        )
        .bind(name.as_str())
        .bind(serde_json::to_string(policy).expect("serialises"))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn plans(&self) -> Result<Vec<(PlanName, Policy)>, StoreError> {
        let rows = sqlx::query("SELECT name, policy FROM plans ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let name: String = r.try_get(0)?;
                let invalid = |reason: String| StoreError::InvalidRow {
                    table: "plan",
                    key: name.clone(),
                    reason,
                };
                let plan = PlanName::parse(&name).map_err(invalid)?;
                let text: String = r.try_get(1)?;
                let policy = serde_json::from_str(&text)
                    .map_err(|e| invalid(format!("its policy does not parse: {e}")))?;
                Ok((plan, policy))
            })
            .collect()
    }

    pub async fn delete_plan(&self, name: &PlanName) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tenants WHERE plan = $1")
            .bind(name.as_str())
            .fetch_one(&mut *tx)
            .await?;
        if users > 0 {
            return Err(StoreError::InUse(format!(
                "plan {:?} is used by {users} tenant(s)",
                name.as_str()
            )));
        }
        let done = sqlx::query("DELETE FROM plans WHERE name = $1")
            .bind(name.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn insert_calls(&self, calls: &[CallRecord]) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        for c in calls {
            sqlx::query(
                "INSERT INTO calls (call_id, tenant, token_id, fn, version, outcome, wall_ms, cpu_ms, \
                 peak_memory_bytes, bytes_in, bytes_out, at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (call_id) DO NOTHING",
            )
            .bind(&c.call_id)
            .bind(c.tenant.as_str())
            .bind(&c.token_id)
            .bind(&c.function)
            .bind(&c.version)
            .bind(&c.outcome)
            .bind(c.wall_ms)
            .bind(c.cpu_ms)
            .bind(c.peak_memory_bytes)
            .bind(c.bytes_in)
            .bind(c.bytes_out)
            .bind(c.at)
            .execute(&mut *tx)
            .await?;
            if let Some(log) = &c.log {
                sqlx::query(
                    "INSERT INTO call_logs (call_id, tenant, at, error, logs, bytes) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (call_id) DO NOTHING",
                )
                .bind(&c.call_id)
                .bind(c.tenant.as_str())
                .bind(c.at)
                .bind(&log.error)
                .bind(&log.logs)
                .bind(log.logs.len() as i64 + log.error.as_ref().map_or(0, |e| e.len() as i64))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes the tenant's call logs older than `before`, then the oldest past `keep_bytes`
    /// in all; returns how many went.
    pub async fn prune_call_logs(
        &self,
        tenant: &TenantName,
        before: i64,
        keep_bytes: i64,
    ) -> Result<u64, StoreError> {
        let mut tx = self.write_tx().await?;
        let old = sqlx::query("DELETE FROM call_logs WHERE tenant = $1 AND at < $2")
            .bind(tenant.as_str())
            .bind(before)
            .execute(&mut *tx)
            .await?;
        let over = sqlx::query(
            "DELETE FROM call_logs WHERE tenant = $1 AND call_id IN (SELECT call_id FROM \
             (SELECT call_id, CAST(SUM(bytes) OVER (ORDER BY at DESC, call_id DESC) AS BIGINT) \
             AS total FROM call_logs WHERE tenant = $1) AS newest_first WHERE total > $2)",
        )
        .bind(tenant.as_str())
        .bind(keep_bytes)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(old.rows_affected() + over.rows_affected())
    }

    /// One recorded call with what was kept of its logs; of one tenant only, when given.
    pub async fn call_view(
        &self,
        tenant: Option<&TenantName>,
        call_id: &str,
    ) -> Result<Option<CallView>, StoreError> {
        let row = sqlx::query(&format!(
            "{CALL_VIEW} WHERE c.call_id = $1 AND ($2 = '' OR c.tenant = $2)"
        ))
        .bind(call_id)
        .bind(tenant.map_or("", TenantName::as_str))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(call_view_from_row).transpose()
    }

    /// The `(at, call_id)` of a tenant's calls after `(after_at, after_id)` and up to
    /// `(to_at, to_id)`, oldest first, at most `limit`: what a follow looks over again, without
    /// the logs.
    pub async fn call_keys_between(
        &self,
        tenant: &TenantName,
        after: (i64, &str),
        to: (i64, &str),
        limit: i64,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, call_id FROM calls WHERE tenant = $1 \
             AND (at > $2 OR (at = $2 AND call_id > $3)) \
             AND (at < $4 OR (at = $4 AND call_id <= $5)) \
             ORDER BY at, call_id LIMIT $6",
        )
        .bind(tenant.as_str())
        .bind(after.0)
        .bind(after.1)
        .bind(to.0)
        .bind(to.1)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// A tenant's calls recorded after `(after_at, after_id)`, oldest first, at most `limit`.
    pub async fn calls_after(
        &self,
        tenant: &TenantName,
        after_at: i64,
        after_id: &str,
        limit: i64,
    ) -> Result<Vec<CallView>, StoreError> {
        let rows = sqlx::query(&format!(
            "{CALL_VIEW} WHERE c.tenant = $1 AND (c.at > $2 OR (c.at = $2 AND c.call_id > $3)) \
             ORDER BY c.at, c.call_id LIMIT $4"
        ))
        .bind(tenant.as_str())
        .bind(after_at)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(call_view_from_row).collect()
    }

    pub async fn usage(
        &self,
        tenant: Option<&TenantName>,
        from: i64,
        to: i64,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT tenant, fn, COUNT(*), \
             CAST(SUM(CASE WHEN outcome = 'ok' THEN 1 ELSE 0 END) AS BIGINT), \
             CAST(SUM(wall_ms) AS BIGINT), CAST(SUM(cpu_ms) AS BIGINT), MAX(peak_memory_bytes), \
             CAST(SUM(bytes_in) AS BIGINT), CAST(SUM(bytes_out) AS BIGINT) \
             FROM calls WHERE at >= $1 AND at < $2 AND ($3 IS NULL OR tenant = $3) \
             GROUP BY tenant, fn ORDER BY tenant, fn",
        )
        .bind(from)
        .bind(to)
        .bind(tenant.map(TenantName::as_str))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(UsageRow {
                    tenant: r.try_get(0)?,
                    function: r.try_get(1)?,
                    calls: r.try_get(2)?,
                    ok: r.try_get(3)?,
                    wall_ms: r.try_get(4)?,
                    cpu_ms: r.try_get(5)?,
                    max_peak_memory_bytes: r.try_get(6)?,
                    bytes_in: r.try_get(7)?,
                    bytes_out: r.try_get(8)?,
                })
            })
            .collect()
    }

    pub async fn cpu_ms_since(&self, tenant: &TenantName, from: i64) -> Result<i64, StoreError> {
        let used: Option<i64> =
            sqlx::query_scalar(
                "SELECT CAST(SUM(cpu_ms) AS BIGINT) FROM calls WHERE tenant = $1 AND at >= $2",
            )
                .bind(tenant.as_str())
                .bind(from)
                .fetch_one(&self.pool)
                .await?;
        Ok(used.unwrap_or(0))
    }

    /// Recorded calls newest first, as `filter` says; the error kept with each, never the
    /// logs (a listing stays small whatever the calls printed).
    pub async fn calls_page(&self, filter: &CallFilter) -> Result<Vec<CallView>, StoreError> {
        let (outcome, code) = match &filter.outcome {
            OutcomeFilter::Any => ("", ""),
            OutcomeFilter::Ok => ("ok", ""),
            OutcomeFilter::Failed => ("error", ""),
            OutcomeFilter::Code(code) => ("code", code.as_str()),
        };
        let (before_at, before_id) = filter
            .before
            .as_ref()
            .map_or((i64::MAX, ""), |(at, id)| (*at, id.as_str()));
        let rows = sqlx::query(&format!(
            "{CALL_LISTED} WHERE ($1 = '' OR c.tenant = $1) \
             AND ($2 = '' OR ($2 = 'ok' AND c.outcome = 'ok') \
                  OR ($2 = 'error' AND c.outcome <> 'ok') OR ($2 = 'code' AND c.outcome = $3)) \
             AND (c.at < $4 OR (c.at = $4 AND c.call_id < $5)) \
             ORDER BY c.at DESC, c.call_id DESC LIMIT $6"
        ))
        .bind(filter.tenant.as_ref().map_or("", TenantName::as_str))
        .bind(outcome)
        .bind(code)
        .bind(before_at)
        .bind(before_id)
        .bind(filter.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(call_view_from_row).collect()
    }

    /// Calls per UTC day in `[from, to)` (of one tenant, when given), with the median and
    /// 99th-percentile wall time of each day. Deploy-time children count their CPU only.
    pub async fn day_stats(
        &self,
        tenant: Option<&TenantName>,
        from: i64,
        to: i64,
    ) -> Result<Vec<DayStats>, StoreError> {
        let tenant = tenant.map(TenantName::as_str);
        let rows = sqlx::query(
            "SELECT at / 86400000, \
             CAST(SUM(CASE WHEN fn LIKE '<deploy:%' THEN 0 ELSE 1 END) AS BIGINT), \
             CAST(SUM(CASE WHEN fn LIKE '<deploy:%' OR outcome = 'ok' THEN 0 ELSE 1 END) AS BIGINT), \
             CAST(SUM(cpu_ms) AS BIGINT) \
             FROM calls WHERE at >= $1 AND at < $2 AND ($3 IS NULL OR tenant = $3) \
             GROUP BY at / 86400000 ORDER BY at / 86400000",
        )
        .bind(from)
        .bind(to)
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        let mut days = Vec::with_capacity(rows.len());
        for r in &rows {
            let day: i64 = r.try_get(0)?;
            let calls: i64 = r.try_get(1)?;
            // Nearest rank within the day's calls (the day clipped to the range asked for).
            let (start, end) = ((day * DAY_MS).max(from), ((day + 1) * DAY_MS).min(to));
            let rank = |q: f64| {
                let offset = ((calls as f64 * q).ceil() as i64 - 1).clamp(0, (calls - 1).max(0));
                async move {
                    if calls == 0 {
                        return Ok::<i64, StoreError>(0);
                    }
                    let wall: Option<i64> = sqlx::query_scalar(
                        "SELECT wall_ms FROM calls WHERE at >= $1 AND at < $2 \
                         AND ($3 IS NULL OR tenant = $3) AND fn NOT LIKE '<deploy:%' \
                         ORDER BY wall_ms LIMIT 1 OFFSET $4",
                    )
                    .bind(start)
                    .bind(end)
                    .bind(tenant)
                    .bind(offset)
                    .fetch_optional(&self.pool)
                    .await?;
                    Ok(wall.unwrap_or(0))
                }
            };
            let p50 = rank(0.5).await?;
            let p99 = rank(0.99).await?;
            days.push(DayStats {
                day: day * DAY_MS,
                calls,
                errors: r.try_get(2)?,
                cpu_ms: r.try_get(3)?,
                p50_ms: p50,
                p99_ms: p99,
            });
        }
        Ok(days)
    }

    /// How many calls in `[from, to)` answered each error code, most frequent first.
    pub async fn error_codes(
        &self,
        tenant: Option<&TenantName>,
        from: i64,
        to: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT outcome, COUNT(*) FROM calls WHERE at >= $1 AND at < $2 \
             AND ($3 IS NULL OR tenant = $3) AND outcome <> 'ok' AND fn NOT LIKE '<deploy:%' \
             GROUP BY outcome ORDER BY COUNT(*) DESC, outcome",
        )
        .bind(from)
        .bind(to)
        .bind(tenant.map(TenantName::as_str))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    pub async fn insert_session(&self, s: &SessionRow) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO console_sessions ({SESSION_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&s.id)
        .bind(&s.hash)
        .bind(&s.token_hash)
        .bind(&s.token_id)
        .bind(&s.csrf)
        .bind(s.created_at)
        .bind(s.expires_at)
        .bind(s.revoked_at)
        .execute(&self.pool)
        .await
        .map_err(|e| conflict_or(e, "session".to_owned()))?;
        Ok(())
    }

    pub async fn session_by_hash(&self, hash: &str) -> Result<Option<SessionRow>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM console_sessions WHERE hash = $1"
        ))
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(SessionRow {
                id: r.try_get(0)?,
                hash: r.try_get(1)?,
                token_hash: r.try_get(2)?,
                token_id: r.try_get(3)?,
                csrf: r.try_get(4)?,
                created_at: r.try_get(5)?,
                expires_at: r.try_get(6)?,
                revoked_at: r.try_get(7)?,
            })
        })
        .transpose()
    }

    pub async fn revoke_session(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE console_sessions SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1",
        )
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn forget_sessions(&self, expired_before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM console_sessions WHERE expires_at < $1")
            .bind(expired_before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    pub async fn insert_audit(&self, a: &AuditRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit (id, at, actor, action, tenant, detail, remote) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&a.id)
        .bind(a.at)
        .bind(&a.actor)
        .bind(&a.action)
        .bind(&a.tenant)
        .bind(&a.detail)
        .bind(&a.remote)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn audit(
        &self,
        tenant: Option<&TenantName>,
        since: i64,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, tenant, detail, remote FROM audit \
             WHERE at >= $1 AND ($2 IS NULL OR tenant = $2) ORDER BY at DESC, id DESC LIMIT $3",
        )
        .bind(since)
        .bind(tenant.map(TenantName::as_str))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditRow {
                    id: r.try_get(0)?,
                    at: r.try_get(1)?,
                    actor: r.try_get(2)?,
                    action: r.try_get(3)?,
                    tenant: r.try_get(4)?,
                    detail: r.try_get(5)?,
                    remote: r.try_get(6)?,
                })
            })
            .collect()
    }

    pub async fn put_secret(
        &self,
        tenant: &TenantName,
        key: &str,
        sealed: &Sealed,
        expose: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO secrets (tenant, key, nonce, sealed, updated_at, expose) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (tenant, key) DO UPDATE SET nonce = excluded.nonce, \
             sealed = excluded.sealed, updated_at = excluded.updated_at, expose = excluded.expose",
        )
        .bind(tenant.as_str())
        .bind(key)
        .bind(&sealed.nonce)
        .bind(&sealed.sealed)
        .bind(now)
        .bind(expose)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn any_exposed_secrets(&self, expose: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM secrets WHERE expose = $1")
            .bind(expose)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>(0)? > 0)
    }

    pub async fn exposed_secrets(
        &self,
        tenant: &TenantName,
        expose: &str,
    ) -> Result<Vec<(String, Sealed)>, StoreError> {
        let rows = sqlx::query(
            "SELECT key, nonce, sealed FROM secrets WHERE tenant = $1 AND expose = $2 ORDER BY key",
        )
        .bind(tenant.as_str())
        .bind(expose)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    Sealed {
                        nonce: r.try_get(1)?,
                        sealed: r.try_get(2)?,
                    },
                ))
            })
            .collect()
    }

    pub async fn secret(
        &self,
        tenant: &TenantName,
        key: &str,
    ) -> Result<Option<Sealed>, StoreError> {
        let row = sqlx::query("SELECT nonce, sealed FROM secrets WHERE tenant = $1 AND key = $2")
            .bind(tenant.as_str())
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(Sealed {
                nonce: r.try_get(0)?,
                sealed: r.try_get(1)?,
            })
        })
        .transpose()
    }

    pub async fn secret_names(&self, tenant: &TenantName) -> Result<Vec<SecretName>, StoreError> {
        let rows = sqlx::query(
            "SELECT key, updated_at, expose FROM secrets WHERE tenant = $1 ORDER BY key",
        )
        .bind(tenant.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SecretName {
                    key: r.try_get(0)?,
                    updated_at: r.try_get(1)?,
                    expose: r.try_get(2)?,
                })
            })
            .collect()
    }

    pub async fn delete_secret(&self, tenant: &TenantName, key: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM secrets WHERE tenant = $1 AND key = $2")
            .bind(tenant.as_str())
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn uploads_of(&self, tenant: &TenantName) -> Result<Vec<UploadRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT module, source, sha256, updated_at FROM uploads WHERE tenant = $1 ORDER BY module",
        )
        .bind(tenant.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(UploadRow {
                    module: r.try_get(0)?,
                    source: r.try_get(1)?,
                    sha256: r.try_get(2)?,
                    updated_at: r.try_get(3)?,
                })
            })
            .collect()
    }

    pub async fn insert_token(&self, t: &TokenRow) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        );
        sqlx::query(&sql)
            .bind(&t.id)
            .bind(t.tenant.as_ref().map(TenantName::as_str))
            .bind(t.kind.as_str())
            .bind(&t.hash)
            .bind(&t.prefix)
            .bind(&t.scopes)
            .bind(t.expires_at)
            .bind(t.revoked_at)
            .bind(t.created_at)
            .bind(t.last_used_at)
            .execute(&self.pool)
            .await
            .map_err(|e| conflict_or(e, "token".to_owned()))?;
        Ok(())
    }

    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>, StoreError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = $1");
        let row = sqlx::query(&sql)
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| token_from_row(&r)).transpose()
    }

    pub async fn tokens_of(&self, tenant: &TenantName) -> Result<Vec<TokenRow>, StoreError> {
        let sql =
            format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE tenant = $1 ORDER BY created_at, id");
        let rows = sqlx::query(&sql)
            .bind(tenant.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// Every operator token, oldest first.
    pub async fn operator_tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE tenant IS NULL ORDER BY created_at, id"
        );
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(token_from_row).collect()
    }

    pub async fn revoke_token(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1")
                .bind(id)
                .bind(now)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn touch_token(&self, id: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE tokens SET last_used_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records this node (again, after a restart under the same id) and its first beat.
    pub async fn register_node(&self, n: &NodeRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO nodes (id, address, version, started_at, heartbeat_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET \
             address = excluded.address, version = excluded.version, \
             started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at",
        )
        .bind(&n.id)
        .bind(&n.address)
        .bind(&n.version)
        .bind(n.started_at)
        .bind(n.heartbeat_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// This node's beat; false if its row is gone (it is registered again).
    pub async fn beat(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE nodes SET heartbeat_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every registered node, most recently started first; rows whose beat is older than
    /// `forget_before` are removed first.
    pub async fn nodes(&self, forget_before: i64) -> Result<Vec<NodeRow>, StoreError> {
        sqlx::query("DELETE FROM nodes WHERE heartbeat_at < $1")
            .bind(forget_before)
            .execute(&self.pool)
            .await?;
        let rows = sqlx::query(
            "SELECT id, address, version, started_at, heartbeat_at FROM nodes \
             ORDER BY started_at DESC, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(NodeRow {
                    id: r.try_get(0)?,
                    address: r.try_get(1)?,
                    version: r.try_get(2)?,
                    started_at: r.try_get(3)?,
                    heartbeat_at: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// Counts one admitted call of `tenant` in `minute` (epoch minutes) and returns the
    /// minute's count so far, across every writer.
    pub async fn count_call(&self, tenant: &TenantName, minute: i64) -> Result<i64, StoreError> {
        let calls: i64 = sqlx::query_scalar(
            "INSERT INTO call_counts (tenant, minute, calls) VALUES ($1, $2, 1) \
             ON CONFLICT (tenant, minute) DO UPDATE SET calls = call_counts.calls + 1 \
             RETURNING calls",
        )
        .bind(tenant.as_str())
        .bind(minute)
        .fetch_one(&self.pool)
        .await?;
        Ok(calls)
    }

    /// Removes the call counts of minutes before `minute`.
    pub async fn forget_call_counts(&self, minute: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM call_counts WHERE minute < $1")
            .bind(minute)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// One round trip to the database: whether it answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

fn tenant_from_row(r: &DbRow) -> Result<TenantRow, StoreError> {
    let key: String = r.try_get(0)?;
    let invalid = |reason: String| StoreError::InvalidRow {
        table: "tenant",
        key: key.clone(),
        reason,
    };
    let name = TenantName::parse(&key).map_err(|e| invalid(e.to_string()))?;
    let plan: String = r.try_get(4)?;
    let plan = PlanName::parse(&plan).map_err(invalid)?;
    let policy: String = r.try_get(6)?;
    let overrides = serde_json::from_str(&policy)
        .map_err(|e| invalid(format!("its policy overrides do not parse: {e}")))?;
    let active_version = r
        .try_get::<Option<String>, _>(7)?
        .map(|v| VersionId::parse(&v).map_err(|e| invalid(e.to_string())))
        .transpose()?;
    let uid = match r.try_get::<Option<i64>, _>(9)? {
        None => return Err(invalid("it has no uid".into())),
        Some(uid) => TenantUid::new(uid).map_err(invalid)?,
    };
    let env = match r.try_get::<Option<String>, _>(10)? {
        None => Vec::new(),
        Some(text) => match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(serde_json::Value::Object(m)) => m
                .into_iter()
                .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_owned()))
                .collect(),
            _ => return Err(invalid("its environment does not parse".into())),
        },
    };
    Ok(TenantRow {
        name,
        repo: r.try_get(1)?,
        branch: r.try_get(2)?,
        subdir: r.try_get(3)?,
        plan,
        webhook_secret: r.try_get(5)?,
        overrides,
        active_version,
        created_at: r.try_get(8)?,
        uid,
        env,
    })
}

fn version_from_row(tenant: &TenantName, r: &DbRow) -> Result<VersionRow, StoreError> {
    let id: String = r.try_get(0)?;
    let id = VersionId::parse(&id).map_err(|e| StoreError::InvalidRow {
        table: "version",
        key: format!("{tenant}/{id}"),
        reason: e.to_string(),
    })?;
    Ok(VersionRow {
        id,
        source: r.try_get(1)?,
        created_at: r.try_get(2)?,
        git_commit: r.try_get(3)?,
        functions: r.try_get(4)?,
        activated_at: r.try_get(5)?,
        uploads: r
            .try_get::<Option<String>, _>(6)?
            .and_then(|u| serde_json::from_str(&u).ok())
            .unwrap_or_default(),
        deploy_log: r.try_get(7)?,
        packages: r.try_get(8)?,
    })
}

fn token_from_row(r: &DbRow) -> Result<TokenRow, StoreError> {
    let id: String = r.try_get(0)?;
    let invalid = |reason: String| StoreError::InvalidRow {
        table: "token",
        key: id.clone(),
        reason,
    };
    let kind: String = r.try_get(2)?;
    let kind = TokenKind::parse(&kind).ok_or_else(|| invalid(format!("kind {kind:?}")))?;
    let tenant = r
        .try_get::<Option<String>, _>(1)?
        .map(|t| TenantName::parse(&t).map_err(|e| invalid(e.to_string())))
        .transpose()?;
    if (kind == TokenKind::Tenant) != tenant.is_some() {
        return Err(invalid(
            "a tenant token needs a tenant, an operator's has none".into(),
        ));
    }
    Ok(TokenRow {
        tenant,
        kind,
        hash: r.try_get(3)?,
        prefix: r.try_get(4)?,
        scopes: r.try_get(5)?,
        expires_at: r.try_get(6)?,
        revoked_at: r.try_get(7)?,
        created_at: r.try_get(8)?,
        last_used_at: r.try_get(9)?,
        id,
    })
}


fn call_view_from_row(r: &DbRow) -> Result<CallView, StoreError> {
    Ok(CallView {
        call_id: r.try_get(0)?,
        tenant: r.try_get(1)?,
        function: r.try_get(2)?,
        version: r.try_get(3)?,
        outcome: r.try_get(4)?,
        wall_ms: r.try_get(5)?,
        cpu_ms: r.try_get(6)?,
        peak_memory_bytes: r.try_get(7)?,
        at: r.try_get(8)?,
        error: r.try_get(9)?,
        logs: r.try_get(10)?,
    })
}
