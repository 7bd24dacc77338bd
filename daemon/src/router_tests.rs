//! The HTTP layer in process: the real router over a real store in a temporary directory, with
//! no listener and no child processes, so that a change to the error table, an extractor or a
//! route is checked in milliseconds. (The end-to-end suites in `tests/` drive the real binary.)

use axum::body::Body;
use axum::http::{header, HeaderMap, Request};
use clap::Parser;
use falra_policies::{Scopes, SecretKey};
use http_body_util::BodyExt;
use serde_json::{json, Value};

use crate::cli::{Cli, Command};
use crate::server::{router, AppState, ServeConfig};
use crate::store::{Store, TokenKind};
use falra_runtime::SandboxSettings;

struct Node {
    _dir: tempfile::TempDir,
    state: AppState,
    operator: String,
}

async fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("falra.db"))
        .await
        .unwrap();
    let Command::Serve(args) = Cli::try_parse_from(["falra", "serve"]).unwrap().command else {
        unreachable!("serve parses as serve")
    };
    let installed = falra_sandbox::runner::Installed {
        dir: dir.path().join("runtime"),
        python_version: "3.11.2".into(),
        cache_tag: "cpython-311".into(),
        stdlib_names: "os\nsys\n".into(),
    };
    let config = ServeConfig::from_args(&args, dir.path().to_path_buf(), installed).unwrap();
    let plans = falra_core::plans::PlanTable::load(&store).await.unwrap();
    let key = SecretKey::from_hex(&"11".repeat(32)).unwrap();
    let scopes = Scopes::parse(["call"]).unwrap();
    let (row, secret) = falra_core::tenants::new_token(
        None,
        TokenKind::Operator,
        &scopes,
        None,
        falra_core::clock::now_ms(),
    );
    store.insert_token(&row).await.unwrap();
    let state = AppState::new(
        store,
        config,
        SandboxSettings::disabled(),
        key,
        plans,
        false,
    );
    Node {
        _dir: dir,
        state,
        operator: secret.expose().to_owned(),
    }
}

impl Node {
    /// One request through the router: status, headers and the JSON body.
    async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, HeaderMap, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(v) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let mut app = router(self.state.clone());
        let response = tower_service::Service::call(&mut app, request.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, headers, value)
    }

    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, _, value) = self.send(method, path, Some(&self.operator), body).await;
        (status, value)
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn unknown_paths_and_methods_answer_from_the_error_table() {
    let n = node().await;
    let (status, _, body) = n.send("GET", "/nowhere", None, None).await;
    assert_eq!((status, code(&body)), (404, "not_found"));
    assert_eq!(body["ok"], json!(false));
    let (status, _, body) = n.send("GET", "/v1/call", None, None).await;
    assert_eq!((status, code(&body)), (405, "method_not_allowed"));
    // Healthy: the store answers (no node is registered without a listener).
    let (status, _, body) = n.send("GET", "/healthz", None, None).await;
    assert_eq!(
        (status, body),
        (200, json!({"ok": true, "store": "ok", "node": null}))
    );
}

#[tokio::test]
async fn operator_routes_need_an_operator_token() {
    let n = node().await;
    let (status, headers, body) = n.send("GET", "/admin/v1/tenants", None, None).await;
    assert_eq!((status, code(&body)), (401, "unauthorized"));
    assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer realm=\"falra\"");
    let (status, _, body) = n
        .send("GET", "/admin/v1/tenants", Some("flr_not_a_token"), None)
        .await;
    assert_eq!((status, code(&body)), (401, "unauthorized"));
    assert_eq!(n.admin("GET", "/admin/v1/tenants", None).await.0, 200);
}

#[tokio::test]
async fn tenant_bodies_are_checked_at_the_boundary_and_name_the_field() {
    let n = node().await;
    let create = |body: Value| n.admin("POST", "/admin/v1/tenants", Some(body));
    let (status, body) = create(json!({"name": "Caro"})).await;
    assert_eq!((status, code(&body)), (400, "bad_request"));
    assert_eq!(body["error"]["detail"]["field"], json!("name"));
    let (status, body) = create(json!({"name": "caro", "plan": "gold"})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["detail"]["field"], json!("plan"));
    let (status, body) = create(json!({"name": "caro", "colour": "red"})).await;
    assert_eq!((status, code(&body)), (400, "bad_request"));
    // The fields in order, as an array: not an object, so not a body.
    let (status, body) = create(json!(["caro"])).await;
    assert_eq!((status, code(&body)), (400, "bad_request"), "{body}");
    let (status, body) = create(json!({"name": "caro"})).await;
    assert_eq!(status, 201, "{body}");
    assert!(body["uid"].as_u64().unwrap() >= 200_000);
    let (status, body) = n
        .admin(
            "PUT",
            "/admin/v1/tenants/caro/secrets/s3",
            Some(json!([[]])),
        )
        .await;
    assert_eq!((status, code(&body)), (400, "bad_request"), "{body}");
    let (status, body) = create(json!({"name": "caro"})).await;
    assert_eq!((status, code(&body)), (409, "conflict"));
    let (status, body) = n.admin("GET", "/admin/v1/tenants/nobody", None).await;
    assert_eq!((status, code(&body)), (404, "not_found"));
}

#[tokio::test]
async fn query_parameters_are_parsed_at_the_boundary() {
    let n = node().await;
    let (status, body) = n
        .admin("GET", "/admin/v1/audit?tenant=Not-A-Name", None)
        .await;
    assert_eq!((status, code(&body)), (400, "bad_request"));
    assert_eq!(body["error"]["detail"]["parameter"], json!("tenant"));
    let (status, body) = n.admin("GET", "/admin/v1/usage?tenant=Bad", None).await;
    assert_eq!(
        body["error"]["detail"]["parameter"],
        json!("tenant"),
        "{status}"
    );
    let (status, body) = n.admin("GET", "/admin/v1/usage?format=xml", None).await;
    assert_eq!((status, code(&body)), (400, "bad_request"));
    assert_eq!(n.admin("GET", "/admin/v1/usage", None).await.0, 200);
}

#[tokio::test]
async fn plans_are_named_checked_and_the_default_one_stays() {
    let n = node().await;
    let (status, body) = n.admin("DELETE", "/admin/v1/plans/default", None).await;
    assert_eq!((status, code(&body)), (409, "conflict"));
    let (status, body) = n
        .admin(
            "PUT",
            "/admin/v1/plans/no%20spaces",
            Some(json!({"memory_mb": 64})),
        )
        .await;
    assert_eq!((status, code(&body)), (400, "bad_request"));
    let (status, body) = n.admin("DELETE", "/admin/v1/plans/no%20such", None).await;
    assert_eq!((status, code(&body)), (404, "not_found"));
    let (status, _) = n
        .admin(
            "PUT",
            "/admin/v1/plans/small",
            Some(json!({"memory_mb": 64})),
        )
        .await;
    assert_eq!(status, 200);
    assert!(n.state.plans.contains("small"));
}

#[test]
fn every_route_is_registered_with_its_operation() {
    // Routes are added only through `routes!` in `server::routes`, which registers the handler's
    // `#[utoipa::path]` operation with it; a plain `.route(` would be a route the document
    // never hears of.
    let source = include_str!("server.rs");
    let code: String = source
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !code.contains(".route("),
        "server.rs adds a route outside routes!"
    );
    assert!(
        !code.contains(".nest("),
        "server.rs nests a router outside routes!"
    );
    // And the document names every operation the router was given.
    let doc: Value = serde_json::from_str(crate::openapi::document_json()).unwrap();
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    let handlers: usize = code
        .split("routes!(")
        .skip(1)
        .map(|rest| {
            rest[..rest.find(')').unwrap()]
                .split(',')
                .filter(|h| !h.trim().is_empty())
                .count()
        })
        .sum();
    assert_eq!(
        handlers, operations,
        "each handler is one documented operation"
    );
}

#[tokio::test]
async fn a_policy_field_set_and_reset_at_once_is_refused_and_limits_are_bounded() {
    let n = node().await;
    let (status, _) = n
        .admin("POST", "/admin/v1/tenants", Some(json!({"name": "caro"})))
        .await;
    assert_eq!(status, 201);
    // An invalid value hidden behind a reset of the same field is not quietly dropped.
    let (status, body) = n
        .admin(
            "PUT",
            "/admin/v1/tenants/caro/policy",
            Some(json!({"preload": ["not a module*"], "reset": ["preload"]})),
        )
        .await;
    assert_eq!((status, code(&body)), (400, "bad_request"), "{body}");
    assert_eq!(body["error"]["detail"]["field"], json!("preload"));
    let (status, body) = n
        .admin(
            "PUT",
            "/admin/v1/tenants/caro/policy",
            Some(json!({"reset": ["preload"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // The audit log's page size is bounded, not clamped in silence.
    for bad in ["0", "10001", "4294967296"] {
        let (status, body) = n
            .admin("GET", &format!("/admin/v1/audit?limit={bad}"), None)
            .await;
        assert_eq!(
            (status, code(&body)),
            (400, "bad_request"),
            "limit={bad}: {body}"
        );
    }
    let (status, _) = n.admin("GET", "/admin/v1/audit?limit=10000", None).await;
    assert_eq!(status, 200);
}
