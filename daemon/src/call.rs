//! `POST /v1/call`: one function call, from request bytes to answer.
//!
//! The body is parsed once, at the boundary, into a [`CallRequest`] (validated `fn`, the
//! token, the keyword arguments with comment keys dropped). Then: authenticate, resolve the
//! tenant's version once (a deploy during the call does not disturb it), resolve the module in
//! that version's tree, run the child in the sandbox, and turn what it left into the answer.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use falra_policies::admission::{Limits as AdmissionLimits, Refusal};
use falra_policies::{Policy, Scope};
use falra_sandbox::protocol::{interpret, PROTOCOL_VERSION};
use falra_sandbox::{ChildFailure, ProtocolRequest};
use falra_tenants::function::is_identifier;
use falra_tenants::{resolve_module, FnName, TenantName, VersionId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::api_error::{ApiError, ErrorCode};
use crate::auth::tenant_caller;
use crate::extract::{bearer, ApiQuery, BodyReader};
use crate::metering::check_quota;
use crate::plans::effective_policy;
use crate::server::AppState;
use crate::store::CallRecord;
use falra_runtime::{CallChild, ChildKey};

/// Key prefixes that mark a comment in the call body; such keys are dropped.
const COMMENT_PREFIXES: &[&str] = &["//", "_comment", "註解"];

/// A call body, parsed and validated.
#[derive(Debug)]
pub struct CallRequest {
    pub token: Option<String>,
    pub function: FnName,
    pub kwargs: Map<String, Value>,
}

impl CallRequest {
    /// Parses the seed's flat shape: `{"token", "fn", ...keyword arguments}`.
    pub fn parse(body: &[u8]) -> Result<CallRequest, ApiError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("body is not valid JSON: {e}")))?;
        let Value::Object(mut map) = value else {
            return Err(ApiError::bad_request("body must be a JSON object"));
        };
        let token = match map.remove("token") {
            None => None,
            Some(Value::String(t)) => Some(t),
            Some(_) => {
                return Err(ApiError::bad_request("\"token\" must be a string")
                    .with_detail(json!({"field": "token"})))
            }
        };
        let function = match map.remove("fn") {
            Some(Value::String(f)) => FnName::parse(&f).map_err(|e| {
                ApiError::bad_request(format!("invalid \"fn\": {e}"))
                    .with_detail(json!({"field": "fn"}))
            })?,
            Some(_) => {
                return Err(ApiError::bad_request("\"fn\" must be a string")
                    .with_detail(json!({"field": "fn"})))
            }
            None => {
                return Err(ApiError::bad_request(
                    "\"fn\" is missing: name the function as \"module.function\"",
                )
                .with_detail(json!({"field": "fn"})))
            }
        };
        map.retain(|k, _| !COMMENT_PREFIXES.iter().any(|p| k.starts_with(p)));
        if let Some(bad) = map.keys().find(|k| !is_identifier(k)) {
            return Err(ApiError::bad_request(format!(
                "parameter {bad:?} is not a valid Python keyword argument name"
            ))
            .with_detail(json!({"parameter": bad})));
        }
        Ok(CallRequest {
            token,
            function,
            kwargs: map,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallQuery {
    version: Option<String>,
    timeout_ms: Option<u32>,
}

#[derive(Serialize)]
struct CallOk<'a> {
    ok: bool,
    result: &'a RawValue,
    call_id: &'a str,
    version: &'a str,
    logs: String,
    usage: UsageJson,
}

#[derive(Serialize)]
struct UsageJson {
    wall_ms: u64,
    cpu_ms: u64,
    peak_memory_bytes: u64,
}

/// What metering learns of a call as it goes; recorded once it is answered.
#[derive(Debug, Default)]
struct Metered {
    tenant: Option<TenantName>,
    token_id: String,
    function: String,
    version: Option<String>,
    wall_ms: u64,
    cpu_ms: u64,
    peak_memory_bytes: u64,
    bytes_in: usize,
    bytes_out: usize,
}

/// The handler: every failure carries the call id; every call that reached a tenant is
/// metered and counted.
pub async fn call(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<ApiQuery<CallQuery>, ApiError>,
    body: axum::body::Body,
) -> Response {
    let started = std::time::Instant::now();
    let call_id = new_call_id();
    tracing::Span::current().record("call_id", call_id.as_str());
    let mut metered = Metered::default();
    let (response, outcome) =
        match run_call(&state, &headers, query, body, &call_id, &mut metered).await {
            Ok(response) => (response, "ok"),
            Err(mut e) => {
                e.call_id = Some(call_id.clone());
                metered.bytes_out = e.body().to_string().len();
                let code = e.code.as_str();
                (e.into_response(), code)
            }
        };
    state.metrics.call(
        metered.tenant.as_ref().map_or("-", TenantName::as_str),
        outcome,
        started.elapsed().as_secs_f64(),
    );
    if let Some(tenant) = metered.tenant {
        let at = crate::clock::now_ms();
        let cpu_ms = i64::try_from(metered.cpu_ms).unwrap_or(i64::MAX);
        state.quotas.add(&tenant, cpu_ms, at);
        state.meter.record(CallRecord {
            call_id,
            tenant,
            token_id: metered.token_id,
            function: metered.function,
            version: metered.version,
            outcome: outcome.to_owned(),
            wall_ms: i64::try_from(metered.wall_ms).unwrap_or(i64::MAX),
            cpu_ms,
            peak_memory_bytes: i64::try_from(metered.peak_memory_bytes).unwrap_or(i64::MAX),
            bytes_in: i64::try_from(metered.bytes_in).unwrap_or(i64::MAX),
            bytes_out: i64::try_from(metered.bytes_out).unwrap_or(i64::MAX),
            at,
        });
    }
    response
}

/// How much of a body is read, at most, to find its token before the token is checked.
pub const TOKEN_PREFIX_BYTES: usize = 64 << 10;

/// Reads and parses the body with its token checked first: a token in `Authorization` before
/// any of the body is read, one in the body as soon as the prefix holding it has arrived (within
/// [`TOKEN_PREFIX_BYTES`]). No anonymous client gets more than that prefix buffered. A body
/// small enough to read whole is parsed before a missing token is reported, so a malformed call
/// hears what is wrong with it.
async fn authenticated_request(
    state: &AppState,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<(CallRequest, usize, crate::auth::Caller), ApiError> {
    let mut reader = BodyReader::new(body, state);
    let header = bearer(headers);
    let presented = match header {
        Some(token) => Some(token.to_owned()),
        None => loop {
            let prefix = &reader.kept()[..reader.kept().len().min(TOKEN_PREFIX_BYTES)];
            match crate::token_scan::scan(prefix) {
                crate::token_scan::Scan::Found(token) => break Some(token),
                // No token yet, or none to find: a body that fits in the prefix is read whole
                // (the parser then says what is wrong with it); a longer one is refused. The
                // prefix at least doubles between scans, so tiny frames cannot make the scans
                // quadratic.
                _ if !reader.is_complete() && reader.kept().len() < TOKEN_PREFIX_BYTES => {
                    let want = (reader.kept().len() * 2).clamp(4096, TOKEN_PREFIX_BYTES);
                    reader.fill(want).await?;
                }
                _ if reader.is_complete() => break None,
                _ => {
                    let missing = ApiError::new(
                        ErrorCode::Unauthorized,
                        format!(
                            "no token: send Authorization: Bearer <token>, or \"token\" within \
                             the first {} KiB of the body",
                            TOKEN_PREFIX_BYTES >> 10
                        ),
                    );
                    return Err(reader.refuse(missing).await);
                }
            }
        },
    };
    let checked = match presented {
        Some(token) => match tenant_caller(state, Some(&token), Scope::Call).await {
            Ok(caller) => Some((token, caller)),
            Err(e) => return Err(reader.refuse(e).await),
        },
        None => None,
    };
    let body = reader.finish().await?;
    let request = CallRequest::parse(&body)?;
    let caller = match (checked, request.token.as_deref()) {
        // The body's token decides; it was checked unless the header's was.
        (Some((token, caller)), Some(in_body)) if token == in_body => caller,
        (Some(_), Some(in_body)) if header.is_some() => {
            tenant_caller(state, Some(in_body), Scope::Call).await?
        }
        (Some(_), Some(_)) => {
            return Err(
                ApiError::bad_request("the body names \"token\" more than once")
                    .with_detail(json!({"field": "token"})),
            )
        }
        (Some((_, caller)), None) => caller,
        (None, presented) => tenant_caller(state, presented, Scope::Call).await?,
    };
    Ok((request, body.len(), caller))
}

/// Turns an admission refusal into its answer.
fn refused(refusal: Refusal, policy: &Policy) -> ApiError {
    match refusal {
        Refusal::RateLimited { retry_after } => ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "this tenant may make {} calls per minute; try again shortly",
                policy.calls_per_minute
            ),
        )
        .with_detail(json!({"calls_per_minute": policy.calls_per_minute}))
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
    }
}

async fn run_call(
    state: &AppState,
    headers: &HeaderMap,
    query: Result<ApiQuery<CallQuery>, ApiError>,
    body: axum::body::Body,
    call_id: &str,
    metered: &mut Metered,
) -> Result<Response, ApiError> {
    if state.is_shutting_down() {
        return Err(ApiError::new(
            ErrorCode::ShuttingDown,
            "this node is shutting down and takes no new calls",
        )
        .with_retry_after(1));
    }
    let ApiQuery(query) = query?;
    let (request, body_len, caller) = authenticated_request(state, headers, body).await?;
    let span = tracing::Span::current();
    span.record("tenant", caller.tenant.as_str());
    span.record("fn", request.function.as_str());
    span.record("token_id", caller.token_id.as_str());
    metered.tenant = Some(caller.tenant.clone());
    metered.token_id.clone_from(&caller.token_id);
    metered.function = request.function.as_str().to_owned();
    metered.bytes_in = body_len;

    let tenant = state
        .store
        .tenant(&caller.tenant)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "unknown token"))?;
    let policy = effective_policy(state, &tenant);
    check_quota(state, &caller.tenant, policy.cpu_seconds_per_month).await?;
    let permit = state
        .admission
        .admit(
            &caller.tenant,
            AdmissionLimits {
                calls_per_minute: policy.calls_per_minute,
                max_concurrency: policy.max_concurrency,
            },
            std::time::Instant::now(),
        )
        .map_err(|r| refused(r, &policy))?;

    let timeout_ms = match query.timeout_ms {
        Some(0) => {
            return Err(ApiError::bad_request("timeout_ms must be at least 1")
                .with_detail(json!({"parameter": "timeout_ms"})))
        }
        Some(t) => t.min(policy.timeout_ms),
        None => policy.timeout_ms,
    };
    let uid = tenant.uid.get();
    if falra_builtins::is_reserved_module(request.function.module()) {
        let outcome = crate::builtin::run(
            state,
            &caller.tenant,
            uid,
            &policy,
            &request.function,
            &request.kwargs,
            timeout_ms,
            permit,
        )
        .await;
        let outcome = outcome?;
        metered.wall_ms = outcome.wall_ms;
        metered.cpu_ms = outcome.cpu_ms;
        metered.peak_memory_bytes = outcome.peak_memory_bytes;
        let result = serde_json::value::to_raw_value(&outcome.result?)
            .map_err(|e| ApiError::internal("could not encode the built-in's result", &e))?;
        let body = CallOk {
            ok: true,
            result: &result,
            call_id,
            version: "builtin",
            logs: String::new(),
            usage: UsageJson {
                wall_ms: outcome.wall_ms,
                cpu_ms: outcome.cpu_ms,
                peak_memory_bytes: outcome.peak_memory_bytes,
            },
        };
        let response = json_response(&body);
        metered.bytes_out = response_len(&response);
        return Ok(response);
    }

    let version = match query.version.as_deref() {
        Some(pinned) => {
            let id = VersionId::parse(pinned).map_err(|e| {
                ApiError::bad_request(e.to_string()).with_detail(json!({"parameter": "version"}))
            })?;
            if state.store.version(&caller.tenant, &id).await?.is_none() {
                return Err(ApiError::bad_request(format!(
                    "this tenant has no version {pinned:?}"
                ))
                .with_detail(json!({"parameter": "version"})));
            }
            id
        }
        None => tenant.active_version.clone().ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotDeployed,
                "this tenant has no deployed code yet: sync its repository first",
            )
        })?,
    };
    span.record("version", version.as_str());
    let fn_not_found = |message: String, detail: Value| {
        ApiError::new(ErrorCode::FnNotFound, message).with_detail(detail)
    };
    let root = state.layout.version_dir(&caller.tenant, &version);
    let mounts = state.code_mounts(root);
    resolve_module(&mounts.code, &request.function)
        .or_else(|e| match &mounts.venv {
            // A module of the tenant's own packages; the runner checks where it was found.
            Some(venv) => resolve_module(venv, &request.function),
            None => Err(e),
        })
        .map_err(|e| fn_not_found(e.to_string(), json!({"module": request.function.module()})))?;

    let stdin = ProtocolRequest {
        protocol: PROTOCOL_VERSION,
        call_id,
        function: request.function.as_str(),
        kwargs: &request.kwargs,
    }
    .encode();
    let config = &state.config;
    metered.version = Some(version.as_str().to_owned());
    let key = ChildKey {
        uid,
        version: version.as_str().to_owned(),
        policy: serde_json::to_string(&policy).expect("a policy serialises"),
    };
    let in_use = state.use_version(&caller.tenant, version.as_str());
    let child = state
        .runtime
        .start_call(CallChild {
            key,
            mounts,
            policy: policy.clone(),
        })
        .await?;
    let ran = child
        .run_to_end(stdin, state.runtime.limits(timeout_ms), (in_use, permit))
        .await?;
    let finished = &ran.finished;
    let logs = logs_text(&finished.stderr, finished.stderr_dropped);
    let usage = UsageJson {
        wall_ms: ran.wall_ms,
        cpu_ms: ran.cpu_ms,
        peak_memory_bytes: ran.peak_memory_bytes,
    };
    metered.wall_ms = usage.wall_ms;
    metered.cpu_ms = usage.cpu_ms;
    metered.peak_memory_bytes = usage.peak_memory_bytes;
    let oom_killed = ran.oom_killed;
    let answer = interpret(finished, config.max_result_bytes);
    // Killed in its memory limit: whatever else the child left, that is the answer.
    let answer = match answer {
        Err(ChildFailure::ProcessExited { .. }) | Err(ChildFailure::FunctionError { .. })
            if oom_killed =>
        {
            Err(ChildFailure::MemoryLimitExceeded)
        }
        other => other,
    };
    tracing::info!(
        wall_ms = usage.wall_ms,
        outcome = match &answer {
            Ok(_) => "ok",
            Err(f) => failure_code(f).as_str(),
        },
        "call finished"
    );
    match answer {
        Ok(result) => {
            let body = CallOk {
                ok: true,
                result: &result,
                call_id,
                version: version.as_str(),
                logs,
                usage,
            };
            let response = json_response(&body);
            metered.bytes_out = response_len(&response);
            Ok(response)
        }
        Err(failure) => {
            let mut e = failure_error(failure, &policy, timeout_ms, config.max_result_bytes);
            e.logs = Some(logs);
            Err(e)
        }
    }
}

pub fn failure_code(f: &ChildFailure) -> ErrorCode {
    match f {
        ChildFailure::FunctionError { .. } => ErrorCode::FunctionError,
        ChildFailure::FnNotFound { .. } => ErrorCode::FnNotFound,
        ChildFailure::ResultNotSerializable { .. } => ErrorCode::ResultNotSerializable,
        ChildFailure::ResultTooLarge { .. } => ErrorCode::ResultTooLarge,
        ChildFailure::ProcessExited { .. } => ErrorCode::ProcessExited,
        ChildFailure::MemoryLimitExceeded => ErrorCode::MemoryLimitExceeded,
        ChildFailure::Timeout => ErrorCode::Timeout,
    }
}

fn failure_error(
    failure: ChildFailure,
    policy: &Policy,
    timeout_ms: u32,
    result_cap: usize,
) -> ApiError {
    let memory_mb = policy.memory_mb;
    let code = failure_code(&failure);
    match failure {
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
    }
}

/// What the function printed, marked when it was cut at the cap.
fn logs_text(kept: &[u8], dropped: u64) -> String {
    let mut logs = String::from_utf8_lossy(kept).into_owned();
    if dropped > 0 {
        logs.push_str(&format!(
            "\n[falra: logs cut here, {dropped} more bytes not kept]"
        ));
    }
    logs
}

fn response_len(response: &Response) -> usize {
    use axum::body::HttpBody;
    response
        .body()
        .size_hint()
        .exact()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0)
}

fn json_response(body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response(),
        Err(e) => ApiError::internal("could not encode the answer", &e).into_response(),
    }
}

/// A call id: `c_` and 16 random hex digits.
pub fn new_call_id() -> String {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).expect("the operating system's random source failed");
    format!("c_{}", hex::encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<CallRequest, ApiError> {
        CallRequest::parse(s.as_bytes())
    }

    #[test]
    fn the_seed_body_parses() {
        let r =
            parse(r#"{"token": "T", "fn": "falra_test_add.add", "int_a": 1, "int_b": 2}"#).unwrap();
        assert_eq!(r.token.as_deref(), Some("T"));
        assert_eq!(r.function.as_str(), "falra_test_add.add");
        assert_eq!(Value::Object(r.kwargs), json!({"int_a": 1, "int_b": 2}));
    }

    #[test]
    fn comment_keys_are_dropped() {
        let r = parse(
            r#"{"註解1": "x", "fn": "m.f", "//": "y", "_comment": 1, "_comment_b": 2, "a": 1}"#,
        )
        .unwrap();
        assert_eq!(Value::Object(r.kwargs), json!({"a": 1}));
    }

    #[test]
    fn bad_bodies_are_bad_requests_naming_the_field() {
        for (body, field) in [
            ("[1]", None),
            ("nope", None),
            (r#"{"int_a": 1}"#, Some(json!({"field": "fn"}))),
            (r#"{"fn": 3}"#, Some(json!({"field": "fn"}))),
            (r#"{"fn": "add"}"#, Some(json!({"field": "fn"}))),
            (r#"{"fn": "os._exit"}"#, Some(json!({"field": "fn"}))),
            (
                r#"{"fn": "m.f", "token": 5}"#,
                Some(json!({"field": "token"})),
            ),
            (
                r#"{"fn": "m.f", "a-b": 5}"#,
                Some(json!({"parameter": "a-b"})),
            ),
        ] {
            let e = parse(body).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{body}");
            assert_eq!(e.detail, field, "{body}");
        }
    }

    #[test]
    fn cut_logs_are_marked() {
        assert_eq!(logs_text(b"hi", 0), "hi");
        assert!(logs_text(b"hi", 5).ends_with("5 more bytes not kept]"));
    }
}
