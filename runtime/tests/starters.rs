//! The runtime's one API over real children (no sandbox: plain child processes of this test,
//! running the real runner under the host's interpreter), with each starter behind it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use falra_policies::Policy;
use falra_runtime::prestart::{Fresh, PrestartPool};
use falra_runtime::{
    CallChild, ChildKey, CodeMounts, Runtime, RuntimeConfig, SandboxSettings, Starter,
};
use falra_sandbox::protocol::{interpret, ProtocolRequest, PROTOCOL_VERSION};
use serde_json::{json, Map, Value};

const PYTHON: &str = "/usr/bin/python3";

/// Seconds since this process started, and its pid.
const CODE: &str = r#"
import os

def started_ago():
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/self/stat") as f:
        start = float(f.read().rsplit(")", 1)[1].split()[19]) / ticks
    with open("/proc/uptime") as f:
        up = float(f.read().split()[0])
    return {"ago": up - start, "pid": os.getpid()}

def add(a, b):
    return a + b
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    runner: PathBuf,
    code: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let runner = dir.path().join("runner");
    falra_sandbox::runner::install(Path::new(PYTHON), &runner).unwrap();
    let code = dir.path().join("code");
    std::fs::create_dir(&code).unwrap();
    std::fs::write(code.join("m.py"), CODE).unwrap();
    Fixture {
        _dir: dir,
        runner,
        code,
    }
}

fn runtime(f: &Fixture, starter: Box<dyn Starter>) -> Runtime {
    let config = RuntimeConfig {
        python: PYTHON.into(),
        runner_dir: f.runner.clone(),
        max_result_bytes: 1 << 20,
        max_log_bytes: 1 << 16,
        egress: falra_policies::address::Egress::default(),
        zygote: true,
        preload_zygotes: 4,
        preload_memory_bytes: 1 << 30,
    };
    Runtime::new(config, SandboxSettings::disabled(), starter)
}

fn request(f: &Fixture, version: &str) -> CallChild {
    CallChild {
        key: ChildKey {
            uid: nix_uid(),
            version: version.to_owned(),
            policy: "{}".to_owned(),
        },
        mounts: CodeMounts {
            code: f.code.clone(),
            venv: None,
        },
        policy: Policy::default(),
    }
}

fn nix_uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(0, |m| std::os::unix::fs::MetadataExt::uid(&m))
}

async fn call(rt: &Runtime, req: CallChild, function: &str, kwargs: Value) -> Value {
    let Value::Object(kwargs) = kwargs else {
        panic!("kwargs must be an object")
    };
    let kwargs: Map<String, Value> = kwargs;
    let stdin = ProtocolRequest {
        protocol: PROTOCOL_VERSION,
        call_id: "c_test",
        function,
        kwargs: &kwargs,
        env: &[],
    }
    .encode();
    let child = rt.start_call(req).await.unwrap();
    let ran = child
        .run_to_end(stdin, rt.limits(10_000), ())
        .await
        .unwrap();
    let answer = interpret(&ran.finished, 1 << 20).unwrap_or_else(|f| panic!("{f:?}"));
    serde_json::from_str(answer.get()).unwrap()
}

/// Waits (bounded) until `cond` holds.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_prestart_pool_serves_the_next_call_from_a_child_started_before_it() {
    let f = fixture();
    let rt = runtime(&f, Box::new(PrestartPool::default()));
    assert_eq!(
        call(&rt, request(&f, "v1"), "m.add", json!({"a": 1, "b": 2})).await,
        json!(3)
    );
    // The first call left a child prepared for the same key.
    eventually("a child prepared ahead", || rt.ready_count() == 1).await;
    assert!(rt.holds_version(nix_uid(), "v1"));
    tokio::time::sleep(Duration::from_millis(600)).await;

    let before = Instant::now();
    let first = call(&rt, request(&f, "v1"), "m.started_ago", json!({})).await;
    let waited = before.elapsed().as_secs_f64();
    // Its process was running well before this call began: it was started ahead.
    assert!(
        first["ago"].as_f64().unwrap() > waited + 0.4,
        "{first} after {waited} s"
    );
    // Each call has a process of its own: the next one is another prepared child.
    eventually("the pool refilled", || rt.ready_count() == 1).await;
    let second = call(&rt, request(&f, "v1"), "m.started_ago", json!({})).await;
    assert_ne!(first["pid"], second["pid"]);

    // A deploy of another version stops the children prepared for the old one.
    eventually("the pool refilled", || rt.ready_count() == 1).await;
    rt.forget_other_versions(nix_uid(), "v2");
    assert!(!rt.holds_version(nix_uid(), "v1"));
    assert_eq!(rt.ready_count(), 0);

    // A child prepared for one key never serves another (here: a changed policy).
    assert_eq!(
        call(&rt, request(&f, "v2"), "m.add", json!({"a": 1, "b": 1})).await,
        json!(2)
    );
    eventually("a child for v2", || rt.holds_version(nix_uid(), "v2")).await;
    let mut other = request(&f, "v2");
    other.key.policy = r#"{"changed":true}"#.to_owned();
    assert_eq!(
        call(&rt, other, "m.add", json!({"a": 2, "b": 2})).await,
        json!(4)
    );
    eventually("one child per key", || rt.ready_count() == 2).await;

    rt.forget_tenant(nix_uid());
    assert_eq!(rt.ready_count(), 0);
    rt.drain();
}

#[tokio::test]
async fn the_fresh_starter_starts_each_child_when_its_call_comes_and_keeps_none() {
    let f = fixture();
    let rt = runtime(&f, Box::new(Fresh));
    assert_eq!(
        call(&rt, request(&f, "v1"), "m.add", json!({"a": 40, "b": 2})).await,
        json!(42)
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rt.ready_count(), 0);
    assert!(!rt.holds_version(nix_uid(), "v1"));
    let a = call(&rt, request(&f, "v1"), "m.started_ago", json!({})).await;
    let b = call(&rt, request(&f, "v1"), "m.started_ago", json!({})).await;
    assert_ne!(a["pid"], b["pid"]);
}

#[tokio::test]
async fn a_childs_usage_and_limits_come_back_with_it() {
    let f = fixture();
    let rt = runtime(&f, Box::new(Fresh));
    let stdin = ProtocolRequest {
        protocol: PROTOCOL_VERSION,
        call_id: "c_slow",
        function: "m.add",
        kwargs: &Map::new(),
        env: &[],
    }
    .encode();
    // A missing argument is the function's error, answered by the runner, not a run error.
    let child = rt.start_call(request(&f, "v1")).await.unwrap();
    let ran = child
        .run_to_end(stdin, rt.limits(10_000), ())
        .await
        .unwrap();
    assert!(ran.wall_ms > 0);
    assert!(matches!(
        interpret(&ran.finished, 1 << 20),
        Err(falra_sandbox::ChildFailure::FunctionError { .. })
    ));
    let limits = rt.limits(1234);
    assert_eq!(limits.wall, Duration::from_millis(1234));
    assert_eq!(limits.stdout_bytes, 1 << 20);
}
