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
    build_wheel_of(dir, "falrapkg", "1.0", &[]);
}

/// Writes a pure-Python wheel of `name` at `version` into `dir` (its module `VERSION` says
/// which it is), depending on `requires`; returns its SHA-256.
fn build_wheel_of(dir: &Path, name: &str, version: &str, requires: &[&str]) -> String {
    let script = r#"
import base64, hashlib, sys, zipfile
dir, name, version = sys.argv[1:4]
requires = "".join("Requires-Dist: %s\n" % r for r in sys.argv[4:])
out = "%s/%s-%s-py3-none-any.whl" % (dir, name, version)
info = "%s-%s.dist-info" % (name, version)
files = {
    name + "/__init__.py": "VERSION = %r\n\ndef shout(s):\n    return s.upper() + '!'\n" % version,
    info + "/METADATA": "Metadata-Version: 2.1\nName: %s\nVersion: %s\n%s" % (name, version, requires),
    info + "/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
with zipfile.ZipFile(out, "w") as z:
    for path, text in files.items():
        data = text.encode()
        z.writestr(path, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append("%s,sha256=%s,%d" % (path, digest, len(data)))
    record.append(info + "/RECORD,,")
    z.writestr(info + "/RECORD", "\n".join(record) + "\n")
print(hashlib.sha256(open(out, "rb").read()).hexdigest())
"#;
    let out = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(dir)
        .args([name, version])
        .args(requires)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
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

/// Which builder a daemon uses: the pinned `uv` the test command installs, or pip.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Builder {
    Uv,
    Pip,
}

#[test]
fn requirements_build_a_virtualenv_for_their_tenant_only_with_uv() {
    requirements_build_a_virtualenv_for_their_tenant_only(Builder::Uv);
}

#[test]
fn requirements_build_a_virtualenv_for_their_tenant_only_with_pip() {
    requirements_build_a_virtualenv_for_their_tenant_only(Builder::Pip);
}

fn requirements_build_a_virtualenv_for_their_tenant_only(builder: Builder) {
    let index = start_index();
    // The package index is on loopback: the operator allows builds to reach it.
    let flags = index_flags(&index);
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.push("--egress-allow-private");
    if builder == Builder::Pip {
        args.extend(["--uv", "none"]);
    }
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
    assert_eq!(a.body["error"]["detail"]["requirement"], "nosuchpkg==9.9");
    match builder {
        // pip cannot tell a missing package from one with no wheel.
        Builder::Pip => {
            assert!(message.contains("only wheels are installed"), "{message}");
            assert_eq!(a.body["error"]["detail"]["reason"], "no_wheel");
        }
        Builder::Uv => {
            assert!(
                message.starts_with(
                    "requirements.txt line 1 (nosuchpkg==9.9): no package named nosuchpkg"
                ),
                "{message}"
            );
            assert_eq!(a.body["error"]["detail"]["reason"], "not_found");
            assert_eq!(a.body["error"]["detail"]["line"], 1);
        }
    }
    let steps = a.body["error"]["detail"]["steps"].as_array().unwrap();
    let venv = steps.iter().find(|s| s["step"] == "venv").unwrap();
    assert_eq!(venv["ok"], false, "{steps:?}");
    // A version with no wheel, where others have one, says so.
    caro_repo.commit(&[("requirements.txt", &requirements("falrapkg==2.0"))]);
    let a = d.admin("POST", "/tenants/caro/sync", None);
    assert_eq!(a.status, 422, "{:?}", a.body);
    let reason = match builder {
        Builder::Pip => "no_wheel_of_version",
        Builder::Uv => "no_matching_version",
    };
    assert_eq!(a.body["error"]["detail"]["reason"], reason, "{:?}", a.body);
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

/// The steps of a deploy answer, by name.
fn step<'a>(answer: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    answer["steps"]
        .as_array()
        .or_else(|| answer["deploy_log"].as_array())
        .or_else(|| answer["error"]["detail"]["steps"].as_array())
        .and_then(|steps| steps.iter().find(|s| s["step"] == name))
        .unwrap_or_else(|| panic!("no {name} step in {answer:?}"))
}

#[test]
fn uv_builds_share_wheels_record_what_they_resolved_and_rebuild_it_on_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let one = build_wheel_of(dir.path(), "falrapkg", "1.0", &[]);
    let helper = build_wheel_of(dir.path(), "helperpkg", "3.1", &[]);
    build_wheel_of(dir.path(), "withdep", "1.0", &["helperpkg>=3"]);
    let index = Index {
        service: static_files(dir.path()),
        _dir: tempfile::tempdir().unwrap(),
    };
    let flags = index_flags(&index);
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.push("--egress-allow-private");
    let d = Daemon::start_with(&args);
    const SHOW: &str = "import falrapkg\n\ndef version():\n    return falrapkg.VERSION\n";

    // An unpinned requirement: resolved, its wheel fetched into the node's cache.
    let caro_repo = GitRepo::with_files(&[("requirements.txt", "falrapkg\n"), ("app.py", SHOW)]);
    let caro = d.tenant("caro", &caro_repo);
    let r = d.call(json!({"token": caro, "fn": "app.version"}));
    assert_eq!(r.body["result"], json!("1.0"), "{:?}", r.body);
    let versions = d.admin("GET", "/tenants/caro/versions", None).body;
    let first = versions["versions"][0].clone();
    assert_eq!(first["packages"][0]["name"], "falrapkg", "{first:?}");
    assert_eq!(first["packages"][0]["version"], "1.0");
    assert_eq!(first["packages"][0]["sha256"], one.as_str());
    let cached = d
        .data_dir
        .join("wheels")
        .join(&one[..2])
        .join(&one)
        .join("falrapkg-1.0-py3-none-any.whl");
    assert!(cached.is_file(), "{cached:?}");
    let log: Vec<&str> = first["deploy_log"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["step"].as_str())
        .collect();
    for wanted in ["resolve", "wheels", "install", "venv"] {
        assert!(log.contains(&wanted), "{wanted} missing from {log:?}");
    }

    // Another tenant: the cached wheel is reused, only the new ones are fetched, and a
    // dependency comes with the package that needs it.
    let dana_repo = GitRepo::with_files(&[
        ("requirements.txt", "falrapkg==1.0\nwithdep\n"),
        ("app.py", SHOW),
    ]);
    let a = d.admin(
        "POST",
        "/tenants",
        Some(json!({"name": "dana", "repo": dana_repo.url()})),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    let a = d.admin("POST", "/tenants/dana/sync", None);
    assert_eq!(a.status, 200, "{:?}", a.body);
    let wheels = step(&a.body, "wheels")["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        wheels.starts_with("1 from the node's wheel cache, 2 fetched"),
        "{wheels}"
    );
    let dana_versions = d.admin("GET", "/tenants/dana/versions", None).body;
    let names: Vec<&str> = dana_versions["versions"][0]["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["falrapkg", "helperpkg", "withdep"]);
    // The two virtualenvs hold falrapkg's files once on disk (linked from the unpacked
    // wheel), read-only, owned by neither tenant.
    use std::os::unix::fs::MetadataExt;
    let copies: Vec<std::fs::Metadata> = std::fs::read_dir(d.data_dir.join("venvs"))
        .unwrap()
        .map(|e| e.unwrap().path().join("falrapkg/__init__.py"))
        .filter(|p| p.is_file())
        .map(|p| p.metadata().unwrap())
        .collect();
    assert_eq!(copies.len(), 2);
    assert_eq!(copies[0].ino(), copies[1].ino());
    assert_eq!(copies[0].mode() & 0o777, 0o444);
    let tenant_uids: Vec<u64> = ["caro", "dana"]
        .iter()
        .map(|t| {
            d.admin("GET", &format!("/tenants/{t}"), None).body["uid"]
                .as_u64()
                .unwrap_or(0)
        })
        .collect();
    assert!(
        !tenant_uids.contains(&u64::from(copies[0].uid())),
        "{tenant_uids:?}"
    );

    // Hashes pin the wheels: a wrong one fails the build and names the line, and the active
    // version stays.
    dana_repo.commit(&[(
        "requirements.txt",
        &format!(
            "falrapkg==1.0 \\\n    --hash=sha256:{one}\nhelperpkg==3.1 --hash=sha256:{}\n",
            "0".repeat(64)
        ),
    )]);
    let a = d.admin("POST", "/tenants/dana/sync", None);
    assert_eq!(a.status, 422, "{:?}", a.body);
    let message = a.body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("requirements.txt line 3 (helperpkg==3.1)"),
        "{message}"
    );
    assert_eq!(a.body["error"]["detail"]["reason"], "hash_mismatch");
    // The right ones build (continued lines and all).
    dana_repo.commit(&[(
        "requirements.txt",
        &format!(
            "falrapkg==1.0 \\\n    --hash=sha256:{one}\nhelperpkg==3.1 --hash=sha256:{helper}\n"
        ),
    )]);
    let a = d.admin("POST", "/tenants/dana/sync", None);
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert!(step(&a.body, "wheels")["detail"]
        .as_str()
        .unwrap()
        .starts_with("2 from the node's wheel cache, 0 fetched"));

    // A newer release on the index: caro's next version resolves it...
    build_wheel_of(dir.path(), "falrapkg", "2.0", &[]);
    caro_repo.commit(&[("requirements.txt", "falrapkg\n# newer\n")]);
    d.sync("caro");
    let r = d.call(json!({"token": caro, "fn": "app.version"}));
    assert_eq!(r.body["result"], json!("2.0"), "{:?}", r.body);
    // ...and a rollback to the first, whose virtualenv is gone, rebuilds what it had (1.0),
    // not what the same file resolves to now.
    let first_id = first["id"].as_str().unwrap();
    for entry in std::fs::read_dir(d.data_dir.join("venvs")).unwrap() {
        let path = entry.unwrap().path();
        let record = std::fs::read_to_string(path.join(".falra-packages.json")).unwrap_or_default();
        if record.contains("falrapkg-1.0-py3") && !record.contains("helperpkg") {
            std::fs::remove_dir_all(&path).unwrap();
        }
    }
    let a = d.admin(
        "POST",
        "/tenants/caro/rollback",
        Some(json!({"version": first_id})),
    );
    assert_eq!(a.status, 200, "{:?}", a.body);
    let r = d.call(json!({"token": caro, "fn": "app.version"}));
    assert_eq!(r.body["result"], json!("1.0"), "{:?}", r.body);
}

#[test]
fn pyproject_dependencies_build_and_what_a_project_cannot_say_is_refused() {
    let index = start_index();
    let flags = index_flags(&index);
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.push("--egress-allow-private");
    let d = Daemon::start_with(&args);
    // [tool.uv] would point uv at another index: it is not read.
    let pyproject = "[project]\nname = \"app\"\nversion = \"0.1\"\ndependencies = [\n  \"falrapkg>=1\",\n]\n\n[tool.uv]\nindex-url = \"http://192.0.2.1/simple\"\n";
    let repo = GitRepo::with_files(&[("pyproject.toml", pyproject), ("app.py", APP)]);
    let token = d.tenant("caro", &repo);
    let r = d.call(json!({"token": token, "fn": "app.run", "s": "py"}));
    assert_eq!(r.body["result"], json!("PY!"), "{:?}", r.body);

    for (text, line, why) in [
        (
            "[project]\nname = \"app\"\ndependencies = [\n  \"falrapkg @ file:///srv/falrapkg\",\n]\n",
            4,
            "version specifiers",
        ),
        (
            "[project]\nname = \"app\"\ndynamic = [\"dependencies\"]\n",
            3,
            "build backend",
        ),
    ] {
        repo.commit(&[("pyproject.toml", text)]);
        let a = d.admin("POST", "/tenants/caro/sync", None);
        assert_eq!(a.status, 422, "{:?}", a.body);
        let message = a.body["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("pyproject.toml line {line}")) && message.contains(why),
            "{message}"
        );
        assert_eq!(a.body["error"]["detail"]["line"], line);
    }
    let r = d.call(json!({"token": token, "fn": "app.run", "s": "still"}));
    assert_eq!(r.body["result"], json!("STILL!"), "{:?}", r.body);
}

/// The pinned `uv` the test command installs (`scripts/install-uv.sh`).
const UV: &str = "/usr/local/lib/falra/uv-0.13.9/uv";

#[test]
fn a_uv_lock_pins_the_build_though_the_index_has_newer_and_a_lock_naming_a_checkout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let one = build_wheel_of(dir.path(), "falrapkg", "1.0", &[]);
    let index = Index {
        service: static_files(dir.path()),
        _dir: tempfile::tempdir().unwrap(),
    };
    let pyproject = "[project]\nname = \"app\"\nversion = \"0.1.0\"\nrequires-python = \">=3.9\"\ndependencies = [\"falrapkg\", \"helperpkg; sys_platform == 'win32'\"]\n";
    build_wheel_of(dir.path(), "helperpkg", "3.1", &[]);
    // The lock, made as a user makes it, against the same index.
    let project = tempfile::tempdir().unwrap();
    std::fs::write(project.path().join("pyproject.toml"), pyproject).unwrap();
    let locked = Command::new(UV)
        .args(["lock", "--no-config", "--no-index", "--find-links"])
        .arg(format!("http://127.0.0.1:{}/", index.service.port))
        .args(["--python", "/usr/bin/python3", "--project"])
        .arg(project.path())
        .env("UV_CACHE_DIR", project.path().join(".cache"))
        .output()
        .unwrap();
    assert!(locked.status.success(), "{locked:?}");
    let lock = std::fs::read_to_string(project.path().join("uv.lock")).unwrap();
    assert!(lock.contains("name = \"falrapkg\""), "{lock}");

    // A newer release since the lock was made.
    build_wheel_of(dir.path(), "falrapkg", "2.0", &[]);
    let flags = index_flags(&index);
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.push("--egress-allow-private");
    let d = Daemon::start_with(&args);
    const SHOW: &str = "import falrapkg\n\ndef version():\n    return falrapkg.VERSION\n";
    let repo = GitRepo::with_files(&[
        ("pyproject.toml", pyproject),
        ("uv.lock", &lock),
        ("app.py", SHOW),
    ]);
    let token = d.tenant("caro", &repo);
    let r = d.call(json!({"token": token, "fn": "app.version"}));
    assert_eq!(r.body["result"], json!("1.0"), "{:?}", r.body);
    let versions = d.admin("GET", "/tenants/caro/versions", None).body;
    let packages = versions["versions"][0]["packages"]
        .as_array()
        .unwrap()
        .clone();
    // The Windows-only dependency is not installed here.
    assert_eq!(packages.len(), 1, "{packages:?}");
    assert_eq!(packages[0]["sha256"], one.as_str());
    let before = d.admin("GET", "/tenants/caro", None).body["active_version"].clone();

    // A lock that names a git checkout (which would be built) is refused, and says so.
    let start = lock.find("name = \"falrapkg\"").unwrap();
    let source_at = start + lock[start..].find("source = {").unwrap();
    let source_end = source_at + lock[source_at..].find('}').unwrap() + 1;
    let git = format!(
        "{}source = {{ git = \"https://example.com/falrapkg.git?rev=main#0123456789abcdef0123456789abcdef01234567\" }}{}",
        &lock[..source_at],
        &lock[source_end..]
    );
    repo.commit(&[("uv.lock", &git)]);
    let a = d.admin("POST", "/tenants/caro/sync", None);
    assert_eq!(a.status, 422, "{:?}", a.body);
    let message = a.body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("uv.lock"), "{message}");
    assert_eq!(
        d.admin("GET", "/tenants/caro", None).body["active_version"],
        before
    );
}
