//! Tenant secrets over the operator API, and their uses inside the daemon.
//!
//! `PUT /admin/v1/tenants/{name}/secrets/{key} {"value": <json>}` seals the value with the
//! node's key before it reaches the store; `DELETE` removes it; `GET …/secrets` lists names and
//! times, never values. No API returns a value and none is logged. The daemon opens a secret
//! only where it uses one: the https credentials of a tenant's repository (secret `git`).

use axum::extract::State;
use axum::Json;
use falra_policies::secrets::{check_name, MAX_SECRET_BYTES};
use falra_tenants::{Credentials, TenantName};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin::load_tenant;
use crate::api_error::ApiError;
use crate::audit::audit;
use crate::auth::Operator;
use crate::clock::{format_ms, now_ms};
use crate::extract::{ApiJson, ApiPath};
use crate::server::AppState;

/// The secret holding a tenant's git credentials: a string (an access token, sent with the
/// user name `x-access-token`) or `{"username", "password"}`.
pub const GIT_SECRET: &str = "git";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretBody {
    value: Value,
}

pub async fn put_secret(
    op: Operator,
    State(state): State<AppState>,
    ApiPath((name, key)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<SecretBody>,
) -> Result<Json<Value>, ApiError> {
    let (name, _) = load_tenant(&state, &name).await?;
    check_name(&key)
        .map_err(|e| ApiError::bad_request(e.to_string()).with_detail(json!({"field": "key"})))?;
    let plain = serde_json::to_vec(&body.value).expect("a JSON value serialises");
    if plain.len() > MAX_SECRET_BYTES {
        return Err(ApiError::bad_request(format!(
            "the secret's value is larger than {MAX_SECRET_BYTES} bytes"
        ))
        .with_detail(json!({"field": "value"})));
    }
    if key == GIT_SECRET {
        git_credentials_from(&body.value)?;
    }
    let sealed = state.secret_key.seal(name.as_str(), &key, &plain);
    let now = now_ms();
    state.store.put_secret(&name, &key, &sealed, now).await?;
    tracing::info!(operator = %op.token_id, tenant = %name, secret = %key, "secret set");
    audit(
        &state,
        &op.token_id,
        "secret.set",
        Some(name.as_str()),
        json!({"key": key}),
    )
    .await;
    Ok(Json(
        json!({"tenant": name.as_str(), "key": key, "updated_at": format_ms(now)}),
    ))
}

pub async fn delete_secret(
    op: Operator,
    State(state): State<AppState>,
    ApiPath((name, key)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (name, _) = load_tenant(&state, &name).await?;
    if !state.store.delete_secret(&name, &key).await? {
        return Err(ApiError::not_found(format!(
            "tenant {name} has no secret named {key:?}"
        )));
    }
    tracing::info!(operator = %op.token_id, tenant = %name, secret = %key, "secret removed");
    audit(
        &state,
        &op.token_id,
        "secret.remove",
        Some(name.as_str()),
        json!({"key": key}),
    )
    .await;
    Ok(Json(json!({"deleted": key})))
}

pub async fn list_secrets(
    _op: Operator,
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let (name, _) = load_tenant(&state, &name).await?;
    let names = state.store.secret_names(&name).await?;
    let list: Vec<Value> = names
        .into_iter()
        .map(|(key, at)| json!({"key": key, "updated_at": format_ms(at)}))
        .collect();
    Ok(Json(json!({"secrets": list})))
}

/// Why a stored secret could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretUseError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Sealed under another key, or for another row: the node's fault, not the tenant's.
    #[error("a stored secret could not be opened")]
    Unsealed(#[source] falra_policies::SecretError),
    #[error("a stored secret is not JSON")]
    NotJson(#[source] serde_json::Error),
    #[error("secret \"git\" must be an access token (a string) or {{\"username\", \"password\"}}")]
    BadGitSecret,
}

/// The tenant's secret `key`, opened; `None` if it has none.
pub async fn open_secret(
    state: &AppState,
    tenant: &TenantName,
    key: &str,
) -> Result<Option<Value>, SecretUseError> {
    let Some(sealed) = state.store.secret(tenant, key).await? else {
        return Ok(None);
    };
    let plain = state
        .secret_key
        .open(tenant.as_str(), key, &sealed)
        .map_err(SecretUseError::Unsealed)?;
    let value = serde_json::from_slice(&plain).map_err(SecretUseError::NotJson)?;
    Ok(Some(value))
}

/// The name a tenant's webhook secret is sealed under (not a valid secret name, so no
/// operator-set secret shares it).
const WEBHOOK_SEAL_NAME: &str = "#webhook";

/// A tenant's `webhook_secret` as the store keeps it: `sealed:<nonce>:<ciphertext>`.
pub fn seal_webhook_secret(state: &AppState, tenant: &TenantName, secret: &str) -> String {
    let sealed = state
        .secret_key
        .seal(tenant.as_str(), WEBHOOK_SEAL_NAME, secret.as_bytes());
    format!("sealed:{}:{}", sealed.nonce, sealed.sealed)
}

/// The plaintext of a stored `webhook_secret`.
pub fn open_webhook_secret(
    state: &AppState,
    tenant: &TenantName,
    stored: &str,
) -> Result<String, ApiError> {
    let unreadable = |e: &(dyn std::error::Error + 'static)| {
        ApiError::internal("the tenant's webhook secret could not be opened", e)
    };
    let Some(rest) = stored.strip_prefix("sealed:") else {
        // Stored before secrets were sealed; it is sealed at the tenant's next change.
        return Ok(stored.to_owned());
    };
    let (nonce, sealed) = rest
        .split_once(':')
        .ok_or_else(|| unreadable(&falra_policies::SecretError::Unsealable))?;
    let sealed = falra_policies::Sealed {
        nonce: nonce.to_owned(),
        sealed: sealed.to_owned(),
    };
    let plain = state
        .secret_key
        .open(tenant.as_str(), WEBHOOK_SEAL_NAME, &sealed)
        .map_err(|e| unreadable(&e))?;
    String::from_utf8(plain).map_err(|e| unreadable(&e))
}

/// The https credentials for the tenant's repository, from its secret `git`.
pub async fn git_credentials(
    state: &AppState,
    tenant: &TenantName,
) -> Result<Option<Credentials>, SecretUseError> {
    match open_secret(state, tenant, GIT_SECRET).await? {
        Some(value) => git_credentials_from(&value).map(Some),
        None => Ok(None),
    }
}

fn git_credentials_from(value: &Value) -> Result<Credentials, SecretUseError> {
    let bad = || SecretUseError::BadGitSecret;
    match value {
        Value::String(token) if !token.is_empty() => Ok(Credentials {
            username: "x-access-token".to_owned(),
            password: token.clone(),
        }),
        Value::Object(map) => match (map.get("username"), map.get("password")) {
            (Some(Value::String(u)), Some(Value::String(p))) if map.len() == 2 => Ok(Credentials {
                username: u.clone(),
                password: p.clone(),
            }),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_credentials_take_a_token_or_a_user_and_password() {
        let token = git_credentials_from(&json!("ghp_x")).unwrap();
        assert_eq!(
            (token.username.as_str(), token.password.as_str()),
            ("x-access-token", "ghp_x")
        );
        let pair = git_credentials_from(&json!({"username": "u", "password": "hunter2"})).unwrap();
        assert_eq!(pair.username, "u");
        assert!(!format!("{pair:?}").contains("hunter2"));
        for bad in [
            json!(""),
            json!(3),
            json!({"username": "u"}),
            json!({"u": 1, "password": "p"}),
        ] {
            assert!(git_credentials_from(&bad).is_err(), "{bad}");
        }
    }
}
