//! Tenant secrets: sealed at rest, never returned, and used as the https credentials of a
//! tenant's repository (served here by a real `git http-backend` behind Basic auth).

use std::process::Command;

use falra_tests::{falra_bin, files_under, Daemon, GitRepo};
use serde_json::json;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn secrets_are_sealed_listed_by_name_and_removed() {
    let d = Daemon::start();
    assert_eq!(
        d.admin(
            "POST",
            "/tenants",
            Some(json!({"name": "caro", "webhook_secret": "hook-plaintext-7"}))
        )
        .status,
        201
    );
    let value =
        json!({"access_key_id": "AKIAPLAINTEXT1", "secret_access_key": "s3cr3t-plaintext-9"});
    let a = d.admin(
        "PUT",
        "/tenants/caro/secrets/wasabi",
        Some(json!({ "value": value })),
    );
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert!(!a.body.to_string().contains("plaintext"));

    let listed = d.admin("GET", "/tenants/caro/secrets", None);
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body["secrets"][0]["key"], json!("wasabi"));
    assert!(!listed.body.to_string().contains("plaintext"));

    // Nowhere in the data directory (store, WAL, anything) is the value in the clear.
    for file in files_under(&d.data_dir) {
        let bytes = std::fs::read(&file).unwrap();
        for needle in ["s3cr3t-plaintext-9", "AKIAPLAINTEXT1", "hook-plaintext-7"] {
            assert!(
                !contains(&bytes, needle.as_bytes()),
                "{needle} in {}",
                file.display()
            );
        }
    }
    assert!(!d.log().contains("plaintext"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.data_dir.join("secret.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the key file is for root only");

    // Refusals.
    for (path, body, status) in [
        ("/tenants/caro/secrets/bad%20name", json!({"value": 1}), 400),
        ("/tenants/nobody/secrets/k", json!({"value": 1}), 404),
        ("/tenants/caro/secrets/k", json!({"nope": 1}), 400),
        (
            "/tenants/caro/secrets/git",
            json!({"value": {"user": "x"}}),
            400,
        ),
        (
            "/tenants/caro/secrets/big",
            json!({"value": "x".repeat(70_000)}),
            400,
        ),
    ] {
        let a = d.admin("PUT", path, Some(body));
        assert_eq!(a.status, status, "{path}: {:?}", a.body);
    }

    // The CLI sets, lists and removes.
    let cli = |args: &[&str]| {
        Command::new(falra_bin())
            .args(args)
            .args(["--url", &d.url])
            .env("FALRA_ADMIN_TOKEN", &d.admin_token)
            .output()
            .unwrap()
    };
    let out = cli(&["secret", "set", "caro", "token", "abc-plaintext-cli"]);
    assert!(out.status.success(), "{out:?}");
    let out = cli(&["secret", "list", "caro"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("token") && text.contains("wasabi"), "{text}");
    assert!(!text.contains("plaintext"));
    let out = cli(&["secret", "remove", "caro", "token", "--yes"]);
    assert!(out.status.success(), "{out:?}");
    let out = cli(&["secret", "remove", "caro", "token", "--yes"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_found"));
    assert_eq!(
        d.admin("DELETE", "/tenants/caro/secrets/wasabi", None)
            .status,
        200
    );
    let listed = d.admin("GET", "/tenants/caro/secrets", None);
    assert_eq!(listed.body["secrets"], json!([]));
}

#[test]
fn git_credentials_come_from_the_tenants_secret_and_are_never_shown() {
    let repo = GitRepo::with_files(&[("m.py", "def f():\n    return 'over http'\n")]);
    let password = "pw-never-logged-42";
    let server = falra_tests::git_http_server(repo.path(), "deployer", password);
    let d = Daemon::start();
    let url = format!("http://127.0.0.1:{}/.git", server.port);
    let a = d.admin(
        "POST",
        "/tenants",
        Some(json!({"name": "caro", "repo": url})),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);

    // Without credentials, and with wrong ones, the sync fails and says so.
    let a = d.admin("POST", "/tenants/caro/sync", None);
    assert_eq!(a.status, 422, "{:?}", a.body);
    let wrong = json!({"value": {"username": "deployer", "password": "wrong-pw"}});
    assert_eq!(
        d.admin("PUT", "/tenants/caro/secrets/git", Some(wrong))
            .status,
        200
    );
    let a = d.admin("POST", "/tenants/caro/sync", None);
    assert_eq!(a.status, 422, "{:?}", a.body);
    assert!(!a.body.to_string().contains("wrong-pw"));

    // With the right ones it deploys.
    let right = json!({"value": {"username": "deployer", "password": password}});
    assert_eq!(
        d.admin("PUT", "/tenants/caro/secrets/git", Some(right))
            .status,
        200
    );
    d.sync("caro");
    let token = d.token("caro", &["call"]);
    let r = d.call(json!({"token": token, "fn": "m.f"}));
    assert_eq!(r.body["result"], json!("over http"), "{:?}", r.body);
    assert!(!d.log().contains(password));
    assert!(!d.log().contains("wrong-pw"));
}
