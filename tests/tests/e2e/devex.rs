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
