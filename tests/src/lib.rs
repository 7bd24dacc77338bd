//! The end-to-end harness: start the real `falra` binary on a free port with its own data
//! directory, make real git repositories for tenants, and talk HTTP to it.
//!
//! Nothing here is faked: the binary is the one `cargo build` produced (in the same profile as
//! the tests), git repositories are made by the `git` command and fetched over `file://`.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub mod hosts;

/// The `falra` binary: `$FALRA_BIN`, or the one beside this test binary's profile directory.
pub fn falra_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FALRA_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test binary has a path");
    // target/<profile>/deps/<test> -> target/<profile>/falra
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps");
    let bin = profile_dir.join("falra");
    assert!(
        bin.is_file(),
        "{} is missing: build it first (cargo build --release -p falra)",
        bin.display()
    );
    bin
}

/// Polls `check` every 100 ms until it holds; fails the test after `limit`.
pub fn eventually(what: &str, limit: Duration, check: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A fresh, empty database in the test PostgreSQL cluster (`FALRA_TEST_DATABASE_URL`, which
/// `scripts/with-postgres.sh` starts and the test command sets), as a URL.
pub fn postgres_database() -> String {
    let base = std::env::var("FALRA_TEST_DATABASE_URL").expect(
        "FALRA_TEST_DATABASE_URL is not set: run the tests through `bash scripts/with-postgres.sh \
         cargo test …` (scripts/test.sh does)",
    );
    let mut id = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut id))
        .expect("read /dev/urandom");
    let db = format!("falra_e2e_{}", hex::encode(id));
    let psql = [
        "/usr/lib/postgresql/17/bin",
        "/usr/lib/postgresql/16/bin",
        "/usr/lib/postgresql/15/bin",
    ]
    .iter()
    .map(|d| Path::new(d).join("psql"))
    .find(|p| p.is_file())
    .unwrap_or_else(|| PathBuf::from("psql"));
    let out = Command::new(psql)
        .arg(&base)
        .args([
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            &format!("CREATE DATABASE {db}"),
        ])
        .output()
        .expect("run psql");
    assert!(out.status.success(), "create database: {out:?}");
    let (prefix, _) = base.rsplit_once('/').expect("a database URL ends in /<db>");
    format!("{prefix}/{db}")
}

/// An HTTP answer: status, headers of interest, JSON body (or the raw text as a JSON string).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<String>,
}

/// Sends one HTTP request; 4xx/5xx are answers, not errors.
pub fn http(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Answer {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    let mut req = agent.request(method, url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let result = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: transport error: {e}"),
    };
    let status = response.status();
    let retry_after = response.header("retry-after").map(str::to_owned);
    let mut text = String::new();
    response
        .into_reader()
        .take(64 << 20)
        .read_to_string(&mut text)
        .expect("answer is UTF-8");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        body,
        retry_after,
    }
}

/// Every serve option has a FALRA_* variable: none of the developer's reaches a test's daemon
/// (or its `admin init`) unless the test passes it.
fn without_developer_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("FALRA_") {
            command.env_remove(key);
        }
    }
}

/// A running daemon with its own data directory, stopped on drop.
pub struct Daemon {
    pub url: String,
    pub admin_token: String,
    pub data_dir: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::start_with(&[])
    }

    /// Starts `falra serve` with extra arguments, after `falra admin init`.
    pub fn start_with(extra: &[&str]) -> Daemon {
        Daemon::start_under(&[], extra)
    }

    /// Starts `falra serve` through a wrapper command that execs it (`prlimit --nofile=…`),
    /// so the daemon keeps the wrapper's process id.
    pub fn start_under(wrapper: &[&str], extra: &[&str]) -> Daemon {
        Daemon::start_full(wrapper, extra, &[], "127.0.0.1:0")
    }

    /// Starts `falra serve` as a node of a cluster: `falra admin init` and `serve` both get
    /// `envs` (`FALRA_DATABASE_URL`, `FALRA_SECRET_KEY_FILE`); the data directory is its own.
    pub fn start_node(envs: &[(&str, &str)], extra: &[&str]) -> Daemon {
        Daemon::start_full(&[], extra, envs, "127.0.0.1:0")
    }

    /// Starts a node of a cluster as a host of its own: through `wrapper` (which enters the
    /// host's network namespace and execs the daemon), listening on `listen`.
    pub fn start_host(
        wrapper: &[&str],
        listen: &str,
        envs: &[(&str, &str)],
        extra: &[&str],
    ) -> Daemon {
        Daemon::start_full(wrapper, extra, envs, listen)
    }

    fn start_full(wrapper: &[&str], extra: &[&str], envs: &[(&str, &str)], listen: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data");
        let mut init = Command::new(falra_bin());
        without_developer_env(&mut init);
        let out = init
            // Each node of a shared store makes its own operator token.
            .args(["admin", "init", "--force", "--data-dir"])
            .arg(&data_dir)
            .envs(envs.iter().copied())
            .env("FALRA_LOG", "warn")
            .output()
            .expect("run falra admin init");
        assert!(out.status.success(), "admin init failed: {out:?}");
        let admin_token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert!(admin_token.starts_with("flr_"), "{admin_token}");

        // Port 0: the daemon picks a free port itself and logs it, so two tests can never race
        // for the same port (and talk to each other's daemon).
        let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(falra_bin());
                c
            }
            None => Command::new(falra_bin()),
        };
        without_developer_env(&mut command);
        let child = command
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(&data_dir)
            .args(extra)
            .envs(envs.iter().copied())
            .env("FALRA_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start falra serve");
        let mut daemon = Daemon {
            url: String::new(),
            admin_token,
            data_dir,
            child,
            _dir: dir,
        };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("falra serve exited early ({status}): {}", self.log());
            }
            if self.url.is_empty() {
                match self.listening_on() {
                    Some(addr) => self.url = format!("http://{addr}"),
                    None => {
                        std::thread::sleep(Duration::from_millis(25));
                        continue;
                    }
                }
            }
            let up = ureq::get(&format!("{}/healthz", self.url))
                .timeout(Duration::from_millis(500))
                .call()
                .is_ok();
            if up {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("falra serve did not become ready: {}", self.log());
    }

    /// The address the daemon's log says it listens on.
    fn listening_on(&self) -> Option<String> {
        let log = self.log();
        let line = log.lines().find(|l| l.contains("falra listening"))?;
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))?;
        Some(addr.to_owned())
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// This node's id in the store, as `GET /admin/v1/nodes` lists it.
    pub fn node_id(&self) -> String {
        self.admin("GET", "/nodes", None).body["nodes"]
            .as_array()
            .expect("a list of nodes")
            .iter()
            .find(|n| n["this"] == true)
            .and_then(|n| n["id"].as_str())
            .expect("the node lists itself")
            .to_owned()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the daemon outright (SIGKILL, as `kill -9`) and waits until it is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the daemon process is still running.
    pub fn is_alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Runs the command line against this daemon with its operator token, stdin closed.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(falra_bin())
            .args(args)
            .args(["--url", &self.url])
            .env("FALRA_ADMIN_TOKEN", &self.admin_token)
            .env_remove("FALRA_TOKEN")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("the falra binary runs")
    }

    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        let auth = format!("Bearer {}", self.admin_token);
        let bytes = body.map(|b| b.to_string().into_bytes());
        http(
            method,
            &format!("{}/admin/v1{path}", self.url),
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            bytes.as_deref(),
        )
    }

    /// `POST /v1/call` on a thread of its own, for a call that is to be in flight meanwhile.
    pub fn call_in_background(&self, body: Value) -> std::thread::JoinHandle<Answer> {
        let url = format!("{}/v1/call", self.url);
        std::thread::spawn(move || http("POST", &url, &[], Some(body.to_string().as_bytes())))
    }

    /// `GET path` with no token.
    pub fn http_get(&self, path: &str) -> Answer {
        http("GET", &format!("{}{path}", self.url), &[], None)
    }

    /// `POST /v1/call` with a JSON body.
    pub fn call(&self, body: Value) -> Answer {
        self.post("/v1/call", &[], body.to_string().as_bytes())
    }

    /// A request on the tenant side, with `token` as the Bearer token.
    pub fn with_token(&self, method: &str, path: &str, token: &str, body: Option<&[u8]>) -> Answer {
        let auth = format!("Bearer {token}");
        http(
            method,
            &format!("{}{path}", self.url),
            &[("Authorization", &auth)],
            body,
        )
    }

    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        http("POST", &format!("{}{path}", self.url), headers, Some(body))
    }

    /// Creates a tenant whose code is `repo`, syncs it (activating it even when some of its
    /// modules fail to import: many suites test exactly those), and returns a `call` token.
    pub fn tenant(&self, name: &str, repo: &GitRepo) -> String {
        let a = self.admin(
            "POST",
            "/tenants",
            Some(json!({"name": name, "repo": repo.url(), "branch": "main"})),
        );
        assert_eq!(a.status, 201, "create tenant: {:?}", a.body);
        self.sync(name);
        self.token(name, &["call"])
    }

    /// Syncs the tenant with `?force=true` (see [`Daemon::tenant`]).
    pub fn sync(&self, name: &str) -> String {
        let a = self.admin("POST", &format!("/tenants/{name}/sync?force=true"), None);
        assert_eq!(a.status, 200, "sync: {:?}", a.body);
        a.body["version"].as_str().unwrap().to_owned()
    }

    pub fn token(&self, tenant: &str, scopes: &[&str]) -> String {
        let a = self.admin(
            "POST",
            &format!("/tenants/{tenant}/tokens"),
            Some(json!({ "scopes": scopes })),
        );
        assert_eq!(a.status, 201, "issue token: {:?}", a.body);
        a.body["token"].as_str().unwrap().to_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A helper service for a test (an HTTP server, an S3 server, a git server) on a port of its
/// own; killed on drop.
pub struct Service {
    child: Child,
    pub port: u16,
}

impl Service {
    /// Starts the command `make` builds for a free port, and waits until that port answers.
    pub fn start(make: impl FnOnce(u16) -> Command) -> Service {
        let port = free_port();
        let mut cmd = make(port);
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let service = Service { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "{cmd:?} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        service
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `python3 -m http.server` serving `dir`.
pub fn static_files(dir: &Path) -> Service {
    Service::start(|port| {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .arg("--directory")
            .arg(dir);
        cmd
    })
}

/// A git smart-HTTP server (`git http-backend`) serving the repositories under `root`, behind
/// HTTP Basic authentication with `user` and `password`.
pub fn git_http_server(root: &Path, user: &str, password: &str) -> Service {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/git_http_server.py");
    Service::start(|port| {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(&script)
            .arg(root)
            .arg(port.to_string())
            .args([user, password]);
        cmd
    })
}

/// Every regular file below `dir` (symlinks are not followed).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(p) = pending.pop() {
        let Ok(meta) = p.symlink_metadata() else {
            continue;
        };
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                pending.push(e.path());
            }
        } else if meta.is_file() {
            out.push(p);
        }
    }
    out
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A real git repository on disk, reachable as a `file://` remote.
pub struct GitRepo {
    dir: tempfile::TempDir,
}

impl GitRepo {
    /// A repository on branch `main` with one commit holding `files`.
    pub fn with_files(files: &[(&str, &str)]) -> GitRepo {
        let repo = GitRepo {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        repo.git(&["init", "-q", "-b", "main"]);
        repo.commit(files);
        repo
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.dir.path().display())
    }

    /// Writes `files` and commits them.
    pub fn commit(&self, files: &[(&str, &str)]) {
        for (name, content) in files {
            let path = self.dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", "change"]);
    }

    /// The commit `HEAD` is at, in full.
    pub fn head(&self) -> String {
        let out = Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(self.dir.path())
            .output()
            .expect("run git");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    pub fn git(&self, args: &[&str]) {
        let out = Command::new("git")
            .args(["-c", "user.name=test", "-c", "user.email=test@localhost"])
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run git");
        assert!(out.status.success(), "git {args:?}: {out:?}");
    }
}

/// A TCP relay to `target` that a test can cut and restore: a network link between a node and
/// its database that goes down (every connection through it reset, none accepted) and comes
/// back. Stops when dropped.
pub struct Relay {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Relay {
    pub fn start(target: std::net::SocketAddr) -> Relay {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let (c, s, o) = (Arc::clone(&cut), Arc::clone(&stop), Arc::clone(&open));
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) if !c.load(Ordering::Relaxed) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(upstream) = std::net::TcpStream::connect(target) else {
                            continue;
                        };
                        let mut kept = o.lock().unwrap();
                        for (mut from, mut to) in [
                            (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                            (upstream.try_clone().unwrap(), client.try_clone().unwrap()),
                        ] {
                            std::thread::spawn(move || {
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                            });
                        }
                        kept.extend([client, upstream]);
                    }
                    // Cut: a connection attempt is refused at once.
                    Ok((client, _)) => drop(client),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Relay {
            port,
            cut,
            stop,
            open,
        }
    }

    /// The link goes down: every relayed connection is reset and new ones are refused.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Relaxed);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// The link is back.
    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.cut();
    }
}
