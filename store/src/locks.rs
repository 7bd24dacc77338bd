//! Per-tenant deploy serialisation, behind the store so that a store shared by several nodes
//! can hold it in the database instead (an advisory lock) without callers changing.
//!
//! The embedded backend is one daemon's, so an in-process table of async mutexes is the whole
//! lock; on PostgreSQL the guard holds the transaction of an advisory lock instead
//! (`postgres.rs`). An entry is dropped when nobody holds or waits for it, so the table stays as small as
//! the number of deploys in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use falra_tenants::TenantName;

type Table = Mutex<HashMap<TenantName, Arc<tokio::sync::Mutex<()>>>>;

#[derive(Debug, Default)]
pub(crate) struct TenantLocks(Arc<Table>);

/// A held deploy lock; released when dropped.
#[derive(Debug)]
pub struct DeployLock {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    tenant: Option<(TenantName, Arc<Table>)>,
    /// Held in the database instead (PostgreSQL).
    _database: Option<crate::postgres::AdvisoryLock>,
}

impl DeployLock {
    pub(crate) fn held_in_database(lock: crate::postgres::AdvisoryLock) -> DeployLock {
        DeployLock {
            guard: None,
            tenant: None,
            _database: Some(lock),
        }
    }
}

impl TenantLocks {
    pub(crate) async fn lock(&self, tenant: &TenantName) -> DeployLock {
        let mutex = {
            let mut table = self.0.lock().expect("lock table poisoned");
            Arc::clone(table.entry(tenant.clone()).or_default())
        };
        DeployLock {
            guard: Some(mutex.lock_owned().await),
            tenant: Some((tenant.clone(), Arc::clone(&self.0))),
            _database: None,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

impl Drop for DeployLock {
    fn drop(&mut self) {
        self.guard = None;
        let Some((tenant, table)) = &self.tenant else {
            return;
        };
        let mut table = table.lock().expect("lock table poisoned");
        // Only the table refers to the mutex now: no holder, no waiter (each waiter holds a
        // clone of the Arc while it waits).
        if table.get(tenant).is_some_and(|m| Arc::strong_count(m) == 1) {
            table.remove(tenant);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_deploy_per_tenant_at_a_time_and_the_table_empties() {
        let locks = TenantLocks::default();
        let caro = TenantName::parse("caro").unwrap();
        let jc = TenantName::parse("jc").unwrap();
        let held = locks.lock(&caro).await;
        // Another tenant is not held up.
        let other = locks.lock(&jc).await;
        drop(other);
        // The same tenant waits until the first is released.
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), locks.lock(&caro));
        assert!(waiting.await.is_err());
        drop(held);
        let again = tokio::time::timeout(std::time::Duration::from_secs(5), locks.lock(&caro))
            .await
            .expect("the lock was released");
        assert_eq!(locks.len(), 1);
        drop(again);
        assert_eq!(locks.len(), 0);
    }
}
