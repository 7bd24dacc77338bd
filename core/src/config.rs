//! The settings the services run by. The daemon's `serve` flags are parsed and checked once,
//! at the edge; this is the part of them below HTTP.

use std::path::PathBuf;

use falra_tenants::StdlibNames;

/// The largest version a tenant may have (its tree, and what a fetch may transfer for it).
pub const MAX_VERSION_BYTES: u64 = 512 << 20;

/// What the services need to know of the node's settings.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub data_dir: PathBuf,
    /// The interpreter every call runs (never a shell shim: it must run inside the sandbox).
    pub python: PathBuf,
    pub max_result_bytes: usize,
    pub max_log_bytes: usize,
    pub max_version_bytes: u64,
    /// How many versions of a tenant are kept besides the active one.
    pub keep_versions: usize,
    /// Where the compiled runner was installed (`falra_sandbox::runner::install`).
    pub runner_dir: PathBuf,
    /// The interpreter's version line: part of a virtualenv's identity.
    pub python_version: String,
    /// The interpreter's bytecode cache tag (`cpython-311`), which laid-in bytecode must carry.
    pub cache_tag: String,
    /// The interpreter's standard-library module names, which uploads may not shadow.
    pub stdlib: StdlibNames,
    /// Calls running at once on this node, at most (more are refused as overloaded).
    pub max_children: usize,
    /// The address rule outbound connections of tenants pass (built-ins, the egress gateway).
    pub egress: falra_builtins::etl::net::Egress,
    /// The largest archive a built-in downloads.
    pub etl_max_download_bytes: u64,
    /// Where `write_to_dir` writes (`<dir>/<tenant>/…`); none: that writer is refused.
    pub etl_output_dir: Option<PathBuf>,
    /// The package index builds download wheels from (`none`: only `pip_find_links`).
    pub pip_index_url: String,
    /// More places builds may find wheels (pip's `--find-links`), set by the operator.
    pub pip_find_links: Vec<String>,
    /// The `uv` builds run (checked to be there and to run at start); none: pip builds.
    pub uv: Option<PathBuf>,
    /// The most the node's wheel cache holds, in bytes (least recently used wheels go first).
    pub wheel_cache_bytes: u64,
    /// How this node runs background jobs.
    pub jobs: crate::jobs::JobSettings,
    /// Fork calls' processes from a warm interpreter (`--no-zygote`: exec each one).
    pub zygote: bool,
    /// The most preload zygotes on this node, and their memory together (MiB).
    pub preload_zygotes: usize,
    pub preload_memory_mb: u64,
}

impl ServiceConfig {
    /// pip's arguments naming where wheels come from: the operator's, never the tenant's.
    pub fn pip_index_args(&self) -> Vec<String> {
        let mut args = match self.pip_index_url.as_str() {
            "none" => vec!["--no-index".to_owned()],
            url => vec!["--index-url".to_owned(), url.to_owned()],
        };
        for link in &self.pip_find_links {
            args.extend(["--find-links".to_owned(), link.clone()]);
        }
        args
    }

    /// What the node runtime needs of these settings.
    pub fn runtime(&self) -> falra_runtime::RuntimeConfig {
        falra_runtime::RuntimeConfig {
            python: self.python.clone(),
            runner_dir: self.runner_dir.clone(),
            max_result_bytes: self.max_result_bytes,
            max_log_bytes: self.max_log_bytes,
            egress: self.egress.clone(),
            zygote: self.zygote,
            preload_zygotes: self.preload_zygotes,
            preload_memory_bytes: self.preload_memory_mb.saturating_mul(1024 * 1024),
        }
    }
}
