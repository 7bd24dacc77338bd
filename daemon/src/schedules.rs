//! `/v1/schedules`: jobs on a cron schedule, for tokens with the `jobs` scope.
//!
//! `POST /v1/schedules {"cron", "body": {"fn", …keyword arguments}, "version"?}` creates one
//! (`201`); `GET /v1/schedules` lists the tenant's, `GET /v1/schedules/{id}` shows one,
//! `POST /v1/schedules/{id}/pause` and `/resume` pause and resume it, `DELETE` removes it. What
//! a schedule does is `falra_core::schedules`'.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use falra_core::schedules::{self, Create, ScheduleError};
use falra_policies::Scope;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api_error::ApiError;
use crate::auth::tenant_caller;
use crate::call::CallRequest;
use crate::extract::{bearer, BodyReader};
use crate::server::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewSchedule)]
pub struct CreateBody {
    /// Five fields, or six with seconds first; UTC.
    cron: String,
    /// The job's body, as `POST /v1/jobs` takes it (without a token).
    #[schema(value_type = crate::schemas::CallBody)]
    body: Value,
    version: Option<String>,
}

/// `POST /v1/schedules`.
#[utoipa::path(
    post,
    path = "/v1/schedules",
    operation_id = "schedules_create",
    tag = "schedules",
    summary = "Run a job on a cron schedule",
    request_body = CreateBody,
    responses((status = 201, description = "The schedule", body = crate::schemas::Schedule), (status = 400, description = "A bad cron, body or version", body = crate::schemas::Error), (status = 409, description = "The tenant has 100 schedules", body = crate::schemas::Error), (status = 413, description = "payload_too_large", body = crate::schemas::Error), crate::schemas::TenantErrors),
    security(("tenant" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // The token is checked before the body is read.
    let mut reader = BodyReader::new(body, &state);
    let caller = match tenant_caller(&state, bearer(&headers), Scope::Jobs).await {
        Ok(caller) => caller,
        Err(e) => return Err(reader.refuse(e).await),
    };
    let bytes = reader.finish().await?;
    let body: CreateBody = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    if body.body.get("token").is_some() {
        return Err(ApiError::bad_request(
            "a schedule's body carries no token: it runs as the schedule's",
        )
        .with_detail(json!({"field": "body.token"})));
    }
    let request = CallRequest::parse(body.body.to_string().as_bytes()).map_err(|e| {
        let detail = e.detail.clone();
        let mut e = ApiError::bad_request(format!("body: {}", e.message));
        if let Some(Value::Object(d)) = detail {
            let d = d
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) => (k, json!(format!("body.{s}"))),
                    other => (k, other),
                })
                .collect();
            e = e.with_detail(Value::Object(d));
        }
        e
    })?;
    let version = match body.version.as_deref() {
        Some(v) => {
            Some(crate::tenant_api::resolve_version(&state, &caller.tenant, v, "field").await?)
        }
        None => None,
    };
    let row = schedules::create(
        &state,
        &caller,
        Create {
            cron: body.cron,
            function: request.function,
            kwargs: request.kwargs,
            version,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(schedules::view(&row))))
}

/// `GET /v1/schedules`.
#[utoipa::path(
    get,
    path = "/v1/schedules",
    operation_id = "schedules_list",
    tag = "schedules",
    summary = "List the tenant's schedules",
    responses((status = 200, description = "The schedules", body = crate::schemas::ScheduleList), crate::schemas::TenantErrors),
    security(("tenant" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = tenant_caller(&state, bearer(&headers), Scope::Jobs).await?;
    let rows = schedules::list(&state, &caller.tenant).await?;
    Ok(Json(
        json!({"schedules": rows.iter().map(schedules::view).collect::<Vec<_>>()}),
    ))
}

/// `GET /v1/schedules/{id}`.
#[utoipa::path(
    get,
    path = "/v1/schedules/{id}",
    operation_id = "schedules_show",
    tag = "schedules",
    summary = "A schedule",
    params(("id" = String, Path, description = "Its id")),
    responses((status = 400, description = "A malformed path parameter (a tenant, module or secret name)", body = crate::schemas::Error), (status = 200, description = "The schedule", body = crate::schemas::Schedule), (status = 404, description = "not_found", body = crate::schemas::Error), crate::schemas::TenantErrors),
    security(("tenant" = []))
)]
pub async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = tenant_caller(&state, bearer(&headers), Scope::Jobs).await?;
    let row = schedules::get(&state, &caller.tenant, &id).await?;
    Ok(Json(schedules::view(&row)))
}

/// `POST /v1/schedules/{id}/pause`.
#[utoipa::path(
    post,
    path = "/v1/schedules/{id}/pause",
    operation_id = "schedules_pause",
    tag = "schedules",
    summary = "Stop a schedule's ticks from making jobs",
    params(("id" = String, Path, description = "Its id")),
    responses((status = 400, description = "A malformed path parameter (a tenant, module or secret name)", body = crate::schemas::Error), (status = 200, description = "The schedule", body = crate::schemas::Schedule), (status = 404, description = "not_found", body = crate::schemas::Error), crate::schemas::TenantErrors),
    security(("tenant" = []))
)]
pub async fn pause(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(state, headers, id, true).await
}

/// `POST /v1/schedules/{id}/resume`.
#[utoipa::path(
    post,
    path = "/v1/schedules/{id}/resume",
    operation_id = "schedules_resume",
    tag = "schedules",
    summary = "Start a paused schedule again from its next tick",
    params(("id" = String, Path, description = "Its id")),
    responses((status = 400, description = "A malformed path parameter (a tenant, module or secret name)", body = crate::schemas::Error), (status = 200, description = "The schedule", body = crate::schemas::Schedule), (status = 404, description = "not_found", body = crate::schemas::Error), crate::schemas::TenantErrors),
    security(("tenant" = []))
)]
pub async fn resume(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(state, headers, id, false).await
}

async fn set_paused(
    state: AppState,
    headers: HeaderMap,
    id: String,
    paused: bool,
) -> Result<Json<Value>, ApiError> {
    let caller = tenant_caller(&state, bearer(&headers), Scope::Jobs).await?;
    let row = schedules::set_paused(&state, &caller.tenant, &id, paused).await?;
    Ok(Json(schedules::view(&row)))
}

/// `DELETE /v1/schedules/{id}`: the jobs it queued stay.
#[utoipa::path(
    delete,
    path = "/v1/schedules/{id}",
    operation_id = "schedules_remove",
    tag = "schedules",
    summary = "Remove a schedule (its jobs stay)",
    params(("id" = String, Path, description = "Its id")),
    responses((status = 400, description = "A malformed path parameter (a tenant, module or secret name)", body = crate::schemas::Error), (status = 200, description = "Removed", body = crate::schemas::ScheduleRemoved), (status = 404, description = "not_found", body = crate::schemas::Error), crate::schemas::TenantErrors),
    security(("tenant" = []))
)]
pub async fn remove(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = tenant_caller(&state, bearer(&headers), Scope::Jobs).await?;
    schedules::remove(&state, &caller.tenant, &id).await?;
    Ok(Json(json!({"removed": id})))
}

impl From<ScheduleError> for ApiError {
    fn from(e: ScheduleError) -> ApiError {
        let message = e.to_string();
        match e {
            ScheduleError::BadCron { .. } | ScheduleError::NeverFires(_) => {
                ApiError::bad_request(message).with_detail(json!({"field": "cron"}))
            }
            ScheduleError::NotFound(_) => ApiError::not_found(message),
            ScheduleError::TooMany => ApiError::new(crate::api_error::ErrorCode::Conflict, message),
            ScheduleError::Store(e) => e.into(),
        }
    }
}
