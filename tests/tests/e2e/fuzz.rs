//! The daemon's OpenAPI document (generated from the handlers) checked by an OpenAPI validator,
//! and the daemon fuzzed from it by schemathesis (both from PyPI, in an environment the test
//! command makes), with concurrent workers, bounded in time, operator and tenant: no server
//! error; every answer's status code documented for its operation, its content type and its
//! body as the document says; and a request the document calls invalid refused.

use std::process::Command;

use falra_tests::{Daemon, GitRepo};

/// The test environment's schemathesis: `target/fuzz-venv`, beside the test Python's
/// `target/test-venv` (both made by scripts/test-python.sh).
fn fuzz_tool(name: &str) -> std::path::PathBuf {
    let python = std::path::PathBuf::from(
        std::env::var_os("FALRA_TEST_PYTHON").expect("FALRA_TEST_PYTHON (scripts/test.sh sets it)"),
    );
    let bin = python
        .parent()
        .and_then(|p| p.parent())
        .and_then(|p| p.parent())
        .expect("target/test-venv/bin/python")
        .join("fuzz-venv/bin")
        .join(name);
    assert!(
        bin.is_file(),
        "{} is missing: run the tests through scripts/test.sh, which installs it",
        bin.display()
    );
    bin
}

/// The checks every answer passes.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance,negative_data_rejection";

#[test]
fn the_document_is_valid_openapi() {
    let d = Daemon::start();
    let doc = falra_tests::http("GET", &format!("{}/openapi.json", d.url), &[], None);
    assert_eq!(doc.status, 200);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, doc.body.to_string()).unwrap();
    let out = Command::new(fuzz_tool("openapi-spec-validator"))
        .arg(&file)
        .output()
        .expect("run openapi-spec-validator");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every operation names its id, its tag and its answers.
    let mut ids = std::collections::BTreeSet::new();
    for (path, item) in doc.body["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap_or_default().to_owned();
            assert!(
                ids.insert(id.clone()),
                "{method} {path}: operationId {id:?} twice"
            );
            assert!(op["tags"].is_array(), "{method} {path} has no tag");
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()));
        }
    }
}

/// Module uploads take their source as raw text: schemathesis' "invalid" bodies for them
/// (JSON `null`, `[]`) arrive as the text `null` or `[]`, which is valid Python, so they are
/// fuzzed without the negative-data check (every other check stands).
const UPLOADS: &str = "modules/\\{module\\}$";

/// A follow is a stream that stays open for its `seconds`: tested end to end in `devex`.
const STREAMS: &str = "calls/follow$";

fn fuzz(d: &Daemon, token: &str, include: &str, seconds: u32) {
    let exclude = format!("{UPLOADS}|{STREAMS}");
    run_schemathesis(d, token, include, Some(&exclude), CHECKS, seconds);
    let text_checks = CHECKS.replace(",negative_data_rejection", "");
    let uploads = format!("{include}.*{UPLOADS}");
    run_schemathesis(d, token, &uploads, None, &text_checks, 15);
}

fn run_schemathesis(
    d: &Daemon,
    token: &str,
    include: &str,
    exclude: Option<&str>,
    checks: &str,
    seconds: u32,
) {
    let bin = fuzz_tool("schemathesis");
    let report = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .arg(format!("{}", seconds + 120))
        .arg(bin)
        .args(["run", &format!("{}/openapi.json", d.url)])
        .args(["--checks", checks])
        .args(["--workers", "2"])
        .args(["--max-time", &seconds.to_string()])
        .args(["--max-examples", "40"])
        // Fixed, so a failure can be replayed; FALRA_FUZZ_SEED explores further.
        .args([
            "--seed",
            &std::env::var("FALRA_FUZZ_SEED").unwrap_or_else(|_| "7".into()),
        ])
        .args(["--request-timeout", "30"])
        .args(["--generation-database", "none"])
        .args(["--include-path-regex", include])
        .args(match exclude {
            Some(e) => vec!["--exclude-path-regex", e],
            None => vec![],
        })
        // (The coverage phase is left out: its generator trips over the call body's open
        // schema in schemathesis itself, not in the daemon.)
        .args(["--phases", "examples,fuzzing"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg("--report-dir")
        .arg(report.path())
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .output()
        .expect("run schemathesis");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures ({}):\n{}\n{}\ndaemon log:\n{}",
        out.status,
        text,
        String::from_utf8_lossy(&out.stderr),
        d.log()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        d.log().lines().all(|l| !l.contains("panicked")),
        "{}",
        d.log()
    );
}

#[test]
fn the_operator_api_never_answers_a_server_error() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(&[("m.py", "def add(a: int, b: int):\n    return a + b\n")]);
    d.tenant("caro", &repo);
    let token = d.admin_token.clone();
    fuzz(&d, &token, "^/(admin|hooks|healthz|metrics|openapi)", 60);
}

#[test]
fn the_tenant_api_never_answers_a_server_error() {
    let d = Daemon::start_with(&["--auth-failures-per-minute", "100000"]);
    let repo = GitRepo::with_files(&[("m.py", "def add(a: int, b: int):\n    return a + b\n")]);
    d.tenant("caro", &repo);
    let token = d.token("caro", &["call", "deploy", "jobs"]);
    fuzz(&d, &token, "^/v1/", 45);
}
