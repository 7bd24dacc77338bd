//! Push to deploy: `POST /hooks/github/{tenant}`, GitHub's push webhook.
//!
//! The request must carry `X-Hub-Signature-256` made with the tenant's `webhook_secret`
//! (checked in constant time over the raw body). `ping` is answered; a `push` to the tenant's
//! tracked branch starts a sync in the background (the new version becomes active when it is
//! ready, exactly as `POST /admin/v1/tenants/{name}/sync` would make it); pushes to other
//! branches and other events are acknowledged and ignored.
//!
//! A delivery is taken once: a replay of the same `X-GitHub-Delivery` (GitHub's redelivery, or
//! an attacker who captured a signed request) is acknowledged and starts nothing. Pushes are
//! coalesced: while one push deploy runs and another waits, the waiting one will fetch the
//! branch head as it is then, so a further push adds no work.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use falra_policies::webhook::verify_github_signature;
use serde_json::{json, Value};

use crate::admin::load_tenant;
use crate::api_error::{ApiError, ErrorCode};
use crate::extract::{ApiPath, LimitedBody};
use crate::server::AppState;
use falra_core::deploy::{deploy_in, Change};

/// How many recent deliveries are remembered (a replay older than that is a new deploy of the
/// branch head, which changes nothing if the head did not move).
const DELIVERIES_KEPT: usize = 4096;

/// Recently taken push deliveries, per tenant, oldest dropped first.
#[derive(Debug, Default)]
pub struct RecentDeliveries(std::sync::Mutex<Seen>);

/// A (tenant, delivery id) pair, in arrival order and as a set.
type Seen = (
    std::collections::VecDeque<(String, String)>,
    std::collections::HashSet<(String, String)>,
);

impl RecentDeliveries {
    /// Records `id` for `tenant`; false if it was already there.
    pub fn first_time(&self, tenant: &str, id: &str) -> bool {
        let key = (tenant.to_owned(), id.to_owned());
        let mut seen = self.0.lock().expect("delivery table poisoned");
        if seen.1.contains(&key) {
            return false;
        }
        if seen.0.len() >= DELIVERIES_KEPT {
            if let Some(old) = seen.0.pop_front() {
                seen.1.remove(&old);
            }
        }
        seen.0.push_back(key.clone());
        seen.1.insert(key);
        true
    }
}

#[utoipa::path(
    post,
    path = "/hooks/github/{tenant}",
    operation_id = "hooks_github",
    tag = "code",
    summary = "GitHub push webhook (X-Hub-Signature-256 checked)",
    params(("tenant" = String, Path, description = "A tenant name")),
    request_body(content = serde_json::Value, description = "GitHub's push or ping event (JSON, or form-encoded with a payload field)"),
    responses((status = 400, description = "A malformed path parameter (a tenant, module or secret name)", body = crate::schemas::Error), (status = 200, description = "ping answered or push ignored", body = crate::schemas::HookAnswer), (status = 401, description = "Missing or wrong signature", body = crate::schemas::Error), (status = 403, description = "The tenant has no webhook_secret", body = crate::schemas::Error), (status = 404, description = "No such tenant", body = crate::schemas::Error), (status = 202, description = "Push to the tracked branch: deploying in the background", body = crate::schemas::HookAnswer))
)]
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
    let secret = falra_core::secrets::open_webhook_secret(&state, &tenant_name, stored)?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if !verify_github_signature(&secret, &body, header("x-hub-signature-256")) {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "missing or wrong X-Hub-Signature-256",
        ));
    }
    let Some(event) = header("x-github-event") else {
        return Err(ApiError::bad_request(
            "no X-GitHub-Event header: this endpoint takes GitHub's webhook deliveries",
        )
        .with_detail(json!({"header": "X-GitHub-Event"})));
    };
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
    let payload = payload(header("content-type"), &body)?;
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
    if let Some(delivery) = header("x-github-delivery").filter(|d| !d.is_empty() && d.len() <= 128)
    {
        if !state
            .http()
            .deliveries
            .first_time(tenant_name.as_str(), delivery)
        {
            return Ok((
                StatusCode::OK,
                Json(json!({
                    "ok": true, "event": "push", "deploying": false,
                    "reason": "this delivery was already received",
                })),
            ));
        }
    }
    let Some(slot) = state.deploy_slots.try_take(&tenant_name) else {
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "ok": true, "event": "push", "deploying": true, "coalesced": true,
                "reason": "a deploy of this tenant is already waiting; it will take this push",
            })),
        ));
    };
    let task_state = state.clone();
    let origin = crate::server::client_addr();
    let commit = payload["after"]
        .as_str()
        .map(|c| c.chars().take(64).collect::<String>());
    falra_runtime::task::spawn(falra_core::audit::with_origin(origin, async move {
        let log = falra_core::deploy::DeployLog::new();
        let outcome = deploy_in(
            &task_state,
            &tenant_name,
            Change::Sync,
            slot,
            false,
            log.clone(),
        )
        .await;
        match &outcome {
            Ok(d) => {
                tracing::info!(tenant = %tenant_name, version = %d.version, "deployed by push")
            }
            Err(e) => {
                tracing::warn!(tenant = %tenant_name, error = %crate::api_error::ErrorChain(e), "push deploy failed")
            }
        }
        // The answer went long ago; what the deploy came to is in the audit log.
        let _ = crate::audit::audit_deploy(
            &task_state,
            "webhook",
            "deploy.push",
            &tenant_name,
            outcome,
            &log,
            json!({"commit": commit}),
        )
        .await;
    }));
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"ok": true, "event": "push", "deploying": true})),
    ))
}

/// The push event's payload: the body itself (`application/json`, GitHub's choice for new
/// hooks) or the `payload` field of a form (`application/x-www-form-urlencoded`, its default).
fn payload(content_type: Option<&str>, body: &[u8]) -> Result<Value, ApiError> {
    let media = content_type
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase());
    let json_text: std::borrow::Cow<'_, [u8]> = match media.as_deref() {
        Some("application/x-www-form-urlencoded") => {
            let field = url::form_urlencoded::parse(body)
                .find(|(k, _)| k == "payload")
                .map(|(_, v)| v.into_owned())
                .ok_or_else(|| {
                    ApiError::bad_request("a form-encoded push has no payload field")
                        .with_detail(json!({"field": "payload"}))
                })?;
            field.into_bytes().into()
        }
        _ => body.into(),
    };
    serde_json::from_slice(&json_text)
        .map_err(|e| ApiError::bad_request(format!("push payload is not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn payloads_come_as_json_or_as_a_form_field() {
        let p = super::payload(Some("application/json"), br#"{"ref": "refs/heads/main"}"#);
        assert_eq!(p.unwrap()["ref"], "refs/heads/main");
        let form = b"payload=%7B%22ref%22%3A%22refs%2Fheads%2Fmain%22%7D";
        let p = super::payload(
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            form,
        );
        assert_eq!(p.unwrap()["ref"], "refs/heads/main");
        assert!(super::payload(Some("application/x-www-form-urlencoded"), b"x=1").is_err());
        assert!(super::payload(None, b"payload=1").is_err());
    }

    #[test]
    fn a_delivery_is_taken_once_per_tenant_and_the_table_is_bounded() {
        let seen = super::RecentDeliveries::default();
        assert!(seen.first_time("caro", "d1"));
        assert!(!seen.first_time("caro", "d1"));
        assert!(seen.first_time("dana", "d1"));
        for i in 0..super::DELIVERIES_KEPT {
            assert!(seen.first_time("caro", &format!("x{i}")));
        }
        assert!(seen.0.lock().unwrap().0.len() <= super::DELIVERIES_KEPT);
        // The oldest were forgotten.
        assert!(seen.first_time("caro", "d1"));
    }
}
