//! The embedded backend: SQLite in WAL mode, one file in the data directory.
//!
//! Its queries are the ones every SQL backend shares (`queries.rs`, included below); this
//! module holds what is SQLite's own: the connection, the write transaction, the migrations
//! and the adoption of stores made before sqlx's migrator.

use std::path::Path;
use std::str::FromStr;

use falra_policies::{Policy, PolicyPatch, Sealed};
use falra_tenants::{TenantName, VersionId};
use sqlx::migrate::{Migrate, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};

use crate::error::{conflict_or, StoreError};
use crate::models::*;

/// The backend's migrations, embedded; the number is the schema version. sqlx's migrator
/// applies each once, in a transaction, and refuses a store whose applied migrations were
/// changed since (checksums).
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "tenant uid",
        include_str!("../migrations/sqlite/0002_tenant_uid.sql"),
    ),
    (
        3,
        "uploads secrets",
        include_str!("../migrations/sqlite/0003_uploads_secrets.sql"),
    ),
    (
        4,
        "plans metering audit",
        include_str!("../migrations/sqlite/0004_plans_metering_audit.sql"),
    ),
    (
        5,
        "nodes",
        include_str!("../migrations/sqlite/0005_nodes.sql"),
    ),
    (
        6,
        "call counts",
        include_str!("../migrations/sqlite/0006_call_counts.sql"),
    ),
    (
        7,
        "jobs",
        include_str!("../migrations/sqlite/0007_jobs.sql"),
    ),
    (
        8,
        "schedules callbacks",
        include_str!("../migrations/sqlite/0008_schedules_callbacks.sql"),
    ),
    (
        9,
        "call logs",
        include_str!("../migrations/sqlite/0009_call_logs.sql"),
    ),
    (
        10,
        "secrets deploy log",
        include_str!("../migrations/sqlite/0010_secrets_deploy_log.sql"),
    ),
    (
        11,
        "console sessions",
        include_str!("../migrations/sqlite/0011_console_sessions.sql"),
    ),
    (
        12,
        "version packages",
        include_str!("../migrations/sqlite/0012_version_packages.sql"),
    ),
];

fn migrator() -> Migrator {
    crate::migrator(MIGRATIONS)
}

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` and migrates it.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
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
        let store = SqliteStore { pool };
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
        let migrator = migrator();
        self.adopt_legacy_migrations(&migrator).await?;
        migrator.run(&self.pool).await.map_err(StoreError::Migrate)
    }

    /// Stores made before sqlx's migrator kept their applied versions in `schema_migrations`
    /// (same SQL, applied statement by statement). Their versions are recorded in sqlx's
    /// table, with the checksums of the same migrations, once; the old table then goes.
    async fn adopt_legacy_migrations(&self, migrator: &Migrator) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let legacy: Option<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'",
        )
        .fetch_optional(&mut *tx)
        .await?;
        if legacy.is_none() {
            return Ok(());
        }
        tx.ensure_migrations_table()
            .await
            .map_err(StoreError::Migrate)?;
        let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations")
            .fetch_all(&mut *tx)
            .await?;
        for m in migrator.iter().filter(|m| applied.contains(&m.version)) {
            sqlx::query(
                "INSERT INTO _sqlx_migrations (version, description, success, checksum, \
                 execution_time) VALUES ($1, $2, TRUE, $3, 0) ON CONFLICT (version) DO NOTHING",
            )
            .bind(m.version)
            .bind(&*m.description)
            .bind(&*m.checksum)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DROP TABLE schema_migrations")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

type DbRow = SqliteRow;
type Backend = SqliteStore;
include!("queries.rs");
/// How a claim takes its rows (see `job_queries.rs`).
const SKIP_LOCKED: &str = "";
include!("job_queries.rs");

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> TenantName {
        TenantName::parse(s).unwrap()
    }

    #[tokio::test]
    async fn a_store_migrated_by_the_earlier_migrator_is_adopted_with_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("falra.db");
        {
            // What the earlier migrator left: the same SQL (it knew migrations 1 to 4), its own
            // version table.
            let pool = SqlitePool::connect(&format!("sqlite://{}?mode=rwc", path.display()))
                .await
                .unwrap();
            for (_, _, sql) in &MIGRATIONS[..4] {
                sqlx::raw_sql(sql).execute(&pool).await.unwrap();
            }
            sqlx::raw_sql(
                "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL);
                 INSERT INTO schema_migrations VALUES (1, 0), (2, 0), (3, 0), (4, 0);
                 INSERT INTO tenants (name, branch, plan, policy, created_at, uid)
                 VALUES ('caro', 'main', 'default', '{}', 1, 200000);",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        let store = SqliteStore::open(&path).await.unwrap();
        let caro = store.tenant(&name("caro")).await.unwrap().unwrap();
        assert_eq!(caro.uid.get(), 200_000);
        let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations")
            .fetch_all(&store.pool)
            .await
            .unwrap();
        // Adopted, then migrated on from where it was: every migration this build knows, once.
        let known: Vec<i64> = MIGRATIONS.iter().map(|(version, _, _)| *version).collect();
        assert_eq!(applied, known);
        assert!(known.len() > 4 && known.starts_with(&[1, 2, 3, 4]));
        // And it opens again as any other store does.
        drop(store);
        SqliteStore::open(&path).await.unwrap();
    }
}
