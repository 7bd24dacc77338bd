//! The store's one error type: what a caller may act on (a conflict, a busy database, a row
//! that is not valid) apart from what only an operator can fix.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `path`: the SQLite file, or a PostgreSQL URL without its password.
    #[error("could not open the store at {path}")]
    Open {
        path: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("could not migrate the store")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("{0} already exists")]
    Conflict(String),
    #[error("store query failed")]
    Query(#[source] sqlx::Error),
    /// The database stayed locked by other writers past the busy timeout, or no connection
    /// was free in time: a passing overload, answered `503` with a retry, never a `500`.
    #[error("the store is busy")]
    Busy(#[source] sqlx::Error),
    /// A stored row that cannot be made into its model (a missing or out-of-range uid, a
    /// policy that does not parse…). Never replaced by a default: the row is refused.
    #[error("stored {table} {key:?} is invalid: {reason}")]
    InvalidRow {
        table: &'static str,
        key: String,
        reason: String,
    },
    /// The row is still referred to (a plan tenants are on).
    #[error("{0}")]
    InUse(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        let busy = match &e {
            // No connection free in time, or the database server out of reach for now (a
            // restart): a passing condition a retry gets past.
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => true,
            sqlx::Error::Database(db) => match db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
                // SQLITE_BUSY (5), SQLITE_LOCKED (6) and their extended codes (517
                // BUSY_SNAPSHOT, 261 BUSY_RECOVERY, 262 LOCKED_SHAREDCACHE…): the low byte is
                // the primary code.
                Some(_) => db
                    .code()
                    .and_then(|c| c.parse::<i64>().ok())
                    .is_some_and(|c| matches!(c & 0xff, 5 | 6)),
                // PostgreSQL: serialization failure, deadlock, too many connections, the
                // server starting or stopping.
                None => db.code().is_some_and(|c| {
                    matches!(&*c, "40001" | "40P01" | "53300" | "57P01" | "57P03")
                }),
            },
            _ => false,
        };
        if busy {
            StoreError::Busy(e)
        } else {
            StoreError::Query(e)
        }
    }
}

/// `Conflict(what)` for a unique violation, the usual mapping otherwise.
pub(crate) fn conflict_or(e: sqlx::Error, what: String) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(what),
        _ => StoreError::from(e),
    }
}
