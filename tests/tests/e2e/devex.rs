//! What a developer coming from Lambda expects day to day, end to end against the real
//! binary: logs that keep what was printed and can be read back by call id and followed live.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use falra_tests::{falra_bin, Daemon, GitRepo};
use serde_json::{json, Value};

const CODE: &str = r#"
import sys, time, os

def kw(**k):
    return list(k)

def noisy():
    print("out1")
    print("err1", file=sys.stderr)
    sys.stdout.write("out2\n")
    sys.stderr.buffer.write(b"err2\n")
    os.write(1, b"raw\n")
    return 1

def slow():
    print("I was here")
    time.sleep(60)

def flood():
    print("FIRST LINE")
    for i in range(20000):
        print("line", i, "x" * 40)
    print("LAST LINE", file=sys.stderr)
    raise ValueError("boom at the end")
"#;

fn setup() -> (Daemon, String) {
    let d = Daemon::start();
    let repo = GitRepo::with_files(&[("dev.py", CODE)]);
    let token = d.tenant("caro", &repo);
    (d, token)
}

fn call(d: &Daemon, token: &str, f: &str, kwargs: Value) -> falra_tests::Answer {
    let mut body = kwargs;
    body["token"] = json!(token);
    body["fn"] = json!(f);
    d.call(body)
}

#[test]
fn keyword_arguments_reach_the_function_in_the_order_sent() {
    let (d, token) = setup();
    let body = br#"{"fn": "dev.kw", "z": 1, "a": 2, "m": 3, "b": 4}"#;
    let a = d.with_token("POST", "/v1/call", &token, Some(body));
    assert_eq!(
        a.body["result"],
        json!(["z", "a", "m", "b"]),
        "{:?}",
        a.body
    );
}

#[test]
fn logs_keep_order_streams_and_what_was_printed_before_a_timeout() {
    let (d, token) = setup();
    let a = call(&d, &token, "dev.noisy", json!({}));
    assert_eq!(a.body["result"], json!(1), "{:?}", a.body);
    assert_eq!(a.body["logs"], "out1\nerr1\nout2\nerr2\nraw\n");
    let id = a.body["call_id"].as_str().unwrap().to_owned();
    let shown = d.with_token("GET", &format!("/v1/calls/{id}"), &token, None);
    assert_eq!(shown.status, 200, "{:?}", shown.body);
    assert_eq!(shown.body["status"], "succeeded");
    assert_eq!(shown.body["fn"], "dev.noisy");
    assert_eq!(shown.body["logs"], a.body["logs"]);
    let streams: Vec<&str> = shown.body["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["stream"].as_str().unwrap())
        .collect();
    assert_eq!(streams, ["stdout", "stderr", "stdout", "stderr", "stdout"]);

    d.admin(
        "PUT",
        "/tenants/caro/policy",
        Some(json!({"timeout_ms": 1500})),
    );
    let a = call(&d, &token, "dev.slow", json!({}));
    assert_eq!(a.body["error"]["code"], "timeout", "{:?}", a.body);
    assert_eq!(a.body["logs"], "I was here\n");
    let id = a.body["call_id"].as_str().unwrap();
    let shown = d.admin("GET", &format!("/calls/{id}"), None);
    assert_eq!(shown.status, 200, "{:?}", shown.body);
    assert_eq!(shown.body["status"], "failed");
    assert_eq!(shown.body["error"]["code"], "timeout");
    assert!(
        shown.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1500"),
        "{:?}",
        shown.body
    );
    assert_eq!(shown.body["logs"], "I was here\n");
    assert!(shown.body["usage"]["wall_ms"].as_u64().unwrap() >= 1500);
}

#[test]
fn logs_past_the_cap_keep_their_head_and_tail() {
    let (d, token) = setup();
    let a = call(&d, &token, "dev.flood", json!({}));
    assert_eq!(a.body["error"]["code"], "function_error", "{:?}", a.body);
    let logs = a.body["logs"].as_str().unwrap();
    assert!(logs.len() < 70 << 10, "{}", logs.len());
    assert!(logs.starts_with("FIRST LINE\n"), "{}", &logs[..100]);
    assert!(
        logs.ends_with("LAST LINE\n"),
        "{}",
        &logs[logs.len() - 100..]
    );
    assert!(logs.contains("bytes of logs cut here"), "the cut is marked");
    let id = a.body["call_id"].as_str().unwrap();
    let shown = d.with_token("GET", &format!("/v1/calls/{id}"), &token, None);
    assert_eq!(shown.body["logs"].as_str(), Some(logs));
    assert!(shown.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("boom at the end"));
    let lines = shown.body["lines"].as_array().unwrap();
    assert!(lines.iter().any(|l| l["stream"] == "falra"));
    assert_eq!(lines.last().unwrap()["stream"], "stderr");
}

#[test]
fn a_call_is_found_only_by_its_own_tenant_and_bad_ids_are_refused() {
    let (d, token) = setup();
    let other = d.tenant(
        "dan",
        &GitRepo::with_files(&[("x.py", "def f():\n    print('dan')\n")]),
    );
    let a = call(&d, &token, "dev.noisy", json!({}));
    let id = a.body["call_id"].as_str().unwrap();
    let theirs = d.with_token("GET", &format!("/v1/calls/{id}"), &other, None);
    assert_eq!(theirs.status, 404, "{:?}", theirs.body);
    assert_eq!(theirs.body["error"]["code"], "not_found");
    let bad = d.with_token("GET", "/v1/calls/nope", &token, None);
    assert_eq!(bad.status, 400, "{:?}", bad.body);
    let anon = d.http_get(&format!("/v1/calls/{id}"));
    assert_eq!(anon.status, 401, "{:?}", anon.body);
    let missing = d.admin("GET", "/calls/c_0000000000000000", None);
    assert_eq!(missing.status, 404);
    let follow = d.admin("GET", "/tenants/caro/calls/follow?seconds=0", None);
    assert_eq!(follow.status, 400, "{:?}", follow.body);
    let follow = d.admin("GET", "/tenants/nobody/calls/follow", None);
    assert_eq!(follow.status, 404, "{:?}", follow.body);
}

#[test]
fn stored_logs_are_pruned_to_the_tenant_s_size() {
    let (d, token) = setup();
    let set = d.admin("PUT", "/tenants/caro/policy", Some(json!({"log_mb": 1})));
    assert_eq!(set.status, 200, "{:?}", set.body);
    let bad = d.admin("PUT", "/tenants/caro/policy", Some(json!({"log_mb": 0})));
    assert_eq!(bad.status, 400, "{:?}", bad.body);
    // Each flood keeps 64 KiB of logs: 1 MiB holds 16 of them; 40 calls, pruned every 30 s.
    let first = call(&d, &token, "dev.flood", json!({}));
    let first_id = first.body["call_id"].as_str().unwrap().to_owned();
    let started = std::time::Instant::now();
    let mut last_id = String::new();
    while started.elapsed() < Duration::from_secs(90) {
        let a = call(&d, &token, "dev.flood", json!({}));
        last_id = a.body["call_id"].as_str().unwrap().to_owned();
        let gone = d.admin("GET", &format!("/calls/{first_id}"), None);
        if gone.body["logs"] == "" {
            break;
        }
    }
    let gone = d.admin("GET", &format!("/calls/{first_id}"), None);
    assert_eq!(gone.status, 200, "the record stays: {:?}", gone.body);
    assert_eq!(gone.body["logs"], "", "the oldest logs go past log_mb");
    let kept = d.admin("GET", &format!("/calls/{last_id}"), None);
    assert!(kept.body["logs"]
        .as_str()
        .unwrap()
        .starts_with("FIRST LINE"));
}

#[test]
fn the_cli_shows_a_call_s_logs_and_follows_a_tenant_live() {
    let (d, token) = setup();
    let a = call(&d, &token, "dev.noisy", json!({}));
    let id = a.body["call_id"].as_str().unwrap();
    let out = std::process::Command::new(falra_bin())
        .args(["logs", id, "--url", &d.url])
        .env("FALRA_ADMIN_TOKEN", &d.admin_token)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("dev.noisy") && text.contains("succeeded"),
        "{text}"
    );
    assert!(text.contains("err | err1"), "{text}");
    assert!(text.contains("out | out2"), "{text}");

    let mut follow = std::process::Command::new(falra_bin())
        .args(["logs", "--tenant", "caro", "--follow", "--url", &d.url])
        .env("FALRA_ADMIN_TOKEN", &d.admin_token)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(follow.stdout.take().unwrap());
    // The follow is connected once it prints its header line.
    let mut header = String::new();
    reader.read_line(&mut header).unwrap();
    let b = call(&d, &token, "dev.noisy", json!({}));
    let b_id = b.body["call_id"].as_str().unwrap().to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        for line in reader.lines() {
            let Ok(line) = line else { break };
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("raw") {
                break;
            }
        }
        let _ = tx.send(seen);
    });
    let seen = rx.recv_timeout(Duration::from_secs(20));
    let _ = follow.kill();
    let _ = follow.wait();
    let seen = seen.expect("the follow printed the new call");
    assert!(seen.contains(&b_id), "{seen}");
    assert!(seen.contains("err | err1"), "{seen}");
}

#[test]
fn versions_are_named_by_commit_wherever_a_version_is_taken() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(&[("v.py", "def get():\n    return 1\n")]);
    let token = d.tenant("caro", &repo);
    let first = repo.head();
    repo.commit(&[("v.py", "def get():\n    return 2\n")]);
    d.sync("caro");
    let second = repo.head();
    let jobs = d.token("caro", &["jobs"]);

    let pinned = |version: &str| {
        d.post(
            &format!("/v1/call?version={version}"),
            &[],
            json!({"token": token, "fn": "v.get"})
                .to_string()
                .as_bytes(),
        )
    };
    assert_eq!(pinned(&first).body["result"], 1, "full SHA");
    assert_eq!(pinned(&first[..7]).body["result"], 1, "short SHA");
    assert_eq!(pinned(&second[..10].to_uppercase()).body["result"], 2);
    let short = pinned(&first[..6]);
    assert_eq!(
        short.status, 400,
        "six digits are too few: {:?}",
        short.body
    );
    assert_eq!(short.body["error"]["detail"]["parameter"], "version");
    let none = pinned("0000000");
    assert_eq!(none.status, 400);
    assert!(none.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no version"));

    // The versions list shows commit, uploads and activation, to tenants and operators alike.
    let versions = d.admin("GET", "/tenants/caro/versions", None);
    assert_eq!(versions.status, 200, "{:?}", versions.body);
    let listed = versions.body["versions"].as_array().unwrap();
    assert_eq!(listed[0]["commit"], second.as_str());
    assert_eq!(listed[1]["commit"], first.as_str());
    assert!(listed[0]["activated_at"].is_string());
    let own = d.with_token("GET", "/v1/versions", &token, None);
    assert_eq!(own.body["versions"], versions.body["versions"]);

    // Rollback, functions and jobs take a commit too.
    let back = d.admin(
        "POST",
        "/tenants/caro/rollback",
        Some(json!({"version": &first[..8]})),
    );
    assert_eq!(back.status, 200, "{:?}", back.body);
    assert_eq!(back.body["version"], listed[1]["id"]);
    let r = d.call(json!({"token": token, "fn": "v.get"}));
    assert_eq!(r.body["result"], 1);
    let fns = d.with_token(
        "GET",
        &format!("/v1/functions?version={}", &second[..9]),
        &token,
        None,
    );
    assert_eq!(fns.status, 200, "{:?}", fns.body);
    let job = d.with_token(
        "POST",
        &format!("/v1/jobs?version={}", &second[..7]),
        &jobs,
        Some(br#"{"fn": "v.get"}"#),
    );
    assert_eq!(job.status, 202, "{:?}", job.body);
    assert_eq!(job.body["version"], listed[0]["id"]);
    let gone = d.admin(
        "POST",
        "/tenants/caro/rollback",
        Some(json!({"version": "1234567"})),
    );
    assert_eq!(gone.status, 404, "{:?}", gone.body);

    // On the command line.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(falra_bin())
            .args(args)
            .args(["--url", d.url.trim_start_matches("http://")])
            .env("FALRA_ADMIN_TOKEN", &d.admin_token)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = cli(&["versions", "caro"]);
    assert!(ok, "{err}");
    assert!(out.contains(&second) && out.contains(&first), "{out}");
    let (ok, _, err) = cli(&["tenant", "rollback", "caro", &second[..7]]);
    assert!(ok, "{err}");
    assert_eq!(
        d.call(json!({"token": token, "fn": "v.get"})).body["result"],
        2
    );
    let (ok, _, err) = cli(&["tenant", "set", "caro", "--plan", "free"]);
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&["policy", "show", "caro"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("on plan free") && out.contains("timeout_ms"),
        "{out}"
    );
    let (ok, _, err) = cli(&["tenant", "set", "caro", "--plan", "nope"]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "one line, no backtrace: {err}");
}

#[test]
fn falra_call_takes_arguments_from_a_file_or_stdin_and_prints_the_result_or_the_answer() {
    let (d, token) = setup();
    let run = |args: &[&str], stdin: &str| {
        let mut child = std::process::Command::new(falra_bin())
            .arg("call")
            .args(args)
            .args(["--url", &d.url])
            .env("FALRA_TOKEN", &token)
            .env("RUST_BACKTRACE", "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(&["dev.kw", "-"], r#"{"q": 1, "p": [2]}"#);
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!(["q", "p"])
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), r#"{"b": 1, "a": 2}"#).unwrap();
    let at = format!("@{}", file.path().display());
    let (ok, out, _) = run(&["dev.kw", &at, "c=3", "--json"], "");
    assert!(ok);
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["result"], json!(["b", "a", "c"]));
    assert!(answer["call_id"].is_string());
    // The result on stdout, the logs on stderr.
    let (ok, out, err) = run(&["dev.noisy"], "");
    assert!(ok);
    assert_eq!(out.trim(), "1");
    assert!(err.contains("out1\nerr1\n"), "{err}");
    // Ordinary errors: one line, no backtrace, non-zero exit.
    let (ok, _, err) = run(&["dev.kw", "-"], "[1, 2]");
    assert!(!ok);
    assert!(
        err.contains("JSON object") && !err.contains("backtrace"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn an_upload_over_a_repository_module_is_refused_unless_it_says_replace() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(&[
        ("utils.py", "def which():\n    return 'repo'\n"),
        ("pkg/__init__.py", ""),
        ("pkg/tool.py", "def which():\n    return 'repo tool'\n"),
    ]);
    let token = d.tenant("caro", &repo);
    let deploy = d.token("caro", &["deploy"]);
    let put = |module: &str, query: &str| {
        d.with_token(
            "PUT",
            &format!("/v1/modules/{module}{query}"),
            &deploy,
            Some(b"def which():\n    return 'upload'\n"),
        )
    };
    for (module, path) in [
        ("utils", "utils.py"),
        ("pkg", "pkg"),
        ("pkg.tool", "pkg/tool.py"),
    ] {
        let a = put(module, "");
        assert_eq!(a.status, 409, "{module}: {:?}", a.body);
        assert_eq!(a.body["error"]["code"], "conflict");
        assert_eq!(a.body["error"]["detail"]["path"], path);
        assert!(a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("replace=true"));
    }
    let which = |f: &str| d.call(json!({"token": token, "fn": f})).body["result"].clone();
    assert_eq!(which("utils.which"), "repo", "nothing changed");
    let a = put("utils", "?replace=true");
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(which("utils.which"), "upload");
    // Replacing one's own upload needs nothing more; a new name is no conflict.
    assert_eq!(put("utils", "").status, 200);
    assert_eq!(put("helpers", "").status, 200);
    let bad = put("helpers", "?replace=maybe");
    assert_eq!(bad.status, 400, "{:?}", bad.body);

    // The CLI: a deploy token uploads, --replace says so, modules are listed and removed.
    let file = tempfile::Builder::new().suffix(".py").tempfile().unwrap();
    std::fs::write(file.path(), "def which():\n    return 'cli'\n").unwrap();
    let cli = |args: &[&str], admin: bool| {
        let mut cmd = std::process::Command::new(falra_bin());
        cmd.args(args)
            .args(["--url", &d.url])
            .stdin(std::process::Stdio::null())
            .env_remove("FALRA_ADMIN_TOKEN")
            .env("FALRA_TOKEN", &deploy);
        if admin {
            cmd.env("FALRA_ADMIN_TOKEN", &d.admin_token);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let path = file.path().to_str().unwrap();
    let (ok, _, err) = cli(&["upload", "caro", path, "--as", "pkg.tool"], false);
    assert!(!ok && err.contains("replace"), "{err}");
    let (ok, _, err) = cli(
        &["upload", "caro", path, "--as", "pkg.tool", "--replace"],
        false,
    );
    assert!(ok, "{err}");
    assert_eq!(which("pkg.tool.which"), "cli");
    let (ok, out, err) = cli(&["modules", "list", "caro"], true);
    assert!(ok, "{err}");
    assert!(out.contains("pkg.tool") && out.contains("helpers"), "{out}");
    let (ok, _, err) = cli(&["modules", "remove", "caro", "pkg.tool"], true);
    assert!(!ok && err.contains("--yes"), "{err}");
    let (ok, _, err) = cli(&["modules", "remove", "caro", "pkg.tool", "--yes"], true);
    assert!(ok, "{err}");
    assert_eq!(which("pkg.tool.which"), "repo tool");
}

#[test]
fn form_encoded_pushes_deploy_and_failed_pushes_are_audited_with_their_address() {
    use falra_policies::webhook::hmac_sha256;
    let d = Daemon::start();
    let repo = GitRepo::with_files(&[("v.py", "def get():\n    return 1\n")]);
    let made = d.admin(
        "POST",
        "/tenants",
        Some(json!({"name": "caro", "repo": repo.url(), "webhook_secret": "s3cret"})),
    );
    assert_eq!(made.status, 201, "{:?}", made.body);
    d.sync("caro");
    let token = d.token("caro", &["call"]);
    let push = |event: Option<&str>, body: &str, content_type: &str| {
        let sig = format!(
            "sha256={}",
            hex::encode(hmac_sha256(b"s3cret", body.as_bytes()))
        );
        let mut headers = vec![
            ("X-Hub-Signature-256", sig.as_str()),
            ("Content-Type", content_type),
        ];
        if let Some(e) = event {
            headers.push(("X-GitHub-Event", e));
        }
        d.post("/hooks/github/caro", &headers, body.as_bytes())
    };
    let form = |payload: &Value| {
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &payload.to_string())
            .finish()
    };
    let form_type = "application/x-www-form-urlencoded";

    repo.commit(&[("v.py", "def get():\n    return 2\n")]);
    let body = form(&json!({"ref": "refs/heads/main", "after": repo.head()}));
    let none = push(None, &body, form_type);
    assert_eq!(none.status, 400, "{:?}", none.body);
    assert_eq!(none.body["error"]["detail"]["header"], "X-GitHub-Event");
    let a = push(Some("push"), &body, form_type);
    assert_eq!(a.status, 202, "{:?}", a.body);
    falra_tests::eventually("the push deploys", Duration::from_secs(30), || {
        d.call(json!({"token": token, "fn": "v.get"})).body["result"] == 2
    });

    // A push whose commit cannot deploy (the code root is gone) fails, in the audit log too.
    d.admin("PATCH", "/tenants/caro", Some(json!({"subdir": "missing"})));
    let body = form(&json!({"ref": "refs/heads/main", "after": repo.head()}));
    let a = push(Some("push"), &body, form_type);
    assert_eq!(a.status, 202, "{:?}", a.body);
    let find = |action: &str| {
        d.admin("GET", "/audit?tenant=caro", None).body["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["action"] == action)
            .cloned()
    };
    falra_tests::eventually(
        "the failed push is audited",
        Duration::from_secs(30),
        || find("deploy.push_failed").is_some(),
    );
    let failed = find("deploy.push_failed").unwrap();
    assert_eq!(failed["remote"], "127.0.0.1", "{failed:?}");
    assert!(
        failed["detail"]["error"]
            .as_str()
            .unwrap()
            .contains("missing"),
        "{failed:?}"
    );
    let pushed = find("deploy.push").unwrap();
    assert_eq!(pushed["remote"], "127.0.0.1", "{pushed:?}");
    // A failed sync by an operator is audited as well.
    let s = d.admin("POST", "/tenants/caro/sync", None);
    assert_eq!(s.status, 422, "{:?}", s.body);
    let log = d.admin("GET", "/audit?tenant=caro&limit=1", None);
    assert_eq!(
        log.body["events"][0]["action"], "deploy.sync_failed",
        "{:?}",
        log.body
    );
}

#[test]
fn operator_tokens_are_listed_revoked_and_init_and_demo_mint_no_token_they_need_not() {
    let d = Daemon::start();
    let data = d.data_dir.clone();
    let init = |force: bool| {
        let mut c = std::process::Command::new(falra_bin());
        c.args(["admin", "init", "--data-dir"]).arg(&data);
        if force {
            c.arg("--force");
        }
        c.output().unwrap()
    };
    let again = init(false);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("--force") && err.lines().count() == 1, "{err}");
    let second = init(true);
    assert!(second.status.success());
    let second = String::from_utf8(second.stdout).unwrap().trim().to_owned();

    let listed = d.admin("GET", "/operator-tokens", None);
    assert_eq!(listed.status, 200, "{:?}", listed.body);
    let tokens = listed.body["tokens"].as_array().unwrap().clone();
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    assert!(tokens
        .iter()
        .all(|t| t.get("hash").is_none() && t["prefix"].is_string()));
    let mine = tokens.iter().find(|t| t["this"] == true).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = tokens.iter().find(|t| t["this"] == false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The second operator revokes the first; the first is refused from then on.
    let revoked = d.with_token("DELETE", &format!("/admin/v1/tokens/{mine}"), &second, None);
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    assert_eq!(d.admin("GET", "/tenants", None).status, 401);
    // The last live one is not revoked.
    let last = d.with_token(
        "DELETE",
        &format!("/admin/v1/tokens/{other}"),
        &second,
        None,
    );
    assert_eq!(last.status, 409, "{:?}", last.body);
    let out = std::process::Command::new(falra_bin())
        .args(["admin", "tokens", "--url", &d.url])
        .env("FALRA_ADMIN_TOKEN", &second)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&other));

    // Usage refuses what cannot be right.
    let get = |path: &str| d.with_token("GET", &format!("/admin/v1{path}"), &second, None);
    assert_eq!(get("/usage?from=2026-12-01&to=2026-11-01").status, 400);
    assert_eq!(get("/usage?tenant=nobody").status, 404);
}

#[test]
fn the_demo_keeps_its_tenant_and_token_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let serve = || {
        let port = falra_tests::free_port();
        let mut child = std::process::Command::new(falra_bin())
            .args([
                "serve",
                "--demo",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(dir.path().join("data"))
            .env("FALRA_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut token = String::new();
        for line in lines.by_ref().take(20) {
            let line = line.unwrap();
            if let Some(at) = line.find("flr_") {
                token = line[at..]
                    .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                    .next()
                    .unwrap()
                    .to_owned();
                break;
            }
        }
        let answer = falra_tests::http(
            "POST",
            &format!("http://127.0.0.1:{port}/v1/call"),
            &[],
            Some(
                json!({"token": token, "fn": "falra_test_add.add", "int_a": 1, "int_b": 2})
                    .to_string()
                    .as_bytes(),
            ),
        );
        assert_eq!(answer.body["result"], 3, "{:?}", answer.body);
        stop(&mut child);
        token
    };
    let first = serve();
    let second = serve();
    assert_eq!(first, second, "the same token both times");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("data/demo-token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "owner only: {mode:o}");
}

/// Stops a daemon as an operator would (SIGTERM) and waits for it.
fn stop(child: &mut std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

#[test]
fn a_version_whose_modules_do_not_import_is_not_activated_unless_forced() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(&[("v.py", "def get():\n    return 1\n")]);
    let token = d.tenant("caro", &repo);
    let before = d.admin("GET", "/tenants/caro", None).body["active_version"].clone();
    repo.commit(&[
        ("v.py", "def get():\n    return 2\n"),
        ("broken.py", "import json\n\ndef f(:\n    pass\n"),
        ("fails.py", "raise RuntimeError('no config at import')\n"),
    ]);
    let a = d.admin("POST", "/tenants/caro/sync", None);
    assert_eq!(a.status, 422, "{:?}", a.body);
    assert_eq!(a.body["error"]["code"], "sync_failed");
    let message = a.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("broken line 3 does not compile: SyntaxError"),
        "{message}"
    );
    assert!(
        message.contains("fails does not import: RuntimeError: no config at import"),
        "{message}"
    );
    let modules = a.body["error"]["detail"]["modules"].as_array().unwrap();
    assert_eq!(modules.len(), 2, "{modules:?}");
    assert_eq!(
        d.admin("GET", "/tenants/caro", None).body["active_version"],
        before
    );
    assert_eq!(
        d.call(json!({"token": token, "fn": "v.get"})).body["result"],
        1
    );
    let log = d.admin("GET", "/audit?tenant=caro&limit=1", None);
    assert_eq!(log.body["events"][0]["action"], "deploy.sync_failed");

    // Forced, it is active, and its listing says what is wrong.
    let a = d.admin("POST", "/tenants/caro/sync?force=true", None);
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(
        d.call(json!({"token": token, "fn": "v.get"})).body["result"],
        2
    );
    // What was broken already does not hold back an upload that breaks nothing new.
    let deploy = d.token("caro", &["deploy"]);
    let up = d.with_token(
        "PUT",
        "/v1/modules/extra",
        &deploy,
        Some(b"def g():\n    return 3\n"),
    );
    assert_eq!(up.status, 200, "{:?}", up.body);
    // One that does is refused unless forced.
    let bad = b"import nonexistent_module_xyz\n";
    let up = d.with_token("PUT", "/v1/modules/worse", &deploy, Some(bad));
    assert_eq!(up.status, 422, "{:?}", up.body);
    assert!(up.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("worse does not import"));
    let up = d.with_token("PUT", "/v1/modules/worse?force=true", &deploy, Some(bad));
    assert_eq!(up.status, 200, "{:?}", up.body);
}

#[test]
fn environment_variables_reach_their_tenant_s_calls_only_and_change_on_the_next_call() {
    let d = Daemon::start();
    let code = "import os, subprocess\n\ndef get(name):\n    return os.environ.get(name)\n\ndef child(name):\n    return subprocess.run(['/bin/sh', '-c', 'printf %s \"$' + name + '\"'], capture_output=True, text=True).stdout\n";
    let repo = GitRepo::with_files(&[("e.py", code)]);
    let token = d.tenant("caro", &repo);
    let other = d.tenant("dan", &GitRepo::with_files(&[("e.py", code)]));
    let get = |token: &str, name: &str| {
        d.call(json!({"token": token, "fn": "e.get", "name": name}))
            .body["result"]
            .clone()
    };
    assert_eq!(get(&token, "REGION"), Value::Null);
    let set = d.admin(
        "PUT",
        "/tenants/caro/env",
        Some(json!({"REGION": "eu-west", "LEVEL": "debug"})),
    );
    assert_eq!(set.status, 200, "{:?}", set.body);
    // The next call has them, though a child was already prepared for it.
    assert_eq!(get(&token, "REGION"), "eu-west");
    let r = d.call(json!({"token": token, "fn": "e.child", "name": "LEVEL"}));
    assert_eq!(r.body["result"], "debug", "{:?}", r.body);
    assert_eq!(
        get(&other, "REGION"),
        Value::Null,
        "another tenant's calls never see them"
    );
    assert_eq!(get(&token, "PATH"), "/usr/local/bin:/usr/bin:/bin");
    let shown = d.admin("GET", "/tenants/caro/env", None);
    assert_eq!(
        shown.body["env"],
        json!({"REGION": "eu-west", "LEVEL": "debug"})
    );

    for (body, field) in [
        (json!({"PATH": "/evil"}), "PATH"),
        (json!({"FALRA_VENV": "/x"}), "FALRA_VENV"),
        (json!({"bad-name": "x"}), "bad-name"),
        (json!({"N": 3}), "N"),
    ] {
        let bad = d.admin("PUT", "/tenants/caro/env", Some(body));
        assert_eq!(bad.status, 400, "{:?}", bad.body);
        assert_eq!(bad.body["error"]["detail"]["field"], field);
    }
    assert_eq!(
        get(&token, "REGION"),
        "eu-west",
        "a refused change changes nothing"
    );

    // Jobs and preloaded calls get them too.
    let jobs = d.token("caro", &["jobs"]);
    let job = d.with_token(
        "POST",
        "/v1/jobs",
        &jobs,
        Some(br#"{"fn": "e.get", "name": "LEVEL"}"#),
    );
    let id = job.body["job_id"].as_str().unwrap().to_owned();
    falra_tests::eventually("the job ends", Duration::from_secs(30), || {
        d.with_token("GET", &format!("/v1/jobs/{id}"), &jobs, None)
            .body["status"]
            == "succeeded"
    });
    assert_eq!(
        d.with_token("GET", &format!("/v1/jobs/{id}"), &jobs, None)
            .body["result"],
        "debug"
    );
    d.admin(
        "PUT",
        "/tenants/caro/policy",
        Some(json!({"preload": ["e"]})),
    );
    assert_eq!(get(&token, "LEVEL"), "debug");

    // The command line sets, lists and removes.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(falra_bin())
            .args(args)
            .args(["--url", &d.url])
            .env("FALRA_ADMIN_TOKEN", &d.admin_token)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert!(cli(&["env", "set", "caro", "REGION=us"]).0);
    assert_eq!(get(&token, "REGION"), "us");
    assert_eq!(get(&token, "LEVEL"), "debug", "the others stay");
    assert!(cli(&["env", "remove", "caro", "LEVEL", "--yes"]).0);
    assert_eq!(get(&token, "LEVEL"), Value::Null);
    let (ok, out) = cli(&["env", "list", "caro"]);
    assert!(ok && out.contains("REGION"), "{out}");
}

#[test]
fn secrets_marked_for_code_reach_its_calls_masked_in_logs_and_errors() {
    let d = Daemon::start();
    let code = "import os, sys, logging\n\ndef get(name):\n    return os.environ.get(name)\n\ndef leak(name):\n    value = os.environ[name]\n    print('the key is', value)\n    raise RuntimeError('bad key ' + value)\n\ndef leak_all(name):\n    value = os.environ[name]\n    sys.stderr.write(value + '\\n')\n    logging.warning('%s', value)\n    raise ValueError('bad key %r' % value)\n\ndef unserialisable(name):\n    return {os.environ[name].splitlines()[1]: object()}\n";
    let repo = GitRepo::with_files(&[("s.py", code)]);
    let token = d.tenant("caro", &repo);
    let other = d.tenant("dan", &GitRepo::with_files(&[("s.py", code)]));
    let get = |token: &str, name: &str| {
        d.call(json!({"token": token, "fn": "s.get", "name": name}))
            .body["result"]
            .clone()
    };
    // A secret only the node uses never reaches the code.
    let plain = d.admin(
        "PUT",
        "/tenants/caro/secrets/HIDDEN",
        Some(json!({"value": "node-only-value"})),
    );
    assert_eq!(plain.status, 200, "{:?}", plain.body);
    assert_eq!(get(&token, "HIDDEN"), Value::Null);

    d.admin(
        "PUT",
        "/tenants/caro/env",
        Some(json!({"API_KEY": "from-env"})),
    );
    let set = d.admin(
        "PUT",
        "/tenants/caro/secrets/API_KEY",
        Some(json!({"value": "sk-live-0123456789", "expose": "env"})),
    );
    assert_eq!(set.status, 200, "{:?}", set.body);
    assert_eq!(set.body["expose"], "env");
    assert_eq!(
        get(&token, "API_KEY"),
        "sk-live-0123456789",
        "the secret wins over the variable, from the next call"
    );
    assert_eq!(
        get(&other, "API_KEY"),
        Value::Null,
        "never another tenant's"
    );
    // A module that reads it at import deploys without force: the listing imports with it.
    repo.commit(&[(
        "strict.py",
        "import os\nKEY = os.environ['API_KEY']\n\ndef key_len():\n    return len(KEY)\n",
    )]);
    let synced = d.admin("POST", "/tenants/caro/sync", None);
    assert_eq!(synced.status, 200, "{:?}", synced.body);
    let r = d.call(json!({"token": token, "fn": "strict.key_len"}));
    assert_eq!(r.body["result"], 18, "{:?}", r.body);

    let failed = d.call(json!({"token": token, "fn": "s.leak", "name": "API_KEY"}));
    assert_eq!(failed.body["error"]["code"], "function_error");
    let whole = failed.body.to_string();
    assert!(!whole.contains("sk-live-0123456789"), "{whole}");
    assert!(failed.body["logs"]
        .as_str()
        .unwrap()
        .contains("the key is ***"));
    assert!(failed.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("bad key ***"));
    assert!(
        failed.body["usage"]["wall_ms"].is_u64(),
        "{:?}",
        failed.body
    );
    let id = failed.body["call_id"].as_str().unwrap();
    let stored = d.with_token("GET", &format!("/v1/calls/{id}"), &token, None);
    assert_eq!(stored.status, 200, "{:?}", stored.body);
    assert!(!stored.body.to_string().contains("sk-live-0123456789"));

    let listed = d.admin("GET", "/tenants/caro/secrets", None);
    let entries = listed.body["secrets"].as_array().unwrap();
    let expose_of = |key: &str| entries.iter().find(|e| e["key"] == key).unwrap()["expose"].clone();
    assert_eq!(expose_of("API_KEY"), "env");
    assert_eq!(expose_of("HIDDEN"), "none");
    assert!(!listed.body.to_string().contains("sk-live"));

    for (body, field) in [
        (json!({"value": 3, "expose": "env"}), "value"),
        (json!({"value": "a\u{0}b", "expose": "env"}), "value"),
        (json!({"value": "x", "expose": "everywhere"}), "expose"),
    ] {
        let bad = d.admin("PUT", "/tenants/caro/secrets/TOKEN", Some(body.clone()));
        assert_eq!(bad.status, 400, "{body}: {:?}", bad.body);
        if field != "expose" {
            assert_eq!(bad.body["error"]["detail"]["field"], field, "{body}");
        }
    }
    for key in ["PATH", "FALRA_X", "lower-case"] {
        let bad = d.admin(
            "PUT",
            &format!("/tenants/caro/secrets/{key}"),
            Some(json!({"value": "x", "expose": "env"})),
        );
        assert_eq!(bad.status, 400, "{key}: {:?}", bad.body);
    }

    // The command line marks one for code; removing it takes it away from the next call.
    let out = d.cli(&["secret", "set", "caro", "DB_PASS", "12345678", "--env"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        get(&token, "DB_PASS"),
        "12345678",
        "taken as text, not a number"
    );
    // Rotated without saying: it stays exposed (and text).
    let out = d.cli(&["secret", "set", "caro", "DB_PASS", "87654321"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(get(&token, "DB_PASS"), "87654321");
    let rotated = d.admin(
        "PUT",
        "/tenants/caro/secrets/DB_PASS",
        Some(json!({"value": "rotated-again"})),
    );
    assert_eq!(rotated.body["expose"], "env", "{:?}", rotated.body);
    let out = d.cli(&[
        "secret",
        "set",
        "caro",
        "DB_PASS",
        "node-only-now",
        "--no-env",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(get(&token, "DB_PASS"), Value::Null);
    // The repository's credentials are the node's alone.
    let git = d.admin(
        "PUT",
        "/tenants/caro/secrets/git",
        Some(json!({"value": "ghp_x", "expose": "env"})),
    );
    assert_eq!(git.status, 400, "{:?}", git.body);
    // A secret of several lines, and its escaped forms, are masked too.
    let pem = "-----BEGIN KEY-----\nMIIBOgIBAAJBAKj34GkxFhD9\nit's\\here\n-----END KEY-----";
    d.admin(
        "PUT",
        "/tenants/caro/secrets/PEM",
        Some(json!({"value": pem, "expose": "env"})),
    );
    let failed = d.call(json!({"token": token, "fn": "s.leak_all", "name": "PEM"}));
    assert_eq!(
        failed.body["error"]["code"], "function_error",
        "{:?}",
        failed.body
    );
    let whole = failed.body.to_string();
    assert!(!whole.contains("MIIBOgIBAAJBAKj34GkxFhD9"), "{whole}");
    let id = failed.body["call_id"].as_str().unwrap();
    let stored = d.with_token("GET", &format!("/v1/calls/{id}"), &token, None);
    assert!(!stored.body.to_string().contains("MIIBOgIBAAJBAKj34GkxFhD9"));
    let bad_result = d.call(json!({"token": token, "fn": "s.unserialisable", "name": "PEM"}));
    assert_eq!(
        bad_result.body["error"]["code"], "result_not_serializable",
        "{:?}",
        bad_result.body
    );
    assert!(!bad_result
        .body
        .to_string()
        .contains("MIIBOgIBAAJBAKj34GkxFhD9"));
    let out = d.cli(&["secret", "remove", "caro", "API_KEY", "--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(get(&token, "API_KEY"), "from-env");
}

#[test]
fn deploys_log_their_steps_stream_them_and_keep_them_with_the_version() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(&[("ok.py", "def f():\n    return 1\n")]);
    d.admin(
        "POST",
        "/tenants",
        Some(json!({"name": "caro", "repo": repo.url(), "branch": "main"})),
    );
    let synced = d.admin("POST", "/tenants/caro/sync", None);
    assert_eq!(synced.status, 200, "{:?}", synced.body);
    let names: Vec<&str> = synced.body["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["fetch", "tree", "venv", "compile", "list", "activate"]
    );
    for step in synced.body["steps"].as_array().unwrap() {
        assert_eq!(step["ok"], true, "{step}");
        assert!(step["ms"].is_u64() && step["at_ms"].is_u64(), "{step}");
    }
    let commit = repo.head();
    assert!(synced.body["steps"][0]["detail"]
        .as_str()
        .unwrap()
        .contains(&commit[..12]));
    assert_eq!(
        synced.body["steps"][4]["detail"],
        "1 functions in 1 modules"
    );

    // Kept with the version, for its tenant and the operator.
    let token = d.token("caro", &["call"]);
    let versions = d.with_token("GET", "/v1/versions", &token, None);
    let kept = &versions.body["versions"][0]["deploy_log"];
    assert_eq!(kept[0]["step"], "fetch", "{:?}", versions.body);
    assert_eq!(kept.as_array().unwrap().len(), 5, "kept before activation");

    // Streamed: each step as it starts and ends, then the outcome.
    repo.commit(&[("ok.py", "def f():\n    return 2\n")]);
    let streamed = falra_tests::http(
        "POST",
        &format!("{}/admin/v1/tenants/caro/sync", d.url),
        &[
            ("Authorization", &format!("Bearer {}", d.admin_token)),
            ("Accept", "text/event-stream"),
        ],
        None,
    );
    assert_eq!(streamed.status, 200);
    let text = streamed.body.as_str().unwrap().to_owned();
    let events: Vec<(String, Value)> = text
        .split("\n\n")
        .filter_map(|block| {
            let event = block.lines().find_map(|l| l.strip_prefix("event:"))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data:"))?;
            Some((
                event.trim().to_owned(),
                serde_json::from_str(data.trim()).unwrap(),
            ))
        })
        .collect();
    assert_eq!(events[0].0, "step");
    assert_eq!(events[0].1, json!({"step": "fetch", "state": "started"}));
    assert_eq!(events[1].1["state"], "finished");
    assert_eq!(events.len(), 6 * 2 + 1, "{text}");
    let (last, done) = events.last().unwrap();
    assert_eq!(last, "done");
    assert!(
        done["version"].is_string() && done["steps"].is_array(),
        "{done}"
    );

    // A broken commit: not activated, its steps in the error and in the audit log.
    repo.commit(&[("bad.py", "def f(:\n")]);
    let failed = d.admin("POST", "/tenants/caro/sync", None);
    assert_eq!(failed.status, 422, "{:?}", failed.body);
    let steps = failed.body["error"]["detail"]["steps"].as_array().unwrap();
    assert_eq!(steps.last().unwrap()["step"], "list");
    assert_eq!(steps.last().unwrap()["ok"], false);
    assert!(failed.body["error"]["detail"]["modules"].is_array());
    let audit = d.admin("GET", "/audit?tenant=caro", None);
    let entry = audit.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "deploy.sync_failed")
        .cloned()
        .unwrap_or_else(|| panic!("{:?}", audit.body));
    assert!(entry["detail"]["steps"].is_array(), "{entry}");

    // The command line shows the steps as they happen and the error as one line.
    let out = d.cli(&["tenant", "sync", "caro"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fetch") && err.contains("list"), "{err}");
    assert!(err.contains("bad"), "{err}");
    let out = d.cli(&["tenant", "sync", "caro", "--force"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.starts_with("version: "), "{stdout}");
    assert!(stderr.contains("✓ activate"), "{stderr}");
}
