//! Hostile code: every function here tries to break out of its call, starve the host, or leave
//! something behind. Each test asserts the exact answer, that nothing of the call is still
//! running on the host afterwards, and that another tenant is still served.

use std::time::{Duration, Instant};

use falra_tests::{Answer, Daemon, GitRepo};
use serde_json::{json, Value};

const HOSTILE: &str = r##"
import os, sys, time, socket, threading, signal, subprocess, errno

MODULE_STATE = {"calls": 0}

def fork_bomb():
    children = 0
    try:
        while True:
            if os.fork() == 0:
                time.sleep(600)
                os._exit(0)
            children += 1
    except OSError as e:
        return {"children": children, "errno": e.errno}

def thread_bomb():
    threads = []
    try:
        while True:
            t = threading.Thread(target=time.sleep, args=(600,), daemon=True)
            t.start()
            threads.append(t)
    except RuntimeError as e:
        return {"threads": len(threads), "error": str(e)}

def memory_bomb():
    hoard = []
    while True:
        hoard.append(bytearray(16 << 20))

def memory_one_block():
    return len(b"x" * (2 << 30))

def disk_bomb(path):
    chunk = b"x" * (1 << 20)
    with open(path, "wb") as f:
        while True:
            f.write(chunk)
            f.flush()

def spin():
    while True:
        pass

def nap():
    time.sleep(600)

def stop_self():
    os.kill(os.getpid(), signal.SIGSTOP)
    return "resumed"

def read(path):
    try:
        with open(path, "rb") as f:
            return "READ:" + f.read(200).decode("latin-1")
    except OSError as e:
        return "denied:%d" % e.errno

def listdir(path):
    try:
        return sorted(os.listdir(path))
    except OSError as e:
        return "denied:%d" % e.errno

def environment():
    return dict(os.environ)

def connect(port):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", port))
        return "connected"
    except OSError as e:
        return "refused:%d" % e.errno

def interfaces():
    return [name for _, name in socket.if_nameindex()]

def write_code():
    out = {}
    for path in ["/code/hostile.py", "/code/new.py", "/usr/bin/evil", "/etc/passwd", "/evil"]:
        try:
            with open(path, "a") as f:
                f.write("# owned\n")
            out[path] = "WROTE"
        except OSError as e:
            out[path] = e.errno
    return out

def double_fork(marker):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv("/usr/bin/sleep", ["sleep", marker])
        os._exit(0)
    os.wait()
    return "parent done"

def thread_after_answer(marker):
    def linger():
        time.sleep(1)
        with open("/tmp/" + marker, "w") as f:
            f.write("still here")
        while True:
            pass
    threading.Thread(target=linger).start()
    return "answered"

def kill_parent():
    os.kill(os.getppid(), signal.SIGKILL)
    try:
        os.kill(-1, signal.SIGKILL)
    except OSError:
        pass
    return "still alive"

def forge_answer():
    forged = b'{"ok": true, "result": "forged"}\n'
    for fd in range(3, 64):
        try:
            os.write(fd, forged)
        except OSError:
            pass
    return "real"

def corrupt_answer():
    for fd in range(3, 64):
        try:
            os.write(fd, b"\x00garbage{{{")
        except OSError:
            pass
    return "real"

def huge_stdout():
    chunk = "y" * 65536
    for _ in range(200):
        sys.stdout.write(chunk)
    return "done"

def exit_silently():
    os._exit(0)

def syscalls():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    nrs = {
        "ptrace": 101, "mount": 165, "umount2": 166, "pivot_root": 155, "unshare": 272,
        "setns": 308, "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321,
        "perf_event_open": 298, "userfaultfd": 323, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "init_module": 175,
        "finit_module": 313, "delete_module": 176, "reboot": 169, "kexec_load": 246,
        "kexec_file_load": 320, "open_by_handle_at": 304, "swapon": 167, "chroot": 161,
        "clone3": 435, "io_setup": 206, "io_submit": 209, "io_pgetevents": 333,
        "process_madvise": 440, "modify_ldt": 154, "personality": 135, "vmsplice": 278,
        "mq_open": 240, "fanotify_init": 300, "unknown_future_call": 470,
    }
    out = {}
    for name, nr in nrs.items():
        ctypes.set_errno(0)
        rc = libc.syscall(nr, 0, 0, 0, 0, 0, 0)
        out[name] = ctypes.get_errno() if rc == -1 else "SUCCEEDED"
    # clone with a namespace flag (CLONE_NEWUSER | SIGCHLD)
    ctypes.set_errno(0)
    rc = libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)
    out["clone_newuser"] = ctypes.get_errno() if rc == -1 else "SUCCEEDED"
    if rc == 0:
        os._exit(0)
    for family, proto, name in [(40, 0, "vsock"), (16, 9, "netlink_audit"), (16, 15, "netlink_uevent"), (17, 0, "packet"), (38, 0, "alg")]:
        try:
            socket.socket(family, socket.SOCK_RAW if family in (16, 17) else socket.SOCK_STREAM, proto).close()
            out["socket_" + name] = "SUCCEEDED"
        except OSError as e:
            out["socket_" + name] = e.errno
    return out

def stdlib_tour():
    # What ordinary code does, all of which the allow-list must keep working.
    import asyncio, concurrent.futures, hashlib, json, multiprocessing, select, sqlite3
    import ssl, subprocess, tempfile, threading, zlib
    out = {}
    out["thread"] = []
    t = threading.Thread(target=lambda: out["thread"].append(1)); t.start(); t.join()
    out["subprocess"] = subprocess.run(["/usr/bin/python3", "-c", "print(6*7)"],
                                       capture_output=True, text=True).stdout.strip()
    with multiprocessing.get_context("fork").Pool(2) as pool:
        out["pool"] = pool.map(abs, [-1, -2, -3])
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        out["threads"] = sorted(ex.map(lambda x: x * x, range(4)))
    a, b = socket.socketpair(); a.sendall(b"hi"); out["socketpair"] = b.recv(2).decode()
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
    c = socket.create_connection(srv.getsockname()); conn, _ = srv.accept()
    c.sendall(b"x"); out["select"] = len(select.select([conn], [], [], 5)[0])
    out["tcp"] = conn.recv(1).decode()
    async def main():
        await asyncio.sleep(0.01)
        return "async"
    out["asyncio"] = asyncio.run(main())
    with tempfile.TemporaryDirectory() as d:
        db = sqlite3.connect(os.path.join(d, "x.db")); db.execute("create table t(x)")
        db.execute("insert into t values (1)"); db.commit()
        out["sqlite"] = db.execute("select x from t").fetchone()[0]
    out["ssl"] = ssl.create_default_context().verify_mode == ssl.CERT_REQUIRED
    out["hash"] = hashlib.sha256(zlib.compress(b"a" * 1000)).hexdigest()[:8]
    out["cpus"] = os.cpu_count() > 0
    out["ifaces"] = [name for _, name in socket.if_nameindex()]
    time.sleep(0.01)
    return out

def pin_tcp_memory(cap_mb):
    # Fill socket buffers nobody reads, on many loopback connections: kernel memory outside
    # the process's own pages.
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(512)
    queued, conns, cap = 0, [], cap_mb << 20
    chunk = b"x" * (1 << 20)
    while queued < cap and len(conns) < 400:
        try:
            c = socket.socket()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 20)
            c.connect(srv.getsockname())
            peer, _ = srv.accept()
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
        except OSError:
            break  # out of descriptors: as much as this call can hold
        conns.append((c, peer))
        c.setblocking(False)
        while queued < cap:
            try:
                n = c.send(chunk)
            except (BlockingIOError, OSError):
                break
            if n == 0:
                break
            queued += n
    return queued >> 20

def daemon_traces():
    out = {}
    for path in ["/proc/1/cmdline", "/proc/1/environ", "/proc/1/mountinfo"]:
        try:
            with open(path, "rb") as f:
                out[path] = f.read(300).decode("latin-1")
        except OSError as e:
            out[path] = "denied:%d" % e.errno
    with open("/proc/self/cgroup") as f:
        out["cgroup"] = f.read()
    with open("/proc/self/mountinfo") as f:
        out["mountinfo"] = f.read()
    out["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    # init has the daemon's handlers no more: a signal to it is dropped by the kernel.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP):
        try:
            os.kill(1, sig)
        except OSError as e:
            out["kill_errno"] = e.errno
    time.sleep(0.2)
    out["after_signals"] = "alive"
    return out

def escalate():
    out = {}
    for name, attempt in [
        ("setuid", lambda: os.setuid(0)),
        ("setresuid", lambda: os.setresuid(0, 0, 0)),
        ("setgid", lambda: os.setgid(0)),
        ("setgroups", lambda: os.setgroups([0])),
        ("chown", lambda: os.chown("/tmp", 0, 0)),
        ("sethostname", lambda: socket.sethostname("pwned")),
    ]:
        try:
            attempt()
            out[name] = "SUCCEEDED"
        except OSError as e:
            out[name] = e.errno
    r = subprocess.run(["/usr/bin/su", "root", "-c", "id -u"], capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
    out["su"] = r.returncode
    status = open("/proc/self/status").read()
    out["caps"] = [l.split()[1] for l in status.splitlines() if l.startswith(("CapEff", "CapPrm", "CapAmb"))]
    out["no_new_privs"] = [l.split()[1] for l in status.splitlines() if l.startswith("NoNewPrivs")][0]
    out["uid"] = os.getuid()
    return out

def leave_state(marker):
    MODULE_STATE["calls"] += 1
    for d in ["/tmp", "/dev/shm"]:
        with open(os.path.join(d, marker), "w") as f:
            f.write("left behind")
    return MODULE_STATE["calls"]

def find_state(marker):
    return {
        "tmp": os.path.exists("/tmp/" + marker),
        "shm": os.path.exists("/dev/shm/" + marker),
        "calls": MODULE_STATE["calls"],
    }

def hold_state(marker, seconds):
    leave_state(marker)
    time.sleep(seconds)
    return find_state(marker)

def mounts():
    points = [line.split()[4] for line in open("/proc/self/mountinfo")]
    writable = []
    for d in ["/", "/dev", "/etc", "/code", "/falra", "/usr", "/proc/sys"]:
        try:
            with open(os.path.join(d, "planted"), "w") as f:
                f.write("x")
            writable.append(d)
        except OSError:
            pass
    return {"points": points, "writable": writable}

def processes():
    return sorted(int(p) for p in os.listdir("/proc") if p.isdigit())

def symlink_escape():
    os.symlink("/", "/tmp/root")
    return sorted(os.listdir("/tmp/root"))
"##;

struct Arena {
    d: Daemon,
    evil: String,
    good: String,
    evil_uid: u32,
}

fn arena() -> Arena {
    let d = Daemon::start_with(&[]);
    let evil_repo = GitRepo::with_files(&[("hostile.py", HOSTILE)]);
    let good_repo = GitRepo::with_files(&[("calc.py", "def add(a, b):\n    return a + b\n")]);
    let evil = d.tenant("evil", &evil_repo);
    let good = d.tenant("good", &good_repo);
    let policy = json!({"timeout_ms": 3000, "memory_mb": 128, "pids": 32, "tmp_mb": 8});
    assert_eq!(
        d.admin("PUT", "/tenants/evil/policy", Some(policy)).status,
        200
    );
    let evil_uid = d.admin("GET", "/tenants/evil", None).body["uid"]
        .as_u64()
        .unwrap() as u32;
    Arena {
        d,
        evil,
        good,
        evil_uid,
    }
}

impl Arena {
    fn call(&self, f: &str, kwargs: Value) -> Answer {
        let mut body = kwargs;
        body["token"] = json!(self.evil);
        body["fn"] = json!(format!("hostile.{f}"));
        self.d.call(body)
    }

    fn ok(&self, f: &str, kwargs: Value) -> Value {
        let a = self.call(f, kwargs);
        assert_eq!(a.status, 200, "{f}: {:?}", a.body);
        a.body["result"].clone()
    }

    fn error(&self, f: &str, kwargs: Value, status: u16, code: &str) -> Answer {
        let a = self.call(f, kwargs);
        assert_eq!(a.status, status, "{f}: {:?}", a.body);
        assert_eq!(a.body["error"]["code"], json!(code), "{f}: {:?}", a.body);
        a
    }

    /// Nothing of the hostile tenant runs on the host any more, and the good tenant is served.
    #[track_caller]
    fn contained(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = processes_of(self.evil_uid, self.d.pid());
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the hostile tenant's processes survived: {left:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(self.d.is_alive(), "the daemon died: {}", self.d.log());
        let a = self
            .d
            .call(json!({"token": self.good, "fn": "calc.add", "a": 2, "b": 3}));
        assert_eq!(
            a.body["result"],
            json!(5),
            "the good tenant is not served: {:?}",
            a.body
        );
    }
}

/// Host processes running as `uid` that descend from the daemon `daemon`, with their command
/// lines (other tests' daemons give their first tenants the same uids), leaving out the one
/// child the daemon keeps started for the tenant's next call: a runner still blocked reading
/// its request (exec'd, or forked from the zygote), and the init that waits for it.
fn processes_of(uid: u32, daemon: u32) -> Vec<String> {
    let waiting_runner = |pid: u32| {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        (cmd.contains("/falra/runner.pyc") || cmd.contains("runner.pyc\0--zygote"))
            && wchan.contains("pipe_read")
    };
    let children = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default()
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let path = entry.path();
        let Ok(status) = std::fs::read_to_string(path.join("status")) else {
            continue;
        };
        let owned = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|u| u.parse::<u32>().ok())
            == Some(uid);
        let zombie = status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'));
        let pid: u32 = entry.file_name().to_string_lossy().parse().unwrap_or(0);
        let prepared = waiting_runner(pid)
            || children(pid)
                .split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<u32>>()
                .as_slice()
                .first()
                .is_some_and(|&c| {
                    children(pid).split_whitespace().count() == 1 && waiting_runner(c)
                });
        if owned && !zombie && !prepared && descends_from(pid, daemon) {
            let cmd = std::fs::read(path.join("cmdline")).unwrap_or_default();
            out.push(String::from_utf8_lossy(&cmd).replace('\0', " "));
        }
    }
    out
}

pub fn parent_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("PPid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
}

pub fn descends_from(mut pid: u32, ancestor: u32) -> bool {
    for _ in 0..64 {
        match parent_of(pid) {
            Some(p) if p == ancestor => return true,
            Some(p) if p > 1 => pid = p,
            _ => return false,
        }
    }
    false
}

fn host_has_cmdline(marker: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(marker))
            .unwrap_or(false)
    })
}

fn marker() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "600.{}{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

#[test]
fn fork_bomb_stops_at_the_pids_limit() {
    let mut a = arena();
    let r = a.ok("fork_bomb", json!({}));
    assert_eq!(r["errno"], json!(11), "{r}"); // EAGAIN
    assert!(r["children"].as_u64().unwrap() < 32, "{r}");
    a.contained();
}

#[test]
fn thread_bomb_stops_at_the_pids_limit() {
    let mut a = arena();
    let r = a.ok("thread_bomb", json!({}));
    assert!(r["threads"].as_u64().unwrap() < 32, "{r}");
    a.contained();
}

#[test]
fn memory_bombs_are_killed_in_their_limit() {
    let mut a = arena();
    let e = a.error("memory_bomb", json!({}), 422, "memory_limit_exceeded");
    assert_eq!(e.body["error"]["detail"]["memory_mb"], json!(128));
    a.error("memory_one_block", json!({}), 422, "memory_limit_exceeded");
    a.contained();
}

#[test]
fn a_full_tmp_is_the_functions_error() {
    let mut a = arena();
    for path in ["/tmp/fill", "/dev/shm/fill"] {
        let e = a.error("disk_bomb", json!({"path": path}), 422, "function_error");
        assert_eq!(
            e.body["error"]["detail"]["type"],
            json!("OSError"),
            "{:?}",
            e.body
        );
        assert!(
            e.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("No space left"),
            "{:?}",
            e.body
        );
    }
    a.contained();
}

#[test]
fn spinning_sleeping_and_stopped_calls_time_out() {
    let mut a = arena();
    for f in ["spin", "nap", "stop_self"] {
        let started = Instant::now();
        a.error(f, json!({}), 504, "timeout");
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{f} took {:?}",
            started.elapsed()
        );
    }
    a.contained();
}

#[test]
fn host_files_the_store_and_other_tenants_are_out_of_sight() {
    let mut a = arena();
    let data = a.d.data_dir.display().to_string();
    for path in [
        format!("{data}/falra.db"),
        format!("{data}/versions/good"),
        format!("{data}/github/git_good/calc.py"),
        "/etc/shadow".to_owned(),
        "/root/.bash_history".to_owned(),
        "/proc/1/environ".to_owned(),
        "/proc/1/mem".to_owned(),
        "/sys/kernel/notes".to_owned(),
        "/dev/vda".to_owned(),
    ] {
        let r = a.ok("read", json!({"path": path}));
        assert!(r.as_str().unwrap().starts_with("denied:"), "{path}: {r}");
    }
    let root = a.ok("listdir", json!({"path": "/"}));
    assert_eq!(
        root,
        json!(["bin", "code", "dev", "etc", "falra", "lib", "lib64", "proc", "sbin", "tmp", "usr"])
    );
    let etc = a.ok("listdir", json!({"path": "/etc"}));
    for unexpected in ["shadow", "sudoers", "ssh"] {
        assert!(
            !etc.as_array().unwrap().contains(&json!(unexpected)),
            "{etc}"
        );
    }
    // The host's /tmp, where test repositories live, is not the call's /tmp.
    assert_eq!(a.ok("listdir", json!({"path": "/tmp"})), json!([]));
    a.contained();
}

#[test]
fn the_daemons_environment_stays_with_the_daemon() {
    let mut a = arena();
    let env = a.ok("environment", json!({}));
    let keys: Vec<&str> = env
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["PATH", "LANG", "LC_ALL", "HOME", "TMPDIR"], "{env}");
    let r = a.ok("read", json!({"path": "/proc/self/environ"}));
    assert!(!r.as_str().unwrap().contains("FALRA"), "{r}");
    a.contained();
}

#[test]
fn no_network_but_its_own_loopback() {
    let mut a = arena();
    let port: u16 = a.d.url.rsplit(':').next().unwrap().parse().unwrap();
    let r = a.ok("connect", json!({"port": port}));
    assert_eq!(
        r,
        json!("refused:111"),
        "the daemon's port is reachable: {r}"
    );
    assert_eq!(a.ok("interfaces", json!({})), json!(["lo"]));
    a.contained();
}

#[test]
fn code_and_system_are_read_only() {
    let mut a = arena();
    let r = a.ok("write_code", json!({}));
    for (path, result) in r.as_object().unwrap() {
        assert_ne!(result, &json!("WROTE"), "{path} was writable");
    }
    a.contained();
}

#[test]
fn processes_that_try_to_outlive_the_call_do_not() {
    let mut a = arena();
    let m = marker();
    assert_eq!(
        a.ok("double_fork", json!({"marker": m})),
        json!("parent done")
    );
    a.contained();
    assert!(
        !host_has_cmdline(&m),
        "a double-forked process outlived its call"
    );
    let m = marker();
    assert_eq!(
        a.ok("thread_after_answer", json!({"marker": m})),
        json!("answered")
    );
    a.contained();
}

#[test]
fn killing_its_parent_hurts_nobody() {
    let mut a = arena();
    assert_eq!(a.ok("kill_parent", json!({})), json!("still alive"));
    a.contained();
}

#[test]
fn forged_or_corrupted_answers_are_not_believed() {
    let mut a = arena();
    let e = a.error("forge_answer", json!({}), 422, "process_exited");
    assert!(e.body.get("result").is_none());
    a.error("corrupt_answer", json!({}), 422, "process_exited");
    let e = a.error("exit_silently", json!({}), 422, "process_exited");
    assert_eq!(e.body["error"]["detail"]["exit_code"], json!(0));
    a.contained();
}

#[test]
fn huge_output_is_capped() {
    let mut a = arena();
    let r = a.call("huge_stdout", json!({}));
    assert_eq!(r.body["result"], json!("done"), "{:?}", r.body["error"]);
    assert!(r.body["logs"].as_str().unwrap().len() < 70 << 10);
    a.contained();
}

#[test]
fn dangerous_syscalls_and_sockets_are_denied() {
    let mut a = arena();
    let r = a.ok("syscalls", json!({}));
    for (name, result) in r.as_object().unwrap() {
        let expected = match name.as_str() {
            "clone3" => json!(38), // ENOSYS: libc falls back to clone
            _ => json!(1),         // EPERM
        };
        assert_eq!(result, &expected, "{name}: {r}");
    }
    a.contained();
}

#[test]
fn ordinary_standard_library_code_still_works_under_the_allow_list() {
    let mut a = arena();
    let r = a.ok("stdlib_tour", json!({}));
    assert_eq!(r["thread"], json!([1]), "{r}");
    assert_eq!(r["subprocess"], json!("42"), "{r}");
    assert_eq!(r["pool"], json!([1, 2, 3]), "{r}");
    assert_eq!(r["threads"], json!([0, 1, 4, 9]), "{r}");
    assert_eq!(r["socketpair"], json!("hi"), "{r}");
    assert_eq!(r["tcp"], json!("x"), "{r}");
    assert_eq!(r["select"], json!(1), "{r}");
    assert_eq!(r["asyncio"], json!("async"), "{r}");
    assert_eq!(r["sqlite"], json!(1), "{r}");
    assert_eq!(r["ssl"], json!(true), "{r}");
    assert_eq!(r["cpus"], json!(true), "{r}");
    assert_eq!(r["ifaces"], json!(["lo"]), "{r}");
    a.contained();
}

#[test]
fn socket_buffers_are_held_to_the_memory_limit() {
    let mut a = arena();
    // The arena's memory limit is 128 MB; unread socket buffers may not pin much more.
    let pinned = a.ok("pin_tcp_memory", json!({"cap_mb": 512}));
    let pinned = pinned.as_u64().unwrap();
    assert!(
        pinned < 200,
        "{pinned} MB of TCP buffers pinned under a 128 MB limit"
    );
    a.contained();
}

#[test]
fn the_call_learns_nothing_of_the_daemon_and_cannot_signal_its_init() {
    let mut a = arena();
    let r = a.ok("daemon_traces", json!({}));
    let text = r.to_string();
    assert!(!text.contains("--data-dir"), "{r}");
    assert!(!text.contains("serve"), "{r}");
    for path in ["/proc/1/cmdline", "/proc/1/environ", "/proc/1/mountinfo"] {
        assert!(
            r[path].as_str().unwrap().starts_with("denied:"),
            "{path} readable: {r}"
        );
    }
    // The call's own mount table names no host path of the daemon's: not its data directory
    // (where the code, the virtualenv and the runner live), not the mount point of its roots.
    let mountinfo = r["mountinfo"].as_str().unwrap();
    let data_dir = a.d.data_dir.canonicalize().unwrap();
    for line in mountinfo.lines() {
        assert!(
            !line.contains(data_dir.to_str().unwrap())
                && !line.contains("/versions/")
                && !line.contains("/tenants/"),
            "host path in the call's mountinfo: {line}"
        );
    }
    for point in ["/code", "/falra"] {
        assert!(
            mountinfo
                .lines()
                .any(|l| l.split(' ').nth(4) == Some(point)),
            "{point} not mounted: {mountinfo}"
        );
    }
    // The cgroup namespace is rooted at the call's own cgroup.
    for line in r["cgroup"].as_str().unwrap().lines() {
        assert!(line.ends_with(":/"), "cgroup path shown: {line}");
    }
    assert!(!r["pids"].as_array().unwrap().contains(&json!(1)), "{r}");
    assert_eq!(r["after_signals"], json!("alive"));
    a.contained();
}

#[test]
fn privileges_cannot_be_regained() {
    let mut a = arena();
    let r = a.ok("escalate", json!({}));
    for name in [
        "setuid",
        "setresuid",
        "setgid",
        "setgroups",
        "chown",
        "sethostname",
    ] {
        assert_eq!(r[name], json!(1), "{name}: {r}");
    }
    assert_ne!(r["su"], json!(0), "{r}");
    assert_eq!(
        r["caps"],
        json!(["0000000000000000", "0000000000000000", "0000000000000000"]),
        "{r}"
    );
    assert_eq!(r["no_new_privs"], json!("1"));
    assert_eq!(r["uid"], json!(a.evil_uid));
    a.contained();
}

#[test]
fn nothing_is_left_for_the_next_call() {
    let mut a = arena();
    let m = marker();
    assert_eq!(a.ok("leave_state", json!({"marker": m})), json!(1));
    assert_eq!(
        a.ok("leave_state", json!({"marker": m})),
        json!(1),
        "module globals carried over"
    );
    assert_eq!(
        a.ok("find_state", json!({"marker": m})),
        json!({"tmp": false, "shm": false, "calls": 0})
    );
    a.contained();
}

#[test]
fn concurrent_calls_of_one_tenant_share_nothing_they_can_write() {
    let mut a = arena();
    let m = marker();
    let mut body = json!({"marker": m, "seconds": 1.5});
    body["token"] = json!(a.evil);
    body["fn"] = json!("hostile.hold_state");
    let holder = a.d.call_in_background(body);
    std::thread::sleep(Duration::from_millis(500));
    // While the first call holds its files, a second call of the same version sees none.
    assert_eq!(
        a.ok("find_state", json!({"marker": m})),
        json!({"tmp": false, "shm": false, "calls": 0})
    );
    let held = holder.join().unwrap();
    assert_eq!(
        held.body["result"],
        json!({"tmp": true, "shm": true, "calls": 1}),
        "{:?}",
        held.body
    );
    // Every call's root is made the same way: one /tmp, /dev/shm and /proc of its own, nothing
    // stacked beneath them, and nothing else writable.
    let r = a.ok("mounts", json!({}));
    let points: Vec<&str> = r["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    for own in ["/tmp", "/dev/shm", "/proc"] {
        assert_eq!(
            points.iter().filter(|p| **p == own).count(),
            1,
            "{own} in {points:?}"
        );
    }
    assert_eq!(
        points.iter().filter(|p| **p == "/").count(),
        1,
        "{points:?}"
    );
    assert_eq!(r["writable"], json!([]));
    a.contained();
}

#[test]
fn a_call_sees_only_its_own_processes_and_its_own_root() {
    let mut a = arena();
    let pids = a.ok("processes", json!({}));
    assert!(pids.as_array().unwrap().len() <= 3, "{pids}");
    let r = a.ok("symlink_escape", json!({}));
    assert!(
        r.as_array().unwrap().contains(&json!("code")),
        "a symlink to / leads to the host: {r}"
    );
    a.contained();
}

#[test]
fn an_attack_on_every_front_at_once_leaves_the_neighbour_served() {
    let mut a = arena();
    let evil = a.evil.clone();
    let url = a.d.url.clone();
    let attackers: Vec<_> = [
        "spin",
        "fork_bomb",
        "memory_bomb",
        "nap",
        "spin",
        "thread_bomb",
    ]
    .into_iter()
    .map(|f| {
        let (evil, url) = (evil.clone(), url.clone());
        std::thread::spawn(move || {
            let body = json!({"token": evil, "fn": format!("hostile.{f}")}).to_string();
            falra_tests::http(
                "POST",
                &format!("{url}/v1/call"),
                &[],
                Some(body.as_bytes()),
            )
            .status
        })
    })
    .collect();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        let r =
            a.d.call(json!({"token": a.good, "fn": "calc.add", "a": 1, "b": 1}));
        assert_eq!(r.body["result"], json!(2), "{:?}", r.body);
    }
    for t in attackers {
        let status = t.join().unwrap();
        assert!(
            [200, 422, 504].contains(&status),
            "an attack got HTTP {status}"
        );
    }
    a.contained();
}
