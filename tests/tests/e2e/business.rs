//! Running a paid service: plans, overrides, admission limits, quotas, metering, audit,
//! metrics and the OpenAPI document, against a real daemon over HTTP.

use std::time::{Duration, Instant};

use falra_tests::{falra_bin, http, Answer, Daemon, GitRepo};
use serde_json::{json, Value};

const CODE: &[(&str, &str)] = &[(
    "work.py",
    "import time\n\n\
def nap(s=0.0):\n    time.sleep(s)\n    return 'rested'\n\n\
def spin(s=0.0):\n    t = time.process_time()\n    while time.process_time() - t < s:\n        pass\n    return 'spun'\n\n\
def fail():\n    raise ValueError('no')\n",
)];

fn call(d: &Daemon, token: &str, f: &str, kwargs: Value) -> Answer {
    let mut body = kwargs;
    body["token"] = json!(token);
    body["fn"] = json!(f);
    d.call(body)
}

fn code(a: &Answer) -> Value {
    a.body["error"]["code"].clone()
}

fn policy(d: &Daemon, tenant: &str, body: Value) {
    let a = d.admin("PUT", &format!("/tenants/{tenant}/policy"), Some(body));
    assert_eq!(a.status, 200, "{:?}", a.body);
}

#[test]
fn plans_and_overrides_apply_to_the_next_call() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(CODE);
    let token = d.tenant("caro", &repo);

    // The built-in plans exist; a new one starts from the defaults.
    let plans = d.admin("GET", "/plans", None);
    let names: Vec<&str> = plans.body["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["annual", "default", "free"]);
    let a = d.admin("PUT", "/plans/tiny", Some(json!({"timeout_ms": 300})));
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["policy"]["memory_mb"], json!(256));
    for bad in [
        json!({"memory_mb": 0}),
        json!({"timeout_ms": 5}),
        json!({"nope": 1}),
        json!({"cpu_seconds_per_month": 0}),
        json!({"max_unzipped_mb": 0}),
    ] {
        let a = d.admin("PUT", "/plans/tiny", Some(bad.clone()));
        assert_eq!(a.status, 400, "{bad}: {:?}", a.body);
    }
    let a = d.admin("PATCH", "/tenants/caro", Some(json!({"plan": "nosuch"})));
    assert_eq!(a.status, 400, "{:?}", a.body);

    // Onto the plan: its timeout applies at the next call.
    let a = d.admin("PATCH", "/tenants/caro", Some(json!({"plan": "tiny"})));
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["policy"]["timeout_ms"], json!(300));
    let r = call(&d, &token, "work.nap", json!({"s": 1.0}));
    assert_eq!(code(&r), json!("timeout"), "{:?}", r.body);
    // A tenant override wins over the plan…
    policy(&d, "caro", json!({"timeout_ms": 5000}));
    let r = call(&d, &token, "work.nap", json!({"s": 1.0}));
    assert_eq!(r.body["result"], json!("rested"), "{:?}", r.body);
    let shown = d.admin("GET", "/tenants/caro", None);
    assert_eq!(shown.body["overrides"], json!({"timeout_ms": 5000}));
    // …until it is reset; then the plan's value, changed meanwhile, applies.
    let a = d.admin("PUT", "/plans/tiny", Some(json!({"timeout_ms": 4000})));
    assert_eq!(a.status, 200);
    policy(&d, "caro", json!({"reset": ["timeout_ms"]}));
    let shown = d.admin("GET", "/tenants/caro", None);
    assert_eq!(shown.body["policy"]["timeout_ms"], json!(4000));
    assert_eq!(shown.body["overrides"], json!({}));
    let r = call(&d, &token, "work.nap", json!({"s": 1.0}));
    assert_eq!(r.body["result"], json!("rested"), "{:?}", r.body);

    // Resetting a field that does not exist changes nothing.
    let a = d.admin(
        "PUT",
        "/tenants/caro/policy",
        Some(json!({"reset": ["memroy_mb"]})),
    );
    assert_eq!(
        (a.status, code(&a)),
        (400, json!("bad_request")),
        "{:?}",
        a.body
    );
    // The default plan cannot go (new tenants are put on it).
    let a = d.admin("DELETE", "/plans/default", None);
    assert_eq!(
        (a.status, code(&a)),
        (409, json!("conflict")),
        "{:?}",
        a.body
    );
    // A plan in use cannot go; an unused one can.
    let a = d.admin("DELETE", "/plans/tiny", None);
    assert_eq!(
        (a.status, code(&a)),
        (409, json!("conflict")),
        "{:?}",
        a.body
    );
    d.admin("PATCH", "/tenants/caro", Some(json!({"plan": "default"})));
    assert_eq!(d.admin("DELETE", "/plans/tiny", None).status, 200);
    assert_eq!(d.admin("DELETE", "/plans/tiny", None).status, 404);
}

#[test]
fn rate_and_concurrency_limits_answer_429_and_leave_other_tenants_alone() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(CODE);
    let caro = d.tenant("caro", &repo);
    let jc = d.tenant("jc", &repo);

    policy(&d, "caro", json!({"calls_per_minute": 3}));
    for _ in 0..3 {
        let r = call(&d, &caro, "work.nap", json!({}));
        assert_eq!(r.body["ok"], json!(true), "{:?}", r.body);
    }
    let r = call(&d, &caro, "work.nap", json!({}));
    assert_eq!(
        (r.status, code(&r)),
        (429, json!("rate_limited")),
        "{:?}",
        r.body
    );
    let wait: u64 = r.retry_after.as_deref().unwrap().parse().unwrap();
    assert!((1..=21).contains(&wait), "Retry-After {wait}");
    assert_eq!(call(&d, &jc, "work.nap", json!({})).body["ok"], json!(true));

    // One call at a time for caro: a second one while the first runs is refused, and jc's
    // calls go through at once meanwhile.
    policy(
        &d,
        "caro",
        json!({"calls_per_minute": 600, "max_concurrency": 1}),
    );
    let slow = d.call_in_background(json!({"token": caro, "fn": "work.nap", "s": 2.0}));
    std::thread::sleep(Duration::from_millis(600));
    let r = call(&d, &caro, "work.nap", json!({}));
    assert_eq!(
        (r.status, code(&r)),
        (429, json!("concurrency_limited")),
        "{:?}",
        r.body
    );
    assert!(r.retry_after.is_some());
    let started = Instant::now();
    let r = call(&d, &jc, "work.nap", json!({}));
    assert_eq!(r.body["ok"], json!(true));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "jc waited on caro"
    );
    assert_eq!(slow.join().unwrap().body["result"], json!("rested"));
    assert_eq!(
        call(&d, &caro, "work.nap", json!({})).body["ok"],
        json!(true)
    );
}

#[test]
fn the_node_cap_answers_503_overloaded() {
    let d = Daemon::start_with(&["--max-children", "1"]);
    let repo = GitRepo::with_files(CODE);
    let caro = d.tenant("caro", &repo);
    let jc = d.tenant("jc", &repo);
    let slow = d.call_in_background(json!({"token": caro, "fn": "work.nap", "s": 2.0}));
    std::thread::sleep(Duration::from_millis(600));
    let r = call(&d, &jc, "work.nap", json!({}));
    assert_eq!(
        (r.status, code(&r)),
        (503, json!("overloaded")),
        "{:?}",
        r.body
    );
    assert!(r.retry_after.is_some());
    assert_eq!(slow.join().unwrap().body["ok"], json!(true));
    assert_eq!(call(&d, &jc, "work.nap", json!({})).body["ok"], json!(true));
}

#[test]
fn the_monthly_cpu_quota_is_enforced_from_metered_usage() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(CODE);
    let token = d.tenant("caro", &repo);
    policy(&d, "caro", json!({"cpu_seconds_per_month": 1}));
    let r = call(&d, &token, "work.spin", json!({"s": 1.2}));
    assert_eq!(r.body["result"], json!("spun"), "{:?}", r.body);
    assert!(
        r.body["usage"]["cpu_ms"].as_u64().unwrap() >= 1000,
        "{:?}",
        r.body
    );
    let r = call(&d, &token, "work.nap", json!({}));
    assert_eq!(
        (r.status, code(&r)),
        (429, json!("quota_exceeded")),
        "{:?}",
        r.body
    );
    assert!(r.retry_after.is_some());
    assert!(r.body["error"]["detail"]["used_cpu_ms"].as_u64().unwrap() >= 1000);
    // Raising the quota lets calls through again, without a restart.
    policy(&d, "caro", json!({"cpu_seconds_per_month": null}));
    assert_eq!(
        call(&d, &token, "work.nap", json!({})).body["ok"],
        json!(true)
    );
}

#[test]
fn usage_totals_match_the_calls_made_as_json_csv_and_on_the_command_line() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(CODE);
    let caro = d.tenant("caro", &repo);
    let jc = d.tenant("jc", &repo);
    for _ in 0..5 {
        assert_eq!(
            call(&d, &caro, "work.nap", json!({})).body["ok"],
            json!(true)
        );
    }
    for _ in 0..2 {
        assert_eq!(
            code(&call(&d, &caro, "work.fail", json!({}))),
            json!("function_error")
        );
    }
    assert_eq!(
        code(&call(&d, &caro, "work.nope", json!({}))),
        json!("fn_not_found")
    );
    assert_eq!(call(&d, &jc, "work.nap", json!({})).body["ok"], json!(true));
    // Not a tenant's call: not metered.
    assert_eq!(
        code(&call(&d, "flr_bogus", "work.nap", json!({}))),
        json!("unauthorized")
    );

    let u = d.admin("GET", "/usage?tenant=caro", None);
    assert_eq!(u.status, 200, "{:?}", u.body);
    let rows = u.body["functions"].as_array().unwrap();
    let row = |f: &str| rows.iter().find(|r| r["fn"] == f).unwrap().clone();
    assert_eq!(row("work.nap")["calls"], json!(5));
    assert_eq!(row("work.nap")["ok"], json!(5));
    assert_eq!(row("work.fail")["errors"], json!(2));
    assert_eq!(row("work.nope")["calls"], json!(1));
    assert_eq!(
        u.body["tenants"],
        json!([{
            "tenant": "caro", "calls": 8, "ok": 5, "errors": 3,
            "wall_ms": u.body["tenants"][0]["wall_ms"], "cpu_ms": u.body["tenants"][0]["cpu_ms"],
            "deploy_cpu_ms": u.body["tenants"][0]["deploy_cpu_ms"],
            "bytes_in": u.body["tenants"][0]["bytes_in"], "bytes_out": u.body["tenants"][0]["bytes_out"],
        }])
    );
    assert!(row("work.nap")["cpu_ms"].as_i64().unwrap() > 0);
    // The deploy's own children (compiling, listing) are metered apart from the calls.
    let deploy_cpu: i64 = rows
        .iter()
        .filter(|r| r["fn"].as_str().unwrap().starts_with("<deploy:"))
        .map(|r| r["cpu_ms"].as_i64().unwrap())
        .sum();
    assert_eq!(u.body["tenants"][0]["deploy_cpu_ms"], json!(deploy_cpu));
    assert!(deploy_cpu > 0, "{rows:?}");
    assert!(row("work.nap")["bytes_in"].as_i64().unwrap() > 0);
    assert!(row("work.nap")["bytes_out"].as_i64().unwrap() > 0);

    let all = d.admin("GET", "/usage", None);
    assert_eq!(all.body["tenants"].as_array().unwrap().len(), 2);
    let none = d.admin("GET", "/usage?from=2020-01-01&to=2020-02-01", None);
    assert_eq!(none.body["functions"], json!([]));
    let bad = d.admin("GET", "/usage?from=yesterday", None);
    assert_eq!(bad.status, 400);

    let csv = d.admin("GET", "/usage?tenant=caro&format=csv", None);
    let text = csv.body.as_str().unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "tenant,fn,calls,ok,errors,wall_ms,cpu_ms,max_peak_memory_bytes,bytes_in,bytes_out"
    );
    let fail_line = text
        .lines()
        .find(|l| l.starts_with("caro,work.fail,"))
        .unwrap();
    assert!(
        fail_line.starts_with("caro,work.fail,2,0,2,"),
        "{fail_line}"
    );

    let out = std::process::Command::new(falra_bin())
        .args(["usage", "--tenant", "caro", "--csv", "--url", &d.url])
        .env("FALRA_ADMIN_TOKEN", &d.admin_token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), text);
    let out = std::process::Command::new(falra_bin())
        .args(["usage", "--url", &d.url])
        .env("FALRA_ADMIN_TOKEN", &d.admin_token)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("TENANT") && table.contains("work.nap"),
        "{table}"
    );
}

#[test]
fn operator_actions_and_deploys_are_audited_with_who_and_where() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(CODE);
    d.tenant("caro", &repo);
    policy(&d, "caro", json!({"timeout_ms": 1000}));
    let a = d.admin(
        "PUT",
        "/tenants/caro/secrets/k",
        Some(json!({"value": "hidden-value-1"})),
    );
    assert_eq!(a.status, 200);
    let deploy = d.token("caro", &["deploy"]);
    let up = d.with_token(
        "PUT",
        "/v1/modules/extra",
        &deploy,
        Some(b"def f():\n    return 1\n"),
    );
    assert_eq!(up.status, 200, "{:?}", up.body);

    let events = d.admin("GET", "/audit?tenant=caro", None);
    assert_eq!(events.status, 200);
    let list = events.body["events"].as_array().unwrap();
    let actions: Vec<&str> = list.iter().map(|e| e["action"].as_str().unwrap()).collect();
    for expected in [
        "tenant.create",
        "deploy.sync",
        "token.issue",
        "policy.set",
        "secret.set",
        "deploy.upload",
    ] {
        assert!(
            actions.contains(&expected),
            "{expected} missing from {actions:?}"
        );
    }
    // Newest first; every event says who and from where; no secret value is in it.
    assert_eq!(actions[0], "deploy.upload");
    for e in list {
        assert!(e["actor"].as_str().unwrap().starts_with("tok_"), "{e}");
        assert_eq!(e["remote"], json!("127.0.0.1"), "{e}");
        assert!(e["at"].as_str().unwrap().ends_with('Z'));
    }
    assert!(!events.body.to_string().contains("hidden-value-1"));
    let upload = list
        .iter()
        .find(|e| e["action"] == "deploy.upload")
        .unwrap();
    assert_eq!(upload["detail"]["module"], json!("extra"));
    assert_eq!(d.admin("GET", "/audit?since=bad", None).status, 400);
}

#[test]
fn failed_authentications_are_limited_per_address() {
    let d = Daemon::start_with(&["--auth-failures-per-minute", "5"]);
    let repo = GitRepo::with_files(CODE);
    let token = d.tenant("caro", &repo);
    for _ in 0..5 {
        let r = call(&d, "flr_wrong", "work.nap", json!({}));
        assert_eq!(r.status, 401);
    }
    let r = call(&d, "flr_wrong", "work.nap", json!({}));
    assert_eq!(
        (r.status, code(&r)),
        (429, json!("rate_limited")),
        "{:?}",
        r.body
    );
    assert!(r.retry_after.is_some());
    // Failures stay refused until the allowance refills, but a valid token from the same
    // address (a proxy, a NAT) is served.
    let r = call(&d, &token, "work.nap", json!({}));
    assert_eq!(r.status, 200, "{:?}", r.body);
    let m = http("GET", &format!("{}/metrics", d.url), &[], None);
    assert!(m
        .body
        .as_str()
        .unwrap()
        .contains("falra_auth_failures_total 6"));
}

#[test]
fn a_token_expiring_mid_session_stops_working_and_scopes_are_kept() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(CODE);
    d.tenant("caro", &repo);
    let soon = time_in(3);
    let a = d.admin(
        "POST",
        "/tenants/caro/tokens",
        Some(json!({"scopes": ["call"], "expires_at": soon})),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    let token = a.body["token"].as_str().unwrap().to_owned();
    assert_eq!(
        call(&d, &token, "work.nap", json!({})).body["ok"],
        json!(true)
    );
    std::thread::sleep(Duration::from_millis(3200));
    let r = call(&d, &token, "work.nap", json!({}));
    assert_eq!(
        (r.status, code(&r)),
        (401, json!("token_expired")),
        "{:?}",
        r.body
    );

    // A deploy token cannot call; a call token cannot deploy.
    let deploy = d.token("caro", &["deploy"]);
    let r = call(&d, &deploy, "work.nap", json!({}));
    assert_eq!((r.status, code(&r)), (403, json!("forbidden")));
    let caller = d.token("caro", &["call"]);
    let r = d.with_token("PUT", "/v1/modules/x", &caller, Some(b"x = 1\n"));
    assert_eq!(r.status, 403);

    // Removing the tenant: its tokens stop working, its files and secrets go.
    d.admin("PUT", "/tenants/caro/secrets/k", Some(json!({"value": 1})));
    assert_eq!(d.admin("DELETE", "/tenants/caro", None).status, 200);
    let r = call(&d, &caller, "work.nap", json!({}));
    assert_eq!(r.status, 401);
    assert!(!d.data_dir.join("versions/caro").exists());
    assert!(!d.data_dir.join("github/git_caro").exists());
    let a = d.admin("POST", "/tenants", Some(json!({"name": "caro"})));
    assert_eq!(a.status, 201);
    let secrets = d.admin("GET", "/tenants/caro/secrets", None);
    assert_eq!(secrets.body["secrets"], json!([]));
}

/// An RFC 3339 time `seconds` from now.
fn time_in(seconds: u64) -> String {
    let out = std::process::Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("+{seconds} seconds"),
            "+%Y-%m-%dT%H:%M:%SZ",
        ])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn metrics_count_calls_and_the_openapi_document_names_every_route() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(CODE);
    let token = d.tenant("caro", &repo);
    for _ in 0..3 {
        call(&d, &token, "work.nap", json!({}));
    }
    call(&d, &token, "work.fail", json!({}));
    let expected = [
        "falra_calls_total{tenant=\"caro\",outcome=\"ok\"} 3",
        "falra_calls_total{tenant=\"caro\",outcome=\"function_error\"} 1",
        "falra_call_duration_seconds_count{tenant=\"caro\"} 4",
        "falra_active_children 0",
        "# TYPE falra_call_duration_seconds histogram",
    ];
    // A call's answer is sent before its child is reaped and its cgroup given back, so the
    // gauge of live children reaches 0 a moment after the last answer: read until it does.
    let mut text = String::new();
    for _ in 0..50 {
        let m = http("GET", &format!("{}/metrics", d.url), &[], None);
        assert_eq!(m.status, 200);
        text = m.body.as_str().unwrap().to_owned();
        if expected.iter().all(|line| text.contains(line)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for line in expected {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }

    let doc = http("GET", &format!("{}/openapi.json", d.url), &[], None);
    assert_eq!(doc.status, 200);
    assert_eq!(doc.body["openapi"], json!("3.1.0"));
    let paths = doc.body["paths"].as_object().unwrap();
    let mut checked = 0;
    for (path, item) in paths {
        let concrete = path
            .replace("{name}", "nobody")
            .replace("{tenant}", "nobody")
            .replace("{module}", "m")
            .replace("{key}", "k")
            .replace("{id}", "tok_0");
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            let a = http(
                &method.to_uppercase(),
                &format!("{}{concrete}", d.url),
                &[],
                Some(b"{}"),
            );
            let message = a.body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message != "no such endpoint" && code(&a) != json!("method_not_allowed"),
                "{method} {path} is documented but not routed: {:?}",
                a.body
            );
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} operations documented");
}
