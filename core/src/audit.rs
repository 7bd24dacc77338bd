//! The audit log: every operator action and every deploy, with who, what, when and from where.
//!
//! Services and handlers call [`audit`] after an action succeeded; the row names the acting
//! token (an operator's, a tenant's deploy token, or `webhook`), the action (`tenant.create`,
//! `token.issue`, `deploy.upload`, …), the tenant, a JSON detail that never holds a secret,
//! and the address the action came from, when it came over the network ([`with_origin`]).

use std::future::Future;
use std::net::IpAddr;

use falra_store::AuditRow;
use serde_json::Value;

use crate::clock::now_ms;
use crate::Core;

tokio::task_local! {
    /// The client address of the request being handled, if the work came from one.
    static ORIGIN: Option<IpAddr>;
}

/// Runs `work` with `origin` as the address its actions are audited as coming from.
pub async fn with_origin<F: Future>(origin: Option<IpAddr>, work: F) -> F::Output {
    ORIGIN.scope(origin, work).await
}

/// The address of the client whose request is being handled, if there is one.
pub fn origin() -> Option<IpAddr> {
    ORIGIN.try_with(|o| *o).ok().flatten()
}

/// Records one action. A store failure is logged, not returned: the action already happened.
pub async fn audit(state: &Core, actor: &str, action: &str, tenant: Option<&str>, detail: Value) {
    let mut id = [0u8; 8];
    getrandom::getrandom(&mut id).expect("the operating system's random source failed");
    let row = AuditRow {
        id: format!("ev_{}", hex::encode(id)),
        at: now_ms(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        tenant: tenant.map(str::to_owned),
        detail: detail.to_string(),
        remote: origin().map(|a| a.to_string()),
    };
    if let Err(e) = state.store.insert_audit(&row).await {
        tracing::error!(error = %falra_runtime::ErrorChain(&e), action, "could not write the audit log");
    }
}
