//! The operator API under `/admin/v1`: tenants, syncs, tokens, policies, rollbacks.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use falra_core::tenants::{self, new_token};
use falra_policies::{PolicyPatch, Scopes};
use falra_tenants::TenantName;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::api_error::ApiError;
use crate::audit::audit;
use crate::auth::Operator;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::plans::{check_plan, effective_policy};
use crate::server::AppState;
use crate::store::{NewTenant as NewTenantRow, TenantRow, TokenKind};
use falra_core::clock::{format_ms, now_ms, parse_rfc3339};
use falra_core::deploy::{deploy_with, Change, DeployEvent, DeployLog};
use falra_core::secrets::seal_webhook_secret;

const DEFAULT_BRANCH: &str = "main";
use falra_core::plans::DEFAULT_PLAN;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// Lowercase letters, digits and `_`, starting with a letter (at most 32).
    #[schema(pattern = "^[a-z][a-z0-9_]{0,31}$")]
    name: String,
    /// A git URL (`https://`, `ssh://`, `git@`, `file://`); none: uploads only.
    repo: Option<String>,
    /// Default `main`.
    branch: Option<String>,
    /// The folder of the repository that holds the code.
    subdir: Option<String>,
    /// Default `default`.
    plan: Option<String>,
    /// Checks `X-Hub-Signature-256` on pushes.
    webhook_secret: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantChanges {
    repo: Option<String>,
    branch: Option<String>,
    subdir: Option<String>,
    plan: Option<String>,
    webhook_secret: Option<String>,
}

fn tenant_name(name: &str) -> Result<TenantName, ApiError> {
    TenantName::parse(name)
        .map_err(|e| ApiError::bad_request(e.to_string()).with_detail(json!({"field": "name"})))
}

fn check_branch(branch: &str) -> Result<(), ApiError> {
    let ok = !branch.is_empty()
        && branch.len() <= 200
        && !branch.starts_with(['-', '/'])
        && !branch.contains("..")
        && branch
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c));
    if ok {
        Ok(())
    } else {
        Err(
            ApiError::bad_request(format!("{branch:?} is not a valid branch name"))
                .with_detail(json!({"field": "branch"})),
        )
    }
}

fn check_subdir(subdir: &str) -> Result<(), ApiError> {
    let ok = subdir
        .split('/')
        .all(|p| !p.is_empty() && p != "." && p != ".." && p != ".git");
    if ok && !subdir.contains('\0') {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{subdir:?} is not a relative path inside the repository"
        ))
        .with_detail(json!({"field": "subdir"})))
    }
}

fn tenant_json(state: &AppState, t: &TenantRow) -> Value {
    let policy = serde_json::to_value(effective_policy(state, t)).expect("a policy serialises");
    let overrides = serde_json::to_value(&t.overrides).expect("overrides serialise");
    json!({
        "name": t.name.as_str(),
        "repo": t.repo,
        "branch": t.branch,
        "subdir": t.subdir,
        "plan": t.plan,
        "has_webhook_secret": t.webhook_secret.is_some(),
        "policy": policy,
        "overrides": overrides,
        "active_version": t.active_version,
        "uid": t.uid,
        "created_at": format_ms(t.created_at),
    })
}

pub(crate) async fn load_tenant(
    state: &AppState,
    name: &str,
) -> Result<(TenantName, TenantRow), ApiError> {
    let parsed = tenant_name(name)?;
    let row = state
        .store
        .tenant(&parsed)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no tenant named {name:?}")))?;
    Ok((parsed, row))
}

#[utoipa::path(
    post,
    path = "/admin/v1/tenants",
    operation_id = "admin_create_tenant",
    tag = "tenants",
    summary = "Create a tenant",
    request_body = NewTenant,
    responses((status = 201, description = "Created", body = crate::schemas::Tenant), (status = 409, description = "The tenant exists", body = crate::schemas::Error), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn create_tenant(
    op: Operator,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<NewTenant>,
) -> Result<impl IntoResponse, ApiError> {
    let name = tenant_name(&body.name)?;
    let branch = body.branch.unwrap_or_else(|| DEFAULT_BRANCH.to_owned());
    check_branch(&branch)?;
    if let Some(s) = &body.subdir {
        check_subdir(s)?;
    }
    let plan = check_plan(&state, body.plan.as_deref().unwrap_or(DEFAULT_PLAN))?;
    let row = NewTenantRow {
        name: name.clone(),
        repo: body.repo.filter(|r| !r.is_empty()),
        branch,
        subdir: body.subdir.filter(|s| !s.is_empty()),
        plan,
        webhook_secret: body
            .webhook_secret
            .filter(|s| !s.is_empty())
            .map(|s| seal_webhook_secret(&state, &name, &s)),
        created_at: now_ms(),
    };
    let row = state.store.insert_tenant(&row).await?;
    tracing::info!(operator = %op.token_id, tenant = %name, "tenant created");
    audit(
        &state,
        &op.token_id,
        "tenant.create",
        Some(name.as_str()),
        json!({"repo": row.repo, "branch": row.branch, "subdir": row.subdir, "plan": row.plan,
               "webhook_secret": row.webhook_secret.is_some()}),
    )
    .await;
    Ok((StatusCode::CREATED, Json(tenant_json(&state, &row))))
}

#[utoipa::path(
    get,
    path = "/admin/v1/tenants",
    operation_id = "admin_list_tenants",
    tag = "tenants",
    summary = "List tenants",
    responses((status = 200, description = "OK", body = crate::schemas::TenantList), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn list_tenants(
    _op: Operator,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    let tenants = state.store.tenants().await?;
    Ok(Json(
        json!({"tenants": tenants.iter().map(|t| tenant_json(&state, t)).collect::<Vec<_>>()}),
    ))
}

#[utoipa::path(
    get,
    path = "/admin/v1/tenants/{name}",
    operation_id = "admin_show_tenant",
    tag = "tenants",
    summary = "Show a tenant",
    params(("name" = String, Path, description = "A tenant name")),
    responses((status = 200, description = "OK", body = crate::schemas::Tenant), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn show_tenant(
    _op: Operator,
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let (_, row) = load_tenant(&state, &name).await?;
    Ok(Json(tenant_json(&state, &row)))
}

#[utoipa::path(
    patch,
    path = "/admin/v1/tenants/{name}",
    operation_id = "admin_update_tenant",
    tag = "tenants",
    summary = "Change a tenant's repo, branch, subdir, plan or webhook secret",
    params(("name" = String, Path, description = "A tenant name")),
    request_body = TenantChanges,
    responses((status = 200, description = "OK", body = crate::schemas::Tenant), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn update_tenant(
    op: Operator,
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(changes): ApiJson<TenantChanges>,
) -> Result<Json<Value>, ApiError> {
    let (name, mut row) = load_tenant(&state, &name).await?;
    let detail = json!({"repo": changes.repo, "branch": changes.branch, "subdir": changes.subdir,
                        "plan": changes.plan, "webhook_secret": changes.webhook_secret.is_some()});
    if let Some(branch) = changes.branch {
        check_branch(&branch)?;
        row.branch = branch;
    }
    if let Some(subdir) = changes.subdir {
        if !subdir.is_empty() {
            check_subdir(&subdir)?;
        }
        row.subdir = Some(subdir).filter(|s| !s.is_empty());
    }
    if let Some(repo) = changes.repo {
        row.repo = Some(repo).filter(|r| !r.is_empty());
    }
    if let Some(plan) = &changes.plan {
        row.plan = check_plan(&state, plan)?;
    }
    if let Some(secret) = changes.webhook_secret {
        row.webhook_secret = Some(secret)
            .filter(|s| !s.is_empty())
            .map(|s| seal_webhook_secret(&state, &name, &s));
    }
    state.store.update_tenant(&row).await?;
    tracing::info!(operator = %op.token_id, tenant = %name, "tenant changed");
    audit(
        &state,
        &op.token_id,
        "tenant.change",
        Some(name.as_str()),
        detail,
    )
    .await;
    Ok(Json(tenant_json(&state, &row)))
}

#[utoipa::path(
    delete,
    path = "/admin/v1/tenants/{name}",
    operation_id = "admin_delete_tenant",
    tag = "tenants",
    summary = "Remove a tenant, its tokens, secrets, uploads and files",
    params(("name" = String, Path, description = "A tenant name")),
    responses((status = 200, description = "OK", body = crate::schemas::Deleted), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn delete_tenant(
    op: Operator,
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let (name, row) = load_tenant(&state, &name).await?;
    tenants::remove(&state, &row).await?;
    state.http().metrics.forget(name.as_str());
    tracing::info!(operator = %op.token_id, tenant = %name, "tenant removed");
    audit(
        &state,
        &op.token_id,
        "tenant.remove",
        Some(name.as_str()),
        json!({}),
    )
    .await;
    Ok(Json(json!({"deleted": name.as_str()})))
}

#[utoipa::path(
    post,
    path = "/admin/v1/tenants/{name}/sync",
    operation_id = "admin_sync_tenant",
    tag = "tenants",
    summary = "Fetch the branch and make it the active version",
    params(("name" = String, Path, description = "A tenant name"), crate::uploads::ForceQuery),
    responses((status = 200, description = "OK (with `Accept: text/event-stream`: `step` events as each step starts and ends, then one `done` or `failed` event)", body = crate::schemas::Deployed), (status = 422, description = "sync_failed", body = crate::schemas::Error), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn sync_tenant(
    op: Operator,
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    headers: axum::http::HeaderMap,
    query: Result<ApiQuery<crate::uploads::ForceQuery>, ApiError>,
) -> Result<axum::response::Response, ApiError> {
    let ApiQuery(query) = query?;
    let (name, _) = load_tenant(&state, &name).await?;
    let force = query.force.unwrap_or(false);
    let streaming = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    if streaming {
        return Ok(sync_stream(state, op, name, force).into_response());
    }
    let answer = sync_audited(&state, &op, &name, force, DeployLog::new()).await?;
    tracing::info!(operator = %op.token_id, tenant = %name, version = %answer["version"], "synced");
    Ok(Json(answer).into_response())
}

/// An operator's sync, audited with its steps whatever its outcome.
async fn sync_audited(
    state: &AppState,
    op: &Operator,
    name: &TenantName,
    force: bool,
    log: DeployLog,
) -> Result<Value, ApiError> {
    let outcome = deploy_with(state, name, Change::Sync, force, log.clone()).await;
    crate::audit::audit_deploy(
        state,
        &op.token_id,
        "deploy.sync",
        name,
        outcome,
        &log,
        json!({}),
    )
    .await
}

/// A sync whose steps are sent as they start and end (`step` events, `{"step", "state":
/// "started"}` then the step's record with `"state": "finished"`), then one `done` event with
/// the answer or one `failed` event with the error's body. The deploy runs in a task of its
/// own, so a client that hangs up stops nothing.
fn sync_stream(
    state: AppState,
    op: Operator,
    name: TenantName,
    force: bool,
) -> axum::response::sse::Sse<
    impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures_util::StreamExt;
    let (log, events) = DeployLog::streaming();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Event>();
    let origin = crate::server::client_addr();
    falra_runtime::task::spawn(falra_core::audit::with_origin(origin, async move {
        // The log's last sender goes with this call, ending the step stream before the
        // outcome is sent.
        let answer = sync_audited(&state, &op, &name, force, log).await;
        let event = match answer {
            Ok(body) => Event::default().event("done").data(body.to_string()),
            Err(e) => Event::default().event("failed").data(e.body().to_string()),
        };
        let _ = done_tx.send(event);
    }));
    let steps = tokio_stream_of(events).map(|e| {
        let data = match e {
            DeployEvent::Started(step) => json!({"step": step, "state": "started"}),
            DeployEvent::Finished(record) => {
                let mut v = serde_json::to_value(record).expect("a step serialises");
                v["state"] = json!("finished");
                v
            }
        };
        Ok(Event::default().event("step").data(data.to_string()))
    });
    let outcome = futures_util::stream::once(async move {
        Ok(done_rx.await.unwrap_or_else(|_| {
            Event::default().event("failed").data(
                ApiError::new(
                    falra_core::ErrorCode::Internal,
                    "the deploy's task ended without an outcome",
                )
                .body()
                .to_string(),
            )
        }))
    });
    Sse::new(steps.chain(outcome)).keep_alive(KeepAlive::default())
}

/// The receiver as a stream that ends when every sender is gone.
fn tokio_stream_of<T: Send + 'static>(
    rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// Some of `call`, `deploy`, `jobs`.
    scopes: Vec<String>,
    #[schema(minimum = 1)]
    expires_in_days: Option<u32>,
    /// An RFC 3339 time.
    expires_at: Option<String>,
}

#[utoipa::path(
    post,
    path = "/admin/v1/tenants/{name}/tokens",
    operation_id = "admin_issue_token",
    tag = "tokens",
    summary = "Issue a token (shown this once)",
    params(("name" = String, Path, description = "A tenant name")),
    request_body = NewToken,
    responses((status = 201, description = "Created", body = crate::schemas::IssuedToken), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn issue_token(
    op: Operator,
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<NewToken>,
) -> Result<impl IntoResponse, ApiError> {
    let (name, _) = load_tenant(&state, &name).await?;
    let scopes = Scopes::parse(body.scopes.iter().map(String::as_str)).map_err(|e| {
        ApiError::bad_request(e.to_string()).with_detail(json!({"field": "scopes"}))
    })?;
    let now = now_ms();
    let expires_at = expiry(now, body.expires_in_days, body.expires_at.as_deref())?;
    let (row, secret) = new_token(Some(&name), TokenKind::Tenant, &scopes, expires_at, now);
    state.store.insert_token(&row).await?;
    tracing::info!(operator = %op.token_id, tenant = %name, token = %row.id, "token issued");
    audit(
        &state,
        &op.token_id,
        "token.issue",
        Some(name.as_str()),
        json!({"token": row.id, "scopes": scopes.names().collect::<Vec<_>>(),
               "expires_at": expires_at.map(format_ms)}),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": row.id,
            "token": secret.expose(),
            "scopes": scopes.names().collect::<Vec<_>>(),
            "expires_at": expires_at.map(format_ms),
        })),
    ))
}

fn expiry(now: i64, days: Option<u32>, at: Option<&str>) -> Result<Option<i64>, ApiError> {
    let field = |f: &str| json!({"field": f});
    match (days, at) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "give expires_in_days or expires_at, not both",
        )
        .with_detail(field("expires_at"))),
        (Some(0), None) => Err(ApiError::bad_request("expires_in_days must be at least 1")
            .with_detail(field("expires_in_days"))),
        (Some(d), None) if d > 36_500 => Err(ApiError::bad_request(
            "expires_in_days must be at most 36500",
        )
        .with_detail(field("expires_in_days"))),
        (Some(d), None) => Ok(Some(now + i64::from(d) * 86_400_000)),
        (None, Some(at)) => {
            let t = parse_rfc3339(at).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "expires_at {at:?} is not an RFC 3339 time such as 2027-01-01T00:00:00Z"
                ))
                .with_detail(field("expires_at"))
            })?;
            if t <= now {
                return Err(ApiError::bad_request("expires_at is in the past")
                    .with_detail(field("expires_at")));
            }
            Ok(Some(t))
        }
        (None, None) => Ok(None),
    }
}

#[utoipa::path(
    get,
    path = "/admin/v1/tenants/{name}/tokens",
    operation_id = "admin_list_tokens",
    tag = "tokens",
    summary = "List a tenant's tokens, without secrets",
    params(("name" = String, Path, description = "A tenant name")),
    responses((status = 200, description = "OK", body = crate::schemas::TokenList), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn list_tokens(
    _op: Operator,
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let (name, _) = load_tenant(&state, &name).await?;
    let tokens = state.store.tokens_of(&name).await?;
    Ok(Json(
        json!({"tokens": tokens.iter().map(token_json).collect::<Vec<_>>()}),
    ))
}

/// A token as listings show it: never its secret.
fn token_json(t: &crate::store::TokenRow) -> Value {
    json!({
        "id": t.id,
        "prefix": t.prefix,
        "scopes": t.scopes.split(',').collect::<Vec<_>>(),
        "expires_at": t.expires_at.map(format_ms),
        "revoked_at": t.revoked_at.map(format_ms),
        "created_at": format_ms(t.created_at),
        "last_used_at": t.last_used_at.map(format_ms),
    })
}

/// `PUT /admin/v1/tenants/{name}/env`: replaces the tenant's environment variables (a JSON
/// object of names to text); its next call and job get them.
#[utoipa::path(
    put,
    path = "/admin/v1/tenants/{name}/env",
    operation_id = "admin_set_env",
    tag = "tenants",
    summary = "Replace the environment variables of the tenant's calls and jobs",
    params(("name" = String, Path, description = "A tenant name")),
    request_body(content = std::collections::BTreeMap<String, String>, description = "Names ([A-Za-z_][A-Za-z0-9_]*, not PATH, HOME, TMPDIR, LANG, LC_ALL or FALRA_…) to values"),
    responses((status = 200, description = "The tenant's variables", body = crate::schemas::EnvVars), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn set_env(
    op: Operator,
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<serde_json::Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let (name, _) = load_tenant(&state, &name).await?;
    let env = falra_policies::env::Env::parse(&body)?;
    if !falra_core::tenants::set_env(&state, &name, &env).await? {
        return Err(ApiError::not_found(format!("no tenant named {name}")));
    }
    let names: Vec<&str> = env.vars().iter().map(|(k, _)| k.as_str()).collect();
    audit(
        &state,
        &op.token_id,
        "tenant.env",
        Some(name.as_str()),
        json!({"names": names}),
    )
    .await;
    Ok(Json(env_json(env.vars())))
}

/// `GET /admin/v1/tenants/{name}/env`.
#[utoipa::path(
    get,
    path = "/admin/v1/tenants/{name}/env",
    operation_id = "admin_show_env",
    tag = "tenants",
    summary = "The environment variables of the tenant's calls and jobs",
    params(("name" = String, Path, description = "A tenant name")),
    responses((status = 200, description = "The tenant's variables", body = crate::schemas::EnvVars), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn show_env(
    _op: Operator,
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let (_, row) = load_tenant(&state, &name).await?;
    Ok(Json(env_json(&row.env)))
}

fn env_json(vars: &[(String, String)]) -> Value {
    let object: serde_json::Map<String, Value> = vars
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({"env": object})
}

/// `GET /admin/v1/operator-tokens`: the operator tokens (revoke one with `DELETE
/// /admin/v1/tokens/{id}`).
#[utoipa::path(
    get,
    path = "/admin/v1/operator-tokens",
    operation_id = "admin_list_operator_tokens",
    tag = "tokens",
    summary = "List the operator tokens, without secrets",
    responses((status = 200, description = "OK", body = crate::schemas::TokenList), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn list_operator_tokens(
    op: Operator,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    let tokens = state.store.operator_tokens().await?;
    let list: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut v = token_json(t);
            v["this"] = json!(t.id == op.token_id);
            v
        })
        .collect();
    Ok(Json(json!({"tokens": list})))
}

#[utoipa::path(
    delete,
    path = "/admin/v1/tokens/{id}",
    operation_id = "admin_revoke_token",
    tag = "tokens",
    summary = "Revoke a token",
    params(("id" = String, Path, description = "Its id")),
    responses((status = 200, description = "OK", body = crate::schemas::Revoked), (status = 409, description = "conflict: the last live operator token", body = crate::schemas::Error), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn revoke_token(
    op: Operator,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let now = now_ms();
    let live = |t: &&crate::store::TokenRow| {
        t.revoked_at.is_none() && t.expires_at.is_none_or(|at| at > now)
    };
    let operators = state.store.operator_tokens().await?;
    if operators.iter().filter(live).count() == 1
        && operators.iter().filter(live).any(|t| t.id == id)
    {
        return Err(ApiError::new(
            crate::api_error::ErrorCode::Conflict,
            "this is the last operator token: revoking it would leave no one to administer the \
             node (make another with `falra admin init --force` first)",
        )
        .with_detail(json!({"token": id})));
    }
    if !state.store.revoke_token(&id, now).await? {
        return Err(ApiError::not_found(format!("no token with id {id:?}")));
    }
    tracing::info!(operator = %op.token_id, token = %id, "token revoked");
    audit(
        &state,
        &op.token_id,
        "token.revoke",
        None,
        json!({"token": id}),
    )
    .await;
    Ok(Json(json!({"revoked": id})))
}

/// `PUT /admin/v1/tenants/{name}/policy`: overrides fields of the tenant's plan (and
/// `"reset": [fields]` gives fields back to the plan). Answers the effective policy.
#[utoipa::path(
    put,
    path = "/admin/v1/tenants/{name}/policy",
    operation_id = "admin_set_policy",
    tag = "policies",
    summary = "Override fields of the tenant's plan; applies to the next call",
    params(("name" = String, Path, description = "A tenant name")),
    request_body = crate::schemas::PolicyChange,
    responses((status = 200, description = "The effective policy", body = crate::schemas::Policy), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn set_policy(
    op: Operator,
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(mut body): ApiJson<serde_json::Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let (name, row) = load_tenant(&state, &name).await?;
    let reset: Vec<String> = match body.remove("reset") {
        None => Vec::new(),
        Some(v) => serde_json::from_value(v).map_err(|_| {
            ApiError::bad_request("reset must be a list of field names")
                .with_detail(json!({"field": "reset"}))
        })?,
    };
    if let Some(both) = reset.iter().find(|f| body.contains_key(f.as_str())) {
        return Err(ApiError::bad_request(format!(
            "{both:?} is both set and reset: do one or the other"
        ))
        .with_detail(json!({"field": both})));
    }
    let patch: PolicyPatch = serde_json::from_value(Value::Object(body.clone()))
        .map_err(|e| ApiError::bad_request(format!("invalid policy: {e}")))?;
    let policy = tenants::set_overrides(&state, &row, &patch, &reset).await?;
    tracing::info!(operator = %op.token_id, tenant = %name, "policy changed");
    audit(
        &state,
        &op.token_id,
        "policy.set",
        Some(name.as_str()),
        json!({"changes": body, "reset": reset}),
    )
    .await;
    Ok(Json(
        serde_json::to_value(&policy).expect("a policy serialises"),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// A version id of the tenant's.
    version: String,
}

/// Makes an earlier version of the tenant's code the active one again.
#[utoipa::path(
    post,
    path = "/admin/v1/tenants/{name}/rollback",
    operation_id = "admin_rollback_tenant",
    tag = "tenants",
    summary = "Make an earlier version active again",
    params(("name" = String, Path, description = "A tenant name")),
    request_body = Rollback,
    responses((status = 200, description = "OK", body = crate::schemas::RolledBack), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn rollback_tenant(
    op: Operator,
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<Rollback>,
) -> Result<Json<Value>, ApiError> {
    let (name, row) = load_tenant(&state, &name).await?;
    let version = falra_core::versions::resolve(&state.store, &name, &body.version)
        .await
        .map_err(|e| match e {
            falra_core::versions::VersionRefError::NotFound(_) => {
                ApiError::not_found(e.to_string()).with_detail(json!({"version": body.version}))
            }
            e => crate::api_error::version_ref_error(e, "field"),
        })?;
    tenants::rollback(&state, &row, &version).await?;
    tracing::info!(operator = %op.token_id, tenant = %name, version = %version, "rolled back");
    audit(
        &state,
        &op.token_id,
        "deploy.rollback",
        Some(name.as_str()),
        json!({"version": version.as_str()}),
    )
    .await;
    Ok(Json(json!({"version": version.as_str()})))
}

/// `GET /admin/v1/nodes`: the nodes serving this store, whether each is alive, which is this.
#[utoipa::path(
    get,
    path = "/admin/v1/nodes",
    operation_id = "admin_list_nodes",
    tag = "node",
    summary = "List the nodes serving the store",
    responses((status = 200, description = "OK", body = crate::schemas::NodeList), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn list_nodes(
    _op: Operator,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    let nodes = falra_core::nodes::list(&state).await?;
    let list: Vec<Value> = nodes
        .iter()
        .map(|n| {
            json!({
                "id": n.row.id,
                "address": n.row.address,
                "version": n.row.version,
                "started_at": format_ms(n.row.started_at),
                "heartbeat_at": format_ms(n.row.heartbeat_at),
                "alive": n.alive,
                "this": n.this,
            })
        })
        .collect();
    Ok(Json(json!({ "nodes": list })))
}
