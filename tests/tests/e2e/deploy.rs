//! Push to deploy: signed GitHub webhooks against a real daemon and a real repository.

use std::time::{Duration, Instant};

use falra_policies::webhook::hmac_sha256;
use falra_tests::{Answer, Daemon, GitRepo};
use serde_json::json;

const SECRET: &str = "hook-secret";

fn hook(d: &Daemon, tenant: &str, event: &str, body: &str, secret: Option<&str>) -> Answer {
    let sig = secret.map(|s| {
        format!(
            "sha256={}",
            hex::encode(hmac_sha256(s.as_bytes(), body.as_bytes()))
        )
    });
    let mut headers = vec![
        ("X-GitHub-Event", event),
        ("Content-Type", "application/json"),
    ];
    if let Some(sig) = sig.as_deref() {
        headers.push(("X-Hub-Signature-256", sig));
    }
    d.post(
        &format!("/hooks/github/{tenant}"),
        &headers,
        body.as_bytes(),
    )
}

fn active(d: &Daemon) -> String {
    d.admin("GET", "/tenants/caro", None).body["active_version"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn signed_pushes_to_the_tracked_branch_deploy_and_everything_else_does_not() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(&[("v.py", "def get():\n    return 1\n")]);
    let a = d.admin(
        "POST",
        "/tenants",
        Some(json!({"name": "caro", "repo": repo.url(), "webhook_secret": SECRET})),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert_eq!(a.body["has_webhook_secret"], json!(true));
    d.sync("caro");
    let token = d.token("caro", &["call"]);
    let v1 = active(&d);

    // ping
    let a = hook(&d, "caro", "ping", r#"{"zen": "hi"}"#, Some(SECRET));
    assert_eq!(
        (a.status, a.body["event"].clone()),
        (200, json!("ping")),
        "{:?}",
        a.body
    );

    // bad or missing signatures change nothing
    repo.commit(&[("v.py", "def get():\n    return 2\n")]);
    let push = r#"{"ref": "refs/heads/main"}"#;
    for secret in [None, Some("wrong")] {
        let a = hook(&d, "caro", "push", push, secret);
        assert_eq!(a.status, 401, "{:?}", a.body);
        assert_eq!(a.body["error"]["code"], json!("unauthorized"));
    }
    // a push to another branch is acknowledged and ignored
    let a = hook(
        &d,
        "caro",
        "push",
        r#"{"ref": "refs/heads/dev"}"#,
        Some(SECRET),
    );
    assert_eq!(
        (a.status, a.body["deploying"].clone()),
        (200, json!(false)),
        "{:?}",
        a.body
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(active(&d), v1);

    // a signed push to the tracked branch deploys in the background
    let a = hook(&d, "caro", "push", push, Some(SECRET));
    assert_eq!(
        (a.status, a.body["deploying"].clone()),
        (202, json!(true)),
        "{:?}",
        a.body
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while active(&d) == v1 {
        assert!(
            Instant::now() < deadline,
            "the push was never deployed: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = d.call(json!({"token": token, "fn": "v.get"}));
    assert_eq!(r.body["result"], json!(2), "{:?}", r.body);

    // unknown tenants, and tenants without a secret
    assert_eq!(hook(&d, "nobody", "push", push, Some(SECRET)).status, 404);
    d.admin(
        "POST",
        "/tenants",
        Some(json!({"name": "plain", "repo": repo.url()})),
    );
    let a = hook(&d, "plain", "push", push, Some(SECRET));
    assert_eq!(
        (a.status, a.body["error"]["code"].clone()),
        (403, json!("forbidden"))
    );
}

#[test]
fn hostile_repositories_leak_nothing_of_the_host() {
    let d = Daemon::start();
    let other = GitRepo::with_files(&[("secret.py", "TOKEN = 'other-tenant-secret'\n")]);
    d.tenant("other", &other);
    let repo = GitRepo::with_files(&[
        (
            "probe.py",
            "import os\n\ndef read(path):\n    try:\n        with open(path) as f:\n            return 'READ:' + f.read(100)\n    except OSError as e:\n        return 'denied:%d' % e.errno\n\ndef listing():\n    return sorted(os.listdir('.'))\n",
        ),
        ("odd name ünïcode.txt", "fine\n"),
        ("pkg/__init__.py", "def hello():\n    return 'hi'\n"),
    ]);
    let data = d.data_dir.display().to_string();
    for (link, target) in [
        ("passwd.py", "/etc/passwd".to_owned()),
        ("root", "/".to_owned()),
        ("up", "../../../..".to_owned()),
        ("store", format!("{data}/falra.db")),
        ("other", format!("{data}/versions/other")),
        ("pkg/evil.py", "/etc/shadow".to_owned()),
    ] {
        std::os::unix::fs::symlink(&target, repo.path().join(link)).unwrap();
    }
    std::fs::write(
        repo.path().join(".gitmodules"),
        "[submodule \"x\"]\n\tpath = x\n\turl = file:///etc\n",
    )
    .unwrap();
    repo.commit(&[]);
    let token = d.tenant("caro", &repo);

    // Nothing but regular files and directories was written into the version.
    let version = d.data_dir.join("github/git_caro");
    let mut stack = vec![std::fs::canonicalize(&version).unwrap()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let ft = entry.file_type().unwrap();
            assert!(!ft.is_symlink(), "{} is a symlink", entry.path().display());
            if ft.is_dir() {
                stack.push(entry.path());
            }
        }
    }

    let call = |f: &str, extra: serde_json::Value| {
        let mut body = extra;
        body["token"] = json!(token);
        body["fn"] = json!(f);
        d.call(body)
    };
    for module in ["passwd.x", "pkg.evil.x", "root.etc.x", "store.x"] {
        let a = call(module, json!({}));
        assert_eq!(
            a.body["error"]["code"],
            json!("fn_not_found"),
            "{module}: {:?}",
            a.body
        );
    }
    for path in [
        "root/etc/passwd",
        "up/etc/passwd",
        "store",
        "other/secret.py",
        "pkg/evil.py",
    ] {
        let a = call("probe.read", json!({"path": path}));
        let r = a.body["result"].as_str().unwrap_or_default().to_owned();
        assert!(r.starts_with("denied:"), "{path}: {:?}", a.body);
    }
    let listing = call("probe.listing", json!({})).body["result"].clone();
    assert!(
        listing
            .as_array()
            .unwrap()
            .contains(&json!("odd name ünïcode.txt")),
        "{listing}"
    );
    assert_eq!(call("pkg.hello", json!({})).body["result"], json!("hi"));
}
