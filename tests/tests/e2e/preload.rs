//! Calls forked from a tenant version's preload zygote (`"preload"` in the policy): the
//! modules imported once, module state fresh per call, each call sandboxed further than its
//! zygote, nothing of one call in the next, and a plain start whenever a zygote cannot be made.

use std::time::Duration;

use falra_tests::{eventually, static_files, Daemon, GitRepo};

use crate::zygote::metric;
use serde_json::{json, Value};

/// A module that takes a while to import and keeps state at its top level.
const HEAVY: &str = r##"
import os, random, sys, time
time.sleep(0.5)
IMPORTED_AT = time.time()
STATE = []
SEED_DRAW = random.random()

def imported_at():
    return IMPORTED_AT

def bump():
    STATE.append(1)
    return len(STATE)

def draw():
    return random.random()

def whoami():
    return {"pid": os.getpid(), "tmpdir": os.environ.get("TMPDIR"), "argv": sys.argv,
            "cgroup": open("/proc/self/cgroup").read().split(), "uid": os.getuid(),
            "seccomp": [l.split()[1] for l in open("/proc/self/status")
                        if l.startswith("Seccomp:")]}

def sleep(s):
    time.sleep(s)
    return s

def whoami_after(s):
    time.sleep(s)
    return whoami()

def hog(mb):
    block = bytearray(mb << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return len(block)
"##;

/// What a hostile call tries from inside a preload zygote's fork.
const PROBE: &str = r##"
import ctypes, errno, fcntl, os, signal, threading, time

def _err(f):
    try:
        f()
        return "allowed"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

def tamper():
    libc = ctypes.CDLL(None, use_errno=True)
    me, parent = os.getpid(), os.getppid()
    tried = {"parent": parent}
    # The processes it can see (none: `hidepid` hides what it may not trace), its zygote and
    # the zygote's init.
    others = {int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != me}
    tried["visible"] = sorted(others)
    others |= {1, parent}
    tried["kill"] = sorted({_err(lambda p=p: os.kill(p, signal.SIGKILL)) for p in others})
    tried["kill_parent"] = _err(lambda: os.kill(parent, 0))
    tried["mem"] = _err(lambda: open("/proc/%d/mem" % parent, "rb").read(1))
    tried["environ"] = _err(lambda: open("/proc/%d/environ" % parent, "rb").read())
    tried["ptrace"] = "allowed" if libc.ptrace(16, parent, None, None) == 0 else \
        errno.errorcode.get(ctypes.get_errno(), "?")
    tried["shmget"] = "allowed" if libc.shmget(0x5eed, 4096, 0o1666) >= 0 else \
        errno.errorcode.get(ctypes.get_errno(), "?")
    tried["write_tmp"] = _err(lambda: open("/tmp/left", "w").write("x"))
    tried["list_tmp"] = _err(lambda: os.listdir("/tmp"))
    tried["write_shm"] = _err(lambda: open("/dev/shm/left", "w").write("x"))
    tried["write_null"] = _err(lambda: open("/dev/null", "w").write("x"))
    tried["write_own"] = _err(lambda: open(os.path.join(os.environ["TMPDIR"], "left"), "w").write("x"))
    threading.Thread(target=lambda: time.sleep(30), daemon=False).start()
    pid = __import__("posix").fork()  # evil.py, preloaded too, took os.fork away
    if pid == 0:
        os.setsid()
        # A lock on a file every call can open, held by a process meant to outlive the call.
        fcntl.flock(os.open("/code/probe.py", os.O_RDONLY), fcntl.LOCK_EX)
        time.sleep(30)
        os._exit(0)
    tried["child"] = pid
    tried["tmpdir"] = os.environ["TMPDIR"]
    return tried

def litter(depth):
    """A deep tree, a locked-up directory and symbolic links out of its own directory."""
    here = os.environ["TMPDIR"]
    for i in range(depth):
        here = os.path.join(here, "d")
        os.mkdir(here)
    os.symlink("/tmp", os.path.join(os.environ["TMPDIR"], "up"))
    os.symlink("/code", os.path.join(here, "code"))
    locked = os.path.join(os.environ["TMPDIR"], "locked")
    os.mkdir(locked)
    open(os.path.join(locked, "f"), "w").write("x")
    os.chmod(locked, 0)
    return depth

def hold(s):
    open(os.path.join(os.environ["TMPDIR"], "mine"), "w").write("x")
    time.sleep(s)
    return os.listdir(os.environ["TMPDIR"])

def peek():
    own = os.environ["TMPDIR"]
    return sorted({_err(lambda n=n: os.listdir("/tmp/.falra-call-%d" % n))
                   for n in range(200) if "/tmp/.falra-call-%d" % n != own})

def forkbomb():
    made = 0
    try:
        for _ in range(1000):
            if __import__("posix").fork() == 0:
                time.sleep(30)
                os._exit(0)
            made += 1
    except OSError as e:
        return {"made": made, "stopped_by": errno.errorcode.get(e.errno)}
    return {"made": made, "stopped_by": None}

def look(child, tmpdir):
    import heavy
    return {
        "child_alive": os.path.exists("/proc/%d" % child),
        "other_tmpdir": _err(lambda: os.listdir(tmpdir)),
        "own_tmpdir": os.listdir(os.environ["TMPDIR"]),
        "threads": threading.active_count(),
        "state": heavy.bump(),
        "shm_segment": ctypes.CDLL(None).shmget(0x5eed, 0, 0) >= 0,
        "lock": _err(lambda: fcntl.flock(os.open("/code/probe.py", os.O_RDONLY),
                                         fcntl.LOCK_EX | fcntl.LOCK_NB)),
    }
"##;

/// A preloaded module that tampers with what a fork relies on.
const EVIL: &str = r##"
import os, sys
os.fork = None
os.register_at_fork(after_in_child=lambda: setattr(sys, "hooked", True))
def hooked():
    return getattr(sys, "hooked", False)
"##;

fn call(d: &Daemon, token: &str, f: &str, kwargs: Value) -> Value {
    let mut body = kwargs;
    body["token"] = json!(token);
    body["fn"] = json!(f);
    d.call(body).body
}

fn ok(d: &Daemon, token: &str, f: &str, kwargs: Value) -> Value {
    let body = call(d, token, f, kwargs);
    assert_eq!(body["ok"], json!(true), "{f}: {body}");
    body["result"].clone()
}

fn set_policy(d: &Daemon, tenant: &str, policy: Value) {
    let a = d.admin("PUT", &format!("/tenants/{tenant}/policy"), Some(policy));
    assert_eq!(a.status, 200, "{:?}", a.body);
}

/// Calls `heavy.imported_at` until it is answered by a preload zygote (the same value twice
/// in a row, with a fork counted), and returns that value.
fn forked_import(d: &Daemon, token: &str) -> f64 {
    let last = std::cell::Cell::new(None);
    eventually(
        "calls are forked from the preload zygote",
        Duration::from_secs(30),
        || {
            let before = metric(d, "falra_preload_forks_total");
            let at = ok(d, token, "heavy.imported_at", json!({}))
                .as_f64()
                .unwrap();
            let forked = metric(d, "falra_preload_forks_total") > before;
            let same = last.get() == Some(at);
            last.set(Some(at));
            forked && same
        },
    );
    last.get().unwrap()
}

#[test]
fn preloaded_modules_are_imported_once_and_every_call_starts_from_their_fresh_state() {
    let d = Daemon::start_with(&[]);
    let repo = GitRepo::with_files(&[("heavy.py", HEAVY)]);
    let token = d.tenant("caro", &repo);
    set_policy(&d, "caro", json!({"preload": ["heavy"]}));
    let at = forked_import(&d, &token);
    assert_eq!(metric(&d, "falra_preload_zygotes_alive"), 1);
    let mut draws = Vec::new();
    for _ in 0..4 {
        // Imported once: every call sees the zygote's import, and the module's state as the
        // import left it.
        assert_eq!(ok(&d, &token, "heavy.imported_at", json!({})), json!(at));
        assert_eq!(ok(&d, &token, "heavy.bump", json!({})), json!(1));
        draws.push(ok(&d, &token, "heavy.draw", json!({})).to_string());
    }
    draws.sort();
    draws.dedup();
    assert_eq!(draws.len(), 4, "random is reseeded per call: {draws:?}");
    // Two calls at once each have a process, a directory and a cgroup of their own (one after
    // the other they may reuse an emptied cgroup), the tenant's uid, and the policy's filter
    // under their own.
    let (a, b) = std::thread::scope(|s| {
        let one = s.spawn(|| ok(&d, &token, "heavy.whoami_after", json!({"s": 0.6})));
        let two = s.spawn(|| ok(&d, &token, "heavy.whoami_after", json!({"s": 0.6})));
        (one.join().unwrap(), two.join().unwrap())
    });
    assert_ne!(a["pid"], b["pid"]);
    assert_ne!(a["tmpdir"], b["tmpdir"]);
    assert_ne!(a["cgroup"], b["cgroup"]);
    assert_ne!(a["uid"], json!(0));
    assert_eq!(a["argv"], json!(["/falra/runner.pyc"]));
    assert_eq!(a["seccomp"], json!(["2"]));
    // The deadline and the memory limit are the call's, and the zygote outlives both.
    set_policy(
        &d,
        "caro",
        json!({"preload": ["heavy"], "timeout_ms": 1500, "memory_mb": 64}),
    );
    let at = forked_import(&d, &token);
    let slow = call(&d, &token, "heavy.sleep", json!({"s": 5}));
    assert_eq!(slow["error"]["code"], json!("timeout"), "{slow}");
    let big = call(&d, &token, "heavy.hog", json!({"mb": 200}));
    assert_eq!(
        big["error"]["code"],
        json!("memory_limit_exceeded"),
        "{big}"
    );
    assert_eq!(ok(&d, &token, "heavy.imported_at", json!({})), json!(at));
    assert_eq!(
        ok(&d, &token, "heavy.hog", json!({"mb": 8})),
        json!(8 << 20)
    );
    assert_eq!(metric(&d, "falra_preload_zygotes_alive"), 1);
}

#[test]
fn a_preloaded_call_cannot_reach_its_zygote_or_leave_anything_for_the_next_call() {
    let d = Daemon::start_with(&[]);
    let repo = GitRepo::with_files(&[("heavy.py", HEAVY), ("probe.py", PROBE), ("evil.py", EVIL)]);
    let token = d.tenant("caro", &repo);
    let other = d.tenant("dora", &GitRepo::with_files(&[("heavy.py", HEAVY)]));
    set_policy(
        &d,
        "caro",
        json!({"preload": ["heavy", "probe", "evil"], "pids": 16}),
    );
    let at = forked_import(&d, &token);
    let tried = ok(&d, &token, "probe.tamper", json!({}));
    // Every other process is out of its reach: the zygote, its init, other calls.
    assert_eq!(tried["kill"], json!(["EPERM"]), "{tried}");
    assert_eq!(tried["visible"], json!([]), "{tried}");
    assert_eq!(tried["kill_parent"], json!("EPERM"), "{tried}");
    assert_eq!(tried["ptrace"], json!("EPERM"), "{tried}");
    assert_ne!(tried["mem"], json!("allowed"), "{tried}");
    assert_ne!(tried["environ"], json!("allowed"), "{tried}");
    // Nothing to leave for the next call but in its own directory.
    assert_eq!(tried["shmget"], json!("EPERM"), "{tried}");
    assert_eq!(tried["write_tmp"], json!("EACCES"), "{tried}");
    assert_eq!(tried["list_tmp"], json!("EACCES"), "{tried}");
    assert_eq!(tried["write_shm"], json!("EACCES"), "{tried}");
    assert_eq!(tried["write_null"], json!("allowed"), "{tried}");
    assert_eq!(tried["write_own"], json!("allowed"), "{tried}");
    let look = json!({"child": tried["child"], "tmpdir": tried["tmpdir"]});
    eventually(
        "what the tampering call started is gone",
        Duration::from_secs(5),
        || ok(&d, &token, "probe.look", look.clone())["child_alive"] == json!(false),
    );
    let after = ok(&d, &token, "probe.look", look);
    assert_eq!(
        after,
        json!({"child_alive": false, "other_tmpdir": "ENOENT", "own_tmpdir": [], "threads": 1,
               "state": 1, "shm_segment": false, "lock": "allowed"}),
    );
    // A call that forks until it cannot is stopped by its own cgroup's pids limit; its
    // processes go with it, and the zygote serves on.
    let bomb = ok(&d, &token, "probe.forkbomb", json!({}));
    assert_eq!(bomb["stopped_by"], json!("EAGAIN"), "{bomb}");
    assert!(bomb["made"].as_u64().unwrap() <= 16, "{bomb}");
    assert_eq!(ok(&d, &token, "heavy.imported_at", json!({})), json!(at));
    // What a call leaves in its directory is removed without the zygote following a link out of
    // it or giving up: the zygote serves on, and the code is intact.
    assert_eq!(
        ok(&d, &token, "probe.litter", json!({"depth": 1500})),
        json!(1500)
    );
    assert_eq!(ok(&d, &token, "heavy.imported_at", json!({})), json!(at));
    assert_eq!(ok(&d, &token, "heavy.bump", json!({})), json!(1));
    // While another call runs, its directory is there and out of reach.
    let holder = d.call_in_background(json!({"token": token, "fn": "probe.hold", "s": 2}));
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        ok(&d, &token, "probe.peek", json!({})),
        json!(["EACCES", "ENOENT"])
    );
    assert_eq!(holder.join().unwrap().body["result"], json!(["mine"]));
    // A preloaded module that replaced os.fork and hooked the fork still gets its calls
    // forked (the hook is its own code, run in its own call).
    assert_eq!(ok(&d, &token, "evil.hooked", json!({})), json!(true));
    assert_eq!(ok(&d, &token, "heavy.imported_at", json!({})), json!(at));
    assert_eq!(metric(&d, "falra_preload_zygote_starts_total"), 1);
    // Another tenant with the same module and no preload is served, by its own import.
    let theirs = ok(&d, &other, "heavy.imported_at", json!({}));
    assert_ne!(theirs, json!(at));
}

#[test]
fn modules_that_fail_hang_or_leave_threads_at_import_fall_back_to_a_plain_start() {
    let d = Daemon::start_with(&[]);
    let repo = GitRepo::with_files(&[
        ("heavy.py", HEAVY),
        ("broken.py", "raise RuntimeError('no')\n"),
        ("hang.py", "import time\ntime.sleep(60)\n"),
        (
            "threads.py",
            "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n",
        ),
    ]);
    let token = d.tenant("caro", &repo);
    for (module, why) in [
        ("broken", "importing broken failed: RuntimeError: no"),
        ("threads", "left 2 threads running"),
        ("hang", "did not become ready in time"),
    ] {
        set_policy(
            &d,
            "caro",
            json!({"preload": ["heavy", module], "timeout_ms": 2000}),
        );
        let before = metric(&d, "falra_preload_fallbacks_total");
        eventually(
            &format!("the zygote preloading {module} is given up on"),
            Duration::from_secs(20),
            || {
                ok(&d, &token, "heavy.bump", json!({}));
                d.log().contains(why)
            },
        );
        // Calls go on, each importing for itself.
        for _ in 0..3 {
            assert_eq!(ok(&d, &token, "heavy.bump", json!({})), json!(1));
        }
        assert!(metric(&d, "falra_preload_fallbacks_total") >= before + 3);
        assert_eq!(metric(&d, "falra_preload_zygotes_alive"), 0);
        assert_eq!(d.log().matches(why).count(), 1, "one warning: {}", d.log());
    }
    let bad = d.admin(
        "PUT",
        "/tenants/caro/policy",
        Some(json!({"preload": ["os; import x"]})),
    );
    assert_eq!(bad.status, 400, "{:?}", bad.body);
    assert_eq!(bad.body["error"]["detail"]["field"], json!("preload"));
}

#[test]
fn deploys_rollbacks_and_policy_changes_replace_the_zygote_while_calls_run() {
    let d = Daemon::start_with(&[]);
    let repo = GitRepo::with_files(&[("heavy.py", HEAVY)]);
    let token = d.tenant("caro", &repo);
    set_policy(&d, "caro", json!({"preload": ["heavy"]}));
    let first = forked_import(&d, &token);
    // A call that runs across the deploy ends as it began.
    let long = d.call_in_background(json!({"token": token, "fn": "heavy.sleep", "s": 2}));
    std::thread::sleep(Duration::from_millis(300));
    repo.commit(&[(
        "heavy.py",
        &format!("{HEAVY}\ndef version():\n    return 2\n"),
    )]);
    d.sync("caro");
    let done = long.join().unwrap();
    assert_eq!(done.body["result"], json!(2), "{:?}", done.body);
    let second = forked_import(&d, &token);
    assert_ne!(second, first);
    assert_eq!(ok(&d, &token, "heavy.version", json!({})), json!(2));
    // A policy change: another zygote.
    set_policy(
        &d,
        "caro",
        json!({"preload": ["heavy"], "timeout_ms": 20000}),
    );
    let third = forked_import(&d, &token);
    assert_ne!(third, second);
    // A rollback: the old version's code, from a zygote of its own.
    let versions = d.with_token("GET", "/v1/versions", &token, None).body;
    let old = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["active"] != json!(true))
        .map(|v| v["id"].clone())
        .expect("an older version");
    let rolled = d.admin(
        "POST",
        "/tenants/caro/rollback",
        Some(json!({"version": old})),
    );
    assert_eq!(rolled.status, 200, "{:?}", rolled.body);
    let fourth = forked_import(&d, &token);
    assert_ne!(fourth, third);
    let gone = call(&d, &token, "heavy.version", json!({}));
    assert_eq!(gone["error"]["code"], json!("fn_not_found"), "{gone}");
    eventually(
        "the replaced zygotes are gone",
        Duration::from_secs(10),
        || metric(&d, "falra_preload_zygotes_alive") == 1,
    );
}

#[test]
fn numpy_preloads_single_threaded_and_reseeds_its_generator_in_every_call() {
    let wheels = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-wheels");
    assert!(
        std::fs::read_dir(&wheels).is_ok_and(|mut d| d.next().is_some()),
        "no wheels in {} (scripts/test-python.sh downloads them)",
        wheels.display()
    );
    let index = static_files(&wheels);
    let links = format!("http://127.0.0.1:{}/", index.port);
    let d = Daemon::start_with(&[
        "--pip-index-url",
        "none",
        "--pip-find-links",
        &links,
        "--egress-allow-private",
    ]);
    let module = "import numpy as np, threading\n\
def draw():\n    return float(np.random.random())\n\
def threads():\n    return threading.active_count()\n\
def dot(n):\n    a = np.ones((n, n))\n    return float((a @ a).sum())\n";
    let repo = GitRepo::with_files(&[("requirements.txt", "numpy<3\n"), ("mat.py", module)]);
    let token = d.tenant("caro", &repo);
    set_policy(
        &d,
        "caro",
        json!({"preload": ["mat"], "memory_mb": 512, "timeout_ms": 20000}),
    );
    eventually("numpy is preloaded", Duration::from_secs(60), || {
        ok(&d, &token, "mat.threads", json!({}));
        metric(&d, "falra_preload_zygotes_alive") == 1
    });
    let forks = metric(&d, "falra_preload_forks_total");
    let mut draws: Vec<String> = (0..4)
        .map(|_| ok(&d, &token, "mat.draw", json!({})).to_string())
        .collect();
    draws.sort();
    draws.dedup();
    assert_eq!(
        draws.len(),
        4,
        "numpy's generator is reseeded per call: {draws:?}"
    );
    assert_eq!(
        ok(&d, &token, "mat.dot", json!({"n": 64})),
        json!(64.0 * 64.0 * 64.0)
    );
    assert_eq!(ok(&d, &token, "mat.threads", json!({})), json!(1));
    // Children are forked ahead of calls: at least the calls after the first were forked.
    assert!(metric(&d, "falra_preload_forks_total") >= forks + 4);
    assert!(!d.log().contains("threads running"), "{}", d.log());
}

#[test]
fn past_the_node_s_cap_the_least_recently_used_zygote_is_stopped() {
    let d = Daemon::start_with(&["--preload-zygotes", "1"]);
    let repo = GitRepo::with_files(&[("heavy.py", HEAVY)]);
    let caro = d.tenant("caro", &repo);
    let dora = d.tenant("dora", &repo);
    for tenant in ["caro", "dora"] {
        set_policy(&d, tenant, json!({"preload": ["heavy"]}));
    }
    let caros = forked_import(&d, &caro);
    assert_eq!(metric(&d, "falra_preload_zygote_starts_total"), 1);
    // dora's zygote takes the only place: caro's goes.
    let doras = forked_import(&d, &dora);
    assert_ne!(doras, caros);
    assert_eq!(metric(&d, "falra_preload_zygote_starts_total"), 2);
    assert_eq!(metric(&d, "falra_preload_zygotes_alive"), 1);
    // caro is served meanwhile, then from a zygote of its own again (and dora's goes).
    let again = forked_import(&d, &caro);
    assert_ne!(again, caros);
    assert_eq!(metric(&d, "falra_preload_zygote_starts_total"), 3);
    assert_eq!(metric(&d, "falra_preload_zygotes_alive"), 1);
    assert!(
        d.log().matches("preload zygote evicted").count() >= 2,
        "{}",
        d.log()
    );
}

/// The preload zygotes of `d`: its descendants started with `--preload` (the calls they fork
/// carry the same command line, and are their children).
fn preload_zygotes(d: &Daemon) -> Vec<u32> {
    let preloading = |p: u32| {
        std::fs::read(format!("/proc/{p}/cmdline"))
            .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).ends_with("\0--preload\0"))
    };
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|&p| {
            crate::hostile::descends_from(p, d.pid())
                && preloading(p)
                && !crate::hostile::parent_of(p).is_some_and(preloading)
        })
        .collect()
}

#[test]
fn a_preload_zygote_that_dies_is_replaced_while_its_calls_are_served() {
    let d = Daemon::start_with(&[]);
    let repo = GitRepo::with_files(&[("heavy.py", HEAVY)]);
    let token = d.tenant("caro", &repo);
    set_policy(&d, "caro", json!({"preload": ["heavy"]}));
    let first = forked_import(&d, &token);
    let zygotes = preload_zygotes(&d);
    assert_eq!(zygotes.len(), 1, "{zygotes:?}");
    std::process::Command::new("kill")
        .args(["-9", &zygotes[0].to_string()])
        .status()
        .unwrap();
    // Its end ends what it forked (a child prepared for the next call among them); once the
    // node has seen it go, every call is answered, then a new zygote forks them.
    eventually("the zygote is seen gone", Duration::from_secs(5), || {
        metric(&d, "falra_preload_zygotes_alive") == 0
    });
    for _ in 0..5 {
        assert_eq!(ok(&d, &token, "heavy.bump", json!({})), json!(1));
    }
    let second = forked_import(&d, &token);
    assert_ne!(second, first);
    assert_eq!(metric(&d, "falra_preload_zygote_starts_total"), 2);
    let now = preload_zygotes(&d);
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now[0], zygotes[0]);
}

#[test]
fn a_tenant_calling_many_versions_replaces_its_own_zygotes_not_another_tenant_s() {
    let d = Daemon::start_with(&["--preload-zygotes", "3"]);
    let repo = GitRepo::with_files(&[("heavy.py", HEAVY)]);
    let caro = d.tenant("caro", &repo);
    let dora = d.tenant("dora", &GitRepo::with_files(&[("heavy.py", HEAVY)]));
    for tenant in ["caro", "dora"] {
        set_policy(&d, tenant, json!({"preload": ["heavy"]}));
    }
    let doras = forked_import(&d, &dora);
    for n in 2..=3 {
        repo.commit(&[("heavy.py", &format!("{HEAVY}\nN = {n}\n"))]);
        d.sync("caro");
    }
    let versions = d.with_token("GET", "/v1/versions", &caro, None).body;
    let ids: Vec<String> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3, "{versions}");
    // Each of caro's versions, pinned, gets a zygote; caro keeps two at most.
    for id in &ids {
        let body = json!({"token": caro, "fn": "heavy.imported_at"}).to_string();
        eventually(
            &format!("version {id} is forked from a zygote"),
            Duration::from_secs(30),
            || {
                let before = metric(&d, "falra_preload_forks_total");
                let a = d.post(&format!("/v1/call?version={id}"), &[], body.as_bytes());
                assert_eq!(a.body["ok"], json!(true), "{:?}", a.body);
                metric(&d, "falra_preload_forks_total") > before
            },
        );
    }
    assert!(metric(&d, "falra_preload_zygote_starts_total") >= 4);
    assert_eq!(metric(&d, "falra_preload_zygotes_alive"), 3);
    // dora's zygote, the least recently used of all, is the one still serving her.
    assert_eq!(ok(&d, &dora, "heavy.imported_at", json!({})), json!(doras));
}
