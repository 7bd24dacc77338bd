//! The Python runner, embedded in the binary, and how to start an interpreter with it.
//!
//! The runner's source (`runner.py` beside this file) ships inside the binary. At start-up the
//! daemon [`install`]s it: writes it into a directory of its own and compiles it once, with the
//! interpreter calls will run, into `runner.pyc`. Every call then runs the compiled file
//! (`python3 -I -S -B <dir>/runner.pyc`), which saves compiling the runner on every call. The
//! sandbox binds that directory read-only into the child at [`RUNNER_DIR`].
//!
//! `-I -S -B`: isolated mode (no `PYTHON*` environment, no user site, nothing prepended to
//! `sys.path`), no `site` import (faster, and nothing from the host's site-packages), no
//! bytecode written into the tenant's tree.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The runner's source, as shipped in this binary.
pub const RUNNER_SOURCE: &str = include_str!("runner.py");

/// Where the runner's directory appears inside an isolated child.
pub const RUNNER_DIR: &str = "/falra";

const COMPILED: &str = "runner.pyc";

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("could not write the runner into {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not run {python} to compile the runner")]
    Spawn {
        python: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{python} could not compile the runner: {stderr}")]
    Compile { python: PathBuf, stderr: String },
}

/// The installed runner and what the interpreter told about itself while compiling it.
#[derive(Debug, Clone)]
pub struct Installed {
    pub dir: PathBuf,
    /// `sys.version`'s first line: part of a virtualenv's identity.
    pub python_version: String,
    /// `sys.implementation.cache_tag` (`cpython-311`): how its bytecode files are named.
    pub cache_tag: String,
    /// `sys.stdlib_module_names`, one per line.
    pub stdlib_names: String,
}

/// Writes the runner into `dir` and compiles it with `python`.
pub fn install(python: &Path, dir: &Path) -> Result<Installed, RunnerError> {
    let write = |path: PathBuf, data: &str| {
        std::fs::write(&path, data).map_err(|source| RunnerError::Write { path, source })
    };
    std::fs::create_dir_all(dir).map_err(|source| RunnerError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let source = dir.join("runner.py");
    write(source.clone(), RUNNER_SOURCE)?;
    let out = Command::new(python)
        .args(["-I", "-S", "-c"])
        .arg(
            "import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], dfile='/falra/runner.py', doraise=True); \
             print(sys.version.splitlines()[0]); print(sys.implementation.cache_tag); \
             print('\\n'.join(sorted(sys.stdlib_module_names)))",
        )
        .arg(&source)
        .arg(dir.join(COMPILED))
        .env_clear()
        .output()
        .map_err(|source| RunnerError::Spawn {
            python: python.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        return Err(RunnerError::Compile {
            python: python.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (python_version, rest) = stdout.split_once('\n').unwrap_or((&stdout, ""));
    let (cache_tag, stdlib_names) = rest.split_once('\n').unwrap_or((rest, ""));
    Ok(Installed {
        dir: dir.to_path_buf(),
        python_version: python_version.trim().to_owned(),
        cache_tag: cache_tag.trim().to_owned(),
        stdlib_names: stdlib_names.to_owned(),
    })
}

/// Interpreter arguments that run the compiled runner found in `runner_dir` (as the child sees
/// it: [`RUNNER_DIR`] when isolated, the installed directory otherwise).
pub fn interpreter_args(runner_dir: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["-I", "-S", "-B"].into_iter().map(OsString::from).collect();
    args.push(runner_dir.join(COMPILED).into_os_string());
    args
}

/// The child's whole environment: an allow-list, nothing inherited from the daemon, plus
/// where the tenant's virtualenv is (as the child sees it), when it has one.
pub fn child_env(venv: Option<&Path>) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = [
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("LANG", "C.UTF-8"),
        ("LC_ALL", "C.UTF-8"),
        ("HOME", "/tmp"),
        ("TMPDIR", "/tmp"),
    ]
    .into_iter()
    .map(|(k, v)| (k.into(), v.into()))
    .collect();
    if let Some(venv) = venv {
        env.push(("FALRA_VENV".into(), venv.as_os_str().to_owned()));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_compiles_a_runner_that_answers() {
        let dir = tempfile::tempdir().unwrap();
        let installed = install(Path::new("/usr/bin/python3"), &dir.path().join("rt")).unwrap();
        assert!(installed.python_version.starts_with("3."));
        assert!(installed.stdlib_names.lines().any(|l| l == "json"));
        let runner = installed.dir;
        let code = tempfile::tempdir().unwrap();
        std::fs::write(code.path().join("m.py"), "def f(x):\n    return x * 2\n").unwrap();
        let mut child = Command::new("/usr/bin/python3")
            .args(interpreter_args(&runner))
            .current_dir(code.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(br#"{"protocol": 1, "call_id": "c", "fn": "m.f", "kwargs": {"x": 21}}"#)
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "{\"ok\":true,\"result\":42}\n"
        );
    }

    #[test]
    fn a_broken_interpreter_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = install(Path::new("/nonexistent/python3"), dir.path()).unwrap_err();
        assert!(matches!(err, RunnerError::Spawn { .. }), "{err}");
    }
}
