//! `POST /v1/call`: one function call, from request bytes to answer.
//!
//! The body is parsed once, at the boundary, into a [`CallRequest`] (validated `fn`, the
//! token, the keyword arguments with comment keys dropped) and the query into
//! `CallOptions`; the token is checked before more than a prefix of the body is read. Then
//! `falra_core::calls::run` runs the call, and its answer or error becomes the response.

use std::num::NonZeroU32;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use falra_core::calls::{self, CallOptions, Metered, Usage};
use falra_policies::Scope;
use falra_tenants::function::is_identifier;
use falra_tenants::{FnName, TenantName};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::api_error::{ApiError, ErrorCode};
use crate::auth::tenant_caller;
use crate::extract::{bearer, ApiQuery, BodyReader};
use crate::server::AppState;

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
        let token = match map.shift_remove("token") {
            None => None,
            Some(Value::String(t)) => Some(t),
            Some(_) => {
                return Err(ApiError::bad_request("\"token\" must be a string")
                    .with_detail(json!({"field": "token"})))
            }
        };
        let function = match map.shift_remove("fn") {
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CallQuery {
    /// Pin a version (`GET /v1/versions`).
    version: Option<String>,
    /// Lower the time limit of this call.
    #[param(minimum = 1)]
    timeout_ms: Option<u32>,
}

impl CallQuery {
    /// The call's options, validated (the version is resolved once the tenant is known).
    fn options(&self) -> Result<CallOptions, ApiError> {
        let version = None;
        let timeout_ms = match self.timeout_ms {
            Some(t) => Some(NonZeroU32::new(t).ok_or_else(|| {
                ApiError::bad_request("timeout_ms must be at least 1")
                    .with_detail(json!({"parameter": "timeout_ms"}))
            })?),
            None => None,
        };
        Ok(CallOptions {
            version,
            timeout_ms,
            background: None,
        })
    }
}

#[derive(Serialize)]
struct CallOk<'a> {
    ok: bool,
    result: &'a RawValue,
    call_id: &'a str,
    version: &'a str,
    logs: &'a str,
    usage: Usage,
}

/// The handler: every failure carries the call id; every call that reached a tenant is
/// metered and counted.
#[utoipa::path(
    post,
    path = "/v1/call",
    operation_id = "call_call",
    tag = "calls",
    summary = "Run a function now",
    description = "Runs a function of the caller's tenant, or a built-in (read_zip_csv_chunk.read_zip_csv_chunk, see docs/builtins.md) when the tenant's policy allows built-ins.",
    params(CallQuery),
    request_body = crate::schemas::CallBody,
    responses((status = 200, description = "The function's result", body = crate::schemas::CallOk), (status = 400, description = "Malformed body, fn or parameter", body = crate::schemas::Error), (status = 404, description = "fn_not_found", body = crate::schemas::Error), (status = 409, description = "not_deployed", body = crate::schemas::Error), (status = 413, description = "payload_too_large", body = crate::schemas::Error), (status = 422, description = "function_error, result_not_serializable, result_too_large, memory_limit_exceeded, process_exited", body = crate::schemas::Error), (status = 504, description = "timeout", body = crate::schemas::Error), crate::schemas::TenantErrors),
    security(("tenant" = []))
)]
pub async fn call(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<ApiQuery<CallQuery>, ApiError>,
    body: axum::body::Body,
) -> Response {
    let started = std::time::Instant::now();
    let call_id = calls::new_call_id();
    tracing::Span::current().record("call_id", call_id.as_str());
    let mut metered = Metered::default();
    let (response, outcome) =
        match run_call(&state, &headers, query, body, &call_id, &mut metered).await {
            Ok(response) => (response, "ok"),
            Err(mut e) => {
                e.call_id = Some(call_id.clone());
                metered.bytes_out = e.body().to_string().len();
                metered.error = Some(e.message.clone());
                let code = e.code.as_str();
                (e.into_response(), code)
            }
        };
    state.http().metrics.call(
        metered.tenant.as_ref().map_or("-", TenantName::as_str),
        outcome,
        started.elapsed().as_secs_f64(),
    );
    calls::record(&state, call_id, metered, outcome);
    response
}

/// How much of a body is read, at most, to find its token before the token is checked.
pub const TOKEN_PREFIX_BYTES: usize = 64 << 10;

/// Reads and parses the body with its token checked first: a token in `Authorization` before
/// any of the body is read, one in the body as soon as the prefix holding it has arrived (within
/// [`TOKEN_PREFIX_BYTES`]). No anonymous client gets more than that prefix buffered. A body
/// small enough to read whole is parsed before a missing token is reported, so a malformed call
/// hears what is wrong with it.
pub async fn authenticated_request(
    state: &AppState,
    headers: &HeaderMap,
    body: axum::body::Body,
    scope: Scope,
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
        Some(token) => match tenant_caller(state, Some(&token), scope).await {
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
            tenant_caller(state, Some(in_body), scope).await?
        }
        (Some(_), Some(_)) => {
            return Err(
                ApiError::bad_request("the body names \"token\" more than once")
                    .with_detail(json!({"field": "token"})),
            )
        }
        (Some((_, caller)), None) => caller,
        (None, presented) => tenant_caller(state, presented, scope).await?,
    };
    Ok((request, body.len(), caller))
}

async fn run_call(
    state: &AppState,
    headers: &HeaderMap,
    query: Result<ApiQuery<CallQuery>, ApiError>,
    body: axum::body::Body,
    call_id: &str,
    metered: &mut Metered,
) -> Result<Response, ApiError> {
    calls::accepting(state)?;
    let ApiQuery(query) = query?;
    let mut options = query.options()?;
    let (request, body_len, caller) =
        authenticated_request(state, headers, body, Scope::Call).await?;
    if let Some(given) = &query.version {
        options.version = Some(
            crate::tenant_api::resolve_version(state, &caller.tenant, given, "parameter").await?,
        );
    }
    let span = tracing::Span::current();
    span.record("tenant", caller.tenant.as_str());
    span.record("fn", request.function.as_str());
    span.record("token_id", caller.token_id.as_str());
    metered.tenant = Some(caller.tenant.clone());
    metered.token_id.clone_from(&caller.token_id);
    metered.function = request.function.as_str().to_owned();
    metered.bytes_in = body_len;
    let answer = calls::run(
        state,
        &caller,
        &request.function,
        &request.kwargs,
        options,
        call_id,
        metered,
    )
    .await?;
    let response = json_response(&CallOk {
        ok: true,
        result: &answer.result,
        call_id,
        version: &answer.version,
        logs: &answer.logs,
        usage: answer.usage,
    });
    metered.bytes_out = response_len(&response);
    Ok(response)
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
}
