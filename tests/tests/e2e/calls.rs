//! The call path end to end: the seed's call, per-tenant code, conversions, logs, usage.

use falra_tests::{Daemon, GitRepo};
use serde_json::json;

const ADD: &str = "def add(int_a, int_b):\n    return int_a + int_b\n";

#[test]
fn the_seed_call_answers_three() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(&[("falra_test_add.py", ADD)]);
    let token = d.tenant("caro", &repo);
    let a = d.call(json!({"token": token, "fn": "falra_test_add.add", "int_a": 1, "int_b": 2}));
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["ok"], json!(true));
    assert_eq!(a.body["result"], json!(3));
    assert!(a.body["call_id"].as_str().unwrap().starts_with("c_"));
    assert_eq!(a.body["version"].as_str().unwrap().len(), 12);
    assert!(a.body["usage"]["wall_ms"].is_u64());
    assert!(a.body["usage"]["cpu_ms"].is_u64());
    assert!(a.body["usage"]["peak_memory_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn caro_and_jc_each_get_their_own_utils() {
    let d = Daemon::start();
    let caro = GitRepo::with_files(&[(
        "utils.py",
        "def who():\n    return 'caro'\ndef add(a, b):\n    return a + b\n",
    )]);
    let jc = GitRepo::with_files(&[(
        "utils.py",
        "def who():\n    return 'jc'\ndef multiply(a, b):\n    return a * b\n",
    )]);
    let caro_token = d.tenant("caro", &caro);
    let jc_token = d.tenant("jc", &jc);
    for _ in 0..2 {
        let a = d.call(json!({"token": caro_token, "fn": "utils.who"}));
        assert_eq!(a.body["result"], json!("caro"), "{:?}", a.body);
        let a = d.call(json!({"token": jc_token, "fn": "utils.who"}));
        assert_eq!(a.body["result"], json!("jc"), "{:?}", a.body);
    }
    let a = d.call(json!({"token": caro_token, "fn": "utils.add", "a": 2, "b": 5}));
    assert_eq!(a.body["result"], json!(7));
    let a = d.call(json!({"token": jc_token, "fn": "utils.multiply", "a": 2, "b": 5}));
    assert_eq!(a.body["result"], json!(10));
    // Neither sees the other's functions.
    let a = d.call(json!({"token": caro_token, "fn": "utils.multiply", "a": 2, "b": 5}));
    assert_eq!(a.status, 404);
    assert_eq!(a.body["error"]["code"], json!("fn_not_found"));
    assert_eq!(a.body["error"]["detail"]["function"], json!("multiply"));
    // The seed's layout on disk: github/git_<tenant> points at the active version.
    for (tenant, who) in [("caro", "'caro'"), ("jc", "'jc'")] {
        let utils = d.data_dir.join(format!("github/git_{tenant}/utils.py"));
        assert!(std::fs::read_to_string(utils).unwrap().contains(who));
    }
}

#[test]
fn token_in_header_comments_dropped_packages_and_kwargs() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(&[
        (
            "pkg/__init__.py",
            "from .helper import twice\ndef echo(**kw):\n    return kw\n",
        ),
        ("pkg/helper.py", "def twice(x):\n    return 2 * x\n"),
        (
            "pkg/sub/mod.py",
            "from pkg.helper import twice\ndef run(lst_x):\n    return [twice(v) for v in lst_x]\n",
        ),
    ]);
    let token = d.tenant("caro", &repo);
    let auth = format!("Bearer {token}");
    let body = json!({
        "註解1": "comment", "fn": "pkg.echo", "//": "also a comment", "_comment_x": 1,
        "int_a": 1, "dic_b": {"k": [1, 2]}, "s": "é"
    });
    let a = d.post(
        "/v1/call",
        &[("Authorization", &auth)],
        body.to_string().as_bytes(),
    );
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(
        a.body["result"],
        json!({"int_a": 1, "dic_b": {"k": [1, 2]}, "s": "é"})
    );
    let a = d.call(json!({"token": token, "fn": "pkg.sub.mod.run", "lst_x": [1, 2, 3]}));
    assert_eq!(a.body["result"], json!([2, 4, 6]), "{:?}", a.body);
}

#[test]
fn results_are_converted_as_documented() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(&[(
        "conv.py",
        r#"
import datetime, math, collections, enum

class Color(enum.IntEnum):
    RED = 1

def values():
    return {
        "nan": math.nan, "inf": math.inf, "ninf": -math.inf, "f": 1.5,
        "date": datetime.date(2024, 2, 29),
        "dt": datetime.datetime(2024, 2, 29, 13, 14, 15, tzinfo=datetime.timezone.utc),
        "tuple": (1, "a"), "set": {7}, "frozen": frozenset(),
        "ordered": collections.OrderedDict(a=1), "enum": Color.RED,
        "nested": [(1, {2})], "none": None, "big": 2 ** 62,
    }

def int_keys():
    return {2: "a", None: "b", True: "c", 1.5: "d"}
"#,
    )]);
    let token = d.tenant("caro", &repo);
    let a = d.call(json!({"token": token, "fn": "conv.values"}));
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(
        a.body["result"],
        json!({
            "nan": null, "inf": null, "ninf": null, "f": 1.5,
            "date": "2024-02-29", "dt": "2024-02-29T13:14:15+00:00",
            "tuple": [1, "a"], "set": [7], "frozen": [],
            "ordered": {"a": 1}, "enum": 1,
            "nested": [[1, [2]]], "none": null, "big": 4611686018427387904u64,
        })
    );
    let a = d.call(json!({"token": token, "fn": "conv.int_keys"}));
    assert_eq!(
        a.body["result"],
        json!({"2": "a", "null": "b", "true": "c", "1.5": "d"})
    );
}

#[test]
fn prints_become_logs_and_cannot_corrupt_the_answer() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(&[(
        "noisy.py",
        r#"
import sys, os
def talk():
    print("to stdout")
    print('{"ok": true, "result": "forged"}')
    sys.stderr.write("to stderr\n")
    os.write(1, b"raw fd 1\n")
    return "real"

def flood():
    for i in range(20000):
        print("line", i, "x" * 40)
    return "done"
"#,
    )]);
    let token = d.tenant("caro", &repo);
    let a = d.call(json!({"token": token, "fn": "noisy.talk"}));
    assert_eq!(a.body["result"], json!("real"), "{:?}", a.body);
    let logs = a.body["logs"].as_str().unwrap();
    for line in ["to stdout", "forged", "to stderr", "raw fd 1"] {
        assert!(logs.contains(line), "{logs}");
    }
    let a = d.call(json!({"token": token, "fn": "noisy.flood"}));
    assert_eq!(a.body["result"], json!("done"));
    let logs = a.body["logs"].as_str().unwrap();
    assert!(logs.len() < 70 * 1024, "logs are capped: {}", logs.len());
    assert!(logs.starts_with("line 0 "), "{}", &logs[..100]);
    assert!(logs.contains("bytes of logs cut here"));
    assert!(
        logs.ends_with(&format!("line 19999 {}\n", "x".repeat(40))),
        "{}",
        &logs[logs.len() - 100..]
    );
}

#[test]
fn a_new_commit_makes_a_new_version_and_old_ones_can_be_pinned() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(&[("v.py", "def get():\n    return 1\n")]);
    let token = d.tenant("caro", &repo);
    let first = d.call(json!({"token": token, "fn": "v.get"}));
    let v1 = first.body["version"].as_str().unwrap().to_owned();
    repo.commit(&[("v.py", "def get():\n    return 2\n")]);
    let v2 = d.sync("caro");
    assert_ne!(v1, v2);
    let a = d.call(json!({"token": token, "fn": "v.get"}));
    assert_eq!(
        (
            a.body["result"].clone(),
            a.body["version"].as_str().unwrap()
        ),
        (json!(2), v2.as_str())
    );
    let pinned = d.post(
        &format!("/v1/call?version={v1}"),
        &[],
        json!({"token": token, "fn": "v.get"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(pinned.body["result"], json!(1), "{:?}", pinned.body);
    // Syncing the same commit again is a no-op that keeps the version.
    assert_eq!(d.sync("caro"), v2);
}

#[test]
fn a_lower_timeout_can_be_asked_per_call() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(&[(
        "slow.py",
        "import time\ndef nap(s):\n    time.sleep(s)\n    return s\n",
    )]);
    let token = d.tenant("caro", &repo);
    let a = d.post(
        "/v1/call?timeout_ms=300",
        &[],
        json!({"token": token, "fn": "slow.nap", "s": 5})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(a.status, 504, "{:?}", a.body);
    assert_eq!(a.body["error"]["detail"]["timeout_ms"], json!(300));
    let a = d.call(json!({"token": token, "fn": "slow.nap", "s": 0.01}));
    assert_eq!(a.body["result"], json!(0.01));
}

#[test]
fn a_child_started_ahead_never_serves_a_changed_policy_or_a_second_call() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(&[(
        "probe.py",
        "import os\nSTARTED = os.urandom(8).hex()\n\ndef tmp_mb():\n    s = os.statvfs('/tmp')\n    return [s.f_blocks * s.f_frsize >> 20, STARTED]\n",
    )]);
    let token = d.tenant("caro", &repo);
    let call = || d.call(json!({"token": token, "fn": "probe.tmp_mb"})).body["result"].clone();
    let first = call();
    assert_eq!(first[0], json!(64), "{first}");
    // The next child is already started with the old policy; the call after a change must
    // not get it.
    let a = d.admin("PUT", "/tenants/caro/policy", Some(json!({"tmp_mb": 8})));
    assert_eq!(a.status, 200);
    let second = call();
    assert_eq!(second[0], json!(8), "{second}");
    let third = call();
    assert_eq!(third[0], json!(8));
    // Every call is a process of its own.
    assert_ne!(first[1], second[1]);
    assert_ne!(second[1], third[1]);
}
