//! The store: tenants, versions and tokens, persisted.
//!
//! One `Store` over sqlx. SQLite (WAL) is the embedded default; the SQL is kept to what
//! PostgreSQL also accepts (`$n` placeholders, BIGINT epoch-millisecond times, no
//! SQLite-only functions) so a shared PostgreSQL store can slot in behind the same methods.
//! Migrations are embedded in the binary and applied in order at open.

use std::path::Path;
use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

/// Embedded migrations, applied in order; the number is the schema version.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (2, include_str!("../migrations/0002_tenant_uid.sql")),
    (3, include_str!("../migrations/0003_uploads_secrets.sql")),
    (
        4,
        include_str!("../migrations/0004_plans_metering_audit.sql"),
    ),
];

/// The first uid (and gid) given to a tenant; each new tenant gets the next free one.
pub const FIRST_TENANT_UID: i64 = 200_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("could not open the store at {path}")]
    Open {
        path: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("could not migrate the store to schema version {version}")]
    Migrate {
        version: i64,
        #[source]
        source: sqlx::Error,
    },
    #[error("{0} already exists")]
    Conflict(String),
    #[error("store query failed")]
    Query(#[source] sqlx::Error),
    /// The database stayed locked by other writers past the busy timeout, or no connection
    /// was free in time: a passing overload, answered `503` with a retry, never a `500`.
    #[error("the store is busy")]
    Busy(#[source] sqlx::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("{0}")]
    InUse(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        let busy = match &e {
            sqlx::Error::PoolTimedOut => true,
            // SQLITE_BUSY (5), SQLITE_LOCKED (6) and their extended codes (517 BUSY_SNAPSHOT,
            // 261 BUSY_RECOVERY, 262 LOCKED_SHAREDCACHE…): the low byte is the primary code.
            sqlx::Error::Database(db) => db
                .code()
                .and_then(|c| c.parse::<i64>().ok())
                .is_some_and(|c| matches!(c & 0xff, 5 | 6)),
            _ => false,
        };
        if busy {
            StoreError::Busy(e)
        } else {
            StoreError::Query(e)
        }
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRow {
    pub name: String,
    pub repo: Option<String>,
    pub branch: String,
    pub subdir: Option<String>,
    pub plan: String,
    pub webhook_secret: Option<String>,
    /// The policy as JSON (`falra_policies::Policy`).
    pub policy: String,
    pub active_version: Option<String>,
    pub created_at: i64,
    /// The tenant's own uid and gid; allocated by [`Store::insert_tenant`].
    pub uid: i64,
}

impl TenantRow {
    /// The uid as the sandbox takes it (uids are allocated far below `u32::MAX`).
    pub fn uid32(&self) -> u32 {
        u32::try_from(self.uid).unwrap_or(u32::MAX)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRow {
    pub id: String,
    pub source: String,
    pub created_at: i64,
    /// The commit the version was built from (none: uploads only).
    pub git_commit: Option<String>,
    /// The version's callable functions as JSON, found when it was made.
    pub functions: Option<String>,
}

/// A version about to become active.
#[derive(Debug, Clone, Copy)]
pub struct NewVersion<'a> {
    pub id: &'a str,
    /// What made it: `git`, `upload`, `rollback`…
    pub source: &'a str,
    pub git_commit: Option<&'a str>,
    pub functions: Option<&'a str>,
    pub now: i64,
}

/// The change to the tenant's uploads a new version was built with.
#[derive(Debug, Clone, Copy)]
pub enum UploadChange<'a> {
    None,
    Put {
        module: &'a str,
        source: &'a str,
        sha256: &'a str,
        now: i64,
    },
    Delete {
        module: &'a str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRow {
    pub module: String,
    pub source: String,
    pub sha256: String,
    pub updated_at: i64,
}

/// One finished call, as metering records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    pub call_id: String,
    pub tenant: String,
    pub token_id: String,
    pub function: String,
    pub version: Option<String>,
    /// `ok`, or the error code of the answer.
    pub outcome: String,
    pub wall_ms: i64,
    pub cpu_ms: i64,
    pub peak_memory_bytes: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub at: i64,
}

/// Calls of one tenant's function over a time range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub tenant: String,
    pub function: String,
    pub calls: i64,
    pub ok: i64,
    pub wall_ms: i64,
    pub cpu_ms: i64,
    pub max_peak_memory_bytes: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
}

/// One audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub id: String,
    pub at: i64,
    /// The token id that acted (an operator's or a tenant's), or `webhook`.
    pub actor: String,
    pub action: String,
    pub tenant: Option<String>,
    /// JSON.
    pub detail: String,
    /// The client's address.
    pub remote: Option<String>,
}

const VERSION_COLUMNS: &str = "id, source, created_at, git_commit, functions";

fn version_row(r: &sqlx::sqlite::SqliteRow) -> VersionRow {
    VersionRow {
        id: r.get(0),
        source: r.get(1),
        created_at: r.get(2),
        git_commit: r.get(3),
        functions: r.get(4),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Tenant,
    Operator,
}

impl TokenKind {
    fn as_str(self) -> &'static str {
        match self {
            TokenKind::Tenant => "tenant",
            TokenKind::Operator => "operator",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub id: String,
    pub tenant: Option<String>,
    pub kind: TokenKind,
    pub hash: String,
    pub prefix: String,
    pub scopes: String,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

const TENANT_COLUMNS: &str =
    "name, repo, branch, subdir, plan, webhook_secret, policy, active_version, created_at, uid";
const TOKEN_COLUMNS: &str =
    "id, tenant, kind, hash, prefix, scopes, expires_at, revoked_at, created_at, last_used_at";

impl Store {
    /// Opens (creating if needed) the embedded store at `path` and migrates it.
    pub async fn open_sqlite(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(open_err)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(open_err)?;
        let store = Store { pool };
        store.migrate().await?;
        Ok(store)
    }

    /// A transaction that takes the write lock at its start (`BEGIN IMMEDIATE`). A deferred
    /// one that reads and then writes cannot wait for a concurrent writer: SQLite fails its
    /// upgrade at once (`SQLITE_BUSY`, or `SQLITE_BUSY_SNAPSHOT` in WAL mode) whatever the busy
    /// timeout. Taken up front, the lock is waited for under the busy timeout instead.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .execute(&self.pool)
        .await
        .map_err(|source| StoreError::Migrate { version: 0, source })?;
        for &(version, sql) in MIGRATIONS {
            let mut tx = self.write_tx().await?;
            let applied: Option<i64> =
                sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
                    .bind(version)
                    .fetch_optional(&mut *tx)
                    .await?;
            if applied.is_some() {
                continue;
            }
            for statement in sql.split(';').filter(|s| !is_blank_sql(s)) {
                sqlx::query(statement)
                    .execute(&mut *tx)
                    .await
                    .map_err(|source| StoreError::Migrate { version, source })?;
            }
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(version)
                .bind(crate::clock::now_ms())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Inserts a tenant with the next free uid, and returns it as stored.
    pub async fn insert_tenant(&self, t: &TenantRow) -> Result<TenantRow, StoreError> {
        let sql = format!(
            "INSERT INTO tenants ({TENANT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
             (SELECT COALESCE(MAX(uid) + 1, $10) FROM tenants))"
        );
        sqlx::query(&sql)
            .bind(&t.name)
            .bind(&t.repo)
            .bind(&t.branch)
            .bind(&t.subdir)
            .bind(&t.plan)
            .bind(&t.webhook_secret)
            .bind(&t.policy)
            .bind(&t.active_version)
            .bind(t.created_at)
            .bind(FIRST_TENANT_UID)
            .execute(&self.pool)
            .await
            .map_err(|e| conflict_or(e, format!("tenant {:?}", t.name)))?;
        self.tenant(&t.name).await?.ok_or_else(|| {
            StoreError::Corrupt(format!("tenant {:?} vanished after insert", t.name))
        })
    }

    /// Replaces a tenant's mutable fields (everything but name and creation time).
    pub async fn update_tenant(&self, t: &TenantRow) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE tenants SET repo = $2, branch = $3, subdir = $4, plan = $5, webhook_secret = $6, \
             policy = $7 WHERE name = $1",
        )
        .bind(&t.name)
        .bind(&t.repo)
        .bind(&t.branch)
        .bind(&t.subdir)
        .bind(&t.plan)
        .bind(&t.webhook_secret)
        .bind(&t.policy)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn tenant(&self, name: &str) -> Result<Option<TenantRow>, StoreError> {
        let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE name = $1");
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| tenant_from_row(&r)).transpose()
    }

    pub async fn tenants(&self) -> Result<Vec<TenantRow>, StoreError> {
        let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY name");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(tenant_from_row).collect()
    }

    pub async fn delete_tenant(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM tokens WHERE tenant = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM versions WHERE tenant = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM tenants WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records `version` (if new) and makes it the tenant's active one, applying the upload
    /// change it was built with in the same transaction: either all of it lands or nothing.
    pub async fn activate_version(
        &self,
        tenant: &str,
        version: &NewVersion<'_>,
        change: UploadChange<'_>,
    ) -> Result<(), StoreError> {
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
            "INSERT INTO versions (tenant, id, source, created_at, git_commit, functions) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant, id) DO NOTHING",
        )
        .bind(tenant)
        .bind(version.id)
        .bind(version.source)
        .bind(version.now)
        .bind(version.git_commit)
        .bind(version.functions)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE tenants SET active_version = $2 WHERE name = $1")
            .bind(tenant)
            .bind(version.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn version(
        &self,
        tenant: &str,
        version: &str,
    ) -> Result<Option<VersionRow>, StoreError> {
        let sql = format!("SELECT {VERSION_COLUMNS} FROM versions WHERE tenant = $1 AND id = $2");
        let row = sqlx::query(&sql)
            .bind(tenant)
            .bind(version)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(version_row))
    }

    /// The tenant's versions, newest first.
    pub async fn versions_of(&self, tenant: &str) -> Result<Vec<VersionRow>, StoreError> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM versions WHERE tenant = $1 ORDER BY created_at DESC, id"
        );
        let rows = sqlx::query(&sql).bind(tenant).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(version_row).collect())
    }

    /// Inserts the plan unless one of that name exists.
    pub async fn insert_plan_if_absent(
        &self,
        name: &str,
        policy_json: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO plans (name, policy, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(policy_json)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn put_plan(
        &self,
        name: &str,
        policy_json: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO plans (name, policy, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET policy = excluded.policy, updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(policy_json)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every plan: name and policy JSON.
    pub async fn plans(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT name, policy FROM plans ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Removes a plan no tenant is on; `Conflict` if one is, `false` if there is none.
    pub async fn delete_plan(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tenants WHERE plan = $1")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
        if users > 0 {
            return Err(StoreError::InUse(format!(
                "plan {name:?} is used by {users} tenant(s)"
            )));
        }
        let done = sqlx::query("DELETE FROM plans WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records finished calls, all in one transaction.
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
            .bind(&c.tenant)
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
        }
        tx.commit().await?;
        Ok(())
    }

    /// Calls per tenant and function in `[from, to)`, optionally of one tenant.
    pub async fn usage(
        &self,
        tenant: Option<&str>,
        from: i64,
        to: i64,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT tenant, fn, COUNT(*), \
             SUM(CASE WHEN outcome = 'ok' THEN 1 ELSE 0 END), \
             SUM(wall_ms), SUM(cpu_ms), MAX(peak_memory_bytes), SUM(bytes_in), SUM(bytes_out) \
             FROM calls WHERE at >= $1 AND at < $2 AND ($3 IS NULL OR tenant = $3) \
             GROUP BY tenant, fn ORDER BY tenant, fn",
        )
        .bind(from)
        .bind(to)
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| UsageRow {
                tenant: r.get(0),
                function: r.get(1),
                calls: r.get(2),
                ok: r.get(3),
                wall_ms: r.get(4),
                cpu_ms: r.get(5),
                max_peak_memory_bytes: r.get(6),
                bytes_in: r.get(7),
                bytes_out: r.get(8),
            })
            .collect())
    }

    /// The CPU milliseconds a tenant's calls used since `from`.
    pub async fn cpu_ms_since(&self, tenant: &str, from: i64) -> Result<i64, StoreError> {
        let used: Option<i64> =
            sqlx::query_scalar("SELECT SUM(cpu_ms) FROM calls WHERE tenant = $1 AND at >= $2")
                .bind(tenant)
                .bind(from)
                .fetch_one(&self.pool)
                .await?;
        Ok(used.unwrap_or(0))
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

    /// Audit events, newest first, optionally of one tenant and since a time.
    pub async fn audit(
        &self,
        tenant: Option<&str>,
        since: i64,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, tenant, detail, remote FROM audit \
             WHERE at >= $1 AND ($2 IS NULL OR tenant = $2) ORDER BY at DESC, id DESC LIMIT $3",
        )
        .bind(since)
        .bind(tenant)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| AuditRow {
                id: r.get(0),
                at: r.get(1),
                actor: r.get(2),
                action: r.get(3),
                tenant: r.get(4),
                detail: r.get(5),
                remote: r.get(6),
            })
            .collect())
    }

    /// Stores (or replaces) a sealed secret.
    pub async fn put_secret(
        &self,
        tenant: &str,
        key: &str,
        sealed: &falra_policies::Sealed,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO secrets (tenant, key, nonce, sealed, updated_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (tenant, key) DO UPDATE SET nonce = excluded.nonce, \
             sealed = excluded.sealed, updated_at = excluded.updated_at",
        )
        .bind(tenant)
        .bind(key)
        .bind(&sealed.nonce)
        .bind(&sealed.sealed)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn secret(
        &self,
        tenant: &str,
        key: &str,
    ) -> Result<Option<falra_policies::Sealed>, StoreError> {
        let row = sqlx::query("SELECT nonce, sealed FROM secrets WHERE tenant = $1 AND key = $2")
            .bind(tenant)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| falra_policies::Sealed {
            nonce: r.get(0),
            sealed: r.get(1),
        }))
    }

    /// The names of the tenant's secrets and when each was last set (never their values).
    pub async fn secret_names(&self, tenant: &str) -> Result<Vec<(String, i64)>, StoreError> {
        let rows =
            sqlx::query("SELECT key, updated_at FROM secrets WHERE tenant = $1 ORDER BY key")
                .bind(tenant)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    pub async fn delete_secret(&self, tenant: &str, key: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM secrets WHERE tenant = $1 AND key = $2")
            .bind(tenant)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The tenant's uploads, by module name.
    pub async fn uploads_of(&self, tenant: &str) -> Result<Vec<UploadRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT module, source, sha256, updated_at FROM uploads WHERE tenant = $1 ORDER BY module",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| UploadRow {
                module: r.get(0),
                source: r.get(1),
                sha256: r.get(2),
                updated_at: r.get(3),
            })
            .collect())
    }

    pub async fn delete_version(&self, tenant: &str, version: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM versions WHERE tenant = $1 AND id = $2")
            .bind(tenant)
            .bind(version)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Makes an existing version the tenant's active one; false if there is no such version.
    pub async fn set_active_version(
        &self,
        tenant: &str,
        version: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE tenants SET active_version = $2 WHERE name = $1 \
             AND EXISTS (SELECT 1 FROM versions WHERE tenant = $1 AND id = $2)",
        )
        .bind(tenant)
        .bind(version)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn set_policy(&self, tenant: &str, policy_json: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE tenants SET policy = $2 WHERE name = $1")
            .bind(tenant)
            .bind(policy_json)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn insert_token(&self, t: &TokenRow) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        );
        sqlx::query(&sql)
            .bind(&t.id)
            .bind(&t.tenant)
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

    pub async fn tokens_of(&self, tenant: &str) -> Result<Vec<TokenRow>, StoreError> {
        let sql =
            format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE tenant = $1 ORDER BY created_at, id");
        let rows = sqlx::query(&sql).bind(tenant).fetch_all(&self.pool).await?;
        rows.iter().map(token_from_row).collect()
    }

    /// Marks a token revoked; false if there is no such token.
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
}

fn is_blank_sql(s: &str) -> bool {
    s.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with("--"))
}

fn conflict_or(e: sqlx::Error, what: String) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(what),
        _ => StoreError::Query(e),
    }
}

fn tenant_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<TenantRow, StoreError> {
    Ok(TenantRow {
        name: r.try_get(0)?,
        repo: r.try_get(1)?,
        branch: r.try_get(2)?,
        subdir: r.try_get(3)?,
        plan: r.try_get(4)?,
        webhook_secret: r.try_get(5)?,
        policy: r.try_get(6)?,
        active_version: r.try_get(7)?,
        created_at: r.try_get(8)?,
        uid: r.try_get::<Option<i64>, _>(9)?.unwrap_or(0),
    })
}

fn token_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<TokenRow, StoreError> {
    let kind: String = r.try_get(2)?;
    let kind = match kind.as_str() {
        "tenant" => TokenKind::Tenant,
        "operator" => TokenKind::Operator,
        other => return Err(StoreError::Corrupt(format!("token kind {other:?}"))),
    };
    Ok(TokenRow {
        id: r.try_get(0)?,
        tenant: r.try_get(1)?,
        kind,
        hash: r.try_get(3)?,
        prefix: r.try_get(4)?,
        scopes: r.try_get(5)?,
        expires_at: r.try_get(6)?,
        revoked_at: r.try_get(7)?,
        created_at: r.try_get(8)?,
        last_used_at: r.try_get(9)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantRow {
        TenantRow {
            name: name.into(),
            repo: Some("file:///r".into()),
            branch: "main".into(),
            subdir: None,
            plan: "default".into(),
            webhook_secret: None,
            policy: "{}".into(),
            active_version: None,
            created_at: 1,
            uid: 0,
        }
    }

    #[tokio::test]
    async fn tenants_versions_and_tokens_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("falra.db");
        let store = Store::open_sqlite(&path).await.unwrap();
        let caro = store.insert_tenant(&tenant("caro")).await.unwrap();
        let jc = store.insert_tenant(&tenant("jc")).await.unwrap();
        assert_eq!((caro.uid, jc.uid), (FIRST_TENANT_UID, FIRST_TENANT_UID + 1));
        assert!(matches!(
            store.insert_tenant(&tenant("caro")).await,
            Err(StoreError::Conflict(_))
        ));
        let version = |id, functions| NewVersion {
            id,
            source: "git",
            git_commit: Some("abcdef1234567890"),
            functions,
            now: 2,
        };
        store
            .activate_version(
                "caro",
                &version("abcdef123456", Some("{}")),
                UploadChange::None,
            )
            .await
            .unwrap();
        let t = store.tenant("caro").await.unwrap().unwrap();
        assert_eq!(t.active_version.as_deref(), Some("abcdef123456"));
        let v = store
            .version("caro", "abcdef123456")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(v.git_commit.as_deref(), Some("abcdef1234567890"));
        assert_eq!(v.functions.as_deref(), Some("{}"));

        // An upload lands with the version made from it, and goes with the next change.
        let put = UploadChange::Put {
            module: "helpers",
            source: "def f(): pass\n",
            sha256: "00",
            now: 3,
        };
        store
            .activate_version("caro", &version("0123456789ab", None), put)
            .await
            .unwrap();
        let uploads = store.uploads_of("caro").await.unwrap();
        assert_eq!(uploads.len(), 1);
        assert_eq!(uploads[0].module, "helpers");
        let delete = UploadChange::Delete { module: "helpers" };
        store
            .activate_version("caro", &version("abcdef123456", None), delete)
            .await
            .unwrap();
        assert!(store.uploads_of("caro").await.unwrap().is_empty());

        let tok = TokenRow {
            id: "tok_1".into(),
            tenant: Some("caro".into()),
            kind: TokenKind::Tenant,
            hash: "h".into(),
            prefix: "flr_1234".into(),
            scopes: "call".into(),
            expires_at: None,
            revoked_at: None,
            created_at: 3,
            last_used_at: None,
        };
        store.insert_token(&tok).await.unwrap();
        assert_eq!(store.token_by_hash("h").await.unwrap().unwrap(), tok);
        assert!(store.revoke_token("tok_1", 9).await.unwrap());
        assert_eq!(
            store.token_by_hash("h").await.unwrap().unwrap().revoked_at,
            Some(9)
        );

        // Reopening applies no migration twice and keeps the data.
        drop(store);
        let store = Store::open_sqlite(&path).await.unwrap();
        assert!(store.delete_tenant("caro").await.unwrap());
        assert!(store.token_by_hash("h").await.unwrap().is_none());
        assert_eq!(store.tenants().await.unwrap(), vec![jc]);
    }
}
