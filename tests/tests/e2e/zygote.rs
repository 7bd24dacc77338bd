//! Calls forked from the zygote: the same sandbox as an exec'd child, nothing of one call in
//! the next, a zygote out of the calls' reach, and calls served while the zygote is gone.

use std::time::{Duration, Instant};

use falra_tests::{eventually, http, Daemon, GitRepo};
use serde_json::{json, Value};

use crate::hostile::{descends_from, parent_of};

const PROBE: &str = r##"
import ctypes, errno, os, resource, signal, sys, threading

def sandbox():
    status = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
                   "NoNewPrivs", "Seccomp", "Seccomp_filters"):
            status[key] = value.split()
    def refused(f):
        try:
            f()
            return "allowed"
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno))
    return {
        "status": status,
        "ppid": os.getppid(),
        "processes": len([p for p in os.listdir("/proc") if p.isdigit()]),
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "argv": sys.argv,
        "orig_argv": sys.orig_argv,
        "main_file": sys.modules["__main__"].__file__,
        "code_file": sys.modules["__main__"]._main.__code__.co_filename,
        "flags": [sys.flags.isolated, sys.flags.no_site, sys.flags.dont_write_bytecode],
        "fds": sorted(os.listdir("/proc/self/fd")),
        "cgroup": open("/proc/self/cgroup").read().split(),
        "hostname": os.uname().nodename,
        "limits": [resource.getrlimit(r) for r in (resource.RLIMIT_NOFILE, resource.RLIMIT_FSIZE,
                                                     resource.RLIMIT_STACK, resource.RLIMIT_CORE)],
        "mounts": sorted(l.split()[4] for l in open("/proc/self/mountinfo")),
        "write_code": refused(lambda: open("/code/x", "w")),
        "write_tmp": refused(lambda: open("/tmp/x", "w").close()),
        "dumpable": ctypes.CDLL(None).prctl(3, 0, 0, 0, 0),
        "threads": threading.active_count(),
    }

def cmdline():
    return open("/proc/self/cmdline", "rb").read().decode().split("\0")

def tamper():
    """Everything a call could try to leave for the next one, or to reach the zygote with."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    tried = {}
    def errno_of(rc):
        return "allowed" if rc >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")
    # ptrace(PTRACE_ATTACH) on init, its parent and the processes it can see
    tried["ptrace"] = sorted({errno_of(libc.ptrace(16, pid, None, None))
                              for pid in (1, os.getppid())})
    local = (ctypes.c_char * 16)()
    iov = (ctypes.c_void_p * 2)(ctypes.addressof(local), 16)
    tried["process_vm_readv"] = errno_of(libc.syscall(310, 1, iov, 1, iov, 1, 0))
    for pid in sorted(int(p) for p in os.listdir("/proc") if p.isdigit()):
        if pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    try:
        tried["setns"] = errno_of(libc.setns(os.open("/proc/1/ns/mnt", os.O_RDONLY), 0))
    except OSError as e:
        tried["setns"] = errno.errorcode.get(e.errno, "?")
    tried["unshare_user"] = errno_of(libc.unshare(0x10000000))
    # Leave state behind: in the interpreter, on disk, in shared memory, in processes.
    import json
    json.left_behind = True
    os.fork = None
    os.register_at_fork(after_in_child=lambda: open("/tmp/at_fork", "w").close())
    sys.modules["__main__"].__dict__["_main"] = None
    open("/tmp/left", "w").write("x")
    open("/dev/shm/left", "w").write("x")
    threading.Thread(target=lambda: __import__("time").sleep(30), daemon=False).start()
    if os.fork is None:
        pid = __import__("posix").fork()
        if pid == 0:
            os.setsid()
            __import__("time").sleep(30)
            os._exit(0)
    return tried

def look():
    import json
    return {
        "json_left_behind": hasattr(json, "left_behind"),
        "fork_intact": os.fork is not None and os.fork.__module__ == "posix",
        "main_intact": callable(sys.modules["__main__"].__dict__.get("_main")),
        "tmp": sorted(os.listdir("/tmp")),
        "shm": sorted(os.listdir("/dev/shm")),
        "threads": threading.active_count(),
        "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    }

def add(a, b):
    return a + b
"##;

pub(crate) fn metric(d: &Daemon, name: &str) -> u64 {
    let m = http("GET", &format!("{}/metrics", d.url), &[], None);
    let text = m.body.as_str().unwrap_or_default().to_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

fn call(d: &Daemon, token: &str, f: &str) -> Value {
    let a = d.call(json!({"token": token, "fn": format!("probe.{f}")}));
    assert_eq!(a.status, 200, "{f}: {:?}", a.body);
    a.body["result"].clone()
}

/// The zygote of `d`: the daemon's child started with `--zygote`.
fn zygote_pid(d: &Daemon) -> Option<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .find(|&p| {
            parent_of(p) == Some(d.pid())
                && std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).contains("\0--zygote\0"))
        })
}

#[test]
fn a_forked_call_is_sandboxed_exactly_as_an_exec_d_one() {
    let repo = GitRepo::with_files(&[("probe.py", PROBE)]);
    let forked = Daemon::start_with(&[]);
    let execd = Daemon::start_with(&["--no-zygote"]);
    let mut seen = Vec::new();
    for d in [&forked, &execd] {
        let token = d.tenant("caro", &repo);
        // Twice: the prepared child and one started for the call.
        let first = call(d, &token, "sandbox");
        let second = call(d, &token, "sandbox");
        assert_eq!(first, second);
        seen.push(first);
    }
    let (f, e) = (&seen[0], &seen[1]);
    // Nothing in a call names the host's data directory, forked or exec'd.
    for d in [&forked, &execd] {
        let token = d.tenant("dora", &repo);
        let words = call(d, &token, "cmdline");
        assert!(
            !words.to_string().contains(d.data_dir.to_str().unwrap()),
            "the command line names a host path: {words}"
        );
    }
    assert_eq!(f["code_file"], json!("/falra/runner.py"));
    assert_eq!(f, e, "forked:\n{f:#}\nexec'd:\n{e:#}");
    // And what that sandbox is: no capability, no_new_privs, the filter, not dumpable, init's
    // child, nothing but stdio open.
    assert_eq!(f["status"]["CapEff"], json!(["0000000000000000"]));
    assert_eq!(f["status"]["CapPrm"], json!(["0000000000000000"]));
    assert_eq!(f["status"]["NoNewPrivs"], json!(["1"]));
    assert_eq!(f["status"]["Seccomp"], json!(["2"]));
    assert_eq!(f["dumpable"], json!(1), "as after an exec");
    assert_eq!(f["ppid"], json!(1));
    assert_ne!(f["status"]["Uid"][0], json!("0"));
    assert_eq!(f["write_code"], json!("EROFS"));
    assert_eq!(f["write_tmp"], json!("allowed"));
    assert!(!f["cgroup"].as_array().unwrap().is_empty());
    assert!(metric(&forked, "falra_zygote_forks_total") >= 2);
    assert_eq!(metric(&forked, "falra_zygote_fallbacks_total"), 0);
    assert_eq!(metric(&forked, "falra_zygotes_alive"), 1);
    let rss = metric(&forked, "falra_zygote_resident_bytes");
    assert!(rss > 1 << 20 && rss < 64 << 20, "zygote RSS {rss}");
    assert_eq!(metric(&execd, "falra_zygote_forks_total"), 0);
    assert_eq!(metric(&execd, "falra_zygotes_alive"), 0);
}

#[test]
fn a_call_cannot_reach_its_zygote_or_leave_anything_for_the_next_call() {
    let d = Daemon::start_with(&[]);
    let repo = GitRepo::with_files(&[("probe.py", PROBE)]);
    let token = d.tenant("caro", &repo);
    let other = d.tenant(
        "dora",
        &GitRepo::with_files(&[("probe.py", "def add(a, b):\n    return a + b\n")]),
    );
    let policy = json!({"timeout_ms": 3000, "pids": 32});
    assert_eq!(
        d.admin("PUT", "/tenants/caro/policy", Some(policy)).status,
        200
    );
    call(&d, &token, "look");
    let zygote = zygote_pid(&d).expect("a zygote");
    let tried = call(&d, &token, "tamper");
    assert_eq!(tried["ptrace"], json!(["EPERM"]), "{tried}");
    assert_eq!(tried["process_vm_readv"], json!("EPERM"), "{tried}");
    assert_eq!(tried["unshare_user"], json!("EPERM"), "{tried}");
    assert_ne!(tried["setns"], json!("allowed"), "{tried}");
    for _ in 0..3 {
        let after = call(&d, &token, "look");
        assert_eq!(
            after,
            json!({
                "json_left_behind": false,
                "fork_intact": true,
                "main_intact": true,
                "tmp": [],
                "shm": [],
                "threads": 1,
                // init (PID 1) is not dumpable, so `hidepid=2` hides it; the zygote's first
                // fork (2) is gone.
                "pids": [3],
            }),
        );
    }
    // The zygote is the one that was there, untouched, and still forks; the other tenant is
    // served from it too.
    assert_eq!(zygote_pid(&d), Some(zygote));
    assert_eq!(metric(&d, "falra_zygote_starts_total"), 1);
    assert_eq!(metric(&d, "falra_zygote_fallbacks_total"), 0);
    let a = d.call(json!({"token": other, "fn": "probe.add", "a": 2, "b": 3}));
    assert_eq!(a.body["result"], json!(5), "{:?}", a.body);
    // Nothing the tampering call started outlives it.
    let uid = d.admin("GET", "/tenants/caro", None).body["uid"]
        .as_u64()
        .unwrap();
    eventually(
        "the tampering call's processes are gone",
        Duration::from_secs(5),
        || !sleepers_of(uid as u32, d.pid()),
    );
}

/// Whether a process of `uid` under `daemon` sleeps in `time.sleep` (the tampering call's
/// thread and child).
fn sleepers_of(uid: u32, daemon: u32) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let path = e.path();
        let pid: u32 = e.file_name().to_string_lossy().parse().unwrap_or(0);
        let owned = pid > 0
            && descends_from(pid, daemon)
            && std::fs::read_to_string(path.join("status")).is_ok_and(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    == Some(&uid.to_string())
            });
        let wchan = std::fs::read_to_string(path.join("wchan")).unwrap_or_default();
        owned && (wchan.contains("hrtimer") || wchan.contains("nanosleep"))
    })
}

#[test]
fn calls_are_served_while_a_killed_zygote_is_replaced() {
    let d = Daemon::start_with(&["--no-prewarm"]);
    let repo = GitRepo::with_files(&[("probe.py", PROBE)]);
    let token = d.tenant("caro", &repo);
    let one = |n: i64| {
        let a = d.call(json!({"token": token, "fn": "probe.add", "a": n, "b": 1}));
        assert_eq!(a.body["result"], json!(n + 1), "{:?}", a.body);
    };
    one(1);
    let first = zygote_pid(&d).expect("a zygote");
    std::process::Command::new("kill")
        .args(["-9", &first.to_string()])
        .status()
        .unwrap();
    let started = Instant::now();
    for n in 0..20 {
        one(n);
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    eventually("a new zygote forks calls", Duration::from_secs(20), || {
        one(7);
        zygote_pid(&d).is_some_and(|z| z != first) && metric(&d, "falra_zygote_starts_total") >= 2
    });
    let forks = metric(&d, "falra_zygote_forks_total");
    one(8);
    assert_eq!(metric(&d, "falra_zygote_forks_total"), forks + 1);
    assert!(
        d.log().matches("without the zygote").count() <= 1,
        "{}",
        d.log()
    );
}
