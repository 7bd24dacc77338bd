//! How a call's child is started: the [`Starter`] seam, and the two starters this node has.
//!
//! Starting a Python interpreter in a fresh sandbox is most of a call's latency. The
//! [`PrestartPool`] keeps, for each tenant version called recently, one child set up and
//! started, blocked on reading its request; the next call of that version takes it and only
//! has to deliver the request, and a new one is prepared in the background. Every call still
//! gets a process of its own that served no call before: only the start moves off the
//! request's path. [`Fresh`] starts each call's child when the call comes (`--prewarm off`).
//!
//! A prepared child is bound to everything that went into its setup ([`ChildKey`]: the
//! tenant's uid, the version, the policy as it was), so a changed policy or a new version is
//! never served by a child prepared for the old one. Children nobody took within [`IDLE`] are
//! stopped.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use falra_policies::Policy;

use crate::child::{Child, ChildStage, RunError};
use crate::isolation::CodeMounts;
use crate::Runtime;

/// How long a prepared child waits for a call before it is stopped.
pub const IDLE: Duration = Duration::from_secs(60);

/// What a call's child is made for; only a call with the same key may take a child prepared
/// ahead.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChildKey {
    pub uid: u32,
    pub version: String,
    /// The policy as stored (its canonical JSON): any change makes a new key.
    pub policy: String,
}

/// One call's child to start.
#[derive(Debug, Clone)]
pub struct CallChild {
    pub key: ChildKey,
    pub mounts: CodeMounts,
    pub policy: Policy,
}

/// A boxed future, so that starters can be chosen at run time.
pub type StartFuture<'a> = Pin<Box<dyn Future<Output = Result<Child, RunError>> + Send + 'a>>;

/// A way of starting calls' children. The runtime holds one; everything else about a child
/// (its setup, its run, its usage) is the same whichever starts it.
pub trait Starter: Send + Sync + std::fmt::Debug {
    /// A started child for `request`, waiting for its stdin.
    fn start<'a>(&'a self, runtime: &'a Runtime, request: CallChild) -> StartFuture<'a>;

    /// Starts whatever upkeep the starter needs; it ends when the runtime is dropped.
    fn start_upkeep(&self, _runtime: &Runtime) {}

    /// Children held ready.
    fn ready_count(&self) -> usize {
        0
    }

    /// Whether a child is held for `version` of the tenant with `uid`.
    fn holds_version(&self, _uid: u32, _version: &str) -> bool {
        false
    }

    /// Stops the children held for a removed tenant.
    fn forget_uid(&self, _uid: u32) {}

    /// Stops the children held for the tenant's versions other than `active`.
    fn forget_other_versions(&self, _uid: u32, _active: &str) {}

    /// Stops every child held (at shutdown).
    fn drain(&self) {}
}

/// Starts each call's child when the call comes.
#[derive(Debug, Default)]
pub struct Fresh;

impl Starter for Fresh {
    fn start<'a>(&'a self, runtime: &'a Runtime, request: CallChild) -> StartFuture<'a> {
        Box::pin(async move {
            let mut stage = ChildStage::call(runtime.config.python.clone());
            stage.preload = Some(request.key.clone());
            runtime
                .prepare(request.key.uid, &request.mounts, &request.policy, stage)
                .await
        })
    }
}

/// Keeps one child prepared ahead per recently called tenant version.
#[derive(Debug, Default)]
pub struct PrestartPool(Arc<Pool>);

#[derive(Debug, Default)]
struct Pool {
    ready: Mutex<HashMap<ChildKey, Child>>,
    preparing: Mutex<HashSet<ChildKey>>,
}

impl Pool {
    /// The prepared child for `key`, if one is ready and still alive.
    fn take(&self, key: &ChildKey) -> Option<Child> {
        let child = self
            .ready
            .lock()
            .expect("prestart pool poisoned")
            .remove(key)?;
        child.is_alive().then_some(child)
    }

    /// Prepares a child for `request` in the background, unless one is ready or on its way.
    fn replenish(pool: &Arc<Pool>, runtime: &Runtime, request: CallChild) {
        if pool
            .ready
            .lock()
            .expect("prestart pool poisoned")
            .contains_key(&request.key)
        {
            return;
        }
        if !pool
            .preparing
            .lock()
            .expect("prestart pool poisoned")
            .insert(request.key.clone())
        {
            return;
        }
        let runtime = runtime.clone();
        let pool = Arc::clone(pool);
        crate::task::spawn(async move {
            let made = Fresh.start(&runtime, request.clone()).await;
            pool.preparing
                .lock()
                .expect("prestart pool poisoned")
                .remove(&request.key);
            match made {
                Ok(child) => {
                    let displaced = pool
                        .ready
                        .lock()
                        .expect("prestart pool poisoned")
                        .insert(request.key, child);
                    if let Some(old) = displaced {
                        old.discard();
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %crate::ErrorChain(&e), "could not prepare a child ahead")
                }
            }
        });
    }

    fn discard_where(&self, doomed: impl Fn(&ChildKey) -> bool) {
        self.discard_matching(|k, _| doomed(k));
    }

    /// Stops the children nobody took within [`IDLE`] (or that died waiting).
    fn expire(&self) {
        self.discard_matching(|_, c| c.made.elapsed() > IDLE || !c.is_alive());
    }

    fn discard_matching(&self, doomed: impl Fn(&ChildKey, &Child) -> bool) {
        let gone: Vec<Child> = {
            let mut ready = self.ready.lock().expect("prestart pool poisoned");
            let keys: Vec<ChildKey> = ready
                .iter()
                .filter(|(k, c)| doomed(k, c))
                .map(|(k, _)| k.clone())
                .collect();
            keys.iter().filter_map(|k| ready.remove(k)).collect()
        };
        for child in gone {
            child.discard();
        }
    }
}

impl Starter for PrestartPool {
    fn start<'a>(&'a self, runtime: &'a Runtime, request: CallChild) -> StartFuture<'a> {
        Box::pin(async move {
            let child = match self.0.take(&request.key) {
                Some(child) => child,
                None => Fresh.start(runtime, request.clone()).await?,
            };
            Pool::replenish(&self.0, runtime, request);
            Ok(child)
        })
    }

    fn start_upkeep(&self, _runtime: &Runtime) {
        let weak = Arc::downgrade(&self.0);
        let span = tracing::info_span!("prestart_expiry");
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                loop {
                    tokio::time::sleep(IDLE / 4).await;
                    let Some(pool) = weak.upgrade() else {
                        return;
                    };
                    pool.expire();
                }
            },
            span,
        ));
    }

    fn ready_count(&self) -> usize {
        self.0.ready.lock().expect("prestart pool poisoned").len()
    }

    fn holds_version(&self, uid: u32, version: &str) -> bool {
        self.0
            .ready
            .lock()
            .expect("prestart pool poisoned")
            .keys()
            .any(|k| k.uid == uid && k.version == version)
    }

    fn forget_uid(&self, uid: u32) {
        self.0.discard_where(|k| k.uid == uid);
    }

    fn forget_other_versions(&self, uid: u32, active: &str) {
        self.0
            .discard_where(|k| k.uid == uid && k.version != active);
    }

    fn drain(&self) {
        self.0.discard_where(|_| true);
    }
}
