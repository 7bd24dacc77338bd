//! The server backend: PostgreSQL, shared by every node of a cluster.
//!
//! Its queries are the ones every SQL backend shares (`queries.rs`, included below); this
//! module holds what is PostgreSQL's own: the connection (a URL, its password never shown),
//! the migrations (sqlx's migrator, which holds an advisory lock while it runs, so nodes
//! starting together migrate once), and the per-tenant deploy lock as a transaction-scoped
//! advisory lock, so two nodes never deploy one tenant at once.

use std::str::FromStr;

use falra_policies::{Policy, PolicyPatch, Sealed};
use falra_tenants::{TenantName, VersionId};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};

use crate::error::{conflict_or, StoreError};
use crate::models::*;

/// The backend's migrations, embedded; the number is the schema version.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "nodes",
        include_str!("../migrations/postgres/0002_nodes.sql"),
    ),
    (
        3,
        "call counts",
        include_str!("../migrations/postgres/0003_call_counts.sql"),
    ),
    (
        4,
        "jobs",
        include_str!("../migrations/postgres/0004_jobs.sql"),
    ),
    (
        5,
        "schedules callbacks",
        include_str!("../migrations/postgres/0005_schedules_callbacks.sql"),
    ),
];

/// Connections each node keeps at most: calls, the metering writer, deploys and their locks
/// (a deploy lock holds one for the deploy's length).
const MAX_CONNECTIONS: u32 = 16;

/// The advisory-lock namespace of deploy locks (the first key of the two-key form).
const DEPLOY_LOCK_CLASS: i32 = 0x6661_6c72; // "falr"

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

/// A tenant's deploy lock held in the database: the transaction it was taken in. Dropping it
/// rolls the transaction back, which releases the lock, also when the node dies (its
/// connection goes with it).
#[derive(Debug)]
pub struct AdvisoryLock {
    _tx: sqlx::Transaction<'static, sqlx::Postgres>,
}

/// `url` as it may be shown: without its password.
pub fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or_default();
                format!("{scheme}://{user}@{host}")
            }
            None => url.to_owned(),
        },
        None => "(an unparsable database URL)".to_owned(),
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`) and
    /// migrates it.
    pub async fn open(url: &str) -> Result<PgStore, StoreError> {
        let open_err = |source| StoreError::Open {
            path: redacted(url),
            source,
        };
        // Every session: a transaction left open by a node that lost its link (mid-statement,
        // between two round trips) is ended by the server, so its row locks do not hold up the
        // other nodes; and the server notices a client that is gone (TCP keepalives).
        let options = PgConnectOptions::from_str(url).map_err(open_err)?.options([
            ("idle_in_transaction_session_timeout", "15s"),
            ("tcp_keepalives_idle", "5"),
            ("tcp_keepalives_interval", "2"),
            ("tcp_keepalives_count", "3"),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(open_err)?;
        crate::migrator(MIGRATIONS)
            .run(&pool)
            .await
            .map_err(StoreError::Migrate)?;
        Ok(PgStore { pool })
    }

    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.pool.begin().await
    }

    /// Waits for, then holds, the tenant's deploy lock, cluster-wide.
    pub async fn deploy_lock(&self, tenant: &TenantName) -> Result<AdvisoryLock, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The transaction stays open, idle, for the deploy's length: not ended for that (a node
        // that dies with it is noticed by the keepalives, and its lock released).
        sqlx::query("SET LOCAL idle_in_transaction_session_timeout = 0")
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(DEPLOY_LOCK_CLASS)
            .bind(tenant.as_str())
            .execute(&mut *tx)
            .await?;
        Ok(AdvisoryLock { _tx: tx })
    }
}

/// The channel every node listens on for changes to what it caches.
const CHANGES: &str = "falra_changes";

impl PgStore {
    /// Tells every node listening that `payload` changed (after the write committed).
    pub(crate) async fn notify(&self, payload: &str) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANGES)
            .bind(payload)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A connection listening for changes, listening when this returns.
    pub(crate) async fn watch(&self) -> Result<ChangeWatch, StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANGES).await?;
        Ok(ChangeWatch { listener })
    }
}

/// Changes other nodes (and this one) wrote, as they are notified.
#[derive(Debug)]
pub struct ChangeWatch {
    listener: sqlx::postgres::PgListener,
}

impl ChangeWatch {
    /// The next change. `Change::Lost` when the connection was lost (whatever was notified
    /// meanwhile is unknown); the watch is then over.
    pub async fn next(&mut self) -> Result<crate::Change, StoreError> {
        match self.listener.try_recv().await? {
            None => Ok(crate::Change::Lost),
            Some(n) => Ok(crate::Change::parse(n.payload())),
        }
    }
}

type DbRow = PgRow;
type Backend = PgStore;
include!("queries.rs");
/// How a claim takes its rows (see `job_queries.rs`).
const SKIP_LOCKED: &str = "FOR UPDATE SKIP LOCKED";
include!("job_queries.rs");

#[cfg(test)]
mod tests {
    #[test]
    fn urls_are_shown_without_their_password() {
        assert_eq!(
            super::redacted("postgres://falra:s3cret@db.example:5432/falra"),
            "postgres://falra@db.example:5432/falra"
        );
        assert_eq!(
            super::redacted("postgres://db.example/falra"),
            "postgres://db.example/falra"
        );
        assert!(!super::redacted("nonsense:s3cret@x").contains("s3cret"));
    }
}
