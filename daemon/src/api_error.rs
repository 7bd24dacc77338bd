//! The one error type of the HTTP API, and the table from error code to HTTP status.
//!
//! Every failure a client can see is an [`ApiError`] with a stable [`ErrorCode`]; the answer is
//! always `{"ok": false, "error": {"code", "message", "detail"?}, "call_id"?}`. The table in
//! [`status`] is exhaustive: adding a code without a status does not compile.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

pub use falra_core::ErrorCode;

/// The HTTP status of each code: the table of DESIGN.md, plus the operator API's own codes.
pub fn status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized | ErrorCode::TokenExpired | ErrorCode::TokenRevoked => {
            StatusCode::UNAUTHORIZED
        }
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound | ErrorCode::FnNotFound => StatusCode::NOT_FOUND,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::NotDeployed | ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        ErrorCode::FunctionError
        | ErrorCode::ResultNotSerializable
        | ErrorCode::ResultTooLarge
        | ErrorCode::MemoryLimitExceeded
        | ErrorCode::ProcessExited
        | ErrorCode::SyncFailed => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::RateLimited | ErrorCode::ConcurrencyLimited | ErrorCode::QuotaExceeded => {
            StatusCode::TOO_MANY_REQUESTS
        }
        ErrorCode::Overloaded | ErrorCode::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error answer. Boxed, so `Result<_, ApiError>` stays one pointer wide on the happy path.
#[derive(Debug, Clone)]
pub struct ApiError(Box<ApiErrorFields>);

#[derive(Debug, Clone)]
pub struct ApiErrorFields {
    pub code: ErrorCode,
    pub message: String,
    pub detail: Option<Value>,
    /// Set on answers to calls, so a failed call can be found in the logs.
    pub call_id: Option<String>,
    /// Extra fields of a call's answer (the function's logs), beside `error`.
    pub logs: Option<String>,
    /// What a failed call used, beside `error`.
    pub usage: Option<falra_core::calls::Usage>,
    /// Seconds after which a retry may succeed (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl std::ops::Deref for ApiError {
    type Target = ApiErrorFields;
    fn deref(&self) -> &ApiErrorFields {
        &self.0
    }
}

impl std::ops::DerefMut for ApiError {
    fn deref_mut(&mut self) -> &mut ApiErrorFields {
        &mut self.0
    }
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError(Box::new(ApiErrorFields {
            code,
            message: message.into(),
            detail: None,
            call_id: None,
            logs: None,
            usage: None,
            retry_after: None,
        }))
    }

    pub fn with_retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds.max(1));
        self
    }

    pub fn with_detail(mut self, detail: Value) -> ApiError {
        self.detail = Some(detail);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NotFound, message)
    }

    /// A falra bug or an environment failure: logged with its cause, answered without it.
    pub fn internal(context: &str, cause: &(dyn std::error::Error + 'static)) -> ApiError {
        tracing::error!(error = %ErrorChain(cause), "{context}");
        ApiError::new(ErrorCode::Internal, format!("internal error: {context}"))
    }

    pub fn body(&self) -> Value {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            ok: bool,
            error: Error<'a>,
            #[serde(skip_serializing_if = "Option::is_none")]
            call_id: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            logs: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            usage: Option<falra_core::calls::Usage>,
        }
        #[derive(serde::Serialize)]
        struct Error<'a> {
            code: &'static str,
            message: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            detail: Option<&'a Value>,
        }
        let body = Body {
            ok: false,
            error: Error {
                code: self.code.as_str(),
                message: &self.message,
                detail: self.detail.as_ref(),
            },
            call_id: self.call_id.as_deref(),
            logs: self.logs.as_deref(),
            usage: self.usage,
        };
        serde_json::to_value(body).expect("an error body serialises")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status(self.code);
        let mut response = (status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&seconds.to_string()).expect("digits are a header value"),
            );
        }
        if self.code == ErrorCode::Unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"falra\""),
            );
        }
        response
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        match e {
            crate::store::StoreError::Conflict(what) => {
                ApiError::new(ErrorCode::Conflict, format!("{what} already exists"))
            }
            crate::store::StoreError::InUse(what) => ApiError::new(ErrorCode::Conflict, what),
            crate::store::StoreError::Busy(e) => {
                tracing::warn!(error = %e, "store busy");
                ApiError::new(
                    ErrorCode::Overloaded,
                    "the store is busy with other writes; try again shortly",
                )
                .with_retry_after(1)
            }
            // The row's key and what is wrong with it are the operator's to fix: said, not
            // hidden behind "internal error".
            crate::store::StoreError::InvalidRow { .. } => {
                tracing::error!(error = %e, "invalid stored row refused");
                ApiError::new(ErrorCode::Internal, e.to_string())
            }
            other => ApiError::internal("the store failed", &other),
        }
    }
}

// Domain errors become answers here, and only here.

impl From<falra_core::metering::QuotaError> for ApiError {
    fn from(e: falra_core::metering::QuotaError) -> ApiError {
        use falra_core::metering::QuotaError;
        match e {
            QuotaError::Exceeded {
                quota_seconds,
                used_ms,
                renews_at,
                wait_seconds,
            } => ApiError::new(ErrorCode::QuotaExceeded, e.to_string())
                .with_detail(serde_json::json!({
                    "cpu_seconds_per_month": quota_seconds,
                    "used_cpu_ms": used_ms,
                    "renews_at": falra_core::clock::format_ms(renews_at),
                }))
                .with_retry_after(wait_seconds),
            QuotaError::Store(e) => e.into(),
        }
    }
}

impl From<falra_core::deploy::DeployError> for ApiError {
    fn from(e: falra_core::deploy::DeployError) -> ApiError {
        use falra_core::deploy::DeployError;
        use serde_json::json;
        let message = e.to_string();
        match e {
            DeployError::Queued(_) => ApiError::new(ErrorCode::Conflict, message)
                .with_detail(json!({"reason": "deploy_queued"}))
                .with_retry_after(5),
            DeployError::NoTenant(_) => ApiError::not_found(message),
            DeployError::NoRepository(_) => {
                ApiError::bad_request(message).with_detail(json!({"field": "repo"}))
            }
            DeployError::Broken { modules } => ApiError::new(ErrorCode::SyncFailed, message)
                .with_detail(json!({"reason": "modules_broken", "modules": modules, "force": "pass force=true to activate it anyway"})),
            DeployError::WouldReplace { module, path } => ApiError::new(ErrorCode::Conflict, message)
                .with_detail(json!({"module": module.as_str(), "path": path, "reason": "replaces_repository_module"})),
            DeployError::NoUpload { module, .. } => {
                ApiError::not_found(message).with_detail(json!({"module": module.as_str()}))
            }
            DeployError::BadUpload { module, line, .. } => ApiError::bad_request(message)
                .with_detail(json!({"module": module.as_str(), "line": line})),
            DeployError::Failed { detail, .. } => {
                let e = ApiError::new(ErrorCode::SyncFailed, message);
                match detail {
                    Some(d) => e.with_detail(d),
                    None => e,
                }
            }
            DeployError::Quota(e) => e.into(),
            DeployError::Credentials(e) => e.into(),
            DeployError::Store(e) => e.into(),
            DeployError::Run(e) => e.into(),
            DeployError::Node { context, source } => ApiError::internal(context, &*source),
        }
    }
}

impl From<falra_core::builtin::BuiltinError> for ApiError {
    fn from(e: falra_core::builtin::BuiltinError) -> ApiError {
        use falra_core::builtin::BuiltinError;
        use serde_json::json;
        let message = e.to_string();
        match e {
            BuiltinError::NoSuchBuiltin(f) => ApiError::new(ErrorCode::FnNotFound, message)
                .with_detail(json!({"module": f.module(), "function": f.function()})),
            BuiltinError::NotAllowed(_) => ApiError::new(ErrorCode::Forbidden, message)
                .with_detail(json!({"policy": "builtins"})),
            BuiltinError::BadRequest { detail, .. } => {
                ApiError::bad_request(message).with_detail(detail)
            }
            BuiltinError::Forbidden { detail, .. } => {
                ApiError::new(ErrorCode::Forbidden, message).with_detail(detail)
            }
            BuiltinError::OutOfMemory(_) => ApiError::new(ErrorCode::MemoryLimitExceeded, message),
            BuiltinError::TimedOut(timeout_ms) => ApiError::new(ErrorCode::Timeout, message)
                .with_detail(json!({"timeout_ms": timeout_ms})),
            BuiltinError::Failed {
                type_name,
                message: what,
                detail,
            } => ApiError::new(ErrorCode::FunctionError, message).with_detail(json!({
                "type": type_name, "message": what, "traceback": "", "where": detail
            })),
            BuiltinError::NoAnswer { exit_code, signal } => {
                ApiError::new(ErrorCode::ProcessExited, message)
                    .with_detail(json!({"exit_code": exit_code, "signal": signal}))
            }
            BuiltinError::Secret(e) => e.into(),
            BuiltinError::Run(e) => e.into(),
            BuiltinError::OutputDir(source) => {
                ApiError::internal("could not prepare the output directory", &source)
            }
        }
    }
}

impl From<falra_core::secrets::SecretUseError> for ApiError {
    fn from(e: falra_core::secrets::SecretUseError) -> ApiError {
        use falra_core::secrets::SecretUseError;
        match e {
            SecretUseError::Store(e) => e.into(),
            SecretUseError::BadGitSecret => ApiError::bad_request(e.to_string())
                .with_detail(serde_json::json!({"field": "value"})),
            other => ApiError::internal(&other.to_string(), &other),
        }
    }
}

impl From<falra_runtime::RunError> for ApiError {
    fn from(e: falra_runtime::RunError) -> ApiError {
        // The node's own failure: logged with its causes, answered without them.
        ApiError::internal(&e.to_string(), &e)
    }
}

impl From<falra_core::auth::AuthError> for ApiError {
    fn from(e: falra_core::auth::AuthError) -> ApiError {
        use falra_core::auth::AuthError;
        let message = e.to_string();
        match e {
            AuthError::NoToken | AuthError::Unknown => {
                ApiError::new(ErrorCode::Unauthorized, message)
            }
            AuthError::Revoked => ApiError::new(ErrorCode::TokenRevoked, message),
            AuthError::Expired(_) => ApiError::new(ErrorCode::TokenExpired, message),
            AuthError::WrongKind(_) => ApiError::new(ErrorCode::Forbidden, message),
            AuthError::MissingScope(scope) => ApiError::new(ErrorCode::Forbidden, message)
                .with_detail(serde_json::json!({"required_scope": scope.as_str()})),
            AuthError::Corrupt => ApiError::new(ErrorCode::Internal, message),
            AuthError::Store(e) => e.into(),
        }
    }
}

impl From<falra_core::console::SessionError> for ApiError {
    fn from(e: falra_core::console::SessionError) -> ApiError {
        use falra_core::console::SessionError;
        let message = e.to_string();
        match e {
            SessionError::Unknown
            | SessionError::SignedOut
            | SessionError::Expired
            | SessionError::TokenEnded => ApiError::new(ErrorCode::Unauthorized, message),
            SessionError::Store(e) => e.into(),
        }
    }
}

impl From<falra_core::plans::PlanError> for ApiError {
    fn from(e: falra_core::plans::PlanError) -> ApiError {
        use falra_core::plans::PlanError;
        use serde_json::json;
        let message = e.to_string();
        match e {
            PlanError::NoSuchPlan(_) => {
                ApiError::bad_request(message).with_detail(json!({"field": "plan"}))
            }
            PlanError::BadName(_) => {
                ApiError::bad_request(message).with_detail(json!({"field": "name"}))
            }
            PlanError::BadPolicy(e) => {
                ApiError::bad_request(message).with_detail(json!({"field": e.field()}))
            }
            PlanError::DefaultPlan => ApiError::new(ErrorCode::Conflict, message),
            PlanError::NotFound(_) => ApiError::not_found(message),
            PlanError::Store(e) => e.into(),
        }
    }
}

impl From<falra_core::secrets::SecretSetError> for ApiError {
    fn from(e: falra_core::secrets::SecretSetError) -> ApiError {
        use falra_core::secrets::SecretSetError;
        use serde_json::json;
        match e {
            SecretSetError::BadKey(message) => {
                ApiError::bad_request(message).with_detail(json!({"field": "key"}))
            }
            SecretSetError::TooLarge => {
                ApiError::bad_request(e.to_string()).with_detail(json!({"field": "value"}))
            }
            SecretSetError::Invalid(e) => e.into(),
            SecretSetError::NotAVariable(e) => {
                let field = match e {
                    falra_policies::env::EnvError::BadName(_)
                    | falra_policies::env::EnvError::Reserved(_) => "key",
                    _ => "value",
                };
                ApiError::bad_request(e.to_string()).with_detail(json!({"field": field}))
            }
            SecretSetError::Store(e) => e.into(),
        }
    }
}

impl From<falra_policies::env::EnvError> for ApiError {
    fn from(e: falra_policies::env::EnvError) -> ApiError {
        let detail = match e.name() {
            Some(name) => serde_json::json!({"field": name}),
            None => serde_json::json!({"field": "env"}),
        };
        ApiError::bad_request(e.to_string()).with_detail(detail)
    }
}

/// A version reference that names no version, or several commits, as the answer for the
/// request's `key` (`parameter` or `field`) `version`.
pub fn version_ref_error(e: falra_core::versions::VersionRefError, key: &str) -> ApiError {
    use falra_core::versions::VersionRefError;
    use serde_json::json;
    let message = e.to_string();
    match e {
        VersionRefError::NotFound(_) | VersionRefError::Malformed(_) => {
            ApiError::bad_request(message).with_detail(json!({ key: "version" }))
        }
        VersionRefError::Ambiguous { candidates, .. } => ApiError::bad_request(message)
            .with_detail(json!({ key: "version", "candidates": candidates })),
        VersionRefError::Store(e) => e.into(),
    }
}

impl From<falra_core::tenants::TenantError> for ApiError {
    fn from(e: falra_core::tenants::TenantError) -> ApiError {
        use falra_core::tenants::TenantError;
        use serde_json::json;
        let message = e.to_string();
        match e {
            TenantError::NoSuchVersion { version, .. } => {
                ApiError::not_found(message).with_detail(json!({"version": version.as_str()}))
            }
            TenantError::UnknownField(_) => {
                ApiError::bad_request(message).with_detail(json!({"field": "reset"}))
            }
            TenantError::BadPolicy(e) => {
                ApiError::bad_request(message).with_detail(json!({"field": e.field()}))
            }
            TenantError::Node { context, source } => ApiError::internal(context, &*source),
            TenantError::Store(e) => e.into(),
            TenantError::Rebuild(e) => e.into(),
        }
    }
}

impl From<falra_core::calls::CallError> for ApiError {
    fn from(e: falra_core::calls::CallError) -> ApiError {
        use falra_core::calls::CallError;
        use falra_policies::admission::Refusal;
        use serde_json::json;
        let message = e.to_string();
        match e {
            CallError::ShuttingDown => {
                ApiError::new(ErrorCode::ShuttingDown, message).with_retry_after(1)
            }
            CallError::StoppedAtShutdown { usage, logs } => {
                let mut e = ApiError::new(ErrorCode::ShuttingDown, message).with_retry_after(1);
                e.logs = Some(logs);
                e.usage = Some(usage);
                e
            }
            CallError::UnknownTenant => ApiError::new(ErrorCode::Unauthorized, message),
            CallError::Quota(e) => e.into(),
            CallError::Refused {
                refusal,
                calls_per_minute,
            } => match refusal {
                Refusal::RateLimited { retry_after } => ApiError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "this tenant may make {calls_per_minute} calls per minute; try again shortly"
                    ),
                )
                .with_detail(json!({"calls_per_minute": calls_per_minute}))
                .with_retry_after(retry_after.as_secs() + 1),
                Refusal::ConcurrencyLimited { limit } => ApiError::new(
                    ErrorCode::ConcurrencyLimited,
                    format!("this tenant already runs {limit} calls at once, its limit"),
                )
                .with_detail(json!({"max_concurrency": limit}))
                .with_retry_after(1),
                Refusal::Overloaded { limit } => ApiError::new(
                    ErrorCode::Overloaded,
                    format!("this node runs {limit} calls at once, its limit; try again shortly"),
                )
                .with_retry_after(1),
            },
            CallError::NoSuchVersion(_) => {
                ApiError::bad_request(message).with_detail(json!({"parameter": "version"}))
            }
            CallError::NotDeployed => ApiError::new(ErrorCode::NotDeployed, message),
            CallError::FnNotFound { module, .. } => {
                ApiError::new(ErrorCode::FnNotFound, message).with_detail(json!({"module": module}))
            }
            CallError::Builtin(e) => e.into(),
            CallError::Encode(source) => ApiError::internal(&message, &source),
            CallError::Run(e) => e.into(),
            CallError::Materialise(e) => e.into(),
            CallError::Failed(failed) => failure_error(*failed),
            CallError::Secrets(e) => e.into(),
            CallError::Store(e) => e.into(),
        }
    }
}

/// The answer to a function's failure, with its logs.
fn failure_error(failed: falra_core::calls::Failed) -> ApiError {
    use falra_sandbox::ChildFailure;
    use serde_json::json;
    let falra_core::calls::Failed {
        failure,
        logs,
        memory_mb,
        timeout_ms,
        result_cap,
        usage,
    } = failed;
    let code = falra_core::calls::failure_code(&failure);
    let mut e = match failure {
        ChildFailure::FunctionError {
            type_name,
            message,
            traceback,
        } => ApiError::new(code, format!("{type_name}: {message}")).with_detail(json!({
            "type": type_name, "message": message, "traceback": traceback
        })),
        ChildFailure::FnNotFound { message, detail }
        | ChildFailure::ResultNotSerializable { message, detail } => {
            ApiError::new(code, message).with_detail(detail)
        }
        ChildFailure::ResultTooLarge { .. } => ApiError::new(
            code,
            format!("the answer is larger than the limit of {result_cap} bytes"),
        )
        .with_detail(json!({"limit_bytes": result_cap})),
        ChildFailure::ProcessExited {
            exit_code,
            signal,
            reason,
        } => {
            let how = match (exit_code, signal) {
                (_, Some(sig)) => format!("killed by signal {sig}"),
                (Some(code), _) => format!("exit code {code}"),
                _ => "unknown status".to_owned(),
            };
            ApiError::new(code, format!("{reason} ({how})")).with_detail(json!({
                "exit_code": exit_code, "signal": signal, "reason": reason
            }))
        }
        ChildFailure::MemoryLimitExceeded => ApiError::new(
            code,
            format!("the call ran out of its memory limit of {memory_mb} MB and was stopped"),
        )
        .with_detail(json!({"memory_mb": memory_mb})),
        ChildFailure::Timeout => ApiError::new(
            code,
            format!("the call ran over its limit of {timeout_ms} ms and was stopped"),
        )
        .with_detail(json!({"timeout_ms": timeout_ms})),
    };
    e.logs = Some(logs);
    e.usage = Some(usage);
    e
}

pub use falra_runtime::ErrorChain;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_code_has_a_unique_name_and_a_status() {
        let mut names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        assert_eq!(status(ErrorCode::Timeout), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(status(ErrorCode::NotDeployed), StatusCode::CONFLICT);
        // Only `internal` is a 5xx that blames falra itself.
        for code in ErrorCode::ALL {
            if status(code) == StatusCode::INTERNAL_SERVER_ERROR {
                assert_eq!(code, ErrorCode::Internal);
            }
        }
    }

    #[test]
    fn deploy_errors_have_their_codes_and_details() {
        use falra_core::deploy::DeployError;
        let caro = falra_tenants::TenantName::parse("caro").unwrap();
        let module = falra_tenants::ModuleName::from_stored("helpers");
        let cases: Vec<(DeployError, ErrorCode, Option<Value>)> = vec![
            (
                DeployError::Queued(caro.clone()),
                ErrorCode::Conflict,
                Some(json!({"reason": "deploy_queued"})),
            ),
            (
                DeployError::NoTenant(caro.clone()),
                ErrorCode::NotFound,
                None,
            ),
            (
                DeployError::NoRepository(caro.clone()),
                ErrorCode::BadRequest,
                Some(json!({"field": "repo"})),
            ),
            (
                DeployError::NoUpload {
                    tenant: caro.clone(),
                    module: module.clone(),
                },
                ErrorCode::NotFound,
                Some(json!({"module": "helpers"})),
            ),
            (
                DeployError::BadUpload {
                    message: "helpers does not compile".into(),
                    module,
                    line: Some(3),
                },
                ErrorCode::BadRequest,
                Some(json!({"module": "helpers", "line": 3})),
            ),
            (
                DeployError::Failed {
                    message: "pip failed".into(),
                    detail: Some(json!({"pip": "no wheel"})),
                },
                ErrorCode::SyncFailed,
                Some(json!({"pip": "no wheel"})),
            ),
            (
                DeployError::Node {
                    context: "could not seal the virtualenv",
                    source: Box::new(std::io::Error::other("disk full")),
                },
                ErrorCode::Internal,
                None,
            ),
        ];
        for (error, code, detail) in cases {
            let text = error.to_string();
            let answer = ApiError::from(error);
            assert_eq!(answer.code, code, "{text}");
            assert_eq!(answer.detail, detail, "{text}");
        }
        // The node's failures are answered without their causes.
        let node = ApiError::from(DeployError::Node {
            context: "could not seal the virtualenv",
            source: Box::new(std::io::Error::other("disk full")),
        });
        assert_eq!(
            node.message,
            "internal error: could not seal the virtualenv"
        );
        let queued = ApiError::from(DeployError::Queued(caro));
        assert_eq!(queued.retry_after, Some(5));
    }

    #[test]
    fn call_auth_and_plan_errors_have_their_codes_details_and_retry_hints() {
        use falra_core::auth::AuthError;
        use falra_core::calls::{CallError, Failed};
        use falra_core::plans::PlanError;
        use falra_policies::admission::Refusal;
        use falra_sandbox::ChildFailure;
        use std::time::Duration;

        let refused = |refusal| CallError::Refused {
            refusal,
            calls_per_minute: 60,
        };
        let cases: Vec<(ApiError, ErrorCode, Option<Value>, Option<u64>)> = vec![
            (
                CallError::ShuttingDown.into(),
                ErrorCode::ShuttingDown,
                None,
                Some(1),
            ),
            (
                CallError::UnknownTenant.into(),
                ErrorCode::Unauthorized,
                None,
                None,
            ),
            (
                refused(Refusal::RateLimited {
                    retry_after: Duration::from_secs(4),
                })
                .into(),
                ErrorCode::RateLimited,
                Some(json!({"calls_per_minute": 60})),
                Some(5),
            ),
            (
                refused(Refusal::ConcurrencyLimited { limit: 3 }).into(),
                ErrorCode::ConcurrencyLimited,
                Some(json!({"max_concurrency": 3})),
                Some(1),
            ),
            (
                refused(Refusal::Overloaded { limit: 64 }).into(),
                ErrorCode::Overloaded,
                None,
                Some(1),
            ),
            (
                CallError::NoSuchVersion("abc".into()).into(),
                ErrorCode::BadRequest,
                Some(json!({"parameter": "version"})),
                None,
            ),
            (
                CallError::NotDeployed.into(),
                ErrorCode::NotDeployed,
                None,
                None,
            ),
            (
                CallError::FnNotFound {
                    message: "no module m".into(),
                    module: "m".into(),
                }
                .into(),
                ErrorCode::FnNotFound,
                Some(json!({"module": "m"})),
                None,
            ),
            (
                CallError::Failed(Box::new(Failed {
                    failure: ChildFailure::Timeout,
                    logs: "tick".into(),
                    memory_mb: 256,
                    timeout_ms: 500,
                    result_cap: 1,
                    usage: falra_core::calls::Usage {
                        wall_ms: 1,
                        cpu_ms: 1,
                        peak_memory_bytes: 1,
                    },
                }))
                .into(),
                ErrorCode::Timeout,
                Some(json!({"timeout_ms": 500})),
                None,
            ),
            (
                CallError::Failed(Box::new(Failed {
                    failure: ChildFailure::MemoryLimitExceeded,
                    logs: String::new(),
                    memory_mb: 256,
                    timeout_ms: 500,
                    result_cap: 1,
                    usage: falra_core::calls::Usage {
                        wall_ms: 1,
                        cpu_ms: 1,
                        peak_memory_bytes: 1,
                    },
                }))
                .into(),
                ErrorCode::MemoryLimitExceeded,
                Some(json!({"memory_mb": 256})),
                None,
            ),
            (
                AuthError::NoToken.into(),
                ErrorCode::Unauthorized,
                None,
                None,
            ),
            (
                AuthError::Unknown.into(),
                ErrorCode::Unauthorized,
                None,
                None,
            ),
            (
                AuthError::Revoked.into(),
                ErrorCode::TokenRevoked,
                None,
                None,
            ),
            (
                AuthError::Expired(0).into(),
                ErrorCode::TokenExpired,
                None,
                None,
            ),
            (
                AuthError::WrongKind(crate::store::TokenKind::Operator).into(),
                ErrorCode::Forbidden,
                None,
                None,
            ),
            (
                AuthError::MissingScope(falra_policies::Scope::Deploy).into(),
                ErrorCode::Forbidden,
                Some(json!({"required_scope": "deploy"})),
                None,
            ),
            (AuthError::Corrupt.into(), ErrorCode::Internal, None, None),
            (
                PlanError::NoSuchPlan("gold".into()).into(),
                ErrorCode::BadRequest,
                Some(json!({"field": "plan"})),
                None,
            ),
            (
                PlanError::DefaultPlan.into(),
                ErrorCode::Conflict,
                None,
                None,
            ),
            (
                PlanError::NotFound("gold".into()).into(),
                ErrorCode::NotFound,
                None,
                None,
            ),
        ];
        for (answer, code, detail, retry_after) in cases {
            assert_eq!(answer.code, code, "{}", answer.message);
            assert_eq!(answer.detail, detail, "{}", answer.message);
            assert_eq!(answer.retry_after, retry_after, "{}", answer.message);
        }
        // A function's failure carries its logs beside the error.
        let failed = ApiError::from(CallError::Failed(Box::new(Failed {
            failure: ChildFailure::Timeout,
            logs: "tick".into(),
            memory_mb: 256,
            timeout_ms: 500,
            result_cap: 1,
            usage: falra_core::calls::Usage {
                wall_ms: 1,
                cpu_ms: 1,
                peak_memory_bytes: 1,
            },
        })));
        assert_eq!(failed.logs.as_deref(), Some("tick"));
        assert_eq!(failed.body()["usage"]["wall_ms"], 1);
        assert_eq!(
            ApiError::from(AuthError::Expired(0)).message,
            "this token expired at 1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn body_has_the_documented_shape() {
        let mut e = ApiError::bad_request("fn missing").with_detail(json!({"field": "fn"}));
        e.call_id = Some("c_1".into());
        assert_eq!(
            e.body(),
            json!({"ok": false, "error": {"code": "bad_request", "message": "fn missing",
                   "detail": {"field": "fn"}}, "call_id": "c_1"})
        );
    }
}
