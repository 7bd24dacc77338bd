//! Several nodes on one PostgreSQL store: every node sees what any node wrote.

use falra_tests::{eventually, postgres_database, Daemon, GitRepo};
use serde_json::json;

const ADD: &str = "def add(int_a, int_b):\n    return int_a + int_b\n";

/// Two nodes, each with its own data directory, on one fresh database and one sealing key.
fn two_nodes() -> (Daemon, Daemon, tempfile::TempDir) {
    let url = postgres_database();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("cluster.key");
    let key = key.to_str().unwrap();
    let envs = [
        ("FALRA_DATABASE_URL", url.as_str()),
        ("FALRA_SECRET_KEY_FILE", key),
    ];
    let a = Daemon::start_node(&envs, &[]);
    let b = Daemon::start_node(&envs, &[]);
    (a, b, keys)
}

#[test]
fn two_nodes_on_one_postgres_share_tenants_tokens_plans_secrets_and_usage() {
    let (a, b, _keys) = two_nodes();
    let repo = GitRepo::with_files(&[("falra_test_add.py", ADD)]);
    let token = a.tenant("caro", &repo);
    let call = json!({"token": token, "fn": "falra_test_add.add", "int_a": 1, "int_b": 2});
    let answer = a.call(call.clone());
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["result"], 3);

    // The tenant made through A is B's too, with the same uid and version.
    let on_a = a.admin("GET", "/tenants/caro", None);
    let on_b = b.admin("GET", "/tenants/caro", None);
    assert_eq!(on_b.status, 200, "{:?}", on_b.body);
    assert_eq!(on_b.body["uid"], on_a.body["uid"]);
    assert_eq!(on_b.body["active_version"], on_a.body["active_version"]);

    // B has no tree of the version A deployed: its first call makes it from the commit.
    let on_b = b.call(call.clone());
    assert_eq!(on_b.status, 200, "{:?} {}", on_b.body, b.log());
    assert_eq!(on_b.body["result"], 3);
    assert_eq!(on_b.body["version"], on_a.body["active_version"]);

    // An upload through B makes a new version; A serves it, built from the commit and the
    // uploads in the store.
    let auth = format!("Bearer {}", b.admin_token);
    let uploaded = falra_tests::http(
        "PUT",
        &format!("{}/admin/v1/tenants/caro/modules/extra", b.url),
        &[("Authorization", &auth)],
        Some(b"def hi(name):\n    return 'hi ' + name\n"),
    );
    assert_eq!(uploaded.status, 200, "{:?}", uploaded.body);
    // (Within a second: A learns of the new version by notification.)
    let hi = json!({"token": token, "fn": "extra.hi", "name": "a"});
    let started = std::time::Instant::now();
    let on_a_again = loop {
        let answer = a.call(hi.clone());
        if answer.status == 200 || started.elapsed() > std::time::Duration::from_secs(1) {
            break answer;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(on_a_again.status, 200, "{:?} {}", on_a_again.body, a.log());
    assert_eq!(on_a_again.body["result"], "hi a");
    assert_eq!(on_a_again.body["version"], uploaded.body["version"]);

    // A rollback through B holds on A within a second, though A has the tenant in memory.
    let first = on_a.body["active_version"].as_str().unwrap().to_owned();
    let back = b.admin(
        "POST",
        "/tenants/caro/rollback",
        Some(json!({"version": first})),
    );
    assert_eq!(back.status, 200, "{:?}", back.body);
    let started = std::time::Instant::now();
    loop {
        let answer = a.call(call.clone());
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        if answer.body["version"] == first.as_str() {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "A still runs the newer version a second after the rollback"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // A token issued on A authenticates on B; revoked on B, A refuses it within a second.
    let versions = b.with_token("GET", "/v1/versions", &token, None);
    assert_eq!(versions.status, 200, "{:?}", versions.body);
    let tokens = a.admin("GET", "/tenants/caro/tokens", None);
    let id = tokens.body["tokens"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        b.admin("DELETE", &format!("/tokens/{id}"), None).status,
        200
    );
    let started = std::time::Instant::now();
    loop {
        let answer = a.call(call.clone());
        if answer.status == 401 {
            assert_eq!(answer.body["error"]["code"], "token_revoked");
            break;
        }
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "A still takes the token a second after its revocation"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // A plan made on B holds on A within a beat: A's listing has it, and a tenant A puts on it
    // gets its limits.
    let plan = b.admin(
        "PUT",
        "/plans/gold",
        Some(json!({"memory_mb": 384, "cpu_seconds_per_month": 500000})),
    );
    assert_eq!(plan.status, 200, "{:?}", plan.body);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let moved = a.admin("PATCH", "/tenants/caro", Some(json!({"plan": "gold"})));
        if moved.status == 200 {
            assert_eq!(moved.body["policy"]["memory_mb"], 384, "{:?}", moved.body);
            break;
        }
        assert_eq!(moved.status, 400, "{:?}", moved.body);
        assert!(
            std::time::Instant::now() < deadline,
            "A never saw B's plan: {:?}",
            moved.body
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let plans = a.admin("GET", "/plans", None);
    assert!(
        plans.body["plans"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "gold" && p["policy"]["memory_mb"] == 384),
        "{:?}",
        plans.body
    );
    // A secret set on A is listed on B.
    let set = a.admin(
        "PUT",
        "/tenants/caro/secrets/git",
        Some(json!({"value": "ghp_shared"})),
    );
    assert_eq!(set.status, 200, "{:?}", set.body);
    let listed = b.admin("GET", "/tenants/caro/secrets", None);
    assert_eq!(listed.body["secrets"][0]["key"], "git");
    // One exposed to code through A reaches B's next calls within a second (B held the
    // tenant's secrets in memory, and drops them on A's notification).
    let uploaded = falra_tests::http(
        "PUT",
        &format!("{}/admin/v1/tenants/caro/modules/envget", a.url),
        &[("Authorization", &format!("Bearer {}", a.admin_token))],
        Some(b"import os\n\ndef get(name):\n    return os.environ.get(name)\n"),
    );
    assert_eq!(uploaded.status, 200, "{:?}", uploaded.body);
    let fresh = a.token("caro", &["call"]);
    let get = json!({"token": fresh, "fn": "envget.get", "name": "SHARED_KEY"});
    let read = |want: serde_json::Value| {
        let started = std::time::Instant::now();
        loop {
            let answer = b.call(get.clone());
            if answer.body["result"] == want {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "{:?}",
                answer.body
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    read(serde_json::Value::Null);
    let set = a.admin(
        "PUT",
        "/tenants/caro/secrets/SHARED_KEY",
        Some(json!({"value": "across-nodes", "expose": "env"})),
    );
    assert_eq!(set.status, 200, "{:?}", set.body);
    let took = read(json!("across-nodes"));
    assert!(took < std::time::Duration::from_secs(2), "{took:?}");

    // A's call is in the usage B reports (A's meter writes it off the call path).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let usage = b.admin("GET", "/usage?tenant=caro", None);
        assert_eq!(usage.status, 200, "{:?}", usage.body);
        let calls: i64 = usage.body["functions"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter(|r| r["fn"] == "falra_test_add.add")
                    .map(|r| r["calls"].as_i64().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0);
        if calls >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B never saw A's call: {:?}",
            usage.body
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_node_on_a_shared_store_without_the_clusters_key_refuses_to_start() {
    let url = postgres_database();
    let out = std::process::Command::new(falra_tests::falra_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tempfile::tempdir().unwrap().path().join("data"))
        .env("FALRA_DATABASE_URL", &url)
        .env_remove("FALRA_SECRET_KEY")
        .env_remove("FALRA_SECRET_KEY_FILE")
        .env("FALRA_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--secret-key-file"), "{stderr}");
}

#[test]
fn a_database_url_that_cannot_be_reached_is_named_without_its_password() {
    let keys = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let port = falra_tests::free_port();
    let out = std::process::Command::new(falra_tests::falra_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(keys.path().join("data"))
        .env(
            "FALRA_DATABASE_URL",
            format!("postgres://falra:hunter2@127.0.0.1:{port}/falra"),
        )
        .env("FALRA_SECRET_KEY_FILE", keys.path().join("k"))
        .env("FALRA_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("postgres://falra@127.0.0.1:{port}/falra")),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn nodes_list_each_other_and_a_killed_node_is_no_longer_alive() {
    let (a, mut b, _keys) = two_nodes();
    let nodes = a.admin("GET", "/nodes", None);
    assert_eq!(nodes.status, 200, "{:?}", nodes.body);
    let list = nodes.body["nodes"].as_array().unwrap().clone();
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(list.iter().all(|n| n["alive"] == true), "{list:?}");
    assert_eq!(list.iter().filter(|n| n["this"] == true).count(), 1);
    let b_id = b.http_get("/healthz").body["node"]
        .as_str()
        .unwrap()
        .to_owned();
    let b_row = list.iter().find(|n| n["id"] == b_id.as_str()).unwrap();
    assert_eq!(b_row["address"], b.url.trim_start_matches("http://"));

    // Killed outright: its beat stops, and the others list it as gone.
    b.kill();
    eventually(
        "node B listed as gone",
        std::time::Duration::from_secs(30),
        || {
            let list = a.admin("GET", "/nodes", None).body["nodes"].clone();
            list.as_array()
                .unwrap()
                .iter()
                .any(|n| n["id"] == b_id.as_str() && n["alive"] == false)
        },
    );
}

#[test]
fn a_node_cut_off_from_its_store_reports_itself_unhealthy_until_the_link_is_back() {
    let url = postgres_database();
    // The node reaches the database through a link the test can cut.
    let rest = url.split_once("://").unwrap().1;
    let (host_port, db) = rest.split_once('@').unwrap().1.split_once('/').unwrap();
    let relay = falra_tests::Relay::start(host_port.parse().unwrap());
    let user = rest.split_once('@').unwrap().0;
    let through = format!("postgres://{user}@127.0.0.1:{}/{db}", relay.port);
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("k");
    let envs = [
        ("FALRA_DATABASE_URL", through.as_str()),
        ("FALRA_SECRET_KEY_FILE", key.to_str().unwrap()),
    ];
    let node = Daemon::start_node(&envs, &[]);
    assert_eq!(node.http_get("/healthz").status, 200);
    let repo = GitRepo::with_files(&[("falra_test_add.py", ADD)]);
    let token = node.tenant("caro", &repo);
    let call = json!({"token": token, "fn": "falra_test_add.add", "int_a": 1, "int_b": 2});
    // A policy change drops the tenant's row from memory: the next call reads it fresh.
    let set = node.admin(
        "PUT",
        "/tenants/caro/policy",
        Some(json!({"timeout_ms": 20000})),
    );
    assert_eq!(set.status, 200, "{:?}", set.body);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(node.call(call.clone()).status, 200);

    relay.cut();
    let cut_at = std::time::Instant::now();
    // Within the cache's 5 s, a call it can authorise from memory is still answered.
    let during = node.call(call.clone());
    assert!(
        cut_at.elapsed() < std::time::Duration::from_secs(4),
        "{:?}",
        cut_at.elapsed()
    );
    assert_eq!(during.status, 200, "{:?}", during.body);
    eventually(
        "the node reporting itself unhealthy",
        std::time::Duration::from_secs(30),
        || {
            let h = node.http_get("/healthz");
            h.status == 503 && h.body["store"] == "unreachable"
        },
    );
    // What needs the store is answered 503 with a retry hint, never 500; past the cache's
    // age, so are calls.
    let tenants = node.admin("GET", "/tenants", None);
    assert_eq!(tenants.status, 503, "{:?}", tenants.body);
    assert!(tenants.retry_after.is_some(), "{tenants:?}");
    std::thread::sleep(std::time::Duration::from_secs(6).saturating_sub(cut_at.elapsed()));
    let later = node.call(call.clone());
    assert_eq!(later.status, 503, "{:?}", later.body);

    relay.restore();
    eventually(
        "the node healthy again",
        std::time::Duration::from_secs(30),
        || node.http_get("/healthz").status == 200,
    );
    assert_eq!(node.admin("GET", "/tenants", None).status, 200);
    falra_tests::eventually(
        "calls answered again",
        std::time::Duration::from_secs(10),
        || node.call(call.clone()).status == 200,
    );
}

#[test]
fn the_monthly_cpu_quota_counts_every_nodes_calls() {
    let (a, b, _keys) = two_nodes();
    let burn = "import time\n\ndef burn(seconds):\n    t = time.process_time()\n    while time.process_time() - t < seconds:\n        pass\n    return 'burnt'\n\ndef add(int_a, int_b):\n    return int_a + int_b\n";
    let repo = GitRepo::with_files(&[("work.py", burn)]);
    let token = a.tenant("caro", &repo);
    let set = a.admin(
        "PUT",
        "/tenants/caro/policy",
        Some(json!({"cpu_seconds_per_month": 1, "timeout_ms": 20000})),
    );
    assert_eq!(set.status, 200, "{:?}", set.body);
    let add = json!({"token": token, "fn": "work.add", "int_a": 1, "int_b": 2});
    // B knows the tenant's usage (none yet) before A spends the quota.
    let first = b.call(add.clone());
    assert_eq!(first.status, 200, "{:?}", first.body);
    let burnt = a.call(json!({"token": token, "fn": "work.burn", "seconds": 1.5}));
    assert_eq!(burnt.status, 200, "{:?}", burnt.body);
    // A refuses at once (its own count); B within a few seconds (it reads the cluster's).
    assert_eq!(a.call(add.clone()).body["error"]["code"], "quota_exceeded");
    eventually(
        "B refusing the tenant past its quota",
        std::time::Duration::from_secs(15),
        || {
            let answer = b.call(add.clone());
            answer.status == 429 && answer.body["error"]["code"] == "quota_exceeded"
        },
    );
}

#[test]
fn a_node_that_never_fetched_the_repository_deploys_uploads_and_rolls_back() {
    let (a, b, _keys) = two_nodes();
    let repo = GitRepo::with_files(&[("falra_test_add.py", ADD)]);
    let token = a.tenant("caro", &repo);
    let first = a.admin("GET", "/tenants/caro", None).body["active_version"].clone();
    // B has never fetched caro's repository: an upload through it fetches the commit first.
    let auth = format!("Bearer {}", b.admin_token);
    let uploaded = falra_tests::http(
        "PUT",
        &format!("{}/admin/v1/tenants/caro/modules/extra", b.url),
        &[("Authorization", &auth)],
        Some(b"def hi():\n    return 'hi'\n"),
    );
    assert_eq!(uploaded.status, 200, "{:?} {}", uploaded.body, b.log());
    // Back to the first version through B, which has no tree of it (the store decides that the
    // version exists); then forward again through A, which has no tree of the uploaded one.
    let back = b.admin(
        "POST",
        "/tenants/caro/rollback",
        Some(json!({"version": first})),
    );
    assert_eq!(back.status, 200, "{:?}", back.body);
    let add = json!({"token": token, "fn": "falra_test_add.add", "int_a": 2, "int_b": 2});
    // A has the first version's tree and serves it.
    eventually(
        "A serving the first version again",
        std::time::Duration::from_secs(5),
        || a.call(add.clone()).body["version"] == first,
    );
    // B cannot make it: it is built from the uploads as they are now, which changed since.
    // It says so rather than serve another tree under the version's name.
    let on_b = b.call(add);
    assert_eq!(on_b.status, 422, "{:?}", on_b.body);
    assert_eq!(on_b.body["error"]["code"], "sync_failed");
    assert!(
        on_b.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("uploads changed"),
        "{:?}",
        on_b.body
    );
    let forward = a.admin(
        "POST",
        "/tenants/caro/rollback",
        Some(json!({"version": uploaded.body["version"]})),
    );
    assert_eq!(forward.status, 200, "{:?}", forward.body);
    let call = json!({"token": token, "fn": "extra.hi"});
    eventually(
        "A serving the version it rolled forward to without its tree",
        std::time::Duration::from_secs(10),
        || {
            let answer = a.call(call.clone());
            answer.status == 200 && answer.body["result"] == "hi"
        },
    );
}

#[test]
fn the_haproxy_example_spreads_requests_over_the_nodes_and_routes_around_a_dead_one() {
    let haproxy = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .expect("haproxy is missing: scripts/install-deps.sh installs it");
    let (a, mut b, _keys) = two_nodes();
    let repo = GitRepo::with_files(&[("falra_test_add.py", ADD)]);
    let token = a.tenant("caro", &repo);

    // The example as shipped, with this test's addresses in place of its own.
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/haproxy.cfg"),
    )
    .unwrap();
    let port = falra_tests::free_port();
    let mut servers = vec![a.url.clone(), b.url.clone()].into_iter().enumerate();
    let config: String = example
        .lines()
        .filter_map(|line| {
            let t = line.trim_start();
            if t.starts_with("bind ") {
                Some(format!("    bind 127.0.0.1:{port}"))
            } else if t.starts_with("server ") {
                servers.next().map(|(i, url)| {
                    let addr = url.trim_start_matches("http://");
                    format!("    server node{i} {addr} check")
                })
            } else {
                Some(line.to_owned())
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg, config + "\n").unwrap();
    let check = std::process::Command::new(haproxy)
        .arg("-c")
        .arg("-f")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "the example does not check: {check:?}"
    );
    /// The load balancer, stopped (by its pid) when the test ends, however it ends.
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _lb = Stop(
        std::process::Command::new(haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    falra_tests::eventually(
        "the load balancer listening",
        std::time::Duration::from_secs(10),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
    let front = format!("http://127.0.0.1:{port}");
    let health = || falra_tests::http("GET", &format!("{front}/healthz"), &[], None);
    falra_tests::eventually(
        "both nodes in the load balancer",
        std::time::Duration::from_secs(20),
        || {
            let seen: std::collections::HashSet<String> = (0..6)
                .filter_map(|_| health().body["node"].as_str().map(str::to_owned))
                .collect();
            seen.len() == 2
        },
    );
    let auth = format!("Bearer {token}");
    let body = json!({"fn": "falra_test_add.add", "int_a": 1, "int_b": 2}).to_string();
    let six_calls_succeed = || {
        for _ in 0..6 {
            let a = falra_tests::http(
                "POST",
                &format!("{front}/v1/call"),
                &[("Authorization", &auth)],
                Some(body.as_bytes()),
            );
            assert_eq!(a.status, 200, "{:?}", a.body);
        }
    };
    six_calls_succeed();
    // A node killed outright: the load balancer stops sending it anything within its checks.
    let survivor = a.node_id();
    b.kill();
    falra_tests::eventually(
        "the dead node out of the load balancer",
        std::time::Duration::from_secs(20),
        || (0..6).all(|_| health().body["node"] == survivor.as_str()),
    );
    six_calls_succeed();
}

#[test]
fn following_a_tenant_through_one_node_shows_every_node_s_calls_once() {
    let (a, b, _keys) = two_nodes();
    let repo = GitRepo::with_files(&[("falra_test_add.py", ADD)]);
    let token = a.tenant("caro", &repo);
    let follow_url = format!("{}/admin/v1/tenants/caro/calls/follow?seconds=10", a.url);
    let auth = format!("Bearer {}", a.admin_token);
    let reader = std::thread::spawn(move || {
        let response = ureq::get(&follow_url)
            .set("Authorization", &auth)
            .set("Accept", "text/event-stream")
            .call()
            .unwrap();
        let mut ids = Vec::new();
        use std::io::BufRead;
        for line in std::io::BufReader::new(response.into_reader()).lines() {
            let Ok(line) = line else { break };
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let call: serde_json::Value = serde_json::from_str(data.trim()).unwrap();
            // (B's first call makes the version there: its deploy children are metered too.)
            if !call["fn"].as_str().unwrap().starts_with("<deploy:") {
                ids.push(call["call_id"].as_str().unwrap().to_owned());
            }
        }
        ids
    });
    std::thread::sleep(std::time::Duration::from_millis(600));
    let call = json!({"token": token, "fn": "falra_test_add.add", "int_a": 1, "int_b": 2});
    let mut made = Vec::new();
    for i in 0..24 {
        let node = if i % 2 == 0 { &a } else { &b };
        let answer = node.call(call.clone());
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        made.push(answer.body["call_id"].as_str().unwrap().to_owned());
    }
    let mut shown = reader.join().unwrap();
    let count = shown.len();
    shown.sort();
    shown.dedup();
    assert_eq!(shown.len(), count, "each call shown once");
    made.sort();
    assert_eq!(
        shown, made,
        "every node's calls, and only those made while following"
    );
}
