//! Token checks: turning a presented token into a caller, and whether it may do this.
//!
//! The order of checks is the order of the errors a client can get: no token or an unknown
//! one, then revoked, then expired, then the wrong kind of token or a missing scope. Limiting
//! how often one address may fail is the network edge's business, not this module's.

use falra_policies::{Scope, Scopes, TokenHash};
use falra_store::{StoreError, TokenKind, TokenRow};
use falra_tenants::TenantName;

use crate::clock::{format_ms, now_ms};
use crate::Core;

/// How stale `last_used_at` may get before a use rewrites it (keeps writes off the call path).
const TOUCH_EVERY_MS: i64 = 60_000;

/// A tenant's token that passed every check for the requested scope.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: String,
    pub tenant: TenantName,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no token: send \"token\" in the body or Authorization: Bearer <token>")]
    NoToken,
    #[error("unknown token")]
    Unknown,
    #[error("this token has been revoked")]
    Revoked,
    #[error("this token expired at {}", format_ms(*.0))]
    Expired(i64),
    /// A token of the other kind than the one asked for.
    #[error("{}", match .0 {
        TokenKind::Operator => "this is a tenant token; the operator API needs an operator token",
        TokenKind::Tenant => "this is an operator token; calls need a tenant token",
    })]
    WrongKind(TokenKind),
    #[error("this token lacks the {:?} scope", .0.as_str())]
    MissingScope(Scope),
    #[error("internal error: corrupt token record")]
    Corrupt,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AuthError {
    /// Whether the token itself failed (absent, unknown, revoked, expired): what counts
    /// against the address it came from.
    pub fn is_bad_credential(&self) -> bool {
        matches!(
            self,
            AuthError::NoToken | AuthError::Unknown | AuthError::Revoked | AuthError::Expired(_)
        )
    }
}

/// Checks a presented token of `kind`: known, not revoked, not expired, of that kind. Records
/// its use (at most once a minute, off the caller's path).
pub async fn check_token(
    state: &Core,
    presented: Option<&str>,
    kind: TokenKind,
) -> Result<TokenRow, AuthError> {
    let presented = presented.ok_or(AuthError::NoToken)?;
    let hash = TokenHash::of(presented);
    let row = state
        .cache
        .token_by_hash(&state.store, hash.as_str())
        .await?
        .filter(|row| TokenHash::from_stored(&row.hash).ct_eq(&hash))
        .ok_or(AuthError::Unknown)?;
    let now = now_ms();
    if row.revoked_at.is_some() {
        return Err(AuthError::Revoked);
    }
    if let Some(expired) = row.expires_at.filter(|&t| t <= now) {
        return Err(AuthError::Expired(expired));
    }
    if row.kind != kind {
        return Err(AuthError::WrongKind(kind));
    }
    if row.last_used_at.is_none_or(|t| now - t > TOUCH_EVERY_MS) {
        state.cache.touched(hash.as_str(), now);
        let store = state.store.clone();
        let id = row.id.clone();
        falra_runtime::task::spawn(async move {
            if let Err(e) = store.touch_token(&id, now).await {
                tracing::warn!(error = %e, "could not record token use");
            }
        });
    }
    Ok(row)
}

/// The caller a checked tenant token stands for, if it holds any one of `accepted` scopes
/// (the first is named when it holds none).
pub fn tenant_caller(row: TokenRow, accepted: &[Scope]) -> Result<Caller, AuthError> {
    let scopes = Scopes::from_stored(&row.scopes).map_err(|_| AuthError::Corrupt)?;
    if !accepted.iter().any(|&s| scopes.contains(s)) {
        let scope = accepted.first().copied().unwrap_or(Scope::Call);
        return Err(AuthError::MissingScope(scope));
    }
    let tenant = row.tenant.ok_or(AuthError::Corrupt)?;
    Ok(Caller {
        token_id: row.id,
        tenant,
    })
}
