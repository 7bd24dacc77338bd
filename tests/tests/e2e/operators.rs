//! The operator API and the command line, against a running daemon.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use falra_tests::{falra_bin, Daemon, GitRepo};
use serde_json::{json, Value};

#[test]
fn tenants_are_created_listed_shown_changed_and_removed() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(&[("a.py", "def f():\n    return 1\n")]);
    let a = d.admin(
        "POST",
        "/tenants",
        Some(json!({"name": "caro", "repo": repo.url()})),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert_eq!(a.body["branch"], json!("main"));
    assert_eq!(a.body["active_version"], Value::Null);
    assert_eq!(a.body["policy"]["timeout_ms"], json!(30000));

    for (body, field) in [
        (json!({"name": "Caro"}), "name"),
        (json!({"name": "1x"}), "name"),
        (json!({"name": "ok", "branch": "../x"}), "branch"),
        (json!({"name": "ok", "subdir": "../x"}), "subdir"),
    ] {
        let a = d.admin("POST", "/tenants", Some(body.clone()));
        assert_eq!(a.status, 400, "{body}: {:?}", a.body);
        assert_eq!(a.body["error"]["detail"]["field"], json!(field));
    }
    let a = d.admin("POST", "/tenants", Some(json!({"name": "x", "unknown": 1})));
    assert_eq!(a.status, 400);
    let a = d.admin("POST", "/tenants", Some(json!({"name": "caro"})));
    assert_eq!(
        (a.status, a.body["error"]["code"].clone()),
        (409, json!("conflict"))
    );

    let a = d.admin("GET", "/tenants", None);
    assert_eq!(a.body["tenants"].as_array().unwrap().len(), 1);
    let a = d.admin("GET", "/tenants/nobody", None);
    assert_eq!(
        (a.status, a.body["error"]["code"].clone()),
        (404, json!("not_found"))
    );

    let version = d.sync("caro");
    let a = d.admin("GET", "/tenants/caro", None);
    assert_eq!(a.body["active_version"], json!(version));
    let a = d.admin("PATCH", "/tenants/caro", Some(json!({"branch": "dev"})));
    assert_eq!(a.body["branch"], json!("dev"));
    // A failed sync (no such branch) says why and leaves the active version alone.
    let a = d.admin("POST", "/tenants/caro/sync", None);
    assert_eq!(a.status, 422, "{:?}", a.body);
    assert_eq!(a.body["error"]["code"], json!("sync_failed"));
    assert!(a.body["error"]["message"].as_str().unwrap().contains("dev"));
    assert_eq!(
        d.admin("GET", "/tenants/caro", None).body["active_version"],
        json!(version)
    );

    let token = d.token("caro", &["call"]);
    assert_eq!(
        d.call(json!({"token": token, "fn": "a.f"})).body["result"],
        json!(1)
    );
    let a = d.admin("DELETE", "/tenants/caro", None);
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert!(!d.data_dir.join("versions/caro").exists());
    assert!(d
        .data_dir
        .join("github/git_caro")
        .symlink_metadata()
        .is_err());
    let a = d.call(json!({"token": token, "fn": "a.f"}));
    assert_eq!(
        a.status, 401,
        "a removed tenant's tokens stop working: {:?}",
        a.body
    );
}

#[test]
fn tokens_are_shown_once_and_stored_as_hashes() {
    let d = Daemon::start();
    d.admin("POST", "/tenants", Some(json!({"name": "caro"})));
    let a = d.admin(
        "POST",
        "/tenants/caro/tokens",
        Some(json!({"scopes": ["call", "deploy"], "expires_in_days": 365})),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    let token = a.body["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("flr_") && token.len() == 68);
    assert_eq!(a.body["scopes"], json!(["call", "deploy"]));
    assert!(a.body["expires_at"].as_str().unwrap().ends_with('Z'));

    let list = d.admin("GET", "/tenants/caro/tokens", None);
    let listed = list.body.to_string();
    assert!(
        !listed.contains(&token[4..]),
        "a listing must not contain the token"
    );
    assert_eq!(list.body["tokens"][0]["prefix"], json!(&token[..12]));

    for bad in [
        json!({"scopes": []}),
        json!({"scopes": ["root"]}),
        json!({"scopes": ["call"], "expires_in_days": 0}),
        json!({"scopes": ["call"], "expires_at": "2001-01-01T00:00:00Z"}),
        json!({"scopes": ["call"], "expires_at": "tomorrow"}),
        json!({"scopes": ["call"], "expires_at": "2099-01-01T00:00:00Z", "expires_in_days": 3}),
    ] {
        let a = d.admin("POST", "/tenants/caro/tokens", Some(bad.clone()));
        assert_eq!(a.status, 400, "{bad}: {:?}", a.body);
    }
    assert_eq!(d.admin("DELETE", "/tokens/tok_nope", None).status, 404);

    // Nothing in the data directory holds a plaintext token.
    let admin_secret = d.admin_token[4..].to_owned();
    for entry in falra_tests::files_under(&d.data_dir) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        for secret in [&token[4..], admin_secret.as_str()] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds a plaintext token",
                entry.display()
            );
        }
    }
}

#[test]
fn operator_api_needs_an_operator_token() {
    let d = Daemon::start();
    let url = format!("{}/admin/v1/tenants", d.url);
    let a = falra_tests::http("GET", &url, &[], None);
    assert_eq!(
        (a.status, a.body["error"]["code"].clone()),
        (401, json!("unauthorized"))
    );
    let a = falra_tests::http("GET", &url, &[("Authorization", "Bearer flr_wrong")], None);
    assert_eq!(a.status, 401);
}

#[test]
fn policy_changes_apply_to_the_next_call_and_bad_values_are_refused() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(&[(
        "s.py",
        "import time\ndef nap(s):\n    time.sleep(s)\n    return 'awake'\n",
    )]);
    let token = d.tenant("caro", &repo);
    assert_eq!(
        d.call(json!({"token": token, "fn": "s.nap", "s": 0.5}))
            .body["result"],
        json!("awake")
    );
    let a = d.admin(
        "PUT",
        "/tenants/caro/policy",
        Some(json!({"timeout_ms": 200})),
    );
    assert_eq!(a.status, 200);
    assert_eq!(
        d.call(json!({"token": token, "fn": "s.nap", "s": 0.5}))
            .status,
        504
    );
    for bad in [
        json!({"memory_mb": 0}),
        json!({"timeout_ms": 1}),
        json!({"network": "wifi"}),
        json!({"nope": 1}),
    ] {
        let a = d.admin("PUT", "/tenants/caro/policy", Some(bad.clone()));
        assert_eq!(a.status, 400, "{bad}: {:?}", a.body);
    }
    // The refused changes left the policy as it was.
    let a = d.admin("GET", "/tenants/caro", None);
    assert_eq!(a.body["policy"]["timeout_ms"], json!(200));
    assert_eq!(a.body["policy"]["memory_mb"], json!(256));
}

fn cli(d: &Daemon, args: &[&str], token: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new(falra_bin());
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .env("FALRA_URL", &d.url)
        .env("FALRA_ADMIN_TOKEN", &d.admin_token);
    if let Some(t) = token {
        cmd.env("FALRA_TOKEN", t);
    }
    let out = cmd.output().expect("run falra");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_command_line_drives_a_running_daemon() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(&[(
        "falra_test_add.py",
        "def add(int_a, int_b):\n    return int_a + int_b\n\ndef echo(x):\n    return x\n",
    )]);
    let url = repo.url();
    let (ok, out, err) = cli(&d, &["tenant", "add", "caro", "--repo", &url], None);
    assert!(ok, "{out}{err}");
    let (ok, out, _) = cli(&d, &["tenant", "sync", "caro"], None);
    assert!(ok && out.starts_with("version: "), "{out}");
    // Lists are tables for people, JSON on request.
    let (ok, out, _) = cli(&d, &["tenant", "list"], None);
    assert!(ok, "{out}");
    let mut lines = out.lines();
    assert!(lines.next().unwrap().starts_with("NAME"), "{out}");
    assert!(lines.next().unwrap().starts_with("caro "), "{out}");
    let (ok, out, _) = cli(&d, &["tenant", "list", "--json"], None);
    assert!(ok);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["tenants"][0]["name"], json!("caro"));
    let (ok, out, _) = cli(&d, &["tenant", "show", "caro"], None);
    assert!(ok && out.contains("\nactive_version: "), "{out}");
    let (ok, out, err) = cli(
        &d,
        &[
            "token",
            "issue",
            "caro",
            "--scopes",
            "call",
            "--expires-in-days",
            "365",
            "--json",
        ],
        None,
    );
    assert!(ok, "{err}");
    let issued: Value = serde_json::from_str(&out).unwrap();
    let token = issued["token"].as_str().unwrap();

    let (ok, out, err) = cli(
        &d,
        &["call", "falra_test_add.add", "int_a=1", "int_b=2", "--json"],
        Some(token),
    );
    assert!(ok, "{err}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["result"], json!(3));
    // Values that are not JSON are strings.
    let (ok, out, _) = cli(
        &d,
        &["call", "falra_test_add.echo", "x=hello world", "--json"],
        Some(token),
    );
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["result"],
        json!("hello world")
    );

    // Errors go to stderr with a non-zero exit.
    let (ok, _, err) = cli(&d, &["call", "falra_test_add.nope"], Some(token));
    assert!(!ok && err.contains("fn_not_found"), "{err}");
    let (ok, _, err) = cli(&d, &["tenant", "show", "nobody"], None);
    assert!(!ok && err.contains("not_found"), "{err}");
    let (ok, _, err) = cli(&d, &["policy", "set", "caro", "timeout_ms=0"], None);
    assert!(!ok && err.contains("bad_request"), "{err}");
    let (ok, out, _) = cli(&d, &["policy", "set", "caro", "timeout_ms=1000"], None);
    assert!(ok && out.contains("1000"), "{out}");
    let (ok, out, _) = cli(&d, &["token", "list", "caro"], None);
    assert!(ok && !out.contains(&token[4..]));
    let id = issued["id"].as_str().unwrap();
    let (ok, _, _) = cli(&d, &["token", "revoke", id, "--yes"], None);
    assert!(ok);
    let (ok, _, err) = cli(
        &d,
        &["call", "falra_test_add.add", "int_a=1", "int_b=2"],
        Some(token),
    );
    assert!(!ok && err.contains("token_revoked"), "{err}");
    let (ok, _, err) = cli(&d, &["tenant", "remove", "caro"], None);
    assert!(!ok && err.contains("--yes"), "asks first: {err}");
    assert_eq!(d.admin("GET", "/tenants/caro", None).status, 200);
    let (ok, _, err) = cli(&d, &["tenant", "remove", "caro", "--yes"], None);
    assert!(ok, "{err}");
}

#[test]
fn demo_prints_a_curl_line_that_answers_three() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(falra_bin())
        .args([
            "serve",
            "--demo",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path())
        .env("FALRA_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let curl = loop {
        let line = lines.next().expect("demo printed no curl line").unwrap();
        if line.trim_start().starts_with("curl ") {
            break line;
        }
    };
    // Run the printed line exactly as a user would paste it.
    let out = Command::new("sh").args(["-c", &curl]).output().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let answer: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(answer["ok"], json!(true), "{answer}");
    assert_eq!(answer["result"], json!(3));
}

#[test]
fn versions_are_listed_and_an_earlier_one_can_be_rolled_back_to() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(&[("v.py", "def get():\n    return 1\n")]);
    let token = d.tenant("caro", &repo);
    let v1 = d.admin("GET", "/tenants/caro", None).body["active_version"]
        .as_str()
        .unwrap()
        .to_owned();
    repo.commit(&[("v.py", "def get():\n    return 2\n")]);
    let v2 = d.sync("caro");
    let get = || d.call(json!({"token": token, "fn": "v.get"})).body["result"].clone();
    assert_eq!(get(), json!(2));

    let auth = format!("Bearer {token}");
    let list = falra_tests::http(
        "GET",
        &format!("{}/v1/versions", d.url),
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(list.status, 200, "{:?}", list.body);
    assert_eq!(list.body["active"], json!(v2));
    let ids: Vec<&str> = list.body["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&v1.as_str()) && ids.contains(&v2.as_str()));
    let marked: Vec<&Value> = list.body["versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["active"] == json!(true))
        .collect();
    assert_eq!(marked.len(), 1);
    assert_eq!(marked[0]["id"], json!(v2));

    let a = d.admin(
        "POST",
        "/tenants/caro/rollback",
        Some(json!({"version": v1})),
    );
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(get(), json!(1));
    let link = std::fs::canonicalize(d.data_dir.join("github/git_caro")).unwrap();
    assert!(link.ends_with(&v1), "{}", link.display());

    for (bad, status) in [
        (json!({"version": "ffffffffffff"}), 404),
        (json!({"version": "../x"}), 400),
        (json!({}), 400),
    ] {
        let a = d.admin("POST", "/tenants/caro/rollback", Some(bad.clone()));
        assert_eq!(a.status, status, "{bad}: {:?}", a.body);
    }
    // The CLI does the same.
    let (ok, out, err) = cli(&d, &["tenant", "rollback", "caro", &v2], None);
    assert!(ok && out.contains(&v2), "{out}{err}");
    assert_eq!(get(), json!(2));
    // Without a token, the list is refused like any tenant endpoint.
    let a = falra_tests::http("GET", &format!("{}/v1/versions", d.url), &[], None);
    assert_eq!(a.status, 401);
}

#[test]
fn old_versions_are_collected_but_never_while_a_call_uses_them() {
    let d = Daemon::start_with(&["--keep-versions", "2"]);
    let repo = GitRepo::with_files(&[(
        "v.py",
        "import time\n\ndef get(wait=0):\n    time.sleep(wait)\n    return 1\n",
    )]);
    let token = d.tenant("caro", &repo);
    let v1 = d.admin("GET", "/tenants/caro", None).body["active_version"]
        .as_str()
        .unwrap()
        .to_owned();
    // A slow call on v1 is in flight while three more versions are deployed.
    let slow = d.call_in_background(json!({"token": token, "fn": "v.get", "wait": 3}));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut versions = vec![v1.clone()];
    for n in 2..=4 {
        repo.commit(&[("v.py", &format!("def get(wait=0):\n    return {n}\n"))]);
        versions.push(d.sync("caro"));
    }
    let dir = |v: &str| d.data_dir.join("versions/caro").join(v);
    assert!(dir(&v1).is_dir(), "a version in use was removed");
    assert!(
        !dir(&versions[1]).exists(),
        "an unused old version was kept"
    );
    let slow = slow.join().unwrap();
    assert_eq!(slow.body["result"], json!(1), "{:?}", slow.body);
    assert_eq!(slow.body["version"], json!(v1));

    // The next deploy collects it; the newest two remain, the active one among them.
    repo.commit(&[("v.py", "def get(wait=0):\n    return 5\n")]);
    let v5 = d.sync("caro");
    assert!(!dir(&v1).exists());
    assert!(dir(&versions[3]).is_dir() && dir(&v5).is_dir());
    let auth = format!("Bearer {token}");
    let list = falra_tests::http(
        "GET",
        &format!("{}/v1/versions", d.url),
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(
        list.body["versions"].as_array().unwrap().len(),
        2,
        "{:?}",
        list.body
    );
    let a = d.admin(
        "POST",
        "/tenants/caro/rollback",
        Some(json!({"version": v1})),
    );
    assert_eq!(a.status, 404, "{:?}", a.body);
}

/// Writes `sql` into the daemon's store behind its back, as a manual edit or an older build
/// might have (SQLite in WAL mode takes a second writer).
fn edit_store(d: &Daemon, sql: &str) {
    let script = "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1], timeout=10)\nc.execute(sys.argv[2])\nc.commit()\n";
    let status = std::process::Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(d.data_dir.join("falra.db"))
        .arg(sql)
        .status()
        .unwrap();
    assert!(status.success(), "{sql}");
}

#[test]
fn a_tenant_whose_stored_uid_is_missing_or_invalid_never_runs() {
    let d = Daemon::start();
    let repo =
        GitRepo::with_files(&[("who.py", "import os\ndef uid():\n    return os.getuid()\n")]);
    let token = d.tenant("caro", &repo);
    let uid = d.admin("GET", "/tenants/caro", None).body["uid"].clone();
    let call = || d.call(json!({"token": token, "fn": "who.uid"}));
    assert_eq!(call().body["result"], uid);
    for (bad, reason) in [
        ("NULL", "no uid"),
        ("0", "uid 0 is outside"),
        ("4294967295", "uid 4294967295 is outside"),
        ("-1", "uid -1 is outside"),
    ] {
        edit_store(
            &d,
            &format!("UPDATE tenants SET uid = {bad} WHERE name = 'caro'"),
        );
        // No call runs, as root or as anyone: the row is refused, and named.
        let r = call();
        assert_eq!(r.status, 500, "{bad}: {:?}", r.body);
        assert_eq!(r.body["error"]["code"], json!("internal"));
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("\"caro\"") && message.contains(reason),
            "{bad}: {message}"
        );
        assert!(r.body.get("result").is_none());
        // Operators see the same on the tenant itself; the daemon keeps serving.
        let shown = d.admin("GET", "/tenants/caro", None);
        assert_eq!(shown.status, 500);
        assert!(shown.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(reason));
        assert_eq!(d.admin("GET", "/plans", None).status, 200);
    }
    // Put right, it runs again as its own uid.
    edit_store(
        &d,
        &format!("UPDATE tenants SET uid = {uid} WHERE name = 'caro'"),
    );
    assert_eq!(call().body["result"], uid);
}

/// A second daemon on a data directory a live daemon holds refuses to start, naming the holder,
/// and leaves the first one serving; once the holder is gone (even by `kill -9`) the directory
/// can be served again.
#[test]
fn a_second_daemon_on_a_held_data_directory_refuses_to_start() {
    let mut first = Daemon::start();
    let second = std::process::Command::new(falra_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&first.data_dir)
        .env("FALRA_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_with_deadline(second, std::time::Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second daemon started: {stderr}");
    assert!(
        stderr.contains(&format!("another falra daemon (pid {})", first.pid())),
        "{stderr}"
    );
    assert!(stderr.contains("--data-dir"), "{stderr}");
    // The first one was not disturbed.
    assert!(first.is_alive());
    assert_eq!(first.admin("GET", "/tenants", None).status, 200);

    // Killed outright: the kernel drops its lock, and a new daemon takes the directory.
    first.kill();
    let mut third = std::process::Command::new(falra_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--sandbox",
            "off",
            "--data-dir",
        ])
        .arg(&first.data_dir)
        .env("FALRA_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = third.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut log = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut log);
        let _ = tx.send(log);
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut listening = false;
    while std::time::Instant::now() < deadline {
        if third.try_wait().unwrap().is_some() {
            break;
        }
        let lock = std::fs::read_to_string(first.data_dir.join("falra.lock")).unwrap_or_default();
        if lock.trim() == third.id().to_string() {
            listening = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let _ = third.kill();
    let _ = third.wait();
    let log = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap_or_default();
    assert!(listening, "the directory was not taken over: {log}");
}

fn wait_with_deadline(
    mut child: std::process::Child,
    limit: std::time::Duration,
) -> std::process::Output {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}
