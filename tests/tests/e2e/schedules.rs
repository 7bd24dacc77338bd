//! Schedules (jobs on a cron schedule) and completion callbacks on one node.

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use falra_tests::{eventually, Daemon};
use serde_json::{json, Value};

use crate::jobs::{job, setup, wait_end};

/// A request the receiver got: its headers (lower-cased names) and body.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A real HTTP server on loopback that records every request and answers the statuses given
/// in turn (the last one from then on).
pub struct Receiver {
    pub url: String,
    pub got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub fn start(statuses: &[u16]) -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let (record, statuses) = (Arc::clone(&got), statuses.to_vec());
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().take(64).enumerate() {
                let Ok(mut stream) = stream else { continue };
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut headers = Vec::new();
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.trim_end().split_once(':') {
                        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                    }
                }
                let length = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .and_then(|(_, v)| v.parse::<usize>().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; length.min(1 << 20)];
                let _ = reader.read_exact(&mut body);
                record.lock().unwrap().push(Received { headers, body });
                let status = statuses[n.min(statuses.len() - 1)];
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Receiver { url, got }
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

fn schedules(
    d: &Daemon,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> falra_tests::Answer {
    let bytes = body.map(|b| b.to_string().into_bytes());
    d.with_token(
        method,
        &format!("/v1/schedules{path}"),
        token,
        bytes.as_deref(),
    )
}

/// The jobs of the tenant that a schedule made, oldest first.
pub fn scheduled_jobs(d: &Daemon, token: &str, schedule: &str) -> Vec<Value> {
    let page = d.with_token("GET", "/v1/jobs?limit=200", token, None);
    let mut jobs: Vec<Value> = page.body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| {
            j["idempotency_key"]
                .as_str()
                .is_some_and(|k| k.starts_with(&format!("schedule:{schedule}:")))
        })
        .cloned()
        .collect();
    jobs.reverse();
    jobs
}

/// The tick (epoch ms) a scheduled job was made for.
pub fn tick_of(job: &Value) -> i64 {
    job["idempotency_key"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_schedule_makes_a_job_each_tick_and_pauses_resumes_and_goes() {
    let (d, token) = setup(&[]);
    let created = schedules(
        &d,
        &token,
        "POST",
        "",
        Some(json!({"cron": "* * * * * *", "body": {"fn": "work.add", "int_a": 2, "int_b": 5}})),
    );
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.body["schedule_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("s_"), "{id}");
    assert_eq!(created.body["paused"], false);
    assert!(created.body["next_at"].is_string());

    eventually("three ticks made jobs", Duration::from_secs(15), || {
        scheduled_jobs(&d, &token, &id).len() >= 3
    });
    let made = scheduled_jobs(&d, &token, &id);
    let ticks: Vec<i64> = made.iter().map(tick_of).collect();
    assert!(
        ticks.windows(2).all(|w| w[1] > w[0] && w[1] % 1000 == 0),
        "{ticks:?}"
    );
    let first = wait_end(
        &d,
        &token,
        made[0]["job_id"].as_str().unwrap(),
        Duration::from_secs(20),
    );
    assert_eq!(first["result"], 7, "{first:?}");
    let shown = schedules(&d, &token, "GET", &format!("/{id}"), None);
    assert!(shown.body["last_job_id"].is_string(), "{:?}", shown.body);

    // Paused: no more jobs.
    let paused = schedules(&d, &token, "POST", &format!("/{id}/pause"), None);
    assert_eq!(paused.body["paused"], true, "{:?}", paused.body);
    std::thread::sleep(Duration::from_millis(700));
    let at_pause = scheduled_jobs(&d, &token, &id).len();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(scheduled_jobs(&d, &token, &id).len(), at_pause);
    // Resumed: they come again.
    let resumed = schedules(&d, &token, "POST", &format!("/{id}/resume"), None);
    assert_eq!(resumed.body["paused"], false);
    eventually("ticks after the resume", Duration::from_secs(10), || {
        scheduled_jobs(&d, &token, &id).len() > at_pause
    });
    let listed = schedules(&d, &token, "GET", "", None);
    assert_eq!(listed.body["schedules"].as_array().unwrap().len(), 1);

    let removed = schedules(&d, &token, "DELETE", &format!("/{id}"), None);
    assert_eq!(removed.status, 200, "{:?}", removed.body);
    assert_eq!(
        schedules(&d, &token, "GET", &format!("/{id}"), None).status,
        404
    );
    std::thread::sleep(Duration::from_millis(700));
    let at_removal = scheduled_jobs(&d, &token, &id).len();
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(scheduled_jobs(&d, &token, &id).len(), at_removal);
}

#[test]
fn bad_schedules_are_refused_naming_the_field() {
    let (d, token) = setup(&[]);
    for (body, field) in [
        (
            json!({"cron": "every day", "body": {"fn": "work.add"}}),
            "cron",
        ),
        (
            json!({"cron": "61 * * * *", "body": {"fn": "work.add"}}),
            "cron",
        ),
        (
            json!({"cron": "* * * * *", "body": {"int_a": 1}}),
            "body.fn",
        ),
        (
            json!({"cron": "* * * * *", "body": {"fn": "work.add", "token": "x"}}),
            "body.token",
        ),
        (
            json!({"cron": "* * * * *", "body": {"fn": "work.add"}, "version": "../x"}),
            "version",
        ),
    ] {
        let a = schedules(&d, &token, "POST", "", Some(body.clone()));
        assert_eq!(a.status, 400, "{body}: {:?}", a.body);
        assert_eq!(
            a.body["error"]["detail"]["field"], field,
            "{body}: {:?}",
            a.body
        );
    }
    let a = schedules(&d, &token, "POST", "", Some(json!({"cron": "* * * * *"})));
    assert_eq!(a.status, 400, "{:?}", a.body);
    let call_only = d.token("caro", &["call"]);
    let a = schedules(&d, &call_only, "GET", "", None);
    assert_eq!(a.status, 403, "{:?}", a.body);
    let a = schedules(&d, &token, "POST", "/s_0000000000000000/pause", None);
    assert_eq!(a.status, 404, "{:?}", a.body);
}

#[test]
fn a_callback_is_signed_retried_and_delivered_once_the_job_ends() {
    let (d, token) = setup(&["--egress-allow-net", "127.0.0.0/8"]);
    let receiver = Receiver::start(&[500, 200]);
    // No webhook secret yet: nothing to sign with, so refused.
    let url = format!("/v1/jobs?callback_url={}", receiver.url.replace(':', "%3A"));
    let auth = format!("Bearer {token}");
    let body = json!({"fn": "work.add", "int_a": 40, "int_b": 2}).to_string();
    let refused = d.post(&url, &[("Authorization", &auth)], body.as_bytes());
    assert_eq!(refused.status, 400, "{:?}", refused.body);
    assert_eq!(refused.body["error"]["detail"]["parameter"], "callback_url");
    let set = d.admin(
        "PATCH",
        "/tenants/caro",
        Some(json!({"webhook_secret": "cb-secret"})),
    );
    assert_eq!(set.status, 200, "{:?}", set.body);
    let bad = d.post(
        "/v1/jobs?callback_url=ftp%3A%2F%2Fx",
        &[("Authorization", &auth)],
        body.as_bytes(),
    );
    assert_eq!(bad.status, 400, "{:?}", bad.body);

    let a = d.post(&url, &[("Authorization", &auth)], body.as_bytes());
    assert_eq!(a.status, 202, "{:?}", a.body);
    let id = a.body["job_id"].as_str().unwrap().to_owned();
    assert_eq!(
        wait_end(&d, &token, &id, Duration::from_secs(20))["result"],
        42
    );
    // The first delivery is answered 500; the next, 2 s later, 200.
    eventually("the callback delivered", Duration::from_secs(20), || {
        job(&d, &token, &id)["callback"]["state"] == "delivered"
    });
    let j = job(&d, &token, &id);
    assert_eq!(j["callback"]["attempts"], 2, "{j:?}");
    let got = receiver.received();
    assert_eq!(got.len(), 2, "{got:?}");
    for r in &got {
        assert_eq!(r.header("x-falra-job-id"), Some(id.as_str()));
        let expected = format!(
            "sha256={}",
            hex::encode(falra_policies::webhook::hmac_sha256(b"cb-secret", &r.body))
        );
        assert_eq!(r.header("x-falra-signature-256"), Some(expected.as_str()));
        let sent: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(sent["job_id"], id.as_str());
        assert_eq!(sent["status"], "succeeded");
        assert_eq!(sent["result"], 42);
    }
    assert_eq!(got[1].header("x-falra-delivery"), Some("2"));
}

#[test]
fn a_callback_to_a_loopback_address_is_refused_by_the_egress_rule() {
    let (d, token) = setup(&[]);
    let receiver = Receiver::start(&[200]);
    let set = d.admin(
        "PATCH",
        "/tenants/caro",
        Some(json!({"webhook_secret": "cb-secret"})),
    );
    assert_eq!(set.status, 200, "{:?}", set.body);
    let auth = format!("Bearer {token}");
    let url = format!("/v1/jobs?callback_url={}", receiver.url.replace(':', "%3A"));
    let a = d.post(
        &url,
        &[("Authorization", &auth)],
        json!({"fn": "work.boom"}).to_string().as_bytes(),
    );
    let id = a.body["job_id"].as_str().unwrap().to_owned();
    assert_eq!(
        wait_end(&d, &token, &id, Duration::from_secs(20))["status"],
        "failed"
    );
    eventually("the callback given up", Duration::from_secs(10), || {
        job(&d, &token, &id)["callback"]["state"] == "failed"
    });
    let j = job(&d, &token, &id);
    assert!(
        j["callback"]["error"]
            .as_str()
            .unwrap()
            .contains("not allowed"),
        "{j:?}"
    );
    assert!(receiver.received().is_empty());
}
