//! The daemon's settings: the `serve` flags (where every default is written, once) parsed and
//! checked into one [`ServeConfig`] at start-up, so that a bad value stops the daemon with a
//! message naming the flag instead of being quietly replaced.

use std::path::PathBuf;
use std::time::Duration;

use falra_tenants::StdlibNames;

use crate::cli::ServeArgs;
use crate::front::FrontLimits;

/// Where builds download wheels from unless the operator says otherwise.
pub const DEFAULT_PIP_INDEX: &str = "https://pypi.org/simple";

/// Where `scripts/install-uv.sh` puts the pinned `uv`.
pub const DEFAULT_UV: &str = "/usr/local/lib/falra/uv-0.13.9/uv";

/// The `uv` builds use: the flag's file if it runs (`uv --version`), else none, and builds
/// fall back to pip (said once, at start). `none` chooses pip.
fn find_uv(flag: &str) -> Option<PathBuf> {
    if flag == "none" {
        return None;
    }
    let path = PathBuf::from(flag);
    let runs = std::process::Command::new(&path)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match runs {
        Some(version) => {
            tracing::info!(uv = %path.display(), %version, "virtualenvs are built with uv");
            Some(path)
        }
        None => {
            tracing::warn!(
                uv = %path.display(),
                "uv is not there or does not run (bash scripts/install-uv.sh installs it): virtualenvs are built with pip"
            );
            None
        }
    }
}

pub use falra_core::config::MAX_VERSION_BYTES;
use falra_core::ServiceConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--{flag} must be at least {min}")]
    TooSmall { flag: &'static str, min: u64 },
    #[error("--{flag} must be at most {max}")]
    TooLarge { flag: &'static str, max: u64 },
    #[error("could not prepare {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Settings of a running daemon: the services' own, and the HTTP edge's.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// What the services below HTTP run by.
    pub service: ServiceConfig,
    pub max_body_bytes: usize,
    /// Failed authentications per client address and minute before it is refused.
    pub auth_failures_per_minute: u32,
    /// How long a client may take to send a request body.
    pub body_timeout: std::time::Duration,
    /// The HTTP front's caps and deadlines (the connection cap before it is fitted to the
    /// descriptor limit).
    pub front: FrontLimits,
}

impl std::ops::Deref for ServeConfig {
    type Target = ServiceConfig;
    fn deref(&self) -> &ServiceConfig {
        &self.service
    }
}

impl ServeConfig {
    /// The settings `args` give, with the data directory (made and canonical) and what
    /// installing the runner found out about the interpreter.
    pub fn from_args(
        args: &ServeArgs,
        data_dir: PathBuf,
        installed: falra_sandbox::runner::Installed,
    ) -> Result<ServeConfig, ConfigError> {
        let at_least = |flag: &'static str, value: u64, min: u64| {
            if value < min {
                Err(ConfigError::TooSmall { flag, min })
            } else {
                Ok(value)
            }
        };
        at_least("max-children", args.max_children as u64, 1)?;
        at_least("max-connections", args.max_connections as u64, 1)?;
        at_least(
            "max-connections-per-address",
            args.max_connections_per_address as u64,
            1,
        )?;
        at_least("max-body-bytes", args.max_body_bytes as u64, 1)?;
        at_least("max-result-bytes", args.max_result_bytes as u64, 1)?;
        at_least("job-workers", args.job_workers as u64, 1)?;
        at_least("job-lease-ms", args.job_lease_ms, 300)?;
        at_least("job-retention-hours", args.job_retention_hours, 1)?;
        at_least("job-max-attempts", u64::from(args.job_max_attempts), 1)?;
        if args.job_max_attempts > falra_core::jobs::MAX_ATTEMPTS {
            return Err(ConfigError::TooLarge {
                flag: "job-max-attempts",
                max: u64::from(falra_core::jobs::MAX_ATTEMPTS),
            });
        }
        let header_timeout = at_least("header-timeout-secs", args.header_timeout_secs, 1)?;
        let body_timeout = at_least("body-timeout-secs", args.body_timeout_secs, 1)?;
        let etl_output_dir = match &args.etl_output_dir {
            Some(dir) => {
                let made = std::fs::create_dir_all(dir).and_then(|()| std::fs::canonicalize(dir));
                Some(made.map_err(|source| ConfigError::Dir {
                    path: dir.clone(),
                    source,
                })?)
            }
            None => None,
        };
        Ok(ServeConfig {
            service: ServiceConfig {
                python: args.python.clone(),
                max_result_bytes: args.max_result_bytes,
                max_log_bytes: args.max_log_bytes,
                max_version_bytes: MAX_VERSION_BYTES,
                keep_versions: args.keep_versions,
                runner_dir: installed.dir,
                python_version: installed.python_version,
                cache_tag: installed.cache_tag,
                stdlib: StdlibNames::from_lines(&installed.stdlib_names),
                max_children: args.max_children,
                egress: falra_builtins::etl::net::Egress {
                    allow_private: args.egress_allow_private,
                    allow_nets: args.egress_allow_net.clone(),
                },
                etl_max_download_bytes: args.etl_max_download_bytes,
                etl_output_dir,
                pip_index_url: args.pip_index_url.clone(),
                pip_find_links: args.pip_find_links.clone(),
                uv: find_uv(&args.uv),
                wheel_cache_bytes: args.wheel_cache_mb.saturating_mul(1024 * 1024),
                jobs: falra_core::jobs::JobSettings {
                    workers: args.job_workers,
                    lease: Duration::from_millis(args.job_lease_ms),
                    retention: Duration::from_secs(args.job_retention_hours.saturating_mul(3600)),
                    max_attempts: args.job_max_attempts,
                },
                data_dir,
                zygote: !args.no_zygote,
                preload_zygotes: args.preload_zygotes,
                preload_memory_mb: args.preload_memory_mb,
            },
            max_body_bytes: args.max_body_bytes,
            auth_failures_per_minute: args.auth_failures_per_minute,
            body_timeout: Duration::from_secs(body_timeout),
            front: FrontLimits {
                max_connections: args.max_connections,
                max_connections_per_address: args.max_connections_per_address,
                header_timeout: Duration::from_secs(header_timeout),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn config(flags: &[&str]) -> Result<ServeConfig, ConfigError> {
        let argv = ["falra", "serve"].iter().chain(flags);
        let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else {
            unreachable!("serve parses as serve")
        };
        let installed = falra_sandbox::runner::Installed {
            dir: "/data/runtime".into(),
            python_version: "3.11.2".into(),
            cache_tag: "cpython-311".into(),
            stdlib_names: "os\nsys\n".into(),
        };
        ServeConfig::from_args(&args, "/data".into(), installed)
    }

    #[test]
    fn the_flags_defaults_are_the_configs() {
        let c = config(&[]).unwrap();
        assert_eq!(c.max_children, 64);
        assert_eq!(c.max_body_bytes, 1 << 20);
        assert_eq!(c.max_result_bytes, 6 << 20);
        assert_eq!(c.body_timeout, Duration::from_secs(30));
        assert_eq!(c.front.header_timeout, Duration::from_secs(10));
        assert_eq!(c.front.max_connections, 10_000);
        assert_eq!(c.front.max_connections_per_address, 256);
        assert_eq!(c.pip_index_url, DEFAULT_PIP_INDEX);
        assert_eq!(c.runner_dir, PathBuf::from("/data/runtime"));
        assert_eq!(c.max_version_bytes, MAX_VERSION_BYTES);
    }

    #[test]
    fn a_value_that_would_disable_a_limit_stops_the_daemon_naming_the_flag() {
        for flag in [
            "--max-children",
            "--max-connections",
            "--max-connections-per-address",
            "--header-timeout-secs",
            "--body-timeout-secs",
            "--max-body-bytes",
        ] {
            let err = config(&[flag, "0"]).unwrap_err().to_string();
            assert_eq!(err, format!("{flag} must be at least 1"));
        }
        assert_eq!(
            config(&["--body-timeout-secs", "2"]).unwrap().body_timeout,
            Duration::from_secs(2)
        );
    }
}
