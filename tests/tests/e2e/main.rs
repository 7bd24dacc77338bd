//! The end-to-end suites, one module each, built and linked as one test binary: the real
//! `falra` binary over real HTTP, with real git repositories, HTTP and S3-compatible servers
//! (the shared harness is `falra_tests`, in `tests/src/lib.rs`). Run one suite with
//! `cargo test --release -p falra-tests --test e2e <module>::`.

mod business;
mod calls;
mod cluster;
mod cluster_jobs;
mod console;
mod deploy;
mod devex;
mod errors;
mod etl;
mod fuzz;
mod hostile;
mod hosts;
mod jobs;
mod operations;
mod operators;
mod packages;
mod preload;
mod probes;
mod schedules;
mod secrets;
mod uploads;
mod zygote;
