//! Background jobs across the nodes of one PostgreSQL store on loopback: a cancel reaches the
//! node that runs the job, an idempotency key holds across nodes, a cron tick makes one job.
//! (A node's death and a cut link, with each node a host of its own, are in `hosts.rs`.)

use std::collections::HashMap;
use std::time::Duration;

use falra_tests::{eventually, postgres_database, Daemon, GitRepo};
use serde_json::json;

use crate::jobs::{descendants, job, submit, wait_end, WORK};
use crate::schedules::{scheduled_jobs, tick_of};

/// `n` nodes on one fresh database and key, each run with `extra`.
fn nodes(n: usize, extra: &[&str]) -> (Vec<Daemon>, tempfile::TempDir) {
    let url = postgres_database();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("cluster.key");
    let envs = [
        ("FALRA_DATABASE_URL", url.as_str()),
        ("FALRA_SECRET_KEY_FILE", key.to_str().unwrap()),
    ];
    let started = (0..n).map(|_| Daemon::start_node(&envs, extra)).collect();
    (started, keys)
}

#[test]
fn a_job_cancelled_through_one_node_stops_on_the_node_running_it_within_a_second() {
    let (nodes, _keys) = nodes(2, &["--no-prewarm"]);
    let repo = GitRepo::with_files(&[("work.py", WORK)]);
    nodes[0].tenant("caro", &repo);
    let token = nodes[0].token("caro", &["jobs"]);
    let ids: HashMap<String, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, d)| (d.node_id(), i))
        .collect();

    let a = submit(&nodes[0], &token, json!({"fn": "work.forever"}), &[]);
    let id = a.body["job_id"].as_str().unwrap().to_owned();
    let runner = std::cell::Cell::new(None);
    eventually("the job running", Duration::from_secs(30), || {
        let j = job(&nodes[0], &token, &id);
        runner.set(j["node"].as_str().and_then(|n| ids.get(n).copied()));
        let pid = runner.get().map(|i| nodes[i].pid());
        j["status"] == "running" && pid.is_some_and(|p| !descendants(p).is_empty())
    });
    let runs = runner.get().expect("a node runs the job");
    let other = 1 - runs;
    let cancelled = nodes[other].with_token("DELETE", &format!("/v1/jobs/{id}"), &token, None);
    assert_eq!(cancelled.status, 200, "{:?}", cancelled.body);
    assert_eq!(cancelled.body["status"], "cancelled");
    eventually(
        "the job's processes gone on the node running it",
        Duration::from_secs(1),
        || descendants(nodes[runs].pid()).is_empty(),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(job(&nodes[1], &token, &id)["status"], "cancelled");
}

#[test]
fn a_job_submitted_twice_with_one_key_through_two_nodes_is_one_job() {
    let (nodes, _keys) = nodes(2, &[]);
    let repo = GitRepo::with_files(&[("work.py", WORK)]);
    nodes[0].tenant("caro", &repo);
    let token = nodes[0].token("caro", &["jobs"]);
    let body = json!({"fn": "work.add", "int_a": 20, "int_b": 22});
    let first = submit(
        &nodes[0],
        &token,
        body.clone(),
        &[("Idempotency-Key", "k1")],
    );
    let second = submit(&nodes[1], &token, body, &[("Idempotency-Key", "k1")]);
    assert_eq!((first.status, second.status), (202, 200));
    assert_eq!(first.body["job_id"], second.body["job_id"]);
    let j = wait_end(
        &nodes[1],
        &token,
        first.body["job_id"].as_str().unwrap(),
        Duration::from_secs(30),
    );
    assert_eq!(j["result"], 42, "{j:?}");
}

#[test]
fn one_cron_tick_makes_one_job_across_three_nodes() {
    let (nodes, _keys) = nodes(3, &[]);
    let repo = GitRepo::with_files(&[("work.py", WORK)]);
    nodes[0].tenant("caro", &repo);
    let token = nodes[0].token("caro", &["jobs"]);
    let created = nodes[1].with_token(
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
    let id = created.body["schedule_id"].as_str().unwrap().to_owned();
    // Every node looks twice a second for due schedules; over six seconds each tick is taken by
    // exactly one of them.
    std::thread::sleep(Duration::from_secs(6));
    let paused = nodes[2].with_token("POST", &format!("/v1/schedules/{id}/pause"), &token, None);
    assert_eq!(paused.status, 200, "{:?}", paused.body);
    std::thread::sleep(Duration::from_millis(800));
    let made = scheduled_jobs(&nodes[0], &token, &id);
    let mut ticks: Vec<i64> = made.iter().map(tick_of).collect();
    ticks.sort_unstable();
    let n = ticks.len();
    ticks.dedup();
    assert_eq!(ticks.len(), n, "a tick made two jobs: {ticks:?}");
    assert!(n >= 4, "only {n} ticks made jobs in six seconds: {ticks:?}");
    assert!(ticks.windows(2).all(|w| w[1] - w[0] >= 1000), "{ticks:?}");
    // And every one of them ran once.
    for j in &made {
        let done = wait_end(
            &nodes[0],
            &token,
            j["job_id"].as_str().unwrap(),
            Duration::from_secs(30),
        );
        assert_eq!(done["status"], "succeeded", "{done:?}");
        assert_eq!(done["attempts"], 1);
    }
}
