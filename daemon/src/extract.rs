//! Request extractors whose rejections are `ApiError`s, so every malformed request gets the same
//! JSON error shape as every other failure.

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::api_error::{ApiError, ErrorCode};
use crate::server::AppState;

/// The request body as bytes, refused with `payload_too_large` past the configured limit.
pub struct LimitedBody(pub axum::body::Bytes);

impl FromRequest<AppState> for LimitedBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.config.max_body_bytes;
        let too_large = || {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("request body is over the limit of {limit} bytes"),
            )
            .with_detail(json!({"limit_bytes": limit}))
        };
        // Read up to the limit. Past it, keep reading (and dropping) a while longer before
        // answering, so that a client still sending gets to read the 413 instead of a reset.
        let drain_cap = limit.saturating_mul(8).max(8 << 20);
        let mut body = req.into_body();
        let mut kept = Vec::new();
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::bad_request(format!("could not read the request body: {e}"))
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            seen = seen.saturating_add(data.len());
            if seen <= limit {
                kept.extend_from_slice(&data);
            } else if seen > drain_cap {
                break;
            }
        }
        if seen > limit {
            return Err(too_large());
        }
        Ok(LimitedBody(kept.into()))
    }
}

/// A JSON body deserialised into `T`, with the body limit applied.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let LimitedBody(bytes) = LimitedBody::from_request(req, state).await?;
        let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
            &b"{}"[..]
        } else {
            &bytes[..]
        };
        serde_json::from_slice(bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// Path parameters; a mismatch is a `bad_request`.
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// Query parameters; a mismatch is a `bad_request`.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// The token presented as `Authorization: Bearer <token>`, if any.
pub fn bearer(parts_headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = parts_headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}
