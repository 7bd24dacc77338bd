//! What the call path reads on every call — the presented token's row, the tenant's row and
//! its secrets exposed to code (still sealed) — kept in memory on a shared store, so a call does not pay two database round trips for
//! rows that rarely change.
//!
//! Every write that changes them notifies all nodes (`falra_store::Change`, PostgreSQL
//! `NOTIFY`), and each node's watch drops what changed as the notification arrives, normally
//! within milliseconds. No entry is served older than [`MAX_AGE`]: the backstop for a
//! notification that was never sent (the write's node died between its commit and its notify),
//! and the staleness of a node whose watch is lost. While no watch listens nothing new is
//! cached — reads go to the store — and what is cached is still served within its age, so a
//! node cut off from its store answers the calls it can still authorise for up to
//! [`MAX_AGE`]; a new watch starts from an empty cache, since changes may have been missed in
//! between. On the embedded store, which only this node writes, nothing is cached.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use falra_store::{Change, Store, StoreError, TenantRow, TokenRow};
use falra_tenants::TenantName;

use crate::Core;

/// The oldest an entry is served.
pub const MAX_AGE: Duration = Duration::from_secs(5);
/// Entries per table, at most; past it the table starts over.
const MAX_ENTRIES: usize = 100_000;

type Table<K, V> = Mutex<HashMap<K, (V, Instant)>>;

#[derive(Debug, Default)]
pub struct Cache {
    /// Set while a watch listens: only then is anything new cached.
    listening: AtomicBool,
    /// Bumped by every change: a read that raced a change does not store what it read.
    generation: AtomicU64,
    tokens: Table<String, TokenRow>,
    tenants: Table<TenantName, TenantRow>,
    /// Each tenant's secrets marked `expose: env`, sealed (most tenants: none).
    code_secrets: Table<TenantName, Vec<(String, falra_policies::Sealed)>>,
    /// On the embedded store: whether any tenant has secrets for code (`UNKNOWN`, `NONE`,
    /// `SOME`). Only this node writes that store, and it marks `SOME` before it writes one, so
    /// while it knows of none no call asks the store.
    local_code_secrets: std::sync::atomic::AtomicU8,
}

const UNKNOWN: u8 = 0;
const NONE: u8 = 1;
const SOME: u8 = 2;

impl Cache {
    /// The token whose hash is `hash`, from memory or the store.
    pub async fn token_by_hash(
        &self,
        store: &Store,
        hash: &str,
    ) -> Result<Option<TokenRow>, StoreError> {
        if let Some(row) = self.get(&self.tokens, hash) {
            return Ok(Some(row));
        }
        let generation = self.generation.load(Ordering::Acquire);
        let row = store.token_by_hash(hash).await?;
        if let Some(row) = &row {
            self.put(&self.tokens, hash.to_owned(), row.clone(), generation);
        }
        Ok(row)
    }

    /// The tenant named `name`, from memory or the store.
    pub async fn tenant(
        &self,
        store: &Store,
        name: &TenantName,
    ) -> Result<Option<TenantRow>, StoreError> {
        if let Some(row) = self.get(&self.tenants, name) {
            return Ok(Some(row));
        }
        let generation = self.generation.load(Ordering::Acquire);
        let row = store.tenant(name).await?;
        if let Some(row) = &row {
            self.put(&self.tenants, name.clone(), row.clone(), generation);
        }
        Ok(row)
    }

    /// The tenant's secrets exposed to its code, sealed, from memory or the store.
    pub async fn code_secrets(
        &self,
        store: &Store,
        name: &TenantName,
    ) -> Result<Vec<(String, falra_policies::Sealed)>, StoreError> {
        if let Some(rows) = self.get(&self.code_secrets, name) {
            return Ok(rows);
        }
        if !store.is_shared() {
            let mut known = self.local_code_secrets.load(Ordering::Acquire);
            if known == UNKNOWN {
                let any = store.any_exposed_secrets("env").await?;
                let found = if any { SOME } else { NONE };
                // A secret set meanwhile has marked SOME: that stands.
                known = match self.local_code_secrets.compare_exchange(
                    UNKNOWN,
                    found,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => found,
                    Err(now) => now,
                };
            }
            if known == NONE {
                return Ok(Vec::new());
            }
        }
        let generation = self.generation.load(Ordering::Acquire);
        let rows = store.exposed_secrets(name, "env").await?;
        self.put(&self.code_secrets, name.clone(), rows.clone(), generation);
        Ok(rows)
    }

    /// A secret for code is about to be written (before the write, so no call of the
    /// embedded store misses it).
    pub fn code_secret_set(&self) {
        self.local_code_secrets.store(SOME, Ordering::Release);
    }

    /// Records that the token was just used (its row in the store was touched), so the cached
    /// row does not ask for another touch on every call.
    pub fn touched(&self, hash: &str, now: i64) {
        if let Some((row, _)) = self
            .tokens
            .lock()
            .expect("token cache poisoned")
            .get_mut(hash)
        {
            row.last_used_at = Some(now);
        }
    }

    /// Drops what `change` says changed.
    pub fn apply(&self, change: &Change) {
        if matches!(change, Change::Jobs | Change::JobCancelled(_)) {
            return;
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        match change {
            Change::Tokens => self.tokens.lock().expect("token cache poisoned").clear(),
            Change::Tenant(name) => {
                self.tenants
                    .lock()
                    .expect("tenant cache poisoned")
                    .remove(name);
                self.code_secrets
                    .lock()
                    .expect("secret cache poisoned")
                    .remove(name);
            }
            Change::Lost => self.clear(),
            Change::Jobs | Change::JobCancelled(_) => {}
        }
    }

    fn clear(&self) {
        self.tokens.lock().expect("token cache poisoned").clear();
        self.tenants.lock().expect("tenant cache poisoned").clear();
        self.code_secrets
            .lock()
            .expect("secret cache poisoned")
            .clear();
    }

    fn get<K, Q, V>(&self, table: &Table<K, V>, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
        Q: std::hash::Hash + Eq + ?Sized,
        V: Clone,
    {
        // (Served listening or not: a lost watch only stops new rows being cached, so what a
        // node cut off from its store still has it serves within its age.)
        let table = table.lock().expect("cache poisoned");
        let (row, at) = table.get(key)?;
        (at.elapsed() < MAX_AGE).then(|| row.clone())
    }

    fn put<K: std::hash::Hash + Eq, V>(&self, table: &Table<K, V>, key: K, row: V, read_at: u64) {
        if !self.listening.load(Ordering::Acquire) {
            return;
        }
        let mut table = table.lock().expect("cache poisoned");
        // A change notified while the row was read may be newer than the row.
        if self.generation.load(Ordering::Acquire) != read_at {
            return;
        }
        if table.len() >= MAX_ENTRIES {
            table.clear();
        }
        table.insert(key, (row, Instant::now()));
    }

    /// A lost watch stops serving from memory (what is there is kept for a store that cannot
    /// be reached, within its age); a new one starts from an empty cache, since changes may
    /// have been missed in between.
    fn set_listening(&self, listening: bool) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if listening {
            self.clear();
        }
        self.listening.store(listening, Ordering::Release);
    }
}

/// Starts the watch of a shared store, kept listening for as long as the services live.
pub fn start(state: &Core) {
    if !state.store.is_shared() {
        return;
    }
    let weak = state.downgrade();
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            loop {
                let Some(state) = Core::upgrade(&weak) else {
                    return;
                };
                match state.store.watch().await {
                    Ok(Some(mut watch)) => {
                        state.cache.set_listening(true);
                        drop(state);
                        loop {
                            let next = watch.next().await;
                            let Some(state) = Core::upgrade(&weak) else {
                                return;
                            };
                            match next {
                                Ok(Change::Lost) | Err(_) => {
                                    state.cache.set_listening(false);
                                    tracing::warn!("lost the store's change notifications: reading from the store until they are back");
                                    break;
                                }
                                Ok(change) => {
                                    state.cache.apply(&change);
                                    state.jobs.changed(&change);
                                }
                            }
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        state.cache.set_listening(false);
                        tracing::debug!(error = %falra_runtime::ErrorChain(&e), "could not watch the store for changes");
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        },
        tracing::info_span!("cache_watch"),
    ));
}

#[cfg(test)]
mod tests {
    use falra_store::{PlanName, TenantUid, TokenKind};

    use super::*;

    fn token() -> TokenRow {
        TokenRow {
            id: "tok_1".into(),
            tenant: Some(TenantName::parse("caro").unwrap()),
            kind: TokenKind::Tenant,
            hash: "h".into(),
            prefix: "flr_1234".into(),
            scopes: "call".into(),
            expires_at: None,
            revoked_at: None,
            created_at: 1,
            last_used_at: None,
        }
    }

    fn tenant() -> TenantRow {
        TenantRow {
            name: TenantName::parse("caro").unwrap(),
            repo: None,
            branch: "main".into(),
            subdir: None,
            plan: PlanName::parse("default").unwrap(),
            webhook_secret: None,
            overrides: Default::default(),
            active_version: None,
            created_at: 1,
            uid: TenantUid::new(i64::from(TenantUid::FIRST)).unwrap(),
            env: Vec::new(),
        }
    }

    fn now(cache: &Cache) -> u64 {
        cache.generation.load(Ordering::Acquire)
    }

    #[test]
    fn nothing_is_cached_unless_the_watch_listens_and_a_change_drops_its_rows() {
        let cache = Cache::default();
        let caro = TenantName::parse("caro").unwrap();
        // Not listening: nothing kept, nothing served.
        cache.put(&cache.tokens, "h".into(), token(), now(&cache));
        assert!(cache.get(&cache.tokens, "h").is_none());

        cache.set_listening(true);
        cache.put(&cache.tokens, "h".into(), token(), now(&cache));
        assert_eq!(cache.get(&cache.tokens, "h"), Some(token()));
        cache.touched("h", 42);
        assert_eq!(
            cache.get(&cache.tokens, "h").unwrap().last_used_at,
            Some(42)
        );

        // A row read before a change was notified is not kept: it may predate the change.
        let before = now(&cache);
        cache.apply(&Change::Tenant(caro.clone()));
        cache.put(&cache.tenants, caro.clone(), tenant(), before);
        assert!(cache.get(&cache.tenants, &caro).is_none());

        // Any token change drops every token; a tenant's change drops that tenant.
        cache.apply(&Change::Tokens);
        assert!(cache.get(&cache.tokens, "h").is_none());
        cache.put(&cache.tenants, caro.clone(), tenant(), now(&cache));
        assert!(cache.get(&cache.tenants, &caro).is_some());
        cache.apply(&Change::Tenant(caro.clone()));
        assert!(cache.get(&cache.tenants, &caro).is_none());

        // A lost watch keeps what is cached (served within its age) and caches nothing new;
        // a new watch starts from nothing, since changes may have been missed meanwhile.
        cache.put(&cache.tenants, caro.clone(), tenant(), now(&cache));
        cache.set_listening(false);
        assert!(cache.get(&cache.tenants, &caro).is_some());
        cache.put(&cache.tokens, "h2".into(), token(), now(&cache));
        assert!(cache.get(&cache.tokens, "h2").is_none());
        cache.set_listening(true);
        assert!(cache.get(&cache.tenants, &caro).is_none());
    }

    #[test]
    fn no_entry_is_served_past_its_age() {
        let cache = Cache::default();
        cache.set_listening(true);
        let old = Instant::now().checked_sub(MAX_AGE + Duration::from_millis(1));
        if let Some(old) = old {
            cache
                .tokens
                .lock()
                .unwrap()
                .insert("h".into(), (token(), old));
            assert!(cache.get(&cache.tokens, "h").is_none());
        }
    }
}
