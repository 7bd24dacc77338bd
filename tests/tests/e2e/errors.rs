//! Every error code the call path can give, provoked over HTTP, with the daemon still serving.

use std::time::{Duration, Instant};

use falra_tests::{Answer, Daemon, GitRepo};
use serde_json::{json, Value};

const CODE: &str = r#"
import os, sys, time, subprocess

def add(int_a, int_b):
    return int_a + int_b

def fail(msg):
    helper(msg)

def helper(msg):
    raise ValueError(msg)

def exits(code):
    sys.exit(code)

def hard_exit(code):
    os._exit(code)

def killed():
    os.kill(os.getpid(), 9)

def returns_bytes():
    return {"a": [1, b"raw"]}

def returns_object():
    return object()

def huge(n):
    return "x" * n

def spin():
    while True:
        pass

def sleeper_tree(marker):
    subprocess.Popen(["sleep", marker])
    time.sleep(600)

class NotAFunction:
    pass

CONSTANT = 5
"#;

fn setup() -> (Daemon, String) {
    let d = Daemon::start_with(&["--max-result-bytes", "100000", "--max-body-bytes", "65536"]);
    let repo = GitRepo::with_files(&[("m.py", CODE), ("broken.py", "def f(:\n")]);
    let token = d.tenant("caro", &repo);
    (d, token)
}

#[track_caller]
fn assert_error(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "{:?}", a.body);
    assert_eq!(a.body["ok"], json!(false), "{:?}", a.body);
    assert_eq!(a.body["error"]["code"], json!(code), "{:?}", a.body);
    assert!(a.body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

#[track_caller]
fn still_serves(d: &Daemon, token: &str) {
    let a = d.call(json!({"token": token, "fn": "m.add", "int_a": 40, "int_b": 2}));
    assert_eq!(a.body["result"], json!(42), "{:?}", a.body);
}

#[test]
fn bad_requests() {
    let (d, token) = setup();
    let cases: Vec<(Vec<u8>, Option<Value>)> = vec![
        (b"not json".to_vec(), None),
        (b"[1, 2]".to_vec(), None),
        (b"\"string\"".to_vec(), None),
        (b"".to_vec(), None),
        (
            json!({"token": token}).to_string().into_bytes(),
            Some(json!({"field": "fn"})),
        ),
        (
            json!({"token": token, "fn": 7}).to_string().into_bytes(),
            Some(json!({"field": "fn"})),
        ),
        (
            json!({"token": token, "fn": "add"})
                .to_string()
                .into_bytes(),
            Some(json!({"field": "fn"})),
        ),
        (
            json!({"token": token, "fn": "m._private"})
                .to_string()
                .into_bytes(),
            Some(json!({"field": "fn"})),
        ),
        (
            json!({"token": token, "fn": "../m.add"})
                .to_string()
                .into_bytes(),
            Some(json!({"field": "fn"})),
        ),
        (
            json!({"token": token, "fn": "m.add", "bad-name": 1})
                .to_string()
                .into_bytes(),
            Some(json!({"parameter": "bad-name"})),
        ),
        (
            json!({"token": 5, "fn": "m.add"}).to_string().into_bytes(),
            Some(json!({"field": "token"})),
        ),
    ];
    for (body, detail) in cases {
        let a = d.post("/v1/call", &[], &body);
        assert_error(&a, 400, "bad_request");
        assert!(a.body["call_id"].is_string());
        if let Some(detail) = detail {
            assert_eq!(
                a.body["error"]["detail"],
                detail,
                "{:?}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    let pinned = d.post(
        "/v1/call?version=ffffffffffff",
        &[],
        json!({"token": token, "fn": "m.add", "int_a": 1, "int_b": 1})
            .to_string()
            .as_bytes(),
    );
    assert_error(&pinned, 400, "bad_request");
    assert_eq!(
        pinned.body["error"]["detail"],
        json!({"parameter": "version"})
    );
    let zero = d.post(
        "/v1/call?timeout_ms=0",
        &[],
        json!({"token": token, "fn": "m.add", "int_a": 1, "int_b": 1})
            .to_string()
            .as_bytes(),
    );
    assert_error(&zero, 400, "bad_request");
    still_serves(&d, &token);
}

#[test]
fn unauthorized_expired_revoked_forbidden() {
    let (d, token) = setup();
    let call = |t: Option<&str>| {
        let mut body = json!({"fn": "m.add", "int_a": 1, "int_b": 2});
        if let Some(t) = t {
            body["token"] = json!(t);
        }
        d.call(body)
    };
    assert_error(&call(None), 401, "unauthorized");
    assert_error(&call(Some("flr_0000")), 401, "unauthorized");
    assert_error(&call(Some("")), 401, "unauthorized");
    let a = d.post(
        "/v1/call",
        &[("Authorization", "Bearer nope")],
        br#"{"fn": "m.add"}"#,
    );
    assert_error(&a, 401, "unauthorized");

    // Revoked.
    let issued = d.admin(
        "POST",
        "/tenants/caro/tokens",
        Some(json!({"scopes": ["call"]})),
    );
    let (id, revocable) = (
        issued.body["id"].as_str().unwrap(),
        issued.body["token"].as_str().unwrap(),
    );
    assert_eq!(call(Some(revocable)).body["result"], json!(3));
    assert_eq!(
        d.admin("DELETE", &format!("/tokens/{id}"), None).status,
        200
    );
    assert_error(&call(Some(revocable)), 401, "token_revoked");

    // Expired: a token that lives two seconds.
    let soon = time_in(Duration::from_secs(2));
    let issued = d.admin(
        "POST",
        "/tenants/caro/tokens",
        Some(json!({"scopes": ["call"], "expires_at": soon})),
    );
    assert_eq!(issued.status, 201, "{:?}", issued.body);
    let short = issued.body["token"].as_str().unwrap().to_owned();
    assert_eq!(call(Some(&short)).body["result"], json!(3));
    std::thread::sleep(Duration::from_millis(2600));
    assert_error(&call(Some(&short)), 401, "token_expired");

    // Forbidden: a token without the call scope; an operator token on the call path.
    let deploy_only = d.token("caro", &["deploy"]);
    let a = call(Some(&deploy_only));
    assert_error(&a, 403, "forbidden");
    assert_eq!(a.body["error"]["detail"]["required_scope"], json!("call"));
    assert_error(&call(Some(&d.admin_token)), 403, "forbidden");
    // ...and a tenant token on the operator API.
    let a = falra_tests::http(
        "GET",
        &format!("{}/admin/v1/tenants", d.url),
        &[("Authorization", &format!("Bearer {token}"))],
        None,
    );
    assert_error(&a, 403, "forbidden");
    still_serves(&d, &token);
}

/// An RFC 3339 UTC time `after` from now, computed without a date library.
fn time_in(after: Duration) -> String {
    let secs = (std::time::SystemTime::now() + after)
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (proleptic Gregorian), as in Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[test]
fn fn_not_found_in_every_form() {
    let (d, token) = setup();
    for (f, detail) in [
        ("nosuch.f", json!({"module": "nosuch"})),
        ("os.system", json!({"module": "os"})),
        ("json.dumps", json!({"module": "json"})),
        ("m.nosuch", json!({"module": "m", "function": "nosuch"})),
        (
            "m.NotAFunction",
            json!({"module": "m", "function": "NotAFunction"}),
        ),
        ("m.CONSTANT", json!({"module": "m", "function": "CONSTANT"})),
        ("m.os.system", json!({"module": "m.os"})),
    ] {
        let a = d.call(json!({"token": token, "fn": f}));
        assert_error(&a, 404, "fn_not_found");
        assert_eq!(a.body["error"]["detail"], detail, "{f}");
    }
    still_serves(&d, &token);
}

#[test]
fn not_deployed_until_synced() {
    let d = Daemon::start();
    let a = d.admin("POST", "/tenants", Some(json!({"name": "fresh"})));
    assert_eq!(a.status, 201);
    let token = d.token("fresh", &["call"]);
    let a = d.call(json!({"token": token, "fn": "m.add"}));
    assert_error(&a, 409, "not_deployed");
    // A tenant without a repository cannot be synced either, with a clear answer.
    let a = d.admin("POST", "/tenants/fresh/sync", None);
    assert_error(&a, 400, "bad_request");
}

#[test]
fn payload_too_large() {
    let (d, token) = setup();
    let big = "x".repeat(70_000);
    let a = d.call(json!({"token": token, "fn": "m.add", "int_a": big, "int_b": ""}));
    assert_error(&a, 413, "payload_too_large");
    assert_eq!(a.body["error"]["detail"]["limit_bytes"], json!(65536));
    still_serves(&d, &token);
}

#[test]
fn function_errors_carry_type_message_and_tenant_traceback() {
    let (d, token) = setup();
    let a = d.call(json!({"token": token, "fn": "m.fail", "msg": "bad input"}));
    assert_error(&a, 422, "function_error");
    let detail = &a.body["error"]["detail"];
    assert_eq!(detail["type"], json!("ValueError"));
    assert_eq!(detail["message"], json!("bad input"));
    let tb = detail["traceback"].as_str().unwrap();
    assert!(tb.contains("in fail") && tb.contains("in helper"), "{tb}");
    assert!(tb.contains("m.py"), "{tb}");
    assert!(
        !tb.contains("<string>") && !tb.contains("_main"),
        "runner frames leak: {tb}"
    );

    // Wrong arguments are the function's error too.
    let a = d.call(json!({"token": token, "fn": "m.add", "int_a": 1}));
    assert_error(&a, 422, "function_error");
    assert_eq!(a.body["error"]["detail"]["type"], json!("TypeError"));

    // sys.exit inside a function is an exception like any other.
    let a = d.call(json!({"token": token, "fn": "m.exits", "code": 3}));
    assert_error(&a, 422, "function_error");
    assert_eq!(a.body["error"]["detail"]["type"], json!("SystemExit"));

    // A module that does not compile fails at import time with its own type.
    let a = d.call(json!({"token": token, "fn": "broken.f"}));
    assert_error(&a, 422, "function_error");
    assert_eq!(a.body["error"]["detail"]["type"], json!("SyntaxError"));
    still_serves(&d, &token);
}

#[test]
fn results_that_cannot_be_returned() {
    let (d, token) = setup();
    let a = d.call(json!({"token": token, "fn": "m.returns_bytes"}));
    assert_error(&a, 422, "result_not_serializable");
    assert_eq!(a.body["error"]["detail"]["type"], json!("bytes"));
    assert_eq!(a.body["error"]["detail"]["path"], json!("result['a'][1]"));
    let a = d.call(json!({"token": token, "fn": "m.returns_object"}));
    assert_error(&a, 422, "result_not_serializable");
    assert_eq!(a.body["error"]["detail"]["type"], json!("object"));

    let a = d.call(json!({"token": token, "fn": "m.huge", "n": 200_000}));
    assert_error(&a, 422, "result_too_large");
    assert_eq!(a.body["error"]["detail"]["limit_bytes"], json!(100_000));
    let a = d.call(json!({"token": token, "fn": "m.huge", "n": 1000}));
    assert_eq!(a.body["result"].as_str().unwrap().len(), 1000);
    still_serves(&d, &token);
}

#[test]
fn process_exited_with_code_or_signal() {
    let (d, token) = setup();
    let a = d.call(json!({"token": token, "fn": "m.hard_exit", "code": 7}));
    assert_error(&a, 422, "process_exited");
    assert_eq!(a.body["error"]["detail"]["exit_code"], json!(7));
    let a = d.call(json!({"token": token, "fn": "m.hard_exit", "code": 0}));
    assert_error(&a, 422, "process_exited");
    assert_eq!(a.body["error"]["detail"]["exit_code"], json!(0));
    let a = d.call(json!({"token": token, "fn": "m.killed"}));
    assert_error(&a, 422, "process_exited");
    assert_eq!(a.body["error"]["detail"]["signal"], json!(9));
    still_serves(&d, &token);
}

#[test]
fn timeout_kills_the_whole_process_tree() {
    let (d, token) = setup();
    let policy = d.admin(
        "PUT",
        "/tenants/caro/policy",
        Some(json!({"timeout_ms": 700})),
    );
    assert_eq!(policy.status, 200, "{:?}", policy.body);
    assert_eq!(policy.body["timeout_ms"], json!(700));

    let started = Instant::now();
    let a = d.call(json!({"token": token, "fn": "m.spin"}));
    assert_error(&a, 504, "timeout");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A marker unique to this run, so the check below sees only this call's grandchild.
    let marker = format!("600.{}", std::process::id());
    let a = d.call(json!({"token": token, "fn": "m.sleeper_tree", "marker": marker}));
    assert_error(&a, 504, "timeout");
    let survivors = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|cmd| String::from_utf8_lossy(cmd).contains(&marker))
        .count();
    assert_eq!(survivors, 0, "the function's child outlived the timeout");
    still_serves(&d, &token);
}

#[test]
fn unknown_routes_and_methods_answer_json() {
    let d = Daemon::start();
    let a = falra_tests::http("GET", &format!("{}/v1/nothing", d.url), &[], None);
    assert_error(&a, 404, "not_found");
    let a = falra_tests::http("GET", &format!("{}/v1/call", d.url), &[], None);
    assert_error(&a, 405, "method_not_allowed");
}
