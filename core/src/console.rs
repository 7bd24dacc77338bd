//! Console sessions: an operator token exchanged for a session the browser keeps in a cookie.
//!
//! Signing in checks the operator token like any operator request, then stores a session with
//! the hash of a fresh cookie value, the hash of the token it was opened with, an expiry and a
//! CSRF token. A session is good while it is not signed out, not expired, and its operator
//! token is still live: revoking the token ends every session opened with it, on every node
//! (sessions live in the store, not in a node's memory). Only hashes are kept, as for tokens.
//!
//! Architecture Invariant: nothing here knows cookies or headers; the HTTP layer carries the
//! values, this module decides whether they stand for an operator.

use falra_policies::{TokenHash, TokenSecret};
use falra_store::{SessionRow, StoreError, TokenKind, TokenRow};

use crate::clock::now_ms;
use crate::Core;

/// How long a session lasts from signing in.
pub const SESSION_TTL_MS: i64 = 12 * 3_600_000;

/// A live session.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    /// The operator token it was opened with: who the audit log names.
    pub token_id: String,
    csrf: String,
    pub expires_at: i64,
}

impl Session {
    /// Whether `presented` is this session's CSRF token (in constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        TokenHash::of(presented).ct_eq(&TokenHash::of(&self.csrf))
    }

    /// The CSRF token, for the session's own pages.
    pub fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// A session just opened: the cookie value exists only here and in the answer that sets it.
pub struct Opened {
    pub cookie: TokenSecret,
    pub session: Session,
}

/// Why a session cookie does not stand for an operator.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("not signed in: sign in to the console with an operator token")]
    Unknown,
    #[error("this console session was signed out; sign in again")]
    SignedOut,
    #[error("this console session expired; sign in again")]
    Expired,
    #[error("the operator token this session was opened with is no longer valid; sign in again")]
    TokenEnded,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Opens a session for an operator token that passed [`crate::auth::check_token`].
pub async fn open(state: &Core, token: &TokenRow) -> Result<Opened, StoreError> {
    let now = now_ms();
    let cookie = TokenSecret::generate();
    let csrf = TokenSecret::generate().expose().to_owned();
    let mut id = [0u8; 8];
    getrandom::getrandom(&mut id).expect("the operating system's random source failed");
    // A session never outlives its token.
    let expires_at = token
        .expires_at
        .map_or(now + SESSION_TTL_MS, |t| t.min(now + SESSION_TTL_MS));
    let row = SessionRow {
        id: format!("ses_{}", hex::encode(id)),
        hash: cookie.hash().as_str().to_owned(),
        token_hash: token.hash.clone(),
        token_id: token.id.clone(),
        csrf,
        created_at: now,
        expires_at,
        revoked_at: None,
    };
    state.store.insert_session(&row).await?;
    // Expired sessions are dropped as new ones open: the table stays as small as its use.
    if let Err(e) = state.store.forget_sessions(now - SESSION_TTL_MS).await {
        tracing::warn!(error = %e, "could not forget expired console sessions");
    }
    Ok(Opened {
        cookie,
        session: session_of(row),
    })
}

fn session_of(row: SessionRow) -> Session {
    Session {
        id: row.id,
        token_id: row.token_id,
        csrf: row.csrf,
        expires_at: row.expires_at,
    }
}

/// The session a cookie value stands for, if it is live and so is its operator token.
pub async fn check(state: &Core, cookie: &str) -> Result<Session, SessionError> {
    let hash = TokenHash::of(cookie);
    let row = state
        .store
        .session_by_hash(hash.as_str())
        .await?
        .filter(|row| TokenHash::from_stored(&row.hash).ct_eq(&hash))
        .ok_or(SessionError::Unknown)?;
    let now = now_ms();
    if row.revoked_at.is_some() {
        return Err(SessionError::SignedOut);
    }
    if row.expires_at <= now {
        return Err(SessionError::Expired);
    }
    let token = state
        .cache
        .token_by_hash(&state.store, &row.token_hash)
        .await?;
    let live = token.is_some_and(|t| {
        t.kind == TokenKind::Operator
            && t.revoked_at.is_none()
            && t.expires_at.is_none_or(|at| at > now)
    });
    if !live {
        return Err(SessionError::TokenEnded);
    }
    Ok(session_of(row))
}

/// Signs a session out: its cookie no longer stands for anyone, on any node.
pub async fn close(state: &Core, session: &Session) -> Result<(), StoreError> {
    state.store.revoke_session(&session.id, now_ms()).await?;
    Ok(())
}
