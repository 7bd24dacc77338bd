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
    (
        6,
        "call slots",
        include_str!("../migrations/postgres/0006_call_slots.sql"),
    ),
    (
        7,
        "call logs",
        include_str!("../migrations/postgres/0007_call_logs.sql"),
    ),
    (
        8,
        "secrets deploy log",
        include_str!("../migrations/postgres/0008_secrets_deploy_log.sql"),
    ),
    (
        9,
        "console sessions",
        include_str!("../migrations/postgres/0009_console_sessions.sql"),
    ),
    (
        10,
        "version packages",
        include_str!("../migrations/postgres/0010_version_packages.sql"),
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
            .acquire_timeout(std::time::Duration::from_secs(3))
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

/// A call's admission on the shared store: its minute's count (rate) and whether it took one
/// of the tenant's slots (concurrency).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// Calls of the tenant admitted in this calendar minute, this one included.
    pub minute_calls: i64,
    /// Whether the call holds a slot (false: over the rate, or `max_concurrency` running).
    pub slot: bool,
}

impl PgStore {
    /// Counts the call in its minute and, if that is within `per_minute`, takes one of the
    /// tenant's `max_concurrency` slots for `node` — one statement, one round trip. The
    /// conditional upsert locks the tenant's row, so concurrent admissions on every node see
    /// each other's slots.
    pub async fn admit_call(
        &self,
        tenant: &TenantName,
        minute: i64,
        per_minute: i64,
        max_concurrency: i64,
        node: &str,
    ) -> Result<Admitted, StoreError> {
        let row = sqlx::query(
            "WITH counted AS (\
                 INSERT INTO call_counts (tenant, minute, calls) VALUES ($1, $2, 1) \
                 ON CONFLICT (tenant, minute) DO UPDATE SET calls = call_counts.calls + 1 \
                 RETURNING calls), \
             took AS (\
                 INSERT INTO tenant_slots (tenant, calls) \
                 SELECT $1, 1 WHERE (SELECT calls FROM counted) <= $3 AND $4 >= 1 \
                 ON CONFLICT (tenant) DO UPDATE SET calls = tenant_slots.calls + 1 \
                 WHERE tenant_slots.calls < $4 \
                 RETURNING 1), \
             mine AS (\
                 INSERT INTO call_slots (tenant, node, calls) SELECT $1, $5, 1 FROM took \
                 ON CONFLICT (tenant, node) DO UPDATE SET calls = call_slots.calls + 1 \
                 RETURNING 1) \
             SELECT (SELECT calls FROM counted), EXISTS (SELECT 1 FROM took), \
             (SELECT COUNT(*) FROM mine)",
        )
        .bind(tenant.as_str())
        .bind(minute)
        .bind(per_minute)
        .bind(max_concurrency)
        .bind(node)
        .fetch_one(&self.pool)
        .await?;
        Ok(Admitted {
            minute_calls: row.try_get(0)?,
            slot: row.try_get(1)?,
        })
    }

    /// Gives back one of `node`'s slots of the tenant (none if it has none: reclaimed).
    pub async fn release_call(&self, tenant: &TenantName, node: &str) -> Result<(), StoreError> {
        sqlx::query(
            // Rows are locked in the order admissions lock them (the tenant's, then the
            // node's), so a release and an admission never wait for each other in a cycle.
            "WITH mine AS (SELECT calls FROM call_slots WHERE tenant = $1 AND node = $2), \
             t AS (\
                 UPDATE tenant_slots SET calls = calls - 1 \
                 WHERE tenant = $1 AND calls > 0 AND (SELECT calls FROM mine) > 0 RETURNING 1) \
             UPDATE call_slots SET calls = calls - 1 \
             WHERE tenant = $1 AND node = $2 AND calls > 0 AND EXISTS (SELECT 1 FROM t)",
        )
        .bind(tenant.as_str())
        .bind(node)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Gives back the slots of nodes whose beat is older than `alive_after` (gone), and those
    /// `node` holds for tenants it runs nothing of now (`busy` lists the ones it does): a
    /// release lost to a passing error leaks nothing for longer than a beat.
    pub async fn reclaim_slots(
        &self,
        alive_after: i64,
        node: &str,
        busy: &[String],
    ) -> Result<(), StoreError> {
        sqlx::query(
            // What is deleted is what is subtracted, exactly (RETURNING gives the rows as
            // deleted). This locks a node's row before its tenant's, the other way round from
            // admissions. It only touches rows of nodes gone, and this node's rows of tenants it
            // ran nothing of a moment before. An admission of such a tenant starting in that
            // moment can lose its slot here, leaving the tenant one call over its limit until
            // that call ends, or can meet this statement in a deadlock, which the server breaks
            // by failing one of the two (that call is answered 503; the reclaim runs again at
            // the next beat).
            "WITH gone AS (\
                 DELETE FROM call_slots \
                 WHERE node NOT IN (SELECT id FROM nodes WHERE heartbeat_at >= $1) \
                 OR (node = $2 AND calls > 0 AND NOT (tenant = ANY($3))) \
                 RETURNING tenant, calls), \
             sums AS (SELECT tenant, SUM(calls) AS n FROM gone GROUP BY tenant) \
             UPDATE tenant_slots SET calls = GREATEST(tenant_slots.calls - sums.n, 0) \
             FROM sums WHERE tenant_slots.tenant = sums.tenant",
        )
        .bind(alive_after)
        .bind(node)
        .bind(busy)
        .execute(&self.pool)
        .await?;
        Ok(())
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
