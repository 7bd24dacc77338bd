//! The ETL built-in end to end: a zip served by a real HTTP server, real S3-compatible servers
//! (moto_server; s3rver and s3s-fs, two independent implementations that check every signature
//! and store objects as files), the real daemon, and the outputs read back and compared row by
//! row with what pandas makes of the same input.

use std::path::{Path, PathBuf};
use std::process::Command;

use falra_tests::{static_files, Answer, Daemon, Service};
use serde_json::{json, Value};

const BUCKET: &str = "falra-out";
const MEMBER_DIR: &str = "1032_108-109年高雄市空氣品質感測物聯網布建計畫_2019_12_橫向資料_2";

/// The Python with moto, pandas and boto3 (made by scripts/test-python.sh).
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("FALRA_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run `bash scripts/test-python.sh` (scripts/test.sh does)",
        p.display()
    );
    p
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/etl_data.py")
}

fn py(args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(fixture())
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "etl_data.py {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The S3-compatible server a test writes to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Store {
    Moto,
    /// s3s-fs (built by scripts/install-deps.sh into target/tools): objects as files under a
    /// directory, SigV4 checked against its one key pair. Its multipart uploads name a file
    /// after the base64 of the whole key, so keys over about 190 bytes fail there (the seed's
    /// are longer): it runs the tests with shorter keys.
    S3sFs,
    /// s3rver (installed from npm by scripts/install-deps.sh): objects as files under a
    /// directory, one key pair, signatures checked; keys of any length; no
    /// AbortMultipartUpload.
    S3rver,
}

fn tool(path: &str, how: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/tools")
        .join(path);
    assert!(
        p.exists(),
        "{} is missing: run `bash scripts/install-deps.sh` (scripts/test.sh does){how}",
        p.display()
    );
    p
}

/// Test inputs, an HTTP server for them, an S3 server with a bucket.
struct World {
    dir: tempfile::TempDir,
    http: u16,
    s3: u16,
    store: Store,
    /// s3s-fs's data directory.
    objects: tempfile::TempDir,
    _servers: Vec<Service>,
}

impl World {
    fn new() -> World {
        World::on(Store::Moto)
    }

    fn on(kind: Store) -> World {
        let dir = tempfile::tempdir().unwrap();
        let objects = tempfile::tempdir().unwrap();
        let web = static_files(dir.path());
        let store = match kind {
            Store::Moto => {
                let moto = python().with_file_name("moto_server");
                Service::start(|port| {
                    let mut cmd = Command::new(&moto);
                    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
                    cmd
                })
            }
            Store::S3rver => {
                let bin = tool("node/node_modules/s3rver/bin/s3rver.js", "");
                let root = objects.path().to_owned();
                Service::start(|port| {
                    let mut cmd = Command::new("node");
                    cmd.arg(&bin)
                        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-s", "-d"])
                        .arg(root);
                    cmd
                })
            }
            Store::S3sFs => {
                let bin = tool("bin/s3s-fs", "");
                let root = objects.path().to_owned();
                Service::start(|port| {
                    let mut cmd = Command::new(&bin);
                    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
                        .args(["--access-key", "S3RVER", "--secret-key", "S3RVER"])
                        .arg(root);
                    cmd
                })
            }
        };
        let (http, s3) = (web.port, store.port);
        py(&["bucket", &format!("http://127.0.0.1:{s3}"), BUCKET]);
        World {
            dir,
            http,
            s3,
            store: kind,
            objects,
            _servers: vec![web, store],
        }
    }

    /// Multipart uploads begun and neither completed nor aborted.
    fn open_uploads(&self) -> Vec<String> {
        match self.store {
            Store::Moto => serde_json::from_str(&py(&[
                "uploads",
                &format!("http://127.0.0.1:{}", self.s3),
                BUCKET,
            ]))
            .unwrap(),
            // s3s-fs keeps an upload's parts as `.upload_id-…` files at its root.
            Store::S3sFs => std::fs::read_dir(self.objects.path())
                .unwrap()
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".upload"))
                .collect(),
            Store::S3rver => panic!("s3rver cannot abort an upload"),
        }
    }

    fn zip(&self, name: &str, rows: u32, extra: &[&str]) -> (String, PathBuf) {
        let path = self.dir.path().join(name);
        let mut args = vec!["zip", path.to_str().unwrap()];
        let rows = rows.to_string();
        args.push(&rows);
        args.extend_from_slice(extra);
        py(&args);
        (format!("http://127.0.0.1:{}/{name}", self.http), path)
    }

    fn s3_url(&self) -> String {
        format!("http://127.0.0.1:{}/{BUCKET}", self.s3)
    }

    fn compare(&self, prefix: &str, zip: &Path, extra: &[&str]) -> Value {
        let endpoint = format!("http://127.0.0.1:{}", self.s3);
        let mut args = vec!["compare", &endpoint, BUCKET, prefix, zip.to_str().unwrap()];
        args.extend_from_slice(extra);
        serde_json::from_str(&py(&args)).unwrap()
    }
}

/// The seed's second example, verbatim but for the URLs and the secret's name.
fn seed_body(token: &str, zip_url: &str, s3_url: &str) -> Value {
    json!({
        "註解1": "...", "token": token, "fn": "read_zip_csv_chunk.read_zip_csv_chunk", "註解2": "...",
        "zip_url": zip_url,
        "lst_fn": [
            {"fn": "cameo_df.rename_col", "dic_mapping": {"PM2_5(mg/m3)": "pm2_5", "HUMIDITY(%)": "humidity"}},
            {"fn": "cameo_df.horizontal_to_vertical",
             "lst_horizontal_col": ["TVOCSA()", "PM2_5(mg/m3)", "PM10(mg/m3)", "TEMPERATURE(℃)",
                                    "HUMIDITY(%)", "WIND_SPEED(m/sec)", "VOC()", "WIND_DIRECT(degrees)"],
             "vertical_col": "sensorId"},
            {"fn": "cameo_df.clone_col", "dic_mapping": {"TIME": "createTime"}},
            {"fn": "cameo_df.write_to_s3", "s3_url": s3_url, "s3_key": "wasabi",
             "directory": format!("data/out/{MEMBER_DIR}/")}
        ]
    })
}

fn tenant(d: &Daemon) -> String {
    let a = d.admin("POST", "/tenants", Some(json!({"name": "caro"})));
    assert_eq!(a.status, 201, "{:?}", a.body);
    let a = d.admin(
        "PUT",
        "/tenants/caro/policy",
        Some(json!({"builtins": true})),
    );
    assert_eq!(a.status, 200);
    let a = d.admin(
        "PUT",
        "/tenants/caro/secrets/wasabi",
        Some(json!({"value": {"access_key_id": "S3RVER", "secret_access_key": "S3RVER", "region": "us-east-1"}})),
    );
    assert_eq!(a.status, 200);
    d.token("caro", &["call"])
}

fn code(a: &Answer) -> Value {
    a.body["error"]["code"].clone()
}

/// The job ran and failed: `422 function_error` with `kind` as its error's type.
fn assert_job_failed(r: &Answer, kind: &str) {
    assert_eq!(
        (r.status, code(r), &r.body["error"]["detail"]["type"]),
        (422, json!("function_error"), &json!(kind)),
        "{:?}",
        r.body
    );
}

#[test]
fn the_seed_job_runs_verbatim_and_matches_pandas_row_for_row() {
    seed_job_on(Store::Moto);
}

#[test]
fn the_seed_job_runs_on_a_second_independent_s3_server() {
    seed_job_on(Store::S3rver);
}

fn seed_job_on(store: Store) {
    let w = World::on(store);
    let d = Daemon::start_with(&["--egress-allow-private"]);
    let token = tenant(&d);
    // 60 000 wide rows: 480 000 long rows, about 35 MB in one object (a multipart upload).
    let (url, zip) = w.zip("big.zip", 60_000, &[]);
    let r = d.call(seed_body(&token, &url, &w.s3_url()));
    assert_eq!(r.status, 200, "{:?}", r.body);
    let result = &r.body["result"];
    assert_eq!(result["rows_in"], json!(60_000));
    assert_eq!(result["rows_out"], json!(480_000));
    assert_eq!(result["objects_written"], json!(1));
    let key = format!("data/out/{MEMBER_DIR}/{MEMBER_DIR}/part-00000.csv");
    assert_eq!(result["members"][0]["objects"][0]["key"], json!(key));
    assert!(result["bytes_written"].as_u64().unwrap() > 16 << 20);
    let peak = r.body["usage"]["peak_memory_bytes"].as_u64().unwrap();
    assert!(peak < 64 << 20, "peak {peak}");

    let cmp = w.compare("data/out/", &zip, &[]);
    assert_eq!(cmp["equal"], json!(true), "{cmp}");
    assert_eq!(cmp["header_equal"], json!(true), "{cmp}");
    assert_eq!(cmp["rows"], json!(480_000));

    // A rerun overwrites the same objects; smaller chunks make more of them.
    let mut body = seed_body(&token, &url, &w.s3_url());
    body["chunk_rows"] = json!(25_000);
    body["lst_fn"][3]["directory"] = json!("rerun/");
    for _ in 0..2 {
        let r = d.call(body.clone());
        assert_eq!(
            r.body["result"]["objects_written"],
            json!(3),
            "{:?}",
            r.body
        );
    }
    let cmp = w.compare("rerun/", &zip, &[]);
    assert_eq!(cmp["objects"].as_array().unwrap().len(), 3, "{cmp}");
    assert_eq!(cmp["equal"], json!(true), "{cmp}");
}

#[test]
fn a_job_that_fails_mid_object_leaves_no_upload_open() {
    // s3rver has no AbortMultipartUpload; the other two do.
    for store in [Store::Moto, Store::S3sFs] {
        let w = World::on(store);
        let d = Daemon::start_with(&["--egress-allow-private"]);
        let token = tenant(&d);
        // Row 40 000 is short of two fields: by then more than one 8 MiB part is uploaded.
        let (url, _) = w.zip("ragged.zip", 60_000, &["--ragged-at", "40000"]);
        let mut body = seed_body(&token, &url, &w.s3_url());
        body["lst_fn"][3]["directory"] = json!("failed/");
        let r = d.call(body);
        assert_job_failed(&r, "CsvError");
        assert_eq!(w.open_uploads(), Vec::<String>::new());
        let cmp = w.compare("failed/", &w.dir.path().join("ragged.zip"), &[]);
        assert_eq!(
            cmp["objects"],
            json!([]),
            "a partial object was written: {cmp}"
        );
    }
}

#[test]
fn bad_s3_secrets_are_refused_and_wrong_keys_name_the_store_s_answer() {
    let w = World::on(Store::S3sFs);
    let d = Daemon::start_with(&["--egress-allow-private"]);
    let token = tenant(&d);
    let (url, _) = w.zip("t.zip", 200, &[]);
    for (value, why) in [
        (
            json!({"access_key_id": "S3RVER", "secret_access_key": "S3RVER", "addressing": "sideways"}),
            "addressing",
        ),
        (
            json!({"access_key_id": "S3RVER", "secret_access_key": "S3RVER", "checksums": "always"}),
            "checksums",
        ),
        (
            json!({"access_key_id": "S3RVER", "secret_access_key": "S3RVER", "sesion_token": "x"}),
            "sesion_token",
        ),
        (
            json!({"access_key_id": "S3RVER", "secret_access_key": 7}),
            "secret_access_key",
        ),
    ] {
        let a = d.admin(
            "PUT",
            "/tenants/caro/secrets/bad",
            Some(json!({ "value": value })),
        );
        assert_eq!(a.status, 200, "{:?}", a.body);
        let mut body = seed_body(&token, &url, &w.s3_url());
        body["lst_fn"][3]["s3_key"] = json!("bad");
        let r = d.call(body);
        assert_eq!(
            (r.status, code(&r)),
            (400, json!("bad_request")),
            "{:?}",
            r.body
        );
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(why), "{message}");
    }
    // A key pair the server does not know: the store's own answer, not retried five times.
    let a = d.admin(
        "PUT",
        "/tenants/caro/secrets/wrong",
        Some(json!({"value": {"access_key_id": "S3RVER", "secret_access_key": "nope", "session_token": "t"}})),
    );
    assert_eq!(a.status, 200);
    let mut body = seed_body(&token, &url, &w.s3_url());
    body["lst_fn"][3]["s3_key"] = json!("wrong");
    let r = d.call(body);
    assert_job_failed(&r, "S3Error");
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("PutObject") && message.contains("403"),
        "{message}"
    );
}

#[test]
fn peak_memory_does_not_grow_with_the_input() {
    let w = World::new();
    let d = Daemon::start_with(&["--egress-allow-private"]);
    let token = tenant(&d);
    let mut peaks = Vec::new();
    for (name, rows) in [("small.zip", 20_000), ("large.zip", 200_000)] {
        let (url, _) = w.zip(name, rows, &[]);
        let mut body = seed_body(&token, &url, &w.s3_url());
        body["lst_fn"][3]["directory"] = json!(format!("{name}/"));
        let r = d.call(body);
        assert_eq!(r.status, 200, "{:?}", r.body);
        peaks.push(r.body["usage"]["peak_memory_bytes"].as_u64().unwrap());
    }
    // Ten times the rows, not ten times the memory: both stay under the documented bound.
    assert!(peaks.iter().all(|&p| p < 64 << 20), "{peaks:?}");
    assert!(peaks[1] < peaks[0] + (24 << 20), "{peaks:?}");
}

#[test]
fn encodings_line_endings_members_and_the_directory_writer() {
    let w = World::new();
    let out = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(&[
        "--egress-allow-private",
        "--etl-output-dir",
        out.path().to_str().unwrap(),
    ]);
    let token = tenant(&d);
    let (url, zip) = w.zip("big5.zip", 3_000, &["--big5", "--crlf"]);
    let mut body = seed_body(&token, &url, &w.s3_url());
    body["encoding"] = json!("big5");
    body["lst_fn"][3] = json!({"fn": "cameo_df.write_to_dir", "directory": "b5/"});
    let r = d.call(body.clone());
    assert_eq!(r.status, 200, "{:?}", r.body);
    let written = out.path().join("caro/b5");
    let cmp: Value = serde_json::from_str(&py(&[
        "compare-dir",
        written.to_str().unwrap(),
        zip.to_str().unwrap(),
        "--big5",
    ]))
    .unwrap();
    assert_eq!(cmp["equal"], json!(true), "{cmp}");

    // Only the named member; a member that is not there is a 400.
    body["members"] = json!(["nope.csv"]);
    let r = d.call(body);
    assert_eq!(
        (r.status, code(&r)),
        (400, json!("bad_request")),
        "{:?}",
        r.body
    );
}

#[test]
fn bad_jobs_are_refused_before_anything_is_written() {
    let w = World::new();
    let d = Daemon::start_with(&["--egress-allow-private"]);
    let token = tenant(&d);
    let (url, _) = w.zip("t.zip", 500, &[]);
    let s3 = w.s3_url();

    // An unknown column: 400 naming the step and the column.
    let mut body = seed_body(&token, &url, &s3);
    body["lst_fn"][1]["lst_horizontal_col"][2] = json!("PM1(mg/m3)");
    body["lst_fn"][3]["directory"] = json!("never/");
    let r = d.call(body);
    assert_eq!(
        (r.status, code(&r)),
        (400, json!("bad_request")),
        "{:?}",
        r.body
    );
    assert_eq!(r.body["error"]["detail"]["step"], json!(2));
    assert_eq!(r.body["error"]["detail"]["column"], json!("PM1(mg/m3)"));
    let cmp = w.compare("never/", Path::new(&w.dir.path().join("t.zip")), &[]);
    assert_eq!(cmp["objects"], json!([]), "something was written: {cmp}");

    // An unknown step, no writer, no such secret, a bad argument.
    for (change, what) in [
        (
            json!({"lst_fn": [{"fn": "cameo_df.pivot"}, {"fn": "cameo_df.write_to_dir"}]}),
            "step",
        ),
        (
            json!({"lst_fn": [{"fn": "cameo_df.rename_col", "dic_mapping": {"a": "b"}}]}),
            "writer",
        ),
        (json!({"chunk_rows": 0}), "chunk_rows"),
        (json!({"zip_url": "file:///etc/passwd"}), "zip_url"),
        (json!({"extra_arg": 1}), "extra_arg"),
    ] {
        let mut body = seed_body(&token, &url, &s3);
        for (k, v) in change.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = d.call(body);
        assert_eq!(
            (r.status, code(&r)),
            (400, json!("bad_request")),
            "{what}: {:?}",
            r.body
        );
        assert!(
            r.body["error"]["message"].as_str().unwrap().contains(what),
            "{what}: {:?}",
            r.body
        );
    }
    let mut body = seed_body(&token, &url, &s3);
    body["lst_fn"][3]["s3_key"] = json!("nosuch");
    let r = d.call(body);
    assert_eq!(code(&r), json!("bad_request"), "{:?}", r.body);
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("nosuch"));

    // write_to_dir on a node without an output directory.
    let mut body = seed_body(&token, &url, &s3);
    body["lst_fn"][3] = json!({"fn": "cameo_df.write_to_dir", "directory": "x/"});
    assert_eq!(code(&d.call(body)), json!("bad_request"));

    // A ragged row: the job's error, with the line.
    let (ragged, _) = w.zip("ragged.zip", 100, &["--ragged-at", "42"]);
    let r = d.call(seed_body(&token, &ragged, &s3));
    assert_job_failed(&r, "CsvError");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 42"),
        "{:?}",
        r.body
    );

    // Not a zip; a missing file.
    std::fs::write(w.dir.path().join("plain.zip"), b"just text").unwrap();
    let plain = format!("http://127.0.0.1:{}/plain.zip", w.http);
    let r = d.call(seed_body(&token, &plain, &s3));
    assert_eq!(
        r.body["error"]["detail"]["type"],
        json!("ZipError"),
        "{:?}",
        r.body
    );
    let missing = format!("http://127.0.0.1:{}/missing.zip", w.http);
    let r = d.call(seed_body(&token, &missing, &s3));
    assert_eq!(
        r.body["error"]["detail"]["type"],
        json!("DownloadError"),
        "{:?}",
        r.body
    );
    assert!(r.body["error"]["message"].as_str().unwrap().contains("404"));

    // A zip bomb stops at the tenant's cap.
    let a = d.admin(
        "PUT",
        "/tenants/caro/policy",
        Some(json!({"max_unzipped_mb": 1})),
    );
    assert_eq!(a.status, 200);
    let (bigger, _) = w.zip("bomb.zip", 20_000, &[]);
    let r = d.call(seed_body(&token, &bigger, &s3));
    assert_eq!(
        r.body["error"]["detail"]["type"],
        json!("ZipError"),
        "{:?}",
        r.body
    );
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("limit"));
}

#[test]
fn built_ins_need_the_policy_and_private_addresses_need_the_operator() {
    let w = World::new();
    let (url, _) = w.zip("t.zip", 100, &[]);
    let d = Daemon::start();
    let token = tenant(&d);
    // Without --egress-allow-private, loopback is out of reach: the download and the store.
    let r = d.call(seed_body(&token, &url, &w.s3_url()));
    assert_eq!(
        (r.status, code(&r)),
        (403, json!("forbidden")),
        "{:?}",
        r.body
    );
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not a public address"));
    for target in [
        "http://169.254.169.254/latest/meta-data/x.zip",
        "http://10.0.0.1/x.zip",
    ] {
        let r = d.call(seed_body(&token, target, &w.s3_url()));
        assert_eq!(code(&r), json!("forbidden"), "{target}: {:?}", r.body);
    }
    // A tenant whose policy does not allow built-ins.
    let a = d.admin(
        "PUT",
        "/tenants/caro/policy",
        Some(json!({"builtins": false})),
    );
    assert_eq!(a.status, 200);
    let r = d.call(seed_body(&token, &url, &w.s3_url()));
    assert_eq!(
        (r.status, code(&r)),
        (403, json!("forbidden")),
        "{:?}",
        r.body
    );
    // Other functions of the module do not exist.
    let r = d.call(json!({"token": token, "fn": "read_zip_csv_chunk.other"}));
    assert_eq!(code(&r), json!("fn_not_found"));
}

#[test]
fn an_s3_endpoint_the_egress_rule_refuses_is_forbidden() {
    let w = World::new();
    let (url, _) = w.zip("t.zip", 100, &[]);
    // The operator lets only 127.0.0.1 through: the download is allowed, an S3 endpoint on
    // another loopback address is not, and that refusal answers 403 as documented.
    let d = Daemon::start_with(&["--egress-allow-net", "127.0.0.1/32"]);
    let token = tenant(&d);
    let s3 = format!("http://127.0.0.2:{}/{BUCKET}", w.s3);
    let r = d.call(seed_body(&token, &url, &s3));
    assert_eq!(
        (r.status, code(&r)),
        (403, json!("forbidden")),
        "{:?}",
        r.body
    );
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a public address"),
        "{:?}",
        r.body
    );
    // The same job to the allowed address runs, by address and by a name the SDK's client
    // resolves (through the rule) to it.
    let r = d.call(seed_body(&token, &url, &w.s3_url()));
    assert_eq!(r.status, 200, "{:?}", r.body);
    let by_name = format!("http://localhost:{}/{BUCKET}", w.s3);
    let r = d.call(seed_body(&token, &url, &by_name));
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.body["result"]["objects_written"],
        json!(1),
        "{:?}",
        r.body
    );
}
