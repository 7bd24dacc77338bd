//! Turning a presented token into a caller: who it is, and whether it may do this.
//!
//! The order of checks is the order of the answers a client can get: no token or an unknown one
//! (`unauthorized`), then revoked (`token_revoked`), then expired (`token_expired`), then the
//! wrong kind of token or a missing scope (`forbidden`). An address whose recent failures used
//! up its allowance (`--auth-failures-per-minute`) is answered `rate_limited` for any token that
//! fails; a valid token always passes.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use falra_policies::{Scope, Scopes, TokenHash};
use falra_tenants::TenantName;

use crate::api_error::{ApiError, ErrorCode};
use crate::clock::now_ms;
use crate::extract::bearer;
use crate::server::AppState;
use crate::store::{TokenKind, TokenRow};

/// How stale `last_used_at` may get before a use rewrites it (keeps writes off the call path).
const TOUCH_EVERY_MS: i64 = 60_000;

/// A tenant's token that passed every check for the requested scope.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: String,
    pub tenant: TenantName,
}

/// Verifies a token. An address whose recent failures used up its allowance is answered
/// `429 rate_limited` for every token that does not check out, until its allowance refills;
/// a valid token is never refused for what others behind the same address sent.
async fn verify(
    state: &AppState,
    presented: Option<&str>,
    kind: TokenKind,
) -> Result<TokenRow, ApiError> {
    let addr = crate::server::client_addr().map(crate::front::address_key);
    let locked = addr.and_then(|ip| state.auth_failures.check(&ip, Instant::now()).err());
    let verified = check_token(state, presented, kind).await;
    if let Err(e) = &verified {
        if matches!(
            e.code,
            ErrorCode::Unauthorized | ErrorCode::TokenExpired | ErrorCode::TokenRevoked
        ) {
            state.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
            if let Some(wait) = locked {
                return Err(ApiError::new(
                    ErrorCode::RateLimited,
                    "too many failed authentications from this address; wait before trying again",
                )
                .with_retry_after(wait.as_secs() + 1));
            }
            if let Some(ip) = addr {
                state.auth_failures.record(&ip, Instant::now());
            }
        }
    }
    verified
}

async fn check_token(
    state: &AppState,
    presented: Option<&str>,
    kind: TokenKind,
) -> Result<TokenRow, ApiError> {
    let presented = presented.ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unauthorized,
            "no token: send \"token\" in the body or Authorization: Bearer <token>",
        )
    })?;
    let hash = TokenHash::of(presented);
    let row = state
        .store
        .token_by_hash(hash.as_str())
        .await?
        .filter(|row| TokenHash::from_stored(&row.hash).ct_eq(&hash))
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "unknown token"))?;
    let now = now_ms();
    if row.revoked_at.is_some() {
        return Err(ApiError::new(
            ErrorCode::TokenRevoked,
            "this token has been revoked",
        ));
    }
    if let Some(expired) = row.expires_at.filter(|&t| t <= now) {
        return Err(ApiError::new(
            ErrorCode::TokenExpired,
            format!("this token expired at {}", crate::clock::format_ms(expired)),
        ));
    }
    if row.kind != kind {
        let message = match kind {
            TokenKind::Operator => {
                "this is a tenant token; the operator API needs an operator token"
            }
            TokenKind::Tenant => "this is an operator token; calls need a tenant token",
        };
        return Err(ApiError::new(ErrorCode::Forbidden, message));
    }
    if row.last_used_at.is_none_or(|t| now - t > TOUCH_EVERY_MS) {
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

/// Checks a tenant token for `scope`.
pub async fn tenant_caller(
    state: &AppState,
    presented: Option<&str>,
    scope: Scope,
) -> Result<Caller, ApiError> {
    tenant_caller_any(state, presented, &[scope]).await
}

/// Checks a tenant token for any one of `scopes` (the first is named when none is held).
pub async fn tenant_caller_any(
    state: &AppState,
    presented: Option<&str>,
    accepted: &[Scope],
) -> Result<Caller, ApiError> {
    let row = verify(state, presented, TokenKind::Tenant).await?;
    let corrupt = || ApiError::new(ErrorCode::Internal, "internal error: corrupt token record");
    let scopes = Scopes::from_stored(&row.scopes).map_err(|_| corrupt())?;
    if !accepted.iter().any(|&s| scopes.contains(s)) {
        let scope = accepted.first().copied().unwrap_or(Scope::Call);
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("this token lacks the {:?} scope", scope.as_str()),
        )
        .with_detail(serde_json::json!({"required_scope": scope.as_str()})));
    }
    let tenant = row.tenant.ok_or_else(corrupt)?;
    Ok(Caller {
        token_id: row.id,
        tenant,
    })
}

/// An operator, authenticated by `Authorization: Bearer <operator token>`.
#[derive(Debug, Clone)]
pub struct Operator {
    pub token_id: String,
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let row = verify(state, bearer(&parts.headers), TokenKind::Operator).await?;
        Ok(Operator { token_id: row.id })
    }
}
