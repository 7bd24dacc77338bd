//! The release probe's findings, each replayed against the real binary: what an anonymous
//! client can do (idle connections, bodies sent without a token, slow bodies, junk tokens from
//! a shared address), what a tenant can do to be served without paying (CPU burnt in calls
//! that time out or answer too much, in deploy-time imports), and what bursts of pushes,
//! uploads and operator writes do. Each test asserts that the node keeps serving everyone
//! else.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use falra_tests::{http, Daemon, GitRepo};
use serde_json::json;

/// A TCP connection to the daemon from `source` (any address of 127.0.0.0/8).
fn connect_from(source: &str, daemon: &Daemon) -> std::io::Result<TcpStream> {
    connect_url(source, &daemon.url)
}

fn connect_url(source: &str, url: &str) -> std::io::Result<TcpStream> {
    let target: SocketAddr = url
        .trim_start_matches("http://")
        .parse()
        .expect("the daemon listens on an address");
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    let from: SocketAddr = format!("{source}:0").parse().expect("a source address");
    socket.bind(&from.into())?;
    socket.connect_timeout(&target.into(), Duration::from_secs(2))?;
    Ok(socket.into())
}

/// `GET /healthz` over a fresh connection from `source`: the status, or why there was none.
fn healthz_from(source: &str, daemon: &Daemon) -> Result<u16, String> {
    let mut s = connect_from(source, daemon).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no HTTP answer: {text:?}"))
}

/// Whether the peer has closed `s` (a read sees the end, or a reset).
fn closed(s: &TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    let mut byte = [0u8; 1];
    let mut reader = s;
    match reader.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// A memory figure of the daemon from `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
fn memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect(field)
        * 1024
}

fn tenant_with_code(d: &Daemon) -> String {
    let repo = GitRepo::with_files(&[("m.py", "def f(x=1):\n    return x\n")]);
    d.tenant("caro", &repo)
}

#[test]
fn idle_connections_from_one_address_cannot_take_the_node_down() {
    // The common soft limit of 1 024 descriptors, with room above it to raise to. The header
    // deadline is longer than opening the flood takes on a loaded machine, so that no kept
    // connection expires (and frees its place for one that would be refused) meanwhile.
    let mut d = Daemon::start_under(
        &["prlimit", "--nofile=1024:8192", "--"],
        &["--header-timeout-secs", "10"],
    );
    let flood_started = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..1100 {
        if let Ok(s) = connect_from("127.0.0.1", &d) {
            idle.push(s);
        }
    }
    assert!(idle.len() > 1000, "only {} connected", idle.len());
    let flood_took = flood_started.elapsed();
    // Another client is served at once while the idle sockets are held.
    let started = Instant::now();
    assert_eq!(healthz_from("127.0.0.2", &d), Ok(200));
    assert!(started.elapsed() < Duration::from_secs(2));
    // The flood is held to its per-address cap; the rest were closed on arrival.
    std::thread::sleep(Duration::from_millis(500));
    let still_open = idle.iter().filter(|s| !closed(s)).count();
    assert!(
        still_open <= 256,
        "{still_open} idle connections still open"
    );
    // The ones kept are closed when their request head is overdue: within a few seconds of
    // the 10 s deadline of the last one accepted.
    let overdue = flood_started + flood_took + Duration::from_secs(15);
    let mut still_open = idle.iter().filter(|s| !closed(s)).count();
    while still_open > 0 && Instant::now() < overdue {
        std::thread::sleep(Duration::from_millis(250));
        still_open = idle.iter().filter(|s| !closed(s)).count();
    }
    assert_eq!(
        still_open, 0,
        "idle connections outlived the header deadline"
    );
    assert_eq!(healthz_from("127.0.0.1", &d), Ok(200));
    assert!(d.is_alive());
    // The operator sees it.
    let metrics = http("GET", &format!("{}/metrics", d.url), &[], None);
    let refused = metrics
        .body
        .as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("falra_connections_refused_total "))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap();
    assert!(
        refused as usize >= idle.len() / 2,
        "{refused} refusals counted for {} connections (opened in {flood_took:?})",
        idle.len()
    );
}

#[test]
fn a_keep_alive_connection_left_idle_is_closed() {
    let d = Daemon::start_with(&["--header-timeout-secs", "2"]);
    let mut s = connect_from("127.0.0.1", &d).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Then nothing: the connection is closed after the deadline, not held forever.
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Sends a call's headers announcing `announced` bytes, then up to `send` bytes of a body with
/// no token, and returns the status the daemon answered (if any) and how long that took.
fn send_tokenless_body(url: &str, source: &str, announced: usize, send: usize) -> Option<u16> {
    let mut s = connect_url(source, url).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!(
        "POST /v1/call HTTP/1.1\r\nHost: x\r\nContent-Length: {announced}\r\n\r\n{{\"fn\": \"m.f\", \"x\": \""
    );
    s.write_all(head.as_bytes()).ok()?;
    let chunk = vec![b'a'; 16 << 10];
    let mut sent = 0;
    while sent < send {
        if s.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
}

#[test]
fn bodies_without_a_token_are_not_buffered() {
    let d = Daemon::start_with(&["--body-timeout-secs", "3"]);
    let before = memory(d.pid(), "VmRSS");
    let started = Instant::now();
    let senders: Vec<_> = (0..200)
        .map(|i| {
            let url = d.url.clone();
            let source = format!("127.0.{}.{}", 1 + i / 50, 1 + i % 50);
            std::thread::spawn(move || send_tokenless_body(&url, &source, 1_048_576, 1_000_000))
        })
        .collect();
    let statuses: Vec<Option<u16>> = senders.into_iter().map(|h| h.join().unwrap()).collect();
    let grew = memory(d.pid(), "VmRSS").saturating_sub(before);
    assert!(
        grew < 64 << 20,
        "daemon memory grew by {} MB for token-less bodies",
        grew >> 20
    );
    // Every sender was told (no token) or cut off, none was kept waiting for the whole body.
    assert!(started.elapsed() < Duration::from_secs(30));
    let unauthorized = statuses.iter().filter(|s| **s == Some(401)).count();
    assert!(unauthorized >= 150, "{statuses:?}");
    assert_eq!(
        http("GET", &format!("{}/healthz", d.url), &[], None).status,
        200
    );
}

#[test]
fn a_body_that_stalls_is_answered_at_its_deadline() {
    let d = Daemon::start_with(&["--body-timeout-secs", "2"]);
    let token = tenant_with_code(&d);
    let mut s = connect_from("127.0.0.1", &d).unwrap();
    let auth = format!("Authorization: Bearer {token}\r\n");
    let head =
        format!("POST /v1/call HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 1000\r\n\r\n{{\"fn\"");
    s.write_all(head.as_bytes()).unwrap();
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A body whose token is late in a huge body is refused at the prefix, with the reason.
    let big = format!(
        r#"{{"fn": "m.f", "x": "{}", "token": "{token}"}}"#,
        "a".repeat(200 << 10)
    );
    let r = d.post("/v1/call", &[], big.as_bytes());
    assert_eq!(r.status, 401, "{:?}", r.body);
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("first 64 KiB"));
    // The same call with the token first, or in the header, is served.
    let first = format!(
        r#"{{"token": "{token}", "fn": "m.f", "x": "{}"}}"#,
        "a".repeat(200 << 10)
    );
    let r = d.post("/v1/call", &[], first.as_bytes());
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = d.with_token("POST", "/v1/call", &token, Some(big.as_bytes()));
    assert_eq!(r.status, 200, "{:?}", r.body);
    // A second "token" in the body cannot swap the caller after the first was checked.
    let twice = format!(r#"{{"token": "{token}", "fn": "m.f", "token": "flr_other"}}"#);
    let r = d.post("/v1/call", &[], twice.as_bytes());
    assert_eq!(r.status, 400, "{:?}", r.body);
}

#[test]
fn junk_tokens_from_a_shared_address_do_not_lock_out_valid_ones() {
    let d = Daemon::start_with(&["--auth-failures-per-minute", "5"]);
    let token = tenant_with_code(&d);
    let mut limited = 0;
    for i in 0..20 {
        let r = d.call(json!({"token": format!("flr_junk{i}"), "fn": "m.f"}));
        assert!(matches!(r.status, 401 | 429), "{:?}", r.body);
        if r.status == 429 {
            limited += 1;
            assert!(r.retry_after.is_some());
        }
    }
    assert!(limited >= 10, "the junk was not slowed down: {limited}");
    // Behind the same address (a proxy, a NAT), a valid token is served.
    let r = d.call(json!({"token": token, "fn": "m.f", "x": 7}));
    assert_eq!(
        (r.status, &r.body["result"]),
        (200, &json!(7)),
        "{:?}",
        r.body
    );
    let a = d.admin("GET", "/tenants", None);
    assert_eq!(a.status, 200, "{:?}", a.body);
}

#[test]
fn concurrent_operator_writes_never_answer_500() {
    let d = Daemon::start();
    let a = d.admin("POST", "/tenants", Some(json!({"name": "caro"})));
    assert_eq!(a.status, 201);
    let url = d.url.clone();
    let admin = d.admin_token.clone();
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let (url, admin) = (url.clone(), admin.clone());
            std::thread::spawn(move || {
                let auth = format!("Bearer {admin}");
                let call = |method: &str, path: &str, body: Option<serde_json::Value>| {
                    let bytes = body.map(|b| b.to_string().into_bytes());
                    http(
                        method,
                        &format!("{url}/admin/v1{path}"),
                        &[("Authorization", &auth)],
                        bytes.as_deref(),
                    )
                };
                let mut statuses = Vec::new();
                for i in 0..25 {
                    let plan = format!("p{}", (w + i) % 3);
                    let r = match i % 4 {
                        0 => call(
                            "PUT",
                            &format!("/plans/{plan}"),
                            Some(json!({"memory_mb": 128 + i})),
                        ),
                        1 => call("DELETE", &format!("/plans/{plan}"), None),
                        2 => call(
                            "PUT",
                            "/tenants/caro/policy",
                            Some(json!({"timeout_ms": 1000 + i})),
                        ),
                        _ => call(
                            "POST",
                            "/tenants/caro/tokens",
                            Some(json!({"scopes": ["call"]})),
                        ),
                    };
                    statuses.push((r.status, r.body.to_string()));
                }
                statuses
            })
        })
        .collect();
    for w in workers {
        for (status, body) in w.join().unwrap() {
            assert!(status < 500 || status == 503, "{status}: {body}");
        }
    }
}

const HOOK_SECRET: &str = "hook-secret";

/// A signed push delivery of `body` with delivery id `delivery`.
fn push(d: &Daemon, delivery: &str) -> falra_tests::Answer {
    let body = r#"{"ref": "refs/heads/main"}"#;
    let sig = format!(
        "sha256={}",
        hex::encode(falra_policies::webhook::hmac_sha256(
            HOOK_SECRET.as_bytes(),
            body.as_bytes()
        ))
    );
    d.post(
        "/hooks/github/caro",
        &[
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", delivery),
            ("X-Hub-Signature-256", &sig),
        ],
        body.as_bytes(),
    )
}

/// How many push deploys of caro the audit log holds once nothing is deploying any more.
fn push_deploys_settled(d: &Daemon) -> usize {
    let mut last = usize::MAX;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = d.admin("GET", "/audit?tenant=caro&limit=500", None);
        let n = events.body["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == json!("deploy.push"))
            .count();
        if n == last || Instant::now() > deadline {
            return n;
        }
        last = n;
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn hooked_tenant(d: &Daemon, repo: &GitRepo) {
    let a = d.admin(
        "POST",
        "/tenants",
        Some(json!({"name": "caro", "repo": repo.url(), "webhook_secret": HOOK_SECRET})),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    d.sync("caro");
}

#[test]
fn a_replayed_push_delivery_deploys_once() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(&[("m.py", "def f():\n    return 1\n")]);
    hooked_tenant(&d, &repo);
    repo.commit(&[("m.py", "def f():\n    return 2\n")]);
    let first = push(&d, "delivery-1");
    assert_eq!(first.status, 202, "{:?}", first.body);
    for _ in 0..19 {
        let again = push(&d, "delivery-1");
        assert_eq!(again.status, 200, "{:?}", again.body);
        assert_eq!(again.body["deploying"], json!(false));
    }
    assert_eq!(push_deploys_settled(&d), 1);
}

#[test]
fn a_burst_of_pushes_is_coalesced() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(&[("m.py", "def f():\n    return 1\n")]);
    hooked_tenant(&d, &repo);
    repo.commit(&[("m.py", "def f():\n    return 2\n")]);
    let mut coalesced = 0;
    for i in 0..20 {
        let a = push(&d, &format!("burst-{i}"));
        assert_eq!(a.status, 202, "{:?}", a.body);
        if a.body["coalesced"] == json!(true) {
            coalesced += 1;
        }
    }
    assert!(coalesced >= 10, "only {coalesced} of 20 coalesced");
    let deploys = push_deploys_settled(&d);
    assert!(
        (1..=5).contains(&deploys),
        "{deploys} deploys for one burst"
    );
    // The last push's commit is what is served.
    let token = d.token("caro", &["call"]);
    let r = d.call(json!({"token": token, "fn": "m.f"}));
    assert_eq!(r.body["result"], json!(2), "{:?}", r.body);
}

#[test]
fn one_tenant_cannot_queue_deploys_without_bound() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(&[("m.py", "def f():\n    return 1\n")]);
    d.tenant("caro", &repo);
    let deploy = d.token("caro", &["deploy"]);
    let url = d.url.clone();
    let uploads: Vec<_> = (0..60)
        .map(|i| {
            let (url, deploy) = (url.clone(), deploy.clone());
            std::thread::spawn(move || {
                let source = format!("def g():\n    return {i}\n");
                http(
                    "PUT",
                    &format!("{url}/v1/modules/extra{i}"),
                    &[("Authorization", &format!("Bearer {deploy}"))],
                    Some(source.as_bytes()),
                )
            })
        })
        .collect();
    let answers: Vec<_> = uploads.into_iter().map(|h| h.join().unwrap()).collect();
    let done = answers.iter().filter(|a| a.status == 200).count();
    let refused: Vec<_> = answers.iter().filter(|a| a.status == 409).collect();
    assert_eq!(done + refused.len(), 60, "{answers:?}");
    assert!(refused.len() >= 40, "only {} refused", refused.len());
    for a in &refused {
        assert_eq!(a.body["error"]["detail"]["reason"], json!("deploy_queued"));
        assert!(a.retry_after.is_some());
    }
    let versions = d.with_token("GET", "/v1/versions", &deploy, None);
    let n = versions.body["versions"].as_array().map_or(0, Vec::len);
    assert!(n <= done + 1, "{n} versions for {done} accepted uploads");
}

/// Syncs caro and asserts the deploy was refused with `422 sync_failed` saying `why`.
fn assert_sync_refused(d: &Daemon, why: &str) -> falra_tests::Answer {
    let a = d.admin("POST", "/tenants/caro/sync", None);
    assert_eq!(a.status, 422, "{:?}", a.body);
    assert_eq!(
        a.body["error"]["code"],
        json!("sync_failed"),
        "{:?}",
        a.body
    );
    let message = a.body["error"]["message"].as_str().unwrap();
    assert!(message.contains(why), "{message}");
    a
}

const BURN: &str = "\
import time

def spin():
    while True:
        pass

def big():
    t = time.process_time()
    while time.process_time() - t < 0.6:
        pass
    return 'x' * (8 << 20)

def ok():
    return 1
";

fn set_policy(d: &Daemon, policy: serde_json::Value) {
    let a = d.admin("PUT", "/tenants/caro/policy", Some(policy));
    assert_eq!(a.status, 200, "{:?}", a.body);
}

fn cpu_ms_of(d: &Daemon) -> u64 {
    let u = d.admin("GET", "/usage?tenant=caro", None);
    u.body["functions"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .filter_map(|row| row["cpu_ms"].as_u64())
        .sum()
}

#[test]
fn cpu_burnt_in_calls_that_time_out_or_answer_too_much_is_metered() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(&[("burn.py", BURN)]);
    let token = d.tenant("caro", &repo);
    set_policy(&d, json!({"timeout_ms": 1500, "cpu_seconds_per_month": 3}));
    let mut refused = None;
    for i in 0..6 {
        let r = d.call(json!({"token": token, "fn": "burn.spin"}));
        if r.status == 429 {
            assert_eq!(
                r.body["error"]["code"],
                json!("quota_exceeded"),
                "{:?}",
                r.body
            );
            refused = Some(i);
            break;
        }
        assert_eq!(r.body["error"]["code"], json!("timeout"), "{:?}", r.body);
    }
    // Two or three timeouts of 1.5 s each burn the 3 s quota; the next call is refused.
    let refused = refused.expect("an over-quota tenant kept being served");
    assert!(
        (2..=3).contains(&refused),
        "refused after {refused} timeouts"
    );
    assert!(cpu_ms_of(&d) >= 2500, "only {} ms metered", cpu_ms_of(&d));

    // An answer over the cap: the CPU it burnt is metered as well.
    set_policy(&d, json!({"cpu_seconds_per_month": null}));
    let before = cpu_ms_of(&d);
    let r = d.call(json!({"token": token, "fn": "burn.big"}));
    assert_eq!(
        r.body["error"]["code"],
        json!("result_too_large"),
        "{:?}",
        r.body
    );
    assert!(
        cpu_ms_of(&d) >= before + 500,
        "oversized answer not metered"
    );
}

#[test]
fn deploy_time_imports_are_limited_metered_and_refused_over_quota() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(&[("burn.py", BURN)]);
    d.tenant("caro", &repo);
    let deploy = d.token("caro", &["deploy"]);
    set_policy(&d, json!({"timeout_ms": 1000}));
    // A module whose import burns CPU and cancels any alarm it finds: the listing child is
    // stopped at the tenant's time limit all the same, and what it burnt is metered.
    let greedy = "import signal, time\nsignal.alarm(0)\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nt = time.process_time()\nwhile time.process_time() - t < 30:\n    signal.alarm(0)\n\ndef f():\n    return 1\n";
    let started = Instant::now();
    let a = d.with_token(
        "PUT",
        "/v1/modules/greedy",
        &deploy,
        Some(greedy.as_bytes()),
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(a.status < 500, "{:?}", a.body);
    let u = d.admin("GET", "/usage?tenant=caro", None);
    let deploy_rows: Vec<_> = u.body["functions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["fn"].as_str().unwrap_or("").starts_with("<deploy:"))
        .collect();
    let deploy_cpu: u64 = deploy_rows
        .iter()
        .filter_map(|r| r["cpu_ms"].as_u64())
        .sum();
    assert!(
        deploy_cpu >= 500,
        "deploy children metered {deploy_cpu} ms: {deploy_rows:?}"
    );
    // Over its quota, the tenant's uploads and syncs are refused before any child runs.
    set_policy(&d, json!({"cpu_seconds_per_month": 1}));
    let caller = d.token("caro", &["call"]);
    // (The deploy's own children may have used the second already.)
    let r = d.call(json!({"token": caller, "fn": "burn.spin"}));
    let code = r.body["error"]["code"].clone();
    assert!(
        code == json!("timeout") || code == json!("quota_exceeded"),
        "{:?}",
        r.body
    );
    let a = d.with_token(
        "PUT",
        "/v1/modules/other",
        &deploy,
        Some(b"def g():\n    return 2\n"),
    );
    assert_eq!(
        (a.status, &a.body["error"]["code"]),
        (429, &json!("quota_exceeded")),
        "{:?}",
        a.body
    );
    let a = d.admin("POST", "/tenants/caro/sync", None);
    assert_eq!(a.status, 429, "{:?}", a.body);
}

fn git_out(repo: &GitRepo, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = std::process::Command::new("git")
        .args(["-c", "user.name=test", "-c", "user.email=test@localhost"])
        .args(args)
        .current_dir(repo.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn a_huge_blob_is_refused_before_it_is_inflated() {
    let mut d = Daemon::start();
    let repo = GitRepo::with_files(&[("m.py", "def f():\n    return 1\n")]);
    // Fetched as from any git host: smart HTTP, the pack made by git itself.
    let server = falra_tests::git_http_server(repo.path(), "deployer", "pw");
    let a = d.admin(
        "POST",
        "/tenants",
        Some(json!({"name": "caro", "repo": format!("http://127.0.0.1:{}/.git", server.port)})),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    let secret = json!({"value": {"username": "deployer", "password": "pw"}});
    assert_eq!(
        d.admin("PUT", "/tenants/caro/secrets/git", Some(secret))
            .status,
        200
    );
    d.sync("caro");
    // 1 GiB of zeros: about a megabyte of objects.
    let big = repo.path().join("big.bin");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    repo.git(&["add", "big.bin"]);
    repo.git(&["commit", "-q", "-m", "big"]);
    std::fs::remove_file(&big).unwrap();
    let before = memory(d.pid(), "VmHWM");
    assert_sync_refused(&d, "larger than the limit");
    let grew = memory(d.pid(), "VmHWM").saturating_sub(before);
    assert!(grew < 256 << 20, "peak memory grew by {} MB", grew >> 20);
    assert!(d.is_alive());
    // The version served is still the one before.
    let token = d.token("caro", &["call"]);
    assert_eq!(
        d.call(json!({"token": token, "fn": "m.f"})).body["result"],
        json!(1)
    );
}

#[test]
fn a_tree_of_empty_directories_is_charged_and_capped() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(&[("m.py", "def f():\n    return 1\n")]);
    d.tenant("caro", &repo);
    let empty = git_out(&repo, &["mktree"], Some(""));
    let listing: String = (0..40_000)
        .map(|i| format!("040000 tree {empty}\td{i:05}\n"))
        .collect();
    let tree = git_out(&repo, &["mktree"], Some(&listing));
    let head = git_out(&repo, &["rev-parse", "HEAD"], None);
    let commit = git_out(
        &repo,
        &["commit-tree", &tree, "-p", &head, "-m", "dirs"],
        None,
    );
    repo.git(&["update-ref", "refs/heads/main", &commit]);
    assert_sync_refused(&d, "files and directories");
    // Nothing of the refused tree is left on disk.
    let versions = d.data_dir.join("versions/caro");
    let left: usize = std::fs::read_dir(&versions)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| falra_tests::files_under(&e.path()).len())
        .sum();
    assert!(left < 10, "{left} files left in {}", versions.display());
}

/// A tenant's code that fetches URLs through whatever its environment says.
const FETCH: &str = r#"
import os, socket, urllib.request, urllib.error

def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return {"status": r.status, "body": r.read().decode()}
    except urllib.error.HTTPError as e:
        return {"status": e.code, "body": e.read().decode()}
    except Exception as e:
        return {"error": type(e).__name__ + ": " + str(e)}

def direct(port):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect(("127.0.0.1", port))
        return "connected"
    except OSError as e:
        return "refused:%d" % e.errno

def tunnel(host, port):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
    s.sendall(("CONNECT %s:%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (host, port, host)).encode())
    head = s.recv(4096).decode()
    if not head.startswith("HTTP/1.1 200"):
        return {"refused": head}
    s.sendall(b"GET /hello.txt HTTP/1.0\r\nHost: x\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return {"through": data.decode().split("\r\n\r\n", 1)[-1]}

def proxy_env():
    return {k: v for k, v in os.environ.items() if "proxy" in k.lower()}
"#;

/// An HTTP server on 127.0.0.1 that redirects `/away` to `target`.
fn redirector(target: &str) -> falra_tests::Service {
    let script = format!(
        "import http.server, sys\n\
         class H(http.server.BaseHTTPRequestHandler):\n    \
             def do_GET(self):\n        \
                 self.send_response(302); self.send_header('Location', {target:?}); \
                 self.send_header('Content-Length', '0'); self.end_headers()\n\
         http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
    );
    falra_tests::Service::start(|port| {
        let mut cmd = std::process::Command::new("/usr/bin/python3");
        cmd.args(["-c", &script, &port.to_string()]);
        cmd
    })
}

#[test]
fn tenant_code_reaches_only_its_allow_list_through_the_gateway() {
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("hello.txt"), "hello from outside").unwrap();
    let server = falra_tests::static_files(files.path());
    let port = server.port;
    let away = redirector(&format!("http://127.0.0.2:{port}/hello.txt"));
    // The test's servers are on loopback: the operator allows private addresses here.
    let d = Daemon::start_with(&["--egress-allow-private"]);
    let repo = GitRepo::with_files(&[("net.py", FETCH)]);
    let token = d.tenant("caro", &repo);
    let call = |f: &str, kwargs: serde_json::Value| {
        let mut body = kwargs;
        body["token"] = json!(token);
        body["fn"] = json!(format!("net.{f}"));
        let r = d.call(body);
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.body["result"].clone()
    };
    let url = format!("http://127.0.0.1:{port}/hello.txt");

    // "none": no proxy in the environment, nothing reachable, the gateway refuses too.
    assert_eq!(call("proxy_env", json!({})), json!({}));
    assert!(call("get", json!({"url": url}))["error"].is_string());
    let t = call("tunnel", json!({"host": "127.0.0.1", "port": port}));
    assert!(t["refused"].as_str().unwrap().contains("403"), "{t}");

    set_policy(
        &d,
        json!({"network": {"allow": [format!("127.0.0.1:{port}"), format!("127.0.0.1:{}", away.port)]}}),
    );
    assert_eq!(
        call("proxy_env", json!({}))["HTTP_PROXY"],
        json!("http://127.0.0.1:3128")
    );
    // Allowed: plain HTTP through the gateway, and a CONNECT tunnel.
    let r = call("get", json!({"url": url}));
    assert_eq!(r["status"], json!(200), "{r}");
    assert_eq!(r["body"], json!("hello from outside"));
    let t = call("tunnel", json!({"host": "127.0.0.1", "port": port}));
    assert_eq!(t["through"], json!("hello from outside"), "{t}");
    // The same server by another name or port is not on the list.
    for other in [
        format!("http://127.0.0.2:{port}/hello.txt"),
        format!("http://localhost:{port}/hello.txt"),
    ] {
        let r = call("get", json!({"url": other}));
        assert_eq!(r["status"], json!(403), "{other}: {r}");
        assert!(r["body"].as_str().unwrap().contains("allow-list"), "{r}");
    }
    // A redirect is a new connection, decided anew.
    let r = call(
        "get",
        json!({"url": format!("http://127.0.0.1:{}/away", away.port)}),
    );
    assert_eq!(r["status"], json!(403), "{r}");
    // The call's own loopback has nothing of the host's.
    assert!(call("direct", json!({"port": port}))
        .as_str()
        .unwrap()
        .starts_with("refused"));
    // A policy change applies to the next call.
    set_policy(&d, json!({"network": "none"}));
    assert!(call("get", json!({"url": url}))["error"].is_string());
    let metrics = http("GET", &format!("{}/metrics", d.url), &[], None);
    assert!(
        !metrics
            .body
            .as_str()
            .unwrap()
            .contains("falra_egress_refused_total 0\n"),
        "refusals are counted"
    );
}

#[test]
fn an_allow_listed_name_that_resolves_to_a_private_address_is_refused() {
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("hello.txt"), "inside").unwrap();
    let server = falra_tests::static_files(files.path());
    // No --egress-allow-private: loopback is out of reach, whatever the list says.
    let d = Daemon::start();
    let repo = GitRepo::with_files(&[("net.py", FETCH)]);
    let token = d.tenant("caro", &repo);
    set_policy(
        &d,
        json!({"network": {"allow": [format!("localhost:{}", server.port), format!("127.0.0.1:{}", server.port)]}}),
    );
    for host in ["localhost", "127.0.0.1"] {
        let url = format!("http://{host}:{}/hello.txt", server.port);
        let r = d.call(json!({"token": token, "fn": "net.get", "url": url}));
        assert_eq!(r.body["result"]["status"], json!(403), "{:?}", r.body);
        assert!(r.body["result"]["body"]
            .as_str()
            .unwrap()
            .contains("not a public address"));
    }
    // Bad lists are refused whole, with the entry named.
    let a = d.admin(
        "PUT",
        "/tenants/caro/policy",
        Some(json!({"network": {"allow": ["*:443"]}})),
    );
    assert_eq!(a.status, 400, "{:?}", a.body);
    assert!(a.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("*:443"));
}

#[test]
fn requirement_lines_that_would_run_or_fetch_what_the_tenant_says_are_refused() {
    // A listener on host loopback that no build may ever reach.
    let bait = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    bait.set_nonblocking(true).unwrap();
    let bait_port = bait.local_addr().unwrap().port();
    let d = Daemon::start_with(&["--egress-allow-private"]);
    let backend = format!(
        "import socket\ndef build_wheel(*a, **k):\n    socket.create_connection(('127.0.0.1', {bait_port}))\n"
    );
    let repo = GitRepo::with_files(&[
        ("m.py", "def f():\n    return 1\n"),
        (
            "pkg/pyproject.toml",
            "[build-system]\nrequires = []\nbuild-backend = 'evil'\nbackend-path = ['.']\n",
        ),
        ("pkg/evil.py", &backend),
    ]);
    d.tenant("caro", &repo);
    for (requirements, line) in [
        ("six\n./pkg\n".to_owned(), 2),
        ("--no-binary :all:\nsix\n".to_owned(), 1),
        (format!("HTTP://127.0.0.1:{bait_port}/x.tar.gz\n"), 1),
        (format!("ht\\\ntp://127.0.0.1:{bait_port}/x.tar.gz\n"), 1),
        (
            format!("--find-links http://127.0.0.1:{bait_port}/\nsix\n"),
            1,
        ),
        ("pkg @ file:///code/pkg\n".to_owned(), 1),
    ] {
        repo.commit(&[("requirements.txt", &requirements)]);
        let a = assert_sync_refused(&d, &format!("line {line}"));
        assert_eq!(
            a.body["error"]["detail"]["line"],
            json!(line),
            "{requirements:?}"
        );
    }
    assert!(bait.accept().is_err(), "a build reached host loopback");
}
