//! The Python runner, embedded in the binary, and how to start an interpreter with it.
//!
//! The runner (`runner.py` beside this file) is passed with `-c`, so no file of ours has to exist
//! inside the child's view of the filesystem. `-I -S -B`: isolated mode (no `PYTHON*`
//! environment, no user site, no script directory on `sys.path`), no `site` import (faster, and
//! nothing from the host's site-packages), no bytecode written into the tenant's tree.

use std::ffi::OsString;

/// The runner's source, as shipped in this binary.
pub const RUNNER_SOURCE: &str = include_str!("runner.py");

/// Interpreter arguments that run the embedded runner.
pub fn interpreter_args() -> Vec<OsString> {
    ["-I", "-S", "-B", "-c", RUNNER_SOURCE]
        .into_iter()
        .map(OsString::from)
        .collect()
}

/// The child's whole environment: an allow-list, nothing inherited from the daemon.
pub fn child_env() -> Vec<(OsString, OsString)> {
    [
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("LANG", "C.UTF-8"),
        ("LC_ALL", "C.UTF-8"),
        ("HOME", "/tmp"),
        ("TMPDIR", "/tmp"),
    ]
    .into_iter()
    .map(|(k, v)| (k.into(), v.into()))
    .collect()
}
