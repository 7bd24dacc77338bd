//! Running falra for real: a config file beside the flags and FALRA_* variables, a grace
//! period at shutdown that a second signal cuts short, the systemd unit, and the command
//! line's completions; against the real binary.

use std::process::Command;
use std::time::{Duration, Instant};

use falra_tests::{falra_bin, Daemon, GitRepo};
use serde_json::json;

/// Waits for the daemon to exit, at most `limit`.
fn wait_exit(d: &mut Daemon, limit: Duration) {
    let deadline = Instant::now() + limit;
    while d.is_alive() {
        assert!(
            Instant::now() < deadline,
            "the daemon did not exit: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name} {pid}");
}

#[test]
fn a_config_file_sets_serve_options_and_flags_win_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("falra.toml");
    std::fs::write(&config, "max_body_bytes = 200\nkeep-versions = 3\n").unwrap();
    let config = config.to_str().unwrap();
    let d = Daemon::start_with(&["--config", config]);
    let token = d.tenant(
        "caro",
        &GitRepo::with_files(&[("m.py", "def f(**k):\n    return 1\n")]),
    );
    let big = json!({"token": token, "fn": "m.f", "pad": "x".repeat(400)});
    assert_eq!(d.call(big.clone()).status, 413, "the file's limit holds");
    let small = json!({"token": token, "fn": "m.f"});
    assert_eq!(d.call(small).status, 200);

    let d = Daemon::start_with(&["--config", config, "--max-body-bytes", "100000"]);
    let token = d.tenant(
        "caro",
        &GitRepo::with_files(&[("m.py", "def f(**k):\n    return 1\n")]),
    );
    let mut big = big;
    big["token"] = json!(token);
    assert_eq!(d.call(big).status, 200, "the flag wins over the file");

    // A typo or a bad value is refused before anything starts, naming it.
    for (text, named) in [
        ("max_childs = 3\n", "max_childs"),
        ("max-children = \"many\"\n", "max-children"),
        ("listen = [1, {a = 2}]\n", "listen"),
    ] {
        std::fs::write(dir.path().join("bad.toml"), text).unwrap();
        let out = Command::new(falra_bin())
            .args(["serve", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(dir.path().join("bad.toml"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(named), "{text}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    let out = Command::new(falra_bin())
        .args(["serve", "--config", "/nonexistent/falra.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/falra.toml"));
}

const SLOW: &str = "import time\n\ndef wait(s):\n    time.sleep(s)\n    return s\n";

#[test]
fn shutdown_lets_calls_finish_within_the_grace_and_stops_the_rest() {
    // A call that ends within the grace period gets its answer.
    let mut d = Daemon::start_with(&["--shutdown-grace", "20"]);
    let token = d.tenant("caro", &GitRepo::with_files(&[("slow.py", SLOW)]));
    let call = d.call_in_background(json!({"token": token, "fn": "slow.wait", "s": 2}));
    std::thread::sleep(Duration::from_millis(700));
    signal(d.pid(), "TERM");
    let answer = call.join().unwrap();
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["result"], 2);
    wait_exit(&mut d, Duration::from_secs(20));

    // One that would outlast it is stopped at the deadline.
    let mut d = Daemon::start_with(&["--shutdown-grace", "2"]);
    let token = d.tenant("caro", &GitRepo::with_files(&[("slow.py", SLOW)]));
    let call = d.call_in_background(json!({"token": token, "fn": "slow.wait", "s": 60}));
    std::thread::sleep(Duration::from_millis(700));
    let sent = Instant::now();
    signal(d.pid(), "TERM");
    // Answered, not cut off: the node is shutting down, with what the call used.
    let answer = call.join().unwrap();
    assert_eq!(answer.status, 503, "{:?}", answer.body);
    assert_eq!(answer.body["error"]["code"], "shutting_down");
    assert!(
        answer.body["usage"]["wall_ms"].as_u64().unwrap() >= 1500,
        "{:?}",
        answer.body
    );
    wait_exit(&mut d, Duration::from_secs(30));
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(15),
        "{took:?}"
    );

    // A second signal does not wait for the grace period.
    let mut d = Daemon::start_with(&["--shutdown-grace", "600"]);
    let token = d.tenant("caro", &GitRepo::with_files(&[("slow.py", SLOW)]));
    let _call = d.call_in_background(json!({"token": token, "fn": "slow.wait", "s": 60}));
    std::thread::sleep(Duration::from_millis(700));
    let sent = Instant::now();
    signal(d.pid(), "TERM");
    std::thread::sleep(Duration::from_millis(500));
    assert!(d.is_alive(), "the first signal waits for the call");
    signal(d.pid(), "INT");
    wait_exit(&mut d, Duration::from_secs(30));
    assert!(
        sent.elapsed() < Duration::from_secs(15),
        "{:?}",
        sent.elapsed()
    );
    assert!(d.log().contains("second signal"), "{}", d.log());

    let out = Command::new(falra_bin())
        .args(["serve", "--shutdown-grace", "99999"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("shutdown-grace"));
}

#[test]
fn the_systemd_unit_verifies_and_names_the_shipped_config() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let unit = std::fs::read_to_string(root.join("packaging/falra.service")).unwrap();
    assert!(unit.contains("--config /etc/falra/falra.toml"));
    assert!(unit.contains("Delegate=yes"));
    for forbidden in [
        "RestrictNamespaces=",
        "PrivateUsers=",
        "ProtectControlGroups=",
    ] {
        assert!(
            !unit.lines().any(|l| l.starts_with(forbidden)),
            "{forbidden} would take the sandbox apart"
        );
    }
    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("systemd-analyze is not installed: the unit's syntax is not verified here");
        return;
    };
    // Verified as installed: the binary where ExecStart names it.
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("usr/local/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(falra_bin(), bin.join("falra")).unwrap();
    let unit_path = dir.path().join("falra.service");
    std::fs::write(
        &unit_path,
        unit.replace("/usr/local/bin/falra", bin.join("falra").to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&unit_path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("falra.service"))
        .collect();
    assert!(out.status.success() && complaints.is_empty(), "{err}");
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

#[test]
fn completions_and_the_functions_listing_come_from_the_command_line() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(falra_bin())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("falra") && text.contains("tenant"), "{shell}");
    }
    let out = Command::new(falra_bin())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success());

    let d = Daemon::start();
    d.tenant(
        "caro",
        &GitRepo::with_files(&[(
            "m.py",
            "def add(int_a, int_b):\n    '''Adds.'''\n    return int_a + int_b\n",
        )]),
    );
    let out = d.cli(&["functions", "caro"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("m.add") && text.contains("int_a"), "{text}");
    let out = d.cli(&["functions", "caro", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(listed["functions"].is_array(), "{listed}");
    let out = d.cli(&["functions", "nobody"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_found"));

    // Audit since a relative time.
    let out = d.cli(&["audit", "--since", "1h", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!events["events"].as_array().unwrap().is_empty());
    let out = d.cli(&["audit", "--since", "yesterday-ish"]);
    assert!(!out.status.success());
}
