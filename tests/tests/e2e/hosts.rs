//! Three `falra` nodes as separate hosts: each in a network namespace of its own with its own
//! address on a bridge the test makes, PostgreSQL (a cluster of the test's own) listening on
//! that bridge, and the client talking to all three over it.

use std::time::{Duration, Instant};

use falra_tests::hosts::{Hosts, PgCluster};
use falra_tests::{eventually, Daemon, GitRepo};
use serde_json::{json, Value};

use crate::jobs::{descendants, job, submit, wait_end, WORK};
use crate::schedules::{scheduled_jobs, tick_of};

/// A cluster of `n` hosts: their namespaces, the database on the bridge, the key, the nodes.
struct Cluster {
    nodes: Vec<Daemon>,
    pg: PgCluster,
    _keys: tempfile::TempDir,
    hosts: Hosts,
}

fn cluster(n: usize, extra: &[&str]) -> Cluster {
    let hosts = Hosts::new(n);
    let pg = PgCluster::start(&hosts.gateway(), &hosts.network());
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("cluster.key");
    let url = pg.url(&hosts.gateway());
    let envs = [
        ("FALRA_DATABASE_URL", url.as_str()),
        ("FALRA_SECRET_KEY_FILE", key.to_str().unwrap()),
    ];
    let nodes = (0..n)
        .map(|i| {
            let wrapper = hosts.wrapper(i);
            let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
            let d = Daemon::start_host(&wrapper, &format!("{}:0", hosts.addr(i)), &envs, extra);
            assert!(
                d.url.contains(&hosts.addr(i)),
                "{} listens on {}",
                d.url,
                hosts.addr(i)
            );
            d
        })
        .collect();
    Cluster {
        nodes,
        pg,
        _keys: keys,
        hosts,
    }
}

fn call(d: &Daemon, token: &str, body: Value) -> falra_tests::Answer {
    d.with_token("POST", "/v1/call", token, Some(body.to_string().as_bytes()))
}

#[test]
fn three_hosts_on_one_postgres_behave_as_one_service() {
    // (No children started ahead: a job's processes are then all a host's children.)
    let mut c = cluster(
        3,
        &[
            "--job-lease-ms",
            "1500",
            "--job-workers",
            "2",
            "--no-prewarm",
        ],
    );
    let repo = GitRepo::with_files(&[("work.py", WORK)]);

    // A deploy through the first host is served by the other two.
    let version = {
        let token = c.nodes[0].tenant("caro", &repo);
        let add = json!({"fn": "work.add", "int_a": 2, "int_b": 3});
        let on_a = call(&c.nodes[0], &token, add.clone());
        assert_eq!(on_a.status, 200, "{:?}", on_a.body);
        for d in &c.nodes[1..] {
            let a = call(d, &token, add.clone());
            assert_eq!(a.status, 200, "{:?} {}", a.body, d.log());
            assert_eq!(a.body["result"], 5);
            assert_eq!(a.body["version"], on_a.body["version"]);
        }
        on_a.body["version"].clone()
    };
    assert!(version.is_string());

    // A token revoked through one host is refused by every host within a second.
    let token = c.nodes[2].token("caro", &["call", "jobs"]);
    let add = json!({"fn": "work.add", "int_a": 1, "int_b": 1});
    for d in &c.nodes {
        assert_eq!(call(d, &token, add.clone()).status, 200);
    }
    let tokens = c.nodes[1].admin("GET", "/tenants/caro/tokens", None);
    let id = tokens.body["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["prefix"].as_str().is_some_and(|p| token.starts_with(p)))
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .unwrap();
    assert_eq!(
        c.nodes[1]
            .admin("DELETE", &format!("/tokens/{id}"), None)
            .status,
        200
    );
    let revoked = Instant::now();
    for d in &c.nodes {
        eventually(
            "the revocation on every host",
            Duration::from_secs(1),
            || call(d, &token, add.clone()).status == 401,
        );
    }
    assert!(revoked.elapsed() < Duration::from_secs(2));

    // Jobs: a host killed outright with running and queued jobs loses none of them.
    let token = c.nodes[0].token("caro", &["jobs"]);
    let victim = c.nodes[0].node_id();
    let mut ids = Vec::new();
    for i in 0..8 {
        let a = submit(
            &c.nodes[i % 3],
            &token,
            json!({"fn": "work.slow", "n": 4, "pause": 0.5}),
            &[],
        );
        assert_eq!(a.status, 202, "{:?}", a.body);
        ids.push(a.body["job_id"].as_str().unwrap().to_owned());
    }
    let on_victim = std::cell::RefCell::new(Vec::new());
    eventually(
        "the first host running jobs",
        Duration::from_secs(30),
        || {
            *on_victim.borrow_mut() = ids
                .iter()
                .filter(|id| {
                    let j = job(&c.nodes[1], &token, id);
                    j["status"] == "running" && j["node"] == victim.as_str()
                })
                .cloned()
                .collect();
            !on_victim.borrow().is_empty()
        },
    );
    c.nodes[0].kill();
    for id in &ids {
        let j = wait_end(&c.nodes[1], &token, id, Duration::from_secs(60));
        assert_eq!(j["status"], "succeeded", "{id}: {j:?}");
        assert_ne!(j["node"], victim.as_str());
        if on_victim.borrow().contains(id) {
            assert!(j["attempts"].as_i64().unwrap() >= 2, "{j:?}");
        }
    }

    // A host cut off from the network (its link down) stops claiming; its leases are rescued
    // by the host left, and once it is back its late end of the job is fenced off.
    let (cut, left) = (1, 2);
    let cut_id = c.nodes[cut].node_id();
    let left_id = c.nodes[left].node_id();
    let mut long = Vec::new();
    for _ in 0..4 {
        let a = submit(
            &c.nodes[left],
            &token,
            json!({"fn": "work.slow", "n": 8, "pause": 0.5}),
            &[],
        );
        long.push(a.body["job_id"].as_str().unwrap().to_owned());
    }
    let on_cut = std::cell::RefCell::new(Vec::new());
    eventually(
        "the host to cut running a job",
        Duration::from_secs(30),
        || {
            *on_cut.borrow_mut() = long
                .iter()
                .filter(|id| {
                    let j = job(&c.nodes[left], &token, id);
                    j["status"] == "running" && j["node"] == cut_id.as_str()
                })
                .cloned()
                .collect();
            !on_cut.borrow().is_empty()
        },
    );
    c.hosts.link_down(cut);
    for id in &long {
        let j = wait_end(&c.nodes[left], &token, id, Duration::from_secs(60));
        assert_eq!(j["status"], "succeeded", "{id}: {j:?}");
        assert_eq!(j["node"], left_id.as_str(), "{j:?}");
    }
    c.hosts.link_up(cut);
    eventually(
        "the cut host healthy again",
        Duration::from_secs(30),
        || c.nodes[cut].http_get("/healthz").status == 200,
    );
    std::thread::sleep(Duration::from_secs(2));
    for id in on_cut.borrow().iter() {
        let j = job(&c.nodes[cut], &token, id);
        assert_eq!(
            j["node"],
            left_id.as_str(),
            "the cut host overwrote a rescued job: {j:?}"
        );
        assert!(j["attempts"].as_i64().unwrap() >= 2, "{j:?}");
    }

    // A cancel through one host stops the job on the host that runs it.
    let a = submit(&c.nodes[cut], &token, json!({"fn": "work.forever"}), &[]);
    let id = a.body["job_id"].as_str().unwrap().to_owned();
    let runner = std::cell::Cell::new(None);
    eventually("the job running", Duration::from_secs(30), || {
        let j = job(&c.nodes[left], &token, &id);
        runner.set(match j["node"].as_str() {
            Some(n) if n == cut_id => Some(cut),
            Some(n) if n == left_id => Some(left),
            _ => None,
        });
        j["status"] == "running"
            && runner
                .get()
                .is_some_and(|r| !descendants(c.nodes[r].pid()).is_empty())
    });
    let runs = runner.get().unwrap();
    let other = if runs == cut { left } else { cut };
    let cancelled = c.nodes[other].with_token("DELETE", &format!("/v1/jobs/{id}"), &token, None);
    assert_eq!(
        cancelled.body["status"], "cancelled",
        "{:?}",
        cancelled.body
    );
    eventually("the job's processes gone", Duration::from_secs(1), || {
        descendants(c.nodes[runs].pid()).is_empty()
    });

    // A schedule ticking every second on the two hosts left: each tick makes one job.
    let created = c.nodes[cut].with_token(
        "POST",
        "/v1/schedules",
        &token,
        Some(
            json!({"cron": "* * * * * *", "body": {"fn": "work.add", "int_a": 1, "int_b": 1}})
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(created.status, 201, "{:?}", created.body);
    let schedule = created.body["schedule_id"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_secs(4));
    let paused = c.nodes[left].with_token(
        "POST",
        &format!("/v1/schedules/{schedule}/pause"),
        &token,
        None,
    );
    assert_eq!(paused.status, 200, "{:?}", paused.body);
    std::thread::sleep(Duration::from_millis(800));
    let mut ticks: Vec<i64> = scheduled_jobs(&c.nodes[left], &token, &schedule)
        .iter()
        .map(tick_of)
        .collect();
    let n = ticks.len();
    ticks.sort_unstable();
    ticks.dedup();
    assert_eq!(ticks.len(), n, "a tick made two jobs");
    assert!(n >= 2, "only {n} ticks in four seconds");
    drop(c.pg);
}

#[test]
fn a_postgres_restart_mid_load_loses_no_job_and_answers_no_server_error() {
    let c = cluster(2, &["--job-lease-ms", "1500"]);
    let repo = GitRepo::with_files(&[("work.py", WORK)]);
    c.nodes[0].tenant("caro", &repo);
    // Room for the calls beside the jobs (which take the tenant's slots as calls do).
    let set = c.nodes[0].admin(
        "PUT",
        "/tenants/caro/policy",
        Some(json!({"max_concurrency": 32})),
    );
    assert_eq!(set.status, 200, "{:?}", set.body);
    let token = c.nodes[0].token("caro", &["call", "jobs"]);
    let mut ids = Vec::new();
    for i in 0..12 {
        let a = submit(
            &c.nodes[i % 2],
            &token,
            json!({"fn": "work.slow", "n": 2, "pause": 0.5}),
            &[],
        );
        assert_eq!(a.status, 202, "{:?}", a.body);
        ids.push(a.body["job_id"].as_str().unwrap().to_owned());
    }
    // Calls to both hosts all along, while the database stops and comes back.
    let urls: Vec<String> = c.nodes.iter().map(|d| d.url.clone()).collect();
    let caller = {
        let token = token.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut statuses = Vec::new();
            let mut i = 0;
            while started.elapsed() < Duration::from_secs(8) {
                let auth = format!("Bearer {token}");
                let a = falra_tests::http(
                    "POST",
                    &format!("{}/v1/call", urls[i % urls.len()]),
                    &[("Authorization", &auth)],
                    Some(
                        json!({"fn": "work.add", "int_a": 1, "int_b": 2})
                            .to_string()
                            .as_bytes(),
                    ),
                );
                statuses.push((a.status, a.body["error"]["code"].clone()));
                i += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            statuses
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    c.pg.stop();
    std::thread::sleep(Duration::from_secs(2));
    c.pg.start_again();
    let statuses = caller.join().unwrap();
    assert!(statuses.iter().any(|(s, _)| *s == 200), "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|(s, code)| *s == 200 || (*s == 503 && code == "overloaded")),
        "{statuses:?}"
    );
    for d in &c.nodes {
        eventually("the host healthy again", Duration::from_secs(30), || {
            d.http_get("/healthz").status == 200
        });
    }
    for id in &ids {
        let j = wait_end(&c.nodes[1], &token, id, Duration::from_secs(90));
        assert_eq!(j["status"], "succeeded", "{id}: {j:?}");
        assert_eq!(j["result"], 4);
    }
    let listed = c.nodes[0].with_token("GET", "/v1/jobs?limit=50&status=succeeded", &token, None);
    assert_eq!(listed.body["jobs"].as_array().unwrap().len(), 12);
}

#[test]
fn max_concurrency_and_calls_per_minute_hold_across_three_hosts() {
    let c = cluster(3, &[]);
    let repo = GitRepo::with_files(&[("work.py", WORK)]);
    let token = c.nodes[0].tenant("caro", &repo);
    let add = json!({"fn": "work.add", "int_a": 1, "int_b": 1});
    // Every host has made the version before anything is counted.
    for d in &c.nodes {
        assert_eq!(call(d, &token, add.clone()).status, 200);
    }
    let set = c.nodes[0].admin(
        "PUT",
        "/tenants/caro/policy",
        Some(json!({"max_concurrency": 2})),
    );
    assert_eq!(set.status, 200, "{:?}", set.body);
    std::thread::sleep(Duration::from_millis(1200));

    // Six calls at once, two on each host: two run, four are refused, whichever host.
    let slow = json!({"fn": "work.slow", "n": 4, "pause": 0.5});
    let run_at_once = |n: usize| -> Vec<falra_tests::Answer> {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (url, token, body) = (c.nodes[i % 3].url.clone(), token.clone(), slow.clone());
                std::thread::spawn(move || {
                    let auth = format!("Bearer {token}");
                    falra_tests::http(
                        "POST",
                        &format!("{url}/v1/call"),
                        &[("Authorization", &auth)],
                        Some(body.to_string().as_bytes()),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    };
    let answers = run_at_once(6);
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let limited = answers
        .iter()
        .filter(|a| a.status == 429 && a.body["error"]["code"] == "concurrency_limited")
        .count();
    assert_eq!((ok, limited), (2, 4), "{answers:?}");
    // Their slots are given back as they end: two more run.
    std::thread::sleep(Duration::from_millis(300));
    let again = run_at_once(2);
    assert!(again.iter().all(|a| a.status == 200), "{again:?}");

    // calls_per_minute: over one calendar minute, the cluster admits the limit and no more
    // (a tenant of its own, whose minute has counted nothing yet).
    let jc = c.nodes[1].tenant("jc", &repo);
    let set = c.nodes[1].admin(
        "PUT",
        "/tenants/jc/policy",
        Some(json!({"calls_per_minute": 6})),
    );
    assert_eq!(set.status, 200, "{:?}", set.body);
    std::thread::sleep(Duration::from_millis(1200));
    let into_minute = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            % 60
    };
    if into_minute() > 40 {
        std::thread::sleep(Duration::from_secs(61 - into_minute()));
    }
    let answers: Vec<_> = (0..12)
        .map(|i| call(&c.nodes[i % 3], &jc, add.clone()))
        .collect();
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let limited = answers
        .iter()
        .filter(|a| a.status == 429 && a.body["error"]["code"] == "rate_limited")
        .count();
    assert_eq!((ok, limited), (6, 6), "{answers:?}");
}
