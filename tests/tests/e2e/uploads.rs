//! Private module uploads and function listings, end to end: a real daemon, real git
//! repositories, uploads over HTTP and the CLI.

use falra_tests::{falra_bin, Daemon, GitRepo};
use serde_json::{json, Value};

const REPO_FILES: &[(&str, &str)] = &[(
    "utils.py",
    "def double(x):\n    \"\"\"Twice x.\n\n    More words.\"\"\"\n    return 2 * x\n\n\nclass Thing:\n    pass\n\n\ndef _hidden():\n    return 0\n",
)];

fn put(d: &Daemon, token: &str, module: &str, source: &str) -> falra_tests::Answer {
    d.with_token(
        "PUT",
        &format!("/v1/modules/{module}"),
        token,
        Some(source.as_bytes()),
    )
}

fn call(d: &Daemon, token: &str, f: &str, kwargs: Value) -> falra_tests::Answer {
    let mut body = kwargs;
    body["token"] = json!(token);
    body["fn"] = json!(f);
    d.call(body)
}

fn active(d: &Daemon, tenant: &str) -> String {
    d.admin("GET", &format!("/tenants/{tenant}"), None).body["active_version"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn uploads_make_versions_over_the_commit_and_survive_syncs() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(REPO_FILES);
    let call_token = d.tenant("caro", &repo);
    let deploy_token = d.token("caro", &["deploy"]);
    let v1 = active(&d, "caro");

    let a = put(
        &d,
        &deploy_token,
        "helpers",
        "import utils\n\ndef quad(x: int = 1) -> int:\n    \"\"\"Four times x.\"\"\"\n    return utils.double(utils.double(x))\n",
    );
    assert_eq!(a.status, 200, "{:?}", a.body);
    let v2 = a.body["version"].as_str().unwrap().to_owned();
    assert_ne!(v2, v1);
    assert_eq!(active(&d, "caro"), v2);
    assert_eq!(
        a.body["functions"],
        json!([{"name": "helpers.quad", "signature": "(x: int = 1) -> int", "doc": "Four times x."}])
    );
    let r = call(&d, &call_token, "helpers.quad", json!({"x": 3}));
    assert_eq!(r.body["result"], json!(12), "{:?}", r.body);
    // The repository's code is still there beside the upload.
    let r = call(&d, &call_token, "utils.double", json!({"x": 5}));
    assert_eq!(r.body["result"], json!(10));
    // The version before the upload is still callable by pin, and has no `helpers`.
    let pinned = d.post(
        &format!("/v1/call?version={v1}"),
        &[],
        json!({"token": call_token, "fn": "helpers.quad", "x": 1})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(pinned.body["error"]["code"], json!("fn_not_found"));

    // Dotted names make packages.
    let a = put(
        &d,
        &deploy_token,
        "pkg.sub.tool",
        "def hello():\n    return 'hi'\n",
    );
    assert_eq!(a.status, 200, "{:?}", a.body);
    let r = call(&d, &call_token, "pkg.sub.tool.hello", json!({}));
    assert_eq!(r.body["result"], json!("hi"), "{:?}", r.body);

    // Replacing an upload replaces its code.
    let a = put(
        &d,
        &deploy_token,
        "pkg.sub.tool",
        "def hello():\n    return 'hello'\n",
    );
    assert_eq!(a.status, 200);
    let r = call(&d, &call_token, "pkg.sub.tool.hello", json!({}));
    assert_eq!(r.body["result"], json!("hello"));

    // A new commit keeps the uploads; an upload wins over a repository file at its path.
    repo.commit(&[
        ("utils.py", "def double(x):\n    return x + x + 0\n"),
        ("helpers.py", "def quad(x=1):\n    return 'from git'\n"),
    ]);
    d.sync("caro");
    let r = call(&d, &call_token, "helpers.quad", json!({"x": 2}));
    assert_eq!(r.body["result"], json!(8), "{:?}", r.body);

    // The listing of uploads, and the functions of the active version.
    let listed = d.with_token("GET", "/v1/modules", &deploy_token, None);
    let names: Vec<&str> = listed.body["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["module"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["helpers", "pkg.sub.tool"]);
    let f = d.with_token("GET", "/v1/functions", &call_token, None);
    assert_eq!(f.status, 200, "{:?}", f.body);
    let fnames: Vec<&str> = f.body["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        fnames,
        ["helpers.quad", "pkg.sub.tool.hello", "utils.double"]
    );

    // Removing an upload makes a version without it (the repository's file shows again);
    // removing it twice is a 404.
    let a = d.with_token("DELETE", "/v1/modules/helpers", &deploy_token, None);
    assert_eq!(a.status, 200, "{:?}", a.body);
    let r = call(&d, &call_token, "helpers.quad", json!({}));
    assert_eq!(r.body["result"], json!("from git"), "{:?}", r.body);
    let a = d.with_token("DELETE", "/v1/modules/pkg.sub.tool", &deploy_token, None);
    assert_eq!(a.status, 200, "{:?}", a.body);
    let r = call(&d, &call_token, "pkg.sub.tool.hello", json!({}));
    assert_eq!(
        r.body["error"]["code"],
        json!("fn_not_found"),
        "{:?}",
        r.body
    );
    let a = d.with_token("DELETE", "/v1/modules/helpers", &deploy_token, None);
    assert_eq!(a.status, 404, "{:?}", a.body);
}

#[test]
fn bad_uploads_are_refused_and_change_nothing() {
    let d = Daemon::start_with(&["--max-body-bytes", "4096"]);
    let repo = GitRepo::with_files(REPO_FILES);
    let call_token = d.tenant("caro", &repo);
    let deploy_token = d.token("caro", &["deploy"]);
    let before = active(&d, "caro");

    // A call token may not upload.
    let a = put(&d, &call_token, "helpers", "def f():\n    return 1\n");
    assert_eq!(
        (a.status, a.body["error"]["code"].clone()),
        (403, json!("forbidden"))
    );
    let a = put(&d, "flr_nonsense", "helpers", "def f():\n    return 1\n");
    assert_eq!(a.status, 401);

    for (name, why) in [
        ("json", "standard-library"),
        ("os.extra", "standard-library"),
        ("_private", "underscore"),
        ("pkg._private", "underscore"),
        ("a-b", "identifier"),
        ("a..b", "identifier"),
        ("read_zip_csv_chunk", "built-in"),
    ] {
        let a = put(&d, &deploy_token, name, "def f():\n    return 1\n");
        assert_eq!(a.status, 400, "{name}: {:?}", a.body);
        assert_eq!(a.body["error"]["code"], json!("bad_request"));
        let message = a.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(why), "{name}: {message}");
    }

    // Source that does not compile: 400 naming the line.
    let a = put(
        &d,
        &deploy_token,
        "broken",
        "def f():\n    return 1\n\ndef g(:\n    pass\n",
    );
    assert_eq!(a.status, 400, "{:?}", a.body);
    assert_eq!(a.body["error"]["detail"]["line"], json!(4), "{:?}", a.body);
    assert!(a.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("line 4"));

    // A NUL byte is valid UTF-8 but not valid Python.
    let a = put(&d, &deploy_token, "nul", "x = 1\0\n");
    assert_eq!(a.status, 400, "{:?}", a.body);
    assert!(a.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("does not compile"));

    // Not UTF-8, and over the size limit.
    let a = d.with_token(
        "PUT",
        "/v1/modules/latin",
        &deploy_token,
        Some(b"x = '\xe9'\n"),
    );
    assert_eq!(a.status, 400, "{:?}", a.body);
    let big = format!("x = '{}'\n", "a".repeat(8000));
    let a = put(&d, &deploy_token, "big", &big);
    assert_eq!(
        (a.status, a.body["error"]["code"].clone()),
        (413, json!("payload_too_large"))
    );

    // None of it changed the active version or stored an upload.
    assert_eq!(active(&d, "caro"), before);
    let listed = d.with_token("GET", "/v1/modules", &deploy_token, None);
    assert_eq!(listed.body["modules"], json!([]));
    let r = call(&d, &call_token, "utils.double", json!({"x": 1}));
    assert_eq!(r.body["result"], json!(2));
}

#[test]
fn function_listings_report_what_is_callable_and_what_failed_to_import() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(&[
        REPO_FILES[0],
        ("boom.py", "raise RuntimeError('no config')\n\ndef never():\n    pass\n"),
        ("syntax.py", "def f(\n"),
        ("quits.py", "import os\nos._exit(3)\n"),
        ("spins.py", "while True:\n    pass\n"),
        ("loud.py", "print('imported')\nimport os\nfrom utils import double\n\ndef run(a, *rest, key=None, **kw):\n    pass\n"),
        ("_private.py", "def f():\n    pass\n"),
        ("lib/__init__.py", "def top():\n    '''Package level.'''\n"),
        ("lib/inner.py", "async def later():\n    pass\n"),
        ("notes.txt", "not python"),
    ]);
    let call_token = d.tenant("caro", &repo);
    let f = d.with_token("GET", "/v1/functions", &call_token, None);
    assert_eq!(f.status, 200, "{:?}", f.body);
    let by_name: std::collections::BTreeMap<String, Value> = f.body["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone()))
        .collect();
    assert_eq!(
        by_name.keys().map(String::as_str).collect::<Vec<_>>(),
        ["lib.inner.later", "lib.top", "loud.run", "utils.double"]
    );
    assert_eq!(by_name["utils.double"]["doc"], json!("Twice x."));
    assert_eq!(by_name["lib.top"]["doc"], json!("Package level."));
    assert_eq!(
        by_name["loud.run"]["signature"],
        json!("(a, *rest, key=None, **kw)")
    );
    let errors = f.body["errors"].as_array().unwrap();
    let boom = errors.iter().find(|e| e["module"] == "boom").unwrap();
    assert_eq!(boom["type"], json!("RuntimeError"));
    assert_eq!(boom["message"], json!("no config"));
    for (module, kind, how) in [
        ("quits", "ImportAborted", "status 3"),
        (
            "spins",
            "ImportTimeout",
            "took longer than 10 s, the import time limit",
        ),
    ] {
        let e = errors.iter().find(|e| e["module"] == module).unwrap();
        assert_eq!(e["type"], json!(kind), "{e}");
        assert!(e["message"].as_str().unwrap().contains(how), "{e}");
    }
    let syntax = errors.iter().find(|e| e["module"] == "syntax").unwrap();
    assert_eq!(syntax["type"], json!("SyntaxError"));
    assert_eq!(syntax["line"], json!(1));

    // A module that fails at import time is the caller's function_error, with its type.
    let r = call(&d, &call_token, "boom.never", json!({}));
    assert_eq!(r.body["error"]["code"], json!("function_error"));
    assert_eq!(r.body["error"]["detail"]["type"], json!("RuntimeError"));

    // Unknown versions are refused; a deploy token may read the listing too.
    let deploy_token = d.token("caro", &["deploy"]);
    let a = d.with_token("GET", "/v1/functions?version=0000000", &deploy_token, None);
    assert_eq!(a.status, 400, "{:?}", a.body);
}

#[test]
fn tenants_without_a_repository_run_on_uploads_and_operators_upload_too() {
    let d = Daemon::start();
    let a = d.admin("POST", "/tenants", Some(json!({"name": "jc"})));
    assert_eq!(a.status, 201);
    let call_token = d.token("jc", &["call"]);
    let r = call(&d, &call_token, "m.f", json!({}));
    assert_eq!(r.body["error"]["code"], json!("not_deployed"));

    // An operator uploads through the admin API.
    let auth = format!("Bearer {}", d.admin_token);
    let a = falra_tests::http(
        "PUT",
        &format!("{}/admin/v1/tenants/jc/modules/m", d.url),
        &[("Authorization", &auth)],
        Some(b"def f():\n    return 'jc'\n"),
    );
    assert_eq!(a.status, 200, "{:?}", a.body);
    let r = call(&d, &call_token, "m.f", json!({}));
    assert_eq!(r.body["result"], json!("jc"), "{:?}", r.body);

    // And through the CLI, from a file, under another name.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tool.py");
    std::fs::write(&file, "def g(n):\n    return n + 1\n").unwrap();
    let out = std::process::Command::new(falra_bin())
        .args(["upload", "jc"])
        .arg(&file)
        .args(["--as", "tools.extra", "--url", &d.url])
        .env("FALRA_ADMIN_TOKEN", &d.admin_token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("tools.extra"));
    let r = call(&d, &call_token, "tools.extra.g", json!({"n": 1}));
    assert_eq!(r.body["result"], json!(2), "{:?}", r.body);

    // Without --as the file's stem names the module; a bad name fails with a message.
    std::fs::write(dir.path().join("json.py"), "x = 1\n").unwrap();
    let out = std::process::Command::new(falra_bin())
        .args(["upload", "jc"])
        .arg(dir.path().join("json.py"))
        .args(["--url", &d.url])
        .env("FALRA_ADMIN_TOKEN", &d.admin_token)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("standard-library"));

    // The uploads are in the store: the version directory can go and come back from it.
    let listed = d.admin("GET", "/tenants/jc/modules", None);
    assert_eq!(listed.body["modules"].as_array().unwrap().len(), 2);
}

/// Reads the bytecode the interpreter would load for this very module and checks it as the
/// importer does (magic number, timestamp mode, the source's mtime and size).
const SELF_CHECK: &str = r#"import os
import importlib.util


def cached():
    path = importlib.util.cache_from_source(__file__)
    with open(path, "rb") as f:
        head = f.read(16)
    st = os.stat(__file__)
    return {
        "magic": head[:4] == importlib.util.MAGIC_NUMBER,
        "flags": int.from_bytes(head[4:8], "little"),
        "mtime": int.from_bytes(head[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF,
        "size": int.from_bytes(head[12:16], "little") == st.st_size & 0xFFFFFFFF,
        "spec": __spec__.cached == path,
    }
"#;

#[test]
fn modules_are_compiled_at_deploy_so_calls_never_compile_them() {
    let d = Daemon::start();
    let repo = GitRepo::with_files(&[
        ("m.py", SELF_CHECK),
        ("pkg/__init__.py", ""),
        ("pkg/_inner.py", "X = 1\n"),
        ("bad.py", "def f(\n"),
        ("not-a-module.py", "X = 1\n"),
        // Were the compiler to import the tenant's modules before the standard library's,
        // this one would end it.
        ("py_compile.py", "raise SystemExit(3)\n"),
    ]);
    let call_token = d.tenant("caro", &repo);
    let valid = json!({"magic": true, "flags": 0, "mtime": true, "size": true, "spec": true});
    let r = call(&d, &call_token, "m.cached", json!({}));
    assert_eq!(r.body["result"], valid, "{:?}", r.body);

    let tree = d.data_dir.join("versions/caro").join(active(&d, "caro"));
    let tag = std::process::Command::new("/usr/bin/python3")
        .args([
            "-I",
            "-S",
            "-c",
            "import sys; print(sys.implementation.cache_tag)",
        ])
        .output()
        .unwrap()
        .stdout;
    let tag = String::from_utf8(tag).unwrap().trim().to_owned();
    for (pyc, wanted) in [
        (format!("__pycache__/m.{tag}.pyc"), true),
        (format!("pkg/__pycache__/__init__.{tag}.pyc"), true),
        (format!("pkg/__pycache__/_inner.{tag}.pyc"), true),
        (format!("__pycache__/bad.{tag}.pyc"), false),
        (format!("__pycache__/not-a-module.{tag}.pyc"), false),
    ] {
        assert_eq!(tree.join(&pyc).is_file(), wanted, "{pyc}");
    }
    // The compiler's scratch directory is gone again.
    let left: Vec<_> = std::fs::read_dir(d.data_dir.join("versions/caro"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // An upload is compiled with the version it makes.
    let deploy_token = d.token("caro", &["deploy"]);
    let a = put(&d, &deploy_token, "uploaded", SELF_CHECK);
    assert_eq!(a.status, 200, "{:?}", a.body);
    let r = call(&d, &call_token, "uploaded.cached", json!({}));
    assert_eq!(r.body["result"], valid, "{:?}", r.body);
}
