//! The operator console at `/ui`: its sessions over HTTP, and the whole console driven in the
//! system Chromium by `tests/console/flow.mjs` (Playwright, axe-core on every page).

use std::path::PathBuf;
use std::time::Duration;

use falra_tests::{http, Daemon, GitRepo};
use serde_json::json;

/// A tenant whose function returns and prints markup a console must show as text.
const HOSTILE: &str = "def evil(s: str = '<script>alert(1)</script>'):\n    \
    print('<img src=x onerror=alert(2)>', s)\n    return {'html': s}\n\n\
    def add(a: int, b: int):\n    return a + b\n\n\
    def env():\n    import os\n    return {k: os.environ.get(k) for k in ('GREETING', 'API_KEY')}\n\n\
    def slow():\n    import time\n    time.sleep(60)\n";

fn sign_in(d: &Daemon) -> (String, String) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    let response = agent
        .post(&format!("{}/ui/session", d.url))
        .set("Content-Type", "application/json")
        .send_string(&json!({"token": d.admin_token}).to_string())
        .expect("signed in");
    let cookie = response.header("set-cookie").expect("a cookie").to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(cookie.contains(attribute), "{attribute} missing: {cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "Secure only behind TLS: {cookie}"
    );
    let body: serde_json::Value = serde_json::from_str(&response.into_string().unwrap()).unwrap();
    let session = cookie.split(';').next().unwrap().to_owned();
    (session, body["csrf_token"].as_str().unwrap().to_owned())
}

#[test]
fn sessions_need_their_csrf_token_for_changes_and_end_when_signed_out_or_revoked() {
    let d = Daemon::start();
    let no_session = http("GET", &format!("{}/admin/v1/tenants", d.url), &[], None);
    assert_eq!(no_session.status, 401, "{:?}", no_session.body);
    let (cookie, csrf) = sign_in(&d);
    let listed = http(
        "GET",
        &format!("{}/admin/v1/tenants", d.url),
        &[("Cookie", &cookie)],
        None,
    );
    assert_eq!(listed.status, 200, "{:?}", listed.body);
    let create = |headers: &[(&str, &str)]| {
        http(
            "POST",
            &format!("{}/admin/v1/tenants", d.url),
            headers,
            Some(br#"{"name": "caro"}"#),
        )
    };
    // A cross-site form: the cookie, no CSRF token.
    let forged = create(&[("Cookie", &cookie), ("Content-Type", "text/plain")]);
    assert_eq!(forged.status, 403, "{:?}", forged.body);
    assert_eq!(forged.body["error"]["detail"]["header"], "X-CSRF-Token");
    let wrong = create(&[("Cookie", &cookie), ("X-CSRF-Token", "flr_guess")]);
    assert_eq!(wrong.status, 403);
    let cross = create(&[
        ("Cookie", &cookie),
        ("X-CSRF-Token", &csrf),
        ("Sec-Fetch-Site", "cross-site"),
    ]);
    assert_eq!(cross.status, 403, "{:?}", cross.body);
    assert_eq!(d.admin("GET", "/tenants/caro", None).status, 404);
    let made = create(&[("Cookie", &cookie), ("X-CSRF-Token", &csrf)]);
    assert_eq!(made.status, 201, "{:?}", made.body);
    // Audited as the operator token the session was opened with.
    let audit = d.admin("GET", "/audit?tenant=caro", None);
    let op = d.admin("GET", "/operator-tokens", None);
    let op_id = op.body["tokens"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(audit.body["events"][0]["actor"], op_id.as_str());

    // Signing out needs the token too; then the cookie stands for no one.
    let out =
        |headers: &[(&str, &str)]| http("DELETE", &format!("{}/ui/session", d.url), headers, None);
    assert_eq!(out(&[("Cookie", &cookie)]).status, 403);
    assert_eq!(
        out(&[("Cookie", &cookie), ("X-CSRF-Token", &csrf)]).status,
        200
    );
    let after = http(
        "GET",
        &format!("{}/admin/v1/tenants", d.url),
        &[("Cookie", &cookie)],
        None,
    );
    assert_eq!(after.status, 401, "{:?}", after.body);

    // Revoking the operator token ends the sessions opened with it.
    let (cookie, csrf) = sign_in(&d);
    // Another operator token first: the last one cannot be revoked.
    let init = std::process::Command::new(falra_tests::falra_bin())
        .args(["admin", "init", "--force", "--data-dir"])
        .arg(&d.data_dir)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let revoked = http(
        "DELETE",
        &format!("{}/admin/v1/tokens/{op_id}", d.url),
        &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)],
        None,
    );
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    let ended = http(
        "GET",
        &format!("{}/ui/session", d.url),
        &[("Cookie", &cookie)],
        None,
    );
    assert_eq!(ended.status, 401, "{:?}", ended.body);
}

#[test]
fn an_operator_runs_a_tenants_life_in_chromium_with_tenant_markup_inert_and_axe_clean() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(&[("xss.py", HOSTILE)]);
    let token = d.tenant("caro", &repo);
    let call = d.call(json!({"token": token, "fn": "xss.evil"}));
    assert_eq!(call.status, 200, "{:?}", call.body);
    let call_id = call.body["call_id"].as_str().unwrap().to_owned();
    // The repository the flow creates a tenant from, in the browser.
    let web = GitRepo::with_files(&[("xss.py", HOSTILE)]);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let shots = root.join("target/console-screenshots");
    let out = std::process::Command::new("node")
        .arg(root.join("tests/console/flow.mjs"))
        .env("FALRA_URL", &d.url)
        .env("FALRA_OPERATOR_TOKEN", &d.admin_token)
        .env("FALRA_TENANT", "caro")
        .env("FALRA_CALL", &call_id)
        .env("FALRA_REPO", web.path())
        .env("SCREENSHOTS", &shots)
        .output()
        .expect("node runs (scripts/test.sh installs the console's packages)");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn console_listings_and_sign_in_refuse_bad_input_by_name() {
    let d = Daemon::start();
    for (path, parameter) in [
        ("/calls?status=maybe", "status"),
        ("/calls?code=bogus", "code"),
        ("/calls?status=succeeded&code=timeout", "code"),
        ("/calls?limit=0", "limit"),
        ("/calls?limit=201", "limit"),
        ("/calls?cursor=12.x", "cursor"),
        ("/calls?tenant=Bad-Name", "tenant"),
        ("/stats?days=0", "days"),
        ("/stats?days=91", "days"),
        ("/stats?tenant=nobody", "tenant"),
    ] {
        let a = d.admin("GET", path, None);
        assert!(a.status == 400 || a.status == 404, "{path}: {:?}", a.body);
        assert_eq!(a.body["error"]["detail"]["parameter"], parameter, "{path}");
    }
    assert_eq!(d.admin("GET", "/calls?extra=1", None).status, 400);
    assert_eq!(d.admin("GET", "/tenants/nobody/jobs", None).status, 404);
    // Sign-in: JSON only, a real operator token only.
    let sign_in = |content_type: &str, body: &str| {
        http(
            "POST",
            &format!("{}/ui/session", d.url),
            &[("Content-Type", content_type)],
            Some(body.as_bytes()),
        )
    };
    let form = sign_in(
        "text/plain",
        &format!("{{\"token\": \"{}\"}}", d.admin_token),
    );
    assert_eq!(form.status, 400, "{:?}", form.body);
    assert_eq!(form.body["error"]["detail"]["header"], "Content-Type");
    assert_eq!(
        sign_in("application/json", "{\"token\": \"flr_0\"}").status,
        401
    );
    assert_eq!(sign_in("application/json", "[]").status, 400);
    let tenant_token = d.tenant(
        "caro",
        &GitRepo::with_files(&[("m.py", "def f():\n    return 1\n")]),
    );
    let wrong_kind = sign_in(
        "application/json",
        &format!("{{\"token\": \"{tenant_token}\"}}"),
    );
    assert_eq!(wrong_kind.status, 403, "{:?}", wrong_kind.body);
    assert_eq!(
        http("GET", &format!("{}/ui/assets/nothing.js", d.url), &[], None).status,
        404
    );
}

#[test]
fn the_page_says_what_became_of_its_session_and_never_keeps_one() {
    let d = Daemon::start();
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    let get = |cookie: Option<&str>| {
        let mut req = agent.get(&format!("{}/ui", d.url));
        if let Some(c) = cookie {
            req = req.set("Cookie", c);
        }
        req.call().expect("the page")
    };
    // No cookie: the page everyone gets, which asks for the session itself.
    let anonymous = get(None);
    assert_eq!(anonymous.header("cache-control"), Some("no-cache"));
    assert!(anonymous.header("etag").is_some());
    let plain = anonymous.into_string().unwrap();
    assert!(plain.contains("<body>"), "{plain}");
    assert!(!plain.contains("data-csrf-token"), "{plain}");
    // A live session: its operator and CSRF token in the page, which is never stored, and the
    // header shown from the start.
    let (cookie, csrf) = sign_in(&d);
    let signed_in = get(Some(&cookie));
    assert_eq!(signed_in.header("cache-control"), Some("no-store"));
    assert!(signed_in.header("etag").is_none());
    assert!(signed_in
        .header("content-security-policy")
        .is_some_and(|p| p.contains("script-src 'self'")));
    assert_eq!(signed_in.header("vary"), Some("cookie"));
    let html = signed_in.into_string().unwrap();
    let op = d.admin("GET", "/operator-tokens", None);
    let op_id = op.body["tokens"][0]["id"].as_str().unwrap().to_owned();
    assert!(
        html.contains(&format!(
            "<body data-operator=\"{op_id}\" data-csrf-token=\"{csrf}\">"
        )),
        "{html}"
    );
    assert!(html.contains("<header class=\"top\" id=\"top\">"), "{html}");
    // An unknown cookie and a signed-out one: why, for the sign-in form, and no token.
    for (cookie, why) in [
        // A hostile cookie: looked up, never written into the page.
        (
            "falra_session=flr_<script>alert(1)</script>".to_owned(),
            "not signed in",
        ),
        (cookie.clone(), "signed out"),
    ] {
        if why == "signed out" {
            let out = http(
                "DELETE",
                &format!("{}/ui/session", d.url),
                &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)],
                None,
            );
            assert_eq!(out.status, 200, "{:?}", out.body);
        }
        let ended = get(Some(&cookie));
        assert_eq!(ended.header("cache-control"), Some("no-store"));
        let html = ended.into_string().unwrap();
        assert!(html.contains("<body data-session-ended=\""), "{html}");
        assert!(html.contains(why), "{why}: {html}");
        assert!(!html.contains("data-csrf-token"), "{html}");
        assert!(!html.contains("alert(1)"), "{html}");
        assert!(html.contains("id=\"top\" hidden"), "{html}");
    }
}

#[test]
fn the_page_names_its_files_by_digest_and_those_are_kept_for_good() {
    let d = Daemon::start();
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    let page = agent
        .get(&format!("{}/ui", d.url))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let mut named = Vec::new();
    for (plain, ext) in [("app", "js"), ("style", "css"), ("icon", "svg")] {
        let prefix = format!("/ui/assets/{plain}.");
        let at = page
            .find(&prefix)
            .unwrap_or_else(|| panic!("{plain} in {page}"));
        let name: String = page[at..].chars().take_while(|c| *c != '"').collect();
        let digest = &name[prefix.len()..name.len() - ext.len() - 1];
        assert!(
            digest.len() == 24 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
            "{name}"
        );
        let kept = agent.get(&format!("{}{name}", d.url)).call().expect(&name);
        assert_eq!(kept.status(), 200, "{name}");
        assert_eq!(
            kept.header("cache-control"),
            Some("public, max-age=31536000, immutable"),
            "{name}"
        );
        assert!(kept.header("content-security-policy").is_some(), "{name}");
        let body = kept.into_string().unwrap();
        let plain_body = agent
            .get(&format!("{}/ui/assets/{plain}.{ext}", d.url))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        assert_eq!(body, plain_body, "{name}");
        // Another build's digest (a page from a node not yet upgraded): this build's file,
        // revalidated rather than kept.
        let other = format!("/ui/assets/{plain}.{}.{ext}", "0".repeat(24));
        let stale = agent
            .get(&format!("{}{other}", d.url))
            .call()
            .expect(&other);
        assert_eq!(stale.header("cache-control"), Some("no-cache"), "{other}");
        assert_eq!(stale.into_string().unwrap(), body);
        named.push(name);
    }
    // The page itself is always revalidated, so a new build's page names its new files.
    let again = agent.get(&format!("{}/ui", d.url)).call().unwrap();
    assert_eq!(again.header("cache-control"), Some("no-cache"));
    assert_eq!(
        named.iter().collect::<std::collections::HashSet<_>>().len(),
        3
    );
    for bad in [
        "app.0123.js",
        "app.0123456789abcdef0123456g.js",
        "nothing.0123456789abcdef01234567.js",
        "app.0123456789abcdef01234567.css",
    ] {
        let status = http("GET", &format!("{}/ui/assets/{bad}", d.url), &[], None).status;
        assert_eq!(status, 404, "{bad}");
    }
}

#[test]
fn console_files_carry_a_strict_policy_and_are_revalidated_by_their_entity_tag() {
    let d = Daemon::start();
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    for path in [
        "/ui",
        "/ui/assets/app.js",
        "/ui/assets/style.css",
        "/ui/assets/icon.svg",
    ] {
        let url = format!("{}{path}", d.url);
        let first = agent.get(&url).call().expect(path);
        assert_eq!(first.status(), 200, "{path}");
        let policy = first.header("content-security-policy").unwrap_or("");
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ] {
            assert!(
                policy.contains(directive),
                "{path}: {directive} in {policy}"
            );
        }
        assert!(
            !policy.contains("unsafe-inline") && !policy.contains("unsafe-eval"),
            "{path}: {policy}"
        );
        assert_eq!(first.header("x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(first.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(first.header("cache-control"), Some("no-cache"), "{path}");
        let tag = first.header("etag").expect("an entity tag").to_owned();
        assert!(
            tag.starts_with('"') && tag.ends_with('"') && tag.len() > 10,
            "{tag}"
        );
        let body = first.into_string().unwrap();
        assert!(!body.is_empty());
        // The same file again: not sent twice, and still under the policy.
        let again = agent
            .get(&url)
            .set("If-None-Match", &tag)
            .call()
            .expect(path);
        assert_eq!(again.status(), 304, "{path}");
        assert_eq!(again.header("etag"), Some(tag.as_str()));
        assert!(again.header("content-security-policy").is_some());
        assert!(again.into_string().unwrap().is_empty());
        // Another tag (an earlier build's file): the file is sent whole.
        let stale = agent
            .get(&url)
            .set("If-None-Match", "\"0123456789abcdef01234567\"")
            .call()
            .expect(path);
        assert_eq!(stale.status(), 200, "{path}");
        assert_eq!(stale.into_string().unwrap(), body);
    }
    // The page, its script and styles are told apart by their tags.
    let tags: std::collections::HashSet<String> =
        ["/ui", "/ui/assets/app.js", "/ui/assets/style.css"]
            .iter()
            .map(|p| {
                let r = agent.get(&format!("{}{p}", d.url)).call().unwrap();
                r.header("etag").unwrap().to_owned()
            })
            .collect();
    assert_eq!(tags.len(), 3);
}
