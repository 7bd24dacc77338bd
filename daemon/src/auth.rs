//! Authentication at the edge: `falra_core::auth` checks the token; this adds what only the
//! network edge knows, the client's address.
//!
//! An address whose recent failures used up its allowance (`--auth-failures-per-minute`) is
//! answered `rate_limited` for any token that fails; a valid token always passes. The order
//! of the other answers is the core's: `unauthorized`, `token_revoked`, `token_expired`, then
//! `forbidden`.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use falra_core::auth;
use falra_policies::Scope;

use crate::api_error::{ApiError, ErrorCode};
use crate::extract::bearer;
use crate::server::AppState;
use crate::store::{TokenKind, TokenRow};

pub use falra_core::auth::Caller;

/// Verifies a token. An address whose recent failures used up its allowance is answered
/// `429 rate_limited` for every token that does not check out, until its allowance refills;
/// a valid token is never refused for what others behind the same address sent.
async fn verify(
    state: &AppState,
    presented: Option<&str>,
    kind: TokenKind,
) -> Result<TokenRow, ApiError> {
    let addr = crate::server::client_addr().map(crate::front::address_key);
    let locked = addr.and_then(|ip| state.http().auth_failures.check(&ip, Instant::now()).err());
    let verified = auth::check_token(state, presented, kind).await;
    if let Err(e) = &verified {
        if e.is_bad_credential() {
            state
                .http()
                .metrics
                .auth_failures
                .fetch_add(1, Ordering::Relaxed);
            if let Some(wait) = locked {
                return Err(ApiError::new(
                    ErrorCode::RateLimited,
                    "too many failed authentications from this address; wait before trying again",
                )
                .with_retry_after(wait.as_secs() + 1));
            }
            if let Some(ip) = addr {
                state.http().auth_failures.record(&ip, Instant::now());
            }
        }
    }
    Ok(verified?)
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
    Ok(auth::tenant_caller(row, accepted)?)
}

/// An operator, authenticated by `Authorization: Bearer <operator token>`, or by a console
/// session's cookie (`crate::console`). A request in a session that changes anything (any
/// method but GET and HEAD) must also carry the session's CSRF token in `X-CSRF-Token` and,
/// when the browser names one, come from the console's own origin.
#[derive(Debug, Clone)]
pub struct Operator {
    pub token_id: String,
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = bearer(&parts.headers);
        if presented.is_none() {
            if let Some(cookie) = crate::console::session_cookie(&parts.headers) {
                let session = falra_core::console::check(state, &cookie).await?;
                if !parts.method.is_safe() {
                    crate::console::check_change(&parts.headers, &session)?;
                }
                return Ok(Operator {
                    token_id: session.token_id,
                });
            }
        }
        let row = verify(state, presented, TokenKind::Operator).await?;
        Ok(Operator { token_id: row.id })
    }
}

/// Checks an operator token presented to open a console session.
pub async fn operator_token(state: &AppState, presented: &str) -> Result<TokenRow, ApiError> {
    verify(state, Some(presented), TokenKind::Operator).await
}
