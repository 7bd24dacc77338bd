//! `/v1/jobs`: background jobs over HTTP, for tokens with the `jobs` scope.
//!
//! `POST /v1/jobs` takes a call's body (and its token the same ways) with the job's options in
//! the query (`version`, `max_attempts`, `callback_url`) and an `Idempotency-Key` header, and answers `202`
//! with the job; a key the tenant used before answers `200` with the first job. `GET
//! /v1/jobs/{id}` shows a job (with the call's answer once it ended), `GET /v1/jobs` lists them
//! (`status`, `limit`, `cursor`), `DELETE /v1/jobs/{id}` cancels one. What a job does is
//! `falra_core::jobs`'.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use falra_core::jobs::{self, Submit};
use falra_policies::Scope;
use falra_store::{JobFilter, JobStatus};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin::load_tenant;
use crate::api_error::{ApiError, ErrorCode};
use crate::audit::audit;
use crate::auth::{tenant_caller, Operator};
use crate::extract::{bearer, ApiPath, ApiQuery};
use crate::server::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SubmitQuery {
    /// Pin a version.
    version: Option<String>,
    /// Attempts for failures of the node.
    #[param(minimum = 1, maximum = 10)]
    max_attempts: Option<u32>,
    /// POSTed the job once it ends, signed with the tenant's webhook secret.
    callback_url: Option<String>,
}

/// `POST /v1/jobs`.
#[utoipa::path(
    post,
    path = "/v1/jobs",
    operation_id = "jobs_submit",
    tag = "jobs",
    summary = "Run a function in the background",
    params(SubmitQuery, ("Idempotency-Key" = Option<String>, Header, description = "A resubmission with a key the tenant used before returns the first job")),
    request_body = crate::schemas::CallBody,
    responses((status = 202, description = "The job, queued", body = crate::schemas::Job), (status = 200, description = "The job submitted before with this Idempotency-Key", body = crate::schemas::Job), (status = 400, description = "Malformed body, fn, parameter or Idempotency-Key", body = crate::schemas::Error), (status = 413, description = "payload_too_large", body = crate::schemas::Error), crate::schemas::TenantErrors),
    security(("tenant" = []))
)]
pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<ApiQuery<SubmitQuery>, ApiError>,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let ApiQuery(query) = query?;
    let idempotency_key = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| jobs::JobError::BadIdempotencyKey)?
                .to_owned(),
        ),
        None => None,
    };
    let (request, _, caller) =
        crate::call::authenticated_request(&state, &headers, body, Scope::Jobs).await?;
    tracing::Span::current().record("tenant", caller.tenant.as_str());
    let version = match query.version.as_deref() {
        Some(v) => {
            Some(crate::tenant_api::resolve_version(&state, &caller.tenant, v, "parameter").await?)
        }
        None => None,
    };
    let (job, created) = jobs::submit(
        &state,
        &caller,
        Submit {
            function: request.function,
            kwargs: request.kwargs,
            version,
            idempotency_key,
            callback_url: query.callback_url,
            max_attempts: query.max_attempts,
        },
    )
    .await?;
    let status = if created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(jobs::view(&job))))
}

/// `GET /v1/jobs/{id}`.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    operation_id = "jobs_show",
    tag = "jobs",
    summary = "A job, with the call's answer once it ended",
    params(("id" = String, Path, description = "Its id")),
    responses((status = 400, description = "A malformed path parameter (a tenant, module or secret name)", body = crate::schemas::Error), (status = 200, description = "The job", body = crate::schemas::Job), (status = 404, description = "not_found", body = crate::schemas::Error), crate::schemas::TenantErrors),
    security(("tenant" = []))
)]
pub async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = tenant_caller(&state, bearer(&headers), Scope::Jobs).await?;
    let job = jobs::get(&state, &caller.tenant, &id).await?;
    Ok(Json(jobs::view(&job)))
}

/// `DELETE /v1/jobs/{id}`: cancels the job unless it has ended; the job as it is then.
#[utoipa::path(
    delete,
    path = "/v1/jobs/{id}",
    operation_id = "jobs_cancel",
    tag = "jobs",
    summary = "Cancel a job (its processes stop within a second on whichever node runs it)",
    params(("id" = String, Path, description = "Its id")),
    responses((status = 400, description = "A malformed path parameter (a tenant, module or secret name)", body = crate::schemas::Error), (status = 200, description = "The job as it is after the cancel", body = crate::schemas::Job), (status = 404, description = "not_found", body = crate::schemas::Error), crate::schemas::TenantErrors),
    security(("tenant" = []))
)]
pub async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = tenant_caller(&state, bearer(&headers), Scope::Jobs).await?;
    let job = jobs::cancel(&state, &caller.tenant, &id).await?;
    Ok(Json(jobs::view(&job)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    #[param(value_type = Option<crate::schemas::JobStatus>)]
    status: Option<String>,
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// `GET /v1/jobs`: the tenant's jobs, newest first; `next_cursor` fetches the next page.
#[utoipa::path(
    get,
    path = "/v1/jobs",
    operation_id = "jobs_list",
    tag = "jobs",
    summary = "List the tenant's jobs, newest first",
    params(ListQuery),
    responses((status = 200, description = "A page of jobs", body = crate::schemas::JobList), (status = 400, description = "A bad status, limit or cursor", body = crate::schemas::Error), crate::schemas::TenantErrors),
    security(("tenant" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<ApiQuery<ListQuery>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let ApiQuery(query) = query?;
    let caller = tenant_caller(&state, bearer(&headers), Scope::Jobs).await?;
    list_page(&state, &caller.tenant, &query).await
}

/// One page of a tenant's jobs, as both the tenant's and the operator's listing answer it.
async fn list_page(
    state: &AppState,
    tenant: &falra_tenants::TenantName,
    query: &ListQuery,
) -> Result<Json<Value>, ApiError> {
    let status = match query.status.as_deref() {
        Some(s) => Some(JobStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "status must be one of queued, running, succeeded, failed, cancelled",
            )
            .with_detail(json!({"parameter": "status"}))
        })?),
        None => None,
    };
    let (limit, before) =
        crate::extract::page_parameters(query.limit, query.cursor.as_deref(), job_id_ok)?;
    let page = jobs::list(
        state,
        tenant,
        &JobFilter {
            status,
            limit,
            before,
        },
    )
    .await?;
    let next = crate::extract::next_cursor(
        page.len(),
        limit,
        page.last().map(|j| (j.created_at, j.id.as_str())),
    );
    Ok(Json(json!({
        "jobs": page.iter().map(jobs::view).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}

/// `GET /admin/v1/tenants/{name}/jobs`: a tenant's jobs, as `GET /v1/jobs` lists them.
#[utoipa::path(
    get,
    path = "/admin/v1/tenants/{name}/jobs",
    operation_id = "admin_list_jobs",
    tag = "jobs",
    summary = "List a tenant's jobs, newest first",
    params(("name" = String, Path, description = "A tenant name"), ListQuery),
    responses((status = 200, description = "A page of jobs", body = crate::schemas::JobList), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn admin_list(
    _op: Operator,
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    query: Result<ApiQuery<ListQuery>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let ApiQuery(query) = query?;
    let (tenant, _) = load_tenant(&state, &name).await?;
    list_page(&state, &tenant, &query).await
}

/// `GET /admin/v1/tenants/{name}/jobs/{id}`.
#[utoipa::path(
    get,
    path = "/admin/v1/tenants/{name}/jobs/{id}",
    operation_id = "admin_show_job",
    tag = "jobs",
    summary = "A tenant's job, with the call's answer once it ended",
    params(("name" = String, Path, description = "A tenant name"), ("id" = String, Path, description = "The job's id")),
    responses((status = 200, description = "The job", body = crate::schemas::Job), (status = 404, description = "not_found", body = crate::schemas::Error), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn admin_show(
    _op: Operator,
    State(state): State<AppState>,
    ApiPath((name, id)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (tenant, _) = load_tenant(&state, &name).await?;
    let job = jobs::get(&state, &tenant, &id).await?;
    Ok(Json(jobs::view(&job)))
}

/// `DELETE /admin/v1/tenants/{name}/jobs/{id}`: an operator cancels a tenant's job.
#[utoipa::path(
    delete,
    path = "/admin/v1/tenants/{name}/jobs/{id}",
    operation_id = "admin_cancel_job",
    tag = "jobs",
    summary = "Cancel a tenant's job (its processes stop within a second on whichever node runs it)",
    params(("name" = String, Path, description = "A tenant name"), ("id" = String, Path, description = "The job's id")),
    responses((status = 200, description = "The job as it is after the cancel", body = crate::schemas::Job), (status = 404, description = "not_found", body = crate::schemas::Error), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn admin_cancel(
    op: Operator,
    State(state): State<AppState>,
    ApiPath((name, id)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (tenant, _) = load_tenant(&state, &name).await?;
    let job = jobs::cancel(&state, &tenant, &id).await?;
    audit(
        &state,
        &op.token_id,
        "job.cancel",
        Some(tenant.as_str()),
        json!({"job": job.id}),
    )
    .await;
    Ok(Json(jobs::view(&job)))
}

/// Whether `id` may be a job's id, as the id half of a cursor (`<created_at ms>.<job id>`).
fn job_id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl From<jobs::JobError> for ApiError {
    fn from(e: jobs::JobError) -> ApiError {
        use jobs::JobError;
        let message = e.to_string();
        match e {
            JobError::NotFound(_) => ApiError::not_found(message),
            JobError::BadAttempts => {
                ApiError::bad_request(message).with_detail(json!({"parameter": "max_attempts"}))
            }
            JobError::BadCallback(_) => {
                ApiError::bad_request(message).with_detail(json!({"parameter": "callback_url"}))
            }
            JobError::BadIdempotencyKey => ApiError::new(ErrorCode::BadRequest, message)
                .with_detail(json!({"header": "Idempotency-Key"})),
            JobError::Store(e) => e.into(),
        }
    }
}

/// How a failed job's answer is written: exactly as the call's would be.
pub fn describe() -> falra_core::jobs::Describe {
    std::sync::Arc::new(|e, call_id| {
        let mut error = ApiError::from(e);
        error.call_id = Some(call_id.to_owned());
        error.body()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_junk_is_refused() {
        let cursor = crate::extract::next_cursor(1, 1, Some((12, "j_ab"))).unwrap();
        assert_eq!(
            crate::extract::page_parameters(None, Some(&cursor), job_id_ok).unwrap(),
            (50, Some((12, "j_ab".into())))
        );
        for bad in ["", "x.j_1", "12", "12.j-1;drop", "12."] {
            assert!(
                crate::extract::page_parameters(None, Some(bad), job_id_ok).is_err(),
                "{bad}"
            );
        }
    }
}
