//! `GET /openapi.json`: the whole HTTP API as an OpenAPI 3.1 document.
//!
//! The document is kept beside this file (`openapi.json`) as reviewed data and served as it
//! is; the end-to-end suite checks that every path and method it names is routed, and that
//! every route answers as documented, so it cannot drift from the router unnoticed.

use axum::http::header;
use axum::response::IntoResponse;

/// The document, as shipped in the binary.
pub const DOCUMENT: &str = include_str!("openapi.json");

pub async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_is_json_with_paths() {
        let doc: serde_json::Value = serde_json::from_str(super::DOCUMENT).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["paths"].as_object().unwrap().len() > 20);
    }
}
