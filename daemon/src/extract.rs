//! Request extractors whose rejections are `ApiError`s, so every malformed request gets the same
//! JSON error shape as every other failure.

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::api_error::{ApiError, ErrorCode};
use crate::server::AppState;

/// A request body read in stages: under the size limit, within the body deadline, and only as
/// far as the handler asks (so a handler can authenticate on a prefix before taking the rest).
pub struct BodyReader {
    body: axum::body::Body,
    kept: Vec<u8>,
    seen: usize,
    ended: bool,
    limit: usize,
    deadline: tokio::time::Instant,
    timeout: std::time::Duration,
}

impl BodyReader {
    pub fn new(body: axum::body::Body, state: &AppState) -> BodyReader {
        let timeout = state.http().config.body_timeout;
        BodyReader {
            body,
            kept: Vec::new(),
            seen: 0,
            ended: false,
            limit: state.http().config.max_body_bytes,
            deadline: tokio::time::Instant::now() + timeout,
            timeout,
        }
    }

    /// What has been read so far.
    pub fn kept(&self) -> &[u8] {
        &self.kept
    }

    /// Whether the whole body has been read.
    pub fn is_complete(&self) -> bool {
        self.ended || http_body::Body::is_end_stream(&self.body)
    }

    fn too_large(&self) -> ApiError {
        let limit = self.limit;
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body is over the limit of {limit} bytes"),
        )
        .with_detail(json!({"limit_bytes": limit}))
    }

    /// The next frame's data, or `None` at the end; under the deadline.
    async fn next_data(&mut self) -> Result<Option<axum::body::Bytes>, ApiError> {
        loop {
            let frame = tokio::time::timeout_at(self.deadline, self.body.frame())
                .await
                .map_err(|_| {
                    let secs = self.timeout.as_secs();
                    ApiError::new(
                        ErrorCode::RequestTimeout,
                        format!("the request body did not arrive within {secs} s"),
                    )
                    .with_detail(json!({"body_timeout_secs": secs}))
                })?;
            let Some(frame) = frame else {
                self.ended = true;
                return Ok(None);
            };
            let frame = frame.map_err(|e| {
                ApiError::bad_request(format!("could not read the request body: {e}"))
            })?;
            if let Ok(data) = frame.into_data() {
                return Ok(Some(data));
            }
        }
    }

    /// Reads until at least `n` bytes are kept, or the body ended.
    pub async fn fill(&mut self, n: usize) -> Result<(), ApiError> {
        while !self.ended && self.kept.len() < n {
            let Some(data) = self.next_data().await? else {
                break;
            };
            self.seen = self.seen.saturating_add(data.len());
            if self.seen > self.limit {
                return Err(self.too_large());
            }
            self.kept.extend_from_slice(&data);
        }
        Ok(())
    }

    /// Reads and drops what is left of the body, up to `cap` bytes in all and within the body
    /// deadline, keeping none of it: a client refused before its body was read whole then gets
    /// to read the answer instead of a reset.
    async fn drain(&mut self, cap: usize) {
        self.kept = Vec::new();
        while self.seen <= cap {
            match self.next_data().await {
                Ok(Some(data)) => self.seen = self.seen.saturating_add(data.len()),
                Ok(None) | Err(_) => break,
            }
        }
    }

    /// Answers `e` to a request refused before its body was read: drains the body up to the
    /// size limit first.
    pub async fn refuse(&mut self, e: ApiError) -> ApiError {
        self.drain(self.limit).await;
        e
    }

    /// Reads the rest of the body. Past the limit, keeps reading (and dropping) a while longer
    /// before answering, so that a client still sending gets to read the 413 instead of a
    /// reset.
    pub async fn finish(mut self) -> Result<axum::body::Bytes, ApiError> {
        match self.fill(usize::MAX).await {
            Ok(()) => Ok(self.kept.into()),
            Err(e) if e.code == ErrorCode::PayloadTooLarge => {
                self.drain(self.limit.saturating_mul(8).max(8 << 20)).await;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }
}

/// The request body as bytes, refused with `payload_too_large` past the configured limit and
/// `request_timeout` past the body deadline.
pub struct LimitedBody(pub axum::body::Bytes);

impl FromRequest<AppState> for LimitedBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        BodyReader::new(req.into_body(), state)
            .finish()
            .await
            .map(LimitedBody)
    }
}

/// A JSON object body deserialised into `T`, with the body limit applied. Every body of the
/// API is an object: an array is refused here, before serde's derive would take one as the
/// struct's fields in order.
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
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
        if !value.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        serde_json::from_value(value)
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

/// A `?tenant=` query parameter, parsed: an invalid name is `400` naming the parameter.
pub fn tenant_parameter(
    value: Option<&str>,
) -> Result<Option<falra_tenants::TenantName>, ApiError> {
    value
        .map(|v| {
            falra_tenants::TenantName::parse(v).map_err(|e| {
                ApiError::bad_request(e.to_string()).with_detail(json!({"parameter": "tenant"}))
            })
        })
        .transpose()
}

/// The largest page a listing gives out.
pub const MAX_PAGE: i64 = 200;

/// `?limit=&cursor=` of a newest-first listing, parsed: how many to list (default 50, 1 to
/// [`MAX_PAGE`]) and the `(ms, id)` key to list before. A cursor is `<ms>.<id>`, the key of the
/// last row of the page before; `id_ok` says whether `<id>` is one of the listing's ids. Either
/// parameter wrong is `400` naming it.
pub fn page_parameters(
    limit: Option<i64>,
    cursor: Option<&str>,
    id_ok: impl Fn(&str) -> bool,
) -> Result<(i64, Option<(i64, String)>), ApiError> {
    let limit = limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(
            ApiError::bad_request(format!("limit must be between 1 and {MAX_PAGE}"))
                .with_detail(json!({"parameter": "limit"})),
        );
    }
    let before = cursor
        .map(|c| {
            c.split_once('.')
                .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id)))
                .filter(|(_, id)| id_ok(id))
                .map(|(at, id)| (at, id.to_owned()))
                .ok_or_else(|| {
                    ApiError::bad_request("cursor is not one this API gave out")
                        .with_detail(json!({"parameter": "cursor"}))
                })
        })
        .transpose()?;
    Ok((limit, before))
}

/// The cursor of the page after one of `len` rows asked for `limit` at a time whose last row's
/// key is `last`: none when the page was not full (there is nothing after it).
pub fn next_cursor(len: usize, limit: i64, last: Option<(i64, &str)>) -> Option<String> {
    (len as i64 == limit)
        .then(|| last.map(|(at, id)| format!("{at}.{id}")))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any_id(id: &str) -> bool {
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    }

    #[test]
    fn page_parameters_take_what_next_cursor_gives_and_name_what_is_wrong() {
        assert_eq!(page_parameters(None, None, any_id).unwrap(), (50, None));
        let cursor = next_cursor(3, 3, Some((12, "j_ab"))).unwrap();
        assert_eq!(
            page_parameters(Some(3), Some(&cursor), any_id).unwrap(),
            (3, Some((12, "j_ab".to_owned())))
        );
        assert_eq!(next_cursor(2, 3, Some((12, "j_ab"))), None);
        assert_eq!(next_cursor(0, 0, None), None);
        for (limit, cursor, parameter) in [
            (Some(0), None, "limit"),
            (Some(MAX_PAGE + 1), None, "limit"),
            (Some(-1), None, "limit"),
            (None, Some("12"), "cursor"),
            (None, Some("x.j_ab"), "cursor"),
            (None, Some("12.j-ab"), "cursor"),
            (None, Some("12."), "cursor"),
            (None, Some(".j_ab"), "cursor"),
        ] {
            let e = page_parameters(limit, cursor, any_id).unwrap_err();
            assert_eq!(
                e.detail.as_ref().unwrap()["parameter"],
                parameter,
                "{limit:?} {cursor:?}"
            );
        }
    }
}
