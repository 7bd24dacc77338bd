//! The operator console at `/ui`: its pages, embedded in the binary, and its sessions.
//!
//! The console is static files (`daemon/ui/`, compiled in with `include_str!`, so it works
//! offline and needs nothing beside the binary) that call the operator API of the same origin.
//! Signing in (`POST /ui/session` with an operator token) opens a session
//! (`falra_core::console`) and sets it as a cookie that script cannot read (`HttpOnly`), that no
//! other site's request carries (`SameSite=Strict`), that expires, and that is `Secure` when the
//! request came over TLS through a proxy (`X-Forwarded-Proto: https`). The operator API takes
//! that cookie where it would take a bearer token; a change made with it must also carry the
//! session's CSRF token (`X-CSRF-Token`) and must not come from another site (`Sec-Fetch-Site`).
//!
//! Every page is served with a Content-Security-Policy that allows only the console's own
//! script and styles (no inline script, no `eval`, nothing from another origin) and no framing;
//! the pages themselves put what tenants control into the document as text, never as markup.
//!
//! Architecture Invariant: the console has no API of its own beyond its session; everything it
//! shows or changes goes through the documented operator API, so it can do nothing the CLI
//! cannot.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cookie::{Cookie, SameSite};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::LazyLock;
use utoipa::ToSchema;

use crate::api_error::{ApiError, ErrorCode};
use crate::audit::audit;
use crate::extract::{ApiJson, ApiPath};
use crate::server::AppState;
use falra_core::clock::{format_ms, now_ms};
use falra_core::console::{self, Session};

/// The session cookie's name.
pub const COOKIE: &str = "falra_session";

/// The header a change made in a session carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// What the console's pages may load and do: their own script, styles and images, requests to
/// their own origin, nothing else, and never inside a frame.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// A file of the console, compiled in, with the digest of its content (computed once).
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
    /// 24 hex digits: its entity tag and the middle of its fingerprinted name.
    digest: String,
}

impl Asset {
    fn new(name: &'static str, content_type: &'static str, body: &'static str) -> Self {
        Asset {
            name,
            content_type,
            body,
            digest: digest(body),
        }
    }

    /// The name the page refers to it by: its content's digest between stem and extension
    /// (`app.1f2e….js`), so a browser may keep it for good, and a new build's page names new
    /// files.
    fn fingerprinted(&self) -> String {
        let (stem, ext) = self.name.rsplit_once('.').unwrap_or((self.name, ""));
        format!("{stem}.{}.{ext}", self.digest)
    }
}

/// The files of the console.
static ASSETS: LazyLock<[Asset; 3]> = LazyLock::new(|| {
    [
        Asset::new(
            "app.js",
            "text/javascript; charset=utf-8",
            include_str!("../ui/app.js"),
        ),
        Asset::new(
            "style.css",
            "text/css; charset=utf-8",
            include_str!("../ui/style.css"),
        ),
        Asset::new("icon.svg", "image/svg+xml", include_str!("../ui/icon.svg")),
    ]
});

/// Where `daemon/ui/index.html` takes the brand mark: `icon.svg` itself, drawn inline (no
/// second image document) and hidden from screen readers (the name beside it says it).
const MARK: &str = "<!-- icon.svg -->";

/// The page's `<body>` and its header as written, which a page that knows its session changes.
const BODY: &str = "<body>";
const HIDDEN_HEADER: &str = "<header class=\"top\" id=\"top\" hidden>";

/// The page as written in `daemon/ui/index.html`, put together once, at first use: every
/// `/ui/assets/NAME` in it turned into the file's fingerprinted name, the brand mark in place.
static INDEX: LazyLock<Asset> = LazyLock::new(|| {
    let mark = include_str!("../ui/icon.svg").trim().replacen(
        "<svg ",
        "<svg aria-hidden=\"true\" width=\"24\" height=\"24\" ",
        1,
    );
    let page = ASSETS.iter().fold(
        include_str!("../ui/index.html").replacen(MARK, &mark, 1),
        |page, asset| {
            page.replace(
                &format!("/ui/assets/{}\"", asset.name),
                &format!("/ui/assets/{}\"", asset.fingerprinted()),
            )
        },
    );
    // Made once for the life of the process, like the files compiled in beside it.
    Asset::new("index.html", "text/html; charset=utf-8", page.leak())
});

/// How long a browser may keep a file asked for by its fingerprinted name without asking
/// again: a year, the longest caches honour; the name changes when the content does.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// A console file, `304 Not Modified` when the request names its entity tag. `cache` says how
/// long it may be kept: the page and files asked for by their plain names are revalidated on
/// every load (`no-cache`), so a new build's page is never mixed with an old one's files; a
/// file asked for by its fingerprinted name is kept ([`IMMUTABLE`]).
fn file(request: &HeaderMap, asset: &'static Asset, cache: &'static str) -> Response {
    let tag = format!("\"{}\"", asset.digest);
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == tag || t.trim() == "*");
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        content(asset.content_type, asset.body)
    };
    if let Ok(value) = HeaderValue::from_str(&tag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    guarded(response, cache)
}

fn content(content_type: &'static str, body: impl Into<axum::body::Body>) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body.into(),
    )
        .into_response()
}

/// `response` with how long it may be kept and the headers every console page and file gets.
fn guarded(mut response: Response, cache: &'static str) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    guard_headers(headers);
    response
}

/// A digest of one of the files compiled in, 24 hex digits.
fn digest(body: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(body.as_bytes());
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// The headers that keep the console's pages to themselves: the policy above, no framing, no
/// content-type sniffing, no referrer sent elsewhere.
pub fn guard_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
}

/// `GET /ui`: the console's one page (its views are chosen by the URL's fragment).
///
/// When the request carries a session cookie, the page says what became of it, so the script
/// needs no round trip before it draws: a live session's operator and CSRF token go into
/// `<body data-operator data-csrf-token>` and the page is `no-store` (it holds the token); an
/// ended one puts why into `data-session-ended` and the sign-in form is drawn at once. Without
/// a cookie (a first visit, or a link followed from another site, which a `SameSite=Strict`
/// cookie does not come with) or when the store cannot say, the page is the same for everyone
/// and the script asks `GET /ui/session`.
#[utoipa::path(
    get,
    path = "/ui",
    operation_id = "console_index",
    tag = "console",
    summary = "The operator console (HTML)",
    responses(
        (status = 200, description = "The console's page", content_type = "text/html"),
        (status = 304, description = "Unchanged since the entity tag in If-None-Match")
    )
)]
pub async fn index(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let known = match session_cookie(&headers) {
        None => None,
        Some(cookie) => match console::check(&state, &cookie).await {
            Ok(session) => Some(Ok(session)),
            Err(console::SessionError::Store(e)) => {
                // The page still works (its script asks for the session, and that answer says
                // what failed); not a warning, which any client could repeat at will.
                tracing::debug!(error = %e, "the console page could not look up its session");
                None
            }
            Err(ended) => Some(Err(ended.to_string())),
        },
    };
    let mut response = match known {
        None => file(&headers, &INDEX, "no-cache"),
        Some(Ok(session)) => {
            let opened = format!(
                "<body data-operator=\"{}\" data-csrf-token=\"{}\">",
                attribute(&session.token_id),
                attribute(session.csrf())
            );
            let page = INDEX.body.replacen(BODY, &opened, 1).replacen(
                HIDDEN_HEADER,
                "<header class=\"top\" id=\"top\">",
                1,
            );
            guarded(content(INDEX.content_type, page), "no-store")
        }
        Some(Err(why)) => {
            let ended = format!("<body data-session-ended=\"{}\">", attribute(&why));
            let page = INDEX.body.replacen(BODY, &ended, 1);
            guarded(content(INDEX.content_type, page), "no-store")
        }
    };
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("cookie"));
    response
}

/// `value` as the content of a double-quoted HTML attribute.
fn attribute(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `GET /ui/assets/{file}`: the console's script, styles and icon, by plain name (revalidated
/// on every load) or by the fingerprinted name the page uses (kept for good). A fingerprint
/// of another build (a page from a node not yet upgraded) is answered with this build's file,
/// revalidated like a plain name, so a page never loses its script.
#[utoipa::path(
    get,
    path = "/ui/assets/{file}",
    operation_id = "console_asset",
    tag = "console",
    summary = "A file of the operator console",
    params(("file" = String, Path, description = "app.js, style.css or icon.svg, or one of them with its content's digest before the extension (app.<24 hex digits>.js)")),
    responses(
        (status = 200, description = "The file"),
        (status = 304, description = "Unchanged since the entity tag in If-None-Match"),
        (status = 404, description = "No such file", body = crate::schemas::Error)
    )
)]
pub async fn asset(
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    let (asset, cache) = find_asset(&name)
        .ok_or_else(|| ApiError::not_found(format!("the console has no file {name:?}")))?;
    Ok(file(&headers, asset, cache))
}

/// The file a name asks for, and how long it may be kept: `NAME` or `STEM.DIGEST.EXT`.
fn find_asset(file: &str) -> Option<(&'static Asset, &'static str)> {
    if let Some(asset) = ASSETS.iter().find(|a| a.name == file) {
        return Some((asset, "no-cache"));
    }
    let (rest, ext) = file.rsplit_once('.')?;
    let (stem, fingerprint) = rest.rsplit_once('.')?;
    let well_formed = fingerprint.len() == 24
        && fingerprint
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !well_formed {
        return None;
    }
    let asset = ASSETS.iter().find(|a| a.name == format!("{stem}.{ext}"))?;
    let cache = if fingerprint == asset.digest {
        IMMUTABLE
    } else {
        "no-cache"
    };
    Some((asset, cache))
}

/// The session cookie's value, if the request carries one.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE)
        .map(|c| c.value().to_owned())
        .filter(|v| !v.is_empty())
}

/// Whether a change may be made in `session`: the browser does not say it comes from another
/// site, and it carries the session's CSRF token.
pub fn check_change(headers: &HeaderMap, session: &Session) -> Result<(), ApiError> {
    let site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site") {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "a console session's changes are taken from the console's own pages only",
        )
        .with_detail(json!({"header": "Sec-Fetch-Site"})));
    }
    let presented = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    match presented {
        Some(token) if session.csrf_matches(token) => Ok(()),
        _ => Err(ApiError::new(
            ErrorCode::Forbidden,
            "a change made in a console session must carry the session's CSRF token in X-CSRF-Token",
        )
        .with_detail(json!({"header": "X-CSRF-Token"}))),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// An operator token.
    token: String,
}

fn info(session: &Session) -> Value {
    json!({
        "operator_token_id": session.token_id,
        "csrf_token": session.csrf(),
        "expires_at": format_ms(session.expires_at),
    })
}

/// Whether the request reached the node over TLS (through a proxy that says so).
fn over_tls(headers: &HeaderMap) -> bool {
    let proto = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_ascii_lowercase)
    };
    proto("x-forwarded-proto").is_some_and(|p| p.split(',').next().map(str::trim) == Some("https"))
        || proto("forwarded").is_some_and(|f| f.contains("proto=https"))
}

fn set_cookie(value: String, max_age_secs: i64, secure: bool) -> HeaderValue {
    let cookie = Cookie::build((COOKIE, value))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .max_age(time::Duration::seconds(max_age_secs))
        .build();
    HeaderValue::from_str(&cookie.to_string()).expect("a token and fixed attributes are a header")
}

/// `POST /ui/session`: signs in with an operator token; the session comes back as a cookie.
#[utoipa::path(
    post,
    path = "/ui/session",
    operation_id = "console_sign_in",
    tag = "console",
    summary = "Sign in to the console with an operator token",
    request_body = SignIn,
    responses((status = 200, description = "Signed in; the session is in the Set-Cookie header", body = crate::schemas::SessionInfo), crate::schemas::OperatorErrors)
)]
pub async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<ApiJson<SignIn>, ApiError>,
) -> Result<Response, ApiError> {
    // A form of another site cannot send JSON without asking first; nor can it sign an
    // operator into a session of the attacker's choosing.
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.trim_start().starts_with("application/json"));
    if !json {
        return Err(ApiError::bad_request(
            "sign in with a JSON body {\"token\": \"…\"} sent as application/json",
        )
        .with_detail(json!({"header": "Content-Type"})));
    }
    let ApiJson(body) = body?;
    let token = crate::auth::operator_token(&state, body.token.trim()).await?;
    let opened = console::open(&state, &token).await?;
    let session = opened.session;
    tracing::info!(operator = %session.token_id, session = %session.id, "console session opened");
    audit(
        &state,
        &session.token_id,
        "console.sign_in",
        None,
        json!({"session": session.id, "expires_at": format_ms(session.expires_at)}),
    )
    .await;
    let max_age = (session.expires_at - now_ms()) / 1000;
    let mut response = Json(info(&session)).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(
            opened.cookie.expose().to_owned(),
            max_age,
            over_tls(&headers),
        ),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The session of a request to `/ui/session`: its cookie must be there and live.
async fn current(state: &AppState, headers: &HeaderMap) -> Result<Session, ApiError> {
    let cookie = session_cookie(headers)
        .ok_or_else(|| ApiError::from(falra_core::console::SessionError::Unknown))?;
    Ok(console::check(state, &cookie).await?)
}

/// `GET /ui/session`: the session the cookie stands for, with its CSRF token.
#[utoipa::path(
    get,
    path = "/ui/session",
    operation_id = "console_session",
    tag = "console",
    summary = "The console session of this browser",
    responses((status = 200, description = "Signed in", body = crate::schemas::SessionInfo), (status = 401, description = "Not signed in, signed out or expired", body = crate::schemas::Error))
)]
pub async fn show_session(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let session = current(&state, &headers).await?;
    let mut response = Json(info(&session)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `DELETE /ui/session`: signs out; the cookie no longer stands for anyone, on any node.
#[utoipa::path(
    delete,
    path = "/ui/session",
    operation_id = "console_sign_out",
    tag = "console",
    summary = "Sign out of the console",
    responses((status = 200, description = "Signed out"), (status = 401, description = "Not signed in", body = crate::schemas::Error), (status = 403, description = "No CSRF token", body = crate::schemas::Error))
)]
pub async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let session = current(&state, &headers).await?;
    check_change(&headers, &session)?;
    console::close(&state, &session).await?;
    tracing::info!(operator = %session.token_id, session = %session.id, "console session closed");
    audit(
        &state,
        &session.token_id,
        "console.sign_out",
        None,
        json!({"session": session.id}),
    )
    .await;
    let mut response = (StatusCode::OK, Json(json!({"signed_out": true}))).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(String::new(), 0, over_tls(&headers)),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_values_cannot_leave_their_quotes() {
        assert_eq!(
            attribute(r#"a"><script>x</script>&'"#),
            "a&quot;&gt;&lt;script&gt;x&lt;/script&gt;&amp;&#39;"
        );
        assert_eq!(attribute("tok_0a1b"), "tok_0a1b");
    }

    #[test]
    fn files_are_found_by_plain_or_fingerprinted_name_only() {
        let app = ASSETS.iter().find(|a| a.name == "app.js").unwrap();
        let named = app.fingerprinted();
        assert!(named.starts_with("app.") && named.ends_with(".js") && named.len() == 31);
        let (found, cache) = find_asset(&named).unwrap();
        assert_eq!((found.name, cache), ("app.js", IMMUTABLE));
        assert_eq!(find_asset("app.js").unwrap().1, "no-cache");
        let other = format!("app.{}.js", "f".repeat(24));
        assert_eq!(find_asset(&other).unwrap().1, "no-cache");
        for bad in [
            "app",
            ".js",
            "app..js",
            "app.FFFFFFFFFFFFFFFFFFFFFFFF.js",
            "../app.js",
            "app.js.0123456789abcdef01234567",
        ] {
            assert!(find_asset(bad).is_none(), "{bad}");
        }
        // The page names every file by its fingerprint, never by its plain name.
        for asset in ASSETS.iter() {
            assert!(INDEX
                .body
                .contains(&format!("/ui/assets/{}\"", asset.fingerprinted())));
            assert!(!INDEX.body.contains(&format!("/ui/assets/{}\"", asset.name)));
        }
    }

    #[test]
    fn the_page_has_the_places_a_session_and_the_mark_go() {
        assert_eq!(INDEX.body.matches(BODY).count(), 1);
        assert_eq!(INDEX.body.matches(HIDDEN_HEADER).count(), 1);
        assert!(!INDEX.body.contains(MARK));
        assert!(INDEX
            .body
            .contains("<a class=\"brand\" href=\"#/tenants\"><svg aria-hidden=\"true\""));
    }
}
