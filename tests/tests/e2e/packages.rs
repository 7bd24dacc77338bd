//! pip packages from a tenant's `requirements.txt`: built at sync time in a sandboxed child,
//! from a wheel this test builds and serves from a real local HTTP server (no internet).

use std::path::Path;
use std::process::Command;

use falra_tests::{static_files, Daemon, GitRepo, Service};
use serde_json::json;

/// A local package index: a directory of wheels behind `python3 -m http.server`.
struct Index {
    service: Service,
    _dir: tempfile::TempDir,
}

/// Writes a pure-Python wheel of `falrapkg` 1.0 into `dir`.
fn build_wheel(dir: &Path) {
    let script = r#"
import base64, hashlib, sys, zipfile
out = sys.argv[1] + "/falrapkg-1.0-py3-none-any.whl"
files = {
    "falrapkg/__init__.py": "VERSION = '1.0'\n\ndef shout(s):\n    return s.upper() + '!'\n",
    "falrapkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: falrapkg\nVersion: 1.0\n",
    "falrapkg-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
with zipfile.ZipFile(out, "w") as z:
    for name, text in files.items():
        data = text.encode()
        z.writestr(name, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append("%s,sha256=%s,%d" % (name, digest, len(data)))
    record.append("falrapkg-1.0.dist-info/RECORD,,")
    z.writestr("falrapkg-1.0.dist-info/RECORD", "\n".join(record) + "\n")
"#;
    let out = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

fn start_index() -> Index {
    let dir = tempfile::tempdir().unwrap();
    build_wheel(dir.path());
    Index {
        service: static_files(dir.path()),
        _dir: dir,
    }
}

fn requirements(spec: &str) -> String {
    format!("{spec}\n")
}

/// The operator's flags that make `index` the only place builds find wheels.
fn index_flags(index: &Index) -> [String; 4] {
    [
        "--pip-index-url".into(),
        "none".into(),
        "--pip-find-links".into(),
        format!("http://127.0.0.1:{}/", index.service.port),
    ]
}

const APP: &str = "import falrapkg\n\ndef run(s):\n    return falrapkg.shout(s)\n\n\
def vandalise():\n    import falrapkg as p, os\n    open(os.path.join(os.path.dirname(p.__file__), 'x.py'), 'w').write('x')\n";

#[test]
fn requirements_build_a_virtualenv_for_their_tenant_only() {
    let index = start_index();
    // The package index is on loopback: the operator allows builds to reach it.
    let flags = index_flags(&index);
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.push("--egress-allow-private");
    let d = Daemon::start_with(&args);
    let req = requirements("falrapkg==1.0");
    let caro_repo = GitRepo::with_files(&[("requirements.txt", &req), ("app.py", APP)]);
    let caro = d.tenant("caro", &caro_repo);

    let call = |token: &str, f: &str, kwargs: serde_json::Value| {
        let mut body = kwargs;
        body["token"] = json!(token);
        body["fn"] = json!(f);
        d.call(body)
    };
    let r = call(&caro, "app.run", json!({"s": "hi"}));
    assert_eq!(r.body["result"], json!("HI!"), "{:?}", r.body);
    // The tenant's packages are callable by name too.
    let r = call(&caro, "falrapkg.shout", json!({"s": "yo"}));
    assert_eq!(r.body["result"], json!("YO!"), "{:?}", r.body);
    // They are mounted read-only.
    let r = call(&caro, "app.vandalise", json!({}));
    assert_eq!(
        r.body["error"]["code"],
        json!("function_error"),
        "{:?}",
        r.body
    );

    // Another tenant without requirements cannot import them.
    let jc_repo = GitRepo::with_files(&[("app.py", APP)]);
    let jc = d.tenant("jc", &jc_repo);
    let r = call(&jc, "app.run", json!({"s": "hi"}));
    assert_eq!(r.body["error"]["code"], json!("function_error"));
    assert_eq!(
        r.body["error"]["detail"]["type"],
        json!("ModuleNotFoundError")
    );
    let r = call(&jc, "falrapkg.shout", json!({"s": "hi"}));
    assert_eq!(
        r.body["error"]["code"],
        json!("fn_not_found"),
        "{:?}",
        r.body
    );

    // The same requirements elsewhere share the built virtualenv.
    jc_repo.commit(&[("requirements.txt", &req)]);
    d.sync("jc");
    let r = call(&jc, "app.run", json!({"s": "ok"}));
    assert_eq!(r.body["result"], json!("OK!"), "{:?}", r.body);
    let venvs: Vec<_> = std::fs::read_dir(d.data_dir.join("venvs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(venvs.len(), 1, "{venvs:?}");

    // A failed install fails the sync with pip's message and leaves the active version.
    let before = d.admin("GET", "/tenants/caro", None).body["active_version"].clone();
    caro_repo.commit(&[("requirements.txt", &requirements("nosuchpkg==9.9"))]);
    let a = d.admin("POST", "/tenants/caro/sync", None);
    assert_eq!(a.status, 422, "{:?}", a.body);
    assert_eq!(a.body["error"]["code"], json!("sync_failed"));
    let message = a.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("nosuchpkg"), "{message}");
    assert!(message.contains("only wheels are installed"), "{message}");
    assert_eq!(a.body["error"]["detail"]["reason"], "no_wheel");
    assert_eq!(a.body["error"]["detail"]["requirement"], "nosuchpkg==9.9");
    let steps = a.body["error"]["detail"]["steps"].as_array().unwrap();
    let venv = steps.iter().find(|s| s["step"] == "venv").unwrap();
    assert_eq!(venv["ok"], false, "{steps:?}");
    // A version with no wheel, where others have one, says so.
    caro_repo.commit(&[("requirements.txt", &requirements("falrapkg==2.0"))]);
    let a = d.admin("POST", "/tenants/caro/sync", None);
    assert_eq!(a.status, 422, "{:?}", a.body);
    assert_eq!(a.body["error"]["detail"]["reason"], "no_wheel_of_version");
    assert_eq!(
        d.admin("GET", "/tenants/caro", None).body["active_version"],
        before
    );
    let r = call(&caro, "app.run", json!({"s": "still"}));
    assert_eq!(r.body["result"], json!("STILL!"), "{:?}", r.body);

    // Without the operator's permission a build may not reach a private address: the
    // gateway refuses it, and says so.
    let strict_flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let strict = Daemon::start_with(&strict_flags);
    let repo = GitRepo::with_files(&[("requirements.txt", &req), ("app.py", APP)]);
    let a = strict.admin(
        "POST",
        "/tenants",
        Some(json!({"name": "caro", "repo": repo.url()})),
    );
    assert_eq!(a.status, 201);
    let a = strict.admin("POST", "/tenants/caro/sync", None);
    assert_eq!(a.status, 422, "{:?}", a.body);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a public address"),
        "{:?}",
        a.body
    );
    let r = call(&caro, "app.run", json!({"s": "still"}));
    assert_eq!(r.body["result"], json!("STILL!"), "{:?}", r.body);
    // Nothing half-built is left behind.
    let left: Vec<_> = std::fs::read_dir(d.data_dir.join("venvs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
}

#[test]
fn virtualenvs_no_kept_version_uses_are_removed() {
    let index = start_index();
    let flags = index_flags(&index);
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend(["--egress-allow-private", "--keep-versions", "1"]);
    let d = Daemon::start_with(&args);
    let req = requirements("falrapkg==1.0");
    let repo = GitRepo::with_files(&[("requirements.txt", &req), ("app.py", APP)]);
    let token = d.tenant("caro", &repo);
    let venvs = || {
        std::fs::read_dir(d.data_dir.join("venvs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .count()
    };
    assert_eq!(venvs(), 1);
    // Each change of the requirements makes a new virtualenv; the ones only old versions used
    // go with those versions.
    for n in 1..=3 {
        repo.commit(&[("requirements.txt", &format!("{req}# change {n}\n"))]);
        d.sync("caro");
        assert_eq!(venvs(), 1, "virtualenvs after change {n}");
    }
    let r = d.call(json!({"token": token, "fn": "app.run", "s": "ok"}));
    assert_eq!(r.body["result"], json!("OK!"), "{:?}", r.body);
}
