//! Admission: whether a call may start now, decided without waiting.
//!
//! Three limits, checked in this order, all in memory and O(1): the tenant's
//! `calls_per_minute` (a token bucket holding up to a minute's worth, refilled continuously),
//! the tenant's `max_concurrency`, and the node-wide cap on running children. A refused call
//! takes nothing: no rate token is spent on a call that a later check turns away. Nothing
//! queues, so a tenant at its limits is answered at once and never delays another tenant's
//! admission; every tenant's state sits behind one short lock held for a few comparisons.
//!
//! Failed authentications use the same bucket, keyed by client address.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A token bucket: `capacity` tokens, refilled at `capacity` per minute.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn full(per_minute: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            capacity: f64::from(per_minute.max(1)),
            tokens: f64::from(per_minute.max(1)),
            at: now,
        }
    }

    /// Refills for the time since the last look, following a changed rate: a raised limit
    /// grants its extra allowance at once, a lowered one caps what is left.
    fn refill(&mut self, per_minute: u32, now: Instant) {
        let capacity = f64::from(per_minute.max(1));
        if capacity > self.capacity {
            self.tokens += capacity - self.capacity;
        }
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * capacity / 60.0).min(capacity);
        self.capacity = capacity;
        self.at = now;
    }

    /// `Ok` if a token is there (not taken), else how long until one is.
    fn check(&mut self, per_minute: u32, now: Instant) -> Result<(), Duration> {
        self.refill(per_minute, now);
        if self.tokens >= 1.0 {
            Ok(())
        } else {
            let missing = 1.0 - self.tokens;
            Err(Duration::from_secs_f64(missing * 60.0 / self.capacity))
        }
    }

    fn take(&mut self) {
        self.tokens -= 1.0;
    }

    /// Takes a token if there is one.
    pub fn try_take(&mut self, per_minute: u32, now: Instant) -> Result<(), Duration> {
        self.check(per_minute, now)?;
        self.take();
        Ok(())
    }
}

/// Why a call may not start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over `calls_per_minute`; a token is back after `retry_after`.
    RateLimited { retry_after: Duration },
    /// `max_concurrency` calls of the tenant are running.
    ConcurrencyLimited { limit: u32 },
    /// The node runs as many children as it may.
    Overloaded { limit: usize },
}

/// The limits one call is admitted under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub calls_per_minute: u32,
    pub max_concurrency: u32,
}

#[derive(Debug)]
struct TenantState {
    bucket: TokenBucket,
    running: u32,
}

#[derive(Debug)]
struct State<K> {
    tenants: HashMap<K, TenantState>,
    running: usize,
}

/// Admission for every tenant of a node.
#[derive(Debug)]
pub struct Admission<K> {
    state: Mutex<State<K>>,
    node_limit: usize,
}

/// A running call's place; given back when dropped.
#[derive(Debug)]
pub struct Permit<K: Eq + Hash> {
    admission: Arc<Admission<K>>,
    tenant: K,
}

impl<K: Eq + Hash + Clone> Admission<K> {
    pub fn new(node_limit: usize) -> Arc<Admission<K>> {
        Arc::new(Admission {
            state: Mutex::new(State {
                tenants: HashMap::new(),
                running: 0,
            }),
            node_limit: node_limit.max(1),
        })
    }

    /// Admits one call of `tenant` now, or says why not.
    pub fn admit(
        self: &Arc<Self>,
        tenant: &K,
        limits: Limits,
        now: Instant,
    ) -> Result<Permit<K>, Refusal> {
        let mut state = self.state.lock().expect("admission state poisoned");
        let running = state.running;
        let entry = state
            .tenants
            .entry(tenant.clone())
            .or_insert_with(|| TenantState {
                bucket: TokenBucket::full(limits.calls_per_minute, now),
                running: 0,
            });
        entry
            .bucket
            .check(limits.calls_per_minute, now)
            .map_err(|retry_after| Refusal::RateLimited { retry_after })?;
        if entry.running >= limits.max_concurrency {
            return Err(Refusal::ConcurrencyLimited {
                limit: limits.max_concurrency,
            });
        }
        if running >= self.node_limit {
            return Err(Refusal::Overloaded {
                limit: self.node_limit,
            });
        }
        entry.bucket.take();
        entry.running += 1;
        state.running += 1;
        Ok(Permit {
            admission: Arc::clone(self),
            tenant: tenant.clone(),
        })
    }

    /// Calls running on the node now.
    pub fn running(&self) -> usize {
        self.state.lock().expect("admission state poisoned").running
    }

    /// Forgets a removed tenant (its running calls still give their places back).
    pub fn forget(&self, tenant: &K) {
        let mut state = self.state.lock().expect("admission state poisoned");
        if state.tenants.get(tenant).is_some_and(|t| t.running == 0) {
            state.tenants.remove(tenant);
        }
    }
}

impl<K: Eq + Hash> Drop for Permit<K> {
    fn drop(&mut self) {
        let mut state = self
            .admission
            .state
            .lock()
            .expect("admission state poisoned");
        state.running = state.running.saturating_sub(1);
        if let Some(t) = state.tenants.get_mut(&self.tenant) {
            t.running = t.running.saturating_sub(1);
        }
    }
}

/// Failed authentications per client address: past `per_minute`, the address is refused
/// until its bucket refills. Bounded: the table is cleared when it grows past `max_entries`.
#[derive(Debug)]
pub struct FailureLimiter<A> {
    per_minute: u32,
    max_entries: usize,
    buckets: Mutex<HashMap<A, TokenBucket>>,
}

impl<A: Eq + Hash + Clone> FailureLimiter<A> {
    pub fn new(per_minute: u32) -> FailureLimiter<A> {
        FailureLimiter {
            per_minute: per_minute.max(1),
            max_entries: 100_000,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after)` while `addr` has no failures left to spend.
    pub fn check(&self, addr: &A, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().expect("failure table poisoned");
        match buckets.get_mut(addr) {
            Some(b) => b.check(self.per_minute, now),
            None => Ok(()),
        }
    }

    /// Counts one failed authentication from `addr`.
    pub fn record(&self, addr: &A, now: Instant) {
        let mut buckets = self.buckets.lock().expect("failure table poisoned");
        if buckets.len() >= self.max_entries && !buckets.contains_key(addr) {
            buckets.clear();
        }
        let bucket = buckets
            .entry(addr.clone())
            .or_insert_with(|| TokenBucket::full(self.per_minute, now));
        let _ = bucket.try_take(self.per_minute, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        calls_per_minute: 3,
        max_concurrency: 2,
    };

    #[test]
    fn the_rate_is_a_bucket_of_a_minutes_worth() {
        let a = Admission::new(100);
        let t0 = Instant::now();
        for _ in 0..3 {
            drop(a.admit(&"caro", LIMITS, t0).unwrap());
        }
        let Err(Refusal::RateLimited { retry_after }) = a.admit(&"caro", LIMITS, t0) else {
            panic!("the fourth call in the same instant must be refused");
        };
        assert_eq!(retry_after.as_secs(), 20);
        // Another tenant is not affected.
        assert!(a.admit(&"jc", LIMITS, t0).is_ok());
        // 20 s later one token is back.
        let later = t0 + Duration::from_secs(20);
        drop(a.admit(&"caro", LIMITS, later).unwrap());
        assert!(a.admit(&"caro", LIMITS, later).is_err());
        // A raised limit grants its extra allowance at once.
        let raised = Limits {
            calls_per_minute: 5,
            ..LIMITS
        };
        drop(a.admit(&"caro", raised, later).unwrap());
        drop(a.admit(&"caro", raised, later).unwrap());
        assert!(a.admit(&"caro", raised, later).is_err());
    }

    #[test]
    fn concurrency_is_per_tenant_and_refusals_spend_nothing() {
        let a = Admission::new(100);
        let t0 = Instant::now();
        let limits = Limits {
            calls_per_minute: 600,
            max_concurrency: 2,
        };
        let p1 = a.admit(&"caro", limits, t0).unwrap();
        let _p2 = a.admit(&"caro", limits, t0).unwrap();
        assert_eq!(
            a.admit(&"caro", limits, t0).unwrap_err(),
            Refusal::ConcurrencyLimited { limit: 2 }
        );
        assert_eq!(a.running(), 2);
        drop(p1);
        assert!(a.admit(&"caro", limits, t0).is_ok());
        // Two tokens, one call at a time: a refusal for concurrency spends no token, so after
        // the first call ends the second token is still there.
        let tight = Limits {
            calls_per_minute: 2,
            max_concurrency: 1,
        };
        let hold = a.admit(&"jc", tight, t0).unwrap();
        for _ in 0..5 {
            assert!(matches!(
                a.admit(&"jc", tight, t0),
                Err(Refusal::ConcurrencyLimited { .. })
            ));
        }
        drop(hold);
        drop(
            a.admit(&"jc", tight, t0)
                .expect("the second token was not spent"),
        );
        assert!(matches!(
            a.admit(&"jc", tight, t0),
            Err(Refusal::RateLimited { .. })
        ));
    }

    #[test]
    fn the_node_cap_counts_every_tenant() {
        let a = Admission::new(2);
        let t0 = Instant::now();
        let _p1 = a.admit(&"a", LIMITS, t0).unwrap();
        let _p2 = a.admit(&"b", LIMITS, t0).unwrap();
        assert_eq!(
            a.admit(&"c", LIMITS, t0).unwrap_err(),
            Refusal::Overloaded { limit: 2 }
        );
    }

    #[test]
    fn failed_authentications_lock_out_an_address_for_a_while() {
        let f = FailureLimiter::new(2);
        let t0 = Instant::now();
        assert!(f.check(&"1.2.3.4", t0).is_ok());
        f.record(&"1.2.3.4", t0);
        f.record(&"1.2.3.4", t0);
        assert!(f.check(&"1.2.3.4", t0).is_err());
        assert!(f.check(&"5.6.7.8", t0).is_ok());
        assert!(f.check(&"1.2.3.4", t0 + Duration::from_secs(30)).is_ok());
    }
}
