//! Tenant secrets: sealed with the node's key before they reach the store, opened only where
//! the node uses one (the https credentials of a tenant's repository, secret `git`; the S3
//! credentials a built-in names) or, for a secret marked `"expose": "env"`, as an environment
//! variable of the tenant's own calls and jobs ([`code_env`]). No service returns a value and
//! none is logged; a call's logs and error have exposed values masked.

use falra_policies::secrets::{check_name, MAX_SECRET_BYTES};
use falra_tenants::{Credentials, TenantName};
use serde_json::Value;

use crate::clock::now_ms;
use crate::Core;

/// The secret holding a tenant's git credentials: a string (an access token, sent with the
/// user name `x-access-token`) or `{"username", "password"}`.
pub const GIT_SECRET: &str = "git";

/// Why a secret could not be set.
#[derive(Debug, thiserror::Error)]
pub enum SecretSetError {
    #[error("{0}")]
    BadKey(String),
    #[error("the secret's value is larger than {MAX_SECRET_BYTES} bytes")]
    TooLarge,
    #[error(transparent)]
    Invalid(SecretUseError),
    /// Marked for code but not a valid environment variable (its name or value).
    #[error("{0}")]
    NotAVariable(falra_policies::env::EnvError),
    #[error(transparent)]
    Store(#[from] falra_store::StoreError),
}

/// Where a secret goes besides the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expose {
    /// Only the node uses it (git credentials, a built-in's S3 credentials).
    #[default]
    None,
    /// The tenant's calls and jobs read it as the environment variable of its name.
    Env,
}

impl Expose {
    fn stored(self) -> Option<&'static str> {
        match self {
            Expose::None => None,
            Expose::Env => Some("env"),
        }
    }

    /// As the store keeps it.
    pub fn from_stored(stored: Option<&str>) -> Expose {
        match stored {
            Some("env") => Expose::Env,
            _ => Expose::None,
        }
    }
}

/// Seals `value` as the tenant's secret `key`, exposed as `expose` (`None`: as it was, or only
/// to the node for a new one); returns when it was set and where it is exposed.
pub async fn put(
    state: &Core,
    tenant: &TenantName,
    key: &str,
    value: &Value,
    expose: Option<Expose>,
) -> Result<(i64, Expose), SecretSetError> {
    check_name(key).map_err(|e| SecretSetError::BadKey(e.to_string()))?;
    // Not said: as it was (a rotated key stays where it was exposed).
    let expose = match expose {
        Some(e) => e,
        None => state
            .store
            .secret_names(tenant)
            .await?
            .into_iter()
            .find(|s| s.key == key)
            .map(|s| Expose::from_stored(s.expose.as_deref()))
            .unwrap_or_default(),
    };
    if expose == Expose::Env && key == GIT_SECRET {
        return Err(SecretSetError::BadKey(
            "secret \"git\" holds the repository's credentials for the node and is never exposed to code".into(),
        ));
    }
    if expose == Expose::Env {
        // Checked as the variable it becomes, so a call never meets one it cannot set.
        let one = serde_json::Map::from_iter([(key.to_owned(), value.clone())]);
        falra_policies::env::Env::parse(&one).map_err(SecretSetError::NotAVariable)?;
    }
    let plain = serde_json::to_vec(value).expect("a JSON value serialises");
    if plain.len() > MAX_SECRET_BYTES {
        return Err(SecretSetError::TooLarge);
    }
    if key == GIT_SECRET {
        git_credentials_from(value).map_err(SecretSetError::Invalid)?;
    }
    if expose == Expose::Env {
        state.cache.code_secret_set();
    }
    let sealed = state.secret_key.seal(tenant.as_str(), key, &plain);
    let now = now_ms();
    state
        .store
        .put_secret(tenant, key, &sealed, expose.stored(), now)
        .await?;
    Ok((now, expose))
}

/// Why a stored secret could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretUseError {
    #[error(transparent)]
    Store(#[from] falra_store::StoreError),
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
    state: &Core,
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

/// The environment a tenant's code gets: its environment variables, then its secrets marked
/// for code (a secret wins over a variable of its name), and the values to mask wherever the
/// call's logs or error are shown.
#[derive(Debug, Default)]
pub struct CodeEnv {
    pub vars: Vec<(String, String)>,
    /// What the call's logs, errors and progress must not show: the exposed secrets' values.
    pub masker: falra_sandbox::logs::Masker,
}

/// Values shorter than this are not masked: replacing every "1" or "on" in a call's logs
/// would hide more than it protects.
pub const MIN_MASKED_BYTES: usize = 4;

/// The environment of the tenant's next call or job: read per call, so a change reaches the
/// next one whatever child runs it.
pub async fn code_env(
    state: &Core,
    tenant: &TenantName,
    vars: &[(String, String)],
) -> Result<CodeEnv, SecretUseError> {
    let exposed = state.cache.code_secrets(&state.store, tenant).await?;
    if exposed.is_empty() {
        return Ok(CodeEnv {
            vars: vars.to_vec(),
            masker: Default::default(),
        });
    }
    let mut secrets = Vec::with_capacity(exposed.len());
    for (key, sealed) in exposed {
        let plain = state
            .secret_key
            .open(tenant.as_str(), &key, &sealed)
            .map_err(SecretUseError::Unsealed)?;
        match serde_json::from_slice(&plain).map_err(SecretUseError::NotJson)? {
            Value::String(value) => secrets.push((key, value)),
            // Checked when set; a value that is not text is skipped rather than sent.
            _ => continue,
        }
    }
    let mut out: Vec<(String, String)> = vars
        .iter()
        .filter(|(k, _)| !secrets.iter().any(|(s, _)| s == k))
        .cloned()
        .collect();
    let masker =
        falra_sandbox::logs::Masker::new(secrets.iter().map(|(_, v)| v.as_str()), MIN_MASKED_BYTES);
    out.extend(secrets);
    Ok(CodeEnv { vars: out, masker })
}

/// The name a tenant's webhook secret is sealed under (not a valid secret name, so no
/// operator-set secret shares it).
const WEBHOOK_SEAL_NAME: &str = "#webhook";

/// A tenant's `webhook_secret` as the store keeps it: `sealed:<nonce>:<ciphertext>`.
pub fn seal_webhook_secret(state: &Core, tenant: &TenantName, secret: &str) -> String {
    let sealed = state
        .secret_key
        .seal(tenant.as_str(), WEBHOOK_SEAL_NAME, secret.as_bytes());
    format!("sealed:{}:{}", sealed.nonce, sealed.sealed)
}

/// The plaintext of a stored `webhook_secret`.
pub fn open_webhook_secret(
    state: &Core,
    tenant: &TenantName,
    stored: &str,
) -> Result<String, SecretUseError> {
    let Some(rest) = stored.strip_prefix("sealed:") else {
        // Stored before secrets were sealed; it is sealed at the tenant's next change.
        return Ok(stored.to_owned());
    };
    let (nonce, sealed) = rest.split_once(':').ok_or(SecretUseError::Unsealed(
        falra_policies::SecretError::Unsealable,
    ))?;
    let sealed = falra_policies::Sealed {
        nonce: nonce.to_owned(),
        sealed: sealed.to_owned(),
    };
    let plain = state
        .secret_key
        .open(tenant.as_str(), WEBHOOK_SEAL_NAME, &sealed)
        .map_err(SecretUseError::Unsealed)?;
    String::from_utf8(plain)
        .map_err(|_| SecretUseError::Unsealed(falra_policies::SecretError::Unsealable))
}

/// The https credentials for the tenant's repository, from its secret `git`.
pub async fn git_credentials(
    state: &Core,
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
    use serde_json::json;

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
