//! `falra`: the daemon's HTTP layer and its command line.
//!
//! The top layer: only this crate knows HTTP and the command line. It parses the flags into one
//! config, opens the store, detects the sandbox, builds the node runtime and the core services
//! (`falra-core`) on them, and serves the router; every handler parses its input at the edge,
//! calls a service and turns the service's error into an `ApiError` in one place
//! (`api_error.rs`).

mod admin;
mod api_error;
mod audit;
mod auth;
mod call;
mod call_logs;
mod cli;
mod client;
mod config;
mod config_file;
mod console;
mod data_lock;
mod demo;
mod extract;
mod front;
mod hooks;
mod jobs;
mod metering;
mod metrics;
mod openapi;
mod plans;
#[cfg(test)]
mod router_tests;
mod schedules;
mod schemas;
mod secrets;
mod server;
use falra_store as store;
mod tenant_api;
mod token_scan;
mod uploads;

use anyhow::Context;
use clap::Parser;
use falra_policies::Scopes;

use crate::cli::{AdminCommand, Cli, Command, ServeArgs};
use crate::server::{AppState, ServeConfig};
use crate::store::{Store, TokenKind};
use falra_runtime::SandboxSettings;

/// Ordinary failures are one line on stderr (`error: what: why`) and exit status 1, whatever
/// `RUST_BACKTRACE` says: a backtrace is for panics, not for a refused request.
fn main() -> std::process::ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let config = match config_file::load_for_serve(&argv) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            return std::process::ExitCode::FAILURE;
        }
    };
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        // A bad value the config file gave: one line that says where it came from.
        Err(e) if config.is_some() && e.kind() == clap::error::ErrorKind::ValueValidation => {
            let first = e.to_string();
            let first = first
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ");
            let path = config.as_deref().unwrap_or_default();
            eprintln!(
                "error: {first} (given on the command line, as its FALRA_* variable or in the config file {path})"
            );
            return std::process::ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let text = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {text}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let rt = runtime()?;
            let served = rt.block_on(serve(args));
            // Calls past the grace period are dropped with their tasks (their children are
            // killed as their handles go); a blocking task still running does not hold the
            // exit up.
            rt.shutdown_timeout(std::time::Duration::from_secs(2));
            served
        }
        Command::Admin(AdminCommand::Init {
            data_dir,
            store,
            force,
        }) => runtime()?.block_on(admin_init(&data_dir, &store, force)),
        Command::Admin(AdminCommand::Tokens { client }) => client::operator_tokens(&client),
        Command::Tenant(cmd) => client::tenant(cmd),
        Command::Token(cmd) => client::token(cmd),
        Command::Policy(cmd) => client::policy(cmd),
        Command::Secret(cmd) => client::secret(cmd),
        Command::Upload(args) => client::upload(args),
        Command::Modules(cmd) => client::modules(cmd),
        Command::Env(cmd) => client::env(cmd),
        Command::Plan(cmd) => client::plan(cmd),
        Command::Node(cmd) => client::node(cmd),
        Command::Usage(args) => client::usage(args),
        Command::Audit(args) => client::audit(args),
        Command::Logs(args) => client::logs(args),
        Command::Versions { tenant, client } => client::versions(&tenant, &client),
        Command::Functions {
            tenant,
            version,
            client,
        } => client::functions(&tenant, version.as_deref(), &client),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "falra", &mut std::io::stdout());
            Ok(())
        }
        Command::Call(args) => client::call(args),
        Command::Job(cmd) => client::job(cmd),
        Command::Schedule(cmd) => client::schedule(cmd),
        Command::Builtin => Ok(falra_core::builtin::child_main()?),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FALRA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn open_store(data_dir: &std::path::Path, args: &cli::StoreArgs) -> anyhow::Result<Store> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("could not create the data directory {}", data_dir.display()))?;
    Ok(match &args.database_url {
        Some(url) => Store::open_postgres(url).await?,
        None => Store::open_sqlite(&data_dir.join("falra.db")).await?,
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging();
    if !args.python.is_file() {
        anyhow::bail!(
            "the Python interpreter {} does not exist (set --python or FALRA_PYTHON)",
            args.python.display()
        );
    }
    let descriptor_limit = front::raise_descriptor_limit();
    std::fs::create_dir_all(&args.data_dir).with_context(|| {
        format!(
            "could not create the data directory {}",
            args.data_dir.display()
        )
    })?;
    // Before anything in the directory is touched: one daemon per data directory.
    let _data_lock = data_lock::DataDirLock::acquire(&args.data_dir)?;
    let secret_key = load_secret_key(&args.data_dir, &args.store)?;
    let store = open_store(&args.data_dir, &args.store).await?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    // Nothing under the data directory is for anyone but the daemon.
    std::fs::set_permissions(
        &data_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .with_context(|| format!("could not restrict {}", data_dir.display()))?;
    let installed = falra_sandbox::runner::install(&args.python, &data_dir.join("runtime"))
        .context("could not prepare the Python runner")?;
    falra_core::builtin::install_binary(&installed.dir)
        .context("could not place the binary for built-in children")?;
    let config = ServeConfig::from_args(&args, data_dir.clone(), installed)?;
    let sandbox = if args.sandbox == cli::SandboxMode::Off {
        tracing::warn!(
            "the sandbox is off: calls run as plain child processes with the daemon's privileges"
        );
        SandboxSettings::disabled()
    } else {
        SandboxSettings::detect(
            &data_dir,
            std::path::Path::new("/proc"),
            !args.no_cgroup_tuning,
        )
        .context("cannot isolate calls on this host")?
    };
    tracing::info!(sandbox = %sandbox.describe(), "sandbox");
    let plans = falra_core::plans::PlanTable::load(&store).await?;
    let state = AppState::new(store, config, sandbox, secret_key, plans, !args.no_prewarm);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("could not listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    falra_core::nodes::register(&state, addr.to_string())
        .await
        .context("could not register this node in the store")?;
    falra_core::cache::start(&state);
    falra_core::jobs::start(&state, jobs::describe());
    falra_core::callbacks::start(&state);
    falra_core::schedules::start(&state);
    tracing::info!(%addr, data_dir = %state.config.data_dir.display(), store = state.store.backend_name(), "falra listening");
    if args.demo {
        let token = demo::prepare(&state).await?;
        let body = format!(
            r#"{{"token": "{token}", "fn": "falra_test_add.add", "int_a": 1, "int_b": 2}}"#
        );
        println!("Falra is serving http://{addr} with a demo tenant \"demo\".");
        println!(
            "Its token (kept in {}): {token}",
            state.config.data_dir.join("demo-token").display()
        );
        println!("Try it:\n");
        println!("  curl -s http://{addr}/v1/call -d '{body}'\n");
        println!("Stop with Ctrl-C.");
    }
    let wanted = state.http().config.front;
    let max_connections = front::effective_connection_cap(
        wanted.max_connections,
        descriptor_limit,
        front::descriptor_reserve(state.config.max_children),
    );
    if max_connections < wanted.max_connections {
        tracing::info!(
            max_connections,
            descriptor_limit,
            "client connections capped to fit the descriptor limit"
        );
    }
    let limits = front::FrontLimits {
        max_connections,
        ..wanted
    };
    let grace = std::time::Duration::from_secs(args.shutdown_grace);
    server::serve(listener, state, limits, grace).await?;
    Ok(())
}

/// The key tenant secrets are sealed with: the `--secret-key-file` if given (made if missing),
/// else `FALRA_SECRET_KEY` (64 hex digits), else the file `secret.key` in the data directory,
/// made on first use. A node on a shared store must be given the cluster's key: a key of its
/// own could open no secret another node sealed.
fn load_secret_key(
    data_dir: &std::path::Path,
    args: &cli::StoreArgs,
) -> anyhow::Result<falra_policies::SecretKey> {
    if let Some(file) = &args.secret_key_file {
        return Ok(falra_policies::SecretKey::load_or_create(file)?);
    }
    match std::env::var("FALRA_SECRET_KEY") {
        Ok(hex) => falra_policies::SecretKey::from_hex(&hex).context("FALRA_SECRET_KEY"),
        Err(_) if args.database_url.is_some() => anyhow::bail!(
            "a node on a shared PostgreSQL store needs the cluster's secret key: pass \
             --secret-key-file (the same file on every node) or set FALRA_SECRET_KEY"
        ),
        Err(_) => Ok(falra_policies::SecretKey::load_or_create(
            &data_dir.join("secret.key"),
        )?),
    }
}

async fn admin_init(
    data_dir: &std::path::Path,
    args: &cli::StoreArgs,
    force: bool,
) -> anyhow::Result<()> {
    let store = open_store(data_dir, args).await?;
    load_secret_key(data_dir, args)?;
    let now = falra_core::clock::now_ms();
    let live = store
        .operator_tokens()
        .await?
        .iter()
        .filter(|t| t.revoked_at.is_none() && t.expires_at.is_none_or(|at| at > now))
        .count();
    if live > 0 && !force {
        anyhow::bail!(
            "this store is initialised already: it has {live} live operator token(s) (`falra admin tokens` lists them); pass --force to make another"
        );
    }
    let scopes = Scopes::parse(["call", "deploy", "jobs"]).expect("valid scopes");
    let (row, secret) = falra_core::tenants::new_token(
        None,
        TokenKind::Operator,
        &scopes,
        None,
        falra_core::clock::now_ms(),
    );
    store.insert_token(&row).await?;
    println!("{}", secret.expose());
    Ok(())
}
