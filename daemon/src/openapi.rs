//! `GET /openapi.json`: the whole HTTP API as an OpenAPI 3.1 document, generated.
//!
//! The operations come from the `#[utoipa::path]` attribute on each handler and are registered
//! together with their routes (`server::routes`), so the router and the document cannot part;
//! request bodies and query strings are the types the handlers parse; the answers and the
//! schemas made from other crates' data are in `schemas.rs`. The document is built once, at
//! the first request.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityRequirement, SecurityScheme,
};
use utoipa::{Modify, OpenApi};

/// The document's frame: title, tags, security schemes. The operations are added by
/// `server::routes`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Falra",
        description = "Run tenants' Python functions over HTTP, isolated. See docs/api.md."
    ),
    modifiers(&Security),
    tags(
        (name = "calls", description = "Calling a function"),
        (name = "jobs", description = "Background jobs"),
        (name = "schedules", description = "Jobs on a cron schedule"),
        (name = "code", description = "Versions, functions, uploads and push deploys"),
        (name = "tenants", description = "Operators: tenants and deploys"),
        (name = "tokens", description = "Operators: tenant tokens"),
        (name = "policies", description = "Operators: policies and plans"),
        (name = "secrets", description = "Operators: tenant secrets"),
        (name = "metering", description = "Operators: usage"),
        (name = "audit", description = "Operators: the audit log"),
        (name = "node", description = "Health, metrics, this document, the cluster's nodes"),
        (name = "console", description = "The operator console at /ui and its sessions")
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            let mut http = Http::new(HttpAuthScheme::Bearer);
            http.description = Some(description.to_owned());
            SecurityScheme::Http(http)
        };
        components.add_security_scheme(
            "tenant",
            bearer("A tenant token (flr_…); on /v1/call it may also come as \"token\" in the body"),
        );
        components.add_security_scheme(
            "operator",
            bearer("An operator token from falra admin init"),
        );
        let mut cookie = ApiKeyValue::new(crate::console::COOKIE);
        cookie.description = Some(
            "A console session (POST /ui/session); changes also need its X-CSRF-Token".to_owned(),
        );
        components.add_security_scheme(
            "console_session",
            SecurityScheme::ApiKey(ApiKey::Cookie(cookie)),
        );
    }
}

/// Every operation an operator token may call also takes a console session.
fn sessions_where_operators(doc: &mut utoipa::openapi::OpenApi) {
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in operations.into_iter().flatten() {
            let Some(security) = op.security.as_mut() else {
                continue;
            };
            let operator = serde_json::to_value(&*security)
                .is_ok_and(|v| v.to_string().contains("\"operator\""));
            if operator {
                security.push(SecurityRequirement::new::<_, _, &str>(
                    "console_session",
                    [],
                ));
            }
        }
    }
}

/// The document, as JSON.
pub fn document_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = crate::server::routes().into_openapi();
        sessions_where_operators(&mut doc);
        doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
        doc.info.license = None;
        doc.info.contact = None;
        doc.to_pretty_json().expect("the document serialises")
    })
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi_document",
    tag = "node",
    summary = "This document",
    responses((status = 200, description = "The OpenAPI document", body = serde_json::Value))
)]
pub async fn document() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_json(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_is_json_with_paths() {
        let doc: serde_json::Value = serde_json::from_str(super::document_json()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["paths"].as_object().unwrap().len() > 20);
    }
}
