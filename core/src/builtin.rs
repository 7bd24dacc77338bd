//! Calling a built-in: the tenant's policy must allow it; the call's arguments are checked
//! here (a bad plan is a `400` before any child starts); the S3 credentials are opened from the
//! tenant's secret; then the `falra` binary itself runs the job in a sandboxed child of the
//! tenant, with the host's network (every address checked by the job's egress rule) and the
//! tenant's limits, and answers on stdout like the runner does.

use std::path::{Path, PathBuf};

use falra_builtins::etl::job::Job;
use falra_builtins::etl::plan::Writer;
use falra_policies::{Network, Policy};
use falra_sandbox::setup::SetupLimits;
use falra_sandbox::{Bind, Termination};
use falra_tenants::{FnName, TenantName};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::Core;
use falra_runtime::isolation::CodeMounts;
use falra_runtime::ChildStage;

/// Where the `falra` binary is copied for children (inside the runner's directory, which
/// children see at `/falra`).
pub const BINARY_NAME: &str = "falra-builtin";
/// Where `write_to_dir` output appears inside the child.
const OUT_DIR: &str = "/out";

/// Copies the running binary beside the runner, so children can re-execute it.
pub fn install_binary(runner_dir: &Path) -> std::io::Result<()> {
    let exe = std::env::current_exe()?;
    let target = runner_dir.join(BINARY_NAME);
    let tmp = runner_dir.join(format!(".{BINARY_NAME}.tmp"));
    std::fs::copy(&exe, &tmp)?;
    std::fs::rename(&tmp, &target)
}

/// What the child reads on stdin.
#[derive(Debug, serde::Serialize, Deserialize)]
pub struct BuiltinRequest {
    pub function: String,
    pub kwargs: Map<String, Value>,
    pub credentials: Option<Value>,
    pub allow_private: bool,
    /// Networks the operator exempts from the egress rule (`a.b.c.d/n`).
    #[serde(default)]
    pub allow_nets: Vec<String>,
    pub max_download_bytes: u64,
    pub max_uncompressed_bytes: u64,
    pub out_root: Option<PathBuf>,
}

/// Why a built-in was refused, or how it failed.
#[derive(Debug, thiserror::Error)]
pub enum BuiltinError {
    #[error("there is no built-in named {0}")]
    NoSuchBuiltin(FnName),
    #[error("this tenant's policy does not allow built-ins such as {0}")]
    NotAllowed(FnName),
    /// The job's arguments (or the secret it names) are refused; `detail` says where.
    #[error("{message}")]
    BadRequest { message: String, detail: Value },
    /// What the job reached refused it (an S3 server's 403, the egress rule).
    #[error("{message}")]
    Forbidden { message: String, detail: Value },
    #[error("the built-in ran out of its memory limit of {0} MB and was stopped")]
    OutOfMemory(u32),
    #[error("the built-in ran over its limit of {0} ms and was stopped")]
    TimedOut(u32),
    /// The job failed on its input (a malformed archive, a missing column…).
    #[error("{type_name}: {message}")]
    Failed {
        type_name: String,
        message: String,
        detail: Value,
    },
    #[error("the built-in ended without an answer")]
    NoAnswer {
        exit_code: Option<i32>,
        signal: Option<i32>,
    },
    #[error(transparent)]
    Secret(#[from] crate::secrets::SecretUseError),
    #[error(transparent)]
    Run(#[from] falra_runtime::RunError),
    #[error("could not prepare the output directory")]
    OutputDir(#[source] std::io::Error),
}

/// The built-in's result, or how it failed.
pub struct BuiltinOutcome {
    pub result: Result<Value, BuiltinError>,
    pub wall_ms: u64,
    pub cpu_ms: u64,
    pub peak_memory_bytes: u64,
}

/// The fields an S3 secret may hold; the first two are required.
const SECRET_FIELDS: &[&str] = &[
    "access_key_id",
    "secret_access_key",
    "session_token",
    "region",
    "endpoint",
    "addressing",
    "checksums",
];

fn credentials(value: Value, key: &str) -> Result<Value, BuiltinError> {
    use falra_builtins::etl::s3::{Addressing, Checksums};
    let bad = |why: String| {
        BuiltinError::BadRequest {
        message: format!(
            "secret {key:?} {why}: it must be {{\"access_key_id\", \"secret_access_key\", \
             \"session_token\"?, \"region\"?, \"endpoint\"?, \"addressing\"?: \"path\" | \"virtual\", \
             \"checksums\"?: \"when_required\" | \"when_supported\"}}"
        ),
        detail: json!({"field": "s3_key"}),
    }
    };
    let obj = value
        .as_object()
        .ok_or_else(|| bad("is not a JSON object".into()))?;
    for k in obj.keys() {
        if !SECRET_FIELDS.contains(&k.as_str()) {
            return Err(bad(format!("has an unknown field {k:?}")));
        }
        if !obj[k].is_string() {
            return Err(bad(format!("field {k:?} is not a string")));
        }
    }
    let text = |k: &str| obj.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    for k in ["access_key_id", "secret_access_key"] {
        if text(k).is_none() {
            return Err(bad(format!("has no {k:?}")));
        }
    }
    if let Some(a) = obj.get("addressing").and_then(Value::as_str) {
        Addressing::parse(a).ok_or_else(|| bad(format!("has addressing {a:?}")))?;
    }
    if let Some(c) = obj.get("checksums").and_then(Value::as_str) {
        Checksums::parse(c).ok_or_else(|| bad(format!("has checksums {c:?}")))?;
    }
    Ok(value)
}

/// Runs the built-in `function` for `tenant`. `permit` (the call's admission) is held by the
/// child's own task, so it is given back only when the child is gone, even if the client
/// hangs up first.
#[allow(clippy::too_many_arguments)]
pub async fn run<P: Send + 'static>(
    state: &Core,
    tenant: &TenantName,
    uid: u32,
    policy: &Policy,
    function: &FnName,
    kwargs: &Map<String, Value>,
    limits: falra_sandbox::Limits,
    permit: P,
) -> Result<BuiltinOutcome, BuiltinError> {
    let timeout_ms = u32::try_from(limits.wall.as_millis()).unwrap_or(u32::MAX);
    if !falra_builtins::FUNCTIONS.contains(&function.as_str()) {
        return Err(BuiltinError::NoSuchBuiltin(function.clone()));
    }
    if !policy.builtins {
        return Err(BuiltinError::NotAllowed(function.clone()));
    }
    let job = Job::parse(&Value::Object(kwargs.clone())).map_err(|e| BuiltinError::BadRequest {
        message: e.to_string(),
        detail: e.detail(),
    })?;
    let creds = match job.steps.writer() {
        Writer::S3 { s3_key, .. } => {
            let value = crate::secrets::open_secret(state, tenant, s3_key)
                .await?
                .ok_or_else(|| BuiltinError::BadRequest {
                    message: format!(
                        "s3_key: this tenant has no secret named {s3_key:?} (an operator sets it \
                         with PUT /admin/v1/tenants/{tenant}/secrets/{s3_key})"
                    ),
                    detail: json!({"field": "s3_key"}),
                })?;
            Some(credentials(value, s3_key)?)
        }
        Writer::Dir { .. } => None,
    };
    let out_dir = match (job.steps.writer(), &state.config.etl_output_dir) {
        (Writer::Dir { .. }, Some(root)) => {
            let dir = root.join(tenant.as_str());
            std::fs::create_dir_all(&dir)
                .and_then(|()| std::os::unix::fs::chown(&dir, Some(uid), Some(uid)))
                .map_err(BuiltinError::OutputDir)?;
            Some(dir)
        }
        _ => None,
    };
    let isolated = state.runtime.sandbox.is_enabled();
    let request = BuiltinRequest {
        function: function.as_str().to_owned(),
        kwargs: kwargs.clone(),
        credentials: creds,
        allow_private: state.config.egress.allow_private,
        allow_nets: state
            .config
            .egress
            .allow_nets
            .iter()
            .map(ToString::to_string)
            .collect(),
        max_download_bytes: state.config.etl_max_download_bytes,
        max_uncompressed_bytes: u64::from(policy.max_unzipped_mb) << 20,
        out_root: out_dir.as_ref().map(|d| {
            if isolated {
                PathBuf::from(OUT_DIR)
            } else {
                d.clone()
            }
        }),
    };
    let stdin = serde_json::to_vec(&request).expect("the request serialises");
    let mut child_policy = policy.clone();
    child_policy.network = Network::Host;
    let program = if isolated {
        PathBuf::from(falra_sandbox::runner::RUNNER_DIR).join(BINARY_NAME)
    } else {
        state.config.runner_dir.join(BINARY_NAME)
    };
    let stage = ChildStage {
        program,
        args: Some(vec!["builtin".into()]),
        extra: out_dir
            .filter(|_| isolated)
            .map(|source| Bind {
                source,
                target: PathBuf::from(OUT_DIR),
                writable: true,
            })
            .into_iter()
            .collect(),
        env: Vec::new(),
        // One output file is one chunk of the job, which may be far larger than a call's
        // usual file-size limit; the tenant's output directory is the operator's to size.
        setup: SetupLimits {
            file_size_bytes: 64 << 30,
            ..SetupLimits::default()
        },
        netns: None,
        cwd: None,
        fork: false,
        stdin_fd: None,
        preload: None,
    };
    let mounts = CodeMounts {
        code: state.config.runner_dir.clone(),
        venv: None,
    };
    let child = state
        .runtime
        .prepare(uid, &mounts, &child_policy, stage)
        .await?;
    let ran = child.run_to_end(stdin, limits, permit).await?;
    let finished = &ran.finished;
    let outcome = |result| BuiltinOutcome {
        result,
        wall_ms: ran.wall_ms,
        cpu_ms: ran.cpu_ms,
        peak_memory_bytes: ran.peak_memory_bytes,
    };
    if ran.oom_killed {
        return Ok(outcome(Err(BuiltinError::OutOfMemory(policy.memory_mb))));
    }
    if finished.termination == Termination::TimedOut {
        return Ok(outcome(Err(BuiltinError::TimedOut(timeout_ms))));
    }
    let line: Option<Value> = finished
        .stdout
        .strip_suffix(b"\n")
        .and_then(|l| serde_json::from_slice(l).ok());
    let result = match line {
        Some(v) if v["ok"] == json!(true) => Ok(v["result"].clone()),
        Some(v) if v["ok"] == json!(false) => {
            let e = &v["error"];
            let message = e["message"]
                .as_str()
                .unwrap_or("the built-in failed")
                .to_owned();
            let detail = e.get("detail").cloned().unwrap_or(json!({}));
            Err(match e["code"].as_str() {
                Some("bad_request") => BuiltinError::BadRequest { message, detail },
                Some("forbidden") => BuiltinError::Forbidden { message, detail },
                _ => BuiltinError::Failed {
                    type_name: e["type"].as_str().unwrap_or("JobError").to_owned(),
                    message,
                    detail,
                },
            })
        }
        _ => {
            let stderr = String::from_utf8_lossy(&finished.stderr);
            let (exit_code, signal) = match finished.termination {
                Termination::Exited(c) => (Some(c), None),
                Termination::Signaled(s) => (None, Some(s)),
                Termination::TimedOut => (None, None),
            };
            tracing::warn!(exit_code, signal, stderr = %stderr.chars().take(500).collect::<String>(), "built-in ended without an answer");
            Err(BuiltinError::NoAnswer { exit_code, signal })
        }
    };
    Ok(outcome(result))
}

/// `VmHWM` of this process, in bytes.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `falra builtin`: the child's side. Reads a [`BuiltinRequest`] on stdin, runs it, writes one
/// answer line on stdout.
pub fn child_main() -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input)?;
    let answer = match serde_json::from_slice::<BuiltinRequest>(&input) {
        Err(e) => json!({"ok": false, "error": {"code": "function_error", "type": "JobError",
                          "message": format!("unreadable request: {e}")}}),
        Ok(req) => run_job(req),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{answer}")?;
    out.flush()?;
    Ok(())
}

/// A progress record of the rows read so far, on the answer channel (see
/// `falra_sandbox::progress`).
fn report_rows(rows: u64) {
    use std::io::Write;
    let record = json!({"fraction": 0.0, "rows": rows, "message": format!("{rows} rows read")});
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&[falra_sandbox::progress::RECORD_START]);
    let _ = writeln!(out, "{record}");
    let _ = out.flush();
}

fn run_job(req: BuiltinRequest) -> Value {
    use falra_builtins::etl::{job, net, s3};
    let fail = |code: &str, type_name: &str, message: String, detail: Value| json!({"ok": false, "error": {"code": code, "type": type_name, "message": message, "detail": detail}});
    let job = match job::Job::parse(&Value::Object(req.kwargs)) {
        Ok(j) => j,
        Err(e) => return fail("bad_request", "PlanError", e.to_string(), e.detail()),
    };
    let credentials = req.credentials.map(|c| {
        let text = |k: &str| c[k].as_str().filter(|s| !s.is_empty()).map(str::to_owned);
        s3::Credentials {
            access_key_id: text("access_key_id").unwrap_or_default(),
            secret_access_key: text("secret_access_key").unwrap_or_default(),
            session_token: text("session_token"),
            region: text("region"),
            endpoint: text("endpoint"),
            addressing: c["addressing"].as_str().and_then(s3::Addressing::parse),
            checksums: c["checksums"].as_str().and_then(s3::Checksums::parse),
        }
    });
    let env = job::Env {
        credentials,
        egress: net::Egress {
            allow_private: req.allow_private,
            allow_nets: req
                .allow_nets
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect(),
        },
        max_download_bytes: req.max_download_bytes,
        max_uncompressed_bytes: req.max_uncompressed_bytes,
        out_root: req.out_root,
        progress: Some(report_rows),
    };
    match job::run(&job, &env) {
        Ok(mut result) => {
            // The process's own high-water mark: the cgroup's peak also counts the page cache
            // of written files.
            result["peak_rss_bytes"] = json!(peak_rss_bytes());
            json!({"ok": true, "result": result})
        }
        Err(e) => fail(e.code(), e.type_name(), e.to_string(), e.detail()),
    }
}
