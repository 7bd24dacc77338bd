//! Hosts the tests make: network namespaces on a bridge of their own, and a PostgreSQL cluster
//! of their own reachable on that bridge.
//!
//! Every address is in 198.18.0.0/15 (set aside for benchmarks), on a bridge with no route off
//! the machine: the root namespace holds `198.18.N.1` (where PostgreSQL listens), host `i` is
//! `198.18.N.(10 + i)` in its own namespace. Everything made is removed when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs a command that must succeed.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn random_bytes<const N: usize>() -> [u8; N] {
    use std::io::Read;
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    b
}

/// Hosts in network namespaces on one bridge.
pub struct Hosts {
    tag: String,
    subnet: u8,
    count: usize,
}

impl Hosts {
    /// `count` namespaces on a fresh bridge in a /24 no other interface of this machine uses.
    pub fn new(count: usize) -> Hosts {
        let tag = hex::encode(random_bytes::<3>());
        let used = String::from_utf8(
            Command::new("ip")
                .args(["-4", "-o", "addr"])
                .output()
                .expect("ip addr")
                .stdout,
        )
        .unwrap();
        let subnet = (0..64)
            .map(|i| random_bytes::<1>()[0].wrapping_add(i))
            .find(|n| !used.contains(&format!("198.18.{n}.")))
            .expect("a free /24 in 198.18.0.0/16");
        let hosts = Hosts { tag, subnet, count };
        let bridge = hosts.bridge();
        run("ip", &["link", "add", &bridge, "type", "bridge"]);
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", hosts.gateway()),
                "dev",
                &bridge,
            ],
        );
        run("ip", &["link", "set", &bridge, "up"]);
        for i in 0..count {
            let (ns, outside, inside) = (hosts.ns(i), hosts.outside(i), hosts.inside(i));
            run("ip", &["netns", "add", &ns]);
            run(
                "ip",
                &[
                    "link", "add", &outside, "type", "veth", "peer", "name", &inside,
                ],
            );
            run("ip", &["link", "set", &inside, "netns", &ns]);
            run("ip", &["link", "set", &outside, "master", &bridge, "up"]);
            let addr = format!("{}/24", hosts.addr(i));
            run("ip", &["-n", &ns, "addr", "add", &addr, "dev", &inside]);
            run("ip", &["-n", &ns, "link", "set", &inside, "up"]);
            run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        }
        hosts
    }

    fn bridge(&self) -> String {
        format!("flb{}", self.tag)
    }

    fn ns(&self, i: usize) -> String {
        format!("falra-{}-{i}", self.tag)
    }

    fn outside(&self, i: usize) -> String {
        format!("flo{}{i}", self.tag)
    }

    fn inside(&self, i: usize) -> String {
        format!("fli{}{i}", self.tag)
    }

    /// The root namespace's address on the bridge.
    pub fn gateway(&self) -> String {
        format!("198.18.{}.1", self.subnet)
    }

    /// Host `i`'s address.
    pub fn addr(&self, i: usize) -> String {
        format!("198.18.{}.{}", self.subnet, 10 + i)
    }

    /// The bridge's network, as `a.b.c.d/24`.
    pub fn network(&self) -> String {
        format!("198.18.{}.0/24", self.subnet)
    }

    /// A command prefix that runs a program in host `i`'s network namespace (and nothing else
    /// of it changed: the program keeps the machine's mounts and cgroups), exec'ing it.
    pub fn wrapper(&self, i: usize) -> Vec<String> {
        vec!["nsenter".into(), format!("--net=/run/netns/{}", self.ns(i))]
    }

    /// Host `i`'s link goes down: it reaches nothing, and nothing reaches it.
    pub fn link_down(&self, i: usize) {
        run(
            "ip",
            &["-n", &self.ns(i), "link", "set", &self.inside(i), "down"],
        );
    }

    pub fn link_up(&self, i: usize) {
        run(
            "ip",
            &["-n", &self.ns(i), "link", "set", &self.inside(i), "up"],
        );
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for i in 0..self.count {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(i)])
                .status();
            let _ = Command::new("ip")
                .args(["link", "del", &self.outside(i)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .status();
    }
}

/// A PostgreSQL cluster of the test's own (`initdb` + `pg_ctl` in a temporary directory, as
/// `nobody`), which the test may stop and start. Removed when dropped.
pub struct PgCluster {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
}

fn pg_bin() -> PathBuf {
    ["17", "16", "15"]
        .iter()
        .map(|v| PathBuf::from(format!("/usr/lib/postgresql/{v}/bin")))
        .find(|d| d.join("initdb").is_file())
        .expect("no PostgreSQL server binaries (run scripts/install-deps.sh)")
}

impl PgCluster {
    /// Listens on 127.0.0.1 and `listen` (an address of this machine), trusting clients from
    /// `network` (`a.b.c.d/n`) as well as loopback.
    pub fn start(listen: &str, network: &str) -> PgCluster {
        let dir =
            std::env::temp_dir().join(format!("falra-pg-{}", hex::encode(random_bytes::<6>())));
        std::fs::create_dir(&dir).unwrap();
        run("chown", &["nobody", dir.to_str().unwrap()]);
        let bin = pg_bin();
        let port = crate::free_port();
        let cluster = PgCluster { dir, bin, port };
        cluster.as_owner(
            "initdb",
            &[
                "-D",
                &cluster.data(),
                "-U",
                "falra",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
        );
        let hba = Path::new(&cluster.data()).join("pg_hba.conf");
        let mut text = std::fs::read_to_string(&hba).unwrap();
        text.push_str(&format!("host all all {network} trust\n"));
        std::fs::write(&hba, text).unwrap();
        std::fs::write(
            Path::new(&cluster.data()).join("postgresql.auto.conf"),
            format!(
                "port = {port}\nlisten_addresses = '127.0.0.1,{listen}'\nfsync = off\n\
                 max_connections = 200\nunix_socket_directories = '{}'\n",
                cluster.dir.display()
            ),
        )
        .unwrap();
        cluster.start_again();
        cluster
    }

    fn data(&self) -> String {
        self.dir.join("data").to_str().unwrap().to_owned()
    }

    fn as_owner(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program);
        let mut all = vec!["-u", "nobody", "--", program.to_str().unwrap()];
        all.extend_from_slice(args);
        run("runuser", &all);
    }

    /// `postgres://falra@<host>:<port>/postgres`.
    pub fn url(&self, host: &str) -> String {
        format!("postgres://falra@{host}:{}/postgres", self.port)
    }

    /// Stops the server at once (connections dropped, as in a crash).
    pub fn stop(&self) {
        let log = self.dir.join("server.log");
        self.as_owner(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                log.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// Starts the server (again), waiting until it accepts connections.
    pub fn start_again(&self) {
        let log = self.dir.join("server.log");
        self.as_owner(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "PostgreSQL did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let program = self.bin.join("pg_ctl");
        let _ = Command::new("runuser")
            .args(["-u", "nobody", "--"])
            .arg(program)
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
