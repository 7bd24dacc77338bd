//! The daemon fuzzed from its own OpenAPI document by schemathesis (from PyPI, in an
//! environment the test command makes), with concurrent workers, bounded in time: no operation may ever answer
//! a 5xx other than a documented `503` (`overloaded`, `shutting_down`) for anything a client
//! sends, operator or tenant.

use std::process::Command;

use falra_tests::{Daemon, GitRepo};

/// The test environment's schemathesis: `target/fuzz-venv`, beside the test Python's
/// `target/test-venv` (both made by scripts/test-python.sh).
fn schemathesis() -> Option<std::path::PathBuf> {
    let python = std::path::PathBuf::from(std::env::var_os("FALRA_TEST_PYTHON")?);
    let target = python.parent()?.parent()?.parent()?;
    let bin = target.join("fuzz-venv/bin/schemathesis");
    bin.is_file().then_some(bin)
}

fn fuzz(d: &Daemon, token: &str, include: &str, seconds: u32) {
    let bin = schemathesis().expect(
        "schemathesis is missing: run the tests through scripts/test.sh, which installs it",
    );
    let report = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .arg(format!("{}", seconds + 120))
        .arg(bin)
        .args(["run", &format!("{}/openapi.json", d.url)])
        .args(["--checks", "not_a_server_error"])
        .args(["--workers", "2"])
        .args(["--max-time", &seconds.to_string()])
        .args(["--max-examples", "40"])
        .args(["--seed", "7"])
        .args(["--request-timeout", "30"])
        .args(["--generation-database", "none"])
        .args(["--include-path-regex", include])
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
