//! Background jobs on one node: submitted, run with progress, kept with their answers,
//! retried only for the node's failures, cancelled with their processes, found again by their
//! idempotency key.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use falra_tests::{eventually, Answer, Daemon, GitRepo};
use serde_json::{json, Value};

pub const WORK: &str = r#"
import os, time
import falra

def slow(n, pause):
    for i in range(n):
        falra.progress((i + 1) / n, "step %d of %d" % (i + 1, n))
        time.sleep(pause)
    print("done printing")
    return n * 2

def boom():
    raise ValueError("nope")

def exits():
    os._exit(3)

def forever():
    time.sleep(600)

def add(int_a, int_b):
    return int_a + int_b

def bad_progress():
    for bad in ("x", None, float("nan"), True):
        try:
            falra.progress(bad)
        except (TypeError, ValueError):
            pass
        else:
            return "accepted %r" % (bad,)
    falra.progress(5, "x" * 10000)
    return "ok"
"#;

/// A daemon with the `work` module deployed for `caro`, and a token with the `jobs` scope.
pub fn setup(extra: &[&str]) -> (Daemon, String) {
    let d = Daemon::start_with(extra);
    let repo = GitRepo::with_files(&[("work.py", WORK)]);
    d.tenant("caro", &repo);
    let token = d.token("caro", &["jobs"]);
    (d, token)
}

pub fn submit(d: &Daemon, token: &str, body: Value, headers: &[(&str, &str)]) -> Answer {
    let auth = format!("Bearer {token}");
    let mut all = vec![("Authorization", auth.as_str())];
    all.extend_from_slice(headers);
    d.post("/v1/jobs", &all, body.to_string().as_bytes())
}

pub fn job(d: &Daemon, token: &str, id: &str) -> Value {
    let a = d.with_token("GET", &format!("/v1/jobs/{id}"), token, None);
    assert_eq!(a.status, 200, "{:?}", a.body);
    a.body
}

/// Polls the job until it ended (or `limit` passed); the job as it was last seen.
pub fn wait_end(d: &Daemon, token: &str, id: &str, limit: Duration) -> Value {
    let started = Instant::now();
    loop {
        let j = job(d, token, id);
        let status = j["status"].as_str().unwrap_or("");
        if matches!(status, "succeeded" | "failed" | "cancelled") || started.elapsed() > limit {
            return j;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The processes descended from `pid` (a daemon's children and theirs), but for the daemon's
/// zygote and what it forks for itself: the zygote outlives every call.
pub fn descendants(pid: u32) -> Vec<u32> {
    let zygote = |p: u32| {
        std::fs::read(format!("/proc/{p}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("\0--zygote\0"))
    };
    let mut parent = HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if let Some(ppid) = after
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u32>().ok())
        {
            parent.insert(p, ppid);
        }
    }
    parent
        .keys()
        .copied()
        .filter(|&p| {
            let mut at = p;
            for _ in 0..64 {
                match parent.get(&at) {
                    Some(&up) if up == pid => return !zygote(at),
                    Some(&up) if up > 1 => at = up,
                    _ => return false,
                }
            }
            false
        })
        .collect()
}

#[test]
fn a_job_runs_in_the_background_with_progress_and_keeps_the_calls_answer() {
    let (d, token) = setup(&[]);
    let a = submit(
        &d,
        &token,
        json!({"fn": "work.slow", "n": 6, "pause": 0.25}),
        &[],
    );
    assert_eq!(a.status, 202, "{:?}", a.body);
    let id = a.body["job_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("j_"), "{id}");
    assert!(
        ["queued", "running"].contains(&a.body["status"].as_str().unwrap()),
        "{:?}",
        a.body
    );

    // While it runs, its progress moves on.
    let mut seen = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        let j = job(&d, &token, &id);
        if let Some(f) = j["progress"]["fraction"].as_f64() {
            if j["status"] == "running" && f < 1.0 {
                seen.push((f, j["progress"]["message"].as_str().unwrap().to_owned()));
            }
        }
        if j["status"] == "succeeded" {
            break;
        }
        std::thread::sleep(Duration::from_millis(40));
    }
    assert!(!seen.is_empty(), "no progress was seen while the job ran");
    assert!(seen.iter().any(|(_, m)| m.starts_with("step ")), "{seen:?}");

    let done = wait_end(&d, &token, &id, Duration::from_secs(20));
    assert_eq!(done["status"], "succeeded", "{done:?}");
    assert_eq!(done["ok"], true);
    assert_eq!(done["result"], 12);
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["progress"]["fraction"], 1.0);
    assert!(
        done["logs"].as_str().unwrap().contains("done printing"),
        "{done:?}"
    );
    assert!(
        done["usage"]["wall_ms"].as_u64().unwrap() >= 1000,
        "{done:?}"
    );
    assert!(done["call_id"].as_str().unwrap().starts_with("c_"));
    assert!(done["node"].as_str().unwrap().starts_with("node_"));
    assert!(done["finished_at"].is_string() && done["started_at"].is_string());

    // Metered as a call: the usage counts it.
    eventually("the job is in the usage", Duration::from_secs(10), || {
        let usage = d.admin("GET", "/usage?tenant=caro", None);
        usage.status == 200 && usage.body.to_string().contains("work.slow")
    });
}

#[test]
fn the_jobs_scope_is_required_and_bad_requests_are_refused_with_their_field() {
    let (d, token) = setup(&[]);
    let call_only = d.token("caro", &["call"]);
    let a = submit(
        &d,
        &call_only,
        json!({"fn": "work.add", "int_a": 1, "int_b": 2}),
        &[],
    );
    assert_eq!(a.status, 403, "{:?}", a.body);
    let a = d.post(
        "/v1/jobs",
        &[],
        json!({"fn": "work.add", "int_a": 1, "int_b": 2})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(a.status, 401, "{:?}", a.body);
    // The token in the body works as for a call.
    let a = d.post(
        "/v1/jobs",
        &[],
        json!({"token": token, "fn": "work.add", "int_a": 1, "int_b": 2})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(a.status, 202, "{:?}", a.body);

    for (body, query, want) in [
        (json!({"int_a": 1}), "", json!({"field": "fn"})),
        (
            json!({"fn": "work.add"}),
            "?max_attempts=0",
            json!({"parameter": "max_attempts"}),
        ),
        (
            json!({"fn": "work.add"}),
            "?max_attempts=11",
            json!({"parameter": "max_attempts"}),
        ),
        (
            json!({"fn": "work.add"}),
            "?version=../x",
            json!({"parameter": "version"}),
        ),
    ] {
        let auth = format!("Bearer {token}");
        let a = d.post(
            &format!("/v1/jobs{query}"),
            &[("Authorization", &auth)],
            body.to_string().as_bytes(),
        );
        assert_eq!(a.status, 400, "{body} {query}: {:?}", a.body);
        assert_eq!(a.body["error"]["detail"], want, "{body} {query}");
    }
    let a = d.post(
        "/v1/jobs?callback=1",
        &[],
        json!({"token": token, "fn": "work.add"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(a.status, 400, "{:?}", a.body);

    for path in [
        "/v1/jobs?status=done",
        "/v1/jobs?limit=0",
        "/v1/jobs?cursor=zz",
    ] {
        let a = d.with_token("GET", path, &token, None);
        assert_eq!(a.status, 400, "{path}: {:?}", a.body);
    }
    let a = d.with_token("GET", "/v1/jobs/j_0000000000000000", &token, None);
    assert_eq!(a.status, 404, "{:?}", a.body);
    assert_eq!(a.body["error"]["code"], "not_found");
    // Another tenant's job is not found either.
    let repo = GitRepo::with_files(&[("work.py", WORK)]);
    d.tenant("jc", &repo);
    let other = d.token("jc", &["jobs"]);
    let mine = submit(
        &d,
        &token,
        json!({"fn": "work.add", "int_a": 1, "int_b": 2}),
        &[],
    );
    let id = mine.body["job_id"].as_str().unwrap();
    let a = d.with_token("GET", &format!("/v1/jobs/{id}"), &other, None);
    assert_eq!(a.status, 404, "{:?}", a.body);
    let a = d.with_token("DELETE", &format!("/v1/jobs/{id}"), &other, None);
    assert_eq!(a.status, 404, "{:?}", a.body);
}

#[test]
fn a_function_error_is_never_retried_but_a_process_that_exits_is_up_to_max_attempts() {
    let (d, token) = setup(&[]);
    let boom = submit(&d, &token, json!({"fn": "work.boom"}), &[]);
    let exits = submit(&d, &token, json!({"fn": "work.exits"}), &[]);
    let auth = format!("Bearer {token}");
    let twice = d.post(
        "/v1/jobs?max_attempts=2",
        &[("Authorization", &auth)],
        json!({"fn": "work.exits"}).to_string().as_bytes(),
    );
    assert_eq!(twice.status, 202, "{:?}", twice.body);
    let missing = submit(&d, &token, json!({"fn": "work.nothing"}), &[]);

    let boom = wait_end(
        &d,
        &token,
        boom.body["job_id"].as_str().unwrap(),
        Duration::from_secs(20),
    );
    assert_eq!(boom["status"], "failed", "{boom:?}");
    assert_eq!(boom["error"]["code"], "function_error");
    assert!(
        boom["error"]["message"].as_str().unwrap().contains("nope"),
        "{boom:?}"
    );
    assert_eq!(boom["attempts"], 1);

    let missing = wait_end(
        &d,
        &token,
        missing.body["job_id"].as_str().unwrap(),
        Duration::from_secs(20),
    );
    assert_eq!(missing["status"], "failed", "{missing:?}");
    assert_eq!(missing["error"]["code"], "fn_not_found");
    assert_eq!(missing["attempts"], 1);

    // 1 s and 2 s of backoff between the attempts.
    let exits = wait_end(
        &d,
        &token,
        exits.body["job_id"].as_str().unwrap(),
        Duration::from_secs(30),
    );
    assert_eq!(exits["status"], "failed", "{exits:?}");
    assert_eq!(exits["error"]["code"], "process_exited");
    assert_eq!(exits["attempts"], 3, "{exits:?}");
    assert_eq!(exits["max_attempts"], 3);
    let twice = wait_end(
        &d,
        &token,
        twice.body["job_id"].as_str().unwrap(),
        Duration::from_secs(30),
    );
    assert_eq!(twice["attempts"], 2, "{twice:?}");
}

#[test]
fn an_idempotency_key_returns_the_first_job_and_lists_page_newest_first() {
    let (d, token) = setup(&[]);
    let body = json!({"fn": "work.add", "int_a": 2, "int_b": 3});
    let first = submit(&d, &token, body.clone(), &[("Idempotency-Key", "order-42")]);
    assert_eq!(first.status, 202, "{:?}", first.body);
    let again = submit(
        &d,
        &token,
        json!({"fn": "work.boom"}),
        &[("Idempotency-Key", "order-42")],
    );
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert_eq!(again.body["job_id"], first.body["job_id"]);
    assert_eq!(again.body["fn"], "work.add");
    let bad = submit(
        &d,
        &token,
        body.clone(),
        &[("Idempotency-Key", &"x".repeat(300))],
    );
    assert_eq!(bad.status, 400, "{:?}", bad.body);

    let mut ids = vec![first.body["job_id"].as_str().unwrap().to_owned()];
    for i in 0..4 {
        let a = submit(
            &d,
            &token,
            json!({"fn": "work.add", "int_a": i, "int_b": 0}),
            &[],
        );
        ids.push(a.body["job_id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let j = wait_end(&d, &token, id, Duration::from_secs(30));
        assert_eq!(j["status"], "succeeded", "{j:?}");
    }
    assert_eq!(job(&d, &token, &ids[0])["result"], 5);

    // Two pages of two and one of one, newest first, nothing twice.
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..5 {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?limit=2&cursor={c}"),
            None => "/v1/jobs?limit=2".to_owned(),
        };
        let page = d.with_token("GET", &path, &token, None);
        assert_eq!(page.status, 200, "{:?}", page.body);
        for j in page.body["jobs"].as_array().unwrap() {
            listed.push(j["job_id"].as_str().unwrap().to_owned());
        }
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(listed, expected);
    let failed = d.with_token("GET", "/v1/jobs?status=failed", &token, None);
    assert_eq!(failed.body["jobs"], json!([]));
}

#[test]
fn cancelling_a_running_job_stops_its_processes_within_a_second() {
    let (d, token) = setup(&["--no-prewarm"]);
    let a = submit(&d, &token, json!({"fn": "work.forever"}), &[]);
    let id = a.body["job_id"].as_str().unwrap().to_owned();
    eventually("the job runs", Duration::from_secs(20), || {
        job(&d, &token, &id)["status"] == "running" && !descendants(d.pid()).is_empty()
    });
    let cancelled = d.with_token("DELETE", &format!("/v1/jobs/{id}"), &token, None);
    assert_eq!(cancelled.status, 200, "{:?}", cancelled.body);
    assert_eq!(cancelled.body["status"], "cancelled");
    let stopped = Instant::now();
    eventually(
        "the job's processes are gone",
        Duration::from_secs(1),
        || descendants(d.pid()).is_empty(),
    );
    assert!(stopped.elapsed() < Duration::from_secs(1));
    // It stays cancelled: the attempt's end is not written over it.
    std::thread::sleep(Duration::from_millis(300));
    let j = job(&d, &token, &id);
    assert_eq!(j["status"], "cancelled", "{j:?}");
    assert_eq!(j["error"]["code"], "cancelled");
    // Cancelling again, or an ended job, changes nothing.
    let again = d.with_token("DELETE", &format!("/v1/jobs/{id}"), &token, None);
    assert_eq!(again.status, 200);
    assert_eq!(again.body["status"], "cancelled");
    // A queued job is cancelled before it starts.
    let done = submit(
        &d,
        &token,
        json!({"fn": "work.add", "int_a": 1, "int_b": 1}),
        &[],
    );
    let done_id = done.body["job_id"].as_str().unwrap();
    assert_eq!(
        wait_end(&d, &token, done_id, Duration::from_secs(20))["status"],
        "succeeded"
    );
    let late = d.with_token("DELETE", &format!("/v1/jobs/{done_id}"), &token, None);
    assert_eq!(late.body["status"], "succeeded", "{:?}", late.body);
}

#[test]
fn a_job_runs_under_the_job_timeout_not_the_calls_and_bad_progress_is_refused() {
    let (d, token) = setup(&[]);
    let set = d.admin(
        "PUT",
        "/tenants/caro/policy",
        Some(json!({"timeout_ms": 500, "job_timeout_ms": 3000})),
    );
    assert_eq!(set.status, 200, "{:?}", set.body);
    assert_eq!(set.body["job_timeout_ms"], 3000, "{:?}", set.body);
    // A call stops at 500 ms; the same work as a job runs its 1.5 s.
    let call = d.with_token(
        "POST",
        "/v1/call",
        &d.token("caro", &["call"]),
        Some(
            json!({"fn": "work.slow", "n": 3, "pause": 0.5})
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(call.body["error"]["code"], "timeout", "{:?}", call.body);
    let a = submit(
        &d,
        &token,
        json!({"fn": "work.slow", "n": 3, "pause": 0.5}),
        &[],
    );
    let j = wait_end(
        &d,
        &token,
        a.body["job_id"].as_str().unwrap(),
        Duration::from_secs(20),
    );
    assert_eq!(j["status"], "succeeded", "{j:?}");
    // ... and a job past its own limit times out, once.
    let a = submit(&d, &token, json!({"fn": "work.forever"}), &[]);
    let j = wait_end(
        &d,
        &token,
        a.body["job_id"].as_str().unwrap(),
        Duration::from_secs(20),
    );
    assert_eq!(j["status"], "failed", "{j:?}");
    assert_eq!(j["error"]["code"], "timeout");
    assert_eq!(j["attempts"], 1);

    let a = submit(&d, &token, json!({"fn": "work.bad_progress"}), &[]);
    let j = wait_end(
        &d,
        &token,
        a.body["job_id"].as_str().unwrap(),
        Duration::from_secs(20),
    );
    assert_eq!(j["result"], "ok", "{j:?}");
    assert_eq!(j["progress"]["fraction"], 1.0);
    assert!(j["progress"]["message"].as_str().unwrap().len() <= 200);
}

#[test]
fn a_revoked_token_stops_the_jobs_it_queued_that_have_not_started() {
    let (d, token) = setup(&["--job-workers", "1"]);
    let watcher = d.token("caro", &["jobs"]);
    let running = submit(
        &d,
        &token,
        json!({"fn": "work.slow", "n": 4, "pause": 0.5}),
        &[],
    );
    let queued = submit(
        &d,
        &token,
        json!({"fn": "work.add", "int_a": 1, "int_b": 1}),
        &[],
    );
    let running = running.body["job_id"].as_str().unwrap().to_owned();
    let queued = queued.body["job_id"].as_str().unwrap().to_owned();
    eventually("the first job running", Duration::from_secs(20), || {
        job(&d, &watcher, &running)["status"] == "running"
    });
    let tokens = d.admin("GET", "/tenants/caro/tokens", None);
    // Revoke exactly the submitting token, found by its prefix.
    let mine = tokens.body["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["prefix"].as_str().is_some_and(|p| token.starts_with(p)))
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .expect("the submitting token is listed");
    assert_eq!(
        d.admin("DELETE", &format!("/tokens/{mine}"), None).status,
        200
    );
    let q = wait_end(&d, &watcher, &queued, Duration::from_secs(30));
    assert_eq!(q["status"], "failed", "{q:?}");
    assert_eq!(q["error"]["code"], "token_revoked");
    // The job already running when the token was revoked runs to its end.
    let r = wait_end(&d, &watcher, &running, Duration::from_secs(30));
    assert_eq!(r["status"], "succeeded", "{r:?}");
}

#[test]
fn the_command_line_submits_waits_for_lists_cancels_and_schedules_jobs() {
    let (d, token) = setup(&[]);
    let falra = |args: &[&str]| {
        std::process::Command::new(falra_tests::falra_bin())
            .args(args)
            .env("FALRA_URL", &d.url)
            .env("FALRA_TOKEN", &token)
            .output()
            .expect("run falra")
    };
    let out = falra(&[
        "job", "submit", "work.add", "int_a=20", "int_b=22", "--wait",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let shown: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(shown["result"], 42, "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("succeeded"),
        "{out:?}"
    );

    // A failed job: the whole answer on stdout, a non-zero exit naming the error.
    let out = falra(&["job", "submit", "work.boom", "--wait"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("function_error"),
        "{out:?}"
    );

    let out = falra(&[
        "job",
        "submit",
        "work.forever",
        "--idempotency-key",
        "k-cli",
    ]);
    assert!(out.status.success(), "{out:?}");
    let queued: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = queued["job_id"].as_str().unwrap();
    let out = falra(&["job", "cancel", id, "--yes"]);
    assert!(out.status.success(), "{out:?}");
    let status = falra(&["job", "status", id, "--json"]);
    let shown: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(shown["status"], "cancelled");
    let status = falra(&["job", "status", id]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("status: cancelled"), "{text}");
    let out = falra(&["job", "wait", id]);
    assert!(!out.status.success(), "{out:?}");

    let listed = falra(&["job", "list", "--status", "cancelled"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(text.starts_with("JOB_ID"), "{text}");
    assert!(text.contains(id), "{text}");

    let made = falra(&[
        "schedule",
        "create",
        "0 3 * * *",
        "work.add",
        "int_a=1",
        "int_b=2",
    ]);
    assert!(made.status.success(), "{made:?}");
    let text = String::from_utf8_lossy(&made.stdout);
    let sid = text
        .lines()
        .find_map(|l| l.strip_prefix("schedule_id: "))
        .expect("the schedule's id")
        .to_owned();
    let listed = falra(&["schedule", "list"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(&sid),
        "{listed:?}"
    );
    assert!(falra(&["schedule", "pause", &sid]).status.success());
    assert!(falra(&["schedule", "remove", &sid, "--yes"])
        .status
        .success());
    let gone = falra(&["schedule", "pause", &sid]);
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("not_found"),
        "{gone:?}"
    );
    let no_token = std::process::Command::new(falra_tests::falra_bin())
        .args(["job", "list", "--url", &d.url])
        .env_remove("FALRA_TOKEN")
        .output()
        .unwrap();
    assert!(!no_token.status.success());
    assert!(String::from_utf8_lossy(&no_token.stderr).contains("no token"));
}
