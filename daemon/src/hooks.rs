//! Push to deploy: `POST /hooks/github/{tenant}`, GitHub's push webhook.
//!
//! The request must carry `X-Hub-Signature-256` made with the tenant's `webhook_secret`
//! (checked in constant time over the raw body). `ping` is answered; a `push` to the tenant's
//! tracked branch starts a sync in the background (the new version becomes active when it is
//! ready, exactly as `POST /admin/v1/tenants/{name}/sync` would make it); pushes to other
//! branches and other events are acknowledged and ignored.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use falra_policies::webhook::verify_github_signature;
use serde_json::{json, Value};

use crate::admin::load_tenant;
use crate::api_error::{ApiError, ErrorCode};
use crate::deploy::{deploy, Change};
use crate::extract::{ApiPath, LimitedBody};
use crate::server::AppState;

pub async fn github(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
    body: Result<LimitedBody, ApiError>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let LimitedBody(body) = body?;
    let (tenant_name, tenant) = load_tenant(&state, &name).await?;
    let Some(stored) = tenant.webhook_secret.as_deref() else {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "push webhooks are not enabled for this tenant (it has no webhook_secret)",
        ));
    };
    let secret = crate::secrets::open_webhook_secret(&state, &tenant_name, stored)?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if !verify_github_signature(&secret, &body, header("x-hub-signature-256")) {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "missing or wrong X-Hub-Signature-256",
        ));
    }
    let event = header("x-github-event").unwrap_or("push");
    match event {
        "ping" => return Ok((StatusCode::OK, Json(json!({"ok": true, "event": "ping"})))),
        "push" => {}
        other => {
            return Ok((
                StatusCode::OK,
                Json(json!({"ok": true, "event": other, "deploying": false})),
            ))
        }
    }
    let payload: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("push payload is not JSON: {e}")))?;
    let pushed = payload["ref"].as_str().unwrap_or_default();
    let tracked = format!("refs/heads/{}", tenant.branch);
    if pushed != tracked {
        return Ok((
            StatusCode::OK,
            Json(json!({
                "ok": true, "event": "push", "deploying": false,
                "reason": format!("{pushed} is not the tracked branch {}", tenant.branch),
            })),
        ));
    }
    if tenant.repo.is_none() {
        return Err(ApiError::bad_request(
            "this tenant has no repository to deploy from",
        ));
    }
    let task_state = state.clone();
    tokio::spawn(async move {
        match deploy(&task_state, &tenant_name, Change::Sync).await {
            Ok(d) => {
                tracing::info!(tenant = %tenant_name, version = %d.version, "deployed by push");
                crate::audit::audit(
                    &task_state,
                    "webhook",
                    "deploy.push",
                    Some(tenant_name.as_str()),
                    json!({"version": d.version.as_str()}),
                )
                .await;
            }
            Err(e) => {
                tracing::warn!(tenant = %tenant_name, error = %e.message, "push deploy failed")
            }
        }
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"ok": true, "event": "push", "deploying": true})),
    ))
}
